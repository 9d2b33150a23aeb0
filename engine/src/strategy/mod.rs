//! The strategy API: the [`Strategy`] trait, what it is fed (market data, capacity, execution
//! reports, risk rejections, timers), what it emits ([`OrderIntent`]s through a
//! [`StrategyContext`]), and the [`StrategyHost`] that drives one strategy identically live and
//! in backtest.
//!
//! Invariants:
//! - A strategy is pure: no I/O, no clock reads. `now` comes in through the context, so the
//!   same inputs give the same intents, byte for byte.
//! - Client order ids are allocated by the host, never by the strategy: `<prefix>-<n>` with `n`
//!   strictly increasing and never reused (not even after a failed callback), so live and
//!   backtest runs produce the same ids and a restarted strategy never sends an id twice.
//! - At most `max_intents_per_callback` intents per callback; one more is an
//!   [`StrategyError::IntentLimit`] and is not recorded.
//! - A callback that returns an error emits nothing: its intents are discarded (their ids stay
//!   burnt). The host's mirror of open orders and positions changes only through intents that
//!   were handed out, execution reports and risk rejections.
//! - Everything the host keeps is bounded ([`MAX_OPEN_ORDERS`], [`MAX_POSITIONS`]).

mod battery;
mod demand_response;
mod forecast;
mod host;
pub mod paper;
mod params;
mod registry;
mod regulation;
pub mod rules;
mod threshold;
mod timers;

pub use battery::{
    plan_arbitrage, plan_arbitrage_robust, ArbitragePlan, BatteryArbitrage, BatteryParams, PlanSlot,
};
pub use demand_response::{DemandResponseResponder, DrParams};
pub use forecast::ForecastWindow;
pub use host::{ClientIdAllocator, HostConfig, HostSnapshot, StrategyHost};
pub use paper::{settle_on_paper, PaperPnl, PaperVenue, RecordedIntent};
pub use params::{ParamValue, StrategyParams, MAX_PARAMS};
pub use registry::{StrategyConstructor, StrategyInit, StrategyRegistry};
pub use regulation::{RegulationOffer, RegulationParams};
pub use rules::RuleStrategy;
pub use threshold::{RealTimeThreshold, ThresholdParams};
pub use timers::timers_due;

use crate::aggregation::AggregatedCapacity;
use crate::ids::{AggregationId, ClientOrderId, MarketId, StrategyId};
use crate::market::{DeliveryInterval, Product};
use crate::order::{ExecReport, Order, OrderRequest, OrderStatus, Side, TimeInForce};
use crate::position::{Position, PositionKey};
use crate::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Most open orders the host mirrors for one strategy; a new order beyond it is refused.
pub const MAX_OPEN_ORDERS: usize = 10_000;
/// Most position keys the host keeps; the oldest delivery intervals are dropped beyond it.
pub const MAX_POSITIONS: usize = 10_000;
/// Default per-callback intent limit.
pub const DEFAULT_MAX_INTENTS_PER_CALLBACK: usize = 256;
/// Hard ceiling for the per-callback intent limit.
pub const MAX_INTENTS_PER_CALLBACK: usize = 4_096;

/// Errors of the strategy layer. Each names what was wrong and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StrategyError {
    #[error("strategy parameter {param}: {reason}")]
    Param { param: String, reason: String },
    #[error("unknown strategy kind {kind:?}; registered kinds: {known}")]
    UnknownKind { kind: String, known: String },
    #[error("strategy kind {0:?} is already registered")]
    DuplicateKind(String),
    #[error("intent limit of {limit} per callback reached; emit fewer intents per callback")]
    IntentLimit { limit: usize },
    #[error("open order limit of {limit} reached; cancel or wait for orders to finish")]
    OpenOrderLimit { limit: usize },
    #[error("order {0} is not an open order of this strategy")]
    UnknownOrder(ClientOrderId),
    #[error("invalid order: {0}")]
    InvalidOrder(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("strategy failed: {0}")]
    Failed(String),
}

impl StrategyError {
    pub fn param(param: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Param {
            param: param.into(),
            reason: reason.into(),
        }
    }
}

/// One side of the top of a book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceLevel {
    pub price_cny_per_mwh: Decimal,
    pub quantity_mw: Decimal,
}

/// Market data as a strategy sees it: small, `Copy`, keyed by market and delivery interval so
/// a slow consumer can conflate by [`MarketData::key`] (latest value per key wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum MarketData {
    /// The venue's reference (forecast) price for an interval and, once it traded, its last
    /// trade price.
    Price {
        market: MarketId,
        interval: DeliveryInterval,
        reference_price_cny_per_mwh: Decimal,
        last_trade_price_cny_per_mwh: Option<Decimal>,
        at: Timestamp,
    },
    /// Best bid and ask of a continuous book.
    BookTop {
        market: MarketId,
        interval: DeliveryInterval,
        best_bid: Option<PriceLevel>,
        best_ask: Option<PriceLevel>,
        at: Timestamp,
    },
    /// An auction cleared (or did not: no price).
    AuctionResult {
        market: MarketId,
        interval: DeliveryInterval,
        clearing_price_cny_per_mwh: Option<Decimal>,
        volume_mw: Decimal,
        at: Timestamp,
    },
    /// A regulation (ancillary) market cleared an interval: one capacity price for all
    /// (none when nothing cleared) and the announced mileage price, both CNY/MW.
    AncillaryResult {
        market: MarketId,
        interval: DeliveryInterval,
        capacity_price_cny_per_mw: Option<Decimal>,
        mileage_price_cny_per_mw: Decimal,
        volume_mw: Decimal,
        at: Timestamp,
    },
    /// A demand-response invitation: load reduction in `interval` is paid `price` per MWh,
    /// up to `target_mw`; responses (sell orders in the DR market) close at `respond_by`.
    /// `awarded_mw` is set once the window closed.
    DrInvitation {
        market: MarketId,
        interval: DeliveryInterval,
        event_id: u64,
        price_cny_per_mwh: Decimal,
        target_mw: Decimal,
        respond_by: Timestamp,
        awarded_mw: Option<Decimal>,
        at: Timestamp,
    },
}

/// Which stream a [`MarketData`] item belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarketDataKind {
    Price,
    BookTop,
    AuctionResult,
    AncillaryResult,
    DrInvitation,
}

/// Conflation key: two items with the same key describe the same thing; the later one wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MarketDataKey {
    pub market: MarketId,
    pub interval: DeliveryInterval,
    pub kind: MarketDataKind,
}

impl MarketData {
    pub fn market(&self) -> MarketId {
        match self {
            Self::Price { market, .. }
            | Self::BookTop { market, .. }
            | Self::AuctionResult { market, .. }
            | Self::AncillaryResult { market, .. }
            | Self::DrInvitation { market, .. } => *market,
        }
    }

    pub fn interval(&self) -> DeliveryInterval {
        match self {
            Self::Price { interval, .. }
            | Self::BookTop { interval, .. }
            | Self::AuctionResult { interval, .. }
            | Self::AncillaryResult { interval, .. }
            | Self::DrInvitation { interval, .. } => *interval,
        }
    }

    pub fn at(&self) -> Timestamp {
        match self {
            Self::Price { at, .. }
            | Self::BookTop { at, .. }
            | Self::AuctionResult { at, .. }
            | Self::AncillaryResult { at, .. }
            | Self::DrInvitation { at, .. } => *at,
        }
    }

    pub fn kind(&self) -> MarketDataKind {
        match self {
            Self::Price { .. } => MarketDataKind::Price,
            Self::BookTop { .. } => MarketDataKind::BookTop,
            Self::AuctionResult { .. } => MarketDataKind::AuctionResult,
            Self::AncillaryResult { .. } => MarketDataKind::AncillaryResult,
            Self::DrInvitation { .. } => MarketDataKind::DrInvitation,
        }
    }

    pub fn key(&self) -> MarketDataKey {
        MarketDataKey {
            market: self.market(),
            interval: self.interval(),
            kind: self.kind(),
        }
    }
}

/// The aggregation's storage, summed over its storage members (share-weighted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageState {
    /// Energy-weighted state of charge, percent of `capacity_kwh`.
    pub soc_pct: Decimal,
    /// Energy stored now, kWh.
    pub energy_kwh: Decimal,
    /// Usable capacity, kWh.
    pub capacity_kwh: Decimal,
}

/// A capacity update for the strategy's aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityUpdate {
    pub aggregation_id: AggregationId,
    pub capacity: AggregatedCapacity,
    pub storage: Option<StorageState>,
    pub at: Timestamp,
}

/// Risk refused one of the strategy's intents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskRejection {
    pub client_order_id: ClientOrderId,
    /// Stable reject code, e.g. `max_order_size` (the risk crate's `RejectCode::as_str`).
    pub code: String,
    pub message: String,
}

/// Timers the host delivers. See [`timers_due`] for the schedule both live and backtest use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Timer {
    /// A delivery interval has just started.
    IntervalStart { interval: DeliveryInterval },
    /// Day-ahead bidding for `trading_day` (local date in the market's time zone) closes soon.
    GateClosureApproaching {
        market: MarketId,
        trading_day: chrono::NaiveDate,
    },
}

/// What a strategy asks for when placing an order; the host adds the client order id, the
/// strategy id and the aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    pub market_id: MarketId,
    pub product: Product,
    pub interval: DeliveryInterval,
    pub side: Side,
    pub quantity_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
    pub time_in_force: TimeInForce,
}

/// What a strategy wants done. Goes to risk, then to the OMS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum OrderIntent {
    New(OrderRequest),
    Cancel {
        client_order_id: ClientOrderId,
    },
    Replace {
        client_order_id: ClientOrderId,
        quantity_mw: Decimal,
        price_cny_per_mwh: Decimal,
    },
}

impl OrderIntent {
    pub fn client_order_id(&self) -> &ClientOrderId {
        match self {
            Self::New(r) => &r.client_order_id,
            Self::Cancel { client_order_id }
            | Self::Replace {
                client_order_id, ..
            } => client_order_id,
        }
    }
}

/// A strategy's own state, serialised: `kind` and `version` guard against restoring the wrong
/// thing; `state` is the strategy's JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategySnapshot {
    pub kind: String,
    pub version: u32,
    pub state: serde_json::Value,
}

impl StrategySnapshot {
    pub fn encode<T: Serialize>(
        kind: &str,
        version: u32,
        state: &T,
    ) -> Result<Self, StrategyError> {
        let state = serde_json::to_value(state)
            .map_err(|e| StrategyError::Snapshot(format!("{kind}: cannot encode state: {e}")))?;
        Ok(Self {
            kind: kind.to_owned(),
            version,
            state,
        })
    }

    /// Decodes the state, refusing another kind or version.
    pub fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        version: u32,
    ) -> Result<T, StrategyError> {
        if self.kind != kind || self.version != version {
            return Err(StrategyError::Snapshot(format!(
                "snapshot is {} v{}, this strategy restores {kind} v{version}",
                self.kind, self.version
            )));
        }
        serde_json::from_value(self.state.clone())
            .map_err(|e| StrategyError::Snapshot(format!("{kind}: cannot decode state: {e}")))
    }
}

/// A trading strategy. Every callback may emit intents through the context; the default
/// implementations do nothing.
pub trait Strategy: Send {
    /// The registered kind, e.g. `battery_arbitrage`.
    fn kind(&self) -> &'static str;

    fn on_market_data(
        &mut self,
        _ctx: &mut StrategyContext<'_>,
        _data: &MarketData,
    ) -> Result<(), StrategyError> {
        Ok(())
    }

    fn on_capacity(
        &mut self,
        _ctx: &mut StrategyContext<'_>,
        _update: &CapacityUpdate,
    ) -> Result<(), StrategyError> {
        Ok(())
    }

    /// `status` is the order's status after the report, as the OMS ledger computed it.
    fn on_exec_report(
        &mut self,
        _ctx: &mut StrategyContext<'_>,
        _report: &ExecReport,
        _status: OrderStatus,
    ) -> Result<(), StrategyError> {
        Ok(())
    }

    fn on_risk_reject(
        &mut self,
        _ctx: &mut StrategyContext<'_>,
        _reject: &RiskRejection,
    ) -> Result<(), StrategyError> {
        Ok(())
    }

    fn on_timer(
        &mut self,
        _ctx: &mut StrategyContext<'_>,
        _timer: &Timer,
    ) -> Result<(), StrategyError> {
        Ok(())
    }

    /// Everything needed to continue after a restart.
    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError>;

    /// Replaces the state with a snapshot's; on error the state is unchanged.
    fn restore(&mut self, snapshot: &StrategySnapshot) -> Result<(), StrategyError>;
}

impl std::fmt::Debug for dyn Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Strategy({})", self.kind())
    }
}

/// The strategy's open orders and positions as the host mirrors them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrategyBook {
    pub(crate) open: BTreeMap<ClientOrderId, Order>,
    pub(crate) positions: BTreeMap<PositionKey, Position>,
}

impl StrategyBook {
    pub fn open_orders(&self) -> impl Iterator<Item = &Order> {
        self.open.values()
    }

    pub fn open_order(&self, id: &ClientOrderId) -> Option<&Order> {
        self.open.get(id)
    }

    pub fn positions(&self) -> &BTreeMap<PositionKey, Position> {
        &self.positions
    }
}

/// What a callback sees and how it acts. Built by the [`StrategyHost`] for each callback.
pub struct StrategyContext<'a> {
    now: Timestamp,
    strategy_id: StrategyId,
    aggregation_id: AggregationId,
    book: &'a StrategyBook,
    capacity: Option<&'a CapacityUpdate>,
    ids: &'a mut ClientIdAllocator,
    intents: &'a mut Vec<OrderIntent>,
    limit: usize,
}

impl<'a> StrategyContext<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        now: Timestamp,
        strategy_id: StrategyId,
        aggregation_id: AggregationId,
        book: &'a StrategyBook,
        capacity: Option<&'a CapacityUpdate>,
        ids: &'a mut ClientIdAllocator,
        intents: &'a mut Vec<OrderIntent>,
        limit: usize,
    ) -> Self {
        Self {
            now,
            strategy_id,
            aggregation_id,
            book,
            capacity,
            ids,
            intents,
            limit,
        }
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    pub fn strategy_id(&self) -> StrategyId {
        self.strategy_id
    }

    pub fn aggregation_id(&self) -> AggregationId {
        self.aggregation_id
    }

    /// The latest capacity of the strategy's aggregation, if any arrived yet.
    pub fn capacity(&self) -> Option<&CapacityUpdate> {
        self.capacity
    }

    /// Positions of the strategy's aggregation built from its own fills.
    pub fn positions(&self) -> &BTreeMap<PositionKey, Position> {
        self.book.positions()
    }

    pub fn position(&self, market: MarketId, interval: DeliveryInterval) -> Option<&Position> {
        self.book.positions.get(&PositionKey {
            aggregation_id: self.aggregation_id,
            market_id: market,
            interval,
        })
    }

    /// Open orders before this callback (intents of this callback are in [`Self::intents`]).
    pub fn open_orders(&self) -> impl Iterator<Item = &Order> {
        self.book.open_orders()
    }

    pub fn open_order(&self, id: &ClientOrderId) -> Option<&Order> {
        self.book.open_order(id)
    }

    /// Intents emitted so far in this callback.
    pub fn intents(&self) -> &[OrderIntent] {
        self.intents
    }

    /// How many more intents this callback may emit.
    pub fn remaining_intents(&self) -> usize {
        self.limit.saturating_sub(self.intents.len())
    }

    fn check_room(&self) -> Result<(), StrategyError> {
        if self.intents.len() >= self.limit {
            return Err(StrategyError::IntentLimit { limit: self.limit });
        }
        Ok(())
    }

    /// Places an order; returns the client order id the host allocated for it.
    pub fn submit(&mut self, order: NewOrder) -> Result<ClientOrderId, StrategyError> {
        self.check_room()?;
        if order.quantity_mw <= Decimal::ZERO {
            return Err(StrategyError::InvalidOrder(format!(
                "quantity_mw {} must be greater than 0",
                order.quantity_mw
            )));
        }
        let pending_new = self
            .intents
            .iter()
            .filter(|i| matches!(i, OrderIntent::New(_)))
            .count();
        if self.book.open.len() + pending_new >= MAX_OPEN_ORDERS {
            return Err(StrategyError::OpenOrderLimit {
                limit: MAX_OPEN_ORDERS,
            });
        }
        let id = self.ids.allocate()?;
        self.intents.push(OrderIntent::New(OrderRequest {
            client_order_id: id.clone(),
            strategy_id: Some(self.strategy_id),
            aggregation_id: self.aggregation_id,
            market_id: order.market_id,
            product: order.product,
            interval: order.interval,
            side: order.side,
            quantity_mw: order.quantity_mw,
            price_cny_per_mwh: order.price_cny_per_mwh,
            time_in_force: order.time_in_force,
        }));
        Ok(id)
    }

    /// Asks to cancel one of the strategy's open orders.
    pub fn cancel(&mut self, id: &ClientOrderId) -> Result<(), StrategyError> {
        self.check_room()?;
        self.known_open(id)?;
        self.intents.push(OrderIntent::Cancel {
            client_order_id: id.clone(),
        });
        Ok(())
    }

    /// Asks to change quantity and price of one of the strategy's open orders.
    pub fn replace(
        &mut self,
        id: &ClientOrderId,
        quantity_mw: Decimal,
        price_cny_per_mwh: Decimal,
    ) -> Result<(), StrategyError> {
        self.check_room()?;
        let order = self.known_open(id)?;
        if quantity_mw <= order.filled_mw {
            return Err(StrategyError::InvalidOrder(format!(
                "replace of {id} to {quantity_mw} MW must stay above the filled {} MW",
                order.filled_mw
            )));
        }
        self.intents.push(OrderIntent::Replace {
            client_order_id: id.clone(),
            quantity_mw,
            price_cny_per_mwh,
        });
        Ok(())
    }

    fn known_open(&self, id: &ClientOrderId) -> Result<&'a Order, StrategyError> {
        let book: &'a StrategyBook = self.book;
        book.open
            .get(id)
            .ok_or_else(|| StrategyError::UnknownOrder(id.clone()))
    }
}

#[cfg(test)]
mod tests;
