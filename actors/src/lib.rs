//! `vpp-actors`: the actor runtime layer of the VPP daemon, on actix 0.13.
//!
//! Owns the reusable machinery every daemon actor is built from; the concrete actors
//! (MarketConnector, Strategy, RiskMonitor, OMS, Dispatch, Settlement, Journal) are wired on
//! top of it and only call into the pure cores of `vpp-engine` and `vpp-risk`.
//!
//! - [`supervisor`]: panic catching at the handler boundary, restart from snapshot with
//!   exponential backoff, OTP intensity limit (R restarts in T), typed escalation.
//! - [`health`]: per-actor Healthy / Degraded / Halted, read by `/health`.
//! - [`mailbox`]: bounded `try_send` with typed refusals ([`Refused`]) that go back to the
//!   sender; never `do_send`, never a silent drop.
//! - [`conflate`]: latest-value-wins market data to slow consumers, one wake in the mailbox.
//! - [`bus`]: typed topics (explicit subscriber lists, no lookup on the hot path).
//! - [`metrics`]: per-stage hdrhistogram latencies, counters, gauges; the `vpp latency` table
//!   and the Prometheus text format.
//!
//! Crate-wide invariants: every queue, map and buffer is bounded; time comes from the injected
//! [`vpp_engine::clock::Clock`]; nothing on the hot path allocates per message or looks a
//! name up.

pub mod bus;
pub mod conflate;
pub mod health;
pub mod live;
pub mod mailbox;
pub mod metrics;
pub mod supervisor;
pub mod telemetry;

pub use bus::{ConflatedTopic, Subscribe, SubscriptionId, Topic, TopicFull};
pub use conflate::{ConflatedSender, Conflator, ConflatorStats, Wake};
pub use health::{ActorHealth, Health, HealthRegistry, HealthSnapshot, OverallHealth};
pub use mailbox::{ActorName, BoundedSender, Refusable, Refused, Rejected};
pub use metrics::{Counter, Gauge, LatencyRecorder, LatencyStats, Metrics, MetricsSnapshot, Stage};
pub use supervisor::{
    catch_crash, escalate_to, CrashCause, Escalated, Escalation, EscalationHandler, GetStatus,
    Handles, LogicFault, RestartPolicy, RestartTracker, Resume, RunState, Runtime, SupervisedActor,
    SupervisedHandle, SupervisedLogic, SupervisorSpec, SupervisorStatus,
};
