//! Replay of a recorded market-data session (`vpp backtest --session FILE`).
//!
//! The daemon can record, per strategy, what that strategy was fed: every market data item,
//! timer and capacity update with the instant it was handled, as JSON lines
//! ([`SessionEvent`]). Replaying the file drives a fresh [`StrategyHost`] with the same inputs
//! at the same instants, and settles its intents on the same [`PaperVenue`] a shadow strategy
//! uses live. So a strategy fed a recorded session emits the intents it emitted live: that is
//! what `tests/parity.rs` checks.
//!
//! Order of handling, the same as the live Strategy actor: an `IntervalStart` timer first
//! expires the paper orders of started intervals; market data goes to the paper venue first
//! (its quote, and fills of resting orders, which go back to the strategy), then to the
//! strategy, whose intents meet that quote.
//!
//! Invariants: the file is read with a line and byte bound ([`MAX_SESSION_LINES`]); a bad line
//! is an error naming its number; events must not go back in time.

use crate::ids::{AggregationId, StrategyId};
use crate::market::Market;
use crate::strategy::paper::settle_reports;
use crate::strategy::{
    settle_on_paper, CapacityUpdate, HostConfig, MarketData, OrderIntent, PaperPnl, PaperVenue,
    RecordedIntent, StrategyError, StrategyHost, StrategyInit, StrategyParams, Timer,
};
use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Most lines a session file may hold.
pub const MAX_SESSION_LINES: usize = 5_000_000;

/// Who was recorded: enough to rebuild the same strategy (the session's first line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStrategy {
    pub strategy_id: StrategyId,
    pub aggregation_id: AggregationId,
    pub name: String,
    pub kind: String,
    /// The strategy version in the store, when the daemon knows it.
    #[serde(default)]
    pub version: Option<u32>,
    pub market: Market,
    pub params: StrategyParams,
    /// The live client order id prefix (`s<id>b<boot>`), so replayed ids match live ones.
    #[serde(default)]
    pub id_prefix: Option<String>,
}

impl SessionStrategy {
    pub fn init(&self) -> StrategyInit {
        StrategyInit {
            strategy_id: self.strategy_id,
            name: self.name.clone(),
            kind: self.kind.clone(),
            aggregation_id: self.aggregation_id,
            market: self.market.clone(),
            params: self.params.clone(),
        }
    }

    pub fn host_config(&self) -> HostConfig {
        let mut c = HostConfig::new(self.strategy_id, self.aggregation_id);
        c.id_prefix = self.id_prefix.clone();
        c
    }
}

/// One recorded input of a strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum SessionEvent {
    /// The recording started (or the strategy was rebuilt): who is recorded.
    Start {
        at: Timestamp,
        strategy: Box<SessionStrategy>,
    },
    MarketData {
        at: Timestamp,
        data: MarketData,
    },
    Timer {
        at: Timestamp,
        timer: Timer,
    },
    Capacity {
        at: Timestamp,
        update: CapacityUpdate,
    },
}

impl SessionEvent {
    pub fn at(&self) -> Timestamp {
        match self {
            Self::Start { at, .. }
            | Self::MarketData { at, .. }
            | Self::Timer { at, .. }
            | Self::Capacity { at, .. } => *at,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("session line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("session has more than {MAX_SESSION_LINES} lines")]
    TooLong,
}

/// Parses a JSONL session; blank lines are skipped.
pub fn parse_session(text: &str) -> Result<Vec<SessionEvent>, SessionError> {
    let mut out = Vec::new();
    let mut last: Option<Timestamp> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() >= MAX_SESSION_LINES {
            return Err(SessionError::TooLong);
        }
        let event: SessionEvent = serde_json::from_str(line).map_err(|e| SessionError::Line {
            line: i + 1,
            reason: e.to_string(),
        })?;
        if last.is_some_and(|l| event.at() < l) {
            return Err(SessionError::Line {
                line: i + 1,
                reason: format!("at {} goes back in time", event.at()),
            });
        }
        last = Some(event.at());
        out.push(event);
    }
    Ok(out)
}

/// What a replay produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionOutcome {
    pub events: u64,
    /// Every intent, in emission order.
    pub intents: Vec<RecordedIntent>,
    pub pnl: PaperPnl,
    /// Strategy errors by message (first 80 characters).
    pub strategy_errors: BTreeMap<String, u64>,
}

/// Feeds one session event to a host settled on paper, the way the live Strategy actor does
/// for a shadow strategy. Returns the strategy's error, if any (its intents are discarded).
pub fn feed_event(
    host: &mut StrategyHost,
    paper: &mut PaperVenue,
    event: &SessionEvent,
) -> Result<(), StrategyError> {
    let now = event.at();
    match event {
        SessionEvent::MarketData { data, .. } => {
            let reports = paper.on_market_data(now, data);
            settle_reports(host, paper, now, reports)?;
            let intents: Vec<OrderIntent> = host.on_market_data(now, data)?.to_vec();
            settle_on_paper(host, paper, now, &intents)
        }
        SessionEvent::Timer { timer, .. } => {
            if let Timer::IntervalStart { .. } = timer {
                let reports = paper.expire_started(now);
                settle_reports(host, paper, now, reports)?;
            }
            let intents: Vec<OrderIntent> = host.on_timer(now, timer)?.to_vec();
            settle_on_paper(host, paper, now, &intents)
        }
        SessionEvent::Capacity { update, .. } => {
            let intents: Vec<OrderIntent> = host.on_capacity(now, update)?.to_vec();
            settle_on_paper(host, paper, now, &intents)
        }
        SessionEvent::Start { .. } => Ok(()),
    }
}

/// Replays a session through `host`, settling on a fresh paper venue.
pub fn replay_session(host: &mut StrategyHost, events: &[SessionEvent]) -> SessionOutcome {
    let mut paper = PaperVenue::new();
    let mut out = SessionOutcome::default();
    let mut intents = Vec::new();
    for event in events {
        out.events += 1;
        let before = paper.logged_total();
        if let Err(e) = feed_event(host, &mut paper, event) {
            let key: String = e.to_string().chars().take(80).collect();
            *out.strategy_errors.entry(key).or_insert(0) += 1;
        }
        // The in-memory log is bounded; take this event's intents from its tail.
        let new = usize::try_from(paper.logged_total() - before).unwrap_or(usize::MAX);
        let log: Vec<&RecordedIntent> = paper.log().collect();
        intents.extend(
            log[log.len().saturating_sub(new)..]
                .iter()
                .map(|r| (*r).clone()),
        );
    }
    out.intents = intents;
    out.pnl = paper.pnl().clone();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MarketId;
    use crate::market::{DeliveryInterval, MarketKind};
    use crate::strategy::StrategyRegistry;
    use chrono::{TimeZone, Utc};
    use rust_decimal_macros::dec;

    fn rules_host() -> StrategyHost {
        let market = Market {
            id: MarketId(2),
            name: "rt".into(),
            kind: MarketKind::RealTime,
            timezone: chrono_tz::Asia::Shanghai,
            price_cap_cny_per_mwh: dec!(1500),
            price_floor_cny_per_mwh: dec!(0),
            negative_prices_allowed: false,
            gate_closure_minutes_before: 0,
        };
        let params = StrategyParams::from_json(&serde_json::json!({
            "market": "real_time",
            "rule.a": "when price > 400 then sell 1 MW at ref - 5"
        }))
        .unwrap();
        let s = StrategyRegistry::with_builtins()
            .create(&StrategyInit {
                strategy_id: StrategyId(1),
                name: "r".into(),
                kind: "rules".into(),
                aggregation_id: AggregationId(1),
                market,
                params,
            })
            .unwrap();
        StrategyHost::new(s, HostConfig::new(StrategyId(1), AggregationId(1))).unwrap()
    }

    #[test]
    fn a_session_round_trips_and_replays_identically() {
        let at = |m| Utc.with_ymd_and_hms(2026, 3, 2, 10, m, 0).unwrap();
        let iv = DeliveryInterval::containing(at(45));
        let price = |m, p| SessionEvent::MarketData {
            at: at(m),
            data: MarketData::Price {
                market: MarketId(2),
                interval: iv,
                reference_price_cny_per_mwh: dec!(380),
                last_trade_price_cny_per_mwh: Some(p),
                at: at(m),
            },
        };
        let capacity = SessionEvent::Capacity {
            at: at(0),
            update: CapacityUpdate {
                aggregation_id: AggregationId(1),
                capacity: crate::aggregation::AggregatedCapacity {
                    up_flex_kw: dec!(2000),
                    down_flex_kw: dec!(2000),
                    energy_kwh: dec!(0),
                    charge_headroom_kwh: dec!(0),
                    available_resources: 1,
                },
                storage: None,
                at: at(0),
            },
        };
        let events = vec![
            capacity,
            price(1, dec!(390)),
            price(2, dec!(420)),
            price(3, dec!(430)),
        ];
        let text: String = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        assert_eq!(parse_session(&text).unwrap(), events);
        let first = replay_session(&mut rules_host(), &events);
        // 420 crosses 400: one sell at 420 − 5 = 415, filled on paper at the 420 last trade
        // (1 MW × 0.25 h × 420 = 105 CNY); the rule acts once per interval, so 430 adds nothing.
        assert_eq!(first.intents.len(), 1);
        let OrderIntent::New(r) = &first.intents[0].intent else {
            panic!("expected a new order, got {:?}", first.intents[0]);
        };
        assert_eq!(r.price_cny_per_mwh, dec!(415));
        assert_eq!(first.intents[0].at, at(2));
        assert_eq!(first.pnl.cash_cny, dec!(105));
        assert_eq!(replay_session(&mut rules_host(), &events), first);
        // Bad input names the line.
        let err = parse_session(&format!("{text}{{\"type\":\"timer\"}}\n")).unwrap_err();
        assert!(matches!(err, SessionError::Line { line: 5, .. }), "{err}");
        let backwards = format!(
            "{}\n{}\n",
            serde_json::to_string(&events[2]).unwrap(),
            serde_json::to_string(&events[1]).unwrap()
        );
        assert!(parse_session(&backwards).is_err());
    }
}
