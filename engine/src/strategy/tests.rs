use super::*;
use crate::aggregation::AggregatedCapacity;
use crate::ids::FillId;
use crate::market::{Market, MarketKind};
use crate::order::ExecKind;
use chrono::{NaiveDate, TimeZone, Utc};
use proptest::prelude::{prop_assert, prop_assert_eq, proptest, ProptestConfig};
use rust_decimal_macros::dec;

fn t(d: u32, h: u32, m: u32) -> Timestamp {
    Utc.with_ymd_and_hms(2026, 3, d, h, m, 0).unwrap()
}

fn market(id: u64, kind: MarketKind) -> Market {
    Market {
        id: MarketId(id),
        name: format!("m{id}"),
        kind,
        timezone: chrono_tz::Asia::Shanghai,
        price_cap_cny_per_mwh: dec!(1500),
        price_floor_cny_per_mwh: dec!(-100),
        negative_prices_allowed: true,
        gate_closure_minutes_before: 14 * 60,
    }
}

fn day_ahead() -> Market {
    market(1, MarketKind::DayAhead)
}

fn real_time() -> Market {
    market(2, MarketKind::RealTime)
}

/// 96 intervals of `day` in Shanghai (starts 16:00 UTC the day before).
fn day_intervals(day: u32) -> Vec<DeliveryInterval> {
    let start = t(day - 1, 16, 0);
    (0..96)
        .map(|i| DeliveryInterval::starting_at(start + chrono::Duration::minutes(15 * i)).unwrap())
        .collect()
}

fn ideal_params() -> BatteryParams {
    BatteryParams {
        max_order_mw: dec!(1),
        min_spread_cny_per_mwh: dec!(0),
        degradation_cost_cny_per_mwh: dec!(0),
        energy_mwh: dec!(2),
        soc_min_pct: dec!(0),
        soc_max_pct: dec!(100),
        initial_soc_pct: dec!(0),
        efficiency: dec!(1),
        power_mw: dec!(1),
    }
}

/// Base 300, cheap (100 + i) in slots 12..20, dear (600 + i) in slots 72..80.
fn two_peak_curve(day: u32) -> Vec<(DeliveryInterval, Option<Decimal>)> {
    day_intervals(day)
        .into_iter()
        .enumerate()
        .map(|(i, iv)| {
            let i_dec = Decimal::from(i as u64);
            let p = match i {
                12..20 => dec!(100) + i_dec,
                72..80 => dec!(600) + i_dec,
                _ => dec!(300),
            };
            (iv, Some(p))
        })
        .collect()
}

/// Replays the plan with the module's energy model and checks the limits at every slot.
fn replay_energy(p: &BatteryParams, plan: &ArbitragePlan) -> Vec<Decimal> {
    let mut e = plan.start_energy_mwh;
    plan.slots
        .iter()
        .map(|s| {
            if s.net_sell_mw > Decimal::ZERO {
                e -= s.net_sell_mw * dec!(0.25);
            } else {
                e += -s.net_sell_mw * dec!(0.25) * p.efficiency;
            }
            e
        })
        .collect()
}

#[test]
fn arbitrage_charges_in_the_cheapest_and_discharges_in_the_dearest_intervals() {
    let p = ideal_params();
    let plan = plan_arbitrage(&p, dec!(0), &two_peak_curve(2));
    let buys: Vec<usize> = (0..96)
        .filter(|&i| plan.slots[i].net_sell_mw < Decimal::ZERO)
        .collect();
    let sells: Vec<usize> = (0..96)
        .filter(|&i| plan.slots[i].net_sell_mw > Decimal::ZERO)
        .collect();
    assert_eq!(buys, (12..20).collect::<Vec<_>>());
    assert_eq!(sells, (72..80).collect::<Vec<_>>());
    for i in buys.iter().chain(&sells) {
        assert_eq!(plan.slots[*i].net_sell_mw.abs(), dec!(1));
    }
    assert_eq!(plan.end_energy_mwh, dec!(0));
    // 8 × 0.25 MWh each way; margins (600+j) − (100+i) summed.
    // Σ(672..=679) − Σ(112..=119) = 8 × 560 CNY/MWh, on 0.25 MWh per slot.
    assert_eq!(plan.expected_margin_cny, dec!(1120));
}

#[test]
fn arbitrage_with_losses_never_sells_energy_it_will_not_have() {
    let p = BatteryParams {
        efficiency: dec!(0.81),
        soc_min_pct: dec!(10),
        soc_max_pct: dec!(90),
        initial_soc_pct: dec!(10),
        power_mw: dec!(0.8),
        max_order_mw: dec!(0.5),
        ..ideal_params()
    };
    let plan = plan_arbitrage(&p, dec!(0.2), &two_peak_curve(2));
    let path = replay_energy(&p, &plan);
    assert!(plan.slots.iter().any(|s| s.net_sell_mw > Decimal::ZERO));
    for (slot, e) in plan.slots.iter().zip(&path) {
        assert!(*e >= p.energy_min_mwh() && *e <= p.energy_max_mwh(), "{e}");
        assert_eq!(slot.energy_after_mwh, *e);
        assert!(slot.net_sell_mw.abs() <= dec!(0.5));
    }
    let sold: Decimal = plan
        .slots
        .iter()
        .map(|s| s.net_sell_mw.max(Decimal::ZERO))
        .sum();
    let bought: Decimal = plan
        .slots
        .iter()
        .map(|s| (-s.net_sell_mw).max(Decimal::ZERO))
        .sum();
    // Started at the floor: everything sold was stored first.
    assert!(sold * dec!(0.25) <= bought * dec!(0.25) * dec!(0.81));
}

#[test]
fn arbitrage_does_not_trade_when_the_spread_is_too_small() {
    let day = day_intervals(2);
    let curve = |lo: Decimal, hi: Decimal| -> Vec<(DeliveryInterval, Option<Decimal>)> {
        day.iter()
            .enumerate()
            .map(|(i, iv)| (*iv, Some(if i < 48 { lo } else { hi })))
            .collect()
    };
    // Efficiency alone eats a 20 CNY spread at 300: 320 − 300/0.9 < 0.
    let lossy = BatteryParams {
        efficiency: dec!(0.9),
        ..ideal_params()
    };
    let plan = plan_arbitrage(&lossy, dec!(0), &curve(dec!(300), dec!(320)));
    assert!(plan.slots.iter().all(|s| s.net_sell_mw.is_zero()));
    // margin = 300 − 100/0.9 − 50 = 138.89: trades at min_spread 100, not at 150.
    let mut p = BatteryParams {
        efficiency: dec!(0.9),
        degradation_cost_cny_per_mwh: dec!(50),
        min_spread_cny_per_mwh: dec!(100),
        ..ideal_params()
    };
    let plan = plan_arbitrage(&p, dec!(0), &curve(dec!(100), dec!(300)));
    assert!(plan.slots.iter().any(|s| s.net_sell_mw > Decimal::ZERO));
    let buy = plan
        .slots
        .iter()
        .find(|s| s.net_sell_mw < Decimal::ZERO)
        .unwrap();
    // Highest buy price still earning 100: (300 − 50 − 100) × 0.9 = 135.
    assert_eq!(buy.limit_price_cny_per_mwh, Some(dec!(135)));
    let sell = plan
        .slots
        .iter()
        .find(|s| s.net_sell_mw > Decimal::ZERO)
        .unwrap();
    // Lowest sell price earning 100: 100/0.9 + 150 = 261.11.. rounded up.
    assert_eq!(sell.limit_price_cny_per_mwh, Some(dec!(261.12)));
    p.min_spread_cny_per_mwh = dec!(150);
    let plan = plan_arbitrage(&p, dec!(0), &curve(dec!(100), dec!(300)));
    assert!(plan.slots.iter().all(|s| s.net_sell_mw.is_zero()));
}

#[test]
fn arbitrage_starting_full_discharges_first() {
    let p = ideal_params();
    // Dear early, cheap late: only possible by selling stored energy first.
    let curve: Vec<_> = day_intervals(2)
        .into_iter()
        .enumerate()
        .map(|(i, iv)| (iv, Some(if i < 4 { dec!(800) } else { dec!(200) })))
        .collect();
    let plan = plan_arbitrage(&p, dec!(1), &curve);
    let sold: Decimal = plan.slots[..4].iter().map(|s| s.net_sell_mw).sum();
    assert_eq!(sold, dec!(4), "1 MWh stored, 4 slots of 0.25 MWh");
    assert!(replay_energy(&p, &plan).iter().all(|e| *e >= dec!(0)));
    let from_empty = plan_arbitrage(&p, dec!(0), &curve);
    assert!(from_empty.slots[..4]
        .iter()
        .all(|s| s.net_sell_mw.is_zero()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn plan_stays_within_soc_and_power_limits(
        prices in proptest::collection::vec(-100i64..1500, 96),
        eff_pct in 50u32..=100,
        start_pct in 0u32..=100,
        power_dmw in 1u32..30,
    ) {
        let p = BatteryParams {
            efficiency: Decimal::from(eff_pct) / dec!(100),
            soc_min_pct: dec!(15),
            soc_max_pct: dec!(85),
            initial_soc_pct: dec!(15),
            power_mw: Decimal::from(power_dmw) / dec!(10),
            max_order_mw: dec!(1.5),
            degradation_cost_cny_per_mwh: dec!(5),
            ..ideal_params()
        };
        let curve: Vec<_> = day_intervals(2).into_iter().zip(prices)
            .map(|(iv, p)| (iv, Some(Decimal::from(p)))).collect();
        let start = p.energy_mwh * Decimal::from(start_pct) / dec!(100);
        let plan = plan_arbitrage(&p, start, &curve);
        let path = replay_energy(&p, &plan);
        let in_limits = (p.energy_min_mwh()..=p.energy_max_mwh()).contains(&start);
        for (slot, e) in plan.slots.iter().zip(&path) {
            prop_assert!(slot.net_sell_mw.abs() <= p.power_mw.min(p.max_order_mw));
            if in_limits {
                prop_assert!(*e >= p.energy_min_mwh() && *e <= p.energy_max_mwh());
            } else {
                prop_assert!(slot.net_sell_mw.is_zero());
            }
            prop_assert_eq!(slot.energy_after_mwh, *e);
        }
        prop_assert!(plan.expected_margin_cny >= Decimal::ZERO);
    }
}

// ---------------------------------------------------------------- host and built-ins

fn init(kind: &str, m: Market, params: StrategyParams) -> StrategyInit {
    StrategyInit {
        strategy_id: StrategyId(7),
        name: "north-battery".into(),
        kind: kind.into(),
        aggregation_id: AggregationId(3),
        market: m,
        params,
    }
}

fn battery_params_json() -> StrategyParams {
    StrategyParams::from_json(&serde_json::json!({
        "max_order_mw": 1.0,
        "min_spread_cny_per_mwh": 20,
        "energy_mwh": 4,
        "soc_min_pct": 0,
        "soc_max_pct": 100,
        "initial_soc_pct": 50,
        "efficiency": 1,
        "power_mw": 1
    }))
    .unwrap()
}

fn battery_host() -> StrategyHost {
    let reg = StrategyRegistry::with_builtins();
    let s = reg
        .create(&init(
            "battery_arbitrage",
            day_ahead(),
            battery_params_json(),
        ))
        .unwrap();
    StrategyHost::new(s, HostConfig::new(StrategyId(7), AggregationId(3))).unwrap()
}

fn price(m: &Market, iv: DeliveryInterval, p: Decimal) -> MarketData {
    MarketData::Price {
        market: m.id,
        interval: iv,
        reference_price_cny_per_mwh: p,
        last_trade_price_cny_per_mwh: None,
        at: t(1, 0, 0),
    }
}

fn gate(day: u32) -> Timer {
    Timer::GateClosureApproaching {
        market: MarketId(1),
        trading_day: NaiveDate::from_ymd_opt(2026, 3, day).unwrap(),
    }
}

fn feed_day(host: &mut StrategyHost, day: u32) {
    for (iv, p) in two_peak_curve(day) {
        let out = host
            .on_market_data(t(1, 0, 0), &price(&day_ahead(), iv, p.unwrap()))
            .unwrap();
        assert!(out.is_empty());
    }
}

fn news(intents: &[OrderIntent]) -> Vec<OrderRequest> {
    intents
        .iter()
        .filter_map(|i| match i {
            OrderIntent::New(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn day_ahead_plan_is_emitted_once_at_gate_closure_with_deterministic_ids() {
    let mut host = battery_host();
    feed_day(&mut host, 2);
    let intents = host.on_timer(t(1, 1, 30), &gate(2)).unwrap().to_vec();
    let orders = news(&intents);
    assert_eq!(orders.len(), 16);
    let ids: Vec<String> = orders
        .iter()
        .map(|o| o.client_order_id.to_string())
        .collect();
    let expected: Vec<String> = (1..=16).map(|n| format!("s7-{n}")).collect();
    assert_eq!(ids, expected);
    let intervals = day_intervals(2);
    for o in &orders[..8] {
        assert_eq!(o.side, Side::Buy);
        assert!(intervals[12..20].contains(&o.interval));
    }
    for o in &orders[8..] {
        assert_eq!(o.side, Side::Sell);
        assert!(intervals[72..80].contains(&o.interval));
        assert_eq!(o.time_in_force, TimeInForce::Day);
    }
    assert!(orders.iter().all(|o| o.strategy_id == Some(StrategyId(7))
        && o.aggregation_id == AggregationId(3)
        && o.market_id == MarketId(1)
        && o.product == Product::Energy));
    assert_eq!(host.book().open_orders().count(), 16);
    // The same timer again (duplicate delivery) plans nothing.
    assert!(host.on_timer(t(1, 1, 31), &gate(2)).unwrap().is_empty());

    // A second host fed the same inputs emits byte-identical intents.
    let mut twin = battery_host();
    feed_day(&mut twin, 2);
    let again = twin.on_timer(t(1, 1, 30), &gate(2)).unwrap().to_vec();
    assert_eq!(
        serde_json::to_string(&again).unwrap(),
        serde_json::to_string(&intents).unwrap()
    );
}

fn report(seq: u64, id: &ClientOrderId, kind: ExecKind) -> ExecReport {
    ExecReport {
        seq,
        client_order_id: id.clone(),
        venue_order_id: Some(format!("v{seq}")),
        kind,
        at: t(1, 2, 0),
    }
}

#[test]
fn reports_and_rejections_keep_the_mirror_right() {
    let mut host = battery_host();
    feed_day(&mut host, 2);
    let orders = news(host.on_timer(t(1, 1, 30), &gate(2)).unwrap());
    let (a, b) = (&orders[0], &orders[1]);
    host.on_exec_report(
        t(1, 2, 0),
        &report(1, &a.client_order_id, ExecKind::Accepted),
        OrderStatus::Accepted,
    )
    .unwrap();
    let fill = ExecKind::Fill {
        fill_id: FillId(9),
        quantity_mw: dec!(1),
        price_cny_per_mwh: dec!(110),
    };
    host.on_exec_report(
        t(1, 2, 0),
        &report(2, &a.client_order_id, fill.clone()),
        OrderStatus::Filled,
    )
    .unwrap();
    // A duplicate fill report changes nothing.
    host.on_exec_report(
        t(1, 2, 0),
        &report(2, &a.client_order_id, fill),
        OrderStatus::Filled,
    )
    .unwrap();
    let key = PositionKey {
        aggregation_id: AggregationId(3),
        market_id: MarketId(1),
        interval: a.interval,
    };
    assert_eq!(host.book().positions()[&key].bought_mw, dec!(1));
    assert!(host.book().open_order(&a.client_order_id).is_none());
    let reject = RiskRejection {
        client_order_id: b.client_order_id.clone(),
        code: "max_order_size".into(),
        message: "too big".into(),
    };
    let withdrawn = host.on_risk_reject(t(1, 2, 0), &reject).unwrap().to_vec();
    assert!(host.book().open_order(&b.client_order_id).is_none());
    assert_eq!(host.book().open_orders().count(), 14);
    // The plan is only SoC-safe whole: the rest of the day's open orders are cancelled.
    assert_eq!(withdrawn.len(), 14);
    assert!(withdrawn
        .iter()
        .all(|i| matches!(i, OrderIntent::Cancel { .. })));
    assert!(host
        .book()
        .open_orders()
        .all(|o| o.status == OrderStatus::PendingCancel));
    // A venue reject of an order already withdrawn asks for nothing more.
    let late = report(
        3,
        &orders[2].client_order_id,
        ExecKind::Rejected { reason: "x".into() },
    );
    assert!(host
        .on_exec_report(t(1, 2, 1), &late, OrderStatus::Rejected)
        .unwrap()
        .is_empty());
}

#[test]
fn snapshot_and_restore_continue_identically() {
    let reg = StrategyRegistry::with_builtins();
    let cfg = HostConfig::new(StrategyId(7), AggregationId(3));
    let mut live = battery_host();
    feed_day(&mut live, 2);
    let first = news(live.on_timer(t(1, 1, 30), &gate(2)).unwrap());
    live.on_exec_report(
        t(1, 2, 0),
        &report(
            1,
            &first[0].client_order_id,
            ExecKind::Fill {
                fill_id: FillId(1),
                quantity_mw: dec!(0.5),
                price_cny_per_mwh: dec!(112),
            },
        ),
        OrderStatus::PartiallyFilled,
    )
    .unwrap();
    let storage = CapacityUpdate {
        aggregation_id: AggregationId(3),
        capacity: AggregatedCapacity::default(),
        storage: Some(StorageState {
            soc_pct: dec!(25),
            energy_kwh: dec!(500),
            capacity_kwh: dec!(2000),
        }),
        at: t(1, 3, 0),
    };
    live.on_capacity(t(1, 3, 0), &storage).unwrap();
    feed_day(&mut live, 3);

    let json = serde_json::to_string(&live.snapshot().unwrap()).unwrap();
    let snap: HostSnapshot = serde_json::from_str(&json).unwrap();
    let fresh = reg
        .create(&init(
            "battery_arbitrage",
            day_ahead(),
            battery_params_json(),
        ))
        .unwrap();
    let mut restored = StrategyHost::restore(fresh, cfg, &snap).unwrap();
    assert_eq!(restored.book(), live.book());
    assert_eq!(restored.next_client_seq(), 17);

    let a = live.on_timer(t(2, 1, 30), &gate(3)).unwrap().to_vec();
    let b = restored.on_timer(t(2, 1, 30), &gate(3)).unwrap().to_vec();
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert_eq!(a[0].client_order_id().as_str(), "s7-17");
    // Day 3 starts from day 2's planned end energy (0), so it charges before it sells.
    assert_eq!(news(&a)[0].side, Side::Buy);
    // Restoring the wrong kind is refused.
    let other = reg
        .create(&init(
            "real_time_threshold",
            real_time(),
            StrategyParams::new()
                .with("sell_above_cny_per_mwh", dec!(500))
                .unwrap()
                .with("buy_below_cny_per_mwh", dec!(100))
                .unwrap(),
        ))
        .unwrap();
    let err = StrategyHost::restore(
        other,
        HostConfig::new(StrategyId(7), AggregationId(3)),
        &snap,
    )
    .unwrap_err();
    assert!(matches!(err, StrategyError::Snapshot(_)));
}

/// Submits `n` orders per market-data callback; propagates the limit error when `strict`.
struct Spammer {
    n: usize,
    strict: bool,
}

impl Strategy for Spammer {
    fn kind(&self) -> &'static str {
        "spammer"
    }
    fn on_market_data(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        data: &MarketData,
    ) -> Result<(), StrategyError> {
        for _ in 0..self.n {
            let order = NewOrder {
                market_id: data.market(),
                product: Product::Energy,
                interval: data.interval(),
                side: Side::Sell,
                quantity_mw: dec!(0.1),
                price_cny_per_mwh: dec!(400),
                time_in_force: TimeInForce::Gtc,
            };
            match ctx.submit(order) {
                Ok(_) => {}
                Err(e) if self.strict => return Err(e),
                Err(_) => break,
            }
        }
        Ok(())
    }
    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError> {
        StrategySnapshot::encode("spammer", 1, &self.n)
    }
    fn restore(&mut self, s: &StrategySnapshot) -> Result<(), StrategyError> {
        self.n = s.decode("spammer", 1)?;
        Ok(())
    }
}

#[test]
fn intents_beyond_the_per_callback_limit_are_refused() {
    let mut cfg = HostConfig::new(StrategyId(1), AggregationId(1));
    cfg.max_intents_per_callback = 3;
    let md = price(&real_time(), day_intervals(2)[0], dec!(300));
    let mut lenient = StrategyHost::new(
        Box::new(Spammer {
            n: 5,
            strict: false,
        }),
        cfg.clone(),
    )
    .unwrap();
    assert_eq!(lenient.on_market_data(t(1, 0, 0), &md).unwrap().len(), 3);

    let mut strict =
        StrategyHost::new(Box::new(Spammer { n: 5, strict: true }), cfg.clone()).unwrap();
    let err = strict.on_market_data(t(1, 0, 0), &md).unwrap_err();
    assert_eq!(err, StrategyError::IntentLimit { limit: 3 });
    assert_eq!(
        strict.book().open_orders().count(),
        0,
        "a failed callback emits nothing"
    );
    // Ids handed out in the failed callback are burnt, never reused.
    let mut ok = StrategyHost::restore(
        Box::new(Spammer { n: 0, strict: true }),
        cfg.clone(),
        &strict.snapshot().unwrap(),
    )
    .unwrap();
    assert_eq!(ok.next_client_seq(), 4);
    ok.observe_client_ids([
        &ClientOrderId::new("s1-41").unwrap(),
        &ClientOrderId::new("s12-99").unwrap(),
    ]);
    assert_eq!(ok.next_client_seq(), 42);

    cfg.max_intents_per_callback = 0;
    assert!(StrategyHost::new(Box::new(Spammer { n: 1, strict: true }), cfg).is_err());
}

#[test]
fn client_id_allocator_validates_its_prefix() {
    assert!(ClientIdAllocator::new("").is_err());
    assert!(ClientIdAllocator::new("a-b").is_err());
    assert!(ClientIdAllocator::new("x".repeat(16)).is_err());
    let mut ids = ClientIdAllocator::new("x".repeat(15)).unwrap();
    ids.observe(&ClientOrderId::new(format!("{}-{}", "x".repeat(15), u64::MAX - 2)).unwrap());
    let last = ids.allocate().unwrap();
    assert!(last.as_str().len() <= crate::ids::CLIENT_ORDER_ID_MAX_LEN);
    assert!(
        ids.allocate().is_err(),
        "id space exhausted is an error, not a wrap"
    );
}

#[test]
fn registry_names_unknown_kinds_and_bad_parameters() {
    let mut reg = StrategyRegistry::with_builtins();
    let err = reg
        .create(&init("momentum", day_ahead(), StrategyParams::new()))
        .unwrap_err();
    assert!(err
        .to_string()
        .contains("battery_arbitrage, dr_responder, real_time_threshold, regulation_offer, rules"));
    let bad = StrategyParams::new().with("efficiency", dec!(1.5)).unwrap();
    let err = reg
        .create(&init("battery_arbitrage", day_ahead(), bad))
        .unwrap_err();
    assert_eq!(
        err,
        StrategyError::param("efficiency", "1.5 outside (0, 1]")
    );
    let typo = StrategyParams::new().with("max_oder_mw", dec!(1)).unwrap();
    let err = reg
        .create(&init("battery_arbitrage", day_ahead(), typo))
        .unwrap_err();
    assert!(err.to_string().contains("max_oder_mw"));
    let missing = StrategyParams::new()
        .with("sell_above_cny_per_mwh", dec!(1))
        .unwrap();
    let err = reg
        .create(&init("real_time_threshold", real_time(), missing))
        .unwrap_err();
    assert!(err.to_string().contains("buy_below_cny_per_mwh"));
    assert_eq!(
        reg.register("battery_arbitrage", BatteryArbitrage::construct),
        Err(StrategyError::DuplicateKind("battery_arbitrage".into()))
    );
    assert!(reg
        .register("Bad Kind", BatteryArbitrage::construct)
        .is_err());
    // The demo config's parameters are accepted.
    let demo = StrategyParams::from_json(
        &serde_json::json!({"max_order_mw": 1.0, "min_spread_cny_per_mwh": 80}),
    )
    .unwrap();
    assert!(reg
        .create(&init("battery_arbitrage", day_ahead(), demo))
        .is_ok());
}

fn threshold_host() -> StrategyHost {
    let params = StrategyParams::new()
        .with("sell_above_cny_per_mwh", dec!(500))
        .unwrap()
        .with("buy_below_cny_per_mwh", dec!(100))
        .unwrap()
        .with("max_order_mw", dec!(0.6))
        .unwrap()
        .with("max_position_mw", dec!(1))
        .unwrap();
    let s = StrategyRegistry::with_builtins()
        .create(&init("real_time_threshold", real_time(), params))
        .unwrap();
    StrategyHost::new(s, HostConfig::new(StrategyId(7), AggregationId(3))).unwrap()
}

fn book(iv: DeliveryInterval, bid: Decimal, ask: Decimal) -> MarketData {
    let level = |p| {
        Some(PriceLevel {
            price_cny_per_mwh: p,
            quantity_mw: dec!(5),
        })
    };
    MarketData::BookTop {
        market: MarketId(2),
        interval: iv,
        best_bid: level(bid),
        best_ask: level(ask),
        at: t(1, 10, 0),
    }
}

#[test]
fn threshold_trades_on_crossings_within_flexibility_and_position_limits() {
    let mut host = threshold_host();
    let now = t(1, 10, 0);
    let iv = DeliveryInterval::starting_at(t(1, 11, 0)).unwrap();
    // No capacity yet: no flexibility, no order even on a crossing.
    assert!(host
        .on_market_data(now, &book(iv, dec!(520), dec!(530)))
        .unwrap()
        .is_empty());
    let cap = CapacityUpdate {
        aggregation_id: AggregationId(3),
        capacity: AggregatedCapacity {
            up_flex_kw: dec!(450),
            down_flex_kw: dec!(2000),
            ..AggregatedCapacity::default()
        },
        storage: None,
        at: now,
    };
    host.on_capacity(now, &cap).unwrap();
    assert!(host
        .on_market_data(now, &book(iv, dec!(400), dec!(410)))
        .unwrap()
        .is_empty());
    let sell = news(
        host.on_market_data(now, &book(iv, dec!(520), dec!(530)))
            .unwrap(),
    );
    assert_eq!(sell.len(), 1);
    assert_eq!(
        (sell[0].side, sell[0].quantity_mw, sell[0].price_cny_per_mwh),
        (Side::Sell, dec!(0.45), dec!(520))
    );
    assert_eq!(sell[0].time_in_force, TimeInForce::Ioc);
    // Staying above is not a new crossing.
    assert!(host
        .on_market_data(now, &book(iv, dec!(540), dec!(550)))
        .unwrap()
        .is_empty());
    // Buy side: crossing below 100, capped by max_order_mw.
    let buy = news(
        host.on_market_data(now, &book(iv, dec!(80), dec!(90)))
            .unwrap(),
    );
    assert_eq!((buy[0].side, buy[0].quantity_mw), (Side::Buy, dec!(0.6)));
    // Re-crossing: the open buy of 0.6 leaves 0.4 under max_position_mw.
    assert!(host
        .on_market_data(now, &book(iv, dec!(150), dec!(160)))
        .unwrap()
        .is_empty());
    let again = news(
        host.on_market_data(now, &book(iv, dec!(60), dec!(70)))
            .unwrap(),
    );
    assert_eq!(again[0].quantity_mw, dec!(0.4));
    // A started interval is never traded.
    let past = DeliveryInterval::starting_at(t(1, 9, 45)).unwrap();
    assert!(host
        .on_market_data(now, &book(past, dec!(900), dec!(950)))
        .unwrap()
        .is_empty());
}

#[test]
fn rolling_mode_trades_the_next_interval_in_a_real_time_market() {
    let params = battery_params_json();
    let s = StrategyRegistry::with_builtins()
        .create(&init("battery_arbitrage", real_time(), params))
        .unwrap();
    let mut host = StrategyHost::new(s, HostConfig::new(StrategyId(7), AggregationId(3))).unwrap();
    let start = DeliveryInterval::starting_at(t(1, 10, 0)).unwrap();
    let mut iv = start.next();
    for i in 0..8 {
        let p = if i < 4 { dec!(150) } else { dec!(700) };
        host.on_market_data(t(1, 10, 0), &price(&real_time(), iv, p))
            .unwrap();
        iv = iv.next();
    }
    let out = news(
        host.on_timer(t(1, 10, 0), &Timer::IntervalStart { interval: start })
            .unwrap(),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].side, out[0].interval, out[0].time_in_force),
        (Side::Buy, start.next(), TimeInForce::Ioc)
    );
    // The same interval start again does not trade twice.
    assert!(host
        .on_timer(t(1, 10, 0), &Timer::IntervalStart { interval: start })
        .unwrap()
        .is_empty());
    // Gate-closure timers mean nothing to a real-time market.
    assert!(host.on_timer(t(1, 10, 1), &gate(2)).unwrap().is_empty());
}

#[test]
fn timer_schedule_fires_each_timer_once_in_order() {
    let markets = [day_ahead(), real_time()];
    let lead = chrono::Duration::minutes(30);
    let mut out = Vec::new();
    // Shanghai gate for 2026-03-02 closes 2026-03-01T02:00Z; fires at 01:30Z.
    let mut at = t(1, 0, 0);
    while at < t(2, 0, 0) {
        let until = (at + chrono::Duration::hours(5)).min(t(2, 0, 0));
        at = timers_due(&markets, lead, at, until, &mut out);
    }
    let starts = out
        .iter()
        .filter(|x| matches!(x, Timer::IntervalStart { .. }))
        .count();
    assert_eq!(starts, 96);
    let gates: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, x)| matches!(x, Timer::GateClosureApproaching { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(gates.len(), 1);
    assert_eq!(out[gates[0]], gate(2));
    // 00:15, 00:30, ..., 01:30 interval starts come first, then the gate at 01:30.
    assert_eq!(gates[0], 6);
    let mut capped = Vec::new();
    let end = timers_due(&markets, lead, t(1, 0, 0), t(9, 0, 0), &mut capped);
    assert_eq!(end, t(3, 0, 0));
    assert!(timers_due(&markets, lead, t(2, 0, 0), t(2, 0, 0), &mut capped) == t(2, 0, 0));
}

#[test]
fn market_data_keys_conflate_by_market_interval_and_kind() {
    let iv = day_intervals(2)[0];
    let a = price(&day_ahead(), iv, dec!(1));
    let b = price(&day_ahead(), iv, dec!(2));
    assert_eq!(a.key(), b.key());
    assert_ne!(a.key(), book(iv, dec!(1), dec!(2)).key());
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(serde_json::from_str::<MarketData>(&json).unwrap(), a);
}

#[test]
fn robust_day_ahead_plan_from_an_empty_battery_only_stores_energy() {
    let p = BatteryParams {
        energy_mwh: dec!(2),
        ..ideal_params()
    };
    let curve = two_peak_curve(2);
    // The pairing planner sells in the evening what it buys at night: if those buys miss the
    // auction while the sells clear, the battery is asked for 2 MWh it does not hold.
    let paired = plan_arbitrage(&p, dec!(0), &curve);
    assert_eq!(
        paired
            .slots
            .iter()
            .filter(|s| s.net_sell_mw > Decimal::ZERO)
            .count(),
        8
    );
    let robust = plan_arbitrage_robust(&p, dec!(0), &curve);
    let sells = robust
        .slots
        .iter()
        .filter(|s| s.net_sell_mw > Decimal::ZERO)
        .count();
    assert_eq!(sells, 0, "nothing is held, so nothing may be sold");
    let buys: Vec<usize> = (0..96)
        .filter(|&i| robust.slots[i].net_sell_mw < Decimal::ZERO)
        .collect();
    // V = mean forecast = (80 × 300 + Σ112..=119 + Σ672..=679) / 96 = 30328 / 96 ≈ 315.9167;
    // the 8 cheapest slots fill the 2 MWh of headroom at 1 MW; the bid limit is V rounded down.
    assert_eq!(buys, (12..20).collect::<Vec<_>>());
    for i in &buys {
        assert_eq!(robust.slots[*i].net_sell_mw, dec!(-1));
        assert_eq!(robust.slots[*i].limit_price_cny_per_mwh, Some(dec!(315.91)));
    }
    assert_eq!(robust.end_energy_mwh, dec!(2));
    // Starting full, it sells the 8 dearest slots (limit V rounded up) and stores nothing.
    let full = plan_arbitrage_robust(&p, dec!(2), &curve);
    let sells: Vec<usize> = (0..96)
        .filter(|&i| full.slots[i].net_sell_mw > Decimal::ZERO)
        .collect();
    assert_eq!(sells, (72..80).collect::<Vec<_>>());
    assert!(sells
        .iter()
        .all(|i| full.slots[*i].limit_price_cny_per_mwh == Some(dec!(315.92))));
    assert!(full.slots.iter().all(|s| s.net_sell_mw >= Decimal::ZERO));
}

#[test]
fn the_next_day_plans_from_cleared_positions_not_from_the_previous_plan() {
    let mut host = battery_host();
    feed_day(&mut host, 2);
    // 4 MWh battery at 50 %: 2 MWh held, 2 MWh of headroom: 8 buys, 8 sells.
    let orders = news(host.on_timer(t(1, 1, 30), &gate(2)).unwrap());
    assert_eq!(orders.len(), 16);
    let mut seq = 0;
    for o in &orders {
        seq += 1;
        host.on_exec_report(
            t(1, 2, 0),
            &report(seq, &o.client_order_id, ExecKind::Accepted),
            OrderStatus::Accepted,
        )
        .unwrap();
        seq += 1;
        // The sells clear, every buy misses the auction.
        let (kind, status) = if o.side == Side::Sell {
            let fill = ExecKind::Fill {
                fill_id: FillId(seq),
                quantity_mw: o.quantity_mw,
                price_cny_per_mwh: dec!(700),
            };
            (fill, OrderStatus::Filled)
        } else {
            (ExecKind::Expired, OrderStatus::Expired)
        };
        host.on_exec_report(t(1, 2, 0), &report(seq, &o.client_order_id, kind), status)
            .unwrap();
    }
    // Next gate, before day 2 is delivered: 2 MWh held − 8 × 1 MW × 0.25 h sold = 0 MWh
    // (the previous plan expected 2). So day 3 may store energy but sell none.
    feed_day(&mut host, 3);
    let day3 = news(host.on_timer(t(2, 1, 30), &gate(3)).unwrap());
    assert_eq!(day3.len(), 8);
    assert!(day3.iter().all(|o| o.side == Side::Buy));
    let intervals = day_intervals(3);
    assert!(day3.iter().all(|o| intervals[12..20].contains(&o.interval)));
}

// ---------------------------------------------------------------- regulation and DR

fn capacity(up_kw: Decimal, down_kw: Decimal) -> CapacityUpdate {
    CapacityUpdate {
        aggregation_id: AggregationId(3),
        capacity: AggregatedCapacity {
            up_flex_kw: up_kw,
            down_flex_kw: down_kw,
            energy_kwh: dec!(0),
            charge_headroom_kwh: dec!(0),
            available_resources: 1,
        },
        storage: None,
        at: t(1, 0, 0),
    }
}

fn host_of(kind: &str, m: Market, params: serde_json::Value) -> StrategyHost {
    let reg = StrategyRegistry::with_builtins();
    let s = reg
        .create(&init(kind, m, StrategyParams::from_json(&params).unwrap()))
        .unwrap();
    StrategyHost::new(s, HostConfig::new(StrategyId(7), AggregationId(3))).unwrap()
}

fn interval_at(h: u32, m: u32) -> DeliveryInterval {
    DeliveryInterval::containing(t(2, h, m))
}

#[test]
fn regulation_offer_offers_the_held_back_headroom_before_the_gate() {
    let reg_market = market(4, MarketKind::Regulation);
    let params = serde_json::json!({
        "reserve_pct": 40, "max_offer_mw": 1, "min_price_cny_per_mw": 30,
        "undercut_pct": 10, "lead_intervals": 8
    });
    let mut host = host_of("regulation_offer", reg_market.clone(), params);
    let start = |iv: DeliveryInterval| Timer::IntervalStart { interval: iv };
    // No capacity yet: no headroom, no offer.
    assert!(host
        .on_timer(t(2, 10, 0), &start(interval_at(10, 0)))
        .unwrap()
        .is_empty());
    // min(4 MW up, 2 MW down) × 40 % = 0.8 MW, under the 1 MW cap; no clearing yet: 30.
    host.on_capacity(t(2, 10, 1), &capacity(dec!(4000), dec!(2000)))
        .unwrap();
    let o = news(
        host.on_timer(t(2, 10, 15), &start(interval_at(10, 15)))
            .unwrap(),
    );
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].interval, interval_at(12, 15));
    assert_eq!(o[0].side, Side::Sell);
    assert_eq!(o[0].product, Product::RegulationCapacity);
    assert_eq!(o[0].time_in_force, TimeInForce::Day);
    assert_eq!(o[0].quantity_mw, dec!(0.8));
    assert_eq!(o[0].price_cny_per_mwh, dec!(30));
    // A clearing at 48.28 CNY/MW: the next offer undercuts it by 10 % = 43.452 → 43.45.
    let result = MarketData::AncillaryResult {
        market: reg_market.id,
        interval: interval_at(10, 15),
        capacity_price_cny_per_mw: Some(dec!(48.28)),
        mileage_price_cny_per_mw: dec!(12),
        volume_mw: dec!(50),
        at: t(2, 10, 16),
    };
    host.on_market_data(t(2, 10, 16), &result).unwrap();
    // Bigger flexibility now: min(5, 5) × 40 % = 2 MW, capped at 1 MW.
    host.on_capacity(t(2, 10, 20), &capacity(dec!(5000), dec!(5000)))
        .unwrap();
    let o = news(
        host.on_timer(t(2, 10, 30), &start(interval_at(10, 30)))
            .unwrap(),
    );
    assert_eq!(o.len(), 1);
    assert_eq!(
        (o[0].quantity_mw, o[0].price_cny_per_mwh),
        (dec!(1), dec!(43.45))
    );
    // The same timer again offers nothing more for that interval.
    assert!(host
        .on_timer(t(2, 10, 31), &start(interval_at(10, 30)))
        .unwrap()
        .is_empty());
    // Past the 60-minute gate of the target interval (lead 8 → 2 h ahead, late timer): none.
    assert!(host
        .on_timer(t(2, 11, 50), &start(interval_at(10, 45)))
        .unwrap()
        .is_empty());
    // A day-ahead market is refused by name.
    let err = StrategyRegistry::with_builtins()
        .create(&init(
            "regulation_offer",
            day_ahead(),
            StrategyParams::from_json(&serde_json::json!({})).unwrap(),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("regulation market"), "{err}");
}

fn invitation(event_id: u64, price: Decimal, respond_by: Timestamp) -> MarketData {
    MarketData::DrInvitation {
        market: MarketId(5),
        interval: interval_at(12, 0),
        event_id,
        price_cny_per_mwh: price,
        target_mw: dec!(20),
        respond_by,
        awarded_mw: None,
        at: t(2, 10, 0),
    }
}

#[test]
fn dr_responder_accepts_only_invitations_that_beat_the_opportunity_cost() {
    let dr = market(5, MarketKind::DemandResponse);
    let params = serde_json::json!({
        "opportunity_cost_cny_per_mwh": 500, "min_margin_cny_per_mwh": 50, "max_mw": 5
    });
    let mut host = host_of("dr_responder", dr, params);
    host.on_capacity(t(2, 9, 0), &capacity(dec!(3000), dec!(0)))
        .unwrap();
    // 540 − 500 = 40 < 50 margin: declined.
    assert!(host
        .on_market_data(t(2, 10, 0), &invitation(1, dec!(540), t(2, 11, 0)))
        .unwrap()
        .is_empty());
    // 612.87 − 500 ≥ 50: min(target 20, max 5, up flex 3) = 3 MW asking 500 + 50 = 550.
    let o = news(
        host.on_market_data(t(2, 10, 0), &invitation(2, dec!(612.87), t(2, 11, 0)))
            .unwrap(),
    );
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].side, Side::Sell);
    assert_eq!(o[0].product, Product::DemandResponse);
    assert_eq!(
        (o[0].quantity_mw, o[0].price_cny_per_mwh),
        (dec!(3), dec!(550))
    );
    assert_eq!(o[0].interval, interval_at(12, 0));
    // The same invitation again (a snapshot resend): answered once only.
    assert!(host
        .on_market_data(t(2, 10, 5), &invitation(2, dec!(612.87), t(2, 11, 0)))
        .unwrap()
        .is_empty());
    // After respond_by: too late.
    assert!(host
        .on_market_data(t(2, 11, 0), &invitation(3, dec!(900), t(2, 11, 0)))
        .unwrap()
        .is_empty());
    // The cost parameter is required, and named.
    let err = StrategyRegistry::with_builtins()
        .create(&init(
            "dr_responder",
            market(5, MarketKind::DemandResponse),
            StrategyParams::from_json(&serde_json::json!({})).unwrap(),
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("opportunity_cost_cny_per_mwh"),
        "{err}"
    );
}

#[test]
fn positions_past_the_bound_drop_the_oldest_intervals_to_ninety_percent() {
    let mut host = battery_host();
    let first = DeliveryInterval::containing(t(1, 0, 0));
    let mut interval = first;
    let mut last = first;
    for _ in 0..=MAX_POSITIONS {
        last = interval;
        let key = PositionKey {
            aggregation_id: AggregationId(3),
            market_id: MarketId(1),
            interval,
        };
        host.adopt_position(key, crate::position::Position::default());
        interval = interval.next();
    }
    // 10,001 > 10,000: the 1,001 oldest intervals go, 9,000 stay, the newest among them.
    let kept: Vec<DeliveryInterval> = host.book().positions().keys().map(|k| k.interval).collect();
    assert_eq!(kept.len(), MAX_POSITIONS * 9 / 10);
    let mut oldest_kept = first;
    for _ in 0..(MAX_POSITIONS + 1 - MAX_POSITIONS * 9 / 10) {
        oldest_kept = oldest_kept.next();
    }
    assert_eq!(kept.first(), Some(&oldest_kept));
    assert_eq!(kept.last(), Some(&last));
}
