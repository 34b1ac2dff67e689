//! Packets kept for recipients not reached yet (store-and-forward), bounded per recipient
//! and in total, each for at most `max_age_ms` after its origin made it.
//!
//! When a recipient's share is full, its oldest packet gives way. When the whole store is
//! full, the oldest packet relayed for somebody else gives way; this node's own messages
//! are never pushed out by others' (a send is refused instead when the store holds nothing
//! else: the person sees "outbox full" rather than a message that silently disappears).

use std::collections::{BTreeMap, HashMap, HashSet};

use libp2p::PeerId;

use super::packet::MessageId;
use super::HeldRecord;

/// Neighbours remembered per packet as already having it; a packet that reached this many
/// is not offered to more (it has spread enough, and offering it on would loop).
const MAX_SENT_TO: usize = 64;

#[derive(Debug, Clone)]
pub struct HeldLimits {
    pub per_recipient: usize,
    pub total: usize,
    pub max_age_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Held {
    pub record: HeldRecord,
    pub recipient: PeerId,
    pub created_ms: u64,
    /// Neighbours that took it (a hop answered): not offered again while connected.
    pub sent_to: HashSet<PeerId>,
}

impl Held {
    pub fn sent_to_full(&self) -> bool {
        self.sent_to.len() >= MAX_SENT_TO
    }
}

/// What adding a packet did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Added {
    pub added: bool,
    /// Packets pushed out to make room.
    pub evicted: Vec<MessageId>,
}

#[derive(Debug)]
pub struct HeldStore {
    limits: HeldLimits,
    packets: HashMap<MessageId, Held>,
    /// (held since, id), oldest first.
    order: BTreeMap<(u64, MessageId), ()>,
    per_recipient: HashMap<PeerId, usize>,
}

impl HeldStore {
    pub fn new(limits: HeldLimits) -> Self {
        Self {
            limits,
            packets: HashMap::new(),
            order: BTreeMap::new(),
            per_recipient: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &HeldLimits {
        &self.limits
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    pub fn get(&self, id: &MessageId) -> Option<&Held> {
        self.packets.get(id)
    }

    pub fn contains(&self, id: &MessageId) -> bool {
        self.packets.contains_key(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&MessageId, &Held)> {
        self.packets.iter()
    }

    /// Packets in the order they were held, oldest first.
    pub fn iter_oldest_first(&self) -> impl Iterator<Item = (&MessageId, &Held)> {
        self.order
            .keys()
            .filter_map(|(_, id)| self.packets.get_key_value(id))
    }

    pub fn own_count(&self) -> usize {
        self.packets.values().filter(|h| h.record.own).count()
    }

    fn oldest_where(&self, keep: impl Fn(&Held) -> bool) -> Option<MessageId> {
        self.order
            .keys()
            .map(|(_, id)| id)
            .find(|id| self.packets.get(*id).is_some_and(&keep))
            .copied()
    }

    /// Adds a packet, making room by the rules in the module docs.
    pub fn add(
        &mut self,
        id: MessageId,
        recipient: PeerId,
        created_ms: u64,
        record: HeldRecord,
    ) -> Added {
        let mut out = Added::default();
        if self.packets.contains_key(&id) {
            return out;
        }
        if self.per_recipient.get(&recipient).copied().unwrap_or(0) >= self.limits.per_recipient {
            // The recipient's oldest relayed packet; never one of our own (a send is
            // refused instead, so the person hears of it).
            let victim = self.oldest_where(|h| h.recipient == recipient && !h.record.own);
            match victim {
                Some(victim) => {
                    self.remove(&victim);
                    out.evicted.push(victim);
                }
                None => return out,
            }
        }
        if self.packets.len() >= self.limits.total {
            match self.oldest_where(|h| !h.record.own) {
                Some(victim) => {
                    self.remove(&victim);
                    out.evicted.push(victim);
                }
                None => return out,
            }
        }
        self.order.insert((record.held_since_ms, id), ());
        *self.per_recipient.entry(recipient).or_default() += 1;
        self.packets.insert(
            id,
            Held {
                record,
                recipient,
                created_ms,
                sent_to: HashSet::new(),
            },
        );
        out.added = true;
        out
    }

    pub fn remove(&mut self, id: &MessageId) -> Option<Held> {
        let held = self.packets.remove(id)?;
        self.order.remove(&(held.record.held_since_ms, *id));
        if let Some(n) = self.per_recipient.get_mut(&held.recipient) {
            *n -= 1;
            if *n == 0 {
                self.per_recipient.remove(&held.recipient);
            }
        }
        Some(held)
    }

    /// The neighbours that took a packet.
    pub fn sent_to_mut(&mut self, id: &MessageId) -> Option<&mut HashSet<PeerId>> {
        self.packets.get_mut(id).map(|h| &mut h.sent_to)
    }

    /// Notes that `peer` took the packet.
    pub fn mark_sent(&mut self, id: &MessageId, peer: PeerId) {
        if let Some(held) = self.packets.get_mut(id) {
            if held.sent_to.len() < MAX_SENT_TO {
                held.sent_to.insert(peer);
            }
        }
    }

    /// A neighbour went away: when it comes back it is offered everything again (it may
    /// have restarted, or the packet may not have gone further).
    pub fn forget_peer(&mut self, peer: &PeerId) {
        for held in self.packets.values_mut() {
            held.sent_to.remove(peer);
        }
    }

    /// Removes and returns the packets past their age.
    pub fn expire(&mut self, now_ms: u64) -> Vec<MessageId> {
        let max_age = self.limits.max_age_ms;
        let old: Vec<MessageId> = self
            .packets
            .iter()
            .filter(|(_, h)| now_ms.saturating_sub(h.created_ms) >= max_age)
            .map(|(id, _)| *id)
            .collect();
        for id in &old {
            self.remove(id);
        }
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(own: bool, since: u64) -> HeldRecord {
        HeldRecord {
            envelope: vec![],
            ttl: 7,
            own,
            local: own,
            from_radio: false,
            held_since_ms: since,
        }
    }

    fn id(n: u8) -> MessageId {
        [n; 32]
    }

    #[test]
    fn bounds_push_out_the_oldest_relayed_packet_first() {
        let mut store = HeldStore::new(HeldLimits {
            per_recipient: 2,
            total: 3,
            max_age_ms: 100,
        });
        let a = PeerId::random();
        let b = PeerId::random();
        assert!(store.add(id(1), a, 0, record(false, 1)).added);
        assert!(store.add(id(2), a, 0, record(true, 2)).added);
        // a's share is full: its oldest relayed packet (1) gives way.
        let added = store.add(id(3), a, 0, record(false, 3));
        assert_eq!(added.evicted, vec![id(1)]);
        assert!(store.add(id(4), b, 50, record(false, 4)).added);
        // Total full: the oldest relayed one (3) goes, never the own one (2).
        let added = store.add(id(5), b, 50, record(false, 5));
        assert_eq!(added.evicted, vec![id(3)]);
        assert!(store.contains(&id(2)));
        assert_eq!(store.len(), 3);
        // Only own packets left for a, and a relayed packet for a cannot push them out.
        let mut own_only = HeldStore::new(HeldLimits {
            per_recipient: 1,
            total: 8,
            max_age_ms: 100,
        });
        assert!(own_only.add(id(1), a, 0, record(true, 1)).added);
        assert!(!own_only.add(id(2), a, 0, record(false, 2)).added);
        // Nor can another own one: the send is refused, the first stays.
        assert!(!own_only.add(id(3), a, 0, record(true, 3)).added);
        assert!(own_only.contains(&id(1)));
        // Age: created at 0 and 50, max age 100.
        assert_eq!(store.expire(100), vec![id(2)]);
        let mut left: Vec<_> = store.iter().map(|(id, _)| *id).collect();
        left.sort();
        assert_eq!(left, vec![id(4), id(5)]);
    }
}
