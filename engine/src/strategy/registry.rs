//! [`StrategyRegistry`]: strategy kinds by name, so config can instantiate a Rust strategy by
//! its kind with parameters. Kinds are registered once; a duplicate is refused.

use super::{
    BatteryArbitrage, DemandResponseResponder, RealTimeThreshold, RegulationOffer, RuleStrategy,
    Strategy, StrategyError, StrategyParams,
};
use crate::ids::{AggregationId, StrategyId};
use crate::market::Market;
use std::collections::BTreeMap;

/// Most kinds a registry holds.
pub const MAX_KINDS: usize = 256;

/// What a constructor gets: who the instance is, the market it trades and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyInit {
    pub strategy_id: StrategyId,
    /// The instance name from config, e.g. `north-battery-arbitrage`.
    pub name: String,
    pub kind: String,
    pub aggregation_id: AggregationId,
    /// The market the instance trades (id, kind, time zone and price limits).
    pub market: Market,
    pub params: StrategyParams,
}

/// Builds a strategy from its init; parameter errors name the parameter.
pub type StrategyConstructor = fn(&StrategyInit) -> Result<Box<dyn Strategy>, StrategyError>;

#[derive(Debug, Clone, Default)]
pub struct StrategyRegistry {
    kinds: BTreeMap<String, StrategyConstructor>,
}

impl StrategyRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding the built-in kinds: `battery_arbitrage`, `real_time_threshold`,
    /// `rules`, `regulation_offer`, `dr_responder`.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        r.kinds.insert(
            BatteryArbitrage::KIND.to_owned(),
            BatteryArbitrage::construct,
        );
        r.kinds.insert(
            RealTimeThreshold::KIND.to_owned(),
            RealTimeThreshold::construct,
        );
        r.kinds
            .insert(RuleStrategy::KIND.to_owned(), RuleStrategy::construct);
        r.kinds
            .insert(RegulationOffer::KIND.to_owned(), RegulationOffer::construct);
        r.kinds.insert(
            DemandResponseResponder::KIND.to_owned(),
            DemandResponseResponder::construct,
        );
        r
    }

    pub fn register(
        &mut self,
        kind: &str,
        constructor: StrategyConstructor,
    ) -> Result<(), StrategyError> {
        if self.kinds.contains_key(kind) {
            return Err(StrategyError::DuplicateKind(kind.to_owned()));
        }
        let valid = !kind.is_empty()
            && kind.len() <= 64
            && kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(StrategyError::param(
                "kind",
                format!("{kind:?} must be 1..=64 of [a-z0-9_]"),
            ));
        }
        if self.kinds.len() >= MAX_KINDS {
            return Err(StrategyError::param(
                "kind",
                format!("at most {MAX_KINDS} strategy kinds"),
            ));
        }
        self.kinds.insert(kind.to_owned(), constructor);
        Ok(())
    }

    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// Instantiates `init.kind` with `init.params`.
    pub fn create(&self, init: &StrategyInit) -> Result<Box<dyn Strategy>, StrategyError> {
        let ctor = self
            .kinds
            .get(&init.kind)
            .ok_or_else(|| StrategyError::UnknownKind {
                kind: init.kind.clone(),
                known: self.kinds().collect::<Vec<_>>().join(", "),
            })?;
        ctor(init)
    }
}
