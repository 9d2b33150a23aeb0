//! The schedule of the park's resources: what each resource does with no instruction (its
//! *natural baseline*) and the one absolute setpoint each resource is given per interval when
//! several aggregations share it.
//!
//! Owns:
//! - [`NaturalBaseline`]: per resource of one aggregation, the power it would run at with no
//!   instruction, by [`Behaviour`]:
//!   - `Idle` (storage, custom kinds): 0 kW, always: a battery without an instruction rests;
//!   - `Weather` (PV, wind): the latest metered power while not curtailed by this aggregation,
//!     or while metered clearly below the curtailment cap (then the sun or wind, not the cap,
//!     limits it). Its ceiling is that natural power: PV and wind can be curtailed, never
//!     raised (0 at night);
//!   - `Profile` (flexible loads): the latest metered power while this aggregation gives it no
//!     instruction (a persistence forecast of its own consumption);
//!   - `Presence` (EV chargers): like `Profile`, and its floor is that natural power: on its
//!     own it charges the cars present, so it can be asked to charge less, never more.
//!
//!   The baseline therefore never contains a previous setpoint of the aggregation.
//! - [`SetpointBook`]: the deltas of every aggregation for every resource and interval; a
//!   resource's setpoint for an interval is `baseline + Σ deltas` of that interval (deltas of
//!   older intervals no longer count), or *released* (the resource runs on its own) when no
//!   aggregation moves it. Bounded: at most [`BOOK_INTERVALS`] intervals per resource.
//!
//! Invariants: a baseline is a function of uninstructed telemetry only; a setpoint never adds
//! deltas of two intervals; the attribution of a metered change to aggregations
//! ([`SetpointBook::attribute_kw`]) adds up to the metered change (never counted twice).

use crate::ids::{AggregationId, ResourceId};
use crate::market::DeliveryInterval;
use crate::template::ResourceKind;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Intervals a [`SetpointBook`] keeps per resource (the one in force and a few before it, for
/// metering the interval that just ended).
pub const BOOK_INTERVALS: usize = 4;
/// A curtailed generator metered this far below its cap is limited by the weather, kW floor
/// of the test (the relative part is [`WEATHER_SLACK_PCT`]).
pub const WEATHER_SLACK_KW: Decimal = Decimal::ONE;
/// Relative part of the weather test, percent of the cap.
pub const WEATHER_SLACK_PCT: Decimal = Decimal::from_parts(2, 0, 0, false, 0);

const HUNDRED: Decimal = Decimal::ONE_HUNDRED;

/// How a resource behaves without an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Rests at 0 kW (storage, custom kinds).
    Idle,
    /// Produces what the weather gives; can only be curtailed (PV, wind).
    Weather,
    /// Follows its own consumption profile (flexible loads).
    Profile,
    /// Charges the cars plugged in (EV chargers): it can charge less than it does on its own,
    /// never more (its floor is its natural power: the cars present).
    Presence,
}

impl Behaviour {
    pub fn of(kind: &ResourceKind) -> Self {
        match kind {
            ResourceKind::Storage | ResourceKind::Custom(_) => Behaviour::Idle,
            ResourceKind::Pv | ResourceKind::Wind => Behaviour::Weather,
            ResourceKind::FlexibleLoad => Behaviour::Profile,
            ResourceKind::EvCharger => Behaviour::Presence,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Natural {
    behaviour: Behaviour,
    /// Latest natural power seen, kW (None: nothing seen yet).
    natural_kw: Option<Decimal>,
}

/// The natural baseline of each member of one aggregation (module docs). Bounded by the
/// members it is built with: samples of other resources are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NaturalBaseline {
    members: BTreeMap<ResourceId, Natural>,
}

impl NaturalBaseline {
    pub fn new(members: impl IntoIterator<Item = (ResourceId, Behaviour)>) -> Self {
        Self {
            members: members
                .into_iter()
                .map(|(id, behaviour)| {
                    (
                        id,
                        Natural {
                            behaviour,
                            natural_kw: None,
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn behaviour(&self, id: ResourceId) -> Option<Behaviour> {
        self.members.get(&id).map(|n| n.behaviour)
    }

    /// Takes one metered sample; `instructed_kw` is the setpoint this aggregation holds the
    /// resource to (None: released, it runs on its own).
    pub fn observe(&mut self, id: ResourceId, metered_kw: Decimal, instructed_kw: Option<Decimal>) {
        let Some(n) = self.members.get_mut(&id) else {
            return;
        };
        let natural = match (n.behaviour, instructed_kw) {
            (Behaviour::Idle, _) => Some(Decimal::ZERO),
            (_, None) => Some(metered_kw),
            (Behaviour::Weather, Some(cap)) => {
                let slack = WEATHER_SLACK_KW.max(WEATHER_SLACK_PCT / HUNDRED * cap.abs());
                (metered_kw < cap - slack).then_some(metered_kw)
            }
            (Behaviour::Profile | Behaviour::Presence, Some(_)) => None,
        };
        if let Some(x) = natural {
            n.natural_kw = Some(x);
        }
    }

    /// The natural power of a member, kW: 0 for idle kinds, else the latest natural sample
    /// (None before any).
    pub fn natural_kw(&self, id: ResourceId) -> Option<Decimal> {
        let n = self.members.get(&id)?;
        match n.behaviour {
            Behaviour::Idle => Some(Decimal::ZERO),
            _ => n.natural_kw,
        }
    }

    /// The most the member can deliver now: its natural power for weather-driven kinds.
    pub fn ceiling_kw(&self, id: ResourceId) -> Option<Decimal> {
        let n = self.members.get(&id)?;
        match n.behaviour {
            Behaviour::Weather => Some(n.natural_kw.unwrap_or(Decimal::ZERO)),
            _ => None,
        }
    }

    /// The least the member can deliver now (most it can consume): its natural power for EV
    /// chargers (the cars present), none for the others.
    pub fn floor_kw(&self, id: ResourceId) -> Option<Decimal> {
        let n = self.members.get(&id)?;
        match n.behaviour {
            Behaviour::Presence => Some(n.natural_kw.unwrap_or(Decimal::ZERO)),
            _ => None,
        }
    }

    /// A member's dispatch state: natural baseline, ceiling and floor, with the SoC and
    /// availability of its latest telemetry. Offline until a natural value is known.
    pub fn state(
        &self,
        id: ResourceId,
        soc_pct: Option<Decimal>,
        available: bool,
    ) -> crate::dispatch::UnitState {
        match self.natural_kw(id) {
            Some(baseline_kw) if self.members.contains_key(&id) => crate::dispatch::UnitState {
                baseline_kw,
                soc_pct,
                available,
                ceiling_kw: self.ceiling_kw(id),
                floor_kw: self.floor_kw(id),
            },
            _ => crate::dispatch::UnitState::OFFLINE,
        }
    }
}

/// One resource's setpoint as the park receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CombinedSetpoint {
    pub resource_id: ResourceId,
    pub interval: DeliveryInterval,
    /// Baseline + Σ deltas of the interval, kW.
    pub setpoint_kw: Decimal,
    /// No aggregation moves the resource in this interval: it runs on its own.
    pub released: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct Slot {
    baseline_kw: Decimal,
    deltas: BTreeMap<AggregationId, Decimal>,
}

/// Every aggregation's delta per resource and interval (module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SetpointBook {
    slots: BTreeMap<ResourceId, BTreeMap<DeliveryInterval, Slot>>,
}

impl SetpointBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `aggregation`'s delta for `resource` in `interval` (replacing its earlier one)
    /// on `baseline_kw`, and returns the resource's combined setpoint for that interval.
    pub fn set(
        &mut self,
        aggregation: AggregationId,
        resource: ResourceId,
        interval: DeliveryInterval,
        baseline_kw: Decimal,
        delta_kw: Decimal,
    ) -> CombinedSetpoint {
        let by_interval = self.slots.entry(resource).or_default();
        let slot = by_interval.entry(interval).or_default();
        slot.baseline_kw = baseline_kw;
        slot.deltas.insert(aggregation, delta_kw);
        while by_interval.len() > BOOK_INTERVALS {
            by_interval.pop_first();
        }
        self.combined(resource, interval)
            .unwrap_or(CombinedSetpoint {
                resource_id: resource,
                interval,
                setpoint_kw: baseline_kw + delta_kw,
                released: delta_kw.is_zero(),
            })
    }

    /// The combined setpoint of `resource` in `interval`, if any aggregation scheduled it.
    pub fn combined(
        &self,
        resource: ResourceId,
        interval: DeliveryInterval,
    ) -> Option<CombinedSetpoint> {
        let slot = self.slots.get(&resource)?.get(&interval)?;
        let total: Decimal = slot.deltas.values().sum();
        Some(CombinedSetpoint {
            resource_id: resource,
            interval,
            setpoint_kw: slot.baseline_kw + total,
            released: slot.deltas.values().all(|d| d.is_zero()),
        })
    }

    /// Σ deltas of every aggregation for `resource` in `interval`, kW.
    pub fn total_delta_kw(&self, resource: ResourceId, interval: DeliveryInterval) -> Decimal {
        self.slots
            .get(&resource)
            .and_then(|s| s.get(&interval))
            .map_or(Decimal::ZERO, |s| s.deltas.values().sum())
    }

    /// The part of a metered change `change_kw` (metered − baseline) of `resource` in
    /// `interval` that belongs to `aggregation`, holding `share_pct` of it: its own delta plus
    /// its share of what nobody scheduled (`change − Σ deltas`). Over aggregations whose
    /// shares add up to 100 %, the parts add up to the change: nothing is counted twice.
    pub fn attribute_kw(
        &self,
        aggregation: AggregationId,
        resource: ResourceId,
        interval: DeliveryInterval,
        share_pct: Decimal,
        change_kw: Decimal,
    ) -> Decimal {
        let slot = self.slots.get(&resource).and_then(|s| s.get(&interval));
        let own = slot
            .and_then(|s| s.deltas.get(&aggregation))
            .copied()
            .unwrap_or_default();
        let total = slot.map_or(Decimal::ZERO, |s| s.deltas.values().sum());
        own + share_pct / HUNDRED * (change_kw - total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use rust_decimal_macros::dec;

    fn iv(k: i64) -> DeliveryInterval {
        let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap();
        DeliveryInterval::starting_at(t0 + chrono::Duration::minutes(15 * k)).unwrap()
    }

    #[test]
    fn the_natural_baseline_never_contains_a_setpoint() {
        let (bat, pv, load) = (ResourceId(1), ResourceId(2), ResourceId(3));
        let mut n = NaturalBaseline::new([
            (bat, Behaviour::Idle),
            (pv, Behaviour::Weather),
            (load, Behaviour::Profile),
        ]);
        // The battery follows a 500 kW setpoint: its baseline stays 0 (the ratchet of the
        // old design took 500 as the next interval's baseline).
        n.observe(bat, dec!(500), Some(dec!(500)));
        assert_eq!(n.natural_kw(bat), Some(dec!(0)));
        // PV uncurtailed: natural = metered; curtailed at the cap: the cap says nothing of
        // the sun, the last natural value stays; below the cap the sun limits it.
        n.observe(pv, dec!(200), None);
        n.observe(pv, dec!(100), Some(dec!(100)));
        assert_eq!(n.natural_kw(pv), Some(dec!(200)));
        assert_eq!(n.ceiling_kw(pv), Some(dec!(200)));
        n.observe(pv, dec!(40), Some(dec!(100)));
        assert_eq!(n.natural_kw(pv), Some(dec!(40)));
        // A load held at a setpoint tells nothing of its own consumption.
        n.observe(load, dec!(-300), None);
        n.observe(load, dec!(-100), Some(dec!(-100)));
        assert_eq!(n.natural_kw(load), Some(dec!(-300)));
        assert_eq!(n.ceiling_kw(load), None);
        // Unknown resources are ignored.
        n.observe(ResourceId(9), dec!(1), None);
        assert_eq!(n.natural_kw(ResourceId(9)), None);
    }

    #[test]
    fn a_shared_resource_gets_the_sum_of_this_intervals_deltas_and_splits_the_change() {
        let (a, b, bat) = (AggregationId(1), AggregationId(2), ResourceId(5));
        let mut book = SetpointBook::new();
        // Interval 0: A +400, B +100 on a 50/50 battery.
        book.set(a, bat, iv(0), dec!(0), dec!(400));
        let sp = book.set(b, bat, iv(0), dec!(0), dec!(100));
        assert_eq!(sp.setpoint_kw, dec!(500));
        assert!(!sp.released);
        // Interval 1: A sends nothing new yet, B 0: the old +400 does not stack or linger.
        let sp = book.set(b, bat, iv(1), dec!(0), dec!(0));
        assert_eq!((sp.setpoint_kw, sp.released), (dec!(0), true));
        let sp = book.set(a, bat, iv(1), dec!(0), dec!(250));
        assert_eq!((sp.setpoint_kw, sp.released), (dec!(250), false));
        // Interval 0 metered +470 kW: A gets 400 + 50 % × (−30), B 100 + 50 % × (−30).
        let pa = book.attribute_kw(a, bat, iv(0), dec!(50), dec!(470));
        let pb = book.attribute_kw(b, bat, iv(0), dec!(50), dec!(470));
        assert_eq!((pa, pb), (dec!(385), dec!(85)));
        assert_eq!(pa + pb, dec!(470), "counted once");
        // The book stays bounded.
        for k in 2..20 {
            book.set(a, bat, iv(k), dec!(0), dec!(1));
        }
        assert_eq!(book.slots[&bat].len(), BOOK_INTERVALS);
    }
}
