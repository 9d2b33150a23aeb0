//! [`RiskEngine`] as the backtest's [`PreTradeGate`]: the backtest runs the very checks the
//! RiskMonitor runs live (evaluate with reservation, order-event mirroring, capacity and
//! storage budget updates, clock ticks, kill switch).
//!
//! Invariant: this adapter adds no logic of its own beyond unit conversion (kW → MW, SoC
//! percent → kWh); a rejection's code is the risk crate's stable `RejectCode` string.

use crate::{Capacity, KillScope, RiskEngine, StorageBudget};
use rust_decimal::Decimal;
use vpp_engine::backtest::{BatterySpec, GateReject, PreTradeGate};
use vpp_engine::ids::{ClientOrderId, StrategyId};
use vpp_engine::ledger::{OrderEvent, Outcome};
use vpp_engine::order::OrderRequest;
use vpp_engine::strategy::CapacityUpdate;
use vpp_engine::Timestamp;

const KW_PER_MW: Decimal = Decimal::from_parts(1000, 0, 0, false, 0);

impl PreTradeGate for RiskEngine {
    fn evaluate(&mut self, request: &OrderRequest, now: Timestamp) -> Result<(), GateReject> {
        RiskEngine::evaluate(self, request, now).map_err(|e| GateReject {
            code: e.kind.code_str().to_owned(),
            message: e.message,
        })
    }

    fn on_order_event(&mut self, event: &OrderEvent, outcome: &Outcome) {
        self.apply_order_event(event, outcome);
    }

    fn on_capacity(&mut self, update: &CapacityUpdate, battery: &BatterySpec, now: Timestamp) {
        let agg = update.aggregation_id;
        let capacity = Capacity {
            up_flex_mw: update.capacity.up_flex_kw / KW_PER_MW,
            down_flex_mw: update.capacity.down_flex_kw / KW_PER_MW,
        };
        // Both only fail when the aggregation table is full; the intents then get refused
        // with `capacity_headroom`/`tracking_limit`, which the report counts.
        let _ = self.update_capacity(agg, capacity);
        if let Some(storage) = update.storage {
            let budget = StorageBudget {
                energy_kwh: storage.energy_kwh,
                soc_min_kwh: storage.capacity_kwh * battery.soc_min_pct / Decimal::ONE_HUNDRED,
                soc_max_kwh: storage.capacity_kwh * battery.soc_max_pct / Decimal::ONE_HUNDRED,
                round_trip_efficiency: battery.efficiency,
            };
            let _ = self.set_storage_budget(agg, Some(budget), now);
        }
    }

    fn on_tick(&mut self, now: Timestamp) {
        RiskEngine::on_tick(self, now);
    }

    fn engage_kill_switch(
        &mut self,
        strategy: StrategyId,
        why: &str,
        now: Timestamp,
    ) -> Vec<ClientOrderId> {
        RiskEngine::engage_kill_switch(self, KillScope::Strategy(strategy), "backtest", why, now)
            .map(|o| o.cancel)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RiskConfig;
    use chrono::{NaiveDate, TimeZone, Utc};
    use vpp_engine::aggregation::AggregatedCapacity;
    use vpp_engine::backtest::BacktestConfig;
    use vpp_engine::ids::AggregationId;
    use vpp_engine::market::DeliveryInterval;
    use vpp_engine::order::{Side, TimeInForce};

    fn request(
        id: &str,
        market: vpp_engine::ids::MarketId,
        interval: DeliveryInterval,
    ) -> OrderRequest {
        OrderRequest {
            client_order_id: ClientOrderId::new(id).unwrap(),
            strategy_id: Some(StrategyId(1)),
            aggregation_id: AggregationId(1),
            market_id: market,
            product: vpp_engine::market::Product::Energy,
            interval,
            side: Side::Sell,
            quantity_mw: Decimal::ONE,
            price_cny_per_mwh: Decimal::from(300),
            time_in_force: TimeInForce::Ioc,
        }
    }

    #[test]
    fn the_gate_runs_the_risk_checks_and_the_kill_switch() {
        let day = NaiveDate::from_ymd_opt(2023, 6, 1).unwrap();
        let cfg = BacktestConfig::new(day, day, 1);
        let [_, rt] = cfg.markets();
        let mut risk = RiskEngine::new(RiskConfig::default()).unwrap();
        let now = Utc.with_ymd_and_hms(2023, 6, 1, 10, 0, 0).unwrap();
        let next = DeliveryInterval::containing(now).next();
        let gate: &mut dyn PreTradeGate = &mut risk;
        let err = gate
            .evaluate(&request("a-1", rt.id, next), now)
            .unwrap_err();
        assert_eq!(err.code, "unknown_market");

        risk.register_market(rt.clone()).unwrap();
        let gate: &mut dyn PreTradeGate = &mut risk;
        let err = gate
            .evaluate(&request("a-2", rt.id, next), now)
            .unwrap_err();
        assert_eq!(err.code, "capacity_headroom", "{}", err.message);
        let update = CapacityUpdate {
            aggregation_id: AggregationId(1),
            capacity: AggregatedCapacity {
                up_flex_kw: Decimal::from(1000),
                down_flex_kw: Decimal::from(1000),
                energy_kwh: Decimal::ZERO,
                charge_headroom_kwh: Decimal::ZERO,
                available_resources: 1,
            },
            storage: None,
            at: now,
        };
        gate.on_capacity(&update, &BatterySpec::default(), now);
        assert_eq!(gate.evaluate(&request("a-3", rt.id, next), now), Ok(()));
        let cancel = gate.engage_kill_switch(StrategyId(1), "test", now);
        assert_eq!(cancel, vec![ClientOrderId::new("a-3").unwrap()]);
        let err = gate
            .evaluate(&request("a-4", rt.id, next), now)
            .unwrap_err();
        assert_eq!(err.code, "kill_switch");
    }
}
