//! REST round trips of the operator API against a real store (SQLite in memory), in process
//! through `actix_web::test`: catalog CRUD with versions and the 100% membership rule,
//! GeoJSON, strategies with versions/shadow/validation and a bounded backtest, record lists
//! with pagination and filters, settlement reports as CSV and JSON, and the one error shape
//! on bad input (never a 5xx).

use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, read_body, TestRequest};
use serde_json::{json, Value};
use std::sync::Arc;
use vpp::api::{app, ApiState};
use vpp::config::Park;
use vpp::token::{self, Role};
use vpp_engine::clock::{Clock, ManualClock};
use vpp_persistence::{SettlementLine, SettlementRecord, Store};

struct Env {
    state: ApiState,
    admin: String,
    trader: String,
    viewer: String,
}

async fn env() -> Env {
    let store = Store::open("sqlite::memory:").await.expect("open store");
    store.migrate().await.expect("migrate");
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(chrono::Utc::now()));
    let runtime = vpp_actors::Runtime::new(clock);
    let park = Arc::new(Park::demo().expect("demo park"));
    let rate = vpp::api::limits::RateLimit {
        rate_per_s: 10_000.0,
        burst: 10_000,
        max_tokens: 100,
    };
    let state = ApiState::new(store.clone(), None, runtime, park, rate);
    let (_, admin) = token::create(&store, "ops-admin", Role::Admin, None)
        .await
        .unwrap();
    let (_, trader) = token::create(&store, "desk", Role::Trader, None)
        .await
        .unwrap();
    let (_, viewer) = token::create(&store, "screen", Role::Viewer, None)
        .await
        .unwrap();
    Env {
        state,
        admin,
        trader,
        viewer,
    }
}

macro_rules! call {
    ($svc:expr, $method:ident, $path:expr, $token:expr) => {{
        let req = TestRequest::$method()
            .uri($path)
            .insert_header(("Authorization", format!("Bearer {}", $token)))
            .to_request();
        let res = call_service(&$svc, req).await;
        let status = res.status();
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = read_body(res).await;
        (status, ct, body)
    }};
    ($svc:expr, $method:ident, $path:expr, $token:expr, $json:expr) => {{
        let req = TestRequest::$method()
            .uri($path)
            .insert_header(("Authorization", format!("Bearer {}", $token)))
            .set_json($json)
            .to_request();
        let res = call_service(&$svc, req).await;
        let status = res.status();
        let body = read_body(res).await;
        (status, String::new(), body)
    }};
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Asserts the one error shape and returns (code, field).
fn error_of(status: StatusCode, body: &[u8]) -> (String, Option<String>) {
    assert!(
        status.is_client_error(),
        "expected 4xx, got {status}: {}",
        String::from_utf8_lossy(body)
    );
    let v = json_of(body);
    let e = &v["error"];
    assert!(e["code"].is_string(), "no error.code in {v}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message in {v}"
    );
    (
        e["code"].as_str().unwrap_or_default().to_owned(),
        e["field"].as_str().map(str::to_owned),
    )
}

fn storage_template(name: &str, rated: &str) -> Value {
    json!({
        "name": name,
        "kind": "storage",
        "params": {
            "rated_power_kw": rated, "min_power_kw": format!("-{rated}"), "max_power_kw": rated,
            "ramp_kw_per_s": "100", "energy_capacity_kwh": "1000", "soc_min_pct": "10",
            "soc_max_pct": "90", "round_trip_efficiency": "0.9",
            "marginal_cost_cny_per_mwh": "50", "response_time_s": "1",
            "control_interface": "modbus"
        }
    })
}

#[actix_web::test]
async fn catalog_round_trips_versions_geojson_and_the_100_percent_rule() {
    let e = env().await;
    let svc = init_service(app(e.state.clone())).await;

    // Templates: create, update (new version), old version unchanged, usage.
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/templates",
        e.admin,
        storage_template("Battery 500", "500")
    );
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let t = json_of(&b);
    let tid = t["template_id"].as_u64().unwrap();
    assert_eq!(t["version"], 1);
    let (s, _, b) = call!(
        svc,
        put,
        &format!("/api/v1/templates/{tid}"),
        e.admin,
        storage_template("Battery 600", "600")
    );
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b)["version"], 2);
    let (s, _, b) = call!(
        svc,
        get,
        &format!("/api/v1/templates/{tid}/versions/1"),
        e.viewer
    );
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b)["params"]["rated_power_kw"], "500");
    let (_, _, b) = call!(
        svc,
        get,
        &format!("/api/v1/templates/{tid}/versions"),
        e.viewer
    );
    assert_eq!(json_of(&b)["total"], 2);
    // A kind change is refused, naming the field.
    let pv = json!({
        "name": "x", "kind": "pv",
        "params": {
            "rated_power_kw": "500", "min_power_kw": "0", "max_power_kw": "500",
            "ramp_kw_per_s": "100", "marginal_cost_cny_per_mwh": "0", "response_time_s": "1",
            "control_interface": "simulated"
        }
    });
    let (s, _, b) = call!(svc, put, &format!("/api/v1/templates/{tid}"), e.admin, pv);
    assert_eq!(error_of(s, &b).1.as_deref(), Some("kind"));
    // Validate: an invalid parameter is a 422 naming it.
    let mut bad = storage_template("bad", "500");
    bad["params"]["soc_max_pct"] = json!("120");
    let (s, _, b) = call!(svc, post, "/api/v1/templates/validate", e.viewer, bad);
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_of(s, &b).1.is_some());
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/templates/validate",
        e.viewer,
        storage_template("ok", "10")
    );
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));

    // Resources pin a version; bad coordinates are a 422 naming `lat`.
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/resources",
        e.admin,
        json!({
            "name": "north-bess", "template_id": tid, "template_version": 1, "site": "north",
            "location": {"lat": 91.0, "lon": 4.0}
        })
    );
    assert_eq!(error_of(s, &b).1.as_deref(), Some("lat"));
    let mut rids = Vec::new();
    for (i, site) in ["north", "north", "south"].iter().enumerate() {
        let (s, _, b) = call!(
            svc,
            post,
            "/api/v1/resources",
            e.admin,
            json!({
                "name": format!("bess-{i}"), "template_id": tid, "site": site,
                "location": {"lat": 50.0 + i as f64, "lon": 4.5}
            })
        );
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        let r = json_of(&b);
        assert_eq!(r["template_version"], 2, "defaults to the newest version");
        rids.push(r["id"].as_u64().unwrap());
    }
    let (s, _, b) = call!(
        svc,
        patch,
        &format!("/api/v1/resources/{}", rids[0]),
        e.admin,
        json!({"state": "active"})
    );
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (s, _, b) = call!(
        svc,
        patch,
        &format!("/api/v1/resources/{}", rids[1]),
        e.admin,
        json!({"state": "maintenance"})
    );
    assert_eq!(
        error_of(s, &b).1.as_deref(),
        Some("state"),
        "commissioning -> maintenance is illegal"
    );
    let (_, _, b) = call!(
        svc,
        get,
        "/api/v1/resources?site=north&state=active",
        e.viewer
    );
    let page = json_of(&b);
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"].as_u64(), Some(rids[0]));
    let (s, ct, b) = call!(svc, get, "/api/v1/resources/geojson?site=south", e.viewer);
    assert_eq!(s, StatusCode::OK);
    assert!(ct.starts_with("application/geo+json"), "{ct}");
    let g = json_of(&b);
    assert_eq!(g["type"], "FeatureCollection");
    assert_eq!(g["features"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        g["features"][0]["geometry"]["coordinates"],
        json!([4.5, 52.0])
    );
    let (_, _, b) = call!(
        svc,
        get,
        &format!("/api/v1/templates/{tid}/usage"),
        e.viewer
    );
    let u = json_of(&b);
    assert_eq!(u["total"], 3);
    assert_eq!(u["by_version"]["2"], 3);
    assert_eq!(u["by_version"]["1"], 0);

    // Aggregations: 60% + 50% of one resource is refused naming the first aggregation.
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/aggregations",
        e.admin,
        json!({
            "name": "vpp-a", "members": [{"resource_id": rids[0], "share_pct": "60"}]
        })
    );
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let a = json_of(&b)["id"].as_u64().unwrap();
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/aggregations",
        e.admin,
        json!({
            "name": "vpp-b", "members": [{"resource_id": rids[0], "share_pct": "50"}]
        })
    );
    assert_eq!(s, StatusCode::CONFLICT);
    let msg = json_of(&b)["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(msg.contains("vpp-a") && msg.contains("110"), "{msg}");
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/aggregations",
        e.admin,
        json!({
            "name": "vpp-b", "members": [{"resource_id": rids[0], "share_pct": "40"}]
        })
    );
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let bid = json_of(&b)["id"].as_u64().unwrap();
    let (s, _, _) = call!(
        svc,
        post,
        &format!("/api/v1/aggregations/{bid}/members"),
        e.admin,
        json!({"resource_id": rids[0], "share_pct": "41"})
    );
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _, b) = call!(
        svc,
        post,
        &format!("/api/v1/aggregations/{bid}/members"),
        e.admin,
        json!({"resource_id": rids[2], "share_pct": "100"})
    );
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b)["member_count"], 2);
    let (_, _, b) = call!(
        svc,
        get,
        &format!(
            "/api/v1/aggregations/{bid}/conflicts?resource_id={}&share_pct=70",
            rids[0]
        ),
        e.viewer
    );
    let c = json_of(&b);
    assert_eq!(c["items"].as_array().map(Vec::len), Some(0));
    assert_eq!(c["what_if"]["allowed"], false);
    // A member cannot be retired; activation lists.
    let (s, _, _) = call!(
        svc,
        delete,
        &format!("/api/v1/resources/{}", rids[0]),
        e.admin
    );
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _, b) = call!(
        svc,
        post,
        &format!("/api/v1/aggregations/{a}/activate"),
        e.admin
    );
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b)["active"], true);
    let (_, _, b) = call!(svc, get, "/api/v1/aggregations?active=true", e.viewer);
    assert_eq!(json_of(&b)["total"], 1);
    let (_, _, b) = call!(svc, get, "/api/v1/capacity", e.viewer);
    let caps = json_of(&b);
    assert!(caps["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["aggregation_id"] == a && c["source"] == "static"));

    // Roles: a viewer cannot write; the refusal is audited.
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/aggregations",
        e.viewer,
        json!({"name": "x"})
    );
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(error_of(s, &b).0, "forbidden");
    let (s, _, b) = call!(
        svc,
        get,
        "/api/v1/audit?action=aggregation&limit=100",
        e.admin
    );
    assert_eq!(s, StatusCode::OK);
    let audit = json_of(&b);
    let items = audit["items"].as_array().unwrap();
    assert!(items
        .iter()
        .any(|i| i["actor"] == "screen" && i["outcome"].as_str().unwrap().starts_with("denied")));
    assert!(items.iter().any(|i| i["actor"] == "ops-admin"
        && i["action"] == "aggregation.create"
        && i["outcome"] == "ok"));
    let (s, _, _) = call!(svc, get, "/api/v1/audit", e.viewer);
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[actix_web::test]
async fn pagination_filters_and_bad_input_answer_4xx_in_the_error_shape() {
    let e = env().await;
    let svc = init_service(app(e.state.clone())).await;
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/templates",
        e.admin,
        storage_template("B", "500")
    );
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let tid = json_of(&b)["template_id"].as_u64().unwrap();
    for i in 0..7 {
        let (s, _, _) = call!(
            svc,
            post,
            "/api/v1/resources",
            e.admin,
            json!({
                "name": format!("r{i}"), "template_id": tid, "site": if i % 2 == 0 { "even" } else { "odd" },
                "location": {"lat": 50.0, "lon": 4.0}
            })
        );
        assert_eq!(s, StatusCode::CREATED);
    }
    let (_, _, b) = call!(svc, get, "/api/v1/resources?limit=3&offset=3", e.viewer);
    let p = json_of(&b);
    assert_eq!(p["total"], 7);
    let names: Vec<&str> = p["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["r3", "r4", "r5"]);
    let (_, _, b) = call!(svc, get, "/api/v1/resources?site=odd&limit=2", e.viewer);
    let p = json_of(&b);
    assert_eq!(p["total"], 3);
    assert_eq!(p["items"].as_array().map(Vec::len), Some(2));

    // Bad query values, bad paths, bad bodies: 4xx with code and field.
    for (path, field) in [
        ("/api/v1/resources?limit=0", "limit"),
        ("/api/v1/resources?limit=501", "limit"),
        ("/api/v1/resources?state=flying", "state"),
        ("/api/v1/orders?status=bogus", "status"),
        ("/api/v1/orders?side=up", "side"),
        ("/api/v1/fills?from=yesterday", "from"),
        ("/api/v1/settlement/records?from=2024-13-01", "from"),
        (
            "/api/v1/settlement/records?from=2020-01-01&to=2024-01-01",
            "to",
        ),
        ("/api/v1/templates/abc", "id"),
    ] {
        let (s, _, b) = call!(svc, get, path, e.viewer);
        let (_, f) = error_of(s, &b);
        assert_eq!(f.as_deref(), Some(field), "{path}");
    }
    let (s, _, b) = call!(svc, get, "/api/v1/resources?limit=abc", e.viewer);
    assert_eq!(error_of(s, &b).0, "bad_query");
    let (s, _, b) = call!(svc, get, "/api/v1/resources?colour=red", e.viewer);
    assert_eq!(
        error_of(s, &b).0,
        "bad_query",
        "unknown filters are refused, not ignored"
    );
    let (s, _, b) = call!(svc, get, "/api/v1/resources/999", e.viewer);
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_of(s, &b).0, "not_found");
    let (s, _, b) = call!(svc, get, "/api/v1/orders/bad%20id", e.viewer);
    assert_eq!(error_of(s, &b).1.as_deref(), Some("id"));
    let req = TestRequest::post()
        .uri("/api/v1/resources")
        .insert_header(("Authorization", format!("Bearer {}", e.admin)))
        .insert_header(("Content-Type", "application/json"))
        .set_payload("{\"name\": ")
        .to_request();
    let res = call_service(&svc, req).await;
    let s = res.status();
    let b = read_body(res).await;
    assert_eq!(error_of(s, &b).0, "bad_json");
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/resources",
        e.admin,
        json!({"name": "x", "template_id": tid, "site": "s", "location": {"lat": 1, "lon": 1}, "colour": "red"})
    );
    assert_eq!(error_of(s, &b).1.as_deref(), Some("colour"));
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/resources",
        e.admin,
        json!({"name": "x", "template_id": 77, "site": "s", "location": {"lat": 1, "lon": 1}})
    );
    assert_eq!(error_of(s, &b).1.as_deref(), Some("template_id"));
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/aggregations",
        e.admin,
        json!({"name": "z", "members": [{"resource_id": 1, "share_pct": "0"}]})
    );
    assert_eq!(error_of(s, &b).1.as_deref(), Some("share_pct"));
    let (s, _, b) = call!(svc, get, "/api/v1/nope", e.viewer);
    assert_eq!(s, StatusCode::NOT_FOUND);
    error_of(s, &b);

    // Records are empty but well-formed; the cursor pages of log tables too.
    let (s, _, b) = call!(
        svc,
        get,
        "/api/v1/orders?status=open&aggregation_id=1",
        e.viewer
    );
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b)["total"], 0);
    for path in [
        "/api/v1/fills",
        "/api/v1/positions?nonzero=true",
        "/api/v1/execution-records",
        "/api/v1/risk/events?severity=critical",
        "/api/v1/dispatch/instructions?resource_id=1",
        "/api/v1/dispatch/deviations",
    ] {
        let (s, _, b) = call!(svc, get, path, e.viewer);
        assert_eq!(s, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&b));
        assert!(json_of(&b)["items"].is_array(), "{path}");
    }
    // Missing token: 401 in the shape.
    let res = call_service(
        &svc,
        TestRequest::get().uri("/api/v1/resources").to_request(),
    )
    .await;
    let s = res.status();
    let b = read_body(res).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(s, &b).0, "unauthorized");
}

#[actix_web::test]
async fn strategies_versions_shadow_validation_and_a_backtest_run() {
    let e = env().await;
    let svc = init_service(app(e.state.clone())).await;
    let (s, _, b) = call!(svc, get, "/api/v1/strategies/templates", e.viewer);
    assert_eq!(s, StatusCode::OK);
    let kinds: Vec<String> = json_of(&b)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        kinds.contains(&"battery_arbitrage".to_owned()) && kinds.contains(&"rules".to_owned()),
        "{kinds:?}"
    );

    let market = e
        .state
        .park
        .markets
        .iter()
        .find(|m| m.kind == vpp_engine::market::MarketKind::DayAhead)
        .unwrap()
        .id
        .0;
    let agg = e
        .state
        .park
        .aggregations
        .aggregations()
        .next()
        .unwrap()
        .id
        .0;
    // A rule that does not parse is a 422 naming the parameter.
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/strategies/validate",
        e.viewer,
        json!({
            "kind": "rules", "market_id": market, "params": {"rule.1": "when price >>> 3 then sell"}
        })
    );
    let (code, field) = error_of(s, &b);
    assert_eq!(code, "invalid_param");
    assert!(
        field
            .as_deref()
            .is_some_and(|f| f.starts_with("params.rule.1")),
        "{field:?}"
    );
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/strategies",
        e.viewer,
        json!({
            "name": "arb", "kind": "battery_arbitrage", "aggregation_id": agg, "market_id": market, "params": {}
        })
    );
    assert_eq!(s, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&b));
    // Strategy changes are the admin's (docs/api.md); a trader is refused before the body.
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/strategies",
        e.trader,
        json!({
            "name": "arb", "kind": "battery_arbitrage", "aggregation_id": agg, "market_id": market, "params": {}
        })
    );
    assert_eq!(s, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&b));
    let (s, _, b) = call!(
        svc,
        post,
        "/api/v1/strategies",
        e.admin,
        json!({
            "name": "api-arb", "kind": "battery_arbitrage", "aggregation_id": agg, "market_id": market,
            "params": {"power_mw": 1, "energy_mwh": 2}
        })
    );
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let st = json_of(&b);
    let id = st["id"].as_u64().unwrap();
    assert_eq!(
        (st["version"].as_u64(), st["enabled"].as_bool()),
        (Some(1), Some(false))
    );
    let (s, _, b) = call!(
        svc,
        put,
        &format!("/api/v1/strategies/{id}/shadow"),
        e.admin,
        json!({"shadow": true})
    );
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let st = json_of(&b);
    assert_eq!(
        (st["version"].as_u64(), st["config"]["shadow"].as_bool()),
        (Some(2), Some(true))
    );
    let (s, _, b) = call!(
        svc,
        put,
        &format!("/api/v1/strategies/{id}"),
        e.admin,
        json!({"params": {"power_mw": -1}})
    );
    assert_eq!(error_of(s, &b).1.as_deref(), Some("params.power_mw"));
    let (s, _, b) = call!(
        svc,
        post,
        &format!("/api/v1/strategies/{id}/activate"),
        e.admin,
        json!({"version": 1})
    );
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let st = json_of(&b);
    assert_eq!(st["enabled"], true);
    assert_eq!(
        st["version"], 3,
        "re-activating version 1 stores it again as the newest"
    );
    assert_eq!(st["config"]["shadow"], false);
    let (_, _, b) = call!(
        svc,
        get,
        &format!("/api/v1/strategies/{id}/versions"),
        e.viewer
    );
    assert_eq!(json_of(&b)["items"].as_array().map(Vec::len), Some(3));
    let (_, _, b) = call!(
        svc,
        get,
        "/api/v1/strategies?shadow=false&enabled=true",
        e.viewer
    );
    assert!(json_of(&b)["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == id));

    // Backtest: bounded range refused, a short run stored and readable.
    let (s, _, b) = call!(
        svc,
        post,
        &format!("/api/v1/strategies/{id}/backtests"),
        e.trader,
        json!({"from": "2023-01-01", "to": "2023-12-31"})
    );
    assert_eq!(error_of(s, &b).1.as_deref(), Some("to"));
    let (s, _, b) = call!(
        svc,
        post,
        &format!("/api/v1/strategies/{id}/backtests"),
        e.trader,
        json!({"from": "2023-03-01", "to": "2023-03-03", "seed": 7})
    );
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let run = json_of(&b);
    let strategies = run["report"]["strategies"].as_array().unwrap();
    assert_eq!(strategies.len(), 1);
    assert_eq!(strategies[0]["days"].as_array().map(Vec::len), Some(3));
    assert!(strategies[0]["pnl_cny"].is_string());
    let (s, _, b) = call!(
        svc,
        get,
        &format!("/api/v1/backtests/{}", run["id"]),
        e.viewer
    );
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b)["report"], run["report"]);
}

#[actix_web::test]
async fn settlement_records_analysis_csv_and_balances() {
    let e = env().await;
    let svc = init_service(app(e.state.clone())).await;
    let d = |s: &str| s.parse::<rust_decimal::Decimal>().unwrap();
    for (agg, day, amount) in [
        (1, "2024-05-01", "1200.50"),
        (1, "2024-05-02", "-30.25"),
        (2, "2024-05-02", "99.99"),
    ] {
        e.state
            .store
            .insert_settlement(&SettlementRecord {
                id: 0,
                aggregation_id: vpp_engine::ids::AggregationId(agg),
                market_id: vpp_engine::ids::MarketId(1),
                trading_day: day.parse().unwrap(),
                created_at: chrono::Utc::now(),
                total_cny: d(amount),
                detail: json!({}),
                lines: vec![SettlementLine {
                    line_no: 1,
                    kind: if amount.starts_with('-') {
                        "deviation_penalty"
                    } else {
                        "energy"
                    }
                    .into(),
                    resource_id: None,
                    interval: None,
                    quantity_mwh: d("4"),
                    price_cny_per_mwh: d("300.125"),
                    amount_cny: d(amount),
                    note: "day, total".into(),
                }],
            })
            .await
            .unwrap();
    }
    let (s, _, b) = call!(
        svc,
        get,
        "/api/v1/settlement/records?from=2024-05-01&to=2024-05-02&aggregation_id=1",
        e.viewer
    );
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b)["total"], 2);
    let (_, _, b) = call!(
        svc,
        get,
        "/api/v1/settlement/analysis?from=2024-05-01&to=2024-05-03",
        e.viewer
    );
    let a = json_of(&b);
    assert_eq!(a["total_cny"], "1270.24");
    assert_eq!(a["by_aggregation_cny"]["1"], "1170.25");
    assert_eq!(a["best_day"], "2024-05-01");
    let (s, ct, b) = call!(
        svc,
        get,
        "/api/v1/settlement/reports?from=2024-05-01&to=2024-05-02&format=csv",
        e.viewer
    );
    assert_eq!(s, StatusCode::OK);
    assert!(ct.starts_with("text/csv"), "{ct}");
    let csv = String::from_utf8(b.to_vec()).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(rows[0].starts_with("record_id,trading_day,aggregation_id"));
    assert!(
        rows.iter()
            .any(|r| r.contains(",2024-05-01,1,1,1,energy,,,4,300.125,1200.50,\"day, total\"")),
        "{csv}"
    );
    let (_, _, b) = call!(
        svc,
        get,
        "/api/v1/settlement/reports?from=2024-05-01&to=2024-05-02",
        e.viewer
    );
    assert_eq!(json_of(&b)["records"].as_array().map(Vec::len), Some(3));
    let (s, _, b) = call!(svc, get, "/api/v1/settlement/reports?format=xml", e.viewer);
    assert_eq!(error_of(s, &b).1.as_deref(), Some("format"));
    let (_, _, b) = call!(
        svc,
        get,
        "/api/v1/settlement/balances?from=2024-05-01&to=2024-05-02",
        e.viewer
    );
    let bal = json_of(&b);
    assert_eq!(bal["items"][0]["receivable_cny"], "1200.50");
    assert_eq!(bal["items"][0]["payable_cny"], "30.25");
    assert_eq!(bal["items"][0]["net_cny"], "1170.25");
}

#[actix_web::test]
async fn dashboard_assets_metrics_and_health_are_served() {
    let e = env().await;
    let svc = init_service(app(e.state.clone())).await;
    let res = call_service(&svc, TestRequest::get().uri("/").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = String::from_utf8(read_body(res).await.to_vec()).unwrap();
    assert!(html.contains("id=\"m-stream-msgs\"") && html.contains("/dashboard.js"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    let res = call_service(&svc, TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = String::from_utf8(read_body(res).await.to_vec()).unwrap();
    assert!(text.contains("vpp_engine_running 0"), "{text}");
    // No engine: alive but not ready (503 with the reasons).
    let res = call_service(&svc, TestRequest::get().uri("/health").to_request()).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let h = json_of(&read_body(res).await);
    assert_eq!(
        (h["live"].as_bool(), h["ready"].as_bool()),
        (Some(true), Some(false))
    );
    let res = call_service(
        &svc,
        TestRequest::get().uri("/health?probe=live").to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = call_service(
        &svc,
        TestRequest::get().uri("/health?probe=maybe").to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let (s, _, b) = call!(svc, get, "/api/v1/session", e.trader);
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b)["role"], "trader");
    // The OpenAPI document lists the catalog, records, settlement and stream routes.
    let res = call_service(
        &svc,
        TestRequest::get().uri("/api/v1/openapi.json").to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let doc = json_of(&read_body(res).await);
    for path in [
        "/api/v1/templates",
        "/api/v1/resources/geojson",
        "/api/v1/aggregations/{id}/members",
        "/api/v1/strategies/{id}/backtests",
        "/api/v1/settlement/reports",
        "/api/v1/stream",
        "/metrics",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    // The stream refuses a bad token before upgrading.
    let res = call_service(
        &svc,
        TestRequest::get()
            .uri("/api/v1/stream?token=nope")
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// The live feed over a real socket: a bad token is refused before the upgrade, a viewer token
/// by `?token=` or by header gets the initial snapshot (latency) and then what is published,
/// in order, as `{"type": ...}` JSON.
#[actix_web::test]
async fn stream_authenticates_and_delivers_published_events_in_order() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let e = env().await;
    let (handle, addr) = vpp::api::serve(e.state.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("server starts");
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/stream?token=wrong")).await;
    assert!(refused.is_err(), "a bad token must not upgrade");

    let mut by_query =
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/stream?token={}", e.viewer))
            .await
            .expect("viewer token by query")
            .0;
    let mut req = format!("ws://{addr}/api/v1/stream")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", e.viewer).parse().unwrap(),
    );
    let mut by_header = tokio_tungstenite::connect_async(req)
        .await
        .expect("viewer token by header")
        .0;

    async fn next_json(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Value {
        loop {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                .await
                .expect("a message within 10 s")
                .expect("stream open")
                .expect("no socket error");
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).expect("JSON event");
            }
        }
    }
    for ws in [&mut by_query, &mut by_header] {
        // The initial snapshot ends with a latency event (no engine: no orders or positions).
        loop {
            if next_json(ws).await["type"] == "latency" {
                break;
            }
        }
    }
    for i in 0..5 {
        e.state.publish(vpp::api::StreamEvent::Alert {
            level: "warning".into(),
            message: format!("test alert {i}"),
        });
    }
    for ws in [&mut by_query, &mut by_header] {
        let mut got = Vec::new();
        while got.len() < 5 {
            let v = next_json(ws).await;
            if v["type"] == "alert" {
                got.push(v["message"].as_str().unwrap_or_default().to_owned());
            }
        }
        let want: Vec<String> = (0..5).map(|i| format!("test alert {i}")).collect();
        assert_eq!(got, want);
    }
    handle.stop(false).await;
}
