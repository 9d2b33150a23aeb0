//! Engine tests: each check just inside and just outside its boundary, kill switches per
//! level, limit updates, deviation policy, exposure view and event mirroring.

use super::*;
use crate::event::RejectCode;
use crate::limits::{MarketRisk, VenueLimit};
use chrono::{Duration, Utc};
use rust_decimal_macros::dec;
use vpp_engine::ids::FillId;
use vpp_engine::ledger::OrderLedger;
use vpp_engine::order::{ExecReport, TimeInForce};

const DA: MarketId = MarketId(1);
const RT: MarketId = MarketId(2);
const AGG: AggregationId = AggregationId(1);
const STRAT: StrategyId = StrategyId(1);

/// 2026-03-01 01:00Z: before the day-ahead gate (02:00Z) for local day 2026-03-02.
fn now() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 3, 1, 1, 0, 0).unwrap()
}

fn iv(h: u32, m: u32) -> DeliveryInterval {
    DeliveryInterval::starting_at(Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap()).unwrap()
}

fn market(id: MarketId, kind: MarketKind) -> Market {
    Market {
        id,
        name: format!("yunnan-{}", kind.as_str()),
        kind,
        timezone: chrono_tz::Asia::Shanghai,
        price_cap_cny_per_mwh: dec!(1500),
        price_floor_cny_per_mwh: if kind == MarketKind::RealTime {
            dec!(-100)
        } else {
            dec!(0)
        },
        negative_prices_allowed: kind == MarketKind::RealTime,
        gate_closure_minutes_before: 14 * 60,
    }
}

fn config() -> RiskConfig {
    let mut cfg = RiskConfig::default();
    cfg.venues.push(VenueLimit {
        name: "kunming".into(),
        max_orders: 1000,
        window_ms: 10_000,
    });
    cfg.markets.push(MarketRisk {
        venue: Some("kunming".into()),
        collar_band_cny_per_mwh: Some(dec!(100)),
        ..MarketRisk::new(RT)
    });
    cfg.strategy_defaults.orders_per_second = 1000;
    cfg.strategy_defaults.order_burst = 1000;
    cfg
}

fn engine_with(cfg: RiskConfig) -> RiskEngine {
    let mut e = RiskEngine::new(cfg).unwrap();
    e.register_market(market(DA, MarketKind::DayAhead)).unwrap();
    e.register_market(market(RT, MarketKind::RealTime)).unwrap();
    e.update_capacity(
        AGG,
        Capacity {
            up_flex_mw: dec!(10),
            down_flex_mw: dec!(6),
        },
    )
    .unwrap();
    e.on_tick(now());
    e
}

fn engine() -> RiskEngine {
    engine_with(config())
}

fn req(
    id: &str,
    m: MarketId,
    interval: DeliveryInterval,
    side: Side,
    qty: Decimal,
    price: Decimal,
) -> OrderRequest {
    OrderRequest {
        client_order_id: ClientOrderId::new(id).unwrap(),
        strategy_id: Some(STRAT),
        aggregation_id: AGG,
        market_id: m,
        product: Product::Energy,
        interval,
        side,
        quantity_mw: qty,
        price_cny_per_mwh: price,
        time_in_force: TimeInForce::Day,
    }
}

fn sell(id: &str, qty: Decimal) -> OrderRequest {
    req(id, RT, iv(2, 0), Side::Sell, qty, dec!(400))
}

fn buy(id: &str, qty: Decimal) -> OrderRequest {
    req(id, RT, iv(2, 0), Side::Buy, qty, dec!(300))
}

fn code(e: &RiskEngine, r: &OrderRequest, at: Timestamp) -> Option<RejectCode> {
    e.check(r, at).reject_code()
}

/// Runs the OMS side: the ledger is the source of truth; risk mirrors its outcomes.
struct Oms {
    ledger: OrderLedger,
    seq: u64,
}

impl Oms {
    fn new() -> Self {
        Self {
            ledger: OrderLedger::new(),
            seq: 0,
        }
    }

    fn apply(&mut self, e: &mut RiskEngine, event: OrderEvent) {
        let outcome = self.ledger.apply(&event).unwrap();
        e.apply_order_event(&event, &outcome);
    }

    fn submit(&mut self, e: &mut RiskEngine, r: &OrderRequest) -> Result<(), RiskEvent> {
        e.evaluate(r, now())?;
        let ev = OrderEvent {
            client_order_id: r.client_order_id.clone(),
            at: now(),
            kind: OrderEventKind::Created { request: r.clone() },
        };
        self.apply(e, ev);
        Ok(())
    }

    fn report(&mut self, e: &mut RiskEngine, id: &str, kind: ExecKind) {
        self.seq += 1;
        let client_order_id = ClientOrderId::new(id).unwrap();
        let ev = OrderEvent {
            client_order_id: client_order_id.clone(),
            at: now(),
            kind: OrderEventKind::Report {
                report: ExecReport {
                    seq: self.seq,
                    client_order_id,
                    venue_order_id: None,
                    kind,
                    at: now(),
                },
            },
        };
        self.apply(e, ev);
    }

    fn fill(&mut self, e: &mut RiskEngine, id: &str, qty: Decimal) {
        let seq = self.seq + 1;
        self.report(
            e,
            id,
            ExecKind::Fill {
                fill_id: FillId(seq),
                quantity_mw: qty,
                price_cny_per_mwh: dec!(400),
            },
        );
    }

    fn cancel(&mut self, e: &mut RiskEngine, id: &str) {
        self.report(
            e,
            id,
            ExecKind::Cancelled {
                reason: "test".into(),
            },
        );
    }
}

#[test]
fn approve_path_counts_and_a_reject_is_an_event() {
    let mut e = engine();
    assert_eq!(e.check(&sell("a", dec!(1)), now()), Decision::Approve);
    e.evaluate(&sell("a", dec!(1)), now()).unwrap();
    let ev = e.evaluate(&sell("a", dec!(1)), now()).unwrap_err();
    assert_eq!(
        ev.kind,
        crate::event::RiskEventKind::Rejected(RejectCode::DuplicateClientOrderId)
    );
    assert_eq!(ev.client_order_id.unwrap().as_str(), "a");
    assert!(ev.message.contains("already used"));
    assert_eq!(e.counters().approved, 1);
    assert_eq!(e.counters().rejects(RejectCode::DuplicateClientOrderId), 1);
}

#[test]
fn quantity_and_unknown_market() {
    let e = engine();
    assert_eq!(
        code(&e, &sell("a", dec!(0)), now()),
        Some(RejectCode::InvalidQuantity)
    );
    assert_eq!(code(&e, &sell("a", dec!(0.001)), now()), None);
    let r = req("a", MarketId(9), iv(2, 0), Side::Sell, dec!(1), dec!(1));
    assert_eq!(code(&e, &r, now()), Some(RejectCode::UnknownMarket));
}

#[test]
fn duplicate_id_stays_refused_after_the_order_is_done() {
    let (mut e, mut oms) = (engine(), Oms::new());
    oms.submit(&mut e, &sell("a", dec!(1))).unwrap();
    oms.cancel(&mut e, "a");
    assert_eq!(e.open_order_count(), 0);
    assert_eq!(
        code(&e, &sell("a", dec!(1)), now()),
        Some(RejectCode::DuplicateClientOrderId)
    );
    assert_eq!(code(&e, &sell("b", dec!(1)), now()), None);
}

#[test]
fn interval_in_delivery_boundary() {
    let e = engine();
    let r = req("a", RT, iv(2, 0), Side::Sell, dec!(1), dec!(400));
    let start = iv(2, 0).start();
    assert_eq!(code(&e, &r, start - Duration::seconds(1)), None);
    assert_eq!(code(&e, &r, start), Some(RejectCode::IntervalInDelivery));
}

#[test]
fn day_ahead_gate_closure_boundary() {
    let e = engine();
    // Local day 2026-03-02 starts 2026-03-01T16:00Z; gate closes 14 h before, at 02:00Z.
    let r = req("a", DA, iv(16, 0), Side::Sell, dec!(1), dec!(400));
    let closure = Utc.with_ymd_and_hms(2026, 3, 1, 2, 0, 0).unwrap();
    assert_eq!(code(&e, &r, closure - Duration::seconds(1)), None);
    let d = e.check(&r, closure);
    assert_eq!(d.reject_code(), Some(RejectCode::GateClosed));
    // The real-time market has no day-ahead gate.
    let rt = req("b", RT, iv(16, 0), Side::Sell, dec!(1), dec!(400));
    assert_eq!(code(&e, &rt, closure), None);
}

#[test]
fn price_cap_floor_and_negative_prices() {
    let mut e = engine();
    e.set_market_reference_price(RT, None).unwrap();
    let p = |m, price| req("a", m, iv(16, 0), Side::Sell, dec!(1), price);
    assert_eq!(code(&e, &p(DA, dec!(1500)), now()), None);
    assert_eq!(
        code(&e, &p(DA, dec!(1500.01)), now()),
        Some(RejectCode::PriceLimit)
    );
    assert_eq!(code(&e, &p(DA, dec!(0)), now()), None);
    assert_eq!(
        code(&e, &p(DA, dec!(-0.01)), now()),
        Some(RejectCode::PriceLimit)
    );
    assert_eq!(code(&e, &p(RT, dec!(-100)), now()), None);
    let d = e.check(&p(RT, dec!(-100.01)), now());
    let Decision::Reject(r) = d else {
        panic!("expected reject")
    };
    assert_eq!(r.code, RejectCode::PriceLimit);
    assert!(r.message.contains("below the floor -100"), "{}", r.message);
}

#[test]
fn price_collar_around_interval_or_market_reference() {
    let mut e = engine();
    let p = |price| req("a", RT, iv(2, 0), Side::Sell, dec!(1), price);
    assert_eq!(
        code(&e, &p(dec!(1400)), now()),
        None,
        "no reference: no collar"
    );
    e.set_market_reference_price(RT, Some(dec!(400))).unwrap();
    assert_eq!(code(&e, &p(dec!(500)), now()), None);
    assert_eq!(code(&e, &p(dec!(300)), now()), None);
    assert_eq!(
        code(&e, &p(dec!(500.01)), now()),
        Some(RejectCode::PriceCollar)
    );
    assert_eq!(
        code(&e, &p(dec!(299.99)), now()),
        Some(RejectCode::PriceCollar)
    );
    // An interval's own reference wins over the market's.
    e.set_reference_price(RT, iv(2, 0), dec!(600)).unwrap();
    assert_eq!(code(&e, &p(dec!(700)), now()), None);
    assert_eq!(
        code(&e, &p(dec!(499.99)), now()),
        Some(RejectCode::PriceCollar)
    );
}

#[test]
fn max_order_quantity_per_strategy_and_aggregation() {
    let mut e = engine();
    let who = "ops";
    let mut l = RiskLimits {
        max_order_mw: dec!(5),
        ..e.limits(LimitScope::Strategy(STRAT)).clone()
    };
    e.update_limits(LimitScope::Strategy(STRAT), l.clone(), who, now())
        .unwrap();
    assert_eq!(code(&e, &sell("a", dec!(5)), now()), None);
    let Decision::Reject(r) = e.check(&sell("a", dec!(5.001)), now()) else {
        panic!()
    };
    assert_eq!(
        (r.code, r.scope),
        (RejectCode::MaxOrderQuantity, Scope::Strategy(STRAT))
    );
    assert!(r.message.contains("max_order_mw 5"), "{}", r.message);
    l.max_order_mw = dec!(4);
    e.update_limits(LimitScope::Aggregation(AGG), l, who, now())
        .unwrap();
    assert_eq!(code(&e, &sell("a", dec!(4)), now()), None);
    let Decision::Reject(r) = e.check(&sell("a", dec!(4.001)), now()) else {
        panic!()
    };
    assert_eq!(r.scope, Scope::Aggregation(AGG));
}

#[test]
fn max_open_orders_and_release_on_cancel() {
    let (mut e, mut oms) = (engine(), Oms::new());
    let l = RiskLimits {
        max_open_orders: 3,
        ..RiskLimits::default()
    };
    e.update_limits(LimitScope::Aggregation(AGG), l, "ops", now())
        .unwrap();
    for id in ["a", "b", "c"] {
        oms.submit(&mut e, &sell(id, dec!(1))).unwrap();
    }
    assert_eq!(
        code(&e, &sell("d", dec!(1)), now()),
        Some(RejectCode::MaxOpenOrders)
    );
    oms.cancel(&mut e, "b");
    assert_eq!(code(&e, &sell("d", dec!(1)), now()), None);
}

#[test]
fn strategy_token_bucket_boundary() {
    let mut e = engine();
    let l = RiskLimits {
        orders_per_second: 2,
        order_burst: 3,
        ..RiskLimits::default()
    };
    e.update_limits(LimitScope::Strategy(STRAT), l, "ops", now())
        .unwrap();
    for id in ["a", "b", "c"] {
        e.evaluate(&sell(id, dec!(0.1)), now()).unwrap();
    }
    assert_eq!(
        code(&e, &sell("d", dec!(0.1)), now()),
        Some(RejectCode::StrategyThrottle)
    );
    let later = now() + Duration::milliseconds(499);
    assert_eq!(
        code(&e, &sell("d", dec!(0.1)), later),
        Some(RejectCode::StrategyThrottle)
    );
    assert_eq!(
        code(
            &e,
            &sell("d", dec!(0.1)),
            now() + Duration::milliseconds(500)
        ),
        None
    );
}

#[test]
fn venue_window_boundary_is_the_venues_own_window() {
    let mut cfg = config();
    cfg.venues[0].max_orders = 3;
    let mut e = engine_with(cfg);
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let at = now() + Duration::seconds(i as i64);
        e.evaluate(&sell(id, dec!(0.1)), at).unwrap();
    }
    let at = now() + Duration::milliseconds(9_999);
    let Decision::Reject(r) = e.check(&sell("d", dec!(0.1)), at) else {
        panic!()
    };
    assert_eq!(
        (r.code, r.scope),
        (RejectCode::VenueThrottle, Scope::Venue(0))
    );
    assert!(r.message.contains("3 per 10000 ms"), "{}", r.message);
    assert_eq!(
        code(&e, &sell("d", dec!(0.1)), now() + Duration::seconds(10)),
        None
    );
    // The day-ahead market has no venue window configured.
    let da = req("e", DA, iv(16, 0), Side::Sell, dec!(0.1), dec!(400));
    assert_eq!(code(&e, &da, at), None);
}

#[test]
fn daily_notional_boundary_and_reset_at_local_midnight() {
    let mut e = engine();
    // 1 MW × 400 CNY/MWh × 0.25 h = 100 CNY per order.
    let l = RiskLimits {
        daily_notional_cny: dec!(250),
        ..RiskLimits::default()
    };
    e.update_limits(LimitScope::Strategy(STRAT), l, "ops", now())
        .unwrap();
    e.evaluate(&sell("a", dec!(1)), now()).unwrap();
    e.evaluate(&sell("b", dec!(1)), now()).unwrap();
    assert_eq!(code(&e, &sell("c", dec!(0.5)), now()), None);
    let Decision::Reject(r) = e.check(&sell("c", dec!(0.501)), now()) else {
        panic!()
    };
    assert_eq!(r.code, RejectCode::DailyNotional);
    assert!(r.message.contains("200"), "{}", r.message);
    // Shanghai midnight is 16:00Z: a new trading day.
    let next_day = Utc.with_ymd_and_hms(2026, 3, 1, 16, 0, 0).unwrap();
    let later = req("c", RT, iv(17, 0), Side::Sell, dec!(2.5), dec!(400));
    assert_eq!(
        code(&e, &later, next_day - Duration::seconds(1)),
        Some(RejectCode::DailyNotional)
    );
    assert_eq!(code(&e, &later, next_day), None);
}

#[test]
fn net_position_is_worst_case_filled_plus_open() {
    let (mut e, mut oms) = (engine(), Oms::new());
    e.update_capacity(
        AGG,
        Capacity {
            up_flex_mw: dec!(100),
            down_flex_mw: dec!(100),
        },
    )
    .unwrap();
    let l = RiskLimits {
        max_net_position_mw: dec!(8),
        ..RiskLimits::default()
    };
    e.update_limits(LimitScope::Aggregation(AGG), l, "ops", now())
        .unwrap();
    oms.submit(&mut e, &sell("a", dec!(5))).unwrap();
    oms.fill(&mut e, "a", dec!(2));
    assert_eq!(code(&e, &sell("b", dec!(3)), now()), None);
    assert_eq!(
        code(&e, &sell("b", dec!(3.001)), now()),
        Some(RejectCode::MaxNetPosition)
    );
    // Buying nets against the filled 2 MW sold: worst net bought = -2 + q ≤ 8.
    assert_eq!(code(&e, &buy("c", dec!(10)), now()), None);
    assert_eq!(
        code(&e, &buy("c", dec!(10.001)), now()),
        Some(RejectCode::MaxNetPosition)
    );
    // Another product or interval is a separate position.
    let mut other = sell("d", dec!(8));
    other.interval = iv(2, 15);
    assert_eq!(code(&e, &other, now()), None);
}

#[test]
fn capacity_headroom_up_and_down_across_markets() {
    let (mut e, mut oms) = (engine(), Oms::new()); // up 10, down 6
    oms.submit(
        &mut e,
        &req("da", DA, iv(16, 0), Side::Sell, dec!(6), dec!(400)),
    )
    .unwrap();
    let rt = |id, q| req(id, RT, iv(16, 0), Side::Sell, q, dec!(400));
    assert_eq!(code(&e, &rt("b", dec!(4)), now()), None);
    let Decision::Reject(r) = e.check(&rt("b", dec!(4.001)), now()) else {
        panic!()
    };
    assert_eq!(r.code, RejectCode::CapacityHeadroom);
    assert!(r.message.contains("headroom 4"), "{}", r.message);
    // A filled buy frees up-flexibility; an open one does not.
    let b = req("buy", RT, iv(16, 0), Side::Buy, dec!(2), dec!(300));
    oms.submit(&mut e, &b).unwrap();
    assert_eq!(
        code(&e, &rt("b", dec!(4.001)), now()),
        Some(RejectCode::CapacityHeadroom)
    );
    oms.fill(&mut e, "buy", dec!(2));
    assert_eq!(code(&e, &rt("b", dec!(6)), now()), None);
    assert_eq!(
        code(&e, &rt("b", dec!(6.001)), now()),
        Some(RejectCode::CapacityHeadroom)
    );
    // Down: open sells may not fill, so the 2 MW already bought leaves 4 MW of the 6.
    let buy_q = |q| req("c", RT, iv(16, 0), Side::Buy, q, dec!(300));
    assert_eq!(code(&e, &buy_q(dec!(4)), now()), None);
    assert_eq!(
        code(&e, &buy_q(dec!(4.001)), now()),
        Some(RejectCode::CapacityHeadroom)
    );
}

#[test]
fn capacity_products_reserve_without_netting_and_no_capacity_means_no_headroom() {
    let e = engine();
    let mut reg = req("r", DA, iv(16, 0), Side::Sell, dec!(6), dec!(10));
    reg.product = Product::RegulationCapacity;
    assert_eq!(code(&e, &reg, now()), None);
    reg.quantity_mw = dec!(6.001); // down-flex is 6
    assert_eq!(code(&e, &reg, now()), Some(RejectCode::CapacityHeadroom));
    let mut other = sell("x", dec!(1));
    other.aggregation_id = AggregationId(2);
    let Decision::Reject(r) = e.check(&other, now()) else {
        panic!()
    };
    assert!(r.message.contains("no capacity"), "{}", r.message);
}

#[test]
fn storage_budget_limits_sells_across_consecutive_intervals() {
    let (mut e, mut oms) = (engine(), Oms::new());
    let budget = StorageBudget {
        energy_kwh: dec!(1500),
        soc_min_kwh: dec!(500),
        soc_max_kwh: dec!(2000),
        round_trip_efficiency: dec!(0.9),
    };
    e.set_storage_budget(AGG, Some(budget), now()).unwrap();
    // 1000 kWh sellable = 4 MW for one interval.
    oms.submit(
        &mut e,
        &req("a", RT, iv(2, 0), Side::Sell, dec!(3), dec!(400)),
    )
    .unwrap();
    let later = |id, q| req(id, RT, iv(5, 0), Side::Sell, q, dec!(400));
    assert_eq!(code(&e, &later("b", dec!(1)), now()), None);
    let Decision::Reject(r) = e.check(&later("b", dec!(1.001)), now()) else {
        panic!()
    };
    assert_eq!(r.code, RejectCode::StorageEnergy);
    assert!(r.message.contains("soc_min_kwh 500"), "{}", r.message);
    // An earlier interval is limited by the later commitments too.
    oms.submit(&mut e, &later("b", dec!(1))).unwrap();
    let earlier = req("c", RT, iv(1, 30), Side::Sell, dec!(0.001), dec!(400));
    assert_eq!(code(&e, &earlier, now()), Some(RejectCode::StorageEnergy));
    // Cancelling frees the energy.
    oms.cancel(&mut e, "a");
    assert_eq!(code(&e, &earlier, now()), None);
    // Charging: 500 + 0 = room 2000 - 1500 + 1000 sold later... buy limited by soc_max.
    let charge = |q| req("d", RT, iv(1, 30), Side::Buy, q, dec!(300));
    // Highest path: 1500 + q × 250 × 0.9 ≤ 2000 → q ≤ 2.222…
    assert_eq!(code(&e, &charge(dec!(2.2)), now()), None);
    assert_eq!(
        code(&e, &charge(dec!(2.3)), now()),
        Some(RejectCode::StorageEnergy)
    );
}

#[test]
fn a_day_ahead_plan_may_sell_energy_it_buys_earlier_in_the_same_auction() {
    let (mut e, mut oms) = (engine(), Oms::new());
    let budget = StorageBudget {
        energy_kwh: dec!(1500),
        soc_min_kwh: dec!(500),
        soc_max_kwh: dec!(2000),
        round_trip_efficiency: dec!(0.9),
    };
    e.set_storage_budget(AGG, Some(budget), now()).unwrap();
    let bid = |id, h, side, q| req(id, DA, iv(h, 0), side, q, dec!(300));
    // Alone: 1000 kWh above the minimum = 4 MW for one interval.
    assert_eq!(code(&e, &bid("x", 20, Side::Sell, dec!(4)), now()), None);
    assert_eq!(
        code(&e, &bid("x", 20, Side::Sell, dec!(4.001)), now()),
        Some(RejectCode::StorageEnergy)
    );
    // Buy 2 MW at local 01:00 (17:00Z): if it fills it stores 2 × 250 × 0.9 = 450 kWh.
    oms.submit(&mut e, &bid("night", 17, Side::Buy, dec!(2)))
        .unwrap();
    // Later in the same auction the battery may sell it: 1450 kWh = 5.8 MW, just inside.
    assert_eq!(
        code(&e, &bid("peak", 20, Side::Sell, dec!(5.8)), now()),
        None
    );
    assert_eq!(
        code(&e, &bid("peak", 20, Side::Sell, dec!(5.801)), now()),
        Some(RejectCode::StorageEnergy)
    );
    // Never energy it will not have had: not in the buy's own interval, not before it.
    assert_eq!(code(&e, &bid("same", 17, Side::Sell, dec!(4)), now()), None);
    assert_eq!(
        code(&e, &bid("same", 17, Side::Sell, dec!(4.001)), now()),
        Some(RejectCode::StorageEnergy)
    );
    assert_eq!(
        code(&e, &bid("before", 16, Side::Sell, dec!(4.001)), now()),
        Some(RejectCode::StorageEnergy)
    );
    // Once the peak sell stands, an earlier sell has nothing left to take.
    oms.submit(&mut e, &bid("peak", 20, Side::Sell, dec!(5.8)))
        .unwrap();
    assert_eq!(
        code(&e, &bid("early", 18, Side::Sell, dec!(0.001)), now()),
        Some(RejectCode::StorageEnergy)
    );
}

#[test]
fn self_trade_prevention_in_the_continuous_market_only() {
    let (mut e, mut oms) = (engine(), Oms::new());
    oms.submit(
        &mut e,
        &req("s1", RT, iv(2, 0), Side::Sell, dec!(1), dec!(420)),
    )
    .unwrap();
    oms.submit(
        &mut e,
        &req("s2", RT, iv(2, 0), Side::Sell, dec!(1), dec!(410)),
    )
    .unwrap();
    let b = |p| req("b", RT, iv(2, 0), Side::Buy, dec!(1), p);
    assert_eq!(code(&e, &b(dec!(409.99)), now()), None);
    let Decision::Reject(r) = e.check(&b(dec!(410)), now()) else {
        panic!()
    };
    assert_eq!(r.code, RejectCode::SelfTrade);
    assert!(r.message.contains("resting sell at 410"), "{}", r.message);
    // The best resting sell leaves: the next best becomes the bound.
    oms.cancel(&mut e, "s2");
    assert_eq!(code(&e, &b(dec!(419.99)), now()), None);
    assert_eq!(code(&e, &b(dec!(420)), now()), Some(RejectCode::SelfTrade));
    oms.fill(&mut e, "s1", dec!(1));
    assert_eq!(code(&e, &b(dec!(420)), now()), None);
    // Our resting buy blocks a sell at or below it.
    oms.submit(&mut e, &b(dec!(400))).unwrap();
    let s = |p| req("s3", RT, iv(2, 0), Side::Sell, dec!(1), p);
    assert_eq!(code(&e, &s(dec!(400)), now()), Some(RejectCode::SelfTrade));
    assert_eq!(code(&e, &s(dec!(400.01)), now()), None);
    // Day-ahead is an auction: no self-trade check.
    let da_buy = req("x", DA, iv(16, 0), Side::Buy, dec!(1), dec!(500));
    let da_sell = req("y", DA, iv(16, 0), Side::Sell, dec!(1), dec!(100));
    oms.submit(&mut e, &da_sell).unwrap();
    assert_eq!(code(&e, &da_buy, now()), None);
}

#[test]
fn kill_switch_levels_cancel_their_scope_and_refuse_until_release() {
    let (mut e, mut oms) = (engine(), Oms::new());
    oms.submit(&mut e, &sell("a1", dec!(1))).unwrap();
    let mut other_strategy = sell("b1", dec!(1));
    other_strategy.strategy_id = Some(StrategyId(2));
    oms.submit(&mut e, &other_strategy).unwrap();
    let mut manual = sell("m1", dec!(1));
    manual.strategy_id = None;
    oms.submit(&mut e, &manual).unwrap();

    // Strategy level.
    let k = e
        .engage_kill_switch(KillScope::Strategy(STRAT), "alice", "runaway", now())
        .unwrap();
    assert!(k.newly_engaged);
    assert_eq!(k.cancel, vec![ClientOrderId::new("a1").unwrap()]);
    let Decision::Reject(r) = e.check(&sell("a2", dec!(1)), now()) else {
        panic!()
    };
    assert_eq!(
        (r.code, r.scope),
        (RejectCode::KillSwitch, Scope::Strategy(STRAT))
    );
    assert!(r.message.contains("alice") && r.message.contains("runaway"));
    let mut s2 = sell("b2", dec!(1));
    s2.strategy_id = Some(StrategyId(2));
    assert_eq!(code(&e, &s2, now()), None);
    e.release_kill_switch(KillScope::Strategy(STRAT), "bob", now())
        .unwrap();
    assert_eq!(code(&e, &sell("a2", dec!(1)), now()), None);

    // Aggregation level covers every strategy and manual orders of that aggregation.
    let k = e
        .engage_kill_switch(KillScope::Aggregation(AGG), "ops", "meter fault", now())
        .unwrap();
    assert_eq!(k.cancel.len(), 3);
    assert_eq!(code(&e, &s2, now()), Some(RejectCode::KillSwitch));
    let mut elsewhere = sell("z", dec!(1));
    elsewhere.aggregation_id = AggregationId(2);
    assert_ne!(code(&e, &elsewhere, now()), Some(RejectCode::KillSwitch));
    e.release_kill_switch(KillScope::Aggregation(AGG), "ops", now())
        .unwrap();

    // Global covers everything; release twice is an error.
    let k = e
        .engage_kill_switch(KillScope::Global, "ops", "venue incident", now())
        .unwrap();
    assert_eq!(k.cancel.len(), 3);
    assert_eq!(code(&e, &elsewhere, now()), Some(RejectCode::KillSwitch));
    e.release_kill_switch(KillScope::Global, "ops", now())
        .unwrap();
    assert!(e
        .release_kill_switch(KillScope::Global, "ops", now())
        .is_err());
    assert_eq!(code(&e, &sell("a3", dec!(1)), now()), None);
    let history: Vec<_> = e
        .kill_switches()
        .history()
        .map(|h| h.who.as_str())
        .collect();
    assert_eq!(history, ["alice", "bob", "ops", "ops", "ops", "ops"]);
    assert_eq!(e.counters().alerts(AlertCode::KillSwitchEngaged), 3);
}

#[test]
fn limit_updates_are_audited_and_defaults_flow_to_non_custom_scopes() {
    let mut e = engine();
    let old = e.limits(LimitScope::StrategyDefaults).clone();
    let new = RiskLimits {
        max_order_mw: dec!(2),
        ..old.clone()
    };
    let change = e
        .update_limits(LimitScope::StrategyDefaults, new.clone(), "carol", now())
        .unwrap();
    assert_eq!(
        (change.old, change.new.clone(), change.who.as_str()),
        (old, new, "carol")
    );
    e.evaluate(&sell("a", dec!(1)), now()).unwrap(); // creates strategy 1 with defaults
    assert_eq!(
        code(&e, &sell("b", dec!(2.001)), now()),
        Some(RejectCode::MaxOrderQuantity)
    );
    let bad = RiskLimits {
        max_order_mw: dec!(-1),
        ..RiskLimits::default()
    };
    let err = e
        .update_limits(LimitScope::Strategy(STRAT), bad, "carol", now())
        .unwrap_err();
    assert!(err.to_string().contains("max_order_mw"), "{err}");
    assert_eq!(e.limits(LimitScope::Strategy(STRAT)).max_order_mw, dec!(2));
    assert_eq!(e.counters().alerts(AlertCode::LimitsChanged), 1);
}

#[test]
fn critical_deviation_engages_the_strategys_kill_switch_by_policy() {
    let mut cfg = config();
    cfg.deviation.critical_engages_kill_switch = true;
    let (mut e, mut oms) = (engine_with(cfg), Oms::new());
    oms.submit(&mut e, &sell("a", dec!(1))).unwrap();
    let mut s = DeliverySample {
        aggregation_id: AGG,
        interval: iv(0, 45),
        awarded_kwh: dec!(1000),
        dispatched_kwh: dec!(1000),
        metered_kwh: dec!(900),
        strategy_id: Some(STRAT),
    };
    let out = e.record_delivery(&s, now());
    assert_eq!(
        out.alert.unwrap().kind,
        crate::event::RiskEventKind::Alert(AlertCode::DeviationWarning)
    );
    assert!(out.kill.is_none());
    s.metered_kwh = dec!(850);
    let out = e.record_delivery(&s, now());
    let kill = out.kill.unwrap();
    assert_eq!(kill.cancel, vec![ClientOrderId::new("a").unwrap()]);
    assert_eq!(
        code(&e, &sell("b", dec!(1)), now()),
        Some(RejectCode::KillSwitch)
    );
    assert_eq!(
        e.kill_switches()
            .engagement(KillScope::Strategy(STRAT))
            .unwrap()
            .who,
        "deviation-monitor"
    );
    assert_eq!(e.counters().alerts(AlertCode::DeviationCritical), 1);

    // The default policy only alerts.
    let mut e = engine();
    s.strategy_id = None;
    assert!(e.record_delivery(&s, now()).kill.is_none());
}

#[test]
fn exposure_view_reports_positions_headroom_and_notional() {
    let (mut e, mut oms) = (engine(), Oms::new());
    oms.submit(&mut e, &sell("a", dec!(4))).unwrap();
    oms.fill(&mut e, "a", dec!(1));
    let v = e.exposure_aggregation(AGG, now());
    assert_eq!(v.open_orders.used, dec!(1));
    assert_eq!(v.daily_notional_cny.used, dec!(400));
    assert_eq!(v.positions.len(), 1);
    assert_eq!(v.positions[0].bucket.filled_sold_mw, dec!(1));
    assert_eq!(v.positions[0].bucket.open_sell_mw, dec!(3));
    assert_eq!(v.headroom[0].up_used_mw, dec!(4));
    assert_eq!(v.headroom[0].up_left_mw, dec!(6));
    let s = e.exposure_strategy(STRAT, now());
    assert_eq!(s.positions[0].worst_net_sold_mw, dec!(4));
    assert!(serde_json::to_string(&v).unwrap().contains("up_left_mw"));
}

#[test]
fn tracking_limit_bounds_the_open_order_table() {
    let mut cfg = config();
    cfg.sizing.max_open_orders = 2;
    let mut e = engine_with(cfg);
    e.evaluate(&sell("a", dec!(1)), now()).unwrap();
    e.evaluate(&sell("b", dec!(1)), now()).unwrap();
    assert_eq!(
        code(&e, &sell("c", dec!(1)), now()),
        Some(RejectCode::TrackingLimit)
    );
    assert!(e.release_reservation(&ClientOrderId::new("b").unwrap()));
    assert_eq!(code(&e, &sell("c", dec!(1)), now()), None);
}

#[test]
fn reservation_then_created_event_counts_once_and_replay_rebuilds_state() {
    let (mut e, mut oms) = (engine(), Oms::new());
    oms.submit(&mut e, &sell("a", dec!(3))).unwrap();
    oms.report(&mut e, "a", ExecKind::Accepted);
    oms.fill(&mut e, "a", dec!(1));
    oms.report(
        &mut e,
        "a",
        ExecKind::Replaced {
            quantity_mw: dec!(2),
            price_cny_per_mwh: dec!(400),
        },
    );
    let f = e.flexibility(AGG, iv(2, 0));
    assert_eq!(
        (f.energy.filled_sold_mw, f.energy.open_sell_mw),
        (dec!(1), dec!(1))
    );
    // Replaying the ledger's events into a fresh engine gives the same buckets.
    let mut fresh = engine();
    let mut replay = Oms::new();
    let events = [OrderEventKind::Created {
        request: sell("a", dec!(3)),
    }];
    for kind in events {
        let ev = OrderEvent {
            client_order_id: ClientOrderId::new("a").unwrap(),
            at: now(),
            kind,
        };
        replay.apply(&mut fresh, ev);
    }
    replay.report(&mut fresh, "a", ExecKind::Accepted);
    replay.fill(&mut fresh, "a", dec!(1));
    replay.report(
        &mut fresh,
        "a",
        ExecKind::Replaced {
            quantity_mw: dec!(2),
            price_cny_per_mwh: dec!(400),
        },
    );
    assert_eq!(fresh.flexibility(AGG, iv(2, 0)), f);
    assert_eq!(fresh.open_order_count(), 1);
    oms.fill(&mut e, "a", dec!(1));
    assert_eq!(e.open_order_count(), 0);
    assert_eq!(e.flexibility(AGG, iv(2, 0)).energy.filled_sold_mw, dec!(2));
}
