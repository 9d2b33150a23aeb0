//! The replay loop: walks 15-minute steps from the gate of the first trading day to the end
//! of the last, feeding every strategy through its [`StrategyHost`], every intent through the
//! [`PreTradeGate`], every order event through the [`OrderLedger`], and simulating the venue
//! and one battery per strategy.
//!
//! Per step `t` (an interval boundary), in this order, strategies in the order given:
//! 1. the interval `[t−15 min, t)` is delivered: each battery's energy moves by its net
//!    position there (sells remove `MW × 0.25` MWh, buys store `MW × 0.25 × η`), clamped to
//!    `[0, energy_mwh]` with the shortfall counted as undelivered;
//! 2. `gate.on_tick(t)`, then a capacity update per strategy (flexibility = inverter power
//!    both ways, storage = the battery's energy);
//! 3. at `gate − lead − 15 min` of a trading day: day-ahead forecasts of that day's intervals;
//! 4. real-time book top and last trade for the interval starting at `t + 15 min`;
//! 5. timers due in `(t − 15 min, t]` (the live schedule, [`timers_due`]); gate timers only for
//!    trading days inside the run;
//! 6. at a gate closure: the day-ahead auction of that trading day clears, then each
//!    interval's `AuctionResult` goes out.

use super::report::{self, Collected, SlotOutcome};
use super::{
    BacktestConfig, BacktestError, BacktestReport, BatterySpec, DayAheadBid, DayAheadClearing,
    ForecastMode, PreTradeGate, PriceSeries, DAY_AHEAD_MARKET, MAX_STRATEGIES, MAX_WORK_PER_STEP,
    REAL_TIME_MARKET,
};
use crate::aggregation::AggregatedCapacity;
use crate::ids::{AggregationId, ClientOrderId, FillId, StrategyId};
use crate::ledger::{OrderEvent, OrderEventKind, OrderLedger};
use crate::market::{DeliveryInterval, Market};
use crate::order::{ExecKind, ExecReport, OrderStatus, Side};
use crate::position::PositionKey;
use crate::strategy::{
    timers_due, CapacityUpdate, HostConfig, MarketData, OrderIntent, PriceLevel, RiskRejection,
    StorageState, Strategy, StrategyError, StrategyHost, Timer,
};
use crate::Timestamp;
use chrono::{Duration, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use std::collections::{BTreeMap, VecDeque};

const STEP: Duration = Duration::minutes(15);
const HOURS_PER_INTERVAL: Decimal = dec!(0.25);
/// Trading days whose intervals are kept (a day, the one before, the one being cleared).
const DAY_CACHE_LEN: usize = 4;

/// A strategy to run: built by the caller (through the registry), with its battery.
pub struct StrategySetup {
    pub name: String,
    /// `strategy` or `benchmark`: only labels the report.
    pub role: String,
    pub strategy: Box<dyn Strategy>,
    pub battery: BatterySpec,
}

/// One hosted strategy and its simulated battery.
struct Slot {
    name: String,
    role: String,
    host: StrategyHost,
    battery: BatterySpec,
    agg: AggregationId,
    energy_mwh: Decimal,
    out: SlotOutcome,
    killed: bool,
    /// The last capacity update, rebuilt only when the energy changed (Decimal division is
    /// the dearest thing on the per-step path).
    capacity: Option<CapacityUpdate>,
    /// The battery energy `capacity` was built for (an equality test, no multiplication).
    capacity_energy_mwh: Decimal,
}

/// The simulated real-time book of an interval, with the day-ahead price it is built on.
#[derive(Debug, Clone, Copy)]
struct RtBook {
    bid: Decimal,
    mid: Decimal,
    ask: Decimal,
    day_ahead: Decimal,
}

/// What happens once per trading day, at an instant of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheduled {
    /// The day-ahead forecasts of the trading day go out.
    Forecasts(NaiveDate),
    /// The trading day's auction clears.
    Clearing(NaiveDate),
    /// The trading day has been delivered (progress).
    DayEnd,
}

/// Work queued within a step.
enum Work {
    Intent(usize, OrderIntent),
    Report(usize, ExecReport),
}

struct Run<'a> {
    cfg: &'a BacktestConfig,
    prices: &'a PriceSeries,
    markets: [Market; 2],
    gate: &'a mut dyn PreTradeGate,
    clearing: &'a mut dyn DayAheadClearing,
    ledger: OrderLedger,
    slots: Vec<Slot>,
    /// Open day-ahead orders by delivery interval, in arrival order.
    resting: BTreeMap<DeliveryInterval, Vec<(usize, ClientOrderId)>>,
    /// Real-time depth already taken, per interval and side.
    rt_taken: BTreeMap<(DeliveryInterval, bool), Decimal>,
    queue: VecDeque<Work>,
    /// Reused timer buffer, timers due later with their instants, and how far the schedule
    /// has been asked.
    timers: Vec<Timer>,
    pending_timers: VecDeque<(Timestamp, Timer)>,
    timers_covered: Timestamp,
    /// First instant of the run's first trading day and of the day after its last.
    range: (Timestamp, Timestamp),
    /// The per-day schedule (forecasts, clearings, day ends for progress), in time order;
    /// each step pops what falls due, so the step never searches it.
    schedule: VecDeque<(Timestamp, Scheduled)>,
    /// The intervals of the last few trading days asked for.
    day_cache: VecDeque<(NaiveDate, Vec<DeliveryInterval>)>,
    /// The last real-time book computed (each interval's is asked for at least twice).
    rt_cache: Option<(DeliveryInterval, RtBook)>,
    /// The real-time noise amplitude in 0.01 CNY steps (from the config, once).
    rt_noise_cents: i64,
    seq: u64,
    fill_id: u64,
    events: u64,
}

/// Runs a backtest. `progress(done_days, total_days)` is called once per trading day.
pub fn run(
    cfg: &BacktestConfig,
    prices: &PriceSeries,
    strategies: Vec<StrategySetup>,
    gate: &mut dyn PreTradeGate,
    clearing: &mut dyn DayAheadClearing,
    progress: &mut dyn FnMut(u32, u32),
) -> Result<BacktestReport, BacktestError> {
    cfg.validate()?;
    if strategies.is_empty() || strategies.len() > MAX_STRATEGIES {
        return Err(BacktestError::Config {
            field: "strategies",
            reason: format!("{} given; need 1..={MAX_STRATEGIES}", strategies.len()),
        });
    }
    let mut run = Run::new(cfg, prices, strategies, gate, clearing)?;
    let start = run.gate_of(cfg.from) - Duration::minutes(i64::from(cfg.gate_lead_minutes) + 30);
    let start = DeliveryInterval::containing(start).start();
    let end = run.local_midnight(cfg.to.succ_opt().unwrap_or(cfg.to));
    let total_days = u32::try_from((cfg.to - cfg.from).num_days() + 1).unwrap_or(u32::MAX);
    run.timers_covered = start - STEP;
    let mut now = DeliveryInterval::containing(start);
    let mut day_done = 0u32;
    while now.start() <= end {
        if run.step(now)? {
            day_done = day_done.saturating_add(1).min(total_days);
            progress(day_done, total_days);
        }
        now = now.next();
    }
    Ok(run.finish())
}

impl<'a> Run<'a> {
    fn new(
        cfg: &'a BacktestConfig,
        prices: &'a PriceSeries,
        strategies: Vec<StrategySetup>,
        gate: &'a mut dyn PreTradeGate,
        clearing: &'a mut dyn DayAheadClearing,
    ) -> Result<Self, BacktestError> {
        let mut slots = Vec::with_capacity(strategies.len());
        for (i, s) in strategies.into_iter().enumerate() {
            s.battery.validate()?;
            let n = u64::try_from(i + 1).unwrap_or(u64::MAX);
            let host =
                StrategyHost::new(s.strategy, HostConfig::new(StrategyId(n), AggregationId(n)))
                    .map_err(|source| BacktestError::Strategy {
                        name: s.name.clone(),
                        source,
                    })?;
            let energy_mwh = s.battery.energy_mwh * s.battery.initial_soc_pct / dec!(100);
            slots.push(Slot {
                name: s.name,
                role: s.role,
                host,
                battery: s.battery,
                agg: AggregationId(n),
                energy_mwh,
                out: SlotOutcome::default(),
                killed: false,
                capacity: None,
                capacity_energy_mwh: Decimal::ZERO,
            });
        }
        let mut run = Self {
            markets: cfg.markets(),
            cfg,
            prices,
            gate,
            clearing,
            ledger: OrderLedger::new(),
            slots,
            resting: BTreeMap::new(),
            rt_taken: BTreeMap::new(),
            queue: VecDeque::new(),
            rt_cache: None,
            rt_noise_cents: (cfg.real_time.noise_cny_per_mwh * dec!(100))
                .trunc()
                .try_into()
                .unwrap_or(0i64)
                .max(0),
            timers: Vec::with_capacity(200),
            pending_timers: VecDeque::with_capacity(200),
            timers_covered: Timestamp::MIN_UTC,
            range: (Timestamp::MIN_UTC, Timestamp::MIN_UTC),
            schedule: VecDeque::new(),
            day_cache: VecDeque::with_capacity(DAY_CACHE_LEN),
            seq: 0,
            fill_id: 0,
            events: 0,
        };
        let lead = Duration::minutes(i64::from(cfg.gate_lead_minutes));
        let mut schedule = Vec::new();
        let mut day = cfg.from;
        while day <= cfg.to {
            let gate = run.gate_of(day);
            schedule.push((gate - lead - STEP, Scheduled::Forecasts(day)));
            schedule.push((gate, Scheduled::Clearing(day)));
            let Some(next) = day.succ_opt() else { break };
            schedule.push((run.local_midnight(next), Scheduled::DayEnd));
            day = next;
        }
        schedule.sort_by_key(|(at, _)| *at);
        run.schedule = schedule.into();
        let after_last = cfg.to.succ_opt().unwrap_or(cfg.to);
        run.range = (run.local_midnight(cfg.from), run.local_midnight(after_last));
        Ok(run)
    }

    fn local_midnight(&self, day: NaiveDate) -> Timestamp {
        let tz = self.cfg.timezone;
        day.and_hms_opt(0, 0, 0)
            .and_then(|t| tz.from_local_datetime(&t).earliest())
            .map_or_else(
                || Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default()),
                |t| t.with_timezone(&Utc),
            )
    }

    fn gate_of(&self, day: NaiveDate) -> Timestamp {
        self.local_midnight(day)
            - Duration::minutes(i64::from(self.cfg.gate_closure_minutes_before))
    }

    /// Whether the interval belongs to a trading day of the run (by instant: no time-zone
    /// conversion on the per-step path).
    fn in_range(&self, interval: DeliveryInterval) -> bool {
        interval.start() >= self.range.0 && interval.start() < self.range.1
    }

    /// The intervals of a local trading day (92, 96 or 100). Each day is asked for up to three
    /// times (its forecasts, the next day's, its clearing): the last few are kept.
    fn day_intervals(&mut self, day: NaiveDate) -> Vec<DeliveryInterval> {
        if let Some((_, intervals)) = self.day_cache.iter().find(|(d, _)| *d == day) {
            return intervals.clone();
        }
        let intervals = self.compute_day_intervals(day);
        if self.day_cache.len() == DAY_CACHE_LEN {
            self.day_cache.pop_front();
        }
        self.day_cache.push_back((day, intervals.clone()));
        intervals
    }

    /// From the day's local midnight to the next, by instant: no time-zone conversion per
    /// interval.
    fn compute_day_intervals(&self, day: NaiveDate) -> Vec<DeliveryInterval> {
        let end = self.local_midnight(day.succ_opt().unwrap_or(day));
        let mut i = DeliveryInterval::containing(self.local_midnight(day));
        let mut out = Vec::with_capacity(100);
        while i.start() < end && out.len() < 100 {
            out.push(i);
            i = i.next();
        }
        out
    }

    /// One step at the start of `now`; true when a trading day ended there.
    fn step(&mut self, now: DeliveryInterval) -> Result<bool, BacktestError> {
        let t = now.start();
        self.deliver(now.previous());
        self.gate.on_tick(t);
        for k in 0..self.slots.len() {
            let slot = &self.slots[k];
            let update = match slot.capacity {
                Some(c) if slot.capacity_energy_mwh == slot.energy_mwh => {
                    CapacityUpdate { at: t, ..c }
                }
                _ => self.capacity_of(k, t),
            };
            self.slots[k].capacity = Some(update);
            self.slots[k].capacity_energy_mwh = self.slots[k].energy_mwh;
            let mut for_gate = update;
            if !self.cfg.gate_storage_budget {
                for_gate.storage = None;
            }
            self.gate.on_capacity(&for_gate, &self.slots[k].battery, t);
            self.callback(k, t, |h| h.on_capacity(t, &update))?;
        }
        let (mut forecasts, mut clearing, mut day_ended) = (None, None, false);
        while let Some(&(at, what)) = self.schedule.front() {
            if at > t {
                break;
            }
            self.schedule.pop_front();
            // An instant off the 15-minute grid is never stepped on: skipped, as a lookup by
            // instant would. Each kind falls due at most once per instant.
            if at < t {
                continue;
            }
            match what {
                Scheduled::Forecasts(day) => forecasts = Some(day),
                Scheduled::Clearing(day) => clearing = Some(day),
                Scheduled::DayEnd => day_ended = true,
            }
        }
        if let Some(day) = forecasts {
            self.publish_forecasts(day, t)?;
        }
        self.publish_real_time(now.next(), t)?;
        self.fire_timers(t)?;
        if let Some(day) = clearing {
            self.clear_day(day, t)?;
        }
        Ok(day_ended)
    }

    fn day_in_range(&self, day: NaiveDate) -> bool {
        day >= self.cfg.from && day <= self.cfg.to
    }

    /// Moves each battery by its net position in the delivered interval.
    fn deliver(&mut self, interval: DeliveryInterval) {
        if !self.in_range(interval) {
            return;
        }
        for slot in &mut self.slots {
            let mut net_sold = Decimal::ZERO;
            for market_id in [DAY_AHEAD_MARKET, REAL_TIME_MARKET] {
                let key = PositionKey {
                    aggregation_id: slot.agg,
                    market_id,
                    interval,
                };
                if let Some(p) = self.ledger.position(&key) {
                    net_sold += p.net_sold_mw();
                }
            }
            if net_sold.is_zero() {
                // Nothing traded for the interval: the battery stays as it is.
                slot.out.soc.push((interval, slot.energy_mwh));
                continue;
            }
            let b = &slot.battery;
            let wanted = if net_sold > Decimal::ZERO {
                -net_sold * HOURS_PER_INTERVAL
            } else {
                -net_sold * HOURS_PER_INTERVAL * b.efficiency
            };
            let after = (slot.energy_mwh + wanted).clamp(Decimal::ZERO, b.energy_mwh);
            let moved = after - slot.energy_mwh;
            slot.out.undelivered_mwh += (wanted - moved).abs();
            if moved < Decimal::ZERO {
                slot.out.discharged_mwh -= moved;
            }
            slot.energy_mwh = after;
            slot.out.soc.push((interval, after));
        }
    }

    fn capacity_of(&self, k: usize, t: Timestamp) -> CapacityUpdate {
        let slot = &self.slots[k];
        let b = &slot.battery;
        let power_kw = b.power_mw * dec!(1000);
        let energy_kwh = slot.energy_mwh * dec!(1000);
        let capacity_kwh = b.energy_mwh * dec!(1000);
        CapacityUpdate {
            aggregation_id: slot.agg,
            capacity: AggregatedCapacity {
                up_flex_kw: power_kw,
                down_flex_kw: power_kw,
                energy_kwh,
                charge_headroom_kwh: capacity_kwh * b.soc_max_pct / dec!(100) - energy_kwh,
                available_resources: 1,
            },
            storage: Some(StorageState {
                soc_pct: slot.energy_mwh * dec!(100) / b.energy_mwh,
                energy_kwh,
                capacity_kwh,
            }),
            at: t,
        }
    }

    fn forecast(&self, interval: DeliveryInterval) -> Option<Decimal> {
        match self.cfg.forecast {
            ForecastMode::Perfect => self.prices.get(interval),
            ForecastMode::PreviousDay => {
                let tz = self.cfg.timezone;
                let local = interval.start().with_timezone(&tz).naive_local() - Duration::days(1);
                let earlier = tz.from_local_datetime(&local).earliest()?;
                self.prices
                    .get(DeliveryInterval::containing(earlier.with_timezone(&Utc)))
            }
        }
    }

    fn publish_forecasts(&mut self, day: NaiveDate, t: Timestamp) -> Result<(), BacktestError> {
        let intervals = self.day_intervals(day);
        // Two ordinary days (no clock change in either): the same local time a day earlier is
        // the interval at the same position, found without a time-zone conversion.
        let aligned_previous = match (self.cfg.forecast, day.pred_opt()) {
            (ForecastMode::PreviousDay, Some(previous)) if intervals.len() == 96 => {
                Some(self.day_intervals(previous)).filter(|p| p.len() == 96)
            }
            _ => None,
        };
        for (i, interval) in intervals.into_iter().enumerate() {
            let reference = match &aligned_previous {
                Some(previous) => previous.get(i).and_then(|p| self.prices.get(*p)),
                None => self.forecast(interval),
            };
            let Some(reference) = reference else {
                continue;
            };
            let data = MarketData::Price {
                market: DAY_AHEAD_MARKET,
                interval,
                reference_price_cny_per_mwh: reference,
                last_trade_price_cny_per_mwh: None,
                at: t,
            };
            self.broadcast(t, &data)?;
        }
        Ok(())
    }

    /// The real-time mid of an interval: day-ahead price plus seeded noise in 0.01 steps.
    fn rt_mid(&self, interval: DeliveryInterval, da: Decimal) -> Decimal {
        let cents = self.rt_noise_cents;
        if cents == 0 {
            return da;
        }
        // SplitMix64 of seed and interval: seeded, order-independent and cheap.
        let span = u64::try_from(2 * cents + 1).unwrap_or(1);
        let draw = mix(i64::from_ne_bytes(
            (self.cfg.seed ^ mix(interval.epoch_seconds())).to_ne_bytes(),
        )) % span;
        da + Decimal::new(i64::try_from(draw).unwrap_or(0) - cents, 2)
    }

    fn rt_book(&mut self, interval: DeliveryInterval) -> Option<RtBook> {
        if let Some((cached, book)) = self.rt_cache {
            if cached == interval {
                return Some(book);
            }
        }
        let day_ahead = self.prices.get(interval)?;
        let mid = self.rt_mid(interval, day_ahead);
        let half = self.cfg.real_time.half_spread_cny_per_mwh;
        let book = RtBook {
            bid: mid - half,
            mid,
            ask: mid + half,
            day_ahead,
        };
        self.rt_cache = Some((interval, book));
        Some(book)
    }

    fn publish_real_time(
        &mut self,
        interval: DeliveryInterval,
        t: Timestamp,
    ) -> Result<(), BacktestError> {
        if !self.in_range(interval) {
            return Ok(());
        }
        let Some(RtBook {
            bid,
            mid,
            ask,
            day_ahead: da,
        }) = self.rt_book(interval)
        else {
            return Ok(());
        };
        let depth = self.cfg.real_time.depth_mw;
        let level = |price| PriceLevel {
            price_cny_per_mwh: price,
            quantity_mw: depth,
        };
        let top = MarketData::BookTop {
            market: REAL_TIME_MARKET,
            interval,
            best_bid: Some(level(bid)),
            best_ask: Some(level(ask)),
            at: t,
        };
        self.broadcast(t, &top)?;
        let last = MarketData::Price {
            market: REAL_TIME_MARKET,
            interval,
            reference_price_cny_per_mwh: da,
            last_trade_price_cny_per_mwh: Some(mid),
            at: t,
        };
        self.broadcast(t, &last)
    }

    /// Delivers the timers of the live schedule ([`timers_due`]) due by `t`. The schedule is
    /// asked one day ahead at a time and buffered with each timer's firing instant, which
    /// keeps its time-zone arithmetic off the per-step path.
    fn fire_timers(&mut self, t: Timestamp) -> Result<(), BacktestError> {
        let lead = Duration::minutes(i64::from(self.cfg.gate_lead_minutes));
        if t > self.timers_covered {
            let mut buf = std::mem::take(&mut self.timers);
            buf.clear();
            let from = self.timers_covered;
            self.timers_covered = timers_due(
                &self.markets[..1],
                lead,
                from,
                from + Duration::days(1),
                &mut buf,
            );
            for timer in buf.drain(..) {
                let at = match timer {
                    Timer::IntervalStart { interval } => interval.start(),
                    Timer::GateClosureApproaching { trading_day, .. } => {
                        self.gate_of(trading_day) - lead
                    }
                };
                self.pending_timers.push_back((at, timer));
            }
            self.timers = buf;
        }
        while let Some(&(at, timer)) = self.pending_timers.front() {
            if at > t {
                break;
            }
            self.pending_timers.pop_front();
            let keep = match timer {
                Timer::GateClosureApproaching { trading_day, .. } => self.day_in_range(trading_day),
                Timer::IntervalStart { interval } => self.in_range(interval),
            };
            if keep {
                for k in 0..self.slots.len() {
                    self.callback(k, t, |h| h.on_timer(t, &timer))?;
                }
            }
        }
        Ok(())
    }

    fn broadcast(&mut self, t: Timestamp, data: &MarketData) -> Result<(), BacktestError> {
        for k in 0..self.slots.len() {
            self.callback(k, t, |h| h.on_market_data(t, data))?;
        }
        Ok(())
    }

    /// Runs one host callback and everything it sets off, to the end of the chain.
    fn callback(
        &mut self,
        k: usize,
        t: Timestamp,
        call: impl FnOnce(&mut StrategyHost) -> Result<&[OrderIntent], StrategyError>,
    ) -> Result<(), BacktestError> {
        if self.slots[k].killed {
            return Ok(());
        }
        self.events += 1;
        let result = call(&mut self.slots[k].host).map(<[OrderIntent]>::to_vec);
        self.take_result(k, t, result);
        self.drain(t)
    }

    fn take_result(
        &mut self,
        k: usize,
        t: Timestamp,
        result: Result<Vec<OrderIntent>, StrategyError>,
    ) {
        match result {
            Ok(intents) => {
                for intent in intents {
                    self.queue.push_back(Work::Intent(k, intent));
                }
            }
            Err(e) => {
                let text = e.to_string();
                if crate::strategy::rules::is_kill_request(&e) {
                    self.kill(k, &text, t);
                }
                let key: String = text.chars().take(80).collect();
                *self.slots[k].out.strategy_errors.entry(key).or_insert(0) += 1;
            }
        }
    }

    /// A kill request: the gate's kill switch names the orders to cancel; the strategy stops.
    fn kill(&mut self, k: usize, why: &str, t: Timestamp) {
        let sid = self.slots[k].host.config().strategy_id;
        let mut ids = self.gate.engage_kill_switch(sid, why, t);
        for orders in self.resting.values() {
            ids.extend(
                orders
                    .iter()
                    .filter(|(s, _)| *s == k)
                    .map(|(_, id)| id.clone()),
            );
        }
        ids.sort();
        ids.dedup();
        for id in ids {
            self.queue.push_back(Work::Intent(
                k,
                OrderIntent::Cancel {
                    client_order_id: id,
                },
            ));
        }
        self.slots[k].killed = true;
    }

    fn drain(&mut self, t: Timestamp) -> Result<(), BacktestError> {
        let mut handled = 0usize;
        while let Some(work) = self.queue.pop_front() {
            handled += 1;
            if handled > MAX_WORK_PER_STEP {
                self.queue.clear();
                return Err(BacktestError::Runaway { at: t });
            }
            match work {
                Work::Intent(k, intent) => self.intent(k, intent, t)?,
                Work::Report(k, report) => self.report(k, report, t)?,
            }
        }
        Ok(())
    }

    fn next_report(&mut self, id: &ClientOrderId, kind: ExecKind, t: Timestamp) -> ExecReport {
        self.seq += 1;
        ExecReport {
            seq: self.seq,
            client_order_id: id.clone(),
            venue_order_id: None,
            kind,
            at: t,
        }
    }

    fn apply(&mut self, event: OrderEvent) -> Result<Option<OrderStatus>, BacktestError> {
        let outcome = self
            .ledger
            .apply(&event)
            .map_err(|e| BacktestError::Ledger(e.to_string()))?;
        self.gate.on_order_event(&event, &outcome);
        Ok(outcome.to)
    }

    fn intent(&mut self, k: usize, intent: OrderIntent, t: Timestamp) -> Result<(), BacktestError> {
        match intent {
            OrderIntent::New(request) => {
                self.slots[k].out.orders += 1;
                if let Err(reject) = self.gate.evaluate(&request, t) {
                    *self.slots[k]
                        .out
                        .rejects
                        .entry(reject.code.clone())
                        .or_insert(0) += 1;
                    let rejection = RiskRejection {
                        client_order_id: request.client_order_id.clone(),
                        code: reject.code,
                        message: reject.message,
                    };
                    if !self.slots[k].killed {
                        self.events += 1;
                        let r = self.slots[k]
                            .host
                            .on_risk_reject(t, &rejection)
                            .map(<[OrderIntent]>::to_vec);
                        self.take_result(k, t, r);
                    }
                    return Ok(());
                }
                let id = request.client_order_id.clone();
                self.apply(OrderEvent {
                    client_order_id: id.clone(),
                    at: t,
                    kind: OrderEventKind::Created { request },
                })?;
                self.venue_new(k, &id, t);
            }
            OrderIntent::Cancel { client_order_id } => {
                let resting = self.take_resting(&client_order_id);
                if resting {
                    self.apply(OrderEvent {
                        client_order_id: client_order_id.clone(),
                        at: t,
                        kind: OrderEventKind::CancelRequested {
                            reason: "strategy".into(),
                        },
                    })?;
                    let r = self.next_report(
                        &client_order_id,
                        ExecKind::Cancelled {
                            reason: "cancelled before clearing".into(),
                        },
                        t,
                    );
                    self.queue.push_front(Work::Report(k, r));
                }
            }
            OrderIntent::Replace {
                client_order_id,
                quantity_mw,
                price_cny_per_mwh,
            } => {
                let open = self
                    .resting
                    .values()
                    .flatten()
                    .any(|(_, id)| *id == client_order_id);
                if open {
                    let r = self.next_report(
                        &client_order_id,
                        ExecKind::Replaced {
                            quantity_mw,
                            price_cny_per_mwh,
                        },
                        t,
                    );
                    self.queue.push_front(Work::Report(k, r));
                }
            }
        }
        Ok(())
    }

    fn take_resting(&mut self, id: &ClientOrderId) -> bool {
        for orders in self.resting.values_mut() {
            if let Some(pos) = orders.iter().position(|(_, o)| o == id) {
                orders.remove(pos);
                return true;
            }
        }
        false
    }

    /// The venue's answer to a new order: reject, rest (day-ahead) or match (real-time).
    fn venue_new(&mut self, k: usize, id: &ClientOrderId, t: Timestamp) {
        let replies = self.venue_replies(k, id, t);
        // The venue answers at once: its reports go before any other queued work, so a
        // cancel queued behind them never meets an order the venue has not acknowledged.
        for report in replies.into_iter().rev() {
            self.queue.push_front(Work::Report(k, report));
        }
    }

    fn venue_replies(&mut self, k: usize, id: &ClientOrderId, t: Timestamp) -> Vec<ExecReport> {
        let mut replies = Vec::with_capacity(3);
        let Some(order) = self.ledger.order(id) else {
            return replies;
        };
        let r = order.request.clone();
        let market = self.markets.iter().find(|m| m.id == r.market_id);
        let refusal = match market {
            None => Some(format!("unknown market {}", r.market_id)),
            Some(m) => m
                .check_price(r.price_cny_per_mwh)
                .err()
                .map(|e| e.to_string())
                .or_else(|| {
                    (t >= r.interval.start()).then(|| "interval already in delivery".to_owned())
                })
                .or_else(|| {
                    (r.market_id == DAY_AHEAD_MARKET && t >= m.gate_closure_for(r.interval))
                        .then(|| "day-ahead gate closed".to_owned())
                }),
        };
        if let Some(reason) = refusal {
            *self.slots[k]
                .out
                .rejects
                .entry(format!("venue: {reason}").chars().take(60).collect())
                .or_insert(0) += 1;
            let report = self.next_report(id, ExecKind::Rejected { reason }, t);
            replies.push(report);
            return replies;
        }
        let accepted = self.next_report(id, ExecKind::Accepted, t);
        replies.push(accepted);
        if r.market_id == DAY_AHEAD_MARKET {
            self.resting
                .entry(r.interval)
                .or_default()
                .push((k, id.clone()));
            return replies;
        }
        let filled = self.match_real_time(r.interval, r.side, r.quantity_mw, r.price_cny_per_mwh);
        if let Some((qty, price)) = filled {
            self.fill_id += 1;
            let fill = ExecKind::Fill {
                fill_id: FillId(self.fill_id),
                quantity_mw: qty,
                price_cny_per_mwh: price,
            };
            let report = self.next_report(id, fill, t);
            replies.push(report);
        }
        if filled.is_none_or(|(q, _)| q < r.quantity_mw) {
            let report = self.next_report(
                id,
                ExecKind::Cancelled {
                    reason: "immediate-or-cancel remainder".into(),
                },
                t,
            );
            replies.push(report);
        }
        replies
    }

    /// Takes depth at the touch if the limit crosses it.
    fn match_real_time(
        &mut self,
        interval: DeliveryInterval,
        side: Side,
        quantity_mw: Decimal,
        limit: Decimal,
    ) -> Option<(Decimal, Decimal)> {
        let RtBook { bid, ask, .. } = self.rt_book(interval)?;
        let (touch, crosses) = match side {
            Side::Buy => (ask, limit >= ask),
            Side::Sell => (bid, limit <= bid),
        };
        if !crosses {
            return None;
        }
        let taken = self
            .rt_taken
            .entry((interval, side == Side::Buy))
            .or_insert(Decimal::ZERO);
        let qty = quantity_mw.min(self.cfg.real_time.depth_mw - *taken);
        if qty <= Decimal::ZERO {
            return None;
        }
        *taken += qty;
        Some((qty, touch))
    }

    fn report(&mut self, k: usize, report: ExecReport, t: Timestamp) -> Result<(), BacktestError> {
        let status = self.apply(OrderEvent {
            client_order_id: report.client_order_id.clone(),
            at: t,
            kind: OrderEventKind::Report {
                report: report.clone(),
            },
        })?;
        if matches!(report.kind, ExecKind::Fill { .. }) {
            self.slots[k].out.fills += 1;
        }
        let Some(status) = status else {
            return Ok(());
        };
        if self.slots[k].killed {
            return Ok(());
        }
        self.events += 1;
        let r = self.slots[k]
            .host
            .on_exec_report(t, &report, status)
            .map(<[OrderIntent]>::to_vec);
        self.take_result(k, t, r);
        Ok(())
    }

    /// Clears every interval of a trading day against its historical price.
    fn clear_day(&mut self, day: NaiveDate, t: Timestamp) -> Result<(), BacktestError> {
        for interval in self.day_intervals(day) {
            let orders = self.resting.remove(&interval).unwrap_or_default();
            let price = self.prices.get(interval);
            let bids: Vec<DayAheadBid> = orders
                .iter()
                .filter_map(|(_, id)| self.ledger.order(id))
                .map(|o| DayAheadBid {
                    side: o.request.side,
                    quantity_mw: o.remaining_mw(),
                    price_cny_per_mwh: o.price_cny_per_mwh,
                })
                .collect();
            let awards = match price {
                Some(p) if bids.len() == orders.len() => self.clearing.clear(p, &bids),
                _ => vec![Decimal::ZERO; orders.len()],
            };
            for (((k, id), bid), award) in orders.iter().zip(&bids).zip(awards) {
                let award = award.clamp(Decimal::ZERO, bid.quantity_mw);
                if let (true, Some(p)) = (award > Decimal::ZERO, price) {
                    self.fill_id += 1;
                    let fill = ExecKind::Fill {
                        fill_id: FillId(self.fill_id),
                        quantity_mw: award,
                        price_cny_per_mwh: p,
                    };
                    let r = self.next_report(id, fill, t);
                    self.queue.push_back(Work::Report(*k, r));
                }
                if award < bid.quantity_mw {
                    let r = self.next_report(id, ExecKind::Expired, t);
                    self.queue.push_back(Work::Report(*k, r));
                }
            }
            self.drain(t)?;
            let volume: Decimal = bids.iter().map(|b| b.quantity_mw).sum();
            let result = MarketData::AuctionResult {
                market: DAY_AHEAD_MARKET,
                interval,
                clearing_price_cny_per_mwh: price,
                volume_mw: volume,
                at: t,
            };
            self.broadcast(t, &result)?;
        }
        Ok(())
    }

    fn finish(self) -> BacktestReport {
        let collected = Collected {
            cfg: self.cfg,
            prices: self.prices,
            ledger: &self.ledger,
            events: self.events,
            slots: self
                .slots
                .into_iter()
                .map(|s| {
                    let kind = s.host.kind();
                    (s.name, s.role, kind, s.battery, s.agg, s.energy_mwh, s.out)
                })
                .collect(),
        };
        report::build(collected)
    }
}

/// SplitMix64 finaliser: a stable per-interval seed mix.
fn mix(x: i64) -> u64 {
    let mut z = (x as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
