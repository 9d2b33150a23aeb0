//! The one error shape of the operator API: `{"error":{"code","message","field"?}}`.
//!
//! Invariants:
//! - Bad input (body, query, path, unknown route) answers 4xx in this shape, never 5xx.
//! - A store or engine failure answers 503/500 in this shape and is logged; its message
//!   names the operation, never a credential or a SQL statement with values.

use actix_web::body::BoxBody;
use actix_web::dev::ServiceResponse;
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vpp_persistence::StoreError;

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `bad_json`, `forbidden`, `not_found`.
    pub code: String,
    pub message: String,
    /// The input field at fault, where one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Every way an API call fails.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input: bad JSON, a bad query or path parameter.
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// Well-formed input that names something invalid (422).
    #[error("{message}")]
    Invalid {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{what} not found")]
    NotFound { what: String, field: Option<String> },
    /// The request conflicts with the current state (e.g. releasing a released switch).
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// The path exists, but not with this method; `allow` lists the methods it takes.
    #[error("{method} is not allowed on {path}; allowed: {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    #[error("rate limit exceeded; retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// The live engine (or a part of it) is not reachable now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 422 naming the field at fault.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            code: "invalid",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// 404 naming what and (optionally) the input field that named it.
    pub fn not_found(what: impl Into<String>, field: Option<&str>) -> Self {
        Self::NotFound {
            what: what.into(),
            field: field.map(str::to_owned),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } | Self::Invalid { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound { .. } => "not_found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            Self::BadRequest { field, .. }
            | Self::Invalid { field, .. }
            | Self::NotFound { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                field: self.field().map(str::to_owned),
            },
        }
    }

    /// Outcome text for the audit log.
    pub fn audit_outcome(&self) -> String {
        match self {
            Self::Forbidden(_) | Self::Unauthorized(_) | Self::RateLimited { .. } => {
                format!("denied: {self}")
            }
            _ => format!("error: {self}"),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "api call failed");
        }
        let mut res = HttpResponse::build(status);
        match self {
            Self::RateLimited { retry_after_s } => {
                res.insert_header((header::RETRY_AFTER, retry_after_s.to_string()));
            }
            Self::Unauthorized(_) => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::MethodNotAllowed { allow, .. } => {
                res.insert_header((header::ALLOW, allow.as_str()));
            }
            _ => {}
        }
        res.json(self.body())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what } => Self::NotFound { what, field: None },
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::OutOfRange { field, .. } => Self::Invalid {
                code: "out_of_range",
                message: e.to_string(),
                field: Some(field.to_owned()),
            },
            StoreError::Connect { .. } | StoreError::Query { .. } => {
                tracing::error!(error = %e, "store unavailable");
                Self::Unavailable("the store is unavailable; retry later".into())
            }
            other => {
                tracing::error!(error = %other, "store failure");
                Self::Internal("store failure; see the daemon log".into())
            }
        }
    }
}

/// The field named in a serde message like "missing field `x`" or "unknown field `x`".
fn serde_field(message: &str) -> Option<String> {
    let start = message.find("field `")? + "field `".len();
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

/// Bad JSON bodies of actix's own `web::Json` (the handlers use [`super::body::Body`]):
/// 400 (syntax, types), 413 (too large), 415 (not JSON).
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { limit } => ApiError::PayloadTooLarge {
            limit_bytes: *limit,
        },
        JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::PayloadTooLarge {
            limit_bytes: *limit,
        },
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Deserialize(e) => {
            let message = e.to_string();
            let (code, field) = if e.is_data() {
                ("invalid_body", serde_field(&message))
            } else {
                ("bad_json", None)
            };
            ApiError::BadRequest {
                code,
                message: format!("request body: {message}"),
                field,
            }
        }
        other => ApiError::bad_request("bad_body", format!("request body: {other}")),
    };
    api.into()
}

/// Bad query strings: 400 naming the parameter where serde does.
pub fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let message = err.to_string();
    ApiError::BadRequest {
        code: "bad_query",
        field: serde_field(&message),
        message,
    }
    .into()
}

/// Bad path parameters (e.g. a non-numeric id): 400.
pub fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request("bad_path", err.to_string()).into()
}

/// Rewrites error answers that are not already in the shape (unknown routes, wrong methods,
/// actix's own payload errors) into it; our own JSON answers pass unchanged.
pub fn shape_errors<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let api = match status {
        StatusCode::NOT_FOUND => {
            ApiError::not_found(format!("route {}", res.request().path()), None)
        }
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed {
            method: res.request().method().to_string(),
            path: res.request().path().to_owned(),
            allow: res
                .response()
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
        },
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
            limit_bytes: super::limits::BODY_LIMIT_BYTES,
        },
        s if s.is_client_error() => ApiError::BadRequest {
            code: "bad_request",
            message: s.canonical_reason().unwrap_or("bad request").to_owned(),
            field: None,
        },
        _ => ApiError::Internal("internal error; see the daemon log".into()),
    };
    let mut body = api.error_response();
    // Keep the original status (e.g. 405 stays 405) with our body.
    *body.status_mut() = status;
    let (req, _) = res.into_parts();
    let res = ServiceResponse::new(req, body)
        .map_into_boxed_body()
        .map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_field_extracts_the_name() {
        assert_eq!(
            serde_field("missing field `side` at line 1").as_deref(),
            Some("side")
        );
        assert_eq!(serde_field("expected value at line 1 column 2"), None);
    }

    #[test]
    fn every_error_has_a_code_and_4xx_for_input() {
        let e = ApiError::invalid("quantity_mw", "must be positive");
        assert_eq!(e.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error"]["field"], "quantity_mw");
        assert_eq!(body["error"]["code"], "invalid");
        let e = ApiError::RateLimited { retry_after_s: 2 };
        let res = e.error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "2");
    }
}
