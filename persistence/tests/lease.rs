//! The store lease (one writer per store, fenced by epoch) and the journal writer's behaviour
//! when the store refuses its commits, on both backends.

mod common;

use common::*;
use rust_decimal::Decimal;
use std::time::Duration;
use vpp_engine::order::Side;
use vpp_persistence::{
    Backend, JournalConfig, JournalHealth, LeaseHolder, LeaseWait, Store, StoreError,
};

fn holder(pid: u32, boot: Option<u64>) -> LeaseHolder {
    LeaseHolder {
        host: "test-host".into(),
        pid,
        boot,
    }
}

async fn second_holder_is_refused_with_the_holder_named(store: &Store, label: &str) {
    let first = store
        .acquire_lease(holder(111, None), LeaseWait::FailIfHeld)
        .await
        .expect("first lease");
    first.set_boot(42).await.expect("record boot");
    let err = store
        .acquire_lease(holder(222, None), LeaseWait::FailIfHeld)
        .await
        .expect_err("second lease must be refused");
    let text = err.to_string();
    assert!(
        matches!(err, StoreError::LeaseHeld { .. }),
        "{label}: {text}"
    );
    for part in ["test-host", "pid 111", "boot 42"] {
        assert!(text.contains(part), "{label}: {text:?} lacks {part:?}");
    }
    // A standby that waits a bounded time is refused the same way while the holder lives.
    let waited = store
        .acquire_lease(
            holder(333, None),
            LeaseWait::WaitUntilFree {
                poll: Duration::from_millis(20),
                timeout: Some(Duration::from_millis(60)),
            },
        )
        .await;
    assert!(
        matches!(waited, Err(StoreError::LeaseHeld { .. })),
        "{label}"
    );
    let epoch = first.epoch();
    first.release().await.expect("release");
    let record = store.lease_record().await.unwrap().expect("row");
    assert!(record.released, "{label}: release is recorded");
    let next = store
        .acquire_lease(holder(222, None), LeaseWait::FailIfHeld)
        .await
        .expect("free after release");
    assert_eq!(
        next.epoch(),
        epoch + 1,
        "{label}: every holder gets a new epoch"
    );
    next.release().await.unwrap();
}

#[tokio::test]
async fn a_second_holder_is_refused_naming_the_first_on_both_backends() {
    for db in both().await {
        second_holder_is_refused_with_the_holder_named(&db.store, db.label).await;
        db.cleanup().await;
    }
}

async fn stale_epoch_cannot_write(store: &Store, label: &str) {
    let lease = store
        .acquire_lease(holder(1, None), LeaseWait::FailIfHeld)
        .await
        .expect("lease");
    let cfg = JournalConfig {
        lease_epoch: Some(lease.epoch()),
        ..JournalConfig::default()
    };
    let writer = store.start_journal(cfg).await.expect("journal").writer;
    let events = order_lives("fence", 2, 0);
    writer.try_submit(events[0].clone()).unwrap();
    writer.flush().await.expect("the holder writes");
    // The lock is lost (e.g. its PostgreSQL session dropped) and another daemon takes over.
    drop(lease);
    let usurper = store
        .acquire_lease(holder(2, None), LeaseWait::FailIfHeld)
        .await
        .expect("takeover");
    writer.try_submit(events[1].clone()).unwrap();
    let err = writer
        .flush()
        .await
        .expect_err("a stale epoch must not write");
    assert!(err.to_string().contains("lease"), "{label}: {err}");
    assert!(
        matches!(writer.health(), JournalHealth::Stopped { .. }),
        "{label}: {:?}",
        writer.health()
    );
    let (_, report) = store.replay_journal().await.unwrap();
    assert_eq!(
        report.events, 1,
        "{label}: nothing written after the takeover"
    );
    assert!(
        writer.close().await.is_err(),
        "{label}: close reports the loss"
    );
    assert_eq!(writer.unjournaled(), 1);
    usurper.release().await.unwrap();
}

#[tokio::test]
async fn a_writer_with_a_stale_lease_epoch_cannot_write_on_both_backends() {
    for db in both().await {
        stale_epoch_cannot_write(&db.store, db.label).await;
        db.cleanup().await;
    }
}

async fn exec(store: &Store, sql: &str) {
    match store.backend() {
        Backend::Sqlite { writer, .. } => {
            sqlx::raw_sql(sql).execute(writer).await.expect(sql);
        }
        Backend::Postgres(pool) => {
            sqlx::raw_sql(sql).execute(pool).await.expect(sql);
        }
    }
}

async fn add_fault(store: &Store) {
    match store.backend() {
        Backend::Sqlite { .. } => {
            exec(
                store,
                "CREATE TRIGGER journal_fault BEFORE INSERT ON order_events \
                 BEGIN SELECT RAISE(ABORT, 'injected journal fault'); END;",
            )
            .await
        }
        Backend::Postgres(_) => {
            exec(
                store,
                "CREATE FUNCTION journal_fault() RETURNS trigger AS $$ BEGIN \
                 RAISE EXCEPTION 'injected journal fault'; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER journal_fault BEFORE INSERT ON order_events \
                 FOR EACH ROW EXECUTE FUNCTION journal_fault();",
            )
            .await
        }
    }
}

async fn remove_fault(store: &Store) {
    exec(store, "DROP TRIGGER journal_fault ON order_events").await;
}

async fn failing_writer_restarts_and_recovers(store: &Store, label: &str) {
    let cfg = JournalConfig {
        commit_retries: 0,
        restart_backoff_initial: Duration::from_millis(20),
        restart_backoff_max: Duration::from_millis(50),
        ..JournalConfig::default()
    };
    let writer = store.start_journal(cfg).await.expect("journal").writer;
    assert_eq!(writer.health(), JournalHealth::Healthy);
    add_fault(store).await;
    let req = request("f-1", Side::Sell, Decimal::ONE, Decimal::from(300), 0);
    let seq = writer.try_submit(created(req, 0)).unwrap();
    let err = writer
        .wait_committed(seq)
        .await
        .expect_err("the store refuses");
    assert!(
        err.to_string().contains("injected journal fault"),
        "{label}: {err}"
    );
    assert!(
        matches!(writer.health(), JournalHealth::Failing { .. }),
        "{label}: {:?}",
        writer.health()
    );
    // The supervisor keeps restarting the writer on the same batch.
    let mut status = writer.status();
    while status.restarts < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = writer.status();
    }
    match store.backend() {
        Backend::Sqlite { .. } => exec(store, "DROP TRIGGER journal_fault").await,
        Backend::Postgres(_) => remove_fault(store).await,
    }
    let mut rx_wait = 0;
    while writer.status().committed_seq < seq {
        rx_wait += 1;
        assert!(rx_wait < 1_000, "{label}: the writer never recovered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(writer.health(), JournalHealth::Healthy, "{label}");
    assert_eq!(writer.close().await.expect("clean close"), seq, "{label}");
    assert_eq!(writer.unjournaled(), 0);
    let (ledger, _) = store.replay_journal().await.unwrap();
    assert!(
        ledger.order(&coid("f-1")).is_some(),
        "{label}: written after recovery"
    );
}

#[tokio::test]
async fn a_failing_journal_writer_is_restarted_and_recovers_on_both_backends() {
    for db in both().await {
        failing_writer_restarts_and_recovers(&db.store, db.label).await;
        db.cleanup().await;
    }
}

async fn closing_while_failing_counts_the_loss(store: &Store, label: &str) {
    let cfg = JournalConfig {
        commit_retries: 0,
        restart_backoff_initial: Duration::from_millis(20),
        ..JournalConfig::default()
    };
    let writer = store.start_journal(cfg).await.expect("journal").writer;
    add_fault(store).await;
    for (i, e) in order_lives("c", 2, 0).into_iter().take(3).enumerate() {
        writer.try_submit(e).unwrap_or_else(|e| panic!("{i}: {e}"));
    }
    let err = writer
        .close()
        .await
        .expect_err("close must report the loss");
    assert!(err.to_string().contains("not journaled"), "{label}: {err}");
    assert_eq!(writer.unjournaled(), 3, "{label}");
    assert!(!writer.health().is_healthy());
}

#[tokio::test]
async fn closing_a_failing_journal_counts_every_unwritten_event_on_both_backends() {
    for db in both().await {
        closing_while_failing_counts_the_loss(&db.store, db.label).await;
        db.cleanup().await;
    }
}
