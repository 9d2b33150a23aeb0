//! Built-in battery arbitrage (`battery_arbitrage`): charge in the cheapest intervals and
//! discharge in the dearest, within power, SoC and efficiency limits, only where the spread
//! pays for the losses, the degradation cost and a minimum margin.
//!
//! Energy model (the same as the risk crate's storage schedule, so risk never refuses a plan
//! for energy reasons): selling `m` MW for one 15-minute interval removes `m × 0.25` MWh from
//! the battery; buying `m` MW stores `m × 0.25 × η` MWh (η = round-trip efficiency, charged on
//! the way in). Buying `x/η` MWh to sell `x` MWh later earns
//! `margin = p_sell − p_buy/η − degradation` per MWh sold.
//!
//! Planner ([`plan_arbitrage`]), deterministic and O(n² log n + k·n) for n ≤ 100 slots:
//! 1. every ordered pair of slots (c, d), c ≠ d, with `margin > 0` and `margin ≥
//!    min_spread` is a candidate; candidates are sorted by margin (desc), then c, then d;
//! 2. each candidate in turn moves as much energy as still fits: the power left in both slots
//!    (≤ min(power_mw, max_order_mw)), and the SoC path, which must stay within
//!    [soc_min, soc_max] at every slot (charge before discharge needs headroom in between,
//!    discharge before charge needs stored energy in between). A slot never both buys and sells.
//!    A start outside the SoC limits plans nothing;
//! 3. quantities are rounded down to 0.001 MW such that what is sold never exceeds what was
//!    stored: the plan never sells energy it will not have.
//!
//! Robust mode ([`plan_arbitrage_robust`], used for day-ahead plans): all of a day's orders go
//! into one auction, so any subset of them may clear. The plan then also keeps two worst
//! paths within the SoC limits: *no buy clears* (the path of its sells alone must stay above
//! the floor, so it sells only energy already held) and *no sell clears* (its buys alone must
//! stay below the ceiling). Every subset of fills, partial ones too, then stays within the
//! limits: the strategy never sells energy whose buy may not clear. So a robust plan does not
//! pair a buy with a sell of the same auction; it trades two kinds of legs against the value
//! `V` of stored energy, the mean forecast of the plan (what the energy is expected to sell
//! for on a later day): *sell held energy* in slot d when `p_d − V ≥ min_spread` (limit
//! `V + min_spread`, rounded up), and *store energy for later* in slot c when
//! `V − degradation − p_c/η ≥ min_spread` (limit `(V − degradation − min_spread) × η`,
//! rounded down). Legs go best margin first (ties: earlier slot, sells first), each as large
//! as power and the two worst paths allow. Energy bought at night is sold on the next day's
//! plan, once its buy has cleared.
//!
//! Limit prices: a buy bids the highest price at which every pair it serves still earns
//! `min_spread` (rounded down to 0.01); a sell asks the lowest such price (rounded up).
//!
//! Start energy ([`BatteryArbitrage`]): the last observed stored energy (or, before any
//! observation, `initial_soc_pct`) plus the effect of every position the strategy already
//! holds for intervals not delivered yet: only energy that is held or whose buy cleared.
//!
//! Triggers: in a day-ahead market the whole trading day is planned once, on
//! `GateClosureApproaching` for that day, robustly (above). In any other market the plan
//! rolls: on every `IntervalStart` it re-plans the next 96 intervals from the start energy and
//! trades only the next interval (immediate-or-cancel, so nothing is left to clear later).
//!
//! A day-ahead plan is withdrawn whole (its other open orders cancelled) when risk or the venue
//! refuses one of its orders (cheap insurance: a robust plan is SoC-safe in any part, but a
//! refused order usually means the rest would be refused too).

use super::forecast::ForecastWindow;
use super::params::check_range;
use super::RiskRejection;
use super::{
    MarketData, NewOrder, Strategy, StrategyContext, StrategyError, StrategyInit, StrategyParams,
    StrategySnapshot, Timer,
};
use crate::ids::ClientOrderId;
use crate::market::{DeliveryInterval, Market, MarketKind};
use crate::order::{ExecKind, ExecReport, OrderStatus, Side, TimeInForce};
use crate::position::PositionKey;
use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};
use rust_decimal_macros::dec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Hours in one delivery interval.
const INTERVAL_H: Decimal = dec!(0.25);
/// Order quantities are multiples of this, MW.
const QUANTITY_DP: u32 = 3;
const LOT_MW: Decimal = dec!(0.001);
/// Prices are multiples of 0.01 CNY/MWh.
const PRICE_DP: u32 = 2;
/// Most slots one plan covers (a 25-hour daylight-saving day has 100).
pub const MAX_PLAN_SLOTS: usize = 100;
/// Rolling horizon in intervals.
const ROLLING_HORIZON: usize = 96;
/// Most forecasts kept (about four days).
const MAX_FORECASTS: usize = 400;
/// Most planned days / traded intervals remembered.
const MAX_REMEMBERED_DAYS: usize = 8;
const MAX_REMEMBERED_INTERVALS: usize = 200;
/// Most day-ahead plan orders remembered (remembered days × slots).
const MAX_PLAN_ORDERS: usize = MAX_REMEMBERED_DAYS * MAX_PLAN_SLOTS;

/// Parameters of [`BatteryArbitrage`]; every one has a documented default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatteryParams {
    /// Largest order, MW (default 1).
    pub max_order_mw: Decimal,
    /// Least margin per MWh sold after losses and degradation, CNY/MWh (default 0).
    pub min_spread_cny_per_mwh: Decimal,
    /// Wear cost per MWh discharged, CNY/MWh (default 0).
    pub degradation_cost_cny_per_mwh: Decimal,
    /// Usable energy capacity, MWh (default 2).
    pub energy_mwh: Decimal,
    /// SoC limits, percent of `energy_mwh` (defaults 10 and 90).
    pub soc_min_pct: Decimal,
    pub soc_max_pct: Decimal,
    /// SoC assumed before any observation, percent (default: `soc_min_pct`).
    pub initial_soc_pct: Decimal,
    /// Round-trip efficiency in (0, 1] (default 0.9).
    pub efficiency: Decimal,
    /// Inverter power limit, MW, both directions (default 1).
    pub power_mw: Decimal,
}

impl Default for BatteryParams {
    fn default() -> Self {
        Self {
            max_order_mw: dec!(1),
            min_spread_cny_per_mwh: dec!(0),
            degradation_cost_cny_per_mwh: dec!(0),
            energy_mwh: dec!(2),
            soc_min_pct: dec!(10),
            soc_max_pct: dec!(90),
            initial_soc_pct: dec!(10),
            efficiency: dec!(0.9),
            power_mw: dec!(1),
        }
    }
}

impl BatteryParams {
    pub const NAMES: [&'static str; 9] = [
        "max_order_mw",
        "min_spread_cny_per_mwh",
        "degradation_cost_cny_per_mwh",
        "energy_mwh",
        "soc_min_pct",
        "soc_max_pct",
        "initial_soc_pct",
        "efficiency",
        "power_mw",
    ];

    /// Reads and validates; errors name the parameter.
    pub fn from_params(p: &StrategyParams) -> Result<Self, StrategyError> {
        p.expect_only(&Self::NAMES)?;
        let d = Self::default();
        let soc_min_pct = p.decimal_or("soc_min_pct", d.soc_min_pct)?;
        let params = Self {
            max_order_mw: p.decimal_or("max_order_mw", d.max_order_mw)?,
            min_spread_cny_per_mwh: p
                .decimal_or("min_spread_cny_per_mwh", d.min_spread_cny_per_mwh)?,
            degradation_cost_cny_per_mwh: p.decimal_or(
                "degradation_cost_cny_per_mwh",
                d.degradation_cost_cny_per_mwh,
            )?,
            energy_mwh: p.decimal_or("energy_mwh", d.energy_mwh)?,
            soc_min_pct,
            soc_max_pct: p.decimal_or("soc_max_pct", d.soc_max_pct)?,
            initial_soc_pct: p.decimal_or("initial_soc_pct", soc_min_pct)?,
            efficiency: p.decimal_or("efficiency", d.efficiency)?,
            power_mw: p.decimal_or("power_mw", d.power_mw)?,
        };
        params.validate()?;
        Ok(params)
    }

    pub fn validate(&self) -> Result<(), StrategyError> {
        let big = Some(dec!(1_000_000));
        let zero = Some(Decimal::ZERO);
        check_range("max_order_mw", self.max_order_mw, zero, big, true)?;
        check_range("power_mw", self.power_mw, zero, big, true)?;
        check_range("energy_mwh", self.energy_mwh, zero, big, true)?;
        check_range(
            "min_spread_cny_per_mwh",
            self.min_spread_cny_per_mwh,
            zero,
            big,
            false,
        )?;
        check_range(
            "degradation_cost_cny_per_mwh",
            self.degradation_cost_cny_per_mwh,
            zero,
            big,
            false,
        )?;
        check_range(
            "efficiency",
            self.efficiency,
            zero,
            Some(Decimal::ONE),
            true,
        )?;
        let pct = Some(Decimal::ONE_HUNDRED);
        check_range("soc_min_pct", self.soc_min_pct, zero, pct, false)?;
        check_range("soc_max_pct", self.soc_max_pct, zero, pct, false)?;
        if self.soc_min_pct >= self.soc_max_pct {
            return Err(StrategyError::param(
                "soc_min_pct",
                format!(
                    "{} must be below soc_max_pct {}",
                    self.soc_min_pct, self.soc_max_pct
                ),
            ));
        }
        check_range(
            "initial_soc_pct",
            self.initial_soc_pct,
            Some(self.soc_min_pct),
            Some(self.soc_max_pct),
            false,
        )?;
        Ok(())
    }

    pub fn energy_min_mwh(&self) -> Decimal {
        self.energy_mwh * self.soc_min_pct / Decimal::ONE_HUNDRED
    }

    pub fn energy_max_mwh(&self) -> Decimal {
        self.energy_mwh * self.soc_max_pct / Decimal::ONE_HUNDRED
    }
}

/// One slot of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSlot {
    pub interval: DeliveryInterval,
    /// Positive: sell (discharge) this many MW; negative: buy (charge).
    pub net_sell_mw: Decimal,
    /// The order's limit price; `None` when the slot does not trade.
    pub limit_price_cny_per_mwh: Option<Decimal>,
    /// Stored energy at the end of the slot, MWh.
    pub energy_after_mwh: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArbitragePlan {
    pub slots: Vec<PlanSlot>,
    pub start_energy_mwh: Decimal,
    pub end_energy_mwh: Decimal,
    /// Σ margin × MWh sold at the forecast prices, CNY.
    pub expected_margin_cny: Decimal,
}

/// Working state of the planner.
struct Planner<'a> {
    p: &'a BatteryParams,
    prices: Vec<Option<Decimal>>,
    cap_mw: Decimal,
    e_min: Decimal,
    e_max: Decimal,
    buy_mw: Vec<Decimal>,
    sell_mw: Vec<Decimal>,
    /// Energy after each slot.
    path: Vec<Decimal>,
    buy_limit: Vec<Option<Decimal>>,
    sell_limit: Vec<Option<Decimal>>,
    margin_cny: Decimal,
    /// Robust mode: energy after each slot if no buy cleared (`low`) / no sell cleared (`high`).
    robust: Option<(Vec<Decimal>, Vec<Decimal>)>,
}

/// Plans charge/discharge over `prices` (slot order = time order; `None` = no forecast, no
/// trade) from `start_energy_mwh`. See the module docs for the method.
pub fn plan_arbitrage(
    params: &BatteryParams,
    start_energy_mwh: Decimal,
    prices: &[(DeliveryInterval, Option<Decimal>)],
) -> ArbitragePlan {
    plan(params, start_energy_mwh, prices, false)
}

/// As [`plan_arbitrage`], and SoC-safe whatever subset of the plan's orders clears: its sells
/// alone never go below the floor and its buys alone never above the ceiling.
pub fn plan_arbitrage_robust(
    params: &BatteryParams,
    start_energy_mwh: Decimal,
    prices: &[(DeliveryInterval, Option<Decimal>)],
) -> ArbitragePlan {
    plan(params, start_energy_mwh, prices, true)
}

fn plan(
    params: &BatteryParams,
    start_energy_mwh: Decimal,
    prices: &[(DeliveryInterval, Option<Decimal>)],
    robust: bool,
) -> ArbitragePlan {
    let prices = &prices[..prices.len().min(MAX_PLAN_SLOTS)];
    let n = prices.len();
    let e0 = start_energy_mwh.clamp(Decimal::ZERO, params.energy_mwh);
    let mut pl = Planner {
        p: params,
        prices: prices.iter().map(|(_, p)| *p).collect(),
        cap_mw: params.power_mw.min(params.max_order_mw),
        e_min: params.energy_min_mwh(),
        e_max: params.energy_max_mwh(),
        buy_mw: vec![Decimal::ZERO; n],
        sell_mw: vec![Decimal::ZERO; n],
        path: vec![e0; n],
        buy_limit: vec![None; n],
        sell_limit: vec![None; n],
        margin_cny: Decimal::ZERO,
        robust: robust.then(|| (vec![e0; n], vec![e0; n])),
    };
    // A start outside the SoC limits (should not happen: the BMS holds them) plans nothing
    // rather than assume energy or headroom that is not there.
    if (pl.e_min..=pl.e_max).contains(&e0) {
        if robust {
            for (margin, t, side) in legs(params, prices) {
                pl.try_leg(margin, t, side);
            }
        } else {
            for (margin, c, d) in candidates(params, prices) {
                pl.try_pair(margin, c, d);
            }
        }
    }
    let slots = (0..n)
        .map(|t| {
            let net = pl.sell_mw[t] - pl.buy_mw[t];
            let limit = if net > Decimal::ZERO {
                pl.sell_limit[t]
            } else if net < Decimal::ZERO {
                pl.buy_limit[t]
            } else {
                None
            };
            PlanSlot {
                interval: prices[t].0,
                net_sell_mw: net,
                limit_price_cny_per_mwh: limit,
                energy_after_mwh: pl.path[t],
            }
        })
        .collect();
    ArbitragePlan {
        slots,
        start_energy_mwh: e0,
        end_energy_mwh: pl.path.last().copied().unwrap_or(e0),
        expected_margin_cny: pl.margin_cny,
    }
}

/// Profitable (charge slot, discharge slot) pairs, best first, ties broken by slot order.
fn candidates(
    p: &BatteryParams,
    prices: &[(DeliveryInterval, Option<Decimal>)],
) -> Vec<(Decimal, usize, usize)> {
    let mut out = Vec::new();
    for (c, (_, pc)) in prices.iter().enumerate() {
        let Some(pc) = pc else { continue };
        let cost = *pc / p.efficiency + p.degradation_cost_cny_per_mwh;
        for (d, (_, pd)) in prices.iter().enumerate() {
            let Some(pd) = pd else { continue };
            let margin = *pd - cost;
            if c != d && margin > Decimal::ZERO && margin >= p.min_spread_cny_per_mwh {
                out.push((margin, c, d));
            }
        }
    }
    out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    out
}

/// The value of stored energy in a robust plan: the mean forecast of the plan's slots.
fn stored_value(prices: &[(DeliveryInterval, Option<Decimal>)]) -> Option<Decimal> {
    let known: Vec<Decimal> = prices.iter().filter_map(|(_, p)| *p).collect();
    if known.is_empty() {
        return None;
    }
    Some(known.iter().sum::<Decimal>() / Decimal::from(known.len()))
}

/// Robust legs (margin, slot, side), best first; ties: earlier slot, then sells.
fn legs(
    p: &BatteryParams,
    prices: &[(DeliveryInterval, Option<Decimal>)],
) -> Vec<(Decimal, usize, Side)> {
    let Some(value) = stored_value(prices) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (t, (_, price)) in prices.iter().enumerate() {
        let Some(price) = price else { continue };
        let sell = *price - value;
        let buy = value - p.degradation_cost_cny_per_mwh - *price / p.efficiency;
        for (margin, side) in [(sell, Side::Sell), (buy, Side::Buy)] {
            if margin > Decimal::ZERO && margin >= p.min_spread_cny_per_mwh {
                out.push((margin, t, side));
            }
        }
    }
    let rank = |s: Side| u8::from(s == Side::Buy);
    out.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(rank(a.2).cmp(&rank(b.2)))
    });
    out
}

impl Planner<'_> {
    /// One robust leg: sell held energy in slot `t`, or store energy there for a later plan.
    fn try_leg(&mut self, margin: Decimal, t: usize, side: Side) {
        let Some((low, high)) = &self.robust else {
            return;
        };
        let Some(price) = self.prices[t] else { return };
        let p = self.p;
        let eta = p.efficiency;
        match side {
            Side::Sell => {
                if self.buy_mw[t] > Decimal::ZERO {
                    return;
                }
                let room_mwh = low[t..]
                    .iter()
                    .map(|e| *e - self.e_min)
                    .min()
                    .unwrap_or(Decimal::ZERO);
                let mw = floor_lot((self.cap_mw - self.sell_mw[t]).min(room_mwh / INTERVAL_H));
                if mw <= Decimal::ZERO {
                    return;
                }
                let removed = mw * INTERVAL_H;
                if let Some((low, _)) = &mut self.robust {
                    for e in &mut low[t..] {
                        *e -= removed;
                    }
                }
                for e in &mut self.path[t..] {
                    *e -= removed;
                }
                self.sell_mw[t] += mw;
                self.margin_cny += margin * removed;
                // Lowest price at which selling held energy still earns min_spread over V.
                let limit = (price - margin + p.min_spread_cny_per_mwh)
                    .round_dp_with_strategy(PRICE_DP, RoundingStrategy::ToPositiveInfinity);
                self.sell_limit[t] = Some(self.sell_limit[t].map_or(limit, |l| l.max(limit)));
            }
            Side::Buy => {
                if self.sell_mw[t] > Decimal::ZERO {
                    return;
                }
                let room_mwh = high[t..]
                    .iter()
                    .map(|e| self.e_max - *e)
                    .min()
                    .unwrap_or(Decimal::ZERO);
                let mw =
                    floor_lot((self.cap_mw - self.buy_mw[t]).min(room_mwh / (INTERVAL_H * eta)));
                if mw <= Decimal::ZERO {
                    return;
                }
                let stored = mw * INTERVAL_H * eta;
                if let Some((_, high)) = &mut self.robust {
                    for e in &mut high[t..] {
                        *e += stored;
                    }
                }
                for e in &mut self.path[t..] {
                    *e += stored;
                }
                self.buy_mw[t] += mw;
                // Margin is per MWh stored (sold later).
                self.margin_cny += margin * stored;
                // V = price/η + degradation + margin; highest price still earning min_spread.
                let v = price / eta + p.degradation_cost_cny_per_mwh + margin;
                let limit = ((v - p.degradation_cost_cny_per_mwh - p.min_spread_cny_per_mwh) * eta)
                    .round_dp_with_strategy(PRICE_DP, RoundingStrategy::ToNegativeInfinity);
                self.buy_limit[t] = Some(self.buy_limit[t].map_or(limit, |l| l.min(limit)));
            }
        }
    }

    fn try_pair(&mut self, margin: Decimal, c: usize, d: usize) {
        if self.sell_mw[c] > Decimal::ZERO || self.buy_mw[d] > Decimal::ZERO {
            return;
        }
        let room_buy = self.cap_mw - self.buy_mw[c];
        let room_sell = self.cap_mw - self.sell_mw[d];
        if room_buy <= Decimal::ZERO || room_sell <= Decimal::ZERO {
            return;
        }
        let eta = self.p.efficiency;
        let energy = (room_sell * INTERVAL_H)
            .min(room_buy * INTERVAL_H * eta)
            .min(self.window_room(c, d));
        if energy <= Decimal::ZERO {
            return;
        }
        let mut buy = floor_lot(energy / (INTERVAL_H * eta));
        // Rounding leaves a tiny surplus of stored energy; the full check below catches the
        // rare case where that surplus would cross the ceiling, and one lot less fixes it.
        for _ in 0..3 {
            let sell = floor_lot(buy * eta);
            if sell <= Decimal::ZERO {
                return;
            }
            if self.feasible(c, d, buy, sell) {
                self.apply(margin, c, d, buy, sell);
                return;
            }
            buy -= LOT_MW;
        }
    }

    /// Energy that fits between the two slots on the current path (and, robustly, on the two
    /// worst paths).
    fn window_room(&self, c: usize, d: usize) -> Decimal {
        let mut room = Decimal::MAX;
        if let Some((low, high)) = &self.robust {
            for &e in &low[d..] {
                room = room.min((e - self.e_min).max(Decimal::ZERO));
            }
            for &e in &high[c..] {
                room = room.min((self.e_max - e).max(Decimal::ZERO));
            }
        }
        if c < d {
            for &e in &self.path[c..d] {
                room = room.min((self.e_max - e).max(Decimal::ZERO));
            }
        } else {
            for &e in &self.path[d..c] {
                room = room.min((e - self.e_min).max(Decimal::ZERO));
            }
        }
        room
    }

    fn deltas(&self, buy: Decimal, sell: Decimal) -> (Decimal, Decimal) {
        (buy * INTERVAL_H * self.p.efficiency, sell * INTERVAL_H)
    }

    /// Every slot's energy stays within [e_min, e_max].
    fn feasible(&self, c: usize, d: usize, buy: Decimal, sell: Decimal) -> bool {
        let (stored, removed) = self.deltas(buy, sell);
        if let Some((low, high)) = &self.robust {
            let safe = low[d..].iter().all(|e| *e - removed >= self.e_min)
                && high[c..].iter().all(|e| *e + stored <= self.e_max);
            if !safe {
                return false;
            }
        }
        (c.min(d)..self.path.len()).all(|t| {
            let mut new = self.path[t];
            if t >= c {
                new += stored;
            }
            if t >= d {
                new -= removed;
            }
            new >= self.e_min && new <= self.e_max
        })
    }

    fn apply(&mut self, margin: Decimal, c: usize, d: usize, buy: Decimal, sell: Decimal) {
        let (stored, removed) = self.deltas(buy, sell);
        for t in c.min(d)..self.path.len() {
            if t >= c {
                self.path[t] += stored;
            }
            if t >= d {
                self.path[t] -= removed;
            }
        }
        if let Some((low, high)) = &mut self.robust {
            for e in &mut low[d..] {
                *e -= removed;
            }
            for e in &mut high[c..] {
                *e += stored;
            }
        }
        self.buy_mw[c] += buy;
        self.sell_mw[d] += sell;
        self.margin_cny += margin * removed;
        let p = self.p;
        let (Some(pc), Some(pd)) = (self.prices[c], self.prices[d]) else {
            return;
        };
        // Highest buy price / lowest sell price at which this pair still earns min_spread.
        let costs = p.degradation_cost_cny_per_mwh + p.min_spread_cny_per_mwh;
        let buy_limit = ((pd - costs) * p.efficiency)
            .round_dp_with_strategy(PRICE_DP, RoundingStrategy::ToNegativeInfinity);
        let sell_limit = (pc / p.efficiency + costs)
            .round_dp_with_strategy(PRICE_DP, RoundingStrategy::ToPositiveInfinity);
        self.buy_limit[c] = Some(self.buy_limit[c].map_or(buy_limit, |l| l.min(buy_limit)));
        self.sell_limit[d] = Some(self.sell_limit[d].map_or(sell_limit, |l| l.max(sell_limit)));
    }
}

fn floor_lot(mw: Decimal) -> Decimal {
    mw.round_dp_with_strategy(QUANTITY_DP, RoundingStrategy::ToZero)
}

/// The state of [`BatteryArbitrage`] (snapshot version 1, as [`BatteryStateV1`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BatteryState {
    /// Reference (forecast) prices of the strategy's market.
    forecasts: ForecastWindow,
    /// Energy stored, MWh, from the last capacity update with a storage state.
    observed_energy_mwh: Option<Decimal>,
    /// Day-ahead trading days already planned.
    planned_days: BTreeSet<NaiveDate>,
    /// End energy of the last day-ahead plan (kept in snapshots; informative only: plans
    /// start from observed energy and cleared positions).
    last_plan_end: Option<(NaiveDate, Decimal)>,
    /// Intervals the rolling mode already traded.
    rolled: BTreeSet<DeliveryInterval>,
    /// Orders of day-ahead plans, by trading day, so a refused one withdraws its whole day.
    plan_orders: BTreeMap<ClientOrderId, NaiveDate>,
}

impl Default for BatteryState {
    fn default() -> Self {
        Self {
            forecasts: ForecastWindow::new(MAX_FORECASTS),
            observed_energy_mwh: None,
            planned_days: BTreeSet::new(),
            last_plan_end: None,
            rolled: BTreeSet::new(),
            plan_orders: BTreeMap::new(),
        }
    }
}

/// Serialised form: maps as lists so any JSON store takes them.
#[derive(Serialize, Deserialize)]
struct BatteryStateV1 {
    forecasts: Vec<(DeliveryInterval, Decimal)>,
    observed_energy_mwh: Option<Decimal>,
    planned_days: Vec<NaiveDate>,
    last_plan_end: Option<(NaiveDate, Decimal)>,
    rolled: Vec<DeliveryInterval>,
    #[serde(default)]
    plan_orders: Vec<(ClientOrderId, NaiveDate)>,
}

/// Day-ahead and rolling battery arbitrage; see the module docs.
#[derive(Debug, Clone)]
pub struct BatteryArbitrage {
    params: BatteryParams,
    market: Market,
    state: BatteryState,
}

impl BatteryArbitrage {
    pub const KIND: &'static str = "battery_arbitrage";
    const SNAPSHOT_VERSION: u32 = 1;

    pub fn new(params: BatteryParams, market: Market) -> Result<Self, StrategyError> {
        params.validate()?;
        Ok(Self {
            params,
            market,
            state: BatteryState::default(),
        })
    }

    /// The registry constructor.
    pub fn construct(init: &StrategyInit) -> Result<Box<dyn Strategy>, StrategyError> {
        let params = BatteryParams::from_params(&init.params)?;
        Ok(Box::new(Self::new(params, init.market.clone())?))
    }

    pub fn params(&self) -> &BatteryParams {
        &self.params
    }

    /// Energy to plan from: the last observation (or `initial_soc_pct`) moved by every
    /// position held for intervals not delivered yet. Only cleared energy counts: an open
    /// buy is not energy.
    fn start_energy(&self, ctx: &StrategyContext<'_>) -> Decimal {
        let p = &self.params;
        let observed = self
            .state
            .observed_energy_mwh
            .unwrap_or_else(|| p.energy_mwh * p.initial_soc_pct / Decimal::ONE_HUNDRED);
        let from = PositionKey {
            aggregation_id: ctx.aggregation_id(),
            market_id: self.market.id,
            interval: DeliveryInterval::containing(ctx.now()),
        };
        let pending = ctx
            .positions()
            .range(from..)
            .take_while(|(k, _)| {
                k.aggregation_id == from.aggregation_id && k.market_id == from.market_id
            })
            .filter(|(k, _)| k.interval.start() >= ctx.now())
            .map(|(_, pos)| {
                let net_sold = pos.net_sold_mw();
                if net_sold > Decimal::ZERO {
                    -net_sold * INTERVAL_H
                } else {
                    -net_sold * INTERVAL_H * p.efficiency
                }
            })
            .sum::<Decimal>();
        (observed + pending).clamp(Decimal::ZERO, p.energy_mwh)
    }

    /// Whether the strategy already has an order or a position for the interval.
    fn engaged(ctx: &StrategyContext<'_>, market: &Market, interval: DeliveryInterval) -> bool {
        ctx.position(market.id, interval).is_some()
            || ctx
                .open_orders()
                .any(|o| o.request.market_id == market.id && o.request.interval == interval)
    }

    /// The order for a planned slot, with its limit inside the market's price band; `None`
    /// when the slot does not trade or the band makes its limit unreachable.
    fn order_for(&self, slot: &PlanSlot, tif: TimeInForce) -> Option<NewOrder> {
        let limit = slot.limit_price_cny_per_mwh?;
        let (cap, floor) = (
            self.market.price_cap_cny_per_mwh,
            self.market.price_floor_cny_per_mwh,
        );
        let (side, quantity_mw, price) = if slot.net_sell_mw > Decimal::ZERO {
            (Side::Sell, slot.net_sell_mw, limit.max(floor))
        } else if slot.net_sell_mw < Decimal::ZERO {
            (Side::Buy, -slot.net_sell_mw, limit.min(cap))
        } else {
            return None;
        };
        if price > cap || price < floor {
            return None;
        }
        Some(NewOrder {
            market_id: self.market.id,
            product: self.market.kind.default_product(),
            interval: slot.interval,
            side,
            quantity_mw,
            price_cny_per_mwh: price,
            time_in_force: tif,
        })
    }

    fn plan_day(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        day: NaiveDate,
    ) -> Result<(), StrategyError> {
        if self.state.planned_days.contains(&day) {
            return Ok(());
        }
        let prices = self.state.forecasts.day(self.market.timezone, day);
        let plan = plan_arbitrage_robust(&self.params, self.start_energy(ctx), &prices);
        let mut ids = Vec::with_capacity(plan.slots.len());
        for slot in &plan.slots {
            if Self::engaged(ctx, &self.market, slot.interval) {
                continue;
            }
            if let Some(order) = self.order_for(slot, TimeInForce::Day) {
                ids.push(ctx.submit(order)?);
            }
        }
        self.state.planned_days.insert(day);
        bound_set(&mut self.state.planned_days, MAX_REMEMBERED_DAYS);
        // Forget the orders of days no longer remembered, keeping the map bounded.
        if let Some(oldest) = self.state.planned_days.first().copied() {
            self.state.plan_orders.retain(|_, d| *d >= oldest);
        }
        self.state
            .plan_orders
            .extend(ids.into_iter().map(|id| (id, day)));
        self.state.last_plan_end = Some((day, plan.end_energy_mwh));
        Ok(())
    }

    fn roll(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        started: DeliveryInterval,
    ) -> Result<(), StrategyError> {
        let next = started.next();
        if self.state.rolled.contains(&next) || Self::engaged(ctx, &self.market, next) {
            return Ok(());
        }
        let prices = self.state.forecasts.horizon(next, ROLLING_HORIZON);
        if prices[0].1.is_none() {
            return Ok(());
        }
        let plan = plan_arbitrage(&self.params, self.start_energy(ctx), &prices);
        if let Some(order) = plan
            .slots
            .first()
            .and_then(|s| self.order_for(s, TimeInForce::Ioc))
        {
            ctx.submit(order)?;
            self.state.rolled.insert(next);
            bound_set(&mut self.state.rolled, MAX_REMEMBERED_INTERVALS);
        }
        Ok(())
    }

    /// A day-ahead plan is only SoC-safe whole (its sells rely on its buys and the other way
    /// round): when one of its orders is refused, cancel the rest of that day's plan.
    fn withdraw_day_of(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        refused: &ClientOrderId,
    ) -> Result<(), StrategyError> {
        let Some(day) = self.state.plan_orders.remove(refused) else {
            return Ok(());
        };
        let siblings: Vec<ClientOrderId> = self
            .state
            .plan_orders
            .iter()
            .filter(|(id, d)| **d == day && ctx.open_order(id).is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in siblings {
            let pending = ctx
                .open_order(&id)
                .is_some_and(|o| o.status == OrderStatus::PendingCancel);
            if !pending {
                ctx.cancel(&id)?;
            }
            self.state.plan_orders.remove(&id);
        }
        Ok(())
    }
}

/// Keeps the `max` largest elements of an ordered set.
fn bound_set<T: Ord + Copy>(set: &mut BTreeSet<T>, max: usize) {
    while set.len() > max {
        let Some(first) = set.first().copied() else {
            break;
        };
        set.remove(&first);
    }
}

impl Strategy for BatteryArbitrage {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn on_market_data(
        &mut self,
        _ctx: &mut StrategyContext<'_>,
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
                self.state
                    .forecasts
                    .insert(*interval, *reference_price_cny_per_mwh);
            }
        }
        Ok(())
    }

    fn on_capacity(
        &mut self,
        _ctx: &mut StrategyContext<'_>,
        update: &super::CapacityUpdate,
    ) -> Result<(), StrategyError> {
        if let Some(storage) = update.storage {
            self.state.observed_energy_mwh = Some(storage.energy_kwh / dec!(1000));
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        timer: &Timer,
    ) -> Result<(), StrategyError> {
        self.state.forecasts.prune_older_than_a_day(ctx.now());
        match (*timer, self.market.kind) {
            (
                Timer::GateClosureApproaching {
                    market,
                    trading_day,
                },
                MarketKind::DayAhead,
            ) if market == self.market.id => self.plan_day(ctx, trading_day),
            (Timer::IntervalStart { interval }, kind) if kind != MarketKind::DayAhead => {
                self.roll(ctx, interval)
            }
            _ => Ok(()),
        }
    }

    fn on_risk_reject(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        reject: &RiskRejection,
    ) -> Result<(), StrategyError> {
        self.withdraw_day_of(ctx, &reject.client_order_id)
    }

    fn on_exec_report(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        report: &ExecReport,
        _status: OrderStatus,
    ) -> Result<(), StrategyError> {
        if matches!(report.kind, ExecKind::Rejected { .. }) {
            self.withdraw_day_of(ctx, &report.client_order_id)?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError> {
        let s = &self.state;
        let v1 = BatteryStateV1 {
            forecasts: s.forecasts.iter().collect(),
            observed_energy_mwh: s.observed_energy_mwh,
            planned_days: s.planned_days.iter().copied().collect(),
            last_plan_end: s.last_plan_end,
            rolled: s.rolled.iter().copied().collect(),
            plan_orders: s.plan_orders.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        };
        StrategySnapshot::encode(Self::KIND, Self::SNAPSHOT_VERSION, &v1)
    }

    fn restore(&mut self, snapshot: &StrategySnapshot) -> Result<(), StrategyError> {
        let v1: BatteryStateV1 = snapshot.decode(Self::KIND, Self::SNAPSHOT_VERSION)?;
        if v1.forecasts.len() > MAX_FORECASTS
            || v1.planned_days.len() > MAX_REMEMBERED_DAYS
            || v1.rolled.len() > MAX_REMEMBERED_INTERVALS
            || v1.plan_orders.len() > MAX_PLAN_ORDERS
        {
            return Err(StrategyError::Snapshot(format!(
                "{}: snapshot exceeds its bounds ({MAX_FORECASTS} forecasts, {MAX_REMEMBERED_DAYS} days, {MAX_REMEMBERED_INTERVALS} intervals)",
                Self::KIND
            )));
        }
        let forecasts =
            ForecastWindow::from_pairs(MAX_FORECASTS, v1.forecasts).ok_or_else(|| {
                StrategyError::Snapshot(format!("{}: too many forecasts", Self::KIND))
            })?;
        self.state = BatteryState {
            forecasts,
            observed_energy_mwh: v1.observed_energy_mwh,
            planned_days: v1.planned_days.into_iter().collect(),
            last_plan_end: v1.last_plan_end,
            rolled: v1.rolled.into_iter().collect(),
            plan_orders: v1.plan_orders.into_iter().collect(),
        };
        Ok(())
    }
}
