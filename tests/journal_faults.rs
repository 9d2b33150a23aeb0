//! The journal and the store under faults, end to end: `vpp run` as a child process against a
//! venue simulator living in this test process, under order load from `order_flow`.
//! - SQLite: a trigger makes every `order_events` insert fail while the daemon trades. New
//!   orders stop, `/health` answers 503 naming the journal, `/api/v1/engine` says `trading:
//!   false` with a `journal_unavailable` kill switch, the metrics count it. The trigger goes:
//!   the journal recovers but trading stays stopped until an admin starts it again. SIGTERM
//!   then exits 0, and every order the venue received is in the journal.
//! - PostgreSQL with `durability = "before_send"`: the same fault left in place: SIGTERM exits
//!   non-zero (events it could not journal), and no order reached the venue that the journal
//!   lacks.
//! - A second daemon on a held store (SQLite directory, PostgreSQL database) exits at once,
//!   non-zero, naming the holder's pid and boot.
//! - A SIGTERM'd daemon's log has no store write errors (every writer drained before the store
//!   closed).
//!
//! Waits are bounded and only wait for progress; nothing asserts on timing.

mod api_common;

use api_common::{call, create_token, get, wait_for};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use vpp::config::{Park, DEMO_CONFIG_TOML};
use vpp_actors::live::clock::ScaledClock;
use vpp_engine::ids::ClientOrderId;
use vpp_market_adapters::sim::server::{VenueHandle, VenueServer};
use vpp_persistence::{Backend, Store};

const API_KEY: &str = "demo-key";
const SPEED: u32 = 300;

fn config(db: &str, journal: &str) -> String {
    let base = DEMO_CONFIG_TOML.replace("sqlite://data/vpp.db", db);
    format!(
        "{base}\n[[strategies]]\nname = \"flow\"\nkind = \"order_flow\"\naggregation = \"vpp-south\"\n\
         market = \"yunnan-real-time\"\n[strategies.params]\nevery_n = 3\nquantity_mw = 0.1\nmax_open = 6\n\
         \n[journal]\nrestart_backoff_initial_ms = 50\nrestart_backoff_max_ms = 200\n{journal}"
    )
}

struct Venue {
    /// Runs the venue server; kept alive with it.
    _rt: tokio::runtime::Runtime,
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
        Self { _rt: rt, handle }
    }

    fn account_seq(&self) -> u64 {
        self.handle.with_venue(|v| v.account_seq(0))
    }

    fn received(&self, id: &str) -> bool {
        let Ok(id) = ClientOrderId::new(id) else {
            return false;
        };
        self.handle.with_venue(|v| v.receipts(API_KEY, &id)) > 0
    }
}

/// A running daemon with its stdout (API address) and stderr (log) collected.
struct Daemon {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then the exit status (bounded wait).
    fn terminate(&mut self) -> ExitStatus {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        wait_exit(&mut self.child, 60).unwrap_or_else(|| {
            panic!(
                "the daemon did not stop within 60 s; log:\n{}",
                self.log_text()
            )
        })
    }
}

fn wait_exit(child: &mut Child, secs: u64) -> Option<ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn spawn_vpp(cfg: &str, venue: &Venue, anchor: i64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["run", "--config", cfg, "--venue-url", &venue.handle.url()])
        .args(["--speed", &SPEED.to_string(), "--clock-anchor"])
        .arg(anchor.to_string())
        .args(["--api-listen", "127.0.0.1:0", "--status-every", "1"])
        .env("RUST_LOG", "warn,vpp::status=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon starts")
}

fn boot(cfg: &str, venue: &Venue, anchor: i64) -> Daemon {
    let mut child = spawn_vpp(cfg, venue, anchor);
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr piped");
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    // The log goes to stdout (with the API address line); errors of `main` to stderr.
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "daemon exited early with {status}; log:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
        assert!(
            Instant::now() < deadline,
            "the API never reported its address"
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(rest) = line.strip_prefix("operator API on http://") {
                break rest.trim_end_matches("/api/v1").to_owned();
            }
        }
    };
    Daemon { child, addr, log }
}

/// A second `vpp run` on the same store: must exit at once, non-zero, naming the holder.
fn second_daemon_is_refused(cfg: &str, venue: &Venue, anchor: i64, holder_pid: u32) {
    let mut second = spawn_vpp(cfg, venue, anchor);
    let status = wait_exit(&mut second, 60);
    let Some(status) = status else {
        let _ = second.kill();
        panic!("a second daemon on a held store kept running");
    };
    let mut err = String::new();
    if let Some(mut e) = second.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(
        !status.success(),
        "refused daemon must exit non-zero: {err}"
    );
    assert!(
        err.contains(&format!("pid {holder_pid}")) && err.contains("boot "),
        "the error names the holder (pid {holder_pid}, boot): {err}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn exec_sql(db: &str, sql: &str) {
    runtime().block_on(async {
        let store = Store::open(db).await.expect("open store");
        match store.backend() {
            Backend::Sqlite { writer, .. } => {
                sqlx::raw_sql(sql).execute(writer).await.expect(sql);
            }
            Backend::Postgres(pool) => {
                sqlx::raw_sql(sql).execute(pool).await.expect(sql);
            }
        }
        store.close().await;
    });
}

/// Client order ids in the journal.
fn journal_ids(db: &str) -> Vec<String> {
    runtime().block_on(async {
        let store = Store::open(db).await.expect("open store");
        let (ledger, _) = store.replay_journal().await.expect("replay");
        store.close().await;
        ledger
            .orders()
            .map(|o| o.id().as_str().to_owned())
            .collect()
    })
}

/// Every order the venue received under the journal's id prefixes (`<prefix>-<n>`, n from 1
/// to 40 past the journal's highest) is in the journal. Returns how many the venue received.
fn venue_holds_nothing_the_journal_lacks(venue: &Venue, journal: &[String]) -> usize {
    let mut max_n: BTreeMap<String, u64> = BTreeMap::new();
    for id in journal {
        if let Some((prefix, n)) = id.rsplit_once('-') {
            if let Ok(n) = n.parse::<u64>() {
                let e = max_n.entry(prefix.to_owned()).or_default();
                *e = (*e).max(n);
            }
        }
    }
    assert!(!max_n.is_empty(), "the journal holds orders");
    let mut received = 0;
    for (prefix, max) in &max_n {
        for n in 1..=max + 40 {
            let id = format!("{prefix}-{n}");
            if venue.received(&id) {
                received += 1;
                assert!(
                    journal.contains(&id),
                    "{id} reached the venue but is not in the journal"
                );
            }
        }
    }
    received
}

fn health(addr: &str) -> (u16, serde_json::Value) {
    let r = call(addr, "GET", "/health", None, None);
    (r.status, r.json())
}

fn metrics(addr: &str) -> String {
    call(addr, "GET", "/metrics", None, None).body
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn wait_orders(venue: &Venue, more: u64) -> u64 {
    let from = venue.account_seq();
    wait_for(60, "orders reach the venue", || {
        (venue.account_seq() >= from + more).then_some(())
    });
    venue.account_seq()
}

/// The journal is down while the daemon runs: it stops trading and says so everywhere; it
/// comes back only when the journal is healthy and an admin starts it.
fn journal_down_stops_trading(d: &Daemon, token: &str) {
    let a = d.addr.as_str();
    let (status, body) = wait_for(30, "/health answers 503 naming the journal", || {
        let (status, body) = health(a);
        (status == 503).then_some((status, body))
    });
    assert_eq!(status, 503);
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("journal"), "{body}");
    let engine = get(a, "/api/v1/engine", token).json();
    assert_eq!(engine["trading"], false, "{engine}");
    assert!(
        engine["global_kill_switch"]
            .to_string()
            .contains("journal_unavailable"),
        "{engine}"
    );
    let m = metrics(a);
    assert!(
        metric(&m, "vpp_journal_unavailable_total{cause=\"failing\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "vpp_journal_healthy"), Some(0.0), "{m}");
    wait_for(10, "the status line names the journal", || {
        d.log_text().contains("JOURNAL UNAVAILABLE").then_some(())
    });
}

#[test]
fn sqlite_journal_fault_stops_trading_until_recovered_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("vpp.db").display());
    let cfg_path = dir.path().join("vpp.toml");
    std::fs::write(&cfg_path, config(&db, "")).unwrap();
    let park = Park::load(&cfg_path).expect("test config is valid");
    let anchor = chrono::Utc::now().timestamp();
    let clock = ScaledClock::new(chrono::DateTime::from_timestamp(anchor, 0).unwrap(), SPEED);
    let venue = Venue::start(&park, clock);
    let admin = create_token(&db, "admin", "admin-1");
    let cfg = cfg_path.display().to_string();
    let mut d = boot(&cfg, &venue, anchor);
    wait_orders(&venue, 10);

    exec_sql(
        &db,
        "CREATE TRIGGER journal_fault BEFORE INSERT ON order_events \
         BEGIN SELECT RAISE(ABORT, 'injected journal fault'); END;",
    );
    journal_down_stops_trading(&d, &admin);

    exec_sql(&db, "DROP TRIGGER journal_fault");
    let a = d.addr.as_str();
    wait_for(30, "the journal healthy again", || {
        (metric(&metrics(a), "vpp_journal_healthy") == Some(1.0)).then_some(())
    });
    // Healthy journal, but the kill switch stays until an operator releases it.
    let engine = get(a, "/api/v1/engine", &admin).json();
    assert_eq!(engine["trading"], false, "{engine}");
    let r = call(a, "POST", "/api/v1/engine/start", Some(&admin), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(a, "/api/v1/engine", &admin).json()["trading"], true);
    let before = journal_ids(&db).len();
    wait_for(60, "new orders journaled after the restart", || {
        (journal_ids(&db).len() > before + 3).then_some(())
    });

    let status = d.terminate();
    assert!(
        status.success(),
        "SIGTERM exits 0: {status}; log:\n{}",
        d.log_text()
    );
    let ids = journal_ids(&db);
    let received = venue_holds_nothing_the_journal_lacks(&venue, &ids);
    assert!(received > 0);
}

#[test]
fn sqlite_second_daemon_is_refused_and_sigterm_leaves_no_write_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("vpp.db").display());
    let cfg_path = dir.path().join("vpp.toml");
    std::fs::write(&cfg_path, config(&db, "")).unwrap();
    let park = Park::load(&cfg_path).expect("test config is valid");
    let anchor = chrono::Utc::now().timestamp();
    let clock = ScaledClock::new(chrono::DateTime::from_timestamp(anchor, 0).unwrap(), SPEED);
    let venue = Venue::start(&park, clock);
    let cfg = cfg_path.display().to_string();
    let mut d = boot(&cfg, &venue, anchor);
    wait_orders(&venue, 10);
    second_daemon_is_refused(&cfg, &venue, anchor, d.child.id());
    // Keep trading across a settlement interval (15 simulated minutes = 3 s here).
    wait_orders(&venue, 30);
    let status = d.terminate();
    let log = d.log_text();
    assert!(status.success(), "SIGTERM exits 0: {status}; log:\n{log}");
    for bad in [
        "write failed",
        "could not be written",
        "closed pool",
        "not stored",
        "not journaled",
        "did not drain",
    ] {
        assert!(!log.contains(bad), "shutdown log has {bad:?}:\n{log}");
    }
    let ids = journal_ids(&db);
    venue_holds_nothing_the_journal_lacks(&venue, &ids);
}

fn postgres_admin_url() -> String {
    std::env::var("VPP_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh PostgreSQL database; returns its URL and a dropper.
fn postgres_db() -> (String, impl FnOnce()) {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let name = format!(
        "vpp_jf_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_subsec_nanos()
    );
    runtime().block_on(async {
        let mut c = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is unreachable: {e}"));
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .expect("create database");
    });
    let root = admin.rsplit_once('/').map_or(admin.as_str(), |(r, _)| r);
    let url = format!("{root}/{name}");
    let drop_db = move || {
        runtime().block_on(async {
            if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        });
    };
    (url, drop_db)
}

#[test]
fn postgres_second_daemon_refused_and_a_journal_left_down_exits_non_zero() {
    let (db, drop_db) = postgres_db();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("vpp.toml");
    // before_send: no order leaves before its commit, so none is at the venue unjournaled.
    std::fs::write(&cfg_path, config(&db, "durability = \"before_send\"\n")).unwrap();
    let park = Park::load(&cfg_path).expect("test config is valid");
    let anchor = chrono::Utc::now().timestamp();
    let clock = ScaledClock::new(chrono::DateTime::from_timestamp(anchor, 0).unwrap(), SPEED);
    let venue = Venue::start(&park, clock);
    let admin = create_token(&db, "admin", "admin-1");
    let cfg = cfg_path.display().to_string();
    let mut d = boot(&cfg, &venue, anchor);
    wait_orders(&venue, 10);
    second_daemon_is_refused(&cfg, &venue, anchor, d.child.id());

    exec_sql(
        &db,
        "CREATE FUNCTION journal_fault() RETURNS trigger AS $$ BEGIN \
         RAISE EXCEPTION 'injected journal fault'; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER journal_fault BEFORE INSERT ON order_events \
         FOR EACH ROW EXECUTE FUNCTION journal_fault();",
    );
    journal_down_stops_trading(&d, &admin);
    let status = d.terminate();
    let log = d.log_text();
    assert!(
        !status.success(),
        "ending with unjournaled events must exit non-zero; log:\n{log}"
    );
    assert!(log.contains("could not journal"), "{log}");
    exec_sql(&db, "DROP TRIGGER journal_fault ON order_events");
    let ids = journal_ids(&db);
    venue_holds_nothing_the_journal_lacks(&venue, &ids);
    drop(d);
    drop_db();
}
