//! Plain records for things the engine has no type for yet: strategies and their versions,
//! dispatch instructions, downsampled telemetry, settlement, risk events, the audit log and
//! API tokens. Each is a small struct with public fields; free-form detail is JSON.
//!
//! Log-like tables (dispatch, settlement, risk, audit, tokens) get their `id` from the store:
//! the `id` given to an insert is ignored and the assigned one is returned. Their list
//! functions page by id (`after_id`, `limit`, capped at [`MAX_PAGE`]) so no read is unbounded.

use crate::codec::{
    dec_to_text, from_json, i64_to_id, i64_to_u32, id_to_i64, interval_to_us, text_to_dec, to_json,
    ts_to_us, us_to_interval, us_to_ts,
};
use crate::error::{QueryContext, StoreError};
use crate::sql::{bind_all, multi_insert, Value};
use crate::store::{with_pool, Store};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use vpp_engine::ids::{AggregationId, ClientOrderId, MarketId, ResourceId, StrategyId};
use vpp_engine::market::DeliveryInterval;
use vpp_engine::Timestamp;

/// Most rows one list call returns.
pub const MAX_PAGE: u32 = 10_000;

fn page(limit: u32) -> i64 {
    i64::from(limit.min(MAX_PAGE))
}

fn after(after_id: u64) -> Result<i64, StoreError> {
    id_to_i64("after_id", after_id)
}

fn opt_id(field: &'static str, id: Option<u64>) -> Result<Option<i64>, StoreError> {
    id.map(|v| id_to_i64(field, v)).transpose()
}

fn opt_u64(field: &str, v: Option<i64>) -> Result<Option<u64>, StoreError> {
    v.map(|v| i64_to_id(field, v)).transpose()
}

fn opt_ts(field: &str, v: Option<i64>) -> Result<Option<Timestamp>, StoreError> {
    v.map(|v| us_to_ts(field, v)).transpose()
}

fn opt_interval(field: &str, v: Option<i64>) -> Result<Option<DeliveryInterval>, StoreError> {
    v.map(|v| us_to_interval(field, v)).transpose()
}

// ------------------------------------------------------------------ strategies

/// A strategy instance (its head). Configuration lives in [`StrategyVersion`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyRecord {
    pub id: StrategyId,
    pub name: String,
    /// Which implementation runs it, e.g. "rule" or "peak_shaver".
    pub kind: String,
    pub enabled: bool,
    /// Maintained by [`Store::insert_strategy_version`]; ignored by `upsert_strategy`.
    pub latest_version: u32,
    pub updated_at: Timestamp,
}

/// One immutable configuration of a strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyVersion {
    pub strategy_id: StrategyId,
    /// 1-based.
    pub version: u32,
    pub config: serde_json::Value,
    pub created_at: Timestamp,
}

type StrategyRow = (i64, String, String, bool, i64, i64);

const SELECT_STRATEGY: &str =
    "SELECT id, name, kind, enabled, latest_version, updated_at_us FROM strategies";

impl Store {
    pub async fn upsert_strategy(&self, s: &StrategyRecord) -> Result<(), StoreError> {
        let id = id_to_i64("strategy.id", s.id.0)?;
        let sql = "INSERT INTO strategies (id, name, kind, enabled, latest_version, updated_at_us) \
             VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             kind = excluded.kind, enabled = excluded.enabled, updated_at_us = excluded.updated_at_us";
        with_pool!(self, write, |pool| sqlx::query(sql)
            .bind(id)
            .bind(&s.name)
            .bind(&s.kind)
            .bind(s.enabled)
            .bind(ts_to_us(s.updated_at))
            .execute(pool)
            .await
            .map(|_| ()))
        .ctx(|| format!("upsert strategy {}", s.id))
    }

    pub async fn get_strategy(&self, id: StrategyId) -> Result<Option<StrategyRecord>, StoreError> {
        let key = id_to_i64("strategy.id", id.0)?;
        let sql = format!("{SELECT_STRATEGY} WHERE id = $1");
        let row: Option<StrategyRow> = with_pool!(self, read, |pool| sqlx::query_as(&sql)
            .bind(key)
            .fetch_optional(pool)
            .await)
        .ctx(|| format!("get strategy {id}"))?;
        row.map(strategy_from_row).transpose()
    }

    pub async fn list_strategies(&self) -> Result<Vec<StrategyRecord>, StoreError> {
        let sql = format!("{SELECT_STRATEGY} ORDER BY id");
        let rows: Vec<StrategyRow> = with_pool!(self, read, |pool| sqlx::query_as(&sql)
            .fetch_all(pool)
            .await)
        .ctx(|| "list strategies".into())?;
        rows.into_iter().map(strategy_from_row).collect()
    }

    /// Stores a version (the strategy must exist) and raises the head's `latest_version`.
    /// An identical re-store is a no-op; different content is a conflict.
    pub async fn insert_strategy_version(&self, v: &StrategyVersion) -> Result<(), StoreError> {
        let id = id_to_i64("strategy.id", v.strategy_id.0)?;
        let version = i64::from(v.version);
        let config = to_json("strategy config", &v.config)?;
        let inserted = with_pool!(self, write, |pool| async {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "INSERT INTO strategy_versions (strategy_id, version, config_json, created_at_us) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (strategy_id, version) DO NOTHING",
            )
            .bind(id)
            .bind(version)
            .bind(&config)
            .bind(ts_to_us(v.created_at))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE strategies SET latest_version = $2 WHERE id = $1 AND latest_version < $2",
            )
            .bind(id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(done.rows_affected() > 0)
        }
        .await)
        .ctx(|| format!("store strategy {} version {}", v.strategy_id, v.version))?;
        if inserted {
            return Ok(());
        }
        match self.get_strategy_version(v.strategy_id, v.version).await? {
            Some(stored) if stored == *v => Ok(()),
            _ => Err(StoreError::Conflict(format!(
                "strategy {} version {} is already stored with different content",
                v.strategy_id, v.version
            ))),
        }
    }

    pub async fn get_strategy_version(
        &self,
        id: StrategyId,
        version: u32,
    ) -> Result<Option<StrategyVersion>, StoreError> {
        let key = id_to_i64("strategy.id", id.0)?;
        let row: Option<(i64, i64, String, i64)> = with_pool!(self, read, |pool| {
            sqlx::query_as(
                "SELECT strategy_id, version, config_json, created_at_us FROM strategy_versions \
                 WHERE strategy_id = $1 AND version = $2",
            )
            .bind(key)
            .bind(i64::from(version))
            .fetch_optional(pool)
            .await
        })
        .ctx(|| format!("get strategy {id} version {version}"))?;
        row.map(strategy_version_from_row).transpose()
    }

    pub async fn list_strategy_versions(
        &self,
        id: StrategyId,
    ) -> Result<Vec<StrategyVersion>, StoreError> {
        let key = id_to_i64("strategy.id", id.0)?;
        let rows: Vec<(i64, i64, String, i64)> = with_pool!(self, read, |pool| {
            sqlx::query_as(
                "SELECT strategy_id, version, config_json, created_at_us FROM strategy_versions \
                 WHERE strategy_id = $1 ORDER BY version",
            )
            .bind(key)
            .fetch_all(pool)
            .await
        })
        .ctx(|| format!("list versions of strategy {id}"))?;
        rows.into_iter().map(strategy_version_from_row).collect()
    }
}

fn strategy_from_row(r: StrategyRow) -> Result<StrategyRecord, StoreError> {
    let (id, name, kind, enabled, latest, updated) = r;
    Ok(StrategyRecord {
        id: StrategyId(i64_to_id("strategies.id", id)?),
        name,
        kind,
        enabled,
        latest_version: i64_to_u32("strategies.latest_version", latest)?,
        updated_at: us_to_ts("strategies.updated_at_us", updated)?,
    })
}

fn strategy_version_from_row(r: (i64, i64, String, i64)) -> Result<StrategyVersion, StoreError> {
    Ok(StrategyVersion {
        strategy_id: StrategyId(i64_to_id("strategy_versions.strategy_id", r.0)?),
        version: i64_to_u32("strategy_versions.version", r.1)?,
        config: from_json("strategy_versions.config_json", &r.2)?,
        created_at: us_to_ts("strategy_versions.created_at_us", r.3)?,
    })
}

// ------------------------------------------------------------------ dispatch

/// A setpoint sent to one resource on behalf of an aggregation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchInstruction {
    /// Assigned by the store.
    pub id: u64,
    pub at: Timestamp,
    pub aggregation_id: AggregationId,
    pub resource_id: ResourceId,
    pub interval: Option<DeliveryInterval>,
    /// Positive generates, negative consumes.
    pub setpoint_kw: Decimal,
    /// Why: "award", "redispatch", "manual", ...
    pub reason: String,
    pub detail: serde_json::Value,
}

type DispatchRow = (i64, i64, i64, i64, Option<i64>, String, String, String);

impl Store {
    /// Stores a dispatch instruction; returns its id.
    pub async fn insert_dispatch_instruction(
        &self,
        d: &DispatchInstruction,
    ) -> Result<u64, StoreError> {
        let args = vec![
            Value::I64(ts_to_us(d.at)),
            Value::I64(id_to_i64("dispatch.aggregation_id", d.aggregation_id.0)?),
            Value::I64(id_to_i64("dispatch.resource_id", d.resource_id.0)?),
            Value::OptI64(d.interval.map(interval_to_us)),
            Value::Text(dec_to_text(d.setpoint_kw)),
            Value::Text(d.reason.clone()),
            Value::Text(to_json("dispatch detail", &d.detail)?),
        ];
        let sql = "INSERT INTO dispatch_instructions (at_us, aggregation_id, resource_id, \
             interval_us, setpoint_kw, reason, detail_json) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             RETURNING id";
        self.insert_returning_id(sql, &args, "insert dispatch instruction")
            .await
    }

    /// Dispatch instructions with id above `after_id`, oldest first, optionally of one resource.
    pub async fn list_dispatch_instructions(
        &self,
        resource: Option<ResourceId>,
        after_id: u64,
        limit: u32,
    ) -> Result<Vec<DispatchInstruction>, StoreError> {
        let resource = opt_id("resource_id", resource.map(|r| r.0))?;
        let sql = "SELECT id, at_us, aggregation_id, resource_id, interval_us, setpoint_kw, \
             reason, detail_json FROM dispatch_instructions \
             WHERE id > $1 AND ($2 IS NULL OR resource_id = $2) ORDER BY id LIMIT $3";
        let rows: Vec<DispatchRow> = with_pool!(self, read, |pool| sqlx::query_as(sql)
            .bind(after(after_id)?)
            .bind(resource)
            .bind(page(limit))
            .fetch_all(pool)
            .await)
        .ctx(|| "list dispatch instructions".into())?;
        rows.into_iter()
            .map(|r| {
                Ok(DispatchInstruction {
                    id: i64_to_id("dispatch_instructions.id", r.0)?,
                    at: us_to_ts("dispatch_instructions.at_us", r.1)?,
                    aggregation_id: AggregationId(i64_to_id("dispatch.aggregation_id", r.2)?),
                    resource_id: ResourceId(i64_to_id("dispatch.resource_id", r.3)?),
                    interval: opt_interval("dispatch_instructions.interval_us", r.4)?,
                    setpoint_kw: text_to_dec("dispatch_instructions.setpoint_kw", &r.5)?,
                    reason: r.6,
                    detail: from_json("dispatch_instructions.detail_json", &r.7)?,
                })
            })
            .collect()
    }

    /// Runs an INSERT ... RETURNING id on the writer.
    async fn insert_returning_id(
        &self,
        sql: &str,
        args: &[Value],
        what: &str,
    ) -> Result<u64, StoreError> {
        let id: i64 = with_pool!(self, write, |pool| bind_all!(sqlx::query_scalar(sql), args)
            .fetch_one(pool)
            .await)
        .ctx(|| what.to_owned())?;
        i64_to_id("id", id)
    }
}

// ------------------------------------------------------------------ telemetry

/// Telemetry of one resource downsampled to one bucket (the caller downsamples).
/// Floats: these are measurement statistics, not money or traded quantities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySample {
    pub resource_id: ResourceId,
    pub bucket_start: Timestamp,
    pub power_kw_avg: f64,
    pub power_kw_min: f64,
    pub power_kw_max: f64,
    pub soc_pct: Option<f64>,
    /// Whether the resource was available at the end of the bucket.
    pub available: bool,
    /// Raw samples folded into this bucket.
    pub samples: u32,
}

const TELEMETRY_HEAD: &str = "telemetry_samples (resource_id, bucket_start_us, power_kw_avg, \
     power_kw_min, power_kw_max, soc_pct, available, samples)";
const TELEMETRY_TAIL: &str = "ON CONFLICT (resource_id, bucket_start_us) DO UPDATE SET \
     power_kw_avg = excluded.power_kw_avg, power_kw_min = excluded.power_kw_min, \
     power_kw_max = excluded.power_kw_max, soc_pct = excluded.soc_pct, \
     available = excluded.available, samples = excluded.samples";

type TelemetryRow = (i64, i64, f64, f64, f64, Option<f64>, bool, i64);

impl Store {
    /// Stores buckets in one transaction; a bucket already stored is replaced, and of
    /// duplicates within `samples` the last wins.
    pub async fn insert_telemetry(&self, samples: &[TelemetrySample]) -> Result<(), StoreError> {
        // PostgreSQL refuses to update one row twice in a single INSERT ... ON CONFLICT.
        let mut last_of: std::collections::HashMap<(ResourceId, Timestamp), usize> =
            std::collections::HashMap::with_capacity(samples.len());
        for (i, s) in samples.iter().enumerate() {
            last_of.insert((s.resource_id, s.bucket_start), i);
        }
        let mut rows = Vec::with_capacity(last_of.len() * 8);
        for (i, s) in samples.iter().enumerate() {
            if last_of.get(&(s.resource_id, s.bucket_start)) != Some(&i) {
                continue;
            }
            rows.extend([
                Value::I64(id_to_i64("telemetry.resource_id", s.resource_id.0)?),
                Value::I64(ts_to_us(s.bucket_start)),
                Value::F64(s.power_kw_avg),
                Value::F64(s.power_kw_min),
                Value::F64(s.power_kw_max),
                Value::OptF64(s.soc_pct),
                Value::Bool(s.available),
                Value::I64(i64::from(s.samples)),
            ]);
        }
        let stmts = multi_insert(TELEMETRY_HEAD, TELEMETRY_TAIL, 8, rows);
        self.execute_in_tx(&stmts)
            .await
            .ctx(|| format!("insert {} telemetry samples", samples.len()))
    }

    /// Buckets of one resource with `from <= bucket_start < to`, oldest first.
    pub async fn list_telemetry(
        &self,
        resource: ResourceId,
        from: Timestamp,
        to: Timestamp,
        limit: u32,
    ) -> Result<Vec<TelemetrySample>, StoreError> {
        let sql = "SELECT resource_id, bucket_start_us, power_kw_avg, power_kw_min, power_kw_max, \
             soc_pct, available, samples FROM telemetry_samples WHERE resource_id = $1 \
             AND bucket_start_us >= $2 AND bucket_start_us < $3 ORDER BY bucket_start_us LIMIT $4";
        let rows: Vec<TelemetryRow> = with_pool!(self, read, |pool| sqlx::query_as(sql)
            .bind(id_to_i64("resource_id", resource.0)?)
            .bind(ts_to_us(from))
            .bind(ts_to_us(to))
            .bind(page(limit))
            .fetch_all(pool)
            .await)
        .ctx(|| format!("list telemetry of resource {resource}"))?;
        rows.into_iter()
            .map(|r| {
                Ok(TelemetrySample {
                    resource_id: ResourceId(i64_to_id("telemetry_samples.resource_id", r.0)?),
                    bucket_start: us_to_ts("telemetry_samples.bucket_start_us", r.1)?,
                    power_kw_avg: r.2,
                    power_kw_min: r.3,
                    power_kw_max: r.4,
                    soc_pct: r.5,
                    available: r.6,
                    samples: i64_to_u32("telemetry_samples.samples", r.7)?,
                })
            })
            .collect()
    }
}

// ------------------------------------------------------------------ settlement

/// One settlement statement (per aggregation, market and trading day) with its lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettlementRecord {
    /// Assigned by the store.
    pub id: u64,
    pub aggregation_id: AggregationId,
    pub market_id: MarketId,
    /// Local trading day of the market.
    pub trading_day: chrono::NaiveDate,
    pub created_at: Timestamp,
    pub total_cny: Decimal,
    pub detail: serde_json::Value,
    pub lines: Vec<SettlementLine>,
}

/// One line of a settlement: energy revenue, a deviation penalty, an ancillary payment, or a
/// resource's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementLine {
    /// 1-based position within the record.
    pub line_no: u32,
    /// "energy", "deviation_penalty", "capacity_payment", "mileage_payment", "resource_share", ...
    pub kind: String,
    pub resource_id: Option<ResourceId>,
    pub interval: Option<DeliveryInterval>,
    pub quantity_mwh: Decimal,
    pub price_cny_per_mwh: Decimal,
    pub amount_cny: Decimal,
    pub note: String,
}

type SettlementRow = (i64, i64, i64, String, i64, String, String);
type LineRow = (
    i64,
    i64,
    String,
    Option<i64>,
    Option<i64>,
    String,
    String,
    String,
    String,
);

impl Store {
    /// Stores a record and its lines in one transaction; returns the record id.
    pub async fn insert_settlement(&self, r: &SettlementRecord) -> Result<u64, StoreError> {
        let head = [
            Value::I64(id_to_i64("settlement.aggregation_id", r.aggregation_id.0)?),
            Value::I64(id_to_i64("settlement.market_id", r.market_id.0)?),
            Value::Text(r.trading_day.to_string()),
            Value::I64(ts_to_us(r.created_at)),
            Value::Text(dec_to_text(r.total_cny)),
            Value::Text(to_json("settlement detail", &r.detail)?),
        ];
        let mut lines = Vec::with_capacity(r.lines.len() * 8);
        for l in &r.lines {
            lines.extend([
                Value::I64(i64::from(l.line_no)),
                Value::Text(l.kind.clone()),
                Value::OptI64(opt_id("line.resource_id", l.resource_id.map(|x| x.0))?),
                Value::OptI64(l.interval.map(interval_to_us)),
                Value::Text(dec_to_text(l.quantity_mwh)),
                Value::Text(dec_to_text(l.price_cny_per_mwh)),
                Value::Text(dec_to_text(l.amount_cny)),
                Value::Text(l.note.clone()),
            ]);
        }
        let insert_head = "INSERT INTO settlement_records (aggregation_id, market_id, \
             trading_day, created_at_us, total_cny, detail_json) VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING id";
        let insert_line = "INSERT INTO settlement_lines (record_id, line_no, kind, resource_id, \
             interval_us, quantity_mwh, price_cny_per_mwh, amount_cny, note) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        let id: i64 = with_pool!(self, write, |pool| async {
            let mut tx = pool.begin().await?;
            let id: i64 = bind_all!(sqlx::query_scalar(insert_head), &head)
                .fetch_one(&mut *tx)
                .await?;
            for line in lines.chunks(8) {
                bind_all!(sqlx::query(insert_line).bind(id), line)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(id)
        }
        .await)
        .ctx(|| {
            format!(
                "insert settlement for aggregation {} on {}",
                r.aggregation_id, r.trading_day
            )
        })?;
        i64_to_id("settlement_records.id", id)
    }

    pub async fn get_settlement(&self, id: u64) -> Result<Option<SettlementRecord>, StoreError> {
        let key = id_to_i64("settlement.id", id)?;
        let row: Option<SettlementRow> = with_pool!(self, read, |pool| sqlx::query_as(
            "SELECT id, aggregation_id, market_id, trading_day, created_at_us, total_cny, \
             detail_json FROM settlement_records WHERE id = $1"
        )
        .bind(key)
        .fetch_optional(pool)
        .await)
        .ctx(|| format!("get settlement {id}"))?;
        match row {
            Some(row) => Ok(Some(self.settlement_with_lines(row).await?)),
            None => Ok(None),
        }
    }

    /// Settlement records (with lines) of one trading day, by id.
    pub async fn list_settlements(
        &self,
        trading_day: chrono::NaiveDate,
        limit: u32,
    ) -> Result<Vec<SettlementRecord>, StoreError> {
        let rows: Vec<SettlementRow> = with_pool!(self, read, |pool| sqlx::query_as(
            "SELECT id, aggregation_id, market_id, trading_day, created_at_us, total_cny, \
             detail_json FROM settlement_records WHERE trading_day = $1 ORDER BY id LIMIT $2"
        )
        .bind(trading_day.to_string())
        .bind(page(limit))
        .fetch_all(pool)
        .await)
        .ctx(|| format!("list settlements of {trading_day}"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.settlement_with_lines(row).await?);
        }
        Ok(out)
    }

    /// Every (aggregation, interval) that has a settlement line with an interval starting at
    /// or after `since`: what is already settled, so a restart settles nothing twice.
    /// Bounded by `limit` rows.
    pub async fn settled_intervals(
        &self,
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<(AggregationId, DeliveryInterval)>, StoreError> {
        let rows: Vec<(i64, Option<i64>)> = with_pool!(self, read, |pool| sqlx::query_as(
            "SELECT DISTINCT r.aggregation_id, l.interval_us FROM settlement_lines l \
             JOIN settlement_records r ON r.id = l.record_id \
             WHERE l.interval_us IS NOT NULL AND l.interval_us >= $1 \
             ORDER BY l.interval_us LIMIT $2"
        )
        .bind(ts_to_us(since))
        .bind(page(limit))
        .fetch_all(pool)
        .await)
        .ctx(|| format!("list settled intervals since {since}"))?;
        let mut out = Vec::with_capacity(rows.len());
        for (agg, iv) in rows {
            if let Some(iv) = opt_interval("settlement_lines.interval_us", iv)? {
                out.push((
                    AggregationId(i64_to_id("settlement_records.aggregation_id", agg)?),
                    iv,
                ));
            }
        }
        Ok(out)
    }

    async fn settlement_with_lines(
        &self,
        r: SettlementRow,
    ) -> Result<SettlementRecord, StoreError> {
        let lines: Vec<LineRow> = with_pool!(self, read, |pool| sqlx::query_as(
            "SELECT record_id, line_no, kind, resource_id, interval_us, quantity_mwh, \
             price_cny_per_mwh, amount_cny, note FROM settlement_lines WHERE record_id = $1 \
             ORDER BY line_no"
        )
        .bind(r.0)
        .fetch_all(pool)
        .await)
        .ctx(|| format!("read lines of settlement {}", r.0))?;
        Ok(SettlementRecord {
            id: i64_to_id("settlement_records.id", r.0)?,
            aggregation_id: AggregationId(i64_to_id("settlement_records.aggregation_id", r.1)?),
            market_id: MarketId(i64_to_id("settlement_records.market_id", r.2)?),
            trading_day: r.3.parse().map_err(|e| StoreError::Decode {
                field: "settlement_records.trading_day".into(),
                reason: format!("{:?} is not a YYYY-MM-DD date: {e}", r.3),
            })?,
            created_at: us_to_ts("settlement_records.created_at_us", r.4)?,
            total_cny: text_to_dec("settlement_records.total_cny", &r.5)?,
            detail: from_json("settlement_records.detail_json", &r.6)?,
            lines: lines
                .into_iter()
                .map(line_from_row)
                .collect::<Result<_, _>>()?,
        })
    }
}

fn line_from_row(l: LineRow) -> Result<SettlementLine, StoreError> {
    Ok(SettlementLine {
        line_no: i64_to_u32("settlement_lines.line_no", l.1)?,
        kind: l.2,
        resource_id: opt_u64("settlement_lines.resource_id", l.3)?.map(ResourceId),
        interval: opt_interval("settlement_lines.interval_us", l.4)?,
        quantity_mwh: text_to_dec("settlement_lines.quantity_mwh", &l.5)?,
        price_cny_per_mwh: text_to_dec("settlement_lines.price_cny_per_mwh", &l.6)?,
        amount_cny: text_to_dec("settlement_lines.amount_cny", &l.7)?,
        note: l.8,
    })
}

// ------------------------------------------------------------------ risk events

/// Something a risk check refused or flagged, or a kill-switch change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskEvent {
    /// Assigned by the store.
    pub id: u64,
    pub at: Timestamp,
    /// "info", "warning", "critical".
    pub severity: String,
    /// The rule or limit, e.g. "max_order_mw" or "kill_switch".
    pub rule: String,
    pub strategy_id: Option<StrategyId>,
    pub aggregation_id: Option<AggregationId>,
    pub client_order_id: Option<ClientOrderId>,
    pub message: String,
    pub detail: serde_json::Value,
}

type RiskRow = (
    i64,
    i64,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    String,
    String,
);

impl Store {
    pub async fn insert_risk_event(&self, e: &RiskEvent) -> Result<u64, StoreError> {
        let args = vec![
            Value::I64(ts_to_us(e.at)),
            Value::Text(e.severity.clone()),
            Value::Text(e.rule.clone()),
            Value::OptI64(opt_id("risk.strategy_id", e.strategy_id.map(|x| x.0))?),
            Value::OptI64(opt_id(
                "risk.aggregation_id",
                e.aggregation_id.map(|x| x.0),
            )?),
            Value::OptText(e.client_order_id.as_ref().map(|c| c.as_str().to_owned())),
            Value::Text(e.message.clone()),
            Value::Text(to_json("risk event detail", &e.detail)?),
        ];
        let sql = "INSERT INTO risk_events (at_us, severity, rule, strategy_id, aggregation_id, \
             client_order_id, message, detail_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING id";
        self.insert_returning_id(sql, &args, "insert risk event")
            .await
    }

    /// Risk events with id above `after_id`, oldest first.
    pub async fn list_risk_events(
        &self,
        after_id: u64,
        limit: u32,
    ) -> Result<Vec<RiskEvent>, StoreError> {
        let sql =
            "SELECT id, at_us, severity, rule, strategy_id, aggregation_id, client_order_id, \
             message, detail_json FROM risk_events WHERE id > $1 ORDER BY id LIMIT $2";
        let rows: Vec<RiskRow> = with_pool!(self, read, |pool| sqlx::query_as(sql)
            .bind(after(after_id)?)
            .bind(page(limit))
            .fetch_all(pool)
            .await)
        .ctx(|| "list risk events".into())?;
        rows.into_iter()
            .map(|r| {
                Ok(RiskEvent {
                    id: i64_to_id("risk_events.id", r.0)?,
                    at: us_to_ts("risk_events.at_us", r.1)?,
                    severity: r.2,
                    rule: r.3,
                    strategy_id: opt_u64("risk_events.strategy_id", r.4)?.map(StrategyId),
                    aggregation_id: opt_u64("risk_events.aggregation_id", r.5)?.map(AggregationId),
                    client_order_id: r
                        .6
                        .map(|c| crate::orders::coid("risk_events.client_order_id", c))
                        .transpose()?,
                    message: r.7,
                    detail: from_json("risk_events.detail_json", &r.8)?,
                })
            })
            .collect()
    }
}

// ------------------------------------------------------------------ audit log

/// One state change made through the operator API or the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned by the store.
    pub id: u64,
    pub at: Timestamp,
    /// Who: a token name, "cli" or "system".
    pub actor: String,
    /// What, e.g. "resource.create", "engine.stop", "kill_switch.engage".
    pub action: String,
    /// On what, e.g. "resource/12".
    pub target: String,
    /// "ok", or "denied: ..." / "failed: ...".
    pub outcome: String,
    pub detail: serde_json::Value,
}

type AuditRow = (i64, i64, String, String, String, String, String);

impl Store {
    pub async fn insert_audit(&self, a: &AuditEntry) -> Result<u64, StoreError> {
        let args = vec![
            Value::I64(ts_to_us(a.at)),
            Value::Text(a.actor.clone()),
            Value::Text(a.action.clone()),
            Value::Text(a.target.clone()),
            Value::Text(a.outcome.clone()),
            Value::Text(to_json("audit detail", &a.detail)?),
        ];
        let sql = "INSERT INTO audit_log (at_us, actor, action, target, outcome, detail_json) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
        self.insert_returning_id(sql, &args, "insert audit entry")
            .await
    }

    /// Audit entries with id above `after_id`, oldest first.
    pub async fn list_audit(
        &self,
        after_id: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = "SELECT id, at_us, actor, action, target, outcome, detail_json FROM audit_log \
             WHERE id > $1 ORDER BY id LIMIT $2";
        let rows: Vec<AuditRow> = with_pool!(self, read, |pool| sqlx::query_as(sql)
            .bind(after(after_id)?)
            .bind(page(limit))
            .fetch_all(pool)
            .await)
        .ctx(|| "list audit log".into())?;
        rows.into_iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: i64_to_id("audit_log.id", r.0)?,
                    at: us_to_ts("audit_log.at_us", r.1)?,
                    actor: r.2,
                    action: r.3,
                    target: r.4,
                    outcome: r.5,
                    detail: from_json("audit_log.detail_json", &r.6)?,
                })
            })
            .collect()
    }
}

// ------------------------------------------------------------------ API tokens

/// What creating a token takes. `token_hash` is a hex digest (e.g. SHA-256) of the token;
/// the plaintext token never reaches the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewApiToken {
    pub name: String,
    /// "viewer", "trader" or "admin".
    pub role: String,
    pub token_hash: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

/// A stored token (its hash only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: u64,
    pub name: String,
    pub role: String,
    pub token_hash: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

impl ApiToken {
    /// Not revoked and not expired at `now`.
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// Shortest accepted hash: 128 bits in hex. Guards against storing a plaintext token.
const MIN_HASH_HEX_LEN: usize = 32;

fn check_hash(hash: &str) -> Result<(), StoreError> {
    if hash.len() < MIN_HASH_HEX_LEN || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::OutOfRange {
            field: "token_hash",
            value: format!("<{} characters>", hash.len()),
            reason:
                "must be a hex digest of at least 32 characters (store the hash, never the token)",
        });
    }
    Ok(())
}

type TokenRow = (i64, String, String, String, i64, Option<i64>, Option<i64>);

const SELECT_TOKEN: &str = "SELECT id, name, role, token_hash, created_at_us, expires_at_us, \
     revoked_at_us FROM api_tokens";

impl Store {
    /// Stores a token hash; a hash already stored is refused by the unique index.
    pub async fn create_api_token(&self, t: &NewApiToken) -> Result<ApiToken, StoreError> {
        check_hash(&t.token_hash)?;
        let hash = t.token_hash.to_ascii_lowercase();
        let args = vec![
            Value::Text(t.name.clone()),
            Value::Text(t.role.clone()),
            Value::Text(hash.clone()),
            Value::I64(ts_to_us(t.created_at)),
            Value::OptI64(t.expires_at.map(ts_to_us)),
        ];
        let sql = "INSERT INTO api_tokens (name, role, token_hash, created_at_us, expires_at_us) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id";
        let id = self
            .insert_returning_id(sql, &args, &format!("create api token {:?}", t.name))
            .await?;
        Ok(ApiToken {
            id,
            name: t.name.clone(),
            role: t.role.clone(),
            token_hash: hash,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: None,
        })
    }

    /// The token with this hash, revoked or not (check [`ApiToken::is_valid_at`]).
    pub async fn find_api_token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let sql = format!("{SELECT_TOKEN} WHERE token_hash = $1");
        let row: Option<TokenRow> = with_pool!(self, read, |pool| sqlx::query_as(&sql)
            .bind(hash.to_ascii_lowercase())
            .fetch_optional(pool)
            .await)
        .ctx(|| "find api token".into())?;
        row.map(token_from_row).transpose()
    }

    pub async fn list_api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let sql = format!("{SELECT_TOKEN} ORDER BY id LIMIT {MAX_PAGE}");
        let rows: Vec<TokenRow> = with_pool!(self, read, |pool| sqlx::query_as(&sql)
            .fetch_all(pool)
            .await)
        .ctx(|| "list api tokens".into())?;
        rows.into_iter().map(token_from_row).collect()
    }

    /// Revokes token `id` at `at`. Revoking twice keeps the first time; an unknown id is
    /// [`StoreError::NotFound`].
    pub async fn revoke_api_token(&self, id: u64, at: Timestamp) -> Result<(), StoreError> {
        let key = id_to_i64("api_token.id", id)?;
        let found: Option<i64> = with_pool!(self, write, |pool| sqlx::query_scalar(
            "UPDATE api_tokens SET revoked_at_us = COALESCE(revoked_at_us, $2) WHERE id = $1 \
             RETURNING id"
        )
        .bind(key)
        .bind(ts_to_us(at))
        .fetch_optional(pool)
        .await)
        .ctx(|| format!("revoke api token {id}"))?;
        match found {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound {
                what: format!("api token {id}"),
            }),
        }
    }
}

fn token_from_row(r: TokenRow) -> Result<ApiToken, StoreError> {
    Ok(ApiToken {
        id: i64_to_id("api_tokens.id", r.0)?,
        name: r.1,
        role: r.2,
        token_hash: r.3,
        created_at: us_to_ts("api_tokens.created_at_us", r.4)?,
        expires_at: opt_ts("api_tokens.expires_at_us", r.5)?,
        revoked_at: opt_ts("api_tokens.revoked_at_us", r.6)?,
    })
}
