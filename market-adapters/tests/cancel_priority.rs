//! The adapter's rate limiter holds new orders, never cancels: a cancel reduces risk, so it
//! goes out ahead of orders waiting for the rate window, unless its own order is one of them.

mod common;

use common::*;
use rust_decimal_macros::dec;
use vpp_engine::order::Side;
use vpp_market_adapters::client::{AdapterConfig, VenueAdapter};
use vpp_market_adapters::protocol::RateLimit;

#[tokio::test]
async fn cancels_jump_orders_held_by_the_rate_limit() {
    let clock = clock();
    let venue = start_venue(venue_config(), clock.clone()).await;
    let cfg = AdapterConfig {
        // Two orders per minute: the third waits far longer than this test runs.
        rate_limit: Some(RateLimit {
            max_orders: 2,
            window_ms: 60_000,
        }),
        ..adapter_config(venue.url())
    };
    let (adapter, mut events, mut seen) = connected(&venue, cfg, clock.clone()).await;
    for id in ["p1", "p2"] {
        adapter
            .send_order(order(id, Side::Sell, dec!(1), dec!(400)))
            .await
            .unwrap();
        wait_for(&mut events, &mut seen, "accepted", is_report_owned(id)).await;
    }
    // Held by the rate window: p3, then p4.
    for id in ["p3", "p4"] {
        adapter
            .send_order(order(id, Side::Sell, dec!(1), dec!(410)))
            .await
            .unwrap();
    }
    // A cancel of a held order keeps its place behind it; a cancel of a sent one goes now.
    adapter.cancel(cid("p4")).await.unwrap();
    adapter.cancel(cid("p1")).await.unwrap();
    wait_for(
        &mut events,
        &mut seen,
        "p1 cancelled ahead of the held orders",
        is_report("p1", "cancelled"),
    )
    .await;
    let receipts = |id: &str| venue.with_venue(|v| v.receipts(KEY_A, &cid(id)));
    assert_eq!(receipts("p1"), 1);
    assert_eq!(receipts("p3"), 0, "p3 is still held by the rate window");
    assert_eq!(receipts("p4"), 0, "p4 and its cancel are still held");
    assert!(
        venue.with_venue(|v| v.fills_of(KEY_A)).is_empty(),
        "nothing traded"
    );
    // The cancel of p1 did not use up the window: the venue saw exactly two new orders.
    assert_eq!(adapter.stats().orders_sent, 2);
}

fn is_report_owned(id: &str) -> impl Fn(&vpp_market_adapters::client::AdapterEvent) -> bool {
    let id = id.to_owned();
    move |e| {
        matches!(e, vpp_market_adapters::client::AdapterEvent::ExecReport(r)
            if r.client_order_id.as_str() == id && r.kind == vpp_engine::order::ExecKind::Accepted)
    }
}
