//! The rebuild-per-change storage schedule the incremental one replaced, kept verbatim as the
//! test oracle: the property test in `storage.rs` asserts both give the same decisions (value
//! and scale of every reported kWh) over random schedules.

use super::{StorageBreach, StorageBudget, KWH_PER_MW_INTERVAL};
use rust_decimal::Decimal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OracleSchedule {
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

impl OracleSchedule {
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
