//! `/v1/realtime`: the server-sent events stream (`GET`) and setting its subscriptions
//! (`POST`). The caller is whoever the request authenticates as; a stream whose
//! session ends (sign-out, revocation, expiry) is closed at the next heartbeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Caller;
use crate::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::realtime::{self as rt_, Out, RealtimeError};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream, set_subscriptions))
}

impl From<RealtimeError> for ApiError {
    fn from(e: RealtimeError) -> Self {
        match e {
            RealtimeError::Invalid(errors) => ApiError::validation(errors),
            RealtimeError::UnknownClient => ApiError::not_found("No realtime client with that id."),
            RealtimeError::Forbidden(why) => ApiError::forbidden("forbidden", why),
            RealtimeError::TooMany(why) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", why)
            }
            RealtimeError::Store(e) => ApiError::from(e),
        }
    }
}

/// The stream's state between items.
struct Streaming {
    state: AppState,
    id: String,
    rx: mpsc::Receiver<Out>,
    slow: Arc<AtomicBool>,
    caller: Caller,
    check: tokio::time::Interval,
    first: Option<Event>,
    ended: bool,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        rt_::disconnect(&self.state, &self.id);
    }
}

/// Whether the caller's session (if it has one) still stands.
async fn session_alive(state: &AppState, caller: &Caller) -> bool {
    let Some(id) = caller.session() else {
        return true;
    };
    let now = state.clock.now_ms();
    matches!(state.auth.sessions.get(id).await, Ok(Some(s)) if s.active(now))
}

fn problem_event(code: &str, detail: &str) -> Event {
    Event::default()
        .event("error")
        .data(json!({ "code": code, "detail": detail }).to_string())
}

#[utoipa::path(
    get,
    path = "/v1/realtime",
    tag = "realtime",
    summary = "Open a server-sent events stream of record changes",
    description = "The first event is `connect` with `{clientId}`; set subscriptions with POST /v1/realtime. Events: `id: <seq>`, `event: <subscription as written>`, `data: {action, collection, record}`. `Last-Event-ID` resumes after that event once the subscriptions are set again. A heartbeat comment every 15 s; a client that falls behind gets an `error` event `too_slow` and is closed.",
    responses(
        (status = 200, description = "text/event-stream"),
        (status = 429, description = "Too many connections for this account or address", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last_event = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let (id, rx, slow) = rt_::connect(&state, caller.clone(), last_event)?;
    let beat = Duration::from_secs(state.config.realtime.heartbeat_secs.max(1));
    let mut check = tokio::time::interval(beat);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = Event::default()
        .event("connect")
        .data(json!({ "clientId": id }).to_string());
    let s = Streaming {
        state,
        id,
        rx,
        slow,
        caller,
        check,
        first: Some(first),
        ended: false,
    };
    let events = futures_util::stream::unfold(s, |mut s| async move {
        if let Some(e) = s.first.take() {
            return Some((Ok::<_, std::convert::Infallible>(e), s));
        }
        if s.ended {
            return None;
        }
        loop {
            tokio::select! {
                msg = s.rx.recv() => {
                    let e = match msg {
                        Some(Out::Event { seq, topic, data }) => Event::default()
                            .id(seq.to_string())
                            .event(topic)
                            .data(data.to_string()),
                        Some(Out::Reset { seq }) => Event::default()
                            .id(seq.to_string())
                            .event("reset")
                            .data(json!({ "seq": seq, "detail": "the events after Last-Event-ID are past retention: reload, then go on from here" }).to_string()),
                        None => {
                            s.ended = true;
                            if s.slow.load(Ordering::SeqCst) {
                                problem_event("too_slow", "the client fell behind and was dropped; reconnect with Last-Event-ID")
                            } else {
                                return None;
                            }
                        }
                    };
                    return Some((Ok(e), s));
                }
                _ = s.check.tick() => {
                    if !session_alive(&s.state, &s.caller).await {
                        s.ended = true;
                        return Some((Ok(problem_event("session_ended", "the caller's session ended")), s));
                    }
                }
            }
        }
    });
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(beat))
        .into_response();
    crate::http::no_store(&mut res);
    Ok(res)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubscriptionsInput {
    client_id: String,
    #[serde(default)]
    subscriptions: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/v1/realtime",
    tag = "realtime",
    summary = "Set a stream's subscriptions (replacing them)",
    description = "Topics: `posts`, `posts/RECORD_ID`, `posts?filter=...`. Answers once they are live (after the replay of a resumed stream).",
    request_body = serde_json::Value,
    responses(
        (status = 200, description = "`{clientId, subscriptions}`", body = serde_json::Value),
        (status = 400, description = "A bad topic or filter, or too many", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Another caller's client, or a list rule that admits nothing for this caller", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such client", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn set_subscriptions(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(input): JsonBody<SubscriptionsInput>,
) -> Result<Response, ApiError> {
    let subs = rt_::subscribe(&state, &caller, &input.client_id, &input.subscriptions).await?;
    Ok(axum::Json(json!({ "clientId": input.client_id, "subscriptions": subs })).into_response())
}
