//! Rate limit for log lines about refused handshakes, as a pure state machine.
//!
//! A flood of bad handshakes must not become a flood of log lines, yet a person reading the
//! log at `info` must see that connections are being refused and why. So each
//! (direction, reason) may log once per [`EVERY`]; lines held back are counted and the count
//! is reported with the next line that gets through.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Shortest gap between two lines about the same kind of refusal.
pub const EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct LogLimiter {
    // Keys are static (direction, reason) names: a few dozen at most, so no eviction needed.
    last: HashMap<(&'static str, &'static str), (Instant, u64)>,
}

impl LogLimiter {
    /// `Some(suppressed)` when a line about `key` may be logged now (with the number of lines
    /// held back since the last one); `None` when it should be held back.
    pub fn admit(&mut self, now: Instant, key: (&'static str, &'static str)) -> Option<u64> {
        match self.last.get_mut(&key) {
            Some((at, held)) if now.saturating_duration_since(*at) < EVERY => {
                *held += 1;
                None
            }
            Some(entry) => {
                let held = entry.1;
                *entry = (now, 0);
                Some(held)
            }
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_the_held_back_count() {
        let t0 = Instant::now();
        let mut l = LogLimiter::default();
        let key = ("inbound", "expired");
        assert_eq!(l.admit(t0, key), Some(0));
        for i in 1..=5 {
            assert_eq!(l.admit(t0 + Duration::from_secs(i), key), None);
        }
        // Another kind is not held back by the first.
        assert_eq!(l.admit(t0, ("inbound", "revoked")), Some(0));
        assert_eq!(l.admit(t0 + EVERY, key), Some(5));
        assert_eq!(l.admit(t0 + EVERY, key), None);
    }
}
