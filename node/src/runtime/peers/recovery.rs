//! Getting a stalled link back as soon as the network lets it.
//!
//! A partition is silent: nothing closes the connection, and TCP retransmits what it holds
//! with a timeout that doubles each time, so after 30 s apart the next retransmission comes
//! up to half a minute after the network heals, and everything waits behind it (measured:
//! 24 s before a node held what its peer wrote while apart). So every connection is pinged
//! every [`PING_EVERY`]; one that has answered none for [`STALL_AFTER_MS`] is closed, and the
//! peer is dialled again every [`DIAL_EVERY_MS`] for up to [`RECOVER_FOR_MS`] with fresh
//! connections (no backoff to inherit),
//! [`MAX_PENDING_PER_PEER`] at a time, staggered, so one of them gets through within about a
//! second of the heal. On connect the capabilities catch up at once (the store starts a sync
//! session with every new neighbour).
//!
//! Pure: times are passed in. Bounded: at most [`MAX_RECOVERING`] peers (a new one beyond
//! replaces the one lost longest ago).

use std::collections::HashMap;
use std::time::Duration;

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

/// How often a connection is pinged (32 bytes each way): four pings go missing before a
/// stall is called, at half the traffic of pinging every second (which counts on Bluetooth
/// links; on a 10-node testnet the CPU difference was within noise).
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// A ping unanswered this long fails (libp2p-ping reports only the second failure in a row).
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with no answered ping for this long is stalled. On a lossy link (200 ms
/// round trips, 10 % loss) a ping takes this long only if the same segment is lost four
/// times in a row (about once in 10,000 pings).
pub const STALL_AFTER_MS: u64 = 8_000;
/// A lost peer is dialled this often...
pub const DIAL_EVERY_MS: u64 = 2_000;
/// ...for this long after it was lost, then left to the usual redials.
pub const RECOVER_FOR_MS: u64 = 5 * 60 * 1000;
/// Dials to one lost peer pending at once (each may wait in TCP's SYN retries).
pub const MAX_PENDING_PER_PEER: usize = 4;
/// Peers being recovered at once.
pub const MAX_RECOVERING: usize = 32;

#[derive(Debug, Clone)]
struct Lost {
    addrs: Vec<Multiaddr>,
    since_ms: u64,
    next_ms: u64,
    pending: Vec<ConnectionId>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Recovery {
    lost: HashMap<PeerId, Lost>,
}

impl Recovery {
    /// `peer`'s link stalled and was closed; `addrs` are where it can be dialled.
    pub fn lost(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now_ms: u64) {
        if addrs.is_empty() {
            return;
        }
        if !self.lost.contains_key(&peer) && self.lost.len() >= MAX_RECOVERING {
            if let Some(oldest) = self
                .lost
                .iter()
                .min_by_key(|(_, l)| l.since_ms)
                .map(|(p, _)| *p)
            {
                self.lost.remove(&oldest);
            }
        }
        let entry = self.lost.entry(peer).or_insert(Lost {
            addrs: Vec::new(),
            since_ms: now_ms,
            next_ms: now_ms,
            pending: Vec::new(),
        });
        entry.addrs = addrs;
    }

    /// Peers to dial now, with their addresses, leaving out those `connected` says are
    /// (their close is still on its way); the caller reports each dial's id with
    /// [`Self::dialling`].
    pub fn due(
        &mut self,
        now_ms: u64,
        connected: impl Fn(&PeerId) -> bool,
    ) -> Vec<(PeerId, Vec<Multiaddr>)> {
        self.lost
            .retain(|_, l| now_ms.saturating_sub(l.since_ms) <= RECOVER_FOR_MS);
        let mut due = Vec::new();
        for (peer, l) in &mut self.lost {
            if l.next_ms <= now_ms && l.pending.len() < MAX_PENDING_PER_PEER && !connected(peer) {
                l.next_ms = now_ms.saturating_add(DIAL_EVERY_MS);
                due.push((*peer, l.addrs.clone()));
            }
        }
        due
    }

    pub fn dialling(&mut self, peer: &PeerId, connection: ConnectionId) {
        if let Some(l) = self.lost.get_mut(peer) {
            l.pending.push(connection);
        }
    }

    /// A dial ended without a connection.
    pub fn dial_failed(&mut self, connection: ConnectionId) {
        for l in self.lost.values_mut() {
            l.pending.retain(|c| *c != connection);
        }
    }

    /// Stops recovering `peer`: it is connected again, or was closed on purpose.
    pub fn forget(&mut self, peer: &PeerId) {
        self.lost.remove(peer);
    }

    pub fn is_recovering(&self, peer: &PeerId) -> bool {
        self.lost.contains_key(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> Vec<Multiaddr> {
        vec!["/ip4/10.0.0.1/tcp/4747".parse().unwrap()]
    }

    #[test]
    fn a_lost_peer_is_dialled_every_two_seconds_a_few_at_a_time_until_it_is_back() {
        let mut r = Recovery::default();
        let peer = PeerId::random();
        r.lost(peer, addr(), 0);
        let mut dialled = Vec::new();
        let mut id = 0;
        for now in (0..20_000).step_by(500) {
            for (p, _) in r.due(now, |_| false) {
                id += 1;
                r.dialling(&p, ConnectionId::new_unchecked(id));
                dialled.push(now);
            }
        }
        // Every 2 s until four are pending, then none until one ends.
        assert_eq!(dialled, vec![0, 2_000, 4_000, 6_000]);
        r.dial_failed(ConnectionId::new_unchecked(1));
        assert!(r.due(20_000, |_| true).is_empty(), "still connected");
        assert_eq!(r.due(20_000, |_| false).len(), 1);
        r.forget(&peer);
        assert!(!r.is_recovering(&peer));
        assert!(r.due(30_000, |_| false).is_empty());
    }

    #[test]
    fn recovery_gives_up_after_its_time_and_stays_bounded() {
        let mut r = Recovery::default();
        let peer = PeerId::random();
        r.lost(peer, addr(), 0);
        assert!(r.due(RECOVER_FOR_MS + 1, |_| false).is_empty());
        assert!(!r.is_recovering(&peer));
        for i in 0..(MAX_RECOVERING as u64 + 5) {
            r.lost(PeerId::random(), addr(), i);
        }
        assert_eq!(r.lost.len(), MAX_RECOVERING);
        // Nowhere to dial: not recovered.
        let mut r = Recovery::default();
        r.lost(peer, Vec::new(), 0);
        assert!(!r.is_recovering(&peer));
    }
}
