//! Start-up reconciliation with the venue, before the adapter session and before any strategy
//! runs: one short session of its own that asks the venue for every exec report after the
//! journal's last sequence, for the open orders, and for the full state of every order the
//! venue knows and the journal lacks (an order sent just before a crash whose `Created` event
//! never committed).
//!
//! The result is a list of [`OrderEvent`]s, in order: a `Recovered` event for each adopted
//! order, then every missed report in account sequence order. Applying them to the replayed
//! ledger (and journaling them) gives the orders and positions the venue has.
//!
//! A venue that restarted with state loss while the daemon was down shows as an account
//! sequence below the one the journal's open orders were last reported at: [`Recovery`]
//! carries it as `venue_reset`, the whole (new) report log is read, and the venue session that
//! follows ends the open orders the venue does not know (`lost`) and raises the alert.
//!
//! Invariants:
//! - Read-only towards the venue: no order is sent, cancelled or replaced.
//! - Bounded: at most [`MAX_REPORT_PAGES`] pages of reports and [`MAX_ADOPTED`] adopted orders;
//!   past either, the recovery fails loudly instead of starting with a partial view.
//! - Deterministic: the same journal and venue state give the same events.

use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use thiserror::Error;
use tokio_tungstenite::tungstenite::Message;
use vpp_engine::ids::{AggregationId, ClientOrderId, MarketId, StrategyId};
use vpp_engine::ledger::{OrderEvent, OrderEventKind, OrderLedger};
use vpp_engine::order::OrderRequest;
use vpp_engine::Timestamp;
use vpp_market_adapters::protocol::{
    decode_venue, encode, tif_from_wire, ClientMsg, FillsSinceQuery, Login, OpenOrdersQuery,
    OrderState, OrderStatusQuery, VenueMsg, WireExecReport, PROTOCOL_VERSION,
};

pub const MAX_REPORT_PAGES: usize = 10_000;
pub const MAX_ADOPTED: usize = 100_000;

#[derive(Debug, Error)]
pub enum RecoveryError {
    #[error("venue {url}: {reason}")]
    Venue { url: String, reason: String },
    #[error("venue {url}: timed out after {secs} s waiting for {what}")]
    Timeout {
        url: String,
        secs: u64,
        what: &'static str,
    },
    #[error("recovery bound exceeded: {0}")]
    Bound(String),
}

/// What reconciliation found.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// `Recovered` events first, then the missed reports, in sequence order.
    pub events: Vec<OrderEvent>,
    /// The account's latest report sequence at the venue.
    pub account_seq: u64,
    pub adopted: usize,
    pub reports: usize,
    /// Orders the venue reported that could not be adopted (unknown market or owner).
    pub unadoptable: Vec<ClientOrderId>,
    /// Why the venue looks reset (its account sequence is below the journal's open orders'),
    /// `None` when it does not.
    pub venue_reset: Option<String>,
}

/// Resolves the owner of an adopted order from its client order id.
pub type OwnerOf<'a> = &'a dyn Fn(&ClientOrderId) -> Option<(Option<StrategyId>, AggregationId)>;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Session {
    ws: Ws,
    url: String,
    timeout: Duration,
}

impl Session {
    fn err(&self, reason: impl Into<String>) -> RecoveryError {
        RecoveryError::Venue {
            url: self.url.clone(),
            reason: reason.into(),
        }
    }

    async fn send(&mut self, msg: &ClientMsg) -> Result<(), RecoveryError> {
        let text = encode(msg).map_err(|e| self.err(e.to_string()))?;
        let sent = self.ws.send(Message::text(text)).await;
        sent.map_err(|e| self.err(format!("write: {e}")))
    }

    /// The next venue message that `pick` accepts; others (heartbeats, reports) are skipped.
    async fn expect<T>(
        &mut self,
        what: &'static str,
        mut pick: impl FnMut(VenueMsg) -> Result<Option<T>, String>,
    ) -> Result<T, RecoveryError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| RecoveryError::Timeout {
                    url: self.url.clone(),
                    secs: self.timeout.as_secs(),
                    what,
                })?;
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => return Err(self.err("connection closed")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(self.err(format!("read: {e}"))),
            };
            let Ok(msg) = decode_venue(text.as_str()) else {
                continue;
            };
            if let VenueMsg::Heartbeat(hb) = &msg {
                let ack = ClientMsg::HeartbeatAck(hb.clone());
                self.send(&ack).await?;
                continue;
            }
            match pick(msg) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => continue,
                Err(reason) => return Err(self.err(reason)),
            }
        }
    }
}

fn venue_error(msg: &VenueMsg) -> Option<String> {
    match msg {
        VenueMsg::Error(e) => Some(format!("{}: {}", e.code, e.message)),
        _ => None,
    }
}

/// Builds the request of an order adopted from the venue.
fn request_of(
    state: &OrderState,
    symbols: &HashMap<String, MarketId>,
    owner: OwnerOf<'_>,
) -> Option<OrderRequest> {
    let market_id = *symbols.get(&state.market)?;
    let (strategy_id, aggregation_id) = owner(&state.client_order_id)?;
    let time_in_force = tif_from_wire(state.time_in_force, state.expire_at).ok()?;
    Some(OrderRequest {
        client_order_id: state.client_order_id.clone(),
        strategy_id,
        aggregation_id,
        market_id,
        product: state.product,
        interval: state.interval,
        side: state.side,
        quantity_mw: state.quantity_mw,
        price_cny_per_mwh: state.price_cny_per_mwh,
        time_in_force,
    })
}

/// Reconciles `ledger` (the replayed journal) with the venue at `url`.
pub async fn reconcile(
    url: &str,
    api_key: &str,
    ledger: &OrderLedger,
    symbols: &HashMap<String, MarketId>,
    owner: OwnerOf<'_>,
    now: Timestamp,
    timeout: Duration,
) -> Result<Recovery, RecoveryError> {
    let connect = tokio_tungstenite::connect_async(url);
    let (ws, _) = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| RecoveryError::Timeout {
            url: url.to_owned(),
            secs: timeout.as_secs(),
            what: "connect",
        })?
        .map_err(|e| RecoveryError::Venue {
            url: url.to_owned(),
            reason: format!("connect: {e}"),
        })?;
    let mut s = Session {
        ws,
        url: url.to_owned(),
        timeout,
    };
    s.send(&ClientMsg::Login(Login {
        api_key: api_key.to_owned(),
        protocol_version: PROTOCOL_VERSION,
    }))
    .await?;
    let account_seq = s
        .expect("login", |m| match m {
            VenueMsg::LoginOk(ok) => Ok(Some(ok.account_seq)),
            other => venue_error(&other).map_or(Ok(None), Err),
        })
        .await?;
    let open_seq = ledger
        .open_orders()
        .map(|o| o.last_report_seq)
        .max()
        .unwrap_or(0);
    let venue_reset = (account_seq < open_seq).then(|| {
        format!(
            "venue account_seq {account_seq} is below {open_seq}, the journal's last report of an open order"
        )
    });
    // After a reset the venue's log is a new one: read it all (any of it may be ours).
    let after = if account_seq < ledger.last_report_seq() {
        0
    } else {
        ledger.last_report_seq()
    };
    let reports = fetch_reports(&mut s, after).await?;
    s.send(&ClientMsg::OpenOrders(OpenOrdersQuery {})).await?;
    let open = s
        .expect("open orders", |m| match m {
            VenueMsg::OpenOrders(r) => Ok(Some(r.orders)),
            other => venue_error(&other).map_or(Ok(None), Err),
        })
        .await?;
    let mut unknown: BTreeSet<ClientOrderId> = reports
        .iter()
        .map(|r| r.client_order_id.clone())
        .chain(open.iter().map(|o| o.client_order_id.clone()))
        .filter(|id| !ledger.contains(id))
        .collect();
    if unknown.len() > MAX_ADOPTED {
        return Err(RecoveryError::Bound(format!(
            "{} orders to adopt, at most {MAX_ADOPTED}",
            unknown.len()
        )));
    }
    let mut states: BTreeMap<ClientOrderId, OrderState> = open
        .into_iter()
        .filter(|o| unknown.contains(&o.client_order_id))
        .map(|o| (o.client_order_id.clone(), o))
        .collect();
    unknown.retain(|id| !states.contains_key(id));
    for id in unknown {
        s.send(&ClientMsg::OrderStatus(OrderStatusQuery {
            client_order_id: id.clone(),
        }))
        .await?;
        let state = s
            .expect("order status", |m| match m {
                VenueMsg::OrderStatus(r) if r.client_order_id == id => Ok(Some(r.order)),
                other => venue_error(&other).map_or(Ok(None), Err),
            })
            .await?;
        if let Some(state) = state {
            states.insert(id, state);
        }
    }
    let _ = s.ws.close(None).await;
    let mut rec = build(ledger, states, reports, symbols, owner, now, account_seq);
    rec.venue_reset = venue_reset;
    Ok(rec)
}

async fn fetch_reports(s: &mut Session, after: u64) -> Result<Vec<WireExecReport>, RecoveryError> {
    let mut out = Vec::new();
    let mut since = after;
    for _ in 0..MAX_REPORT_PAGES {
        s.send(&ClientMsg::FillsSince(FillsSinceQuery {
            account_seq: since,
        }))
        .await?;
        let reply = s
            .expect("fills since", |m| match m {
                VenueMsg::FillsSince(r) => Ok(Some(r)),
                other => venue_error(&other).map_or(Ok(None), Err),
            })
            .await?;
        let more = reply.more;
        if let Some(last) = reply.reports.last() {
            since = last.account_seq;
        }
        out.extend(reply.reports);
        if !more {
            return Ok(out);
        }
    }
    Err(RecoveryError::Bound(format!(
        "more than {MAX_REPORT_PAGES} pages of reports"
    )))
}

fn build(
    ledger: &OrderLedger,
    states: BTreeMap<ClientOrderId, OrderState>,
    reports: Vec<WireExecReport>,
    symbols: &HashMap<String, MarketId>,
    owner: OwnerOf<'_>,
    now: Timestamp,
    account_seq: u64,
) -> Recovery {
    let mut scratch = ledger.clone();
    let mut out = Recovery {
        account_seq,
        ..Recovery::default()
    };
    for (id, state) in &states {
        let Some(request) = request_of(state, symbols, owner) else {
            out.unadoptable.push(id.clone());
            continue;
        };
        let event = OrderEvent {
            client_order_id: id.clone(),
            at: now,
            kind: OrderEventKind::Recovered { request },
        };
        if scratch.apply(&event).is_ok() {
            out.adopted += 1;
            out.events.push(event);
        }
    }
    for wire in reports {
        let report = wire.to_engine();
        let event = OrderEvent {
            client_order_id: report.client_order_id.clone(),
            at: report.at,
            kind: OrderEventKind::Report { report },
        };
        match scratch.apply(&event) {
            Ok(outcome) if outcome.to.is_some() => {
                out.reports += 1;
                out.events.push(event);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "missed report does not apply; skipped"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rust_decimal::Decimal;
    use vpp_engine::market::{DeliveryInterval, Product};
    use vpp_engine::order::{OrderStatus, Side, TimeInForce};
    use vpp_market_adapters::protocol::{WireExecKind, WireTif};

    fn at() -> Timestamp {
        chrono::Utc.with_ymd_and_hms(2026, 6, 1, 2, 0, 0).unwrap()
    }

    fn id(s: &str) -> ClientOrderId {
        ClientOrderId::new(s).unwrap()
    }

    fn interval() -> DeliveryInterval {
        DeliveryInterval::containing(at() + chrono::Duration::hours(1))
    }

    fn state(client: &str, status: OrderStatus) -> OrderState {
        OrderState {
            client_order_id: id(client),
            venue_order_id: format!("v-{client}"),
            market: "rt".into(),
            product: Product::Energy,
            interval: interval(),
            side: Side::Buy,
            time_in_force: WireTif::Gtc,
            expire_at: None,
            status,
            quantity_mw: Decimal::from(2),
            price_cny_per_mwh: Decimal::from(310),
            filled_mw: Decimal::ONE,
            last_account_seq: 3,
        }
    }

    fn report(seq: u64, client: &str, kind: WireExecKind) -> WireExecReport {
        WireExecReport {
            account_seq: seq,
            client_order_id: id(client),
            venue_order_id: format!("v-{client}"),
            ts: at(),
            kind,
            filled_mw: Decimal::ZERO,
            leaves_mw: Decimal::ZERO,
        }
    }

    fn known_order(ledger: &mut OrderLedger) {
        let request = OrderRequest {
            client_order_id: id("s1b1-1"),
            strategy_id: Some(StrategyId(1)),
            aggregation_id: AggregationId(1),
            market_id: MarketId(1),
            product: Product::Energy,
            interval: interval(),
            side: Side::Sell,
            quantity_mw: Decimal::ONE,
            price_cny_per_mwh: Decimal::from(400),
            time_in_force: TimeInForce::Gtc,
        };
        let created = OrderEvent {
            client_order_id: request.client_order_id.clone(),
            at: at(),
            kind: OrderEventKind::Created { request },
        };
        ledger.apply(&created).unwrap();
    }

    #[test]
    fn an_order_the_journal_lacks_is_adopted_and_every_missed_report_applied_in_order() {
        let mut ledger = OrderLedger::new();
        known_order(&mut ledger);
        let symbols = HashMap::from([("rt".to_owned(), MarketId(1))]);
        let owner = |c: &ClientOrderId| {
            c.as_str()
                .starts_with("s1b")
                .then_some((Some(StrategyId(1)), AggregationId(1)))
        };
        let fill = |fill_id| WireExecKind::PartialFill {
            fill_id,
            quantity_mw: Decimal::ONE,
            price_cny_per_mwh: Decimal::from(310),
        };
        let reports = vec![
            report(1, "s1b1-1", WireExecKind::Accepted),
            report(2, "s1b1-2", WireExecKind::Accepted),
            report(3, "s1b1-2", fill(77)),
            report(4, "zz-9", WireExecKind::Accepted),
        ];
        let states = BTreeMap::from([
            (id("s1b1-2"), state("s1b1-2", OrderStatus::PartiallyFilled)),
            (id("zz-9"), state("zz-9", OrderStatus::Accepted)),
        ]);
        let rec = build(&ledger, states, reports, &symbols, &owner, at(), 4);

        assert_eq!(rec.adopted, 1);
        assert_eq!(rec.unadoptable, vec![id("zz-9")]);
        assert_eq!(rec.reports, 3, "the unadoptable order's report is skipped");
        assert!(matches!(
            &rec.events[0].kind,
            OrderEventKind::Recovered { request } if request.client_order_id == id("s1b1-2")
                && request.quantity_mw == Decimal::from(2)
                && request.strategy_id == Some(StrategyId(1))
        ));
        for event in &rec.events {
            ledger.apply(event).unwrap();
        }
        let adopted = ledger.order(&id("s1b1-2")).unwrap();
        assert!(adopted.recovered);
        assert_eq!(adopted.status, OrderStatus::PartiallyFilled);
        assert_eq!(adopted.filled_mw, Decimal::ONE);
        assert_eq!(
            ledger.order(&id("s1b1-1")).unwrap().status,
            OrderStatus::Accepted
        );
        assert_eq!(ledger.positions().len(), 1);

        // Deterministic: the same inputs give the same events.
        let mut again = OrderLedger::new();
        known_order(&mut again);
        let states =
            BTreeMap::from([(id("s1b1-2"), state("s1b1-2", OrderStatus::PartiallyFilled))]);
        let reports = vec![
            report(1, "s1b1-1", WireExecKind::Accepted),
            report(2, "s1b1-2", WireExecKind::Accepted),
            report(3, "s1b1-2", fill(77)),
        ];
        let rec2 = build(&again, states, reports, &symbols, &owner, at(), 4);
        assert_eq!(rec2.events, rec.events);
    }
}
