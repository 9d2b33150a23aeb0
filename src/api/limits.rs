//! Body-size and per-token rate limits of the operator API.
//!
//! Invariants:
//! - A JSON or raw body above [`BODY_LIMIT_BYTES`] is refused with 413 before it is parsed.
//! - Each token has a token bucket (`rate_per_s`, `burst`); an empty bucket answers 429 with
//!   `Retry-After`. The bucket map is bounded by `max_tokens`: when full, idle (refilled)
//!   buckets go first, then the least recently used.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Largest request body accepted (64 KiB).
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// Rate limit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second per token.
    pub rate_per_s: f64,
    /// Requests a token may send at once.
    pub burst: u32,
    /// Most tokens tracked at once.
    pub max_tokens: usize,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            rate_per_s: 100.0,
            burst: 200,
            max_tokens: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

/// Token buckets keyed by API token id (or, for unauthenticated calls, by peer address).
#[derive(Debug)]
pub struct RateLimiter<K = u64> {
    cfg: RateLimit,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl RateLimit {
    /// The budget of unauthenticated calls per peer address: a tenth of a token's (at least
    /// 5/s, burst 20), so a client without a valid token cannot flood the store with lookups
    /// and refusals.
    pub fn for_peers(self) -> Self {
        Self {
            rate_per_s: (self.rate_per_s / 10.0).max(5.0),
            burst: (self.burst / 10).max(20),
            max_tokens: self.max_tokens,
        }
    }
}

impl<K: Hash + Eq + Copy> RateLimiter<K> {
    pub fn new(cfg: RateLimit) -> Self {
        let cfg = RateLimit {
            rate_per_s: if cfg.rate_per_s.is_finite() && cfg.rate_per_s > 0.0 {
                cfg.rate_per_s
            } else {
                RateLimit::default().rate_per_s
            },
            burst: cfg.burst.max(1),
            max_tokens: cfg.max_tokens.max(1),
        };
        Self {
            cfg,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> RateLimit {
        self.cfg
    }

    /// Takes one request from the token's bucket; `Err(seconds)` to wait when empty.
    pub fn check(&self, token_id: K, now: Instant) -> Result<(), u64> {
        let burst = f64::from(self.cfg.burst);
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(&token_id) && map.len() >= self.cfg.max_tokens {
            self.evict(&mut map, now);
        }
        let b = map.entry(token_id).or_insert(Bucket {
            level: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.level = (b.level + elapsed * self.cfg.rate_per_s).min(burst);
        b.at = now;
        if b.level >= 1.0 {
            b.level -= 1.0;
            Ok(())
        } else {
            let wait_s = (1.0 - b.level) / self.cfg.rate_per_s;
            // Whole seconds for Retry-After, at least 1.
            Err((wait_s.ceil() as u64).max(1))
        }
    }

    /// Whether `key` has a request left, without taking it.
    pub fn peek(&self, key: K, now: Instant) -> Result<(), u64> {
        let burst = f64::from(self.cfg.burst);
        let map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(b) = map.get(&key) else {
            return Ok(());
        };
        let level = (b.level
            + now.saturating_duration_since(b.at).as_secs_f64() * self.cfg.rate_per_s)
            .min(burst);
        if level >= 1.0 {
            Ok(())
        } else {
            Err((((1.0 - level) / self.cfg.rate_per_s).ceil() as u64).max(1))
        }
    }

    fn evict(&self, map: &mut HashMap<K, Bucket>, now: Instant) {
        let burst = f64::from(self.cfg.burst);
        let rate = self.cfg.rate_per_s;
        map.retain(|_, b| {
            b.level + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if map.len() >= self.cfg.max_tokens {
            if let Some(oldest) = map.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
    }

    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refusal_then_refill() {
        let l = RateLimiter::new(RateLimit {
            rate_per_s: 2.0,
            burst: 3,
            max_tokens: 10,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(1, t0), Ok(()));
        }
        assert_eq!(l.check(1, t0), Err(1));
        // Another token has its own bucket.
        assert_eq!(l.check(2, t0), Ok(()));
        // Half a second refills one request at 2/s.
        assert_eq!(l.check(1, t0 + Duration::from_millis(500)), Ok(()));
        assert!(l.check(1, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn the_map_stays_bounded() {
        let l = RateLimiter::new(RateLimit {
            rate_per_s: 1.0,
            burst: 5,
            max_tokens: 4,
        });
        let t0 = Instant::now();
        for id in 0..100 {
            let _ = l.check(id, t0 + Duration::from_millis(id));
            assert!(l.tracked() <= 4);
        }
    }
}
