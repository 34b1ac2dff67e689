//! Messages for this node: stored in the inbox, acked (again for a copy), and acks for
//! messages this node sent.

use super::*;

impl RelayService {
    /// A copy of a packet already handled. If it is a message we hold in our inbox, its
    /// origin may have missed our ack: ack again (at most every [`REACK_AFTER_MS`]).
    pub(super) fn on_copy(&mut self, now_ms: u64, id: MessageId, out: &mut Outbox) {
        self.metrics.duplicates.inc();
        let Some(origin) = self.inbox_from.get(&hex_id(&id)).copied() else {
            return;
        };
        let due = self
            .last_ack_ms
            .get(&id)
            .is_none_or(|at| now_ms.saturating_sub(*at) >= REACK_AFTER_MS);
        if due {
            self.send_ack(now_ms, origin, id, out);
        }
    }

    pub(super) fn handle_mine(&mut self, now_ms: u64, packet: &RelayPacket, out: &mut Outbox) {
        match &packet.content {
            Content::Direct { sealed, .. } => {
                if self.inbox_from.contains_key(&hex_id(&packet.id)) {
                    self.on_copy(now_ms, packet.id, out);
                    return;
                }
                if self.durable.values().any(
                    |d| matches!(d, Durable::Delivered { message, .. } if *message == packet.id),
                ) {
                    self.metrics.duplicates.inc();
                    return;
                }
                let payload = sealed::open(&self.local, &packet.origin, sealed)
                    .map_err(|e| e.to_string())
                    .and_then(|plain| packet::decode_payload(&plain).map_err(|e| e.to_string()));
                match payload {
                    Ok(payload) => self.deliver(now_ms, packet, payload, false, out),
                    Err(error) => {
                        tracing::debug!(origin = %packet.origin, %error, "undecryptable message");
                        self.metrics.reject("undecryptable");
                    }
                }
            }
            Content::Ack { message, .. } => self.on_ack(now_ms, packet.origin, message, out),
            Content::Broadcast(_) => {}
        }
    }

    pub(super) fn deliver(
        &mut self,
        now_ms: u64,
        packet: &RelayPacket,
        payload: AppPayload,
        broadcast: bool,
        out: &mut Outbox,
    ) {
        let record = InboxRecord {
            id: hex_id(&packet.id),
            from: packet.origin.to_string(),
            app: payload.app,
            data: payload.data,
            broadcast,
            hops: MAX_TTL + 1 - packet.ttl,
            created_ms: packet.created_ms,
            received_ms: now_ms,
        };
        self.metrics.delivered.inc();
        tracing::info!(
            origin = %packet.origin,
            id = %record.id,
            app = %record.app,
            hops = record.hops,
            broadcast,
            "message received"
        );
        out.event(MessageReceived {
            id: record.id.clone(),
            from: record.from.clone(),
            app: record.app.clone(),
            hops: record.hops,
            broadcast,
        });
        let op = RelayOp::PutInbox {
            id: record.id.clone(),
            record: record.clone(),
        };
        if broadcast {
            self.persist(op, out);
            self.add_to_inbox(record, out);
        } else {
            // In the inbox, and acked, only once on disk: until then copies are dropped and
            // not acked, and a failed write forgets the message so the next copy is taken.
            self.next_token += 1;
            self.durable.insert(
                self.next_token,
                Durable::Delivered {
                    to: packet.origin,
                    message: packet.id,
                    record: Box::new(record),
                },
            );
            out.push(self.tables.persist_durable(op, self.next_token));
        }
    }

    pub(super) fn add_to_inbox(&mut self, record: InboxRecord, out: &mut Outbox) {
        self.insert_inbox(record);
        while let Some(old) = self.pop_inbox_over_capacity() {
            self.persist(RelayOp::RemoveInbox { id: old.id }, out);
        }
        self.publish_view(out);
    }

    pub(super) fn send_ack(
        &mut self,
        now_ms: u64,
        to: PeerId,
        message: MessageId,
        out: &mut Outbox,
    ) {
        // Sequence and timestamp are the origin's wall clock: they mean something to others.
        let wall_ms = out.wall_ms();
        let seq = self.next_seq(wall_ms);
        let envelope = match packet::ack(&self.keypair, seq, wall_ms, &to, &message) {
            Ok(e) => e,
            Err(error) => {
                tracing::error!(%error, "cannot sign an ack");
                return;
            }
        };
        let id = packet::message_id(&envelope);
        let record = HeldRecord {
            envelope: envelope.clone(),
            ttl: MAX_TTL,
            own: false,
            local: true,
            from_radio: false,
            held_since_ms: now_ms,
        };
        self.keep_held(id, to, now_ms, record, out);
        self.seen.first_time(now_ms, &id);
        self.last_ack_ms.insert(message, now_ms);
        if self.last_ack_ms.len() > self.config.inbox_capacity * 2 {
            let horizon = now_ms.saturating_sub(REACK_AFTER_MS);
            self.last_ack_ms.retain(|_, at| *at >= horizon);
        }
        self.flood_own(now_ms, &envelope, Some(to), out);
    }

    pub(super) fn on_ack(
        &mut self,
        now_ms: u64,
        acker: PeerId,
        message: &MessageId,
        out: &mut Outbox,
    ) {
        let id = hex_id(message);
        let Some(key) = self.sent_index.get(&id).cloned() else {
            return;
        };
        let Some(record) = self.sent.get_mut(&key) else {
            return;
        };
        if record.to.as_deref() != Some(acker.to_string().as_str()) || record.delivered_ms.is_some()
        {
            return;
        }
        record.delivered_ms = Some(now_ms);
        let record = record.clone();
        self.metrics.acks_received.inc();
        tracing::info!(id = %id, to = %acker, after_ms = now_ms.saturating_sub(record.created_ms), "message delivered");
        out.event(MessageDelivered {
            id: id.clone(),
            to: acker.to_string(),
            after_ms: now_ms.saturating_sub(record.created_ms),
        });
        self.persist(
            RelayOp::PutSent {
                id: id.clone(),
                record,
            },
            out,
        );
        self.drop_held(message, out);
        self.publish_view(out);
    }
}
