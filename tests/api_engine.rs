//! Live-engine operations through the operator API, end to end: `vpp run` as a child process
//! against a venue simulator living in this test process (so the test sees what reached the
//! venue), under order load from the `order_flow` strategy, with the API on port 0.
//! - a trader engages the strategy's kill switch: its working orders are cancelled at the venue
//!   and its new intents are refused (risk events name the kill switch); release resumes it;
//! - an admin stops the engine (every open order cancelled) and starts it again;
//! - a trader's manual order reaches the venue and a cancel through the API cancels it there;
//! - an admin disconnects the venue session and connects it again (live once more);
//! - every one of these is in the audit log with who did it.
//!
//! Waits are bounded and only wait for progress; nothing asserts on timing.

mod api_common;

use api_common::{audit_rows, boot, call, create_token, get, post, wait_for};
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

fn config(db: &str) -> String {
    let base = DEMO_CONFIG_TOML.replace("sqlite://data/vpp.db", db);
    format!(
        "{base}\n[[strategies]]\nname = \"flow\"\nkind = \"order_flow\"\naggregation = \"vpp-south\"\n\
         market = \"yunnan-real-time\"\n[strategies.params]\nevery_n = 3\nquantity_mw = 0.1\nmax_open = 6\n\
         \n[[strategies]]\nname = \"flow-shadow\"\nkind = \"order_flow\"\naggregation = \"vpp-south\"\n\
         market = \"yunnan-real-time\"\nshadow = true\n[strategies.params]\nevery_n = 3\nquantity_mw = 0.1\nmax_open = 6\n"
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

    /// The venue's status of an order, None if it never arrived.
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

    fn received(&self, id: &str) -> bool {
        let id = ClientOrderId::new(id).unwrap();
        self.handle.with_venue(|v| v.receipts(API_KEY, &id)) > 0
    }
}

/// Ids of the open orders the API lists for a filter.
fn open_ids(addr: &str, token: &str, query: &str) -> BTreeSet<String> {
    let r = get(
        addr,
        &format!("/api/v1/engine/orders?open=true&limit=500{query}"),
        token,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| {
            o["request"]["client_order_id"]
                .as_str()
                .expect("client_order_id")
                .to_owned()
        })
        .collect()
}

fn risk_events(db: &str) -> Vec<vpp_persistence::RiskEvent> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = vpp_persistence::Store::open(db).await.expect("open store");
        let events = store
            .list_risk_events(0, 10_000)
            .await
            .expect("risk events");
        store.close().await;
        events
    })
}

#[test]
fn kill_switch_stop_start_and_manual_orders_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("vpp.db").display());
    let cfg_path = dir.path().join("vpp.toml");
    std::fs::write(&cfg_path, config(&db)).unwrap();
    let park = Park::load(&cfg_path).expect("test config is valid");
    let anchor = chrono::Utc::now().timestamp();
    let clock = ScaledClock::new(chrono::DateTime::from_timestamp(anchor, 0).unwrap(), SPEED);
    let venue = Venue::start(&park, clock);
    let trader = create_token(&db, "trader", "trader-1");
    let admin = create_token(&db, "admin", "admin-1");
    let cfg = cfg_path.display().to_string();
    let d = boot(&[
        "--config",
        &cfg,
        "--venue-url",
        &venue.handle.url(),
        "--speed",
        &SPEED.to_string(),
        "--clock-anchor",
        &anchor.to_string(),
    ]);
    let a = d.addr.as_str();

    let status = get(a, "/api/v1/engine", &trader).json();
    assert_eq!(status["trading"], true);
    assert_eq!(status["connection"]["state"], "live", "{status}");
    let flow_id = status["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "flow")
        .and_then(|s| s["id"].as_u64())
        .expect("flow strategy listed");
    // Strategy order ids are `s<id>b<boot>-<n>` or `s<id>v<version>b<boot>-<n>`.
    let is_flow_id = |id: &str| {
        id.strip_prefix(&format!("s{flow_id}"))
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| !c.is_ascii_digit())
    };

    // 1. The flow strategy has working orders at the venue.
    let before = wait_for(60, "flow's resting orders", || {
        let ids = open_ids(a, &trader, "&strategy=flow");
        (!ids.is_empty()).then_some(ids)
    });
    // The shadow twin decides on the same data, records its intents on paper, and sends
    // nothing; the API shows its paper P&L next to the live `flow`.
    let shadow = wait_for(60, "the shadow twin's intents", || {
        let r = get(a, "/api/v1/engine/shadow?intents=5", &trader);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let s = v["strategies"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == "flow-shadow"))
            .cloned()
            .unwrap_or_else(|| panic!("flow-shadow not listed: {v}"));
        (s["intents_total"].as_u64() > Some(0)).then_some(s)
    });
    let last = shadow["last_intents"].as_array().expect("last_intents");
    assert!(!last.is_empty() && last.len() <= 5, "{shadow}");
    assert!(shadow["paper"]["orders"].as_u64() > Some(0), "{shadow}");
    // Live on vpp-south real-time: `flow` and the demo's south battery arbitrage.
    let twins = shadow["live_twins"].as_array().expect("live_twins");
    let mut names: Vec<&str> = twins.iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["flow", "south-battery-arbitrage"], "{shadow}");
    let flow = twins.iter().find(|t| t["name"] == "flow").expect("flow");
    assert!(flow["orders"].as_u64() > Some(0), "{shadow}");
    let r = get(
        a,
        "/api/v1/engine/orders?strategy=flow-shadow&open=false&limit=10",
        &trader,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["items"],
        serde_json::json!([]),
        "a shadow sends nothing"
    );
    let r = get(a, "/api/v1/engine/shadow?intents=5000", &trader);
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "intents", "{}", r.body);

    let interval = {
        let r = get(
            a,
            "/api/v1/engine/orders?strategy=flow&open=false&limit=1",
            &trader,
        );
        let o = &r.json()["items"][0];
        let iv = &o["request"]["interval"];
        iv.as_str()
            .map(str::to_owned)
            .or_else(|| iv["start"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no interval in {o}"))
    };

    // 2. A trader engages the strategy's kill switch: working orders cancelled at the venue.
    let r = post(
        a,
        "/api/v1/risk/kill-switch/engage",
        &trader,
        r#"{"scope":"strategy","id":"flow","reason":"api test"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["engaged"], true);
    assert_eq!(r.json()["changed"], true);
    let r = get(a, "/api/v1/risk/kill-switch", &trader);
    assert!(r.body.contains("api test"), "{}", r.body);
    wait_for(30, "flow's orders cancelled", || {
        open_ids(a, &trader, "&strategy=flow")
            .is_empty()
            .then_some(())
    });
    for id in &before {
        let st = wait_for(30, "venue status of a cancelled order", || {
            venue.status(id).filter(|s| s.is_terminal())
        });
        assert!(
            matches!(st, OrderStatus::Cancelled | OrderStatus::Filled),
            "{id} is {st:?} at the venue"
        );
    }
    // New intents of the strategy are refused by the kill switch.
    wait_for(60, "a refused flow intent", || {
        risk_events(&db)
            .iter()
            .any(|e| {
                e.rule == "kill_switch"
                    && e.client_order_id
                        .as_ref()
                        .is_some_and(|id| is_flow_id(id.as_str()))
            })
            .then_some(())
    });
    assert!(open_ids(a, &trader, "&strategy=flow").is_empty());
    // A manual order attributed to the strategy is refused too, at once.
    let manual = |strategy: &str, price: &str| {
        format!(
            r#"{{"market":"yunnan-real-time","{strategy}":"vpp-south","side":"sell",
            "quantity_mw":"0.1","price_cny_per_mwh":"{price}","interval_start":"{interval}"}}"#
        )
    };
    let r = post(
        a,
        "/api/v1/orders",
        &trader,
        &manual("aggregation", "1400")
            .replace(r#""aggregation":"vpp-south""#, r#""strategy":"flow""#),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.error_code(), "risk_rejected");

    // 3. Release: the strategy trades again (a new working order appears).
    let r = post(
        a,
        "/api/v1/risk/kill-switch/release",
        &trader,
        r#"{"scope":"strategy","id":"flow"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["engaged"], false);
    // Releasing again is a conflict, not a success.
    let r = post(
        a,
        "/api/v1/risk/kill-switch/release",
        &trader,
        r#"{"scope":"strategy","id":"flow"}"#,
    );
    assert_eq!(r.status, 409, "{}", r.body);
    wait_for(60, "flow trading again", || {
        let now = open_ids(a, &trader, "&strategy=flow");
        now.iter().any(|id| !before.contains(id)).then_some(())
    });

    // 4. Stop: every open order cancelled, trading false; start: trading again.
    let r = post(
        a,
        "/api/v1/engine/stop",
        &admin,
        r#"{"reason":"api test stop"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(a, "/api/v1/engine", &trader).json()["trading"], false);
    wait_for(30, "all orders cancelled", || {
        open_ids(a, &trader, "").is_empty().then_some(())
    });
    let r = post(a, "/api/v1/orders", &trader, &manual("aggregation", "1400"));
    assert_eq!(r.status, 422, "stopped engine takes no orders: {}", r.body);
    let r = call(a, "POST", "/api/v1/engine/start", Some(&admin), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["changed"], true);
    assert_eq!(get(a, "/api/v1/engine", &trader).json()["trading"], true);

    // 5. A trader's manual order reaches the venue; the API cancels it there.
    let r = post(a, "/api/v1/orders", &trader, &manual("aggregation", "1400"));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["client_order_id"].as_str().unwrap().to_owned();
    wait_for(30, "the manual order at the venue", || {
        venue.received(&id).then_some(())
    });
    let working = wait_for(30, "the manual order working", || {
        venue.status(&id).filter(|s| *s != OrderStatus::New)
    });
    if !working.is_terminal() {
        let r = call(
            a,
            "DELETE",
            &format!("/api/v1/orders/{id}"),
            Some(&trader),
            None,
        );
        assert_eq!(r.status, 202, "{}", r.body);
        wait_for(30, "the manual order cancelled at the venue", || {
            (venue.status(&id) == Some(OrderStatus::Cancelled)).then_some(())
        });
    }
    let r = call(
        a,
        "DELETE",
        "/api/v1/orders/m0-unknown",
        Some(&trader),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);

    // 6. An admin disconnects the venue session and connects it again.
    let conn = |action: &str| {
        call(
            a,
            "POST",
            &format!("/api/v1/markets/connections/venue/{action}"),
            Some(&admin),
            None,
        )
    };
    let state = || get(a, "/api/v1/markets/connections", &trader).json()[0]["state"].clone();
    let r = conn("disconnect");
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(30, "the session disconnected", || {
        (state() == "disconnected").then_some(())
    });
    let r = conn("connect");
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(30, "the session live again", || {
        (state() == "live").then_some(())
    });
    let r = conn("teleport");
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "action");
    let r = call(
        a,
        "POST",
        "/api/v1/markets/connections/venue/disconnect",
        Some(&trader),
        None,
    );
    assert_eq!(r.status, 403, "only an admin disconnects: {}", r.body);

    drop(d);
    let audit = audit_rows(&db);
    let ok = |actor: &str, action: &str| {
        audit
            .iter()
            .any(|e| e.actor == actor && e.action == action && e.outcome.starts_with("ok"))
    };
    assert!(ok("trader-1", "kill_switch.engage"), "{audit:#?}");
    assert!(ok("trader-1", "kill_switch.release"), "{audit:#?}");
    assert!(ok("admin-1", "engine.stop"), "{audit:#?}");
    assert!(ok("admin-1", "engine.start"), "{audit:#?}");
    assert!(ok("trader-1", "order.new"), "{audit:#?}");
    assert!(ok("admin-1", "market.disconnect"), "{audit:#?}");
    assert!(ok("admin-1", "market.connect"), "{audit:#?}");
    assert!(audit.iter().any(|e| e.actor == "trader-1"
        && e.action == "order.new"
        && e.outcome.starts_with("error")));
}
