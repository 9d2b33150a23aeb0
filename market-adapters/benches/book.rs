//! Criterion benches of the venue simulator's pure matching components: order-book submit
//! and cancel on a book holding ~1,000 resting orders, and uniform-price clearing of a
//! 1,000-bid day-ahead auction. Kept short (20 samples) so it fits the shared CI box.
//! Book benches run in steady state on one warm book: each routine restores the book, so
//! the numbers are per routine (two to four book operations), not per single call.

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use rust_decimal::Decimal;
use std::hint::black_box;
use std::time::Duration;
use vpp_engine::ids::ClientOrderId;
use vpp_engine::order::{Side, TimeInForce};
use vpp_engine::Timestamp;
use vpp_market_adapters::sim::auction::{clear_uniform_price, AuctionBid};
use vpp_market_adapters::sim::book::{BookOrder, OrderBook};

const RESTING: u64 = 1_000;

fn now() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0)
        .single()
        .unwrap_or_default()
}

fn order(id: u64, side: Side, price_cents: i64, qty_tenths: i64, tif: TimeInForce) -> BookOrder {
    BookOrder {
        venue_order_id: id,
        account: "bench".into(),
        client_order_id: ClientOrderId::new(format!("b{id}")).expect("bench ids are valid"),
        side,
        price_cny_per_mwh: Decimal::new(price_cents, 2),
        remaining_mw: Decimal::new(qty_tenths, 1),
        time_in_force: tif,
    }
}

/// 500 bids on 100 levels below 300.00 and 500 asks on 100 levels from 300.01 up.
fn resting_book() -> OrderBook {
    let mut book = OrderBook::new(10_000);
    for id in 0..RESTING {
        let level = i64::try_from(id / 2 % 100).unwrap_or(0);
        let (side, price) = if id % 2 == 0 {
            (Side::Buy, 30_000 - level * 10)
        } else {
            (Side::Sell, 30_001 + level * 10)
        };
        let qty = 10 + i64::try_from(id % 7).unwrap_or(0) * 5;
        let _ = book.submit(order(id, side, price, qty, TimeInForce::Gtc), now());
    }
    book
}

fn bench_book(c: &mut Criterion) {
    let mut g = c.benchmark_group("book_1000_resting");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    // Each routine leaves the book as it found it (about 1,000 orders), so it stays warm.
    let mut book = resting_book();
    let mut id = 1_000_000u64;
    let mut next_id = move || {
        id += 1;
        id
    };
    g.bench_function("rest_then_cancel", |b| {
        b.iter(|| {
            let oid = next_id();
            let maker = order(oid, Side::Buy, 29_500, 10, TimeInForce::Gtc);
            black_box(book.submit(maker, now()).is_ok());
            black_box(book.cancel(oid).is_ok())
        })
    });
    // A 3 MW ask joins the back of the best level and a 3 MW IOC takes 3 MW off its front.
    g.bench_function("rest_then_ioc_match_front", |b| {
        b.iter(|| {
            let maker = order(next_id(), Side::Sell, 30_001, 30, TimeInForce::Gtc);
            black_box(book.submit(maker, now()).is_ok());
            let taker = order(next_id(), Side::Buy, 30_001, 30, TimeInForce::Ioc);
            black_box(book.submit(taker, now()))
        })
    });
    // Three 1 MW asks on three new best levels, then one IOC sweeps all three (3 trades).
    g.bench_function("rest_3_levels_then_ioc_sweep", |b| {
        b.iter(|| {
            for price in [300_002, 300_004, 300_006] {
                let maker = BookOrder {
                    price_cny_per_mwh: Decimal::new(price, 3),
                    ..order(next_id(), Side::Sell, 0, 10, TimeInForce::Gtc)
                };
                black_box(book.submit(maker, now()).is_ok());
            }
            let taker = BookOrder {
                price_cny_per_mwh: Decimal::new(300_006, 3),
                ..order(next_id(), Side::Buy, 0, 30, TimeInForce::Ioc)
            };
            black_box(book.submit(taker, now()))
        })
    });
    g.finish();
}

/// 500 supply and 500 demand bids on overlapping price ranges, deterministic (LCG).
fn auction_bids(n: u64) -> Vec<AuctionBid> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |m: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % m
    };
    (0..n)
        .map(|bid_id| {
            let side = if bid_id % 2 == 0 {
                Side::Sell
            } else {
                Side::Buy
            };
            let price = i64::try_from(200 + next(200)).unwrap_or(300);
            let qty_tenths = i64::try_from(10 + next(500)).unwrap_or(10);
            AuctionBid {
                bid_id,
                side,
                quantity_mw: Decimal::new(qty_tenths, 1),
                price_cny_per_mwh: Decimal::new(price, 0),
            }
        })
        .collect()
}

fn bench_auction(c: &mut Criterion) {
    let bids = auction_bids(1_000);
    let mut g = c.benchmark_group("auction");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("clear_uniform_price_1000_bids", |b| {
        b.iter(|| black_box(clear_uniform_price(black_box(&bids))))
    });
    g.finish();
}

criterion_group!(benches, bench_book, bench_auction);
criterion_main!(benches);
