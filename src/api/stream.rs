//! The live feed: WebSocket `/api/v1/stream`, and the publisher that derives its events from
//! the running engine.
//!
//! Wire format: one JSON text message per [`StreamEvent`] (`{"type": "order" | "position" |
//! "capacity" | "alert" | "latency", ...}`), plus `{"type": "lagged", "skipped": n}` when this
//! client fell behind and lost the `n` oldest events.
//!
//! Invariants:
//! - Authentication (by the gate): `Authorization: Bearer <token>` or `?token=<token>`
//!   (browsers cannot set headers on a WebSocket); a viewer token suffices. A missing or bad
//!   token is a 401 in the API's error shape before the upgrade. A feed whose token is revoked
//!   or expires is closed (close code 1008) within [`SESSION_CHECK`] and one store read: one
//!   watcher task reads the tokens for all open feeds. At most [`MAX_STREAMS`] feeds.
//! - Memory per client is bounded: the shared broadcast ring (`STREAM_CAPACITY` events) and
//!   the session's bounded outgoing channel. A slow client is never buffered for without
//!   bound: when it falls behind the ring it skips to the newest events and is told how many
//!   it lost (`lagged`); a client that accepts nothing for `SEND_TIMEOUT` is disconnected.
//! - The publisher is one task per API state (started by the first subscriber, ended when
//!   nobody listened for `IDLE_STOP`). Each tick (`TICK`) it emits only what changed, at most
//!   `MAX_EVENTS_PER_TICK` orders and positions (the rest follow on the next ticks: order and
//!   position events are state, so a later one supersedes an earlier one). It only reads the
//!   ledger and the risk engine under their locks, copying out, never awaiting under a lock.

use super::auth::Caller;
use super::catalog::CapacityView;
use super::error::ApiError;
use super::{ApiState, StreamEvent};
use actix_web::{web, HttpRequest, HttpResponse};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use vpp_engine::ids::{AggregationId, ClientOrderId};
use vpp_engine::position::{Position, PositionKey};

/// Publisher period.
pub const TICK: Duration = Duration::from_millis(500);
/// Latency snapshots go out every this many ticks.
const LATENCY_EVERY_TICKS: u64 = 2;
/// Capacity is re-sent unchanged every this many ticks (a newly joined client sees it soon).
const CAPACITY_REFRESH_TICKS: u64 = 10;
/// Bound on order or position events per tick.
pub const MAX_EVENTS_PER_TICK: usize = 256;
/// A client that takes no message for this long is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// The publisher stops after this long without subscribers.
pub const IDLE_STOP: Duration = Duration::from_secs(30);
/// Bound on the order-state memory of the publisher (finished orders are forgotten first).
const MAX_TRACKED_ORDERS: usize = 100_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/stream", web::get().to(stream));
}

/// The live capacity of an aggregation the engine runs (risk's view, fed by the aggregation
/// actors), or `None` without an engine or before the first capacity update.
pub(crate) fn live_capacity(state: &ApiState, id: AggregationId) -> Option<CapacityView> {
    let engine = state.engine.as_ref()?;
    let c = engine.capacity(id)?;
    let name = state
        .park
        .aggregations
        .aggregation_state(id)
        .map_or_else(|| format!("aggregation {id}"), |s| s.name().to_owned());
    let kw = Decimal::ONE_THOUSAND;
    Some(CapacityView {
        aggregation_id: id.0,
        name,
        source: "live",
        up_flex_kw: c.up_flex_mw * kw,
        down_flex_kw: c.down_flex_mw * kw,
        energy_kwh: None,
        available_resources: None,
        at: engine.clock.now(),
    })
}

/// Most WebSocket feeds open at once (another is refused with 503).
pub const MAX_STREAMS: usize = 256;
/// How often the open feeds' tokens are checked against the store: a revoked or expired
/// token's feeds close within this (plus one store read).
pub const SESSION_CHECK: Duration = Duration::from_millis(250);

/// The open feeds and their tokens; one watcher task checks the tokens while any is open.
#[derive(Debug, Default)]
pub struct Sessions {
    next_id: std::sync::atomic::AtomicU64,
    open: Mutex<HashMap<u64, (String, watch::Sender<bool>)>>,
    watching: std::sync::atomic::AtomicBool,
}

impl Sessions {
    /// Registers a feed of the token `hash`; the receiver turns `true` when it must close.
    fn open(&self, hash: &str) -> Result<(u64, watch::Receiver<bool>), ApiError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= MAX_STREAMS {
            return Err(ApiError::Unavailable(format!(
                "{MAX_STREAMS} live feeds are open; retry later"
            )));
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = watch::channel(false);
        open.insert(id, (hash.to_owned(), tx));
        Ok((id, rx))
    }

    fn close(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    pub fn count(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Signals every feed whose token is not in `valid` (hashes of valid tokens).
    fn close_invalid(&self, valid: &std::collections::HashSet<String>) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut closed = 0;
        for (hash, tx) in open.values() {
            if !valid.contains(hash) && !*tx.borrow() {
                let _ = tx.send(true);
                closed += 1;
            }
        }
        closed
    }
}

/// Starts the session watcher unless it runs; it ends when no feed is open.
fn ensure_watcher(state: &ApiState) {
    use std::sync::atomic::Ordering;
    if state.sessions.watching.swap(true, Ordering::AcqRel) {
        return;
    }
    let state = state.clone();
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(SESSION_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if state.sessions.count() == 0 {
                state.sessions.watching.store(false, Ordering::Release);
                // A feed opened meanwhile restarts a watcher if this one has let go.
                if state.sessions.count() == 0
                    || state.sessions.watching.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
            let Ok(tokens) = state.store.list_api_tokens().await else {
                continue;
            };
            let now = chrono::Utc::now();
            let valid: std::collections::HashSet<String> = tokens
                .into_iter()
                .filter(|t| t.revoked_at.is_none() && t.is_valid_at(now))
                .map(|t| t.token_hash)
                .collect();
            let closed = state.sessions.close_invalid(&valid);
            if closed > 0 {
                tracing::info!(
                    closed,
                    "live feeds closed: their token was revoked or expired"
                );
            }
        }
    });
}

#[utoipa::path(get, path = "/api/v1/stream", tag = "stream",
    params(("token" = Option<String>, Query, description = "the token, where a header cannot be set")),
    responses((status = 101, description = "switching to the WebSocket feed"),
        (status = 400, description = "not a WebSocket upgrade", body = super::error::ErrorBody),
        (status = 401, description = "no, unknown, revoked or expired token", body = super::error::ErrorBody),
        (status = 429, description = "rate limited", body = super::error::ErrorBody),
        (status = 503, description = "too many feeds open", body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn stream(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, msgs) = actix_ws::handle(&req, body)?;
    let (id, closing) = state.sessions.open(&caller.token_hash)?;
    ensure_watcher(&state);
    ensure_publisher(&state);
    // Subscribe before the initial snapshot so nothing published meanwhile is missed.
    let rx = state.stream.subscribe();
    let initial = initial_events(&state).await;
    tracing::debug!(token = %caller.name, "stream client connected");
    let sessions = std::sync::Arc::clone(&state.sessions);
    actix_web::rt::spawn(async move {
        client_loop(session, msgs, rx, initial, closing).await;
        sessions.close(id);
    });
    Ok(response)
}

async fn send(session: &mut actix_ws::Session, text: String) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, session.text(text)).await,
        Ok(Ok(()))
    )
}

fn encode(e: &StreamEvent) -> String {
    serde_json::to_string(e).unwrap_or_else(|_| "{\"type\":\"encode_error\"}".to_owned())
}

async fn client_loop(
    mut session: actix_ws::Session,
    mut msgs: actix_ws::MessageStream,
    mut rx: broadcast::Receiver<StreamEvent>,
    initial: Vec<StreamEvent>,
    mut closing: watch::Receiver<bool>,
) {
    for e in &initial {
        if !send(&mut session, encode(e)).await {
            return;
        }
    }
    loop {
        tokio::select! {
            _ = closing.changed() => {
                let reason = actix_ws::CloseReason {
                    code: actix_ws::CloseCode::Policy,
                    description: Some("token revoked or expired".into()),
                };
                let _ = session.close(Some(reason)).await;
                return;
            }
            incoming = msgs.recv() => match incoming {
                Some(Ok(actix_ws::Message::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        return;
                    }
                }
                Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break,
                // The feed is one-way; anything else a client sends is ignored.
                Some(Ok(_)) => {}
            },
            event = rx.recv() => {
                let text = match event {
                    Ok(e) => encode(&e),
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        serde_json::json!({ "type": "lagged", "skipped": skipped }).to_string()
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if !send(&mut session, text).await {
                    tracing::info!("stream client too slow or gone; disconnected");
                    return;
                }
            }
        }
    }
    let _ = session.close(None).await;
}

/// What a new client gets first: open orders, positions, capacity and latency, so the
/// dashboard paints before the first change.
async fn initial_events(state: &ApiState) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    if let Some(engine) = &state.engine {
        let (orders, positions) = {
            let l = engine.ledger.lock().unwrap_or_else(PoisonError::into_inner);
            let orders: Vec<_> = l.open_orders().take(MAX_EVENTS_PER_TICK).cloned().collect();
            let positions: Vec<_> = l
                .positions()
                .iter()
                .take(MAX_EVENTS_PER_TICK)
                .map(|(k, p)| (*k, p.clone()))
                .collect();
            (orders, positions)
        };
        out.extend(orders.iter().map(order_event));
        out.extend(positions.iter().map(|(k, p)| position_event(k, p)));
    }
    if let Ok(caps) = super::catalog::capacities(state).await {
        out.extend(caps.iter().map(capacity_event));
    }
    out.push(latency_event(state));
    out
}

fn order_event(o: &vpp_engine::order::Order) -> StreamEvent {
    StreamEvent::Order {
        client_order_id: o.id().to_string(),
        status: o.status.as_str().to_owned(),
        detail: serde_json::to_value(o).unwrap_or(serde_json::Value::Null),
    }
}

fn position_event(k: &PositionKey, p: &Position) -> StreamEvent {
    StreamEvent::Position {
        aggregation_id: k.aggregation_id.0,
        market_id: k.market_id.0,
        interval_start: k.interval.start(),
        net_sold_mw: p.net_sold_mw(),
    }
}

fn capacity_event(c: &CapacityView) -> StreamEvent {
    let mw = Decimal::ONE_THOUSAND;
    StreamEvent::Capacity {
        aggregation_id: c.aggregation_id,
        up_flex_mw: c.up_flex_kw / mw,
        down_flex_mw: c.down_flex_kw / mw,
    }
}

fn latency_event(state: &ApiState) -> StreamEvent {
    let snap = state.runtime.metrics.snapshot();
    let sum = |name: &str| -> u64 {
        snap.counters
            .iter()
            .filter(|c| c.name == name)
            .map(|c| c.value)
            .sum()
    };
    StreamEvent::Latency {
        snapshot: serde_json::json!({
            "latencies": snap.latencies,
            "counters": {
                "orders_total": sum(vpp_actors::metrics::names::ORDERS_TOTAL),
                "fills_total": sum(vpp_actors::live::oms::names::FILLS_TOTAL),
                "telemetry_samples_total": sum(vpp_actors::metrics::names::TELEMETRY_SAMPLES_TOTAL),
                "rejects_total": sum(vpp_actors::metrics::names::REJECTS_TOTAL),
            },
            "at": chrono::Utc::now(),
        }),
    }
}

// ------------------------------------------------------------------ publisher

/// Running publishers, by their API state's channel.
fn publishers() -> &'static Mutex<Vec<broadcast::Sender<StreamEvent>>> {
    static RUNNING: OnceLock<Mutex<Vec<broadcast::Sender<StreamEvent>>>> = OnceLock::new();
    RUNNING.get_or_init(|| Mutex::new(Vec::new()))
}

/// Starts the publisher of `state` unless it runs.
pub fn ensure_publisher(state: &ApiState) {
    {
        let mut running = publishers().lock().unwrap_or_else(PoisonError::into_inner);
        if running.iter().any(|s| s.same_channel(&state.stream)) {
            return;
        }
        running.push(state.stream.clone());
    }
    let state = state.clone();
    actix_web::rt::spawn(async move {
        publish_loop(&state).await;
        publishers()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|s| !s.same_channel(&state.stream));
    });
}

/// What the publisher has already told the clients.
#[derive(Default)]
struct Seen {
    orders: HashMap<ClientOrderId, (chrono::DateTime<chrono::Utc>, &'static str)>,
    positions: HashMap<PositionKey, Decimal>,
    capacity: HashMap<u64, (Decimal, Decimal)>,
    risk_after_id: u64,
    unhealthy: HashMap<String, String>,
}

async fn publish_loop(state: &ApiState) {
    let mut seen = Seen::default();
    // Alerts start from now: older risk events are in /api/v1/risk/events.
    if let Ok(events) = state
        .store
        .list_risk_events(0, vpp_persistence::MAX_PAGE)
        .await
    {
        seen.risk_after_id = events.last().map_or(0, |e| e.id);
        // A table longer than one page: skip ahead page by page (bounded by the table).
        while let Ok(more) = state
            .store
            .list_risk_events(seen.risk_after_id, vpp_persistence::MAX_PAGE)
            .await
        {
            match more.last() {
                Some(e) => seen.risk_after_id = e.id,
                None => break,
            }
        }
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: u64 = 0;
    let mut idle = Duration::ZERO;
    loop {
        tick.tick().await;
        n += 1;
        if state.stream.receiver_count() == 0 {
            idle += TICK;
            if idle >= IDLE_STOP {
                return;
            }
            continue;
        }
        idle = Duration::ZERO;
        for e in changed_orders_and_positions(state, &mut seen) {
            state.publish(e);
        }
        if n % 2 == 0 || n % CAPACITY_REFRESH_TICKS == 0 {
            publish_capacity(state, &mut seen, n % CAPACITY_REFRESH_TICKS == 0).await;
        }
        if n % LATENCY_EVERY_TICKS == 0 {
            state.publish(latency_event(state));
        }
        publish_alerts(state, &mut seen).await;
    }
}

fn changed_orders_and_positions(state: &ApiState, seen: &mut Seen) -> Vec<StreamEvent> {
    let Some(engine) = &state.engine else {
        return Vec::new();
    };
    let (mut orders, mut positions) = {
        let l = engine.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let orders: Vec<vpp_engine::order::Order> = l
            .orders()
            .filter(|o| {
                seen.orders
                    .get(o.id())
                    .is_none_or(|(at, st)| *at != o.updated_at || *st != o.status.as_str())
            })
            .cloned()
            .collect();
        let positions: Vec<(PositionKey, Position)> = l
            .positions()
            .iter()
            .filter(|(k, p)| seen.positions.get(*k) != Some(&p.net_sold_mw()))
            .map(|(k, p)| (*k, p.clone()))
            .collect();
        (orders, positions)
    };
    orders.sort_by_key(|o| o.updated_at);
    orders.truncate(MAX_EVENTS_PER_TICK);
    positions.truncate(MAX_EVENTS_PER_TICK);
    if seen.orders.len() > MAX_TRACKED_ORDERS {
        seen.orders.retain(|_, (_, st)| {
            !matches!(
                *st,
                "filled" | "cancelled" | "rejected" | "expired" | "cancelled_unsent" | "lost"
            )
        });
    }
    let mut out = Vec::with_capacity(orders.len() + positions.len());
    for o in &orders {
        seen.orders
            .insert(o.id().clone(), (o.updated_at, o.status.as_str()));
        out.push(order_event(o));
    }
    for (k, p) in &positions {
        seen.positions.insert(*k, p.net_sold_mw());
        out.push(position_event(k, p));
    }
    out
}

async fn publish_capacity(state: &ApiState, seen: &mut Seen, force: bool) {
    let Ok(caps) = super::catalog::capacities(state).await else {
        return;
    };
    for c in &caps {
        let now = (c.up_flex_kw, c.down_flex_kw);
        if force || seen.capacity.get(&c.aggregation_id) != Some(&now) {
            seen.capacity.insert(c.aggregation_id, now);
            state.publish(capacity_event(c));
        }
    }
}

async fn publish_alerts(state: &ApiState, seen: &mut Seen) {
    if let Ok(events) = state.store.list_risk_events(seen.risk_after_id, 64).await {
        for e in events {
            seen.risk_after_id = e.id;
            state.publish(StreamEvent::Alert {
                level: e.severity.clone(),
                message: format!("risk {}: {}", e.rule, e.message),
            });
        }
    }
    // Health transitions of actors: degraded, halted, and back to healthy.
    let health = state.runtime.health.snapshot();
    let mut now_unhealthy = HashMap::new();
    for a in &health.actors {
        let text = match &a.health {
            vpp_actors::Health::Healthy => continue,
            vpp_actors::Health::Degraded(r) => format!("degraded: {r}"),
            vpp_actors::Health::Halted(r) => format!("halted: {r}"),
        };
        if seen.unhealthy.get(&a.actor) != Some(&text) {
            state.publish(StreamEvent::Alert {
                level: if text.starts_with("halted") {
                    "critical"
                } else {
                    "warning"
                }
                .into(),
                message: format!("actor {} {text}", a.actor),
            });
        }
        now_unhealthy.insert(a.actor.clone(), text);
    }
    for actor in seen.unhealthy.keys() {
        if !now_unhealthy.contains_key(actor) {
            state.publish(StreamEvent::Alert {
                level: "info".into(),
                message: format!("actor {actor} healthy again"),
            });
        }
    }
    seen.unhealthy = now_unhealthy;
}
