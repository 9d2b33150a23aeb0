//! `vpp bench`: the tick-to-order harness. For each market-data rate it boots the real
//! in-process trading path of the daemon on the demo park — venue simulator (own thread) ⇒
//! WebSocket ⇒ adapter ⇒ MarketConnector ⇒ conflated strategy inbox ⇒ Strategy ⇒ RiskMonitor ⇒
//! OMS (ledger + journal on SQLite) ⇒ connector ⇒ adapter ⇒ order frame written — and drives
//! the venue at that rate with a market-maker account whose replaces move a real-time book.
//!
//! What it reports per rate: tick-to-order latency (market data decoded in the connector → the
//! order's frame written to the socket, `oms_to_wire{scope=tick_to_order}`) p50/p99/p99.9/max
//! from hdrhistogram, the throughput the venue published and the daemon took in, conflation
//! counts, the high-water mark of every bounded queue on the path, refusals, and the process
//! RSS (`VmRSS` / `VmHWM` of /proc/self/status; the venue simulator lives in the same process).
//!
//! Invariants:
//! - Every run is a fresh system (venue, store, actors): histograms and counters are per rate.
//! - A rate counts as sustained only if the venue dropped no update for a slow client, the
//!   daemon took in (decoded or conflated) what the venue published (to 0.1 %: frames in
//!   flight when the drain window closes), the driver kept its pace,
//!   and no queue reached its bound. Conflation is not loss: it is the designed back-pressure.
//! - Waits are bounded; a run that never goes live is an error naming the venue URL.

use anyhow::Context;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use vpp::config::{Park, StrategySpec};
use vpp::daemon::venue::InProcessVenue;
use vpp_actors::live::connector::{run_connector, ConnectorWiring};
use vpp_actors::live::messages::{MdConflator, ToRisk};
use vpp_actors::live::oms::{OmsLogic, OmsWiring, SharedLedger};
use vpp_actors::live::risk::{RiskLogic, RiskWiring};
use vpp_actors::live::strategy::{StrategyLogic, StrategyWiring};
use vpp_actors::live::{strategies, StrategyRoutes};
use vpp_actors::metrics::{names, MetricsSnapshot, Stage};
use vpp_actors::{Runtime, SupervisedActor, SupervisorSpec};
use vpp_engine::clock::Clock;
use vpp_engine::ids::{ClientOrderId, MarketId, StrategyId};
use vpp_engine::market::{DeliveryInterval, MarketKind, Product};
use vpp_engine::order::{Side, TimeInForce};
use vpp_engine::strategy::{HostConfig, StrategyInit, StrategyParams};
use vpp_market_adapters::client::{AdapterConfig, ConnectionState, VenueAdapter, WsAdapter};
use vpp_market_adapters::protocol::{
    tif_to_wire, Channel, ClientMsg, NewOrder, RateLimit, ReplaceOrder,
};
use vpp_market_adapters::sim::server::VenueHandle;
use vpp_market_adapters::sim::venue::AccountConfig;
use vpp_persistence::{JournalConfig, Store};

/// The market-maker account the driver trades as.
const DRIVER_KEY: &str = "bench-mm-key";
/// Intervals the driver quotes (each its own book, so its own conflation key).
const DRIVER_INTERVALS: usize = 4;
/// Orders per second the bench strategy aims at, whatever the market data rate.
const TARGET_ORDERS_PER_S: u32 = 200;
/// Id of the bench strategy (above any demo strategy id).
const BENCH_STRATEGY: u64 = 900;

/// How the harness runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Market-data rates to report, messages per second.
    pub rates: Vec<u32>,
    /// Rates tried, in order, to find the highest sustained one (stops at the first miss).
    pub probe_rates: Vec<u32>,
    /// Real time driven per rate.
    pub secs_per_rate: f64,
}

impl BenchOptions {
    pub fn full() -> Self {
        Self {
            rates: vec![1_000, 10_000, 50_000],
            probe_rates: vec![100_000, 150_000, 200_000],
            secs_per_rate: 5.0,
        }
    }

    /// A short run for smoke tests and CI (debug builds too).
    pub fn quick() -> Self {
        Self {
            rates: vec![1_000, 5_000],
            probe_rates: Vec::new(),
            secs_per_rate: 1.5,
        }
    }
}

/// Percentiles of one latency series, microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// One rate's results.
#[derive(Debug, Clone, Serialize)]
pub struct RateResult {
    pub target_msgs_per_s: u32,
    pub driven_secs: f64,
    /// Book updates the venue published on the driven stream.
    pub published: u64,
    pub published_msgs_per_s: f64,
    /// Market data items the connector decoded and handed to the strategies.
    pub decoded: u64,
    /// Items the adapter overwrote before the connector read them (latest per key won).
    pub conflated_adapter: u64,
    /// Updates the venue dropped because this client's send queue was full (a real loss).
    pub venue_dropped: u64,
    /// Per strategy inbox: values published, delivered, conflated, pending at the end.
    pub strategy_inbox: InboxCounts,
    pub tick_to_order: Percentiles,
    pub oms_to_wire: Percentiles,
    pub strategy_decision: Percentiles,
    pub risk_check: Percentiles,
    pub venue_roundtrip_ack: Percentiles,
    pub orders_written: u64,
    /// High-water mark of each bounded queue on the path, with its bound.
    pub queue_depth_max: BTreeMap<String, QueueDepth>,
    /// Messages refused by a full or closed mailbox anywhere (`vpp_refusals_total`).
    pub mailbox_refusals: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub sustained: bool,
    /// Why not sustained (empty when it was).
    pub limits: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct InboxCounts {
    pub published: u64,
    pub delivered: u64,
    pub conflated: u64,
    pub pending: u64,
    pub refused_keys_full: u64,
    pub max_pending_keys: u64,
    pub max_queued_wakes: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueueDepth {
    pub max: i64,
    pub bound: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: String,
    pub build: &'static str,
    /// The park's `[journal] durability` the path ran with.
    pub journal_durability: &'static str,
    pub rss_idle_kib: u64,
    pub rates: Vec<RateResult>,
    /// Probe runs towards the highest sustained rate.
    pub probes: Vec<RateResult>,
    pub max_sustained_msgs_per_s: Option<u32>,
}

/// Runs every rate, then the probes, each on a fresh system.
pub fn run(park: &Park, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let (rss_idle_kib, _) = rss_kib();
    let mut rates = Vec::new();
    for &rate in &opts.rates {
        rates.push(run_rate(park, rate, opts.secs_per_rate)?);
    }
    let mut probes = Vec::new();
    for &rate in &opts.probe_rates {
        let r = run_rate(park, rate, opts.secs_per_rate)?;
        let ok = r.sustained;
        probes.push(r);
        if !ok {
            break;
        }
    }
    let max_sustained_msgs_per_s = rates
        .iter()
        .chain(&probes)
        .filter(|r| r.sustained)
        .map(|r| r.target_msgs_per_s)
        .max();
    Ok(BenchReport {
        machine: machine(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        journal_durability: match park.journal.durability {
            vpp::config::Durability::GroupCommit => "group_commit",
            vpp::config::Durability::BeforeSend => "before_send",
        },
        rss_idle_kib,
        rates,
        probes,
        max_sustained_msgs_per_s,
    })
}

/// (VmRSS, VmHWM) of this process in KiB; zeros where /proc is not available.
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    format!(
        "{cpus} CPUs, {} {}, load average {load} at start",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// The bench park: the demo park (its strategies, markets and aggregations), risk limits
/// opened up so the throttle does not decide the figures, and the `order_flow` bench strategy
/// on the real-time market ordering about [`TARGET_ORDERS_PER_S`].
fn bench_park(park: &Park, rate: u32) -> anyhow::Result<(Park, MarketId)> {
    let mut park = park.clone();
    let rt = park
        .markets
        .iter()
        .find(|m| m.kind == MarketKind::RealTime)
        .cloned()
        .context("the park has no real-time market to drive")?;
    let aggregation = park
        .aggregations
        .aggregations()
        .next()
        .map(|a| a.id)
        .context("the park has no aggregation")?;
    let every_n = (rate / TARGET_ORDERS_PER_S).clamp(1, 1_000_000);
    let params: toml::Table = toml::from_str(&format!(
        "every_n = {every_n}\nquantity_mw = 0.1\nmax_open = 20\nrest_above_cny_per_mwh = 50\n"
    ))?;
    park.strategies.push(StrategySpec {
        id: StrategyId(BENCH_STRATEGY),
        name: "bench-flow".into(),
        kind: "order_flow".into(),
        aggregation_id: aggregation,
        market_id: rt.id,
        enabled: true,
        shadow: false,
        params,
    });
    let limits = "max_order_mw = 50\nmax_net_position_mw = 1000000\nmax_open_orders = 100000\n\
                  daily_notional_cny = 1000000000000\norders_per_second = 100000\norder_burst = 100000\n";
    park.risk = toml::from_str(&format!(
        "[aggregation_defaults]\n{limits}\n[strategy_defaults]\n{limits}"
    ))?;
    Ok((park, rt.id))
}

/// The bench's venue: the daemon's in-process simulator with a market-maker account, no
/// rate limit and no simulated quotes (the driver makes the market).
fn start_venue(park: &Park, clock: Arc<dyn Clock>) -> anyhow::Result<InProcessVenue> {
    let listen = "127.0.0.1:0".parse().context("loopback address")?;
    let mut cfg = vpp::daemon::venue::venue_config(park, listen);
    cfg.accounts.push(AccountConfig {
        account: "bench-mm".into(),
        api_key: DRIVER_KEY.into(),
    });
    cfg.rate_limit = RateLimit {
        max_orders: 1_000_000_000,
        window_ms: 1_000,
    };
    cfg.sim_quotes = false;
    cfg.max_reports_retained = 10_000;
    InProcessVenue::start(cfg, clock)
}

/// The market maker: rests a bid and an ask per interval, then replaces the asks round-robin
/// at `rate` per second (each replace publishes one book update). Paced in 1 ms batches.
struct Driver {
    venue: Arc<VenueHandle>,
    symbol: String,
    intervals: Vec<DeliveryInterval>,
}

impl Driver {
    fn order(&self, id: String, interval: DeliveryInterval, side: Side, price: i64) -> ClientMsg {
        let (time_in_force, expire_at) = tif_to_wire(TimeInForce::Gtc);
        ClientMsg::NewOrder(NewOrder {
            client_order_id: ClientOrderId::new(id).unwrap_or_else(|_| unreachable_id()),
            market: self.symbol.clone(),
            product: Product::Energy,
            interval,
            side,
            quantity_mw: rust_decimal::Decimal::from(500),
            price_cny_per_mwh: rust_decimal::Decimal::from(price),
            time_in_force,
            expire_at,
        })
    }

    fn seed(&self) {
        for (k, interval) in self.intervals.iter().enumerate() {
            let bid = self.order(format!("mm-b{k}"), *interval, Side::Buy, 200);
            let ask = self.order(format!("mm-a{k}"), *interval, Side::Sell, 300);
            self.venue.submit_as(DRIVER_KEY, bid);
            self.venue.submit_as(DRIVER_KEY, ask);
        }
    }

    /// Drives for `secs`; returns the replaces sent and the real time taken.
    fn drive(&self, rate: u32, secs: f64, stop: &AtomicBool) -> (u64, f64) {
        let ids: Vec<ClientOrderId> = (0..self.intervals.len())
            .filter_map(|k| ClientOrderId::new(format!("mm-a{k}")).ok())
            .collect();
        let total = (f64::from(rate) * secs) as u64;
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total && !stop.load(Ordering::Relaxed) {
            let due = ((start.elapsed().as_secs_f64() * f64::from(rate)) as u64).min(total);
            while sent < due {
                let k = (sent % ids.len() as u64) as usize;
                let step = (sent / ids.len() as u64) % 16;
                let msg = ClientMsg::ReplaceOrder(ReplaceOrder {
                    client_order_id: ids[k].clone(),
                    quantity_mw: rust_decimal::Decimal::from(500),
                    price_cny_per_mwh: rust_decimal::Decimal::from(300 + step as i64),
                });
                self.venue.submit_as(DRIVER_KEY, msg);
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        (sent, start.elapsed().as_secs_f64())
    }

    fn published(&self) -> u64 {
        self.venue
            .with_venue(|v| v.stream_seq(Channel::Book, &self.symbol))
    }
}

fn unreachable_id() -> ClientOrderId {
    // Driver ids are short ASCII literals; this only satisfies the type.
    ClientOrderId::new("mm").unwrap_or_else(|_| panic!("a constant client order id is valid"))
}

fn strategy_init(park: &Park, spec: &StrategySpec) -> anyhow::Result<StrategyInit> {
    let market = park
        .markets
        .iter()
        .find(|m| m.id == spec.market_id)
        .cloned()
        .with_context(|| format!("strategy {}: market {}", spec.name, spec.market_id))?;
    let json = serde_json::to_value(&spec.params)?;
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

fn risk_engine(park: &Park) -> anyhow::Result<vpp_risk::RiskEngine> {
    let cfg: vpp_risk::RiskConfig = toml::Value::Table(park.risk.clone())
        .try_into()
        .map_err(|e| anyhow::anyhow!("bench risk config: {e}"))?;
    let mut engine =
        vpp_risk::RiskEngine::new(cfg).map_err(|e| anyhow::anyhow!("bench risk: {e}"))?;
    for m in &park.markets {
        engine
            .register_market(m.clone())
            .map_err(|e| anyhow::anyhow!("bench risk market: {e}"))?;
    }
    Ok(engine)
}

fn spec(name: &str, capacity: usize) -> SupervisorSpec {
    SupervisorSpec::new(name).mailbox_capacity(capacity)
}

/// Bounds of the queues the connector and conflators report (`vpp_queue_depth_max`).
fn queue_bound(queue: &str) -> i64 {
    if queue.starts_with("connector_cmds/") {
        CONNECTOR_QUEUE as i64
    } else if queue.starts_with("adapter_events/") {
        AdapterConfig::default().event_capacity as i64
    } else if queue.starts_with("md/") {
        MD_KEYS as i64
    } else {
        // The outbox holds what one read can produce while the OMS mailbox is full.
        OMS_MAILBOX as i64
    }
}

const CONNECTOR_QUEUE: usize = 1_024;
const OMS_MAILBOX: usize = 4_096;
const MD_KEYS: usize = 4_096;

fn run_rate(base: &Park, rate: u32, secs: f64) -> anyhow::Result<RateResult> {
    let (park, rt_market) = bench_park(base, rate)?;
    let dir = tempdir()?;
    let result = actix::System::new().block_on(run_system(park, rt_market, rate, secs, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vpp-bench-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

async fn run_system(
    park: Park,
    rt_market: MarketId,
    rate: u32,
    secs: f64,
    dir: &std::path::Path,
) -> anyhow::Result<RateResult> {
    let clock: Arc<dyn Clock> = Arc::new(vpp_actors::live::clock::ScaledClock::new(
        chrono::Utc::now(),
        1,
    ));
    let rt = Runtime::new(Arc::clone(&clock));
    let venue = start_venue(&park, Arc::clone(&clock))?;
    let url = venue.handle.url();

    let store = Store::open(&format!("sqlite://{}", dir.join("bench.db").display()))
        .await
        .context("cannot open the bench store")?;
    store
        .migrate()
        .await
        .context("cannot migrate the bench store")?;
    let journal = store
        .start_journal(JournalConfig::default())
        .await
        .context("cannot start the journal")?
        .writer;

    // Core: OMS and risk, exactly as the daemon wires them.
    let routes: StrategyRoutes = Arc::new(Mutex::new(HashMap::new()));
    let ledger: SharedLedger = Arc::new(Mutex::new(vpp_engine::ledger::OrderLedger::new()));
    let (conn_tx, conn_rx) = mpsc::channel(CONNECTOR_QUEUE);
    // The park's `[journal] durability`: `before_send` puts the daemon's commit gate between
    // the OMS and the connector, so its cost is on the measured path.
    let (oms_connector, gate_rx) = match park.journal.durability {
        vpp::config::Durability::GroupCommit => (conn_tx.clone(), None),
        vpp::config::Durability::BeforeSend => {
            let (tx, rx) = mpsc::channel(CONNECTOR_QUEUE);
            (tx, Some(rx))
        }
    };
    let risk_slot = Arc::new(OnceLock::new());
    let oms_w = OmsWiring {
        ledger: Arc::clone(&ledger),
        journal: journal.clone(),
        connector: oms_connector,
        risk: Arc::clone(&risk_slot),
        strategies: Arc::clone(&routes),
        dispatch: Vec::new(),
        clock: Arc::clone(&clock),
        metrics: rt.metrics.clone(),
    };
    let rebuild = oms_w.clone();
    let oms = SupervisedActor::new(
        spec("oms", OMS_MAILBOX),
        rt.clone(),
        OmsLogic::new(oms_w),
        move |_: &SharedLedger| Ok(OmsLogic::new(rebuild.clone())),
    )?
    .start();
    if let Some(gate_rx) = gate_rx {
        actix::spawn(vpp::daemon::journal::before_send_gate(
            journal.clone(),
            gate_rx,
            conn_tx.clone(),
            oms.sender(),
        ));
    }
    drop(conn_tx);
    let risk_w = RiskWiring {
        engine: Arc::new(Mutex::new(risk_engine(&park)?)),
        clock: Arc::clone(&clock),
        oms: oms.sender(),
        strategies: Arc::clone(&routes),
        metrics: rt.metrics.clone(),
        journal: None,
    };
    let rebuild = risk_w.clone();
    let risk = SupervisedActor::new(
        spec("risk", 4_096),
        rt.clone(),
        RiskLogic::new(risk_w),
        move |_: &vpp_actors::live::risk::SharedRisk| Ok(RiskLogic::new(rebuild.clone())),
    )?
    .start();
    let _ = risk_slot.set(risk.sender());
    // Flexibility as the aggregation actors would report it from telemetry.
    for agg in park.aggregations.aggregations() {
        let _ = risk.sender().try_send(ToRisk::Capacity {
            aggregation_id: agg.id,
            up_flex_mw: rust_decimal::Decimal::from(10_000),
            down_flex_mw: rust_decimal::Decimal::from(10_000),
        });
    }

    // The venue session and its connector.
    let cfg = AdapterConfig {
        venue: "venue".into(),
        url: url.clone(),
        api_key: vpp::daemon::venue::DEMO_API_KEY.into(),
        markets: vpp::daemon::venue::market_mappings(&park),
        ..AdapterConfig::default()
    };
    let (adapter, events) = WsAdapter::connect(cfg, Arc::clone(&clock));
    let symbol = park
        .markets
        .iter()
        .find(|m| m.id == rt_market)
        .map(|m| m.name.clone())
        .context("real-time market")?;
    for m in &park.markets {
        let mut channels = vec![Channel::Prices];
        match m.kind {
            MarketKind::RealTime | MarketKind::CapacityLease => channels.push(Channel::Book),
            MarketKind::DayAhead => channels.push(Channel::AuctionResults),
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
    let wiring = ConnectorWiring {
        venue: "venue".into(),
        clock: Arc::clone(&clock),
        metrics: rt.metrics.clone(),
        health: rt.health.clone(),
        oms: oms.recipient(),
        risk: risk.sender(),
        strategies: Arc::clone(&md),
        symbols: park
            .markets
            .iter()
            .map(|m| (m.name.clone(), m.id))
            .collect(),
        settlement: Vec::new(),
    };
    let connector = actix::spawn(run_connector(wiring, Arc::clone(&adapter), events, conn_rx));
    let mut state = adapter.state_watch();
    // The watch guard is dropped right here: holding it would block the adapter's task.
    let live = matches!(
        tokio::time::timeout(
            Duration::from_secs(20),
            state.wait_for(|s| *s == ConnectionState::Live),
        )
        .await,
        Ok(Ok(_))
    );
    if !live {
        anyhow::bail!("the bench venue at {url} did not become live within 20 s");
    }

    // Strategies: the demo park's and the bench strategy, as the daemon starts them.
    let registry = Arc::new(strategies::registry());
    let mut inboxes = Vec::new();
    for s in park.strategies.iter().filter(|s| s.enabled) {
        let init = strategy_init(&park, s)?;
        let mut host = HostConfig::new(s.id, s.aggregation_id);
        host.id_prefix = Some(format!("s{}b1", s.id));
        let name = format!("strategy/{}", s.name);
        let inbox = MdConflator::new(name.as_str().into(), MD_KEYS, &rt.metrics);
        let wiring = StrategyWiring {
            init,
            host,
            registry: Arc::clone(&registry),
            clock: Arc::clone(&clock),
            risk: risk.sender(),
            md: inbox.clone(),
            metrics: rt.metrics.clone(),
            issued: Arc::new(AtomicU64::new(0)),
            ledger: Some(Arc::clone(&ledger)),
        };
        let logic = StrategyLogic::new(wiring.clone(), |_| {})
            .map_err(|e| anyhow::anyhow!("strategy {}: {e}", s.name))?;
        let rebuild = wiring.clone();
        let handle = SupervisedActor::new(
            SupervisorSpec::new(name.as_str())
                .mailbox_capacity(1_024)
                .snapshot_every(64),
            rt.clone(),
            logic,
            move |snap| StrategyLogic::rebuild(rebuild.clone(), snap),
        )?
        .start();
        routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(s.id, handle.sender());
        md.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(inbox.sender(handle.recipient()));
        inboxes.push(inbox);
    }

    // Drive.
    let first = DeliveryInterval::containing(clock.now()).next().next();
    let mut intervals = vec![first];
    while intervals.len() < DRIVER_INTERVALS {
        let next = intervals[intervals.len() - 1].next();
        intervals.push(next);
    }
    let driver = Driver {
        venue: Arc::clone(&venue.handle),
        symbol,
        intervals,
    };
    driver.seed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats_before = adapter.stats();
    let published_before = driver.published();
    let dropped_before = venue.handle.stats().dropped_updates;
    let decoded_before = decoded(&rt.metrics.snapshot());
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let driver = Arc::new(driver);
    let d = Arc::clone(&driver);
    let stop_flag = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("bench-driver".into())
        .spawn(move || {
            let _ = done_tx.send(d.drive(rate, secs, &stop_flag));
        })
        .context("cannot start the driver thread")?;
    let guard = Duration::from_secs_f64(secs * 3.0 + 10.0);
    let (sent, driven_secs) = match tokio::time::timeout(guard, done_rx).await {
        Ok(Ok(r)) => r,
        _ => {
            stop.store(true, Ordering::Relaxed);
            anyhow::bail!("the driver did not finish within {guard:?}");
        }
    };
    // Let the path drain what is in flight (bounded).
    let published = driver.published().saturating_sub(published_before);
    let drain_until = Instant::now() + Duration::from_secs(2);
    loop {
        let taken = decoded(&rt.metrics.snapshot()).saturating_sub(decoded_before)
            + adapter
                .stats()
                .conflated_market_data
                .saturating_sub(stats_before.conflated_market_data);
        if taken >= published || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let snapshot = rt.metrics.snapshot();
    let stats = adapter.stats();
    let decoded_n = decoded(&snapshot).saturating_sub(decoded_before);
    let conflated_adapter = stats
        .conflated_market_data
        .saturating_sub(stats_before.conflated_market_data);
    let venue_dropped = venue
        .handle
        .stats()
        .dropped_updates
        .saturating_sub(dropped_before);
    let mut inbox = InboxCounts::default();
    for i in &inboxes {
        let s = i.stats();
        inbox.published += s.published;
        inbox.delivered += s.delivered;
        inbox.conflated += s.conflated;
        inbox.pending += s.pending as u64;
        inbox.refused_keys_full += s.refused_keys_full;
        inbox.max_pending_keys = inbox.max_pending_keys.max(s.max_pending as u64);
        inbox.max_queued_wakes = inbox.max_queued_wakes.max(s.max_queued_wakes as u64);
    }
    let queue_depth_max: BTreeMap<String, QueueDepth> = snapshot
        .gauges
        .iter()
        .filter(|g| g.name == names::QUEUE_DEPTH_MAX)
        .filter_map(|g| {
            let queue = g.labels.iter().find(|(k, _)| k == "queue")?.1.clone();
            let bound = queue_bound(&queue);
            Some((
                queue,
                QueueDepth {
                    max: g.value,
                    bound,
                },
            ))
        })
        .collect();
    let mailbox_refusals = snapshot
        .counters
        .iter()
        .filter(|c| c.name == names::REFUSALS_TOTAL)
        .map(|c| c.value)
        .sum();
    let pct = |stage: Stage, scope: &str| {
        snapshot
            .latency(stage, scope)
            .map(|s| Percentiles {
                count: s.count,
                p50_us: s.p50_us,
                p99_us: s.p99_us,
                p999_us: s.p999_us,
                max_us: s.max_us,
            })
            .unwrap_or_default()
    };
    let merged = |stage: Stage| {
        // One strategy dominates; report the bench strategy's series.
        pct(stage, "bench-flow")
    };
    let tick_to_order = pct(Stage::OmsToWire, "tick_to_order");
    let (rss, hwm) = rss_kib();

    let mut limits = Vec::new();
    let published_rate = published as f64 / driven_secs.max(1e-9);
    if sent < (f64::from(rate) * secs * 0.95) as u64 || published_rate < f64::from(rate) * 0.95 {
        limits.push(format!(
            "the driver reached {published_rate:.0} msgs/s of {rate} (venue or driver CPU-bound)"
        ));
    }
    if venue_dropped > 0 {
        limits.push(format!(
            "the venue dropped {venue_dropped} updates: the client did not read fast enough"
        ));
    }
    // The last frames may still be in flight when the drain window closes: up to 0.1 % is
    // a measurement edge, not loss (a real backlog grows far past it and trips the check).
    let taken_in = decoded_n + conflated_adapter;
    if taken_in.saturating_mul(1_000) < published.saturating_mul(999) {
        limits.push(format!(
            "the daemon took in {taken_in} of {published} updates within the drain time"
        ));
    }
    for (q, d) in &queue_depth_max {
        if d.max >= d.bound {
            limits.push(format!("queue {q} reached its bound {}", d.bound));
        }
    }
    if mailbox_refusals > 0 {
        limits.push(format!(
            "{mailbox_refusals} messages refused by full mailboxes"
        ));
    }

    // Shut down: the adapter, the connector, the journal, the venue.
    adapter.shutdown().await;
    connector.abort();
    let _ = journal.flush().await;
    store.close().await;
    drop(venue);
    let _ = (oms, risk);
    Ok(RateResult {
        target_msgs_per_s: rate,
        driven_secs,
        published,
        published_msgs_per_s: published_rate,
        decoded: decoded_n,
        conflated_adapter,
        venue_dropped,
        strategy_inbox: inbox,
        orders_written: tick_to_order.count,
        tick_to_order,
        oms_to_wire: pct(Stage::OmsToWire, "venue"),
        strategy_decision: merged(Stage::StrategyDecision),
        risk_check: pct(Stage::RiskCheck, "pre_trade"),
        venue_roundtrip_ack: pct(Stage::VenueRoundtripAck, "venue"),
        queue_depth_max,
        mailbox_refusals,
        rss_kib: rss,
        hwm_kib: hwm,
        sustained: limits.is_empty(),
        limits,
    })
}

fn decoded(m: &MetricsSnapshot) -> u64 {
    m.latency(Stage::MarketDataDecode, "venue")
        .map_or(0, |s| s.count)
}

/// The human table.
pub fn render(report: &BenchReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vpp bench ({} build; {}; journal durability {}; idle RSS {:.1} MiB)",
        report.build,
        report.machine,
        report.journal_durability,
        report.rss_idle_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "{:>9} {:>10} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9}",
        "target/s",
        "published/s",
        "conflated",
        "orders",
        "t2o p50",
        "t2o p99",
        "t2o p99.9",
        "t2o max",
        "depth max",
        "refused",
        "RSS MiB",
        "sustained"
    );
    for r in report.rates.iter().chain(&report.probes) {
        let depth = r.queue_depth_max.values().map(|d| d.max).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "{:>9} {:>11.0} {:>9} {:>9} {:>6.1}us {:>7.1}us {:>7.1}us {:>7.0}us {:>9} {:>7} {:>8.1} {:>9}",
            r.target_msgs_per_s,
            r.published_msgs_per_s,
            r.conflated_adapter + r.strategy_inbox.conflated,
            r.orders_written,
            r.tick_to_order.p50_us,
            r.tick_to_order.p99_us,
            r.tick_to_order.p999_us,
            r.tick_to_order.max_us,
            depth,
            r.mailbox_refusals,
            r.rss_kib as f64 / 1024.0,
            if r.sustained { "yes" } else { "no" }
        );
        for l in &r.limits {
            let _ = writeln!(out, "          bounded by: {l}");
        }
    }
    let _ = writeln!(
        out,
        "max sustained: {}",
        report.max_sustained_msgs_per_s.map_or_else(
            || "none of the rates tried".to_owned(),
            |r| format!("{r} msgs/s")
        )
    );
    out
}
