//! Backtest tests: a hand-checkable run, determinism, DST day lengths, the kill rule.

use super::*;
use crate::ids::{AggregationId, StrategyId};
use crate::market::DeliveryInterval;
use crate::strategy::{ParamValue, StrategyInit, StrategyRegistry};
use chrono::{NaiveDate, TimeZone, Utc};
use std::fmt::Write as _;

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn params(pairs: &[(&str, &str)]) -> StrategyParams {
    let mut p = StrategyParams::new();
    for (k, v) in pairs {
        let value = match v.parse::<Decimal>() {
            Ok(d) => ParamValue::Number(d),
            Err(_) => ParamValue::Text((*v).to_owned()),
        };
        p.insert(k, value).unwrap();
    }
    p
}

fn setup(
    cfg: &BacktestConfig,
    name: &str,
    kind: &str,
    p: StrategyParams,
    real_time: bool,
) -> StrategySetup {
    let markets = cfg.markets();
    let market = markets[usize::from(real_time)].clone();
    let mut registry = StrategyRegistry::with_builtins();
    registry
        .register(NaiveThreshold::KIND, NaiveThreshold::construct)
        .unwrap();
    let battery = BatterySpec::from_params(&p).unwrap();
    let init = StrategyInit {
        strategy_id: StrategyId(1),
        name: name.into(),
        kind: kind.into(),
        aggregation_id: AggregationId(1),
        market,
        params: p,
    };
    StrategySetup {
        name: name.into(),
        role: "strategy".into(),
        strategy: registry.create(&init).unwrap(),
        battery,
    }
}

/// Hourly local-time CSV over whole days, as ENTSO-E writes it (02:00 twice in autumn,
/// absent in spring), with a daily price shape.
fn csv(first: NaiveDate, days: i64) -> String {
    let tz = chrono_tz::Europe::Brussels;
    let start = tz
        .from_local_datetime(&first.and_hms_opt(0, 0, 0).unwrap())
        .unwrap();
    let end = tz
        .from_local_datetime(
            &(first + chrono::Duration::days(days))
                .and_hms_opt(0, 0, 0)
                .unwrap(),
        )
        .unwrap();
    let mut out = String::from("interval_start_local,price_eur_per_mwh\n");
    let mut t = start.with_timezone(&Utc);
    let mut n = 0i64;
    while t < end.with_timezone(&Utc) {
        let local = t.with_timezone(&tz);
        let hour = i64::from(chrono::Timelike::hour(&local));
        let price = 40 + (hour - 12).abs() * 7 + (n * 37 % 23) - 10;
        let _ = writeln!(out, "{},{price}.5", local.format("%Y-%m-%dT%H:%M:%S"));
        t += chrono::Duration::hours(1);
        n += 1;
    }
    out
}

fn format() -> CsvFormat {
    CsvFormat {
        timezone: chrono_tz::Europe::Brussels,
        currency_factor: dec!(7.8),
        max_rows: 10_000,
    }
}

#[test]
fn eight_intervals_give_the_hand_computed_pnl() {
    let mut cfg = BacktestConfig::new(day(2023, 6, 1), day(2023, 6, 1), 7);
    cfg.forecast = ForecastMode::Perfect;
    let tz = cfg.timezone;
    let first = tz
        .with_ymd_and_hms(2023, 6, 1, 0, 0, 0)
        .unwrap()
        .with_timezone(&Utc);
    let mut interval = DeliveryInterval::starting_at(first).unwrap();
    let mut points = Vec::new();
    for price in [50, 50, 50, 50, 400, 400, 400, 400] {
        points.push((interval, Decimal::from(price)));
        interval = interval.next();
    }
    let prices = PriceSeries::from_intervals(points);
    let rules = params(&[
        ("market", "day_ahead"),
        ("rule.1_buy", "when forecast < 100 then buy 1 MW at market"),
        ("rule.2_sell", "when forecast > 300 then sell 1 MW at 300"),
    ]);
    let s = setup(&cfg, "rules", "rules", rules, false);
    let report = run(
        &cfg,
        &prices,
        vec![s],
        &mut ApproveAll,
        &mut PriceTakerClearing,
        &mut |_, _| {},
    )
    .unwrap();
    let r = &report.strategies[0];
    // Buys: 4 × 1 MW × 0.25 h × 50 = 50 CNY; sells: 4 × 0.25 × 400 = 400 CNY.
    assert_eq!(r.pnl_cny, dec!(350));
    assert_eq!(r.bought_mwh, dec!(1));
    assert_eq!(r.sold_mwh, dec!(1));
    assert_eq!(r.fills, 8);
    assert_eq!(r.orders, 8);
    // Cumulative P&L falls to −50 before it rises: the drawdown.
    assert_eq!(r.max_drawdown_cny, dec!(50));
    // 1 MWh discharged over 1.6 MWh usable (2 MWh × 80 %).
    assert_eq!(r.full_cycle_equivalents, dec!(0.625));
    // 0.2 + 0.9 − 1.0 = 0.1 MWh left: 5 %.
    assert_eq!(r.end_soc_pct, dec!(5));
    assert_eq!(report.intervals_delivered, 96);
    assert_eq!(report.intervals_without_price, 88);
    assert_eq!(r.days.len(), 1);
    assert_eq!(r.days[0].pnl_cny, dec!(350));
}

#[test]
fn sells_above_the_clearing_price_do_not_fill() {
    let mut cfg = BacktestConfig::new(day(2023, 6, 1), day(2023, 6, 1), 7);
    cfg.forecast = ForecastMode::Perfect;
    let first = cfg
        .timezone
        .with_ymd_and_hms(2023, 6, 1, 0, 0, 0)
        .unwrap()
        .with_timezone(&Utc);
    let i = DeliveryInterval::starting_at(first).unwrap();
    let prices = PriceSeries::from_intervals([(i, dec!(400))]);
    let rules = params(&[("rule.x", "when forecast > 300 then sell 1 MW at 401")]);
    let s = setup(&cfg, "r", "rules", rules, false);
    let report = run(
        &cfg,
        &prices,
        vec![s],
        &mut ApproveAll,
        &mut PriceTakerClearing,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.strategies[0].fills, 0);
    assert_eq!(report.strategies[0].orders, 1);
    assert_eq!(report.strategies[0].pnl_cny, Decimal::ZERO);
}

fn month_run(seed: u64) -> (String, String, String) {
    let prices = load_hourly_csv(csv(day(2023, 3, 20), 12).as_bytes(), &format()).unwrap();
    let cfg = BacktestConfig::new(day(2023, 3, 22), day(2023, 3, 30), seed);
    let strategies = vec![
        setup(&cfg, "arb", "battery_arbitrage", params(&[]), false),
        setup(&cfg, "naive", "naive_threshold", params(&[]), false),
        setup(
            &cfg,
            "rt_rules",
            "rules",
            params(&[
                ("market", "real_time"),
                ("rule.a", "when spread < -20 then buy 1 MW at ref + 10"),
                (
                    "rule.b",
                    "when spread > 20 and soc > 20 then sell 100% at market",
                ),
            ]),
            true,
        ),
        setup(
            &cfg,
            "rt_threshold",
            "real_time_threshold",
            params(&[
                ("sell_above_cny_per_mwh", "600"),
                ("buy_below_cny_per_mwh", "350"),
            ]),
            true,
        ),
    ];
    let report = run(
        &cfg,
        &prices,
        strategies,
        &mut ApproveAll,
        &mut PriceTakerClearing,
        &mut |_, _| {},
    )
    .unwrap();
    (
        report.to_json().unwrap(),
        report.intervals_csv(),
        report.summary(),
    )
}

#[test]
fn same_inputs_and_seed_give_the_same_bytes() {
    let a = month_run(11);
    let b = month_run(11);
    assert_eq!(a, b);
    assert!(a.0.contains("\"fills\""));
    // The seed moves the real-time book, so another seed changes the report.
    let c = month_run(12);
    assert_ne!(a.1, c.1);
}

#[test]
fn dst_days_are_counted_and_reported() {
    let prices = load_hourly_csv(csv(day(2023, 3, 25), 2).as_bytes(), &format()).unwrap();
    assert_eq!(prices.dst.missing_spring_hours, vec!["2023-03-26T02:00"]);
    let autumn = load_hourly_csv(csv(day(2023, 10, 28), 2).as_bytes(), &format()).unwrap();
    assert_eq!(autumn.dst.repeated_autumn_hours, vec!["2023-10-29T02:00"]);
    assert_eq!(autumn.len(), (24 + 25) * 4);

    let cfg = BacktestConfig::new(day(2023, 3, 26), day(2023, 3, 26), 1);
    let s = setup(&cfg, "arb", "battery_arbitrage", params(&[]), false);
    let report = run(
        &cfg,
        &prices,
        vec![s],
        &mut ApproveAll,
        &mut PriceTakerClearing,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.intervals_delivered, 92);
    assert_eq!(report.dst_days.len(), 1);
    assert_eq!(report.dst_days[0].intervals, 92);
    let cfg = BacktestConfig::new(day(2023, 10, 29), day(2023, 10, 29), 1);
    let s = setup(&cfg, "arb", "battery_arbitrage", params(&[]), false);
    let report = run(
        &cfg,
        &autumn,
        vec![s],
        &mut ApproveAll,
        &mut PriceTakerClearing,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.intervals_delivered, 100);
    assert!(report.summary().contains("2023-10-29 has 100 intervals"));
}

#[test]
fn a_kill_rule_stops_the_strategy_and_counts_the_signal() {
    let prices = load_hourly_csv(csv(day(2023, 6, 1), 3).as_bytes(), &format()).unwrap();
    let cfg = BacktestConfig::new(day(2023, 6, 2), day(2023, 6, 3), 3);
    let rules = params(&[
        ("market", "real_time"),
        ("rule.a_kill", "when price > 0 then kill"),
        ("rule.b_buy", "when price > 0 then buy 1 MW at market"),
    ]);
    let s = setup(&cfg, "k", "rules", rules, true);
    let report = run(
        &cfg,
        &prices,
        vec![s],
        &mut ApproveAll,
        &mut PriceTakerClearing,
        &mut |_, _| {},
    )
    .unwrap();
    let r = &report.strategies[0];
    assert_eq!(r.orders, 0);
    assert_eq!(r.strategy_errors.values().sum::<u64>(), 1);
    assert!(r.strategy_errors.keys().any(|k| k.contains("kill_switch")));
}
