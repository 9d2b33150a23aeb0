//! Full pre-trade check on a loaded engine: 1,000 open orders over 96 intervals of positions,
//! storage budget, collar references and a venue window (target p99 <= 2 µs).
//!
//! Criterion measures the mean; then an hdrhistogram over 100,000 individually timed checks
//! prints p50 / p99 / p99.9 (each sample includes ~20-30 ns of `Instant` overhead).

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{black_box, criterion_group, Criterion};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

fn intents() -> Vec<vpp_engine::order::OrderRequest> {
    (0..96)
        .map(|k| common::approvable(&format!("bench-{k}"), 1 + k))
        .collect()
}

fn bench_check(c: &mut Criterion) {
    let (engine, _ledger) = common::loaded_engine();
    let intents = intents();
    let now = common::now();
    assert!(intents.iter().all(|r| engine.check(r, now).is_approved()));
    let mut i = 0usize;
    c.bench_function("pretrade/check_approve_1000_open_96_intervals", |b| {
        b.iter(|| {
            i = (i + 1) % intents.len();
            black_box(engine.check(black_box(&intents[i]), now))
        })
    });
    let dup = common::request(
        "seed-7",
        8,
        vpp_engine::order::Side::Sell,
        1.into(),
        420.into(),
    );
    c.bench_function("pretrade/check_reject_duplicate", |b| {
        b.iter(|| black_box(engine.check(black_box(&dup), now)))
    });
}

fn histogram_report() {
    let (engine, _ledger) = common::loaded_engine();
    let intents = intents();
    let now = common::now();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("histogram bounds");
    for r in intents.iter().cycle().take(10_000) {
        black_box(engine.check(r, now)); // warm-up
    }
    for r in intents.iter().cycle().take(100_000) {
        let t = Instant::now();
        let d = black_box(engine.check(black_box(r), now));
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        assert!(d.is_approved());
        hist.saturating_record(ns.max(1));
    }
    println!(
        "pretrade check (approve, 1000 open orders, 96 intervals), 100k samples: \
         p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = bench_check
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    histogram_report();
}
