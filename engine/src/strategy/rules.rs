//! Rule strategies (`rules`): IF-THEN rules from config, one flat text parameter per rule.
//!
//! ```toml
//! [strategies.params]
//! market = "real_time"            # or "day_ahead"
//! capacity_mw = 2                 # largest quantity a rule may ask for
//! "rule.10_sell_spikes" = "when price > 900 and soc >= 30 then sell 50% at ref - 5"
//! "rule.20_cheap_night" = "when forecast < 200 and hour in 1..5 and weekday in mon..fri then buy 1 MW at market"
//! "rule.90_panic"       = "when price > 20000 then kill"
//! ```
//!
//! Conditions: `price` (current: the real-time last trade), `forecast` (the reference /
//! day-ahead price), `spread` (price − forecast), `soc` (percent), `up_flex`, `down_flex`
//! (available MW), `hour` (local hour of the interval start, 0..23), `interval` (index of day,
//! 1..=96), each compared with `< <= > >= == !=` to a number, or `hour|interval in a..b`
//! (inclusive); `weekday in mon..fri` or `weekday in sat,sun`; `dr_event` (a demand-response
//! invitation is open for the interval: a price on the `dr_market`). Combine with `and` (all),
//! `or` (any), `not` and parentheses. A comparison with a value not known (no price yet) is
//! false.
//!
//! Actions: `buy|sell <q> MW|% at market|<price>|ref [+|- <offset>]` — `%` is a share of the
//! available flexibility (down for buys, up for sells); `ref` is the forecast in day-ahead and
//! the last trade in real-time; `market` bids the price cap (buy) or floor (sell).
//! `cancel` cancels the strategy's open orders for the interval. `kill` is the error-level
//! signal: the callback fails with [`StrategyError::Failed`] starting with
//! [`KILL_SWITCH_PREFIX`] (see [`is_kill_request`]); the runtime engages the strategy's kill
//! switch in risk, which cancels its open orders, and the strategy latches halted.
//!
//! When rules run: in a `day_ahead` market, on `GateClosureApproaching` for every interval of
//! the trading day that has a forecast (orders good for the day); in `real_time`, on every
//! price update carrying a last trade for an interval not yet started (immediate-or-cancel).
//! Rules run in name order; each rule acts at most once per interval.
//!
//! Validation at load, errors naming the rule and field: unknown market, unknown condition or
//! action word, quantity above `capacity_mw`, a share outside (0, 100], an absolute price
//! outside the market's band, `price`/`spread` in a day-ahead market (unknown before clearing),
//! and contradictory conditions (`price > 100 and price < 50`: the and-chain's bounds on one
//! field leave nothing).

use super::{
    MarketData, NewOrder, Strategy, StrategyContext, StrategyError, StrategyInit, StrategySnapshot,
    Timer,
};
use crate::ids::MarketId;
use crate::market::{DeliveryInterval, Market, MarketKind};
use crate::order::{Side, TimeInForce};
use chrono::{Datelike, Timelike};
use rust_decimal::{Decimal, RoundingStrategy};
use rust_decimal_macros::dec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

/// Prefix of the error message a `kill` action fails its callback with.
pub const KILL_SWITCH_PREFIX: &str = "kill_switch:";
/// Most rules per strategy.
pub const MAX_RULES: usize = 32;
/// Deepest nesting of conditions.
const MAX_DEPTH: usize = 16;
/// Remembered (rule, interval) firings and DR events.
const MAX_REMEMBERED: usize = 4_096;

/// Whether a strategy error is a rule's kill-switch request.
pub fn is_kill_request(e: &StrategyError) -> bool {
    matches!(e, StrategyError::Failed(m) if m.starts_with(KILL_SWITCH_PREFIX))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Price,
    Forecast,
    Spread,
    Soc,
    UpFlex,
    DownFlex,
    Hour,
    Interval,
}

impl Field {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "price" => Self::Price,
            "forecast" => Self::Forecast,
            "spread" => Self::Spread,
            "soc" => Self::Soc,
            "up_flex" => Self::UpFlex,
            "down_flex" => Self::DownFlex,
            "hour" => Self::Hour,
            "interval" => Self::Interval,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Cond {
    Cmp(Field, Op, Decimal),
    Weekdays(u8),
    DrEvent,
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qty {
    Mw(Decimal),
    Share(Decimal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PriceSpec {
    Market,
    Fixed(Decimal),
    Ref(Decimal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Trade(Side, Qty, PriceSpec),
    Cancel,
    Kill,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    name: String,
    when: Cond,
    then: Action,
}

/// Values a condition reads for one interval.
#[derive(Debug, Clone, Copy)]
struct Facts {
    interval: DeliveryInterval,
    price: Option<Decimal>,
    forecast: Option<Decimal>,
    soc: Option<Decimal>,
    up_mw: Decimal,
    down_mw: Decimal,
    dr_event: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RulesState {
    fired: BTreeSet<(usize, DeliveryInterval)>,
    forecasts: BTreeMap<DeliveryInterval, Decimal>,
    dr_events: BTreeSet<DeliveryInterval>,
    killed: bool,
}

/// A validated set of rules for one market.
#[derive(Debug, Clone)]
pub struct RuleStrategy {
    market: Market,
    dr_market: Option<MarketId>,
    rules: Vec<Rule>,
    state: RulesState,
}

fn err(rule: &str, field: &str, reason: impl Into<String>) -> StrategyError {
    StrategyError::param(format!("rule.{rule}.{field}"), reason)
}

impl RuleStrategy {
    pub const KIND: &'static str = "rules";

    /// The registry constructor. Parameters: `market` (`day_ahead` | `real_time`, must match
    /// the instance's market), `capacity_mw` (default 1), `dr_market` (a market id, optional)
    /// and `rule.<name>` texts.
    pub fn construct(init: &StrategyInit) -> Result<Box<dyn Strategy>, StrategyError> {
        Ok(Box::new(Self::from_params(init)?))
    }

    pub fn from_params(init: &StrategyInit) -> Result<Self, StrategyError> {
        let p = &init.params;
        for name in p.names() {
            if !matches!(name, "market" | "capacity_mw" | "dr_market") && !name.starts_with("rule.")
            {
                return Err(StrategyError::param(
                    name,
                    "unknown parameter; accepted: market, capacity_mw, dr_market, rule.<name>",
                ));
            }
        }
        let market_text = p.text("market")?.unwrap_or(init.market.kind.as_str());
        let kind = MarketKind::parse(market_text)
            .ok()
            .filter(|k| matches!(k, MarketKind::DayAhead | MarketKind::RealTime))
            .ok_or_else(|| {
                StrategyError::param(
                    "market",
                    format!("unknown market {market_text:?}; rules trade day_ahead or real_time"),
                )
            })?;
        if kind != init.market.kind {
            return Err(StrategyError::param(
                "market",
                format!(
                    "{market_text} differs from the instance's market {} ({})",
                    init.market.name, init.market.kind
                ),
            ));
        }
        let capacity = p.decimal_or("capacity_mw", Decimal::ONE)?;
        if capacity <= Decimal::ZERO {
            return Err(StrategyError::param(
                "capacity_mw",
                format!("{capacity} must be > 0"),
            ));
        }
        let dr_market = p
            .decimal("dr_market")?
            .map(|d| {
                u64::try_from(d).map(MarketId).map_err(|_| {
                    StrategyError::param("dr_market", format!("{d} is not a market id"))
                })
            })
            .transpose()?;
        let mut rules = Vec::new();
        for name in p.names().filter_map(|n| n.strip_prefix("rule.")) {
            let text = p.text(&format!("rule.{name}"))?.unwrap_or_default();
            let rule = parse_rule(name, text)?;
            validate(&rule, &init.market, capacity)?;
            rules.push(rule);
        }
        if rules.is_empty() || rules.len() > MAX_RULES {
            return Err(StrategyError::param(
                "rule",
                format!(
                    "{} rules given; need 1..={MAX_RULES} rule.<name> parameters",
                    rules.len()
                ),
            ));
        }
        Ok(Self {
            market: init.market.clone(),
            dr_market,
            rules,
            state: RulesState::default(),
        })
    }

    fn facts(
        &self,
        ctx: &StrategyContext<'_>,
        interval: DeliveryInterval,
        price: Option<Decimal>,
        forecast: Option<Decimal>,
    ) -> Facts {
        let cap = ctx.capacity();
        Facts {
            interval,
            price,
            forecast,
            soc: cap.and_then(|c| c.storage).map(|s| s.soc_pct),
            up_mw: cap.map_or(Decimal::ZERO, |c| c.capacity.up_flex_kw * dec!(0.001)),
            down_mw: cap.map_or(Decimal::ZERO, |c| c.capacity.down_flex_kw * dec!(0.001)),
            dr_event: self.state.dr_events.contains(&interval),
        }
    }

    fn run_rules(&mut self, ctx: &mut StrategyContext<'_>, f: &Facts) -> Result<(), StrategyError> {
        for i in 0..self.rules.len() {
            let key = (i, f.interval);
            if self.state.fired.contains(&key)
                || !eval(&self.rules[i].when, f, self.market.timezone)
            {
                continue;
            }
            self.state.fired.insert(key);
            while self.state.fired.len() > MAX_REMEMBERED {
                self.state.fired.pop_first();
            }
            match self.rules[i].then {
                Action::Kill => {
                    self.state.killed = true;
                    return Err(StrategyError::Failed(format!(
                        "{KILL_SWITCH_PREFIX} rule {} fired for {}",
                        self.rules[i].name, f.interval
                    )));
                }
                Action::Cancel => {
                    let ids: Vec<_> = ctx
                        .open_orders()
                        .filter(|o| {
                            o.request.interval == f.interval
                                && o.request.market_id == self.market.id
                        })
                        .filter(|o| o.status != crate::order::OrderStatus::PendingCancel)
                        .map(|o| o.id().clone())
                        .collect();
                    for id in ids {
                        ctx.cancel(&id)?;
                    }
                }
                Action::Trade(side, qty, price) => self.trade(ctx, f, side, qty, price)?,
            }
        }
        Ok(())
    }

    fn trade(
        &self,
        ctx: &mut StrategyContext<'_>,
        f: &Facts,
        side: Side,
        qty: Qty,
        price: PriceSpec,
    ) -> Result<(), StrategyError> {
        let flex = match side {
            Side::Buy => f.down_mw,
            Side::Sell => f.up_mw,
        };
        let mw = match qty {
            Qty::Mw(q) => q.min(flex),
            Qty::Share(pct) => flex * pct / dec!(100),
        }
        .round_dp_with_strategy(3, RoundingStrategy::ToZero);
        let reference = match self.market.kind {
            MarketKind::DayAhead => f.forecast,
            _ => f.price,
        };
        let limit = match price {
            PriceSpec::Market => Some(match side {
                Side::Buy => self.market.price_cap_cny_per_mwh,
                Side::Sell => self.market.price_floor_cny_per_mwh,
            }),
            PriceSpec::Fixed(p) => Some(p),
            PriceSpec::Ref(offset) => reference.map(|r| r + offset),
        };
        let Some(limit) = limit else { return Ok(()) };
        if mw <= Decimal::ZERO || self.market.check_price(limit).is_err() {
            return Ok(());
        }
        ctx.submit(NewOrder {
            market_id: self.market.id,
            product: self.market.kind.default_product(),
            interval: f.interval,
            side,
            quantity_mw: mw,
            price_cny_per_mwh: limit,
            time_in_force: if self.market.kind == MarketKind::DayAhead {
                TimeInForce::Day
            } else {
                TimeInForce::Ioc
            },
        })?;
        Ok(())
    }
}

impl Strategy for RuleStrategy {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn on_market_data(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        data: &MarketData,
    ) -> Result<(), StrategyError> {
        if self.state.killed {
            return Ok(());
        }
        let MarketData::Price {
            market,
            interval,
            reference_price_cny_per_mwh: reference,
            last_trade_price_cny_per_mwh: last,
            ..
        } = *data
        else {
            return Ok(());
        };
        if Some(market) == self.dr_market {
            self.state.dr_events.insert(interval);
            while self.state.dr_events.len() > MAX_REMEMBERED {
                self.state.dr_events.pop_first();
            }
            return Ok(());
        }
        if market != self.market.id {
            return Ok(());
        }
        if self.market.kind == MarketKind::DayAhead {
            let f = &mut self.state.forecasts;
            f.insert(interval, reference);
            while f.len() > 400 {
                f.pop_first();
            }
            return Ok(());
        }
        if last.is_none() || interval.start() <= ctx.now() {
            return Ok(());
        }
        let facts = self.facts(ctx, interval, last, Some(reference));
        self.run_rules(ctx, &facts)
    }

    fn on_timer(
        &mut self,
        ctx: &mut StrategyContext<'_>,
        timer: &Timer,
    ) -> Result<(), StrategyError> {
        let Timer::GateClosureApproaching {
            market,
            trading_day,
        } = *timer
        else {
            return Ok(());
        };
        if self.state.killed || market != self.market.id || self.market.kind != MarketKind::DayAhead
        {
            return Ok(());
        }
        let tz = self.market.timezone;
        let day: Vec<(DeliveryInterval, Decimal)> = self
            .state
            .forecasts
            .iter()
            .filter(|(i, _)| i.trading_day(tz) == trading_day)
            .map(|(i, p)| (*i, *p))
            .collect();
        for (interval, forecast) in day {
            let facts = self.facts(ctx, interval, None, Some(forecast));
            self.run_rules(ctx, &facts)?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<StrategySnapshot, StrategyError> {
        StrategySnapshot::encode(Self::KIND, 1, &self.state)
    }

    fn restore(&mut self, snapshot: &StrategySnapshot) -> Result<(), StrategyError> {
        let state: RulesState = snapshot.decode(Self::KIND, 1)?;
        if state.fired.len() > MAX_REMEMBERED
            || state.dr_events.len() > MAX_REMEMBERED
            || state.forecasts.len() > 400
        {
            return Err(StrategyError::Snapshot(
                "rules: snapshot exceeds its bounds".into(),
            ));
        }
        self.state = state;
        Ok(())
    }
}

// ----- evaluation ------------------------------------------------------------------------

fn eval(c: &Cond, f: &Facts, tz: chrono_tz::Tz) -> bool {
    match c {
        Cond::All(cs) => cs.iter().all(|c| eval(c, f, tz)),
        Cond::Any(cs) => cs.iter().any(|c| eval(c, f, tz)),
        Cond::Not(c) => !eval(c, f, tz),
        Cond::DrEvent => f.dr_event,
        Cond::Weekdays(mask) => {
            let wd = f
                .interval
                .start()
                .with_timezone(&tz)
                .weekday()
                .num_days_from_monday();
            mask & (1 << wd) != 0
        }
        Cond::Cmp(field, op, v) => {
            let local = f.interval.start().with_timezone(&tz);
            let value = match field {
                Field::Price => f.price,
                Field::Forecast => f.forecast,
                Field::Spread => f.price.zip(f.forecast).map(|(p, r)| p - r),
                Field::Soc => f.soc,
                Field::UpFlex => Some(f.up_mw),
                Field::DownFlex => Some(f.down_mw),
                Field::Hour => Some(Decimal::from(local.hour())),
                Field::Interval => Some(Decimal::from(f.interval.index_of_day(tz))),
            };
            value.is_some_and(|x| match op {
                Op::Lt => x < *v,
                Op::Le => x <= *v,
                Op::Gt => x > *v,
                Op::Ge => x >= *v,
                Op::Eq => x == *v,
                Op::Ne => x != *v,
            })
        }
    }
}

// ----- validation ------------------------------------------------------------------------

fn validate(rule: &Rule, market: &Market, capacity_mw: Decimal) -> Result<(), StrategyError> {
    let name = &rule.name;
    if market.kind == MarketKind::DayAhead && uses(&rule.when, &[Field::Price, Field::Spread]) {
        return Err(err(
            name,
            "when",
            "price and spread are unknown before day-ahead clearing; use forecast",
        ));
    }
    check_contradiction(name, &rule.when)?;
    if let Action::Trade(_, qty, price) = rule.then {
        match qty {
            Qty::Mw(q) if q <= Decimal::ZERO || q > capacity_mw => {
                return Err(err(
                    name,
                    "then.quantity",
                    format!("{q} MW outside (0, capacity_mw {capacity_mw}]"),
                ));
            }
            Qty::Share(s) if s <= Decimal::ZERO || s > dec!(100) => {
                return Err(err(name, "then.quantity", format!("{s}% outside (0, 100]")));
            }
            _ => {}
        }
        if let PriceSpec::Fixed(p) = price {
            market
                .check_price(p)
                .map_err(|e| err(name, "then.price", e.to_string()))?;
        }
    }
    Ok(())
}

fn uses(c: &Cond, fields: &[Field]) -> bool {
    match c {
        Cond::Cmp(f, _, _) => fields.contains(f),
        Cond::All(cs) | Cond::Any(cs) => cs.iter().any(|c| uses(c, fields)),
        Cond::Not(c) => uses(c, fields),
        _ => false,
    }
}

/// Bounds of each field over the top-level and-chain must leave some value.
fn check_contradiction(name: &str, c: &Cond) -> Result<(), StrategyError> {
    let mut atoms = Vec::new();
    flatten_all(c, &mut atoms);
    let mut weekdays = 0x7Fu8;
    let mut bounds: Vec<Bounds> = Vec::new();
    for a in atoms {
        match a {
            Cond::Weekdays(m) => weekdays &= m,
            Cond::Cmp(field, op, v) => {
                let entry = match bounds.iter_mut().position(|b| b.0 == *field) {
                    Some(i) => &mut bounds[i],
                    None => {
                        bounds.push((*field, None, None, Vec::new()));
                        let last = bounds.len() - 1;
                        &mut bounds[last]
                    }
                };
                entry.3.push(format!("{field:?} {op:?} {v}").to_lowercase());
                let (lo, hi) = match op {
                    Op::Gt => (Some((*v, true)), None),
                    Op::Ge => (Some((*v, false)), None),
                    Op::Lt => (None, Some((*v, true))),
                    Op::Le => (None, Some((*v, false))),
                    Op::Eq => (Some((*v, false)), Some((*v, false))),
                    Op::Ne => (None, None),
                };
                if let Some(l) = lo {
                    entry.1 = Some(entry.1.map_or(l, |o| tighter_lo(o, l)));
                }
                if let Some(h) = hi {
                    entry.2 = Some(entry.2.map_or(h, |o| tighter_hi(o, h)));
                }
            }
            _ => {}
        }
    }
    if weekdays == 0 {
        return Err(err(
            name,
            "when",
            "contradictory conditions: the weekday sets do not overlap",
        ));
    }
    for (_, lo, hi, text) in bounds {
        if let (Some((l, lx)), Some((h, hx))) = (lo, hi) {
            if l > h || (l == h && (lx || hx)) {
                return Err(err(
                    name,
                    "when",
                    format!("contradictory conditions: {}", text.join(" and ")),
                ));
            }
        }
    }
    Ok(())
}

/// A field, its lower and upper bound (value, exclusive) and the atoms that set them.
type Bounds = (
    Field,
    Option<(Decimal, bool)>,
    Option<(Decimal, bool)>,
    Vec<String>,
);

fn tighter_lo(a: (Decimal, bool), b: (Decimal, bool)) -> (Decimal, bool) {
    if b.0 > a.0 || (b.0 == a.0 && b.1) {
        b
    } else {
        a
    }
}

fn tighter_hi(a: (Decimal, bool), b: (Decimal, bool)) -> (Decimal, bool) {
    if b.0 < a.0 || (b.0 == a.0 && b.1) {
        b
    } else {
        a
    }
}

fn flatten_all<'c>(c: &'c Cond, out: &mut Vec<&'c Cond>) {
    match c {
        Cond::All(cs) => cs.iter().for_each(|c| flatten_all(c, out)),
        other => out.push(other),
    }
}

// ----- parsing ---------------------------------------------------------------------------

fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        let single = matches!(ch, '(' | ')' | ',' | '+' | '-' | '%');
        let op = matches!(ch, '<' | '>' | '=' | '!');
        if ch.is_whitespace() || single || op {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if single {
                out.push(ch.to_string());
            } else if op {
                let mut t = ch.to_string();
                if chars.peek() == Some(&'=') {
                    t.push('=');
                    chars.next();
                }
                out.push(t);
            }
        } else if ch == '.'
            && chars.peek() == Some(&'.')
            && !cur.contains('.')
            && !cur.is_empty()
            && cur.chars().all(|c| c.is_ascii_alphanumeric())
        {
            chars.next();
            out.push(std::mem::take(&mut cur));
            out.push("..".into());
        } else {
            cur.push(ch);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

struct Parser<'t> {
    rule: &'t str,
    toks: Vec<String>,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.toks.get(self.pos).map(String::as_str)
    }

    fn next(&mut self, field: &str) -> Result<String, StrategyError> {
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or_else(|| err(self.rule, field, "unexpected end of rule"))?;
        self.pos += 1;
        Ok(t)
    }

    fn expect(&mut self, word: &str, field: &str) -> Result<(), StrategyError> {
        let t = self.next(field)?;
        if t != word {
            return Err(err(
                self.rule,
                field,
                format!("expected `{word}`, found `{t}`"),
            ));
        }
        Ok(())
    }

    fn number(&mut self, field: &str) -> Result<Decimal, StrategyError> {
        let mut t = self.next(field)?;
        let negative = t == "-";
        if negative {
            t = self.next(field)?;
        }
        let v = Decimal::from_str(&t)
            .map_err(|_| err(self.rule, field, format!("`{t}` is not a number")))?;
        Ok(if negative { -v } else { v })
    }

    fn or(&mut self, depth: usize) -> Result<Cond, StrategyError> {
        let mut parts = vec![self.and(depth)?];
        while self.peek() == Some("or") {
            self.pos += 1;
            parts.push(self.and(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Cond::Any(parts)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Cond, StrategyError> {
        let mut parts = vec![self.unary(depth)?];
        while self.peek() == Some("and") {
            self.pos += 1;
            parts.push(self.unary(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Cond::All(parts)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Cond, StrategyError> {
        if depth > MAX_DEPTH {
            return Err(err(
                self.rule,
                "when",
                format!("nested deeper than {MAX_DEPTH}"),
            ));
        }
        let t = self.next("when")?;
        match t.as_str() {
            "not" => Ok(Cond::Not(Box::new(self.unary(depth + 1)?))),
            "(" => {
                let c = self.or(depth + 1)?;
                self.expect(")", "when")?;
                Ok(c)
            }
            "dr_event" => Ok(Cond::DrEvent),
            "weekday" => {
                self.expect("in", "when.weekday")?;
                self.weekdays()
            }
            word => self.comparison(word),
        }
    }

    fn comparison(&mut self, word: &str) -> Result<Cond, StrategyError> {
        let field = Field::parse(word).ok_or_else(|| {
            err(self.rule, "when", format!("unknown condition `{word}`; known: price, forecast, spread, soc, up_flex, down_flex, hour, interval, weekday, dr_event"))
        })?;
        let what = format!("when.{word}");
        let op = self.next(&what)?;
        let op = match op.as_str() {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "==" | "=" => Op::Eq,
            "!=" => Op::Ne,
            "in" if matches!(field, Field::Hour | Field::Interval) => {
                let lo = self.number(&what)?;
                self.expect("..", &what)?;
                let hi = self.number(&what)?;
                return Ok(Cond::All(vec![
                    Cond::Cmp(field, Op::Ge, lo),
                    Cond::Cmp(field, Op::Le, hi),
                ]));
            }
            other => {
                return Err(err(
                    self.rule,
                    &what,
                    format!("`{other}` is not a comparison (< <= > >= == !=)"),
                ))
            }
        };
        Ok(Cond::Cmp(field, op, self.number(&what)?))
    }

    fn weekdays(&mut self) -> Result<Cond, StrategyError> {
        let day = |s: &str| {
            ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .position(|d| *d == s)
        };
        let mut mask = 0u8;
        loop {
            let t = self.next("when.weekday")?;
            let a = day(&t)
                .ok_or_else(|| err(self.rule, "when.weekday", format!("`{t}` is not mon..sun")))?;
            let b = if self.peek() == Some("..") {
                self.pos += 1;
                let u = self.next("when.weekday")?;
                day(&u).ok_or_else(|| {
                    err(self.rule, "when.weekday", format!("`{u}` is not mon..sun"))
                })?
            } else {
                a
            };
            if b < a {
                return Err(err(
                    self.rule,
                    "when.weekday",
                    format!("range {t}..{} runs backwards", self.toks[self.pos - 1]),
                ));
            }
            for d in a..=b {
                mask |= 1 << d;
            }
            if self.peek() != Some(",") {
                return Ok(Cond::Weekdays(mask));
            }
            self.pos += 1;
        }
    }

    fn action(&mut self) -> Result<Action, StrategyError> {
        let t = self.next("then")?;
        let side = match t.as_str() {
            "cancel" => return Ok(Action::Cancel),
            "kill" => return Ok(Action::Kill),
            "buy" | "bid" => Side::Buy,
            "sell" | "offer" => Side::Sell,
            other => {
                return Err(err(
                    self.rule,
                    "then",
                    format!("unknown action `{other}`; known: buy, sell, cancel, kill"),
                ))
            }
        };
        let q = self.number("then.quantity")?;
        let unit = self.next("then.quantity")?;
        let qty = match unit.to_ascii_lowercase().as_str() {
            "mw" => Qty::Mw(q),
            "%" => Qty::Share(q),
            other => {
                return Err(err(
                    self.rule,
                    "then.quantity",
                    format!("unit `{other}` is not MW or %"),
                ))
            }
        };
        self.expect("at", "then.price")?;
        let price = match self.peek() {
            Some("market") => {
                self.pos += 1;
                PriceSpec::Market
            }
            Some("ref") => {
                self.pos += 1;
                match self.peek() {
                    Some("+") => {
                        self.pos += 1;
                        PriceSpec::Ref(self.number("then.price")?)
                    }
                    Some("-") => {
                        self.pos += 1;
                        PriceSpec::Ref(-self.number("then.price")?)
                    }
                    _ => PriceSpec::Ref(Decimal::ZERO),
                }
            }
            _ => PriceSpec::Fixed(self.number("then.price")?),
        };
        Ok(Action::Trade(side, qty, price))
    }
}

fn parse_rule(name: &str, text: &str) -> Result<Rule, StrategyError> {
    let mut p = Parser {
        rule: name,
        toks: tokenize(text),
        pos: 0,
    };
    p.expect("when", "when")?;
    let when = p.or(0)?;
    p.expect("then", "then")?;
    let then = p.action()?;
    if let Some(extra) = p.peek() {
        return Err(err(
            name,
            "then",
            format!("unexpected `{extra}` after the action"),
        ));
    }
    Ok(Rule {
        name: name.to_owned(),
        when,
        then,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AggregationId, StrategyId};
    use crate::strategy::{ParamValue, StrategyParams};

    pub(crate) fn market(kind: MarketKind) -> Market {
        Market {
            id: MarketId(2),
            name: "rt".into(),
            kind,
            timezone: chrono_tz::Europe::Brussels,
            price_cap_cny_per_mwh: dec!(5000),
            price_floor_cny_per_mwh: dec!(-500),
            negative_prices_allowed: true,
            gate_closure_minutes_before: 720,
        }
    }

    fn init(kind: MarketKind, params: &[(&str, &str)]) -> StrategyInit {
        let mut p = StrategyParams::new();
        for (k, v) in params {
            let value = match Decimal::from_str(v) {
                Ok(d) => ParamValue::Number(d),
                Err(_) => ParamValue::Text((*v).to_owned()),
            };
            p.insert(k, value).unwrap();
        }
        StrategyInit {
            strategy_id: StrategyId(1),
            name: "r".into(),
            kind: "rules".into(),
            aggregation_id: AggregationId(1),
            market: market(kind),
            params: p,
        }
    }

    fn load_err(kind: MarketKind, params: &[(&str, &str)]) -> String {
        RuleStrategy::from_params(&init(kind, params))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn valid_rules_parse() {
        let s = RuleStrategy::from_params(&init(
            MarketKind::RealTime,
            &[
                ("market", "real_time"),
                ("capacity_mw", "2"),
                ("rule.a", "when (price > 900 or spread >= 50) and not dr_event and hour in 7..20 and weekday in mon..fri, sun then sell 50% at ref - 5"),
                ("rule.b", "when price < -10 then buy 2 MW at market"),
                ("rule.c", "when price > 20000 then kill"),
            ],
        ))
        .unwrap();
        assert_eq!(s.rules.len(), 3);
        assert_eq!(s.rules[1].when, Cond::Cmp(Field::Price, Op::Lt, dec!(-10)));
        assert_eq!(
            s.rules[0].then,
            Action::Trade(Side::Sell, Qty::Share(dec!(50)), PriceSpec::Ref(dec!(-5)))
        );
    }

    #[test]
    fn validation_errors_name_rule_and_field() {
        let rt = MarketKind::RealTime;
        let e = load_err(
            rt,
            &[
                ("market", "intraday"),
                ("rule.x", "when price > 1 then kill"),
            ],
        );
        assert!(e.contains("market") && e.contains("intraday"), "{e}");
        let e = load_err(
            rt,
            &[
                ("capacity_mw", "2"),
                ("rule.big", "when price > 1 then buy 3 MW at market"),
            ],
        );
        assert!(
            e.contains("rule.big.then.quantity") && e.contains("capacity_mw 2"),
            "{e}"
        );
        let e = load_err(
            rt,
            &[(
                "rule.odd",
                "when price > 100 and price < 50 then sell 1 MW at market",
            )],
        );
        assert!(
            e.contains("rule.odd.when") && e.contains("contradictory"),
            "{e}"
        );
        let e = load_err(
            rt,
            &[("rule.tip", "when prise > 100 then sell 1 MW at market")],
        );
        assert!(e.contains("rule.tip.when") && e.contains("prise"), "{e}");
        let e = load_err(
            MarketKind::DayAhead,
            &[
                ("market", "day_ahead"),
                ("rule.da", "when price > 1 then sell 1 MW at market"),
            ],
        );
        assert!(e.contains("rule.da.when") && e.contains("forecast"), "{e}");
        let e = load_err(rt, &[("rule.cap", "when price > 1 then sell 1 MW at 9999")]);
        assert!(e.contains("rule.cap.then.price"), "{e}");
        let e = load_err(
            rt,
            &[(
                "rule.wd",
                "when weekday in sat and weekday in mon then kill",
            )],
        );
        assert!(e.contains("weekday"), "{e}");
        // An or is not a contradiction.
        assert!(RuleStrategy::from_params(&init(
            rt,
            &[("rule.ok", "when price > 100 or price < 50 then kill")]
        ))
        .is_ok());
    }
}
