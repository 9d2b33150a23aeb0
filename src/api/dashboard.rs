//! The operator dashboard: a static page (HTML, JS, CSS under `assets/dashboard/`) embedded in
//! the binary with `include_str!` and served at `/`, plus `/api/v1/session` (who the token
//! is, so the page shows the kill switch to admins only).
//!
//! Invariants: no CDN and no build step; the page loads nothing from outside the daemon (a
//! Content-Security-Policy of `'self'` says so to the browser). The page is public; every
//! number on it comes from token-checked API calls.

use super::auth::Caller;
use super::error::ApiError;
use actix_web::http::header;
use actix_web::{web, HttpResponse};

pub const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
pub const DASHBOARD_JS: &str = include_str!("../../assets/dashboard/dashboard.js");
pub const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard/dashboard.css");

const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; frame-ancestors 'none'";

/// Top-level routes (outside `/api/v1`).
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/index.html", web::get().to(index_html))
        .route("/dashboard.js", web::get().to(js))
        .route("/dashboard.css", web::get().to(css));
}

/// Routes under `/api/v1`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/session", web::get().to(session));
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

#[utoipa::path(get, path = "/", tag = "dashboard", responses((status = 200, description = "success")))]
pub async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

#[utoipa::path(get, path = "/index.html", tag = "dashboard", responses((status = 200, description = "success")))]
pub async fn index_html() -> HttpResponse {
    index().await
}

#[utoipa::path(get, path = "/dashboard.js", tag = "dashboard", responses((status = 200, description = "success")))]
pub async fn js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

#[utoipa::path(get, path = "/dashboard.css", tag = "dashboard", responses((status = 200, description = "success")))]
pub async fn css() -> HttpResponse {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

/// `GET /api/v1/session`: the calling token's name and role.
#[utoipa::path(get, path = "/api/v1/session", tag = "dashboard", responses((status = 200, description = "success"), (status = "4XX", description = "bad input, refused or not found", body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn session(caller: Caller) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "name": caller.name,
        "role": caller.role.as_str(),
    })))
}
