//! The simulated other participants: a seeded price model, or prices loaded from a CSV.
//!
//! Owns the reference price of every delivery interval and the synthetic order flow built
//! around it (day-ahead supply and demand curves, real-time book liquidity). Invariants:
//!
//! - Deterministic: every output depends only on the config (seed included), the interval
//!   and, for real-time quotes, the step. Each call seeds its own `ChaCha8Rng` from
//!   `seed ^ mix(interval)` (plus a per-stream tag), so call order never matters.
//! - Every returned price is a `Decimal` rounded to 0.01 CNY/MWh inside `[floor, cap]`, and
//!   never negative unless `negative_prices_allowed`. Floats appear only inside the shape and
//!   noise arithmetic, never in a returned price or quantity.
//! - CSV loading is bounded (row limit, line length) and says what it did with the
//!   daylight-saving oddities of local-time files in a [`CsvLoadReport`].
//!
//! # Synthetic price
//!
//! `base + daily_amplitude × shape(local hour) + seasonal_amplitude × season(day of year)
//! + noise × N(0, 1)`, where `shape` has a morning peak near 08:00, an evening peak near
//! 19:00, a midday solar dip near 13:00 (deeper in summer) and a night trough, and `season`
//! is +1 in mid-January and −1 in mid-July. The local hour is taken in the model's time
//! zone ([`PriceModel::with_timezone`], default `Asia/Shanghai`).
//!
//! # CSV
//!
//! Two columns, a header line, then `interval_start,price`; the start is RFC 3339 (with an
//! offset) or a naive local time in [`CsvPriceSource::timezone`]. Prices are multiplied by
//! `currency_factor` (e.g. EUR→CNY), rounded to 0.01 and clamped to the limits. A row covers
//! `row_minutes` and is split into 15-minute intervals. Daylight saving:
//! - a local time that does not exist (spring forward) is skipped and counted;
//! - a local time that occurs twice (fall back): the first row maps to the earlier UTC
//!   instant and the second to the later one, counted; a third is a duplicate error;
//! - a spring-forward hour that is simply absent from the file (as ENTSO-E does it) is not a
//!   gap in UTC; it is counted as `dst_missing_local_hours`, real UTC gaps as `missing_rows`.
//!
//! Intervals the CSV does not cover fall back to the synthetic price.

use crate::sim::auction::AuctionBid;
use chrono::{DateTime, Datelike, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Read};
use std::path::Path;
use std::str::FromStr;
use thiserror::Error;
use vpp_engine::market::{DeliveryInterval, INTERVAL_MINUTES};
use vpp_engine::order::Side;

/// Stream tags keep the reference price, the auction curves and the RT quotes independent.
const STREAM_REFERENCE: u64 = 0x5EED_0001;
const STREAM_AUCTION: u64 = 0x5EED_0002;
const STREAM_REAL_TIME: u64 = 0x5EED_0003;
/// Steps of each synthetic auction curve on either side of the reference price.
const CURVE_STEPS: i32 = 5;
/// Levels per side the simulator posts into the real-time book.
const QUOTE_LEVELS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceModelConfig {
    pub seed: u64,
    pub base_cny_per_mwh: Decimal,
    pub daily_amplitude_cny_per_mwh: Decimal,
    pub seasonal_amplitude_cny_per_mwh: Decimal,
    pub noise_cny_per_mwh: Decimal,
    pub negative_prices_allowed: bool,
    pub floor_cny_per_mwh: Decimal,
    pub cap_cny_per_mwh: Decimal,
}

impl Default for PriceModelConfig {
    /// A Yunnan-like day-ahead market: 300 CNY/MWh base, cap 1500, floor 0.
    fn default() -> Self {
        Self {
            seed: 42,
            base_cny_per_mwh: Decimal::new(300, 0),
            daily_amplitude_cny_per_mwh: Decimal::new(120, 0),
            seasonal_amplitude_cny_per_mwh: Decimal::new(40, 0),
            noise_cny_per_mwh: Decimal::new(15, 0),
            negative_prices_allowed: false,
            floor_cny_per_mwh: Decimal::ZERO,
            cap_cny_per_mwh: Decimal::new(1500, 0),
        }
    }
}

impl PriceModelConfig {
    /// Floor below cap, amplitudes and noise not negative.
    pub fn validate(&self) -> Result<(), PriceModelError> {
        let bad =
            |field: &'static str, reason: String| Err(PriceModelError::Config { field, reason });
        if self.floor_cny_per_mwh >= self.cap_cny_per_mwh {
            return bad(
                "floor_cny_per_mwh",
                format!(
                    "{} must be below cap_cny_per_mwh {}",
                    self.floor_cny_per_mwh, self.cap_cny_per_mwh
                ),
            );
        }
        for (field, v) in [
            (
                "daily_amplitude_cny_per_mwh",
                self.daily_amplitude_cny_per_mwh,
            ),
            (
                "seasonal_amplitude_cny_per_mwh",
                self.seasonal_amplitude_cny_per_mwh,
            ),
            ("noise_cny_per_mwh", self.noise_cny_per_mwh),
        ] {
            if v < Decimal::ZERO {
                return bad(field, format!("{v} must be 0 or more"));
            }
        }
        Ok(())
    }

    /// Lowest price the model may return: the floor, or 0 where negative prices are banned.
    fn effective_floor(&self) -> Decimal {
        if self.negative_prices_allowed {
            self.floor_cny_per_mwh
        } else {
            self.floor_cny_per_mwh.max(Decimal::ZERO)
        }
    }

    /// Clamps to `[effective floor, cap]` (the cap wins if a bad config inverts them).
    fn clamp(&self, price: Decimal) -> Decimal {
        price.max(self.effective_floor()).min(self.cap_cny_per_mwh)
    }
}

/// How to read a price CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvPriceSource {
    /// Time zone of naive local timestamps (RFC 3339 timestamps carry their own offset).
    pub timezone: Tz,
    /// Multiplies every CSV price into CNY/MWh, e.g. an EUR→CNY rate of 7.8.
    pub currency_factor: Decimal,
    /// Minutes one row covers: 60 for hourly files, 15 for quarter-hourly.
    pub row_minutes: u32,
    /// Files with more data rows than this are refused.
    pub max_rows: usize,
    /// Lines longer than this many bytes are refused.
    pub max_line_bytes: usize,
}

impl CsvPriceSource {
    /// The ENTSO-E Belgian file: hourly, Europe/Brussels local time, prices in EUR/MWh.
    pub fn entsoe_hourly(timezone: Tz, eur_to_cny: Decimal) -> Self {
        Self {
            timezone,
            currency_factor: eur_to_cny,
            row_minutes: 60,
            max_rows: 200_000,
            max_line_bytes: 256,
        }
    }
}

/// What loading a CSV did, for the operator and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvLoadReport {
    pub rows_read: usize,
    pub intervals_loaded: usize,
    /// Rows at a local time the time zone skips (spring forward): skipped.
    pub nonexistent_local_skipped: usize,
    /// Second occurrences of a repeated local time (fall back), mapped to the later UTC hour.
    pub repeated_local_mapped_later: usize,
    /// Local hours absent from the file because the clock jumped forward (no UTC gap).
    pub dst_missing_local_hours: usize,
    /// Rows missing in UTC between the first and the last row (data holes).
    pub missing_rows: usize,
    /// Prices clamped into the model's floor/cap (or to 0 where negatives are banned).
    pub prices_clamped: usize,
}

#[derive(Debug, Error)]
pub enum PriceModelError {
    #[error("price model config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("price CSV: cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("price CSV line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("price CSV has more than {max_rows} data rows; raise max_rows or split the file")]
    TooManyRows { max_rows: usize },
    #[error("price CSV line {line}: interval {interval} already has a price (first on line {first_line})")]
    Duplicate {
        line: usize,
        first_line: usize,
        interval: DeliveryInterval,
    },
}

/// Price model of the other participants. Cheap to share behind an `Arc`; all methods `&self`.
#[derive(Debug, Clone)]
pub struct PriceModel {
    cfg: PriceModelConfig,
    timezone: Tz,
    /// CSV prices by interval start (epoch seconds), already in CNY/MWh and clamped.
    history: BTreeMap<i64, Decimal>,
    report: Option<CsvLoadReport>,
}

impl PriceModel {
    pub fn new(cfg: PriceModelConfig) -> Self {
        Self {
            cfg,
            timezone: chrono_tz::Asia::Shanghai,
            history: BTreeMap::new(),
            report: None,
        }
    }

    /// Time zone whose local hour drives the daily shape.
    pub fn with_timezone(mut self, timezone: Tz) -> Self {
        self.timezone = timezone;
        self
    }

    pub fn config(&self) -> &PriceModelConfig {
        &self.cfg
    }

    /// What the CSV load did, when the model came from a CSV.
    pub fn csv_report(&self) -> Option<&CsvLoadReport> {
        self.report.as_ref()
    }

    /// Loads prices from a CSV read from `reader` (see the module doc for the format).
    pub fn from_csv(
        reader: impl BufRead,
        source: &CsvPriceSource,
        cfg: PriceModelConfig,
    ) -> Result<Self, PriceModelError> {
        validate_source(source)?;
        let mut loader = CsvLoader::new(source, &cfg);
        loader.run(reader)?;
        let report = loader.finish();
        Ok(Self {
            history: loader.prices,
            report: Some(report),
            timezone: source.timezone,
            cfg,
        })
    }

    /// [`PriceModel::from_csv`] on a file.
    pub fn from_csv_path(
        path: impl AsRef<Path>,
        source: &CsvPriceSource,
        cfg: PriceModelConfig,
    ) -> Result<Self, PriceModelError> {
        let file = std::fs::File::open(path)?;
        Self::from_csv(std::io::BufReader::new(file), source, cfg)
    }

    /// The reference price of an interval: the CSV price if loaded, else the synthetic one.
    pub fn reference_price(&self, interval: DeliveryInterval) -> Decimal {
        if let Some(p) = self.history.get(&interval.epoch_seconds()) {
            return *p;
        }
        let mut rng = self.rng(interval, STREAM_REFERENCE);
        let price =
            self.shape_price(interval) + f64_of(self.cfg.noise_cny_per_mwh) * normal(&mut rng);
        self.to_price(price)
    }

    /// Synthetic day-ahead bids of the other participants: a must-run supply block at the
    /// floor, an inelastic demand block at the cap, and stepped curves on both sides of the
    /// reference price that cross close to it. Ids run from `first_bid_id`.
    pub fn participant_bids(
        &self,
        interval: DeliveryInterval,
        first_bid_id: u64,
    ) -> Vec<AuctionBid> {
        let reference = f64_of(self.reference_price(interval));
        let mut rng = self.rng(interval, STREAM_AUCTION);
        let step = (reference.abs() * 0.04).max(5.0);
        let block_mw = rng.gen_range(100.0..200.0);
        let mut curve: Vec<(Side, f64, f64)> = vec![
            (Side::Sell, f64::NEG_INFINITY, block_mw),
            (Side::Buy, f64::INFINITY, block_mw),
        ];
        for k in -CURVE_STEPS..=CURVE_STEPS {
            let offset = step * f64::from(k);
            let sell_price = reference + offset * rng.gen_range(0.8..1.2);
            let buy_price = reference - offset * rng.gen_range(0.8..1.2);
            curve.push((Side::Sell, sell_price, rng.gen_range(20.0..80.0)));
            curve.push((Side::Buy, buy_price, rng.gen_range(20.0..80.0)));
        }
        curve
            .into_iter()
            .zip(0u64..)
            .map(|((side, price, quantity), i)| AuctionBid {
                bid_id: first_bid_id.saturating_add(i),
                side,
                quantity_mw: quantity_of(quantity),
                price_cny_per_mwh: self.to_price(price),
            })
            .collect()
    }

    /// Liquidity the simulator posts into the real-time book at `step`: `QUOTE_LEVELS` bids
    /// below and asks above a mid that wanders around the reference price. Bids are always
    /// strictly below every ask, so the quotes never cross each other.
    pub fn real_time_quotes(
        &self,
        interval: DeliveryInterval,
        step: u64,
    ) -> Vec<(Side, Decimal, Decimal)> {
        let reference = f64_of(self.reference_price(interval));
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.cfg.seed ^ mix(interval.epoch_seconds() as u64 ^ STREAM_REAL_TIME) ^ mix(step),
        );
        let mid = reference + 0.5 * f64_of(self.cfg.noise_cny_per_mwh) * normal(&mut rng);
        let half_spread = (reference.abs() * 0.01).max(1.0);
        let mut asks = Vec::new();
        let mut bids = Vec::new();
        for level in 1..=QUOTE_LEVELS {
            let distance = half_spread * f64::from(level);
            asks.push((
                Side::Sell,
                self.to_price(mid + distance),
                quantity_of(rng.gen_range(5.0..25.0)),
            ));
            bids.push((
                Side::Buy,
                self.to_price(mid - distance),
                quantity_of(rng.gen_range(5.0..25.0)),
            ));
        }
        let lowest_ask = asks.iter().map(|q| q.1).min();
        bids.retain(|b| lowest_ask.is_none_or(|ask| b.1 < ask));
        asks.retain(|a| bids.iter().all(|b| b.1 < a.1));
        bids.extend(asks);
        bids
    }

    fn rng(&self, interval: DeliveryInterval, stream: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.cfg.seed ^ mix(interval.epoch_seconds() as u64 ^ stream))
    }

    /// Deterministic part of the synthetic price (no noise), in CNY/MWh as a float.
    fn shape_price(&self, interval: DeliveryInterval) -> f64 {
        let mid = interval.start() + chrono::Duration::seconds(INTERVAL_MINUTES * 30);
        let local = mid.with_timezone(&self.timezone);
        let hour = f64::from(local.hour()) + f64::from(local.minute()) / 60.0;
        let season = season_of(local.ordinal());
        f64_of(self.cfg.base_cny_per_mwh)
            + f64_of(self.cfg.daily_amplitude_cny_per_mwh) * daily_shape(hour, season)
            + f64_of(self.cfg.seasonal_amplitude_cny_per_mwh) * season
    }

    /// Float to a returned price: rounded to 0.01 and clamped; a non-finite value (only
    /// from an absurd config) falls back to the base price.
    fn to_price(&self, price: f64) -> Decimal {
        let d = if price == f64::INFINITY {
            self.cfg.cap_cny_per_mwh
        } else if price == f64::NEG_INFINITY {
            self.cfg.effective_floor()
        } else {
            Decimal::from_f64(price).unwrap_or(self.cfg.base_cny_per_mwh)
        };
        self.cfg.clamp(d.round_dp(2))
    }
}

/// +1 in mid-January, −1 in mid-July (northern hemisphere heating/cooling and hydro seasons).
fn season_of(day_of_year: u32) -> f64 {
    (std::f64::consts::TAU * (f64::from(day_of_year) - 15.0) / 365.25).cos()
}

/// Roughly in [−1, 1]: morning and evening peaks, a midday solar dip deeper in summer
/// (`season` −1), a night trough.
fn daily_shape(hour: f64, season: f64) -> f64 {
    let bump = |centre: f64, width: f64| {
        let mut d = (hour - centre).abs();
        if d > 12.0 {
            d = 24.0 - d; // the day wraps around midnight
        }
        (-0.5 * (d / width).powi(2)).exp()
    };
    let solar_depth = 0.9 * (1.0 - 0.4 * season);
    0.7 * bump(8.0, 1.5) + 1.0 * bump(19.0, 2.0)
        - solar_depth * bump(13.0, 2.5)
        - 0.4 * bump(3.5, 2.5)
}

/// Standard normal sample (Box–Muller), deterministic given the rng.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// SplitMix64 finaliser: a stable hash of the interval (std's hasher may change between
/// Rust releases, which would break "same seed, same session").
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn f64_of(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(0.0)
}

/// A synthetic quantity in MW, rounded to 0.1 MW and at least 0.1 MW.
fn quantity_of(mw: f64) -> Decimal {
    Decimal::from_f64(mw)
        .unwrap_or(Decimal::ONE)
        .round_dp(1)
        .max(Decimal::new(1, 1))
}

fn validate_source(source: &CsvPriceSource) -> Result<(), PriceModelError> {
    let step = u32::try_from(INTERVAL_MINUTES).unwrap_or(15);
    if source.row_minutes == 0 || source.row_minutes % step != 0 || source.row_minutes > 24 * 60 {
        return Err(PriceModelError::Config {
            field: "row_minutes",
            reason: format!(
                "{} must be a positive multiple of {step}, at most 1440",
                source.row_minutes
            ),
        });
    }
    if source.currency_factor <= Decimal::ZERO {
        return Err(PriceModelError::Config {
            field: "currency_factor",
            reason: format!("{} must be greater than 0", source.currency_factor),
        });
    }
    Ok(())
}

/// One CSV load in progress: the parsed prices and what was counted on the way.
struct CsvLoader<'a> {
    source: &'a CsvPriceSource,
    cfg: &'a PriceModelConfig,
    prices: BTreeMap<i64, Decimal>,
    first_line_of: BTreeMap<i64, usize>,
    ambiguous_seen: HashSet<NaiveDateTime>,
    previous: Option<(NaiveDateTime, DateTime<Utc>)>,
    report: CsvLoadReport,
}

impl<'a> CsvLoader<'a> {
    fn new(source: &'a CsvPriceSource, cfg: &'a PriceModelConfig) -> Self {
        Self {
            source,
            cfg,
            prices: BTreeMap::new(),
            first_line_of: BTreeMap::new(),
            ambiguous_seen: HashSet::new(),
            previous: None,
            report: CsvLoadReport::default(),
        }
    }

    fn run(&mut self, mut reader: impl BufRead) -> Result<(), PriceModelError> {
        let mut buf = Vec::new();
        let mut line_no = 0usize;
        let mut header_seen = false;
        while read_bounded_line(
            &mut reader,
            &mut buf,
            self.source.max_line_bytes,
            line_no + 1,
        )? {
            line_no += 1;
            let text = std::str::from_utf8(&buf).map_err(|_| PriceModelError::Line {
                line: line_no,
                reason: "not valid UTF-8".into(),
            })?;
            let text = text.trim_start_matches('\u{feff}').trim();
            if text.is_empty() {
                continue;
            }
            if !header_seen {
                check_header(text, line_no)?;
                header_seen = true;
                continue;
            }
            self.report.rows_read += 1;
            if self.report.rows_read > self.source.max_rows {
                return Err(PriceModelError::TooManyRows {
                    max_rows: self.source.max_rows,
                });
            }
            self.row(text, line_no)?;
        }
        Ok(())
    }

    fn row(&mut self, text: &str, line: usize) -> Result<(), PriceModelError> {
        let bad = |reason: String| PriceModelError::Line { line, reason };
        let mut fields = text.split(',');
        let (Some(start), Some(price), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(bad(format!(
                "expected 2 comma-separated fields, got {text:?}"
            )));
        };
        let price = Decimal::from_str(price.trim())
            .map_err(|e| bad(format!("price {:?} is not a decimal: {e}", price.trim())))?;
        let Some(start_utc) = self.start_to_utc(start.trim(), line)? else {
            return Ok(()); // non-existent local time, counted
        };
        let converted = price
            .checked_mul(self.source.currency_factor)
            .ok_or_else(|| bad(format!("price {price} times the currency factor overflows")))?
            .round_dp(2);
        let clamped = self.cfg.clamp(converted);
        if clamped != converted {
            self.report.prices_clamped += 1;
        }
        self.store(start_utc, clamped, line)
    }

    /// Maps the start column to UTC; `None` for a local time that does not exist.
    fn start_to_utc(
        &mut self,
        start: &str,
        line: usize,
    ) -> Result<Option<DateTime<Utc>>, PriceModelError> {
        if let Ok(t) = DateTime::parse_from_rfc3339(start) {
            return Ok(Some(t.with_timezone(&Utc)));
        }
        let naive = [
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M",
        ]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(start, f).ok())
        .ok_or_else(|| PriceModelError::Line {
            line,
            reason: format!("{start:?} is neither RFC 3339 nor a local YYYY-MM-DDTHH:MM:SS time"),
        })?;
        let utc = match self.source.timezone.from_local_datetime(&naive) {
            chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
            chrono::LocalResult::None => {
                self.report.nonexistent_local_skipped += 1;
                return Ok(None);
            }
            chrono::LocalResult::Ambiguous(earlier, later) => {
                if self.ambiguous_seen.insert(naive) {
                    earlier.with_timezone(&Utc)
                } else {
                    self.report.repeated_local_mapped_later += 1;
                    later.with_timezone(&Utc)
                }
            }
        };
        self.note_sequence(naive, utc);
        Ok(Some(utc))
    }

    /// Counts a local hour missing only because the clock jumped forward between two rows.
    fn note_sequence(&mut self, naive: NaiveDateTime, utc: DateTime<Utc>) {
        let row = i64::from(self.source.row_minutes);
        if let Some((prev_naive, prev_utc)) = self.previous {
            let utc_step = (utc - prev_utc).num_minutes();
            let local_step = (naive - prev_naive).num_minutes();
            if utc_step == row && local_step > row {
                let missing = (local_step - row) / row;
                self.report.dst_missing_local_hours += usize::try_from(missing).unwrap_or(0);
            }
        }
        self.previous = Some((naive, utc));
    }

    fn store(
        &mut self,
        start_utc: DateTime<Utc>,
        price: Decimal,
        line: usize,
    ) -> Result<(), PriceModelError> {
        let first =
            DeliveryInterval::starting_at(start_utc).map_err(|e| PriceModelError::Line {
                line,
                reason: e.to_string(),
            })?;
        let mut interval = first;
        for _ in 0..i64::from(self.source.row_minutes) / INTERVAL_MINUTES {
            let key = interval.epoch_seconds();
            if let Some(&first_line) = self.first_line_of.get(&key) {
                return Err(PriceModelError::Duplicate {
                    line,
                    first_line,
                    interval,
                });
            }
            self.first_line_of.insert(key, line);
            self.prices.insert(key, price);
            interval = interval.next();
        }
        Ok(())
    }

    fn finish(&mut self) -> CsvLoadReport {
        let row_secs = i64::from(self.source.row_minutes) * 60;
        let starts: Vec<i64> = self
            .first_line_of
            .keys()
            .copied()
            .step_by(
                usize::try_from(i64::from(self.source.row_minutes) / INTERVAL_MINUTES).unwrap_or(1),
            )
            .collect();
        self.report.missing_rows = starts
            .windows(2)
            .map(|w| usize::try_from((w[1] - w[0]) / row_secs - 1).unwrap_or(0))
            .sum();
        self.report.intervals_loaded = self.prices.len();
        self.first_line_of.clear();
        std::mem::take(&mut self.report)
    }
}

fn check_header(text: &str, line: usize) -> Result<(), PriceModelError> {
    let mut cols = text.split(',').map(str::trim);
    let ok = matches!(
        (cols.next(), cols.next(), cols.next()),
        (Some(a), Some(b), None) if a.starts_with("interval_start") && b.starts_with("price")
    );
    if ok {
        return Ok(());
    }
    Err(PriceModelError::Line {
        line,
        reason: format!(
            "header {text:?}: expected two columns like interval_start_local,price_eur_per_mwh"
        ),
    })
}

/// Reads one line into `buf` (without the newline), refusing lines over `max_bytes`.
/// Returns `false` at end of input.
fn read_bounded_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max_bytes: usize,
    line: usize,
) -> Result<bool, PriceModelError> {
    buf.clear();
    let limit = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(2);
    let n = reader.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(false);
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    if buf.len() > max_bytes {
        return Err(PriceModelError::Line {
            line,
            reason: format!("longer than {max_bytes} bytes"),
        });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::auction::{clear_uniform_price, BidLimits};
    use crate::sim::book::{BookOrder, OrderBook};
    use rust_decimal_macros::dec;
    use vpp_engine::ids::ClientOrderId;
    use vpp_engine::order::TimeInForce;

    /// Interval starting at a local wall-clock time in Shanghai (UTC+8, no DST).
    fn shanghai(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DeliveryInterval {
        let local = chrono_tz::Asia::Shanghai
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .unwrap();
        DeliveryInterval::starting_at(local.with_timezone(&Utc)).unwrap()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DeliveryInterval {
        DeliveryInterval::starting_at(Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()).unwrap()
    }

    fn day(start: DeliveryInterval) -> Vec<DeliveryInterval> {
        std::iter::successors(Some(start), |i| Some(i.next()))
            .take(96)
            .collect()
    }

    fn quiet() -> PriceModelConfig {
        PriceModelConfig {
            noise_cny_per_mwh: dec!(0),
            seasonal_amplitude_cny_per_mwh: dec!(0),
            ..PriceModelConfig::default()
        }
    }

    #[test]
    fn same_seed_same_prices_in_any_call_order() {
        let a = PriceModel::new(PriceModelConfig::default());
        let b = PriceModel::new(PriceModelConfig::default());
        let intervals = day(shanghai(2026, 3, 1, 0, 0));
        let forward: Vec<Decimal> = intervals.iter().map(|i| a.reference_price(*i)).collect();
        let backward: Vec<Decimal> = intervals
            .iter()
            .rev()
            .map(|i| b.reference_price(*i))
            .collect();
        let backward: Vec<Decimal> = backward.into_iter().rev().collect();
        assert_eq!(forward, backward);
        let other = PriceModel::new(PriceModelConfig {
            seed: 43,
            ..PriceModelConfig::default()
        });
        let reseeded: Vec<Decimal> = intervals
            .iter()
            .map(|i| other.reference_price(*i))
            .collect();
        assert_ne!(forward, reseeded, "the seed must change the noise");
        assert!(forward.iter().all(|p| p.scale() <= 2), "rounded to 0.01");
    }

    #[test]
    fn daily_shape_has_two_peaks_and_a_solar_dip() {
        let m = PriceModel::new(quiet());
        let at = |h| m.reference_price(shanghai(2026, 6, 10, h, 0));
        let (night, morning, midday, evening) = (at(3), at(8), at(13), at(19));
        assert!(morning > midday, "morning {morning} vs midday {midday}");
        assert!(evening > midday, "evening {evening} vs midday {midday}");
        assert!(evening > morning, "evening is the daily peak");
        assert!(morning > night, "morning {morning} vs night {night}");
    }

    #[test]
    fn winter_prices_sit_above_summer_prices() {
        let m = PriceModel::new(PriceModelConfig {
            daily_amplitude_cny_per_mwh: dec!(0),
            seasonal_amplitude_cny_per_mwh: dec!(40),
            ..quiet()
        });
        let january = m.reference_price(shanghai(2026, 1, 15, 10, 0));
        let july = m.reference_price(shanghai(2026, 7, 15, 10, 0));
        assert_eq!(january, dec!(300) + dec!(40));
        assert!(july < dec!(300) - dec!(39), "{july}");
    }

    fn stressed(negative_prices_allowed: bool) -> PriceModel {
        PriceModel::new(PriceModelConfig {
            base_cny_per_mwh: dec!(20),
            daily_amplitude_cny_per_mwh: dec!(150),
            noise_cny_per_mwh: dec!(40),
            negative_prices_allowed,
            floor_cny_per_mwh: dec!(-100),
            cap_cny_per_mwh: dec!(120),
            ..PriceModelConfig::default()
        })
    }

    #[test]
    fn negative_prices_only_where_allowed_and_always_within_floor_and_cap() {
        let week: Vec<DeliveryInterval> = (0..7)
            .flat_map(|d| day(shanghai(2026, 6, 1 + d, 0, 0)))
            .collect();
        let banned: Vec<Decimal> = week
            .iter()
            .map(|i| stressed(false).reference_price(*i))
            .collect();
        assert!(banned.iter().all(|p| *p >= dec!(0) && *p <= dec!(120)));
        assert!(banned.contains(&dec!(0)), "the dip is clamped at 0");
        let allowed: Vec<Decimal> = week
            .iter()
            .map(|i| stressed(true).reference_price(*i))
            .collect();
        assert!(
            allowed.iter().any(|p| *p < dec!(0)),
            "the dip goes negative"
        );
        assert!(allowed.iter().all(|p| *p >= dec!(-100) && *p <= dec!(120)));
        assert!(allowed.contains(&dec!(120)), "peaks are clamped to the cap");
    }

    #[test]
    fn participant_bids_are_deterministic_valid_and_clear_near_the_reference() {
        let cfg = PriceModelConfig::default();
        let m = PriceModel::new(cfg.clone());
        let limits = BidLimits {
            price_cap_cny_per_mwh: cfg.cap_cny_per_mwh,
            price_floor_cny_per_mwh: cfg.floor_cny_per_mwh,
            max_volume_mw: dec!(1000),
            negative_prices_allowed: cfg.negative_prices_allowed,
        };
        for interval in day(shanghai(2026, 3, 1, 0, 0)).into_iter().step_by(7) {
            let bids = m.participant_bids(interval, 1_000);
            assert_eq!(bids, m.participant_bids(interval, 1_000));
            let ids: Vec<u64> = bids.iter().map(|b| b.bid_id).collect();
            assert_eq!(ids, (1_000..1_000 + bids.len() as u64).collect::<Vec<_>>());
            for b in &bids {
                limits.check(b).unwrap();
            }
            let reference = m.reference_price(interval);
            let clearing = clear_uniform_price(&bids);
            let price = clearing.price_cny_per_mwh.expect("the curves cross");
            let band = (reference.abs() * dec!(0.3)).max(dec!(40));
            assert!(
                (price - reference).abs() <= band,
                "{interval}: {price} vs {reference}"
            );
            assert!(clearing.volume_mw > dec!(100));
        }
    }

    #[test]
    fn real_time_quotes_are_deterministic_per_step_and_never_cross() {
        let m = PriceModel::new(PriceModelConfig::default());
        let interval = shanghai(2026, 3, 1, 19, 0);
        let q0 = m.real_time_quotes(interval, 0);
        assert_eq!(q0, m.real_time_quotes(interval, 0));
        assert_ne!(q0, m.real_time_quotes(interval, 1));
        assert_eq!(q0.len(), 2 * QUOTE_LEVELS as usize);
        let mut book = OrderBook::new(100);
        for (n, (side, price, qty)) in q0.into_iter().enumerate() {
            let order = BookOrder {
                venue_order_id: n as u64,
                account: "sim".into(),
                client_order_id: ClientOrderId::new(format!("q{n}")).unwrap(),
                side,
                price_cny_per_mwh: price,
                remaining_mw: qty,
                time_in_force: TimeInForce::Gtc,
            };
            let outcome = book.submit(order, interval.start()).unwrap();
            assert!(
                outcome.trades.is_empty(),
                "quotes must not trade with each other"
            );
        }
        // Squeezed against the cap, overlapping quotes are dropped rather than crossed.
        let squeezed = stressed(false).real_time_quotes(shanghai(2026, 6, 1, 19, 0), 3);
        let best_bid = squeezed
            .iter()
            .filter(|q| q.0 == Side::Buy)
            .map(|q| q.1)
            .max();
        let best_ask = squeezed
            .iter()
            .filter(|q| q.0 == Side::Sell)
            .map(|q| q.1)
            .min();
        if let (Some(bid), Some(ask)) = (best_bid, best_ask) {
            assert!(bid < ask);
        }
    }

    /// Excerpt of /work/shared/data/entsoe_be_day_ahead_2022_2024.csv around both 2022
    /// daylight-saving changes, plus one row at the non-existent 02:00 of 27 March.
    const BE_DST: &str = "interval_start_local,price_eur_per_mwh\n\
        2022-03-27T00:00:00,235.00\n\
        2022-03-27T01:00:00,221.93\n\
        2022-03-27T02:00:00,999.99\n\
        2022-03-27T03:00:00,214.02\n\
        2022-10-30T01:00:00,100.49\n\
        2022-10-30T02:00:00,100.22\n\
        2022-10-30T02:00:00,99.93\n\
        2022-10-30T03:00:00,98.36\n";

    fn be(max_rows: usize) -> CsvPriceSource {
        CsvPriceSource {
            max_rows,
            ..CsvPriceSource::entsoe_hourly(chrono_tz::Europe::Brussels, dec!(7.8))
        }
    }

    #[test]
    fn csv_handles_both_daylight_saving_changes_and_reports_them() {
        let m =
            PriceModel::from_csv(BE_DST.as_bytes(), &be(100), PriceModelConfig::default()).unwrap();
        let r = m.csv_report().unwrap();
        assert_eq!(r.rows_read, 8);
        assert_eq!(
            r.nonexistent_local_skipped, 1,
            "02:00 on 27 March does not exist"
        );
        assert_eq!(
            r.dst_missing_local_hours, 1,
            "01:00 -> 03:00 local is one UTC hour"
        );
        assert_eq!(r.repeated_local_mapped_later, 1);
        assert_eq!(r.intervals_loaded, 7 * 4);
        // 1 March row gap: 27 March 03:00 CEST (01:00Z) to 30 October 01:00 CEST (23:00Z
        // on the 29th) is a real hole in UTC, counted as missing rows.
        assert!(r.missing_rows > 0);
        // 03:00 CEST = 01:00Z; 214.02 × 7.8 = 1669.356 -> clamped? no: 1669.36 > cap 1500.
        assert_eq!(m.reference_price(utc(2022, 3, 27, 1, 0)), dec!(1500));
        assert_eq!(
            r.prices_clamped, 3,
            "235, 221.93 and 214.02 EUR exceed 1500 CNY"
        );
        // Fall back: the first 02:00 is CEST (00:00Z), the second CET (01:00Z).
        assert_eq!(m.reference_price(utc(2022, 10, 30, 0, 0)), dec!(781.72)); // 100.22 × 7.8
        assert_eq!(m.reference_price(utc(2022, 10, 30, 0, 45)), dec!(781.72));
        assert_eq!(m.reference_price(utc(2022, 10, 30, 1, 0)), dec!(779.45)); // 99.93 × 7.8 = 779.454
        assert_eq!(m.reference_price(utc(2022, 10, 30, 2, 0)), dec!(767.21)); // 98.36 × 7.8 = 767.208
        assert_eq!(m.reference_price(utc(2022, 10, 29, 23, 0)), dec!(783.82)); // 100.49 × 7.8 = 783.822
    }

    #[test]
    fn csv_outside_its_range_falls_back_to_the_synthetic_model() {
        let cfg = PriceModelConfig::default();
        let from_csv = PriceModel::from_csv(BE_DST.as_bytes(), &be(100), cfg.clone()).unwrap();
        let synthetic = PriceModel::new(cfg).with_timezone(chrono_tz::Europe::Brussels);
        let i = utc(2023, 5, 5, 12, 0);
        assert_eq!(from_csv.reference_price(i), synthetic.reference_price(i));
    }

    #[test]
    fn csv_accepts_rfc3339_and_quarter_hour_rows() {
        let text =
            "interval_start,price\n2026-03-01T00:00:00+08:00,10.5\n2026-03-01T00:15:00+08:00,-3\n";
        let src = CsvPriceSource {
            row_minutes: 15,
            currency_factor: dec!(1),
            ..be(10)
        };
        let cfg = PriceModelConfig {
            negative_prices_allowed: true,
            floor_cny_per_mwh: dec!(-50),
            ..PriceModelConfig::default()
        };
        let m = PriceModel::from_csv(text.as_bytes(), &src, cfg).unwrap();
        assert_eq!(m.csv_report().unwrap().intervals_loaded, 2);
        assert_eq!(m.reference_price(utc(2026, 2, 28, 16, 0)), dec!(10.5));
        assert_eq!(m.reference_price(utc(2026, 2, 28, 16, 15)), dec!(-3));
    }

    #[test]
    fn csv_refusals_name_the_line_and_the_limit() {
        let cfg = PriceModelConfig::default;
        let err = |text: &str, src: &CsvPriceSource| {
            PriceModel::from_csv(text.as_bytes(), src, cfg())
                .unwrap_err()
                .to_string()
        };
        let e = err(BE_DST, &be(7));
        assert!(e.contains("more than 7 data rows"), "{e}");
        assert!(
            PriceModel::from_csv(BE_DST.as_bytes(), &be(8), cfg()).is_ok(),
            "8 rows is inside"
        );
        let e = err(
            "interval_start_local,price\n2022-01-01T00:00:00,abc\n",
            &be(10),
        );
        assert!(e.contains("line 2") && e.contains("\"abc\""), "{e}");
        let e = err("when,what\n", &be(10));
        assert!(e.contains("line 1") && e.contains("header"), "{e}");
        let e = err("interval_start,price\n2022-01-01 00:00,1,2\n", &be(10));
        assert!(e.contains("2 comma-separated fields"), "{e}");
        let e = err("interval_start,price\nyesterday,1\n", &be(10));
        assert!(e.contains("RFC 3339"), "{e}");
        let triple = "interval_start,price\n2022-10-30T02:00:00,1\n2022-10-30T02:00:00,2\n2022-10-30T02:00:00,3\n";
        let e = err(triple, &be(10));
        assert!(e.contains("line 4") && e.contains("first on line 3"), "{e}");
        let long = format!(
            "interval_start,price\n2022-01-01T00:00:00,{}\n",
            "1".repeat(300)
        );
        let e = err(&long, &be(10));
        assert!(e.contains("longer than 256 bytes"), "{e}");
        let bad_rate = CsvPriceSource {
            currency_factor: dec!(0),
            ..be(10)
        };
        assert!(err(BE_DST, &bad_rate).contains("currency_factor"));
        let bad_rows = CsvPriceSource {
            row_minutes: 20,
            ..be(10)
        };
        assert!(err(BE_DST, &bad_rows).contains("row_minutes"));
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = PriceModelConfig {
            floor_cny_per_mwh: dec!(1500),
            ..PriceModelConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("floor_cny_per_mwh"));
        let bad = PriceModelConfig {
            noise_cny_per_mwh: dec!(-1),
            ..PriceModelConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("noise_cny_per_mwh"));
        assert!(PriceModelConfig::default().validate().is_ok());
    }
}
