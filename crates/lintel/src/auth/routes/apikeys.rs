//! The HTTP handlers of `auth::apikeys` (with the edge).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::access::Caller;
use crate::auth::accounts::require_account;
use crate::auth::apikeys::*;
use crate::auth::{audit, tokens};
use crate::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::state::AppState;
use crate::store::{Sql, SqlValue, WriteError, WriteOp};

#[utoipa::path(
    post,
    path = "/v1/auth/api-keys",
    tag = "auth",
    summary = "Create an API key (shown once)",
    request_body = NewKey,
    responses(
        (status = 201, description = "The key, with its secret `key` (only in this response)", body = Value),
        (status = 400, description = "Invalid name, scopes or expiry", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<NewKey>,
) -> Result<Response, ApiError> {
    let (collection, user_id) = require_account(&caller)?;
    let expires = check(&state, &req, caller.is_superuser())?;
    let id = crate::ids::record_id();
    let secret = crate::ids::secret_token();
    let key = format!("{PREFIX}{id}_{secret}");
    let now = state.clock.now_ms();
    let scopes = serde_json::to_string(&req.scopes).map_err(ApiError::internal)?;
    let mut sql = Sql::new(state.store.dialect());
    sql.push("INSERT INTO _lintel_api_keys (id, name, key_hash, collection, user_id, scopes, created, expires) VALUES (");
    let values = [
        SqlValue::Text(id.clone()),
        SqlValue::Text(req.name.trim().to_owned()),
        SqlValue::Text(tokens::digest(&secret)),
        SqlValue::Text(collection.to_owned()),
        SqlValue::Text(user_id.to_owned()),
        SqlValue::Text(scopes),
        SqlValue::Int(now),
        expires.map_or(SqlValue::Null, SqlValue::Int),
    ];
    sql.bind_all(values);
    sql.push(")");
    state
        .store
        .write(vec![WriteOp::System {
            sql,
            expect: Some(1),
        }])
        .await
        .map_err(|WriteError { error, .. }| ApiError::from(error))?;
    audit::record(
        &state,
        audit::Event::new("api_key_created", "ok")
            .actor(caller.actor())
            .subject(id.clone())
            .ip(caller.ip.clone())
            .detail(json!({ "scopes": req.scopes })),
    );
    let body = json!({
        "id": id,
        "name": req.name.trim(),
        "scopes": req.scopes,
        "created": ms_to_rfc3339(now),
        "expiresAt": expires.map_or(Value::Null, ms_to_rfc3339),
        "key": key,
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/auth/api-keys",
    tag = "auth",
    summary = "List your API keys (without their secrets)",
    responses(
        (status = 200, description = "`{items: [...]}`", body = Value),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let (collection, user_id) = require_account(&caller)?;
    let mut sql = Sql::new(state.store.dialect());
    sql.push("SELECT id, name, key_hash, scopes, created, expires, revoked, last_used FROM _lintel_api_keys WHERE collection = ")
        .bind(SqlValue::Text(collection.to_owned()))
        .push(" AND user_id = ")
        .bind(SqlValue::Text(user_id.to_owned()))
        .push(" ORDER BY created DESC, id LIMIT 500");
    let rows = state.store.query_rows(sql).await.map_err(ApiError::from)?;
    let items: Vec<Value> = rows.iter().map(|r| key_json(r)).collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/auth/api-keys/{id}",
    tag = "auth",
    summary = "Revoke one of your API keys",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key of yours", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (collection, user_id) = require_account(&caller)?;
    let mut sql = Sql::new(state.store.dialect());
    sql.push("UPDATE _lintel_api_keys SET revoked = ")
        .bind(SqlValue::Int(state.clock.now_ms()))
        .push(" WHERE id = ")
        .bind(SqlValue::Text(id.clone()))
        .push(" AND revoked IS NULL");
    // Superusers may revoke any key; others only their own.
    if !caller.is_superuser() {
        sql.push(" AND collection = ")
            .bind(SqlValue::Text(collection.to_owned()))
            .push(" AND user_id = ")
            .bind(SqlValue::Text(user_id.to_owned()));
    }
    match state
        .store
        .write(vec![WriteOp::System {
            sql,
            expect: Some(1),
        }])
        .await
    {
        Ok(_) => {}
        Err(WriteError {
            error: crate::store::StoreError::NotFound,
            ..
        }) => {
            return Err(ApiError::not_found(
                "No active API key of yours has that id.",
            ));
        }
        Err(e) => return Err(ApiError::from(e.error)),
    }
    audit::record(
        &state,
        audit::Event::new("api_key_revoked", "ok")
            .actor(caller.actor())
            .subject(id)
            .ip(caller.ip.clone()),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}
