//! The backtest report and its three renderings: JSON (summary and daily rows), CSV (one row
//! per strategy and delivered interval) and a human summary.
//!
//! Invariants: P&L comes from the [`OrderLedger`]'s positions (the OMS's own numbers), never
//! from a parallel tally: `pnl = Σ (sold value − bought value) × 0.25 h`. Rendering is a pure
//! function of the report: BTreeMaps and Vecs only, so the bytes are reproducible.

use super::{BacktestConfig, BatterySpec, DstReport, PriceSeries};
use crate::ids::AggregationId;
use crate::ledger::OrderLedger;
use crate::market::DeliveryInterval;
use crate::Timestamp;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

const HOURS_PER_INTERVAL: Decimal = dec!(0.25);

/// What the runner accumulates per strategy besides the ledger.
#[derive(Debug, Default)]
pub(crate) struct SlotOutcome {
    pub orders: u64,
    pub fills: u64,
    pub rejects: BTreeMap<String, u64>,
    pub strategy_errors: BTreeMap<String, u64>,
    pub discharged_mwh: Decimal,
    pub undelivered_mwh: Decimal,
    /// Stored energy after each delivered interval.
    pub soc: Vec<(DeliveryInterval, Decimal)>,
}

pub(crate) type SlotParts = (
    String,
    String,
    &'static str,
    BatterySpec,
    AggregationId,
    Decimal,
    SlotOutcome,
);

pub(crate) struct Collected<'a> {
    pub cfg: &'a BacktestConfig,
    pub prices: &'a PriceSeries,
    pub ledger: &'a OrderLedger,
    pub events: u64,
    pub slots: Vec<SlotParts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayRow {
    pub day: chrono::NaiveDate,
    pub intervals: u32,
    pub pnl_cny: Decimal,
    pub bought_mwh: Decimal,
    pub sold_mwh: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntervalRow {
    pub interval: DeliveryInterval,
    pub day: chrono::NaiveDate,
    pub price_cny_per_mwh: Option<Decimal>,
    pub bought_mwh: Decimal,
    pub sold_mwh: Decimal,
    pub pnl_cny: Decimal,
    pub cum_pnl_cny: Decimal,
    pub soc_pct: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StrategyReport {
    pub name: String,
    pub role: String,
    pub kind: String,
    pub battery: BatterySpec,
    pub pnl_cny: Decimal,
    pub bought_mwh: Decimal,
    pub sold_mwh: Decimal,
    pub orders: u64,
    pub fills: u64,
    /// Refusals by reason: risk codes (e.g. `storage_energy`) and `venue: ...`.
    pub rejects: BTreeMap<String, u64>,
    pub strategy_errors: BTreeMap<String, u64>,
    /// Largest fall of cumulative P&L from its running peak, over delivered intervals.
    pub max_drawdown_cny: Decimal,
    /// Energy discharged / usable energy between the SoC limits.
    pub full_cycle_equivalents: Decimal,
    pub discharged_mwh: Decimal,
    /// Energy the battery could not deliver or absorb (positions beyond its state).
    pub undelivered_mwh: Decimal,
    pub end_soc_pct: Decimal,
    pub days: Vec<DayRow>,
    #[serde(skip)]
    pub intervals: Vec<IntervalRow>,
}

/// Days of the run whose length is not 96 intervals (daylight-saving changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DstDay {
    pub day: chrono::NaiveDate,
    pub intervals: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BacktestReport {
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    pub seed: u64,
    pub config: BacktestConfig,
    pub price_rows_read: usize,
    pub intervals_delivered: usize,
    pub intervals_without_price: usize,
    /// Daylight-saving handling of the whole price file.
    pub dst: DstReport,
    /// Trading days of the run with 92 or 100 intervals.
    pub dst_days: Vec<DstDay>,
    /// Strategy callbacks made (market data, capacity, timers, reports, rejections).
    pub events: u64,
    pub strategies: Vec<StrategyReport>,
}

pub(crate) fn build(c: Collected<'_>) -> BacktestReport {
    let tz = c.cfg.timezone;
    let mut strategies = Vec::with_capacity(c.slots.len());
    let mut delivered = 0;
    let mut without_price = 0;
    let mut dst_days: BTreeMap<chrono::NaiveDate, u32> = BTreeMap::new();
    for (i, (name, role, kind, battery, agg, end_energy, out)) in c.slots.into_iter().enumerate() {
        let mut cash: BTreeMap<DeliveryInterval, (Decimal, Decimal, Decimal)> = BTreeMap::new();
        for (key, p) in c.ledger.positions() {
            if key.aggregation_id != agg {
                continue;
            }
            let e = cash.entry(key.interval).or_default();
            e.0 += p.bought_mw * HOURS_PER_INTERVAL;
            e.1 += p.sold_mw * HOURS_PER_INTERVAL;
            e.2 += (p.sold_value - p.bought_value) * HOURS_PER_INTERVAL;
        }
        let mut rows = Vec::with_capacity(out.soc.len());
        let (mut cum, mut peak, mut drawdown) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
        let mut days: BTreeMap<chrono::NaiveDate, DayRow> = BTreeMap::new();
        let mut calendar = LocalDays::new(tz);
        let mut soc = SocPct::new(battery.energy_mwh);
        let mut today: Option<DayRow> = None;
        for (interval, energy) in &out.soc {
            // Most intervals trade nothing: the running sums stay as they are.
            let traded = cash.get(interval);
            let (bought, sold, pnl) = match traded {
                Some(&(bought, sold, pnl)) => {
                    cum += pnl;
                    peak = peak.max(cum);
                    drawdown = drawdown.max(peak - cum);
                    (bought, sold, pnl)
                }
                None => (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO),
            };
            let day = calendar.day_of(*interval);
            let price = c.prices.get(*interval);
            if i == 0 {
                delivered += 1;
                without_price += usize::from(price.is_none());
            }
            if today.as_ref().is_some_and(|d| d.day != day) {
                close_day(&mut days, today.take());
            }
            let d = today.get_or_insert(DayRow {
                day,
                intervals: 0,
                pnl_cny: Decimal::ZERO,
                bought_mwh: Decimal::ZERO,
                sold_mwh: Decimal::ZERO,
            });
            d.intervals += 1;
            if traded.is_some() {
                d.pnl_cny += pnl;
                d.bought_mwh += bought;
                d.sold_mwh += sold;
            }
            rows.push(IntervalRow {
                interval: *interval,
                day,
                price_cny_per_mwh: price,
                bought_mwh: bought,
                sold_mwh: sold,
                pnl_cny: pnl,
                cum_pnl_cny: cum,
                soc_pct: soc.of(*energy),
            });
        }
        close_day(&mut days, today);
        if i == 0 {
            dst_days = days.iter().map(|(day, d)| (*day, d.intervals)).collect();
        }
        let usable = battery.usable_mwh();
        strategies.push(StrategyReport {
            pnl_cny: cum,
            bought_mwh: rows.iter().map(|r| r.bought_mwh).sum(),
            sold_mwh: rows.iter().map(|r| r.sold_mwh).sum(),
            orders: out.orders,
            fills: out.fills,
            rejects: out.rejects,
            strategy_errors: out.strategy_errors,
            max_drawdown_cny: drawdown,
            full_cycle_equivalents: if usable > Decimal::ZERO {
                (out.discharged_mwh / usable).round_dp(3)
            } else {
                Decimal::ZERO
            },
            discharged_mwh: out.discharged_mwh,
            undelivered_mwh: out.undelivered_mwh,
            end_soc_pct: pct(end_energy, battery.energy_mwh),
            days: days.into_values().collect(),
            intervals: rows,
            name,
            role,
            kind: kind.to_owned(),
            battery,
        });
    }
    BacktestReport {
        from: c.cfg.from,
        to: c.cfg.to,
        seed: c.cfg.seed,
        config: c.cfg.clone(),
        price_rows_read: c.prices.rows_read,
        intervals_delivered: delivered,
        intervals_without_price: without_price,
        dst: c.prices.dst.clone(),
        dst_days: dst_days
            .into_iter()
            .filter(|(_, n)| *n != 96)
            .map(|(day, intervals)| DstDay { day, intervals })
            .collect(),
        events: c.events,
        strategies,
    }
}

/// Adds a finished day's row to the days (rows come in time order, so a day is new there).
fn close_day(days: &mut BTreeMap<chrono::NaiveDate, DayRow>, row: Option<DayRow>) {
    let Some(row) = row else { return };
    match days.get_mut(&row.day) {
        Some(d) => {
            d.intervals += row.intervals;
            d.pnl_cny += row.pnl_cny;
            d.bought_mwh += row.bought_mwh;
            d.sold_mwh += row.sold_mwh;
        }
        None => {
            days.insert(row.day, row);
        }
    }
}

/// The local trading day of intervals: a time-zone conversion only for an interval outside
/// the day found last (rows come in time order, so once a day).
struct LocalDays {
    tz: chrono_tz::Tz,
    /// The day and its first and last-plus-one instants.
    day: Option<(chrono::NaiveDate, Timestamp, Timestamp)>,
}

impl LocalDays {
    fn new(tz: chrono_tz::Tz) -> Self {
        Self { tz, day: None }
    }

    fn day_of(&mut self, interval: DeliveryInterval) -> chrono::NaiveDate {
        let t = interval.start();
        if let Some((day, from, to)) = self.day {
            if from <= t && t < to {
                return day;
            }
        }
        let day = interval.trading_day(self.tz);
        self.day = local_midnight(day, self.tz)
            .zip(
                day.succ_opt()
                    .and_then(|next| local_midnight(next, self.tz)),
            )
            .map(|(from, to)| (day, from, to));
        day
    }
}

/// The instant a local day begins (`None` where its midnight does not exist).
fn local_midnight(day: chrono::NaiveDate, tz: chrono_tz::Tz) -> Option<Timestamp> {
    use chrono::TimeZone as _;
    let local = tz
        .from_local_datetime(&day.and_hms_opt(0, 0, 0)?)
        .earliest()?;
    Some(local.with_timezone(&chrono::Utc))
}

/// SoC percentages of a battery, rounded as [`pct`]; the last one is kept, since the energy
/// often stays the same from one interval to the next and the division is dear.
struct SocPct {
    capacity_mwh: Decimal,
    last: Option<(Decimal, Decimal)>,
}

impl SocPct {
    fn new(capacity_mwh: Decimal) -> Self {
        Self {
            capacity_mwh,
            last: None,
        }
    }

    fn of(&mut self, energy_mwh: Decimal) -> Decimal {
        match self.last {
            // The same representation, not only the same value: 1.0 and 1.00 print apart.
            Some((e, p)) if e.serialize() == energy_mwh.serialize() => p,
            _ => {
                let p = pct(energy_mwh, self.capacity_mwh);
                self.last = Some((energy_mwh, p));
                p
            }
        }
    }
}

/// Two ASCII digits.
fn push_2(out: &mut String, n: u32) {
    out.push(char::from(b'0' + (n / 10 % 10) as u8));
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// `YYYY-MM-DD`, as `NaiveDate`'s `Display` (which it falls back to outside years 0..=9999).
fn push_date(out: &mut String, day: chrono::NaiveDate) {
    use chrono::Datelike as _;
    let y = day.year();
    if !(0..=9999).contains(&y) {
        let _ = write!(out, "{day}");
        return;
    }
    let y = y.unsigned_abs();
    push_2(out, y / 100);
    push_2(out, y % 100);
    out.push('-');
    push_2(out, day.month());
    out.push('-');
    push_2(out, day.day());
}

/// `YYYY-MM-DDTHH:MMZ`, as `DeliveryInterval`'s `Display`.
fn push_interval(out: &mut String, interval: DeliveryInterval) {
    use chrono::Timelike as _;
    let t = interval.start().naive_utc();
    if !(0..=9999).contains(&chrono::Datelike::year(&t)) {
        let _ = write!(out, "{interval}");
        return;
    }
    push_date(out, t.date());
    out.push('T');
    push_2(out, t.hour());
    out.push(':');
    push_2(out, t.minute());
    out.push('Z');
}

fn pct(part: Decimal, whole: Decimal) -> Decimal {
    if whole == Decimal::ZERO {
        return Decimal::ZERO;
    }
    (part * dec!(100) / whole).round_dp(2)
}

impl BacktestReport {
    /// The summary and daily rows as pretty JSON (interval rows go to the CSV).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self).map(|mut s| {
            s.push('\n');
            s
        })
    }

    /// One row per strategy and delivered interval.
    pub fn intervals_csv(&self) -> String {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = self.write_intervals_csv(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// [`Self::intervals_csv`] streamed to a writer (the binary writes it straight to the
    /// file: no copy of the whole CSV in memory). Timestamps are formatted by hand, as
    /// `DeliveryInterval`'s and `NaiveDate`'s `Display` would (tested), since chrono's
    /// formatter was the largest cost of writing a long run.
    pub fn write_intervals_csv(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(
            b"strategy,interval_start_utc,local_day,price_cny_per_mwh,bought_mwh,sold_mwh,pnl_cny,cum_pnl_cny,soc_pct\n",
        )?;
        let mut line = String::with_capacity(160);
        for s in &self.strategies {
            for r in &s.intervals {
                line.clear();
                line.push_str(&s.name);
                line.push(',');
                push_interval(&mut line, r.interval);
                line.push(',');
                push_date(&mut line, r.day);
                line.push(',');
                if let Some(p) = r.price_cny_per_mwh {
                    let _ = write!(line, "{p}");
                }
                let _ = writeln!(
                    line,
                    ",{},{},{},{},{}",
                    r.bought_mwh.normalize(),
                    r.sold_mwh.normalize(),
                    r.pnl_cny.round_dp(2),
                    r.cum_pnl_cny.round_dp(2),
                    r.soc_pct
                );
                out.write_all(line.as_bytes())?;
            }
        }
        Ok(())
    }

    /// A human summary: the run, the DST handling, and one line per strategy.
    pub fn summary(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "backtest {} .. {} (seed {}, forecast {:?}, {} intervals delivered, {} without price, {} strategy events)",
            self.from,
            self.to,
            self.seed,
            self.config.forecast,
            self.intervals_delivered,
            self.intervals_without_price,
            self.events
        );
        let dst: Vec<String> = self
            .dst_days
            .iter()
            .map(|d| format!("{} has {} intervals", d.day, d.intervals))
            .collect();
        let _ = writeln!(
            o,
            "daylight saving: {} spring hours absent from the file, {} repeated autumn hours mapped to the later UTC hour, {} nonexistent rows skipped, {} UTC gap hours; in this run: {}",
            self.dst.missing_spring_hours.len(),
            self.dst.repeated_autumn_hours.len(),
            self.dst.nonexistent_rows_skipped.len(),
            self.dst.utc_gaps_hours,
            if dst.is_empty() { "none".to_owned() } else { dst.join(", ") }
        );
        let _ = writeln!(
            o,
            "{:<30} {:>14} {:>10} {:>10} {:>7} {:>12} {:>8} {:>11}  rejects",
            "strategy",
            "pnl_cny",
            "bought_mwh",
            "sold_mwh",
            "fills",
            "max_dd_cny",
            "cycles",
            "undeliv_mwh"
        );
        for s in &self.strategies {
            let rejects: Vec<String> = s.rejects.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                o,
                "{:<30} {:>14} {:>10} {:>10} {:>7} {:>12} {:>8} {:>11}  {}",
                format!("{} ({})", s.name, s.role),
                s.pnl_cny.round_dp(2),
                s.bought_mwh.round_dp(3),
                s.sold_mwh.round_dp(3),
                s.fills,
                s.max_drawdown_cny.round_dp(2),
                s.full_cycle_equivalents,
                s.undelivered_mwh.round_dp(3),
                if rejects.is_empty() {
                    "none".to_owned()
                } else {
                    rejects.join(" ")
                }
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_formatted_times_match_display() {
        let mut t = chrono::NaiveDate::from_ymd_opt(1999, 12, 31)
            .and_then(|d| d.and_hms_opt(22, 0, 0))
            .map(|t| t.and_utc())
            .unwrap();
        for _ in 0..300 {
            let i = DeliveryInterval::containing(t);
            let mut out = String::new();
            push_interval(&mut out, i);
            out.push(' ');
            push_date(&mut out, t.date_naive());
            assert_eq!(out, format!("{i} {}", t.date_naive()));
            t += chrono::Duration::minutes(15 * 97);
        }
        for d in [
            chrono::NaiveDate::from_ymd_opt(5, 1, 2).unwrap(),
            chrono::NaiveDate::from_ymd_opt(-3, 1, 2).unwrap(),
            chrono::NaiveDate::from_ymd_opt(12345, 6, 7).unwrap(),
        ] {
            let mut out = String::new();
            push_date(&mut out, d);
            assert_eq!(out, d.to_string());
        }
    }
}
