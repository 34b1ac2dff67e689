//! Messages from the control API: sealed, stored, then flooded.

use super::*;

impl RelayService {
    /// A send request from the control API; answered on `reply` once the message is on
    /// disk (then it goes out).
    pub fn submit(&mut self, now_ms: u64, reply: Reply, send: SendRequest, out: &mut Outbox) {
        let result = self.prepare(now_ms, out.wall_ms(), send);
        match result {
            Ok((id, held, sent)) => {
                let key = hex_id(&id);
                if let Some((recipient, record)) = held {
                    if !self.keep_held(id, recipient, now_ms, record, out) {
                        let _ = reply.send(Err(format!(
                            "outbox full: {} messages to that node already wait for delivery",
                            self.config.held_per_recipient
                        )));
                        return;
                    }
                }
                self.seen.first_time(now_ms, &id);
                self.insert_sent(sent.clone());
                while self.sent.len() > self.config.sent_capacity {
                    if let Some(old) = self.pop_oldest_sent() {
                        self.persist(RelayOp::RemoveSent { id: old.id }, out);
                    }
                }
                self.next_token += 1;
                self.durable
                    .insert(self.next_token, Durable::Sent { reply, id });
                out.push(self.tables.persist_durable(
                    RelayOp::PutSent {
                        id: key,
                        record: sent,
                    },
                    self.next_token,
                ));
                self.publish_view(out);
            }
            Err(reason) => {
                let _ = reply.send(Err(reason));
            }
        }
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn prepare(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        send: SendRequest,
    ) -> Result<(MessageId, Option<(PeerId, HeldRecord)>, SentRecord), String> {
        let payload = AppPayload {
            app: send.app,
            data: send.data,
        };
        let seq = self.next_seq(wall_ms);
        let envelope = match send.to {
            Some(to) if to == self.local_id => return Err("that is this node".into()),
            Some(to) => {
                let plaintext = packet::seal_payload(&payload).map_err(|e| e.to_string())?;
                let mut ephemeral = Zeroizing::new([0u8; 32]);
                self.rng.fill(&mut ephemeral[..]);
                let sealed = sealed::seal(&self.local_id, &to, ephemeral, &plaintext)
                    .map_err(|e| e.to_string())?;
                packet::direct(&self.keypair, seq, wall_ms, &to, sealed)
                    .map_err(|e| e.to_string())?
            }
            None => packet::broadcast(&self.keypair, seq, wall_ms, &payload)
                .map_err(|e| e.to_string())?,
        };
        // Refuse what could not travel, before promising anything.
        packet::encode(MAX_TTL, &envelope).map_err(|e| e.to_string())?;
        let id = packet::message_id(&envelope);
        let held = send.to.map(|to| {
            (
                to,
                HeldRecord {
                    envelope: envelope.clone(),
                    ttl: MAX_TTL,
                    own: true,
                    local: true,
                    from_radio: false,
                    held_since_ms: now_ms,
                },
            )
        });
        let sent = SentRecord {
            id: hex_id(&id),
            to: send.to.map(|p| p.to_string()),
            app: payload.app,
            data: payload.data,
            created_ms: now_ms,
            delivered_ms: None,
        };
        if held.is_none() {
            // A broadcast is not held: keep its envelope for the send after the write.
            self.pending_broadcasts.insert(id, envelope);
        }
        Ok((id, held, sent))
    }

    /// Sends one of our own packets to every neighbour (or only to the addressee when it is
    /// one), at once: jitter is for relays.
    pub(super) fn flood_own(
        &mut self,
        _now_ms: u64,
        envelope: &[u8],
        to: Option<PeerId>,
        out: &mut Outbox,
    ) {
        let Ok(frame) = packet::encode(MAX_TTL, envelope) else {
            return;
        };
        let id = packet::message_id(envelope);
        let radio_only = self.own_packets_radio_only();
        let mut targets: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| !radio_only || n.kind == LinkKind::Radio)
            .map(|(p, _)| *p)
            .collect();
        targets.sort();
        if let Some(to) = to {
            if targets.contains(&to) {
                targets = vec![to];
            }
        }
        for peer in targets {
            self.send_to(peer, id, frame.clone(), out);
        }
    }
}
