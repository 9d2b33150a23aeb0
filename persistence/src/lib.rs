//! `vpp-persistence`: the durable store of the VPP engine and its order journal.
//!
//! Owns: the database schema and its migrations (one set per backend, embedded in the binary),
//! the [`Store`] API over SQLite (embedded default, a file in WAL mode) or PostgreSQL (chosen
//! by URL), and the group-commit [`JournalWriter`] that makes order events durable.
//!
//! Invariants:
//! - The order journal (`order_events`) is the source of truth for orders and positions.
//!   Replaying it through `OrderLedger::apply` ([`Store::replay_journal`]) rebuilds them with
//!   no look-back window; the `orders`, `fills` and `positions` tables are projections written
//!   in the same transaction as the events that produced them, so they never run ahead of or
//!   behind the journal.
//! - Decimals are stored as exact text, instants as integer microseconds since the Unix
//!   epoch (UTC), on both backends; a stored value reads back equal to what was written.
//! - Queries are runtime queries (`sqlx::query` + `bind`): building needs no database.
//! - One writing daemon per store: [`Store::acquire_lease`] takes the store lease, and a
//!   journal started with its epoch commits only while the store is still at that epoch.
//! - Every queue is bounded: the journal channel refuses (`try_submit`) or waits (`submit`)
//!   when full; it never drops an event.

mod catalog;
mod codec;
mod error;
mod journal;
mod lease;
mod markets;
mod orders;
mod records;
mod seeds;
mod sql;
mod store;

pub use error::{JournalError, StoreError};
pub use journal::{
    BatchCommitted, CommitObserver, JournalConfig, JournalHealth, JournalStart, JournalStatus,
    JournalWriter, ReplayFailure, ReplayReport,
};
pub use lease::{LeaseHolder, LeaseRecord, LeaseWait, StoreLease};
pub use orders::StoredOrderEvent;
pub use records::{
    ApiToken, AuditEntry, DispatchInstruction, NewApiToken, RiskEvent, SettlementLine,
    SettlementRecord, StrategyRecord, StrategyVersion, TelemetrySample, MAX_PAGE,
};
pub use store::{Backend, SqliteSettings, Store, StoreOptions};
