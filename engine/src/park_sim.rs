//! A deterministic, seeded physics model of the park's resources, for the daemon's demo and the
//! backtest: [`ParkSim::step`] advances every resource by `dt_s` seconds and returns telemetry.
//!
//! Models (floats inside, as physics; telemetry out as `Decimal`: power to 0.001 kW, SoC to
//! 0.01 %):
//! - **PV**: rated × clear-sky fraction × cloud factor. Clear sky = sin(solar elevation)^1.15
//!   from a simple solar-geometry formula (declination from the day of year, hour angle from
//!   UTC time + longitude/15, equation of time ignored: < 17 min), so output is exactly zero
//!   whenever the sun is below the horizon. Clouds: a seeded AR(1) process (τ = 15 min).
//! - **Wind**: a seeded AR(1) wind speed (mean 7 m/s, τ = 30 min) through a cubic power curve
//!   (cut-in 3, rated 12, cut-out 25 m/s).
//! - **Storage**: follows its setpoint (default 0); SoC integrates power with √η losses each
//!   way (η = round-trip efficiency, 1 when absent). Power is limited every step so SoC never
//!   leaves [soc_min, soc_max].
//! - **Flexible load**: consumes along a working-day profile in the park's civil time zone
//!   (low at night, high 08:00–18:00), between |max_power_kw| and |min_power_kw|.
//! - **EV charger**: a workplace fleet: the connected share follows a daily profile, charging
//!   power is at most rated × connected share, the fleet's SoC rises while charging and falls
//!   as charged cars leave and empty ones arrive; held within its SoC limits like storage.
//! - **Custom kinds**: hold their setpoint (default 0).
//!
//! Setpoints: PV and wind treat a setpoint as a curtailment cap; the others as a target.
//! Controlled changes move at most `ramp_kw_per_s × dt_s` per step, with seeded noise of
//! [`ParkSimConfig::noise_pct`] of rated power on the target. Physical limits (sunlight, wind,
//! SoC, connected cars) apply after the ramp and always win: a battery hitting its SoC floor
//! stops at once, as its BMS would.
//!
//! Invariants: same resources + seed + calls give identical telemetry (each resource has its
//! own ChaCha stream, keyed by seed and resource id, so adding a resource does not change the
//! others); power stays within [min_power_kw, max_power_kw]; SoC within its limits.

use crate::error::ValidationError;
use crate::ids::ResourceId;
use crate::resource::{GeoLocation, Telemetry};
use crate::template::{ResourceKind, TemplateParams};
use crate::Timestamp;
use chrono::{Datelike, Timelike};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::f64::consts::PI;
use thiserror::Error;

/// Longest step, seconds.
pub const MAX_STEP_S: f64 = 3_600.0;
/// Most resources one simulated park holds.
pub const MAX_SIM_RESOURCES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParkSimError {
    #[error("resource {0} is not in the simulated park")]
    UnknownResource(ResourceId),
    #[error("resource {0} appears twice in the simulated park")]
    DuplicateResource(ResourceId),
    #[error("setpoint {setpoint_kw} kW for resource {resource} outside its range {min_kw}..={max_kw} kW")]
    SetpointOutOfRange {
        resource: ResourceId,
        setpoint_kw: Decimal,
        min_kw: Decimal,
        max_kw: Decimal,
    },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// One resource as the simulator needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimResource {
    pub id: ResourceId,
    pub kind: ResourceKind,
    pub params: TemplateParams,
    pub location: GeoLocation,
}

/// Tunables; [`Default`] is what the demo uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkSimConfig {
    /// Civil time zone of the park, for load and EV profiles.
    pub timezone: chrono_tz::Tz,
    /// Standard deviation of setpoint-following noise, percent of rated power.
    pub noise_pct: f64,
    /// Initial SoC of storage and EV chargers, percent (clamped into their limits).
    pub initial_soc_pct: f64,
}

impl Default for ParkSimConfig {
    fn default() -> Self {
        Self {
            timezone: chrono_tz::Asia::Shanghai,
            noise_pct: 0.5,
            initial_soc_pct: 50.0,
        }
    }
}

impl ParkSimConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        if !(0.0..=10.0).contains(&self.noise_pct) {
            return Err(ValidationError::new(
                "noise_pct",
                format!("{} outside 0..=10", self.noise_pct),
            ));
        }
        if !(0.0..=100.0).contains(&self.initial_soc_pct) {
            return Err(ValidationError::new(
                "initial_soc_pct",
                format!("{} outside 0..=100", self.initial_soc_pct),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    Pv,
    Wind,
    Storage,
    Load,
    Ev,
    Hold,
}

/// Energy store of a storage unit or an EV fleet, kWh.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Store {
    capacity_kwh: f64,
    min_kwh: f64,
    max_kwh: f64,
    energy_kwh: f64,
    sqrt_eta: f64,
    soc_min_pct: Decimal,
    soc_max_pct: Decimal,
}

impl Store {
    /// Discharge (+) and charge (−) power limits that keep the energy within bounds over dt.
    fn power_window_kw(&self, dt_s: f64) -> (f64, f64) {
        let hours = dt_s / 3_600.0;
        let discharge = (self.energy_kwh - self.min_kwh).max(0.0) * self.sqrt_eta / hours;
        let charge = (self.max_kwh - self.energy_kwh).max(0.0) / self.sqrt_eta / hours;
        (-charge, discharge)
    }

    fn integrate(&mut self, power_kw: f64, dt_s: f64) {
        let kwh = power_kw * dt_s / 3_600.0;
        let delta = if kwh > 0.0 {
            -kwh / self.sqrt_eta
        } else {
            -kwh * self.sqrt_eta
        };
        self.energy_kwh = (self.energy_kwh + delta).clamp(self.min_kwh, self.max_kwh);
    }

    fn soc_pct(&self) -> Decimal {
        let pct = self.energy_kwh / self.capacity_kwh * 100.0;
        to_decimal(pct, 2).clamp(self.soc_min_pct, self.soc_max_pct)
    }
}

#[derive(Debug, Clone)]
struct Unit {
    id: ResourceId,
    model: Model,
    rated_kw: f64,
    min_kw: f64,
    max_kw: f64,
    min_kw_dec: Decimal,
    max_kw_dec: Decimal,
    ramp_kw_per_s: f64,
    lat_deg: f64,
    lon_deg: f64,
    store: Option<Store>,
    power_kw: f64,
    setpoint_kw: Option<f64>,
    /// AR(1) cloud cover (PV) or wind speed in m/s (wind).
    weather: f64,
    rng: ChaCha8Rng,
}

/// The simulated park. Resources are kept sorted by id so stepping order is fixed.
#[derive(Debug, Clone)]
pub struct ParkSim {
    units: Vec<Unit>,
    index: BTreeMap<ResourceId, usize>,
    config: ParkSimConfig,
}

const CLOUD_MEAN: f64 = 0.15;
const CLOUD_SIGMA: f64 = 0.15;
const CLOUD_TAU_S: f64 = 900.0;
const WIND_MEAN_M_S: f64 = 7.0;
const WIND_SIGMA_M_S: f64 = 2.5;
const WIND_TAU_S: f64 = 1_800.0;

impl ParkSim {
    pub fn new(resources: Vec<SimResource>, seed: u64) -> Result<Self, ParkSimError> {
        Self::with_config(resources, seed, ParkSimConfig::default())
    }

    pub fn with_config(
        mut resources: Vec<SimResource>,
        seed: u64,
        config: ParkSimConfig,
    ) -> Result<Self, ParkSimError> {
        config.validate()?;
        if resources.len() > MAX_SIM_RESOURCES {
            return Err(ValidationError::new(
                "resources",
                format!("{} resources, at most {MAX_SIM_RESOURCES}", resources.len()),
            )
            .into());
        }
        resources.sort_by_key(|r| r.id);
        let mut units = Vec::with_capacity(resources.len());
        let mut index = BTreeMap::new();
        for r in &resources {
            if index.insert(r.id, units.len()).is_some() {
                return Err(ParkSimError::DuplicateResource(r.id));
            }
            r.params.validate(&r.kind)?;
            r.location.validate()?;
            units.push(Unit::new(r, seed, &config));
        }
        Ok(Self {
            units,
            index,
            config,
        })
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    pub fn config(&self) -> &ParkSimConfig {
        &self.config
    }

    fn unit_mut(&mut self, id: ResourceId) -> Result<&mut Unit, ParkSimError> {
        let i = *self
            .index
            .get(&id)
            .ok_or(ParkSimError::UnknownResource(id))?;
        Ok(&mut self.units[i])
    }

    fn unit(&self, id: ResourceId) -> Option<&Unit> {
        self.index.get(&id).map(|&i| &self.units[i])
    }

    /// Sets a resource's setpoint, refusing one outside its [min_power_kw, max_power_kw].
    pub fn set_setpoint(&mut self, id: ResourceId, power_kw: Decimal) -> Result<(), ParkSimError> {
        let unit = self.unit_mut(id)?;
        if power_kw < unit.min_kw_dec || power_kw > unit.max_kw_dec {
            return Err(ParkSimError::SetpointOutOfRange {
                resource: id,
                setpoint_kw: power_kw,
                min_kw: unit.min_kw_dec,
                max_kw: unit.max_kw_dec,
            });
        }
        unit.setpoint_kw = Some(power_kw.to_f64().unwrap_or(0.0));
        Ok(())
    }

    /// Returns the resource to its own behaviour (sun, wind, profile, idle).
    pub fn clear_setpoint(&mut self, id: ResourceId) -> Result<(), ParkSimError> {
        self.unit_mut(id)?.setpoint_kw = None;
        Ok(())
    }

    /// Current power, kW (unrounded physics value).
    pub fn power_kw(&self, id: ResourceId) -> Option<f64> {
        self.unit(id).map(|u| u.power_kw)
    }

    /// Current stored energy, kWh, for storage and EV chargers.
    pub fn energy_kwh(&self, id: ResourceId) -> Option<f64> {
        self.unit(id).and_then(|u| u.store.map(|s| s.energy_kwh))
    }

    /// Advances every resource by `dt_s` (0 < dt_s <= [`MAX_STEP_S`]) and returns the
    /// telemetry sampled at `now`, in resource id order.
    pub fn step(
        &mut self,
        now: Timestamp,
        dt_s: f64,
    ) -> Result<Vec<(ResourceId, Telemetry)>, ParkSimError> {
        let mut out = Vec::with_capacity(self.units.len());
        self.step_into(now, dt_s, &mut out)?;
        Ok(out)
    }

    /// [`Self::step`] into a caller's buffer (cleared first), to avoid an allocation per step.
    pub fn step_into(
        &mut self,
        now: Timestamp,
        dt_s: f64,
        out: &mut Vec<(ResourceId, Telemetry)>,
    ) -> Result<(), ParkSimError> {
        if !(dt_s > 0.0 && dt_s <= MAX_STEP_S) {
            return Err(
                ValidationError::new("dt_s", format!("{dt_s} outside (0, {MAX_STEP_S}]")).into(),
            );
        }
        out.clear();
        let local_h = local_hour(now, self.config.timezone);
        let noise_pct = self.config.noise_pct;
        for unit in &mut self.units {
            unit.step(now, local_h, dt_s, noise_pct);
            out.push((unit.id, unit.telemetry(now)));
        }
        Ok(())
    }
}

impl Unit {
    fn new(r: &SimResource, seed: u64, config: &ParkSimConfig) -> Self {
        let p = &r.params;
        let f = |d: Decimal| d.to_f64().unwrap_or(0.0);
        let model = match r.kind {
            ResourceKind::Pv => Model::Pv,
            ResourceKind::Wind => Model::Wind,
            ResourceKind::Storage => Model::Storage,
            ResourceKind::FlexibleLoad => Model::Load,
            ResourceKind::EvCharger => Model::Ev,
            ResourceKind::Custom(_) => Model::Hold,
        };
        let store = p.energy_capacity_kwh.map(|cap| {
            let capacity_kwh = f(cap);
            let soc_min_pct = p.soc_min_pct.unwrap_or(Decimal::ZERO);
            let soc_max_pct = p.soc_max_pct.unwrap_or(Decimal::ONE_HUNDRED);
            let min_kwh = capacity_kwh * f(soc_min_pct) / 100.0;
            let max_kwh = capacity_kwh * f(soc_max_pct) / 100.0;
            let eta = p.round_trip_efficiency.map_or(1.0, f);
            Store {
                capacity_kwh,
                min_kwh,
                max_kwh,
                energy_kwh: (capacity_kwh * config.initial_soc_pct / 100.0).clamp(min_kwh, max_kwh),
                sqrt_eta: eta.sqrt(),
                soc_min_pct,
                soc_max_pct,
            }
        });
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(r.id.0);
        let min_kw = f(p.min_power_kw);
        let max_kw = f(p.max_power_kw);
        Self {
            id: r.id,
            model,
            rated_kw: f(p.rated_power_kw),
            min_kw,
            max_kw,
            min_kw_dec: p.min_power_kw,
            max_kw_dec: p.max_power_kw,
            ramp_kw_per_s: f(p.ramp_kw_per_s),
            lat_deg: r.location.lat,
            lon_deg: r.location.lon,
            store,
            power_kw: 0.0_f64.clamp(min_kw, max_kw),
            setpoint_kw: None,
            weather: if model == Model::Wind {
                WIND_MEAN_M_S
            } else {
                CLOUD_MEAN
            },
            rng,
        }
    }

    fn gaussian(&mut self) -> f64 {
        // Box-Muller; 1 - u keeps the logarithm's argument in (0, 1].
        let u1: f64 = 1.0 - self.rng.gen::<f64>();
        let u2: f64 = self.rng.gen::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }

    /// One AR(1) step towards `mean` with stationary deviation `sigma` and time constant `tau`.
    fn advance_weather(&mut self, mean: f64, sigma: f64, tau_s: f64, dt_s: f64) {
        let phi = (-dt_s / tau_s).exp();
        let shock = sigma * (1.0 - phi * phi).sqrt() * self.gaussian();
        self.weather = mean + phi * (self.weather - mean) + shock;
    }

    fn step(&mut self, now: Timestamp, local_h: f64, dt_s: f64, noise_pct: f64) {
        let (target, lo, hi) = match self.model {
            Model::Pv => {
                self.advance_weather(CLOUD_MEAN, CLOUD_SIGMA, CLOUD_TAU_S, dt_s);
                let cloud = 1.0 - self.weather.clamp(0.0, 0.9);
                let available = self.rated_kw * clear_sky(now, self.lat_deg, self.lon_deg) * cloud;
                self.generator_target(available)
            }
            Model::Wind => {
                self.advance_weather(WIND_MEAN_M_S, WIND_SIGMA_M_S, WIND_TAU_S, dt_s);
                let available = self.rated_kw * wind_power_fraction(self.weather);
                self.generator_target(available)
            }
            Model::Storage => {
                let target = self.setpoint_kw.unwrap_or(0.0) + self.noise(noise_pct);
                let (lo, hi) = self.store_window(dt_s, self.min_kw, self.max_kw);
                (target, lo, hi)
            }
            Model::Load => {
                let natural = -(self.max_kw.abs()
                    + (self.min_kw.abs() - self.max_kw.abs()) * work_shape(local_h));
                let target = self.setpoint_kw.unwrap_or(natural) + self.noise(noise_pct);
                (target, self.min_kw, self.max_kw)
            }
            Model::Ev => self.ev_target(local_h, dt_s, noise_pct),
            Model::Hold => {
                let target = self.setpoint_kw.unwrap_or(0.0) + self.noise(noise_pct);
                (target, self.min_kw, self.max_kw)
            }
        };
        let max_move = self.ramp_kw_per_s * dt_s;
        let ramped = self.power_kw + (target - self.power_kw).clamp(-max_move, max_move);
        self.power_kw = ramped.clamp(lo, hi.max(lo));
        if let Some(store) = &mut self.store {
            store.integrate(self.power_kw, dt_s);
            if self.model == Model::Ev {
                ev_turnover(store, local_h, dt_s);
            }
        }
    }

    fn noise(&mut self, noise_pct: f64) -> f64 {
        self.rated_kw * noise_pct / 100.0 * self.gaussian()
    }

    /// PV and wind: produce what is available, or less when curtailed by a setpoint.
    fn generator_target(&self, available_kw: f64) -> (f64, f64, f64) {
        let hi = available_kw
            .clamp(0.0, self.max_kw.max(0.0))
            .max(self.min_kw);
        let target = self.setpoint_kw.map_or(hi, |s| s.min(hi));
        (target, self.min_kw, hi)
    }

    /// Power window within `[lo, hi]` that keeps the store within its SoC limits; where the
    /// two disagree (a template whose power range excludes 0) the SoC limits win.
    fn store_window(&self, dt_s: f64, lo: f64, hi: f64) -> (f64, f64) {
        let Some(s) = &self.store else {
            return (lo, hi);
        };
        let (charge, discharge) = s.power_window_kw(dt_s);
        let lo = lo.max(charge).min(discharge);
        let hi = hi.min(discharge).max(lo);
        (lo, hi)
    }

    fn ev_target(&mut self, local_h: f64, dt_s: f64, noise_pct: f64) -> (f64, f64, f64) {
        let connected = ev_connected_share(local_h);
        let plug_limit = -self.rated_kw * connected;
        let lo = self.min_kw.max(plug_limit);
        let hi = self.max_kw;
        let full = self.store.is_some_and(|s| s.energy_kwh >= s.max_kwh - 1e-9);
        let natural = if full { 0.0 } else { lo };
        let target = self.setpoint_kw.unwrap_or(natural) + self.noise(noise_pct);
        let (lo, hi) = self.store_window(dt_s, lo, hi);
        (target, lo, hi)
    }

    fn telemetry(&self, now: Timestamp) -> Telemetry {
        let mut power = to_decimal(self.power_kw, 3);
        // Rounding must not carry a value inside the range across its edge.
        if (self.min_kw..=self.max_kw).contains(&self.power_kw) {
            power = power.clamp(self.min_kw_dec, self.max_kw_dec);
        }
        Telemetry {
            power_kw: power,
            soc_pct: self.store.map(|s| s.soc_pct()),
            available: true,
            at: now,
        }
    }
}

/// Cars leaving charged and arriving empty pull the fleet's energy towards its floor.
fn ev_turnover(store: &mut Store, local_h: f64, dt_s: f64) {
    let rate_per_h = match local_h {
        h if (7.0..10.0).contains(&h) => 0.4,
        h if (10.0..17.0).contains(&h) => 0.25,
        h if (17.0..19.0).contains(&h) => 0.3,
        _ => 0.02,
    };
    let drained = (store.energy_kwh - store.min_kwh) * (rate_per_h * dt_s / 3_600.0).min(1.0);
    store.energy_kwh = (store.energy_kwh - drained).clamp(store.min_kwh, store.max_kwh);
}

/// Share of chargers with a car plugged in at local hour `h` (workplace charging).
fn ev_connected_share(h: f64) -> f64 {
    match h {
        h if h < 7.0 => 0.1,
        h if h < 9.0 => 0.1 + 0.8 * (h - 7.0) / 2.0,
        h if h < 17.0 => 0.9,
        h if h < 20.0 => 0.9 - 0.7 * (h - 17.0) / 3.0,
        _ => 0.2,
    }
}

/// Working-day load shape in 0..=1: 0.3 at night, 0.9 from 08:00 to 18:00, cosine ramps.
fn work_shape(h: f64) -> f64 {
    let ramp = |x: f64| 0.5 - 0.5 * (PI * x.clamp(0.0, 1.0)).cos();
    let up = ramp((h - 6.0) / 2.0);
    let down = 1.0 - ramp((h - 18.0) / 2.0);
    0.3 + 0.6 * up.min(down)
}

/// Fraction of rated output at wind speed `v` m/s.
fn wind_power_fraction(v: f64) -> f64 {
    const CUT_IN: f64 = 3.0;
    const RATED: f64 = 12.0;
    const CUT_OUT: f64 = 25.0;
    if !(CUT_IN..CUT_OUT).contains(&v) {
        0.0
    } else if v >= RATED {
        1.0
    } else {
        (v.powi(3) - CUT_IN.powi(3)) / (RATED.powi(3) - CUT_IN.powi(3))
    }
}

/// Clear-sky output fraction: sin(solar elevation)^1.15, zero with the sun below the horizon.
pub fn clear_sky(now: Timestamp, lat_deg: f64, lon_deg: f64) -> f64 {
    let day_of_year = f64::from(now.ordinal());
    let declination = 23.44_f64.to_radians() * (2.0 * PI * (284.0 + day_of_year) / 365.0).sin();
    let utc_h =
        f64::from(now.hour()) + f64::from(now.minute()) / 60.0 + f64::from(now.second()) / 3_600.0;
    let hour_angle = (15.0 * (utc_h + lon_deg / 15.0 - 12.0)).to_radians();
    let lat = lat_deg.to_radians();
    let sin_elevation =
        lat.sin() * declination.sin() + lat.cos() * declination.cos() * hour_angle.cos();
    if sin_elevation <= 0.0 {
        0.0
    } else {
        sin_elevation.powf(1.15)
    }
}

/// Local civil hour of day (fractional) in `tz`.
fn local_hour(now: Timestamp, tz: chrono_tz::Tz) -> f64 {
    let local = now.with_timezone(&tz);
    f64::from(local.hour()) + f64::from(local.minute()) / 60.0 + f64::from(local.second()) / 3_600.0
}

fn to_decimal(x: f64, dp: u32) -> Decimal {
    if !x.is_finite() {
        return Decimal::ZERO;
    }
    Decimal::from_f64(x).unwrap_or(Decimal::ZERO).round_dp(dp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::ControlInterface;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::{prop_assert, proptest, ProptestConfig};
    use rust_decimal_macros::dec;

    fn params(
        rated: Decimal,
        min: Decimal,
        max: Decimal,
        ramp: Decimal,
        energy: Option<Decimal>,
        soc: Option<(Decimal, Decimal)>,
        eta: Option<Decimal>,
    ) -> TemplateParams {
        TemplateParams {
            rated_power_kw: rated,
            min_power_kw: min,
            max_power_kw: max,
            ramp_kw_per_s: ramp,
            energy_capacity_kwh: energy,
            soc_min_pct: soc.map(|s| s.0),
            soc_max_pct: soc.map(|s| s.1),
            round_trip_efficiency: eta,
            marginal_cost_cny_per_mwh: dec!(0),
            response_time_s: dec!(1),
            control_interface: ControlInterface::Simulated,
        }
    }

    fn res(id: u64, kind: ResourceKind, params: TemplateParams) -> SimResource {
        SimResource {
            id: ResourceId(id),
            kind,
            params,
            location: GeoLocation::new(25.04, 102.71).unwrap(),
        }
    }

    fn battery(id: u64, energy_kwh: Decimal) -> SimResource {
        res(
            id,
            ResourceKind::Storage,
            params(
                dec!(1000),
                dec!(-1000),
                dec!(1000),
                dec!(200),
                Some(energy_kwh),
                Some((dec!(10), dec!(95))),
                Some(dec!(0.88)),
            ),
        )
    }

    /// The demo park's kinds, one or two of each.
    fn park() -> Vec<SimResource> {
        let z = dec!(0);
        vec![
            res(
                1,
                ResourceKind::Pv,
                params(dec!(250), z, dec!(250), dec!(25), None, None, None),
            ),
            res(
                2,
                ResourceKind::Pv,
                params(dec!(250), z, dec!(250), dec!(25), None, None, None),
            ),
            res(
                3,
                ResourceKind::Wind,
                params(dec!(1500), z, dec!(1500), dec!(50), None, None, None),
            ),
            battery(4, dec!(2000)),
            res(
                5,
                ResourceKind::FlexibleLoad,
                params(dec!(400), dec!(-400), dec!(-80), dec!(20), None, None, None),
            ),
            res(
                6,
                ResourceKind::EvCharger,
                params(
                    dec!(120),
                    dec!(-120),
                    z,
                    dec!(30),
                    Some(dec!(240)),
                    Some((dec!(20), dec!(100))),
                    None,
                ),
            ),
        ]
    }

    /// 2026-06-21 at `h` UTC (Shanghai = UTC+8; solar noon at 102.7°E is about 05:09 UTC).
    fn at(h: u32, m: u32) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 6, 21, h, m, 0).unwrap()
    }

    fn run_day(seed: u64, step_s: i64) -> Vec<(ResourceId, Telemetry)> {
        let mut sim = ParkSim::new(park(), seed).unwrap();
        let mut all = Vec::new();
        let mut now = at(0, 0);
        sim.set_setpoint(ResourceId(4), dec!(-600)).unwrap();
        while now < at(23, 0) {
            now += chrono::Duration::seconds(step_s);
            if now == at(8, 0) {
                sim.set_setpoint(ResourceId(4), dec!(700)).unwrap();
            }
            all.extend(sim.step(now, step_s as f64).unwrap());
        }
        all
    }

    #[test]
    fn same_seed_and_calls_give_identical_telemetry() {
        let a = run_day(42, 60);
        let b = run_day(42, 60);
        assert_eq!(a, b);
        let c = run_day(43, 60);
        assert_ne!(a, c, "another seed gives other noise");
        // Adding a resource leaves the others' streams untouched.
        let mut more = park();
        more.push(battery(99, dec!(500)));
        let mut sim = ParkSim::new(more, 42).unwrap();
        let mut base = ParkSim::new(park(), 42).unwrap();
        for k in 1..=30 {
            let now = at(4, 0) + chrono::Duration::seconds(k);
            let x = sim.step(now, 1.0).unwrap();
            let y = base.step(now, 1.0).unwrap();
            assert_eq!(&x[..y.len()], &y[..]);
        }
    }

    #[test]
    fn pv_is_zero_at_night_and_produces_at_noon() {
        let mut sim = ParkSim::new(park(), 7).unwrap();
        // Local (Shanghai) midnight to 05:00: the sun is down at 25°N in June.
        for k in 0..300 {
            let now = at(16, 0) + chrono::Duration::minutes(k);
            for (id, t) in sim.step(now, 60.0).unwrap() {
                if id.0 <= 2 {
                    assert_eq!(t.power_kw, Decimal::ZERO, "PV {id} at {now}");
                }
            }
        }
        let mut sim = ParkSim::new(park(), 7).unwrap();
        let mut noon = Vec::new();
        for k in 0..60 {
            noon = sim
                .step(at(4, 30) + chrono::Duration::minutes(k), 60.0)
                .unwrap();
        }
        let pv = noon[0].1.power_kw;
        assert!(pv > dec!(50) && pv <= dec!(250), "PV at solar noon {pv}");
        assert_eq!(clear_sky(at(17, 0), 25.0, 102.7), 0.0);
        assert!(clear_sky(at(5, 9), 25.0, 102.7) > 0.95);
    }

    #[test]
    fn ramp_limits_are_respected_when_following_setpoints() {
        let mut sim = ParkSim::new(park(), 3).unwrap();
        let setpoints = [dec!(1000), dec!(-1000), dec!(0), dec!(-700), dec!(900)];
        let mut prev_batt = sim.power_kw(ResourceId(4)).unwrap();
        let mut prev_load: Option<f64> = None;
        let mut now = at(3, 0);
        for (i, sp) in setpoints.iter().cycle().take(40).enumerate() {
            sim.set_setpoint(ResourceId(4), *sp).unwrap();
            let load_sp = if i % 2 == 0 { dec!(-400) } else { dec!(-80) };
            sim.set_setpoint(ResourceId(5), load_sp).unwrap();
            for _ in 0..3 {
                now += chrono::Duration::seconds(2);
                sim.step(now, 2.0).unwrap();
                let b = sim.power_kw(ResourceId(4)).unwrap();
                assert!(
                    (b - prev_batt).abs() <= 200.0 * 2.0 + 1e-9,
                    "{prev_batt} -> {b}"
                );
                prev_batt = b;
                let l = sim.power_kw(ResourceId(5)).unwrap();
                if let Some(p) = prev_load {
                    assert!((l - p).abs() <= 20.0 * 2.0 + 1e-9, "{p} -> {l}");
                }
                assert!((-400.0..=-80.0).contains(&l));
                prev_load = Some(l);
            }
        }
        // After long enough the battery sits at its setpoint, give or take the noise.
        sim.set_setpoint(ResourceId(4), dec!(300)).unwrap();
        for _ in 0..20 {
            now += chrono::Duration::seconds(1);
            sim.step(now, 1.0).unwrap();
        }
        let b = sim.power_kw(ResourceId(4)).unwrap();
        assert!((b - 300.0).abs() < 30.0, "battery at {b}");
    }

    #[test]
    fn bad_inputs_are_errors_naming_what_was_wrong() {
        let mut sim = ParkSim::new(park(), 1).unwrap();
        for dt in [0.0, -1.0, f64::NAN, MAX_STEP_S + 1.0] {
            let err = sim.step(at(1, 0), dt).unwrap_err();
            assert!(err.to_string().contains("dt_s"), "{err}");
        }
        assert_eq!(
            sim.set_setpoint(ResourceId(77), dec!(1)),
            Err(ParkSimError::UnknownResource(ResourceId(77)))
        );
        let err = sim.set_setpoint(ResourceId(5), dec!(10)).unwrap_err();
        assert!(matches!(err, ParkSimError::SetpointOutOfRange { .. }));
        let mut dup = park();
        dup.push(battery(4, dec!(10)));
        assert_eq!(
            ParkSim::new(dup, 1).unwrap_err(),
            ParkSimError::DuplicateResource(ResourceId(4))
        );
    }

    #[test]
    fn loads_follow_a_daily_profile_and_ev_fleet_charges_by_day() {
        let mut sim = ParkSim::with_config(
            park(),
            5,
            ParkSimConfig {
                noise_pct: 0.0,
                ..ParkSimConfig::default()
            },
        )
        .unwrap();
        let mut load_at = BTreeMap::new();
        let mut ev_at = BTreeMap::new();
        let mut now = at(15, 0); // 23:00 local
        for _ in 0..(24 * 60) {
            now += chrono::Duration::minutes(1);
            let tel = sim.step(now, 60.0).unwrap();
            let local = now.with_timezone(&chrono_tz::Asia::Shanghai).hour();
            load_at.insert(local, tel[4].1.power_kw);
            ev_at.insert(local, tel[5].1.power_kw);
        }
        assert!(
            load_at[&12] < load_at[&2],
            "more consumption at noon than at 2 am"
        );
        assert!(ev_at[&11] < ev_at[&3], "EV fleet charges harder by day");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn soc_never_leaves_its_limits(
            steps in proptest::collection::vec((-1000i64..=1000, 1u32..=3600, -120i64..=0), 1..60),
            seed in 0u64..1000,
        ) {
            let mut sim = ParkSim::new(park(), seed).unwrap();
            let mut now = at(0, 0);
            for (batt_kw, dt_s, ev_kw) in steps {
                sim.set_setpoint(ResourceId(4), Decimal::from(batt_kw)).unwrap();
                sim.set_setpoint(ResourceId(6), Decimal::from(ev_kw)).unwrap();
                now += chrono::Duration::seconds(i64::from(dt_s));
                for (id, t) in sim.step(now, f64::from(dt_s)).unwrap() {
                    let (lo, hi) = match id.0 {
                        4 => (dec!(10), dec!(95)),
                        6 => (dec!(20), dec!(100)),
                        _ => { prop_assert!(t.soc_pct.is_none()); continue; }
                    };
                    let soc = t.soc_pct.unwrap();
                    prop_assert!(soc >= lo && soc <= hi, "resource {} soc {}", id, soc);
                    prop_assert!(t.validate().is_ok());
                }
                let e = sim.energy_kwh(ResourceId(4)).unwrap();
                prop_assert!((200.0..=1900.0).contains(&e), "battery energy {}", e);
            }
        }
    }

    #[test]
    fn battery_energy_integrates_with_root_efficiency_each_way() {
        let mut sim = ParkSim::with_config(
            vec![battery(1, dec!(2000))],
            9,
            ParkSimConfig {
                noise_pct: 0.0,
                ..ParkSimConfig::default()
            },
        )
        .unwrap();
        let e0 = sim.energy_kwh(ResourceId(1)).unwrap();
        sim.set_setpoint(ResourceId(1), dec!(-1000)).unwrap();
        let mut now = at(1, 0);
        // Ramp 200 kW/s: at -1000 kW after 5 s; then 360 s more at -1000 kW = 100 kWh in.
        for _ in 0..365 {
            now += chrono::Duration::seconds(1);
            sim.step(now, 1.0).unwrap();
        }
        let ramp_kwh = (200.0 + 400.0 + 600.0 + 800.0 + 1000.0) / 3600.0;
        let stored = sim.energy_kwh(ResourceId(1)).unwrap() - e0;
        let expected = (100.0 + ramp_kwh) * 0.88_f64.sqrt();
        assert!((stored - expected).abs() < 1e-6, "{stored} vs {expected}");
    }
}
