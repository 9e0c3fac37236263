//! Signing in: `POST /v1/auth/login` with a password (or a pending second factor),
//! the sign-in lockout (`SignInGuard`), and opening a token or cookie session.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::access::Caller;
use crate::auth::cookies::{SESSION_COOKIE, cookie};
use crate::auth::sessions::{NewSession, Session};
use crate::auth::{audit, tokens};
use crate::error::ApiError;
use crate::ratelimit::lockout::{Gate, Policy};
use crate::runtime::Runtime;
use crate::store::{Sql, SqlValue, StoreError, WriteError, WriteOp};

use crate::auth::accounts::{Account, account_by_id};

pub(crate) fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "The email or the password is wrong.",
    )
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

pub(super) fn no_store(res: &mut Response) {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// How long a sign-in waiting for its second factor may take, in milliseconds.
pub(crate) const MFA_PENDING_TTL_MS: i64 = 5 * 60 * 1000;

/// Sign-in protection for one account and the client address (`ratelimit/lockout.rs`):
/// every way of signing in that checks a secret (a password, a second-factor code)
/// goes through the same gate and counts its failures the same way.
pub struct SignInGuard {
    collection: String,
    email: String,
    /// The account's and the address's counters (`lockout::signin_keys`).
    keys: [(String, Policy); 2],
}

impl SignInGuard {
    pub fn new(state: &Runtime, caller: &Caller, collection: &str, email: &str) -> Self {
        Self {
            collection: collection.to_owned(),
            email: email.to_owned(),
            keys: crate::ratelimit::lockout::signin_keys(
                &state.config.auth,
                collection,
                email,
                caller.ip.as_deref(),
            ),
        }
    }

    fn keys(&self) -> [(&str, Policy); 2] {
        [
            (self.keys[0].0.as_str(), self.keys[0].1),
            (self.keys[1].0.as_str(), self.keys[1].1),
        ]
    }

    /// Before any secret is checked: `429 signin_locked` while the account or the
    /// address is locked; a delay after a few failures.
    pub async fn gate(&self, state: &Runtime, caller: &Caller) -> Result<(), ApiError> {
        match state.login_guard.gate(&self.keys(), state.clock.now_ms()) {
            Gate::Locked { retry_after_ms } => {
                audit::record(
                    state,
                    audit::Event::new("login_refused_locked", "denied")
                        .collection(self.collection.clone())
                        .ip(caller.ip.clone())
                        .detail(json!({ "email": self.email })),
                );
                let secs = retry_after_ms.div_ceil(1000).max(1);
                let mut err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "signin_locked",
                    format!("Too many failed sign-ins; try again in {secs} s."),
                );
                err.retry_after = Some(secs);
                Err(err)
            }
            Gate::Proceed { delay_ms } if delay_ms > 0 => {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                Ok(())
            }
            Gate::Proceed { .. } => Ok(()),
        }
    }

    /// A wrong secret: counted toward the lockout, each lock it causes audited, and the
    /// failure itself audited with its reason.
    pub fn failed(&self, state: &Runtime, caller: &Caller, subject: Option<&str>, reason: &str) {
        for key in state.login_guard.failed(&self.keys(), state.clock.now_ms()) {
            audit::record(
                state,
                audit::Event::new("signin_locked", "locked")
                    .collection(self.collection.clone())
                    .ip(caller.ip.clone())
                    .detail(json!({ "key": key, "lockSecs": state.config.auth.lockout_secs })),
            );
        }
        audit::record(
            state,
            audit::Event::new("login_failed", "denied")
                .collection(self.collection.clone())
                .subject(subject.unwrap_or_default())
                .ip(caller.ip.clone())
                .detail(json!({ "reason": reason })),
        );
    }
}

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
        Err(e) => e,
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
