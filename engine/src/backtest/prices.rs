//! Historical prices for the backtest: an hourly local-time CSV (the ENTSO-E export format,
//! `interval_start_local,price_eur_per_mwh`) converted with a fixed currency rate into a
//! series of 15-minute [`DeliveryInterval`]s.
//!
//! Invariants:
//! - Every hour becomes four 15-minute intervals with the hour's price (× `currency_factor`,
//!   rounded to 0.01 CNY/MWh). Intervals are unique and sorted.
//! - Daylight saving is handled explicitly and reported by local date in [`DstReport`]:
//!   a spring-forward hour absent from the file is recorded as `missing_spring_hours` (no
//!   UTC gap); a row at a local time that does not exist is skipped and recorded; the second
//!   row of a repeated autumn hour maps to the later UTC instant (`repeated_autumn_hours`); a
//!   third occurrence is a duplicate error. Real UTC holes are counted in `utc_gaps_hours`.
//! - Input is bounded: at most `max_rows` data rows, lines of at most [`MAX_LINE_BYTES`].
//!   Errors name the line and what was wrong. Nothing here panics on input.

use crate::market::{DeliveryInterval, INTERVAL_MINUTES};

const INTERVAL_SECONDS: i64 = INTERVAL_MINUTES * 60;
use chrono::{LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::str::FromStr;
use thiserror::Error;

/// Longest accepted CSV line, bytes.
pub const MAX_LINE_BYTES: usize = 256;
/// Default row limit: 30 years of hours.
pub const DEFAULT_MAX_ROWS: usize = 300_000;
/// Most DST dates listed in a report (the counts stay exact).
const MAX_LISTED_DST: usize = 128;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PriceLoadError {
    #[error("price CSV: cannot read: {0}")]
    Io(String),
    #[error("price CSV line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("price CSV has more than {0} data rows; raise the row limit or split the file")]
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

/// Widest span of intervals indexed densely (≈ 120 years of 15-minute intervals); a wider,
/// sparse series is looked up in its B-tree instead.
const MAX_DENSE_INTERVALS: i64 = 4_200_000;

/// A loaded series with its load report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceSeries {
    prices: BTreeMap<DeliveryInterval, Decimal>,
    /// The same prices by interval number from the first (`dense[i]` is the interval starting
    /// `first + i × 15 min`): the replay asks for several prices per step, and a B-tree walk
    /// comparing chrono timestamps was its largest cost.
    dense: DenseIndex,
    pub rows_read: usize,
    pub dst: DstReport,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DenseIndex {
    first_epoch_seconds: i64,
    prices: Vec<Option<Decimal>>,
}

impl DenseIndex {
    fn build(prices: &BTreeMap<DeliveryInterval, Decimal>) -> Self {
        let (Some(first), Some(last)) = (prices.keys().next(), prices.keys().next_back()) else {
            return Self::default();
        };
        let first_epoch_seconds = first.epoch_seconds();
        let span = (last.epoch_seconds() - first_epoch_seconds) / INTERVAL_SECONDS + 1;
        if span > MAX_DENSE_INTERVALS {
            return Self::default();
        }
        let mut dense = vec![None; usize::try_from(span).unwrap_or(0)];
        for (interval, price) in prices {
            let i = (interval.epoch_seconds() - first_epoch_seconds) / INTERVAL_SECONDS;
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| dense.get_mut(i)) {
                *slot = Some(*price);
            }
        }
        Self {
            first_epoch_seconds,
            prices: dense,
        }
    }

    /// `None` when the index does not cover the interval (outside it, or no index built).
    fn get(&self, interval: DeliveryInterval) -> Option<Option<Decimal>> {
        if self.prices.is_empty() {
            return None;
        }
        let offset = interval.epoch_seconds() - self.first_epoch_seconds;
        if offset < 0 {
            return Some(None);
        }
        let i = usize::try_from(offset / INTERVAL_SECONDS).ok()?;
        Some(self.prices.get(i).copied().flatten())
    }
}

impl PriceSeries {
    /// A series from explicit interval prices (tests, synthetic runs).
    pub fn from_intervals(points: impl IntoIterator<Item = (DeliveryInterval, Decimal)>) -> Self {
        let prices: BTreeMap<_, _> = points.into_iter().collect();
        Self {
            rows_read: prices.len(),
            dense: DenseIndex::build(&prices),
            prices,
            dst: DstReport::default(),
        }
    }

    pub fn get(&self, interval: DeliveryInterval) -> Option<Decimal> {
        match self.dense.get(interval) {
            Some(price) => price,
            None => self.prices.get(&interval).copied(),
        }
    }

    pub fn len(&self) -> usize {
        self.prices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    pub fn first(&self) -> Option<DeliveryInterval> {
        self.prices.keys().next().copied()
    }

    pub fn last(&self) -> Option<DeliveryInterval> {
        self.prices.keys().next_back().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (DeliveryInterval, Decimal)> + '_ {
        self.prices.iter().map(|(k, v)| (*k, *v))
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

/// Loads an hourly local-time price CSV (header line, then `local_start,price`).
pub fn load_hourly_csv(
    reader: impl BufRead,
    format: &CsvFormat,
) -> Result<PriceSeries, PriceLoadError> {
    let mut loader = Loader {
        format,
        prices: BTreeMap::new(),
        seen_ambiguous: BTreeMap::new(),
        previous: None,
        dst: DstReport::default(),
        rows: 0,
    };
    let mut header = true;
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let text = line.map_err(|e| PriceLoadError::Io(e.to_string()))?;
        if text.len() > MAX_LINE_BYTES {
            return Err(PriceLoadError::Line {
                line: line_no,
                reason: format!("longer than {MAX_LINE_BYTES} bytes"),
            });
        }
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        if header {
            header = false;
            if !text.starts_with("interval_start") {
                return Err(PriceLoadError::Line {
                    line: line_no,
                    reason: format!(
                        "header {text:?}: expected interval_start_local,price_eur_per_mwh"
                    ),
                });
            }
            continue;
        }
        loader.rows += 1;
        if loader.rows > format.max_rows {
            return Err(PriceLoadError::TooManyRows(format.max_rows));
        }
        loader.row(text, line_no)?;
    }
    loader.finish()
}

struct Loader<'a> {
    format: &'a CsvFormat,
    prices: BTreeMap<DeliveryInterval, Decimal>,
    /// Ambiguous local hours seen, and how many times.
    seen_ambiguous: BTreeMap<NaiveDateTime, u8>,
    previous: Option<(NaiveDateTime, chrono::DateTime<Utc>)>,
    dst: DstReport,
    rows: usize,
}

fn push_bounded(list: &mut Vec<String>, item: String) {
    if list.len() < MAX_LISTED_DST {
        list.push(item);
    }
}

impl Loader<'_> {
    fn row(&mut self, text: &str, line: usize) -> Result<(), PriceLoadError> {
        let bad = |reason: String| PriceLoadError::Line { line, reason };
        let (start, price) = text
            .split_once(',')
            .ok_or_else(|| bad(format!("expected `local_start,price`, got {text:?}")))?;
        let naive = parse_local(start.trim()).ok_or_else(|| {
            bad(format!(
                "{:?} is not a local time YYYY-MM-DDTHH:MM:SS",
                start.trim()
            ))
        })?;
        let price = Decimal::from_str(price.trim())
            .map_err(|e| bad(format!("price {:?} is not a decimal: {e}", price.trim())))?;
        let price = price
            .checked_mul(self.format.currency_factor)
            .ok_or_else(|| bad(format!("price {price} times the currency rate overflows")))?
            .round_dp(2);
        let label = naive.format("%Y-%m-%dT%H:%M").to_string();
        let utc = match self.format.timezone.from_local_datetime(&naive) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::None => {
                push_bounded(&mut self.dst.nonexistent_rows_skipped, label);
                return Ok(());
            }
            LocalResult::Ambiguous(earlier, later) => {
                let seen = self.seen_ambiguous.entry(naive).or_insert(0);
                *seen += 1;
                match *seen {
                    1 => earlier.with_timezone(&Utc),
                    2 => {
                        push_bounded(&mut self.dst.repeated_autumn_hours, label);
                        later.with_timezone(&Utc)
                    }
                    _ => return Err(bad(format!("local hour {label} appears a third time"))),
                }
            }
        };
        self.note_spring_gap(naive, utc);
        self.store(utc, price, line)
    }

    /// A local step of two hours over one UTC hour is the skipped spring-forward hour.
    fn note_spring_gap(&mut self, naive: NaiveDateTime, utc: chrono::DateTime<Utc>) {
        if let Some((prev_naive, prev_utc)) = self.previous {
            let utc_step = (utc - prev_utc).num_minutes();
            let local_step = (naive - prev_naive).num_minutes();
            if utc_step == 60 && local_step > 60 {
                let mut missing = prev_naive + chrono::Duration::hours(1);
                while missing < naive && self.dst.missing_spring_hours.len() < MAX_LISTED_DST {
                    push_bounded(
                        &mut self.dst.missing_spring_hours,
                        missing.format("%Y-%m-%dT%H:%M").to_string(),
                    );
                    missing += chrono::Duration::hours(1);
                }
            }
        }
        self.previous = Some((naive, utc));
    }

    fn store(
        &mut self,
        utc: chrono::DateTime<Utc>,
        price: Decimal,
        line: usize,
    ) -> Result<(), PriceLoadError> {
        let mut interval =
            DeliveryInterval::starting_at(utc).map_err(|e| PriceLoadError::Line {
                line,
                reason: e.to_string(),
            })?;
        for _ in 0..4 {
            if self.prices.insert(interval, price).is_some() {
                return Err(PriceLoadError::Line {
                    line,
                    reason: format!("interval {interval} already has a price"),
                });
            }
            interval = interval.next();
        }
        Ok(())
    }

    fn finish(mut self) -> Result<PriceSeries, PriceLoadError> {
        let (Some(first), Some(last)) = (
            self.prices.keys().next().copied(),
            self.prices.keys().next_back().copied(),
        ) else {
            return Err(PriceLoadError::Empty);
        };
        let span_hours = (last.end() - first.start()).num_hours();
        let have_hours = i64::try_from(self.prices.len() / 4).unwrap_or(i64::MAX);
        self.dst.utc_gaps_hours = u64::try_from(span_hours - have_hours).unwrap_or(0);
        Ok(PriceSeries {
            dense: DenseIndex::build(&self.prices),
            prices: self.prices,
            rows_read: self.rows,
            dst: self.dst,
        })
    }
}

fn parse_local(s: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
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
    fn dense_index_answers_like_the_tree_inside_outside_and_in_gaps() {
        let at = |secs: i64| DeliveryInterval::from_epoch_seconds(secs).expect("aligned");
        let base = 1_700_000_100; // on the 15-minute grid
        let series = PriceSeries::from_intervals([
            (at(base), dec!(10)),
            (at(base + 900), dec!(-20.5)),
            (at(base + 5 * 900), dec!(30)),
        ]);
        assert!(
            !series.dense.prices.is_empty(),
            "a narrow series is indexed densely"
        );
        for k in -3..9 {
            let i = at(base + k * 900);
            assert_eq!(
                series.get(i),
                series.prices.get(&i).copied(),
                "interval {k}"
            );
        }
        assert_eq!(series.get(at(base + 900)), Some(dec!(-20.5)));
        assert_eq!(series.get(at(base + 2 * 900)), None, "a gap has no price");
        assert_eq!(series.get(at(base - 900)), None, "before the first");
        assert_eq!(series.get(at(base + 6 * 900)), None, "after the last");
    }

    #[test]
    fn a_sparse_series_wider_than_the_dense_limit_uses_the_tree() {
        let at = |secs: i64| DeliveryInterval::from_epoch_seconds(secs).expect("aligned");
        let far = (MAX_DENSE_INTERVALS + 1) * INTERVAL_SECONDS;
        let series = PriceSeries::from_intervals([(at(0), dec!(1)), (at(far), dec!(2))]);
        assert!(series.dense.prices.is_empty(), "not indexed densely");
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
}
