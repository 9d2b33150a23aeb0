//! [`StrategyHost`]: runs one strategy, allocates its client order ids, mirrors its open
//! orders and positions, and snapshots all of it. The Strategy actor and the backtest both
//! drive a strategy only through this type, which is what makes their intents identical.

use super::{
    CapacityUpdate, MarketData, OrderIntent, RiskRejection, Strategy, StrategyBook,
    StrategyContext, StrategyError, StrategySnapshot, Timer, DEFAULT_MAX_INTENTS_PER_CALLBACK,
    MAX_INTENTS_PER_CALLBACK, MAX_OPEN_ORDERS, MAX_POSITIONS,
};
use crate::ids::{AggregationId, ClientOrderId, StrategyId, CLIENT_ORDER_ID_MAX_LEN};
use crate::market::DeliveryInterval;
use crate::order::{ExecKind, ExecReport, Order, OrderStatus};
use crate::position::{Position, PositionKey};
use crate::Timestamp;
use serde::{Deserialize, Serialize};

/// Longest id prefix: leaves room for `-` and 20 digits of a `u64` within
/// [`CLIENT_ORDER_ID_MAX_LEN`].
pub const MAX_ID_PREFIX_LEN: usize = CLIENT_ORDER_ID_MAX_LEN - 21;

/// Allocates `<prefix>-<n>` client order ids, `n` = 1, 2, 3, ... never reused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientIdAllocator {
    prefix: String,
    next: u64,
}

impl ClientIdAllocator {
    /// `prefix`: 1..=15 characters of `[A-Za-z0-9_.:]`. `-` is refused so that `s1-23` and
    /// `s1-2-3` can never come from two different prefixes.
    pub fn new(prefix: impl Into<String>) -> Result<Self, StrategyError> {
        let prefix = prefix.into();
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_ID_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':'));
        if !valid {
            return Err(StrategyError::param(
                "id_prefix",
                format!("{prefix:?} must be 1..={MAX_ID_PREFIX_LEN} characters of [A-Za-z0-9_.:]"),
            ));
        }
        Ok(Self { prefix, next: 1 })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The number the next id will carry.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    pub fn allocate(&mut self) -> Result<ClientOrderId, StrategyError> {
        let n = self.next;
        self.next = n.checked_add(1).ok_or_else(|| {
            StrategyError::Failed(format!(
                "client order id space of {} exhausted",
                self.prefix
            ))
        })?;
        ClientOrderId::new(format!("{}-{n}", self.prefix))
            .map_err(|e| StrategyError::Failed(e.to_string()))
    }

    /// Makes sure an id this allocator may have issued before (found in the journal) is never
    /// issued again.
    pub fn observe(&mut self, id: &ClientOrderId) {
        let n = id
            .as_str()
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(n) = n {
            self.next = self.next.max(n.saturating_add(1));
        }
    }
}

/// Identity and limits of one hosted strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    pub strategy_id: StrategyId,
    pub aggregation_id: AggregationId,
    /// Client order id prefix; `None` means `s<strategy_id>`.
    pub id_prefix: Option<String>,
    pub max_intents_per_callback: usize,
}

impl HostConfig {
    pub fn new(strategy_id: StrategyId, aggregation_id: AggregationId) -> Self {
        Self {
            strategy_id,
            aggregation_id,
            id_prefix: None,
            max_intents_per_callback: DEFAULT_MAX_INTENTS_PER_CALLBACK,
        }
    }

    fn prefix(&self) -> String {
        self.id_prefix
            .clone()
            .unwrap_or_else(|| format!("s{}", self.strategy_id))
    }

    fn validate(&self) -> Result<(), StrategyError> {
        if !(1..=MAX_INTENTS_PER_CALLBACK).contains(&self.max_intents_per_callback) {
            return Err(StrategyError::param(
                "max_intents_per_callback",
                format!(
                    "{} outside 1..={MAX_INTENTS_PER_CALLBACK}",
                    self.max_intents_per_callback
                ),
            ));
        }
        Ok(())
    }
}

/// Everything a hosted strategy needs to continue after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSnapshot {
    pub strategy: StrategySnapshot,
    pub ids: ClientIdAllocator,
    pub open_orders: Vec<Order>,
    pub positions: Vec<(PositionKey, Position)>,
    pub capacity: Option<CapacityUpdate>,
}

/// Drives one strategy. Each `on_*` returns the intents of that callback, in emission order.
pub struct StrategyHost {
    strategy: Box<dyn Strategy>,
    config: HostConfig,
    ids: ClientIdAllocator,
    book: StrategyBook,
    capacity: Option<CapacityUpdate>,
    intents: Vec<OrderIntent>,
}

impl std::fmt::Debug for StrategyHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrategyHost")
            .field("kind", &self.strategy.kind())
            .field("config", &self.config)
            .field("next_id", &self.ids.next_seq())
            .field("open_orders", &self.book.open.len())
            .finish()
    }
}

impl StrategyHost {
    pub fn new(strategy: Box<dyn Strategy>, config: HostConfig) -> Result<Self, StrategyError> {
        config.validate()?;
        let ids = ClientIdAllocator::new(config.prefix())?;
        Ok(Self {
            strategy,
            intents: Vec::with_capacity(config.max_intents_per_callback.min(64)),
            config,
            ids,
            book: StrategyBook::default(),
            capacity: None,
        })
    }

    /// Rebuilds a host from a snapshot; `strategy` is a fresh instance of the same kind.
    pub fn restore(
        mut strategy: Box<dyn Strategy>,
        config: HostConfig,
        snapshot: &HostSnapshot,
    ) -> Result<Self, StrategyError> {
        strategy.restore(&snapshot.strategy)?;
        let mut host = Self::new(strategy, config)?;
        if snapshot.ids.prefix() != host.ids.prefix() {
            return Err(StrategyError::Snapshot(format!(
                "snapshot id prefix {:?} differs from the configured {:?}",
                snapshot.ids.prefix(),
                host.ids.prefix()
            )));
        }
        if snapshot.open_orders.len() > MAX_OPEN_ORDERS || snapshot.positions.len() > MAX_POSITIONS
        {
            return Err(StrategyError::Snapshot(format!(
                "snapshot holds {} open orders and {} positions; limits are {MAX_OPEN_ORDERS} and {MAX_POSITIONS}",
                snapshot.open_orders.len(),
                snapshot.positions.len()
            )));
        }
        host.ids = snapshot.ids.clone();
        for order in &snapshot.open_orders {
            host.ids.observe(order.id());
            host.book.open.insert(order.id().clone(), order.clone());
        }
        host.book.positions = snapshot.positions.iter().cloned().collect();
        host.capacity = snapshot.capacity;
        Ok(host)
    }

    pub fn snapshot(&self) -> Result<HostSnapshot, StrategyError> {
        Ok(HostSnapshot {
            strategy: self.strategy.snapshot()?,
            ids: self.ids.clone(),
            open_orders: self.book.open.values().cloned().collect(),
            positions: self
                .book
                .positions
                .iter()
                .map(|(k, p)| (*k, p.clone()))
                .collect(),
            capacity: self.capacity,
        })
    }

    pub fn kind(&self) -> &'static str {
        self.strategy.kind()
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    pub fn book(&self) -> &StrategyBook {
        &self.book
    }

    pub fn next_client_seq(&self) -> u64 {
        self.ids.next_seq()
    }

    /// After a journal replay: never re-issue any of these ids.
    pub fn observe_client_ids<'i>(&mut self, ids: impl IntoIterator<Item = &'i ClientOrderId>) {
        for id in ids {
            self.ids.observe(id);
        }
    }

    /// Seeds the mirror with an open order from the OMS ledger (restart without a snapshot,
    /// or an order recovered at reconciliation). Terminal orders and other aggregations'
    /// orders are ignored.
    pub fn adopt_order(&mut self, order: &Order) -> Result<(), StrategyError> {
        self.ids.observe(order.id());
        if order.status.is_terminal() || order.request.aggregation_id != self.config.aggregation_id
        {
            return Ok(());
        }
        if self.book.open.len() >= MAX_OPEN_ORDERS && !self.book.open.contains_key(order.id()) {
            return Err(StrategyError::OpenOrderLimit {
                limit: MAX_OPEN_ORDERS,
            });
        }
        self.book.open.insert(order.id().clone(), order.clone());
        Ok(())
    }

    /// Seeds a position (from the OMS ledger) for the strategy's aggregation.
    pub fn adopt_position(&mut self, key: PositionKey, position: Position) {
        if key.aggregation_id == self.config.aggregation_id {
            self.book.positions.insert(key, position);
            self.bound_positions();
        }
    }

    /// Forgets positions of intervals before `interval` (settled history).
    pub fn prune_positions_before(&mut self, interval: DeliveryInterval) {
        self.book.positions.retain(|k, _| k.interval >= interval);
    }

    pub fn on_market_data(
        &mut self,
        now: Timestamp,
        data: &MarketData,
    ) -> Result<&[OrderIntent], StrategyError> {
        self.run(now, |s, ctx| s.on_market_data(ctx, data))
    }

    pub fn on_capacity(
        &mut self,
        now: Timestamp,
        update: &CapacityUpdate,
    ) -> Result<&[OrderIntent], StrategyError> {
        if update.aggregation_id == self.config.aggregation_id {
            self.capacity = Some(*update);
        }
        self.run(now, |s, ctx| s.on_capacity(ctx, update))
    }

    /// `status`: the order's status after the report, from the OMS ledger.
    pub fn on_exec_report(
        &mut self,
        now: Timestamp,
        report: &ExecReport,
        status: OrderStatus,
    ) -> Result<&[OrderIntent], StrategyError> {
        self.apply_report(report, status);
        self.run(now, |s, ctx| s.on_exec_report(ctx, report, status))
    }

    pub fn on_risk_reject(
        &mut self,
        now: Timestamp,
        reject: &RiskRejection,
    ) -> Result<&[OrderIntent], StrategyError> {
        // A refused new order never reached the venue; a refused cancel or replace leaves the
        // order working, which the mirror already shows.
        if let Some(order) = self.book.open.get(&reject.client_order_id) {
            if order.status == OrderStatus::New {
                self.book.open.remove(&reject.client_order_id);
            }
        }
        self.run(now, |s, ctx| s.on_risk_reject(ctx, reject))
    }

    pub fn on_timer(
        &mut self,
        now: Timestamp,
        timer: &Timer,
    ) -> Result<&[OrderIntent], StrategyError> {
        self.run(now, |s, ctx| s.on_timer(ctx, timer))
    }

    fn run(
        &mut self,
        now: Timestamp,
        call: impl FnOnce(&mut dyn Strategy, &mut StrategyContext<'_>) -> Result<(), StrategyError>,
    ) -> Result<&[OrderIntent], StrategyError> {
        self.intents.clear();
        let mut ctx = StrategyContext::new(
            now,
            self.config.strategy_id,
            self.config.aggregation_id,
            &self.book,
            self.capacity.as_ref(),
            &mut self.ids,
            &mut self.intents,
            self.config.max_intents_per_callback,
        );
        if let Err(e) = call(self.strategy.as_mut(), &mut ctx) {
            self.intents.clear();
            return Err(e);
        }
        self.record_intents(now);
        Ok(&self.intents)
    }

    /// Mirrors the intents just handed out: new orders are open (status `new`), cancels pending.
    fn record_intents(&mut self, now: Timestamp) {
        for intent in &self.intents {
            match intent {
                OrderIntent::New(request) => {
                    if let Ok(order) = Order::new(request.clone(), now) {
                        self.book
                            .open
                            .insert(request.client_order_id.clone(), order);
                    }
                }
                OrderIntent::Cancel { client_order_id } => {
                    if let Some(order) = self.book.open.get_mut(client_order_id) {
                        // Best effort: the OMS ledger is authoritative and reports will follow.
                        let _ = order.request_cancel(now);
                    }
                }
                OrderIntent::Replace { .. } => {}
            }
        }
    }

    fn apply_report(&mut self, report: &ExecReport, status: OrderStatus) {
        let Some(order) = self.book.open.get_mut(&report.client_order_id) else {
            return;
        };
        match &report.kind {
            ExecKind::Fill {
                fill_id,
                quantity_mw,
                price_cny_per_mwh,
            } if !order.fill_ids.contains(fill_id) => {
                order.fill_ids.push(*fill_id);
                order.filled_mw += *quantity_mw;
                order.filled_value += *quantity_mw * *price_cny_per_mwh;
                let r = &order.request;
                let key = PositionKey {
                    aggregation_id: r.aggregation_id,
                    market_id: r.market_id,
                    interval: r.interval,
                };
                self.book.positions.entry(key).or_default().apply_fill(
                    r.side,
                    *quantity_mw,
                    *price_cny_per_mwh,
                );
            }
            ExecKind::Replaced {
                quantity_mw,
                price_cny_per_mwh,
            } => {
                order.quantity_mw = *quantity_mw;
                order.price_cny_per_mwh = *price_cny_per_mwh;
            }
            _ => {}
        }
        if order.venue_order_id.is_none() {
            order.venue_order_id.clone_from(&report.venue_order_id);
        }
        order.status = status;
        order.last_report_seq = order.last_report_seq.max(report.seq);
        order.updated_at = report.at;
        if status.is_terminal() {
            self.book.open.remove(&report.client_order_id);
        }
        self.bound_positions();
    }

    /// Past [`MAX_POSITIONS`], drops the oldest intervals' positions down to 90 % of it: one
    /// sort per tenth of the bound instead of a scan of every position per fill (the year-long
    /// backtest spent most of its time in that scan).
    fn bound_positions(&mut self) {
        if self.book.positions.len() <= MAX_POSITIONS {
            return;
        }
        let mut keys: Vec<PositionKey> = self.book.positions.keys().copied().collect();
        keys.sort_unstable_by_key(|k| (k.interval, k.market_id, k.aggregation_id));
        let excess = keys.len() - MAX_POSITIONS * 9 / 10;
        for k in &keys[..excess] {
            self.book.positions.remove(k);
        }
    }
}
