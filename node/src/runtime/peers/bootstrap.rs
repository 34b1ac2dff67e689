//! Keeping bootstrap peers connected: redial with capped, jittered exponential backoff.
//!
//! A pure state machine. The swarm loop feeds it connection events and asks it, with the
//! current time, which bootstrap addresses are due for a dial; randomness for jitter comes in
//! as an argument. A bootstrap address may or may not name its peer (`/p2p/...`); when it does
//! not, the peer learned from the first successful connection is remembered.

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

/// First retry delay after a loss or failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryState {
    Due { at_ms: u64 },
    Dialing { connection: ConnectionId },
    Connected,
}

#[derive(Debug, Clone)]
struct Entry {
    addr: Multiaddr,
    peer: Option<PeerId>,
    state: EntryState,
    failures: u32,
}

/// A bootstrap dial that failed, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDial {
    pub addr: Multiaddr,
    /// Consecutive failures of this address so far.
    pub failures: u32,
    /// When the next attempt is due.
    pub retry_in: Duration,
}

impl FailedDial {
    /// Whether a person should hear of this failure: the first three, then at the 4th, 8th,
    /// 16th, ... so a bootstrap peer that stays away is reported, but ever more rarely.
    pub fn worth_logging(&self) -> bool {
        self.failures <= 3 || self.failures.is_power_of_two()
    }
}

/// A dial the swarm loop should start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDial {
    pub index: usize,
    pub addr: Multiaddr,
    pub peer: Option<PeerId>,
}

#[derive(Debug, Default)]
pub struct BootstrapDialer {
    entries: Vec<Entry>,
}

/// Backoff before attempt number `failures + 1`; `jitter` in [0, 1) spreads it by up to 25 %.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << failures.min(16));
    let capped = exp.min(BACKOFF_MAX);
    capped.mul_f64(1.0 + 0.25 * jitter.clamp(0.0, 1.0))
}

impl BootstrapDialer {
    /// Every address is due at `now_ms`.
    pub fn new(addrs: impl IntoIterator<Item = Multiaddr>, now_ms: u64) -> Self {
        let entries = addrs
            .into_iter()
            .map(|addr| Entry {
                peer: peer_of(&addr),
                addr,
                state: EntryState::Due { at_ms: now_ms },
                failures: 0,
            })
            .collect();
        Self { entries }
    }

    /// Entries due now. The caller starts a dial for each and reports it with
    /// [`Self::dial_started`] or [`Self::dial_failed`].
    pub fn due(&self, now_ms: u64) -> Vec<DueDial> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e.state, EntryState::Due { at_ms } if at_ms <= now_ms))
            .map(|(index, e)| DueDial {
                index,
                addr: e.addr.clone(),
                peer: e.peer,
            })
            .collect()
    }

    pub fn dial_started(&mut self, index: usize, connection: ConnectionId) {
        if let Some(e) = self.entries.get_mut(index) {
            e.state = EntryState::Dialing { connection };
        }
    }

    /// A dial could not start or its connection failed.
    pub fn dial_failed(&mut self, index: usize, now_ms: u64, jitter: f64) -> Option<FailedDial> {
        let e = self.entries.get_mut(index)?;
        Some(schedule_retry(e, now_ms, jitter))
    }

    /// An outgoing connection attempt failed; matched by its id. Returns the bootstrap
    /// address it was for, if it was a bootstrap dial.
    pub fn connection_failed(
        &mut self,
        connection: ConnectionId,
        now_ms: u64,
        jitter: f64,
    ) -> Option<FailedDial> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.state == (EntryState::Dialing { connection }))?;
        Some(schedule_retry(e, now_ms, jitter))
    }

    /// A connection to `peer` was established (by us or by them).
    pub fn connected(&mut self, connection: ConnectionId, peer: PeerId) {
        for e in &mut self.entries {
            let ours = e.state == (EntryState::Dialing { connection });
            if ours && e.peer.is_none() {
                e.peer = Some(peer);
            }
            if ours || e.peer == Some(peer) {
                e.state = EntryState::Connected;
                e.failures = 0;
            }
        }
    }

    /// The last connection to `peer` closed.
    pub fn disconnected(&mut self, peer: PeerId, now_ms: u64, jitter: f64) {
        for e in &mut self.entries {
            if e.peer == Some(peer) && e.state == EntryState::Connected {
                schedule_retry(e, now_ms, jitter);
            }
        }
    }

    /// True if `peer` is one of the bootstrap peers.
    pub fn is_bootstrap_peer(&self, peer: &PeerId) -> bool {
        self.entries.iter().any(|e| e.peer.as_ref() == Some(peer))
    }

    /// Number of bootstrap entries currently connected.
    pub fn connected_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state == EntryState::Connected)
            .count()
    }
}

fn schedule_retry(e: &mut Entry, now_ms: u64, jitter: f64) -> FailedDial {
    let delay = backoff(e.failures, jitter);
    e.failures = e.failures.saturating_add(1);
    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    e.state = EntryState::Due {
        at_ms: now_ms.saturating_add(delay_ms),
    };
    FailedDial {
        addr: e.addr.clone(),
        failures: e.failures,
        retry_in: delay,
    }
}

/// The peer a multiaddr names with a trailing `/p2p/...`, if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn everything_is_due_at_start_and_not_twice() {
        let mut d = BootstrapDialer::new([addr(1), addr(2)], 100);
        let due = d.due(100);
        assert_eq!(due.len(), 2);
        d.dial_started(0, ConnectionId::new_unchecked(1));
        d.dial_started(1, ConnectionId::new_unchecked(2));
        assert!(d.due(10_000).is_empty());
    }

    #[test]
    fn failure_backs_off_exponentially_and_resets_on_success() {
        let mut d = BootstrapDialer::new([addr(1)], 0);
        let c = ConnectionId::new_unchecked(1);
        d.dial_started(0, c);
        d.connection_failed(c, 0, 0.0);
        assert!(d.due(999).is_empty());
        assert_eq!(d.due(1000).len(), 1);
        d.dial_started(0, c);
        d.connection_failed(c, 1000, 0.0);
        assert!(d.due(2999).is_empty());
        assert_eq!(d.due(3000).len(), 1);
        let peer = PeerId::random();
        let c2 = ConnectionId::new_unchecked(2);
        d.dial_started(0, c2);
        d.connected(c2, peer);
        assert_eq!(d.connected_count(), 1);
        d.disconnected(peer, 10_000, 0.0);
        // Success reset the failure count: back to the base delay.
        assert!(d.due(10_999).is_empty());
        assert_eq!(d.due(11_000).len(), 1);
    }

    #[test]
    fn failures_name_the_address_and_are_reported_ever_more_rarely() {
        let mut d = BootstrapDialer::new([addr(1)], 0);
        let other = ConnectionId::new_unchecked(99);
        // A failed dial that was not a bootstrap dial is not reported as one.
        assert_eq!(d.connection_failed(other, 0, 0.0), None);
        let mut logged = Vec::new();
        for round in 1..=20u32 {
            let c = ConnectionId::new_unchecked(round as usize);
            d.dial_started(0, c);
            let failed = d.connection_failed(c, 0, 0.0).unwrap();
            assert_eq!(failed.addr, addr(1));
            assert_eq!(failed.failures, round);
            if failed.worth_logging() {
                logged.push(round);
            }
        }
        assert_eq!(logged, vec![1, 2, 3, 4, 8, 16]);
    }

    #[test]
    fn inbound_connection_from_known_bootstrap_peer_counts() {
        let peer = PeerId::random();
        let with_peer: Multiaddr = format!("/ip4/127.0.0.1/tcp/5/p2p/{peer}").parse().unwrap();
        let mut d = BootstrapDialer::new([with_peer], 0);
        d.connected(ConnectionId::new_unchecked(9), peer);
        assert_eq!(d.connected_count(), 1);
        assert!(d.due(u64::MAX).is_empty());
    }

    proptest! {
        #[test]
        fn backoff_is_bounded_and_monotone(failures in 0u32..100, jitter in 0.0f64..1.0) {
            let b = backoff(failures, jitter);
            prop_assert!(b >= BACKOFF_BASE);
            prop_assert!(b <= BACKOFF_MAX.mul_f64(1.25));
            prop_assert!(backoff(failures + 1, 0.0) >= backoff(failures, 0.0));
        }
    }
}
