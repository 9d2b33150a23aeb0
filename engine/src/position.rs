//! Positions per (aggregation, market, delivery interval), built only from fills.
//!
//! Invariant: `bought_mw` and `sold_mw` only grow, and equal the sums of the fills applied.

use crate::ids::{AggregationId, ClientOrderId, FillId, MarketId};
use crate::market::{DeliveryInterval, Product};
use crate::order::Side;
use crate::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PositionKey {
    pub aggregation_id: AggregationId,
    pub market_id: MarketId,
    pub interval: DeliveryInterval,
}

/// A fill as recorded: one execution against one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    pub fill_id: FillId,
    pub client_order_id: ClientOrderId,
    pub key: PositionKey,
    pub product: Product,
    pub side: Side,
    pub quantity_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
    pub report_seq: u64,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub bought_mw: Decimal,
    pub sold_mw: Decimal,
    /// Sum of quantity × price over buys (CNY/MWh × MW).
    pub bought_value: Decimal,
    /// Sum of quantity × price over sells (CNY/MWh × MW).
    pub sold_value: Decimal,
}

impl Position {
    /// Net sold MW: positive means the aggregation must deliver (generate or curtail load).
    pub fn net_sold_mw(&self) -> Decimal {
        self.sold_mw - self.bought_mw
    }

    pub fn apply_fill(&mut self, side: Side, quantity_mw: Decimal, price: Decimal) {
        match side {
            Side::Buy => {
                self.bought_mw += quantity_mw;
                self.bought_value += quantity_mw * price;
            }
            Side::Sell => {
                self.sold_mw += quantity_mw;
                self.sold_value += quantity_mw * price;
            }
        }
    }
}
