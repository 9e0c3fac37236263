//! Who is calling: resolved once per request from the bearer credential (the admin
//! token, an access token or an API key) or the session cookie, and kept in the
//! request's extensions. Cookie-authenticated unsafe requests must prove they are not
//! cross-site (an allowed Origin and the session's CSRF token).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};

pub use crate::access::{Caller, Principal, SERVICES, Via, superuser_json, user_json};
pub use crate::auth::accounts::{load_principal, require_account};
pub use crate::auth::cookies::{
    CSRF_HEADER, SESSION_COOKIE, cookie, session_cookies, session_max_age,
};
use crate::auth::{audit, sessions, tokens};
use crate::error::ApiError;
use crate::http::extract::bearer;

use crate::state::AppState;

/// Where resolving the caller leaves `Set-Cookie` values for the response: a stale
/// session cookie is cleared, a live one has its lifetime renewed. Put in the request
/// by [`session_cookie`] only when the request carries a session cookie.
#[derive(Clone, Default)]
pub struct CookieSlot(Arc<std::sync::Mutex<Vec<String>>>);

impl CookieSlot {
    fn set(&self, values: Vec<String>) {
        match self.0.lock() {
            Ok(mut v) => *v = values,
            Err(poisoned) => *poisoned.into_inner() = values,
        }
    }

    fn take(&self) -> Vec<String> {
        match self.0.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// Middleware: gives requests that carry a session cookie a [`CookieSlot`] and adds
/// what resolving the caller left there to the response, unless the handler set the
/// session cookie itself (a sign-in).
pub async fn session_cookie(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if cookie(req.headers(), SESSION_COOKIE).is_none() {
        return next.run(req).await;
    }
    let slot = CookieSlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut res = next.run(req).await;
    let values = slot.take();
    let handler_set = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.as_bytes().starts_with(SESSION_COOKIE.as_bytes()));
    if !handler_set {
        for v in values {
            if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
        }
    }
    res
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let mut caller = resolve(state, parts).await?;
        caller.ip = crate::http::client_ip::client_ip(parts, state);
        caller.tls = parts
            .extensions
            .get::<crate::http::serve::TlsInfo>()
            .is_some();
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

fn invalid_token() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "The bearer token is invalid, expired or revoked.",
    )
}

async fn resolve(state: &AppState, parts: &Parts) -> Result<Caller, ApiError> {
    if let Some(token) = bearer(&parts.headers) {
        if state.admin_token_matches(token) {
            return Ok(Caller {
                principal: Principal::Superuser {
                    id: "admin".into(),
                    email: String::new(),
                },
                via: Via::AdminToken,
                ip: None,
                tls: false,
            });
        }
        if token.starts_with(crate::auth::apikeys::PREFIX) {
            return crate::auth::apikeys::authenticate(state, token)
                .await?
                .ok_or_else(invalid_token);
        }
        let now = state.clock.now_ms();
        let claims = state
            .auth
            .keys
            .verify(token, now)
            .ok_or_else(invalid_token)?;
        let session = state
            .auth
            .sessions
            .get(&tokens::digest(&claims.sid))
            .await
            .map_err(ApiError::from)?
            .filter(|s| s.active(now) && s.collection == claims.col && s.user_id == claims.sub)
            .ok_or_else(invalid_token)?;
        let principal = load_principal(state, &session.collection, &session.user_id)
            .await?
            .ok_or_else(invalid_token)?;
        return Ok(Caller {
            principal,
            via: Via::Token {
                session: session.id,
            },
            ip: None,
            tls: false,
        });
    }
    if let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) {
        let now = state.clock.now_ms();
        let idle = state.config.auth.session_idle_secs as i64 * 1000;
        let slot = parts.extensions.get::<CookieSlot>().cloned();
        let secure = state.config.auth.cookie_secure
            || parts
                .extensions
                .get::<crate::http::serve::TlsInfo>()
                .is_some();
        let Some(session) = state
            .auth
            .sessions
            .by_secret(&tokens::digest(secret))
            .await
            .map_err(ApiError::from)?
            .filter(|s| s.kind == "cookie" && s.active(now) && s.last_seen + idle > now)
        else {
            // An ended or unknown session cookie is no credential: the request goes on
            // as anonymous (a route that needs an account answers 401 itself, sign-in
            // and sign-up work) and the response clears the cookie.
            if let Some(slot) = slot {
                slot.set(session_cookies("", "", 0, secure).to_vec());
            }
            return Ok(Caller::anonymous());
        };
        if !is_safe(&parts.method) {
            check_csrf(state, parts, session.csrf.as_deref().unwrap_or("")).await?;
        } else if is_websocket_upgrade(parts)
            && !has_token_query(parts)
            && !origin_allowed(state, &parts.headers)
        {
            // A WebSocket carries the cookie from any page that opens one: only the
            // allowed origins may (cross-site WebSocket hijacking).
            audit::record(
                state,
                audit::Event::new("csrf_rejected", "denied").detail(serde_json::json!({
                    "reason": "cross-site Origin on a WebSocket",
                    "path": parts.uri.path(),
                })),
            );
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "A WebSocket opened with the session cookie must come from an allowed origin.",
            ));
        }
        if now - session.last_seen > 60_000 {
            // Used again: the cookie lives as long as the session now can.
            if let Some(slot) = slot {
                let max_age = session_max_age(state, session.expires, now);
                let csrf = session.csrf.as_deref().unwrap_or("");
                slot.set(session_cookies(secret, csrf, max_age, secure).to_vec());
            }
            let sessions = state.auth.sessions.clone();
            let id = session.id.clone();
            state.tasks.spawn(async move {
                if let Err(e) = sessions.touch(&id, now).await {
                    tracing::warn!(error = %e, "recording session use failed");
                }
            });
        }
        let principal = load_principal(state, &session.collection, &session.user_id)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "session_expired",
                    "The session's account no longer exists.",
                )
            })?;
        return Ok(Caller {
            principal,
            via: Via::Cookie {
                session: session.id,
            },
            ip: None,
            tls: false,
        });
    }
    // No credential in the request: a verified client certificate names a service.
    if let Some(name) = parts
        .extensions
        .get::<crate::http::serve::TlsInfo>()
        .and_then(|t| t.client.clone())
    {
        return Ok(Caller {
            principal: Principal::Service { name },
            via: Via::ClientCert,
            ip: None,
            tls: true,
        });
    }
    Ok(Caller::anonymous())
}

fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A cookie-authenticated unsafe request must come from an allowed origin (when the
/// browser says where it comes from) and carry the session's CSRF token.
/// Whether the request carries `?token=` (a realtime token, which stands for the
/// connection instead of the cookie).
fn has_token_query(parts: &Parts) -> bool {
    parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("token=")))
}

/// Whether the request asks to become a WebSocket.
fn is_websocket_upgrade(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Whether the request's Origin (or Referer) is this server's own or an allowed one;
/// a request that names none passes (not a browser's cross-site request).
fn origin_allowed(state: &AppState, h: &axum::http::HeaderMap) -> bool {
    let origin = h
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            h.get(header::REFERER)
                .and_then(|v| v.to_str().ok())
                .filter(|r| r.starts_with("http"))
        });
    match origin {
        None => true,
        Some(o) => {
            let o = origin_of(o);
            let host = h
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            o.split_once("://").is_some_and(|(_, rest)| rest == host)
                || state
                    .config
                    .auth
                    .allowed_origins
                    .iter()
                    .any(|a| a.trim_end_matches('/') == o)
        }
    }
}

async fn check_csrf(state: &AppState, parts: &Parts, expected: &str) -> Result<(), ApiError> {
    let h = &parts.headers;
    let origin_ok = origin_allowed(state, h);
    let token = h
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token_ok = !expected.is_empty()
        && crate::ids::constant_time_eq(
            &crate::ids::token_digest(token),
            &crate::ids::token_digest(expected),
        );
    if origin_ok && token_ok {
        return Ok(());
    }
    let reason = if origin_ok {
        "missing or wrong X-CSRF-Token"
    } else {
        "cross-site Origin"
    };
    audit::record(
        state,
        audit::Event::new("csrf_rejected", "denied")
            .detail(serde_json::json!({ "reason": reason, "path": parts.uri.path() })),
    );
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf_failed",
        "A request authenticated by the session cookie must come from an allowed origin and carry the X-CSRF-Token header given at sign-in.",
    ))
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split('/').next().unwrap_or("");
            format!("{scheme}://{host}")
        }
        None => url.to_owned(),
    }
}

pub use sessions::Session;

/// `?token=` on a connection: a realtime token (POST /v1/realtime/token).
#[derive(Debug, serde::Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}

/// The caller of a connection: the realtime token's (`?token=`, keeping the request's
/// address), or whoever the request's own credentials say.
pub async fn connection_caller(
    state: &crate::state::AppState,
    caller: Caller,
    token: Option<&str>,
) -> Result<Caller, ApiError> {
    let Some(token) = token else {
        return Ok(caller);
    };
    match crate::auth::purpose::caller_of(state, crate::auth::tokens::REALTIME_AUDIENCE, token)
        .await?
    {
        Some(mut c) => {
            c.ip = caller.ip;
            c.tls = caller.tls;
            Ok(c)
        }
        None => Err(ApiError::unauthorized(
            "The realtime token is wrong, expired, or its session ended.",
        )),
    }
}

/// The answer to `POST /v1/files/token` and `POST /v1/realtime/token`: a purpose
/// token for the caller (`what` names it in refusals), `{token, expiresIn}`, never
/// cached.
pub fn purpose_token(
    state: &AppState,
    caller: &Caller,
    audience: &str,
    ttl_secs: u64,
    what: &str,
) -> Result<axum::response::Response, ApiError> {
    use crate::auth::purpose::{self, Refusal};
    use axum::response::IntoResponse;
    let token = match purpose::issue(state, caller, audience, ttl_secs)
        .map_err(ApiError::internal)?
    {
        Ok(t) => t,
        Err(Refusal::ApiKey) => {
            return Err(ApiError::forbidden(
                "api_key_not_allowed",
                format!("A {what} stands for a signed-in caller; with an API key, send the key."),
            ));
        }
        Err(Refusal::NotSignedIn) => {
            return Err(ApiError::unauthorized(format!("Sign in to get a {what}.")));
        }
    };
    let mut res =
        axum::Json(serde_json::json!({ "token": token, "expiresIn": ttl_secs })).into_response();
    crate::http::no_store(&mut res);
    Ok(res)
}
