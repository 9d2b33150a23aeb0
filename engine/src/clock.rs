//! Time is injected. Live code uses [`SystemClock`]; backtests and tests use [`ManualClock`],
//! which only moves when told to, so runs are deterministic.

use crate::Timestamp;
use chrono::{TimeZone, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Source of wall time and monotonic time.
pub trait Clock: Send + Sync {
    /// Current wall-clock time in UTC.
    fn now(&self) -> Timestamp;
    /// Monotonic nanoseconds since an arbitrary origin; only differences are meaningful.
    fn monotonic_ns(&self) -> u64;
}

/// Real time: the OS wall clock and a monotonic `Instant`.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Utc::now()
    }
    fn monotonic_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told. Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    micros: Arc<AtomicI64>,
    origin_micros: i64,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        let micros = start.timestamp_micros();
        Self {
            micros: Arc::new(AtomicI64::new(micros)),
            origin_micros: micros,
        }
    }

    /// Moves time forward; a negative step is refused so time never runs backwards.
    pub fn advance(&self, step: chrono::Duration) {
        let step_us = step.num_microseconds().unwrap_or(i64::MAX).max(0);
        self.micros.fetch_add(step_us, Ordering::SeqCst);
    }

    /// Sets the time, refusing to move it backwards.
    pub fn set(&self, to: Timestamp) {
        self.micros
            .fetch_max(to.timestamp_micros(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Utc.timestamp_micros(self.micros.load(Ordering::SeqCst))
            .single()
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
    }
    fn monotonic_ns(&self) -> u64 {
        let elapsed_us = self.micros.load(Ordering::SeqCst) - self.origin_micros;
        u64::try_from(elapsed_us).unwrap_or(0).saturating_mul(1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        clock.advance(chrono::Duration::minutes(15));
        assert_eq!(clock.now(), start + chrono::Duration::minutes(15));
        assert_eq!(clock.monotonic_ns(), 15 * 60 * 1_000_000_000);
        clock.set(start);
        assert_eq!(clock.now(), start + chrono::Duration::minutes(15));
        clock.advance(chrono::Duration::seconds(-5));
        assert_eq!(clock.now(), start + chrono::Duration::minutes(15));
    }
}
