//! The daemon's side of the order journal: its configuration from `[journal]`, the monitor
//! that turns an unhealthy journal into a stopped engine, and the `before_send` gate.
//!
//! Owns: [`journal_config`], [`monitor`] (one task), [`before_send_gate`] (one task).
//!
//! Invariants:
//! - While the journal is unhealthy (writer failing or stopped, or lagging past `max_lag_ms`)
//!   the `journal` component is `Halted` in the health registry (so `/health` answers 503
//!   naming it), `vpp_journal_healthy` is 0, and the global kill switch has been engaged with
//!   a reason starting `journal_unavailable` through risk's kill-switch path. The OMS refuses
//!   new orders by itself meanwhile (it asks the journal per order).
//! - When the journal is healthy again only the component turns healthy: the kill switch stays
//!   engaged until an operator releases it.
//! - With `durability = "before_send"` no connector command leaves before everything the OMS
//!   journaled ahead of it is committed; if the commit fails, a new order is not sent and ends
//!   rejected (`SendFailed`), a cancel or replace is not sent.

use crate::config::JournalSection;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use vpp_actors::health::JOURNAL_ACTOR;
use vpp_actors::live::messages::{ConnectorCmd, ToOms, ToRisk};
use vpp_actors::metrics::Metrics;
use vpp_actors::{BoundedSender, Health, Runtime};
use vpp_persistence::{BatchCommitted, JournalConfig, JournalHealth, JournalWriter};

/// Metric names of the journal monitor.
pub mod names {
    /// Times the journal became unavailable, by cause (`failing`, `lagging`, `stopped`).
    pub const UNAVAILABLE_TOTAL: &str = "vpp_journal_unavailable_total";
    /// 1 while the journal takes orders.
    pub const HEALTHY: &str = "vpp_journal_healthy";
    /// Events refused by or abandoned in the journal (never written).
    pub const UNJOURNALED: &str = "vpp_journal_unjournaled_events";
    /// Commits slower than `group_commit_ms`.
    pub const COMMIT_OVER_TARGET_TOTAL: &str = "vpp_journal_commit_over_target_total";
}

/// How often the monitor looks at the journal.
const MONITOR_EVERY: Duration = Duration::from_millis(50);

/// The persistence journal's configuration from `[journal]`, fenced with the lease epoch.
pub fn journal_config(
    section: &JournalSection,
    lease_epoch: u64,
    metrics: &Metrics,
    commit_lag: vpp_actors::metrics::LatencyRecorder,
) -> JournalConfig {
    let target = Duration::from_millis(section.group_commit_ms);
    let over_target = metrics.counter(names::COMMIT_OVER_TARGET_TOTAL, &[]);
    JournalConfig {
        on_commit: Some(Arc::new(move |b: &BatchCommitted| {
            commit_lag.record(b.commit_latency);
            if b.commit_latency > target {
                over_target.inc();
            }
        })),
        lease_epoch: Some(lease_epoch),
        max_lag: Duration::from_millis(section.max_lag_ms),
        restart_backoff_initial: Duration::from_millis(section.restart_backoff_initial_ms),
        restart_backoff_max: Duration::from_millis(section.restart_backoff_max_ms),
        max_restarts: section.max_restarts,
        ..JournalConfig::default()
    }
}

/// Watches the journal until aborted (see the module invariants).
pub async fn monitor(journal: JournalWriter, risk: BoundedSender<ToRisk>, rt: Runtime) {
    let count = |cause: &'static str| {
        rt.metrics
            .counter(names::UNAVAILABLE_TOTAL, &[("cause", cause)])
    };
    let (failing, lagging, stopped) = (count("failing"), count("lagging"), count("stopped"));
    let healthy = rt.metrics.gauge(names::HEALTHY, &[]);
    let unjournaled = rt.metrics.gauge(names::UNJOURNALED, &[]);
    healthy.set(1);
    rt.health.report(JOURNAL_ACTOR, Health::Healthy);
    let mut was_healthy = true;
    let mut kill_pending = false;
    let mut tick = tokio::time::interval(MONITOR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let health = journal.health();
        unjournaled.set(i64::try_from(journal.unjournaled()).unwrap_or(i64::MAX));
        match (&health, was_healthy) {
            (JournalHealth::Healthy, true) => {}
            (JournalHealth::Healthy, false) => {
                was_healthy = true;
                healthy.set(1);
                rt.health.report(JOURNAL_ACTOR, Health::Healthy);
                tracing::warn!(
                    "journal healthy again; trading stays stopped until an operator releases \
                     the global kill switch"
                );
            }
            (_, true) => {
                was_healthy = false;
                healthy.set(0);
                match &health {
                    JournalHealth::Lagging { .. } => lagging.inc(),
                    JournalHealth::Stopped { .. } => stopped.inc(),
                    _ => failing.inc(),
                }
                tracing::error!(journal = %health,
                    "journal unavailable: new orders refused, global kill switch engaged");
                rt.health
                    .report(JOURNAL_ACTOR, Health::Halted(health.to_string()));
                kill_pending = true;
            }
            (_, false) => {
                // Keep the reason current (restart count, lag).
                rt.health
                    .report(JOURNAL_ACTOR, Health::Halted(health.to_string()));
            }
        }
        if kill_pending {
            let kill = ToRisk::KillAll {
                reason: format!("journal_unavailable: {health}"),
            };
            match risk.try_send(kill) {
                Ok(()) => kill_pending = false,
                Err(e) => tracing::error!(error = %e, "kill switch could not reach risk; retrying"),
            }
        }
    }
}

/// `durability = "before_send"`: forwards the OMS's connector commands once everything
/// journaled before them is committed. Ends when the OMS side closes.
pub async fn before_send_gate(
    journal: JournalWriter,
    mut from_oms: mpsc::Receiver<ConnectorCmd>,
    to_connector: mpsc::Sender<ConnectorCmd>,
    oms: BoundedSender<ToOms>,
) {
    const BATCH: usize = 256;
    let mut batch = Vec::with_capacity(BATCH);
    while from_oms.recv_many(&mut batch, BATCH).await > 0 {
        // Every command in the batch was journaled before it was queued here.
        let committed = journal.flush().await;
        for cmd in batch.drain(..) {
            if let Err(e) = &committed {
                not_sent(cmd, &e.to_string(), &oms);
                continue;
            }
            if to_connector.send(cmd).await.is_err() {
                tracing::warn!("connector gone; before_send gate ends");
                return;
            }
        }
    }
}

fn not_sent(cmd: ConnectorCmd, reason: &str, oms: &BoundedSender<ToOms>) {
    match cmd {
        ConnectorCmd::New { request, .. } => {
            let msg = ToOms::SendFailed {
                client_order_id: request.client_order_id,
                reason: format!("journal_unavailable: {reason}"),
            };
            if let Err(e) = oms.try_send(msg) {
                tracing::error!(error = %e, "unsent order could not be reported to the OMS");
            }
        }
        ConnectorCmd::Cancel(id) => {
            tracing::error!(client_order_id = %id, %reason, "cancel not sent: journal unavailable")
        }
        ConnectorCmd::Replace {
            client_order_id, ..
        } => tracing::error!(%client_order_id, %reason, "replace not sent: journal unavailable"),
    }
}
