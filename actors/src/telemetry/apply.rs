//! A small aggregation consumer for tests and benches: applies sample batches to an engine
//! [`AggregationBook`] (O(memberships) per sample, never a rescan) and records
//! `telemetry_to_capacity` from each sample's receipt to the capacity it changed.
//!
//! The daemon does not use this: there the samples go through an [`super::ActorFanOut`] to its
//! Aggregation actors. This exists so ingest can be tested and benched end to end without the
//! daemon's wiring.
//!
//! Invariant: latency is measured on the same injected clock the ingest stamped
//! `received_ns` with, after the whole batch is applied (so it includes batching delay).

use super::TelemetrySample;
use crate::metrics::{LatencyRecorder, Metrics, Stage};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;
use vpp_engine::aggregation::{AggregatedCapacity, AggregationBook};
use vpp_engine::clock::Clock;
use vpp_engine::ids::AggregationId;
use vpp_engine::resource::TelemetryOutcome;

/// Samples applied, and those the book ignored (stale or unknown to it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub applied: u64,
    pub ignored: u64,
}

/// Owns a book and applies batches to it.
pub struct CapacityApplier {
    book: AggregationBook,
    clock: Arc<dyn Clock>,
    latency: LatencyRecorder,
    stats: ApplyStats,
}

impl CapacityApplier {
    /// Latency goes to `telemetry_to_capacity{scope}`.
    pub fn new(
        book: AggregationBook,
        clock: Arc<dyn Clock>,
        metrics: &Metrics,
        scope: &str,
    ) -> Self {
        Self {
            book,
            clock,
            latency: metrics.latency(Stage::TelemetryToCapacity, scope),
            stats: ApplyStats::default(),
        }
    }

    /// Applies every sample, then records each one's receipt-to-capacity latency.
    pub fn apply_batch(&mut self, batch: Vec<TelemetrySample>) {
        let mut received = Vec::with_capacity(batch.len());
        for sample in batch {
            received.push(sample.received_ns);
            match self
                .book
                .apply_telemetry(sample.resource_id, sample.telemetry)
            {
                Ok(TelemetryOutcome::Applied) => self.stats.applied += 1,
                Ok(TelemetryOutcome::Stale { .. }) | Err(_) => self.stats.ignored += 1,
            }
        }
        let now_ns = self.clock.monotonic_ns();
        for received_ns in received {
            self.latency.record_between(received_ns, now_ns);
        }
    }

    pub fn book(&self) -> &AggregationBook {
        &self.book
    }

    pub fn capacity(&self, id: AggregationId) -> Option<AggregatedCapacity> {
        self.book.capacity(id).copied()
    }

    pub fn stats(&self) -> ApplyStats {
        self.stats
    }

    /// Shares the applier and drains `rx` into it on a tokio task until the channel closes.
    pub fn spawn(self, mut rx: mpsc::Receiver<Vec<TelemetrySample>>) -> Arc<Mutex<Self>> {
        let shared = Arc::new(Mutex::new(self));
        let worker = shared.clone();
        tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                worker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .apply_batch(batch);
            }
        });
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use rust_decimal::Decimal;
    use vpp_engine::aggregation::{CapacityParams, ResourceFeed};
    use vpp_engine::clock::ManualClock;
    use vpp_engine::ids::ResourceId;
    use vpp_engine::resource::{LifecycleState, Telemetry};

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn batches_move_capacity_and_record_latency() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::new(t0);
        let mut book = AggregationBook::new();
        let params = CapacityParams {
            max_power_kw: d("100"),
            min_power_kw: d("-100"),
            energy_capacity_kwh: None,
            soc_min_pct: None,
            soc_max_pct: None,
        };
        book.upsert_resource(
            ResourceId(1),
            ResourceFeed::new(params, LifecycleState::Active),
        )
        .unwrap();
        book.add_aggregation(AggregationId(1), "vpp").unwrap();
        book.set_member(AggregationId(1), ResourceId(1), d("50"))
            .unwrap();
        let metrics = Metrics::new();
        let mut applier = CapacityApplier::new(book, Arc::new(clock.clone()), &metrics, "t");
        let sample = |kw: &str, secs: i64| TelemetrySample {
            resource_id: ResourceId(1),
            telemetry: Telemetry {
                power_kw: d(kw),
                soc_pct: None,
                available: true,
                at: t0 + chrono::Duration::seconds(secs),
            },
            received_ns: 0,
        };
        clock.advance(chrono::Duration::milliseconds(2));
        applier.apply_batch(vec![sample("30.5", 1), sample("1", 0)]);
        let cap = applier.capacity(AggregationId(1)).unwrap();
        assert_eq!((cap.up_flex_kw, cap.down_flex_kw), (d("34.75"), d("65.25")));
        assert_eq!(
            applier.stats(),
            ApplyStats {
                applied: 1,
                ignored: 1
            }
        );
        let stats = metrics.snapshot();
        let lat = stats.latency(Stage::TelemetryToCapacity, "t").unwrap();
        assert_eq!(lat.count, 2);
        assert!((lat.max_us - 2000.0).abs() < 20.0, "{}", lat.max_us);
    }
}
