//! Writes the configured catalog (templates, resources, aggregations) into the store at boot,
//! so the operator API and reports see the park the engine runs.
//!
//! The config is the engine's source of truth for the run; the store is its record. A stored
//! template version is immutable: when the store already holds the same version with other
//! content (say, a version added through the API under the same number), the stored one is
//! kept, the clash is logged and counted, and boot goes on. Nothing stored is ever deleted here.

use crate::config::Park;
use vpp_engine::template::TemplateVersion;
use vpp_persistence::{Store, StoreError};

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
}
