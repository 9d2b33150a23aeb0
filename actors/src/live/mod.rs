//! The concrete actors of the live daemon, wired on the supervision, back-pressure and
//! metrics layer of this crate, each only calling into the pure cores of `vpp-engine` and
//! `vpp-risk`:
//!
//! ```text
//! park telemetry ──TelemetryBatch──▶ Aggregation (per aggregation) ──Capacity──▶ Strategy, Risk
//! venue ◀═WS═▶ MarketConnector ──conflated MarketData──▶ Strategy (per strategy)
//! Strategy ──ToRisk::Intent──▶ RiskMonitor ──ToOms::Approved──▶ OMS ──ConnectorCmd──▶ Connector
//! Connector ──ToOms::Report──▶ OMS ──▶ journal (group commit), Risk, Strategy, Dispatch
//! Dispatch (per aggregation) ──setpoints──▶ park or MQTT; closed loop on telemetry;
//!          ──instructions──▶ store (batched)   ──ended interval──▶ Settlement ──draft──▶ store
//! ```
//!
//! - [`strategy`], [`risk`], [`oms`], [`aggregation`], [`dispatch`], [`settlement`]: supervised logics
//!   (hosted by [`crate::SupervisedActor`]); every send between them is a bounded `try_send`.
//! - [`connector`]: the task around one venue adapter connection.
//! - [`recovery`]: start-up reconciliation with the venue before anything trades.
//! - [`strategies`]: the diagnostic `order_flow` and `chaos` strategy kinds.
//! - [`clock`]: the sped-up clock of `vpp run --speed N`.

pub mod aggregation;
pub mod clock;
pub mod connector;
pub mod dispatch;
pub mod messages;
pub mod oms;
pub mod recovery;
pub mod risk;
pub mod settlement;
pub mod strategies;
pub mod strategy;
pub mod writer;

#[cfg(test)]
mod tests;

use crate::mailbox::BoundedSender;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use vpp_engine::ids::StrategyId;

/// Where the strategy actors are, by id: filled once at wiring time, read by risk and the OMS
/// to send rejections and reports back (an integer-keyed lookup, no name lookup).
pub type StrategyRoutes = Arc<Mutex<HashMap<StrategyId, BoundedSender<messages::ToStrategy>>>>;
