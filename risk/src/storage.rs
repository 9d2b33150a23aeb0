//! Storage energy feasibility: a per-aggregation energy budget checked across consecutive
//! 15-minute intervals, so a battery never sells energy it will not have (or buys energy it
//! cannot store).
//!
//! Model (deliberately simple and conservative): all net energy an aggregation with a budget
//! sells or buys moves through its storage. Per interval slot `t` (slot 0 is the current
//! interval) three schedules are kept, in MW net sold:
//! - `net_point_mw[t]` = filled net sold + open sells: the lowest point *within* slot `t`,
//!   where the slot's own open buys do not count (its sells may be delivered first);
//! - `net_high_mw[t]` = filled net sold − open buys: the highest point within slot `t`, where
//!   the slot's own open sells do not count;
//! - `net_carry_mw[t]` = filled net sold + open sells − open buys: what slot `t` carries into
//!   the next slots when everything open fills.
//!
//! So a sell in slot `t` may count the open buys of slots before `t` (a day-ahead plan that
//! buys at night and sells the energy later in the same auction passes), never those of slot
//! `t` or later; likewise a buy may count the open sells of earlier slots (sell in the morning
//! peak, recharge at noon). With `start[t] = energy + Σ_{s<t} Δ(carry[s])`:
//! `low[t] = start[t] + Δ(point[t]) >= soc_min_kwh` and
//! `high[t] = start[t] + Δ(high[t]) <= soc_max_kwh`.
//! The price of counting earlier open orders: if such an order is later cancelled or not
//! awarded while the later one is, the plan may miss energy or room; a cancel is a fact risk
//! cannot refuse, and the deviation monitor catches the shortfall.
//!
//! Discharging `n` MW for 0.25 h removes `n × 250` kWh; charging stores `|n| × 250 × η` kWh
//! (the round-trip efficiency is charged on the way in). Capacity products (regulation,
//! reserve) are energy-neutral in this model.
//!
//! Invariants: `suffix_low_kwh[t] = min over s >= t of low[s]`, `suffix_high_kwh[t] = max over
//! s >= t of high[s]`, `start_kwh[t]` as above. All are rebuilt (O(horizon)) on every change,
//! so a check is O(1) and allocation-free. Vectors are sized once to the horizon.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// kWh moved by 1 MW held for one 15-minute interval.
pub const KWH_PER_MW_INTERVAL: Decimal = Decimal::from_parts(250, 0, 0, false, 0);

/// An aggregation's storage state and limits, as reported by the aggregation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageBudget {
    pub energy_kwh: Decimal,
    pub soc_min_kwh: Decimal,
    pub soc_max_kwh: Decimal,
    /// Round-trip efficiency in (0, 1].
    pub round_trip_efficiency: Decimal,
}

/// Why a storage change would be infeasible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageBreach {
    /// Slot beyond the planning horizon.
    BeyondHorizon { slot: i64, horizon: usize },
    /// Lowest energy on or after the slot would fall below the minimum.
    BelowMin { lowest_kwh: Decimal },
    /// Highest energy on or after the slot would rise above the maximum.
    AboveMax { highest_kwh: Decimal },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSchedule {
    pub budget: StorageBudget,
    /// Interval index (epoch seconds / 900) of slot 0.
    base_index: i64,
    net_point_mw: Vec<Decimal>,
    net_carry_mw: Vec<Decimal>,
    net_high_mw: Vec<Decimal>,
    start_kwh: Vec<Decimal>,
    suffix_low_kwh: Vec<Decimal>,
    suffix_high_kwh: Vec<Decimal>,
}

/// `d > 0` by sign bit and zero test (a full `Decimal` comparison costs far more).
#[inline]
fn positive(d: Decimal) -> bool {
    !d.is_sign_negative() && !d.is_zero()
}

fn delta_kwh(net_sold_mw: Decimal, efficiency: Decimal) -> Decimal {
    let kwh = net_sold_mw * KWH_PER_MW_INTERVAL;
    if positive(net_sold_mw) {
        -kwh
    } else {
        -kwh * efficiency
    }
}

impl StorageSchedule {
    pub fn new(budget: StorageBudget, base_index: i64, horizon: usize) -> Self {
        let horizon = horizon.max(1);
        let mut s = Self {
            budget,
            base_index,
            net_point_mw: vec![Decimal::ZERO; horizon],
            net_carry_mw: vec![Decimal::ZERO; horizon],
            net_high_mw: vec![Decimal::ZERO; horizon],
            start_kwh: vec![Decimal::ZERO; horizon],
            suffix_low_kwh: vec![Decimal::ZERO; horizon],
            suffix_high_kwh: vec![Decimal::ZERO; horizon],
        };
        s.rebuild();
        s
    }

    pub fn horizon(&self) -> usize {
        self.net_point_mw.len()
    }

    pub fn base_index(&self) -> i64 {
        self.base_index
    }

    fn slot(&self, interval_index: i64) -> Option<usize> {
        let slot = usize::try_from(interval_index.checked_sub(self.base_index)?).ok()?;
        (slot < self.horizon()).then_some(slot)
    }

    /// Replaces the reported energy and limits, keeping the schedule.
    pub fn set_budget(&mut self, budget: StorageBudget) {
        self.budget = budget;
        self.rebuild();
    }

    /// Moves slot 0 to `base_index`, dropping the intervals now past (their energy is in the
    /// next reported `energy_kwh`).
    pub fn advance_to(&mut self, base_index: i64) {
        let shift = base_index.saturating_sub(self.base_index);
        if shift <= 0 {
            return;
        }
        let n = self.horizon();
        let shift = usize::try_from(shift).unwrap_or(usize::MAX).min(n);
        for v in [
            &mut self.net_point_mw,
            &mut self.net_carry_mw,
            &mut self.net_high_mw,
        ] {
            v.rotate_left(shift);
            v[n - shift..].fill(Decimal::ZERO);
        }
        self.base_index = base_index;
        self.rebuild();
    }

    /// Adds an order's change at an interval, as net sold MW: `filled_mw` (sells positive,
    /// buys negative), `open_sell_mw` and `open_buy_mw` (both as quantities, negative to
    /// remove). Changes outside the horizon are ignored (intents there are refused by
    /// [`Self::check`]).
    pub fn add(
        &mut self,
        interval_index: i64,
        filled_mw: Decimal,
        open_sell_mw: Decimal,
        open_buy_mw: Decimal,
    ) {
        let Some(slot) = self.slot(interval_index) else {
            return;
        };
        self.net_point_mw[slot] += filled_mw + open_sell_mw;
        self.net_carry_mw[slot] += filled_mw + open_sell_mw - open_buy_mw;
        self.net_high_mw[slot] += filled_mw - open_buy_mw;
        self.rebuild();
    }

    fn rebuild(&mut self) {
        let eff = self.budget.round_trip_efficiency;
        let mut start = self.budget.energy_kwh;
        for t in 0..self.horizon() {
            self.start_kwh[t] = start;
            self.suffix_low_kwh[t] = start + delta_kwh(self.net_point_mw[t], eff);
            self.suffix_high_kwh[t] = start + delta_kwh(self.net_high_mw[t], eff);
            start += delta_kwh(self.net_carry_mw[t], eff);
        }
        for t in (0..self.horizon().saturating_sub(1)).rev() {
            self.suffix_low_kwh[t] = self.suffix_low_kwh[t].min(self.suffix_low_kwh[t + 1]);
            self.suffix_high_kwh[t] = self.suffix_high_kwh[t].max(self.suffix_high_kwh[t + 1]);
        }
    }

    /// Would selling (`sell_mw > 0`) or buying (`buy_mw > 0`) more energy at the interval keep
    /// the storage within its limits on every interval from then on? O(1).
    pub fn check(
        &self,
        interval_index: i64,
        sell_mw: Decimal,
        buy_mw: Decimal,
    ) -> Result<(), StorageBreach> {
        let Some(slot) = self.slot(interval_index) else {
            return Err(StorageBreach::BeyondHorizon {
                slot: interval_index.saturating_sub(self.base_index),
                horizon: self.horizon(),
            });
        };
        let eff = self.budget.round_trip_efficiency;
        if positive(sell_mw) {
            // Within the slot: its own open buys do not count.
            let point = self.net_point_mw[slot];
            let mut lowest_kwh = self.start_kwh[slot] + delta_kwh(point + sell_mw, eff);
            // Later slots: the sell lowers what this slot carries forward.
            if let Some(later) = self.suffix_low_kwh.get(slot + 1) {
                let carry = self.net_carry_mw[slot];
                let shift = delta_kwh(carry + sell_mw, eff) - delta_kwh(carry, eff);
                lowest_kwh = lowest_kwh.min(*later + shift);
            }
            if lowest_kwh < self.budget.soc_min_kwh {
                return Err(StorageBreach::BelowMin { lowest_kwh });
            }
        }
        if positive(buy_mw) {
            // Within the slot: its own open sells do not count.
            let point = self.net_high_mw[slot];
            let mut highest_kwh = self.start_kwh[slot] + delta_kwh(point - buy_mw, eff);
            // Later slots: the buy raises what this slot carries forward.
            if let Some(later) = self.suffix_high_kwh.get(slot + 1) {
                let carry = self.net_carry_mw[slot];
                let shift = delta_kwh(carry - buy_mw, eff) - delta_kwh(carry, eff);
                highest_kwh = highest_kwh.max(*later + shift);
            }
            if highest_kwh > self.budget.soc_max_kwh {
                return Err(StorageBreach::AboveMax { highest_kwh });
            }
        }
        Ok(())
    }

    /// Lowest and highest energy from a slot on (within-slot worst cases), for the exposure
    /// view.
    pub fn envelope(&self, interval_index: i64) -> Option<(Decimal, Decimal)> {
        let slot = self.slot(interval_index)?;
        Some((self.suffix_low_kwh[slot], self.suffix_high_kwh[slot]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn battery() -> StorageSchedule {
        // 1 MWh battery at 600 kWh, limits 100..=900, 80 % round trip, 8 slots.
        StorageSchedule::new(
            StorageBudget {
                energy_kwh: dec!(600),
                soc_min_kwh: dec!(100),
                soc_max_kwh: dec!(900),
                round_trip_efficiency: dec!(0.8),
            },
            1000,
            8,
        )
    }

    #[test]
    fn sells_are_bounded_by_energy_across_consecutive_intervals() {
        let mut s = battery();
        // 500 kWh above the minimum = 2 MW for one interval.
        assert!(s.check(1002, dec!(2), dec!(0)).is_ok());
        assert_eq!(
            s.check(1002, dec!(2.001), dec!(0)),
            Err(StorageBreach::BelowMin {
                lowest_kwh: dec!(99.750)
            })
        );
        s.add(1001, dec!(1), dec!(0), dec!(0)); // 250 kWh sold (filled) at slot 1
                                                // An earlier sale limits a later one, and a later one is limited by an earlier.
        assert!(s.check(1005, dec!(1), dec!(0)).is_ok());
        assert!(s.check(1005, dec!(1.001), dec!(0)).is_err());
        assert!(s.check(1000, dec!(1.001), dec!(0)).is_err());
    }

    #[test]
    fn charging_pays_efficiency_and_respects_max() {
        let mut s = battery();
        // 300 kWh of room; charging stores 80 %: 1.5 MW × 250 × 0.8 = 300 kWh.
        assert!(s.check(1000, dec!(0), dec!(1.5)).is_ok());
        assert!(s.check(1000, dec!(0), dec!(1.501)).is_err());
        // A filled buy at slot 0 (charging 1 MW = 200 kWh stored) makes room to sell later.
        s.add(1000, dec!(-1), dec!(0), dec!(0));
        assert!(s.check(1003, dec!(2.8), dec!(0)).is_ok());
        assert!(s.check(1003, dec!(2.801), dec!(0)).is_err());
    }

    #[test]
    fn horizon_and_advance() {
        let mut s = battery();
        assert!(matches!(
            s.check(1008, dec!(0.1), dec!(0)),
            Err(StorageBreach::BeyondHorizon { .. })
        ));
        s.add(1000, dec!(2), dec!(0), dec!(0));
        assert!(s.check(1004, dec!(0.001), dec!(0)).is_err());
        s.advance_to(1001); // slot 0 delivered; its energy now in the reported budget
        assert!(s.check(1004, dec!(2), dec!(0)).is_ok());
        assert!(s.check(1008, dec!(0.1), dec!(0)).is_ok());
        assert!(s.check(1000, dec!(0.1), dec!(0)).is_err());
    }

    #[test]
    fn an_open_buy_in_an_earlier_interval_funds_a_later_sell() {
        // The day-ahead plan: buy 2 MW at night (slot 1), sell it later (slot 4).
        // 600 kWh now, min 100: 500 kWh sellable alone = 2 MW. The open buy stores
        // 2 × 250 × 0.8 = 400 kWh more if it fills: 900 kWh = 3.6 MW, just inside.
        let mut s = battery();
        s.add(1001, dec!(0), dec!(0), dec!(2));
        assert!(s.check(1004, dec!(3.6), dec!(0)).is_ok());
        assert_eq!(
            s.check(1004, dec!(3.601), dec!(0)),
            Err(StorageBreach::BelowMin {
                lowest_kwh: dec!(99.750)
            })
        );
        // Committing the sell lowers the slots after it, never the buy's own slot: the
        // battery still never sells energy it will not have had.
        s.add(1004, dec!(0), dec!(3.6), dec!(0));
        assert!(s.check(1005, dec!(0.001), dec!(0)).is_err());
        assert!(s.check(1002, dec!(0.001), dec!(0)).is_err());
    }

    #[test]
    fn a_buy_in_the_same_or_a_later_interval_does_not_fund_a_sell() {
        let mut s = battery();
        // Same slot: the sell may be delivered before the buy.
        s.add(1003, dec!(0), dec!(0), dec!(2));
        assert!(s.check(1003, dec!(2), dec!(0)).is_ok());
        assert!(s.check(1003, dec!(2.001), dec!(0)).is_err());
        // Later slot: no help either.
        s.add(1006, dec!(0), dec!(0), dec!(2));
        assert!(s.check(1002, dec!(2.001), dec!(0)).is_err());
        // The buy's own slot is where the sell must stand: a sell just after it is funded.
        assert!(s.check(1004, dec!(3.6), dec!(0)).is_ok());
        assert!(s.check(1004, dec!(3.601), dec!(0)).is_err());
    }

    #[test]
    fn cancelling_the_funding_buy_withdraws_the_room() {
        let mut s = battery();
        s.add(1001, dec!(0), dec!(0), dec!(2));
        assert!(s.check(1004, dec!(3), dec!(0)).is_ok());
        s.add(1001, dec!(0), dec!(0), dec!(-2)); // cancelled
        assert!(s.check(1004, dec!(2.001), dec!(0)).is_err());
        // A fill moves the buy from open to filled: the room stays, in its slot too.
        s.add(1001, dec!(0), dec!(0), dec!(2));
        s.add(1001, dec!(-2), dec!(0), dec!(-2));
        assert!(s.check(1004, dec!(3.6), dec!(0)).is_ok());
        // In its own slot a filled buy nets against the sell (no round trip): 2 + 2 MW.
        assert!(s.check(1001, dec!(4), dec!(0)).is_ok());
        assert!(s.check(1001, dec!(4.001), dec!(0)).is_err());
    }

    #[test]
    fn an_open_sell_in_an_earlier_interval_makes_room_for_a_later_buy() {
        // 600 kWh, max 900: 300 kWh of room = 1.5 MW at 80 %. Selling 2 MW at slot 1 (500 kWh)
        // makes 500 kWh more room from slot 2 on: 800 kWh = 4 MW.
        let mut s = battery();
        s.add(1001, dec!(0), dec!(2), dec!(0));
        assert!(s.check(1003, dec!(0), dec!(4)).is_ok());
        assert_eq!(
            s.check(1003, dec!(0), dec!(4.001)),
            Err(StorageBreach::AboveMax {
                highest_kwh: dec!(900.2000)
            })
        );
        // Not in the sell's own slot, not before it.
        assert!(s.check(1001, dec!(0), dec!(1.5)).is_ok());
        assert!(s.check(1001, dec!(0), dec!(1.501)).is_err());
        assert!(s.check(1000, dec!(0), dec!(1.501)).is_err());
    }
}
