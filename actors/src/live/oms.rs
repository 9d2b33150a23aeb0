//! The Execution (OMS) actor: the one place orders change. Approved intents become `Created`
//! events, venue reports become `Report` events; each is applied to the [`OrderLedger`], fed to
//! the journal (bounded channel, group commit in the persistence crate's writer task) and fanned
//! out: risk (state), the owning strategy (its report and the order's new status), dispatch
//! (positions after a fill).
//!
//! Invariants:
//! - An order is journaled (submitted, its sequence assigned) before it is handed to the
//!   connector, and the connector slot is reserved before it is journaled: a full connector or
//!   a full journal refuses the intent back to the strategy with a reason, and nothing is sent.
//! - While the journal is unhealthy (writer failing or stopped, or lagging beyond its bound)
//!   every new order is refused with [`JOURNAL_UNAVAILABLE`] before anything changed: nothing
//!   trades that the journal cannot record.
//! - The hot path never awaits the database: `try_submit` only enqueues. If the daemon dies
//!   between sending and the journal commit, start-up reconciliation adopts the order from the
//!   venue (`Recovered`), so nothing acknowledged is lost.
//! - The ledger lives behind a shared handle that is also the supervision snapshot. Every
//!   `OrderLedger::apply` is all-or-nothing, so the ledger is always exactly the journal's
//!   fold and a rebuilt OMS continues from it.

use super::messages::{ConnectorCmd, Intent, ToDispatch, ToOms, ToRisk, ToStrategy};
use super::StrategyRoutes;
use crate::mailbox::BoundedSender;
use crate::metrics::{Counter, Metrics};
use crate::supervisor::{Handles, LogicFault, SupervisedLogic};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use tokio::sync::mpsc;
use vpp_engine::clock::Clock;
use vpp_engine::ids::{ClientOrderId, StrategyId};
use vpp_engine::ledger::{OrderEvent, OrderEventKind, OrderLedger, Outcome};
use vpp_engine::order::{ExecReport, OrderRequest};
use vpp_engine::strategy::{OrderIntent, RiskRejection};
use vpp_market_adapters::client::OrderEnd;
use vpp_persistence::JournalWriter;

pub type SharedLedger = Arc<Mutex<OrderLedger>>;

/// Counter names of the OMS.
pub mod names {
    pub const FILLS_TOTAL: &str = "vpp_fills_total";
    pub const EXEC_REPORTS_TOTAL: &str = "vpp_exec_reports_total";
    pub const JOURNAL_REFUSED_TOTAL: &str = "vpp_journal_refused_total";
    /// Orders ended `lost` (the venue does not know them after a reset).
    pub const ORDERS_LOST_TOTAL: &str = "vpp_orders_lost_total";
    /// Orders ended `cancelled_unsent` (queued in the daemon and never sent).
    pub const ORDERS_UNSENT_TOTAL: &str = "vpp_orders_unsent_total";
}

#[derive(Clone)]
pub struct OmsWiring {
    pub ledger: SharedLedger,
    pub journal: JournalWriter,
    pub connector: mpsc::Sender<ConnectorCmd>,
    /// Set once risk has started (risk and the OMS address each other).
    pub risk: Arc<OnceLock<BoundedSender<ToRisk>>>,
    pub strategies: StrategyRoutes,
    pub dispatch: Vec<BoundedSender<ToDispatch>>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
}

/// The reject code of an order refused because the journal cannot record it.
pub const JOURNAL_UNAVAILABLE: &str = "journal_unavailable";

/// Most cancels waiting for their order's acknowledgement.
pub const MAX_DEFERRED_CANCELS: usize = 10_000;

pub struct OmsLogic {
    w: OmsWiring,
    /// Cancels of orders the venue has not acknowledged yet: the order state machine only
    /// accepts `accepted` from `new`, so the cancel goes out once the ack arrived.
    deferred_cancels: std::collections::HashSet<ClientOrderId>,
    orders: Counter,
    fills: Counter,
    reports: Counter,
    rejects: Counter,
    journal_refused: Counter,
    lost: Counter,
    unsent: Counter,
}

impl OmsLogic {
    pub fn new(w: OmsWiring) -> Self {
        let m = &w.metrics;
        Self {
            deferred_cancels: std::collections::HashSet::new(),
            orders: m.counter(crate::metrics::names::ORDERS_TOTAL, &[]),
            fills: m.counter(names::FILLS_TOTAL, &[]),
            reports: m.counter(names::EXEC_REPORTS_TOTAL, &[]),
            rejects: m.counter(crate::metrics::names::REJECTS_TOTAL, &[("stage", "oms")]),
            journal_refused: m.counter(names::JOURNAL_REFUSED_TOTAL, &[]),
            lost: m.counter(names::ORDERS_LOST_TOTAL, &[]),
            unsent: m.counter(names::ORDERS_UNSENT_TOTAL, &[]),
            w,
        }
    }

    fn ledger(&self) -> MutexGuard<'_, OrderLedger> {
        self.w.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send_risk(&self, msg: ToRisk) {
        match self.w.risk.get() {
            Some(risk) => {
                if let Err(e) = risk.try_send(msg) {
                    tracing::warn!(error = %e, "risk missed an order event");
                }
            }
            None => tracing::warn!("risk not wired yet; order event not mirrored"),
        }
    }

    fn tell_strategy(&self, strategy: Option<StrategyId>, msg: ToStrategy) {
        let Some(id) = strategy else { return };
        let routes = self
            .w
            .strategies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = routes.get(&id) {
            if let Err(e) = tx.try_send(msg) {
                tracing::warn!(strategy = %id, error = %e, "OMS message could not reach its strategy");
            }
        }
    }

    fn refuse(&self, request: &OrderRequest, code: &str, message: String) {
        self.rejects.inc();
        let reject = RiskRejection {
            client_order_id: request.client_order_id.clone(),
            code: code.to_owned(),
            message,
        };
        self.tell_strategy(request.strategy_id, ToStrategy::Rejected(reject));
    }

    /// Journals then applies one event; `None` if it did not apply (logged).
    fn record(&self, event: OrderEvent) -> Option<(OrderEvent, Outcome)> {
        let outcome = match self.ledger().apply(&event) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, event = event.name(), "order event refused by the ledger");
                return None;
            }
        };
        // A stale report changed nothing: nothing to journal.
        outcome.to?;
        if let Err(e) = self.w.journal.try_submit(event.clone()) {
            self.journal_refused.inc();
            tracing::error!(error = %e, "journal refused an applied event; reconciliation at restart recovers it");
        }
        self.send_risk(ToRisk::Order {
            event: event.clone(),
            outcome: outcome.clone(),
        });
        Some((event, outcome))
    }

    fn new_order(&mut self, request: OrderRequest, t0_ns: u64) {
        if self.ledger().contains(&request.client_order_id) {
            let msg = format!("{} already exists", request.client_order_id);
            return self.refuse(&request, "duplicate_client_order_id", msg);
        }
        let journal = self.w.journal.health();
        if !journal.is_healthy() {
            self.journal_refused.inc();
            return self.refuse(&request, JOURNAL_UNAVAILABLE, journal.to_string());
        }
        let Ok(permit) = self.w.connector.try_reserve() else {
            let msg = "the market connector's queue is full; retry later".to_owned();
            return self.refuse(&request, "connector_full", msg);
        };
        let event = OrderEvent {
            client_order_id: request.client_order_id.clone(),
            at: self.w.clock.now(),
            kind: OrderEventKind::Created {
                request: request.clone(),
            },
        };
        if let Err(e) = self.ledger().apply(&event) {
            return self.refuse(&request, "invalid_order", e.to_string());
        }
        if let Err(e) = self.w.journal.try_submit(event.clone()) {
            // Not journaled, so not sent: the ledger ends it rejected locally.
            self.journal_refused.inc();
            tracing::error!(error = %e, "journal refused a created order; not sent");
            self.end_unsent(&request.client_order_id, "journal refused it");
            return self.refuse(&request, JOURNAL_UNAVAILABLE, e.to_string());
        }
        let outcome = Outcome {
            from: None,
            to: Some(vpp_engine::order::OrderStatus::New),
            fill: None,
        };
        self.send_risk(ToRisk::Order { event, outcome });
        self.orders.inc();
        permit.send(ConnectorCmd::New {
            request,
            t0_ns,
            oms_ns: self.w.clock.monotonic_ns(),
        });
    }

    /// Ends an order that was created in the ledger but never journaled nor sent.
    fn end_unsent(&self, id: &ClientOrderId, why: &str) {
        let mut ledger = self.ledger();
        let report = ExecReport {
            seq: ledger.last_report_seq().max(1),
            client_order_id: id.clone(),
            venue_order_id: None,
            kind: vpp_engine::order::ExecKind::Rejected {
                reason: format!("not sent: {why}"),
            },
            at: self.w.clock.now(),
        };
        let event = OrderEvent {
            client_order_id: id.clone(),
            at: report.at,
            kind: OrderEventKind::Report { report },
        };
        if let Err(e) = ledger.apply(&event) {
            tracing::error!(client_order_id = %id, error = %e, "cannot end an unsent order");
        }
    }

    fn cancel(&mut self, id: ClientOrderId, reason: &str) {
        use vpp_engine::order::OrderStatus;
        let status = self.ledger().order(&id).map(|o| o.status);
        let Some(status) = status else {
            tracing::debug!(client_order_id = %id, "cancel of an unknown order ignored");
            return;
        };
        if status.is_terminal() || status == OrderStatus::PendingCancel {
            // A race with the order's last report, or a repeated cancel: nothing to do.
            tracing::debug!(client_order_id = %id, %status, "cancel not needed");
            return;
        }
        if status == OrderStatus::New {
            if self.deferred_cancels.len() < MAX_DEFERRED_CANCELS {
                self.deferred_cancels.insert(id);
            } else {
                tracing::warn!(client_order_id = %id, "too many deferred cancels; cancel dropped");
            }
            return;
        }
        let event = OrderEvent {
            client_order_id: id.clone(),
            at: self.w.clock.now(),
            kind: OrderEventKind::CancelRequested {
                reason: reason.to_owned(),
            },
        };
        if self.record(event).is_none() {
            return;
        }
        if let Err(e) = self.w.connector.try_send(ConnectorCmd::Cancel(id.clone())) {
            tracing::error!(client_order_id = %id, error = %e, "cancel could not reach the connector");
        }
    }

    fn report(&mut self, report: ExecReport) {
        self.reports.inc();
        let event = OrderEvent {
            client_order_id: report.client_order_id.clone(),
            at: report.at,
            kind: OrderEventKind::Report {
                report: report.clone(),
            },
        };
        let Some((_, outcome)) = self.record(event) else {
            return;
        };
        let Some(status) = outcome.to else { return };
        let (strategy, position) = {
            let ledger = self.ledger();
            let strategy = ledger
                .order(&report.client_order_id)
                .and_then(|o| o.request.strategy_id);
            let position = outcome
                .fill
                .as_ref()
                .and_then(|f| ledger.position(&f.key).map(|p| (f.key, p.clone())));
            (strategy, position)
        };
        if let Some((key, position)) = position {
            self.fills.inc();
            for dispatch in &self.w.dispatch {
                let msg = ToDispatch::Position {
                    key,
                    position: position.clone(),
                };
                if let Err(e) = dispatch.try_send(msg) {
                    tracing::warn!(error = %e, "dispatch missed a position update");
                }
            }
        }
        let id = report.client_order_id.clone();
        self.tell_strategy(strategy, ToStrategy::Exec { report, status });
        if status != vpp_engine::order::OrderStatus::New && self.deferred_cancels.remove(&id) {
            if status.is_terminal() {
                return;
            }
            self.cancel(id, "deferred until acknowledged");
        }
    }

    /// The adapter refused the order: it never went out. It ends `Rejected` in the ledger and
    /// the journal (a local report), so it neither stays `New` for ever nor is resent by the
    /// reconciliation of the next start; its strategy hears the reason.
    fn send_failed(&mut self, id: ClientOrderId, reason: String) {
        tracing::error!(client_order_id = %id, %reason, "order could not be handed to the venue adapter");
        let (request, seq) = {
            let ledger = self.ledger();
            let request = ledger
                .order(&id)
                .filter(|o| o.last_report_seq == 0 && o.is_open())
                .map(|o| o.request.clone());
            // Above the order's own sequence (0) without raising the account's high-water
            // mark, which start-up recovery asks the venue for reports after.
            (request, ledger.last_report_seq().max(1))
        };
        let Some(request) = request else {
            return; // unknown, or the venue already reported on it: its reports decide
        };
        let report = ExecReport {
            seq,
            client_order_id: id.clone(),
            venue_order_id: None,
            kind: vpp_engine::order::ExecKind::Rejected {
                reason: format!("not sent: {reason}"),
            },
            at: self.w.clock.now(),
        };
        let event = OrderEvent {
            client_order_id: id.clone(),
            at: report.at,
            kind: OrderEventKind::Report { report },
        };
        self.record(event);
        self.deferred_cancels.remove(&id);
        self.refuse(&request, "venue_adapter", reason);
    }

    /// The adapter ended an order locally (never sent, or unknown to a reset venue): journaled
    /// terminal (`cancelled_unsent` / `lost`), counted, and its strategy told (the order leaves
    /// its open book; it decides afresh).
    fn ended(&mut self, id: ClientOrderId, end: OrderEnd, reason: String) {
        let kind = match end {
            OrderEnd::Unsent => OrderEventKind::Unsent {
                reason: reason.clone(),
            },
            OrderEnd::Lost { venue_account_seq } => OrderEventKind::Lost {
                reason: reason.clone(),
                venue_account_seq,
            },
        };
        let at = self.w.clock.now();
        let event = OrderEvent {
            client_order_id: id.clone(),
            at,
            kind,
        };
        let Some((_, outcome)) = self.record(event) else {
            return;
        };
        let Some(status) = outcome.to else { return };
        match end {
            OrderEnd::Unsent => self.unsent.inc(),
            OrderEnd::Lost { .. } => {
                self.lost.inc();
                tracing::error!(client_order_id = %id, %reason, "order lost: the venue does not know it");
            }
        }
        self.deferred_cancels.remove(&id);
        let strategy = self.ledger().order(&id).and_then(|o| o.request.strategy_id);
        // The strategy mirror drops a terminal order on any report carrying its final status.
        let report = ExecReport {
            seq: 0,
            client_order_id: id,
            venue_order_id: None,
            kind: vpp_engine::order::ExecKind::Cancelled { reason },
            at,
        };
        self.tell_strategy(strategy, ToStrategy::Exec { report, status });
    }

    fn cancel_where(&mut self, pred: impl Fn(&vpp_engine::order::Order) -> bool, reason: &str) {
        let ids: Vec<ClientOrderId> = self
            .ledger()
            .open_orders()
            .filter(|o| o.status != vpp_engine::order::OrderStatus::PendingCancel && pred(o))
            .filter(|o| !self.deferred_cancels.contains(o.id()))
            .map(|o| o.id().clone())
            .collect();
        tracing::info!(orders = ids.len(), reason, "cancelling open orders");
        for id in ids {
            self.cancel(id, reason);
        }
    }
}

impl SupervisedLogic for OmsLogic {
    type Snapshot = SharedLedger;
    fn snapshot(&self) -> SharedLedger {
        Arc::clone(&self.w.ledger)
    }
}

impl Handles<ToOms> for OmsLogic {
    type Reply = ();
    fn handle(&mut self, msg: ToOms) -> Result<(), LogicFault> {
        match msg {
            ToOms::Approved(Intent { intent, t0_ns }) => match intent {
                OrderIntent::New(request) => self.new_order(request, t0_ns),
                OrderIntent::Cancel { client_order_id } => self.cancel(client_order_id, "strategy"),
                OrderIntent::Replace {
                    client_order_id,
                    quantity_mw,
                    price_cny_per_mwh,
                } => {
                    let cmd = ConnectorCmd::Replace {
                        client_order_id,
                        quantity_mw,
                        price_cny_per_mwh,
                    };
                    if let Err(e) = self.w.connector.try_send(cmd) {
                        tracing::warn!(error = %e, "replace could not reach the connector");
                    }
                }
            },
            ToOms::Report(report) => self.report(report),
            ToOms::SendFailed {
                client_order_id,
                reason,
            } => self.send_failed(client_order_id, reason),
            ToOms::Ended {
                client_order_id,
                end,
                reason,
            } => self.ended(client_order_id, end, reason),
            ToOms::HaltStrategy(id) => {
                self.cancel_where(|o| o.request.strategy_id == Some(id), "strategy halted")
            }
            ToOms::CancelAll { reason } => self.cancel_where(|_| true, &reason),
            ToOms::CancelScope { scope, reason } => {
                use vpp_risk::KillScope;
                self.cancel_where(
                    |o| match scope {
                        KillScope::Global => true,
                        KillScope::Aggregation(id) => o.request.aggregation_id == id,
                        KillScope::Strategy(id) => o.request.strategy_id == Some(id),
                    },
                    &reason,
                )
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use rust_decimal::Decimal;
    use std::collections::HashMap;
    use vpp_engine::clock::ManualClock;
    use vpp_engine::ids::{AggregationId, MarketId};
    use vpp_engine::market::{DeliveryInterval, Product};
    use vpp_engine::order::{OrderStatus, Side, TimeInForce};

    #[tokio::test]
    async fn an_order_the_adapter_refuses_ends_rejected_and_is_not_open_after_a_replay() {
        let start = chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start));
        let dir = std::env::temp_dir().join(format!("vpp-oms-refused-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("j.db").display());
        let store = vpp_persistence::Store::open(&url).await.unwrap();
        store.migrate().await.unwrap();
        let journal = store
            .start_journal(vpp_persistence::JournalConfig::default())
            .await
            .unwrap()
            .writer;
        let ledger: SharedLedger = Arc::new(Mutex::new(OrderLedger::new()));
        let (conn_tx, mut conn_rx) = mpsc::channel(8);
        let mut oms = OmsLogic::new(OmsWiring {
            ledger: Arc::clone(&ledger),
            journal: journal.clone(),
            connector: conn_tx,
            risk: Arc::new(OnceLock::new()),
            strategies: Arc::new(Mutex::new(HashMap::new())),
            dispatch: Vec::new(),
            clock,
            metrics: Metrics::new(),
        });
        let id = ClientOrderId::new("s1b1-1").unwrap();
        let request = OrderRequest {
            client_order_id: id.clone(),
            strategy_id: Some(StrategyId(1)),
            aggregation_id: AggregationId(1),
            market_id: MarketId(1),
            product: Product::Energy,
            interval: DeliveryInterval::containing(start + chrono::Duration::hours(2)),
            side: Side::Sell,
            quantity_mw: Decimal::ONE,
            price_cny_per_mwh: Decimal::from(300),
            time_in_force: TimeInForce::Gtc,
        };
        let intent = Intent {
            intent: OrderIntent::New(request),
            t0_ns: 0,
        };
        oms.handle(ToOms::Approved(intent)).unwrap();
        assert!(matches!(conn_rx.try_recv(), Ok(ConnectorCmd::New { .. })));
        let failed = ToOms::SendFailed {
            client_order_id: id.clone(),
            reason: "market id 1 has no venue symbol".into(),
        };
        oms.handle(failed.clone()).unwrap();
        {
            let ledger = ledger.lock().unwrap();
            assert_eq!(ledger.order(&id).unwrap().status, OrderStatus::Rejected);
            assert_eq!(ledger.open_orders().count(), 0);
        }
        // A second failure for the same order changes nothing.
        oms.handle(failed).unwrap();
        journal.flush().await.unwrap();
        // What the next start replays: the order is finished, so nothing is resent.
        let (replayed, _) = store.replay_journal().await.unwrap();
        assert_eq!(replayed.order(&id).unwrap().status, OrderStatus::Rejected);
        assert_eq!(replayed.open_orders().count(), 0);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn no_order_is_sent_while_the_journal_cannot_record_it() {
        let start = chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start));
        let store = vpp_persistence::Store::open("sqlite::memory:")
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let journal = store
            .start_journal(vpp_persistence::JournalConfig::default())
            .await
            .unwrap()
            .writer;
        let ledger: SharedLedger = Arc::new(Mutex::new(OrderLedger::new()));
        let (conn_tx, mut conn_rx) = mpsc::channel(8);
        let metrics = Metrics::new();
        let mut oms = OmsLogic::new(OmsWiring {
            ledger: Arc::clone(&ledger),
            journal: journal.clone(),
            connector: conn_tx,
            risk: Arc::new(OnceLock::new()),
            strategies: Arc::new(Mutex::new(HashMap::new())),
            dispatch: Vec::new(),
            clock,
            metrics: metrics.clone(),
        });
        // The journal stops (here: closed; in the daemon: a writer that cannot commit).
        journal.close().await.unwrap();
        assert!(!journal.health().is_healthy());
        let id = ClientOrderId::new("s1b1-9").unwrap();
        let request = OrderRequest {
            client_order_id: id.clone(),
            strategy_id: Some(StrategyId(1)),
            aggregation_id: AggregationId(1),
            market_id: MarketId(1),
            product: Product::Energy,
            interval: DeliveryInterval::containing(start + chrono::Duration::hours(2)),
            side: Side::Sell,
            quantity_mw: Decimal::ONE,
            price_cny_per_mwh: Decimal::from(300),
            time_in_force: TimeInForce::Gtc,
        };
        let intent = Intent {
            intent: OrderIntent::New(request),
            t0_ns: 0,
        };
        oms.handle(ToOms::Approved(intent)).unwrap();
        assert!(conn_rx.try_recv().is_err(), "nothing reaches the connector");
        assert!(!ledger.lock().unwrap().contains(&id), "nothing changed");
        let snap = metrics.snapshot();
        assert_eq!(snap.counter(names::JOURNAL_REFUSED_TOTAL, &[]), Some(1));
        assert_eq!(
            snap.counter(crate::metrics::names::REJECTS_TOTAL, &[("stage", "oms")]),
            Some(1)
        );
    }

    #[tokio::test]
    async fn orders_ended_by_the_adapter_are_journaled_terminal_and_counted() {
        let start = chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start));
        let dir = std::env::temp_dir().join(format!("vpp-oms-ended-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("j.db").display());
        let store = vpp_persistence::Store::open(&url).await.unwrap();
        store.migrate().await.unwrap();
        let journal = store
            .start_journal(vpp_persistence::JournalConfig::default())
            .await
            .unwrap()
            .writer;
        let ledger: SharedLedger = Arc::new(Mutex::new(OrderLedger::new()));
        let (conn_tx, _conn_rx) = mpsc::channel(8);
        let metrics = Metrics::new();
        let mut oms = OmsLogic::new(OmsWiring {
            ledger: Arc::clone(&ledger),
            journal: journal.clone(),
            connector: conn_tx,
            risk: Arc::new(OnceLock::new()),
            strategies: Arc::new(Mutex::new(HashMap::new())),
            dispatch: Vec::new(),
            clock,
            metrics: metrics.clone(),
        });
        let mk = |id: &str| OrderRequest {
            client_order_id: ClientOrderId::new(id).unwrap(),
            strategy_id: Some(StrategyId(1)),
            aggregation_id: AggregationId(1),
            market_id: MarketId(1),
            product: Product::Energy,
            interval: DeliveryInterval::containing(start + chrono::Duration::hours(2)),
            side: Side::Sell,
            quantity_mw: Decimal::ONE,
            price_cny_per_mwh: Decimal::from(300),
            time_in_force: TimeInForce::Gtc,
        };
        for id in ["s1b1-1", "s1b1-2"] {
            let intent = Intent {
                intent: OrderIntent::New(mk(id)),
                t0_ns: 0,
            };
            oms.handle(ToOms::Approved(intent)).unwrap();
        }
        let (queued, acked) = (
            ClientOrderId::new("s1b1-1").unwrap(),
            ClientOrderId::new("s1b1-2").unwrap(),
        );
        let ack = ExecReport {
            seq: 9,
            client_order_id: acked.clone(),
            venue_order_id: Some("V2".into()),
            kind: vpp_engine::order::ExecKind::Accepted,
            at: start,
        };
        oms.handle(ToOms::Report(ack)).unwrap();
        oms.handle(ToOms::Ended {
            client_order_id: queued.clone(),
            end: OrderEnd::Unsent,
            reason: "shutdown".into(),
        })
        .unwrap();
        oms.handle(ToOms::Ended {
            client_order_id: acked.clone(),
            end: OrderEnd::Lost {
                venue_account_seq: Some(0),
            },
            reason: "venue_reset".into(),
        })
        .unwrap();
        journal.flush().await.unwrap();
        let (replayed, _) = store.replay_journal().await.unwrap();
        assert_eq!(
            replayed.order(&queued).unwrap().status,
            OrderStatus::CancelledUnsent
        );
        assert_eq!(replayed.order(&acked).unwrap().status, OrderStatus::Lost);
        assert_eq!(
            replayed.open_orders().count(),
            0,
            "nothing to send at next boot"
        );
        assert_eq!(replayed.last_report_seq(), 0, "rebased to the reset venue");
        let snap = metrics.snapshot();
        assert_eq!(snap.counter(names::ORDERS_LOST_TOTAL, &[]), Some(1));
        assert_eq!(snap.counter(names::ORDERS_UNSENT_TOTAL, &[]), Some(1));
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
