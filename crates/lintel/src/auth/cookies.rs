//! The cookie session's cookies: their names, how they are written (HttpOnly,
//! SameSite=Lax, Secure by configuration) and read, and how long one lives.

use axum::http::{HeaderMap, header};

use crate::runtime::Runtime;

/// The session cookie.
pub const SESSION_COOKIE: &str = "lintel_session";
/// The header carrying the CSRF token of a cookie session.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The session and CSRF cookies, set for `max_age` seconds (0 clears them).
pub fn session_cookies(secret: &str, csrf: &str, max_age: i64, secure: bool) -> [String; 2] {
    let secure = if secure { "; Secure" } else { "" };
    let max_age = max_age.max(0);
    [
        format!(
            "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
        ),
        format!("lintel_csrf={csrf}; Path=/; SameSite=Lax; Max-Age={max_age}{secure}"),
    ]
}

/// How long a cookie session lives from `now` if not used again, in seconds: the
/// sooner of its idle and absolute expiry.
pub fn session_max_age(state: &Runtime, expires_ms: i64, now_ms: i64) -> i64 {
    let idle = state.config.auth.session_idle_secs as i64;
    ((expires_ms - now_ms) / 1000).min(idle).max(0)
}

/// A cookie's value from the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}
