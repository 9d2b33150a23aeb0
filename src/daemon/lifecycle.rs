//! Strategy lifecycle of the running daemon: starts, stops and restarts strategy actors when
//! the store (the source of truth) changes through the operator API.
//!
//! Owns: the table of strategies the daemon knows ([`LiveStrategies`], read by `GET /engine`)
//! and the one task that changes which strategy actors run ([`Lifecycle`]); every change goes
//! through its bounded command channel, one at a time, on the daemon's actix system.
//!
//! Invariants:
//! - At most one actor per strategy runs; it runs exactly when the strategy is enabled.
//! - Stopping a strategy: its `stopped` flag is set first (no new order leaves it), it loses its
//!   routes (market data, timers, reports), the risk monitor's mailbox is drained past every
//!   intent it sent (a request/response with risk), then the OMS cancels its open orders; a
//!   second cancel follows shortly for an intent that raced the flag.
//! - A changed version (parameters, shadow flag, rollback) stops the old actor (cancelling its
//!   orders, priced by the old version) and starts one on the new version, whose client order
//!   ids carry the new version (`s<id>v<version>b<boot>-<n>`), so ids never repeat.

use super::shadow::Shadows;
use crate::config::StrategySpec;
use anyhow::Context;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use vpp_actors::live::messages::{MdConflator, MdSender, RiskControl, ToOms, ToRisk};
use vpp_actors::live::oms::SharedLedger;
use vpp_actors::live::strategy::{StrategyExtras, StrategyLogic, StrategyWiring};
use vpp_actors::live::StrategyRoutes;
use vpp_actors::{BoundedSender, Runtime, SupervisedActor, SupervisorSpec};
use vpp_engine::clock::Clock;
use vpp_engine::ids::StrategyId;
use vpp_engine::market::Market;
use vpp_engine::strategy::{HostConfig, StrategyInit, StrategyParams, StrategyRegistry};

/// One strategy as the daemon knows it.
#[derive(Debug, Clone)]
pub struct LiveStrategy {
    pub spec: StrategySpec,
    pub version: u32,
    /// An actor runs for it now.
    pub running: bool,
}

/// The strategies the daemon knows (store ids), shared with `GET /engine`.
pub type LiveStrategies = Arc<RwLock<BTreeMap<StrategyId, LiveStrategy>>>;

/// Everything needed to start a strategy actor.
pub struct StrategyCtx {
    pub rt: Runtime,
    pub clock: Arc<dyn Clock>,
    pub registry: Arc<StrategyRegistry>,
    pub markets: Vec<Market>,
    pub supervision: vpp_actors::RestartPolicy,
    pub session_dir: Option<PathBuf>,
    pub epoch: u64,
    pub risk: BoundedSender<ToRisk>,
    pub risk_control: actix::Recipient<RiskControl>,
    pub oms: BoundedSender<ToOms>,
    pub routes: StrategyRoutes,
    pub md: Arc<RwLock<Vec<MdSender>>>,
    pub ledger: SharedLedger,
}

struct Running {
    stopped: Arc<AtomicBool>,
    consumer: String,
}

/// Starts and stops strategy actors (call on the daemon's actix system).
pub struct Lifecycle {
    ctx: StrategyCtx,
    running: HashMap<StrategyId, Running>,
    pub table: LiveStrategies,
}

/// A change for the lifecycle task: run `target` (stop when `None` or disabled).
pub struct LifecycleCmd {
    pub id: StrategyId,
    pub target: Option<(StrategySpec, u32)>,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// The API's side of the lifecycle task.
#[derive(Clone)]
pub struct LifecycleHandle {
    tx: mpsc::Sender<LifecycleCmd>,
    pub table: LiveStrategies,
}

/// Longest wait for the lifecycle task to apply a change.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

impl LifecycleHandle {
    /// Applies a change to the running daemon and waits until it took effect.
    pub async fn apply(
        &self,
        id: StrategyId,
        target: Option<(StrategySpec, u32)>,
    ) -> Result<String, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(LifecycleCmd { id, target, reply })
            .map_err(|e| format!("the strategy lifecycle is busy or stopped: {e}"))?;
        match tokio::time::timeout(APPLY_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the strategy lifecycle stopped".into()),
            Err(_) => Err("the strategy lifecycle did not answer in time".into()),
        }
    }
}

fn strategy_init(markets: &[Market], spec: &StrategySpec) -> anyhow::Result<StrategyInit> {
    let market = markets
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

impl Lifecycle {
    pub fn new(
        ctx: StrategyCtx,
        specs: &[StrategySpec],
        versions: &HashMap<StrategyId, u32>,
    ) -> Self {
        let table: BTreeMap<StrategyId, LiveStrategy> = specs
            .iter()
            .map(|s| {
                (
                    s.id,
                    LiveStrategy {
                        spec: s.clone(),
                        version: versions.get(&s.id).copied().unwrap_or(1),
                        running: false,
                    },
                )
            })
            .collect();
        Self {
            ctx,
            running: HashMap::new(),
            table: Arc::new(RwLock::new(table)),
        }
    }

    /// Starts every enabled strategy of the table (boot); returns the shadow paper venues.
    pub fn start_enabled(&mut self) -> anyhow::Result<Shadows> {
        let mut shadows = Shadows::new();
        let enabled: Vec<(StrategySpec, u32)> = self
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|l| l.spec.enabled)
            .map(|l| (l.spec.clone(), l.version))
            .collect();
        for (spec, version) in enabled {
            if let Some(paper) = self.start(&spec, version)? {
                shadows.push((spec.name.clone(), paper));
            }
        }
        Ok(shadows)
    }

    fn start(
        &mut self,
        spec: &StrategySpec,
        version: u32,
    ) -> anyhow::Result<Option<vpp_actors::live::strategy::SharedPaper>> {
        let c = &self.ctx;
        let init = strategy_init(&c.markets, spec)?;
        let ledger = c
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut host = HostConfig::new(spec.id, spec.aggregation_id);
        // The version is part of every client order id (`s<id>v<version>b<boot>-<n>`): each
        // order records the strategy version that made it, in the journal, the store and at
        // the venue.
        host.id_prefix = Some(format!("s{}v{version}b{}", spec.id, c.epoch));
        let name = format!("strategy/{}", spec.name);
        let md = MdConflator::new(name.as_str().into(), 4_096, &c.rt.metrics);
        let stopped = Arc::new(AtomicBool::new(false));
        let mut extras = StrategyExtras {
            stopped: Some(Arc::clone(&stopped)),
            ..StrategyExtras::default()
        };
        let mut paper_out = None;
        if spec.shadow {
            let paper = Arc::new(Mutex::new(vpp_engine::strategy::PaperVenue::new()));
            paper_out = Some(Arc::clone(&paper));
            extras.shadow = Some(paper);
        }
        if let Some(dir) = &c.session_dir {
            let start = vpp_engine::backtest::SessionEvent::Start {
                at: c.clock.now(),
                strategy: Box::new(vpp_engine::backtest::SessionStrategy {
                    strategy_id: spec.id,
                    aggregation_id: spec.aggregation_id,
                    name: spec.name.clone(),
                    kind: spec.kind.clone(),
                    version: Some(version),
                    market: init.market.clone(),
                    params: init.params.clone(),
                    id_prefix: host.id_prefix.clone(),
                }),
            };
            let recorder = super::session::SessionRecorder::start(dir, &spec.name, start)
                .with_context(|| {
                    format!(
                        "strategy {}: cannot record its session in {}",
                        spec.name,
                        dir.display()
                    )
                })?;
            extras.tap = Some(recorder);
        }
        tracing::info!(strategy = %spec.name, version, shadow = spec.shadow,
            recording = c.session_dir.is_some(), "starting strategy");
        let wiring = StrategyWiring {
            init,
            host,
            registry: Arc::clone(&c.registry),
            clock: Arc::clone(&c.clock),
            risk: c.risk.clone(),
            md: md.clone(),
            metrics: c.rt.metrics.clone(),
            issued: Arc::new(AtomicU64::new(0)),
            ledger: Some(Arc::clone(&c.ledger)),
        };
        let sid = spec.id;
        let logic = StrategyLogic::new(wiring.clone(), |host| {
            for o in ledger.orders() {
                if o.request.strategy_id == Some(sid) {
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
        let oms = c.oms.clone();
        // Snapshots serialise the strategy's state: every 64 messages keeps that off the
        // per-message path; a rebuild takes orders and positions from the ledger anyway.
        let supervisor = SupervisorSpec::new(name.as_str())
            .policy(c.supervision)
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
        let handle = SupervisedActor::new(supervisor, c.rt.clone(), logic, move |snap| {
            StrategyLogic::rebuild(rebuild_w.clone(), snap).map(|l| l.with_extras(extras.clone()))
        })?
        .start();
        c.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(spec.id, handle.sender());
        c.md.write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(md.sender(handle.recipient()));
        self.running.insert(
            spec.id,
            Running {
                stopped,
                consumer: name,
            },
        );
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        table.insert(
            spec.id,
            LiveStrategy {
                spec: spec.clone(),
                version,
                running: true,
            },
        );
        Ok(paper_out)
    }

    /// Stops the actor of `id` (if one runs) and cancels its open orders. True if one ran.
    async fn stop(&mut self, id: StrategyId) -> bool {
        let Some(r) = self.running.remove(&id) else {
            return false;
        };
        r.stopped.store(true, Ordering::SeqCst);
        self.ctx
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        self.ctx
            .md
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|s| s.consumer().as_str() != r.consumer);
        // Every intent the strategy sent before the flag is in risk's mailbox ahead of this.
        let barrier = RiskControl::GetLimits(vpp_risk::LimitScope::StrategyDefaults);
        if let Err(e) = self
            .ctx
            .risk_control
            .send(barrier)
            .timeout(Duration::from_secs(2))
            .await
        {
            tracing::warn!(strategy = %id, error = %e, "risk did not answer the stop barrier");
        }
        if let Err(e) = self.ctx.oms.try_send(ToOms::HaltStrategy(id)) {
            tracing::error!(strategy = %id, error = %e, "cancel of a stopped strategy did not reach the OMS");
        }
        let oms = self.ctx.oms.clone();
        actix::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = oms.try_send(ToOms::HaltStrategy(id));
        });
        if let Some(l) = self
            .table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&id)
        {
            l.running = false;
        }
        true
    }

    async fn apply(&mut self, cmd: &LifecycleCmd) -> anyhow::Result<String> {
        let id = cmd.id;
        let current = self
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned();
        let Some((spec, version)) = cmd.target.clone() else {
            let stopped = self.stop(id).await;
            return Ok(if stopped { "stopped" } else { "not running" }.into());
        };
        let same = current
            .as_ref()
            .is_some_and(|c| c.running && c.version == version && c.spec == spec);
        if same {
            return Ok("unchanged".into());
        }
        let was_running = self.stop(id).await;
        if !spec.enabled {
            self.table
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    id,
                    LiveStrategy {
                        spec,
                        version,
                        running: false,
                    },
                );
            return Ok(if was_running {
                "stopped"
            } else {
                "not running"
            }
            .into());
        }
        self.start(&spec, version)?;
        Ok(if was_running {
            format!("restarted on v{version}")
        } else {
            format!("started on v{version}")
        })
    }

    /// Runs the lifecycle task; returns the handle the API uses.
    pub fn spawn(self) -> LifecycleHandle {
        let (tx, mut rx) = mpsc::channel::<LifecycleCmd>(64);
        let table = Arc::clone(&self.table);
        let mut me = self;
        actix::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                let r = me.apply(&cmd).await.map_err(|e| format!("{e:#}"));
                match &r {
                    Ok(what) => {
                        tracing::info!(strategy = %cmd.id, %what, "strategy change applied")
                    }
                    Err(e) => {
                        tracing::error!(strategy = %cmd.id, error = %e, "strategy change failed")
                    }
                }
                let _ = cmd.reply.send(r);
            }
        });
        LifecycleHandle { tx, table }
    }
}
