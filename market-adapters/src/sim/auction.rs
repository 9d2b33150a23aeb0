//! Day-ahead auction clearing for one delivery interval: pay-as-clear, one uniform price.
//!
//! Owns the bid limits ([`BidLimits`]) and the clearing rule ([`clear_uniform_price`]). Pure:
//! no I/O, no clock; the same bids always give the same [`Clearing`].
//!
//! # The clearing rule
//!
//! Sell bids form the supply curve (sorted ascending by price), buy bids the demand curve
//! (sorted descending). At a price `p`:
//!
//! - `S(p)` = sell quantity priced `<= p`, `S⁻(p)` = sell quantity priced `< p`;
//! - `D(p)` = buy quantity priced `>= p`, `D⁺(p)` = buy quantity priced `> p`.
//!
//! Because a step curve is vertical at each bid price, supply at `p` is any quantity in
//! `[S⁻(p), S(p)]` and demand any quantity in `[D⁺(p), D(p)]`. **The curves meet at `p`** when
//! those two ranges overlap: `S⁻(p) <= D(p)` and `D⁺(p) <= S(p)`. Every meeting price
//! maximises the traded volume `min(S(p), D(p))`, and the meeting prices form one closed range.
//!
//! - **Clearing price**: the *lowest* price at which the curves meet. It is always a bid
//!   price. When the curves overlap on a vertical segment (supply and demand both exactly
//!   `V` over a range of prices) this is the bottom of that segment, i.e. the price of the
//!   marginal (most expensive accepted) supply bid, or the price of the best rejected demand
//!   bid if that is higher. We do not take the midpoint: with inelastic demand bid at the cap
//!   the midpoint would sit halfway to the cap, whereas the lowest meeting price is the
//!   system marginal price a pay-as-clear power market expects.
//! - **Volume**: `V = min(S(p), D(p))` at the clearing price. If `V` is zero (the curves do
//!   not cross, or a side is empty) there is no clearing: no price, no awards.
//! - **Awards**: bids strictly better than the price (sells below it, buys above it) are
//!   accepted in full. Bids at exactly the price share what is left of `V` on their side.
//!   Only one side can be long at the price; on the short side the at-price bids are accepted
//!   in full.
//! - **Pro rata, exact**: on the long side each at-price bid gets
//!   `floor_0.001(R × q_i / Q)` MW, where `R` is the volume left for the at-price bids and `Q`
//!   their total quantity. The rounding remainder (less than 0.001 MW per bid) is handed out
//!   in ascending bid-id order, each bid taking at most what it still lacks of its own
//!   quantity; in practice all of it goes to the earliest bid id. The awards of each side
//!   therefore add up to `V` exactly, and no award exceeds its bid.
//!
//! Bids are expected to have passed [`BidLimits::check`]. A bid whose quantity is not in
//! `(0, MAX_BID_QUANTITY_MW]` is treated as absent, which also keeps every sum far from
//! `Decimal` overflow. Awards are listed in the input order of their bids; bids awarded
//! nothing are left out. Duplicate bid ids are cleared as separate bids.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vpp_engine::order::Side;

/// Smallest awarded quantity step of the pro-rata rule, in MW (0.001 MW = 1 kW).
pub const AWARD_QUANTUM_DP: u32 = 3;
/// Bids larger than this (in MW) are ignored by the clearing; far above any real power system.
pub const MAX_BID_QUANTITY_MW: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// One bid into the day-ahead auction of one delivery interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuctionBid {
    pub bid_id: u64,
    pub side: Side,
    pub quantity_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
}

/// The limits a market puts on every bid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidLimits {
    pub price_cap_cny_per_mwh: Decimal,
    pub price_floor_cny_per_mwh: Decimal,
    pub max_volume_mw: Decimal,
    pub negative_prices_allowed: bool,
}

/// Why a bid was refused. [`BidRejection::code`] is stable for the wire protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BidRejection {
    #[error("bid {bid_id}: quantity {quantity_mw} MW must be greater than 0 MW")]
    NonPositiveQuantity { bid_id: u64, quantity_mw: Decimal },
    #[error(
        "bid {bid_id}: quantity {quantity_mw} MW is above the maximum volume {max_volume_mw} MW"
    )]
    VolumeAboveMax {
        bid_id: u64,
        quantity_mw: Decimal,
        max_volume_mw: Decimal,
    },
    #[error("bid {bid_id}: price {price_cny_per_mwh} CNY/MWh is above the price cap {cap_cny_per_mwh} CNY/MWh")]
    PriceAboveCap {
        bid_id: u64,
        price_cny_per_mwh: Decimal,
        cap_cny_per_mwh: Decimal,
    },
    #[error("bid {bid_id}: price {price_cny_per_mwh} CNY/MWh is below the price floor {floor_cny_per_mwh} CNY/MWh")]
    PriceBelowFloor {
        bid_id: u64,
        price_cny_per_mwh: Decimal,
        floor_cny_per_mwh: Decimal,
    },
    #[error("bid {bid_id}: price {price_cny_per_mwh} CNY/MWh is negative and this market does not allow negative prices")]
    NegativePriceNotAllowed {
        bid_id: u64,
        price_cny_per_mwh: Decimal,
    },
}

impl BidRejection {
    /// Stable machine-readable code, used as the reject reason code on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            BidRejection::NonPositiveQuantity { .. } => "non_positive_quantity",
            BidRejection::VolumeAboveMax { .. } => "volume_above_max",
            BidRejection::PriceAboveCap { .. } => "price_above_cap",
            BidRejection::PriceBelowFloor { .. } => "price_below_floor",
            BidRejection::NegativePriceNotAllowed { .. } => "negative_price_not_allowed",
        }
    }
}

impl BidLimits {
    /// Accepts a bid inside the limits; the cap, floor and maximum volume are inclusive.
    pub fn check(&self, bid: &AuctionBid) -> Result<(), BidRejection> {
        let (bid_id, quantity_mw, price) = (bid.bid_id, bid.quantity_mw, bid.price_cny_per_mwh);
        if quantity_mw <= Decimal::ZERO {
            return Err(BidRejection::NonPositiveQuantity {
                bid_id,
                quantity_mw,
            });
        }
        if quantity_mw > self.max_volume_mw {
            return Err(BidRejection::VolumeAboveMax {
                bid_id,
                quantity_mw,
                max_volume_mw: self.max_volume_mw,
            });
        }
        if price > self.price_cap_cny_per_mwh {
            return Err(BidRejection::PriceAboveCap {
                bid_id,
                price_cny_per_mwh: price,
                cap_cny_per_mwh: self.price_cap_cny_per_mwh,
            });
        }
        if price < Decimal::ZERO && !self.negative_prices_allowed {
            return Err(BidRejection::NegativePriceNotAllowed {
                bid_id,
                price_cny_per_mwh: price,
            });
        }
        if price < self.price_floor_cny_per_mwh {
            return Err(BidRejection::PriceBelowFloor {
                bid_id,
                price_cny_per_mwh: price,
                floor_cny_per_mwh: self.price_floor_cny_per_mwh,
            });
        }
        Ok(())
    }
}

/// What one bid was awarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Award {
    pub bid_id: u64,
    pub side: Side,
    pub quantity_mw: Decimal,
}

/// The result of clearing one interval. `price_cny_per_mwh` is `None` when nothing traded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clearing {
    pub price_cny_per_mwh: Option<Decimal>,
    pub volume_mw: Decimal,
    pub awards: Vec<Award>,
}

impl Clearing {
    fn none() -> Self {
        Self {
            price_cny_per_mwh: None,
            volume_mw: Decimal::ZERO,
            awards: Vec::new(),
        }
    }

    /// Total awarded to one side; equals `volume_mw` for both sides.
    pub fn awarded_mw(&self, side: Side) -> Decimal {
        self.awards
            .iter()
            .filter(|a| a.side == side)
            .map(|a| a.quantity_mw)
            .sum()
    }
}

/// Clears one interval by the rule in the module documentation.
pub fn clear_uniform_price(bids: &[AuctionBid]) -> Clearing {
    let clearable: Vec<&AuctionBid> = bids.iter().filter(|b| is_clearable(b)).collect();
    let Some((price, volume_mw)) = meeting_point(&clearable) else {
        return Clearing::none();
    };
    if volume_mw <= Decimal::ZERO {
        return Clearing::none();
    }
    let mut awarded = vec![Decimal::ZERO; clearable.len()];
    award_side(&clearable, Side::Sell, price, volume_mw, &mut awarded);
    award_side(&clearable, Side::Buy, price, volume_mw, &mut awarded);
    let awards = clearable
        .iter()
        .zip(awarded)
        .filter(|(_, q)| *q > Decimal::ZERO)
        .map(|(b, quantity_mw)| Award {
            bid_id: b.bid_id,
            side: b.side,
            quantity_mw,
        })
        .collect();
    Clearing {
        price_cny_per_mwh: Some(price),
        volume_mw,
        awards,
    }
}

fn is_clearable(bid: &AuctionBid) -> bool {
    bid.quantity_mw > Decimal::ZERO && bid.quantity_mw <= MAX_BID_QUANTITY_MW
}

/// Supply and demand quantity bid at exactly one price.
struct Level {
    price: Decimal,
    supply_mw: Decimal,
    demand_mw: Decimal,
}

fn levels(bids: &[&AuctionBid]) -> Vec<Level> {
    let mut sorted: Vec<&AuctionBid> = bids.to_vec();
    sorted.sort_by_key(|b| b.price_cny_per_mwh);
    let mut out: Vec<Level> = Vec::new();
    for bid in sorted {
        let level = match out.last_mut() {
            Some(l) if l.price == bid.price_cny_per_mwh => l,
            _ => {
                out.push(Level {
                    price: bid.price_cny_per_mwh,
                    supply_mw: Decimal::ZERO,
                    demand_mw: Decimal::ZERO,
                });
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        match bid.side {
            Side::Sell => level.supply_mw += bid.quantity_mw,
            Side::Buy => level.demand_mw += bid.quantity_mw,
        }
    }
    out
}

/// The lowest price at which the curves meet, and the volume traded there.
fn meeting_point(bids: &[&AuctionBid]) -> Option<(Decimal, Decimal)> {
    let levels = levels(bids);
    let total_demand_mw: Decimal = levels.iter().map(|l| l.demand_mw).sum();
    let mut supply_below_mw = Decimal::ZERO; // S⁻(p)
    let mut demand_below_mw = Decimal::ZERO; // buy quantity priced < p
    for level in &levels {
        let supply_mw = supply_below_mw + level.supply_mw; // S(p)
        let demand_mw = total_demand_mw - demand_below_mw; // D(p)
        let demand_above_mw = demand_mw - level.demand_mw; // D⁺(p)
        if supply_below_mw <= demand_mw && demand_above_mw <= supply_mw {
            return Some((level.price, supply_mw.min(demand_mw)));
        }
        supply_below_mw = supply_mw;
        demand_below_mw += level.demand_mw;
    }
    None
}

/// Fills `awarded` for every bid of `side`: better than `price` in full, at `price` pro rata.
fn award_side(
    bids: &[&AuctionBid],
    side: Side,
    price: Decimal,
    volume_mw: Decimal,
    awarded: &mut [Decimal],
) {
    let is_better = |p: Decimal| match side {
        Side::Sell => p < price,
        Side::Buy => p > price,
    };
    let mut better_mw = Decimal::ZERO;
    let mut at_price: Vec<usize> = Vec::new();
    for (i, bid) in bids.iter().enumerate().filter(|(_, b)| b.side == side) {
        if is_better(bid.price_cny_per_mwh) {
            awarded[i] = bid.quantity_mw;
            better_mw += bid.quantity_mw;
        } else if bid.price_cny_per_mwh == price {
            at_price.push(i);
        }
    }
    let left_mw = volume_mw - better_mw;
    let at_price_mw: Decimal = at_price.iter().map(|&i| bids[i].quantity_mw).sum();
    if at_price_mw <= left_mw {
        for &i in &at_price {
            awarded[i] = bids[i].quantity_mw;
        }
        return;
    }
    pro_rata(bids, &at_price, left_mw, at_price_mw, awarded);
}

/// Shares `left_mw` (< `at_price_mw`) among the bids at `idx`, exactly, by the module's rule.
fn pro_rata(
    bids: &[&AuctionBid],
    idx: &[usize],
    left_mw: Decimal,
    at_price_mw: Decimal,
    awarded: &mut [Decimal],
) {
    let mut shared_mw = Decimal::ZERO;
    for &i in idx {
        let q = bids[i].quantity_mw;
        // R × q / Q is exact when it fits; the fallback only loses digits far below 0.001 MW.
        let exact = left_mw
            .checked_mul(q)
            .and_then(|x| x.checked_div(at_price_mw))
            .unwrap_or_else(|| q * (left_mw / at_price_mw));
        let share = exact
            .round_dp_with_strategy(AWARD_QUANTUM_DP, RoundingStrategy::ToZero)
            .min(q);
        awarded[i] = share;
        shared_mw += share;
    }
    let mut remainder_mw = left_mw - shared_mw;
    let mut by_id: Vec<usize> = idx.to_vec();
    by_id.sort_by_key(|&i| bids[i].bid_id); // stable: equal ids keep input order
    for i in by_id {
        if remainder_mw <= Decimal::ZERO {
            break;
        }
        let give = remainder_mw.min(bids[i].quantity_mw - awarded[i]);
        awarded[i] += give;
        remainder_mw -= give;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn sell(bid_id: u64, quantity_mw: Decimal, price: Decimal) -> AuctionBid {
        AuctionBid {
            bid_id,
            side: Side::Sell,
            quantity_mw,
            price_cny_per_mwh: price,
        }
    }

    fn buy(bid_id: u64, quantity_mw: Decimal, price: Decimal) -> AuctionBid {
        AuctionBid {
            side: Side::Buy,
            ..sell(bid_id, quantity_mw, price)
        }
    }

    fn award_of(c: &Clearing, bid_id: u64) -> Decimal {
        c.awards
            .iter()
            .filter(|a| a.bid_id == bid_id)
            .map(|a| a.quantity_mw)
            .sum()
    }

    fn limits() -> BidLimits {
        BidLimits {
            price_cap_cny_per_mwh: dec!(1500),
            price_floor_cny_per_mwh: dec!(0),
            max_volume_mw: dec!(100),
            negative_prices_allowed: false,
        }
    }

    #[test]
    fn hand_computed_marginal_price_tie_is_shared_pro_rata() {
        // Supply (ascending):  #1 40 MW @ 200, #2 30 MW @ 250, #4 25 MW @ 300, #3 20 MW @ 300,
        //                      #5 50 MW @ 400.
        // Demand (descending): #10 60 MW @ 1500, #11 25 MW @ 320, #12 15 MW @ 280, #13 30 MW @ 150.
        // Walking up the distinct prices (S⁻ ≤ D and D⁺ ≤ S is the meeting test):
        //   150: S⁻=0  S=0   D=130 D⁺=100 -> 100 > 0, no
        //   200: S⁻=0  S=40  D=100 D⁺=100 -> 100 > 40, no
        //   250: S⁻=40 S=70  D=100 D⁺=100 -> 100 > 70, no
        //   280: S⁻=70 S=70  D=100 D⁺=85  ->  85 > 70, no
        //   300: S⁻=70 S=115 D=85  D⁺=85  ->  70 ≤ 85 and 85 ≤ 115: the curves meet.
        // Price 300, volume min(115, 85) = 85. Demand #10 + #11 = 85 is fully accepted.
        // Supply below 300: #1 + #2 = 70 in full; R = 85 - 70 = 15 MW for the tie, Q = 45 MW.
        //   #3: 15 × 20 / 45 = 6.666… -> 6.666;  #4: 15 × 25 / 45 = 8.333… -> 8.333
        //   sum 14.999, remainder 0.001 to the earliest bid id (#3) -> #3 = 6.667, #4 = 8.333.
        let bids = vec![
            sell(1, dec!(40), dec!(200)),
            sell(2, dec!(30), dec!(250)),
            sell(4, dec!(25), dec!(300)),
            sell(3, dec!(20), dec!(300)),
            sell(5, dec!(50), dec!(400)),
            buy(10, dec!(60), dec!(1500)),
            buy(11, dec!(25), dec!(320)),
            buy(12, dec!(15), dec!(280)),
            buy(13, dec!(30), dec!(150)),
        ];
        let c = clear_uniform_price(&bids);
        assert_eq!(c.price_cny_per_mwh, Some(dec!(300)));
        assert_eq!(c.volume_mw, dec!(85));
        assert_eq!(award_of(&c, 1), dec!(40));
        assert_eq!(award_of(&c, 2), dec!(30));
        assert_eq!(award_of(&c, 3), dec!(6.667));
        assert_eq!(award_of(&c, 4), dec!(8.333));
        assert_eq!(award_of(&c, 5), dec!(0));
        assert_eq!(award_of(&c, 10), dec!(60));
        assert_eq!(award_of(&c, 11), dec!(25));
        assert_eq!(award_of(&c, 12), dec!(0));
        assert_eq!(award_of(&c, 13), dec!(0));
        assert_eq!(c.awarded_mw(Side::Sell), dec!(85));
        assert_eq!(c.awarded_mw(Side::Buy), dec!(85));
        // Awards follow the input order of the bids; unawarded bids are left out.
        let ids: Vec<u64> = c.awards.iter().map(|a| a.bid_id).collect();
        assert_eq!(ids, vec![1, 2, 4, 3, 10, 11]);
    }

    #[test]
    fn demand_tie_at_the_price_is_shared_when_demand_is_long() {
        // Supply 100 MW @ 50 is vertical at 100 MW; demand: 30 @ 80, then #2 60 and #3 40 @ 60.
        // At 60: S⁻=100 ≤ D=130 and D⁺=30 ≤ S=100 -> price 60 (at 50, D⁺=130 > 100).
        // Demand left for the tie: 100 - 30 = 70 of 100: #2 42, #3 28 (exact, no remainder).
        let bids = vec![
            sell(1, dec!(100), dec!(50)),
            buy(4, dec!(30), dec!(80)),
            buy(2, dec!(60), dec!(60)),
            buy(3, dec!(40), dec!(60)),
        ];
        let c = clear_uniform_price(&bids);
        assert_eq!(c.price_cny_per_mwh, Some(dec!(60)));
        assert_eq!(c.volume_mw, dec!(100));
        assert_eq!(award_of(&c, 1), dec!(100));
        assert_eq!(award_of(&c, 4), dec!(30));
        assert_eq!(award_of(&c, 2), dec!(42));
        assert_eq!(award_of(&c, 3), dec!(28));
    }

    #[test]
    fn vertical_overlap_clears_at_its_lowest_price_not_the_midpoint() {
        // S = D = 100 MW for every price in [60, 1500]: the rule takes 60, the marginal supply bid.
        let bids = vec![
            sell(1, dec!(50), dec!(40)),
            sell(2, dec!(50), dec!(60)),
            buy(3, dec!(100), dec!(1500)),
        ];
        let c = clear_uniform_price(&bids);
        assert_eq!(c.price_cny_per_mwh, Some(dec!(60)));
        assert_eq!(c.volume_mw, dec!(100));
        assert_eq!(award_of(&c, 2), dec!(50));
    }

    #[test]
    fn rejected_demand_above_the_marginal_supply_sets_the_price() {
        // Supply 100 @ 50; demand 100 @ 70 and 50 @ 60. At 50, D⁺ = 150 > 100: no meeting.
        // At 60: S⁻=100 ≤ D=150, D⁺=100 ≤ S=100 -> price 60; the 60-bid gets nothing.
        let bids = vec![
            sell(1, dec!(100), dec!(50)),
            buy(2, dec!(100), dec!(70)),
            buy(3, dec!(50), dec!(60)),
        ];
        let c = clear_uniform_price(&bids);
        assert_eq!(c.price_cny_per_mwh, Some(dec!(60)));
        assert_eq!(c.volume_mw, dec!(100));
        assert_eq!(award_of(&c, 3), dec!(0));
        assert_eq!(award_of(&c, 2), dec!(100));
    }

    #[test]
    fn no_crossing_means_no_clearing() {
        let c = clear_uniform_price(&[sell(1, dec!(10), dec!(100)), buy(2, dec!(10), dec!(99.99))]);
        assert_eq!(c, Clearing::none());
        assert_eq!(
            clear_uniform_price(&[sell(1, dec!(10), dec!(1))]),
            Clearing::none()
        );
        assert_eq!(
            clear_uniform_price(&[buy(1, dec!(10), dec!(1))]),
            Clearing::none()
        );
        assert_eq!(clear_uniform_price(&[]), Clearing::none());
    }

    #[test]
    fn touching_curves_trade_at_the_common_price() {
        let c = clear_uniform_price(&[sell(1, dec!(10), dec!(100)), buy(2, dec!(4), dec!(100))]);
        assert_eq!(c.price_cny_per_mwh, Some(dec!(100)));
        assert_eq!(c.volume_mw, dec!(4));
        assert_eq!(award_of(&c, 1), dec!(4));
    }

    #[test]
    fn all_inelastic_demand_clears_at_the_marginal_supply_price() {
        // 90 MW of demand at the cap against a 30/30/30/30 ladder at 100/200/300/400: the
        // third step is marginal and fully taken (30+30+30 = 90), so the price is 300.
        let bids = vec![
            buy(1, dec!(50), dec!(1500)),
            buy(2, dec!(40), dec!(1500)),
            sell(3, dec!(30), dec!(100)),
            sell(4, dec!(30), dec!(200)),
            sell(5, dec!(30), dec!(300)),
            sell(6, dec!(30), dec!(400)),
        ];
        let c = clear_uniform_price(&bids);
        assert_eq!(c.price_cny_per_mwh, Some(dec!(300)));
        assert_eq!(c.volume_mw, dec!(90));
        assert_eq!(award_of(&c, 1) + award_of(&c, 2), dec!(90));
        assert_eq!(award_of(&c, 6), dec!(0));
        // With 100 MW of inelastic demand the 400 step becomes marginal and is cut to 10 MW.
        let mut more = bids.clone();
        more[0].quantity_mw = dec!(60);
        let c = clear_uniform_price(&more);
        assert_eq!(c.price_cny_per_mwh, Some(dec!(400)));
        assert_eq!(award_of(&c, 6), dec!(10));
    }

    #[test]
    fn scarcity_clears_at_the_demand_price() {
        // Supply is vertical at 10 MW above 100; it meets the 50 MW demand step at 1500.
        // At 100: D⁺ = 50 > S = 10, no meeting. At 1500: S⁻ = 10 ≤ 50 and D⁺ = 0 ≤ 10.
        let c = clear_uniform_price(&[sell(1, dec!(10), dec!(100)), buy(2, dec!(50), dec!(1500))]);
        assert_eq!(c.price_cny_per_mwh, Some(dec!(1500)));
        assert_eq!(c.volume_mw, dec!(10));
        assert_eq!(award_of(&c, 2), dec!(10));
    }

    #[test]
    fn negative_prices_clear_when_allowed() {
        let mut lim = limits();
        lim.negative_prices_allowed = true;
        lim.price_floor_cny_per_mwh = dec!(-100);
        let bids = vec![
            sell(1, dec!(50), dec!(-20)),
            sell(2, dec!(30), dec!(10)),
            buy(3, dec!(40), dec!(0)),
        ];
        for b in &bids {
            assert!(lim.check(b).is_ok(), "{b:?}");
        }
        let c = clear_uniform_price(&bids);
        assert_eq!(c.price_cny_per_mwh, Some(dec!(-20)));
        assert_eq!(award_of(&c, 1), dec!(40));
        let err = limits().check(&bids[0]).unwrap_err();
        assert_eq!(err.code(), "negative_price_not_allowed");
    }

    #[test]
    fn limits_are_inclusive_just_inside_and_refuse_just_outside() {
        let lim = limits();
        assert!(lim.check(&sell(1, dec!(100), dec!(1500))).is_ok());
        assert!(lim.check(&sell(1, dec!(0.001), dec!(0))).is_ok());
        let cases = [
            (
                sell(1, dec!(10), dec!(1500.01)),
                "price_above_cap",
                "cap 1500",
            ),
            (
                sell(1, dec!(10), dec!(-0.01)),
                "negative_price_not_allowed",
                "negative",
            ),
            (
                sell(1, dec!(100.001), dec!(10)),
                "volume_above_max",
                "maximum volume 100",
            ),
            (
                sell(1, dec!(0), dec!(10)),
                "non_positive_quantity",
                "greater than 0",
            ),
            (
                buy(1, dec!(-1), dec!(10)),
                "non_positive_quantity",
                "greater than 0",
            ),
        ];
        for (bid, code, text) in cases {
            let err = lim.check(&bid).unwrap_err();
            assert_eq!(err.code(), code);
            assert!(err.to_string().contains(text), "{err}");
        }
        let mut floored = lim.clone();
        floored.price_floor_cny_per_mwh = dec!(20);
        assert!(floored.check(&sell(1, dec!(1), dec!(20))).is_ok());
        let err = floored.check(&sell(1, dec!(1), dec!(19.99))).unwrap_err();
        assert_eq!(err.code(), "price_below_floor");
        assert!(err.to_string().contains("floor 20"), "{err}");
    }

    #[test]
    fn remainder_never_pushes_an_award_above_its_bid() {
        // R = 0.002 among three 0.001 MW bids: shares floor to 0, remainder 0.002 spread by id.
        let bids = vec![
            sell(9, dec!(0.001), dec!(10)),
            sell(7, dec!(0.001), dec!(10)),
            sell(8, dec!(0.001), dec!(10)),
            buy(1, dec!(0.002), dec!(10)),
        ];
        let c = clear_uniform_price(&bids);
        assert_eq!(c.volume_mw, dec!(0.002));
        assert_eq!(award_of(&c, 7), dec!(0.001));
        assert_eq!(award_of(&c, 8), dec!(0.001));
        assert_eq!(award_of(&c, 9), dec!(0));
    }

    fn arb_bid() -> impl Strategy<Value = AuctionBid> {
        (any::<bool>(), 1u32..5_000, 0i64..40).prop_map(|(is_buy, q, p)| {
            let side = if is_buy { Side::Buy } else { Side::Sell };
            AuctionBid {
                bid_id: 0,
                side,
                quantity_mw: Decimal::new(i64::from(q), 2),
                price_cny_per_mwh: Decimal::new(p * 10, 0),
            }
        })
    }

    proptest! {
        #[test]
        fn clearing_is_balanced_and_respects_prices(raw in proptest::collection::vec(arb_bid(), 0..40)) {
            // Unique ids so each award maps back to exactly one bid.
            let bids: Vec<AuctionBid> = raw.into_iter().enumerate()
                .map(|(i, b)| AuctionBid { bid_id: i as u64, ..b }).collect();
            let c = clear_uniform_price(&bids);
            prop_assert_eq!(c.awarded_mw(Side::Sell), c.volume_mw);
            prop_assert_eq!(c.awarded_mw(Side::Buy), c.volume_mw);
            let Some(price) = c.price_cny_per_mwh else {
                prop_assert!(c.awards.is_empty());
                return Ok(());
            };
            let mut got = vec![Decimal::ZERO; bids.len()];
            let mut next = 0;
            for (i, b) in bids.iter().enumerate() {
                if next < c.awards.len() && c.awards[next].bid_id == b.bid_id {
                    got[i] = c.awards[next].quantity_mw;
                    next += 1;
                }
            }
            prop_assert_eq!(next, c.awards.len());
            for (b, q) in bids.iter().zip(got) {
                prop_assert!(q <= b.quantity_mw);
                let better = match b.side { Side::Sell => b.price_cny_per_mwh < price, Side::Buy => b.price_cny_per_mwh > price };
                let worse = match b.side { Side::Sell => b.price_cny_per_mwh > price, Side::Buy => b.price_cny_per_mwh < price };
                if better { prop_assert_eq!(q, b.quantity_mw); }
                if worse { prop_assert_eq!(q, Decimal::ZERO); }
            }
        }
    }
}
