//! The venue adapter boundary: the [`VenueAdapter`] trait, its events, and [`WsAdapter`], the
//! WebSocket implementation with reconnect and reconciliation (see `session`).
//!
//! Invariants of every adapter:
//! - An order handed to `send_order` is sent once, or refused with a reason, or — queued
//!   behind the rate window and never written when the connection is lost or the adapter shuts
//!   down — ended [`OrderEnd::Unsent`]; never dropped silently, never sent twice, never sent by
//!   itself after a reconnect (a strategy decides afresh).
//! - New orders are taken only while the session is live; while disconnected or reconciling
//!   they are refused ([`AdapterError::NotLive`]). Cancels are held and go out after
//!   reconciliation.
//! - A venue reset (a new `venue_epoch`, an `account_seq` below the last one applied, or an
//!   acknowledged order the venue does not know) is reported ([`AdapterEvent::VenueReset`])
//!   before the session goes live again; every open order the venue does not know ends
//!   [`OrderEnd::Lost`] (acknowledged once) or [`OrderEnd::Unsent`] (never received).
//! - Exec reports reach the event stream in account sequence order, each at most once; stale
//!   and duplicate reports change nothing. They are never dropped (bounded channel, awaited).
//! - Market data is conflated for a slow reader: latest value per key, losses counted.

mod session;
pub mod util;

use crate::protocol::{Channel, ErrorMsg, OrderState, RateLimit, Subscription};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use util::{BackoffConfig, Conflator};
pub use util::{MarketItem, MarketUpdate};
use vpp_engine::clock::Clock;
use vpp_engine::ids::{ClientOrderId, MarketId};
use vpp_engine::order::{ExecReport, Order, OrderRequest};

/// Which venue symbol an engine market id trades as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketMapping {
    pub market_id: MarketId,
    pub symbol: String,
}

/// Configuration of one venue connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdapterConfig {
    /// Name used in logs and events.
    pub venue: String,
    /// `ws://` for loopback, `wss://` for a real venue (rustls, ring).
    pub url: String,
    pub api_key: String,
    pub markets: Vec<MarketMapping>,
    pub backoff: BackoffConfig,
    pub heartbeat_interval_ms: u64,
    /// No frame at all from the venue for this long: the connection is dead, reconnect.
    pub heartbeat_timeout_ms: u64,
    /// Connect, login and reconciliation must each finish within this.
    pub request_timeout_ms: u64,
    /// Overrides the rate limit the venue announces at login.
    pub rate_limit: Option<RateLimit>,
    /// Orders (and cancels/replaces) held while not live.
    pub max_pending_orders: usize,
    /// Exec reports and state events waiting for the reader.
    pub event_capacity: usize,
    /// Distinct market data keys held for a slow reader.
    pub max_market_keys: usize,
    /// Exec reports held out of order while a gap is being filled.
    pub max_reorder_reports: usize,
    /// Seed of the backoff jitter.
    pub seed: u64,
    /// TLS settings for wss; `None` uses the webpki roots.
    #[serde(skip)]
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            venue: "venue".into(),
            url: "ws://127.0.0.1:9900".into(),
            api_key: String::new(),
            markets: Vec::new(),
            backoff: BackoffConfig::default(),
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 3_000,
            request_timeout_ms: 5_000,
            rate_limit: None,
            max_pending_orders: 1_000,
            event_capacity: 10_000,
            max_market_keys: 10_000,
            max_reorder_reports: 10_000,
            seed: 0,
            tls: None,
        }
    }
}

/// A rustls client configuration with the ring provider and the given roots.
pub fn tls_config(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Trying to connect; `attempt` counts failures since the last live session.
    Connecting { attempt: u32 },
    /// Connected: logging in, resubscribing and reconciling. Orders are held.
    Syncing,
    /// Reconciled; orders flow.
    Live,
    /// Lost the connection; reconnecting after a backoff.
    Disconnected { reason: String },
    /// Stopped for good (shutdown or retries exhausted).
    Stopped { reason: String },
}

/// What reconciliation found after a (re)connect.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reconciled {
    /// 1 for the first session, +1 for each reconnect.
    pub session: u64,
    pub subscriptions_restored: usize,
    pub reports_replayed: usize,
    pub orders_checked: usize,
    /// Sent orders the venue says it never received: ended unsent, never resent.
    pub orders_unsent: usize,
    /// Acknowledged orders the venue no longer knows: ended lost (a venue reset).
    pub orders_lost: usize,
    /// Orders whose venue status still differs from ours after the replay.
    pub mismatches: Vec<ClientOrderId>,
    /// Working orders at the venue that this adapter does not know (adopt or cancel them).
    pub unknown_open_orders: Vec<OrderState>,
}

/// Everything an adapter reports.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterEvent {
    Connection(ConnectionState),
    /// An exec report that changed one of our orders, in account sequence order.
    ExecReport(ExecReport),
    /// A report about an order this adapter does not hold.
    ForeignReport(ExecReport),
    MarketData(MarketUpdate),
    Reconciled(Reconciled),
    /// The venue refused a request (`client_order_id` says which order, when it is one).
    VenueError(ErrorMsg),
    /// An order handed over with [`WsAdapter::submit_order`] was refused by the adapter
    /// itself (duplicate id, unknown market, invalid, held buffer full): it never went out.
    OrderRefused {
        client_order_id: ClientOrderId,
        reason: String,
    },
    /// The venue restarted and lost its state (or does not know orders it acknowledged). The
    /// owner must stop new orders (kill switch) and alert; resuming is an operator decision.
    VenueReset(VenueReset),
    /// The adapter ended an order locally: it was never sent, or the venue does not know it.
    OrderEnded {
        client_order_id: ClientOrderId,
        end: OrderEnd,
        reason: String,
    },
}

/// What the adapter saw of a venue reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenueReset {
    pub reason: String,
    pub previous_epoch: Option<String>,
    pub epoch: Option<String>,
    /// The last account sequence this adapter applied before the reset.
    pub previous_account_seq: u64,
    /// The venue's account sequence at the new login.
    pub account_seq: u64,
}

/// How an order the adapter ended locally ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEnd {
    /// Never written to the venue, or the venue says it never received it: `cancelled_unsent`.
    Unsent,
    /// Acknowledged once, unknown to the venue now: `lost`. `venue_account_seq` is set when a
    /// reset restarted the account sequence there.
    Lost { venue_account_seq: Option<u64> },
}

/// Monotonic instants (ns, of the adapter's clock) carried with an order through the adapter,
/// handed back to the [`OrderWrittenHook`] once its frame is written to the socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderStamp {
    /// The market data that caused the order was decoded (0: not caused by market data).
    pub tick_ns: u64,
    /// The order was handed to the adapter's owner (e.g. the OMS sent it); 0: unknown.
    pub handed_ns: u64,
}

/// Called by the connection task right after a new order's frame was written to the socket,
/// with the order's stamp and the monotonic time of the write. Runs on the hot path: it must
/// not block (recording into a histogram is fine).
pub type OrderWrittenHook = Arc<dyn Fn(&ClientOrderId, OrderStamp, u64) + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AdapterError {
    #[error("the adapter has stopped")]
    Stopped,
    #[error("{held} requests are already held while the venue is not live (capacity {capacity}); refused, retry later")]
    BufferFull { held: usize, capacity: usize },
    #[error("client order id {0} was already used; ids are never reused")]
    DuplicateClientOrderId(ClientOrderId),
    #[error("order {0} is not known to this adapter")]
    UnknownOrder(ClientOrderId),
    #[error("market id {0} has no venue symbol in the adapter's `markets` config")]
    UnknownMarket(MarketId),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the adapter's command queue is full (capacity {capacity}); retry later")]
    Busy { capacity: usize },
    #[error("the venue session is not live ({0}); new orders are refused until it is")]
    NotLive(String),
}

/// What happened to an order handed to the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Going out on the live connection now (after any earlier held request, and within the
    /// rate window).
    Sent,
    /// Held until the venue is live and reconciled (or the rate window frees up).
    Held,
}

/// Counters of one adapter.
#[derive(Debug, Default)]
pub struct AdapterStats {
    pub sessions: AtomicU64,
    pub malformed_in: AtomicU64,
    pub unknown_in: AtomicU64,
    pub market_gaps: AtomicU64,
    pub report_gaps: AtomicU64,
    pub duplicate_reports: AtomicU64,
    pub stale_reports: AtomicU64,
    pub rejected_reports: AtomicU64,
    pub orders_sent: AtomicU64,
}

/// A point-in-time copy of [`AdapterStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub sessions: u64,
    pub malformed_in: u64,
    pub unknown_in: u64,
    pub market_gaps: u64,
    pub report_gaps: u64,
    pub duplicate_reports: u64,
    pub stale_reports: u64,
    pub rejected_reports: u64,
    pub orders_sent: u64,
    pub conflated_market_data: u64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The boundary every venue protocol implements; actors hold one of these.
pub trait VenueAdapter: Send + Sync + 'static {
    fn venue(&self) -> &str;
    fn state(&self) -> ConnectionState;
    /// Subscribes now and after every reconnect.
    fn subscribe(
        &self,
        channel: Channel,
        market: &str,
    ) -> impl Future<Output = Result<(), AdapterError>> + Send;
    fn unsubscribe(
        &self,
        channel: Channel,
        market: &str,
    ) -> impl Future<Output = Result<(), AdapterError>> + Send;
    fn send_order(
        &self,
        order: OrderRequest,
    ) -> impl Future<Output = Result<SendOutcome, AdapterError>> + Send;
    fn cancel(
        &self,
        id: ClientOrderId,
    ) -> impl Future<Output = Result<SendOutcome, AdapterError>> + Send;
    fn replace(
        &self,
        id: ClientOrderId,
        quantity_mw: Decimal,
        price_cny_per_mwh: Decimal,
    ) -> impl Future<Output = Result<SendOutcome, AdapterError>> + Send;
    /// Closes the connection and stops reconnecting.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// The reader side of an adapter: exec reports and state first, then conflated market data.
pub struct AdapterEvents {
    rx: mpsc::Receiver<AdapterEvent>,
    md: Arc<Conflator>,
}

impl AdapterEvents {
    /// The next event; `None` once the adapter stopped and everything was read.
    pub async fn recv(&mut self) -> Option<AdapterEvent> {
        loop {
            if let Ok(ev) = self.rx.try_recv() {
                return Some(ev);
            }
            if let Some(md) = self.md.pop() {
                return Some(AdapterEvent::MarketData(md));
            }
            tokio::select! {
                biased;
                ev = self.rx.recv() => return ev.or_else(|| self.md.pop().map(AdapterEvent::MarketData)),
                _ = self.md.notified() => {}
            }
        }
    }

    /// Market data values overwritten before they were read.
    pub fn conflated(&self) -> u64 {
        self.md.conflated()
    }

    /// Events (reports, state) queued for the reader now, market data keys aside.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

pub(crate) enum Command {
    Subscribe(
        Subscription,
        bool,
        oneshot::Sender<Result<(), AdapterError>>,
    ),
    SendOrder(
        Box<OrderRequest>,
        oneshot::Sender<Result<SendOutcome, AdapterError>>,
    ),
    /// Fire and forget: a refusal comes back as [`AdapterEvent::OrderRefused`].
    Submit(Box<OrderRequest>, OrderStamp),
    /// Fire and forget: a refused cancel is logged (usually a race with the order's end).
    SubmitCancel(ClientOrderId),
    Cancel(
        ClientOrderId,
        oneshot::Sender<Result<SendOutcome, AdapterError>>,
    ),
    Replace(
        ClientOrderId,
        Decimal,
        Decimal,
        oneshot::Sender<Result<SendOutcome, AdapterError>>,
    ),
    Restore(Vec<Order>, u64, oneshot::Sender<Result<(), AdapterError>>),
    /// Ends every queued, never written new order ([`OrderEnd::Unsent`]); answers how many.
    DropUnsent(String, oneshot::Sender<usize>),
    /// Operator disconnect (`true`: close the session and stay disconnected, holding orders)
    /// or connect (`false`: reconnect now, then reconcile as after any reconnect).
    Pause(bool, oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// The WebSocket venue adapter. Cheap to share behind an `Arc`.
pub struct WsAdapter {
    venue: String,
    cmds: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
    stats: Arc<AdapterStats>,
    md: Arc<Conflator>,
    written: Arc<OnceLock<OrderWrittenHook>>,
}

/// Capacity of the command queue between the adapter handle and its connection task.
pub const COMMAND_QUEUE: usize = 1_024;

impl WsAdapter {
    /// Starts the connection task (it connects in the background and never gives up unless
    /// `backoff.max_retries` says so) and returns the adapter and its event stream.
    pub fn connect(cfg: AdapterConfig, clock: Arc<dyn Clock>) -> (WsAdapter, AdapterEvents) {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(cfg.event_capacity.max(1));
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting { attempt: 0 });
        let stats = Arc::new(AdapterStats::default());
        let md = Arc::new(Conflator::new(cfg.max_market_keys));
        let venue = cfg.venue.clone();
        let written = Arc::new(OnceLock::new());
        let task = session::Task::new(
            cfg,
            clock,
            ev_tx,
            state_tx,
            stats.clone(),
            md.clone(),
            Arc::clone(&written),
        );
        tokio::spawn(task.run(cmd_rx));
        let adapter = WsAdapter {
            venue,
            cmds: cmd_tx,
            state: state_rx,
            stats,
            md: md.clone(),
            written,
        };
        (adapter, AdapterEvents { rx: ev_rx, md })
    }

    /// Seeds the adapter with orders and the last report sequence from the journal, so a
    /// restarted daemon neither resends nor forgets them. Call it right after `connect`; it
    /// takes effect at the next reconciliation (the first one, when called before it).
    pub async fn restore(
        &self,
        orders: Vec<Order>,
        last_account_seq: u64,
    ) -> Result<(), AdapterError> {
        self.call(|tx| Command::Restore(orders, last_account_seq, tx))
            .await?
    }

    /// Graceful stop, step one: every new order still queued in the adapter (behind the rate
    /// window) is taken out and reported [`AdapterEvent::OrderEnded`] `Unsent` with `reason`,
    /// so it is journaled terminal and never sent; cancels already queued go out first.
    /// Returns how many orders were ended.
    pub async fn drop_unsent(&self, reason: &str) -> Result<usize, AdapterError> {
        let reason = reason.to_owned();
        self.call(|tx| Command::DropUnsent(reason, tx)).await
    }

    /// Installs the hook told about every new order frame written (once; false if one was
    /// already installed).
    pub fn set_order_written_hook(&self, hook: OrderWrittenHook) -> bool {
        self.written.set(hook).is_ok()
    }

    /// Hands an order to the connection task without waiting for it: the hot path of a
    /// connector. `Err(Busy)` only when the command queue is full (nothing was queued); every
    /// later refusal arrives as [`AdapterEvent::OrderRefused`], never silently.
    pub fn submit_order(&self, order: OrderRequest, stamp: OrderStamp) -> Result<(), AdapterError> {
        self.try_command(Command::Submit(Box::new(order), stamp))
    }

    /// Hands a cancel to the connection task without waiting for it (see [`Self::submit_order`]).
    pub fn submit_cancel(&self, id: ClientOrderId) -> Result<(), AdapterError> {
        self.try_command(Command::SubmitCancel(id))
    }

    fn try_command(&self, cmd: Command) -> Result<(), AdapterError> {
        self.cmds.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => AdapterError::Busy {
                capacity: COMMAND_QUEUE,
            },
            mpsc::error::TrySendError::Closed(_) => AdapterError::Stopped,
        })
    }

    /// Operator disconnect: closes the session and stays `Disconnected` until [`Self::resume`];
    /// orders meanwhile are held (bounded) and go out after the reconnect's reconciliation.
    pub async fn pause(&self) -> Result<(), AdapterError> {
        self.call(|tx| Command::Pause(true, tx)).await
    }

    /// Operator connect: ends a [`Self::pause`] and reconnects at once (no backoff).
    pub async fn resume(&self) -> Result<(), AdapterError> {
        self.call(|tx| Command::Pause(false, tx)).await
    }

    /// A receiver of the connection state (to wait for `Live`).
    pub fn state_watch(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            sessions: l(&s.sessions),
            malformed_in: l(&s.malformed_in),
            unknown_in: l(&s.unknown_in),
            market_gaps: l(&s.market_gaps),
            report_gaps: l(&s.report_gaps),
            duplicate_reports: l(&s.duplicate_reports),
            stale_reports: l(&s.stale_reports),
            rejected_reports: l(&s.rejected_reports),
            orders_sent: l(&s.orders_sent),
            conflated_market_data: self.md.conflated(),
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, AdapterError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(make(tx))
            .await
            .map_err(|_| AdapterError::Stopped)?;
        rx.await.map_err(|_| AdapterError::Stopped)
    }
}

impl VenueAdapter for WsAdapter {
    fn venue(&self) -> &str {
        &self.venue
    }

    fn state(&self) -> ConnectionState {
        self.state.borrow().clone()
    }

    async fn subscribe(&self, channel: Channel, market: &str) -> Result<(), AdapterError> {
        let sub = Subscription {
            channel,
            market: market.to_string(),
        };
        self.call(|tx| Command::Subscribe(sub, true, tx)).await?
    }

    async fn unsubscribe(&self, channel: Channel, market: &str) -> Result<(), AdapterError> {
        let sub = Subscription {
            channel,
            market: market.to_string(),
        };
        self.call(|tx| Command::Subscribe(sub, false, tx)).await?
    }

    async fn send_order(&self, order: OrderRequest) -> Result<SendOutcome, AdapterError> {
        self.call(|tx| Command::SendOrder(Box::new(order), tx))
            .await?
    }

    async fn cancel(&self, id: ClientOrderId) -> Result<SendOutcome, AdapterError> {
        self.call(|tx| Command::Cancel(id, tx)).await?
    }

    async fn replace(
        &self,
        id: ClientOrderId,
        quantity_mw: Decimal,
        price_cny_per_mwh: Decimal,
    ) -> Result<SendOutcome, AdapterError> {
        self.call(|tx| Command::Replace(id, quantity_mw, price_cny_per_mwh, tx))
            .await?
    }

    async fn shutdown(&self) {
        let _ = self.call(Command::Shutdown).await;
    }
}
