//! A strategy halted by supervisor escalation is visible and quiet: `GET /api/v1/engine` shows
//! it halted (and not enabled), and the capacity updates refused to it every second are
//! counted, not logged one WARN each (at most one line per strategy per minute).
//!
//! Waits are bounded and only wait for progress; nothing asserts on timing.

mod api_common;

use api_common::{boot, create_token, get, wait_for};
use std::time::{Duration, Instant};

fn config(db: &str) -> String {
    let base = vpp::config::DEMO_CONFIG_TOML.replace("sqlite://data/vpp.db", db);
    format!(
        "{base}\n[supervision]\nmax_restarts = 1\nwithin_s = 600\nbackoff_initial_ms = 10\nbackoff_max_ms = 10\n\
         \n[[strategies]]\nname = \"chaos\"\nkind = \"chaos\"\naggregation = \"vpp-south\"\n\
         market = \"yunnan-real-time\"\n[strategies.params]\npanic_every = 1\n"
    )
}

#[test]
fn a_halted_strategy_shows_halted_and_its_refusals_do_not_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("vpp.db").display());
    let cfg = dir.path().join("vpp.toml");
    std::fs::write(&cfg, config(&db)).unwrap();
    let cfg = cfg.display().to_string();
    let d = boot(&["--config", &cfg, "--speed", "60"]);
    let token = create_token(&db, "viewer", "watch");

    let chaos = wait_for(60, "the chaos strategy to halt", || {
        let e = get(&d.addr, "/api/v1/engine", &token).json();
        e["strategies"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "chaos").cloned())
            .filter(|s| s["halted"] == true)
    });
    assert_eq!(chaos["enabled"], false, "{chaos}");
    assert!(
        chaos["halt_cause"].as_str().is_some_and(|c| !c.is_empty()),
        "{chaos}"
    );

    // Capacity updates keep arriving (one a second per aggregation): they are refused and
    // counted; the log says so at most once for the strategy.
    let until = Instant::now() + Duration::from_secs(5);
    let mut refused_lines = 0;
    while Instant::now() < until {
        if let Ok(line) = d.lines.recv_timeout(Duration::from_millis(100)) {
            if line.contains("strategy message refused") {
                refused_lines += 1;
            }
        }
    }
    assert!(
        refused_lines <= 1,
        "{refused_lines} refusal lines in a few seconds for one halted strategy"
    );
    let metrics = api_common::call(&d.addr, "GET", "/metrics", None, None).body;
    let counted = metrics
        .lines()
        .any(|l| l.contains("strategy/chaos") && l.contains("halted") && !l.starts_with('#'));
    assert!(counted, "refusals to the halted strategy are counted");
}
