//! What the config file last seeded (`config_seeds`) and the risk limits set through the API
//! (`risk_limits`): the two records that let the store be the source of truth after the
//! first boot while the file can still seed and upgrade it.
//!
//! Invariants: one row per `(scope, key)` / per limit scope, replaced whole; definitions and
//! limits are stored as JSON exactly as given and read back equal.

use crate::codec::{from_json, to_json, ts_to_us};
use crate::error::{QueryContext, StoreError};
use crate::store::{with_pool, Store};

impl Store {
    /// The definition the config file last seeded for `(scope, key)`, if any.
    pub async fn get_config_seed(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let row: Option<(String,)> = with_pool!(self, read, |pool| sqlx::query_as(
            "SELECT definition_json FROM config_seeds WHERE scope = $1 AND key = $2"
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(pool)
        .await)
        .ctx(|| format!("get config seed {scope}/{key}"))?;
        row.map(|(j,)| from_json("config_seeds.definition_json", &j))
            .transpose()
    }

    /// Records the definition the config file seeded for `(scope, key)` (replacing the last).
    pub async fn put_config_seed(
        &self,
        scope: &str,
        key: &str,
        definition: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let json = to_json("config seed", definition)?;
        let now = ts_to_us(chrono::Utc::now());
        with_pool!(self, write, |pool| sqlx::query(
            "INSERT INTO config_seeds (scope, key, definition_json, updated_at_us) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (scope, key) DO UPDATE SET \
             definition_json = excluded.definition_json, updated_at_us = excluded.updated_at_us"
        )
        .bind(scope)
        .bind(key)
        .bind(&json)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))
        .ctx(|| format!("put config seed {scope}/{key}"))
    }

    /// Every stored risk limit set, as `(scope, limits)` ordered by scope.
    pub async fn list_risk_limits(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let rows: Vec<(String, String)> = with_pool!(self, read, |pool| sqlx::query_as(
            "SELECT scope, limits_json FROM risk_limits ORDER BY scope"
        )
        .fetch_all(pool)
        .await)
        .ctx(|| "list risk limits".into())?;
        rows.into_iter()
            .map(|(s, j)| Ok((s, from_json("risk_limits.limits_json", &j)?)))
            .collect()
    }

    /// Stores the limits of one scope (replacing what was stored).
    pub async fn put_risk_limits(
        &self,
        scope: &str,
        limits: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let json = to_json("risk limits", limits)?;
        let now = ts_to_us(chrono::Utc::now());
        with_pool!(self, write, |pool| sqlx::query(
            "INSERT INTO risk_limits (scope, limits_json, updated_at_us) VALUES ($1, $2, $3) \
             ON CONFLICT (scope) DO UPDATE SET limits_json = excluded.limits_json, \
             updated_at_us = excluded.updated_at_us"
        )
        .bind(scope)
        .bind(&json)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))
        .ctx(|| format!("put risk limits {scope}"))
    }

    /// Forgets the stored limits of every scope (the file's `[risk]` changed and wins).
    pub async fn clear_risk_limits(&self) -> Result<(), StoreError> {
        with_pool!(self, write, |pool| sqlx::query("DELETE FROM risk_limits")
            .execute(pool)
            .await
            .map(|_| ()))
        .ctx(|| "clear risk limits".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seeds_and_limits_round_trip_and_replace() {
        let store = Store::open("sqlite::memory:").await.expect("open");
        store.migrate().await.expect("migrate");
        assert_eq!(store.get_config_seed("strategy", "1").await.unwrap(), None);
        let a = serde_json::json!({ "params": { "x": 1 } });
        let b = serde_json::json!({ "params": { "x": 2 } });
        store.put_config_seed("strategy", "1", &a).await.unwrap();
        store.put_config_seed("strategy", "1", &b).await.unwrap();
        assert_eq!(
            store.get_config_seed("strategy", "1").await.unwrap(),
            Some(b)
        );
        let l = serde_json::json!({ "orders_per_second": 3 });
        store.put_risk_limits("strategy/1", &l).await.unwrap();
        assert_eq!(
            store.list_risk_limits().await.unwrap(),
            vec![("strategy/1".to_owned(), l)]
        );
        store.clear_risk_limits().await.unwrap();
        assert!(store.list_risk_limits().await.unwrap().is_empty());
    }
}
