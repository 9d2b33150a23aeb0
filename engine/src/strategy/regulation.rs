//! Built-in regulation capacity offer (`regulation_offer`): offers on a regulation market the
//! share of the aggregation's flexibility held back from energy markets.
//!
//! - Headroom for an interval = `min(up flex, down flex) × reserve_pct / 100` (regulation is
//!   symmetric, so the smaller direction bounds it), minus what this strategy already offered
//!   or holds for the interval, capped at `max_offer_mw`, rounded down to 0.001 MW. No
//!   capacity update yet means no headroom, so no offer.
//! - When: on `IntervalStart` of interval i it offers for interval `i + lead_intervals`, once,
//!   and only before that interval's regulation gate (`gate_minutes` before its start).
//! - Price (CNY/MW of capacity): the last cleared capacity price of the market less
//!   `undercut_pct` (rounded to 0.01), never below `min_price_cny_per_mw`; before any
//!   clearing, `min_price_cny_per_mw`. Offers are day orders (the market is an auction).
//!
//! Invariants: at most one offer per interval; state bounded ([`MAX_REMEMBERED`]).

use super::params::check_range;
use super::{
    MarketData, NewOrder, Strategy, StrategyContext, StrategyError, StrategyInit, StrategyParams,
    StrategySnapshot, Timer,
};
use crate::market::{DeliveryInterval, Market, MarketKind};
use crate::order::{Side, TimeInForce};
use rust_decimal::{Decimal, RoundingStrategy};
use rust_decimal_macros::dec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Intervals remembered as offered.
pub const MAX_REMEMBERED: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegulationParams {
    /// Share of the symmetric flexibility held back from energy markets, percent (default 20).
    pub reserve_pct: Decimal,
    /// Largest offer, MW (default 10).
    pub max_offer_mw: Decimal,
    /// Lowest offer price, CNY/MW (default 0).
    pub min_price_cny_per_mw: Decimal,
    /// Offer this far below the last clearing price, percent (default 0).
    pub undercut_pct: Decimal,
    /// Offer for the interval this many intervals after the one starting (default 8).
    pub lead_intervals: u32,
    /// The market's regulation gate, minutes before the interval (default 60, as the venue).
    pub gate_minutes: u32,
}

impl RegulationParams {
    pub const NAMES: [&'static str; 6] = [
        "reserve_pct",
        "max_offer_mw",
        "min_price_cny_per_mw",
        "undercut_pct",
        "lead_intervals",
        "gate_minutes",
    ];

    pub fn from_params(p: &StrategyParams) -> Result<Self, StrategyError> {
        p.expect_only(&Self::NAMES)?;
        let whole = |name: &str, default: u32, max: u32| -> Result<u32, StrategyError> {
            let v = p.decimal_or(name, Decimal::from(default))?;
            if v.fract() != Decimal::ZERO || v < Decimal::ZERO || v > Decimal::from(max) {
                return Err(StrategyError::param(
                    name,
                    format!("{v} must be a whole number in 0..={max}"),
                ));
            }
            u32::try_from(v.mantissa())
                .map_err(|_| StrategyError::param(name, format!("{v} is out of range")))
        };
        let params = Self {
            reserve_pct: p.decimal_or("reserve_pct", dec!(20))?,
            max_offer_mw: p.decimal_or("max_offer_mw", dec!(10))?,
            min_price_cny_per_mw: p.decimal_or("min_price_cny_per_mw", Decimal::ZERO)?,
            undercut_pct: p.decimal_or("undercut_pct", Decimal::ZERO)?,
            lead_intervals: whole("lead_intervals", 8, 96)?,
            gate_minutes: whole("gate_minutes", 60, 1440)?,
        };
        params.validate()?;
        Ok(params)
    }

    pub fn validate(&self) -> Result<(), StrategyError> {
        let zero = Some(Decimal::ZERO);
        let pct = Some(Decimal::ONE_HUNDRED);
        check_range("reserve_pct", self.reserve_pct, zero, pct, true)?;
        check_range(
            "max_offer_mw",
            self.max_offer_mw,
            zero,
            Some(dec!(1_000_000)),
            true,
        )?;
        check_range(
            "min_price_cny_per_mw",
            self.min_price_cny_per_mw,
            zero,
            None,
            false,
        )?;
        check_range(
            "undercut_pct",
            self.undercut_pct,
            zero,
            Some(dec!(99)),
            false,
        )?;
        if self.lead_intervals == 0 {
            return Err(StrategyError::param("lead_intervals", "must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RegulationStateV1 {
    offered: Vec<DeliveryInterval>,
    last_capacity_price_cny_per_mw: Option<Decimal>,
}

#[derive(Debug, Clone)]
pub struct RegulationOffer {
    params: RegulationParams,
    market: Market,
    offered: BTreeSet<DeliveryInterval>,
    last_capacity_price_cny_per_mw: Option<Decimal>,
}

impl RegulationOffer {
    pub const KIND: &'static str = "regulation_offer";
    const SNAPSHOT_VERSION: u32 = 1;

    pub fn new(params: RegulationParams, market: Market) -> Result<Self, StrategyError> {
        params.validate()?;
        if market.kind != MarketKind::Regulation {
            return Err(StrategyError::param(
                "market",
                format!(
                    "{} is a {} market; regulation_offer trades a regulation market",
                    market.name,
                    market.kind.as_str()
                ),
            ));
        }
        Ok(Self {
            params,
            market,
            offered: BTreeSet::new(),
            last_capacity_price_cny_per_mw: None,
        })
    }

    pub fn construct(init: &StrategyInit) -> Result<Box<dyn Strategy>, StrategyError> {
        let params = RegulationParams::from_params(&init.params)?;
        Ok(Box::new(Self::new(params, init.market.clone())?))
    }

    /// The offer price: last clearing less the undercut, floored at the minimum.
    pub fn offer_price(&self) -> Decimal {
        let p = &self.params;
        self.last_capacity_price_cny_per_mw
            .map(|last| {
                (last * (Decimal::ONE_HUNDRED - p.undercut_pct) / Decimal::ONE_HUNDRED)
                    .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
            })
            .map_or(p.min_price_cny_per_mw, |x| x.max(p.min_price_cny_per_mw))
    }

    /// MW of headroom still to offer for `interval`.
    fn headroom_mw(&self, ctx: &StrategyContext<'_>, interval: DeliveryInterval) -> Decimal {
        let Some(cap) = ctx.capacity() else {
            return Decimal::ZERO;
        };
        let flex_mw = cap.capacity.up_flex_kw.min(cap.capacity.down_flex_kw) / dec!(1000);
        let held_back = flex_mw * self.params.reserve_pct / Decimal::ONE_HUNDRED;
        let held = ctx
            .position(self.market.id, interval)
            .map_or(Decimal::ZERO, |p| p.sold_mw);
        let open: Decimal = ctx
            .open_orders()
            .filter(|o| o.request.market_id == self.market.id && o.request.interval == interval)
            .map(|o| o.remaining_mw())
            .sum();
        (held_back - held - open)
            .min(self.params.max_offer_mw)
            .max(Decimal::ZERO)
            .round_dp_with_strategy(3, RoundingStrategy::ToZero)
    }
}

impl Strategy for RegulationOffer {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn on_market_data(
        &mut self,
        _ctx: &mut StrategyContext<'_>,
        data: &MarketData,
    ) -> Result<(), StrategyError> {
        if let MarketData::AncillaryResult {
            market,
            capacity_price_cny_per_mw: Some(price),
            ..
        } = data
        {
            if *market == self.market.id {
                self.last_capacity_price_cny_per_mw = Some(*price);
            }
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        timer: &Timer,
    ) -> Result<(), StrategyError> {
        let Timer::IntervalStart { interval } = timer else {
            return Ok(());
        };
        let mut target = *interval;
        for _ in 0..self.params.lead_intervals {
            target = target.next();
        }
        let gate = target.start() - chrono::Duration::minutes(i64::from(self.params.gate_minutes));
        if ctx.now() >= gate || self.offered.contains(&target) {
            return Ok(());
        }
        let quantity_mw = self.headroom_mw(ctx, target);
        let price = self.offer_price();
        if quantity_mw <= Decimal::ZERO || self.market.check_price(price).is_err() {
            return Ok(());
        }
        ctx.submit(NewOrder {
            market_id: self.market.id,
            product: self.market.kind.default_product(),
            interval: target,
            side: Side::Sell,
            quantity_mw,
            price_cny_per_mwh: price,
            time_in_force: TimeInForce::Day,
        })?;
        self.offered.insert(target);
        while self.offered.len() > MAX_REMEMBERED {
            self.offered.pop_first();
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError> {
        let v1 = RegulationStateV1 {
            offered: self.offered.iter().copied().collect(),
            last_capacity_price_cny_per_mw: self.last_capacity_price_cny_per_mw,
        };
        StrategySnapshot::encode(Self::KIND, Self::SNAPSHOT_VERSION, &v1)
    }

    fn restore(&mut self, snapshot: &StrategySnapshot) -> Result<(), StrategyError> {
        let v1: RegulationStateV1 = snapshot.decode(Self::KIND, Self::SNAPSHOT_VERSION)?;
        if v1.offered.len() > MAX_REMEMBERED {
            return Err(StrategyError::Snapshot(format!(
                "{}: {} intervals, at most {MAX_REMEMBERED}",
                Self::KIND,
                v1.offered.len()
            )));
        }
        self.offered = v1.offered.into_iter().collect();
        self.last_capacity_price_cny_per_mw = v1.last_capacity_price_cny_per_mw;
        Ok(())
    }
}
