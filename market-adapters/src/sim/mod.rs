//! The reference venue simulator. Pure matching components live in `auction`, `book` and
//! `price_model`; the network shell that serves them over the wire protocol lives beside them.

pub mod auction;
pub mod book;
pub mod price_model;
