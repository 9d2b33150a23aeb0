//! Supervision: the layer actix lacks. Panics are caught at the handler boundary, the actor's
//! state is discarded and rebuilt from its last snapshot (or the journal) after an exponential
//! backoff, and past an OTP-style intensity limit (at most R restarts within T) the actor is
//! halted and the failure escalated to a typed callback.
//!
//! Pieces, usable separately:
//! - [`RestartPolicy`] + [`RestartTracker`]: the pure intensity/backoff state machine, driven
//!   by monotonic time from the injected [`Clock`] (testable with `ManualClock`).
//! - [`catch_crash`]: runs a closure, turning a panic or a [`LogicFault`] into a
//!   [`CrashCause`] carrying the panic message. For hand-written actors (e.g. a connector
//!   doing I/O) that want the same guarantees.
//! - [`Supervision`]: the bookkeeping (intensity, metrics, health, logging, escalation once per
//!   halt) without an actor, for those hand-written actors.
//! - [`SupervisedActor<L>`]: a generic actix actor hosting a [`SupervisedLogic`] (the pure state
//!   and decisions of a strategy, risk monitor, OMS, ...). It handles every message `M` for which
//!   the logic implements [`Handles<M>`] and the message is [`Refusable`].
//!
//! Invariants of [`SupervisedActor`]:
//! - A panic or `Err(LogicFault)` in `handle`, in `snapshot` or in the rebuild closure never
//!   unwinds into actix: the suspect state is dropped, never reused.
//! - The message that crashed the logic is not retried (it would crash again); a `send` caller
//!   gets `Err(Refused::Crashed)`. Messages arriving during the backoff stay in the bounded
//!   mailbox (the context waits, so nothing is handled or dropped) and are handled by the
//!   rebuilt logic; senders using `try_send` see `MailboxFull` if the backoff fills it.
//! - Each restart is counted in `vpp_actor_restarts_total{actor}` and logged with its cause.
//! - Past the limit the actor is `Halted`: the escalation callback fires exactly once per halt,
//!   health becomes `Halted(cause)`, `vpp_actor_halted{actor}` is 1, and every further message
//!   is refused with [`Refused::Halted`] through [`Refusable::refuse`] (and as the reply).
//!   [`Resume`] (an operator action) clears the restart history and rebuilds.
//! - Snapshots are taken after every `snapshot_every` successfully handled messages (0 =
//!   never after the initial one: the rebuild closure then replays the journal instead).
//!
//! Panics are only catchable with `panic = "unwind"` (the default); the workspace profiles
//! must not set `panic = "abort"`.

use crate::health::{Health, HealthRegistry};
use crate::mailbox::{ActorName, BoundedSender, Refusable, Refused};
use crate::metrics::{names, Counter, Gauge, Metrics};
use actix::dev::ToEnvelope;
use actix::prelude::*;
use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;
use vpp_engine::clock::Clock;
use vpp_engine::Timestamp;

/// Largest configurable `max_restarts` (keeps the restart history bounded).
pub const MAX_RESTARTS_LIMIT: u32 = 10_000;

/// OTP-style restart intensity and backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within `within`; the next failure escalates. 0 = escalate at once.
    pub max_restarts: u32,
    pub within: Duration,
    /// Backoff before the first restart in a window; doubles per further restart.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// An invalid [`RestartPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("restart policy: `within` must be greater than zero")]
    ZeroWindow,
    #[error("restart policy: `max_restarts` is {got}; valid is 0..={MAX_RESTARTS_LIMIT}")]
    TooManyRestarts { got: u32 },
    #[error(
        "restart policy: `backoff_initial` ({initial:?}) must not exceed `backoff_max` ({max:?})"
    )]
    BackoffInverted { initial: Duration, max: Duration },
}

impl RestartPolicy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.within.is_zero() {
            return Err(PolicyError::ZeroWindow);
        }
        if self.max_restarts > MAX_RESTARTS_LIMIT {
            return Err(PolicyError::TooManyRestarts {
                got: self.max_restarts,
            });
        }
        if self.backoff_initial > self.backoff_max {
            return Err(PolicyError::BackoffInverted {
                initial: self.backoff_initial,
                max: self.backoff_max,
            });
        }
        Ok(())
    }

    /// Backoff before the `attempt`-th restart within the window (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        self.backoff_initial
            .saturating_mul(1u32 << shift)
            .min(self.backoff_max)
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart after `backoff`; this is restart number `attempt` in the current window.
    Restart { attempt: u32, backoff: Duration },
    /// The limit is exceeded: `restarts_in_window` restarts already happened within the window.
    Escalate { restarts_in_window: u32 },
}

/// The intensity state machine: a sliding window of restart times (monotonic ns).
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    recent_ns: VecDeque<u64>,
    total_restarts: u64,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Result<Self, PolicyError> {
        policy.validate()?;
        Ok(Self {
            policy,
            recent_ns: VecDeque::with_capacity(policy.max_restarts as usize),
            total_restarts: 0,
        })
    }

    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    /// Records a failure at `now_ns` and decides.
    pub fn on_failure(&mut self, now_ns: u64) -> Decision {
        self.expire(now_ns);
        let in_window = self.recent_ns.len() as u32;
        if in_window >= self.policy.max_restarts {
            return Decision::Escalate {
                restarts_in_window: in_window,
            };
        }
        self.recent_ns.push_back(now_ns);
        self.total_restarts += 1;
        let attempt = in_window + 1;
        Decision::Restart {
            attempt,
            backoff: self.policy.backoff(attempt),
        }
    }

    /// Restarts within the window ending at `now_ns`.
    pub fn restarts_in_window(&mut self, now_ns: u64) -> u32 {
        self.expire(now_ns);
        self.recent_ns.len() as u32
    }

    pub fn total_restarts(&self) -> u64 {
        self.total_restarts
    }

    /// Forgets the window (after an operator resume).
    pub fn reset(&mut self) {
        self.recent_ns.clear();
    }

    fn expire(&mut self, now_ns: u64) {
        let within_ns = u64::try_from(self.policy.within.as_nanos()).unwrap_or(u64::MAX);
        while let Some(&t) = self.recent_ns.front() {
            if now_ns.saturating_sub(t) >= within_ns {
                self.recent_ns.pop_front();
            } else {
                break;
            }
        }
    }
}

/// An error a logic returns to say "my state is no longer trustworthy: rebuild me".
/// Business refusals are *not* faults: return them inside the reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct LogicFault {
    pub reason: String,
}

impl LogicFault {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// Why an actor's logic crashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashCause {
    /// The panic message.
    Panic(Arc<str>),
    Fault(Arc<str>),
}

impl CrashCause {
    pub fn message(&self) -> &str {
        match self {
            CrashCause::Panic(m) | CrashCause::Fault(m) => m,
        }
    }
}

impl fmt::Display for CrashCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashCause::Panic(m) => write!(f, "panic: {m}"),
            CrashCause::Fault(m) => write!(f, "error: {m}"),
        }
    }
}

/// The text of a panic payload (`&str` or `String`; anything else is named as such).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Runs `f`, turning a panic or a [`LogicFault`] into a [`CrashCause`].
///
/// `AssertUnwindSafe` is sound here only because callers discard whatever `f` may have left
/// half-mutated when it crashes; [`SupervisedActor`] does exactly that.
pub fn catch_crash<T>(f: impl FnOnce() -> Result<T, LogicFault>) -> Result<T, CrashCause> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(fault)) => Err(CrashCause::Fault(Arc::from(fault.reason))),
        Err(payload) => Err(CrashCause::Panic(Arc::from(panic_message(&*payload)))),
    }
}

/// Reported once when an actor exceeds its restart limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    pub actor: ActorName,
    /// The failure that exceeded the limit.
    pub cause: CrashCause,
    pub restarts_in_window: u32,
    pub within: Duration,
    pub at: Timestamp,
}

/// The caller's reaction to an escalation (halt + cancel orders for a strategy; mark the
/// daemon degraded for a core actor). Runs on the actor's thread: keep it short, send
/// messages rather than doing work.
pub type EscalationHandler = Arc<dyn Fn(&Escalation) + Send + Sync>;

/// An [`Escalation`] as an actor message, for [`escalate_to`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Escalated(pub Escalation);

/// An escalation handler forwarding to an actor. Uses `do_send` deliberately: escalations
/// are bounded (at most one per supervised actor per halt) and must not be lost to a full
/// mailbox; a stopped receiver is logged.
pub fn escalate_to(recipient: Recipient<Escalated>) -> EscalationHandler {
    Arc::new(move |escalation: &Escalation| {
        if !recipient.connected() {
            tracing::error!(actor = %escalation.actor, cause = %escalation.cause,
                "escalation receiver has stopped; escalation only logged");
        }
        recipient.do_send(Escalated(escalation.clone()));
    })
}

/// Shared services every supervised actor uses.
#[derive(Clone)]
pub struct Runtime {
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub health: HealthRegistry,
}

impl Runtime {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            health: HealthRegistry::new(Arc::clone(&clock)),
            metrics: Metrics::new(),
            clock,
        }
    }
}

/// How one actor is supervised.
#[derive(Clone)]
pub struct SupervisorSpec {
    pub name: ActorName,
    pub policy: RestartPolicy,
    pub mailbox_capacity: usize,
    /// Snapshot after this many successful messages; 0 = only the initial snapshot.
    pub snapshot_every: u32,
    pub on_escalation: EscalationHandler,
}

impl SupervisorSpec {
    /// Defaults: [`RestartPolicy::default`], capacity 256, snapshot after every message, and an
    /// escalation handler that only logs (the supervisor also marks health `Halted`).
    pub fn new(name: impl Into<ActorName>) -> Self {
        Self {
            name: name.into(),
            policy: RestartPolicy::default(),
            mailbox_capacity: 256,
            snapshot_every: 1,
            on_escalation: Arc::new(|e: &Escalation| {
                tracing::error!(actor = %e.actor, cause = %e.cause, "actor halted (no handler)");
            }),
        }
    }
    pub fn policy(mut self, policy: RestartPolicy) -> Self {
        self.policy = policy;
        self
    }
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = capacity.max(1);
        self
    }
    pub fn snapshot_every(mut self, messages: u32) -> Self {
        self.snapshot_every = messages;
        self
    }
    pub fn on_escalation(mut self, handler: impl Fn(&Escalation) + Send + Sync + 'static) -> Self {
        self.on_escalation = Arc::new(handler);
        self
    }
}

/// The state and decisions an actor hosts. `snapshot` is cheap enough to call per
/// `snapshot_every` messages; the rebuild closure given to [`SupervisedActor::new`] turns a
/// snapshot (or the journal) back into a logic, and re-attaches its wiring (senders, clock).
pub trait SupervisedLogic: Unpin + 'static {
    type Snapshot: Unpin + 'static;
    fn snapshot(&self) -> Self::Snapshot;
}

/// The logic handles `M`, returning `Reply` or a fault that triggers a rebuild.
pub trait Handles<M>: SupervisedLogic {
    type Reply: 'static;
    fn handle(&mut self, msg: M) -> Result<Self::Reply, LogicFault>;
}

/// Rebuilds a logic from the last snapshot (and/or the journal the closure captured).
pub type Rebuild<L> =
    Box<dyn FnMut(&<L as SupervisedLogic>::Snapshot) -> Result<L, LogicFault> + Send>;

/// Where a supervised actor is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// Waiting out the backoff before rebuilding.
    Restarting,
    Halted(CrashCause),
}

/// What [`GetStatus`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorStatus {
    pub actor: ActorName,
    pub state: RunState,
    pub restarts_total: u64,
    pub last_cause: Option<CrashCause>,
}

/// Ask a supervised actor for its [`SupervisorStatus`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "SupervisorStatus")]
pub struct GetStatus;

/// Operator action: leave `Halted`, forget the restart window, rebuild from the last snapshot.
/// A no-op unless halted.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RunState")]
pub struct Resume;

/// Supervision bookkeeping without an actor: intensity tracking, restart/escalation metrics,
/// health reports, logging, and the once-per-halt escalation. [`SupervisedActor`] is built on
/// it; a hand-written actor (e.g. a connector owning a socket) uses it with [`catch_crash`]:
/// on a crash call [`Supervision::on_crash`] and, for `Restart`, rebuild after the backoff and
/// call [`Supervision::on_rebuilt`]; for `Escalate` stop processing (the escalation already
/// fired).
pub struct Supervision {
    name: ActorName,
    policy: RestartPolicy,
    tracker: RestartTracker,
    state: RunState,
    last_cause: Option<CrashCause>,
    clock: Arc<dyn Clock>,
    health: HealthRegistry,
    on_escalation: EscalationHandler,
    restarts: Counter,
    escalations: Counter,
    halted: Gauge,
}

impl Supervision {
    /// Registers the actor's metrics and reports it `Healthy`.
    pub fn new(spec: &SupervisorSpec, rt: &Runtime) -> Result<Self, PolicyError> {
        let tracker = RestartTracker::new(spec.policy)?;
        let actor = [("actor", spec.name.as_str())];
        let m = &rt.metrics;
        rt.health.report(spec.name.as_str(), Health::Healthy);
        Ok(Self {
            name: spec.name.clone(),
            policy: spec.policy,
            tracker,
            state: RunState::Running,
            last_cause: None,
            clock: Arc::clone(&rt.clock),
            health: rt.health.clone(),
            on_escalation: Arc::clone(&spec.on_escalation),
            restarts: m.counter(names::RESTARTS_TOTAL, &actor),
            escalations: m.counter(names::ESCALATIONS_TOTAL, &actor),
            halted: m.gauge(names::ACTOR_HALTED, &actor),
        })
    }

    pub fn name(&self) -> &ActorName {
        &self.name
    }

    pub fn state(&self) -> &RunState {
        &self.state
    }

    pub fn status(&self) -> SupervisorStatus {
        SupervisorStatus {
            actor: self.name.clone(),
            state: self.state.clone(),
            restarts_total: self.tracker.total_restarts(),
            last_cause: self.last_cause.clone(),
        }
    }

    /// Records a crash and decides. `Restart`: counted, logged, health `Degraded`.
    /// `Escalate`: state `Halted`, health `Halted`, gauge set, escalation handler called once.
    /// A crash while already halted changes nothing and escalates nothing again.
    pub fn on_crash(&mut self, cause: &CrashCause) -> Decision {
        if let RunState::Halted(_) = self.state {
            return Decision::Escalate {
                restarts_in_window: self.tracker.restarts_in_window(self.clock.monotonic_ns()),
            };
        }
        self.last_cause = Some(cause.clone());
        let actor = &self.name;
        let decision = self.tracker.on_failure(self.clock.monotonic_ns());
        match decision {
            Decision::Restart { attempt, backoff } => {
                self.restarts.inc();
                tracing::warn!(%actor, %cause, attempt, backoff_ms = backoff.as_millis() as u64,
                    "actor crashed; restarting from its last snapshot after backoff");
                self.state = RunState::Restarting;
                self.health.report(
                    actor.as_str(),
                    Health::Degraded(format!("restarting after {cause}")),
                );
            }
            Decision::Escalate { restarts_in_window } => {
                self.halt(cause.clone(), restarts_in_window);
            }
        }
        decision
    }

    /// The state was rebuilt: back to `Running` and `Healthy`.
    pub fn on_rebuilt(&mut self) {
        self.state = RunState::Running;
        self.health.report(self.name.as_str(), Health::Healthy);
        tracing::info!(actor = %self.name, "actor rebuilt from its last snapshot");
    }

    /// Operator resume of a halted actor: forgets the restart window. Returns false (and does
    /// nothing) unless halted. The caller then rebuilds and calls [`Self::on_rebuilt`].
    pub fn resume(&mut self) -> bool {
        if !matches!(self.state, RunState::Halted(_)) {
            return false;
        }
        tracing::warn!(actor = %self.name, "operator resumed a halted actor");
        self.tracker.reset();
        self.halted.set(0);
        self.state = RunState::Restarting;
        true
    }

    fn halt(&mut self, cause: CrashCause, restarts_in_window: u32) {
        let actor = self.name.clone();
        tracing::error!(%actor, %cause, restarts_in_window,
            within_ms = self.policy.within.as_millis() as u64,
            "actor exceeded its restart limit; halted and escalated");
        self.state = RunState::Halted(cause.clone());
        self.escalations.inc();
        self.halted.set(1);
        self.health
            .report(actor.as_str(), Health::Halted(cause.to_string()));
        let escalation = Escalation {
            actor,
            cause,
            restarts_in_window,
            within: self.policy.within,
            at: self.clock.now(),
        };
        // The handler is caller code: a panic in it must not take the arbiter down.
        let handler = Arc::clone(&self.on_escalation);
        if let Err(cause) = catch_crash(|| {
            handler(&escalation);
            Ok(())
        }) {
            tracing::error!(actor = %escalation.actor, %cause, "escalation handler panicked");
        }
    }
}

/// A generic actor hosting a [`SupervisedLogic`]; see the module docs for its guarantees.
pub struct SupervisedActor<L: SupervisedLogic> {
    spec: SupervisorSpec,
    rt: Runtime,
    logic: Option<L>,
    snapshot: L::Snapshot,
    rebuild: Rebuild<L>,
    supervision: Supervision,
    handled_since_snapshot: u32,
    refused_halted: Counter,
}

impl<L: SupervisedLogic> SupervisedActor<L> {
    /// Hosts `initial` (its snapshot is the first restore point); `rebuild` is called with the
    /// last snapshot after every crash.
    pub fn new(
        spec: SupervisorSpec,
        rt: Runtime,
        initial: L,
        rebuild: impl FnMut(&L::Snapshot) -> Result<L, LogicFault> + Send + 'static,
    ) -> Result<Self, PolicyError> {
        let supervision = Supervision::new(&spec, &rt)?;
        let refused_halted = rt.metrics.counter(
            names::REFUSALS_TOTAL,
            &[("actor", spec.name.as_str()), ("reason", "halted")],
        );
        Ok(Self {
            snapshot: initial.snapshot(),
            logic: Some(initial),
            rebuild: Box::new(rebuild),
            supervision,
            handled_since_snapshot: 0,
            refused_halted,
            spec,
            rt,
        })
    }

    /// Starts on the current arbiter with the configured mailbox capacity set before any
    /// sender can see the address.
    pub fn start(self) -> SupervisedHandle<L> {
        let name = self.spec.name.clone();
        let capacity = self.spec.mailbox_capacity;
        let metrics = self.rt.metrics.clone();
        let addr = SupervisedActor::create(move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            self
        });
        SupervisedHandle {
            addr,
            name,
            capacity,
            metrics,
        }
    }

    /// Starts on another arbiter (thread).
    pub fn start_in(self, arbiter: &ArbiterHandle) -> SupervisedHandle<L>
    where
        Self: Send,
    {
        let name = self.spec.name.clone();
        let capacity = self.spec.mailbox_capacity;
        let metrics = self.rt.metrics.clone();
        let addr = SupervisedActor::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            self
        });
        SupervisedHandle {
            addr,
            name,
            capacity,
            metrics,
        }
    }

    fn after_success(&mut self, ctx: &mut Context<Self>) {
        if self.spec.snapshot_every == 0 {
            return;
        }
        self.handled_since_snapshot += 1;
        if self.handled_since_snapshot < self.spec.snapshot_every {
            return;
        }
        self.handled_since_snapshot = 0;
        let Some(logic) = self.logic.as_ref() else {
            return;
        };
        match catch_crash(|| Ok(logic.snapshot())) {
            Ok(snapshot) => self.snapshot = snapshot,
            Err(cause) => {
                self.on_crash(cause, ctx);
            }
        }
    }

    /// Drops the suspect state and restarts after backoff, or halts past the limit.
    /// Returns the refusal for the message that crashed (if any).
    fn on_crash(&mut self, cause: CrashCause, ctx: &mut Context<Self>) -> Refused {
        if let Some(suspect) = self.logic.take() {
            // A panicking Drop of the discarded state must not unwind into actix either.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(suspect)));
        }
        self.handled_since_snapshot = 0;
        let actor = self.spec.name.clone();
        let cause_text: Arc<str> = Arc::from(cause.to_string());
        match self.supervision.on_crash(&cause) {
            Decision::Restart { backoff, .. } => {
                // `wait` stops the mailbox until the backoff ends: messages stay queued.
                ctx.wait(
                    actix::clock::sleep(backoff)
                        .into_actor(self)
                        .map(|(), act, ctx| act.rebuild_now(ctx)),
                );
                Refused::Crashed {
                    actor,
                    cause: cause_text,
                }
            }
            Decision::Escalate { .. } => Refused::Halted {
                actor,
                cause: cause_text,
            },
        }
    }

    fn rebuild_now(&mut self, ctx: &mut Context<Self>) {
        let rebuild = &mut self.rebuild;
        let snapshot = &self.snapshot;
        match catch_crash(|| rebuild(snapshot)) {
            Ok(logic) => {
                self.logic = Some(logic);
                self.supervision.on_rebuilt();
            }
            Err(cause) => {
                tracing::error!(actor = %self.spec.name, %cause, "rebuilding the actor failed");
                self.on_crash(cause, ctx);
            }
        }
    }

    fn refuse<M: Refusable>(&mut self, msg: M) -> Refused {
        let actor = self.spec.name.clone();
        let reason = match self.supervision.state() {
            RunState::Halted(cause) => {
                self.refused_halted.inc();
                Refused::Halted {
                    actor,
                    cause: Arc::from(cause.to_string()),
                }
            }
            RunState::Running | RunState::Restarting => Refused::Restarting { actor },
        };
        tracing::debug!(actor = %self.spec.name, reason = reason.reason(), "message refused");
        if let Err(cause) = catch_crash(|| {
            msg.refuse(&reason);
            Ok(())
        }) {
            tracing::error!(actor = %self.spec.name, %cause, "Refusable::refuse panicked");
        }
        reason
    }
}

impl<L: SupervisedLogic> Actor for SupervisedActor<L> {
    type Context = Context<Self>;
}

impl<L, M> Handler<M> for SupervisedActor<L>
where
    L: Handles<M>,
    M: Refusable<Result = Result<<L as Handles<M>>::Reply, Refused>> + 'static,
{
    type Result = Result<<L as Handles<M>>::Reply, Refused>;

    fn handle(&mut self, msg: M, ctx: &mut Context<Self>) -> Self::Result {
        let Some(logic) = self.logic.as_mut() else {
            return Err(self.refuse(msg));
        };
        match catch_crash(|| logic.handle(msg)) {
            Ok(reply) => {
                self.after_success(ctx);
                Ok(reply)
            }
            Err(cause) => Err(self.on_crash(cause, ctx)),
        }
    }
}

impl<L: SupervisedLogic> Handler<GetStatus> for SupervisedActor<L> {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.supervision.status())
    }
}

impl<L: SupervisedLogic> Handler<Resume> for SupervisedActor<L> {
    type Result = MessageResult<Resume>;

    fn handle(&mut self, _: Resume, ctx: &mut Context<Self>) -> Self::Result {
        if self.supervision.resume() {
            self.rebuild_now(ctx);
        }
        MessageResult(self.supervision.state().clone())
    }
}

/// The address of a started supervised actor plus what senders need to know about it.
pub struct SupervisedHandle<L: SupervisedLogic> {
    pub addr: Addr<SupervisedActor<L>>,
    name: ActorName,
    capacity: usize,
    metrics: Metrics,
}

impl<L: SupervisedLogic> Clone for SupervisedHandle<L> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            name: self.name.clone(),
            capacity: self.capacity,
            metrics: self.metrics.clone(),
        }
    }
}

impl<L: SupervisedLogic> SupervisedHandle<L> {
    pub fn name(&self) -> &ActorName {
        &self.name
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A capacity-respecting sender of `M` to this actor (a distinct actix sender, so it gets
    /// its own guaranteed slot).
    pub fn sender<M>(&self) -> BoundedSender<M>
    where
        SupervisedActor<L>: Handler<M>,
        <SupervisedActor<L> as Actor>::Context: ToEnvelope<SupervisedActor<L>, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        BoundedSender::new(
            self.addr.clone().recipient(),
            self.name.clone(),
            self.capacity,
            &self.metrics,
        )
    }

    /// The recipient of wakes for a conflated stream this actor consumes.
    pub fn recipient<M>(&self) -> Recipient<M>
    where
        SupervisedActor<L>: Handler<M>,
        <SupervisedActor<L> as Actor>::Context: ToEnvelope<SupervisedActor<L>, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.addr.clone().recipient()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn policy(max_restarts: u32, within_ms: u64) -> RestartPolicy {
        RestartPolicy {
            max_restarts,
            within: Duration::from_millis(within_ms),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(45),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy(5, 1_000);
        let got: Vec<u64> = (1..=5).map(|a| p.backoff(a).as_millis() as u64).collect();
        assert_eq!(got, [10, 20, 40, 45, 45]);
        assert_eq!(p.backoff(200), Duration::from_millis(45));
    }

    #[test]
    fn escalates_on_the_failure_after_max_restarts_within_the_window() {
        let mut t = RestartTracker::new(policy(3, 1_000)).expect("valid");
        for attempt in 1..=3 {
            assert!(matches!(
                t.on_failure(attempt as u64 * MS),
                Decision::Restart { attempt: a, .. } if a == attempt
            ));
        }
        assert_eq!(
            t.on_failure(4 * MS),
            Decision::Escalate {
                restarts_in_window: 3
            }
        );
        assert_eq!(t.total_restarts(), 3);
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut t = RestartTracker::new(policy(2, 1_000)).expect("valid");
        assert!(matches!(t.on_failure(0), Decision::Restart { .. }));
        assert!(matches!(t.on_failure(500 * MS), Decision::Restart { .. }));
        // At 1000 ms the first restart has left the 1 s window: one slot is free again, and
        // the backoff is that of the second attempt in the window.
        assert_eq!(
            t.on_failure(1_000 * MS),
            Decision::Restart {
                attempt: 2,
                backoff: Duration::from_millis(20)
            }
        );
        assert!(matches!(
            t.on_failure(1_100 * MS),
            Decision::Escalate { .. }
        ));
        assert_eq!(t.restarts_in_window(10_000 * MS), 0);
    }

    #[test]
    fn zero_max_restarts_escalates_immediately_and_reset_clears() {
        let mut t = RestartTracker::new(policy(0, 1_000)).expect("valid");
        assert!(matches!(
            t.on_failure(0),
            Decision::Escalate {
                restarts_in_window: 0
            }
        ));
        let mut t = RestartTracker::new(policy(1, 1_000)).expect("valid");
        assert!(matches!(t.on_failure(0), Decision::Restart { .. }));
        assert!(matches!(t.on_failure(1), Decision::Escalate { .. }));
        t.reset();
        assert!(matches!(t.on_failure(2), Decision::Restart { .. }));
    }

    #[test]
    fn invalid_policies_are_refused_with_the_field() {
        let mut p = policy(1, 0);
        assert_eq!(p.validate(), Err(PolicyError::ZeroWindow));
        p = policy(MAX_RESTARTS_LIMIT + 1, 10);
        assert!(matches!(
            p.validate(),
            Err(PolicyError::TooManyRestarts { .. })
        ));
        p = policy(1, 10);
        p.backoff_initial = Duration::from_secs(1);
        assert!(matches!(
            p.validate(),
            Err(PolicyError::BackoffInverted { .. })
        ));
    }

    #[test]
    fn supervision_escalates_once_and_tracks_health_for_hand_written_actors() {
        use chrono::TimeZone;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let start = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = vpp_engine::clock::ManualClock::new(start);
        let rt = Runtime::new(Arc::new(clock.clone()));
        let fired = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&fired);
        let spec = SupervisorSpec::new("connector/sim")
            .policy(policy(2, 1_000))
            .on_escalation(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            });
        let mut sup = Supervision::new(&spec, &rt).expect("valid");
        let cause = CrashCause::Fault(Arc::from("socket state corrupt"));

        assert!(matches!(
            sup.on_crash(&cause),
            Decision::Restart { attempt: 1, .. }
        ));
        assert!(matches!(
            rt.health.get("connector/sim"),
            Some(Health::Degraded(_))
        ));
        sup.on_rebuilt();
        assert_eq!(rt.health.get("connector/sim"), Some(Health::Healthy));
        // Past the window the first restart no longer counts.
        clock.advance(chrono::Duration::seconds(2));
        assert!(matches!(
            sup.on_crash(&cause),
            Decision::Restart { attempt: 1, .. }
        ));
        assert!(matches!(
            sup.on_crash(&cause),
            Decision::Restart { attempt: 2, .. }
        ));
        assert!(matches!(sup.on_crash(&cause), Decision::Escalate { .. }));
        assert!(matches!(sup.on_crash(&cause), Decision::Escalate { .. }));
        assert_eq!(
            fired.load(Ordering::SeqCst),
            1,
            "escalation fires once per halt"
        );
        assert!(matches!(sup.state(), RunState::Halted(_)));
        assert_eq!(sup.status().restarts_total, 3);

        assert!(sup.resume());
        assert!(!sup.resume(), "only a halted actor resumes");
        sup.on_rebuilt();
        assert_eq!(sup.state(), &RunState::Running);
        let snap = rt.metrics.snapshot();
        let label = [("actor", "connector/sim")];
        assert_eq!(snap.counter(names::RESTARTS_TOTAL, &label), Some(3));
        assert_eq!(snap.counter(names::ESCALATIONS_TOTAL, &label), Some(1));
        assert_eq!(snap.gauge(names::ACTOR_HALTED, &label), Some(0));
    }

    #[test]
    fn catch_crash_reports_panic_messages_and_faults() {
        let r: Result<(), CrashCause> = catch_crash(|| panic!("boom {}", 7));
        assert_eq!(r, Err(CrashCause::Panic(Arc::from("boom 7"))));
        let r: Result<(), CrashCause> = catch_crash(|| std::panic::panic_any(42u8));
        assert_eq!(
            r,
            Err(CrashCause::Panic(Arc::from("non-string panic payload")))
        );
        let r: Result<(), CrashCause> = catch_crash(|| Err(LogicFault::new("bad state")));
        assert_eq!(r.map_err(|c| c.to_string()), Err("error: bad state".into()));
        assert_eq!(catch_crash(|| Ok(5)), Ok(5));
    }
}
