//! Operator API security end to end, against `vpp run` (demo park, built-in venue, SQLite in a
//! temp dir, API on port 0): missing, unknown and revoked tokens get 401; a viewer cannot trade
//! or work a kill switch (403, audited as denied); a trader cannot stop the engine; oversized
//! bodies get 413, malformed JSON 400, bad parameters and unknown routes 4xx, all in the one
//! error shape; a token past its rate limit gets 429 with Retry-After; no credential appears in
//! API output. Waits are bounded and only wait for progress.

mod api_common;

use api_common::{audit_rows, boot, call, create_token, get, list_tokens, post, raw};

const ORDER: &str = r#"{"market":"yunnan-real-time","aggregation":"vpp-south","side":"sell",
    "quantity_mw":"0.1","price_cny_per_mwh":"1400","interval_start":"2030-01-01T00:00:00Z"}"#;

#[test]
fn tokens_roles_limits_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("vpp.db").display());
    let viewer = create_token(&db, "viewer", "viewer-1");
    let trader = create_token(&db, "trader", "trader-1");
    let gone = create_token(&db, "admin", "gone");
    let burst = create_token(&db, "viewer", "burst");
    assert_ne!(viewer, trader);
    let d = boot(&[
        "--database-url",
        &db,
        "--speed",
        "300",
        "--api-rate-per-s",
        "2",
        "--api-burst",
        "30",
    ]);
    let a = d.addr.as_str();

    // No token, an unknown token: 401 in the error shape.
    let r = call(a, "GET", "/api/v1/engine", None, None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "unauthorized");
    let r = get(a, "/api/v1/engine", "vpp_0000");
    assert_eq!(r.status, 401);
    // A state change without a token is refused and audited.
    let r = call(a, "POST", "/api/v1/engine/stop", None, None);
    assert_eq!(r.status, 401);

    // A viewer reads...
    let r = get(a, "/api/v1/engine", &viewer);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["trading"], true);
    // ...but cannot trade or work a kill switch.
    let r = post(a, "/api/v1/orders", &viewer, ORDER);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error_code(), "forbidden");
    let kill = r#"{"scope":"strategy","id":"north-rt-threshold","reason":"test"}"#;
    let r = post(a, "/api/v1/risk/kill-switch/engage", &viewer, kill);
    assert_eq!(r.status, 403, "{}", r.body);
    // A trader cannot stop the engine (admin only).
    let r = post(a, "/api/v1/engine/stop", &trader, "{}");
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(get(a, "/api/v1/engine", &viewer).json()["trading"], true);

    // Revocation takes effect on the next request.
    assert_eq!(get(a, "/api/v1/engine", &gone).status, 200);
    let listing = list_tokens(&db);
    let id = listing
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("gone"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("gone not listed: {listing}"))
        .to_owned();
    assert!(!listing.contains(&gone), "token list must not print tokens");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["token", "revoke", &id, "--database-url", &db])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Verified tokens are trusted for at most a second: the refusal follows within it.
    let r = api_common::wait_for(10, "the revoked token refused", || {
        let r = get(a, "/api/v1/engine", &gone);
        (r.status != 200).then_some(r)
    });
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("revoked"), "{}", r.body);
    assert!(list_tokens(&db).contains("revoked"));

    // Oversized body: 413 in the shape.
    let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(100 * 1024));
    let r = post(a, "/api/v1/orders", &trader, &big);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.error_code(), "payload_too_large");
    // Malformed JSON, a wrong type, a missing field: 400 naming what.
    let r = post(a, "/api/v1/orders", &trader, "{not json");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_code(), "bad_json");
    let r = post(
        a,
        "/api/v1/orders",
        &trader,
        &ORDER.replace(r#""0.1""#, "true"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_code(), "invalid_body", "{}", r.body);
    let r = post(
        a,
        "/api/v1/orders",
        &trader,
        r#"{"market":"yunnan-real-time"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "side", "{}", r.body);
    // Not JSON at all.
    let r = raw(
        a,
        format!(
            "POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {trader}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 415, "{}", r.body);
    assert_eq!(r.error_code(), "unsupported_media_type");
    // Unknown names and bad values in a valid body: 404/422 naming the field.
    let r = post(
        a,
        "/api/v1/orders",
        &trader,
        &ORDER.replace("vpp-south", "nowhere"),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "aggregation");
    let r = post(
        a,
        "/api/v1/orders",
        &trader,
        &ORDER.replace("00:00:00Z", "00:07:00Z"),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "interval_start");
    let r = post(
        a,
        "/api/v1/risk/kill-switch/engage",
        &trader,
        r#"{"scope":"planet"}"#,
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "scope");

    // Bad query parameters, unknown routes and methods: 4xx in the shape.
    let r = get(a, "/api/v1/engine/orders?limit=abc", &viewer);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_code(), "bad_query");
    let r = get(a, "/api/v1/engine/orders?limit=9999", &viewer);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "limit");
    let r = get(a, "/api/v1/engine/orders?strategy=nope", &viewer);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "strategy");
    let r = get(a, "/api/v1/no/such/route", &viewer);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.error_code(), "not_found");
    let r = call(a, "PATCH", "/api/v1/engine", Some(&viewer), Some("{}"));
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.body);
    r.error_code();
    let r = call(a, "DELETE", "/api/v1/orders/bad%20id", Some(&trader), None);
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.body);
    r.error_code();

    // The OpenAPI document is public and lists the live routes.
    let r = call(a, "GET", "/api/v1/openapi.json", None, None);
    assert_eq!(r.status, 200);
    assert!(r.json()["paths"]["/api/v1/risk/kill-switch/engage"].is_object());

    // No credential in API output.
    for path in ["/api/v1/markets/connections", "/api/v1/engine"] {
        let r = get(a, path, &viewer);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            !r.body.contains(vpp::daemon::venue::DEMO_API_KEY),
            "{path}: {}",
            r.body
        );
    }

    // Rate limit: 30 at once, then 2/s; 80 quick requests must hit it.
    let limited = (0..80)
        .map(|_| get(a, "/api/v1/engine", &burst))
        .find(|r| r.status == 429)
        .expect("80 quick requests over a burst of 30 are limited");
    assert_eq!(limited.error_code(), "rate_limited");
    let retry: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After header");
    assert!(retry >= 1);
    // Other tokens have their own buckets.
    assert_eq!(get(a, "/api/v1/engine", &viewer).status, 200);

    drop(d);
    let audit = audit_rows(&db);
    let denied = |actor: &str, action: &str| {
        audit
            .iter()
            .any(|e| e.actor == actor && e.action == action && e.outcome.starts_with("denied"))
    };
    assert!(denied("viewer-1", "order.new"), "{audit:#?}");
    assert!(denied("viewer-1", "kill_switch.engage"), "{audit:#?}");
    assert!(denied("trader-1", "engine.stop"), "{audit:#?}");
    assert!(denied("anonymous", "engine.stop"), "{audit:#?}");
    // A body refused as malformed is audited under the caller's name.
    assert!(
        audit.iter().any(|e| e.actor == "trader-1"
            && e.action == "order.new"
            && e.outcome.starts_with("error")
            && e.outcome.contains("request body")),
        "{audit:#?}"
    );
    assert!(audit
        .iter()
        .any(|e| e.actor == "cli" && e.action == "token.revoke"));
    // A refused call changed nothing: no kill switch was engaged.
    assert!(!audit
        .iter()
        .any(|e| e.action == "kill_switch.engage" && e.outcome == "ok"));
}
