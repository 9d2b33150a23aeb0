//! The store lease: one writing daemon per store, fenced by an epoch.
//!
//! Owns the `store_lease` row (migration 0002) and the lock that decides who may take it:
//! - SQLite: an exclusive `flock` on `<db file>.lock`, held by an open file for the lease's
//!   life. The kernel drops it when the process ends, even on `kill -9`, so a crashed daemon
//!   never leaves a stale lease, and a second process (or a second open in this one) is refused
//!   at once. SQLite's own `locking_mode=EXCLUSIVE` would also exclude a second writer, but it
//!   locks out our own read-only pool too and its refusal (`database is locked`) names nobody.
//! - PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) on a connection detached
//!   from the pool and kept for the lease's life; the server drops it when that session ends.
//! - In-memory SQLite: the row only (nothing else can open that database).
//!
//! Invariants:
//! - Whoever holds the lock bumps `epoch` in the row and names itself (host, pid, boot); a
//!   refused daemon reads the row to name the holder in its error.
//! - Every journal commit runs, in its own transaction, `UPDATE store_lease ... WHERE epoch =
//!   <ours>` and rolls back unless it matched: a writer whose lease was taken over cannot write.
//! - Waiting for the lease (a later standby mode) is [`LeaseWait::WaitUntilFree`]: it polls
//!   the lock, never the row, so it cannot take a lease that is still held.

use crate::codec::ts_to_us;
use crate::error::{QueryContext, StoreError};
use crate::store::{with_pool, Backend, Store};
use sqlx::Connection;
use std::time::Duration;

/// The advisory lock key of the store lease on PostgreSQL ("vpp-lease" folded into an i64).
const PG_LEASE_KEY: i64 = 0x7670_705f_6c65_6173;

/// Who takes the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub host: String,
    pub pid: u32,
    /// The daemon's boot epoch, once known ([`StoreLease::set_boot`]).
    pub boot: Option<u64>,
}

impl LeaseHolder {
    /// This process on this host.
    pub fn this_process() -> Self {
        Self {
            host: host_name(),
            pid: std::process::id(),
            boot: None,
        }
    }
}

/// What to do when another daemon holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseWait {
    /// Refuse at once with [`StoreError::LeaseHeld`] naming the holder (the default daemon).
    FailIfHeld,
    /// Poll the lock until it is free (a standby), at most `timeout` (none: for ever).
    WaitUntilFree {
        poll: Duration,
        timeout: Option<Duration>,
    },
}

/// The stored lease row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub epoch: u64,
    pub holder: LeaseHolder,
    pub acquired_at: chrono::DateTime<chrono::Utc>,
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
    pub released: bool,
}

impl std::fmt::Display for LeaseRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {} pid {} boot {} (lease epoch {}, since {}, last heartbeat {})",
            self.holder.host,
            self.holder.pid,
            self.holder
                .boot
                .map_or_else(|| "-".to_owned(), |b| b.to_string()),
            self.epoch,
            self.acquired_at.to_rfc3339(),
            self.heartbeat_at.to_rfc3339()
        )
    }
}

enum Guard {
    /// Holds the flock while open.
    File(#[allow(dead_code)] std::fs::File),
    /// Holds the advisory lock while the session lives.
    Postgres(sqlx::PgConnection),
    Memory,
}

/// A held lease. Keep it alive as long as the daemon writes; [`StoreLease::release`] at the end
/// (dropping it also frees the lock, without marking the row released).
pub struct StoreLease {
    store: Store,
    epoch: u64,
    guard: Guard,
}

impl std::fmt::Debug for StoreLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreLease")
            .field("url", &self.store.url())
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl StoreLease {
    /// The epoch this lease holds the store under: give it to the journal
    /// (`JournalConfig::lease_epoch`).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Records the daemon's boot epoch in the row (known only after the lease is taken).
    pub async fn set_boot(&self, boot: u64) -> Result<(), StoreError> {
        let boot = i64::try_from(boot).unwrap_or(i64::MAX);
        let epoch = i64::try_from(self.epoch).unwrap_or(i64::MAX);
        let sql = "UPDATE store_lease SET holder_boot = $1 WHERE id = 1 AND epoch = $2";
        let done = with_pool!(self.store, write, |pool| {
            sqlx::query(sql)
                .bind(boot)
                .bind(epoch)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .ctx(|| "record the boot in the store lease".into())?;
        if done != 1 {
            return Err(self.lost().await);
        }
        Ok(())
    }

    /// Marks the row released (the next holder sees a clean hand-over) and frees the lock.
    pub async fn release(self) -> Result<(), StoreError> {
        let epoch = i64::try_from(self.epoch).unwrap_or(i64::MAX);
        let now = ts_to_us(chrono::Utc::now());
        let sql = match self.store.backend() {
            Backend::Sqlite { .. } => {
                "UPDATE store_lease SET released = 1, heartbeat_us = $1 WHERE id = 1 AND epoch = $2"
            }
            Backend::Postgres(_) => {
                "UPDATE store_lease SET released = TRUE, heartbeat_us = $1 WHERE id = 1 AND epoch = $2"
            }
        };
        let result = with_pool!(self.store, write, |pool| {
            sqlx::query(sql)
                .bind(now)
                .bind(epoch)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
        .ctx(|| "release the store lease".into());
        if let Guard::Postgres(conn) = self.guard {
            // Ending the session frees the advisory lock.
            let _ = conn.close().await;
        }
        result.map(|_| ())
    }

    async fn lost(&self) -> StoreError {
        let current = match self.store.lease_record().await {
            Ok(Some(r)) => r.to_string(),
            Ok(None) => "no lease row".to_owned(),
            Err(e) => format!("unreadable ({e})"),
        };
        StoreError::LeaseLost {
            epoch: self.epoch,
            current,
        }
    }
}

impl Store {
    /// Takes the store's lease for `holder`, or (with [`LeaseWait::FailIfHeld`]) refuses with
    /// [`StoreError::LeaseHeld`] naming the daemon that holds it. The store must be migrated.
    pub async fn acquire_lease(
        &self,
        holder: LeaseHolder,
        wait: LeaseWait,
    ) -> Result<StoreLease, StoreError> {
        let started = std::time::Instant::now();
        let guard = loop {
            if let Some(guard) = self.try_lock().await? {
                break guard;
            }
            match wait {
                LeaseWait::FailIfHeld => return Err(self.held_error().await),
                LeaseWait::WaitUntilFree { poll, timeout } => {
                    if timeout.is_some_and(|t| started.elapsed() >= t) {
                        return Err(self.held_error().await);
                    }
                    tokio::time::sleep(poll.max(Duration::from_millis(10))).await;
                }
            }
        };
        let now = ts_to_us(chrono::Utc::now());
        let pid = i64::from(holder.pid);
        let boot = holder.boot.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        let sql = match self.backend() {
            Backend::Sqlite { .. } => {
                "INSERT INTO store_lease (id, epoch, holder_host, holder_pid, holder_boot, \
                 acquired_at_us, heartbeat_us, released) VALUES (1, 1, $1, $2, $3, $4, $4, 0) \
                 ON CONFLICT (id) DO UPDATE SET epoch = store_lease.epoch + 1, \
                 holder_host = excluded.holder_host, holder_pid = excluded.holder_pid, \
                 holder_boot = excluded.holder_boot, acquired_at_us = excluded.acquired_at_us, \
                 heartbeat_us = excluded.heartbeat_us, released = 0 RETURNING epoch"
            }
            Backend::Postgres(_) => {
                "INSERT INTO store_lease (id, epoch, holder_host, holder_pid, holder_boot, \
                 acquired_at_us, heartbeat_us, released) VALUES (1, 1, $1, $2, $3, $4, $4, FALSE) \
                 ON CONFLICT (id) DO UPDATE SET epoch = store_lease.epoch + 1, \
                 holder_host = excluded.holder_host, holder_pid = excluded.holder_pid, \
                 holder_boot = excluded.holder_boot, acquired_at_us = excluded.acquired_at_us, \
                 heartbeat_us = excluded.heartbeat_us, released = FALSE RETURNING epoch"
            }
        };
        let epoch: i64 = with_pool!(self, write, |pool| {
            sqlx::query_scalar(sql)
                .bind(&holder.host)
                .bind(pid)
                .bind(boot)
                .bind(now)
                .fetch_one(pool)
                .await
        })
        .ctx(|| "take the store lease".into())?;
        let epoch = u64::try_from(epoch).map_err(|_| StoreError::Decode {
            field: "store_lease.epoch".into(),
            reason: format!("{epoch} is negative"),
        })?;
        tracing::info!(epoch, host = %holder.host, pid = holder.pid, "store lease taken");
        Ok(StoreLease {
            store: self.clone(),
            epoch,
            guard,
        })
    }

    /// The stored lease row, if any daemon ever took the lease.
    pub async fn lease_record(&self) -> Result<Option<LeaseRecord>, StoreError> {
        type Row = (i64, String, i64, Option<i64>, i64, i64, bool);
        let sql = "SELECT epoch, holder_host, holder_pid, holder_boot, acquired_at_us, \
                   heartbeat_us, released FROM store_lease WHERE id = 1";
        let row: Option<Row> = with_pool!(self, read, |pool| {
            sqlx::query_as(sql).fetch_optional(pool).await
        })
        .ctx(|| "read the store lease".into())?;
        Ok(
            row.map(|(epoch, host, pid, boot, acquired, heartbeat, released)| {
                let ts = |us: i64| chrono::DateTime::from_timestamp_micros(us).unwrap_or_default();
                LeaseRecord {
                    epoch: u64::try_from(epoch).unwrap_or(0),
                    holder: LeaseHolder {
                        host,
                        pid: u32::try_from(pid).unwrap_or(0),
                        boot: boot.and_then(|b| u64::try_from(b).ok()),
                    },
                    acquired_at: ts(acquired),
                    heartbeat_at: ts(heartbeat),
                    released,
                }
            }),
        )
    }

    async fn held_error(&self) -> StoreError {
        let holder = match self.lease_record().await {
            Ok(Some(r)) => r.to_string(),
            Ok(None) => "a daemon that has not recorded itself yet".to_owned(),
            Err(e) => format!("unknown (lease row unreadable: {e})"),
        };
        StoreError::LeaseHeld {
            url: self.url().to_owned(),
            holder,
        }
    }

    /// Takes the lock once; `None` when someone else holds it.
    async fn try_lock(&self) -> Result<Option<Guard>, StoreError> {
        match self.backend() {
            Backend::Sqlite { .. } => {
                let Some(db) = self.sqlite_file() else {
                    return Ok(Some(Guard::Memory));
                };
                let mut name = db.as_os_str().to_owned();
                name.push(".lock");
                let path = std::path::PathBuf::from(name);
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| {
                        StoreError::Lease(format!("cannot open {}: {e}", path.display()))
                    })?;
                match try_flock(&file) {
                    Ok(true) => Ok(Some(Guard::File(file))),
                    Ok(false) => Ok(None),
                    Err(e) => Err(StoreError::Lease(format!(
                        "cannot lock {}: {e}",
                        path.display()
                    ))),
                }
            }
            Backend::Postgres(pool) => {
                let conn = pool
                    .acquire()
                    .await
                    .ctx(|| "connect for the store lease".into())?;
                let mut conn = conn.detach();
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(PG_LEASE_KEY)
                    .fetch_one(&mut conn)
                    .await
                    .ctx(|| "take the store's advisory lock".into())?;
                if got {
                    Ok(Some(Guard::Postgres(conn)))
                } else {
                    let _ = conn.close().await;
                    Ok(None)
                }
            }
        }
    }
}

/// This host's name (`/proc/sys/kernel/hostname`, `$HOSTNAME`, else "unknown").
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// An exclusive, non-blocking `flock` on `file`: `Ok(false)` when another open file holds it.
/// flock (not fcntl) locks belong to the open file, so a second open in this same process is
/// refused too, and the kernel frees the lock when the file closes or the process dies.
#[cfg(unix)]
fn try_flock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Without flock the SQLite lease is the row only (no cross-process exclusion).
#[cfg(not(unix))]
fn try_flock(_file: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}
