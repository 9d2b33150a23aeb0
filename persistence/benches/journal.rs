//! Order-journal throughput with group commit: events submitted through the bounded channel
//! and awaited with `flush()` (so every counted event is durably committed), on SQLite (file,
//! WAL, synchronous=FULL) and on PostgreSQL (skipped with a note when unreachable).
//!
//! Each iteration journals 50,000 events: 12,500 orders x (created, accepted, fill, fill).
//! At the end it prints events/s over all iterations and the p50/p99/p99.9 latency of one
//! batch commit (transaction begin to COMMIT returned) from an hdrhistogram.
//!
//! Run: `cargo bench -p vpp-persistence --bench journal`
//! PostgreSQL URL: env VPP_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres).

use chrono::{TimeZone, Utc};
use criterion::{Criterion, SamplingMode, Throughput};
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use sqlx::Connection;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vpp_engine::ids::{AggregationId, ClientOrderId, FillId, MarketId, StrategyId};
use vpp_engine::ledger::{OrderEvent, OrderEventKind};
use vpp_engine::market::{DeliveryInterval, Product};
use vpp_engine::order::{ExecKind, ExecReport, OrderRequest, Side, TimeInForce};
use vpp_engine::Timestamp;
use vpp_persistence::{JournalConfig, JournalWriter, Store};

const EVENTS_PER_ITER: usize = 50_000;
const ORDERS_PER_ITER: usize = EVENTS_PER_ITER / 4;

/// Commit latencies (µs) and the totals behind the events/s figure, per backend.
struct Stats {
    commit_us: Histogram<u64>,
    batches: u64,
    events: u64,
    elapsed: Duration,
}

impl Stats {
    fn new() -> Self {
        Self {
            commit_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            batches: 0,
            events: 0,
            elapsed: Duration::ZERO,
        }
    }
}

fn at(us: i64) -> Timestamp {
    Utc.timestamp_micros(1_772_352_000_000_000 + us)
        .single()
        .expect("valid time")
}

/// One iteration's events; ids and report sequences are unique per `iter`.
fn events_for(iter: u64) -> Vec<OrderEvent> {
    let interval = DeliveryInterval::containing(at(0));
    let mut events = Vec::with_capacity(EVENTS_PER_ITER);
    let mut seq = iter * 10 * EVENTS_PER_ITER as u64;
    for n in 0..ORDERS_PER_ITER {
        let id = ClientOrderId::new(format!("b{iter}-{n}")).expect("valid id");
        let price = Decimal::new(30_000 + (n % 100) as i64, 2);
        let request = OrderRequest {
            client_order_id: id.clone(),
            strategy_id: Some(StrategyId(1)),
            aggregation_id: AggregationId(1 + (n % 4) as u64),
            market_id: MarketId(1),
            product: Product::Energy,
            interval,
            side: if n % 2 == 0 { Side::Sell } else { Side::Buy },
            quantity_mw: Decimal::new(20, 1),
            price_cny_per_mwh: price,
            time_in_force: TimeInForce::Day,
        };
        let t = n as i64;
        events.push(OrderEvent {
            client_order_id: id.clone(),
            at: at(t),
            kind: OrderEventKind::Created { request },
        });
        for kind in [
            ExecKind::Accepted,
            fill(seq + 2, Decimal::new(5, 1), price),
            fill(seq + 3, Decimal::new(15, 1), price),
        ] {
            seq += 1;
            let report = ExecReport {
                seq,
                client_order_id: id.clone(),
                venue_order_id: Some(format!("v{iter}-{n}")),
                kind,
                at: at(t),
            };
            events.push(OrderEvent {
                client_order_id: id.clone(),
                at: at(t),
                kind: OrderEventKind::Report { report },
            });
        }
    }
    events
}

fn fill(id: u64, qty: Decimal, price: Decimal) -> ExecKind {
    ExecKind::Fill {
        fill_id: FillId(id),
        quantity_mw: qty,
        price_cny_per_mwh: price,
    }
}

async fn start_writer(store: &Store, stats: &Arc<Mutex<Stats>>) -> JournalWriter {
    let observer_stats = Arc::clone(stats);
    let cfg = JournalConfig {
        on_commit: Some(Arc::new(move |b: &vpp_persistence::BatchCommitted| {
            let mut s = observer_stats.lock().unwrap_or_else(|e| e.into_inner());
            let us = u64::try_from(b.commit_latency.as_micros()).unwrap_or(u64::MAX);
            s.commit_us.saturating_record(us.max(1));
            s.batches += 1;
        })),
        ..JournalConfig::default()
    };
    store
        .start_journal(cfg)
        .await
        .expect("start journal")
        .writer
}

fn bench_backend(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: &Store,
    stats: &Arc<Mutex<Stats>>,
) {
    let writer = rt.block_on(start_writer(store, stats));
    let mut iter_no = 0u64;
    let mut group = c.benchmark_group("journal_group_commit");
    group.throughput(Throughput::Elements(EVENTS_PER_ITER as u64));
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                iter_no += 1;
                let events = events_for(iter_no);
                let started = Instant::now();
                rt.block_on(async {
                    for e in events {
                        writer.submit(e).await.expect("submit");
                    }
                    writer.flush().await.expect("flush");
                });
                let took = started.elapsed();
                total += took;
                let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                s.events += EVENTS_PER_ITER as u64;
                s.elapsed += took;
            }
            total
        })
    });
    group.finish();
}

fn pg_admin_url() -> String {
    std::env::var("VPP_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let root = base[host_start..]
        .find('/')
        .map_or(base, |slash| &base[..host_start + slash]);
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// A fresh PostgreSQL database for the bench, or why there is none.
async fn pg_store(db: &str) -> Result<Store, String> {
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .map_err(|e| format!("PostgreSQL unreachable ({e})"))?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let store = Store::open(&with_database(&admin, db))
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    Ok(store)
}

async fn drop_pg(db: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

fn report(name: &str, stats: &Arc<Mutex<Stats>>) {
    let s = stats.lock().unwrap_or_else(|e| e.into_inner());
    if s.events == 0 {
        return;
    }
    let rate = s.events as f64 / s.elapsed.as_secs_f64();
    let h = &s.commit_us;
    println!(
        "{name}: {} events in {:.2} s = {:.0} events/s; {} batches (mean {:.0} events/batch); \
         batch commit latency p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        s.events,
        s.elapsed.as_secs_f64(),
        rate,
        s.batches,
        s.events as f64 / s.batches.max(1) as f64,
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();

    // VPP_BENCH_DIR puts the SQLite file elsewhere (e.g. /dev/shm to see the CPU cost alone,
    // without fsync; that figure is not durable and is labelled so).
    let dir = match std::env::var_os("VPP_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite = rt.block_on(async {
        let store = Store::open(&url).await.expect("open sqlite");
        store.migrate().await.expect("migrate sqlite");
        store
    });
    let sqlite_stats = Arc::new(Mutex::new(Stats::new()));
    bench_backend(&mut c, &rt, "sqlite_wal_full", &sqlite, &sqlite_stats);
    rt.block_on(sqlite.close());

    let pg_db = format!("vpp_bench_{}", std::process::id());
    let pg_stats = Arc::new(Mutex::new(Stats::new()));
    match rt.block_on(pg_store(&pg_db)) {
        Ok(pg) => {
            bench_backend(&mut c, &rt, "postgres", &pg, &pg_stats);
            rt.block_on(async {
                pg.close().await;
                drop_pg(&pg_db).await;
            });
        }
        Err(why) => println!("postgres: skipped: {why}"),
    }

    c.final_summary();
    println!("\n== journal group commit (each event durably committed before flush() returns) ==");
    report("sqlite (file, WAL, synchronous=FULL)", &sqlite_stats);
    report("postgres (synchronous_commit=on)", &pg_stats);
}
