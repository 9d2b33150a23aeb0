//! Resource templates: what kind of device a resource is and its typed, unit-carrying limits.
//!
//! Owns [`ResourceKind`], [`TemplateParams`] (validation), the immutable [`TemplateVersion`]
//! and the append-only [`TemplateRegistry`], plus [`usage_counts`].
//!
//! Invariants:
//! - A [`TemplateVersion`] is never changed once appended; `create` and `update` validate and
//!   push a new version (1-based, contiguous). Resources pin `(template_id, version)`.
//! - Every stored version passed [`TemplateParams::validate`] for its kind.
//! - A template's kind is fixed at creation: an update that changes it is refused, so a
//!   template id always means one kind of device.
//! - Power sign convention: positive = generating/exporting, negative = consuming.
//! - All magnitudes are bounded (see the `MAX_*` constants) so the aggregation sums built on
//!   them can never overflow a `Decimal`.
//! - Usage counts are derived from the resources ([`usage_counts`]), never stored.

use crate::error::ValidationError;
use crate::ids::TemplateId;
use crate::resource::Resource;
use crate::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use thiserror::Error;

/// Largest power magnitude any parameter or telemetry sample may carry: 10 GW.
pub const MAX_POWER_KW: Decimal = Decimal::from_parts(10_000_000, 0, 0, false, 0);
/// Largest energy capacity: 100 GWh.
pub const MAX_ENERGY_KWH: Decimal = Decimal::from_parts(100_000_000, 0, 0, false, 0);
/// Bound on |marginal cost|, CNY/MWh.
pub const MAX_MARGINAL_COST_CNY_PER_MWH: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
/// Largest response time: one day.
pub const MAX_RESPONSE_TIME_S: Decimal = Decimal::from_parts(86_400, 0, 0, false, 0);
/// Longest template name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest custom kind name (after `custom:`), in bytes.
pub const MAX_CUSTOM_KIND_LEN: usize = 32;
/// Most templates a registry holds.
pub const MAX_TEMPLATES: usize = 100_000;
/// Most versions one template may accumulate.
pub const MAX_VERSIONS_PER_TEMPLATE: usize = 10_000;

const HUNDRED: Decimal = Decimal::ONE_HUNDRED;

/// Kind of device. Serialised as a snake_case string: `"pv"`, `"wind"`, `"storage"`,
/// `"flexible_load"`, `"ev_charger"`, or `"custom:<name>"` where `<name>` is 1..=32 of
/// `[a-z0-9_]` (for example `"custom:heat_pump"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ResourceKind {
    Pv,
    Wind,
    Storage,
    FlexibleLoad,
    EvCharger,
    /// An operator-defined kind; holds the name without the `custom:` prefix.
    Custom(String),
}

impl ResourceKind {
    pub const CUSTOM_PREFIX: &'static str = "custom:";

    /// Builds a custom kind, checking the name.
    pub fn custom(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_CUSTOM_KIND_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(ValidationError::new(
                "kind",
                format!("custom kind {name:?} must be 1..={MAX_CUSTOM_KIND_LEN} of [a-z0-9_]"),
            ));
        }
        Ok(Self::Custom(name))
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "pv" => Ok(Self::Pv),
            "wind" => Ok(Self::Wind),
            "storage" => Ok(Self::Storage),
            "flexible_load" => Ok(Self::FlexibleLoad),
            "ev_charger" => Ok(Self::EvCharger),
            other => match other.strip_prefix(Self::CUSTOM_PREFIX) {
                Some(name) => Self::custom(name),
                None => Err(ValidationError::new(
                    "kind",
                    format!(
                        "{other:?} is not one of pv, wind, storage, flexible_load, ev_charger, \
                         custom:<name>"
                    ),
                )),
            },
        }
    }

    /// Whether the kind stores energy, so it needs `energy_capacity_kwh`.
    pub fn needs_energy_capacity(&self) -> bool {
        matches!(self, Self::Storage | Self::EvCharger)
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pv => f.write_str("pv"),
            Self::Wind => f.write_str("wind"),
            Self::Storage => f.write_str("storage"),
            Self::FlexibleLoad => f.write_str("flexible_load"),
            Self::EvCharger => f.write_str("ev_charger"),
            Self::Custom(name) => write!(f, "{}{name}", Self::CUSTOM_PREFIX),
        }
    }
}

impl TryFrom<String> for ResourceKind {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ResourceKind> for String {
    fn from(kind: ResourceKind) -> String {
        kind.to_string()
    }
}

/// How the VPP talks to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlInterface {
    Modbus,
    Mqtt,
    Iec104,
    Iec61850,
    OpcUa,
    /// Driven by the built-in simulated fleet (demo, tests, backtest).
    Simulated,
}

/// A template's typed parameters. Power is positive when generating, negative when consuming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateParams {
    /// Nameplate power, > 0 and <= [`MAX_POWER_KW`].
    pub rated_power_kw: Decimal,
    /// Lowest operating power; negative means consuming. `-rated <= min <= max`.
    pub min_power_kw: Decimal,
    /// Highest operating power; `max <= rated`.
    pub max_power_kw: Decimal,
    /// Ramp rate, > 0.
    pub ramp_kw_per_s: Decimal,
    /// Usable energy; required for storage and ev_charger, > 0 when present.
    #[serde(default)]
    pub energy_capacity_kwh: Option<Decimal>,
    /// Lowest allowed state of charge, 0..=100; required (with the max) for storage.
    #[serde(default)]
    pub soc_min_pct: Option<Decimal>,
    /// Highest allowed state of charge, 0..=100, above `soc_min_pct`.
    #[serde(default)]
    pub soc_max_pct: Option<Decimal>,
    /// Round-trip efficiency in (0, 1].
    #[serde(default)]
    pub round_trip_efficiency: Option<Decimal>,
    /// Cost of one more MWh, may be negative (subsidised output); |cost| bounded.
    pub marginal_cost_cny_per_mwh: Decimal,
    /// Time from setpoint to response, 0..=86400 s.
    pub response_time_s: Decimal,
    pub control_interface: ControlInterface,
}

fn invalid(field: &str, reason: String) -> Result<(), ValidationError> {
    Err(ValidationError::new(field, reason))
}

impl TemplateParams {
    /// Checks every rule for `kind`; the error names the field, its value and the limit broken.
    pub fn validate(&self, kind: &ResourceKind) -> Result<(), ValidationError> {
        self.validate_power()?;
        self.validate_energy(kind)?;
        self.validate_soc(kind)?;
        self.validate_misc()?;
        self.validate_kind_sign(kind)
    }

    fn validate_power(&self) -> Result<(), ValidationError> {
        let (rated, min, max) = (self.rated_power_kw, self.min_power_kw, self.max_power_kw);
        if rated <= Decimal::ZERO || rated > MAX_POWER_KW {
            return invalid(
                "rated_power_kw",
                format!("rated_power_kw {rated} outside (0, {MAX_POWER_KW}]"),
            );
        }
        if max > rated {
            return invalid(
                "max_power_kw",
                format!("max_power_kw {max} > rated_power_kw {rated}"),
            );
        }
        if min > max {
            return invalid(
                "min_power_kw",
                format!("min_power_kw {min} > max_power_kw {max}"),
            );
        }
        if min < -rated {
            return invalid(
                "min_power_kw",
                format!("min_power_kw {min} < -rated_power_kw {}", -rated),
            );
        }
        let ramp = self.ramp_kw_per_s;
        if ramp <= Decimal::ZERO || ramp > MAX_POWER_KW {
            return invalid(
                "ramp_kw_per_s",
                format!("ramp_kw_per_s {ramp} outside (0, {MAX_POWER_KW}]"),
            );
        }
        Ok(())
    }

    fn validate_energy(&self, kind: &ResourceKind) -> Result<(), ValidationError> {
        match self.energy_capacity_kwh {
            None if kind.needs_energy_capacity() => invalid(
                "energy_capacity_kwh",
                format!("energy_capacity_kwh is required for kind {kind}"),
            ),
            Some(e) if e <= Decimal::ZERO || e > MAX_ENERGY_KWH => invalid(
                "energy_capacity_kwh",
                format!("energy_capacity_kwh {e} outside (0, {MAX_ENERGY_KWH}]"),
            ),
            _ => Ok(()),
        }
    }

    fn validate_soc(&self, kind: &ResourceKind) -> Result<(), ValidationError> {
        for (field, value) in [
            ("soc_min_pct", self.soc_min_pct),
            ("soc_max_pct", self.soc_max_pct),
        ] {
            match value {
                None if *kind == ResourceKind::Storage => {
                    return invalid(field, format!("{field} is required for kind storage"));
                }
                Some(v) if v < Decimal::ZERO || v > HUNDRED => {
                    return invalid(field, format!("{field} {v} outside 0..=100"));
                }
                _ => {}
            }
        }
        match (self.soc_min_pct, self.soc_max_pct) {
            (Some(lo), Some(hi)) if lo >= hi => invalid(
                "soc_min_pct",
                format!("soc_min_pct {lo} >= soc_max_pct {hi} (min must be below max)"),
            ),
            (Some(_), None) | (None, Some(_)) => invalid(
                "soc_min_pct",
                "soc_min_pct and soc_max_pct must be given together".to_string(),
            ),
            (Some(_), Some(_)) if self.energy_capacity_kwh.is_none() => invalid(
                "energy_capacity_kwh",
                "energy_capacity_kwh is required when SoC limits are given".to_string(),
            ),
            _ => Ok(()),
        }
    }

    fn validate_misc(&self) -> Result<(), ValidationError> {
        if let Some(eta) = self.round_trip_efficiency {
            if eta <= Decimal::ZERO || eta > Decimal::ONE {
                return invalid(
                    "round_trip_efficiency",
                    format!("round_trip_efficiency {eta} outside (0, 1]"),
                );
            }
        }
        let cost = self.marginal_cost_cny_per_mwh;
        if cost.abs() > MAX_MARGINAL_COST_CNY_PER_MWH {
            return invalid(
                "marginal_cost_cny_per_mwh",
                format!(
                    "marginal_cost_cny_per_mwh {cost} outside \
                     -{MAX_MARGINAL_COST_CNY_PER_MWH}..={MAX_MARGINAL_COST_CNY_PER_MWH}"
                ),
            );
        }
        let rt = self.response_time_s;
        if rt < Decimal::ZERO || rt > MAX_RESPONSE_TIME_S {
            return invalid(
                "response_time_s",
                format!("response_time_s {rt} outside 0..={MAX_RESPONSE_TIME_S}"),
            );
        }
        Ok(())
    }

    /// Generators never consume and a flexible load never exports, so a sign error in a
    /// config (load power written as positive) is caught here rather than in dispatch.
    fn validate_kind_sign(&self, kind: &ResourceKind) -> Result<(), ValidationError> {
        match kind {
            ResourceKind::Pv | ResourceKind::Wind if self.min_power_kw < Decimal::ZERO => invalid(
                "min_power_kw",
                format!(
                    "min_power_kw {} < 0 but kind {kind} only generates",
                    self.min_power_kw
                ),
            ),
            ResourceKind::FlexibleLoad if self.max_power_kw > Decimal::ZERO => invalid(
                "max_power_kw",
                format!(
                    "max_power_kw {} > 0 but kind flexible_load only consumes (negative power)",
                    self.max_power_kw
                ),
            ),
            _ => Ok(()),
        }
    }
}

/// What `create` and `update` take: everything of a version except id, number and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateDraft {
    pub name: String,
    pub kind: ResourceKind,
    pub params: TemplateParams,
}

impl TemplateDraft {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        self.params.validate(&self.kind)
    }
}

/// Checks a display name: 1..=128 characters, not blank, no control characters.
pub(crate) fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let chars = name.chars().count();
    if name.trim().is_empty() || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return invalid(
            field,
            format!(
                "{field} {name:?} must be 1..={MAX_NAME_CHARS} characters, not blank, \
                 without control characters"
            ),
        );
    }
    Ok(())
}

/// One immutable version of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateVersion {
    pub template_id: TemplateId,
    /// 1-based, contiguous per template.
    pub version: u32,
    pub name: String,
    pub kind: ResourceKind,
    pub params: TemplateParams,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("template {0} is unknown")]
    UnknownTemplate(TemplateId),
    #[error("template {0} already exists; use update to add a version")]
    DuplicateTemplate(TemplateId),
    #[error("template {template_id} has no version {version} (latest is {latest})")]
    UnknownVersion {
        template_id: TemplateId,
        version: u32,
        latest: u32,
    },
    #[error("template {template_id} is of kind {from}; an update cannot change it to {to}")]
    KindChanged {
        template_id: TemplateId,
        from: ResourceKind,
        to: ResourceKind,
    },
    #[error("template {template_id}: expected version {expected} next, got {got}")]
    VersionGap {
        template_id: TemplateId,
        expected: u32,
        got: u32,
    },
    #[error("{what} limit of {limit} reached")]
    LimitReached { what: &'static str, limit: usize },
}

/// All templates, each an append-only list of immutable versions.
///
/// Serialises as the flat list of all versions; deserialising re-validates through
/// [`TemplateRegistry::restore`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Vec<TemplateVersion>", try_from = "Vec<TemplateVersion>")]
pub struct TemplateRegistry {
    templates: BTreeMap<TemplateId, Vec<TemplateVersion>>,
}

impl TemplateRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a registry from stored versions (any order), re-validating each and
    /// refusing gaps, duplicates and kind changes.
    pub fn restore(
        versions: impl IntoIterator<Item = TemplateVersion>,
    ) -> Result<Self, TemplateError> {
        let mut sorted: Vec<TemplateVersion> = versions.into_iter().collect();
        sorted.sort_by_key(|v| (v.template_id, v.version));
        let mut registry = Self::new();
        for v in sorted {
            registry.append(v)?;
        }
        Ok(registry)
    }

    /// Creates template `id` with version 1.
    pub fn create(
        &mut self,
        id: TemplateId,
        draft: TemplateDraft,
        at: Timestamp,
    ) -> Result<&TemplateVersion, TemplateError> {
        if self.templates.contains_key(&id) {
            return Err(TemplateError::DuplicateTemplate(id));
        }
        self.append(Self::version_from(id, 1, draft, at))
    }

    /// Appends a new version to template `id`; older versions stay as they were.
    pub fn update(
        &mut self,
        id: TemplateId,
        draft: TemplateDraft,
        at: Timestamp,
    ) -> Result<&TemplateVersion, TemplateError> {
        let next = self.latest(id)?.version + 1;
        self.append(Self::version_from(id, next, draft, at))
    }

    fn version_from(
        id: TemplateId,
        version: u32,
        d: TemplateDraft,
        at: Timestamp,
    ) -> TemplateVersion {
        TemplateVersion {
            template_id: id,
            version,
            name: d.name,
            kind: d.kind,
            params: d.params,
            created_at: at,
        }
    }

    /// The single place a version enters the registry: validates, checks contiguity and kind.
    fn append(&mut self, v: TemplateVersion) -> Result<&TemplateVersion, TemplateError> {
        validate_name("name", &v.name)?;
        v.params.validate(&v.kind)?;
        let id = v.template_id;
        if !self.templates.contains_key(&id) && self.templates.len() >= MAX_TEMPLATES {
            return Err(TemplateError::LimitReached {
                what: "templates",
                limit: MAX_TEMPLATES,
            });
        }
        let versions = self.templates.entry(id).or_default();
        Self::check_next(versions, &v)?;
        let index = versions.len();
        versions.push(v);
        Ok(&versions[index])
    }

    fn check_next(versions: &[TemplateVersion], v: &TemplateVersion) -> Result<(), TemplateError> {
        if versions.len() >= MAX_VERSIONS_PER_TEMPLATE {
            return Err(TemplateError::LimitReached {
                what: "versions per template",
                limit: MAX_VERSIONS_PER_TEMPLATE,
            });
        }
        let expected = u32::try_from(versions.len()).unwrap_or(u32::MAX) + 1;
        if v.version != expected {
            return Err(TemplateError::VersionGap {
                template_id: v.template_id,
                expected,
                got: v.version,
            });
        }
        match versions.first() {
            Some(first) if first.kind != v.kind => Err(TemplateError::KindChanged {
                template_id: v.template_id,
                from: first.kind.clone(),
                to: v.kind.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Version `version` (1-based) of template `id`.
    pub fn version(&self, id: TemplateId, version: u32) -> Result<&TemplateVersion, TemplateError> {
        let versions = self.versions(id)?;
        let index = usize::try_from(version).unwrap_or(usize::MAX);
        index
            .checked_sub(1)
            .and_then(|i| versions.get(i))
            .ok_or(TemplateError::UnknownVersion {
                template_id: id,
                version,
                latest: u32::try_from(versions.len()).unwrap_or(u32::MAX),
            })
    }

    /// The newest version of template `id`.
    pub fn latest(&self, id: TemplateId) -> Result<&TemplateVersion, TemplateError> {
        self.versions(id)?
            .last()
            .ok_or(TemplateError::UnknownTemplate(id))
    }

    /// All versions of template `id`, oldest first.
    pub fn versions(&self, id: TemplateId) -> Result<&[TemplateVersion], TemplateError> {
        self.templates
            .get(&id)
            .map(Vec::as_slice)
            .ok_or(TemplateError::UnknownTemplate(id))
    }

    /// Ids of all templates, ascending.
    pub fn ids(&self) -> impl Iterator<Item = TemplateId> + '_ {
        self.templates.keys().copied()
    }

    /// Smallest id above every existing one, for callers that assign ids locally.
    pub fn next_id(&self) -> TemplateId {
        TemplateId(self.templates.keys().next_back().map_or(1, |id| id.0 + 1))
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// How many of `resources` pin each version of template `id` (derived, never stored).
    pub fn usage_count<'a>(
        &self,
        id: TemplateId,
        resources: impl IntoIterator<Item = &'a Resource>,
    ) -> usize {
        resources
            .into_iter()
            .filter(|r| r.template_id == id)
            .count()
    }
}

impl From<TemplateRegistry> for Vec<TemplateVersion> {
    fn from(registry: TemplateRegistry) -> Self {
        registry.templates.into_values().flatten().collect()
    }
}

impl TryFrom<Vec<TemplateVersion>> for TemplateRegistry {
    type Error = TemplateError;
    fn try_from(versions: Vec<TemplateVersion>) -> Result<Self, Self::Error> {
        Self::restore(versions)
    }
}

/// Number of resources pinning each `(template, version)`. Versions nobody uses are absent.
pub fn usage_counts<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
) -> BTreeMap<(TemplateId, u32), usize> {
    let mut counts = BTreeMap::new();
    for r in resources {
        *counts
            .entry((r.template_id, r.template_version))
            .or_insert(0) += 1;
    }
    counts
}

/// Parameter sets shared by the tests of this crate.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use rust_decimal_macros::dec;

    pub fn storage_params() -> TemplateParams {
        TemplateParams {
            rated_power_kw: dec!(500),
            min_power_kw: dec!(-500),
            max_power_kw: dec!(500),
            ramp_kw_per_s: dec!(100),
            energy_capacity_kwh: Some(dec!(1000)),
            soc_min_pct: Some(dec!(10)),
            soc_max_pct: Some(dec!(90)),
            round_trip_efficiency: Some(dec!(0.9)),
            marginal_cost_cny_per_mwh: dec!(50),
            response_time_s: dec!(1),
            control_interface: ControlInterface::Modbus,
        }
    }

    pub fn pv_params() -> TemplateParams {
        TemplateParams {
            rated_power_kw: dec!(300),
            min_power_kw: dec!(0),
            max_power_kw: dec!(300),
            ramp_kw_per_s: dec!(30),
            energy_capacity_kwh: None,
            soc_min_pct: None,
            soc_max_pct: None,
            round_trip_efficiency: None,
            marginal_cost_cny_per_mwh: dec!(0),
            response_time_s: dec!(2),
            control_interface: ControlInterface::Simulated,
        }
    }

    pub fn load_params() -> TemplateParams {
        TemplateParams {
            rated_power_kw: dec!(200),
            min_power_kw: dec!(-200),
            max_power_kw: dec!(0),
            ramp_kw_per_s: dec!(10),
            energy_capacity_kwh: None,
            soc_min_pct: None,
            soc_max_pct: None,
            round_trip_efficiency: None,
            marginal_cost_cny_per_mwh: dec!(300),
            response_time_s: dec!(60),
            control_interface: ControlInterface::Mqtt,
        }
    }

    pub fn draft(name: &str, kind: ResourceKind, params: TemplateParams) -> TemplateDraft {
        TemplateDraft {
            name: name.to_string(),
            kind,
            params,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::ids::ResourceId;
    use crate::resource::GeoLocation;
    use chrono::{TimeZone, Utc};
    use rust_decimal_macros::dec;

    fn t0() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    /// Asserts `params` is valid for `kind`.
    fn ok(kind: &ResourceKind, params: &TemplateParams) {
        if let Err(e) = params.validate(kind) {
            panic!("expected valid, got {e}");
        }
    }

    /// Asserts `params` is refused for `kind`, naming `field`, with `needle` in the reason.
    fn refused(kind: &ResourceKind, params: &TemplateParams, field: &str, needle: &str) {
        let err = params
            .validate(kind)
            .expect_err("expected a validation error");
        assert_eq!(err.field, field, "{err}");
        assert!(
            err.reason.contains(needle),
            "{:?} lacks {needle:?}",
            err.reason
        );
    }

    #[test]
    fn fixtures_are_valid() {
        ok(&ResourceKind::Storage, &storage_params());
        ok(&ResourceKind::Pv, &pv_params());
        ok(&ResourceKind::FlexibleLoad, &load_params());
    }

    #[test]
    fn rated_power_must_be_positive_and_bounded() {
        let k = ResourceKind::Storage;
        let mut p = storage_params();
        p.rated_power_kw = dec!(0);
        refused(
            &k,
            &p,
            "rated_power_kw",
            "rated_power_kw 0 outside (0, 10000000]",
        );
        let mut p = pv_params();
        p.rated_power_kw = dec!(0.001);
        p.max_power_kw = dec!(0.001);
        ok(&ResourceKind::Pv, &p);
        let mut p = pv_params();
        p.rated_power_kw = MAX_POWER_KW;
        ok(&ResourceKind::Pv, &p);
        p.rated_power_kw = MAX_POWER_KW + dec!(0.001);
        refused(&ResourceKind::Pv, &p, "rated_power_kw", "outside");
    }

    #[test]
    fn max_power_may_not_exceed_rated() {
        let k = ResourceKind::Pv;
        let mut p = pv_params();
        p.max_power_kw = dec!(300);
        ok(&k, &p);
        p.max_power_kw = dec!(300.001);
        refused(
            &k,
            &p,
            "max_power_kw",
            "max_power_kw 300.001 > rated_power_kw 300",
        );
    }

    #[test]
    fn min_power_may_not_exceed_max() {
        let k = ResourceKind::FlexibleLoad;
        let mut p = load_params();
        p.max_power_kw = dec!(-10);
        p.min_power_kw = dec!(-10);
        ok(&k, &p);
        p.min_power_kw = dec!(-5);
        refused(&k, &p, "min_power_kw", "min_power_kw -5 > max_power_kw -10");
    }

    #[test]
    fn min_power_may_not_go_below_minus_rated() {
        let k = ResourceKind::Storage;
        let mut p = storage_params();
        p.min_power_kw = dec!(-500);
        ok(&k, &p);
        p.min_power_kw = dec!(-500.01);
        refused(
            &k,
            &p,
            "min_power_kw",
            "min_power_kw -500.01 < -rated_power_kw -500",
        );
    }

    #[test]
    fn ramp_must_be_positive() {
        let k = ResourceKind::Pv;
        let mut p = pv_params();
        p.ramp_kw_per_s = dec!(0.001);
        ok(&k, &p);
        p.ramp_kw_per_s = dec!(0);
        refused(&k, &p, "ramp_kw_per_s", "ramp_kw_per_s 0 outside (0,");
        p.ramp_kw_per_s = dec!(-1);
        refused(&k, &p, "ramp_kw_per_s", "outside");
    }

    #[test]
    fn energy_capacity_required_for_storage_and_ev_charger_and_positive() {
        for kind in [ResourceKind::Storage, ResourceKind::EvCharger] {
            let mut p = storage_params();
            p.energy_capacity_kwh = None;
            refused(&kind, &p, "energy_capacity_kwh", "required for kind");
        }
        let mut p = storage_params();
        p.energy_capacity_kwh = Some(dec!(0.001));
        ok(&ResourceKind::Storage, &p);
        p.energy_capacity_kwh = Some(dec!(0));
        refused(
            &ResourceKind::Storage,
            &p,
            "energy_capacity_kwh",
            "outside (0,",
        );
        p.energy_capacity_kwh = Some(MAX_ENERGY_KWH + dec!(1));
        refused(
            &ResourceKind::Storage,
            &p,
            "energy_capacity_kwh",
            "outside (0,",
        );
        // PV needs none.
        ok(&ResourceKind::Pv, &pv_params());
    }

    #[test]
    fn soc_limits_inside_0_to_100_and_ordered() {
        let k = ResourceKind::Storage;
        let mut p = storage_params();
        p.soc_min_pct = Some(dec!(0));
        p.soc_max_pct = Some(dec!(100));
        ok(&k, &p);
        p.soc_min_pct = Some(dec!(-0.01));
        refused(&k, &p, "soc_min_pct", "soc_min_pct -0.01 outside 0..=100");
        p.soc_min_pct = Some(dec!(120));
        refused(&k, &p, "soc_min_pct", "soc_min_pct 120 outside 0..=100");
        p.soc_min_pct = Some(dec!(10));
        p.soc_max_pct = Some(dec!(100.01));
        refused(&k, &p, "soc_max_pct", "soc_max_pct 100.01 outside 0..=100");
        p.soc_max_pct = Some(dec!(10.01));
        ok(&k, &p);
        p.soc_max_pct = Some(dec!(10));
        refused(&k, &p, "soc_min_pct", "soc_min_pct 10 >= soc_max_pct 10");
    }

    #[test]
    fn soc_limits_required_for_storage_and_paired() {
        let mut p = storage_params();
        p.soc_min_pct = None;
        refused(&ResourceKind::Storage, &p, "soc_min_pct", "required");
        let mut p = storage_params();
        p.soc_max_pct = None;
        refused(&ResourceKind::Storage, &p, "soc_max_pct", "required");
        // EV chargers may leave both out, but not just one.
        let mut p = storage_params();
        p.soc_min_pct = None;
        p.soc_max_pct = None;
        ok(&ResourceKind::EvCharger, &p);
        p.soc_max_pct = Some(dec!(80));
        refused(&ResourceKind::EvCharger, &p, "soc_min_pct", "together");
    }

    #[test]
    fn efficiency_in_open_zero_closed_one() {
        let k = ResourceKind::Storage;
        let mut p = storage_params();
        p.round_trip_efficiency = Some(dec!(1));
        ok(&k, &p);
        p.round_trip_efficiency = Some(dec!(0.0001));
        ok(&k, &p);
        p.round_trip_efficiency = Some(dec!(1.2));
        refused(
            &k,
            &p,
            "round_trip_efficiency",
            "round_trip_efficiency 1.2 outside (0, 1]",
        );
        p.round_trip_efficiency = Some(dec!(1.0001));
        refused(&k, &p, "round_trip_efficiency", "outside (0, 1]");
        p.round_trip_efficiency = Some(dec!(0));
        refused(
            &k,
            &p,
            "round_trip_efficiency",
            "round_trip_efficiency 0 outside",
        );
    }

    #[test]
    fn response_time_and_marginal_cost_bounded() {
        let k = ResourceKind::Pv;
        let mut p = pv_params();
        p.response_time_s = dec!(0);
        ok(&k, &p);
        p.response_time_s = dec!(-0.1);
        refused(
            &k,
            &p,
            "response_time_s",
            "response_time_s -0.1 outside 0..=86400",
        );
        p.response_time_s = dec!(86400.1);
        refused(&k, &p, "response_time_s", "outside");
        let mut p = pv_params();
        p.marginal_cost_cny_per_mwh = -MAX_MARGINAL_COST_CNY_PER_MWH;
        ok(&k, &p);
        p.marginal_cost_cny_per_mwh = MAX_MARGINAL_COST_CNY_PER_MWH + dec!(0.01);
        refused(&k, &p, "marginal_cost_cny_per_mwh", "outside");
    }

    #[test]
    fn generators_never_consume_and_loads_never_export() {
        let mut p = pv_params();
        p.min_power_kw = dec!(-0.001);
        refused(&ResourceKind::Pv, &p, "min_power_kw", "only generates");
        refused(&ResourceKind::Wind, &p, "min_power_kw", "only generates");
        // A custom kind has no sign rule.
        ok(&ResourceKind::custom("heat_pump").unwrap(), &p);
        let mut p = load_params();
        p.max_power_kw = dec!(0.001);
        refused(
            &ResourceKind::FlexibleLoad,
            &p,
            "max_power_kw",
            "only consumes",
        );
    }

    #[test]
    fn kind_serialises_as_snake_case_and_custom_prefix() {
        let kinds = [
            (ResourceKind::Pv, "\"pv\""),
            (ResourceKind::Wind, "\"wind\""),
            (ResourceKind::Storage, "\"storage\""),
            (ResourceKind::FlexibleLoad, "\"flexible_load\""),
            (ResourceKind::EvCharger, "\"ev_charger\""),
            (
                ResourceKind::custom("heat_pump").unwrap(),
                "\"custom:heat_pump\"",
            ),
        ];
        for (kind, json) in kinds {
            assert_eq!(serde_json::to_string(&kind).unwrap(), json);
            assert_eq!(serde_json::from_str::<ResourceKind>(json).unwrap(), kind);
        }
        for bad in ["\"battery\"", "\"custom:\"", "\"custom:Heat\"", "\"Pv\""] {
            assert!(serde_json::from_str::<ResourceKind>(bad).is_err(), "{bad}");
        }
        let long = format!("custom:{}", "a".repeat(MAX_CUSTOM_KIND_LEN + 1));
        assert!(ResourceKind::parse(&long).is_err());
        assert!(ResourceKind::parse(&long[..long.len() - 1]).is_ok());
    }

    #[test]
    fn params_json_round_trip_and_unknown_field_refused() {
        let p = storage_params();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<TemplateParams>(&json).unwrap(), p);
        let with_typo = json.replacen("{", "{\"rated_kw\":\"1\",", 1);
        assert!(serde_json::from_str::<TemplateParams>(&with_typo).is_err());
    }

    #[test]
    fn create_and_update_append_versions_and_never_mutate_old_ones() {
        let mut reg = TemplateRegistry::new();
        let id = TemplateId(7);
        let v1 = reg
            .create(
                id,
                draft("Battery", ResourceKind::Storage, storage_params()),
                t0(),
            )
            .unwrap()
            .clone();
        assert_eq!(v1.version, 1);
        let mut p2 = storage_params();
        p2.energy_capacity_kwh = Some(dec!(2000));
        let later = t0() + chrono::Duration::hours(1);
        let v2 = reg
            .update(
                id,
                draft("Battery XL", ResourceKind::Storage, p2.clone()),
                later,
            )
            .unwrap()
            .clone();
        assert_eq!(
            (v2.version, v2.params.energy_capacity_kwh),
            (2, Some(dec!(2000)))
        );
        assert_eq!(reg.version(id, 1).unwrap(), &v1);
        assert_eq!(reg.latest(id).unwrap(), &v2);
        assert_eq!(reg.versions(id).unwrap().len(), 2);
        // An invalid update leaves every version as it was.
        let mut bad = p2;
        bad.soc_min_pct = Some(dec!(120));
        let err = reg
            .update(id, draft("Battery", ResourceKind::Storage, bad), later)
            .unwrap_err();
        assert!(matches!(err, TemplateError::Invalid(ref e) if e.field == "soc_min_pct"));
        assert_eq!(reg.versions(id).unwrap(), &[v1, v2]);
    }

    #[test]
    fn registry_errors_name_template_and_version() {
        let mut reg = TemplateRegistry::new();
        let id = TemplateId(1);
        reg.create(id, draft("PV", ResourceKind::Pv, pv_params()), t0())
            .unwrap();
        assert_eq!(
            reg.create(id, draft("PV", ResourceKind::Pv, pv_params()), t0()),
            Err(TemplateError::DuplicateTemplate(id))
        );
        assert_eq!(
            reg.update(
                TemplateId(2),
                draft("PV", ResourceKind::Pv, pv_params()),
                t0()
            ),
            Err(TemplateError::UnknownTemplate(TemplateId(2)))
        );
        for v in [0, 2] {
            assert_eq!(
                reg.version(id, v),
                Err(TemplateError::UnknownVersion {
                    template_id: id,
                    version: v,
                    latest: 1
                })
            );
        }
        let err = reg
            .update(id, draft("PV", ResourceKind::Wind, pv_params()), t0())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "template 1 is of kind pv; an update cannot change it to wind"
        );
        let err = reg
            .update(id, draft(" ", ResourceKind::Pv, pv_params()), t0())
            .unwrap_err();
        assert!(matches!(err, TemplateError::Invalid(ref e) if e.field == "name"));
        assert_eq!(reg.next_id(), TemplateId(2));
    }

    #[test]
    fn restore_round_trips_and_refuses_gaps() {
        let mut reg = TemplateRegistry::new();
        reg.create(
            TemplateId(1),
            draft("PV", ResourceKind::Pv, pv_params()),
            t0(),
        )
        .unwrap();
        reg.update(
            TemplateId(1),
            draft("PV 2", ResourceKind::Pv, pv_params()),
            t0(),
        )
        .unwrap();
        reg.create(
            TemplateId(2),
            draft("Load", ResourceKind::FlexibleLoad, load_params()),
            t0(),
        )
        .unwrap();
        let json = serde_json::to_string(&reg).unwrap();
        let back: TemplateRegistry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, reg);

        let mut versions: Vec<TemplateVersion> = reg.clone().into();
        versions.remove(0); // drop PV v1: a gap.
        assert_eq!(
            TemplateRegistry::restore(versions),
            Err(TemplateError::VersionGap {
                template_id: TemplateId(1),
                expected: 1,
                got: 2
            })
        );
    }

    #[test]
    fn usage_is_counted_per_pinned_version() {
        let mut reg = TemplateRegistry::new();
        let id = TemplateId(3);
        let v1 = reg
            .create(id, draft("PV", ResourceKind::Pv, pv_params()), t0())
            .unwrap()
            .clone();
        let v2 = reg
            .update(id, draft("PV b", ResourceKind::Pv, pv_params()), t0())
            .unwrap()
            .clone();
        let loc = GeoLocation::new(25.0, 102.7).unwrap();
        let make = |n: u64, v: &TemplateVersion| {
            Resource::new(ResourceId(n), format!("r{n}"), v, "park", loc).unwrap()
        };
        let resources = [make(1, &v1), make(2, &v1), make(3, &v2)];
        let counts = usage_counts(&resources);
        assert_eq!(counts.get(&(id, 1)), Some(&2));
        assert_eq!(counts.get(&(id, 2)), Some(&1));
        assert_eq!(counts.len(), 2);
        assert_eq!(reg.usage_count(id, &resources), 3);
        assert_eq!(reg.usage_count(TemplateId(99), &resources), 0);
    }
}
