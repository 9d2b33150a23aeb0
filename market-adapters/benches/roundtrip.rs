//! Loopback latency through the real stack (adapter task, WebSocket, simulator, venue):
//! new order to "accepted" event, and venue restart to "reconciled", as hdrhistogram
//! percentiles. Targets: order round trip p99 <= 150 µs; reconnect p99 <= 500 ms with the
//! default backoff. Run: `cargo bench -p vpp-market-adapters --bench roundtrip`.
//!
//! Topology as deployed: the venue on its own thread and single-threaded runtime (as the
//! daemon's in-process venue), the adapter and its reader on another single-threaded runtime
//! (as the daemon's arbiter), so the only cross-thread hops are the socket's. The order round
//! trip is measured two ways in the same run, alternating in blocks: hand-over with the awaited
//! `send_order` (a command/reply round trip to the adapter task before the frame goes out) and
//! with the fire-and-forget `submit_order` the connector uses; the ratio is printed. The first
//! table row keeps the older shape (both ends on one 2-worker runtime) for comparison.

use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vpp_engine::clock::SystemClock;
use vpp_engine::ids::{AggregationId, ClientOrderId, MarketId};
use vpp_engine::market::{DeliveryInterval, Product};
use vpp_engine::order::{ExecKind, OrderRequest, Side, TimeInForce};
use vpp_market_adapters::client::{
    AdapterConfig, AdapterEvent, AdapterEvents, MarketMapping, OrderStamp, VenueAdapter, WsAdapter,
};
use vpp_market_adapters::protocol::{Channel, RateLimit};
use vpp_market_adapters::sim::server::VenueServer;
use vpp_market_adapters::sim::venue::{AccountConfig, VenueConfig};

const ORDERS: usize = 20_000;
const WARMUP: usize = 2_000;
const RECONNECTS: usize = 30;

fn report(name: &str, h: &Histogram<u64>, unit: &str) {
    println!(
        "{name}: n={} p50={} p99={} p99.9={} max={} {unit}",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}

async fn until(events: &mut AdapterEvents, pred: impl Fn(&AdapterEvent) -> bool) {
    while let Some(ev) = events.recv().await {
        if pred(&ev) {
            return;
        }
    }
    panic!("adapter stopped");
}

fn order(i: usize, interval: DeliveryInterval) -> (ClientOrderId, OrderRequest) {
    let id = ClientOrderId::new(format!("b{i}")).expect("id");
    let order = OrderRequest {
        client_order_id: id.clone(),
        strategy_id: None,
        aggregation_id: AggregationId(1),
        market_id: MarketId(2),
        product: Product::Energy,
        interval,
        side: Side::Buy,
        quantity_mw: Decimal::ONE,
        price_cny_per_mwh: Decimal::new(100, 0),
        // IOC against an empty book: accepted, then cancelled; the book stays empty.
        time_in_force: TimeInForce::Ioc,
    };
    (id, order)
}

fn venue_config() -> VenueConfig {
    VenueConfig {
        accounts: vec![AccountConfig {
            account: "bench".into(),
            api_key: "bench-key".into(),
        }],
        rate_limit: RateLimit {
            max_orders: 1_000_000,
            window_ms: 1_000,
        },
        sim_quotes: false,
        ..VenueConfig::default()
    }
}

fn adapter_config(url: String) -> AdapterConfig {
    AdapterConfig {
        url,
        api_key: "bench-key".into(),
        markets: vec![MarketMapping {
            market_id: MarketId(2),
            symbol: "yn-rt".into(),
        }],
        ..AdapterConfig::default()
    }
}

/// The deployed topology: venue thread + single-threaded adapter runtime; awaited vs
/// fire-and-forget hand-over, alternating in blocks of 500.
fn split_threads() {
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let venue_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let venue = VenueServer::start(venue_config(), Arc::new(SystemClock::new()))
                .await
                .expect("venue");
            url_tx.send(venue.url()).expect("url");
            let _ = stop_rx.await;
            venue.stop().await;
        });
    });
    let url = url_rx.recv().expect("venue url");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let (adapter, mut events) =
            WsAdapter::connect(adapter_config(url), Arc::new(SystemClock::new()));
        adapter.subscribe(Channel::Book, "yn-rt").await.expect("subscribe");
        until(&mut events, |e| matches!(e, AdapterEvent::Reconciled(_))).await;
        let interval =
            DeliveryInterval::containing(chrono::Utc::now() + chrono::Duration::hours(3));
        let new = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        let (mut awaited, mut submitted) = (new(), new());
        for i in 0..ORDERS + WARMUP {
            let (id, order) = order(i, interval);
            let fire_and_forget = (i / 500) % 2 == 1;
            let start = Instant::now();
            if fire_and_forget {
                adapter.submit_order(order, OrderStamp::default()).expect("submit");
            } else {
                adapter.send_order(order).await.expect("send");
            }
            until(&mut events, |e| matches!(e, AdapterEvent::ExecReport(r) if r.client_order_id == id && r.kind == ExecKind::Accepted)).await;
            if i >= WARMUP {
                let h = if fire_and_forget { &mut submitted } else { &mut awaited };
                let _ = h.record(start.elapsed().as_micros().max(1) as u64);
            }
        }
        report("new_order -> accepted, venue thread + 1-thread adapter, awaited send_order", &awaited, "µs");
        report("new_order -> accepted, venue thread + 1-thread adapter, submit_order", &submitted, "µs");
        let ratio = |q: f64| {
            submitted.value_at_quantile(q) as f64 / awaited.value_at_quantile(q).max(1) as f64
        };
        println!(
            "ratio submit_order / send_order: p50 {:.2}, p99 {:.2}, p99.9 {:.2}",
            ratio(0.5),
            ratio(0.99),
            ratio(0.999)
        );
        adapter.shutdown().await;
    });
    let _ = stop_tx.send(());
    let _ = venue_thread.join();
}

fn main() {
    split_threads();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cfg = VenueConfig {
            accounts: vec![AccountConfig { account: "bench".into(), api_key: "bench-key".into() }],
            rate_limit: RateLimit { max_orders: 1_000_000, window_ms: 1_000 },
            sim_quotes: false,
            ..VenueConfig::default()
        };
        let venue = VenueServer::start(cfg, Arc::new(SystemClock::new())).await.expect("venue");
        let acfg = AdapterConfig {
            url: venue.url(),
            api_key: "bench-key".into(),
            markets: vec![MarketMapping { market_id: MarketId(2), symbol: "yn-rt".into() }],
            ..AdapterConfig::default()
        };
        let (adapter, mut events) = WsAdapter::connect(acfg, Arc::new(SystemClock::new()));
        adapter.subscribe(Channel::Book, "yn-rt").await.expect("subscribe");
        until(&mut events, |e| matches!(e, AdapterEvent::Reconciled(_))).await;

        let interval = DeliveryInterval::containing(chrono::Utc::now() + chrono::Duration::hours(3));
        let mut rtt = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        for i in 0..ORDERS + WARMUP {
            let id = ClientOrderId::new(format!("b{i}")).expect("id");
            let order = OrderRequest {
                client_order_id: id.clone(),
                strategy_id: None,
                aggregation_id: AggregationId(1),
                market_id: MarketId(2),
                product: Product::Energy,
                interval,
                side: Side::Buy,
                quantity_mw: Decimal::ONE,
                price_cny_per_mwh: Decimal::new(100, 0),
                // IOC against an empty book: accepted, then cancelled; the book stays empty.
                time_in_force: TimeInForce::Ioc,
            };
            let start = Instant::now();
            adapter.send_order(order).await.expect("send");
            until(&mut events, |e| matches!(e, AdapterEvent::ExecReport(r) if r.client_order_id == id && r.kind == ExecKind::Accepted)).await;
            if i >= WARMUP {
                let _ = rtt.record(start.elapsed().as_micros().max(1) as u64);
            }
        }
        report("new_order -> accepted, one 2-worker runtime for both ends (older shape)", &rtt, "µs");

        let mut reconnect = Histogram::<u64>::new_with_bounds(1, 60_000, 3).expect("histogram");
        for session in 2..RECONNECTS as u64 + 2 {
            venue.shutdown().await;
            until(&mut events, |e| matches!(e, AdapterEvent::Connection(vpp_market_adapters::client::ConnectionState::Disconnected { .. }))).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            venue.restart().await.expect("restart");
            let back = Instant::now();
            until(&mut events, |e| matches!(e, AdapterEvent::Reconciled(r) if r.session == session)).await;
            let _ = reconnect.record(back.elapsed().as_millis().max(1) as u64);
        }
        report("venue back -> resubscribed + reconciled (default backoff)", &reconnect, "ms");
        adapter.shutdown().await;
        venue.stop().await;
    });
}
