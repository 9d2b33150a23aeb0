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
