//! API keys for servers and other services: `lk_<id>_<secret>`, created by a user or a
//! superuser with scopes (`<collection>:<action>`, `*` for any collection, actions
//! list, view, create, update, delete, read, write or `*`) and an optional expiry,
//! shown once, stored as a digest, revocable. A key acts as its owner, narrowed to
//! its scopes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::access::{Caller, Principal, Via};
use crate::auth::accounts::{load_principal, require_account};
use crate::auth::{audit, tokens};
use crate::error::{ApiError, FieldErrors, push_field_error};
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::state::AppState;
use crate::store::{Sql, SqlValue, WriteError, WriteOp};

pub const PREFIX: &str = "lk_";

/// Revokes every active key of an account (part of a credential change's transaction).
pub fn revoke_all_op(
    dialect: crate::store::Dialect,
    collection: &str,
    user_id: &str,
    now_ms: i64,
) -> WriteOp {
    let mut sql = Sql::new(dialect);
    sql.push("UPDATE _lintel_api_keys SET revoked = ")
        .bind(SqlValue::Int(now_ms))
        .push(" WHERE collection = ")
        .bind(SqlValue::Text(collection.to_owned()))
        .push(" AND user_id = ")
        .bind(SqlValue::Text(user_id.to_owned()))
        .push(" AND revoked IS NULL");
    WriteOp::System { sql, expect: None }
}
const ACTIONS: [&str; 8] = [
    "list", "view", "create", "update", "delete", "read", "write", "*",
];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewKey {
    /// 1 to 100 bytes, not only white space.
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    /// `<collection>:<action>` entries, e.g. `posts:read`, `*:list`.
    #[schema(min_items = 1, max_items = 100)]
    pub scopes: Vec<String>,
    /// RFC 3339, in the future; none = no expiry.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// Admin areas a superuser's key can be scoped to (`<area>:read`, `<area>:write` or
/// `<area>:*`); see `http::extract::admin_scope`.
pub const ADMIN_AREAS: [&str; 3] = ["collections", "audit", "metrics"];

fn admin_scope_ok(scope: &str) -> bool {
    scope.split_once(':').is_some_and(|(area, access)| {
        ADMIN_AREAS.contains(&area) && matches!(access, "read" | "write" | "*")
    })
}

fn check(state: &AppState, req: &NewKey, superuser: bool) -> Result<Option<i64>, ApiError> {
    let mut errors = FieldErrors::new();
    if req.name.trim().is_empty() || req.name.len() > 100 {
        push_field_error(&mut errors, "name", "invalid", "1 to 100 characters");
    }
    if req.scopes.is_empty() || req.scopes.len() > 100 {
        push_field_error(&mut errors, "scopes", "invalid", "1 to 100 scopes");
    }
    let catalog = state.catalog();
    for (i, s) in req.scopes.iter().enumerate() {
        let ok = s
            .split_once(':')
            .is_some_and(|(c, a)| (c == "*" || catalog.get(c).is_some()) && ACTIONS.contains(&a))
            || (superuser && admin_scope_ok(s));
        if !ok {
            push_field_error(
                &mut errors,
                format!("scopes[{i}]"),
                "invalid_scope",
                "must be <collection>:<action> with an existing collection (or *) and one of list, view, create, update, delete, read, write, *; a superuser's key may also hold collections:read|write|*, audit:read|* and metrics:read|*",
            );
        }
    }
    let expires = match req.expires_at.as_deref() {
        None => None,
        Some(t) => {
            match crate::clock::normalize_datetime(t).and_then(|n| crate::clock::ts_seconds(&n)) {
                Some(secs) if secs * 1000 > state.clock.now_ms() => Some(secs * 1000),
                Some(_) => {
                    push_field_error(&mut errors, "expiresAt", "in_past", "must be in the future");
                    None
                }
                None => {
                    push_field_error(
                        &mut errors,
                        "expiresAt",
                        "invalid",
                        "must be an RFC 3339 date-time",
                    );
                    None
                }
            }
        }
    };
    if errors.is_empty() {
        Ok(expires)
    } else {
        Err(ApiError::validation(errors))
    }
}

fn ms_to_rfc3339(ms: i64) -> Value {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .map(crate::clock::format_ts)
        .map_or(Value::Null, Value::String)
}

fn key_json(row: &[Value]) -> Value {
    let scopes: Value = row
        .get(3)
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    json!({
        "id": row.first().cloned().unwrap_or(Value::Null),
        "name": row.get(1).cloned().unwrap_or(Value::Null),
        "scopes": scopes,
        "created": row.get(4).and_then(Value::as_i64).map_or(Value::Null, ms_to_rfc3339),
        "expiresAt": row.get(5).and_then(Value::as_i64).map_or(Value::Null, ms_to_rfc3339),
        "revoked": row.get(6).and_then(Value::as_i64).is_some(),
        "lastUsed": row.get(7).and_then(Value::as_i64).map_or(Value::Null, ms_to_rfc3339),
    })
}

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

/// The caller an API key stands for; None when it is unknown, wrong, expired or revoked.
pub async fn authenticate(state: &AppState, key: &str) -> Result<Option<Caller>, ApiError> {
    let Some((id, secret)) = key
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    if !crate::schema::kinds::is_record_id(id) {
        return Ok(None);
    }
    let mut sql = Sql::new(state.store.dialect());
    sql.push("SELECT key_hash, collection, user_id, scopes, expires, revoked, last_used FROM _lintel_api_keys WHERE id = ")
        .bind(SqlValue::Text(id.to_owned()));
    let rows = state.store.query_rows(sql).await.map_err(ApiError::from)?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let text = |i: usize| row.get(i).and_then(Value::as_str).unwrap_or_default();
    let stored: [u8; 32] = crate::ids::token_digest(text(0));
    let given = crate::ids::token_digest(&tokens::digest(secret));
    if !crate::ids::constant_time_eq(&stored, &given) {
        return Ok(None);
    }
    let now = state.clock.now_ms();
    let expired = row.get(4).and_then(Value::as_i64).is_some_and(|e| e <= now);
    let revoked = row.get(5).and_then(Value::as_i64).is_some();
    if expired || revoked {
        return Ok(None);
    }
    let scopes: Vec<String> = serde_json::from_str(text(3)).unwrap_or_default();
    let Some(principal) = load_principal(state, text(1), text(2)).await? else {
        return Ok(None);
    };
    // Last use is kept to the minute; writing it on every request would cost a write.
    let last_used = row.get(6).and_then(Value::as_i64).unwrap_or(0);
    if now - last_used > 60_000 {
        let mut sql = Sql::new(state.store.dialect());
        sql.push("UPDATE _lintel_api_keys SET last_used = ")
            .bind(SqlValue::Int(now))
            .push(" WHERE id = ")
            .bind(SqlValue::Text(id.to_owned()));
        let store = state.store.clone();
        state.tasks.spawn(async move {
            let _ = store
                .write(vec![WriteOp::System { sql, expect: None }])
                .await;
        });
    }
    Ok(Some(Caller {
        principal: match principal {
            Principal::Anonymous => return Ok(None),
            p => p,
        },
        via: Via::ApiKey {
            id: id.to_owned(),
            scopes,
        },
        ip: None,
        tls: false,
    }))
}
