//! The MarketConnector: one task per venue connection, wrapping a [`WsAdapter`] (which owns
//! reconnect with backoff and jitter, heartbeats, resubscription and reconciliation).
//!
//! It turns OMS commands into adapter calls and adapter events into engine types: execution
//! reports go to the OMS in order through a bounded outbox (back-pressure, never dropped);
//! market data is converted once and written into every strategy's conflator (latest value per
//! key wins); ancillary results and demand-response invitations also go to every Settlement
//! actor (bounded `try_send`, never conflated); connection state goes to the health registry.
//!
//! Hot path: nothing between an OMS command and the adapter's socket task is awaited. Orders and
//! cancels are handed over with `submit_order` / `submit_cancel` (a bounded `try_send`); an order
//! the adapter refuses comes back as an event and goes to the OMS as `SendFailed`.
//!
//! Latency it records: `market_data_decode{scope=<venue>}` (wire item to engine type),
//! `oms_to_wire{scope=<venue>}` (OMS hand-off to the order frame written to the socket),
//! `oms_to_wire{scope=tick_to_order}` (market data decoded to the order frame written),
//! `venue_roundtrip_ack{scope=<venue>}` (order handed over to its accept/reject report).
//! Queue high-water marks: `vpp_queue_depth_max{queue=connector_cmds/<venue>}`,
//! `{queue=connector_outbox/<venue>}`, `{queue=adapter_events/<venue>}`.
//!
//! Invariants:
//! - The map of orders awaiting their ack is bounded ([`MAX_AWAITING_ACK`]).
//! - Messages to the OMS keep their order: while the outbox holds anything, new ones queue
//!   behind it and no adapter event is read, so the outbox never holds more than a few.

use super::messages::{ConnectorCmd, MdSender, ToOms, ToRisk};
use super::settlement::{Announcement, ToSettlement};
use crate::health::{Health, HealthRegistry};
use crate::mailbox::{BoundedSender, Refusable};
use crate::metrics::{Counter, Gauge, Metrics, Stage};
use actix::prelude::SendError;
use actix::Recipient;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use vpp_engine::clock::Clock;
use vpp_engine::ids::{ClientOrderId, MarketId};
use vpp_engine::order::ExecKind;
use vpp_engine::strategy::{MarketData, PriceLevel};
use vpp_market_adapters::client::{
    AdapterEvent, AdapterEvents, ConnectionState, MarketItem, MarketUpdate, OrderStamp,
    VenueAdapter, VenueReset, WsAdapter,
};

/// Reason of the global kill switch a venue reset engages.
pub const VENUE_RESET: &str = "venue_reset";
/// Counter of venue resets detected.
pub const VENUE_RESETS_TOTAL: &str = "vpp_venue_resets_total";

/// Most orders tracked between hand-over and ack for the round-trip histogram.
pub const MAX_AWAITING_ACK: usize = 10_000;
/// How long the connector waits before retrying a full OMS mailbox.
const OUTBOX_RETRY: Duration = Duration::from_micros(200);

pub struct ConnectorWiring {
    pub venue: String,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub health: HealthRegistry,
    pub oms: Recipient<ToOms>,
    pub risk: BoundedSender<ToRisk>,
    /// Every strategy's market data inbox; filled once the strategies start.
    pub strategies: Arc<RwLock<Vec<MdSender>>>,
    /// Venue symbol → market id.
    pub symbols: HashMap<String, MarketId>,
    /// Every aggregation's Settlement actor: ancillary results and demand-response invitations
    /// go to each (the prices regulation mileage and DR are settled at); empty: none.
    pub settlement: Vec<BoundedSender<ToSettlement>>,
}

/// Converts one adapter market data item; `None` for channels strategies do not take.
pub fn to_engine(
    update: &MarketUpdate,
    market: MarketId,
    at: vpp_engine::Timestamp,
) -> Option<MarketData> {
    let level = |l: Option<&(rust_decimal::Decimal, rust_decimal::Decimal)>| {
        l.map(|(p, q)| PriceLevel {
            price_cny_per_mwh: *p,
            quantity_mw: *q,
        })
    };
    Some(match &update.item {
        MarketItem::Price(p) => MarketData::Price {
            market,
            interval: p.interval,
            reference_price_cny_per_mwh: p.reference_price_cny_per_mwh,
            last_trade_price_cny_per_mwh: p.last_trade_price_cny_per_mwh,
            at,
        },
        MarketItem::Book(b) => MarketData::BookTop {
            market,
            interval: b.interval,
            best_bid: level(b.bids.first()),
            best_ask: level(b.asks.first()),
            at,
        },
        MarketItem::Auction(a) => MarketData::AuctionResult {
            market,
            interval: a.interval,
            clearing_price_cny_per_mwh: a.clearing_price_cny_per_mwh,
            volume_mw: a.volume_mw,
            at,
        },
        MarketItem::Ancillary(a) => MarketData::AncillaryResult {
            market,
            interval: a.interval,
            capacity_price_cny_per_mw: a.capacity_price_cny_per_mw,
            mileage_price_cny_per_mw: a.mileage_price_cny_per_mw,
            volume_mw: a.volume_mw,
            at,
        },
        MarketItem::DrEvent(e) => MarketData::DrInvitation {
            market,
            interval: e.interval,
            event_id: e.event_id,
            price_cny_per_mwh: e.price_cny_per_mwh,
            target_mw: e.target_mw,
            respond_by: e.respond_by,
            awarded_mw: e.awarded_mw,
            at,
        },
    })
}

struct Connector {
    w: ConnectorWiring,
    adapter: Arc<WsAdapter>,
    awaiting_ack: HashMap<ClientOrderId, u64>,
    connected: Gauge,
    /// Messages for the OMS its mailbox had no room for yet, in order.
    outbox: VecDeque<ToOms>,
    cmds_depth: Gauge,
    outbox_depth: Gauge,
    events_depth: Gauge,
    resets: Counter,
}

impl Connector {
    fn actor_name(&self) -> String {
        format!("connector/{}", self.w.venue)
    }

    async fn command(&mut self, cmd: ConnectorCmd) {
        match cmd {
            ConnectorCmd::New {
                request,
                t0_ns,
                oms_ns,
            } => {
                // Not awaited: the socket task writes the frame and the written-hook records
                // `oms_to_wire` and `tick_to_order` at that moment.
                let stamp = OrderStamp {
                    tick_ns: t0_ns,
                    handed_ns: oms_ns,
                };
                let id = request.client_order_id.clone();
                match self.adapter.submit_order(request, stamp) {
                    Ok(()) => {
                        if self.awaiting_ack.len() >= MAX_AWAITING_ACK {
                            self.awaiting_ack.clear();
                        }
                        self.awaiting_ack.insert(id, self.w.clock.monotonic_ns());
                    }
                    Err(e) => self.send_failed(id, e.to_string()),
                }
            }
            ConnectorCmd::Cancel(id) => {
                if let Err(e) = self.adapter.submit_cancel(id.clone()) {
                    tracing::warn!(client_order_id = %id, error = %e, "cancel not handed to the adapter");
                }
            }
            ConnectorCmd::Replace {
                client_order_id,
                quantity_mw,
                price_cny_per_mwh,
            } => {
                if let Err(e) = self
                    .adapter
                    .replace(client_order_id.clone(), quantity_mw, price_cny_per_mwh)
                    .await
                {
                    tracing::warn!(%client_order_id, error = %e, "replace not sent");
                }
            }
        }
    }

    fn send_failed(&mut self, client_order_id: ClientOrderId, reason: String) {
        self.send_to_oms(ToOms::SendFailed {
            client_order_id,
            reason,
        });
    }

    /// Hands a message to the OMS behind anything already waiting; a full mailbox keeps it
    /// in the outbox (retried by the run loop), a closed one is logged.
    fn send_to_oms(&mut self, msg: ToOms) {
        self.outbox.push_back(msg);
        self.outbox_depth.set_max(self.outbox.len() as i64);
        self.drain_outbox();
    }

    fn drain_outbox(&mut self) {
        while let Some(msg) = self.outbox.pop_front() {
            match self.w.oms.try_send(msg) {
                Ok(()) => {}
                Err(SendError::Full(msg)) => {
                    self.outbox.push_front(msg);
                    return;
                }
                Err(SendError::Closed(msg)) => {
                    tracing::error!(message = ?msg, "OMS unreachable; message lost at shutdown");
                }
            }
        }
    }

    async fn event(&mut self, ev: AdapterEvent) {
        match ev {
            AdapterEvent::ExecReport(report) => {
                if matches!(report.kind, ExecKind::Accepted | ExecKind::Rejected { .. }) {
                    if let Some(sent) = self.awaiting_ack.remove(&report.client_order_id) {
                        self.w
                            .metrics
                            .latency(Stage::VenueRoundtripAck, &self.w.venue)
                            .record_between(sent, self.w.clock.monotonic_ns());
                    }
                }
                // In order through the outbox: a busy OMS slows the connector down (no event is
                // read while the outbox waits), it never loses a report.
                self.send_to_oms(ToOms::Report(report));
            }
            AdapterEvent::OrderRefused {
                client_order_id,
                reason,
            } => {
                self.awaiting_ack.remove(&client_order_id);
                self.send_failed(client_order_id, reason);
            }
            AdapterEvent::MarketData(update) => self.market_data(&update),
            AdapterEvent::Connection(state) => self.connection(&state),
            AdapterEvent::Reconciled(r) => {
                tracing::info!(venue = %self.w.venue, session = r.session,
                    subscriptions = r.subscriptions_restored, reports = r.reports_replayed,
                    checked = r.orders_checked, unsent = r.orders_unsent, lost = r.orders_lost,
                    mismatches = r.mismatches.len(), unknown_open = r.unknown_open_orders.len(),
                    "venue session reconciled");
                if !r.mismatches.is_empty() {
                    tracing::warn!(venue = %self.w.venue, orders = ?r.mismatches,
                        "order status differs from the venue's after reconciliation");
                }
            }
            AdapterEvent::VenueReset(reset) => self.venue_reset(&reset),
            AdapterEvent::OrderEnded {
                client_order_id,
                end,
                reason,
            } => {
                self.awaiting_ack.remove(&client_order_id);
                self.send_to_oms(ToOms::Ended {
                    client_order_id,
                    end,
                    reason,
                });
            }
            AdapterEvent::ForeignReport(r) => {
                tracing::warn!(venue = %self.w.venue, client_order_id = %r.client_order_id,
                    "report for an order this daemon does not know (recovered at next start)");
            }
            AdapterEvent::VenueError(e) => {
                tracing::warn!(venue = %self.w.venue, code = %e.code, message = %e.message, "venue error");
            }
        }
    }

    /// The venue restarted and lost its state: never trade through it. New orders stop (global
    /// kill switch, reason [`VENUE_RESET`], a risk event and an audit entry), a critical alert
    /// is logged and counted; the adapter's reconcile ends what the venue does not know.
    /// Resuming is the operator's decision (releasing the kill switch).
    fn venue_reset(&mut self, reset: &VenueReset) {
        self.resets.inc();
        tracing::error!(venue = %self.w.venue, alert = "critical", reason = %reset.reason,
            previous_epoch = ?reset.previous_epoch, epoch = ?reset.epoch,
            previous_account_seq = reset.previous_account_seq, account_seq = reset.account_seq,
            "VENUE RESET: the venue lost its state; new orders stopped (kill switch venue_reset) until an operator releases it");
        let kill = ToRisk::KillAll {
            reason: VENUE_RESET.into(),
        };
        if let Err(e) = self.w.risk.try_send(kill) {
            tracing::error!(error = %e, "venue reset: the kill switch could not reach risk");
        }
    }

    fn market_data(&mut self, update: &MarketUpdate) {
        let Some(&market) = self.w.symbols.get(&update.market) else {
            return;
        };
        let start = self.w.clock.monotonic_ns();
        let Some(data) = to_engine(update, market, self.w.clock.now()) else {
            return;
        };
        let decoded = self.w.clock.monotonic_ns();
        self.w
            .metrics
            .latency(Stage::MarketDataDecode, &self.w.venue)
            .record_between(start, decoded);
        if let MarketData::Price {
            interval,
            reference_price_cny_per_mwh,
            ..
        } = data
        {
            // Collar references are refreshed every update; a refused one is counted.
            let _ = self.w.risk.try_send(ToRisk::Reference {
                market,
                interval,
                price_cny_per_mwh: reference_price_cny_per_mwh,
            });
        }
        if let Some(a) = Announcement::from_market_data(&data) {
            // Rare (per interval and market); a refusal is counted by the sender and logged.
            for s in &self.w.settlement {
                if let Err(e) = s.try_send(ToSettlement::Announced(a)) {
                    let (msg, reason) = e.into_parts();
                    msg.refuse(&reason);
                }
            }
        }
        let strategies = self
            .w
            .strategies
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for s in strategies.iter() {
            if let Err(e) = s.publish(data.key(), (data, decoded)) {
                tracing::debug!(consumer = %s.consumer(), error = %e, "market data not delivered");
            }
        }
    }

    fn connection(&mut self, state: &ConnectionState) {
        let name = self.actor_name();
        let health = match state {
            ConnectionState::Live => Health::Healthy,
            ConnectionState::Stopped { reason } => Health::Halted(reason.clone()),
            other => Health::Degraded(format!("{other:?}")),
        };
        self.connected
            .set(i64::from(matches!(state, ConnectionState::Live)));
        self.w.health.report(&name, health);
        tracing::info!(venue = %self.w.venue, state = ?state, "venue connection");
    }
}

/// Records `oms_to_wire{scope=<venue>}` and `oms_to_wire{scope=tick_to_order}` when the
/// adapter's socket task has written an order's frame.
fn install_written_hook(w: &ConnectorWiring, adapter: &WsAdapter) {
    let to_wire = w.metrics.latency(Stage::OmsToWire, &w.venue);
    let tick_to_order = w.metrics.latency(Stage::OmsToWire, "tick_to_order");
    let hook = move |_: &ClientOrderId, stamp: OrderStamp, written_ns: u64| {
        if stamp.handed_ns > 0 {
            to_wire.record_between(stamp.handed_ns, written_ns);
        }
        if stamp.tick_ns > 0 {
            tick_to_order.record_between(stamp.tick_ns, written_ns);
        }
    };
    if !adapter.set_order_written_hook(Arc::new(hook)) {
        tracing::warn!(venue = %w.venue, "the adapter already reports written orders elsewhere");
    }
}

/// Runs the connector until the command channel closes (daemon shutdown).
pub async fn run_connector(
    w: ConnectorWiring,
    adapter: Arc<WsAdapter>,
    mut events: AdapterEvents,
    mut cmds: mpsc::Receiver<ConnectorCmd>,
) {
    let connected = w
        .metrics
        .gauge("vpp_venue_connected", &[("venue", w.venue.as_str())]);
    let depth = |queue: &str| {
        let label = format!("{queue}/{}", w.venue);
        w.metrics
            .gauge(crate::metrics::names::QUEUE_DEPTH_MAX, &[("queue", &label)])
    };
    let (cmds_depth, outbox_depth, events_depth) = (
        depth("connector_cmds"),
        depth("connector_outbox"),
        depth("adapter_events"),
    );
    install_written_hook(&w, &adapter);
    let c_resets = w
        .metrics
        .counter(VENUE_RESETS_TOTAL, &[("venue", w.venue.as_str())]);
    let mut c = Connector {
        w,
        adapter,
        awaiting_ack: HashMap::new(),
        connected,
        outbox: VecDeque::new(),
        cmds_depth,
        outbox_depth,
        events_depth,
        resets: c_resets,
    };
    loop {
        let blocked = !c.outbox.is_empty();
        tokio::select! {
            biased;
            cmd = cmds.recv() => match cmd {
                Some(cmd) => {
                    c.cmds_depth.set_max(cmds.len() as i64 + 1);
                    c.command(cmd).await
                }
                None => break,
            },
            _ = tokio::time::sleep(OUTBOX_RETRY), if blocked => c.drain_outbox(),
            ev = events.recv(), if !blocked => match ev {
                Some(ev) => {
                    c.events_depth.set_max(events.queued() as i64 + 1);
                    c.event(ev).await
                }
                None => break,
            },
        }
    }
    c.drain_outbox();
    tracing::info!(venue = %c.w.venue, "market connector stopped");
}
