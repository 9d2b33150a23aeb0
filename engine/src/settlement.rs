//! Settlement: what one aggregation earned and owed for one trading day, line by line, and how
//! that is shared out to its resources.
//!
//! **Rounding rule (applied once).** Every quantity and every intermediate product is exact
//! `Decimal`. Money is rounded exactly once, at the line level, to 0.01 (fen / cent) with
//! half-even (banker's) rounding. Every total is the sum of rounded lines, so a report always
//! adds up to the last fen as printed. The only division is the exempt share of a penalty
//! (28 significant digits, then the line is rounded once).
//!
//! Per interval (0.25 h), in CNY:
//! - energy = day-ahead MW × 0.25 h × day-ahead clearing price;
//! - real-time deviation = (real-time MW − day-ahead MW) × 0.25 h × real-time price (a missing
//!   day-ahead award counts as 0 MW);
//! - netted legs: a market position that nets to 0 MW still moved money (sold 1 MW @279.08,
//!   bought 1 MW @284.65): each leg is its own line of the market's kind, `±MW × 0.25 h ×
//!   leg price` (−1.39 CNY in that example), as a trading centre settles both legs;
//! - deviation penalty: the *awarded* schedule is the real-time quantity if there is one, else
//!   the day-ahead one, else 0 MW when only netted legs were traded. With `dev = delivered − awarded` and the allowance
//!   `band% × |awarded|` (the same as `|dev| / |awarded| > band`, without dividing by a zero
//!   award), the excess `max(0, |dev| − allowance)` MW is penalised at
//!   `|price base| × multiplier` (over- or under-delivery multiplier by the sign of `dev`). The
//!   price base is the market's reference price for the interval
//!   ([`IntervalInput::reference_price_cny_per_mwh`], chosen per province: real-time clearing
//!   price, day-ahead price or the statement's price), or a monthly average; without a
//!   reference price the awarded quantity's own price is the fallback. Its absolute value is
//!   used so a negative price never pays a deviator.
//! - exemption: the exempt kinds' share of the deviation is not penalised. That share is
//!   `Σ|dev_r|` over resources of exempt kinds divided by `Σ|dev_r|` over all resources
//!   (`dev_r = delivered_r − scheduled_r`); without per-resource data it is 0.
//! - regulation capacity = MW × capacity price, the price as the venue quotes it: CNY per MW
//!   of capacity per interval (no × 0.25 h); mileage = mileage MW × mileage price (CNY/MW);
//! - demand response = min(max(curtailed, 0), committed) MWh × DR price.
//!
//! Per day: revenue = all lines but penalties; penalties = the penalty lines (negative);
//! P&L (net) = revenue + penalties. Resource contributions: each resource's energy is
//! `Σ |delivered_r| × 0.25 h` (energy moved, either direction). Revenue is shared by energy
//! over all resources; penalties by energy over the non-exempt resources (over all if none of
//! them delivered). A share is `total × energy_r / Σenergy`, rounded half-even to 0.01; the
//! rounding remainder goes to the largest contributor (lowest id on a tie), so shares add up to
//! the totals exactly.
//!
//! Currency: CNY is the base. A report in USD or EUR converts every line with the record's own
//! [`RatesTable`] (`round_half_even(amount_cny / cny_per_unit, 2)`), totals are sums of the
//! converted lines, and the contributions are shared out again from the converted totals.
//! Prices stay in CNY.
//!
//! Lifecycle of a [`SettlementRecord`]: `draft → confirmed`, `draft → disputed`,
//! `disputed → draft` (the dispute is accepted: amend, then confirm again) and
//! `disputed → confirmed` (settled as is). A confirmed record is final: every mutation is a
//! [`SettlementError::Confirmed`]. Amending is only possible in draft. Every transition is kept
//! in the record's history (bounded).

use crate::aggregation::MAX_MEMBERS_PER_AGGREGATION;
use crate::error::ValidationError;
use crate::ids::{AggregationId, ResourceId};
use crate::market::DeliveryInterval;
use crate::template::ResourceKind;
use crate::Timestamp;
use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use thiserror::Error;

/// Decimal places of money.
pub const MONEY_SCALE: u32 = 2;
/// Most intervals in one day's record (96, or 100 on a daylight-saving day).
pub const MAX_INTERVALS: usize = 100;
/// Most status changes a record keeps.
pub const MAX_HISTORY: usize = 64;
/// Longest dispute reason, in characters.
pub const MAX_REASON_CHARS: usize = 1_000;
/// Bound on |quantity| in MW or MWh.
pub const MAX_QUANTITY_MW: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
/// Bound on |price| in CNY per unit.
pub const MAX_PRICE_CNY: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
/// Bound on a penalty multiplier.
pub const MAX_MULTIPLIER: Decimal = Decimal::from_parts(100, 0, 0, false, 0);
/// Most exempt kinds in a rule.
pub const MAX_EXEMPT_KINDS: usize = 32;

const HUNDRED: Decimal = Decimal::ONE_HUNDRED;
const INTERVAL_HOURS: Decimal = Decimal::from_parts(25, 0, 0, false, 2);

/// Rounds money once: 0.01, half-even, always printed with two decimals.
pub fn round_money(x: Decimal) -> Decimal {
    let mut r = x.round_dp_with_strategy(MONEY_SCALE, RoundingStrategy::MidpointNearestEven);
    r.rescale(MONEY_SCALE);
    r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Currency {
    Cny,
    Usd,
    Eur,
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Currency::Cny => "CNY",
            Currency::Usd => "USD",
            Currency::Eur => "EUR",
        })
    }
}

/// Exchange rates kept with a record so its reports can always be reproduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatesTable {
    pub cny_per_usd: Decimal,
    pub cny_per_eur: Decimal,
    pub as_of: Timestamp,
}

impl RatesTable {
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (field, rate) in [
            ("cny_per_usd", self.cny_per_usd),
            ("cny_per_eur", self.cny_per_eur),
        ] {
            if rate <= Decimal::ZERO || rate > MAX_MULTIPLIER * Decimal::TEN {
                return Err(ValidationError::new(
                    field,
                    format!("{field} {rate} outside (0, 1000]"),
                ));
            }
        }
        Ok(())
    }

    /// CNY per one unit of `currency`.
    pub fn cny_per_unit(&self, currency: Currency) -> Decimal {
        match currency {
            Currency::Cny => Decimal::ONE,
            Currency::Usd => self.cny_per_usd,
            Currency::Eur => self.cny_per_eur,
        }
    }

    /// A rounded CNY amount in `currency`, rounded again by the money rule.
    pub fn convert(&self, amount_cny: Decimal, currency: Currency) -> Decimal {
        match currency {
            Currency::Cny => round_money(amount_cny),
            other => round_money(amount_cny / self.cny_per_unit(other)),
        }
    }
}

/// The price a deviation penalty is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceBase {
    /// The interval's clearing price: real-time if there is one, else day-ahead.
    ClearingPrice,
    /// A fixed monthly average price, CNY/MWh.
    MonthlyAverage(Decimal),
}

/// A province's deviation penalty (see the module docs for how it applies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PenaltyRule {
    pub province: String,
    /// Deviation allowed without penalty, percent of |awarded|, 0..=100 (e.g. 3).
    pub tolerance_band_pct: Decimal,
    pub price_base: PriceBase,
    pub over_delivery_multiplier: Decimal,
    pub under_delivery_multiplier: Decimal,
    /// Kinds whose share of the deviation is not penalised.
    pub exempt_kinds: Vec<ResourceKind>,
}

impl PenaltyRule {
    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::template::validate_name("province", &self.province)?;
        let band = self.tolerance_band_pct;
        if band < Decimal::ZERO || band > HUNDRED {
            return Err(ValidationError::new(
                "tolerance_band_pct",
                format!("tolerance_band_pct {band} outside 0..=100"),
            ));
        }
        for (field, m) in [
            ("over_delivery_multiplier", self.over_delivery_multiplier),
            ("under_delivery_multiplier", self.under_delivery_multiplier),
        ] {
            if m < Decimal::ZERO || m > MAX_MULTIPLIER {
                return Err(ValidationError::new(
                    field,
                    format!("{field} {m} outside 0..={MAX_MULTIPLIER}"),
                ));
            }
        }
        if let PriceBase::MonthlyAverage(p) = self.price_base {
            check_bound("price_base", p, MAX_PRICE_CNY)?;
        }
        if self.exempt_kinds.len() > MAX_EXEMPT_KINDS {
            return Err(ValidationError::new(
                "exempt_kinds",
                format!("at most {MAX_EXEMPT_KINDS} exempt kinds"),
            ));
        }
        Ok(())
    }

    fn is_exempt(&self, kind: &ResourceKind) -> bool {
        self.exempt_kinds.contains(kind)
    }
}

fn check_bound(field: &str, x: Decimal, bound: Decimal) -> Result<(), ValidationError> {
    if x.abs() > bound {
        return Err(ValidationError::new(
            field,
            format!("{field} {x} outside ±{bound}"),
        ));
    }
    Ok(())
}

fn check_non_negative(field: &str, x: Decimal, bound: Decimal) -> Result<(), ValidationError> {
    if x < Decimal::ZERO || x > bound {
        return Err(ValidationError::new(
            field,
            format!("{field} {x} outside 0..={bound}"),
        ));
    }
    Ok(())
}

/// A cleared quantity and its price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleared {
    pub quantity_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegulationAward {
    pub capacity_mw: Decimal,
    /// CNY per MW of capacity per interval, as the venue quotes it.
    #[serde(alias = "capacity_price_cny_per_mw_h")]
    pub capacity_price_cny_per_mw: Decimal,
    pub mileage_mw: Decimal,
    pub mileage_price_cny_per_mw: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemandResponseEvent {
    pub committed_mwh: Decimal,
    pub curtailed_mwh: Decimal,
    pub price_cny_per_mwh: Decimal,
}

/// One resource's schedule and metered delivery in an interval (MW, positive = delivering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDelivery {
    pub resource_id: ResourceId,
    pub scheduled_mw: Decimal,
    pub delivered_mw: Decimal,
}

/// Everything settled for one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalInput {
    pub interval: DeliveryInterval,
    #[serde(default)]
    pub day_ahead: Option<Cleared>,
    #[serde(default)]
    pub real_time: Option<Cleared>,
    /// The aggregation's metered delivery, MW (average over the interval).
    pub delivered_mw: Decimal,
    #[serde(default)]
    pub regulation: Option<RegulationAward>,
    #[serde(default)]
    pub demand_response: Option<DemandResponseEvent>,
    #[serde(default)]
    pub resources: Vec<ResourceDelivery>,
    /// Legs of positions that net to 0 MW, each settled as its own line (module docs).
    #[serde(default)]
    pub netted_legs: Vec<NettedLeg>,
    /// The market's reference price for the interval, CNY/MWh: the penalty's price base
    /// under [`PriceBase::ClearingPrice`] (None: the awarded quantity's own price).
    #[serde(default)]
    pub reference_price_cny_per_mwh: Option<Decimal>,
}

/// One leg of a position that nets to 0 MW: `quantity_mw` is signed (+ sold, − bought).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NettedLeg {
    /// [`LineKind::Energy`] (day-ahead) or [`LineKind::RealTimeDeviation`] (real time).
    pub kind: LineKind,
    pub quantity_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
}

impl IntervalInput {
    fn validate(&self) -> Result<(), ValidationError> {
        check_bound("delivered_mw", self.delivered_mw, MAX_QUANTITY_MW)?;
        for c in self.day_ahead.iter().chain(&self.real_time) {
            check_bound("quantity_mw", c.quantity_mw, MAX_QUANTITY_MW)?;
            check_bound("price_cny_per_mwh", c.price_cny_per_mwh, MAX_PRICE_CNY)?;
        }
        if let Some(r) = &self.regulation {
            check_non_negative("capacity_mw", r.capacity_mw, MAX_QUANTITY_MW)?;
            check_non_negative("mileage_mw", r.mileage_mw, MAX_QUANTITY_MW)?;
            check_non_negative(
                "capacity_price_cny_per_mw",
                r.capacity_price_cny_per_mw,
                MAX_PRICE_CNY,
            )?;
            check_non_negative(
                "mileage_price_cny_per_mw",
                r.mileage_price_cny_per_mw,
                MAX_PRICE_CNY,
            )?;
        }
        if let Some(d) = &self.demand_response {
            check_non_negative("committed_mwh", d.committed_mwh, MAX_QUANTITY_MW)?;
            check_bound("curtailed_mwh", d.curtailed_mwh, MAX_QUANTITY_MW)?;
            check_non_negative("price_cny_per_mwh", d.price_cny_per_mwh, MAX_PRICE_CNY)?;
        }
        for l in &self.netted_legs {
            check_bound("quantity_mw", l.quantity_mw, MAX_QUANTITY_MW)?;
            check_bound("price_cny_per_mwh", l.price_cny_per_mwh, MAX_PRICE_CNY)?;
            if !matches!(l.kind, LineKind::Energy | LineKind::RealTimeDeviation) {
                return Err(ValidationError::new(
                    "netted_legs",
                    format!(
                        "a netted leg is energy or real time, not {}",
                        l.kind.as_str()
                    ),
                ));
            }
        }
        if let Some(p) = self.reference_price_cny_per_mwh {
            check_bound("reference_price_cny_per_mwh", p, MAX_PRICE_CNY)?;
        }
        for r in &self.resources {
            check_bound("scheduled_mw", r.scheduled_mw, MAX_QUANTITY_MW)?;
            check_bound("delivered_mw", r.delivered_mw, MAX_QUANTITY_MW)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceInfo {
    pub resource_id: ResourceId,
    pub kind: ResourceKind,
}

/// One aggregation's trading day, as settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayInput {
    pub aggregation_id: AggregationId,
    pub trading_day: NaiveDate,
    pub resources: Vec<ResourceInfo>,
    pub intervals: Vec<IntervalInput>,
}

/// What a line settles. Quantity units: regulation capacity and mileage in MW, everything
/// else in MWh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    Energy,
    RealTimeDeviation,
    DeviationPenalty,
    RegulationCapacity,
    RegulationMileage,
    DemandResponse,
}

impl LineKind {
    pub const ALL: [LineKind; 6] = [
        LineKind::Energy,
        LineKind::RealTimeDeviation,
        LineKind::DeviationPenalty,
        LineKind::RegulationCapacity,
        LineKind::RegulationMileage,
        LineKind::DemandResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Energy => "energy",
            LineKind::RealTimeDeviation => "real_time_deviation",
            LineKind::DeviationPenalty => "deviation_penalty",
            LineKind::RegulationCapacity => "regulation_capacity",
            LineKind::RegulationMileage => "regulation_mileage",
            LineKind::DemandResponse => "demand_response",
        }
    }

    /// Unit of the line's quantity; regulation capacity is MW held for the interval.
    pub fn unit(self) -> &'static str {
        match self {
            LineKind::RegulationMileage | LineKind::RegulationCapacity => "MW",
            _ => "MWh",
        }
    }
}

/// One settled amount: `amount_cny = round_money(sign × quantity × price × factor)`, where the
/// sign is −1 for penalties and `factor` is the non-exempt share (1 for every other line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementLine {
    pub interval: DeliveryInterval,
    pub kind: LineKind,
    pub quantity: Decimal,
    pub price_cny: Decimal,
    pub factor: Decimal,
    pub amount_cny: Decimal,
}

impl SettlementLine {
    fn new(interval: DeliveryInterval, kind: LineKind, quantity: Decimal, price: Decimal) -> Self {
        Self::with_factor(interval, kind, quantity, price, Decimal::ONE)
    }

    fn with_factor(
        interval: DeliveryInterval,
        kind: LineKind,
        quantity: Decimal,
        price_cny: Decimal,
        factor: Decimal,
    ) -> Self {
        let sign = if kind == LineKind::DeviationPenalty {
            Decimal::NEGATIVE_ONE
        } else {
            Decimal::ONE
        };
        Self {
            interval,
            kind,
            quantity: quantity.normalize(),
            price_cny,
            factor: factor.normalize(),
            amount_cny: round_money(sign * quantity * price_cny * factor),
        }
    }
}

/// A resource's weight in the shares: its kind and the energy it moved in the day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceEnergy {
    pub resource_id: ResourceId,
    pub kind: ResourceKind,
    pub energy_mwh: Decimal,
    pub exempt: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettlementStatus {
    Draft,
    Confirmed,
    Disputed,
}

impl SettlementStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SettlementStatus::Draft => "draft",
            SettlementStatus::Confirmed => "confirmed",
            SettlementStatus::Disputed => "disputed",
        }
    }

    pub fn can_transition_to(self, to: SettlementStatus) -> bool {
        use SettlementStatus::*;
        matches!(
            (self, to),
            (Draft, Confirmed) | (Draft, Disputed) | (Disputed, Draft) | (Disputed, Confirmed)
        )
    }
}

impl fmt::Display for SettlementStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub from: SettlementStatus,
    pub to: SettlementStatus,
    pub at: Timestamp,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettlementError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("settlement of aggregation {aggregation_id} for {trading_day} is confirmed and can no longer change")]
    Confirmed {
        aggregation_id: AggregationId,
        trading_day: NaiveDate,
    },
    #[error("illegal settlement transition from {from} to {to} (legal: draft→confirmed, draft→disputed, disputed→draft, disputed→confirmed)")]
    IllegalTransition {
        from: SettlementStatus,
        to: SettlementStatus,
    },
    #[error("only a draft can be amended; this record is {0}")]
    NotDraft(SettlementStatus),
    #[error("resource {0} has deliveries but is not listed in the day's resources")]
    UnknownResource(ResourceId),
    #[error("resource {0} is listed twice")]
    DuplicateResource(ResourceId),
    #[error("interval {0} appears twice")]
    DuplicateInterval(DeliveryInterval),
    #[error("amendment is for aggregation {got_aggregation} on {got_day}, the record is for aggregation {aggregation_id} on {trading_day}")]
    WrongRecord {
        aggregation_id: AggregationId,
        trading_day: NaiveDate,
        got_aggregation: AggregationId,
        got_day: NaiveDate,
    },
    #[error("{what} limit of {limit} reached")]
    LimitReached { what: &'static str, limit: usize },
    #[error("report could not be serialised: {0}")]
    Serialise(String),
}

/// The lines of one interval.
fn settle_interval(
    input: &IntervalInput,
    rule: &PenaltyRule,
    kinds: &BTreeMap<ResourceId, ResourceKind>,
) -> Vec<SettlementLine> {
    let iv = input.interval;
    let mut lines = Vec::new();
    let da_mw = input.day_ahead.map_or(Decimal::ZERO, |c| c.quantity_mw);
    if let Some(da) = input.day_ahead {
        lines.push(SettlementLine::new(
            iv,
            LineKind::Energy,
            da.quantity_mw * INTERVAL_HOURS,
            da.price_cny_per_mwh,
        ));
    }
    if let Some(rt) = input.real_time {
        let q = (rt.quantity_mw - da_mw) * INTERVAL_HOURS;
        lines.push(SettlementLine::new(
            iv,
            LineKind::RealTimeDeviation,
            q,
            rt.price_cny_per_mwh,
        ));
    }
    for leg in &input.netted_legs {
        lines.push(SettlementLine::new(
            iv,
            leg.kind,
            leg.quantity_mw * INTERVAL_HOURS,
            leg.price_cny_per_mwh,
        ));
    }
    if let Some(line) = penalty_line(input, rule, kinds) {
        lines.push(line);
    }
    if let Some(r) = input.regulation {
        lines.push(SettlementLine::new(
            iv,
            LineKind::RegulationCapacity,
            r.capacity_mw,
            r.capacity_price_cny_per_mw,
        ));
        lines.push(SettlementLine::new(
            iv,
            LineKind::RegulationMileage,
            r.mileage_mw,
            r.mileage_price_cny_per_mw,
        ));
    }
    if let Some(d) = input.demand_response {
        let paid = d.curtailed_mwh.max(Decimal::ZERO).min(d.committed_mwh);
        lines.push(SettlementLine::new(
            iv,
            LineKind::DemandResponse,
            paid,
            d.price_cny_per_mwh,
        ));
    }
    lines
}

/// The penalty line, if the deviation exceeds the band (see the module docs).
fn penalty_line(
    input: &IntervalInput,
    rule: &PenaltyRule,
    kinds: &BTreeMap<ResourceId, ResourceKind>,
) -> Option<SettlementLine> {
    let awarded = input.real_time.or(input.day_ahead).or_else(|| {
        // Only netted legs: the schedule is 0 MW at the reference price (or the first leg's).
        let price = input
            .reference_price_cny_per_mwh
            .or(input.netted_legs.first().map(|l| l.price_cny_per_mwh))?;
        Some(Cleared {
            quantity_mw: Decimal::ZERO,
            price_cny_per_mwh: price,
        })
    })?;
    let dev = input.delivered_mw - awarded.quantity_mw;
    let allowance = rule.tolerance_band_pct / HUNDRED * awarded.quantity_mw.abs();
    let excess_mw = dev.abs() - allowance;
    if excess_mw <= Decimal::ZERO {
        return None;
    }
    let base = match rule.price_base {
        PriceBase::ClearingPrice => input
            .reference_price_cny_per_mwh
            .unwrap_or(awarded.price_cny_per_mwh),
        PriceBase::MonthlyAverage(p) => p,
    };
    let multiplier = if dev > Decimal::ZERO {
        rule.over_delivery_multiplier
    } else {
        rule.under_delivery_multiplier
    };
    let factor = Decimal::ONE - exempt_share(input, rule, kinds);
    Some(SettlementLine::with_factor(
        input.interval,
        LineKind::DeviationPenalty,
        excess_mw * INTERVAL_HOURS,
        base.abs() * multiplier,
        factor,
    ))
}

/// Σ|dev| of exempt resources / Σ|dev| of all resources; 0 without per-resource deviations.
fn exempt_share(
    input: &IntervalInput,
    rule: &PenaltyRule,
    kinds: &BTreeMap<ResourceId, ResourceKind>,
) -> Decimal {
    let (mut exempt, mut total) = (Decimal::ZERO, Decimal::ZERO);
    for r in &input.resources {
        let dev = (r.delivered_mw - r.scheduled_mw).abs();
        total += dev;
        if kinds.get(&r.resource_id).is_some_and(|k| rule.is_exempt(k)) {
            exempt += dev;
        }
    }
    if total.is_zero() {
        Decimal::ZERO
    } else {
        exempt / total
    }
}

/// Shares `total` by `weights`: half-even to 0.01 each, remainder to the largest weight
/// (lowest index on a tie). All-zero weights give everything to the first entry.
pub fn allocate(total: Decimal, weights: &[Decimal]) -> Vec<Decimal> {
    let Some(largest) = largest_index(weights) else {
        return Vec::new();
    };
    let sum: Decimal = weights.iter().sum();
    let mut shares: Vec<Decimal> = if sum.is_zero() {
        vec![round_money(Decimal::ZERO); weights.len()]
    } else {
        weights
            .iter()
            .map(|w| round_money(total * *w / sum))
            .collect()
    };
    let assigned: Decimal = shares.iter().sum();
    shares[largest] = round_money(shares[largest] + total - assigned);
    shares
}

fn largest_index(weights: &[Decimal]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, w) in weights.iter().enumerate() {
        if best.is_none_or(|b| *w > weights[b]) {
            best = Some(i);
        }
    }
    best
}

/// Day totals in one currency; each is a sum of (converted) rounded lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub energy: Decimal,
    pub real_time_deviation: Decimal,
    pub deviation_penalty: Decimal,
    pub regulation_capacity: Decimal,
    pub regulation_mileage: Decimal,
    pub demand_response: Decimal,
    /// Everything but penalties.
    pub revenue: Decimal,
    /// The penalty lines (negative or zero).
    pub penalties: Decimal,
    /// P&L: revenue + penalties.
    pub net: Decimal,
}

impl Totals {
    fn add(&mut self, kind: LineKind, amount: Decimal) {
        let slot = match kind {
            LineKind::Energy => &mut self.energy,
            LineKind::RealTimeDeviation => &mut self.real_time_deviation,
            LineKind::DeviationPenalty => &mut self.deviation_penalty,
            LineKind::RegulationCapacity => &mut self.regulation_capacity,
            LineKind::RegulationMileage => &mut self.regulation_mileage,
            LineKind::DemandResponse => &mut self.demand_response,
        };
        *slot += amount;
        if kind == LineKind::DeviationPenalty {
            self.penalties += amount;
        } else {
            self.revenue += amount;
        }
        self.net += amount;
    }

    fn named(&self) -> [(&'static str, Decimal); 9] {
        [
            ("total_energy", self.energy),
            ("total_real_time_deviation", self.real_time_deviation),
            ("total_deviation_penalty", self.deviation_penalty),
            ("total_regulation_capacity", self.regulation_capacity),
            ("total_regulation_mileage", self.regulation_mileage),
            ("total_demand_response", self.demand_response),
            ("total_revenue", self.revenue),
            ("total_penalties", self.penalties),
            ("net", self.net),
        ]
    }

    fn zeroed() -> Self {
        let z = round_money(Decimal::ZERO);
        Self {
            energy: z,
            real_time_deviation: z,
            deviation_penalty: z,
            regulation_capacity: z,
            regulation_mileage: z,
            demand_response: z,
            revenue: z,
            penalties: z,
            net: z,
        }
    }
}

/// A resource's part of the day, in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceContribution {
    pub resource_id: ResourceId,
    pub kind: ResourceKind,
    pub energy_mwh: Decimal,
    pub revenue_share: Decimal,
    pub penalty_share: Decimal,
    pub net: Decimal,
}

/// One aggregation's settlement for one trading day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementRecord {
    aggregation_id: AggregationId,
    trading_day: NaiveDate,
    status: SettlementStatus,
    rule: PenaltyRule,
    rates: RatesTable,
    lines: Vec<SettlementLine>,
    resources: Vec<ResourceEnergy>,
    history: Vec<StatusChange>,
}

impl SettlementRecord {
    /// Settles a day into a draft record (rules in the module docs).
    pub fn settle(
        input: &DayInput,
        rule: &PenaltyRule,
        rates: RatesTable,
    ) -> Result<Self, SettlementError> {
        rule.validate()?;
        rates.validate()?;
        let kinds = validate_day(input)?;
        let mut lines = Vec::new();
        let mut energy: BTreeMap<ResourceId, Decimal> =
            kinds.keys().map(|r| (*r, Decimal::ZERO)).collect();
        for interval in &input.intervals {
            lines.extend(settle_interval(interval, rule, &kinds));
            for r in &interval.resources {
                if let Some(e) = energy.get_mut(&r.resource_id) {
                    *e += r.delivered_mw.abs() * INTERVAL_HOURS;
                }
            }
        }
        lines.sort_by_key(|l| (l.interval, l.kind));
        let resources = kinds
            .iter()
            .map(|(rid, kind)| ResourceEnergy {
                resource_id: *rid,
                kind: kind.clone(),
                energy_mwh: energy[rid].normalize(),
                exempt: rule.is_exempt(kind),
            })
            .collect();
        Ok(Self {
            aggregation_id: input.aggregation_id,
            trading_day: input.trading_day,
            status: SettlementStatus::Draft,
            rule: rule.clone(),
            rates,
            lines,
            resources,
            history: Vec::new(),
        })
    }

    pub fn aggregation_id(&self) -> AggregationId {
        self.aggregation_id
    }

    pub fn trading_day(&self) -> NaiveDate {
        self.trading_day
    }

    pub fn status(&self) -> SettlementStatus {
        self.status
    }

    pub fn rule(&self) -> &PenaltyRule {
        &self.rule
    }

    pub fn rates(&self) -> &RatesTable {
        &self.rates
    }

    pub fn lines(&self) -> &[SettlementLine] {
        &self.lines
    }

    pub fn resources(&self) -> &[ResourceEnergy] {
        &self.resources
    }

    pub fn history(&self) -> &[StatusChange] {
        &self.history
    }

    /// Day totals in `currency`.
    pub fn totals(&self, currency: Currency) -> Totals {
        let mut totals = Totals::zeroed();
        for line in &self.lines {
            totals.add(line.kind, self.rates.convert(line.amount_cny, currency));
        }
        totals
    }

    /// Each resource's shares of the totals in `currency`; they add up to the totals exactly.
    pub fn contributions(&self, currency: Currency) -> Vec<ResourceContribution> {
        let totals = self.totals(currency);
        let energy: Vec<Decimal> = self.resources.iter().map(|r| r.energy_mwh).collect();
        let revenue = allocate(totals.revenue, &energy);
        let liable: Vec<Decimal> = self
            .resources
            .iter()
            .map(|r| {
                if r.exempt {
                    Decimal::ZERO
                } else {
                    r.energy_mwh
                }
            })
            .collect();
        let liable_sum: Decimal = liable.iter().sum();
        let penalty = allocate(
            totals.penalties,
            if liable_sum.is_zero() {
                &energy
            } else {
                &liable
            },
        );
        self.resources
            .iter()
            .zip(revenue.into_iter().zip(penalty))
            .map(|(r, (rev, pen))| ResourceContribution {
                resource_id: r.resource_id,
                kind: r.kind.clone(),
                energy_mwh: r.energy_mwh,
                revenue_share: rev,
                penalty_share: pen,
                net: rev + pen,
            })
            .collect()
    }

    fn transition(
        &mut self,
        to: SettlementStatus,
        at: Timestamp,
        reason: Option<String>,
    ) -> Result<(), SettlementError> {
        self.ensure_mutable()?;
        if !self.status.can_transition_to(to) {
            return Err(SettlementError::IllegalTransition {
                from: self.status,
                to,
            });
        }
        if self.history.len() >= MAX_HISTORY {
            return Err(SettlementError::LimitReached {
                what: "status changes per record",
                limit: MAX_HISTORY,
            });
        }
        self.history.push(StatusChange {
            from: self.status,
            to,
            at,
            reason,
        });
        self.status = to;
        Ok(())
    }

    fn ensure_mutable(&self) -> Result<(), SettlementError> {
        if self.status == SettlementStatus::Confirmed {
            return Err(SettlementError::Confirmed {
                aggregation_id: self.aggregation_id,
                trading_day: self.trading_day,
            });
        }
        Ok(())
    }

    /// Draft or disputed → confirmed: final from now on.
    pub fn confirm(&mut self, at: Timestamp) -> Result<(), SettlementError> {
        self.transition(SettlementStatus::Confirmed, at, None)
    }

    /// Draft → disputed, with the counterparty's reason (1..=1000 characters).
    pub fn dispute(&mut self, reason: &str, at: Timestamp) -> Result<(), SettlementError> {
        self.ensure_mutable()?;
        let chars = reason.chars().count();
        if reason.trim().is_empty() || chars > MAX_REASON_CHARS {
            return Err(ValidationError::new(
                "reason",
                format!("reason must be 1..={MAX_REASON_CHARS} characters, not blank"),
            )
            .into());
        }
        self.transition(SettlementStatus::Disputed, at, Some(reason.to_string()))
    }

    /// Disputed → draft: the dispute is accepted and the record will be amended.
    pub fn reopen(&mut self, at: Timestamp) -> Result<(), SettlementError> {
        self.transition(SettlementStatus::Draft, at, None)
    }

    /// Replaces a draft's contents by a recomputation of the same aggregation and day
    /// (corrected meter data, rates or rule); the status history is kept.
    pub fn amend(&mut self, recomputed: SettlementRecord) -> Result<(), SettlementError> {
        self.ensure_mutable()?;
        if self.status != SettlementStatus::Draft {
            return Err(SettlementError::NotDraft(self.status));
        }
        if (recomputed.aggregation_id, recomputed.trading_day)
            != (self.aggregation_id, self.trading_day)
        {
            return Err(SettlementError::WrongRecord {
                aggregation_id: self.aggregation_id,
                trading_day: self.trading_day,
                got_aggregation: recomputed.aggregation_id,
                got_day: recomputed.trading_day,
            });
        }
        self.rule = recomputed.rule;
        self.rates = recomputed.rates;
        self.lines = recomputed.lines;
        self.resources = recomputed.resources;
        Ok(())
    }

    /// The report in `currency` (amounts converted line by line with the record's rates).
    pub fn report(&self, currency: Currency) -> SettlementReport {
        let lines = self
            .lines
            .iter()
            .map(|l| ReportLine {
                interval: l.interval,
                kind: l.kind,
                quantity: l.quantity,
                unit: l.kind.unit().to_string(),
                price_cny: l.price_cny,
                factor: l.factor,
                amount: self.rates.convert(l.amount_cny, currency),
            })
            .collect();
        SettlementReport {
            aggregation_id: self.aggregation_id,
            trading_day: self.trading_day,
            status: self.status,
            currency,
            cny_per_unit: self.rates.cny_per_unit(currency),
            rates: self.rates,
            rule: self.rule.clone(),
            lines,
            totals: self.totals(currency),
            contributions: self.contributions(currency),
        }
    }
}

fn validate_day(input: &DayInput) -> Result<BTreeMap<ResourceId, ResourceKind>, SettlementError> {
    if input.intervals.len() > MAX_INTERVALS {
        return Err(SettlementError::LimitReached {
            what: "intervals per day",
            limit: MAX_INTERVALS,
        });
    }
    if input.resources.len() > MAX_MEMBERS_PER_AGGREGATION {
        return Err(SettlementError::LimitReached {
            what: "resources per record",
            limit: MAX_MEMBERS_PER_AGGREGATION,
        });
    }
    let mut kinds = BTreeMap::new();
    for r in &input.resources {
        if kinds.insert(r.resource_id, r.kind.clone()).is_some() {
            return Err(SettlementError::DuplicateResource(r.resource_id));
        }
    }
    let mut seen = BTreeSet::new();
    for interval in &input.intervals {
        if !seen.insert(interval.interval) {
            return Err(SettlementError::DuplicateInterval(interval.interval));
        }
        interval.validate()?;
        if interval.resources.len() > kinds.len() {
            return Err(SettlementError::LimitReached {
                what: "deliveries per interval",
                limit: kinds.len(),
            });
        }
        if let Some(r) = interval
            .resources
            .iter()
            .find(|r| !kinds.contains_key(&r.resource_id))
        {
            return Err(SettlementError::UnknownResource(r.resource_id));
        }
    }
    Ok(kinds)
}

/// A line as reported: the amount is in the report's currency, the price stays in CNY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportLine {
    pub interval: DeliveryInterval,
    pub kind: LineKind,
    pub quantity: Decimal,
    pub unit: String,
    pub price_cny: Decimal,
    pub factor: Decimal,
    pub amount: Decimal,
}

/// A record rendered in one currency: what finance reads (JSON or CSV).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementReport {
    pub aggregation_id: AggregationId,
    pub trading_day: NaiveDate,
    pub status: SettlementStatus,
    pub currency: Currency,
    pub cny_per_unit: Decimal,
    pub rates: RatesTable,
    pub rule: PenaltyRule,
    pub lines: Vec<ReportLine>,
    pub totals: Totals,
    pub contributions: Vec<ResourceContribution>,
}

impl SettlementReport {
    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Result<String, SettlementError> {
        let mut s = serde_json::to_string_pretty(self)
            .map_err(|e| SettlementError::Serialise(e.to_string()))?;
        s.push('\n');
        Ok(s)
    }

    /// The lines, then one row per total (`interval_start` empty). Comma-separated, `\n` ends.
    pub fn lines_csv(&self) -> String {
        let mut out = String::from(
            "interval_start,item,quantity,unit,price_cny,factor,amount,currency,cny_per_unit\n",
        );
        let tail = format!("{},{}", self.currency, self.cny_per_unit);
        for l in &self.lines {
            let start = l.interval.start().format("%Y-%m-%dT%H:%M:%SZ");
            let _ = writeln!(
                out,
                "{start},{},{},{},{},{},{},{tail}",
                l.kind.as_str(),
                l.quantity,
                csv_field(&l.unit),
                l.price_cny,
                l.factor,
                l.amount
            );
        }
        for (name, amount) in self.totals.named() {
            let _ = writeln!(out, ",{name},,,,,{amount},{tail}");
        }
        out
    }

    /// One row per resource.
    pub fn resources_csv(&self) -> String {
        let mut out =
            String::from("resource_id,kind,energy_mwh,revenue_share,penalty_share,net,currency\n");
        for c in &self.contributions {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{}",
                c.resource_id,
                csv_field(&c.kind.to_string()),
                c.energy_mwh,
                c.revenue_share,
                c.penalty_share,
                c.net,
                self.currency
            );
        }
        out
    }
}

/// Quotes a field if it holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
