//! Continuous order book for one (market, delivery interval): price-time priority.
//!
//! Owns the resting orders of one real-time book and the matching rule. Pure: no I/O, no
//! clock; time comes in as `now`. Invariants that hold after every public call:
//!
//! - The book is never crossed: best bid < best ask whenever both exist. An incoming order
//!   trades against the opposite side first, always at the *maker's* price, best price
//!   first and, within a price, oldest first.
//! - Every resting order has `remaining_mw > 0`; an order is never filled beyond the quantity
//!   it was submitted (or last replaced) with.
//! - At most `max_resting_orders` orders rest. An order that would have to rest in a full
//!   book is refused with [`BookError::BookFull`] *before* it trades, so a refusal never
//!   leaves partial fills behind.
//! - No GTD order trades at or after its `expire_at`: `submit` and `replace` first sweep due
//!   orders out of the book and return them in [`SubmitOutcome::expired`]; [`OrderBook::expire`]
//!   does the same on the simulator's timer.
//!
//! Time in force: `Ioc` trades what it can and cancels the rest; `Fok` trades its whole
//! quantity or nothing (killed, book untouched); `Day`, `Gtc` and `Gtd` rest their remainder.
//! The book's life is one delivery interval, so `Day` and `Gtc` orders rest until cancelled or
//! until the shell closes the book with [`OrderBook::close`].
//!
//! Replace keeps an order's time priority only when its price is unchanged and its quantity
//! does not grow; otherwise the order goes to the back of its (new) price level and, if it
//! now crosses, trades as an incoming order would.
//!
//! Venue order ids are unique among resting orders; the shell assigns them from a counter, so
//! they are unique for the whole session. Self-trades are not prevented here.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;
use vpp_engine::ids::ClientOrderId;
use vpp_engine::order::{Side, TimeInForce};
use vpp_engine::Timestamp;

/// An order as the book holds it. `remaining_mw` is what is still open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookOrder {
    pub venue_order_id: u64,
    pub account: String,
    pub client_order_id: ClientOrderId,
    pub side: Side,
    pub price_cny_per_mwh: Decimal,
    pub remaining_mw: Decimal,
    pub time_in_force: TimeInForce,
}

/// One execution between a resting maker and an incoming taker, at the maker's price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    pub maker_order_id: u64,
    pub taker_order_id: u64,
    pub price_cny_per_mwh: Decimal,
    pub quantity_mw: Decimal,
}

/// What a submit (or a priority-losing replace) did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SubmitOutcome {
    /// Trades in execution order.
    pub trades: Vec<Trade>,
    /// The order (or its remainder) now rests in the book.
    pub rested: bool,
    /// Quantity not traded and not resting: the IOC remainder, or the whole FOK quantity when
    /// the order was killed.
    pub unfilled_cancelled_mw: Decimal,
    /// GTD orders swept out of the book because they were due at `now` (report them expired).
    pub expired: Vec<BookOrder>,
}

impl SubmitOutcome {
    /// Total quantity traded by the incoming order.
    pub fn filled_mw(&self) -> Decimal {
        self.trades.iter().map(|t| t.quantity_mw).sum()
    }
}

/// Aggregated price levels, best first: `(price, total remaining quantity)`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BookDepth {
    pub bids: Vec<(Decimal, Decimal)>,
    pub asks: Vec<(Decimal, Decimal)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BookError {
    #[error("order book is full: at most {max} resting orders; cancel orders or use IOC/FOK")]
    BookFull { max: usize },
    #[error("venue order id {0} is already resting in this book")]
    DuplicateOrderId(u64),
    #[error(
        "venue order id {0} is not resting in this book (unknown, filled, cancelled or expired)"
    )]
    UnknownOrder(u64),
    #[error("quantity {quantity_mw} MW must be greater than 0 MW")]
    NonPositiveQuantity { quantity_mw: Decimal },
    #[error("replace to a remaining quantity of {new_remaining_mw} MW: it must stay above 0 MW (cancel the order instead)")]
    ReplaceBelowZero { new_remaining_mw: Decimal },
    #[error("GTD order expires at {expire_at}, which is not after now ({now})")]
    AlreadyExpired {
        expire_at: Timestamp,
        now: Timestamp,
    },
}

/// Sort key of a resting order: price (best first per side) then arrival sequence.
type BidKey = (Reverse<Decimal>, u64);
type AskKey = (Decimal, u64);

#[derive(Debug, Clone)]
struct Resting {
    order: BookOrder,
    seq: u64,
}

/// The book. `Clone` so a simulator can snapshot it (and benches can reset it).
#[derive(Debug, Clone)]
pub struct OrderBook {
    max_resting_orders: usize,
    next_seq: u64,
    orders: HashMap<u64, Resting>,
    bids: BTreeMap<BidKey, u64>,
    asks: BTreeMap<AskKey, u64>,
    bid_levels: BTreeMap<Decimal, Decimal>,
    ask_levels: BTreeMap<Decimal, Decimal>,
    expiries: BTreeMap<(Timestamp, u64), ()>,
    /// Swept by a submit/replace that then failed; bounded by `max_resting_orders`.
    unreported_expired: Vec<BookOrder>,
}

impl OrderBook {
    pub fn new(max_resting_orders: usize) -> Self {
        Self {
            max_resting_orders,
            next_seq: 0,
            orders: HashMap::new(),
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            bid_levels: BTreeMap::new(),
            ask_levels: BTreeMap::new(),
            expiries: BTreeMap::new(),
            unreported_expired: Vec::new(),
        }
    }

    /// Matches `order` against the opposite side, then rests, cancels or kills the rest
    /// according to its time in force.
    pub fn submit(&mut self, order: BookOrder, now: Timestamp) -> Result<SubmitOutcome, BookError> {
        if order.remaining_mw <= Decimal::ZERO {
            return Err(BookError::NonPositiveQuantity {
                quantity_mw: order.remaining_mw,
            });
        }
        if self.orders.contains_key(&order.venue_order_id) {
            return Err(BookError::DuplicateOrderId(order.venue_order_id));
        }
        if let TimeInForce::Gtd { expire_at } = order.time_in_force {
            if expire_at <= now {
                return Err(BookError::AlreadyExpired { expire_at, now });
            }
        }
        let expired = self.expire(now);
        self.with_expired(expired, |book| book.execute(order))
    }

    /// Removes a resting order and hands it back.
    pub fn cancel(&mut self, venue_order_id: u64) -> Result<BookOrder, BookError> {
        self.remove(venue_order_id)
            .ok_or(BookError::UnknownOrder(venue_order_id))
    }

    /// Changes a resting order's remaining quantity and price (see the module doc for the
    /// priority rule). The order keeps its venue id, side, account and time in force.
    pub fn replace(
        &mut self,
        venue_order_id: u64,
        new_remaining_mw: Decimal,
        new_price: Decimal,
        now: Timestamp,
    ) -> Result<SubmitOutcome, BookError> {
        if new_remaining_mw <= Decimal::ZERO {
            return Err(BookError::ReplaceBelowZero { new_remaining_mw });
        }
        let current = &self
            .orders
            .get(&venue_order_id)
            .ok_or(BookError::UnknownOrder(venue_order_id))?
            .order;
        if let TimeInForce::Gtd { expire_at } = current.time_in_force {
            if expire_at <= now {
                // Left in the book on purpose: the next `expire(now)` reports it as expired.
                return Err(BookError::AlreadyExpired { expire_at, now });
            }
        }
        let keeps_priority =
            new_price == current.price_cny_per_mwh && new_remaining_mw <= current.remaining_mw;
        let expired = self.expire(now);
        self.with_expired(expired, |book| {
            if keeps_priority {
                book.shrink_in_place(venue_order_id, new_remaining_mw);
                return Ok(SubmitOutcome {
                    rested: true,
                    ..SubmitOutcome::default()
                });
            }
            let mut order = book
                .remove(venue_order_id)
                .ok_or(BookError::UnknownOrder(venue_order_id))?;
            order.remaining_mw = new_remaining_mw;
            order.price_cny_per_mwh = new_price;
            // It just freed its own slot, so it can always rest again: never BookFull here.
            book.execute(order)
        })
    }

    /// Removes and returns every GTD order whose `expire_at <= now`, earliest first (after
    /// any swept by a failed `submit`/`replace` and not yet reported).
    pub fn expire(&mut self, now: Timestamp) -> Vec<BookOrder> {
        let mut out = std::mem::take(&mut self.unreported_expired);
        while let Some((&(expire_at, id), _)) = self.expiries.first_key_value() {
            if expire_at > now {
                break;
            }
            match self.remove(id) {
                Some(order) => out.push(order),
                None => {
                    self.expiries.remove(&(expire_at, id));
                }
            }
        }
        out
    }

    /// Removes every resting order (end of the session), bids then asks, best first.
    pub fn close(&mut self) -> Vec<BookOrder> {
        let ids: Vec<u64> = self
            .bids
            .values()
            .chain(self.asks.values())
            .copied()
            .collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    pub fn get(&self, venue_order_id: u64) -> Option<&BookOrder> {
        self.orders.get(&venue_order_id).map(|r| &r.order)
    }

    /// Best bid price and the total quantity resting at it.
    pub fn best_bid(&self) -> Option<(Decimal, Decimal)> {
        self.bid_levels.last_key_value().map(|(p, q)| (*p, *q))
    }

    /// Best ask price and the total quantity resting at it.
    pub fn best_ask(&self) -> Option<(Decimal, Decimal)> {
        self.ask_levels.first_key_value().map(|(p, q)| (*p, *q))
    }

    /// Up to `levels` aggregated price levels per side, best first.
    pub fn depth(&self, levels: usize) -> BookDepth {
        BookDepth {
            bids: self
                .bid_levels
                .iter()
                .rev()
                .take(levels)
                .map(|(p, q)| (*p, *q))
                .collect(),
            asks: self
                .ask_levels
                .iter()
                .take(levels)
                .map(|(p, q)| (*p, *q))
                .collect(),
        }
    }

    /// Resting orders in priority order: bids best first, then asks best first.
    pub fn open_orders(&self) -> impl Iterator<Item = &BookOrder> {
        self.bids
            .values()
            .chain(self.asks.values())
            .filter_map(|id| self.orders.get(id).map(|r| &r.order))
    }

    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    pub fn max_resting_orders(&self) -> usize {
        self.max_resting_orders
    }

    /// Runs `op`; on success the swept `expired` orders go into its outcome, on failure they
    /// are kept for the next `expire` so that no expiry is ever lost.
    fn with_expired(
        &mut self,
        expired: Vec<BookOrder>,
        op: impl FnOnce(&mut Self) -> Result<SubmitOutcome, BookError>,
    ) -> Result<SubmitOutcome, BookError> {
        match op(self) {
            Ok(mut outcome) => {
                outcome.expired = expired;
                Ok(outcome)
            }
            Err(e) => {
                self.unreported_expired = expired;
                Err(e)
            }
        }
    }

    /// Runs the matching for an order not in the book: capacity and FOK checks, trades, rest.
    fn execute(&mut self, mut order: BookOrder) -> Result<SubmitOutcome, BookError> {
        let fully_fillable = self.crossable_mw(&order) >= order.remaining_mw;
        let rests = matches!(
            order.time_in_force,
            TimeInForce::Day | TimeInForce::Gtc | TimeInForce::Gtd { .. }
        );
        if order.time_in_force == TimeInForce::Fok && !fully_fillable {
            return Ok(SubmitOutcome {
                unfilled_cancelled_mw: order.remaining_mw,
                ..SubmitOutcome::default()
            });
        }
        // A partially fillable order takes every crossed maker out; it needs one free slot after.
        if rests
            && !fully_fillable
            && self.len() - self.crossing_makers(&order) >= self.max_resting_orders
        {
            return Err(BookError::BookFull {
                max: self.max_resting_orders,
            });
        }
        let trades = self.match_against_book(&mut order);
        let mut outcome = SubmitOutcome {
            trades,
            ..SubmitOutcome::default()
        };
        if order.remaining_mw > Decimal::ZERO {
            if rests {
                self.insert(order);
                outcome.rested = true;
            } else {
                outcome.unfilled_cancelled_mw = order.remaining_mw;
            }
        }
        Ok(outcome)
    }

    /// Quantity the opposite side could trade with `order` now, counted only up to the
    /// order's own quantity.
    fn crossable_mw(&self, order: &BookOrder) -> Decimal {
        let limit = order.price_cny_per_mwh;
        let want = order.remaining_mw;
        let mut total_mw = Decimal::ZERO;
        let mut add = |level_mw: &Decimal| {
            total_mw += *level_mw;
            total_mw >= want
        };
        match order.side {
            Side::Buy => self
                .ask_levels
                .range(..=limit)
                .map(|(_, q)| q)
                .any(&mut add),
            Side::Sell => self
                .bid_levels
                .range(limit..)
                .rev()
                .map(|(_, q)| q)
                .any(&mut add),
        };
        total_mw
    }

    /// How many resting orders `order`'s price crosses (all of them trade away when the
    /// order is larger than the crossable quantity). Only called near a full book.
    fn crossing_makers(&self, order: &BookOrder) -> usize {
        let limit = order.price_cny_per_mwh;
        match order.side {
            Side::Buy => self.asks.range(..=(limit, u64::MAX)).count(),
            Side::Sell => self.bids.range(..=(Reverse(limit), u64::MAX)).count(),
        }
    }

    fn match_against_book(&mut self, taker: &mut BookOrder) -> Vec<Trade> {
        let mut trades = Vec::new();
        while taker.remaining_mw > Decimal::ZERO {
            let Some(maker_id) = self.best_crossing_maker(taker) else {
                break;
            };
            let Some(maker) = self.orders.get(&maker_id) else {
                break; // index and map disagree: stop rather than loop (never expected)
            };
            let price = maker.order.price_cny_per_mwh;
            let quantity_mw = maker.order.remaining_mw.min(taker.remaining_mw);
            taker.remaining_mw -= quantity_mw;
            self.reduce(maker_id, quantity_mw);
            trades.push(Trade {
                maker_order_id: maker_id,
                taker_order_id: taker.venue_order_id,
                price_cny_per_mwh: price,
                quantity_mw,
            });
        }
        trades
    }

    fn best_crossing_maker(&self, taker: &BookOrder) -> Option<u64> {
        let limit = taker.price_cny_per_mwh;
        match taker.side {
            Side::Buy => self
                .asks
                .first_key_value()
                .filter(|((p, _), _)| *p <= limit)
                .map(|(_, id)| *id),
            Side::Sell => self
                .bids
                .first_key_value()
                .filter(|((Reverse(p), _), _)| *p >= limit)
                .map(|(_, id)| *id),
        }
    }

    /// Takes `quantity_mw` off a resting order, removing it when nothing is left.
    fn reduce(&mut self, id: u64, quantity_mw: Decimal) {
        let Some(resting) = self.orders.get_mut(&id) else {
            return;
        };
        resting.order.remaining_mw -= quantity_mw;
        let (side, price, left) = (
            resting.order.side,
            resting.order.price_cny_per_mwh,
            resting.order.remaining_mw,
        );
        self.adjust_level(side, price, -quantity_mw);
        if left <= Decimal::ZERO {
            // Level total already reduced by the full remainder; remove only the index entries.
            if let Some(r) = self.orders.remove(&id) {
                self.unindex(&r);
            }
        }
    }

    fn shrink_in_place(&mut self, id: u64, new_remaining_mw: Decimal) {
        if let Some(resting) = self.orders.get_mut(&id) {
            let delta = new_remaining_mw - resting.order.remaining_mw;
            resting.order.remaining_mw = new_remaining_mw;
            let (side, price) = (resting.order.side, resting.order.price_cny_per_mwh);
            self.adjust_level(side, price, delta);
        }
    }

    fn insert(&mut self, order: BookOrder) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = order.venue_order_id;
        let price = order.price_cny_per_mwh;
        match order.side {
            Side::Buy => self.bids.insert((Reverse(price), seq), id),
            Side::Sell => self.asks.insert((price, seq), id),
        };
        if let TimeInForce::Gtd { expire_at } = order.time_in_force {
            self.expiries.insert((expire_at, id), ());
        }
        self.adjust_level(order.side, price, order.remaining_mw);
        self.orders.insert(id, Resting { order, seq });
    }

    fn remove(&mut self, id: u64) -> Option<BookOrder> {
        let resting = self.orders.remove(&id)?;
        self.unindex(&resting);
        let o = &resting.order;
        self.adjust_level(o.side, o.price_cny_per_mwh, -o.remaining_mw);
        Some(resting.order)
    }

    fn unindex(&mut self, resting: &Resting) {
        let o = &resting.order;
        match o.side {
            Side::Buy => self
                .bids
                .remove(&(Reverse(o.price_cny_per_mwh), resting.seq)),
            Side::Sell => self.asks.remove(&(o.price_cny_per_mwh, resting.seq)),
        };
        if let TimeInForce::Gtd { expire_at } = o.time_in_force {
            self.expiries.remove(&(expire_at, o.venue_order_id));
        }
    }

    fn adjust_level(&mut self, side: Side, price: Decimal, delta_mw: Decimal) {
        let levels = match side {
            Side::Buy => &mut self.bid_levels,
            Side::Sell => &mut self.ask_levels,
        };
        let total = levels.entry(price).or_insert(Decimal::ZERO);
        *total += delta_mw;
        if *total <= Decimal::ZERO {
            levels.remove(&price);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;
    use std::collections::HashMap;

    fn t(secs: i64) -> Timestamp {
        chrono::Utc
            .timestamp_opt(1_780_000_000 + secs, 0)
            .single()
            .unwrap()
    }

    fn order(id: u64, side: Side, price: Decimal, qty: Decimal, tif: TimeInForce) -> BookOrder {
        BookOrder {
            venue_order_id: id,
            account: "acct".into(),
            client_order_id: ClientOrderId::new(format!("c{id}")).unwrap(),
            side,
            price_cny_per_mwh: price,
            remaining_mw: qty,
            time_in_force: tif,
        }
    }

    fn gtc(id: u64, side: Side, price: Decimal, qty: Decimal) -> BookOrder {
        order(id, side, price, qty, TimeInForce::Gtc)
    }

    fn makers(o: &SubmitOutcome) -> Vec<(u64, Decimal, Decimal)> {
        o.trades
            .iter()
            .map(|t| (t.maker_order_id, t.price_cny_per_mwh, t.quantity_mw))
            .collect()
    }

    #[test]
    fn price_then_time_priority_and_maker_price() {
        let mut b = OrderBook::new(10);
        b.submit(gtc(1, Side::Sell, dec!(101), dec!(5)), t(0))
            .unwrap();
        b.submit(gtc(2, Side::Sell, dec!(101), dec!(5)), t(1))
            .unwrap();
        b.submit(gtc(3, Side::Sell, dec!(100.5), dec!(5)), t(2))
            .unwrap();
        b.submit(gtc(4, Side::Sell, dec!(102), dec!(5)), t(3))
            .unwrap();
        let out = b
            .submit(gtc(9, Side::Buy, dec!(101), dec!(12)), t(4))
            .unwrap();
        // Best price first (3 @ 100.5), then oldest at 101 (1 before 2); 102 is not crossed.
        assert_eq!(
            makers(&out),
            vec![
                (3, dec!(100.5), dec!(5)),
                (1, dec!(101), dec!(5)),
                (2, dec!(101), dec!(2))
            ]
        );
        assert!(out.trades.iter().all(|t| t.taker_order_id == 9));
        assert!(!out.rested);
        assert_eq!(b.get(2).unwrap().remaining_mw, dec!(3));
        assert_eq!(b.best_ask(), Some((dec!(101), dec!(3))));
        assert_eq!(b.best_bid(), None);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn partial_fill_rests_the_remainder_of_a_gtc_taker() {
        let mut b = OrderBook::new(10);
        b.submit(gtc(1, Side::Buy, dec!(300), dec!(4)), t(0))
            .unwrap();
        let out = b
            .submit(gtc(2, Side::Sell, dec!(299), dec!(10)), t(1))
            .unwrap();
        assert_eq!(makers(&out), vec![(1, dec!(300), dec!(4))]);
        assert!(out.rested);
        assert_eq!(out.unfilled_cancelled_mw, dec!(0));
        assert_eq!(out.filled_mw(), dec!(4));
        assert_eq!(b.get(2).unwrap().remaining_mw, dec!(6));
        assert_eq!(b.best_ask(), Some((dec!(299), dec!(6))));
        assert!(b.get(1).is_none());
    }

    #[test]
    fn ioc_remainder_is_cancelled_not_rested() {
        let mut b = OrderBook::new(10);
        b.submit(gtc(1, Side::Sell, dec!(100), dec!(5)), t(0))
            .unwrap();
        let ioc = order(2, Side::Buy, dec!(100), dec!(8), TimeInForce::Ioc);
        let out = b.submit(ioc, t(1)).unwrap();
        assert_eq!(out.filled_mw(), dec!(5));
        assert_eq!(out.unfilled_cancelled_mw, dec!(3));
        assert!(!out.rested);
        assert!(b.is_empty());
        // An IOC that crosses nothing is cancelled whole.
        let out = b
            .submit(
                order(3, Side::Buy, dec!(1), dec!(2), TimeInForce::Ioc),
                t(2),
            )
            .unwrap();
        assert_eq!((out.trades.len(), out.unfilled_cancelled_mw), (0, dec!(2)));
    }

    #[test]
    fn fok_is_all_or_nothing() {
        let mut b = OrderBook::new(10);
        b.submit(gtc(1, Side::Sell, dec!(100), dec!(5)), t(0))
            .unwrap();
        b.submit(gtc(2, Side::Sell, dec!(101), dec!(3)), t(0))
            .unwrap();
        b.submit(gtc(3, Side::Sell, dec!(102), dec!(50)), t(0))
            .unwrap();
        let before = b.depth(10);
        let killed = b
            .submit(
                order(4, Side::Buy, dec!(101), dec!(8.001), TimeInForce::Fok),
                t(1),
            )
            .unwrap();
        assert!(killed.trades.is_empty());
        assert_eq!(killed.unfilled_cancelled_mw, dec!(8.001));
        assert!(!killed.rested);
        assert_eq!(
            b.depth(10),
            before,
            "a killed FOK leaves the book untouched"
        );
        let filled = b
            .submit(
                order(5, Side::Buy, dec!(101), dec!(8), TimeInForce::Fok),
                t(2),
            )
            .unwrap();
        assert_eq!(filled.filled_mw(), dec!(8));
        assert_eq!(filled.unfilled_cancelled_mw, dec!(0));
        assert_eq!(b.best_ask(), Some((dec!(102), dec!(50))));
    }

    #[test]
    fn gtd_orders_expire_at_their_time_and_never_trade_after_it() {
        let mut b = OrderBook::new(10);
        let gtd = |id, at| {
            order(
                id,
                Side::Buy,
                dec!(50),
                dec!(1),
                TimeInForce::Gtd { expire_at: t(at) },
            )
        };
        b.submit(gtd(1, 10), t(0)).unwrap();
        b.submit(gtd(2, 20), t(0)).unwrap();
        assert!(b.expire(t(9)).is_empty());
        let expired = b.expire(t(10));
        assert_eq!(
            expired.iter().map(|o| o.venue_order_id).collect::<Vec<_>>(),
            vec![1]
        );
        // Order 2 is due at 20: a crossing sell at 20 sweeps it instead of trading with it.
        let out = b
            .submit(gtc(3, Side::Sell, dec!(50), dec!(1)), t(20))
            .unwrap();
        assert!(out.trades.is_empty());
        assert_eq!(out.expired.len(), 1);
        assert_eq!(out.expired[0].venue_order_id, 2);
        assert!(out.rested);
        assert_eq!(
            b.submit(gtd(4, 20), t(20)).unwrap_err(),
            BookError::AlreadyExpired {
                expire_at: t(20),
                now: t(20)
            }
        );
    }

    #[test]
    fn cancel_removes_once() {
        let mut b = OrderBook::new(10);
        b.submit(gtc(1, Side::Buy, dec!(50), dec!(2)), t(0))
            .unwrap();
        b.submit(gtc(2, Side::Buy, dec!(50), dec!(3)), t(0))
            .unwrap();
        let c = b.cancel(1).unwrap();
        assert_eq!((c.venue_order_id, c.remaining_mw), (1, dec!(2)));
        assert_eq!(b.best_bid(), Some((dec!(50), dec!(3))));
        assert_eq!(b.cancel(1).unwrap_err(), BookError::UnknownOrder(1));
        b.cancel(2).unwrap();
        assert_eq!(b.best_bid(), None);
        assert!(b.is_empty());
    }

    #[test]
    fn replace_keeps_priority_only_when_shrinking_at_the_same_price() {
        let mut b = OrderBook::new(10);
        for id in 1..=3 {
            b.submit(gtc(id, Side::Sell, dec!(100), dec!(5)), t(0))
                .unwrap();
        }
        // Shrink order 1 at the same price: stays first.
        let out = b.replace(1, dec!(2), dec!(100), t(1)).unwrap();
        assert!(out.rested && out.trades.is_empty());
        // Grow order 2: goes behind order 3.
        b.replace(2, dec!(6), dec!(100), t(1)).unwrap();
        let order_ids: Vec<u64> = b.open_orders().map(|o| o.venue_order_id).collect();
        assert_eq!(order_ids, vec![1, 3, 2]);
        assert_eq!(b.best_ask(), Some((dec!(100), dec!(13))));
        // Re-price order 1 away and back: it loses its place.
        b.replace(1, dec!(2), dec!(100.01), t(2)).unwrap();
        b.replace(1, dec!(2), dec!(100), t(3)).unwrap();
        let order_ids: Vec<u64> = b.open_orders().map(|o| o.venue_order_id).collect();
        assert_eq!(order_ids, vec![3, 2, 1]);
    }

    #[test]
    fn replace_that_crosses_trades_as_a_taker() {
        let mut b = OrderBook::new(10);
        b.submit(gtc(1, Side::Sell, dec!(100), dec!(5)), t(0))
            .unwrap();
        b.submit(gtc(2, Side::Buy, dec!(90), dec!(8)), t(0))
            .unwrap();
        let out = b.replace(2, dec!(8), dec!(100), t(1)).unwrap();
        assert_eq!(makers(&out), vec![(1, dec!(100), dec!(5))]);
        assert_eq!(out.trades[0].taker_order_id, 2);
        assert_eq!(b.best_bid(), Some((dec!(100), dec!(3))));
        assert_eq!(b.best_ask(), None);
    }

    #[test]
    fn replace_refusals() {
        let mut b = OrderBook::new(10);
        let gtd = TimeInForce::Gtd { expire_at: t(5) };
        b.submit(order(1, Side::Buy, dec!(90), dec!(8), gtd), t(0))
            .unwrap();
        assert_eq!(
            b.replace(1, dec!(0), dec!(90), t(1)).unwrap_err(),
            BookError::ReplaceBelowZero {
                new_remaining_mw: dec!(0)
            }
        );
        assert_eq!(
            b.replace(7, dec!(1), dec!(90), t(1)).unwrap_err(),
            BookError::UnknownOrder(7)
        );
        assert!(matches!(
            b.replace(1, dec!(1), dec!(90), t(5)),
            Err(BookError::AlreadyExpired { .. })
        ));
        // The refused order is still reported as expired by the next sweep.
        assert_eq!(b.expire(t(5))[0].venue_order_id, 1);
    }

    #[test]
    fn book_full_refuses_before_trading() {
        let mut b = OrderBook::new(2);
        b.submit(gtc(1, Side::Sell, dec!(100), dec!(5)), t(0))
            .unwrap();
        b.submit(gtc(2, Side::Sell, dec!(101), dec!(5)), t(0))
            .unwrap();
        assert_eq!(
            b.submit(gtc(3, Side::Buy, dec!(90), dec!(1)), t(1))
                .unwrap_err(),
            BookError::BookFull { max: 2 }
        );
        // A partially filling order consumes every maker it crosses, freeing their slots:
        // both makers leave, so it rests even though the book was full.
        let out = b
            .submit(gtc(4, Side::Buy, dec!(101), dec!(12)), t(1))
            .unwrap();
        assert_eq!(out.filled_mw(), dec!(10));
        assert!(out.rested);
        b.submit(gtc(5, Side::Sell, dec!(105), dec!(1)), t(1))
            .unwrap();
        // Full again (ids 4 and 5). An IOC never needs a slot; a fully filling GTC neither.
        let ioc = order(6, Side::Sell, dec!(101), dec!(1), TimeInForce::Ioc);
        assert_eq!(b.submit(ioc, t(2)).unwrap().filled_mw(), dec!(1));
        let fills = b
            .submit(gtc(7, Side::Sell, dec!(101), dec!(0.5)), t(2))
            .unwrap();
        assert_eq!((fills.filled_mw(), fills.rested), (dec!(0.5), false));
        assert_eq!(b.len(), 2);
        let depth = b.depth(5);
        assert!(matches!(
            b.submit(gtc(8, Side::Sell, dec!(104), dec!(5)), t(3)),
            Err(BookError::BookFull { max: 2 })
        ));
        assert_eq!(b.depth(5), depth);
    }

    #[test]
    fn shape_errors() {
        let mut b = OrderBook::new(2);
        assert_eq!(
            b.submit(gtc(1, Side::Buy, dec!(1), dec!(0)), t(0))
                .unwrap_err(),
            BookError::NonPositiveQuantity {
                quantity_mw: dec!(0)
            }
        );
        b.submit(gtc(1, Side::Buy, dec!(1), dec!(1)), t(0)).unwrap();
        assert_eq!(
            b.submit(gtc(1, Side::Buy, dec!(1), dec!(1)), t(0))
                .unwrap_err(),
            BookError::DuplicateOrderId(1)
        );
        assert!(BookError::BookFull { max: 2 }
            .to_string()
            .contains("at most 2"));
    }

    #[test]
    fn depth_aggregates_levels_best_first_and_close_empties() {
        let mut b = OrderBook::new(10);
        b.submit(gtc(1, Side::Buy, dec!(99), dec!(1)), t(0))
            .unwrap();
        b.submit(gtc(2, Side::Buy, dec!(98), dec!(2)), t(0))
            .unwrap();
        b.submit(gtc(3, Side::Buy, dec!(99.0), dec!(3)), t(0))
            .unwrap();
        b.submit(gtc(4, Side::Sell, dec!(101), dec!(4)), t(0))
            .unwrap();
        let d = b.depth(1);
        assert_eq!(d.bids, vec![(dec!(99), dec!(4))]);
        assert_eq!(d.asks, vec![(dec!(101), dec!(4))]);
        assert_eq!(b.depth(5).bids.len(), 2);
        let closed: Vec<u64> = b.close().iter().map(|o| o.venue_order_id).collect();
        assert_eq!(closed, vec![1, 3, 2, 4]);
        assert!(b.is_empty() && b.best_bid().is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Submit {
            side: Side,
            price: i64,
            qty: i64,
            tif: u8,
        },
        Cancel(usize),
        Replace {
            pick: usize,
            price: i64,
            qty: i64,
        },
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<bool>(), 95i64..106, 1i64..30, 0u8..4).prop_map(|(buy, price, qty, tif)| Op::Submit {
                side: if buy { Side::Buy } else { Side::Sell },
                price,
                qty,
                tif,
            }),
            1 => any::<usize>().prop_map(Op::Cancel),
            1 => (any::<usize>(), 95i64..106, 1i64..30).prop_map(|(pick, price, qty)| Op::Replace { pick, price, qty }),
        ]
    }

    /// Checks the book's invariants against an independent record of what was traded.
    fn check(b: &OrderBook, quantity: &HashMap<u64, Decimal>, traded: &HashMap<u64, Decimal>) {
        if let (Some((bid, _)), Some((ask, _))) = (b.best_bid(), b.best_ask()) {
            assert!(bid < ask, "crossed book: bid {bid} >= ask {ask}");
        }
        for (id, q) in traded {
            assert!(
                *q <= quantity[id],
                "order {id} traded {q} of {}",
                quantity[id]
            );
        }
        let mut level_sum = Decimal::ZERO;
        for o in b.open_orders() {
            assert!(o.remaining_mw > Decimal::ZERO);
            let done = traded.get(&o.venue_order_id).copied().unwrap_or_default();
            assert_eq!(o.remaining_mw + done, quantity[&o.venue_order_id]);
            level_sum += o.remaining_mw;
        }
        let d = b.depth(usize::MAX);
        let depth_sum: Decimal = d.bids.iter().chain(&d.asks).map(|l| l.1).sum();
        assert_eq!(depth_sum, level_sum);
        assert!(b.len() <= b.max_resting_orders());
    }

    proptest! {
        #[test]
        fn book_is_never_crossed_and_never_overfills(ops in proptest::collection::vec(arb_op(), 1..120)) {
            let mut b = OrderBook::new(40);
            // `quantity` is each order's current total (original, or as last replaced, plus
            // what it had traded before): remaining + traded must always equal it.
            let mut quantity: HashMap<u64, Decimal> = HashMap::new();
            let mut traded: HashMap<u64, Decimal> = HashMap::new();
            let mut next_id = 1u64;
            for op in ops {
                let outcome = match op {
                    Op::Submit { side, price, qty, tif } => {
                        let tif = [TimeInForce::Gtc, TimeInForce::Ioc, TimeInForce::Fok, TimeInForce::Day][usize::from(tif)];
                        let id = next_id;
                        next_id += 1;
                        let o = order(id, side, Decimal::from(price), Decimal::new(qty, 1), tif);
                        quantity.insert(id, o.remaining_mw);
                        b.submit(o, t(0)).ok()
                    }
                    Op::Cancel(pick) => {
                        let ids: Vec<u64> = b.open_orders().map(|o| o.venue_order_id).collect();
                        if !ids.is_empty() {
                            let id = ids[pick % ids.len()];
                            prop_assert_eq!(b.cancel(id).unwrap().venue_order_id, id);
                            prop_assert!(b.get(id).is_none());
                        }
                        None
                    }
                    Op::Replace { pick, price, qty } => {
                        let ids: Vec<u64> = b.open_orders().map(|o| o.venue_order_id).collect();
                        if ids.is_empty() {
                            None
                        } else {
                            let id = ids[pick % ids.len()];
                            let new_remaining = Decimal::new(qty, 1);
                            let done = traded.get(&id).copied().unwrap_or_default();
                            quantity.insert(id, new_remaining + done);
                            b.replace(id, new_remaining, Decimal::from(price), t(0)).ok()
                        }
                    }
                };
                for tr in outcome.iter().flat_map(|o| &o.trades) {
                    prop_assert!(tr.quantity_mw > Decimal::ZERO);
                    *traded.entry(tr.maker_order_id).or_default() += tr.quantity_mw;
                    *traded.entry(tr.taker_order_id).or_default() += tr.quantity_mw;
                }
                check(&b, &quantity, &traded);
            }
        }
    }
}
