//! Encode and decode cost per message type. Target: a book update decodes in under 2 µs.

use chrono::{TimeZone, Utc};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rust_decimal::Decimal;
use std::time::Duration;
use vpp_engine::ids::ClientOrderId;
use vpp_engine::market::{DeliveryInterval, Product};
use vpp_engine::order::Side;
use vpp_market_adapters::protocol::{
    decode_client, decode_venue, encode, BookLevels, Channel, ChannelData, ClientMsg, Heartbeat,
    MarketData, NewOrder, PricePoint, VenueMsg, WireExecKind, WireExecReport, WireTif,
};

fn interval(h: u32) -> DeliveryInterval {
    DeliveryInterval::starting_at(Utc.with_ymd_and_hms(2026, 3, 1, h, 0, 0).unwrap()).unwrap()
}

fn levels(base: i64, step: i64) -> Vec<(Decimal, Decimal)> {
    (0..5)
        .map(|i| {
            (
                Decimal::new((base + step * i) * 100 + 25, 2),
                Decimal::new(15 + i, 1),
            )
        })
        .collect()
}

fn book_update() -> VenueMsg {
    VenueMsg::Update(MarketData {
        channel: Channel::Book,
        market: "yn-rt".into(),
        seq: 123_456,
        data: ChannelData::Book(vec![BookLevels {
            interval: interval(10),
            bids: levels(300, -1),
            asks: levels(301, 1),
        }]),
    })
}

fn price_update() -> VenueMsg {
    VenueMsg::Update(MarketData {
        channel: Channel::Prices,
        market: "yn-rt".into(),
        seq: 99,
        data: ChannelData::Prices(vec![PricePoint {
            interval: interval(10),
            reference_price_cny_per_mwh: Decimal::new(31_250, 2),
            last_trade_price_cny_per_mwh: Some(Decimal::new(30_100, 2)),
        }]),
    })
}

fn exec_report() -> VenueMsg {
    VenueMsg::ExecReport(WireExecReport {
        account_seq: 4_242,
        client_order_id: ClientOrderId::new("s1-000042").unwrap(),
        venue_order_id: "V123456".into(),
        ts: Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap(),
        kind: WireExecKind::PartialFill {
            fill_id: 77,
            quantity_mw: Decimal::new(5, 1),
            price_cny_per_mwh: Decimal::new(30_050, 2),
        },
        filled_mw: Decimal::new(5, 1),
        leaves_mw: Decimal::new(15, 1),
    })
}

fn new_order() -> ClientMsg {
    ClientMsg::NewOrder(NewOrder {
        client_order_id: ClientOrderId::new("s1-000042").unwrap(),
        market: "yn-rt".into(),
        product: Product::Energy,
        interval: interval(10),
        side: Side::Sell,
        quantity_mw: Decimal::new(2, 0),
        price_cny_per_mwh: Decimal::new(30_050, 2),
        time_in_force: WireTif::Gtc,
        expire_at: None,
    })
}

fn heartbeat() -> VenueMsg {
    VenueMsg::Heartbeat(Heartbeat {
        ts: Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap(),
        account_seq: Some(4_242),
        streams: Vec::new(),
    })
}

fn codec(c: &mut Criterion) {
    let venue_msgs = [
        ("book_update", book_update()),
        ("price_update", price_update()),
        ("exec_report", exec_report()),
        ("heartbeat", heartbeat()),
    ];
    for (name, msg) in &venue_msgs {
        let text = encode(msg).unwrap();
        c.bench_function(&format!("decode/{name}"), |b| {
            b.iter(|| decode_venue(black_box(&text)).unwrap())
        });
        c.bench_function(&format!("encode/{name}"), |b| {
            b.iter(|| encode(black_box(msg)).unwrap())
        });
    }
    let order = new_order();
    let text = encode(&order).unwrap();
    c.bench_function("decode/new_order", |b| {
        b.iter(|| decode_client(black_box(&text)).unwrap())
    });
    c.bench_function("encode/new_order", |b| {
        b.iter(|| encode(black_box(&order)).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(50);
    targets = codec
}
criterion_main!(benches);
