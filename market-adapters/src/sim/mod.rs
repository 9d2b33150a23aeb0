//! The reference venue simulator. Pure matching components live in `auction`, `book` and
//! `price_model`; the network shell that serves them over the wire protocol lives beside them:
//! `faults` (what to break on a connection).

pub mod auction;
pub mod book;
pub mod faults;
pub mod price_model;
pub mod server;
pub mod venue;
