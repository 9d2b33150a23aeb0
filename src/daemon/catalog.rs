//! Writes the configured catalog (templates, resources, aggregations) into the store at boot,
//! so the operator API and reports see the park the engine runs, and seeds the strategies.
//!
//! A stored template version is immutable: when the store already holds the same version with
//! other content (say, a version added through the API under the same number), the stored one
//! is kept, the clash is logged and counted, and boot goes on. Nothing stored is ever deleted
//! here.
//!
//! Strategies: after the first boot the store is the source of truth (definition, versions,
//! version in force, enabled and shadow flags). The file seeds and upgrades it by one rule,
//! per strategy, matched by name ([`sync_strategies`]):
//! - not in the store: stored from the file as version 1 (`from the file (new)`);
//! - the file's definition equals what the file seeded last time (`config_seeds`): the store
//!   wins, with every change made through the API (`from the store`);
//! - the file's definition changed since it last seeded it (or was never recorded): its
//!   configuration becomes a new version when it differs from the one in force, logged as a
//!   diff; its `enabled` applies only when the file changed `enabled` itself. An API change the
//!   file supersedes is named in the warning, never overwritten silently.
//!
//! Strategies created through the API (not in the file) run from the store as they are.

use crate::config::{Park, StrategySpec};
use std::collections::HashMap;
use vpp_engine::ids::StrategyId;
use vpp_engine::template::TemplateVersion;
use vpp_persistence::{Store, StoreError};
use vpp_persistence::{StrategyRecord, StrategyVersion};

/// What a catalog sync wrote and what it left alone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CatalogSync {
    pub templates_stored: usize,
    pub templates_kept: usize,
    pub resources: usize,
    pub aggregations: usize,
}

/// Same version, ignoring when it was made (the config stamps versions at load).
fn same_content(a: &TemplateVersion, b: &TemplateVersion) -> bool {
    a.template_id == b.template_id
        && a.version == b.version
        && a.name == b.name
        && a.kind == b.kind
        && a.params == b.params
}

async fn sync_template(store: &Store, v: &TemplateVersion) -> Result<bool, StoreError> {
    match store.get_template_version(v.template_id, v.version).await? {
        Some(stored) if same_content(&stored, v) => Ok(true),
        Some(_) => {
            tracing::warn!(
                template = %v.template_id, version = v.version, name = %v.name,
                "the store holds this template version with other content; kept the stored one"
            );
            Ok(false)
        }
        None => store.insert_template_version(v).await.map(|()| true),
    }
}

/// Stores the park's catalog: every template version, then resources, then aggregations
/// (members need their resources stored first).
pub async fn sync(store: &Store, park: &Park) -> Result<CatalogSync, StoreError> {
    let mut out = CatalogSync::default();
    for id in park.templates.ids() {
        let Ok(versions) = park.templates.versions(id) else {
            continue;
        };
        for v in versions {
            if sync_template(store, v).await? {
                out.templates_stored += 1;
            } else {
                out.templates_kept += 1;
            }
        }
    }
    for r in &park.resources {
        store.upsert_resource(r).await?;
        out.resources += 1;
    }
    for a in park.aggregations.aggregations() {
        store.upsert_aggregation(&a).await?;
        out.aggregations += 1;
    }
    Ok(out)
}

/// Seed scope of strategies in `config_seeds` (key: the strategy's name).
const STRATEGY_SEED: &str = "strategy";

/// The configuration a strategy version pins: what the API stores too.
pub fn version_config(spec: &StrategySpec) -> Result<serde_json::Value, SyncError> {
    Ok(serde_json::json!({
        "aggregation_id": spec.aggregation_id,
        "market_id": spec.market_id,
        "params": serde_json::to_value(&spec.params).map_err(|e| SyncError::Invalid(
            format!("strategy {}: params: {e}", spec.name)))?,
        "shadow": spec.shadow,
    }))
}

/// What the file says about a strategy, as seeded.
fn file_definition(spec: &StrategySpec) -> Result<serde_json::Value, SyncError> {
    Ok(serde_json::json!({
        "kind": spec.kind,
        "enabled": spec.enabled,
        "config": version_config(spec)?,
    }))
}

/// Why the strategies could not be seeded.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

/// The strategies the daemon runs after a sync, and where each came from.
#[derive(Debug, Default, Clone)]
pub struct StrategyBoot {
    /// Every strategy the store holds that this park can run (enabled or not), store ids.
    pub specs: Vec<StrategySpec>,
    /// The version in force per strategy.
    pub versions: HashMap<StrategyId, u32>,
    /// One line per strategy: what was taken from where (`vpp run` prints them).
    pub report: Vec<String>,
}

/// `a.b: x → y` for every leaf that differs (missing leaves show as `-`).
pub fn json_diff(before: &serde_json::Value, after: &serde_json::Value) -> Vec<String> {
    fn walk(
        path: &str,
        a: Option<&serde_json::Value>,
        b: Option<&serde_json::Value>,
        out: &mut Vec<String>,
    ) {
        match (a, b) {
            (Some(serde_json::Value::Object(x)), Some(serde_json::Value::Object(y))) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(&p, x.get(k), y.get(k), out);
                }
            }
            (a, b) if a == b => {}
            (a, b) => {
                let show = |v: Option<&serde_json::Value>| {
                    v.map_or_else(|| "-".to_owned(), ToString::to_string)
                };
                out.push(format!("{path}: {} → {}", show(a), show(b)));
            }
        }
    }
    let mut out = Vec::new();
    walk("", Some(before), Some(after), &mut out);
    out
}

fn spec_of(park: &Park, r: &StrategyRecord, v: &StrategyVersion) -> Result<StrategySpec, String> {
    #[derive(serde::Deserialize)]
    struct Cfg {
        aggregation_id: u64,
        market_id: u64,
        params: toml::Table,
        #[serde(default)]
        shadow: bool,
    }
    let c: Cfg = serde_json::from_value(v.config.clone())
        .map_err(|e| format!("version {} is unreadable: {e}", v.version))?;
    if !park.markets.iter().any(|m| m.id.0 == c.market_id) {
        return Err(format!("market {} is not in this park", c.market_id));
    }
    if park
        .aggregations
        .aggregation_state(vpp_engine::ids::AggregationId(c.aggregation_id))
        .is_none()
    {
        return Err(format!(
            "aggregation {} is not in this park",
            c.aggregation_id
        ));
    }
    Ok(StrategySpec {
        id: r.id,
        name: r.name.clone(),
        kind: r.kind.clone(),
        aggregation_id: vpp_engine::ids::AggregationId(c.aggregation_id),
        market_id: vpp_engine::ids::MarketId(c.market_id),
        enabled: r.enabled,
        shadow: c.shadow,
        params: c.params,
    })
}

/// The strategy as the store holds it now (head and version in force), as a spec the park
/// can run; `None` when it has no version yet.
pub async fn stored_spec(
    store: &Store,
    park: &Park,
    id: StrategyId,
) -> Result<Option<(StrategySpec, u32)>, SyncError> {
    let Some(r) = store.get_strategy(id).await? else {
        return Ok(None);
    };
    let Some(v) = store.get_strategy_version(id, r.latest_version).await? else {
        return Ok(None);
    };
    spec_of(park, &r, &v)
        .map(|s| Some((s, v.version)))
        .map_err(|e| SyncError::Invalid(format!("strategy {} ({}): {e}", r.name, r.id)))
}

/// Risk limits set through the API that apply over the file's `[risk]`, and report lines.
///
/// Rule: the file's `[risk]` seeds; limits set through the API are stored per scope and
/// applied at every boot while the file's `[risk]` is what it was when they were set. When the
/// file's `[risk]` changed since it last seeded, the file wins: the stored limits are dropped
/// (each named in a warning).
pub async fn sync_risk_limits(
    store: &Store,
    park: &Park,
) -> Result<
    (
        Vec<(vpp_risk::LimitScope, vpp_risk::RiskLimits)>,
        Vec<String>,
    ),
    SyncError,
> {
    let def =
        serde_json::to_value(&park.risk).map_err(|e| SyncError::Invalid(format!("risk: {e}")))?;
    let seed = store.get_config_seed("risk", "file").await?;
    let stored = store.list_risk_limits().await?;
    let mut report = Vec::new();
    if seed.as_ref() != Some(&def) {
        if seed.is_some() {
            for (scope, limits) in &stored {
                tracing::warn!(%scope, %limits, "the file's [risk] changed; it replaces these limits set through the API");
                report.push(format!("risk limits {scope}: from the file, which changed (the API's {limits} dropped)"));
            }
            store.clear_risk_limits().await?;
        }
        store.put_config_seed("risk", "file", &def).await?;
        report.push("risk limits: from the file".to_owned());
        return Ok((Vec::new(), report));
    }
    let mut out = Vec::new();
    for (key, limits) in stored {
        let parsed = serde_json::from_str::<vpp_risk::LimitScope>(&key)
            .ok()
            .zip(serde_json::from_value::<vpp_risk::RiskLimits>(limits).ok());
        match parsed {
            Some((scope, limits)) => {
                report.push(format!(
                    "risk limits {key}: from the store (set through the API)"
                ));
                out.push((scope, limits));
            }
            None => tracing::warn!(scope = %key, "stored risk limits are unreadable; skipped"),
        }
    }
    if out.is_empty() {
        report.push("risk limits: from the file".to_owned());
    }
    Ok((out, report))
}

/// Seeds and upgrades the stored strategies from the file by the module's rule; returns what
/// the daemon runs.
pub async fn sync_strategies(store: &Store, park: &Park) -> Result<StrategyBoot, SyncError> {
    let now = chrono::Utc::now();
    let mut out = StrategyBoot::default();
    let stored = store.list_strategies().await?;
    let mut next_id = stored.iter().map(|r| r.id.0).max().unwrap_or(0) + 1;
    let mut taken: std::collections::HashSet<u64> = stored.iter().map(|r| r.id.0).collect();
    for spec in &park.strategies {
        let def = file_definition(spec)?;
        let config = version_config(spec)?;
        let seed = store.get_config_seed(STRATEGY_SEED, &spec.name).await?;
        let existing = stored.iter().find(|r| r.name == spec.name);
        let Some(r) = existing else {
            // New: the file's id when free, else the next free one.
            let id = if taken.contains(&spec.id.0) {
                let id = next_id;
                next_id += 1;
                StrategyId(id)
            } else {
                spec.id
            };
            taken.insert(id.0);
            next_id = next_id.max(id.0 + 1);
            let head = StrategyRecord {
                id,
                name: spec.name.clone(),
                kind: spec.kind.clone(),
                enabled: spec.enabled,
                latest_version: 0,
                updated_at: now,
            };
            store.upsert_strategy(&head).await?;
            let version = store
                .list_strategy_versions(id)
                .await?
                .last()
                .map_or(1, |v| v.version + 1);
            store
                .insert_strategy_version(&StrategyVersion {
                    strategy_id: id,
                    version,
                    config,
                    created_at: now,
                })
                .await?;
            store
                .put_config_seed(STRATEGY_SEED, &spec.name, &def)
                .await?;
            out.report.push(format!(
                "strategy {}: from the file (new, v{version}, {})",
                spec.name,
                if spec.enabled { "enabled" } else { "disabled" }
            ));
            continue;
        };
        if seed.as_ref() == Some(&def) {
            out.report.push(format!(
                "strategy {}: from the store (v{}, {})",
                r.name,
                r.latest_version,
                if r.enabled { "enabled" } else { "disabled" }
            ));
            continue;
        }
        // The file changed (or never recorded what it seeded): it wins where it changed.
        let mut head = r.clone();
        let in_force = store
            .get_strategy_version(r.id, r.latest_version)
            .await?
            .map(|v| v.config);
        let mut changes = Vec::new();
        if in_force.as_ref() != Some(&config) {
            let diff = in_force.as_ref().map_or_else(
                || vec!["(no version in force)".to_owned()],
                |c| json_diff(c, &config),
            );
            let version = r.latest_version + 1;
            store
                .insert_strategy_version(&StrategyVersion {
                    strategy_id: r.id,
                    version,
                    config: config.clone(),
                    created_at: now,
                })
                .await?;
            tracing::warn!(strategy = %r.name, from = r.latest_version, to = version,
                diff = %diff.join("; "), "the config file changed this strategy: new version");
            changes.push(format!(
                "v{} → v{version} ({})",
                r.latest_version,
                diff.join("; ")
            ));
            head.latest_version = version;
        }
        let seeded_enabled = seed
            .as_ref()
            .and_then(|s| s.get("enabled"))
            .and_then(serde_json::Value::as_bool);
        if seeded_enabled != Some(spec.enabled) && r.enabled != spec.enabled {
            tracing::warn!(strategy = %r.name, enabled = spec.enabled,
                "the config file changed `enabled`; it overrides the stored flag");
            changes.push(format!("enabled {} → {}", r.enabled, spec.enabled));
            head.enabled = spec.enabled;
        }
        if head.kind != spec.kind {
            changes.push(format!("kind {} → {}", head.kind, spec.kind));
            head.kind = spec.kind.clone();
        }
        head.updated_at = now;
        store.upsert_strategy(&head).await?;
        store
            .put_config_seed(STRATEGY_SEED, &spec.name, &def)
            .await?;
        out.report.push(if changes.is_empty() {
            format!(
                "strategy {}: from the store (v{}, {}; the file agrees)",
                r.name,
                head.latest_version,
                if head.enabled { "enabled" } else { "disabled" }
            )
        } else {
            format!(
                "strategy {}: from the file, which changed it: {}",
                r.name,
                changes.join(", ")
            )
        });
    }
    for r in store.list_strategies().await? {
        let Some(v) = store.get_strategy_version(r.id, r.latest_version).await? else {
            continue;
        };
        match spec_of(park, &r, &v) {
            Ok(spec) => {
                if !park.strategies.iter().any(|s| s.name == r.name) {
                    out.report.push(format!(
                        "strategy {}: from the store (created through the API, v{}, {})",
                        r.name,
                        v.version,
                        if r.enabled { "enabled" } else { "disabled" }
                    ));
                }
                out.versions.insert(r.id, v.version);
                out.specs.push(spec);
            }
            Err(e) => {
                tracing::warn!(strategy = %r.name, error = %e, "stored strategy not run");
                out.report.push(format!(
                    "strategy {}: in the store but not run: {e}",
                    r.name
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("vpp.db").display());
        let store = Store::open(&url).await.expect("open store");
        store.migrate().await.expect("migrate");
        (dir, store)
    }

    #[tokio::test]
    async fn the_demo_catalog_is_stored_and_a_second_boot_changes_nothing() {
        let park = Park::demo().expect("demo park");
        let (_dir, store) = temp_store().await;
        let first = sync(&store, &park).await.expect("first sync");
        assert_eq!(first.resources, park.resources.len());
        assert_eq!(first.aggregations, park.aggregations.aggregations().count());
        assert!(first.templates_stored > 0);
        assert_eq!(first.templates_kept, 0);
        assert_eq!(
            store.list_resources().await.expect("list").len(),
            park.resources.len()
        );
        assert_eq!(
            store.list_aggregations().await.expect("list").len(),
            first.aggregations
        );

        // A reload stamps templates with a new time; that is not a new version.
        let reloaded = Park::demo().expect("demo park");
        let second = sync(&store, &reloaded).await.expect("second sync");
        assert_eq!(second, first);
    }

    #[tokio::test]
    async fn a_stored_version_with_other_content_is_kept_not_overwritten() {
        let park = Park::demo().expect("demo park");
        let (_dir, store) = temp_store().await;
        let id = park.templates.ids().next().expect("a template");
        let mut other = park.templates.latest(id).expect("latest").clone();
        other.name = format!("{} (edited elsewhere)", other.name);
        store.insert_template_version(&other).await.expect("insert");

        let out = sync(&store, &park).await.expect("sync");
        assert_eq!(out.templates_kept, 1);
        let stored = store
            .get_template_version(other.template_id, other.version)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(stored.name, other.name);
    }

    #[tokio::test]
    async fn the_file_seeds_strategies_once_and_only_its_own_changes_upgrade_them() {
        let park = Park::demo().expect("demo park");
        let (_dir, store) = temp_store().await;
        let first = sync_strategies(&store, &park).await.expect("first sync");
        assert_eq!(first.specs.len(), park.strategies.len());
        assert!(
            first
                .report
                .iter()
                .all(|l| l.contains("from the file (new")),
            "{:?}",
            first.report
        );

        // A change through the API: disabled, parameters changed (a new version in force).
        let spec = &park.strategies[0];
        let mut head = store.get_strategy(spec.id).await.unwrap().unwrap();
        head.enabled = false;
        store.upsert_strategy(&head).await.unwrap();
        let mut changed = spec.clone();
        changed
            .params
            .insert("api_marker".into(), toml::Value::Integer(7));
        store
            .insert_strategy_version(&StrategyVersion {
                strategy_id: spec.id,
                version: 2,
                config: version_config(&changed).unwrap(),
                created_at: chrono::Utc::now(),
            })
            .await
            .unwrap();

        // The same file again: the API's change stands.
        let again = sync_strategies(&store, &park).await.expect("second sync");
        let s0 = again.specs.iter().find(|s| s.id == spec.id).unwrap();
        assert!(!s0.enabled);
        assert_eq!(again.versions[&spec.id], 2);
        assert!(s0.params.contains_key("api_marker"));
        assert!(
            again.report[0].contains("from the store"),
            "{:?}",
            again.report
        );

        // The file changes the definition: a new version from the file, logged as a diff;
        // `enabled` did not change in the file, so the store's flag stands.
        let mut edited = park.clone();
        edited.strategies[0]
            .params
            .insert("file_marker".into(), toml::Value::Integer(1));
        let third = sync_strategies(&store, &edited).await.expect("third sync");
        let s0 = third.specs.iter().find(|s| s.id == spec.id).unwrap();
        assert_eq!(third.versions[&spec.id], 3);
        assert!(s0.params.contains_key("file_marker"));
        assert!(!s0.params.contains_key("api_marker"));
        assert!(!s0.enabled);
        assert!(
            third.report[0].contains("params.file_marker: - → 1"),
            "{:?}",
            third.report
        );

        // The file flips `enabled`: that applies.
        let mut enabled = edited.clone();
        enabled.strategies[0].enabled = false;
        sync_strategies(&store, &enabled)
            .await
            .expect("disable in file");
        enabled.strategies[0].enabled = true;
        let fourth = sync_strategies(&store, &enabled)
            .await
            .expect("enable in file");
        assert!(
            fourth
                .specs
                .iter()
                .find(|s| s.id == spec.id)
                .unwrap()
                .enabled
        );
        assert_eq!(fourth.versions[&spec.id], 3, "no new version for a flag");
    }
}
