//! The HTTP handlers of `auth::oidc` (with the edge).

use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::access::Caller;
use crate::auth::accounts::{Account, auth_collection, find_account};
use crate::auth::cookies::cookie;
use crate::auth::oidc::*;
use crate::auth::routes::signin::{Pending, second_factor, signed_in};
use crate::auth::signin::SignInGuard;
use crate::auth::{audit, tokens};
use crate::config::OidcProviderConfig;
use crate::error::ApiError;
use crate::http::openapi::ProblemDoc;
use crate::runtime::Runtime;
use crate::state::AppState;
use crate::store::{Sql, SqlValue, StoreError, WriteError, WriteOp};

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

pub(crate) fn set_cookie(res: &mut Response, c: &str) {
    if let Ok(v) = HeaderValue::from_str(c) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// 303 to `location`, not to be cached, carrying the cookies of `from`.
pub(crate) fn see_other(location: &str, from: Option<&HeaderMap>) -> Response {
    let mut out = StatusCode::SEE_OTHER.into_response();
    if let Some(h) = from {
        for c in h.get_all(header::SET_COOKIE) {
            out.headers_mut().append(header::SET_COOKIE, c.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(location) {
        out.headers_mut().insert(header::LOCATION, v);
    }
    out.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    out
}

pub(crate) async fn finish(
    state: &Runtime,
    p: &OidcProviderConfig,
    caller: &Caller,
    headers: &HeaderMap,
    name: &str,
    query: Option<String>,
) -> Result<Response, ApiError> {
    let q = query_map(query);
    let get = |k: &str| q.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let fail = |reason: &str| {
        audit::record(
            state,
            audit::Event::new("oidc_login_failed", "denied")
                .ip(caller.ip.clone())
                .detail(json!({ "provider": name, "reason": reason })),
        );
        ApiError::from(refused(reason))
    };
    let hash = tokens::digest(&get("state"));
    let mut sql = Sql::new(state.store.dialect());
    sql.push(
        "SELECT verifier, nonce, redirect, mode, expires, browser FROM _lintel_oauth_states WHERE hash = ",
    )
    .bind(SqlValue::Text(hash.clone()))
    .push(" AND provider = ")
    .bind(SqlValue::Text(name.to_owned()));
    let rows = state.store.query_rows(sql).await.map_err(ApiError::from)?;
    let Some(row) = rows.first() else {
        return Err(fail("unknown or already used state"));
    };
    let col = |i: usize| row.get(i).and_then(Value::as_str).map(str::to_owned);
    // The state counts only in the browser that started the sign-in. Checked before
    // the state is used up, so a state sent to another browser cannot spend it.
    let bound = match (cookie(headers, BINDING_COOKIE), col(5)) {
        (Some(presented), Some(stored)) => crate::ids::constant_time_eq(
            &crate::ids::token_digest(&tokens::digest(presented)),
            &crate::ids::token_digest(&stored),
        ),
        _ => false,
    };
    if !bound {
        return Err(fail(
            "the sign-in was not started in this browser; start again",
        ));
    }
    let (verifier, nonce, back, mode) = (
        col(0).unwrap_or_default(),
        col(1).unwrap_or_default(),
        col(2),
        col(3).unwrap_or_default(),
    );
    // The state is used up next, whatever happens after: a callback works once.
    let mut del = Sql::new(state.store.dialect());
    del.push("DELETE FROM _lintel_oauth_states WHERE hash = ")
        .bind(SqlValue::Text(hash));
    match state
        .store
        .write(vec![WriteOp::System {
            sql: del,
            expect: Some(1),
        }])
        .await
    {
        Ok(_) => {}
        Err(WriteError {
            error: StoreError::NotFound,
            ..
        }) => return Err(fail("unknown or already used state")),
        Err(e) => return Err(ApiError::from(e.error)),
    }
    if row.get(4).and_then(Value::as_i64).unwrap_or(0) <= state.clock.now_ms() {
        return Err(fail("the sign-in took too long; start again"));
    }
    if !get("error").is_empty() {
        return Err(fail("the identity provider refused the sign-in"));
    }
    let code = get("code");
    if code.is_empty() {
        return Err(fail("no authorization code"));
    }

    let d = discover(&state.http_client, &state.oidc_providers, p).await?;
    let token: Value = state
        .http_client
        .post(&d.token_endpoint)
        .basic_auth(&p.client_id, Some(&p.client_secret.0))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_url(state, name, p).as_str()),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .map_err(upstream)?
        .json()
        .await
        .map_err(upstream)?;
    let Some(id_token) = token.get("id_token").and_then(Value::as_str) else {
        return Err(fail("the provider returned no ID token"));
    };
    let header = jsonwebtoken::decode_header(id_token).map_err(|_| fail("malformed ID token"))?;
    // The algorithm comes from the provider's key, never from the token alone.
    const ALLOWED: [Algorithm; 6] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ];
    if !ALLOWED.contains(&header.alg) {
        return Err(fail("unsupported ID token algorithm"));
    }
    let jwk = signing_key(
        &state.http_client,
        &state.oidc_providers,
        &d.jwks_uri,
        header.kid.as_deref(),
    )
    .await?
    .ok_or_else(|| fail("the ID token's key is not in the provider's JWKS"))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| fail("unusable provider key"))?;
    let mut v = Validation::new(header.alg);
    v.leeway = 60;
    v.set_issuer(&[d.issuer.as_str()]);
    v.set_audience(&[p.client_id.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<IdClaims>(id_token, &key, &v)
        .map_err(|_| fail("the ID token's signature or claims are invalid"))?
        .claims;
    if claims.nonce.as_deref() != Some(nonce.as_str()) {
        return Err(fail("the ID token's nonce does not match"));
    }
    let (Some(email), Some(true)) = (claims.email.as_deref(), claims.email_verified) else {
        return Err(fail("the provider did not vouch for a verified email"));
    };
    let email = crate::auth::accounts::normalize_email(email);

    let collection = if p.collection.is_empty() {
        "users"
    } else {
        p.collection.as_str()
    };
    let coll = auth_collection(state, collection)?;
    let account = match find_account(state, collection, &email).await? {
        Some(Account::User(c, r)) if r.data.get("verified") != Some(&Value::Bool(true)) => {
            take_over(state, caller, &c, r, name).await?
        }
        Some(a) => a,
        None => create_account(state, &coll, &email).await?,
    };
    let cookie_mode = mode == "cookie";
    let guard = SignInGuard::new(state, caller, account.collection(), &email);
    let pending = Pending {
        cookie_mode,
        via: format!("oidc:{name}"),
    };
    // The same second-factor step as a password sign-in.
    if let Err(e) = second_factor(state, caller, &guard, &account, None, None, &pending).await {
        let token = e.extra.get("mfaToken").and_then(Value::as_str);
        return match (&back, token) {
            (Some(back), Some(token)) => {
                let mut frag = url::form_urlencoded::Serializer::new(String::new());
                frag.append_pair("mfaRequired", "totp")
                    .append_pair("mfaToken", token);
                Ok(see_other(&format!("{back}#{}", frag.finish()), None))
            }
            _ => Err(e),
        };
    }
    let res = signed_in(
        state,
        caller,
        headers,
        &guard,
        &account,
        cookie_mode,
        json!({ "provider": name, "subject": claims.sub, "mode": mode }),
    )
    .await?;
    let Some(back) = back else {
        return Ok(res);
    };
    // Back to the app: the cookie travels in Set-Cookie; tokens in the fragment,
    // which browsers never send to servers.
    let (parts, body) = res.into_parts();
    let location = if cookie_mode {
        back
    } else {
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .map_err(ApiError::internal)?;
        let v: Value = serde_json::from_slice(&bytes).map_err(ApiError::internal)?;
        let mut frag = url::form_urlencoded::Serializer::new(String::new());
        for k in ["accessToken", "refreshToken", "expiresIn"] {
            if let Some(x) = v.get(k) {
                frag.append_pair(k, &x.as_str().map_or_else(|| x.to_string(), str::to_owned));
            }
        }
        format!("{back}#{}", frag.finish())
    };
    Ok(see_other(&location, Some(&parts.headers)))
}
