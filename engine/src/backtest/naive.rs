//! The naive threshold benchmark (`naive_threshold`): for each day-ahead trading day, buy at
//! full power in every interval whose forecast is more than `band_cny_per_mwh` below the day's
//! mean forecast, sell at full power where it is more than the band above, walking the day in
//! time order and never planning beyond the battery's SoC limits. Bids are at market (buy at
//! the cap, sell at the floor), so they always fill at the clearing price.
//!
//! It exists to say whether a cleverer strategy beats the obvious one. Invariant: it never
//! plans a sell of energy its own plan has not stored.

use crate::market::{DeliveryInterval, Market};
use crate::order::{Side, TimeInForce};
use crate::strategy::{
    BatteryParams, ForecastWindow, MarketData, NewOrder, Strategy, StrategyContext, StrategyError,
    StrategyInit, StrategyParams, StrategySnapshot, Timer,
};
use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};
use rust_decimal_macros::dec;

const MAX_FORECASTS: usize = 400;

#[derive(Debug, Clone)]
pub struct NaiveThreshold {
    battery: BatteryParams,
    band_cny_per_mwh: Decimal,
    market: Market,
    state: NaiveState,
}

#[derive(Debug, Clone)]
struct NaiveState {
    forecasts: ForecastWindow,
    energy_mwh: Option<Decimal>,
    /// End energy of the last planned day.
    plan_end: Option<(NaiveDate, Decimal)>,
}

impl NaiveThreshold {
    pub const KIND: &'static str = "naive_threshold";

    /// Parameters: `band_cny_per_mwh` (default 0) plus the battery parameters of
    /// `battery_arbitrage` (power, energy, efficiency, SoC limits).
    pub fn construct(init: &StrategyInit) -> Result<Box<dyn Strategy>, StrategyError> {
        let band = init.params.decimal_or("band_cny_per_mwh", Decimal::ZERO)?;
        if band < Decimal::ZERO {
            return Err(StrategyError::param(
                "band_cny_per_mwh",
                format!("{band} must be >= 0"),
            ));
        }
        let mut rest = StrategyParams::new();
        for name in init.params.names().filter(|n| *n != "band_cny_per_mwh") {
            if let Some(v) = init.params.get(name) {
                rest.insert(name, v.clone())?;
            }
        }
        Ok(Box::new(Self {
            battery: BatteryParams::from_params(&rest)?,
            band_cny_per_mwh: band,
            market: init.market.clone(),
            state: NaiveState {
                forecasts: ForecastWindow::new(MAX_FORECASTS),
                energy_mwh: None,
                plan_end: None,
            },
        }))
    }

    fn plan(&mut self, ctx: &mut StrategyContext<'_>, day: NaiveDate) -> Result<(), StrategyError> {
        let tz = self.market.timezone;
        let slots = self.state.forecasts.known_in_day(tz, day);
        if slots.is_empty() {
            return Ok(());
        }
        let n = Decimal::from(slots.len());
        let mean = slots.iter().map(|s| s.1).sum::<Decimal>() / n;
        let b = &self.battery;
        let (e_min, e_max) = (b.energy_min_mwh(), b.energy_max_mwh());
        let prev = day.pred_opt();
        let mut energy = match self.state.plan_end {
            Some((d, e)) if Some(d) == prev => e,
            _ => self.state.energy_mwh.unwrap_or(e_min),
        };
        let power = b.power_mw.min(b.max_order_mw);
        for (interval, price) in slots {
            let (side, mw) = if price < mean - self.band_cny_per_mwh {
                let room = (e_max - energy) / (dec!(0.25) * b.efficiency);
                (Side::Buy, floor(power.min(room)))
            } else if price > mean + self.band_cny_per_mwh {
                (Side::Sell, floor(power.min((energy - e_min) / dec!(0.25))))
            } else {
                continue;
            };
            if mw <= Decimal::ZERO {
                continue;
            }
            energy += match side {
                Side::Buy => mw * dec!(0.25) * b.efficiency,
                Side::Sell => -mw * dec!(0.25),
            };
            ctx.submit(NewOrder {
                market_id: self.market.id,
                product: self.market.kind.default_product(),
                interval,
                side,
                quantity_mw: mw,
                price_cny_per_mwh: match side {
                    Side::Buy => self.market.price_cap_cny_per_mwh,
                    Side::Sell => self.market.price_floor_cny_per_mwh,
                },
                time_in_force: TimeInForce::Day,
            })?;
        }
        self.state.plan_end = Some((day, energy));
        Ok(())
    }
}

fn floor(mw: Decimal) -> Decimal {
    mw.round_dp_with_strategy(3, RoundingStrategy::ToZero)
}

impl Strategy for NaiveThreshold {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn on_market_data(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        data: &MarketData,
    ) -> Result<(), StrategyError> {
        if let MarketData::Price {
            market,
            interval,
            reference_price_cny_per_mwh,
            ..
        } = data
        {
            if *market == self.market.id {
                let f = &mut self.state.forecasts;
                f.insert(*interval, *reference_price_cny_per_mwh);
                f.prune_older_than_a_day(ctx.now());
            }
        }
        Ok(())
    }

    fn on_capacity(
        &mut self,
        _ctx: &mut StrategyContext<'_>,
        update: &crate::strategy::CapacityUpdate,
    ) -> Result<(), StrategyError> {
        if let Some(s) = update.storage {
            self.state.energy_mwh = Some(s.energy_kwh / dec!(1000));
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        timer: &Timer,
    ) -> Result<(), StrategyError> {
        match timer {
            Timer::GateClosureApproaching {
                market,
                trading_day,
            } if *market == self.market.id => self.plan(ctx, *trading_day),
            _ => Ok(()),
        }
    }

    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError> {
        let forecasts: Vec<(DeliveryInterval, Decimal)> = self.state.forecasts.iter().collect();
        StrategySnapshot::encode(
            Self::KIND,
            1,
            &(forecasts, self.state.energy_mwh, self.state.plan_end),
        )
    }

    fn restore(&mut self, snapshot: &StrategySnapshot) -> Result<(), StrategyError> {
        type V1 = (
            Vec<(DeliveryInterval, Decimal)>,
            Option<Decimal>,
            Option<(NaiveDate, Decimal)>,
        );
        let (forecasts, energy, plan_end): V1 = snapshot.decode(Self::KIND, 1)?;
        let n = forecasts.len();
        let Some(forecasts) = ForecastWindow::from_pairs(MAX_FORECASTS, forecasts) else {
            return Err(StrategyError::Snapshot(format!(
                "{}: {n} forecasts, at most {MAX_FORECASTS}",
                Self::KIND,
            )));
        };
        self.state = NaiveState {
            forecasts,
            energy_mwh: energy,
            plan_end,
        };
        Ok(())
    }
}
