//! The venue state machine: accounts, orders, books, auctions, reports. Synchronous and pure
//! (time comes in as `now`), so the same inputs always give the same outputs; the network
//! shell (`server`) only routes what it returns.
//!
//! Invariants:
//! - Every exec report of an account gets the next account sequence number (1, 2, 3, ...,
//!   never a gap) and is kept in the account's bounded report log for `fills_since`.
//! - A client order id is received at most once per account: a reused id is answered with
//!   `duplicate_client_order_id` and never reaches a book or an auction (`receipts` counts
//!   every arrival so tests can prove no order was sent twice).
//! - A terminal order never changes again; an order is never filled above its quantity.
//! - Real-time and capacity-lease markets trade in a continuous book per delivery interval;
//!   day-ahead, regulation and demand-response orders are bids held until their gate, then
//!   cleared with `clear_uniform_price`.
//! - Every map fed from outside is bounded by the configuration.

use crate::protocol::{
    tif_from_wire, tif_to_wire, AncillaryResult, AuctionResult, BookLevels, Channel, ChannelData,
    ClientMsg, DrEvent, ErrorCode, ErrorMsg, FillsSinceReply, Login, LoginOk, MarketData, NewOrder,
    OpenOrdersReply, OrderState, OrderStatusReply, PricePoint, RateLimit, VenueMsg, WireExecKind,
    WireExecReport, WireTif, MAX_REPORTS_PER_REPLY, PROTOCOL_VERSION,
};
use crate::sim::auction::{clear_uniform_price, AuctionBid, BidLimits};
use crate::sim::book::{BookOrder, OrderBook, SubmitOutcome};
use crate::sim::faults::FaultRule;
use crate::sim::price_model::{CsvPriceSource, PriceModel, PriceModelConfig};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use thiserror::Error;
use vpp_engine::ids::{ClientOrderId, MarketId};
use vpp_engine::market::{DeliveryInterval, Market, MarketKind, Product};
use vpp_engine::order::{OrderStatus, Side, TimeInForce};
use vpp_engine::Timestamp;

/// Results and DR events kept per market for snapshots.
const RETAINED_RESULTS: usize = 96;
/// Bid ids of simulated participants start here, far above any venue order id.
const SIM_BID_ID_BASE: u64 = 1 << 48;
/// Name of the simulated participants' account in books (never a login).
const SIM_ACCOUNT: &str = "~sim";

fn d(v: i64) -> Decimal {
    Decimal::from(v)
}

/// A venue account and the key that logs into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub account: String,
    pub api_key: String,
}

/// The shape of a market's simulated prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceShape {
    pub base_cny_per_mwh: Decimal,
    pub daily_amplitude_cny_per_mwh: Decimal,
    pub seasonal_amplitude_cny_per_mwh: Decimal,
    pub noise_cny_per_mwh: Decimal,
}

impl Default for PriceShape {
    fn default() -> Self {
        Self {
            base_cny_per_mwh: d(300),
            daily_amplitude_cny_per_mwh: d(120),
            seasonal_amplitude_cny_per_mwh: d(40),
            noise_cny_per_mwh: d(20),
        }
    }
}

/// One market of the venue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketConfig {
    /// The name used on the wire (`market` fields), e.g. `yn-rt`.
    pub symbol: String,
    pub kind: MarketKind,
    #[serde(default = "default_tz")]
    pub timezone: chrono_tz::Tz,
    pub price_cap_cny_per_mwh: Decimal,
    pub price_floor_cny_per_mwh: Decimal,
    #[serde(default)]
    pub negative_prices_allowed: bool,
    /// Largest quantity of one order or bid.
    #[serde(default = "default_max_volume")]
    pub max_volume_mw: Decimal,
    /// Day-ahead: bids close this long before the local trading day starts.
    #[serde(default = "default_da_gate")]
    pub gate_closure_minutes_before: u32,
    /// Regulation: offers close this long before the interval starts.
    #[serde(default = "default_reg_gate")]
    pub regulation_gate_minutes: u32,
    /// Regulation: capacity the system operator buys per interval.
    #[serde(default = "default_reg_requirement")]
    pub regulation_requirement_mw: Decimal,
    /// Regulation: mileage price announced with every clearing.
    #[serde(default = "default_mileage")]
    pub mileage_price_cny_per_mw: Decimal,
    /// Demand response: an invitation for every Nth interval.
    #[serde(default = "default_dr_every")]
    pub dr_every_intervals: u32,
    /// Demand response: invitations are published this long before their interval starts,
    /// and responses close half-way to it.
    #[serde(default = "default_dr_lead")]
    pub dr_lead_minutes: u32,
    #[serde(default = "default_dr_target")]
    pub dr_target_mw: Decimal,
    #[serde(default)]
    pub price_shape: PriceShape,
    /// Historical reference prices; intervals it does not cover use `price_shape`.
    #[serde(default)]
    pub price_csv: Option<PriceCsv>,
}

/// A CSV of prices (format: see `price_model`), read at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceCsv {
    pub path: std::path::PathBuf,
    /// Multiplies every CSV price into CNY/MWh (e.g. an EUR to CNY rate).
    #[serde(default = "default_currency_factor")]
    pub currency_factor: Decimal,
    /// Minutes one row covers: 60 for hourly files, 15 for quarter-hourly.
    #[serde(default = "default_row_minutes")]
    pub row_minutes: u32,
}

fn default_currency_factor() -> Decimal {
    Decimal::ONE
}
fn default_row_minutes() -> u32 {
    60
}

fn price_model(seed: u64, index: usize, m: &MarketConfig) -> PriceModel {
    PriceModel::new(model_config(seed, index, m)).with_timezone(m.timezone)
}

fn model_config(seed: u64, index: usize, m: &MarketConfig) -> PriceModelConfig {
    PriceModelConfig {
        seed: seed.wrapping_add(index as u64),
        base_cny_per_mwh: m.price_shape.base_cny_per_mwh,
        daily_amplitude_cny_per_mwh: m.price_shape.daily_amplitude_cny_per_mwh,
        seasonal_amplitude_cny_per_mwh: m.price_shape.seasonal_amplitude_cny_per_mwh,
        noise_cny_per_mwh: m.price_shape.noise_cny_per_mwh,
        negative_prices_allowed: m.negative_prices_allowed,
        floor_cny_per_mwh: m.price_floor_cny_per_mwh,
        cap_cny_per_mwh: m.price_cap_cny_per_mwh,
    }
}

fn load_model(seed: u64, index: usize, m: &MarketConfig) -> Result<PriceModel, VenueConfigError> {
    let Some(csv) = &m.price_csv else {
        return Ok(price_model(seed, index, m));
    };
    let source = CsvPriceSource {
        timezone: m.timezone,
        currency_factor: csv.currency_factor,
        row_minutes: csv.row_minutes,
        max_rows: 2_000_000,
        max_line_bytes: 4_096,
    };
    PriceModel::from_csv_path(&csv.path, &source, model_config(seed, index, m)).map_err(|e| {
        invalid(
            format!("markets[{index}].price_csv"),
            format!("{}: {e}", csv.path.display()),
        )
    })
}

fn default_tz() -> chrono_tz::Tz {
    chrono_tz::Asia::Shanghai
}
fn default_max_volume() -> Decimal {
    d(500)
}
fn default_da_gate() -> u32 {
    14 * 60
}
fn default_reg_gate() -> u32 {
    60
}
fn default_reg_requirement() -> Decimal {
    d(50)
}
fn default_mileage() -> Decimal {
    d(12)
}
fn default_dr_every() -> u32 {
    8
}
fn default_dr_lead() -> u32 {
    120
}
fn default_dr_target() -> Decimal {
    d(20)
}

impl MarketConfig {
    /// A market with the defaults above and a 0..=1500 CNY/MWh band.
    pub fn new(symbol: &str, kind: MarketKind) -> Self {
        Self {
            symbol: symbol.into(),
            kind,
            timezone: default_tz(),
            price_cap_cny_per_mwh: d(1500),
            price_floor_cny_per_mwh: Decimal::ZERO,
            negative_prices_allowed: false,
            max_volume_mw: default_max_volume(),
            gate_closure_minutes_before: default_da_gate(),
            regulation_gate_minutes: default_reg_gate(),
            regulation_requirement_mw: default_reg_requirement(),
            mileage_price_cny_per_mw: default_mileage(),
            dr_every_intervals: default_dr_every(),
            dr_lead_minutes: default_dr_lead(),
            dr_target_mw: default_dr_target(),
            price_shape: PriceShape::default(),
            price_csv: None,
        }
    }
}

/// Everything the simulator needs: network, markets, accounts, limits, faults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VenueConfig {
    /// `127.0.0.1:0` binds an ephemeral port.
    pub listen: SocketAddr,
    pub seed: u64,
    pub markets: Vec<MarketConfig>,
    pub accounts: Vec<AccountConfig>,
    pub faults: Vec<FaultRule>,
    /// Accept the `fault` control message from clients (tests and demos only).
    pub allow_fault_control: bool,
    pub rate_limit: RateLimit,
    /// Venue heartbeat period; 0 disables venue heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Market clock tick (gates, expiries, simulated quotes); 0: only explicit ticks.
    pub tick_ms: u64,
    /// Simulated participants quote in continuous books.
    pub sim_quotes: bool,
    /// Upcoming intervals with an open continuous book.
    pub open_intervals: u32,
    /// Simulated quotes are refreshed this often (seconds of venue time).
    pub quote_refresh_secs: i64,
    pub book_levels: usize,
    pub max_resting_orders_per_book: usize,
    pub max_orders_per_account: usize,
    pub max_reports_retained: usize,
    /// Outbound frames queued per connection before a slow client is cut off.
    pub send_queue_frames: usize,
    /// Announced in `login_ok.venue_epoch`; a restarted venue that lost its state must announce
    /// a new one. `None`: not announced.
    pub venue_epoch: Option<String>,
}

impl Default for VenueConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 42,
            markets: vec![
                MarketConfig::new("yn-da", MarketKind::DayAhead),
                MarketConfig::new("yn-rt", MarketKind::RealTime),
                MarketConfig::new("yn-reg", MarketKind::Regulation),
                MarketConfig::new("yn-dr", MarketKind::DemandResponse),
                MarketConfig::new("yn-lease", MarketKind::CapacityLease),
            ],
            accounts: vec![AccountConfig {
                account: "demo".into(),
                api_key: "demo-key".into(),
            }],
            faults: Vec::new(),
            allow_fault_control: false,
            rate_limit: RateLimit {
                max_orders: 100,
                window_ms: 10_000,
            },
            heartbeat_interval_ms: 1_000,
            tick_ms: 100,
            sim_quotes: true,
            open_intervals: 8,
            quote_refresh_secs: 60,
            book_levels: 5,
            max_resting_orders_per_book: 10_000,
            max_orders_per_account: 1_000_000,
            max_reports_retained: 1_000_000,
            send_queue_frames: 4_096,
            venue_epoch: None,
        }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum VenueConfigError {
    #[error("venue config: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> VenueConfigError {
    VenueConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl VenueConfig {
    pub fn validate(&self) -> Result<(), VenueConfigError> {
        let mut symbols = std::collections::HashSet::new();
        for (i, m) in self.markets.iter().enumerate() {
            if !symbols.insert(m.symbol.as_str()) {
                return Err(invalid(
                    format!("markets[{i}].symbol"),
                    format!("{:?} is used twice", m.symbol),
                ));
            }
            engine_market(i, m)
                .validate()
                .map_err(|e| invalid(format!("markets[{i}].{}", e.field), e.reason))?;
            if m.max_volume_mw <= Decimal::ZERO {
                return Err(invalid(
                    format!("markets[{i}].max_volume_mw"),
                    "must be greater than 0",
                ));
            }
        }
        let mut keys = std::collections::HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            if a.api_key.is_empty() || !keys.insert(a.api_key.as_str()) {
                return Err(invalid(
                    format!("accounts[{i}].api_key"),
                    "must be non-empty and unique",
                ));
            }
        }
        if self.rate_limit.max_orders == 0 || self.rate_limit.window_ms == 0 {
            return Err(invalid(
                "rate_limit",
                "max_orders and window_ms must be greater than 0",
            ));
        }
        if self.book_levels == 0
            || self.max_resting_orders_per_book == 0
            || self.send_queue_frames == 0
        {
            return Err(invalid(
                "book_levels/max_resting_orders_per_book/send_queue_frames",
                "must be greater than 0",
            ));
        }
        if self.max_reports_retained == 0 || self.max_orders_per_account == 0 {
            return Err(invalid(
                "max_reports_retained/max_orders_per_account",
                "must be greater than 0",
            ));
        }
        if self.quote_refresh_secs <= 0 {
            return Err(invalid("quote_refresh_secs", "must be greater than 0"));
        }
        Ok(())
    }
}

fn engine_market(index: usize, m: &MarketConfig) -> Market {
    Market {
        id: MarketId(index as u64 + 1),
        name: m.symbol.clone(),
        kind: m.kind,
        timezone: m.timezone,
        price_cap_cny_per_mwh: m.price_cap_cny_per_mwh,
        price_floor_cny_per_mwh: m.price_floor_cny_per_mwh,
        negative_prices_allowed: m.negative_prices_allowed,
        gate_closure_minutes_before: m.gate_closure_minutes_before,
    }
}

/// Where the venue sends what it produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// To the connection that made the request.
    Reply(VenueMsg),
    /// To the account's live session, if any (exec reports).
    ToAccount(usize, VenueMsg),
    /// To every subscriber of the update's (channel, market).
    Publish(VenueMsg),
}

#[derive(Debug, Clone)]
struct VenueOrder {
    account: Option<usize>,
    client_order_id: ClientOrderId,
    market: usize,
    product: Product,
    interval: DeliveryInterval,
    side: Side,
    tif: TimeInForce,
    quantity_mw: Decimal,
    price_cny_per_mwh: Decimal,
    filled_mw: Decimal,
    status: OrderStatus,
    last_account_seq: u64,
}

#[derive(Debug)]
struct Account {
    name: String,
    seq: u64,
    reports: VecDeque<WireExecReport>,
    orders: HashMap<ClientOrderId, u64>,
    receipts: HashMap<ClientOrderId, u32>,
    recent_orders: VecDeque<Timestamp>,
    logins: u64,
}

struct MarketState {
    cfg: MarketConfig,
    market: Market,
    model: PriceModel,
    books: BTreeMap<DeliveryInterval, OrderBook>,
    /// Venue order ids of bids waiting for their gate (auction-type markets).
    pending_bids: BTreeMap<DeliveryInterval, Vec<u64>>,
    sim_orders: BTreeMap<DeliveryInterval, (i64, Vec<u64>)>,
    last_trade: BTreeMap<DeliveryInterval, Decimal>,
    auction_results: VecDeque<AuctionResult>,
    ancillary_results: VecDeque<AncillaryResult>,
    dr_events: BTreeMap<DeliveryInterval, DrEvent>,
    next_dr_interval: Option<DeliveryInterval>,
    next_dr_event_id: u64,
}

impl MarketState {
    fn is_continuous(&self) -> bool {
        matches!(
            self.cfg.kind,
            MarketKind::RealTime | MarketKind::CapacityLease | MarketKind::Reserve
        )
    }

    /// Until when orders for `interval` are taken.
    fn gate(&self, interval: DeliveryInterval) -> Timestamp {
        match self.cfg.kind {
            MarketKind::DayAhead => self.market.gate_closure_for(interval),
            MarketKind::Regulation => {
                interval.start()
                    - chrono::Duration::minutes(i64::from(self.cfg.regulation_gate_minutes))
            }
            MarketKind::DemandResponse => self
                .dr_events
                .get(&interval)
                .map(|e| e.respond_by)
                .unwrap_or(interval.start()),
            _ => interval.start(),
        }
    }

    fn limits(&self) -> BidLimits {
        BidLimits {
            price_cap_cny_per_mwh: self.cfg.price_cap_cny_per_mwh,
            price_floor_cny_per_mwh: self.cfg.price_floor_cny_per_mwh,
            max_volume_mw: self.cfg.max_volume_mw,
            negative_prices_allowed: self.cfg.negative_prices_allowed,
        }
    }
}

/// The venue.
pub struct Venue {
    cfg: VenueConfig,
    markets: Vec<MarketState>,
    by_symbol: HashMap<String, usize>,
    accounts: Vec<Account>,
    by_key: HashMap<String, usize>,
    orders: HashMap<u64, VenueOrder>,
    next_venue_order_id: u64,
    next_fill_id: u64,
    md_seq: HashMap<(Channel, usize), u64>,
    now: Timestamp,
}

type Reject = (ErrorCode, String);

impl Venue {
    pub fn new(cfg: VenueConfig, now: Timestamp) -> Result<Self, VenueConfigError> {
        cfg.validate()?;
        let mut loaded = Vec::with_capacity(cfg.markets.len());
        for (i, m) in cfg.markets.iter().enumerate() {
            loaded.push(load_model(cfg.seed, i, m)?);
        }
        let mut models = loaded.into_iter();
        let markets: Vec<MarketState> = cfg
            .markets
            .iter()
            .enumerate()
            .map(|(i, m)| MarketState {
                market: engine_market(i, m),
                model: models.next().unwrap_or_else(|| price_model(cfg.seed, i, m)),
                cfg: m.clone(),
                books: BTreeMap::new(),
                pending_bids: BTreeMap::new(),
                sim_orders: BTreeMap::new(),
                last_trade: BTreeMap::new(),
                auction_results: VecDeque::new(),
                ancillary_results: VecDeque::new(),
                dr_events: BTreeMap::new(),
                next_dr_interval: None,
                next_dr_event_id: 1,
            })
            .collect();
        let by_symbol = cfg
            .markets
            .iter()
            .enumerate()
            .map(|(i, m)| (m.symbol.clone(), i))
            .collect();
        let accounts = cfg
            .accounts
            .iter()
            .map(|a| Account {
                name: a.account.clone(),
                seq: 0,
                reports: VecDeque::new(),
                orders: HashMap::new(),
                receipts: HashMap::new(),
                recent_orders: VecDeque::new(),
                logins: 0,
            })
            .collect();
        let by_key = cfg
            .accounts
            .iter()
            .enumerate()
            .map(|(i, a)| (a.api_key.clone(), i))
            .collect();
        Ok(Self {
            cfg,
            markets,
            by_symbol,
            accounts,
            by_key,
            orders: HashMap::new(),
            next_venue_order_id: 1,
            next_fill_id: 1,
            md_seq: HashMap::new(),
            now,
        })
    }

    pub fn config(&self) -> &VenueConfig {
        &self.cfg
    }

    /// Checks a login; on success the account index, its login count and the `login_ok`.
    pub fn login(
        &mut self,
        login: &Login,
        now: Timestamp,
    ) -> Result<(usize, u64, LoginOk), ErrorMsg> {
        let err = |code, message: String| ErrorMsg {
            code,
            message,
            request_type: Some("login".into()),
            client_order_id: None,
        };
        if login.protocol_version != PROTOCOL_VERSION {
            return Err(err(
                ErrorCode::UnsupportedProtocolVersion,
                format!(
                    "protocol_version {} is not supported; this venue speaks {PROTOCOL_VERSION}",
                    login.protocol_version
                ),
            ));
        }
        let Some(&idx) = self.by_key.get(&login.api_key) else {
            return Err(err(
                ErrorCode::BadApiKey,
                "api_key is not known to this venue".into(),
            ));
        };
        let account = &mut self.accounts[idx];
        account.logins += 1;
        Ok((
            idx,
            account.logins,
            LoginOk {
                account: account.name.clone(),
                protocol_version: PROTOCOL_VERSION,
                account_seq: account.seq,
                server_time: now,
                heartbeat_interval_ms: self.cfg.heartbeat_interval_ms,
                rate_limit: self.cfg.rate_limit,
                venue_epoch: self.cfg.venue_epoch.clone(),
            },
        ))
    }

    pub fn api_key_of(&self, account: usize) -> Option<&str> {
        self.cfg.accounts.get(account).map(|a| a.api_key.as_str())
    }

    pub fn account_seq(&self, account: usize) -> u64 {
        self.accounts.get(account).map_or(0, |a| a.seq)
    }

    /// How many times `id` arrived from the account holding `api_key`.
    pub fn receipts(&self, api_key: &str, id: &ClientOrderId) -> u32 {
        self.by_key
            .get(api_key)
            .and_then(|&i| self.accounts[i].receipts.get(id).copied())
            .unwrap_or(0)
    }

    /// Fills recorded for an account (from its report log).
    pub fn fills_of(&self, api_key: &str) -> Vec<WireExecReport> {
        self.by_key
            .get(api_key)
            .map(|&i| {
                self.accounts[i]
                    .reports
                    .iter()
                    .filter(|r| r.is_fill())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn market_index(&self, symbol: &str) -> Option<usize> {
        self.by_symbol.get(symbol).copied()
    }

    /// Handles one request of a logged-in account (orders and queries).
    pub fn handle(&mut self, account: usize, msg: ClientMsg, now: Timestamp) -> Vec<Effect> {
        self.now = self.now.max(now);
        let mut fx = Vec::new();
        match msg {
            ClientMsg::NewOrder(order) => self.new_order(account, order, &mut fx),
            ClientMsg::CancelOrder(c) => self.cancel(account, &c.client_order_id, &mut fx),
            ClientMsg::ReplaceOrder(r) => self.replace(
                account,
                &r.client_order_id,
                r.quantity_mw,
                r.price_cny_per_mwh,
                &mut fx,
            ),
            ClientMsg::OrderStatus(q) => {
                let order = self.order_state(account, &q.client_order_id);
                fx.push(Effect::Reply(VenueMsg::OrderStatus(OrderStatusReply {
                    client_order_id: q.client_order_id,
                    order,
                })));
            }
            ClientMsg::OpenOrders(_) => fx.push(Effect::Reply(self.open_orders(account))),
            ClientMsg::FillsSince(q) => {
                fx.push(Effect::Reply(self.fills_since(account, q.account_seq)))
            }
            other => fx.push(Effect::Reply(VenueMsg::error(
                ErrorCode::Internal,
                format!("{other:?} is not an order or query message"),
            ))),
        }
        fx
    }

    fn order_error(code: ErrorCode, message: String, id: &ClientOrderId, ty: &str) -> Effect {
        Effect::Reply(VenueMsg::Error(ErrorMsg {
            code,
            message,
            request_type: Some(ty.into()),
            client_order_id: Some(id.clone()),
        }))
    }

    fn new_order(&mut self, account: usize, req: NewOrder, fx: &mut Vec<Effect>) {
        let acct = &mut self.accounts[account];
        let receipts = acct
            .receipts
            .entry(req.client_order_id.clone())
            .or_insert(0);
        *receipts = receipts.saturating_add(1);
        if acct.orders.contains_key(&req.client_order_id) {
            fx.push(Self::order_error(
                ErrorCode::DuplicateClientOrderId,
                format!("client_order_id {} was already used by this account; it is never executed twice", req.client_order_id),
                &req.client_order_id,
                "new_order",
            ));
            return;
        }
        if acct.orders.len() >= self.cfg.max_orders_per_account {
            fx.push(Self::order_error(
                ErrorCode::BookFull,
                format!("account holds {} orders, the maximum", acct.orders.len()),
                &req.client_order_id,
                "new_order",
            ));
            return;
        }
        let venue_id = self.next_venue_order_id;
        self.next_venue_order_id += 1;
        let market = self.market_index(&req.market);
        let tif = tif_from_wire(req.time_in_force, req.expire_at);
        let order = VenueOrder {
            account: Some(account),
            client_order_id: req.client_order_id.clone(),
            market: market.unwrap_or(usize::MAX),
            product: req.product,
            interval: req.interval,
            side: req.side,
            tif: tif.unwrap_or(TimeInForce::Day),
            quantity_mw: req.quantity_mw,
            price_cny_per_mwh: req.price_cny_per_mwh,
            filled_mw: Decimal::ZERO,
            status: OrderStatus::New,
            last_account_seq: 0,
        };
        self.accounts[account]
            .orders
            .insert(req.client_order_id.clone(), venue_id);
        self.orders.insert(venue_id, order);
        let checked = tif
            .map_err(|e| (ErrorCode::InvalidField, e.to_string()))
            .and_then(|_| self.check_new(account, &req, market));
        if let Err((code, reason)) = checked {
            self.report(
                venue_id,
                WireExecKind::Rejected { code, reason },
                OrderStatus::Rejected,
                fx,
            );
            return;
        }
        self.accounts[account].recent_orders.push_back(self.now);
        let Some(m) = market else { return };
        if self.markets[m].is_continuous() {
            self.report(venue_id, WireExecKind::Accepted, OrderStatus::Accepted, fx);
            self.submit_to_book(venue_id, fx);
        } else {
            self.report(venue_id, WireExecKind::Accepted, OrderStatus::Accepted, fx);
            self.markets[m]
                .pending_bids
                .entry(req.interval)
                .or_default()
                .push(venue_id);
        }
    }

    fn check_new(
        &mut self,
        account: usize,
        req: &NewOrder,
        market: Option<usize>,
    ) -> Result<(), Reject> {
        let m = market.ok_or((
            ErrorCode::UnknownMarket,
            format!("market {:?} is not traded here", req.market),
        ))?;
        let ms = &self.markets[m];
        let expected = ms.cfg.kind.default_product();
        if req.product != expected {
            return Err((
                ErrorCode::InvalidField,
                format!(
                    "product {} is not traded in {}; use {}",
                    req.product.as_str(),
                    req.market,
                    expected.as_str()
                ),
            ));
        }
        if req.quantity_mw <= Decimal::ZERO {
            return Err((
                ErrorCode::InvalidField,
                format!("quantity_mw {} must be greater than 0", req.quantity_mw),
            ));
        }
        if req.quantity_mw > ms.cfg.max_volume_mw {
            return Err((
                ErrorCode::VolumeTooLarge,
                format!(
                    "quantity_mw {} is above the maximum {} MW",
                    req.quantity_mw, ms.cfg.max_volume_mw
                ),
            ));
        }
        ms.market
            .check_price(req.price_cny_per_mwh)
            .map_err(|e| (ErrorCode::PriceOutOfRange, e.reason))?;
        if !ms.is_continuous() {
            let bid = AuctionBid {
                bid_id: 0,
                side: req.side,
                quantity_mw: req.quantity_mw,
                price_cny_per_mwh: req.price_cny_per_mwh,
            };
            ms.limits()
                .check(&bid)
                .map_err(|e| (ErrorCode::PriceOutOfRange, format!("{}: {e}", e.code())))?;
            if matches!(req.time_in_force, WireTif::Ioc | WireTif::Fok) {
                return Err((
                    ErrorCode::InvalidField,
                    "auction bids take day, gtc or gtd, not ioc/fok".into(),
                ));
            }
        }
        if ms.cfg.kind == MarketKind::DemandResponse {
            let event = ms.dr_events.get(&req.interval).ok_or((
                ErrorCode::InvalidField,
                format!(
                    "no demand-response invitation for interval {}",
                    req.interval
                ),
            ))?;
            if req.side != Side::Sell || req.price_cny_per_mwh > event.price_cny_per_mwh {
                return Err((
                    ErrorCode::PriceOutOfRange,
                    format!(
                        "responses are sell orders priced at or below the invitation's {} CNY/MWh",
                        event.price_cny_per_mwh
                    ),
                ));
            }
        }
        if self.now >= ms.gate(req.interval) {
            return Err((
                ErrorCode::GateClosed,
                format!(
                    "orders for interval {} closed at {}",
                    req.interval,
                    ms.gate(req.interval)
                ),
            ));
        }
        self.rate_check(account)
    }

    fn rate_check(&mut self, account: usize) -> Result<(), Reject> {
        let window = chrono::Duration::milliseconds(self.cfg.rate_limit.window_ms as i64);
        let recent = &mut self.accounts[account].recent_orders;
        while recent.front().is_some_and(|t| *t + window <= self.now) {
            recent.pop_front();
        }
        if recent.len() >= self.cfg.rate_limit.max_orders as usize {
            return Err((
                ErrorCode::RateLimited,
                format!(
                    "at most {} orders per {} ms",
                    self.cfg.rate_limit.max_orders, self.cfg.rate_limit.window_ms
                ),
            ));
        }
        Ok(())
    }

    fn submit_to_book(&mut self, venue_id: u64, fx: &mut Vec<Effect>) {
        let Some(o) = self.orders.get(&venue_id) else {
            return;
        };
        let (m, interval) = (o.market, o.interval);
        let book_order = BookOrder {
            venue_order_id: venue_id,
            account: o
                .account
                .map_or(SIM_ACCOUNT.to_string(), |a| self.accounts[a].name.clone()),
            client_order_id: o.client_order_id.clone(),
            side: o.side,
            price_cny_per_mwh: o.price_cny_per_mwh,
            remaining_mw: o.quantity_mw - o.filled_mw,
            time_in_force: o.tif,
        };
        let max = self.cfg.max_resting_orders_per_book;
        let book = self.markets[m]
            .books
            .entry(interval)
            .or_insert_with(|| OrderBook::new(max));
        match book.submit(book_order, self.now) {
            Ok(outcome) => self.apply_outcome(venue_id, m, interval, outcome, fx),
            Err(e) => {
                let code = match e {
                    crate::sim::book::BookError::BookFull { .. } => ErrorCode::BookFull,
                    _ => ErrorCode::InvalidField,
                };
                self.terminal(
                    venue_id,
                    WireExecKind::Cancelled {
                        reason: format!("{code}: {e}"),
                    },
                    OrderStatus::Cancelled,
                    fx,
                );
            }
        }
    }

    fn apply_outcome(
        &mut self,
        taker: u64,
        m: usize,
        interval: DeliveryInterval,
        out: SubmitOutcome,
        fx: &mut Vec<Effect>,
    ) {
        for expired in &out.expired {
            self.terminal(
                expired.venue_order_id,
                WireExecKind::Expired,
                OrderStatus::Expired,
                fx,
            );
        }
        let traded = !out.trades.is_empty();
        for t in &out.trades {
            self.fill(t.maker_order_id, t.quantity_mw, t.price_cny_per_mwh, fx);
            self.fill(t.taker_order_id, t.quantity_mw, t.price_cny_per_mwh, fx);
            self.markets[m]
                .last_trade
                .insert(interval, t.price_cny_per_mwh);
        }
        if !out.rested && out.unfilled_cancelled_mw > Decimal::ZERO {
            let reason = match self.orders.get(&taker).map(|o| o.tif) {
                Some(TimeInForce::Fok) => "fok: the whole quantity could not be filled now",
                _ => "ioc: remainder cancelled",
            };
            self.terminal(
                taker,
                WireExecKind::Cancelled {
                    reason: reason.into(),
                },
                OrderStatus::Cancelled,
                fx,
            );
        }
        if traded || out.rested || !out.expired.is_empty() {
            self.publish_book(m, interval, fx);
        }
        if traded {
            self.publish_prices(m, &[interval], fx);
        }
    }

    fn fill(&mut self, venue_id: u64, qty: Decimal, price: Decimal, fx: &mut Vec<Effect>) {
        let Some(o) = self.orders.get_mut(&venue_id) else {
            return;
        };
        o.filled_mw += qty;
        let done = o.filled_mw >= o.quantity_mw;
        let fill_id = self.next_fill_id;
        self.next_fill_id += 1;
        let (kind, status) = if done {
            (
                WireExecKind::Fill {
                    fill_id,
                    quantity_mw: qty,
                    price_cny_per_mwh: price,
                },
                OrderStatus::Filled,
            )
        } else {
            (
                WireExecKind::PartialFill {
                    fill_id,
                    quantity_mw: qty,
                    price_cny_per_mwh: price,
                },
                OrderStatus::PartiallyFilled,
            )
        };
        self.report(venue_id, kind, status, fx);
    }

    /// Moves a working order to a terminal state with a report (never a terminal one).
    fn terminal(
        &mut self,
        venue_id: u64,
        kind: WireExecKind,
        status: OrderStatus,
        fx: &mut Vec<Effect>,
    ) {
        if self
            .orders
            .get(&venue_id)
            .is_some_and(|o| !o.status.is_terminal())
        {
            self.report(venue_id, kind, status, fx);
        }
    }

    /// Records the order's new status and, for account orders, sends the next report.
    fn report(
        &mut self,
        venue_id: u64,
        kind: WireExecKind,
        status: OrderStatus,
        fx: &mut Vec<Effect>,
    ) {
        let now = self.now;
        let Some(o) = self.orders.get_mut(&venue_id) else {
            return;
        };
        o.status = status;
        let Some(account) = o.account else { return };
        let acct = &mut self.accounts[account];
        acct.seq += 1;
        o.last_account_seq = acct.seq;
        let leaves_mw = if status.is_terminal() {
            Decimal::ZERO
        } else {
            o.quantity_mw - o.filled_mw
        };
        let report = WireExecReport {
            account_seq: acct.seq,
            client_order_id: o.client_order_id.clone(),
            venue_order_id: format!("V{venue_id}"),
            ts: now,
            kind,
            filled_mw: o.filled_mw,
            leaves_mw,
        };
        if acct.reports.len() >= self.cfg.max_reports_retained {
            acct.reports.pop_front();
        }
        acct.reports.push_back(report.clone());
        fx.push(Effect::ToAccount(account, VenueMsg::ExecReport(report)));
    }

    fn account_order(&self, account: usize, id: &ClientOrderId) -> Option<u64> {
        self.accounts.get(account)?.orders.get(id).copied()
    }

    fn cancel(&mut self, account: usize, id: &ClientOrderId, fx: &mut Vec<Effect>) {
        let Some(venue_id) = self.account_order(account, id) else {
            fx.push(Self::order_error(
                ErrorCode::UnknownOrder,
                format!("order {id} is unknown"),
                id,
                "cancel_order",
            ));
            return;
        };
        let Some(o) = self.orders.get(&venue_id) else {
            return;
        };
        let (m, interval, status) = (o.market, o.interval, o.status);
        if status.is_terminal() {
            let reason = format!("order is already {status}");
            self.report_keep(
                venue_id,
                WireExecKind::CancelRejected {
                    code: ErrorCode::NotCancellable,
                    reason,
                },
                fx,
            );
            return;
        }
        if self.markets[m].is_continuous() {
            if self.markets[m]
                .books
                .get_mut(&interval)
                .and_then(|b| b.cancel(venue_id).ok())
                .is_some()
            {
                self.terminal(
                    venue_id,
                    WireExecKind::Cancelled {
                        reason: "cancelled by request".into(),
                    },
                    OrderStatus::Cancelled,
                    fx,
                );
                self.publish_book(m, interval, fx);
            }
            return;
        }
        if self.now >= self.markets[m].gate(interval) {
            let reason = format!("the gate for {interval} has closed");
            self.report_keep(
                venue_id,
                WireExecKind::CancelRejected {
                    code: ErrorCode::GateClosed,
                    reason,
                },
                fx,
            );
            return;
        }
        if let Some(bids) = self.markets[m].pending_bids.get_mut(&interval) {
            bids.retain(|b| *b != venue_id);
        }
        self.terminal(
            venue_id,
            WireExecKind::Cancelled {
                reason: "cancelled by request".into(),
            },
            OrderStatus::Cancelled,
            fx,
        );
    }

    /// A report that leaves the order's status as it is (cancel rejected).
    fn report_keep(&mut self, venue_id: u64, kind: WireExecKind, fx: &mut Vec<Effect>) {
        if let Some(status) = self.orders.get(&venue_id).map(|o| o.status) {
            self.report(venue_id, kind, status, fx);
        }
    }

    fn replace(
        &mut self,
        account: usize,
        id: &ClientOrderId,
        qty: Decimal,
        price: Decimal,
        fx: &mut Vec<Effect>,
    ) {
        let fail = |code, msg: String| Self::order_error(code, msg, id, "replace_order");
        let Some(venue_id) = self.account_order(account, id) else {
            fx.push(fail(
                ErrorCode::UnknownOrder,
                format!("order {id} is unknown"),
            ));
            return;
        };
        let Some(o) = self.orders.get(&venue_id) else {
            return;
        };
        let (m, interval, filled, status) = (o.market, o.interval, o.filled_mw, o.status);
        if status.is_terminal() {
            fx.push(fail(
                ErrorCode::NotCancellable,
                format!("order is already {status}"),
            ));
            return;
        }
        if qty <= filled {
            fx.push(fail(
                ErrorCode::InvalidField,
                format!("quantity_mw {qty} must be above the filled {filled} MW"),
            ));
            return;
        }
        if let Err(e) = self.markets[m].market.check_price(price) {
            fx.push(fail(ErrorCode::PriceOutOfRange, e.reason));
            return;
        }
        if qty > self.markets[m].cfg.max_volume_mw {
            fx.push(fail(
                ErrorCode::VolumeTooLarge,
                format!("quantity_mw {qty} is above the maximum"),
            ));
            return;
        }
        if let Err((code, reason)) = self.rate_check(account) {
            fx.push(fail(code, reason));
            return;
        }
        self.accounts[account].recent_orders.push_back(self.now);
        let continuous = self.markets[m].is_continuous();
        if !continuous && self.now >= self.markets[m].gate(interval) {
            fx.push(fail(
                ErrorCode::GateClosed,
                format!("the gate for {interval} has closed"),
            ));
            return;
        }
        let outcome = if continuous {
            let now = self.now;
            match self.markets[m]
                .books
                .get_mut(&interval)
                .map(|b| b.replace(venue_id, qty - filled, price, now))
            {
                Some(Ok(out)) => Some(out),
                Some(Err(e)) => {
                    fx.push(fail(ErrorCode::InvalidField, e.to_string()));
                    return;
                }
                None => {
                    fx.push(fail(
                        ErrorCode::NotCancellable,
                        "order is not resting".into(),
                    ));
                    return;
                }
            }
        } else {
            None
        };
        if let Some(o) = self.orders.get_mut(&venue_id) {
            o.quantity_mw = qty;
            o.price_cny_per_mwh = price;
        }
        self.report_keep(
            venue_id,
            WireExecKind::Replaced {
                quantity_mw: qty,
                price_cny_per_mwh: price,
            },
            fx,
        );
        if let Some(out) = outcome {
            self.apply_outcome(venue_id, m, interval, out, fx);
        }
    }

    fn state_of(&self, venue_id: u64, o: &VenueOrder) -> OrderState {
        let (time_in_force, expire_at) = tif_to_wire(o.tif);
        OrderState {
            client_order_id: o.client_order_id.clone(),
            venue_order_id: format!("V{venue_id}"),
            market: self
                .markets
                .get(o.market)
                .map_or_else(String::new, |m| m.cfg.symbol.clone()),
            product: o.product,
            interval: o.interval,
            side: o.side,
            time_in_force,
            expire_at,
            status: o.status,
            quantity_mw: o.quantity_mw,
            price_cny_per_mwh: o.price_cny_per_mwh,
            filled_mw: o.filled_mw,
            last_account_seq: o.last_account_seq,
        }
    }

    fn order_state(&self, account: usize, id: &ClientOrderId) -> Option<OrderState> {
        let venue_id = self.account_order(account, id)?;
        self.orders
            .get(&venue_id)
            .map(|o| self.state_of(venue_id, o))
    }

    fn open_orders(&self, account: usize) -> VenueMsg {
        let mut orders: Vec<(u64, OrderState)> = self.accounts[account]
            .orders
            .values()
            .filter_map(|&id| self.orders.get(&id).map(|o| (id, o)))
            .filter(|(_, o)| !o.status.is_terminal())
            .map(|(id, o)| (id, self.state_of(id, o)))
            .collect();
        orders.sort_by_key(|(id, _)| *id);
        VenueMsg::OpenOrders(OpenOrdersReply {
            orders: orders.into_iter().map(|(_, s)| s).collect(),
        })
    }

    fn fills_since(&self, account: usize, since: u64) -> VenueMsg {
        let acct = &self.accounts[account];
        let oldest = acct.reports.front().map_or(acct.seq + 1, |r| r.account_seq);
        if since + 1 < oldest {
            return VenueMsg::Error(ErrorMsg {
                code: ErrorCode::SeqTooOld,
                message: format!("reports before seq {oldest} are no longer kept; query order_status/open_orders instead"),
                request_type: Some("fills_since".into()),
                client_order_id: None,
            });
        }
        let skip = usize::try_from((since + 1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        let reports: Vec<WireExecReport> = acct
            .reports
            .iter()
            .skip(skip)
            .take(MAX_REPORTS_PER_REPLY)
            .cloned()
            .collect();
        let more = reports.last().is_some_and(|r| r.account_seq < acct.seq);
        VenueMsg::FillsSince(FillsSinceReply {
            since_seq: since,
            reports,
            account_seq: acct.seq,
            more,
        })
    }

    // ---------------------------------------------------------------------------------------
    // Market data
    // ---------------------------------------------------------------------------------------

    fn next_seq(&mut self, channel: Channel, m: usize) -> u64 {
        let seq = self.md_seq.entry((channel, m)).or_insert(0);
        *seq += 1;
        *seq
    }

    fn publish(&mut self, m: usize, data: ChannelData, fx: &mut Vec<Effect>) {
        if data.is_empty() {
            return;
        }
        let seq = self.next_seq(data.channel(), m);
        fx.push(Effect::Publish(VenueMsg::Update(MarketData {
            channel: data.channel(),
            market: self.markets[m].cfg.symbol.clone(),
            seq,
            data,
        })));
    }

    fn book_levels(&self, m: usize, interval: DeliveryInterval) -> BookLevels {
        let depth = self.markets[m]
            .books
            .get(&interval)
            .map(|b| b.depth(self.cfg.book_levels))
            .unwrap_or_default();
        BookLevels {
            interval,
            bids: depth.bids,
            asks: depth.asks,
        }
    }

    fn publish_book(&mut self, m: usize, interval: DeliveryInterval, fx: &mut Vec<Effect>) {
        let levels = self.book_levels(m, interval);
        self.publish(m, ChannelData::Book(vec![levels]), fx);
    }

    fn price_point(&self, m: usize, interval: DeliveryInterval) -> PricePoint {
        let ms = &self.markets[m];
        PricePoint {
            interval,
            reference_price_cny_per_mwh: ms.model.reference_price(interval),
            last_trade_price_cny_per_mwh: ms.last_trade.get(&interval).copied(),
        }
    }

    fn publish_prices(&mut self, m: usize, intervals: &[DeliveryInterval], fx: &mut Vec<Effect>) {
        let points = intervals.iter().map(|i| self.price_point(m, *i)).collect();
        self.publish(m, ChannelData::Prices(points), fx);
    }

    fn open_window(&self) -> Vec<DeliveryInterval> {
        let mut i = DeliveryInterval::containing(self.now).next();
        (0..self.cfg.open_intervals)
            .map(|_| {
                let cur = i;
                i = i.next();
                cur
            })
            .collect()
    }

    /// The current sequence of a (channel, market) stream (0 before its first update).
    pub fn stream_seq(&self, channel: Channel, market: &str) -> u64 {
        self.market_index(market)
            .and_then(|m| self.md_seq.get(&(channel, m)).copied())
            .unwrap_or(0)
    }

    /// The current snapshot of (channel, market), carrying the stream's current sequence.
    pub fn snapshot(&self, channel: Channel, market: &str) -> Result<VenueMsg, ErrorMsg> {
        let m = self.market_index(market).ok_or_else(|| ErrorMsg {
            code: ErrorCode::UnknownMarket,
            message: format!("market {market:?} is not traded here"),
            request_type: Some("subscribe".into()),
            client_order_id: None,
        })?;
        let ms = &self.markets[m];
        let offered = match channel {
            Channel::Prices => true,
            Channel::Book => ms.is_continuous(),
            Channel::AuctionResults => ms.cfg.kind == MarketKind::DayAhead,
            Channel::AncillaryResults => ms.cfg.kind == MarketKind::Regulation,
            Channel::DrEvents => ms.cfg.kind == MarketKind::DemandResponse,
        };
        if !offered {
            return Err(ErrorMsg {
                code: ErrorCode::UnknownChannel,
                message: format!(
                    "channel {channel} is not offered for {} market {market}",
                    ms.cfg.kind
                ),
                request_type: Some("subscribe".into()),
                client_order_id: None,
            });
        }
        let data = match channel {
            Channel::Book => {
                ChannelData::Book(ms.books.keys().map(|i| self.book_levels(m, *i)).collect())
            }
            Channel::Prices => ChannelData::Prices(
                self.open_window()
                    .into_iter()
                    .map(|i| self.price_point(m, i))
                    .collect(),
            ),
            Channel::AuctionResults => {
                ChannelData::AuctionResults(ms.auction_results.iter().cloned().collect())
            }
            Channel::AncillaryResults => {
                ChannelData::AncillaryResults(ms.ancillary_results.iter().cloned().collect())
            }
            Channel::DrEvents => ChannelData::DrEvents(ms.dr_events.values().cloned().collect()),
        };
        Ok(VenueMsg::Snapshot(MarketData {
            channel,
            market: market.to_string(),
            seq: self.md_seq.get(&(channel, m)).copied().unwrap_or(0),
            data,
        }))
    }

    // ---------------------------------------------------------------------------------------
    // Time
    // ---------------------------------------------------------------------------------------

    /// Moves the market clock: expiries, closed books, gates and clearings, DR invitations,
    /// simulated quotes.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Effect> {
        self.now = self.now.max(now);
        let mut fx = Vec::new();
        for m in 0..self.markets.len() {
            if self.markets[m].is_continuous() {
                self.expire_books(m, &mut fx);
                if self.cfg.sim_quotes {
                    self.refresh_quotes(m, &mut fx);
                }
            } else {
                if self.markets[m].cfg.kind == MarketKind::DemandResponse {
                    self.invite_dr(m, &mut fx);
                }
                self.run_gates(m, &mut fx);
            }
        }
        fx
    }

    fn expire_books(&mut self, m: usize, fx: &mut Vec<Effect>) {
        let now = self.now;
        let intervals: Vec<DeliveryInterval> = self.markets[m].books.keys().copied().collect();
        for interval in intervals {
            let closing = interval.start() <= now;
            let Some(book) = self.markets[m].books.get_mut(&interval) else {
                continue;
            };
            let mut gone = book.expire(now);
            let timed_out = !gone.is_empty();
            if closing {
                gone.extend(book.close());
                self.markets[m].books.remove(&interval);
                self.markets[m].sim_orders.remove(&interval);
            }
            for o in &gone {
                self.terminal(
                    o.venue_order_id,
                    WireExecKind::Expired,
                    OrderStatus::Expired,
                    fx,
                );
            }
            if timed_out || closing {
                self.publish_book(m, interval, fx);
            }
        }
    }

    fn refresh_quotes(&mut self, m: usize, fx: &mut Vec<Effect>) {
        let step = self.now.timestamp().div_euclid(self.cfg.quote_refresh_secs);
        for interval in self.open_window() {
            let fresh = self.markets[m]
                .sim_orders
                .get(&interval)
                .is_some_and(|(s, _)| *s == step);
            if fresh {
                continue;
            }
            let old = self.markets[m]
                .sim_orders
                .remove(&interval)
                .map(|(_, ids)| ids)
                .unwrap_or_default();
            if let Some(book) = self.markets[m].books.get_mut(&interval) {
                for id in old {
                    let _ = book.cancel(id);
                    self.orders.remove(&id);
                }
            }
            let quotes = self.markets[m]
                .model
                .real_time_quotes(interval, step as u64);
            let mut ids = Vec::with_capacity(quotes.len());
            for (side, price, qty) in quotes {
                let id = self.next_venue_order_id;
                self.next_venue_order_id += 1;
                ids.push(id);
                self.orders.insert(
                    id,
                    VenueOrder {
                        account: None,
                        client_order_id: sim_client_id(id),
                        market: m,
                        product: self.markets[m].cfg.kind.default_product(),
                        interval,
                        side,
                        tif: TimeInForce::Gtc,
                        quantity_mw: qty,
                        price_cny_per_mwh: price,
                        filled_mw: Decimal::ZERO,
                        status: OrderStatus::Accepted,
                        last_account_seq: 0,
                    },
                );
                self.submit_to_book(id, fx);
            }
            self.markets[m].sim_orders.insert(interval, (step, ids));
            self.publish_prices(m, &[interval], fx);
        }
    }

    fn invite_dr(&mut self, m: usize, fx: &mut Vec<Effect>) {
        let lead = chrono::Duration::minutes(i64::from(self.markets[m].cfg.dr_lead_minutes));
        let horizon = DeliveryInterval::containing(self.now + lead);
        let mut next = self.markets[m]
            .next_dr_interval
            .unwrap_or_else(|| DeliveryInterval::containing(self.now).next());
        let every = i64::from(self.markets[m].cfg.dr_every_intervals.max(1));
        let mut created = Vec::new();
        // Bounded: at most the intervals inside the lead time.
        while next <= horizon && created.len() < 96 {
            if (next.epoch_seconds() / 900).rem_euclid(every) == 0 {
                let ms = &mut self.markets[m];
                let price = (ms.model.reference_price(next) * Decimal::new(15, 1))
                    .round_dp(2)
                    .min(ms.cfg.price_cap_cny_per_mwh);
                let event = DrEvent {
                    event_id: ms.next_dr_event_id,
                    interval: next,
                    price_cny_per_mwh: price.max(ms.cfg.price_floor_cny_per_mwh),
                    target_mw: ms.cfg.dr_target_mw,
                    respond_by: next.start() - lead / 2,
                    awarded_mw: None,
                };
                ms.next_dr_event_id += 1;
                ms.dr_events.insert(next, event.clone());
                while ms.dr_events.len() > RETAINED_RESULTS {
                    ms.dr_events.pop_first();
                }
                created.push(event);
            }
            next = next.next();
        }
        self.markets[m].next_dr_interval = Some(next);
        self.publish(m, ChannelData::DrEvents(created), fx);
    }

    fn run_gates(&mut self, m: usize, fx: &mut Vec<Effect>) {
        let due: Vec<DeliveryInterval> = self.markets[m]
            .pending_bids
            .keys()
            .copied()
            .filter(|i| self.now >= self.markets[m].gate(*i))
            .collect();
        for interval in due {
            let ids = self.markets[m]
                .pending_bids
                .remove(&interval)
                .unwrap_or_default();
            self.clear(m, interval, ids, fx);
        }
    }

    /// Clears one interval of an auction-type market and reports every bid's outcome.
    fn clear(&mut self, m: usize, interval: DeliveryInterval, ids: Vec<u64>, fx: &mut Vec<Effect>) {
        let mut bids: Vec<AuctionBid> = ids
            .iter()
            .filter_map(|id| {
                self.orders
                    .get(id)
                    .filter(|o| !o.status.is_terminal())
                    .map(|o| (id, o))
            })
            .map(|(id, o)| AuctionBid {
                bid_id: *id,
                side: o.side,
                quantity_mw: o.quantity_mw - o.filled_mw,
                price_cny_per_mwh: o.price_cny_per_mwh,
            })
            .collect();
        let ms = &self.markets[m];
        let counterpart = |side, qty, price| AuctionBid {
            bid_id: SIM_BID_ID_BASE,
            side,
            quantity_mw: qty,
            price_cny_per_mwh: price,
        };
        match ms.cfg.kind {
            MarketKind::DayAhead => {
                bids.extend(ms.model.participant_bids(interval, SIM_BID_ID_BASE))
            }
            MarketKind::Regulation => {
                // The operator buys its requirement whatever the price; competitors offer
                // 1.5x the requirement in three tranches priced off the reference price.
                let requirement = ms.cfg.regulation_requirement_mw;
                bids.push(counterpart(
                    Side::Buy,
                    requirement,
                    ms.cfg.price_cap_cny_per_mwh,
                ));
                let reference = ms.model.reference_price(interval).max(Decimal::ONE);
                for (i, divisor) in [20, 10, 5].into_iter().enumerate() {
                    bids.push(AuctionBid {
                        bid_id: SIM_BID_ID_BASE + 1 + i as u64,
                        side: Side::Sell,
                        quantity_mw: requirement / d(2),
                        price_cny_per_mwh: (reference / d(divisor)).round_dp(2),
                    });
                }
            }
            MarketKind::DemandResponse => {
                if let Some(e) = ms.dr_events.get(&interval) {
                    bids.push(counterpart(Side::Buy, e.target_mw, e.price_cny_per_mwh));
                }
            }
            _ => {}
        }
        let clearing = clear_uniform_price(&bids);
        let kind = ms.cfg.kind;
        let fill_price = match (kind, ms.dr_events.get(&interval)) {
            // Demand response pays the invitation's announced price.
            (MarketKind::DemandResponse, Some(e)) => Some(e.price_cny_per_mwh),
            _ => clearing.price_cny_per_mwh,
        };
        let awards: HashMap<u64, Decimal> = clearing
            .awards
            .iter()
            .map(|a| (a.bid_id, a.quantity_mw))
            .collect();
        for id in ids {
            let award = awards.get(&id).copied().unwrap_or(Decimal::ZERO);
            if let (Some(price), true) = (fill_price, award > Decimal::ZERO) {
                self.fill(id, award, price, fx);
            }
            self.terminal(id, WireExecKind::Expired, OrderStatus::Expired, fx);
        }
        let ms = &mut self.markets[m];
        match kind {
            MarketKind::DayAhead => {
                let r = AuctionResult {
                    interval,
                    clearing_price_cny_per_mwh: clearing.price_cny_per_mwh,
                    volume_mw: clearing.volume_mw,
                };
                push_bounded(&mut ms.auction_results, r.clone());
                self.publish(m, ChannelData::AuctionResults(vec![r]), fx);
            }
            MarketKind::Regulation => {
                let r = AncillaryResult {
                    interval,
                    capacity_price_cny_per_mw: clearing.price_cny_per_mwh,
                    mileage_price_cny_per_mw: ms.cfg.mileage_price_cny_per_mw,
                    volume_mw: clearing.volume_mw,
                };
                push_bounded(&mut ms.ancillary_results, r.clone());
                self.publish(m, ChannelData::AncillaryResults(vec![r]), fx);
            }
            MarketKind::DemandResponse => {
                if let Some(e) = ms.dr_events.get_mut(&interval) {
                    e.awarded_mw = Some(clearing.volume_mw);
                    let e = e.clone();
                    self.publish(m, ChannelData::DrEvents(vec![e]), fx);
                }
            }
            _ => {}
        }
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() >= RETAINED_RESULTS {
        q.pop_front();
    }
    q.push_back(item);
}

fn sim_client_id(venue_id: u64) -> ClientOrderId {
    ClientOrderId::new(format!("sim-{venue_id}")).unwrap_or_else(|_| unreachable_id())
}

fn unreachable_id() -> ClientOrderId {
    // "sim-" plus at most 20 digits always fits the id rules; this is a safe fallback.
    ClientOrderId::new("sim").unwrap_or_else(|_| unreachable!("\"sim\" is a valid client order id"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FillsSinceQuery, WireExecKind};
    use chrono::TimeZone;
    use rust_decimal_macros::dec;

    fn t(h: u32, m: u32) -> Timestamp {
        chrono::Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap()
    }

    fn venue(cfg_change: impl FnOnce(&mut VenueConfig)) -> Venue {
        let mut cfg = VenueConfig {
            sim_quotes: false,
            ..VenueConfig::default()
        };
        cfg_change(&mut cfg);
        Venue::new(cfg, t(8, 0)).unwrap()
    }

    fn order(
        id: &str,
        market: &str,
        product: Product,
        interval: DeliveryInterval,
        side: Side,
        qty: Decimal,
        price: Decimal,
    ) -> ClientMsg {
        ClientMsg::NewOrder(NewOrder {
            client_order_id: ClientOrderId::new(id).unwrap(),
            market: market.into(),
            product,
            interval,
            side,
            quantity_mw: qty,
            price_cny_per_mwh: price,
            time_in_force: WireTif::Day,
            expire_at: None,
        })
    }

    fn reports(fx: &[Effect]) -> Vec<WireExecReport> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::ToAccount(_, VenueMsg::ExecReport(r)) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn demand_response_invitation_response_and_award() {
        let mut v = venue(|_| {});
        let fx = v.tick(t(8, 0));
        let events: Vec<DrEvent> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Publish(VenueMsg::Update(MarketData {
                    data: ChannelData::DrEvents(ev),
                    ..
                })) => Some(ev.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(!events.is_empty(), "an invitation within the lead time");
        let event = events[0].clone();
        let too_dear = order(
            "r0",
            "yn-dr",
            Product::DemandResponse,
            event.interval,
            Side::Sell,
            dec!(5),
            event.price_cny_per_mwh + dec!(1),
        );
        let rejected = reports(&v.handle(0, too_dear, t(8, 0)));
        assert!(matches!(
            rejected[0].kind,
            WireExecKind::Rejected {
                code: ErrorCode::PriceOutOfRange,
                ..
            }
        ));
        let response = order(
            "r1",
            "yn-dr",
            Product::DemandResponse,
            event.interval,
            Side::Sell,
            dec!(5),
            event.price_cny_per_mwh,
        );
        assert!(matches!(
            reports(&v.handle(0, response, t(8, 0)))[0].kind,
            WireExecKind::Accepted
        ));
        let fx = v.tick(event.respond_by);
        let fills = reports(&fx);
        assert!(
            matches!(
                fills[0].kind,
                WireExecKind::Fill { quantity_mw, price_cny_per_mwh, .. } if quantity_mw == dec!(5) && price_cny_per_mwh == event.price_cny_per_mwh
            ),
            "{fills:?}"
        );
        let late = order(
            "r2",
            "yn-dr",
            Product::DemandResponse,
            event.interval,
            Side::Sell,
            dec!(1),
            event.price_cny_per_mwh,
        );
        assert!(matches!(
            reports(&v.handle(0, late, event.respond_by))[0].kind,
            WireExecKind::Rejected {
                code: ErrorCode::GateClosed,
                ..
            }
        ));
    }

    #[test]
    fn regulation_offer_is_cleared_at_the_marginal_price_with_mileage() {
        let mut v = venue(|_| {});
        let interval = DeliveryInterval::starting_at(t(10, 0)).unwrap();
        let offer = order(
            "g1",
            "yn-reg",
            Product::RegulationCapacity,
            interval,
            Side::Sell,
            dec!(10),
            dec!(1),
        );
        v.handle(0, offer, t(8, 0));
        let fx = v.tick(t(9, 0));
        let fill = reports(&fx)
            .into_iter()
            .find(|r| r.is_fill())
            .expect("awarded");
        let result = fx
            .iter()
            .find_map(|e| match e {
                Effect::Publish(VenueMsg::Update(MarketData {
                    data: ChannelData::AncillaryResults(r),
                    ..
                })) => Some(r[0].clone()),
                _ => None,
            })
            .unwrap();
        let price = result.capacity_price_cny_per_mw.unwrap();
        assert!(
            price > dec!(1) && price < dec!(1500),
            "marginal competitor price, not the cap: {price}"
        );
        assert!(
            matches!(fill.kind, WireExecKind::Fill { quantity_mw, price_cny_per_mwh, .. } if quantity_mw == dec!(10) && price_cny_per_mwh == price)
        );
        assert_eq!(result.mileage_price_cny_per_mw, dec!(12));
        assert_eq!(result.volume_mw, dec!(50));
    }

    #[test]
    fn rate_limit_uses_the_venue_window() {
        let mut v = venue(|c| {
            c.rate_limit = RateLimit {
                max_orders: 2,
                window_ms: 10_000,
            }
        });
        let interval = DeliveryInterval::starting_at(t(10, 0)).unwrap();
        let mk = |id: &str| {
            order(
                id,
                "yn-rt",
                Product::Energy,
                interval,
                Side::Sell,
                dec!(1),
                dec!(300),
            )
        };
        for (id, at, ok) in [
            ("a", t(8, 0), true),
            ("b", t(8, 0), true),
            ("c", t(8, 0) + chrono::Duration::seconds(9), false),
            ("d", t(8, 0) + chrono::Duration::seconds(10), true),
        ] {
            let r = reports(&v.handle(0, mk(id), at));
            let accepted = matches!(r[0].kind, WireExecKind::Accepted);
            assert_eq!(accepted, ok, "{id}: {r:?}");
        }
    }

    #[test]
    fn fills_since_pages_and_refuses_what_it_no_longer_keeps() {
        let mut v = venue(|c| c.max_reports_retained = 3);
        let interval = DeliveryInterval::starting_at(t(10, 0)).unwrap();
        for id in ["a", "b", "c"] {
            v.handle(
                0,
                order(
                    id,
                    "yn-rt",
                    Product::Energy,
                    interval,
                    Side::Sell,
                    dec!(1),
                    dec!(300),
                ),
                t(8, 0),
            );
        }
        assert_eq!(v.account_seq(0), 3);
        v.handle(
            0,
            order(
                "d",
                "yn-rt",
                Product::Energy,
                interval,
                Side::Sell,
                dec!(1),
                dec!(300),
            ),
            t(8, 0),
        );
        let mut q = |since| {
            v.handle(
                0,
                ClientMsg::FillsSince(FillsSinceQuery { account_seq: since }),
                t(8, 0),
            )
        };
        match &q(0)[0] {
            Effect::Reply(VenueMsg::Error(e)) => assert_eq!(e.code, ErrorCode::SeqTooOld),
            other => panic!("{other:?}"),
        }
        match &q(1)[0] {
            Effect::Reply(VenueMsg::FillsSince(r)) => {
                assert_eq!(
                    r.reports.iter().map(|r| r.account_seq).collect::<Vec<_>>(),
                    vec![2, 3, 4]
                );
                assert!(!r.more);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_price_csv_is_a_config_error_naming_the_market() {
        let mut cfg = VenueConfig::default();
        cfg.markets[1].price_csv = Some(PriceCsv {
            path: "/nonexistent/prices.csv".into(),
            currency_factor: Decimal::ONE,
            row_minutes: 60,
        });
        let err = Venue::new(cfg, t(8, 0)).err().expect("refused");
        assert!(
            matches!(&err, VenueConfigError::Invalid { field, .. } if field == "markets[1].price_csv"),
            "{err}"
        );
    }

    #[test]
    fn config_round_trips_through_toml_and_validates() {
        let cfg = VenueConfig::default();
        let text = toml::to_string(&cfg).unwrap();
        let back: VenueConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let mut bad = cfg.clone();
        bad.markets[1].symbol = bad.markets[0].symbol.clone();
        assert!(
            matches!(bad.validate(), Err(VenueConfigError::Invalid { field, .. }) if field == "markets[1].symbol")
        );
    }
}
