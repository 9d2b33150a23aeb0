//! Order-rate throttles with injected time: a token bucket (per strategy) and a sliding-window
//! log (per venue, in the venue's own window, e.g. 100 orders per 10 s).
//!
//! Invariants:
//! - Pure integer arithmetic in microseconds; `allows` never mutates, `record` commits.
//! - Time running backwards never creates tokens or frees window slots.
//! - The window log holds at most `max_orders` timestamps, allocated once up front.

use std::collections::VecDeque;
use vpp_engine::Timestamp;

const TOKEN: i64 = 1_000_000;

/// Token bucket. Tokens are counted in millionths so that refilling at `rate_per_s` tokens per
/// second adds exactly `rate_per_s` millionths per microsecond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    capacity_e6: i64,
    rate_per_s: i64,
    tokens_e6: i64,
    last_us: i64,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilling at `rate_per_s`.
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        let capacity_e6 = i64::from(burst) * TOKEN;
        Self {
            capacity_e6,
            rate_per_s: i64::from(rate_per_s),
            tokens_e6: capacity_e6,
            last_us: i64::MIN,
        }
    }

    /// Changes rate and size, keeping the tokens already earned (clipped to the new size).
    pub fn reconfigure(&mut self, rate_per_s: u32, burst: u32) {
        self.capacity_e6 = i64::from(burst) * TOKEN;
        self.rate_per_s = i64::from(rate_per_s);
        self.tokens_e6 = self.tokens_e6.min(self.capacity_e6);
    }

    fn available_e6(&self, now_us: i64) -> i64 {
        if self.last_us == i64::MIN {
            return self.capacity_e6;
        }
        let elapsed_us = now_us.saturating_sub(self.last_us).max(0);
        self.tokens_e6
            .saturating_add(elapsed_us.saturating_mul(self.rate_per_s))
            .min(self.capacity_e6)
    }

    /// Whole tokens available at `now`.
    pub fn available(&self, now: Timestamp) -> i64 {
        self.available_e6(now.timestamp_micros()) / TOKEN
    }

    pub fn allows(&self, now: Timestamp) -> bool {
        self.available_e6(now.timestamp_micros()) >= TOKEN
    }

    /// Takes one token. Call only after [`Self::allows`] said yes.
    pub fn record(&mut self, now: Timestamp) {
        let now_us = now.timestamp_micros();
        let available = self.available_e6(now_us);
        self.tokens_e6 = available.saturating_sub(TOKEN).max(0);
        self.last_us = self.last_us.max(now_us);
    }
}

/// Sliding-window log: at most `max_orders` in any window of `window_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingWindow {
    max_orders: usize,
    window_us: i64,
    sent_us: VecDeque<i64>,
}

impl SlidingWindow {
    pub fn new(max_orders: u32, window_ms: u64) -> Self {
        let max_orders = usize::try_from(max_orders).unwrap_or(usize::MAX).max(1);
        Self {
            max_orders,
            window_us: i64::try_from(window_ms.saturating_mul(1_000)).unwrap_or(i64::MAX),
            sent_us: VecDeque::with_capacity(max_orders),
        }
    }

    pub fn max_orders(&self) -> usize {
        self.max_orders
    }

    pub fn window_ms(&self) -> i64 {
        self.window_us / 1_000
    }

    /// Orders counted in the window that ends at `now`.
    pub fn in_window(&self, now: Timestamp) -> usize {
        let now_us = now.timestamp_micros();
        self.sent_us
            .iter()
            .filter(|t| now_us.saturating_sub(**t) < self.window_us)
            .count()
    }

    /// True when fewer than `max_orders` were sent in `(now - window, now]`: the oldest of
    /// the last `max_orders` has left the window.
    pub fn allows(&self, now: Timestamp) -> bool {
        if self.sent_us.len() < self.max_orders {
            return true;
        }
        match self.sent_us.front() {
            Some(oldest) => now.timestamp_micros().saturating_sub(*oldest) >= self.window_us,
            None => true,
        }
    }

    /// Logs one order at `now`. Call only after [`Self::allows`] said yes.
    pub fn record(&mut self, now: Timestamp) {
        if self.sent_us.len() >= self.max_orders {
            self.sent_us.pop_front();
        }
        let last = self.sent_us.back().copied().unwrap_or(i64::MIN);
        self.sent_us.push_back(now.timestamp_micros().max(last));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};

    fn t0() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap()
    }

    #[test]
    fn token_bucket_allows_burst_then_refills_at_rate() {
        let mut b = TokenBucket::new(2, 3);
        let now = t0();
        for _ in 0..3 {
            assert!(b.allows(now));
            b.record(now);
        }
        assert!(!b.allows(now));
        // 2 per second: one token after 500 ms, not after 499 ms.
        assert!(!b.allows(now + Duration::milliseconds(499)));
        assert!(b.allows(now + Duration::milliseconds(500)));
        // Time going backwards never creates tokens.
        assert!(!b.allows(now - Duration::seconds(10)));
        assert_eq!(b.available(now + Duration::seconds(60)), 3);
    }

    #[test]
    fn sliding_window_is_the_venues_window_not_per_second() {
        let mut w = SlidingWindow::new(100, 10_000);
        let now = t0();
        for i in 0..100 {
            let at = now + Duration::milliseconds(i * 10);
            assert!(w.allows(at));
            w.record(at);
        }
        // 101st within 10 s of the first: refused, even though a whole second passed.
        assert!(!w.allows(now + Duration::milliseconds(9_999)));
        assert_eq!(w.in_window(now + Duration::milliseconds(9_999)), 100);
        // Exactly 10 s after the first the first one has left the window.
        assert!(w.allows(now + Duration::milliseconds(10_000)));
        w.record(now + Duration::milliseconds(10_000));
        assert!(!w.allows(now + Duration::milliseconds(10_005)));
        assert!(w.allows(now + Duration::milliseconds(10_010)));
    }
}
