//! Bearer-token authentication and role checks.
//!
//! Invariants:
//! - Every call but the public ones (`/health`, `/metrics`, the OpenAPI document, the
//!   dashboard's static files) extracts a [`Caller`]: a missing, unknown, revoked or expired
//!   token is 401; a token over its rate limit is 429.
//! - Tokens are looked up by their SHA-256 hash; the plaintext is never logged or stored.
//! - A refused state-changing call (401 here, 403 via [`Caller::authorize`]) is audited.
//! - A verified token is remembered for [`TOKEN_CACHE_TTL`] (at most [`TOKEN_CACHE_MAX`]
//!   tokens; unknown tokens are never cached), so revoking a token (`vpp token revoke`, another
//!   process) takes effect within that time; expiry is checked on every request.

use super::audit::{audit, audit_anonymous};
use super::error::ApiError;
use super::ApiState;
use crate::token::{self, Role};
use actix_web::dev::Payload;
use actix_web::http::{header, Method};
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use vpp_persistence::ApiToken;

/// How long a verified token is trusted without asking the store again.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);
/// Most tokens remembered at once (the map is cleared when full).
pub const TOKEN_CACHE_MAX: usize = 1_024;

/// Verified tokens by hash, each with the instant it was read from the store.
#[derive(Debug)]
pub struct TokenCache {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<String, (ApiToken, Instant)>>,
}

impl TokenCache {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, hash: &str, now: Instant) -> Option<ApiToken> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(hash)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(t, _)| t.clone())
    }

    fn put(&self, hash: String, token: ApiToken, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.max && !map.contains_key(&hash) {
            map.clear();
        }
        map.insert(hash, (token, now));
    }
}

/// Who is calling: from a valid bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: u64,
    /// The token's name: the actor in the audit log.
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// 403 unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token {:?} has role {}; this call needs {role}",
                self.name, self.role
            )))
        }
    }

    /// Like [`Caller::require`], and a refusal is written to the audit log as `denied`.
    /// Use it first in every state-changing handler.
    pub async fn authorize(
        &self,
        state: &ApiState,
        role: Role,
        action: &str,
        target: &str,
    ) -> Result<(), ApiError> {
        if let Err(e) = self.require(role) {
            audit(
                state,
                self,
                action,
                target,
                &e.audit_outcome(),
                serde_json::Value::Null,
            )
            .await;
            return Err(e);
        }
        Ok(())
    }
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The token from `Authorization: Bearer <token>`.
fn bearer(req: &HttpRequest) -> Result<String, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer <token>".into()))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("Authorization header is not ASCII".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("expected Authorization: Bearer <token>".into()))?;
    if token.len() > 256 {
        return Err(ApiError::Unauthorized("token is too long".into()));
    }
    Ok(token.to_owned())
}

async fn authenticate(state: &ApiState, req: &HttpRequest) -> Result<Caller, ApiError> {
    let token = bearer(req)?;
    let hash = token::hash(&token);
    let row = match state.tokens.get(&hash, Instant::now()) {
        Some(row) => row,
        None => {
            let row = state
                .store
                .find_api_token_by_hash(&hash)
                .await?
                .ok_or_else(|| ApiError::Unauthorized("unknown token".into()))?;
            state.tokens.put(hash, row.clone(), Instant::now());
            row
        }
    };
    let now = chrono::Utc::now();
    if row.revoked_at.is_some() {
        return Err(ApiError::Unauthorized(format!(
            "token {:?} is revoked",
            row.name
        )));
    }
    if !row.is_valid_at(now) {
        return Err(ApiError::Unauthorized(format!(
            "token {:?} has expired",
            row.name
        )));
    }
    let role: Role = row.role.parse().map_err(|e: String| {
        tracing::error!(token_id = row.id, error = %e, "stored token has an unknown role");
        ApiError::Unauthorized("token has an unknown role".into())
    })?;
    let caller = Caller {
        token_id: row.id,
        name: row.name,
        role,
    };
    if let Err(retry_after_s) = state.limiter.check(caller.token_id, Instant::now()) {
        let e = ApiError::RateLimited { retry_after_s };
        if is_state_changing(req.method()) {
            let action = format!("{} {}", req.method(), req.path());
            audit(
                state,
                &caller,
                &action,
                req.path(),
                &e.audit_outcome(),
                serde_json::Value::Null,
            )
            .await;
        }
        return Err(e);
    }
    Ok(caller)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<ApiState>>()
                .ok_or_else(|| ApiError::Internal("api state missing".into()))?
                .clone();
            match authenticate(&state, &req).await {
                Ok(c) => Ok(c),
                Err(e) => {
                    if matches!(e, ApiError::Unauthorized(_)) && is_state_changing(req.method()) {
                        let action = format!("{} {}", req.method(), req.path());
                        audit_anonymous(&state, &action, req.path(), &e.audit_outcome()).await;
                    }
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_orders_roles() {
        let c = Caller {
            token_id: 1,
            name: "v".into(),
            role: Role::Viewer,
        };
        assert!(c.require(Role::Viewer).is_ok());
        let e = c.require(Role::Trader).unwrap_err();
        assert!(matches!(e, ApiError::Forbidden(_)));
        let a = Caller {
            role: Role::Admin,
            ..c
        };
        assert!(a.require(Role::Trader).is_ok());
    }

    #[test]
    fn the_cache_forgets_after_its_ttl_and_stays_bounded() {
        let c = TokenCache::new(Duration::from_millis(100), 2);
        let t0 = Instant::now();
        let tok = ApiToken {
            id: 1,
            name: "a".into(),
            role: "viewer".into(),
            token_hash: "h".into(),
            created_at: chrono::Utc::now(),
            expires_at: None,
            revoked_at: None,
        };
        c.put("h1".into(), tok.clone(), t0);
        assert!(c.get("h1", t0 + Duration::from_millis(50)).is_some());
        assert!(c.get("h1", t0 + Duration::from_millis(100)).is_none());
        c.put("h2".into(), tok.clone(), t0);
        c.put("h3".into(), tok, t0);
        assert!(c.map.lock().unwrap().len() <= 2);
    }

    #[test]
    fn bearer_parsing() {
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer vpp_abc"))
            .to_http_request();
        assert_eq!(bearer(&req).unwrap(), "vpp_abc");
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Basic xyz"))
            .to_http_request();
        assert!(matches!(bearer(&req), Err(ApiError::Unauthorized(_))));
        let req = actix_web::test::TestRequest::default().to_http_request();
        assert!(matches!(bearer(&req), Err(ApiError::Unauthorized(_))));
    }
}
