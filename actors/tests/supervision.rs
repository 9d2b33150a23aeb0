//! Supervision end to end with real actix actors on one arbiter: panics are caught at the
//! handler boundary, state is rebuilt from the last snapshot, the intensity limit escalates
//! exactly once, and neighbours keep processing. Time for the intensity window comes from a
//! `ManualClock`; backoffs are a few milliseconds. No timing assertions.

use actix::prelude::*;
use chrono::TimeZone;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vpp_actors::metrics::names;
use vpp_actors::{
    CrashCause, Escalation, GetStatus, Handles, Health, LogicFault, OverallHealth, Refusable,
    Refused, RestartPolicy, Resume, RunState, Runtime, SupervisedActor, SupervisedHandle,
    SupervisedLogic, SupervisorSpec,
};
use vpp_engine::clock::ManualClock;

/// Where refusals routed through `Refusable::refuse` end up: (seq, reason).
type RefusalLog = Arc<Mutex<Vec<(u64, &'static str)>>>;

/// A strategy-like message: a market tick.
#[derive(Message)]
#[rtype(result = "Result<u64, Refused>")]
struct Tick {
    seq: u64,
    refusals: Option<RefusalLog>,
}

fn tick(seq: u64) -> Tick {
    Tick {
        seq,
        refusals: None,
    }
}

impl Refusable for Tick {
    fn refuse(self, reason: &Refused) {
        if let Some(log) = self.refusals {
            log.lock().unwrap().push((self.seq, reason.reason()));
        }
    }
}

/// Reads the logic's state: (processed, sum of seqs).
#[derive(Message)]
#[rtype(result = "Result<(u64, u64), Refused>")]
struct Probe;

impl Refusable for Probe {
    /// The caller awaits the reply, which carries the refusal.
    fn refuse(self, _: &Refused) {}
}

/// The pure "strategy": counts ticks. It mutates its state *before* crashing, so a test can
/// tell a state rolled back to the snapshot from a state that kept the crash's half-update.
#[derive(Clone)]
struct StrategyLike {
    name: &'static str,
    processed: u64,
    sum: u64,
    panic_when: fn(u64) -> bool,
    fault_when: fn(u64) -> bool,
}

fn never(_: u64) -> bool {
    false
}

impl StrategyLike {
    fn new(name: &'static str, panic_when: fn(u64) -> bool) -> Self {
        Self {
            name,
            processed: 0,
            sum: 0,
            panic_when,
            fault_when: never,
        }
    }
}

impl SupervisedLogic for StrategyLike {
    type Snapshot = (u64, u64);
    fn snapshot(&self) -> (u64, u64) {
        (self.processed, self.sum)
    }
}

impl Handles<Tick> for StrategyLike {
    type Reply = u64;
    fn handle(&mut self, msg: Tick) -> Result<u64, LogicFault> {
        self.processed += 1;
        self.sum += msg.seq;
        if (self.panic_when)(msg.seq) {
            panic!("strategy {} panicked on tick {}", self.name, msg.seq);
        }
        if (self.fault_when)(msg.seq) {
            return Err(LogicFault::new(format!(
                "inconsistent book at tick {}",
                msg.seq
            )));
        }
        Ok(self.processed)
    }
}

impl Handles<Probe> for StrategyLike {
    type Reply = (u64, u64);
    fn handle(&mut self, _: Probe) -> Result<(u64, u64), LogicFault> {
        Ok((self.processed, self.sum))
    }
}

/// An OMS stand-in: records "cancel all orders of strategy X" commands.
struct OmsLike {
    cancelled_for: Arc<Mutex<Vec<String>>>,
}

impl Actor for OmsLike {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct CancelAllFor(String);

/// Reads what the OMS was told; FIFO behind any earlier `CancelAllFor`.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
struct CancelledSoFar;

impl Handler<CancelledSoFar> for OmsLike {
    type Result = MessageResult<CancelledSoFar>;
    fn handle(&mut self, _: CancelledSoFar, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.cancelled_for.lock().unwrap().clone())
    }
}

impl Handler<CancelAllFor> for OmsLike {
    type Result = ();
    fn handle(&mut self, msg: CancelAllFor, _: &mut Context<Self>) {
        self.cancelled_for.lock().unwrap().push(msg.0);
    }
}

fn test_runtime() -> (Runtime, ManualClock) {
    let start = chrono::Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    let clock = ManualClock::new(start);
    (Runtime::new(Arc::new(clock.clone())), clock)
}

fn policy(max_restarts: u32, within: Duration) -> RestartPolicy {
    RestartPolicy {
        max_restarts,
        within,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(4),
    }
}

fn start_strategy(
    rt: &Runtime,
    spec: SupervisorSpec,
    logic: StrategyLike,
) -> SupervisedHandle<StrategyLike> {
    let template = logic.clone();
    SupervisedActor::new(spec, rt.clone(), logic, move |&(processed, sum)| {
        Ok(StrategyLike {
            processed,
            sum,
            ..template.clone()
        })
    })
    .expect("valid policy")
    .start()
}

fn every_third(seq: u64) -> bool {
    seq % 3 == 0
}

fn always(_: u64) -> bool {
    true
}

#[actix::test]
async fn panicking_strategy_is_restarted_within_limits_while_others_keep_trading() {
    let (rt, clock) = test_runtime();
    let escalations = Arc::new(AtomicUsize::new(0));
    let spec = |name: &str| {
        let escalations = Arc::clone(&escalations);
        SupervisorSpec::new(name)
            .policy(policy(3, Duration::from_secs(10)))
            .on_escalation(move |_| {
                escalations.fetch_add(1, Ordering::SeqCst);
            })
    };
    let flaky = start_strategy(
        &rt,
        spec("strategy/flaky"),
        StrategyLike::new("flaky", every_third),
    );
    let steady_a = start_strategy(&rt, spec("strategy/a"), StrategyLike::new("a", never));
    let steady_b = start_strategy(&rt, spec("strategy/b"), StrategyLike::new("b", never));

    let mut crashed = Vec::new();
    for seq in 1..=30u64 {
        // Crashes come every 6 s of clock time, so at most 2 fall in any 10 s window (< 3).
        clock.advance(chrono::Duration::seconds(2));
        let reply = flaky.addr.send(tick(seq)).await.expect("actor alive");
        match reply {
            Ok(_) => assert!(!every_third(seq), "tick {seq} should have crashed"),
            Err(Refused::Crashed { actor, cause }) => {
                assert_eq!(actor.as_str(), "strategy/flaky");
                assert!(
                    cause.contains(&format!("panicked on tick {seq}")),
                    "cause: {cause}"
                );
                crashed.push(seq);
            }
            Err(other) => panic!("unexpected refusal {other}"),
        }
        for other in [&steady_a, &steady_b] {
            let processed = other.addr.send(tick(seq)).await.expect("alive");
            assert_eq!(processed, Ok(seq));
        }
    }

    assert_eq!(crashed, (1..=10).map(|i| i * 3).collect::<Vec<u64>>());
    let expected_sum_without_crashes: u64 = (1..=30u64).filter(|s| !every_third(*s)).sum();
    let flaky_state = flaky.addr.send(Probe).await.expect("alive");
    assert_eq!(flaky_state, Ok((20, expected_sum_without_crashes)));
    for other in [&steady_a, &steady_b] {
        assert_eq!(
            other.addr.send(Probe).await.expect("alive"),
            Ok((30, (1..=30).sum()))
        );
    }

    let status = flaky.addr.send(GetStatus).await.expect("alive");
    assert_eq!(status.state, RunState::Running);
    assert_eq!(status.restarts_total, 10);
    assert!(matches!(status.last_cause, Some(CrashCause::Panic(ref m)) if m.contains("tick 30")));
    assert_eq!(escalations.load(Ordering::SeqCst), 0);

    let metrics = rt.metrics.snapshot();
    assert_eq!(
        metrics.counter(names::RESTARTS_TOTAL, &[("actor", "strategy/flaky")]),
        Some(10)
    );
    assert_eq!(
        metrics.counter(names::RESTARTS_TOTAL, &[("actor", "strategy/a")]),
        Some(0)
    );
    let health = rt.health.snapshot();
    assert_eq!(health.status, OverallHealth::Healthy);
    assert_eq!(health.actors.len(), 3);
}

#[actix::test]
async fn always_panicking_strategy_is_halted_and_escalated_exactly_once() {
    let (rt, _clock) = test_runtime();
    let oms = OmsLike {
        cancelled_for: Arc::default(),
    }
    .start();
    let oms_in_handler = oms.clone();
    let seen: Arc<Mutex<Vec<Escalation>>> = Arc::default();
    let seen_in_handler = Arc::clone(&seen);
    // The daemon's reaction for a strategy: halt it (the supervisor does) and cancel its
    // orders (the handler tells the OMS).
    let spec = SupervisorSpec::new("strategy/doomed")
        .policy(policy(3, Duration::from_secs(60)))
        .on_escalation(move |e: &Escalation| {
            seen_in_handler.lock().unwrap().push(e.clone());
            oms_in_handler.do_send(CancelAllFor(e.actor.to_string()));
        });
    let doomed = start_strategy(&rt, spec, StrategyLike::new("doomed", always));
    let neighbour = start_strategy(
        &rt,
        SupervisorSpec::new("strategy/neighbour"),
        StrategyLike::new("n", never),
    );

    let refusals: RefusalLog = Arc::default();
    let mut reasons = Vec::new();
    for seq in 1..=10u64 {
        let msg = Tick {
            seq,
            refusals: Some(Arc::clone(&refusals)),
        };
        let reply = doomed.addr.send(msg).await.expect("actor alive");
        reasons.push(reply.expect_err("every tick fails").reason());
        assert_eq!(
            neighbour.addr.send(tick(seq)).await.expect("alive"),
            Ok(seq)
        );
    }

    // Three restarts, the fourth failure exceeds the limit, the rest are refused unhandled.
    let mut expected = vec!["crashed"; 3];
    expected.extend(["halted"; 7]);
    assert_eq!(reasons, expected);
    assert_eq!(
        *refusals.lock().unwrap(),
        (5..=10).map(|s| (s, "halted")).collect::<Vec<_>>()
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "escalation fires exactly once");
    assert_eq!(seen[0].actor.as_str(), "strategy/doomed");
    assert_eq!(seen[0].restarts_in_window, 3);
    assert_eq!(seen[0].within, Duration::from_secs(60));
    assert!(matches!(&seen[0].cause, CrashCause::Panic(m) if m.contains("panicked on tick 4")));

    // The escalation's cancel order reached the OMS exactly once.
    assert_eq!(
        oms.send(CancelledSoFar).await.expect("alive"),
        vec!["strategy/doomed"]
    );

    let status = doomed.addr.send(GetStatus).await.expect("alive");
    assert!(matches!(
        status.state,
        RunState::Halted(CrashCause::Panic(_))
    ));
    assert_eq!(status.restarts_total, 3);

    let health = rt.health.snapshot();
    assert_eq!(health.status, OverallHealth::Degraded);
    assert!(matches!(
        &health.actor("strategy/doomed").expect("registered").health,
        Health::Halted(reason) if reason.contains("tick 4")
    ));
    assert_eq!(
        health
            .actor("strategy/neighbour")
            .expect("registered")
            .health,
        Health::Healthy
    );

    let metrics = rt.metrics.snapshot();
    let doomed_label = [("actor", "strategy/doomed")];
    assert_eq!(
        metrics.counter(names::RESTARTS_TOTAL, &doomed_label),
        Some(3)
    );
    assert_eq!(
        metrics.counter(names::ESCALATIONS_TOTAL, &doomed_label),
        Some(1)
    );
    assert_eq!(metrics.gauge(names::ACTOR_HALTED, &doomed_label), Some(1));
    assert_eq!(
        metrics.counter(
            names::REFUSALS_TOTAL,
            &[("actor", "strategy/doomed"), ("reason", "halted")]
        ),
        Some(6)
    );
    assert_eq!(
        neighbour.addr.send(Probe).await.expect("alive"),
        Ok((10, 55))
    );
}

#[actix::test]
async fn faults_restart_like_panics_and_resume_leaves_halted() {
    let (rt, _clock) = test_runtime();
    let mut logic = StrategyLike::new("faulty", never);
    // Ticks 2 and 3 return a fault; 4 and later are fine.
    logic.fault_when = |seq| seq == 2 || seq == 3;
    let spec = SupervisorSpec::new("strategy/faulty").policy(policy(1, Duration::from_secs(60)));
    let faulty = start_strategy(&rt, spec, logic);

    assert_eq!(faulty.addr.send(tick(1)).await.expect("alive"), Ok(1));
    let second = faulty.addr.send(tick(2)).await.expect("alive");
    assert!(
        matches!(second, Err(Refused::Crashed { ref cause, .. }) if cause.contains("inconsistent book at tick 2"))
    );
    let third = faulty.addr.send(tick(3)).await.expect("alive");
    assert!(matches!(third, Err(Refused::Halted { .. })));
    assert!(matches!(
        faulty.addr.send(tick(4)).await.expect("alive"),
        Err(Refused::Halted { .. })
    ));

    assert_eq!(
        faulty.addr.send(Resume).await.expect("alive"),
        RunState::Running
    );
    assert_eq!(rt.health.get("strategy/faulty"), Some(Health::Healthy));
    // Restored from the snapshot taken after tick 1; tick 5 is the second processed tick.
    assert_eq!(faulty.addr.send(tick(5)).await.expect("alive"), Ok(2));
    assert_eq!(faulty.addr.send(Probe).await.expect("alive"), Ok((2, 6)));
    assert_eq!(
        rt.metrics
            .snapshot()
            .gauge(names::ACTOR_HALTED, &[("actor", "strategy/faulty")]),
        Some(0)
    );
}

#[actix::test]
async fn messages_sent_during_backoff_are_held_and_handled_after_the_rebuild() {
    let (rt, _clock) = test_runtime();
    let spec = SupervisorSpec::new("strategy/slow-restart").policy(RestartPolicy {
        max_restarts: 3,
        within: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(30),
        backoff_max: Duration::from_millis(30),
    });
    let actor = start_strategy(&rt, spec, StrategyLike::new("slow", |seq| seq == 1));
    let sender = actor.sender::<Tick>();

    let first = actor.addr.send(tick(1)).await.expect("alive");
    assert!(matches!(first, Err(Refused::Crashed { .. })));
    // The actor is now waiting out its backoff; these queue in its bounded mailbox.
    for seq in 2..=6 {
        sender.try_send(tick(seq)).expect("mailbox has room");
    }
    assert_eq!(actor.addr.send(Probe).await.expect("alive"), Ok((5, 20)));
}

#[actix::test]
async fn a_rebuild_that_keeps_failing_escalates() {
    let (rt, _clock) = test_runtime();
    let escalations = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&escalations);
    let spec = SupervisorSpec::new("core/journal")
        .policy(policy(2, Duration::from_secs(60)))
        .on_escalation(move |e| {
            assert!(e.cause.to_string().contains("journal unreadable"));
            counted.fetch_add(1, Ordering::SeqCst);
        });
    let actor = SupervisedActor::new(
        spec,
        rt.clone(),
        StrategyLike::new("j", always),
        |_: &(u64, u64)| Err(LogicFault::new("journal unreadable")),
    )
    .expect("valid policy")
    .start();

    let first = actor.addr.send(tick(1)).await.expect("alive");
    assert!(matches!(first, Err(Refused::Crashed { .. })));
    // Both rebuilds fail: restart 2 is used up, the next failure escalates.
    let status = actor.addr.send(GetStatus).await.expect("alive");
    assert!(
        matches!(&status.state, RunState::Halted(CrashCause::Fault(m)) if &**m == "journal unreadable")
    );
    assert_eq!(escalations.load(Ordering::SeqCst), 1);
    assert_eq!(
        rt.health.snapshot().status,
        OverallHealth::Degraded,
        "a halted core actor marks the daemon degraded"
    );
}

#[actix::test]
async fn full_mailbox_hands_the_message_back_with_a_typed_reason() {
    let (rt, _clock) = test_runtime();
    let spec = SupervisorSpec::new("oms").mailbox_capacity(4);
    let oms = start_strategy(&rt, spec, StrategyLike::new("oms", never));
    let sender = oms.sender::<Tick>();

    // Nothing runs between these sends (same thread, no await), so the mailbox fills up.
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for seq in 1..=50u64 {
        match sender.try_send(tick(seq)) {
            Ok(()) => accepted.push(seq),
            Err(r) => {
                assert_eq!(
                    r.reason,
                    Refused::MailboxFull {
                        actor: "oms".into(),
                        capacity: 4
                    }
                );
                rejected.push(r.message.seq);
            }
        }
    }
    // actix admits one extra message per sender beyond the capacity.
    assert!(
        !accepted.is_empty() && accepted.len() <= 4 + 1,
        "{accepted:?}"
    );
    assert_eq!(accepted.len() + rejected.len(), 50);
    assert_eq!(rejected.first(), Some(&(accepted.len() as u64 + 1)));

    let handled = oms.addr.send(Probe).await.expect("alive");
    assert_eq!(
        handled,
        Ok((accepted.len() as u64, accepted.iter().sum::<u64>()))
    );
    assert_eq!(
        rt.metrics.snapshot().counter(
            names::REFUSALS_TOTAL,
            &[("actor", "oms"), ("reason", "mailbox_full")]
        ),
        Some(rejected.len() as u64)
    );
}
