//! The venue wire protocol, version [`PROTOCOL_VERSION`]: JSON text frames over WebSocket.
//!
//! Every message is one JSON object whose first key is `"type"`. Prices and quantities are
//! decimal strings (never JSON numbers), timestamps RFC 3339 UTC, delivery intervals the UTC
//! start of the 15-minute interval. docs/protocol.md is the normative description.
//!
//! Invariants:
//! - Encoding always writes `type` first, which lets [`message_type`] find it without a parse.
//! - Decoding never panics: bad JSON is a [`DecodeError`]; a well-formed message of a type
//!   this version does not know decodes to `Unknown { type_name }` so the peer can count it and
//!   carry on. Unknown fields are ignored (forward compatibility).
//! - Market data `data` is decoded straight into the channel's item type (no intermediate
//!   `Value`), so a book update decodes in about a microsecond.

use crate::sim::faults::FaultSpec;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use thiserror::Error;
use vpp_engine::ids::{ClientOrderId, FillId};
use vpp_engine::market::{DeliveryInterval, Product};
use vpp_engine::order::{ExecKind, ExecReport, OrderStatus, Side, TimeInForce};
use vpp_engine::Timestamp;

/// The one protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Most reports a venue returns in one `fills_since` reply; `more: true` asks for another page.
pub const MAX_REPORTS_PER_REPLY: usize = 1_000;

/// Market data channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Prices,
    Book,
    AuctionResults,
    AncillaryResults,
    DrEvents,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Prices,
        Channel::Book,
        Channel::AuctionResults,
        Channel::AncillaryResults,
        Channel::DrEvents,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Prices => "prices",
            Channel::Book => "book",
            Channel::AuctionResults => "auction_results",
            Channel::AncillaryResults => "ancillary_results",
            Channel::DrEvents => "dr_events",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable error and reject codes. A code this version does not know decodes to `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadApiKey,
    UnsupportedProtocolVersion,
    NotLoggedIn,
    AlreadyLoggedIn,
    SessionReplaced,
    MalformedMessage,
    UnknownMarket,
    UnknownChannel,
    InvalidField,
    DuplicateClientOrderId,
    UnknownOrder,
    RateLimited,
    PriceOutOfRange,
    VolumeTooLarge,
    GateClosed,
    BookFull,
    WouldNotFill,
    NotCancellable,
    SeqTooOld,
    FaultControlDisabled,
    Internal,
    #[serde(other)]
    Other,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadApiKey => "bad_api_key",
            ErrorCode::UnsupportedProtocolVersion => "unsupported_protocol_version",
            ErrorCode::NotLoggedIn => "not_logged_in",
            ErrorCode::AlreadyLoggedIn => "already_logged_in",
            ErrorCode::SessionReplaced => "session_replaced",
            ErrorCode::MalformedMessage => "malformed_message",
            ErrorCode::UnknownMarket => "unknown_market",
            ErrorCode::UnknownChannel => "unknown_channel",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::DuplicateClientOrderId => "duplicate_client_order_id",
            ErrorCode::UnknownOrder => "unknown_order",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PriceOutOfRange => "price_out_of_range",
            ErrorCode::VolumeTooLarge => "volume_too_large",
            ErrorCode::GateClosed => "gate_closed",
            ErrorCode::BookFull => "book_full",
            ErrorCode::WouldNotFill => "would_not_fill",
            ErrorCode::NotCancellable => "not_cancellable",
            ErrorCode::SeqTooOld => "seq_too_old",
            ErrorCode::FaultControlDisabled => "fault_control_disabled",
            ErrorCode::Internal => "internal",
            ErrorCode::Other => "other",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Time in force on the wire: a flat string plus `expire_at` for `gtd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireTif {
    Day,
    Gtc,
    Ioc,
    Fok,
    Gtd,
}

/// Splits an engine time in force into its wire form.
pub fn tif_to_wire(tif: TimeInForce) -> (WireTif, Option<Timestamp>) {
    match tif {
        TimeInForce::Day => (WireTif::Day, None),
        TimeInForce::Gtc => (WireTif::Gtc, None),
        TimeInForce::Ioc => (WireTif::Ioc, None),
        TimeInForce::Fok => (WireTif::Fok, None),
        TimeInForce::Gtd { expire_at } => (WireTif::Gtd, Some(expire_at)),
    }
}

/// Joins the wire form back; `gtd` without `expire_at` is refused.
pub fn tif_from_wire(
    tif: WireTif,
    expire_at: Option<Timestamp>,
) -> Result<TimeInForce, &'static str> {
    Ok(match tif {
        WireTif::Day => TimeInForce::Day,
        WireTif::Gtc => TimeInForce::Gtc,
        WireTif::Ioc => TimeInForce::Ioc,
        WireTif::Fok => TimeInForce::Fok,
        WireTif::Gtd => TimeInForce::Gtd {
            expire_at: expire_at.ok_or("time_in_force gtd needs expire_at")?,
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Client → venue
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Login {
    pub api_key: String,
    pub protocol_version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Subscription {
    pub channel: Channel,
    pub market: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub ts: Timestamp,
    /// Venue heartbeats carry the account's latest exec report sequence so a client can see a
    /// lost tail report even when no later report arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_seq: Option<u64>,
    /// Venue heartbeats also carry the current sequence of every stream the connection is
    /// subscribed to, so a lost last update is seen without waiting for the next one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamSeq>,
}

/// The current sequence of one (channel, market) stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSeq {
    pub channel: Channel,
    pub market: String,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewOrder {
    pub client_order_id: ClientOrderId,
    pub market: String,
    pub product: Product,
    pub interval: DeliveryInterval,
    pub side: Side,
    pub quantity_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
    pub time_in_force: WireTif,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelOrder {
    pub client_order_id: ClientOrderId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplaceOrder {
    pub client_order_id: ClientOrderId,
    /// New total quantity (filled part included), MW.
    pub quantity_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderStatusQuery {
    pub client_order_id: ClientOrderId,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OpenOrdersQuery {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FillsSinceQuery {
    /// Reports with a sequence number strictly above this one are returned.
    pub account_seq: u64,
}

/// Simulator extension: sets this connection's faults (only when the venue allows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultControl {
    pub fault: FaultSpec,
}

/// Everything a client sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Login(Login),
    Subscribe(Subscription),
    Unsubscribe(Subscription),
    Heartbeat(Heartbeat),
    HeartbeatAck(Heartbeat),
    NewOrder(NewOrder),
    CancelOrder(CancelOrder),
    ReplaceOrder(ReplaceOrder),
    OrderStatus(OrderStatusQuery),
    OpenOrders(OpenOrdersQuery),
    FillsSince(FillsSinceQuery),
    Fault(FaultControl),
    /// A well-formed message of a type this version does not know.
    #[serde(skip)]
    Unknown {
        type_name: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Venue → client
// ---------------------------------------------------------------------------------------------

/// The venue's order-entry rate limit: at most `max_orders` per sliding `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub max_orders: u32,
    pub window_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginOk {
    pub account: String,
    pub protocol_version: u32,
    /// Sequence number of the account's latest exec report (0: none yet).
    pub account_seq: u64,
    pub server_time: Timestamp,
    pub heartbeat_interval_ms: u64,
    pub rate_limit: RateLimit,
    /// Identifies the venue's state: it changes whenever the venue restarted and lost its
    /// orders and report log (optional; a client that sees it change treats the venue as
    /// reset, see docs/protocol.md §8.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue_epoch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
    /// The `type` of the request that failed, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<ClientOrderId>,
}

/// One price level: `[price_cny_per_mwh, quantity_mw]`.
pub type Level = (Decimal, Decimal);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookLevels {
    #[serde(deserialize_with = "crate::fast::interval")]
    pub interval: DeliveryInterval,
    /// Best first. An update replaces the whole (top-of-book) ladder of its interval.
    #[serde(deserialize_with = "crate::fast::levels")]
    pub bids: Vec<Level>,
    #[serde(deserialize_with = "crate::fast::levels")]
    pub asks: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PricePoint {
    #[serde(deserialize_with = "crate::fast::interval")]
    pub interval: DeliveryInterval,
    #[serde(deserialize_with = "crate::fast::decimal")]
    pub reference_price_cny_per_mwh: Decimal,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::fast::opt_decimal"
    )]
    pub last_trade_price_cny_per_mwh: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuctionResult {
    pub interval: DeliveryInterval,
    /// `None` when supply and demand did not cross.
    pub clearing_price_cny_per_mwh: Option<Decimal>,
    pub volume_mw: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AncillaryResult {
    pub interval: DeliveryInterval,
    pub capacity_price_cny_per_mw: Option<Decimal>,
    pub mileage_price_cny_per_mw: Decimal,
    pub volume_mw: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrEvent {
    pub event_id: u64,
    pub interval: DeliveryInterval,
    /// Paid per MWh of load reduction delivered.
    pub price_cny_per_mwh: Decimal,
    pub target_mw: Decimal,
    /// Responses (sell orders in the demand-response market) close at this instant.
    pub respond_by: Timestamp,
    /// Set once the response window closed and responses were awarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awarded_mw: Option<Decimal>,
}

/// The items of one channel. A snapshot carries every current item, an update the changed ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ChannelData {
    Prices(Vec<PricePoint>),
    Book(Vec<BookLevels>),
    AuctionResults(Vec<AuctionResult>),
    AncillaryResults(Vec<AncillaryResult>),
    DrEvents(Vec<DrEvent>),
}

impl ChannelData {
    pub fn channel(&self) -> Channel {
        match self {
            ChannelData::Prices(_) => Channel::Prices,
            ChannelData::Book(_) => Channel::Book,
            ChannelData::AuctionResults(_) => Channel::AuctionResults,
            ChannelData::AncillaryResults(_) => Channel::AncillaryResults,
            ChannelData::DrEvents(_) => Channel::DrEvents,
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            ChannelData::Prices(v) => v.is_empty(),
            ChannelData::Book(v) => v.is_empty(),
            ChannelData::AuctionResults(v) => v.is_empty(),
            ChannelData::AncillaryResults(v) => v.is_empty(),
            ChannelData::DrEvents(v) => v.is_empty(),
        }
    }
}

/// A snapshot or an update on one (channel, market) stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MarketData {
    pub channel: Channel,
    pub market: String,
    /// Per (channel, market) sequence: a snapshot carries the current value, each update +1.
    pub seq: u64,
    pub data: ChannelData,
}

/// What the venue said about an order, on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WireExecKind {
    Accepted,
    Rejected {
        code: ErrorCode,
        reason: String,
    },
    PartialFill {
        fill_id: u64,
        quantity_mw: Decimal,
        price_cny_per_mwh: Decimal,
    },
    Fill {
        fill_id: u64,
        quantity_mw: Decimal,
        price_cny_per_mwh: Decimal,
    },
    Cancelled {
        reason: String,
    },
    Expired,
    Replaced {
        quantity_mw: Decimal,
        price_cny_per_mwh: Decimal,
    },
    CancelRejected {
        code: ErrorCode,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireExecReport {
    /// Per-account sequence, gap-free, starting at 1.
    pub account_seq: u64,
    pub client_order_id: ClientOrderId,
    pub venue_order_id: String,
    pub ts: Timestamp,
    #[serde(flatten)]
    pub kind: WireExecKind,
    /// Cumulative filled quantity after this report, MW.
    pub filled_mw: Decimal,
    /// Quantity still working after this report, MW (0 once terminal).
    pub leaves_mw: Decimal,
}

impl WireExecReport {
    /// The engine's view of this report (partial fill and fill are both `ExecKind::Fill`).
    pub fn to_engine(&self) -> ExecReport {
        let kind = match &self.kind {
            WireExecKind::Accepted => ExecKind::Accepted,
            WireExecKind::Rejected { code, reason } => ExecKind::Rejected {
                reason: format!("{code}: {reason}"),
            },
            WireExecKind::PartialFill {
                fill_id,
                quantity_mw,
                price_cny_per_mwh,
            }
            | WireExecKind::Fill {
                fill_id,
                quantity_mw,
                price_cny_per_mwh,
            } => ExecKind::Fill {
                fill_id: FillId(*fill_id),
                quantity_mw: *quantity_mw,
                price_cny_per_mwh: *price_cny_per_mwh,
            },
            WireExecKind::Cancelled { reason } => ExecKind::Cancelled {
                reason: reason.clone(),
            },
            WireExecKind::Expired => ExecKind::Expired,
            WireExecKind::Replaced {
                quantity_mw,
                price_cny_per_mwh,
            } => ExecKind::Replaced {
                quantity_mw: *quantity_mw,
                price_cny_per_mwh: *price_cny_per_mwh,
            },
            WireExecKind::CancelRejected { code, reason } => ExecKind::CancelRejected {
                reason: format!("{code}: {reason}"),
            },
        };
        ExecReport {
            seq: self.account_seq,
            client_order_id: self.client_order_id.clone(),
            venue_order_id: Some(self.venue_order_id.clone()),
            kind,
            at: self.ts,
        }
    }

    pub fn is_fill(&self) -> bool {
        matches!(
            self.kind,
            WireExecKind::PartialFill { .. } | WireExecKind::Fill { .. }
        )
    }
}

/// The venue's full view of one order (reply to `order_status` and `open_orders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub client_order_id: ClientOrderId,
    pub venue_order_id: String,
    pub market: String,
    pub product: Product,
    pub interval: DeliveryInterval,
    pub side: Side,
    pub time_in_force: WireTif,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<Timestamp>,
    pub status: OrderStatus,
    pub quantity_mw: Decimal,
    pub price_cny_per_mwh: Decimal,
    pub filled_mw: Decimal,
    /// Sequence of the latest report about this order.
    pub last_account_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderStatusReply {
    pub client_order_id: ClientOrderId,
    /// `None`: the venue never received this client order id.
    pub order: Option<OrderState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenOrdersReply {
    pub orders: Vec<OrderState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FillsSinceReply {
    /// Echo of the query.
    pub since_seq: u64,
    /// Every exec report (fills and the others) with `account_seq > since_seq`, in order.
    pub reports: Vec<WireExecReport>,
    /// The account's latest sequence when the reply was made.
    pub account_seq: u64,
    /// More reports follow: query again from the last one returned.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsubscribed {
    pub channel: Channel,
    pub market: String,
}

/// Everything a venue sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VenueMsg {
    LoginOk(LoginOk),
    Error(ErrorMsg),
    Snapshot(MarketData),
    Update(MarketData),
    Unsubscribed(Unsubscribed),
    Heartbeat(Heartbeat),
    HeartbeatAck(Heartbeat),
    ExecReport(WireExecReport),
    OrderStatus(OrderStatusReply),
    OpenOrders(OpenOrdersReply),
    FillsSince(FillsSinceReply),
    #[serde(skip)]
    Unknown {
        type_name: String,
    },
}

impl VenueMsg {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        VenueMsg::Error(ErrorMsg {
            code,
            message: message.into(),
            request_type: None,
            client_order_id: None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("message has no string \"type\" field")]
    MissingType,
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
}

#[derive(Debug, Error)]
#[error("cannot encode message: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
}

/// The `type` of a message: a byte scan when `type` is the first key (as every encoder here
/// writes it), a lenient parse otherwise.
pub fn message_type(text: &str) -> Result<Cow<'_, str>, DecodeError> {
    const PREFIX: &str = "{\"type\":\"";
    if let Some(rest) = text.strip_prefix(PREFIX) {
        if let Some(end) = rest.find('"') {
            let ty = &rest[..end];
            if !ty.contains('\\') {
                return Ok(Cow::Borrowed(ty));
            }
        }
    }
    let head: Head<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            DecodeError::MissingType
        } else {
            DecodeError::Malformed(e)
        }
    })?;
    Ok(head.ty)
}

fn body<T: DeserializeOwned>(text: &str) -> Result<T, DecodeError> {
    Ok(serde_json::from_str(text)?)
}

/// Encodes any protocol message (`type` first).
pub fn encode<T: Serialize>(msg: &T) -> Result<String, EncodeError> {
    Ok(serde_json::to_string(msg)?)
}

/// Decodes one client → venue message.
pub fn decode_client(text: &str) -> Result<ClientMsg, DecodeError> {
    let ty = message_type(text)?;
    Ok(match ty.as_ref() {
        "login" => ClientMsg::Login(body(text)?),
        "subscribe" => ClientMsg::Subscribe(body(text)?),
        "unsubscribe" => ClientMsg::Unsubscribe(body(text)?),
        "heartbeat" => ClientMsg::Heartbeat(body(text)?),
        "heartbeat_ack" => ClientMsg::HeartbeatAck(body(text)?),
        "new_order" => ClientMsg::NewOrder(body(text)?),
        "cancel_order" => ClientMsg::CancelOrder(body(text)?),
        "replace_order" => ClientMsg::ReplaceOrder(body(text)?),
        "order_status" => ClientMsg::OrderStatus(body(text)?),
        "open_orders" => ClientMsg::OpenOrders(body(text)?),
        "fills_since" => ClientMsg::FillsSince(body(text)?),
        "fault" => ClientMsg::Fault(body(text)?),
        other => ClientMsg::Unknown {
            type_name: other.to_owned(),
        },
    })
}

#[derive(Deserialize)]
struct MdEnvelope<'a> {
    channel: Cow<'a, str>,
    market: String,
    seq: u64,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn decode_market_data(text: &str) -> Result<MarketData, DecodeError> {
    let env: MdEnvelope<'_> = serde_json::from_str(text)?;
    let raw = env.data.get();
    let data = match env.channel.as_ref() {
        "prices" => ChannelData::Prices(serde_json::from_str(raw)?),
        "book" => ChannelData::Book(serde_json::from_str(raw)?),
        "auction_results" => ChannelData::AuctionResults(serde_json::from_str(raw)?),
        "ancillary_results" => ChannelData::AncillaryResults(serde_json::from_str(raw)?),
        "dr_events" => ChannelData::DrEvents(serde_json::from_str(raw)?),
        other => return Err(DecodeError::UnknownChannel(other.to_owned())),
    };
    Ok(MarketData {
        channel: data.channel(),
        market: env.market,
        seq: env.seq,
        data,
    })
}

/// Decodes one venue → client message.
pub fn decode_venue(text: &str) -> Result<VenueMsg, DecodeError> {
    let ty = message_type(text)?;
    Ok(match ty.as_ref() {
        "update" => VenueMsg::Update(decode_market_data(text)?),
        "snapshot" => VenueMsg::Snapshot(decode_market_data(text)?),
        "exec_report" => VenueMsg::ExecReport(body(text)?),
        "heartbeat" => VenueMsg::Heartbeat(body(text)?),
        "heartbeat_ack" => VenueMsg::HeartbeatAck(body(text)?),
        "login_ok" => VenueMsg::LoginOk(body(text)?),
        "error" => VenueMsg::Error(body(text)?),
        "unsubscribed" => VenueMsg::Unsubscribed(body(text)?),
        "order_status" => VenueMsg::OrderStatus(body(text)?),
        "open_orders" => VenueMsg::OpenOrders(body(text)?),
        "fills_since" => VenueMsg::FillsSince(body(text)?),
        other => VenueMsg::Unknown {
            type_name: other.to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use rust_decimal_macros::dec;

    fn interval() -> DeliveryInterval {
        DeliveryInterval::starting_at(Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap()).unwrap()
    }

    fn ts() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap()
    }

    fn all_client_messages() -> Vec<ClientMsg> {
        let id = ClientOrderId::new("c-1").unwrap();
        vec![
            ClientMsg::Login(Login {
                api_key: "k".into(),
                protocol_version: 1,
            }),
            ClientMsg::Subscribe(Subscription {
                channel: Channel::Book,
                market: "yn-rt".into(),
            }),
            ClientMsg::Unsubscribe(Subscription {
                channel: Channel::DrEvents,
                market: "yn-dr".into(),
            }),
            ClientMsg::Heartbeat(Heartbeat {
                ts: ts(),
                account_seq: None,
                streams: Vec::new(),
            }),
            ClientMsg::NewOrder(NewOrder {
                client_order_id: id.clone(),
                market: "yn-rt".into(),
                product: Product::Energy,
                interval: interval(),
                side: Side::Sell,
                quantity_mw: dec!(1.5),
                price_cny_per_mwh: dec!(-12.25),
                time_in_force: WireTif::Gtd,
                expire_at: Some(ts()),
            }),
            ClientMsg::CancelOrder(CancelOrder {
                client_order_id: id.clone(),
            }),
            ClientMsg::ReplaceOrder(ReplaceOrder {
                client_order_id: id.clone(),
                quantity_mw: dec!(2),
                price_cny_per_mwh: dec!(301),
            }),
            ClientMsg::OrderStatus(OrderStatusQuery {
                client_order_id: id,
            }),
            ClientMsg::OpenOrders(OpenOrdersQuery {}),
            ClientMsg::FillsSince(FillsSinceQuery { account_seq: 7 }),
        ]
    }

    #[test]
    fn every_client_message_round_trips_with_type_first() {
        for msg in all_client_messages() {
            let text = encode(&msg).unwrap();
            assert!(text.starts_with("{\"type\":\""), "{text}");
            assert_eq!(decode_client(&text).unwrap(), msg, "{text}");
        }
    }

    #[test]
    fn decimals_are_strings_and_exec_kinds_flatten() {
        let report = WireExecReport {
            account_seq: 3,
            client_order_id: ClientOrderId::new("c-1").unwrap(),
            venue_order_id: "V7".into(),
            ts: ts(),
            kind: WireExecKind::PartialFill {
                fill_id: 9,
                quantity_mw: dec!(0.5),
                price_cny_per_mwh: dec!(300.10),
            },
            filled_mw: dec!(0.5),
            leaves_mw: dec!(1),
        };
        let text = encode(&VenueMsg::ExecReport(report.clone())).unwrap();
        assert!(text.contains("\"kind\":\"partial_fill\""), "{text}");
        assert!(text.contains("\"price_cny_per_mwh\":\"300.10\""), "{text}");
        let back = decode_venue(&text).unwrap();
        assert_eq!(back, VenueMsg::ExecReport(report.clone()));
        let engine = report.to_engine();
        assert_eq!(engine.seq, 3);
        assert!(matches!(
            engine.kind,
            ExecKind::Fill {
                fill_id: FillId(9),
                ..
            }
        ));
    }

    #[test]
    fn market_data_decodes_by_channel() {
        let msg = VenueMsg::Update(MarketData {
            channel: Channel::Book,
            market: "yn-rt".into(),
            seq: 42,
            data: ChannelData::Book(vec![BookLevels {
                interval: interval(),
                bids: vec![(dec!(300), dec!(2)), (dec!(299.5), dec!(1))],
                asks: vec![(dec!(301), dec!(3))],
            }]),
        });
        let text = encode(&msg).unwrap();
        assert_eq!(decode_venue(&text).unwrap(), msg);
        let bad = text.replace("\"channel\":\"book\"", "\"channel\":\"weather\"");
        assert!(matches!(
            decode_venue(&bad),
            Err(DecodeError::UnknownChannel(c)) if c == "weather"
        ));
    }

    #[test]
    fn unknown_types_and_fields_are_tolerated_and_garbage_is_an_error() {
        assert_eq!(
            decode_venue(r#"{"type":"news","headline":"x"}"#).unwrap(),
            VenueMsg::Unknown {
                type_name: "news".into()
            }
        );
        // `type` not first, an unknown extra field: still decoded.
        let msg = decode_client(r#"{"account_seq":5,"type":"fills_since","extra":[1,2]}"#).unwrap();
        assert_eq!(
            msg,
            ClientMsg::FillsSince(FillsSinceQuery { account_seq: 5 })
        );
        assert!(matches!(
            decode_client("{nope"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_client(r#"{"kind":"login"}"#),
            Err(DecodeError::MissingType)
        ));
        assert!(decode_client(r#"{"type":"new_order","client_order_id":"bad id"}"#).is_err());
        let code: ErrorCode = serde_json::from_str("\"brand_new_code\"").unwrap();
        assert_eq!(code, ErrorCode::Other);
    }

    #[test]
    fn gtd_needs_expire_at() {
        assert!(tif_from_wire(WireTif::Gtd, None).is_err());
        let tif = TimeInForce::Gtd { expire_at: ts() };
        let (w, e) = tif_to_wire(tif);
        assert_eq!(tif_from_wire(w, e).unwrap(), tif);
    }
}
