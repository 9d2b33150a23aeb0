//! The incremental state the checks read: small `Copy` keys and additive buckets.
//!
//! Invariants:
//! - Every bucket equals the sum, over the orders tracked by the engine, of their open
//!   remaining and filled quantities; it changes only through [`OpenOrder`] deltas applied by
//!   the engine, never by rescanning.
//! - Keys are `Copy` and fixed-size (a client order id is copied inline into [`OrderKey`]), so
//!   lookups and inserts into pre-sized maps never allocate.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use vpp_engine::ids::{
    AggregationId, ClientOrderId, MarketId, StrategyId, CLIENT_ORDER_ID_MAX_LEN,
};
use vpp_engine::market::{DeliveryInterval, Product, INTERVAL_MINUTES};
use vpp_engine::order::Side;
use vpp_engine::position::PositionKey;

/// Index of a delivery interval: seconds of its start since the epoch / 900.
pub fn interval_index(interval: DeliveryInterval) -> i64 {
    interval.epoch_seconds().div_euclid(INTERVAL_MINUTES * 60)
}

/// A client order id copied inline: hashable without touching the heap.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderKey {
    len: u8,
    bytes: [u8; CLIENT_ORDER_ID_MAX_LEN],
}

impl OrderKey {
    pub fn of(id: &ClientOrderId) -> Self {
        let src = id.as_str().as_bytes();
        let len = src.len().min(CLIENT_ORDER_ID_MAX_LEN);
        let mut bytes = [0u8; CLIENT_ORDER_ID_MAX_LEN];
        bytes[..len].copy_from_slice(&src[..len]);
        Self {
            len: u8::try_from(len).unwrap_or(u8::MAX),
            bytes,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }

    /// Back to a [`ClientOrderId`] (allocates; used only off the hot path).
    pub fn to_client_order_id(&self) -> Option<ClientOrderId> {
        ClientOrderId::new(self.as_str()).ok()
    }
}

impl std::fmt::Debug for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OrderKey({})", self.as_str())
    }
}

/// Aggregation position key: the engine's [`PositionKey`] plus the product.
pub type AggPosKey = (PositionKey, Product);

/// Strategy position key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StratPosKey {
    pub strategy_id: StrategyId,
    pub market_id: MarketId,
    pub interval: DeliveryInterval,
    pub product: Product,
}

/// Our own resting orders in one continuous book (market, interval, product).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BookKey {
    pub market_id: MarketId,
    pub interval_index: i64,
    pub product: Product,
}

/// Filled and open quantities on one key, by side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetBucket {
    pub filled_sold_mw: Decimal,
    pub filled_bought_mw: Decimal,
    pub open_sell_mw: Decimal,
    pub open_buy_mw: Decimal,
}

impl NetBucket {
    pub fn filled_net_sold_mw(&self) -> Decimal {
        self.filled_sold_mw - self.filled_bought_mw
    }

    /// Net sold if every open sell fills and no open buy does.
    pub fn worst_net_sold_mw(&self) -> Decimal {
        self.filled_net_sold_mw() + self.open_sell_mw
    }

    /// Net bought if every open buy fills and no open sell does.
    pub fn worst_net_bought_mw(&self) -> Decimal {
        -self.filled_net_sold_mw() + self.open_buy_mw
    }

    /// Worst case on `side` after adding `extra_mw` more on that side.
    pub fn worst_after(&self, side: Side, extra_mw: Decimal) -> Decimal {
        match side {
            Side::Sell => self.worst_net_sold_mw() + extra_mw,
            Side::Buy => self.worst_net_bought_mw() + extra_mw,
        }
    }

    pub fn add(&mut self, side: Side, open_mw: Decimal, filled_mw: Decimal) {
        match side {
            Side::Sell => {
                self.open_sell_mw += open_mw;
                self.filled_sold_mw += filled_mw;
            }
            Side::Buy => {
                self.open_buy_mw += open_mw;
                self.filled_bought_mw += filled_mw;
            }
        }
    }

    pub fn is_flat_and_closed(&self) -> bool {
        self.open_sell_mw.is_zero() && self.open_buy_mw.is_zero()
    }
}

/// How a product claims an aggregation's flexibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commitment {
    /// Energy: sells use up-flexibility, buys down-flexibility; they net against each other.
    Energy,
    /// A sold capacity product reserving upward flexibility (reserve, storage lease).
    Up,
    /// A sold capacity product reserving both directions (symmetric regulation).
    UpDown,
    /// No flexibility claim (mileage is paid on regulation capacity already reserved).
    None,
}

impl Commitment {
    /// Buying a capacity product is treated as no claim and no release (conservative).
    pub fn of(product: Product, side: Side) -> Self {
        match (product, side) {
            (Product::Energy | Product::DemandResponse, _) => Commitment::Energy,
            (Product::RegulationCapacity, Side::Sell) => Commitment::UpDown,
            (Product::ReserveCapacity | Product::StorageCapacity, Side::Sell) => Commitment::Up,
            _ => Commitment::None,
        }
    }
}

/// Claims on an aggregation's flexibility in one interval, across all markets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlexBucket {
    pub energy: NetBucket,
    /// Open plus filled capacity sells reserving upward flexibility.
    pub reserved_up_mw: Decimal,
    pub reserved_down_mw: Decimal,
}

/// `max(d, 0)` by sign bit: `Decimal::max` compares through a full scale-aware comparison,
/// which is most of a pre-trade check's cost.
#[inline]
pub fn non_negative(d: Decimal) -> Decimal {
    if d.is_sign_negative() {
        Decimal::ZERO
    } else {
        d
    }
}

impl FlexBucket {
    pub fn up_used_mw(&self) -> Decimal {
        non_negative(self.energy.worst_net_sold_mw()) + self.reserved_up_mw
    }

    pub fn down_used_mw(&self) -> Decimal {
        non_negative(self.energy.worst_net_bought_mw()) + self.reserved_down_mw
    }

    /// `(up, down)` flexibility used after adding an intent of `q` MW.
    pub fn used_after(&self, product: Product, side: Side, q: Decimal) -> (Decimal, Decimal) {
        self.used_before_after(product, side, q).1
    }

    /// `((up, down) before, (up, down) after)` adding an intent of `q` MW, each sum computed
    /// once (the pre-trade check's hot path).
    pub fn used_before_after(
        &self,
        product: Product,
        side: Side,
        q: Decimal,
    ) -> ((Decimal, Decimal), (Decimal, Decimal)) {
        let filled = self.energy.filled_net_sold_mw();
        let up = non_negative(filled + self.energy.open_sell_mw) + self.reserved_up_mw;
        let down = non_negative(self.energy.open_buy_mw - filled) + self.reserved_down_mw;
        let after = match (Commitment::of(product, side), side) {
            (Commitment::Energy, Side::Sell) => (
                non_negative(filled + self.energy.open_sell_mw + q) + self.reserved_up_mw,
                down,
            ),
            (Commitment::Energy, Side::Buy) => (
                up,
                non_negative(self.energy.open_buy_mw - filled + q) + self.reserved_down_mw,
            ),
            (Commitment::Up, _) => (up + q, down),
            (Commitment::UpDown, _) => (up + q, down + q),
            (Commitment::None, _) => (up, down),
        };
        ((up, down), after)
    }

    pub fn add(&mut self, product: Product, side: Side, open_mw: Decimal, filled_mw: Decimal) {
        match Commitment::of(product, side) {
            Commitment::Energy => self.energy.add(side, open_mw, filled_mw),
            Commitment::Up => self.reserved_up_mw += open_mw + filled_mw,
            Commitment::UpDown => {
                self.reserved_up_mw += open_mw + filled_mw;
                self.reserved_down_mw += open_mw + filled_mw;
            }
            Commitment::None => {}
        }
    }
}

/// Available flexibility of an aggregation, as reported by the aggregation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub up_flex_mw: Decimal,
    pub down_flex_mw: Decimal,
}

/// An order the engine counts against limits (approved by it, or created/recovered by the OMS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOrder {
    pub strategy_id: Option<StrategyId>,
    pub aggregation_id: AggregationId,
    pub market_id: MarketId,
    pub product: Product,
    pub interval: DeliveryInterval,
    pub interval_index: i64,
    pub side: Side,
    pub remaining_mw: Decimal,
    pub filled_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
    /// Rests in a continuous book: subject to self-trade prevention.
    pub continuous: bool,
}

impl OpenOrder {
    pub fn position_key(&self) -> AggPosKey {
        (
            PositionKey {
                aggregation_id: self.aggregation_id,
                market_id: self.market_id,
                interval: self.interval,
            },
            self.product,
        )
    }

    pub fn strategy_key(&self) -> Option<StratPosKey> {
        self.strategy_id.map(|strategy_id| StratPosKey {
            strategy_id,
            market_id: self.market_id,
            interval: self.interval,
            product: self.product,
        })
    }

    pub fn book_key(&self) -> BookKey {
        BookKey {
            market_id: self.market_id,
            interval_index: self.interval_index,
            product: self.product,
        }
    }
}

/// Our own resting orders in one continuous book: counts and best prices per side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BookTop {
    pub buys: u32,
    pub best_buy: Decimal,
    pub sells: u32,
    pub best_sell: Decimal,
}

impl BookTop {
    pub fn insert(&mut self, side: Side, price: Decimal) {
        match side {
            Side::Buy => {
                self.best_buy = if self.buys == 0 {
                    price
                } else {
                    self.best_buy.max(price)
                };
                self.buys += 1;
            }
            Side::Sell => {
                self.best_sell = if self.sells == 0 {
                    price
                } else {
                    self.best_sell.min(price)
                };
                self.sells += 1;
            }
        }
    }

    /// Would an order at `price` on `side` cross one of our own resting orders? Returns the
    /// price it would cross.
    pub fn crossed_by(&self, side: Side, price: Decimal) -> Option<Decimal> {
        match side {
            Side::Buy => (self.sells > 0 && price >= self.best_sell).then_some(self.best_sell),
            Side::Sell => (self.buys > 0 && price <= self.best_buy).then_some(self.best_buy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn order_key_round_trips_and_is_distinct() {
        let a = ClientOrderId::new("s1-000042").unwrap();
        let b = ClientOrderId::new("s1-000043").unwrap();
        assert_eq!(OrderKey::of(&a).to_client_order_id(), Some(a.clone()));
        assert_ne!(OrderKey::of(&a), OrderKey::of(&b));
        let long = ClientOrderId::new("x".repeat(CLIENT_ORDER_ID_MAX_LEN)).unwrap();
        assert_eq!(OrderKey::of(&long).as_str(), long.as_str());
    }

    #[test]
    fn flex_nets_energy_but_not_capacity() {
        let mut f = FlexBucket::default();
        f.add(Product::Energy, Side::Sell, dec!(0), dec!(5));
        f.add(Product::Energy, Side::Buy, dec!(0), dec!(2));
        assert_eq!(f.up_used_mw(), dec!(3));
        f.add(Product::RegulationCapacity, Side::Sell, dec!(1), dec!(0));
        assert_eq!((f.up_used_mw(), f.down_used_mw()), (dec!(4), dec!(1)));
        assert_eq!(
            f.used_after(Product::Energy, Side::Buy, dec!(4)),
            (dec!(4), dec!(2))
        );
        assert_eq!(
            f.used_after(Product::RegulationMileage, Side::Sell, dec!(9)),
            (dec!(4), dec!(1))
        );
    }
}
