//! Kill switch end to end at the actor level, against the real venue simulator on loopback:
//! risk monitor -> OMS -> market connector -> WsAdapter -> venue. Engaging a switch through
//! `RiskControl` cancels the working orders in its scope AT THE VENUE and refuses new intents
//! in scope (the strategy gets `kill_switch`); per strategy, per aggregation and global;
//! releasing resumes trading. Every action is audited and every rejection and alert is a
//! `risk_events` row in the store.
//!
//! Waits poll the venue or the store under a generous guard; nothing asserts on time.

use actix::prelude::*;
use chrono::TimeZone;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use vpp_actors::live::connector::{run_connector, ConnectorWiring};
use vpp_actors::live::messages::{Intent, RiskControl, RiskReply, ToRisk, ToStrategy};
use vpp_actors::live::oms::{OmsLogic, OmsWiring, SharedLedger};
use vpp_actors::live::risk::{RiskJournal, RiskLogic, RiskWiring, SharedRisk};
use vpp_actors::live::StrategyRoutes;
use vpp_actors::mailbox::{BoundedSender, Refused};
use vpp_actors::supervisor::{LogicFault, Runtime, SupervisedActor, SupervisorSpec};
use vpp_engine::clock::{Clock, ManualClock};
use vpp_engine::ids::{AggregationId, ClientOrderId, MarketId, StrategyId};
use vpp_engine::ledger::OrderLedger;
use vpp_engine::market::{DeliveryInterval, Market, MarketKind, Product};
use vpp_engine::order::{OrderRequest, Side, TimeInForce};
use vpp_engine::strategy::OrderIntent;
use vpp_market_adapters::client::{AdapterConfig, ConnectionState, MarketMapping, WsAdapter};
use vpp_market_adapters::protocol::{ClientMsg, OpenOrdersQuery, VenueMsg};
use vpp_market_adapters::sim::server::{VenueHandle, VenueServer};
use vpp_market_adapters::sim::venue::{AccountConfig, VenueConfig};
use vpp_persistence::Store;
use vpp_risk::{Capacity, KillScope, LimitScope, RiskConfig, RiskEngine, RiskError, RiskLimits};

const KEY: &str = "kill-key";
const RT: MarketId = MarketId(2);
/// Guard against a hung test; never asserted on.
const GUARD: Duration = Duration::from_secs(20);

fn t0() -> vpp_engine::Timestamp {
    chrono::Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap()
}

fn market() -> Market {
    Market {
        id: RT,
        name: "yn-rt".into(),
        kind: MarketKind::RealTime,
        timezone: chrono_tz::Asia::Shanghai,
        price_cap_cny_per_mwh: Decimal::from(1500),
        price_floor_cny_per_mwh: Decimal::ZERO,
        negative_prices_allowed: false,
        gate_closure_minutes_before: 0,
    }
}

/// Stands in for the strategies: records every message risk or the OMS sends them.
#[derive(Default, Clone)]
struct Inbox(Arc<Mutex<Vec<(StrategyId, ToStrategy)>>>);

struct StrategySink {
    id: StrategyId,
    inbox: Inbox,
}

impl Actor for StrategySink {
    type Context = Context<Self>;
}

impl Handler<ToStrategy> for StrategySink {
    type Result = Result<(), Refused>;
    fn handle(&mut self, msg: ToStrategy, _: &mut Context<Self>) -> Self::Result {
        self.inbox.0.lock().unwrap().push((self.id, msg));
        Ok(())
    }
}

impl Inbox {
    fn rejection_code(&self, id: &str) -> Option<String> {
        self.0.lock().unwrap().iter().find_map(|(_, m)| match m {
            ToStrategy::Rejected(r) if r.client_order_id.as_str() == id => Some(r.code.clone()),
            _ => None,
        })
    }
}

struct Harness {
    clock: Arc<ManualClock>,
    venue: VenueHandle,
    risk: BoundedSender<ToRisk>,
    control: Recipient<RiskControl>,
    inbox: Inbox,
    store: Store,
}

/// Polls `f` until it holds (bounded by [`GUARD`]); panics with `what` otherwise.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        actix::clock::sleep(Duration::from_millis(5)).await;
    }
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(RiskConfig::default()).await
    }

    async fn start_with(config: RiskConfig) -> Self {
        let clock = Arc::new(ManualClock::new(t0()));
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let rt = Runtime::new(Arc::clone(&dyn_clock));
        let venue = VenueServer::start(
            VenueConfig {
                accounts: vec![AccountConfig {
                    account: "vpp".into(),
                    api_key: KEY.into(),
                }],
                heartbeat_interval_ms: 200,
                tick_ms: 0,
                sim_quotes: false,
                ..VenueConfig::default()
            },
            Arc::clone(&dyn_clock),
        )
        .await
        .unwrap();

        let store = Store::open("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let journal = store
            .start_journal(vpp_persistence::JournalConfig::default())
            .await
            .unwrap()
            .writer;

        let ledger: SharedLedger = Arc::new(Mutex::new(OrderLedger::new()));
        let routes: StrategyRoutes = Arc::new(Mutex::new(HashMap::new()));
        let inbox = Inbox::default();
        for id in [1, 2, 3] {
            let sink = StrategySink {
                id: StrategyId(id),
                inbox: inbox.clone(),
            }
            .start();
            let tx = BoundedSender::new(
                sink.recipient(),
                format!("strategy/{id}").as_str().into(),
                256,
                &rt.metrics,
            );
            routes.lock().unwrap().insert(StrategyId(id), tx);
        }

        let (conn_tx, conn_rx) = mpsc::channel(256);
        let risk_slot = Arc::new(OnceLock::new());
        let oms = SupervisedActor::new(
            SupervisorSpec::new("oms"),
            rt.clone(),
            OmsLogic::new(OmsWiring {
                ledger: Arc::clone(&ledger),
                journal,
                connector: conn_tx,
                risk: Arc::clone(&risk_slot),
                strategies: Arc::clone(&routes),
                dispatch: Vec::new(),
                clock: Arc::clone(&dyn_clock),
                metrics: rt.metrics.clone(),
            }),
            |_| Err(LogicFault::new("not rebuilt in this test")),
        )
        .unwrap()
        .start();

        let mut engine = RiskEngine::new(config).unwrap();
        engine.register_market(market()).unwrap();
        for agg in [1, 2] {
            let cap = Capacity {
                up_flex_mw: Decimal::from(100),
                down_flex_mw: Decimal::from(100),
            };
            engine.update_capacity(AggregationId(agg), cap).unwrap();
        }
        engine.on_tick(t0());
        let (risk_journal, _writer) = RiskJournal::spawn(store.clone(), 1_024, &rt.metrics);
        let risk_w = RiskWiring {
            engine: Arc::new(Mutex::new(engine)),
            clock: Arc::clone(&dyn_clock),
            oms: oms.sender(),
            strategies: Arc::clone(&routes),
            metrics: rt.metrics.clone(),
            journal: Some(risk_journal),
        };
        let rebuild_w = risk_w.clone();
        let risk = SupervisedActor::new(
            SupervisorSpec::new("risk"),
            rt.clone(),
            RiskLogic::new(risk_w),
            move |_: &SharedRisk| Ok(RiskLogic::new(rebuild_w.clone())),
        )
        .unwrap()
        .start();
        let _ = risk_slot.set(risk.sender());

        let (adapter, events) = WsAdapter::connect(
            AdapterConfig {
                venue: "sim".into(),
                url: venue.url(),
                api_key: KEY.into(),
                markets: vec![MarketMapping {
                    market_id: RT,
                    symbol: "yn-rt".into(),
                }],
                ..AdapterConfig::default()
            },
            Arc::clone(&dyn_clock),
        );
        let adapter = Arc::new(adapter);
        let mut state = adapter.state_watch();
        actix::spawn(run_connector(
            ConnectorWiring {
                venue: "sim".into(),
                clock: Arc::clone(&dyn_clock),
                metrics: rt.metrics.clone(),
                health: rt.health.clone(),
                oms: oms.recipient(),
                risk: risk.sender(),
                strategies: Arc::new(std::sync::RwLock::new(Vec::new())),
                symbols: HashMap::from([("yn-rt".to_owned(), RT)]),
                settlement: Vec::new(),
            },
            Arc::clone(&adapter),
            events,
            conn_rx,
        ));
        tokio::time::timeout(GUARD, state.wait_for(|s| *s == ConnectionState::Live))
            .await
            .expect("venue session live")
            .unwrap();
        Self {
            clock,
            venue,
            risk: risk.sender(),
            control: risk.addr.recipient(),
            inbox,
            store,
        }
    }

    /// A resting sell (no counterparty: the venue quotes nothing) from `strategy` in `agg`.
    fn intent(&self, id: &str, strategy: u64, agg: u64) {
        let request = OrderRequest {
            client_order_id: ClientOrderId::new(id).unwrap(),
            strategy_id: Some(StrategyId(strategy)),
            aggregation_id: AggregationId(agg),
            market_id: RT,
            product: Product::Energy,
            interval: DeliveryInterval::containing(self.clock.now() + chrono::Duration::hours(1)),
            side: Side::Sell,
            quantity_mw: Decimal::ONE,
            price_cny_per_mwh: Decimal::from(900),
            time_in_force: TimeInForce::Gtc,
        };
        let intent = Intent {
            intent: OrderIntent::New(request),
            t0_ns: 0,
        };
        self.risk.try_send(ToRisk::Intent(intent)).unwrap();
    }

    /// Client order ids open at the venue, sorted.
    fn open_at_venue(&self) -> Vec<String> {
        let replies = self
            .venue
            .submit_as(KEY, ClientMsg::OpenOrders(OpenOrdersQuery {}));
        let mut ids: Vec<String> = replies
            .into_iter()
            .filter_map(|m| match m {
                VenueMsg::OpenOrders(r) => Some(r.orders),
                _ => None,
            })
            .flatten()
            .map(|o| o.client_order_id.as_str().to_owned())
            .collect();
        ids.sort();
        ids
    }

    async fn wait_open(&self, expected: &[&str]) {
        let what = format!("venue open orders == {expected:?}");
        eventually(&what, || self.open_at_venue() == expected).await;
    }

    async fn wait_refused(&self, id: &str) {
        let what = format!("{id} refused by the kill switch");
        eventually(&what, || self.inbox.rejection_code(id).is_some()).await;
        assert_eq!(
            self.inbox.rejection_code(id).as_deref(),
            Some("kill_switch")
        );
    }

    /// The audit log once it holds at least `n` entries (the writer task batches).
    async fn audit(&self, n: usize) -> Vec<vpp_persistence::AuditEntry> {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let rows = self.store.list_audit(0, 100).await.unwrap();
            if rows.len() >= n || tokio::time::Instant::now() >= deadline {
                return rows;
            }
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The risk events once there are at least `n`.
    async fn risk_events(&self, n: usize) -> Vec<vpp_persistence::RiskEvent> {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let rows = self.store.list_risk_events(0, 100).await.unwrap();
            if rows.len() >= n || tokio::time::Instant::now() >= deadline {
                return rows;
            }
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn control(&self, cmd: RiskControl) -> Result<RiskReply, RiskError> {
        self.control.send(cmd).await.unwrap().unwrap()
    }

    async fn engage(&self, scope: KillScope, why: &str) -> RiskReply {
        self.control(RiskControl::EngageKillSwitch {
            scope,
            who: "alice".into(),
            why: why.into(),
        })
        .await
        .unwrap()
    }

    async fn release(&self, scope: KillScope) -> Result<RiskReply, RiskError> {
        self.control(RiskControl::ReleaseKillSwitch {
            scope,
            who: "bob".into(),
        })
        .await
    }
}

#[actix::test]
async fn kill_switch_cancels_at_the_venue_refuses_in_scope_and_release_resumes() {
    let h = Harness::start().await;
    // Strategies 1 and 2 trade for aggregation 1, strategy 3 for aggregation 2.
    h.intent("s1-a", 1, 1);
    h.intent("s1-b", 1, 1);
    h.intent("s2-a", 2, 1);
    h.intent("s3-a", 3, 2);
    h.wait_open(&["s1-a", "s1-b", "s2-a", "s3-a"]).await;

    // Strategy scope: only strategy 1's orders go, only strategy 1 is refused.
    let reply = h
        .engage(KillScope::Strategy(StrategyId(1)), "runaway")
        .await;
    assert_eq!(
        reply,
        RiskReply::KillSwitchEngaged {
            scope: KillScope::Strategy(StrategyId(1)),
            newly_engaged: true,
            cancel_requested: 2,
            oms_refused: None,
        }
    );
    h.wait_open(&["s2-a", "s3-a"]).await;
    h.intent("s1-c", 1, 1);
    h.wait_refused("s1-c").await;
    h.intent("s2-b", 2, 1);
    h.wait_open(&["s2-a", "s2-b", "s3-a"]).await;

    // Aggregation scope: strategy 2's orders (aggregation 1) go; aggregation 2 keeps trading.
    h.engage(KillScope::Aggregation(AggregationId(1)), "meter fault")
        .await;
    h.wait_open(&["s3-a"]).await;
    h.intent("s2-c", 2, 1);
    h.wait_refused("s2-c").await;
    h.intent("s3-b", 3, 2);
    h.wait_open(&["s3-a", "s3-b"]).await;

    // Releasing the strategy alone is not enough while its aggregation is engaged.
    h.release(KillScope::Strategy(StrategyId(1))).await.unwrap();
    h.intent("s1-d", 1, 1);
    h.wait_refused("s1-d").await;
    h.release(KillScope::Aggregation(AggregationId(1)))
        .await
        .unwrap();
    h.intent("s1-e", 1, 1);
    h.wait_open(&["s1-e", "s3-a", "s3-b"]).await;

    // Global: everything goes, everything is refused; release resumes.
    let reply = h.engage(KillScope::Global, "exchange outage").await;
    assert!(
        matches!(
            reply,
            RiskReply::KillSwitchEngaged {
                cancel_requested: 3,
                ..
            }
        ),
        "{reply:?}"
    );
    h.wait_open(&[]).await;
    h.intent("s3-c", 3, 2);
    h.wait_refused("s3-c").await;
    let RiskReply::KillSwitches { engaged, history } =
        h.control(RiskControl::KillSwitches).await.unwrap()
    else {
        panic!("kill switch listing expected")
    };
    assert_eq!(engaged.len(), 1);
    assert_eq!(
        (engaged[0].0, engaged[0].1.who.as_str()),
        (KillScope::Global, "alice")
    );
    assert_eq!(engaged[0].1.why, "exchange outage");
    assert_eq!(history.len(), 5);
    h.release(KillScope::Global).await.unwrap();
    h.intent("s3-d", 3, 2);
    h.wait_open(&["s3-d"]).await;

    // Releasing a switch that is not engaged is refused, and audited as such.
    let err = h.release(KillScope::Global).await.unwrap_err();
    assert!(matches!(err, RiskError::KillSwitch(_)), "{err:?}");

    // The audit log: who did what to which switch, and the outcome.
    let audit = h.audit(7).await;
    let rows: Vec<(&str, &str, &str, &str)> = audit
        .iter()
        .map(|a| {
            let outcome = a.outcome.split(':').next().unwrap_or("");
            (
                a.actor.as_str(),
                a.action.as_str(),
                a.target.as_str(),
                outcome,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("alice", "kill_switch.engage", "strategy/1", "ok"),
            ("alice", "kill_switch.engage", "aggregation/1", "ok"),
            ("bob", "kill_switch.release", "strategy/1", "ok"),
            ("bob", "kill_switch.release", "aggregation/1", "ok"),
            ("alice", "kill_switch.engage", "global", "ok"),
            ("bob", "kill_switch.release", "global", "ok"),
            ("bob", "kill_switch.release", "global", "failed"),
        ]
    );
    assert_eq!(audit[0].detail["why"], "runaway");
    assert_eq!(audit[0].detail["open_orders"], 2);

    // Risk events: the four refusals and the three engagements and releases.
    let events = h.risk_events(10).await;
    let refused: Vec<&str> = events
        .iter()
        .filter(|e| e.rule == "kill_switch")
        .filter_map(|e| e.client_order_id.as_ref().map(|c| c.as_str()))
        .collect();
    assert_eq!(refused, ["s1-c", "s2-c", "s1-d", "s3-c"]);
    let s1c = events.iter().find(|e| e.rule == "kill_switch").unwrap();
    assert_eq!(
        (s1c.strategy_id, s1c.aggregation_id),
        (Some(StrategyId(1)), Some(AggregationId(1)))
    );
    let count = |rule: &str| events.iter().filter(|e| e.rule == rule).count();
    assert_eq!(count("kill_switch_engaged"), 3);
    assert_eq!(count("kill_switch_released"), 3);
}

#[actix::test]
async fn limits_change_at_run_time_through_the_actor_and_every_change_is_audited() {
    let h = Harness::start().await;
    let scope = LimitScope::Strategy(StrategyId(3));
    let RiskReply::Limits { limits, .. } = h.control(RiskControl::GetLimits(scope)).await.unwrap()
    else {
        panic!("limits expected")
    };
    assert_eq!(limits, RiskLimits::default());

    // An invalid change (a negative limit; zero would mean "none allowed") is refused with the
    // field named, and audited as failed.
    let bad = RiskLimits {
        max_order_mw: Decimal::NEGATIVE_ONE,
        ..limits.clone()
    };
    let err = h
        .control(RiskControl::SetLimits {
            scope,
            limits: bad,
            who: "carol".into(),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_order_mw"), "{err}");

    // A valid one applies at once: 1 MW passes, 1 MW is now too much for 0.5 MW.
    let tight = RiskLimits {
        max_order_mw: Decimal::new(5, 1),
        ..limits.clone()
    };
    let reply = h
        .control(RiskControl::SetLimits {
            scope,
            limits: tight.clone(),
            who: "carol".into(),
        })
        .await
        .unwrap();
    let RiskReply::LimitsChanged(change) = reply else {
        panic!("change expected")
    };
    assert_eq!((change.old, change.new.clone()), (limits, tight.clone()));
    let RiskReply::Limits { limits: now, .. } =
        h.control(RiskControl::GetLimits(scope)).await.unwrap()
    else {
        panic!("limits expected")
    };
    assert_eq!(now, tight);
    h.intent("big", 3, 2);
    let what = "big refused";
    eventually(what, || h.inbox.rejection_code("big").is_some()).await;
    assert_eq!(
        h.inbox.rejection_code("big").as_deref(),
        Some("max_order_quantity")
    );
    // Another strategy keeps the defaults.
    h.intent("other", 2, 2);
    h.wait_open(&["other"]).await;

    let audit = h.audit(2).await;
    assert_eq!(audit.len(), 2);
    assert_eq!(
        (
            audit[0].actor.as_str(),
            audit[0].action.as_str(),
            audit[0].target.as_str()
        ),
        ("carol", "risk_limits.update", "strategy/3")
    );
    assert!(
        audit[0].outcome.starts_with("failed: "),
        "{}",
        audit[0].outcome
    );
    assert_eq!(audit[1].outcome, "ok");
    assert_eq!(audit[1].detail["new"]["max_order_mw"], "0.5");
}

#[actix::test]
async fn a_critical_deviation_engages_the_strategys_kill_switch_when_policy_says_so() {
    let mut config = RiskConfig::default();
    config.deviation.critical_engages_kill_switch = true;
    let h = Harness::start_with(config).await;
    h.intent("s1-a", 1, 1);
    h.intent("s3-a", 3, 2);
    h.wait_open(&["s1-a", "s3-a"]).await;
    let sample = |metered_kwh| vpp_risk::DeliverySample {
        aggregation_id: AggregationId(1),
        interval: DeliveryInterval::containing(t0()),
        awarded_kwh: Decimal::from(1_000),
        dispatched_kwh: Decimal::from(1_000),
        metered_kwh: Decimal::from(metered_kwh),
        strategy_id: Some(StrategyId(1)),
    };
    // A warning (10 % off) only alerts; a critical breach (20 % off) stops the strategy.
    h.risk.try_send(ToRisk::Delivery(sample(900))).unwrap();
    h.risk.try_send(ToRisk::Delivery(sample(800))).unwrap();
    h.wait_open(&["s3-a"]).await;
    h.intent("s1-b", 1, 1);
    h.wait_refused("s1-b").await;
    let audit = h.audit(1).await;
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].actor.as_str(),
            audit[0].action.as_str(),
            audit[0].target.as_str()
        ),
        ("deviation-monitor", "kill_switch.engage", "strategy/1")
    );
    let events = h.risk_events(4).await;
    let rules: Vec<&str> = events.iter().map(|e| e.rule.as_str()).collect();
    assert_eq!(
        rules,
        [
            "deviation_warning",
            "deviation_critical",
            "kill_switch_engaged",
            "kill_switch"
        ]
    );
    assert_eq!(events[1].severity, "critical");
    assert_eq!(events[1].strategy_id, Some(StrategyId(1)));
}
