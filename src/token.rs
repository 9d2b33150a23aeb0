//! Operator API tokens: generation, hashing and the `vpp token` commands' logic.
//!
//! Invariants:
//! - The plaintext token exists only in the answer to `create` (printed once); the store keeps
//!   its SHA-256 hex digest, so a leaked database does not leak usable tokens.
//! - Tokens carry 256 bits from the OS random source, prefixed `vpp_` so they are easy to
//!   recognise (and to scrub) in logs and config files.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use vpp_persistence::{ApiToken, NewApiToken, Store, StoreError};

/// What a token may do: viewer reads, trader also trades and works strategy kill switches,
/// admin does everything. Ordered: a higher role includes the lower ones.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Trader,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Trader => "trader",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "trader" => Ok(Role::Trader),
            "admin" => Ok(Role::Admin),
            other => Err(format!("role {other:?}: expected viewer, trader or admin")),
        }
    }
}

/// Prefix of every token.
pub const TOKEN_PREFIX: &str = "vpp_";
/// Longest token name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A fresh token: `vpp_` and 64 hex digits (256 random bits).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", to_hex(&bytes))
}

/// The stored form of a token: lowercase hex SHA-256.
pub fn hash(token: &str) -> String {
    to_hex(&Sha256::digest(token.as_bytes()))
}

fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token name must be 1..={MAX_NAME_LEN} characters of [A-Za-z0-9_.@-], got {0:?}")]
    BadName(String),
    #[error("--expires-in-days must be 1..=3650, got {0}")]
    BadExpiry(u32),
    #[error("no token with id {0}")]
    NotFound(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'))
}

/// Creates a token; returns the stored row and the plaintext (show it once).
pub async fn create(
    store: &Store,
    name: &str,
    role: Role,
    expires_in_days: Option<u32>,
) -> Result<(ApiToken, String), TokenError> {
    if !valid_name(name) {
        return Err(TokenError::BadName(name.to_owned()));
    }
    let now = chrono::Utc::now();
    let expires_at = match expires_in_days {
        None => None,
        Some(d) if (1..=3650).contains(&d) => Some(now + chrono::Duration::days(i64::from(d))),
        Some(d) => return Err(TokenError::BadExpiry(d)),
    };
    let plaintext = generate();
    let row = store
        .create_api_token(&NewApiToken {
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            token_hash: hash(&plaintext),
            created_at: now,
            expires_at,
        })
        .await?;
    Ok((row, plaintext))
}

/// Revokes a token by id (idempotent for an already revoked one).
pub async fn revoke(store: &Store, id: u64) -> Result<(), TokenError> {
    let known = store.list_api_tokens().await?.iter().any(|t| t.id == id);
    if !known {
        return Err(TokenError::NotFound(id));
    }
    store.revoke_api_token(id, chrono::Utc::now()).await?;
    Ok(())
}

/// The `vpp token list` table (hashes are never printed).
pub fn list_table(tokens: &[ApiToken], now: chrono::DateTime<chrono::Utc>) -> String {
    use fmt::Write;
    let mut out = format!(
        "{:>4}  {:<24} {:<7} {:<20} {:<20} {}\n",
        "ID", "NAME", "ROLE", "CREATED", "EXPIRES", "STATE"
    );
    for t in tokens {
        let state = if t.revoked_at.is_some() {
            "revoked"
        } else if !t.is_valid_at(now) {
            "expired"
        } else {
            "active"
        };
        let _ = writeln!(
            out,
            "{:>4}  {:<24} {:<7} {:<20} {:<20} {state}",
            t.id,
            t.name,
            t.role,
            t.created_at.format("%Y-%m-%d %H:%M:%S"),
            t.expires_at.map_or_else(
                || "never".to_owned(),
                |e| e.format("%Y-%m-%d %H:%M:%S").to_string()
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hash_to_hex_sha256() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        // Known vector: SHA-256("abc").
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(hash(&a), a);
    }

    #[test]
    fn roles_parse_and_order() {
        assert_eq!("trader".parse::<Role>(), Ok(Role::Trader));
        assert!("root".parse::<Role>().is_err());
        assert!(Role::Admin > Role::Trader && Role::Trader > Role::Viewer);
        assert!(valid_name("ops-alice@site.1"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(""));
    }

    #[tokio::test]
    async fn create_stores_only_the_hash_and_revoke_invalidates() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let (row, plain) = create(&store, "alice", Role::Trader, Some(30))
            .await
            .unwrap();
        assert_eq!(row.token_hash, hash(&plain));
        let found = store
            .find_api_token_by_hash(&hash(&plain))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.id, row.id);
        assert!(found.is_valid_at(chrono::Utc::now()));
        revoke(&store, row.id).await.unwrap();
        let found = store
            .find_api_token_by_hash(&hash(&plain))
            .await
            .unwrap()
            .unwrap();
        assert!(!found.is_valid_at(chrono::Utc::now()));
        assert!(matches!(
            revoke(&store, 999).await,
            Err(TokenError::NotFound(999))
        ));
        assert!(matches!(
            create(&store, "x", Role::Viewer, Some(0)).await,
            Err(TokenError::BadExpiry(0))
        ));
    }
}
