//! Operator control of the running engine: the [`EngineHandle`] the API's live routes use.
//!
//! Built from the daemon's live handles once strategies run. It works the same actors and the
//! same shared risk engine and ledger the daemon uses; it owns no state of its own but the
//! manual-order sequence.
//!
//! Invariants:
//! - Kill switches, exposure and limits go through the risk actor ([`RiskControl`], awaited
//!   with [`RISK_TIMEOUT`]): it changes the engine, has the OMS cancel the open orders in scope
//!   and audits the action. Intents it approved before the engage are already in the OMS
//!   mailbox ahead of the scoped cancel, so none escapes it.
//! - The shared [`RiskEngine`] is only read here (status, the manual-order pre-check).
//! - A manual order passes the same risk actor as a strategy's intent; its client order id is
//!   `m<boot epoch>-<n>`, unique across restarts like strategy ids.
//! - Nothing here exposes the venue credentials: [`ConnectionView`] carries the venue URL
//!   without user info and never the API key.

use crate::config::Park;
use actix::Recipient;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use vpp_actors::live::messages::{Intent, RiskControl, RiskReply, ToOms, ToRisk};
use vpp_actors::live::oms::SharedLedger;
use vpp_actors::live::risk::SharedRisk;
use vpp_actors::BoundedSender;
use vpp_engine::clock::Clock;
use vpp_engine::ids::{AggregationId, ClientOrderId, MarketId, StrategyId};
use vpp_engine::market::{DeliveryInterval, Product};
use vpp_engine::order::{Order, OrderRequest, Side, TimeInForce};
use vpp_engine::position::{Position, PositionKey};
use vpp_engine::strategy::OrderIntent;
use vpp_engine::Timestamp;
use vpp_market_adapters::client::{ConnectionState, VenueAdapter, WsAdapter};
use vpp_market_adapters::protocol::Channel;
use vpp_risk::kill::Engagement;
use vpp_risk::{
    Decision, ExposureView, KillScope, LimitChange, LimitScope, RiskEngine, RiskLimits,
};

/// Longest wait for the risk monitor to answer a control request.
pub const RISK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a control operation failed. Mapped to HTTP statuses by the API.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// An id or name the park does not have (`field` names the input).
    #[error("{what} not found")]
    NotFound { what: String, field: &'static str },
    /// Valid shape, invalid meaning (`field` names the input).
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Risk refused a manual order (code is the risk engine's stable reject code).
    #[error("risk rejected the order: {code}: {message}")]
    Rejected { code: String, message: String },
    /// The state does not allow it (e.g. releasing a switch that is not engaged).
    #[error("{0}")]
    Conflict(String),
    /// An actor's mailbox refused the command (full or halted).
    #[error("{0}")]
    Unavailable(String),
}

/// The live handles of a running daemon.
pub struct EngineHandle {
    pub park: Arc<Park>,
    pub clock: Arc<dyn Clock>,
    pub ledger: SharedLedger,
    pub risk_engine: SharedRisk,
    pub risk: BoundedSender<ToRisk>,
    pub risk_control: Recipient<RiskControl>,
    pub oms: BoundedSender<ToOms>,
    pub adapter: Arc<WsAdapter>,
    /// The boot epoch (audit id of the boot), prefix of manual order ids.
    pub epoch: u64,
    pub venue_url: String,
    pub started_at: Timestamp,
    manual_seq: AtomicU64,
    /// The shadow strategies' paper venues (empty without shadow strategies).
    shadows: super::shadow::Shadows,
    /// Actor health (a strategy halted by its supervisor shows there).
    health: Option<vpp_actors::HealthRegistry>,
    /// Starts and stops strategy actors when the store changes (none in unit tests).
    lifecycle: Option<super::lifecycle::LifecycleHandle>,
    /// Where limits set at run time are kept (they survive a restart).
    store: Option<vpp_persistence::Store>,
}

/// `GET /engine`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EngineStatus {
    /// False while the global kill switch is engaged (after `POST /engine/stop`).
    pub trading: bool,
    #[schema(value_type = Option<Object>)]
    pub global_kill_switch: Option<Engagement>,
    pub connection: ConnectionView,
    pub open_orders: usize,
    pub orders: usize,
    pub positions: usize,
    pub strategies: Vec<StrategyStatus>,
    pub boot_epoch: u64,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub simulated_now: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StrategyStatus {
    pub id: u64,
    pub name: String,
    pub kind: String,
    pub aggregation_id: u64,
    pub market_id: u64,
    /// Configured enabled and not halted.
    pub enabled: bool,
    /// Halted by its supervisor past the restart limit (its orders were cancelled; messages
    /// to it are refused and counted); an operator must resume it.
    pub halted: bool,
    /// Why it halted, when it did.
    pub halt_cause: Option<String>,
    /// The version in force (its client order ids carry it: `s<id>v<version>b<boot>-<n>`).
    pub version: Option<u32>,
    pub kill_switch_engaged: bool,
    pub open_orders: usize,
}

/// A venue connection, without credentials.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub venue: String,
    pub url: String,
    /// `connecting`, `syncing`, `live`, `disconnected` or `stopped`.
    pub state: String,
    pub detail: Option<String>,
    pub sessions: u64,
    pub orders_sent: u64,
    pub market_gaps: u64,
    pub report_gaps: u64,
    pub conflated_market_data: u64,
}

/// The result of engaging or releasing a kill switch.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KillView {
    #[schema(value_type = Object)]
    pub scope: KillScope,
    pub engaged: bool,
    /// False when the switch already was in that state (the call changed nothing).
    pub changed: bool,
    /// Open orders sent for cancellation.
    pub cancelling: usize,
    pub message: String,
}

/// An engaged switch.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KillSwitchRow {
    #[schema(value_type = Object)]
    pub scope: KillScope,
    #[schema(value_type = Object)]
    pub engagement: Engagement,
}

/// `POST /orders`: a manual order.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualOrder {
    /// Market id or name.
    #[schema(value_type = String)]
    pub market: IdOrName,
    /// Aggregation id or name; defaults to the strategy's when `strategy` is given.
    #[schema(value_type = Option<String>)]
    pub aggregation: Option<IdOrName>,
    /// Strategy id or name the order is attributed to (its limits and kill switch apply).
    #[schema(value_type = Option<String>)]
    pub strategy: Option<IdOrName>,
    /// `buy` or `sell`.
    #[schema(value_type = String)]
    pub side: Side,
    #[schema(value_type = String)]
    pub quantity_mw: Decimal,
    #[schema(value_type = String)]
    pub price_cny_per_mwh: Decimal,
    /// Start of the 15-minute delivery interval (RFC 3339, aligned to :00/:15/:30/:45).
    #[schema(value_type = String, format = DateTime)]
    pub interval_start: Timestamp,
    /// Default `energy`.
    #[schema(value_type = Option<String>)]
    pub product: Option<Product>,
    /// `day`, `gtc` (default), `ioc` or `fok`.
    #[schema(value_type = Option<String>)]
    pub time_in_force: Option<TimeInForce>,
}

/// A number (id) or a string (name) naming a park object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IdOrName {
    Id(u64),
    Name(String),
}

impl std::fmt::Display for IdOrName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdOrName::Id(id) => write!(f, "{id}"),
            IdOrName::Name(n) => f.write_str(n),
        }
    }
}

/// The answer to a manual order.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderAccepted {
    pub client_order_id: String,
    /// `submitted`: risk's pre-check passed and the order is on its way through risk and OMS.
    pub status: String,
}

/// A live position row.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PositionRow {
    pub aggregation_id: u64,
    pub market_id: u64,
    #[schema(value_type = String, format = DateTime)]
    pub interval_start: Timestamp,
    #[schema(value_type = String)]
    pub bought_mw: Decimal,
    #[schema(value_type = String)]
    pub sold_mw: Decimal,
    #[schema(value_type = String)]
    pub net_sold_mw: Decimal,
}

/// Filters of the live order list.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub strategy: Option<StrategyId>,
    pub aggregation: Option<AggregationId>,
    pub open_only: bool,
}

fn state_view(s: &ConnectionState) -> (&'static str, Option<String>) {
    match s {
        ConnectionState::Connecting { attempt } => {
            ("connecting", Some(format!("attempt {attempt}")))
        }
        ConnectionState::Syncing => ("syncing", None),
        ConnectionState::Live => ("live", None),
        ConnectionState::Disconnected { reason } => ("disconnected", Some(reason.clone())),
        ConnectionState::Stopped { reason } => ("stopped", Some(reason.clone())),
    }
}

/// `ws://user:secret@host/` → `ws://host/`: user info never leaves the daemon.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

fn channel_of(name: &str) -> Result<Channel, ControlError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| {
        ControlError::Invalid {
            field: "channel",
            message: format!(
                "{name:?} is not a channel: prices, book, auction_results, ancillary_results, dr_events"
            ),
        }
    })
}

impl EngineHandle {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        park: Arc<Park>,
        clock: Arc<dyn Clock>,
        ledger: SharedLedger,
        risk_engine: SharedRisk,
        risk: BoundedSender<ToRisk>,
        risk_control: Recipient<RiskControl>,
        oms: BoundedSender<ToOms>,
        adapter: Arc<WsAdapter>,
        epoch: u64,
        venue_url: &str,
    ) -> Self {
        Self {
            started_at: clock.now(),
            park,
            clock,
            ledger,
            risk_engine,
            risk,
            risk_control,
            oms,
            adapter,
            epoch,
            venue_url: redact_url(venue_url),
            manual_seq: AtomicU64::new(0),
            shadows: Vec::new(),
            health: None,
            lifecycle: None,
            store: None,
        }
    }

    /// The actors' health, so a strategy halted by its supervisor shows as halted.
    pub fn with_health(mut self, health: vpp_actors::HealthRegistry) -> Self {
        self.health = Some(health);
        self
    }

    /// The halt cause of a strategy halted by its supervisor.
    fn halted(&self, name: &str) -> Option<String> {
        let health = self.health.as_ref()?.get(&format!("strategy/{name}"))?;
        match health {
            vpp_actors::Health::Halted(cause) => Some(cause),
            _ => None,
        }
    }

    /// Where limits set at run time are persisted.
    pub fn with_store(mut self, store: vpp_persistence::Store) -> Self {
        self.store = Some(store);
        self
    }

    pub fn with_lifecycle(mut self, lifecycle: super::lifecycle::LifecycleHandle) -> Self {
        self.lifecycle = Some(lifecycle);
        self
    }

    /// Makes the running daemon follow the store for strategy `id` (its head and version in
    /// force): stops, starts or restarts its actor. Returns what was done.
    pub async fn strategy_changed(
        &self,
        store: &vpp_persistence::Store,
        id: StrategyId,
    ) -> Result<String, ControlError> {
        let Some(lifecycle) = &self.lifecycle else {
            return Ok("no engine".into());
        };
        let target = super::catalog::stored_spec(store, &self.park, id)
            .await
            .map_err(|e| ControlError::Invalid {
                field: "strategy",
                message: e.to_string(),
            })?;
        lifecycle
            .apply(id, target)
            .await
            .map_err(ControlError::Unavailable)
    }

    /// The shadow strategies' paper venues, for [`EngineHandle::shadow_report`].
    pub fn with_shadows(mut self, shadows: super::shadow::Shadows) -> Self {
        self.shadows = shadows;
        self
    }

    /// Each shadow strategy's paper P&L next to its live twins; `intents` newest intents each.
    pub fn shadow_report(&self, intents: usize) -> super::shadow::ShadowReport {
        let ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        super::shadow::report(&self.park, &self.shadows, &ledger, intents)
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, RiskEngine> {
        self.risk_engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    // ----- lookups -------------------------------------------------------------------------

    pub fn strategy(&self, key: &IdOrName) -> Result<&crate::config::StrategySpec, ControlError> {
        self.park
            .strategies
            .iter()
            .find(|s| match key {
                IdOrName::Id(id) => s.id.0 == *id,
                IdOrName::Name(n) => &s.name == n,
            })
            .ok_or_else(|| ControlError::NotFound {
                what: format!("strategy {}", show(key)),
                field: "strategy",
            })
    }

    pub fn aggregation(&self, key: &IdOrName) -> Result<AggregationId, ControlError> {
        self.park
            .aggregations
            .aggregations()
            .find(|a| match key {
                IdOrName::Id(id) => a.id.0 == *id,
                IdOrName::Name(n) => &a.name == n,
            })
            .map(|a| a.id)
            .ok_or_else(|| ControlError::NotFound {
                what: format!("aggregation {}", show(key)),
                field: "aggregation",
            })
    }

    pub fn market(&self, key: &IdOrName) -> Result<&vpp_engine::market::Market, ControlError> {
        self.park
            .markets
            .iter()
            .find(|m| match key {
                IdOrName::Id(id) => m.id.0 == *id,
                IdOrName::Name(n) => &m.name == n,
            })
            .ok_or_else(|| ControlError::NotFound {
                what: format!("market {}", show(key)),
                field: "market",
            })
    }

    /// Resolves a kill/limit scope from `global`, `aggregation/<id|name>`, `strategy/<id|name>`.
    pub fn kill_scope(
        &self,
        level: &str,
        key: Option<IdOrName>,
    ) -> Result<KillScope, ControlError> {
        match (level, key) {
            ("global", None) => Ok(KillScope::Global),
            ("aggregation", Some(k)) => Ok(KillScope::Aggregation(self.aggregation(&k)?)),
            ("strategy", Some(k)) => Ok(KillScope::Strategy(self.strategy(&k)?.id)),
            ("global", Some(_)) => Err(ControlError::Invalid {
                field: "scope",
                message: "the global scope takes no id".into(),
            }),
            (_, _) => Err(ControlError::Invalid {
                field: "scope",
                message: format!(
                    "{level:?}: expected global, aggregation/<id or name> or strategy/<id or name>"
                ),
            }),
        }
    }

    // ----- status --------------------------------------------------------------------------

    pub fn connection(&self) -> ConnectionView {
        let (state, detail) = state_view(&self.adapter.state());
        let stats = self.adapter.stats();
        ConnectionView {
            venue: self.adapter.venue().to_owned(),
            url: self.venue_url.clone(),
            state: state.to_owned(),
            detail,
            sessions: stats.sessions,
            orders_sent: stats.orders_sent,
            market_gaps: stats.market_gaps,
            report_gaps: stats.report_gaps,
            conflated_market_data: stats.conflated_market_data,
        }
    }

    /// The strategies the daemon knows and whether an actor runs each: the live table when
    /// the lifecycle runs, else the park's list.
    fn strategy_table(&self) -> Vec<(crate::config::StrategySpec, bool, Option<u32>)> {
        match &self.lifecycle {
            Some(l) => l
                .table
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .map(|s| (s.spec.clone(), s.running, Some(s.version)))
                .collect(),
            None => self
                .park
                .strategies
                .iter()
                .map(|s| (s.clone(), s.enabled, None))
                .collect(),
        }
    }

    pub fn status(&self) -> EngineStatus {
        let (open, orders, positions, open_by_strategy) = {
            let l = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
            let mut by = std::collections::HashMap::<StrategyId, usize>::new();
            for o in l.open_orders() {
                if let Some(s) = o.request.strategy_id {
                    *by.entry(s).or_default() += 1;
                }
            }
            (
                l.open_orders().count(),
                l.orders().count(),
                l.positions().len(),
                by,
            )
        };
        let (global, engaged): (Option<Engagement>, BTreeSet<StrategyId>) = {
            let e = self.engine();
            let k = e.kill_switches();
            (
                k.engagement(KillScope::Global).cloned(),
                k.engaged()
                    .filter_map(|(s, _)| match s {
                        KillScope::Strategy(id) => Some(id),
                        _ => None,
                    })
                    .collect(),
            )
        };
        EngineStatus {
            trading: global.is_none(),
            global_kill_switch: global,
            connection: self.connection(),
            open_orders: open,
            orders,
            positions,
            strategies: self
                .strategy_table()
                .iter()
                .map(|(s, running, version)| {
                    let halt_cause = self.halted(&s.name);
                    StrategyStatus {
                        id: s.id.0,
                        name: s.name.clone(),
                        kind: s.kind.clone(),
                        aggregation_id: s.aggregation_id.0,
                        market_id: s.market_id.0,
                        enabled: *running && halt_cause.is_none(),
                        halted: halt_cause.is_some(),
                        halt_cause,
                        version: *version,
                        kill_switch_engaged: engaged.contains(&s.id),
                        open_orders: open_by_strategy.get(&s.id).copied().unwrap_or(0),
                    }
                })
                .collect(),
            boot_epoch: self.epoch,
            started_at: self.started_at,
            simulated_now: self.clock.now(),
        }
    }

    // ----- kill switches, exposure, limits: through the risk actor ------------------------

    /// One request/response with the risk monitor, bounded in time.
    async fn ask_risk(&self, cmd: RiskControl) -> Result<RiskReply, ControlError> {
        let reply = self
            .risk_control
            .send(cmd)
            .timeout(RISK_TIMEOUT)
            .await
            .map_err(|e| ControlError::Unavailable(format!("risk monitor did not answer: {e}")))?
            .map_err(|r| ControlError::Unavailable(format!("risk monitor refused: {r}")))?;
        reply.map_err(|e| match e {
            vpp_risk::RiskError::KillSwitch(vpp_risk::kill::KillSwitchError::NotEngaged(_)) => {
                ControlError::Conflict(e.to_string())
            }
            vpp_risk::RiskError::Config(_) => ControlError::Invalid {
                field: "limits",
                message: e.to_string(),
            },
            other => ControlError::Conflict(other.to_string()),
        })
    }

    pub async fn kill_switches(&self) -> Result<Vec<KillSwitchRow>, ControlError> {
        match self.ask_risk(RiskControl::KillSwitches).await? {
            RiskReply::KillSwitches { engaged, .. } => Ok(engaged
                .into_iter()
                .map(|(scope, engagement)| KillSwitchRow { scope, engagement })
                .collect()),
            other => Err(unexpected(&other)),
        }
    }

    /// Engages a switch: risk refuses new intents in scope and has the OMS cancel the open
    /// orders in scope; risk audits the action.
    pub async fn engage(
        &self,
        scope: KillScope,
        who: &str,
        why: &str,
    ) -> Result<KillView, ControlError> {
        let cmd = RiskControl::EngageKillSwitch {
            scope,
            who: who.to_owned(),
            why: why.to_owned(),
        };
        match self.ask_risk(cmd).await? {
            RiskReply::KillSwitchEngaged {
                newly_engaged,
                cancel_requested,
                oms_refused,
                ..
            } => Ok(KillView {
                scope,
                engaged: true,
                changed: newly_engaged,
                cancelling: cancel_requested,
                message: oms_refused.map_or_else(
                    || format!("engaged by {who}: {why}"),
                    |r| format!("engaged, but the cancel did not reach the OMS ({r}); engage again to retry"),
                ),
            }),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn release(&self, scope: KillScope, who: &str) -> Result<KillView, ControlError> {
        let cmd = RiskControl::ReleaseKillSwitch {
            scope,
            who: who.to_owned(),
        };
        match self.ask_risk(cmd).await? {
            RiskReply::KillSwitchReleased { .. } => Ok(KillView {
                scope,
                engaged: false,
                changed: true,
                cancelling: 0,
                message: format!("released by {who}"),
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Stop trading: engage the global switch (cancelling everything). Idempotent.
    pub async fn stop(&self, who: &str, why: &str) -> Result<KillView, ControlError> {
        self.engage(KillScope::Global, who, why).await
    }

    /// Start trading: release the global switch. Idempotent (`changed: false` when trading).
    pub async fn start(&self, who: &str) -> Result<KillView, ControlError> {
        if !self.engine().kill_switches().is_engaged(KillScope::Global) {
            return Ok(KillView {
                scope: KillScope::Global,
                engaged: false,
                changed: false,
                cancelling: 0,
                message: "already trading".into(),
            });
        }
        self.release(KillScope::Global, who).await
    }

    pub async fn exposure(
        &self,
        scope: Option<KillScope>,
    ) -> Result<Vec<ExposureView>, ControlError> {
        let cmds: Vec<RiskControl> = match scope {
            Some(KillScope::Aggregation(id)) => vec![RiskControl::ExposureAggregation(id)],
            Some(KillScope::Strategy(id)) => vec![RiskControl::ExposureStrategy(id)],
            Some(KillScope::Global) | None => self
                .park
                .aggregations
                .aggregations()
                .map(|a| RiskControl::ExposureAggregation(a.id))
                .chain(
                    self.park
                        .strategies
                        .iter()
                        .map(|s| RiskControl::ExposureStrategy(s.id)),
                )
                .collect(),
        };
        let mut out = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            match self.ask_risk(cmd).await? {
                RiskReply::Exposure(v) => out.push(*v),
                other => return Err(unexpected(&other)),
            }
        }
        Ok(out)
    }

    pub async fn limits(&self, scope: LimitScope) -> Result<RiskLimits, ControlError> {
        match self.ask_risk(RiskControl::GetLimits(scope)).await? {
            RiskReply::Limits { limits, .. } => Ok(limits),
            other => Err(unexpected(&other)),
        }
    }

    /// Replaces limits (risk validates and audits); answers the change.
    pub async fn set_limits(
        &self,
        scope: LimitScope,
        limits: RiskLimits,
        who: &str,
    ) -> Result<LimitChange, ControlError> {
        let cmd = RiskControl::SetLimits {
            scope,
            limits,
            who: who.to_owned(),
        };
        let change = match self.ask_risk(cmd).await? {
            RiskReply::LimitsChanged(c) => *c,
            other => return Err(unexpected(&other)),
        };
        if let Some(store) = &self.store {
            let stored = async {
                let key = serde_json::to_string(&scope).map_err(|e| e.to_string())?;
                let value = serde_json::to_value(&change.new).map_err(|e| e.to_string())?;
                store
                    .put_risk_limits(&key, &value)
                    .await
                    .map_err(|e| e.to_string())
            };
            stored.await.map_err(|e| {
                ControlError::Unavailable(format!(
                    "the limits apply in the running engine but could not be stored \
                     (a restart would lose them): {e}"
                ))
            })?;
        }
        Ok(change)
    }

    /// Resolves a limit scope from `aggregation_defaults`, `strategy_defaults`,
    /// `aggregation/<id|name>`, `strategy/<id|name>`.
    pub fn limit_scope(
        &self,
        level: &str,
        key: Option<IdOrName>,
    ) -> Result<LimitScope, ControlError> {
        match (level, key) {
            ("aggregation_defaults", None) => Ok(LimitScope::AggregationDefaults),
            ("strategy_defaults", None) => Ok(LimitScope::StrategyDefaults),
            ("aggregation", Some(k)) => Ok(LimitScope::Aggregation(self.aggregation(&k)?)),
            ("strategy", Some(k)) => Ok(LimitScope::Strategy(self.strategy(&k)?.id)),
            _ => Err(ControlError::Invalid {
                field: "scope",
                message: format!(
                    "{level:?}: expected aggregation_defaults, strategy_defaults, \
                     aggregation/<id or name> or strategy/<id or name>"
                ),
            }),
        }
    }

    // ----- market connection ---------------------------------------------------------------

    pub fn adapter_venue(&self) -> &str {
        self.adapter.venue()
    }

    /// Ends an operator disconnect: the session reconnects at once and reconciles (missed
    /// reports, held orders) as after any reconnect. A no-op on a connected session; a session
    /// that stopped for good cannot be restarted in place.
    pub async fn connect(&self) -> Result<(), ControlError> {
        if let ConnectionState::Stopped { reason } = self.adapter.state() {
            return Err(ControlError::Conflict(format!(
                "the venue session stopped ({reason}); restart the daemon to reconnect"
            )));
        }
        self.adapter
            .resume()
            .await
            .map_err(|e| ControlError::Unavailable(format!("venue adapter: {e}")))
    }

    /// Operator disconnect: closes the venue session and keeps it closed until `connect`.
    /// Orders meanwhile are held by the adapter (bounded) and sent after the reconnect's
    /// reconciliation; to stop trading as well, `POST /engine/stop` first.
    pub async fn disconnect(&self) -> Result<(), ControlError> {
        self.adapter
            .pause()
            .await
            .map_err(|e| ControlError::Unavailable(format!("venue adapter: {e}")))
    }

    pub async fn subscribe(
        &self,
        channel: &str,
        market: &IdOrName,
        on: bool,
    ) -> Result<(), ControlError> {
        let ch = channel_of(channel)?;
        let name = self.market(market)?.name.clone();
        let r = if on {
            self.adapter.subscribe(ch, &name).await
        } else {
            self.adapter.unsubscribe(ch, &name).await
        };
        r.map_err(|e| ControlError::Unavailable(format!("venue adapter: {e}")))
    }

    // ----- orders --------------------------------------------------------------------------

    /// Checks and submits a manual order through risk; returns its client order id.
    pub fn manual_order(&self, o: &ManualOrder) -> Result<ClientOrderId, ControlError> {
        let market = self.market(&o.market)?;
        let market_id: MarketId = market.id;
        let strategy = o.strategy.as_ref().map(|s| self.strategy(s)).transpose()?;
        let aggregation_id = match (&o.aggregation, strategy) {
            (Some(a), Some(s)) => {
                let a = self.aggregation(a)?;
                if a != s.aggregation_id {
                    return Err(ControlError::Invalid {
                        field: "aggregation",
                        message: format!(
                            "strategy {} trades for aggregation {}, not {a}",
                            s.name, s.aggregation_id
                        ),
                    });
                }
                a
            }
            (Some(a), None) => self.aggregation(a)?,
            (None, Some(s)) => s.aggregation_id,
            (None, None) => {
                return Err(ControlError::Invalid {
                    field: "aggregation",
                    message: "give an aggregation or a strategy".into(),
                })
            }
        };
        let interval =
            DeliveryInterval::starting_at(o.interval_start).map_err(|e| ControlError::Invalid {
                field: "interval_start",
                message: e.to_string(),
            })?;
        let n = self.manual_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = ClientOrderId::new(manual_order_id(
            self.epoch,
            strategy.map(|s| s.id),
            aggregation_id,
            n,
        ))
        .map_err(|e| ControlError::Invalid {
            field: "client_order_id",
            message: e.to_string(),
        })?;
        let request = OrderRequest {
            client_order_id: id.clone(),
            strategy_id: strategy.map(|s| s.id),
            aggregation_id,
            market_id,
            product: o.product.unwrap_or(Product::Energy),
            interval,
            side: o.side,
            quantity_mw: o.quantity_mw,
            price_cny_per_mwh: o.price_cny_per_mwh,
            time_in_force: o.time_in_force.unwrap_or(TimeInForce::Gtc),
        };
        request.validate().map_err(|e| ControlError::Invalid {
            field: "quantity_mw",
            message: e.to_string(),
        })?;
        // The same checks the risk actor runs, without reserving: an answer the operator sees
        // now. The actor's own evaluation (with reservation) follows.
        if let Decision::Reject(r) = self.engine().check(&request, self.clock.now()) {
            return Err(ControlError::Rejected {
                code: r.code.to_string(),
                message: r.message,
            });
        }
        self.risk
            .try_send(ToRisk::Intent(Intent {
                intent: OrderIntent::New(request),
                t0_ns: 0,
            }))
            .map_err(|e| ControlError::Unavailable(format!("risk refused the order: {e}")))?;
        Ok(id)
    }

    /// Asks the OMS to cancel one order. 404 for an order the ledger does not know; 409 for
    /// one already finished.
    pub fn cancel(&self, id: &str) -> Result<(), ControlError> {
        let id = ClientOrderId::new(id).map_err(|e| ControlError::Invalid {
            field: "id",
            message: e.to_string(),
        })?;
        let status = {
            let l = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
            l.order(&id).map(|o| o.status)
        };
        match status {
            None => Err(ControlError::NotFound {
                what: format!("order {id}"),
                field: "id",
            }),
            Some(s) if s.is_terminal() => {
                Err(ControlError::Conflict(format!("order {id} is already {s}")))
            }
            Some(_) => self.cancel_order_id(id),
        }
    }

    fn cancel_order_id(&self, id: ClientOrderId) -> Result<(), ControlError> {
        // Cancels bypass the risk checks (reducing risk is never blocked) but take the same
        // path to the OMS as a strategy's cancel.
        self.oms
            .try_send(ToOms::Approved(Intent {
                intent: OrderIntent::Cancel {
                    client_order_id: id,
                },
                t0_ns: 0,
            }))
            .map_err(|e| ControlError::Unavailable(format!("OMS refused the cancel: {e}")))
    }

    pub fn orders(&self, f: &OrderFilter) -> Vec<Order> {
        let l = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let keep = |o: &&Order| {
            f.strategy.is_none_or(|s| o.request.strategy_id == Some(s))
                && f.aggregation.is_none_or(|a| o.request.aggregation_id == a)
        };
        let mut out: Vec<Order> = if f.open_only {
            l.open_orders().filter(keep).cloned().collect()
        } else {
            l.orders().filter(keep).cloned().collect()
        };
        out.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.id().cmp(b.id()))
        });
        out
    }

    pub fn order(&self, id: &str) -> Option<Order> {
        let id = ClientOrderId::new(id).ok()?;
        let l = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        l.order(&id).cloned()
    }

    pub fn positions(&self, aggregation: Option<AggregationId>) -> Vec<PositionRow> {
        let l = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<PositionRow> = l
            .positions()
            .iter()
            .filter(|(k, _)| aggregation.is_none_or(|a| k.aggregation_id == a))
            .map(|(k, p)| position_row(k, p))
            .collect();
        rows.sort_by(|a, b| {
            (a.aggregation_id, a.market_id, a.interval_start).cmp(&(
                b.aggregation_id,
                b.market_id,
                b.interval_start,
            ))
        });
        rows
    }

    /// Up and down flexibility per aggregation as risk last saw it.
    pub fn capacity(&self, id: AggregationId) -> Option<vpp_risk::Capacity> {
        self.engine()
            .exposure_aggregation(id, self.clock.now())
            .capacity
    }
}

fn unexpected(reply: &RiskReply) -> ControlError {
    ControlError::Unavailable(format!("risk monitor answered out of turn: {reply:?}"))
}

fn position_row(k: &PositionKey, p: &Position) -> PositionRow {
    PositionRow {
        aggregation_id: k.aggregation_id.0,
        market_id: k.market_id.0,
        interval_start: k.interval.start(),
        bought_mw: p.bought_mw,
        sold_mw: p.sold_mw,
        net_sold_mw: p.sold_mw - p.bought_mw,
    }
}

/// `12` → id, anything else → name.
pub fn parse_key(s: &str) -> IdOrName {
    s.parse::<u64>()
        .map_or_else(|_| IdOrName::Name(s.to_owned()), IdOrName::Id)
}

fn show(k: &IdOrName) -> String {
    match k {
        IdOrName::Id(id) => id.to_string(),
        IdOrName::Name(n) => format!("{n:?}"),
    }
}

/// A manual order's client order id: `m<boot>s<strategy>-<n>` when attributed to a strategy,
/// `m<boot>a<aggregation>-<n>` otherwise. The owner is in the id, so start-up reconciliation
/// adopts a manual order the venue has and the journal lacks (a crash right after sending)
/// exactly like a strategy's ([`manual_owner_of`]).
pub fn manual_order_id(
    boot: u64,
    strategy: Option<StrategyId>,
    aggregation: AggregationId,
    n: u64,
) -> String {
    match strategy {
        Some(s) => format!("m{boot}s{}-{n}", s.0),
        None => format!("m{boot}a{}-{n}", aggregation.0),
    }
}

/// Who owns a manual order, from its client order id (see [`manual_order_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualOwner {
    Strategy(StrategyId),
    Aggregation(AggregationId),
}

/// Parses `m<boot>s<id>-<n>` / `m<boot>a<id>-<n>`; `None` for any other id.
pub fn manual_owner_of(id: &ClientOrderId) -> Option<ManualOwner> {
    let rest = id.as_str().strip_prefix('m')?;
    let boot_len = rest.chars().take_while(char::is_ascii_digit).count();
    if boot_len == 0 {
        return None;
    }
    let rest = &rest[boot_len..];
    let (kind, rest) = rest.split_at_checked(1)?;
    let (owner, n) = rest.split_once('-')?;
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let owner: u64 = owner.parse().ok()?;
    match kind {
        "s" => Some(ManualOwner::Strategy(StrategyId(owner))),
        "a" => Some(ManualOwner::Aggregation(AggregationId(owner))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_manual_order_id_names_its_owner_for_adoption() {
        let id = |s: String| ClientOrderId::new(s).unwrap();
        let by_strategy = id(manual_order_id(
            12,
            Some(StrategyId(3)),
            AggregationId(9),
            7,
        ));
        assert_eq!(by_strategy.as_str(), "m12s3-7");
        assert_eq!(
            manual_owner_of(&by_strategy),
            Some(ManualOwner::Strategy(StrategyId(3)))
        );
        let by_aggregation = id(manual_order_id(12, None, AggregationId(9), 8));
        assert_eq!(
            manual_owner_of(&by_aggregation),
            Some(ManualOwner::Aggregation(AggregationId(9)))
        );
        for other in ["s1v1b2-3", "m12-7", "mx3-1", "m12a-1", "m12a3-", "m12q3-1"] {
            assert_eq!(manual_owner_of(&id(other.into())), None, "{other}");
        }
    }
    use super::*;

    #[test]
    fn urls_lose_their_user_info() {
        assert_eq!(
            redact_url("ws://user:secret@127.0.0.1:9900/ws"),
            "ws://127.0.0.1:9900/ws"
        );
        assert_eq!(redact_url("wss://venue.example/x"), "wss://venue.example/x");
        assert_eq!(redact_url("ws://k@h"), "ws://h");
        assert_eq!(redact_url("ws://a:b@h/p?x=1"), "ws://h/p?x=1");
    }

    #[test]
    fn run_options_never_print_the_api_key() {
        let opts = crate::daemon::RunOptions {
            api_key: "very-secret-key".into(),
            venue_url: Some("wss://user:pw@venue.example/ws".into()),
            ..Default::default()
        };
        let shown = format!("{opts:?}");
        assert!(!shown.contains("very-secret-key"), "{shown}");
        assert!(!shown.contains("pw@"), "{shown}");
        assert!(shown.contains("venue.example"), "{shown}");
    }

    #[test]
    fn keys_and_channels_parse() {
        assert_eq!(parse_key("12"), IdOrName::Id(12));
        assert_eq!(parse_key("vpp-north"), IdOrName::Name("vpp-north".into()));
        assert_eq!(channel_of("book").unwrap(), Channel::Book);
        assert!(matches!(
            channel_of("nope"),
            Err(ControlError::Invalid {
                field: "channel",
                ..
            })
        ));
    }
}
