//! The connection task of [`super::WsAdapter`]: one task owns the socket, the order ledger,
//! the subscriptions and the held orders, so no lock is ever held across an await.
//!
//! After every (re)connect, in this order: login; restore every subscription (each answered
//! by a snapshot, which resets that stream's sequence); reconcile (order status of every order
//! sent and not yet terminal, replay of every exec report since the last sequence applied,
//! open orders); only then `Live`. New orders are taken only while live; cancels are held
//! across a reconnect and go out after reconciliation.
//!
//! Invariants:
//! - Reports are applied strictly in account sequence order: a report ahead of the next
//!   expected one is held (bounded) while `fills_since` fills the gap; one behind is a
//!   duplicate and is only counted.
//! - Nothing is ever resent: an order the venue says it never received ends `Unsent`, one it
//!   acknowledged and no longer knows ends `Lost`; new orders queued (rate window) and never
//!   written end `Unsent` when the connection is lost or the adapter shuts down.
//! - A venue reset (new `venue_epoch`, `account_seq` below the last applied, an acknowledged
//!   order unknown to the venue) is reported before the session is live again, and the report
//!   sequence restarts at the new venue's.
//! - A dead peer is detected by silence (no frame within `heartbeat_timeout_ms`), never by a
//!   write succeeding or failing.

use super::util::{Backoff, Conflator, LogLimiter, MarketItem, MarketUpdate, SlidingWindow};
use super::{
    inc, AdapterConfig, AdapterError, AdapterEvent, AdapterStats, Command, ConnectionState,
    OrderEnd, OrderStamp, OrderWrittenHook, Reconciled, SendOutcome, VenueReset,
};
use crate::protocol::{
    decode_venue, encode, tif_to_wire, CancelOrder, ChannelData, ClientMsg, ErrorCode,
    FillsSinceQuery, Heartbeat, Login, MarketData, NewOrder, OpenOrdersQuery, OrderStatusQuery,
    RateLimit, ReplaceOrder, Subscription, VenueMsg, WireExecReport, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use vpp_engine::clock::Clock;
use vpp_engine::ids::{ClientOrderId, MarketId};
use vpp_engine::ledger::{OrderEvent, OrderEventKind, OrderLedger};
use vpp_engine::order::{Order, OrderStatus};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A request waiting to be written: the wire message itself (encoded straight from here, no
/// copy) and, for a new order, the stamps its written-hook reports.
#[derive(Debug, Clone)]
struct Held {
    msg: ClientMsg,
    stamp: OrderStamp,
}

impl Held {
    fn new_order(o: NewOrder, stamp: OrderStamp) -> Self {
        Self {
            msg: ClientMsg::NewOrder(o),
            stamp,
        }
    }

    fn cancel(id: ClientOrderId) -> Self {
        Self {
            msg: ClientMsg::CancelOrder(CancelOrder {
                client_order_id: id,
            }),
            stamp: OrderStamp::default(),
        }
    }

    fn replace(r: ReplaceOrder) -> Self {
        Self {
            msg: ClientMsg::ReplaceOrder(r),
            stamp: OrderStamp::default(),
        }
    }

    /// Cancels do not count against the venue's order rate (they reduce risk).
    fn counts_for_rate(&self) -> bool {
        !self.is_cancel()
    }

    fn is_cancel(&self) -> bool {
        matches!(self.msg, ClientMsg::CancelOrder(_))
    }

    fn new_id(&self) -> Option<&ClientOrderId> {
        match &self.msg {
            ClientMsg::NewOrder(o) => Some(&o.client_order_id),
            _ => None,
        }
    }

    fn cancel_id(&self) -> Option<&ClientOrderId> {
        match &self.msg {
            ClientMsg::CancelOrder(c) => Some(&c.client_order_id),
            _ => None,
        }
    }

    fn replace_id(&self) -> Option<&ClientOrderId> {
        match &self.msg {
            ClientMsg::ReplaceOrder(r) => Some(&r.client_order_id),
            _ => None,
        }
    }
}

/// No venue report ever seen for the order: the venue may never have received it.
fn never_acknowledged(o: &Order) -> bool {
    o.last_report_seq == 0 && o.venue_order_id.is_none() && o.fill_ids.is_empty()
}

/// The state reason while the operator keeps the session disconnected.
const PAUSED: &str = "disconnected by the operator";

enum End {
    Shutdown(Option<oneshot::Sender<()>>),
    Lost(String),
}

#[derive(Default)]
struct Sync {
    snapshots: HashSet<Subscription>,
    statuses: HashSet<ClientOrderId>,
    fills_done: bool,
    open_done: bool,
    venue_status: Vec<(ClientOrderId, OrderStatus)>,
    summary: Reconciled,
    /// A venue reset was detected in this session (reported once).
    reset: bool,
    /// The new venue's account sequence when the reset was seen at login.
    reset_seq: Option<u64>,
}

impl Sync {
    fn complete(&self) -> bool {
        self.snapshots.is_empty() && self.statuses.is_empty() && self.fills_done && self.open_done
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Phase {
    LoggingIn,
    Syncing,
    Live,
}

pub(crate) struct Task {
    cfg: AdapterConfig,
    clock: Arc<dyn Clock>,
    events: mpsc::Sender<AdapterEvent>,
    state: watch::Sender<ConnectionState>,
    stats: Arc<AdapterStats>,
    md: Arc<Conflator>,
    symbols: HashMap<MarketId, String>,
    ledger: OrderLedger,
    subs: BTreeSet<Subscription>,
    md_seq: HashMap<Subscription, u64>,
    held: VecDeque<Held>,
    /// Sent new orders with no report yet: the ones whose fate reconciliation must ask about.
    unacked: HashSet<ClientOrderId>,
    next_seq: Option<u64>,
    stash: BTreeMap<u64, WireExecReport>,
    gap_query: bool,
    rate: Option<SlidingWindow>,
    sessions: u64,
    /// The venue epoch announced at the last login (`None`: not announced yet).
    venue_epoch: Option<String>,
    /// Disconnected by the operator ([`Command::Pause`]): no reconnect until resumed.
    paused: bool,
    log: LogLimiter,
    written: Arc<OnceLock<OrderWrittenHook>>,
}

fn secs(ms: u64) -> Duration {
    Duration::from_millis(ms.max(1))
}

impl Task {
    pub(crate) fn new(
        cfg: AdapterConfig,
        clock: Arc<dyn Clock>,
        events: mpsc::Sender<AdapterEvent>,
        state: watch::Sender<ConnectionState>,
        stats: Arc<AdapterStats>,
        md: Arc<Conflator>,
        written: Arc<OnceLock<OrderWrittenHook>>,
    ) -> Self {
        let symbols = cfg
            .markets
            .iter()
            .map(|m| (m.market_id, m.symbol.clone()))
            .collect();
        Self {
            symbols,
            clock,
            events,
            state,
            stats,
            md,
            ledger: OrderLedger::new(),
            subs: BTreeSet::new(),
            md_seq: HashMap::new(),
            held: VecDeque::new(),
            unacked: HashSet::new(),
            next_seq: None,
            stash: BTreeMap::new(),
            gap_query: false,
            rate: cfg
                .rate_limit
                .map(|r| SlidingWindow::new(r.max_orders, secs(r.window_ms))),
            sessions: 0,
            venue_epoch: None,
            paused: false,
            log: LogLimiter::new(Duration::from_secs(5)),
            written,
            cfg,
        }
    }

    async fn emit(&self, ev: AdapterEvent) {
        // Awaited, never dropped: a slow reader slows this task, not the other way round.
        let _ = self.events.send(ev).await;
    }

    async fn set_state(&self, s: ConnectionState) {
        self.state.send_replace(s.clone());
        self.emit(AdapterEvent::Connection(s)).await;
    }

    pub(crate) async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        let mut backoff = Backoff::new(self.cfg.backoff.clone(), self.cfg.seed);
        let mut attempt: u32 = 0;
        loop {
            if self.paused {
                self.set_state(ConnectionState::Disconnected {
                    reason: PAUSED.into(),
                })
                .await;
                if let Some(done) = self.paused_idle(&mut cmds).await {
                    self.end_held_unsent("daemon shutdown: queued, never sent")
                        .await;
                    self.set_state(ConnectionState::Stopped {
                        reason: "shutdown".into(),
                    })
                    .await;
                    let _ = done.send(());
                    return;
                }
                attempt = 0;
            }
            self.set_state(ConnectionState::Connecting { attempt })
                .await;
            let reason = match self.connect().await {
                Ok(ws) => match self.session(ws, &mut cmds).await {
                    End::Shutdown(done) => {
                        self.end_held_unsent("daemon shutdown: queued, never sent")
                            .await;
                        self.set_state(ConnectionState::Stopped {
                            reason: "shutdown".into(),
                        })
                        .await;
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                    End::Lost(reason) => reason,
                },
                Err(reason) => reason,
            };
            self.end_held_unsent(&format!(
                "venue connection lost before it was sent ({reason}); not resent"
            ))
            .await;
            if self.paused {
                // Operator disconnect: no backoff, no reconnect until resumed.
                continue;
            }
            if self.state.borrow().clone() == ConnectionState::Live {
                attempt = 0;
            }
            if let Some(suppressed) = self.log.allow(Instant::now()) {
                tracing::warn!(venue = %self.cfg.venue, %reason, suppressed, "venue connection lost; reconnecting");
            }
            self.set_state(ConnectionState::Disconnected {
                reason: reason.clone(),
            })
            .await;
            let Some(delay) = backoff.delay(attempt) else {
                self.set_state(ConnectionState::Stopped {
                    reason: format!("retries exhausted: {reason}"),
                })
                .await;
                return;
            };
            attempt = attempt.saturating_add(1);
            if let Some(done) = self.idle(delay, &mut cmds).await {
                self.end_held_unsent("daemon shutdown: queued, never sent")
                    .await;
                self.set_state(ConnectionState::Stopped {
                    reason: "shutdown".into(),
                })
                .await;
                let _ = done.send(());
                return;
            }
        }
    }

    /// Stays disconnected, taking commands (orders are held), until resumed. `Some` on
    /// shutdown.
    async fn paused_idle(
        &mut self,
        cmds: &mut mpsc::Receiver<Command>,
    ) -> Option<oneshot::Sender<()>> {
        while self.paused {
            match cmds.recv().await {
                None => return None,
                Some(Command::Shutdown(done)) => return Some(done),
                Some(cmd) => self.command(cmd, None, Phase::LoggingIn).await,
            }
        }
        None
    }

    /// Waits out a backoff while still taking commands. `Some` on shutdown.
    async fn idle(
        &mut self,
        delay: Duration,
        cmds: &mut mpsc::Receiver<Command>,
    ) -> Option<oneshot::Sender<()>> {
        let until = tokio::time::sleep(delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => return None,
                cmd = cmds.recv() => match cmd {
                    None => return None,
                    Some(Command::Shutdown(done)) => return Some(done),
                    Some(cmd) => self.command(cmd, None, Phase::LoggingIn).await,
                }
            }
        }
    }

    async fn connect(&self) -> Result<Ws, String> {
        let connector = self.cfg.tls.clone().map(Connector::Rustls);
        let fut = tokio_tungstenite::connect_async_tls_with_config(
            self.cfg.url.as_str(),
            None,
            true,
            connector,
        );
        match tokio::time::timeout(secs(self.cfg.request_timeout_ms), fut).await {
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(e)) => Err(format!("connect to {}: {e}", self.cfg.url)),
            Err(_) => Err(format!("connect to {}: timed out", self.cfg.url)),
        }
    }

    async fn session(&mut self, mut ws: Ws, cmds: &mut mpsc::Receiver<Command>) -> End {
        self.sessions += 1;
        inc(&self.stats.sessions);
        self.set_state(ConnectionState::Syncing).await;
        let login = ClientMsg::Login(Login {
            api_key: self.cfg.api_key.clone(),
            protocol_version: PROTOCOL_VERSION,
        });
        if let Err(e) = send(&mut ws, &login).await {
            return End::Lost(e);
        }
        let mut phase = Phase::LoggingIn;
        let mut sync = Sync::default();
        let sync_deadline = Instant::now() + secs(self.cfg.request_timeout_ms);
        let mut last_rx = Instant::now();
        let timeout = secs(self.cfg.heartbeat_timeout_ms);
        let mut hb = tokio::time::interval(secs(
            self.cfg
                .heartbeat_interval_ms
                .min(self.cfg.heartbeat_timeout_ms / 2),
        ));
        hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let rate_wait = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(rate_wait);
        let mut rate_armed = false;
        loop {
            let result: Result<(), End> = tokio::select! {
                frame = ws.next() => {
                    last_rx = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => self.on_text(&mut ws, text.as_str(), &mut phase, &mut sync).await,
                        Some(Ok(Message::Close(_))) | None => Err(End::Lost("venue closed the connection".into())),
                        Some(Ok(Message::Binary(_))) => { inc(&self.stats.malformed_in); Ok(()) }
                        Some(Ok(_)) => Ok(()),
                        Some(Err(e)) => Err(End::Lost(format!("read: {e}"))),
                    }
                }
                cmd = cmds.recv() => match cmd {
                    None => Err(End::Shutdown(None)),
                    Some(Command::Shutdown(done)) => {
                        // Bounded and final: queued new orders end unsent, cancels of sent
                        // orders go out (they do not count against the rate), then close.
                        self.end_held_unsent("daemon shutdown: queued, never sent").await;
                        if phase == Phase::Live {
                            let _ = self.send_cancels_ahead(&mut ws).await;
                        }
                        let _ = ws.close(None).await;
                        Err(End::Shutdown(Some(done)))
                    }
                    Some(cmd) => {
                        self.command(cmd, Some(&mut ws), phase).await;
                        if self.paused {
                            let _ = ws.close(None).await;
                            Err(End::Lost(PAUSED.into()))
                        } else {
                            Ok(())
                        }
                    }
                },
                _ = hb.tick() => {
                    if last_rx.elapsed() >= timeout {
                        Err(End::Lost(format!("no frame from the venue for {} ms (half-open?)", timeout.as_millis())))
                    } else if phase != Phase::Live && Instant::now() >= sync_deadline {
                        Err(End::Lost("login/reconciliation timed out".into()))
                    } else {
                        let hb = ClientMsg::Heartbeat(Heartbeat { ts: self.clock.now(), account_seq: None, streams: Vec::new() });
                        send(&mut ws, &hb).await.map_err(End::Lost)
                    }
                }
                _ = &mut rate_wait, if rate_armed => { rate_armed = false; Ok(()) }
            };
            if let Err(end) = result {
                return end;
            }
            if phase == Phase::Live && !self.held.is_empty() {
                if rate_armed {
                    // Orders wait for the rate window; cancels do not.
                    if let Err(e) = self.send_cancels_ahead(&mut ws).await {
                        return End::Lost(e);
                    }
                    continue;
                }
                match self.flush(&mut ws).await {
                    Ok(None) => {}
                    Ok(Some(wait)) => {
                        rate_wait.as_mut().reset(Instant::now() + wait);
                        rate_armed = true;
                    }
                    Err(e) => return End::Lost(e),
                }
            }
        }
    }

    /// Sends held requests while the rate window allows; `Some(wait)` when it does not.
    /// A cancel never waits behind an order the rate window holds (a cancel reduces risk and
    /// does not count against the rate): it jumps the queue, unless its own order is still
    /// held (then it keeps its place behind it, so the venue never sees it first).
    async fn flush(&mut self, ws: &mut Ws) -> Result<Option<Duration>, String> {
        while let Some(front) = self.held.front() {
            if front.counts_for_rate() {
                if let Some(rate) = self.rate.as_mut() {
                    if let Err(wait) = rate.try_acquire(Instant::now()) {
                        self.send_cancels_ahead(ws).await?;
                        return Ok(Some(wait));
                    }
                }
            }
            let Some(item) = self.held.pop_front() else {
                break;
            };
            self.write_held(ws, item).await?;
        }
        Ok(None)
    }

    /// Sends every held cancel whose order already went out, ahead of the rate-held orders.
    async fn send_cancels_ahead(&mut self, ws: &mut Ws) -> Result<(), String> {
        if !self.held.iter().any(Held::is_cancel) {
            return Ok(());
        }
        let mut ahead = Vec::new();
        let mut keep = VecDeque::with_capacity(self.held.len());
        let mut still_held: HashSet<ClientOrderId> = HashSet::new();
        for item in self.held.drain(..) {
            if let Some(id) = item.new_id() {
                still_held.insert(id.clone());
            }
            match item.cancel_id() {
                Some(id) if !still_held.contains(id) => ahead.push(item),
                _ => keep.push_back(item),
            }
        }
        self.held = keep;
        for item in ahead {
            self.write_held(ws, item).await?;
        }
        Ok(())
    }

    /// Takes every queued new order out (and any cancel or replace of it, and every replace:
    /// a replace decided before a reconnect is stale) and ends it unsent. Returns how many.
    async fn end_held_unsent(&mut self, reason: &str) -> usize {
        let unsent: HashSet<ClientOrderId> = self
            .held
            .iter()
            .filter_map(|h| h.new_id().cloned())
            .collect();
        let before = self.held.len();
        self.held.retain(|h| {
            h.new_id().is_none()
                && h.replace_id().is_none()
                && !h.cancel_id().is_some_and(|id| unsent.contains(id))
        });
        if before != self.held.len() && unsent.is_empty() {
            tracing::warn!(venue = %self.cfg.venue, dropped = before - self.held.len(), "queued replaces dropped ({reason})");
        }
        let mut ids: Vec<ClientOrderId> = unsent.into_iter().collect();
        ids.sort();
        let n = ids.len();
        for id in ids {
            self.end_order(id, OrderEnd::Unsent, reason.to_owned())
                .await;
        }
        if n > 0 {
            tracing::warn!(venue = %self.cfg.venue, orders = n, %reason, "queued orders ended unsent");
        }
        n
    }

    /// Ends an order locally (its own ledger too) and tells the owner.
    async fn end_order(&mut self, id: ClientOrderId, end: OrderEnd, reason: String) {
        self.unacked.remove(&id);
        let kind = match end {
            OrderEnd::Unsent => OrderEventKind::Unsent {
                reason: reason.clone(),
            },
            OrderEnd::Lost { venue_account_seq } => OrderEventKind::Lost {
                reason: reason.clone(),
                venue_account_seq,
            },
        };
        let ev = OrderEvent {
            client_order_id: id.clone(),
            at: self.clock.now(),
            kind,
        };
        if let Err(e) = self.ledger.apply(&ev) {
            tracing::debug!(venue = %self.cfg.venue, error = %e, "local end of an order refused");
        }
        self.emit(AdapterEvent::OrderEnded {
            client_order_id: id,
            end,
            reason,
        })
        .await;
    }

    async fn write_held(&mut self, ws: &mut Ws, item: Held) -> Result<(), String> {
        if let Some(id) = item.new_id() {
            self.unacked.insert(id.clone());
            inc(&self.stats.orders_sent);
        }
        send(ws, &item.msg).await?;
        if let (Some(id), Some(hook)) = (item.new_id(), self.written.get()) {
            hook(id, item.stamp, self.clock.monotonic_ns());
        }
        Ok(())
    }

    async fn command(&mut self, cmd: Command, ws: Option<&mut Ws>, phase: Phase) {
        match cmd {
            Command::Subscribe(sub, on, reply) => {
                let msg = if on {
                    self.subs.insert(sub.clone());
                    ClientMsg::Subscribe(sub.clone())
                } else {
                    self.subs.remove(&sub);
                    self.md_seq.remove(&sub);
                    ClientMsg::Unsubscribe(sub.clone())
                };
                // Sent now once logged in; before that the sync sends every subscription.
                if let (Some(ws), false) = (ws, phase == Phase::LoggingIn) {
                    let _ = send(ws, &msg).await;
                }
                let _ = reply.send(Ok(()));
            }
            Command::SendOrder(order, reply) => {
                let _ = reply.send(self.new_order(*order, OrderStamp::default()));
            }
            Command::Submit(order, stamp) => {
                let id = order.client_order_id.clone();
                if let Err(e) = self.new_order(*order, stamp) {
                    self.emit(AdapterEvent::OrderRefused {
                        client_order_id: id,
                        reason: e.to_string(),
                    })
                    .await;
                }
            }
            Command::SubmitCancel(id) => {
                if let Err(e) = self.cancel(id.clone()) {
                    // Usually a race with the order's final report (filled, cancelled).
                    tracing::debug!(venue = %self.cfg.venue, client_order_id = %id, error = %e, "cancel not sent");
                }
            }
            Command::Cancel(id, reply) => {
                let result = self.cancel(id);
                let _ = reply.send(result);
            }
            Command::Replace(id, qty, price, reply) => {
                let live = *self.state.borrow() == ConnectionState::Live;
                let result = if !live {
                    Err(AdapterError::NotLive(format!("{:?}", *self.state.borrow())))
                } else if self.ledger.contains(&id) {
                    self.hold(Held::replace(ReplaceOrder {
                        client_order_id: id,
                        quantity_mw: qty,
                        price_cny_per_mwh: price,
                    }))
                } else {
                    Err(AdapterError::UnknownOrder(id))
                };
                let _ = reply.send(result);
            }
            Command::Restore(orders, last_seq, reply) => {
                for o in orders {
                    let id = o.id().clone();
                    // Maybe sent before the restart: reconciliation asks the venue, which
                    // either has it (its reports decide) or never received it (ended unsent).
                    let unacked = o.is_open() && never_acknowledged(&o);
                    // The journal's full state, so the reconcile compares like with like.
                    if self.ledger.restore_order(o).is_ok() && unacked {
                        self.unacked.insert(id);
                    }
                }
                self.next_seq = Some(last_seq + 1);
                let _ = reply.send(Ok(()));
            }
            Command::DropUnsent(reason, reply) => {
                let n = self.end_held_unsent(&reason).await;
                let _ = reply.send(n);
            }
            Command::Pause(on, done) => {
                if on != self.paused {
                    tracing::warn!(venue = %self.cfg.venue, paused = on, "venue session paused/resumed by the operator");
                }
                self.paused = on;
                let _ = done.send(());
            }
            Command::Shutdown(done) => {
                let _ = done.send(());
            }
        }
    }

    fn hold(&mut self, item: Held) -> Result<SendOutcome, AdapterError> {
        if self.held.len() >= self.cfg.max_pending_orders {
            return Err(AdapterError::BufferFull {
                held: self.held.len(),
                capacity: self.cfg.max_pending_orders,
            });
        }
        self.held.push_back(item);
        // The session loop flushes right after this command if live.
        Ok(if *self.state.borrow() == ConnectionState::Live {
            SendOutcome::Sent
        } else {
            SendOutcome::Held
        })
    }

    fn new_order(
        &mut self,
        req: vpp_engine::order::OrderRequest,
        stamp: OrderStamp,
    ) -> Result<SendOutcome, AdapterError> {
        if self.ledger.contains(&req.client_order_id) {
            return Err(AdapterError::DuplicateClientOrderId(req.client_order_id));
        }
        if *self.state.borrow() != ConnectionState::Live {
            // Never held across a reconnect: an order decided before an outage is stale.
            return Err(AdapterError::NotLive(format!("{:?}", *self.state.borrow())));
        }
        let symbol = self
            .symbols
            .get(&req.market_id)
            .cloned()
            .ok_or(AdapterError::UnknownMarket(req.market_id))?;
        req.validate()
            .map_err(|e| AdapterError::Invalid(e.to_string()))?;
        if self.held.len() >= self.cfg.max_pending_orders {
            return Err(AdapterError::BufferFull {
                held: self.held.len(),
                capacity: self.cfg.max_pending_orders,
            });
        }
        let (time_in_force, expire_at) = tif_to_wire(req.time_in_force);
        let wire = NewOrder {
            client_order_id: req.client_order_id.clone(),
            market: symbol,
            product: req.product,
            interval: req.interval,
            side: req.side,
            quantity_mw: req.quantity_mw,
            price_cny_per_mwh: req.price_cny_per_mwh,
            time_in_force,
            expire_at,
        };
        let ev = OrderEvent {
            client_order_id: req.client_order_id.clone(),
            at: self.clock.now(),
            kind: OrderEventKind::Created { request: req },
        };
        self.ledger
            .apply(&ev)
            .map_err(|e| AdapterError::Invalid(e.to_string()))?;
        self.hold(Held::new_order(wire, stamp))
    }

    fn cancel(&mut self, id: ClientOrderId) -> Result<SendOutcome, AdapterError> {
        if !self.ledger.contains(&id) {
            return Err(AdapterError::UnknownOrder(id));
        }
        if self.held.len() >= self.cfg.max_pending_orders {
            return Err(AdapterError::BufferFull {
                held: self.held.len(),
                capacity: self.cfg.max_pending_orders,
            });
        }
        let ev = OrderEvent {
            client_order_id: id.clone(),
            at: self.clock.now(),
            kind: OrderEventKind::CancelRequested {
                reason: "requested".into(),
            },
        };
        self.ledger
            .apply(&ev)
            .map_err(|e| AdapterError::Invalid(e.to_string()))?;
        self.hold(Held::cancel(id))
    }

    async fn on_text(
        &mut self,
        ws: &mut Ws,
        text: &str,
        phase: &mut Phase,
        sync: &mut Sync,
    ) -> Result<(), End> {
        let msg = match decode_venue(text) {
            Ok(m) => m,
            Err(_) => {
                inc(&self.stats.malformed_in);
                return Ok(());
            }
        };
        match msg {
            VenueMsg::LoginOk(ok) => {
                if self.cfg.rate_limit.is_none() {
                    let RateLimit {
                        max_orders,
                        window_ms,
                    } = ok.rate_limit;
                    self.rate = Some(SlidingWindow::new(max_orders, secs(window_ms)));
                }
                if self.next_seq.is_none() {
                    // A fresh adapter: older reports are about orders it never held.
                    self.next_seq = Some(ok.account_seq + 1);
                }
                self.check_reset(&ok, sync).await;
                *phase = Phase::Syncing;
                self.start_sync(ws, sync).await.map_err(End::Lost)?;
            }
            VenueMsg::Snapshot(md) => {
                let sub = Subscription {
                    channel: md.channel,
                    market: md.market.clone(),
                };
                self.md_seq.insert(sub.clone(), md.seq);
                sync.snapshots.remove(&sub);
                self.deliver(md, true);
            }
            VenueMsg::Update(md) => self.on_update(ws, md).await.map_err(End::Lost)?,
            VenueMsg::ExecReport(r) => self.on_report(ws, r).await.map_err(End::Lost)?,
            VenueMsg::FillsSince(reply) => {
                let last = reply.reports.last().map(|r| r.account_seq);
                sync.summary.reports_replayed += reply.reports.len();
                for r in reply.reports {
                    self.on_report_inner(r).await?;
                }
                if reply.more {
                    let from = last.unwrap_or(reply.since_seq);
                    send(
                        ws,
                        &ClientMsg::FillsSince(FillsSinceQuery { account_seq: from }),
                    )
                    .await
                    .map_err(End::Lost)?;
                } else {
                    self.gap_query = false;
                    sync.fills_done = true;
                    if self.next_seq.is_some_and(|n| n <= reply.account_seq) {
                        // Still behind (reports lost in between): ask again.
                        self.query_gap(ws).await.map_err(End::Lost)?;
                    }
                }
            }
            VenueMsg::OrderStatus(reply) => {
                if sync.statuses.remove(&reply.client_order_id) {
                    match reply.order {
                        None => self.unknown_to_venue(reply.client_order_id, sync).await,
                        Some(state) => sync
                            .venue_status
                            .push((reply.client_order_id, state.status)),
                    }
                }
            }
            VenueMsg::OpenOrders(reply) => {
                sync.open_done = true;
                sync.summary.unknown_open_orders = reply
                    .orders
                    .into_iter()
                    .filter(|o| !self.ledger.contains(&o.client_order_id))
                    .collect();
            }
            VenueMsg::Heartbeat(hb) => {
                let behind = hb
                    .account_seq
                    .zip(self.next_seq)
                    .is_some_and(|(venue, next)| venue >= next);
                if behind && !self.gap_query && *phase == Phase::Live {
                    inc(&self.stats.report_gaps);
                    self.query_gap(ws).await.map_err(End::Lost)?;
                }
                for stream in &hb.streams {
                    let sub = Subscription {
                        channel: stream.channel,
                        market: stream.market.clone(),
                    };
                    let behind = self.md_seq.get(&sub).is_some_and(|ours| *ours < stream.seq);
                    if behind {
                        // The stream's last update(s) never arrived: resync from a snapshot.
                        inc(&self.stats.market_gaps);
                        self.md_seq.remove(&sub);
                        send(ws, &ClientMsg::Unsubscribe(sub.clone()))
                            .await
                            .map_err(End::Lost)?;
                        send(ws, &ClientMsg::Subscribe(sub))
                            .await
                            .map_err(End::Lost)?;
                    }
                }
                let ack = ClientMsg::HeartbeatAck(Heartbeat {
                    ts: hb.ts,
                    account_seq: None,
                    streams: Vec::new(),
                });
                send(ws, &ack).await.map_err(End::Lost)?;
            }
            VenueMsg::HeartbeatAck(_) | VenueMsg::Unsubscribed(_) => {}
            VenueMsg::Error(err) => {
                let fatal_login = matches!(
                    err.code,
                    ErrorCode::BadApiKey | ErrorCode::UnsupportedProtocolVersion
                );
                if err.code == ErrorCode::SeqTooOld {
                    // The log no longer reaches back: trust the status queries instead.
                    self.next_seq = None;
                    sync.fills_done = true;
                    self.gap_query = false;
                }
                self.emit(AdapterEvent::VenueError(err.clone())).await;
                if fatal_login {
                    return Err(End::Lost(format!(
                        "login refused: {}: {}",
                        err.code, err.message
                    )));
                }
            }
            VenueMsg::Unknown { .. } => inc(&self.stats.unknown_in),
        }
        if *phase == Phase::Syncing && sync.complete() {
            self.finish_sync(sync).await;
            *phase = Phase::Live;
            self.set_state(ConnectionState::Live).await;
        }
        Ok(())
    }

    async fn start_sync(&mut self, ws: &mut Ws, sync: &mut Sync) -> Result<(), String> {
        self.md_seq.clear();
        for sub in self.subs.clone() {
            sync.snapshots.insert(sub.clone());
            send(ws, &ClientMsg::Subscribe(sub)).await?;
        }
        sync.summary.subscriptions_restored = self.subs.len();
        let held: HashSet<ClientOrderId> = self
            .held
            .iter()
            .filter_map(|h| h.new_id().cloned())
            .collect();
        let to_check: Vec<ClientOrderId> = self
            .ledger
            .open_orders()
            .map(|o| o.id().clone())
            .filter(|id| !held.contains(id))
            .collect();
        sync.summary.orders_checked = to_check.len();
        for id in to_check {
            sync.statuses.insert(id.clone());
            send(
                ws,
                &ClientMsg::OrderStatus(OrderStatusQuery {
                    client_order_id: id,
                }),
            )
            .await?;
        }
        self.stash.clear();
        self.gap_query = true;
        let since = self.next_seq.map_or(0, |n| n - 1);
        send(
            ws,
            &ClientMsg::FillsSince(FillsSinceQuery { account_seq: since }),
        )
        .await?;
        send(ws, &ClientMsg::OpenOrders(OpenOrdersQuery {})).await
    }

    /// At login: a new venue epoch or an account sequence below the last one applied means the
    /// venue restarted and lost its state. Reported once; the report sequence restarts there.
    async fn check_reset(&mut self, ok: &crate::protocol::LoginOk, sync: &mut Sync) {
        let previous_epoch = self.venue_epoch.clone();
        let applied = self.next_seq.map_or(0, |n| n.saturating_sub(1));
        let epoch_changed = matches!(
            (&previous_epoch, &ok.venue_epoch),
            (Some(a), Some(b)) if a != b
        );
        if ok.venue_epoch.is_some() {
            self.venue_epoch.clone_from(&ok.venue_epoch);
        }
        let reason = if epoch_changed {
            format!(
                "venue epoch changed from {} to {}",
                previous_epoch.as_deref().unwrap_or("?"),
                ok.venue_epoch.as_deref().unwrap_or("?")
            )
        } else if ok.account_seq < applied {
            format!(
                "venue account_seq {} is below the last applied {applied}",
                ok.account_seq
            )
        } else {
            return;
        };
        self.next_seq = Some(ok.account_seq + 1);
        self.stash.clear();
        sync.reset_seq = Some(ok.account_seq);
        self.report_reset(reason, applied, ok.account_seq, previous_epoch, sync)
            .await;
    }

    async fn report_reset(
        &mut self,
        reason: String,
        previous_account_seq: u64,
        account_seq: u64,
        previous_epoch: Option<String>,
        sync: &mut Sync,
    ) {
        if sync.reset {
            return;
        }
        sync.reset = true;
        tracing::error!(venue = %self.cfg.venue, %reason, "venue reset detected: its orders and reports are not ours any more");
        self.emit(AdapterEvent::VenueReset(VenueReset {
            reason,
            previous_epoch,
            epoch: self.venue_epoch.clone(),
            previous_account_seq,
            account_seq,
        }))
        .await;
    }

    /// `order_status` answered `null`: the venue does not know this open order. Never resent:
    /// unacknowledged, it ends unsent; acknowledged once, it is lost and the venue was reset.
    async fn unknown_to_venue(&mut self, id: ClientOrderId, sync: &mut Sync) {
        let acked = self
            .ledger
            .order(&id)
            .is_some_and(|o| !never_acknowledged(o));
        if acked {
            let applied = self.next_seq.map_or(0, |n| n.saturating_sub(1));
            let previous_epoch = self.venue_epoch.clone();
            let reason = format!("venue does not know order {id}, which it acknowledged");
            self.report_reset(reason, applied, applied, previous_epoch, sync)
                .await;
            sync.summary.orders_lost += 1;
            let end = OrderEnd::Lost {
                venue_account_seq: sync.reset_seq,
            };
            self.end_order(id, end, "venue_reset: the venue does not know it".into())
                .await;
        } else {
            sync.summary.orders_unsent += 1;
            let reason = "the venue never received it; not resent".to_owned();
            self.end_order(id, OrderEnd::Unsent, reason).await;
        }
    }

    async fn finish_sync(&mut self, sync: &mut Sync) {
        for (id, venue_status) in std::mem::take(&mut sync.venue_status) {
            let ours = self.ledger.order(&id).map(|o| o.status);
            let pending_cancel = ours == Some(OrderStatus::PendingCancel);
            if ours != Some(venue_status) && !pending_cancel {
                sync.summary.mismatches.push(id);
            }
        }
        let mut summary = std::mem::take(&mut sync.summary);
        summary.session = self.sessions;
        self.emit(AdapterEvent::Reconciled(summary)).await;
    }

    async fn query_gap(&mut self, ws: &mut Ws) -> Result<(), String> {
        let Some(next) = self.next_seq else {
            return Ok(());
        };
        self.gap_query = true;
        send(
            ws,
            &ClientMsg::FillsSince(FillsSinceQuery {
                account_seq: next - 1,
            }),
        )
        .await
    }

    async fn on_report(&mut self, ws: &mut Ws, r: WireExecReport) -> Result<(), String> {
        let ahead = self.next_seq.is_some_and(|n| r.account_seq > n);
        self.on_report_inner(r)
            .await
            .map_err(|_| "reorder buffer overflow".to_string())?;
        if ahead && !self.gap_query {
            inc(&self.stats.report_gaps);
            self.query_gap(ws).await?;
        }
        Ok(())
    }

    /// Applies a report in sequence order (holding it if it is early).
    async fn on_report_inner(&mut self, r: WireExecReport) -> Result<(), End> {
        let Some(next) = self.next_seq else {
            // Sequence unknown (log too old): apply; the order state machine drops stale ones.
            self.next_seq = Some(r.account_seq + 1);
            self.apply(r).await;
            return Ok(());
        };
        if r.account_seq < next {
            inc(&self.stats.duplicate_reports);
            return Ok(());
        }
        if r.account_seq > next {
            if self.stash.len() >= self.cfg.max_reorder_reports {
                return Err(End::Lost(
                    "too many exec reports out of order; full reconcile".into(),
                ));
            }
            self.stash.insert(r.account_seq, r);
            return Ok(());
        }
        self.apply(r).await;
        let mut next = next + 1;
        while let Some(r) = self.stash.remove(&next) {
            self.apply(r).await;
            next += 1;
        }
        self.next_seq = Some(next);
        Ok(())
    }

    async fn apply(&mut self, wire: WireExecReport) {
        let report = wire.to_engine();
        self.unacked.remove(&report.client_order_id);
        if !self.ledger.contains(&report.client_order_id) {
            self.emit(AdapterEvent::ForeignReport(report)).await;
            return;
        }
        let ev = OrderEvent {
            client_order_id: report.client_order_id.clone(),
            at: report.at,
            kind: OrderEventKind::Report {
                report: report.clone(),
            },
        };
        match self.ledger.apply(&ev) {
            Ok(outcome) if outcome.to.is_some() => {
                self.emit(AdapterEvent::ExecReport(report)).await
            }
            Ok(_) => inc(&self.stats.stale_reports),
            Err(e) => {
                inc(&self.stats.rejected_reports);
                tracing::warn!(venue = %self.cfg.venue, error = %e, "exec report refused by the order state machine");
            }
        }
    }

    async fn on_update(&mut self, ws: &mut Ws, md: MarketData) -> Result<(), String> {
        let sub = Subscription {
            channel: md.channel,
            market: md.market.clone(),
        };
        let Some(last) = self.md_seq.get(&sub).copied() else {
            return Ok(()); // not subscribed (any more), or waiting for the snapshot
        };
        if md.seq <= last {
            return Ok(());
        }
        if md.seq != last + 1 {
            inc(&self.stats.market_gaps);
            // Resync: forget the stream until the fresh snapshot arrives.
            self.md_seq.remove(&sub);
            send(ws, &ClientMsg::Unsubscribe(sub.clone())).await?;
            return send(ws, &ClientMsg::Subscribe(sub)).await;
        }
        self.md_seq.insert(sub, md.seq);
        self.deliver(md, false);
        Ok(())
    }

    fn deliver(&self, md: MarketData, from_snapshot: bool) {
        let (market, seq) = (md.market, md.seq);
        let mk = |item| MarketUpdate {
            market: market.clone(),
            seq,
            from_snapshot,
            item,
        };
        match md.data {
            ChannelData::Prices(v) => v
                .into_iter()
                .for_each(|x| self.md.push(mk(MarketItem::Price(x)))),
            ChannelData::Book(v) => v
                .into_iter()
                .for_each(|x| self.md.push(mk(MarketItem::Book(x)))),
            ChannelData::AuctionResults(v) => v
                .into_iter()
                .for_each(|x| self.md.push(mk(MarketItem::Auction(x)))),
            ChannelData::AncillaryResults(v) => v
                .into_iter()
                .for_each(|x| self.md.push(mk(MarketItem::Ancillary(x)))),
            ChannelData::DrEvents(v) => v
                .into_iter()
                .for_each(|x| self.md.push(mk(MarketItem::DrEvent(x)))),
        }
    }
}

async fn send(ws: &mut Ws, msg: &ClientMsg) -> Result<(), String> {
    let text = encode(msg).map_err(|e| e.to_string())?;
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("write: {e}"))
}
