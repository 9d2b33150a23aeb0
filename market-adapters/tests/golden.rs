//! Golden transcript of a scripted session against the simulator: fixed seed, fixed time
//! (manual clock), no timers. Every frame both ways is written to a JSON line and compared byte
//! for byte with tests/golden/session.jsonl. Regenerate with `UPDATE_GOLDEN=1 cargo test -p
//! vpp-market-adapters --test golden` and review the diff like code.
//!
//! After each client message the script sends a heartbeat with a unique timestamp and reads
//! until its ack: the venue answers in order, so everything the message caused has arrived.

mod common;

use chrono::{TimeZone, Utc};
use common::*;
use futures_util::{SinkExt, StreamExt};
use rust_decimal_macros::dec;
use std::path::PathBuf;
use tokio_tungstenite::tungstenite::Message;
use vpp_engine::market::{DeliveryInterval, Product};
use vpp_engine::order::{Side, TimeInForce};
use vpp_market_adapters::protocol::{
    encode, tif_to_wire, CancelOrder, Channel, ClientMsg, FillsSinceQuery, Heartbeat, Login,
    NewOrder, OpenOrdersQuery, OrderStatusQuery, Subscription, PROTOCOL_VERSION,
};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Script {
    ws: Ws,
    lines: Vec<String>,
    barrier: i64,
}

impl Script {
    async fn raw(&mut self, text: &str, record: bool) {
        if record {
            let line = match serde_json::from_str::<serde_json::Value>(text) {
                Ok(_) => format!("{{\"c2v\":{text}}}"),
                Err(_) => format!("{{\"c2v_raw\":{}}}", serde_json::to_string(text).unwrap()),
            };
            self.lines.push(line);
        }
        self.ws.send(Message::text(text.to_string())).await.unwrap();
    }

    /// Sends `msg`, then reads every frame it caused.
    async fn step(&mut self, msg: &ClientMsg) {
        self.raw(&encode(msg).unwrap(), true).await;
        self.drain().await;
    }

    async fn drain(&mut self) {
        self.barrier += 1;
        let ts = Utc.timestamp_opt(1_700_000_000 + self.barrier, 0).unwrap();
        let hb = ClientMsg::Heartbeat(Heartbeat {
            ts,
            account_seq: None,
            streams: Vec::new(),
        });
        self.raw(&encode(&hb).unwrap(), false).await;
        let marker = format!(
            "\"type\":\"heartbeat_ack\",\"ts\":\"{}\"",
            ts.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        );
        loop {
            let frame = tokio::time::timeout(GUARD, self.ws.next())
                .await
                .expect("venue answers")
                .unwrap()
                .unwrap();
            let Message::Text(text) = frame else { continue };
            if text.as_str().contains(&marker) {
                return;
            }
            self.lines.push(format!("{{\"v2c\":{}}}", text.as_str()));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn new_order(
    id: &str,
    market: &str,
    product: Product,
    interval: DeliveryInterval,
    side: Side,
    qty: rust_decimal::Decimal,
    price: rust_decimal::Decimal,
    tif: TimeInForce,
) -> ClientMsg {
    let (time_in_force, expire_at) = tif_to_wire(tif);
    ClientMsg::NewOrder(NewOrder {
        client_order_id: cid(id),
        market: market.into(),
        product,
        interval,
        side,
        quantity_mw: qty,
        price_cny_per_mwh: price,
        time_in_force,
        expire_at,
    })
}

#[tokio::test]
async fn session_transcript_matches_golden() {
    let clock = clock();
    let mut cfg = venue_config();
    cfg.heartbeat_interval_ms = 0;
    let venue = start_venue(cfg, clock.clone()).await;
    let (ws, _) = tokio_tungstenite::connect_async(venue.url()).await.unwrap();
    let mut s = Script {
        ws,
        lines: Vec::new(),
        barrier: 0,
    };

    let rt = rt_interval();
    // Day-ahead for the local day after tomorrow (gate: 2026-03-02T02:00Z); regulation at 10:00Z.
    let da =
        DeliveryInterval::starting_at(Utc.with_ymd_and_hms(2026, 3, 3, 2, 0, 0).unwrap()).unwrap();
    let sub = |channel, market: &str| Subscription {
        channel,
        market: market.into(),
    };

    // Refused: not logged in.
    s.step(&new_order(
        "early",
        "yn-rt",
        Product::Energy,
        rt,
        Side::Buy,
        dec!(1),
        dec!(1),
        TimeInForce::Gtc,
    ))
    .await;
    s.step(&ClientMsg::Login(Login {
        api_key: "wrong".into(),
        protocol_version: PROTOCOL_VERSION,
    }))
    .await;
    s.step(&ClientMsg::Login(Login {
        api_key: KEY_A.into(),
        protocol_version: PROTOCOL_VERSION,
    }))
    .await;
    s.step(&ClientMsg::Subscribe(sub(Channel::Book, "yn-rt")))
        .await;
    s.step(&ClientMsg::Subscribe(sub(Channel::AuctionResults, "yn-da")))
        .await;
    s.step(&ClientMsg::Subscribe(sub(
        Channel::AncillaryResults,
        "yn-reg",
    )))
    .await;
    s.step(&ClientMsg::Subscribe(sub(Channel::Book, "nowhere")))
        .await;
    s.step(&new_order(
        "c1",
        "yn-rt",
        Product::Energy,
        rt,
        Side::Sell,
        dec!(2),
        dec!(300),
        TimeInForce::Gtc,
    ))
    .await;
    s.step(&new_order(
        "c2",
        "yn-rt",
        Product::Energy,
        rt,
        Side::Buy,
        dec!(0.5),
        dec!(310),
        TimeInForce::Ioc,
    ))
    .await;
    s.step(&new_order(
        "c3",
        "yn-rt",
        Product::Energy,
        rt,
        Side::Buy,
        dec!(5),
        dec!(299),
        TimeInForce::Fok,
    ))
    .await;
    s.step(&new_order(
        "c1",
        "yn-rt",
        Product::Energy,
        rt,
        Side::Sell,
        dec!(2),
        dec!(300),
        TimeInForce::Gtc,
    ))
    .await;
    s.step(&new_order(
        "c4",
        "yn-rt",
        Product::Energy,
        rt,
        Side::Sell,
        dec!(1),
        dec!(1600),
        TimeInForce::Gtc,
    ))
    .await;
    s.step(&ClientMsg::ReplaceOrder(
        vpp_market_adapters::protocol::ReplaceOrder {
            client_order_id: cid("c1"),
            quantity_mw: dec!(3),
            price_cny_per_mwh: dec!(305),
        },
    ))
    .await;
    s.step(&new_order(
        "d1",
        "yn-da",
        Product::Energy,
        da,
        Side::Buy,
        dec!(50),
        dec!(900),
        TimeInForce::Day,
    ))
    .await;
    s.step(&new_order(
        "d2",
        "yn-da",
        Product::Energy,
        da,
        Side::Sell,
        dec!(20),
        dec!(0),
        TimeInForce::Day,
    ))
    .await;
    s.step(&new_order(
        "r1",
        "yn-reg",
        Product::RegulationCapacity,
        rt,
        Side::Sell,
        dec!(10),
        dec!(25),
        TimeInForce::Day,
    ))
    .await;
    s.step(&ClientMsg::CancelOrder(CancelOrder {
        client_order_id: cid("c1"),
    }))
    .await;
    s.step(&ClientMsg::CancelOrder(CancelOrder {
        client_order_id: cid("c1"),
    }))
    .await;
    s.step(&ClientMsg::OrderStatus(OrderStatusQuery {
        client_order_id: cid("c2"),
    }))
    .await;
    s.step(&ClientMsg::OrderStatus(OrderStatusQuery {
        client_order_id: cid("zz"),
    }))
    .await;
    s.step(&ClientMsg::OpenOrders(OpenOrdersQuery {})).await;
    s.step(&ClientMsg::FillsSince(FillsSinceQuery { account_seq: 3 }))
        .await;
    s.raw(r#"{"type":"hello","from":"the future"}"#, true).await;
    s.drain().await;
    s.raw("{oops", true).await;
    s.drain().await;
    // Past every gate: the regulation and day-ahead auctions clear, the real-time book closes.
    clock.set(Utc.with_ymd_and_hms(2026, 3, 2, 2, 0, 0).unwrap());
    venue.tick();
    s.drain().await;
    s.step(&ClientMsg::FillsSince(FillsSinceQuery { account_seq: 14 }))
        .await;
    assert_eq!(venue.stats().unknown_in, 1);
    assert_eq!(venue.stats().malformed_in, 1);

    let transcript = s.lines.join("\n") + "\n";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/session.jsonl");
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &transcript).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if golden != transcript {
        let first = golden
            .lines()
            .zip(transcript.lines())
            .position(|(a, b)| a != b);
        panic!(
            "transcript differs from {} (first differing line: {:?}); rerun with UPDATE_GOLDEN=1 if the change is intended\n--- golden\n{}\n--- now\n{}",
            path.display(),
            first.map(|i| i + 1),
            first.and_then(|i| golden.lines().nth(i)).unwrap_or("<end>"),
            first.and_then(|i| transcript.lines().nth(i)).unwrap_or("<end>"),
        );
    }
    venue.stop().await;
}
