//! Built-in real-time threshold trading (`real_time_threshold`): sell flexibility when the
//! real-time price crosses above `sell_above_cny_per_mwh`, buy when it crosses below
//! `buy_below_cny_per_mwh`.
//!
//! Invariants:
//! - Only crossings trigger: a price that stays above the threshold does not sell again. The
//!   first price seen for an interval counts as a crossing when it is already beyond.
//! - The reference is the best bid for selling and the best ask for buying (book top), or the
//!   last trade price (price stream). Orders are immediate-or-cancel at that price.
//! - Quantity = min(max_order_mw, the aggregation's flexibility in that direction, room left
//!   under max_position_mw for the interval counting fills and open orders), rounded down to
//!   0.001 MW. No capacity update yet means no flexibility, so no order.
//! - Only intervals that have not started yet are traded.

use super::params::check_range;
use super::{
    MarketData, NewOrder, Strategy, StrategyContext, StrategyError, StrategyInit, StrategyParams,
    StrategySnapshot,
};
use crate::market::{DeliveryInterval, Market};
use crate::order::{Side, TimeInForce};
use rust_decimal::{Decimal, RoundingStrategy};
use rust_decimal_macros::dec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Intervals whose last reference prices are remembered.
const MAX_TRACKED_INTERVALS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdParams {
    /// Sell when the bid crosses above this, CNY/MWh (required).
    pub sell_above_cny_per_mwh: Decimal,
    /// Buy when the ask crosses below this, CNY/MWh (required, below `sell_above`).
    pub buy_below_cny_per_mwh: Decimal,
    /// Largest order, MW (default 1).
    pub max_order_mw: Decimal,
    /// Largest net exposure per interval and direction, MW (default `max_order_mw`).
    pub max_position_mw: Decimal,
}

impl ThresholdParams {
    pub const NAMES: [&'static str; 4] = [
        "sell_above_cny_per_mwh",
        "buy_below_cny_per_mwh",
        "max_order_mw",
        "max_position_mw",
    ];

    pub fn from_params(p: &StrategyParams) -> Result<Self, StrategyError> {
        p.expect_only(&Self::NAMES)?;
        let max_order_mw = p.decimal_or("max_order_mw", dec!(1))?;
        let params = Self {
            sell_above_cny_per_mwh: p.require_decimal("sell_above_cny_per_mwh")?,
            buy_below_cny_per_mwh: p.require_decimal("buy_below_cny_per_mwh")?,
            max_order_mw,
            max_position_mw: p.decimal_or("max_position_mw", max_order_mw)?,
        };
        params.validate()?;
        Ok(params)
    }

    pub fn validate(&self) -> Result<(), StrategyError> {
        let (zero, big) = (Some(Decimal::ZERO), Some(dec!(1_000_000)));
        check_range("max_order_mw", self.max_order_mw, zero, big, true)?;
        check_range("max_position_mw", self.max_position_mw, zero, big, true)?;
        if self.buy_below_cny_per_mwh >= self.sell_above_cny_per_mwh {
            return Err(StrategyError::param(
                "buy_below_cny_per_mwh",
                format!(
                    "{} must be below sell_above_cny_per_mwh {}",
                    self.buy_below_cny_per_mwh, self.sell_above_cny_per_mwh
                ),
            ));
        }
        Ok(())
    }
}

/// Last reference prices of one interval: (for selling, for buying).
type Refs = (Option<Decimal>, Option<Decimal>);

#[derive(Debug, Clone)]
pub struct RealTimeThreshold {
    params: ThresholdParams,
    market: Market,
    last: BTreeMap<DeliveryInterval, Refs>,
}

#[derive(Serialize, Deserialize)]
struct ThresholdStateV1 {
    last: Vec<(DeliveryInterval, Refs)>,
}

impl RealTimeThreshold {
    pub const KIND: &'static str = "real_time_threshold";
    const SNAPSHOT_VERSION: u32 = 1;

    pub fn new(params: ThresholdParams, market: Market) -> Result<Self, StrategyError> {
        params.validate()?;
        Ok(Self {
            params,
            market,
            last: BTreeMap::new(),
        })
    }

    pub fn construct(init: &StrategyInit) -> Result<Box<dyn Strategy>, StrategyError> {
        let params = ThresholdParams::from_params(&init.params)?;
        Ok(Box::new(Self::new(params, init.market.clone())?))
    }

    /// Records the new references and says which sides crossed.
    fn crossings(
        &mut self,
        interval: DeliveryInterval,
        sell_ref: Option<Decimal>,
        buy_ref: Option<Decimal>,
    ) -> (Option<Decimal>, Option<Decimal>) {
        let p = &self.params;
        let (prev_sell, prev_buy) = self.last.get(&interval).copied().unwrap_or((None, None));
        let sell = sell_ref.filter(|&now| {
            now > p.sell_above_cny_per_mwh
                && prev_sell.is_none_or(|b| b <= p.sell_above_cny_per_mwh)
        });
        let buy = buy_ref.filter(|&now| {
            now < p.buy_below_cny_per_mwh && prev_buy.is_none_or(|b| b >= p.buy_below_cny_per_mwh)
        });
        let entry = self.last.entry(interval).or_insert((None, None));
        entry.0 = sell_ref.or(entry.0);
        entry.1 = buy_ref.or(entry.1);
        while self.last.len() > MAX_TRACKED_INTERVALS {
            self.last.pop_first();
        }
        (sell, buy)
    }

    /// MW the strategy may still add in `side` for `interval`.
    fn room_mw(
        &self,
        ctx: &StrategyContext<'_>,
        interval: DeliveryInterval,
        side: Side,
    ) -> Decimal {
        let net_sold = ctx
            .position(self.market.id, interval)
            .map_or(Decimal::ZERO, |p| p.net_sold_mw());
        let open: Decimal = ctx
            .open_orders()
            .filter(|o| {
                o.request.market_id == self.market.id
                    && o.request.interval == interval
                    && o.request.side == side
            })
            .map(|o| o.remaining_mw())
            .sum();
        let exposure = match side {
            Side::Sell => net_sold + open,
            Side::Buy => -net_sold + open,
        };
        let flex_kw = ctx.capacity().map_or(Decimal::ZERO, |c| match side {
            Side::Sell => c.capacity.up_flex_kw,
            Side::Buy => c.capacity.down_flex_kw,
        });
        let room = (self.params.max_position_mw - exposure)
            .min(self.params.max_order_mw)
            .min(flex_kw / dec!(1000));
        room.round_dp_with_strategy(3, RoundingStrategy::ToZero)
    }

    fn trade(
        &self,
        ctx: &mut StrategyContext<'_>,
        interval: DeliveryInterval,
        side: Side,
        price: Decimal,
    ) -> Result<(), StrategyError> {
        let quantity_mw = self.room_mw(ctx, interval, side);
        if quantity_mw <= Decimal::ZERO || self.market.check_price(price).is_err() {
            return Ok(());
        }
        ctx.submit(NewOrder {
            market_id: self.market.id,
            product: self.market.kind.default_product(),
            interval,
            side,
            quantity_mw,
            price_cny_per_mwh: price,
            time_in_force: TimeInForce::Ioc,
        })?;
        Ok(())
    }
}

impl Strategy for RealTimeThreshold {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn on_market_data(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        data: &MarketData,
    ) -> Result<(), StrategyError> {
        if data.market() != self.market.id || data.interval().start() <= ctx.now() {
            return Ok(());
        }
        let (sell_ref, buy_ref) = match data {
            MarketData::Price {
                last_trade_price_cny_per_mwh: Some(p),
                ..
            } => (Some(*p), Some(*p)),
            MarketData::BookTop {
                best_bid, best_ask, ..
            } => (
                best_bid.map(|l| l.price_cny_per_mwh),
                best_ask.map(|l| l.price_cny_per_mwh),
            ),
            _ => return Ok(()),
        };
        let interval = data.interval();
        let (sell, buy) = self.crossings(interval, sell_ref, buy_ref);
        if let Some(price) = sell {
            self.trade(ctx, interval, Side::Sell, price)?;
        }
        if let Some(price) = buy {
            self.trade(ctx, interval, Side::Buy, price)?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError> {
        let v1 = ThresholdStateV1 {
            last: self.last.iter().map(|(k, v)| (*k, *v)).collect(),
        };
        StrategySnapshot::encode(Self::KIND, Self::SNAPSHOT_VERSION, &v1)
    }

    fn restore(&mut self, snapshot: &StrategySnapshot) -> Result<(), StrategyError> {
        let v1: ThresholdStateV1 = snapshot.decode(Self::KIND, Self::SNAPSHOT_VERSION)?;
        if v1.last.len() > MAX_TRACKED_INTERVALS {
            return Err(StrategyError::Snapshot(format!(
                "{}: {} tracked intervals, at most {MAX_TRACKED_INTERVALS}",
                Self::KIND,
                v1.last.len()
            )));
        }
        self.last = v1.last.into_iter().collect();
        Ok(())
    }
}
