//! The rate limiter at the edge: counts each request (run by the `observe`
//! middleware, so the limiter adds no layer of its own), answers 429 with
//! `Retry-After`, and adds the `RateLimit-Policy` and `RateLimit` headers. The rules,
//! counters and algorithms are `crate::ratelimit`'s.

use std::time::Duration;

use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::access::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// What the limiter decided for a request.
pub struct Verdict {
    /// A 429 to answer instead of running the request.
    pub refused: Option<Response>,
    /// The leaky bucket's wait before the request runs.
    pub delay: Duration,
    /// `RateLimit-Policy` and `RateLimit` for the response.
    pub headers: Option<(HeaderValue, HeaderValue)>,
}

/// Adds `RateLimit-Policy` and `RateLimit` to a response.
pub fn apply_headers(headers: Option<(HeaderValue, HeaderValue)>, res: &mut Response) {
    if let Some((policy, state)) = headers {
        let h = res.headers_mut();
        h.insert("ratelimit-policy", policy);
        h.insert("ratelimit", state);
    }
}

/// Counts the request under every matching rule.
pub async fn check(state: &AppState, req: Request) -> (Request, Verdict) {
    let none = Verdict {
        refused: None,
        delay: Duration::ZERO,
        headers: None,
    };
    let Some(limiter) = state.limiter.as_ref() else {
        return (req, none);
    };
    let method = req.method().clone();
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| crate::http::client_ip::resolve(c.0.ip(), req.headers(), &state.trusted_proxies));
    // The caller only when a rule counts by account or key; a bad credential counts
    // by address (the handler answers it).
    let mut req = req;
    let caller = if limiter.needs_caller(method.as_str(), req.uri().path()) {
        let (mut parts, body) = req.into_parts();
        let c = Caller::from_request_parts(&mut parts, state).await.ok();
        req = Request::from_parts(parts, body);
        c
    } else {
        None
    };
    let Some(counted) = limiter.count(method.as_str(), req.uri().path(), ip, caller.as_ref())
    else {
        return (req, none);
    };
    let refused = counted.refused_secs.map(|secs| {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Too many requests; retry in {secs} s."),
        );
        err.retry_after = Some(secs);
        err.into_response()
    });
    (
        req,
        Verdict {
            refused,
            delay: counted.delay,
            headers: counted.headers,
        },
    )
}
