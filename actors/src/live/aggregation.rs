//! The Aggregation actor (one per aggregation): telemetry in, aggregated capacity out, O(1)
//! per sample through `AggregationState::apply_feed` (never a rescan). After each batch it
//! publishes the capacity to its strategies and to risk.
//!
//! Invariants: only member resources change the state; `telemetry_to_capacity{scope=<name>}`
//! records batch production to capacity published. The capacity is also exported as gauges
//! (`vpp_aggregation_up_flex_kw`, `vpp_aggregation_down_flex_kw`, `vpp_aggregation_energy_kwh`,
//! `vpp_aggregation_available_resources`, label `aggregation`; whole kW/kWh, truncated) so
//! operators and end-to-end tests see it move.

use super::messages::{TelemetryBatch, ToRisk, ToStrategy};
use super::StrategyRoutes;
use crate::mailbox::BoundedSender;
use crate::metrics::{Counter, Gauge, LatencyRecorder, Metrics, Stage};
use crate::supervisor::{Handles, LogicFault, SupervisedLogic};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use vpp_engine::aggregation::{AggregationState, ResourceFeed};
use vpp_engine::clock::Clock;
use vpp_engine::ids::{ResourceId, StrategyId};
use vpp_engine::strategy::{CapacityUpdate, StorageState};

#[derive(Clone)]
pub struct AggregationWiring {
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub risk: BoundedSender<ToRisk>,
    /// The strategy actors, and which of them trade this aggregation.
    pub routes: StrategyRoutes,
    pub strategies: Vec<StrategyId>,
}

#[derive(Clone)]
pub struct AggregationLogic {
    state: AggregationState,
    feeds: HashMap<ResourceId, ResourceFeed>,
    w: AggregationWiring,
    latency: LatencyRecorder,
    samples: Counter,
    gauges: [Gauge; 4],
}

/// Gauge names of the aggregated capacity (label `aggregation`).
pub mod names {
    pub const UP_FLEX_KW: &str = "vpp_aggregation_up_flex_kw";
    pub const DOWN_FLEX_KW: &str = "vpp_aggregation_down_flex_kw";
    pub const ENERGY_KWH: &str = "vpp_aggregation_energy_kwh";
    pub const AVAILABLE_RESOURCES: &str = "vpp_aggregation_available_resources";
}

fn whole(x: Decimal) -> i64 {
    x.trunc().try_into().unwrap_or(if x.is_sign_negative() {
        i64::MIN
    } else {
        i64::MAX
    })
}

impl AggregationLogic {
    /// `feeds` holds every member's feed (parameters and lifecycle state).
    pub fn new(
        state: AggregationState,
        feeds: HashMap<ResourceId, ResourceFeed>,
        w: AggregationWiring,
    ) -> Self {
        let latency = w.metrics.latency(Stage::TelemetryToCapacity, state.name());
        let samples = w.metrics.counter(
            crate::metrics::names::TELEMETRY_SAMPLES_TOTAL,
            &[("aggregation", state.name())],
        );
        let label = [("aggregation", state.name())];
        let gauges = [
            names::UP_FLEX_KW,
            names::DOWN_FLEX_KW,
            names::ENERGY_KWH,
            names::AVAILABLE_RESOURCES,
        ]
        .map(|n| w.metrics.gauge(n, &label));
        Self {
            state,
            feeds,
            w,
            latency,
            samples,
            gauges,
        }
    }

    pub fn state(&self) -> &AggregationState {
        &self.state
    }

    fn publish(&self) {
        let capacity = *self.state.capacity();
        self.gauges[0].set(whole(capacity.up_flex_kw));
        self.gauges[1].set(whole(capacity.down_flex_kw));
        self.gauges[2].set(whole(capacity.energy_kwh));
        self.gauges[3].set(i64::from(capacity.available_resources));
        let stored = capacity.energy_kwh;
        let usable = stored + capacity.charge_headroom_kwh;
        let storage = (usable > Decimal::ZERO).then(|| StorageState {
            soc_pct: (stored * Decimal::ONE_HUNDRED / usable).round_dp(2),
            energy_kwh: stored,
            capacity_kwh: usable,
        });
        let update = CapacityUpdate {
            aggregation_id: self.state.id(),
            capacity,
            storage,
            at: self.w.clock.now(),
        };
        {
            let routes = self.w.routes.lock().unwrap_or_else(PoisonError::into_inner);
            for id in &self.w.strategies {
                if let Some(s) = routes.get(id) {
                    // Capacity is state: a refused update is superseded by the next (counted).
                    let _ = s.try_send(ToStrategy::Capacity(update));
                }
            }
        }
        let thousand = Decimal::from(1000);
        let _ = self.w.risk.try_send(ToRisk::Capacity {
            aggregation_id: self.state.id(),
            up_flex_mw: capacity.up_flex_kw / thousand,
            down_flex_mw: capacity.down_flex_kw / thousand,
        });
    }
}

impl SupervisedLogic for AggregationLogic {
    type Snapshot = AggregationLogic;
    fn snapshot(&self) -> AggregationLogic {
        self.clone()
    }
}

impl Handles<TelemetryBatch> for AggregationLogic {
    type Reply = ();
    fn handle(&mut self, batch: TelemetryBatch) -> Result<(), LogicFault> {
        for (id, sample) in batch.samples {
            if let Some(feed) = self.feeds.get_mut(&id) {
                feed.telemetry = Some(sample);
                self.state.apply_feed(id, feed);
                self.samples.inc();
            }
        }
        self.publish();
        self.latency
            .record_between(batch.produced_ns, self.w.clock.monotonic_ns());
        Ok(())
    }
}
