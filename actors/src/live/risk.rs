//! The RiskMonitor actor: every new-order intent passes the pure [`RiskEngine`] pre-trade
//! checks before it reaches the OMS; cancels and replaces pass straight through (reducing risk
//! must never be blocked). Order events from the OMS keep the engine's state in step.
//!
//! Invariants:
//! - An approved intent the OMS mailbox refuses is un-reserved and goes back to its strategy
//!   as a rejection with the refusal's reason; a rejected intent goes back with the risk
//!   engine's stable reject code. Nothing is dropped silently.
//! - The engine lives behind a shared handle that is also the supervision snapshot: each
//!   engine call is all-or-nothing, so after a crash the rebuilt actor continues with the same
//!   reservations and positions instead of forgetting them.
//! - Check time is recorded in `risk_check{scope=pre_trade}`.

use super::messages::{Intent, ToOms, ToRisk, ToStrategy};
use super::StrategyRoutes;
use crate::mailbox::BoundedSender;
use crate::metrics::{LatencyRecorder, Metrics, Stage};
use crate::supervisor::{Handles, LogicFault, SupervisedLogic};
use std::sync::{Arc, Mutex, PoisonError};
use vpp_engine::clock::Clock;
use vpp_engine::strategy::{OrderIntent, RiskRejection};
use vpp_risk::{Capacity, RiskEngine};

pub type SharedRisk = Arc<Mutex<RiskEngine>>;

#[derive(Clone)]
pub struct RiskWiring {
    pub engine: SharedRisk,
    pub clock: Arc<dyn Clock>,
    pub oms: BoundedSender<ToOms>,
    pub strategies: StrategyRoutes,
    pub metrics: Metrics,
}

pub struct RiskLogic {
    w: RiskWiring,
    check: LatencyRecorder,
}

impl RiskLogic {
    pub fn new(w: RiskWiring) -> Self {
        let check = w.metrics.latency(Stage::RiskCheck, "pre_trade");
        Self { w, check }
    }

    fn reject(&self, reject: RiskRejection, strategy: Option<vpp_engine::ids::StrategyId>) {
        let Some(id) = strategy else {
            tracing::warn!(code = %reject.code, message = %reject.message, "intent without strategy rejected");
            return;
        };
        let routes = self
            .w
            .strategies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match routes.get(&id) {
            Some(tx) => {
                if let Err(e) = tx.try_send(ToStrategy::Rejected(reject)) {
                    tracing::warn!(strategy = %id, error = %e, "rejection could not reach its strategy");
                }
            }
            None => tracing::warn!(strategy = %id, "rejection for an unknown strategy"),
        }
    }

    fn on_intent(&mut self, intent: Intent) {
        let OrderIntent::New(request) = &intent.intent else {
            self.forward_to_oms(intent);
            return;
        };
        let now = self.w.clock.now();
        let start = self.w.clock.monotonic_ns();
        let verdict = self
            .w
            .engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .evaluate(request, now);
        self.check
            .record_between(start, self.w.clock.monotonic_ns());
        match verdict {
            Ok(()) => self.forward_to_oms(intent),
            Err(event) => {
                tracing::debug!(client_order_id = %request.client_order_id, code = event.kind.code_str(),
                    message = %event.message, "intent rejected by risk");
                let reject = RiskRejection {
                    client_order_id: request.client_order_id.clone(),
                    code: event.kind.code_str().to_owned(),
                    message: event.message.clone(),
                };
                self.reject(reject, request.strategy_id);
            }
        }
    }

    fn forward_to_oms(&mut self, intent: Intent) {
        let Err(rejected) = self.w.oms.try_send(ToOms::Approved(intent)) else {
            return;
        };
        let (msg, reason) = rejected.into_parts();
        let ToOms::Approved(Intent {
            intent: OrderIntent::New(request),
            ..
        }) = msg
        else {
            tracing::error!(reason = %reason, "cancel/replace refused by the OMS mailbox");
            return;
        };
        self.w
            .engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release_reservation(&request.client_order_id);
        let reject = RiskRejection {
            client_order_id: request.client_order_id.clone(),
            code: reason.reason().to_owned(),
            message: reason.to_string(),
        };
        self.reject(reject, request.strategy_id);
    }
}

impl SupervisedLogic for RiskLogic {
    type Snapshot = SharedRisk;
    fn snapshot(&self) -> SharedRisk {
        Arc::clone(&self.w.engine)
    }
}

impl Handles<ToRisk> for RiskLogic {
    type Reply = ();
    fn handle(&mut self, msg: ToRisk) -> Result<(), LogicFault> {
        match msg {
            ToRisk::Intent(i) => self.on_intent(i),
            ToRisk::Order { event, outcome } => self
                .w
                .engine
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .apply_order_event(&event, &outcome),
            ToRisk::Capacity {
                aggregation_id,
                up_flex_mw,
                down_flex_mw,
            } => {
                let cap = Capacity {
                    up_flex_mw,
                    down_flex_mw,
                };
                let mut engine = self.w.engine.lock().unwrap_or_else(PoisonError::into_inner);
                if let Err(e) = engine.update_capacity(aggregation_id, cap) {
                    tracing::warn!(error = %e, "capacity update refused by risk");
                }
            }
            ToRisk::Reference {
                market,
                interval,
                price_cny_per_mwh,
            } => {
                let mut engine = self.w.engine.lock().unwrap_or_else(PoisonError::into_inner);
                // A full reference table only loosens the collar; counted in risk's own logs.
                let _ = engine.set_reference_price(market, interval, price_cny_per_mwh);
            }
            ToRisk::KillAll { reason } => {
                let now = self.w.clock.now();
                let mut engine = self.w.engine.lock().unwrap_or_else(PoisonError::into_inner);
                match engine.engage_kill_switch(vpp_risk::KillScope::Global, "daemon", &reason, now)
                {
                    Ok(_) => tracing::warn!(%reason, "global kill switch engaged"),
                    Err(e) => tracing::error!(error = %e, "kill switch not engaged"),
                }
            }
            ToRisk::Tick(now) => self
                .w
                .engine
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .on_tick(now),
        }
        Ok(())
    }
}
