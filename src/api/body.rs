//! Strict JSON request bodies: [`Body<T>`] (required) and [`OptBody<T>`] (may be empty).
//!
//! Invariants:
//! - The gate ([`super::gate`]) has authenticated and authorised the caller before a byte of
//!   the body is read.
//! - A body above [`super::limits::BODY_LIMIT_BYTES`] is 413, whether its length is declared or
//!   it comes chunked (counted while reading, never buffered past the limit).
//! - A non-empty body that is not `Content-Type: application/json` is 415; malformed JSON is
//!   400 `bad_json`; a wrong type, a missing or an unknown field is 400 `invalid_body` naming
//!   the field (body types carry `#[serde(deny_unknown_fields)]`).
//! - A refused body means the handler never runs: nothing changes, and the refusal is audited
//!   once (bounded, through [`super::gate::refused`]).

use super::error::ApiError;
use super::limits::BODY_LIMIT_BYTES;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::web::BytesMut;
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

/// A required JSON body.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T> Body<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Body<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// An optional JSON body: an empty body is `None`; a non-empty one must be valid.
#[derive(Debug)]
pub struct OptBody<T>(pub Option<T>);

impl<T> OptBody<T> {
    pub fn into_inner(self) -> Option<T> {
        self.0
    }

    pub fn as_ref(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

/// The field named in a serde message like "missing field `x`" or "unknown field `x`".
fn serde_field(message: &str) -> Option<String> {
    let start = message.find("field `")? + "field `".len();
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

/// Reads the whole body, at most [`BODY_LIMIT_BYTES`].
async fn read(req: &HttpRequest, payload: &mut Payload) -> Result<BytesMut, ApiError> {
    let too_large = ApiError::PayloadTooLarge {
        limit_bytes: BODY_LIMIT_BYTES,
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT_BYTES as u64) {
        return Err(too_large);
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request("bad_body", format!("request body: {e}")))?;
        if buf.len() + chunk.len() > BODY_LIMIT_BYTES {
            return Err(too_large);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        let (code, field) = match e.classify() {
            serde_json::error::Category::Data => ("invalid_body", serde_field(&message)),
            _ => ("bad_json", None),
        };
        ApiError::BadRequest {
            code,
            message: format!("request body: {message}"),
            field,
        }
    })
}

/// Reads and parses; `Ok(None)` for an empty body.
async fn extract<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: &mut Payload,
) -> Result<Option<T>, ApiError> {
    let bytes = read(req, payload).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if !is_json(req) {
        return Err(ApiError::UnsupportedMediaType);
    }
    parse(&bytes).map(Some)
}

async fn audited<T>(req: &HttpRequest, r: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(e) = &r {
        super::gate::refused(req, e).await;
    }
    r
}

impl<T: DeserializeOwned + 'static> FromRequest for Body<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let r = extract::<T>(&req, &mut payload).await.and_then(|v| {
                v.map(Body).ok_or_else(|| ApiError::BadRequest {
                    code: "invalid_body",
                    message: "a JSON body is required".into(),
                    field: None,
                })
            });
            audited(&req, r).await
        })
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for OptBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let r = extract::<T>(&req, &mut payload).await.map(OptBody);
            audited(&req, r).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct V {
        #[allow(dead_code)]
        version: Option<u32>,
    }

    #[test]
    fn parse_classifies_errors() {
        let e = parse::<V>(br#"{"verison":1}"#).unwrap_err();
        assert_eq!(e.code(), "invalid_body");
        assert_eq!(e.field(), Some("verison"));
        let e = parse::<V>(br#"{"version":"1"}"#).unwrap_err();
        assert_eq!(e.code(), "invalid_body");
        let e = parse::<V>(b"{nope").unwrap_err();
        assert_eq!(e.code(), "bad_json");
        assert!(parse::<V>(br#"{"version":2}"#).is_ok());
    }
}
