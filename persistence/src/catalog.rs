//! The catalog: resource templates and their immutable versions, resources, aggregations and
//! their members.
//!
//! `record_json` holds the whole engine value and is what reads return; the other columns
//! (names, kinds, pinned versions, member shares) exist for filtering, joins and foreign keys
//! and are written in the same statement or transaction, so they always agree with it.
//! A stored template version never changes: writing different content under an existing
//! (template, version) is a [`StoreError::Conflict`].

use crate::codec::{dec_to_text, from_json, i64_to_id, id_to_i64, text_to_dec, to_json, ts_to_us};
use crate::error::{QueryContext, StoreError};
use crate::store::{with_pool, Store};
use rust_decimal::Decimal;
use vpp_engine::aggregation::Aggregation;
use vpp_engine::ids::{AggregationId, ResourceId, TemplateId};
use vpp_engine::resource::Resource;
use vpp_engine::template::TemplateVersion;

const UPSERT_TEMPLATE_HEAD: &str = "INSERT INTO resource_templates \
     (id, name, kind, latest_version, updated_at_us) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (id) DO UPDATE SET name = excluded.name, kind = excluded.kind, \
     latest_version = excluded.latest_version, updated_at_us = excluded.updated_at_us \
     WHERE excluded.latest_version > resource_templates.latest_version";

const INSERT_TEMPLATE_VERSION: &str = "INSERT INTO template_versions \
     (template_id, version, record_json, created_at_us) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (template_id, version) DO NOTHING";

impl Store {
    /// Stores one template version and moves the template's head to it if it is the newest.
    /// Re-storing an identical version is a no-op; different content is a conflict.
    pub async fn insert_template_version(&self, v: &TemplateVersion) -> Result<(), StoreError> {
        let id = id_to_i64("template.id", v.template_id.0)?;
        let version = i64::from(v.version);
        let json = to_json("template version", v)?;
        let what = || format!("store template {} version {}", v.template_id, v.version);
        let inserted = with_pool!(self, write, |pool| async {
            let mut tx = pool.begin().await?;
            sqlx::query(UPSERT_TEMPLATE_HEAD)
                .bind(id)
                .bind(&v.name)
                .bind(v.kind.to_string())
                .bind(version)
                .bind(ts_to_us(v.created_at))
                .execute(&mut *tx)
                .await?;
            let done = sqlx::query(INSERT_TEMPLATE_VERSION)
                .bind(id)
                .bind(version)
                .bind(&json)
                .bind(ts_to_us(v.created_at))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(done.rows_affected() > 0)
        }
        .await)
        .ctx(what)?;
        if inserted {
            return Ok(());
        }
        match self.get_template_version(v.template_id, v.version).await? {
            Some(stored) if stored == *v => Ok(()),
            _ => Err(StoreError::Conflict(format!(
                "template {} version {} is already stored with different content; \
                 versions are immutable, store a new version instead",
                v.template_id, v.version
            ))),
        }
    }

    pub async fn get_template_version(
        &self,
        id: TemplateId,
        version: u32,
    ) -> Result<Option<TemplateVersion>, StoreError> {
        let key = id_to_i64("template.id", id.0)?;
        let json: Option<String> = with_pool!(self, read, |pool| sqlx::query_scalar(
            "SELECT record_json FROM template_versions WHERE template_id = $1 AND version = $2"
        )
        .bind(key)
        .bind(i64::from(version))
        .fetch_optional(pool)
        .await)
        .ctx(|| format!("get template {id} version {version}"))?;
        json.map(|j| from_json("template_versions.record_json", &j))
            .transpose()
    }

    /// Every version of every template (or of one), by (template, version): what
    /// `TemplateRegistry::restore` takes.
    pub async fn list_template_versions(
        &self,
        template: Option<TemplateId>,
    ) -> Result<Vec<TemplateVersion>, StoreError> {
        let rows: Vec<String> = match template {
            Some(id) => {
                let key = id_to_i64("template.id", id.0)?;
                with_pool!(self, read, |pool| sqlx::query_scalar(
                    "SELECT record_json FROM template_versions WHERE template_id = $1 \
                     ORDER BY version"
                )
                .bind(key)
                .fetch_all(pool)
                .await)
            }
            None => with_pool!(self, read, |pool| sqlx::query_scalar(
                "SELECT record_json FROM template_versions ORDER BY template_id, version"
            )
            .fetch_all(pool)
            .await),
        }
        .ctx(|| "list template versions".into())?;
        rows.iter()
            .map(|j| from_json("template_versions.record_json", j))
            .collect()
    }

    /// The newest version of each template, by template id.
    pub async fn list_latest_templates(&self) -> Result<Vec<TemplateVersion>, StoreError> {
        let rows: Vec<String> = with_pool!(self, read, |pool| sqlx::query_scalar(
            "SELECT v.record_json FROM resource_templates t JOIN template_versions v \
             ON v.template_id = t.id AND v.version = t.latest_version ORDER BY t.id"
        )
        .fetch_all(pool)
        .await)
        .ctx(|| "list latest templates".into())?;
        rows.iter()
            .map(|j| from_json("template_versions.record_json", j))
            .collect()
    }

    /// Inserts or replaces a resource. Its pinned template version must be stored.
    pub async fn upsert_resource(&self, r: &Resource) -> Result<(), StoreError> {
        let sql = "INSERT INTO resources (id, name, template_id, template_version, site, \
             lifecycle, record_json, updated_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             template_id = excluded.template_id, template_version = excluded.template_version, \
             site = excluded.site, lifecycle = excluded.lifecycle, \
             record_json = excluded.record_json, updated_at_us = excluded.updated_at_us";
        let id = id_to_i64("resource.id", r.id.0)?;
        let template = id_to_i64("resource.template_id", r.template_id.0)?;
        let json = to_json("resource", r)?;
        let now = ts_to_us(chrono::Utc::now());
        with_pool!(self, write, |pool| sqlx::query(sql)
            .bind(id)
            .bind(&r.name)
            .bind(template)
            .bind(i64::from(r.template_version))
            .bind(&r.site)
            .bind(r.state.as_str())
            .bind(&json)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ()))
        .ctx(|| format!("upsert resource {}", r.id))
    }

    pub async fn get_resource(&self, id: ResourceId) -> Result<Option<Resource>, StoreError> {
        let key = id_to_i64("resource.id", id.0)?;
        let json: Option<String> = with_pool!(self, read, |pool| sqlx::query_scalar(
            "SELECT record_json FROM resources WHERE id = $1"
        )
        .bind(key)
        .fetch_optional(pool)
        .await)
        .ctx(|| format!("get resource {id}"))?;
        json.map(|j| from_json("resources.record_json", &j))
            .transpose()
    }

    /// All resources, by id.
    pub async fn list_resources(&self) -> Result<Vec<Resource>, StoreError> {
        let rows: Vec<String> = with_pool!(self, read, |pool| sqlx::query_scalar(
            "SELECT record_json FROM resources ORDER BY id"
        )
        .fetch_all(pool)
        .await)
        .ctx(|| "list resources".into())?;
        rows.iter()
            .map(|j| from_json("resources.record_json", j))
            .collect()
    }

    /// Inserts or replaces an aggregation and its member list (members not listed are
    /// removed), in one transaction. Member resources must be stored.
    pub async fn upsert_aggregation(&self, a: &Aggregation) -> Result<(), StoreError> {
        let id = id_to_i64("aggregation.id", a.id.0)?;
        let json = to_json("aggregation", a)?;
        let members: Vec<(i64, String)> = a
            .members
            .iter()
            .map(|m| {
                Ok((
                    id_to_i64("member.resource_id", m.resource_id.0)?,
                    dec_to_text(m.share_pct),
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let now = ts_to_us(chrono::Utc::now());
        with_pool!(self, write, |pool| async {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO aggregations (id, name, record_json, updated_at_us) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
                 record_json = excluded.record_json, updated_at_us = excluded.updated_at_us",
            )
            .bind(id)
            .bind(&a.name)
            .bind(&json)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM aggregation_members WHERE aggregation_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            for (resource, share) in &members {
                sqlx::query(
                    "INSERT INTO aggregation_members (aggregation_id, resource_id, share_pct) \
                     VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind(*resource)
                .bind(share.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }
        .await)
        .ctx(|| format!("upsert aggregation {}", a.id))
    }

    pub async fn get_aggregation(
        &self,
        id: AggregationId,
    ) -> Result<Option<Aggregation>, StoreError> {
        let key = id_to_i64("aggregation.id", id.0)?;
        let json: Option<String> = with_pool!(self, read, |pool| sqlx::query_scalar(
            "SELECT record_json FROM aggregations WHERE id = $1"
        )
        .bind(key)
        .fetch_optional(pool)
        .await)
        .ctx(|| format!("get aggregation {id}"))?;
        json.map(|j| from_json("aggregations.record_json", &j))
            .transpose()
    }

    /// All aggregations, by id.
    pub async fn list_aggregations(&self) -> Result<Vec<Aggregation>, StoreError> {
        let rows: Vec<String> = with_pool!(self, read, |pool| sqlx::query_scalar(
            "SELECT record_json FROM aggregations ORDER BY id"
        )
        .fetch_all(pool)
        .await)
        .ctx(|| "list aggregations".into())?;
        rows.iter()
            .map(|j| from_json("aggregations.record_json", j))
            .collect()
    }

    /// The aggregations a resource belongs to, with its share in each (for the 100% check).
    pub async fn memberships_of(
        &self,
        resource: ResourceId,
    ) -> Result<Vec<(AggregationId, Decimal)>, StoreError> {
        let key = id_to_i64("resource.id", resource.0)?;
        let rows: Vec<(i64, String)> = with_pool!(self, read, |pool| sqlx::query_as(
            "SELECT aggregation_id, share_pct FROM aggregation_members WHERE resource_id = $1 \
             ORDER BY aggregation_id"
        )
        .bind(key)
        .fetch_all(pool)
        .await)
        .ctx(|| format!("list memberships of resource {resource}"))?;
        rows.into_iter()
            .map(|(agg, share)| {
                Ok((
                    AggregationId(i64_to_id("aggregation_members.aggregation_id", agg)?),
                    text_to_dec("aggregation_members.share_pct", &share)?,
                ))
            })
            .collect()
    }
}
