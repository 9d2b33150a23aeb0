//! End-to-end: `vpp backtest` on the bundled ENTSO-E data through the real binary (risk
//! engine and auction clearing plugged in). Checks determinism byte for byte, the DST report,
//! and that P&L reconciles with the per-interval CSV.

use std::path::Path;
use std::process::Command;

fn run(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "backtest",
        "--from",
        "2023-10-25",
        "--to",
        "2023-11-02",
        "--seed",
        "5",
        "--out",
        out.to_str().expect("utf-8 temp path"),
    ];
    args.extend_from_slice(extra);
    let output = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(&args)
        .output()
        .expect("run vpp");
    assert!(
        output.status.success(),
        "vpp backtest failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn backtest_is_deterministic_and_reports_dst() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run(&a, &[]);
    run(&b, &[]);
    for file in ["report.json", "intervals.csv", "summary.txt"] {
        let x = std::fs::read(a.join(file)).expect("first report");
        let y = std::fs::read(b.join(file)).expect("second report");
        assert!(!x.is_empty());
        assert_eq!(x, y, "{file} differs between two identical runs");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("report.json")).expect("json"))
            .expect("parse");
    assert_eq!(report["dst_days"][0]["day"], "2023-10-29");
    assert_eq!(report["dst_days"][0]["intervals"], 100);
    assert_eq!(report["intervals_delivered"], 9 * 96 + 4);
    let repeated = report["dst"]["repeated_autumn_hours"]
        .as_array()
        .expect("list");
    assert!(repeated.iter().any(|h| h == "2023-10-29T02:00"));
    let names: Vec<&str> = report["strategies"]
        .as_array()
        .expect("strategies")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["battery_arbitrage", "no_trading", "naive_threshold"]
    );
    assert_eq!(report["strategies"][1]["pnl_cny"], "0");

    // The JSON P&L equals the sum of the CSV's per-interval P&L.
    let csv = std::fs::read_to_string(a.join("intervals.csv")).expect("csv");
    let sum: rust_decimal::Decimal = csv
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("battery_arbitrage,"))
        .filter_map(|l| l.split(',').nth(6))
        .filter_map(|v| v.parse::<rust_decimal::Decimal>().ok())
        .sum();
    let pnl: rust_decimal::Decimal = report["strategies"][0]["pnl_cny"]
        .as_str()
        .expect("pnl string")
        .parse()
        .expect("decimal");
    assert!(
        (sum - pnl).abs() < rust_decimal::Decimal::new(1, 0),
        "{sum} vs {pnl}"
    );
}

#[test]
fn bad_rules_fail_with_the_rule_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "backtest",
            "--strategy",
            "rules",
            "--params",
            "market=real_time",
            "rule.odd=when price > 100 and price < 50 then sell 1 MW at market",
            "--out",
            dir.path().to_str().expect("utf-8"),
        ])
        .output()
        .expect("run vpp");
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("rule.odd.when") && err.contains("contradictory"),
        "{err}"
    );
}

#[test]
fn bad_price_rows_name_file_line_and_column_and_write_no_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prices = dir.path().join("bad.csv");
    std::fs::write(
        &prices,
        "interval_start_local,price_eur_per_mwh\n2023-06-01T00:00:00,50\n2023-06-01T01:00:00,abc\n",
    )
    .expect("write csv");
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args([
            "backtest",
            "--prices",
            prices.to_str().expect("utf-8"),
            "--from",
            "2023-06-01",
            "--to",
            "2023-06-01",
            "--out",
            out.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run vpp");
    assert!(!output.status.success(), "a bad price must fail the run");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("bad.csv"), "names the file: {err}");
    assert!(
        err.contains("line 3, column 2"),
        "names line and column: {err}"
    );
    assert!(!out.exists(), "no report written");
}
