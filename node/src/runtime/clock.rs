//! The node's clocks, read at the edge (the driver, the peer manager, the control API) and
//! handed to capabilities as inputs.
//!
//! - **Node time** ([`Clock::now_ms`]): monotonic milliseconds, anchored to the wall clock
//!   when the node started, so it reads like a Unix timestamp and stays comparable with
//!   times stored by an earlier run, but a step of the wall clock never moves it. Timers,
//!   timeouts, receive times and freshness use it.
//! - **Wall time** ([`Clock::wall_ms`]): the system clock, for what others read: signed
//!   timestamps, hybrid logical clocks, ticket validity.
//!
//! Deadlines are node times; [`Clock::deadline`] turns one into a tokio instant, so a timer
//! fires after its delay whatever the wall clock does (tokio's paused time drives both in
//! tests). The wall clock can be replaced ([`Clock::with_wall`]) to test a node whose clock
//! is stepped or skewed.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A source of wall-clock milliseconds since the Unix epoch.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's wall clock in milliseconds (0 before 1970).
pub fn system_wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// See the module docs. Cloning shares the anchor.
#[derive(Clone)]
pub struct Clock {
    start: Instant,
    start_ms: u64,
    wall: WallClock,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("start_ms", &self.start_ms)
            .field("now_ms", &self.now_ms())
            .field("wall_ms", &self.wall_ms())
            .finish()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::with_wall(Arc::new(system_wall_ms))
    }
}

impl Clock {
    /// Anchored to `wall` now.
    pub fn with_wall(wall: WallClock) -> Self {
        Self {
            start: Instant::now(),
            start_ms: wall(),
            wall,
        }
    }

    /// A clock on the same wall clock, anchored now (a node started again).
    pub fn anew(&self) -> Self {
        Self::with_wall(self.wall.clone())
    }

    /// Node time: see the module docs.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.start_ms.saturating_add(elapsed)
    }

    /// Wall time: see the module docs.
    pub fn wall_ms(&self) -> u64 {
        (self.wall)()
    }

    /// The instant node time reaches `at_ms` (now, if it has).
    pub fn deadline(&self, at_ms: u64) -> Instant {
        self.start + Duration::from_millis(at_ms.saturating_sub(self.start_ms))
    }

    /// How far the wall clock is from node time (positive: the wall clock is ahead), e.g.
    /// after it was stepped.
    pub fn wall_offset_ms(&self) -> i64 {
        let wall = i128::from(self.wall_ms());
        let node = i128::from(self.now_ms());
        i64::try_from(wall - node).unwrap_or(if wall > node { i64::MAX } else { i64::MIN })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_wall_step_moves_no_deadline() {
        let wall = Arc::new(AtomicU64::new(1_000_000));
        let source = wall.clone();
        let clock = Clock::with_wall(Arc::new(move || source.load(Ordering::SeqCst)));
        let deadline = clock.deadline(clock.now_ms() + 5_000);
        // The wall clock steps back a minute, then forward an hour.
        wall.store(940_000, Ordering::SeqCst);
        assert_eq!(clock.now_ms(), 1_000_000);
        assert_eq!(clock.wall_offset_ms(), -60_000);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(Instant::now(), deadline);
        wall.store(4_600_000, Ordering::SeqCst);
        assert_eq!(clock.now_ms(), 1_005_000);
        assert_eq!(clock.wall_ms(), 4_600_000);
    }
}
