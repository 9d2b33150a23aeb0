//! `vpp` library half: config loading and validation, shared by the binary and by the
//! end-to-end tests in `tests/`. The binary (`src/main.rs`) is only the command-line edge.

pub mod api;
pub mod config;
pub mod daemon;
pub mod token;
