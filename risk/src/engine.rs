//! [`RiskEngine`]: the limits and the incremental state every pre-trade check reads, updated by
//! events (approvals, order events with their ledger outcome, capacity and storage reports,
//! clock ticks), plus the kill switches, limit updates and the deviation monitor.
//!
//! Life of an intent: [`RiskEngine::evaluate`] runs [`RiskEngine::check`] (pure, `&self`,
//! O(1) in the number of open orders and intervals, allocation-free when it approves) and, on
//! approval, commits a reservation: the order is counted as open at once, so a second intent
//! arriving before the OMS has created the first still sees it. The OMS's `Created` event for
//! that id is then a no-op; [`RiskEngine::release_reservation`] undoes a reservation the OMS
//! never turned into an order.
//!
//! Invariants:
//! - Buckets equal the sums over tracked orders (see [`crate::state`]); the journal's
//!   `OrderEvent`s replayed through `OrderLedger::apply` and then
//!   [`RiskEngine::apply_order_event`] rebuild the same state.
//! - Every map is pre-sized from [`crate::limits::Sizing`]; an intent that would need a new
//!   entry past the size is refused (`tracking_limit`), so memory is bounded and the approve
//!   path never reallocates. Events from the venue (which are facts) are always recorded.
//! - Rejections and alerts are counted per code in [`RiskCounters`].

use crate::checks::{self, notional_of};
use crate::deviation::{DeliverySample, DeviationMonitor, Severity};
use crate::event::{AlertCode, Decision, Reject, RiskCounters, RiskEvent, Scope};
use crate::hash::{map_with_capacity, set_with_capacity, FxHashMap, FxHashSet};
use crate::kill::{Engagement, KillScope, KillSwitchError, KillSwitchState};
use crate::limits::{LimitChange, LimitScope, RiskConfig, RiskConfigError, RiskLimits, Sizing};
use crate::state::{
    interval_index, AggPosKey, BookKey, BookTop, Capacity, Commitment, FlexBucket, NetBucket,
    OpenOrder, OrderKey, StratPosKey,
};
use crate::storage::{StorageBudget, StorageSchedule};
use crate::throttle::{SlidingWindow, TokenBucket};
use chrono::TimeZone;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use thiserror::Error;
use vpp_engine::error::ValidationError;
use vpp_engine::ids::{AggregationId, ClientOrderId, MarketId, StrategyId};
use vpp_engine::ledger::{OrderEvent, OrderEventKind, Outcome};
use vpp_engine::market::{DeliveryInterval, Market, MarketKind, Product, INTERVALS_PER_DAY};
use vpp_engine::order::{ExecKind, OrderRequest, Side};
use vpp_engine::Timestamp;

/// Intervals of filled history kept after delivery (for the exposure view), in intervals.
const RETAINED_PAST_INTERVALS: i64 = INTERVALS_PER_DAY as i64;
/// Initial size of the per-interval maps (they grow to `max_position_keys` when needed):
/// each tick prunes them with `retain`, which walks every bucket, so a map pre-sized for
/// 20,000 keys holding a few hundred cost the backtest more than all its checks.
const INITIAL_POSITION_KEYS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RiskError {
    #[error(transparent)]
    Config(#[from] RiskConfigError),
    #[error(transparent)]
    KillSwitch(#[from] KillSwitchError),
    #[error("market {0} is not registered with the risk engine")]
    UnknownMarket(MarketId),
    #[error("market is invalid: {0}")]
    InvalidMarket(#[from] ValidationError),
    #[error("{what} table is full ({max}); raise risk.sizing.{field}")]
    Full {
        what: &'static str,
        field: &'static str,
        max: usize,
    },
    #[error("invalid storage budget for aggregation {aggregation}: {reason}")]
    InvalidBudget {
        aggregation: AggregationId,
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct MarketEntry {
    market: Market,
    venue: Option<u32>,
    collar_band_cny_per_mwh: Option<Decimal>,
    collar_band_fraction: Option<Decimal>,
    reference_cny_per_mwh: Option<Decimal>,
    min_quantity_mw: Decimal,
    quantity_decimals: u32,
    horizon_hours: u32,
}

#[derive(Debug, Clone)]
struct VenueState {
    name: String,
    window: SlidingWindow,
}

#[derive(Debug, Clone)]
struct AggState {
    limits: RiskLimits,
    custom_limits: bool,
    open_orders: u32,
    notional_used_cny: Decimal,
    capacity: Option<Capacity>,
    storage: Option<StorageSchedule>,
}

#[derive(Debug, Clone)]
struct StratState {
    limits: RiskLimits,
    custom_limits: bool,
    open_orders: u32,
    notional_used_cny: Decimal,
    bucket: TokenBucket,
}

impl StratState {
    fn new(limits: RiskLimits, custom_limits: bool) -> Self {
        let bucket = TokenBucket::new(limits.orders_per_second, limits.order_burst);
        Self {
            limits,
            custom_limits,
            open_orders: 0,
            notional_used_cny: Decimal::ZERO,
            bucket,
        }
    }
}

/// What engaging a kill switch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillOutcome {
    pub newly_engaged: bool,
    /// Open orders in scope, sorted: the OMS must cancel them.
    pub cancel: Vec<ClientOrderId>,
    pub event: RiskEvent,
}

/// What a metered sample did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviationOutcome {
    pub alert: Option<RiskEvent>,
    pub kill: Option<KillOutcome>,
}

/// A used amount against its limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitUse {
    pub used: Decimal,
    pub limit: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionRow {
    pub market_id: MarketId,
    pub interval: DeliveryInterval,
    pub product: Product,
    pub bucket: NetBucket,
    pub worst_net_sold_mw: Decimal,
    pub worst_net_bought_mw: Decimal,
    pub max_net_position_mw: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadroomRow {
    pub interval: DeliveryInterval,
    pub up_used_mw: Decimal,
    pub up_left_mw: Decimal,
    pub down_used_mw: Decimal,
    pub down_left_mw: Decimal,
    /// Lowest and highest worst-case stored energy from this interval on, if storage is modelled.
    pub storage_envelope_kwh: Option<(Decimal, Decimal)>,
}

/// Exposure of one aggregation or strategy, for the operator API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureView {
    pub scope: Scope,
    pub kill_switch: Option<Engagement>,
    pub limits: RiskLimits,
    pub open_orders: LimitUse,
    pub daily_notional_cny: LimitUse,
    pub capacity: Option<Capacity>,
    pub positions: Vec<PositionRow>,
    /// Aggregation scope only: flexibility used and left per interval.
    pub headroom: Vec<HeadroomRow>,
}

/// Facts the commit step needs from a successful check.
#[derive(Debug, Clone, Copy)]
struct Approved {
    venue: Option<u32>,
    continuous: bool,
    notional_cny: Decimal,
    interval_index: i64,
}

pub struct RiskEngine {
    agg_defaults: RiskLimits,
    strat_defaults: RiskLimits,
    sizing: Sizing,
    day_tz: chrono_tz::Tz,
    market_config: Vec<crate::limits::MarketRisk>,
    markets: FxHashMap<MarketId, MarketEntry>,
    venues: Vec<VenueState>,
    aggregations: FxHashMap<AggregationId, AggState>,
    strategies: FxHashMap<StrategyId, StratState>,
    open_orders: FxHashMap<OrderKey, OpenOrder>,
    seen: FxHashSet<OrderKey>,
    seen_fifo: VecDeque<OrderKey>,
    agg_positions: FxHashMap<AggPosKey, NetBucket>,
    strat_positions: FxHashMap<StratPosKey, NetBucket>,
    flex: FxHashMap<(AggregationId, i64), FlexBucket>,
    books: FxHashMap<BookKey, BookTop>,
    references: FxHashMap<(MarketId, i64), Decimal>,
    kill: KillSwitchState,
    deviation: DeviationMonitor,
    counters: RiskCounters,
    day_end: Timestamp,
    now_index: i64,
}

impl std::fmt::Debug for RiskEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RiskEngine")
            .field("open_orders", &self.open_orders.len())
            .field("aggregations", &self.aggregations.len())
            .field("strategies", &self.strategies.len())
            .finish_non_exhaustive()
    }
}

impl RiskEngine {
    /// Builds an engine from a validated config, pre-sizing every table.
    pub fn new(config: RiskConfig) -> Result<Self, RiskConfigError> {
        config.validate()?;
        let s = config.sizing.clone();
        let venues = config
            .venues
            .iter()
            .map(|v| VenueState {
                name: v.name.clone(),
                window: SlidingWindow::new(v.max_orders, v.window_ms),
            })
            .collect();
        let mut engine = Self {
            agg_defaults: config.aggregation_defaults.clone(),
            strat_defaults: config.strategy_defaults.clone(),
            day_tz: config.trading_day_timezone,
            market_config: config.markets.clone(),
            markets: map_with_capacity(64),
            venues,
            aggregations: map_with_capacity(s.max_aggregations),
            strategies: map_with_capacity(s.max_strategies),
            open_orders: map_with_capacity(s.max_open_orders),
            seen: set_with_capacity(s.remembered_client_order_ids + s.max_open_orders),
            seen_fifo: VecDeque::with_capacity(s.remembered_client_order_ids + 1),
            agg_positions: map_with_capacity(s.max_position_keys.min(INITIAL_POSITION_KEYS)),
            strat_positions: map_with_capacity(s.max_position_keys.min(INITIAL_POSITION_KEYS)),
            flex: map_with_capacity(s.max_position_keys.min(INITIAL_POSITION_KEYS)),
            books: map_with_capacity(s.max_position_keys.min(INITIAL_POSITION_KEYS)),
            references: map_with_capacity(s.max_position_keys.min(INITIAL_POSITION_KEYS)),
            kill: KillSwitchState::new(
                s.kill_switch_history,
                s.max_aggregations + s.max_strategies,
            ),
            deviation: DeviationMonitor::new(config.deviation.clone(), s.max_position_keys),
            counters: RiskCounters::default(),
            day_end: chrono::DateTime::<chrono::Utc>::MIN_UTC,
            now_index: i64::MIN,
            sizing: s,
        };
        for a in &config.aggregations {
            engine
                .aggregations
                .insert(a.id, engine.new_agg(a.limits.clone(), true));
        }
        for st in &config.strategies {
            engine
                .strategies
                .insert(st.id, StratState::new(st.limits.clone(), true));
        }
        Ok(engine)
    }

    fn new_agg(&self, limits: RiskLimits, custom_limits: bool) -> AggState {
        AggState {
            limits,
            custom_limits,
            open_orders: 0,
            notional_used_cny: Decimal::ZERO,
            capacity: None,
            storage: None,
        }
    }

    // ----- registration and reports -------------------------------------------------------

    /// Registers (or replaces) a market, with its venue window and collar from the config.
    pub fn register_market(&mut self, market: Market) -> Result<(), RiskError> {
        market.validate()?;
        if !self.markets.contains_key(&market.id) && self.markets.len() >= 4096 {
            return Err(RiskError::Full {
                what: "market",
                field: "markets",
                max: 4096,
            });
        }
        let cfg = self.market_config.iter().find(|m| m.market_id == market.id);
        let venue = cfg
            .and_then(|m| m.venue.as_ref())
            .and_then(|name| self.venues.iter().position(|v| &v.name == name))
            .and_then(|i| u32::try_from(i).ok());
        let reference = self
            .markets
            .get(&market.id)
            .and_then(|e| e.reference_cny_per_mwh);
        let entry = MarketEntry {
            venue,
            collar_band_cny_per_mwh: cfg.and_then(|m| m.collar_band_cny_per_mwh),
            collar_band_fraction: cfg.and_then(|m| m.collar_band_fraction),
            reference_cny_per_mwh: reference,
            min_quantity_mw: cfg
                .and_then(|m| m.min_quantity_mw)
                .unwrap_or(crate::limits::DEFAULT_MIN_QUANTITY_MW),
            quantity_decimals: cfg
                .and_then(|m| m.quantity_decimals)
                .unwrap_or(crate::limits::DEFAULT_QUANTITY_DECIMALS),
            horizon_hours: cfg
                .and_then(|m| m.horizon_hours)
                .unwrap_or(crate::limits::DEFAULT_HORIZON_HOURS),
            market,
        };
        self.markets.insert(entry.market.id, entry);
        Ok(())
    }

    /// Reference price for the collar of one interval (last clearing price or forecast).
    pub fn set_reference_price(
        &mut self,
        market: MarketId,
        interval: DeliveryInterval,
        price_cny_per_mwh: Decimal,
    ) -> Result<(), RiskError> {
        if !self.markets.contains_key(&market) {
            return Err(RiskError::UnknownMarket(market));
        }
        let key = (market, interval_index(interval));
        if !self.references.contains_key(&key)
            && self.references.len() >= self.sizing.max_position_keys
        {
            return Err(RiskError::Full {
                what: "reference price",
                field: "max_position_keys",
                max: self.sizing.max_position_keys,
            });
        }
        self.references.insert(key, price_cny_per_mwh);
        Ok(())
    }

    /// Market-wide reference price, used for intervals without their own.
    pub fn set_market_reference_price(
        &mut self,
        market: MarketId,
        price_cny_per_mwh: Option<Decimal>,
    ) -> Result<(), RiskError> {
        let entry = self
            .markets
            .get_mut(&market)
            .ok_or(RiskError::UnknownMarket(market))?;
        entry.reference_cny_per_mwh = price_cny_per_mwh;
        Ok(())
    }

    fn agg_mut(&mut self, id: AggregationId) -> Result<&mut AggState, RiskError> {
        if !self.aggregations.contains_key(&id) {
            if self.aggregations.len() >= self.sizing.max_aggregations {
                return Err(RiskError::Full {
                    what: "aggregation",
                    field: "max_aggregations",
                    max: self.sizing.max_aggregations,
                });
            }
            let state = self.new_agg(self.agg_defaults.clone(), false);
            self.aggregations.insert(id, state);
        }
        self.aggregations.get_mut(&id).ok_or(RiskError::Full {
            what: "aggregation",
            field: "max_aggregations",
            max: self.sizing.max_aggregations,
        })
    }

    /// The aggregation's available flexibility (from the aggregation's incremental capacity).
    pub fn update_capacity(
        &mut self,
        aggregation: AggregationId,
        capacity: Capacity,
    ) -> Result<(), RiskError> {
        self.agg_mut(aggregation)?.capacity = Some(capacity);
        Ok(())
    }

    /// Sets, updates or (with `None`) removes the aggregation's storage budget.
    pub fn set_storage_budget(
        &mut self,
        aggregation: AggregationId,
        budget: Option<StorageBudget>,
        now: Timestamp,
    ) -> Result<(), RiskError> {
        if let Some(b) = &budget {
            validate_budget(aggregation, b)?;
        }
        let now_index = interval_index(DeliveryInterval::containing(now));
        let horizon = self.sizing.storage_horizon_intervals;
        let agg = self.agg_mut(aggregation)?;
        match (budget, agg.storage.as_mut()) {
            (None, _) => agg.storage = None,
            (Some(b), Some(s)) => {
                s.advance_to(now_index);
                s.set_budget(b);
            }
            (Some(b), None) => {
                // Seeded from the open flexibility only when the schedule is new (collecting
                // it on every budget update walked the whole map each tick).
                let mut s = StorageSchedule::new(b, now_index, horizon);
                for ((a, idx), f) in &self.flex {
                    if *a == aggregation {
                        let e = f.energy;
                        s.add(*idx, e.filled_net_sold_mw(), e.open_sell_mw, e.open_buy_mw);
                    }
                }
                self.agg_mut(aggregation)?.storage = Some(s);
            }
        }
        Ok(())
    }

    // ----- pre-trade ---------------------------------------------------------------------

    /// Runs every pre-trade check against the current state. Pure; allocation-free when it
    /// approves.
    pub fn check(&self, intent: &OrderRequest, now: Timestamp) -> Decision {
        self.run_checks(intent, now).map(|_| ()).into()
    }

    /// Checks an intent and, if approved, reserves it (open order, notional, rate tokens). A
    /// rejection is counted and returned as the [`RiskEvent`] to journal and send back to the
    /// strategy.
    pub fn evaluate(&mut self, intent: &OrderRequest, now: Timestamp) -> Result<(), RiskEvent> {
        match self.run_checks(intent, now) {
            Ok(approved) => {
                self.commit(intent, approved, now);
                self.counters.approved += 1;
                Ok(())
            }
            Err(reject) => {
                self.counters.count_reject(reject.code);
                Err(reject.into_event(Some(intent.client_order_id.clone()), now))
            }
        }
    }

    fn run_checks(&self, r: &OrderRequest, now: Timestamp) -> Result<Approved, Reject> {
        let market_scope = Scope::Market(r.market_id);
        checks::kill_switch(&self.kill, r.aggregation_id, r.strategy_id)?;
        checks::quantity(r.quantity_mw, market_scope)?;
        let key = OrderKey::of(&r.client_order_id);
        checks::duplicate(
            self.open_orders.contains_key(&key) || self.seen.contains(&key),
            &r.client_order_id,
        )?;
        checks::tracking(
            "open order",
            self.open_orders.len(),
            self.sizing.max_open_orders,
        )?;
        let Some(m) = self.markets.get(&r.market_id) else {
            return Err(Reject::new(
                crate::event::RejectCode::UnknownMarket,
                market_scope,
                format!(
                    "market {} is not registered with the risk engine",
                    r.market_id
                ),
            ));
        };
        checks::quantity_step(
            market_scope,
            r.quantity_mw,
            m.min_quantity_mw,
            m.quantity_decimals,
        )?;
        checks::horizon(&m.market, r.interval, now, m.horizon_hours)?;
        checks::gate(&m.market, r.interval, now)?;
        checks::price_limits(&m.market, r.price_cny_per_mwh)?;
        let idx = interval_index(r.interval);
        self.check_collar(m, idx, r.price_cny_per_mwh)?;

        let new_day = now >= self.day_end;
        let agg = self.aggregations.get(&r.aggregation_id);
        let agg_limits = agg.map_or(&self.agg_defaults, |a| &a.limits);
        let agg_scope = Scope::Aggregation(r.aggregation_id);
        let notional = notional_of(r.quantity_mw, r.price_cny_per_mwh);
        if let Some(sid) = r.strategy_id {
            self.check_strategy(sid, r, notional, new_day, now)?;
        }
        checks::max_order(agg_limits, agg_scope, r.quantity_mw)?;
        checks::open_orders(agg_limits, agg_scope, agg.map_or(0, |a| a.open_orders))?;
        let venue = m.venue;
        if let Some(v) = venue.and_then(|v| self.venues.get(v as usize).map(|s| (v, s))) {
            checks::venue_throttle(v.0, &v.1.name, &v.1.window, now)?;
        }
        let agg_used = match agg {
            Some(a) if !new_day => a.notional_used_cny,
            _ => Decimal::ZERO,
        };
        checks::daily_notional(agg_limits, agg_scope, agg_used, notional)?;
        self.check_positions(r, agg_limits, idx)?;
        let continuous = m.market.kind == MarketKind::RealTime;
        if continuous {
            let book = self.books.get(&BookKey {
                market_id: r.market_id,
                interval_index: idx,
                product: r.product,
            });
            checks::self_trade(market_scope, book, r.side, r.price_cny_per_mwh)?;
        }
        Ok(Approved {
            venue,
            continuous,
            notional_cny: notional,
            interval_index: idx,
        })
    }

    fn check_collar(&self, m: &MarketEntry, idx: i64, price: Decimal) -> Result<(), Reject> {
        let reference = self
            .references
            .get(&(m.market.id, idx))
            .copied()
            .or(m.reference_cny_per_mwh);
        let Some(reference) = reference else {
            return Ok(());
        };
        match checks::collar_band(reference, m.collar_band_cny_per_mwh, m.collar_band_fraction) {
            Some(band) => checks::collar(Scope::Market(m.market.id), price, reference, band),
            None => Ok(()),
        }
    }

    fn check_strategy(
        &self,
        sid: StrategyId,
        r: &OrderRequest,
        notional: Decimal,
        new_day: bool,
        now: Timestamp,
    ) -> Result<(), Reject> {
        let scope = Scope::Strategy(sid);
        let Some(s) = self.strategies.get(&sid) else {
            checks::tracking(
                "strategy",
                self.strategies.len(),
                self.sizing.max_strategies,
            )?;
            let l = &self.strat_defaults;
            checks::max_order(l, scope, r.quantity_mw)?;
            checks::open_orders(l, scope, 0)?;
            checks::throttle_open(sid, l)?;
            return checks::daily_notional(l, scope, Decimal::ZERO, notional);
        };
        checks::max_order(&s.limits, scope, r.quantity_mw)?;
        checks::open_orders(&s.limits, scope, s.open_orders)?;
        checks::strategy_throttle(sid, &s.bucket, &s.limits, now)?;
        let used = if new_day {
            Decimal::ZERO
        } else {
            s.notional_used_cny
        };
        checks::daily_notional(&s.limits, scope, used, notional)
    }

    fn check_positions(
        &self,
        r: &OrderRequest,
        agg_limits: &RiskLimits,
        idx: i64,
    ) -> Result<(), Reject> {
        let probe = OpenOrder {
            strategy_id: r.strategy_id,
            aggregation_id: r.aggregation_id,
            market_id: r.market_id,
            product: r.product,
            interval: r.interval,
            interval_index: idx,
            side: r.side,
            remaining_mw: r.quantity_mw,
            filled_mw: Decimal::ZERO,
            price_cny_per_mwh: r.price_cny_per_mwh,
            continuous: false,
        };
        let max_keys = self.sizing.max_position_keys;
        let zero = NetBucket::default();
        let pos = self.agg_positions.get(&probe.position_key());
        if pos.is_none() {
            checks::tracking("position", self.agg_positions.len(), max_keys)?;
        }
        let agg_scope = Scope::Aggregation(r.aggregation_id);
        let pos = pos.unwrap_or(&zero);
        checks::net_position(
            agg_limits,
            agg_scope,
            pos,
            r.side,
            r.quantity_mw,
            r.interval,
            r.product,
        )?;
        if let Some(sk) = probe.strategy_key() {
            let spos = self.strat_positions.get(&sk);
            if spos.is_none() {
                checks::tracking("strategy position", self.strat_positions.len(), max_keys)?;
            }
            let limits = self
                .strategies
                .get(&sk.strategy_id)
                .map_or(&self.strat_defaults, |s| &s.limits);
            let scope = Scope::Strategy(sk.strategy_id);
            let spos = spos.unwrap_or(&zero);
            checks::net_position(
                limits,
                scope,
                spos,
                r.side,
                r.quantity_mw,
                r.interval,
                r.product,
            )?;
        }
        let flex_key = (r.aggregation_id, idx);
        let flex = self.flex.get(&flex_key);
        if flex.is_none() {
            checks::tracking("flexibility", self.flex.len(), max_keys)?;
        }
        let flex = flex.copied().unwrap_or_default();
        let agg = self.aggregations.get(&r.aggregation_id);
        checks::capacity_headroom(
            r.aggregation_id,
            agg.and_then(|a| a.capacity),
            &flex,
            r.product,
            r.side,
            r.quantity_mw,
            r.interval,
        )?;
        let storage = agg.and_then(|a| a.storage.as_ref());
        if let (Some(s), Commitment::Energy) = (storage, Commitment::of(r.product, r.side)) {
            checks::storage_energy(r.aggregation_id, s, idx, r.side, r.quantity_mw, r.interval)?;
        }
        Ok(())
    }

    fn commit(&mut self, r: &OrderRequest, a: Approved, now: Timestamp) {
        if now >= self.day_end {
            self.roll_day(now);
        }
        if let Some(sid) = r.strategy_id {
            if !self.strategies.contains_key(&sid) {
                let state = StratState::new(self.strat_defaults.clone(), false);
                self.strategies.insert(sid, state);
            }
            if let Some(s) = self.strategies.get_mut(&sid) {
                s.bucket.record(now);
                s.notional_used_cny += a.notional_cny;
            }
        }
        if let Some(v) = a.venue.and_then(|v| self.venues.get_mut(v as usize)) {
            v.window.record(now);
        }
        if let Ok(agg) = self.agg_mut(r.aggregation_id) {
            agg.notional_used_cny += a.notional_cny;
        }
        self.track(r, a.interval_index, a.continuous);
    }

    /// Forgets an approved intent the OMS never turned into an order. Notional and rate
    /// tokens stay spent; the client order id stays used.
    pub fn release_reservation(&mut self, id: &ClientOrderId) -> bool {
        self.close(OrderKey::of(id))
    }

    // ----- order events ------------------------------------------------------------------

    /// Mirrors one journaled order event. Call after `OrderLedger::apply` succeeded, with its
    /// outcome: stale and duplicate reports (no `to`) change nothing here either.
    pub fn apply_order_event(&mut self, event: &OrderEvent, outcome: &Outcome) {
        let Some(to) = outcome.to else {
            return;
        };
        let key = OrderKey::of(&event.client_order_id);
        match &event.kind {
            OrderEventKind::Created { request } | OrderEventKind::Recovered { request } => {
                if !self.open_orders.contains_key(&key) {
                    let continuous = self
                        .markets
                        .get(&request.market_id)
                        .is_some_and(|m| m.market.kind == MarketKind::RealTime);
                    self.track(request, interval_index(request.interval), continuous);
                }
            }
            OrderEventKind::CancelRequested { .. } => {}
            // Ended locally (never sent, or unknown to a reset venue): no longer open exposure.
            OrderEventKind::Unsent { .. } | OrderEventKind::Lost { .. } => {
                if to.is_terminal() {
                    self.close(key);
                }
            }
            OrderEventKind::Report { report } => {
                if let Some(fill) = &outcome.fill {
                    self.on_fill(key, fill.quantity_mw);
                }
                if let ExecKind::Replaced {
                    quantity_mw,
                    price_cny_per_mwh,
                } = report.kind
                {
                    self.on_replace(key, quantity_mw, price_cny_per_mwh);
                }
                if to.is_terminal() {
                    self.close(key);
                }
            }
        }
    }

    fn remember(&mut self, key: OrderKey) {
        if !self.seen.insert(key) {
            return;
        }
        if self.seen_fifo.len() >= self.sizing.remembered_client_order_ids {
            if let Some(old) = self.seen_fifo.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen_fifo.push_back(key);
    }

    fn track(&mut self, r: &OrderRequest, idx: i64, continuous: bool) {
        let key = OrderKey::of(&r.client_order_id);
        let order = OpenOrder {
            strategy_id: r.strategy_id,
            aggregation_id: r.aggregation_id,
            market_id: r.market_id,
            product: r.product,
            interval: r.interval,
            interval_index: idx,
            side: r.side,
            remaining_mw: Decimal::ZERO,
            filled_mw: Decimal::ZERO,
            price_cny_per_mwh: r.price_cny_per_mwh,
            continuous,
        };
        self.remember(key);
        if let Some(sid) = r.strategy_id {
            if !self.strategies.contains_key(&sid) {
                let state = StratState::new(self.strat_defaults.clone(), false);
                self.strategies.insert(sid, state);
            }
            if let Some(s) = self.strategies.get_mut(&sid) {
                s.open_orders += 1;
            }
        }
        if !self.aggregations.contains_key(&r.aggregation_id) {
            // A venue fact: recorded even past the sizing.
            let state = self.new_agg(self.agg_defaults.clone(), false);
            self.aggregations.insert(r.aggregation_id, state);
        }
        if let Some(a) = self.aggregations.get_mut(&r.aggregation_id) {
            a.open_orders += 1;
        }
        if continuous {
            self.books
                .entry(order.book_key())
                .or_default()
                .insert(r.side, r.price_cny_per_mwh);
        }
        self.shift(&order, r.quantity_mw, Decimal::ZERO);
        let mut order = order;
        order.remaining_mw = r.quantity_mw;
        self.open_orders.insert(key, order);
    }

    /// Moves `d_open` / `d_filled` MW of an order into every bucket it counts in.
    fn shift(&mut self, o: &OpenOrder, d_open: Decimal, d_filled: Decimal) {
        self.agg_positions
            .entry(o.position_key())
            .or_default()
            .add(o.side, d_open, d_filled);
        if let Some(sk) = o.strategy_key() {
            self.strat_positions
                .entry(sk)
                .or_default()
                .add(o.side, d_open, d_filled);
        }
        self.flex
            .entry((o.aggregation_id, o.interval_index))
            .or_default()
            .add(o.product, o.side, d_open, d_filled);
        if Commitment::of(o.product, o.side) != Commitment::Energy {
            return;
        }
        let storage = self
            .aggregations
            .get_mut(&o.aggregation_id)
            .and_then(|a| a.storage.as_mut());
        if let Some(s) = storage {
            match o.side {
                Side::Sell => s.add(o.interval_index, d_filled, d_open, Decimal::ZERO),
                Side::Buy => s.add(o.interval_index, -d_filled, Decimal::ZERO, d_open),
            }
        }
    }

    fn on_fill(&mut self, key: OrderKey, quantity_mw: Decimal) {
        let Some(mut o) = self.open_orders.get(&key).copied() else {
            return;
        };
        let q = quantity_mw.min(o.remaining_mw).max(Decimal::ZERO);
        self.shift(&o, -q, q);
        o.remaining_mw -= q;
        o.filled_mw += q;
        self.open_orders.insert(key, o);
    }

    fn on_replace(&mut self, key: OrderKey, quantity_mw: Decimal, price: Decimal) {
        let Some(mut o) = self.open_orders.get(&key).copied() else {
            return;
        };
        let remaining = (quantity_mw - o.filled_mw).max(Decimal::ZERO);
        self.shift(&o, remaining - o.remaining_mw, Decimal::ZERO);
        if o.continuous {
            self.book_remove(&o, key);
            self.books
                .entry(o.book_key())
                .or_default()
                .insert(o.side, price);
        }
        o.remaining_mw = remaining;
        o.price_cny_per_mwh = price;
        self.open_orders.insert(key, o);
    }

    /// Stops counting an order as open: its remaining quantity leaves the buckets.
    fn close(&mut self, key: OrderKey) -> bool {
        let Some(o) = self.open_orders.remove(&key) else {
            return false;
        };
        self.shift(&o, -o.remaining_mw, Decimal::ZERO);
        if let Some(s) = o.strategy_id.and_then(|id| self.strategies.get_mut(&id)) {
            s.open_orders = s.open_orders.saturating_sub(1);
        }
        if let Some(a) = self.aggregations.get_mut(&o.aggregation_id) {
            a.open_orders = a.open_orders.saturating_sub(1);
        }
        if o.continuous {
            self.book_remove(&o, key);
        }
        true
    }

    /// Removes an order from its book summary; rescans our open orders only when it was the
    /// best price on its side (rare, and off the check path).
    fn book_remove(&mut self, o: &OpenOrder, key: OrderKey) {
        let bk = o.book_key();
        let Some(top) = self.books.get(&bk).copied() else {
            return;
        };
        let (count, best) = match o.side {
            Side::Buy => (top.buys, top.best_buy),
            Side::Sell => (top.sells, top.best_sell),
        };
        if count <= 1 || o.price_cny_per_mwh == best {
            let mut rebuilt = BookTop::default();
            for (k, other) in &self.open_orders {
                if *k != key && other.continuous && other.book_key() == bk {
                    rebuilt.insert(other.side, other.price_cny_per_mwh);
                }
            }
            if rebuilt.buys == 0 && rebuilt.sells == 0 {
                self.books.remove(&bk);
            } else {
                self.books.insert(bk, rebuilt);
            }
            return;
        }
        if let Some(t) = self.books.get_mut(&bk) {
            match o.side {
                Side::Buy => t.buys -= 1,
                Side::Sell => t.sells -= 1,
            }
        }
    }

    // ----- time --------------------------------------------------------------------------

    /// Clock tick: resets daily notional at the trading day's midnight, moves storage
    /// schedules to the current interval and drops state of intervals long delivered.
    pub fn on_tick(&mut self, now: Timestamp) {
        if now >= self.day_end {
            self.roll_day(now);
        }
        let idx = interval_index(DeliveryInterval::containing(now));
        if idx <= self.now_index {
            return;
        }
        self.now_index = idx;
        for a in self.aggregations.values_mut() {
            if let Some(s) = a.storage.as_mut() {
                s.advance_to(idx);
            }
        }
        let keep = idx - RETAINED_PAST_INTERVALS;
        self.agg_positions
            .retain(|(k, _), b| interval_index(k.interval) >= keep || !b.is_flat_and_closed());
        self.strat_positions
            .retain(|k, b| interval_index(k.interval) >= keep || !b.is_flat_and_closed());
        self.flex
            .retain(|(_, i), f| *i >= keep || !f.energy.is_flat_and_closed());
        self.references.retain(|(_, i), _| *i >= idx);
        self.deviation.prune_before(keep);
    }

    fn roll_day(&mut self, now: Timestamp) {
        for a in self.aggregations.values_mut() {
            a.notional_used_cny = Decimal::ZERO;
        }
        for s in self.strategies.values_mut() {
            s.notional_used_cny = Decimal::ZERO;
        }
        self.day_end = next_local_midnight(self.day_tz, now);
    }

    // ----- kill switch -------------------------------------------------------------------

    /// Engages a kill switch: new intents in scope are refused until release. Returns the open
    /// orders in scope, which the OMS must cancel.
    pub fn engage_kill_switch(
        &mut self,
        scope: KillScope,
        who: &str,
        why: &str,
        at: Timestamp,
    ) -> Result<KillOutcome, RiskError> {
        let newly_engaged = self.kill.engage(scope, who, why, at)?;
        let mut cancel: Vec<ClientOrderId> = self
            .open_orders
            .iter()
            .filter(|(_, o)| match scope {
                KillScope::Global => true,
                KillScope::Aggregation(id) => o.aggregation_id == id,
                KillScope::Strategy(id) => o.strategy_id == Some(id),
            })
            .filter_map(|(k, _)| k.to_client_order_id())
            .collect();
        cancel.sort();
        let event = RiskEvent::alert(
            AlertCode::KillSwitchEngaged,
            scope.into(),
            format!(
                "engaged by {who}: {why}; {} open orders to cancel",
                cancel.len()
            ),
            at,
        );
        self.counters.count_alert(AlertCode::KillSwitchEngaged);
        Ok(KillOutcome {
            newly_engaged,
            cancel,
            event,
        })
    }

    pub fn release_kill_switch(
        &mut self,
        scope: KillScope,
        who: &str,
        at: Timestamp,
    ) -> Result<RiskEvent, RiskError> {
        let ended = self.kill.release(scope, who, at)?;
        self.counters.count_alert(AlertCode::KillSwitchReleased);
        Ok(RiskEvent::alert(
            AlertCode::KillSwitchReleased,
            scope.into(),
            format!(
                "released by {who}; engaged by {} at {} because: {}",
                ended.who, ended.at, ended.why
            ),
            at,
        ))
    }

    pub fn kill_switches(&self) -> &KillSwitchState {
        &self.kill
    }

    // ----- limits ------------------------------------------------------------------------

    pub fn limits(&self, scope: LimitScope) -> &RiskLimits {
        match scope {
            LimitScope::AggregationDefaults => &self.agg_defaults,
            LimitScope::StrategyDefaults => &self.strat_defaults,
            LimitScope::Aggregation(id) => self
                .aggregations
                .get(&id)
                .map_or(&self.agg_defaults, |a| &a.limits),
            LimitScope::Strategy(id) => self
                .strategies
                .get(&id)
                .map_or(&self.strat_defaults, |s| &s.limits),
        }
    }

    /// Replaces limits at run time and returns the audit record (old → new). Defaults flow to
    /// every aggregation or strategy without limits of its own.
    pub fn update_limits(
        &mut self,
        scope: LimitScope,
        new: RiskLimits,
        who: &str,
        at: Timestamp,
    ) -> Result<LimitChange, RiskError> {
        new.validate("limits")?;
        let old = self.limits(scope).clone();
        match scope {
            LimitScope::AggregationDefaults => {
                self.agg_defaults = new.clone();
                for a in self.aggregations.values_mut().filter(|a| !a.custom_limits) {
                    a.limits = new.clone();
                }
            }
            LimitScope::StrategyDefaults => {
                self.strat_defaults = new.clone();
                for s in self.strategies.values_mut().filter(|s| !s.custom_limits) {
                    s.limits = new.clone();
                    s.bucket.reconfigure(new.orders_per_second, new.order_burst);
                }
            }
            LimitScope::Aggregation(id) => {
                let a = self.agg_mut(id)?;
                a.limits = new.clone();
                a.custom_limits = true;
            }
            LimitScope::Strategy(id) => {
                if !self.strategies.contains_key(&id) {
                    if self.strategies.len() >= self.sizing.max_strategies {
                        return Err(RiskError::Full {
                            what: "strategy",
                            field: "max_strategies",
                            max: self.sizing.max_strategies,
                        });
                    }
                    self.strategies
                        .insert(id, StratState::new(new.clone(), true));
                }
                if let Some(s) = self.strategies.get_mut(&id) {
                    s.bucket.reconfigure(new.orders_per_second, new.order_burst);
                    s.limits = new.clone();
                    s.custom_limits = true;
                }
            }
        }
        self.counters.count_alert(AlertCode::LimitsChanged);
        Ok(LimitChange {
            scope,
            old,
            new,
            who: who.to_owned(),
            at,
        })
    }

    // ----- post-trade --------------------------------------------------------------------

    /// Grades a metered interval; a critical breach engages the responsible strategy's (or
    /// the aggregation's) kill switch when the policy says so.
    pub fn record_delivery(&mut self, sample: &DeliverySample, at: Timestamp) -> DeviationOutcome {
        let Some((severity, alert)) = self.deviation.record(sample, at) else {
            return DeviationOutcome::default();
        };
        self.counters.count_event(&alert);
        let mut outcome = DeviationOutcome {
            alert: Some(alert),
            kill: None,
        };
        if severity == Severity::Critical && self.deviation.policy().critical_engages_kill_switch {
            let scope = sample.strategy_id.map_or(
                KillScope::Aggregation(sample.aggregation_id),
                KillScope::Strategy,
            );
            let why = outcome
                .alert
                .as_ref()
                .map_or_else(String::new, |a| a.message.clone());
            outcome.kill = self
                .engage_kill_switch(scope, "deviation-monitor", &why, at)
                .ok();
        }
        outcome
    }

    pub fn deviation_monitor(&self) -> &DeviationMonitor {
        &self.deviation
    }

    pub fn counters(&self) -> &RiskCounters {
        &self.counters
    }

    /// Counts an event produced outside the engine (e.g. by the actor), by its code.
    pub fn count_event(&mut self, event: &RiskEvent) {
        self.counters.count_event(event);
    }

    pub fn open_order_count(&self) -> usize {
        self.open_orders.len()
    }

    /// The aggregation's position bucket for one market, interval and product.
    pub fn position(&self, key: &AggPosKey) -> Option<&NetBucket> {
        self.agg_positions.get(key)
    }

    pub fn flexibility(
        &self,
        aggregation: AggregationId,
        interval: DeliveryInterval,
    ) -> FlexBucket {
        self.flex
            .get(&(aggregation, interval_index(interval)))
            .copied()
            .unwrap_or_default()
    }

    // ----- exposure view -----------------------------------------------------------------

    pub fn exposure_aggregation(&self, id: AggregationId, now: Timestamp) -> ExposureView {
        let agg = self.aggregations.get(&id);
        let limits = agg.map_or(&self.agg_defaults, |a| &a.limits).clone();
        let fresh = now < self.day_end;
        let mut positions: Vec<PositionRow> = self
            .agg_positions
            .iter()
            .filter(|((k, _), _)| k.aggregation_id == id)
            .map(|((k, p), b)| row(k.market_id, k.interval, *p, b, &limits))
            .collect();
        positions.sort_by_key(|r| (r.interval, r.market_id, r.product));
        let capacity = agg.and_then(|a| a.capacity);
        let cap = capacity.unwrap_or_default();
        let storage = agg.and_then(|a| a.storage.as_ref());
        let mut headroom: Vec<HeadroomRow> = self
            .flex
            .iter()
            .filter(|((a, _), _)| *a == id)
            .filter_map(|((_, idx), f)| {
                let interval = DeliveryInterval::from_epoch_seconds(idx * 900).ok()?;
                Some(HeadroomRow {
                    interval,
                    up_used_mw: f.up_used_mw(),
                    up_left_mw: cap.up_flex_mw - f.up_used_mw(),
                    down_used_mw: f.down_used_mw(),
                    down_left_mw: cap.down_flex_mw - f.down_used_mw(),
                    storage_envelope_kwh: storage.and_then(|s| s.envelope(*idx)),
                })
            })
            .collect();
        headroom.sort_by_key(|h| h.interval);
        ExposureView {
            scope: Scope::Aggregation(id),
            kill_switch: self.kill.engagement(KillScope::Aggregation(id)).cloned(),
            open_orders: LimitUse {
                used: Decimal::from(agg.map_or(0, |a| a.open_orders)),
                limit: Decimal::from(limits.max_open_orders),
            },
            daily_notional_cny: LimitUse {
                used: agg
                    .filter(|_| fresh)
                    .map_or(Decimal::ZERO, |a| a.notional_used_cny),
                limit: limits.daily_notional_cny,
            },
            limits,
            capacity,
            positions,
            headroom,
        }
    }

    pub fn exposure_strategy(&self, id: StrategyId, now: Timestamp) -> ExposureView {
        let s = self.strategies.get(&id);
        let limits = s.map_or(&self.strat_defaults, |s| &s.limits).clone();
        let fresh = now < self.day_end;
        let mut positions: Vec<PositionRow> = self
            .strat_positions
            .iter()
            .filter(|(k, _)| k.strategy_id == id)
            .map(|(k, b)| row(k.market_id, k.interval, k.product, b, &limits))
            .collect();
        positions.sort_by_key(|r| (r.interval, r.market_id, r.product));
        ExposureView {
            scope: Scope::Strategy(id),
            kill_switch: self.kill.engagement(KillScope::Strategy(id)).cloned(),
            open_orders: LimitUse {
                used: Decimal::from(s.map_or(0, |s| s.open_orders)),
                limit: Decimal::from(limits.max_open_orders),
            },
            daily_notional_cny: LimitUse {
                used: s
                    .filter(|_| fresh)
                    .map_or(Decimal::ZERO, |s| s.notional_used_cny),
                limit: limits.daily_notional_cny,
            },
            limits,
            capacity: None,
            positions,
            headroom: Vec::new(),
        }
    }
}

fn row(
    market_id: MarketId,
    interval: DeliveryInterval,
    product: Product,
    b: &NetBucket,
    limits: &RiskLimits,
) -> PositionRow {
    PositionRow {
        market_id,
        interval,
        product,
        bucket: *b,
        worst_net_sold_mw: b.worst_net_sold_mw(),
        worst_net_bought_mw: b.worst_net_bought_mw(),
        max_net_position_mw: limits.max_net_position_mw,
    }
}

fn validate_budget(aggregation: AggregationId, b: &StorageBudget) -> Result<(), RiskError> {
    let bad = |reason: String| RiskError::InvalidBudget {
        aggregation,
        reason,
    };
    if b.soc_min_kwh < Decimal::ZERO || b.soc_min_kwh > b.soc_max_kwh {
        return Err(bad(format!(
            "need 0 <= soc_min_kwh ({}) <= soc_max_kwh ({})",
            b.soc_min_kwh, b.soc_max_kwh
        )));
    }
    if b.round_trip_efficiency <= Decimal::ZERO || b.round_trip_efficiency > Decimal::ONE {
        return Err(bad(format!(
            "round_trip_efficiency {} must be in (0, 1]",
            b.round_trip_efficiency
        )));
    }
    if b.energy_kwh < Decimal::ZERO {
        return Err(bad(format!(
            "energy_kwh {} must not be negative",
            b.energy_kwh
        )));
    }
    Ok(())
}

/// The first local midnight in `tz` strictly after `now`, in UTC.
fn next_local_midnight(tz: chrono_tz::Tz, now: Timestamp) -> Timestamp {
    let local_date = now.with_timezone(&tz).date_naive();
    let next = local_date.succ_opt().unwrap_or(local_date);
    tz.from_local_datetime(&next.and_hms_opt(0, 0, 0).unwrap_or_default())
        .earliest()
        .map(|d| d.with_timezone(&chrono::Utc))
        .unwrap_or(now + chrono::Duration::days(1))
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
