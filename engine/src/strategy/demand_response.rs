//! Built-in demand-response responder (`dr_responder`): accepts a demand-response invitation
//! when its price beats the flexible load's opportunity cost.
//!
//! - An invitation (`MarketData::DrInvitation` on the strategy's market, not yet awarded,
//!   `now` before `respond_by`) is accepted when `price − opportunity_cost ≥ min_margin` and
//!   the price is above the cost.
//! - Quantity = `min(target_mw, max_mw, up flexibility)`, rounded down to 0.001 MW (reducing
//!   load is upward flexibility); no capacity update yet means nothing to offer.
//! - The response is a day sell order in the DR market asking `opportunity_cost +
//!   min_margin` (rounded up to 0.01, never above the invitation's price: the venue refuses
//!   more). The venue awards the cheapest asks first and pays the invitation price, so asking
//!   the true cost is the best response.
//!
//! Invariants: one response per invitation (by event id, also after a restart through the
//! snapshot); state bounded ([`MAX_REMEMBERED`]).

use super::params::check_range;
use super::{
    MarketData, NewOrder, Strategy, StrategyContext, StrategyError, StrategyInit, StrategyParams,
    StrategySnapshot,
};
use crate::market::{Market, MarketKind};
use crate::order::{Side, TimeInForce};
use rust_decimal::{Decimal, RoundingStrategy};
use rust_decimal_macros::dec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Invitations remembered as answered.
pub const MAX_REMEMBERED: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrParams {
    /// What the flexible load loses per MWh not consumed, CNY/MWh (required).
    pub opportunity_cost_cny_per_mwh: Decimal,
    /// Least margin over the cost, CNY/MWh (default 0).
    pub min_margin_cny_per_mwh: Decimal,
    /// Largest response, MW (default 10).
    pub max_mw: Decimal,
}

impl DrParams {
    pub const NAMES: [&'static str; 3] = [
        "opportunity_cost_cny_per_mwh",
        "min_margin_cny_per_mwh",
        "max_mw",
    ];

    pub fn from_params(p: &StrategyParams) -> Result<Self, StrategyError> {
        p.expect_only(&Self::NAMES)?;
        let params = Self {
            opportunity_cost_cny_per_mwh: p.require_decimal("opportunity_cost_cny_per_mwh")?,
            min_margin_cny_per_mwh: p.decimal_or("min_margin_cny_per_mwh", Decimal::ZERO)?,
            max_mw: p.decimal_or("max_mw", dec!(10))?,
        };
        params.validate()?;
        Ok(params)
    }

    pub fn validate(&self) -> Result<(), StrategyError> {
        let zero = Some(Decimal::ZERO);
        check_range(
            "min_margin_cny_per_mwh",
            self.min_margin_cny_per_mwh,
            zero,
            None,
            false,
        )?;
        check_range("max_mw", self.max_mw, zero, Some(dec!(1_000_000)), true)?;
        Ok(())
    }

    /// The asked price: cost plus margin, rounded up to 0.01.
    pub fn ask_cny_per_mwh(&self) -> Decimal {
        (self.opportunity_cost_cny_per_mwh + self.min_margin_cny_per_mwh)
            .round_dp_with_strategy(2, RoundingStrategy::ToPositiveInfinity)
    }
}

#[derive(Debug, Clone)]
pub struct DemandResponseResponder {
    params: DrParams,
    market: Market,
    answered: BTreeSet<u64>,
}

impl DemandResponseResponder {
    pub const KIND: &'static str = "dr_responder";
    const SNAPSHOT_VERSION: u32 = 1;

    pub fn new(params: DrParams, market: Market) -> Result<Self, StrategyError> {
        params.validate()?;
        if market.kind != MarketKind::DemandResponse {
            return Err(StrategyError::param(
                "market",
                format!(
                    "{} is a {} market; dr_responder answers a demand_response market",
                    market.name,
                    market.kind.as_str()
                ),
            ));
        }
        Ok(Self {
            params,
            market,
            answered: BTreeSet::new(),
        })
    }

    pub fn construct(init: &StrategyInit) -> Result<Box<dyn Strategy>, StrategyError> {
        let params = DrParams::from_params(&init.params)?;
        Ok(Box::new(Self::new(params, init.market.clone())?))
    }
}

impl Strategy for DemandResponseResponder {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn on_market_data(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        data: &MarketData,
    ) -> Result<(), StrategyError> {
        let MarketData::DrInvitation {
            market,
            interval,
            event_id,
            price_cny_per_mwh: price,
            target_mw,
            respond_by,
            awarded_mw: None,
            ..
        } = *data
        else {
            return Ok(());
        };
        let p = &self.params;
        let worth = price > p.opportunity_cost_cny_per_mwh
            && price - p.opportunity_cost_cny_per_mwh >= p.min_margin_cny_per_mwh;
        if market != self.market.id
            || ctx.now() >= respond_by
            || !worth
            || self.answered.contains(&event_id)
        {
            return Ok(());
        }
        let flex_mw = ctx
            .capacity()
            .map_or(Decimal::ZERO, |c| c.capacity.up_flex_kw / dec!(1000));
        let quantity_mw = target_mw
            .min(p.max_mw)
            .min(flex_mw)
            .round_dp_with_strategy(3, RoundingStrategy::ToZero);
        let ask = p.ask_cny_per_mwh().min(price);
        if quantity_mw <= Decimal::ZERO || self.market.check_price(ask).is_err() {
            return Ok(());
        }
        ctx.submit(NewOrder {
            market_id: self.market.id,
            product: self.market.kind.default_product(),
            interval,
            side: Side::Sell,
            quantity_mw,
            price_cny_per_mwh: ask,
            time_in_force: TimeInForce::Day,
        })?;
        self.answered.insert(event_id);
        while self.answered.len() > MAX_REMEMBERED {
            self.answered.pop_first();
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError> {
        let answered: Vec<u64> = self.answered.iter().copied().collect();
        StrategySnapshot::encode(Self::KIND, Self::SNAPSHOT_VERSION, &answered)
    }

    fn restore(&mut self, snapshot: &StrategySnapshot) -> Result<(), StrategyError> {
        let answered: Vec<u64> = snapshot.decode(Self::KIND, Self::SNAPSHOT_VERSION)?;
        if answered.len() > MAX_REMEMBERED {
            return Err(StrategyError::Snapshot(format!(
                "{}: {} invitations, at most {MAX_REMEMBERED}",
                Self::KIND,
                answered.len()
            )));
        }
        self.answered = answered.into_iter().collect();
        Ok(())
    }
}
