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
