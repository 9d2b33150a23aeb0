//! The pre-trade checks, each a pure function over the slice of state it needs.
//!
//! Invariants:
//! - `Ok(())` is returned without touching the heap; the message `String` is formatted only on
//!   the reject path.
//! - Each message names the limit, its value and the value that broke it.

use crate::event::{Reject, RejectCode, Scope};
use crate::kill::KillSwitchState;
use crate::limits::RiskLimits;
use crate::state::{BookTop, Capacity, FlexBucket, NetBucket};
use crate::storage::{StorageBreach, StorageSchedule};
use crate::throttle::{SlidingWindow, TokenBucket};
use rust_decimal::Decimal;
use vpp_engine::ids::{AggregationId, ClientOrderId, StrategyId};
use vpp_engine::market::{DeliveryInterval, Market, MarketKind, Product};
use vpp_engine::order::Side;
use vpp_engine::Timestamp;

type Check = Result<(), Reject>;

/// Hours in one delivery interval, for notional.
pub const INTERVAL_HOURS: Decimal = Decimal::from_parts(25, 0, 0, false, 2);

fn reject(code: RejectCode, scope: Scope, message: String) -> Check {
    Err(Reject::new(code, scope, message))
}

pub fn kill_switch(
    kill: &KillSwitchState,
    aggregation: AggregationId,
    strategy: Option<StrategyId>,
) -> Check {
    match kill.blocking(aggregation, strategy) {
        None => Ok(()),
        Some((scope, e)) => reject(
            RejectCode::KillSwitch,
            scope.into(),
            format!(
                "kill switch engaged by {} at {}: {}",
                e.who,
                e.at.format("%Y-%m-%dT%H:%M:%SZ"),
                e.why
            ),
        ),
    }
}

pub fn quantity(quantity_mw: Decimal, market: Scope) -> Check {
    if !quantity_mw.is_sign_negative() && !quantity_mw.is_zero() {
        return Ok(());
    }
    reject(
        RejectCode::InvalidQuantity,
        market,
        format!("quantity {quantity_mw} MW must be greater than 0"),
    )
}

/// The quantity is at least the market's minimum and has at most its decimal places.
pub fn quantity_step(market: Scope, quantity_mw: Decimal, min_mw: Decimal, decimals: u32) -> Check {
    if quantity_mw < min_mw {
        return reject(
            RejectCode::InvalidQuantity,
            market,
            format!("quantity {quantity_mw} MW is below the market's minimum of {min_mw} MW"),
        );
    }
    if quantity_mw.normalize().scale() > decimals {
        return reject(
            RejectCode::InvalidQuantity,
            market,
            format!(
                "quantity {quantity_mw} MW has more than the market's {decimals} decimal places"
            ),
        );
    }
    Ok(())
}

/// The delivery interval starts within the market's trading horizon from now.
pub fn horizon(
    market: &Market,
    interval: DeliveryInterval,
    now: Timestamp,
    horizon_hours: u32,
) -> Check {
    let latest = now + chrono::Duration::hours(i64::from(horizon_hours));
    if interval.start() <= latest {
        return Ok(());
    }
    reject(
        RejectCode::BeyondHorizon,
        Scope::Market(market.id),
        format!(
            "interval {interval} starts after {latest}: market {} trades at most {horizon_hours} h ahead",
            market.name
        ),
    )
}

pub fn duplicate(known: bool, id: &ClientOrderId) -> Check {
    if !known {
        return Ok(());
    }
    reject(
        RejectCode::DuplicateClientOrderId,
        Scope::Global,
        format!("client order id {id} was already used; ids are never reused"),
    )
}

/// No order for an interval already in delivery; no day-ahead bid at or after gate closure.
pub fn gate(market: &Market, interval: DeliveryInterval, now: Timestamp) -> Check {
    let scope = Scope::Market(market.id);
    if now >= interval.start() {
        return reject(
            RejectCode::IntervalInDelivery,
            scope,
            format!("interval {interval} started at or before now ({now}): already in delivery"),
        );
    }
    if market.kind == MarketKind::DayAhead {
        let closure = market.gate_closure_for(interval);
        if now >= closure {
            return reject(
                RejectCode::GateClosed,
                scope,
                format!(
                    "day-ahead gate for {interval} closed at {closure} ({} min before the trading day); now {now}",
                    market.gate_closure_minutes_before
                ),
            );
        }
    }
    Ok(())
}

pub fn price_limits(market: &Market, price: Decimal) -> Check {
    market.check_price(price).map_err(|e| {
        Reject::new(
            RejectCode::PriceLimit,
            Scope::Market(market.id),
            format!("market {}: {}", market.name, e.reason),
        )
    })
}

/// Collar half-width: the wider of the absolute and the fractional band; `None` when neither
/// is configured.
pub fn collar_band(
    reference: Decimal,
    band_cny_per_mwh: Option<Decimal>,
    band_fraction: Option<Decimal>,
) -> Option<Decimal> {
    let fractional = band_fraction.map(|f| f * reference.abs());
    match (band_cny_per_mwh, fractional) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(Decimal::ZERO).max(b.unwrap_or(Decimal::ZERO))),
    }
}

pub fn collar(market: Scope, price: Decimal, reference: Decimal, band: Decimal) -> Check {
    if (price - reference).abs() <= band {
        return Ok(());
    }
    reject(
        RejectCode::PriceCollar,
        market,
        format!(
            "price {price} CNY/MWh is outside the collar {reference} ± {band} CNY/MWh ({}..={})",
            reference - band,
            reference + band
        ),
    )
}

pub fn max_order(limits: &RiskLimits, scope: Scope, quantity_mw: Decimal) -> Check {
    if quantity_mw <= limits.max_order_mw {
        return Ok(());
    }
    reject(
        RejectCode::MaxOrderQuantity,
        scope,
        format!(
            "quantity {quantity_mw} MW exceeds max_order_mw {}",
            limits.max_order_mw
        ),
    )
}

pub fn open_orders(limits: &RiskLimits, scope: Scope, open: u32) -> Check {
    if open < limits.max_open_orders {
        return Ok(());
    }
    reject(
        RejectCode::MaxOpenOrders,
        scope,
        format!(
            "{open} orders already open; max_open_orders is {}",
            limits.max_open_orders
        ),
    )
}

pub fn notional_of(quantity_mw: Decimal, price: Decimal) -> Decimal {
    quantity_mw * price.abs() * INTERVAL_HOURS
}

pub fn daily_notional(limits: &RiskLimits, scope: Scope, used: Decimal, add: Decimal) -> Check {
    if used + add <= limits.daily_notional_cny {
        return Ok(());
    }
    reject(
        RejectCode::DailyNotional,
        scope,
        format!(
            "notional {add} CNY on top of {used} CNY used today exceeds daily_notional_cny {}",
            limits.daily_notional_cny
        ),
    )
}

/// Worst-case net position (filled plus open on the intent's side) stays within the limit.
pub fn net_position(
    limits: &RiskLimits,
    scope: Scope,
    bucket: &NetBucket,
    side: Side,
    quantity_mw: Decimal,
    interval: DeliveryInterval,
    product: Product,
) -> Check {
    let after = bucket.worst_after(side, quantity_mw);
    if after <= limits.max_net_position_mw {
        return Ok(());
    }
    reject(
        RejectCode::MaxNetPosition,
        scope,
        format!(
            "worst-case net {} of {after} MW in {interval} {} would exceed max_net_position_mw {}",
            if side == Side::Sell { "sold" } else { "bought" },
            product.as_str(),
            limits.max_net_position_mw
        ),
    )
}

/// Sells (open plus filled, net) within up-flexibility; buys within down-flexibility; summed
/// across all markets of the interval, since they draw on the same assets.
pub fn capacity_headroom(
    aggregation: AggregationId,
    capacity: Option<Capacity>,
    flex: &FlexBucket,
    product: Product,
    side: Side,
    quantity_mw: Decimal,
    interval: DeliveryInterval,
) -> Check {
    let scope = Scope::Aggregation(aggregation);
    let Some(cap) = capacity else {
        return reject(
            RejectCode::CapacityHeadroom,
            scope,
            "no capacity has been reported for this aggregation: headroom is 0".to_owned(),
        );
    };
    let ((up_used, down_used), (up, down)) = flex.used_before_after(product, side, quantity_mw);
    // Only a direction this intent grows can be breached by it.
    if up > up_used && up > cap.up_flex_mw {
        return reject(
            RejectCode::CapacityHeadroom,
            scope,
            format!(
                "{interval}: up-flexibility used would be {up} MW, above the available {} MW (headroom {} MW)",
                cap.up_flex_mw,
                (cap.up_flex_mw - up_used).max(Decimal::ZERO)
            ),
        );
    }
    if down > down_used && down > cap.down_flex_mw {
        return reject(
            RejectCode::CapacityHeadroom,
            scope,
            format!(
                "{interval}: down-flexibility used would be {down} MW, above the available {} MW (headroom {} MW)",
                cap.down_flex_mw,
                (cap.down_flex_mw - down_used).max(Decimal::ZERO)
            ),
        );
    }
    Ok(())
}

pub fn storage_energy(
    aggregation: AggregationId,
    schedule: &StorageSchedule,
    interval_index: i64,
    side: Side,
    quantity_mw: Decimal,
    interval: DeliveryInterval,
) -> Check {
    let (sell, buy) = match side {
        Side::Sell => (quantity_mw, Decimal::ZERO),
        Side::Buy => (Decimal::ZERO, quantity_mw),
    };
    let Err(breach) = schedule.check(interval_index, sell, buy) else {
        return Ok(());
    };
    let b = &schedule.budget;
    let message = match breach {
        StorageBreach::BeyondHorizon { slot, horizon } => format!(
            "{interval} is {slot} intervals ahead, outside the storage planning horizon of {horizon}"
        ),
        StorageBreach::BelowMin { lowest_kwh } => format!(
            "selling {quantity_mw} MW in {interval} would take stored energy to {lowest_kwh} kWh, below soc_min_kwh {} (now {} kWh)",
            b.soc_min_kwh, b.energy_kwh
        ),
        StorageBreach::AboveMax { highest_kwh } => format!(
            "buying {quantity_mw} MW in {interval} would take stored energy to {highest_kwh} kWh, above soc_max_kwh {} (now {} kWh)",
            b.soc_max_kwh, b.energy_kwh
        ),
    };
    reject(
        RejectCode::StorageEnergy,
        Scope::Aggregation(aggregation),
        message,
    )
}

pub fn self_trade(market: Scope, book: Option<&BookTop>, side: Side, price: Decimal) -> Check {
    let Some(crossed) = book.and_then(|b| b.crossed_by(side, price)) else {
        return Ok(());
    };
    reject(
        RejectCode::SelfTrade,
        market,
        format!(
            "{} at {price} CNY/MWh would cross our own resting {} at {crossed}",
            side.as_str(),
            side.opposite().as_str()
        ),
    )
}

pub fn strategy_throttle(
    strategy: StrategyId,
    bucket: &TokenBucket,
    limits: &RiskLimits,
    now: Timestamp,
) -> Check {
    throttle_open(strategy, limits)?;
    if bucket.allows(now) {
        return Ok(());
    }
    reject(
        RejectCode::StrategyThrottle,
        Scope::Strategy(strategy),
        format!(
            "order rate above {} per second (burst {}): no token left",
            limits.orders_per_second, limits.order_burst
        ),
    )
}

/// A zero `orders_per_second` or `order_burst` allows no order at all.
pub fn throttle_open(strategy: StrategyId, limits: &RiskLimits) -> Check {
    if limits.throttle_allows_any() {
        return Ok(());
    }
    reject(
        RejectCode::StrategyThrottle,
        Scope::Strategy(strategy),
        format!(
            "orders_per_second {} / order_burst {}: a zero limit allows no order",
            limits.orders_per_second, limits.order_burst
        ),
    )
}

pub fn venue_throttle(venue: u32, name: &str, window: &SlidingWindow, now: Timestamp) -> Check {
    if window.allows(now) {
        return Ok(());
    }
    reject(
        RejectCode::VenueThrottle,
        Scope::Venue(venue),
        format!(
            "venue {name}: {} orders in the last {} ms, its limit is {} per {} ms",
            window.in_window(now),
            window.window_ms(),
            window.max_orders(),
            window.window_ms()
        ),
    )
}

pub fn tracking(what: &str, len: usize, max: usize) -> Check {
    if len < max {
        return Ok(());
    }
    reject(
        RejectCode::TrackingLimit,
        Scope::Global,
        format!("{what} table is full ({len} of {max}); raise risk.sizing or wait for intervals to roll off"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn collar_band_takes_the_wider_band() {
        assert_eq!(collar_band(dec!(400), None, None), None);
        assert_eq!(collar_band(dec!(400), Some(dec!(50)), None), Some(dec!(50)));
        assert_eq!(
            collar_band(dec!(-400), Some(dec!(50)), Some(dec!(0.2))),
            Some(dec!(80.0))
        );
        let m = Scope::Global;
        assert!(collar(m, dec!(480), dec!(400), dec!(80)).is_ok());
        assert!(collar(m, dec!(320), dec!(400), dec!(80)).is_ok());
        let err = collar(m, dec!(480.01), dec!(400), dec!(80)).unwrap_err();
        assert_eq!(err.code, RejectCode::PriceCollar);
        assert!(err.message.contains("320..=480"), "{}", err.message);
        assert!(collar(m, dec!(319.99), dec!(400), dec!(80)).is_err());
    }

    #[test]
    fn quantity_steps_and_horizon() {
        let m = Scope::Global;
        assert!(quantity_step(m, dec!(0.001), dec!(0.001), 3).is_ok());
        assert!(quantity_step(m, dec!(1.500), dec!(0.001), 3).is_ok());
        let e = quantity_step(m, Decimal::new(1, 28), dec!(0.001), 3).unwrap_err();
        assert!(
            e.message.contains("below the market's minimum"),
            "{}",
            e.message
        );
        let e = quantity_step(m, dec!(1.0001), dec!(0.001), 3).unwrap_err();
        assert_eq!(e.code, RejectCode::InvalidQuantity);
        let market = Market {
            id: vpp_engine::ids::MarketId(2),
            name: "rt".into(),
            kind: MarketKind::RealTime,
            timezone: chrono_tz::Asia::Shanghai,
            price_cap_cny_per_mwh: dec!(1500),
            price_floor_cny_per_mwh: dec!(0),
            negative_prices_allowed: false,
            gate_closure_minutes_before: 0,
        };
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let soon = DeliveryInterval::starting_at("2030-01-02T23:45:00Z".parse().unwrap()).unwrap();
        assert!(horizon(&market, soon, now, 48).is_ok());
        let far = DeliveryInterval::starting_at("9999-12-31T23:45:00Z".parse().unwrap()).unwrap();
        assert_eq!(
            horizon(&market, far, now, 48).unwrap_err().code,
            RejectCode::BeyondHorizon
        );
    }

    #[test]
    fn a_zero_rate_allows_no_order() {
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let limits = RiskLimits {
            orders_per_second: 0,
            ..RiskLimits::default()
        };
        // The bucket starts full (burst 50), yet a zero rate means none allowed.
        let bucket = TokenBucket::new(limits.orders_per_second, limits.order_burst);
        let e = strategy_throttle(StrategyId(1), &bucket, &limits, now).unwrap_err();
        assert_eq!(e.code, RejectCode::StrategyThrottle);
        let open = RiskLimits::default();
        let bucket = TokenBucket::new(open.orders_per_second, open.order_burst);
        assert!(strategy_throttle(StrategyId(1), &bucket, &open, now).is_ok());
        let none = RiskLimits {
            max_order_mw: Decimal::ZERO,
            ..RiskLimits::default()
        };
        assert!(max_order(&none, Scope::Global, dec!(0.001)).is_err());
    }

    #[test]
    fn notional_is_energy_value() {
        assert_eq!(notional_of(dec!(4), dec!(-300)), dec!(300));
    }
}
