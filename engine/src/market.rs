//! Markets, products and 15-minute delivery intervals.
//!
//! A delivery interval is identified by its UTC start, always aligned to 15 minutes. The
//! market keeps its own time zone for "trading day" and "interval of day" (1..=96) views.
//! Price limits are part of the market: every price check goes through [`Market::check_price`].

use crate::error::ValidationError;
use crate::ids::MarketId;
use crate::Timestamp;
use chrono::{DurationRound, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Length of one delivery interval in minutes.
pub const INTERVAL_MINUTES: i64 = 15;
/// Intervals in a trading day without a daylight-saving change.
pub const INTERVALS_PER_DAY: u32 = 96;

/// The kinds of market the engine trades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarketKind {
    DayAhead,
    RealTime,
    Regulation,
    Reserve,
    DemandResponse,
    CapacityLease,
}

impl MarketKind {
    pub const ALL: [MarketKind; 6] = [
        MarketKind::DayAhead,
        MarketKind::RealTime,
        MarketKind::Regulation,
        MarketKind::Reserve,
        MarketKind::DemandResponse,
        MarketKind::CapacityLease,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MarketKind::DayAhead => "day_ahead",
            MarketKind::RealTime => "real_time",
            MarketKind::Regulation => "regulation",
            MarketKind::Reserve => "reserve",
            MarketKind::DemandResponse => "demand_response",
            MarketKind::CapacityLease => "capacity_lease",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            ValidationError::new(
                "market kind",
                format!(
                    "{s:?} is not one of day_ahead, real_time, regulation, reserve, demand_response, capacity_lease"
                ),
            )
        })
    }

    /// Whether an award here is headroom held for the system operator (regulation, reserve)
    /// rather than energy to deliver: dispatch schedules no energy for it.
    pub fn holds_headroom(self) -> bool {
        matches!(self, MarketKind::Regulation | MarketKind::Reserve)
    }

    /// The product a plain order in this market trades.
    pub fn default_product(self) -> Product {
        match self {
            MarketKind::DayAhead | MarketKind::RealTime => Product::Energy,
            MarketKind::Regulation => Product::RegulationCapacity,
            MarketKind::Reserve => Product::ReserveCapacity,
            MarketKind::DemandResponse => Product::DemandResponse,
            MarketKind::CapacityLease => Product::StorageCapacity,
        }
    }
}

impl fmt::Display for MarketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is bought or sold. Energy is in MW per interval; capacity products in MW held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Product {
    Energy,
    RegulationCapacity,
    RegulationMileage,
    ReserveCapacity,
    DemandResponse,
    StorageCapacity,
}

impl Product {
    pub const ALL: [Product; 6] = [
        Product::Energy,
        Product::RegulationCapacity,
        Product::RegulationMileage,
        Product::ReserveCapacity,
        Product::DemandResponse,
        Product::StorageCapacity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Product::Energy => "energy",
            Product::RegulationCapacity => "regulation_capacity",
            Product::RegulationMileage => "regulation_mileage",
            Product::ReserveCapacity => "reserve_capacity",
            Product::DemandResponse => "demand_response",
            Product::StorageCapacity => "storage_capacity",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ValidationError::new("product", format!("{s:?} is not a known product")))
    }
}

/// A 15-minute delivery interval, identified by its UTC start (always aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "Timestamp", into = "Timestamp")]
pub struct DeliveryInterval {
    start: Timestamp,
}

impl DeliveryInterval {
    /// The interval starting at `start`; refuses a start not aligned to 15 minutes.
    pub fn starting_at(start: Timestamp) -> Result<Self, ValidationError> {
        if Self::containing(start).start != start {
            return Err(ValidationError::new(
                "delivery_interval",
                format!("{start} is not aligned to a {INTERVAL_MINUTES}-minute boundary"),
            ));
        }
        Ok(Self { start })
    }

    /// The interval that contains instant `t`.
    pub fn containing(t: Timestamp) -> Self {
        let step = chrono::Duration::minutes(INTERVAL_MINUTES);
        let start = t.duration_trunc(step).unwrap_or(t);
        Self { start }
    }

    pub fn start(&self) -> Timestamp {
        self.start
    }

    pub fn end(&self) -> Timestamp {
        self.shifted(1)
    }

    pub fn next(&self) -> Self {
        Self { start: self.end() }
    }

    pub fn previous(&self) -> Self {
        Self {
            start: self.shifted(-1),
        }
    }

    /// The start moved by `intervals` × 15 minutes. Within the same UTC day only the time of
    /// day changes, which skips chrono's date arithmetic (the backtest steps through
    /// intervals millions of times a second); across midnight chrono does it.
    fn shifted(&self, intervals: i32) -> Timestamp {
        use chrono::Timelike as _;
        const DAY_SECONDS: i64 = 86_400;
        let naive = self.start.naive_utc();
        let time = naive.time();
        let secs = i64::from(time.num_seconds_from_midnight())
            + i64::from(intervals) * INTERVAL_MINUTES * 60;
        if time.nanosecond() == 0 && (0..DAY_SECONDS).contains(&secs) {
            let same_day = u32::try_from(secs)
                .ok()
                .and_then(|s| chrono::NaiveTime::from_num_seconds_from_midnight_opt(s, 0));
            if let Some(t) = same_day {
                return chrono::NaiveDateTime::new(naive.date(), t).and_utc();
            }
        }
        self.start + chrono::Duration::minutes(INTERVAL_MINUTES * i64::from(intervals))
    }

    /// Interval as seconds since the Unix epoch of its start: a compact key for storage.
    pub fn epoch_seconds(&self) -> i64 {
        self.start.timestamp()
    }

    pub fn from_epoch_seconds(secs: i64) -> Result<Self, ValidationError> {
        let t = Utc.timestamp_opt(secs, 0).single().ok_or_else(|| {
            ValidationError::new("delivery_interval", format!("{secs} is out of range"))
        })?;
        Self::starting_at(t)
    }

    /// 1-based index of this interval within its trading day in time zone `tz` (1..=96 on a
    /// day without a daylight-saving change).
    pub fn index_of_day(&self, tz: chrono_tz::Tz) -> u32 {
        let local = self.start.with_timezone(&tz);
        let day_start = tz
            .from_local_datetime(&local.date_naive().and_hms_opt(0, 0, 0).unwrap_or_default())
            .earliest()
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or(self.start);
        let minutes = (self.start - day_start).num_minutes().max(0);
        u32::try_from(minutes / INTERVAL_MINUTES).unwrap_or(0) + 1
    }

    /// The trading day (local date in `tz`) this interval belongs to.
    pub fn trading_day(&self, tz: chrono_tz::Tz) -> chrono::NaiveDate {
        self.start.with_timezone(&tz).date_naive()
    }
}

impl TryFrom<Timestamp> for DeliveryInterval {
    type Error = ValidationError;
    fn try_from(t: Timestamp) -> Result<Self, Self::Error> {
        Self::starting_at(t)
    }
}

impl From<DeliveryInterval> for Timestamp {
    fn from(i: DeliveryInterval) -> Timestamp {
        i.start
    }
}

impl fmt::Display for DeliveryInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.start.format("%Y-%m-%dT%H:%MZ"))
    }
}

/// A market at a venue, with its price limits. Prices are CNY/MWh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Market {
    pub id: MarketId,
    pub name: String,
    pub kind: MarketKind,
    /// IANA time zone of the market, e.g. `Asia/Shanghai`.
    pub timezone: chrono_tz::Tz,
    pub price_cap_cny_per_mwh: Decimal,
    pub price_floor_cny_per_mwh: Decimal,
    pub negative_prices_allowed: bool,
    /// Minutes before the start of the trading day at which day-ahead bidding closes.
    pub gate_closure_minutes_before: u32,
}

impl Market {
    /// Checks the market's own consistency: floor below cap, floor >= 0 unless negative
    /// prices are allowed.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.price_floor_cny_per_mwh >= self.price_cap_cny_per_mwh {
            return Err(ValidationError::new(
                "price_floor_cny_per_mwh",
                format!(
                    "floor {} must be below cap {}",
                    self.price_floor_cny_per_mwh, self.price_cap_cny_per_mwh
                ),
            ));
        }
        if !self.negative_prices_allowed && self.price_floor_cny_per_mwh < Decimal::ZERO {
            return Err(ValidationError::new(
                "price_floor_cny_per_mwh",
                format!(
                    "floor {} is negative but negative_prices_allowed is false",
                    self.price_floor_cny_per_mwh
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a price above the cap, below the floor, or negative where not allowed.
    pub fn check_price(&self, price: Decimal) -> Result<(), ValidationError> {
        if price > self.price_cap_cny_per_mwh {
            return Err(ValidationError::new(
                "price",
                format!(
                    "{price} CNY/MWh is above the cap {}",
                    self.price_cap_cny_per_mwh
                ),
            ));
        }
        if price < self.price_floor_cny_per_mwh {
            return Err(ValidationError::new(
                "price",
                format!(
                    "{price} CNY/MWh is below the floor {}",
                    self.price_floor_cny_per_mwh
                ),
            ));
        }
        if price < Decimal::ZERO && !self.negative_prices_allowed {
            return Err(ValidationError::new(
                "price",
                format!(
                    "{price} CNY/MWh is negative and market {} forbids negative prices",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// Day-ahead gate closure for a delivery interval: the start of its local trading day
    /// minus `gate_closure_minutes_before`.
    pub fn gate_closure_for(&self, interval: DeliveryInterval) -> Timestamp {
        let day = interval.trading_day(self.timezone);
        let day_start = self
            .timezone
            .from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
            .earliest()
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or(interval.start());
        day_start - chrono::Duration::minutes(i64::from(self.gate_closure_minutes_before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn t(h: u32, m: u32) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap()
    }

    #[test]
    fn next_and_previous_agree_with_chrono_across_midnights_and_years() {
        let step = chrono::Duration::minutes(INTERVAL_MINUTES);
        // Two days around a year end and a leap day, every interval.
        for start in [
            Utc.with_ymd_and_hms(2023, 12, 31, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2024, 2, 28, 12, 0, 0).unwrap(),
        ] {
            let mut i = DeliveryInterval::containing(start);
            for _ in 0..200 {
                assert_eq!(i.end(), i.start() + step, "end of {i}");
                assert_eq!(i.next().start(), i.start() + step, "next of {i}");
                assert_eq!(i.previous().start(), i.start() - step, "previous of {i}");
                assert_eq!(i.next().previous(), i);
                i = i.next();
            }
        }
    }

    fn yunnan_day_ahead() -> Market {
        Market {
            id: MarketId(1),
            name: "yunnan-da".into(),
            kind: MarketKind::DayAhead,
            timezone: chrono_tz::Asia::Shanghai,
            price_cap_cny_per_mwh: dec!(1500),
            price_floor_cny_per_mwh: dec!(0),
            negative_prices_allowed: false,
            gate_closure_minutes_before: 14 * 60,
        }
    }

    #[test]
    fn interval_alignment_is_enforced() {
        assert!(DeliveryInterval::starting_at(t(10, 15)).is_ok());
        let err = DeliveryInterval::starting_at(t(10, 7)).unwrap_err();
        assert_eq!(err.field, "delivery_interval");
        assert_eq!(DeliveryInterval::containing(t(10, 7)).start(), t(10, 0));
        assert_eq!(
            DeliveryInterval::containing(t(10, 0)).next().start(),
            t(10, 15)
        );
    }

    #[test]
    fn index_of_day_counts_in_market_time_zone() {
        // 16:00 UTC is 00:00 in Shanghai: the first interval of the local day.
        let first = DeliveryInterval::starting_at(t(16, 0)).unwrap();
        assert_eq!(first.index_of_day(chrono_tz::Asia::Shanghai), 1);
        let last = DeliveryInterval::starting_at(t(15, 45)).unwrap();
        assert_eq!(
            last.index_of_day(chrono_tz::Asia::Shanghai),
            INTERVALS_PER_DAY
        );
    }

    #[test]
    fn price_limits_just_inside_and_outside() {
        let m = yunnan_day_ahead();
        assert!(m.check_price(dec!(1500)).is_ok());
        assert!(m.check_price(dec!(1500.01)).is_err());
        assert!(m.check_price(dec!(0)).is_ok());
        assert!(m.check_price(dec!(-0.01)).is_err());
        let mut bad = m.clone();
        bad.price_floor_cny_per_mwh = dec!(-10);
        assert_eq!(bad.validate().unwrap_err().field, "price_floor_cny_per_mwh");
        bad.negative_prices_allowed = true;
        assert!(bad.validate().is_ok());
        assert!(bad.check_price(dec!(-10)).is_ok());
    }

    #[test]
    fn gate_closure_is_before_the_local_trading_day() {
        let m = yunnan_day_ahead();
        let interval = DeliveryInterval::starting_at(t(18, 0)).unwrap(); // 02:00 on 2 March local
                                                                         // Local day 2026-03-02 starts at 2026-03-01T16:00Z; minus 14 h.
        assert_eq!(m.gate_closure_for(interval), t(2, 0));
    }

    #[test]
    fn kinds_round_trip_through_strings() {
        for k in MarketKind::ALL {
            assert_eq!(MarketKind::parse(k.as_str()).unwrap(), k);
        }
        for p in Product::ALL {
            assert_eq!(Product::parse(p.as_str()).unwrap(), p);
        }
        assert!(MarketKind::parse("intraday").is_err());
    }
}
