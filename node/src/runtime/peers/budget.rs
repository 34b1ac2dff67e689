//! Keeping the number of connections near a target.
//!
//! Kademlia's walks connect a node to many peers, and gossipsub keeps every connection open
//! (it holds a stream on each), so without a budget a node in a small mesh ends up connected
//! to everyone: each connection costs memory, heartbeat gossip and wake-ups. A pure decision:
//! given the connected peers, which ones to disconnect.
//!
//! Rules: nothing is pruned until the count exceeds `target + slack` (hysteresis, so a node at
//! the edge does not churn); then the surplus down to `target` is chosen among unprotected
//! peers (not in the gossip mesh, not a bootstrap peer) that have been connected for at least
//! [`GRACE`], youngest first, so long-lived connections survive. If too few are prunable the
//! node stays above target rather than cut a protected link.

use std::time::Duration;

use libp2p::PeerId;

/// A connection is never pruned before it is this old (identify and gossip need a moment).
pub const GRACE: Duration = Duration::from_secs(10);
/// How far above target a node may drift before pruning starts.
pub const SLACK: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub peer: PeerId,
    pub connected_for: Duration,
    /// In the gossip mesh or a bootstrap peer.
    pub protected: bool,
}

/// Radio links kept by the budget: a phone holds 6–8 BLE links at most (the simulated
/// radio's limit is 7), so the node settles at 4 and prunes above [`RADIO_SLACK`] more,
/// keeping a slot free to hear a new neighbour.
pub const RADIO_TARGET: usize = 4;
pub const RADIO_SLACK: usize = 2;

/// The peers to disconnect to bring `candidates` back to `target`.
pub fn choose_prunes(candidates: &[Candidate], target: usize) -> Vec<PeerId> {
    choose_prunes_with(candidates, target, SLACK)
}

/// As [`choose_prunes`], with another slack (radio links use [`RADIO_SLACK`]).
pub fn choose_prunes_with(candidates: &[Candidate], target: usize, slack: usize) -> Vec<PeerId> {
    if candidates.len() <= target.saturating_add(slack) {
        return Vec::new();
    }
    let excess = candidates.len() - target;
    let mut prunable: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !c.protected && c.connected_for >= GRACE)
        .collect();
    prunable.sort_by_key(|c| (c.connected_for, c.peer));
    prunable.into_iter().take(excess).map(|c| c.peer).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidates(spec: &[(u64, bool)]) -> Vec<Candidate> {
        spec.iter()
            .map(|(secs, protected)| Candidate {
                peer: PeerId::random(),
                connected_for: Duration::from_secs(*secs),
                protected: *protected,
            })
            .collect()
    }

    #[test]
    fn radio_links_settle_at_their_own_lower_target() {
        let c = candidates(&[(100, false); 6]);
        assert!(choose_prunes_with(&c, RADIO_TARGET, RADIO_SLACK).is_empty());
        let c = candidates(&[(100, false); 7]);
        assert_eq!(choose_prunes_with(&c, RADIO_TARGET, RADIO_SLACK).len(), 3);
    }

    #[test]
    fn nothing_pruned_within_slack() {
        let c = candidates(&[(100, false); 8]);
        assert!(choose_prunes(&c, 4).is_empty());
        let c = candidates(&[(100, false); 9]);
        assert_eq!(choose_prunes(&c, 4).len(), 5);
    }

    #[test]
    fn youngest_unprotected_go_first_and_new_ones_are_spared() {
        let c = candidates(&[
            (500, false),
            (20, false),
            (5, false),
            (300, true),
            (40, false),
            (60, false),
            (80, false),
        ]);
        let pruned = choose_prunes(&c, 1);
        // 6 over target; prunable: 500, 20, 40, 60, 80 (5 s is in grace, 300 protected).
        assert_eq!(pruned.len(), 5);
        assert!(!pruned.contains(&c[2].peer), "in grace");
        assert!(!pruned.contains(&c[3].peer), "protected");
        assert_eq!(pruned[0], c[1].peer, "youngest first");
    }

    proptest! {
        #[test]
        fn never_prunes_protected_or_below_target(
            spec in proptest::collection::vec((0u64..100, any::<bool>()), 0..60),
            target in 0usize..40,
        ) {
            let c = candidates(&spec);
            let pruned = choose_prunes(&c, target);
            for p in &pruned {
                let cand = c.iter().find(|x| x.peer == *p).unwrap();
                prop_assert!(!cand.protected);
                prop_assert!(cand.connected_for >= GRACE);
            }
            if !pruned.is_empty() {
                prop_assert!(c.len() - pruned.len() >= target);
            }
        }
    }
}
