//! A venue that restarts and loses its state, a graceful stop with orders queued behind the
//! rate window, and a restored adapter's first reconcile: the adapter detects the reset, ends
//! what the venue does not know, never resends, and applies the new venue session's reports.

mod common;

use common::*;
use rust_decimal_macros::dec;
use vpp_engine::ledger::{OrderEvent, OrderEventKind, OrderLedger};
use vpp_engine::order::{ExecKind, ExecReport, Side, TimeInForce};
use vpp_market_adapters::client::{AdapterEvent, OrderEnd, VenueAdapter, WsAdapter};
use vpp_market_adapters::protocol::RateLimit;

fn ended(e: &AdapterEvent) -> Option<(String, OrderEnd)> {
    match e {
        AdapterEvent::OrderEnded {
            client_order_id,
            end,
            ..
        } => Some((client_order_id.to_string(), *end)),
        _ => None,
    }
}

#[tokio::test]
async fn a_venue_reset_is_reported_its_unknown_orders_end_lost_and_new_reports_apply() {
    let clock = clock();
    let mut cfg = venue_config();
    cfg.venue_epoch = Some("e1".into());
    let venue = start_venue(cfg, clock.clone()).await;
    let (adapter, mut events, mut seen) =
        connected(&venue, adapter_config(venue.url()), clock.clone()).await;
    for id in ["r1", "r2"] {
        adapter
            .send_order(order(id, Side::Sell, dec!(2), dec!(300)))
            .await
            .unwrap();
        wait_for(&mut events, &mut seen, "accepted", |e| {
            matches!(e, AdapterEvent::ExecReport(r) if r.client_order_id.as_str() == id && r.kind == ExecKind::Accepted)
        })
        .await;
    }
    // The venue restarts and forgets everything (account_seq back to 0, new epoch).
    let epoch = venue.reset_venue();
    assert_eq!(epoch.as_deref(), Some("e1.r1"));
    wait_for(&mut events, &mut seen, "reconcile", is_reconciled(2)).await;

    let reset = seen
        .events
        .iter()
        .find_map(|e| match e {
            AdapterEvent::VenueReset(r) => Some(r.clone()),
            _ => None,
        })
        .expect("the reset is reported");
    assert_eq!(reset.previous_epoch.as_deref(), Some("e1"));
    assert_eq!(reset.epoch.as_deref(), Some("e1.r1"));
    assert_eq!((reset.previous_account_seq, reset.account_seq), (2, 0));
    let mut lost: Vec<_> = seen.events.iter().filter_map(ended).collect();
    lost.sort_by(|a, b| a.0.cmp(&b.0));
    let lost_at = |id: &str| {
        (
            id.to_owned(),
            OrderEnd::Lost {
                venue_account_seq: Some(0),
            },
        )
    };
    assert_eq!(lost, vec![lost_at("r1"), lost_at("r2")]);
    let reset_at = seen
        .events
        .iter()
        .position(|e| matches!(e, AdapterEvent::VenueReset(_)))
        .unwrap();
    let live_at = seen.events.iter().position(is_reconciled(2)).unwrap();
    assert!(reset_at < live_at, "reported before the session is live");
    // Nothing was resent to the new venue.
    for id in ["r1", "r2"] {
        assert_eq!(venue.with_venue(|v| v.receipts(KEY_A, &cid(id))), 0);
    }

    // The new venue session's reports (account_seq 1, 2, ...) are applied, not ignored.
    adapter
        .send_order(order("n1", Side::Sell, dec!(1), dec!(300)))
        .await
        .unwrap();
    wait_for(
        &mut events,
        &mut seen,
        "n1 accepted",
        is_report("n1", "accepted"),
    )
    .await;
    venue.submit_as(
        KEY_B,
        wire_order("b1", Side::Buy, dec!(1), dec!(300), TimeInForce::Ioc),
    );
    wait_for(&mut events, &mut seen, "n1 filled", is_report("n1", "fill")).await;
    adapter.shutdown().await;
    venue.stop().await;
}

#[tokio::test]
async fn a_regressing_account_seq_without_epoch_is_a_reset_too() {
    let clock = clock();
    let venue = start_venue(venue_config(), clock.clone()).await;
    let (adapter, mut events, mut seen) =
        connected(&venue, adapter_config(venue.url()), clock.clone()).await;
    adapter
        .send_order(order("q1", Side::Sell, dec!(2), dec!(300)))
        .await
        .unwrap();
    wait_for(
        &mut events,
        &mut seen,
        "q1 accepted",
        is_report("q1", "accepted"),
    )
    .await;
    venue.reset_venue();
    wait_for(
        &mut events,
        &mut seen,
        "reset",
        |e| matches!(e, AdapterEvent::VenueReset(r) if r.reason.contains("account_seq")),
    )
    .await;
    wait_for(
        &mut events,
        &mut seen,
        "q1 lost",
        |e| matches!(ended(e), Some((id, OrderEnd::Lost { .. })) if id == "q1"),
    )
    .await;
    adapter.shutdown().await;
    venue.stop().await;
}

#[tokio::test]
async fn shutdown_ends_orders_queued_behind_the_rate_window_unsent_and_sends_none_of_them() {
    let clock = clock();
    let mut cfg = venue_config();
    cfg.rate_limit = RateLimit {
        max_orders: 2,
        window_ms: 60_000,
    };
    let venue = start_venue(cfg, clock.clone()).await;
    let (adapter, mut events, mut seen) =
        connected(&venue, adapter_config(venue.url()), clock.clone()).await;
    let ids: Vec<String> = (0..50).map(|i| format!("z{i}")).collect();
    for id in &ids {
        adapter
            .send_order(order(id, Side::Sell, dec!(1), dec!(300)))
            .await
            .unwrap();
    }
    wait_for(
        &mut events,
        &mut seen,
        "z1 accepted",
        is_report("z1", "accepted"),
    )
    .await;
    let n = adapter.drop_unsent("test shutdown").await.unwrap();
    assert_eq!(n, 48);
    adapter.shutdown().await;
    while let Some(e) = events.recv().await {
        seen.events.push(e);
    }
    let unsent: Vec<_> = seen
        .events
        .iter()
        .filter_map(ended)
        .filter(|(_, end)| *end == OrderEnd::Unsent)
        .collect();
    assert_eq!(unsent.len(), 48);
    for id in &ids[2..] {
        assert_eq!(venue.with_venue(|v| v.receipts(KEY_A, &cid(id))), 0, "{id}");
    }
    venue.stop().await;
}

#[tokio::test]
async fn a_restored_adapter_reconciles_without_false_mismatches_and_ends_unsent_what_the_venue_never_got(
) {
    let clock = clock();
    let venue = start_venue(venue_config(), clock.clone()).await;
    // A first daemon life: one order accepted at the venue.
    let (first, mut events, mut seen) =
        connected(&venue, adapter_config(venue.url()), clock.clone()).await;
    first
        .send_order(order("k1", Side::Sell, dec!(2), dec!(300)))
        .await
        .unwrap();
    wait_for(
        &mut events,
        &mut seen,
        "k1 accepted",
        is_report("k1", "accepted"),
    )
    .await;
    first.shutdown().await;
    let Some(AdapterEvent::ExecReport(report)) = seen.events.last() else {
        unreachable!()
    };
    // The journal of that life: k1 accepted, k2 created and never sent.
    let mut journal = OrderLedger::new();
    for (id, report) in [("k1", Some(report.clone())), ("k2", None::<ExecReport>)] {
        let created = OrderEvent {
            client_order_id: cid(id),
            at: t0(),
            kind: OrderEventKind::Created {
                request: order(id, Side::Sell, dec!(2), dec!(300)),
            },
        };
        journal.apply(&created).unwrap();
        if let Some(report) = report {
            let ev = OrderEvent {
                client_order_id: cid(id),
                at: t0(),
                kind: OrderEventKind::Report { report },
            };
            journal.apply(&ev).unwrap();
        }
    }
    let (second, mut events) = WsAdapter::connect(adapter_config(venue.url()), clock.clone());
    let open: Vec<_> = journal.open_orders().cloned().collect();
    second
        .restore(open, journal.last_report_seq())
        .await
        .unwrap();
    let mut seen = Seen::default();
    wait_for(&mut events, &mut seen, "reconcile", is_reconciled(1)).await;
    let Some(AdapterEvent::Reconciled(rec)) = seen.events.last().cloned() else {
        unreachable!()
    };
    assert_eq!(rec.orders_checked, 2);
    assert!(rec.mismatches.is_empty(), "{:?}", rec.mismatches);
    assert_eq!((rec.orders_unsent, rec.orders_lost), (1, 0));
    assert!(seen
        .events
        .iter()
        .filter_map(ended)
        .any(|(id, end)| id == "k2" && end == OrderEnd::Unsent));
    assert!(!seen
        .events
        .iter()
        .any(|e| matches!(e, AdapterEvent::VenueReset(_))));
    assert_eq!(venue.with_venue(|v| v.receipts(KEY_A, &cid("k2"))), 0);
    assert_eq!(second.stats().orders_sent, 0, "nothing resent");
    second.shutdown().await;
    venue.stop().await;
}
