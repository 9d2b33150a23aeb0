//! Identifier newtypes. Numeric ids are assigned by the store or the config loader; a client
//! order id is a short string chosen by the engine and unique per venue account forever.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

numeric_id!(/// A resource template (all its versions share this id).
    TemplateId);
numeric_id!(/// A resource instance.
    ResourceId);
numeric_id!(/// An aggregation (a VPP).
    AggregationId);
numeric_id!(/// A strategy instance.
    StrategyId);
numeric_id!(/// A market (venue + market kind).
    MarketId);
numeric_id!(/// A fill, unique per venue account.
    FillId);

/// Maximum length of a client order id, in bytes. Venues commonly allow 32 to 64.
pub const CLIENT_ORDER_ID_MAX_LEN: usize = 36;

/// Client order id: unique and idempotent per venue account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientOrderId(String);

impl ClientOrderId {
    /// Builds a client order id, refusing an empty one, one longer than
    /// [`CLIENT_ORDER_ID_MAX_LEN`] or one with characters outside `[A-Za-z0-9_.:-]`.
    pub fn new(id: impl Into<String>) -> Result<Self, crate::error::ValidationError> {
        let id = id.into();
        let valid_chars = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if id.is_empty() || id.len() > CLIENT_ORDER_ID_MAX_LEN || !valid_chars {
            return Err(crate::error::ValidationError::new(
                "client_order_id",
                format!(
                    "{id:?} must be 1..={CLIENT_ORDER_ID_MAX_LEN} characters of [A-Za-z0-9_.:-]"
                ),
            ));
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientOrderId {
    type Error = crate::error::ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<ClientOrderId> for String {
    fn from(id: ClientOrderId) -> String {
        id.0
    }
}

impl fmt::Display for ClientOrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_order_id_rejects_empty_long_and_odd_characters() {
        assert!(ClientOrderId::new("").is_err());
        assert!(ClientOrderId::new("x".repeat(CLIENT_ORDER_ID_MAX_LEN + 1)).is_err());
        assert!(ClientOrderId::new("a b").is_err());
        assert!(ClientOrderId::new("s1-000042").is_ok());
        let parsed: Result<ClientOrderId, _> = serde_json::from_str("\"bad id\"");
        assert!(parsed.is_err());
    }
}
