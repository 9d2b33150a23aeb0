//! Dispatch: an award (the net position of one aggregation for one interval and market)
//! becomes per-resource setpoints, and a [`DeviationTracker`] closes the loop by re-dispatching
//! the shortfall of resources that do not follow their setpoints.
//!
//! Conventions:
//! - Power is positive when generating/exporting, negative when consuming. An award of `+x`
//!   MW asks the aggregation to deliver `x` MW more than its baseline (generate more or
//!   consume less); `-x` asks it to consume more or generate less.
//! - **Dispatch is absolute, per interval.** Every resource has a *natural baseline*
//!   ([`UnitState::baseline_kw`]): what it does with no instruction at all (storage and custom
//!   kinds: 0 kW; PV and wind: what the sun or wind gives; loads and EV chargers: their own
//!   consumption), kept by [`crate::schedule::NaturalBaseline`]. It never includes a previous
//!   setpoint, so the setpoints of an interval are that interval's schedule (baseline + the
//!   interval's award share) and never increments stacked on the last interval's output. The
//!   baseline is set by the caller for each interval; it is not moved by telemetry (otherwise
//!   the headroom would drift as resources follow setpoints).
//! - What a resource can deliver *now* bounds it ([`UnitState::ceiling_kw`] /
//!   [`UnitState::floor_kw`]): PV and wind can only be curtailed (their ceiling is their
//!   natural power, 0 at night), a battery only what its SoC sustains for the interval.
//! - A plan caused by an award is complete for its aggregation and interval: a member absent
//!   from it has delta 0 (runs at its baseline). A correction plan amends the plan in force:
//!   only the resources it lists change.
//! - A resource shared by several aggregations offers each only its share: the headroom, the
//!   stored energy and the ramp an aggregation may use are all scaled by the membership share.
//!   The deltas of several aggregations add up on the same baseline.
//!
//! Limits applied to each delta (the per-resource *cap* in the direction asked):
//! - power: `baseline + delta` stays in `[min_power_kw, max_power_kw]` narrowed by the
//!   ceiling and floor (when the baseline is inside that range; a baseline outside it gives
//!   zero headroom on the side it overshoots);
//! - energy (resources with an energy capacity): the setpoint must be sustainable for the whole
//!   15-minute interval from the stored energy above the SoC floor (discharge) or the room
//!   below the SoC ceiling (charge); no SoC reading means no usable energy;
//! - ramp: `|delta| <= ramp_kw_per_s × ramp_window_s` (the seconds left until the interval);
//! - availability: an unavailable resource gets nothing.
//!
//! Exactness: allocation runs in integer watts (i64/i128), so setpoints have a resolution of
//! 1 W ([`SETPOINT_SCALE`] = 3 decimals of kW). Every cap is rounded toward zero, so no limit is
//! ever exceeded by rounding. The identity `Σ delta_kw + remaining_kw == award_kw` holds
//! exactly; whatever could not be placed is `remaining_kw` and raises a
//! [`DispatchAlert::Undeliverable`], never silently dropped.
//!
//! Methods ([`DispatchMethod`]):
//! - `ProRata`: each resource gets `floor(target × cap_i / Σcap)` W; the watts lost to the floor
//!   (fewer than one per resource) go one each to resources with room left, in resource-id order.
//! - `MeritOrder`: up-regulation fills the cheapest marginal cost first (generating one more
//!   MWh costs least there); down-regulation fills the most expensive first (backing off the
//!   dearest output saves the most). Ties break by resource id (ascending for up, descending
//!   for down). The order is sorted once when the fleet is built, never per call.
//! - `SocWeighted { k }`: storage (resources with an energy capacity) shares the target by weight
//!   `f^k`, `f` being the available SoC fraction in the direction asked (discharge:
//!   `(soc − soc_min)/(soc_max − soc_min)`; charge: `1 − f`). `k = 0` splits equally; a higher
//!   `k` gives more to fuller (discharge) or emptier (charge) units so SoC evens out faster.
//!   Weights and the water-filling (clip at caps, re-share the excess) are floats; the result is
//!   floored to whole watts and the remainder fixed up in integers, so the sum is exact. After
//!   [`MAX_SOC_ROUNDS`] re-share rounds the rest is filled in resource-id order. What storage
//!   cannot take goes pro rata to the other resources.
//!
//! Performance: a [`DispatchFleet`] keeps its units in a flat Vec sorted by resource id, the
//! merit order pre-sorted, the static caps (power and energy, share-scaled) precomputed when a
//! unit's state changes, and scratch buffers sized once; a dispatch call allocates only the
//! output Vec.

use crate::aggregation::{validate_share, MAX_MEMBERS_PER_AGGREGATION};
use crate::error::ValidationError;
use crate::ids::{AggregationId, MarketId, ResourceId};
use crate::market::DeliveryInterval;
use crate::position::{Position, PositionKey};
use crate::resource::Resource;
use crate::template::{
    TemplateParams, MAX_ENERGY_KWH, MAX_MARGINAL_COST_CNY_PER_MWH, MAX_POWER_KW,
};
use crate::Timestamp;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use rust_decimal::MathematicalOps;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

/// Decimal places of a setpoint in kW: 1 W resolution.
pub const SETPOINT_SCALE: u32 = 3;
/// Largest |award| accepted, in MW.
pub const MAX_AWARD_MW: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
/// Longest ramp window accepted, in seconds (one day).
pub const MAX_RAMP_WINDOW_S: Decimal = Decimal::from_parts(86_400, 0, 0, false, 0);
/// Largest SoC exponent `k` accepted.
pub const MAX_SOC_EXPONENT: f64 = 16.0;
/// Re-share rounds of the SoC water-filling before the rest is filled in id order.
pub const MAX_SOC_ROUNDS: usize = 64;
/// Largest `consecutive_samples` a tracker accepts.
pub const MAX_CONSECUTIVE_SAMPLES: u32 = 10_000;

const HUNDRED: Decimal = Decimal::ONE_HUNDRED;
const THOUSAND: Decimal = Decimal::from_parts(1_000, 0, 0, false, 0);
/// Length of a delivery interval in hours (15 minutes).
const INTERVAL_HOURS: Decimal = Decimal::from_parts(25, 0, 0, false, 2);
/// µW per kW: ramps are kept in µW/s so share × ramp loses under 1 µW/s to truncation.
const UW_PER_KW: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// Direction of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Deliver more (generate more / consume less).
    Up,
    /// Deliver less (generate less / consume more).
    Down,
}

/// How an aggregation shares out its award.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum DispatchMethod {
    ProRata,
    MeritOrder,
    /// SoC-aware for storage, weight = available SoC fraction to the power `k` (0..=16).
    SocWeighted {
        k: f64,
    },
}

impl DispatchMethod {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Self::SocWeighted { k } = self {
            if !k.is_finite() || *k < 0.0 || *k > MAX_SOC_EXPONENT {
                return Err(ValidationError::new(
                    "k",
                    format!("SoC exponent k {k} outside 0..={MAX_SOC_EXPONENT}"),
                ));
            }
        }
        Ok(())
    }
}

/// What one member offers to dispatch: its limits and its share in this aggregation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchUnitSpec {
    pub resource_id: ResourceId,
    /// Membership share in this aggregation, (0, 100] percent.
    pub share_pct: Decimal,
    pub min_power_kw: Decimal,
    pub max_power_kw: Decimal,
    pub ramp_kw_per_s: Decimal,
    pub marginal_cost_cny_per_mwh: Decimal,
    /// Present for resources that store energy; enables the energy limit and SoC weighting.
    pub energy_capacity_kwh: Option<Decimal>,
    pub soc_min_pct: Option<Decimal>,
    pub soc_max_pct: Option<Decimal>,
    /// Round-trip efficiency in (0, 1] (None: 1): the energy limit counts the losses of each
    /// way as √η, so a setpoint it allows is sustainable for the whole interval.
    #[serde(default)]
    pub round_trip_efficiency: Option<Decimal>,
}

impl DispatchUnitSpec {
    /// The spec of a member with `share_pct`, from its pinned template version's parameters.
    pub fn from_params(resource_id: ResourceId, share_pct: Decimal, p: &TemplateParams) -> Self {
        Self {
            resource_id,
            share_pct,
            min_power_kw: p.min_power_kw,
            max_power_kw: p.max_power_kw,
            ramp_kw_per_s: p.ramp_kw_per_s,
            marginal_cost_cny_per_mwh: p.marginal_cost_cny_per_mwh,
            energy_capacity_kwh: p.energy_capacity_kwh,
            soc_min_pct: p.soc_min_pct,
            soc_max_pct: p.soc_max_pct,
            round_trip_efficiency: p.round_trip_efficiency,
        }
    }

    /// Share in (0, 100], `-MAX <= min <= max <= MAX`, ramp in (0, MAX], bounded cost, energy
    /// and SoC limits.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_share(self.share_pct)?;
        let (min, max) = (self.min_power_kw, self.max_power_kw);
        if min > max || min < -MAX_POWER_KW || max > MAX_POWER_KW {
            return Err(ValidationError::new(
                "min_power_kw",
                format!(
                    "resource {}: need -{MAX_POWER_KW} <= min_power_kw {min} <= max_power_kw \
                     {max} <= {MAX_POWER_KW}",
                    self.resource_id
                ),
            ));
        }
        let ramp = self.ramp_kw_per_s;
        if ramp <= Decimal::ZERO || ramp > MAX_POWER_KW {
            return Err(ValidationError::new(
                "ramp_kw_per_s",
                format!("ramp_kw_per_s {ramp} outside (0, {MAX_POWER_KW}]"),
            ));
        }
        if self.marginal_cost_cny_per_mwh.abs() > MAX_MARGINAL_COST_CNY_PER_MWH {
            return Err(ValidationError::new(
                "marginal_cost_cny_per_mwh",
                format!(
                    "|{}| above {MAX_MARGINAL_COST_CNY_PER_MWH}",
                    self.marginal_cost_cny_per_mwh
                ),
            ));
        }
        if let Some(e) = self.energy_capacity_kwh {
            if e <= Decimal::ZERO || e > MAX_ENERGY_KWH {
                return Err(ValidationError::new(
                    "energy_capacity_kwh",
                    format!("energy_capacity_kwh {e} outside (0, {MAX_ENERGY_KWH}]"),
                ));
            }
        }
        if let Some(eta) = self.round_trip_efficiency {
            if eta <= Decimal::ZERO || eta > Decimal::ONE {
                return Err(ValidationError::new(
                    "round_trip_efficiency",
                    format!("round_trip_efficiency {eta} outside (0, 1]"),
                ));
            }
        }
        let (lo, hi) = self.soc_limits();
        if lo < Decimal::ZERO || hi > HUNDRED || lo >= hi {
            return Err(ValidationError::new(
                "soc_min_pct",
                format!("need 0 <= soc_min_pct {lo} < soc_max_pct {hi} <= 100"),
            ));
        }
        Ok(())
    }

    /// SoC floor and ceiling; absent limits mean 0 and 100.
    fn soc_limits(&self) -> (Decimal, Decimal) {
        (
            self.soc_min_pct.unwrap_or(Decimal::ZERO),
            self.soc_max_pct.unwrap_or(HUNDRED),
        )
    }
}

/// A member's live inputs to dispatch, set by the caller before each interval's dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    /// Power without any instruction (the *natural* baseline), kW: see the module docs and
    /// [`crate::schedule::NaturalBaseline`]. Never the power of a previous setpoint.
    pub baseline_kw: Decimal,
    pub soc_pct: Option<Decimal>,
    pub available: bool,
    /// The most the resource can deliver now, kW (PV and wind: what the sun or wind gives,
    /// i.e. their natural power; `None`: its `max_power_kw`).
    #[serde(default)]
    pub ceiling_kw: Option<Decimal>,
    /// The least it can deliver now (most it can consume), kW (`None`: its `min_power_kw`).
    #[serde(default)]
    pub floor_kw: Option<Decimal>,
}

impl UnitState {
    /// Not dispatchable: the state of a member before anything is known about it.
    pub const OFFLINE: UnitState = UnitState {
        baseline_kw: Decimal::ZERO,
        soc_pct: None,
        available: false,
        ceiling_kw: None,
        floor_kw: None,
    };

    /// Baseline = latest metered power; available = active and reporting available.
    pub fn from_resource(resource: &Resource) -> Self {
        match &resource.telemetry {
            Some(t) => Self {
                baseline_kw: t.power_kw,
                soc_pct: t.soc_pct,
                available: resource.is_available(),
                ceiling_kw: None,
                floor_kw: None,
            },
            None => Self::OFFLINE,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.baseline_kw.abs() > MAX_POWER_KW {
            return Err(ValidationError::new(
                "baseline_kw",
                format!("baseline_kw {} outside ±{MAX_POWER_KW}", self.baseline_kw),
            ));
        }
        if let Some(soc) = self.soc_pct {
            if soc < Decimal::ZERO || soc > HUNDRED {
                return Err(ValidationError::new(
                    "soc_pct",
                    format!("soc_pct {soc} outside 0..=100"),
                ));
            }
        }
        for (field, x) in [("ceiling_kw", self.ceiling_kw), ("floor_kw", self.floor_kw)] {
            if x.is_some_and(|x| x.abs() > MAX_POWER_KW) {
                return Err(ValidationError::new(
                    field,
                    format!("{field} {x:?} outside ±{MAX_POWER_KW}"),
                ));
            }
        }
        Ok(())
    }
}

/// An award: the net position of an aggregation for one interval in one market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Award {
    pub aggregation_id: AggregationId,
    pub market_id: MarketId,
    pub interval: DeliveryInterval,
    /// Positive = deliver more than the baseline, negative = consume more.
    pub award_mw: Decimal,
}

impl Award {
    /// The award of a position: its net sold MW (sold means the aggregation must deliver).
    pub fn from_position(key: &PositionKey, position: &Position) -> Self {
        Self {
            aggregation_id: key.aggregation_id,
            market_id: key.market_id,
            interval: key.interval,
            award_mw: position.net_sold_mw(),
        }
    }
}

/// One dispatch call's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DispatchRequest {
    pub award: Award,
    pub method: DispatchMethod,
    /// Seconds the resources have to ramp before the interval starts, 0..=86400.
    pub ramp_window_s: Decimal,
    /// When the instructions are issued.
    pub at: Timestamp,
}

/// Why a setpoint was issued; journaled with every instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DispatchCause {
    Award {
        market_id: MarketId,
        interval: DeliveryInterval,
        award_mw: Decimal,
    },
    /// Closed-loop re-dispatch of what `deviating_resources` resources failed to deliver.
    Correction {
        interval: DeliveryInterval,
        /// Signed power moved onto the other resources, kW.
        correction_kw: Decimal,
        deviating_resources: u32,
    },
}

/// One setpoint for one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchInstruction {
    pub aggregation_id: AggregationId,
    pub resource_id: ResourceId,
    pub baseline_kw: Decimal,
    /// This aggregation's part of the setpoint: `setpoint_kw − baseline_kw`.
    pub delta_kw: Decimal,
    pub setpoint_kw: Decimal,
    pub cause: DispatchCause,
    pub at: Timestamp,
}

/// Something an operator must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "alert", rename_all = "snake_case")]
pub enum DispatchAlert {
    /// Power the available resources could not take within their limits.
    Undeliverable {
        direction: Direction,
        remaining_kw: Decimal,
    },
}

/// The result of one dispatch or correction; journaled as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchPlan {
    pub aggregation_id: AggregationId,
    pub cause: DispatchCause,
    /// Sorted by resource id; only resources whose setpoint this plan sets.
    pub instructions: Vec<DispatchInstruction>,
    /// Signed power asked for but not placed, kW: `asked = Σ delta changes + remaining_kw`.
    pub remaining_kw: Decimal,
    pub alerts: Vec<DispatchAlert>,
}

impl DispatchPlan {
    /// Σ delta_kw over the instructions.
    pub fn total_delta_kw(&self) -> Decimal {
        self.instructions.iter().map(|i| i.delta_kw).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DispatchError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("resource {resource_id} is not a member of the dispatch fleet of aggregation {aggregation_id}")]
    UnknownResource {
        aggregation_id: AggregationId,
        resource_id: ResourceId,
    },
    #[error("resource {0} appears twice in the fleet")]
    DuplicateResource(ResourceId),
    #[error("plan or award is for aggregation {got}, this is aggregation {expected}")]
    WrongAggregation {
        expected: AggregationId,
        got: AggregationId,
    },
    #[error(
        "resource {resource_id}: tracked baseline {tracked_kw} kW differs from the fleet's \
         {fleet_kw} kW; correct against the fleet state the plan was made from"
    )]
    BaselineChanged {
        resource_id: ResourceId,
        tracked_kw: Decimal,
        fleet_kw: Decimal,
    },
    #[error("{what} limit of {limit} reached")]
    LimitReached { what: &'static str, limit: usize },
}

/// A member in the fleet's flat layout.
#[derive(Debug, Clone)]
struct Unit {
    spec: DispatchUnitSpec,
    state: UnitState,
    /// Share-scaled power/energy headroom from the baseline, W, rounded toward zero.
    up_static_w: i64,
    down_static_w: i64,
    /// Share × ramp in µW/s, rounded toward zero.
    ramp_uw_per_s: i64,
    /// Available SoC fraction for discharging (0..=1); charging uses `1 − soc_frac`.
    soc_frac: f64,
}

impl Unit {
    fn new(spec: DispatchUnitSpec, state: UnitState) -> Self {
        let share = spec.share_pct / HUNDRED;
        let ramp_uw_per_s = to_i64_trunc(spec.ramp_kw_per_s * share * UW_PER_KW);
        let mut unit = Self {
            spec,
            state,
            up_static_w: 0,
            down_static_w: 0,
            ramp_uw_per_s,
            soc_frac: 0.0,
        };
        unit.refresh();
        unit
    }

    /// Recomputes the static caps after a state change: O(1).
    fn refresh(&mut self) {
        let (spec, state) = (&self.spec, &self.state);
        if !state.available {
            (self.up_static_w, self.down_static_w, self.soc_frac) = (0, 0, 0.0);
            return;
        }
        let share = spec.share_pct / HUNDRED;
        let base = state.baseline_kw;
        // What the resource can do now: its range, narrowed by sun/wind or presence.
        let max_now = state
            .ceiling_kw
            .map_or(spec.max_power_kw, |c| c.min(spec.max_power_kw));
        let min_now = state
            .floor_kw
            .map_or(spec.min_power_kw, |f| f.max(spec.min_power_kw));
        let mut up_kw = (max_now - base).max(Decimal::ZERO);
        let mut down_kw = (base - min_now).max(Decimal::ZERO);
        let (lo, hi) = spec.soc_limits();
        let mut frac = 0.0;
        if let Some(capacity) = spec.energy_capacity_kwh {
            // Energy deliverable at the terminals: stored × √η out, room / √η in.
            let sqrt_eta = spec
                .round_trip_efficiency
                .and_then(|e| e.sqrt())
                .unwrap_or(Decimal::ONE);
            let (above_kwh, below_kwh) = match state.soc_pct {
                Some(soc) => (
                    (soc - lo).max(Decimal::ZERO) / HUNDRED * capacity * sqrt_eta,
                    (hi - soc).max(Decimal::ZERO) / HUNDRED * capacity / sqrt_eta,
                ),
                None => (Decimal::ZERO, Decimal::ZERO),
            };
            // Setpoint sustainable for the whole interval: −below/h <= base + delta <= above/h.
            up_kw = up_kw.min((above_kwh / INTERVAL_HOURS - base).max(Decimal::ZERO));
            down_kw = down_kw.min((below_kwh / INTERVAL_HOURS + base).max(Decimal::ZERO));
            if let Some(soc) = state.soc_pct {
                frac = ((soc - lo) / (hi - lo))
                    .to_f64()
                    .unwrap_or(0.0)
                    .clamp(0.0, 1.0);
            }
        }
        self.up_static_w = to_i64_trunc(up_kw * share * THOUSAND);
        self.down_static_w = to_i64_trunc(down_kw * share * THOUSAND);
        self.soc_frac = frac;
    }

    fn is_storage(&self) -> bool {
        self.spec.energy_capacity_kwh.is_some()
    }

    fn ramp_cap_w(&self, window_ms: i64) -> i64 {
        let w = i128::from(self.ramp_uw_per_s) * i128::from(window_ms) / 1_000_000_000;
        i64::try_from(w).unwrap_or(i64::MAX)
    }

    fn static_cap_w(&self, dir: Direction) -> i64 {
        match dir {
            Direction::Up => self.up_static_w,
            Direction::Down => self.down_static_w,
        }
    }

    fn weight(&self, dir: Direction, k: f64) -> f64 {
        let f = match dir {
            Direction::Up => self.soc_frac,
            Direction::Down => 1.0 - self.soc_frac,
        };
        if k == 0.0 {
            1.0
        } else {
            f.powf(k)
        }
    }
}

/// Bounded inputs keep every value here far inside i64; saturate rather than panic anyway.
fn to_i64_trunc(x: Decimal) -> i64 {
    x.trunc().to_i64().unwrap_or(if x.is_sign_negative() {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn w_to_kw(w: i64) -> Decimal {
    Decimal::new(w, SETPOINT_SCALE)
}

/// Buffers reused across calls so a dispatch allocates only its output.
#[derive(Debug, Clone, Default)]
struct Scratch {
    cap_w: Vec<i64>,
    alloc_w: Vec<i64>,
    weight: Vec<f64>,
}

/// One aggregation's members laid out for dispatch. Owned by its Dispatch actor.
#[derive(Debug, Clone)]
pub struct DispatchFleet {
    aggregation_id: AggregationId,
    /// Sorted by resource id.
    units: Vec<Unit>,
    index: HashMap<ResourceId, u32>,
    /// Unit positions by (marginal cost, resource id) ascending.
    merit: Vec<u32>,
    storage: Vec<u32>,
    others: Vec<u32>,
    scratch: Scratch,
}

impl DispatchFleet {
    /// Builds a fleet: every spec and state validated, ids unique, at most
    /// [`MAX_MEMBERS_PER_AGGREGATION`] members.
    pub fn new(
        aggregation_id: AggregationId,
        members: Vec<(DispatchUnitSpec, UnitState)>,
    ) -> Result<Self, DispatchError> {
        if members.len() > MAX_MEMBERS_PER_AGGREGATION {
            return Err(DispatchError::LimitReached {
                what: "members per dispatch fleet",
                limit: MAX_MEMBERS_PER_AGGREGATION,
            });
        }
        let mut units = Vec::with_capacity(members.len());
        for (spec, state) in members {
            spec.validate()?;
            state.validate()?;
            units.push(Unit::new(spec, state));
        }
        units.sort_by_key(|u| u.spec.resource_id);
        if let Some(w) = units
            .windows(2)
            .find(|w| w[0].spec.resource_id == w[1].spec.resource_id)
        {
            return Err(DispatchError::DuplicateResource(w[0].spec.resource_id));
        }
        let n = units.len();
        let positions = 0..n as u32;
        let index = units
            .iter()
            .zip(positions.clone())
            .map(|(u, i)| (u.spec.resource_id, i))
            .collect();
        let mut merit: Vec<u32> = positions.clone().collect();
        merit.sort_by_key(|&i| {
            let s = &units[i as usize].spec;
            (s.marginal_cost_cny_per_mwh, s.resource_id)
        });
        let (storage, others) = positions.partition(|&i| units[i as usize].is_storage());
        let scratch = Scratch {
            cap_w: vec![0; n],
            alloc_w: vec![0; n],
            weight: vec![0.0; n],
        };
        Ok(Self {
            aggregation_id,
            units,
            index,
            merit,
            storage,
            others,
            scratch,
        })
    }

    pub fn aggregation_id(&self) -> AggregationId {
        self.aggregation_id
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    fn position(&self, resource_id: ResourceId) -> Result<usize, DispatchError> {
        self.index
            .get(&resource_id)
            .map(|&i| i as usize)
            .ok_or(DispatchError::UnknownResource {
                aggregation_id: self.aggregation_id,
                resource_id,
            })
    }

    /// Sets a member's baseline, SoC and availability: O(1).
    pub fn set_state(
        &mut self,
        resource_id: ResourceId,
        state: UnitState,
    ) -> Result<(), DispatchError> {
        state.validate()?;
        let i = self.position(resource_id)?;
        let unit = &mut self.units[i];
        unit.state = state;
        unit.refresh();
        Ok(())
    }

    pub fn state_of(&self, resource_id: ResourceId) -> Option<&UnitState> {
        self.index
            .get(&resource_id)
            .map(|&i| &self.units[i as usize].state)
    }

    pub fn spec_of(&self, resource_id: ResourceId) -> Option<&DispatchUnitSpec> {
        self.index
            .get(&resource_id)
            .map(|&i| &self.units[i as usize].spec)
    }

    /// Shares `request.award` out over the fleet (see the module docs for the rules).
    pub fn dispatch(&mut self, request: &DispatchRequest) -> Result<DispatchPlan, DispatchError> {
        let award = &request.award;
        if award.aggregation_id != self.aggregation_id {
            return Err(DispatchError::WrongAggregation {
                expected: self.aggregation_id,
                got: award.aggregation_id,
            });
        }
        if award.award_mw.abs() > MAX_AWARD_MW {
            return Err(ValidationError::new(
                "award_mw",
                format!("award_mw {} outside ±{MAX_AWARD_MW}", award.award_mw),
            )
            .into());
        }
        request.method.validate()?;
        let window_ms = window_ms(request.ramp_window_s)?;
        let award_kw = award.award_mw * THOUSAND;
        let target_w = to_i64_trunc(award_kw * THOUSAND);
        let dir = if target_w < 0 {
            Direction::Down
        } else {
            Direction::Up
        };
        self.fill_award_caps(dir, window_ms);
        let placed_w = self.allocate(request.method, dir, target_w.abs());
        let cause = DispatchCause::Award {
            market_id: award.market_id,
            interval: award.interval,
            award_mw: award.award_mw,
        };
        let sign = if dir == Direction::Down { -1 } else { 1 };
        let instructions = self.award_instructions(sign, cause, request.at);
        Ok(plan(
            self.aggregation_id,
            cause,
            instructions,
            award_kw,
            w_to_kw(sign * placed_w),
            dir,
        ))
    }

    fn fill_award_caps(&mut self, dir: Direction, window_ms: i64) {
        let scratch = &mut self.scratch;
        for (i, unit) in self.units.iter().enumerate() {
            scratch.cap_w[i] = unit.static_cap_w(dir).min(unit.ramp_cap_w(window_ms));
            scratch.alloc_w[i] = 0;
        }
    }

    /// Places up to `target_w` (a magnitude) within the caps; returns the watts placed.
    fn allocate(&mut self, method: DispatchMethod, dir: Direction, target_w: i64) -> i64 {
        let Scratch {
            cap_w,
            alloc_w,
            weight,
        } = &mut self.scratch;
        match method {
            DispatchMethod::ProRata => pro_rata(0..self.units.len(), cap_w, alloc_w, target_w),
            DispatchMethod::MeritOrder => {
                let order = self.merit.iter().map(|&i| i as usize);
                match dir {
                    Direction::Up => fill_in_order(order, cap_w, alloc_w, target_w),
                    Direction::Down => fill_in_order(order.rev(), cap_w, alloc_w, target_w),
                }
            }
            DispatchMethod::SocWeighted { k } => {
                for &i in &self.storage {
                    weight[i as usize] = self.units[i as usize].weight(dir, k);
                }
                let placed = soc_weighted(&self.storage, cap_w, weight, alloc_w, target_w);
                let others = self.others.iter().map(|&i| i as usize);
                placed + pro_rata(others, cap_w, alloc_w, target_w - placed)
            }
        }
    }

    fn award_instructions(
        &self,
        sign: i64,
        cause: DispatchCause,
        at: Timestamp,
    ) -> Vec<DispatchInstruction> {
        let alloc = &self.scratch.alloc_w;
        let count = alloc.iter().filter(|&&a| a != 0).count();
        let mut out = Vec::with_capacity(count);
        for (unit, &a) in self.units.iter().zip(alloc) {
            if a != 0 {
                let delta_kw = w_to_kw(sign * a);
                out.push(DispatchInstruction {
                    aggregation_id: self.aggregation_id,
                    resource_id: unit.spec.resource_id,
                    baseline_kw: unit.state.baseline_kw,
                    delta_kw,
                    setpoint_kw: unit.state.baseline_kw + delta_kw,
                    cause,
                    at,
                });
            }
        }
        out
    }
}

fn window_ms(ramp_window_s: Decimal) -> Result<i64, ValidationError> {
    if ramp_window_s < Decimal::ZERO || ramp_window_s > MAX_RAMP_WINDOW_S {
        return Err(ValidationError::new(
            "ramp_window_s",
            format!("ramp_window_s {ramp_window_s} outside 0..={MAX_RAMP_WINDOW_S}"),
        ));
    }
    Ok(to_i64_trunc(ramp_window_s * THOUSAND))
}

fn plan(
    aggregation_id: AggregationId,
    cause: DispatchCause,
    instructions: Vec<DispatchInstruction>,
    asked_kw: Decimal,
    placed_kw: Decimal,
    dir: Direction,
) -> DispatchPlan {
    let remaining_kw = asked_kw - placed_kw;
    let alerts = if remaining_kw.is_zero() {
        Vec::new()
    } else {
        vec![DispatchAlert::Undeliverable {
            direction: dir,
            remaining_kw,
        }]
    };
    DispatchPlan {
        aggregation_id,
        cause,
        instructions,
        remaining_kw,
        alerts,
    }
}

/// `floor(target × cap_i / Σcap)` each, then the lost watts one each to units with room.
/// Exact: each unit loses under 1 W to the floor, so one pass places the rest.
fn pro_rata(
    idx: impl Iterator<Item = usize> + Clone,
    cap: &[i64],
    alloc: &mut [i64],
    target: i64,
) -> i64 {
    if target <= 0 {
        return 0;
    }
    let total: i64 = idx.clone().map(|i| cap[i]).sum();
    if total <= target {
        for i in idx {
            alloc[i] += cap[i];
        }
        return total;
    }
    let mut placed = 0;
    for i in idx.clone() {
        let share = match target.checked_mul(cap[i]) {
            Some(p) => p / total,
            None => (i128::from(target) * i128::from(cap[i]) / i128::from(total)) as i64,
        };
        alloc[i] += share;
        placed += share;
    }
    for i in idx {
        if placed == target {
            break;
        }
        // A unit that lost a fraction got strictly less than its cap.
        if share_has_room(alloc[i], cap[i]) {
            alloc[i] += 1;
            placed += 1;
        }
    }
    placed
}

fn share_has_room(alloc: i64, cap: i64) -> bool {
    alloc < cap
}

/// Fills units to their caps in `order` until `target` is placed.
fn fill_in_order(
    order: impl Iterator<Item = usize>,
    cap: &[i64],
    alloc: &mut [i64],
    target: i64,
) -> i64 {
    let mut left = target;
    for i in order {
        if left <= 0 {
            break;
        }
        let take = (cap[i] - alloc[i]).clamp(0, left);
        alloc[i] += take;
        left -= take;
    }
    target - left.max(0)
}

/// Water-filling by weight over `idx` (floats), floored to watts, then fixed up exactly.
fn soc_weighted(idx: &[u32], cap: &[i64], weight: &[f64], alloc: &mut [i64], target: i64) -> i64 {
    if target <= 0 || idx.is_empty() {
        return 0;
    }
    // alloc < 0 marks a unit still taking part in the re-share rounds.
    let mut rem = target as f64;
    let mut active = 0usize;
    for &i in idx {
        let i = i as usize;
        if cap[i] > 0 && weight[i] > 0.0 {
            alloc[i] = -1;
            active += 1;
        }
    }
    for _ in 0..MAX_SOC_ROUNDS {
        if active == 0 || rem <= 0.0 {
            break;
        }
        let total_w: f64 = idx
            .iter()
            .filter(|&&i| alloc[i as usize] < 0)
            .map(|&i| weight[i as usize])
            .sum();
        let lambda = rem / total_w;
        let mut saturated = false;
        for &i in idx {
            let i = i as usize;
            if alloc[i] < 0 && lambda * weight[i] >= cap[i] as f64 {
                alloc[i] = cap[i];
                rem -= cap[i] as f64;
                active -= 1;
                saturated = true;
            }
        }
        if !saturated {
            for &i in idx {
                let i = i as usize;
                if alloc[i] < 0 {
                    alloc[i] = ((lambda * weight[i]).floor() as i64).clamp(0, cap[i]);
                }
            }
            active = 0;
        }
    }
    for &i in idx {
        alloc[i as usize] = alloc[i as usize].max(0);
    }
    fix_up(idx, cap, alloc, target)
}

/// Makes Σ alloc over `idx` equal `min(target, Σcap)` exactly after float rounding: takes
/// back excess watts, or gives missing ones (one each first, then filling in id order).
fn fix_up(idx: &[u32], cap: &[i64], alloc: &mut [i64], target: i64) -> i64 {
    let mut placed: i64 = idx.iter().map(|&i| alloc[i as usize]).sum();
    for &i in idx.iter().rev() {
        if placed <= target {
            break;
        }
        let take = alloc[i as usize].min(placed - target);
        alloc[i as usize] -= take;
        placed -= take;
    }
    for &i in idx {
        if placed >= target {
            break;
        }
        if alloc[i as usize] < cap[i as usize] {
            alloc[i as usize] += 1;
            placed += 1;
        }
    }
    let order = idx.iter().map(|&i| i as usize);
    placed + fill_in_order(order, cap, alloc, target - placed)
}

/// When a resource counts as deviating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviationBand {
    /// Absolute tolerance, kW, >= 0; also the floor of the percentage band.
    pub band_kw: Decimal,
    /// Tolerance in percent of |setpoint|, 0..=100.
    pub band_pct: Decimal,
}

impl DeviationBand {
    /// Tolerance for a setpoint: `max(band_kw, band_pct% × |setpoint|)`. The kW floor keeps a
    /// setpoint of 0 from tripping on metering noise.
    pub fn tolerance_kw(&self, setpoint_kw: Decimal) -> Decimal {
        self.band_kw
            .max(self.band_pct / HUNDRED * setpoint_kw.abs())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerConfig {
    pub band: DeviationBand,
    /// Consecutive samples outside the band before a correction, 1..=10000.
    pub consecutive_samples: u32,
}

impl TrackerConfig {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let b = &self.band;
        if b.band_kw < Decimal::ZERO || b.band_kw > MAX_POWER_KW {
            return Err(ValidationError::new(
                "band_kw",
                format!("band_kw {} outside 0..={MAX_POWER_KW}", b.band_kw),
            ));
        }
        if b.band_pct < Decimal::ZERO || b.band_pct > HUNDRED {
            return Err(ValidationError::new(
                "band_pct",
                format!("band_pct {} outside 0..=100", b.band_pct),
            ));
        }
        if self.consecutive_samples == 0 || self.consecutive_samples > MAX_CONSECUTIVE_SAMPLES {
            return Err(ValidationError::new(
                "consecutive_samples",
                format!(
                    "consecutive_samples {} outside 1..={MAX_CONSECUTIVE_SAMPLES}",
                    self.consecutive_samples
                ),
            ));
        }
        Ok(())
    }
}

/// What one metered sample meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "observation", rename_all = "snake_case")]
pub enum Observation {
    /// The resource has no setpoint from this aggregation.
    Untracked,
    WithinBand,
    OutsideBand {
        consecutive: u32,
    },
    /// Outside the band for `consecutive_samples` samples: [`DeviationTracker::correct`] due.
    Tripped {
        deviation_kw: Decimal,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Tracked {
    baseline_kw: Decimal,
    delta_w: i64,
    consecutive: u32,
    last_metered_kw: Option<Decimal>,
}

impl Tracked {
    fn setpoint_kw(&self) -> Decimal {
        self.baseline_kw + w_to_kw(self.delta_w)
    }
}

/// Closed loop for one aggregation: follows metered power against the setpoints in force and,
/// when a resource stays outside the band for N consecutive samples, moves its shortfall onto
/// the other resources (pro rata by their remaining headroom: the correction is urgent and
/// spreading it keeps every unit away from its limits).
///
/// The deviating resource's setpoint becomes its metered power clamped to its `[min, max]`
/// (what it demonstrably does), so it stops counting as deviating and the aggregation's total
/// deviation returns under the band once the others follow. Tracked resources are bounded by
/// the plans fed in, which are bounded by the fleet size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviationTracker {
    aggregation_id: AggregationId,
    config: TrackerConfig,
    interval: Option<DeliveryInterval>,
    tracked: BTreeMap<ResourceId, Tracked>,
}

impl DeviationTracker {
    pub fn new(
        aggregation_id: AggregationId,
        config: TrackerConfig,
    ) -> Result<Self, DispatchError> {
        config.validate()?;
        Ok(Self {
            aggregation_id,
            config,
            interval: None,
            tracked: BTreeMap::new(),
        })
    }

    /// Takes a plan's setpoints: an award plan replaces all, a correction plan amends.
    pub fn track_plan(&mut self, plan: &DispatchPlan) -> Result<(), DispatchError> {
        if plan.aggregation_id != self.aggregation_id {
            return Err(DispatchError::WrongAggregation {
                expected: self.aggregation_id,
                got: plan.aggregation_id,
            });
        }
        match plan.cause {
            DispatchCause::Award { interval, .. } => {
                self.tracked.clear();
                self.interval = Some(interval);
            }
            DispatchCause::Correction { interval, .. } => self.interval = Some(interval),
        }
        for i in &plan.instructions {
            let tracked = Tracked {
                baseline_kw: i.baseline_kw,
                delta_w: to_i64_trunc(i.delta_kw * THOUSAND),
                consecutive: 0,
                last_metered_kw: None,
            };
            self.tracked.insert(i.resource_id, tracked);
        }
        Ok(())
    }

    /// Takes one metered sample of a resource.
    pub fn observe(&mut self, resource_id: ResourceId, metered_kw: Decimal) -> Observation {
        let Some(t) = self.tracked.get_mut(&resource_id) else {
            return Observation::Untracked;
        };
        t.last_metered_kw = Some(metered_kw);
        let setpoint = t.setpoint_kw();
        let deviation_kw = metered_kw - setpoint;
        if deviation_kw.abs() <= self.config.band.tolerance_kw(setpoint) {
            t.consecutive = 0;
            return Observation::WithinBand;
        }
        t.consecutive = t.consecutive.saturating_add(1);
        if t.consecutive >= self.config.consecutive_samples {
            Observation::Tripped { deviation_kw }
        } else {
            Observation::OutsideBand {
                consecutive: t.consecutive,
            }
        }
    }

    pub fn setpoint_kw(&self, resource_id: ResourceId) -> Option<Decimal> {
        self.tracked.get(&resource_id).map(Tracked::setpoint_kw)
    }

    /// Σ (last metered − setpoint) over tracked resources with a sample, kW.
    pub fn total_deviation_kw(&self) -> Decimal {
        self.tracked
            .values()
            .filter_map(|t| t.last_metered_kw.map(|m| m - t.setpoint_kw()))
            .sum()
    }

    /// Resources due for correction, by id.
    pub fn tripped(&self) -> Vec<ResourceId> {
        let n = self.config.consecutive_samples;
        self.tracked
            .iter()
            .filter(|(_, t)| t.consecutive >= n && t.last_metered_kw.is_some())
            .map(|(rid, _)| *rid)
            .collect()
    }

    /// Re-dispatches the shortfall of the tripped resources onto the others and takes the
    /// resulting correction plan as in force. `None` when nothing is tripped. `fleet` must
    /// hold the baselines the tracked plan was made from.
    pub fn correct(
        &mut self,
        fleet: &mut DispatchFleet,
        ramp_window_s: Decimal,
        at: Timestamp,
    ) -> Result<Option<DispatchPlan>, DispatchError> {
        if fleet.aggregation_id != self.aggregation_id {
            return Err(DispatchError::WrongAggregation {
                expected: self.aggregation_id,
                got: fleet.aggregation_id,
            });
        }
        let tripped = self.tripped();
        let Some(interval) = self.interval.filter(|_| !tripped.is_empty()) else {
            return Ok(None);
        };
        let window_ms = window_ms(ramp_window_s)?;
        self.check_baselines(fleet)?;
        // New deltas of the tripped resources, and what the others must make up (signed W).
        let mut new_delta: BTreeMap<ResourceId, i64> = BTreeMap::new();
        let mut correction_w = 0i64;
        for rid in &tripped {
            let spec = fleet.spec_of(*rid).ok_or(DispatchError::UnknownResource {
                aggregation_id: self.aggregation_id,
                resource_id: *rid,
            })?;
            let t = &self.tracked[rid];
            let metered = t.last_metered_kw.unwrap_or_else(|| t.setpoint_kw());
            let acknowledged = metered.clamp(spec.min_power_kw, spec.max_power_kw);
            let delta = to_i64_trunc((acknowledged - t.baseline_kw) * THOUSAND);
            correction_w += t.delta_w - delta;
            new_delta.insert(*rid, delta);
        }
        let dir = if correction_w < 0 {
            Direction::Down
        } else {
            Direction::Up
        };
        self.fill_correction_caps(fleet, &new_delta, dir, window_ms);
        let units = 0..fleet.units.len();
        let Scratch { cap_w, alloc_w, .. } = &mut fleet.scratch;
        let placed_w = pro_rata(units, cap_w, alloc_w, correction_w.abs());
        let sign = if dir == Direction::Down { -1 } else { 1 };
        let cause = DispatchCause::Correction {
            interval,
            correction_kw: w_to_kw(correction_w),
            deviating_resources: u32::try_from(tripped.len()).unwrap_or(u32::MAX),
        };
        let instructions = self.correction_instructions(fleet, &new_delta, sign, cause, at);
        let plan = plan(
            self.aggregation_id,
            cause,
            instructions,
            w_to_kw(correction_w),
            w_to_kw(sign * placed_w),
            dir,
        );
        self.track_plan(&plan)?;
        Ok(Some(plan))
    }

    fn check_baselines(&self, fleet: &DispatchFleet) -> Result<(), DispatchError> {
        for (rid, t) in &self.tracked {
            let state = fleet.state_of(*rid).ok_or(DispatchError::UnknownResource {
                aggregation_id: self.aggregation_id,
                resource_id: *rid,
            })?;
            if state.baseline_kw != t.baseline_kw {
                return Err(DispatchError::BaselineChanged {
                    resource_id: *rid,
                    tracked_kw: t.baseline_kw,
                    fleet_kw: state.baseline_kw,
                });
            }
        }
        Ok(())
    }

    /// Room each non-tripped unit has left beyond its current delta, within its ramp.
    fn fill_correction_caps(
        &self,
        fleet: &mut DispatchFleet,
        tripped: &BTreeMap<ResourceId, i64>,
        dir: Direction,
        window_ms: i64,
    ) {
        let scratch = &mut fleet.scratch;
        for (i, unit) in fleet.units.iter().enumerate() {
            let rid = unit.spec.resource_id;
            let delta = self.tracked.get(&rid).map_or(0, |t| t.delta_w);
            let room = match dir {
                Direction::Up => unit.up_static_w - delta,
                Direction::Down => unit.down_static_w + delta,
            };
            scratch.cap_w[i] = if tripped.contains_key(&rid) {
                0
            } else {
                room.clamp(0, unit.ramp_cap_w(window_ms))
            };
            scratch.alloc_w[i] = 0;
        }
    }

    fn correction_instructions(
        &self,
        fleet: &DispatchFleet,
        tripped: &BTreeMap<ResourceId, i64>,
        sign: i64,
        cause: DispatchCause,
        at: Timestamp,
    ) -> Vec<DispatchInstruction> {
        let mut out = Vec::new();
        for (unit, &a) in fleet.units.iter().zip(&fleet.scratch.alloc_w) {
            let rid = unit.spec.resource_id;
            let current = self.tracked.get(&rid).map_or(0, |t| t.delta_w);
            let delta_w = match tripped.get(&rid) {
                Some(&d) => d,
                None if a != 0 => current + sign * a,
                None => continue,
            };
            let baseline_kw = unit.state.baseline_kw;
            let delta_kw = w_to_kw(delta_w);
            out.push(DispatchInstruction {
                aggregation_id: fleet.aggregation_id,
                resource_id: rid,
                baseline_kw,
                delta_kw,
                setpoint_kw: baseline_kw + delta_kw,
                cause,
                at,
            });
        }
        out
    }
}
