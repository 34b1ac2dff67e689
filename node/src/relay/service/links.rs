//! Neighbours: links coming and going (held packets offered to a new one), sending a
//! frame on a link, the hop's answer, and each neighbour's strikes and rate tokens.

use super::*;

impl RelayService {
    /// A link to `peer` is up.
    pub fn link_up(&mut self, now_ms: u64, peer: PeerId, kind: LinkKind, out: &mut Outbox) {
        let config = &self.config;
        self.neighbours.entry(peer).or_insert(Neighbour {
            kind,
            tokens: config.neighbour_burst,
            refilled_ms: now_ms,
            strikes: 0,
            strikes_since_ms: now_ms,
            in_flight: 0,
        });
        self.offer_held(peer, out);
    }

    /// Store-and-forward: offers `peer` the held packets it may carry on and has not taken
    /// yet, oldest first, as many as its in-flight budget allows. Called when the link comes
    /// up and again whenever a hop answers, so a long backlog drains at the link's pace.
    pub(super) fn offer_held(&mut self, peer: PeerId, out: &mut Outbox) {
        let Some(n) = self.neighbours.get(&peer) else {
            return;
        };
        let (kind, room) = (n.kind, MAX_IN_FLIGHT_PER_PEER.saturating_sub(n.in_flight));
        let prefer_radio_only = self.own_packets_radio_only();
        if room == 0 {
            return;
        }
        let offers: Vec<(MessageId, Vec<u8>)> = self
            .held
            .iter_oldest_first()
            .filter(|(_, h)| !h.sent_to.contains(&peer) && !h.sent_to_full())
            .filter(|(_, h)| h.record.local || self.crosses(h.record.from_radio, kind))
            .filter(|(_, h)| !(h.record.local && prefer_radio_only && kind != LinkKind::Radio))
            .filter(|(_, h)| h.recipient == peer || h.record.ttl > 0)
            .take(room)
            .filter_map(|(id, h)| {
                packet::encode(h.record.ttl.max(1), &h.record.envelope)
                    .ok()
                    .map(|frame| (*id, frame))
            })
            .collect();
        for (id, frame) in offers {
            self.send_to(peer, id, frame, out);
        }
    }

    /// The last link to `peer` went down.
    pub fn link_down(&mut self, peer: &PeerId) {
        self.neighbours.remove(peer);
        self.held.forget_peer(peer);
    }

    /// Whether a packet that came in over the radio (or not) may go out on a `kind` link.
    pub(super) fn crosses(&self, from_radio: bool, kind: LinkKind) -> bool {
        self.config.gateway || from_radio == (kind == LinkKind::Radio)
    }

    pub(super) fn send_to(
        &mut self,
        peer: PeerId,
        id: MessageId,
        frame: Vec<u8>,
        out: &mut Outbox,
    ) -> bool {
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return false;
        };
        if n.in_flight >= MAX_IN_FLIGHT_PER_PEER {
            self.metrics.drop_forward("neighbour_busy");
            return false;
        }
        n.in_flight += 1;
        self.held.mark_sent(&id, peer);
        self.metrics.forwarded.inc();
        self.next_hop += 1;
        self.hops.insert(self.next_hop, (peer, id));
        out.push(Effect::Send {
            peer,
            protocol: protocol::PROTOCOL,
            data: frame,
            token: self.next_hop,
        });
        true
    }

    /// A neighbour answered a packet (or the link failed first).
    pub fn hop_result(
        &mut self,
        peer: &PeerId,
        id: &MessageId,
        outcome: HopOutcome,
        out: &mut Outbox,
    ) {
        if let Some(n) = self.neighbours.get_mut(peer) {
            n.in_flight = n.in_flight.saturating_sub(1);
        }
        match outcome {
            HopOutcome::Failed => {
                self.metrics.hop_failures.inc();
                // Offered again when the neighbour next connects.
                if let Some(sent_to) = self.held.sent_to_mut(id) {
                    sent_to.remove(peer);
                }
            }
            HopOutcome::Accepted => self.offer_held(*peer, out),
        }
    }

    /// Counts a refusal against a neighbour; true if it crossed the line.
    pub(super) fn strike(&mut self, now_ms: u64, peer: &PeerId) -> bool {
        let Some(n) = self.neighbours.get_mut(peer) else {
            return false;
        };
        if now_ms.saturating_sub(n.strikes_since_ms) > self.config.strike_window_ms {
            n.strikes = 0;
            n.strikes_since_ms = now_ms;
        }
        n.strikes += 1;
        if n.strikes >= self.config.strikes_to_disconnect {
            n.strikes = 0;
            return true;
        }
        false
    }

    pub(super) fn take_token(&mut self, now_ms: u64, peer: &PeerId) -> bool {
        let Some(n) = self.neighbours.get_mut(peer) else {
            // A packet from a peer whose link the driver has not reported: allow it.
            return true;
        };
        let elapsed_s = now_ms.saturating_sub(n.refilled_ms) as f64 / 1000.0;
        n.tokens = (n.tokens + elapsed_s * self.config.neighbour_per_second)
            .min(self.config.neighbour_burst);
        n.refilled_ms = now_ms;
        if n.tokens < 1.0 {
            return false;
        }
        n.tokens -= 1.0;
        true
    }
}
