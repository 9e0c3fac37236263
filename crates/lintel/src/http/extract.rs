//! Extractors that fail with Lintel's problem shape: a JSON body ([`JsonBody`]) and the
//! admin caller ([`Admin`]). A handler that takes `Admin` can only run after the bearer
//! token was checked.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body. Wrong content type -> 415, over the limit -> 413, malformed or
/// mistyped JSON -> 400, all as problems.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_json_content_type(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "The request body is larger than the server accepts.",
                )
            } else {
                ApiError::bad_request("invalid_body", "The request body could not be read.")
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Refuses bodies that do not say they are JSON.
pub fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "The request body must be JSON (Content-Type: application/json).",
        ))
    }
}

/// Parses JSON with errors that say where and why.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "The request body is empty; JSON was expected.",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => {
                ApiError::bad_request("invalid_body", format!("The JSON body does not fit: {e}."))
            }
            _ => ApiError::bad_request(
                "invalid_json",
                format!(
                    "The request body is not valid JSON (line {}, column {}).",
                    e.line(),
                    e.column()
                ),
            )
            .with_extra("line", e.line().into())
            .with_extra("column", e.column().into()),
        }
    })
}

/// Proof that the caller is a superuser (the admin token, a superuser's session or
/// token, or an API key a superuser made whose scopes cover the route: see
/// [`admin_scope`]).
pub struct Admin(pub crate::access::Caller);

/// The scope an API key needs for an admin route: `<area>:read` for GET and HEAD,
/// `<area>:write` otherwise, where the area is the path's first segment after `/v1`
/// (`collections`, `audit`). `<area>:*` covers both; the `*` collection wildcard of
/// record scopes does not reach admin areas.
pub fn admin_scope(method: &axum::http::Method, path: &str) -> (String, &'static str) {
    let area = path
        .trim_start_matches('/')
        .trim_start_matches("v1/")
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let access = if matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD) {
        "read"
    } else {
        "write"
    };
    (area, access)
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = crate::access::Caller::from_request_parts(parts, state).await?;
        if caller.is_superuser() {
            let (area, access) = admin_scope(&parts.method, parts.uri.path());
            if !caller.area_allows(&area, access) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    format!("The API key's scopes do not include {area}:{access}."),
                ));
            }
            Ok(Admin(caller))
        } else if caller.is_anonymous() {
            Err(ApiError::unauthorized(
                "This endpoint needs a superuser: Authorization: Bearer <admin token or superuser token>.",
            ))
        } else {
            Err(ApiError::forbidden(
                "forbidden",
                "This endpoint is for superusers.",
            ))
        }
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A record write's body: JSON (read up to `http.body_limit`), or
/// `multipart/form-data` with files, left unread for the handler to stream (the
/// records routes lift the body limit; `crate::files::upload` counts instead).
pub enum RecordBody {
    Json(serde_json::Map<String, serde_json::Value>),
    Multipart(axum::extract::Multipart),
}

impl FromRequest<AppState> for RecordBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data")
            });
        if multipart {
            return axum::extract::Multipart::from_request(req, state)
                .await
                .map(RecordBody::Multipart)
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_body",
                        "The multipart body has no boundary or cannot be read.",
                    )
                });
        }
        check_json_content_type(req.headers())?;
        let bytes = axum::body::to_bytes(req.into_body(), state.config.http.body_limit)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "The request body is larger than the server accepts.",
                )
            })?;
        parse_json(&bytes).map(RecordBody::Json)
    }
}

/// A paging query parameter (`page`, `perPage`): a whole number from 1 to `max`, or a
/// 400 `invalid` under its name.
pub fn page_param(v: &str, field: &str, max: i64) -> Result<i64, ApiError> {
    match v.parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::field(
            field,
            "invalid",
            format!("a whole number from 1 to {max}"),
        )),
    }
}
