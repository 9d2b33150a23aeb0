//! Shadow strategies seen from outside: each shadow strategy's paper P&L next to the live
//! strategies trading the same aggregation and market, for A/B evaluation while the daemon
//! runs (`GET /api/v1/engine/shadow`; the same figures go to `data/shadow/<name>.json` at
//! shutdown).
//!
//! Invariants:
//! - Paper and live figures are summed by the same rule, `PaperPnl::add_fill` (energy and
//!   demand response per MWh, capacity per MW; sells positive, buys negative, exact decimals).
//!   Live figures come from the OMS ledger, never a parallel tally.
//! - Reading locks a paper venue or the ledger only to copy figures out; at most
//!   [`MAX_SHADOW_INTENTS`] intents per strategy are copied.

use crate::config::Park;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::sync::PoisonError;
use vpp_actors::live::strategy::SharedPaper;
use vpp_engine::ids::StrategyId;
use vpp_engine::ledger::OrderLedger;
use vpp_engine::strategy::{PaperPnl, RecordedIntent};

/// Most recorded intents one report copies per shadow strategy.
pub const MAX_SHADOW_INTENTS: usize = 1_000;

/// A shadow strategy's paper venue, by strategy name.
pub type Shadows = Vec<(String, SharedPaper)>;

/// `GET /engine/shadow`: every shadow strategy with its live twins.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShadowReport {
    pub strategies: Vec<ShadowStrategy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShadowStrategy {
    pub strategy_id: u64,
    pub name: String,
    pub kind: String,
    pub aggregation_id: u64,
    pub market_id: u64,
    /// Paper P&L: what the strategy would have earned had its orders been sent.
    #[schema(value_type = Object)]
    pub paper: PaperPnl,
    /// Intents recorded since the daemon started (the log keeps the newest).
    pub intents_total: u64,
    /// Paper orders still working.
    pub open_paper_orders: usize,
    /// Live (not shadow) strategies on the same aggregation and market, with their figures
    /// computed as the paper ones are.
    pub live_twins: Vec<LiveTwin>,
    /// The newest recorded intents, newest first (as many as asked, at most
    /// [`MAX_SHADOW_INTENTS`]).
    #[schema(value_type = Vec<Object>)]
    pub last_intents: Vec<RecordedIntent>,
}

/// A live strategy's fills, summed like a paper venue's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LiveTwin {
    pub strategy_id: u64,
    pub name: String,
    #[schema(value_type = String)]
    pub cash_cny: Decimal,
    #[schema(value_type = String)]
    pub bought_mwh: Decimal,
    #[schema(value_type = String)]
    pub sold_mwh: Decimal,
    pub orders: u64,
    /// Orders with at least one fill.
    pub filled_orders: u64,
}

/// The report over the daemon's shadow strategies; `intents` newest intents each.
pub fn report(
    park: &Park,
    shadows: &Shadows,
    ledger: &OrderLedger,
    intents: usize,
) -> ShadowReport {
    let intents = intents.min(MAX_SHADOW_INTENTS);
    let mut strategies = Vec::with_capacity(shadows.len());
    for (name, paper) in shadows {
        let Some(spec) = park.strategies.iter().find(|s| &s.name == name) else {
            continue;
        };
        let live_twins = park
            .strategies
            .iter()
            .filter(|s| !s.shadow && s.enabled)
            .filter(|s| s.aggregation_id == spec.aggregation_id && s.market_id == spec.market_id)
            .map(|s| live_figures(ledger, s.id, &s.name))
            .collect();
        let paper = paper.lock().unwrap_or_else(PoisonError::into_inner);
        strategies.push(ShadowStrategy {
            strategy_id: spec.id.0,
            name: name.clone(),
            kind: spec.kind.clone(),
            aggregation_id: spec.aggregation_id.0,
            market_id: spec.market_id.0,
            paper: paper.pnl().clone(),
            intents_total: paper.logged_total(),
            open_paper_orders: paper.open_orders().count(),
            live_twins,
            last_intents: paper.log().rev().take(intents).cloned().collect(),
        });
    }
    ShadowReport { strategies }
}

/// A live strategy's orders and fills from the ledger, summed as [`PaperPnl`] sums them.
pub fn live_figures(ledger: &OrderLedger, id: StrategyId, name: &str) -> LiveTwin {
    let mut twin = LiveTwin {
        strategy_id: id.0,
        name: name.to_owned(),
        ..LiveTwin::default()
    };
    let mut pnl = PaperPnl::default();
    for order in ledger
        .orders()
        .filter(|o| o.request.strategy_id == Some(id))
    {
        twin.orders += 1;
        if order.filled_mw.is_zero() {
            continue;
        }
        twin.filled_orders += 1;
        pnl.add_fill(
            order.request.product,
            order.request.side,
            order.filled_mw,
            order.filled_value,
        );
    }
    LiveTwin {
        cash_cny: pnl.cash_cny,
        bought_mwh: pnl.bought_mwh,
        sold_mwh: pnl.sold_mwh,
        ..twin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use vpp_engine::ids::{AggregationId, ClientOrderId, FillId, MarketId};
    use vpp_engine::ledger::{OrderEvent, OrderEventKind};
    use vpp_engine::market::DeliveryInterval;
    use vpp_engine::market::Product;
    use vpp_engine::order::{ExecKind, ExecReport, OrderRequest, Side, TimeInForce};
    use vpp_engine::Decimal;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn order(
        ledger: &mut OrderLedger,
        id: &str,
        strategy: u64,
        side: Side,
        fill: Option<(Decimal, Decimal)>,
    ) {
        let at = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
        let client_order_id = ClientOrderId::new(id).unwrap();
        let request = OrderRequest {
            client_order_id: client_order_id.clone(),
            strategy_id: Some(StrategyId(strategy)),
            aggregation_id: AggregationId(1),
            market_id: MarketId(2),
            product: Product::Energy,
            interval: DeliveryInterval::containing(at + chrono::Duration::hours(1)),
            side,
            quantity_mw: dec("2"),
            price_cny_per_mwh: dec("300"),
            time_in_force: TimeInForce::Day,
        };
        let mut apply = |kind| {
            ledger
                .apply(&OrderEvent {
                    client_order_id: client_order_id.clone(),
                    at,
                    kind,
                })
                .unwrap();
        };
        apply(OrderEventKind::Created { request });
        let mut seq = 0;
        let mut report = |kind| {
            seq += 1;
            OrderEventKind::Report {
                report: ExecReport {
                    seq,
                    client_order_id: client_order_id.clone(),
                    venue_order_id: None,
                    kind,
                    at,
                },
            }
        };
        apply(report(ExecKind::Accepted));
        if let Some((qty, price)) = fill {
            apply(report(ExecKind::Fill {
                fill_id: FillId(100),
                quantity_mw: qty,
                price_cny_per_mwh: price,
            }));
        }
    }

    #[test]
    fn live_figures_sum_only_the_strategys_fills_as_paper_does() {
        let mut ledger = OrderLedger::new();
        // Strategy 1: sells 2 MW at 310 (155 CNY in), buys 1 MW at 280 (70 CNY out), one
        // order unfilled. Strategy 2's fill must not count.
        order(
            &mut ledger,
            "a",
            1,
            Side::Sell,
            Some((dec("2"), dec("310"))),
        );
        order(&mut ledger, "b", 1, Side::Buy, Some((dec("1"), dec("280"))));
        order(&mut ledger, "c", 1, Side::Buy, None);
        order(
            &mut ledger,
            "d",
            2,
            Side::Sell,
            Some((dec("2"), dec("999"))),
        );
        let twin = live_figures(&ledger, StrategyId(1), "live");
        assert_eq!(twin.cash_cny, dec("85"));
        assert_eq!(twin.sold_mwh, dec("0.5"));
        assert_eq!(twin.bought_mwh, dec("0.25"));
        assert_eq!((twin.orders, twin.filled_orders), (3, 2));
    }
}
