//! Resources: instances of a pinned template version, with site, location, lifecycle state and
//! the latest telemetry sample.
//!
//! Invariants:
//! - `template_version` never changes after creation: moving a resource to a newer template
//!   version is a new resource record, decided by the caller, not a silent re-pin.
//! - Lifecycle moves only along legal edges: commissioning→active, active↔maintenance,
//!   any non-retired→retired. Retired is final. Anything else is a [`LifecycleError`].
//! - `telemetry.at` only moves forward: a sample not newer than the current one is ignored and
//!   reported as [`TelemetryOutcome::Stale`]; the resource is unchanged.
//! - Telemetry values are bounded (|power| <= [`MAX_POWER_KW`], SoC in 0..=100).

use crate::error::ValidationError;
use crate::ids::{ResourceId, TemplateId};
use crate::template::{validate_name, TemplateVersion, MAX_POWER_KW};
use crate::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// Geographic position in WGS84 degrees (for map views; floats are fine here).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoLocation {
    pub lat: f64,
    pub lon: f64,
}

impl GeoLocation {
    /// Refuses NaN, lat outside -90..=90 and lon outside -180..=180.
    pub fn new(lat: f64, lon: f64) -> Result<Self, ValidationError> {
        let loc = Self { lat, lon };
        loc.validate()?;
        Ok(loc)
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(-90.0..=90.0).contains(&self.lat) {
            return Err(ValidationError::new(
                "lat",
                format!("lat {} outside -90..=90", self.lat),
            ));
        }
        if !(-180.0..=180.0).contains(&self.lon) {
            return Err(ValidationError::new(
                "lon",
                format!("lon {} outside -180..=180", self.lon),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleState {
    Commissioning,
    Active,
    Maintenance,
    Retired,
}

impl LifecycleState {
    pub const ALL: [LifecycleState; 4] = [
        LifecycleState::Commissioning,
        LifecycleState::Active,
        LifecycleState::Maintenance,
        LifecycleState::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Commissioning => "commissioning",
            Self::Active => "active",
            Self::Maintenance => "maintenance",
            Self::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "state",
                    format!("{s:?} is not one of commissioning, active, maintenance, retired"),
                )
            })
    }

    /// Whether `self → to` is a legal edge. Staying in the same state is not a transition.
    pub fn can_transition_to(self, to: LifecycleState) -> bool {
        use LifecycleState::*;
        matches!(
            (self, to),
            (Commissioning, Active)
                | (Active, Maintenance)
                | (Maintenance, Active)
                | (Commissioning | Active | Maintenance, Retired)
        )
    }

    /// The new state, or an error naming both ends of the illegal edge.
    pub fn transition(self, to: LifecycleState) -> Result<LifecycleState, LifecycleError> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(LifecycleError { from: self, to })
        }
    }
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An illegal lifecycle transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("illegal lifecycle transition from {from} to {to} (legal: commissioning→active, active↔maintenance, any non-retired→retired)")]
pub struct LifecycleError {
    pub from: LifecycleState,
    pub to: LifecycleState,
}

/// One telemetry sample. `power_kw` is positive when generating, negative when consuming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Telemetry {
    pub power_kw: Decimal,
    #[serde(default)]
    pub soc_pct: Option<Decimal>,
    pub available: bool,
    pub at: Timestamp,
}

impl Telemetry {
    /// Bounds check: |power_kw| <= [`MAX_POWER_KW`], soc_pct in 0..=100.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.power_kw.abs() > MAX_POWER_KW {
            return Err(ValidationError::new(
                "power_kw",
                format!(
                    "power_kw {} outside -{MAX_POWER_KW}..={MAX_POWER_KW}",
                    self.power_kw
                ),
            ));
        }
        if let Some(soc) = self.soc_pct {
            if soc < Decimal::ZERO || soc > Decimal::ONE_HUNDRED {
                return Err(ValidationError::new(
                    "soc_pct",
                    format!("soc_pct {soc} outside 0..=100"),
                ));
            }
        }
        Ok(())
    }
}

/// What happened to a telemetry sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum TelemetryOutcome {
    /// The sample is now the resource's latest telemetry.
    Applied,
    /// The sample was not newer than the current one (`current_at`) and was ignored.
    Stale {
        current_at: Timestamp,
        sample_at: Timestamp,
    },
}

/// A resource: an instance of one pinned template version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub id: ResourceId,
    pub name: String,
    pub template_id: TemplateId,
    /// The template version this resource was made from; never re-pinned.
    pub template_version: u32,
    pub site: String,
    pub location: GeoLocation,
    pub state: LifecycleState,
    #[serde(default)]
    pub telemetry: Option<Telemetry>,
}

impl Resource {
    /// A new resource in `commissioning`, pinned to `template`.
    pub fn new(
        id: ResourceId,
        name: impl Into<String>,
        template: &TemplateVersion,
        site: impl Into<String>,
        location: GeoLocation,
    ) -> Result<Self, ValidationError> {
        let resource = Self {
            id,
            name: name.into(),
            template_id: template.template_id,
            template_version: template.version,
            site: site.into(),
            location,
            state: LifecycleState::Commissioning,
            telemetry: None,
        };
        resource.validate()?;
        Ok(resource)
    }

    /// Field checks for a resource loaded from outside (config, store, API).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        validate_name("site", &self.site)?;
        self.location.validate()?;
        if self.template_version == 0 {
            return Err(ValidationError::new(
                "template_version",
                "template_version 0 invalid: versions start at 1",
            ));
        }
        if let Some(t) = &self.telemetry {
            t.validate()?;
        }
        Ok(())
    }

    /// Moves the lifecycle state along a legal edge; on error the resource is unchanged.
    pub fn transition(&mut self, to: LifecycleState) -> Result<(), LifecycleError> {
        self.state = self.state.transition(to)?;
        Ok(())
    }

    /// Takes a sample if it is valid and strictly newer than the current one.
    pub fn apply_telemetry(
        &mut self,
        sample: Telemetry,
    ) -> Result<TelemetryOutcome, ValidationError> {
        sample.validate()?;
        if let Some(current) = &self.telemetry {
            if sample.at <= current.at {
                return Ok(TelemetryOutcome::Stale {
                    current_at: current.at,
                    sample_at: sample.at,
                });
            }
        }
        self.telemetry = Some(sample);
        Ok(TelemetryOutcome::Applied)
    }

    /// Active and reporting itself available: the resource can be dispatched.
    pub fn is_available(&self) -> bool {
        self.state == LifecycleState::Active && self.telemetry.as_ref().is_some_and(|t| t.available)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::fixtures::{draft, storage_params};
    use crate::template::{ResourceKind, TemplateRegistry};
    use chrono::{TimeZone, Utc};
    use rust_decimal_macros::dec;
    use LifecycleState::*;

    fn t(secs: i64) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn battery() -> Resource {
        let mut reg = TemplateRegistry::new();
        let v = reg
            .create(
                TemplateId(1),
                draft("Battery", ResourceKind::Storage, storage_params()),
                t(0),
            )
            .unwrap();
        Resource::new(
            ResourceId(10),
            "BESS 1",
            v,
            "park A",
            GeoLocation::new(25.0, 102.7).unwrap(),
        )
        .unwrap()
    }

    fn sample(secs: i64, power_kw: Decimal) -> Telemetry {
        Telemetry {
            power_kw,
            soc_pct: Some(dec!(50)),
            available: true,
            at: t(secs),
        }
    }

    #[test]
    fn new_resource_pins_version_and_starts_commissioning() {
        let r = battery();
        assert_eq!((r.template_id, r.template_version), (TemplateId(1), 1));
        assert_eq!(r.state, Commissioning);
        assert!(r.telemetry.is_none());
        assert!(!r.is_available());
    }

    #[test]
    fn only_legal_lifecycle_edges_are_allowed() {
        let legal = [
            (Commissioning, Active),
            (Active, Maintenance),
            (Maintenance, Active),
            (Commissioning, Retired),
            (Active, Retired),
            (Maintenance, Retired),
        ];
        for from in LifecycleState::ALL {
            for to in LifecycleState::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.can_transition_to(to), expected, "{from} -> {to}");
                let result = from.transition(to);
                if expected {
                    assert_eq!(result, Ok(to));
                } else {
                    assert_eq!(result, Err(LifecycleError { from, to }));
                }
            }
        }
    }

    #[test]
    fn illegal_transition_names_both_states_and_leaves_resource_unchanged() {
        let mut r = battery();
        let err = r.transition(Maintenance).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("illegal lifecycle transition from commissioning to maintenance"));
        assert_eq!(r.state, Commissioning);
        r.transition(Active).unwrap();
        r.transition(Retired).unwrap();
        assert_eq!(
            r.transition(Active),
            Err(LifecycleError {
                from: Retired,
                to: Active
            })
        );
        assert_eq!(r.state, Retired);
    }

    #[test]
    fn older_or_equal_telemetry_is_ignored_as_stale() {
        let mut r = battery();
        assert_eq!(
            r.apply_telemetry(sample(10, dec!(100))),
            Ok(TelemetryOutcome::Applied)
        );
        for (secs, power) in [(5, dec!(1)), (10, dec!(2))] {
            assert_eq!(
                r.apply_telemetry(sample(secs, power)),
                Ok(TelemetryOutcome::Stale {
                    current_at: t(10),
                    sample_at: t(secs)
                })
            );
        }
        assert_eq!(r.telemetry.as_ref().map(|x| x.power_kw), Some(dec!(100)));
        assert_eq!(
            r.apply_telemetry(sample(11, dec!(3))),
            Ok(TelemetryOutcome::Applied)
        );
        assert_eq!(r.telemetry.as_ref().map(|x| x.power_kw), Some(dec!(3)));
    }

    #[test]
    fn telemetry_bounds_are_checked() {
        let mut r = battery();
        let mut s = sample(1, dec!(0));
        s.soc_pct = Some(dec!(100));
        assert!(r.apply_telemetry(s.clone()).is_ok());
        s.at = t(2);
        s.soc_pct = Some(dec!(100.01));
        let err = r.apply_telemetry(s.clone()).unwrap_err();
        assert_eq!(err.field, "soc_pct");
        assert!(err.reason.contains("soc_pct 100.01 outside 0..=100"));
        s.soc_pct = Some(dec!(-0.01));
        assert!(r.apply_telemetry(s.clone()).is_err());
        s.soc_pct = None;
        s.power_kw = -MAX_POWER_KW;
        assert!(r.apply_telemetry(s.clone()).is_ok());
        s.at = t(3);
        s.power_kw = MAX_POWER_KW + dec!(0.001);
        assert_eq!(r.apply_telemetry(s).unwrap_err().field, "power_kw");
        assert_eq!(r.telemetry.as_ref().map(|x| x.at), Some(t(2)));
    }

    #[test]
    fn geo_location_bounds() {
        for (lat, lon) in [(90.0, 180.0), (-90.0, -180.0), (0.0, 0.0)] {
            assert!(GeoLocation::new(lat, lon).is_ok(), "{lat},{lon}");
        }
        assert_eq!(GeoLocation::new(90.0001, 0.0).unwrap_err().field, "lat");
        assert_eq!(GeoLocation::new(-90.0001, 0.0).unwrap_err().field, "lat");
        assert_eq!(GeoLocation::new(0.0, 180.0001).unwrap_err().field, "lon");
        assert_eq!(GeoLocation::new(0.0, -180.0001).unwrap_err().field, "lon");
        assert!(GeoLocation::new(f64::NAN, 0.0).is_err());
        assert!(GeoLocation::new(0.0, f64::NAN).is_err());
    }

    #[test]
    fn availability_needs_active_state_and_available_flag() {
        let mut r = battery();
        r.apply_telemetry(sample(1, dec!(0))).unwrap();
        assert!(!r.is_available());
        r.transition(Active).unwrap();
        assert!(r.is_available());
        let mut s = sample(2, dec!(0));
        s.available = false;
        r.apply_telemetry(s).unwrap();
        assert!(!r.is_available());
    }

    #[test]
    fn resource_json_round_trip_and_validation() {
        let mut r = battery();
        r.apply_telemetry(sample(1, dec!(-12.5))).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"state\":\"commissioning\""));
        assert_eq!(serde_json::from_str::<Resource>(&json).unwrap(), r);
        let mut bad = r.clone();
        bad.template_version = 0;
        assert_eq!(bad.validate().unwrap_err().field, "template_version");
        let mut bad = r;
        bad.site = String::new();
        assert_eq!(bad.validate().unwrap_err().field, "site");
    }
}
