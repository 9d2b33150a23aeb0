//! Health registry: every supervised actor reports Healthy, Degraded(reason) or
//! Halted(reason); `/health` reads [`HealthRegistry::snapshot`].
//!
//! Invariants:
//! - The overall status is `Healthy` only if every registered actor is `Healthy`; any
//!   `Degraded` or `Halted` actor makes the daemon `Degraded` (a halted strategy does not stop
//!   the daemon, but the operator must see it).
//! - `since` is the time of the last *change* of an actor's health (repeated identical reports
//!   do not reset it); time comes from the injected [`Clock`].
//! - The number of actors is bounded by [`MAX_ACTORS`]; reports for further actors are refused
//!   with a logged warning (actor names come from config, so this is a wiring error).
//! - The order journal reports as [`JOURNAL_ACTOR`]; it is a core component
//!   ([`is_core_actor`]): while it is halted the daemon is not ready (`/health` answers 503).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use vpp_engine::clock::Clock;
use vpp_engine::Timestamp;

/// Bound on the number of actors the registry tracks.
pub const MAX_ACTORS: usize = 65_536;

/// The name the order journal's writer reports its health under.
pub const JOURNAL_ACTOR: &str = "journal";

/// Core components: one of them halted makes the daemon not ready (a halted strategy does
/// not).
pub fn is_core_actor(actor: &str) -> bool {
    matches!(actor, "oms" | "risk" | JOURNAL_ACTOR)
        || actor.starts_with("dispatch/")
        || actor.starts_with("aggregation/")
}

/// Health of one actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// Working but impaired (e.g. restarting after a crash, reconnecting).
    Degraded(String),
    /// Stopped processing (e.g. past its restart limit); needs an operator.
    Halted(String),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// Overall daemon status derived from all actors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverallHealth {
    Healthy,
    Degraded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorHealth {
    pub actor: String,
    pub health: Health,
    /// When the actor entered this health.
    pub since: Timestamp,
}

/// What `/health` serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSnapshot {
    pub status: OverallHealth,
    pub at: Timestamp,
    /// Sorted by actor name.
    pub actors: Vec<ActorHealth>,
}

impl HealthSnapshot {
    pub fn actor(&self, name: &str) -> Option<&ActorHealth> {
        self.actors.iter().find(|a| a.actor == name)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    health: Health,
    since: Timestamp,
}

/// Shared registry of actor health. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct HealthRegistry {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    clock: Arc<dyn Clock>,
}

impl HealthRegistry {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            entries: Arc::new(Mutex::new(BTreeMap::new())),
            clock,
        }
    }

    /// Records `health` for `actor`.
    pub fn report(&self, actor: &str, health: Health) {
        let now = self.clock.now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get_mut(actor) {
            if entry.health != health {
                entry.health = health;
                entry.since = now;
            }
            return;
        }
        if entries.len() >= MAX_ACTORS {
            tracing::warn!(
                actor,
                max = MAX_ACTORS,
                "health registry full; report ignored"
            );
            return;
        }
        entries.insert(actor.to_owned(), Entry { health, since: now });
    }

    /// Forgets an actor (e.g. a strategy removed by the operator).
    pub fn remove(&self, actor: &str) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(actor);
    }

    pub fn get(&self, actor: &str) -> Option<Health> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(actor)
            .map(|e| e.health.clone())
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let at = self.clock.now();
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let actors: Vec<ActorHealth> = entries
            .iter()
            .map(|(name, e)| ActorHealth {
                actor: name.clone(),
                health: e.health.clone(),
                since: e.since,
            })
            .collect();
        let status = if actors.iter().all(|a| a.health.is_healthy()) {
            OverallHealth::Healthy
        } else {
            OverallHealth::Degraded
        };
        HealthSnapshot { status, at, actors }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use vpp_engine::clock::ManualClock;

    #[test]
    fn the_journal_is_a_core_component_and_strategies_are_not() {
        assert!(is_core_actor(JOURNAL_ACTOR));
        assert!(is_core_actor("oms"));
        assert!(is_core_actor("dispatch/vpp-south"));
        assert!(!is_core_actor("strategy/flow"));
    }

    #[test]
    fn overall_is_degraded_while_any_actor_is_not_healthy() {
        let start = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let registry = HealthRegistry::new(Arc::new(clock.clone()));
        registry.report("oms", Health::Healthy);
        registry.report("strategy-1", Health::Healthy);
        assert_eq!(registry.snapshot().status, OverallHealth::Healthy);

        clock.advance(chrono::Duration::seconds(5));
        registry.report("strategy-1", Health::Halted("panic: boom".into()));
        clock.advance(chrono::Duration::seconds(5));
        registry.report("strategy-1", Health::Halted("panic: boom".into()));
        let snap = registry.snapshot();
        assert_eq!(snap.status, OverallHealth::Degraded);
        let s1 = snap.actor("strategy-1").expect("registered");
        assert_eq!(s1.health, Health::Halted("panic: boom".into()));
        assert_eq!(s1.since, start + chrono::Duration::seconds(5));
        assert_eq!(snap.actors.len(), 2);

        registry.remove("strategy-1");
        assert_eq!(registry.snapshot().status, OverallHealth::Healthy);
        assert_eq!(registry.get("strategy-1"), None);
    }
}
