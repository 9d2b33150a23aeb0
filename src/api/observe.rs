//! `/metrics` (Prometheus text format 0.0.4), `/health` (liveness and readiness) and
//! `/api/v1/latency` (the latency snapshot as JSON, for the dashboard).
//!
//! `/metrics` is the actor runtime's registry rendered by `MetricsSnapshot::prometheus` (per-
//! stage latency summaries with quantiles 0.5/0.9/0.99/0.999 plus `_sum`/`_count` and the
//! `vpp_stage_latency_max_us` gauge; counters such as orders, fills, rejects by stage and risk
//! reject code, reconnects, restarts, conflated messages, telemetry samples) followed by gauges
//! derived here from the live engine: orders by state, positions, net position and capacity
//! per aggregation, the venue connection state and the journal commit lag.
//!
//! Invariants:
//! - `/health` and `/metrics` are public (no token: probes and scrapers) and reveal no
//!   credential, no order detail and no token.
//! - `/health` answers 200 when ready and 503 when not, with the same JSON body either way;
//!   `?probe=live` answers liveness only (200 while the process serves HTTP).
//! - Ready means: the engine runs, its venue session is `live`, no core actor (oms, risk,
//!   dispatch, aggregation, the order journal) is halted, and the journal's commit lag p99 is under
//!   [`JOURNAL_LAG_READY_US`]. A halted strategy or a degraded actor leaves the daemon ready
//!   but `degraded`.
//! - Rendering takes the ledger lock once, copies counts out and releases it.

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use crate::token::Role;
use actix_web::{web, HttpResponse};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::PoisonError;
use utoipa::ToSchema;
use vpp_actors::metrics::Stage;
use vpp_actors::Health;

/// Journal commit lag (p99) above which the daemon is not ready: 5 s.
pub const JOURNAL_LAG_READY_US: f64 = 5_000_000.0;

/// Top-level routes (outside `/api/v1`).
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/health", web::get().to(health));
}

/// Routes under `/api/v1`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/latency", web::get().to(latency));
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn f64_of(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(0.0)
}

/// The whole `/metrics` text.
pub fn render_metrics(state: &ApiState) -> String {
    let snap = state.runtime.metrics.snapshot();
    let mut out = snap.prometheus();
    let lag = snap.latency(Stage::JournalCommitLag, "journal");
    let _ = writeln!(
        out,
        "# HELP vpp_journal_commit_lag_us Journal commit lag (batch queued to committed).\n\
         # TYPE vpp_journal_commit_lag_us gauge"
    );
    let _ = writeln!(
        out,
        "vpp_journal_commit_lag_us{{quantile=\"0.99\"}} {}",
        lag.map_or(0.0, |s| s.p99_us)
    );
    let _ = writeln!(
        out,
        "vpp_journal_commit_lag_us{{quantile=\"max\"}} {}",
        lag.map_or(0.0, |s| s.max_us)
    );
    let Some(engine) = &state.engine else {
        let _ = writeln!(out, "# TYPE vpp_engine_running gauge\nvpp_engine_running 0");
        return out;
    };
    let _ = writeln!(out, "# TYPE vpp_engine_running gauge\nvpp_engine_running 1");
    let (by_state, positions, net_by_agg) = {
        let l = engine.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let mut by_state: BTreeMap<&'static str, u64> = vpp_engine::order::OrderStatus::ALL
            .iter()
            .map(|s| (s.as_str(), 0))
            .collect();
        for o in l.orders() {
            *by_state.entry(o.status.as_str()).or_insert(0) += 1;
        }
        let mut net: BTreeMap<u64, Decimal> = BTreeMap::new();
        for (k, p) in l.positions() {
            *net.entry(k.aggregation_id.0).or_default() += p.net_sold_mw();
        }
        (by_state, l.positions().len(), net)
    };
    let _ = writeln!(
        out,
        "# HELP vpp_orders Orders in the ledger by current state.\n# TYPE vpp_orders gauge"
    );
    for (s, n) in &by_state {
        let _ = writeln!(out, "vpp_orders{{state=\"{s}\"}} {n}");
    }
    let _ = writeln!(out, "# TYPE vpp_positions gauge\nvpp_positions {positions}");
    let names = aggregation_names(state);
    let name_of = |id: u64| names.get(&id).cloned().unwrap_or_else(|| id.to_string());
    let _ = writeln!(
        out,
        "# HELP vpp_position_net_sold_mw Net sold MW over all intervals per aggregation.\n\
         # TYPE vpp_position_net_sold_mw gauge"
    );
    for (id, net) in &net_by_agg {
        let _ = writeln!(
            out,
            "vpp_position_net_sold_mw{{aggregation=\"{}\"}} {}",
            escape(&name_of(*id)),
            f64_of(*net)
        );
    }
    let _ = writeln!(out, "# TYPE vpp_capacity_up_flex_kw gauge");
    let mut caps = Vec::new();
    for id in names.keys() {
        if let Some(c) = super::stream::live_capacity(state, vpp_engine::ids::AggregationId(*id)) {
            caps.push(c);
        }
    }
    for c in &caps {
        let _ = writeln!(
            out,
            "vpp_capacity_up_flex_kw{{aggregation=\"{}\"}} {}",
            escape(&c.name),
            f64_of(c.up_flex_kw)
        );
    }
    let _ = writeln!(out, "# TYPE vpp_capacity_down_flex_kw gauge");
    for c in &caps {
        let _ = writeln!(
            out,
            "vpp_capacity_down_flex_kw{{aggregation=\"{}\"}} {}",
            escape(&c.name),
            f64_of(c.down_flex_kw)
        );
    }
    let conn = engine.connection();
    let _ = writeln!(
        out,
        "# HELP vpp_venue_live 1 while the venue session is live.\n# TYPE vpp_venue_live gauge\n\
         vpp_venue_live{{venue=\"{}\"}} {}",
        escape(&conn.venue),
        u8::from(conn.state == "live")
    );
    out
}

fn aggregation_names(state: &ApiState) -> BTreeMap<u64, String> {
    state
        .park
        .aggregations
        .aggregations()
        .map(|a| (a.id.0, a.name))
        .collect()
}

#[utoipa::path(get, path = "/metrics", tag = "observe", responses((status = 200, description = "success")))]
pub async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(render_metrics(&state))
}

/// One venue connection in `/health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VenueHealth {
    pub venue: String,
    pub state: String,
    pub connected: bool,
    pub detail: Option<String>,
}

/// An actor that is not healthy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActorIssue {
    pub actor: String,
    /// `degraded` or `halted`.
    pub status: String,
    pub reason: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// The `/health` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthReport {
    /// `healthy`, `degraded` (ready but impaired) or `not_ready`.
    pub status: String,
    pub live: bool,
    pub ready: bool,
    /// Why the daemon is not ready (empty when ready).
    pub reasons: Vec<String>,
    pub venues: Vec<VenueHealth>,
    pub journal_commit_lag_p99_us: f64,
    pub degraded_actors: Vec<ActorIssue>,
    pub at: chrono::DateTime<chrono::Utc>,
}

fn is_core(actor: &str) -> bool {
    vpp_actors::health::is_core_actor(actor)
}

pub fn health_report(state: &ApiState) -> HealthReport {
    let snap = state.runtime.health.snapshot();
    let mut reasons = Vec::new();
    let mut degraded_actors = Vec::new();
    for a in &snap.actors {
        let (status, reason) = match &a.health {
            Health::Healthy => continue,
            Health::Degraded(r) => ("degraded", r.clone()),
            Health::Halted(r) => ("halted", r.clone()),
        };
        if status == "halted" && is_core(&a.actor) {
            reasons.push(format!("core actor {} is halted: {reason}", a.actor));
        }
        degraded_actors.push(ActorIssue {
            actor: a.actor.clone(),
            status: status.to_owned(),
            reason,
            since: a.since,
        });
    }
    let venues = match &state.engine {
        Some(engine) => {
            let c = engine.connection();
            let connected = c.state == "live";
            if !connected {
                reasons.push(format!("venue {} is {}", c.venue, c.state));
            }
            vec![VenueHealth {
                venue: c.venue,
                state: c.state,
                connected,
                detail: c.detail,
            }]
        }
        None => {
            reasons.push("the engine is not running".to_owned());
            Vec::new()
        }
    };
    let lag = state
        .runtime
        .metrics
        .snapshot()
        .latency(Stage::JournalCommitLag, "journal")
        .map_or(0.0, |s| s.p99_us);
    if lag > JOURNAL_LAG_READY_US {
        reasons.push(format!(
            "journal commit lag p99 {:.0} ms is above {:.0} ms",
            lag / 1000.0,
            JOURNAL_LAG_READY_US / 1000.0
        ));
    }
    let ready = reasons.is_empty();
    let status = if !ready {
        "not_ready"
    } else if degraded_actors.is_empty() {
        "healthy"
    } else {
        "degraded"
    };
    HealthReport {
        status: status.to_owned(),
        live: true,
        ready,
        reasons,
        venues,
        journal_commit_lag_p99_us: lag,
        degraded_actors,
        at: chrono::Utc::now(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthQuery {
    /// `live` (liveness only) or `ready` (default).
    probe: Option<String>,
}

#[utoipa::path(get, path = "/health", tag = "observe", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody), (status = 503, description = "not ready")))]
pub async fn health(
    state: web::Data<ApiState>,
    q: web::Query<HealthQuery>,
) -> Result<HttpResponse, ApiError> {
    let report = health_report(&state);
    match q.probe.as_deref() {
        None | Some("ready") => {}
        Some("live") => return Ok(HttpResponse::Ok().json(report)),
        Some(other) => {
            return Err(ApiError::BadRequest {
                code: "bad_query",
                message: format!("probe={other:?}: expected live or ready"),
                field: Some("probe".into()),
            })
        }
    }
    Ok(if report.ready {
        HttpResponse::Ok().json(report)
    } else {
        HttpResponse::ServiceUnavailable().json(report)
    })
}

#[utoipa::path(get, path = "/api/v1/latency", tag = "observe", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn latency(state: web::Data<ApiState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let snap = state.runtime.metrics.snapshot();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": snap.latencies })))
}
