//! `vpp-market-adapters`: the venue wire protocol, the WebSocket client adapter with automatic
//! reconnect, and the reference venue simulator.

pub mod sim;
