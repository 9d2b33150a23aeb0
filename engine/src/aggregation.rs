//! Aggregations (VPPs): memberships of resources with a share, conflict detection across
//! aggregations, and the aggregated capacity kept up to date incrementally.
//!
//! Layers:
//! - [`Contribution`]: what one resource adds to one aggregation, from its [`ResourceFeed`]
//!   (capacity params, lifecycle state, latest telemetry) and its share.
//! - [`AggregationState`]: one aggregation's members, their last contributions and the running
//!   [`AggregatedCapacity`]. An Aggregation actor can own exactly one of these.
//! - [`AggregationBook`]: all aggregations, the resource feeds and the index
//!   resource → memberships, used for conflict detection and for routing samples.
//!
//! Invariants:
//! - A resource's shares across all aggregations sum to at most 100%; a membership that would
//!   break this is refused with [`AggregationError::OverCommitted`], naming the aggregations.
//! - Shares lie in (0, 100]: a zero share commits nothing and would let memberships grow
//!   without bound, so it is refused (remove the membership instead).
//! - `AggregationState::capacity` always equals the sum of its members' stored contributions,
//!   and those equal [`Contribution::compute`] of the current feed: a sample replaces one
//!   contribution and applies the delta, O(1) per membership, never rescanning members.
//! - Contributions are rounded to [`CONTRIBUTION_SCALE`] decimal places before being summed,
//!   and every input is bounded, so the incremental sums are exact: they equal a full
//!   recomputation bit for bit (checked by a property test).
//!
//! Definitions (power positive = generating, negative = consuming; unavailable members count 0):
//! - up flexibility = max(0, max_power_kw − power_kw) × share: how much more it can generate
//!   or how much less it can consume.
//! - down flexibility = max(0, power_kw − min_power_kw) × share.
//! - available energy = max(0, soc − soc_min)/100 × energy_capacity_kwh × share: stored energy
//!   above the SoC floor, before conversion losses. Charge headroom = max(0, soc_max − soc)/100
//!   × capacity × share. Absent SoC limits mean 0 and 100; no SoC reading or no energy
//!   capacity means 0 kWh.
//! - A member is available when its lifecycle state is `active` and its latest telemetry says
//!   `available`.

use crate::error::ValidationError;
use crate::ids::{AggregationId, ResourceId};
use crate::resource::{LifecycleState, Resource, Telemetry, TelemetryOutcome};
use crate::template::{validate_name, TemplateParams};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use thiserror::Error;

/// Decimal places every contribution is rounded to (1 mW / 1 mWh): keeps sums exact.
pub const CONTRIBUTION_SCALE: u32 = 6;
/// Most aggregations a book holds.
pub const MAX_AGGREGATIONS: usize = 10_000;
/// Most members one aggregation may have.
pub const MAX_MEMBERS_PER_AGGREGATION: usize = 100_000;
/// Most aggregations one resource may belong to.
pub const MAX_MEMBERSHIPS_PER_RESOURCE: usize = 64;
/// Most resource feeds a book holds.
pub const MAX_RESOURCES: usize = 1_000_000;

const HUNDRED: Decimal = Decimal::ONE_HUNDRED;

/// A resource's share of an aggregation, in percent of the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub resource_id: ResourceId,
    pub share_pct: Decimal,
}

/// An aggregation as data (config, store, API). Members are sorted by resource id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregation {
    pub id: AggregationId,
    pub name: String,
    pub members: Vec<Membership>,
}

impl Aggregation {
    /// Name, shares in (0, 100], no resource twice, member count bounded.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if self.members.len() > MAX_MEMBERS_PER_AGGREGATION {
            return Err(ValidationError::new(
                "members",
                format!(
                    "{} members, at most {MAX_MEMBERS_PER_AGGREGATION} allowed",
                    self.members.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.members.len());
        for m in &self.members {
            validate_share(m.share_pct)?;
            if !seen.insert(m.resource_id) {
                return Err(ValidationError::new(
                    "members",
                    format!("resource {} listed twice", m.resource_id),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a share: (0, 100] percent.
pub fn validate_share(share_pct: Decimal) -> Result<(), ValidationError> {
    if share_pct <= Decimal::ZERO || share_pct > HUNDRED {
        return Err(ValidationError::new(
            "share_pct",
            format!("share_pct {share_pct} outside (0, 100]"),
        ));
    }
    Ok(())
}

/// The template parameters capacity math needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityParams {
    pub max_power_kw: Decimal,
    pub min_power_kw: Decimal,
    pub energy_capacity_kwh: Option<Decimal>,
    pub soc_min_pct: Option<Decimal>,
    pub soc_max_pct: Option<Decimal>,
}

impl From<&TemplateParams> for CapacityParams {
    fn from(p: &TemplateParams) -> Self {
        Self {
            max_power_kw: p.max_power_kw,
            min_power_kw: p.min_power_kw,
            energy_capacity_kwh: p.energy_capacity_kwh,
            soc_min_pct: p.soc_min_pct,
            soc_max_pct: p.soc_max_pct,
        }
    }
}

/// Everything about one resource that its contributions depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceFeed {
    pub params: CapacityParams,
    pub state: LifecycleState,
    pub telemetry: Option<Telemetry>,
}

impl ResourceFeed {
    pub fn new(params: CapacityParams, state: LifecycleState) -> Self {
        Self {
            params,
            state,
            telemetry: None,
        }
    }

    /// The feed of `resource`, whose pinned template version has `params`.
    pub fn from_resource(resource: &Resource, params: &TemplateParams) -> Self {
        Self {
            params: params.into(),
            state: resource.state,
            telemetry: resource.telemetry.clone(),
        }
    }

    /// The telemetry sample if the resource counts as available.
    fn available_sample(&self) -> Option<&Telemetry> {
        match &self.telemetry {
            Some(t) if t.available && self.state == LifecycleState::Active => Some(t),
            _ => None,
        }
    }
}

/// One resource's share-weighted addition to one aggregation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    pub up_flex_kw: Decimal,
    pub down_flex_kw: Decimal,
    pub energy_kwh: Decimal,
    pub charge_headroom_kwh: Decimal,
    pub available: bool,
}

impl Contribution {
    /// Nothing: an unavailable resource or one without a feed.
    pub const NONE: Contribution = Contribution {
        up_flex_kw: Decimal::ZERO,
        down_flex_kw: Decimal::ZERO,
        energy_kwh: Decimal::ZERO,
        charge_headroom_kwh: Decimal::ZERO,
        available: false,
    };

    /// The contribution of `feed` at `share_pct` (see the module docs for the formulas).
    pub fn compute(feed: Option<&ResourceFeed>, share_pct: Decimal) -> Self {
        let Some(feed) = feed else {
            return Self::NONE;
        };
        let Some(sample) = feed.available_sample() else {
            return Self::NONE;
        };
        let p = &feed.params;
        let share = share_pct / HUNDRED;
        let (energy, headroom) = energy_terms(p, sample.soc_pct);
        Self {
            up_flex_kw: scaled((p.max_power_kw - sample.power_kw).max(Decimal::ZERO) * share),
            down_flex_kw: scaled((sample.power_kw - p.min_power_kw).max(Decimal::ZERO) * share),
            energy_kwh: scaled(energy * share),
            charge_headroom_kwh: scaled(headroom * share),
            available: true,
        }
    }
}

/// Stored energy above the floor and room below the ceiling, unweighted, in kWh.
fn energy_terms(p: &CapacityParams, soc_pct: Option<Decimal>) -> (Decimal, Decimal) {
    let (Some(capacity), Some(soc)) = (p.energy_capacity_kwh, soc_pct) else {
        return (Decimal::ZERO, Decimal::ZERO);
    };
    let floor = p.soc_min_pct.unwrap_or(Decimal::ZERO);
    let ceiling = p.soc_max_pct.unwrap_or(HUNDRED);
    let above = (soc - floor).max(Decimal::ZERO) / HUNDRED * capacity;
    let below = (ceiling - soc).max(Decimal::ZERO) / HUNDRED * capacity;
    (above, below)
}

fn scaled(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(CONTRIBUTION_SCALE, RoundingStrategy::MidpointNearestEven)
}

/// Aggregated capacity of one aggregation: sums of its members' contributions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregatedCapacity {
    pub up_flex_kw: Decimal,
    pub down_flex_kw: Decimal,
    pub energy_kwh: Decimal,
    pub charge_headroom_kwh: Decimal,
    pub available_resources: u32,
}

impl AggregatedCapacity {
    /// Replaces `old` by `new` in the sums: O(1).
    pub fn apply_delta(&mut self, old: &Contribution, new: &Contribution) {
        self.up_flex_kw += new.up_flex_kw - old.up_flex_kw;
        self.down_flex_kw += new.down_flex_kw - old.down_flex_kw;
        self.energy_kwh += new.energy_kwh - old.energy_kwh;
        self.charge_headroom_kwh += new.charge_headroom_kwh - old.charge_headroom_kwh;
        if old.available {
            self.available_resources = self.available_resources.saturating_sub(1);
        }
        if new.available {
            self.available_resources = self.available_resources.saturating_add(1);
        }
    }

    /// Sum of `contributions` from scratch.
    pub fn sum<'a>(contributions: impl IntoIterator<Item = &'a Contribution>) -> Self {
        let mut total = Self::default();
        for c in contributions {
            total.apply_delta(&Contribution::NONE, c);
        }
        total
    }
}

/// One member of an [`AggregationState`]: its share and the contribution last added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSlot {
    pub share_pct: Decimal,
    pub contribution: Contribution,
}

/// One aggregation's live capacity state; what an Aggregation actor owns.
///
/// It does not check commitments across aggregations: that is the [`AggregationBook`]'s job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregationState {
    id: AggregationId,
    name: String,
    members: HashMap<ResourceId, MemberSlot>,
    capacity: AggregatedCapacity,
}

impl AggregationState {
    pub fn new(id: AggregationId, name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        validate_name("name", &name)?;
        Ok(Self {
            id,
            name,
            members: HashMap::new(),
            capacity: AggregatedCapacity::default(),
        })
    }

    pub fn id(&self) -> AggregationId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn capacity(&self) -> &AggregatedCapacity {
        &self.capacity
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn share_of(&self, resource_id: ResourceId) -> Option<Decimal> {
        self.members.get(&resource_id).map(|m| m.share_pct)
    }

    /// The last contribution of `resource_id`, if it is a member.
    pub fn contribution_of(&self, resource_id: ResourceId) -> Option<&Contribution> {
        self.members.get(&resource_id).map(|m| &m.contribution)
    }

    /// Adds or re-shares a member; returns its previous share. `feed` is the resource's
    /// current feed (None if not known yet: it then contributes nothing until one arrives).
    pub fn set_member(
        &mut self,
        resource_id: ResourceId,
        share_pct: Decimal,
        feed: Option<&ResourceFeed>,
    ) -> Result<Option<Decimal>, AggregationError> {
        validate_share(share_pct)?;
        if !self.members.contains_key(&resource_id)
            && self.members.len() >= MAX_MEMBERS_PER_AGGREGATION
        {
            return Err(AggregationError::LimitReached {
                what: "members per aggregation",
                limit: MAX_MEMBERS_PER_AGGREGATION,
            });
        }
        let new = Contribution::compute(feed, share_pct);
        let slot = MemberSlot {
            share_pct,
            contribution: new,
        };
        let old = self.members.insert(resource_id, slot);
        let old_contribution = old.map_or(Contribution::NONE, |s| s.contribution);
        self.capacity.apply_delta(&old_contribution, &new);
        Ok(old.map(|s| s.share_pct))
    }

    /// Removes a member, taking its contribution out; returns its share.
    pub fn remove_member(&mut self, resource_id: ResourceId) -> Option<Decimal> {
        let slot = self.members.remove(&resource_id)?;
        self.capacity
            .apply_delta(&slot.contribution, &Contribution::NONE);
        Some(slot.share_pct)
    }

    /// Recomputes one member's contribution from its new feed and applies the delta: O(1).
    /// Returns false (and changes nothing) if `resource_id` is not a member.
    pub fn apply_feed(&mut self, resource_id: ResourceId, feed: &ResourceFeed) -> bool {
        let Some(slot) = self.members.get_mut(&resource_id) else {
            return false;
        };
        let new = Contribution::compute(Some(feed), slot.share_pct);
        self.capacity.apply_delta(&slot.contribution, &new);
        slot.contribution = new;
        true
    }

    /// Capacity computed from scratch from every member's current feed (tests, audits).
    pub fn recompute_full<'a>(
        &self,
        feed_of: impl Fn(ResourceId) -> Option<&'a ResourceFeed>,
    ) -> AggregatedCapacity {
        let contributions: Vec<Contribution> = self
            .members
            .iter()
            .map(|(rid, slot)| Contribution::compute(feed_of(*rid), slot.share_pct))
            .collect();
        AggregatedCapacity::sum(&contributions)
    }

    /// The aggregation as data, members sorted by resource id.
    pub fn to_aggregation(&self) -> Aggregation {
        let mut members: Vec<Membership> = self
            .members
            .iter()
            .map(|(rid, slot)| Membership {
                resource_id: *rid,
                share_pct: slot.share_pct,
            })
            .collect();
        members.sort_by_key(|m| m.resource_id);
        Aggregation {
            id: self.id,
            name: self.name.clone(),
            members,
        }
    }
}

/// One aggregation's share of a resource, named for error messages and views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    pub aggregation_id: AggregationId,
    pub aggregation_name: String,
    pub share_pct: Decimal,
}

impl fmt::Display for Commitment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "aggregation {} {:?} holds {}%",
            self.aggregation_id, self.aggregation_name, self.share_pct
        )
    }
}

fn list_commitments(commitments: &[Commitment]) -> String {
    let parts: Vec<String> = commitments.iter().map(ToString::to_string).collect();
    parts.join(", ")
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AggregationError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("aggregation {0} is unknown")]
    UnknownAggregation(AggregationId),
    #[error("aggregation {0} already exists")]
    DuplicateAggregation(AggregationId),
    #[error("resource {0} is unknown to the aggregation book")]
    UnknownResource(ResourceId),
    #[error("resource {resource_id} is not a member of aggregation {aggregation_id}")]
    NotAMember {
        aggregation_id: AggregationId,
        resource_id: ResourceId,
    },
    #[error(
        "resource {resource_id} would be committed {total_pct}% in total (limit 100%): \
         {requested_pct}% requested by aggregation {aggregation_id} {aggregation_name:?} \
         clashes with {}", list_commitments(.clashing)
    )]
    OverCommitted {
        resource_id: ResourceId,
        aggregation_id: AggregationId,
        aggregation_name: String,
        requested_pct: Decimal,
        total_pct: Decimal,
        clashing: Vec<Commitment>,
    },
    #[error("resource {resource_id} is still a member of aggregations {aggregations:?}")]
    ResourceInUse {
        resource_id: ResourceId,
        aggregations: Vec<AggregationId>,
    },
    #[error("{what} limit of {limit} reached")]
    LimitReached { what: &'static str, limit: usize },
}

/// All aggregations, the resource feeds and the index resource → memberships.
///
/// A telemetry sample costs O(memberships of that resource). Serialises as a
/// [`BookSnapshot`]; deserialising rebuilds (and re-checks) everything from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "BookSnapshot", try_from = "BookSnapshot")]
pub struct AggregationBook {
    aggregations: BTreeMap<AggregationId, AggregationState>,
    feeds: HashMap<ResourceId, ResourceFeed>,
    /// resource → (aggregation, share) for every membership, sorted by aggregation id; kept
    /// in step with the states.
    index: HashMap<ResourceId, Vec<(AggregationId, Decimal)>>,
}

/// The persisted form of an [`AggregationBook`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookSnapshot {
    pub aggregations: Vec<Aggregation>,
    pub feeds: BTreeMap<ResourceId, ResourceFeed>,
}

impl AggregationBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a book from its snapshot, re-running every check.
    pub fn restore(snapshot: BookSnapshot) -> Result<Self, AggregationError> {
        let mut book = Self::new();
        for (rid, feed) in snapshot.feeds {
            book.upsert_resource(rid, feed)?;
        }
        for aggregation in snapshot.aggregations {
            book.insert_aggregation(aggregation)?;
        }
        Ok(book)
    }

    pub fn snapshot(&self) -> BookSnapshot {
        BookSnapshot {
            aggregations: self.aggregations().collect(),
            feeds: self.feeds.iter().map(|(k, v)| (*k, v.clone())).collect(),
        }
    }

    /// Adds an empty aggregation.
    pub fn add_aggregation(
        &mut self,
        id: AggregationId,
        name: impl Into<String>,
    ) -> Result<(), AggregationError> {
        if self.aggregations.contains_key(&id) {
            return Err(AggregationError::DuplicateAggregation(id));
        }
        if self.aggregations.len() >= MAX_AGGREGATIONS {
            return Err(AggregationError::LimitReached {
                what: "aggregations",
                limit: MAX_AGGREGATIONS,
            });
        }
        self.aggregations
            .insert(id, AggregationState::new(id, name)?);
        Ok(())
    }

    /// Adds an aggregation with its members, all or nothing.
    pub fn insert_aggregation(&mut self, aggregation: Aggregation) -> Result<(), AggregationError> {
        aggregation.validate()?;
        if self.aggregations.contains_key(&aggregation.id) {
            return Err(AggregationError::DuplicateAggregation(aggregation.id));
        }
        for m in &aggregation.members {
            self.check_commitment(
                aggregation.id,
                &aggregation.name,
                m.resource_id,
                m.share_pct,
            )?;
        }
        self.add_aggregation(aggregation.id, aggregation.name)?;
        for m in aggregation.members {
            self.set_member(aggregation.id, m.resource_id, m.share_pct)?;
        }
        Ok(())
    }

    /// Removes an aggregation and its memberships; returns it as data.
    pub fn remove_aggregation(
        &mut self,
        id: AggregationId,
    ) -> Result<Aggregation, AggregationError> {
        let state = self
            .aggregations
            .remove(&id)
            .ok_or(AggregationError::UnknownAggregation(id))?;
        for rid in state.members.keys() {
            self.unindex(*rid, id);
        }
        Ok(state.to_aggregation())
    }

    /// Adds `resource_id` to `aggregation_id` at `share_pct`, or changes its share.
    /// Refused if the resource's total share across aggregations would exceed 100%.
    /// Returns the previous share in this aggregation, if any.
    pub fn set_member(
        &mut self,
        aggregation_id: AggregationId,
        resource_id: ResourceId,
        share_pct: Decimal,
    ) -> Result<Option<Decimal>, AggregationError> {
        validate_share(share_pct)?;
        let name = self.state(aggregation_id)?.name.clone();
        self.check_commitment(aggregation_id, &name, resource_id, share_pct)?;
        let feed = self.feeds.get(&resource_id);
        let state = self
            .aggregations
            .get_mut(&aggregation_id)
            .ok_or(AggregationError::UnknownAggregation(aggregation_id))?;
        let previous = state.set_member(resource_id, share_pct, feed)?;
        let entries = self.index.entry(resource_id).or_default();
        // Kept sorted by aggregation id so equal books compare equal however they were built.
        match entries.binary_search_by_key(&aggregation_id, |(a, _)| *a) {
            Ok(i) => entries[i].1 = share_pct,
            Err(i) => entries.insert(i, (aggregation_id, share_pct)),
        }
        Ok(previous)
    }

    /// Refuses a share that would over-commit the resource or give it too many memberships.
    fn check_commitment(
        &self,
        aggregation_id: AggregationId,
        aggregation_name: &str,
        resource_id: ResourceId,
        share_pct: Decimal,
    ) -> Result<(), AggregationError> {
        let others: Vec<Commitment> = self
            .commitments(resource_id)
            .into_iter()
            .filter(|c| c.aggregation_id != aggregation_id)
            .collect();
        if others.len() >= MAX_MEMBERSHIPS_PER_RESOURCE {
            return Err(AggregationError::LimitReached {
                what: "memberships per resource",
                limit: MAX_MEMBERSHIPS_PER_RESOURCE,
            });
        }
        let total_pct = others.iter().map(|c| c.share_pct).sum::<Decimal>() + share_pct;
        if total_pct > HUNDRED {
            return Err(AggregationError::OverCommitted {
                resource_id,
                aggregation_id,
                aggregation_name: aggregation_name.to_string(),
                requested_pct: share_pct,
                total_pct,
                clashing: others,
            });
        }
        Ok(())
    }

    /// Removes a membership; returns the share it had.
    pub fn remove_member(
        &mut self,
        aggregation_id: AggregationId,
        resource_id: ResourceId,
    ) -> Result<Decimal, AggregationError> {
        let state = self
            .aggregations
            .get_mut(&aggregation_id)
            .ok_or(AggregationError::UnknownAggregation(aggregation_id))?;
        let share = state
            .remove_member(resource_id)
            .ok_or(AggregationError::NotAMember {
                aggregation_id,
                resource_id,
            })?;
        self.unindex(resource_id, aggregation_id);
        Ok(share)
    }

    fn unindex(&mut self, resource_id: ResourceId, aggregation_id: AggregationId) {
        if let Some(entries) = self.index.get_mut(&resource_id) {
            entries.retain(|(a, _)| *a != aggregation_id);
            if entries.is_empty() {
                self.index.remove(&resource_id);
            }
        }
    }

    /// Registers or replaces a resource's feed (new params after a re-pin, a state change,
    /// a restored sample) and updates every aggregation it belongs to.
    pub fn upsert_resource(
        &mut self,
        resource_id: ResourceId,
        feed: ResourceFeed,
    ) -> Result<(), AggregationError> {
        if let Some(t) = &feed.telemetry {
            t.validate()?;
        }
        if !self.feeds.contains_key(&resource_id) && self.feeds.len() >= MAX_RESOURCES {
            return Err(AggregationError::LimitReached {
                what: "resources",
                limit: MAX_RESOURCES,
            });
        }
        self.feeds.insert(resource_id, feed);
        self.propagate(resource_id);
        Ok(())
    }

    /// Removes a resource's feed; refused while it is still a member somewhere.
    pub fn remove_resource(
        &mut self,
        resource_id: ResourceId,
    ) -> Result<ResourceFeed, AggregationError> {
        if let Some(entries) = self.index.get(&resource_id) {
            return Err(AggregationError::ResourceInUse {
                resource_id,
                aggregations: entries.iter().map(|(a, _)| *a).collect(),
            });
        }
        self.feeds
            .remove(&resource_id)
            .ok_or(AggregationError::UnknownResource(resource_id))
    }

    /// Mirrors a lifecycle change (the [`Resource`] enforces legality) into the capacity.
    pub fn set_state(
        &mut self,
        resource_id: ResourceId,
        state: LifecycleState,
    ) -> Result<(), AggregationError> {
        let feed = self
            .feeds
            .get_mut(&resource_id)
            .ok_or(AggregationError::UnknownResource(resource_id))?;
        feed.state = state;
        self.propagate(resource_id);
        Ok(())
    }

    /// Takes a telemetry sample: O(memberships of the resource). A sample not newer than the
    /// current one is ignored and reported as stale.
    pub fn apply_telemetry(
        &mut self,
        resource_id: ResourceId,
        sample: Telemetry,
    ) -> Result<TelemetryOutcome, AggregationError> {
        sample.validate()?;
        let feed = self
            .feeds
            .get_mut(&resource_id)
            .ok_or(AggregationError::UnknownResource(resource_id))?;
        if let Some(current) = &feed.telemetry {
            if sample.at <= current.at {
                return Ok(TelemetryOutcome::Stale {
                    current_at: current.at,
                    sample_at: sample.at,
                });
            }
        }
        feed.telemetry = Some(sample);
        self.propagate(resource_id);
        Ok(TelemetryOutcome::Applied)
    }

    /// Pushes a resource's current feed into each aggregation it belongs to.
    fn propagate(&mut self, resource_id: ResourceId) {
        let (Some(entries), Some(feed)) =
            (self.index.get(&resource_id), self.feeds.get(&resource_id))
        else {
            return;
        };
        for (aggregation_id, _) in entries {
            if let Some(state) = self.aggregations.get_mut(aggregation_id) {
                state.apply_feed(resource_id, feed);
            }
        }
    }

    fn state(&self, id: AggregationId) -> Result<&AggregationState, AggregationError> {
        self.aggregations
            .get(&id)
            .ok_or(AggregationError::UnknownAggregation(id))
    }

    /// The live capacity of one aggregation.
    pub fn capacity(&self, id: AggregationId) -> Option<&AggregatedCapacity> {
        self.aggregations.get(&id).map(AggregationState::capacity)
    }

    /// Capacity of one aggregation computed from scratch (tests, audits).
    pub fn recompute_full(&self, id: AggregationId) -> Option<AggregatedCapacity> {
        self.aggregations
            .get(&id)
            .map(|s| s.recompute_full(|rid| self.feeds.get(&rid)))
    }

    /// Every aggregation holding a share of `resource_id`, by aggregation id.
    pub fn commitments(&self, resource_id: ResourceId) -> Vec<Commitment> {
        let mut out: Vec<Commitment> = self
            .index
            .get(&resource_id)
            .into_iter()
            .flatten()
            .map(|(aggregation_id, share_pct)| Commitment {
                aggregation_id: *aggregation_id,
                aggregation_name: self
                    .aggregations
                    .get(aggregation_id)
                    .map_or_else(String::new, |s| s.name.clone()),
                share_pct: *share_pct,
            })
            .collect();
        out.sort_by_key(|c| c.aggregation_id);
        out
    }

    /// Total share of `resource_id` across all aggregations, in percent.
    pub fn committed_pct(&self, resource_id: ResourceId) -> Decimal {
        self.index
            .get(&resource_id)
            .into_iter()
            .flatten()
            .map(|(_, share)| *share)
            .sum()
    }

    /// One aggregation's live state (what its actor would own).
    pub fn aggregation_state(&self, id: AggregationId) -> Option<&AggregationState> {
        self.aggregations.get(&id)
    }

    /// One aggregation as data.
    pub fn aggregation(&self, id: AggregationId) -> Option<Aggregation> {
        self.aggregations
            .get(&id)
            .map(AggregationState::to_aggregation)
    }

    /// All aggregations as data, by id.
    pub fn aggregations(&self) -> impl Iterator<Item = Aggregation> + '_ {
        self.aggregations
            .values()
            .map(AggregationState::to_aggregation)
    }

    pub fn feed(&self, resource_id: ResourceId) -> Option<&ResourceFeed> {
        self.feeds.get(&resource_id)
    }
}

impl From<AggregationBook> for BookSnapshot {
    fn from(book: AggregationBook) -> Self {
        book.snapshot()
    }
}

impl TryFrom<BookSnapshot> for AggregationBook {
    type Error = AggregationError;
    fn try_from(snapshot: BookSnapshot) -> Result<Self, Self::Error> {
        Self::restore(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::fixtures::{load_params, pv_params, storage_params};
    use chrono::{TimeZone, Utc};
    use rust_decimal_macros::dec;

    const A1: AggregationId = AggregationId(1);
    const A2: AggregationId = AggregationId(2);
    const A3: AggregationId = AggregationId(3);
    const BESS: ResourceId = ResourceId(10);
    const PV: ResourceId = ResourceId(20);
    const LOAD: ResourceId = ResourceId(30);

    fn t(secs: i64) -> crate::Timestamp {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn sample(secs: i64, power_kw: Decimal, soc_pct: Option<Decimal>) -> Telemetry {
        Telemetry {
            power_kw,
            soc_pct,
            available: true,
            at: t(secs),
        }
    }

    fn active(params: &TemplateParams) -> ResourceFeed {
        ResourceFeed::new(params.into(), LifecycleState::Active)
    }

    /// Two aggregations, "north" and "south", and three registered active resources.
    fn book() -> AggregationBook {
        let mut b = AggregationBook::new();
        b.add_aggregation(A1, "north").unwrap();
        b.add_aggregation(A2, "south").unwrap();
        b.upsert_resource(BESS, active(&storage_params())).unwrap();
        b.upsert_resource(PV, active(&pv_params())).unwrap();
        b.upsert_resource(LOAD, active(&load_params())).unwrap();
        b
    }

    fn assert_consistent(b: &AggregationBook) {
        for a in b.aggregations() {
            assert_eq!(
                b.capacity(a.id).copied(),
                b.recompute_full(a.id),
                "aggregation {}",
                a.id
            );
        }
    }

    #[test]
    fn over_commitment_is_refused_naming_the_clashing_aggregations() {
        let mut b = book();
        b.add_aggregation(A3, "east").unwrap();
        b.set_member(A1, BESS, dec!(60)).unwrap();
        b.set_member(A2, BESS, dec!(30)).unwrap();
        let err = b.set_member(A3, BESS, dec!(10.01)).unwrap_err();
        let AggregationError::OverCommitted {
            total_pct,
            ref clashing,
            ..
        } = err
        else {
            panic!("expected OverCommitted, got {err}");
        };
        assert_eq!(total_pct, dec!(100.01));
        let names: Vec<(AggregationId, &str)> = clashing
            .iter()
            .map(|c| (c.aggregation_id, c.aggregation_name.as_str()))
            .collect();
        assert_eq!(names, [(A1, "north"), (A2, "south")]);
        let msg = err.to_string();
        for needle in [
            "resource 10 would be committed 100.01% in total",
            "aggregation 3 \"east\"",
            "aggregation 1 \"north\" holds 60%",
            "aggregation 2 \"south\" holds 30%",
        ] {
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        }
        // Nothing changed; exactly 100% is allowed.
        assert_eq!(b.aggregation_state(A3).unwrap().member_count(), 0);
        assert_eq!(b.set_member(A3, BESS, dec!(10)), Ok(None));
        assert_eq!(b.committed_pct(BESS), dec!(100));
    }

    #[test]
    fn resharing_within_an_aggregation_does_not_count_the_old_share() {
        let mut b = book();
        b.set_member(A1, PV, dec!(70)).unwrap();
        b.set_member(A2, PV, dec!(30)).unwrap();
        assert_eq!(b.set_member(A1, PV, dec!(70)), Ok(Some(dec!(70))));
        assert!(b.set_member(A1, PV, dec!(70.1)).is_err());
        assert_eq!(b.set_member(A1, PV, dec!(50)), Ok(Some(dec!(70))));
        assert_eq!(b.committed_pct(PV), dec!(80));
        assert_eq!(b.remove_member(A2, PV), Ok(dec!(30)));
        assert_eq!(b.set_member(A1, PV, dec!(100)), Ok(Some(dec!(50))));
        assert_eq!(
            b.commitments(PV),
            vec![Commitment {
                aggregation_id: A1,
                aggregation_name: "north".into(),
                share_pct: dec!(100)
            }]
        );
    }

    #[test]
    fn share_bounds() {
        let mut b = book();
        for bad in [dec!(0), dec!(-1), dec!(100.0001)] {
            let err = b.set_member(A1, PV, bad).unwrap_err();
            assert!(matches!(err, AggregationError::Invalid(ref e) if e.field == "share_pct"));
        }
        assert!(b.set_member(A1, PV, dec!(0.0001)).is_ok());
        assert!(b.set_member(A1, PV, dec!(100)).is_ok());
    }

    #[test]
    fn capacity_follows_the_documented_formulas() {
        let mut b = book();
        b.set_member(A1, BESS, dec!(50)).unwrap();
        b.set_member(A1, PV, dec!(100)).unwrap();
        b.set_member(A1, LOAD, dec!(30)).unwrap();
        // No telemetry yet: nothing available.
        assert_eq!(b.capacity(A1), Some(&AggregatedCapacity::default()));
        b.apply_telemetry(BESS, sample(1, dec!(100), Some(dec!(50))))
            .unwrap();
        b.apply_telemetry(PV, sample(1, dec!(120), None)).unwrap();
        b.apply_telemetry(LOAD, sample(1, dec!(-150), None))
            .unwrap();
        let expected = AggregatedCapacity {
            // BESS (500-100)*0.5 + PV (300-120) + load (0+150)*0.3
            up_flex_kw: dec!(200) + dec!(180) + dec!(45),
            // BESS (100+500)*0.5 + PV 120 + load (-150+200)*0.3
            down_flex_kw: dec!(300) + dec!(120) + dec!(15),
            // (50-10)% of 1000 kWh, half of it
            energy_kwh: dec!(200),
            // (90-50)% of 1000 kWh, half of it
            charge_headroom_kwh: dec!(200),
            available_resources: 3,
        };
        assert_eq!(b.capacity(A1), Some(&expected));
        assert_consistent(&b);
    }

    #[test]
    fn unavailable_or_inactive_resources_contribute_nothing() {
        let mut b = book();
        b.set_member(A1, PV, dec!(100)).unwrap();
        b.apply_telemetry(PV, sample(1, dec!(100), None)).unwrap();
        assert_eq!(b.capacity(A1).unwrap().up_flex_kw, dec!(200));
        let mut off = sample(2, dec!(100), None);
        off.available = false;
        b.apply_telemetry(PV, off).unwrap();
        assert_eq!(b.capacity(A1), Some(&AggregatedCapacity::default()));
        b.apply_telemetry(PV, sample(3, dec!(50), None)).unwrap();
        assert_eq!(b.capacity(A1).unwrap().available_resources, 1);
        b.set_state(PV, LifecycleState::Maintenance).unwrap();
        assert_eq!(b.capacity(A1), Some(&AggregatedCapacity::default()));
        b.set_state(PV, LifecycleState::Active).unwrap();
        assert_eq!(b.capacity(A1).unwrap().up_flex_kw, dec!(250));
    }

    #[test]
    fn power_outside_limits_gives_zero_not_negative_flexibility() {
        let mut b = book();
        b.set_member(A1, PV, dec!(100)).unwrap();
        b.apply_telemetry(PV, sample(1, dec!(310), None)).unwrap();
        let c = b.capacity(A1).unwrap();
        assert_eq!((c.up_flex_kw, c.down_flex_kw), (dec!(0), dec!(310)));
    }

    #[test]
    fn stale_telemetry_changes_nothing() {
        let mut b = book();
        b.set_member(A1, PV, dec!(100)).unwrap();
        b.apply_telemetry(PV, sample(10, dec!(100), None)).unwrap();
        let before = *b.capacity(A1).unwrap();
        assert_eq!(
            b.apply_telemetry(PV, sample(9, dec!(0), None)),
            Ok(TelemetryOutcome::Stale {
                current_at: t(10),
                sample_at: t(9)
            })
        );
        assert_eq!(b.capacity(A1), Some(&before));
        assert_eq!(
            b.apply_telemetry(ResourceId(99), sample(11, dec!(0), None)),
            Err(AggregationError::UnknownResource(ResourceId(99)))
        );
    }

    #[test]
    fn a_sample_updates_every_aggregation_sharing_the_resource() {
        let mut b = book();
        b.set_member(A1, BESS, dec!(25)).unwrap();
        b.set_member(A2, BESS, dec!(75)).unwrap();
        b.apply_telemetry(BESS, sample(1, dec!(0), Some(dec!(90))))
            .unwrap();
        assert_eq!(b.capacity(A1).unwrap().energy_kwh, dec!(200));
        assert_eq!(b.capacity(A2).unwrap().energy_kwh, dec!(600));
        assert_eq!(b.capacity(A2).unwrap().up_flex_kw, dec!(375));
        assert_consistent(&b);
    }

    #[test]
    fn removing_members_aggregations_and_resources() {
        let mut b = book();
        b.set_member(A1, PV, dec!(40)).unwrap();
        b.set_member(A2, PV, dec!(60)).unwrap();
        b.apply_telemetry(PV, sample(1, dec!(0), None)).unwrap();
        assert_eq!(
            b.remove_resource(PV),
            Err(AggregationError::ResourceInUse {
                resource_id: PV,
                aggregations: vec![A1, A2]
            })
        );
        assert_eq!(
            b.remove_member(A1, LOAD),
            Err(AggregationError::NotAMember {
                aggregation_id: A1,
                resource_id: LOAD
            })
        );
        let removed = b.remove_aggregation(A2).unwrap();
        assert_eq!(
            removed.members,
            vec![Membership {
                resource_id: PV,
                share_pct: dec!(60)
            }]
        );
        assert_eq!(b.committed_pct(PV), dec!(40));
        b.remove_member(A1, PV).unwrap();
        assert_eq!(b.capacity(A1), Some(&AggregatedCapacity::default()));
        assert!(b.remove_resource(PV).is_ok());
        assert_eq!(b.committed_pct(PV), dec!(0));
    }

    #[test]
    fn insert_aggregation_is_all_or_nothing() {
        let mut b = book();
        b.set_member(A1, LOAD, dec!(80)).unwrap();
        let agg = Aggregation {
            id: A3,
            name: "east".into(),
            members: vec![
                Membership {
                    resource_id: PV,
                    share_pct: dec!(100),
                },
                Membership {
                    resource_id: LOAD,
                    share_pct: dec!(30),
                },
            ],
        };
        let err = b.insert_aggregation(agg.clone()).unwrap_err();
        assert!(
            matches!(err, AggregationError::OverCommitted { total_pct, .. } if total_pct == dec!(110))
        );
        assert!(b.aggregation(A3).is_none());
        assert_eq!(b.committed_pct(PV), dec!(0));
        let mut dup = agg.clone();
        dup.members[1].resource_id = PV;
        assert_eq!(
            b.insert_aggregation(dup).unwrap_err().to_string(),
            "invalid members: resource 20 listed twice"
        );
        let mut fits = agg;
        fits.members[1].share_pct = dec!(20);
        b.insert_aggregation(fits.clone()).unwrap();
        assert_eq!(b.aggregation(A3), Some(fits));
    }

    #[test]
    fn book_json_round_trip_rebuilds_the_same_state() {
        let mut b = book();
        b.set_member(A1, BESS, dec!(33.33)).unwrap();
        b.set_member(A2, BESS, dec!(66.67)).unwrap();
        b.set_member(A2, LOAD, dec!(100)).unwrap();
        b.apply_telemetry(BESS, sample(1, dec!(-123.4), Some(dec!(47.5))))
            .unwrap();
        b.apply_telemetry(LOAD, sample(1, dec!(-80), None)).unwrap();
        let json = serde_json::to_string(&b).unwrap();
        let back: AggregationBook = serde_json::from_str(&json).unwrap();
        assert_eq!(back, b);
        assert_consistent(&back);
        // A snapshot that over-commits is refused on load.
        let mut snap = b.snapshot();
        snap.aggregations[0].members[0].share_pct = dec!(40);
        assert!(matches!(
            AggregationBook::restore(snap),
            Err(AggregationError::OverCommitted { .. })
        ));
    }

    #[test]
    fn state_alone_supports_an_actor_owning_one_aggregation() {
        let mut s = AggregationState::new(A1, "north").unwrap();
        let mut feed = active(&storage_params());
        s.set_member(BESS, dec!(50), Some(&feed)).unwrap();
        assert!(!s.apply_feed(PV, &feed));
        feed.telemetry = Some(sample(1, dec!(0), Some(dec!(10))));
        assert!(s.apply_feed(BESS, &feed));
        assert_eq!(s.capacity().up_flex_kw, dec!(250));
        assert_eq!(s.capacity().energy_kwh, dec!(0));
        assert_eq!(*s.capacity(), s.recompute_full(|_| Some(&feed)));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<AggregationState>(&json).unwrap(), s);
        assert_eq!(s.remove_member(BESS), Some(dec!(50)));
        assert_eq!(*s.capacity(), AggregatedCapacity::default());
    }

    #[test]
    fn contributions_are_rounded_so_sums_stay_exact() {
        let mut feed = active(&pv_params());
        feed.telemetry = Some(sample(1, dec!(0.0000001), None));
        let c = Contribution::compute(Some(&feed), dec!(33.333333));
        assert!(c.up_flex_kw.scale() <= CONTRIBUTION_SCALE);
        assert_eq!(c.down_flex_kw, dec!(0));
        assert_eq!(c.up_flex_kw, dec!(99.999999));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::template::fixtures::{load_params, pv_params, storage_params};
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    const AGGREGATIONS: u64 = 3;
    const RESOURCES: u64 = 6;

    #[derive(Debug, Clone)]
    enum Op {
        Sample {
            resource: u64,
            power_milli_kw: i64,
            soc_centi_pct: Option<i64>,
            available: bool,
            dt_s: i64,
        },
        SetMember {
            aggregation: u64,
            resource: u64,
            share_centi_pct: i64,
        },
        RemoveMember {
            aggregation: u64,
            resource: u64,
        },
        SetState {
            resource: u64,
            state: LifecycleState,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let state = prop::sample::select(LifecycleState::ALL.to_vec());
        prop_oneof![
            5 => (
                0..RESOURCES,
                -600_000i64..=600_000,
                prop::option::of(0i64..=10_000),
                any::<bool>(),
                -2i64..=5
            )
                .prop_map(|(resource, power_milli_kw, soc_centi_pct, available, dt_s)| {
                    Op::Sample { resource, power_milli_kw, soc_centi_pct, available, dt_s }
                }),
            2 => (0..AGGREGATIONS, 0..RESOURCES, 1i64..=10_000).prop_map(
                |(aggregation, resource, share_centi_pct)| Op::SetMember {
                    aggregation,
                    resource,
                    share_centi_pct
                }
            ),
            1 => (0..AGGREGATIONS, 0..RESOURCES)
                .prop_map(|(aggregation, resource)| Op::RemoveMember { aggregation, resource }),
            1 => (0..RESOURCES, state).prop_map(|(resource, state)| Op::SetState { resource, state }),
        ]
    }

    fn params_of(resource: u64) -> TemplateParams {
        match resource % 3 {
            0 => storage_params(),
            1 => pv_params(),
            _ => load_params(),
        }
    }

    fn new_book() -> AggregationBook {
        let mut b = AggregationBook::new();
        for a in 0..AGGREGATIONS {
            b.add_aggregation(AggregationId(a), format!("agg {a}"))
                .unwrap();
        }
        for r in 0..RESOURCES {
            let feed = ResourceFeed::new((&params_of(r)).into(), LifecycleState::Active);
            b.upsert_resource(ResourceId(r), feed).unwrap();
        }
        b
    }

    fn apply(b: &mut AggregationBook, op: Op, now_s: &mut i64) {
        match op {
            Op::Sample {
                resource,
                power_milli_kw,
                soc_centi_pct,
                available,
                dt_s,
            } => {
                *now_s += dt_s;
                let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                    + chrono::Duration::seconds(*now_s);
                let sample = Telemetry {
                    power_kw: Decimal::new(power_milli_kw, 3),
                    soc_pct: soc_centi_pct.map(|s| Decimal::new(s, 2)),
                    available,
                    at,
                };
                b.apply_telemetry(ResourceId(resource), sample).unwrap();
            }
            Op::SetMember {
                aggregation,
                resource,
                share_centi_pct,
            } => {
                // Over-commitment is refused; the book must stay consistent either way.
                let _ = b.set_member(
                    AggregationId(aggregation),
                    ResourceId(resource),
                    Decimal::new(share_centi_pct, 2),
                );
            }
            Op::RemoveMember {
                aggregation,
                resource,
            } => {
                let _ = b.remove_member(AggregationId(aggregation), ResourceId(resource));
            }
            Op::SetState { resource, state } => {
                b.set_state(ResourceId(resource), state).unwrap();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn incremental_capacity_equals_full_recomputation(
            ops in prop::collection::vec(op(), 1..120)
        ) {
            let mut b = new_book();
            let mut now_s = 0i64;
            for op in ops {
                apply(&mut b, op, &mut now_s);
                for a in 0..AGGREGATIONS {
                    let id = AggregationId(a);
                    prop_assert_eq!(b.capacity(id).copied(), b.recompute_full(id));
                }
                for r in 0..RESOURCES {
                    prop_assert!(b.committed_pct(ResourceId(r)) <= Decimal::ONE_HUNDRED);
                }
            }
            // The persisted form rebuilds to the very same book.
            let back = AggregationBook::restore(b.snapshot());
            prop_assert_eq!(back, Ok(b));
        }
    }
}
