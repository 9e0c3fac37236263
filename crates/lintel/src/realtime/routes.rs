//! `/v1/realtime`: the server-sent events stream (`GET`) and setting its subscriptions
//! (`POST`), the WebSocket protocol (`/v1/realtime/ws`), and realtime tokens
//! (`POST /v1/realtime/token`) for browsers, which cannot set headers on EventSource or
//! WebSocket. The caller is whoever the request authenticates as, or the one a
//! realtime token (`?token=`) stands for; a stream whose session ends (sign-out,
//! revocation, expiry) or whose API key is revoked is closed at the next heartbeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Caller;
use crate::auth::tokens::REALTIME_AUDIENCE;
use crate::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::realtime::{self as rt_, Out, RealtimeError};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stream, set_subscriptions))
        .routes(routes!(realtime_token))
        .routes(routes!(ws))
}

/// Seconds a realtime token may be used to open a connection.
pub const TOKEN_TTL_SECS: u64 = 60;

/// Most bytes of one WebSocket message from a client.
const WS_MAX_MESSAGE: usize = 64 * 1024;

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
    params(("token" = Option<String>, Query, description = "A realtime token (POST /v1/realtime/token), for browsers' EventSource")),
    responses(
        (status = 200, description = "text/event-stream"),
        (status = 401, description = "A bad realtime token", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "Too many connections for this account or address", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<crate::auth::caller::TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = crate::auth::caller::connection_caller(&state, caller, q.token.as_deref()).await?;
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
                            .data(&*data),
                        Some(Out::Reset { seq, .. }) => Event::default()
                            .id(seq.to_string())
                            .event("reset")
                            .data(json!({ "seq": seq, "detail": "the events after Last-Event-ID are past retention: reload, then go on from here" }).to_string()),
                        // WebSocket protocol messages: none are queued for a stream.
                        Some(Out::Message(_)) => continue,
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
                    if !crate::auth::purpose::still_stands(&s.state, &s.caller).await {
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

#[utoipa::path(
    post,
    path = "/v1/realtime/token",
    tag = "realtime",
    summary = "A short-lived token that opens realtime and Yjs connections as the caller",
    description = "For signed-in callers (bearer token or session cookie) and the admin token; an API key is refused (send the key itself). Pass it as `?token=` on GET /v1/realtime, /v1/realtime/ws and /v1/yjs/...; it opens connections for 60 s and stands for its session, so a connection ends when the session does. It is never an access token.",
    responses(
        (status = 200, description = "`{token, expiresIn}`", body = serde_json::Value),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "An API key", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn realtime_token(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    crate::auth::caller::purpose_token(
        &state,
        &caller,
        REALTIME_AUDIENCE,
        TOKEN_TTL_SECS,
        "realtime token",
    )
}

/// Leaves the hub when the connection ends, or when the upgrade never happens.
struct Registered {
    state: AppState,
    id: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        rt_::disconnect(&self.state, &self.id);
    }
}

#[utoipa::path(
    get,
    path = "/v1/realtime/ws",
    tag = "realtime",
    summary = "Subscriptions over a WebSocket",
    description = "Client messages: `{\"type\": \"subscribe\", \"id\", \"topic\", \"filter\"?, \"after\"?}` and `{\"type\": \"unsubscribe\", \"id\"}`. Server messages: `{\"type\": \"subscribed\", \"id\"}` once live (after replaying the events after `after`), `{\"type\": \"event\", \"subscription\", \"seq\", \"action\", \"collection\", \"record\"}`, `{\"type\": \"reset\", \"seq\", \"subscriptions\"}` when `after` is past retention, and `{\"type\": \"error\", \"id\"?, \"problem\"}`. Ping frames every heartbeat; a client that answers none for two is closed, as is one that falls behind (`too_slow`) or whose session ends (`session_ended`). Messages are at most 64 KiB.",
    params(("token" = Option<String>, Query, description = "A realtime token (POST /v1/realtime/token)")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 401, description = "A bad realtime token", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "Too many connections for this account or address", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn ws(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<crate::auth::caller::TokenQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let caller = crate::auth::caller::connection_caller(&state, caller, q.token.as_deref()).await?;
    let (id, rx, slow) = rt_::connect(&state, caller.clone(), None)?;
    let registered = Registered {
        state: state.clone(),
        id,
    };
    Ok(upgrade
        .max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
        // Small buffers: thousands of mostly idle sockets (128 KiB each by default).
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| run_ws(socket, registered, caller, rx, slow)))
}

/// A WebSocket protocol error message.
fn ws_error(id: Option<&str>, err: ApiError) -> serde_json::Value {
    let problem = serde_json::to_value(err.problem()).unwrap_or_default();
    match id {
        Some(id) => json!({"type": "error", "id": id, "problem": problem}),
        None => json!({"type": "error", "problem": problem}),
    }
}

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        id: String,
        topic: String,
        #[serde(default)]
        filter: Option<String>,
        #[serde(default)]
        after: Option<i64>,
    },
    Unsubscribe {
        id: String,
    },
}

/// Handles one text message from the client; answers go through its queue, in order
/// with its events.
async fn ws_message(state: &AppState, caller: &Caller, client: &str, text: &str) {
    let msg = match serde_json::from_str::<ClientMessage>(text) {
        Ok(m) => m,
        Err(e) => {
            let id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned));
            let err = ApiError::bad_request(
                "invalid_message",
                format!("not a subscribe or unsubscribe message: {e}"),
            );
            rt_::message(state, client, ws_error(id.as_deref(), err));
            return;
        }
    };
    match msg {
        ClientMessage::Subscribe {
            id,
            topic,
            filter,
            after,
        } => {
            let done =
                rt_::subscribe_one(state, caller, client, &id, &topic, filter.as_deref(), after)
                    .await;
            if let Err(e) = done {
                if matches!(e, RealtimeError::UnknownClient) {
                    return;
                }
                rt_::message(state, client, ws_error(Some(&id), ApiError::from(e)));
            }
        }
        ClientMessage::Unsubscribe { id } => {
            let msg = if rt_::unsubscribe_one(state, client, &id) {
                json!({"type": "unsubscribed", "id": id})
            } else {
                ws_error(
                    Some(&id),
                    ApiError::not_found("No subscription with that id."),
                )
            };
            rt_::message(state, client, msg);
        }
    }
}

/// The text frame of a queued message. An event's shared rendering is spliced in
/// after the frame's own members, not parsed again.
fn ws_frame(out: Out) -> String {
    match out {
        Out::Event { seq, topic, data } => {
            let head = json!({"type": "event", "subscription": topic, "seq": seq}).to_string();
            let mut frame = String::with_capacity(head.len() + data.len());
            frame.push_str(&head[..head.len() - 1]);
            match data.strip_prefix('{') {
                Some(rest) if rest.len() > 1 => {
                    frame.push(',');
                    frame.push_str(rest);
                }
                _ => frame.push('}'),
            }
            frame
        }
        Out::Reset { seq, ids } => json!({
            "type": "reset", "seq": seq, "subscriptions": ids,
            "detail": "the events after `after` are past retention: reload; events go on from seq",
        })
        .to_string(),
        Out::Message(v) => v.to_string(),
    }
}

async fn run_ws(
    socket: WebSocket,
    registered: Registered,
    caller: Caller,
    mut rx: mpsc::Receiver<Out>,
    slow: Arc<AtomicBool>,
) {
    use futures_util::{SinkExt, StreamExt};
    let state = registered.state.clone();
    let client = registered.id.clone();
    let (mut sink, mut incoming) = socket.split();
    let beat = Duration::from_secs(state.config.realtime.heartbeat_secs.max(1));
    // Pings answered since the last one was sent.
    let answered = AtomicBool::new(true);
    // Messages are handled in order, apart from reading: a long replay does not keep
    // the socket's pongs unread.
    let (texts, mut to_handle) = mpsc::channel::<axum::extract::ws::Utf8Bytes>(16);
    let handler = async {
        while let Some(t) = to_handle.recv().await {
            ws_message(&state, &caller, &client, t.as_str()).await;
        }
        std::future::pending::<()>().await;
    };
    let reader = async {
        while let Some(Ok(msg)) = incoming.next().await {
            match msg {
                Message::Text(t) => {
                    // A client may not pile up messages while one is being handled
                    // (a long replay): the reader never waits, so pongs are read.
                    match texts.try_send(t) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            let err = ApiError::new(
                                StatusCode::TOO_MANY_REQUESTS,
                                "too_many_messages",
                                "more than 16 messages waiting; wait for the answers",
                            );
                            rt_::message(&state, &client, ws_error(None, err));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
                Message::Binary(_) => {
                    let err = ApiError::bad_request("invalid_message", "messages are JSON text");
                    rt_::message(&state, &client, ws_error(None, err));
                }
                Message::Pong(_) => answered.store(true, Ordering::SeqCst),
                Message::Ping(_) => {}
                Message::Close(_) => break,
            }
        }
    };
    let writer = async {
        let mut tick = tokio::time::interval(beat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                out = rx.recv() => {
                    let Some(out) = out else {
                        if slow.load(Ordering::SeqCst) {
                            let err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_slow", "the client fell behind and was dropped; reconnect and subscribe with `after`");
                            let _ = sink.send(Message::Text(ws_error(None, err).to_string().into())).await;
                        }
                        break;
                    };
                    let text = |o: Out| Message::Text(ws_frame(o).into());
                    if !crate::http::ws::send_queued(&mut sink, out, &mut rx, text).await {
                        break;
                    }
                }
                _ = tick.tick() => {
                    if !answered.swap(false, Ordering::SeqCst) {
                        tracing::debug!(client = %client, "realtime: no pong; closing");
                        break;
                    }
                    if !crate::auth::purpose::still_stands(&state, &caller).await {
                        let err = ApiError::new(StatusCode::UNAUTHORIZED, "session_ended", "the caller's session ended");
                        let _ = sink.send(Message::Text(ws_error(None, err).to_string().into())).await;
                        break;
                    }
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
        _ = handler => {}
    }
    drop(registered);
}
