//! Paper trading: a [`PaperVenue`] answers a strategy's intents without any venue and fills
//! them against the market data the strategy sees, so a *shadow* strategy (live market data,
//! nothing sent) and a session replay (`vpp backtest --session`) get a paper P&L from the
//! same code. [`settle_on_paper`] drives a [`StrategyHost`] against it: intents go to the paper
//! venue, its reports go back to the host (with the status the order state machine computed),
//! until the strategy is quiet.
//!
//! Fill model (deterministic, price taker, no market impact):
//! - `BookTop`: a buy whose limit reaches the best ask fills there up to the ask's quantity; a
//!   sell whose limit reaches the best bid likewise.
//! - `Price` with a last trade: a limit that reaches it fills fully at the last trade.
//! - `AuctionResult`: a buy at or above the clearing price, a sell at or below it, fill fully
//!   at the clearing price; the rest expires (the auction is over).
//! - `AncillaryResult`: an offer at or below the capacity price fills at it; else it expires.
//! - `DrInvitation` once awarded: an ask at or below the invitation price fills at the
//!   invitation price; else it expires.
//! - Immediate-or-cancel and fill-or-kill orders meet the last quote seen for their market and
//!   interval at once; what does not fill is cancelled. Other orders rest until a fill, a
//!   cancel, or the start of their interval (expired).
//!
//! P&L: cash from fills; energy and demand response are paid per MWh (MW × 0.25 h), capacity
//! products per MW.
//!
//! Invariants: every order changes only through `Order::apply_report`, the same state machine
//! as live; everything is bounded ([`MAX_PAPER_ORDERS`], [`MAX_QUOTES`], [`MAX_LOG`],
//! [`MAX_ROUNDS`]).

use super::{MarketData, OrderIntent, PriceLevel, StrategyError, StrategyHost};
use crate::ids::{ClientOrderId, FillId, MarketId};
use crate::market::{DeliveryInterval, Product};
use crate::order::{ExecKind, ExecReport, Order, OrderStatus, Side, TimeInForce};
use crate::Timestamp;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Most open paper orders; a new one beyond it is rejected.
pub const MAX_PAPER_ORDERS: usize = 10_000;
/// Most (market, interval) quotes remembered; the earliest intervals go first.
pub const MAX_QUOTES: usize = 2_000;
/// Most recorded intents kept in memory; the oldest go first (counted).
pub const MAX_LOG: usize = 10_000;
/// Most report → intent rounds one settlement runs (a strategy answering its own reports
/// forever is cut off).
pub const MAX_ROUNDS: usize = 16;

/// One intent as the strategy emitted it, with the instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedIntent {
    pub at: Timestamp,
    pub intent: OrderIntent,
}

/// Paper P&L and activity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaperPnl {
    /// Cash from fills: sells positive, buys negative, CNY.
    pub cash_cny: Decimal,
    pub bought_mwh: Decimal,
    pub sold_mwh: Decimal,
    pub orders: u64,
    pub fills: u64,
    pub cancels: u64,
    pub rejects: u64,
    pub expired: u64,
}

impl PaperPnl {
    /// Adds a fill of `quantity_mw` worth `notional` (Σ MW × price): energy and demand
    /// response are paid per MWh (× 0.25 h), capacity products per MW. The one rule paper and
    /// live figures are summed by (`src/daemon/shadow.rs` sums the ledger's fills with it).
    pub fn add_fill(
        &mut self,
        product: Product,
        side: Side,
        quantity_mw: Decimal,
        notional: Decimal,
    ) {
        let hours = dec!(0.25);
        let value = match product {
            Product::Energy | Product::DemandResponse => notional * hours,
            _ => notional,
        };
        let mwh = quantity_mw * hours;
        match side {
            Side::Buy => {
                self.cash_cny -= value;
                self.bought_mwh += mwh;
            }
            Side::Sell => {
                self.cash_cny += value;
                self.sold_mwh += mwh;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Quote {
    bid: Option<PriceLevel>,
    ask: Option<PriceLevel>,
    last: Option<Decimal>,
}

/// A report and the order's status after it.
pub type PaperReport = (ExecReport, OrderStatus);

#[derive(Debug, Clone, Default)]
pub struct PaperVenue {
    orders: BTreeMap<ClientOrderId, Order>,
    quotes: BTreeMap<(DeliveryInterval, MarketId), Quote>,
    log: VecDeque<RecordedIntent>,
    logged_total: u64,
    pnl: PaperPnl,
    seq: u64,
    fill_id: u64,
}

impl PaperVenue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn pnl(&self) -> &PaperPnl {
        &self.pnl
    }

    /// The recorded intents still in memory, oldest first.
    pub fn log(&self) -> impl DoubleEndedIterator<Item = &RecordedIntent> {
        self.log.iter()
    }

    /// Every intent ever recorded (the log keeps the last [`MAX_LOG`]).
    pub fn logged_total(&self) -> u64 {
        self.logged_total
    }

    pub fn open_orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.values()
    }

    fn report(&mut self, id: &ClientOrderId, kind: ExecKind, at: Timestamp) -> ExecReport {
        self.seq += 1;
        ExecReport {
            seq: self.seq,
            client_order_id: id.clone(),
            venue_order_id: Some(format!("paper-{}", self.seq)),
            kind,
            at,
        }
    }

    /// Applies a report to the order (the live state machine), books fills, drops finished
    /// orders, and returns the report with the status after it.
    fn apply(&mut self, id: &ClientOrderId, kind: ExecKind, at: Timestamp) -> Option<PaperReport> {
        let report = self.report(id, kind, at);
        let order = self.orders.get_mut(id)?;
        if order.apply_report(&report).is_err() {
            return None;
        }
        let status = order.status;
        let product = order.request.product;
        let side = order.request.side;
        match &report.kind {
            ExecKind::Fill {
                quantity_mw,
                price_cny_per_mwh,
                ..
            } => {
                self.pnl.fills += 1;
                self.pnl.add_fill(
                    product,
                    side,
                    *quantity_mw,
                    *quantity_mw * *price_cny_per_mwh,
                );
            }
            ExecKind::Cancelled { .. } => self.pnl.cancels += 1,
            ExecKind::Expired => self.pnl.expired += 1,
            ExecKind::Rejected { .. } => self.pnl.rejects += 1,
            _ => {}
        }
        if status.is_terminal() {
            self.orders.remove(id);
        }
        Some((report, status))
    }

    fn fill(
        &mut self,
        id: &ClientOrderId,
        quantity_mw: Decimal,
        price: Decimal,
        at: Timestamp,
        out: &mut Vec<PaperReport>,
    ) {
        if quantity_mw <= Decimal::ZERO {
            return;
        }
        self.fill_id += 1;
        let kind = ExecKind::Fill {
            fill_id: FillId(self.fill_id),
            quantity_mw,
            price_cny_per_mwh: price,
        };
        out.extend(self.apply(id, kind, at));
    }

    /// What an order gets from a quote now: (quantity, price), if its limit reaches it.
    fn matchable(order: &Order, q: &Quote) -> Option<(Decimal, Decimal)> {
        let limit = order.price_cny_per_mwh;
        let remaining = order.remaining_mw();
        let touch = match order.request.side {
            Side::Buy => q.ask.filter(|a| limit >= a.price_cny_per_mwh),
            Side::Sell => q.bid.filter(|b| limit <= b.price_cny_per_mwh),
        };
        if let Some(level) = touch {
            return Some((remaining.min(level.quantity_mw), level.price_cny_per_mwh));
        }
        let last = q.last?;
        let reaches = match order.request.side {
            Side::Buy => limit >= last,
            Side::Sell => limit <= last,
        };
        reaches.then_some((remaining, last))
    }

    /// Records the intents and answers them.
    pub fn submit(&mut self, now: Timestamp, intents: &[OrderIntent]) -> Vec<PaperReport> {
        let mut out = Vec::new();
        for intent in intents {
            self.logged_total += 1;
            self.log.push_back(RecordedIntent {
                at: now,
                intent: intent.clone(),
            });
            while self.log.len() > MAX_LOG {
                self.log.pop_front();
            }
            match intent {
                OrderIntent::New(request) => self.new_order(now, request, &mut out),
                OrderIntent::Cancel { client_order_id } => {
                    if self.orders.contains_key(client_order_id) {
                        let kind = ExecKind::Cancelled {
                            reason: "paper: cancelled".into(),
                        };
                        out.extend(self.apply(client_order_id, kind, now));
                    }
                }
                OrderIntent::Replace {
                    client_order_id,
                    quantity_mw,
                    price_cny_per_mwh,
                } => {
                    if self.orders.contains_key(client_order_id) {
                        let kind = ExecKind::Replaced {
                            quantity_mw: *quantity_mw,
                            price_cny_per_mwh: *price_cny_per_mwh,
                        };
                        out.extend(self.apply(client_order_id, kind, now));
                    }
                }
            }
        }
        out
    }

    fn new_order(
        &mut self,
        now: Timestamp,
        request: &crate::order::OrderRequest,
        out: &mut Vec<PaperReport>,
    ) {
        self.pnl.orders += 1;
        let id = request.client_order_id.clone();
        let refusal = if self.orders.len() >= MAX_PAPER_ORDERS {
            Some(format!("paper: {MAX_PAPER_ORDERS} open orders"))
        } else if request.interval.start() <= now {
            Some("paper: interval already in delivery".to_owned())
        } else {
            None
        };
        let Ok(order) = Order::new(request.clone(), now) else {
            self.pnl.rejects += 1;
            let report = self.report(
                &id,
                ExecKind::Rejected {
                    reason: "paper: invalid order".into(),
                },
                now,
            );
            out.push((report, OrderStatus::Rejected));
            return;
        };
        self.orders.insert(id.clone(), order);
        if let Some(reason) = refusal {
            out.extend(self.apply(&id, ExecKind::Rejected { reason }, now));
            return;
        }
        out.extend(self.apply(&id, ExecKind::Accepted, now));
        let immediate = matches!(request.time_in_force, TimeInForce::Ioc | TimeInForce::Fok);
        if !immediate {
            return;
        }
        let quote = self
            .quotes
            .get(&(request.interval, request.market_id))
            .copied()
            .unwrap_or_default();
        let matched = self
            .orders
            .get(&id)
            .and_then(|o| Self::matchable(o, &quote));
        if let Some((qty, price)) = matched {
            let whole = qty >= request.quantity_mw;
            if request.time_in_force == TimeInForce::Ioc || whole {
                self.fill(&id, qty, price, now, out);
            }
        }
        if self.orders.contains_key(&id) {
            let kind = ExecKind::Cancelled {
                reason: "paper: immediate-or-cancel remainder".into(),
            };
            out.extend(self.apply(&id, kind, now));
        }
    }

    /// Updates the quote and fills (or, for a finished auction, expires) resting orders of
    /// the data's market and interval, in client order id order.
    pub fn on_market_data(&mut self, now: Timestamp, data: &MarketData) -> Vec<PaperReport> {
        let key = (data.interval(), data.market());
        let mut out = Vec::new();
        let q = self.quotes.entry(key).or_default();
        match data {
            MarketData::Price {
                last_trade_price_cny_per_mwh: Some(last),
                ..
            } => q.last = Some(*last),
            MarketData::BookTop {
                best_bid, best_ask, ..
            } => {
                q.bid = *best_bid;
                q.ask = *best_ask;
            }
            _ => {}
        }
        let quote = *q;
        while self.quotes.len() > MAX_QUOTES {
            self.quotes.pop_first();
        }
        let ids: Vec<ClientOrderId> = self
            .orders
            .values()
            .filter(|o| o.request.market_id == key.1 && o.request.interval == key.0)
            .map(|o| o.id().clone())
            .collect();
        for id in ids {
            let Some(order) = self.orders.get(&id) else {
                continue;
            };
            let (side, limit, remaining) = (
                order.request.side,
                order.price_cny_per_mwh,
                order.remaining_mw(),
            );
            // Final results: fill at the result's price if the limit reaches it, else expire.
            let final_price = match *data {
                MarketData::AuctionResult {
                    clearing_price_cny_per_mwh,
                    ..
                } => Some(clearing_price_cny_per_mwh),
                MarketData::AncillaryResult {
                    capacity_price_cny_per_mw,
                    ..
                } => Some(capacity_price_cny_per_mw),
                MarketData::DrInvitation {
                    price_cny_per_mwh,
                    awarded_mw: Some(_),
                    ..
                } => Some(Some(price_cny_per_mwh)),
                _ => None,
            };
            match final_price {
                Some(price) => {
                    let reaches = price.filter(|p| match side {
                        Side::Buy => limit >= *p,
                        Side::Sell => limit <= *p,
                    });
                    if let Some(p) = reaches {
                        self.fill(&id, remaining, p, now, &mut out);
                    }
                    if self.orders.contains_key(&id) {
                        out.extend(self.apply(&id, ExecKind::Expired, now));
                    }
                }
                None => {
                    let matched = self
                        .orders
                        .get(&id)
                        .and_then(|o| Self::matchable(o, &quote));
                    if let Some((qty, price)) = matched {
                        self.fill(&id, qty, price, now, &mut out);
                    }
                }
            }
        }
        out
    }

    /// Expires every resting order whose interval has started.
    pub fn expire_started(&mut self, now: Timestamp) -> Vec<PaperReport> {
        let ids: Vec<ClientOrderId> = self
            .orders
            .values()
            .filter(|o| o.request.interval.start() <= now)
            .map(|o| o.id().clone())
            .collect();
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.apply(&id, ExecKind::Expired, now));
        }
        out
    }
}

/// Feeds paper reports to the host and settles whatever the strategy answers, until quiet or
/// [`MAX_ROUNDS`]. Returns the first strategy error (its intents were discarded by the host).
pub fn settle_reports(
    host: &mut StrategyHost,
    paper: &mut PaperVenue,
    now: Timestamp,
    reports: Vec<PaperReport>,
) -> Result<(), StrategyError> {
    let mut pending = reports;
    let mut first_error = None;
    for _ in 0..MAX_ROUNDS {
        if pending.is_empty() {
            break;
        }
        let mut intents = Vec::new();
        for (report, status) in pending.drain(..) {
            match host.on_exec_report(now, &report, status) {
                Ok(more) => intents.extend_from_slice(more),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        pending = paper.submit(now, &intents);
    }
    first_error.map_or(Ok(()), Err)
}

/// Settles one callback's intents on paper: records and answers them, feeds the reports back.
pub fn settle_on_paper(
    host: &mut StrategyHost,
    paper: &mut PaperVenue,
    now: Timestamp,
    intents: &[OrderIntent],
) -> Result<(), StrategyError> {
    let reports = paper.submit(now, intents);
    settle_reports(host, paper, now, reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AggregationId, MarketId, StrategyId};
    use crate::market::DeliveryInterval;
    use crate::order::OrderRequest;
    use chrono::{TimeZone, Utc};

    fn t(h: u32, m: u32) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 3, 2, h, m, 0).unwrap()
    }

    fn new(id: &str, side: Side, mw: Decimal, price: Decimal, tif: TimeInForce) -> OrderIntent {
        OrderIntent::New(OrderRequest {
            client_order_id: ClientOrderId::new(id).unwrap(),
            strategy_id: Some(StrategyId(1)),
            aggregation_id: AggregationId(1),
            market_id: MarketId(2),
            product: Product::Energy,
            interval: DeliveryInterval::containing(t(12, 0)),
            side,
            quantity_mw: mw,
            price_cny_per_mwh: price,
            time_in_force: tif,
        })
    }

    fn book(bid: Decimal, ask: Decimal, qty: Decimal) -> MarketData {
        let level = |p| {
            Some(PriceLevel {
                price_cny_per_mwh: p,
                quantity_mw: qty,
            })
        };
        MarketData::BookTop {
            market: MarketId(2),
            interval: DeliveryInterval::containing(t(12, 0)),
            best_bid: level(bid),
            best_ask: level(ask),
            at: t(10, 0),
        }
    }

    #[test]
    fn paper_fills_against_the_book_and_counts_cash() {
        let mut paper = PaperVenue::new();
        paper.on_market_data(t(10, 0), &book(dec!(300), dec!(310), dec!(1.5)));
        // IOC buy of 2 MW at 320 takes the 1.5 MW ask at 310; the rest is cancelled.
        let r = paper.submit(
            t(10, 1),
            &[new("a-1", Side::Buy, dec!(2), dec!(320), TimeInForce::Ioc)],
        );
        let statuses: Vec<OrderStatus> = r.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            statuses,
            vec![
                OrderStatus::Accepted,
                OrderStatus::PartiallyFilled,
                OrderStatus::Cancelled
            ]
        );
        // A resting day sell at 305 fills when the bid reaches it (1 MW at 306).
        paper.submit(
            t(10, 2),
            &[new("a-2", Side::Sell, dec!(1), dec!(305), TimeInForce::Day)],
        );
        assert_eq!(paper.open_orders().count(), 1);
        let r = paper.on_market_data(t(10, 3), &book(dec!(306), dec!(312), dec!(5)));
        assert_eq!(r.last().map(|x| x.1), Some(OrderStatus::Filled));
        // Cash: −1.5 × 0.25 × 310 + 1 × 0.25 × 306 = −116.25 + 76.5 = −39.75.
        assert_eq!(paper.pnl().cash_cny, dec!(-39.75));
        assert_eq!(paper.pnl().bought_mwh, dec!(0.375));
        assert_eq!(paper.pnl().sold_mwh, dec!(0.25));
        assert_eq!(paper.pnl().fills, 2);
        assert_eq!(paper.logged_total(), 2);
        // A resting order expires when its interval starts.
        paper.submit(
            t(10, 4),
            &[new("a-3", Side::Buy, dec!(1), dec!(1), TimeInForce::Day)],
        );
        let r = paper.expire_started(t(12, 0));
        assert_eq!(r.last().map(|x| x.1), Some(OrderStatus::Expired));
        assert_eq!(paper.open_orders().count(), 0);
    }
}
