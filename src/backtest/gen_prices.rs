//! The synthetic price series behind `vpp backtest --generate-prices` (benchmarks, long runs
//! the bundled data does not cover): a 15-minute local-time CSV in the ENTSO-E layout.
//!
//! Model, in integer euro-cents (no floating point, so the bytes are the same on every
//! machine): a seasonal base (≈ 105 EUR/MWh in January, ≈ 75 in July, linear in between), an
//! hourly shape (night trough, morning and evening peaks, a midday solar dip), linear
//! between hours per quarter; an AR(1) noise term (`ar ← 0.9 ar + U(±8 EUR)`); rare scarcity
//! spikes (1 in 2,000 intervals, +200..600 EUR) and, April to August 11:00–15:00, negative
//! solar hours (1 in 40, −100 EUR). Randomness is SplitMix64 of the seed and the row number.
//!
//! Invariant: the output depends only on (from, to, time zone, seed); rows are in UTC order,
//! so the repeated autumn hour appears twice and the spring-forward hour not at all, as in
//! the real exports.

use chrono::{Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use std::io::Write;

/// Hourly shape, percent of the base (local hour 0..23).
const SHAPE_PCT: [i64; 24] = [
    78, 74, 71, 70, 72, 80, 95, 118, 128, 120, 108, 96, 88, 85, 88, 96, 110, 128, 140, 136, 122,
    105, 92, 84,
];

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in `lo..=hi`.
fn uniform(draw: u64, lo: i64, hi: i64) -> i64 {
    let span = u64::try_from(hi - lo + 1).unwrap_or(1);
    lo + i64::try_from(draw % span).unwrap_or(0)
}

/// Writes the header and one row per 15-minute interval from `from`'s local midnight to the
/// local midnight after `to`; returns the number of rows.
pub fn write_csv(
    out: &mut impl Write,
    from: NaiveDate,
    to: NaiveDate,
    tz: Tz,
    seed: u64,
) -> std::io::Result<u64> {
    let midnight = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .and_then(|t| tz.from_local_datetime(&t).earliest())
            .map(|t| t.with_timezone(&Utc))
    };
    let (Some(start), Some(end)) = (midnight(from), to.succ_opt().and_then(midnight)) else {
        return Err(std::io::Error::other("no local midnight for the range"));
    };
    writeln!(out, "interval_start_local,price_eur_per_mwh")?;
    let mut t = start;
    let mut row = 0u64;
    let mut ar_cents = 0i64;
    while t < end {
        let local = t.with_timezone(&tz);
        let doy = i64::from(local.ordinal0());
        // +1500 cents in mid-winter down to −1500 in mid-summer.
        let season = 3000 * (doy - 182).abs() / 182 - 1500;
        let base = 9000 + season;
        let (hour, minute) = (local.hour() as usize, i64::from(local.minute()));
        let shape = SHAPE_PCT[hour] * (60 - minute) + SHAPE_PCT[(hour + 1) % 24] * minute;
        let mut cents = base * shape / 6000;
        let r = splitmix(seed ^ splitmix(row));
        ar_cents = ar_cents * 9 / 10 + uniform(r, -800, 800);
        cents += ar_cents;
        if (r >> 20) % 2000 == 0 {
            cents += uniform(r >> 32, 20_000, 60_000);
        }
        let month = local.month();
        if (4..=8).contains(&month) && (11..15).contains(&hour) && (r >> 40) % 40 == 0 {
            cents -= 10_000;
        }
        let sign = if cents < 0 { "-" } else { "" };
        writeln!(
            out,
            "{},{sign}{}.{:02}",
            local.format("%Y-%m-%dT%H:%M:%S"),
            cents.abs() / 100,
            cents.abs() % 100
        )?;
        row += 1;
        t += Duration::minutes(15);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpp_engine::backtest::{load_hourly_csv, CsvFormat, DEFAULT_MAX_ROWS};

    fn generate(seed: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let day = |m, d| NaiveDate::from_ymd_opt(2023, m, d).unwrap();
        write_csv(
            &mut out,
            day(3, 25),
            day(3, 27),
            chrono_tz::Europe::Brussels,
            seed,
        )
        .unwrap();
        out
    }

    #[test]
    fn generated_prices_are_seeded_and_load_as_a_quarter_hour_series() {
        let (a, b, c) = (generate(1), generate(1), generate(2));
        assert_eq!(a, b, "same seed, same bytes");
        assert_ne!(a, c, "another seed, other prices");
        let format = CsvFormat {
            timezone: chrono_tz::Europe::Brussels,
            currency_factor: rust_decimal::Decimal::ONE,
            max_rows: DEFAULT_MAX_ROWS,
        };
        let series = load_hourly_csv(a.as_slice(), &format).unwrap();
        // Three local days, one of them the 23-hour spring-forward day.
        assert_eq!(series.len(), 3 * 96 - 4);
        assert_eq!(series.dst.missing_spring_hours, vec!["2023-03-26T02:00"]);
        assert_eq!(series.dst.utc_gaps_hours, 0);
    }
}
