//! Live/backtest parity, shadow mode and strategy versions, end to end through the binary.
//!
//! `vpp run` (built-in venue simulator, demo park) runs two real-time threshold strategies
//! with the same parameters: `parity-live` trades, `parity-shadow` is its shadow twin
//! (`shadow = true`). With `record_session_dir` set, the daemon records what each strategy
//! was fed and what it emitted. Then `vpp backtest --session` replays each recorded session
//! through the same strategy code, and the test checks:
//! - the replay emits exactly the live intents, in the same order, with the same instants
//!   and client order ids (live and shadow);
//! - the shadow strategy saw the same market data as its live twin, sent nothing to the venue
//!   (no order of it in the store) and its paper P&L (written by the daemon at shutdown)
//!   equals the replay's;
//! - every order of the live strategy carries the strategy version (`s1v1b..`), and a second
//!   boot with changed parameters records version 2 while an unchanged one records nothing.
//!
//! No timing assertions: the daemon runs for a fixed real time (`--for`), waits are bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

const STRATEGIES: &str = r#"
[[strategies]]
name = "parity-live"
kind = "real_time_threshold"
aggregation = "vpp-north"
market = "yunnan-real-time"
[strategies.params]
sell_above_cny_per_mwh = 300
buy_below_cny_per_mwh = 290
max_order_mw = 0.1
max_position_mw = 1000

[[strategies]]
name = "parity-shadow"
kind = "real_time_threshold"
aggregation = "vpp-north"
market = "yunnan-real-time"
shadow = true
[strategies.params]
sell_above_cny_per_mwh = 300
buy_below_cny_per_mwh = 290
max_order_mw = 0.1
max_position_mw = 1000
"#;

/// The demo config with only the parity strategies, recording sessions into `dir`.
fn config(dir: &Path, sell_above: u32) -> String {
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"))
        .expect("demo config");
    let cut = demo
        .find("\n[[strategies]]")
        .expect("the demo has strategies");
    let daemon = demo[..cut].replacen(
        "cancel_on_shutdown = true",
        &format!(
            "cancel_on_shutdown = true\nrecord_session_dir = {:?}",
            dir.join("sessions").display().to_string()
        ),
        1,
    );
    assert!(
        daemon.contains("record_session_dir"),
        "demo [daemon] changed"
    );
    let strategies = STRATEGIES.replacen(
        "sell_above_cny_per_mwh = 300\n",
        &format!("sell_above_cny_per_mwh = {sell_above}\n"),
        1,
    );
    format!("{daemon}\n{strategies}")
}

fn run_daemon(dir: &Path, config_text: &str, real_secs: u32) {
    let cfg = dir.join("parity.toml");
    std::fs::write(&cfg, config_text).unwrap();
    let db = format!("sqlite://{}", dir.join("vpp.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--database-url", &db, "--speed", "300", "--api-listen", ""])
        .args(["--for", &format!("{real_secs}s")])
        .env("RUST_LOG", "warn")
        .output()
        .expect("daemon runs");
    assert!(
        out.status.success(),
        "daemon failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn replay(session: &Path, out: &Path) -> (Vec<serde_json::Value>, serde_json::Value) {
    let status = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["backtest", "--session"])
        .arg(session)
        .arg("--out")
        .arg(out)
        .output()
        .expect("backtest runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("session_report.json")).unwrap())
            .unwrap();
    (lines(&out.join("intents.jsonl")), report)
}

fn market_data(session: &[serde_json::Value]) -> Vec<serde_json::Value> {
    session
        .iter()
        .filter(|e| e["type"] == "market_data")
        .map(|e| e["data"].clone())
        .collect()
}

fn store_query<T: Send + 'static>(
    dir: &Path,
    f: impl FnOnce(sqlx::SqlitePool) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>,
) -> T {
    let url = format!("sqlite://{}", dir.join("vpp.db").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        f(pool).await
    })
}

fn versions(dir: &Path) -> Vec<(i64, i64)> {
    store_query(dir, |pool| {
        Box::pin(async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT strategy_id, version FROM strategy_versions ORDER BY strategy_id, version",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        })
    })
}

fn order_ids(dir: &Path) -> Vec<String> {
    store_query(dir, |pool| {
        Box::pin(async move {
            sqlx::query_as::<_, (String,)>("SELECT client_order_id FROM orders")
                .fetch_all(&pool)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.0)
                .collect()
        })
    })
}

#[test]
fn live_shadow_and_backtest_emit_the_same_intents() {
    let dir = tempfile::tempdir().unwrap();
    run_daemon(dir.path(), &config(dir.path(), 300), 20);
    let sessions = dir.path().join("sessions");

    // Live and shadow: the replay of the recorded session emits the recorded intents.
    let mut replays = BTreeMap::new();
    for name in ["parity-live", "parity-shadow"] {
        let live = lines(&sessions.join(format!("{name}.intents.jsonl")));
        assert!(!live.is_empty(), "{name} emitted no intent in the live run");
        let out = dir.path().join(format!("replay-{name}"));
        let (replayed, report) = replay(&sessions.join(format!("{name}.session.jsonl")), &out);
        assert_eq!(
            replayed.len(),
            live.len(),
            "{name}: replay emitted {} intents, live {}",
            replayed.len(),
            live.len()
        );
        for (i, (a, b)) in live.iter().zip(&replayed).enumerate() {
            assert_eq!(a, b, "{name}: intent {i} differs");
        }
        replays.insert(name, report);
    }

    // The shadow twin saw the same market data as the live strategy (the same items; each
    // actor conflates on its own, so compare distinct items).
    let seen = |name: &str| -> BTreeSet<String> {
        market_data(&lines(&sessions.join(format!("{name}.session.jsonl"))))
            .iter()
            .map(|d| d.to_string())
            .collect()
    };
    let (live_md, shadow_md) = (seen("parity-live"), seen("parity-shadow"));
    assert!(!live_md.is_empty());
    let only_one: Vec<_> = live_md.symmetric_difference(&shadow_md).collect();
    assert!(
        only_one.len() * 100 <= live_md.len(),
        "{} of {} market data items seen by only one twin: {:?}",
        only_one.len(),
        live_md.len(),
        only_one.iter().take(3).collect::<Vec<_>>()
    );

    // The shadow sent nothing; every live order carries strategy 1, version 1.
    let ids = order_ids(dir.path());
    assert!(!ids.is_empty(), "the live strategy placed no order");
    assert!(
        ids.iter().all(|id| !id.starts_with("s2")),
        "shadow orders reached the venue: {ids:?}"
    );
    assert!(ids.iter().all(|id| id.starts_with("s1v1b")), "{ids:?}");

    // Its paper P&L, as the daemon wrote it at shutdown, is the replay's.
    let shadow: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("shadow/parity-shadow.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shadow["paper"], replays["parity-shadow"]["paper"]);
    assert!(shadow["paper"]["orders"].as_u64().unwrap_or(0) > 0);

    // Versions: both strategies have version 1. An unchanged boot adds none; a parameter
    // change of the live strategy adds its version 2, and its new orders carry it.
    assert_eq!(versions(dir.path()), vec![(1, 1), (2, 1)]);
    run_daemon(dir.path(), &config(dir.path(), 300), 3);
    assert_eq!(versions(dir.path()), vec![(1, 1), (2, 1)]);
    run_daemon(dir.path(), &config(dir.path(), 301), 8);
    assert_eq!(versions(dir.path()), vec![(1, 1), (1, 2), (2, 1)]);
    assert!(
        order_ids(dir.path())
            .iter()
            .any(|id| id.starts_with("s1v2b")),
        "no order of version 2"
    );
}
