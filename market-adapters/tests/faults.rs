//! Fault tests on loopback against the simulator. Each one: a resting order gets a fill, the
//! fault hits, more fills happen and a new order is asked for during the fault, then the test
//! checks that subscriptions are back, no fill was missed or doubled, and the venue received
//! every order exactly once.

mod common;

use common::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use vpp_engine::order::{Side, TimeInForce};
use vpp_market_adapters::client::{
    AdapterError, AdapterEvent, MarketItem, VenueAdapter, WsAdapter,
};
use vpp_market_adapters::protocol::ErrorCode;
use vpp_market_adapters::sim::faults::FaultSpec;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KillRestart,
    HalfOpen,
    Reset,
    SplitFrames,
    SlowHeartbeat,
    Malformed,
    SeqGaps,
}

impl Fault {
    fn reconnects(self) -> bool {
        matches!(
            self,
            Fault::KillRestart | Fault::HalfOpen | Fault::Reset | Fault::SlowHeartbeat
        )
    }
}

fn sum(fills: &[(u64, Decimal)]) -> Decimal {
    fills.iter().map(|(_, q)| *q).sum()
}

async fn run(fault: Fault) {
    let clock = clock();
    let venue = start_venue(venue_config(), clock.clone()).await;
    let (adapter, mut events, mut seen) =
        connected(&venue, adapter_config(venue.url()), clock.clone()).await;

    adapter
        .send_order(order("o1", Side::Sell, dec!(3), dec!(300)))
        .await
        .unwrap();
    wait_for(
        &mut events,
        &mut seen,
        "o1 accepted",
        is_report("o1", "accepted"),
    )
    .await;
    venue.submit_as(
        KEY_B,
        wire_order("b1", Side::Buy, dec!(1), dec!(300), TimeInForce::Ioc),
    );
    wait_for(
        &mut events,
        &mut seen,
        "first o1 fill",
        is_report("o1", "fill"),
    )
    .await;

    match fault {
        Fault::KillRestart => venue.shutdown().await,
        Fault::HalfOpen => assert!(venue.set_fault(
            KEY_A,
            FaultSpec {
                stall_now: true,
                ..FaultSpec::default()
            }
        )),
        Fault::Reset => assert!(venue.drop_connection(KEY_A)),
        Fault::SplitFrames => assert!(venue.set_fault(
            KEY_A,
            FaultSpec {
                split_frames_bytes: Some(5),
                split_pause_us: 50,
                ..FaultSpec::default()
            }
        )),
        Fault::SlowHeartbeat => assert!(venue.set_fault(
            KEY_A,
            FaultSpec {
                delay_frames_ms: 400,
                ..FaultSpec::default()
            }
        )),
        Fault::Malformed => assert!(venue.set_fault(
            KEY_A,
            FaultSpec {
                malformed_every: Some(1),
                ..FaultSpec::default()
            }
        )),
        Fault::SeqGaps => assert!(venue.set_fault(
            KEY_A,
            FaultSpec {
                skip_seq_every: Some(2),
                drop_exec_report_every: Some(2),
                ..FaultSpec::default()
            }
        )),
    }
    // A fill while the fault is on; a new order now when the session stays up, after the
    // reconcile when it does not (an order is never held across a reconnect).
    venue.submit_as(
        KEY_B,
        wire_order("b2", Side::Buy, dec!(1), dec!(300), TimeInForce::Ioc),
    );
    if !fault.reconnects() {
        adapter
            .send_order(order("o2", Side::Sell, dec!(1), dec!(305)))
            .await
            .unwrap();
    }
    if fault == Fault::KillRestart {
        venue.restart().await.unwrap();
    }
    if fault.reconnects() {
        wait_for(
            &mut events,
            &mut seen,
            "reconcile after the fault",
            is_reconciled(2),
        )
        .await;
        adapter
            .send_order(order("o2", Side::Sell, dec!(1), dec!(305)))
            .await
            .unwrap();
    }
    if !seen.events.iter().any(is_report("o2", "accepted")) {
        wait_for(
            &mut events,
            &mut seen,
            "o2 accepted",
            is_report("o2", "accepted"),
        )
        .await;
    }
    venue.submit_as(
        KEY_B,
        wire_order("b3", Side::Buy, dec!(1), dec!(300), TimeInForce::Ioc),
    );
    while sum(&seen.fills("o1")) < dec!(3) {
        wait_for(
            &mut events,
            &mut seen,
            "o1 fully filled",
            is_report("o1", "fill"),
        )
        .await;
    }
    // Market data flows again (from an update, or from the resync snapshot).
    venue.submit_as(
        KEY_B,
        wire_order("b4", Side::Buy, dec!(1), dec!(290), TimeInForce::Gtc),
    );
    wait_for(&mut events, &mut seen, "book with the new bid", |e| {
        matches!(e, AdapterEvent::MarketData(u) if matches!(&u.item, MarketItem::Book(b) if b.bids.contains(&(dec!(290), dec!(1)))))
    })
    .await;

    assert_eq!(sum(&seen.fills("o1")), dec!(3));
    assert_recovered(&venue, &seen, &["o1", "o2"]);
    let stats = adapter.stats();
    match fault {
        f if f.reconnects() => assert!(stats.sessions >= 2, "{f:?}: {stats:?}"),
        Fault::Malformed => {
            assert_eq!(stats.sessions, 1, "{stats:?}");
            assert!(stats.malformed_in > 0, "{stats:?}");
        }
        Fault::SplitFrames => assert_eq!((stats.sessions, stats.malformed_in), (1, 0), "{stats:?}"),
        Fault::SeqGaps => {
            assert_eq!(stats.sessions, 1, "{stats:?}");
            assert!(stats.market_gaps > 0 && stats.report_gaps > 0, "{stats:?}");
        }
        _ => {}
    }
    adapter.shutdown().await;
    venue.stop().await;
}

#[tokio::test]
async fn server_killed_and_restarted() {
    run(Fault::KillRestart).await;
}

#[tokio::test]
async fn server_goes_half_open() {
    run(Fault::HalfOpen).await;
}

#[tokio::test]
async fn connection_reset() {
    run(Fault::Reset).await;
}

#[tokio::test]
async fn frames_arrive_split() {
    run(Fault::SplitFrames).await;
}

#[tokio::test]
async fn heartbeat_latency_over_the_deadline() {
    run(Fault::SlowHeartbeat).await;
}

#[tokio::test]
async fn malformed_frames_leave_the_connection_up() {
    run(Fault::Malformed).await;
}

#[tokio::test]
async fn sequence_gaps_trigger_resync_and_fills_since() {
    run(Fault::SeqGaps).await;
}

#[tokio::test]
async fn reused_client_order_id_is_refused_and_never_executed_twice() {
    let clock = clock();
    let venue = start_venue(venue_config(), clock.clone()).await;
    let (adapter, mut events, mut seen) =
        connected(&venue, adapter_config(venue.url()), clock.clone()).await;
    adapter
        .send_order(order("dup", Side::Sell, dec!(1), dec!(300)))
        .await
        .unwrap();
    wait_for(
        &mut events,
        &mut seen,
        "dup accepted",
        is_report("dup", "accepted"),
    )
    .await;
    // Locally: the adapter refuses the id before it reaches the wire.
    let err = adapter
        .send_order(order("dup", Side::Sell, dec!(1), dec!(300)))
        .await
        .unwrap_err();
    assert_eq!(err, AdapterError::DuplicateClientOrderId(cid("dup")));
    adapter.shutdown().await;

    // A second adapter without the first one's memory (a daemon restarted without its
    // journal) sends the same id: the venue refuses it with a code.
    let (fresh, mut events2, mut seen2) =
        connected(&venue, adapter_config(venue.url()), clock.clone()).await;
    fresh
        .send_order(order("dup", Side::Sell, dec!(1), dec!(300)))
        .await
        .unwrap();
    wait_for(&mut events2, &mut seen2, "duplicate refused", |e| {
        matches!(e, AdapterEvent::VenueError(err) if err.code == ErrorCode::DuplicateClientOrderId)
    })
    .await;
    // The first order is still the only one: one resting ask of 1 MW.
    let replies = venue.submit_as(
        KEY_A,
        vpp_market_adapters::protocol::ClientMsg::OpenOrders(Default::default()),
    );
    let open = match &replies[0] {
        vpp_market_adapters::protocol::VenueMsg::OpenOrders(o) => o.orders.clone(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].client_order_id, cid("dup"));
    assert_eq!(venue.with_venue(|v| v.receipts(KEY_A, &cid("dup"))), 2);
    // Reconciliation of the fresh adapter reported the order it did not know.
    let unknown: Vec<_> = seen2
        .events
        .iter()
        .filter_map(|e| match e {
            AdapterEvent::Reconciled(r) => Some(r.unknown_open_orders.len()),
            _ => None,
        })
        .collect();
    assert_eq!(unknown, vec![1]);
    fresh.shutdown().await;
    venue.stop().await;
}

#[tokio::test]
async fn fills_while_disconnected_and_held_cancels_go_out_after_reconcile_but_new_orders_never() {
    let clock = clock();
    let venue = start_venue(venue_config(), clock.clone()).await;
    let mut cfg = adapter_config(venue.url());
    cfg.max_pending_orders = 1;
    let (adapter, mut events, mut seen) = connected(&venue, cfg, clock.clone()).await;
    adapter
        .send_order(order("w1", Side::Sell, dec!(4), dec!(300)))
        .await
        .unwrap();
    wait_for(
        &mut events,
        &mut seen,
        "w1 accepted",
        is_report("w1", "accepted"),
    )
    .await;

    venue.shutdown().await;
    wait_for(&mut events, &mut seen, "disconnect seen", |e| {
        matches!(
            e,
            AdapterEvent::Connection(
                vpp_market_adapters::client::ConnectionState::Disconnected { .. }
            )
        )
    })
    .await;
    for (i, id) in ["x1", "x2", "x3"].iter().enumerate() {
        let msg = wire_order(id, Side::Buy, dec!(1), dec!(300), TimeInForce::Ioc);
        venue.submit_as(KEY_B, msg);
        assert!(venue.with_venue(|v| v.fills_of(KEY_A).len()) > i);
    }
    // While disconnected: a new order is refused (it would be stale after the outage), a
    // cancel is held (bounded: the second one is refused).
    let refused = adapter
        .send_order(order("w2", Side::Sell, dec!(1), dec!(310)))
        .await
        .unwrap_err();
    assert!(matches!(refused, AdapterError::NotLive(_)), "{refused}");
    adapter.cancel(cid("w1")).await.unwrap();
    let full = adapter.cancel(cid("w1")).await.unwrap_err();
    assert!(
        matches!(full, AdapterError::BufferFull { capacity: 1, .. }),
        "{full}"
    );

    venue.restart().await.unwrap();
    wait_for(&mut events, &mut seen, "reconcile", is_reconciled(2)).await;
    wait_for(
        &mut events,
        &mut seen,
        "w1 cancelled",
        is_report("w1", "cancelled"),
    )
    .await;
    // The three fills made while disconnected were replayed before reconciliation finished.
    let reconcile_at = seen.events.iter().position(is_reconciled(2)).unwrap();
    let fills_before = seen.events[..reconcile_at]
        .iter()
        .filter(|e| is_report("w1", "fill")(e))
        .count();
    assert_eq!(fills_before, 3);
    assert_eq!(sum(&seen.fills("w1")), dec!(3));
    assert_recovered(&venue, &seen, &["w1"]);
    assert_eq!(venue.with_venue(|v| v.receipts(KEY_A, &cid("w2"))), 0);
    adapter.shutdown().await;
    venue.stop().await;
}

#[tokio::test]
async fn a_stale_report_never_revives_a_terminal_order() {
    let clock = clock();
    let venue = start_venue(venue_config(), clock.clone()).await;
    let (adapter, mut events, mut seen) =
        connected(&venue, adapter_config(venue.url()), clock.clone()).await;
    adapter
        .send_order(order("s1", Side::Sell, dec!(1), dec!(300)))
        .await
        .unwrap();
    wait_for(
        &mut events,
        &mut seen,
        "s1 accepted",
        is_report("s1", "accepted"),
    )
    .await;
    venue.submit_as(
        KEY_B,
        wire_order("k1", Side::Buy, dec!(1), dec!(300), TimeInForce::Ioc),
    );
    wait_for(&mut events, &mut seen, "s1 filled", is_report("s1", "fill")).await;
    // Force a full replay from seq 0: every earlier report arrives again.
    adapter.restore(Vec::new(), 0).await.unwrap();
    assert!(venue.drop_connection(KEY_A));
    wait_for(&mut events, &mut seen, "reconcile", is_reconciled(2)).await;
    let accepted = seen
        .events
        .iter()
        .filter(|e| is_report("s1", "accepted")(e))
        .count();
    assert_eq!(
        accepted, 1,
        "the replayed 'accepted' must not reach the reader"
    );
    assert_eq!(sum(&seen.fills("s1")), dec!(1));
    assert!(adapter.stats().stale_reports + adapter.stats().duplicate_reports > 0);
    let _: &WsAdapter = &adapter;
    adapter.shutdown().await;
    venue.stop().await;
}
