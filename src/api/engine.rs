//! Live-engine routes (issue 8): engine start/stop and status, live orders and positions,
//! risk exposure, limits and kill switches, the venue connection, manual orders and cancels.
//!
//! Roles: see the one matrix in `roles.rs` (enforced by the gate before these handlers run);
//! the only check here is the kill-switch scope from the body (`roles::kill_switch_role`).
//!
//! Every state-changing handler audits its outcome (`ok`, `denied: ...`, `error: ...`).

use super::audit::audit_result;
use super::auth::Caller;
use super::body::{Body, OptBody};
use super::error::ApiError;
use super::page::{Page, PageParams};
use super::{ApiState, StreamEvent};
use crate::daemon::control::{
    parse_key, ConnectionView, ControlError, EngineStatus, IdOrName, KillSwitchRow, KillView,
    ManualOrder, OrderAccepted, OrderFilter, PositionRow,
};
use crate::daemon::shadow::{ShadowReport, MAX_SHADOW_INTENTS};
use actix_web::{guard, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use vpp_engine::ids::{AggregationId, StrategyId};
use vpp_risk::{KillScope, RiskLimits};

/// Longest free-text reason accepted.
const MAX_REASON_LEN: usize = 256;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/engine", web::get().to(status))
        .route("/engine/start", web::post().to(start))
        .route("/engine/stop", web::post().to(stop))
        .route("/engine/orders", web::get().to(orders))
        .route("/engine/positions", web::get().to(positions))
        .route("/engine/shadow", web::get().to(shadow))
        .route("/risk/exposure", web::get().to(exposure))
        .route("/risk/kill-switch", web::get().to(kill_switches))
        .route("/risk/kill-switch/engage", web::post().to(engage))
        .route("/risk/kill-switch/release", web::post().to(release))
        .service(
            web::resource("/risk/limits/{level}")
                .route(web::get().to(get_default_limits))
                .route(web::put().to(put_default_limits)),
        )
        .service(
            web::resource("/risk/limits/{level}/{id}")
                .route(web::get().to(get_limits))
                .route(web::put().to(put_limits)),
        )
        .route("/markets/connections", web::get().to(connections))
        .route(
            "/markets/connections/{venue}/{action}",
            web::post().to(connection_action),
        )
        .route("/aggregations/{id}/capacity", web::get().to(capacity))
        // Shared paths: method guards let the store-backed order routes answer GET.
        .service(web::resource("/orders").guard(guard::Post()).to(new_order))
        .service(
            web::resource("/orders/{id}")
                .guard(guard::Delete())
                .to(cancel_order),
        );
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound { what, field } => ApiError::not_found(what, Some(field)),
            ControlError::Invalid { field, message } => ApiError::invalid(field, message),
            ControlError::Rejected { code, message } => ApiError::Invalid {
                code: "risk_rejected",
                message: format!("{code}: {message}"),
                field: None,
            },
            ControlError::Conflict(m) => ApiError::Conflict(m),
            ControlError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

fn reason(r: Option<&str>, default: &str) -> Result<String, ApiError> {
    let r = r.unwrap_or(default);
    if r.chars().count() > MAX_REASON_LEN {
        return Err(ApiError::invalid(
            "reason",
            format!("at most {MAX_REASON_LEN} characters"),
        ));
    }
    Ok(r.to_owned())
}

/// An id given as a string of digits is the id (the OpenAPI types ids as strings; a JSON
/// number is accepted too): `"2"` and `2` name the same market.
fn normalize(key: IdOrName) -> IdOrName {
    match key {
        IdOrName::Name(n) => parse_key(&n),
        id => id,
    }
}

fn scope_target(scope: KillScope) -> String {
    match scope {
        KillScope::Global => "kill_switch/global".into(),
        KillScope::Aggregation(id) => format!("kill_switch/aggregation/{id}"),
        KillScope::Strategy(id) => format!("kill_switch/strategy/{id}"),
    }
}

// ----- engine ------------------------------------------------------------------------------

/// Engine status: trading or stopped, connection, orders, strategies.
#[utoipa::path(get, path = "/api/v1/engine", tag = "engine",
    responses((status = 200, body = EngineStatus), (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn status(state: web::Data<ApiState>, _c: Caller) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.engine()?.status()))
}

/// Optional body of start/stop.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    pub reason: Option<String>,
}

/// Release the global kill switch (admin).
#[utoipa::path(post, path = "/api/v1/engine/start", tag = "engine",
    request_body(content = Option<ReasonBody>),
    responses((status = 200, body = KillView), (status = 403, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn start(
    state: web::Data<ApiState>,
    caller: Caller,
    body: OptBody<ReasonBody>,
) -> Result<HttpResponse, ApiError> {
    let r = async {
        let why = reason(
            body.as_ref().and_then(|b| b.reason.as_deref()),
            "operator start",
        )?;
        let v = state.engine()?.start(&caller.name).await?;
        Ok::<_, ApiError>((v, why))
    }
    .await;
    let detail = serde_json::json!({ "reason": r.as_ref().ok().map(|(_, w)| w.clone()) });
    audit_result(&state, &caller, "engine.start", "engine", detail, &r).await;
    let (v, _) = r?;
    if v.changed {
        state.publish(StreamEvent::Alert {
            level: "info".into(),
            message: format!("trading started by {}", caller.name),
        });
    }
    Ok(HttpResponse::Ok().json(v))
}

/// Engage the global kill switch and cancel every open order (admin).
#[utoipa::path(post, path = "/api/v1/engine/stop", tag = "engine",
    request_body(content = Option<ReasonBody>),
    responses((status = 200, body = KillView), (status = 403, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn stop(
    state: web::Data<ApiState>,
    caller: Caller,
    body: OptBody<ReasonBody>,
) -> Result<HttpResponse, ApiError> {
    let why = body.as_ref().and_then(|b| b.reason.clone());
    let r = async {
        let why = reason(why.as_deref(), "operator stop")?;
        Ok::<_, ApiError>(state.engine()?.stop(&caller.name, &why).await?)
    }
    .await;
    audit_result(
        &state,
        &caller,
        "engine.stop",
        "engine",
        serde_json::json!({ "reason": why }),
        &r,
    )
    .await;
    let v = r?;
    state.publish(StreamEvent::Alert {
        level: "warning".into(),
        message: format!("trading stopped by {}: {}", caller.name, v.message),
    });
    Ok(HttpResponse::Ok().json(v))
}

/// Filters of `GET /engine/orders`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OrderQuery {
    /// Strategy id or name.
    pub strategy: Option<String>,
    /// Aggregation id or name.
    pub aggregation: Option<String>,
    /// Only working orders (default false: every order the ledger holds).
    pub open: Option<bool>,
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

fn resolve_filters(
    state: &ApiState,
    strategy: Option<&str>,
    aggregation: Option<&str>,
) -> Result<(Option<StrategyId>, Option<AggregationId>), ApiError> {
    let e = state.engine()?;
    let s = strategy
        .map(|s| e.strategy(&parse_key(s)).map(|s| s.id))
        .transpose();
    let a = aggregation
        .map(|a| e.aggregation(&parse_key(a)))
        .transpose();
    Ok((s?, a?))
}

/// Live orders from the OMS ledger, newest first.
#[utoipa::path(get, path = "/api/v1/engine/orders", tag = "engine", params(OrderQuery),
    responses((status = 200, description = "Page of orders (engine Order JSON)", body = Object)),
    security(("bearer" = [])))]
pub async fn orders(
    state: web::Data<ApiState>,
    _c: Caller,
    q: web::Query<OrderQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = PageParams {
        limit: q.limit,
        offset: q.offset,
    }
    .validate()?;
    let (strategy, aggregation) =
        resolve_filters(&state, q.strategy.as_deref(), q.aggregation.as_deref())?;
    let all = state.engine()?.orders(&OrderFilter {
        strategy,
        aggregation,
        open_only: q.open.unwrap_or(false),
    });
    Ok(HttpResponse::Ok().json(Page::from_vec(all, page)))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PositionQuery {
    /// Aggregation id or name.
    pub aggregation: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

/// Live positions from the OMS ledger.
#[utoipa::path(get, path = "/api/v1/engine/positions", tag = "engine", params(PositionQuery),
    responses((status = 200, body = Page<PositionRow>)), security(("bearer" = [])))]
pub async fn positions(
    state: web::Data<ApiState>,
    _c: Caller,
    q: web::Query<PositionQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = PageParams {
        limit: q.limit,
        offset: q.offset,
    }
    .validate()?;
    let (_, aggregation) = resolve_filters(&state, None, q.aggregation.as_deref())?;
    let rows = state.engine()?.positions(aggregation);
    Ok(HttpResponse::Ok().json(Page::from_vec(rows, page)))
}

/// `?intents=N`: how many of each shadow strategy's newest intents to include.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ShadowQuery {
    /// 0 (default) ..= 1000.
    pub intents: Option<u32>,
}

/// Shadow strategies: paper P&L next to the live strategies on the same aggregation and
/// market (A/B evaluation without sending orders).
#[utoipa::path(get, path = "/api/v1/engine/shadow", tag = "engine", params(ShadowQuery),
    responses((status = 200, body = ShadowReport), (status = "4XX", description = "bad input", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn shadow(
    state: web::Data<ApiState>,
    _c: Caller,
    q: web::Query<ShadowQuery>,
) -> Result<HttpResponse, ApiError> {
    let intents = q.intents.unwrap_or(0);
    if intents as usize > MAX_SHADOW_INTENTS {
        return Err(ApiError::invalid(
            "intents",
            format!("{intents} is above the limit of {MAX_SHADOW_INTENTS}"),
        ));
    }
    let report = state.engine()?.shadow_report(intents as usize);
    Ok(HttpResponse::Ok().json(report))
}

// ----- risk --------------------------------------------------------------------------------

/// `?level=aggregation|strategy&id=<id or name>`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    pub level: Option<String>,
    pub id: Option<String>,
}

/// Exposure per aggregation and strategy: limits used, positions, headroom, kill switch.
#[utoipa::path(get, path = "/api/v1/risk/exposure", tag = "risk", params(ScopeQuery),
    responses((status = 200, description = "Exposure views (risk ExposureView JSON), one per aggregation and strategy in scope", body = Vec<Object>)),
    security(("bearer" = [])))]
pub async fn exposure(
    state: web::Data<ApiState>,
    _c: Caller,
    q: web::Query<ScopeQuery>,
) -> Result<HttpResponse, ApiError> {
    let e = state.engine()?;
    let scope = match q.level.as_deref() {
        None => None,
        Some(level) => Some(e.kill_scope(level, q.id.as_deref().map(parse_key))?),
    };
    Ok(HttpResponse::Ok().json(e.exposure(scope).await?))
}

/// Engaged kill switches.
#[utoipa::path(get, path = "/api/v1/risk/kill-switch", tag = "risk",
    responses((status = 200, body = Vec<KillSwitchRow>)), security(("bearer" = [])))]
pub async fn kill_switches(
    state: web::Data<ApiState>,
    _c: Caller,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.engine()?.kill_switches().await?))
}

/// Body of kill-switch engage/release.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    /// `global`, `aggregation` or `strategy`.
    pub scope: String,
    /// Id or name of the aggregation or strategy (not for global).
    #[schema(value_type = Option<String>)]
    pub id: Option<IdOrName>,
    pub reason: Option<String>,
}

async fn kill(
    state: web::Data<ApiState>,
    caller: Caller,
    body: Body<KillRequest>,
    engage: bool,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let action = if engage {
        "kill_switch.engage"
    } else {
        "kill_switch.release"
    };
    let mut target = format!(
        "kill_switch/{}{}",
        body.scope,
        body.id
            .as_ref()
            .map(|i| format!("/{i}"))
            .unwrap_or_default()
    );
    // The risk monitor audits the actions it carries out (and its own refusals); this
    // handler audits what never reached it: role denials, bad input, an unreachable monitor.
    let mut reached_risk = false;
    let r = async {
        let e = state.engine()?;
        let scope = e.kill_scope(&body.scope, body.id.clone().map(normalize))?;
        target = scope_target(scope);
        // Traders work strategy switches; wider scopes are the admin's (the role matrix).
        caller.require(super::roles::kill_switch_role(scope))?;
        let why = reason(body.reason.as_deref(), "operator")?;
        reached_risk = true;
        Ok::<_, ApiError>(if engage {
            e.engage(scope, &caller.name, &why).await?
        } else {
            e.release(scope, &caller.name).await?
        })
    }
    .await;
    if !reached_risk || matches!(r, Err(ApiError::Unavailable(_))) {
        let detail = serde_json::json!({ "reason": body.reason });
        audit_result(&state, &caller, action, &target, detail, &r).await;
    }
    let v = r?;
    state.publish(StreamEvent::Alert {
        level: if engage { "warning" } else { "info" }.into(),
        message: format!("{action} {target} by {}: {}", caller.name, v.message),
    });
    Ok(HttpResponse::Ok().json(v))
}

/// Engage a kill switch: new intents in scope are refused, open orders cancelled.
#[utoipa::path(post, path = "/api/v1/risk/kill-switch/engage", tag = "risk",
    request_body = KillRequest,
    responses((status = 200, body = KillView), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn engage(
    state: web::Data<ApiState>,
    caller: Caller,
    body: Body<KillRequest>,
) -> Result<HttpResponse, ApiError> {
    kill(state, caller, body, true).await
}

/// Release a kill switch (409 when it is not engaged).
#[utoipa::path(post, path = "/api/v1/risk/kill-switch/release", tag = "risk",
    request_body = KillRequest,
    responses((status = 200, body = KillView), (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn release(
    state: web::Data<ApiState>,
    caller: Caller,
    body: Body<KillRequest>,
) -> Result<HttpResponse, ApiError> {
    kill(state, caller, body, false).await
}

#[derive(Debug, Deserialize)]
pub struct LimitPath {
    level: String,
    id: Option<String>,
}

/// Risk limits of a scope: `aggregation_defaults`, `strategy_defaults`,
/// `aggregation/{id}`, `strategy/{id}`.
#[utoipa::path(get, path = "/api/v1/risk/limits/{level}/{id}", tag = "risk",
    params(("level" = String, Path), ("id" = String, Path, description = "omit for defaults")),
    responses((status = 200, description = "RiskLimits JSON", body = Object)),
    security(("bearer" = [])))]
pub async fn get_limits(
    state: web::Data<ApiState>,
    _c: Caller,
    path: web::Path<LimitPath>,
) -> Result<HttpResponse, ApiError> {
    let e = state.engine()?;
    let scope = e.limit_scope(&path.level, path.id.as_deref().map(parse_key))?;
    Ok(HttpResponse::Ok().json(e.limits(scope).await?))
}

/// Risk limits of `aggregation_defaults` or `strategy_defaults`.
#[utoipa::path(get, path = "/api/v1/risk/limits/{level}", tag = "risk",
    params(("level" = String, Path, description = "aggregation_defaults | strategy_defaults")),
    responses((status = 200, description = "RiskLimits JSON", body = Object),
        (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody),
        (status = 503, description = "the live engine is not running", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_default_limits(
    state: web::Data<ApiState>,
    c: Caller,
    path: web::Path<LimitPath>,
) -> Result<HttpResponse, ApiError> {
    get_limits(state, c, path).await
}

/// Replace the default risk limits (admin).
#[utoipa::path(put, path = "/api/v1/risk/limits/{level}", tag = "risk",
    params(("level" = String, Path, description = "aggregation_defaults | strategy_defaults")),
    request_body(content = Object, description = "RiskLimits JSON (missing fields take defaults)"),
    responses((status = 200, description = "LimitChange JSON", body = Object),
        (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody),
        (status = 503, description = "the live engine is not running", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_default_limits(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<LimitPath>,
    body: Body<RiskLimits>,
) -> Result<HttpResponse, ApiError> {
    put_limits(state, caller, path, body).await
}

/// Replace the risk limits of a scope (admin); answers the change (old and new).
#[utoipa::path(put, path = "/api/v1/risk/limits/{level}/{id}", tag = "risk",
    params(("level" = String, Path), ("id" = String, Path, description = "omit for defaults")),
    request_body(content = Object, description = "RiskLimits JSON (missing fields take defaults)"),
    responses((status = 200, description = "LimitChange JSON", body = Object),
        (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_limits(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<LimitPath>,
    body: Body<RiskLimits>,
) -> Result<HttpResponse, ApiError> {
    let target = format!(
        "risk_limits/{}{}",
        path.level,
        path.id
            .as_ref()
            .map(|i| format!("/{i}"))
            .unwrap_or_default()
    );
    // As for kill switches: risk audits the change (`risk_limits.update`) and its refusals.
    let mut reached_risk = false;
    let r = async {
        let e = state.engine()?;
        let scope = e.limit_scope(&path.level, path.id.as_deref().map(parse_key))?;
        reached_risk = true;
        Ok::<_, ApiError>(e.set_limits(scope, body.into_inner(), &caller.name).await?)
    }
    .await;
    if !reached_risk || matches!(r, Err(ApiError::Unavailable(_))) {
        audit_result(
            &state,
            &caller,
            "risk_limits.update",
            &target,
            serde_json::Value::Null,
            &r,
        )
        .await;
    }
    Ok(HttpResponse::Ok().json(r?))
}

// ----- market connections ------------------------------------------------------------------

/// Venue connections and their state (never credentials).
#[utoipa::path(get, path = "/api/v1/markets/connections", tag = "markets",
    responses((status = 200, body = Vec<ConnectionView>)), security(("bearer" = [])))]
pub async fn connections(state: web::Data<ApiState>, _c: Caller) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(vec![state.engine()?.connection()]))
}

/// Body of subscribe/unsubscribe.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    /// `prices`, `book`, `auction_results`, `ancillary_results` or `dr_events`.
    pub channel: String,
    /// Market id or name.
    #[schema(value_type = String)]
    pub market: IdOrName,
}

/// `connect`, `disconnect`, `subscribe` or `unsubscribe` on a venue connection (admin).
#[utoipa::path(post, path = "/api/v1/markets/connections/{venue}/{action}", tag = "markets",
    params(("venue" = String, Path), ("action" = String, Path,
        description = "connect | disconnect | subscribe | unsubscribe")),
    request_body(content = Option<SubscribeRequest>, description = "subscribe/unsubscribe only"),
    responses((status = 200, body = ConnectionView), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn connection_action(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: OptBody<SubscribeRequest>,
) -> Result<HttpResponse, ApiError> {
    let (venue, action) = path.into_inner();
    let target = format!("connection/{venue}");
    let detail = serde_json::json!({
        "channel": body.as_ref().map(|b| b.channel.clone()),
        "market": body.as_ref().map(|b| b.market.to_string()),
    });
    let r = async {
        let e = state.engine()?;
        if e.adapter_venue() != venue {
            return Err(ApiError::not_found(
                format!("venue connection {venue:?}"),
                Some("venue"),
            ));
        }
        match action.as_str() {
            "subscribe" | "unsubscribe" => {
                let b = body.as_ref().ok_or_else(|| {
                    ApiError::invalid("body", "give {\"channel\": ..., \"market\": ...}")
                })?;
                e.subscribe(
                    &b.channel,
                    &normalize(b.market.clone()),
                    action == "subscribe",
                )
                .await?;
            }
            "connect" => e.connect().await?,
            "disconnect" => e.disconnect().await?,
            other => {
                return Err(ApiError::not_found(
                    format!(
                        "connection action {other:?} (connect, disconnect, subscribe, unsubscribe)"
                    ),
                    Some("action"),
                ))
            }
        }
        Ok(e.connection())
    }
    .await;
    audit_result(
        &state,
        &caller,
        &format!("market.{action}"),
        &target,
        detail,
        &r,
    )
    .await;
    Ok(HttpResponse::Ok().json(r?))
}

/// Capacity of an aggregation as risk last saw it (from the aggregation actor).
#[utoipa::path(get, path = "/api/v1/aggregations/{id}/capacity", tag = "engine",
    params(("id" = String, Path, description = "aggregation id or name")),
    responses((status = 200, description = "{up_flex_mw, down_flex_mw} or null", body = Object),
        (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn capacity(
    state: web::Data<ApiState>,
    _c: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let e = state.engine()?;
    let id = e.aggregation(&parse_key(&path))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "aggregation_id": id.0,
        "capacity": e.capacity(id),
    })))
}

// ----- orders ------------------------------------------------------------------------------

/// Place a manual order (trader): risk checks it like any intent.
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders", request_body = ManualOrder,
    responses((status = 202, body = OrderAccepted), (status = 403, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn new_order(
    state: web::Data<ApiState>,
    caller: Caller,
    body: Body<ManualOrder>,
) -> Result<HttpResponse, ApiError> {
    let mut order = body.into_inner();
    order.market = normalize(order.market);
    order.aggregation = order.aggregation.map(normalize);
    order.strategy = order.strategy.map(normalize);
    let detail = serde_json::to_value(&order).unwrap_or_default();
    let r = async { Ok::<_, ApiError>(state.engine()?.manual_order(&order)?) }.await;
    let target = match &r {
        Ok(id) => format!("order/{id}"),
        Err(_) => "order/new".into(),
    };
    audit_result(&state, &caller, "order.new", &target, detail, &r).await;
    let id = r?;
    state.publish(StreamEvent::Order {
        client_order_id: id.to_string(),
        status: "submitted".into(),
        detail: serde_json::json!({ "by": caller.name }),
    });
    Ok(HttpResponse::Accepted().json(OrderAccepted {
        client_order_id: id.to_string(),
        status: "submitted".into(),
    }))
}

/// Cancel a working order (trader).
#[utoipa::path(delete, path = "/api/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "client order id")),
    responses((status = 202, body = OrderAccepted), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_order(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let target = format!("order/{}", id.chars().take(64).collect::<String>());
    let r = async { Ok::<_, ApiError>(state.engine()?.cancel(&id)?) }.await;
    audit_result(
        &state,
        &caller,
        "order.cancel",
        &target,
        serde_json::Value::Null,
        &r,
    )
    .await;
    r?;
    Ok(HttpResponse::Accepted().json(OrderAccepted {
        client_order_id: id,
        status: "cancelling".into(),
    }))
}
