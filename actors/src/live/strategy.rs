//! The Strategy actor: hosts one `Box<dyn Strategy>` in a [`StrategyHost`] under supervision.
//!
//! Inputs: market data through its own conflator (latest value per key wins, losses counted),
//! capacity, execution reports, risk rejections and timers as [`ToStrategy`]. Output: intents
//! to the risk monitor with `try_send`; an intent the risk mailbox refuses goes straight back
//! into the strategy as a risk rejection with the refusal's reason (never dropped silently).
//!
//! Invariants:
//! - A panic in the strategy is caught by the supervisor; the host is rebuilt from its last
//!   snapshot and the client id allocator is moved past the highest id ever handed out
//!   (`issued` watermark), so a restarted strategy never reuses a client order id.
//! - A rebuild takes open orders and positions from the OMS ledger (the journal's fold), so
//!   snapshots can be taken every N messages without reviving finished orders.
//! - Each callback's decision time is recorded in `strategy_decision{scope=<strategy>}`.
//! - Shadow mode ([`StrategyExtras::shadow`]): intents never reach risk or the venue; they are
//!   recorded and settled on a paper venue (the engine's `PaperVenue`, shared across restarts)
//!   in the same order as `vpp backtest --session` replays them: market data goes to the paper
//!   venue first, then to the strategy; an `IntervalStart` first expires started paper orders.
//! - Session tap ([`StrategyExtras::tap`], opt-in): every input is handed to the tap before the
//!   strategy sees it, and every intent after; the tap must not block (bounded, counts losses).
//! - A halted strategy is quiet: messages refused to it are counted by its supervisor
//!   (`vpp_mailbox_refused_total`-style counters) and logged at most once per strategy per
//!   [`REFUSAL_LOG_EVERY`] ([`RefusalLog`]), with how many lines were suppressed.

use super::messages::{Intent, MdConflator, MdWake, TimedMarketData, ToRisk, ToStrategy};
use crate::mailbox::BoundedSender;
use crate::metrics::{LatencyRecorder, Metrics, Stage};
use crate::supervisor::{Handles, LogicFault, SupervisedLogic};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vpp_engine::backtest::SessionEvent;
use vpp_engine::clock::Clock;
use vpp_engine::ids::ClientOrderId;
use vpp_engine::market::DeliveryInterval;
use vpp_engine::strategy::paper::settle_reports;
use vpp_engine::strategy::{
    settle_on_paper, HostConfig, HostSnapshot, MarketDataKey, OrderIntent, PaperVenue,
    RecordedIntent, RiskRejection, StrategyError, StrategyHost, StrategyInit, StrategyRegistry,
};
use vpp_engine::Timestamp;

/// At most one log line per strategy per this long about messages refused to it.
pub const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Strategies whose refusal log state is kept (bounded; the oldest is forgotten past it).
const REFUSAL_LOG_KEYS: usize = 1_024;

/// Rate limit of "message refused" log lines, per actor: the first refusal is logged, the
/// next ones within [`REFUSAL_LOG_EVERY`] are only counted and reported with the next line.
#[derive(Debug, Default)]
pub struct RefusalLog {
    by_actor: std::collections::HashMap<String, (std::time::Instant, u64)>,
}

impl RefusalLog {
    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn allow(&mut self, actor: &str, now: std::time::Instant) -> Option<u64> {
        match self.by_actor.get_mut(actor) {
            Some((last, suppressed)) => {
                if now.saturating_duration_since(*last) >= REFUSAL_LOG_EVERY {
                    let n = *suppressed;
                    *last = now;
                    *suppressed = 0;
                    Some(n)
                } else {
                    *suppressed += 1;
                    None
                }
            }
            None => {
                if self.by_actor.len() >= REFUSAL_LOG_KEYS {
                    let oldest = self
                        .by_actor
                        .iter()
                        .min_by_key(|(_, (at, _))| *at)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        self.by_actor.remove(&k);
                    }
                }
                self.by_actor.insert(actor.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Logs a message refused to a strategy (halted, restarting, full), rate limited per strategy.
pub fn log_refused(reason: &crate::mailbox::Refused, what: &str) {
    static LOG: std::sync::OnceLock<std::sync::Mutex<RefusalLog>> = std::sync::OnceLock::new();
    let actor = match reason {
        crate::mailbox::Refused::MailboxFull { actor, .. }
        | crate::mailbox::Refused::MailboxClosed { actor }
        | crate::mailbox::Refused::Crashed { actor, .. }
        | crate::mailbox::Refused::Restarting { actor }
        | crate::mailbox::Refused::Halted { actor, .. }
        | crate::mailbox::Refused::ConflatorFull { actor, .. } => actor.to_string(),
    };
    let allowed = LOG
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .allow(&actor, std::time::Instant::now());
    if let Some(suppressed) = allowed {
        tracing::warn!(%actor, reason = %reason, message = what, suppressed,
            "strategy message refused (at most one line per strategy per minute; all are counted)");
    }
}

/// Everything needed to (re)build a strategy's logic.
#[derive(Clone)]
pub struct StrategyWiring {
    pub init: StrategyInit,
    pub host: HostConfig,
    pub registry: Arc<StrategyRegistry>,
    pub clock: Arc<dyn Clock>,
    pub risk: BoundedSender<ToRisk>,
    pub md: MdConflator,
    pub metrics: Metrics,
    /// Highest client order sequence handed out, shared across restarts.
    pub issued: Arc<AtomicU64>,
    /// The OMS ledger: a rebuild takes the strategy's open orders and positions from it, so a
    /// snapshot taken every N messages never revives a finished order or loses a fill.
    pub ledger: Option<super::oms::SharedLedger>,
}

/// Records what a strategy is fed and what it emits (a recorded session). Implementations must
/// not block: bounded, counting what they drop.
pub trait StrategyTap: Send + Sync {
    fn input(&self, event: SessionEvent);
    fn intents(&self, intents: &[RecordedIntent]);
}

/// A shadow strategy's paper venue, readable from outside (intent log, paper P&L).
pub type SharedPaper = Arc<std::sync::Mutex<PaperVenue>>;

/// Optional parts of a strategy actor, kept across restarts.
#[derive(Clone, Default)]
pub struct StrategyExtras {
    /// Shadow mode: record intents and settle them on this paper venue; send nothing.
    pub shadow: Option<SharedPaper>,
    pub tap: Option<Arc<dyn StrategyTap>>,
    /// Set when the operator deactivates (or replaces) this strategy: from then on it sends
    /// no new order to risk (cancels still go), whatever is left in its mailbox.
    pub stopped: Option<Arc<std::sync::atomic::AtomicBool>>,
}

pub struct StrategyLogic {
    host: StrategyHost,
    extras: StrategyExtras,
    /// The instant the current callback was given (taps and paper settle with it).
    cb_now: Timestamp,
    wiring: StrategyWiring,
    decision: LatencyRecorder,
    drained: Vec<(MarketDataKey, TimedMarketData)>,
}

fn fault(e: StrategyError) -> LogicFault {
    LogicFault::new(e.to_string())
}

impl StrategyLogic {
    /// A fresh host; `seed` adopts open orders and positions recovered from the journal.
    pub fn new(
        wiring: StrategyWiring,
        seed: impl FnOnce(&mut StrategyHost),
    ) -> Result<Self, LogicFault> {
        let strategy = wiring.registry.create(&wiring.init).map_err(fault)?;
        let mut host = StrategyHost::new(strategy, wiring.host.clone()).map_err(fault)?;
        seed(&mut host);
        Ok(Self::with_host(host, wiring))
    }

    /// Rebuilds from a snapshot, past every id already issued, with the open orders and
    /// positions the OMS ledger holds now.
    pub fn rebuild(wiring: StrategyWiring, snapshot: &HostSnapshot) -> Result<Self, LogicFault> {
        let strategy = wiring.registry.create(&wiring.init).map_err(fault)?;
        let mut snapshot = snapshot.clone();
        if let Some(ledger) = &wiring.ledger {
            let ledger = ledger
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (sid, aid) = (wiring.host.strategy_id, wiring.host.aggregation_id);
            snapshot.open_orders = ledger
                .open_orders()
                .filter(|o| o.request.strategy_id == Some(sid))
                .cloned()
                .collect();
            snapshot.positions = ledger
                .positions()
                .iter()
                .filter(|(k, _)| k.aggregation_id == aid)
                .map(|(k, p)| (*k, p.clone()))
                .collect();
        }
        let mut host =
            StrategyHost::restore(strategy, wiring.host.clone(), &snapshot).map_err(fault)?;
        let issued = wiring.issued.load(Ordering::SeqCst);
        if issued > 0 {
            let prefix = snapshot.ids.prefix();
            if let Ok(id) = ClientOrderId::new(format!("{prefix}-{issued}")) {
                host.observe_client_ids([&id]);
            }
        }
        Ok(Self::with_host(host, wiring))
    }

    fn with_host(host: StrategyHost, wiring: StrategyWiring) -> Self {
        let decision = wiring
            .metrics
            .latency(Stage::StrategyDecision, &wiring.init.name);
        Self {
            host,
            extras: StrategyExtras::default(),
            cb_now: Timestamp::MIN_UTC,
            wiring,
            decision,
            drained: Vec::with_capacity(64),
        }
    }

    pub fn host(&self) -> &StrategyHost {
        &self.host
    }

    /// Adds shadow mode and/or a session tap (also after a rebuild).
    pub fn with_extras(mut self, extras: StrategyExtras) -> Self {
        self.extras = extras;
        self
    }

    fn tap_input(&self, event: impl FnOnce() -> SessionEvent) {
        if let Some(tap) = &self.extras.tap {
            tap.input(event());
        }
    }

    /// Shadow mode: settles intents on paper and taps every intent the paper venue recorded
    /// (the strategy's answers to paper reports included).
    fn settle_shadow(
        &mut self,
        paper: &SharedPaper,
        intents: &[OrderIntent],
        reports: Vec<vpp_engine::strategy::paper::PaperReport>,
    ) {
        let now = self.cb_now;
        let mut paper = paper
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = paper.logged_total();
        if let Err(e) = settle_reports(&mut self.host, &mut paper, now, reports)
            .and_then(|()| settle_on_paper(&mut self.host, &mut paper, now, intents))
        {
            tracing::warn!(strategy = %self.wiring.init.name, error = %e, "shadow strategy callback failed");
        }
        if let Some(tap) = &self.extras.tap {
            let new = usize::try_from(paper.logged_total() - before).unwrap_or(usize::MAX);
            let log: Vec<RecordedIntent> = paper.log().cloned().collect();
            tap.intents(&log[log.len().saturating_sub(new)..]);
        }
    }

    fn now(&self) -> Timestamp {
        self.wiring.clock.now()
    }

    /// Takes the intents of the last callback and sends them to risk.
    fn forward(&mut self, result: Result<Vec<OrderIntent>, StrategyError>, t0_ns: u64) {
        let intents = match result {
            Ok(intents) => intents,
            Err(e) => {
                tracing::warn!(strategy = %self.wiring.init.name, error = %e, "strategy callback failed; its intents were discarded");
                return;
            }
        };
        if let Some(paper) = self.extras.shadow.clone() {
            self.settle_shadow(&paper, &intents, Vec::new());
            return;
        }
        if let (Some(tap), false) = (&self.extras.tap, intents.is_empty()) {
            let at = self.cb_now;
            let recorded: Vec<RecordedIntent> = intents
                .iter()
                .map(|i| RecordedIntent {
                    at,
                    intent: i.clone(),
                })
                .collect();
            tap.intents(&recorded);
        }
        self.wiring.issued.fetch_max(
            self.host.next_client_seq().saturating_sub(1),
            Ordering::SeqCst,
        );
        let stopped = self
            .extras
            .stopped
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst));
        for intent in intents {
            if stopped && matches!(intent, OrderIntent::New(_)) {
                continue;
            }
            let msg = ToRisk::Intent(Intent { intent, t0_ns });
            if let Err(rejected) = self.wiring.risk.try_send(msg) {
                let (msg, reason) = rejected.into_parts();
                if let ToRisk::Intent(Intent {
                    intent: OrderIntent::New(r),
                    ..
                }) = msg
                {
                    let reject = RiskRejection {
                        client_order_id: r.client_order_id,
                        code: reason.reason().to_owned(),
                        message: reason.to_string(),
                    };
                    let now = self.now();
                    // Follow-up intents of the rejection callback are dropped on purpose: the
                    // order path is full, so sending more would only be refused again.
                    if let Err(e) = self.host.on_risk_reject(now, &reject) {
                        tracing::warn!(error = %e, "strategy failed handling a refusal");
                    }
                }
            }
        }
    }

    fn on_market_data(&mut self, wake: MdWake) {
        let mut drained = std::mem::take(&mut self.drained);
        drained.clear();
        self.wiring.md.drain(wake, &mut drained);
        for (_, (data, t0_ns)) in drained.drain(..) {
            let start = self.wiring.clock.monotonic_ns();
            let now = self.now();
            self.cb_now = now;
            self.tap_input(|| SessionEvent::MarketData { at: now, data });
            if let Some(paper) = self.extras.shadow.clone() {
                let reports = paper
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .on_market_data(now, &data);
                self.settle_shadow(&paper, &[], reports);
            }
            let result = self.host.on_market_data(now, &data).map(<[_]>::to_vec);
            self.decision
                .record_between(start, self.wiring.clock.monotonic_ns());
            self.forward(result, t0_ns);
        }
        self.drained = drained;
    }
}

impl SupervisedLogic for StrategyLogic {
    type Snapshot = HostSnapshot;
    fn snapshot(&self) -> HostSnapshot {
        // A strategy that cannot snapshot keeps the previous restore point; counted in logs.
        match self.host.snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(strategy = %self.wiring.init.name, error = %e, "snapshot failed");
                panic!("strategy {} cannot snapshot: {e}", self.wiring.init.name)
            }
        }
    }
}

impl Handles<MdWake> for StrategyLogic {
    type Reply = ();
    fn handle(&mut self, wake: MdWake) -> Result<(), LogicFault> {
        self.on_market_data(wake);
        Ok(())
    }
}

impl Handles<ToStrategy> for StrategyLogic {
    type Reply = ();
    fn handle(&mut self, msg: ToStrategy) -> Result<(), LogicFault> {
        let now = self.now();
        self.cb_now = now;
        match &msg {
            ToStrategy::Capacity(c) => self.tap_input(|| SessionEvent::Capacity {
                at: now,
                update: *c,
            }),
            ToStrategy::Timer(t) => {
                self.tap_input(|| SessionEvent::Timer { at: now, timer: *t });
                if let (Some(paper), vpp_engine::strategy::Timer::IntervalStart { .. }) =
                    (self.extras.shadow.clone(), t)
                {
                    let reports = paper
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .expire_started(now);
                    self.settle_shadow(&paper, &[], reports);
                }
            }
            _ => {}
        }
        let start = self.wiring.clock.monotonic_ns();
        let result = match &msg {
            ToStrategy::Capacity(c) => self.host.on_capacity(now, c),
            ToStrategy::Exec { report, status } => self.host.on_exec_report(now, report, *status),
            ToStrategy::Rejected(r) => self.host.on_risk_reject(now, r),
            ToStrategy::Timer(t) => {
                if let vpp_engine::strategy::Timer::IntervalStart { interval } = t {
                    self.host
                        .prune_positions_before(DeliveryInterval::containing(
                            interval.start() - chrono::Duration::days(1),
                        ));
                }
                self.host.on_timer(now, t)
            }
        }
        .map(<[_]>::to_vec);
        self.decision
            .record_between(start, self.wiring.clock.monotonic_ns());
        self.forward(result, 0);
        Ok(())
    }
}

#[cfg(test)]
mod refusal_log_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_halted_strategy_gets_one_refusal_line_per_minute_and_the_rest_counted() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        let mut lines = 0;
        // 2,272 refusals in 63 s, as observed for two halted strategies.
        for i in 0..2_272u64 {
            let at = t0 + Duration::from_millis(i * 63_000 / 2_272);
            for actor in ["strategy/a", "strategy/b"] {
                if log.allow(actor, at).is_some() {
                    lines += 1;
                }
            }
        }
        assert_eq!(lines, 4, "one line per strategy per started minute");
        let next = log.allow("strategy/a", t0 + Duration::from_secs(121));
        assert!(
            matches!(next, Some(n) if n >= 100),
            "suppressed lines are reported: {next:?}"
        );
    }
}
