//! Single sign-on with any OpenID Connect provider, from its discovery document:
//! the authorization-code flow with PKCE (S256), a single-use `state` and a `nonce`,
//! the ID token's signature checked against the provider's JWKS and its issuer,
//! audience, expiry and nonce verified. Accounts are linked by verified email; a new
//! address becomes a new account only where the collection allows sign-up.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::auth::caller::Caller;
use crate::auth::routes::{Account, auth_collection, find_account, open_session};
use crate::auth::{audit, rules, tokens};
use crate::collections::model::Action;
use crate::config::OidcProviderConfig;
use crate::error::ApiError;
use crate::http::openapi::ProblemDoc;
use crate::records::service::{store_error, write_one};
use crate::store::{Record, Sql, SqlValue, StoreError, WriteError, WriteOp};

/// How long a started sign-in may take, in milliseconds.
const STATE_TTL_MS: i64 = 10 * 60 * 1000;

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
    #[serde(default)]
    nonce: Option<String>,
}

fn provider<'a>(state: &'a AppState, name: &str) -> Result<&'a OidcProviderConfig, ApiError> {
    state.config.auth.oidc.get(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "No identity provider named '{}'.",
            name.chars().take(40).collect::<String>()
        ))
    })
}

fn upstream(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "identity provider request failed");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "identity_provider_failed",
        "The identity provider could not be reached or gave an unusable answer.",
    )
}

async fn discover(state: &AppState, p: &OidcProviderConfig) -> Result<Discovery, ApiError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        p.issuer.trim_end_matches('/')
    );
    let d: Discovery = state
        .http_client
        .get(url)
        .send()
        .await
        .map_err(upstream)?
        .error_for_status()
        .map_err(upstream)?
        .json()
        .await
        .map_err(upstream)?;
    if d.issuer.trim_end_matches('/') != p.issuer.trim_end_matches('/') {
        return Err(upstream("the discovery document names another issuer"));
    }
    Ok(d)
}

fn redirect_url(state: &AppState, name: &str, p: &OidcProviderConfig) -> String {
    if p.redirect_url.is_empty() {
        format!(
            "{}/v1/auth/oidc/{name}/callback",
            state.config.auth.public_url.trim_end_matches('/')
        )
    } else {
        p.redirect_url.clone()
    }
}

fn query_map(q: Option<String>) -> Map<String, Value> {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

/// Whether the app may be sent back to `url` (its origin is the public URL's or an
/// allowed origin): never an open redirect.
fn allowed_return(state: &AppState, url: &str) -> bool {
    let origin = |u: &str| {
        url::Url::parse(u)
            .ok()
            .map(|u| u.origin().ascii_serialization())
    };
    let Some(o) = origin(url) else { return false };
    origin(&state.config.auth.public_url).as_deref() == Some(o.as_str())
        || state
            .config
            .auth
            .allowed_origins
            .iter()
            .any(|a| origin(a).as_deref() == Some(o.as_str()))
}

#[utoipa::path(
    get,
    path = "/v1/auth/oidc/{provider}/start",
    tag = "auth",
    summary = "Start signing in with an identity provider (redirects to it)",
    params(
        ("provider" = String, Path, description = "Provider name from configuration"),
        ("mode" = Option<String>, Query, description = "`token` (default) or `cookie`"),
        ("redirect" = Option<String>, Query, description = "Where to send the browser afterwards (an allowed origin)"),
    ),
    responses(
        (status = 303, description = "To the provider's authorization endpoint"),
        (status = 404, description = "No such provider", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn start(
    State(state): State<AppState>,
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
    let d = discover(&state, p).await?;
    let st = crate::ids::secret_token();
    let nonce = crate::ids::secret_token();
    let verifier = format!(
        "{}{}",
        crate::ids::secret_token(),
        crate::ids::secret_token()
    );
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let now = crate::clock::now_ms();
    let mut sql = Sql::new(state.store.dialect());
    sql.push("INSERT INTO _lintel_oauth_states (hash, provider, verifier, nonce, redirect, mode, created, expires) VALUES (");
    let values = [
        SqlValue::Text(tokens::digest(&st)),
        SqlValue::Text(name.clone()),
        SqlValue::Text(verifier),
        SqlValue::Text(nonce.clone()),
        back.map_or(SqlValue::Null, SqlValue::Text),
        SqlValue::Text(mode),
        SqlValue::Int(now),
        SqlValue::Int(now + STATE_TTL_MS),
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
        .map_err(|WriteError { error, .. }| store_error(error))?;
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
    Ok(res)
}

fn refused(detail: &str) -> ApiError {
    ApiError::bad_request("oidc_failed", detail.to_owned())
}

#[utoipa::path(
    get,
    path = "/v1/auth/oidc/{provider}/callback",
    tag = "auth",
    summary = "Where the identity provider returns: finishes the sign-in",
    description = "Answers with the same body as /v1/auth/login, or redirects to the `redirect` given at start (tokens in the URL fragment, or the session cookie set).",
    params(("provider" = String, Path, description = "Provider name")),
    responses(
        (status = 200, description = "Signed in", body = Value),
        (status = 303, description = "Signed in; back to the app"),
        (status = 400, description = "Unknown or used state, provider error, bad ID token, unverified email", body = ProblemDoc, content_type = "application/problem+json"),
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
    let q = query_map(query);
    let get = |k: &str| q.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let fail = |reason: &str| {
        audit::record(
            &state,
            audit::Event::new("oidc_login_failed", "denied")
                .ip(caller.ip.clone())
                .detail(json!({ "provider": name, "reason": reason })),
        );
        refused(reason)
    };
    // The state is used up first, whatever happens next: a callback works once.
    let hash = tokens::digest(&get("state"));
    let mut sql = Sql::new(state.store.dialect());
    sql.push(
        "SELECT verifier, nonce, redirect, mode, expires FROM _lintel_oauth_states WHERE hash = ",
    )
    .bind(SqlValue::Text(hash.clone()))
    .push(" AND provider = ")
    .bind(SqlValue::Text(name.clone()));
    let rows = state.store.query_rows(sql).await.map_err(store_error)?;
    let Some(row) = rows.first() else {
        return Err(fail("unknown or already used state"));
    };
    let col = |i: usize| row.get(i).and_then(Value::as_str).map(str::to_owned);
    let (verifier, nonce, back, mode) = (
        col(0).unwrap_or_default(),
        col(1).unwrap_or_default(),
        col(2),
        col(3).unwrap_or_default(),
    );
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
        Err(e) => return Err(store_error(e.error)),
    }
    if row.get(4).and_then(Value::as_i64).unwrap_or(0) <= crate::clock::now_ms() {
        return Err(fail("the sign-in took too long; start again"));
    }
    if !get("error").is_empty() {
        return Err(fail("the identity provider refused the sign-in"));
    }
    let code = get("code");
    if code.is_empty() {
        return Err(fail("no authorization code"));
    }

    let d = discover(&state, p).await?;
    let token: Value = state
        .http_client
        .post(&d.token_endpoint)
        .basic_auth(&p.client_id, Some(&p.client_secret.0))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_url(&state, &name, p).as_str()),
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
    let jwks: JwkSet = state
        .http_client
        .get(&d.jwks_uri)
        .send()
        .await
        .map_err(upstream)?
        .json()
        .await
        .map_err(upstream)?;
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid),
        None => jwks.keys.first(),
    }
    .ok_or_else(|| fail("the ID token's key is not in the provider's JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| fail("unusable provider key"))?;
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
    let email = crate::auth::routes::normalize_email(email);

    let collection = if p.collection.is_empty() {
        "users"
    } else {
        p.collection.as_str()
    };
    let coll = auth_collection(&state, collection)?;
    let account = match find_account(&state, collection, &email).await? {
        Some(a) => a,
        None => {
            let anyone = Caller::anonymous();
            if rules::is_denied_outright(&anyone, &coll, Action::Create) {
                return Err(ApiError::forbidden(
                    "signup_closed",
                    "No account has this email and sign-up is closed.",
                ));
            }
            // A random password the user never sees; a password reset can set one.
            let hash = state.auth.hasher.hash(crate::ids::secret_token()).await?;
            let now = crate::clock::now();
            let mut data = Map::new();
            for f in coll.fields() {
                if let Some(d) = &f.default {
                    data.insert(f.name.clone(), d.clone());
                } else {
                    data.insert(f.name.clone(), Value::Null);
                }
            }
            data.insert("email".into(), Value::String(email.clone()));
            data.insert("verified".into(), Value::Bool(true));
            data.insert("passwordHash".into(), Value::String(hash));
            let record = Record {
                id: crate::ids::record_id(),
                created: now.clone(),
                updated: now,
                version: 1,
                data,
            };
            let written = write_one(
                &state,
                WriteOp::Insert {
                    coll: Arc::clone(&coll),
                    record,
                },
            )
            .await?
            .ok_or_else(|| ApiError::internal("insert returned no record"))?;
            Account::User(coll.clone(), written)
        }
    };
    audit::record(
        &state,
        audit::Event::new("login", "ok")
            .actor(format!("{}/{}", account.collection(), account.id()))
            .collection(account.collection())
            .subject(account.id())
            .ip(caller.ip.clone())
            .detail(json!({ "provider": name, "subject": claims.sub, "mode": mode })),
    );
    let res = open_session(&state, &account, mode == "cookie", &caller, &headers).await?;
    let Some(back) = back else {
        return Ok(res);
    };
    // Back to the app: the cookie travels in Set-Cookie; tokens in the fragment,
    // which browsers never send to servers.
    let (parts, body) = res.into_parts();
    let location = if mode == "cookie" {
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
    let mut out = StatusCode::SEE_OTHER.into_response();
    for c in parts.headers.get_all(header::SET_COOKIE) {
        out.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&location) {
        out.headers_mut().insert(header::LOCATION, v);
    }
    out.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(out)
}
