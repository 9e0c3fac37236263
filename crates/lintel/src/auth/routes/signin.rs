//! The HTTP handlers of `auth::signin` (with the edge).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::access::Caller;
use crate::auth::accounts::{Account, account_by_id, find_account, normalize_email};
use crate::auth::cookies::{SESSION_COOKIE, cookie};
use crate::auth::sessions::{NewSession, Session};
use crate::auth::signin::*;
use crate::auth::{audit, password, tokens};
use crate::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::runtime::Runtime;
use crate::state::AppState;
use crate::store::{Sql, SqlValue, StoreError, WriteError, WriteOp};

#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "auth",
    summary = "Sign in with email and password",
    description = "Returns `{accessToken, refreshToken, expiresIn, user}`; with `\"mode\": \"cookie\"` opens a cookie session and returns `{user, csrfToken}`. A wrong password and an unknown email get the same 401. An account with a second factor answers `401 mfa_required` with an `mfaToken` (also what single sign-on gives such an account); send `{mfaToken, totp}` (or `recoveryCode`) here to finish. Wrong codes count toward the sign-in lockout like wrong passwords.",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = Value),
        (status = 401, description = "Wrong credentials, or a second factor is needed (`mfa_required`, with `mfaToken`) or wrong (`invalid_mfa`), or an unknown or used `mfaToken` (`invalid_mfa_token`)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed sign-ins (`signin_locked`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub(super) async fn login(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Result<Response, ApiError> {
    let mode = match req.mode.as_deref() {
        None => None,
        Some("token") => Some(false),
        Some("cookie") => Some(true),
        Some(_) => return Err(ApiError::field("mode", "invalid", "token or cookie")),
    };
    if let Some(token) = req.mfa_token.as_deref() {
        return complete_pending(&state, &caller, &headers, token, &req, mode).await;
    }
    let cookie_mode = mode.unwrap_or(false);
    let collection = req.collection.clone().unwrap_or_else(|| "users".into());
    let (Some(email), Some(pw)) = (req.email.as_deref(), req.password.as_deref()) else {
        let missing = if req.email.is_none() {
            "email"
        } else {
            "password"
        };
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("The JSON body does not fit: missing field `{missing}` (or give `mfaToken`)."),
        ));
    };
    let email = normalize_email(email);
    if email.is_empty() || pw.is_empty() || pw.len() > password::MAX_LENGTH {
        return Err(invalid_credentials().into());
    }
    // Sign-in protection: slowed down after a few failures, locked after many.
    let guard = SignInGuard::new(&state, &caller, &collection, &email);
    guard.gate(&state, &caller).await?;
    let account = find_account(&state, &collection, &email).await?;
    let hash = account
        .as_ref()
        .and_then(Account::password_hash)
        .unwrap_or_else(|| state.auth.hasher.decoy())
        .to_owned();
    let ok = state.auth.hasher.verify(hash, pw.to_owned()).await;
    let account = match account {
        Some(a) if ok => a,
        other => {
            let reason = if other.is_some() {
                "wrong_password"
            } else {
                "unknown_email"
            };
            guard.failed(&state, &caller, other.as_ref().map(Account::id), reason);
            return Err(invalid_credentials().into());
        }
    };
    let pending = Pending {
        cookie_mode,
        via: "password".into(),
    };
    second_factor(
        &state,
        &caller,
        &guard,
        &account,
        req.totp.as_deref(),
        req.recovery_code.as_deref(),
        &pending,
    )
    .await?;
    signed_in(
        &state,
        &caller,
        &headers,
        &guard,
        &account,
        cookie_mode,
        json!({ "mode": if cookie_mode { "cookie" } else { "token" } }),
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRequest {
    /// Needed unless `mfaToken` is given.
    #[serde(default)]
    #[schema(format = Email, min_length = 1, max_length = 254)]
    pub email: Option<String>,
    /// Needed unless `mfaToken` is given; at most 256 bytes.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub password: Option<String>,
    /// The auth collection (default `users`; `_superusers` for superusers).
    #[serde(default)]
    pub collection: Option<String>,
    /// `token` (default): access and refresh tokens; `cookie`: a session cookie.
    #[serde(default)]
    pub mode: Option<String>,
    /// The current TOTP code, when the account has a second factor.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{6}$")]
    pub totp: Option<String>,
    /// A one-time recovery code instead of the TOTP code.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub recovery_code: Option<String>,
    /// The `mfaToken` of a `401 mfa_required` answer (from this endpoint or from single
    /// sign-on): completes that sign-in with `totp` or `recoveryCode`, without the
    /// email and password.
    #[serde(default)]
    pub mfa_token: Option<String>,
}

pub(crate) fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect())
}

/// Opens a session for an account and answers with tokens or a cookie.
pub async fn open_session(
    state: &Runtime,
    account: &Account,
    cookie_mode: bool,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let now = state.clock.now_ms();
    let cfg = &state.config.auth;
    let id = crate::ids::secret_token();
    if cookie_mode {
        // A fresh session id at every sign-in; a session cookie the browser still
        // sends is ended, so a planted cookie cannot become a signed-in session.
        if let Some(old) = cookie(headers, SESSION_COOKIE)
            && let Ok(Some(s)) = state.auth.sessions.by_secret(&tokens::digest(old)).await
        {
            let _ = state.auth.sessions.revoke(&s.id, now).await;
        }
        let secret = crate::ids::secret_token();
        let csrf = crate::ids::secret_token();
        let expires = now + cfg.session_absolute_secs as i64 * 1000;
        state
            .auth
            .sessions
            .create(NewSession {
                session: Session {
                    id: id.clone(),
                    kind: "cookie".into(),
                    collection: account.collection().to_owned(),
                    user_id: account.id().to_owned(),
                    csrf: Some(csrf.clone()),
                    created: now,
                    last_seen: now,
                    expires,
                    revoked: None,
                    ip: caller.ip.clone(),
                    user_agent: user_agent(headers),
                },
                secret_hash: Some(tokens::digest(&secret)),
                refresh: None,
            })
            .await
            .map_err(ApiError::from)?;
        let mut res =
            axum::Json(json!({ "user": account.json(), "csrfToken": csrf })).into_response();
        let max_age = crate::auth::cookies::session_max_age(state, expires, now);
        for c in crate::auth::cookies::session_cookies(
            &secret,
            &csrf,
            max_age,
            cfg.cookie_secure || caller.tls,
        ) {
            if let Ok(v) = HeaderValue::from_str(&c) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        no_store(&mut res);
        return Ok(res);
    }
    // The store keeps only digests: the session's id is the digest of the `sid` that
    // access tokens carry, and refresh tokens (`<sid>.<secret>`) are kept as digests,
    // so the database alone can neither name a live session in a token nor refresh.
    let refresh = refresh_token(&id);
    let expires = now + cfg.refresh_ttl_secs as i64 * 1000;
    state
        .auth
        .sessions
        .create(NewSession {
            session: Session {
                id: tokens::digest(&id),
                kind: "token".into(),
                collection: account.collection().to_owned(),
                user_id: account.id().to_owned(),
                csrf: None,
                created: now,
                last_seen: now,
                expires,
                revoked: None,
                ip: caller.ip.clone(),
                user_agent: user_agent(headers),
            },
            secret_hash: None,
            refresh: Some((tokens::digest(&refresh), expires)),
        })
        .await
        .map_err(ApiError::from)?;
    let access = state
        .auth
        .keys
        .issue(
            account.collection(),
            account.id(),
            &id,
            state.clock.now_ms(),
        )
        .map_err(ApiError::internal)?;
    let mut res = axum::Json(json!({
        "accessToken": access,
        "refreshToken": refresh,
        "tokenType": "Bearer",
        "expiresIn": state.auth.keys.access_ttl_secs,
        "user": account.json(),
    }))
    .into_response();
    no_store(&mut res);
    Ok(res)
}

/// A refresh token of the session whose access tokens carry `sid`.
pub(super) fn refresh_token(sid: &str) -> String {
    format!("{sid}.{}", crate::ids::secret_token())
}

pub(super) use crate::http::no_store;

/// How long a sign-in waiting for its second factor may take, in milliseconds.
pub(crate) const MFA_PENDING_TTL_MS: i64 = 5 * 60 * 1000;

/// What a sign-in waiting for its second factor remembers.
pub struct Pending {
    /// A cookie session rather than tokens, unless the completing request says.
    pub cookie_mode: bool,
    /// How the first factor was proved (`password`, `oidc:<provider>`), for the audit log.
    pub via: String,
}

/// The second-factor step of every sign-in: passes when the account has no second
/// factor or a valid unused code is given. Without a code the answer is
/// `401 mfa_required` with an `mfaToken` that `POST /v1/auth/login` completes; a wrong
/// code is `401 invalid_mfa` and counts toward the lockout like a wrong password.
pub async fn second_factor(
    state: &Runtime,
    caller: &Caller,
    guard: &SignInGuard,
    account: &Account,
    totp: Option<&str>,
    recovery_code: Option<&str>,
    pending: &Pending,
) -> Result<(), ApiError> {
    let e = match crate::auth::mfa::check_login(
        state,
        account.collection(),
        account.id(),
        totp,
        recovery_code,
    )
    .await
    {
        Ok(()) => return Ok(()),
        Err(e) => ApiError::from(e),
    };
    match e.code {
        "mfa_required" => {
            let token = crate::ids::secret_token();
            let now = state.clock.now_ms();
            let data = json!({
                "mode": if pending.cookie_mode { "cookie" } else { "token" },
                "via": pending.via,
            });
            let mut sql = Sql::new(state.store.dialect());
            sql.push("INSERT INTO _lintel_auth_tokens (hash, purpose, collection, user_id, data, created, expires) VALUES (");
            sql.bind_all([
                SqlValue::Text(tokens::digest(&token)),
                SqlValue::Text(MFA_PURPOSE.into()),
                SqlValue::Text(account.collection().to_owned()),
                SqlValue::Text(account.id().to_owned()),
                SqlValue::Text(data.to_string()),
                SqlValue::Int(now),
                SqlValue::Int(now + MFA_PENDING_TTL_MS),
            ]);
            sql.push(")");
            state
                .store
                .write(vec![WriteOp::System {
                    sql,
                    expect: Some(1),
                }])
                .await
                .map_err(|e| ApiError::from(e.error))?;
            audit::record(
                state,
                audit::Event::new("login_mfa_pending", "pending")
                    .collection(account.collection())
                    .subject(account.id())
                    .ip(caller.ip.clone())
                    .detail(json!({ "via": pending.via })),
            );
            let mut e = e.with_extra("mfaToken", Value::String(token));
            e.detail = "This account has a second factor: POST /v1/auth/login with this \"mfaToken\" and the current code as \"totp\" (or a \"recoveryCode\").".into();
            Err(e)
        }
        "invalid_mfa" => {
            guard.failed(state, caller, Some(account.id()), "invalid_mfa");
            Err(e)
        }
        _ => Err(e),
    }
}

/// The purpose of a pending sign-in's token in `_lintel_auth_tokens`.
pub(crate) const MFA_PURPOSE: &str = "mfa";

pub(crate) fn invalid_mfa_token() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_mfa_token",
        "The mfaToken is unknown, expired or already used; sign in again.",
    )
}

/// `POST /v1/auth/login` with an `mfaToken`: the second step of a sign-in whose first
/// factor (a password or an identity provider) was proved before.
pub(crate) async fn complete_pending(
    state: &Runtime,
    caller: &Caller,
    headers: &HeaderMap,
    token: &str,
    req: &LoginRequest,
    mode: Option<bool>,
) -> Result<Response, ApiError> {
    if req.totp.is_none() && req.recovery_code.is_none() {
        return Err(ApiError::field(
            "totp",
            "required",
            "send the current code (or a recoveryCode) with the mfaToken",
        ));
    }
    let hash = tokens::digest(token);
    let now = state.clock.now_ms();
    let mut sql = Sql::new(state.store.dialect());
    sql.push("SELECT collection, user_id, data FROM _lintel_auth_tokens WHERE hash = ")
        .bind(SqlValue::Text(hash.clone()))
        .push(" AND purpose = ")
        .bind(SqlValue::Text(MFA_PURPOSE.into()))
        .push(" AND used IS NULL AND expires > ")
        .bind(SqlValue::Int(now));
    let rows = state.store.query_rows(sql).await.map_err(ApiError::from)?;
    let row = rows.first().ok_or_else(invalid_mfa_token)?;
    let text = |i: usize| row.get(i).and_then(Value::as_str).unwrap_or_default();
    let data: Value = serde_json::from_str(text(2)).unwrap_or(Value::Null);
    let pending = Pending {
        cookie_mode: data["mode"] == "cookie",
        via: data["via"].as_str().unwrap_or_default().to_owned(),
    };
    let account = account_by_id(state, text(0), text(1))
        .await?
        .ok_or_else(invalid_mfa_token)?;
    let guard = SignInGuard::new(state, caller, account.collection(), &account.email());
    guard.gate(state, caller).await?;
    second_factor(
        state,
        caller,
        &guard,
        &account,
        req.totp.as_deref(),
        req.recovery_code.as_deref(),
        &pending,
    )
    .await?;
    let mut used = Sql::new(state.store.dialect());
    used.push("UPDATE _lintel_auth_tokens SET used = ")
        .bind(SqlValue::Int(state.clock.now_ms()))
        .push(" WHERE hash = ")
        .bind(SqlValue::Text(hash))
        .push(" AND used IS NULL");
    match state
        .store
        .write(vec![WriteOp::System {
            sql: used,
            expect: Some(1),
        }])
        .await
    {
        Ok(_) => {}
        Err(WriteError {
            error: StoreError::NotFound,
            ..
        }) => return Err(invalid_mfa_token()),
        Err(e) => return Err(ApiError::from(e.error)),
    }
    let cookie_mode = mode.unwrap_or(pending.cookie_mode);
    signed_in(
        state,
        caller,
        headers,
        &guard,
        &account,
        cookie_mode,
        json!({ "mode": if cookie_mode { "cookie" } else { "token" }, "via": pending.via }),
    )
    .await
}

/// The end of every successful sign-in: the account's failure count cleared, the
/// sign-in audited, a session opened.
pub async fn signed_in(
    state: &Runtime,
    caller: &Caller,
    headers: &HeaderMap,
    guard: &SignInGuard,
    account: &Account,
    cookie_mode: bool,
    detail: Value,
) -> Result<Response, ApiError> {
    state.login_guard.succeeded(&guard.keys[0].0);
    audit::record(
        state,
        audit::Event::new("login", "ok")
            .actor(format!("{}/{}", account.collection(), account.id()))
            .collection(account.collection())
            .subject(account.id())
            .ip(caller.ip.clone())
            .detail(detail),
    );
    open_session(state, account, cookie_mode, caller, headers).await
}
