//! Post-trade deviation monitor: metered delivery against awarded and dispatched energy, per
//! aggregation and interval.
//!
//! Invariants:
//! - The deviation fraction is |metered − reference| / max(|reference|, floor), for both the
//!   award and the dispatch; the worse of the two decides the severity.
//! - An alert fires when an (aggregation, interval) escalates (ok → warning → critical), not on
//!   every repeated sample, so a flapping meter cannot flood the journal.
//! - The memory of past severities is bounded and pruned as intervals roll off.

use crate::event::{AlertCode, RiskEvent, Scope};
use crate::hash::{map_with_capacity, FxHashMap};
use crate::limits::DeviationPolicy;
use crate::state::interval_index;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use vpp_engine::ids::{AggregationId, StrategyId};
use vpp_engine::market::DeliveryInterval;
use vpp_engine::Timestamp;

/// One metered interval of an aggregation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverySample {
    pub aggregation_id: AggregationId,
    pub interval: DeliveryInterval,
    pub awarded_kwh: Decimal,
    pub dispatched_kwh: Decimal,
    pub metered_kwh: Decimal,
    /// The strategy whose award this is; its kill switch is engaged on a critical breach
    /// when policy says so (the aggregation's when `None`).
    pub strategy_id: Option<StrategyId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok,
    Warning,
    Critical,
}

/// The assessment of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assessment {
    pub severity: Severity,
    pub fraction: Decimal,
    /// "awarded" or "dispatched": which reference gave the worse fraction.
    pub against: &'static str,
    pub reference_kwh: Decimal,
}

fn fraction(metered: Decimal, reference: Decimal, floor: Decimal) -> Decimal {
    (metered - reference).abs() / reference.abs().max(floor)
}

/// Pure: grades one sample against the policy.
pub fn assess(policy: &DeviationPolicy, s: &DeliverySample) -> Assessment {
    let floor = policy.reference_floor_kwh.max(Decimal::new(1, 6));
    let vs_award = fraction(s.metered_kwh, s.awarded_kwh, floor);
    let vs_dispatch = fraction(s.metered_kwh, s.dispatched_kwh, floor);
    let (fraction, against, reference_kwh) = if vs_dispatch > vs_award {
        (vs_dispatch, "dispatched", s.dispatched_kwh)
    } else {
        (vs_award, "awarded", s.awarded_kwh)
    };
    let severity = if fraction >= policy.critical_fraction {
        Severity::Critical
    } else if fraction >= policy.warning_fraction {
        Severity::Warning
    } else {
        Severity::Ok
    };
    Assessment {
        severity,
        fraction,
        against,
        reference_kwh,
    }
}

#[derive(Debug, Clone)]
pub struct DeviationMonitor {
    policy: DeviationPolicy,
    worst: FxHashMap<(AggregationId, i64), Severity>,
    max_entries: usize,
}

impl DeviationMonitor {
    pub fn new(policy: DeviationPolicy, max_entries: usize) -> Self {
        Self {
            policy,
            // Grows to `max_entries` when needed; a smaller start keeps the per-tick prune cheap.
            worst: map_with_capacity(max_entries.min(1024)),
            max_entries: max_entries.max(1),
        }
    }

    pub fn policy(&self) -> &DeviationPolicy {
        &self.policy
    }

    pub fn severity(&self, aggregation: AggregationId, interval: DeliveryInterval) -> Severity {
        self.worst
            .get(&(aggregation, interval_index(interval)))
            .copied()
            .unwrap_or(Severity::Ok)
    }

    /// Grades a sample and returns an alert if it escalated the (aggregation, interval).
    pub fn record(&mut self, s: &DeliverySample, at: Timestamp) -> Option<(Severity, RiskEvent)> {
        let a = assess(&self.policy, s);
        let key = (s.aggregation_id, interval_index(s.interval));
        let before = self.worst.get(&key).copied().unwrap_or(Severity::Ok);
        if a.severity <= before {
            return None;
        }
        if self.worst.len() >= self.max_entries && !self.worst.contains_key(&key) {
            self.evict_oldest();
        }
        self.worst.insert(key, a.severity);
        let (code, threshold) = match a.severity {
            Severity::Critical => (AlertCode::DeviationCritical, self.policy.critical_fraction),
            _ => (AlertCode::DeviationWarning, self.policy.warning_fraction),
        };
        let message = format!(
            "{}: metered {} kWh vs {} {} kWh deviates by {} (threshold {})",
            s.interval,
            s.metered_kwh,
            a.against,
            a.reference_kwh,
            a.fraction.round_dp(4),
            threshold
        );
        let event = RiskEvent::alert(code, Scope::Aggregation(s.aggregation_id), message, at);
        Some((a.severity, event))
    }

    /// Forgets intervals before `oldest_index`.
    pub fn prune_before(&mut self, oldest_index: i64) {
        self.worst.retain(|(_, idx), _| *idx >= oldest_index);
    }

    fn evict_oldest(&mut self) {
        if let Some(oldest) = self.worst.keys().map(|(_, idx)| *idx).min() {
            self.prune_before(oldest + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use rust_decimal_macros::dec;

    fn sample(metered: Decimal) -> DeliverySample {
        DeliverySample {
            aggregation_id: AggregationId(1),
            interval: DeliveryInterval::starting_at(
                Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap(),
            )
            .unwrap(),
            awarded_kwh: dec!(1000),
            dispatched_kwh: dec!(1000),
            metered_kwh: metered,
            strategy_id: None,
        }
    }

    #[test]
    fn thresholds_just_inside_and_outside() {
        let p = DeviationPolicy::default(); // 5 % warning, 15 % critical
        assert_eq!(assess(&p, &sample(dec!(950.01))).severity, Severity::Ok);
        assert_eq!(assess(&p, &sample(dec!(950))).severity, Severity::Warning);
        assert_eq!(
            assess(&p, &sample(dec!(1149.99))).severity,
            Severity::Warning
        );
        assert_eq!(assess(&p, &sample(dec!(1150))).severity, Severity::Critical);
        let mut s = sample(dec!(1000));
        s.dispatched_kwh = dec!(800);
        let a = assess(&p, &s);
        assert_eq!((a.severity, a.against), (Severity::Critical, "dispatched"));
        let mut zero = sample(dec!(0.5));
        zero.awarded_kwh = dec!(0);
        zero.dispatched_kwh = dec!(0);
        assert_eq!(assess(&p, &zero).severity, Severity::Critical);
    }

    #[test]
    fn alerts_fire_on_escalation_only() {
        let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
        let mut m = DeviationMonitor::new(DeviationPolicy::default(), 2);
        let (sev, e) = m.record(&sample(dec!(940)), at).unwrap();
        assert_eq!(sev, Severity::Warning);
        assert_eq!(e.kind.code_str(), "deviation_warning");
        assert!(m.record(&sample(dec!(930)), at).is_none());
        let (sev, _) = m.record(&sample(dec!(700)), at).unwrap();
        assert_eq!(sev, Severity::Critical);
        assert!(m.record(&sample(dec!(700)), at).is_none());
        assert_eq!(
            m.severity(AggregationId(1), sample(dec!(0)).interval),
            Severity::Critical
        );
    }
}
