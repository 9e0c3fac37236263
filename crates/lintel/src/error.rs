//! The one error type at the HTTP edge, rendered as RFC 9457 `application/problem+json`.
//!
//! Every capability turns its own failures into an [`ApiError`] explicitly. An
//! `ApiError` never carries internals to the client: an internal error is logged here,
//! inside the request's span (so the log line has the request id), and the client gets
//! a generic 500. The body is rendered by the edge middleware (`http::edge`), which adds
//! the `requestId`; handlers only attach the [`Problem`] to the response.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

pub use crate::validation::{FieldError, FieldErrors, push_field_error};

/// The problem document, without the request id (added at the edge).
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: FieldErrors,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An HTTP outcome that is not a success.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub errors: FieldErrors,
    pub extra: Map<String, Value>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            errors: FieldErrors::new(),
            extra: Map::new(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 400 with one field error.
    pub fn field(field: &str, code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut err = Self::bad_request("validation_failed", format!("{field}: {message}"));
        push_field_error(&mut err.errors, field, code, message);
        err
    }

    /// 400 with many field errors.
    pub fn validation(errors: FieldErrors) -> Self {
        let detail = match errors.len() {
            1 => "One field is invalid.".to_owned(),
            n => format!("{n} fields are invalid."),
        };
        let mut err = Self::bad_request("validation_failed", detail);
        err.errors = errors;
        err
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            detail,
        )
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after: u64) -> Self {
        let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail);
        err.retry_after = Some(retry_after);
        err
    }

    /// A failure the client cannot fix. The cause is logged (with the request id of the
    /// current span) and never returned.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The server failed to handle the request; the request id identifies it in the logs.",
        )
    }

    pub fn with_extra(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_uri: format!("urn:lintel:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            errors: self.errors.clone(),
            extra: self.extra.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res.extensions_mut().insert(self.problem());
        res
    }
}

/// Renders a problem with its request id into the final body bytes.
pub fn render_problem(problem: &Problem, request_id: &str) -> Vec<u8> {
    let mut value = match serde_json::to_value(problem) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    value.insert("requestId".into(), Value::String(request_id.to_owned()));
    serde_json::to_vec(&Value::Object(value)).unwrap_or_default()
}

/// A generic code for a status, for errors produced outside Lintel's handlers
/// (axum rejections, the body limit, the router).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        408 => "request_timeout",
        409 => "conflict",
        411 => "length_required",
        412 => "precondition_failed",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        429 => "too_many_requests",
        431 => "headers_too_large",
        503 => "unavailable",
        _ if status.is_server_error() => "internal",
        _ => "error",
    }
}
