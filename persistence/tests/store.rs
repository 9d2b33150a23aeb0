//! Round trip of every stored entity, on SQLite and PostgreSQL, plus migrations and settings.

mod common;

use common::*;
use rust_decimal_macros::dec;
use serde_json::json;
use vpp_engine::aggregation::{Aggregation, Membership};
use vpp_engine::ids::{AggregationId, MarketId, ResourceId, StrategyId, TemplateId};
use vpp_engine::market::{Market, MarketKind};
use vpp_engine::resource::{GeoLocation, LifecycleState, Resource, Telemetry};
use vpp_engine::template::{
    ControlInterface, ResourceKind, TemplateDraft, TemplateParams, TemplateRegistry,
};
use vpp_persistence::{
    AuditEntry, DispatchInstruction, NewApiToken, RiskEvent, SettlementLine, SettlementRecord,
    Store, StoreError, StrategyRecord, StrategyVersion, TelemetrySample,
};

fn storage_params() -> TemplateParams {
    TemplateParams {
        rated_power_kw: dec!(500),
        min_power_kw: dec!(-500),
        max_power_kw: dec!(500),
        ramp_kw_per_s: dec!(100),
        energy_capacity_kwh: Some(dec!(1000)),
        soc_min_pct: Some(dec!(10)),
        soc_max_pct: Some(dec!(90)),
        round_trip_efficiency: Some(dec!(0.92)),
        marginal_cost_cny_per_mwh: dec!(50.125),
        response_time_s: dec!(1),
        control_interface: ControlInterface::Modbus,
    }
}

async fn markets_round_trip(store: &Store, label: &str) {
    let mut m = Market {
        id: MarketId(3),
        name: "yunnan-rt".into(),
        kind: MarketKind::RealTime,
        timezone: chrono_tz::Asia::Shanghai,
        price_cap_cny_per_mwh: dec!(1500.00),
        price_floor_cny_per_mwh: dec!(-80.5),
        negative_prices_allowed: true,
        gate_closure_minutes_before: 840,
    };
    store.upsert_market(&m).await.expect("insert market");
    assert_eq!(
        store.get_market(m.id).await.unwrap(),
        Some(m.clone()),
        "{label}"
    );
    m.price_cap_cny_per_mwh = dec!(1600);
    store.upsert_market(&m).await.expect("update market");
    assert_eq!(store.list_markets().await.unwrap(), vec![m], "{label}");
    assert_eq!(store.get_market(MarketId(99)).await.unwrap(), None);
}

async fn catalog_round_trip(store: &Store, label: &str) {
    let mut registry = TemplateRegistry::new();
    let draft = TemplateDraft {
        name: "battery 500 kW".into(),
        kind: ResourceKind::Storage,
        params: storage_params(),
    };
    let v1 = registry
        .create(TemplateId(1), draft.clone(), at(0))
        .unwrap()
        .clone();
    let mut draft2 = draft;
    draft2.params.rated_power_kw = dec!(600);
    draft2.params.max_power_kw = dec!(600);
    let v2 = registry
        .update(TemplateId(1), draft2, at(60))
        .unwrap()
        .clone();
    store.insert_template_version(&v1).await.expect("v1");
    store.insert_template_version(&v2).await.expect("v2");
    store
        .insert_template_version(&v1)
        .await
        .expect("identical re-store is a no-op");
    let mut tampered = v1.clone();
    tampered.params.rated_power_kw = dec!(1);
    assert!(matches!(
        store.insert_template_version(&tampered).await,
        Err(StoreError::Conflict(_))
    ));
    let versions = store.list_template_versions(None).await.unwrap();
    assert_eq!(versions, vec![v1.clone(), v2.clone()], "{label}");
    assert!(TemplateRegistry::restore(versions).is_ok());
    assert_eq!(
        store.list_latest_templates().await.unwrap(),
        vec![v2.clone()]
    );
    assert_eq!(
        store.get_template_version(TemplateId(1), 1).await.unwrap(),
        Some(v1.clone())
    );

    let mut r = Resource::new(
        ResourceId(10),
        "bess-1",
        &v1,
        "park north",
        GeoLocation::new(25.04, 102.71).unwrap(),
    )
    .unwrap();
    store.upsert_resource(&r).await.expect("insert resource");
    r.state = LifecycleState::Active;
    r.telemetry = Some(Telemetry {
        power_kw: dec!(-120.5),
        soc_pct: Some(dec!(55.5)),
        available: true,
        at: at(30),
    });
    store.upsert_resource(&r).await.expect("update resource");
    let r2 = Resource::new(
        ResourceId(11),
        "bess-2",
        &v2,
        "park south",
        GeoLocation::new(-1.5, 3.25).unwrap(),
    )
    .unwrap();
    store.upsert_resource(&r2).await.unwrap();
    assert_eq!(
        store.get_resource(r.id).await.unwrap(),
        Some(r.clone()),
        "{label}"
    );
    assert_eq!(
        store.list_resources().await.unwrap(),
        vec![r.clone(), r2.clone()]
    );

    let pinned_to_missing = Resource {
        template_version: 9,
        ..r2.clone()
    };
    assert!(
        store.upsert_resource(&pinned_to_missing).await.is_err(),
        "{label}: a resource must pin a stored template version"
    );

    let mut a = Aggregation {
        id: AggregationId(1),
        name: "vpp-north".into(),
        members: vec![
            Membership {
                resource_id: r.id,
                share_pct: dec!(60),
            },
            Membership {
                resource_id: r2.id,
                share_pct: dec!(100),
            },
        ],
    };
    store
        .upsert_aggregation(&a)
        .await
        .expect("insert aggregation");
    let b = Aggregation {
        id: AggregationId(2),
        name: "vpp-south".into(),
        members: vec![Membership {
            resource_id: r.id,
            share_pct: dec!(40),
        }],
    };
    store.upsert_aggregation(&b).await.unwrap();
    assert_eq!(
        store.memberships_of(r.id).await.unwrap(),
        vec![(a.id, dec!(60)), (b.id, dec!(40))],
        "{label}"
    );
    a.members.truncate(1);
    a.members[0].share_pct = dec!(50.5);
    store
        .upsert_aggregation(&a)
        .await
        .expect("update aggregation");
    assert_eq!(store.get_aggregation(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.list_aggregations().await.unwrap(), vec![a.clone(), b]);
    assert!(
        store.memberships_of(r2.id).await.unwrap().is_empty(),
        "{label}: member removed"
    );
}

async fn strategies_round_trip(store: &Store, label: &str) {
    let s = StrategyRecord {
        id: StrategyId(5),
        name: "peak shaver".into(),
        kind: "rule".into(),
        enabled: true,
        latest_version: 0,
        updated_at: at(0),
    };
    store.upsert_strategy(&s).await.unwrap();
    let v1 = StrategyVersion {
        strategy_id: s.id,
        version: 1,
        config: json!({"if": "price > 500", "then": "sell 2"}),
        created_at: at(1),
    };
    let v2 = StrategyVersion {
        version: 2,
        config: json!({"if": "price > 600"}),
        ..v1.clone()
    };
    store.insert_strategy_version(&v2).await.unwrap();
    store.insert_strategy_version(&v1).await.unwrap();
    let changed = StrategyVersion {
        config: json!({}),
        ..v1.clone()
    };
    assert!(matches!(
        store.insert_strategy_version(&changed).await,
        Err(StoreError::Conflict(_))
    ));
    let stored = store.get_strategy(s.id).await.unwrap().unwrap();
    assert_eq!(
        stored,
        StrategyRecord {
            latest_version: 2,
            ..s.clone()
        },
        "{label}"
    );
    assert_eq!(
        store.list_strategy_versions(s.id).await.unwrap(),
        vec![v1.clone(), v2]
    );
    assert_eq!(store.get_strategy_version(s.id, 1).await.unwrap(), Some(v1));
    let disabled = StrategyRecord {
        enabled: false,
        ..s
    };
    store.upsert_strategy(&disabled).await.unwrap();
    assert_eq!(
        store.list_strategies().await.unwrap(),
        vec![StrategyRecord {
            latest_version: 2,
            ..disabled
        }]
    );
}

async fn operations_round_trip(store: &Store, label: &str) {
    let d = DispatchInstruction {
        id: 0,
        at: at(5),
        aggregation_id: AggregationId(1),
        resource_id: ResourceId(10),
        interval: Some(interval(2)),
        setpoint_kw: dec!(-250.75),
        reason: "award".into(),
        detail: json!({"award_mw": "0.25"}),
    };
    let id1 = store.insert_dispatch_instruction(&d).await.unwrap();
    let d2 = DispatchInstruction {
        resource_id: ResourceId(11),
        interval: None,
        ..d.clone()
    };
    let id2 = store.insert_dispatch_instruction(&d2).await.unwrap();
    assert!(id2 > id1);
    let all = store
        .list_dispatch_instructions(None, 0, 100)
        .await
        .unwrap();
    assert_eq!(
        all,
        vec![
            DispatchInstruction {
                id: id1,
                ..d.clone()
            },
            DispatchInstruction { id: id2, ..d2 }
        ],
        "{label}"
    );
    let one = store
        .list_dispatch_instructions(Some(ResourceId(10)), 0, 100)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert!(store
        .list_dispatch_instructions(None, id2, 100)
        .await
        .unwrap()
        .is_empty());

    let t = |i: i64, p: f64| TelemetrySample {
        resource_id: ResourceId(10),
        bucket_start: at(i * 60),
        power_kw_avg: p,
        power_kw_min: p - 1.5,
        power_kw_max: p + 1.25,
        soc_pct: if i % 2 == 0 { Some(50.5) } else { None },
        available: i != 1,
        samples: 60,
    };
    let samples: Vec<_> = (0..300).map(|i| t(i, 100.0 + i as f64)).collect();
    store.insert_telemetry(&samples).await.unwrap();
    store
        .insert_telemetry(&[t(0, 1.0), t(0, 7.0)])
        .await
        .expect("duplicate bucket: last wins");
    let read = store
        .list_telemetry(ResourceId(10), at(0), at(300 * 60), 1000)
        .await
        .unwrap();
    assert_eq!(read.len(), 300, "{label}");
    assert_eq!(read[0], t(0, 7.0));
    assert_eq!(read[1..], samples[1..]);
    assert_eq!(
        store
            .list_telemetry(ResourceId(10), at(0), at(600), 1000)
            .await
            .unwrap()
            .len(),
        10
    );

    let rec = SettlementRecord {
        id: 0,
        aggregation_id: AggregationId(1),
        market_id: MarketId(3),
        trading_day: chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        created_at: at(100),
        total_cny: dec!(1234.5678),
        detail: json!({"currency": "CNY"}),
        lines: vec![
            SettlementLine {
                line_no: 1,
                kind: "energy".into(),
                resource_id: None,
                interval: Some(interval(1)),
                quantity_mwh: dec!(0.5),
                price_cny_per_mwh: dec!(320.10),
                amount_cny: dec!(160.05),
                note: String::new(),
            },
            SettlementLine {
                line_no: 2,
                kind: "deviation_penalty".into(),
                resource_id: Some(ResourceId(10)),
                interval: None,
                quantity_mwh: dec!(-0.01),
                price_cny_per_mwh: dec!(50),
                amount_cny: dec!(-0.5),
                note: "outside 3% band".into(),
            },
        ],
    };
    let sid = store.insert_settlement(&rec).await.unwrap();
    let expected = SettlementRecord {
        id: sid,
        ..rec.clone()
    };
    assert_eq!(
        store.get_settlement(sid).await.unwrap(),
        Some(expected.clone()),
        "{label}"
    );
    assert_eq!(
        store.list_settlements(rec.trading_day, 10).await.unwrap(),
        vec![expected]
    );
    assert!(store.get_settlement(sid + 100).await.unwrap().is_none());

    let risk = RiskEvent {
        id: 0,
        at: at(7),
        severity: "warning".into(),
        rule: "max_order_mw".into(),
        strategy_id: Some(StrategyId(5)),
        aggregation_id: None,
        client_order_id: Some(coid("s5-0001")),
        message: "order 12 MW above 10 MW limit".into(),
        detail: json!({"limit_mw": "10"}),
    };
    let rid = store.insert_risk_event(&risk).await.unwrap();
    assert_eq!(
        store.list_risk_events(0, 10).await.unwrap(),
        vec![RiskEvent { id: rid, ..risk }],
        "{label}"
    );

    let audit = AuditEntry {
        id: 0,
        at: at(8),
        actor: "ops-token".into(),
        action: "kill_switch.engage".into(),
        target: "engine".into(),
        outcome: "ok".into(),
        detail: json!(null),
    };
    let aid = store.insert_audit(&audit).await.unwrap();
    let aid2 = store
        .insert_audit(&AuditEntry {
            action: "engine.stop".into(),
            ..audit.clone()
        })
        .await
        .unwrap();
    let page = store.list_audit(0, 1).await.unwrap();
    assert_eq!(
        page,
        vec![AuditEntry { id: aid, ..audit }],
        "{label}: limit respected"
    );
    assert_eq!(store.list_audit(aid, 10).await.unwrap()[0].id, aid2);
}

async fn tokens_round_trip(store: &Store, label: &str) {
    let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let created = store
        .create_api_token(&NewApiToken {
            name: "ops".into(),
            role: "admin".into(),
            token_hash: hash.to_uppercase(),
            created_at: at(0),
            expires_at: Some(at(3600)),
        })
        .await
        .unwrap();
    let found = store
        .find_api_token_by_hash(hash)
        .await
        .unwrap()
        .expect("found by hash");
    assert_eq!(found, created, "{label}");
    assert!(found.is_valid_at(at(10)));
    assert!(!found.is_valid_at(at(3600)), "expired at expires_at");
    assert!(store
        .find_api_token_by_hash(&"0".repeat(64))
        .await
        .unwrap()
        .is_none());
    let plaintext = NewApiToken {
        token_hash: "my-secret-token".into(),
        ..new_token()
    };
    assert!(
        store.create_api_token(&plaintext).await.is_err(),
        "{label}: plaintext refused"
    );
    let dup = NewApiToken {
        token_hash: hash.into(),
        ..new_token()
    };
    assert!(
        store.create_api_token(&dup).await.is_err(),
        "{label}: hash is unique"
    );

    store.revoke_api_token(created.id, at(20)).await.unwrap();
    store.revoke_api_token(created.id, at(30)).await.unwrap();
    let revoked = store.find_api_token_by_hash(hash).await.unwrap().unwrap();
    assert_eq!(
        revoked.revoked_at,
        Some(at(20)),
        "first revocation time kept"
    );
    assert!(!revoked.is_valid_at(at(21)));
    assert!(matches!(
        store.revoke_api_token(9_999, at(1)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.list_api_tokens().await.unwrap(), vec![revoked]);
}

fn new_token() -> NewApiToken {
    NewApiToken {
        name: "x".into(),
        role: "viewer".into(),
        token_hash: String::new(),
        created_at: at(0),
        expires_at: None,
    }
}

#[tokio::test]
async fn every_entity_round_trips_on_both_backends() {
    for db in both().await {
        markets_round_trip(&db.store, db.label).await;
        catalog_round_trip(&db.store, db.label).await;
        strategies_round_trip(&db.store, db.label).await;
        operations_round_trip(&db.store, db.label).await;
        tokens_round_trip(&db.store, db.label).await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn migrations_are_idempotent_on_both_backends() {
    for db in both().await {
        // `both()` already migrated once; twice more must change nothing and keep data.
        db.store
            .upsert_market(&Market {
                id: MarketId(1),
                name: "da".into(),
                kind: MarketKind::DayAhead,
                timezone: chrono_tz::Asia::Shanghai,
                price_cap_cny_per_mwh: dec!(1500),
                price_floor_cny_per_mwh: dec!(0),
                negative_prices_allowed: false,
                gate_closure_minutes_before: 0,
            })
            .await
            .unwrap();
        db.store.migrate().await.expect("second migrate");
        db.store.migrate().await.expect("third migrate");
        assert_eq!(
            db.store.list_markets().await.unwrap().len(),
            1,
            "{}",
            db.label
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode_with_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub-dir-free.db");
    assert!(!path.exists());
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert!(path.exists(), "database file created");
    let s = store.sqlite_settings().await.unwrap().expect("sqlite");
    assert_eq!(s.journal_mode.to_lowercase(), "wal");
    assert_eq!(s.synchronous, 2, "FULL");
    assert_eq!(s.busy_timeout_ms, 5_000);
    assert!(s.foreign_keys);
    store.close().await;

    // Reopening an existing file keeps its data; in-memory works for quick tests.
    let mem = Store::open("sqlite::memory:").await.unwrap();
    mem.migrate().await.unwrap();
    assert!(mem.list_markets().await.unwrap().is_empty());
    let pg = postgres().await;
    assert_eq!(pg.store.sqlite_settings().await.unwrap(), None);
    pg.cleanup().await;
}

#[tokio::test]
async fn postgres_url_helpers_keep_host_and_query() {
    assert_eq!(
        with_database("postgres://u@h:5432/postgres?sslmode=disable", "x"),
        "postgres://u@h:5432/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    let opts = vpp_persistence::StoreOptions {
        acquire_timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let err = Store::open_with("postgres://nobody:pw@127.0.0.1:1/none", opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(
        !err.to_string().contains(":pw@"),
        "password redacted: {err}"
    );
}
