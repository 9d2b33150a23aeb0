//! Orders and their one explicit state machine.
//!
//! ```text
//!   New ──accepted──▶ Accepted ──fill──▶ PartiallyFilled ──fill──▶ Filled
//!    │                   │  ▲                 │  ▲
//!    │                   ▼  │cancel_rejected  ▼  │
//!    │               PendingCancel ◀──────────┘  │
//!    ├──rejected──▶ Rejected          │           │
//!    └──────────── cancelled / expired ──▶ Cancelled / Expired
//!
//!   New (never written to the venue) ──unsent──▶ CancelledUnsent
//!   any open state ──lost (the venue does not know it)──▶ Lost
//! ```
//!
//! `CancelledUnsent` and `Lost` are local terminal states, decided by the daemon, never by a
//! venue report: `CancelledUnsent` for an order queued in the daemon and never sent (shutdown,
//! connection lost before it went out) or one the venue says it never received; `Lost` for an
//! order the venue acknowledged once and no longer knows (a venue reset with state loss).
//!
//! Invariants:
//! - A terminal order (filled, cancelled, rejected, expired, cancelled_unsent, lost) never
//!   leaves its terminal state.
//! - A report whose sequence number is not above the last one applied to the order is stale:
//!   it changes nothing and is counted by the caller.
//! - A fill never takes the filled quantity above the order quantity; a fill id is applied once.
//! - Every other illegal transition is an [`OrderError`], and the order is left unchanged.

use crate::error::ValidationError;
use crate::ids::{AggregationId, ClientOrderId, FillId, MarketId, StrategyId};
use crate::market::{DeliveryInterval, Product};
use crate::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }

    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

/// How long an order works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum TimeInForce {
    /// Until the end of the trading session (day-ahead bids: until gate closure and clearing).
    Day,
    /// Good till cancelled (bounded by the delivery interval's start).
    Gtc,
    /// Immediate or cancel: fill what can be filled now, cancel the rest.
    Ioc,
    /// Fill or kill: fill the whole quantity now or nothing.
    Fok,
    /// Good till date.
    Gtd { expire_at: Timestamp },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    New,
    Accepted,
    PartiallyFilled,
    Filled,
    PendingCancel,
    Cancelled,
    Rejected,
    Expired,
    /// Queued in the daemon and never sent (or never received by the venue): nothing executed.
    CancelledUnsent,
    /// The venue acknowledged it once and no longer knows it (venue reset with state loss).
    Lost,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 10] = [
        OrderStatus::New,
        OrderStatus::Accepted,
        OrderStatus::PartiallyFilled,
        OrderStatus::Filled,
        OrderStatus::PendingCancel,
        OrderStatus::Cancelled,
        OrderStatus::Rejected,
        OrderStatus::Expired,
        OrderStatus::CancelledUnsent,
        OrderStatus::Lost,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Filled
                | OrderStatus::Cancelled
                | OrderStatus::Rejected
                | OrderStatus::Expired
                | OrderStatus::CancelledUnsent
                | OrderStatus::Lost
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::New => "new",
            OrderStatus::Accepted => "accepted",
            OrderStatus::PartiallyFilled => "partially_filled",
            OrderStatus::Filled => "filled",
            OrderStatus::PendingCancel => "pending_cancel",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Expired => "expired",
            OrderStatus::CancelledUnsent => "cancelled_unsent",
            OrderStatus::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ValidationError::new("order status", format!("{s:?} is unknown")))
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything needed to place an order. Immutable once created (a replace is a report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    pub client_order_id: ClientOrderId,
    pub strategy_id: Option<StrategyId>,
    pub aggregation_id: AggregationId,
    pub market_id: MarketId,
    pub product: Product,
    pub interval: DeliveryInterval,
    pub side: Side,
    pub quantity_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
    pub time_in_force: TimeInForce,
}

impl OrderRequest {
    /// Shape checks that need no market or risk context: positive quantity.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.quantity_mw <= Decimal::ZERO {
            return Err(ValidationError::new(
                "quantity_mw",
                format!("{} must be greater than 0", self.quantity_mw),
            ));
        }
        Ok(())
    }
}

/// What the venue said about an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ExecKind {
    Accepted,
    Rejected {
        reason: String,
    },
    Fill {
        fill_id: FillId,
        quantity_mw: Decimal,
        price_cny_per_mwh: Decimal,
    },
    Replaced {
        quantity_mw: Decimal,
        price_cny_per_mwh: Decimal,
    },
    CancelRejected {
        reason: String,
    },
    Cancelled {
        reason: String,
    },
    Expired,
}

/// An execution report. `seq` is the venue's per-account sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecReport {
    pub seq: u64,
    pub client_order_id: ClientOrderId,
    pub venue_order_id: Option<String>,
    pub kind: ExecKind,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OrderError {
    #[error("order {id}: illegal transition from {from} on {event}")]
    IllegalTransition {
        id: ClientOrderId,
        from: OrderStatus,
        event: &'static str,
    },
    #[error("order {id}: fill of {fill_mw} MW would take filled {filled_mw} MW above the order quantity {quantity_mw} MW")]
    Overfill {
        id: ClientOrderId,
        fill_mw: Decimal,
        filled_mw: Decimal,
        quantity_mw: Decimal,
    },
    #[error("order {id}: fill quantity {fill_mw} MW must be greater than 0")]
    NonPositiveFill { id: ClientOrderId, fill_mw: Decimal },
    #[error("order {id}: replace to {quantity_mw} MW is not above the filled {filled_mw} MW")]
    ReplaceBelowFilled {
        id: ClientOrderId,
        quantity_mw: Decimal,
        filled_mw: Decimal,
    },
    #[error("order {0} is unknown")]
    UnknownOrder(ClientOrderId),
    #[error("order {0} already exists: client order ids are never reused")]
    DuplicateClientOrderId(ClientOrderId),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// The result of applying a report or a local event to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The order moved (or stayed, for a partial fill) and changed: `from` → `to`.
    Transition { from: OrderStatus, to: OrderStatus },
    /// The report was stale or a duplicate: nothing changed.
    Stale,
}

/// An order with its live state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub request: OrderRequest,
    pub status: OrderStatus,
    pub quantity_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
    pub filled_mw: Decimal,
    /// Sum of fill quantity × fill price, for the average fill price.
    pub filled_value: Decimal,
    pub venue_order_id: Option<String>,
    pub last_report_seq: u64,
    pub fill_ids: Vec<FillId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Set when the order was adopted from the venue at reconciliation, not sent by us.
    pub recovered: bool,
}

impl Order {
    pub fn new(request: OrderRequest, at: Timestamp) -> Result<Self, OrderError> {
        request.validate()?;
        Ok(Self {
            quantity_mw: request.quantity_mw,
            price_cny_per_mwh: request.price_cny_per_mwh,
            request,
            status: OrderStatus::New,
            filled_mw: Decimal::ZERO,
            filled_value: Decimal::ZERO,
            venue_order_id: None,
            last_report_seq: 0,
            fill_ids: Vec::new(),
            created_at: at,
            updated_at: at,
            recovered: false,
        })
    }

    pub fn id(&self) -> &ClientOrderId {
        &self.request.client_order_id
    }

    pub fn remaining_mw(&self) -> Decimal {
        self.quantity_mw - self.filled_mw
    }

    pub fn is_open(&self) -> bool {
        !self.status.is_terminal()
    }

    pub fn average_fill_price(&self) -> Option<Decimal> {
        (self.filled_mw > Decimal::ZERO).then(|| self.filled_value / self.filled_mw)
    }

    fn illegal(&self, event: &'static str) -> OrderError {
        OrderError::IllegalTransition {
            id: self.id().clone(),
            from: self.status,
            event,
        }
    }

    /// No report from the venue yet (the order left `New` only through a local cancel).
    fn never_acknowledged(&self) -> bool {
        self.last_report_seq == 0 && self.venue_order_id.is_none() && self.fill_ids.is_empty()
    }

    /// The working state an order returns to when a cancel is refused.
    fn working_status(&self) -> OrderStatus {
        if self.filled_mw > Decimal::ZERO {
            OrderStatus::PartiallyFilled
        } else {
            OrderStatus::Accepted
        }
    }

    /// Local event: we asked the venue to cancel.
    pub fn request_cancel(&mut self, at: Timestamp) -> Result<Applied, OrderError> {
        match self.status {
            OrderStatus::New | OrderStatus::Accepted | OrderStatus::PartiallyFilled => {
                Ok(self.move_to(OrderStatus::PendingCancel, at))
            }
            _ => Err(self.illegal("cancel_requested")),
        }
    }

    /// Local event: the order never left the daemon (or the venue says it never received it).
    /// Only an order without any venue report may end so; on error it is unchanged.
    pub fn end_unsent(&mut self, at: Timestamp) -> Result<Applied, OrderError> {
        match self.status {
            OrderStatus::New | OrderStatus::PendingCancel if self.never_acknowledged() => {
                Ok(self.move_to(OrderStatus::CancelledUnsent, at))
            }
            _ => Err(self.illegal("unsent")),
        }
    }

    /// Local event: the venue does not know this order any more. Fills already applied stay.
    pub fn end_lost(&mut self, at: Timestamp) -> Result<Applied, OrderError> {
        if self.status.is_terminal() {
            return Err(self.illegal("lost"));
        }
        Ok(self.move_to(OrderStatus::Lost, at))
    }

    /// Applies a venue report. Stale reports (seq not above the last applied) and duplicate
    /// fills are [`Applied::Stale`]. On error the order is unchanged.
    pub fn apply_report(&mut self, report: &ExecReport) -> Result<Applied, OrderError> {
        if report.seq <= self.last_report_seq {
            return Ok(Applied::Stale);
        }
        if let ExecKind::Fill { fill_id, .. } = &report.kind {
            if self.fill_ids.contains(fill_id) {
                return Ok(Applied::Stale);
            }
        }
        let applied = self.transition(report)?;
        self.last_report_seq = report.seq;
        if self.venue_order_id.is_none() {
            self.venue_order_id.clone_from(&report.venue_order_id);
        }
        Ok(applied)
    }

    fn transition(&mut self, report: &ExecReport) -> Result<Applied, OrderError> {
        use OrderStatus as S;
        let at = report.at;
        if self.status.is_terminal() {
            return Err(self.illegal(exec_kind_name(&report.kind)));
        }
        match &report.kind {
            // A cancel may be requested before the venue acknowledged the order (`New` →
            // `PendingCancel`); the venue still reports the order's fate first, in sequence.
            // Its ack keeps the cancel pending, its reject finishes the order.
            ExecKind::Accepted => match self.status {
                S::New => Ok(self.move_to(S::Accepted, at)),
                S::PendingCancel if self.never_acknowledged() => {
                    Ok(self.move_to(S::PendingCancel, at))
                }
                _ => Err(self.illegal("accepted")),
            },
            ExecKind::Rejected { .. } => match self.status {
                S::New => Ok(self.move_to(S::Rejected, at)),
                S::PendingCancel if self.never_acknowledged() => Ok(self.move_to(S::Rejected, at)),
                _ => Err(self.illegal("rejected")),
            },
            ExecKind::Fill {
                fill_id,
                quantity_mw,
                price_cny_per_mwh,
            } => self.apply_fill(*fill_id, *quantity_mw, *price_cny_per_mwh, at),
            ExecKind::Replaced {
                quantity_mw,
                price_cny_per_mwh,
            } => self.apply_replace(*quantity_mw, *price_cny_per_mwh, at),
            ExecKind::CancelRejected { .. } => match self.status {
                S::PendingCancel => Ok(self.move_to(self.working_status(), at)),
                _ => Err(self.illegal("cancel_rejected")),
            },
            ExecKind::Cancelled { .. } => Ok(self.move_to(S::Cancelled, at)),
            ExecKind::Expired => Ok(self.move_to(S::Expired, at)),
        }
    }

    fn apply_fill(
        &mut self,
        fill_id: FillId,
        quantity_mw: Decimal,
        price: Decimal,
        at: Timestamp,
    ) -> Result<Applied, OrderError> {
        if quantity_mw <= Decimal::ZERO {
            return Err(OrderError::NonPositiveFill {
                id: self.id().clone(),
                fill_mw: quantity_mw,
            });
        }
        let filled_after = self.filled_mw + quantity_mw;
        if filled_after > self.quantity_mw {
            return Err(OrderError::Overfill {
                id: self.id().clone(),
                fill_mw: quantity_mw,
                filled_mw: self.filled_mw,
                quantity_mw: self.quantity_mw,
            });
        }
        self.filled_mw = filled_after;
        self.filled_value += quantity_mw * price;
        self.fill_ids.push(fill_id);
        let to = if filled_after == self.quantity_mw {
            OrderStatus::Filled
        } else if self.status == OrderStatus::PendingCancel {
            OrderStatus::PendingCancel
        } else {
            OrderStatus::PartiallyFilled
        };
        Ok(self.move_to(to, at))
    }

    fn apply_replace(
        &mut self,
        quantity_mw: Decimal,
        price: Decimal,
        at: Timestamp,
    ) -> Result<Applied, OrderError> {
        if !matches!(
            self.status,
            OrderStatus::Accepted | OrderStatus::PartiallyFilled
        ) {
            return Err(self.illegal("replaced"));
        }
        if quantity_mw <= self.filled_mw {
            return Err(OrderError::ReplaceBelowFilled {
                id: self.id().clone(),
                quantity_mw,
                filled_mw: self.filled_mw,
            });
        }
        self.quantity_mw = quantity_mw;
        self.price_cny_per_mwh = price;
        let status = self.status;
        Ok(self.move_to(status, at))
    }

    fn move_to(&mut self, to: OrderStatus, at: Timestamp) -> Applied {
        let from = self.status;
        debug_assert!(
            !from.is_terminal(),
            "terminal order {} must not move",
            self.id()
        );
        self.status = to;
        self.updated_at = at;
        Applied::Transition { from, to }
    }
}

pub fn exec_kind_name(kind: &ExecKind) -> &'static str {
    match kind {
        ExecKind::Accepted => "accepted",
        ExecKind::Rejected { .. } => "rejected",
        ExecKind::Fill { .. } => "fill",
        ExecKind::Replaced { .. } => "replaced",
        ExecKind::CancelRejected { .. } => "cancel_rejected",
        ExecKind::Cancelled { .. } => "cancelled",
        ExecKind::Expired => "expired",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use rust_decimal_macros::dec;

    pub fn at(minute: u32) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 3, 1, 8, minute, 0).unwrap()
    }

    pub fn request(id: &str, side: Side, qty: Decimal, price: Decimal) -> OrderRequest {
        OrderRequest {
            client_order_id: ClientOrderId::new(id).unwrap(),
            strategy_id: Some(StrategyId(1)),
            aggregation_id: AggregationId(1),
            market_id: MarketId(1),
            product: Product::Energy,
            interval: DeliveryInterval::starting_at(at(0) + chrono::Duration::hours(2)).unwrap(),
            side,
            quantity_mw: qty,
            price_cny_per_mwh: price,
            time_in_force: TimeInForce::Gtc,
        }
    }

    pub fn report(seq: u64, id: &str, kind: ExecKind) -> ExecReport {
        ExecReport {
            seq,
            client_order_id: ClientOrderId::new(id).unwrap(),
            venue_order_id: Some(format!("v-{id}")),
            kind,
            at: at(1),
        }
    }

    pub fn fill(fill_id: u64, qty: Decimal, price: Decimal) -> ExecKind {
        ExecKind::Fill {
            fill_id: FillId(fill_id),
            quantity_mw: qty,
            price_cny_per_mwh: price,
        }
    }

    fn order() -> Order {
        Order::new(request("o1", Side::Sell, dec!(2), dec!(300)), at(0)).unwrap()
    }

    #[test]
    fn full_life_new_accepted_partial_filled() {
        let mut o = order();
        assert_eq!(
            o.apply_report(&report(1, "o1", ExecKind::Accepted))
                .unwrap(),
            Applied::Transition {
                from: OrderStatus::New,
                to: OrderStatus::Accepted
            }
        );
        o.apply_report(&report(2, "o1", fill(10, dec!(0.5), dec!(310))))
            .unwrap();
        assert_eq!(o.status, OrderStatus::PartiallyFilled);
        o.apply_report(&report(3, "o1", fill(11, dec!(1.5), dec!(300))))
            .unwrap();
        assert_eq!(o.status, OrderStatus::Filled);
        assert_eq!(o.filled_mw, dec!(2));
        assert_eq!(o.average_fill_price(), Some(dec!(302.5)));
        assert_eq!(o.venue_order_id.as_deref(), Some("v-o1"));
    }

    #[test]
    fn late_accepted_never_revives_a_filled_order() {
        let mut o = order();
        o.apply_report(&report(5, "o1", fill(1, dec!(2), dec!(300))))
            .unwrap();
        assert_eq!(o.status, OrderStatus::Filled);
        // An older "accepted" arriving late is stale.
        assert_eq!(
            o.apply_report(&report(4, "o1", ExecKind::Accepted))
                .unwrap(),
            Applied::Stale
        );
        // Even with a newer seq, a terminal order stays terminal: it is an error.
        let err = o
            .apply_report(&report(6, "o1", ExecKind::Accepted))
            .unwrap_err();
        assert!(matches!(
            err,
            OrderError::IllegalTransition {
                from: OrderStatus::Filled,
                ..
            }
        ));
        assert_eq!(o.status, OrderStatus::Filled);
        assert_eq!(o.last_report_seq, 5);
    }

    #[test]
    fn duplicate_fill_is_applied_once_and_overfill_is_refused() {
        let mut o = order();
        o.apply_report(&report(1, "o1", fill(7, dec!(1), dec!(300))))
            .unwrap();
        assert_eq!(
            o.apply_report(&report(2, "o1", fill(7, dec!(1), dec!(300))))
                .unwrap(),
            Applied::Stale
        );
        assert_eq!(o.filled_mw, dec!(1));
        let err = o
            .apply_report(&report(3, "o1", fill(8, dec!(1.1), dec!(300))))
            .unwrap_err();
        assert!(matches!(err, OrderError::Overfill { .. }));
        assert_eq!(o.filled_mw, dec!(1));
        assert_eq!(o.last_report_seq, 1);
    }

    #[test]
    fn cancel_requested_before_the_ack_takes_the_ack_then_the_cancel() {
        let mut o = order();
        o.request_cancel(at(1)).unwrap();
        assert_eq!(o.status, OrderStatus::PendingCancel);
        // The venue acknowledged the order before it saw the cancel.
        let applied = o
            .apply_report(&report(1, "o1", ExecKind::Accepted))
            .unwrap();
        assert!(matches!(applied, Applied::Transition { .. }));
        assert_eq!(o.status, OrderStatus::PendingCancel);
        assert_eq!(o.last_report_seq, 1);
        // A second ack is no longer the first word from the venue: illegal.
        assert!(o
            .apply_report(&report(2, "o1", ExecKind::Accepted))
            .is_err());
        o.apply_report(&report(
            3,
            "o1",
            ExecKind::Cancelled {
                reason: "user".into(),
            },
        ))
        .unwrap();
        assert_eq!(o.status, OrderStatus::Cancelled);
    }

    #[test]
    fn cancel_requested_before_a_reject_ends_rejected() {
        let mut o = order();
        o.request_cancel(at(1)).unwrap();
        o.apply_report(&report(
            1,
            "o1",
            ExecKind::Rejected {
                reason: "price above cap".into(),
            },
        ))
        .unwrap();
        assert_eq!(o.status, OrderStatus::Rejected);
        // An order acknowledged before the cancel cannot be rejected afterwards.
        let mut o = order();
        o.apply_report(&report(1, "o1", ExecKind::Accepted))
            .unwrap();
        o.request_cancel(at(2)).unwrap();
        let rejected = ExecKind::Rejected {
            reason: "late".into(),
        };
        assert!(o.apply_report(&report(2, "o1", rejected)).is_err());
        assert_eq!(o.status, OrderStatus::PendingCancel);
    }

    #[test]
    fn cancel_flow_and_cancel_reject_restore_working_state() {
        let mut o = order();
        o.apply_report(&report(1, "o1", ExecKind::Accepted))
            .unwrap();
        o.apply_report(&report(2, "o1", fill(1, dec!(1), dec!(300))))
            .unwrap();
        o.request_cancel(at(2)).unwrap();
        assert_eq!(o.status, OrderStatus::PendingCancel);
        o.apply_report(&report(
            3,
            "o1",
            ExecKind::CancelRejected {
                reason: "late".into(),
            },
        ))
        .unwrap();
        assert_eq!(o.status, OrderStatus::PartiallyFilled);
        o.request_cancel(at(3)).unwrap();
        // A fill racing the cancel keeps it pending.
        o.apply_report(&report(4, "o1", fill(2, dec!(0.5), dec!(300))))
            .unwrap();
        assert_eq!(o.status, OrderStatus::PendingCancel);
        o.apply_report(&report(
            5,
            "o1",
            ExecKind::Cancelled {
                reason: "user".into(),
            },
        ))
        .unwrap();
        assert_eq!(o.status, OrderStatus::Cancelled);
        assert!(o.request_cancel(at(4)).is_err());
    }

    #[test]
    fn illegal_transitions_are_errors_and_change_nothing() {
        let mut o = order();
        o.apply_report(&report(1, "o1", ExecKind::Accepted))
            .unwrap();
        let before = o.clone();
        assert!(o
            .apply_report(&report(2, "o1", ExecKind::Accepted))
            .is_err());
        assert!(o
            .apply_report(&report(3, "o1", ExecKind::Rejected { reason: "x".into() }))
            .is_err());
        assert!(o
            .apply_report(&report(
                4,
                "o1",
                ExecKind::CancelRejected { reason: "x".into() }
            ))
            .is_err());
        assert_eq!(o, before);
    }

    #[test]
    fn replace_changes_quantity_and_price_but_not_below_filled() {
        let mut o = order();
        o.apply_report(&report(1, "o1", ExecKind::Accepted))
            .unwrap();
        o.apply_report(&report(2, "o1", fill(1, dec!(1), dec!(300))))
            .unwrap();
        let replaced = ExecKind::Replaced {
            quantity_mw: dec!(3),
            price_cny_per_mwh: dec!(280),
        };
        o.apply_report(&report(3, "o1", replaced)).unwrap();
        assert_eq!((o.quantity_mw, o.price_cny_per_mwh), (dec!(3), dec!(280)));
        let too_small = ExecKind::Replaced {
            quantity_mw: dec!(1),
            price_cny_per_mwh: dec!(280),
        };
        assert!(matches!(
            o.apply_report(&report(4, "o1", too_small)),
            Err(OrderError::ReplaceBelowFilled { .. })
        ));
    }

    #[test]
    fn non_positive_quantity_is_refused_at_creation() {
        let err = Order::new(request("o2", Side::Buy, dec!(0), dec!(1)), at(0)).unwrap_err();
        assert!(err.to_string().contains("quantity_mw"));
    }
}
