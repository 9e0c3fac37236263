//! `Idempotency-Key` on POST and PATCH. The first request with a key claims it and its
//! response is stored; the same key with the same request replays that response (with
//! `Idempotent-Replayed: true`) without running the handler again; the same key with a
//! different request gets 422; a duplicate that arrives while the first is still
//! running gets 409. Keys are scoped to the resolved caller (its session, API key,
//! service or the admin token; anonymous callers by address), which is checked before
//! anything is replayed, and expire after `idempotency.ttl_secs`. Responses that say
//! "try again" (5xx, 409, 429) are not stored: the key is released so a retry can run.
//! Routes under `/v1/auth/` issue tokens, secrets and sessions: a stored copy would be
//! a second credential, so the header is ignored there.

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::access::{Caller, Principal, Via};
use crate::error::{ApiError, PROBLEM_JSON, Problem, render_problem};
use crate::http::edge::RequestId;
use crate::state::AppState;
use crate::store::{IdempotencyClaim, StoredResponse};

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Response headers kept with a stored response.
const KEPT_HEADERS: [&str; 6] = [
    "content-type",
    "location",
    "etag",
    "last-modified",
    "cache-control",
    "link",
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::POST | Method::PATCH) {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(&IDEMPOTENCY_KEY) else {
        return next.run(req).await;
    };
    // Imports stream their body to disk (it may be far over the body limit); their
    // job is the record of what was asked.
    if req.uri().path().starts_with("/v1/auth/") || req.uri().path().ends_with("/import") {
        return next.run(req).await;
    }
    let key = match key.to_str() {
        Ok(k)
            if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x21..0x7f).contains(&b)) =>
        {
            k.to_owned()
        }
        _ => {
            return ApiError::field(
                "Idempotency-Key",
                "invalid",
                "must be 1 to 255 visible ASCII characters",
            )
            .into_response();
        }
    };
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();

    let (mut parts, body) = req.into_parts();
    // Who is calling is settled before anything is replayed: a bad credential gets its
    // 401, and a stored response is only ever given back to the same caller.
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let scope = hex(&Sha256::digest(caller_scope(&caller).as_bytes())[..16]);
    let bytes = match axum::body::to_bytes(body, state.config.http.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The request body is larger than the server accepts.",
            )
            .into_response();
        }
    };
    let fingerprint = {
        let mut h = Sha256::new();
        h.update(parts.method.as_str().as_bytes());
        h.update(b" ");
        h.update(parts.uri.path().as_bytes());
        h.update(b"?");
        h.update(parts.uri.query().unwrap_or("").as_bytes());
        h.update(b"\n");
        h.update(&bytes);
        hex(&h.finalize())
    };
    let cfg = &state.config.idempotency;
    let claim = state
        .store
        .idempotency_claim(
            scope.clone(),
            key.clone(),
            fingerprint,
            state.clock.now_ms(),
            (cfg.ttl_secs * 1000) as i64,
            (cfg.lock_secs * 1000) as i64,
        )
        .await;
    match claim {
        Err(e) => ApiError::from(e).into_response(),
        Ok(IdempotencyClaim::Mismatch) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
        )
        .into_response(),
        Ok(IdempotencyClaim::InFlight) => {
            let mut err = ApiError::conflict(
                "idempotency_in_flight",
                "A request with this Idempotency-Key is still being processed; retry later.",
            );
            err.retry_after = Some(1);
            err.into_response()
        }
        Ok(IdempotencyClaim::Replay(stored)) => replay(stored),
        Ok(IdempotencyClaim::Proceed { token }) => {
            // The request runs to completion in its own task, and the key is completed
            // or released there, even if this future is dropped (request time limit,
            // client gone): the key never stays claimed by a request that is gone.
            // Tracked (shutdown waits for it) and inside this request's span and id.
            let tasks = state.tasks.clone();
            let task = tasks.spawn(async move {
                let res = next
                    .run(Request::from_parts(parts, Body::from(bytes)))
                    .await;
                let (res, stored) = capture(res, &request_id).await;
                let status = res.status();
                let retryable = status.is_server_error()
                    || status == StatusCode::CONFLICT
                    || status == StatusCode::TOO_MANY_REQUESTS;
                let outcome = match stored {
                    Some(stored) if !retryable => {
                        state
                            .store
                            .idempotency_complete(scope, key, token, stored)
                            .await
                    }
                    _ => state.store.idempotency_release(scope, key, token).await,
                };
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "could not record the idempotent response");
                }
                res
            });
            match task.await {
                Ok(res) => res,
                Err(e) => ApiError::internal(format!("idempotent request task failed: {e}"))
                    .into_response(),
            }
        }
    }
}

/// The scope idempotency keys live in: one per session, API key, service, the admin
/// token, and for anonymous callers their address.
fn caller_scope(caller: &Caller) -> String {
    match (&caller.via, &caller.principal) {
        (Via::AdminToken, _) => "admin".to_owned(),
        (Via::Token { session } | Via::Cookie { session }, _) => format!("session:{session}"),
        (Via::ApiKey { id, .. }, _) => format!("key:{id}"),
        (_, Principal::Service { name }) => format!("service:{name}"),
        _ => format!("anonymous:{}", caller.ip.as_deref().unwrap_or("")),
    }
}

/// Buffers the response so it can be stored; problem bodies are rendered here (with
/// this request's id) so the stored body is exactly what the client got.
async fn capture(res: Response, request_id: &str) -> (Response, Option<StoredResponse>) {
    let (mut parts, body) = res.into_parts();
    let bytes = if let Some(problem) = parts.extensions.remove::<Problem>() {
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        render_problem(&problem, request_id).into()
    } else {
        match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
            Ok(b) => b,
            Err(_) => {
                let err = ApiError::internal("response body could not be buffered");
                return (err.into_response(), None);
            }
        }
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let headers = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            parts
                .headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(|v| ((*name).to_owned(), v.to_owned()))
        })
        .collect();
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        headers,
        body: bytes.to_vec(),
    };
    (Response::from_parts(parts, Body::from(bytes)), Some(stored))
}

fn replay(stored: StoredResponse) -> Response {
    let mut res = Response::new(Body::from(stored.body));
    *res.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    for (k, v) in stored.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(k), HeaderValue::from_str(&v)) {
            res.headers_mut().insert(name, value);
        }
    }
    res.headers_mut()
        .insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    res
}
