//! Packets from neighbours: checked, deduplicated, held when directed, and forwarded after
//! a jitter to a (thinned) set of neighbours.

use super::*;

impl RelayService {
    /// A packet from neighbour `from`. Returns whether it was accepted (the hop answer).
    pub fn on_packet(&mut self, now_ms: u64, from: PeerId, bytes: &[u8], out: &mut Outbox) -> bool {
        self.metrics.received.inc();
        // Most packets in a flood are copies of one already handled: recognise them by
        // their id before paying for a signature check.
        let checked = packet::peek(bytes).and_then(|(_, id)| {
            if self.seen.contains(&id) {
                Ok(Err(id))
            } else {
                packet::decode(bytes).map(Ok)
            }
        });
        // Copies cost a hash and are not charged. A neighbour over its rate is answered
        // "refused" and retries later; it is not struck: a store-and-forward backlog after a
        // partition legitimately arrives as fast as the link allows.
        if matches!(checked, Ok(Ok(_))) && !self.take_token(now_ms, &from) {
            self.refuse(now_ms, from, "flood", false, out);
            return false;
        }
        let packet = match checked {
            Ok(Ok(p)) => p,
            Ok(Err(copy_of)) => {
                self.on_copy(now_ms, copy_of, out);
                return true;
            }
            Err(error) => {
                tracing::debug!(peer_id = %from, %error, "relay packet refused");
                self.refuse(now_ms, from, error.reason(), true, out);
                return false;
            }
        };
        if packet.ttl == 0 {
            self.refuse(now_ms, from, "ttl_exhausted", true, out);
            return false;
        }
        // The origin's timestamp is judged against our wall clock.
        let wall_ms = out.wall_ms();
        if wall_ms.saturating_sub(packet.created_ms) >= self.config.max_age_ms {
            // Old, not necessarily hostile (a long-held packet): no strike.
            self.refuse(now_ms, from, "expired", false, out);
            return false;
        }
        if packet.created_ms > wall_ms + self.config.max_future_ms {
            self.refuse(now_ms, from, "from_future", false, out);
            return false;
        }
        if packet.origin == self.local_id {
            // Our own packet coming back around: nothing to do.
            self.seen.first_time(now_ms, &packet.id);
            self.metrics.duplicates.inc();
            return true;
        }
        // New by construction: copies were recognised above.
        self.seen.first_time(now_ms, &packet.id);
        if packet.content.addressee() == Some(&self.local_id) {
            self.handle_mine(now_ms, &packet, out);
            return true;
        }
        if let Content::Broadcast(payload) = &packet.content {
            self.deliver(now_ms, &packet, payload.clone(), true, out);
        }
        if let Content::Ack { message, .. } = &packet.content {
            // The recipient has it: copies held for it can go.
            if self
                .held
                .get(message)
                .is_some_and(|h| h.recipient == packet.origin)
            {
                self.drop_held(message, out);
                self.publish_view(out);
            }
        }
        let from_radio = self
            .neighbours
            .get(&from)
            .is_some_and(|n| n.kind == LinkKind::Radio);
        let remaining = packet.ttl - 1;
        // Directed packets and acks are held for store-and-forward: an ack lost to a
        // partition would otherwise leave its message pending at the origin for good
        // (relays drop the origin's later copies as duplicates).
        if let Some(addressee) = packet.content.addressee() {
            self.hold(
                now_ms, &packet, *addressee, remaining, from_radio, from, out,
            );
        }
        if remaining > 0 {
            self.schedule_forward(now_ms, &packet, remaining, from, from_radio, out);
        }
        true
    }

    pub(super) fn refuse(
        &mut self,
        now_ms: u64,
        from: PeerId,
        reason: &'static str,
        hostile: bool,
        out: &mut Outbox,
    ) {
        self.metrics.reject(reason);
        if hostile && self.strike(now_ms, &from) {
            tracing::warn!(peer_id = %from, reason, "relay: too many bad packets; disconnecting");
            self.metrics.neighbours_dropped.inc();
            out.push(Effect::Disconnect {
                peers: vec![from],
                reason: "relay_abuse",
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn hold(
        &mut self,
        now_ms: u64,
        packet: &RelayPacket,
        recipient: PeerId,
        remaining: u8,
        from_radio: bool,
        from: PeerId,
        out: &mut Outbox,
    ) {
        let record = HeldRecord {
            envelope: packet.envelope.clone(),
            ttl: remaining,
            own: false,
            local: false,
            from_radio,
            held_since_ms: now_ms,
        };
        if self.keep_held(packet.id, recipient, packet.created_ms, record, out) {
            // The neighbour it came from has it.
            self.held.mark_sent(&packet.id, from);
            self.publish_view(out);
        } else {
            self.metrics.drop_forward("held_full");
        }
    }

    /// Adds a packet to the held store and the table, removing what it pushed out; false if
    /// the bounds left no room for it.
    pub(super) fn keep_held(
        &mut self,
        id: MessageId,
        recipient: PeerId,
        created_ms: u64,
        record: HeldRecord,
        out: &mut Outbox,
    ) -> bool {
        let added = self.held.add(id, recipient, created_ms, record.clone());
        for old in &added.evicted {
            self.metrics.held_evicted.inc();
            self.persist(RelayOp::RemoveHeld { id: hex_id(old) }, out);
        }
        if added.added {
            self.persist(
                RelayOp::PutHeld {
                    id: hex_id(&id),
                    record,
                },
                out,
            );
        }
        added.added
    }

    /// Removes a held packet from the store and the table, if held.
    pub(super) fn drop_held(&mut self, id: &MessageId, out: &mut Outbox) {
        if self.held.remove(id).is_some() {
            self.persist(RelayOp::RemoveHeld { id: hex_id(id) }, out);
        }
    }

    pub(super) fn schedule_forward(
        &mut self,
        now_ms: u64,
        packet: &RelayPacket,
        remaining: u8,
        from: PeerId,
        from_radio: bool,
        out: &mut Outbox,
    ) {
        let mut candidates: Vec<PeerId> = self
            .neighbours
            .iter()
            .filter(|(p, _)| **p != from && **p != packet.origin)
            .filter(|(_, n)| self.crosses(from_radio, n.kind))
            .map(|(p, _)| *p)
            .collect();
        candidates.sort();
        if let Some(addressee) = packet.content.addressee() {
            if candidates.contains(addressee) {
                candidates = vec![*addressee];
            }
        }
        let limit = self.fanout(candidates.len());
        if candidates.len() > limit {
            candidates.shuffle(&mut self.rng);
            candidates.truncate(limit);
        }
        if candidates.is_empty() {
            return;
        }
        if self.forwards.len() >= self.config.forward_queue {
            self.metrics.drop_forward("queue_full");
            return;
        }
        let frame = match packet::encode(remaining, &packet.envelope) {
            Ok(f) => f,
            Err(_) => return,
        };
        let (lo, hi) = self.config.jitter_ms;
        let delay = if hi > lo {
            self.rng.gen_range(lo..=hi)
        } else {
            lo
        };
        self.next_forward += 1;
        self.forwards.insert(
            (now_ms + delay, self.next_forward),
            Forward {
                id: packet.id,
                frame,
                targets: candidates,
            },
        );
        self.arm_forward_timer(out);
    }

    pub(super) fn fanout(&self, candidates: usize) -> usize {
        let full = self.config.full_fanout_upto;
        if candidates <= full {
            candidates
        } else {
            full + (candidates - full) / 2
        }
    }

    pub(super) fn arm_forward_timer(&self, out: &mut Outbox) {
        if let Some(((due, _), _)) = self.forwards.first_key_value() {
            out.timer(*due, FORWARD);
        }
    }

    pub(super) fn run_due_forwards(&mut self, now_ms: u64, out: &mut Outbox) {
        while let Some(entry) = self.forwards.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let forward = entry.remove();
            // Acked meanwhile (its held copy went): a directed packet need not go on.
            for peer in forward.targets {
                if self
                    .held
                    .get(&forward.id)
                    .is_some_and(|h| h.sent_to.contains(&peer))
                {
                    continue;
                }
                self.send_to(peer, forward.id, forward.frame.clone(), out);
            }
        }
        self.arm_forward_timer(out);
    }
}
