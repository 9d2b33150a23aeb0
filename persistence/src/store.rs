//! The [`Store`]: one handle over either backend, opened by URL, plus schema migration.
//!
//! SQLite (embedded default):
//! - a file, created if missing, in WAL journal mode set explicitly;
//! - `busy_timeout` is installed when each connection opens (sqlx calls
//!   `sqlite3_busy_timeout` in its connection set-up, before it runs any pragma), so the
//!   `journal_mode=WAL` switch itself already waits on a lock instead of failing `SQLITE_BUSY`;
//! - `synchronous=FULL`: in WAL mode FULL fsyncs the WAL on every commit, so a commit that
//!   returned survives power loss. NORMAL would only fsync at checkpoints and may lose the
//!   last commits, which is not "durable". Group commit in the journal amortises the fsync;
//! - exactly one writer connection (all writes go through it, so writers never contend for
//!   the lock) and a small pool of read-only connections that WAL lets run beside it.
//!
//! `sqlite::memory:` (tests) uses one connection for everything, since every connection to
//! an in-memory database would otherwise see a different database.
//!
//! PostgreSQL: one pool; commits are durable with the server default `synchronous_commit=on`.

use crate::error::{QueryContext, StoreError};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Tunables for [`Store::open_with`]. The defaults suit the daemon on two cores.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// SQLite: how long a connection waits on a locked database before `SQLITE_BUSY`.
    pub busy_timeout: Duration,
    /// SQLite: read-only connections beside the single writer.
    pub sqlite_readers: u32,
    /// PostgreSQL: pool size.
    pub pg_max_connections: u32,
    /// How long to wait for a free pooled connection.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            sqlite_readers: 4,
            pg_max_connections: 8,
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// The connection pools of one backend.
#[derive(Debug, Clone)]
pub enum Backend {
    /// `writer` has exactly one connection; `reader` is read-only (the same pool as `writer`
    /// for an in-memory database).
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
    },
    Postgres(PgPool),
}

/// SQLite connection settings as the database reports them (for checks and `vpp` health).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteSettings {
    pub journal_mode: String,
    /// 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA.
    pub synchronous: i64,
    pub busy_timeout_ms: i64,
    pub foreign_keys: bool,
}

/// Handle to the store. Cheap to clone (pools are reference counted).
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    url: Arc<str>,
    /// The SQLite database file (none in memory or on PostgreSQL): its lease lock file sits
    /// beside it.
    sqlite_file: Option<Arc<std::path::Path>>,
}

/// Runs `$body` with `$pool` bound to the backend's pool: `read` uses the SQLite reader pool,
/// `write` the single SQLite writer. The body is compiled once per backend, so it may use
/// backend-specific types freely as long as the code is valid for both.
macro_rules! with_pool {
    ($store:expr, read, |$pool:ident| $body:expr) => {
        match $store.backend() {
            $crate::store::Backend::Sqlite { reader: $pool, .. } => $body,
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
    ($store:expr, write, |$pool:ident| $body:expr) => {
        match $store.backend() {
            $crate::store::Backend::Sqlite { writer: $pool, .. } => $body,
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

impl Store {
    /// Opens `sqlite://PATH` (file created if missing), `sqlite::memory:`, or
    /// `postgres://...` / `postgresql://...` with default [`StoreOptions`].
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, StoreOptions::default()).await
    }

    pub async fn open_with(url: &str, opts: StoreOptions) -> Result<Self, StoreError> {
        let mut sqlite_file = None;
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            open_postgres(url, &opts).await?
        } else if url.starts_with("sqlite:") {
            let (backend, file) = open_sqlite(url, &opts).await?;
            sqlite_file = file.map(Arc::from);
            backend
        } else {
            return Err(StoreError::InvalidUrl {
                url: redact(url),
                reason: "expected sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DB".into(),
            });
        };
        Ok(Self {
            backend,
            url: redact(url).into(),
            sqlite_file,
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The SQLite database file; `None` in memory and on PostgreSQL.
    pub fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.sqlite_file.as_deref()
    }

    /// "sqlite" or "postgres".
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The URL with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Applies the embedded migrations of this backend. Idempotent: applied versions are
    /// recorded in `_sqlx_migrations` and skipped.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let backend = self.backend_name();
        let result = match &self.backend {
            Backend::Sqlite { writer, .. } => SQLITE_MIGRATOR.run(writer).await,
            Backend::Postgres(pool) => POSTGRES_MIGRATOR.run(pool).await,
        };
        result.map_err(|source| StoreError::Migrate { backend, source })
    }

    /// The SQLite writer connection's settings; `None` on PostgreSQL.
    pub async fn sqlite_settings(&self) -> Result<Option<SqliteSettings>, StoreError> {
        let Backend::Sqlite { writer, .. } = &self.backend else {
            return Ok(None);
        };
        let mut conn = writer
            .acquire()
            .await
            .ctx(|| "acquire sqlite writer".into())?;
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .ctx(|| "read PRAGMA journal_mode".into())?;
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .ctx(|| "read PRAGMA synchronous".into())?;
        let busy_timeout_ms: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .ctx(|| "read PRAGMA busy_timeout".into())?;
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .ctx(|| "read PRAGMA foreign_keys".into())?;
        Ok(Some(SqliteSettings {
            journal_mode,
            synchronous,
            busy_timeout_ms,
            foreign_keys: foreign_keys != 0,
        }))
    }

    /// Closes all pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

fn is_sqlite_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

async fn open_sqlite(
    url: &str,
    opts: &StoreOptions,
) -> Result<(Backend, Option<std::path::PathBuf>), StoreError> {
    let base = SqliteConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    // busy_timeout is applied by sqlx at connection open, before the pragmas below run.
    let base = base.busy_timeout(opts.busy_timeout).foreign_keys(true);
    let connect_err = |source| StoreError::Connect {
        url: url.to_owned(),
        source,
    };
    // Pooled connections live forever: an in-memory database dies with its last connection,
    // and a file database gains nothing from reconnecting.
    let pool_opts = |max: u32| {
        SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(opts.acquire_timeout)
    };
    if is_sqlite_memory(url) {
        let pool = pool_opts(1).connect_with(base).await.map_err(connect_err)?;
        let backend = Backend::Sqlite {
            writer: pool.clone(),
            reader: pool,
        };
        return Ok((backend, None));
    }
    let file = base.get_filename().to_path_buf();
    let writer_opts = base
        .clone()
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    // The writer opens first: it creates the file and switches it to WAL, which persists in
    // the file, so the read-only connections need not (and could not) set it.
    let writer = pool_opts(1)
        .connect_with(writer_opts)
        .await
        .map_err(connect_err)?;
    let reader = pool_opts(opts.sqlite_readers.max(1))
        .connect_with(base.read_only(true))
        .await
        .map_err(connect_err)?;
    Ok((Backend::Sqlite { writer, reader }, Some(file)))
}

async fn open_postgres(url: &str, opts: &StoreOptions) -> Result<Backend, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(opts.pg_max_connections.max(1))
        .acquire_timeout(opts.acquire_timeout)
        .connect(url)
        .await
        .map_err(|source| StoreError::Connect {
            url: redact(url),
            source,
        })?;
    Ok(Backend::Postgres(pool))
}

/// Replaces the password of `scheme://user:password@host` with `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[tokio::test]
    async fn unknown_scheme_is_refused_with_the_valid_forms() {
        let err = Store::open("mysql://x").await.unwrap_err();
        assert!(err.to_string().contains("sqlite://PATH"), "{err}");
    }
}
