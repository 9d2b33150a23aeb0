//! `/api/v1` catalog: resource templates (CRUD, immutable versions, validate, usage),
//! resources (CRUD, lifecycle, a GeoJSON view), aggregations (CRUD, members, activate,
//! conflicts, live capacity).
//!
//! Invariants:
//! - Every write goes through the engine's own checks first (`TemplateRegistry`,
//!   `Resource::validate`, `AggregationBook::set_member`): a template version is immutable and
//!   contiguous, a resource pins the version it was made from, and no resource is ever
//!   committed above 100% across aggregations (a membership that would is refused with 409
//!   naming the clashing aggregations).
//! - Bad input answers 4xx in the one error shape, naming the field; nothing here panics.
//! - Writes need the admin role and are audited (who, what, target, outcome); reads need
//!   a viewer token.
//! - Lists are paginated (`limit` <= `page::MAX_LIMIT`) and the catalog read per request is
//!   bounded by the store's own limits (templates, resources and aggregations are bounded
//!   by the engine's `MAX_*` constants).
//! - Activation of an aggregation is kept in memory per store (the store has no column for
//!   it yet): aggregations the daemon runs from its config count as active.

use super::audit::audit_result;
use super::auth::Caller;
use super::body::Body;
use super::error::ApiError;
use super::page::{Page, PageParams, PageReq};
use super::ApiState;
use crate::token::Role;
use actix_web::{web, HttpResponse};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock, PoisonError};
use utoipa::ToSchema;
use vpp_engine::aggregation::{
    AggregatedCapacity, Aggregation, AggregationBook, AggregationError, Commitment, Membership,
    ResourceFeed,
};
use vpp_engine::ids::{AggregationId, ResourceId, TemplateId};
use vpp_engine::resource::{GeoLocation, LifecycleState, Resource};
use vpp_engine::template::{
    ResourceKind, TemplateDraft, TemplateError, TemplateParams, TemplateRegistry, TemplateVersion,
};
use vpp_persistence::Store;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/templates", web::get().to(list_templates))
        .route("/templates", web::post().to(create_template))
        .route("/templates/validate", web::post().to(validate_template))
        .route("/templates/{id}", web::get().to(get_template))
        .route("/templates/{id}", web::put().to(update_template))
        .route("/templates/{id}", web::delete().to(delete_template))
        .route(
            "/templates/{id}/versions",
            web::get().to(list_template_versions),
        )
        .route(
            "/templates/{id}/versions/{version}",
            web::get().to(get_template_version),
        )
        .route("/templates/{id}/usage", web::get().to(template_usage))
        .route("/resources", web::get().to(list_resources))
        .route("/resources", web::post().to(create_resource))
        .route("/resources/geojson", web::get().to(resources_geojson))
        .route("/resources/{id}", web::get().to(get_resource))
        .route("/resources/{id}", web::patch().to(update_resource))
        .route("/resources/{id}", web::put().to(replace_resource))
        .route("/resources/{id}", web::delete().to(retire_resource))
        .route("/aggregations", web::get().to(list_aggregations))
        .route("/aggregations", web::post().to(create_aggregation))
        .route("/aggregations/conflicts", web::get().to(all_conflicts))
        .route("/aggregations/{id}", web::get().to(get_aggregation))
        .route("/aggregations/{id}", web::put().to(update_aggregation))
        .route("/aggregations/{id}", web::delete().to(delete_aggregation))
        .route("/aggregations/{id}/members", web::get().to(list_members))
        .route("/aggregations/{id}/members", web::post().to(set_member))
        .route(
            "/aggregations/{id}/members/{resource_id}",
            web::delete().to(remove_member),
        )
        .route("/aggregations/{id}/activate", web::post().to(activate))
        .route("/aggregations/{id}/deactivate", web::post().to(deactivate))
        .route(
            "/aggregations/{id}/conflicts",
            web::get().to(aggregation_conflicts),
        )
        .route("/capacity", web::get().to(all_capacity));
}

// ------------------------------------------------------------------ helpers

/// Runs a state-changing handler body (the gate has checked the role against the matrix in
/// `roles.rs`), then writes one audit row with its outcome.
pub(crate) async fn audited<F>(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    target: &str,
    body: F,
) -> Result<HttpResponse, ApiError>
where
    F: std::future::Future<Output = Result<HttpResponse, ApiError>>,
{
    let result = body.await;
    audit_result(
        state,
        caller,
        action,
        target,
        serde_json::Value::Null,
        &result,
    )
    .await;
    result
}

/// `?limit=&offset=` checked (400 naming `limit` when out of range).
pub(crate) fn page_req(limit: Option<u32>, offset: Option<u64>) -> Result<PageReq, ApiError> {
    PageParams { limit, offset }.validate()
}

fn id_param(raw: &str, field: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|v| *v > 0 && *v <= i64::MAX as u64)
        .ok_or_else(|| ApiError::BadRequest {
            code: "bad_path",
            message: format!("{field} {raw:?} must be a positive integer"),
            field: Some(field.to_owned()),
        })
}

fn validation(e: vpp_engine::error::ValidationError) -> ApiError {
    ApiError::invalid(e.field.clone(), e.to_string())
}

fn template_error(e: TemplateError) -> ApiError {
    match e {
        TemplateError::Invalid(v) => validation(v),
        TemplateError::UnknownTemplate(id) => {
            ApiError::not_found(format!("template {id}"), Some("id"))
        }
        TemplateError::UnknownVersion { .. } => ApiError::NotFound {
            what: e.to_string(),
            field: Some("version".into()),
        },
        TemplateError::KindChanged { .. } => ApiError::invalid("kind", e.to_string()),
        TemplateError::DuplicateTemplate(_) | TemplateError::VersionGap { .. } => {
            ApiError::Conflict(e.to_string())
        }
        TemplateError::LimitReached { .. } => ApiError::Conflict(e.to_string()),
    }
}

fn aggregation_error(e: AggregationError) -> ApiError {
    match e {
        AggregationError::Invalid(v) => validation(v),
        AggregationError::UnknownAggregation(id) => {
            ApiError::not_found(format!("aggregation {id}"), Some("id"))
        }
        AggregationError::UnknownResource(id) => {
            ApiError::invalid("resource_id", format!("resource {id} does not exist"))
        }
        AggregationError::NotAMember { .. } => ApiError::NotFound {
            what: e.to_string(),
            field: Some("resource_id".into()),
        },
        other => ApiError::Conflict(other.to_string()),
    }
}

/// The template registry as stored (every version, re-validated).
async fn registry(store: &Store) -> Result<TemplateRegistry, ApiError> {
    let versions = store.list_template_versions(None).await?;
    TemplateRegistry::restore(versions).map_err(|e| {
        tracing::error!(error = %e, "stored templates do not restore");
        ApiError::Internal("stored templates are inconsistent; see the daemon log".into())
    })
}

/// An aggregation book of every stored aggregation except `skip`, fed by the stored resources
/// (so membership checks see the other aggregations' commitments).
async fn book_without(
    store: &Store,
    skip: Option<AggregationId>,
) -> Result<(AggregationBook, Vec<Aggregation>, Vec<Resource>), ApiError> {
    let registry = registry(store).await?;
    let resources = store.list_resources().await?;
    let aggregations = store.list_aggregations().await?;
    let mut book = AggregationBook::new();
    for r in &resources {
        let Ok(t) = registry.version(r.template_id, r.template_version) else {
            continue;
        };
        book.upsert_resource(r.id, ResourceFeed::from_resource(r, &t.params))
            .map_err(aggregation_error)?;
    }
    for a in aggregations.iter().filter(|a| Some(a.id) != skip) {
        // A stored over-commitment (config written by hand) must not block every write:
        // members that clash are left out of the book and reported by `conflicts`.
        if book.add_aggregation(a.id, a.name.clone()).is_err() {
            continue;
        }
        for m in &a.members {
            let _ = book.set_member(a.id, m.resource_id, m.share_pct);
        }
    }
    Ok((book, aggregations, resources))
}

/// Activation per store (see the module invariants).
fn activation() -> &'static Mutex<HashMap<(String, AggregationId), bool>> {
    static ACTIVE: OnceLock<Mutex<HashMap<(String, AggregationId), bool>>> = OnceLock::new();
    ACTIVE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn is_active(state: &ApiState, id: AggregationId) -> bool {
    let explicit = activation()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&(state.store.url().to_owned(), id))
        .copied();
    explicit.unwrap_or_else(|| runs_live(state, id))
}

/// Whether the running daemon trades this aggregation (it comes from the daemon's config).
fn runs_live(state: &ApiState, id: AggregationId) -> bool {
    state.engine.is_some() && state.park.aggregations.aggregation_state(id).is_some()
}

fn set_active(state: &ApiState, id: AggregationId, active: bool) {
    let mut map = activation().lock().unwrap_or_else(PoisonError::into_inner);
    // Bounded by the number of aggregations the engine allows.
    if map.len() < 100_000 || map.contains_key(&(state.store.url().to_owned(), id)) {
        map.insert((state.store.url().to_owned(), id), active);
    }
}

// ------------------------------------------------------------------ templates

/// A template version as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TemplateView {
    pub template_id: u64,
    pub version: u32,
    pub name: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub params: TemplateParams,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Versions the template has (the head is the newest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<u32>,
}

impl TemplateView {
    fn of(v: &TemplateVersion, versions: Option<u32>) -> Self {
        Self {
            template_id: v.template_id.0,
            version: v.version,
            name: v.name.clone(),
            kind: v.kind.to_string(),
            params: v.params.clone(),
            created_at: v.created_at,
            versions,
        }
    }
}

/// A new template or a new version of one.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateBody {
    pub name: String,
    /// `pv`, `wind`, `storage`, `flexible_load`, `ev_charger` or `custom:<name>`.
    pub kind: String,
    #[schema(value_type = Object)]
    pub params: TemplateParams,
}

impl TemplateBody {
    fn draft(self) -> Result<TemplateDraft, ApiError> {
        let kind = ResourceKind::parse(&self.kind).map_err(validation)?;
        let draft = TemplateDraft {
            name: self.name,
            kind,
            params: self.params,
        };
        draft.validate().map_err(validation)?;
        Ok(draft)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateFilter {
    limit: Option<u32>,
    offset: Option<u64>,
    kind: Option<String>,
    name: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/templates", tag = "catalog", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list_templates(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<TemplateFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let q = q.into_inner();
    let registry = registry(&state.store).await?;
    let views: Vec<TemplateView> = registry
        .ids()
        .filter_map(|id| {
            let latest = registry.latest(id).ok()?;
            let count = registry.versions(id).map(|v| v.len()).unwrap_or(0);
            Some(TemplateView::of(latest, u32::try_from(count).ok()))
        })
        .filter(|v| q.kind.as_deref().is_none_or(|k| v.kind == k))
        .filter(|v| {
            q.name
                .as_deref()
                .is_none_or(|n| v.name.to_lowercase().contains(&n.to_lowercase()))
        })
        .collect();
    Ok(HttpResponse::Ok().json(Page::from_vec(views, page_req(q.limit, q.offset)?)))
}

#[utoipa::path(post, path = "/api/v1/templates", tag = "catalog", request_body = TemplateBody, responses((status = 201, description = "created"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn create_template(
    state: web::Data<ApiState>,
    caller: Caller,
    body: Body<TemplateBody>,
) -> Result<HttpResponse, ApiError> {
    audited(&state, &caller, "template.create", "template", async {
        let draft = body.into_inner().draft()?;
        let mut registry = registry(&state.store).await?;
        let id = registry.next_id();
        let v = registry
            .create(id, draft, chrono::Utc::now())
            .map_err(template_error)?
            .clone();
        state.store.insert_template_version(&v).await?;
        Ok(HttpResponse::Created().json(TemplateView::of(&v, Some(1))))
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/templates/validate", tag = "catalog", request_body = TemplateBody, responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn validate_template(
    caller: Caller,
    body: Body<TemplateBody>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    body.into_inner().draft()?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "valid": true })))
}

#[utoipa::path(get, path = "/api/v1/templates/{id}", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn get_template(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let id = TemplateId(id_param(&path, "id")?);
    let versions = state.store.list_template_versions(Some(id)).await?;
    let latest = versions
        .last()
        .ok_or_else(|| ApiError::not_found(format!("template {id}"), Some("id")))?;
    Ok(HttpResponse::Ok().json(TemplateView::of(latest, u32::try_from(versions.len()).ok())))
}

#[utoipa::path(put, path = "/api/v1/templates/{id}", tag = "catalog", request_body = TemplateBody, params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn update_template(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body<TemplateBody>,
) -> Result<HttpResponse, ApiError> {
    let id = TemplateId(id_param(&path, "id")?);
    audited(
        &state,
        &caller,
        "template.update",
        &format!("template/{id}"),
        async {
            let draft = body.into_inner().draft()?;
            let mut registry = registry(&state.store).await?;
            let v = registry
                .update(id, draft, chrono::Utc::now())
                .map_err(template_error)?
                .clone();
            state.store.insert_template_version(&v).await?;
            Ok(HttpResponse::Ok().json(TemplateView::of(&v, Some(v.version))))
        },
    )
    .await
}

#[utoipa::path(delete, path = "/api/v1/templates/{id}", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn delete_template(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = TemplateId(id_param(&path, "id")?);
    audited(
        &state,
        &caller,
        "template.delete",
        &format!("template/{id}"),
        async {
            if state
                .store
                .list_template_versions(Some(id))
                .await?
                .is_empty()
            {
                return Err(ApiError::not_found(format!("template {id}"), Some("id")));
            }
            let users = state
                .store
                .list_resources()
                .await?
                .iter()
                .filter(|r| r.template_id == id)
                .count();
            Err(ApiError::Conflict(format!(
            "template {id} versions are immutable and kept for the {users} resource(s) pinning \
             them and for the audit trail; retire those resources and stop using the template \
             instead of deleting it"
        )))
        },
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/templates/{id}/versions", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list_template_versions(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let id = TemplateId(id_param(&path, "id")?);
    let versions = state.store.list_template_versions(Some(id)).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("template {id}"), Some("id")));
    }
    let views: Vec<TemplateView> = versions.iter().map(|v| TemplateView::of(v, None)).collect();
    Ok(HttpResponse::Ok().json(Page::from_vec(views, q.into_inner().validate()?)))
}

#[utoipa::path(get, path = "/api/v1/templates/{id}/versions/{version}", tag = "catalog", params(("id" = String, Path), ("version" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn get_template_version(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let id = TemplateId(id_param(&path.0, "id")?);
    let version = u32::try_from(id_param(&path.1, "version")?)
        .map_err(|_| ApiError::bad_request("bad_path", "version is too large"))?;
    let v = state
        .store
        .get_template_version(id, version)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            what: format!("template {id} version {version}"),
            field: Some("version".into()),
        })?;
    Ok(HttpResponse::Ok().json(TemplateView::of(&v, None)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateUsage {
    pub template_id: u64,
    /// Resources pinning each version (versions nobody uses show 0).
    pub by_version: BTreeMap<u32, usize>,
    pub total: usize,
    pub resource_ids: Vec<u64>,
}

#[utoipa::path(get, path = "/api/v1/templates/{id}/usage", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn template_usage(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let id = TemplateId(id_param(&path, "id")?);
    let versions = state.store.list_template_versions(Some(id)).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("template {id}"), Some("id")));
    }
    let resources = state.store.list_resources().await?;
    let counts = vpp_engine::template::usage_counts(resources.iter());
    let by_version: BTreeMap<u32, usize> = versions
        .iter()
        .map(|v| {
            (
                v.version,
                counts.get(&(id, v.version)).copied().unwrap_or(0),
            )
        })
        .collect();
    let resource_ids: Vec<u64> = resources
        .iter()
        .filter(|r| r.template_id == id)
        .map(|r| r.id.0)
        .collect();
    Ok(HttpResponse::Ok().json(TemplateUsage {
        template_id: id.0,
        total: resource_ids.len(),
        by_version,
        resource_ids,
    }))
}

// ------------------------------------------------------------------ resources

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewResource {
    pub name: String,
    pub template_id: u64,
    /// Defaults to the template's newest version.
    pub template_version: Option<u32>,
    pub site: String,
    #[schema(value_type = Object)]
    pub location: GeoLocation,
    /// Defaults to `commissioning`.
    pub state: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcePatch {
    pub name: Option<String>,
    pub site: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub location: Option<GeoLocation>,
    /// A lifecycle move: commissioning -> active <-> maintenance, any -> retired.
    pub state: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceFilter {
    limit: Option<u32>,
    offset: Option<u64>,
    site: Option<String>,
    state: Option<String>,
    template_id: Option<u64>,
    aggregation_id: Option<u64>,
}

impl ResourceFilter {
    async fn apply(&self, store: &Store) -> Result<Vec<Resource>, ApiError> {
        let state = self
            .state
            .as_deref()
            .map(LifecycleState::parse)
            .transpose()
            .map_err(|e| ApiError::BadRequest {
                code: "bad_query",
                message: e.to_string(),
                field: Some("state".into()),
            })?;
        let members: Option<BTreeSet<ResourceId>> = match self.aggregation_id {
            Some(a) => {
                let agg = store
                    .get_aggregation(AggregationId(a))
                    .await?
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "aggregation_id",
                            format!("aggregation {a} does not exist"),
                        )
                    })?;
                Some(agg.members.iter().map(|m| m.resource_id).collect())
            }
            None => None,
        };
        Ok(store
            .list_resources()
            .await?
            .into_iter()
            .filter(|r| self.site.as_deref().is_none_or(|s| r.site == s))
            .filter(|r| state.is_none_or(|s| r.state == s))
            .filter(|r| self.template_id.is_none_or(|t| r.template_id.0 == t))
            .filter(|r| members.as_ref().is_none_or(|m| m.contains(&r.id)))
            .collect())
    }
}

#[utoipa::path(get, path = "/api/v1/resources", tag = "catalog", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list_resources(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<ResourceFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let resources = q.apply(&state.store).await?;
    Ok(HttpResponse::Ok().json(Page::from_vec(resources, page_req(q.limit, q.offset)?)))
}

/// The resources as a GeoJSON FeatureCollection (RFC 7946: coordinates are [lon, lat]).
pub fn geojson(resources: &[Resource]) -> serde_json::Value {
    let features: Vec<serde_json::Value> = resources
        .iter()
        .map(|r| {
            serde_json::json!({
                "type": "Feature",
                "id": r.id.0,
                "geometry": {
                    "type": "Point",
                    "coordinates": [r.location.lon, r.location.lat],
                },
                "properties": {
                    "name": r.name,
                    "site": r.site,
                    "state": r.state.as_str(),
                    "template_id": r.template_id.0,
                    "template_version": r.template_version,
                    "power_kw": r.telemetry.as_ref().map(|t| t.power_kw),
                    "available": r.telemetry.as_ref().map(|t| t.available),
                },
            })
        })
        .collect();
    serde_json::json!({ "type": "FeatureCollection", "features": features })
}

#[utoipa::path(get, path = "/api/v1/resources/geojson", tag = "catalog", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn resources_geojson(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<ResourceFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let resources = q.apply(&state.store).await?;
    let page = Page::from_vec(resources, page_req(q.limit, q.offset)?);
    Ok(HttpResponse::Ok()
        .content_type("application/geo+json")
        .json(geojson(&page.items)))
}

#[utoipa::path(post, path = "/api/v1/resources", tag = "catalog", request_body = NewResource, responses((status = 201, description = "created"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn create_resource(
    state: web::Data<ApiState>,
    caller: Caller,
    body: Body<NewResource>,
) -> Result<HttpResponse, ApiError> {
    audited(&state, &caller, "resource.create", "resource", async {
        let b = body.into_inner();
        let template_id = TemplateId(b.template_id);
        let versions = state
            .store
            .list_template_versions(Some(template_id))
            .await?;
        let version = match b.template_version {
            Some(v) => versions.iter().find(|t| t.version == v).ok_or_else(|| {
                ApiError::invalid(
                    "template_version",
                    format!(
                        "template {template_id} has no version {v} (it has 1..={})",
                        versions.len()
                    ),
                )
            })?,
            None => versions.last().ok_or_else(|| {
                ApiError::invalid(
                    "template_id",
                    format!("template {template_id} does not exist"),
                )
            })?,
        };
        let next = state
            .store
            .list_resources()
            .await?
            .iter()
            .map(|r| r.id.0)
            .max()
            .unwrap_or(0)
            + 1;
        let mut r = Resource::new(ResourceId(next), b.name, version, b.site, b.location)
            .map_err(validation)?;
        if let Some(s) = b.state.as_deref() {
            let to = LifecycleState::parse(s).map_err(validation)?;
            if to != r.state {
                r.transition(to)
                    .map_err(|e| ApiError::invalid("state", e.to_string()))?;
            }
        }
        state.store.upsert_resource(&r).await?;
        Ok(HttpResponse::Created().json(r))
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/resources/{id}", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn get_resource(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let id = ResourceId(id_param(&path, "id")?);
    let r = state
        .store
        .get_resource(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("resource {id}"), Some("id")))?;
    let memberships = state.store.memberships_of(id).await?;
    let mut v = serde_json::to_value(&r).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["memberships"] = serde_json::json!(memberships
        .iter()
        .map(|(a, s)| serde_json::json!({ "aggregation_id": a.0, "share_pct": s }))
        .collect::<Vec<_>>());
    Ok(HttpResponse::Ok().json(v))
}

#[utoipa::path(patch, path = "/api/v1/resources/{id}", tag = "catalog", request_body = ResourcePatch, params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn update_resource(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body<ResourcePatch>,
) -> Result<HttpResponse, ApiError> {
    let id = ResourceId(id_param(&path, "id")?);
    audited(
        &state,
        &caller,
        "resource.update",
        &format!("resource/{id}"),
        async {
            let p = body.into_inner();
            let mut r = state
                .store
                .get_resource(id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("resource {id}"), Some("id")))?;
            if let Some(n) = p.name {
                r.name = n;
            }
            if let Some(s) = p.site {
                r.site = s;
            }
            if let Some(l) = p.location {
                r.location = l;
            }
            if let Some(s) = p.state.as_deref() {
                let to = LifecycleState::parse(s).map_err(validation)?;
                if to != r.state {
                    if to == LifecycleState::Retired {
                        refuse_retire_member(&state.store, id).await?;
                    }
                    r.transition(to)
                        .map_err(|e| ApiError::invalid("state", e.to_string()))?;
                }
            }
            r.validate().map_err(validation)?;
            state.store.upsert_resource(&r).await?;
            Ok(HttpResponse::Ok().json(r))
        },
    )
    .await
}

/// `PUT` takes the same body as `PATCH`: fields left out keep their value.
#[utoipa::path(put, path = "/api/v1/resources/{id}", tag = "catalog", request_body = ResourcePatch, params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn replace_resource(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body<ResourcePatch>,
) -> Result<HttpResponse, ApiError> {
    update_resource(state, caller, path, body).await
}

async fn refuse_retire_member(store: &Store, id: ResourceId) -> Result<(), ApiError> {
    let memberships = store.memberships_of(id).await?;
    if memberships.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = memberships.iter().map(|(a, _)| a.to_string()).collect();
    Err(ApiError::Conflict(format!(
        "resource {id} is still a member of aggregation(s) {}; remove it from them first",
        list.join(", ")
    )))
}

/// Resources are never deleted (telemetry, dispatch and settlement refer to them): DELETE
/// retires one, which is final.
#[utoipa::path(delete, path = "/api/v1/resources/{id}", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn retire_resource(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ResourceId(id_param(&path, "id")?);
    audited(
        &state,
        &caller,
        "resource.retire",
        &format!("resource/{id}"),
        async {
            let mut r = state
                .store
                .get_resource(id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("resource {id}"), Some("id")))?;
            refuse_retire_member(&state.store, id).await?;
            if r.state != LifecycleState::Retired {
                r.transition(LifecycleState::Retired)
                    .map_err(|e| ApiError::Conflict(e.to_string()))?;
                state.store.upsert_resource(&r).await?;
            }
            Ok(HttpResponse::Ok().json(r))
        },
    )
    .await
}

// ------------------------------------------------------------------ aggregations

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AggregationView {
    pub id: u64,
    pub name: String,
    #[schema(value_type = Vec<Object>)]
    pub members: Vec<Membership>,
    pub active: bool,
    /// Sum of the member shares' rated power is not shown: capacity is live, see /capacity.
    pub member_count: usize,
}

fn view(state: &ApiState, a: &Aggregation) -> AggregationView {
    AggregationView {
        id: a.id.0,
        name: a.name.clone(),
        members: a.members.clone(),
        active: is_active(state, a.id),
        member_count: a.members.len(),
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregationBody {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub members: Vec<Membership>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    pub resource_id: u64,
    /// (0, 100].
    #[schema(value_type = String)]
    pub share_pct: Decimal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationFilter {
    limit: Option<u32>,
    offset: Option<u64>,
    active: Option<bool>,
    name: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/aggregations", tag = "catalog", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list_aggregations(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<AggregationFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let views: Vec<AggregationView> = state
        .store
        .list_aggregations()
        .await?
        .iter()
        .map(|a| view(&state, a))
        .filter(|v| q.active.is_none_or(|a| v.active == a))
        .filter(|v| {
            q.name
                .as_deref()
                .is_none_or(|n| v.name.to_lowercase().contains(&n.to_lowercase()))
        })
        .collect();
    Ok(HttpResponse::Ok().json(Page::from_vec(views, page_req(q.limit, q.offset)?)))
}

/// Checks `a` against every other stored aggregation and stores it.
async fn store_checked(state: &ApiState, mut a: Aggregation) -> Result<Aggregation, ApiError> {
    a.members.sort_by_key(|m| m.resource_id);
    a.validate().map_err(validation)?;
    let (mut book, _, resources) = book_without(&state.store, Some(a.id)).await?;
    let known: BTreeSet<ResourceId> = resources.iter().map(|r| r.id).collect();
    for m in &a.members {
        if !known.contains(&m.resource_id) {
            return Err(ApiError::invalid(
                "members",
                format!("resource {} does not exist", m.resource_id),
            ));
        }
    }
    book.insert_aggregation(a.clone())
        .map_err(aggregation_error)?;
    state.store.upsert_aggregation(&a).await?;
    Ok(a)
}

#[utoipa::path(post, path = "/api/v1/aggregations", tag = "catalog", request_body = AggregationBody, responses((status = 201, description = "created"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn create_aggregation(
    state: web::Data<ApiState>,
    caller: Caller,
    body: Body<AggregationBody>,
) -> Result<HttpResponse, ApiError> {
    audited(
        &state,
        &caller,
        "aggregation.create",
        "aggregation",
        async {
            let b = body.into_inner();
            let next = state
                .store
                .list_aggregations()
                .await?
                .iter()
                .map(|a| a.id.0)
                .max()
                .unwrap_or(0)
                + 1;
            let a = store_checked(
                &state,
                Aggregation {
                    id: AggregationId(next),
                    name: b.name,
                    members: b.members,
                },
            )
            .await?;
            set_active(&state, a.id, false);
            Ok(HttpResponse::Created().json(view(&state, &a)))
        },
    )
    .await
}

async fn load_aggregation(store: &Store, raw: &str) -> Result<Aggregation, ApiError> {
    let id = AggregationId(id_param(raw, "id")?);
    store
        .get_aggregation(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("aggregation {id}"), Some("id")))
}

#[utoipa::path(get, path = "/api/v1/aggregations/{id}", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn get_aggregation(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let a = load_aggregation(&state.store, &path).await?;
    Ok(HttpResponse::Ok().json(view(&state, &a)))
}

#[utoipa::path(put, path = "/api/v1/aggregations/{id}", tag = "catalog", request_body = AggregationBody, params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn update_aggregation(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body<AggregationBody>,
) -> Result<HttpResponse, ApiError> {
    let target = format!("aggregation/{}", path.as_str());
    audited(&state, &caller, "aggregation.update", &target, async {
        let old = load_aggregation(&state.store, &path).await?;
        let b = body.into_inner();
        let a = store_checked(
            &state,
            Aggregation {
                id: old.id,
                name: b.name,
                members: b.members,
            },
        )
        .await?;
        Ok(HttpResponse::Ok().json(view(&state, &a)))
    })
    .await
}

/// The store keeps aggregations (settlement and positions refer to them): DELETE releases
/// every membership and deactivates it.
#[utoipa::path(delete, path = "/api/v1/aggregations/{id}", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn delete_aggregation(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let target = format!("aggregation/{}", path.as_str());
    audited(&state, &caller, "aggregation.delete", &target, async {
        let mut a = load_aggregation(&state.store, &path).await?;
        if runs_live(&state, a.id) {
            return Err(ApiError::Conflict(format!(
                "aggregation {} is running in the engine; stop the engine or remove it from the \
                 config first",
                a.id
            )));
        }
        a.members.clear();
        state.store.upsert_aggregation(&a).await?;
        set_active(&state, a.id, false);
        Ok(HttpResponse::Ok().json(view(&state, &a)))
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/aggregations/{id}/members", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list_members(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let a = load_aggregation(&state.store, &path).await?;
    let resources: HashMap<ResourceId, Resource> = state
        .store
        .list_resources()
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let members: Vec<serde_json::Value> = a
        .members
        .iter()
        .map(|m| {
            let r = resources.get(&m.resource_id);
            serde_json::json!({
                "resource_id": m.resource_id.0,
                "share_pct": m.share_pct,
                "name": r.map(|r| r.name.clone()),
                "site": r.map(|r| r.site.clone()),
                "state": r.map(|r| r.state.as_str()),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "aggregation_id": a.id.0, "items": members })))
}

#[utoipa::path(post, path = "/api/v1/aggregations/{id}/members", tag = "catalog", request_body = MemberBody, params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn set_member(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body<MemberBody>,
) -> Result<HttpResponse, ApiError> {
    let target = format!("aggregation/{}", path.as_str());
    audited(&state, &caller, "aggregation.member.set", &target, async {
        let mut a = load_aggregation(&state.store, &path).await?;
        let b = body.into_inner();
        let rid = ResourceId(b.resource_id);
        match a.members.iter_mut().find(|m| m.resource_id == rid) {
            Some(m) => m.share_pct = b.share_pct,
            None => a.members.push(Membership {
                resource_id: rid,
                share_pct: b.share_pct,
            }),
        }
        let a = store_checked(&state, a).await?;
        Ok(HttpResponse::Ok().json(view(&state, &a)))
    })
    .await
}

#[utoipa::path(delete, path = "/api/v1/aggregations/{id}/members/{resource_id}", tag = "catalog", params(("id" = String, Path), ("resource_id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn remove_member(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let target = format!("aggregation/{}", path.0);
    audited(
        &state,
        &caller,
        "aggregation.member.remove",
        &target,
        async {
            let mut a = load_aggregation(&state.store, &path.0).await?;
            let rid = ResourceId(id_param(&path.1, "resource_id")?);
            let before = a.members.len();
            a.members.retain(|m| m.resource_id != rid);
            if a.members.len() == before {
                return Err(ApiError::NotFound {
                    what: format!("resource {rid} in aggregation {}", a.id),
                    field: Some("resource_id".into()),
                });
            }
            state.store.upsert_aggregation(&a).await?;
            Ok(HttpResponse::Ok().json(view(&state, &a)))
        },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/aggregations/{id}/activate", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn activate(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_activation(state, caller, path, true).await
}

#[utoipa::path(post, path = "/api/v1/aggregations/{id}/deactivate", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn deactivate(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_activation(state, caller, path, false).await
}

async fn set_activation(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    active: bool,
) -> Result<HttpResponse, ApiError> {
    let action = if active {
        "aggregation.activate"
    } else {
        "aggregation.deactivate"
    };
    let target = format!("aggregation/{}", path.as_str());
    audited(&state, &caller, action, &target, async {
        let a = load_aggregation(&state.store, &path).await?;
        if active {
            if a.members.is_empty() {
                return Err(ApiError::invalid(
                    "members",
                    format!(
                        "aggregation {} has no members; add some before activating",
                        a.id
                    ),
                ));
            }
            let conflicts = conflicts_of(&state.store, Some(a.id)).await?;
            if !conflicts.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "aggregation {} has over-committed members: {}",
                    a.id,
                    conflicts
                        .iter()
                        .map(|c| format!("resource {} at {}%", c.resource_id, c.total_pct))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        set_active(&state, a.id, active);
        Ok(HttpResponse::Ok().json(view(&state, &a)))
    })
    .await
}

/// A resource whose shares across aggregations add up to more than 100%.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Conflict {
    pub resource_id: u64,
    #[schema(value_type = String)]
    pub total_pct: Decimal,
    #[schema(value_type = Vec<Object>)]
    pub commitments: Vec<Commitment>,
}

/// Over-committed resources, optionally only those in aggregation `only`.
async fn conflicts_of(
    store: &Store,
    only: Option<AggregationId>,
) -> Result<Vec<Conflict>, ApiError> {
    let aggregations = store.list_aggregations().await?;
    let mut by_resource: BTreeMap<ResourceId, Vec<Commitment>> = BTreeMap::new();
    for a in &aggregations {
        for m in &a.members {
            by_resource
                .entry(m.resource_id)
                .or_default()
                .push(Commitment {
                    aggregation_id: a.id,
                    aggregation_name: a.name.clone(),
                    share_pct: m.share_pct,
                });
        }
    }
    Ok(by_resource
        .into_iter()
        .filter_map(|(rid, commitments)| {
            let total: Decimal = commitments.iter().map(|c| c.share_pct).sum();
            let involved = only.is_none_or(|id| commitments.iter().any(|c| c.aggregation_id == id));
            (total > Decimal::ONE_HUNDRED && involved).then_some(Conflict {
                resource_id: rid.0,
                total_pct: total,
                commitments,
            })
        })
        .collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictCheck {
    /// Optional what-if: would adding `resource_id` at `share_pct` clash?
    resource_id: Option<u64>,
    share_pct: Option<Decimal>,
}

#[utoipa::path(get, path = "/api/v1/aggregations/conflicts", tag = "catalog", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn all_conflicts(
    state: web::Data<ApiState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let conflicts = conflicts_of(&state.store, None).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": conflicts })))
}

#[utoipa::path(get, path = "/api/v1/aggregations/{id}/conflicts", tag = "catalog", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn aggregation_conflicts(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<ConflictCheck>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let a = load_aggregation(&state.store, &path).await?;
    let existing = conflicts_of(&state.store, Some(a.id)).await?;
    let what_if = match (q.resource_id, q.share_pct) {
        (Some(rid), Some(share)) => {
            let (mut book, _, _) = book_without(&state.store, Some(a.id)).await?;
            let mut candidate = a.clone();
            candidate.members.retain(|m| m.resource_id.0 != rid);
            candidate.members.push(Membership {
                resource_id: ResourceId(rid),
                share_pct: share,
            });
            candidate.members.sort_by_key(|m| m.resource_id);
            let outcome = match book.insert_aggregation(candidate) {
                Ok(()) => serde_json::json!({ "allowed": true }),
                Err(e) => serde_json::json!({ "allowed": false, "reason": e.to_string() }),
            };
            Some(outcome)
        }
        (None, None) => None,
        _ => {
            return Err(ApiError::BadRequest {
                code: "bad_query",
                message: "give both resource_id and share_pct for a what-if check".into(),
                field: Some(if q.resource_id.is_none() {
                    "resource_id".into()
                } else {
                    "share_pct".into()
                }),
            })
        }
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "aggregation_id": a.id.0,
        "items": existing,
        "what_if": what_if,
    })))
}

/// Capacity of one aggregation. Live values come from the risk monitor (which every
/// aggregation actor feeds after each telemetry batch); otherwise they are computed from the
/// stored resources' last telemetry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CapacityView {
    pub aggregation_id: u64,
    pub name: String,
    /// `live` (from the running engine) or `static` (from the store or config).
    pub source: &'static str,
    #[schema(value_type = String)]
    pub up_flex_kw: Decimal,
    #[schema(value_type = String)]
    pub down_flex_kw: Decimal,
    /// Stored energy above the SoC floors (static view only).
    #[schema(value_type = Option<String>)]
    pub energy_kwh: Option<Decimal>,
    pub available_resources: Option<u32>,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl CapacityView {
    fn from_static(a: &Aggregation, c: &AggregatedCapacity) -> Self {
        Self {
            aggregation_id: a.id.0,
            name: a.name.clone(),
            source: "static",
            up_flex_kw: c.up_flex_kw,
            down_flex_kw: c.down_flex_kw,
            energy_kwh: Some(c.energy_kwh),
            available_resources: Some(c.available_resources),
            at: chrono::Utc::now(),
        }
    }
}

/// Capacity of `a` computed from stored resources (its own members only, so a stored
/// over-commitment elsewhere does not hide it).
async fn static_capacity(state: &ApiState, a: &Aggregation) -> Result<CapacityView, ApiError> {
    let registry = registry(&state.store).await?;
    let mut book = AggregationBook::new();
    for m in &a.members {
        if let Some(r) = state.store.get_resource(m.resource_id).await? {
            if let Ok(t) = registry.version(r.template_id, r.template_version) {
                let _ = book.upsert_resource(r.id, ResourceFeed::from_resource(&r, &t.params));
            }
        }
    }
    let _ = book.insert_aggregation(a.clone());
    let capacity = book
        .aggregation_state(a.id)
        .map(|s| *s.capacity())
        .unwrap_or_default();
    Ok(CapacityView::from_static(a, &capacity))
}

async fn capacity_of(state: &ApiState, a: &Aggregation) -> Result<CapacityView, ApiError> {
    if let Some(live) = super::stream::live_capacity(state, a.id) {
        return Ok(CapacityView {
            aggregation_id: a.id.0,
            name: a.name.clone(),
            ..live
        });
    }
    static_capacity(state, a).await
}

/// Every aggregation the API knows: the stored ones and the ones the daemon runs from its
/// config (by id; the store wins on a clash).
pub async fn known_aggregations(state: &ApiState) -> Result<Vec<Aggregation>, ApiError> {
    let mut by_id: BTreeMap<AggregationId, Aggregation> = state
        .park
        .aggregations
        .aggregations()
        .map(|a| (a.id, a))
        .collect();
    for a in state.store.list_aggregations().await? {
        by_id.insert(a.id, a);
    }
    Ok(by_id.into_values().collect())
}

/// Capacity of every known aggregation, live where the engine runs it.
pub async fn capacities(state: &ApiState) -> Result<Vec<CapacityView>, ApiError> {
    let mut out = Vec::new();
    for a in known_aggregations(state).await? {
        out.push(capacity_of(state, &a).await?);
    }
    Ok(out)
}

#[utoipa::path(get, path = "/api/v1/capacity", tag = "catalog", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn all_capacity(
    state: web::Data<ApiState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": capacities(&state).await? })))
}
