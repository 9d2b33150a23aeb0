//! The deterministic backtest: replays historical prices through the very code that runs
//! live — [`StrategyHost`](crate::strategy::StrategyHost) for strategies, a pre-trade gate
//! (the risk crate's `RiskEngine` behind [`PreTradeGate`]) for checks, and
//! [`OrderLedger`](crate::ledger::OrderLedger) for orders, fills and positions — against a
//! simulated venue and a simulated clock.
//!
//! The engine knows nothing of the risk crate or the venue simulator, so both come in through
//! small traits: [`PreTradeGate`] (risk) and [`DayAheadClearing`] (the auction). The binary
//! plugs in `RiskEngine` and the simulator's uniform-price clearing; tests and benches may use
//! [`ApproveAll`] and [`PriceTakerClearing`].
//!
//! Venue model (documented in docs/strategies.md):
//! - Day-ahead: the historical price *is* the clearing price; we are price takers. A buy bid
//!   at or above it fills fully at the clearing price, a sell at or below it fills fully; the
//!   rest expires at clearing. An interval without a historical price does not clear.
//! - Real-time: a one-level book per interval around `mid = day-ahead price + seeded noise`,
//!   `bid = mid − half_spread`, `ask = mid + half_spread`, `depth_mw` on each side shared by
//!   all strategies of the run. An order crossing the touch fills at the touch up to the depth
//!   left; the rest is cancelled (the book model keeps no resting orders).
//!
//! Invariants:
//! - Deterministic: same prices, config and seed give the same report, byte for byte. No
//!   wall clock, no hash-ordered output, randomness only from a SplitMix64 hash of `seed`
//!   and the interval.
//! - Time only moves forward, in 15-minute steps; `now` is passed to every call.
//! - Bounded: at most [`MAX_STRATEGIES`] strategies, [`MAX_DAYS`] days, and
//!   [`MAX_WORK_PER_STEP`] intents handled per step (a strategy looping on its own reports is
//!   an error, not a hang).

mod naive;
mod prices;
mod report;
mod runner;
pub mod session;

pub use naive::NaiveThreshold;
pub use prices::{
    load_hourly_csv, CsvFormat, DstReport, PriceLoadError, PriceSeries, DEFAULT_MAX_ROWS,
};
pub use report::{BacktestReport, DayRow, IntervalRow, StrategyReport};
pub use runner::{run, StrategySetup};
pub use session::{parse_session, replay_session, SessionEvent, SessionOutcome, SessionStrategy};

use crate::ids::{ClientOrderId, MarketId, StrategyId};
use crate::ledger::{OrderEvent, Outcome};
use crate::market::{Market, MarketKind};
use crate::order::{OrderRequest, Side};
use crate::strategy::{CapacityUpdate, StrategyError, StrategyParams};
use crate::Timestamp;
use chrono::NaiveDate;
use chrono_tz::Tz;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde::Serialize;
use thiserror::Error;

/// Most strategies in one run.
pub const MAX_STRATEGIES: usize = 64;
/// Longest run, days (≈ 300 years: a sanity bound, not a limit of the data — the run's
/// per-day state is a few schedule entries, and prices cost 16 bytes per interval).
pub const MAX_DAYS: i64 = 110_000;
/// Most intents and reports handled within one 15-minute step.
pub const MAX_WORK_PER_STEP: usize = 100_000;

/// The simulated day-ahead market of every run.
pub const DAY_AHEAD_MARKET: MarketId = MarketId(1);
/// The simulated real-time market of every run.
pub const REAL_TIME_MARKET: MarketId = MarketId(2);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BacktestError {
    #[error("backtest config {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("strategy {name}: {source}")]
    Strategy { name: String, source: StrategyError },
    #[error("step {at}: more than {MAX_WORK_PER_STEP} intents and reports in one step; a strategy is looping")]
    Runaway { at: Timestamp },
    #[error("order ledger refused an event: {0}")]
    Ledger(String),
}

/// Where the strategies' forecasts (the `reference_price` of day-ahead market data) come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForecastMode {
    /// The same local time one day earlier (known at gate closure): an honest naive forecast.
    PreviousDay,
    /// The actual clearing price: perfect foresight, an upper bound.
    Perfect,
}

impl ForecastMode {
    pub fn parse(s: &str) -> Result<Self, BacktestError> {
        match s {
            "previous_day" => Ok(Self::PreviousDay),
            "perfect" => Ok(Self::Perfect),
            other => Err(BacktestError::Config {
                field: "forecast",
                reason: format!("{other:?} is not one of previous_day, perfect"),
            }),
        }
    }
}

/// The real-time book model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RealTimeBook {
    pub half_spread_cny_per_mwh: Decimal,
    /// Mid = day-ahead price + uniform noise in ±this, 0.01 steps, seeded.
    pub noise_cny_per_mwh: Decimal,
    pub depth_mw: Decimal,
}

/// Everything a run needs besides prices and strategies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BacktestConfig {
    /// First and last local trading day traded (inclusive).
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub seed: u64,
    /// Time zone of the market (and of the price file's local times).
    pub timezone: Tz,
    pub forecast: ForecastMode,
    /// Day-ahead gate closure, minutes before the local trading day (720 = noon the day before).
    pub gate_closure_minutes_before: u32,
    /// `GateClosureApproaching` fires this long before the gate.
    pub gate_lead_minutes: u32,
    pub price_cap_cny_per_mwh: Decimal,
    pub price_floor_cny_per_mwh: Decimal,
    pub real_time: RealTimeBook,
    /// Hand the battery's storage budget to the gate (the risk crate's energy check across
    /// intervals: a sell may count open buys of earlier intervals, never of its own or later
    /// ones, and buys likewise). On by default; off only to see what a strategy would do
    /// without it (its undelivered MWh then shows what the battery could not do).
    pub gate_storage_budget: bool,
}

impl BacktestConfig {
    /// Belgian-style defaults: Europe/Brussels, gate at noon the day before, price band
    /// −500..4000 EUR/MWh at 7.8 CNY/EUR.
    pub fn new(from: NaiveDate, to: NaiveDate, seed: u64) -> Self {
        Self {
            from,
            to,
            seed,
            timezone: chrono_tz::Europe::Brussels,
            forecast: ForecastMode::PreviousDay,
            gate_closure_minutes_before: 12 * 60,
            gate_lead_minutes: 30,
            price_cap_cny_per_mwh: dec!(31200),
            price_floor_cny_per_mwh: dec!(-3900),
            real_time: RealTimeBook {
                half_spread_cny_per_mwh: dec!(5),
                noise_cny_per_mwh: dec!(40),
                depth_mw: dec!(5),
            },
            gate_storage_budget: true,
        }
    }

    pub fn validate(&self) -> Result<(), BacktestError> {
        let bad = |field, reason: String| Err(BacktestError::Config { field, reason });
        let days = (self.to - self.from).num_days();
        if days < 0 {
            return bad("to", format!("{} is before from {}", self.to, self.from));
        }
        if days >= MAX_DAYS {
            return bad("to", format!("{} days; at most {MAX_DAYS}", days + 1));
        }
        if self.gate_lead_minutes % 15 != 0 || self.gate_closure_minutes_before % 15 != 0 {
            return bad(
                "gate_lead_minutes",
                "gate lead and gate closure must be multiples of 15 minutes".into(),
            );
        }
        if self.gate_lead_minutes + 15 > self.gate_closure_minutes_before {
            return bad(
                "gate_lead_minutes",
                format!(
                    "{} must leave at least 15 minutes before the gate ({} min before the day)",
                    self.gate_lead_minutes, self.gate_closure_minutes_before
                ),
            );
        }
        let rt = &self.real_time;
        if rt.depth_mw <= Decimal::ZERO
            || rt.half_spread_cny_per_mwh < Decimal::ZERO
            || rt.noise_cny_per_mwh < Decimal::ZERO
        {
            return bad(
                "real_time",
                "depth_mw must be > 0, half spread and noise >= 0".into(),
            );
        }
        Ok(())
    }

    /// The two simulated markets: day-ahead (id 1) and real-time (id 2).
    pub fn markets(&self) -> [Market; 2] {
        let market = |id, name: &str, kind| Market {
            id,
            name: name.to_owned(),
            kind,
            timezone: self.timezone,
            price_cap_cny_per_mwh: self.price_cap_cny_per_mwh,
            price_floor_cny_per_mwh: self.price_floor_cny_per_mwh,
            negative_prices_allowed: self.price_floor_cny_per_mwh < Decimal::ZERO,
            gate_closure_minutes_before: self.gate_closure_minutes_before,
        };
        [
            market(DAY_AHEAD_MARKET, "backtest-day-ahead", MarketKind::DayAhead),
            market(REAL_TIME_MARKET, "backtest-real-time", MarketKind::RealTime),
        ]
    }
}

/// The simulated battery behind one strategy (each strategy gets its own aggregation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatterySpec {
    pub power_mw: Decimal,
    pub energy_mwh: Decimal,
    pub efficiency: Decimal,
    pub soc_min_pct: Decimal,
    pub soc_max_pct: Decimal,
    pub initial_soc_pct: Decimal,
}

impl Default for BatterySpec {
    /// The battery arbitrage strategy's defaults: 1 MW / 2 MWh, 90 % round trip, 10–90 % SoC.
    fn default() -> Self {
        Self {
            power_mw: dec!(1),
            energy_mwh: dec!(2),
            efficiency: dec!(0.9),
            soc_min_pct: dec!(10),
            soc_max_pct: dec!(90),
            initial_soc_pct: dec!(10),
        }
    }
}

impl BatterySpec {
    /// Battery figures from strategy parameters of the same names (as `battery_arbitrage`
    /// takes them), defaults otherwise; other parameters are ignored here.
    pub fn from_params(p: &StrategyParams) -> Result<Self, StrategyError> {
        let d = Self::default();
        let soc_min_pct = p.decimal_or("soc_min_pct", d.soc_min_pct)?;
        Ok(Self {
            power_mw: p.decimal_or("power_mw", d.power_mw)?,
            energy_mwh: p.decimal_or("energy_mwh", d.energy_mwh)?,
            efficiency: p.decimal_or("efficiency", d.efficiency)?,
            soc_min_pct,
            soc_max_pct: p.decimal_or("soc_max_pct", d.soc_max_pct)?,
            initial_soc_pct: p.decimal_or("initial_soc_pct", soc_min_pct)?,
        })
    }

    pub fn validate(&self) -> Result<(), BacktestError> {
        let ok = self.power_mw > Decimal::ZERO
            && self.energy_mwh > Decimal::ZERO
            && self.efficiency > Decimal::ZERO
            && self.efficiency <= Decimal::ONE
            && Decimal::ZERO <= self.soc_min_pct
            && self.soc_min_pct < self.soc_max_pct
            && self.soc_max_pct <= Decimal::ONE_HUNDRED
            && (self.soc_min_pct..=self.soc_max_pct).contains(&self.initial_soc_pct);
        if ok {
            return Ok(());
        }
        Err(BacktestError::Config {
            field: "battery",
            reason: format!(
                "{self:?}: need power, energy > 0, efficiency in (0, 1], 0 <= soc_min < soc_max <= 100, initial within"
            ),
        })
    }

    /// Usable energy between the SoC limits, MWh.
    pub fn usable_mwh(&self) -> Decimal {
        self.energy_mwh * (self.soc_max_pct - self.soc_min_pct) / Decimal::ONE_HUNDRED
    }
}

/// Why the gate refused an intent: a stable code (e.g. `max_net_position`) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateReject {
    pub code: String,
    pub message: String,
}

/// The pre-trade check as the backtest drives it. The risk crate implements it for
/// `RiskEngine` (risk/src/gate.rs), so backtest and live run the same checks.
pub trait PreTradeGate {
    /// Checks an intent and, when approved, reserves it (as `RiskEngine::evaluate`).
    fn evaluate(&mut self, request: &OrderRequest, now: Timestamp) -> Result<(), GateReject>;
    /// Mirrors an order event after the ledger applied it.
    fn on_order_event(&mut self, event: &OrderEvent, outcome: &Outcome);
    /// The aggregation's capacity and battery changed.
    fn on_capacity(&mut self, _update: &CapacityUpdate, _battery: &BatterySpec, _now: Timestamp) {}
    /// Clock tick at each 15-minute step.
    fn on_tick(&mut self, _now: Timestamp) {}
    /// Engages the strategy's kill switch; returns the open orders to cancel.
    fn engage_kill_switch(
        &mut self,
        _strategy: StrategyId,
        _why: &str,
        _now: Timestamp,
    ) -> Vec<ClientOrderId> {
        Vec::new()
    }
}

/// A gate that approves everything (tests and benches of the replay machinery alone).
#[derive(Debug, Default, Clone, Copy)]
pub struct ApproveAll;

impl PreTradeGate for ApproveAll {
    fn evaluate(&mut self, _request: &OrderRequest, _now: Timestamp) -> Result<(), GateReject> {
        Ok(())
    }
    fn on_order_event(&mut self, _event: &OrderEvent, _outcome: &Outcome) {}
}

/// One of our bids into a day-ahead interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayAheadBid {
    pub side: Side,
    pub quantity_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
}

/// Clears our bids of one interval at the historical clearing price.
pub trait DayAheadClearing {
    /// Returns the awarded MW of each bid, in input order (each within its quantity).
    fn clear(&mut self, clearing_price_cny_per_mwh: Decimal, bids: &[DayAheadBid]) -> Vec<Decimal>;
}

/// Price-taker rule: buys at or above the clearing price and sells at or below it fill fully.
#[derive(Debug, Default, Clone, Copy)]
pub struct PriceTakerClearing;

impl DayAheadClearing for PriceTakerClearing {
    fn clear(&mut self, price: Decimal, bids: &[DayAheadBid]) -> Vec<Decimal> {
        bids.iter()
            .map(|b| {
                let fills = match b.side {
                    Side::Buy => b.price_cny_per_mwh >= price,
                    Side::Sell => b.price_cny_per_mwh <= price,
                };
                if fills {
                    b.quantity_mw
                } else {
                    Decimal::ZERO
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
