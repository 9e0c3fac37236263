//! The `/v1/auth` endpoints: sign-in (tokens or a cookie session), refresh with
//! rotation, sign-out, the current account, its sessions, API keys, and the audit log.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::{Caller, Via};
use crate::auth::accounts::require_account;
use crate::auth::sessions::Rotation;
use crate::auth::{audit, tokens};
use crate::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::state::AppState;
use crate::store::{Sql, SqlValue};

use signin::{no_store, refresh_token};
pub mod apikeys;
pub mod mail;
pub mod mfa;
pub mod oidc;
pub mod signin;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signin::login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(me))
        .routes(routes!(list_sessions))
        .routes(routes!(revoke_session))
        .routes(routes!(apikeys::create_key, apikeys::list_keys))
        .routes(routes!(apikeys::revoke_key))
        .routes(routes!(list_audit))
        .routes(routes!(mfa::enroll))
        .routes(routes!(mfa::confirm))
        .routes(routes!(mfa::disable))
        .routes(routes!(mail::request_verification))
        .routes(routes!(mail::confirm_verification))
        .routes(routes!(mail::request_password_reset))
        .routes(routes!(mail::confirm_password_reset))
        .routes(routes!(mail::request_email_change))
        .routes(routes!(mail::confirm_email_change))
        .routes(routes!(oidc::start))
        .routes(routes!(oidc::callback))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    summary = "Exchange a refresh token for a new pair",
    description = "Each refresh token works once. Presenting a used one revokes its whole session (stolen-token detection).",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new access and refresh token", body = Value),
        (status = 401, description = "Unknown, expired, revoked or reused refresh token", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn refresh(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<RefreshRequest>,
) -> Result<Response, ApiError> {
    let now = state.clock.now_ms();
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
            "The refresh token is invalid, expired, revoked or already used.",
        )
    };
    let sid = req
        .refresh_token
        .split_once('.')
        .map(|(sid, _)| sid.to_owned())
        .unwrap_or_default();
    let new_refresh = refresh_token(&sid);
    let expires = now + state.config.auth.refresh_ttl_secs as i64 * 1000;
    let rotation = state
        .auth
        .sessions
        .rotate(
            &tokens::digest(&req.refresh_token),
            &tokens::digest(&new_refresh),
            now,
            expires,
        )
        .await
        .map_err(ApiError::from)?;
    let session = match rotation {
        Rotation::Rotated(s) if s.id == tokens::digest(&sid) => s,
        Rotation::Rotated(_) => return Err(invalid()),
        Rotation::Reused(s) => {
            audit::record(
                &state,
                audit::Event::new("refresh_token_reused", "revoked")
                    .collection(s.collection.clone())
                    .subject(s.user_id.clone())
                    .ip(caller.ip.clone())
                    .detail(json!({ "session": s.id })),
            );
            return Err(invalid());
        }
        Rotation::Invalid => {
            audit::record(
                &state,
                audit::Event::new("refresh_failed", "denied").ip(caller.ip.clone()),
            );
            return Err(invalid());
        }
    };
    let Some(principal) =
        crate::auth::accounts::load_principal(&state, &session.collection, &session.user_id)
            .await?
    else {
        return Err(invalid());
    };
    let user = principal.json();
    let access = state
        .auth
        .keys
        .issue(
            &session.collection,
            &session.user_id,
            &sid,
            state.clock.now_ms(),
        )
        .map_err(ApiError::internal)?;
    audit::record(
        &state,
        audit::Event::new("token_refreshed", "ok")
            .actor(format!("{}/{}", session.collection, session.user_id))
            .subject(session.user_id.clone())
            .ip(caller.ip.clone()),
    );
    let mut res = axum::Json(json!({
        "accessToken": access,
        "refreshToken": new_refresh,
        "tokenType": "Bearer",
        "expiresIn": state.auth.keys.access_ttl_secs,
        "user": user,
    }))
    .into_response();
    no_store(&mut res);
    Ok(res)
}

fn clear_cookies(res: &mut Response) {
    for c in crate::auth::cookies::session_cookies("", "", 0, false) {
        if let Ok(v) = HeaderValue::from_str(&c) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    summary = "End the current session (its access and refresh tokens, or its cookie)",
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn logout(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let Some(session) = caller.session() else {
        return Err(ApiError::unauthorized(
            "Sign out needs the session's access token or cookie.",
        ));
    };
    state
        .auth
        .sessions
        .revoke(session, state.clock.now_ms())
        .await
        .map_err(ApiError::from)?;
    audit::record(
        &state,
        audit::Event::new("logout", "ok")
            .actor(caller.actor())
            .ip(caller.ip.clone())
            .detail(json!({ "session": session })),
    );
    let mut res = StatusCode::NO_CONTENT.into_response();
    if matches!(caller.via, Via::Cookie { .. }) {
        clear_cookies(&mut res);
    }
    Ok(res)
}

#[utoipa::path(
    post,
    path = "/v1/auth/logout-all",
    tag = "auth",
    summary = "End every session of the account",
    responses(
        (status = 204, description = "All sessions ended"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn logout_all(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let (collection, id) = require_account(&caller)?;
    let n = state
        .auth
        .sessions
        .revoke_all(collection, id, state.clock.now_ms())
        .await
        .map_err(ApiError::from)?;
    audit::record(
        &state,
        audit::Event::new("logout_all", "ok")
            .actor(caller.actor())
            .collection(collection)
            .subject(id)
            .ip(caller.ip.clone())
            .detail(json!({ "sessions": n })),
    );
    let mut res = StatusCode::NO_CONTENT.into_response();
    if matches!(caller.via, Via::Cookie { .. }) {
        clear_cookies(&mut res);
    }
    Ok(res)
}

#[utoipa::path(
    get,
    path = "/v1/auth/me",
    tag = "auth",
    summary = "The signed-in account",
    responses(
        (status = 200, description = "`{user, via}`", body = Value),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn me(caller: Caller) -> Result<Response, ApiError> {
    if caller.is_anonymous() {
        return Err(ApiError::unauthorized(
            "Sign in first: this endpoint needs an account.",
        ));
    }
    let user = caller.principal.json();
    let via = match &caller.via {
        Via::Nothing => "none",
        Via::AdminToken => "admin_token",
        Via::Token { .. } => "token",
        Via::Cookie { .. } => "cookie",
        Via::ApiKey { .. } => "api_key",
        Via::ClientCert => "client_certificate",
    };
    let mut res = axum::Json(json!({ "user": user, "via": via })).into_response();
    no_store(&mut res);
    Ok(res)
}

fn ms(v: i64) -> Value {
    time::OffsetDateTime::from_unix_timestamp(v / 1000)
        .map(crate::clock::format_ts)
        .map_or(Value::Null, Value::String)
}

#[utoipa::path(
    get,
    path = "/v1/auth/sessions",
    tag = "auth",
    summary = "The account's active sessions",
    responses(
        (status = 200, description = "`{items: [{id, kind, created, lastSeen, expires, ip, userAgent, current}]}`", body = Value),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let (collection, id) = require_account(&caller)?;
    let list = state
        .auth
        .sessions
        .list(collection, id, state.clock.now_ms())
        .await
        .map_err(ApiError::from)?;
    let current = caller.session();
    let items: Vec<Value> = list
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "kind": s.kind,
                "created": ms(s.created),
                "lastSeen": ms(s.last_seen),
                "expires": ms(s.expires),
                "ip": s.ip,
                "userAgent": s.user_agent,
                "current": current == Some(s.id.as_str()),
            })
        })
        .collect();
    let mut res = axum::Json(json!({ "items": items })).into_response();
    no_store(&mut res);
    Ok(res)
}

#[utoipa::path(
    delete,
    path = "/v1/auth/sessions/{id}",
    tag = "auth",
    summary = "End one of the account's sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "No such active session of yours", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn revoke_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(session_id): Path<String>,
) -> Result<Response, ApiError> {
    let (collection, id) = require_account(&caller)?;
    let now = state.clock.now_ms();
    let found = state
        .auth
        .sessions
        .get(&session_id)
        .await
        .map_err(ApiError::from)?
        .filter(|s| s.active(now) && s.collection == collection && s.user_id == id);
    if found.is_none() {
        return Err(ApiError::not_found(
            "No active session of yours has that id.",
        ));
    }
    state
        .auth
        .sessions
        .revoke(&session_id, now)
        .await
        .map_err(ApiError::from)?;
    audit::record(
        &state,
        audit::Event::new("session_revoked", "ok")
            .actor(caller.actor())
            .subject(id)
            .ip(caller.ip.clone())
            .detail(json!({ "session": session_id })),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "auth",
    summary = "Read the audit log (superusers)",
    params(
        ("event" = Option<String>, Query, description = "Only this event"),
        ("subject" = Option<String>, Query, description = "Only this subject (an account id)"),
        ("before" = Option<String>, Query, description = "Entries older than this entry id (paging)"),
        ("limit" = Option<u32>, Query, description = "At most this many (default 100, max 1000)"),
    ),
    responses(
        (status = 200, description = "`{items: [...]}`, newest first", body = Value),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a superuser", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn list_audit(
    State(state): State<AppState>,
    _: crate::http::extract::Admin,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut params: Map<String, Value> = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        params.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    let get = |k: &str| params.get(k).and_then(Value::as_str);
    let limit = match get("limit") {
        None => 100,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "limit",
                    "invalid",
                    "a whole number from 1 to 1000",
                ));
            }
        },
    };
    let mut sql = Sql::new(state.store.dialect());
    sql.push("SELECT id, at, event, outcome, actor, collection, subject, ip, request_id, detail FROM _lintel_audit WHERE 1 = 1");
    if let Some(e) = get("event") {
        sql.push(" AND event = ").bind(SqlValue::Text(e.to_owned()));
    }
    if let Some(s) = get("subject") {
        sql.push(" AND subject = ")
            .bind(SqlValue::Text(s.to_owned()));
    }
    if let Some(b) = get("before") {
        sql.push(" AND id < ").bind(SqlValue::Text(b.to_owned()));
    }
    sql.push(" ORDER BY id DESC LIMIT ")
        .bind(SqlValue::Int(limit));
    let rows = state.store.query_rows(sql).await.map_err(ApiError::from)?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let at = |i: usize| r.get(i).cloned().unwrap_or(Value::Null);
            json!({
                "id": at(0),
                "at": at(1).as_i64().map_or(Value::Null, ms),
                "event": at(2),
                "outcome": at(3),
                "actor": at(4),
                "collection": at(5),
                "subject": at(6),
                "ip": at(7),
                "requestId": at(8),
                "detail": at(9).as_str().and_then(|s| serde_json::from_str::<Value>(s).ok()).unwrap_or(Value::Null),
            })
        })
        .collect();
    let mut res = axum::Json(json!({ "items": items })).into_response();
    no_store(&mut res);
    Ok(res)
}
