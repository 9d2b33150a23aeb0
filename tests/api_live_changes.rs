//! Strategy changes through the operator API reach the running engine, and the store stays the
//! source of truth across restarts: `vpp run` as a child process against a venue simulator in
//! this test process, under order load from an `order_flow` strategy.
//! - deactivate: `GET /engine` shows it stopped, its open orders are cancelled (in the engine
//!   and at the venue) and it sends no new order;
//! - activate: it trades again;
//! - a parameter change: it restarts on the new version (ids carry `v<version>`, the new
//!   quantity is what reaches the venue); a rollback restarts it on a copy of the old version;
//! - restart with the file unchanged: the API's changes stand (disabled stays disabled, the
//!   version in force is the API's); restart with the file changed: the file's definition
//!   becomes a new version.
//!
//! Waits are bounded and only wait for progress; nothing asserts on timing.

mod api_common;

use api_common::{boot, call, create_token, get, post, wait_for, Daemon};
use std::collections::BTreeSet;
use std::sync::Arc;
use vpp::config::{Park, DEMO_CONFIG_TOML};
use vpp_actors::live::clock::ScaledClock;
use vpp_engine::ids::ClientOrderId;
use vpp_engine::order::OrderStatus;
use vpp_market_adapters::protocol::{ClientMsg, OrderStatusQuery, VenueMsg};
use vpp_market_adapters::sim::server::{VenueHandle, VenueServer};

const API_KEY: &str = "demo-key";
const SPEED: u32 = 300;

fn config(db: &str, quantity: &str) -> String {
    let base = DEMO_CONFIG_TOML.replace("sqlite://data/vpp.db", db);
    format!(
        "{base}\n[[strategies]]\nname = \"flow\"\nkind = \"order_flow\"\naggregation = \"vpp-south\"\n\
         market = \"yunnan-real-time\"\n[strategies.params]\nevery_n = 2\nquantity_mw = {quantity}\nmax_open = 4\n"
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

    fn status(&self, id: &str) -> Option<OrderStatus> {
        let id = ClientOrderId::new(id).unwrap();
        let _guard = self.rt.enter();
        let replies = self.handle.submit_as(
            API_KEY,
            ClientMsg::OrderStatus(OrderStatusQuery {
                client_order_id: id,
            }),
        );
        match replies.into_iter().next() {
            Some(VenueMsg::OrderStatus(r)) => r.order.map(|o| o.status),
            _ => None,
        }
    }
}

/// `(client_order_id, quantity_mw)` of the flow strategy's orders, open only or all.
fn flow_orders(addr: &str, token: &str, open: bool) -> Vec<(String, String)> {
    let r = get(
        addr,
        &format!("/api/v1/engine/orders?strategy=flow&open={open}&limit=500"),
        token,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| {
            (
                o["request"]["client_order_id"].as_str().unwrap().to_owned(),
                o["request"]["quantity_mw"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The flow strategy's row in `GET /engine`.
fn engine_row(addr: &str, token: &str) -> serde_json::Value {
    let status = get(addr, "/api/v1/engine", token).json();
    status["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "flow")
        .cloned()
        .unwrap_or_else(|| panic!("flow not in /engine: {status}"))
}

struct Setup {
    _dir: tempfile::TempDir,
    db: String,
    cfg_path: std::path::PathBuf,
    venue: Venue,
    anchor: i64,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("vpp.db").display());
        let cfg_path = dir.path().join("vpp.toml");
        std::fs::write(&cfg_path, config(&db, "0.1")).unwrap();
        let park = Park::load(&cfg_path).expect("test config is valid");
        let anchor = chrono::Utc::now().timestamp();
        let clock = ScaledClock::new(chrono::DateTime::from_timestamp(anchor, 0).unwrap(), SPEED);
        let venue = Venue::start(&park, clock);
        Self {
            _dir: dir,
            db,
            cfg_path,
            venue,
            anchor,
        }
    }

    fn boot(&self) -> Daemon {
        let cfg = self.cfg_path.display().to_string();
        boot(&[
            "--config",
            &cfg,
            "--venue-url",
            &self.venue.handle.url(),
            "--speed",
            &SPEED.to_string(),
            "--clock-anchor",
            &self.anchor.to_string(),
        ])
    }
}

fn wait_new_orders(
    a: &str,
    token: &str,
    known: &BTreeSet<String>,
    what: &str,
) -> Vec<(String, String)> {
    wait_for(60, what, || {
        let fresh: Vec<_> = flow_orders(a, token, false)
            .into_iter()
            .filter(|(id, _)| !known.contains(id))
            .collect();
        (!fresh.is_empty()).then_some(fresh)
    })
}

fn ids(orders: &[(String, String)]) -> BTreeSet<String> {
    orders.iter().map(|(id, _)| id.clone()).collect()
}

#[test]
fn strategy_changes_reach_the_running_engine_and_survive_a_restart() {
    let s = Setup::new();
    let admin = create_token(&s.db, "admin", "admin-1");
    let d = s.boot();
    let a = d.addr.as_str();

    let row = engine_row(a, &admin);
    assert_eq!(row["enabled"], true, "{row}");
    let id = row["id"].as_u64().unwrap();
    let v1 = row["version"].as_u64().expect("version in /engine");
    wait_for(60, "flow's resting orders", || {
        (!flow_orders(a, &admin, true).is_empty()).then_some(())
    });

    // 1. Deactivate: stopped in the engine at once, its orders cancelled, no new ones.
    let r = post(
        a,
        &format!("/api/v1/strategies/{id}/deactivate"),
        &admin,
        "{}",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["enabled"], false);
    assert_eq!(engine_row(a, &admin)["enabled"], false);
    wait_for(30, "flow's open orders cancelled", || {
        flow_orders(a, &admin, true).is_empty().then_some(())
    });
    let after_stop = ids(&flow_orders(a, &admin, false));
    for id in &after_stop {
        let st = s.venue.status(id);
        assert!(
            !matches!(st, Some(OrderStatus::New | OrderStatus::PartiallyFilled)),
            "{id} still working at the venue: {st:?}"
        );
    }
    // A stopped strategy sends nothing, however much market data goes by (2 s ≈ 10 simulated
    // minutes at this speed; it sent an order every few seconds of simulated time before).
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        ids(&flow_orders(a, &admin, false)),
        after_stop,
        "orders after deactivate"
    );

    // 2. Activate: it trades again.
    let r = post(
        a,
        &format!("/api/v1/strategies/{id}/activate"),
        &admin,
        "{}",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(engine_row(a, &admin)["enabled"], true);
    let fresh = wait_new_orders(a, &admin, &after_stop, "orders after activate");
    assert!(
        fresh
            .iter()
            .all(|(oid, _)| oid.starts_with(&format!("s{id}v{v1}b"))),
        "{fresh:?}"
    );

    // 3. A parameter change restarts it on the new version.
    let r = call(
        a,
        "PUT",
        &format!("/api/v1/strategies/{id}"),
        Some(&admin),
        Some(r#"{"params":{"every_n":2,"quantity_mw":0.3,"max_open":4}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v2 = r.json()["version"].as_u64().unwrap();
    assert!(v2 > v1);
    assert_eq!(engine_row(a, &admin)["version"], v2);
    let known = ids(&flow_orders(a, &admin, false));
    let fresh = wait_new_orders(a, &admin, &known, "orders of the new version");
    for (oid, q) in &fresh {
        assert!(oid.starts_with(&format!("s{id}v{v2}b")), "{oid}");
        assert_eq!(q.parse::<f64>().unwrap(), 0.3, "{oid}");
    }

    // 4. Rollback to v1: a copy of it becomes the version in force and runs.
    let r = post(
        a,
        &format!("/api/v1/strategies/{id}/activate"),
        &admin,
        &format!(r#"{{"version":{v1}}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v3 = r.json()["version"].as_u64().unwrap();
    assert!(v3 > v2);
    assert_eq!(engine_row(a, &admin)["version"], v3);
    let known = ids(&flow_orders(a, &admin, false));
    let fresh = wait_new_orders(a, &admin, &known, "orders of the rolled-back version");
    for (oid, q) in &fresh {
        assert!(oid.starts_with(&format!("s{id}v{v3}b")), "{oid}");
        assert_eq!(q.parse::<f64>().unwrap(), 0.1, "{oid}");
    }

    // 5. Deactivate and restart with the file unchanged: the store's state stands.
    let r = call(
        a,
        "PUT",
        &format!("/api/v1/strategies/{id}"),
        Some(&admin),
        Some(r#"{"params":{"every_n":2,"quantity_mw":0.2,"max_open":4}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v4 = r.json()["version"].as_u64().unwrap();
    let r = post(
        a,
        &format!("/api/v1/strategies/{id}/deactivate"),
        &admin,
        "{}",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Risk limits set through the API are kept too.
    let limits = r#"{"max_order_mw":"2","max_net_position_mw":"5","max_open_orders":17,"daily_notional_cny":"100000","orders_per_second":3,"order_burst":6}"#;
    let r = call(
        a,
        "PUT",
        "/api/v1/risk/limits/strategy/flow",
        Some(&admin),
        Some(limits),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    drop(d);
    let d = s.boot();
    let a = d.addr.as_str();
    let row = engine_row(a, &admin);
    assert_eq!(
        row["enabled"], false,
        "the file must not re-enable it: {row}"
    );
    assert_eq!(
        row["version"], v4,
        "the file must not overwrite the API's version: {row}"
    );
    let r = get(a, &format!("/api/v1/strategies/{id}"), &admin).json();
    assert_eq!(r["config"]["params"]["quantity_mw"], 0.2, "{r}");
    let r = get(a, "/api/v1/risk/limits/strategy/flow", &admin);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["max_open_orders"],
        17,
        "{} {:?}",
        r.body,
        d.lines.try_iter().collect::<Vec<_>>()
    );
    drop(d);

    // 6. Restart with the file changed: its definition becomes a new version.
    std::fs::write(&s.cfg_path, config(&s.db, "0.4")).unwrap();
    let d = s.boot();
    let a = d.addr.as_str();
    let row = engine_row(a, &admin);
    let v5 = row["version"].as_u64().unwrap();
    assert!(v5 > v4, "{row}");
    let r = get(a, &format!("/api/v1/strategies/{id}"), &admin).json();
    assert_eq!(r["config"]["params"]["quantity_mw"], 0.4, "{r}");
    // `enabled` did not change in the file: the store's flag stands.
    assert_eq!(row["enabled"], false, "{row}");
}
