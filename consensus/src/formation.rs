//! How nodes group themselves into clusters of about [`TARGET_SIZE`], with no
//! configuration: pure decisions over what a node has heard (docs/clusters.md,
//! "Formation").
//!
//! Every coordinator announces its cluster on gossip every [`Timing::announce_every_ms`]:
//! id, term, coordinator, members. From those announcements:
//!
//! - an unclustered node asks to join a reachable cluster that has room, the one its own id
//!   ranks first among them ([`choose_cluster`], rendezvous hashing): a thousand nodes
//!   starting together spread over every cluster with room instead of queueing at the
//!   fullest. The coordinator adds it with a Raft membership change, one at a time, and
//!   refuses once the cluster holds [`TARGET_SIZE`];
//! - a node that may coordinate and has heard of no cluster with room founds a cluster of
//!   one ([`should_found`]) after [`Timing::found_after_ms`] if it ranks first
//!   ([`founding_rank`]) among itself and the unclustered nodes it is linked to
//!   ([`founds_first`]), otherwise after a head start for those plus a jitter drawn from its
//!   own id ([`founding_jitter_ms`]). Nodes that rank first in their neighbourhood are never
//!   linked to each other, and there is about one of them per neighbourhood, so a large
//!   fleet started together founds in one wave about as many clusters as it needs, each
//!   founder's neighbours in reach to join it (lowest-id clustering, as in ad hoc radio
//!   networks); a small mesh still founds one;
//! - a coordinator removes members silent for [`Timing::silent_after_ms`]
//!   ([`silent_members`]);
//! - a member that has heard no coordinator for [`Timing::reform_after_ms`] takes the
//!   cluster as lost for good (no majority left): it forwards the unfinished tasks it holds
//!   and starts over as unclustered ([`lost_for_good`]);
//! - a cluster smaller than [`MERGE_BELOW`] merges into a reachable cluster it fits in that
//!   is larger, or as large with a lower id ([`merge_target`]): its coordinator commits
//!   `Dissolve`, every member forwards the unfinished tasks and joins the other. The rule
//!   is antisymmetric, so two clusters never merge into each other.
//!
//! Splits are never needed: joins stop at the target size and merges only happen when the
//! sum fits, so no cluster grows past [`TARGET_SIZE`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Members a cluster takes at most (the design's "about 5").
pub const TARGET_SIZE: usize = 5;
/// A cluster with fewer members merges into a larger one when one is reachable.
pub const MERGE_BELOW: usize = 3;
/// Most cluster announcements a node keeps (the freshest win): room for a mesh of about
/// 5,000 nodes in clusters of five.
pub const MAX_ANNOUNCEMENTS: usize = 1024;

/// Formation timing, per link kind (all in milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub announce_every_ms: u64,
    /// An announcement older than this is forgotten.
    pub fresh_ms: u64,
    pub found_after_ms: u64,
    /// Founding jitter is drawn in `[0, found_jitter_ms)` from the node's id.
    pub found_jitter_ms: u64,
    pub silent_after_ms: u64,
    pub reform_after_ms: u64,
    /// A join that has not made the node a member by then is given up.
    pub join_timeout_ms: u64,
    /// What every cluster's summaries together may take of a link, in bytes per second
    /// (docs/scale.md): a full cluster's coordinator announces no more often than keeps
    /// all the clusters it knows within it ([`summary_every_ms`]).
    pub summary_budget_bytes_per_s: u64,
    /// A member the coordinator has not heard for this long is marked silent in the
    /// summary (it is removed only after [`Timing::silent_after_ms`]).
    pub flag_silent_after_ms: u64,
}

/// On internet links.
pub const LAN: Timing = Timing {
    announce_every_ms: 2_000,
    fresh_ms: 7_000,
    found_after_ms: 4_000,
    found_jitter_ms: 4_000,
    silent_after_ms: 15_000,
    reform_after_ms: 30_000,
    join_timeout_ms: 10_000,
    summary_budget_bytes_per_s: 2_000,
    // Five of the slowest election timeouts at the start pace (0.9-1.8 s): a loaded member
    // is not flagged for one late answer.
    flag_silent_after_ms: 5_000,
};

/// On Bluetooth links: everything six times slower.
pub const RADIO: Timing = Timing {
    announce_every_ms: 12_000,
    fresh_ms: 42_000,
    found_after_ms: 24_000,
    found_jitter_ms: 24_000,
    silent_after_ms: 90_000,
    reform_after_ms: 180_000,
    join_timeout_ms: 60_000,
    // 2 % of the ~15 KB/s a Bluetooth LE link carries (Reticulum's share for announces).
    summary_budget_bytes_per_s: 300,
    flag_silent_after_ms: 18_000,
};

/// Longest a coordinator waits between two summaries, whatever the budget: a cluster is
/// forgotten after about three of its periods, so this bounds how long a vanished cluster
/// is still believed. With 600-byte summaries the budget holds up to 400 clusters (about
/// 2,000 nodes); past that, summary bytes grow with the mesh again.
pub const MAX_SUMMARY_EVERY_MS: u64 = 120_000;

/// How often a coordinator announces its cluster: every [`Timing::announce_every_ms`] in a
/// small mesh, stretched so that `clusters` summaries of `summary_len` bytes stay within
/// [`Timing::summary_budget_bytes_per_s`]: bytes a node receives for summaries stay flat as
/// the mesh grows, and the period grows instead. Changes go out sooner ([`change_gap_ms`]).
pub fn summary_every_ms(timing: &Timing, clusters: usize, summary_len: usize) -> u64 {
    let bytes_per_round = (clusters.max(1) as u64).saturating_mul(summary_len as u64);
    let stretched = bytes_per_round.saturating_mul(1000) / timing.summary_budget_bytes_per_s.max(1);
    stretched.clamp(timing.announce_every_ms, MAX_SUMMARY_EVERY_MS)
}

/// Quickest re-announcement of a changed summary, `every_ms` being the budgeted period: a
/// member falling silent (a loss, which the mesh should learn within seconds; losses are
/// rare) after a second; any other change (joins, removals, a new term: frequent while a
/// large mesh forms) after a quarter of the period, so formation stays within about four
/// times the budget instead of flooding the mesh.
pub fn change_gap_ms(every_ms: u64, newly_silent: bool) -> u64 {
    if newly_silent {
        1_000
    } else {
        (every_ms / 4).max(1_000)
    }
}

/// One member as its cluster's summary describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSummary {
    pub capacity: crate::capacity::NodeCapacity,
    pub load: crate::capacity::Load,
    /// Not heard by the coordinator for [`Timing::flag_silent_after_ms`] (5 s on internet
    /// links).
    #[serde(default)]
    pub silent: bool,
}

/// What a coordinator says about its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub cluster: String,
    pub term: u64,
    /// PeerId bytes of the coordinator (the envelope's signer).
    #[serde(with = "serde_bytes")]
    pub coordinator: Vec<u8>,
    /// PeerId bytes of every member, the coordinator included.
    pub members: Vec<serde_bytes::ByteBuf>,
    pub queued: u32,
    /// When it was sent (the coordinator's clock); a receiver replaces it with when it
    /// heard it ([`Announcement::mark_received`]) and keeps the sender's in `sent_at_ms`.
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<u64>,
    /// The summary: per member, in the order of `members`, its capacity, load and whether
    /// the coordinator still hears it (empty from nodes older than summaries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub summary: Vec<MemberSummary>,
    /// The longest until this cluster's next announcement ([`summary_every_ms`]); receivers
    /// keep it for about three periods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// Where the coordinator listens (multiaddrs, at most [`MAX_ANNOUNCED_ADDRS`]): a node
    /// that wants to join dials it there, with no DHT walk to find it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<String>,
}

/// Most coordinator addresses an announcement carries, and the longest one.
pub const MAX_ANNOUNCED_ADDRS: usize = 8;
pub const MAX_ANNOUNCED_ADDR_LEN: usize = 256;

impl Announcement {
    /// Freshness counts from `now_ms`, when this node heard it.
    pub fn mark_received(&mut self, now_ms: u64) {
        self.sent_at_ms = Some(self.at_ms);
        self.at_ms = now_ms;
    }

    /// The coordinator's own time of sending.
    pub fn sent_ms(&self) -> u64 {
        self.sent_at_ms.unwrap_or(self.at_ms)
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn has_room(&self) -> bool {
        self.size() < TARGET_SIZE
    }

    pub fn is_fresh(&self, now_ms: u64, timing: &Timing) -> bool {
        now_ms.saturating_sub(self.at_ms) <= self.fresh_for_ms(timing)
    }

    /// How long after it was heard it counts: [`Timing::fresh_ms`], or three and a half of
    /// the periods it announced (at most [`MAX_SUMMARY_EVERY_MS`]'s).
    pub fn fresh_for_ms(&self, timing: &Timing) -> u64 {
        let every = self.every_ms.unwrap_or(0).min(MAX_SUMMARY_EVERY_MS);
        timing.fresh_ms.max(every.saturating_mul(7) / 2)
    }

    /// Whether the summary agrees with itself: one entry per member (or none, from an
    /// older node), no member twice, the coordinator a member (unless there are none yet:
    /// a founder announces before its own entry is committed).
    pub fn is_consistent(&self) -> bool {
        let mut seen = std::collections::BTreeSet::new();
        self.addrs.len() <= MAX_ANNOUNCED_ADDRS
            && self.addrs.iter().all(|a| a.len() <= MAX_ANNOUNCED_ADDR_LEN)
            && (self.summary.is_empty() || self.summary.len() == self.members.len())
            && self.members.iter().all(|m| seen.insert(m.as_slice()))
            && (self.members.is_empty()
                || self
                    .members
                    .iter()
                    .any(|m| m.as_slice() == self.coordinator.as_slice()))
    }

    /// Members the coordinator still hears.
    pub fn live_members(&self) -> impl Iterator<Item = &[u8]> {
        self.members
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.summary.get(*i).is_some_and(|s| s.silent))
            .map(|(_, m)| m.as_slice())
    }
}

/// The id of a cluster founded by `peer` at `now_ms`: 16 hex digits.
pub fn new_cluster_id(peer: &[u8], now_ms: u64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(peer);
    hasher.update(now_ms.to_be_bytes());
    hex::encode(&hasher.finalize()[..8])
}

/// The node's own founding delay on top of [`Timing::found_after_ms`], fixed by its id
/// (for a node that does not found first, [`founds_first`]).
pub fn founding_jitter_ms(peer: &[u8], timing: &Timing) -> u64 {
    u64_at(&Sha256::digest(peer), 8) % timing.found_jitter_ms.max(1)
}

/// The 8 bytes of `digest` from `at`, as a number.
fn u64_at(digest: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[at..at + 8]);
    u64::from_be_bytes(bytes)
}

/// A node's place in the founding order: the lowest founds first in its neighbourhood.
/// Drawn from a hash of its id, so neither the id's form nor its choice gives an edge.
pub fn founding_rank(peer: &[u8]) -> u64 {
    u64_at(&Sha256::digest(peer), 0)
}

/// Whether `me` ranks first among itself and `neighbours`: the unclustered nodes it is
/// linked to (those no cluster announcement names).
pub fn founds_first<'a>(me: &[u8], neighbours: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let mine = (founding_rank(me), me);
    neighbours
        .into_iter()
        .filter(|n| *n != me)
        .all(|n| (founding_rank(n), n) > mine)
}

/// How long an unclustered node that may coordinate waits, with no cluster with room in
/// reach, before founding one: [`Timing::found_after_ms`] if it founds first in its
/// neighbourhood; otherwise a quarter of the jitter range more (time for the first one's
/// announcement to reach it) plus its own jitter.
pub fn founding_delay_ms(timing: &Timing, first: bool, jitter_ms: u64) -> u64 {
    if first {
        timing.found_after_ms
    } else {
        timing.found_after_ms + timing.found_jitter_ms / 4 + jitter_ms
    }
}

/// How much `me` prefers `cluster` among equals (rendezvous hashing): every node ranks the
/// clusters differently, so joiners spread over all that have room.
fn affinity(me: &[u8], cluster: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(me);
    hasher.update(cluster.as_bytes());
    u64_at(&hasher.finalize(), 0)
}

/// Orders `items` (each naming a cluster, `cluster_of`) for `me` to try, the preferred
/// cluster first ([`affinity`], ties by id).
pub fn by_affinity<T>(me: &[u8], items: &mut [T], cluster_of: impl Fn(&T) -> &str) {
    items.sort_by_cached_key(|item| {
        let cluster = cluster_of(item);
        (std::cmp::Reverse(affinity(me, cluster)), cluster.to_owned())
    });
}

/// The cluster `me`, unclustered, asks to join: fresh, with room, its coordinator
/// reachable, not one that refused us lately; among those the one `me` prefers
/// ([`affinity`]). Not the fullest: with every joiner asking the fullest, one coordinator
/// took the whole mesh's joins one at a time (measured: one join a second for a mesh of a
/// hundred) while the others waited with room.
pub fn choose_cluster<'a>(
    me: &[u8],
    now_ms: u64,
    timing: &Timing,
    announcements: impl IntoIterator<Item = &'a Announcement>,
    reachable: impl Fn(&[u8]) -> bool,
    avoid: impl Fn(&str) -> bool,
) -> Option<&'a Announcement> {
    announcements
        .into_iter()
        .filter(|a| a.is_fresh(now_ms, timing) && a.has_room())
        .filter(|a| reachable(&a.coordinator) && !avoid(&a.cluster))
        .max_by(|a, b| {
            affinity(me, &a.cluster)
                .cmp(&affinity(me, &b.cluster))
                .then_with(|| b.cluster.cmp(&a.cluster))
        })
}

/// Whether an unclustered node founds a cluster now: it may coordinate, and no cluster
/// with room has been in reach since `quiet_since_ms` (when it became unclustered, or last
/// saw one) for its founding delay ([`founding_delay_ms`]).
pub fn should_found(now_ms: u64, may_coordinate: bool, quiet_since_ms: u64, delay_ms: u64) -> bool {
    may_coordinate && now_ms.saturating_sub(quiet_since_ms) >= delay_ms
}

/// Members a coordinator removes: every one but itself not heard from for
/// [`Timing::silent_after_ms`] (`last_heard` counts from when it joined if never heard).
pub fn silent_members(
    now_ms: u64,
    timing: &Timing,
    me: u64,
    last_heard: &BTreeMap<u64, u64>,
) -> Vec<u64> {
    last_heard
        .iter()
        .filter(|(id, heard)| **id != me && now_ms.saturating_sub(**heard) > timing.silent_after_ms)
        .map(|(id, _)| *id)
        .collect()
}

/// Whether a member that last heard a coordinator at `last_contact_ms` takes its cluster
/// as lost.
pub fn lost_for_good(now_ms: u64, timing: &Timing, last_contact_ms: u64) -> bool {
    now_ms.saturating_sub(last_contact_ms) > timing.reform_after_ms
}

/// The cluster ours (`cluster`, `size` members) merges into, if any: fresh, reachable,
/// larger (or as large with a lower id), and both fit in [`TARGET_SIZE`].
pub fn merge_target<'a>(
    now_ms: u64,
    timing: &Timing,
    cluster: &str,
    size: usize,
    announcements: impl IntoIterator<Item = &'a Announcement>,
    reachable: impl Fn(&[u8]) -> bool,
) -> Option<&'a Announcement> {
    if size >= MERGE_BELOW {
        return None;
    }
    announcements
        .into_iter()
        .filter(|a| a.cluster != cluster && a.is_fresh(now_ms, timing))
        .filter(|a| a.size() + size <= TARGET_SIZE)
        .filter(|a| a.size() > size || (a.size() == size && a.cluster.as_str() < cluster))
        .filter(|a| reachable(&a.coordinator))
        .max_by(|a, b| {
            a.size()
                .cmp(&b.size())
                .then_with(|| b.cluster.cmp(&a.cluster))
        })
}

/// Where a submitter outside any cluster (or one asked to look elsewhere) sends a task,
/// from the clusters' summaries: a fresh cluster in reach with a live member the task fits
/// on now, the one whose best such member has the most CPU left; failing that, one with a
/// live member that could run it once idle; then the shortest queue (clusters whose
/// coordinators send no summary rank by queue alone). Ties go to the lowest id.
pub fn place_across<'a>(
    now_ms: u64,
    timing: &Timing,
    announcements: impl IntoIterator<Item = &'a Announcement>,
    req: &crate::task::Requirements,
    reachable: impl Fn(&[u8]) -> bool,
) -> Option<&'a Announcement> {
    let rank = |a: &Announcement| {
        let live = a.summary.iter().filter(|m| !m.silent);
        let free_where_fits = live
            .clone()
            .filter(|m| m.capacity.fits(&m.load, req))
            .map(|m| {
                m.capacity
                    .cpu_budget_millicores()
                    .saturating_sub(m.load.cpu_millicores)
            })
            .max();
        let could_ever = a.summary.is_empty()
            || live
                .clone()
                .any(|m| m.capacity.fits(&crate::capacity::Load::default(), req));
        (
            free_where_fits.is_some(),
            could_ever,
            free_where_fits.unwrap_or(0),
            std::cmp::Reverse(a.queued),
        )
    };
    announcements
        .into_iter()
        .filter(|a| a.is_fresh(now_ms, timing) && reachable(&a.coordinator))
        .max_by(|a, b| {
            rank(a)
                .cmp(&rank(b))
                .then_with(|| b.cluster.cmp(&a.cluster))
        })
}

/// Leadership hands over to a better-scored voter only when it is clearly better (by
/// [`TRANSFER_MARGIN_MILLI`] and [`TRANSFER_RATIO_PCT`]) and stays so for
/// [`TRANSFER_AFTER_MS`]: a flickering charger or a passing warm spell moves nothing.
pub const TRANSFER_MARGIN_MILLI: u32 = 50;
pub const TRANSFER_RATIO_PCT: u32 = 125;
pub const TRANSFER_AFTER_MS: u64 = 10_000;

/// The coordinator's side of leader transfer, with hysteresis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadershipHysteresis {
    /// The candidate that has been better, and since when.
    better: Option<(u64, u64)>,
}

impl LeadershipHysteresis {
    /// Given the coordinator's score and the best other voter's, the voter to hand over to
    /// now, if any.
    pub fn observe(
        &mut self,
        now_ms: u64,
        own_score: u32,
        best: Option<(u64, u32)>,
    ) -> Option<u64> {
        let Some((candidate, score)) = best.filter(|(_, score)| {
            *score >= own_score.saturating_add(TRANSFER_MARGIN_MILLI)
                && u64::from(*score) * 100 >= u64::from(own_score) * u64::from(TRANSFER_RATIO_PCT)
        }) else {
            self.better = None;
            return None;
        };
        let _ = score;
        match self.better {
            Some((c, since)) if c == candidate => {
                if now_ms.saturating_sub(since) >= TRANSFER_AFTER_MS {
                    self.better = None;
                    Some(candidate)
                } else {
                    None
                }
            }
            _ => {
                self.better = Some((candidate, now_ms));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(cluster: &str, size: usize, at_ms: u64) -> Announcement {
        Announcement {
            cluster: cluster.into(),
            term: 1,
            coordinator: format!("{cluster}-leader").into_bytes(),
            members: (0..size)
                .map(|i| serde_bytes::ByteBuf::from(format!("{cluster}-{i}").into_bytes()))
                .collect(),
            queued: 0,
            at_ms,
            sent_at_ms: None,
            summary: Vec::new(),
            every_ms: None,
            addrs: Vec::new(),
        }
    }

    fn member(cores: u32, tasks: u32, cpu_used: u32, gpu: bool, silent: bool) -> MemberSummary {
        MemberSummary {
            capacity: crate::capacity::NodeCapacity {
                cores,
                cpu_pct: 100,
                memory_mb: 1024,
                max_tasks: 4,
                gpu,
                battery: None,
                score_milli: 500,
            },
            load: crate::capacity::Load {
                cpu_millicores: cpu_used,
                memory_mb: 0,
                tasks,
            },
            silent,
        }
    }

    fn summarised(cluster: &str, members: Vec<MemberSummary>, queued: u32) -> Announcement {
        let mut a = ann(cluster, members.len(), 1000);
        a.summary = members;
        a.queued = queued;
        a
    }

    #[test]
    fn summaries_are_spaced_to_keep_every_cluster_within_the_budget() {
        // Few clusters: the base period.
        assert_eq!(summary_every_ms(&LAN, 4, 600), LAN.announce_every_ms);
        // A loss goes out within a second; other changes wait a quarter period.
        assert_eq!(change_gap_ms(60_000, true), 1_000);
        assert_eq!(change_gap_ms(60_000, false), 15_000);
        assert_eq!(change_gap_ms(2_000, false), 1_000);
        // 200 clusters of 600-byte summaries at 2,000 B/s: one round a minute, so a node
        // receives the same bytes a second as with 20 clusters at the base period.
        assert_eq!(summary_every_ms(&LAN, 200, 600), 60_000);
        let rate = |clusters: usize| {
            clusters as f64 * 600.0 * 1000.0 / summary_every_ms(&LAN, clusters, 600) as f64
        };
        assert!(rate(200) <= LAN.summary_budget_bytes_per_s as f64 + 1.0);
        assert!(rate(400) <= rate(200) + 1.0, "flat past the budget");
        // Never beyond the cap (a vanished cluster is forgotten in ~3.5 periods).
        assert_eq!(summary_every_ms(&LAN, 100_000, 600), MAX_SUMMARY_EVERY_MS);
        // Radio links get a smaller share.
        assert!(summary_every_ms(&RADIO, 20, 600) > summary_every_ms(&LAN, 20, 600));
    }

    #[test]
    fn a_summary_is_kept_for_about_three_of_its_periods() {
        let mut a = ann("a", 5, 0);
        assert_eq!(a.fresh_for_ms(&LAN), LAN.fresh_ms);
        a.every_ms = Some(60_000);
        assert_eq!(a.fresh_for_ms(&LAN), 210_000);
        assert!(a.is_fresh(200_000, &LAN));
        assert!(!a.is_fresh(211_000, &LAN));
        // A forged huge period cannot pin a cluster for ever.
        a.every_ms = Some(u64::MAX);
        assert_eq!(a.fresh_for_ms(&LAN), MAX_SUMMARY_EVERY_MS * 7 / 2);
    }

    #[test]
    fn a_summary_must_agree_with_itself() {
        let mut a = summarised("a", vec![member(4, 0, 0, false, false); 3], 0);
        a.coordinator = a.members[0].to_vec();
        assert!(a.is_consistent());
        let mut short = a.clone();
        short.summary.pop();
        assert!(!short.is_consistent(), "one entry per member");
        let mut twice = a.clone();
        twice.members[1] = twice.members[0].clone();
        assert!(!twice.is_consistent(), "no member twice");
        let mut outsider = a.clone();
        outsider.coordinator = b"someone else".to_vec();
        assert!(!outsider.is_consistent(), "the coordinator is a member");
        let mut older = a.clone();
        older.summary.clear();
        assert!(
            older.is_consistent(),
            "nodes older than summaries send none"
        );
        let mut silent = a.clone();
        silent.summary[2].silent = true;
        assert_eq!(silent.live_members().count(), 2);
        let mut addressed = a.clone();
        addressed.addrs = vec!["/memory/1".into(); MAX_ANNOUNCED_ADDRS];
        assert!(addressed.is_consistent());
        addressed.addrs.push("/memory/2".into());
        assert!(!addressed.is_consistent(), "too many addresses");
        addressed.addrs = vec!["/dns4/".to_owned() + &"a".repeat(MAX_ANNOUNCED_ADDR_LEN)];
        assert!(!addressed.is_consistent(), "an address too long");
    }

    #[test]
    fn work_goes_to_the_cluster_with_room_for_it() {
        let req = crate::task::Requirements {
            cpu_millicores: 1_500,
            memory_mb: 64,
            duration_ms: 1_000,
            gpu: false,
        };
        let all = |_: &[u8]| true;
        // a: busy (1 core left at best); b: one member with 3 cores free; c: more free CPU
        // but only on a member its coordinator no longer hears.
        let list = [
            summarised("a", vec![member(2, 1, 1_000, false, false)], 0),
            summarised(
                "b",
                vec![
                    member(4, 1, 1_000, false, false),
                    member(2, 0, 0, false, false),
                ],
                3,
            ),
            summarised(
                "c",
                vec![member(16, 0, 0, false, true), member(1, 0, 0, false, false)],
                0,
            ),
        ];
        assert_eq!(
            place_across(2000, &LAN, &list, &req, all).unwrap().cluster,
            "b"
        );
        // Only a GPU member can take a GPU task.
        let gpu = crate::task::Requirements { gpu: true, ..req };
        let with_gpu = [
            summarised("a", vec![member(8, 0, 0, false, false)], 0),
            summarised("z", vec![member(2, 0, 0, true, false)], 9),
        ];
        assert_eq!(
            place_across(2000, &LAN, &with_gpu, &gpu, all)
                .unwrap()
                .cluster,
            "z"
        );
        // Unreachable or stale clusters are not candidates; with no summary, the shortest queue.
        let not_z = |c: &[u8]| c != b"z-leader";
        assert_eq!(
            place_across(2000, &LAN, &with_gpu, &gpu, not_z)
                .unwrap()
                .cluster,
            "a"
        );
        assert!(place_across(60_000, &LAN, &with_gpu, &gpu, all).is_none());
        let plain = [ann("p", 3, 1000), {
            let mut q = ann("q", 3, 1000);
            q.queued = 5;
            q
        }];
        assert_eq!(
            place_across(2000, &LAN, &plain, &req, all).unwrap().cluster,
            "p"
        );
    }

    #[test]
    fn a_node_joins_a_fresh_reachable_cluster_with_room_it_prefers() {
        let list = [
            ann("a", 2, 1000),
            ann("b", 4, 1000),
            ann("c", 5, 1000),
            ann("d", 4, 0),
        ];
        let all = |_: &[u8]| true;
        // c is full and d is stale (8 s > 7 s): a or b, whichever the joiner prefers.
        let pick = |me: &[u8], reach: &dyn Fn(&[u8]) -> bool, avoid: &dyn Fn(&str) -> bool| {
            choose_cluster(me, 8000, &LAN, &list, reach, avoid).map(|a| a.cluster.clone())
        };
        for i in 0..20u8 {
            let me = [i; 38];
            let chosen = pick(&me, &all, &|_| false).unwrap();
            assert!(chosen == "a" || chosen == "b", "{chosen}");
            assert_eq!(pick(&me, &all, &|_| false).unwrap(), chosen, "stable");
            let other = if chosen == "a" { "b" } else { "a" };
            assert_eq!(pick(&me, &all, &|c| c == chosen).unwrap(), other);
            let leader = format!("{chosen}-leader");
            let unreachable = |p: &[u8]| p != leader.as_bytes();
            assert_eq!(pick(&me, &unreachable, &|_| false).unwrap(), other);
        }
        assert!(choose_cluster(b"me", 8000, &LAN, &list[2..3], all, |_| false).is_none());
    }

    #[test]
    fn joiners_spread_over_the_clusters_with_room() {
        let list: Vec<Announcement> = (0..10).map(|i| ann(&format!("c{i}"), 1, 1000)).collect();
        let mut per_cluster = BTreeMap::new();
        for i in 0..200u32 {
            let me = i.to_be_bytes();
            let pick = choose_cluster(&me, 2000, &LAN, &list, |_| true, |_| false).unwrap();
            *per_cluster.entry(pick.cluster.clone()).or_insert(0u32) += 1;
        }
        assert_eq!(per_cluster.len(), 10, "{per_cluster:?}");
        assert!(per_cluster.values().all(|n| *n >= 8), "{per_cluster:?}");
    }

    #[test]
    fn only_a_node_that_may_coordinate_founds_and_only_after_its_delay() {
        let jitter = founding_jitter_ms(b"peer", &LAN);
        assert!(jitter < LAN.found_jitter_ms);
        assert_eq!(jitter, founding_jitter_ms(b"peer", &LAN));
        let delay = founding_delay_ms(&LAN, false, jitter);
        assert!(delay > founding_delay_ms(&LAN, true, jitter));
        assert_eq!(founding_delay_ms(&LAN, true, jitter), LAN.found_after_ms);
        assert!(!should_found(delay - 1, true, 0, delay));
        assert!(should_found(delay, true, 0, delay));
        assert!(!should_found(delay, false, 0, delay));
    }

    #[test]
    fn one_node_in_a_neighbourhood_founds_first_and_no_two_neighbours_do() {
        // A ring of 100 nodes, each linked to its two neighbours on either side.
        let ids: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let n = ids.len();
        let links = |i: usize| [(i + n - 2) % n, (i + n - 1) % n, (i + 1) % n, (i + 2) % n];
        let first: Vec<usize> = (0..n)
            .filter(|&i| founds_first(&ids[i], links(i).iter().map(|&j| ids[j].as_slice())))
            .collect();
        for &i in &first {
            assert!(
                links(i).iter().all(|j| !first.contains(j)),
                "{i} and a neighbour"
            );
        }
        // About one in five (a neighbourhood's size), never all nor none.
        assert!((10..=35).contains(&first.len()), "{}", first.len());
        // Alone, or only with itself listed, a node founds first.
        assert!(founds_first(b"me", std::iter::empty()));
        assert!(founds_first(b"me", [b"me".as_slice()]));
    }

    #[test]
    fn founding_jitters_spread_a_fleet() {
        let mut jitters: Vec<u64> = (0..12u8)
            .map(|i| founding_jitter_ms(&[i; 38], &LAN))
            .collect();
        jitters.sort_unstable();
        jitters.dedup();
        assert!(jitters.len() >= 10, "{jitters:?}");
    }

    #[test]
    fn silent_members_are_found_but_never_the_coordinator_itself() {
        let heard: BTreeMap<u64, u64> = [(1, 0), (2, 10_000), (3, 0)].into_iter().collect();
        assert_eq!(silent_members(20_000, &LAN, 1, &heard), vec![3]);
        assert!(silent_members(15_000, &LAN, 1, &heard).is_empty());
        assert!(lost_for_good(30_001, &LAN, 0));
        assert!(!lost_for_good(30_000, &LAN, 0));
    }

    #[test]
    fn merging_is_antisymmetric_and_never_overfills() {
        let all = |_: &[u8]| true;
        let a = ann("a", 2, 0);
        let b = ann("b", 2, 0);
        // Same size: the higher id merges into the lower, never the reverse.
        assert_eq!(
            merge_target(0, &LAN, "b", 2, [&a], all).unwrap().cluster,
            "a"
        );
        assert!(merge_target(0, &LAN, "a", 2, [&b], all).is_none());
        // Smaller into larger, whatever the ids.
        let big = ann("z", 3, 0);
        assert_eq!(
            merge_target(0, &LAN, "a", 2, [&big], all).unwrap().cluster,
            "z"
        );
        assert!(merge_target(0, &LAN, "z", 3, [&a], all).is_none());
        // Never past the target size.
        let four = ann("m", 4, 0);
        assert!(merge_target(0, &LAN, "a", 2, [&four], all).is_none());
        assert_eq!(
            merge_target(0, &LAN, "q", 1, [&four], all).unwrap().cluster,
            "m"
        );
        // Not onto itself, not onto an unreachable coordinator.
        assert!(merge_target(0, &LAN, "a", 1, [&a], all).is_none());
        assert!(merge_target(0, &LAN, "q", 1, [&four], |_| false).is_none());
    }

    #[test]
    fn leadership_moves_only_to_a_clearly_better_voter_that_stays_better() {
        let mut h = LeadershipHysteresis::default();
        // 10 % better: never.
        assert_eq!(h.observe(0, 500, Some((7, 550))), None);
        assert_eq!(h.observe(20_000, 500, Some((7, 550))), None);
        // Clearly better, but it must last.
        assert_eq!(h.observe(30_000, 500, Some((7, 700))), None);
        assert_eq!(h.observe(35_000, 500, Some((7, 700))), None);
        // A flicker resets the clock.
        assert_eq!(h.observe(36_000, 500, Some((7, 520))), None);
        assert_eq!(h.observe(37_000, 500, Some((7, 700))), None);
        assert_eq!(h.observe(46_999, 500, Some((7, 700))), None);
        assert_eq!(h.observe(47_000, 500, Some((7, 700))), Some(7));
        // A low score needs the absolute margin too.
        let mut h = LeadershipHysteresis::default();
        assert_eq!(h.observe(0, 10, Some((7, 40))), None);
        assert_eq!(h.observe(20_000, 10, Some((7, 40))), None);
    }
}
