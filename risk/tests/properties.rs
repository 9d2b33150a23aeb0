//! Property tests: for random sequences of intents, fills and cancels, driven through the order
//! ledger exactly as the OMS would, the positions recomputed independently from the ledger
//! never exceed the capacity headroom, the net position limits or the storage budget.

mod common;

use common::{apply, now, report};
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use vpp_engine::ids::{AggregationId, ClientOrderId, FillId, MarketId, StrategyId};
use vpp_engine::ledger::{OrderEvent, OrderEventKind, OrderLedger};
use vpp_engine::market::{DeliveryInterval, MarketKind, Product};
use vpp_engine::order::{ExecKind, OrderRequest, Side, TimeInForce};
use vpp_risk::limits::RiskLimits;
use vpp_risk::{Capacity, RiskEngine, StorageBudget};

const UP_MW: i64 = 10;
const DOWN_MW: i64 = 8;
const MAX_NET_MW: i64 = 7;
const BATTERY: AggregationId = AggregationId(2);

fn budget() -> StorageBudget {
    StorageBudget {
        energy_kwh: Decimal::from(2_000),
        soc_min_kwh: Decimal::from(500),
        soc_max_kwh: Decimal::from(3_000),
        round_trip_efficiency: Decimal::new(85, 2),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Intent {
        agg: u64,
        strategy: u64,
        day_ahead: bool,
        k: i64,
        sell: bool,
        tenths_mw: i64,
        price: i64,
    },
    Fill {
        pick: usize,
        percent: i64,
    },
    Cancel {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..=2u64, 1..=2u64, any::<bool>(), 60..64i64, any::<bool>(), 1..=60i64, 250..550i64)
            .prop_map(|(agg, strategy, day_ahead, k, sell, tenths_mw, price)| Op::Intent {
                agg, strategy, day_ahead, k, sell, tenths_mw, price
            }),
        3 => (any::<usize>(), 1..=100i64).prop_map(|(pick, percent)| Op::Fill { pick, percent }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
    ]
}

fn engine() -> RiskEngine {
    let mut cfg = common::config();
    let limits = RiskLimits {
        max_net_position_mw: Decimal::from(MAX_NET_MW),
        ..common::big_limits()
    };
    cfg.aggregation_defaults = limits.clone();
    cfg.strategy_defaults = limits;
    cfg.markets.clear(); // no collar: prices roam
    let mut e = RiskEngine::new(cfg).unwrap();
    e.register_market(common::market(common::DA, MarketKind::DayAhead))
        .unwrap();
    e.register_market(common::market(common::RT, MarketKind::RealTime))
        .unwrap();
    e.on_tick(now());
    for agg in [AggregationId(1), BATTERY] {
        let cap = Capacity {
            up_flex_mw: Decimal::from(UP_MW),
            down_flex_mw: Decimal::from(DOWN_MW),
        };
        e.update_capacity(agg, cap).unwrap();
    }
    e.set_storage_budget(BATTERY, Some(budget()), now())
        .unwrap();
    e
}

#[derive(Default)]
struct Sums {
    filled_net_sold: Decimal,
    open_sell: Decimal,
    open_buy: Decimal,
}

/// Recomputes exposure from the ledger alone (not from the risk engine's buckets).
fn sums_by<K: Ord>(ledger: &OrderLedger, key: impl Fn(&OrderRequest) -> K) -> BTreeMap<K, Sums> {
    let mut out: BTreeMap<K, Sums> = BTreeMap::new();
    for o in ledger.orders() {
        let s = out.entry(key(&o.request)).or_default();
        let sign = if o.request.side == Side::Sell {
            Decimal::ONE
        } else {
            -Decimal::ONE
        };
        s.filled_net_sold += sign * o.filled_mw;
        if o.is_open() {
            match o.request.side {
                Side::Sell => s.open_sell += o.remaining_mw(),
                Side::Buy => s.open_buy += o.remaining_mw(),
            }
        }
    }
    out
}

/// `funding_intact`: no open battery order has been cancelled. A sell may count the open buys of
/// earlier intervals (the day-ahead plan "buy at night, sell later") and a buy the open sells;
/// a cancel is a fact risk cannot refuse, so only while they stand must the paths hold.
fn check_invariants(ledger: &OrderLedger, funding_intact: bool) -> Result<(), TestCaseError> {
    let zero = Decimal::ZERO;
    let flex = sums_by(ledger, |r| (r.aggregation_id, r.interval));
    for ((agg, iv), s) in &flex {
        let up = (s.filled_net_sold + s.open_sell).max(zero);
        let down = (-s.filled_net_sold + s.open_buy).max(zero);
        prop_assert!(up <= Decimal::from(UP_MW), "{agg} {iv}: up {up}");
        prop_assert!(down <= Decimal::from(DOWN_MW), "{agg} {iv}: down {down}");
    }
    let limit = Decimal::from(MAX_NET_MW);
    let per_agg = sums_by(ledger, |r| (r.aggregation_id, r.market_id, r.interval));
    let per_strategy = sums_by(ledger, |r| (r.strategy_id, r.market_id, r.interval));
    for s in per_agg.values().chain(per_strategy.values()) {
        prop_assert!(s.filled_net_sold.abs() <= limit);
        prop_assert!(s.filled_net_sold + s.open_sell <= limit);
        prop_assert!(-s.filled_net_sold + s.open_buy <= limit);
    }
    // Battery: the energy path of what is filled (and worst cases of what is open) stays
    // within the state-of-charge limits on every interval. Low: within an interval its open
    // sells fill and its open buys do not; high: the other way round; what an interval carries
    // on has everything filled.
    let b = budget();
    let mut start = b.energy_kwh;
    let kwh = |net_sold: Decimal| {
        let e = net_sold * Decimal::from(250);
        if net_sold > zero {
            -e
        } else {
            -e * b.round_trip_efficiency
        }
    };
    for ((agg, _), s) in &flex {
        if *agg != BATTERY {
            continue;
        }
        let low = start + kwh(s.filled_net_sold + s.open_sell);
        let high = start + kwh(s.filled_net_sold - s.open_buy);
        start += kwh(s.filled_net_sold + s.open_sell - s.open_buy);
        if funding_intact {
            prop_assert!(low >= b.soc_min_kwh, "battery low path {low}");
            prop_assert!(high <= b.soc_max_kwh, "battery high path {high}");
        }
    }
    Ok(())
}

struct Run {
    engine: RiskEngine,
    ledger: OrderLedger,
    seq: u64,
    next_id: u64,
    /// No open battery buy has been cancelled yet.
    funding_intact: bool,
}

impl Run {
    fn step(&mut self, op: &Op) {
        match *op {
            Op::Intent {
                agg,
                strategy,
                day_ahead,
                k,
                sell,
                tenths_mw,
                price,
            } => {
                self.next_id += 1;
                let r = OrderRequest {
                    client_order_id: ClientOrderId::new(format!("p{}", self.next_id)).unwrap(),
                    strategy_id: Some(StrategyId(strategy)),
                    aggregation_id: AggregationId(agg),
                    market_id: if day_ahead { common::DA } else { common::RT },
                    product: Product::Energy,
                    interval: DeliveryInterval::containing(common::interval(k).start()),
                    side: if sell { Side::Sell } else { Side::Buy },
                    quantity_mw: Decimal::new(tenths_mw, 1),
                    price_cny_per_mwh: Decimal::from(price),
                    time_in_force: TimeInForce::Day,
                };
                if self.engine.evaluate(&r, now()).is_ok() {
                    let ev = OrderEvent {
                        client_order_id: r.client_order_id.clone(),
                        at: now(),
                        kind: OrderEventKind::Created { request: r },
                    };
                    apply(&mut self.engine, &mut self.ledger, ev);
                }
            }
            Op::Fill { pick, percent } => {
                let Some((id, remaining)) = self.pick(pick) else {
                    return;
                };
                let q = (remaining * Decimal::from(percent) / Decimal::from(100))
                    .round_dp(3)
                    .clamp(Decimal::new(1, 3), remaining);
                self.seq += 1;
                let fill = ExecKind::Fill {
                    fill_id: FillId(self.seq),
                    quantity_mw: q,
                    price_cny_per_mwh: Decimal::from(400),
                };
                apply(
                    &mut self.engine,
                    &mut self.ledger,
                    report(&id, self.seq, fill),
                );
            }
            Op::Cancel { pick } => {
                let Some((id, _)) = self.pick(pick) else {
                    return;
                };
                let battery = self
                    .ledger
                    .order(&id)
                    .is_some_and(|o| o.request.aggregation_id == BATTERY);
                self.funding_intact &= !battery;
                self.seq += 1;
                let kind = ExecKind::Cancelled {
                    reason: "prop".into(),
                };
                apply(
                    &mut self.engine,
                    &mut self.ledger,
                    report(&id, self.seq, kind),
                );
            }
        }
    }

    fn pick(&self, pick: usize) -> Option<(ClientOrderId, Decimal)> {
        let mut open: Vec<_> = self
            .ledger
            .open_orders()
            .map(|o| (o.id().clone(), o.remaining_mw()))
            .collect();
        if open.is_empty() {
            return None;
        }
        open.sort();
        Some(open.swap_remove(pick % open.len()))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn approved_orders_never_break_headroom_positions_or_storage(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut run = Run {
            engine: engine(),
            ledger: OrderLedger::new(),
            seq: 0,
            next_id: 0,
            funding_intact: true,
        };
        for op in &ops {
            run.step(op);
            check_invariants(&run.ledger, run.funding_intact)?;
        }
        // The engine's own buckets agree with the ledger recomputation.
        let flex = sums_by(&run.ledger, |r| (r.aggregation_id, r.interval));
        for ((agg, iv), s) in &flex {
            let f = run.engine.flexibility(*agg, *iv);
            prop_assert_eq!(f.energy.filled_net_sold_mw(), s.filled_net_sold);
            prop_assert_eq!(f.energy.open_sell_mw, s.open_sell);
            prop_assert_eq!(f.energy.open_buy_mw, s.open_buy);
        }
        let open = run.ledger.open_orders().count();
        prop_assert_eq!(run.engine.open_order_count(), open);
        let _ = MarketId(0);
    }
}
