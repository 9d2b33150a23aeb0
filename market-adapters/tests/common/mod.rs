//! Shared fixtures of the loopback tests: a simulator with two accounts, an adapter with short
//! timers, order builders, and event waits (bounded by a generous guard, never asserted on).

#![allow(dead_code)]

use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Duration;
use vpp_engine::clock::ManualClock;
use vpp_engine::ids::{AggregationId, ClientOrderId, MarketId};
use vpp_engine::market::{DeliveryInterval, Product};
use vpp_engine::order::{ExecKind, OrderRequest, Side, TimeInForce};
use vpp_engine::Timestamp;
use vpp_market_adapters::client::util::BackoffConfig;
use vpp_market_adapters::client::{
    AdapterConfig, AdapterEvent, AdapterEvents, MarketMapping, VenueAdapter, WsAdapter,
};
use vpp_market_adapters::protocol::{
    tif_to_wire, Channel, ClientMsg, NewOrder, RateLimit, Subscription,
};
use vpp_market_adapters::sim::server::{VenueHandle, VenueServer};
use vpp_market_adapters::sim::venue::{AccountConfig, VenueConfig};

pub const KEY_A: &str = "key-a";
pub const KEY_B: &str = "key-b";
pub const RT: MarketId = MarketId(2);
/// Guard against a hung test; tests never assert on time.
pub const GUARD: Duration = Duration::from_secs(20);

pub fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap()
}

pub fn rt_interval() -> DeliveryInterval {
    DeliveryInterval::starting_at(t0() + chrono::Duration::hours(2)).unwrap()
}

pub fn venue_config() -> VenueConfig {
    VenueConfig {
        seed: 7,
        accounts: vec![
            AccountConfig {
                account: "alpha".into(),
                api_key: KEY_A.into(),
            },
            AccountConfig {
                account: "beta".into(),
                api_key: KEY_B.into(),
            },
        ],
        allow_fault_control: true,
        rate_limit: RateLimit {
            max_orders: 10_000,
            window_ms: 1_000,
        },
        heartbeat_interval_ms: 50,
        tick_ms: 0,
        sim_quotes: false,
        ..VenueConfig::default()
    }
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(t0()))
}

pub async fn start_venue(cfg: VenueConfig, clock: Arc<ManualClock>) -> VenueHandle {
    VenueServer::start(cfg, clock).await.expect("venue starts")
}

pub fn adapter_config(url: String) -> AdapterConfig {
    AdapterConfig {
        venue: "sim".into(),
        url,
        api_key: KEY_A.into(),
        markets: vec![
            MarketMapping {
                market_id: MarketId(1),
                symbol: "yn-da".into(),
            },
            MarketMapping {
                market_id: RT,
                symbol: "yn-rt".into(),
            },
        ],
        backoff: BackoffConfig {
            initial_ms: 10,
            max_ms: 100,
            multiplier: 2.0,
            jitter: 0.2,
            max_retries: None,
        },
        heartbeat_interval_ms: 50,
        heartbeat_timeout_ms: 300,
        request_timeout_ms: 2_000,
        ..AdapterConfig::default()
    }
}

pub fn cid(s: &str) -> ClientOrderId {
    ClientOrderId::new(s).unwrap()
}

pub fn order(id: &str, side: Side, qty: Decimal, price: Decimal) -> OrderRequest {
    OrderRequest {
        client_order_id: cid(id),
        strategy_id: None,
        aggregation_id: AggregationId(1),
        market_id: RT,
        product: Product::Energy,
        interval: rt_interval(),
        side,
        quantity_mw: qty,
        price_cny_per_mwh: price,
        time_in_force: TimeInForce::Gtc,
    }
}

/// The same order as `NewOrder` on the wire, for the counterparty account.
pub fn wire_order(
    id: &str,
    side: Side,
    qty: Decimal,
    price: Decimal,
    tif: TimeInForce,
) -> ClientMsg {
    let (time_in_force, expire_at) = tif_to_wire(tif);
    ClientMsg::NewOrder(NewOrder {
        client_order_id: cid(id),
        market: "yn-rt".into(),
        product: Product::Energy,
        interval: rt_interval(),
        side,
        quantity_mw: qty,
        price_cny_per_mwh: price,
        time_in_force,
        expire_at,
    })
}

/// Everything the test saw, for the final assertions.
#[derive(Default)]
pub struct Seen {
    pub events: Vec<AdapterEvent>,
}

impl Seen {
    /// Fills per (client order id, fill id), to prove each fill arrived exactly once.
    pub fn fills(&self, id: &str) -> Vec<(u64, Decimal)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                AdapterEvent::ExecReport(r) if r.client_order_id.as_str() == id => match &r.kind {
                    ExecKind::Fill {
                        fill_id,
                        quantity_mw,
                        ..
                    } => Some((fill_id.0, *quantity_mw)),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    pub fn reconciled(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, AdapterEvent::Reconciled(_)))
            .count()
    }
}

/// Reads events until `pred` holds for one of them.
pub async fn wait_for(
    events: &mut AdapterEvents,
    seen: &mut Seen,
    what: &str,
    pred: impl Fn(&AdapterEvent) -> bool,
) {
    let fut = async {
        while let Some(ev) = events.recv().await {
            let hit = pred(&ev);
            seen.events.push(ev);
            if hit {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(GUARD, fut).await {
        Ok(true) => {}
        Ok(false) => panic!("event stream ended while waiting for {what}"),
        Err(_) => panic!(
            "no {what} within the guard time; saw {:#?}",
            seen.events.iter().rev().take(15).collect::<Vec<_>>()
        ),
    }
}

pub fn is_report(id: &'static str, kind: &'static str) -> impl Fn(&AdapterEvent) -> bool {
    move |e| match e {
        AdapterEvent::ExecReport(r) => {
            r.client_order_id.as_str() == id && vpp_engine::order::exec_kind_name(&r.kind) == kind
        }
        _ => false,
    }
}

pub fn is_reconciled(session: u64) -> impl Fn(&AdapterEvent) -> bool {
    move |e| matches!(e, AdapterEvent::Reconciled(r) if r.session >= session)
}

/// Connects an adapter, subscribes book + prices on yn-rt, and waits for the first reconcile.
pub async fn connected(
    venue: &VenueHandle,
    cfg: AdapterConfig,
    clock: Arc<ManualClock>,
) -> (WsAdapter, AdapterEvents, Seen) {
    let (adapter, mut events) = WsAdapter::connect(cfg, clock);
    adapter.subscribe(Channel::Book, "yn-rt").await.unwrap();
    adapter.subscribe(Channel::Prices, "yn-rt").await.unwrap();
    let mut seen = Seen::default();
    wait_for(&mut events, &mut seen, "first reconcile", is_reconciled(1)).await;
    let _ = venue;
    (adapter, events, seen)
}

pub fn expected_subs() -> Vec<Subscription> {
    vec![
        Subscription {
            channel: Channel::Prices,
            market: "yn-rt".into(),
        },
        Subscription {
            channel: Channel::Book,
            market: "yn-rt".into(),
        },
    ]
}

/// The three checks after every fault: subscriptions restored, no fill missed (each fill id
/// once, summing to the venue's fills), no order received twice by the venue.
pub fn assert_recovered(venue: &VenueHandle, seen: &Seen, orders: &[&str]) {
    let mut subs = venue.subscriptions(KEY_A);
    subs.sort_by_key(|s| s.channel);
    assert_eq!(subs, expected_subs(), "subscriptions restored");
    let venue_fills = venue.with_venue(|v| v.fills_of(KEY_A));
    for id in orders {
        let ours = seen.fills(id);
        let mut ids: Vec<u64> = ours.iter().map(|(f, _)| *f).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), ours.len(), "fill delivered twice for {id}");
        let theirs: Vec<u64> = venue_fills
            .iter()
            .filter(|r| r.client_order_id.as_str() == *id)
            .filter_map(|r| match r.kind {
                vpp_market_adapters::protocol::WireExecKind::Fill { fill_id, .. }
                | vpp_market_adapters::protocol::WireExecKind::PartialFill { fill_id, .. } => {
                    Some(fill_id)
                }
                _ => None,
            })
            .collect();
        let mut theirs_sorted = theirs.clone();
        theirs_sorted.sort_unstable();
        assert_eq!(ids, theirs_sorted, "fills of {id}: adapter vs venue");
        let receipts = venue.with_venue(|v| v.receipts(KEY_A, &cid(id)));
        assert_eq!(
            receipts, 1,
            "order {id} received {receipts} times by the venue"
        );
    }
}
