//! Mesh time: how far this node's wall clock is from the mesh's, estimated from the signed
//! timestamps of what peers publish, so clocks that are minutes apart still agree on what
//! "now" is where it matters (the replicated store's hybrid clocks).
//!
//! Each sample is one peer's raw wall clock minus ours at receipt (the message's transit
//! time, milliseconds on a mesh, is ignored), taken only from what a direct neighbour sent
//! of its own (the caller's rule): a peer has one sample however many keys it makes, and no
//! relay can replay another's old timestamps into the estimate. The estimate is the median of this node's own
//! offset (0) and the latest sample of every peer heard in the last [`SAMPLE_TTL_MS`] (the
//! mean of the middle two for an even count). Every node sees roughly the same set of raw
//! clocks, so every node steers to roughly the same reference, the median clock of the mesh:
//! one node 90 s ahead among correct ones corrects itself by −90 s, and the correct ones do
//! not move. Two nodes alone cannot tell which one is wrong; each moves halfway, so they
//! still agree. Samples are raw clocks, never
//! corrected ones, so corrections do not feed back into each other. The correction is
//! bounded by [`MAX_CORRECTION_MS`]: beyond that a clock is broken, not skewed, and the node
//! says so instead of following.
//!
//! Pure: the times are passed in.

use std::collections::HashMap;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Samples older than this are ignored (peers publish every few seconds).
pub const SAMPLE_TTL_MS: u64 = 5 * 60 * 1000;
/// Peers whose samples are kept; further peers are not sampled until one expires.
pub const MAX_SAMPLED_PEERS: usize = 4096;
/// The largest correction followed; a larger estimate is clamped (and reported as such).
pub const MAX_CORRECTION_MS: i64 = 10 * 60 * 1000;
/// An estimate that moved less than this since the last one shared is not shared again.
pub const SHARE_STEP_MS: i64 = 250;

/// The estimate, as shared with capabilities ([`crate::runtime::capability::Notice::share`])
/// and shown in the status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshClock {
    /// Add to this node's wall clock to get mesh time (negative: this node runs ahead).
    pub offset_ms: i64,
    /// Peers the estimate is drawn from.
    pub peers: usize,
    /// The median was beyond [`MAX_CORRECTION_MS`] and was clamped.
    pub clamped: bool,
}

impl MeshClock {
    /// Mesh time for this node's wall time `wall_ms`.
    pub fn mesh_ms(&self, wall_ms: u64) -> u64 {
        wall_ms.saturating_add_signed(self.offset_ms)
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct ClockOffsets {
    /// By peer: (their wall minus ours, when heard in node time).
    samples: HashMap<PeerId, (i64, u64)>,
    shared: MeshClock,
}

impl ClockOffsets {
    /// `peer` stamped `their_ms` on something we received at our wall time `our_ms`, at
    /// node time `at_ms` (expiry follows node time: a step of the wall clock keeps no stale
    /// sample alive).
    pub fn sample(&mut self, peer: PeerId, their_ms: u64, our_ms: u64, at_ms: u64) {
        if self.samples.len() >= MAX_SAMPLED_PEERS && !self.samples.contains_key(&peer) {
            self.expire(at_ms);
            if self.samples.len() >= MAX_SAMPLED_PEERS {
                return;
            }
        }
        let offset = i64::try_from(i128::from(their_ms) - i128::from(our_ms)).unwrap_or(0);
        self.samples.insert(peer, (offset, at_ms));
    }

    /// One peer's latest offset (their clock minus ours), if it is fresh.
    pub fn of(&self, peer: &PeerId, now_ms: u64) -> Option<i64> {
        self.samples
            .get(peer)
            .filter(|(_, at)| now_ms.saturating_sub(*at) <= SAMPLE_TTL_MS)
            .map(|(offset, _)| *offset)
    }

    fn expire(&mut self, now_ms: u64) {
        self.samples
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) <= SAMPLE_TTL_MS);
    }

    /// The estimate now (see the module docs).
    pub fn estimate(&mut self, now_ms: u64) -> MeshClock {
        self.expire(now_ms);
        let peers = self.samples.len();
        let mut offsets: Vec<i64> = self.samples.values().map(|(o, _)| *o).collect();
        offsets.push(0);
        offsets.sort_unstable();
        let mid = offsets.len() / 2;
        let median = if offsets.len() % 2 == 1 {
            offsets[mid]
        } else {
            // The two middle ones' mean, rounded towards zero.
            (offsets[mid - 1] / 2).saturating_add(offsets[mid] / 2)
        };
        MeshClock {
            offset_ms: median.clamp(-MAX_CORRECTION_MS, MAX_CORRECTION_MS),
            peers,
            clamped: median.abs() > MAX_CORRECTION_MS,
        }
    }

    /// The estimate now, and whether it moved enough since the last one found worth
    /// sharing to be shared.
    pub fn update(&mut self, now_ms: u64) -> (MeshClock, bool) {
        let now = self.estimate(now_ms);
        let moved = (now.offset_ms - self.shared.offset_ms).abs() >= SHARE_STEP_MS
            || now.clamped != self.shared.clamped;
        if moved {
            self.shared = now;
        }
        (now, moved)
    }

    /// The peers whose clocks are furthest from ours, at most `n`, largest first.
    pub fn furthest(&self, n: usize, now_ms: u64) -> Vec<(PeerId, i64)> {
        let mut all: Vec<(PeerId, i64)> = self
            .samples
            .iter()
            .filter(|(_, (_, at))| now_ms.saturating_sub(*at) <= SAMPLE_TTL_MS)
            .map(|(peer, (offset, _))| (*peer, *offset))
            .collect();
        all.sort_by_key(|(_, offset)| std::cmp::Reverse(offset.unsigned_abs()));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn offsets(peer_offsets: &[i64]) -> ClockOffsets {
        let mut c = ClockOffsets::default();
        for offset in peer_offsets {
            c.sample(
                PeerId::random(),
                NOW.saturating_add_signed(*offset),
                NOW,
                NOW,
            );
        }
        c
    }

    #[test]
    fn a_fast_node_among_correct_ones_corrects_itself_and_they_do_not_move() {
        // The fast node sees three peers 90 s behind it.
        assert_eq!(
            offsets(&[-90_000, -90_000, -90_000])
                .estimate(NOW)
                .offset_ms,
            -90_000
        );
        // A correct node sees two correct peers and the fast one.
        assert_eq!(offsets(&[0, 0, 90_000]).estimate(NOW).offset_ms, 0);
        // A slow node sees everyone ahead.
        assert_eq!(
            offsets(&[90_000, 90_000, 90_000]).estimate(NOW).offset_ms,
            90_000
        );
    }

    #[test]
    fn two_nodes_alone_meet_halfway_and_stale_samples_are_dropped() {
        // A sees B 40 s ahead, B sees A 40 s behind: both land on A + 20 s.
        let mut a = offsets(&[40_000]);
        assert_eq!(
            a.estimate(NOW),
            MeshClock {
                offset_ms: 20_000,
                peers: 1,
                clamped: false
            }
        );
        let mut b = offsets(&[-40_000]);
        assert_eq!(b.estimate(NOW).offset_ms, -20_000);
        assert_eq!(a.estimate(NOW + SAMPLE_TTL_MS + 1).offset_ms, 0);
        assert_eq!(a.estimate(NOW + SAMPLE_TTL_MS + 1).peers, 0);
    }

    #[test]
    fn two_nodes_and_a_third_meet_at_the_median_and_a_broken_clock_is_clamped() {
        // Even count (self + 3 peers): the mean of the middle two.
        assert_eq!(
            offsets(&[10_000, 20_000, 30_000]).estimate(NOW).offset_ms,
            15_000
        );
        let broken = offsets(&[3_600_000, 3_600_000]).estimate(NOW);
        assert_eq!(broken.offset_ms, MAX_CORRECTION_MS);
        assert!(broken.clamped);
    }

    #[test]
    fn shares_only_moves_worth_sharing() {
        let mut c = offsets(&[5_000, 5_000]);
        assert_eq!(c.update(NOW), (c.estimate(NOW), true));
        assert_eq!(c.update(NOW).0.offset_ms, 5_000);
        assert!(!c.update(NOW).1);
        c.sample(PeerId::random(), NOW + 5_100, NOW, NOW);
        assert!(!c.update(NOW).1, "moved under the step");
    }

    #[test]
    fn the_furthest_peers_come_first() {
        let mut c = ClockOffsets::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        c.sample(a, NOW - 500, NOW, NOW);
        c.sample(b, NOW + 90_000, NOW, NOW);
        assert_eq!(c.furthest(1, NOW), vec![(b, 90_000)]);
        assert_eq!(c.of(&a, NOW), Some(-500));
    }
}
