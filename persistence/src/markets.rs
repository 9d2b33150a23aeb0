//! Markets: upsert, get and list of [`vpp_engine::market::Market`] rows.

use crate::codec::{
    dec_to_text, i64_to_id, i64_to_u32, id_to_i64, parse_with, text_to_dec, u32_to_i64,
};
use crate::error::{QueryContext, StoreError};
use crate::store::{with_pool, Store};
use std::str::FromStr;
use vpp_engine::ids::MarketId;
use vpp_engine::market::{Market, MarketKind};

type MarketRow = (i64, String, String, String, String, String, bool, i64);

const SELECT_MARKET: &str = "SELECT id, name, kind, timezone, price_cap_cny_per_mwh, \
     price_floor_cny_per_mwh, negative_prices_allowed, gate_closure_minutes_before FROM markets";

impl Store {
    /// Inserts the market or replaces the stored one with the same id.
    pub async fn upsert_market(&self, m: &Market) -> Result<(), StoreError> {
        let id = id_to_i64("market.id", m.id.0)?;
        let sql = "INSERT INTO markets (id, name, kind, timezone, price_cap_cny_per_mwh, \
             price_floor_cny_per_mwh, negative_prices_allowed, gate_closure_minutes_before) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, kind = excluded.kind, \
             timezone = excluded.timezone, price_cap_cny_per_mwh = excluded.price_cap_cny_per_mwh, \
             price_floor_cny_per_mwh = excluded.price_floor_cny_per_mwh, \
             negative_prices_allowed = excluded.negative_prices_allowed, \
             gate_closure_minutes_before = excluded.gate_closure_minutes_before";
        with_pool!(self, write, |pool| sqlx::query(sql)
            .bind(id)
            .bind(&m.name)
            .bind(m.kind.as_str())
            .bind(m.timezone.name())
            .bind(dec_to_text(m.price_cap_cny_per_mwh))
            .bind(dec_to_text(m.price_floor_cny_per_mwh))
            .bind(m.negative_prices_allowed)
            .bind(u32_to_i64(m.gate_closure_minutes_before))
            .execute(pool)
            .await
            .map(|_| ()))
        .ctx(|| format!("upsert market {}", m.id))
    }

    pub async fn get_market(&self, id: MarketId) -> Result<Option<Market>, StoreError> {
        let key = id_to_i64("market.id", id.0)?;
        let sql = format!("{SELECT_MARKET} WHERE id = $1");
        let row: Option<MarketRow> = with_pool!(self, read, |pool| sqlx::query_as(&sql)
            .bind(key)
            .fetch_optional(pool)
            .await)
        .ctx(|| format!("get market {id}"))?;
        row.map(market_from_row).transpose()
    }

    /// All markets, by id.
    pub async fn list_markets(&self) -> Result<Vec<Market>, StoreError> {
        let sql = format!("{SELECT_MARKET} ORDER BY id");
        let rows: Vec<MarketRow> = with_pool!(self, read, |pool| sqlx::query_as(&sql)
            .fetch_all(pool)
            .await)
        .ctx(|| "list markets".into())?;
        rows.into_iter().map(market_from_row).collect()
    }
}

fn market_from_row(r: MarketRow) -> Result<Market, StoreError> {
    let (id, name, kind, tz, cap, floor, negative_prices_allowed, gate) = r;
    Ok(Market {
        id: MarketId(i64_to_id("markets.id", id)?),
        name,
        kind: parse_with("markets.kind", &kind, MarketKind::parse)?,
        timezone: parse_with("markets.timezone", &tz, chrono_tz::Tz::from_str)?,
        price_cap_cny_per_mwh: text_to_dec("markets.price_cap_cny_per_mwh", &cap)?,
        price_floor_cny_per_mwh: text_to_dec("markets.price_floor_cny_per_mwh", &floor)?,
        negative_prices_allowed,
        gate_closure_minutes_before: i64_to_u32("markets.gate_closure_minutes_before", gate)?,
    })
}
