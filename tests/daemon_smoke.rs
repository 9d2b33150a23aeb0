//! `vpp run` on the built-in demo, end to end: boots with the in-process venue and the
//! simulated park, logs as JSON, writes the latency snapshot, shuts down gracefully on SIGTERM
//! with exit code 0, and `vpp latency` prints the percentile table. No timing assertions:
//! waits are bounded and only wait for progress.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_boots_logs_json_writes_latency_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("vpp.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["--log-format", "json", "run", "--database-url", &db])
        .args([
            "--speed",
            "300",
            "--status-every",
            "1",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("daemon starts");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });

    let snapshot = dir.path().join("latency.json");
    let deadline = Instant::now() + Duration::from_secs(40);
    while !snapshot.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("daemon exited early with {status}");
        }
        assert!(Instant::now() < deadline, "no latency snapshot was written");
        std::thread::sleep(Duration::from_millis(100));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM shuts down with exit 0, got {status}"
    );

    let lines = reader.join().unwrap();
    let logs: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("every JSON log line parses"))
        .collect();
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_owned();
    assert!(
        logs.iter().any(|v| message(v) == "trading"),
        "no 'trading' log"
    );
    assert!(
        logs.iter().any(|v| message(v).contains("connections 1")),
        "no status line with a live connection"
    );
    assert!(logs.iter().any(|v| message(v) == "journal flushed"));

    let out = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["latency", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("P99.9_US"), "{table}");
    assert!(table.contains("telemetry_to_capacity"), "{table}");
    assert!(table.contains("market_data_decode"), "{table}");
}
