//! Email flows: verification, password reset and email change, each by a single-use,
//! expiring token sent over SMTP (plain, STARTTLS or implicit TLS, with credentials).
//! Requests answer the same whether or not the address has an account, and the mail
//! goes out in the background, so neither the answer nor its timing tells.

use std::sync::Arc;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::auth::accounts::{Account, auth_collection, find_account, normalize_email};
use crate::auth::error::AuthError;
use crate::auth::tokens;
use crate::config::MailConfig;
use crate::records::service::apply_writes;
use crate::runtime::Runtime;
use crate::schema::Collection;
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

impl Mailer {
    /// Sends one plain-text mail. `Err((message, permanent))`: a permanent failure (a
    /// bad address, a 5xx answer) is not worth retrying.
    pub async fn deliver(
        &self,
        to: &str,
        subject: &str,
        body: String,
    ) -> Result<(), (String, bool)> {
        let to = to
            .parse()
            .map_err(|e| (format!("not a mail address: {e}"), true))?;
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| (format!("the mail cannot be built: {e}"), true))?;
        self.transport.send(msg).await.map(|_| ()).map_err(|e| {
            (
                format!("the mail server refused or failed: {e}"),
                e.is_permanent(),
            )
        })
    }
}

/// Queues a plain-text mail as a `mail` job (durable, retried with backoff); it is
/// enqueued in the background so the request never waits on the store for it.
pub(crate) fn send(state: &Runtime, to: &str, subject: &str, body: String) {
    if state.mailer.is_none() {
        return;
    }
    let mut job = crate::jobs::NewJob::of(
        "mail",
        serde_json::json!({ "to": to, "subject": subject, "body": body }),
    );
    job.max_attempts = 10;
    job.timeout_ms = 60_000;
    let rt = state.clone();
    state.tasks.spawn(async move {
        if let Err(e) =
            crate::jobs::service::enqueue(&rt, &job, crate::store::WriteMeta::default()).await
        {
            tracing::error!(error = %e, "queueing a mail failed");
        }
    });
}

/// A flow that sends mail on a server that has no mail server configured: a 409 (the
/// server's configuration, not a passing failure; retrying does not help).
pub(crate) fn require_mailer(state: &Runtime) -> Result<Arc<Mailer>, AuthError> {
    state.mailer.clone().ok_or(AuthError::MailNotConfigured)
}

/// Stores a new single-use token and returns it. The account's earlier unused tokens
/// of the same purpose stop working in the same transaction: only the newest mail's
/// link is valid.
pub(crate) async fn issue(
    state: &Runtime,
    purpose: &str,
    coll: &str,
    user_id: &str,
    data: Option<String>,
) -> Result<String, AuthError> {
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
        .map_err(|WriteError { error, .. }| AuthError::from(error))?;
    Ok(token)
}

/// A token presented back: its account and data, plus the op that uses it up.
pub(crate) struct Presented {
    pub(crate) coll: Arc<Collection>,
    pub(crate) record: Arc<Record>,
    pub(crate) data: Option<String>,
    pub(crate) use_up: WriteOp,
}

pub(crate) fn bad_token() -> AuthError {
    AuthError::field(
        "token",
        "invalid_token",
        "is unknown, expired or already used",
    )
}

pub(crate) async fn present(
    state: &Runtime,
    purpose: &str,
    token: &str,
) -> Result<Presented, AuthError> {
    let hash = tokens::digest(token);
    let now = state.clock.now_ms();
    let mut sql = Sql::new(state.store.dialect());
    sql.push("SELECT collection, user_id, data FROM _lintel_auth_tokens WHERE hash = ")
        .bind(SqlValue::Text(hash.clone()))
        .push(" AND purpose = ")
        .bind(SqlValue::Text(purpose.to_owned()))
        .push(" AND used IS NULL AND expires > ")
        .bind(SqlValue::Int(now));
    let rows = state.store.query_rows(sql).await?;
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
pub(crate) async fn change(
    p: Presented,
    state: &Runtime,
    changes: Map<String, Value>,
    extra: Vec<WriteOp>,
) -> Result<Record, AuthError> {
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
    let meta = crate::store::WriteMeta::by(Some(crate::store::events::account_actor(
        p.coll.name(),
        &p.record.id,
    )));
    let mut ops = vec![p.use_up, op];
    ops.extend(extra);
    match apply_writes(state, ops, meta).await {
        Ok(_) => Ok(record),
        Err(WriteError {
            index: 0,
            error: StoreError::NotFound,
        }) => Err(bad_token()),
        Err(WriteError {
            error: StoreError::VersionConflict,
            ..
        }) => Err(AuthError::Concurrent(
            "The account changed at the same time; retry.",
        )),
        Err(e) => Err(AuthError::from(e.error)),
    }
}

pub(crate) fn link(state: &Runtime, page: &str, token: &str) -> String {
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

pub(crate) async fn user_by_email(
    state: &Runtime,
    req: &EmailRequest,
) -> Result<Option<(Arc<Collection>, Record)>, AuthError> {
    let name = req.collection.clone().unwrap_or_else(|| "users".into());
    auth_collection(state, &name)?;
    Ok(
        match find_account(state, &name, &normalize_email(&req.email)).await? {
            Some(Account::User(c, r)) => Some((c, r)),
            _ => None,
        },
    )
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailChangeRequest {
    #[schema(format = Email, max_length = 254)]
    pub new_email: String,
}
