//! `/api/v1/strategies`: strategy CRUD with immutable versions, validation through the
//! engine's strategy registry (the same constructors the daemon uses, so a config the API
//! accepts is one the engine can run), activation, the built-in templates with their
//! parameter docs, the shadow-mode flag, and backtest runs over the bundled price data.
//!
//! Invariants:
//! - A strategy version is immutable; every change (parameters, shadow flag, re-activating an
//!   older version) appends a new version whose `config` is `{aggregation_id, market_id,
//!   params, shadow}`. The head's `latest_version` is the version in force.
//! - A configuration is stored only after `StrategyRegistry::create` accepted it; a refusal is
//!   a 422 naming the parameter.
//! - Writes need the admin role (backtests: trader; the matrix in `roles.rs`) and are audited;
//!   reads need a viewer token.
//! - Backtests are bounded: at most [`MAX_BACKTEST_DAYS`] trading days, one run at a time (a
//!   second gets 409), run off the async workers (`spawn_blocking`), and only the last
//!   [`MAX_STORED_RUNS`] results are kept (in memory: a backtest is cheap to re-run and
//!   deterministic for its inputs and seed).
//! - Strategies the daemon runs from its config are listed too (`source: config`); the API
//!   manages the stored ones.

use super::auth::Caller;
use super::body::{Body, OptBody};
use super::catalog::{audited, page_req};
use super::error::ApiError;
use super::page::Page;
use super::ApiState;
use crate::token::Role;
use actix_web::{web, HttpResponse};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use utoipa::ToSchema;
use vpp_engine::backtest::{self, BacktestConfig, BatterySpec, PriceSeries, StrategySetup};
use vpp_engine::ids::{AggregationId, StrategyId};
use vpp_engine::market::Market;
use vpp_engine::strategy::{StrategyError, StrategyInit, StrategyParams, StrategyRegistry};
use vpp_persistence::{StrategyRecord, StrategyVersion};

/// Longest backtest one call may run, in trading days.
pub const MAX_BACKTEST_DAYS: i64 = 92;
/// Backtest results kept.
pub const MAX_STORED_RUNS: usize = 32;
/// The bundled prices (relative to the working directory, else to the source tree).
pub const PRICES_CSV: &str = "examples/data/entsoe_be_day_ahead_2022_2024.csv";
/// Fixed EUR→CNY rate applied to the bundled prices (as `vpp backtest` does).
const EUR_TO_CNY: &str = "7.8";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/strategies", web::get().to(list))
        .route("/strategies", web::post().to(create))
        .route("/strategies/templates", web::get().to(templates))
        .route("/strategies/validate", web::post().to(validate))
        .route("/strategies/{id}", web::get().to(get))
        .route("/strategies/{id}", web::put().to(update))
        .route("/strategies/{id}", web::delete().to(disable))
        .route("/strategies/{id}/versions", web::get().to(versions))
        .route(
            "/strategies/{id}/versions/{version}",
            web::get().to(version),
        )
        .route("/strategies/{id}/activate", web::post().to(activate))
        .route("/strategies/{id}/deactivate", web::post().to(deactivate))
        .route("/strategies/{id}/shadow", web::put().to(set_shadow))
        .route("/strategies/{id}/backtests", web::post().to(run_backtest))
        .route("/backtests", web::get().to(list_backtests))
        .route("/backtests/{id}", web::get().to(get_backtest));
}

// ------------------------------------------------------------------ validation

fn strategy_error(e: StrategyError) -> ApiError {
    match e {
        StrategyError::Param { param, reason } => ApiError::Invalid {
            code: "invalid_param",
            message: format!("strategy parameter {param}: {reason}"),
            field: Some(format!("params.{param}")),
        },
        StrategyError::UnknownKind { .. } => ApiError::invalid("kind", e.to_string()),
        other => ApiError::invalid("params", other.to_string()),
    }
}

/// The registry of kinds the API accepts: exactly the daemon's (built-ins plus its diagnostic
/// kinds), so a strategy the engine runs can be changed through the API.
fn registry() -> &'static StrategyRegistry {
    static REGISTRY: OnceLock<StrategyRegistry> = OnceLock::new();
    REGISTRY.get_or_init(vpp_actors::live::strategies::registry)
}

/// The market a strategy trades: one of the daemon's markets, or (without markets in the
/// config) the backtest's day-ahead (id 1) and real-time (id 2) markets.
fn market(state: &ApiState, id: Option<u64>) -> Result<Market, ApiError> {
    let markets: Vec<Market> = if state.park.markets.is_empty() {
        let today = chrono::Utc::now().date_naive();
        BacktestConfig::new(today, today, 0).markets().to_vec()
    } else {
        state.park.markets.clone()
    };
    match id {
        None => markets
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::invalid("market_id", "no market is configured")),
        Some(id) => markets
            .iter()
            .find(|m| m.id.0 == id)
            .cloned()
            .ok_or_else(|| {
                let known: Vec<String> = markets
                    .iter()
                    .map(|m| format!("{} ({})", m.id, m.name))
                    .collect();
                ApiError::invalid(
                    "market_id",
                    format!("market {id} is unknown; known: {}", known.join(", ")),
                )
            }),
    }
}

/// The configuration of one version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    pub aggregation_id: u64,
    pub market_id: u64,
    /// Flat parameters (numbers, booleans, texts) as the kind documents them.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Shadow mode: the strategy decides but its orders are not sent (the actors' shadow
    /// execution reads this flag).
    #[serde(default)]
    pub shadow: bool,
}

/// Checks `config` for `kind` by constructing the strategy; returns the parsed parameters.
fn check(
    state: &ApiState,
    id: StrategyId,
    name: &str,
    kind: &str,
    config: &StrategyConfig,
) -> Result<StrategyParams, ApiError> {
    if !config.params.is_object() {
        return Err(ApiError::invalid(
            "params",
            "params must be a JSON object of flat values",
        ));
    }
    let params = StrategyParams::from_json(&config.params).map_err(strategy_error)?;
    let init = StrategyInit {
        strategy_id: id,
        name: name.to_owned(),
        kind: kind.to_owned(),
        aggregation_id: AggregationId(config.aggregation_id),
        market: market(state, Some(config.market_id))?,
        params: params.clone(),
    };
    registry().create(&init).map_err(strategy_error)?;
    Ok(params)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let n = name.chars().count();
    if name.trim().is_empty() || n > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            format!(
                "name {name:?} must be 1..=128 characters, not blank, without control characters"
            ),
        ));
    }
    Ok(())
}

async fn check_aggregation(state: &ApiState, id: u64) -> Result<(), ApiError> {
    let known = super::catalog::known_aggregations(state)
        .await?
        .iter()
        .any(|a| a.id.0 == id);
    if known {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "aggregation_id",
            format!("aggregation {id} does not exist"),
        ))
    }
}

// ------------------------------------------------------------------ views

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StrategyView {
    pub id: u64,
    pub name: String,
    pub kind: String,
    pub enabled: bool,
    pub version: u32,
    /// `store` (managed by the API) or `config` (the daemon's config file).
    pub source: &'static str,
    pub config: Option<StrategyConfig>,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn config_of(v: &StrategyVersion) -> Option<StrategyConfig> {
    serde_json::from_value(v.config.clone()).ok()
}

async fn view_of(state: &ApiState, r: &StrategyRecord) -> Result<StrategyView, ApiError> {
    let config = match r.latest_version {
        0 => None,
        v => state
            .store
            .get_strategy_version(r.id, v)
            .await?
            .as_ref()
            .and_then(config_of),
    };
    Ok(StrategyView {
        id: r.id.0,
        name: r.name.clone(),
        kind: r.kind.clone(),
        enabled: r.enabled,
        version: r.latest_version,
        source: "store",
        config,
        updated_at: Some(r.updated_at),
    })
}

fn config_view(s: &crate::config::StrategySpec) -> StrategyView {
    StrategyView {
        id: s.id.0,
        name: s.name.clone(),
        kind: s.kind.clone(),
        enabled: s.enabled,
        version: 1,
        source: "config",
        config: Some(StrategyConfig {
            aggregation_id: s.aggregation_id.0,
            market_id: s.market_id.0,
            params: serde_json::to_value(&s.params).unwrap_or(serde_json::Value::Null),
            shadow: false,
        }),
        updated_at: None,
    }
}

async fn all_views(state: &ApiState) -> Result<Vec<StrategyView>, ApiError> {
    let mut by_id: BTreeMap<u64, StrategyView> = state
        .park
        .strategies
        .iter()
        .map(|s| (s.id.0, config_view(s)))
        .collect();
    for r in state.store.list_strategies().await? {
        by_id.insert(r.id.0, view_of(state, &r).await?);
    }
    Ok(by_id.into_values().collect())
}

fn id_param(raw: &str) -> Result<StrategyId, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|v| *v > 0 && *v <= i64::MAX as u64)
        .map(StrategyId)
        .ok_or_else(|| ApiError::BadRequest {
            code: "bad_path",
            message: format!("strategy id {raw:?} must be a positive integer"),
            field: Some("id".into()),
        })
}

async fn load(state: &ApiState, raw: &str) -> Result<StrategyRecord, ApiError> {
    let id = id_param(raw)?;
    match state.store.get_strategy(id).await? {
        Some(r) => Ok(r),
        None if state.park.strategies.iter().any(|s| s.id == id) => Err(ApiError::Conflict(
            format!("strategy {id} comes from the daemon's config file; change it there"),
        )),
        None => Err(ApiError::not_found(format!("strategy {id}"), Some("id"))),
    }
}

async fn latest_config(state: &ApiState, r: &StrategyRecord) -> Result<StrategyConfig, ApiError> {
    state
        .store
        .get_strategy_version(r.id, r.latest_version)
        .await?
        .as_ref()
        .and_then(config_of)
        .ok_or_else(|| ApiError::Internal(format!("strategy {} has no readable version", r.id)))
}

/// Makes the running engine follow the store for strategy `id` before the call answers:
/// deactivating stops its actor and cancels its orders, activating starts it, a new version in
/// force restarts it on that version.
async fn follow(state: &ApiState, id: StrategyId) -> Result<(), ApiError> {
    if let Some(engine) = &state.engine {
        let what = engine.strategy_changed(&state.store, id).await?;
        tracing::info!(strategy = %id, %what, "the engine follows the store");
    }
    Ok(())
}

/// Appends version `latest + 1` with `config` and returns the new head.
async fn append_version(
    state: &ApiState,
    r: &StrategyRecord,
    config: &StrategyConfig,
) -> Result<StrategyRecord, ApiError> {
    let v = StrategyVersion {
        strategy_id: r.id,
        version: r.latest_version + 1,
        config: serde_json::to_value(config).map_err(|e| ApiError::Internal(e.to_string()))?,
        created_at: chrono::Utc::now(),
    };
    state.store.insert_strategy_version(&v).await?;
    state
        .store
        .get_strategy(r.id)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("strategy {} vanished", r.id)))
}

// ------------------------------------------------------------------ handlers

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<u32>,
    offset: Option<u64>,
    kind: Option<String>,
    enabled: Option<bool>,
    aggregation_id: Option<u64>,
    shadow: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/strategies", tag = "strategies", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let req = page_req(q.limit, q.offset)?;
    let views: Vec<StrategyView> = all_views(&state)
        .await?
        .into_iter()
        .filter(|v| q.kind.as_deref().is_none_or(|k| v.kind == k))
        .filter(|v| q.enabled.is_none_or(|e| v.enabled == e))
        .filter(|v| {
            q.aggregation_id
                .is_none_or(|a| v.config.as_ref().is_some_and(|c| c.aggregation_id == a))
        })
        .filter(|v| {
            q.shadow
                .is_none_or(|s| v.config.as_ref().is_some_and(|c| c.shadow == s))
        })
        .collect();
    Ok(HttpResponse::Ok().json(Page::from_vec(views, req)))
}

/// A new strategy.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewStrategy {
    pub name: String,
    /// A built-in kind: see `GET /strategies/templates`.
    pub kind: String,
    pub aggregation_id: u64,
    pub market_id: u64,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    #[serde(default)]
    pub shadow: bool,
    /// Default false: a new strategy starts inactive; activate it when reviewed.
    #[serde(default)]
    pub enabled: bool,
}

#[utoipa::path(post, path = "/api/v1/strategies", tag = "strategies", request_body = NewStrategy, responses((status = 201, description = "created"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn create(
    state: web::Data<ApiState>,
    caller: Caller,
    body: Body<NewStrategy>,
) -> Result<HttpResponse, ApiError> {
    audited(&state, &caller, "strategy.create", "strategy", async {
        let b = body.into_inner();
        check_name(&b.name)?;
        let config = StrategyConfig {
            aggregation_id: b.aggregation_id,
            market_id: b.market_id,
            params: b.params,
            shadow: b.shadow,
        };
        let views = all_views(&state).await?;
        if views.iter().any(|v| v.name == b.name) {
            return Err(ApiError::Conflict(format!(
                "a strategy named {:?} exists already",
                b.name
            )));
        }
        let id = StrategyId(views.iter().map(|v| v.id).max().unwrap_or(0) + 1);
        check(&state, id, &b.name, &b.kind, &config)?;
        check_aggregation(&state, config.aggregation_id).await?;
        let head = StrategyRecord {
            id,
            name: b.name,
            kind: b.kind,
            enabled: b.enabled,
            latest_version: 0,
            updated_at: chrono::Utc::now(),
        };
        state.store.upsert_strategy(&head).await?;
        let head = append_version(&state, &head, &config).await?;
        follow(&state, head.id).await?;
        Ok(HttpResponse::Created().json(view_of(&state, &head).await?))
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/strategies/{id}", tag = "strategies", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn get(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let id = id_param(&path)?;
    let view = all_views(&state)
        .await?
        .into_iter()
        .find(|v| v.id == id.0)
        .ok_or_else(|| ApiError::not_found(format!("strategy {id}"), Some("id")))?;
    Ok(HttpResponse::Ok().json(view))
}

/// A change: any field left out keeps its current value; a new version is stored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StrategyPatch {
    pub name: Option<String>,
    pub aggregation_id: Option<u64>,
    pub market_id: Option<u64>,
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    pub shadow: Option<bool>,
}

#[utoipa::path(put, path = "/api/v1/strategies/{id}", tag = "strategies", request_body = StrategyPatch, params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn update(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body<StrategyPatch>,
) -> Result<HttpResponse, ApiError> {
    let target = format!("strategy/{}", path.as_str());
    audited(&state, &caller, "strategy.update", &target, async {
        let mut r = load(&state, &path).await?;
        let p = body.into_inner();
        let mut config = latest_config(&state, &r).await?;
        if let Some(a) = p.aggregation_id {
            check_aggregation(&state, a).await?;
            config.aggregation_id = a;
        }
        if let Some(m) = p.market_id {
            config.market_id = m;
        }
        if let Some(params) = p.params {
            config.params = params;
        }
        if let Some(s) = p.shadow {
            config.shadow = s;
        }
        if let Some(n) = p.name {
            check_name(&n)?;
            r.name = n;
        }
        check(&state, r.id, &r.name, &r.kind, &config)?;
        r.updated_at = chrono::Utc::now();
        state.store.upsert_strategy(&r).await?;
        let head = append_version(&state, &r, &config).await?;
        follow(&state, head.id).await?;
        Ok(HttpResponse::Ok().json(view_of(&state, &head).await?))
    })
    .await
}

/// Strategies are never deleted (orders and the audit trail name them): DELETE disables.
#[utoipa::path(delete, path = "/api/v1/strategies/{id}", tag = "strategies", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn disable(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_enabled(state, caller, path, false, None).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    /// Re-activate this older version (stored again as the newest); default: the newest.
    pub version: Option<u32>,
}

#[utoipa::path(post, path = "/api/v1/strategies/{id}/activate", tag = "strategies", request_body(content = Option<ActivateBody>), params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn activate(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: OptBody<ActivateBody>,
) -> Result<HttpResponse, ApiError> {
    let version = body.into_inner().and_then(|b| b.version);
    set_enabled(state, caller, path, true, version).await
}

#[utoipa::path(post, path = "/api/v1/strategies/{id}/deactivate", tag = "strategies", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn deactivate(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_enabled(state, caller, path, false, None).await
}

async fn set_enabled(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    enabled: bool,
    version: Option<u32>,
) -> Result<HttpResponse, ApiError> {
    let action = if enabled {
        "strategy.activate"
    } else {
        "strategy.deactivate"
    };
    let target = format!("strategy/{}", path.as_str());
    audited(&state, &caller, action, &target, async {
        let mut r = load(&state, &path).await?;
        if let Some(v) = version.filter(|v| *v != r.latest_version) {
            let old = state
                .store
                .get_strategy_version(r.id, v)
                .await?
                .ok_or_else(|| {
                    ApiError::invalid(
                        "version",
                        format!(
                            "strategy {} has no version {v} (latest {})",
                            r.id, r.latest_version
                        ),
                    )
                })?;
            let config = config_of(&old).ok_or_else(|| {
                ApiError::Internal(format!("strategy {} version {v} is unreadable", r.id))
            })?;
            check(&state, r.id, &r.name, &r.kind, &config)?;
            r = append_version(&state, &r, &config).await?;
        }
        r.enabled = enabled;
        r.updated_at = chrono::Utc::now();
        state.store.upsert_strategy(&r).await?;
        follow(&state, r.id).await?;
        Ok(HttpResponse::Ok().json(view_of(&state, &r).await?))
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowBody {
    pub shadow: bool,
}

#[utoipa::path(put, path = "/api/v1/strategies/{id}/shadow", tag = "strategies", request_body = ShadowBody, params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn set_shadow(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body<ShadowBody>,
) -> Result<HttpResponse, ApiError> {
    let target = format!("strategy/{}", path.as_str());
    audited(&state, &caller, "strategy.shadow", &target, async {
        let r = load(&state, &path).await?;
        let mut config = latest_config(&state, &r).await?;
        if config.shadow == body.shadow {
            return Ok(HttpResponse::Ok().json(view_of(&state, &r).await?));
        }
        config.shadow = body.shadow;
        let head = append_version(&state, &r, &config).await?;
        follow(&state, head.id).await?;
        Ok(HttpResponse::Ok().json(view_of(&state, &head).await?))
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/strategies/{id}/versions", tag = "strategies", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn versions(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let r = load(&state, &path).await?;
    let list = state.store.list_strategy_versions(r.id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "strategy_id": r.id.0, "items": list })))
}

#[utoipa::path(get, path = "/api/v1/strategies/{id}/versions/{version}", tag = "strategies", params(("id" = String, Path), ("version" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn version(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let r = load(&state, &path.0).await?;
    let v: u32 = path.1.parse().map_err(|_| ApiError::BadRequest {
        code: "bad_path",
        message: format!("version {:?} must be a positive integer", path.1),
        field: Some("version".into()),
    })?;
    let found = state
        .store
        .get_strategy_version(r.id, v)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            what: format!("strategy {} version {v}", r.id),
            field: Some("version".into()),
        })?;
    Ok(HttpResponse::Ok().json(found))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateBody {
    pub kind: String,
    pub market_id: Option<u64>,
    pub aggregation_id: Option<u64>,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
}

#[utoipa::path(post, path = "/api/v1/strategies/validate", tag = "strategies", request_body = ValidateBody, responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn validate(
    state: web::Data<ApiState>,
    caller: Caller,
    body: Body<ValidateBody>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let b = body.into_inner();
    let m = market(&state, b.market_id)?;
    let config = StrategyConfig {
        aggregation_id: b.aggregation_id.unwrap_or(1),
        market_id: m.id.0,
        params: b.params,
        shadow: false,
    };
    let params = check(&state, StrategyId(1), "validate", &b.kind, &config)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "valid": true,
        "kind": b.kind,
        "market_id": m.id.0,
        "params": params.names().collect::<Vec<_>>(),
    })))
}

/// One documented parameter of a built-in kind.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ParamDoc {
    pub name: &'static str,
    pub unit: &'static str,
    pub required: bool,
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

/// A built-in strategy kind.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StrategyTemplate {
    pub kind: &'static str,
    pub summary: &'static str,
    pub markets: &'static str,
    pub params: Vec<ParamDoc>,
    /// A parameter set that validates.
    #[schema(value_type = Object)]
    pub example: serde_json::Value,
}

const fn p(
    name: &'static str,
    unit: &'static str,
    required: bool,
    default: Option<&'static str>,
    doc: &'static str,
) -> ParamDoc {
    ParamDoc {
        name,
        unit,
        required,
        default,
        doc,
    }
}

pub fn builtin_templates() -> Vec<StrategyTemplate> {
    vec![
        StrategyTemplate {
            kind: "battery_arbitrage",
            summary: "Day-ahead arbitrage of a battery: buys the cheapest and sells the dearest \
                      intervals of the forecast within power, energy and SoC limits.",
            markets: "day_ahead",
            params: vec![
                p("power_mw", "MW", false, Some("1"), "charge/discharge power"),
                p("energy_mwh", "MWh", false, Some("2"), "usable energy"),
                p("efficiency", "0..1", false, Some("0.9"), "round-trip efficiency"),
                p("soc_min_pct", "%", false, Some("10"), "lowest state of charge"),
                p("soc_max_pct", "%", false, Some("90"), "highest state of charge"),
                p("initial_soc_pct", "%", false, Some("soc_min_pct"), "SoC at the start"),
                p("max_order_mw", "MW", false, Some("power_mw"), "largest single order"),
                p("min_spread_cny_per_mwh", "CNY/MWh", false, None, "least spread worth a cycle"),
                p("degradation_cost_cny_per_mwh", "CNY/MWh", false, None, "cycling cost per MWh discharged"),
            ],
            example: serde_json::json!({ "power_mw": 1, "energy_mwh": 2 }),
        },
        StrategyTemplate {
            kind: "real_time_threshold",
            summary: "Real-time: sells above one price and buys below another, within a \
                      position limit.",
            markets: "real_time",
            params: vec![
                p("sell_above_cny_per_mwh", "CNY/MWh", true, None, "sell when the price is above"),
                p("buy_below_cny_per_mwh", "CNY/MWh", true, None, "buy when the price is below (must be under sell_above)"),
                p("max_order_mw", "MW", false, Some("1"), "largest single order"),
                p("max_position_mw", "MW", false, Some("max_order_mw"), "largest net position"),
            ],
            example: serde_json::json!({ "sell_above_cny_per_mwh": 600, "buy_below_cny_per_mwh": 200 }),
        },
        StrategyTemplate {
            kind: "rules",
            summary: "IF-THEN rules, one text parameter per rule: `when <condition> then \
                      buy|sell <q> MW|% at market|<price>|ref [+|- offset]`, `cancel` or `kill`.",
            markets: "day_ahead, real_time",
            params: vec![
                p("market", "day_ahead | real_time", false, Some("the instance's market"), "must match the instance's market"),
                p("capacity_mw", "MW", false, Some("1"), "largest quantity a rule may ask for"),
                p("dr_market", "market id", false, None, "market whose prices are demand-response invitations"),
                p("rule.<name>", "text", true, None, "conditions on price, forecast, spread, soc, up_flex, down_flex, hour, interval, weekday, dr_event; combined with and/or/not"),
            ],
            example: serde_json::json!({ "rule.10_sell_spikes": "when price > 900 then sell 1 MW at market" }),
        },
    ]
}

#[utoipa::path(get, path = "/api/v1/strategies/templates", tag = "strategies", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn templates(caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let kinds: Vec<&str> = registry().kinds().collect();
    let items: Vec<StrategyTemplate> = builtin_templates()
        .into_iter()
        .filter(|t| kinds.contains(&t.kind))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

// ------------------------------------------------------------------ backtests

/// A stored backtest run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BacktestRun {
    pub id: u64,
    pub strategy_id: u64,
    pub strategy_version: u32,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub seed: u64,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub elapsed_ms: u64,
    /// The engine's backtest report (per strategy: P&L, energy, orders, fills, rejects, days).
    #[schema(value_type = Object)]
    pub report: serde_json::Value,
}

struct Runs {
    next_id: AtomicU64,
    busy: AtomicBool,
    done: Mutex<VecDeque<Arc<BacktestRun>>>,
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| Runs {
        next_id: AtomicU64::new(1),
        busy: AtomicBool::new(false),
        done: Mutex::new(VecDeque::new()),
    })
}

/// Frees the single run slot when dropped (also if the run panics).
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        runs().busy.store(false, Ordering::Release);
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BacktestBody {
    /// First trading day (Europe/Brussels, inclusive), within 2022-01-02..2024-12-31.
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Seed of the real-time book model (default 42).
    pub seed: Option<u64>,
    /// Default: the newest version.
    pub version: Option<u32>,
}

fn prices_path() -> PathBuf {
    let local = Path::new(PRICES_CSV);
    if local.exists() {
        return local.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(PRICES_CSV)
}

/// The bundled prices, loaded once.
fn prices() -> Result<Arc<PriceSeries>, ApiError> {
    static PRICES: OnceLock<Arc<PriceSeries>> = OnceLock::new();
    if let Some(p) = PRICES.get() {
        return Ok(Arc::clone(p));
    }
    let path = prices_path();
    let file = std::fs::File::open(&path).map_err(|e| {
        ApiError::Unavailable(format!(
            "price data {} cannot be opened: {e}",
            path.display()
        ))
    })?;
    let format = backtest::CsvFormat {
        timezone: chrono_tz::Europe::Brussels,
        currency_factor: EUR_TO_CNY.parse().unwrap_or(rust_decimal::Decimal::ONE),
        max_rows: backtest::DEFAULT_MAX_ROWS,
    };
    let series = backtest::load_hourly_csv(std::io::BufReader::new(file), &format)
        .map_err(|e| ApiError::Unavailable(format!("price data {}: {e}", path.display())))?;
    Ok(Arc::clone(PRICES.get_or_init(|| Arc::new(series))))
}

/// Runs one strategy configuration over the bundled prices (blocking; call off the workers).
fn run_blocking(
    kind: &str,
    name: &str,
    config: &StrategyConfig,
    cfg: &BacktestConfig,
) -> Result<serde_json::Value, ApiError> {
    let prices = prices()?;
    let params = StrategyParams::from_json(&config.params).map_err(strategy_error)?;
    let [day_ahead, real_time] = cfg.markets();
    let market = if kind == "real_time_threshold"
        || params.text("market").ok().flatten() == Some("real_time")
    {
        real_time
    } else {
        day_ahead
    };
    let init = StrategyInit {
        strategy_id: StrategyId(1),
        name: name.to_owned(),
        kind: kind.to_owned(),
        aggregation_id: AggregationId(1),
        market,
        params: params.clone(),
    };
    let strategy = registry().create(&init).map_err(strategy_error)?;
    let battery = BatterySpec::from_params(&params).map_err(strategy_error)?;
    let setup = vec![StrategySetup {
        name: name.to_owned(),
        role: "strategy".into(),
        strategy,
        battery,
    }];
    let mut risk_cfg = vpp_risk::RiskConfig::default();
    // A day-ahead plan sends up to 100 orders at one instant (one per interval).
    risk_cfg.strategy_defaults.order_burst = 400;
    risk_cfg.strategy_defaults.orders_per_second = 100;
    risk_cfg.trading_day_timezone = cfg.timezone;
    let mut risk = vpp_risk::RiskEngine::new(risk_cfg)
        .map_err(|e| ApiError::Internal(format!("backtest risk config: {e}")))?;
    for m in cfg.markets() {
        risk.register_market(m)
            .map_err(|e| ApiError::Internal(format!("backtest market: {e}")))?;
    }
    let mut clearing = backtest::PriceTakerClearing;
    let report = backtest::run(
        cfg,
        &prices,
        setup,
        &mut risk,
        &mut clearing,
        &mut |_, _| {},
    )
    .map_err(|e| ApiError::invalid("from", e.to_string()))?;
    serde_json::to_value(&report).map_err(|e| ApiError::Internal(e.to_string()))
}

#[utoipa::path(post, path = "/api/v1/strategies/{id}/backtests", tag = "strategies", request_body = BacktestBody, params(("id" = String, Path)), responses((status = 201, description = "created"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn run_backtest(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: Body<BacktestBody>,
) -> Result<HttpResponse, ApiError> {
    let target = format!("strategy/{}", path.as_str());
    audited(&state, &caller, "strategy.backtest", &target, async {
        let b = body.into_inner();
        let days = (b.to - b.from).num_days() + 1;
        if days < 1 {
            return Err(ApiError::invalid(
                "to",
                format!("to {} is before from {}", b.to, b.from),
            ));
        }
        if days > MAX_BACKTEST_DAYS {
            return Err(ApiError::invalid(
                "to",
                format!("{days} days requested; a run may cover at most {MAX_BACKTEST_DAYS}"),
            ));
        }
        let id = id_param(&path)?;
        let (kind, name, version, config) = match state.store.get_strategy(id).await? {
            Some(r) => {
                let v = b.version.unwrap_or(r.latest_version);
                let sv = state
                    .store
                    .get_strategy_version(id, v)
                    .await?
                    .ok_or_else(|| {
                        ApiError::invalid("version", format!("strategy {id} has no version {v}"))
                    })?;
                let config = config_of(&sv).ok_or_else(|| {
                    ApiError::Internal(format!("strategy {id} version {v} is unreadable"))
                })?;
                (r.kind, r.name, v, config)
            }
            None => {
                let spec = state
                    .park
                    .strategies
                    .iter()
                    .find(|s| s.id == id)
                    .ok_or_else(|| ApiError::not_found(format!("strategy {id}"), Some("id")))?;
                let v = config_view(spec);
                let config = v
                    .config
                    .ok_or_else(|| ApiError::Internal("no config".into()))?;
                (spec.kind.clone(), spec.name.clone(), 1, config)
            }
        };
        let seed = b.seed.unwrap_or(42);
        let cfg = BacktestConfig::new(b.from, b.to, seed);
        cfg.validate()
            .map_err(|e| ApiError::invalid("from", e.to_string()))?;
        if runs()
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ApiError::Conflict(
                "a backtest is already running; retry when it is done".into(),
            ));
        }
        let slot = Slot;
        let started_at = chrono::Utc::now();
        let t0 = std::time::Instant::now();
        let report = web::block(move || {
            let _slot = slot;
            run_blocking(&kind, &name, &config, &cfg)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("backtest worker: {e}")))??;
        let run = Arc::new(BacktestRun {
            id: runs().next_id.fetch_add(1, Ordering::Relaxed),
            strategy_id: id.0,
            strategy_version: version,
            from: b.from,
            to: b.to,
            seed,
            started_at,
            elapsed_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            report,
        });
        {
            let mut done = runs().done.lock().unwrap_or_else(PoisonError::into_inner);
            if done.len() >= MAX_STORED_RUNS {
                done.pop_front();
            }
            done.push_back(Arc::clone(&run));
        }
        Ok(HttpResponse::Created().json(&*run))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    strategy_id: Option<u64>,
    limit: Option<u32>,
    offset: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/backtests", tag = "strategies", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list_backtests(
    caller: Caller,
    q: web::Query<RunsQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let req = page_req(q.limit, q.offset)?;
    let list: Vec<serde_json::Value> = runs()
        .done
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .rev()
        .filter(|r| q.strategy_id.is_none_or(|s| r.strategy_id == s))
        .map(|r| {
            serde_json::json!({
                "id": r.id, "strategy_id": r.strategy_id, "strategy_version": r.strategy_version,
                "from": r.from, "to": r.to, "seed": r.seed, "started_at": r.started_at,
                "elapsed_ms": r.elapsed_ms,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(Page::from_vec(list, req)))
}

#[utoipa::path(get, path = "/api/v1/backtests/{id}", tag = "strategies", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn get_backtest(
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let id: u64 = path.parse().map_err(|_| ApiError::BadRequest {
        code: "bad_path",
        message: format!("backtest id {:?} must be a positive integer", path.as_str()),
        field: Some("id".into()),
    })?;
    let run = runs()
        .done
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|r| r.id == id)
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(
                format!("backtest {id} (only the last {MAX_STORED_RUNS} runs are kept)"),
                Some("id"),
            )
        })?;
    Ok(HttpResponse::Ok().json(&*run))
}
