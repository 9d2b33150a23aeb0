//! The operator HTTP API (actix-web) under `/api/v1`: state, routing, limits and serving.
//!
//! Owns: the shared [`ApiState`], the JSON/query/path error handlers, the body limit, the
//! error-shape middleware and the server. Route modules each expose
//! `pub fn routes(cfg: &mut web::ServiceConfig)` and are mounted in [`configure`].
//!
//! Invariants:
//! - Every answer that is an error has the shape of [`error::ErrorBody`]; bad input is 4xx.
//! - [`gate`] runs before routing: the role matrix of [`roles`] (404/405), authentication,
//!   rate limits and roles (401/429/403), all before a byte of the body is read. Every
//!   non-public route takes an [`auth::Caller`]; bodies come through [`body::Body`] (strict:
//!   413/415/400 before the handler runs); every state-changing handler calls
//!   [`audit::audit`] with its outcome.
//! - Nothing here serialises a market credential: the venue API key lives only in
//!   `RunOptions`/`AdapterConfig`, neither of which is reachable from [`ApiState`].
//!
//! Adding a route module: write `src/api/<name>.rs` with `pub fn routes(cfg)`, add one
//! `.configure(<name>::routes)` line in [`configure`], and list its handlers and schemas in
//! `openapi.rs`. Where two modules share a path (e.g. `/orders`), register the resource with a
//! method guard (`web::resource(p).guard(guard::Get())`) so the router falls through to the
//! other module's resource instead of answering 405.

pub mod audit;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod dashboard;
pub mod engine;
pub mod error;
pub mod gate;
pub mod limits;
pub mod observe;
pub mod openapi;
pub mod page;
pub mod records;
pub mod roles;
pub mod settlement;
pub mod strategies;
pub mod stream;

pub use auth::Caller;
pub use error::ApiError;

use crate::daemon::control::EngineHandle;
use actix_web::dev::ServerHandle;
use actix_web::middleware::ErrorHandlers;
use actix_web::{web, App, HttpServer};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::broadcast;
use utoipa::ToSchema;

/// Capacity of the live-feed broadcast channel: a slow subscriber loses the oldest events
/// (it sees `Lagged`) rather than holding memory.
pub const STREAM_CAPACITY: usize = 1_024;

/// One live-feed event (WebSocket `/api/v1/stream`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    Order {
        client_order_id: String,
        status: String,
        #[schema(value_type = Object)]
        detail: serde_json::Value,
    },
    Position {
        aggregation_id: u64,
        market_id: u64,
        interval_start: chrono::DateTime<chrono::Utc>,
        #[schema(value_type = String)]
        net_sold_mw: Decimal,
    },
    Capacity {
        aggregation_id: u64,
        #[schema(value_type = String)]
        up_flex_mw: Decimal,
        #[schema(value_type = String)]
        down_flex_mw: Decimal,
    },
    Alert {
        level: String,
        message: String,
    },
    Latency {
        #[schema(value_type = Object)]
        snapshot: serde_json::Value,
    },
}

/// Everything a handler may reach. Cheap to clone (handles only).
#[derive(Clone)]
pub struct ApiState {
    pub store: vpp_persistence::Store,
    /// The live engine; `None` when the API runs without a daemon (tests of store routes).
    pub engine: Option<Arc<EngineHandle>>,
    /// Metrics and health of the actor system.
    pub runtime: vpp_actors::Runtime,
    pub park: Arc<crate::config::Park>,
    /// Live feed; producers `send` (never blocks), the WebSocket subscribes.
    pub stream: broadcast::Sender<StreamEvent>,
    pub limiter: Arc<limits::RateLimiter>,
    /// Budgets of unauthenticated calls per peer address.
    pub peers: Arc<limits::RateLimiter<std::net::IpAddr>>,
    /// Counted, bounded audit of refusals.
    pub refusals: Arc<gate::RefusalLog>,
    /// Open WebSocket feeds, closed when their token is revoked or expires.
    pub sessions: Arc<stream::Sessions>,
    /// Recently verified tokens (short TTL), so a request does not always query the store.
    pub tokens: Arc<auth::TokenCache>,
}

impl ApiState {
    pub fn new(
        store: vpp_persistence::Store,
        engine: Option<Arc<EngineHandle>>,
        runtime: vpp_actors::Runtime,
        park: Arc<crate::config::Park>,
        rate: limits::RateLimit,
    ) -> Self {
        let (stream, _) = broadcast::channel(STREAM_CAPACITY);
        Self {
            store,
            engine,
            runtime,
            park,
            stream,
            limiter: Arc::new(limits::RateLimiter::new(rate)),
            peers: Arc::new(limits::RateLimiter::new(rate.for_peers())),
            refusals: Arc::new(gate::RefusalLog::new(
                gate::REFUSAL_WINDOW,
                gate::MAX_REFUSAL_KEYS,
            )),
            sessions: Arc::new(stream::Sessions::default()),
            tokens: Arc::new(auth::TokenCache::new(
                auth::TOKEN_CACHE_TTL,
                auth::TOKEN_CACHE_MAX,
            )),
        }
    }

    /// The live engine or 503.
    pub fn engine(&self) -> Result<&Arc<EngineHandle>, ApiError> {
        self.engine
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("the live engine is not running".into()))
    }

    /// Publishes a live-feed event; no subscriber is not an error.
    pub fn publish(&self, event: StreamEvent) {
        let _ = self.stream.send(event);
    }
}

/// Mounts every route: `/api/v1/...` plus the public top-level ones.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .configure(openapi::routes)
            .configure(engine::routes)
            .configure(catalog::routes)
            .configure(records::routes)
            .configure(settlement::routes)
            .configure(strategies::routes)
            .configure(stream::routes)
            .configure(observe::routes)
            .configure(dashboard::routes),
    )
    .configure(observe::public_routes)
    .configure(dashboard::public_routes);
}

/// The extractor settings: body limit and the error shape for bad JSON, query and path.
pub fn extractor_config(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(limits::BODY_LIMIT_BYTES)
            .error_handler(error::json_error),
    )
    .app_data(web::PayloadConfig::new(limits::BODY_LIMIT_BYTES))
    .app_data(web::QueryConfig::default().error_handler(error::query_error))
    .app_data(web::PathConfig::default().error_handler(error::path_error));
}

/// Builds the app for one worker (also used by in-process tests with `actix_web::test`).
pub fn app(
    state: ApiState,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<
            actix_web::body::EitherBody<actix_web::body::EitherBody<actix_web::body::BoxBody>>,
        >,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(state))
        .configure(extractor_config)
        .configure(configure)
        .default_service(web::to(not_found))
        .wrap(actix_web::middleware::from_fn(gate::gate))
        .wrap(ErrorHandlers::new().default_handler(error::shape_errors))
}

async fn not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found(
        format!("route {} {}", req.method(), req.path()),
        None,
    ))
}

/// Starts the API server on `listen` (port 0 picks a free port) and returns its handle and
/// the bound address. The server runs on the current actix system until stopped.
pub async fn serve(
    state: ApiState,
    listen: SocketAddr,
) -> Result<(ServerHandle, SocketAddr), ApiError> {
    let flusher = state.clone();
    let server = HttpServer::new(move || app(state.clone()))
        .workers(2)
        .backlog(1_024)
        .max_connections(10_000)
        .shutdown_timeout(2)
        .disable_signals()
        .bind(listen)
        .map_err(|e| ApiError::Unavailable(format!("cannot listen on {listen}: {e}")))?;
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| ApiError::Internal(format!("no address bound for {listen}")))?;
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "operator API server stopped with an error");
        }
    });
    // Refusal summaries are written when their window ends, even if no refusal follows.
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(gate::REFUSAL_WINDOW / 2);
        loop {
            tick.tick().await;
            gate::flush_refusals(&flusher).await;
        }
    });
    tracing::info!(url = %format!("http://{bound}/api/v1"), "operator API listening");
    Ok((handle, bound))
}
