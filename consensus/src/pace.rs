//! How often a member ticks its raft group, adapted to its links.
//!
//! Raft's timeouts are counted in ticks ([`crate::group::Timing`]). At the base pace
//! ([`BASE_TICK_MS`]) a member on a good link hears a heartbeat every 100 ms and starts an
//! election after 300–600 ms of silence, so a dead coordinator is replaced within a second.
//! On a slow or lossy link (200 ms round trips, 10 % loss, where TCP holds every message
//! behind a lost one until it is sent again) that silence happens while everybody is alive:
//! the coordinator steps down ("quorum is not active") and the cluster falls apart. So the
//! pace slows to keep the election timeout at least [`ELECTION_RTTS`] times the 95th
//! percentile of the round trips measured on raft's own messages (each is acknowledged),
//! a failed message counting as a round trip too long to measure; heartbeats slow with it.
//!
//! One pace per cluster: the coordinator sets it from its links to every member (up by at
//! most double per review, so a member's election timeout, still counted at the old pace,
//! outlasts the next heartbeat at the new one; down by at most 10 %; once a second) and
//! sends it with every raft frame;
//! members follow the coordinator's (a member whose elections came sooner than the
//! coordinator's heartbeats would keep asking for votes). Without a coordinator a member keeps
//! the last pace it followed.
//!
//! Pure: times and round trips are passed in.

use std::collections::VecDeque;

use crate::group::{Timing, TICK_MS};

/// The fastest pace: raft's timing as configured.
pub const BASE_TICK_MS: u64 = TICK_MS;
/// The slowest pace: 10 × the base (elections after 3–6 s on internet timing).
pub const MAX_TICK_MS: u64 = 10 * TICK_MS;
/// The pace a new group starts at, until its links' round trips are known: three times the
/// base (elections after 0.9–1.8 s on internet timing). A cluster forming in a busy mesh (a
/// thousand nodes joining at once, every machine loaded) otherwise loses its first
/// coordinator to check-quorum before the joiner's first answer arrives; on fast links the
/// review brings it down to the base within about ten seconds.
pub const START_TICK_MS: u64 = 3 * TICK_MS;
/// Round trips remembered (the newest).
pub const WINDOW: usize = 128;
/// Fewest round trips before the pace moves.
pub const MIN_SAMPLES: usize = 16;
/// The election timeout is kept at least this many 95th-percentile round trips.
pub const ELECTION_RTTS: u64 = 4;
/// How often the coordinator reviews the pace.
pub const REVIEW_EVERY_MS: u64 = 1_000;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct RaftPace {
    timing: Timing,
    /// Round trips in ms; `None` for a message that failed.
    samples: VecDeque<Option<u64>>,
    tick_ms: u64,
    last_tick_at: Option<u64>,
    last_review_at: u64,
}

impl RaftPace {
    /// A pace for a group that has not measured its links yet ([`START_TICK_MS`]).
    pub fn new(timing: Timing) -> Self {
        Self::starting_at(timing, START_TICK_MS)
    }

    /// A pace starting at `tick_ms` (clamped to the base and the slowest).
    pub fn starting_at(timing: Timing, tick_ms: u64) -> Self {
        Self {
            timing,
            samples: VecDeque::with_capacity(WINDOW),
            tick_ms: tick_ms.clamp(BASE_TICK_MS, MAX_TICK_MS),
            last_tick_at: None,
            last_review_at: 0,
        }
    }

    /// One raft message's round trip (sent to acknowledged), or `None` if it failed.
    pub fn sample(&mut self, round_trip_ms: Option<u64>) {
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(round_trip_ms);
    }

    /// The 95th percentile of the round trips remembered (`None` while too few; `u64::MAX`
    /// when more than 5 % failed).
    pub fn round_trip_p95(&self) -> Option<u64> {
        if self.samples.len() < MIN_SAMPLES {
            return None;
        }
        let mut ok: Vec<u64> = self.samples.iter().flatten().copied().collect();
        ok.sort_unstable();
        let rank = (self.samples.len() * 95).div_ceil(100);
        Some(ok.get(rank.saturating_sub(1)).copied().unwrap_or(u64::MAX))
    }

    /// The pace this member's own links call for.
    pub fn wanted_ms(&self) -> Option<u64> {
        let p95 = self.round_trip_p95()?;
        let election_ms = p95.saturating_mul(ELECTION_RTTS);
        let ticks = u64::try_from(self.timing.election_ticks.max(1)).unwrap_or(u64::MAX);
        Some(election_ms.div_ceil(ticks).clamp(BASE_TICK_MS, MAX_TICK_MS))
    }

    /// As coordinator, at most once per [`REVIEW_EVERY_MS`]: moves the pace toward what the
    /// links call for (up by at most double, down by at most 10 %). True if it changed.
    pub fn review(&mut self, now_ms: u64) -> bool {
        if now_ms.saturating_sub(self.last_review_at) < REVIEW_EVERY_MS {
            return false;
        }
        self.last_review_at = now_ms;
        let Some(wanted) = self.wanted_ms() else {
            return false;
        };
        let next = if wanted >= self.tick_ms {
            wanted.min(self.tick_ms.saturating_mul(2))
        } else {
            wanted.max(self.tick_ms - self.tick_ms / 10)
        };
        let changed = next != self.tick_ms;
        self.tick_ms = next;
        changed
    }

    /// As a member: the coordinator's pace, from its frame.
    pub fn follow(&mut self, coordinator_tick_ms: u64) {
        self.tick_ms = coordinator_tick_ms.clamp(BASE_TICK_MS, MAX_TICK_MS);
    }

    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// Whether raft is due a tick at `now_ms` (ask at least every [`BASE_TICK_MS`]).
    pub fn due(&mut self, now_ms: u64) -> bool {
        match self.last_tick_at {
            Some(last) if now_ms.saturating_sub(last) < self.tick_ms => false,
            _ => {
                self.last_tick_at = Some(now_ms);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Elections after 5–10 ticks.
    const TIMING: Timing = Timing {
        heartbeat_ticks: 2,
        election_ticks: 5,
    };

    fn paced(round_trips: impl IntoIterator<Item = Option<u64>>) -> RaftPace {
        let mut pace = RaftPace::starting_at(TIMING, BASE_TICK_MS);
        for rtt in round_trips {
            pace.sample(rtt);
        }
        pace
    }

    #[test]
    fn good_links_keep_the_base_pace_and_slow_ones_stretch_it() {
        assert_eq!(
            paced((0..64).map(|_| Some(3))).wanted_ms(),
            Some(BASE_TICK_MS)
        );
        // 95th percentile 800 ms: elections after at least 3.2 s, so ticks of 640 ms.
        let slow = (0..100).map(|i| Some(if i < 90 { 200 } else { 800 }));
        assert_eq!(paced(slow).wanted_ms(), Some(640));
        // More than 5 % failed: as slow as it goes.
        let failing = (0..100).map(|i| (i % 10 != 0).then_some(50));
        assert_eq!(paced(failing).wanted_ms(), Some(MAX_TICK_MS));
        assert_eq!(
            paced((0..5).map(|_| Some(900))).wanted_ms(),
            None,
            "too few"
        );
    }

    #[test]
    fn the_coordinator_slows_by_doubling_and_speeds_up_by_tenths() {
        let mut pace = paced((0..WINDOW).map(|_| Some(500)));
        assert!(pace.review(1_000));
        assert_eq!(pace.tick_ms(), 200);
        assert!(!pace.review(1_500), "once a second");
        assert!(pace.review(2_000));
        assert_eq!(pace.tick_ms(), 400);
        assert!(!pace.review(3_000), "there");
        for _ in 0..WINDOW {
            pace.sample(Some(3));
        }
        assert!(pace.review(4_000));
        assert_eq!(pace.tick_ms(), 360);
        let mut now = 4_000;
        while pace.review(now + 1_000) {
            now += 1_000;
        }
        assert_eq!(pace.tick_ms(), BASE_TICK_MS);
    }

    #[test]
    fn a_new_group_starts_cautious_and_fast_links_bring_it_to_the_base_within_seconds() {
        let mut pace = RaftPace::new(TIMING);
        assert_eq!(pace.tick_ms(), START_TICK_MS);
        for _ in 0..MIN_SAMPLES {
            pace.sample(Some(2));
        }
        let mut now = 0;
        while pace.tick_ms() > BASE_TICK_MS {
            now += REVIEW_EVERY_MS;
            assert!(pace.review(now));
        }
        assert!(now <= 12_000, "{now} ms to the base pace");
    }

    #[test]
    fn ticks_come_at_the_pace_and_members_follow_the_coordinator() {
        let mut pace = RaftPace::new(TIMING);
        pace.follow(300);
        let due: Vec<u64> = (0..10u64)
            .map(|i| i * 100)
            .filter(|now| pace.due(*now))
            .collect();
        assert_eq!(due, vec![0, 300, 600, 900]);
        pace.follow(1_000_000);
        assert_eq!(pace.tick_ms(), MAX_TICK_MS);
    }
}
