//! The HTTP handlers of `auth::oidc` (with the edge).

use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::access::Caller;
use crate::auth::oidc::*;
use crate::auth::tokens;
use crate::error::ApiError;
use crate::http::openapi::ProblemDoc;
use crate::state::AppState;
use crate::store::{Sql, SqlValue, WriteError, WriteOp};

#[utoipa::path(
    get,
    path = "/v1/auth/oidc/{provider}/start",
    tag = "auth",
    summary = "Start signing in with an identity provider (redirects to it)",
    description = "Sets the `lintel_oidc` cookie (HttpOnly, SameSite=Lax, limited to the callback's path, 10 minutes) that binds the sign-in to this browser: the callback refuses a `state` arriving without it.",
    params(
        ("provider" = String, Path, description = "Provider name from configuration"),
        ("mode" = Option<String>, Query, description = "`token` (default) or `cookie`"),
        ("redirect" = Option<String>, Query, description = "Where to send the browser afterwards (an allowed origin)"),
    ),
    responses(
        (status = 303, description = "To the provider's authorization endpoint"),
        (status = 404, description = "No such provider", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "The provider's discovery document could not be read or points elsewhere than its origin", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn start(
    State(state): State<AppState>,
    tls: Option<Extension<crate::http::serve::TlsInfo>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let p = provider(&state, &name)?;
    let q = query_map(query);
    let mode = q
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("token")
        .to_owned();
    if mode != "token" && mode != "cookie" {
        return Err(ApiError::field("mode", "invalid", "token or cookie"));
    }
    let back = q.get("redirect").and_then(Value::as_str).map(str::to_owned);
    if let Some(b) = &back
        && !allowed_return(&state, b)
    {
        return Err(ApiError::field(
            "redirect",
            "not_allowed",
            "must be on the public URL's origin or an allowed origin",
        ));
    }
    let d = discover(&state.http_client, &state.oidc_providers, p).await?;
    let st = crate::ids::secret_token();
    let nonce = crate::ids::secret_token();
    let verifier = format!(
        "{}{}",
        crate::ids::secret_token(),
        crate::ids::secret_token()
    );
    // Only the browser holding this value (in an HttpOnly cookie) may finish the
    // sign-in: a `state` planted in another browser (login CSRF) is refused.
    let browser = crate::ids::secret_token();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let now = state.clock.now_ms();
    let mut sql = Sql::new(state.store.dialect());
    sql.push("INSERT INTO _lintel_oauth_states (hash, provider, verifier, nonce, redirect, mode, created, expires, browser) VALUES (");
    let values = [
        SqlValue::Text(tokens::digest(&st)),
        SqlValue::Text(name.clone()),
        SqlValue::Text(verifier),
        SqlValue::Text(nonce.clone()),
        back.map_or(SqlValue::Null, SqlValue::Text),
        SqlValue::Text(mode),
        SqlValue::Int(now),
        SqlValue::Int(now + STATE_TTL_MS),
        SqlValue::Text(tokens::digest(&browser)),
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
    let mut scopes = vec!["openid".to_owned(), "email".to_owned()];
    for s in &p.scopes {
        if !scopes.contains(s) {
            scopes.push(s.clone());
        }
    }
    let mut url = url::Url::parse(&d.authorization_endpoint).map_err(upstream)?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &p.client_id)
        .append_pair("redirect_uri", &redirect_url(&state, &name, p))
        .append_pair("scope", &scopes.join(" "))
        .append_pair("state", &st)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let secure = state.config.auth.cookie_secure || tls.is_some();
    set_cookie(
        &mut res,
        &binding_cookie(
            &callback_path(&state, &name, p),
            &browser,
            STATE_TTL_MS / 1000,
            secure,
        ),
    );
    Ok(res)
}

#[utoipa::path(
    get,
    path = "/v1/auth/oidc/{provider}/callback",
    tag = "auth",
    summary = "Where the identity provider returns: finishes the sign-in",
    description = "Answers with the same body as /v1/auth/login, or redirects to the `redirect` given at start (tokens in the URL fragment, or the session cookie set). Needs the `lintel_oidc` cookie set by start in the same browser, and clears it. For an account with a second factor the answer is `401 mfa_required` with an `mfaToken` (with a `redirect`: the fragment carries `mfaRequired=totp&mfaToken=...`); POST /v1/auth/login with `{mfaToken, totp}` finishes the sign-in.",
    params(("provider" = String, Path, description = "Provider name")),
    responses(
        (status = 200, description = "Signed in", body = Value),
        (status = 303, description = "Signed in, or a second factor is needed; back to the app"),
        (status = 400, description = "Unknown or used state, a state from another browser, provider error, bad ID token, unverified email", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "The account has a second factor (`mfa_required`, with `mfaToken`)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "No account with this email and sign-up is closed", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn callback(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let p = provider(&state, &name)?;
    let mut res = match finish(&state, p, &caller, &headers, &name, query).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    // The binding is spent whatever happened: a new sign-in starts over.
    let secure = state.config.auth.cookie_secure || caller.tls;
    set_cookie(
        &mut res,
        &binding_cookie(&callback_path(&state, &name, p), "", 0, secure),
    );
    Ok(res)
}
