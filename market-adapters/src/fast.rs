//! Allocation-free deserializers for the hot market data fields: decimal strings and
//! interval timestamps in the exact shapes the protocol's encoders write. Anything else falls
//! back to the general parsers, so accepted input is the same; only the common case is faster.
//!
//! Invariant: a fast path result always equals what the general parser would return.

use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::fmt;
use std::str::FromStr;
use vpp_engine::market::DeliveryInterval;
use vpp_engine::Timestamp;

/// Parses `-?digits(.digits)?` with at most 18 characters of digits and point directly; else `from_str`.
pub fn parse_decimal(s: &str) -> Option<Decimal> {
    let bytes = s.as_bytes();
    let (negative, digits) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 18 {
        return Decimal::from_str(s).ok();
    }
    let mut mantissa: i64 = 0;
    let mut scale: Option<u32> = None;
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + i64::from(b - b'0');
                if let Some(sc) = scale.as_mut() {
                    *sc += 1;
                }
            }
            b'.' if scale.is_none() => scale = Some(0),
            _ => return Decimal::from_str(s).ok(),
        }
    }
    if scale == Some(0) {
        return Decimal::from_str(s).ok(); // "12." : let the general parser decide
    }
    let value = Decimal::new(
        if negative { -mantissa } else { mantissa },
        scale.unwrap_or(0),
    );
    Some(value)
}

struct DecimalVisitor;

impl Visitor<'_> for DecimalVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal string such as \"300.25\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
        parse_decimal(v).ok_or_else(|| E::custom(format!("{v:?} is not a decimal")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
        Decimal::from_str(&v.to_string()).map_err(|_| E::custom(format!("{v} is not a decimal")))
    }
}

pub fn decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    d.deserialize_any(DecimalVisitor)
}

pub fn opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    struct Opt;
    impl<'de> Visitor<'de> for Opt {
        type Value = Option<Decimal>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal string or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            decimal(d).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

/// `[["price","qty"], ...]` without intermediate strings.
pub fn levels<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Decimal, Decimal)>, D::Error> {
    struct Levels;
    impl<'de> Visitor<'de> for Levels {
        type Value = Vec<(Decimal, Decimal)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of [price, quantity] pairs")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(64));
            while let Some(pair) = seq.next_element::<Pair>()? {
                out.push((pair.0, pair.1));
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Levels)
}

struct Dec(Decimal);

impl<'de> de::Deserialize<'de> for Dec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        decimal(d).map(Dec)
    }
}

struct Pair(Decimal, Decimal);

impl<'de> de::Deserialize<'de> for Pair {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (Dec(a), Dec(b)) = <(Dec, Dec)>::deserialize(d)?;
        Ok(Pair(a, b))
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` parsed by hand; any other RFC 3339 form by chrono.
pub fn parse_timestamp(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    if shape_ok {
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            b[r].iter().try_fold(0u32, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
            })
        };
        let fast = (|| {
            let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
            let time = date.and_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
            Some(Utc.from_utc_datetime(&time))
        })();
        if fast.is_some() {
            return fast;
        }
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<DeliveryInterval, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = DeliveryInterval;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the UTC start of a 15-minute interval, e.g. \"2026-03-01T10:00:00Z\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<DeliveryInterval, E> {
            let t = parse_timestamp(v)
                .ok_or_else(|| E::custom(format!("{v:?} is not an RFC 3339 timestamp")))?;
            DeliveryInterval::starting_at(t).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_decimal_equals_the_general_parser() {
        for s in [
            "0",
            "300",
            "-12.25",
            "300.10",
            "0.001",
            "999999999999999999",
            "1234567890123456789.5",
            "1e5",
            "12.",
            ".5",
            "--1",
            "",
            "79228162514264337593543950335",
        ] {
            assert_eq!(parse_decimal(s), Decimal::from_str(s).ok(), "{s:?}");
        }
    }

    #[test]
    fn fast_timestamp_equals_chrono() {
        for s in [
            "2026-03-01T10:00:00Z",
            "2026-02-30T10:00:00Z",
            "2026-03-01T10:00:00.5Z",
            "2026-03-01T18:00:00+08:00",
            "2026-03-01T1a:00:00Z",
            "nope",
        ] {
            let chrono = chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc));
            assert_eq!(parse_timestamp(s), chrono, "{s:?}");
        }
    }
}
