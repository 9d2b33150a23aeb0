//! Small bounded building blocks of the client: reconnect backoff with jitter, the venue's
//! sliding-window rate limit, a log limiter, and the market data conflator.
//!
//! Invariants: every structure here has a hard size bound; the conflator keeps the latest value
//! per key and counts every value it overwrote or evicted.

use crate::protocol::{AncillaryResult, AuctionResult, BookLevels, Channel, DrEvent, PricePoint};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Reconnect backoff: `initial_ms * multiplier^attempt`, capped at `max_ms`, with +-`jitter`
/// (a fraction) drawn from a seeded generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub multiplier: f64,
    pub jitter: f64,
    /// `None`: retry without end.
    pub max_retries: Option<u32>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial_ms: 100,
            max_ms: 10_000,
            multiplier: 2.0,
            jitter: 0.2,
            max_retries: None,
        }
    }
}

pub struct Backoff {
    cfg: BackoffConfig,
    rng: ChaCha8Rng,
}

impl Backoff {
    pub fn new(cfg: BackoffConfig, seed: u64) -> Self {
        Self {
            cfg,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Delay before retry number `attempt` (0-based); `None` once retries are exhausted.
    pub fn delay(&mut self, attempt: u32) -> Option<Duration> {
        if self.cfg.max_retries.is_some_and(|m| attempt >= m) {
            return None;
        }
        let exp = self.cfg.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let base = (self.cfg.initial_ms as f64 * exp).min(self.cfg.max_ms as f64);
        let jitter = self.cfg.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            self.rng.gen_range(1.0 - jitter..=1.0 + jitter)
        } else {
            1.0
        };
        Some(Duration::from_micros((base * factor * 1_000.0) as u64))
    }
}

/// At most `max` events in any sliding `window`.
#[derive(Debug)]
pub struct SlidingWindow {
    max: usize,
    window: Duration,
    sent: VecDeque<Instant>,
}

impl SlidingWindow {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max: max.max(1) as usize,
            window,
            sent: VecDeque::new(),
        }
    }

    /// Takes a slot now, or says how long until one frees up.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.max {
            self.sent.push_back(now);
            return Ok(());
        }
        let oldest = self.sent.front().copied().unwrap_or(now);
        Err(self.window.saturating_sub(now.duration_since(oldest)))
    }
}

/// Lets one log line through per `every`, counting the ones it held back.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be written now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// One market data item, the unit of conflation.
#[derive(Debug, Clone, PartialEq)]
pub enum MarketItem {
    Price(PricePoint),
    Book(BookLevels),
    Auction(AuctionResult),
    Ancillary(AncillaryResult),
    DrEvent(DrEvent),
}

/// A market data item with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketUpdate {
    pub market: String,
    /// Sequence of the snapshot or update that carried it.
    pub seq: u64,
    pub from_snapshot: bool,
    pub item: MarketItem,
}

impl MarketUpdate {
    pub fn channel(&self) -> Channel {
        match self.item {
            MarketItem::Price(_) => Channel::Prices,
            MarketItem::Book(_) => Channel::Book,
            MarketItem::Auction(_) => Channel::AuctionResults,
            MarketItem::Ancillary(_) => Channel::AncillaryResults,
            MarketItem::DrEvent(_) => Channel::DrEvents,
        }
    }

    fn key(&self) -> (Channel, String, i64) {
        let k = match &self.item {
            MarketItem::Price(p) => p.interval.epoch_seconds(),
            MarketItem::Book(b) => b.interval.epoch_seconds(),
            MarketItem::Auction(a) => a.interval.epoch_seconds(),
            MarketItem::Ancillary(a) => a.interval.epoch_seconds(),
            MarketItem::DrEvent(e) => e.event_id as i64,
        };
        (self.channel(), self.market.clone(), k)
    }
}

/// Latest value per (channel, market, interval or event): a slow reader gets the newest state,
/// never an unbounded queue. FIFO across keys so no key starves.
pub struct Conflator {
    inner: Mutex<ConflatorInner>,
    notify: Notify,
    conflated: AtomicU64,
}

struct ConflatorInner {
    max_keys: usize,
    values: HashMap<(Channel, String, i64), MarketUpdate>,
    order: VecDeque<(Channel, String, i64)>,
}

impl Conflator {
    pub fn new(max_keys: usize) -> Self {
        Self {
            inner: Mutex::new(ConflatorInner {
                max_keys: max_keys.max(1),
                values: HashMap::new(),
                order: VecDeque::new(),
            }),
            notify: Notify::new(),
            conflated: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConflatorInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, update: MarketUpdate) {
        let key = update.key();
        {
            let mut inner = self.lock();
            if inner.values.insert(key.clone(), update).is_some() {
                self.conflated.fetch_add(1, Ordering::Relaxed);
            } else {
                inner.order.push_back(key);
                if inner.order.len() > inner.max_keys {
                    if let Some(old) = inner.order.pop_front() {
                        inner.values.remove(&old);
                        self.conflated.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.notify.notify_one();
    }

    pub fn pop(&self) -> Option<MarketUpdate> {
        let mut inner = self.lock();
        let key = inner.order.pop_front()?;
        inner.values.remove(&key)
    }

    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Values overwritten or evicted before the reader took them.
    pub fn conflated(&self) -> u64 {
        self.conflated.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use rust_decimal_macros::dec;
    use vpp_engine::market::DeliveryInterval;

    #[test]
    fn backoff_grows_caps_and_stops() {
        let mut b = Backoff::new(
            BackoffConfig {
                initial_ms: 100,
                max_ms: 350,
                multiplier: 2.0,
                jitter: 0.0,
                max_retries: Some(4),
            },
            1,
        );
        let ms: Vec<_> = (0..5).map(|a| b.delay(a).map(|d| d.as_millis())).collect();
        assert_eq!(ms, vec![Some(100), Some(200), Some(350), Some(350), None]);
        let mut j = Backoff::new(BackoffConfig::default(), 7);
        for a in 0..20 {
            let d = j.delay(a).unwrap().as_millis();
            assert!((80..=12_000).contains(&d), "{d}");
        }
    }

    #[test]
    fn sliding_window_is_the_venue_window_not_per_second() {
        let mut w = SlidingWindow::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(w.try_acquire(t0).is_ok());
        }
        let wait = w.try_acquire(t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(9));
        assert!(w.try_acquire(t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn conflator_keeps_latest_per_key_and_counts_losses() {
        let c = Conflator::new(2);
        let interval = |h| {
            DeliveryInterval::starting_at(Utc.with_ymd_and_hms(2026, 3, 1, h, 0, 0).unwrap())
                .unwrap()
        };
        let price = |h, p| MarketUpdate {
            market: "m".into(),
            seq: 1,
            from_snapshot: false,
            item: MarketItem::Price(PricePoint {
                interval: interval(h),
                reference_price_cny_per_mwh: p,
                last_trade_price_cny_per_mwh: None,
            }),
        };
        c.push(price(1, dec!(1)));
        c.push(price(1, dec!(2)));
        c.push(price(2, dec!(3)));
        c.push(price(3, dec!(4))); // evicts key 1
        assert_eq!(c.conflated(), 2);
        assert_eq!(c.pop(), Some(price(2, dec!(3))));
        assert_eq!(c.pop(), Some(price(3, dec!(4))));
        assert_eq!(c.pop(), None);
    }
}
