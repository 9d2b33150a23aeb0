//! The JSON payloads on the telemetry and setpoint topics.
//!
//! Telemetry (`<root>/<site>/<resource>/telemetry`):
//! ```json
//! {"power_kw": 120.5, "soc_pct": 55.25, "available": true, "timestamp": "2026-01-01T00:00:00Z"}
//! ```
//! - `power_kw` (required) and `soc_pct` (optional, may be `null`): JSON numbers or numeric
//!   strings, parsed exactly from their text into `Decimal` (never through `f64`); exponents
//!   (`1.2e3`) are accepted; more digits than `Decimal` holds (28) is an error, not a rounding.
//! - `available` (required): boolean.
//! - `timestamp` (required): an RFC 3339 string with offset (`2026-01-01T08:00:00+08:00`), or
//!   an integer number of milliseconds since the Unix epoch (`1767225600000`).
//! - Unknown fields are ignored (devices add diagnostics); duplicate known fields are an error.
//!
//! Setpoint (`<root>/<site>/<resource>/setpoint`, QoS 1):
//! ```json
//! {"setpoint_kw": -250.5, "interval": "2026-01-01T00:15:00Z", "at": "2026-01-01T00:14:58Z"}
//! ```
//! `interval` is the UTC start of the 15-minute delivery interval, or absent. The decimal is
//! written as a JSON number from its exact text.
//!
//! Invariant: decoding never panics; every error names the field and what is accepted.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;
use vpp_engine::market::DeliveryInterval;
use vpp_engine::resource::Telemetry;
use vpp_engine::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    #[error("payload of {bytes} bytes exceeds the maximum of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("payload is not the expected JSON object: {0}")]
    Json(String),
    #[error("field {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field_error(field: &'static str, reason: impl Into<String>) -> PayloadError {
    PayloadError::Field {
        field,
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
struct WireTelemetry<'a> {
    #[serde(borrow)]
    power_kw: &'a RawValue,
    #[serde(borrow, default)]
    soc_pct: Option<&'a RawValue>,
    available: bool,
    #[serde(borrow)]
    timestamp: &'a RawValue,
}

#[derive(Deserialize)]
struct WireSetpoint<'a> {
    #[serde(borrow)]
    setpoint_kw: &'a RawValue,
    #[serde(borrow, default)]
    interval: Option<&'a RawValue>,
    #[serde(borrow)]
    at: &'a RawValue,
}

/// The JSON text of a string without escapes, or None if `raw` is not a plain string.
fn plain_string(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

/// A decimal from a JSON number or numeric string, exactly.
fn decimal(field: &'static str, raw: &RawValue) -> Result<Decimal, PayloadError> {
    let text = raw.get();
    let text = plain_string(text).unwrap_or(text);
    let parsed = if text.contains(['e', 'E']) {
        Decimal::from_scientific(text)
    } else {
        Decimal::from_str_exact(text)
    };
    parsed.map_err(|e| {
        field_error(
            field,
            format!("{text:?} is not an exact decimal number ({e}); send a JSON number or numeric string of at most 28 significant digits"),
        )
    })
}

/// A timestamp from an RFC 3339 string or integer epoch milliseconds.
fn timestamp(field: &'static str, raw: &RawValue) -> Result<Timestamp, PayloadError> {
    let text = raw.get();
    if let Some(s) = plain_string(text) {
        return DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| field_error(field, format!("{s:?} is not RFC 3339 ({e})")));
    }
    let millis: i64 = text.parse().map_err(|_| {
        field_error(
            field,
            format!("{text} is neither an RFC 3339 string nor integer epoch milliseconds"),
        )
    })?;
    Utc.timestamp_millis_opt(millis)
        .single()
        .ok_or_else(|| field_error(field, format!("epoch milliseconds {millis} out of range")))
}

fn check_size(payload: &[u8], max_bytes: usize) -> Result<(), PayloadError> {
    if payload.len() > max_bytes {
        return Err(PayloadError::TooLarge {
            bytes: payload.len(),
            max: max_bytes,
        });
    }
    Ok(())
}

/// Decodes a telemetry payload of at most `max_bytes` (bounds are checked by the caller via
/// `Telemetry::validate`).
pub fn decode_telemetry(payload: &[u8], max_bytes: usize) -> Result<Telemetry, PayloadError> {
    check_size(payload, max_bytes)?;
    let wire: WireTelemetry<'_> =
        serde_json::from_slice(payload).map_err(|e| PayloadError::Json(e.to_string()))?;
    Ok(Telemetry {
        power_kw: decimal("power_kw", wire.power_kw)?,
        soc_pct: wire
            .soc_pct
            .map(|raw| decimal("soc_pct", raw))
            .transpose()?,
        available: wire.available,
        at: timestamp("timestamp", wire.timestamp)?,
    })
}

/// A setpoint as sent to a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetpointPayload {
    pub setpoint_kw: Decimal,
    pub interval: Option<DeliveryInterval>,
    pub at: Timestamp,
}

fn rfc3339(t: Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The JSON text of a setpoint (decimal written from its exact text).
pub fn encode_setpoint(setpoint: &SetpointPayload) -> String {
    let interval = setpoint
        .interval
        .map(|i| format!(",\"interval\":\"{}\"", rfc3339(i.start())))
        .unwrap_or_default();
    format!(
        "{{\"setpoint_kw\":{}{interval},\"at\":\"{}\"}}",
        setpoint.setpoint_kw.normalize(),
        rfc3339(setpoint.at)
    )
}

/// Decodes a setpoint payload (resource side, tests).
pub fn decode_setpoint(payload: &[u8], max_bytes: usize) -> Result<SetpointPayload, PayloadError> {
    check_size(payload, max_bytes)?;
    let wire: WireSetpoint<'_> =
        serde_json::from_slice(payload).map_err(|e| PayloadError::Json(e.to_string()))?;
    let interval = match wire.interval {
        None => None,
        Some(raw) => {
            let start = timestamp("interval", raw)?;
            Some(
                DeliveryInterval::starting_at(start)
                    .map_err(|e| field_error("interval", e.reason))?,
            )
        }
    };
    Ok(SetpointPayload {
        setpoint_kw: decimal("setpoint_kw", wire.setpoint_kw)?,
        interval,
        at: timestamp("at", wire.at)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    const MAX: usize = 1024;

    fn at(s: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn decimals_keep_every_digit() {
        let t = decode_telemetry(
            br#"{"power_kw": 0.1000000000000000055511151231, "soc_pct": "55.25", "available": true, "timestamp": "2026-01-01T08:00:00+08:00", "fw": {"v": 3}}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(t.power_kw, d("0.1000000000000000055511151231"));
        assert_eq!(t.soc_pct, Some(d("55.25")));
        assert!(t.available);
        assert_eq!(t.at, at("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn epoch_millis_exponents_and_null_soc_are_accepted() {
        let t = decode_telemetry(
            br#"{"power_kw": -1.25e3, "soc_pct": null, "available": false, "timestamp": 1767225600123}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(t.power_kw, d("-1250"));
        assert_eq!(t.soc_pct, None);
        assert_eq!(t.at, at("2026-01-01T00:00:00.123Z"));
        let t = decode_telemetry(br#"{"power_kw":7,"available":true,"timestamp":0}"#, MAX).unwrap();
        assert_eq!((t.power_kw, t.soc_pct), (d("7"), None));
    }

    #[test]
    fn malformed_payloads_name_the_problem() {
        let cases: [(&[u8], &str); 8] = [
            (b"not json", "JSON"),
            (br#"{"soc_pct": 1, "available": true, "timestamp": 0}"#, "power_kw"),
            (br#"{"power_kw": "abc", "available": true, "timestamp": 0}"#, "field power_kw"),
            (br#"{"power_kw": 1.00000000000000000000000000001, "available": true, "timestamp": 0}"#, "field power_kw"),
            (br#"{"power_kw": 1, "available": "yes", "timestamp": 0}"#, "JSON"),
            (br#"{"power_kw": 1, "available": true, "timestamp": 1.5}"#, "field timestamp"),
            (br#"{"power_kw": 1, "available": true, "timestamp": "yesterday"}"#, "field timestamp"),
            (br#"{"power_kw": 1, "power_kw": 2, "available": true, "timestamp": 0}"#, "duplicate"),
        ];
        for (payload, expected) in cases {
            let err = decode_telemetry(payload, MAX).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
        let big = vec![b' '; MAX + 1];
        assert_eq!(
            decode_telemetry(&big, MAX),
            Err(PayloadError::TooLarge {
                bytes: MAX + 1,
                max: MAX
            })
        );
    }

    #[test]
    fn setpoints_round_trip_exactly() {
        let sp = SetpointPayload {
            setpoint_kw: d("-250.500"),
            interval: Some(DeliveryInterval::starting_at(at("2026-01-01T00:15:00Z")).unwrap()),
            at: at("2026-01-01T00:14:58.5Z"),
        };
        let text = encode_setpoint(&sp);
        assert_eq!(
            text,
            r#"{"setpoint_kw":-250.5,"interval":"2026-01-01T00:15:00Z","at":"2026-01-01T00:14:58.500Z"}"#
        );
        assert_eq!(decode_setpoint(text.as_bytes(), MAX), Ok(sp.clone()));
        let bare = SetpointPayload {
            interval: None,
            ..sp
        };
        assert_eq!(
            decode_setpoint(encode_setpoint(&bare).as_bytes(), MAX),
            Ok(bare)
        );
    }
}
