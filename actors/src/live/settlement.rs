//! The Settlement actor (one per aggregation): settles each delivered interval with the
//! engine's `SettlementRecord::settle` (energy, real-time against day-ahead, the province's
//! deviation penalty, regulation capacity and mileage, demand response; exact decimals,
//! rounded once per line) and writes it to the store as a draft record, through a bounded
//! channel and a writer task (the actor never awaits the store).
//!
//! Inputs:
//! - from the aggregation's Dispatch actor ([`ToSettlement::Delivered`]): the ended interval's
//!   positions per market, the metered delivery and each resource's schedule and delivery;
//! - from the MarketConnector ([`ToSettlement::Announced`]): what the venue announced for
//!   regulation and demand-response intervals (the ancillary result's mileage price, the DR
//!   invitation's price), kept per (interval, market) until that interval is settled or is a
//!   day behind the newest announcement, at most [`MAX_ANNOUNCED`] (beyond that the oldest is
//!   dropped, counted and logged).
//!
//! Positions become the engine's inputs by their market's kind (a quantity is the net sold MW):
//! - day-ahead: the `day_ahead` line; real-time and capacity lease: the `real_time` line; the
//!   price is the net value over the net MW. A market kind whose positions net to 0 MW while
//!   money moved settles both legs (`netted_legs`: sold MW at the sold average, bought MW at
//!   the bought average). The
//!   engine's real-time quantity is the whole schedule, settled against day-ahead, while the
//!   live real-time position is what real time added: the quantity passed is day-ahead MW +
//!   the real-time net MW;
//! - regulation: capacity MW = the net sold MW, capacity price = the position's own fill price
//!   (net value / net MW: the venue fills regulation offers at the capacity clearing price,
//!   quoted in CNY per MW of capacity per interval, so a line is MW × price, as quoted).
//!   **Mileage rule**: the venue sends no AGC signal, so no mileage is measured; the mileage
//!   paid is a deemed one, `mileage MW = capacity MW × [settlement]
//!   regulation_mileage_mw_per_mw` (default 0: no mileage is paid unless the operator states a
//!   ratio), at the mileage price the venue announced with that interval's ancillary result.
//!   Without an announcement the market's mileage is not settled (0 MW; counted, logged);
//! - demand response: committed MWh = net sold MW × 0.25 h, price = the invitation's announced
//!   price (without one, the fill price, which the venue sets to the invitation's price);
//! - several markets of one kind are summed, prices weighted by MW;
//! - **penalty price**: the market's reference price for the interval, by
//!   [`PenaltyReference`] (`[settlement] penalty_reference`): `real_time` (default: the
//!   real-time market's clearing/reference price the venue published for the interval, else
//!   the day-ahead one), `day_ahead`, or `statement` (the awarded quantity's own price, as on
//!   the plant's statement). Published prices arrive as [`Announcement::Reference`] from the
//!   MarketConnector (auction clearing prices and reference prices), kept like the others;
//! - reserve positions (no line in the engine), positions in unknown markets, and regulation or
//!   DR positions netting to a purchase are not settled: counted in
//!   `vpp_settlement_unsettled_total{aggregation,what}` and logged at warn.
//!
//! **Delivery split.** The Dispatch actor dispatches one award, [`IntervalDelivery::award_mw`]:
//! the net sold MW summed over the markets that deliver energy (energy and DR; regulation and
//! reserve awards are headroom held for the system operator, so nothing is dispatched or
//! metered for them), and meters one delivery. Without DR, energy is judged on the whole
//! delivery. With DR, the delivery is split pro rata to the scheduled MW: with `S` the award
//! and `E` / `D` the energy and DR parts, energy is judged on `delivered × E / S` (the
//! deviation penalty) and DR is paid on `curtailed = delivered × D / S` MW (× 0.25 h, at most
//! the committed MWh, never below 0). If `S` is 0 while DR was committed the delivery cannot
//! be split: energy takes all of it, DR none (counted, logged).
//!
//! A stored record holds one interval: `trading_day` is the interval's local day in its
//! market's time zone, `market_id` the real-time market if one was traded (else day-ahead,
//! else regulation, else demand response), `total_cny` the net (revenue + penalties), its
//! lines are the engine's lines then one `resource_share` line per resource (quantity =
//! energy MWh, amount = net share), and `detail` holds the engine record as JSON (status
//! `draft`, the penalty rule and the rates table), so the statement can always be reproduced.
//!
//! Invariants: a record the writer channel cannot take is counted
//! (`vpp_settlement_records_total{result="overflow"}`) and logged at error, never silently
//! lost; an interval the engine refuses is counted (`result="refused"`) and logged; nothing a
//! position carries is dropped without a count and a log line.

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
    Cleared, Currency, DayInput, DemandResponseEvent, IntervalInput, LineKind, NettedLeg,
    PenaltyRule, RatesTable, RegulationAward, ResourceDelivery, ResourceInfo, SettlementRecord,
};
use vpp_engine::strategy::MarketData;
use vpp_engine::template::ResourceKind;
use vpp_persistence::{SettlementLine as StoredLine, SettlementRecord as StoredRecord, Store};

/// Counter of settlement records (label `result`: `queued`, `overflow`, `refused`, `written`,
/// `failed`).
pub const RECORDS_TOTAL: &str = "vpp_settlement_records_total";
/// Counter of things a position or announcement carried that could not be settled (labels
/// `aggregation`, `what`: `unknown_market`, `reserve`, `regulation_bought`, `dr_bought`,
/// `mileage_price_unknown`, `delivery_unsplit`, `announcement_dropped`).
pub const UNSETTLED_TOTAL: &str = "vpp_settlement_unsettled_total";
/// Most venue announcements kept per Settlement actor.
pub const MAX_ANNOUNCED: usize = 4_096;
/// Age (behind the newest announcement) at which an unused announcement is let go, seconds.
const STALE_ANNOUNCEMENT_S: i64 = 86_400;

/// Hours in one delivery interval.
const INTERVAL_HOURS: Decimal = Decimal::from_parts(25, 0, 0, false, 2);

/// One ended interval of one aggregation, as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalDelivery {
    pub aggregation_id: AggregationId,
    pub interval: DeliveryInterval,
    pub positions: Vec<(MarketId, Position)>,
    /// The energy award the Dispatch actor scheduled: Σ net sold MW over the markets that
    /// deliver energy (regulation and reserve awards hold headroom and are not in it).
    pub award_mw: Decimal,
    /// The aggregation's metered delivery: Σ over the members it instructed of their part of
    /// `metered − natural baseline`, MW (mean over the interval).
    pub delivered_mw: Decimal,
    /// The same over the members it did not instruct (forecast drift of wind and PV): not a
    /// deviation of the delivery, reported with the record, never penalised.
    pub imbalance_mw: Decimal,
    pub resources: Vec<ResourceDelivery>,
}

/// What the venue announced for one interval of a regulation or demand-response market.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    /// A regulation clearing (the ancillary result): the mileage price paid per MW of mileage.
    Regulation {
        market: MarketId,
        interval: DeliveryInterval,
        mileage_price_cny_per_mw: Decimal,
    },
    /// A market's reference (or clearing) price for an interval, CNY/MWh.
    Reference {
        market: MarketId,
        interval: DeliveryInterval,
        price_cny_per_mwh: Decimal,
    },
    /// A demand-response invitation: the price paid per MWh of load reduction.
    DemandResponse {
        market: MarketId,
        interval: DeliveryInterval,
        event_id: u64,
        price_cny_per_mwh: Decimal,
    },
}

impl Announcement {
    /// The announcement a market data item carries, if any (ancillary results, DR invitations).
    pub fn from_market_data(d: &MarketData) -> Option<Self> {
        match *d {
            MarketData::AncillaryResult {
                market,
                interval,
                mileage_price_cny_per_mw,
                ..
            } => Some(Self::Regulation {
                market,
                interval,
                mileage_price_cny_per_mw,
            }),
            MarketData::DrInvitation {
                market,
                interval,
                event_id,
                price_cny_per_mwh,
                ..
            } => Some(Self::DemandResponse {
                market,
                interval,
                event_id,
                price_cny_per_mwh,
            }),
            MarketData::AuctionResult {
                market,
                interval,
                clearing_price_cny_per_mwh: Some(price_cny_per_mwh),
                ..
            }
            | MarketData::Price {
                market,
                interval,
                reference_price_cny_per_mwh: price_cny_per_mwh,
                ..
            } => Some(Self::Reference {
                market,
                interval,
                price_cny_per_mwh,
            }),
            _ => None,
        }
    }

    fn key(&self) -> (DeliveryInterval, MarketId) {
        match *self {
            Self::Regulation {
                market, interval, ..
            }
            | Self::Reference {
                market, interval, ..
            }
            | Self::DemandResponse {
                market, interval, ..
            } => (interval, market),
        }
    }
}

/// Everything the Settlement actor receives.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), Refused>")]
pub enum ToSettlement {
    Delivered(IntervalDelivery),
    Announced(Announcement),
}

impl Refusable for ToSettlement {
    fn refuse(self, reason: &Refused) {
        match &self {
            ToSettlement::Delivered(d) => {
                tracing::error!(reason = %reason, aggregation = %d.aggregation_id,
                    interval = %d.interval, "delivered interval refused by settlement: not settled");
            }
            ToSettlement::Announced(a) => {
                let (interval, market) = a.key();
                tracing::warn!(reason = %reason, %interval, %market,
                    "venue announcement refused by settlement: the interval settles without it \
                     (mileage unpaid, DR at its fill price)");
            }
        }
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
    ) -> (Self, super::writer::WriterTask) {
        let (tx, mut rx) = mpsc::channel::<StoredRecord>(capacity.max(1));
        let written = metrics.counter(RECORDS_TOTAL, &[("result", "written")]);
        let failed = metrics.counter(RECORDS_TOTAL, &[("result", "failed")]);
        let task = super::writer::WriterTask::spawn(move |mut close| async move {
            let mut batch = Vec::with_capacity(64);
            while close.recv_many(&mut rx, &mut batch, 64).await > 0 {
                for r in batch.drain(..) {
                    match store.insert_settlement(&r).await {
                        Ok(_) => written.inc(),
                        Err(e) => {
                            failed.inc();
                            tracing::error!(error = %e, aggregation = %r.aggregation_id,
                                "settlement record could not be written");
                        }
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

/// Which price a deviation penalty is computed from (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PenaltyReference {
    /// The real-time market's published price for the interval, else the day-ahead one.
    #[default]
    RealTime,
    /// The day-ahead market's published price for the interval.
    DayAhead,
    /// The awarded quantity's own price, as on the plant's statement.
    Statement,
}

#[derive(Clone)]
pub struct SettlementWiring {
    pub aggregation_id: AggregationId,
    pub name: String,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub rule: PenaltyRule,
    pub rates: RatesTable,
    /// Deemed regulation mileage, MW of mileage per MW of capacity per interval (see the
    /// module docs: the venue sends no AGC signal).
    pub regulation_mileage_mw_per_mw: Decimal,
    /// Every market of the park, by id (kind and time zone).
    pub markets: HashMap<MarketId, Market>,
    /// The kind of every member resource.
    pub kinds: BTreeMap<ResourceId, ResourceKind>,
    pub writer: SettlementWriter,
    /// The price a deviation penalty is computed from.
    pub penalty_reference: PenaltyReference,
}

/// Net sold MW and net value (MW × price) of one market's position, with its legs.
#[derive(Debug, Clone, Copy, Default)]
struct Net {
    mw: Decimal,
    value: Decimal,
    sold_mw: Decimal,
    sold_value: Decimal,
    bought_mw: Decimal,
    bought_value: Decimal,
}

impl Net {
    fn of(p: &Position) -> Self {
        Self {
            mw: p.net_sold_mw(),
            value: p.sold_value - p.bought_value,
            sold_mw: p.sold_mw,
            sold_value: p.sold_value,
            bought_mw: p.bought_mw,
            bought_value: p.bought_value,
        }
    }

    fn add(&mut self, other: Net) {
        self.mw += other.mw;
        self.value += other.value;
        self.sold_mw += other.sold_mw;
        self.sold_value += other.sold_value;
        self.bought_mw += other.bought_mw;
        self.bought_value += other.bought_value;
    }

    /// Both legs of a position netting to 0 MW that moved money (module docs).
    fn netted_legs(&self, kind: LineKind) -> Vec<NettedLeg> {
        if !self.mw.is_zero() || self.sold_mw.is_zero() || self.bought_mw.is_zero() {
            return Vec::new();
        }
        vec![
            NettedLeg {
                kind,
                quantity_mw: self.sold_mw,
                price_cny_per_mwh: self.sold_value / self.sold_mw,
            },
            NettedLeg {
                kind,
                quantity_mw: -self.bought_mw,
                price_cny_per_mwh: self.bought_value / self.bought_mw,
            },
        ]
    }
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
    /// Venue announcements by (interval, market), until their interval is settled.
    announced: BTreeMap<(DeliveryInterval, MarketId), Announcement>,
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
            announced: BTreeMap::new(),
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

    /// Venue announcements held for intervals not settled yet.
    pub fn announcements(&self) -> usize {
        self.announced.len()
    }

    /// Counts and logs something that cannot be settled.
    fn unsettled(&self, what: &str, interval: DeliveryInterval, detail: &str) {
        let counter = self.w.metrics.counter(
            UNSETTLED_TOTAL,
            &[("aggregation", self.w.name.as_str()), ("what", what)],
        );
        counter.inc();
        tracing::warn!(aggregation = %self.w.name, %interval, what, total = counter.get(),
            "{detail}: not settled");
    }

    /// Keeps a venue announcement until its interval is settled. Announcements of intervals
    /// a day older than the newest one are let go: their intervals were delivered long ago
    /// (the Dispatch actor hands every interval with a position over when the next starts),
    /// so this aggregation had nothing to settle with them.
    pub fn announce(&mut self, a: Announcement) {
        let (interval, _) = a.key();
        if let Some(cutoff) = interval.epoch_seconds().checked_sub(STALE_ANNOUNCEMENT_S) {
            if let Ok(cutoff) = DeliveryInterval::from_epoch_seconds(cutoff) {
                self.announced = self.announced.split_off(&(cutoff, MarketId(0)));
            }
        }
        self.announced.insert(a.key(), a);
        while self.announced.len() > MAX_ANNOUNCED {
            if let Some(((interval, market), _)) = self.announced.pop_first() {
                self.unsettled(
                    "announcement_dropped",
                    interval,
                    &format!(
                        "announcement of market {market} dropped: more than {MAX_ANNOUNCED} held"
                    ),
                );
            }
        }
    }

    /// The engine's input for one delivered interval, and the market the record is filed under
    /// (rules in the module docs).
    pub fn day_input(&self, d: &IntervalDelivery) -> Option<(DayInput, MarketId)> {
        let iv = d.interval;
        let mut day_ahead: Option<(Net, MarketId)> = None;
        let mut real_time: Option<(Net, MarketId)> = None;
        let mut regulation: Vec<(MarketId, Net)> = Vec::new();
        let mut demand: Vec<(MarketId, Net)> = Vec::new();
        // The award the Dispatch actor dispatched (energy and demand response).
        let scheduled_mw = d.award_mw;
        let mut tz = None;
        for (market_id, p) in &d.positions {
            let net = Net::of(p);
            let Some(m) = self.w.markets.get(market_id) else {
                self.unsettled(
                    "unknown_market",
                    iv,
                    &format!("position of {} MW in unknown market {market_id}", net.mw),
                );
                continue;
            };
            let slot = match m.kind {
                MarketKind::DayAhead => &mut day_ahead,
                MarketKind::RealTime | MarketKind::CapacityLease => &mut real_time,
                MarketKind::Regulation | MarketKind::DemandResponse if net.mw <= Decimal::ZERO => {
                    if !net.mw.is_zero() || !net.value.is_zero() {
                        let what = if m.kind == MarketKind::Regulation {
                            "regulation_bought"
                        } else {
                            "dr_bought"
                        };
                        self.unsettled(
                            what,
                            iv,
                            &format!(
                                "position in {} nets to {} MW (value {}): a purchase is not an \
                                 award",
                                m.name, net.mw, net.value
                            ),
                        );
                    }
                    continue;
                }
                MarketKind::Regulation => {
                    tz.get_or_insert(m.timezone);
                    regulation.push((*market_id, net));
                    continue;
                }
                MarketKind::DemandResponse => {
                    tz.get_or_insert(m.timezone);
                    demand.push((*market_id, net));
                    continue;
                }
                MarketKind::Reserve => {
                    self.unsettled(
                        "reserve",
                        iv,
                        &format!(
                            "reserve position of {} MW in {}: the engine has no reserve line",
                            net.mw, m.name
                        ),
                    );
                    continue;
                }
            };
            tz.get_or_insert(m.timezone);
            slot.get_or_insert((Net::default(), *market_id)).0.add(net);
        }
        let cleared = |x: Option<(Net, MarketId)>, base_mw: Decimal| {
            x.filter(|(n, _)| !n.mw.is_zero()).map(|(n, _)| Cleared {
                quantity_mw: base_mw + n.mw,
                price_cny_per_mwh: n.value / n.mw,
            })
        };
        // The engine's real-time quantity is the whole schedule (day-ahead plus what real
        // time added), settled against day-ahead; the live real-time position is the addition.
        let day_ahead_mw = day_ahead.map_or(Decimal::ZERO, |(n, _)| n.mw);
        let market_id = real_time
            .or(day_ahead)
            .map(|(_, id)| id)
            .or_else(|| regulation.first().map(|(id, _)| *id))
            .or_else(|| demand.first().map(|(id, _)| *id))?;
        let tz = tz?;

        // The delivery split (module docs).
        let energy_mw = day_ahead.map_or(Decimal::ZERO, |(n, _)| n.mw)
            + real_time.map_or(Decimal::ZERO, |(n, _)| n.mw);
        let dr_mw: Decimal = demand.iter().map(|(_, n)| n.mw).sum();
        let share = |part_mw: Decimal| {
            d.delivered_mw
                .checked_mul(part_mw)
                .and_then(|x| x.checked_div(scheduled_mw))
        };
        let split = match (share(energy_mw), share(dr_mw)) {
            (Some(e), Some(c)) if !scheduled_mw.is_zero() => Some((e, c)),
            _ => None,
        };
        let (energy_delivered_mw, curtailed_mw) = if dr_mw.is_zero() {
            (d.delivered_mw, Decimal::ZERO)
        } else if let Some(split) = split {
            split
        } else {
            if !dr_mw.is_zero() {
                self.unsettled(
                    "delivery_unsplit",
                    iv,
                    &format!(
                        "the award of {scheduled_mw} MW with {dr_mw} MW of demand response \
                         cannot split the delivery of {} MW pro rata: energy takes it, no \
                         curtailment",
                        d.delivered_mw
                    ),
                );
            }
            (d.delivered_mw, Decimal::ZERO)
        };

        let regulation = self.regulation_award(iv, &regulation);
        let demand_response = (!demand.is_empty()).then(|| {
            let (mut committed_mw, mut value) = (Decimal::ZERO, Decimal::ZERO);
            for (market, net) in &demand {
                let price = match self.announced.get(&(iv, *market)) {
                    Some(Announcement::DemandResponse {
                        price_cny_per_mwh, ..
                    }) => *price_cny_per_mwh,
                    _ => net.value / net.mw,
                };
                committed_mw += net.mw;
                value += net.mw * price;
            }
            DemandResponseEvent {
                committed_mwh: committed_mw * INTERVAL_HOURS,
                curtailed_mwh: curtailed_mw * INTERVAL_HOURS,
                price_cny_per_mwh: value / committed_mw,
            }
        });

        let mut netted_legs = Vec::new();
        if let Some((n, _)) = day_ahead {
            netted_legs.extend(n.netted_legs(LineKind::Energy));
        }
        if let Some((n, _)) = real_time {
            netted_legs.extend(n.netted_legs(LineKind::RealTimeDeviation));
        }
        let published = |slot: Option<(Net, MarketId)>| {
            slot.and_then(|(_, m)| match self.announced.get(&(iv, m)) {
                Some(Announcement::Reference {
                    price_cny_per_mwh, ..
                }) => Some(*price_cny_per_mwh),
                _ => None,
            })
        };
        let reference_price_cny_per_mwh = match self.w.penalty_reference {
            PenaltyReference::RealTime => published(real_time).or_else(|| published(day_ahead)),
            PenaltyReference::DayAhead => published(day_ahead),
            PenaltyReference::Statement => None,
        };
        let input = IntervalInput {
            interval: iv,
            netted_legs,
            reference_price_cny_per_mwh,
            day_ahead: cleared(day_ahead, Decimal::ZERO),
            real_time: cleared(real_time, day_ahead_mw),
            delivered_mw: energy_delivered_mw,
            regulation,
            demand_response,
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
            .filter_map(|r| {
                self.w.kinds.get(&r.resource_id).map(|kind| ResourceInfo {
                    resource_id: r.resource_id,
                    kind: kind.clone(),
                })
            })
            .collect();
        let day = DayInput {
            aggregation_id: d.aggregation_id,
            trading_day: iv.trading_day(tz),
            resources,
            intervals: vec![input],
        };
        Some((day, market_id))
    }

    /// The regulation award of the interval from its (positive) regulation positions.
    fn regulation_award(
        &self,
        iv: DeliveryInterval,
        positions: &[(MarketId, Net)],
    ) -> Option<RegulationAward> {
        if positions.is_empty() {
            return None;
        }
        let ratio = self.w.regulation_mileage_mw_per_mw;
        let (mut capacity_mw, mut capacity_value) = (Decimal::ZERO, Decimal::ZERO);
        // Capacity of the markets whose mileage price is known, and Σ capacity × price.
        let (mut priced_mw, mut mileage_value) = (Decimal::ZERO, Decimal::ZERO);
        for (market, net) in positions {
            capacity_mw += net.mw;
            capacity_value += net.value;
            match self.announced.get(&(iv, *market)) {
                Some(Announcement::Regulation {
                    mileage_price_cny_per_mw,
                    ..
                }) => {
                    priced_mw += net.mw;
                    mileage_value += net.mw * *mileage_price_cny_per_mw;
                }
                _ if ratio.is_zero() => {}
                _ => self.unsettled(
                    "mileage_price_unknown",
                    iv,
                    &format!(
                        "no ancillary result received for market {market}: the mileage of its \
                         {} MW",
                        net.mw
                    ),
                ),
            }
        }
        Some(RegulationAward {
            capacity_mw,
            capacity_price_cny_per_mw: capacity_value / capacity_mw,
            mileage_mw: priced_mw * ratio,
            mileage_price_cny_per_mw: if priced_mw.is_zero() {
                Decimal::ZERO
            } else {
                mileage_value / priced_mw
            },
        })
    }

    fn settle(&mut self, d: &IntervalDelivery) {
        let settled = self.day_input(d);
        // Announcements up to this interval are of no further use.
        self.announced.retain(|(i, _), _| *i > d.interval);
        let Some((day, market_id)) = settled else {
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
            ToSettlement::Announced(a) => self.announce(a),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The Settlement actor end to end against a store: delivered intervals sent to the running
    //! actor become draft records whose numbers are the engine's for the same interval, a
    //! clean delivery without penalty and an under-delivery beyond the band with one; regulation
    //! and demand-response intervals become their capacity, mileage and DR lines (numbers by
    //! hand). `day_input` alone: the delivery split, the price sources, what is not settled.
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
    const REG: MarketId = MarketId(4);
    const DR: MarketId = MarketId(5);
    const RES: MarketId = MarketId(6);

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
            regulation_mileage_mw_per_mw: Decimal::ZERO,
            markets: HashMap::from([
                (RT, market(RT, MarketKind::RealTime)),
                (DA, market(DA, MarketKind::DayAhead)),
            ]),
            kinds: kinds.clone(),
            writer,
            penalty_reference: PenaltyReference::default(),
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
            award_mw: Decimal::ONE,
            delivered_mw: Decimal::ONE,
            imbalance_mw: Decimal::ZERO,
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
            award_mw: Decimal::ONE,
            delivered_mw: d(9, 1),
            imbalance_mw: Decimal::ZERO,
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
        let stored = stored_records(&store, day, 2).await;

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
                    netted_legs: Vec::new(),
                    reference_price_cny_per_mwh: None,
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

    /// The day's stored records once there are `n` (bounded wait).
    async fn stored_records(store: &Store, day: chrono::NaiveDate, n: usize) -> Vec<StoredRecord> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let records = store.list_settlements(day, 10).await.unwrap();
            if records.len() == n {
                return records;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "records stored: {}",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn rates_at(at: vpp_engine::Timestamp) -> RatesTable {
        RatesTable {
            cny_per_usd: d(72, 1),
            cny_per_eur: d(78, 1),
            as_of: at,
        }
    }

    fn all_markets() -> HashMap<MarketId, Market> {
        HashMap::from([
            (RT, market(RT, MarketKind::RealTime)),
            (DA, market(DA, MarketKind::DayAhead)),
            (REG, market(REG, MarketKind::Regulation)),
            (DR, market(DR, MarketKind::DemandResponse)),
            (RES, market(RES, MarketKind::Reserve)),
        ])
    }

    fn wiring(
        clock: &ManualClock,
        metrics: &Metrics,
        writer: SettlementWriter,
        mileage_mw_per_mw: Decimal,
    ) -> SettlementWiring {
        SettlementWiring {
            aggregation_id: AGG,
            name: "agg".into(),
            clock: Arc::new(clock.clone()),
            metrics: metrics.clone(),
            rule: rule(),
            rates: rates_at(clock.now()),
            regulation_mileage_mw_per_mw: mileage_mw_per_mw,
            markets: all_markets(),
            kinds: BTreeMap::from([
                (ResourceId(1), ResourceKind::Storage),
                (ResourceId(2), ResourceKind::FlexibleLoad),
            ]),
            writer,
            penalty_reference: PenaltyReference::default(),
        }
    }

    fn delivery(
        interval: DeliveryInterval,
        positions: Vec<(MarketId, Position)>,
        delivered_mw: Decimal,
    ) -> IntervalDelivery {
        let half = delivered_mw / Decimal::TWO;
        // As Dispatch computes it: regulation and reserve awards are headroom, not energy.
        let markets = all_markets();
        let award_mw = positions
            .iter()
            .filter(|(id, _)| !markets.get(id).is_some_and(|m| m.kind.holds_headroom()))
            .map(|(_, p)| p.net_sold_mw())
            .sum();
        IntervalDelivery {
            aggregation_id: AGG,
            interval,
            positions,
            award_mw,
            delivered_mw,
            imbalance_mw: Decimal::ZERO,
            resources: [1, 2]
                .map(|r| ResourceDelivery {
                    resource_id: ResourceId(r),
                    scheduled_mw: half,
                    delivered_mw: half,
                })
                .to_vec(),
        }
    }

    fn reg_announced(interval: DeliveryInterval, mileage: i64) -> Announcement {
        Announcement::Regulation {
            market: REG,
            interval,
            mileage_price_cny_per_mw: Decimal::from(mileage),
        }
    }

    fn dr_invited(interval: DeliveryInterval, price: i64) -> Announcement {
        Announcement::DemandResponse {
            market: DR,
            interval,
            event_id: 7,
            price_cny_per_mwh: Decimal::from(price),
        }
    }

    /// (kind, quantity, price, amount) of a stored record's engine lines.
    fn engine_lines(r: &StoredRecord) -> Vec<(String, Decimal, Decimal, Decimal)> {
        r.lines
            .iter()
            .filter(|l| l.kind != "resource_share")
            .map(|l| {
                (
                    l.kind.clone(),
                    l.quantity_mwh.normalize(),
                    l.price_cny_per_mwh.normalize(),
                    l.amount_cny,
                )
            })
            .collect()
    }

    fn line(
        kind: LineKind,
        q: Decimal,
        p: Decimal,
        amount: Decimal,
    ) -> (String, Decimal, Decimal, Decimal) {
        (
            kind.as_str().to_owned(),
            q.normalize(),
            p.normalize(),
            amount,
        )
    }

    #[actix::test]
    async fn regulation_and_demand_response_intervals_are_stored_with_their_lines() {
        let start = chrono::Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let rt = Runtime::new(Arc::new(clock.clone()));
        let store = Store::open("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let (writer, _) = SettlementWriter::spawn(store.clone(), 16, &rt.metrics);
        // Deemed mileage: 0.5 MW of mileage per MW of capacity.
        let w = wiring(&clock, &rt.metrics, writer, d(5, 1));
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
        let third = second.next();
        let messages = [
            // What the connector forwards: the regulation clearing and two DR invitations.
            ToSettlement::Announced(reg_announced(first, 12)),
            ToSettlement::Announced(dr_invited(second, 800)),
            ToSettlement::Announced(dr_invited(third, 800)),
            // 2 MW of regulation capacity cleared at 30: headroom held, no energy dispatched.
            ToSettlement::Delivered(delivery(
                first,
                vec![(REG, sold(Decimal::TWO, 30))],
                Decimal::ZERO,
            )),
            // 1 MW of DR, filled at the invitation's 800, curtailed in full.
            ToSettlement::Delivered(delivery(
                second,
                vec![(DR, sold(Decimal::ONE, 800))],
                Decimal::ONE,
            )),
            // 1 MW day-ahead at 300 and 1 MW of DR at 800: 1.5 MW delivered for the 2 MW.
            ToSettlement::Delivered(delivery(
                third,
                vec![(DA, sold(Decimal::ONE, 300)), (DR, sold(Decimal::ONE, 800))],
                d(15, 1),
            )),
        ];
        for m in messages {
            actor.sender().try_send(m).unwrap();
        }

        let day = first.trading_day(chrono_tz::Asia::Shanghai);
        let stored = stored_records(&store, day, 3).await;
        let by_interval = |i: DeliveryInterval| {
            stored
                .iter()
                .find(|r| r.lines.iter().any(|l| l.interval == Some(i)))
                .unwrap_or_else(|| panic!("no record for {i}"))
        };

        // Regulation, by hand: capacity 2 MW × 30 CNY/MW per interval as quoted = 60.00 (it was
        // × 0.25 h = 15.00); deemed mileage 2 × 0.5 =
        // 1 MW × 12 CNY/MW = 12.00; no energy award, so no penalty.
        let reg = by_interval(first);
        assert_eq!(reg.market_id, REG);
        assert_eq!(
            engine_lines(reg),
            vec![
                line(
                    LineKind::RegulationCapacity,
                    Decimal::TWO,
                    Decimal::from(30),
                    d(6000, 2)
                ),
                line(
                    LineKind::RegulationMileage,
                    Decimal::ONE,
                    Decimal::from(12),
                    d(1200, 2)
                ),
            ]
        );
        assert_eq!(reg.total_cny, d(7200, 2));

        // DR, by hand: committed 1 MW × 0.25 h; curtailed 1 MW × 0.25 h = 0.25 MWh × 800 =
        // 200.00.
        let dr = by_interval(second);
        assert_eq!(dr.market_id, DR);
        assert_eq!(
            engine_lines(dr),
            vec![line(
                LineKind::DemandResponse,
                d(25, 2),
                Decimal::from(800),
                d(20000, 2)
            )]
        );
        assert_eq!(dr.total_cny, d(20000, 2));

        // Energy and DR share the 1.5 MW pro rata to their 1 MW each: energy 0.75 MW against
        // 1 MW awarded (excess (0.25 − 0.03) MW × 0.25 h × 300 × 1.5 = 24.75 penalty), DR
        // 0.75 MW × 0.25 h = 0.1875 MWh × 800 = 150.00; energy 1 × 0.25 × 300 = 75.00.
        let mixed = by_interval(third);
        assert_eq!(mixed.market_id, DA);
        assert_eq!(
            engine_lines(mixed),
            vec![
                line(LineKind::Energy, d(25, 2), Decimal::from(300), d(7500, 2)),
                line(
                    LineKind::DeviationPenalty,
                    d(55, 3),
                    Decimal::from(450),
                    d(-2475, 2)
                ),
                line(
                    LineKind::DemandResponse,
                    d(1875, 4),
                    Decimal::from(800),
                    d(15000, 2)
                ),
            ]
        );
        assert_eq!(mixed.total_cny, d(20025, 2));
        for r in &stored {
            let shares: Decimal = r
                .lines
                .iter()
                .filter(|l| l.kind == "resource_share")
                .map(|l| l.amount_cny)
                .sum();
            assert_eq!(shares, r.total_cny, "resource shares add up to the net");
        }
    }

    /// Observed: sell 1 MW @279.08 + buy 1 MW @284.65 in one interval → 0.00 and no interval.
    /// Both legs settle: 69.77 − 71.16 = −1.39. And the penalty uses the market's published
    /// price for the interval (260.54), not the plant's own fill price.
    #[test]
    fn a_netted_position_settles_both_legs_and_penalties_use_the_published_price() {
        let start = chrono::Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let metrics = Metrics::new();
        let mut logic = SettlementLogic::new(wiring(
            &clock,
            &metrics,
            SettlementWriter::disabled(),
            Decimal::ZERO,
        ));
        let iv = DeliveryInterval::containing(start);
        let mut p = Position::default();
        p.apply_fill(Side::Sell, Decimal::ONE, d(27908, 2));
        p.apply_fill(Side::Buy, Decimal::ONE, d(28465, 2));
        let (day, market) = logic
            .day_input(&delivery(iv, vec![(RT, p)], Decimal::ZERO))
            .expect("a netted position is settled");
        assert_eq!(market, RT);
        let record = SettlementRecord::settle(&day, &rule(), rates_at(clock.now())).unwrap();
        assert_eq!(record.totals(Currency::Cny).net, d(-139, 2));

        // 1 MW sold at 4.71 (the fill), 0.5 MW delivered; the market published 260.54.
        logic.announce(Announcement::Reference {
            market: RT,
            interval: iv,
            price_cny_per_mwh: d(26054, 2),
        });
        let mut fill = Position::default();
        fill.apply_fill(Side::Sell, Decimal::ONE, d(471, 2));
        let (day, _) = logic
            .day_input(&delivery(iv, vec![(RT, fill)], d(5, 1)))
            .unwrap();
        assert_eq!(
            day.intervals[0].reference_price_cny_per_mwh,
            Some(d(26054, 2))
        );
        let record = SettlementRecord::settle(&day, &rule(), rates_at(clock.now())).unwrap();
        let penalty = record
            .lines()
            .iter()
            .find(|l| l.kind == LineKind::DeviationPenalty)
            .unwrap();
        assert_eq!(
            penalty.price_cny,
            d(26054, 2) * rule().under_delivery_multiplier
        );
    }

    #[test]
    fn real_time_settles_what_it_added_to_day_ahead_and_regulation_is_not_energy() {
        let start = chrono::Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let metrics = Metrics::new();
        let logic = SettlementLogic::new(wiring(
            &clock,
            &metrics,
            SettlementWriter::disabled(),
            Decimal::ZERO,
        ));
        let iv = DeliveryInterval::containing(start);
        // 1 MW sold day-ahead at 300, 0.5 MW more sold in real time at 400, 2 MW of
        // regulation headroom at 30; the fleet delivered the 1.5 MW of energy.
        let positions = vec![
            (DA, sold(Decimal::ONE, 300)),
            (RT, sold(d(5, 1), 400)),
            (REG, sold(Decimal::TWO, 30)),
        ];
        let d_in = delivery(iv, positions, d(15, 1));
        assert_eq!(
            d_in.award_mw,
            d(15, 1),
            "regulation is not in the energy award"
        );
        let (day, _) = logic.day_input(&d_in).expect("something to settle");
        let i = &day.intervals[0];
        assert_eq!(
            i.real_time.map(|c| (c.quantity_mw, c.price_cny_per_mwh)),
            Some((d(15, 1), Decimal::from(400))),
            "the real-time schedule is day-ahead plus the real-time addition"
        );
        assert_eq!(i.delivered_mw, d(15, 1), "energy takes the whole delivery");
        let record = SettlementRecord::settle(&day, &rule(), rates_at(clock.now())).unwrap();
        let lines: Vec<_> = record
            .lines()
            .iter()
            .map(|l| (l.kind, l.amount_cny))
            .collect();
        // By hand: day-ahead 1 × 0.25 × 300 = 75.00; real time (1.5 − 1) × 0.25 × 400 = 50.00;
        // delivered = awarded, no penalty; capacity 2 MW × 30 = 60.00 as quoted; mileage 0.
        assert_eq!(
            lines,
            vec![
                (LineKind::Energy, d(7500, 2)),
                (LineKind::RealTimeDeviation, d(5000, 2)),
                (LineKind::RegulationCapacity, d(6000, 2)),
                (LineKind::RegulationMileage, d(0, 2)),
            ]
        );
    }

    #[test]
    fn prices_come_from_the_announcements_else_the_fills_and_gaps_are_counted() {
        let start = chrono::Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let metrics = Metrics::new();
        let unsettled = |what: &str| {
            metrics
                .counter(UNSETTLED_TOTAL, &[("aggregation", "agg"), ("what", what)])
                .get()
        };
        let mut logic = SettlementLogic::new(wiring(
            &clock,
            &metrics,
            SettlementWriter::disabled(),
            Decimal::ONE,
        ));
        let iv = DeliveryInterval::containing(start);
        let input = |logic: &SettlementLogic, positions, delivered| {
            let (day, market) = logic
                .day_input(&delivery(iv, positions, delivered))
                .expect("something to settle");
            (day.intervals[0].clone(), market)
        };

        // No announcement: DR at its fill price, regulation mileage unknown (0 MW, counted).
        let (i, market) = input(
            &logic,
            vec![(REG, sold(Decimal::TWO, 30)), (DR, sold(Decimal::ONE, 700))],
            Decimal::ONE,
        );
        assert_eq!(market, REG);
        assert_eq!(
            i.regulation,
            Some(RegulationAward {
                capacity_mw: Decimal::TWO,
                capacity_price_cny_per_mw: Decimal::from(30),
                mileage_mw: Decimal::ZERO,
                mileage_price_cny_per_mw: Decimal::ZERO,
            })
        );
        let dr = i.demand_response.unwrap();
        assert_eq!(dr.price_cny_per_mwh, Decimal::from(700));
        assert_eq!(dr.committed_mwh, d(25, 2));
        // Only the DR MW is dispatched (regulation holds headroom): 1 MW delivered for it.
        assert_eq!(dr.curtailed_mwh, d(25, 2));
        assert_eq!(
            i.delivered_mw,
            Decimal::ZERO,
            "no energy award, no energy share"
        );
        assert_eq!(unsettled("mileage_price_unknown"), 1);

        // Announced: the invitation's price and the announced mileage price.
        logic.announce(reg_announced(iv, 12));
        logic.announce(dr_invited(iv, 800));
        let (i, _) = input(
            &logic,
            vec![(REG, sold(Decimal::TWO, 30)), (DR, sold(Decimal::ONE, 700))],
            Decimal::ONE,
        );
        let reg = i.regulation.unwrap();
        assert_eq!(
            (reg.mileage_mw, reg.mileage_price_cny_per_mw),
            (Decimal::TWO, Decimal::from(12))
        );
        assert_eq!(
            i.demand_response.unwrap().price_cny_per_mwh,
            Decimal::from(800)
        );
        assert_eq!(unsettled("mileage_price_unknown"), 1);

        // Purchases in regulation and DR, reserve: not settled, each counted; without DR,
        // energy takes the whole delivery.
        let mut bought = Position::default();
        bought.apply_fill(Side::Buy, Decimal::ONE, Decimal::from(30));
        let (i, market) = input(
            &logic,
            vec![
                (RT, sold(Decimal::TWO, 400)),
                (REG, bought.clone()),
                (DR, bought),
                (RES, sold(Decimal::TWO, 10)),
            ],
            Decimal::ONE,
        );
        assert_eq!(market, RT);
        assert_eq!((i.regulation, i.demand_response), (None, None));
        assert_eq!(
            i.delivered_mw,
            Decimal::ONE,
            "no DR: energy takes the delivery"
        );
        for what in ["regulation_bought", "dr_bought", "reserve"] {
            assert_eq!(unsettled(what), 1, "{what}");
        }

        // A 0 MW award with DR committed cannot be split: energy takes the delivery.
        let (i, _) = input(
            &logic,
            vec![
                (DA, {
                    let mut p = Position::default();
                    p.apply_fill(Side::Buy, Decimal::ONE, Decimal::from(300));
                    p
                }),
                (DR, sold(Decimal::ONE, 800)),
            ],
            d(5, 1),
        );
        assert_eq!(i.delivered_mw, d(5, 1));
        assert_eq!(i.demand_response.unwrap().curtailed_mwh, Decimal::ZERO);
        assert_eq!(unsettled("delivery_unsplit"), 1);

        // Settling the interval lets its announcements go; a day-old one goes on the next.
        let later = DeliveryInterval::containing(start + chrono::Duration::hours(2));
        logic.announce(reg_announced(later, 12));
        assert_eq!(logic.announcements(), 3);
        logic.settle(&delivery(
            iv,
            vec![(REG, sold(Decimal::ONE, 30))],
            Decimal::ONE,
        ));
        assert_eq!(logic.announcements(), 1);
        logic.announce(dr_invited(iv, 800));
        let next_day = DeliveryInterval::containing(start + chrono::Duration::hours(27));
        logic.announce(reg_announced(next_day, 12));
        assert_eq!(logic.announcements(), 1, "day-old announcements let go");
        assert_eq!(unsettled("announcement_dropped"), 0);
    }
}
