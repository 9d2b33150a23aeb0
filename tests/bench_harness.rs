//! `vpp bench --quick --json` end to end: the harness boots the real in-process trading path
//! twice (two low rates), drives the venue and reports. Asserts structure only — counts that
//! must add up, ordered percentiles, queues within their bounds — never timings.

use serde_json::Value;
use std::process::Command;

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {v}", path.join(".")))
}

#[test]
fn quick_bench_reports_consistent_counts_percentiles_and_bounded_queues() {
    let out = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args([
            "bench", "--quick", "--json", "--secs", "1", "--rates", "500,2000",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("vpp bench runs");
    assert!(
        out.status.success(),
        "vpp bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the report is JSON");
    let rates = report["rates"].as_array().expect("rates");
    assert_eq!(rates.len(), 2);
    assert!(report["probes"].as_array().expect("probes").is_empty());
    for (r, target) in rates.iter().zip([500.0, 2000.0]) {
        assert_eq!(num(r, &["target_msgs_per_s"]), target);
        // The venue published the driven stream and the strategy path ordered on it.
        assert!(num(r, &["published"]) > 0.0, "{r}");
        assert!(num(r, &["decoded"]) > 0.0, "{r}");
        let t2o = &r["tick_to_order"];
        assert!(num(t2o, &["count"]) > 0.0, "no order written: {r}");
        assert_eq!(num(r, &["orders_written"]), num(t2o, &["count"]));
        // Percentiles are ordered.
        for series in [
            "tick_to_order",
            "oms_to_wire",
            "strategy_decision",
            "risk_check",
        ] {
            let s = &r[series];
            if num(s, &["count"]) == 0.0 {
                continue;
            }
            let (p50, p99, p999, max) = (
                num(s, &["p50_us"]),
                num(s, &["p99_us"]),
                num(s, &["p999_us"]),
                num(s, &["max_us"]),
            );
            assert!(
                p50 <= p99 && p99 <= p999 && p999 <= max * 1.01,
                "{series}: {s}"
            );
        }
        // A tick-to-order sample spans its oms-to-wire part, so it has no fewer samples
        // than there were orders caused by market data, and the sum of the inbox adds up.
        let inbox = &r["strategy_inbox"];
        assert_eq!(
            num(inbox, &["published"]),
            num(inbox, &["delivered"]) + num(inbox, &["conflated"]) + num(inbox, &["pending"]),
            "inbox accounting: {inbox}"
        );
        assert!(num(inbox, &["max_queued_wakes"]) <= 1.0, "{inbox}");
        assert_eq!(num(inbox, &["refused_keys_full"]), 0.0);
        // Every bounded queue stayed within its bound.
        let queues = r["queue_depth_max"].as_object().expect("queues");
        assert!(
            queues.keys().any(|q| q.starts_with("connector_cmds/")),
            "{queues:?}"
        );
        for (q, d) in queues {
            assert!(
                num(d, &["max"]) <= num(d, &["bound"]),
                "queue {q} above its bound: {d}"
            );
        }
        // RSS comes from /proc and the high-water mark is never below the current value.
        assert!(num(r, &["rss_kib"]) > 0.0);
        assert!(num(r, &["hwm_kib"]) >= num(r, &["rss_kib"]));
        // A rate is sustained exactly when nothing bounded it.
        let limits = r["limits"].as_array().expect("limits");
        assert_eq!(r["sustained"].as_bool(), Some(limits.is_empty()), "{r}");
    }
    let max = &report["max_sustained_msgs_per_s"];
    if let Some(m) = max.as_f64() {
        assert!(rates
            .iter()
            .any(|r| num(r, &["target_msgs_per_s"]) == m && r["sustained"] == true));
    }
}
