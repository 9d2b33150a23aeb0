//! The HTTP contract of the operator API (issue 14): the role matrix walked operation by
//! operation and role by role, the OpenAPI document listing exactly the matrix's operations,
//! a revoked token's live feed closed, and — against `vpp run` — strict bodies refused before
//! they act (401 before the body, 415, 400, 413 also chunked), one audit row per refusal,
//! ids as digit strings, 405 with `Allow`, and a bounded audit of an anonymous flood.

mod api_common;

use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, read_body, TestRequest};
use api_common::{audit_rows, boot, call, create_token, get, post, raw};
use std::sync::Arc;
use std::time::Duration;
use vpp::api::roles::{Access, OPERATIONS};
use vpp::api::{app, ApiState};
use vpp::config::Park;
use vpp::token::{self, Role};
use vpp_engine::clock::{Clock, ManualClock};
use vpp_persistence::Store;

async fn state() -> (ApiState, [String; 3]) {
    let store = Store::open("sqlite::memory:").await.expect("open store");
    store.migrate().await.expect("migrate");
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(chrono::Utc::now()));
    let runtime = vpp_actors::Runtime::new(clock);
    let park = Arc::new(Park::demo().expect("demo park"));
    let rate = vpp::api::limits::RateLimit {
        rate_per_s: 100_000.0,
        burst: 100_000,
        max_tokens: 100,
    };
    let state = ApiState::new(store.clone(), None, runtime, park, rate);
    let mut tokens = Vec::new();
    for (name, role) in [("v", Role::Viewer), ("t", Role::Trader), ("a", Role::Admin)] {
        tokens.push(token::create(&store, name, role, None).await.unwrap().1);
    }
    let [v, t, a]: [String; 3] = tokens.try_into().unwrap();
    (state, [v, t, a])
}

fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s.starts_with('{') {
                "1".to_owned()
            } else {
                s.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every operation of the matrix with no token and with each role: below the operation's
/// role it is 401 (no token) or 403, at or above it never is; nothing answers 5xx but 503
/// (no live engine in this process).
#[actix_web::test]
async fn every_operation_with_every_role() {
    let (state, [viewer, trader, admin]) = state().await;
    let svc = init_service(app(state)).await;
    let callers: [(Option<Role>, Option<&str>); 4] = [
        (None, None),
        (Some(Role::Viewer), Some(viewer.as_str())),
        (Some(Role::Trader), Some(trader.as_str())),
        (Some(Role::Admin), Some(admin.as_str())),
    ];
    let mut walked = 0;
    for op in OPERATIONS {
        for (role, token) in callers {
            let method = actix_web::http::Method::from_bytes(op.method.as_bytes()).unwrap();
            let mut req = TestRequest::default()
                .method(method)
                .uri(&concrete(op.path));
            if let Some(t) = token {
                req = req.insert_header(("Authorization", format!("Bearer {t}")));
            }
            let res = call_service(&svc, req.to_request()).await;
            let status = res.status();
            let body = String::from_utf8_lossy(&read_body(res).await).into_owned();
            let what = format!("{} {} as {role:?}: {status} {body}", op.method, op.path);
            assert!(
                !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
                "{what}"
            );
            match (op.access.min_role(), role) {
                (None, _) => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "public: {what}"
                ),
                (Some(_), None) => assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}"),
                (Some(need), Some(r)) if r < need => {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}")
                }
                (Some(_), Some(_)) => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{what}"
                ),
            }
            walked += 1;
        }
    }
    assert_eq!(walked, OPERATIONS.len() * 4);
    // The rules the docs state, read from the one table.
    let role_of = |m: &str, p: &str| {
        OPERATIONS
            .iter()
            .find(|o| o.method == m && o.path == p)
            .unwrap_or_else(|| panic!("{m} {p} not in the matrix"))
            .access
    };
    for (m, p) in [
        ("POST", "/api/v1/strategies"),
        ("PUT", "/api/v1/strategies/{id}"),
        ("DELETE", "/api/v1/strategies/{id}"),
        ("POST", "/api/v1/strategies/{id}/activate"),
        ("POST", "/api/v1/strategies/{id}/deactivate"),
        ("PUT", "/api/v1/strategies/{id}/shadow"),
        ("POST", "/api/v1/engine/stop"),
        ("GET", "/api/v1/audit"),
    ] {
        assert_eq!(role_of(m, p), Access::Min(Role::Admin), "{m} {p}");
    }
    assert_eq!(role_of("POST", "/api/v1/orders"), Access::Min(Role::Trader));
}

/// The OpenAPI document and the matrix list the same operations.
#[actix_web::test]
async fn the_openapi_document_lists_exactly_the_matrix() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(vpp::api::openapi::ApiDoc::openapi()).unwrap();
    let mut in_doc = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                in_doc.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let mut in_table: Vec<String> = OPERATIONS
        .iter()
        .map(|o| format!("{} {}", o.method, o.path))
        .collect();
    in_doc.sort();
    in_table.sort();
    assert_eq!(in_doc, in_table);
}

/// Revoking a token closes its open feeds; another token's feed stays open.
#[actix_web::test]
async fn a_revoked_token_closes_its_live_feed() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (state, [viewer, trader, _]) = state().await;
    let store = state.store.clone();
    let (handle, addr) = vpp::api::serve(state.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("server starts");
    let open = |t: &str| {
        let url = format!("ws://{addr}/api/v1/stream?token={t}");
        async move {
            tokio_tungstenite::connect_async(url)
                .await
                .expect("upgrade")
                .0
        }
    };
    let mut doomed = open(&viewer).await;
    let mut kept = open(&trader).await;
    let id = store
        .list_api_tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == "v")
        .unwrap()
        .id;
    token::revoke(&store, id).await.unwrap();
    // Bounded wait: the feed must end (a close frame, then the end of the stream).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match doomed.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the revoked token's feed closes");
    if let Some(frame) = ended {
        assert_eq!(u16::from(frame.code), 1008, "policy violation");
    }
    state.publish(vpp::api::StreamEvent::Alert {
        level: "info".into(),
        message: "still here".into(),
    });
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Ok(Message::Text(t))) = kept.next().await {
                if t.as_str().contains("still here") {
                    return;
                }
            } else {
                panic!("the other token's feed ended");
            }
        }
    })
    .await;
    assert!(got.is_ok(), "the valid token's feed keeps delivering");
    handle.stop(false).await;
}

/// Sends a chunked body of `n` bytes.
fn chunked(addr: &str, path: &str, token: &str, n: usize) -> api_common::Resp {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let chunk = vec![b' '; 8 * 1024];
    let mut left = n;
    while left > 0 {
        let c = left.min(chunk.len());
        req.extend_from_slice(format!("{c:x}\r\n").as_bytes());
        req.extend_from_slice(&chunk[..c]);
        req.extend_from_slice(b"\r\n");
        left -= c;
    }
    req.extend_from_slice(b"0\r\n\r\n");
    raw(addr, &req)
}

fn with_type(
    addr: &str,
    path: &str,
    token: Option<&str>,
    ctype: &str,
    body: &str,
) -> api_common::Resp {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    raw(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: {ctype}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[test]
fn strict_requests_against_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("vpp.db").display());
    let admin = create_token(&db, "admin", "ops");
    let trader = create_token(&db, "trader", "desk");
    let d = boot(&["--database-url", &db, "--speed", "300"]);
    let a = d.addr.as_str();
    let trading = || get(a, "/api/v1/engine", &admin).json()["trading"] == true;
    assert!(trading());

    // No token and a bad body: 401, the body is never looked at.
    let r = with_type(a, "/api/v1/engine/stop", None, "text/plain", "hi");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = call(a, "POST", "/api/v1/orders", None, Some("{not json"));
    assert_eq!(r.status, 401, "{}", r.body);

    // Bodies of stop/start/activate are checked before anything happens.
    let r = with_type(a, "/api/v1/engine/stop", Some(&admin), "text/plain", "stop");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (415, "unsupported_media_type")
    );
    let r = post(a, "/api/v1/engine/stop", &admin, "{not json");
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_json"));
    let r = post(a, "/api/v1/engine/stop", &admin, r#"{"resaon":"typo"}"#);
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_body"));
    assert_eq!(r.json()["error"]["field"], "resaon");
    let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(1024 * 1024));
    let r = post(a, "/api/v1/engine/stop", &admin, &big);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "payload_too_large")
    );
    let r = chunked(a, "/api/v1/engine/stop", &admin, 200 * 1024);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "payload_too_large")
    );
    assert!(trading(), "no refused stop may stop trading");
    for body in [r#"{"version":"1"}"#, r#"{"verison":1}"#] {
        let r = post(a, "/api/v1/strategies/1/activate", &admin, body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_body"),
            "{body}"
        );
    }
    let r = chunked(a, "/api/v1/engine/start", &admin, 200 * 1024);
    assert_eq!(r.status, 413, "{}", r.body);
    // An empty body is fine for the optional ones, and acts.
    let r = call(a, "POST", "/api/v1/engine/stop", Some(&admin), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!trading());
    let r = post(a, "/api/v1/engine/start", &admin, r#"{"reason":"back"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(trading());

    // Ids typed as strings in the OpenAPI work as strings.
    let r = post(
        a,
        "/api/v1/risk/kill-switch/engage",
        &trader,
        r#"{"scope":"strategy","id":"1","reason":"contract test"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        a,
        "/api/v1/risk/kill-switch/release",
        &trader,
        r#"{"scope":"strategy","id":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let order = r#"{"market":"2","aggregation":"2","side":"sell","quantity_mw":"0.1",
        "price_cny_per_mwh":"1400","interval_start":"2030-01-01T00:00:00Z"}"#;
    let r = post(a, "/api/v1/orders", &trader, order);
    assert!(r.status != 404, "market \"2\" is market 2: {}", r.body);

    // Absurd orders are refused by risk (the same checks strategies pass through).
    let absurd = |qty: &str, interval: &str| {
        format!(
            r#"{{"market":"yunnan-real-time","aggregation":"vpp-south","side":"sell",
            "quantity_mw":"{qty}","price_cny_per_mwh":"1400","interval_start":"{interval}"}}"#
        )
    };
    let soon = (chrono::Utc::now() + chrono::Duration::hours(3))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string();
    for (body, code) in [
        (
            absurd("0.0000000000000000000000000001", &soon),
            "invalid_quantity",
        ),
        (absurd("0.1234", &soon), "invalid_quantity"),
        (absurd("0.1", "9999-12-31T23:45:00Z"), "beyond_horizon"),
    ] {
        let r = post(a, "/api/v1/orders", &trader, &body);
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert_eq!(r.error_code(), "risk_rejected");
        assert!(r.body.contains(code), "{code}: {}", r.body);
    }
    // Limits: negative refused; zero means none allowed.
    let r = call(
        a,
        "PUT",
        "/api/v1/risk/limits/strategy_defaults",
        Some(&admin),
        Some(r#"{"max_order_mw":"-1"}"#),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let r = call(
        a,
        "PUT",
        "/api/v1/risk/limits/strategy_defaults",
        Some(&admin),
        Some(r#"{"orders_per_second":0}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        a,
        "/api/v1/orders",
        &trader,
        &absurd("0.1", &soon).replace(
            r#""aggregation":"vpp-south""#,
            r#""strategy":"north-rt-threshold""#,
        ),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("strategy_throttle"), "{}", r.body);

    // Methods: 405 with Allow, TRACE included.
    let r = call(a, "TRACE", "/api/v1/engine", Some(&admin), None);
    assert_eq!(r.status, 405, "{}", r.body);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = call(a, "GET", "/api/v1/engine/stop", Some(&admin), None);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));

    // An anonymous flood: refused, rate limited, and audited as a bounded summary.
    let statuses: Vec<u16> = (0..150)
        .map(|_| call(a, "POST", "/api/v1/engine/stop", None, Some("{}")).status)
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "unauthenticated calls are rate limited"
    );
    assert!(trading());

    drop(d);
    let audit = audit_rows(&db);
    let stops: Vec<_> = audit.iter().filter(|e| e.action == "engine.stop").collect();
    // Per refused call one row at most (the 5 refusals by "ops" share one key per status:
    // 415, 400 (twice), 413 (twice)); the one accepted stop is one row.
    let by_ops: Vec<_> = stops.iter().filter(|e| e.actor == "ops").collect();
    assert!(
        by_ops.iter().filter(|e| e.outcome == "ok").count() == 1,
        "{by_ops:#?}"
    );
    assert!(
        by_ops
            .iter()
            .all(|e| e.outcome == "ok" || e.outcome.starts_with("error: ")),
        "{by_ops:#?}"
    );
    assert!(by_ops.len() <= 1 + 5, "{by_ops:#?}");
    // The one text/plain stop left exactly one row (today: an error row and an `ok` row).
    assert_eq!(
        by_ops
            .iter()
            .filter(|e| e.outcome.contains("application/json"))
            .count(),
        1,
        "{by_ops:#?}"
    );
    let anonymous = audit.iter().filter(|e| e.actor == "anonymous").count();
    assert!(
        anonymous <= 6,
        "152 anonymous refusals must not write a row each: {anonymous} rows"
    );
    assert!(anonymous >= 1, "refusals are audited");
}
