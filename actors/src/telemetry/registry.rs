//! The resource registry: (site, resource name) ↔ [`ResourceId`], and the topic layout
//! `<root>/<site>/<resource>/{telemetry,setpoint}`.
//!
//! Invariants:
//! - At most `max_resources` entries (default [`MAX_REGISTRY_RESOURCES`]); past it, inserts are
//!   refused with [`RegistryError::Full`].
//! - Each entry has a dense slot `0..len()`, stable for the registry's life, so per-resource
//!   ingest state lives in a `Vec` indexed by slot (no hashing beyond the name lookup).
//! - Site and resource names are usable as single topic levels: non-empty, no `/`, `+`, `#`
//!   or NUL. A (site, name) pair and a resource id each appear at most once.
//! - Looking a topic up allocates nothing (nested maps keyed by `Box<str>`, borrowed `&str`).

use std::collections::HashMap;
use thiserror::Error;
use vpp_engine::ids::ResourceId;
use vpp_engine::resource::Resource;

/// Default bound on registered resources (a park of 10,000 with room to grow).
pub const MAX_REGISTRY_RESOURCES: usize = 100_000;
/// Default topic root.
pub const DEFAULT_ROOT: &str = "vpp";

/// The last topic level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Telemetry,
    Setpoint,
}

impl TopicKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Telemetry => "telemetry",
            TopicKind::Setpoint => "setpoint",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegistryError {
    #[error("{field} {value:?} cannot be an MQTT topic level: it must be non-empty and contain no '/', '+', '#' or NUL")]
    BadTopicLevel { field: &'static str, value: String },
    #[error("topic root {0:?} must be non-empty, contain no '+', '#' or NUL and not start or end with '/'")]
    BadRoot(String),
    #[error("resource {site:?}/{name:?} is registered twice")]
    DuplicateName { site: String, name: String },
    #[error("resource id {0} is registered twice")]
    DuplicateId(ResourceId),
    #[error("resource registry is full ({max} resources); raise max_resources")]
    Full { max: usize },
}

#[derive(Debug, Clone)]
struct Entry {
    id: ResourceId,
    setpoint_topic: String,
}

/// (site, name) ↔ resource id, with dense slots.
#[derive(Debug, Clone)]
pub struct ResourceRegistry {
    root: String,
    max_resources: usize,
    by_name: HashMap<Box<str>, HashMap<Box<str>, usize>>,
    by_id: HashMap<ResourceId, usize>,
    entries: Vec<Entry>,
}

fn check_level(field: &'static str, value: &str) -> Result<(), RegistryError> {
    if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
        return Err(RegistryError::BadTopicLevel {
            field,
            value: value.to_owned(),
        });
    }
    Ok(())
}

impl ResourceRegistry {
    /// An empty registry under topic root `root` (e.g. `vpp`) holding at most `max_resources`.
    pub fn new(root: &str, max_resources: usize) -> Result<Self, RegistryError> {
        let bad = root.is_empty()
            || root.starts_with('/')
            || root.ends_with('/')
            || root.contains(['+', '#', '\0']);
        if bad {
            return Err(RegistryError::BadRoot(root.to_owned()));
        }
        Ok(Self {
            root: root.to_owned(),
            max_resources,
            by_name: HashMap::new(),
            by_id: HashMap::new(),
            entries: Vec::new(),
        })
    }

    /// A registry of the config's resources (by their `site` and `name`).
    pub fn from_resources<'a>(
        root: &str,
        resources: impl IntoIterator<Item = &'a Resource>,
    ) -> Result<Self, RegistryError> {
        let mut registry = Self::new(root, MAX_REGISTRY_RESOURCES)?;
        for r in resources {
            registry.insert(&r.site, &r.name, r.id)?;
        }
        Ok(registry)
    }

    /// Registers one resource; returns its slot.
    pub fn insert(
        &mut self,
        site: &str,
        name: &str,
        id: ResourceId,
    ) -> Result<usize, RegistryError> {
        check_level("site", site)?;
        check_level("resource name", name)?;
        if self.by_id.contains_key(&id) {
            return Err(RegistryError::DuplicateId(id));
        }
        if self.slot_of(site, name).is_some() {
            return Err(RegistryError::DuplicateName {
                site: site.to_owned(),
                name: name.to_owned(),
            });
        }
        if self.entries.len() >= self.max_resources {
            return Err(RegistryError::Full {
                max: self.max_resources,
            });
        }
        let slot = self.entries.len();
        self.by_name
            .entry(site.into())
            .or_default()
            .insert(name.into(), slot);
        self.by_id.insert(id, slot);
        self.entries.push(Entry {
            id,
            setpoint_topic: self.topic(site, name, TopicKind::Setpoint),
        });
        Ok(slot)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// The topic of `kind` for one resource.
    pub fn topic(&self, site: &str, name: &str, kind: TopicKind) -> String {
        format!("{}/{site}/{name}/{}", self.root, kind.as_str())
    }

    /// The subscription filter matching every resource's telemetry.
    pub fn telemetry_filter(&self) -> String {
        format!("{}/+/+/{}", self.root, TopicKind::Telemetry.as_str())
    }

    /// Splits `topic` into (site, name, kind) if it has this registry's layout.
    pub fn parse_topic<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str, TopicKind)> {
        let rest = topic.strip_prefix(self.root.as_str())?.strip_prefix('/')?;
        let mut levels = rest.split('/');
        let (site, name, kind) = (levels.next()?, levels.next()?, levels.next()?);
        if levels.next().is_some() || site.is_empty() || name.is_empty() {
            return None;
        }
        let kind = match kind {
            "telemetry" => TopicKind::Telemetry,
            "setpoint" => TopicKind::Setpoint,
            _ => return None,
        };
        Some((site, name, kind))
    }

    /// The slot of (site, name), without allocating.
    pub fn slot_of(&self, site: &str, name: &str) -> Option<usize> {
        self.by_name.get(site)?.get(name).copied()
    }

    pub fn id_at(&self, slot: usize) -> Option<ResourceId> {
        self.entries.get(slot).map(|e| e.id)
    }

    pub fn slot_of_id(&self, id: ResourceId) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// The setpoint topic of resource `id`.
    pub fn setpoint_topic(&self, id: ResourceId) -> Option<&str> {
        let slot = self.slot_of_id(id)?;
        self.entries.get(slot).map(|e| e.setpoint_topic.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> ResourceRegistry {
        let mut r = ResourceRegistry::new("vpp", 3).unwrap();
        r.insert("park A", "BESS 1", ResourceId(10)).unwrap();
        r.insert("park A", "PV 1", ResourceId(11)).unwrap();
        r
    }

    #[test]
    fn topics_round_trip_through_the_registry() {
        let r = registry();
        let topic = r.topic("park A", "PV 1", TopicKind::Telemetry);
        assert_eq!(topic, "vpp/park A/PV 1/telemetry");
        let (site, name, kind) = r.parse_topic(&topic).unwrap();
        assert_eq!((site, name, kind), ("park A", "PV 1", TopicKind::Telemetry));
        let slot = r.slot_of(site, name).unwrap();
        assert_eq!(r.id_at(slot), Some(ResourceId(11)));
        assert_eq!(
            r.setpoint_topic(ResourceId(10)),
            Some("vpp/park A/BESS 1/setpoint")
        );
        assert_eq!(r.telemetry_filter(), "vpp/+/+/telemetry");
    }

    #[test]
    fn foreign_or_malformed_topics_do_not_parse() {
        let r = registry();
        for topic in [
            "vpp/park A/PV 1",
            "vpp/park A/PV 1/telemetry/extra",
            "vpp//PV 1/telemetry",
            "other/park A/PV 1/telemetry",
            "vppx/park A/PV 1/telemetry",
            "vpp/park A/PV 1/status",
        ] {
            assert_eq!(r.parse_topic(topic), None, "{topic}");
        }
        assert_eq!(r.slot_of("park A", "nope"), None);
        assert_eq!(r.slot_of("park B", "PV 1"), None);
    }

    #[test]
    fn registry_refuses_bad_levels_duplicates_and_overflow() {
        let mut r = registry();
        assert!(matches!(
            r.insert("park/A", "x", ResourceId(1)),
            Err(RegistryError::BadTopicLevel { field: "site", .. })
        ));
        assert!(matches!(
            r.insert("park A", "x+", ResourceId(1)),
            Err(RegistryError::BadTopicLevel {
                field: "resource name",
                ..
            })
        ));
        assert_eq!(
            r.insert("park A", "PV 1", ResourceId(1)),
            Err(RegistryError::DuplicateName {
                site: "park A".into(),
                name: "PV 1".into()
            })
        );
        assert_eq!(
            r.insert("park A", "PV 2", ResourceId(10)),
            Err(RegistryError::DuplicateId(ResourceId(10)))
        );
        assert_eq!(r.insert("park A", "PV 2", ResourceId(12)), Ok(2));
        assert_eq!(
            r.insert("park A", "PV 3", ResourceId(13)),
            Err(RegistryError::Full { max: 3 })
        );
        assert_eq!(r.len(), 3);
        assert!(ResourceRegistry::new("vpp/", 1).is_err());
        assert!(ResourceRegistry::new("a/#", 1).is_err());
        assert!(ResourceRegistry::new("test-1/vpp", 1).is_ok());
    }
}
