//! The Dispatch actor (one per aggregation): turns the aggregation's net position for the
//! interval that starts into per-resource setpoints with the aggregation's method (pro rata,
//! merit order or SoC-weighted, through the pure `DispatchFleet`), closes the loop on metered
//! power (`DeviationTracker`), journals every instruction with its cause, and hands each ended
//! interval's positions and metered delivery to the Settlement actor.
//!
//! Per interval (dispatch is absolute: see `vpp_engine::dispatch` and `vpp_engine::schedule`):
//! - at its start, every member's [`UnitState`] is set from its *natural* baseline
//!   ([`NaturalBaseline`]: storage 0 kW, PV/wind what the weather gives and a ceiling there,
//!   loads and EV chargers the persistence of their uninstructed power, an EV charger's floor
//!   the cars present) with the SoC and availability of its latest telemetry (no telemetry
//!   yet: offline). The baselines then stay fixed for the interval, as the closed loop
//!   requires. A baseline never contains a setpoint, so setpoints never stack;
//! - every member gets this interval's setpoint: baseline + its delta, written into the
//!   park's shared [`SetpointBook`] and sent as the resource's combined setpoint (Σ deltas of
//!   every aggregation holding a share of it in this interval); a member no aggregation moves
//!   is *released* (runs on its own: a battery rests), never left on an older setpoint;
//! - the award (Σ net sold MW over the markets that deliver energy; regulation and reserve
//!   awards are headroom held for the system operator and dispatch nothing) is dispatched; a
//!   non-zero award's plan is tracked. Each telemetry sample of a tracked resource is observed; when one stays outside
//!   the band for N consecutive samples its shortfall is re-dispatched to the others with
//!   headroom (`DeviationTracker::correct`), sent and journaled with cause `correction`;
//! - delivery is measured per member as the mean over the interval's samples of its part of
//!   `metered − baseline` ([`SetpointBook::attribute_kw`]: its own delta plus its share of
//!   what no aggregation scheduled, so a shared battery is counted once across aggregations).
//!   The aggregation's delivery is the sum over the members it instructed (delta ≠ 0); the
//!   change of the members it did not instruct (forecast drift of wind and PV, loads off
//!   their persistence baseline) is its *imbalance*, reported apart and never penalised as a
//!   deviation of the delivery;
//! - at the next interval's start the ended interval goes to settlement (positions, delivery,
//!   per-resource schedule and delivery). Intervals with positions but never dispatched here
//!   (the daemon was not running) settle with zero delivery.
//!
//! Invariants: positions kept are bounded to [`MAX_INTERVALS`] intervals (oldest dropped and
//! logged); per-resource state is bounded by the fleet; the actor never awaits the store:
//! instructions go through [`DispatchJournal`]'s bounded channel to a batching writer task, and
//! an instruction the channel cannot take is counted (`vpp_dispatch_journal_total{result=
//! "overflow"}`) and logged (rate-limited), never silently dropped. A setpoint the park or the
//! broker cannot take is logged, never retried in a loop.

use super::messages::{TelemetryBatch, ToDispatch};
use super::settlement::{IntervalDelivery, ToSettlement};
use crate::mailbox::BoundedSender;
use crate::metrics::{Counter, Metrics};
use crate::supervisor::{Handles, LogicFault, SupervisedLogic};
use crate::telemetry::ingest::RateLimit;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;
use vpp_engine::clock::Clock;
use vpp_engine::dispatch::{
    Award, DeviationTracker, DispatchCause, DispatchFleet, DispatchMethod, DispatchPlan,
    DispatchRequest, Observation, TrackerConfig, UnitState,
};
use vpp_engine::ids::{AggregationId, MarketId, ResourceId};
use vpp_engine::market::DeliveryInterval;
use vpp_engine::position::Position;
use vpp_engine::resource::Telemetry;
use vpp_engine::schedule::{Behaviour, CombinedSetpoint, NaturalBaseline, SetpointBook};
use vpp_engine::settlement::ResourceDelivery;
use vpp_persistence::{DispatchInstruction as StoredInstruction, Store};

pub const MAX_INTERVALS: usize = 1_000;
const THOUSAND: Decimal = Decimal::from_parts(1_000, 0, 0, false, 0);

/// Seconds of ramping an award's setpoints may assume (dispatch happens as the interval
/// starts, so the resources ramp within its first minutes).
const RAMP_WINDOW_S: Decimal = Decimal::from_parts(300, 0, 0, false, 0);
/// Seconds of ramping a correction may assume: it is urgent.
const CORRECTION_RAMP_WINDOW_S: Decimal = Decimal::from_parts(60, 0, 0, false, 0);

/// Counter of journaled dispatch instructions (label `result`: `queued`, `overflow`,
/// `written`, `failed`).
pub const JOURNAL_TOTAL: &str = "vpp_dispatch_journal_total";
/// Counter of closed-loop corrections (label `aggregation`).
pub const CORRECTIONS_TOTAL: &str = "vpp_dispatch_corrections_total";

/// A setpoint for the park or the broker: the resource's combined setpoint for the interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setpoint {
    pub resource_id: ResourceId,
    pub setpoint_kw: Decimal,
    pub interval: Option<DeliveryInterval>,
    /// No aggregation moves the resource: it runs on its own (`setpoint_kw` is then its
    /// natural baseline, for a device that needs a number).
    pub released: bool,
}

impl Setpoint {
    fn of(c: CombinedSetpoint) -> Self {
        Self {
            resource_id: c.resource_id,
            setpoint_kw: c.setpoint_kw,
            interval: Some(c.interval),
            released: c.released,
        }
    }
}

/// The park's setpoint book, shared by every Dispatch actor (held for microseconds).
pub type SharedBook = Arc<Mutex<SetpointBook>>;

/// The producer side of the dispatch journal: a bounded channel to a batching writer task.
#[derive(Clone)]
pub struct DispatchJournal {
    tx: Option<mpsc::Sender<StoredInstruction>>,
    queued: Counter,
    overflow: Counter,
    log: Arc<Mutex<RateLimit>>,
}

/// Most instructions written per batch of the writer task.
pub const JOURNAL_BATCH: usize = 256;

impl DispatchJournal {
    /// A journal that records nothing (tests of dispatch alone); submissions count as overflow.
    pub fn disabled() -> Self {
        Self {
            tx: None,
            queued: Counter::detached(),
            overflow: Counter::detached(),
            log: Arc::default(),
        }
    }

    /// Starts the writer task on the current runtime; `capacity` bounds the channel.
    pub fn spawn(
        store: Store,
        capacity: usize,
        metrics: &Metrics,
    ) -> (Self, super::writer::WriterTask) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let written = metrics.counter(JOURNAL_TOTAL, &[("result", "written")]);
        let failed = metrics.counter(JOURNAL_TOTAL, &[("result", "failed")]);
        let task = super::writer::WriterTask::spawn(move |close| {
            journal_writer(store, rx, written, failed, close)
        });
        let journal = Self {
            tx: Some(tx),
            queued: metrics.counter(JOURNAL_TOTAL, &[("result", "queued")]),
            overflow: metrics.counter(JOURNAL_TOTAL, &[("result", "overflow")]),
            log: Arc::default(),
        };
        (journal, task)
    }

    /// Hands one instruction to the writer without waiting; a full or closed channel is
    /// counted and logged (at most once per 10 s, with the count held back).
    pub fn submit(&self, instruction: StoredInstruction, now_ns: u64) {
        let refused = match &self.tx {
            Some(tx) => tx.try_send(instruction).err().map(|e| e.to_string()),
            None => Some("dispatch journal disabled".to_owned()),
        };
        match refused {
            None => self.queued.inc(),
            Some(reason) => {
                self.overflow.inc();
                let permit = self
                    .log
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .permit(now_ns, 10_000_000_000);
                if let Some(suppressed) = permit {
                    tracing::warn!(%reason, suppressed, overflow_total = self.overflow.get(),
                        "dispatch instruction not journaled");
                }
            }
        }
    }

    pub fn overflow(&self) -> u64 {
        self.overflow.get()
    }
}

/// Writes instructions in batches: waits for one, then takes whatever else is queued (up to
/// [`JOURNAL_BATCH`]). Ends when every sender is gone and the channel is drained.
async fn journal_writer(
    store: Store,
    mut rx: mpsc::Receiver<StoredInstruction>,
    written: Counter,
    failed: Counter,
    mut close: super::writer::CloseSignal,
) {
    let mut batch = Vec::with_capacity(JOURNAL_BATCH);
    while close.recv_many(&mut rx, &mut batch, JOURNAL_BATCH).await > 0 {
        for d in batch.drain(..) {
            match store.insert_dispatch_instruction(&d).await {
                Ok(_) => written.inc(),
                Err(e) => {
                    failed.inc();
                    tracing::error!(error = %e, resource = %d.resource_id,
                        "dispatch instruction could not be written");
                }
            }
        }
    }
}

#[derive(Clone)]
pub struct DispatchWiring {
    pub aggregation_id: AggregationId,
    pub name: String,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub method: DispatchMethod,
    pub tracker: TrackerConfig,
    pub setpoints: mpsc::Sender<Setpoint>,
    pub journal: DispatchJournal,
    /// The aggregation's Settlement actor (none: ended intervals are only logged).
    pub settlement: Option<BoundedSender<ToSettlement>>,
    /// Risk's deviation monitor (none: ended intervals are not graded).
    pub deviation: Option<super::risk::DeviationFeed>,
    /// Markets whose awards are headroom held for the system operator (regulation, reserve:
    /// [`vpp_engine::market::MarketKind::holds_headroom`]): no energy is dispatched for them.
    pub headroom_markets: BTreeSet<MarketId>,
    /// How each member behaves without an instruction (from its kind); a member missing here
    /// is taken as `Profile` (persistence of its uninstructed power).
    pub behaviours: BTreeMap<ResourceId, Behaviour>,
    /// The park's setpoint book (one per daemon, shared by every Dispatch actor).
    pub book: SharedBook,
}

/// What is measured of the interval in force.
#[derive(Debug, Clone)]
struct Delivering {
    interval: DeliveryInterval,
    /// Baseline of each member that had telemetry at the start, kW.
    baseline_kw: BTreeMap<ResourceId, Decimal>,
    /// This aggregation's delta in force per resource, kW (award, amended by corrections).
    scheduled_kw: BTreeMap<ResourceId, Decimal>,
    /// Σ of this aggregation's part of (metered − baseline), kW, and sample count per resource.
    metered: BTreeMap<ResourceId, (Decimal, u32)>,
}

/// An ended interval's metering: the instructed members' delivery, the others' imbalance.
struct Metered {
    delivered_mw: Decimal,
    imbalance_mw: Decimal,
    resources: Vec<ResourceDelivery>,
}

impl Delivering {
    fn finish(self) -> Metered {
        let (mut delivered_mw, mut imbalance_mw) = (Decimal::ZERO, Decimal::ZERO);
        let mut resources = Vec::with_capacity(self.baseline_kw.len());
        for rid in self.baseline_kw.keys() {
            let part_kw = match self.metered.get(rid) {
                Some((sum, n)) if *n > 0 => *sum / Decimal::from(*n),
                _ => Decimal::ZERO,
            };
            let part_mw = (part_kw / THOUSAND).round_dp(6);
            let scheduled_kw = self.scheduled_kw.get(rid).copied().unwrap_or_default();
            if scheduled_kw.is_zero() {
                imbalance_mw += part_mw;
            } else {
                delivered_mw += part_mw;
            }
            resources.push(ResourceDelivery {
                resource_id: *rid,
                scheduled_mw: scheduled_kw / THOUSAND,
                delivered_mw: part_mw,
            });
        }
        Metered {
            delivered_mw,
            imbalance_mw,
            resources,
        }
    }
}

#[derive(Clone)]
pub struct DispatchLogic {
    fleet: DispatchFleet,
    natural: NaturalBaseline,
    tracker: DeviationTracker,
    positions: BTreeMap<DeliveryInterval, BTreeMap<MarketId, Position>>,
    latest: BTreeMap<ResourceId, Telemetry>,
    current: Option<Delivering>,
    corrections: Counter,
    w: DispatchWiring,
}

impl DispatchLogic {
    /// `w.tracker` must be valid (the config validates it).
    pub fn new(fleet: DispatchFleet, w: DispatchWiring) -> Result<Self, String> {
        let tracker = DeviationTracker::new(w.aggregation_id, w.tracker)
            .map_err(|e| format!("aggregation {}: closed loop: {e}", w.name))?;
        w.method
            .validate()
            .map_err(|e| format!("aggregation {}: dispatch method: {e}", w.name))?;
        let corrections = w
            .metrics
            .counter(CORRECTIONS_TOTAL, &[("aggregation", w.name.as_str())]);
        let natural = NaturalBaseline::new(w.behaviours.iter().map(|(k, v)| (*k, *v)));
        Ok(Self {
            fleet,
            natural,
            tracker,
            positions: BTreeMap::new(),
            latest: BTreeMap::new(),
            current: None,
            corrections,
            w,
        })
    }

    /// Σ (last metered − setpoint) over the resources the closed loop follows, kW.
    pub fn total_deviation_kw(&self) -> Decimal {
        self.tracker.total_deviation_kw()
    }

    /// The setpoint in force for a resource (award or correction), kW.
    pub fn setpoint_kw(&self, resource_id: ResourceId) -> Option<Decimal> {
        self.tracker.setpoint_kw(resource_id)
    }

    /// The interval being delivered.
    pub fn current_interval(&self) -> Option<DeliveryInterval> {
        self.current.as_ref().map(|c| c.interval)
    }

    /// Sets every member's state from its natural baseline and latest telemetry; returns the
    /// baselines set.
    fn refresh_states(&mut self) -> BTreeMap<ResourceId, Decimal> {
        let mut baselines = BTreeMap::new();
        let ids: Vec<ResourceId> = self.latest.keys().copied().collect();
        for id in ids {
            let t = &self.latest[&id];
            let state = self.natural.state(id, t.soc_pct, t.available);
            if state == UnitState::OFFLINE {
                let _ = self.fleet.set_state(id, state);
                continue;
            }
            match self.fleet.set_state(id, state) {
                Ok(()) => {
                    baselines.insert(id, state.baseline_kw);
                }
                Err(e) => {
                    tracing::warn!(aggregation = %self.w.name, resource = %id, error = %e,
                        "telemetry not usable as a dispatch state; resource offline");
                    let _ = self.fleet.set_state(id, UnitState::OFFLINE);
                }
            }
        }
        baselines
    }

    /// The energy to deliver: Σ net sold MW over the markets that are not headroom.
    fn energy_award_mw(&self, markets: &BTreeMap<MarketId, Position>) -> Decimal {
        markets
            .iter()
            .filter(|(id, _)| !self.w.headroom_markets.contains(id))
            .map(|(_, p)| p.net_sold_mw())
            .sum()
    }

    fn start_interval(&mut self, interval: DeliveryInterval) {
        let markets = self.positions.get(&interval);
        let award_mw = markets.map_or(Decimal::ZERO, |m| self.energy_award_mw(m));
        let market_id = markets
            .and_then(|m| {
                m.keys()
                    .find(|id| !self.w.headroom_markets.contains(id))
                    .copied()
            })
            .unwrap_or(MarketId(0));
        let baseline_kw = self.refresh_states();
        // A new interval: the closed loop follows only this interval's plan.
        if let Ok(t) = DeviationTracker::new(self.w.aggregation_id, self.w.tracker) {
            self.tracker = t;
        }
        self.current = Some(Delivering {
            interval,
            baseline_kw,
            scheduled_kw: BTreeMap::new(),
            metered: BTreeMap::new(),
        });
        if award_mw.is_zero() {
            self.schedule_members(interval, None);
            return;
        }
        let request = DispatchRequest {
            award: Award {
                aggregation_id: self.w.aggregation_id,
                market_id,
                interval,
                award_mw,
            },
            method: self.w.method,
            ramp_window_s: RAMP_WINDOW_S,
            at: self.w.clock.now(),
        };
        match self.fleet.dispatch(&request) {
            Ok(plan) => {
                tracing::info!(aggregation = %self.w.name, %interval, %award_mw,
                    method = ?self.w.method, setpoints = plan.instructions.len(),
                    remaining_kw = %plan.remaining_kw, "dispatched");
                if let Err(e) = self.tracker.track_plan(&plan) {
                    tracing::warn!(aggregation = %self.w.name, error = %e, "plan not tracked");
                }
                self.schedule_members(interval, Some(&plan));
                self.issue(&plan, interval);
            }
            Err(e) => {
                tracing::warn!(aggregation = %self.w.name, error = %e, "dispatch failed");
                self.schedule_members(interval, None);
            }
        }
    }

    /// Writes this interval's delta of every member into the park's book (0 for members the
    /// plan leaves out) and sends the combined setpoint of each member the plan does not set
    /// (those it sets go out with [`Self::issue`]): nothing keeps an older interval's setpoint.
    fn schedule_members(&mut self, interval: DeliveryInterval, plan: Option<&DispatchPlan>) {
        let mut book = self.w.book.lock().unwrap_or_else(PoisonError::into_inner);
        for id in self.w.behaviours.keys() {
            if plan.is_some_and(|p| p.instructions.iter().any(|i| i.resource_id == *id)) {
                continue;
            }
            let baseline = self
                .fleet
                .state_of(*id)
                .map_or(Decimal::ZERO, |s| s.baseline_kw);
            let combined = book.set(
                self.w.aggregation_id,
                *id,
                interval,
                baseline,
                Decimal::ZERO,
            );
            // Sent under the lock: the park receives the combinations in the order written.
            if let Err(e) = self.w.setpoints.try_send(Setpoint::of(combined)) {
                tracing::warn!(resource = %id, error = %e, "setpoint queue full");
            }
        }
    }

    /// Sends a plan's setpoints, journals its instructions and raises its alerts.
    fn issue(&mut self, plan: &DispatchPlan, interval: DeliveryInterval) {
        for alert in &plan.alerts {
            tracing::warn!(aggregation = %self.w.name, %interval, alert = ?alert,
                "power the resources cannot take (remaining power)");
        }
        let (reason, detail) = match plan.cause {
            DispatchCause::Award { .. } => ("award", serde_json::to_value(plan.cause)),
            DispatchCause::Correction { .. } => ("correction", serde_json::to_value(plan.cause)),
        };
        let detail = detail.unwrap_or(serde_json::Value::Null);
        let now_ns = self.w.clock.monotonic_ns();
        for i in &plan.instructions {
            if let Some(cur) = self.current.as_mut() {
                cur.scheduled_kw.insert(i.resource_id, i.delta_kw);
            }
            {
                let mut book = self.w.book.lock().unwrap_or_else(PoisonError::into_inner);
                let combined = book.set(
                    self.w.aggregation_id,
                    i.resource_id,
                    interval,
                    i.baseline_kw,
                    i.delta_kw,
                );
                if let Err(e) = self.w.setpoints.try_send(Setpoint::of(combined)) {
                    tracing::warn!(resource = %i.resource_id, error = %e, "setpoint queue full");
                }
            }
            let mut detail = detail.clone();
            if let serde_json::Value::Object(m) = &mut detail {
                m.insert("baseline_kw".into(), i.baseline_kw.to_string().into());
                m.insert("delta_kw".into(), i.delta_kw.to_string().into());
            }
            self.w.journal.submit(
                StoredInstruction {
                    id: 0,
                    at: i.at,
                    aggregation_id: i.aggregation_id,
                    resource_id: i.resource_id,
                    interval: Some(interval),
                    setpoint_kw: i.setpoint_kw,
                    reason: reason.to_owned(),
                    detail,
                },
                now_ns,
            );
        }
    }

    /// Hands every interval before `interval` to settlement: the one delivered with its
    /// measurements, older ones (positions only) with zero delivery.
    fn settle_before(&mut self, interval: DeliveryInterval) {
        let mut delivered = match self.current.take() {
            Some(cur) if cur.interval < interval => Some(cur),
            other => {
                self.current = other;
                None
            }
        };
        let ended_interval = delivered.as_ref().map(|d| d.interval);
        let mut ended: Vec<DeliveryInterval> =
            self.positions.range(..interval).map(|(k, _)| *k).collect();
        if let Some(i) = ended_interval {
            if !self.positions.contains_key(&i) {
                ended.push(i);
                ended.sort();
            }
        }
        for i in ended {
            let markets = self.positions.remove(&i).unwrap_or_default();
            let metered = match delivered.take_if(|d| d.interval == i) {
                Some(d) => d.finish(),
                None => Metered {
                    delivered_mw: Decimal::ZERO,
                    imbalance_mw: Decimal::ZERO,
                    resources: Vec::new(),
                },
            };
            if markets.is_empty() {
                // Nothing was traded for it: nothing to settle.
                continue;
            }
            let delivery = IntervalDelivery {
                aggregation_id: self.w.aggregation_id,
                interval: i,
                award_mw: self.energy_award_mw(&markets),
                positions: markets.into_iter().collect(),
                delivered_mw: metered.delivered_mw,
                imbalance_mw: metered.imbalance_mw,
                resources: metered.resources,
            };
            tracing::info!(aggregation = %self.w.name, interval = %i,
                delivered_mw = %delivery.delivered_mw, "interval delivered");
            if let Some(feed) = &self.w.deviation {
                feed.send(&delivery);
            }
            if let Some(s) = &self.w.settlement {
                if let Err(e) = s.try_send(ToSettlement::Delivered(delivery)) {
                    tracing::error!(aggregation = %self.w.name, interval = %i, error = %e,
                        "delivered interval not handed to settlement");
                }
            }
        }
    }

    fn observe(&mut self, id: ResourceId, t: &Telemetry) -> bool {
        let share_pct = self
            .fleet
            .spec_of(id)
            .map_or(Decimal::ONE_HUNDRED, |s| s.share_pct);
        let Some(cur) = self.current.as_mut() else {
            // Before the first interval: everything runs on its own.
            self.natural.observe(id, t.power_kw, None);
            return false;
        };
        let (instructed, part) = {
            let book = self.w.book.lock().unwrap_or_else(PoisonError::into_inner);
            let instructed = book
                .combined(id, cur.interval)
                .filter(|c| !c.released)
                .map(|c| c.setpoint_kw);
            let part = cur.baseline_kw.get(&id).map(|baseline| {
                let change = t.power_kw - baseline;
                let part =
                    book.attribute_kw(self.w.aggregation_id, id, cur.interval, share_pct, change);
                (*baseline, part)
            });
            (instructed, part)
        };
        self.natural.observe(id, t.power_kw, instructed);
        let Some((baseline, part)) = part else {
            return false;
        };
        let e = cur.metered.entry(id).or_insert((Decimal::ZERO, 0));
        e.0 += part;
        e.1 = e.1.saturating_add(1);
        // The closed loop follows this aggregation's part of the resource.
        matches!(
            self.tracker.observe(id, baseline + part),
            Observation::Tripped { .. }
        )
    }

    fn correct(&mut self) {
        let Some(interval) = self.current_interval() else {
            return;
        };
        let at = self.w.clock.now();
        match self
            .tracker
            .correct(&mut self.fleet, CORRECTION_RAMP_WINDOW_S, at)
        {
            Ok(Some(plan)) => {
                self.corrections.inc();
                if let DispatchCause::Correction {
                    correction_kw,
                    deviating_resources,
                    ..
                } = plan.cause
                {
                    tracing::info!(aggregation = %self.w.name, %interval, %correction_kw,
                        deviating_resources, setpoints = plan.instructions.len(),
                        remaining_kw = %plan.remaining_kw, "closed-loop correction");
                }
                self.issue(&plan, interval);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(aggregation = %self.w.name, error = %e, "correction failed"),
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
                        if let Some((i, _)) = self.positions.pop_first() {
                            tracing::warn!(aggregation = %self.w.name, interval = %i,
                                "position dropped unsettled: more than {MAX_INTERVALS} intervals held");
                        }
                    }
                }
            }
            ToDispatch::IntervalStart(interval) => {
                self.settle_before(interval);
                if self.current_interval() != Some(interval) {
                    self.start_interval(interval);
                }
            }
        }
        Ok(())
    }
}

impl Handles<TelemetryBatch> for DispatchLogic {
    type Reply = ();
    fn handle(&mut self, batch: TelemetryBatch) -> Result<(), LogicFault> {
        let mut tripped = false;
        for (id, t) in &batch.samples {
            if self.fleet.spec_of(*id).is_some() {
                self.latest.insert(*id, t.clone());
                tripped |= self.observe(*id, t);
            }
        }
        if tripped {
            self.correct();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The Dispatch actor's handlers, driven message by message (deterministic: a manual clock,
    //! no mailbox timing): the configured method is used, a resource that under-delivers is
    //! corrected by the closed loop, the correction is journaled with its cause and the
    //! aggregation's deviation goes back under the band.
    use super::*;
    use chrono::TimeZone;
    use vpp_engine::clock::ManualClock;
    use vpp_engine::dispatch::{DeviationBand, DispatchUnitSpec};
    use vpp_engine::position::PositionKey;

    const AGG: AggregationId = AggregationId(1);

    fn unit(id: u64, cost: i64) -> (DispatchUnitSpec, UnitState) {
        let spec = DispatchUnitSpec {
            resource_id: ResourceId(id),
            share_pct: Decimal::ONE_HUNDRED,
            min_power_kw: Decimal::ZERO,
            max_power_kw: Decimal::from(1_000),
            ramp_kw_per_s: Decimal::from(100),
            marginal_cost_cny_per_mwh: Decimal::from(cost),
            energy_capacity_kwh: None,
            soc_min_pct: None,
            soc_max_pct: None,
            round_trip_efficiency: None,
        };
        (spec, UnitState::OFFLINE)
    }

    struct Rig {
        logic: DispatchLogic,
        clock: ManualClock,
        setpoints: mpsc::Receiver<Setpoint>,
        interval: DeliveryInterval,
    }

    fn rig(method: DispatchMethod, journal: DispatchJournal, costs: &[i64]) -> Rig {
        let start = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let units = costs
            .iter()
            .enumerate()
            .map(|(i, c)| unit(i as u64 + 1, *c))
            .collect();
        let fleet = DispatchFleet::new(AGG, units).unwrap();
        let (tx, rx) = mpsc::channel(64);
        let w = DispatchWiring {
            aggregation_id: AGG,
            name: "agg".into(),
            clock: Arc::new(clock.clone()),
            metrics: Metrics::new(),
            method,
            tracker: TrackerConfig {
                band: DeviationBand {
                    band_kw: Decimal::TEN,
                    band_pct: Decimal::from(5),
                },
                consecutive_samples: 3,
            },
            setpoints: tx,
            journal,
            settlement: None,
            deviation: None,
            headroom_markets: BTreeSet::new(),
            behaviours: (1..=costs.len() as u64)
                .map(|i| (ResourceId(i), Behaviour::Profile))
                .collect(),
            book: SharedBook::default(),
        };
        Rig {
            logic: DispatchLogic::new(fleet, w).unwrap(),
            clock,
            setpoints: rx,
            interval: DeliveryInterval::containing(start + chrono::Duration::minutes(15)),
        }
    }

    impl Rig {
        fn telemetry(&mut self, powers_kw: &[i64]) {
            self.clock.advance(chrono::Duration::seconds(1));
            let at = self.clock.now();
            let samples = powers_kw
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let t = Telemetry {
                        power_kw: Decimal::from(*p),
                        soc_pct: None,
                        available: true,
                        at,
                    };
                    (ResourceId(i as u64 + 1), t)
                })
                .collect();
            let batch = TelemetryBatch {
                samples,
                produced_ns: 0,
            };
            Handles::<TelemetryBatch>::handle(&mut self.logic, batch).unwrap();
        }

        fn award(&mut self, sold_mw: Decimal) {
            let mut position = Position::default();
            position.apply_fill(vpp_engine::order::Side::Sell, sold_mw, Decimal::from(400));
            let key = PositionKey {
                aggregation_id: AGG,
                market_id: MarketId(1),
                interval: self.interval,
            };
            Handles::<ToDispatch>::handle(&mut self.logic, ToDispatch::Position { key, position })
                .unwrap();
            Handles::<ToDispatch>::handle(
                &mut self.logic,
                ToDispatch::IntervalStart(self.interval),
            )
            .unwrap();
        }

        fn drain(&mut self) -> BTreeMap<u64, Decimal> {
            let mut out = BTreeMap::new();
            while let Ok(sp) = self.setpoints.try_recv() {
                assert_eq!(sp.interval, Some(self.interval));
                if !sp.released {
                    out.insert(sp.resource_id.0, sp.setpoint_kw);
                }
            }
            out
        }
    }

    fn kw(x: i64) -> Decimal {
        Decimal::from(x)
    }

    #[test]
    fn the_configured_method_shares_the_award() {
        // Same fleet and award; merit order fills the cheapest unit, pro rata splits evenly.
        let mut merit = rig(
            DispatchMethod::MeritOrder,
            DispatchJournal::disabled(),
            &[90, 10],
        );
        merit.telemetry(&[100, 100]);
        merit.award(Decimal::new(2, 1));
        assert_eq!(merit.drain(), BTreeMap::from([(2, kw(300))]));

        let mut pro_rata = rig(
            DispatchMethod::ProRata,
            DispatchJournal::disabled(),
            &[90, 10],
        );
        pro_rata.telemetry(&[100, 100]);
        pro_rata.award(Decimal::new(2, 1));
        assert_eq!(
            pro_rata.drain(),
            BTreeMap::from([(1, kw(200)), (2, kw(200))])
        );
    }

    #[tokio::test]
    async fn an_under_delivering_resource_is_corrected_journaled_and_the_deviation_returns_under_the_band(
    ) {
        let store = Store::open("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let metrics = Metrics::new();
        let (journal, writer) = DispatchJournal::spawn(store.clone(), 64, &metrics);
        let mut r = rig(DispatchMethod::ProRata, journal, &[0, 0, 0]);
        r.telemetry(&[100, 100, 100]);
        // 0.3 MW up over three units with equal headroom: +100 kW each.
        r.award(Decimal::new(3, 1));
        let award = r.drain();
        assert_eq!(
            award,
            BTreeMap::from([(1, kw(200)), (2, kw(200)), (3, kw(200))])
        );

        // Resource 1 stays at 100 kW; the others follow. Two samples: not yet corrected.
        r.telemetry(&[100, 200, 200]);
        r.telemetry(&[100, 200, 200]);
        assert!(r.drain().is_empty(), "no correction before 3 samples");
        assert_eq!(r.logic.total_deviation_kw(), kw(-100));
        // Third consecutive sample outside the band: its 100 kW shortfall moves to 2 and 3;
        // resource 1 is acknowledged at its baseline, i.e. released (it runs on its own).
        r.telemetry(&[100, 200, 200]);
        let correction = r.drain();
        assert_eq!(correction, BTreeMap::from([(2, kw(250)), (3, kw(250))]));
        // Σ setpoints − Σ baselines (2 × 100 kW) is still the 300 kW award.
        let above_baselines: Decimal = correction.values().sum::<Decimal>() - kw(200);
        assert_eq!(
            above_baselines,
            kw(300),
            "the aggregation still delivers the award"
        );

        // The others follow their new setpoints: the deviation is back under the band.
        r.telemetry(&[100, 250, 250]);
        let band = kw(10);
        assert!(
            r.logic.total_deviation_kw().abs() <= band,
            "deviation {} kW",
            r.logic.total_deviation_kw()
        );
        assert!(r.drain().is_empty(), "no further correction");

        // Journal: three award instructions, then the correction's, with their cause.
        drop(r);
        assert!(writer.close(std::time::Duration::from_secs(10)).await);
        let rows = store
            .list_dispatch_instructions(None, 0, 100)
            .await
            .unwrap();
        let reasons: Vec<(&str, u64, Decimal)> = rows
            .iter()
            .map(|d| (d.reason.as_str(), d.resource_id.0, d.setpoint_kw))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("award", 1, kw(200)),
                ("award", 2, kw(200)),
                ("award", 3, kw(200)),
                ("correction", 1, kw(100)),
                ("correction", 2, kw(250)),
                ("correction", 3, kw(250)),
            ]
        );
        let cause = &rows[3].detail;
        assert_eq!(cause["kind"], "correction");
        assert_eq!(cause["deviating_resources"], 1);
        assert_eq!(
            metrics
                .snapshot()
                .counter(JOURNAL_TOTAL, &[("result", "written")]),
            Some(6)
        );
    }

    struct Capture(Arc<Mutex<Vec<IntervalDelivery>>>);

    impl actix::Actor for Capture {
        type Context = actix::Context<Self>;
    }

    impl actix::Handler<ToSettlement> for Capture {
        type Result = Result<(), crate::mailbox::Refused>;
        fn handle(&mut self, msg: ToSettlement, _: &mut actix::Context<Self>) -> Self::Result {
            if let ToSettlement::Delivered(d) = msg {
                self.0.lock().unwrap().push(d);
            }
            Ok(())
        }
    }

    #[actix::test]
    async fn the_ended_interval_goes_to_settlement_with_its_metered_delivery() {
        use actix::Actor;
        let got = Arc::new(Mutex::new(Vec::new()));
        let addr = Capture(Arc::clone(&got)).start();
        let metrics = Metrics::new();
        let sender = BoundedSender::new(
            addr.recipient(),
            crate::mailbox::ActorName::new("settlement/agg"),
            16,
            &metrics,
        );
        let mut r = rig(
            DispatchMethod::ProRata,
            DispatchJournal::disabled(),
            &[0, 0, 0],
        );
        r.logic.w.settlement = Some(sender);
        r.telemetry(&[100, 100, 100]);
        r.award(Decimal::new(3, 1));
        for _ in 0..3 {
            r.telemetry(&[100, 200, 200]);
        }
        for _ in 0..2 {
            r.telemetry(&[100, 250, 250]);
        }
        let next = r.interval.next();
        Handles::<ToDispatch>::handle(&mut r.logic, ToDispatch::IntervalStart(next)).unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.lock().unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing reached settlement"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let d = got.lock().unwrap()[0].clone();
        assert_eq!(d.interval, r.interval);
        assert_eq!(d.positions.len(), 1);
        assert_eq!(d.positions[0].1.net_sold_mw(), Decimal::new(3, 1));
        // Resource 1 was corrected to its baseline (delta 0) and delivered nothing; 2 and 3
        // ended scheduled +150 kW and delivered (100 + 100 + 100 + 150 + 150) / 5 = 120 kW.
        let mw = |x: i64| Decimal::new(x, 2);
        let resources: Vec<(u64, Decimal, Decimal)> = d
            .resources
            .iter()
            .map(|r| (r.resource_id.0, r.scheduled_mw, r.delivered_mw))
            .collect();
        assert_eq!(
            resources,
            vec![
                (1, Decimal::ZERO, Decimal::ZERO),
                (2, mw(15), mw(12)),
                (3, mw(15), mw(12)),
            ]
        );
        assert_eq!(d.delivered_mw, mw(24));
    }

    /// Observed: `battery-north` went −2 → 212 → 461 → 713 → 1000 kW under repeated 0.5 MW
    /// sales (each interval's baseline was the previous setpoint); and it kept its setpoint
    /// when no instruction came. Now each interval's setpoint is the schedule itself.
    #[test]
    fn repeated_sales_do_not_stack_and_an_unsold_interval_releases_the_battery() {
        let mut r = rig(DispatchMethod::ProRata, DispatchJournal::disabled(), &[0]);
        r.logic.w.behaviours = BTreeMap::from([(ResourceId(1), Behaviour::Idle)]);
        r.logic.natural = NaturalBaseline::new([(ResourceId(1), Behaviour::Idle)]);
        r.telemetry(&[-2]);
        let mut seen = Vec::new();
        for _ in 0..4 {
            r.award(Decimal::new(25, 2));
            seen.push(r.drain().get(&1).copied());
            // The battery follows its setpoint for the whole interval.
            let sp = seen.last().copied().flatten().unwrap_or_default();
            r.telemetry(&[i64::try_from(sp.trunc().mantissa()).unwrap_or(0)]);
            r.interval = r.interval.next();
        }
        assert_eq!(seen, vec![Some(kw(250)); 4], "0.25 MW sold each interval");
        // Nothing sold: the battery is released (rests), not left at 250 kW.
        Handles::<ToDispatch>::handle(&mut r.logic, ToDispatch::IntervalStart(r.interval)).unwrap();
        let sp = r.setpoints.try_recv().unwrap();
        assert!(sp.released, "{sp:?}");
        assert_eq!(sp.setpoint_kw, kw(0));
    }

    #[test]
    fn a_full_journal_counts_the_overflow() {
        let (tx, _rx) = mpsc::channel(1);
        let metrics = Metrics::new();
        let journal = DispatchJournal {
            tx: Some(tx),
            queued: metrics.counter(JOURNAL_TOTAL, &[("result", "queued")]),
            overflow: metrics.counter(JOURNAL_TOTAL, &[("result", "overflow")]),
            log: Arc::default(),
        };
        let mut r = rig(DispatchMethod::ProRata, journal.clone(), &[0, 0, 0]);
        r.telemetry(&[100, 100, 100]);
        r.award(Decimal::new(3, 1));
        assert_eq!(
            r.drain().len(),
            3,
            "setpoints go out whatever the journal does"
        );
        assert_eq!(journal.overflow(), 2, "one queued, two counted as overflow");
    }
}
