//! Kill switches at three levels: global, per aggregation, per strategy.
//!
//! Invariants:
//! - While a switch is engaged, every new intent in its scope is refused (checked first).
//! - Who engaged or released a switch, why and when is kept in [`KillSwitchState::history`],
//!   bounded: the oldest records are dropped first.
//! - Engaging an engaged switch keeps the first engagement and records the repeat.

use crate::event::Scope;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use thiserror::Error;
use vpp_engine::ids::{AggregationId, StrategyId};
use vpp_engine::Timestamp;

/// The scopes a kill switch exists at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "level", content = "id")]
pub enum KillScope {
    Global,
    Aggregation(AggregationId),
    Strategy(StrategyId),
}

impl From<KillScope> for Scope {
    fn from(k: KillScope) -> Scope {
        match k {
            KillScope::Global => Scope::Global,
            KillScope::Aggregation(id) => Scope::Aggregation(id),
            KillScope::Strategy(id) => Scope::Strategy(id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KillSwitchError {
    #[error("kill switch {0:?} is not engaged")]
    NotEngaged(KillScope),
    #[error("kill switch table is full ({0} switches); release some or raise risk.sizing")]
    Full(usize),
}

/// Who engaged a switch, why, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engagement {
    pub who: String,
    pub why: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillAction {
    Engaged,
    Reengaged,
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillRecord {
    pub scope: KillScope,
    pub action: KillAction,
    pub who: String,
    pub why: String,
    pub at: Timestamp,
}

/// Engaged switches and their history.
#[derive(Debug, Clone)]
pub struct KillSwitchState {
    global: Option<Engagement>,
    aggregations: HashMap<AggregationId, Engagement>,
    strategies: HashMap<StrategyId, Engagement>,
    history: VecDeque<KillRecord>,
    history_len: usize,
    max_switches: usize,
}

impl KillSwitchState {
    pub fn new(history_len: usize, max_switches: usize) -> Self {
        Self {
            global: None,
            aggregations: HashMap::with_capacity(max_switches.min(1024)),
            strategies: HashMap::with_capacity(max_switches.min(1024)),
            history: VecDeque::with_capacity(history_len.min(4096)),
            history_len: history_len.max(1),
            max_switches,
        }
    }

    pub fn engagement(&self, scope: KillScope) -> Option<&Engagement> {
        match scope {
            KillScope::Global => self.global.as_ref(),
            KillScope::Aggregation(id) => self.aggregations.get(&id),
            KillScope::Strategy(id) => self.strategies.get(&id),
        }
    }

    pub fn is_engaged(&self, scope: KillScope) -> bool {
        self.engagement(scope).is_some()
    }

    /// The first engaged switch that covers an intent of this aggregation and strategy.
    pub fn blocking(
        &self,
        aggregation: AggregationId,
        strategy: Option<StrategyId>,
    ) -> Option<(KillScope, &Engagement)> {
        if let Some(e) = &self.global {
            return Some((KillScope::Global, e));
        }
        if let Some(e) = self.aggregations.get(&aggregation) {
            return Some((KillScope::Aggregation(aggregation), e));
        }
        let id = strategy?;
        self.strategies
            .get(&id)
            .map(|e| (KillScope::Strategy(id), e))
    }

    /// Engages a switch; returns whether it was newly engaged.
    pub fn engage(
        &mut self,
        scope: KillScope,
        who: &str,
        why: &str,
        at: Timestamp,
    ) -> Result<bool, KillSwitchError> {
        let engagement = Engagement {
            who: who.to_owned(),
            why: why.to_owned(),
            at,
        };
        let fresh = !self.is_engaged(scope);
        if fresh && scope != KillScope::Global && self.engaged_count() >= self.max_switches {
            return Err(KillSwitchError::Full(self.max_switches));
        }
        if fresh {
            match scope {
                KillScope::Global => self.global = Some(engagement),
                KillScope::Aggregation(id) => {
                    self.aggregations.insert(id, engagement);
                }
                KillScope::Strategy(id) => {
                    self.strategies.insert(id, engagement);
                }
            }
        }
        let action = if fresh {
            KillAction::Engaged
        } else {
            KillAction::Reengaged
        };
        self.push_history(scope, action, who, why, at);
        Ok(fresh)
    }

    /// Releases an engaged switch, returning the engagement it ends.
    pub fn release(
        &mut self,
        scope: KillScope,
        who: &str,
        at: Timestamp,
    ) -> Result<Engagement, KillSwitchError> {
        let ended = match scope {
            KillScope::Global => self.global.take(),
            KillScope::Aggregation(id) => self.aggregations.remove(&id),
            KillScope::Strategy(id) => self.strategies.remove(&id),
        }
        .ok_or(KillSwitchError::NotEngaged(scope))?;
        self.push_history(scope, KillAction::Released, who, "released", at);
        Ok(ended)
    }

    pub fn engaged(&self) -> impl Iterator<Item = (KillScope, &Engagement)> {
        let global = self.global.iter().map(|e| (KillScope::Global, e));
        let aggs = self
            .aggregations
            .iter()
            .map(|(id, e)| (KillScope::Aggregation(*id), e));
        let strats = self
            .strategies
            .iter()
            .map(|(id, e)| (KillScope::Strategy(*id), e));
        global.chain(aggs).chain(strats)
    }

    pub fn history(&self) -> impl Iterator<Item = &KillRecord> {
        self.history.iter()
    }

    fn engaged_count(&self) -> usize {
        self.aggregations.len() + self.strategies.len()
    }

    fn push_history(
        &mut self,
        scope: KillScope,
        action: KillAction,
        who: &str,
        why: &str,
        at: Timestamp,
    ) {
        if self.history.len() >= self.history_len {
            self.history.pop_front();
        }
        self.history.push_back(KillRecord {
            scope,
            action,
            who: who.to_owned(),
            why: why.to_owned(),
            at,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn levels_block_their_own_scope_only_and_history_is_bounded() {
        let at = Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap();
        let mut k = KillSwitchState::new(3, 10);
        let (a1, a2, s1) = (AggregationId(1), AggregationId(2), StrategyId(1));
        assert!(k.blocking(a1, Some(s1)).is_none());
        assert!(k
            .engage(KillScope::Strategy(s1), "ops", "loss", at)
            .unwrap());
        assert_eq!(k.blocking(a2, Some(s1)).unwrap().0, KillScope::Strategy(s1));
        assert!(k.blocking(a2, None).is_none());
        assert!(!k
            .engage(KillScope::Strategy(s1), "bob", "again", at)
            .unwrap());
        assert_eq!(k.engagement(KillScope::Strategy(s1)).unwrap().who, "ops");
        k.engage(KillScope::Aggregation(a1), "ops", "meter", at)
            .unwrap();
        assert_eq!(
            k.blocking(a1, Some(s1)).unwrap().0,
            KillScope::Aggregation(a1)
        );
        k.release(KillScope::Strategy(s1), "ops", at).unwrap();
        assert!(k.release(KillScope::Strategy(s1), "ops", at).is_err());
        assert!(k.blocking(a2, Some(s1)).is_none());
        assert_eq!(k.history().count(), 3);
        assert_eq!(k.history().last().unwrap().action, KillAction::Released);
    }
}
