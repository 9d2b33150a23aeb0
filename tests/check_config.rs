//! One validation: every single mutation of config/demo.toml below is refused by
//! `vpp check-config` and by `vpp run` (both call `Park::parse`), each naming the key path.
//! The unmutated demo passes both checks (a control, so a refusal means the mutation).

use std::process::Command;
use vpp::config::{Park, DEMO_CONFIG_TOML};

/// `(what, mutated config, key path the error must name)`.
fn mutations() -> Vec<(&'static str, String, &'static str)> {
    let demo = DEMO_CONFIG_TOML;
    let rep = |from: &str, to: &str| {
        assert!(demo.contains(from), "demo.toml has no {from:?}");
        demo.replacen(from, to, 1)
    };
    let rep_all = |from: &str, to: &str| {
        assert!(demo.contains(from), "demo.toml has no {from:?}");
        demo.replace(from, to)
    };
    let append = |tail: &str| format!("{demo}\n{tail}\n");
    vec![
        (
            "unknown strategy kind",
            rep("kind = \"real_time_threshold\"", "kind = \"no_such_kind\""),
            "strategies[2].kind",
        ),
        (
            "unknown strategy parameter",
            rep("max_order_mw = 0.5", "max_order_mw = 0.5\nno_such_param = 1"),
            "strategies[2].params",
        ),
        (
            "negative max_order_mw",
            rep("max_order_mw = 0.5", "max_order_mw = -1"),
            "strategies[2].params.max_order_mw",
        ),
        (
            "buy_below above sell_above",
            rep(
                "buy_below_cny_per_mwh = 240",
                "buy_below_cny_per_mwh = 400",
            ),
            "strategies[2].params",
        ),
        (
            "battery_arbitrage on a regulation market",
            rep(
                "market = \"yunnan-day-ahead\"\n[strategies.params]",
                "market = \"yunnan-regulation\"\n[strategies.params]",
            ),
            "strategies[0].market",
        ),
        (
            "negative risk limit",
            append("[risk.strategy_defaults]\nmax_order_mw = -1"),
            "risk.",
        ),
        (
            "unknown risk key",
            append("[risk]\nno_such_limit = 1"),
            "risk",
        ),
        (
            "bad risk time zone",
            append("[risk]\ntrading_day_timezone = \"Mars/Olympus_Mons\""),
            "risk",
        ),
        (
            "mysql database",
            rep("sqlite://data/vpp.db", "mysql://user@127.0.0.1/vpp"),
            "daemon.database_url",
        ),
        (
            "api_listen not an address",
            rep("api_listen = \"127.0.0.1:8080\"", "api_listen = \"localhost\""),
            "daemon.api_listen",
        ),
        (
            "venue_listen not an address",
            rep("venue_listen = \"127.0.0.1:0\"", "venue_listen = \"127.0.0.1:port\""),
            "daemon.venue_listen",
        ),
        (
            "'/' in a resource name",
            rep_all("wind-ridge", "wind/ridge"),
            "resources[2].name",
        ),
        (
            "'+' in a site name",
            rep("site = \"east-ridge\"", "site = \"east+ridge\""),
            "resources[2].site",
        ),
        (
            "'#' in a resource name",
            rep_all("\"battery-north\"", "\"battery#north\""),
            "resources[3].name",
        ),
        (
            "a resource listed twice in one aggregation",
            rep(
                "  { resource = \"wind-ridge\" },",
                "  { resource = \"wind-ridge\", share_pct = 50 },\n  { resource = \"wind-ridge\", share_pct = 50 },",
            ),
            "aggregations[0].members[2].resource",
        ),
        (
            "an aggregation without members",
            append("[[aggregations]]\nname = \"empty\"\nmembers = []"),
            "aggregations[2].members",
        ),
    ]
}

fn vpp(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("vpp runs")
}

#[test]
fn check_config_and_run_refuse_the_same_mutations_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("demo.toml");
    std::fs::write(&control, DEMO_CONFIG_TOML).unwrap();
    let out = vpp(&["check-config", control.to_str().unwrap()], dir.path());
    assert!(
        out.status.success(),
        "the demo must pass: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (i, (what, text, key)) in mutations().into_iter().enumerate() {
        let path = dir.path().join(format!("m{i}.toml"));
        std::fs::write(&path, &text).unwrap();
        let p = path.to_str().unwrap();

        // The library's one validation.
        let err = Park::parse(p, &text).expect_err(what).to_string();
        assert!(
            err.contains(key),
            "{what}: error does not name {key}: {err}"
        );

        // `vpp check-config`.
        let out = vpp(&["check-config", p], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: check-config said ok");
        assert!(stderr.contains(key), "{what}: check-config: {stderr}");

        // `vpp run` refuses before it starts anything.
        let out = vpp(
            &[
                "run",
                "--config",
                p,
                "--for",
                "1s",
                "--api-listen",
                "127.0.0.1:0",
            ],
            dir.path(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: vpp run started");
        assert!(stderr.contains(key), "{what}: vpp run: {stderr}");
    }
}
