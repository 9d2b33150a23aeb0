//! `vpp-risk`: pre-trade checks, limits, kill switches and the post-trade deviation monitor.
//!
//! Pure: no I/O, no async, no actix; time comes in as [`vpp_engine::Timestamp`] arguments, so
//! the RiskMonitor actor, the backtest and the tests all drive the same code.
//!
//! Invariants:
//! - A pre-trade check is O(1) in open orders and intervals and allocates nothing when it
//!   approves (`tests/no_alloc.rs` proves it with a counting allocator).
//! - Every rejection carries a stable [`event::RejectCode`] and a message naming the limit and
//!   the value; every rejection and alert is a [`event::RiskEvent`] and is counted by code.
//! - State is bounded by [`limits::Sizing`]; decisions use `Decimal`, never floats.

pub mod checks;
pub mod deviation;
pub mod engine;
pub mod event;
pub mod gate;
pub mod hash;
pub mod kill;
pub mod limits;
pub mod state;
pub mod storage;
pub mod throttle;

pub use deviation::{DeliverySample, Severity};
pub use engine::{DeviationOutcome, ExposureView, KillOutcome, RiskEngine, RiskError};
pub use event::{AlertCode, Decision, Reject, RejectCode, RiskCounters, RiskEvent, Scope};
pub use kill::{KillScope, KillSwitchState};
pub use limits::{LimitChange, LimitScope, RiskConfig, RiskLimits};
pub use state::Capacity;
pub use storage::StorageBudget;
