//! The typed messages between the live actors. Every message that may be refused carries a
//! `Result<_, Refused>` reply and implements [`Refusable`], so the supervision layer can hand
//! it back with a reason. Market data to strategies does not travel as messages: it goes
//! through a per-strategy [`crate::Conflator`] keyed by [`MarketDataKey`] (latest value wins)
//! and only a [`MdWake`] enters the mailbox.

use crate::conflate::{ConflatedSender, Conflator, Wake};
use crate::mailbox::{Refusable, Refused};
use actix::Message;
use rust_decimal::Decimal;
use vpp_engine::ids::{AggregationId, ClientOrderId, MarketId, ResourceId, StrategyId};
use vpp_engine::ledger::{OrderEvent, Outcome};
use vpp_engine::market::DeliveryInterval;
use vpp_engine::order::{ExecReport, OrderRequest, OrderStatus};
use vpp_engine::position::{Position, PositionKey};
use vpp_engine::resource::Telemetry;
use vpp_engine::strategy::{
    CapacityUpdate, MarketData, MarketDataKey, OrderIntent, RiskRejection, Timer,
};
use vpp_engine::Timestamp;

/// A market data item and the monotonic time (ns) it was decoded, for tick-to-order latency.
pub type TimedMarketData = (MarketData, u64);
/// The wake a strategy's market data conflator sends.
pub type MdWake = Wake<MarketDataKey, TimedMarketData>;
/// A strategy's market data inbox.
pub type MdConflator = Conflator<MarketDataKey, TimedMarketData>;
/// The producer side of a strategy's market data inbox.
pub type MdSender = ConflatedSender<MarketDataKey, TimedMarketData>;

/// Everything a strategy actor receives besides market data. Never conflated.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Refused>")]
pub enum ToStrategy {
    Capacity(CapacityUpdate),
    Exec {
        report: ExecReport,
        status: OrderStatus,
    },
    Rejected(RiskRejection),
    Timer(Timer),
}

impl Refusable for ToStrategy {
    fn refuse(self, reason: &Refused) {
        let what = match &self {
            ToStrategy::Capacity(_) => "capacity",
            ToStrategy::Exec { .. } => "exec_report",
            ToStrategy::Rejected(_) => "rejection",
            ToStrategy::Timer(_) => "timer",
        };
        super::strategy::log_refused(reason, what);
    }
}

/// An intent on its way through risk to the OMS; `t0_ns` is when the market data that caused
/// it was decoded (0 when no market data caused it).
#[derive(Debug, Clone)]
pub struct Intent {
    pub intent: OrderIntent,
    pub t0_ns: u64,
}

/// Everything the risk monitor receives.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Refused>")]
pub enum ToRisk {
    Intent(Intent),
    /// An order event the OMS applied, with the ledger's outcome (keeps risk state in step).
    Order {
        event: OrderEvent,
        outcome: Outcome,
    },
    Capacity {
        aggregation_id: AggregationId,
        up_flex_mw: Decimal,
        down_flex_mw: Decimal,
    },
    Reference {
        market: MarketId,
        interval: DeliveryInterval,
        price_cny_per_mwh: Decimal,
    },
    Tick(Timestamp),
    /// Engage the global kill switch (shutdown, operator): every new order is refused after it.
    KillAll {
        reason: String,
    },
    /// A metered interval for the deviation monitor (alerts; a critical breach may engage the
    /// strategy's kill switch when `risk.deviation.critical_engages_kill_switch` is set).
    Delivery(vpp_risk::DeliverySample),
}

/// Operator control of the risk monitor, request/response: `addr.send(msg).await` (or
/// `BoundedSender::recipient().send`) answers `Ok(Ok(reply))`, `Ok(Err(e))` when risk refused
/// the command (bad limits, switch not engaged, table full: a 4xx), or `Err(Refused)` when the
/// monitor is halted or restarting (a 503). Every kill-switch action and limit change is
/// audited (`audit_log`, action `kill_switch.engage|release`, `risk_limits.update`) with
/// who, what and the outcome, refusals included.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Result<RiskReply, vpp_risk::RiskError>, Refused>")]
pub enum RiskControl {
    /// Engage: cancels the open orders in scope through the OMS and refuses new intents in
    /// scope until released. Engaging an engaged switch keeps the first engagement.
    EngageKillSwitch {
        scope: vpp_risk::KillScope,
        who: String,
        why: String,
    },
    ReleaseKillSwitch {
        scope: vpp_risk::KillScope,
        who: String,
    },
    /// Engaged switches and the bounded history of kill-switch actions.
    KillSwitches,
    ExposureAggregation(AggregationId),
    ExposureStrategy(StrategyId),
    /// The limits in force for a scope (an aggregation or strategy without its own limits
    /// answers the defaults).
    GetLimits(vpp_risk::LimitScope),
    /// Replaces the limits of a scope at run time (validated first).
    SetLimits {
        scope: vpp_risk::LimitScope,
        limits: vpp_risk::RiskLimits,
        who: String,
    },
}

/// What [`RiskControl`] answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum RiskReply {
    KillSwitchEngaged {
        scope: vpp_risk::KillScope,
        /// False when it was already engaged (the first engagement is kept).
        newly_engaged: bool,
        /// Open orders in scope as risk saw them; the OMS cancels every open order in scope.
        cancel_requested: usize,
        /// Why the OMS mailbox refused the scoped cancel, if it did (the switch is engaged
        /// regardless; the operator should engage again to retry the cancel).
        oms_refused: Option<String>,
    },
    KillSwitchReleased {
        scope: vpp_risk::KillScope,
    },
    KillSwitches {
        engaged: Vec<(vpp_risk::KillScope, vpp_risk::kill::Engagement)>,
        history: Vec<vpp_risk::kill::KillRecord>,
    },
    Exposure(Box<vpp_risk::ExposureView>),
    Limits {
        scope: vpp_risk::LimitScope,
        limits: vpp_risk::RiskLimits,
    },
    LimitsChanged(Box<vpp_risk::LimitChange>),
}

impl Refusable for RiskControl {
    // The caller awaits the reply and receives the `Err(Refused)` itself: nobody else to tell.
    fn refuse(self, reason: &Refused) {
        tracing::warn!(reason = %reason, command = ?self, "risk control refused");
    }
}

impl Refusable for ToRisk {
    fn refuse(self, reason: &Refused) {
        if let ToRisk::Intent(i) = &self {
            tracing::warn!(reason = %reason, client_order_id = %i.intent.client_order_id(),
                "intent refused by a halted or restarting risk monitor");
        }
    }
}

/// Everything the OMS receives.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Refused>")]
pub enum ToOms {
    /// Risk approved the intent (cancels and replaces pass straight through).
    Approved(Intent),
    /// An execution report from the venue, in account sequence order.
    Report(ExecReport),
    /// The connector could not hand an order or cancel to the venue adapter.
    SendFailed {
        client_order_id: ClientOrderId,
        reason: String,
    },
    /// The venue adapter ended an order locally: never sent (`cancelled_unsent`) or unknown to
    /// the venue after a reset (`lost`). Journaled terminal; its strategy hears it.
    Ended {
        client_order_id: ClientOrderId,
        end: vpp_market_adapters::client::OrderEnd,
        reason: String,
    },
    /// A strategy was halted past its restart limit: cancel its open orders.
    HaltStrategy(StrategyId),
    /// Shutdown: cancel every open order.
    CancelAll { reason: String },
    /// A kill switch was engaged: cancel the open orders in its scope.
    CancelScope {
        scope: vpp_risk::KillScope,
        reason: String,
    },
}

impl Refusable for ToOms {
    fn refuse(self, reason: &Refused) {
        tracing::error!(reason = %reason, message = ?self, "OMS message refused");
    }
}

/// Commands from the OMS to the market connector (a bounded tokio channel: the OMS reserves a
/// slot before it journals, so a full connector refuses the intent instead of dropping it).
#[derive(Debug, Clone)]
pub enum ConnectorCmd {
    /// `t0_ns`: market data decoded (0: not caused by market data); `oms_ns`: the OMS sent it.
    New {
        request: OrderRequest,
        t0_ns: u64,
        oms_ns: u64,
    },
    Cancel(ClientOrderId),
    Replace {
        client_order_id: ClientOrderId,
        quantity_mw: Decimal,
        price_cny_per_mwh: Decimal,
    },
}

/// Telemetry of the simulated (or real) park, one batch per second of simulated time.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Refused>")]
pub struct TelemetryBatch {
    pub samples: Vec<(ResourceId, Telemetry)>,
    /// Monotonic ns when the batch was produced (telemetry-to-capacity latency).
    pub produced_ns: u64,
}

impl Refusable for TelemetryBatch {
    fn refuse(self, reason: &Refused) {
        tracing::debug!(reason = %reason, samples = self.samples.len(), "telemetry batch refused");
    }
}

/// A position changed (a fill): dispatch turns the net position into setpoints.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Refused>")]
pub enum ToDispatch {
    Position {
        key: PositionKey,
        position: Position,
    },
    /// A new delivery interval started: issue its setpoints, settle the one that ended.
    IntervalStart(DeliveryInterval),
}

impl Refusable for ToDispatch {
    fn refuse(self, reason: &Refused) {
        tracing::warn!(reason = %reason, message = ?self, "dispatch message refused");
    }
}
