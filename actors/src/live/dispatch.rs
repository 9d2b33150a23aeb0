//! The Dispatch actor (one per aggregation): turns the aggregation's net position for the
//! interval that starts into per-resource setpoints (pro rata by headroom, through the pure
//! `DispatchFleet`), and settles each interval that ended, energy only:
//! `revenue = Σ (sold − bought value) × 0.25 h` in CNY, exact decimals.
//!
//! Invariants: positions kept are bounded to [`MAX_INTERVALS`] intervals (oldest dropped after
//! settlement); a setpoint the park cannot take is logged, never retried in a loop.

use super::messages::{TelemetryBatch, ToDispatch};
use crate::metrics::{Gauge, Metrics};
use crate::supervisor::{Handles, LogicFault, SupervisedLogic};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use vpp_engine::clock::Clock;
use vpp_engine::dispatch::{Award, DispatchFleet, DispatchMethod, DispatchRequest, UnitState};
use vpp_engine::ids::{AggregationId, MarketId, ResourceId};
use vpp_engine::market::DeliveryInterval;
use vpp_engine::position::Position;

pub const MAX_INTERVALS: usize = 1_000;
const INTERVAL_H: Decimal = Decimal::from_parts(25, 0, 0, false, 2);

/// Seconds of ramping a setpoint may assume (dispatch happens as the interval starts, so the
/// resources ramp within its first minutes).
const RAMP_WINDOW_S: Decimal = Decimal::from_parts(300, 0, 0, false, 0);

/// A setpoint for the park: resource, kW.
pub type Setpoint = (ResourceId, Decimal);

#[derive(Clone)]
pub struct DispatchWiring {
    pub aggregation_id: AggregationId,
    pub name: String,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub setpoints: mpsc::Sender<Setpoint>,
}

#[derive(Clone)]
pub struct DispatchLogic {
    fleet: DispatchFleet,
    positions: BTreeMap<DeliveryInterval, BTreeMap<MarketId, Position>>,
    revenue_cny: Decimal,
    w: DispatchWiring,
    revenue_gauge: Gauge,
}

impl DispatchLogic {
    pub fn new(fleet: DispatchFleet, w: DispatchWiring) -> Self {
        let revenue_gauge = w.metrics.gauge(
            "vpp_settled_revenue_cny",
            &[("aggregation", w.name.as_str())],
        );
        Self {
            fleet,
            positions: BTreeMap::new(),
            revenue_cny: Decimal::ZERO,
            w,
            revenue_gauge,
        }
    }

    pub fn revenue_cny(&self) -> Decimal {
        self.revenue_cny
    }

    fn dispatch(&mut self, interval: DeliveryInterval) {
        let award_mw: Decimal = self
            .positions
            .get(&interval)
            .map(|m| m.values().map(Position::net_sold_mw).sum())
            .unwrap_or_default();
        let request = DispatchRequest {
            award: Award {
                aggregation_id: self.w.aggregation_id,
                market_id: MarketId(0),
                interval,
                award_mw,
            },
            method: DispatchMethod::ProRata,
            ramp_window_s: RAMP_WINDOW_S,
            at: self.w.clock.now(),
        };
        match self.fleet.dispatch(&request) {
            Ok(plan) => {
                if award_mw != Decimal::ZERO {
                    tracing::info!(aggregation = %self.w.name, %interval, %award_mw,
                        setpoints = plan.instructions.len(), remaining_kw = %plan.remaining_kw,
                        "dispatched");
                }
                for i in &plan.instructions {
                    if self
                        .w
                        .setpoints
                        .try_send((i.resource_id, i.setpoint_kw))
                        .is_err()
                    {
                        tracing::warn!(resource = %i.resource_id, "setpoint queue full");
                    }
                }
            }
            Err(e) => tracing::warn!(aggregation = %self.w.name, error = %e, "dispatch failed"),
        }
    }

    fn settle_before(&mut self, interval: DeliveryInterval) {
        while let Some(entry) = self.positions.first_entry() {
            if *entry.key() >= interval {
                break;
            }
            let (ended, markets) = entry.remove_entry();
            let revenue: Decimal = markets
                .values()
                .map(|p| (p.sold_value - p.bought_value) * INTERVAL_H)
                .sum();
            self.revenue_cny += revenue;
            self.revenue_gauge
                .set(self.revenue_cny.trunc().try_into().unwrap_or(i64::MAX));
            tracing::info!(aggregation = %self.w.name, interval = %ended, revenue_cny = %revenue,
                total_cny = %self.revenue_cny, "interval settled (energy)");
        }
    }
}

impl SupervisedLogic for DispatchLogic {
    type Snapshot = DispatchLogic;
    fn snapshot(&self) -> DispatchLogic {
        self.clone()
    }
}

impl Handles<ToDispatch> for DispatchLogic {
    type Reply = ();
    fn handle(&mut self, msg: ToDispatch) -> Result<(), LogicFault> {
        match msg {
            ToDispatch::Position { key, position } => {
                if key.aggregation_id == self.w.aggregation_id {
                    self.positions
                        .entry(key.interval)
                        .or_default()
                        .insert(key.market_id, position);
                    while self.positions.len() > MAX_INTERVALS {
                        self.positions.pop_first();
                    }
                }
            }
            ToDispatch::IntervalStart(interval) => {
                self.settle_before(interval);
                self.dispatch(interval);
            }
        }
        Ok(())
    }
}

impl Handles<TelemetryBatch> for DispatchLogic {
    type Reply = ();
    fn handle(&mut self, batch: TelemetryBatch) -> Result<(), LogicFault> {
        for (id, t) in &batch.samples {
            if self.fleet.spec_of(*id).is_some() {
                let state = UnitState {
                    baseline_kw: t.power_kw,
                    soc_pct: t.soc_pct,
                    available: t.available,
                };
                // Not a member or an out-of-range sample: keep the previous state.
                let _ = self.fleet.set_state(*id, state);
            }
        }
        Ok(())
    }
}
