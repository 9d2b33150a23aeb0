//! `vpp-engine`: the domain types and the pure, deterministic core of the VPP engine.
//!
//! Owns: resource templates and resources, aggregations and their capacity, markets and
//! delivery intervals, the order state machine, positions, and the `Clock` abstraction.
//!
//! Invariants that hold for everything in this crate:
//! - No I/O, no async, no actix, no tokio, no sqlx, no wire format. Time comes in through
//!   [`clock::Clock`] or as an argument, so the same code runs live and in backtest.
//! - Money, prices and quantities are [`rust_decimal::Decimal`]; floats never touch them.
//! - Every illegal state change is an error value, never a silent no-op and never a panic.

pub mod aggregation;
pub mod backtest;
pub mod clock;
pub mod dispatch;
pub mod error;
pub mod ids;
pub mod ledger;
pub mod market;
pub mod order;
pub mod park_sim;
pub mod position;
pub mod resource;
pub mod schedule;
pub mod settlement;
pub mod strategy;
pub mod template;

pub use rust_decimal::Decimal;

/// UTC timestamp used throughout the engine.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
