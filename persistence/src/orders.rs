//! Order projections (orders, fills, positions) and journal reads.
//!
//! The projections are written only by the journal writer, in the same transaction as the
//! events that changed them (see `journal.rs`); this module builds their rows and reads them.

use crate::codec::{
    dec_to_text, from_json, i64_to_id, id_to_i64, interval_to_us, parse_with, text_to_dec,
    ts_to_us, us_to_interval, us_to_ts,
};
use crate::error::{QueryContext, StoreError};
use crate::sql::Value;
use crate::store::{with_pool, Store};
use vpp_engine::ids::{AggregationId, ClientOrderId, MarketId};
use vpp_engine::ledger::OrderEvent;
use vpp_engine::order::{Order, OrderStatus};
use vpp_engine::position::{Fill, Position, PositionKey};
use vpp_engine::Timestamp;

pub(crate) const ORDER_COLS: usize = 9;
pub(crate) const ORDER_HEAD: &str = "orders (client_order_id, strategy_id, aggregation_id, \
     market_id, interval_us, status, record_json, updated_at_us, last_event_seq)";
pub(crate) const ORDER_TAIL: &str = "ON CONFLICT (client_order_id) DO UPDATE SET \
     status = excluded.status, record_json = excluded.record_json, \
     updated_at_us = excluded.updated_at_us, last_event_seq = excluded.last_event_seq";

pub(crate) const FILL_COLS: usize = 12;
pub(crate) const FILL_HEAD: &str = "fills (client_order_id, fill_id, aggregation_id, market_id, \
     interval_us, product, side, quantity_mw, price_cny_per_mwh, report_seq, at_us, event_seq)";

pub(crate) const POSITION_COLS: usize = 8;
pub(crate) const POSITION_HEAD: &str = "positions (aggregation_id, market_id, interval_us, \
     bought_mw, sold_mw, bought_value, sold_value, last_event_seq)";
pub(crate) const POSITION_TAIL: &str =
    "ON CONFLICT (aggregation_id, market_id, interval_us) DO UPDATE SET \
     bought_mw = excluded.bought_mw, sold_mw = excluded.sold_mw, \
     bought_value = excluded.bought_value, sold_value = excluded.sold_value, \
     last_event_seq = excluded.last_event_seq";

pub(crate) fn order_row(order: &Order, seq: i64, out: &mut Vec<Value>) -> Result<(), StoreError> {
    let r = &order.request;
    let strategy = r
        .strategy_id
        .map(|s| id_to_i64("order.strategy_id", s.0))
        .transpose()?;
    out.extend([
        Value::Text(r.client_order_id.as_str().to_owned()),
        Value::OptI64(strategy),
        Value::I64(id_to_i64("order.aggregation_id", r.aggregation_id.0)?),
        Value::I64(id_to_i64("order.market_id", r.market_id.0)?),
        Value::I64(interval_to_us(r.interval)),
        Value::Text(order.status.as_str().to_owned()),
        Value::Text(crate::codec::to_json("order", order)?),
        Value::I64(ts_to_us(order.updated_at)),
        Value::I64(seq),
    ]);
    Ok(())
}

pub(crate) fn fill_row(fill: &Fill, seq: i64, out: &mut Vec<Value>) -> Result<(), StoreError> {
    out.extend([
        Value::Text(fill.client_order_id.as_str().to_owned()),
        Value::I64(id_to_i64("fill.fill_id", fill.fill_id.0)?),
        Value::I64(id_to_i64("fill.aggregation_id", fill.key.aggregation_id.0)?),
        Value::I64(id_to_i64("fill.market_id", fill.key.market_id.0)?),
        Value::I64(interval_to_us(fill.key.interval)),
        Value::Text(fill.product.as_str().to_owned()),
        Value::Text(fill.side.as_str().to_owned()),
        Value::Text(dec_to_text(fill.quantity_mw)),
        Value::Text(dec_to_text(fill.price_cny_per_mwh)),
        Value::I64(id_to_i64("fill.report_seq", fill.report_seq)?),
        Value::I64(ts_to_us(fill.at)),
        Value::I64(seq),
    ]);
    Ok(())
}

pub(crate) fn position_row(
    key: &PositionKey,
    pos: &Position,
    seq: i64,
    out: &mut Vec<Value>,
) -> Result<(), StoreError> {
    out.extend([
        Value::I64(id_to_i64("position.aggregation_id", key.aggregation_id.0)?),
        Value::I64(id_to_i64("position.market_id", key.market_id.0)?),
        Value::I64(interval_to_us(key.interval)),
        Value::Text(dec_to_text(pos.bought_mw)),
        Value::Text(dec_to_text(pos.sold_mw)),
        Value::Text(dec_to_text(pos.bought_value)),
        Value::Text(dec_to_text(pos.sold_value)),
        Value::I64(seq),
    ]);
    Ok(())
}

/// One journal row as stored: the event plus the transition it caused when journaled.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOrderEvent {
    /// Global journal sequence (1, 2, 3, ... across all orders).
    pub seq: u64,
    pub client_order_id: ClientOrderId,
    /// `OrderEvent::name()`, e.g. "created", "fill", "cancel_requested".
    pub event: String,
    /// Status before; `None` for a creation.
    pub from: Option<OrderStatus>,
    /// Status after; `None` when the event was stale or refused.
    pub to: Option<OrderStatus>,
    pub at: Timestamp,
    /// The whole event, as applied on replay.
    pub payload: OrderEvent,
    /// Why the ledger refused the event when it was journaled; `None` if it applied.
    pub error: Option<String>,
}

type EventRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    i64,
    Option<String>,
);

type FillRow = (
    String,
    i64,
    i64,
    i64,
    i64,
    String,
    String,
    String,
    String,
    i64,
    i64,
);

type PositionRow = (i64, i64, i64, String, String, String, String);

const SELECT_FILL: &str = "SELECT client_order_id, fill_id, aggregation_id, market_id, \
     interval_us, product, side, quantity_mw, price_cny_per_mwh, report_seq, at_us FROM fills";

impl Store {
    /// The highest journal sequence stored (0 for an empty journal).
    pub async fn last_journal_seq(&self) -> Result<u64, StoreError> {
        let max: Option<i64> = with_pool!(self, read, |pool| sqlx::query_scalar(
            "SELECT MAX(seq) FROM order_events"
        )
        .fetch_one(pool)
        .await)
        .ctx(|| "read last journal seq".into())?;
        i64_to_id("order_events.seq", max.unwrap_or(0))
    }

    /// The whole journaled life of one order, in sequence order (the audit trail).
    pub async fn order_events(
        &self,
        id: &ClientOrderId,
    ) -> Result<Vec<StoredOrderEvent>, StoreError> {
        let sql = "SELECT seq, client_order_id, event, from_status, to_status, payload_json, \
             at_us, error FROM order_events WHERE client_order_id = $1 ORDER BY seq";
        let rows: Vec<EventRow> = with_pool!(self, read, |pool| sqlx::query_as(sql)
            .bind(id.as_str())
            .fetch_all(pool)
            .await)
        .ctx(|| format!("read journal of order {id}"))?;
        rows.into_iter().map(event_from_row).collect()
    }

    /// The latest state of one order (the projection; equal to the replayed ledger's).
    pub async fn get_order(&self, id: &ClientOrderId) -> Result<Option<Order>, StoreError> {
        let json: Option<String> = with_pool!(self, read, |pool| sqlx::query_scalar(
            "SELECT record_json FROM orders WHERE client_order_id = $1"
        )
        .bind(id.as_str())
        .fetch_optional(pool)
        .await)
        .ctx(|| format!("get order {id}"))?;
        json.map(|j| from_json("orders.record_json", &j))
            .transpose()
    }

    /// Orders by client order id; with `open_only`, only those not in a terminal state.
    pub async fn list_orders(&self, open_only: bool) -> Result<Vec<Order>, StoreError> {
        let sql = if open_only {
            "SELECT record_json FROM orders WHERE status NOT IN \
             ('filled', 'cancelled', 'rejected', 'expired', 'cancelled_unsent', 'lost') \
             ORDER BY client_order_id"
        } else {
            "SELECT record_json FROM orders ORDER BY client_order_id"
        };
        let rows: Vec<String> = with_pool!(self, read, |pool| sqlx::query_scalar(sql)
            .fetch_all(pool)
            .await)
        .ctx(|| "list orders".into())?;
        rows.iter()
            .map(|j| from_json("orders.record_json", j))
            .collect()
    }

    /// Fills in journal order, optionally of one order only.
    pub async fn list_fills(&self, order: Option<&ClientOrderId>) -> Result<Vec<Fill>, StoreError> {
        let rows: Vec<FillRow> = match order {
            Some(id) => {
                let sql = format!("{SELECT_FILL} WHERE client_order_id = $1 ORDER BY event_seq");
                with_pool!(self, read, |pool| sqlx::query_as(&sql)
                    .bind(id.as_str())
                    .fetch_all(pool)
                    .await)
            }
            None => {
                let sql = format!("{SELECT_FILL} ORDER BY event_seq");
                with_pool!(self, read, |pool| sqlx::query_as(&sql)
                    .fetch_all(pool)
                    .await)
            }
        }
        .ctx(|| "list fills".into())?;
        rows.into_iter().map(fill_from_row).collect()
    }

    /// All positions, ordered by key.
    pub async fn list_positions(&self) -> Result<Vec<(PositionKey, Position)>, StoreError> {
        let sql = "SELECT aggregation_id, market_id, interval_us, bought_mw, sold_mw, \
             bought_value, sold_value FROM positions \
             ORDER BY aggregation_id, market_id, interval_us";
        let rows: Vec<PositionRow> =
            with_pool!(self, read, |pool| sqlx::query_as(sql).fetch_all(pool).await)
                .ctx(|| "list positions".into())?;
        rows.into_iter().map(position_from_row).collect()
    }
}

pub(crate) fn coid(field: &str, s: String) -> Result<ClientOrderId, StoreError> {
    ClientOrderId::new(s).map_err(|e| StoreError::Decode {
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

fn opt_status(field: &str, s: Option<String>) -> Result<Option<OrderStatus>, StoreError> {
    s.map(|s| parse_with(field, &s, OrderStatus::parse))
        .transpose()
}

fn event_from_row(r: EventRow) -> Result<StoredOrderEvent, StoreError> {
    let (seq, id, event, from, to, payload, at_us, error) = r;
    Ok(StoredOrderEvent {
        seq: i64_to_id("order_events.seq", seq)?,
        client_order_id: coid("order_events.client_order_id", id)?,
        event,
        from: opt_status("order_events.from_status", from)?,
        to: opt_status("order_events.to_status", to)?,
        at: us_to_ts("order_events.at_us", at_us)?,
        payload: from_json("order_events.payload_json", &payload)?,
        error,
    })
}

fn fill_from_row(r: FillRow) -> Result<Fill, StoreError> {
    let (id, fill_id, agg, market, interval, product, side, qty, price, report_seq, at) = r;
    let side = match side.as_str() {
        "buy" => vpp_engine::order::Side::Buy,
        "sell" => vpp_engine::order::Side::Sell,
        other => {
            return Err(StoreError::Decode {
                field: "fills.side".into(),
                reason: format!("{other:?} is not buy or sell"),
            })
        }
    };
    Ok(Fill {
        fill_id: vpp_engine::ids::FillId(i64_to_id("fills.fill_id", fill_id)?),
        client_order_id: coid("fills.client_order_id", id)?,
        key: PositionKey {
            aggregation_id: AggregationId(i64_to_id("fills.aggregation_id", agg)?),
            market_id: MarketId(i64_to_id("fills.market_id", market)?),
            interval: us_to_interval("fills.interval_us", interval)?,
        },
        product: parse_with(
            "fills.product",
            &product,
            vpp_engine::market::Product::parse,
        )?,
        side,
        quantity_mw: text_to_dec("fills.quantity_mw", &qty)?,
        price_cny_per_mwh: text_to_dec("fills.price_cny_per_mwh", &price)?,
        report_seq: i64_to_id("fills.report_seq", report_seq)?,
        at: us_to_ts("fills.at_us", at)?,
    })
}

fn position_from_row(r: PositionRow) -> Result<(PositionKey, Position), StoreError> {
    let (agg, market, interval, bought, sold, bought_value, sold_value) = r;
    Ok((
        PositionKey {
            aggregation_id: AggregationId(i64_to_id("positions.aggregation_id", agg)?),
            market_id: MarketId(i64_to_id("positions.market_id", market)?),
            interval: us_to_interval("positions.interval_us", interval)?,
        },
        Position {
            bought_mw: text_to_dec("positions.bought_mw", &bought)?,
            sold_mw: text_to_dec("positions.sold_mw", &sold)?,
            bought_value: text_to_dec("positions.bought_value", &bought_value)?,
            sold_value: text_to_dec("positions.sold_value", &sold_value)?,
        },
    ))
}
