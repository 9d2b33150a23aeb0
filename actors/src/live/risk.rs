//! The RiskMonitor actor: every new-order intent passes the pure [`RiskEngine`] pre-trade
//! checks before it reaches the OMS; cancels and replaces pass straight through (reducing risk
//! must never be blocked). Order events from the OMS keep the engine's state in step.
//!
//! Invariants:
//! - An approved intent the OMS mailbox refuses is un-reserved and goes back to its strategy
//!   as a rejection with the refusal's reason; a rejected intent goes back with the risk
//!   engine's stable reject code. Nothing is dropped silently.
//! - The engine lives behind a shared handle that is also the supervision snapshot: each
//!   engine call is all-or-nothing, so after a crash the rebuilt actor continues with the same
//!   reservations and positions instead of forgetting them.
//! - Check time is recorded in `risk_check{scope=pre_trade}`.
//! - Operator control ([`RiskControl`]) is request/response. Engaging a kill switch sends the
//!   OMS a scoped cancel (the ledger decides which orders are open) and the engine refuses new
//!   intents in scope until release. Every kill-switch action and limit change, refused ones
//!   included, is audited with who, what and the outcome.
//! - Every rejection and alert becomes a `risk_events` row through [`RiskJournal`]: a bounded
//!   channel and a batching writer task. The hot path only `try_send`s; a full or closed
//!   channel is counted in `vpp_risk_journal_overflow_total` and logged, never silent. Events
//!   are counted in `vpp_risk_events_total{kind,code}` (counters registered up front).

use super::messages::{Intent, RiskControl, RiskReply, ToOms, ToRisk, ToStrategy};
use super::StrategyRoutes;
use crate::mailbox::BoundedSender;
use crate::metrics::{Counter, LatencyRecorder, Metrics, Stage};
use crate::supervisor::{Handles, LogicFault, SupervisedLogic};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::mpsc;
use vpp_engine::clock::Clock;
use vpp_engine::ids::{AggregationId, StrategyId};
use vpp_engine::strategy::{OrderIntent, RiskRejection};
use vpp_engine::Timestamp;
use vpp_persistence::{AuditEntry, Store};
use vpp_risk::event::RiskEventKind;
use vpp_risk::{
    AlertCode, Capacity, KillScope, LimitScope, RejectCode, RiskEngine, RiskError, RiskEvent,
    RiskLimits, Scope,
};

/// Metric names of the risk monitor.
pub mod names {
    /// Risk events by `kind` (rejected, alert) and `code` (the stable reject or alert code).
    pub const RISK_EVENTS_TOTAL: &str = "vpp_risk_events_total";
    /// Records the risk journal channel could not take (label `reason`: full, closed).
    pub const RISK_JOURNAL_OVERFLOW_TOTAL: &str = "vpp_risk_journal_overflow_total";
    /// Records the writer task failed to store (label `table`).
    pub const RISK_JOURNAL_FAILED_TOTAL: &str = "vpp_risk_journal_failed_total";
}

/// One record for the store: a risk event or an audit entry.
#[derive(Debug, Clone)]
pub enum RiskRecord {
    Event(vpp_persistence::RiskEvent),
    Audit(AuditEntry),
}

/// Most records one writer round stores before it looks at the channel again.
pub const RISK_JOURNAL_BATCH: usize = 256;

/// The producer side of the risk journal: a bounded channel to a batching writer task.
#[derive(Clone)]
pub struct RiskJournal {
    tx: mpsc::Sender<RiskRecord>,
    full: Counter,
    closed: Counter,
}

impl RiskJournal {
    /// A journal and the receiving end (tests read it; the daemon hands it to [`Self::spawn`]).
    pub fn channel(capacity: usize, metrics: &Metrics) -> (Self, mpsc::Receiver<RiskRecord>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let full = metrics.counter(names::RISK_JOURNAL_OVERFLOW_TOTAL, &[("reason", "full")]);
        let closed = metrics.counter(names::RISK_JOURNAL_OVERFLOW_TOTAL, &[("reason", "closed")]);
        (Self { tx, full, closed }, rx)
    }

    /// A journal whose writer task stores records in `store` in batches. Must be called
    /// inside a tokio runtime; the task ends when every sender is dropped.
    pub fn spawn(
        store: Store,
        capacity: usize,
        metrics: &Metrics,
    ) -> (Self, super::writer::WriterTask) {
        let (journal, rx) = Self::channel(capacity, metrics);
        let metrics = metrics.clone();
        let task =
            super::writer::WriterTask::spawn(move |close| write_records(store, rx, metrics, close));
        (journal, task)
    }

    /// Queues a record without waiting. A refusal is counted and logged, never silent.
    pub fn submit(&self, record: RiskRecord) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(r)) => {
                self.full.inc();
                tracing::warn!(record = ?r, "risk journal full; record not stored");
            }
            Err(mpsc::error::TrySendError::Closed(r)) => {
                self.closed.inc();
                tracing::warn!(record = ?r, "risk journal closed; record not stored");
            }
        }
    }
}

/// The writer task: takes what is queued (up to [`RISK_JOURNAL_BATCH`]) and stores it, so a
/// burst costs one wake-up, not one per record. A store error is counted and logged; the
/// writer keeps going.
async fn write_records(
    store: Store,
    mut rx: mpsc::Receiver<RiskRecord>,
    metrics: Metrics,
    mut close: super::writer::CloseSignal,
) {
    let failed_events = metrics.counter(
        names::RISK_JOURNAL_FAILED_TOTAL,
        &[("table", "risk_events")],
    );
    let failed_audit = metrics.counter(names::RISK_JOURNAL_FAILED_TOTAL, &[("table", "audit_log")]);
    let mut batch = Vec::with_capacity(RISK_JOURNAL_BATCH);
    while close
        .recv_many(&mut rx, &mut batch, RISK_JOURNAL_BATCH)
        .await
        > 0
    {
        for record in batch.drain(..) {
            let (result, failed) = match &record {
                RiskRecord::Event(e) => (store.insert_risk_event(e).await, &failed_events),
                RiskRecord::Audit(a) => (store.insert_audit(a).await, &failed_audit),
            };
            if let Err(e) = result {
                failed.inc();
                tracing::error!(error = %e, record = ?record, "risk journal write failed");
            }
        }
    }
}

/// The store's row for a risk event. `strategy`/`aggregation` name the intent's owners when
/// the event's own scope is narrower or wider (a market, a venue).
pub fn event_row(
    event: &RiskEvent,
    strategy: Option<StrategyId>,
    aggregation: Option<AggregationId>,
) -> vpp_persistence::RiskEvent {
    let (strategy_id, aggregation_id) = match event.scope {
        Scope::Strategy(id) => (Some(id), aggregation),
        Scope::Aggregation(id) => (strategy, Some(id)),
        _ => (strategy, aggregation),
    };
    let severity = match event.kind {
        RiskEventKind::Alert(AlertCode::DeviationCritical | AlertCode::KillSwitchEngaged) => {
            "critical"
        }
        RiskEventKind::Alert(AlertCode::KillSwitchReleased | AlertCode::LimitsChanged) => "info",
        RiskEventKind::Alert(AlertCode::DeviationWarning) | RiskEventKind::Rejected(_) => "warning",
    };
    vpp_persistence::RiskEvent {
        id: 0,
        at: event.at,
        severity: severity.to_owned(),
        rule: event.kind.code_str().to_owned(),
        strategy_id,
        aggregation_id,
        client_order_id: event.client_order_id.clone(),
        message: event.message.clone(),
        detail: serde_json::json!({ "kind": event.kind, "scope": event.scope }),
    }
}

/// Feeds the deviation monitor from an aggregation's Dispatch actor: each ended interval's
/// awarded (net sold), dispatched (scheduled) and metered energy becomes a
/// [`vpp_risk::DeliverySample`] in a `ToRisk::Delivery`. The risk sender is a slot because
/// dispatch starts before risk.
#[derive(Clone)]
pub struct DeviationFeed {
    pub risk: Arc<std::sync::OnceLock<BoundedSender<ToRisk>>>,
    /// The strategy a critical breach is charged to (its kill switch, by policy): the
    /// aggregation's only strategy; `None` (several or none) charges the aggregation.
    pub strategy: Option<StrategyId>,
}

impl DeviationFeed {
    pub fn send(&self, d: &super::settlement::IntervalDelivery) {
        let kwh = vpp_risk::storage::KWH_PER_MW_INTERVAL;
        // The energy award (regulation and reserve hold headroom: not graded as delivery).
        let awarded_mw = d.award_mw;
        let dispatched_mw: rust_decimal::Decimal = d.resources.iter().map(|r| r.scheduled_mw).sum();
        let sample = vpp_risk::DeliverySample {
            aggregation_id: d.aggregation_id,
            interval: d.interval,
            awarded_kwh: awarded_mw * kwh,
            dispatched_kwh: dispatched_mw * kwh,
            metered_kwh: d.delivered_mw * kwh,
            strategy_id: self.strategy,
        };
        let Some(risk) = self.risk.get() else {
            tracing::warn!(aggregation = %d.aggregation_id, "risk not wired yet; delivery not graded");
            return;
        };
        if let Err(e) = risk.try_send(ToRisk::Delivery(sample)) {
            tracing::warn!(aggregation = %d.aggregation_id, interval = %d.interval, error = %e,
                "deviation monitor missed a delivered interval");
        }
    }
}

/// `global`, `aggregation/3`, `strategy/7`: the audit target of a kill switch.
fn kill_target(scope: KillScope) -> String {
    match scope {
        KillScope::Global => "global".to_owned(),
        KillScope::Aggregation(id) => format!("aggregation/{id}"),
        KillScope::Strategy(id) => format!("strategy/{id}"),
    }
}

fn limit_target(scope: LimitScope) -> String {
    match scope {
        LimitScope::AggregationDefaults => "aggregation_defaults".to_owned(),
        LimitScope::StrategyDefaults => "strategy_defaults".to_owned(),
        LimitScope::Aggregation(id) => format!("aggregation/{id}"),
        LimitScope::Strategy(id) => format!("strategy/{id}"),
    }
}

fn outcome_text<T>(r: &Result<T, RiskError>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("failed: {e}"),
    }
}

/// Per-code event counters, registered once so counting on the reject path is an index.
struct EventCounters {
    rejected: Vec<Counter>,
    alerts: Vec<Counter>,
}

impl EventCounters {
    fn new(metrics: &Metrics) -> Self {
        let rejected = RejectCode::ALL
            .iter()
            .map(|c| {
                metrics.counter(
                    names::RISK_EVENTS_TOTAL,
                    &[("kind", "rejected"), ("code", c.as_str())],
                )
            })
            .collect();
        let alerts = AlertCode::ALL
            .iter()
            .map(|c| {
                metrics.counter(
                    names::RISK_EVENTS_TOTAL,
                    &[("kind", "alert"), ("code", c.as_str())],
                )
            })
            .collect();
        Self { rejected, alerts }
    }

    fn count(&self, kind: RiskEventKind) {
        let counter = match kind {
            RiskEventKind::Rejected(c) => self.rejected.get(c as usize),
            RiskEventKind::Alert(c) => self.alerts.get(c as usize),
        };
        if let Some(c) = counter {
            c.inc();
        }
    }
}

pub type SharedRisk = Arc<Mutex<RiskEngine>>;

#[derive(Clone)]
pub struct RiskWiring {
    pub engine: SharedRisk,
    pub clock: Arc<dyn Clock>,
    pub oms: BoundedSender<ToOms>,
    pub strategies: StrategyRoutes,
    pub metrics: Metrics,
    /// Risk events and audit entries to the store (`None`: logged and counted only).
    pub journal: Option<RiskJournal>,
}

pub struct RiskLogic {
    w: RiskWiring,
    check: LatencyRecorder,
    events: EventCounters,
}

impl RiskLogic {
    pub fn new(w: RiskWiring) -> Self {
        let check = w.metrics.latency(Stage::RiskCheck, "pre_trade");
        let events = EventCounters::new(&w.metrics);
        Self { w, check, events }
    }

    fn engine(&self) -> MutexGuard<'_, RiskEngine> {
        self.w.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts an event by code and journals it.
    fn record_event(
        &self,
        event: &RiskEvent,
        strategy: Option<StrategyId>,
        aggregation: Option<AggregationId>,
    ) {
        self.events.count(event.kind);
        if let Some(j) = &self.w.journal {
            j.submit(RiskRecord::Event(event_row(event, strategy, aggregation)));
        }
    }

    fn audit(
        &self,
        who: &str,
        action: &str,
        target: String,
        outcome: String,
        detail: serde_json::Value,
        at: Timestamp,
    ) {
        tracing::info!(who, action, %target, %outcome, "risk control");
        if let Some(j) = &self.w.journal {
            j.submit(RiskRecord::Audit(AuditEntry {
                id: 0,
                at,
                actor: who.to_owned(),
                action: action.to_owned(),
                target,
                outcome,
                detail,
            }));
        }
    }

    /// Asks the OMS to cancel the open orders in `scope`; the refusal reason if it could not.
    fn cancel_scope(&self, scope: KillScope, reason: String) -> Option<String> {
        match self.w.oms.try_send(ToOms::CancelScope { scope, reason }) {
            Ok(()) => None,
            Err(rejected) => {
                let (_, refused) = rejected.into_parts();
                tracing::error!(?scope, reason = %refused, "kill switch cancel could not reach the OMS");
                Some(refused.to_string())
            }
        }
    }

    fn engage(&self, scope: KillScope, who: &str, why: &str) -> Result<RiskReply, RiskError> {
        let now = self.w.clock.now();
        let result = self.engine().engage_kill_switch(scope, who, why, now);
        let mut detail = serde_json::json!({ "scope": scope, "why": why });
        let mut outcome = outcome_text(&result);
        let reply = result.map(|k| {
            self.record_event(&k.event, None, None);
            let refused = self.cancel_scope(scope, format!("kill switch engaged by {who}: {why}"));
            detail["newly_engaged"] = k.newly_engaged.into();
            detail["open_orders"] = k.cancel.len().into();
            if let Some(r) = &refused {
                outcome = format!("ok; cancel not delivered to the OMS: {r}");
            }
            tracing::warn!(
                ?scope,
                who,
                why,
                open_orders = k.cancel.len(),
                "kill switch engaged"
            );
            RiskReply::KillSwitchEngaged {
                scope,
                newly_engaged: k.newly_engaged,
                cancel_requested: k.cancel.len(),
                oms_refused: refused,
            }
        });
        self.audit(
            who,
            "kill_switch.engage",
            kill_target(scope),
            outcome,
            detail,
            now,
        );
        reply
    }

    fn release(&self, scope: KillScope, who: &str) -> Result<RiskReply, RiskError> {
        let now = self.w.clock.now();
        let result = self.engine().release_kill_switch(scope, who, now);
        let outcome = outcome_text(&result);
        let reply = result.map(|event| {
            self.record_event(&event, None, None);
            tracing::warn!(?scope, who, "kill switch released");
            RiskReply::KillSwitchReleased { scope }
        });
        let detail = serde_json::json!({ "scope": scope });
        self.audit(
            who,
            "kill_switch.release",
            kill_target(scope),
            outcome,
            detail,
            now,
        );
        reply
    }

    fn set_limits(
        &self,
        scope: LimitScope,
        limits: RiskLimits,
        who: &str,
    ) -> Result<RiskReply, RiskError> {
        let now = self.w.clock.now();
        let result = self.engine().update_limits(scope, limits.clone(), who, now);
        let outcome = outcome_text(&result);
        let detail = match &result {
            Ok(change) => serde_json::json!({ "old": change.old, "new": change.new }),
            Err(_) => serde_json::json!({ "requested": limits }),
        };
        if let Ok(change) = &result {
            let event = RiskEvent::alert(
                AlertCode::LimitsChanged,
                match scope {
                    LimitScope::Aggregation(id) => Scope::Aggregation(id),
                    LimitScope::Strategy(id) => Scope::Strategy(id),
                    LimitScope::AggregationDefaults | LimitScope::StrategyDefaults => Scope::Global,
                },
                format!("{} changed by {who}", limit_target(change.scope)),
                now,
            );
            self.record_event(&event, None, None);
        }
        self.audit(
            who,
            "risk_limits.update",
            limit_target(scope),
            outcome,
            detail,
            now,
        );
        result.map(|c| RiskReply::LimitsChanged(Box::new(c)))
    }

    fn control(&self, cmd: RiskControl) -> Result<RiskReply, RiskError> {
        match cmd {
            RiskControl::EngageKillSwitch { scope, who, why } => self.engage(scope, &who, &why),
            RiskControl::ReleaseKillSwitch { scope, who } => self.release(scope, &who),
            RiskControl::KillSwitches => {
                let engine = self.engine();
                let k = engine.kill_switches();
                let mut engaged: Vec<_> = k.engaged().map(|(s, e)| (s, e.clone())).collect();
                engaged.sort_by_key(|(s, _)| kill_target(*s));
                Ok(RiskReply::KillSwitches {
                    engaged,
                    history: k.history().cloned().collect(),
                })
            }
            RiskControl::ExposureAggregation(id) => {
                let now = self.w.clock.now();
                Ok(RiskReply::Exposure(Box::new(
                    self.engine().exposure_aggregation(id, now),
                )))
            }
            RiskControl::ExposureStrategy(id) => {
                let now = self.w.clock.now();
                Ok(RiskReply::Exposure(Box::new(
                    self.engine().exposure_strategy(id, now),
                )))
            }
            RiskControl::GetLimits(scope) => Ok(RiskReply::Limits {
                scope,
                limits: self.engine().limits(scope).clone(),
            }),
            RiskControl::SetLimits { scope, limits, who } => self.set_limits(scope, limits, &who),
        }
    }

    fn on_delivery(&self, sample: &vpp_risk::DeliverySample) {
        let now = self.w.clock.now();
        let outcome = self.engine().record_delivery(sample, now);
        if let Some(alert) = &outcome.alert {
            tracing::warn!(aggregation = %sample.aggregation_id, message = %alert.message, code = alert.kind.code_str(), "deviation alert");
            self.record_event(alert, sample.strategy_id, Some(sample.aggregation_id));
        }
        if let Some(kill) = outcome.kill {
            let scope = sample.strategy_id.map_or(
                KillScope::Aggregation(sample.aggregation_id),
                KillScope::Strategy,
            );
            self.record_event(&kill.event, sample.strategy_id, Some(sample.aggregation_id));
            let why = outcome
                .alert
                .as_ref()
                .map_or("critical deviation", |a| a.message.as_str());
            let refused = self.cancel_scope(
                scope,
                format!("kill switch engaged by the deviation monitor: {why}"),
            );
            let detail = serde_json::json!({ "scope": scope, "why": why, "policy": "critical_engages_kill_switch", "open_orders": kill.cancel.len() });
            let outcome = refused.map_or_else(
                || "ok".to_owned(),
                |r| format!("ok; cancel not delivered to the OMS: {r}"),
            );
            self.audit(
                "deviation-monitor",
                "kill_switch.engage",
                kill_target(scope),
                outcome,
                detail,
                now,
            );
        }
    }

    fn reject(&self, reject: RiskRejection, strategy: Option<vpp_engine::ids::StrategyId>) {
        let Some(id) = strategy else {
            tracing::warn!(code = %reject.code, message = %reject.message, "intent without strategy rejected");
            return;
        };
        let routes = self
            .w
            .strategies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match routes.get(&id) {
            Some(tx) => {
                if let Err(e) = tx.try_send(ToStrategy::Rejected(reject)) {
                    tracing::warn!(strategy = %id, error = %e, "rejection could not reach its strategy");
                }
            }
            None => tracing::warn!(strategy = %id, "rejection for an unknown strategy"),
        }
    }

    fn on_intent(&mut self, intent: Intent) {
        let OrderIntent::New(request) = &intent.intent else {
            self.forward_to_oms(intent);
            return;
        };
        let now = self.w.clock.now();
        let start = self.w.clock.monotonic_ns();
        let verdict = self.engine().evaluate(request, now);
        self.check
            .record_between(start, self.w.clock.monotonic_ns());
        match verdict {
            Ok(()) => self.forward_to_oms(intent),
            Err(event) => {
                self.record_event(&event, request.strategy_id, Some(request.aggregation_id));
                tracing::debug!(client_order_id = %request.client_order_id, code = event.kind.code_str(),
                    message = %event.message, "intent rejected by risk");
                let reject = RiskRejection {
                    client_order_id: request.client_order_id.clone(),
                    code: event.kind.code_str().to_owned(),
                    message: event.message.clone(),
                };
                self.reject(reject, request.strategy_id);
            }
        }
    }

    fn forward_to_oms(&mut self, intent: Intent) {
        let Err(rejected) = self.w.oms.try_send(ToOms::Approved(intent)) else {
            return;
        };
        let (msg, reason) = rejected.into_parts();
        let ToOms::Approved(Intent {
            intent: OrderIntent::New(request),
            ..
        }) = msg
        else {
            tracing::error!(reason = %reason, "cancel/replace refused by the OMS mailbox");
            return;
        };
        self.w
            .engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release_reservation(&request.client_order_id);
        let reject = RiskRejection {
            client_order_id: request.client_order_id.clone(),
            code: reason.reason().to_owned(),
            message: reason.to_string(),
        };
        self.reject(reject, request.strategy_id);
    }
}

impl SupervisedLogic for RiskLogic {
    type Snapshot = SharedRisk;
    fn snapshot(&self) -> SharedRisk {
        Arc::clone(&self.w.engine)
    }
}

impl Handles<ToRisk> for RiskLogic {
    type Reply = ();
    fn handle(&mut self, msg: ToRisk) -> Result<(), LogicFault> {
        match msg {
            ToRisk::Intent(i) => self.on_intent(i),
            ToRisk::Order { event, outcome } => self
                .w
                .engine
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .apply_order_event(&event, &outcome),
            ToRisk::Capacity {
                aggregation_id,
                up_flex_mw,
                down_flex_mw,
            } => {
                let cap = Capacity {
                    up_flex_mw,
                    down_flex_mw,
                };
                let mut engine = self.w.engine.lock().unwrap_or_else(PoisonError::into_inner);
                if let Err(e) = engine.update_capacity(aggregation_id, cap) {
                    tracing::warn!(error = %e, "capacity update refused by risk");
                }
            }
            ToRisk::Reference {
                market,
                interval,
                price_cny_per_mwh,
            } => {
                let mut engine = self.w.engine.lock().unwrap_or_else(PoisonError::into_inner);
                // A full reference table only loosens the collar; counted in risk's own logs.
                let _ = engine.set_reference_price(market, interval, price_cny_per_mwh);
            }
            ToRisk::KillAll { reason } => {
                // The daemon's shutdown path cancels through the OMS itself (CancelAll or
                // keep-orders); here only new intents are stopped, and the act is audited.
                let now = self.w.clock.now();
                let result =
                    self.engine()
                        .engage_kill_switch(KillScope::Global, "daemon", &reason, now);
                match &result {
                    Ok(k) => {
                        self.record_event(&k.event, None, None);
                        tracing::warn!(%reason, "global kill switch engaged");
                    }
                    Err(e) => tracing::error!(error = %e, "kill switch not engaged"),
                }
                let detail = serde_json::json!({ "scope": KillScope::Global, "why": reason });
                self.audit(
                    "daemon",
                    "kill_switch.engage",
                    "global".to_owned(),
                    outcome_text(&result),
                    detail,
                    now,
                );
            }
            ToRisk::Delivery(sample) => self.on_delivery(&sample),
            ToRisk::Tick(now) => self
                .w
                .engine
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .on_tick(now),
        }
        Ok(())
    }
}

impl Handles<RiskControl> for RiskLogic {
    type Reply = Result<RiskReply, RiskError>;
    fn handle(&mut self, msg: RiskControl) -> Result<Self::Reply, LogicFault> {
        Ok(self.control(msg))
    }
}
