//! The order ledger: every order and position, changed only by [`OrderEvent`]s.
//!
//! The journal stores exactly these events, so replaying the journal through
//! [`OrderLedger::apply`] rebuilds the same orders and positions (no look-back window).
//!
//! Invariants:
//! - A client order id is created once; a second `Created` for it is refused.
//! - Positions change only through fills applied to orders.
//! - Stale and duplicate reports change nothing and are counted in `stale_reports`.

use crate::ids::ClientOrderId;
use crate::order::{Applied, ExecKind, ExecReport, Order, OrderError, OrderRequest, OrderStatus};
use crate::position::{Fill, Position, PositionKey};
use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Why an order changed. Journaled with every transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum OrderEventKind {
    /// We created the order (before it is sent).
    Created { request: OrderRequest },
    /// Reconciliation found the order at the venue but not in our journal: adopted.
    Recovered { request: OrderRequest },
    /// We asked the venue to cancel.
    CancelRequested { reason: String },
    /// The venue reported on the order.
    Report { report: ExecReport },
    /// The order never left the daemon, or the venue never received it: `CancelledUnsent`.
    Unsent { reason: String },
    /// The venue does not know the order any more (venue reset): `Lost`. `venue_account_seq`,
    /// when set, is the reset venue's report sequence: the ledger's high-water mark restarts
    /// there, so later reports of the new venue session apply.
    Lost {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        venue_account_seq: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub client_order_id: ClientOrderId,
    pub at: Timestamp,
    pub kind: OrderEventKind,
}

impl OrderEvent {
    pub fn name(&self) -> &'static str {
        match &self.kind {
            OrderEventKind::Created { .. } => "created",
            OrderEventKind::Recovered { .. } => "recovered",
            OrderEventKind::CancelRequested { .. } => "cancel_requested",
            OrderEventKind::Report { report } => crate::order::exec_kind_name(&report.kind),
            OrderEventKind::Unsent { .. } => "unsent",
            OrderEventKind::Lost { .. } => "lost",
        }
    }
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `None` for a creation; the status before otherwise.
    pub from: Option<OrderStatus>,
    /// `None` when the event was stale and changed nothing.
    pub to: Option<OrderStatus>,
    pub fill: Option<Fill>,
}

#[derive(Debug, Default, Clone)]
pub struct OrderLedger {
    orders: HashMap<ClientOrderId, Order>,
    positions: BTreeMap<PositionKey, Position>,
    /// Highest venue report sequence applied, across all orders of the account.
    last_report_seq: u64,
    pub stale_reports: u64,
}

impl OrderLedger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn order(&self, id: &ClientOrderId) -> Option<&Order> {
        self.orders.get(id)
    }

    pub fn orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.values()
    }

    pub fn open_orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.values().filter(|o| o.is_open())
    }

    pub fn positions(&self) -> &BTreeMap<PositionKey, Position> {
        &self.positions
    }

    pub fn position(&self, key: &PositionKey) -> Option<&Position> {
        self.positions.get(key)
    }

    pub fn last_report_seq(&self) -> u64 {
        self.last_report_seq
    }

    pub fn contains(&self, id: &ClientOrderId) -> bool {
        self.orders.contains_key(id)
    }

    /// Applies one event. On error nothing changed.
    pub fn apply(&mut self, event: &OrderEvent) -> Result<Outcome, OrderError> {
        match &event.kind {
            OrderEventKind::Created { request } => self.create(request, event.at, false),
            OrderEventKind::Recovered { request } => self.create(request, event.at, true),
            OrderEventKind::CancelRequested { .. } => {
                let order = self.order_mut(&event.client_order_id)?;
                let from = order.status;
                order.request_cancel(event.at)?;
                Ok(Outcome {
                    from: Some(from),
                    to: Some(OrderStatus::PendingCancel),
                    fill: None,
                })
            }
            OrderEventKind::Report { report } => self.apply_report(report),
            OrderEventKind::Unsent { .. } => {
                let order = self.order_mut(&event.client_order_id)?;
                let from = order.status;
                order.end_unsent(event.at)?;
                Ok(Outcome {
                    from: Some(from),
                    to: Some(OrderStatus::CancelledUnsent),
                    fill: None,
                })
            }
            OrderEventKind::Lost {
                venue_account_seq, ..
            } => {
                let order = self.order_mut(&event.client_order_id)?;
                let from = order.status;
                order.end_lost(event.at)?;
                if let Some(seq) = venue_account_seq {
                    self.last_report_seq = *seq;
                }
                Ok(Outcome {
                    from: Some(from),
                    to: Some(OrderStatus::Lost),
                    fill: None,
                })
            }
        }
    }

    /// Seeds the ledger with an order's full state (a venue adapter taking over the journal's
    /// open orders at start-up), so its status is the journal's, not `new`. Refused for an id
    /// already held.
    pub fn restore_order(&mut self, order: Order) -> Result<(), OrderError> {
        if self.orders.contains_key(order.id()) {
            return Err(OrderError::DuplicateClientOrderId(order.id().clone()));
        }
        self.last_report_seq = self.last_report_seq.max(order.last_report_seq);
        self.orders.insert(order.id().clone(), order);
        Ok(())
    }

    /// Restarts the account's report high-water mark (a venue session reset: the new
    /// session's sequence starts again).
    pub fn rebase_report_seq(&mut self, seq: u64) {
        self.last_report_seq = seq;
    }

    fn create(
        &mut self,
        request: &OrderRequest,
        at: Timestamp,
        recovered: bool,
    ) -> Result<Outcome, OrderError> {
        if self.orders.contains_key(&request.client_order_id) {
            return Err(OrderError::DuplicateClientOrderId(
                request.client_order_id.clone(),
            ));
        }
        let mut order = Order::new(request.clone(), at)?;
        order.recovered = recovered;
        self.orders.insert(request.client_order_id.clone(), order);
        Ok(Outcome {
            from: None,
            to: Some(OrderStatus::New),
            fill: None,
        })
    }

    fn order_mut(&mut self, id: &ClientOrderId) -> Result<&mut Order, OrderError> {
        self.orders
            .get_mut(id)
            .ok_or_else(|| OrderError::UnknownOrder(id.clone()))
    }

    fn apply_report(&mut self, report: &ExecReport) -> Result<Outcome, OrderError> {
        let order = self
            .orders
            .get_mut(&report.client_order_id)
            .ok_or_else(|| OrderError::UnknownOrder(report.client_order_id.clone()))?;
        let from = order.status;
        match order.apply_report(report)? {
            Applied::Stale => {
                self.stale_reports += 1;
                Ok(Outcome {
                    from: Some(from),
                    to: None,
                    fill: None,
                })
            }
            Applied::Transition { to, .. } => {
                let fill = fill_of(order, report);
                if let Some(fill) = &fill {
                    self.positions.entry(fill.key).or_default().apply_fill(
                        fill.side,
                        fill.quantity_mw,
                        fill.price_cny_per_mwh,
                    );
                }
                self.last_report_seq = self.last_report_seq.max(report.seq);
                Ok(Outcome {
                    from: Some(from),
                    to: Some(to),
                    fill,
                })
            }
        }
    }
}

fn fill_of(order: &Order, report: &ExecReport) -> Option<Fill> {
    let ExecKind::Fill {
        fill_id,
        quantity_mw,
        price_cny_per_mwh,
    } = &report.kind
    else {
        return None;
    };
    let r = &order.request;
    Some(Fill {
        fill_id: *fill_id,
        client_order_id: r.client_order_id.clone(),
        key: PositionKey {
            aggregation_id: r.aggregation_id,
            market_id: r.market_id,
            interval: r.interval,
        },
        product: r.product,
        side: r.side,
        quantity_mw: *quantity_mw,
        price_cny_per_mwh: *price_cny_per_mwh,
        report_seq: report.seq,
        at: report.at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::tests::{at, fill, report, request};
    use crate::order::Side;
    use rust_decimal_macros::dec;

    fn created(id: &str, side: Side) -> OrderEvent {
        OrderEvent {
            client_order_id: ClientOrderId::new(id).unwrap(),
            at: at(0),
            kind: OrderEventKind::Created {
                request: request(id, side, dec!(2), dec!(300)),
            },
        }
    }

    fn reported(seq: u64, id: &str, kind: ExecKind) -> OrderEvent {
        OrderEvent {
            client_order_id: ClientOrderId::new(id).unwrap(),
            at: at(1),
            kind: OrderEventKind::Report {
                report: report(seq, id, kind),
            },
        }
    }

    #[test]
    fn fills_build_positions_and_replay_gives_the_same_state() {
        let events = vec![
            created("a", Side::Sell),
            created("b", Side::Buy),
            reported(1, "a", ExecKind::Accepted),
            reported(2, "a", fill(1, dec!(1.5), dec!(320))),
            reported(3, "b", fill(2, dec!(0.5), dec!(100))),
            reported(2, "a", fill(1, dec!(1.5), dec!(320))), // stale replay
        ];
        let mut ledger = OrderLedger::new();
        for e in &events {
            ledger.apply(e).unwrap();
        }
        assert_eq!(ledger.stale_reports, 1);
        let key = ledger
            .order(&ClientOrderId::new("a").unwrap())
            .map(|o| PositionKey {
                aggregation_id: o.request.aggregation_id,
                market_id: o.request.market_id,
                interval: o.request.interval,
            });
        let pos = ledger.position(&key.unwrap()).unwrap();
        assert_eq!(pos.sold_mw, dec!(1.5));
        assert_eq!(pos.bought_mw, dec!(0.5));
        assert_eq!(pos.net_sold_mw(), dec!(1.0));
        assert_eq!(ledger.last_report_seq(), 3);

        let mut replayed = OrderLedger::new();
        for e in &events {
            replayed.apply(e).unwrap();
        }
        assert_eq!(replayed.positions(), ledger.positions());
        let mut a: Vec<_> = ledger.orders().cloned().collect();
        let mut b: Vec<_> = replayed.orders().cloned().collect();
        a.sort_by(|x, y| x.id().cmp(y.id()));
        b.sort_by(|x, y| x.id().cmp(y.id()));
        assert_eq!(a, b);
    }

    #[test]
    fn unsent_and_lost_are_terminal_journaled_states_and_lost_rebases_the_report_seq() {
        let mut ledger = OrderLedger::new();
        ledger.apply(&created("a", Side::Sell)).unwrap();
        ledger.apply(&created("b", Side::Buy)).unwrap();
        ledger.apply(&reported(7, "b", ExecKind::Accepted)).unwrap();
        let local = |id: &str, kind| OrderEvent {
            client_order_id: ClientOrderId::new(id).unwrap(),
            at: at(2),
            kind,
        };
        // An acknowledged order cannot end unsent: the venue had it.
        let unsent_b = local("b", OrderEventKind::Unsent { reason: "x".into() });
        assert!(ledger.apply(&unsent_b).is_err());
        let unsent_a = local(
            "a",
            OrderEventKind::Unsent {
                reason: "shutdown".into(),
            },
        );
        let out = ledger.apply(&unsent_a).unwrap();
        assert_eq!(out.to, Some(OrderStatus::CancelledUnsent));
        let lost_b = local(
            "b",
            OrderEventKind::Lost {
                reason: "venue_reset".into(),
                venue_account_seq: Some(0),
            },
        );
        assert_eq!(ledger.apply(&lost_b).unwrap().to, Some(OrderStatus::Lost));
        assert_eq!(
            ledger.last_report_seq(),
            0,
            "the new venue session starts again"
        );
        assert_eq!(ledger.open_orders().count(), 0);
        // Terminal for good: a late report or a second end changes nothing.
        assert!(ledger.apply(&reported(8, "b", ExecKind::Accepted)).is_err());
        assert!(ledger.apply(&lost_b).is_err());
        assert!(ledger.apply(&unsent_a).is_err());
        assert!(OrderStatus::Lost.is_terminal() && OrderStatus::CancelledUnsent.is_terminal());
        assert_eq!(
            OrderStatus::parse("cancelled_unsent").unwrap(),
            OrderStatus::CancelledUnsent
        );
        // The journal's round trip of the new events.
        let json = serde_json::to_string(&lost_b).unwrap();
        assert_eq!(serde_json::from_str::<OrderEvent>(&json).unwrap(), lost_b);
    }

    #[test]
    fn a_restored_order_keeps_its_status() {
        let mut source = OrderLedger::new();
        source.apply(&created("a", Side::Sell)).unwrap();
        source.apply(&reported(3, "a", ExecKind::Accepted)).unwrap();
        let order = source
            .order(&ClientOrderId::new("a").unwrap())
            .unwrap()
            .clone();
        let mut ledger = OrderLedger::new();
        ledger.restore_order(order.clone()).unwrap();
        assert_eq!(
            ledger.order(order.id()).unwrap().status,
            OrderStatus::Accepted
        );
        assert_eq!(ledger.last_report_seq(), 3);
        assert!(ledger.restore_order(order).is_err());
    }

    #[test]
    fn reused_client_order_id_and_unknown_orders_are_refused() {
        let mut ledger = OrderLedger::new();
        ledger.apply(&created("a", Side::Sell)).unwrap();
        assert!(matches!(
            ledger.apply(&created("a", Side::Buy)),
            Err(OrderError::DuplicateClientOrderId(_))
        ));
        assert!(matches!(
            ledger.apply(&reported(1, "zz", ExecKind::Accepted)),
            Err(OrderError::UnknownOrder(_))
        ));
    }
}
