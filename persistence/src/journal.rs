//! The order journal: a bounded channel into one background writer that commits events in
//! batches (group commit), and the replay that rebuilds the ledger from it.
//!
//! Invariants:
//! - Sequence numbers are assigned at submission, under the same lock that enqueues the
//!   event, so channel order = sequence order = commit order, gap-free from 1.
//! - A batch commits atomically: its events, the fills they produced and the latest state of
//!   the orders and positions they touched (the projections) land together or not at all.
//! - `committed_seq` (watch channel) only moves after the commit returned; on SQLite with
//!   `synchronous=FULL` and on PostgreSQL that means the batch is durable.
//! - Nothing is dropped silently: a full channel refuses (`try_submit`, event handed back) or
//!   waits (`submit`); every refused event is counted in [`JournalWriter::unjournaled`].
//! - A commit that still fails after its quick retries marks the writer failing (waiters learn
//!   it: `JournalError::WriterFailed`; [`JournalWriter::health`] says `Failing`) and the writer
//!   is restarted under supervision: the same batch is retried with exponential backoff
//!   (bounded: `restart_backoff_max`, at most `max_restarts` in a row), so sequence order holds.
//!   Past the limit, on a lost lease, or when closed while failing, it stops for good and
//!   counts what it could not write as unjournaled.
//! - With a lease epoch ([`JournalConfig::lease_epoch`]) every commit first checks, in its own
//!   transaction, that the store lease is still at that epoch (fencing); a lost lease stops the
//!   writer at once, with nothing written.
//! - Health is `Healthy` only while the writer is neither failing, stopped, nor busy on one
//!   batch for longer than [`JournalConfig::max_lag`].
//! - The writer keeps its own mirror `OrderLedger`, seeded by replay, to derive from/to status,
//!   fills and projection rows. Events the ledger refuses are still journaled, with `error`
//!   set, so the audit trail shows them; replay refuses them again and reports them.

use crate::codec::{id_to_i64, to_json, ts_to_us};
use crate::error::{JournalError, QueryContext, StoreError};
use crate::orders::{
    fill_row, order_row, position_row, FILL_COLS, FILL_HEAD, ORDER_COLS, ORDER_HEAD, ORDER_TAIL,
    POSITION_COLS, POSITION_HEAD, POSITION_TAIL,
};
use crate::sql::{multi_insert, Stmt, Value};

use crate::sql::{Fence, TxError};
use crate::store::{with_pool, Store};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use vpp_engine::ids::ClientOrderId;
use vpp_engine::ledger::{OrderEvent, OrderLedger};
use vpp_engine::position::PositionKey;

/// Called after every committed batch (e.g. to feed a latency histogram). Runs on the writer
/// task: keep it cheap and non-blocking.
pub type CommitObserver = Arc<dyn Fn(&BatchCommitted) + Send + Sync>;

/// What one group commit wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCommitted {
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: usize,
    /// From the start of the transaction to the return of COMMIT (retries included).
    pub commit_latency: Duration,
}

#[derive(Clone)]
pub struct JournalConfig {
    /// Events that may wait in the channel; beyond it `try_submit` refuses and `submit` waits.
    pub capacity: usize,
    /// Most events committed in one transaction.
    pub max_batch: usize,
    /// Quick extra attempts for a failed commit before the writer is marked failing.
    pub commit_retries: u32,
    pub on_commit: Option<CommitObserver>,
    /// The store lease epoch every commit is fenced with (see `Store::acquire_lease`); `None`
    /// writes unfenced (tests, tools).
    pub lease_epoch: Option<u64>,
    /// A batch in commit for longer than this makes the journal unhealthy (`Lagging`).
    pub max_lag: Duration,
    /// Wait before the first restart of a failing writer; doubles per restart in a row.
    pub restart_backoff_initial: Duration,
    /// Cap of the restart backoff.
    pub restart_backoff_max: Duration,
    /// Restarts in a row (same batch) before the writer stops for good.
    pub max_restarts: u32,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            max_batch: 16_384,
            commit_retries: 3,
            on_commit: None,
            lease_epoch: None,
            max_lag: Duration::from_secs(2),
            restart_backoff_initial: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(5),
            max_restarts: 120,
        }
    }
}

impl fmt::Debug for JournalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalConfig")
            .field("capacity", &self.capacity)
            .field("max_batch", &self.max_batch)
            .field("commit_retries", &self.commit_retries)
            .field("on_commit", &self.on_commit.is_some())
            .field("lease_epoch", &self.lease_epoch)
            .field("max_lag", &self.max_lag)
            .field("restart_backoff_initial", &self.restart_backoff_initial)
            .field("restart_backoff_max", &self.restart_backoff_max)
            .field("max_restarts", &self.max_restarts)
            .finish()
    }
}

/// Progress of the writer, published after every batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStatus {
    /// Every event with a sequence up to this one is durable.
    pub committed_seq: u64,
    /// Set while the last commit failed (the writer is restarting) and when it stopped for
    /// good; cleared by the next successful commit.
    pub failed: Option<Arc<str>>,
    /// Supervised restarts since the writer started.
    pub restarts: u64,
    /// The writer gave up (restart limit, lost lease, closed while failing): nothing more
    /// will be written.
    pub stopped: bool,
    /// The writer task has ended (after [`JournalWriter::close`] or a stop).
    pub closed: bool,
}

/// What [`JournalWriter::health`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalHealth {
    Healthy,
    /// One batch has been in commit for `lag` (beyond the configured `max_lag`).
    Lagging {
        lag: Duration,
        max_lag: Duration,
    },
    /// The last commit failed; the writer is restarting with backoff.
    Failing {
        reason: Arc<str>,
        restarts: u64,
    },
    /// The writer stopped for good (or was closed): nothing more is written.
    Stopped {
        reason: Arc<str>,
    },
}

impl JournalHealth {
    pub fn is_healthy(&self) -> bool {
        matches!(self, JournalHealth::Healthy)
    }

    /// A stable short name: `healthy`, `lagging`, `failing`, `stopped`.
    pub fn as_str(&self) -> &'static str {
        match self {
            JournalHealth::Healthy => "healthy",
            JournalHealth::Lagging { .. } => "lagging",
            JournalHealth::Failing { .. } => "failing",
            JournalHealth::Stopped { .. } => "stopped",
        }
    }
}

impl fmt::Display for JournalHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalHealth::Healthy => write!(f, "journal healthy"),
            JournalHealth::Lagging { lag, max_lag } => write!(
                f,
                "journal lagging: a batch has been committing for {} ms (bound {} ms)",
                lag.as_millis(),
                max_lag.as_millis()
            ),
            JournalHealth::Failing { reason, restarts } => {
                write!(f, "journal writer failing (restart {restarts}): {reason}")
            }
            JournalHealth::Stopped { reason } => write!(f, "journal writer stopped: {reason}"),
        }
    }
}

/// One event that did not apply on replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayFailure {
    pub seq: u64,
    pub client_order_id: String,
    pub reason: String,
}

/// What [`Store::replay_journal`] did. Failures are reported, never fatal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub events: u64,
    pub applied: u64,
    /// Stale or duplicate reports: read, changed nothing.
    pub stale: u64,
    pub failed: u64,
    /// The first [`ReplayReport::MAX_FAILURES_KEPT`] failures, for the log and the operator.
    pub failures: Vec<ReplayFailure>,
    pub last_seq: u64,
}

impl ReplayReport {
    pub const MAX_FAILURES_KEPT: usize = 32;

    fn fail(&mut self, seq: u64, client_order_id: String, reason: String) {
        self.failed += 1;
        tracing::warn!(seq, %client_order_id, %reason, "journal event did not apply on replay");
        if self.failures.len() < Self::MAX_FAILURES_KEPT {
            self.failures.push(ReplayFailure {
                seq,
                client_order_id,
                reason,
            });
        }
    }
}

/// Everything start-up needs: the writer, the ledger rebuilt from the journal (for the
/// execution actor) and the replay report. `task` ends once every writer handle is dropped
/// and the queue is committed.
pub struct JournalStart {
    pub writer: JournalWriter,
    pub ledger: OrderLedger,
    pub replay: ReplayReport,
    pub task: tokio::task::JoinHandle<()>,
}

struct Submitted {
    seq: u64,
    event: OrderEvent,
}

/// State the writer handles and the writer task share.
struct Shared {
    /// The next sequence to hand out; locked only to assign it and enqueue (never across await).
    next_seq: Mutex<u64>,
    /// Base of `busy_since_ns`.
    base: Instant,
    /// When the writer took the batch it is committing (ns since `base`, +1); 0 when idle.
    busy_since_ns: AtomicU64,
    /// Events refused or abandoned: never written.
    unjournaled: AtomicU64,
    /// Asks the writer to commit what is queued and end.
    close: Notify,
    max_lag: Duration,
}

impl Shared {
    fn busy_for(&self) -> Option<Duration> {
        let since = self.busy_since_ns.load(Ordering::Acquire);
        (since != 0).then(|| {
            let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(now.saturating_sub(since - 1))
        })
    }

    fn mark_busy(&self) {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.busy_since_ns.store(now + 1, Ordering::Release);
    }

    fn mark_idle(&self) {
        self.busy_since_ns.store(0, Ordering::Release);
    }
}

/// Handle to submit events to the journal. Cheap to clone; all clones feed one writer.
#[derive(Clone)]
pub struct JournalWriter {
    tx: mpsc::Sender<Submitted>,
    shared: Arc<Shared>,
    status: watch::Receiver<JournalStatus>,
    capacity: usize,
}

impl JournalWriter {
    /// Queues `event` without waiting; returns its journal sequence. When the queue is full
    /// the event comes back in [`JournalError::Full`].
    pub fn try_submit(&self, event: OrderEvent) -> Result<u64, JournalError> {
        match self.tx.try_reserve() {
            Ok(permit) => {
                let mut next = self.lock_seq();
                let seq = *next;
                *next += 1;
                permit.send(Submitted { seq, event });
                Ok(seq)
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                self.shared.unjournaled.fetch_add(1, Ordering::Relaxed);
                Err(JournalError::Full {
                    capacity: self.capacity,
                    event: Box::new(event),
                })
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                self.shared.unjournaled.fetch_add(1, Ordering::Relaxed);
                Err(JournalError::Closed {
                    event: Box::new(event),
                })
            }
        }
    }

    /// Queues `event`, waiting for room; returns its journal sequence.
    pub async fn submit(&self, event: OrderEvent) -> Result<u64, JournalError> {
        let Ok(permit) = self.tx.reserve().await else {
            self.shared.unjournaled.fetch_add(1, Ordering::Relaxed);
            return Err(JournalError::Closed {
                event: Box::new(event),
            });
        };
        let mut next = self.lock_seq();
        let seq = *next;
        *next += 1;
        permit.send(Submitted { seq, event });
        Ok(seq)
    }

    /// Waits until every event up to `seq` is committed.
    pub async fn wait_committed(&self, seq: u64) -> Result<(), JournalError> {
        let mut rx = self.status.clone();
        let result = rx
            .wait_for(|s| s.committed_seq >= seq || s.failed.is_some())
            .await
            .map(|s| s.clone());
        match result {
            Ok(s) if s.committed_seq >= seq => Ok(()),
            Ok(s) => Err(JournalError::WriterFailed {
                committed_seq: s.committed_seq,
                reason: s.failed.as_deref().unwrap_or_default().to_owned(),
            }),
            Err(_) => Err(JournalError::WriterGone {
                awaited: seq,
                committed_seq: self.status.borrow().committed_seq,
            }),
        }
    }

    /// Waits until everything submitted so far is committed; returns that sequence.
    pub async fn flush(&self) -> Result<u64, JournalError> {
        let last = self.last_submitted_seq();
        self.wait_committed(last).await?;
        Ok(last)
    }

    /// The sequence of the last event accepted into the queue (0 if none ever).
    pub fn last_submitted_seq(&self) -> u64 {
        self.lock_seq().saturating_sub(1)
    }

    pub fn status(&self) -> JournalStatus {
        self.status.borrow().clone()
    }

    /// Whether the journal can take orders now: not failing, not stopped, not lagging.
    /// Cheap (an atomic load and a watch borrow): the OMS asks it per order.
    pub fn health(&self) -> JournalHealth {
        let (stopped, closed, failed, restarts) = {
            let s = self.status.borrow();
            (s.stopped, s.closed, s.failed.clone(), s.restarts)
        };
        if stopped || closed || self.tx.is_closed() {
            let reason = failed.unwrap_or_else(|| Arc::from("the journal is closed"));
            return JournalHealth::Stopped { reason };
        }
        if let Some(reason) = failed {
            return JournalHealth::Failing { reason, restarts };
        }
        match self.shared.busy_for() {
            Some(lag) if lag > self.shared.max_lag => JournalHealth::Lagging {
                lag,
                max_lag: self.shared.max_lag,
            },
            _ => JournalHealth::Healthy,
        }
    }

    /// Events that were refused (full or closed queue) or abandoned by a stopped writer:
    /// they are not in the journal.
    pub fn unjournaled(&self) -> u64 {
        self.shared.unjournaled.load(Ordering::Relaxed)
    }

    /// Asks the writer to commit everything queued and end; new submissions are refused from
    /// now on. Returns the last committed sequence, or an error if anything submitted was not
    /// journaled (refused, abandoned, or the writer stopped).
    pub async fn close(&self) -> Result<u64, JournalError> {
        self.shared.close.notify_one();
        let mut rx = self.status.clone();
        let _ = rx.wait_for(|s| s.closed).await;
        let status = self.status.borrow().clone();
        let unjournaled = self.unjournaled();
        if status.stopped || unjournaled > 0 {
            return Err(JournalError::WriterFailed {
                committed_seq: status.committed_seq,
                reason: format!(
                    "{unjournaled} event(s) not journaled{}",
                    status
                        .failed
                        .as_deref()
                        .map(|r| format!("; last failure: {r}"))
                        .unwrap_or_default()
                ),
            });
        }
        Ok(status.committed_seq)
    }

    /// Events waiting in the channel (not yet taken by the writer).
    pub fn queued(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock_seq(&self) -> std::sync::MutexGuard<'_, u64> {
        // The critical section cannot panic, so a poisoned lock still holds a valid counter.
        self.shared
            .next_seq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Store {
    /// Rebuilds the ledger from the whole journal, in sequence order, with no look-back
    /// window. Events that fail to decode or apply are counted and logged, not fatal.
    pub async fn replay_journal(&self) -> Result<(OrderLedger, ReplayReport), StoreError> {
        const PAGE: i64 = 10_000;
        let mut ledger = OrderLedger::new();
        let mut report = ReplayReport::default();
        let mut after: i64 = 0;
        loop {
            let sql = "SELECT seq, client_order_id, payload_json FROM order_events \
                 WHERE seq > $1 ORDER BY seq LIMIT $2";
            let rows: Vec<(i64, String, String)> = with_pool!(self, read, |pool| {
                sqlx::query_as(sql)
                    .bind(after)
                    .bind(PAGE)
                    .fetch_all(pool)
                    .await
            })
            .ctx(|| format!("read journal after seq {after}"))?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            for (seq, id, payload) in &rows {
                replay_one(&mut ledger, &mut report, *seq, id, payload);
            }
            if rows.len() < PAGE as usize {
                break;
            }
        }
        if report.failed > 0 {
            tracing::warn!(
                failed = report.failed,
                events = report.events,
                "journal replay had failures"
            );
        }
        Ok((ledger, report))
    }

    /// Replays the journal, then starts the writer (seeded with the replayed ledger, numbering
    /// after the last stored sequence). Call once per database: there is one journal writer.
    pub async fn start_journal(&self, cfg: JournalConfig) -> Result<JournalStart, StoreError> {
        let (ledger, replay) = self.replay_journal().await?;
        let last_seq = self.last_journal_seq().await?;
        let capacity = cfg.capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let (status_tx, status_rx) = watch::channel(JournalStatus {
            committed_seq: last_seq,
            ..JournalStatus::default()
        });
        let shared = Arc::new(Shared {
            next_seq: Mutex::new(last_seq + 1),
            base: Instant::now(),
            busy_since_ns: AtomicU64::new(0),
            unjournaled: AtomicU64::new(0),
            close: Notify::new(),
            max_lag: cfg.max_lag,
        });
        let task = WriterTask {
            store: self.clone(),
            ledger: ledger.clone(),
            status: status_tx,
            shared: Arc::clone(&shared),
            max_batch: cfg.max_batch.max(1),
            commit_retries: cfg.commit_retries,
            on_commit: cfg.on_commit,
            lease_epoch: cfg.lease_epoch,
            backoff_initial: cfg.restart_backoff_initial,
            backoff_max: cfg.restart_backoff_max.max(cfg.restart_backoff_initial),
            max_restarts: cfg.max_restarts,
            closing: false,
        };
        let task = tokio::spawn(task.run(rx));
        Ok(JournalStart {
            writer: JournalWriter {
                tx,
                shared,
                status: status_rx,
                capacity,
            },
            ledger,
            replay,
            task,
        })
    }
}

fn replay_one(
    ledger: &mut OrderLedger,
    report: &mut ReplayReport,
    seq: i64,
    id: &str,
    payload: &str,
) {
    let seq = u64::try_from(seq).unwrap_or(0);
    report.events += 1;
    report.last_seq = seq;
    let event: OrderEvent = match serde_json::from_str(payload) {
        Ok(e) => e,
        Err(e) => return report.fail(seq, id.to_owned(), format!("undecodable payload: {e}")),
    };
    match ledger.apply(&event) {
        Ok(outcome) if outcome.to.is_none() => report.stale += 1,
        Ok(_) => report.applied += 1,
        Err(e) => report.fail(seq, id.to_owned(), e.to_string()),
    }
}

struct WriterTask {
    store: Store,
    ledger: OrderLedger,
    status: watch::Sender<JournalStatus>,
    shared: Arc<Shared>,
    max_batch: usize,
    commit_retries: u32,
    on_commit: Option<CommitObserver>,
    lease_epoch: Option<u64>,
    backoff_initial: Duration,
    backoff_max: Duration,
    max_restarts: u32,
    /// `close` was asked: the channel is closed, what is queued is still committed.
    closing: bool,
}

const EVENT_COLS: usize = 8;
const EVENT_HEAD: &str = "order_events (seq, client_order_id, event, from_status, to_status, \
     payload_json, at_us, error)";

/// Why a batch did not commit.
enum CommitFailure {
    /// Worth a restart (store error, constraint, connection lost).
    Store(String),
    /// The lease is gone: no restart can help.
    Fenced(String),
}

impl WriterTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Submitted>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let n = if self.closing {
                rx.recv_many(&mut batch, self.max_batch).await
            } else {
                let shared = Arc::clone(&self.shared);
                tokio::select! {
                    n = rx.recv_many(&mut batch, self.max_batch) => n,
                    () = shared.close.notified() => {
                        rx.close();
                        self.closing = true;
                        continue;
                    }
                }
            };
            if n == 0 {
                break;
            }
            self.shared.mark_busy();
            let committed = self.commit_supervised(&batch, &mut rx).await;
            self.shared.mark_idle();
            if !committed {
                // Stopped for good: this batch and everything still queued is lost to the
                // journal; count it so the daemon cannot end as if all was well.
                rx.close();
                let mut lost = batch.len() as u64;
                while rx.try_recv().is_ok() {
                    lost += 1;
                }
                self.shared.unjournaled.fetch_add(lost, Ordering::Relaxed);
                tracing::error!(
                    lost,
                    "journal writer stopped for good; events not journaled"
                );
                self.status.send_modify(|s| s.stopped = true);
                break;
            }
            batch.clear();
        }
        self.status.send_modify(|s| s.closed = true);
    }

    /// Commits one batch, restarting with backoff while the store refuses it. `false`: the
    /// writer must stop (lease lost, restart limit, or closed while failing).
    async fn commit_supervised(
        &mut self,
        batch: &[Submitted],
        rx: &mut mpsc::Receiver<Submitted>,
    ) -> bool {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return true;
        };
        let (first, last) = (first.seq, last.seq);
        let stmts = match self.build_statements(batch) {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("seq {first}..={last} cannot be written: {e}");
                tracing::error!(%reason, "journal writer stopped");
                self.status.send_modify(|s| s.failed = Some(reason.into()));
                return false;
            }
        };
        let mut restarts: u32 = 0;
        loop {
            let reason = match self.commit_with_retries(&stmts, first, last).await {
                Ok(()) => return true,
                Err(CommitFailure::Fenced(reason)) => {
                    tracing::error!(%reason, "journal writer stopped: the store lease is lost");
                    self.status.send_modify(|s| s.failed = Some(reason.into()));
                    return false;
                }
                Err(CommitFailure::Store(reason)) => reason,
            };
            if restarts >= self.max_restarts || self.closing {
                tracing::error!(%reason, restarts, closing = self.closing,
                    "journal writer stopped: batch could not be committed");
                self.status.send_modify(|s| s.failed = Some(reason.into()));
                return false;
            }
            restarts += 1;
            let backoff = self
                .backoff_initial
                .saturating_mul(1u32 << (restarts - 1).min(16))
                .min(self.backoff_max);
            tracing::error!(%reason, restart = restarts, backoff_ms = backoff.as_millis() as u64,
                "journal writer failed; restarting after backoff");
            self.status.send_modify(|s| {
                s.failed = Some(reason.into());
                s.restarts += 1;
            });
            let shared = Arc::clone(&self.shared);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shared.close.notified() => {
                    // Shutting down: one last attempt, then give up.
                    rx.close();
                    self.closing = true;
                }
            }
        }
    }

    async fn commit_with_retries(
        &mut self,
        stmts: &[Stmt],
        first: u64,
        last: u64,
    ) -> Result<(), CommitFailure> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let fence = self.lease_epoch.map(|epoch| Fence {
                epoch,
                now_us: ts_to_us(chrono::Utc::now()),
            });
            match self.store.execute_in_tx_fenced(fence, stmts).await {
                Ok(()) => break,
                Err(e @ TxError::Fenced { .. }) => {
                    return Err(CommitFailure::Fenced(format!(
                        "commit of seq {first}..={last} refused: {e}"
                    )))
                }
                Err(e) if attempt < self.commit_retries => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "journal commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(10u64 << attempt.min(6))).await;
                }
                Err(e) => {
                    return Err(CommitFailure::Store(format!(
                        "commit of seq {first}..={last} failed after {} attempts: {e}",
                        attempt + 1
                    )))
                }
            }
        }
        let committed = BatchCommitted {
            first_seq: first,
            last_seq: last,
            events: usize::try_from(last - first + 1).unwrap_or(usize::MAX),
            commit_latency: started.elapsed(),
        };
        self.status.send_modify(|s| {
            s.committed_seq = last;
            s.failed = None;
        });
        if let Some(observer) = &self.on_commit {
            observer(&committed);
        }
        Ok(())
    }

    /// Applies the batch to the mirror ledger and turns it into insert statements: one row
    /// per event, one per fill, and one per order and position touched (latest state only).
    fn build_statements(&mut self, batch: &[Submitted]) -> Result<Vec<Stmt>, StoreError> {
        let mut events = Vec::with_capacity(batch.len() * EVENT_COLS);
        let mut fills = Vec::new();
        let mut touched_orders: HashMap<ClientOrderId, i64> = HashMap::new();
        let mut touched_positions: BTreeMap<PositionKey, i64> = BTreeMap::new();
        for Submitted { seq, event } in batch {
            let seq = id_to_i64("order_events.seq", *seq)?;
            let before = self.ledger.order(&event.client_order_id).map(|o| o.status);
            let (from, to, error) = match self.ledger.apply(event) {
                Ok(outcome) => {
                    if outcome.to.is_some() {
                        touched_orders.insert(event.client_order_id.clone(), seq);
                    }
                    if let Some(fill) = &outcome.fill {
                        fill_row(fill, seq, &mut fills)?;
                        touched_positions.insert(fill.key, seq);
                    }
                    (outcome.from, outcome.to, None)
                }
                Err(e) => {
                    tracing::warn!(seq, error = %e, "journaling an event the ledger refused");
                    (before, None, Some(e.to_string()))
                }
            };
            events.extend([
                Value::I64(seq),
                Value::Text(event.client_order_id.as_str().to_owned()),
                Value::Text(event.name().to_owned()),
                Value::OptText(from.map(|s| s.as_str().to_owned())),
                Value::OptText(to.map(|s| s.as_str().to_owned())),
                Value::Text(to_json("order event", event)?),
                Value::I64(ts_to_us(event.at)),
                Value::OptText(error),
            ]);
        }
        let mut orders = Vec::with_capacity(touched_orders.len() * ORDER_COLS);
        for (id, seq) in &touched_orders {
            if let Some(order) = self.ledger.order(id) {
                order_row(order, *seq, &mut orders)?;
            }
        }
        let mut positions = Vec::with_capacity(touched_positions.len() * POSITION_COLS);
        for (key, seq) in &touched_positions {
            if let Some(pos) = self.ledger.position(key) {
                position_row(key, pos, *seq, &mut positions)?;
            }
        }
        let mut stmts = multi_insert(EVENT_HEAD, "", EVENT_COLS, events);
        stmts.extend(multi_insert(FILL_HEAD, "", FILL_COLS, fills));
        stmts.extend(multi_insert(ORDER_HEAD, ORDER_TAIL, ORDER_COLS, orders));
        stmts.extend(multi_insert(
            POSITION_HEAD,
            POSITION_TAIL,
            POSITION_COLS,
            positions,
        ));
        Ok(stmts)
    }
}
