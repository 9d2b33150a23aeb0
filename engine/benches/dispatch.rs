//! Disaggregating one award across 10,000 resources, for each dispatch method.
//!
//! Criterion measures the mean; an hdrhistogram over 1,000 further runs per method prints
//! p50 / p99 / p99.9 (the target is p99 <= 1 ms). The fleet is 60% PV, 20% storage and 20%
//! flexible loads with seeded random limits, so runs are comparable.
//!
//! `cargo bench -p vpp-engine --bench dispatch`

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, Criterion};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use std::hint::black_box;
use std::time::{Duration, Instant};
use vpp_engine::dispatch::{
    Award, DispatchFleet, DispatchMethod, DispatchRequest, DispatchUnitSpec, UnitState,
};
use vpp_engine::ids::{AggregationId, MarketId, ResourceId};
use vpp_engine::market::DeliveryInterval;

const RESOURCES: u64 = 10_000;
const HDR_RUNS: usize = 1_000;
const AGG: AggregationId = AggregationId(1);

fn member(id: u64, rng: &mut ChaCha8Rng) -> (DispatchUnitSpec, UnitState) {
    let rated = Decimal::from(rng.gen_range(50..=2_000));
    let ramp = Decimal::new(rng.gen_range(100..=50_000), 3);
    let cost = Decimal::from(rng.gen_range(-50..=600));
    let share = Decimal::from(rng.gen_range(50..=100));
    let fraction = Decimal::new(rng.gen_range(0..=100), 2);
    let (min, max, energy, soc) = match id % 5 {
        0 => (
            -rated,
            rated,
            Some(rated * Decimal::TWO),
            Some(rng.gen_range(5..=95)),
        ),
        1 => (-rated, Decimal::ZERO, None, None),
        _ => (Decimal::ZERO, rated, None, None),
    };
    let spec = DispatchUnitSpec {
        resource_id: ResourceId(id),
        share_pct: share,
        min_power_kw: min,
        max_power_kw: max,
        ramp_kw_per_s: ramp,
        marginal_cost_cny_per_mwh: cost,
        energy_capacity_kwh: energy,
        soc_min_pct: energy.map(|_| Decimal::from(5)),
        soc_max_pct: energy.map(|_| Decimal::from(95)),
        round_trip_efficiency: None,
    };
    let state = UnitState {
        baseline_kw: min + (max - min) * fraction,
        soc_pct: soc.map(Decimal::from),
        available: rng.gen_bool(0.97),
        ceiling_kw: None,
        floor_kw: None,
    };
    (spec, state)
}

fn fleet() -> DispatchFleet {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let members = (1..=RESOURCES).map(|id| member(id, &mut rng)).collect();
    DispatchFleet::new(AGG, members).expect("bench fleet is valid")
}

fn request(method: DispatchMethod) -> DispatchRequest {
    let start = Utc
        .with_ymd_and_hms(2026, 3, 1, 8, 0, 0)
        .single()
        .expect("valid time");
    DispatchRequest {
        award: Award {
            aggregation_id: AGG,
            market_id: MarketId(1),
            interval: DeliveryInterval::starting_at(start).expect("aligned"),
            // About a third of the fleet's up headroom: every method touches many units.
            award_mw: Decimal::from(1_500),
        },
        method,
        ramp_window_s: Decimal::from(120),
        at: start,
    }
}

const METHODS: [(&str, DispatchMethod); 3] = [
    ("pro_rata", DispatchMethod::ProRata),
    ("merit_order", DispatchMethod::MeritOrder),
    ("soc_weighted_k2", DispatchMethod::SocWeighted { k: 2.0 }),
];

fn bench_dispatch(c: &mut Criterion) {
    let mut fleet = fleet();
    let mut group = c.benchmark_group("dispatch_10k");
    for (name, method) in METHODS {
        let req = request(method);
        group.bench_function(name, |b| {
            b.iter(|| black_box(fleet.dispatch(black_box(&req)).expect("dispatch")))
        });
    }
    group.finish();
}

fn hdr_report() {
    let mut fleet = fleet();
    for (name, method) in METHODS {
        let req = request(method);
        let mut hist = Histogram::<u64>::new(3).expect("histogram");
        let mut placed = Decimal::ZERO;
        for _ in 0..HDR_RUNS {
            let started = Instant::now();
            let plan = fleet.dispatch(&req).expect("dispatch");
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            hist.record(ns).expect("record");
            placed = plan.total_delta_kw();
            black_box(plan);
        }
        println!(
            "dispatch_10k/{name}: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us \
             over {HDR_RUNS} runs (placed {placed} kW)",
            hist.value_at_quantile(0.5) as f64 / 1e3,
            hist.value_at_quantile(0.99) as f64 / 1e3,
            hist.value_at_quantile(0.999) as f64 / 1e3,
            hist.max() as f64 / 1e3,
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_dispatch
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: skip the 3,000-run histogram there.
    if std::env::args().any(|a| a == "--bench") {
        hdr_report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
