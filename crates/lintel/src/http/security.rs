//! Browser-facing protection on every response: CORS from an explicit allow-list of
//! origins (preflights answered here, disallowed origins get no CORS headers at all),
//! and the security headers (`X-Content-Type-Options`, `Referrer-Policy`,
//! `X-Frame-Options`, a strict `Content-Security-Policy`, and HSTS over TLS).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// Response headers a browser script may read.
const EXPOSED: &str = "ETag, Location, Link, Last-Modified, Retry-After, RateLimit, RateLimit-Policy, X-Request-Id, Api-Version, Idempotent-Replayed";

fn allowed_origin<'a>(state: &AppState, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    state
        .config
        .cors
        .allowed_origins
        .iter()
        .any(|a| a.trim_end_matches('/') == o)
        .then_some(origin)
}

fn set(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

pub async fn protect(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let cors = &state.config.cors;
    let origin = allowed_origin(&state, req.headers()).cloned();
    let has_origin = req.headers().contains_key(header::ORIGIN);
    let over_tls = req
        .extensions()
        .get::<crate::http::serve::TlsInfo>()
        .is_some();
    let preflight = req.method() == Method::OPTIONS
        && has_origin
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut res = if preflight {
        // Answered here, allowed or not; a refused origin simply gets no CORS headers.
        let mut r = StatusCode::NO_CONTENT.into_response();
        if let Some(o) = &origin {
            let h = r.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
            set(
                h,
                header::ACCESS_CONTROL_ALLOW_METHODS,
                &cors.allowed_methods.join(", "),
            );
            set(
                h,
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                &cors.allowed_headers.join(", "),
            );
            set(
                h,
                header::ACCESS_CONTROL_MAX_AGE,
                &cors.max_age_secs.to_string(),
            );
            if cors.allow_credentials {
                set(h, header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
            }
        }
        r
    } else {
        let mut r = next.run(req).await;
        if let Some(o) = &origin {
            let h = r.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
            set(h, header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
            if cors.allow_credentials {
                set(h, header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
            }
        }
        r
    };
    let h = res.headers_mut();
    if has_origin && !cors.allowed_origins.is_empty() {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    let sec = &state.config.security;
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    set(h, header::REFERRER_POLICY, &sec.referrer_policy);
    set(h, header::X_FRAME_OPTIONS, &sec.frame_options);
    if over_tls && sec.hsts_max_age_secs > 0 {
        set(
            h,
            header::STRICT_TRANSPORT_SECURITY,
            &format!("max-age={}; includeSubDomains", sec.hsts_max_age_secs),
        );
    }
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        set(
            h,
            header::CONTENT_SECURITY_POLICY,
            &sec.content_security_policy,
        );
    }
    res
}
