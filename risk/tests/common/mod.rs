//! Shared fixture for the integration tests and the pre-trade bench: a loaded engine with
//! 1,000 open orders spread over 96 intervals (some partly filled), a storage budget, a
//! reference price per interval and a venue window, so a check walks every branch.
#![allow(dead_code)]

use chrono::{Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use vpp_engine::ids::{AggregationId, ClientOrderId, FillId, MarketId, StrategyId};
use vpp_engine::ledger::{OrderEvent, OrderEventKind, OrderLedger};
use vpp_engine::market::{DeliveryInterval, Market, MarketKind, Product};
use vpp_engine::order::{ExecKind, ExecReport, OrderRequest, Side, TimeInForce};
use vpp_engine::Timestamp;
use vpp_risk::limits::{MarketRisk, RiskConfig, RiskLimits, VenueLimit};
use vpp_risk::{Capacity, RiskEngine, StorageBudget};

pub const RT: MarketId = MarketId(2);
pub const DA: MarketId = MarketId(1);
pub const AGG: AggregationId = AggregationId(1);
pub const STRAT: StrategyId = StrategyId(1);

pub fn now() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 3, 1, 1, 0, 0).unwrap()
}

/// Interval `k` intervals after the current one.
pub fn interval(k: i64) -> DeliveryInterval {
    DeliveryInterval::containing(now() + Duration::minutes(15 * k))
}

pub fn market(id: MarketId, kind: MarketKind) -> Market {
    Market {
        id,
        name: format!("yunnan-{}", kind.as_str()),
        kind,
        timezone: chrono_tz::Asia::Shanghai,
        price_cap_cny_per_mwh: Decimal::from(1500),
        price_floor_cny_per_mwh: Decimal::from(-100),
        negative_prices_allowed: true,
        gate_closure_minutes_before: 14 * 60,
    }
}

pub fn big_limits() -> RiskLimits {
    RiskLimits {
        max_order_mw: Decimal::from(50),
        max_net_position_mw: Decimal::from(1_000),
        max_open_orders: 5_000,
        daily_notional_cny: Decimal::from(1_000_000_000_000u64),
        orders_per_second: 1_000_000,
        order_burst: 1_000_000,
    }
}

pub fn config() -> RiskConfig {
    let mut cfg = RiskConfig {
        aggregation_defaults: big_limits(),
        strategy_defaults: big_limits(),
        ..RiskConfig::default()
    };
    cfg.venues.push(VenueLimit {
        name: "kunming".into(),
        max_orders: 1_000_000,
        window_ms: 10_000,
    });
    cfg.markets.push(MarketRisk {
        venue: Some("kunming".into()),
        collar_band_cny_per_mwh: Some(Decimal::from(300)),
        ..MarketRisk::new(RT)
    });
    cfg
}

pub fn request(id: &str, k: i64, side: Side, qty: Decimal, price: Decimal) -> OrderRequest {
    OrderRequest {
        client_order_id: ClientOrderId::new(id).unwrap(),
        strategy_id: Some(STRAT),
        aggregation_id: AGG,
        market_id: RT,
        product: Product::Energy,
        interval: interval(k),
        side,
        quantity_mw: qty,
        price_cny_per_mwh: price,
        time_in_force: TimeInForce::Day,
    }
}

/// Applies an event to the ledger, then mirrors the outcome into the engine.
pub fn apply(engine: &mut RiskEngine, ledger: &mut OrderLedger, event: OrderEvent) {
    let outcome = ledger.apply(&event).unwrap();
    engine.apply_order_event(&event, &outcome);
}

pub fn report(id: &ClientOrderId, seq: u64, kind: ExecKind) -> OrderEvent {
    OrderEvent {
        client_order_id: id.clone(),
        at: now(),
        kind: OrderEventKind::Report {
            report: ExecReport {
                seq,
                client_order_id: id.clone(),
                venue_order_id: None,
                kind,
                at: now(),
            },
        },
    }
}

/// The loaded engine: 1,000 open orders over intervals 1..=96, every third partly filled.
pub fn loaded_engine() -> (RiskEngine, OrderLedger) {
    let mut engine = RiskEngine::new(config()).unwrap();
    engine
        .register_market(market(DA, MarketKind::DayAhead))
        .unwrap();
    engine
        .register_market(market(RT, MarketKind::RealTime))
        .unwrap();
    engine.on_tick(now());
    engine
        .update_capacity(
            AGG,
            Capacity {
                up_flex_mw: Decimal::from(10_000),
                down_flex_mw: Decimal::from(10_000),
            },
        )
        .unwrap();
    engine
        .set_storage_budget(
            AGG,
            Some(StorageBudget {
                energy_kwh: Decimal::from(5_000_000),
                soc_min_kwh: Decimal::from(100_000),
                soc_max_kwh: Decimal::from(10_000_000),
                round_trip_efficiency: Decimal::new(9, 1),
            }),
            now(),
        )
        .unwrap();
    for k in 1..=96 {
        engine
            .set_reference_price(RT, interval(k), Decimal::from(400))
            .unwrap();
    }
    let mut ledger = OrderLedger::new();
    let mut seq = 0;
    for i in 0..1_000i64 {
        let k = 1 + i % 96;
        let (side, price) = if i % 2 == 0 {
            (Side::Sell, Decimal::from(450 + i % 50))
        } else {
            (Side::Buy, Decimal::from(300 + i % 50))
        };
        let r = request(&format!("seed-{i}"), k, side, Decimal::from(2), price);
        engine.evaluate(&r, now()).unwrap();
        let id = r.client_order_id.clone();
        let created = OrderEvent {
            client_order_id: id.clone(),
            at: now(),
            kind: OrderEventKind::Created { request: r },
        };
        apply(&mut engine, &mut ledger, created);
        seq += 1;
        apply(
            &mut engine,
            &mut ledger,
            report(&id, seq, ExecKind::Accepted),
        );
        if i % 3 == 0 {
            seq += 1;
            let fill = ExecKind::Fill {
                fill_id: FillId(seq),
                quantity_mw: Decimal::ONE,
                price_cny_per_mwh: Decimal::from(400),
            };
            apply(&mut engine, &mut ledger, report(&id, seq, fill));
        }
    }
    assert_eq!(engine.open_order_count(), 1_000);
    (engine, ledger)
}

/// An intent that passes every check against the loaded engine (a sell that crosses none of
/// our resting buys, inside the collar, capacity, storage and all limits).
pub fn approvable(id: &str, k: i64) -> OrderRequest {
    request(id, k, Side::Sell, Decimal::new(15, 1), Decimal::from(420))
}
