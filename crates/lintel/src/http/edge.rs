//! The HTTP edge, as middleware: request ids and trace context, the API version in the
//! path or the `Api-Version` header, problem+json for every error (including the ones
//! axum produces itself), request time limits, access logs and request metrics.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::error::{ApiError, PROBLEM_JSON, Problem, code_for_status, render_problem};
use crate::state::AppState;

pub const API_VERSION: &str = "1";
pub const SUPPORTED_VERSIONS: [&str; 1] = ["1"];
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static API_VERSION_HEADER: HeaderName = HeaderName::from_static("api-version");

pub use crate::telemetry::CURRENT_REQUEST_ID;

/// The request id of the request being handled, in its extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// A client-supplied id is kept when it is a sane token.
fn sane_request_id(v: &str) -> bool {
    (8..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// `00-<trace id>-<parent id>-<flags>`; returns the trace id when well-formed.
fn trace_id(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    match parts.as_slice() {
        [ver, trace, parent, flags]
            if hex(ver, 2)
                && *ver != "ff"
                && hex(trace, 32)
                && hex(parent, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && parent.bytes().any(|b| b != b'0') =>
        {
            Some(trace)
        }
        _ => None,
    }
}

/// Outermost: gives every request an id and a span, and renders every error as a
/// problem carrying that id.
pub async fn edge(mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(crate::ids::request_id);
    let trace = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id)
        .unwrap_or("")
        .to_owned();
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let span = tracing::info_span!("request", request_id = %request_id, trace_id = %trace);
    let mut res = CURRENT_REQUEST_ID
        .scope(request_id.clone(), next.run(req).instrument(span.clone()))
        .await;

    if let Some(problem) = res.extensions_mut().remove::<Problem>() {
        let body = render_problem(&problem, &request_id);
        set_body(&mut res, body);
    } else if res.status().is_client_error() || res.status().is_server_error() {
        let is_problem = res
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
        if !is_problem {
            res = problemize(res, &request_id).instrument(span).await;
        }
    }
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    headers.insert(
        API_VERSION_HEADER.clone(),
        HeaderValue::from_static(API_VERSION),
    );
    res
}

fn set_body(res: &mut Response, body: Vec<u8>) {
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *res.body_mut() = Body::from(body);
}

/// Turns an error response produced outside Lintel's handlers (axum's rejections, the
/// router's 405) into a problem. The original text is kept as the detail for client
/// errors only; server errors get a generic detail.
async fn problemize(res: Response, request_id: &str) -> Response {
    let (mut parts, body) = res.into_parts();
    let status = parts.status;
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let detail = if status.is_server_error() {
        tracing::error!(status = status.as_u16(), body = %text, "error response from a layer");
        "The server failed to handle the request; the request id identifies it in the logs."
            .to_owned()
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        let allow = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        format!("This method is not allowed on this resource. Allowed: {allow}.")
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("Error").to_owned()
    } else {
        text.chars().take(500).collect()
    };
    let err = ApiError::new(status, code_for_status(status), detail);
    let body = render_problem(&err.problem(), request_id);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut res = Response::from_parts(parts, Body::empty());
    set_body(&mut res, body);
    res
}

/// Before routing: `/v1/...` passes; an unprefixed path is served by the version in
/// `Api-Version` (default: the current one); unknown versions get 400.
pub async fn version(mut req: Request, next: Next) -> Response {
    let header_version = req
        .headers()
        .get(&API_VERSION_HEADER)
        .map(|v| v.to_str().unwrap_or("?").trim().to_owned());
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/v") {
        let num = rest.split('/').next().unwrap_or("");
        if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) {
            if !SUPPORTED_VERSIONS.contains(&num) {
                return unsupported(num).into_response();
            }
            if let Some(h) = &header_version
                && h != num
            {
                return ApiError::bad_request(
                    "version_conflict",
                    format!("The path asks for version {num} but the Api-Version header for {h}."),
                )
                .into_response();
            }
            return next.run(req).await;
        }
    }
    if path == "/metrics" {
        return next.run(req).await;
    }
    if let Some(h) = &header_version
        && !SUPPORTED_VERSIONS.contains(&h.as_str())
    {
        return unsupported(h).into_response();
    }
    let rewritten = match req.uri().query() {
        Some(q) => format!("/v{API_VERSION}{path}?{q}"),
        None => format!("/v{API_VERSION}{path}"),
    };
    match rewritten.parse::<Uri>() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => {
            return ApiError::bad_request("invalid_uri", "The request path is not valid.")
                .into_response();
        }
    }
    next.run(req).await
}

fn unsupported(v: &str) -> ApiError {
    ApiError::bad_request(
        "unsupported_version",
        format!(
            "API version '{}' is not supported; supported: {}.",
            v.chars().take(16).collect::<String>(),
            SUPPORTED_VERSIONS.join(", ")
        ),
    )
    .with_extra("supportedVersions", SUPPORTED_VERSIONS.to_vec().into())
}

/// Inside the router: the request time limit, the access log line and the metrics,
/// labelled by route template.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let in_flight = state
        .metrics
        .scoped(|| metrics::gauge!("lintel_http_requests_in_flight"));
    in_flight.increment(1.0);
    let limit = Duration::from_millis(state.config.http.request_timeout_ms);
    let (req, verdict) = crate::http::ratelimit::check(&state, req).await;
    let crate::http::ratelimit::Verdict {
        refused,
        delay,
        headers: limit_headers,
    } = verdict;
    let run = async {
        if let Some(refused) = refused {
            return refused;
        }
        if !delay.is_zero() {
            // The leaky bucket's queue: the request waits for its slot.
            tokio::time::sleep(delay).await;
        }
        next.run(req).await
    };
    // An import's upload takes as long as the client needs to send it (its size is
    // capped by jobs.import_max_bytes, and the connection's own idle timeouts apply).
    let limit = if route == "/v1/collections/{name}/import" {
        Duration::from_secs(24 * 3600)
    } else {
        limit
    };
    let mut res = match tokio::time::timeout(limit, run).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!(timeout_ms = limit.as_millis() as u64, "request timed out");
            ApiError::unavailable(
                "request_timeout",
                "The request took too long and was stopped.",
                1,
            )
            .into_response()
        }
    };
    in_flight.decrement(1.0);
    // Room for the headers the outer layers add (rate limit, security, request id),
    // so the map grows at most once here instead of header by header.
    res.headers_mut().reserve(10);
    crate::http::ratelimit::apply_headers(limit_headers, &mut res);
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route.clone()),
        ("status", status.to_string()),
    ];
    state.metrics.scoped(|| {
        metrics::counter!("lintel_http_requests_total", &labels).increment(1);
        metrics::histogram!("lintel_http_request_duration_seconds", &labels)
            .record(elapsed.as_secs_f64());
    });
    tracing::info!(
        method = %method,
        route = %route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(sane_request_id("abc-123_XYZ.9"));
        assert!(!sane_request_id("short"));
        assert!(!sane_request_id("has space in it"));
        assert!(!sane_request_id(&"x".repeat(200)));
    }

    #[test]
    fn traceparents() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(t), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("garbage"), None);
    }
}
