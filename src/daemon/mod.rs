//! `vpp run`: boots the actor system from a [`Park`] and runs it until a signal or `--for`.
//!
//! Start-up order (crash recovery), each step finished before the next begins:
//! 0. take the store lease (one writing daemon per store): a daemon on a held store exits at
//!    once, non-zero, naming the holder; the journal commits fenced by the lease epoch;
//! 1. replay the journal into the order ledger (orders and positions);
//! 2. record a boot in the audit log: its id is the boot epoch, part of every client order id
//!    prefix (`s<strategy>b<epoch>-<n>`), so ids never repeat across restarts;
//! 3. connect to the venue and reconcile: adopt orders the venue knows and the journal lacks
//!    (`Recovered`), apply every missed report, journal both and wait for the commit;
//! 4. start the core actors and the venue session (which reconciles again and resubscribes),
//!    wait until it is live;
//! 5. only then start the strategies, seeded with their open orders and positions.
//!
//! Shutdown (SIGINT, SIGTERM or `--for` elapsed): open orders are cancelled or kept per
//! `--keep-orders`, the venue session ends, then every store writer is closed and drained in
//! turn (the order journal, risk events and audit, dispatch instructions, settlement records),
//! the lease is released, and only then the store closes: nothing writes to a closed store.
//! The process exits 0, or non-zero when events could not be journaled.
//!
//! While running, the journal monitor ([`journal::monitor`]) stops trading when the journal
//! cannot record (see docs/operations.md).

pub mod catalog;
pub mod control;
pub mod journal;
pub mod lifecycle;
pub mod park;
pub mod session;
pub mod shadow;
pub mod venue;

use crate::config::{Park, StrategySpec};
use anyhow::Context;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use vpp_actors::live::aggregation::{AggregationLogic, AggregationWiring};
use vpp_actors::live::clock::ScaledClock;
use vpp_actors::live::connector::{run_connector, ConnectorWiring};
use vpp_actors::live::dispatch::{DispatchJournal, DispatchLogic, DispatchWiring};
use vpp_actors::live::messages::{MdSender, ToDispatch, ToOms, ToRisk, ToStrategy};
use vpp_actors::live::oms::{OmsLogic, OmsWiring, SharedLedger};
use vpp_actors::live::risk::{DeviationFeed, RiskLogic, RiskWiring};
use vpp_actors::live::settlement::{SettlementLogic, SettlementWiring, SettlementWriter};
use vpp_actors::live::{recovery, strategies, StrategyRoutes};
use vpp_actors::metrics::{names as metric_names, MetricsSnapshot, Stage};
use vpp_actors::{BoundedSender, Runtime, SupervisedActor, SupervisorSpec};
use vpp_engine::aggregation::ResourceFeed;
use vpp_engine::clock::Clock;
use vpp_engine::dispatch::{DispatchFleet, DispatchUnitSpec, UnitState};
use vpp_engine::ids::{AggregationId, ClientOrderId, StrategyId};
use vpp_engine::ledger::OrderLedger;
use vpp_engine::market::MarketKind;
use vpp_engine::strategy::{timers_due, Timer};
use vpp_engine::Timestamp;
use vpp_market_adapters::client::{AdapterConfig, ConnectionState, VenueAdapter, WsAdapter};
use vpp_market_adapters::protocol::Channel;
use vpp_persistence::{AuditEntry, LeaseHolder, LeaseWait, Store};
use vpp_risk::RiskEngine;

/// How `vpp run` runs. Its `Debug` never shows the venue API key.
#[derive(Clone)]
pub struct RunOptions {
    /// Simulated seconds per real second.
    pub speed: u32,
    /// Anchor of the sped-up clock (default: now). Give the same one to `vpp market-sim`.
    pub clock_anchor: Option<Timestamp>,
    /// Stop by itself after this much real time.
    pub run_for: Option<Duration>,
    /// An external venue (`vpp market-sim`); none: the built-in simulator on loopback.
    pub venue_url: Option<String>,
    pub api_key: String,
    /// Cancel open orders at shutdown (default) or keep them working at the venue.
    pub cancel_on_shutdown: bool,
    /// Real time between status lines.
    pub status_every: Duration,
    /// Where the latency snapshot for `vpp latency` is written.
    pub data_dir: PathBuf,
    /// Operator API listen address (`HOST:PORT`, port 0 picks one); empty: no API.
    pub api_listen: String,
    /// Per-token rate limit of the operator API.
    pub api_rate: crate::api::limits::RateLimit,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("speed", &self.speed)
            .field("clock_anchor", &self.clock_anchor)
            .field("run_for", &self.run_for)
            .field(
                "venue_url",
                &self.venue_url.as_deref().map(control::redact_url),
            )
            .field("api_key", &"<redacted>")
            .field("cancel_on_shutdown", &self.cancel_on_shutdown)
            .field("data_dir", &self.data_dir)
            .field("api_listen", &self.api_listen)
            .finish_non_exhaustive()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            speed: 1,
            clock_anchor: None,
            run_for: None,
            venue_url: None,
            api_key: venue::DEMO_API_KEY.to_owned(),
            cancel_on_shutdown: true,
            status_every: Duration::from_secs(3),
            data_dir: PathBuf::from("data"),
            api_listen: String::new(),
            api_rate: crate::api::limits::RateLimit::default(),
        }
    }
}

/// Name of the latency snapshot file under the data directory.
pub const LATENCY_FILE: &str = "latency.json";

/// The data directory of a database URL: the SQLite file's directory, else `./data`.
pub fn data_dir_of(database_url: &str) -> PathBuf {
    database_url
        .strip_prefix("sqlite://")
        .and_then(|p| Path::new(p).parent())
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("data"), Path::to_path_buf)
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The strategy owning a client order id `s<strategy>b<epoch>-<n>`.
/// The strategy version that made an order `s<strategy>v<version>b<epoch>-<n>`; `None` for ids
/// from before versions were recorded in ids.
pub fn strategy_version_of(id: &ClientOrderId) -> Option<u32> {
    let rest = id.as_str().strip_prefix('s')?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let digits: String = rest
        .strip_prefix('v')?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

pub fn strategy_of(id: &ClientOrderId) -> Option<StrategyId> {
    let rest = id.as_str().strip_prefix('s')?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().map(StrategyId)
}

/// Runs the daemon; returns after a graceful shutdown.
pub async fn run(mut park: Park, store: Store, opts: RunOptions) -> anyhow::Result<()> {
    let anchor = opts.clock_anchor.unwrap_or_else(chrono::Utc::now);
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(anchor, opts.speed));
    let rt = Runtime::new(Arc::clone(&clock));
    tracing::info!(speed = opts.speed, simulated_now = %clock.now(), "clock");

    let in_process = match &opts.venue_url {
        Some(_) => None,
        None => {
            let listen = park
                .daemon
                .venue_listen
                .parse()
                .context("daemon.venue_listen must be HOST:PORT, e.g. 127.0.0.1:0")?;
            let cfg = venue::venue_config(&park, listen);
            Some(venue::InProcessVenue::start(cfg, Arc::clone(&clock))?)
        }
    };
    let url = opts
        .venue_url
        .clone()
        .or_else(|| in_process.as_ref().map(|v| v.url.clone()))
        .unwrap_or_default();
    tracing::info!(%url, in_process = in_process.is_some(), "venue");

    // 0. One writing daemon per store: nothing is written before the lease is ours.
    let lease = store
        .acquire_lease(LeaseHolder::this_process(), LeaseWait::FailIfHeld)
        .await
        .context("cannot take the store lease")?;

    for market in &park.markets {
        store
            .upsert_market(market)
            .await
            .context("cannot store the markets")?;
    }
    let catalog = catalog::sync(&store, &park)
        .await
        .context("cannot store the park's catalog")?;
    tracing::info!(?catalog, "catalog stored");
    // The store is the source of truth for strategies; the file seeds and upgrades it.
    let boot = catalog::sync_strategies(&store, &park)
        .await
        .context("cannot seed the strategies into the store")?;
    for line in &boot.report {
        println!("{line}");
    }
    park.strategies = boot.specs;
    let versions = boot.versions;

    // 1. Journal replay.
    let metrics = rt.metrics.clone();
    let journal_cfg = journal::journal_config(
        &park.journal,
        lease.epoch(),
        &metrics,
        metrics.latency(Stage::JournalCommitLag, "journal"),
    );
    let started = store
        .start_journal(journal_cfg)
        .await
        .context("cannot start the order journal")?;
    let journal = started.writer;
    let mut ledger = started.ledger;
    tracing::info!(
        events = started.replay.events,
        failed = started.replay.failed,
        orders = ledger.orders().count(),
        positions = ledger.positions().len(),
        "journal replayed"
    );

    // 2. Boot epoch.
    let epoch = store
        .insert_audit(&AuditEntry {
            id: 0,
            at: chrono::Utc::now(),
            actor: "system".into(),
            action: "daemon.boot".into(),
            target: "daemon".into(),
            outcome: "ok".into(),
            detail: serde_json::json!({ "speed": opts.speed, "venue": url }),
        })
        .await
        .context("cannot record the boot in the audit log")?;
    lease
        .set_boot(epoch)
        .await
        .context("cannot record the boot in the store lease")?;

    // 3. Reconcile with the venue before anything trades.
    let symbols: HashMap<String, vpp_engine::ids::MarketId> = park
        .markets
        .iter()
        .map(|m| (m.name.clone(), m.id))
        .collect();
    let specs: HashMap<StrategyId, StrategySpec> =
        park.strategies.iter().map(|s| (s.id, s.clone())).collect();
    let owner = |id: &ClientOrderId| -> Option<(Option<StrategyId>, AggregationId)> {
        // Manual orders name their owner in the id, as strategy orders do.
        match control::manual_owner_of(id) {
            Some(control::ManualOwner::Strategy(sid)) => {
                return specs.get(&sid).map(|s| (Some(sid), s.aggregation_id));
            }
            Some(control::ManualOwner::Aggregation(aid)) => {
                return park.aggregations.aggregation(aid).map(|_| (None, aid));
            }
            None => {}
        }
        let sid = strategy_of(id)?;
        specs.get(&sid).map(|s| (Some(sid), s.aggregation_id))
    };
    let rec = recovery::reconcile(
        &url,
        &opts.api_key,
        &ledger,
        &symbols,
        &owner,
        clock.now(),
        Duration::from_secs(10),
    )
    .await
    .context("start-up reconciliation with the venue failed")?;
    for event in &rec.events {
        if let Err(e) = ledger.apply(event) {
            tracing::warn!(error = %e, "reconciled event does not apply");
            continue;
        }
        journal
            .submit(event.clone())
            .await
            .context("cannot journal a reconciled event")?;
    }
    journal
        .flush()
        .await
        .context("cannot commit the reconciled events")?;
    tracing::info!(
        epoch,
        adopted = rec.adopted,
        reports = rec.reports,
        unadoptable = rec.unadoptable.len(),
        account_seq = rec.account_seq,
        "reconciled with the venue"
    );
    // A venue that lost its state while we were down: the session starts from the journal's
    // sequence, so it sees the regression at login, raises the alert, engages the kill switch
    // (`venue_reset`) and ends the orders the venue does not know (`lost`).
    let session_seq = match &rec.venue_reset {
        Some(why) => {
            tracing::error!(alert = "critical", reason = %why, "VENUE RESET seen at start-up");
            ledger.last_report_seq().max(rec.account_seq + 1)
        }
        None => rec.account_seq,
    };

    // 4. Core actors and the venue session.
    let live = start_core(
        &park,
        &rt,
        &clock,
        ledger,
        journal.clone(),
        &url,
        &opts,
        session_seq,
        &store,
    )
    .await?;

    // Risk limits set through the API (the store) over the file's `[risk]`.
    let (limits, report) = catalog::sync_risk_limits(&store, &park)
        .await
        .context("cannot read the stored risk limits")?;
    for line in &report {
        println!("{line}");
    }
    {
        let mut engine = live
            .risk_engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (scope, l) in limits {
            if let Err(e) = engine.update_limits(scope, l, "store", clock.now()) {
                tracing::warn!(?scope, error = %e, "stored risk limits refused; the file's apply");
            }
        }
    }

    // 5. Strategies, then the park and the timers that drive them.
    let mut live = live;
    replay_unsettled_positions(&store, clock.now(), &live).await?;
    let mut lifecycle = lifecycle::Lifecycle::new(
        lifecycle::StrategyCtx {
            rt: rt.clone(),
            clock: Arc::clone(&clock),
            registry: Arc::new(strategies::registry()),
            markets: park.markets.clone(),
            supervision: park.supervision,
            session_dir: park.daemon.record_session_dir.as_ref().map(PathBuf::from),
            epoch,
            risk: live.risk.clone(),
            risk_control: live.risk_control.clone(),
            oms: live.oms.clone(),
            routes: Arc::clone(&live.routes),
            md: Arc::clone(&live.md),
            ledger: Arc::clone(&live.ledger),
        },
        &park.strategies,
        &versions,
    );
    let shadows = lifecycle.start_enabled()?;
    let lifecycle = lifecycle.spawn();
    tracing::info!(
        strategies = park.strategies.iter().filter(|s| s.enabled).count(),
        "trading"
    );
    let api = start_api(
        &park, &store, &rt, &clock, &live, &shadows, &lifecycle, epoch, &url, &opts,
    )
    .await?;
    // Telemetry in, setpoints out: the simulated park or the MQTT broker (`[telemetry]`).
    let mut mqtt = None;
    if let Some(rx) = live.setpoints_rx.take() {
        match &park.telemetry.source {
            crate::config::TelemetrySource::Sim => {
                let sim = park::build(&park, 7)?;
                actix::spawn(park::run(
                    sim,
                    Arc::clone(&clock),
                    live.telemetry.clone(),
                    rx,
                ));
            }
            crate::config::TelemetrySource::Mqtt { host, port } => {
                mqtt = Some(park::start_mqtt(
                    &park,
                    &park.telemetry,
                    (host, *port),
                    Arc::clone(&clock),
                    &rt.metrics,
                    live.telemetry.clone(),
                    live.telemetry_members.clone(),
                    rx,
                )?);
            }
        }
    }
    let timers = actix::spawn(timer_loop(
        park.markets.clone(),
        Arc::clone(&clock),
        Arc::clone(&live.routes),
        live.dispatch.clone(),
        live.risk.clone(),
    ));

    let journal_monitor = actix::spawn(journal::monitor(
        journal.clone(),
        live.risk.clone(),
        rt.clone(),
    ));
    let status = actix::spawn(status_loop(
        rt.clone(),
        Arc::clone(&clock),
        Arc::clone(&live.ledger),
        opts.status_every,
        opts.data_dir.clone(),
        journal.clone(),
    ));
    match opts.run_for {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => tracing::info!("run time elapsed; shutting down"),
                _ = shutdown_signal() => tracing::info!("signal received; shutting down"),
            }
        }
        None => {
            shutdown_signal().await;
            tracing::info!("signal received; shutting down");
        }
    }
    journal_monitor.abort();
    status.abort();
    timers.abort();
    if let Some(api) = api {
        api.stop(true).await;
    }
    let journaled = shutdown(live, &journal, &opts).await;
    if let Some(mqtt) = mqtt {
        mqtt.shutdown(Duration::from_secs(2)).await;
    }
    write_latency(&rt.metrics.snapshot(), &opts.data_dir);
    write_shadow_reports(&shadows, &opts.data_dir);
    drop(in_process);
    if let Err(e) = lease.release().await {
        tracing::error!(error = %e, "store lease not released cleanly");
    }
    store.close().await;
    tracing::info!("stopped");
    match journaled {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!("the daemon ended with events it could not journal: {e}"),
    }
}

/// Handles of the running core.
struct Live {
    ledger: SharedLedger,
    routes: StrategyRoutes,
    oms: BoundedSender<ToOms>,
    risk: BoundedSender<ToRisk>,
    md: Arc<RwLock<Vec<MdSender>>>,
    dispatch: Vec<BoundedSender<ToDispatch>>,
    adapter: Arc<WsAdapter>,
    setpoints: mpsc::Sender<vpp_actors::live::dispatch::Setpoint>,
    setpoints_rx: Option<mpsc::Receiver<vpp_actors::live::dispatch::Setpoint>>,
    telemetry: Vec<BoundedSender<vpp_actors::live::messages::TelemetryBatch>>,
    /// The resources of each `telemetry` target, in the same order (routes MQTT batches).
    telemetry_members: Vec<std::collections::HashSet<vpp_engine::ids::ResourceId>>,
    risk_engine: vpp_actors::live::risk::SharedRisk,
    risk_control: actix::Recipient<vpp_actors::live::messages::RiskControl>,
    /// The store writers besides the order journal, closed in this order at shutdown.
    writers: Vec<(&'static str, vpp_actors::live::writer::WriterTask)>,
}

/// Starts the operator API on `opts.api_listen` (none when empty) over the live handles.
#[allow(clippy::too_many_arguments)]
async fn start_api(
    park: &Park,
    store: &Store,
    rt: &Runtime,
    clock: &Arc<dyn Clock>,
    live: &Live,
    shadows: &Shadows,
    lifecycle: &lifecycle::LifecycleHandle,
    epoch: u64,
    url: &str,
    opts: &RunOptions,
) -> anyhow::Result<Option<actix_web::dev::ServerHandle>> {
    if opts.api_listen.trim().is_empty() {
        tracing::info!("operator API disabled (empty api_listen)");
        return Ok(None);
    }
    let listen: std::net::SocketAddr = opts.api_listen.parse().with_context(|| {
        format!(
            "daemon.api_listen / --api-listen {:?} must be HOST:PORT, e.g. 127.0.0.1:8080",
            opts.api_listen
        )
    })?;
    let park = Arc::new(park.clone());
    let engine = control::EngineHandle::new(
        Arc::clone(&park),
        Arc::clone(clock),
        Arc::clone(&live.ledger),
        Arc::clone(&live.risk_engine),
        live.risk.clone(),
        live.risk_control.clone(),
        live.oms.clone(),
        Arc::clone(&live.adapter),
        epoch,
        url,
    )
    .with_shadows(shadows.clone())
    .with_health(rt.health.clone())
    .with_store(store.clone())
    .with_lifecycle(lifecycle.clone());
    let state = crate::api::ApiState::new(
        store.clone(),
        Some(Arc::new(engine)),
        rt.clone(),
        park,
        opts.api_rate,
    );
    let (handle, bound) = crate::api::serve(state, listen)
        .await
        .map_err(|e| anyhow::anyhow!("operator API: {e}"))?;
    println!("operator API on http://{bound}/api/v1");
    Ok(Some(handle))
}

fn risk_engine(park: &Park) -> anyhow::Result<RiskEngine> {
    Ok(crate::config::risk_engine(
        &park.source,
        &park.risk,
        &park.markets,
    )?)
}

fn core_spec(policy: &vpp_actors::RestartPolicy, name: &str, capacity: usize) -> SupervisorSpec {
    let actor = name.to_owned();
    SupervisorSpec::new(name)
        .policy(*policy)
        .mailbox_capacity(capacity)
        .on_escalation(move |e| {
            tracing::error!(actor = %actor, cause = %e.cause, "core actor halted: daemon degraded");
        })
}

#[allow(clippy::too_many_arguments)]
async fn start_core(
    park: &Park,
    rt: &Runtime,
    clock: &Arc<dyn Clock>,
    ledger: OrderLedger,
    journal: vpp_persistence::JournalWriter,
    url: &str,
    opts: &RunOptions,
    account_seq: u64,
    store: &Store,
) -> anyhow::Result<Live> {
    let routes: StrategyRoutes = Arc::new(Mutex::new(HashMap::new()));
    let open_orders: Vec<_> = ledger.open_orders().cloned().collect();
    let ledger: SharedLedger = Arc::new(Mutex::new(ledger));
    let (conn_tx, conn_rx) = mpsc::channel(1_024);
    let (sp_tx, sp_rx) = mpsc::channel(4_096);

    // Dispatch and settlement actors, one each per aggregation; instructions and records go
    // to the store through bounded channels and writer tasks (never awaited by the actors).
    let mut dispatch = Vec::new();
    let mut telemetry = Vec::new();
    let mut telemetry_members = Vec::new();
    let (dispatch_journal, dispatch_task) =
        DispatchJournal::spawn(store.clone(), 8_192, &rt.metrics);
    let (settlement_writer, settlement_task) =
        SettlementWriter::spawn(store.clone(), 1_024, &rt.metrics);
    // Every Settlement actor also takes the venue's regulation and DR announcements.
    let mut settlements = Vec::new();
    let markets: HashMap<_, _> = park.markets.iter().map(|m| (m.id, m.clone())).collect();
    // OMS and risk address each other (and dispatch feeds risk's deviation monitor): risk's
    // sender reaches them through a slot.
    let risk_slot = Arc::new(OnceLock::new());
    // One setpoint book for the park: a resource shared by aggregations gets Σ their deltas.
    let book = vpp_actors::live::dispatch::SharedBook::default();
    for agg in park.aggregations.aggregations() {
        let mut members = Vec::new();
        let mut kinds = std::collections::BTreeMap::new();
        for m in &agg.members {
            let Some(r) = park.resources.iter().find(|r| r.id == m.resource_id) else {
                continue;
            };
            let t = park.templates.version(r.template_id, r.template_version)?;
            members.push((
                DispatchUnitSpec::from_params(r.id, m.share_pct, &t.params),
                UnitState::OFFLINE,
            ));
            kinds.insert(r.id, t.kind.clone());
        }
        let fleet = DispatchFleet::new(agg.id, members)
            .map_err(|e| anyhow::anyhow!("aggregation {}: dispatch fleet: {e}", agg.name))?;
        let sw = SettlementWiring {
            aggregation_id: agg.id,
            name: agg.name.clone(),
            clock: Arc::clone(clock),
            metrics: rt.metrics.clone(),
            rule: park.settlement.rule.clone(),
            rates: park.settlement.rates,
            regulation_mileage_mw_per_mw: park.settlement.regulation_mileage_mw_per_mw,
            markets: markets.clone(),
            kinds: kinds.clone(),
            writer: settlement_writer.clone(),
            penalty_reference: park.settlement.penalty_reference,
        };
        let settlement = SupervisedActor::new(
            core_spec(
                &park.supervision,
                &format!("settlement/{}", agg.name),
                1_024,
            ),
            rt.clone(),
            SettlementLogic::new(sw),
            |s: &SettlementLogic| Ok(s.clone()),
        )?
        .start();
        settlements.push(settlement.sender());
        let settings = park.dispatch.get(&agg.id).copied().unwrap_or_default();
        let w = DispatchWiring {
            aggregation_id: agg.id,
            name: agg.name.clone(),
            clock: Arc::clone(clock),
            metrics: rt.metrics.clone(),
            method: settings.method,
            tracker: settings.tracker,
            setpoints: sp_tx.clone(),
            journal: dispatch_journal.clone(),
            settlement: Some(settlement.sender()),
            deviation: Some(DeviationFeed {
                risk: Arc::clone(&risk_slot),
                strategy: {
                    let mut own = park
                        .strategies
                        .iter()
                        .filter(|s| s.aggregation_id == agg.id && s.enabled);
                    own.next().filter(|_| own.next().is_none()).map(|s| s.id)
                },
            }),
            headroom_markets: park
                .markets
                .iter()
                .filter(|m| m.kind.holds_headroom())
                .map(|m| m.id)
                .collect(),
            behaviours: kinds
                .iter()
                .map(|(id, k)| (*id, vpp_engine::schedule::Behaviour::of(k)))
                .collect(),
            book: book.clone(),
        };
        let logic = DispatchLogic::new(fleet, w).map_err(|e| anyhow::anyhow!(e))?;
        let handle = SupervisedActor::new(
            core_spec(&park.supervision, &format!("dispatch/{}", agg.name), 1_024),
            rt.clone(),
            logic,
            |s: &DispatchLogic| Ok(s.clone()),
        )?
        .start();
        dispatch.push(handle.sender());
        telemetry.push(handle.sender());
        telemetry_members.push(agg.members.iter().map(|m| m.resource_id).collect());
    }

    // `before_send`: the OMS's commands pass a gate that waits for their journal commit.
    let (oms_connector, gate_rx) = match park.journal.durability {
        crate::config::Durability::GroupCommit => (conn_tx.clone(), None),
        crate::config::Durability::BeforeSend => {
            let (tx, rx) = mpsc::channel(1_024);
            (tx, Some(rx))
        }
    };
    let oms_w = OmsWiring {
        ledger: Arc::clone(&ledger),
        journal: journal.clone(),
        connector: oms_connector,
        risk: Arc::clone(&risk_slot),
        strategies: Arc::clone(&routes),
        dispatch: dispatch.clone(),
        clock: Arc::clone(clock),
        metrics: rt.metrics.clone(),
    };
    let rebuild_w = oms_w.clone();
    let oms = SupervisedActor::new(
        core_spec(&park.supervision, "oms", 4_096),
        rt.clone(),
        OmsLogic::new(oms_w),
        // The ledger is shared and each apply is atomic: the rebuilt OMS continues from it.
        move |_: &SharedLedger| Ok(OmsLogic::new(rebuild_w.clone())),
    )?
    .start();
    if let Some(gate_rx) = gate_rx {
        tracing::info!("journal durability before_send: each order is committed before it is sent");
        actix::spawn(journal::before_send_gate(
            journal.clone(),
            gate_rx,
            conn_tx.clone(),
            oms.sender(),
        ));
    }
    drop(conn_tx);
    let shared_risk = Arc::new(Mutex::new(risk_engine(park)?));
    let (risk_journal, risk_task) =
        vpp_actors::live::risk::RiskJournal::spawn(store.clone(), 4_096, &rt.metrics);
    let risk_w = RiskWiring {
        engine: Arc::clone(&shared_risk),
        clock: Arc::clone(clock),
        oms: oms.sender(),
        strategies: Arc::clone(&routes),
        metrics: rt.metrics.clone(),
        // Rejections, alerts and kill-switch/limit audits: bounded channel, batching writer.
        journal: Some(risk_journal),
    };
    let rebuild_w = risk_w.clone();
    let risk = SupervisedActor::new(
        core_spec(&park.supervision, "risk", 4_096),
        rt.clone(),
        RiskLogic::new(risk_w),
        move |_: &vpp_actors::live::risk::SharedRisk| Ok(RiskLogic::new(rebuild_w.clone())),
    )?
    .start();
    let _ = risk_slot.set(risk.sender());

    // Aggregation actors.
    for agg in park.aggregations.aggregations() {
        let Some(state) = park.aggregations.aggregation_state(agg.id).cloned() else {
            continue;
        };
        let mut feeds = HashMap::new();
        for m in &agg.members {
            let Some(r) = park.resources.iter().find(|r| r.id == m.resource_id) else {
                continue;
            };
            let t = park.templates.version(r.template_id, r.template_version)?;
            feeds.insert(r.id, ResourceFeed::from_resource(r, &t.params));
        }
        let w = AggregationWiring {
            clock: Arc::clone(clock),
            metrics: rt.metrics.clone(),
            risk: risk.sender(),
            routes: Arc::clone(&routes),
            // Every strategy of the aggregation, enabled or not: one the API activates later
            // gets capacity as soon as its route exists.
            strategies: park
                .strategies
                .iter()
                .filter(|s| s.aggregation_id == agg.id)
                .map(|s| s.id)
                .collect(),
        };
        let handle = SupervisedActor::new(
            // A snapshot clones every member's feed; taking one per 32 batches keeps that off
            // the per-sample path. A rebuilt state is still self-consistent (contributions and
            // totals move together) and the next sample of each resource brings it current.
            core_spec(&park.supervision, &format!("aggregation/{}", agg.name), 256)
                .snapshot_every(32),
            rt.clone(),
            AggregationLogic::new(state, feeds, w),
            |s: &AggregationLogic| Ok(s.clone()),
        )?
        .start();
        telemetry.push(handle.sender());
        telemetry_members.push(agg.members.iter().map(|m| m.resource_id).collect());
    }

    // The venue session and its connector.
    let cfg = AdapterConfig {
        venue: "venue".into(),
        url: url.to_owned(),
        api_key: opts.api_key.clone(),
        markets: venue::market_mappings(park),
        ..AdapterConfig::default()
    };
    let (adapter, events) = WsAdapter::connect(cfg, Arc::clone(clock));
    adapter
        .restore(open_orders, account_seq)
        .await
        .map_err(|e| anyhow::anyhow!("venue adapter: {e}"))?;
    for m in &park.markets {
        let mut channels = vec![Channel::Prices];
        match m.kind {
            MarketKind::RealTime | MarketKind::CapacityLease => channels.push(Channel::Book),
            MarketKind::DayAhead => channels.push(Channel::AuctionResults),
            MarketKind::Regulation => channels.push(Channel::AncillaryResults),
            MarketKind::DemandResponse => channels.push(Channel::DrEvents),
            _ => {}
        }
        for ch in channels {
            adapter
                .subscribe(ch, &m.name)
                .await
                .map_err(|e| anyhow::anyhow!("subscribe {ch:?} {}: {e}", m.name))?;
        }
    }
    let adapter = Arc::new(adapter);
    let md = Arc::new(RwLock::new(Vec::new()));
    let symbols = park
        .markets
        .iter()
        .map(|m| (m.name.clone(), m.id))
        .collect();
    let wiring = ConnectorWiring {
        venue: "venue".into(),
        clock: Arc::clone(clock),
        metrics: rt.metrics.clone(),
        health: rt.health.clone(),
        oms: oms.recipient(),
        risk: risk.sender(),
        strategies: Arc::clone(&md),
        symbols,
        settlement: settlements,
    };
    actix::spawn(run_connector(wiring, Arc::clone(&adapter), events, conn_rx));
    let mut state = adapter.state_watch();
    let live = tokio::time::timeout(
        Duration::from_secs(30),
        state.wait_for(|s| *s == ConnectionState::Live),
    )
    .await;
    if !matches!(live, Ok(Ok(_))) {
        anyhow::bail!("the venue session at {url} did not become live within 30 s");
    }
    Ok(Live {
        ledger,
        routes,
        oms: oms.sender(),
        risk: risk.sender(),
        risk_engine: shared_risk,
        risk_control: risk.recipient(),
        md,
        dispatch,
        adapter,
        setpoints: sp_tx,
        setpoints_rx: Some(sp_rx),
        telemetry,
        telemetry_members,
        writers: vec![
            ("risk events and audit", risk_task),
            ("dispatch instructions", dispatch_task),
            ("settlement records", settlement_task),
        ],
    })
}

use shadow::Shadows;

/// Writes `<data_dir>/shadow/<name>.json` per shadow strategy: paper P&L and its last intents.
fn write_shadow_reports(shadows: &Shadows, data_dir: &Path) {
    for (name, paper) in shadows {
        let paper = paper.lock().unwrap_or_else(PoisonError::into_inner);
        let last: Vec<_> = paper.log().rev().take(1_000).collect();
        let report = serde_json::json!({
            "strategy": name,
            "paper": paper.pnl(),
            "intents_total": paper.logged_total(),
            "last_intents": last,
        });
        let dir = data_dir.join("shadow");
        let path = dir.join(format!("{}.json", session::file_stem(name)));
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&report).unwrap_or_default(),
            )
        });
        match written {
            Ok(()) => tracing::info!(strategy = %name, cash_cny = %paper.pnl().cash_cny,
                intents = paper.logged_total(), path = %path.display(), "shadow paper P&L"),
            Err(e) => {
                tracing::warn!(strategy = %name, error = %e, "cannot write the shadow report")
            }
        }
    }
}

async fn timer_loop(
    markets: Vec<vpp_engine::market::Market>,
    clock: Arc<dyn Clock>,
    routes: StrategyRoutes,
    dispatch: Vec<BoundedSender<ToDispatch>>,
    risk: BoundedSender<ToRisk>,
) {
    let lead = chrono::Duration::minutes(30);
    let mut last = clock.now();
    let mut due = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = clock.now();
        due.clear();
        last = timers_due(&markets, lead, last, now, &mut due);
        let _ = risk.try_send(ToRisk::Tick(now));
        if due.is_empty() {
            continue;
        }
        let targets: Vec<BoundedSender<ToStrategy>> = routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for timer in &due {
            for t in &targets {
                if let Err(e) = t.try_send(ToStrategy::Timer(*timer)) {
                    tracing::warn!(error = %e, "timer not delivered");
                }
            }
            if let Timer::IntervalStart { interval } = timer {
                for d in &dispatch {
                    let _ = d.try_send(ToDispatch::IntervalStart(*interval));
                }
            }
        }
    }
}

/// Positions replayed from the journal reach the Dispatch actors (and through them
/// settlement): every position of the last [`REPLAY_SETTLEMENT_DAYS`] days whose interval has
/// no settlement line yet. An interval already over settles with zero delivery at the next
/// interval start; one still ahead is dispatched when it starts. Nothing is settled twice.
const REPLAY_SETTLEMENT_DAYS: i64 = 2;

async fn replay_unsettled_positions(
    store: &Store,
    now: vpp_engine::Timestamp,
    live: &Live,
) -> anyhow::Result<()> {
    let since = now - chrono::Duration::days(REPLAY_SETTLEMENT_DAYS);
    let settled: std::collections::HashSet<_> = store
        .settled_intervals(since, 100_000)
        .await
        .context("cannot read the settled intervals")?
        .into_iter()
        .collect();
    let positions: Vec<_> = live
        .ledger
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .positions()
        .iter()
        .filter(|(k, _)| k.interval.start() >= since)
        .filter(|(k, _)| !settled.contains(&(k.aggregation_id, k.interval)))
        .map(|(k, p)| (*k, p.clone()))
        .collect();
    let mut sent = 0usize;
    for (key, position) in positions {
        for d in &live.dispatch {
            let msg = ToDispatch::Position {
                key,
                position: position.clone(),
            };
            match d.try_send(msg) {
                Ok(()) => sent += 1,
                Err(e) => tracing::error!(error = %e, aggregation = %key.aggregation_id,
                    interval = %key.interval, "replayed position not handed to dispatch: \
                    this interval will not be settled"),
            }
        }
    }
    tracing::info!(
        sent,
        already_settled = settled.len(),
        "unsettled positions replayed to dispatch"
    );
    Ok(())
}

fn sum_counters(m: &MetricsSnapshot, name: &str) -> u64 {
    m.counters
        .iter()
        .filter(|c| c.name == name)
        .map(|c| c.value)
        .sum()
}

fn status_line(
    m: &MetricsSnapshot,
    ledger: &SharedLedger,
    now: Timestamp,
    health: &vpp_actors::HealthSnapshot,
    journal: &vpp_persistence::JournalHealth,
) -> String {
    let connected: i64 = m
        .gauges
        .iter()
        .filter(|g| g.name == "vpp_venue_connected")
        .map(|g| g.value)
        .sum();
    let (open, positions) = {
        let l = ledger.lock().unwrap_or_else(PoisonError::into_inner);
        (l.open_orders().count(), l.positions().len())
    };
    let p99 = m
        .latency(Stage::OmsToWire, "tick_to_order")
        .map_or_else(|| "-".to_owned(), |s| format!("{:.0}us", s.p99_us));
    format!(
        "sim {} | {} | connections {connected} | orders {} (open {open}) | fills {} | positions {positions} | p99 tick-to-order {p99} | restarts {}{}",
        now.format("%Y-%m-%d %H:%M"),
        match health.status {
            vpp_actors::OverallHealth::Healthy => "healthy".to_owned(),
            vpp_actors::OverallHealth::Degraded => format!(
                "DEGRADED ({})",
                health
                    .actors
                    .iter()
                    .filter(|a| !a.health.is_healthy())
                    .map(|a| a.actor.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        sum_counters(m, metric_names::ORDERS_TOTAL),
        sum_counters(m, vpp_actors::live::oms::names::FILLS_TOTAL),
        sum_counters(m, metric_names::RESTARTS_TOTAL),
        if journal.is_healthy() {
            String::new()
        } else {
            format!(" | JOURNAL UNAVAILABLE, not trading: {journal}")
        },
    )
}

async fn status_loop(
    rt: Runtime,
    clock: Arc<dyn Clock>,
    ledger: SharedLedger,
    every: Duration,
    data_dir: PathBuf,
    journal: vpp_persistence::JournalWriter,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let snapshot = rt.metrics.snapshot();
        let health = rt.health.snapshot();
        let line = status_line(&snapshot, &ledger, clock.now(), &health, &journal.health());
        tracing::info!(target: "vpp::status", "{line}");
        write_latency(&snapshot, &data_dir);
    }
}

/// Writes the metrics snapshot `vpp latency` prints (atomically: temp file, then rename).
fn write_latency(snapshot: &MetricsSnapshot, data_dir: &Path) {
    let path = data_dir.join(LATENCY_FILE);
    let tmp = data_dir.join(format!("{LATENCY_FILE}.tmp"));
    let result = serde_json::to_vec(snapshot)
        .map_err(|e| e.to_string())
        .and_then(|bytes| std::fs::write(&tmp, bytes).map_err(|e| e.to_string()))
        .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| e.to_string()));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the latency snapshot");
    }
}

/// Reads the snapshot a running (or the last) daemon wrote.
pub fn read_latency(data_dir: &Path) -> anyhow::Result<MetricsSnapshot> {
    let path = data_dir.join(LATENCY_FILE);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {}: is `vpp run` running with this data directory?",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a snapshot", path.display()))
}

/// How long a graceful stop waits for the cancels of sent orders to be answered.
const SHUTDOWN_CANCEL_WAIT: Duration = Duration::from_millis(1_500);

/// Stops trading, then closes every store writer (the order journal first); `Err` names what
/// could not be journaled.
async fn shutdown(
    mut live: Live,
    journal: &vpp_persistence::JournalWriter,
    opts: &RunOptions,
) -> Result<u64, String> {
    // No new orders from here on, whatever the strategies still decide.
    let kill = ToRisk::KillAll {
        reason: "daemon shutdown".into(),
    };
    if let Err(e) = live.risk.try_send(kill) {
        tracing::error!(error = %e, "kill switch could not reach risk");
    }
    // Bounded and final: orders queued in the adapter behind the venue's rate limit are
    // never sent; they end `cancelled_unsent` (journaled through the OMS below), and the
    // cancels of sent orders no longer wait behind them.
    match live
        .adapter
        .drop_unsent("daemon shutdown: queued, never sent")
        .await
    {
        Ok(n) => tracing::info!(orders = n, "queued orders ended unsent"),
        Err(e) => tracing::error!(error = %e, "queued orders could not be ended"),
    }
    if opts.cancel_on_shutdown {
        let reason = "daemon shutdown".to_owned();
        if let Err(e) = live.oms.try_send(ToOms::CancelAll { reason }) {
            tracing::error!(error = %e, "cancel-all could not reach the OMS");
        }
        // Give the cancels time to reach the venue (they are not rate limited) and their
        // reports to come back; bounded so a stop never hangs.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_CANCEL_WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let open = live
                .ledger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .open_orders()
                .count();
            if open == 0 {
                break;
            }
        }
    } else {
        tracing::info!("keeping open orders working at the venue");
        // Still wait (bounded) for the unsent ends to be journaled by the OMS.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_CANCEL_WAIT;
        while tokio::time::Instant::now() < deadline {
            let unsent_pending = live
                .ledger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .open_orders()
                .any(|o| o.status == vpp_engine::order::OrderStatus::New);
            if !unsent_pending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    live.routes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    // Strategies get no more market data: nothing new is decided (and refused) from here on.
    live.md
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    live.adapter.shutdown().await;
    drop(live.setpoints);
    // Close the writers before the store: each drains what is queued, then refuses.
    let journaled = match tokio::time::timeout(Duration::from_secs(15), journal.close()).await {
        Ok(Ok(seq)) => {
            tracing::info!(committed_seq = seq, closed = true, "journal flushed");
            Ok(seq)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "journal closed with events not journaled");
            Err(e.to_string())
        }
        Err(_) => {
            tracing::error!("journal did not close within 15 s");
            Err("the journal did not close within 15 s".to_owned())
        }
    };
    for (name, writer) in live.writers.drain(..) {
        if !writer.close(Duration::from_secs(5)).await {
            tracing::error!(writer = name, "store writer did not drain within 5 s");
        }
    }
    journaled
}
