//! [`ForecastWindow`]: the forecast (reference) prices a planning strategy keeps, by delivery
//! interval. One type for `battery_arbitrage` and the backtest's `naive_threshold`, which
//! used to keep the same bounded map with the same pruning each in its own way.
//!
//! Invariants:
//! - Bounded: never more than `max` entries; beyond it the earliest intervals go first.
//! - Ordered by interval, so every read and every snapshot is deterministic.

use crate::market::DeliveryInterval;
use crate::Timestamp;
use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// Most slots a trading day has (a 25-hour daylight-saving day).
const MAX_DAY_SLOTS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForecastWindow {
    prices: BTreeMap<DeliveryInterval, Decimal>,
    max: usize,
}

impl ForecastWindow {
    /// An empty window keeping at most `max` forecasts (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            prices: BTreeMap::new(),
            max: max.max(1),
        }
    }

    /// A window restored from `(interval, price)` pairs; `None` when they exceed the bound.
    pub fn from_pairs(
        max: usize,
        pairs: impl IntoIterator<Item = (DeliveryInterval, Decimal)>,
    ) -> Option<Self> {
        let mut w = Self::new(max);
        for (i, p) in pairs {
            w.prices.insert(i, p);
            if w.prices.len() > w.max {
                return None;
            }
        }
        Some(w)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn len(&self) -> usize {
        self.prices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// Records a forecast (the later one wins) and drops the earliest beyond the bound.
    pub fn insert(&mut self, interval: DeliveryInterval, price_cny_per_mwh: Decimal) {
        self.prices.insert(interval, price_cny_per_mwh);
        while self.prices.len() > self.max {
            self.prices.pop_first();
        }
    }

    /// Forgets intervals that start more than a day before `now`.
    pub fn prune_older_than_a_day(&mut self, now: Timestamp) {
        let horizon = DeliveryInterval::containing(now - chrono::Duration::days(1));
        if self
            .prices
            .first_key_value()
            .is_some_and(|(k, _)| *k < horizon)
        {
            self.prices = self.prices.split_off(&horizon);
        }
    }

    pub fn get(&self, interval: DeliveryInterval) -> Option<Decimal> {
        self.prices.get(&interval).copied()
    }

    /// Every forecast, in interval order.
    pub fn iter(&self) -> impl Iterator<Item = (DeliveryInterval, Decimal)> + '_ {
        self.prices.iter().map(|(k, v)| (*k, *v))
    }

    /// Every interval of the local `day` in `tz` (92, 96 or 100 of them), with its forecast
    /// if known.
    pub fn day(
        &self,
        tz: chrono_tz::Tz,
        day: NaiveDate,
    ) -> Vec<(DeliveryInterval, Option<Decimal>)> {
        let Some(start) = day
            .and_hms_opt(0, 0, 0)
            .and_then(|t| tz.from_local_datetime(&t).earliest())
        else {
            return Vec::new();
        };
        let mut interval = DeliveryInterval::containing(start.with_timezone(&Utc));
        let mut out = Vec::with_capacity(MAX_DAY_SLOTS);
        while interval.trading_day(tz) == day && out.len() < MAX_DAY_SLOTS {
            out.push((interval, self.get(interval)));
            interval = interval.next();
        }
        out
    }

    /// The intervals of the local `day` that have a forecast, in time order.
    pub fn known_in_day(
        &self,
        tz: chrono_tz::Tz,
        day: NaiveDate,
    ) -> Vec<(DeliveryInterval, Decimal)> {
        self.day(tz, day)
            .into_iter()
            .filter_map(|(i, p)| p.map(|p| (i, p)))
            .collect()
    }

    /// `n` consecutive intervals from `first`, with their forecasts if known.
    pub fn horizon(
        &self,
        first: DeliveryInterval,
        n: usize,
    ) -> Vec<(DeliveryInterval, Option<Decimal>)> {
        let mut interval = first;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((interval, self.get(interval)));
            interval = interval.next();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rust_decimal_macros::dec;

    fn at(h: u32) -> DeliveryInterval {
        DeliveryInterval::containing(Utc.with_ymd_and_hms(2023, 3, 25, h, 0, 0).unwrap())
    }

    #[test]
    fn bounded_earliest_first_and_pruned_by_age() {
        let mut w = ForecastWindow::new(2);
        w.insert(at(1), dec!(10));
        w.insert(at(2), dec!(20));
        w.insert(at(3), dec!(30));
        assert_eq!(w.len(), 2);
        assert_eq!(w.get(at(1)), None);
        assert_eq!(w.get(at(3)), Some(dec!(30)));
        // A day and a bit later, at(2) is older than a day; at(3) is not.
        w.prune_older_than_a_day(Utc.with_ymd_and_hms(2023, 3, 26, 2, 30, 0).unwrap());
        assert_eq!(w.iter().collect::<Vec<_>>(), vec![(at(3), dec!(30))]);
        assert!(ForecastWindow::from_pairs(1, [(at(1), dec!(1)), (at(2), dec!(2))]).is_none());
    }

    #[test]
    fn a_spring_forward_day_has_92_slots() {
        let mut w = ForecastWindow::new(400);
        let tz = chrono_tz::Europe::Brussels;
        let day = NaiveDate::from_ymd_opt(2023, 3, 26).unwrap();
        let slots = w.day(tz, day);
        assert_eq!(slots.len(), 92);
        assert!(slots.iter().all(|(_, p)| p.is_none()));
        w.insert(slots[5].0, dec!(7));
        assert_eq!(w.known_in_day(tz, day), vec![(slots[5].0, dec!(7))]);
        let autumn = NaiveDate::from_ymd_opt(2023, 10, 29).unwrap();
        assert_eq!(w.day(tz, autumn).len(), 100);
        assert_eq!(w.horizon(at(1), 3).len(), 3);
    }
}
