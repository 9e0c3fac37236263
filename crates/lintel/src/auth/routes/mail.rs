//! The HTTP handlers of `auth::mail` (with the edge).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::access::{Caller, Principal};
use crate::auth::accounts::normalize_email;
use crate::auth::accounts::require_account;
use crate::auth::mail::*;
use crate::auth::{audit, password};
use crate::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::state::AppState;

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
