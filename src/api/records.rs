//! `/api/v1` records, read-only: orders, fills, positions, execution records (the order
//! journal), risk events, dispatch instructions and deviations, and the audit log.
//!
//! Invariants:
//! - Everything is read from the store (the journal's projections), never from actor state, so
//!   a list is consistent with what a restart would replay.
//! - Every list is paginated (`limit` 1..=500, `offset`) and filterable; a bad filter value is
//!   a 400 naming the parameter. Reads of log-like tables are bounded by the store's
//!   `MAX_PAGE` per call.
//! - Viewers read everything here except the audit log, which names tokens: admin only.
//! - Paths shared with other modules (`/orders` takes manual orders by POST in `engine.rs`)
//!   are registered with a GET guard so the router falls through for other methods.

use super::auth::Caller;
use super::catalog::page_req;
use super::error::ApiError;
use super::page::Page;
use super::ApiState;
use crate::token::Role;
use actix_web::{guard, web, HttpResponse};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vpp_engine::ids::{ClientOrderId, ResourceId};
use vpp_engine::order::{Order, OrderStatus};
use vpp_persistence::{StoredOrderEvent, MAX_PAGE};

pub fn routes(cfg: &mut web::ServiceConfig) {
    let get = |path: &str| web::resource(path.to_owned()).guard(guard::Get());
    cfg.service(get("/orders").route(web::get().to(list_orders)))
        .service(get("/orders/{id}").route(web::get().to(get_order)))
        .service(get("/orders/{id}/events").route(web::get().to(order_events)))
        .service(get("/fills").route(web::get().to(list_fills)))
        .service(get("/positions").route(web::get().to(list_positions)))
        .service(get("/execution-records").route(web::get().to(execution_records)))
        .service(get("/risk/events").route(web::get().to(risk_events)))
        .service(get("/dispatch/instructions").route(web::get().to(dispatch_instructions)))
        .service(get("/dispatch/deviations").route(web::get().to(deviations)))
        .service(get("/audit").route(web::get().to(audit_log)));
}

fn coid(raw: &str, field: &str) -> Result<ClientOrderId, ApiError> {
    ClientOrderId::new(raw).map_err(|e| ApiError::BadRequest {
        code: "bad_path",
        message: e.to_string(),
        field: Some(field.to_owned()),
    })
}

fn status_filter(raw: Option<&str>) -> Result<Option<StatusFilter>, ApiError> {
    match raw {
        None => Ok(None),
        Some("open") => Ok(Some(StatusFilter::Open)),
        Some("terminal") | Some("done") => Ok(Some(StatusFilter::Terminal)),
        Some(s) => OrderStatus::parse(s)
            .map(|st| Some(StatusFilter::Is(st)))
            .map_err(|e| ApiError::BadRequest {
                code: "bad_query",
                message: format!("status={s:?}: {e}; or use open / terminal"),
                field: Some("status".into()),
            }),
    }
}

#[derive(Debug, Clone, Copy)]
enum StatusFilter {
    Open,
    Terminal,
    Is(OrderStatus),
}

impl StatusFilter {
    fn matches(self, s: OrderStatus) -> bool {
        match self {
            Self::Open => !s.is_terminal(),
            Self::Terminal => s.is_terminal(),
            Self::Is(x) => x == s,
        }
    }
}

// ------------------------------------------------------------------ orders

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderFilter {
    limit: Option<u32>,
    offset: Option<u64>,
    /// `open`, `terminal`, or one state: new, accepted, partially_filled, filled,
    /// pending_cancel, cancelled, rejected, expired.
    status: Option<String>,
    strategy_id: Option<u64>,
    aggregation_id: Option<u64>,
    market_id: Option<u64>,
    /// buy or sell.
    side: Option<String>,
    /// Delivery intervals starting at or after (RFC 3339).
    from: Option<String>,
    /// Delivery intervals starting before (RFC 3339).
    to: Option<String>,
}

/// Parses an RFC 3339 instant with a 400 naming the parameter.
pub(crate) fn instant(field: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|v| {
        DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| ApiError::BadRequest {
                code: "bad_query",
                message: format!(
                    "{field}={v:?} is not an RFC 3339 instant ({e}), e.g. 2024-05-01T00:00:00Z"
                ),
                field: Some(field.to_owned()),
            })
    })
    .transpose()
}

fn side_filter(raw: Option<&str>) -> Result<Option<vpp_engine::order::Side>, ApiError> {
    match raw {
        None => Ok(None),
        Some("buy") => Ok(Some(vpp_engine::order::Side::Buy)),
        Some("sell") => Ok(Some(vpp_engine::order::Side::Sell)),
        Some(s) => Err(ApiError::BadRequest {
            code: "bad_query",
            message: format!("side={s:?}: expected buy or sell"),
            field: Some("side".into()),
        }),
    }
}

/// Orders matching `q`, newest update first.
pub(crate) async fn filtered_orders(
    state: &ApiState,
    q: &OrderFilter,
) -> Result<Vec<Order>, ApiError> {
    let status = status_filter(q.status.as_deref())?;
    let side = side_filter(q.side.as_deref())?;
    let from = instant("from", q.from.as_deref())?;
    let to = instant("to", q.to.as_deref())?;
    let open_only = matches!(status, Some(StatusFilter::Open));
    let mut orders: Vec<Order> = state
        .store
        .list_orders(open_only)
        .await?
        .into_iter()
        .filter(|o| status.is_none_or(|f| f.matches(o.status)))
        .filter(|o| {
            q.strategy_id
                .is_none_or(|s| o.request.strategy_id.map(|x| x.0) == Some(s))
        })
        .filter(|o| {
            q.aggregation_id
                .is_none_or(|a| o.request.aggregation_id.0 == a)
        })
        .filter(|o| q.market_id.is_none_or(|m| o.request.market_id.0 == m))
        .filter(|o| side.is_none_or(|s| o.request.side == s))
        .filter(|o| from.is_none_or(|f| o.request.interval.start() >= f))
        .filter(|o| to.is_none_or(|t| o.request.interval.start() < t))
        .collect();
    orders.sort_by(|a, b| {
        b.updated_at
            .cmp(&a.updated_at)
            .then_with(|| b.request.client_order_id.cmp(&a.request.client_order_id))
    });
    Ok(orders)
}

#[utoipa::path(get, path = "/api/v1/orders", tag = "records", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list_orders(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<OrderFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let req = page_req(q.limit, q.offset)?;
    let orders = filtered_orders(&state, &q).await?;
    Ok(HttpResponse::Ok().json(Page::from_vec(orders, req)))
}

#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "records", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn get_order(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let id = coid(&path, "id")?;
    let order = state
        .store
        .get_order(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("order {id}"), Some("id")))?;
    let fills = state.store.list_fills(Some(&id)).await?;
    let mut v = serde_json::to_value(&order).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["fills"] = serde_json::to_value(&fills).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(v))
}

/// One journaled event of an order, as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecutionRecord {
    pub seq: u64,
    pub client_order_id: String,
    pub event: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub at: DateTime<Utc>,
    /// Why the ledger refused the event when it was journaled.
    pub error: Option<String>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl ExecutionRecord {
    fn of(e: &StoredOrderEvent) -> Self {
        Self {
            seq: e.seq,
            client_order_id: e.client_order_id.to_string(),
            event: e.event.clone(),
            from: e.from.map(|s| s.as_str().to_owned()),
            to: e.to.map(|s| s.as_str().to_owned()),
            at: e.at,
            error: e.error.clone(),
            payload: serde_json::to_value(&e.payload).unwrap_or(serde_json::Value::Null),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/orders/{id}/events", tag = "records", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn order_events(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let id = coid(&path, "id")?;
    let events = state.store.order_events(&id).await?;
    if events.is_empty() && state.store.get_order(&id).await?.is_none() {
        return Err(ApiError::not_found(format!("order {id}"), Some("id")));
    }
    let records: Vec<ExecutionRecord> = events.iter().map(ExecutionRecord::of).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "client_order_id": id, "items": records })))
}

/// Execution records of the orders matching the order filter (newest orders first, each
/// order's events in journal order). The page cuts orders, so one order's life is never split.
#[utoipa::path(get, path = "/api/v1/execution-records", tag = "records", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn execution_records(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<OrderFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let req = page_req(q.limit, q.offset)?;
    let orders = filtered_orders(&state, &q).await?;
    let page = Page::from_vec(orders, req);
    let mut records = Vec::new();
    for o in &page.items {
        for e in state.store.order_events(o.id()).await? {
            records.push(ExecutionRecord::of(&e));
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "items": records,
        "orders_total": page.total,
        "limit": page.limit,
        "offset": page.offset,
    })))
}

// ------------------------------------------------------------------ fills and positions

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FillFilter {
    limit: Option<u32>,
    offset: Option<u64>,
    client_order_id: Option<String>,
    aggregation_id: Option<u64>,
    market_id: Option<u64>,
    side: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/fills", tag = "records", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list_fills(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<FillFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let req = page_req(q.limit, q.offset)?;
    let order = q
        .client_order_id
        .as_deref()
        .map(|c| coid(c, "client_order_id"))
        .transpose()?;
    let side = side_filter(q.side.as_deref())?;
    let from = instant("from", q.from.as_deref())?;
    let to = instant("to", q.to.as_deref())?;
    let mut fills: Vec<_> = state
        .store
        .list_fills(order.as_ref())
        .await?
        .into_iter()
        .filter(|f| q.aggregation_id.is_none_or(|a| f.key.aggregation_id.0 == a))
        .filter(|f| q.market_id.is_none_or(|m| f.key.market_id.0 == m))
        .filter(|f| side.is_none_or(|s| f.side == s))
        .filter(|f| from.is_none_or(|t| f.at >= t))
        .filter(|f| to.is_none_or(|t| f.at < t))
        .collect();
    // Newest first: an operator looks at what just happened.
    fills.reverse();
    Ok(HttpResponse::Ok().json(Page::from_vec(fills, req)))
}

/// A position with its derived figures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PositionView {
    pub aggregation_id: u64,
    pub market_id: u64,
    pub interval_start: DateTime<Utc>,
    #[schema(value_type = String)]
    pub bought_mw: Decimal,
    #[schema(value_type = String)]
    pub sold_mw: Decimal,
    /// sold − bought: positive means the aggregation must deliver.
    #[schema(value_type = String)]
    pub net_sold_mw: Decimal,
    /// Cash of the trades so far: sold value − bought value over a 15-minute interval
    /// (MW × CNY/MWh × 0.25 h).
    #[schema(value_type = String)]
    pub cash_cny: Decimal,
    #[schema(value_type = String)]
    pub bought_value: Decimal,
    #[schema(value_type = String)]
    pub sold_value: Decimal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionFilter {
    limit: Option<u32>,
    offset: Option<u64>,
    aggregation_id: Option<u64>,
    market_id: Option<u64>,
    from: Option<String>,
    to: Option<String>,
    /// Leave out flat positions (bought == sold).
    nonzero: Option<bool>,
}

pub(crate) async fn positions(state: &ApiState) -> Result<Vec<PositionView>, ApiError> {
    let quarter = Decimal::new(25, 2);
    Ok(state
        .store
        .list_positions()
        .await?
        .into_iter()
        .map(|(k, p)| PositionView {
            aggregation_id: k.aggregation_id.0,
            market_id: k.market_id.0,
            interval_start: k.interval.start(),
            bought_mw: p.bought_mw,
            sold_mw: p.sold_mw,
            net_sold_mw: p.net_sold_mw(),
            cash_cny: ((p.sold_value - p.bought_value) * quarter).round_dp(2),
            bought_value: p.bought_value,
            sold_value: p.sold_value,
        })
        .collect())
}

#[utoipa::path(get, path = "/api/v1/positions", tag = "records", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list_positions(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<PositionFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let req = page_req(q.limit, q.offset)?;
    let from = instant("from", q.from.as_deref())?;
    let to = instant("to", q.to.as_deref())?;
    let list: Vec<PositionView> = positions(&state)
        .await?
        .into_iter()
        .filter(|p| q.aggregation_id.is_none_or(|a| p.aggregation_id == a))
        .filter(|p| q.market_id.is_none_or(|m| p.market_id == m))
        .filter(|p| from.is_none_or(|f| p.interval_start >= f))
        .filter(|p| to.is_none_or(|t| p.interval_start < t))
        .filter(|p| !q.nonzero.unwrap_or(false) || p.bought_mw != p.sold_mw)
        .collect();
    Ok(HttpResponse::Ok().json(Page::from_vec(list, req)))
}

// ------------------------------------------------------------------ risk, dispatch, audit

/// Cursor paging of the store's log tables: `after_id` (exclusive) and `limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFilter {
    limit: Option<u32>,
    /// Only rows with an id above this (cursor; the answer's `next_after_id` continues).
    after_id: Option<u64>,
    severity: Option<String>,
    rule: Option<String>,
    strategy_id: Option<u64>,
    aggregation_id: Option<u64>,
    resource_id: Option<u64>,
    actor: Option<String>,
    action: Option<String>,
}

/// A cursor page: `items`, and `next_after_id` to fetch the next one (absent at the end).
#[derive(Debug, Serialize)]
struct CursorPage<T: Serialize> {
    items: Vec<T>,
    limit: u32,
    next_after_id: Option<u64>,
}

/// Reads rows after `after_id` in store pages until `limit` rows pass `keep` or the table
/// ends; at most `MAX_SCAN` rows are scanned per call so a rare filter cannot read the table.
async fn scan<T, F, Fut>(
    after_id: u64,
    limit: u32,
    mut fetch: F,
    id_of: impl Fn(&T) -> u64,
    keep: impl Fn(&T) -> bool,
) -> Result<(Vec<T>, Option<u64>), ApiError>
where
    F: FnMut(u64, u32) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, vpp_persistence::StoreError>>,
{
    const MAX_SCAN: usize = 50_000;
    let mut out = Vec::new();
    let mut cursor = after_id;
    let mut scanned = 0usize;
    let chunk = MAX_PAGE.min(2_000);
    loop {
        let rows = fetch(cursor, chunk).await?;
        let n = rows.len();
        scanned += n;
        for row in rows {
            cursor = id_of(&row);
            if keep(&row) {
                out.push(row);
                if out.len() >= limit as usize {
                    return Ok((out, Some(cursor)));
                }
            }
        }
        if n < chunk as usize {
            return Ok((out, None));
        }
        if scanned >= MAX_SCAN {
            return Ok((out, Some(cursor)));
        }
    }
}

#[utoipa::path(get, path = "/api/v1/risk/events", tag = "records", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn risk_events(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<LogFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let req = page_req(q.limit, None)?;
    let store = state.store.clone();
    let (items, next) = scan(
        q.after_id.unwrap_or(0),
        req.limit,
        |after, n| {
            let store = store.clone();
            async move { store.list_risk_events(after, n).await }
        },
        |e| e.id,
        |e| {
            q.severity.as_deref().is_none_or(|s| e.severity == s)
                && q.rule.as_deref().is_none_or(|r| e.rule == r)
                && q.strategy_id
                    .is_none_or(|s| e.strategy_id.map(|x| x.0) == Some(s))
                && q.aggregation_id
                    .is_none_or(|a| e.aggregation_id.map(|x| x.0) == Some(a))
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(CursorPage {
        items,
        limit: req.limit,
        next_after_id: next,
    }))
}

/// Deviations: the risk monitor's delivery-deviation events (rules starting `deviation`).
#[utoipa::path(get, path = "/api/v1/dispatch/deviations", tag = "records", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn deviations(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<LogFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let req = page_req(q.limit, None)?;
    let store = state.store.clone();
    let (items, next) = scan(
        q.after_id.unwrap_or(0),
        req.limit,
        |after, n| {
            let store = store.clone();
            async move { store.list_risk_events(after, n).await }
        },
        |e| e.id,
        |e| {
            e.rule.starts_with("deviation")
                && q.severity.as_deref().is_none_or(|s| e.severity == s)
                && q.aggregation_id
                    .is_none_or(|a| e.aggregation_id.map(|x| x.0) == Some(a))
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(CursorPage {
        items,
        limit: req.limit,
        next_after_id: next,
    }))
}

#[utoipa::path(get, path = "/api/v1/dispatch/instructions", tag = "records", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn dispatch_instructions(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<LogFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let req = page_req(q.limit, None)?;
    let resource = q.resource_id.map(ResourceId);
    let store = state.store.clone();
    let (items, next) = scan(
        q.after_id.unwrap_or(0),
        req.limit,
        |after, n| {
            let store = store.clone();
            async move { store.list_dispatch_instructions(resource, after, n).await }
        },
        |d| d.id,
        |d| q.aggregation_id.is_none_or(|a| d.aggregation_id.0 == a),
    )
    .await?;
    Ok(HttpResponse::Ok().json(CursorPage {
        items,
        limit: req.limit,
        next_after_id: next,
    }))
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "records", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn audit_log(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<LogFilter>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Admin)?;
    let req = page_req(q.limit, None)?;
    let store = state.store.clone();
    let (items, next) = scan(
        q.after_id.unwrap_or(0),
        req.limit,
        |after, n| {
            let store = store.clone();
            async move { store.list_audit(after, n).await }
        },
        |a| a.id,
        |a| {
            q.actor.as_deref().is_none_or(|x| a.actor == x)
                && q.action
                    .as_deref()
                    .is_none_or(|x| a.action == x || a.action.starts_with(&format!("{x}.")))
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(CursorPage {
        items,
        limit: req.limit,
        next_after_id: next,
    }))
}
