//! Crash recovery end to end: the daemon runs as a child process against a venue simulator
//! that lives in this test process (so it outlives every daemon), under order load from the
//! `order_flow` strategy; it is killed with SIGKILL mid-flow and restarted, three times, then
//! run once more and shut down gracefully (cancelling its orders). Then:
//! - the journal and the venue agree on every order (status) and every fill;
//! - no client order id reached the venue twice (the venue counts every arrival);
//! - no order the venue acknowledged is missing from the journal.
//!
//! Waits are bounded and only wait for progress; nothing asserts on timing.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vpp::config::{Park, DEMO_CONFIG_TOML};
use vpp_actors::live::clock::ScaledClock;
use vpp_engine::ids::ClientOrderId;
use vpp_engine::order::OrderStatus;
use vpp_market_adapters::protocol::{ClientMsg, FillsSinceQuery, OrderStatusQuery, VenueMsg};
use vpp_market_adapters::sim::server::{VenueHandle, VenueServer};

const API_KEY: &str = "demo-key";
const SPEED: u32 = 300;
const KILL_CYCLES: usize = 3;

fn config(db: &str) -> String {
    let base = DEMO_CONFIG_TOML.replace("sqlite://data/vpp.db", db);
    format!(
        "{base}\n[[strategies]]\nname = \"flow\"\nkind = \"order_flow\"\naggregation = \"vpp-south\"\n\
         market = \"yunnan-real-time\"\n[strategies.params]\nevery_n = 6\nquantity_mw = 0.1\nmax_open = 8\n"
    )
}

struct Venue {
    rt: tokio::runtime::Runtime,
    handle: VenueHandle,
}

impl Venue {
    fn start(park: &Park, clock: ScaledClock) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let cfg = vpp::daemon::venue::venue_config(park, "127.0.0.1:0".parse().unwrap());
        let handle = rt
            .block_on(VenueServer::start(cfg, Arc::new(clock)))
            .expect("venue starts");
        Self { rt, handle }
    }

    fn account_seq(&self) -> u64 {
        self.handle.with_venue(|v| v.account_seq(0))
    }

    fn ask(&self, msg: ClientMsg) -> Vec<VenueMsg> {
        let _guard = self.rt.enter();
        self.handle.submit_as(API_KEY, msg)
    }
}

fn spawn_daemon(cfg: &std::path::Path, url: &str, anchor: i64, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["run", "--config"])
        .arg(cfg)
        .args(["--venue-url", url, "--speed", &SPEED.to_string()])
        .args(["--clock-anchor", &anchor.to_string(), "--status-every", "1"])
        .args(["--api-listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("daemon starts")
}

/// Waits until the venue has produced `more` exec reports since `from`, or panics.
fn wait_for_reports(venue: &Venue, child: &mut Child, from: u64, more: u64) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while venue.account_seq() < from + more {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("daemon exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "no order flow: venue seq {} after start at {from}",
            venue.account_seq()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every exec report of the account, in sequence order.
fn venue_reports(venue: &Venue) -> Vec<vpp_market_adapters::protocol::WireExecReport> {
    let mut out = Vec::new();
    let mut since = 0;
    loop {
        let replies = venue.ask(ClientMsg::FillsSince(FillsSinceQuery {
            account_seq: since,
        }));
        let Some(VenueMsg::FillsSince(reply)) = replies.into_iter().next() else {
            panic!("no fills_since reply");
        };
        if let Some(last) = reply.reports.last() {
            since = last.account_seq;
        }
        out.extend(reply.reports);
        if !reply.more {
            return out;
        }
    }
}

fn venue_status(venue: &Venue, id: &ClientOrderId) -> OrderStatus {
    let replies = venue.ask(ClientMsg::OrderStatus(OrderStatusQuery {
        client_order_id: id.clone(),
    }));
    match replies.into_iter().next() {
        Some(VenueMsg::OrderStatus(r)) => r.order.expect("venue knows the order").status,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn kill_9_restart_cycles_lose_nothing_and_send_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("vpp.db").display());
    let cfg_path = dir.path().join("vpp.toml");
    std::fs::write(&cfg_path, config(&db)).unwrap();
    let park = Park::load(&cfg_path).expect("test config is valid");
    let anchor = chrono::Utc::now().timestamp();
    let clock = ScaledClock::new(chrono::DateTime::from_timestamp(anchor, 0).unwrap(), SPEED);
    let venue = Venue::start(&park, clock);
    let url = venue.handle.url();

    for cycle in 0..KILL_CYCLES {
        let from = venue.account_seq();
        let mut child = spawn_daemon(&cfg_path, &url, anchor, &[]);
        wait_for_reports(&venue, &mut child, from, 20 + 10 * cycle as u64);
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }

    // One more run that recovers, trades, and shuts down by itself, cancelling its orders.
    let from = venue.account_seq();
    let mut child = spawn_daemon(&cfg_path, &url, anchor, &["--for", "4s"]);
    wait_for_reports(&venue, &mut child, from, 10);
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    // The venue's view.
    let reports = venue_reports(&venue);
    let mut venue_fills: BTreeMap<ClientOrderId, BTreeSet<u64>> = BTreeMap::new();
    let mut acknowledged: BTreeSet<ClientOrderId> = BTreeSet::new();
    for r in &reports {
        acknowledged.insert(r.client_order_id.clone());
        if let vpp_engine::order::ExecKind::Fill { fill_id, .. } = r.to_engine().kind {
            venue_fills
                .entry(r.client_order_id.clone())
                .or_default()
                .insert(fill_id.0);
        }
    }
    assert!(
        acknowledged.len() > 30,
        "only {} orders reached the venue",
        acknowledged.len()
    );

    // The journal's view.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ledger = rt.block_on(async {
        let store = vpp_persistence::Store::open(&db).await.unwrap();
        let (ledger, report) = store.replay_journal().await.unwrap();
        assert_eq!(
            report.failed, 0,
            "journal replays cleanly: {:?}",
            report.failures
        );
        store.close().await;
        ledger
    });

    for id in &acknowledged {
        let order = ledger
            .order(id)
            .unwrap_or_else(|| panic!("acknowledged order {id} is missing from the journal"));
        let journal_fills: BTreeSet<u64> = order.fill_ids.iter().map(|f| f.0).collect();
        assert_eq!(
            journal_fills,
            venue_fills.get(id).cloned().unwrap_or_default(),
            "fills of {id} differ"
        );
        assert_eq!(
            order.status,
            venue_status(&venue, id),
            "status of {id} differs"
        );
        let receipts = venue.handle.with_venue(|v| v.receipts(API_KEY, id));
        assert_eq!(receipts, 1, "{id} reached the venue {receipts} times");
    }
    for order in ledger.orders() {
        if order.last_report_seq > 0 {
            assert!(
                acknowledged.contains(order.id()),
                "journal invented {}",
                order.id()
            );
        }
    }
    let boots: BTreeSet<&str> = acknowledged
        .iter()
        .filter_map(|id| id.as_str().split('-').next())
        .collect();
    assert!(
        boots.len() > KILL_CYCLES,
        "orders from every boot: {boots:?}"
    );
}
