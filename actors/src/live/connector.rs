//! The MarketConnector: one task per venue connection, wrapping a [`WsAdapter`] (which owns
//! reconnect with backoff and jitter, heartbeats, resubscription and reconciliation).
//!
//! It turns OMS commands into adapter calls and adapter events into engine types: execution
//! reports go to the OMS with an awaited `send` (back-pressure, never dropped); market data is
//! converted once and written into every strategy's conflator (latest value per key wins);
//! connection state goes to the health registry.
//!
//! Latency it records: `market_data_decode{scope=<venue>}` (wire item to engine type),
//! `oms_to_wire{scope=<venue>}` (OMS hand-off to the frame handed to the socket task),
//! `oms_to_wire{scope=tick_to_order}` (market data decoded to order handed to the socket task),
//! `venue_roundtrip_ack{scope=<venue>}` (order handed over to its accept/reject report).
//!
//! Invariant: the map of orders awaiting their ack is bounded ([`MAX_AWAITING_ACK`]).

use super::messages::{ConnectorCmd, MdSender, ToOms, ToRisk};
use crate::health::{Health, HealthRegistry};
use crate::mailbox::BoundedSender;
use crate::metrics::{Gauge, Metrics, Stage};
use actix::Recipient;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use tokio::sync::mpsc;
use vpp_engine::clock::Clock;
use vpp_engine::ids::{ClientOrderId, MarketId};
use vpp_engine::order::ExecKind;
use vpp_engine::strategy::{MarketData, PriceLevel};
use vpp_market_adapters::client::{
    AdapterEvent, AdapterEvents, ConnectionState, MarketItem, MarketUpdate, VenueAdapter, WsAdapter,
};

/// Most orders tracked between hand-over and ack for the round-trip histogram.
pub const MAX_AWAITING_ACK: usize = 10_000;

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
        MarketItem::Ancillary(_) | MarketItem::DrEvent(_) => return None,
    })
}

struct Connector {
    w: ConnectorWiring,
    adapter: Arc<WsAdapter>,
    awaiting_ack: HashMap<ClientOrderId, u64>,
    connected: Gauge,
}

impl Connector {
    fn actor_name(&self) -> String {
        format!("connector/{}", self.w.venue)
    }

    async fn command(&mut self, cmd: ConnectorCmd) {
        let clock = Arc::clone(&self.w.clock);
        match cmd {
            ConnectorCmd::New {
                request,
                t0_ns,
                oms_ns,
            } => {
                let id = request.client_order_id.clone();
                match self.adapter.send_order(request).await {
                    Ok(_) => {
                        let now_ns = clock.monotonic_ns();
                        let m = &self.w.metrics;
                        m.latency(Stage::OmsToWire, &self.w.venue)
                            .record_between(oms_ns, now_ns);
                        if t0_ns > 0 {
                            m.latency(Stage::OmsToWire, "tick_to_order")
                                .record_between(t0_ns, now_ns);
                        }
                        if self.awaiting_ack.len() >= MAX_AWAITING_ACK {
                            self.awaiting_ack.clear();
                        }
                        self.awaiting_ack.insert(id, now_ns);
                    }
                    Err(e) => {
                        self.send_failed(id, e.to_string()).await;
                    }
                }
            }
            ConnectorCmd::Cancel(id) => {
                if let Err(e) = self.adapter.cancel(id.clone()).await {
                    // Usually a race with the order's final report (filled, cancelled).
                    tracing::debug!(client_order_id = %id, error = %e, "cancel not sent");
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

    async fn send_failed(&self, client_order_id: ClientOrderId, reason: String) {
        let msg = ToOms::SendFailed {
            client_order_id,
            reason,
        };
        if let Err(e) = self.w.oms.send(msg).await {
            tracing::error!(error = %e, "OMS unreachable for a send failure");
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
                // Awaited: a busy OMS slows the connector down, it never loses a report.
                match self.w.oms.send(ToOms::Report(report)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(refused)) => {
                        tracing::error!(reason = %refused, "OMS refused an exec report")
                    }
                    Err(e) => tracing::error!(error = %e, "OMS unreachable for an exec report"),
                }
            }
            AdapterEvent::MarketData(update) => self.market_data(&update),
            AdapterEvent::Connection(state) => self.connection(&state),
            AdapterEvent::Reconciled(r) => {
                tracing::info!(venue = %self.w.venue, session = r.session,
                    subscriptions = r.subscriptions_restored, reports = r.reports_replayed,
                    checked = r.orders_checked, resent = r.orders_resent,
                    mismatches = r.mismatches.len(), unknown_open = r.unknown_open_orders.len(),
                    "venue session reconciled");
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
    let mut c = Connector {
        w,
        adapter,
        awaiting_ack: HashMap::new(),
        connected,
    };
    loop {
        tokio::select! {
            biased;
            cmd = cmds.recv() => match cmd {
                Some(cmd) => c.command(cmd).await,
                None => break,
            },
            ev = events.recv() => match ev {
                Some(ev) => c.event(ev).await,
                None => break,
            },
        }
    }
    tracing::info!(venue = %c.w.venue, "market connector stopped");
}
