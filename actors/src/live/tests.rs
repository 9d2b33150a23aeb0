//! Supervision of live strategy actors with the real OMS: a strategy panicking on every third
//! message keeps being restarted within its limits while a healthy one keeps trading; one
//! panicking on every message is halted and the OMS cancels its open orders. Time for the
//! intensity window comes from a `ManualClock`; no timing assertions.

use super::messages::{ConnectorCmd, MdConflator, ToOms, ToRisk};
use super::oms::{OmsLogic, OmsWiring, SharedLedger};
use super::strategy::{StrategyLogic, StrategyWiring};
use super::{strategies, StrategyRoutes};
use crate::mailbox::{BoundedSender, Refused};
use crate::supervisor::{
    GetStatus, RestartPolicy, RunState, Runtime, SupervisedActor, SupervisorSpec,
};
use actix::prelude::*;
use chrono::TimeZone;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use vpp_engine::clock::{Clock, ManualClock};
use vpp_engine::ids::{AggregationId, ClientOrderId, MarketId, StrategyId};
use vpp_engine::ledger::{OrderEvent, OrderEventKind, OrderLedger};
use vpp_engine::market::{DeliveryInterval, Market, MarketKind, Product};
use vpp_engine::order::{OrderRequest, Side, TimeInForce};
use vpp_engine::strategy::{HostConfig, MarketData, PriceLevel, StrategyInit, StrategyParams};

/// Stands in for the risk monitor: counts the new-order intents it receives.
struct RiskSink(Arc<AtomicUsize>);

impl Actor for RiskSink {
    type Context = Context<Self>;
}

impl Handler<ToRisk> for RiskSink {
    type Result = Result<(), Refused>;
    fn handle(&mut self, msg: ToRisk, _: &mut Context<Self>) -> Self::Result {
        if let ToRisk::Intent(i) = msg {
            if matches!(i.intent, vpp_engine::strategy::OrderIntent::New(_)) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

fn market() -> Market {
    Market {
        id: MarketId(1),
        name: "rt".into(),
        kind: MarketKind::RealTime,
        timezone: chrono_tz::Asia::Shanghai,
        price_cap_cny_per_mwh: Decimal::from(1500),
        price_floor_cny_per_mwh: Decimal::ZERO,
        negative_prices_allowed: false,
        gate_closure_minutes_before: 0,
    }
}

fn resting(id: &str, strategy: u64, at: vpp_engine::Timestamp) -> OrderEvent {
    let request = OrderRequest {
        client_order_id: ClientOrderId::new(id).unwrap(),
        strategy_id: Some(StrategyId(strategy)),
        aggregation_id: AggregationId(1),
        market_id: MarketId(1),
        product: Product::Energy,
        interval: DeliveryInterval::containing(at + chrono::Duration::hours(2)),
        side: Side::Sell,
        quantity_mw: Decimal::ONE,
        price_cny_per_mwh: Decimal::from(900),
        time_in_force: TimeInForce::Gtc,
    };
    OrderEvent {
        client_order_id: request.client_order_id.clone(),
        at,
        kind: OrderEventKind::Created { request },
    }
}

fn book_top(at: vpp_engine::Timestamp, n: i64) -> MarketData {
    MarketData::BookTop {
        market: MarketId(1),
        interval: DeliveryInterval::containing(at + chrono::Duration::hours(1)),
        best_bid: Some(PriceLevel {
            price_cny_per_mwh: Decimal::from(300 + n),
            quantity_mw: Decimal::ONE,
        }),
        best_ask: Some(PriceLevel {
            price_cny_per_mwh: Decimal::from(310 + n),
            quantity_mw: Decimal::ONE,
        }),
        at,
    }
}

struct Started {
    addr: Addr<SupervisedActor<StrategyLogic>>,
    md: MdConflator,
    wake: Recipient<super::messages::MdWake>,
}

#[allow(clippy::too_many_arguments)]
fn start_strategy(
    rt: &Runtime,
    id: u64,
    kind: &str,
    params: &[(&str, i64)],
    risk: &BoundedSender<ToRisk>,
    oms: &BoundedSender<ToOms>,
    routes: &StrategyRoutes,
    policy: RestartPolicy,
) -> Started {
    let mut p = StrategyParams::new();
    for (k, v) in params {
        p = p.with(k, Decimal::from(*v)).unwrap();
    }
    let name = format!("strategy/{kind}{id}");
    let md = MdConflator::new(name.as_str().into(), 64, &rt.metrics);
    let wiring = StrategyWiring {
        init: StrategyInit {
            strategy_id: StrategyId(id),
            name: name.clone(),
            kind: kind.into(),
            aggregation_id: AggregationId(1),
            market: market(),
            params: p,
        },
        host: HostConfig::new(StrategyId(id), AggregationId(1)),
        registry: Arc::new(strategies::registry()),
        clock: Arc::clone(&rt.clock),
        risk: risk.clone(),
        md: md.clone(),
        metrics: rt.metrics.clone(),
        issued: Arc::new(AtomicU64::new(0)),
        ledger: None,
    };
    let oms = oms.clone();
    let spec = SupervisorSpec::new(name.as_str())
        .policy(policy)
        .on_escalation(move |_| {
            let _ = oms.try_send(ToOms::HaltStrategy(StrategyId(id)));
        });
    let rebuild = wiring.clone();
    let logic = StrategyLogic::new(wiring, |_| {}).unwrap();
    let handle = SupervisedActor::new(spec, rt.clone(), logic, move |snap| {
        StrategyLogic::rebuild(rebuild.clone(), snap)
    })
    .unwrap()
    .start();
    routes
        .lock()
        .unwrap()
        .insert(StrategyId(id), handle.sender());
    Started {
        wake: handle.recipient(),
        addr: handle.addr,
        md,
    }
}

#[actix::test]
async fn flaky_strategy_restarts_within_limits_and_a_hopeless_one_is_halted_and_cancelled() {
    let start = chrono::Utc.with_ymd_and_hms(2026, 6, 1, 2, 0, 0).unwrap();
    let clock = ManualClock::new(start);
    let rt = Runtime::new(Arc::new(clock.clone()));
    let store = vpp_persistence::Store::open("sqlite::memory:")
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let journal = store
        .start_journal(vpp_persistence::JournalConfig::default())
        .await
        .unwrap()
        .writer;

    // The hopeless strategy (id 2) has two resting orders, the healthy one (id 3) one.
    let mut ledger = OrderLedger::new();
    for (seq, (id, strategy)) in [("s2-1", 2), ("s2-2", 2), ("s3-1", 3)]
        .into_iter()
        .enumerate()
    {
        ledger.apply(&resting(id, strategy, start)).unwrap();
        let report = vpp_engine::order::ExecReport {
            seq: seq as u64 + 1,
            client_order_id: ClientOrderId::new(id).unwrap(),
            venue_order_id: Some(format!("v{seq}")),
            kind: vpp_engine::order::ExecKind::Accepted,
            at: start,
        };
        let accepted = OrderEvent {
            client_order_id: report.client_order_id.clone(),
            at: start,
            kind: OrderEventKind::Report { report },
        };
        ledger.apply(&accepted).unwrap();
    }
    let ledger: SharedLedger = Arc::new(Mutex::new(ledger));
    let routes: StrategyRoutes = Arc::new(Mutex::new(HashMap::new()));
    let (conn_tx, mut conn_rx) = mpsc::channel(64);
    let oms = SupervisedActor::new(
        SupervisorSpec::new("oms"),
        rt.clone(),
        OmsLogic::new(OmsWiring {
            ledger: Arc::clone(&ledger),
            journal,
            connector: conn_tx,
            risk: Arc::new(OnceLock::new()),
            strategies: Arc::clone(&routes),
            dispatch: Vec::new(),
            clock: Arc::clone(&rt.clock),
            metrics: rt.metrics.clone(),
        }),
        |_| {
            Err(crate::supervisor::LogicFault::new(
                "not rebuilt in this test",
            ))
        },
    )
    .unwrap()
    .start();
    let intents = Arc::new(AtomicUsize::new(0));
    let sink = RiskSink(Arc::clone(&intents)).start();
    let risk = BoundedSender::new(sink.recipient(), "risk".into(), 1_024, &rt.metrics);

    let policy = RestartPolicy {
        max_restarts: 2,
        within: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(2),
    };
    let oms_tx = oms.sender();
    let flaky = start_strategy(
        &rt,
        1,
        "chaos",
        &[("panic_every", 3)],
        &risk,
        &oms_tx,
        &routes,
        policy,
    );
    let hopeless = start_strategy(
        &rt,
        2,
        "chaos",
        &[("panic_every", 1)],
        &risk,
        &oms_tx,
        &routes,
        policy,
    );
    let healthy = start_strategy(
        &rt,
        3,
        "order_flow",
        &[("every_n", 1)],
        &risk,
        &oms_tx,
        &routes,
        policy,
    );

    const MESSAGES: i64 = 30;
    for n in 0..MESSAGES {
        // 4 s per message: the flaky one fails every 12 s (1 restart per 10 s window, limit 2);
        // the hopeless one fails every 4 s and exceeds the limit at its third failure.
        clock.advance(chrono::Duration::seconds(4));
        let data = book_top(clock.now(), n);
        for s in [&flaky, &hopeless, &healthy] {
            let sender = s.md.sender(s.wake.clone());
            sender.publish(data.key(), (data, 0)).unwrap();
            // A status round trip: FIFO behind the wake, so the data has been handled.
            s.addr.send(GetStatus).await.unwrap();
        }
    }

    let flaky_status = flaky.addr.send(GetStatus).await.unwrap();
    assert_eq!(flaky_status.state, RunState::Running, "{flaky_status:?}");
    assert!(
        flaky_status.restarts_total >= (MESSAGES as u64) / 3 - 1,
        "flaky strategy restarted only {} times",
        flaky_status.restarts_total
    );
    let hopeless_status = hopeless.addr.send(GetStatus).await.unwrap();
    assert!(
        matches!(hopeless_status.state, RunState::Halted(_)),
        "{hopeless_status:?}"
    );
    assert!(
        intents.load(Ordering::SeqCst) >= (MESSAGES as usize) / 2,
        "healthy strategy sent only {} orders",
        intents.load(Ordering::SeqCst)
    );

    // The OMS got the halt and cancelled exactly the hopeless strategy's orders.
    oms.addr.send(GetStatus).await.unwrap();
    let mut cancelled = Vec::new();
    while let Ok(cmd) = conn_rx.try_recv() {
        if let ConnectorCmd::Cancel(id) = cmd {
            cancelled.push(id.as_str().to_owned());
        }
    }
    cancelled.sort();
    assert_eq!(cancelled, ["s2-1", "s2-2"]);
    let l = ledger.lock().unwrap();
    for id in ["s2-1", "s2-2"] {
        let o = l.order(&ClientOrderId::new(id).unwrap()).unwrap();
        assert_eq!(o.status, vpp_engine::order::OrderStatus::PendingCancel);
    }
}

/// Rejections the probe strategy saw, with code `mailbox_closed`.
static PROBE_REJECTS: AtomicUsize = AtomicUsize::new(0);

/// Submits one order per market data item and counts refusals that come back to it.
struct Probe(Market);

impl vpp_engine::strategy::Strategy for Probe {
    fn kind(&self) -> &'static str {
        "probe"
    }
    fn on_market_data(
        &mut self,
        ctx: &mut vpp_engine::strategy::StrategyContext<'_>,
        data: &MarketData,
    ) -> Result<(), vpp_engine::strategy::StrategyError> {
        ctx.submit(vpp_engine::strategy::NewOrder {
            market_id: self.0.id,
            product: Product::Energy,
            interval: data.interval(),
            side: Side::Buy,
            quantity_mw: Decimal::ONE,
            price_cny_per_mwh: Decimal::from(300),
            time_in_force: TimeInForce::Ioc,
        })?;
        Ok(())
    }
    fn on_risk_reject(
        &mut self,
        ctx: &mut vpp_engine::strategy::StrategyContext<'_>,
        reject: &vpp_engine::strategy::RiskRejection,
    ) -> Result<(), vpp_engine::strategy::StrategyError> {
        // The refused order is no longer open in the host's mirror.
        assert!(ctx.open_order(&reject.client_order_id).is_none());
        if reject.code == "mailbox_closed" {
            PROBE_REJECTS.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn snapshot(
        &self,
    ) -> Result<vpp_engine::strategy::StrategySnapshot, vpp_engine::strategy::StrategyError> {
        vpp_engine::strategy::StrategySnapshot::encode("probe", 1, &())
    }
    fn restore(
        &mut self,
        _: &vpp_engine::strategy::StrategySnapshot,
    ) -> Result<(), vpp_engine::strategy::StrategyError> {
        Ok(())
    }
}

fn probe(
    init: &StrategyInit,
) -> Result<Box<dyn vpp_engine::strategy::Strategy>, vpp_engine::strategy::StrategyError> {
    Ok(Box::new(Probe(init.market.clone())))
}

/// A risk monitor that has stopped: its mailbox is closed.
struct Stopped;

impl Actor for Stopped {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<ToRisk> for Stopped {
    type Result = Result<(), Refused>;
    fn handle(&mut self, _: ToRisk, _: &mut Context<Self>) -> Self::Result {
        Ok(())
    }
}

#[actix::test]
async fn an_intent_the_order_path_refuses_goes_back_to_its_strategy_with_the_reason() {
    let start = chrono::Utc.with_ymd_and_hms(2026, 6, 1, 2, 0, 0).unwrap();
    let clock = ManualClock::new(start);
    let rt = Runtime::new(Arc::new(clock.clone()));
    let stopped = Stopped.start();
    // Let the actor stop before anything is sent to it.
    while stopped.connected() {
        actix::clock::sleep(Duration::from_millis(1)).await;
    }
    let risk = BoundedSender::new(stopped.recipient(), "risk".into(), 16, &rt.metrics);
    let mut registry = vpp_engine::strategy::StrategyRegistry::new();
    registry.register("probe", probe).unwrap();
    let md = MdConflator::new("strategy/probe".into(), 64, &rt.metrics);
    let wiring = StrategyWiring {
        init: StrategyInit {
            strategy_id: StrategyId(9),
            name: "probe".into(),
            kind: "probe".into(),
            aggregation_id: AggregationId(1),
            market: market(),
            params: StrategyParams::new(),
        },
        host: HostConfig::new(StrategyId(9), AggregationId(1)),
        registry: Arc::new(registry),
        clock: Arc::clone(&rt.clock),
        risk,
        md: md.clone(),
        metrics: rt.metrics.clone(),
        issued: Arc::new(AtomicU64::new(0)),
        ledger: None,
    };
    let rebuild = wiring.clone();
    let handle = SupervisedActor::new(
        SupervisorSpec::new("strategy/probe"),
        rt.clone(),
        StrategyLogic::new(wiring, |_| {}).unwrap(),
        move |snap| StrategyLogic::rebuild(rebuild.clone(), snap),
    )
    .unwrap()
    .start();
    let sender = md.sender(handle.recipient());
    for n in 0..5 {
        clock.advance(chrono::Duration::seconds(1));
        let data = book_top(clock.now(), n);
        sender.publish(data.key(), (data, 0)).unwrap();
        handle.addr.send(GetStatus).await.unwrap();
    }
    let status = handle.addr.send(GetStatus).await.unwrap();
    assert_eq!(status.state, RunState::Running);
    assert_eq!(status.restarts_total, 0);
    assert_eq!(PROBE_REJECTS.load(Ordering::SeqCst), 5);
    let refused = rt.metrics.snapshot().counter(
        crate::metrics::names::REFUSALS_TOTAL,
        &[("actor", "risk"), ("reason", "mailbox_closed")],
    );
    assert_eq!(refused, Some(5));
}
