//! Risk limits and the risk section of the daemon's configuration.
//!
//! Owns: [`RiskLimits`] (one struct for both aggregation and strategy scope), [`RiskConfig`]
//! (defaults, per-id overrides, venues, markets, deviation policy, sizing), their validation,
//! and the audit record of a run-time limit change ([`LimitChange`]).
//!
//! Invariants: every config the engine accepts has passed [`RiskConfig::validate`]; a limit
//! update that fails validation changes nothing. Every field has a default, so the daemon's
//! TOML only states what differs.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vpp_engine::ids::{AggregationId, MarketId, StrategyId};
use vpp_engine::Timestamp;

/// A configuration value the risk engine cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid risk config {field}: {reason}")]
pub struct RiskConfigError {
    pub field: String,
    pub reason: String,
}

impl RiskConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Limits of one aggregation or one strategy. The throttle fields (`orders_per_second`,
/// `order_burst`) apply at strategy scope only; the others apply at both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskLimits {
    /// Largest quantity of a single order.
    pub max_order_mw: Decimal,
    /// Largest worst-case net position (filled plus open same-side orders) per market,
    /// delivery interval and product.
    pub max_net_position_mw: Decimal,
    /// Most orders open at once.
    pub max_open_orders: u32,
    /// Gross notional approved per trading day: Σ quantity × |price| × 0.25 h. Cancels do not
    /// give notional back, so cancel/replace loops cannot bypass it.
    pub daily_notional_cny: Decimal,
    /// Token bucket refill rate (strategy scope).
    pub orders_per_second: u32,
    /// Token bucket size (strategy scope).
    pub order_burst: u32,
}

impl Default for RiskLimits {
    fn default() -> Self {
        Self {
            max_order_mw: Decimal::from(50),
            max_net_position_mw: Decimal::from(100),
            max_open_orders: 500,
            daily_notional_cny: Decimal::from(10_000_000),
            orders_per_second: 20,
            order_burst: 50,
        }
    }
}

impl RiskLimits {
    /// A limit of zero means none allowed (a zero `max_order_mw`, `orders_per_second` or
    /// `order_burst` refuses every order); a negative limit is refused, as is
    /// `order_burst` below `orders_per_second` when both are set (the bucket could never hold
    /// one second's orders).
    pub fn validate(&self, prefix: &str) -> Result<(), RiskConfigError> {
        let amounts = [
            ("max_order_mw", self.max_order_mw),
            ("max_net_position_mw", self.max_net_position_mw),
            ("daily_notional_cny", self.daily_notional_cny),
        ];
        for (field, value) in amounts {
            if value.is_sign_negative() && !value.is_zero() {
                return Err(RiskConfigError::new(
                    format!("{prefix}.{field}"),
                    format!("{value} is negative; use 0 to allow none"),
                ));
            }
        }
        if self.order_burst > 0 && self.order_burst < self.orders_per_second {
            return Err(RiskConfigError::new(
                format!("{prefix}.order_burst"),
                format!(
                    "{} is below orders_per_second {}: the bucket could never hold one second's orders",
                    self.order_burst, self.orders_per_second
                ),
            ));
        }
        Ok(())
    }

    /// Whether the throttle allows any order at all (zero rate or burst: none).
    pub fn throttle_allows_any(&self) -> bool {
        self.orders_per_second > 0 && self.order_burst > 0
    }
}

/// A venue's own order-rate window, e.g. 100 orders per 10 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VenueLimit {
    pub name: String,
    pub max_orders: u32,
    pub window_ms: u64,
}

/// Smallest order quantity of a market without its own `min_quantity_mw` (1 kW).
pub const DEFAULT_MIN_QUANTITY_MW: Decimal = Decimal::from_parts(1, 0, 0, false, 3);
/// Decimal places of a quantity in a market without its own `quantity_decimals` (kW steps).
pub const DEFAULT_QUANTITY_DECIMALS: u32 = 3;
/// How far ahead an order's delivery interval may start in a market without its own
/// `horizon_hours`: 48 h covers the next trading day of a day-ahead market.
pub const DEFAULT_HORIZON_HOURS: u32 = 48;

/// Risk settings of one market.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketRisk {
    pub market_id: MarketId,
    /// Name of a [`VenueLimit`]; `None` means no venue window for this market.
    #[serde(default)]
    pub venue: Option<String>,
    /// Collar half-width in CNY/MWh around the reference price.
    #[serde(default)]
    pub collar_band_cny_per_mwh: Option<Decimal>,
    /// Collar half-width as a fraction of |reference|; the wider of the two bands applies.
    #[serde(default)]
    pub collar_band_fraction: Option<Decimal>,
    /// Smallest order quantity (default [`DEFAULT_MIN_QUANTITY_MW`], 0.001 MW).
    #[serde(default)]
    pub min_quantity_mw: Option<Decimal>,
    /// Most decimal places of a quantity (default [`DEFAULT_QUANTITY_DECIMALS`], 3).
    #[serde(default)]
    pub quantity_decimals: Option<u32>,
    /// Latest start of a delivery interval, in hours from now (default
    /// [`DEFAULT_HORIZON_HOURS`], 48).
    #[serde(default)]
    pub horizon_hours: Option<u32>,
}

impl MarketRisk {
    pub fn new(market_id: MarketId) -> Self {
        Self {
            market_id,
            venue: None,
            collar_band_cny_per_mwh: None,
            collar_band_fraction: None,
            min_quantity_mw: None,
            quantity_decimals: None,
            horizon_hours: None,
        }
    }
}

/// Deviation monitor thresholds, as fractions of the reference energy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviationPolicy {
    pub warning_fraction: Decimal,
    pub critical_fraction: Decimal,
    /// Below this reference energy the deviation is taken against this floor, so a near-zero
    /// award does not turn a few kWh into an infinite fraction.
    pub reference_floor_kwh: Decimal,
    /// A critical breach engages the responsible strategy's kill switch (or the
    /// aggregation's, when no strategy is named). Off by default: alerts are journaled and
    /// counted either way, and a park that cannot follow its award (the demo's simulated one
    /// misses by 30-80 % within minutes) would otherwise stop trading at the first breach.
    pub critical_engages_kill_switch: bool,
}

impl Default for DeviationPolicy {
    fn default() -> Self {
        Self {
            warning_fraction: Decimal::new(5, 2),
            critical_fraction: Decimal::new(15, 2),
            reference_floor_kwh: Decimal::ONE,
            critical_engages_kill_switch: false,
        }
    }
}

/// Pre-sized capacities. Maps never grow past these: an intent that would need a new entry
/// beyond them is refused with `tracking_limit`, so memory stays bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sizing {
    pub max_open_orders: usize,
    pub max_position_keys: usize,
    /// Terminal client order ids remembered for duplicate detection (oldest forgotten first;
    /// the order ledger still refuses a reuse of a forgotten one).
    pub remembered_client_order_ids: usize,
    pub max_aggregations: usize,
    pub max_strategies: usize,
    /// Intervals ahead of the current one covered by a storage schedule (192 = 48 h).
    pub storage_horizon_intervals: usize,
    pub kill_switch_history: usize,
}

impl Default for Sizing {
    fn default() -> Self {
        Self {
            max_open_orders: 10_000,
            max_position_keys: 20_000,
            remembered_client_order_ids: 100_000,
            max_aggregations: 256,
            max_strategies: 256,
            storage_horizon_intervals: 192,
            kill_switch_history: 1_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationLimits {
    pub id: AggregationId,
    pub limits: RiskLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyLimits {
    pub id: StrategyId,
    pub limits: RiskLimits,
}

/// The `[risk]` section of the daemon's TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    pub aggregation_defaults: RiskLimits,
    pub strategy_defaults: RiskLimits,
    pub aggregations: Vec<AggregationLimits>,
    pub strategies: Vec<StrategyLimits>,
    pub venues: Vec<VenueLimit>,
    pub markets: Vec<MarketRisk>,
    pub deviation: DeviationPolicy,
    /// Time zone whose midnight resets the daily notional.
    pub trading_day_timezone: chrono_tz::Tz,
    pub sizing: Sizing,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            aggregation_defaults: RiskLimits::default(),
            strategy_defaults: RiskLimits::default(),
            aggregations: Vec::new(),
            strategies: Vec::new(),
            venues: Vec::new(),
            markets: Vec::new(),
            deviation: DeviationPolicy::default(),
            trading_day_timezone: chrono_tz::Asia::Shanghai,
            sizing: Sizing::default(),
        }
    }
}

impl RiskConfig {
    pub fn validate(&self) -> Result<(), RiskConfigError> {
        self.aggregation_defaults
            .validate("risk.aggregation_defaults")?;
        self.strategy_defaults.validate("risk.strategy_defaults")?;
        for a in &self.aggregations {
            a.limits
                .validate(&format!("risk.aggregations[id={}].limits", a.id))?;
        }
        for s in &self.strategies {
            s.limits
                .validate(&format!("risk.strategies[id={}].limits", s.id))?;
        }
        self.validate_venues()?;
        self.validate_deviation()?;
        if self.sizing.storage_horizon_intervals == 0 {
            return Err(RiskConfigError::new(
                "risk.sizing.storage_horizon_intervals",
                "must be at least 1 (192 covers 48 h)",
            ));
        }
        Ok(())
    }

    fn validate_venues(&self) -> Result<(), RiskConfigError> {
        for v in &self.venues {
            if v.max_orders == 0 || v.window_ms == 0 {
                return Err(RiskConfigError::new(
                    format!("risk.venues[name={}]", v.name),
                    "max_orders and window_ms must both be greater than 0",
                ));
            }
        }
        for m in &self.markets {
            if let Some(venue) = &m.venue {
                if !self.venues.iter().any(|v| &v.name == venue) {
                    return Err(RiskConfigError::new(
                        format!("risk.markets[market_id={}].venue", m.market_id),
                        format!("{venue:?} is not one of the configured risk.venues names"),
                    ));
                }
            }
            let key = format!("risk.markets[market_id={}]", m.market_id);
            if m.min_quantity_mw.is_some_and(|q| q <= Decimal::ZERO) {
                return Err(RiskConfigError::new(
                    format!("{key}.min_quantity_mw"),
                    "must be greater than 0",
                ));
            }
            if m.quantity_decimals.is_some_and(|d| d > 6) {
                return Err(RiskConfigError::new(
                    format!("{key}.quantity_decimals"),
                    "at most 6 (1 W steps)",
                ));
            }
            if m.horizon_hours == Some(0) {
                return Err(RiskConfigError::new(
                    format!("{key}.horizon_hours"),
                    "must be at least 1",
                ));
            }
            let negative = [m.collar_band_cny_per_mwh, m.collar_band_fraction]
                .into_iter()
                .flatten()
                .any(|b| b < Decimal::ZERO);
            if negative {
                return Err(RiskConfigError::new(
                    format!("risk.markets[market_id={}]", m.market_id),
                    "collar bands must not be negative",
                ));
            }
        }
        Ok(())
    }

    fn validate_deviation(&self) -> Result<(), RiskConfigError> {
        let d = &self.deviation;
        if d.warning_fraction <= Decimal::ZERO || d.critical_fraction < d.warning_fraction {
            return Err(RiskConfigError::new(
                "risk.deviation",
                format!(
                    "need 0 < warning_fraction ({}) <= critical_fraction ({})",
                    d.warning_fraction, d.critical_fraction
                ),
            ));
        }
        if d.reference_floor_kwh <= Decimal::ZERO {
            return Err(RiskConfigError::new(
                "risk.deviation.reference_floor_kwh",
                format!("{} must be greater than 0", d.reference_floor_kwh),
            ));
        }
        Ok(())
    }
}

/// Which limits a run-time update replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "level", content = "id")]
pub enum LimitScope {
    AggregationDefaults,
    StrategyDefaults,
    Aggregation(AggregationId),
    Strategy(StrategyId),
}

/// Audit record of a run-time limit change: who changed what from what to what, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitChange {
    pub scope: LimitScope,
    pub old: RiskLimits,
    pub new: RiskLimits,
    pub who: String,
    pub at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn toml_fills_defaults_and_reads_overrides() {
        let text = r#"
            trading_day_timezone = "Asia/Shanghai"
            [strategy_defaults]
            max_order_mw = "5"
            orders_per_second = 2
            [[aggregations]]
            id = 7
            [aggregations.limits]
            max_open_orders = 3
            [[venues]]
            name = "kunming"
            max_orders = 100
            window_ms = 10000
            [[markets]]
            market_id = 1
            venue = "kunming"
            collar_band_cny_per_mwh = "150"
        "#;
        let cfg: RiskConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.strategy_defaults.max_order_mw, dec!(5));
        assert_eq!(cfg.strategy_defaults.order_burst, 50);
        assert_eq!(cfg.aggregations[0].limits.max_open_orders, 3);
        assert_eq!(cfg.aggregations[0].limits.max_order_mw, dec!(50));
        assert_eq!(cfg.markets[0].collar_band_cny_per_mwh, Some(dec!(150)));
        assert!(toml::from_str::<RiskConfig>("max_order_mw = \"1\"").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut cfg = RiskConfig::default();
        cfg.strategies.push(StrategyLimits {
            id: StrategyId(3),
            limits: RiskLimits {
                max_order_mw: dec!(-1),
                ..RiskLimits::default()
            },
        });
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.field, "risk.strategies[id=3].limits.max_order_mw");
        // Zero is a limit (none allowed), not an error.
        cfg.strategies[0].limits.max_order_mw = dec!(0);
        cfg.validate().unwrap();
        cfg.strategies[0].limits.order_burst = 5;
        cfg.strategies[0].limits.orders_per_second = 10;
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.field, "risk.strategies[id=3].limits.order_burst");

        let mut cfg = RiskConfig::default();
        cfg.markets.push(MarketRisk {
            min_quantity_mw: Some(dec!(0)),
            ..MarketRisk::new(MarketId(1))
        });
        assert_eq!(
            cfg.validate().unwrap_err().field,
            "risk.markets[market_id=1].min_quantity_mw"
        );

        let mut cfg = RiskConfig::default();
        cfg.markets.push(MarketRisk {
            venue: Some("nowhere".into()),
            ..MarketRisk::new(MarketId(1))
        });
        assert!(cfg.validate().unwrap_err().reason.contains("nowhere"));

        let mut cfg = RiskConfig::default();
        cfg.deviation.critical_fraction = dec!(0.01);
        assert_eq!(cfg.validate().unwrap_err().field, "risk.deviation");
    }
}
