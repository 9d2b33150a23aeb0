//! The simulator's network shell: a tokio + tokio-tungstenite WebSocket server around one
//! [`Venue`], embeddable in-process ([`VenueServer::start`]) or standalone ([`run_standalone`]).
//!
//! Invariants:
//! - One lock (`Core`) guards the venue and the connection registry together, and is never held
//!   across an await: effects are routed into bounded per-connection queues while it is held,
//!   so every client sees exec reports and market data in sequence order.
//! - A slow connection never blocks the venue: market data that does not fit its queue is
//!   dropped (the client sees a sequence gap and resyncs); an exec report that does not fit
//!   closes the connection (the client reconnects and reconciles from the report log).
//! - Venue state (orders, books, report logs) outlives connections and network restarts;
//!   subscriptions belong to a connection and die with it.
//! - One live session per account: a new login replaces the older connection.

use crate::protocol::{
    decode_client, encode, Channel, ClientMsg, ErrorCode, ErrorMsg, Heartbeat, StreamSeq,
    Subscription, Unsubscribed, VenueMsg,
};
use crate::sim::faults::{
    ChunkedStream, FaultSpec, FaultState, FrameAction, FrameKind, SplitSettings,
};
use crate::sim::venue::{Effect, Venue, VenueConfig, VenueConfigError};
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use vpp_engine::clock::{Clock, SystemClock};

/// A truncated exec report: what a broken gateway might send.
const MALFORMED_FRAME: &str = "{\"type\":\"exec_report\",\"account_seq\":";

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] VenueConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Counters of the whole server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub connections: u64,
    pub logins: u64,
    pub malformed_in: u64,
    pub unknown_in: u64,
    pub dropped_updates: u64,
    pub slow_disconnects: u64,
}

enum Outgoing {
    Frame(Utf8Bytes, FrameKind),
    SetFault(FaultSpec),
}

struct Conn {
    tx: mpsc::Sender<Outgoing>,
    kill: Arc<Notify>,
    account: Option<usize>,
    subs: HashSet<(Channel, String)>,
}

struct Core {
    venue: Venue,
    conns: HashMap<u64, Conn>,
    sessions: HashMap<usize, u64>,
    next_conn: u64,
    stats: ServerStats,
    /// Venue restarts with state loss so far ([`VenueHandle::reset_venue`]).
    resets: u64,
}

impl Core {
    /// Restarts the venue with state loss: a fresh [`Venue`] (orders, books and report logs
    /// forgotten, account sequences at 0) under a new epoch; every connection is reset.
    fn reset_venue(&mut self, cfg: &VenueConfig, now: vpp_engine::Timestamp) {
        self.resets += 1;
        let epoch = match &cfg.venue_epoch {
            Some(e) => format!("{e}.r{}", self.resets),
            None => format!("r{}", self.resets),
        };
        let fresh = VenueConfig {
            venue_epoch: Some(epoch.clone()),
            ..cfg.clone()
        };
        match Venue::new(fresh, now) {
            Ok(venue) => self.venue = venue,
            Err(e) => {
                tracing::error!(error = %e, "venue reset failed; state kept");
                return;
            }
        }
        self.sessions.clear();
        for c in self.conns.values_mut() {
            c.account = None;
            c.subs.clear();
            c.kill.notify_one();
        }
        tracing::warn!(%epoch, "venue restarted with state loss");
    }

    fn send(&mut self, conn: u64, msg: &VenueMsg) {
        let kind = match msg {
            VenueMsg::Update(_) => FrameKind::MarketUpdate,
            VenueMsg::ExecReport(_) => FrameKind::ExecReport,
            _ => FrameKind::Other,
        };
        let Ok(text) = encode(msg) else { return };
        self.push(conn, Utf8Bytes::from(text), kind);
    }

    fn push(&mut self, conn: u64, text: Utf8Bytes, kind: FrameKind) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.tx.try_send(Outgoing::Frame(text, kind)).is_err() {
            if kind == FrameKind::MarketUpdate {
                self.stats.dropped_updates += 1;
            } else {
                self.stats.slow_disconnects += 1;
                c.kill.notify_one();
            }
        }
    }

    fn route(&mut self, from: Option<u64>, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Reply(msg) => {
                    if let Some(conn) = from {
                        self.send(conn, &msg);
                    }
                }
                Effect::ToAccount(account, msg) => {
                    if let Some(&conn) = self.sessions.get(&account) {
                        self.send(conn, &msg);
                    }
                }
                Effect::Publish(msg) => self.publish(&msg),
            }
        }
    }

    fn publish(&mut self, msg: &VenueMsg) {
        let VenueMsg::Update(md) = msg else { return };
        let Ok(text) = encode(msg) else { return };
        let text = Utf8Bytes::from(text);
        let key = (md.channel, md.market.clone());
        let targets: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.subs.contains(&key))
            .map(|(id, _)| *id)
            .collect();
        for conn in targets {
            self.push(conn, text.clone(), FrameKind::MarketUpdate);
        }
    }
}

struct Shared {
    core: Mutex<Core>,
    clock: Arc<dyn Clock>,
    cfg: VenueConfig,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves consistent-enough state for a simulator.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Network {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The simulator server.
pub struct VenueServer;

impl VenueServer {
    /// Builds the venue and starts serving on `config.listen`.
    pub async fn start(
        config: VenueConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<VenueHandle, ServerError> {
        let venue = Venue::new(config.clone(), clock.now())?;
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                venue,
                conns: HashMap::new(),
                sessions: HashMap::new(),
                next_conn: 1,
                stats: ServerStats::default(),
                resets: 0,
            }),
            clock,
            cfg: config.clone(),
        });
        let ticker = (config.tick_ms > 0).then(|| tokio::spawn(tick_loop(shared.clone())));
        let mut handle = VenueHandle {
            shared,
            addr: config.listen,
            network: tokio::sync::Mutex::new(None),
            ticker,
        };
        handle.addr = handle.bind(config.listen).await?;
        Ok(handle)
    }
}

/// Control of a running simulator.
pub struct VenueHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    network: tokio::sync::Mutex<Option<Network>>,
    ticker: Option<JoinHandle<()>>,
}

impl VenueHandle {
    async fn bind(&self, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(self.shared.clone(), listener, stop_rx));
        *self.network.lock().await = Some(Network {
            stop,
            tasks: vec![task],
        });
        Ok(bound)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Kills the network side: the listener closes and every connection is reset. Venue state
    /// (orders, report logs) is kept, as a real venue's matching engine keeps it.
    pub async fn shutdown(&self) {
        if let Some(net) = self.network.lock().await.take() {
            let _ = net.stop.send(true);
            for t in net.tasks {
                let _ = t.await;
            }
        }
        let kills: Vec<Arc<Notify>> = self
            .shared
            .core()
            .conns
            .values()
            .map(|c| c.kill.clone())
            .collect();
        for k in kills {
            k.notify_one();
        }
    }

    /// Listens again on the same address after [`Self::shutdown`].
    pub async fn restart(&self) -> Result<(), ServerError> {
        self.shutdown().await;
        self.bind(self.addr).await.map(|_| ())
    }

    /// Stops everything, the market clock included.
    pub async fn stop(mut self) {
        self.shutdown().await;
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
    }

    /// Restarts the venue with state loss, as a venue process killed and started again would:
    /// every connection is reset, orders and report logs are forgotten, account sequences
    /// start again at 0 and `login_ok.venue_epoch` changes. Returns the new epoch.
    pub fn reset_venue(&self) -> Option<String> {
        let now = self.shared.clock.now();
        let mut core = self.shared.core();
        core.reset_venue(&self.shared.cfg, now);
        core.venue.config().venue_epoch.clone()
    }

    /// Sets the faults of the account's live connection; false if it has none.
    pub fn set_fault(&self, api_key: &str, spec: FaultSpec) -> bool {
        let core = self.shared.core();
        let Some(conn) = session_of(&core, api_key) else {
            return false;
        };
        core.conns[&conn]
            .tx
            .try_send(Outgoing::SetFault(spec))
            .is_ok()
    }

    /// Resets the account's live connection (RST).
    pub fn drop_connection(&self, api_key: &str) -> bool {
        self.set_fault(
            api_key,
            FaultSpec {
                drop_now: true,
                ..FaultSpec::default()
            },
        )
    }

    /// Whether the account has a live session.
    pub fn is_connected(&self, api_key: &str) -> bool {
        session_of(&self.shared.core(), api_key).is_some()
    }

    /// Subscriptions of the account's live connection.
    pub fn subscriptions(&self, api_key: &str) -> Vec<Subscription> {
        let core = self.shared.core();
        let Some(conn) = session_of(&core, api_key) else {
            return Vec::new();
        };
        let mut subs: Vec<Subscription> = core.conns[&conn]
            .subs
            .iter()
            .map(|(channel, market)| Subscription {
                channel: *channel,
                market: market.clone(),
            })
            .collect();
        subs.sort_by(|a, b| (a.channel, &a.market).cmp(&(b.channel, &b.market)));
        subs
    }

    /// Runs the market clock once now (gates, expiries, quotes).
    pub fn tick(&self) {
        tick_once(&self.shared);
    }

    /// Handles an order or query as if `api_key`'s account sent it (reports go to its session).
    pub fn submit_as(&self, api_key: &str, msg: ClientMsg) -> Vec<VenueMsg> {
        let now = self.shared.clock.now();
        let mut core = self.shared.core();
        let Some(account) = account_of(&core, api_key) else {
            return Vec::new();
        };
        let effects = core.venue.handle(account, msg, now);
        let replies = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Reply(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        core.route(None, effects);
        replies
    }

    /// Reads or changes the venue under its lock (tests, inspection).
    pub fn with_venue<R>(&self, f: impl FnOnce(&mut Venue) -> R) -> R {
        f(&mut self.shared.core().venue)
    }

    pub fn stats(&self) -> ServerStats {
        self.shared.core().stats
    }
}

fn account_of(core: &Core, api_key: &str) -> Option<usize> {
    core.venue
        .config()
        .accounts
        .iter()
        .position(|a| a.api_key == api_key)
}

fn session_of(core: &Core, api_key: &str) -> Option<u64> {
    account_of(core, api_key).and_then(|a| core.sessions.get(&a).copied())
}

fn tick_once(shared: &Shared) {
    let now = shared.clock.now();
    let mut core = shared.core();
    let effects = core.venue.tick(now);
    core.route(None, effects);
}

async fn tick_loop(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_millis(shared.cfg.tick_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        tick_once(&shared);
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                conns.retain(|t| !t.is_finished());
                conns.push(tokio::spawn(serve(shared.clone(), tcp, stop.clone())));
            }
        }
    }
    drop(listener);
    for c in conns {
        let _ = c.await;
    }
}

/// Per-connection state owned by its task.
struct Session {
    id: u64,
    account: Option<usize>,
    faults: FaultState,
    split: Arc<SplitSettings>,
    stalled: bool,
}

type Ws = tokio_tungstenite::WebSocketStream<ChunkedStream<TcpStream>>;

fn initial_fault(cfg: &VenueConfig) -> FaultSpec {
    cfg.faults
        .iter()
        .find(|r| r.api_key.is_none() && r.nth_connection.is_none())
        .map(|r| r.fault.clone())
        .unwrap_or_default()
}

fn login_fault(cfg: &VenueConfig, api_key: &str, nth: u64) -> Option<FaultSpec> {
    cfg.faults
        .iter()
        .find(|r| {
            r.api_key.as_deref().is_none_or(|k| k == api_key)
                && r.nth_connection.is_none_or(|n| n == nth)
                && (r.api_key.is_some() || r.nth_connection.is_some())
        })
        .map(|r| r.fault.clone())
}

async fn serve(shared: Arc<Shared>, tcp: TcpStream, mut stop: watch::Receiver<bool>) {
    let _ = tcp.set_nodelay(true);
    let split = Arc::new(SplitSettings::default());
    let fault = initial_fault(&shared.cfg);
    split.set(&fault);
    let Ok(mut ws) = tokio_tungstenite::accept_async(ChunkedStream::new(tcp, split.clone())).await
    else {
        return;
    };
    let (tx, mut rx) = mpsc::channel(shared.cfg.send_queue_frames);
    let kill = Arc::new(Notify::new());
    let id = {
        let mut core = shared.core();
        let id = core.next_conn;
        core.next_conn += 1;
        core.stats.connections += 1;
        core.conns.insert(
            id,
            Conn {
                tx,
                kill: kill.clone(),
                account: None,
                subs: HashSet::new(),
            },
        );
        id
    };
    let mut s = Session {
        id,
        account: None,
        faults: FaultState::new(fault),
        split,
        stalled: false,
    };
    let hb_ms = shared.cfg.heartbeat_interval_ms;
    let mut heartbeat = tokio::time::interval(Duration::from_millis(hb_ms.max(1)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut reset = false;
    loop {
        let live = !s.stalled;
        let keep = tokio::select! {
            _ = stop.changed() => { reset = true; false }
            _ = kill.notified() => { reset = true; false }
            frame = ws.next(), if live => match frame {
                Some(Ok(msg)) => on_frame(&shared, &mut s, msg),
                _ => false,
            },
            out = rx.recv(), if live => match out {
                Some(Outgoing::Frame(text, kind)) => write(&mut ws, &mut s, text, kind, &mut reset).await,
                Some(Outgoing::SetFault(spec)) => { s.split.set(&spec); s.faults.set(spec); true }
                None => false,
            },
            _ = heartbeat.tick(), if live && hb_ms > 0 && s.account.is_some() => {
                let msg = venue_heartbeat(&shared, &s);
                match encode(&msg) {
                    Ok(text) => write(&mut ws, &mut s, Utf8Bytes::from(text), FrameKind::Other, &mut reset).await,
                    Err(_) => true,
                }
            }
        };
        if !keep {
            break;
        }
    }
    {
        let mut core = shared.core();
        core.conns.remove(&s.id);
        if let Some(a) = s.account {
            if core.sessions.get(&a) == Some(&s.id) {
                core.sessions.remove(&a);
            }
        }
    }
    if reset {
        // Zero linger turns the close into a TCP reset: no close frame, like a crash.
        let _ = ws.get_ref().get_ref().set_zero_linger();
    } else {
        let _ = ws.close(None).await;
    }
}

fn venue_heartbeat(shared: &Shared, s: &Session) -> VenueMsg {
    let core = shared.core();
    let mut streams: Vec<StreamSeq> = core
        .conns
        .get(&s.id)
        .map(|c| {
            c.subs
                .iter()
                .map(|(channel, market)| StreamSeq {
                    channel: *channel,
                    market: market.clone(),
                    seq: core.venue.stream_seq(*channel, market),
                })
                .collect()
        })
        .unwrap_or_default();
    streams.sort_by(|a, b| (a.channel, &a.market).cmp(&(b.channel, &b.market)));
    VenueMsg::Heartbeat(Heartbeat {
        ts: shared.clock.now(),
        account_seq: s.account.map(|a| core.venue.account_seq(a)),
        streams,
    })
}

/// Sends one frame through the connection's faults. False ends the connection.
async fn write(
    ws: &mut Ws,
    s: &mut Session,
    text: Utf8Bytes,
    kind: FrameKind,
    reset: &mut bool,
) -> bool {
    match s.faults.next_frame(kind) {
        FrameAction::Skip => true,
        FrameAction::Drop => {
            *reset = true;
            false
        }
        FrameAction::Stall => {
            s.stalled = true;
            true
        }
        FrameAction::Send { malformed_first } => {
            if s.faults.spec.delay_frames_ms > 0 {
                tokio::time::sleep(Duration::from_millis(s.faults.spec.delay_frames_ms)).await;
            }
            if malformed_first && ws.send(Message::text(MALFORMED_FRAME)).await.is_err() {
                return false;
            }
            ws.send(Message::Text(text)).await.is_ok()
        }
    }
}

/// Handles one inbound frame. False ends the connection.
fn on_frame(shared: &Shared, s: &mut Session, msg: Message) -> bool {
    let text = match msg {
        Message::Text(t) => t,
        Message::Close(_) => return false,
        Message::Binary(_) => {
            let mut core = shared.core();
            core.stats.malformed_in += 1;
            let err = VenueMsg::error(
                ErrorCode::MalformedMessage,
                "binary frames are not part of the protocol; send JSON text",
            );
            core.send(s.id, &err);
            return true;
        }
        _ => return true,
    };
    let decoded = decode_client(text.as_str());
    let mut core = shared.core();
    let msg = match decoded {
        Ok(msg) => msg,
        Err(e) => {
            core.stats.malformed_in += 1;
            core.send(
                s.id,
                &VenueMsg::error(ErrorCode::MalformedMessage, e.to_string()),
            );
            return true;
        }
    };
    let now = shared.clock.now();
    match (msg, s.account) {
        (ClientMsg::Unknown { .. }, _) => core.stats.unknown_in += 1,
        (ClientMsg::Login(login), None) => return login_session(shared, &mut core, s, &login),
        (ClientMsg::Login(_), Some(_)) => {
            core.send(
                s.id,
                &VenueMsg::error(
                    ErrorCode::AlreadyLoggedIn,
                    "this connection is already logged in",
                ),
            );
        }
        (ClientMsg::Heartbeat(hb), _) => {
            core.send(
                s.id,
                &VenueMsg::HeartbeatAck(Heartbeat {
                    ts: hb.ts,
                    account_seq: None,
                    streams: Vec::new(),
                }),
            );
        }
        (ClientMsg::HeartbeatAck(_), _) => {}
        (other, None) => {
            let err = VenueMsg::Error(ErrorMsg {
                code: ErrorCode::NotLoggedIn,
                message: "log in first".into(),
                request_type: Some(client_type(&other).into()),
                client_order_id: None,
            });
            core.send(s.id, &err);
        }
        (ClientMsg::Subscribe(sub), Some(_)) => match core.venue.snapshot(sub.channel, &sub.market)
        {
            Ok(snapshot) => {
                // Registered under the same lock as the snapshot: the next update is seq + 1.
                if let Some(c) = core.conns.get_mut(&s.id) {
                    c.subs.insert((sub.channel, sub.market));
                }
                core.send(s.id, &snapshot);
            }
            Err(e) => core.send(s.id, &VenueMsg::Error(e)),
        },
        (ClientMsg::Unsubscribe(sub), Some(_)) => {
            if let Some(c) = core.conns.get_mut(&s.id) {
                c.subs.remove(&(sub.channel, sub.market.clone()));
            }
            core.send(
                s.id,
                &VenueMsg::Unsubscribed(Unsubscribed {
                    channel: sub.channel,
                    market: sub.market,
                }),
            );
        }
        (ClientMsg::Fault(control), Some(_)) => {
            if shared.cfg.allow_fault_control && control.fault.reset_venue_now {
                let now = shared.clock.now();
                core.reset_venue(&shared.cfg, now);
                s.account = None;
            } else if shared.cfg.allow_fault_control {
                s.split.set(&control.fault);
                s.faults.set(control.fault);
            } else {
                core.send(
                    s.id,
                    &VenueMsg::error(
                        ErrorCode::FaultControlDisabled,
                        "this venue does not accept fault control",
                    ),
                );
            }
        }
        (request, Some(account)) => {
            if let ClientMsg::NewOrder(o) = &request {
                // One line per arrival (drills count them: no client order id twice).
                tracing::debug!(target: "vpp_venue_orders", client_order_id = %o.client_order_id, "new_order received");
            }
            let effects = core.venue.handle(account, request, now);
            core.route(Some(s.id), effects);
        }
    }
    true
}

fn login_session(
    shared: &Shared,
    core: &mut Core,
    s: &mut Session,
    login: &crate::protocol::Login,
) -> bool {
    let now = shared.clock.now();
    match core.venue.login(login, now) {
        Ok((account, nth, ok)) => {
            core.stats.logins += 1;
            if let Some(old) = core.sessions.insert(account, s.id) {
                // Best effort: the old connection may be stalled or already gone.
                let replaced = VenueMsg::error(
                    ErrorCode::SessionReplaced,
                    "a newer login of this account replaced this connection",
                );
                core.send(old, &replaced);
                if let Some(c) = core.conns.get(&old) {
                    c.kill.notify_one();
                }
            }
            if let Some(c) = core.conns.get_mut(&s.id) {
                c.account = Some(account);
            }
            s.account = Some(account);
            if let Some(spec) = login_fault(&shared.cfg, &login.api_key, nth) {
                s.split.set(&spec);
                s.faults.set(spec);
            }
            core.send(s.id, &VenueMsg::LoginOk(ok));
            true
        }
        Err(e) => {
            core.send(s.id, &VenueMsg::Error(e));
            // The error frame is queued; the writer drains it before the close below.
            true
        }
    }
}

fn client_type(msg: &ClientMsg) -> &'static str {
    match msg {
        ClientMsg::Login(_) => "login",
        ClientMsg::Subscribe(_) => "subscribe",
        ClientMsg::Unsubscribe(_) => "unsubscribe",
        ClientMsg::Heartbeat(_) => "heartbeat",
        ClientMsg::HeartbeatAck(_) => "heartbeat_ack",
        ClientMsg::NewOrder(_) => "new_order",
        ClientMsg::CancelOrder(_) => "cancel_order",
        ClientMsg::ReplaceOrder(_) => "replace_order",
        ClientMsg::OrderStatus(_) => "order_status",
        ClientMsg::OpenOrders(_) => "open_orders",
        ClientMsg::FillsSince(_) => "fills_since",
        ClientMsg::Fault(_) => "fault",
        ClientMsg::Unknown { .. } => "unknown",
    }
}

/// Runs the simulator until `shutdown` completes (`vpp market-sim`).
pub async fn run_standalone(
    config: VenueConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let handle = VenueServer::start(config, Arc::new(SystemClock::new())).await?;
    tracing::info!(addr = %handle.addr(), "venue simulator listening");
    shutdown.await;
    handle.stop().await;
    Ok(())
}
