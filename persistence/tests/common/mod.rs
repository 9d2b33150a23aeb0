//! Test support: a fresh store per backend (a temp SQLite file; a new PostgreSQL database
//! per call, so tests run in parallel) and order-event fixtures.
#![allow(dead_code)]

use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use sqlx::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use vpp_engine::ids::{AggregationId, ClientOrderId, FillId, MarketId, StrategyId};
use vpp_engine::ledger::{OrderEvent, OrderEventKind};
use vpp_engine::market::{DeliveryInterval, Product};
use vpp_engine::order::{ExecKind, ExecReport, OrderRequest, Side, TimeInForce};
use vpp_engine::Timestamp;
use vpp_persistence::Store;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A migrated store plus what it takes to clean it up.
pub struct TestDb {
    pub store: Store,
    pub label: &'static str,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestDb {
    pub async fn cleanup(self) {
        self.store.close().await;
        if let Some((admin_url, name)) = self.pg {
            let mut admin = sqlx::PgConnection::connect(&admin_url)
                .await
                .expect("reconnect to drop the test database");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .expect("drop test database");
        }
    }
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("vpp.db").display());
    let store = Store::open(&url).await.expect("open sqlite");
    store.migrate().await.expect("migrate sqlite");
    TestDb {
        store,
        label: "sqlite",
        _dir: Some(dir),
        pg: None,
    }
}

pub fn postgres_admin_url() -> String {
    match std::env::var("VPP_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => panic!(
            "VPP_TEST_POSTGRES_URL is not set but CI is: PostgreSQL tests must run in CI. \
             Set it, e.g. VPP_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres"
        ),
        _ => DEFAULT_PG_URL.to_owned(),
    }
}

/// `url` with its database name replaced by `db` (query string kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let root = match base[host_start..].find('/') {
        Some(slash) => &base[..host_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn postgres() -> TestDb {
    let admin_url = postgres_admin_url();
    let name = unique_name("vpp_test");
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is unreachable: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    admin.close().await.ok();
    let store = Store::open(&with_database(&admin_url, &name))
        .await
        .expect("open postgres test database");
    store.migrate().await.expect("migrate postgres");
    TestDb {
        store,
        label: "postgres",
        _dir: None,
        pg: Some((admin_url, name)),
    }
}

/// Both backends, SQLite first.
pub async fn both() -> Vec<TestDb> {
    vec![sqlite().await, postgres().await]
}

// ------------------------------------------------------------------ fixtures

pub fn at(seconds: i64) -> Timestamp {
    Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

pub fn interval(n: i64) -> DeliveryInterval {
    DeliveryInterval::starting_at(at(0) + chrono::Duration::minutes(15 * n)).unwrap()
}

pub fn coid(s: &str) -> ClientOrderId {
    ClientOrderId::new(s).unwrap()
}

pub fn request(id: &str, side: Side, qty: Decimal, price: Decimal, slot: i64) -> OrderRequest {
    OrderRequest {
        client_order_id: coid(id),
        strategy_id: Some(StrategyId(7)),
        aggregation_id: AggregationId(1 + (slot % 2) as u64),
        market_id: MarketId(1),
        product: Product::Energy,
        interval: interval(slot % 3),
        side,
        quantity_mw: qty,
        price_cny_per_mwh: price,
        time_in_force: TimeInForce::Day,
    }
}

pub fn created(req: OrderRequest, t: i64) -> OrderEvent {
    OrderEvent {
        client_order_id: req.client_order_id.clone(),
        at: at(t),
        kind: OrderEventKind::Created { request: req },
    }
}

pub fn reported(seq: u64, id: &str, kind: ExecKind, t: i64) -> OrderEvent {
    OrderEvent {
        client_order_id: coid(id),
        at: at(t),
        kind: OrderEventKind::Report {
            report: ExecReport {
                seq,
                client_order_id: coid(id),
                venue_order_id: Some(format!("v-{id}")),
                kind,
                at: at(t),
            },
        },
    }
}

pub fn fill(fill_id: u64, qty: Decimal, price: Decimal) -> ExecKind {
    ExecKind::Fill {
        fill_id: FillId(fill_id),
        quantity_mw: qty,
        price_cny_per_mwh: price,
    }
}

/// A realistic life for `orders` orders: created, accepted, then per order one of
/// fully filled in two fills, partially filled then cancelled, or rejected. Report sequence
/// numbers start after `report_seq_base` and fill ids after `fill_id_base`.
pub fn order_lives(prefix: &str, orders: usize, report_seq_base: u64) -> Vec<OrderEvent> {
    let mut events = Vec::with_capacity(orders * 4);
    let mut rseq = report_seq_base;
    let mut next = || {
        rseq += 1;
        rseq
    };
    for i in 0..orders {
        let id = format!("{prefix}-{i}");
        let side = if i % 2 == 0 { Side::Sell } else { Side::Buy };
        let price = Decimal::new(30_000 + (i as i64 % 50), 2);
        events.push(created(
            request(&id, side, Decimal::new(20, 1), price, i as i64),
            0,
        ));
        match i % 3 {
            0 => {
                events.push(reported(next(), &id, ExecKind::Accepted, 1));
                let f1 = next();
                events.push(reported(f1, &id, fill(f1, Decimal::new(5, 1), price), 2));
                let f2 = next();
                events.push(reported(f2, &id, fill(f2, Decimal::new(15, 1), price), 3));
            }
            1 => {
                events.push(reported(next(), &id, ExecKind::Accepted, 1));
                let f1 = next();
                events.push(reported(f1, &id, fill(f1, Decimal::new(1, 1), price), 2));
                events.push(OrderEvent {
                    client_order_id: coid(&id),
                    at: at(3),
                    kind: OrderEventKind::CancelRequested {
                        reason: "test".into(),
                    },
                });
                let c = ExecKind::Cancelled {
                    reason: "by request".into(),
                };
                events.push(reported(next(), &id, c, 4));
            }
            _ => {
                let r = ExecKind::Rejected {
                    reason: "price".into(),
                };
                events.push(reported(next(), &id, r, 1));
            }
        }
    }
    events
}
