//! The HTTP handlers of `auth::mfa` (with the edge).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::access::Caller;
use crate::auth::accounts::require_account;
use crate::auth::mfa::*;
use crate::auth::{audit, tokens};
use crate::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::state::AppState;
use crate::store::{Sql, SqlValue, StoreError, WriteOp};

#[utoipa::path(
    post,
    path = "/v1/auth/totp/enroll",
    tag = "auth",
    summary = "Start TOTP enrolment: a new secret and its otpauth:// URI",
    responses(
        (status = 200, description = "`{secret, uri}`; confirm with a code to turn it on", body = Value),
        (status = 409, description = "A second factor is already on", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn enroll(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    no_api_keys(&caller)?;
    let (coll, id) = require_account(&caller)?;
    if load(&state, coll, id).await?.is_some_and(|f| f.enabled) {
        return Err(ApiError::conflict(
            "mfa_enabled",
            "A second factor is already on; disable it first.",
        ));
    }
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).map_err(|e| ApiError::internal(format!("random: {e}")))?;
    let secret = base32(&raw);
    let mut del = Sql::new(state.store.dialect());
    del.push("DELETE FROM _lintel_mfa WHERE collection = ")
        .bind(SqlValue::Text(coll.to_owned()))
        .push(" AND user_id = ")
        .bind(SqlValue::Text(id.to_owned()))
        .push(" AND enabled = 0");
    let mut ins = Sql::new(state.store.dialect());
    ins.push("INSERT INTO _lintel_mfa (collection, user_id, secret, enabled, last_step, recovery, created) VALUES (")
        .bind(SqlValue::Text(coll.to_owned()))
        .push(", ")
        .bind(SqlValue::Text(id.to_owned()))
        .push(", ")
        .bind(SqlValue::Text(secret.clone()))
        .push(", 0, 0, '[]', ")
        .bind(SqlValue::Int(state.clock.now_ms()))
        .push(")");
    write(
        &state,
        vec![
            WriteOp::System {
                sql: del,
                expect: None,
            },
            WriteOp::System {
                sql: ins,
                expect: Some(1),
            },
        ],
    )
    .await
    .map_err(ApiError::from)?;
    let label = match &caller.principal {
        crate::access::Principal::User { record, .. } => record
            .data
            .get("email")
            .and_then(Value::as_str)
            .unwrap_or(id)
            .to_owned(),
        crate::access::Principal::Superuser { email, .. } => email.clone(),
        crate::access::Principal::Anonymous | crate::access::Principal::Service { .. } => {
            id.to_owned()
        }
    };
    let issuer = &state.config.auth.issuer;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let uri = format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP}",
        enc(issuer),
        enc(&label),
        enc(issuer)
    );
    Ok(axum::Json(json!({ "secret": secret, "uri": uri })).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/auth/totp/confirm",
    tag = "auth",
    summary = "Turn TOTP on with a first code; returns the recovery codes (shown once)",
    request_body = CodeRequest,
    responses(
        (status = 200, description = "`{recoveryCodes: [...]}`", body = Value),
        (status = 400, description = "Wrong code, or no enrolment", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn confirm(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CodeRequest>,
) -> Result<Response, ApiError> {
    no_api_keys(&caller)?;
    let (coll, id) = require_account(&caller)?;
    let Some(f) = load(&state, coll, id).await?.filter(|f| !f.enabled) else {
        return Err(ApiError::field(
            "code",
            "not_enrolling",
            "start with POST /v1/auth/totp/enroll",
        ));
    };
    let secret = unbase32(&f.secret).unwrap_or_default();
    let Some(step) = req
        .code
        .as_deref()
        .and_then(|c| matching_step(&secret, c, now_secs(&state)))
    else {
        return Err(ApiError::field(
            "code",
            "invalid_code",
            "is not the current code",
        ));
    };
    let codes: Vec<String> = (0..RECOVERY_CODES)
        .map(|_| crate::ids::secret_token().chars().take(12).collect())
        .collect();
    let digests: Vec<String> = codes.iter().map(|c| tokens::digest(c)).collect();
    let mut sql = Sql::new(state.store.dialect());
    sql.push("UPDATE _lintel_mfa SET enabled = 1, last_step = ")
        .bind(SqlValue::Int(step as i64))
        .push(", recovery = ")
        .bind(SqlValue::Text(
            serde_json::to_string(&digests).map_err(ApiError::internal)?,
        ))
        .push(" WHERE collection = ")
        .bind(SqlValue::Text(coll.to_owned()))
        .push(" AND user_id = ")
        .bind(SqlValue::Text(id.to_owned()))
        .push(" AND enabled = 0");
    write(
        &state,
        vec![WriteOp::System {
            sql,
            expect: Some(1),
        }],
    )
    .await
    .map_err(|e| match e {
        // Confirmed (or disabled) meanwhile by another request: no record is missing,
        // the enrolment is.
        StoreError::NotFound => ApiError::field(
            "code",
            "not_enrolling",
            "start with POST /v1/auth/totp/enroll",
        ),
        e => ApiError::from(e),
    })?;
    audit::record(
        &state,
        audit::Event::new("mfa_enabled", "ok")
            .actor(caller.actor())
            .subject(id)
            .ip(caller.ip.clone()),
    );
    Ok(axum::Json(json!({ "recoveryCodes": codes })).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/auth/totp/disable",
    tag = "auth",
    summary = "Turn TOTP off (needs a current code or a recovery code)",
    request_body = CodeRequest,
    responses(
        (status = 204, description = "Off"),
        (status = 400, description = "Wrong code, or no second factor", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CodeRequest>,
) -> Result<Response, ApiError> {
    no_api_keys(&caller)?;
    let (coll, id) = require_account(&caller)?;
    let Some(f) = load(&state, coll, id).await?.filter(|f| f.enabled) else {
        return Err(ApiError::field(
            "code",
            "not_enabled",
            "no second factor is on",
        ));
    };
    if !consume(
        &state,
        coll,
        id,
        &f,
        req.code.as_deref(),
        req.recovery_code.as_deref(),
    )
    .await?
    {
        return Err(ApiError::field(
            "code",
            "invalid_code",
            "is not a valid unused code",
        ));
    }
    let mut sql = Sql::new(state.store.dialect());
    sql.push("DELETE FROM _lintel_mfa WHERE collection = ")
        .bind(SqlValue::Text(coll.to_owned()))
        .push(" AND user_id = ")
        .bind(SqlValue::Text(id.to_owned()));
    write(&state, vec![WriteOp::System { sql, expect: None }])
        .await
        .map_err(ApiError::from)?;
    audit::record(
        &state,
        audit::Event::new("mfa_disabled", "ok")
            .actor(caller.actor())
            .subject(id)
            .ip(caller.ip.clone()),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}
