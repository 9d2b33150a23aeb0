//! The Settlement actor (one per aggregation): settles each delivered interval with the
//! engine's `SettlementRecord::settle` (energy, real-time against day-ahead, the province's
//! deviation penalty; exact decimals, rounded once per line) and writes it to the store as a
//! draft record, through a bounded channel and a writer task (the actor never awaits the store).
//!
//! Inputs come from the aggregation's Dispatch actor ([`ToSettlement::Delivered`]): the ended
//! interval's positions per market, the metered delivery and each resource's schedule and
//! delivery. Positions become the engine's cleared quantities: day-ahead markets the
//! `day_ahead` line, real-time and capacity-lease markets the `real_time` line; the quantity is
//! the net sold MW and the price the net value over it (a position netting to 0 MW settles
//! nothing). Regulation, reserve and demand-response positions carry no capacity or mileage
//! price here and are logged, not settled.
//!
//! A stored record holds one interval: `trading_day` is the interval's local day in its
//! market's time zone, `market_id` the real-time market if one was traded (else day-ahead),
//! `total_cny` the net (revenue + penalties), its lines are the engine's lines then one
//! `resource_share` line per resource (quantity = energy MWh, amount = net share), and
//! `detail` holds the engine record as JSON (status `draft`, the penalty rule and the rates
//! table), so the statement can always be reproduced.
//!
//! Invariants: a record the writer channel cannot take is counted
//! (`vpp_settlement_records_total{result="overflow"}`) and logged at error, never silently
//! lost; an interval the engine refuses is counted (`result="refused"`) and logged.

use crate::mailbox::{Refusable, Refused};
use crate::metrics::{Counter, Gauge, Metrics};
use crate::supervisor::{Handles, LogicFault, SupervisedLogic};
use actix::Message;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use vpp_engine::clock::Clock;
use vpp_engine::ids::{AggregationId, MarketId, ResourceId};
use vpp_engine::market::{DeliveryInterval, Market, MarketKind};
use vpp_engine::position::Position;
use vpp_engine::settlement::{
    Cleared, Currency, DayInput, IntervalInput, PenaltyRule, RatesTable, ResourceDelivery,
    ResourceInfo, SettlementRecord,
};
use vpp_engine::template::ResourceKind;
use vpp_persistence::{SettlementLine as StoredLine, SettlementRecord as StoredRecord, Store};

/// Counter of settlement records (label `result`: `queued`, `overflow`, `refused`, `written`,
/// `failed`).
pub const RECORDS_TOTAL: &str = "vpp_settlement_records_total";

/// One ended interval of one aggregation, as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalDelivery {
    pub aggregation_id: AggregationId,
    pub interval: DeliveryInterval,
    pub positions: Vec<(MarketId, Position)>,
    /// The aggregation's metered delivery above its baselines, MW (mean over the interval).
    pub delivered_mw: Decimal,
    pub resources: Vec<ResourceDelivery>,
}

/// Everything the Settlement actor receives.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Refused>")]
pub enum ToSettlement {
    Delivered(IntervalDelivery),
}

impl Refusable for ToSettlement {
    fn refuse(self, reason: &Refused) {
        let ToSettlement::Delivered(d) = &self;
        tracing::error!(reason = %reason, aggregation = %d.aggregation_id, interval = %d.interval,
            "delivered interval refused by settlement: not settled");
    }
}

/// The producer side of the settlement writer: a bounded channel to a task inserting records.
#[derive(Clone)]
pub struct SettlementWriter {
    tx: Option<mpsc::Sender<StoredRecord>>,
    queued: Counter,
    overflow: Counter,
}

impl SettlementWriter {
    /// A writer that stores nothing; every record counts as overflow.
    pub fn disabled() -> Self {
        Self {
            tx: None,
            queued: Counter::detached(),
            overflow: Counter::detached(),
        }
    }

    /// Starts the writer task on the current runtime; `capacity` bounds the channel.
    pub fn spawn(
        store: Store,
        capacity: usize,
        metrics: &Metrics,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<StoredRecord>(capacity.max(1));
        let written = metrics.counter(RECORDS_TOTAL, &[("result", "written")]);
        let failed = metrics.counter(RECORDS_TOTAL, &[("result", "failed")]);
        let task = tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                match store.insert_settlement(&r).await {
                    Ok(_) => written.inc(),
                    Err(e) => {
                        failed.inc();
                        tracing::error!(error = %e, aggregation = %r.aggregation_id,
                            "settlement record could not be written");
                    }
                }
            }
        });
        let writer = Self {
            tx: Some(tx),
            queued: metrics.counter(RECORDS_TOTAL, &[("result", "queued")]),
            overflow: metrics.counter(RECORDS_TOTAL, &[("result", "overflow")]),
        };
        (writer, task)
    }

    fn submit(&self, record: StoredRecord) {
        let refused = match &self.tx {
            Some(tx) => tx.try_send(record).err().map(|e| e.to_string()),
            None => Some("settlement writer disabled".to_owned()),
        };
        match refused {
            None => self.queued.inc(),
            Some(reason) => {
                // Rare (one record per aggregation and interval): log every one.
                self.overflow.inc();
                tracing::error!(%reason, overflow_total = self.overflow.get(),
                    "settlement record not stored");
            }
        }
    }
}

#[derive(Clone)]
pub struct SettlementWiring {
    pub aggregation_id: AggregationId,
    pub name: String,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub rule: PenaltyRule,
    pub rates: RatesTable,
    /// Every market of the park, by id (kind and time zone).
    pub markets: HashMap<MarketId, Market>,
    /// The kind of every member resource.
    pub kinds: BTreeMap<ResourceId, ResourceKind>,
    pub writer: SettlementWriter,
}

#[derive(Clone)]
pub struct SettlementLogic {
    w: SettlementWiring,
    revenue_cny: Decimal,
    penalties_cny: Decimal,
    revenue_gauge: Gauge,
    penalties_gauge: Gauge,
    refused: Counter,
    last: Option<SettlementRecord>,
}

impl SettlementLogic {
    pub fn new(w: SettlementWiring) -> Self {
        let labels = [("aggregation", w.name.as_str())];
        Self {
            revenue_gauge: w.metrics.gauge("vpp_settled_revenue_cny", &labels),
            penalties_gauge: w.metrics.gauge("vpp_settled_penalties_cny", &labels),
            refused: w.metrics.counter(RECORDS_TOTAL, &[("result", "refused")]),
            revenue_cny: Decimal::ZERO,
            penalties_cny: Decimal::ZERO,
            last: None,
            w,
        }
    }

    /// Revenue and penalties (negative) settled so far, CNY.
    pub fn totals_cny(&self) -> (Decimal, Decimal) {
        (self.revenue_cny, self.penalties_cny)
    }

    /// The last interval's engine record.
    pub fn last(&self) -> Option<&SettlementRecord> {
        self.last.as_ref()
    }

    /// The engine's input for one delivered interval, and the market the record is filed under.
    pub fn day_input(&self, d: &IntervalDelivery) -> Option<(DayInput, MarketId)> {
        let mut day_ahead: Option<(Decimal, Decimal, MarketId)> = None;
        let mut real_time: Option<(Decimal, Decimal, MarketId)> = None;
        let mut tz = None;
        for (market_id, p) in &d.positions {
            let Some(m) = self.w.markets.get(market_id) else {
                tracing::warn!(aggregation = %self.w.name, market = %market_id,
                    "position in an unknown market not settled");
                continue;
            };
            let slot = match m.kind {
                MarketKind::DayAhead => &mut day_ahead,
                MarketKind::RealTime | MarketKind::CapacityLease => &mut real_time,
                other => {
                    tracing::warn!(aggregation = %self.w.name, market = %m.name, kind = ?other,
                        "position carries no capacity or mileage price: not settled");
                    continue;
                }
            };
            tz.get_or_insert(m.timezone);
            let e = slot.get_or_insert((Decimal::ZERO, Decimal::ZERO, *market_id));
            e.0 += p.net_sold_mw();
            e.1 += p.sold_value - p.bought_value;
        }
        let cleared = |x: Option<(Decimal, Decimal, MarketId)>| {
            x.filter(|(mw, _, _)| !mw.is_zero())
                .map(|(mw, value, _)| Cleared {
                    quantity_mw: mw,
                    price_cny_per_mwh: value / mw,
                })
        };
        let market_id = real_time.or(day_ahead).map(|(_, _, id)| id)?;
        let tz = tz?;
        let input = IntervalInput {
            interval: d.interval,
            day_ahead: cleared(day_ahead),
            real_time: cleared(real_time),
            delivered_mw: d.delivered_mw,
            regulation: None,
            demand_response: None,
            resources: d
                .resources
                .iter()
                .filter(|r| self.w.kinds.contains_key(&r.resource_id))
                .copied()
                .collect(),
        };
        let resources = input
            .resources
            .iter()
            .map(|r| ResourceInfo {
                resource_id: r.resource_id,
                kind: self.w.kinds[&r.resource_id].clone(),
            })
            .collect();
        let day = DayInput {
            aggregation_id: d.aggregation_id,
            trading_day: d.interval.trading_day(tz),
            resources,
            intervals: vec![input],
        };
        Some((day, market_id))
    }

    fn settle(&mut self, d: &IntervalDelivery) {
        let Some((day, market_id)) = self.day_input(d) else {
            return;
        };
        let record = match SettlementRecord::settle(&day, &self.w.rule, self.w.rates) {
            Ok(r) => r,
            Err(e) => {
                self.refused.inc();
                tracing::error!(aggregation = %self.w.name, interval = %d.interval, error = %e,
                    "interval cannot be settled");
                return;
            }
        };
        let totals = record.totals(Currency::Cny);
        self.revenue_cny += totals.revenue;
        self.penalties_cny += totals.penalties;
        self.revenue_gauge
            .set(self.revenue_cny.trunc().try_into().unwrap_or(i64::MAX));
        self.penalties_gauge
            .set(self.penalties_cny.trunc().try_into().unwrap_or(i64::MIN));
        tracing::info!(aggregation = %self.w.name, interval = %d.interval,
            revenue_cny = %totals.revenue, penalties_cny = %totals.penalties, net_cny = %totals.net,
            "interval settled (draft)");
        self.w
            .writer
            .submit(stored(&record, market_id, self.w.clock.now()));
        self.last = Some(record);
    }
}

/// The store's form of an engine record (see the module docs).
pub fn stored(
    r: &SettlementRecord,
    market_id: MarketId,
    now: vpp_engine::Timestamp,
) -> StoredRecord {
    let mut lines: Vec<StoredLine> = r
        .lines()
        .iter()
        .map(|l| StoredLine {
            line_no: 0,
            kind: l.kind.as_str().to_owned(),
            resource_id: None,
            interval: Some(l.interval),
            quantity_mwh: l.quantity,
            price_cny_per_mwh: l.price_cny,
            amount_cny: l.amount_cny,
            note: format!("factor {}", l.factor),
        })
        .collect();
    for c in r.contributions(Currency::Cny) {
        lines.push(StoredLine {
            line_no: 0,
            kind: "resource_share".to_owned(),
            resource_id: Some(c.resource_id),
            interval: None,
            quantity_mwh: c.energy_mwh,
            price_cny_per_mwh: Decimal::ZERO,
            amount_cny: c.net,
            note: format!(
                "revenue {} penalty {} ({})",
                c.revenue_share, c.penalty_share, c.kind
            ),
        });
    }
    for (n, l) in lines.iter_mut().enumerate() {
        l.line_no = u32::try_from(n + 1).unwrap_or(u32::MAX);
    }
    let detail = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
    StoredRecord {
        id: 0,
        aggregation_id: r.aggregation_id(),
        market_id,
        trading_day: r.trading_day(),
        created_at: now,
        total_cny: r.totals(Currency::Cny).net,
        detail,
        lines,
    }
}

impl SupervisedLogic for SettlementLogic {
    type Snapshot = SettlementLogic;
    fn snapshot(&self) -> SettlementLogic {
        self.clone()
    }
}

impl Handles<ToSettlement> for SettlementLogic {
    type Reply = ();
    fn handle(&mut self, msg: ToSettlement) -> Result<(), LogicFault> {
        match msg {
            ToSettlement::Delivered(d) if d.aggregation_id == self.w.aggregation_id => {
                self.settle(&d);
            }
            ToSettlement::Delivered(d) => {
                tracing::warn!(aggregation = %self.w.name, other = %d.aggregation_id,
                    "delivery of another aggregation ignored");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The Settlement actor end to end against a store: delivered intervals sent to the running
    //! actor become draft records whose numbers are the engine's for the same interval, a
    //! clean delivery without penalty and an under-delivery beyond the band with one.
    use super::*;
    use crate::supervisor::{Runtime, SupervisedActor, SupervisorSpec};
    use chrono::TimeZone;
    use std::time::Duration;
    use vpp_engine::clock::ManualClock;
    use vpp_engine::order::Side;
    use vpp_engine::settlement::{LineKind, PriceBase};

    const AGG: AggregationId = AggregationId(3);
    const RT: MarketId = MarketId(1);
    const DA: MarketId = MarketId(2);

    fn market(id: MarketId, kind: MarketKind) -> Market {
        Market {
            id,
            name: format!("m{id}"),
            kind,
            timezone: chrono_tz::Asia::Shanghai,
            price_cap_cny_per_mwh: Decimal::from(1500),
            price_floor_cny_per_mwh: Decimal::from(-100),
            negative_prices_allowed: true,
            gate_closure_minutes_before: 0,
        }
    }

    fn rule() -> PenaltyRule {
        PenaltyRule {
            province: "yunnan".into(),
            tolerance_band_pct: Decimal::from(3),
            price_base: PriceBase::ClearingPrice,
            over_delivery_multiplier: Decimal::ONE,
            under_delivery_multiplier: Decimal::new(15, 1),
            exempt_kinds: vec![],
        }
    }

    fn sold(mw: Decimal, price: i64) -> Position {
        let mut p = Position::default();
        p.apply_fill(Side::Sell, mw, Decimal::from(price));
        p
    }

    fn d(mw: i64, scale: u32) -> Decimal {
        Decimal::new(mw, scale)
    }

    #[actix::test]
    async fn delivered_intervals_are_stored_as_draft_records_with_the_engines_numbers() {
        let start = chrono::Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let rt = Runtime::new(Arc::new(clock.clone()));
        let store = Store::open("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let (writer, _) = SettlementWriter::spawn(store.clone(), 16, &rt.metrics);
        let rates = RatesTable {
            cny_per_usd: d(72, 1),
            cny_per_eur: d(78, 1),
            as_of: start,
        };
        let kinds = BTreeMap::from([
            (ResourceId(1), ResourceKind::Pv),
            (ResourceId(2), ResourceKind::Storage),
        ]);
        let w = SettlementWiring {
            aggregation_id: AGG,
            name: "agg".into(),
            clock: Arc::new(clock.clone()),
            metrics: rt.metrics.clone(),
            rule: rule(),
            rates,
            markets: HashMap::from([
                (RT, market(RT, MarketKind::RealTime)),
                (DA, market(DA, MarketKind::DayAhead)),
            ]),
            kinds: kinds.clone(),
            writer,
        };
        let actor = SupervisedActor::new(
            SupervisorSpec::new("settlement/agg").mailbox_capacity(16),
            rt.clone(),
            SettlementLogic::new(w),
            |s: &SettlementLogic| Ok(s.clone()),
        )
        .unwrap()
        .start();

        let first = DeliveryInterval::containing(start);
        let second = first.next();
        // A clean day-ahead delivery: 1 MW sold at 300, 1 MW delivered.
        let clean = IntervalDelivery {
            aggregation_id: AGG,
            interval: first,
            positions: vec![(DA, sold(Decimal::ONE, 300))],
            delivered_mw: Decimal::ONE,
            resources: vec![
                ResourceDelivery {
                    resource_id: ResourceId(1),
                    scheduled_mw: d(5, 1),
                    delivered_mw: d(5, 1),
                },
                ResourceDelivery {
                    resource_id: ResourceId(2),
                    scheduled_mw: d(5, 1),
                    delivered_mw: d(5, 1),
                },
            ],
        };
        // Under-delivery beyond the band: 1 MW sold in real time at 400, 0.9 MW delivered.
        let short = IntervalDelivery {
            aggregation_id: AGG,
            interval: second,
            positions: vec![(RT, sold(Decimal::ONE, 400))],
            delivered_mw: d(9, 1),
            resources: vec![
                ResourceDelivery {
                    resource_id: ResourceId(1),
                    scheduled_mw: d(5, 1),
                    delivered_mw: d(4, 1),
                },
                ResourceDelivery {
                    resource_id: ResourceId(2),
                    scheduled_mw: d(5, 1),
                    delivered_mw: d(5, 1),
                },
            ],
        };
        for delivery in [clean.clone(), short.clone()] {
            actor
                .sender()
                .try_send(ToSettlement::Delivered(delivery))
                .unwrap();
        }

        let day = first.trading_day(chrono_tz::Asia::Shanghai);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let stored = loop {
            let records = store.list_settlements(day, 10).await.unwrap();
            if records.len() == 2 {
                break records;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "records stored: {}",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };

        // What the engine computes for the same intervals, built here by hand.
        let engine = |interval: DeliveryInterval,
                      da: Option<Cleared>,
                      rt: Option<Cleared>,
                      delivery: &IntervalDelivery| {
            let input = DayInput {
                aggregation_id: AGG,
                trading_day: day,
                resources: kinds
                    .iter()
                    .map(|(r, k)| ResourceInfo {
                        resource_id: *r,
                        kind: k.clone(),
                    })
                    .collect(),
                intervals: vec![IntervalInput {
                    interval,
                    day_ahead: da,
                    real_time: rt,
                    delivered_mw: delivery.delivered_mw,
                    regulation: None,
                    demand_response: None,
                    resources: delivery.resources.clone(),
                }],
            };
            SettlementRecord::settle(&input, &rule(), rates).unwrap()
        };
        let cleared = |mw: Decimal, price: i64| Cleared {
            quantity_mw: mw,
            price_cny_per_mwh: Decimal::from(price),
        };
        let expected = [
            engine(first, Some(cleared(Decimal::ONE, 300)), None, &clean),
            engine(second, None, Some(cleared(Decimal::ONE, 400)), &short),
        ];
        for (got, want) in stored.iter().zip(&expected) {
            assert_eq!(got.aggregation_id, AGG);
            assert_eq!(got.total_cny, want.totals(Currency::Cny).net);
            assert_eq!(got.detail["status"], "draft");
            let lines: Vec<(String, Decimal)> = got
                .lines
                .iter()
                .filter(|l| l.kind != "resource_share")
                .map(|l| (l.kind.clone(), l.amount_cny))
                .collect();
            let want_lines: Vec<(String, Decimal)> = want
                .lines()
                .iter()
                .map(|l| (l.kind.as_str().to_owned(), l.amount_cny))
                .collect();
            assert_eq!(lines, want_lines);
            let shares: Decimal = got
                .lines
                .iter()
                .filter(|l| l.kind == "resource_share")
                .map(|l| l.amount_cny)
                .sum();
            assert_eq!(shares, got.total_cny, "resource shares add up to the net");
        }
        // By hand: clean = 1 MW × 0.25 h × 300 = 75.00, no penalty; short = real-time 1 MW ×
        // 0.25 h × 400 = 100.00, penalty (0.1 − 3% × 1) MW × 0.25 h × 400 × 1.5 = 10.50.
        assert_eq!(stored[0].market_id, DA);
        assert_eq!(stored[0].total_cny, d(7500, 2));
        assert!(!stored[0]
            .lines
            .iter()
            .any(|l| l.kind == LineKind::DeviationPenalty.as_str()));
        assert_eq!(stored[1].market_id, RT);
        let penalty: Vec<Decimal> = stored[1]
            .lines
            .iter()
            .filter(|l| l.kind == LineKind::DeviationPenalty.as_str())
            .map(|l| l.amount_cny)
            .collect();
        assert_eq!(penalty, vec![d(-1050, 2)]);
        assert_eq!(stored[1].total_cny, d(8950, 2));
    }
}
