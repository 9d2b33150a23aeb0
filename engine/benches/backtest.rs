//! Backtest replay benchmarks on the bundled ENTSO-E prices:
//! - `replay/rules_30_days`: throughput in strategy events per second on one core for one
//!   simple rule strategy (real-time, evaluates every price update);
//! - `year_10_strategies`: wall time of one year of 15-minute prices with 10 strategies in one
//!   run (battery arbitrage, naive threshold, rules, threshold), timed once and printed, since
//!   a criterion sample of it would take minutes.

use chrono::NaiveDate;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Instant;
use vpp_engine::backtest::{
    load_hourly_csv, run, ApproveAll, BacktestConfig, BatterySpec, CsvFormat, NaiveThreshold,
    PriceSeries, PriceTakerClearing, StrategySetup,
};
use vpp_engine::ids::{AggregationId, StrategyId};
use vpp_engine::strategy::{ParamValue, StrategyInit, StrategyParams, StrategyRegistry};
use vpp_engine::Decimal;

fn prices() -> PriceSeries {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/data/entsoe_be_day_ahead_2022_2024.csv"
    );
    let file = std::fs::File::open(path).expect("bundled prices");
    let format = CsvFormat {
        timezone: chrono_tz::Europe::Brussels,
        currency_factor: Decimal::new(78, 1),
        max_rows: 100_000,
    };
    load_hourly_csv(std::io::BufReader::new(file), &format).expect("load")
}

fn setup(
    cfg: &BacktestConfig,
    kind: &str,
    pairs: &[(&str, &str)],
    real_time: bool,
) -> StrategySetup {
    let mut params = StrategyParams::new();
    for (k, v) in pairs {
        let value = v
            .parse::<Decimal>()
            .map(ParamValue::Number)
            .unwrap_or_else(|_| ParamValue::Text((*v).to_owned()));
        params.insert(k, value).expect("param");
    }
    let mut registry = StrategyRegistry::with_builtins();
    registry
        .register(NaiveThreshold::KIND, NaiveThreshold::construct)
        .expect("register");
    let init = StrategyInit {
        strategy_id: StrategyId(1),
        name: kind.into(),
        kind: kind.into(),
        aggregation_id: AggregationId(1),
        market: cfg.markets()[usize::from(real_time)].clone(),
        params,
    };
    StrategySetup {
        name: kind.into(),
        role: "bench".into(),
        strategy: registry.create(&init).expect("strategy"),
        battery: BatterySpec::default(),
    }
}

fn simple_rules(cfg: &BacktestConfig) -> StrategySetup {
    setup(
        cfg,
        "rules",
        &[
            ("market", "real_time"),
            (
                "rule.a",
                "when spread < -30 and soc < 80 then buy 1 MW at ref + 5",
            ),
        ],
        true,
    )
}

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("date")
}

fn bench(c: &mut Criterion) {
    let prices = prices();
    let cfg = BacktestConfig::new(day(2023, 3, 1), day(2023, 3, 30), 1);
    let events = run(
        &cfg,
        &prices,
        vec![simple_rules(&cfg)],
        &mut ApproveAll,
        &mut PriceTakerClearing,
        &mut |_, _| {},
    )
    .expect("run")
    .events;
    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events));
    group.bench_function("rules_30_days", |b| {
        b.iter(|| {
            run(
                &cfg,
                &prices,
                vec![simple_rules(&cfg)],
                &mut ApproveAll,
                &mut PriceTakerClearing,
                &mut |_, _| {},
            )
            .expect("run")
        })
    });
    group.finish();

    // VPP_BENCH_SKIP_YEAR=1 leaves the year run out (profiling the replay bench alone).
    if std::env::var_os("VPP_BENCH_SKIP_YEAR").is_some() {
        return;
    }
    let year = BacktestConfig::new(day(2023, 1, 1), day(2023, 12, 31), 1);
    let mut strategies = Vec::new();
    for i in 0..10 {
        strategies.push(match i % 4 {
            0 => setup(&year, "battery_arbitrage", &[], false),
            1 => setup(&year, "naive_threshold", &[], false),
            2 => simple_rules(&year),
            _ => setup(
                &year,
                "real_time_threshold",
                &[
                    ("sell_above_cny_per_mwh", "900"),
                    ("buy_below_cny_per_mwh", "400"),
                ],
                true,
            ),
        });
    }
    let started = Instant::now();
    let report = run(
        &year,
        &prices,
        strategies,
        &mut ApproveAll,
        &mut PriceTakerClearing,
        &mut |_, _| {},
    )
    .expect("year run");
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "year_10_strategies: {} intervals, {} strategy events in {secs:.2} s wall ({:.0} events/s)",
        report.intervals_delivered,
        report.events,
        report.events as f64 / secs
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
