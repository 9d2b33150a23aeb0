//! The timer schedule shared by the live Strategy actor and the backtest, so both deliver the
//! same timers at the same instants.
//!
//! - `IntervalStart` fires at every 15-minute boundary.
//! - `GateClosureApproaching` fires `lead` before each day-ahead market's gate closure for a
//!   trading day (markets of other kinds have no gate).
//!
//! Invariants: a timer fires in the window `(after, up_to]` exactly once across consecutive
//! windows; output is sorted by firing time, then interval starts before gate closures, then
//! market id. One call covers at most [`MAX_WINDOW_DAYS`] days, so its output is bounded.

use super::Timer;
use crate::market::{DeliveryInterval, Market, MarketKind};
use crate::Timestamp;
use chrono::{Duration, TimeZone, Utc};

/// Longest window one call covers.
pub const MAX_WINDOW_DAYS: i64 = 2;

/// Appends to `out` the timers firing in `(after, up_to]`, with `up_to` clamped to
/// `after + MAX_WINDOW_DAYS`; returns the end actually covered (call again from there).
pub fn timers_due(
    markets: &[Market],
    lead: Duration,
    after: Timestamp,
    up_to: Timestamp,
    out: &mut Vec<Timer>,
) -> Timestamp {
    let up_to = up_to.min(after + Duration::days(MAX_WINDOW_DAYS));
    if up_to <= after {
        return after;
    }
    let mut due: Vec<(Timestamp, u8, u64, Timer)> = Vec::new();
    let mut interval = DeliveryInterval::containing(after).next();
    while interval.start() <= up_to {
        due.push((interval.start(), 0, 0, Timer::IntervalStart { interval }));
        interval = interval.next();
    }
    for market in markets.iter().filter(|m| m.kind == MarketKind::DayAhead) {
        gate_timers(market, lead, after, up_to, &mut due);
    }
    due.sort_by_key(|d| (d.0, d.1, d.2));
    out.extend(due.into_iter().map(|(_, _, _, t)| t));
    up_to
}

fn gate_timers(
    market: &Market,
    lead: Duration,
    after: Timestamp,
    up_to: Timestamp,
    due: &mut Vec<(Timestamp, u8, u64, Timer)>,
) {
    let tz = market.timezone;
    let reach = Duration::minutes(i64::from(market.gate_closure_minutes_before)) + lead;
    let first = after.with_timezone(&tz).date_naive();
    let last = (up_to + reach).with_timezone(&tz).date_naive();
    let mut day = first;
    while day <= last {
        let start = day
            .and_hms_opt(0, 0, 0)
            .and_then(|t| tz.from_local_datetime(&t).earliest());
        if let Some(start) = start {
            let gate =
                market.gate_closure_for(DeliveryInterval::containing(start.with_timezone(&Utc)));
            let fire = gate - lead;
            if fire > after && fire <= up_to {
                let timer = Timer::GateClosureApproaching {
                    market: market.id,
                    trading_day: day,
                };
                due.push((fire, 1, market.id.0, timer));
            }
        }
        let Some(next) = day.succ_opt() else { break };
        day = next;
    }
}
