//! The order journal on both backends: group commit, projections, replay, back-pressure.

mod common;

use common::*;
use rust_decimal::Decimal;
use vpp_engine::ledger::{OrderEvent, OrderEventKind, OrderLedger};
use vpp_engine::order::{ExecKind, Order, OrderStatus, Side};
use vpp_persistence::{JournalConfig, JournalError, Store};

fn sorted_orders<'a>(orders: impl Iterator<Item = &'a Order>) -> Vec<Order> {
    let mut v: Vec<Order> = orders.cloned().collect();
    v.sort_by(|a, b| a.id().cmp(b.id()));
    v
}

/// Events including the awkward ones: a stale duplicate report, a report on a filled order
/// (illegal) and a reused client order id (refused).
fn scenario_events() -> Vec<OrderEvent> {
    let mut events = order_lives("o", 30, 0);
    events.push(reported(2, "o-0", ExecKind::Accepted, 9)); // stale: seq 2 already applied
    events.push(reported(10_000, "o-0", ExecKind::Accepted, 9)); // illegal: o-0 is filled
    events.push(created(
        request("o-1", Side::Buy, Decimal::ONE, Decimal::ONE, 0),
        9,
    )); // duplicate id
    events
}

async fn group_commit_then_replay_matches_direct_ledger(store: &Store, label: &str) {
    let events = scenario_events();
    let mut direct = OrderLedger::new();
    let mut refused = 0;
    for e in &events {
        if direct.apply(e).is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 2, "{label}: fixture has two refused events");

    let cfg = JournalConfig {
        max_batch: 7, // several batches, of uneven sizes
        ..JournalConfig::default()
    };
    let start = store.start_journal(cfg).await.expect("start journal");
    assert_eq!(start.replay.events, 0);
    let writer = start.writer;
    let mut last = 0;
    for e in &events {
        last = writer.submit(e.clone()).await.expect("submit");
    }
    assert_eq!(last, events.len() as u64, "{label}: sequences are 1..=n");
    assert_eq!(writer.flush().await.expect("flush"), last);
    assert_eq!(writer.status().committed_seq, last);
    drop(writer);
    start
        .task
        .await
        .expect("writer task ends when handles drop");

    let (replayed, report) = store.replay_journal().await.expect("replay");
    assert_eq!(report.events, events.len() as u64, "{label}");
    assert_eq!(
        report.failed, 2,
        "{label}: refused events reported: {report:?}"
    );
    assert_eq!(report.stale, 1, "{label}");
    assert_eq!(report.last_seq, last);
    assert_eq!(
        sorted_orders(replayed.orders()),
        sorted_orders(direct.orders()),
        "{label}: replayed orders"
    );
    assert_eq!(
        replayed.positions(),
        direct.positions(),
        "{label}: positions"
    );
    assert!(!replayed.positions().is_empty());

    // The projections agree with the ledger.
    let stored = store.list_orders(false).await.expect("list orders");
    assert_eq!(
        stored,
        sorted_orders(direct.orders()),
        "{label}: orders table"
    );
    let open = store.list_orders(true).await.expect("open orders");
    assert_eq!(open, sorted_orders(direct.open_orders()), "{label}");
    let positions = store.list_positions().await.expect("positions");
    let expected: Vec<_> = direct
        .positions()
        .iter()
        .map(|(k, p)| (*k, p.clone()))
        .collect();
    assert_eq!(positions, expected, "{label}: positions table");
    let fills = store.list_fills(None).await.expect("fills");
    assert_eq!(
        fills.len(),
        10 * 2 + 10,
        "{label}: 10 orders x 2 fills + 10 x 1"
    );
    let o0 = store
        .get_order(&coid("o-0"))
        .await
        .expect("get")
        .expect("o-0");
    assert_eq!(o0.status, OrderStatus::Filled);
    assert_eq!(store.list_fills(Some(&coid("o-0"))).await.unwrap().len(), 2);

    // The audit trail of one order: every transition with from/to, refusals marked.
    let trail = store.order_events(&coid("o-0")).await.expect("trail");
    let steps: Vec<_> = trail
        .iter()
        .map(|e| (e.event.as_str(), e.from, e.to, e.error.is_some()))
        .collect();
    use OrderStatus as S;
    assert_eq!(
        steps,
        vec![
            ("created", None, Some(S::New), false),
            ("accepted", Some(S::New), Some(S::Accepted), false),
            ("fill", Some(S::Accepted), Some(S::PartiallyFilled), false),
            ("fill", Some(S::PartiallyFilled), Some(S::Filled), false),
            ("accepted", Some(S::Filled), None, false),
            ("accepted", Some(S::Filled), None, true),
        ],
        "{label}"
    );
    assert_eq!(trail[0].payload, events[0]);

    // A restart continues the sequence from the stored journal, seeded with the same state.
    let again = store
        .start_journal(JournalConfig::default())
        .await
        .expect("restart journal");
    assert_eq!(
        sorted_orders(again.ledger.orders()),
        sorted_orders(direct.orders())
    );
    let more = order_lives("p", 3, 20_000);
    let mut seq = 0;
    for e in more {
        seq = again.writer.try_submit(e).expect("room in the queue");
    }
    assert_eq!(again.writer.flush().await.unwrap(), seq);
    assert!(seq > last, "{label}: sequence continues after restart");
    assert_eq!(store.last_journal_seq().await.unwrap(), seq);
    assert!(store.get_order(&coid("p-0")).await.unwrap().is_some());
}

#[tokio::test]
async fn journal_group_commit_and_replay_on_both_backends() {
    for db in both().await {
        group_commit_then_replay_matches_direct_ledger(&db.store, db.label).await;
        db.cleanup().await;
    }
}

async fn full_queue_refuses_and_hands_the_event_back(store: &Store, label: &str) {
    let cfg = JournalConfig {
        capacity: 4,
        ..JournalConfig::default()
    };
    let start = store.start_journal(cfg).await.expect("start journal");
    let writer = start.writer;
    let events = order_lives("q", 5, 0);
    // On this current-thread runtime the writer task cannot run until we await, so the
    // queue fills deterministically.
    for e in &events[..4] {
        writer.try_submit(e.clone()).expect("room for 4");
    }
    assert_eq!(writer.queued(), 4);
    match writer.try_submit(events[4].clone()) {
        Err(JournalError::Full { capacity, event }) => {
            assert_eq!(capacity, 4);
            assert_eq!(
                *event, events[4],
                "{label}: the refused event is handed back"
            );
        }
        other => panic!("{label}: expected Full, got {other:?}"),
    }
    assert_eq!(writer.flush().await.expect("flush"), 4);
    // Room again once the writer drained; `submit` waits instead of refusing.
    for e in &events[4..] {
        writer.submit(e.clone()).await.expect("submit");
    }
    let last = writer.flush().await.expect("flush");
    assert_eq!(last, events.len() as u64);
    let (ledger, report) = store.replay_journal().await.expect("replay");
    assert_eq!(
        report.events,
        events.len() as u64,
        "{label}: nothing dropped"
    );
    assert_eq!(report.failed, 0);
    assert_eq!(ledger.orders().count(), 5);
}

#[tokio::test]
async fn bounded_journal_channel_refuses_when_full_on_both_backends() {
    for db in both().await {
        full_queue_refuses_and_hands_the_event_back(&db.store, db.label).await;
        db.cleanup().await;
    }
}

async fn undecodable_rows_are_reported_not_fatal(store: &Store, label: &str) {
    let start = store.start_journal(JournalConfig::default()).await.unwrap();
    for e in order_lives("r", 2, 0) {
        start.writer.submit(e).await.unwrap();
    }
    let last = start.writer.flush().await.unwrap();
    // A foreign row that no OrderEvent decodes from (e.g. written by a newer version).
    let bad_seq = i64::try_from(last + 1).unwrap();
    let sql = "INSERT INTO order_events (seq, client_order_id, event, from_status, to_status, \
         payload_json, at_us, error) VALUES ($1, 'r-0', 'mystery', NULL, NULL, '{\"x\":1}', 0, NULL)";
    match store.backend() {
        vpp_persistence::Backend::Sqlite { writer, .. } => {
            sqlx::query(sql)
                .bind(bad_seq)
                .execute(writer)
                .await
                .unwrap();
        }
        vpp_persistence::Backend::Postgres(pool) => {
            sqlx::query(sql).bind(bad_seq).execute(pool).await.unwrap();
        }
    }
    let (ledger, report) = store.replay_journal().await.expect("replay survives");
    assert_eq!(report.failed, 1, "{label}");
    assert_eq!(report.failures[0].seq, last + 1);
    assert!(
        report.failures[0].reason.contains("undecodable"),
        "{report:?}"
    );
    assert_eq!(
        ledger.orders().count(),
        2,
        "{label}: the good events still applied"
    );
}

#[tokio::test]
async fn replay_reports_undecodable_rows_on_both_backends() {
    for db in both().await {
        undecodable_rows_are_reported_not_fatal(&db.store, db.label).await;
        db.cleanup().await;
    }
}

#[test]
fn cancel_requested_fixture_is_what_the_engine_journals() {
    // Guards the fixture itself: a cancel request names the order it cancels.
    let e = order_lives("s", 2, 0)
        .into_iter()
        .find(|e| matches!(e.kind, OrderEventKind::CancelRequested { .. }))
        .unwrap();
    assert_eq!(e.client_order_id.as_str(), "s-1");
    assert_eq!(e.name(), "cancel_requested");
}
