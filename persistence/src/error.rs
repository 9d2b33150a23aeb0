//! Error types. Every variant says which operation or which stored field failed, so a log line
//! or an API answer can be read without the source code.

use thiserror::Error;
use vpp_engine::ledger::OrderEvent;

#[derive(Debug, Error)]
pub enum StoreError {
    /// The database URL could not be understood.
    #[error("invalid database URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// Opening a connection pool failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },

    /// Applying the embedded migrations failed.
    #[error("migrating the {backend} schema failed: {source}")]
    Migrate {
        backend: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// A statement failed; `what` names the operation (e.g. "upsert market 3").
    #[error("{what} failed: {source}")]
    Query {
        what: String,
        #[source]
        source: sqlx::Error,
    },

    /// A stored value could not be turned back into a domain value.
    #[error("stored {field} is invalid: {reason}")]
    Decode { field: String, reason: String },

    /// A value does not fit its column (e.g. a u64 id above i64::MAX).
    #[error("{field} = {value} does not fit the database column: {reason}")]
    OutOfRange {
        field: &'static str,
        value: String,
        reason: &'static str,
    },

    /// A value could not be serialised to JSON.
    #[error("serialising {what} to JSON failed: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// The row asked for does not exist.
    #[error("{what} not found")]
    NotFound { what: String },

    /// A write would change something immutable (e.g. an existing template version).
    #[error("conflict: {0}")]
    Conflict(String),

    /// Another daemon holds the store's lease (one writer per store).
    #[error("the store {url} is held by another daemon: {holder}; stop it first (or point this one at another store)")]
    LeaseHeld { url: String, holder: String },

    /// This writer's lease epoch is no longer the store's: another daemon took the store over.
    #[error("store lease lost: this writer holds epoch {epoch} but the store is now at {current}")]
    LeaseLost { epoch: u64, current: String },

    /// The lease's lock could not be taken or checked (lock file, advisory lock).
    #[error("store lease: {0}")]
    Lease(String),
}

/// Attaches "what failed" to a sqlx error.
pub(crate) trait QueryContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query {
            what: what(),
            source,
        })
    }
}

/// Errors of the order journal handle.
#[derive(Debug, Error)]
pub enum JournalError {
    /// The bounded channel is full; the event is handed back, never dropped.
    #[error("journal queue is full ({capacity} events waiting); retry or use submit().await")]
    Full {
        capacity: usize,
        event: Box<OrderEvent>,
    },
    /// The writer task has stopped (after a failure or a shutdown); the event is handed back.
    #[error("journal writer has stopped; event for order {} not journaled", .event.client_order_id)]
    Closed { event: Box<OrderEvent> },
    /// The writer could not commit a batch and stopped; nothing after `committed_seq` is durable.
    #[error("journal writer failed after committing seq {committed_seq}: {reason}")]
    WriterFailed { committed_seq: u64, reason: String },
    /// The writer task ended before the awaited sequence was committed.
    #[error(
        "journal writer ended before seq {awaited} was committed (committed: {committed_seq})"
    )]
    WriterGone { awaited: u64, committed_seq: u64 },
}
