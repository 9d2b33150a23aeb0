//! Daemon configuration: one TOML file describing templates, resources, aggregations,
//! markets, strategies, risk limits, the database URL and the listen addresses.
//!
//! Loading has two stages and both report errors as `FILE: KEY.PATH: what is wrong and what
//! would be valid`:
//! 1. syntax and shape (serde + toml, unknown keys refused),
//! 2. meaning: names resolve, template parameters validate, no resource is committed above
//!    100%, markets are consistent, and everything `vpp run` would refuse later is refused
//!    here: each strategy is constructed by the daemon's registry (kind, parameters, a market
//!    its kind can trade), the `[risk]` section builds the risk engine, the database URL and
//!    listen addresses parse, resource and site names are MQTT-safe topic levels, and every
//!    aggregation has members, each listed once.
//!
//! [`Park::parse`] is the one validation: `vpp check-config` and `vpp run` both call it (and
//! the daemon builds its risk engine with [`risk_engine`], the same function the check uses).
//!
//! The result, [`Park`], holds engine types only; ids are assigned in file order from 1.

use chrono::Utc;
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use vpp_actors::live::settlement::PenaltyReference;
use vpp_engine::aggregation::{AggregationBook, ResourceFeed};
use vpp_engine::dispatch::{DeviationBand, DispatchMethod, TrackerConfig};
use vpp_engine::error::ValidationError;
use vpp_engine::ids::{AggregationId, MarketId, ResourceId, StrategyId, TemplateId};
use vpp_engine::market::{Market, MarketKind};
use vpp_engine::resource::{GeoLocation, LifecycleState, Resource};
use vpp_engine::settlement::{PenaltyRule, PriceBase, RatesTable};
use vpp_engine::template::{ResourceKind, TemplateDraft, TemplateParams, TemplateRegistry};

/// The demo park shipped with the binary; `vpp run` without `--config` uses it.
pub const DEMO_CONFIG_TOML: &str = include_str!("../config/demo.toml");
pub const DEMO_CONFIG_NAME: &str = "config/demo.toml (built in)";

/// Largest config file accepted, so a wrong path (a log, a dump) fails fast.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// A config error: which file, which key, what is wrong and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub templates: Vec<TemplateConfig>,
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
    #[serde(default)]
    pub aggregations: Vec<AggregationConfig>,
    #[serde(default)]
    pub markets: Vec<MarketConfig>,
    #[serde(default)]
    pub strategies: Vec<StrategyConfig>,
    /// Risk limits; their schema belongs to the risk crate and is validated there.
    #[serde(default)]
    pub risk: toml::Table,
    /// Where telemetry comes from: the simulated park (default) or an MQTT broker.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The deviation penalty rule and the currency rates of settlement.
    #[serde(default)]
    pub settlement: SettlementConfig,
    /// Restart policy of every supervised actor (R restarts in T seconds, backoff).
    #[serde(default)]
    pub supervision: SupervisionConfig,
    /// How the order journal makes orders durable, and when it counts as unavailable.
    #[serde(default)]
    pub journal: JournalSection,
}

/// When an order is durable relative to its frame leaving for the venue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// The order is journaled (sequence assigned) before it is sent and committed by the next
    /// group commit; no fsync on the order path. A crash in between is covered by the venue
    /// reconciliation at start-up.
    #[default]
    GroupCommit,
    /// Each order's frame leaves only after its journal commit returned (durable).
    BeforeSend,
}

/// `[journal]`: durability of orders and the journal writer's health bounds and supervision.
/// A journal that fails or lags past `max_lag_ms` stops new orders (`journal_unavailable`),
/// engages the global kill switch and makes `/health` answer 503 (docs/operations.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSection {
    pub durability: Durability,
    /// Target bound on an event's wait from submission to durable (the writer commits whatever
    /// is queued as soon as the previous commit returns); commits slower than this are counted
    /// in `vpp_journal_commit_over_target_total`. 1..=1000.
    pub group_commit_ms: u64,
    /// A batch in commit for longer than this makes the journal unavailable. group_commit_ms..=600000.
    pub max_lag_ms: u64,
    /// Supervised restart of a failing writer: first wait, doubling, capped at the max.
    pub restart_backoff_initial_ms: u64,
    pub restart_backoff_max_ms: u64,
    /// Restarts in a row on one batch before the writer stops for good. 1..=1000000.
    pub max_restarts: u32,
}

impl Default for JournalSection {
    fn default() -> Self {
        Self {
            durability: Durability::GroupCommit,
            group_commit_ms: 10,
            max_lag_ms: 2_000,
            restart_backoff_initial_ms: 100,
            restart_backoff_max_ms: 5_000,
            max_restarts: 120,
        }
    }
}

/// `[supervision]`: at most `max_restarts` restarts within `within_s` seconds, OTP style,
/// waiting `backoff_initial_ms` before a restart (doubling per further restart in the window,
/// capped at `backoff_max_ms`); past the limit a strategy is halted and its orders cancelled,
/// a core actor marks the daemon degraded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    pub max_restarts: u32,
    pub within_s: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        let p = vpp_actors::RestartPolicy::default();
        Self {
            max_restarts: p.max_restarts,
            within_s: p.within.as_secs(),
            backoff_initial_ms: u64::try_from(p.backoff_initial.as_millis()).unwrap_or(50),
            backoff_max_ms: u64::try_from(p.backoff_max.as_millis()).unwrap_or(5_000),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// `sqlite://PATH` (the default, created if missing) or `postgres://...`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// Operator API listen address.
    #[serde(default = "default_api_listen")]
    pub api_listen: String,
    /// Built-in venue simulator listen address; port 0 picks a free port.
    #[serde(default = "default_venue_listen")]
    pub venue_listen: String,
    /// Simulated seconds per real second of `vpp run` (`--speed` overrides), 1..=100000.
    #[serde(default = "default_speed")]
    pub speed: u32,
    /// Cancel open orders at shutdown (true) or keep them working at the venue
    /// (`--keep-orders` forces false).
    #[serde(default = "yes")]
    pub cancel_on_shutdown: bool,
    /// Record each strategy's session here (`<name>.session.jsonl` with what it was fed,
    /// `<name>.intents.jsonl` with what it emitted) for `vpp backtest --session`; opt-in.
    #[serde(default)]
    pub record_session_dir: Option<String>,
}

fn default_speed() -> u32 {
    1
}

fn default_database_url() -> String {
    "sqlite://data/vpp.db".to_owned()
}
fn default_api_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_venue_listen() -> String {
    "127.0.0.1:0".to_owned()
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            database_url: default_database_url(),
            api_listen: default_api_listen(),
            venue_listen: default_venue_listen(),
            speed: default_speed(),
            cancel_on_shutdown: true,
            record_session_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub name: String,
    pub kind: ResourceKind,
    pub params: TemplateParams,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    pub name: String,
    /// Name of a template in this file; the resource pins its current version.
    pub template: String,
    pub site: String,
    pub lat: f64,
    pub lon: f64,
    #[serde(default = "default_state")]
    pub state: String,
    /// How many identical resources to create, named `NAME-01`, `NAME-02`, ...
    #[serde(default = "one")]
    pub count: u32,
}

fn default_state() -> String {
    "active".to_owned()
}
fn one() -> u32 {
    1
}

/// Most resources one `[[resources]]` entry may expand to.
pub const MAX_RESOURCE_COUNT: u32 = 10_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationConfig {
    pub name: String,
    #[serde(default)]
    pub members: Vec<MemberConfig>,
    /// How awards are shared out and the closed loop's band (`dispatch = { method = ... }`).
    #[serde(default)]
    pub dispatch: AggregationDispatchConfig,
}

/// `[aggregations.dispatch]`: the dispatch method and the closed-loop deviation band.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationDispatchConfig {
    /// `pro_rata` (default), `merit_order` or `soc_weighted`.
    #[serde(default = "default_dispatch_method")]
    pub method: String,
    /// SoC exponent of `soc_weighted`, 0..=16 (default 1); only with `soc_weighted`.
    #[serde(default)]
    pub k: Option<f64>,
    /// Deviation tolerated without correction: max(band_kw, band_pct % of |setpoint|).
    #[serde(default = "default_band_kw")]
    pub band_kw: Decimal,
    #[serde(default = "default_band_pct")]
    pub band_pct: Decimal,
    /// Consecutive samples outside the band before the shortfall is re-dispatched, 1..=10000.
    #[serde(default = "default_consecutive_samples")]
    pub consecutive_samples: u32,
}

impl Default for AggregationDispatchConfig {
    fn default() -> Self {
        Self {
            method: default_dispatch_method(),
            k: None,
            band_kw: default_band_kw(),
            band_pct: default_band_pct(),
            consecutive_samples: default_consecutive_samples(),
        }
    }
}

fn default_dispatch_method() -> String {
    "pro_rata".to_owned()
}
fn default_band_kw() -> Decimal {
    Decimal::TEN
}
fn default_band_pct() -> Decimal {
    Decimal::from(5)
}
fn default_consecutive_samples() -> u32 {
    3
}

/// An aggregation's dispatch settings in engine types.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DispatchSettings {
    pub method: DispatchMethod,
    pub tracker: TrackerConfig,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        let d = AggregationDispatchConfig::default();
        Self {
            method: DispatchMethod::ProRata,
            tracker: TrackerConfig {
                band: DeviationBand {
                    band_kw: d.band_kw,
                    band_pct: d.band_pct,
                },
                consecutive_samples: d.consecutive_samples,
            },
        }
    }
}

/// `[telemetry]`: the simulated park (`source = "sim"`, the default) or MQTT (`"mqtt"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default = "default_telemetry_source")]
    pub source: String,
    /// `mqtt://HOST:PORT` (also `tcp://` or bare `HOST:PORT`; port 1883 when absent).
    #[serde(default = "default_broker_url")]
    pub broker_url: String,
    /// Topic site of every resource (`vpp/<site>/<resource>/...`); default: each resource's
    /// own `site`.
    #[serde(default)]
    pub site: Option<String>,
    /// MQTT client id, unique per daemon on the broker (1..=64 printable ASCII characters).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Samples older than this (simulated seconds behind the daemon's clock) are refused as
    /// stale, 1..=86400.
    #[serde(default = "default_max_age_s")]
    pub max_age_s: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            source: default_telemetry_source(),
            broker_url: default_broker_url(),
            site: None,
            client_id: default_client_id(),
            max_age_s: default_max_age_s(),
        }
    }
}

fn default_telemetry_source() -> String {
    "sim".to_owned()
}
fn default_broker_url() -> String {
    "mqtt://127.0.0.1:1883".to_owned()
}
fn default_client_id() -> String {
    "vpp-daemon".to_owned()
}
fn default_max_age_s() -> u32 {
    60
}

/// Where the daemon's telemetry comes from, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelemetrySource {
    Sim,
    Mqtt { host: String, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    pub source: TelemetrySource,
    pub site: Option<String>,
    pub client_id: String,
    pub max_age_s: u32,
}

/// `[settlement]`: the province's deviation penalty and the rates table kept with records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementConfig {
    #[serde(default = "default_province")]
    pub province: String,
    /// Deviation allowed without penalty, percent of |awarded|, 0..=100.
    #[serde(default = "default_tolerance")]
    pub tolerance_band_pct: Decimal,
    /// `clearing_price` (default) or `monthly_average` (then `monthly_average_cny_per_mwh`).
    #[serde(default = "default_price_base")]
    pub price_base: String,
    #[serde(default)]
    pub monthly_average_cny_per_mwh: Option<Decimal>,
    #[serde(default = "default_over_multiplier")]
    pub over_delivery_multiplier: Decimal,
    #[serde(default = "default_under_multiplier")]
    pub under_delivery_multiplier: Decimal,
    /// Resource kinds whose share of a deviation is not penalised.
    #[serde(default)]
    pub exempt_kinds: Vec<ResourceKind>,
    #[serde(default = "default_cny_per_usd")]
    pub cny_per_usd: Decimal,
    #[serde(default = "default_cny_per_eur")]
    pub cny_per_eur: Decimal,
    /// Date the rates are quoted for, `YYYY-MM-DD` (UTC midnight).
    #[serde(default = "default_rates_as_of")]
    pub rates_as_of: String,
    /// Deemed regulation mileage, MW of mileage per MW of awarded capacity per interval
    /// (0..=100, default 0: the venue sends no AGC signal, so no mileage is measured).
    #[serde(default)]
    pub regulation_mileage_mw_per_mw: Decimal,
    /// The price a deviation penalty is computed from: `real_time` (default: the real-time
    /// market's published price for the interval, else the day-ahead one), `day_ahead`, or
    /// `statement` (the awarded quantity's own price).
    #[serde(default)]
    pub penalty_reference: PenaltyReference,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        Self {
            province: default_province(),
            tolerance_band_pct: default_tolerance(),
            price_base: default_price_base(),
            monthly_average_cny_per_mwh: None,
            over_delivery_multiplier: default_over_multiplier(),
            under_delivery_multiplier: default_under_multiplier(),
            exempt_kinds: Vec::new(),
            cny_per_usd: default_cny_per_usd(),
            cny_per_eur: default_cny_per_eur(),
            rates_as_of: default_rates_as_of(),
            regulation_mileage_mw_per_mw: Decimal::ZERO,
            penalty_reference: PenaltyReference::default(),
        }
    }
}

fn default_province() -> String {
    "yunnan".to_owned()
}
fn default_tolerance() -> Decimal {
    Decimal::from(3)
}
fn default_price_base() -> String {
    "clearing_price".to_owned()
}
fn default_over_multiplier() -> Decimal {
    Decimal::ONE
}
fn default_under_multiplier() -> Decimal {
    Decimal::new(15, 1)
}
fn default_cny_per_usd() -> Decimal {
    Decimal::new(72, 1)
}
fn default_cny_per_eur() -> Decimal {
    Decimal::new(78, 1)
}
fn default_rates_as_of() -> String {
    "2026-01-01".to_owned()
}

/// Settlement settings in engine types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementSettings {
    pub rule: PenaltyRule,
    pub rates: RatesTable,
    /// Deemed regulation mileage, MW per MW of capacity per interval.
    pub regulation_mileage_mw_per_mw: Decimal,
    pub penalty_reference: PenaltyReference,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// A resource name, or a `[[resources]]` name with `count > 1` to take all of them.
    pub resource: String,
    #[serde(default = "hundred")]
    pub share_pct: Decimal,
}

fn hundred() -> Decimal {
    Decimal::ONE_HUNDRED
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketConfig {
    pub name: String,
    pub kind: String,
    #[serde(default = "default_timezone")]
    pub timezone: String,
    pub price_cap_cny_per_mwh: Decimal,
    pub price_floor_cny_per_mwh: Decimal,
    #[serde(default)]
    pub negative_prices_allowed: bool,
    #[serde(default = "default_gate_closure")]
    pub gate_closure_minutes_before: u32,
}

fn default_timezone() -> String {
    "Asia/Shanghai".to_owned()
}
fn default_gate_closure() -> u32 {
    // Yunnan: day-ahead bids close at 10:00 the day before delivery.
    14 * 60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    pub name: String,
    /// The registered strategy type, e.g. `battery_arbitrage`.
    pub kind: String,
    pub aggregation: String,
    pub market: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Shadow mode: runs on live market data, records its intents and paper-fills them
    /// (paper P&L), never sends an order.
    #[serde(default)]
    pub shadow: bool,
    #[serde(default)]
    pub params: toml::Table,
}

fn yes() -> bool {
    true
}

/// A strategy instance resolved against the park.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategySpec {
    pub id: StrategyId,
    pub name: String,
    pub kind: String,
    pub aggregation_id: AggregationId,
    pub market_id: MarketId,
    pub enabled: bool,
    /// Shadow mode (see [`StrategyConfig::shadow`]).
    pub shadow: bool,
    pub params: toml::Table,
}

/// A validated configuration in engine types.
#[derive(Debug, Clone)]
pub struct Park {
    pub source: String,
    pub daemon: DaemonConfig,
    pub templates: TemplateRegistry,
    pub resources: Vec<Resource>,
    pub aggregations: AggregationBook,
    pub markets: Vec<Market>,
    pub strategies: Vec<StrategySpec>,
    pub risk: toml::Table,
    pub telemetry: TelemetrySettings,
    pub settlement: SettlementSettings,
    /// Dispatch method and closed-loop band per aggregation (every aggregation has an entry).
    pub dispatch: BTreeMap<AggregationId, DispatchSettings>,
    /// The restart policy of every supervised actor, from `[supervision]`.
    pub supervision: vpp_actors::RestartPolicy,
    /// `[journal]`, validated.
    pub journal: JournalSection,
}

impl Park {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let err = |message: String| ConfigError {
            file: file.clone(),
            key: String::new(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(err(format!(
                "is {} bytes; a config file may be at most {MAX_CONFIG_BYTES}",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&file, &text)
    }

    /// The built-in demo park.
    pub fn demo() -> Result<Self, ConfigError> {
        Self::parse(DEMO_CONFIG_NAME, DEMO_CONFIG_TOML)
    }

    /// Parses and validates config text; `source` names it in errors.
    pub fn parse(source: &str, text: &str) -> Result<Self, ConfigError> {
        let raw: ConfigFile = toml::from_str(text).map_err(|e| ConfigError {
            file: source.to_owned(),
            key: String::new(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Builder::new(source).build(raw)
    }

    pub fn market_by_name(&self, name: &str) -> Option<&Market> {
        self.markets.iter().find(|m| m.name == name)
    }
}

/// Resolves names to ids and validates meaning, one section at a time.
struct Builder {
    source: String,
    template_ids: HashMap<String, TemplateId>,
    /// Resource name (and group name for `count > 1`) → ids.
    resource_ids: HashMap<String, Vec<ResourceId>>,
    aggregation_ids: HashMap<String, AggregationId>,
    market_ids: HashMap<String, MarketId>,
}

impl Builder {
    fn new(source: &str) -> Self {
        Self {
            source: source.to_owned(),
            template_ids: HashMap::new(),
            resource_ids: HashMap::new(),
            aggregation_ids: HashMap::new(),
            market_ids: HashMap::new(),
        }
    }

    fn err(&self, key: String, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.source.clone(),
            key,
            message: message.into(),
        }
    }

    fn invalid(&self, section: String, e: &ValidationError) -> ConfigError {
        self.err(format!("{section}.{}", e.field), e.reason.clone())
    }

    fn build(mut self, raw: ConfigFile) -> Result<Park, ConfigError> {
        if !(1..=100_000).contains(&raw.daemon.speed) {
            return Err(self.err(
                "daemon.speed".into(),
                format!("{} is outside 1..=100000", raw.daemon.speed),
            ));
        }
        let templates = self.templates(&raw.templates)?;
        let resources = self.resources(&raw.resources, &templates)?;
        let aggregations = self.aggregations(&raw.aggregations, &resources, &templates)?;
        let markets = self.markets(&raw.markets)?;
        let strategies = self.strategies(&raw.strategies)?;
        let telemetry = self.telemetry(&raw.telemetry)?;
        let settlement = self.settlement(&raw.settlement)?;
        let dispatch = self.dispatch(&raw.aggregations)?;
        let supervision = self.supervision(&raw.supervision)?;
        let journal = self.journal(&raw.journal)?;
        self.daemon(&raw.daemon)?;
        self.topic_levels(&raw.resources)?;
        self.members_once(&raw.aggregations)?;
        self.runnable_strategies(&strategies, &markets)?;
        risk_engine(&self.source, &raw.risk, &markets)?;
        Ok(Park {
            source: self.source,
            daemon: raw.daemon,
            templates,
            resources,
            aggregations,
            markets,
            strategies,
            risk: raw.risk,
            telemetry,
            settlement,
            dispatch,
            supervision,
            journal,
        })
    }

    fn journal(&self, j: &JournalSection) -> Result<JournalSection, ConfigError> {
        const MAX_MS: u64 = 600_000;
        if !(1..=1_000).contains(&j.group_commit_ms) {
            return Err(self.err(
                "journal.group_commit_ms".into(),
                format!("{} is outside 1..=1000", j.group_commit_ms),
            ));
        }
        if !(j.group_commit_ms..=MAX_MS).contains(&j.max_lag_ms) {
            return Err(self.err(
                "journal.max_lag_ms".into(),
                format!(
                    "{} is outside group_commit_ms..={MAX_MS} ({}..={MAX_MS})",
                    j.max_lag_ms, j.group_commit_ms
                ),
            ));
        }
        if !(1..=MAX_MS).contains(&j.restart_backoff_initial_ms) {
            return Err(self.err(
                "journal.restart_backoff_initial_ms".into(),
                format!("{} is outside 1..={MAX_MS}", j.restart_backoff_initial_ms),
            ));
        }
        if !(j.restart_backoff_initial_ms..=MAX_MS).contains(&j.restart_backoff_max_ms) {
            return Err(self.err(
                "journal.restart_backoff_max_ms".into(),
                format!(
                    "{} is outside restart_backoff_initial_ms..={MAX_MS}",
                    j.restart_backoff_max_ms
                ),
            ));
        }
        if !(1..=1_000_000).contains(&j.max_restarts) {
            return Err(self.err(
                "journal.max_restarts".into(),
                format!("{} is outside 1..=1000000", j.max_restarts),
            ));
        }
        Ok(j.clone())
    }

    /// The database URL names a supported store; listen addresses are `HOST:PORT`.
    fn daemon(&self, d: &DaemonConfig) -> Result<(), ConfigError> {
        let url = d.database_url.as_str();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            let scheme = url.split_once("://").map_or(url, |(s, _)| s);
            return Err(self.err(
                "daemon.database_url".into(),
                format!(
                    "{scheme:?} is not a supported store: use sqlite://PATH or postgres://USER@HOST/DB"
                ),
            ));
        }
        let addr = |key: &str, v: &str, empty_ok: bool| -> Result<(), ConfigError> {
            if empty_ok && v.trim().is_empty() {
                return Ok(());
            }
            v.parse::<std::net::SocketAddr>().map(|_| ()).map_err(|_| {
                self.err(
                    format!("daemon.{key}"),
                    format!("{v:?} is not HOST:PORT with a numeric host, e.g. 127.0.0.1:8080"),
                )
            })
        };
        addr("api_listen", &d.api_listen, true)?;
        addr("venue_listen", &d.venue_listen, false)
    }

    /// Resource and site names become MQTT topic levels (`vpp/<site>/<name>/...`).
    fn topic_levels(&self, raw: &[ResourceConfig]) -> Result<(), ConfigError> {
        for (i, r) in raw.iter().enumerate() {
            for (field, value) in [("name", &r.name), ("site", &r.site)] {
                if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
                    return Err(self.err(
                        format!("resources[{i}].{field}"),
                        format!(
                            "{value:?} cannot be an MQTT topic level: it must be non-empty and \
                             contain no '/', '+', '#' or NUL"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every aggregation has members and lists each resource once.
    fn members_once(&self, raw: &[AggregationConfig]) -> Result<(), ConfigError> {
        for (i, a) in raw.iter().enumerate() {
            if a.members.is_empty() {
                return Err(self.err(
                    format!("aggregations[{i}].members"),
                    format!(
                        "aggregation {:?} has no members; list at least one resource",
                        a.name
                    ),
                ));
            }
            let mut seen = HashMap::new();
            for (j, m) in a.members.iter().enumerate() {
                if let Some(first) = seen.insert(m.resource.as_str(), j) {
                    return Err(self.err(
                        format!("aggregations[{i}].members[{j}].resource"),
                        format!(
                            "resource {:?} is listed twice (also members[{first}]); list it once \
                             with its whole share_pct",
                            m.resource
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Each strategy is constructed exactly as the daemon will construct it.
    fn runnable_strategies(
        &self,
        specs: &[StrategySpec],
        markets: &[Market],
    ) -> Result<(), ConfigError> {
        let registry = vpp_actors::live::strategies::registry();
        for (i, spec) in specs.iter().enumerate() {
            let key = format!("strategies[{i}]");
            let Some(market) = markets.iter().find(|m| m.id == spec.market_id) else {
                continue;
            };
            let energy_only = matches!(
                spec.kind.as_str(),
                "battery_arbitrage" | "real_time_threshold"
            );
            if energy_only && !matches!(market.kind, MarketKind::DayAhead | MarketKind::RealTime) {
                return Err(self.err(
                    format!("{key}.market"),
                    format!(
                        "{} trades energy; market {:?} is {}: use a day_ahead or real_time market",
                        spec.kind, market.name, market.kind
                    ),
                ));
            }
            let json = serde_json::to_value(&spec.params)
                .map_err(|e| self.err(format!("{key}.params"), e.to_string()))?;
            let params = vpp_engine::strategy::StrategyParams::from_json(&json)
                .map_err(|e| self.strategy_err(&key, e))?;
            let init = vpp_engine::strategy::StrategyInit {
                strategy_id: spec.id,
                name: spec.name.clone(),
                kind: spec.kind.clone(),
                aggregation_id: spec.aggregation_id,
                market: market.clone(),
                params,
            };
            registry
                .create(&init)
                .map_err(|e| self.strategy_err(&key, e))?;
        }
        Ok(())
    }

    fn strategy_err(&self, key: &str, e: vpp_engine::strategy::StrategyError) -> ConfigError {
        use vpp_engine::strategy::StrategyError;
        match e {
            StrategyError::Param { param, reason } => {
                self.err(format!("{key}.params.{param}"), reason)
            }
            StrategyError::UnknownKind { .. } => self.err(format!("{key}.kind"), e.to_string()),
            other => self.err(format!("{key}.params"), other.to_string()),
        }
    }

    fn supervision(&self, s: &SupervisionConfig) -> Result<vpp_actors::RestartPolicy, ConfigError> {
        const MAX_WINDOW_S: u64 = 86_400;
        const MAX_BACKOFF_MS: u64 = 600_000;
        if s.max_restarts > vpp_actors::supervisor::MAX_RESTARTS_LIMIT {
            return Err(self.err(
                "supervision.max_restarts".into(),
                format!(
                    "{} is outside 0..={}",
                    s.max_restarts,
                    vpp_actors::supervisor::MAX_RESTARTS_LIMIT
                ),
            ));
        }
        if !(1..=MAX_WINDOW_S).contains(&s.within_s) {
            return Err(self.err(
                "supervision.within_s".into(),
                format!("{} is outside 1..={MAX_WINDOW_S} seconds", s.within_s),
            ));
        }
        if s.backoff_max_ms > MAX_BACKOFF_MS {
            return Err(self.err(
                "supervision.backoff_max_ms".into(),
                format!("{} is outside 0..={MAX_BACKOFF_MS} ms", s.backoff_max_ms),
            ));
        }
        if s.backoff_initial_ms > s.backoff_max_ms {
            return Err(self.err(
                "supervision.backoff_initial_ms".into(),
                format!(
                    "{} must not exceed supervision.backoff_max_ms ({})",
                    s.backoff_initial_ms, s.backoff_max_ms
                ),
            ));
        }
        let policy = vpp_actors::RestartPolicy {
            max_restarts: s.max_restarts,
            within: std::time::Duration::from_secs(s.within_s),
            backoff_initial: std::time::Duration::from_millis(s.backoff_initial_ms),
            backoff_max: std::time::Duration::from_millis(s.backoff_max_ms),
        };
        policy
            .validate()
            .map_err(|e| self.err("supervision".into(), e.to_string()))?;
        Ok(policy)
    }

    fn telemetry(&self, t: &TelemetryConfig) -> Result<TelemetrySettings, ConfigError> {
        let source = match t.source.as_str() {
            "sim" => TelemetrySource::Sim,
            "mqtt" => {
                let (host, port) = parse_broker_url(&t.broker_url)
                    .map_err(|m| self.err("telemetry.broker_url".into(), m))?;
                TelemetrySource::Mqtt { host, port }
            }
            other => {
                return Err(self.err(
                    "telemetry.source".into(),
                    format!("{other:?} is not a telemetry source; use \"sim\" or \"mqtt\""),
                ))
            }
        };
        let id = &t.client_id;
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(self.err(
                "telemetry.client_id".into(),
                format!("{id:?} must be 1..=64 printable ASCII characters without spaces"),
            ));
        }
        if let Some(site) = &t.site {
            if site.is_empty() || site.contains(['/', '+', '#', '\0']) {
                return Err(self.err(
                    "telemetry.site".into(),
                    format!("{site:?} cannot be an MQTT topic level: non-empty, no '/', '+', '#'"),
                ));
            }
        }
        if !(1..=86_400).contains(&t.max_age_s) {
            return Err(self.err(
                "telemetry.max_age_s".into(),
                format!("{} is outside 1..=86400", t.max_age_s),
            ));
        }
        Ok(TelemetrySettings {
            source,
            site: t.site.clone(),
            client_id: t.client_id.clone(),
            max_age_s: t.max_age_s,
        })
    }

    fn settlement(&self, s: &SettlementConfig) -> Result<SettlementSettings, ConfigError> {
        let price_base = match (s.price_base.as_str(), s.monthly_average_cny_per_mwh) {
            ("clearing_price", None) => PriceBase::ClearingPrice,
            ("monthly_average", Some(p)) => PriceBase::MonthlyAverage(p),
            ("clearing_price", Some(_)) => {
                return Err(self.err(
                    "settlement.monthly_average_cny_per_mwh".into(),
                    "applies only with price_base = \"monthly_average\"",
                ))
            }
            ("monthly_average", None) => {
                return Err(self.err(
                    "settlement.monthly_average_cny_per_mwh".into(),
                    "is required with price_base = \"monthly_average\"",
                ))
            }
            (other, _) => {
                return Err(self.err(
                    "settlement.price_base".into(),
                    format!("{other:?}: use \"clearing_price\" or \"monthly_average\""),
                ))
            }
        };
        let rule = PenaltyRule {
            province: s.province.clone(),
            tolerance_band_pct: s.tolerance_band_pct,
            price_base,
            over_delivery_multiplier: s.over_delivery_multiplier,
            under_delivery_multiplier: s.under_delivery_multiplier,
            exempt_kinds: s.exempt_kinds.clone(),
        };
        rule.validate().map_err(|e| {
            let field = if e.field == "price_base" {
                "monthly_average_cny_per_mwh".to_owned()
            } else {
                e.field.clone()
            };
            self.err(format!("settlement.{field}"), e.reason)
        })?;
        let as_of = chrono::NaiveDate::parse_from_str(&s.rates_as_of, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc())
            .ok_or_else(|| {
                self.err(
                    "settlement.rates_as_of".into(),
                    format!("{:?} is not a date YYYY-MM-DD", s.rates_as_of),
                )
            })?;
        let rates = RatesTable {
            cny_per_usd: s.cny_per_usd,
            cny_per_eur: s.cny_per_eur,
            as_of,
        };
        rates
            .validate()
            .map_err(|e| self.invalid("settlement".into(), &e))?;
        let mileage = s.regulation_mileage_mw_per_mw;
        if mileage < Decimal::ZERO || mileage > Decimal::ONE_HUNDRED {
            return Err(self.err(
                "settlement.regulation_mileage_mw_per_mw".into(),
                format!("{mileage} outside 0..=100 (MW of mileage per MW of capacity)"),
            ));
        }
        Ok(SettlementSettings {
            rule,
            rates,
            regulation_mileage_mw_per_mw: mileage,
            penalty_reference: s.penalty_reference,
        })
    }

    fn dispatch(
        &self,
        raw: &[AggregationConfig],
    ) -> Result<BTreeMap<AggregationId, DispatchSettings>, ConfigError> {
        let mut out = BTreeMap::new();
        for (i, a) in raw.iter().enumerate() {
            let key = format!("aggregations[{i}].dispatch");
            let d = &a.dispatch;
            let method = match (d.method.as_str(), d.k) {
                ("pro_rata", None) => DispatchMethod::ProRata,
                ("merit_order", None) => DispatchMethod::MeritOrder,
                ("soc_weighted", k) => DispatchMethod::SocWeighted {
                    k: k.unwrap_or(1.0),
                },
                ("pro_rata" | "merit_order", Some(_)) => {
                    return Err(self.err(
                        format!("{key}.k"),
                        "applies only to method = \"soc_weighted\"",
                    ))
                }
                (other, _) => {
                    return Err(self.err(
                        format!("{key}.method"),
                        format!("{other:?}: use \"pro_rata\", \"merit_order\" or \"soc_weighted\""),
                    ))
                }
            };
            method
                .validate()
                .map_err(|e| self.invalid(key.clone(), &e))?;
            let tracker = TrackerConfig {
                band: DeviationBand {
                    band_kw: d.band_kw,
                    band_pct: d.band_pct,
                },
                consecutive_samples: d.consecutive_samples,
            };
            tracker
                .validate()
                .map_err(|e| self.invalid(key.clone(), &e))?;
            out.insert(
                AggregationId(i as u64 + 1),
                DispatchSettings { method, tracker },
            );
        }
        Ok(out)
    }

    fn unique(
        &self,
        key: &str,
        name: &str,
        seen: &HashMap<String, impl Sized>,
    ) -> Result<(), ConfigError> {
        if seen.contains_key(name) {
            return Err(self.err(
                format!("{key}.name"),
                format!("{name:?} is used twice; names must be unique"),
            ));
        }
        Ok(())
    }

    fn templates(&mut self, raw: &[TemplateConfig]) -> Result<TemplateRegistry, ConfigError> {
        let mut registry = TemplateRegistry::new();
        let now = Utc::now();
        for (i, t) in raw.iter().enumerate() {
            let key = format!("templates[{i}]");
            self.unique(&key, &t.name, &self.template_ids)?;
            let draft = TemplateDraft {
                name: t.name.clone(),
                kind: t.kind.clone(),
                params: t.params.clone(),
            };
            if let Err(e) = draft.validate() {
                let section = if e.field == "name" {
                    key
                } else {
                    format!("{key}.params")
                };
                return Err(self.invalid(section, &e));
            }
            let id = TemplateId(i as u64 + 1);
            registry
                .create(id, draft, now)
                .map_err(|e| self.err(key, e.to_string()))?;
            self.template_ids.insert(t.name.clone(), id);
        }
        Ok(registry)
    }

    fn resources(
        &mut self,
        raw: &[ResourceConfig],
        templates: &TemplateRegistry,
    ) -> Result<Vec<Resource>, ConfigError> {
        let mut resources = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let key = format!("resources[{i}]");
            self.unique(&key, &r.name, &self.resource_ids)?;
            let template_id = *self.template_ids.get(&r.template).ok_or_else(|| {
                self.err(
                    format!("{key}.template"),
                    format!(
                        "unknown template {:?}; known templates: {}",
                        r.template,
                        known(&self.template_ids)
                    ),
                )
            })?;
            let version = templates
                .latest(template_id)
                .map_err(|e| self.err(format!("{key}.template"), e.to_string()))?;
            let state =
                LifecycleState::parse(&r.state).map_err(|e| self.invalid(key.clone(), &e))?;
            let location =
                GeoLocation::new(r.lat, r.lon).map_err(|e| self.invalid(key.clone(), &e))?;
            if r.count == 0 || r.count > MAX_RESOURCE_COUNT {
                return Err(self.err(
                    format!("{key}.count"),
                    format!("{} is outside 1..={MAX_RESOURCE_COUNT}", r.count),
                ));
            }
            let mut ids = Vec::new();
            for n in 1..=r.count {
                let name = if r.count == 1 {
                    r.name.clone()
                } else {
                    format!("{}-{n:02}", r.name)
                };
                let id = ResourceId(resources.len() as u64 + 1);
                let mut resource = Resource::new(id, name, version, r.site.clone(), location)
                    .map_err(|e| self.invalid(key.clone(), &e))?;
                resource.state = state;
                if r.count > 1 {
                    self.resource_ids.insert(resource.name.clone(), vec![id]);
                }
                ids.push(id);
                resources.push(resource);
            }
            self.resource_ids.insert(r.name.clone(), ids);
        }
        Ok(resources)
    }

    fn aggregations(
        &mut self,
        raw: &[AggregationConfig],
        resources: &[Resource],
        templates: &TemplateRegistry,
    ) -> Result<AggregationBook, ConfigError> {
        let mut book = AggregationBook::new();
        for resource in resources {
            let params = &templates
                .version(resource.template_id, resource.template_version)
                .map_err(|e| self.err("resources".into(), e.to_string()))?
                .params;
            book.upsert_resource(resource.id, ResourceFeed::from_resource(resource, params))
                .map_err(|e| self.err("resources".into(), e.to_string()))?;
        }
        for (i, a) in raw.iter().enumerate() {
            let key = format!("aggregations[{i}]");
            self.unique(&key, &a.name, &self.aggregation_ids)?;
            let id = AggregationId(i as u64 + 1);
            book.add_aggregation(id, a.name.clone())
                .map_err(|e| self.err(format!("{key}.name"), e.to_string()))?;
            for (j, m) in a.members.iter().enumerate() {
                let member_key = format!("{key}.members[{j}]");
                let ids = self.resource_ids.get(&m.resource).ok_or_else(|| {
                    self.err(
                        format!("{member_key}.resource"),
                        format!(
                            "unknown resource {:?}; define it under [[resources]]",
                            m.resource
                        ),
                    )
                })?;
                for rid in ids {
                    book.set_member(id, *rid, m.share_pct)
                        .map_err(|e| self.err(format!("{member_key}.share_pct"), e.to_string()))?;
                }
            }
            self.aggregation_ids.insert(a.name.clone(), id);
        }
        Ok(book)
    }

    fn markets(&mut self, raw: &[MarketConfig]) -> Result<Vec<Market>, ConfigError> {
        let mut markets = Vec::new();
        for (i, m) in raw.iter().enumerate() {
            let key = format!("markets[{i}]");
            self.unique(&key, &m.name, &self.market_ids)?;
            let kind = MarketKind::parse(&m.kind)
                .map_err(|e| self.err(format!("{key}.kind"), e.reason))?;
            let timezone: chrono_tz::Tz = m.timezone.parse().map_err(|_| {
                self.err(
                    format!("{key}.timezone"),
                    format!(
                        "{:?} is not an IANA time zone such as \"Asia/Shanghai\"",
                        m.timezone
                    ),
                )
            })?;
            let market = Market {
                id: MarketId(i as u64 + 1),
                name: m.name.clone(),
                kind,
                timezone,
                price_cap_cny_per_mwh: m.price_cap_cny_per_mwh,
                price_floor_cny_per_mwh: m.price_floor_cny_per_mwh,
                negative_prices_allowed: m.negative_prices_allowed,
                gate_closure_minutes_before: m.gate_closure_minutes_before,
            };
            market
                .validate()
                .map_err(|e| self.invalid(key.clone(), &e))?;
            self.market_ids.insert(m.name.clone(), market.id);
            markets.push(market);
        }
        Ok(markets)
    }

    fn strategies(&mut self, raw: &[StrategyConfig]) -> Result<Vec<StrategySpec>, ConfigError> {
        let mut seen: HashMap<String, ()> = HashMap::new();
        let mut specs = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let key = format!("strategies[{i}]");
            self.unique(&key, &s.name, &seen)?;
            let aggregation_id = *self.aggregation_ids.get(&s.aggregation).ok_or_else(|| {
                self.err(
                    format!("{key}.aggregation"),
                    format!(
                        "unknown aggregation {:?}; known: {}",
                        s.aggregation,
                        known(&self.aggregation_ids)
                    ),
                )
            })?;
            let market_id = *self.market_ids.get(&s.market).ok_or_else(|| {
                self.err(
                    format!("{key}.market"),
                    format!(
                        "unknown market {:?}; known: {}",
                        s.market,
                        known(&self.market_ids)
                    ),
                )
            })?;
            seen.insert(s.name.clone(), ());
            specs.push(StrategySpec {
                id: StrategyId(i as u64 + 1),
                name: s.name.clone(),
                kind: s.kind.clone(),
                aggregation_id,
                market_id,
                enabled: s.enabled,
                shadow: s.shadow,
                params: s.params.clone(),
            });
        }
        Ok(specs)
    }
}

/// The risk engine of a `[risk]` section over `markets`: what `vpp run` builds and what
/// [`Park::parse`] checks, so a config one accepts the other runs.
pub fn risk_engine(
    source: &str,
    risk: &toml::Table,
    markets: &[Market],
) -> Result<vpp_risk::RiskEngine, ConfigError> {
    let err = |key: String, message: String| ConfigError {
        file: source.to_owned(),
        key,
        message,
    };
    let cfg: vpp_risk::RiskConfig = toml::Value::Table(risk.clone())
        .try_into()
        .map_err(|e: toml::de::Error| err("risk".into(), e.to_string().trim_end().to_owned()))?;
    let mut engine = vpp_risk::RiskEngine::new(cfg)
        .map_err(|e| err(format!("risk.{}", e.field), e.reason.clone()))?;
    for m in markets {
        engine
            .register_market(m.clone())
            .map_err(|e| err("risk.markets".into(), e.to_string()))?;
    }
    Ok(engine)
}

/// `mqtt://HOST:PORT`, `tcp://HOST:PORT` or `HOST:PORT` (port 1883 when absent).
fn parse_broker_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url);
    if rest.contains("://") || rest.contains('/') {
        return Err(format!(
            "{url:?}: expected mqtt://HOST:PORT (TLS and paths are not supported)"
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{url:?}: port {p:?} is not 1..=65535"))?,
        ),
        None => (rest, 1883),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{url:?}: expected mqtt://HOST:PORT with a host"));
    }
    Ok((host.to_owned(), port))
}

fn known<V>(names: &HashMap<String, V>) -> String {
    let sorted: BTreeMap<&String, ()> = names.keys().map(|k| (k, ())).collect();
    if sorted.is_empty() {
        return "(none)".to_owned();
    }
    sorted
        .keys()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Park, ConfigError> {
        Park::parse("test.toml", text)
    }

    const PV: &str = r#"
[[templates]]
name = "pv"
kind = "pv"
params = { rated_power_kw = 100, min_power_kw = 0, max_power_kw = 100, ramp_kw_per_s = 10, marginal_cost_cny_per_mwh = 0, response_time_s = 1, control_interface = "simulated" }

[[resources]]
name = "pv-a"
template = "pv"
site = "north"
lat = 25.0
lon = 102.7
"#;

    #[test]
    fn demo_config_loads_with_about_twenty_resources_in_two_aggregations() {
        let park = Park::demo().unwrap();
        assert!(
            (15..=30).contains(&park.resources.len()),
            "{} resources",
            park.resources.len()
        );
        assert_eq!(park.aggregations.aggregations().count(), 2);
        let kinds: Vec<String> = park
            .resources
            .iter()
            .map(|r| {
                park.templates
                    .latest(r.template_id)
                    .unwrap()
                    .kind
                    .to_string()
            })
            .collect();
        for kind in ["pv", "storage", "flexible_load", "ev_charger"] {
            assert!(kinds.iter().any(|k| k == kind), "demo lacks {kind}");
        }
        assert!(!park.markets.is_empty());
    }

    #[test]
    fn shipped_demo_file_is_the_built_in_one() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
        let park = Park::load(&path).unwrap();
        assert_eq!(park.resources.len(), Park::demo().unwrap().resources.len());
    }

    #[test]
    fn syntax_error_names_the_file_and_line() {
        let err = parse("[daemon\n").unwrap_err();
        assert_eq!(err.file, "test.toml");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn daemon_speed_and_shutdown_policy_have_defaults_and_bounds() {
        let park = parse("").unwrap();
        assert_eq!(park.daemon.speed, 1);
        assert!(park.daemon.cancel_on_shutdown);
        let park = parse("[daemon]\nspeed = 60\ncancel_on_shutdown = false\n").unwrap();
        assert_eq!(
            (park.daemon.speed, park.daemon.cancel_on_shutdown),
            (60, false)
        );
        let park = parse("[journal]\ndurability = \"before_send\"\nmax_lag_ms = 500\n").unwrap();
        assert_eq!(park.journal.durability, Durability::BeforeSend);
        assert_eq!(park.journal.max_lag_ms, 500);
        assert_eq!(
            park.journal.group_commit_ms, 10,
            "default group commit bound"
        );
        let err = parse("[journal]\ndurability = \"fsync\"\n").unwrap_err();
        assert!(err.to_string().contains("before_send"), "{err}");
        let err = parse("[journal]\nmax_lag_ms = 5\n").unwrap_err();
        assert_eq!(err.key, "journal.max_lag_ms", "{err}");
        let err = parse("[daemon]\nspeed = 0\n").unwrap_err();
        assert_eq!(err.key, "daemon.speed");
        assert!(err.message.contains("1..=100000"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = parse("[daemon]\ndatabse_url = \"x\"\n").unwrap_err();
        assert!(err.message.contains("databse_url"), "{err}");
    }

    #[test]
    fn bad_template_param_names_key_path_and_limit() {
        let text = PV.replace(
            "min_power_kw = 0, max_power_kw = 100",
            "min_power_kw = 50, max_power_kw = 40",
        );
        let err = parse(&text).unwrap_err();
        assert!(err.key.starts_with("templates[0].params."), "{err}");
        assert!(
            err.message.contains("40") && err.message.contains("50"),
            "{err}"
        );
    }

    #[test]
    fn unknown_template_lists_the_known_ones() {
        let text = PV.replace("template = \"pv\"", "template = \"wind\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key, "resources[0].template");
        assert!(err.message.contains("\"pv\""), "{err}");
    }

    #[test]
    fn over_committed_resource_names_the_clashing_aggregation() {
        let text = format!(
            "{PV}\n[[aggregations]]\nname = \"a1\"\nmembers = [{{ resource = \"pv-a\", share_pct = 60 }}]\n\
             [[aggregations]]\nname = \"a2\"\nmembers = [{{ resource = \"pv-a\", share_pct = 41 }}]\n"
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key, "aggregations[1].members[0].share_pct");
        assert!(err.message.contains("a1"), "{err}");
        let ok = text.replace("share_pct = 41", "share_pct = 40");
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn market_errors_name_the_field() {
        let base = "[[markets]]\nname = \"m\"\nkind = \"day_ahead\"\nprice_cap_cny_per_mwh = 1500\nprice_floor_cny_per_mwh = 0\n";
        assert!(parse(base).is_ok());
        let err = parse(&base.replace("day_ahead", "intraday")).unwrap_err();
        assert_eq!(err.key, "markets[0].kind");
        let err = parse(&base.replace("= 0\n", "= -10\n")).unwrap_err();
        assert_eq!(err.key, "markets[0].price_floor_cny_per_mwh");
        let err = parse(&format!("{base}timezone = \"Mars/Olympus\"\n")).unwrap_err();
        assert_eq!(err.key, "markets[0].timezone");
    }

    #[test]
    fn strategy_must_name_a_known_aggregation_and_market() {
        let text = format!(
            "{PV}\n[[aggregations]]\nname = \"a1\"\nmembers = [{{ resource = \"pv-a\" }}]\n\
             [[markets]]\nname = \"m\"\nkind = \"day_ahead\"\nprice_cap_cny_per_mwh = 1500\nprice_floor_cny_per_mwh = 0\n\
             [[strategies]]\nname = \"s\"\nkind = \"battery_arbitrage\"\naggregation = \"a1\"\nmarket = \"m\"\n"
        );
        assert_eq!(parse(&text).unwrap().strategies.len(), 1);
        let err = parse(&text.replace("market = \"m\"", "market = \"x\"")).unwrap_err();
        assert_eq!(err.key, "strategies[0].market");
    }

    #[test]
    fn supervision_defaults_overrides_and_errors_name_the_key() {
        let park = parse("").unwrap();
        assert_eq!(park.supervision, vpp_actors::RestartPolicy::default());
        let park = parse(
            "[supervision]\nmax_restarts = 3\nwithin_s = 10\nbackoff_initial_ms = 20\nbackoff_max_ms = 400\n",
        )
        .unwrap();
        assert_eq!(park.supervision.max_restarts, 3);
        assert_eq!(park.supervision.within, std::time::Duration::from_secs(10));
        assert_eq!(
            park.supervision.backoff_initial,
            std::time::Duration::from_millis(20)
        );
        assert_eq!(
            park.supervision.backoff_max,
            std::time::Duration::from_millis(400)
        );
        for (text, key) in [
            ("within_s = 0", "supervision.within_s"),
            ("max_restarts = 100000", "supervision.max_restarts"),
            (
                "backoff_initial_ms = 900\nbackoff_max_ms = 100",
                "supervision.backoff_initial_ms",
            ),
            ("backoff_max_ms = 9999999", "supervision.backoff_max_ms"),
            ("restarts = 3", "max_restarts"),
        ] {
            let err = parse(&format!("[supervision]\n{text}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn telemetry_defaults_to_the_simulated_park_and_mqtt_errors_name_the_key() {
        let park = parse("").unwrap();
        assert_eq!(park.telemetry.source, TelemetrySource::Sim);
        assert_eq!(park.telemetry.max_age_s, 60);
        let park = parse(
            "[telemetry]\nsource = \"mqtt\"\nbroker_url = \"mqtt://broker.local:1884\"\n\
             site = \"plant\"\nclient_id = \"vpp-7\"\nmax_age_s = 120\n",
        )
        .unwrap();
        assert_eq!(
            park.telemetry.source,
            TelemetrySource::Mqtt {
                host: "broker.local".into(),
                port: 1884
            }
        );
        assert_eq!(park.telemetry.site.as_deref(), Some("plant"));
        assert_eq!(
            (park.telemetry.client_id.as_str(), park.telemetry.max_age_s),
            ("vpp-7", 120)
        );
        let bare = parse("[telemetry]\nsource = \"mqtt\"\nbroker_url = \"10.0.0.1\"\n").unwrap();
        assert_eq!(
            bare.telemetry.source,
            TelemetrySource::Mqtt {
                host: "10.0.0.1".into(),
                port: 1883
            }
        );
        for (text, key) in [
            ("source = \"kafka\"", "telemetry.source"),
            (
                "source = \"mqtt\"\nbroker_url = \"mqtts://h:8883\"",
                "telemetry.broker_url",
            ),
            (
                "source = \"mqtt\"\nbroker_url = \"h:99999\"",
                "telemetry.broker_url",
            ),
            ("client_id = \"\"", "telemetry.client_id"),
            ("site = \"a/b\"", "telemetry.site"),
            ("max_age_s = 0", "telemetry.max_age_s"),
        ] {
            let err = parse(&format!("[telemetry]\n{text}\n")).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
    }

    #[test]
    fn settlement_rule_and_rates_have_defaults_and_errors_name_the_key() {
        let park = parse("").unwrap();
        assert_eq!(park.settlement.rule.tolerance_band_pct, Decimal::from(3));
        assert_eq!(park.settlement.rule.price_base, PriceBase::ClearingPrice);
        let park = parse(
            "[settlement]\nprovince = \"guangdong\"\ntolerance_band_pct = 2\n\
             price_base = \"monthly_average\"\nmonthly_average_cny_per_mwh = 410\n\
             exempt_kinds = [\"pv\", \"wind\"]\ncny_per_usd = 7.1\n",
        )
        .unwrap();
        let rule = &park.settlement.rule;
        assert_eq!(rule.province, "guangdong");
        assert_eq!(
            rule.price_base,
            PriceBase::MonthlyAverage(Decimal::from(410))
        );
        assert_eq!(rule.exempt_kinds.len(), 2);
        assert_eq!(park.settlement.rates.cny_per_usd, Decimal::new(71, 1));
        assert_eq!(park.settlement.regulation_mileage_mw_per_mw, Decimal::ZERO);
        let park = parse("[settlement]\nregulation_mileage_mw_per_mw = 0.5\n").unwrap();
        assert_eq!(
            park.settlement.regulation_mileage_mw_per_mw,
            Decimal::new(5, 1)
        );
        for (text, key) in [
            ("tolerance_band_pct = 101", "settlement.tolerance_band_pct"),
            (
                "under_delivery_multiplier = -1",
                "settlement.under_delivery_multiplier",
            ),
            ("price_base = \"spot\"", "settlement.price_base"),
            (
                "price_base = \"monthly_average\"",
                "settlement.monthly_average_cny_per_mwh",
            ),
            ("cny_per_eur = 0", "settlement.cny_per_eur"),
            ("rates_as_of = \"yesterday\"", "settlement.rates_as_of"),
            (
                "regulation_mileage_mw_per_mw = -0.5",
                "settlement.regulation_mileage_mw_per_mw",
            ),
        ] {
            let err = parse(&format!("[settlement]\n{text}\n")).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
    }

    #[test]
    fn dispatch_method_is_chosen_per_aggregation() {
        let text = format!(
            "{PV}\n[[aggregations]]\nname = \"a1\"\nmembers = [{{ resource = \"pv-a\", share_pct = 30 }}]\n\
             [[aggregations]]\nname = \"a2\"\nmembers = [{{ resource = \"pv-a\", share_pct = 30 }}]\ndispatch = {{ method = \"soc_weighted\", k = 2.5, consecutive_samples = 4 }}\n\
             [[aggregations]]\nname = \"a3\"\nmembers = [{{ resource = \"pv-a\", share_pct = 30 }}]\ndispatch = {{ method = \"merit_order\", band_kw = 25 }}\n"
        );
        let park = parse(&text).unwrap();
        let d = |i: u64| park.dispatch[&AggregationId(i)];
        assert_eq!(d(1).method, DispatchMethod::ProRata);
        assert_eq!(d(2).method, DispatchMethod::SocWeighted { k: 2.5 });
        assert_eq!(d(2).tracker.consecutive_samples, 4);
        assert_eq!(d(3).method, DispatchMethod::MeritOrder);
        assert_eq!(d(3).tracker.band.band_kw, Decimal::from(25));
        for (bad, key) in [
            ("method = \"random\"", "aggregations[1].dispatch.method"),
            (
                "method = \"soc_weighted\", k = 17.0",
                "aggregations[1].dispatch.k",
            ),
            (
                "method = \"pro_rata\", k = 1.0",
                "aggregations[1].dispatch.k",
            ),
            (
                "consecutive_samples = 0",
                "aggregations[1].dispatch.consecutive_samples",
            ),
            ("band_pct = 120", "aggregations[1].dispatch.band_pct"),
        ] {
            let t = text.replace(
                "method = \"soc_weighted\", k = 2.5, consecutive_samples = 4",
                bad,
            );
            let err = parse(&t).unwrap_err();
            assert_eq!(err.key, key, "{bad}: {err}");
        }
    }

    #[test]
    fn count_expands_resources_and_group_membership() {
        let text = PV.replace("lon = 102.7", "lon = 102.7\ncount = 3")
            + "\n[[aggregations]]\nname = \"a\"\nmembers = [{ resource = \"pv-a\" }]\n";
        let park = parse(&text).unwrap();
        assert_eq!(park.resources.len(), 3);
        assert_eq!(park.resources[2].name, "pv-a-03");
        let agg = park.aggregations.aggregations().next().unwrap();
        assert_eq!(agg.members.len(), 3);
    }
}
