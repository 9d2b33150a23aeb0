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
//! Data structure (incremental; the rebuild-per-change version it replaced is kept as the
//! test oracle in `storage/oracle.rs` and a property test asserts identical decisions): the
//! slots live in a ring indexed by `interval_index mod horizon`, and a segment tree over the
//! ring keeps, per node covering slots `[a, b)`, the sum of `Δ(carry)` over the node and the
//! lowest (highest) `Σ_{a<=s'<s} Δ(carry[s']) + Δ(point[s])` (`Δ(high[s])`) over `s` in it,
//! relative to the node's start. Energy enters only at query time, so a new reported energy
//! costs nothing; a change or a dropped slot is one leaf update (O(log horizon)); a check is
//! two range queries (O(log horizon)), allocation-free. Only a new round-trip efficiency
//! recomputes every leaf.
//!
//! Invariants: every tree node is the combination of its two children; a leaf holds the
//! deltas of its slot's three schedules under the budget's efficiency; slots past the horizon
//! end are all-zero (their nets are `Decimal::ZERO`). Vectors are sized once to the horizon.
//! Decimal sums are exact at these magnitudes, so the regrouping gives the oracle's values
//! exactly (a reported kWh may differ from the oracle's in trailing zeros only: `Decimal`
//! addition drops a zero operand's scale, so the scale depends on the grouping).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod oracle;

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

/// One slot's schedules, MW net sold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Nets {
    point_mw: Decimal,
    carry_mw: Decimal,
    high_mw: Decimal,
}

const ZERO_NETS: Nets = Nets {
    point_mw: Decimal::ZERO,
    carry_mw: Decimal::ZERO,
    high_mw: Decimal::ZERO,
};

/// A segment-tree node over consecutive slots `[a, b)`, kWh relative to the energy at `a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    /// `Σ Δ(carry)` over the node: the energy change from `a` to `b`.
    carry_kwh: Decimal,
    /// Lowest within-slot point over the node.
    low_kwh: Decimal,
    /// Highest within-slot point over the node.
    high_kwh: Decimal,
}

const ZERO_NODE: Node = Node {
    carry_kwh: Decimal::ZERO,
    low_kwh: Decimal::ZERO,
    high_kwh: Decimal::ZERO,
};

/// `l` then `r`. On ties the earlier slot wins (as the oracle's suffix scan).
#[inline]
fn combine(l: Node, r: Node) -> Node {
    Node {
        carry_kwh: l.carry_kwh + r.carry_kwh,
        low_kwh: l.low_kwh.min(l.carry_kwh + r.low_kwh),
        high_kwh: l.high_kwh.max(l.carry_kwh + r.high_kwh),
    }
}

#[inline]
fn join(l: Option<Node>, r: Option<Node>) -> Option<Node> {
    match (l, r) {
        (Some(l), Some(r)) => Some(combine(l, r)),
        (l, None) => l,
        (None, r) => r,
    }
}

#[derive(Debug, Clone)]
pub struct StorageSchedule {
    pub budget: StorageBudget,
    /// Interval index (epoch seconds / 900) of slot 0.
    base_index: i64,
    /// Slot nets by ring position (`interval_index mod horizon`).
    nets: Vec<Nets>,
    /// Segment tree: leaves at `size + ring position`, padding leaves zero.
    tree: Vec<Node>,
    size: usize,
}

/// `d > 0` by sign bit and zero test (a full `Decimal` comparison costs far more).
#[inline]
fn positive(d: Decimal) -> bool {
    !d.is_sign_negative() && !d.is_zero()
}

#[inline]
fn delta_kwh(net_sold_mw: Decimal, efficiency: Decimal) -> Decimal {
    let kwh = net_sold_mw * KWH_PER_MW_INTERVAL;
    if positive(net_sold_mw) {
        -kwh
    } else {
        -kwh * efficiency
    }
}

/// Same value and same scale (a new efficiency with another scale changes every delta's).
fn same_decimal(a: Decimal, b: Decimal) -> bool {
    a.serialize() == b.serialize()
}

impl StorageSchedule {
    pub fn new(budget: StorageBudget, base_index: i64, horizon: usize) -> Self {
        let horizon = horizon.max(1);
        let size = horizon.next_power_of_two();
        let mut s = Self {
            budget,
            base_index,
            nets: vec![ZERO_NETS; horizon],
            tree: vec![ZERO_NODE; 2 * size],
            size,
        };
        s.rebuild_leaves();
        s
    }

    pub fn horizon(&self) -> usize {
        self.nets.len()
    }

    pub fn base_index(&self) -> i64 {
        self.base_index
    }

    fn slot(&self, interval_index: i64) -> Option<usize> {
        let slot = usize::try_from(interval_index.checked_sub(self.base_index)?).ok()?;
        (slot < self.horizon()).then_some(slot)
    }

    /// Ring position of a slot.
    #[inline]
    fn ring(&self, slot: usize) -> usize {
        let n = self.horizon();
        let base = usize::try_from(self.base_index.rem_euclid(n as i64)).unwrap_or(0);
        (base + slot) % n
    }

    fn leaf(&self, nets: Nets) -> Node {
        let eff = self.budget.round_trip_efficiency;
        Node {
            carry_kwh: delta_kwh(nets.carry_mw, eff),
            low_kwh: delta_kwh(nets.point_mw, eff),
            high_kwh: delta_kwh(nets.high_mw, eff),
        }
    }

    /// Recomputes every leaf and node: O(horizon), only for a new efficiency.
    fn rebuild_leaves(&mut self) {
        for p in 0..self.horizon() {
            self.tree[self.size + p] = self.leaf(self.nets[p]);
        }
        for i in (1..self.size).rev() {
            self.tree[i] = combine(self.tree[2 * i], self.tree[2 * i + 1]);
        }
    }

    /// Writes one ring position's nets and its path to the root: O(log horizon).
    fn set_nets(&mut self, ring: usize, nets: Nets) {
        self.nets[ring] = nets;
        let mut i = self.size + ring;
        self.tree[i] = self.leaf(nets);
        while i > 1 {
            i /= 2;
            self.tree[i] = combine(self.tree[2 * i], self.tree[2 * i + 1]);
        }
    }

    /// The combination of ring positions `[l, r)`, `None` when empty.
    fn query_ring(&self, l: usize, r: usize) -> Option<Node> {
        let (mut l, mut r) = (l + self.size, r + self.size);
        let (mut left, mut right): (Option<Node>, Option<Node>) = (None, None);
        while l < r {
            if l & 1 == 1 {
                left = join(left, Some(self.tree[l]));
                l += 1;
            }
            if r & 1 == 1 {
                r -= 1;
                right = join(Some(self.tree[r]), right);
            }
            l /= 2;
            r /= 2;
        }
        join(left, right)
    }

    /// The combination of slots `[a, b)` in time order (the ring may wrap).
    fn query(&self, a: usize, b: usize) -> Option<Node> {
        if a >= b {
            return None;
        }
        let n = self.horizon();
        let p = self.ring(a);
        let len = b - a;
        if p + len <= n {
            self.query_ring(p, p + len)
        } else {
            join(self.query_ring(p, n), self.query_ring(0, p + len - n))
        }
    }

    /// Energy at the start of a slot when everything before it fills.
    fn start_kwh(&self, slot: usize) -> Decimal {
        match self.query(0, slot) {
            Some(before) => self.budget.energy_kwh + before.carry_kwh,
            None => self.budget.energy_kwh,
        }
    }

    /// Replaces the reported energy and limits, keeping the schedule.
    pub fn set_budget(&mut self, budget: StorageBudget) {
        let rebuild = !same_decimal(
            budget.round_trip_efficiency,
            self.budget.round_trip_efficiency,
        );
        self.budget = budget;
        if rebuild {
            self.rebuild_leaves();
        }
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
        // The dropped slots' ring positions become the far end: zero them.
        for slot in 0..shift {
            let ring = self.ring(slot);
            if self.nets[ring].serialize_eq(&ZERO_NETS) {
                continue;
            }
            self.set_nets(ring, ZERO_NETS);
        }
        self.base_index = base_index;
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
        let ring = self.ring(slot);
        let old = self.nets[ring];
        let nets = Nets {
            point_mw: old.point_mw + (filled_mw + open_sell_mw),
            carry_mw: old.carry_mw + (filled_mw + open_sell_mw - open_buy_mw),
            high_mw: old.high_mw + (filled_mw - open_buy_mw),
        };
        self.set_nets(ring, nets);
    }

    /// Would selling (`sell_mw > 0`) or buying (`buy_mw > 0`) more energy at the interval keep
    /// the storage within its limits on every interval from then on? O(log horizon).
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
        let (sell, buy) = (positive(sell_mw), positive(buy_mw));
        if !sell && !buy {
            return Ok(());
        }
        let eff = self.budget.round_trip_efficiency;
        let nets = self.nets[self.ring(slot)];
        let start = self.start_kwh(slot);
        // Everything after the slot, relative to the energy the slot hands on.
        let later = self.query(slot + 1, self.horizon());
        let after_start = start + delta_kwh(nets.carry_mw, eff);
        if sell {
            // Within the slot: its own open buys do not count.
            let mut lowest_kwh = start + delta_kwh(nets.point_mw + sell_mw, eff);
            // Later slots: the sell lowers what this slot carries forward.
            if let Some(later) = later {
                let carry = nets.carry_mw;
                let shift = delta_kwh(carry + sell_mw, eff) - delta_kwh(carry, eff);
                lowest_kwh = lowest_kwh.min(after_start + later.low_kwh + shift);
            }
            if lowest_kwh < self.budget.soc_min_kwh {
                return Err(StorageBreach::BelowMin { lowest_kwh });
            }
        }
        if buy {
            // Within the slot: its own open sells do not count.
            let mut highest_kwh = start + delta_kwh(nets.high_mw - buy_mw, eff);
            // Later slots: the buy raises what this slot carries forward.
            if let Some(later) = later {
                let carry = nets.carry_mw;
                let shift = delta_kwh(carry - buy_mw, eff) - delta_kwh(carry, eff);
                highest_kwh = highest_kwh.max(after_start + later.high_kwh + shift);
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
        let start = self.start_kwh(slot);
        let from = self.query(slot, self.horizon())?;
        Some((start + from.low_kwh, start + from.high_kwh))
    }
}

impl Nets {
    /// Bitwise equality (value and scale): only a true `Decimal::ZERO` counts as untouched,
    /// so a dropped slot is reset exactly as the oracle resets it.
    fn serialize_eq(&self, other: &Nets) -> bool {
        same_decimal(self.point_mw, other.point_mw)
            && same_decimal(self.carry_mw, other.carry_mw)
            && same_decimal(self.high_mw, other.high_mw)
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

    mod against_oracle {
        use super::super::oracle::OracleSchedule;
        use super::super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Add {
                offset: i64,
                filled: Decimal,
                sell: Decimal,
                buy: Decimal,
            },
            Advance(i64),
            Budget {
                energy: Decimal,
                efficiency: Decimal,
            },
        }

        /// A decimal in ±`max` with 0..=3 decimal places (scales vary on purpose).
        fn mw(max: i64) -> impl Strategy<Value = Decimal> {
            (-max * 1000..=max * 1000, 0u32..=3).prop_map(|(m, scale)| {
                let v = Decimal::new(m, 3);
                v.round_dp(scale)
            })
        }

        fn efficiency() -> impl Strategy<Value = Decimal> {
            prop::sample::select(vec![
                Decimal::ONE,
                Decimal::new(9, 1),
                Decimal::new(90, 2),
                Decimal::new(85, 2),
                Decimal::new(925, 3),
            ])
        }

        fn op(horizon: i64) -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (-2..horizon + 2, mw(3), mw(3), mw(3)).prop_map(|(offset, f, s, b)| {
                    // Mostly one kind of change at a time, as the engine sends them.
                    Op::Add { offset, filled: f, sell: s, buy: b }
                }),
                1 => prop_oneof![4 => 0i64..3, 1 => 0i64..(2 * horizon + 2)].prop_map(Op::Advance),
                1 => ((0i64..=2_000_000).prop_map(|m| Decimal::new(m, 3)), efficiency())
                    .prop_map(|(energy, efficiency)| Op::Budget { energy, efficiency }),
            ]
        }

        fn budget(energy: Decimal, efficiency: Decimal) -> StorageBudget {
            StorageBudget {
                energy_kwh: energy,
                soc_min_kwh: Decimal::from(100),
                soc_max_kwh: Decimal::from(1800),
                round_trip_efficiency: efficiency,
            }
        }

        /// Every decision and envelope of both: the same verdict, breach kind and kWh value
        /// (`Decimal` equality is by value; trailing zeros may differ, see the module doc).
        fn same(new: &StorageSchedule, old: &OracleSchedule, probes: &[Decimal]) {
            let base = old.base_index();
            assert_eq!(new.base_index(), base);
            for off in -1..=i64::try_from(old.horizon()).unwrap() {
                let idx = base + off;
                assert_eq!(
                    new.envelope(idx),
                    old.envelope(idx),
                    "envelope at slot {off}"
                );
                for &q in probes {
                    for (sell, buy) in [(q, Decimal::ZERO), (Decimal::ZERO, q), (q, q)] {
                        assert_eq!(
                            new.check(idx, sell, buy),
                            old.check(idx, sell, buy),
                            "check at slot {off}, sell {sell}, buy {buy}"
                        );
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn incremental_schedule_decides_as_the_rebuild_oracle(
                horizon in 1usize..24,
                base in -5i64..5,
                energy in (0i64..=2_000_000).prop_map(|m| Decimal::new(m, 3)),
                eff in efficiency(),
                ops in prop::collection::vec(op(24), 0..60),
                probes in prop::collection::vec(mw(4).prop_map(|d| d.abs()), 1..4),
            ) {
                let mut new = StorageSchedule::new(budget(energy, eff), base, horizon);
                let mut old = OracleSchedule::new(budget(energy, eff), base, horizon);
                same(&new, &old, &probes);
                for op in ops {
                    match op {
                        Op::Add { offset, filled, sell, buy } => {
                            let idx = old.base_index() + offset;
                            new.add(idx, filled, sell, buy);
                            old.add(idx, filled, sell, buy);
                        }
                        Op::Advance(by) => {
                            let idx = old.base_index() + by;
                            new.advance_to(idx);
                            old.advance_to(idx);
                        }
                        Op::Budget { energy, efficiency } => {
                            new.set_budget(budget(energy, efficiency));
                            old.set_budget(budget(energy, efficiency));
                        }
                    }
                    same(&new, &old, &probes);
                }
            }
        }
    }
}
