//! Historical prices for the backtest: a local-time CSV (the ENTSO-E export format,
//! `interval_start_local,price_eur_per_mwh`), hourly or 15-minute, converted with a fixed
//! currency rate into a series of 15-minute [`DeliveryInterval`]s.
//!
//! Invariants:
//! - The file is streamed: one reused line buffer, and the series stores 16 bytes per
//!   15-minute interval in contiguous runs (a gap starts a new run). No span limit; the
//!   row bound [`DEFAULT_MAX_ROWS`] (≈ 285 years of 15-minute rows, 160 MB) is the only one.
//! - The resolution is the UTC step between the first two rows: 60 minutes (every hour
//!   becomes four intervals with the hour's price) or 15 minutes (one interval per row).
//!   Prices are × `currency_factor`, rounded to 0.01 CNY/MWh.
//! - Rows must run forward in time: a row at or before the end of the previous one is an
//!   error (a duplicate timestamp outside the repeated autumn hour, or out of order).
//! - Daylight saving is handled explicitly and reported by local date in [`DstReport`]:
//!   a spring-forward hour absent from the file is recorded as `missing_spring_hours` (no
//!   UTC gap); a row at a local time that does not exist is skipped and recorded; the second
//!   row of a repeated autumn hour maps to the later UTC instant (`repeated_autumn_hours`); a
//!   third occurrence is an error. Real UTC holes are counted in `utc_gaps_hours`.
//! - Errors name the line and the column (1 = time, 2 = price) and what was wrong; the
//!   caller adds the file name. Nothing here panics on input. Lines are at most
//!   [`MAX_LINE_BYTES`].

use crate::market::{DeliveryInterval, INTERVAL_MINUTES};

const INTERVAL_SECONDS: i64 = INTERVAL_MINUTES * 60;
use chrono::{LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::str::FromStr;
use thiserror::Error;

/// Longest accepted CSV line, bytes.
pub const MAX_LINE_BYTES: usize = 256;
/// Default row bound: 10 million rows (≈ 285 years of 15-minute rows, 160 MB of prices).
pub const DEFAULT_MAX_ROWS: usize = 10_000_000;
/// Most DST dates listed in a report (the counts stay exact).
const MAX_LISTED_DST: usize = 128;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PriceLoadError {
    #[error("price CSV: cannot read: {0}")]
    Io(String),
    #[error("price CSV line {line}, column {column}: {reason}")]
    Line {
        line: usize,
        /// 1 = the local start time, 2 = the price; 0 = the line as a whole.
        column: usize,
        reason: String,
    },
    #[error("price CSV has more than {0} data rows; split the file")]
    TooManyRows(usize),
    #[error("price CSV holds no price rows")]
    Empty,
}

/// What loading did with the daylight-saving oddities of a local-time file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DstReport {
    /// Local hours (`YYYY-MM-DDTHH:MM`) the clock skipped (spring forward) and the file
    /// therefore lacks. Not a data hole: UTC runs on without a gap.
    pub missing_spring_hours: Vec<String>,
    /// Rows at a local time that does not exist; skipped.
    pub nonexistent_rows_skipped: Vec<String>,
    /// Local hours that appear twice (fall back); the second row is the later UTC hour.
    pub repeated_autumn_hours: Vec<String>,
    /// Hours missing in UTC between the first and last row (real data holes).
    pub utc_gaps_hours: u64,
}

/// Consecutive intervals from `first_epoch_seconds`, one price each.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    first_epoch_seconds: i64,
    prices: Vec<Decimal>,
}

impl Run {
    fn end_epoch_seconds(&self) -> i64 {
        self.first_epoch_seconds + INTERVAL_SECONDS * self.prices.len() as i64
    }
}

/// A loaded series with its load report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceSeries {
    /// Runs in time order, disjoint and not touching (a gap separates two runs).
    runs: Vec<Run>,
    len: usize,
    pub rows_read: usize,
    pub dst: DstReport,
}

impl PriceSeries {
    /// A series from explicit interval prices (tests, synthetic runs); the last price given
    /// for an interval wins.
    pub fn from_intervals(points: impl IntoIterator<Item = (DeliveryInterval, Decimal)>) -> Self {
        let prices: BTreeMap<_, _> = points.into_iter().collect();
        let mut s = Self {
            runs: Vec::new(),
            len: 0,
            rows_read: prices.len(),
            dst: DstReport::default(),
        };
        for (interval, price) in prices {
            s.push(interval.epoch_seconds(), price);
        }
        s
    }

    /// Appends an interval after the last one.
    fn push(&mut self, epoch_seconds: i64, price: Decimal) {
        match self.runs.last_mut() {
            Some(run) if run.end_epoch_seconds() == epoch_seconds => run.prices.push(price),
            _ => self.runs.push(Run {
                first_epoch_seconds: epoch_seconds,
                prices: vec![price],
            }),
        }
        self.len += 1;
    }

    pub fn get(&self, interval: DeliveryInterval) -> Option<Decimal> {
        let at = interval.epoch_seconds();
        // Almost always one run; else the last run starting at or before `at`.
        let run = match self.runs.as_slice() {
            [only] => only,
            runs => {
                let i = runs.partition_point(|r| r.first_epoch_seconds <= at);
                runs.get(i.checked_sub(1)?)?
            }
        };
        let offset = at - run.first_epoch_seconds;
        if offset < 0 {
            return None;
        }
        run.prices
            .get(usize::try_from(offset / INTERVAL_SECONDS).ok()?)
            .copied()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn first(&self) -> Option<DeliveryInterval> {
        let run = self.runs.first()?;
        DeliveryInterval::from_epoch_seconds(run.first_epoch_seconds).ok()
    }

    pub fn last(&self) -> Option<DeliveryInterval> {
        let run = self.runs.last()?;
        DeliveryInterval::from_epoch_seconds(run.end_epoch_seconds() - INTERVAL_SECONDS).ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = (DeliveryInterval, Decimal)> + '_ {
        self.runs.iter().flat_map(|run| {
            run.prices.iter().zip(0i64..).filter_map(|(p, i)| {
                DeliveryInterval::from_epoch_seconds(run.first_epoch_seconds + i * INTERVAL_SECONDS)
                    .ok()
                    .map(|interval| (interval, *p))
            })
        })
    }
}

/// How to read the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvFormat {
    /// Time zone of the local timestamps.
    pub timezone: Tz,
    /// Multiplies every price into CNY/MWh (e.g. a fixed EUR→CNY rate).
    pub currency_factor: Decimal,
    pub max_rows: usize,
}

/// Loads a local-time price CSV (header line, then `local_start,price`), hourly or
/// 15-minute (see the module invariants), streaming it line by line.
pub fn load_hourly_csv(
    mut reader: impl BufRead,
    format: &CsvFormat,
) -> Result<PriceSeries, PriceLoadError> {
    let mut loader = Loader {
        format,
        series: PriceSeries {
            runs: Vec::new(),
            len: 0,
            rows_read: 0,
            dst: DstReport::default(),
        },
        previous: None,
        step_seconds: None,
        first_utc: None,
        offsets: None,
    };
    let mut header = true;
    let mut buf = String::with_capacity(MAX_LINE_BYTES);
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_line(&mut buf)
            .map_err(|e| PriceLoadError::Io(e.to_string()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.len() > MAX_LINE_BYTES + 2 || buf.trim_end().len() > MAX_LINE_BYTES {
            return Err(PriceLoadError::Line {
                line: line_no,
                column: 0,
                reason: format!("longer than {MAX_LINE_BYTES} bytes"),
            });
        }
        let text = buf.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        if header {
            header = false;
            check_header(text, line_no)?;
            continue;
        }
        loader.series.rows_read += 1;
        if loader.series.rows_read > format.max_rows {
            return Err(PriceLoadError::TooManyRows(format.max_rows));
        }
        loader.row(text, line_no)?;
    }
    loader.finish()
}

fn check_header(text: &str, line: usize) -> Result<(), PriceLoadError> {
    let columns: Vec<&str> = text.split(',').map(str::trim).collect();
    let bad = |column, reason: String| {
        Err(PriceLoadError::Line {
            line,
            column,
            reason,
        })
    };
    if !columns[0].starts_with("interval_start") {
        return bad(
            1,
            format!("header {text:?}: expected interval_start_local,price_eur_per_mwh"),
        );
    }
    match columns.len() {
        2 => Ok(()),
        1 => bad(
            2,
            format!("header {text:?}: the price column is missing (expected interval_start_local,price_eur_per_mwh)"),
        ),
        n => bad(
            3,
            format!("header {text:?}: {n} columns; expected 2 (interval_start_local,price_eur_per_mwh)"),
        ),
    }
}

/// The UTC offset of a local day when it is the same at both of its midnights (no clock
/// change that day): rows of such a day convert without a time-zone lookup.
#[derive(Debug, Clone, Copy)]
struct DayOffset {
    day: NaiveDate,
    fixed_seconds: Option<i64>,
}

struct Loader<'a> {
    format: &'a CsvFormat,
    series: PriceSeries,
    /// The previous stored row: local time, UTC start, line.
    previous: Option<(NaiveDateTime, i64, usize)>,
    /// The resolution, once two rows have been seen (900 or 3600).
    step_seconds: Option<i64>,
    /// The first stored row's UTC start and local time, until the resolution is known.
    first_utc: Option<(i64, NaiveDateTime, Decimal, usize)>,
    offsets: Option<DayOffset>,
}

fn push_bounded(list: &mut Vec<String>, item: String) {
    if list.len() < MAX_LISTED_DST {
        list.push(item);
    }
}

/// `YYYY-MM-DD[T ]HH:MM[:SS]`, strictly.
fn parse_local(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    if !(b.len() == 16 || b.len() == 19) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let mut v = 0u32;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Some(v)
    };
    let sep_ok = b[4] == b'-' && b[7] == b'-' && (b[10] == b'T' || b[10] == b' ') && b[13] == b':';
    if !sep_ok || (b.len() == 19 && b[16] != b':') {
        return None;
    }
    let year = i32::try_from(num(0..4)?).ok()?;
    let seconds = if b.len() == 19 { num(17..19)? } else { 0 };
    NaiveDate::from_ymd_opt(year, num(5..7)?, num(8..10)?)?.and_hms_opt(
        num(11..13)?,
        num(14..16)?,
        seconds,
    )
}

impl Loader<'_> {
    fn row(&mut self, text: &str, line: usize) -> Result<(), PriceLoadError> {
        let bad = |column, reason: String| PriceLoadError::Line {
            line,
            column,
            reason,
        };
        let Some((start, rest)) = text.split_once(',') else {
            return Err(bad(
                2,
                format!("the price column is missing: expected `local_start,price`, got {text:?}"),
            ));
        };
        if rest.contains(',') {
            return Err(bad(
                3,
                format!(
                    "{} columns; expected 2 (`local_start,price`)",
                    text.split(',').count()
                ),
            ));
        }
        let (start, price) = (start.trim(), rest.trim());
        let naive = parse_local(start).ok_or_else(|| {
            bad(
                1,
                format!("{start:?} is not a local time YYYY-MM-DDTHH:MM[:SS]"),
            )
        })?;
        if naive.second() != 0 || naive.minute() % 15 != 0 {
            return Err(bad(1, format!("{start:?} is not on the 15-minute grid")));
        }
        let price = Decimal::from_str(price)
            .map_err(|e| bad(2, format!("price {price:?} is not a decimal: {e}")))?;
        let price = price
            .checked_mul(self.format.currency_factor)
            .ok_or_else(|| {
                bad(
                    2,
                    format!("price {price} times the currency rate overflows"),
                )
            })?
            .round_dp(2);
        let Some(utc) = self.utc_of(naive, line)? else {
            return Ok(());
        };
        self.note_spring_gap(naive, utc);
        self.store(naive, utc, price, line)
    }

    /// The row's UTC start; `None` for a local time that does not exist (skipped, recorded).
    fn utc_of(&mut self, naive: NaiveDateTime, line: usize) -> Result<Option<i64>, PriceLoadError> {
        let day = naive.date();
        let offset = match self.offsets {
            Some(o) if o.day == day => o.fixed_seconds,
            _ => {
                let o = DayOffset {
                    day,
                    fixed_seconds: self.fixed_offset(day),
                };
                self.offsets = Some(o);
                o.fixed_seconds
            }
        };
        if let Some(seconds) = offset {
            return Ok(Some(naive.and_utc().timestamp() - seconds));
        }
        let label = naive.format("%Y-%m-%dT%H:%M").to_string();
        match self.format.timezone.from_local_datetime(&naive) {
            LocalResult::Single(t) => Ok(Some(t.with_timezone(&Utc).timestamp())),
            LocalResult::None => {
                push_bounded(&mut self.series.dst.nonexistent_rows_skipped, label);
                Ok(None)
            }
            LocalResult::Ambiguous(earlier, later) => {
                let (earlier, later) = (earlier.timestamp(), later.timestamp());
                let prev_utc = self.previous.map(|(_, u, _)| u);
                if prev_utc.is_none_or(|p| earlier > p) {
                    return Ok(Some(earlier));
                }
                if prev_utc.is_some_and(|p| later <= p) {
                    return Err(PriceLoadError::Line {
                        line,
                        column: 1,
                        reason: format!("local time {label} appears a third time"),
                    });
                }
                let hour = naive.format("%Y-%m-%dT%H:00").to_string();
                if self.series.dst.repeated_autumn_hours.last() != Some(&hour) {
                    push_bounded(&mut self.series.dst.repeated_autumn_hours, hour);
                }
                Ok(Some(later))
            }
        }
    }

    /// The day's UTC offset in seconds when both its midnights have the same one.
    fn fixed_offset(&self, day: NaiveDate) -> Option<i64> {
        let tz = self.format.timezone;
        let at = |d: NaiveDate| -> Option<i64> {
            let local = d.and_hms_opt(0, 0, 0)?;
            match tz.from_local_datetime(&local) {
                LocalResult::Single(t) => Some(local.and_utc().timestamp() - t.timestamp()),
                _ => None,
            }
        };
        let today = at(day)?;
        (at(day.succ_opt()?)? == today).then_some(today)
    }

    /// A local step over the resolution while UTC moves one step is the skipped
    /// spring-forward hour.
    fn note_spring_gap(&mut self, naive: NaiveDateTime, utc: i64) {
        let Some((prev_naive, prev_utc, _)) = self.previous else {
            return;
        };
        let step = self.step_seconds.unwrap_or(utc - prev_utc);
        if step <= 0 || utc - prev_utc != step {
            return;
        }
        let local_step = (naive - prev_naive).num_seconds();
        if local_step <= step {
            return;
        }
        let mut missing = prev_naive + chrono::Duration::seconds(step);
        while missing < naive && self.series.dst.missing_spring_hours.len() < MAX_LISTED_DST {
            if missing.minute() == 0 {
                push_bounded(
                    &mut self.series.dst.missing_spring_hours,
                    missing.format("%Y-%m-%dT%H:%M").to_string(),
                );
            }
            missing += chrono::Duration::seconds(step);
        }
    }

    fn store(
        &mut self,
        naive: NaiveDateTime,
        utc: i64,
        price: Decimal,
        line: usize,
    ) -> Result<(), PriceLoadError> {
        let bad = |reason: String| PriceLoadError::Line {
            line,
            column: 1,
            reason,
        };
        if utc % INTERVAL_SECONDS != 0 {
            return Err(bad(format!(
                "{} is not on the 15-minute grid in UTC",
                naive.format("%Y-%m-%dT%H:%M")
            )));
        }
        if let Some((prev_naive, prev_utc, prev_line)) = self.previous {
            if utc <= prev_utc {
                let what = if utc == prev_utc {
                    "duplicate timestamp"
                } else {
                    "out of order"
                };
                return Err(bad(format!(
                    "{what}: {} is not after line {prev_line} ({}); rows must run forward in time",
                    naive.format("%Y-%m-%dT%H:%M"),
                    prev_naive.format("%Y-%m-%dT%H:%M")
                )));
            }
        }
        self.previous = Some((naive, utc, line));
        let step = match (self.step_seconds, self.first_utc) {
            (Some(step), _) => step,
            (None, None) => {
                // The resolution is known at the second row.
                self.first_utc = Some((utc, naive, price, line));
                return Ok(());
            }
            (None, Some((first, first_naive, first_price, first_line))) => {
                let step = utc - first;
                if step != 900 && step != 3600 {
                    return Err(bad(format!(
                        "{} minutes after the first row ({}, line {first_line}); the first two rows must be 15 or 60 minutes apart (the resolution)",
                        step / 60,
                        first_naive.format("%Y-%m-%dT%H:%M")
                    )));
                }
                self.step_seconds = Some(step);
                self.put(first, step, first_price);
                step
            }
        };
        if let Some(last) = self.series.runs.last() {
            if utc < last.end_epoch_seconds() {
                return Err(bad(format!(
                    "{} starts inside the previous row's {}-minute interval",
                    naive.format("%Y-%m-%dT%H:%M"),
                    step / 60
                )));
            }
        }
        self.put(utc, step, price);
        Ok(())
    }

    fn put(&mut self, utc: i64, step: i64, price: Decimal) {
        let mut at = utc;
        while at < utc + step {
            self.series.push(at, price);
            at += INTERVAL_SECONDS;
        }
    }

    fn finish(mut self) -> Result<PriceSeries, PriceLoadError> {
        if let (None, Some((first, _, price, _))) = (self.step_seconds, self.first_utc) {
            // A single row: hourly, as the format's name says.
            self.put(first, 3600, price);
        }
        let s = &mut self.series;
        let (Some(first), Some(last)) = (s.runs.first(), s.runs.last()) else {
            return Err(PriceLoadError::Empty);
        };
        let span = (last.end_epoch_seconds() - first.first_epoch_seconds) / INTERVAL_SECONDS;
        let span_hours = span / 4;
        let have_hours = i64::try_from(s.len / 4).unwrap_or(i64::MAX);
        s.dst.utc_gaps_hours = u64::try_from(span_hours - have_hours).unwrap_or(0);
        Ok(self.series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn fmt() -> CsvFormat {
        CsvFormat {
            timezone: chrono_tz::Europe::Brussels,
            currency_factor: dec!(7.8),
            max_rows: 100,
        }
    }

    #[test]
    fn runs_answer_inside_outside_and_in_gaps() {
        let at = |secs: i64| DeliveryInterval::from_epoch_seconds(secs).expect("aligned");
        let base = 1_700_000_100; // on the 15-minute grid
        let points = [
            (at(base), dec!(10)),
            (at(base + 900), dec!(-20.5)),
            (at(base + 5 * 900), dec!(30)),
        ];
        let series = PriceSeries::from_intervals(points);
        assert_eq!(series.runs.len(), 2, "a gap starts a new run");
        let tree: BTreeMap<_, _> = points.into_iter().collect();
        for k in -3..9 {
            let i = at(base + k * 900);
            assert_eq!(series.get(i), tree.get(&i).copied(), "interval {k}");
        }
        assert_eq!(series.get(at(base + 900)), Some(dec!(-20.5)));
        assert_eq!(series.get(at(base + 2 * 900)), None, "a gap has no price");
        assert_eq!(series.get(at(base - 900)), None, "before the first");
        assert_eq!(series.get(at(base + 6 * 900)), None, "after the last");
        assert_eq!(series.iter().collect::<Vec<_>>(), points.to_vec());
        assert_eq!(
            (series.first(), series.last()),
            (Some(at(base)), Some(at(base + 5 * 900)))
        );
    }

    #[test]
    fn a_series_spanning_centuries_costs_only_its_rows() {
        let at = |secs: i64| DeliveryInterval::from_epoch_seconds(secs).expect("aligned");
        let far = 200 * 365 * 96 * INTERVAL_SECONDS;
        let series = PriceSeries::from_intervals([(at(0), dec!(1)), (at(far), dec!(2))]);
        assert_eq!(series.len(), 2);
        assert_eq!(series.get(at(0)), Some(dec!(1)));
        assert_eq!(series.get(at(far)), Some(dec!(2)));
        assert_eq!(series.get(at(900)), None);
    }

    #[test]
    fn spring_and_autumn_hours_are_reported_and_mapped() {
        let csv = "interval_start_local,price_eur_per_mwh\n\
            2023-03-26T01:00:00,10\n2023-03-26T03:00:00,20\n\
            2023-10-29T01:00:00,1\n2023-10-29T02:00:00,2\n2023-10-29T02:00:00,3\n2023-10-29T03:00:00,4\n";
        let s = load_hourly_csv(csv.as_bytes(), &fmt()).unwrap();
        assert_eq!(s.dst.missing_spring_hours, vec!["2023-03-26T02:00"]);
        assert_eq!(s.dst.repeated_autumn_hours, vec!["2023-10-29T02:00"]);
        assert_eq!(s.len(), 6 * 4);
        // 02:00 CEST = 00:00Z; second 02:00 (CET) = 01:00Z, priced 3 × 7.8.
        let second =
            DeliveryInterval::starting_at(Utc.with_ymd_and_hms(2023, 10, 29, 1, 45, 0).unwrap())
                .unwrap();
        assert_eq!(s.get(second), Some(dec!(23.4)));
        // Spring: 01:00 CET = 00:00Z and 03:00 CEST = 01:00Z: no UTC gap.
        let gaps_between = s.iter().take(8).map(|(i, _)| i.start()).collect::<Vec<_>>();
        assert_eq!((gaps_between[7] - gaps_between[0]).num_minutes(), 105);
    }

    #[test]
    fn bad_rows_name_the_line() {
        let csv = "interval_start_local,price\n2023-01-01T00:00:00,abc\n";
        let err = load_hourly_csv(csv.as_bytes(), &fmt()).unwrap_err();
        assert!(matches!(err, PriceLoadError::Line { line: 2, .. }), "{err}");
        let thrice = "interval_start_local,p\n2023-10-29T02:00:00,1\n2023-10-29T02:00:00,1\n2023-10-29T02:00:00,1\n";
        let err = load_hourly_csv(thrice.as_bytes(), &fmt()).unwrap_err();
        assert!(err.to_string().contains("third time"), "{err}");
        let skipped = "interval_start_local,p\n2023-03-26T02:00:00,1\n2023-03-26T03:00:00,1\n";
        let s = load_hourly_csv(skipped.as_bytes(), &fmt()).unwrap();
        assert_eq!(s.dst.nonexistent_rows_skipped, vec!["2023-03-26T02:00"]);
        assert_eq!(
            load_hourly_csv("interval_start,p\n".as_bytes(), &fmt()),
            Err(PriceLoadError::Empty)
        );
    }

    fn line_err(csv: &str) -> (usize, usize, String) {
        match load_hourly_csv(csv.as_bytes(), &fmt()) {
            Err(PriceLoadError::Line {
                line,
                column,
                reason,
            }) => (line, column, reason),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn every_kind_of_bad_row_names_its_line_and_column() {
        const H: &str = "interval_start_local,price_eur_per_mwh\n";
        let cases: [(&str, usize, usize, &str); 9] = [
            ("2023-01-01T00:00:00,abc\n", 2, 2, "not a decimal"),
            ("2023-01-01T00:00:00\n", 2, 2, "price column is missing"),
            ("2023-01-01T00:00:00,1,2\n", 2, 3, "expected 2"),
            ("2023-13-01T00:00:00,1\n", 2, 1, "not a local time"),
            ("2023-01-01T00:07:00,1\n", 2, 1, "15-minute grid"),
            (
                "2023-01-01T00:00:00,1\n2023-01-01T01:00:00,1\n2023-01-01T01:00:00,2\n",
                4,
                1,
                "duplicate timestamp",
            ),
            (
                "2023-01-01T00:00:00,1\n2023-01-01T01:00:00,1\n2023-01-01T00:00:00,2\n",
                4,
                1,
                "out of order",
            ),
            (
                "2023-01-01T00:00:00,1\n2023-01-01T00:15:00,1\n2023-01-01T00:15:00,2\n",
                4,
                1,
                "duplicate timestamp",
            ),
            (
                "2023-01-01T00:00:00,1\n2023-01-01T00:30:00,1\n",
                3,
                1,
                "15 or 60 minutes apart",
            ),
        ];
        for (rows, line, column, what) in cases {
            let (l, c, reason) = line_err(&format!("{H}{rows}"));
            assert_eq!((l, c), (line, column), "{rows:?}: {reason}");
            assert!(reason.contains(what), "{rows:?}: {reason}");
        }
        let (l, c, reason) = line_err("interval_start_local\n2023-01-01T00:00:00,1\n");
        assert_eq!((l, c), (1, 2), "{reason}");
        let (l, c, reason) = line_err("time,price\n2023-01-01T00:00:00,1\n");
        assert_eq!((l, c), (1, 1), "{reason}");
        // An hourly file with a row inside the previous hour.
        let (l, c, reason) = line_err(&format!(
            "{H}2023-01-01T00:00:00,1\n2023-01-01T01:00:00,1\n2023-01-01T01:15:00,1\n"
        ));
        assert_eq!((l, c), (4, 1), "{reason}");
        let err = load_hourly_csv(format!("{H}2023-01-01T00:00:00,1\n").as_bytes(), &fmt())
            .unwrap()
            .len();
        assert_eq!(err, 4, "a single row is an hour");
    }

    #[test]
    fn quarter_hour_series_map_one_row_to_one_interval_across_dst() {
        let mut csv = String::from("interval_start_local,price_eur_per_mwh\n");
        // Autumn 2023: 02:00..02:45 local appear twice (CEST then CET).
        for (h, m, p) in [
            (1, 0, 1),
            (1, 15, 2),
            (1, 30, 3),
            (1, 45, 4),
            (2, 0, 5),
            (2, 15, 6),
            (2, 30, 7),
            (2, 45, 8),
            (2, 0, 9),
            (2, 15, 10),
            (2, 30, 11),
            (2, 45, 12),
            (3, 0, 13),
        ] {
            csv.push_str(&format!("2023-10-29T{h:02}:{m:02}:00,{p}\n"));
        }
        let s = load_hourly_csv(csv.as_bytes(), &fmt()).unwrap();
        assert_eq!(s.len(), 13);
        assert_eq!(s.dst.repeated_autumn_hours, vec!["2023-10-29T02:00"]);
        assert_eq!(s.dst.utc_gaps_hours, 0);
        // The second 02:15 (CET) is 01:15Z, priced 10 × 7.8.
        let second =
            DeliveryInterval::starting_at(Utc.with_ymd_and_hms(2023, 10, 29, 1, 15, 0).unwrap())
                .unwrap();
        assert_eq!(s.get(second), Some(dec!(78.0)));
        // Spring 2023: 01:45 CET then 03:00 CEST is one quarter in UTC.
        let spring = "interval_start_local,p\n2023-03-26T01:30:00,1\n2023-03-26T01:45:00,1\n2023-03-26T03:00:00,1\n";
        let s = load_hourly_csv(spring.as_bytes(), &fmt()).unwrap();
        assert_eq!(s.dst.missing_spring_hours, vec!["2023-03-26T02:00"]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.dst.utc_gaps_hours, 0);
    }
}
