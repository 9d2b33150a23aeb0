//! The authenticated caller and the cache of verified tokens.
//!
//! Invariants:
//! - [`super::gate`] authenticates every call but the public ones before the handler runs and
//!   puts the [`Caller`] in the request; the extractor here only takes it from there.
//! - Tokens are looked up by their SHA-256 hash; the plaintext is never logged or stored.
//! - A verified token is remembered for [`TOKEN_CACHE_TTL`] (at most [`TOKEN_CACHE_MAX`]
//!   tokens; unknown tokens are never cached), so revoking a token (`vpp token revoke`, another
//!   process) takes effect within that time; expiry is checked on every request.

use super::error::ApiError;
use crate::token::Role;
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use futures_util::future::{ready, Ready};
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

    pub(crate) fn get(&self, hash: &str, now: Instant) -> Option<ApiToken> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(hash)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(t, _)| t.clone())
    }

    pub(crate) fn put(&self, hash: String, token: ApiToken, now: Instant) {
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
    /// The token's SHA-256 (how the store finds it; never the token itself).
    pub token_hash: String,
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
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    /// The caller the gate authenticated (the gate runs before every handler).
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions().get::<Caller>().cloned().ok_or_else(|| {
                ApiError::Unauthorized("missing Authorization: Bearer <token>".into())
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_orders_roles() {
        let c = Caller {
            token_id: 1,
            token_hash: "h".into(),
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
}
