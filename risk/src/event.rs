//! Risk outcomes as values: reject codes, alert codes, scopes, decisions and [`RiskEvent`]s.
//!
//! Invariants:
//! - A code's `as_str()` is stable: it is journaled and used as a metric label, so a variant may
//!   be added but an existing string never changes.
//! - A [`Reject`] always names the limit that tripped and the value that tripped it; its message
//!   is built only when the check fails, never on the approve path.
//! - Counters are fixed arrays indexed by code: counting never allocates.

use serde::{Deserialize, Serialize};
use std::fmt;
use vpp_engine::ids::{AggregationId, ClientOrderId, MarketId, StrategyId};
use vpp_engine::Timestamp;

macro_rules! code_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name, used in the journal and as a metric label.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            /// Parses a name produced by [`Self::as_str`].
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|c| c.as_str() == s)
            }

            fn index(self) -> usize {
                self as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

code_enum!(
    /// Why an order intent was refused.
    RejectCode {
        KillSwitch => "kill_switch",
        DuplicateClientOrderId => "duplicate_client_order_id",
        InvalidQuantity => "invalid_quantity",
        UnknownMarket => "unknown_market",
        IntervalInDelivery => "interval_in_delivery",
        GateClosed => "gate_closed",
        PriceLimit => "price_limit",
        PriceCollar => "price_collar",
        MaxOrderQuantity => "max_order_quantity",
        MaxOpenOrders => "max_open_orders",
        StrategyThrottle => "strategy_throttle",
        VenueThrottle => "venue_throttle",
        DailyNotional => "daily_notional",
        MaxNetPosition => "max_net_position",
        CapacityHeadroom => "capacity_headroom",
        StorageEnergy => "storage_energy",
        SelfTrade => "self_trade",
        TrackingLimit => "tracking_limit",
        BeyondHorizon => "beyond_horizon",
    }
);

code_enum!(
    /// Post-trade and operator alerts.
    AlertCode {
        DeviationWarning => "deviation_warning",
        DeviationCritical => "deviation_critical",
        KillSwitchEngaged => "kill_switch_engaged",
        KillSwitchReleased => "kill_switch_released",
        LimitsChanged => "limits_changed",
    }
);

/// Where a limit, a kill switch or an event applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "level", content = "id")]
pub enum Scope {
    Global,
    Aggregation(AggregationId),
    Strategy(StrategyId),
    Market(MarketId),
    /// A venue by its index in the configured venue list.
    Venue(u32),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Aggregation(id) => write!(f, "aggregation {id}"),
            Scope::Strategy(id) => write!(f, "strategy {id}"),
            Scope::Market(id) => write!(f, "market {id}"),
            Scope::Venue(i) => write!(f, "venue #{i}"),
        }
    }
}

/// A refused intent: stable code, the scope whose limit tripped, and a readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub code: RejectCode,
    pub scope: Scope,
    pub message: String,
}

impl Reject {
    pub fn new(code: RejectCode, scope: Scope, message: String) -> Self {
        Self {
            code,
            scope,
            message,
        }
    }

    /// The journal record of this rejection.
    pub fn into_event(self, client_order_id: Option<ClientOrderId>, at: Timestamp) -> RiskEvent {
        RiskEvent {
            kind: RiskEventKind::Rejected(self.code),
            scope: self.scope,
            message: self.message,
            client_order_id,
            at,
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.scope, self.message)
    }
}

/// Result of a pre-trade check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject(Reject),
}

impl Decision {
    pub fn is_approved(&self) -> bool {
        matches!(self, Decision::Approve)
    }

    pub fn reject_code(&self) -> Option<RejectCode> {
        match self {
            Decision::Approve => None,
            Decision::Reject(r) => Some(r.code),
        }
    }
}

impl From<Result<(), Reject>> for Decision {
    fn from(r: Result<(), Reject>) -> Self {
        match r {
            Ok(()) => Decision::Approve,
            Err(e) => Decision::Reject(e),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "code")]
pub enum RiskEventKind {
    Rejected(RejectCode),
    Alert(AlertCode),
}

impl RiskEventKind {
    pub fn code_str(self) -> &'static str {
        match self {
            RiskEventKind::Rejected(c) => c.as_str(),
            RiskEventKind::Alert(c) => c.as_str(),
        }
    }
}

/// One journaled risk record: a rejection or an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskEvent {
    pub kind: RiskEventKind,
    pub scope: Scope,
    pub message: String,
    pub client_order_id: Option<ClientOrderId>,
    pub at: Timestamp,
}

impl RiskEvent {
    pub fn alert(code: AlertCode, scope: Scope, message: String, at: Timestamp) -> Self {
        Self {
            kind: RiskEventKind::Alert(code),
            scope,
            message,
            client_order_id: None,
            at,
        }
    }
}

/// Per-reason counters. Fixed arrays: incrementing never allocates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskCounters {
    rejects: [u64; RejectCode::COUNT],
    alerts: [u64; AlertCode::COUNT],
    pub approved: u64,
}

impl Default for RiskCounters {
    fn default() -> Self {
        Self {
            rejects: [0; RejectCode::COUNT],
            alerts: [0; AlertCode::COUNT],
            approved: 0,
        }
    }
}

impl RiskCounters {
    pub fn count_reject(&mut self, code: RejectCode) {
        self.rejects[code.index()] += 1;
    }

    pub fn count_alert(&mut self, code: AlertCode) {
        self.alerts[code.index()] += 1;
    }

    pub fn count_event(&mut self, event: &RiskEvent) {
        match event.kind {
            RiskEventKind::Rejected(c) => self.count_reject(c),
            RiskEventKind::Alert(c) => self.count_alert(c),
        }
    }

    pub fn rejects(&self, code: RejectCode) -> u64 {
        self.rejects[code.index()]
    }

    pub fn alerts(&self, code: AlertCode) -> u64 {
        self.alerts[code.index()]
    }

    /// `(code, count)` for every reject code, for metrics export.
    pub fn reject_counts(&self) -> impl Iterator<Item = (RejectCode, u64)> + '_ {
        RejectCode::ALL
            .iter()
            .map(|c| (*c, self.rejects[c.index()]))
    }

    /// `(code, count)` for every alert code, for metrics export.
    pub fn alert_counts(&self) -> impl Iterator<Item = (AlertCode, u64)> + '_ {
        AlertCode::ALL.iter().map(|c| (*c, self.alerts[c.index()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_index_their_counters() {
        let mut counters = RiskCounters::default();
        for (i, code) in RejectCode::ALL.iter().enumerate() {
            assert_eq!(RejectCode::parse(code.as_str()), Some(*code));
            for _ in 0..=i {
                counters.count_reject(*code);
            }
        }
        for (i, (code, n)) in counters.reject_counts().enumerate() {
            assert_eq!(n, i as u64 + 1, "{code}");
        }
        for code in AlertCode::ALL {
            assert_eq!(AlertCode::parse(code.as_str()), Some(*code));
        }
        assert_eq!(RejectCode::parse("nope"), None);
    }
}
