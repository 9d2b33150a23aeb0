//! The gate every request passes before routing: the role matrix, authentication, rate
//! limits, and the audit of refusals.
//!
//! Order (nothing of the body is read before it): find the operation in
//! [`super::roles::OPERATIONS`] (404, or 405 with `Allow`); public operations pass; otherwise
//! authenticate the bearer token (401; unauthenticated calls draw on a per-peer budget, 429
//! when it is spent), the token's own rate limit (429), then the role (403). The caller is
//! put in the request's extensions, where the [`super::Caller`] extractor takes it.
//!
//! Invariants:
//! - A refusal by the gate or by a body/query/path extractor writes at most one audit row at
//!   once per (peer, actor, status, action) and window; further refusals in the window are counted and
//!   written as one summary row (`detail.count`) when the window ends. The map of keys is
//!   bounded ([`MAX_REFUSAL_KEYS`]; beyond it refusals fold into one overflow key), so a flood
//!   writes a bounded number of rows.
//! - The per-peer map of unauthenticated budgets is bounded like the token buckets.

use super::audit;
use super::error::ApiError;
use super::roles::{self, Access, Lookup, Operation};
use super::{ApiState, Caller};
use crate::token::{self, Role};
use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, ResponseError};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Window of the refusal summaries.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(10);
/// Most (peer, actor, status, action) keys summarised at once.
pub const MAX_REFUSAL_KEYS: usize = 256;

/// The operation a request matched (in the request's extensions).
#[derive(Debug, Clone, Copy)]
pub struct Matched(pub &'static Operation);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefusalKey {
    peer: IpAddr,
    actor: String,
    status: u16,
    /// The operation's audit action (from the role matrix: a bounded set).
    action: String,
}

#[derive(Debug)]
struct RefusalEntry {
    since: Instant,
    /// Refusals after the first (which was written at once).
    more: u64,
    action: String,
    target: String,
    outcome: String,
}

/// One audit row to write.
struct Row {
    actor: String,
    action: String,
    target: String,
    outcome: String,
    detail: serde_json::Value,
}

/// One refused call.
#[derive(Debug, Clone, Copy)]
struct Refusal<'a> {
    peer: IpAddr,
    actor: &'a str,
    status: u16,
    action: &'a str,
    target: &'a str,
    outcome: &'a str,
}

/// Counted, bounded audit of refusals.
#[derive(Debug)]
pub struct RefusalLog {
    window: Duration,
    max_keys: usize,
    map: Mutex<HashMap<RefusalKey, RefusalEntry>>,
}

impl RefusalLog {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys: max_keys.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one refusal; returns the rows to write now (the first of its window, and the
    /// summaries of windows that ended).
    fn record(&self, r: &Refusal<'_>, now: Instant) -> Vec<Row> {
        let Refusal {
            peer,
            actor,
            status,
            action,
            target,
            outcome,
        } = *r;
        let mut rows = self.take_expired(now);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = RefusalKey {
            peer,
            actor: actor.to_owned(),
            status,
            action: action.to_owned(),
        };
        if !map.contains_key(&key) && map.len() >= self.max_keys {
            key = RefusalKey {
                peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                actor: "*".into(),
                status: 0,
                action: "*".into(),
            };
        }
        match map.get_mut(&key) {
            Some(e) => e.more += 1,
            None => {
                map.insert(
                    key.clone(),
                    RefusalEntry {
                        since: now,
                        more: 0,
                        action: action.to_owned(),
                        target: target.to_owned(),
                        outcome: outcome.to_owned(),
                    },
                );
                rows.push(Row {
                    actor: key.actor.clone(),
                    action: action.to_owned(),
                    target: target.to_owned(),
                    outcome: outcome.to_owned(),
                    detail: serde_json::json!({ "peer": key.peer.to_string(), "count": 1 }),
                });
            }
        }
        rows
    }

    /// Removes the keys whose window ended; a summary row for each that counted more.
    fn take_expired(&self, now: Instant) -> Vec<Row> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let window = self.window;
        let mut rows = Vec::new();
        map.retain(|k, e| {
            if now.saturating_duration_since(e.since) < window {
                return true;
            }
            if e.more > 0 {
                rows.push(Row {
                    actor: k.actor.clone(),
                    action: e.action.clone(),
                    target: e.target.clone(),
                    outcome: format!("{} (and {} more refusals)", e.outcome, e.more),
                    detail: serde_json::json!({
                        "peer": k.peer.to_string(),
                        "count": e.more,
                        "window_s": window.as_secs(),
                        "summary": true,
                    }),
                });
            }
            false
        });
        rows
    }

    pub fn tracked(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

async fn write_rows(state: &ApiState, rows: Vec<Row>) {
    for r in rows {
        audit::write(state, &r.actor, &r.action, &r.target, &r.outcome, r.detail).await;
    }
}

/// Writes the summaries of ended windows (called periodically by the server).
pub async fn flush_refusals(state: &ApiState) {
    let rows = state.refusals.take_expired(Instant::now());
    write_rows(state, rows).await;
}

fn peer_of(req: &HttpRequest) -> IpAddr {
    req.peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Audits one refused call (bounded; see the module invariants). Reads are not audited.
pub async fn refused(req: &HttpRequest, err: &ApiError) {
    if !is_state_changing(req.method()) {
        return;
    }
    let Some(state) = req.app_data::<web::Data<ApiState>>() else {
        return;
    };
    let actor = req
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_owned(), |c| c.name.clone());
    let action = req
        .extensions()
        .get::<Matched>()
        .and_then(|m| m.0.action)
        .map_or_else(|| format!("{} {}", req.method(), req.path()), str::to_owned);
    let outcome = err.audit_outcome();
    let refusal = Refusal {
        peer: peer_of(req),
        actor: &actor,
        status: err.status_code().as_u16(),
        action: &action,
        target: req.path(),
        outcome: &outcome,
    };
    let rows = state.refusals.record(&refusal, Instant::now());
    write_rows(state, rows).await;
}

/// The token of a request: `Authorization: Bearer`, or `?token=` on the WebSocket feed (a
/// browser cannot set headers on a WebSocket).
fn bearer(req: &HttpRequest, allow_query: bool) -> Result<String, ApiError> {
    let header_value = req.headers().get(header::AUTHORIZATION);
    let token = match header_value {
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::Unauthorized("Authorization header is not ASCII".into()))?;
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::Unauthorized("expected Authorization: Bearer <token>".into())
                })?
                .to_owned()
        }
        None if allow_query => {
            web::Query::<HashMap<String, String>>::from_query(req.query_string())
                .ok()
                .and_then(|q| q.get("token").cloned())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::Unauthorized(
                        "missing token: send Authorization: Bearer <token> or ?token=<token>"
                            .into(),
                    )
                })?
        }
        None => {
            return Err(ApiError::Unauthorized(
                "missing Authorization: Bearer <token>".into(),
            ))
        }
    };
    if token.len() > 256 {
        return Err(ApiError::Unauthorized("token is too long".into()));
    }
    Ok(token)
}

/// Authenticates: the token cache first, then (within the peer's budget) the store.
async fn authenticate(
    state: &ApiState,
    req: &HttpRequest,
    allow_query: bool,
) -> Result<Caller, ApiError> {
    let peer = peer_of(req);
    let found = match bearer(req, allow_query) {
        Ok(token) => {
            let hash = token::hash(&token);
            match state.tokens.get(&hash, Instant::now()) {
                Some(row) => Some((hash, row)),
                None => {
                    // An unverified caller spends the peer's budget before the store is asked.
                    if let Err(retry_after_s) = state.peers.peek(peer, Instant::now()) {
                        return Err(ApiError::RateLimited { retry_after_s });
                    }
                    let row = state.store.find_api_token_by_hash(&hash).await?;
                    if let Some(row) = &row {
                        state.tokens.put(hash.clone(), row.clone(), Instant::now());
                    }
                    row.map(|row| (hash, row))
                }
            }
        }
        Err(e) => return Err(spend(state, peer, e)),
    };
    let Some((hash, row)) = found else {
        return Err(spend(
            state,
            peer,
            ApiError::Unauthorized("unknown token".into()),
        ));
    };
    if row.revoked_at.is_some() {
        let e = ApiError::Unauthorized(format!("token {:?} is revoked", row.name));
        return Err(spend(state, peer, e));
    }
    if !row.is_valid_at(chrono::Utc::now()) {
        let e = ApiError::Unauthorized(format!("token {:?} has expired", row.name));
        return Err(spend(state, peer, e));
    }
    let role: Role = row.role.parse().map_err(|e: String| {
        tracing::error!(token_id = row.id, error = %e, "stored token has an unknown role");
        ApiError::Unauthorized("token has an unknown role".into())
    })?;
    let caller = Caller {
        token_id: row.id,
        token_hash: hash,
        name: row.name,
        role,
    };
    if let Err(retry_after_s) = state.limiter.check(caller.token_id, Instant::now()) {
        req.extensions_mut().insert(caller);
        return Err(ApiError::RateLimited { retry_after_s });
    }
    Ok(caller)
}

/// Takes one request from the peer's unauthenticated budget; 429 instead of `e` when spent.
fn spend(state: &ApiState, peer: IpAddr, e: ApiError) -> ApiError {
    match state.peers.check(peer, Instant::now()) {
        Ok(()) => e,
        Err(retry_after_s) => ApiError::RateLimited { retry_after_s },
    }
}

fn deny(caller: &Caller, op: &Operation) -> Option<ApiError> {
    let need = op.access.min_role()?;
    (caller.role < need).then(|| {
        ApiError::Forbidden(format!(
            "token {:?} has role {}; {} {} needs {}",
            caller.name, caller.role, op.method, op.path, need
        ))
    })
}

/// The middleware (see the module docs).
pub async fn gate(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<EitherBody<BoxBody>>, actix_web::Error> {
    let op = match roles::lookup(req.method().as_str(), req.path()) {
        Lookup::Found(op) => op,
        Lookup::NotFound => {
            let e = ApiError::not_found(format!("route {} {}", req.method(), req.path()), None);
            return Ok(req.into_response(e.error_response()).map_into_right_body());
        }
        Lookup::MethodNotAllowed(methods) => {
            let e = ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                path: req.path().to_owned(),
                allow: methods.join(", "),
            };
            return Ok(req.into_response(e.error_response()).map_into_right_body());
        }
    };
    req.extensions_mut().insert(Matched(op));
    if op.access != Access::Public {
        let Some(state) = req.app_data::<web::Data<ApiState>>().cloned() else {
            let e = ApiError::Internal("api state missing".into());
            return Ok(req.into_response(e.error_response()).map_into_right_body());
        };
        let http = req.request().clone();
        let allow_query = op.path == "/api/v1/stream";
        let refusal = match authenticate(&state, &http, allow_query).await {
            Ok(caller) => {
                let denied = deny(&caller, op);
                req.extensions_mut().insert(caller);
                denied
            }
            Err(e) => Some(e),
        };
        if let Some(e) = refusal {
            refused(&http, &e).await;
            return Ok(req.into_response(e.error_response()).map_into_right_body());
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_and_bounded() {
        let log = RefusalLog::new(Duration::from_secs(10), 4);
        let t0 = Instant::now();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let mut written = 0;
        let r = |peer| Refusal {
            peer,
            actor: "anonymous",
            status: 401,
            action: "engine.stop",
            target: "/x",
            outcome: "denied",
        };
        for i in 0..1_000u64 {
            let at = t0 + Duration::from_millis(i);
            written += log.record(&r(peer), at).len();
        }
        assert_eq!(written, 1, "one row at once, the rest counted");
        assert!(log.tracked() <= 4);
        let rows = log.take_expired(t0 + Duration::from_secs(11));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].detail["count"], 999);
        assert_eq!(log.tracked(), 0);
        // Many peers: the map stays bounded and the rest fold into one key.
        for i in 0..100u8 {
            let p = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
            log.record(&r(p), t0);
        }
        assert!(log.tracked() <= 5, "{}", log.tracked());
    }
}
