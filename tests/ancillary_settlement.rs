//! `vpp run` with the built-in `regulation_offer` and `dr_responder` strategies, end to end:
//! the demo park on its in-process venue plus a demand-response market, a regulation offer for
//! `vpp-north` and a DR responder for `vpp-south`, a deemed mileage of 0.5 MW per MW
//! (`[settlement] regulation_mileage_mw_per_mw`). The venue clears the offer and awards the
//! response; the Settlement actors must store draft records with
//! - a `regulation_capacity` line (capacity MW × the clearing price quoted in CNY/MW per interval) and a
//!   `regulation_mileage` line at the venue's announced mileage price (12 CNY/MW, the
//!   simulator's default, which only reaches settlement through the connector's ancillary
//!   result) for 0.5 × the capacity MW;
//! - a `demand_response` line at a positive price, never more than the committed MWh;
//!
//! and every record's lines add up to its total. SIGTERM then exits 0. Waits are bounded and
//! only wait for progress; nothing asserts on timing.

use rust_decimal::Decimal;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vpp::config::DEMO_CONFIG_TOML;
use vpp_persistence::SettlementRecord;

/// 1.5 real seconds per 15-minute interval: the first DR invitation that can still be answered
/// is at most ~17 intervals away.
const SPEED: i64 = 600;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn amount(r: &SettlementRecord, kind: &str) -> Option<(Decimal, Decimal, Decimal)> {
    r.lines
        .iter()
        .find(|l| l.kind == kind)
        .map(|l| (l.quantity_mwh, l.price_cny_per_mwh, l.amount_cny))
}

#[test]
fn regulation_and_demand_response_awards_are_settled_by_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("vpp.db");
    let db = format!("sqlite://{}", db_path.display());
    let config = DEMO_CONFIG_TOML
        .replace("sqlite://data/vpp.db", &db)
        .replace("api_listen = \"127.0.0.1:8080\"", "api_listen = \"\"")
        .replace(
            "rates_as_of = \"2026-01-01\"",
            "rates_as_of = \"2026-01-01\"\nregulation_mileage_mw_per_mw = 0.5",
        )
        + "\n[[markets]]\nname = \"yunnan-dr\"\nkind = \"demand_response\"\n\
           timezone = \"Asia/Shanghai\"\nprice_cap_cny_per_mwh = 1500\n\
           price_floor_cny_per_mwh = 0\nnegative_prices_allowed = false\n\
           gate_closure_minutes_before = 0\n\
           \n[[strategies]]\nname = \"north-regulation\"\nkind = \"regulation_offer\"\n\
           aggregation = \"vpp-north\"\nmarket = \"yunnan-regulation\"\n\
           [strategies.params]\nreserve_pct = 20\nmax_offer_mw = 1\nlead_intervals = 5\n\
           \n[[strategies]]\nname = \"south-dr\"\nkind = \"dr_responder\"\n\
           aggregation = \"vpp-south\"\nmarket = \"yunnan-dr\"\n\
           [strategies.params]\nopportunity_cost_cny_per_mwh = 1\nmax_mw = 0.5\n";
    assert!(
        config.contains("regulation_mileage_mw_per_mw = 0.5"),
        "config edited"
    );
    let config_path = dir.path().join("vpp.toml");
    std::fs::write(&config_path, config).unwrap();

    let anchor = chrono::Utc::now().timestamp();
    let child = Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config_path)
        .args(["--speed", &SPEED.to_string(), "--status-every", "1"])
        .args(["--clock-anchor", &anchor.to_string()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("daemon starts");
    let mut daemon = Daemon(child);
    let stdout = daemon.0.stdout.take().unwrap();
    let logs = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });

    // The run covers a few simulated hours from the anchor (Shanghai trading days).
    let today = chrono::DateTime::from_timestamp(anchor, 0)
        .unwrap()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive();
    let days = [today, today.succ_opt().unwrap()];
    let system = actix::System::new();
    let store = system.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The daemon creates and migrates the database at boot.
            let created = db_path.exists();
            if let Some(s) = if created {
                vpp_persistence::Store::open(&db).await.ok()
            } else {
                None
            } {
                if s.list_settlements(today, 1).await.is_ok() {
                    break s;
                }
            }
            assert!(Instant::now() < deadline, "the daemon's store never opened");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let records = || -> Vec<SettlementRecord> {
        system.block_on(async {
            let mut all = Vec::new();
            for day in days {
                all.extend(
                    store
                        .list_settlements(day, 10_000)
                        .await
                        .unwrap_or_default(),
                );
            }
            all
        })
    };
    let settled = |rs: &[SettlementRecord], kind: &str| {
        rs.iter()
            .any(|r| amount(r, kind).is_some_and(|(_, _, a)| a > Decimal::ZERO))
    };

    let deadline = Instant::now() + Duration::from_secs(75);
    let stored = loop {
        let rs = records();
        if settled(&rs, "regulation_capacity")
            && rs.iter().any(|r| amount(r, "demand_response").is_some())
        {
            break rs;
        }
        if let Ok(Some(status)) = daemon.0.try_wait() {
            panic!("daemon exited with {status} before settling regulation and DR");
        }
        assert!(
            Instant::now() < deadline,
            "no regulation capacity and DR lines settled; records: {:?}",
            rs.iter()
                .map(|r| r.lines.iter().map(|l| l.kind.clone()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    };

    let killed = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = daemon.0.wait().unwrap();
    let lines = logs.join().unwrap();
    assert!(
        status.success(),
        "SIGTERM exits 0, got {status}; last logs:\n{}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    );

    let mut regulation = 0;
    let mut demand = 0;
    for r in &stored {
        assert_eq!(r.detail["status"], "draft", "{r:?}");
        let sum: Decimal = r
            .lines
            .iter()
            .filter(|l| l.kind != "resource_share")
            .map(|l| l.amount_cny)
            .sum();
        assert_eq!(sum, r.total_cny, "a record's lines add up to its total");
        // Shown with --nocapture: what the daemon paid.
        for l in r
            .lines
            .iter()
            .filter(|l| l.kind.starts_with("regulation") || l.kind == "demand_response")
        {
            eprintln!(
                "{} {}: {} × {} = {} CNY",
                r.aggregation_id, l.kind, l.quantity_mwh, l.price_cny_per_mwh, l.amount_cny
            );
        }
        if let Some((capacity_mw, price, value)) = amount(r, "regulation_capacity") {
            regulation += 1;
            assert!(price > Decimal::ZERO, "{r:?}");
            let rounded = (capacity_mw * price).round_dp(2);
            assert_eq!(
                value, rounded,
                "capacity = MW × the quoted CNY/MW per interval"
            );
            let (mileage_mw, mileage_price, _) =
                amount(r, "regulation_mileage").expect("a mileage line beside the capacity");
            // Deemed mileage 0.5 MW per MW of capacity, at the venue's announced 12 CNY/MW.
            assert_eq!(mileage_mw, capacity_mw * Decimal::new(5, 1), "{r:?}");
            assert_eq!(mileage_price, Decimal::from(12), "{r:?}");
        }
        if let Some((paid_mwh, price, value)) = amount(r, "demand_response") {
            demand += 1;
            assert!(price > Decimal::ZERO, "{r:?}");
            assert!(paid_mwh >= Decimal::ZERO, "{r:?}");
            // At most the committed 0.5 MW × 0.25 h.
            assert!(paid_mwh <= Decimal::new(125, 3), "{r:?}");
            assert_eq!(value, (paid_mwh * price).round_dp(2));
        }
    }
    assert!(
        regulation > 0 && demand > 0,
        "{regulation} regulation, {demand} DR records"
    );
}
