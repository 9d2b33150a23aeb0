//! Conversions between domain values and column values, identical on both backends:
//! instants as i64 microseconds (UTC), decimals as text, u64 ids as i64 (refusing overflow),
//! enums as their snake_case names.

use crate::error::StoreError;
use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use std::str::FromStr;
use vpp_engine::market::DeliveryInterval;
use vpp_engine::Timestamp;

pub(crate) fn ts_to_us(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn us_to_ts(field: &str, us: i64) -> Result<Timestamp, StoreError> {
    Utc.timestamp_micros(us)
        .single()
        .ok_or_else(|| StoreError::Decode {
            field: field.to_owned(),
            reason: format!("{us} µs is outside the representable time range"),
        })
}

pub(crate) fn interval_to_us(i: DeliveryInterval) -> i64 {
    ts_to_us(i.start())
}

pub(crate) fn us_to_interval(field: &str, us: i64) -> Result<DeliveryInterval, StoreError> {
    DeliveryInterval::starting_at(us_to_ts(field, us)?).map_err(|e| StoreError::Decode {
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn dec_to_text(d: Decimal) -> String {
    d.to_string()
}

pub(crate) fn text_to_dec(field: &str, s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(s).map_err(|e| StoreError::Decode {
        field: field.to_owned(),
        reason: format!("{s:?} is not a decimal: {e}"),
    })
}

pub(crate) fn id_to_i64(field: &'static str, id: u64) -> Result<i64, StoreError> {
    i64::try_from(id).map_err(|_| StoreError::OutOfRange {
        field,
        value: id.to_string(),
        reason: "ids must be at most 9223372036854775807 (i64::MAX)",
    })
}

pub(crate) fn i64_to_id(field: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Decode {
        field: field.to_owned(),
        reason: format!("{v} is negative; ids are unsigned"),
    })
}

pub(crate) fn to_json<T: serde::Serialize>(
    what: &'static str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Json { what, source })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    field: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Decode {
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

/// Any engine enum with `parse(&str) -> Result<Self, ValidationError>`.
pub(crate) fn parse_with<T, E: std::fmt::Display>(
    field: &str,
    s: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, StoreError> {
    parse(s).map_err(|e| StoreError::Decode {
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn u32_to_i64(v: u32) -> i64 {
    i64::from(v)
}

pub(crate) fn i64_to_u32(field: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Decode {
        field: field.to_owned(),
        reason: format!("{v} is outside 0..=4294967295"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_trip_exactly_and_bad_text_is_named() {
        for s in [
            "0",
            "-0.01",
            "1500.000",
            "79228162514264337593543950335",
            "0.0000001",
        ] {
            let d = Decimal::from_str(s).unwrap();
            assert_eq!(text_to_dec("x", &dec_to_text(d)).unwrap(), d);
            assert_eq!(dec_to_text(d), s, "scale is kept");
        }
        let err = text_to_dec("fills.quantity_mw", "1,5").unwrap_err();
        assert!(err.to_string().contains("fills.quantity_mw"));
    }

    #[test]
    fn ids_above_i64_max_are_refused_not_wrapped() {
        assert_eq!(id_to_i64("id", 7).unwrap(), 7);
        assert!(id_to_i64("id", u64::MAX).is_err());
        assert!(i64_to_id("id", -1).is_err());
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let t = Utc.timestamp_micros(1_772_351_100_123_456).unwrap();
        assert_eq!(us_to_ts("t", ts_to_us(t)).unwrap(), t);
        assert!(
            us_to_interval("i", ts_to_us(t)).is_err(),
            "unaligned interval refused"
        );
    }
}
