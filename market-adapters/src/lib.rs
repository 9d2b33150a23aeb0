//! `vpp-market-adapters`: the venue wire protocol, the WebSocket client adapter with automatic
//! reconnect, and the reference venue simulator.
//!
//! - [`protocol`]: the versioned JSON messages and their codec (docs/protocol.md).
//! - [`sim`]: the venue simulator: pure matching components, the venue state machine, and the
//!   WebSocket server with fault injection.
//! - [`client`]: the [`client::VenueAdapter`] trait and its WebSocket implementation.

pub mod client;
mod fast;
pub mod protocol;
pub mod sim;

pub use client::{AdapterConfig, AdapterEvent, AdapterEvents, VenueAdapter, WsAdapter};
pub use sim::server::{run_standalone, VenueHandle, VenueServer};
pub use sim::venue::VenueConfig;
