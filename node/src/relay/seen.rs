//! The duplicate filter: ids of packets seen lately, bounded in count and age.
//!
//! A flood reaches a node once per neighbour; only the first copy is handled. An id is
//! remembered for `ttl_ms` (longer than any flood takes to die out) and at most `capacity`
//! ids are kept: when full, the oldest is forgotten first. The service keeps ids as long as
//! a packet may live (`max_age_ms`), so a copy replayed later is recognised unless the
//! filter overflowed first: a neighbour that pushes more than `capacity` fresh packets
//! through (at its rate limit, about 5 minutes) could then replay an older one once.

use std::collections::{HashMap, VecDeque};

use super::packet::MessageId;

#[derive(Debug)]
pub struct SeenCache {
    capacity: usize,
    ttl_ms: u64,
    at: HashMap<MessageId, u64>,
    order: VecDeque<(u64, MessageId)>,
}

impl SeenCache {
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl_ms,
            at: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id`; true if it was not seen within the filter's memory.
    pub fn first_time(&mut self, now_ms: u64, id: &MessageId) -> bool {
        self.expire(now_ms);
        if self.at.contains_key(id) {
            return false;
        }
        while self.at.len() >= self.capacity {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.at.remove(&old);
                }
                None => break,
            }
        }
        self.at.insert(*id, now_ms);
        self.order.push_back((now_ms, *id));
        true
    }

    /// Forgets `id` (its handling failed: the next copy must be taken as new).
    pub fn forget(&mut self, id: &MessageId) {
        self.at.remove(id);
    }

    pub fn contains(&self, id: &MessageId) -> bool {
        self.at.contains_key(id)
    }

    pub fn expire(&mut self, now_ms: u64) {
        while let Some((at, id)) = self.order.front().copied() {
            if now_ms.saturating_sub(at) < self.ttl_ms {
                break;
            }
            self.order.pop_front();
            self.at.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> MessageId {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        id
    }

    #[test]
    fn remembers_within_bounds_of_count_and_age() {
        let mut seen = SeenCache::new(3, 1_000);
        assert!(seen.first_time(0, &id(1)));
        assert!(!seen.first_time(10, &id(1)));
        for n in 2..=4 {
            assert!(seen.first_time(20, &id(n)));
        }
        // Full at three: the oldest went.
        assert_eq!(seen.len(), 3);
        assert!(!seen.contains(&id(1)));
        assert!(seen.contains(&id(4)));
        // Age: everything is forgotten after ttl.
        seen.expire(1_020);
        assert!(seen.is_empty());
        assert!(seen.first_time(1_030, &id(4)));
    }
}
