//! Abuse limits on handshakes, as a pure state machine (time is passed in).
//!
//! - At most `max_pending` inbound handshakes run at once; more are dropped on arrival.
//! - At most `max_pending_per_source` of them from one source address, so a flood from one
//!   address (loopback included) cannot take every slot and starve everybody else.
//! - At most `per_source_per_minute` inbound handshakes per source address in each fixed
//!   one-minute window (IPv4 address, or IPv6 /64, since one host usually owns a whole /64).
//! - A source (inbound: its address; outbound: the PeerId we dial) that fails
//!   `failures_before_backoff` handshakes in a row is refused for `backoff_base`, doubling
//!   with each further failure up to `backoff_max`. One success clears it.
//! - At most `max_tracked` sources are remembered. When full, idle entries go first, then
//!   the least recently seen; an attacker cycling through many addresses can therefore push
//!   an old offender out early, which costs that offender nothing it didn't already have.
//!
//! Loopback sources can be exempted from the rate limit and backoff (`exempt_loopback`, off
//! by default): every node of a local testnet dials from 127.0.0.1, so testnets turn it on.
//! The per-source share of the pending slots applies even then. The exemption concerns
//! inbound handshakes only; outbound backoff is by PeerId and applies to every peer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::PeerId;

#[derive(Debug, Clone)]
pub struct GuardConfig {
    pub max_pending: usize,
    /// Pending handshakes one source may hold (a quarter of `max_pending` by default).
    pub max_pending_per_source: usize,
    pub per_source_per_minute: u32,
    pub failures_before_backoff: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_tracked: usize,
    pub exempt_loopback: bool,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_pending: 64,
            max_pending_per_source: 16,
            per_source_per_minute: 30,
            failures_before_backoff: 3,
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(15 * 60),
            max_tracked: 4096,
            exempt_loopback: false,
        }
    }
}

/// Why the guard refused to start a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GuardRefusal {
    #[error("too many handshakes in progress")]
    TooManyPending,
    #[error("too many handshakes in progress from this address")]
    SourceBusy,
    #[error("too many handshakes from this address in the last minute")]
    RateLimited,
    #[error("backed off after repeated failed handshakes (for {0:?} more)")]
    BackedOff(Duration),
}

impl GuardRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            GuardRefusal::TooManyPending => "too_many_pending",
            GuardRefusal::SourceBusy => "source_busy",
            GuardRefusal::RateLimited => "rate_limited",
            GuardRefusal::BackedOff(_) => "backed_off",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Addr(IpAddr),
    Peer(PeerId),
}

#[derive(Debug, Clone)]
struct Track {
    window_start: Instant,
    in_window: u32,
    failures: u32,
    blocked_until: Option<Instant>,
    last_seen: Instant,
}

const WINDOW: Duration = Duration::from_secs(60);

/// Per-source handshake accounting.
#[derive(Debug)]
pub struct HandshakeGuard {
    config: GuardConfig,
    pending: usize,
    /// In-flight handshakes per source; at most `max_pending` entries.
    pending_by_source: HashMap<Source, usize>,
    tracks: HashMap<Source, Track>,
}

/// The address a rate limit applies to: IPv4 as is, IPv6 by /64.
fn source_of(ip: IpAddr) -> Source {
    match ip {
        IpAddr::V4(_) => Source::Addr(ip),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Source::Addr(IpAddr::V4(v4)),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                Source::Addr(IpAddr::V6(bits.into()))
            }
        },
    }
}

impl HandshakeGuard {
    pub fn new(config: GuardConfig) -> Self {
        HandshakeGuard {
            config,
            pending: 0,
            pending_by_source: HashMap::new(),
            tracks: HashMap::new(),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.config.exempt_loopback && ip.is_loopback()
    }

    /// An inbound connection from `ip` wants to start a handshake. On `Ok`, the caller must
    /// call [`Self::finish_inbound`] exactly once when it ends.
    pub fn begin_inbound(&mut self, now: Instant, ip: IpAddr) -> Result<(), GuardRefusal> {
        if self.pending >= self.config.max_pending {
            return Err(GuardRefusal::TooManyPending);
        }
        let source = source_of(ip);
        let held = self.pending_by_source.get(&source).copied().unwrap_or(0);
        if held >= self.config.max_pending_per_source {
            return Err(GuardRefusal::SourceBusy);
        }
        if !self.exempt(ip) {
            let limit = self.config.per_source_per_minute;
            let track = self.track(now, source);
            blocked(track, now)?;
            if now.saturating_duration_since(track.window_start) >= WINDOW {
                track.window_start = now;
                track.in_window = 0;
            }
            if track.in_window >= limit {
                return Err(GuardRefusal::RateLimited);
            }
            track.in_window += 1;
        }
        self.pending += 1;
        *self.pending_by_source.entry(source).or_default() += 1;
        Ok(())
    }

    pub fn finish_inbound(&mut self, now: Instant, ip: IpAddr, admitted: bool) {
        self.pending = self.pending.saturating_sub(1);
        let source = source_of(ip);
        if let Some(held) = self.pending_by_source.get_mut(&source) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.pending_by_source.remove(&source);
            }
        }
        if !self.exempt(ip) {
            self.outcome(now, source_of(ip), admitted);
        }
    }

    /// Whether we may dial `peer` now.
    pub fn check_outbound(&mut self, now: Instant, peer: PeerId) -> Result<(), GuardRefusal> {
        match self.tracks.get_mut(&Source::Peer(peer)) {
            Some(track) => blocked(track, now),
            None => Ok(()),
        }
    }

    pub fn finish_outbound(&mut self, now: Instant, peer: PeerId, admitted: bool) {
        self.outcome(now, Source::Peer(peer), admitted);
    }

    fn outcome(&mut self, now: Instant, source: Source, admitted: bool) {
        if admitted {
            if let Some(track) = self.tracks.get_mut(&source) {
                track.failures = 0;
                track.blocked_until = None;
            }
            return;
        }
        let (threshold, base, max) = (
            self.config.failures_before_backoff,
            self.config.backoff_base,
            self.config.backoff_max,
        );
        let track = self.track(now, source);
        track.failures = track.failures.saturating_add(1);
        if track.failures >= threshold {
            let doublings = (track.failures - threshold).min(16);
            let wait = base.saturating_mul(1u32 << doublings).min(max);
            track.blocked_until = Some(now + wait);
        }
    }

    fn track(&mut self, now: Instant, source: Source) -> &mut Track {
        if !self.tracks.contains_key(&source) && self.tracks.len() >= self.config.max_tracked {
            self.evict(now);
        }
        let track = self.tracks.entry(source).or_insert(Track {
            window_start: now,
            in_window: 0,
            failures: 0,
            blocked_until: None,
            last_seen: now,
        });
        track.last_seen = now;
        track
    }

    fn evict(&mut self, now: Instant) {
        self.tracks.retain(|_, t| {
            let idle = now.saturating_duration_since(t.window_start) >= WINDOW
                && t.blocked_until.is_none_or(|until| until <= now);
            !idle
        });
        if self.tracks.len() >= self.config.max_tracked {
            if let Some(oldest) = self
                .tracks
                .iter()
                .min_by_key(|(_, t)| t.last_seen)
                .map(|(s, _)| *s)
            {
                self.tracks.remove(&oldest);
            }
        }
    }
}

fn blocked(track: &Track, now: Instant) -> Result<(), GuardRefusal> {
    match track.blocked_until {
        Some(until) if until > now => Err(GuardRefusal::BackedOff(until - now)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn strict() -> GuardConfig {
        GuardConfig {
            exempt_loopback: false,
            ..GuardConfig::default()
        }
    }

    #[test]
    fn caps_concurrent_handshakes_and_frees_slots_on_finish() {
        let t0 = Instant::now();
        let mut g = HandshakeGuard::new(GuardConfig {
            max_pending: 2,
            ..strict()
        });
        g.begin_inbound(t0, ip(1)).unwrap();
        g.begin_inbound(t0, ip(2)).unwrap();
        assert_eq!(
            g.begin_inbound(t0, ip(3)),
            Err(GuardRefusal::TooManyPending)
        );
        g.finish_inbound(t0, ip(1), true);
        g.begin_inbound(t0, ip(3)).unwrap();
        assert_eq!(g.pending(), 2);
    }

    #[test]
    fn rate_limits_per_address_per_minute() {
        let t0 = Instant::now();
        let mut g = HandshakeGuard::new(GuardConfig {
            per_source_per_minute: 3,
            ..strict()
        });
        for _ in 0..3 {
            g.begin_inbound(t0, ip(1)).unwrap();
            g.finish_inbound(t0, ip(1), true);
        }
        assert_eq!(g.begin_inbound(t0, ip(1)), Err(GuardRefusal::RateLimited));
        // Another address is unaffected, and the window reopens after a minute.
        g.begin_inbound(t0, ip(2)).unwrap();
        g.finish_inbound(t0, ip(2), true);
        g.begin_inbound(t0 + WINDOW, ip(1)).unwrap();
    }

    #[test]
    fn ipv6_hosts_share_a_slash_64() {
        let t0 = Instant::now();
        let mut g = HandshakeGuard::new(GuardConfig {
            per_source_per_minute: 1,
            ..strict()
        });
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        g.begin_inbound(t0, a).unwrap();
        g.finish_inbound(t0, a, true);
        assert_eq!(g.begin_inbound(t0, b), Err(GuardRefusal::RateLimited));
        g.begin_inbound(t0, other).unwrap();
    }

    #[test]
    fn repeat_offenders_back_off_exponentially_and_success_clears() {
        let t0 = Instant::now();
        let mut g = HandshakeGuard::new(strict());
        let peer = PeerId::random();
        for _ in 0..2 {
            g.finish_outbound(t0, peer, false);
            assert_eq!(g.check_outbound(t0, peer), Ok(()));
        }
        g.finish_outbound(t0, peer, false);
        assert_eq!(
            g.check_outbound(t0, peer),
            Err(GuardRefusal::BackedOff(Duration::from_secs(10)))
        );
        assert_eq!(g.check_outbound(t0 + Duration::from_secs(10), peer), Ok(()));
        g.finish_outbound(t0 + Duration::from_secs(10), peer, false);
        assert_eq!(
            g.check_outbound(t0 + Duration::from_secs(10), peer),
            Err(GuardRefusal::BackedOff(Duration::from_secs(20)))
        );
        g.finish_outbound(t0 + Duration::from_secs(30), peer, true);
        assert_eq!(g.check_outbound(t0 + Duration::from_secs(30), peer), Ok(()));
    }

    #[test]
    fn loopback_is_limited_by_default_and_exempt_only_when_asked() {
        let t0 = Instant::now();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mut limited = HandshakeGuard::new(GuardConfig {
            per_source_per_minute: 1,
            ..GuardConfig::default()
        });
        limited.begin_inbound(t0, lo).unwrap();
        limited.finish_inbound(t0, lo, true);
        assert_eq!(
            limited.begin_inbound(t0, lo),
            Err(GuardRefusal::RateLimited)
        );

        let mut exempt = HandshakeGuard::new(GuardConfig {
            per_source_per_minute: 1,
            exempt_loopback: true,
            ..GuardConfig::default()
        });
        for _ in 0..10 {
            exempt.begin_inbound(t0, lo).unwrap();
            exempt.finish_inbound(t0, lo, false);
        }
        assert_eq!(exempt.tracked(), 0);
    }

    #[test]
    fn one_source_cannot_take_every_pending_slot_even_when_exempt() {
        let t0 = Instant::now();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mut g = HandshakeGuard::new(GuardConfig {
            max_pending: 8,
            max_pending_per_source: 3,
            exempt_loopback: true,
            ..GuardConfig::default()
        });
        for _ in 0..3 {
            g.begin_inbound(t0, lo).unwrap();
        }
        assert_eq!(g.begin_inbound(t0, lo), Err(GuardRefusal::SourceBusy));
        // Everybody else still gets in, and a finished handshake frees the flooder's slot.
        g.begin_inbound(t0, ip(7)).unwrap();
        g.finish_inbound(t0, lo, false);
        g.begin_inbound(t0, lo).unwrap();
        assert_eq!(g.pending(), 4);
    }

    proptest! {
        /// Under any schedule of arrivals and outcomes: the pending count matches what is
        /// open, never exceeds the cap, the table stays bounded, and no source is admitted
        /// more often per minute than the limit.
        #[test]
        fn bounds_hold_under_any_schedule(
            steps in proptest::collection::vec((0u8..40, any::<bool>(), 0u64..5_000, any::<bool>()), 1..400)
        ) {
            let config = GuardConfig {
                max_pending: 8,
                max_pending_per_source: 3,
                per_source_per_minute: 5,
                max_tracked: 16,
                ..strict()
            };
            let mut g = HandshakeGuard::new(config.clone());
            let t0 = Instant::now();
            let mut now = t0;
            let mut open: Vec<IpAddr> = Vec::new();
            let mut admitted_at: HashMap<IpAddr, Vec<Instant>> = HashMap::new();
            for (who, start, advance_ms, ok) in steps {
                now += Duration::from_millis(advance_ms);
                let addr = ip(who);
                if start || open.is_empty() {
                    if g.begin_inbound(now, addr).is_ok() {
                        open.push(addr);
                        admitted_at.entry(addr).or_default().push(now);
                    }
                } else {
                    let done = open.remove(usize::from(who) % open.len());
                    g.finish_inbound(now, done, ok);
                }
                prop_assert_eq!(g.pending(), open.len());
                prop_assert!(g.pending() <= config.max_pending);
                let fair = open.iter().all(|a| {
                    open.iter().filter(|b| *b == a).count() <= config.max_pending_per_source
                });
                prop_assert!(fair);
                prop_assert!(g.tracked() <= config.max_tracked);
            }
            // Windows are fixed, so any sliding minute spans at most two of them. Eviction
            // may forget a window, so check only when nothing was evicted.
            if admitted_at.len() <= config.max_tracked {
                for times in admitted_at.values() {
                    for (i, t) in times.iter().enumerate() {
                        let in_minute = times[i..].iter().filter(|u| **u < *t + WINDOW).count();
                        prop_assert!(in_minute <= 2 * config.per_source_per_minute as usize);
                    }
                }
            }
        }
    }
}
