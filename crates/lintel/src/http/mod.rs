//! The HTTP layer shared by every capability: the route table (each capability
//! contributes its own `router()`), the middleware stack in the order requests cross
//! it, extractors, and the OpenAPI document.
//!
//! Order, outermost first: compression, panic catcher, `edge` (request id, problem
//! rendering), `version` (path/header version, before routing), then inside the
//! router: `security` (CORS preflights, security headers), `session_cookie` (renews or
//! clears the session cookie the caller's resolution decided on), `observe` (rate
//! limits, time limit, access log, metrics), idempotency, body limit, handler.

pub mod catalog_doc;
pub mod client_ip;
pub mod edge;
pub mod extract;
pub mod idempotency;
pub mod openapi;
pub mod ratelimit;
pub mod security;
pub mod serve;
pub mod system;
pub mod typescript;
pub mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

/// Every documented route, with the OpenAPI document they make.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(system::router())
        .merge(crate::collections::router())
        .merge(crate::records::router())
        .merge(crate::batch::router())
        .merge(crate::auth::routes::router())
        .merge(crate::events::router())
        .merge(crate::jobs::router())
        .merge(crate::jobs::routes::transfer_router())
        .merge(crate::webhooks::router())
        .merge(crate::files::routes::router())
        .merge(crate::realtime::routes::router())
        .merge(crate::yjs::routes::router())
        .merge(crate::search::routes::router())
        .split_for_parts()
}

/// Marks an answer not to be stored by caches (secrets, tokens, logs).
pub fn no_store(res: &mut axum::response::Response) {
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
}

/// A JSON body with a weak ETag of its bytes, `304` when `If-None-Match` names it,
/// and `Cache-Control: private, no-cache` (per caller; revalidate every time).
pub fn etagged_json(bytes: Vec<u8>, headers: &axum::http::HeaderMap) -> axum::response::Response {
    use axum::http::{HeaderValue, StatusCode, header};
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    let tag = format!("W/\"{hex}\"");
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| h.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut res = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = bytes.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    per_caller(h);
    res
}

/// Answers that depend on who asks: kept by the caller's own cache only, revalidated.
pub const PER_CALLER_CACHE: &str = "private, no-cache";

/// Marks an answer as the caller's own: `Cache-Control: private, no-cache`, and
/// `Vary` on the credentials, so a cache never hands one caller's copy to another.
pub fn per_caller(h: &mut axum::http::HeaderMap) {
    use axum::http::{HeaderValue, header};
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(PER_CALLER_CACHE),
    );
    h.append(
        header::VARY,
        HeaderValue::from_static("Authorization, Cookie"),
    );
}

async fn no_route() -> impl IntoResponse {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "route_not_found",
        "No endpoint at this path; see /v1/openapi.json.",
    )
}

/// Adds the layers that run after routing and binds the state.
pub fn finish(router: Router<AppState>, state: AppState) -> Router {
    let body_limit = state.config.http.body_limit;
    router
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotency,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::observe,
        ))
        .layer(axum::middleware::from_fn(
            crate::auth::caller::session_cookie,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::protect,
        ))
        .with_state(state)
}
