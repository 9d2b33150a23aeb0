//! A slow reader: market data is conflated (latest book per interval wins, losses counted)
//! while every exec report still arrives, in order.

mod common;

use common::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use vpp_engine::order::{ExecKind, Side, TimeInForce};
use vpp_market_adapters::client::{AdapterEvent, MarketItem, VenueAdapter};

#[tokio::test]
async fn slow_reader_gets_conflated_market_data_and_every_report() {
    let clock = clock();
    let venue = start_venue(venue_config(), clock.clone()).await;
    let (adapter, mut events, mut seen) =
        connected(&venue, adapter_config(venue.url()), clock.clone()).await;

    // Nobody reads while 200 book updates and 50 of our own orders go through.
    for i in 0..200 {
        let price = Decimal::from(100 + i);
        venue.submit_as(
            KEY_B,
            wire_order(
                &format!("bid{i}"),
                Side::Buy,
                dec!(1),
                price,
                TimeInForce::Gtc,
            ),
        );
    }
    for i in 0..50 {
        let id = format!("ask{i}");
        adapter
            .send_order(order(&id, Side::Sell, dec!(1), Decimal::from(1_000 + i)))
            .await
            .unwrap();
    }
    let guard = tokio::time::Instant::now() + GUARD;
    while adapter.stats().conflated_market_data == 0 {
        assert!(
            tokio::time::Instant::now() < guard,
            "market data was never conflated"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let best_bid = |e: &AdapterEvent| match e {
        AdapterEvent::MarketData(u) => match &u.item {
            MarketItem::Book(b) => b.bids.first().map(|l| l.0),
            _ => None,
        },
        _ => None,
    };
    wait_for(&mut events, &mut seen, "final book", |e| {
        best_bid(e) == Some(dec!(299))
    })
    .await;
    while seen
        .events
        .iter()
        .filter(|e| matches!(e, AdapterEvent::ExecReport(r) if r.kind == ExecKind::Accepted))
        .count()
        < 50
    {
        wait_for(&mut events, &mut seen, "accepted reports", |e| {
            matches!(e, AdapterEvent::ExecReport(_))
        })
        .await;
    }
    let accepted: Vec<String> = seen
        .events
        .iter()
        .filter_map(|e| match e {
            AdapterEvent::ExecReport(r) if r.kind == ExecKind::Accepted => {
                Some(r.client_order_id.to_string())
            }
            _ => None,
        })
        .collect();
    let expected: Vec<String> = (0..50).map(|i| format!("ask{i}")).collect();
    assert_eq!(accepted, expected, "every report, in order");
    let book_items = seen.events.iter().filter(|e| best_bid(e).is_some()).count();
    assert!(
        book_items < 200,
        "book updates were conflated, not queued: {book_items}"
    );
    assert!(events.conflated() > 0);
    adapter.shutdown().await;
    venue.stop().await;
}
