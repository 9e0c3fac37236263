//! Email flows: verification, password reset and email change, each by a single-use,
//! expiring token sent over SMTP (plain, STARTTLS or implicit TLS, with credentials).
//! Requests answer the same whether or not the address has an account, and the mail
//! goes out in the background, so neither the answer nor its timing tells.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::access::{Caller, Principal};
use crate::auth::accounts::require_account;
use crate::auth::accounts::{Account, auth_collection, find_account, normalize_email};
use crate::auth::{audit, password, tokens};
use crate::config::MailConfig;
use crate::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::records::service::apply_writes;
use crate::schema::Collection;
use crate::state::AppState;
use crate::store::{Record, Sql, SqlValue, StoreError, WriteError, WriteOp};

/// The SMTP connection settings, ready to send.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl Mailer {
    /// None when no SMTP host is configured.
    pub fn from_config(cfg: &MailConfig) -> anyhow::Result<Option<Self>> {
        if cfg.smtp_host.is_empty() {
            return Ok(None);
        }
        let host = cfg.smtp_host.as_str();
        let tls = match cfg.smtp_tls.as_str() {
            "none" => Tls::None,
            "starttls" => Tls::Required(TlsParameters::new(host.to_owned())?),
            "tls" => Tls::Wrapper(TlsParameters::new(host.to_owned())?),
            other => anyhow::bail!("mail.smtp_tls must be none, starttls or tls, not {other}"),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(cfg.smtp_port)
            .tls(tls)
            .timeout(Some(std::time::Duration::from_secs(20)));
        if !cfg.smtp_username.is_empty() {
            builder = builder.credentials(Credentials::new(
                cfg.smtp_username.clone(),
                cfg.smtp_password.0.clone(),
            ));
        }
        let from = cfg
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("mail.from is not an address: {e}"))?;
        Ok(Some(Self {
            transport: builder.build(),
            from,
        }))
    }
}

/// Sends a plain-text mail in the background; failures go to the log.
fn send(state: &AppState, to: &str, subject: &str, body: String) {
    let Some(mailer) = state.mailer.clone() else {
        return;
    };
    let to = to.to_owned();
    let subject = subject.to_owned();
    state.tasks.spawn(async move {
        let send = async {
            let msg = Message::builder()
                .from(mailer.from.clone())
                .to(to.parse()?)
                .subject(subject)
                .header(ContentType::TEXT_PLAIN)
                .body(body)?;
            mailer.transport.send(msg).await?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        };
        if let Err(e) = send.await {
            tracing::error!(error = %e, "sending mail failed");
        }
    });
}

/// A flow that sends mail on a server that has no mail server configured: a 409 (the
/// server's configuration, not a passing failure; retrying does not help).
fn require_mailer(state: &AppState) -> Result<Arc<Mailer>, ApiError> {
    state.mailer.clone().ok_or_else(|| {
        ApiError::conflict(
            "mail_not_configured",
            "This server sends no mail (mail.smtp_host is not set), so this flow is not available.",
        )
    })
}

/// Stores a new single-use token and returns it. The account's earlier unused tokens
/// of the same purpose stop working in the same transaction: only the newest mail's
/// link is valid.
async fn issue(
    state: &AppState,
    purpose: &str,
    coll: &str,
    user_id: &str,
    data: Option<String>,
) -> Result<String, ApiError> {
    let token = crate::ids::secret_token();
    let now = state.clock.now_ms();
    let mut earlier = Sql::new(state.store.dialect());
    earlier
        .push("DELETE FROM _lintel_auth_tokens WHERE collection = ")
        .bind(SqlValue::Text(coll.to_owned()))
        .push(" AND user_id = ")
        .bind(SqlValue::Text(user_id.to_owned()))
        .push(" AND purpose = ")
        .bind(SqlValue::Text(purpose.to_owned()))
        .push(" AND used IS NULL");
    let mut sql = Sql::new(state.store.dialect());
    sql.push("INSERT INTO _lintel_auth_tokens (hash, purpose, collection, user_id, data, created, expires) VALUES (");
    let values = [
        SqlValue::Text(tokens::digest(&token)),
        SqlValue::Text(purpose.to_owned()),
        SqlValue::Text(coll.to_owned()),
        SqlValue::Text(user_id.to_owned()),
        data.map_or(SqlValue::Null, SqlValue::Text),
        SqlValue::Int(now),
        SqlValue::Int(now + state.config.auth.email_token_ttl_secs as i64 * 1000),
    ];
    sql.bind_all(values);
    sql.push(")");
    state
        .store
        .write(vec![
            WriteOp::System {
                sql: earlier,
                expect: None,
            },
            WriteOp::System {
                sql,
                expect: Some(1),
            },
        ])
        .await
        .map_err(|WriteError { error, .. }| ApiError::from(error))?;
    Ok(token)
}

/// A token presented back: its account and data, plus the op that uses it up.
struct Presented {
    coll: Arc<Collection>,
    record: Arc<Record>,
    data: Option<String>,
    use_up: WriteOp,
}

fn bad_token() -> ApiError {
    ApiError::field(
        "token",
        "invalid_token",
        "is unknown, expired or already used",
    )
}

async fn present(state: &AppState, purpose: &str, token: &str) -> Result<Presented, ApiError> {
    let hash = tokens::digest(token);
    let now = state.clock.now_ms();
    let mut sql = Sql::new(state.store.dialect());
    sql.push("SELECT collection, user_id, data FROM _lintel_auth_tokens WHERE hash = ")
        .bind(SqlValue::Text(hash.clone()))
        .push(" AND purpose = ")
        .bind(SqlValue::Text(purpose.to_owned()))
        .push(" AND used IS NULL AND expires > ")
        .bind(SqlValue::Int(now));
    let rows = state.store.query_rows(sql).await.map_err(ApiError::from)?;
    let row = rows.first().ok_or_else(bad_token)?;
    let text = |i: usize| row.get(i).and_then(Value::as_str).map(str::to_owned);
    let coll = state
        .catalog()
        .get(&text(0).unwrap_or_default())
        .filter(|c| c.is_auth())
        .ok_or_else(bad_token)?;
    let record = crate::records::service::get(state, &coll, &text(1).unwrap_or_default())
        .await
        .map_err(|_| bad_token())?;
    // Marked used in the same transaction as the change it allows: a replay (or a
    // concurrent second use) changes no row and fails the whole write.
    let mut mark = Sql::new(state.store.dialect());
    mark.push("UPDATE _lintel_auth_tokens SET used = ")
        .bind(SqlValue::Int(now))
        .push(" WHERE hash = ")
        .bind(SqlValue::Text(hash))
        .push(" AND used IS NULL");
    Ok(Presented {
        coll,
        record,
        data: text(2),
        use_up: WriteOp::System {
            sql: mark,
            expect: Some(1),
        },
    })
}

/// Applies field changes to an account together with using up its token (and any
/// `extra` writes, such as revoking API keys), in one transaction.
async fn change(
    p: Presented,
    state: &AppState,
    changes: Map<String, Value>,
    extra: Vec<WriteOp>,
) -> Result<Record, ApiError> {
    let mut data = p.record.data.clone();
    data.extend(changes);
    let record = Record {
        id: p.record.id.clone(),
        created: p.record.created.clone(),
        updated: state.clock.now(),
        version: p.record.version + 1,
        data,
    };
    let op = WriteOp::Update {
        coll: p.coll.clone(),
        record: record.clone(),
        expected_version: p.record.version,
    };
    let mut ops = vec![p.use_up, op];
    ops.extend(extra);
    match apply_writes(state, ops).await {
        Ok(_) => Ok(record),
        Err(WriteError {
            index: 0,
            error: StoreError::NotFound,
        }) => Err(bad_token()),
        Err(WriteError {
            error: StoreError::VersionConflict,
            ..
        }) => Err(ApiError::conflict(
            "conflict",
            "The account changed at the same time; retry.",
        )),
        Err(e) => Err(ApiError::from(e.error)),
    }
}

fn link(state: &AppState, page: &str, token: &str) -> String {
    format!(
        "{}/{page}?token={token}",
        state.config.auth.public_url.trim_end_matches('/')
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailRequest {
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// The auth collection (default `users`).
    #[serde(default)]
    pub collection: Option<String>,
}

async fn user_by_email(
    state: &AppState,
    req: &EmailRequest,
) -> Result<Option<(Arc<Collection>, Record)>, ApiError> {
    let name = req.collection.clone().unwrap_or_else(|| "users".into());
    auth_collection(state, &name)?;
    Ok(
        match find_account(state, &name, &normalize_email(&req.email)).await? {
            Some(Account::User(c, r)) => Some((c, r)),
            _ => None,
        },
    )
}

#[utoipa::path(
    post,
    path = "/v1/auth/request-verification",
    tag = "auth",
    summary = "Mail a verification link (the same answer whether or not the address has an account)",
    request_body = EmailRequest,
    responses(
        (status = 204, description = "Accepted"),
        (status = 409, description = "No mail server configured (`mail_not_configured`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn request_verification(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<EmailRequest>,
) -> Result<Response, ApiError> {
    require_mailer(&state)?;
    if let Some((coll, r)) = user_by_email(&state, &req).await?
        && r.data.get("verified") != Some(&Value::Bool(true))
    {
        // The token is stored and the mail sent after the answer, so a known address
        // answers as fast as an unknown one.
        let bg = state.clone();
        state.tasks.spawn(async move {
            let token = match issue(&bg, "verify", coll.name(), &r.id, None).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "storing a verification token failed");
                    return;
                }
            };
            let to = r
                .data
                .get("email")
                .and_then(Value::as_str)
                .unwrap_or_default();
            send(
                &bg,
                to,
                "Verify your email address",
                format!(
                    "Open this link to verify your email address:\n\n{}\n\nOr enter this token: {token}\n",
                    link(&bg, "verify", &token)
                ),
            );
        });
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    /// The token from the mail (a token of the right form can still be unknown,
    /// expired or used: `400 invalid_token`).
    #[schema(pattern = "^[a-z0-9]{43}$")]
    pub token: String,
    /// The new password (password reset) or the current one (email change).
    #[serde(default)]
    pub password: Option<String>,
}

/// The body of `confirm-password-reset` as documented: the handler reads a
/// [`TokenRequest`] and answers a missing password with `400 required`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct PasswordResetConfirm {
    /// The token from the mail.
    #[schema(pattern = "^[a-z0-9]{43}$")]
    token: String,
    /// The new password: at least the configured length (8 or more characters), at
    /// most 256 bytes, not a common password and not the email address.
    #[schema(max_length = 256)]
    password: String,
}

/// The body of `confirm-email-change` as documented: the handler reads a
/// [`TokenRequest`]; a missing password is a wrong one.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct EmailChangeConfirm {
    /// The token from the mail.
    #[schema(pattern = "^[a-z0-9]{43}$")]
    token: String,
    /// The account's current password.
    #[schema(min_length = 1, max_length = 256)]
    password: String,
}

#[utoipa::path(
    post,
    path = "/v1/auth/confirm-verification",
    tag = "auth",
    summary = "Mark the account verified with the mailed token (single use)",
    request_body = TokenRequest,
    responses(
        (status = 204, description = "Verified"),
        (status = 400, description = "Unknown, expired or used token", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn confirm_verification(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<Response, ApiError> {
    let p = present(&state, "verify", &req.token).await?;
    let (coll, id) = (p.coll.name().to_owned(), p.record.id.clone());
    let mut changes = Map::new();
    changes.insert("verified".into(), Value::Bool(true));
    change(p, &state, changes, Vec::new()).await?;
    audit::record(
        &state,
        audit::Event::new("email_verified", "ok")
            .collection(coll)
            .subject(id),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    post,
    path = "/v1/auth/request-password-reset",
    tag = "auth",
    summary = "Mail a password-reset link (the same answer whether or not the address has an account)",
    request_body = EmailRequest,
    responses(
        (status = 204, description = "Accepted"),
        (status = 409, description = "No mail server configured (`mail_not_configured`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn request_password_reset(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<EmailRequest>,
) -> Result<Response, ApiError> {
    require_mailer(&state)?;
    if let Some((coll, r)) = user_by_email(&state, &req).await? {
        // The token is stored and the mail sent after the answer, so a known address
        // answers as fast as an unknown one.
        let bg = state.clone();
        let ip = caller.ip.clone();
        state.tasks.spawn(async move {
            let token = match issue(&bg, "reset", coll.name(), &r.id, None).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "storing a password-reset token failed");
                    return;
                }
            };
            let to = r
                .data
                .get("email")
                .and_then(Value::as_str)
                .unwrap_or_default();
            send(
                &bg,
                to,
                "Reset your password",
                format!(
                    "Open this link to choose a new password:\n\n{}\n\nOr enter this token: {token}\n\nIf you did not ask for this, ignore this mail.\n",
                    link(&bg, "reset-password", &token)
                ),
            );
            audit::record(
                &bg,
                audit::Event::new("password_reset_requested", "ok")
                    .collection(coll.name())
                    .subject(r.id.clone())
                    .ip(ip),
            );
        });
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    post,
    path = "/v1/auth/confirm-password-reset",
    tag = "auth",
    summary = "Set a new password with the mailed token (single use); ends every session",
    request_body = PasswordResetConfirm,
    responses(
        (status = 204, description = "Password set"),
        (status = 400, description = "Bad token or password", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn confirm_password_reset(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<Response, ApiError> {
    let Some(pw) = req.password.clone() else {
        return Err(ApiError::field("password", "required", "is required"));
    };
    let p = present(&state, "reset", &req.token).await?;
    let email = p
        .record
        .data
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    password::check(&state.config.auth, &pw, &email)
        .map_err(|(code, msg)| ApiError::field("password", code, msg))?;
    let hash = state.auth.hasher.hash(pw).await?;
    let (coll, id) = (p.coll.name().to_owned(), p.record.id.clone());
    let mut changes = Map::new();
    changes.insert("passwordHash".into(), Value::String(hash));
    // A reset means the password may be known to someone else: the account's API
    // keys go with its sessions.
    let revoke_keys = crate::auth::apikeys::revoke_all_op(
        state.store.dialect(),
        &coll,
        &id,
        state.clock.now_ms(),
    );
    change(p, &state, changes, vec![revoke_keys]).await?;
    let n = state
        .auth
        .sessions
        .revoke_all(&coll, &id, state.clock.now_ms())
        .await
        .map_err(ApiError::from)?;
    audit::record(
        &state,
        audit::Event::new("password_reset", "ok")
            .collection(coll)
            .subject(id)
            .detail(json!({ "sessionsRevoked": n })),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailChangeRequest {
    #[schema(format = Email, max_length = 254)]
    pub new_email: String,
}

#[utoipa::path(
    post,
    path = "/v1/auth/request-email-change",
    tag = "auth",
    summary = "Mail a confirmation link to a new address for the signed-in account",
    request_body = EmailChangeRequest,
    responses(
        (status = 204, description = "Accepted"),
        (status = 400, description = "Not an email address", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "No mail server configured (`mail_not_configured`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn request_email_change(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<EmailChangeRequest>,
) -> Result<Response, ApiError> {
    require_mailer(&state)?;
    require_account(&caller)?;
    let Principal::User { coll, record } = &caller.principal else {
        return Err(ApiError::forbidden(
            "forbidden",
            "Only accounts of auth collections change their email this way.",
        ));
    };
    let new = normalize_email(&req.new_email);
    let valid = new.len() <= 254
        && new
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'));
    if !valid {
        return Err(ApiError::field(
            "newEmail",
            "invalid",
            "must be an email address",
        ));
    }
    let token = issue(
        &state,
        "email_change",
        coll.name(),
        &record.id,
        Some(new.clone()),
    )
    .await?;
    send(
        &state,
        &new,
        "Confirm your new email address",
        format!(
            "Open this link to make this your account's email address:\n\n{}\n\nOr enter this token: {token}\n",
            link(&state, "confirm-email-change", &token)
        ),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    post,
    path = "/v1/auth/confirm-email-change",
    tag = "auth",
    summary = "Change the email with the mailed token and the current password; ends every session",
    request_body = EmailChangeConfirm,
    responses(
        (status = 204, description = "Changed"),
        (status = 400, description = "Bad token or password, or the address is taken", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong passwords for this account or address (shared with sign-in)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn confirm_email_change(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<Response, ApiError> {
    let p = present(&state, "email_change", &req.token).await?;
    // Wrong passwords count, and lock, exactly like failed sign-ins.
    let ok = password::check_current(
        &state,
        p.coll.name(),
        &p.record,
        caller.ip.clone(),
        req.password.clone().unwrap_or_default(),
        "email_change_failed",
    )
    .await?;
    if !ok {
        return Err(ApiError::field(
            "password",
            "invalid",
            "the current password is needed",
        ));
    }
    let new = p.data.clone().unwrap_or_default();
    let (coll, id) = (p.coll.name().to_owned(), p.record.id.clone());
    let mut changes = Map::new();
    changes.insert("email".into(), Value::String(new));
    changes.insert("verified".into(), Value::Bool(true));
    change(p, &state, changes, Vec::new()).await?;
    state
        .auth
        .sessions
        .revoke_all(&coll, &id, state.clock.now_ms())
        .await
        .map_err(ApiError::from)?;
    audit::record(
        &state,
        audit::Event::new("email_changed", "ok")
            .collection(coll)
            .subject(id),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}
