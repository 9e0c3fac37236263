//! `/v1/yjs/{collection}/{recordId}/{field}`: a collaborative document over the
//! y-websocket protocol (a WebSocket upgrade; the stock `WebsocketProvider` connects
//! with server URL `ws://HOST/v1/yjs` and the room name `{collection}/{id}/{field}`),
//! its state as JSON or as one binary Yjs update (`GET`), and binary updates applied
//! over plain HTTP (`POST`). The record's view rule admits readers and its update rule
//! writers; a reader's updates are refused and never applied.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Map;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::{Caller, permit};
use crate::error::ApiError;
use crate::http::openapi::ProblemDoc;
use crate::records::service;
use crate::schema::Action;
use crate::schema::kinds::FieldType;
use crate::state::AppState;
use crate::yjs::{self, DocKey, Peer, YjsError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(open_doc, post_update))
}

impl From<YjsError> for ApiError {
    fn from(e: YjsError) -> Self {
        match e {
            YjsError::InvalidUpdate(why) => ApiError::bad_request(
                "invalid_update",
                format!("The body is not a Yjs update (lib0 v1 encoding): {why}"),
            ),
            YjsError::Unavailable => ApiError::unavailable(
                "document_unavailable",
                "The document could not be opened just now; retry.",
                1,
            ),
            YjsError::Store(e) => ApiError::from(e),
        }
    }
}

#[derive(Debug, Deserialize)]
struct DocQuery {
    token: Option<String>,
    format: Option<String>,
}

/// The document a path names, if the caller may view it, and whether it may write.
async fn authorize(
    state: &AppState,
    caller: &Caller,
    collection: &str,
    id: &str,
    field: &str,
) -> Result<(DocKey, bool), ApiError> {
    let coll = service::collection(state, collection)?;
    let Some(spec) = coll.field(field).filter(|f| f.field_type == FieldType::Yjs) else {
        return Err(ApiError::not_found(format!(
            "Collection '{collection}' has no yjs field '{field}'."
        )));
    };
    // A hidden field is for superusers only; a protected one is written by them only.
    if spec.hidden && !caller.is_superuser() {
        return Err(ApiError::not_found(format!(
            "Collection '{collection}' has no yjs field '{field}'."
        )));
    }
    let protected = spec.protected && !caller.is_superuser();
    let record = service::get_visible(state, caller, &coll, id).await?;
    let now = state.clock.now();
    let body = Map::new();
    let writer = !protected
        && caller.scope_allows(coll.name(), Action::Update)
        && permit::write(
            caller,
            &coll,
            Action::Update,
            record.record(),
            Some(&body),
            &now,
        )
        .is_ok();
    Ok((
        DocKey {
            collection: coll.name().to_owned(),
            record: id.to_owned(),
            field: field.to_owned(),
        },
        writer,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/yjs/{collection}/{recordId}/{field}",
    tag = "yjs",
    summary = "A collaborative document: y-websocket, or its state",
    description = "With `Upgrade: websocket`: the y-websocket protocol (sync steps 1 and 2, updates, awareness) in binary messages of at most 1 MiB; readers (view rule) receive, writers (update rule) also edit; a reader's updates are dropped. Ping frames every heartbeat; the socket closes when the caller's session ends. Without it: the document's JSON (each root by name), or with `?format=update` its whole state as one binary Yjs update (lib0 v1). `?token=` takes a realtime token (POST /v1/realtime/token).",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("recordId" = String, Path, description = "Record id"),
        ("field" = String, Path, description = "A yjs field"),
        ("format" = Option<String>, Query, description = "`update` for the binary state"),
        ("token" = Option<String>, Query, description = "A realtime token"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 200, description = "The document's JSON, or `application/octet-stream` with `?format=update`", body = serde_json::Value),
        (status = 400, description = "An unknown format", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "A bad realtime token", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such collection, yjs field, or record the caller may view", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn open_doc(
    State(state): State<AppState>,
    Path((collection, id, field)): Path<(String, String, String)>,
    Query(q): Query<DocQuery>,
    caller: Caller,
    req: Request,
) -> Result<Response, ApiError> {
    let caller = crate::auth::caller::connection_caller(&state, caller, q.token.as_deref()).await?;
    let (key, writer) = authorize(&state, &caller, &collection, &id, &field).await?;
    let (mut parts, _) = req.into_parts();
    if parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    {
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_upgrade", e.body_text()))?;
        // A document connection counts against the realtime connection limits.
        let (client, _events, _slow) = crate::realtime::connect(&state, caller.clone(), None)?;
        let registered = Registered {
            state: state.clone(),
            client,
        };
        let (peer, rx) = yjs::join(&state, &key, writer, Some(caller.event_actor())).await?;
        let conn = Conn {
            state,
            caller,
            key,
            writer,
            _registered: registered,
        };
        return Ok(upgrade
            .max_message_size(yjs::MAX_MESSAGE)
            .max_frame_size(yjs::MAX_MESSAGE)
            // Small buffers: thousands of mostly idle sockets (128 KiB each by default).
            .read_buffer_size(8 * 1024)
            .write_buffer_size(8 * 1024)
            .on_upgrade(move |socket| run(socket, conn, peer, rx)));
    }
    let (update, json) = yjs::state(&state, &key).await?;
    let mut res = match q.format.as_deref() {
        None | Some("json") => axum::Json(json).into_response(),
        Some("update") => {
            let mut res = update.into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            res
        }
        Some(other) => {
            return Err(ApiError::field(
                "format",
                "invalid_choice",
                format!("'{other}' is not a format: json or update"),
            ));
        }
    };
    crate::http::no_store(&mut res);
    Ok(res)
}

#[utoipa::path(
    post,
    path = "/v1/yjs/{collection}/{recordId}/{field}",
    tag = "yjs",
    summary = "Apply a binary Yjs update",
    description = "The body (`application/octet-stream`, at most 1 MiB) is one Yjs update (lib0 v1), as `Y.encodeStateAsUpdate` makes; it is stored, then sent to the connected peers. Needs the record's update rule.",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("recordId" = String, Path, description = "Record id"),
        ("field" = String, Path, description = "A yjs field"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Applied and stored"),
        (status = 400, description = "Not a Yjs update", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The update rule refuses the caller", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such collection, yjs field, or record the caller may view", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Over 1 MiB", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn post_update(
    State(state): State<AppState>,
    Path((collection, id, field)): Path<(String, String, String)>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (key, writer) = authorize(&state, &caller, &collection, &id, &field).await?;
    if !writer {
        return Err(ApiError::forbidden(
            "forbidden",
            "The update rule does not admit this caller.",
        ));
    }
    if body.len() > yjs::MAX_MESSAGE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("An update is at most {} bytes.", yjs::MAX_MESSAGE),
        ));
    }
    yjs::apply(&state, &key, body.to_vec(), Some(caller.event_actor())).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Leaves the realtime hub (where the connection is counted) when it ends.
struct Registered {
    state: AppState,
    client: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        crate::realtime::disconnect(&self.state, &self.client);
    }
}

/// What a document connection knows of itself.
struct Conn {
    state: AppState,
    caller: Caller,
    key: DocKey,
    writer: bool,
    _registered: Registered,
}

/// One y-websocket connection: binary frames to the room and back, pings, and at
/// each heartbeat the caller's session and the record's rules checked again (a
/// caller who may no longer view is closed; one who may no longer write reads on).
async fn run(
    socket: WebSocket,
    conn: Conn,
    peer: Peer,
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) {
    use futures_util::{SinkExt, StreamExt};
    let Conn {
        state,
        mut caller,
        key,
        mut writer,
        _registered,
    } = conn;
    let (mut sink, mut incoming) = socket.split();
    let beat = Duration::from_secs(state.config.realtime.heartbeat_secs.max(1));
    let answered = AtomicBool::new(true);
    let reader = async {
        while let Some(Ok(msg)) = incoming.next().await {
            match msg {
                Message::Binary(b) => {
                    if !peer.frame(b.to_vec()).await {
                        break;
                    }
                }
                Message::Pong(_) => answered.store(true, Ordering::SeqCst),
                Message::Text(_) | Message::Ping(_) => {}
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
                frame = rx.recv() => {
                    // None: dropped for being slow, or the room closed (restart,
                    // deleted record); the client reconnects and syncs again.
                    let Some(frame) = frame else { break };
                    if !crate::http::ws::send_queued(&mut sink, frame, &mut rx, Message::Binary).await {
                        break;
                    }
                }
                _ = tick.tick() => {
                    if !answered.swap(false, Ordering::SeqCst)
                        || !crate::auth::purpose::still_stands(&state, &caller).await
                    {
                        break;
                    }
                    // The account as it is now (a role in its fields may have changed).
                    if let Some((col, id)) = caller.account() {
                        match crate::auth::accounts::load_principal(&state, col, id).await {
                            Ok(Some(p)) => caller.principal = p,
                            Ok(None) => break,
                            Err(_) => {}
                        }
                    }
                    match authorize(&state, &caller, &key.collection, &key.record, &key.field).await {
                        Ok((_, now_writer)) => {
                            if now_writer != writer {
                                writer = now_writer;
                                peer.set_writer(writer).await;
                            }
                        }
                        Err(e) if e.status.is_client_error() => break,
                        // A store error: the next beat asks again.
                        Err(_) => {}
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
    }
    drop(peer);
}
