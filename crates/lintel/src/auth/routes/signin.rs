//! The HTTP handlers of `auth::signin` (with the edge).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::json;

use crate::access::Caller;
use crate::auth::accounts::{Account, find_account, normalize_email};
use crate::auth::password;
use crate::auth::signin::*;
use crate::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::openapi::ProblemDoc;
use crate::state::AppState;

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
        return Err(invalid_credentials());
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
            return Err(invalid_credentials());
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
