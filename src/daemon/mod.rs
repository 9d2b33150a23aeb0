//! `vpp run`: boots the actor system from a [`Park`] and runs it until a signal or `--for`.
//!
//! Start-up order (crash recovery), each step finished before the next begins:
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
//! `--keep-orders`, the journal is flushed, the process exits 0.

pub mod catalog;
pub mod control;
pub mod park;
pub mod session;
pub mod shadow;
pub mod venue;

use crate::config::{Park, StrategySpec};
use anyhow::Context;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use vpp_actors::live::aggregation::{AggregationLogic, AggregationWiring};
use vpp_actors::live::clock::ScaledClock;
use vpp_actors::live::connector::{run_connector, ConnectorWiring};
use vpp_actors::live::dispatch::{DispatchJournal, DispatchLogic, DispatchWiring};
use vpp_actors::live::messages::{MdConflator, MdSender, ToDispatch, ToOms, ToRisk, ToStrategy};
use vpp_actors::live::oms::{OmsLogic, OmsWiring, SharedLedger};
use vpp_actors::live::risk::{DeviationFeed, RiskLogic, RiskWiring};
use vpp_actors::live::settlement::{SettlementLogic, SettlementWiring, SettlementWriter};
use vpp_actors::live::strategy::{StrategyExtras, StrategyLogic, StrategyWiring};
use vpp_actors::live::{recovery, strategies, StrategyRoutes};
use vpp_actors::metrics::{names as metric_names, MetricsSnapshot, Stage};
use vpp_actors::{BoundedSender, Runtime, SupervisedActor, SupervisorSpec};
use vpp_engine::aggregation::ResourceFeed;
use vpp_engine::clock::Clock;
use vpp_engine::dispatch::{DispatchFleet, DispatchUnitSpec, UnitState};
use vpp_engine::ids::{AggregationId, ClientOrderId, StrategyId};
use vpp_engine::ledger::OrderLedger;
use vpp_engine::market::MarketKind;
use vpp_engine::strategy::{timers_due, HostConfig, StrategyInit, StrategyParams, Timer};
use vpp_engine::Timestamp;
use vpp_market_adapters::client::{AdapterConfig, ConnectionState, VenueAdapter, WsAdapter};
use vpp_market_adapters::protocol::Channel;
use vpp_persistence::{AuditEntry, JournalConfig, Store};
use vpp_risk::{RiskConfig, RiskEngine};

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
pub async fn run(park: Park, store: Store, opts: RunOptions) -> anyhow::Result<()> {
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
    let versions = record_strategy_versions(&store, &park).await?;

    // 1. Journal replay.
    let metrics = rt.metrics.clone();
    let commit_lag = metrics.latency(Stage::JournalCommitLag, "journal");
    let journal_cfg = JournalConfig {
        on_commit: Some(Arc::new(move |b: &vpp_persistence::BatchCommitted| {
            commit_lag.record(b.commit_latency);
        })),
        ..JournalConfig::default()
    };
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

    // 3. Reconcile with the venue before anything trades.
    let symbols: HashMap<String, vpp_engine::ids::MarketId> = park
        .markets
        .iter()
        .map(|m| (m.name.clone(), m.id))
        .collect();
    let specs: HashMap<StrategyId, StrategySpec> =
        park.strategies.iter().map(|s| (s.id, s.clone())).collect();
    let owner = |id: &ClientOrderId| -> Option<(Option<StrategyId>, AggregationId)> {
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

    // 4. Core actors and the venue session.
    let live = start_core(
        &park,
        &rt,
        &clock,
        ledger,
        journal.clone(),
        &url,
        &opts,
        rec.account_seq,
        &store,
    )
    .await?;

    // 5. Strategies, then the park and the timers that drive them.
    let mut live = live;
    replay_unsettled_positions(&store, clock.now(), &live).await?;
    let shadows = start_strategies(&park, &rt, &clock, &live, epoch, &versions)?;
    tracing::info!(
        strategies = park.strategies.iter().filter(|s| s.enabled).count(),
        "trading"
    );
    let api = start_api(
        &park, &store, &rt, &clock, &live, &shadows, epoch, &url, &opts,
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

    let status = actix::spawn(status_loop(
        rt.clone(),
        Arc::clone(&clock),
        Arc::clone(&live.ledger),
        opts.status_every,
        opts.data_dir.clone(),
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
    status.abort();
    timers.abort();
    if let Some(api) = api {
        api.stop(true).await;
    }
    shutdown(live, &journal, &opts).await;
    if let Some(mqtt) = mqtt {
        mqtt.shutdown(Duration::from_secs(2)).await;
    }
    write_latency(&rt.metrics.snapshot(), &opts.data_dir);
    write_shadow_reports(&shadows, &opts.data_dir);
    drop(in_process);
    store.close().await;
    tracing::info!("stopped");
    Ok(())
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
    .with_shadows(shadows.clone());
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
    let cfg: RiskConfig = toml::Value::Table(park.risk.clone())
        .try_into()
        .map_err(|e| anyhow::anyhow!("{}: risk: {e}", park.source))?;
    let mut engine = RiskEngine::new(cfg).map_err(|e| anyhow::anyhow!("{}: {e}", park.source))?;
    for m in &park.markets {
        engine
            .register_market(m.clone())
            .map_err(|e| anyhow::anyhow!("{}: markets: {e}", park.source))?;
    }
    Ok(engine)
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
    let (dispatch_journal, _) = DispatchJournal::spawn(store.clone(), 8_192, &rt.metrics);
    let (settlement_writer, _) = SettlementWriter::spawn(store.clone(), 1_024, &rt.metrics);
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

    let oms_w = OmsWiring {
        ledger: Arc::clone(&ledger),
        journal,
        connector: conn_tx,
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
    let shared_risk = Arc::new(Mutex::new(risk_engine(park)?));
    let risk_w = RiskWiring {
        engine: Arc::clone(&shared_risk),
        clock: Arc::clone(clock),
        oms: oms.sender(),
        strategies: Arc::clone(&routes),
        metrics: rt.metrics.clone(),
        // Rejections, alerts and kill-switch/limit audits: bounded channel, batching writer.
        journal: Some(
            vpp_actors::live::risk::RiskJournal::spawn(store.clone(), 4_096, &rt.metrics).0,
        ),
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
            strategies: park
                .strategies
                .iter()
                .filter(|s| s.aggregation_id == agg.id && s.enabled)
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
    })
}

fn strategy_init(park: &Park, spec: &StrategySpec) -> anyhow::Result<StrategyInit> {
    let market = park
        .markets
        .iter()
        .find(|m| m.id == spec.market_id)
        .cloned()
        .with_context(|| format!("strategy {}: market {}", spec.name, spec.market_id))?;
    let json = serde_json::to_value(&spec.params)
        .with_context(|| format!("strategy {}: params", spec.name))?;
    let params = StrategyParams::from_json(&json)
        .map_err(|e| anyhow::anyhow!("strategy {}: {e}", spec.name))?;
    Ok(StrategyInit {
        strategy_id: spec.id,
        name: spec.name.clone(),
        kind: spec.kind.clone(),
        aggregation_id: spec.aggregation_id,
        market,
        params,
    })
}

/// The configuration a strategy version pins: what the API stores too.
fn version_config(spec: &StrategySpec) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "aggregation_id": spec.aggregation_id,
        "market_id": spec.market_id,
        "params": serde_json::to_value(&spec.params)
            .with_context(|| format!("strategy {}: params", spec.name))?,
        "shadow": spec.shadow,
    }))
}

/// Upserts every configured strategy and records a new version only when its configuration
/// (kind aside: the head holds it) differs from the latest stored one. Returns the version in
/// force per strategy.
async fn record_strategy_versions(
    store: &Store,
    park: &Park,
) -> anyhow::Result<HashMap<StrategyId, u32>> {
    let mut versions = HashMap::new();
    let now = chrono::Utc::now();
    for spec in &park.strategies {
        store
            .upsert_strategy(&vpp_persistence::StrategyRecord {
                id: spec.id,
                name: spec.name.clone(),
                kind: spec.kind.clone(),
                enabled: spec.enabled,
                latest_version: 0,
                updated_at: now,
            })
            .await
            .with_context(|| format!("cannot store strategy {}", spec.name))?;
        let config = version_config(spec)?;
        let stored = store
            .list_strategy_versions(spec.id)
            .await
            .with_context(|| format!("cannot read the versions of strategy {}", spec.name))?;
        let latest = stored.last();
        let version = match latest {
            Some(v) if v.config == config => v.version,
            _ => {
                let version = latest.map_or(1, |v| v.version + 1);
                store
                    .insert_strategy_version(&vpp_persistence::StrategyVersion {
                        strategy_id: spec.id,
                        version,
                        config,
                        created_at: now,
                    })
                    .await
                    .with_context(|| format!("cannot store strategy {} v{version}", spec.name))?;
                tracing::info!(strategy = %spec.name, version, "new strategy version");
                version
            }
        };
        versions.insert(spec.id, version);
    }
    Ok(versions)
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

fn start_strategies(
    park: &Park,
    rt: &Runtime,
    clock: &Arc<dyn Clock>,
    live: &Live,
    epoch: u64,
    versions: &HashMap<StrategyId, u32>,
) -> anyhow::Result<Shadows> {
    let mut shadows = Shadows::new();
    let session_dir = park.daemon.record_session_dir.as_ref().map(PathBuf::from);
    let registry = Arc::new(strategies::registry());
    let ledger = live
        .ledger
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for spec in park.strategies.iter().filter(|s| s.enabled) {
        let init = strategy_init(park, spec)?;
        let mut host = HostConfig::new(spec.id, spec.aggregation_id);
        // The version is part of every client order id (`s<id>v<version>b<boot>-<n>`): each
        // order records the strategy version that made it, in the journal, the store and at
        // the venue, and ids without it (older journals) still parse.
        host.id_prefix = Some(match versions.get(&spec.id) {
            Some(v) => format!("s{}v{v}b{epoch}", spec.id),
            None => format!("s{}b{epoch}", spec.id),
        });
        let name = format!("strategy/{}", spec.name);
        let md = MdConflator::new(name.as_str().into(), 4_096, &rt.metrics);
        let mut extras = StrategyExtras::default();
        if spec.shadow {
            let paper = Arc::new(Mutex::new(vpp_engine::strategy::PaperVenue::new()));
            shadows.push((spec.name.clone(), Arc::clone(&paper)));
            extras.shadow = Some(paper);
        }
        if let Some(dir) = &session_dir {
            let start = vpp_engine::backtest::SessionEvent::Start {
                at: clock.now(),
                strategy: Box::new(vpp_engine::backtest::SessionStrategy {
                    strategy_id: spec.id,
                    aggregation_id: spec.aggregation_id,
                    name: spec.name.clone(),
                    kind: spec.kind.clone(),
                    version: versions.get(&spec.id).copied(),
                    market: init.market.clone(),
                    params: init.params.clone(),
                    id_prefix: host.id_prefix.clone(),
                }),
            };
            let recorder =
                session::SessionRecorder::start(dir, &spec.name, start).with_context(|| {
                    format!(
                        "strategy {}: cannot record its session in {}",
                        spec.name,
                        dir.display()
                    )
                })?;
            extras.tap = Some(recorder);
        }
        tracing::info!(strategy = %spec.name, version = ?versions.get(&spec.id), shadow = spec.shadow,
            recording = session_dir.is_some(), "starting strategy");
        let wiring = StrategyWiring {
            init,
            host,
            registry: Arc::clone(&registry),
            clock: Arc::clone(clock),
            risk: live.risk.clone(),
            md: md.clone(),
            metrics: rt.metrics.clone(),
            issued: Arc::new(AtomicU64::new(0)),
            ledger: Some(Arc::clone(&live.ledger)),
        };
        let logic = StrategyLogic::new(wiring.clone(), |host| {
            for o in ledger.orders() {
                if o.request.strategy_id == Some(spec.id) {
                    host.observe_client_ids([o.id()]);
                    let _ = host.adopt_order(o);
                }
            }
            for (k, p) in ledger.positions() {
                host.adopt_position(*k, p.clone());
            }
        })
        .map_err(|e| anyhow::anyhow!("strategy {}: {e}", spec.name))?
        .with_extras(extras.clone());
        let oms = live.oms.clone();
        let sid = spec.id;
        // Snapshots serialise the strategy's state: every 64 messages keeps that off the
        // per-message path; a rebuild takes orders and positions from the ledger anyway.
        let supervisor = SupervisorSpec::new(name.as_str())
            .policy(park.supervision)
            .mailbox_capacity(1_024)
            .snapshot_every(64)
            .on_escalation(move |e| {
                tracing::error!(actor = %e.actor, cause = %e.cause,
                    "strategy halted past its restart limit; cancelling its orders");
                if let Err(err) = oms.try_send(ToOms::HaltStrategy(sid)) {
                    tracing::error!(error = %err, "halt could not reach the OMS");
                }
            });
        let rebuild_w = wiring.clone();
        let handle = SupervisedActor::new(supervisor, rt.clone(), logic, move |snap| {
            StrategyLogic::rebuild(rebuild_w.clone(), snap).map(|l| l.with_extras(extras.clone()))
        })?
        .start();
        live.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(spec.id, handle.sender());
        live.md
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(md.sender(handle.recipient()));
    }
    Ok(shadows)
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
        "sim {} | {} | connections {connected} | orders {} (open {open}) | fills {} | positions {positions} | p99 tick-to-order {p99} | restarts {}",
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
    )
}

async fn status_loop(
    rt: Runtime,
    clock: Arc<dyn Clock>,
    ledger: SharedLedger,
    every: Duration,
    data_dir: PathBuf,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let snapshot = rt.metrics.snapshot();
        let health = rt.health.snapshot();
        let line = status_line(&snapshot, &ledger, clock.now(), &health);
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

async fn shutdown(live: Live, journal: &vpp_persistence::JournalWriter, opts: &RunOptions) {
    // No new orders from here on, whatever the strategies still decide.
    let kill = ToRisk::KillAll {
        reason: "daemon shutdown".into(),
    };
    if let Err(e) = live.risk.try_send(kill) {
        tracing::error!(error = %e, "kill switch could not reach risk");
    }
    if opts.cancel_on_shutdown {
        let reason = "daemon shutdown".to_owned();
        if let Err(e) = live.oms.try_send(ToOms::CancelAll { reason }) {
            tracing::error!(error = %e, "cancel-all could not reach the OMS");
        }
        // Give the cancels time to reach the venue (behind any orders the venue's rate limit
        // holds) and their reports to come back.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
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
    }
    live.routes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    live.adapter.shutdown().await;
    drop(live.setpoints);
    match journal.flush().await {
        Ok(seq) => tracing::info!(committed_seq = seq, "journal flushed"),
        Err(e) => tracing::error!(error = %e, "journal flush failed"),
    }
}
