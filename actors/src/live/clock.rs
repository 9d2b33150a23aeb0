//! [`ScaledClock`]: wall time sped up by an integer factor around a fixed anchor, so a
//! simulated day passes in minutes (`vpp run --speed N`).
//!
//! Invariants:
//! - `now = anchor + (wall_now - anchor) × speed`: two processes given the same anchor and
//!   speed (the daemon and an external `vpp market-sim`) agree on simulated time, and a
//!   restarted daemon continues where the previous run's simulated time was, never earlier.
//! - `monotonic_ns` is real monotonic time (latency histograms and restart windows measure
//!   real durations, not simulated ones).

use chrono::{TimeZone, Utc};
use std::time::Instant;
use vpp_engine::clock::Clock;
use vpp_engine::Timestamp;

/// Largest accepted speed-up.
pub const MAX_SPEED: u32 = 100_000;

#[derive(Debug, Clone)]
pub struct ScaledClock {
    anchor_us: i64,
    speed: i64,
    origin: Instant,
}

impl ScaledClock {
    /// `anchor` is a wall-clock instant (usually the daemon's first start); `speed` is clamped
    /// to 1..=[`MAX_SPEED`].
    pub fn new(anchor: Timestamp, speed: u32) -> Self {
        Self {
            anchor_us: anchor.timestamp_micros(),
            speed: i64::from(speed.clamp(1, MAX_SPEED)),
            origin: Instant::now(),
        }
    }

    pub fn speed(&self) -> u32 {
        u32::try_from(self.speed).unwrap_or(1)
    }

    /// Real duration that corresponds to `simulated` at this speed.
    pub fn real_duration(&self, simulated: std::time::Duration) -> std::time::Duration {
        simulated / self.speed()
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Timestamp {
        let wall_us = Utc::now().timestamp_micros();
        let sim_us = self.anchor_us.saturating_add(
            wall_us
                .saturating_sub(self.anchor_us)
                .saturating_mul(self.speed),
        );
        Utc.timestamp_micros(sim_us)
            .single()
            .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
    }

    fn monotonic_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_clocks_with_the_same_anchor_agree_and_run_faster_than_wall_time() {
        let anchor = Utc::now() - chrono::Duration::seconds(10);
        let a = ScaledClock::new(anchor, 60);
        let b = ScaledClock::new(anchor, 60);
        let (ta, tb) = (a.now(), b.now());
        let gap = (ta - tb).num_milliseconds().abs();
        assert!(gap < 60_000, "clocks disagree by {gap} ms");
        // 10 s of wall time at 60x is at least 600 s of simulated time past the anchor.
        assert!(ta - anchor >= chrono::Duration::seconds(600));
        assert_eq!(ScaledClock::new(anchor, 0).speed(), 1);
    }
}
