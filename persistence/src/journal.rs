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
//! - Nothing is dropped: a full channel refuses (`try_submit`, event handed back) or waits
//!   (`submit`). A commit that still fails after bounded retries stops the writer and every
//!   waiter learns it (`JournalError::WriterFailed`).
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
use crate::store::{with_pool, Store};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
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
    /// Extra attempts for a failed commit before the writer gives up.
    pub commit_retries: u32,
    pub on_commit: Option<CommitObserver>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            max_batch: 16_384,
            commit_retries: 3,
            on_commit: None,
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
            .finish()
    }
}

/// Progress of the writer, published after every batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStatus {
    /// Every event with a sequence up to this one is durable.
    pub committed_seq: u64,
    /// Set when the writer stopped because a batch could not be committed.
    pub failed: Option<Arc<str>>,
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

/// Handle to submit events to the journal. Cheap to clone; all clones feed one writer.
#[derive(Clone)]
pub struct JournalWriter {
    tx: mpsc::Sender<Submitted>,
    /// The next sequence to hand out; locked only to assign it and enqueue (never across await).
    next_seq: Arc<Mutex<u64>>,
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
            Err(mpsc::error::TrySendError::Full(())) => Err(JournalError::Full {
                capacity: self.capacity,
                event: Box::new(event),
            }),
            Err(mpsc::error::TrySendError::Closed(())) => Err(JournalError::Closed {
                event: Box::new(event),
            }),
        }
    }

    /// Queues `event`, waiting for room; returns its journal sequence.
    pub async fn submit(&self, event: OrderEvent) -> Result<u64, JournalError> {
        let Ok(permit) = self.tx.reserve().await else {
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

    /// Events waiting in the channel (not yet taken by the writer).
    pub fn queued(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock_seq(&self) -> std::sync::MutexGuard<'_, u64> {
        // The critical section cannot panic, so a poisoned lock still holds a valid counter.
        self.next_seq.lock().unwrap_or_else(|e| e.into_inner())
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
            failed: None,
        });
        let task = WriterTask {
            store: self.clone(),
            ledger: ledger.clone(),
            status: status_tx,
            max_batch: cfg.max_batch.max(1),
            commit_retries: cfg.commit_retries,
            on_commit: cfg.on_commit,
        };
        let task = tokio::spawn(task.run(rx));
        Ok(JournalStart {
            writer: JournalWriter {
                tx,
                next_seq: Arc::new(Mutex::new(last_seq + 1)),
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
    max_batch: usize,
    commit_retries: u32,
    on_commit: Option<CommitObserver>,
}

const EVENT_COLS: usize = 8;
const EVENT_HEAD: &str = "order_events (seq, client_order_id, event, from_status, to_status, \
     payload_json, at_us, error)";

impl WriterTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Submitted>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while rx.recv_many(&mut batch, self.max_batch).await > 0 {
            if let Err(reason) = self.commit_batch(&batch).await {
                tracing::error!(%reason, "journal writer stopped: batch could not be committed");
                self.status.send_modify(|s| s.failed = Some(reason.into()));
                rx.close();
                return;
            }
            batch.clear();
        }
    }

    async fn commit_batch(&mut self, batch: &[Submitted]) -> Result<(), String> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let stmts = self.build_statements(batch).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match self.store.execute_in_tx(&stmts).await {
                Ok(()) => break,
                Err(e) if attempt < self.commit_retries => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "journal commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(10u64 << attempt.min(6))).await;
                }
                Err(e) => {
                    return Err(format!(
                        "commit of seq {}..={} failed after {} attempts: {e}",
                        first.seq,
                        last.seq,
                        attempt + 1
                    ))
                }
            }
        }
        let committed = BatchCommitted {
            first_seq: first.seq,
            last_seq: last.seq,
            events: batch.len(),
            commit_latency: started.elapsed(),
        };
        self.status.send_modify(|s| s.committed_seq = last.seq);
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
