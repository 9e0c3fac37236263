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

/// Store failures at the edge, for any resource. The records API answers with its
/// own messages for a missing record and a stale `If-Match`
/// (`records::service::store_error`); the rest is the same everywhere.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::NotFound => ApiError::not_found("Not found."),
            StoreError::VersionConflict => {
                ApiError::precondition_failed("It changed since the version given; fetch it again.")
            }
            StoreError::Constraint(errors) => ApiError::validation(errors),
            StoreError::Referenced(by) => ApiError::conflict(
                "record_referenced",
                format!("The record is still referenced by {by}; remove those references first."),
            ),
            StoreError::Schema(msg) => {
                tracing::warn!(error = %msg, "a request raced a schema change");
                ApiError::conflict(
                    "schema_changed",
                    "The collection changed during the request; retry it.",
                )
            }
            StoreError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "store unavailable");
                ApiError::unavailable("store_unavailable", "The store is busy; retry shortly.", 1)
            }
            StoreError::Internal(msg) => ApiError::internal(msg),
        }
    }
}

/// A refused list query: bad parameters as field errors marked as query errors, a
/// bad filter as `invalid_filter` with its position (also under `errors.filter`).
impl From<crate::records::query::QueryError> for ApiError {
    fn from(e: crate::records::query::QueryError) -> Self {
        use crate::records::query::QueryError;
        match e {
            QueryError::Params(errors) => {
                ApiError::validation(errors).with_extra("detailKind", Value::from("query"))
            }
            QueryError::Filter(e) => {
                let mut err = ApiError::bad_request(
                    "invalid_filter",
                    format!("filter: {} (at position {})", e.message, e.position),
                );
                push_field_error(&mut err.errors, "filter", e.code, e.message);
                if let Some(fe) = err.errors.get_mut("filter") {
                    fe.position = Some(e.position);
                }
                err.with_extra("position", Value::from(e.position))
            }
            QueryError::Search(e) => ApiError::invalid_search("search", &e),
        }
    }
}

impl ApiError {
    /// A search query that does not parse: `400 invalid_search` with the position,
    /// also under `errors.<param>`.
    pub fn invalid_search(param: &str, e: &crate::schema::search::SearchError) -> Self {
        let mut err = ApiError::bad_request(
            "invalid_search",
            format!("{param}: {} (at position {})", e.message, e.position),
        );
        push_field_error(&mut err.errors, param, "invalid_search", e.message.clone());
        if let Some(fe) = err.errors.get_mut(param) {
            fe.position = Some(e.position);
        }
        err.with_extra("position", Value::from(e.position))
    }
}

/// Password operations: a lockout is `429 signin_locked` with `Retry-After`; a
/// hashing failure is a 500 (logged).
impl From<crate::auth::password::PasswordError> for ApiError {
    fn from(e: crate::auth::password::PasswordError) -> Self {
        use crate::auth::password::PasswordError;
        match e {
            PasswordError::Locked { retry_after } => {
                let mut err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "signin_locked",
                    format!("Too many wrong passwords; try again in {retry_after} s."),
                );
                err.retry_after = Some(retry_after);
                err
            }
            PasswordError::Hashing(msg) => ApiError::internal(msg),
        }
    }
}

/// Record operations. A missing record and a stale `If-Match` get the records API's
/// own words; the rest maps as everywhere.
impl From<crate::records::error::RecordError> for ApiError {
    fn from(e: crate::records::error::RecordError) -> Self {
        use crate::records::error::RecordError;
        use crate::store::StoreError;
        match e {
            RecordError::UnknownCollection(name) => {
                let name: String = name.chars().take(48).collect();
                ApiError::not_found(format!("No collection named '{name}'."))
            }
            RecordError::Store(StoreError::NotFound) => {
                ApiError::not_found("No record with that id in this collection.")
            }
            RecordError::Store(StoreError::VersionConflict) => ApiError::precondition_failed(
                "The record changed since the version given in If-Match; fetch it again.",
            ),
            RecordError::Store(other) => ApiError::from(other),
            RecordError::Invalid(errors) => ApiError::validation(errors),
            RecordError::Query(q) => ApiError::from(q),
            RecordError::Refused(r) => ApiError::from(r),
            RecordError::HashBudget { retry_after } => {
                let mut err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "Too many password operations from this address; retry in {retry_after} s."
                    ),
                );
                err.retry_after = Some(retry_after);
                err
            }
            RecordError::Password(p) => ApiError::from(p),
            RecordError::Contention => ApiError::conflict(
                "write_contention",
                "The record is being changed by others too often; retry.",
            ),
            RecordError::Internal(msg) => ApiError::internal(msg),
        }
    }
}

/// Jobs and schedules.
impl From<crate::jobs::JobError> for ApiError {
    fn from(e: crate::jobs::JobError) -> Self {
        use crate::jobs::JobError;
        match e {
            JobError::Invalid(errors) => ApiError::validation(errors),
            JobError::NotFound => ApiError::not_found("No job or schedule with that id."),
            JobError::LeaseLost => ApiError::conflict(
                "lease_lost",
                "This lease is no longer the job's: it expired, the job was cancelled, or another worker holds it now.",
            ),
            JobError::Status { status, wanted } => ApiError::conflict(
                "invalid_status",
                format!("The job is {status}; this needs a job that is {wanted}."),
            ),
            JobError::Duplicate => ApiError::conflict(
                "duplicate_job",
                "A job with the same uniqueKey is queued or running.",
            ),
            JobError::ScheduleExists => {
                ApiError::conflict("schedule_exists", "A schedule with this name exists.")
            }
            JobError::Store(e) => ApiError::from(e),
        }
    }
}

/// Webhooks.
impl From<crate::webhooks::WebhookError> for ApiError {
    fn from(e: crate::webhooks::WebhookError) -> Self {
        use crate::webhooks::WebhookError;
        match e {
            WebhookError::Invalid(errors) => ApiError::validation(errors),
            WebhookError::NotFound => ApiError::not_found("No webhook or delivery with that id."),
            WebhookError::InFlight => ApiError::conflict(
                "delivery_in_flight",
                "An attempt of this delivery is running; retry once it ends.",
            ),
            WebhookError::Waiting => ApiError::conflict(
                "delivery_waiting",
                "This delivery of an ordered webhook waits its turn; it goes when the ones before it end.",
            ),
            WebhookError::Store(e) => ApiError::from(e),
        }
    }
}

/// Files: uploads, downloads, tokens.
impl From<crate::files::FileError> for ApiError {
    fn from(e: crate::files::FileError) -> Self {
        use crate::files::FileError;
        match e {
            FileError::TooLarge { field, limit } => {
                let mut err = ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "file_too_large",
                    format!("{field}: the upload is larger than {limit} bytes."),
                );
                push_field_error(
                    &mut err.errors,
                    field,
                    "too_large",
                    format!("must be at most {limit} bytes"),
                );
                err
            }
            FileError::Invalid(errors) => ApiError::validation(errors),
            FileError::BadBody(m) => ApiError::bad_request(
                "invalid_body",
                format!("The multipart body cannot be read: {m}"),
            ),
            FileError::NotFound => ApiError::not_found("No such file."),
            FileError::NeedsCaller => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "file_token_required",
                "This file is private: sign in, or pass a file token (POST /v1/files/token) as ?token=.",
            ),
            FileError::BadToken => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_file_token",
                "The file token is invalid, expired or revoked.",
            ),
            FileError::BadThumb(t) => ApiError::bad_request(
                "invalid_thumb",
                format!("The field lists no thumb size '{t}'."),
            ),
            FileError::Unsatisfiable { size } => {
                let mut err = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    format!("The range lies outside the file's {size} bytes."),
                );
                err.extra.insert("size".into(), Value::from(size));
                err
            }
            FileError::TooManyUploads => ApiError::conflict(
                "too_many_uploads",
                format!(
                    "You hold {} unattached uploads; attach or delete some first.",
                    crate::files::tus::MAX_PER_OWNER
                ),
            ),
            FileError::Locked => ApiError::new(
                StatusCode::LOCKED,
                "upload_locked",
                "Another request is appending to this upload; retry when it ends.",
            ),
            FileError::OffsetMismatch { offset } => ApiError::conflict(
                "offset_mismatch",
                format!("Upload-Offset must be the upload's offset, {offset}."),
            )
            .with_extra("offset", Value::from(offset)),
            FileError::Io(m) => ApiError::internal(format!("file bytes: {m}")),
            FileError::Store(e) => ApiError::from(e),
        }
    }
}

/// Reading the event log.
impl From<crate::events::EventsError> for ApiError {
    fn from(e: crate::events::EventsError) -> Self {
        use crate::events::EventsError;
        match e {
            EventsError::Purged { oldest } => ApiError::new(
                StatusCode::GONE,
                "events_purged",
                format!(
                    "Events before seq {oldest} are past retention; resume with after={}.",
                    oldest - 1
                ),
            )
            .with_extra("oldestSeq", Value::from(oldest)),
            EventsError::Store(e) => ApiError::from(e),
        }
    }
}

/// Identity operations: each variant to the problem the auth routes always answered.
impl From<crate::auth::error::AuthError> for ApiError {
    fn from(e: crate::auth::error::AuthError) -> Self {
        use crate::auth::error::AuthError;
        match e {
            AuthError::Store(e) => ApiError::from(e),
            AuthError::Record(e) => ApiError::from(e),
            AuthError::Password(e) => ApiError::from(e),
            AuthError::Field {
                field,
                code,
                message,
            } => ApiError::field(field, code, message),
            AuthError::Invalid(errors) => ApiError::validation(errors),
            AuthError::ApiKeyNotAllowed => ApiError::new(
                StatusCode::FORBIDDEN,
                "api_key_not_allowed",
                "Managing the account needs the account's own sign-in, not an API key.",
            ),
            AuthError::SignInRequired => {
                ApiError::unauthorized("Sign in first: this endpoint needs an account.")
            }
            AuthError::InvalidCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "The email or the password is wrong.",
            ),
            AuthError::Locked { retry_after } => {
                let mut err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "signin_locked",
                    format!("Too many failed sign-ins; try again in {retry_after} s."),
                );
                err.retry_after = Some(retry_after);
                err
            }
            AuthError::MfaRequired => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "mfa_required",
                "This account has a second factor: send the current code as \"totp\" (or a \"recoveryCode\").",
            ),
            AuthError::InvalidMfa => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_mfa",
                "The second-factor code is wrong or was already used.",
            ),
            AuthError::FactorNeedsAccount => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Second factors belong to signed-in accounts, not to keys or the admin token.",
            ),
            AuthError::MailNotConfigured => ApiError::conflict(
                "mail_not_configured",
                "This server sends no mail (mail.smtp_host is not set), so this flow is not available.",
            ),
            AuthError::Concurrent(what) => ApiError::conflict("conflict", what),
            AuthError::UnknownProvider(name) => ApiError::not_found(format!(
                "No identity provider named '{}'.",
                name.chars().take(40).collect::<String>()
            )),
            AuthError::IdentityProvider => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "identity_provider_failed",
                "The identity provider could not be reached or gave an unusable answer.",
            ),
            AuthError::OidcFailed(detail) => ApiError::bad_request("oidc_failed", detail),
            AuthError::SignupClosed => ApiError::forbidden(
                "signup_closed",
                "No account has this email and sign-up is closed.",
            ),
            AuthError::Internal(msg) => ApiError::internal(msg),
        }
    }
}

/// Access refusals at the edge: a key's scopes (403 `insufficient_scope`), or a rule
/// (401 for anonymous callers, 403 `forbidden` otherwise).
impl From<crate::access::Refusal> for ApiError {
    fn from(r: crate::access::Refusal) -> Self {
        use crate::access::Refusal;
        match r {
            Refusal::Scope { collection, action } => ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!(
                    "The API key's scopes do not allow {} on '{collection}'.",
                    action.as_str()
                ),
            ),
            Refusal::Rule {
                collection,
                action,
                anonymous: true,
            } => ApiError::unauthorized(format!(
                "Sign in: {} on '{collection}' is not open to anonymous callers.",
                action.as_str()
            )),
            Refusal::Rule { action, .. } => ApiError::forbidden(
                "forbidden",
                format!(
                    "The collection's {} rule does not allow this.",
                    action.as_str()
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    //! docs/errors.md against the sources: every code the server can emit is listed,
    //! and every listed code is one the sources use.

    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use regex::Regex;

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// A source file without its test module (always the last item of a file here),
    /// with every run of whitespace made one space, so multi-line calls read as one.
    fn normalised(path: &Path) -> String {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let code = match text.find("#[cfg(test)]") {
            Some(i) => &text[..i],
            None => &text,
        };
        code.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The top-level arguments of a call whose `(` ends just before `rest`, split on
    /// commas outside brackets, strings and char literals.
    fn call_args(rest: &str) -> Vec<String> {
        let mut args = Vec::new();
        let mut cur = String::new();
        let mut depth = 0usize;
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    cur.push(c);
                    while let Some(s) = chars.next() {
                        cur.push(s);
                        if s == '\\' {
                            if let Some(e) = chars.next() {
                                cur.push(e);
                            }
                        } else if s == '"' {
                            break;
                        }
                    }
                }
                '\'' => {
                    // A char literal ('x', '\0') or a lifetime ('a): copy up to the
                    // closing quote only when one follows closely.
                    cur.push(c);
                    let ahead: String = chars.clone().take(4).collect();
                    if let Some(end) = ahead.find('\'') {
                        for _ in 0..=end {
                            cur.push(chars.next().expect("peeked"));
                        }
                    }
                }
                '(' | '[' | '{' => {
                    depth += 1;
                    cur.push(c);
                }
                ')' | ']' | '}' if depth == 0 => {
                    args.push(cur.trim().to_owned());
                    return args;
                }
                ')' | ']' | '}' => {
                    depth -= 1;
                    cur.push(c);
                }
                ',' if depth == 0 => {
                    args.push(cur.trim().to_owned());
                    cur.clear();
                }
                _ => cur.push(c),
            }
        }
        args
    }

    /// The code in a call's argument when it is a plain string literal; other
    /// arguments (a variable, `e.code`) carry codes found by the other shapes.
    fn literal(arg: Option<&String>) -> Option<String> {
        let lit = Regex::new(r#"^"([a-z][a-z0-9_]*)"$"#).expect("regex");
        lit.captures(arg?).map(|c| c[1].to_owned())
    }

    /// (problem codes, field-error codes) the sources can emit.
    fn source_codes() -> (BTreeSet<String>, BTreeSet<String>) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        rust_files(&root.join("src"), &mut files);
        assert!(files.len() > 20, "found only {} source files", files.len());

        // (call, index of the code argument, is it a field-error code)
        let shapes: &[(&str, usize, bool)] = &[
            ("new", 1, false),
            ("bad_request", 0, false),
            ("forbidden", 0, false),
            ("conflict", 0, false),
            ("unavailable", 0, false),
            ("field", 1, true),
        ];
        let api_call =
            Regex::new(r"\b(?:ApiError|Self|RecordError|AuthError|JobError|FileError|WebhookError)::([a-z_]+) ?\(")
                .expect("regex");
        let push = Regex::new(r"\bpush_field_error ?\(").expect("regex");
        // A value check's verdict, `Err(("code", message))` or `.ok_or(("code", ...))`.
        let tuple =
            Regex::new(r#"\b(?:Err|ok_or) ?\( ?\( ?"([a-z][a-z0-9_]*)" ?,"#).expect("regex");
        // Filter and rule errors: `err("code", span, ...)`, `FilterError { code: "..." }`.
        let filter_err =
            Regex::new(r#"(?:^|[^A-Za-z0-9_.])err ?\( ?"([a-z][a-z0-9_]*)" ?,"#).expect("regex");
        let filter_lit =
            Regex::new(r#"\bFilterError \{[^}]*?\bcode: "([a-z][a-z0-9_]*)""#).expect("regex");
        // Arms of a `match` that names codes: `400 => "bad_request"`, `Self::Empty => "empty"`.
        let arm = Regex::new(r#"=> "([a-z][a-z0-9_]*)""#).expect("regex");

        let (mut problems, mut fields) = (BTreeSet::new(), BTreeSet::new());
        for file in &files {
            let text = normalised(file);
            for m in api_call.captures_iter(&text) {
                let name = m.get(1).expect("group").as_str();
                let Some(&(_, idx, is_field)) = shapes.iter().find(|s| s.0 == name) else {
                    continue;
                };
                let args = call_args(&text[m.get(0).expect("match").end()..]);
                if let Some(code) = literal(args.get(idx)) {
                    if is_field { &mut fields } else { &mut problems }.insert(code);
                }
            }
            for m in push.find_iter(&text) {
                if let Some(code) = literal(call_args(&text[m.end()..]).get(2)) {
                    fields.insert(code);
                }
            }
            for re in [&tuple, &filter_err, &filter_lit] {
                fields.extend(re.captures_iter(&text).map(|c| c[1].to_owned()));
            }
            if let Some(i) = text.find("fn code_for_status(") {
                let body = &text[i..];
                let body = &body[..body.find(" } }").expect("end of code_for_status")];
                problems.extend(arm.captures_iter(body).map(|c| c[1].to_owned()));
            }
        }
        // The filter language's parse errors, field errors of `filter` and `rules.*`.
        let filter_src = root.join("../lintel-filter/src/error.rs");
        let text = normalised(&filter_src);
        let i = text.find("fn as_str(").expect("ParseErrorCode::as_str");
        let body = &text[i..];
        let body = &body[..body.find(" } }").expect("end of as_str")];
        let before = fields.len();
        fields.extend(arm.captures_iter(body).map(|c| c[1].to_owned()));
        assert!(fields.len() > before, "no filter parse codes found");
        (problems, fields)
    }

    /// (problem codes, field-error codes) in docs/errors.md: the `Code` column of the
    /// tables under "## Problem codes" and under "## Field-error codes".
    fn doc_codes() -> (BTreeSet<String>, BTreeSet<String>) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/errors.md");
        let doc = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let code = Regex::new(r"^`([a-z][a-z0-9_]*)`$").expect("regex");
        let (mut problems, mut fields) = (BTreeSet::new(), BTreeSet::new());
        let mut section = None;
        let mut column = None;
        for line in doc.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                section = match h.trim() {
                    "Problem codes" => Some(false),
                    "Field-error codes" => Some(true),
                    _ => None,
                };
                column = None;
                continue;
            }
            let Some(is_field) = section else { continue };
            if !line.starts_with('|') {
                column = None;
                continue;
            }
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            match column {
                None => column = cells.iter().position(|c| *c == "Code"),
                Some(i) => {
                    let Some(cell) = cells.get(i) else { continue };
                    // The separator row, and explanatory rows such as "(the failing
                    // operation's code)".
                    if cell.starts_with("---") || cell.starts_with(":--") || cell.starts_with('(') {
                        continue;
                    }
                    let c = code
                        .captures(cell)
                        .unwrap_or_else(|| panic!("docs/errors.md: not a `code` cell: {line}"));
                    if is_field { &mut fields } else { &mut problems }.insert(c[1].to_owned());
                }
            }
        }
        (problems, fields)
    }

    #[test]
    fn errors_doc_lists_every_code() {
        let (src_problems, src_fields) = source_codes();
        // A broken extractor must not pass by finding nothing.
        assert!(
            src_problems.len() >= 50,
            "extracted only {} problem codes: {src_problems:?}",
            src_problems.len()
        );
        assert!(
            src_fields.len() >= 60,
            "extracted only {} field-error codes: {src_fields:?}",
            src_fields.len()
        );
        for known in [
            "validation_failed",
            "internal",
            "rate_limited",
            "signin_locked",
            "route_not_found",
        ] {
            assert!(
                src_problems.contains(known),
                "extractor missed problem code {known}"
            );
        }
        for known in [
            "required",
            "unique",
            "type_mismatch",
            "too_deep",
            "invalid_expand",
            "too_common",
        ] {
            assert!(
                src_fields.contains(known),
                "extractor missed field-error code {known}"
            );
        }

        let (doc_problems, doc_fields) = doc_codes();
        let missing_p: Vec<_> = src_problems.difference(&doc_problems).collect();
        let missing_f: Vec<_> = src_fields.difference(&doc_fields).collect();
        let stale_p: Vec<_> = doc_problems.difference(&src_problems).collect();
        let stale_f: Vec<_> = doc_fields.difference(&src_fields).collect();
        assert!(
            missing_p.is_empty()
                && missing_f.is_empty()
                && stale_p.is_empty()
                && stale_f.is_empty(),
            "docs/errors.md is out of date.\n\
             problem codes the server emits but the doc lacks: {missing_p:?}\n\
             field-error codes the server emits but the doc lacks: {missing_f:?}\n\
             problem codes in the doc that no source emits: {stale_p:?}\n\
             field-error codes in the doc that no source emits: {stale_f:?}"
        );
    }

    /// Prints what the extractor finds (cargo test -- --ignored --nocapture).
    #[test]
    #[ignore]
    fn errors_doc_print_source_codes() {
        let (p, f) = source_codes();
        println!("problem codes ({}): {p:?}", p.len());
        println!("field-error codes ({}): {f:?}", f.len());
    }
}
