//! A second factor: TOTP (RFC 6238, SHA-1, 6 digits, 30-second steps, one step of
//! clock skew) with single-use recovery codes. Enrolment gives a secret and an
//! `otpauth://` URI (for a QR code); confirming with a first code turns it on and
//! returns ten recovery codes. Each code works once: the last accepted step is kept.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha1::Sha1;
use utoipa::ToSchema;

use crate::access::{Caller, Via};
use crate::auth::accounts::require_account;
use crate::auth::{audit, tokens};
use crate::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::state::AppState;
use crate::store::{Sql, SqlValue, StoreError, WriteError, WriteOp};

const STEP: u64 = 30;
const DIGITS: u32 = 6;
const RECOVERY_CODES: usize = 10;

/// RFC 4648 base32 without padding.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

pub fn unbase32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buf = (buf << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

/// The code for a time step (RFC 4226 HOTP over the step counter).
pub fn code_at(secret: &[u8], step: u64) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[19] & 0x0f) as usize;
    let bin = (u32::from(h[offset]) & 0x7f) << 24
        | u32::from(h[offset + 1]) << 16
        | u32::from(h[offset + 2]) << 8
        | u32::from(h[offset + 3]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(DIGITS),
        width = DIGITS as usize
    )
}

/// The step a code matches within one step of `now` (seconds), if any.
pub fn matching_step(secret: &[u8], code: &str, now: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now / STEP;
    [current.saturating_sub(1), current, current + 1]
        .into_iter()
        .find(|&s| {
            let want = code_at(secret, s);
            crate::ids::constant_time_eq(
                &crate::ids::token_digest(&want),
                &crate::ids::token_digest(code),
            )
        })
}

struct Factor {
    secret: String,
    enabled: bool,
    last_step: i64,
    recovery: String,
}

async fn load(state: &AppState, coll: &str, id: &str) -> Result<Option<Factor>, ApiError> {
    let mut sql = Sql::new(state.store.dialect());
    sql.push("SELECT secret, enabled, last_step, recovery FROM _lintel_mfa WHERE collection = ")
        .bind(SqlValue::Text(coll.to_owned()))
        .push(" AND user_id = ")
        .bind(SqlValue::Text(id.to_owned()));
    let rows = state.store.query_rows(sql).await.map_err(ApiError::from)?;
    Ok(rows.first().map(|r| Factor {
        secret: r
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        enabled: r.get(1).and_then(Value::as_i64) == Some(1),
        last_step: r.get(2).and_then(Value::as_i64).unwrap_or(0),
        recovery: r.get(3).and_then(Value::as_str).unwrap_or("[]").to_owned(),
    }))
}

async fn write(state: &AppState, ops: Vec<WriteOp>) -> Result<(), StoreError> {
    state
        .store
        .write(ops)
        .await
        .map(|_| ())
        .map_err(|WriteError { error, .. }| error)
}

fn now_secs(state: &AppState) -> u64 {
    (state.clock.now_ms() / 1000).max(0) as u64
}

/// Uses a TOTP code or a recovery code once; false when neither is valid.
async fn consume(
    state: &AppState,
    coll: &str,
    id: &str,
    f: &Factor,
    totp: Option<&str>,
    recovery: Option<&str>,
) -> Result<bool, ApiError> {
    if let Some(code) = totp {
        let Some(secret) = unbase32(&f.secret) else {
            return Ok(false);
        };
        let Some(step) = matching_step(&secret, code, now_secs(state)) else {
            return Ok(false);
        };
        if step as i64 <= f.last_step {
            return Ok(false);
        }
        let mut sql = Sql::new(state.store.dialect());
        sql.push("UPDATE _lintel_mfa SET last_step = ")
            .bind(SqlValue::Int(step as i64))
            .push(" WHERE collection = ")
            .bind(SqlValue::Text(coll.to_owned()))
            .push(" AND user_id = ")
            .bind(SqlValue::Text(id.to_owned()))
            .push(" AND last_step < ")
            .bind(SqlValue::Int(step as i64));
        return match write(
            state,
            vec![WriteOp::System {
                sql,
                expect: Some(1),
            }],
        )
        .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound) => Ok(false),
            Err(e) => Err(ApiError::from(e)),
        };
    }
    if let Some(code) = recovery {
        let mut codes: Vec<String> = serde_json::from_str(&f.recovery).unwrap_or_default();
        let digest = tokens::digest(code.trim());
        let Some(pos) = codes.iter().position(|c| *c == digest) else {
            return Ok(false);
        };
        codes.remove(pos);
        let new = serde_json::to_string(&codes).map_err(ApiError::internal)?;
        let mut sql = Sql::new(state.store.dialect());
        sql.push("UPDATE _lintel_mfa SET recovery = ")
            .bind(SqlValue::Text(new))
            .push(" WHERE collection = ")
            .bind(SqlValue::Text(coll.to_owned()))
            .push(" AND user_id = ")
            .bind(SqlValue::Text(id.to_owned()))
            .push(" AND recovery = ")
            .bind(SqlValue::Text(f.recovery.clone()));
        return match write(
            state,
            vec![WriteOp::System {
                sql,
                expect: Some(1),
            }],
        )
        .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound) => Ok(false),
            Err(e) => Err(ApiError::from(e)),
        };
    }
    Ok(false)
}

/// At sign-in: passes when the account has no second factor, or a valid code is given.
pub async fn check_login(
    state: &AppState,
    coll: &str,
    id: &str,
    totp: Option<&str>,
    recovery: Option<&str>,
) -> Result<(), ApiError> {
    let Some(f) = load(state, coll, id).await?.filter(|f| f.enabled) else {
        return Ok(());
    };
    if totp.is_none() && recovery.is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "mfa_required",
            "This account has a second factor: send the current code as \"totp\" (or a \"recoveryCode\").",
        ));
    }
    if consume(state, coll, id, &f, totp, recovery).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_mfa",
            "The second-factor code is wrong or was already used.",
        ))
    }
}

fn no_api_keys(caller: &Caller) -> Result<(), ApiError> {
    if matches!(caller.via, Via::ApiKey { .. } | Via::AdminToken) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Second factors belong to signed-in accounts, not to keys or the admin token.",
        ));
    }
    Ok(())
}

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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CodeRequest {
    /// A current TOTP code.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: Option<String>,
    /// A recovery code (disable only).
    #[serde(default)]
    pub recovery_code: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vectors() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", 8 digits there;
        // the 6-digit codes are the last six digits.
        let secret = b"12345678901234567890";
        assert_eq!(code_at(secret, 59 / 30), "287082");
        assert_eq!(code_at(secret, 1111111109 / 30), "081804");
        assert_eq!(code_at(secret, 2000000000 / 30), "279037");
        assert_eq!(matching_step(secret, "287082", 59), Some(1));
        assert_eq!(matching_step(secret, "287082", 59 + 90), None);
        assert_eq!(matching_step(secret, "28708", 59), None);
    }

    #[test]
    fn base32_round_trip() {
        let raw = [0u8, 1, 2, 250, 251, 252, 9, 10, 11, 12];
        assert_eq!(unbase32(&base32(&raw)).as_deref(), Some(&raw[..]));
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }
}
