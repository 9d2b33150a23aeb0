//! `/api/v1/settlement`: settlement records, financial analysis (P&L per day and
//! aggregation), reports as CSV and JSON, and balances.
//!
//! Invariants:
//! - Money is `Decimal` end to end (sums of stored amounts, never floats); CSV cells are the
//!   exact decimal text.
//! - A date range is `from..=to` trading days (`YYYY-MM-DD`), at most [`MAX_RANGE_DAYS`]
//!   days; the store is read one trading day at a time, each read bounded by `MAX_PAGE`.
//! - Reads need a viewer token; nothing here changes state.

use super::auth::Caller;
use super::catalog::page_req;
use super::error::ApiError;
use super::page::Page;
use super::ApiState;
use crate::token::Role;
use actix_web::{web, HttpResponse};
use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use utoipa::ToSchema;
use vpp_persistence::SettlementRecord;

/// Longest date range one call reads.
pub const MAX_RANGE_DAYS: i64 = 366;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/settlement/records", web::get().to(list_records))
        .route("/settlement/records/{id}", web::get().to(get_record))
        .route("/settlement/analysis", web::get().to(analysis))
        .route("/settlement/reports", web::get().to(report))
        .route("/settlement/reports.csv", web::get().to(report_csv))
        .route("/settlement/balances", web::get().to(balances));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    /// First trading day, `YYYY-MM-DD` (default: `to` minus 30 days).
    from: Option<String>,
    /// Last trading day, inclusive (default: today, UTC).
    to: Option<String>,
    aggregation_id: Option<u64>,
    market_id: Option<u64>,
    /// Reports only: `json` (default) or `csv`.
    format: Option<String>,
    limit: Option<u32>,
    offset: Option<u64>,
}

fn day(field: &str, raw: Option<&str>) -> Result<Option<NaiveDate>, ApiError> {
    raw.map(|v| {
        NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|e| ApiError::BadRequest {
            code: "bad_query",
            message: format!("{field}={v:?} is not a YYYY-MM-DD date: {e}"),
            field: Some(field.to_owned()),
        })
    })
    .transpose()
}

impl RangeQuery {
    fn range(&self) -> Result<(NaiveDate, NaiveDate), ApiError> {
        let to = day("to", self.to.as_deref())?.unwrap_or_else(|| chrono::Utc::now().date_naive());
        let from =
            day("from", self.from.as_deref())?.unwrap_or_else(|| to - chrono::Duration::days(30));
        if from > to {
            return Err(ApiError::BadRequest {
                code: "bad_query",
                message: format!("from {from} is after to {to}"),
                field: Some("from".into()),
            });
        }
        let days = (to - from).num_days() + 1;
        if days > MAX_RANGE_DAYS {
            return Err(ApiError::BadRequest {
                code: "bad_query",
                message: format!("{days} days requested; at most {MAX_RANGE_DAYS} per call"),
                field: Some("to".into()),
            });
        }
        Ok((from, to))
    }

    /// Records of the range matching the filters, by trading day then id.
    async fn records(&self, state: &ApiState) -> Result<Vec<SettlementRecord>, ApiError> {
        let (from, to) = self.range()?;
        let mut out = Vec::new();
        let mut d = from;
        while d <= to {
            for r in state
                .store
                .list_settlements(d, vpp_persistence::MAX_PAGE)
                .await?
            {
                if self.aggregation_id.is_none_or(|a| r.aggregation_id.0 == a)
                    && self.market_id.is_none_or(|m| r.market_id.0 == m)
                {
                    out.push(r);
                }
            }
            d = d.succ_opt().unwrap_or(to + chrono::Duration::days(1));
        }
        Ok(out)
    }
}

#[utoipa::path(get, path = "/api/v1/settlement/records", tag = "settlement", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list_records(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let req = page_req(q.limit, q.offset)?;
    let records = q.records(&state).await?;
    Ok(HttpResponse::Ok().json(Page::from_vec(records, req)))
}

#[utoipa::path(get, path = "/api/v1/settlement/records/{id}", tag = "settlement", params(("id" = String, Path)), responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn get_record(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let id: u64 = path
        .parse()
        .ok()
        .filter(|v| *v > 0 && *v <= i64::MAX as u64)
        .ok_or_else(|| ApiError::BadRequest {
            code: "bad_path",
            message: format!("id {:?} must be a positive integer", path.as_str()),
            field: Some("id".into()),
        })?;
    let r = state
        .store
        .get_settlement(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("settlement record {id}"), Some("id")))?;
    Ok(HttpResponse::Ok().json(r))
}

/// P&L of one trading day for one aggregation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DayPnl {
    pub trading_day: NaiveDate,
    pub aggregation_id: u64,
    /// Sum of the settled totals.
    #[schema(value_type = String)]
    pub total_cny: Decimal,
    /// Sum of line amounts per kind (energy, deviation_penalty, capacity_payment, ...).
    #[schema(value_type = Object)]
    pub by_kind_cny: BTreeMap<String, Decimal>,
    #[schema(value_type = String)]
    pub energy_mwh: Decimal,
    pub records: usize,
}

/// Daily P&L rows (by day, then aggregation) and the totals over the range.
pub fn pnl(records: &[SettlementRecord]) -> (Vec<DayPnl>, Decimal) {
    let mut rows: BTreeMap<(NaiveDate, u64), DayPnl> = BTreeMap::new();
    let mut total = Decimal::ZERO;
    for r in records {
        let row = rows
            .entry((r.trading_day, r.aggregation_id.0))
            .or_insert_with(|| DayPnl {
                trading_day: r.trading_day,
                aggregation_id: r.aggregation_id.0,
                total_cny: Decimal::ZERO,
                by_kind_cny: BTreeMap::new(),
                energy_mwh: Decimal::ZERO,
                records: 0,
            });
        row.total_cny += r.total_cny;
        row.records += 1;
        total += r.total_cny;
        for l in &r.lines {
            *row.by_kind_cny.entry(l.kind.clone()).or_default() += l.amount_cny;
            if l.kind == "energy" {
                row.energy_mwh += l.quantity_mwh;
            }
        }
    }
    (rows.into_values().collect(), total)
}

#[utoipa::path(get, path = "/api/v1/settlement/analysis", tag = "settlement", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn analysis(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let (from, to) = q.range()?;
    let records = q.records(&state).await?;
    let (days, total) = pnl(&records);
    let mut by_aggregation: BTreeMap<u64, Decimal> = BTreeMap::new();
    for d in &days {
        *by_aggregation.entry(d.aggregation_id).or_default() += d.total_cny;
    }
    let best = days
        .iter()
        .max_by_key(|d| d.total_cny)
        .map(|d| d.trading_day);
    let worst = days
        .iter()
        .min_by_key(|d| d.total_cny)
        .map(|d| d.trading_day);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "from": from,
        "to": to,
        "total_cny": total,
        "by_aggregation_cny": by_aggregation,
        "days": days,
        "best_day": best,
        "worst_day": worst,
    })))
}

const CSV_HEADER: &str = "record_id,trading_day,aggregation_id,market_id,line_no,kind,\
     resource_id,interval_start,quantity_mwh,price_cny_per_mwh,amount_cny,note\n";

/// One CSV cell: quoted when it holds a comma, quote or line break (RFC 4180).
fn cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The settlement lines of `records` as CSV, one row per line.
pub fn report_csv_text(records: &[SettlementRecord]) -> String {
    let mut out = String::from(CSV_HEADER);
    for r in records {
        for l in &r.lines {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{}",
                r.id,
                r.trading_day,
                r.aggregation_id.0,
                r.market_id.0,
                l.line_no,
                cell(&l.kind),
                l.resource_id.map(|x| x.0.to_string()).unwrap_or_default(),
                l.interval
                    .map(|i| i.start().to_rfc3339())
                    .unwrap_or_default(),
                l.quantity_mwh,
                l.price_cny_per_mwh,
                l.amount_cny,
                cell(&l.note)
            );
        }
    }
    out
}

#[utoipa::path(get, path = "/api/v1/settlement/reports", tag = "settlement", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn report(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    match q.format.as_deref() {
        None | Some("json") => {
            let (from, to) = q.range()?;
            let records = q.records(&state).await?;
            let (days, total) = pnl(&records);
            Ok(HttpResponse::Ok().json(serde_json::json!({
                "from": from,
                "to": to,
                "total_cny": total,
                "days": days,
                "records": records,
            })))
        }
        Some("csv") => csv_answer(&state, &q).await,
        Some(other) => Err(ApiError::BadRequest {
            code: "bad_query",
            message: format!("format={other:?}: expected json or csv"),
            field: Some("format".into()),
        }),
    }
}

async fn csv_answer(state: &ApiState, q: &RangeQuery) -> Result<HttpResponse, ApiError> {
    let (from, to) = q.range()?;
    let records = q.records(state).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"settlement_{from}_{to}.csv\""),
        ))
        .body(report_csv_text(&records)))
}

#[utoipa::path(get, path = "/api/v1/settlement/reports.csv", tag = "settlement", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn report_csv(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    csv_answer(&state, &q).await
}

/// What an aggregation is owed (positive) or owes (negative) over a range, and how its
/// resources' shares split it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Balance {
    pub aggregation_id: u64,
    #[schema(value_type = String)]
    pub receivable_cny: Decimal,
    #[schema(value_type = String)]
    pub payable_cny: Decimal,
    #[schema(value_type = String)]
    pub net_cny: Decimal,
    /// `resource_share` lines summed per resource.
    #[schema(value_type = Object)]
    pub resource_shares_cny: BTreeMap<u64, Decimal>,
}

pub fn balances_of(records: &[SettlementRecord]) -> Vec<Balance> {
    let mut by: BTreeMap<u64, Balance> = BTreeMap::new();
    for r in records {
        let b = by.entry(r.aggregation_id.0).or_insert_with(|| Balance {
            aggregation_id: r.aggregation_id.0,
            receivable_cny: Decimal::ZERO,
            payable_cny: Decimal::ZERO,
            net_cny: Decimal::ZERO,
            resource_shares_cny: BTreeMap::new(),
        });
        if r.total_cny >= Decimal::ZERO {
            b.receivable_cny += r.total_cny;
        } else {
            b.payable_cny -= r.total_cny;
        }
        b.net_cny += r.total_cny;
        for l in r.lines.iter().filter(|l| l.kind == "resource_share") {
            if let Some(rid) = l.resource_id {
                *b.resource_shares_cny.entry(rid.0).or_default() += l.amount_cny;
            }
        }
    }
    by.into_values().collect()
}

#[utoipa::path(get, path = "/api/v1/settlement/balances", tag = "settlement", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn balances(
    state: web::Data<ApiState>,
    caller: Caller,
    q: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let (from, to) = q.range()?;
    let records = q.records(&state).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "from": from,
        "to": to,
        "items": balances_of(&records),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpp_engine::ids::{AggregationId, MarketId, ResourceId};
    use vpp_persistence::SettlementLine;

    fn line(no: u32, kind: &str, amount: &str, rid: Option<u64>) -> SettlementLine {
        SettlementLine {
            line_no: no,
            kind: kind.into(),
            resource_id: rid.map(ResourceId),
            interval: None,
            quantity_mwh: "1.5".parse().unwrap(),
            price_cny_per_mwh: "300".parse().unwrap(),
            amount_cny: amount.parse().unwrap(),
            note: "a, \"quoted\" note".into(),
        }
    }

    fn record(
        id: u64,
        agg: u64,
        day: &str,
        total: &str,
        lines: Vec<SettlementLine>,
    ) -> SettlementRecord {
        SettlementRecord {
            id,
            aggregation_id: AggregationId(agg),
            market_id: MarketId(1),
            trading_day: day.parse().unwrap(),
            created_at: chrono::Utc::now(),
            total_cny: total.parse().unwrap(),
            detail: serde_json::Value::Null,
            lines,
        }
    }

    #[test]
    fn pnl_balances_and_csv_sum_exact_decimals() {
        let records = vec![
            record(
                1,
                1,
                "2024-05-01",
                "450.10",
                vec![line(1, "energy", "450.10", None)],
            ),
            record(
                2,
                1,
                "2024-05-01",
                "-20.05",
                vec![line(1, "deviation_penalty", "-20.05", None)],
            ),
            record(
                3,
                2,
                "2024-05-02",
                "99.99",
                vec![line(1, "resource_share", "99.99", Some(7))],
            ),
        ];
        let (days, total) = pnl(&records);
        assert_eq!(total, "530.04".parse::<Decimal>().unwrap());
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].total_cny, "430.05".parse::<Decimal>().unwrap());
        assert_eq!(
            days[0].by_kind_cny["deviation_penalty"],
            "-20.05".parse::<Decimal>().unwrap()
        );
        assert_eq!(days[0].energy_mwh, "1.5".parse::<Decimal>().unwrap());
        let b = balances_of(&records);
        assert_eq!(b[0].receivable_cny, "450.10".parse::<Decimal>().unwrap());
        assert_eq!(b[0].payable_cny, "20.05".parse::<Decimal>().unwrap());
        assert_eq!(
            b[1].resource_shares_cny[&7],
            "99.99".parse::<Decimal>().unwrap()
        );
        let csv = report_csv_text(&records);
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows.len(), 4);
        assert!(rows[1].starts_with("1,2024-05-01,1,1,1,energy,,,1.5,300,450.10,"));
        assert!(
            rows[1].ends_with("\"a, \"\"quoted\"\" note\""),
            "{}",
            rows[1]
        );
    }
}
