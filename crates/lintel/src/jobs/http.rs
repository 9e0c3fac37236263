//! The `http` kind: one request to another server through the outbound guard. A 2xx
//! answer is success; 429, 5xx, timeouts and connection failures are retried
//! (`Retry-After` honoured); any other answer is final. At most [`MAX_BODY`] bytes of
//! the answer are kept in the job's result.

use std::time::Duration;

use serde_json::{Value, json};

use crate::outbound::{Outbound, Refused};

/// The most bytes of an answer's body kept in the result.
pub const MAX_BODY: usize = 64 * 1024;
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
const MAX_HEADERS: usize = 50;

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    /// Whether another attempt may succeed.
    pub retry: bool,
    /// How long the server asked us to wait.
    pub retry_after_ms: Option<i64>,
    /// What to keep in the job's result (the answer that failed).
    pub result: Value,
}

impl Failure {
    fn final_(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: false,
            retry_after_ms: None,
            result: Value::Null,
        }
    }

    fn again(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: true,
            retry_after_ms: None,
            result: Value::Null,
        }
    }
}

/// A payload member and what is wrong with it.
fn bad(field: &'static str, message: String) -> (&'static str, String) {
    (field, message)
}

/// Checks an `http` payload at enqueue time: the field (under `payload.`) and why.
pub fn check_payload(p: &Value) -> Result<(), (&'static str, String)> {
    let Some(obj) = p.as_object() else {
        return Err(bad(
            "url",
            "the payload must be an object with a url".into(),
        ));
    };
    for k in obj.keys() {
        if !matches!(k.as_str(), "url" | "method" | "headers" | "body") {
            return Err(bad(
                "url",
                format!("unknown member {k:?} (url, method, headers, body)"),
            ));
        }
    }
    match obj.get("url") {
        Some(Value::String(u)) if u.len() <= 2048 => {
            let parsed =
                url::Url::parse(u).map_err(|_| bad("url", "must be an absolute URL".to_owned()))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(bad(
                    "url",
                    "must be an http or https URL with a host".into(),
                ));
            }
        }
        _ => {
            return Err(bad(
                "url",
                "is required: an http(s) URL of at most 2048 bytes".into(),
            ));
        }
    }
    match obj.get("method") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if METHODS.contains(&m.to_ascii_uppercase().as_str()) => {}
        Some(_) => return Err(bad("method", format!("one of {}", METHODS.join(", ")))),
    }
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) if h.len() <= MAX_HEADERS => {
            for (k, v) in h {
                let name_ok = reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok();
                let value_ok = v
                    .as_str()
                    .is_some_and(|s| reqwest::header::HeaderValue::from_str(s).is_ok());
                if !name_ok || !value_ok {
                    return Err(bad(
                        "headers",
                        format!("header {k:?} must be a valid name with a string value"),
                    ));
                }
                if matches!(
                    k.to_ascii_lowercase().as_str(),
                    "host" | "content-length" | "transfer-encoding" | "connection"
                ) {
                    return Err(bad("headers", format!("header {k:?} is set by the server")));
                }
            }
        }
        Some(_) => {
            return Err(bad(
                "headers",
                format!("an object of at most {MAX_HEADERS} string headers"),
            ));
        }
    }
    Ok(())
}

/// Seconds (or an HTTP date) from a `Retry-After` header, in milliseconds from now.
fn retry_after(h: &reqwest::header::HeaderMap, now_ms: i64) -> Option<i64> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<i64>() {
        return Some(secs.max(0).saturating_mul(1000));
    }
    crate::clock::parse_http_date(v).map(|s| (s.saturating_mul(1000) - now_ms).max(0))
}

/// Reads at most [`MAX_BODY`] bytes of an answer.
async fn read_capped(mut res: reqwest::Response) -> (String, bool) {
    let mut buf = Vec::new();
    let mut truncated = false;
    while let Ok(Some(chunk)) = res.chunk().await {
        let room = MAX_BODY - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    (String::from_utf8_lossy(&buf).into_owned(), truncated)
}

/// Runs one `http` job attempt.
pub async fn run(
    out: &Outbound,
    payload: &Value,
    timeout: Duration,
    now_ms: i64,
) -> Result<Value, Failure> {
    check_payload(payload).map_err(|(f, m)| Failure::final_(format!("payload.{f}: {m}")))?;
    let raw = payload
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let url = out.guard.check_url(raw).map_err(|r| match r {
        Refused::BadUrl(m) | Refused::Internal(m) => {
            Failure::final_(format!("refused destination: {m}"))
        }
    })?;
    let method = payload
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("POST")
        .to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| Failure::final_("payload.method: not a method"))?;
    let mut req = out.client.request(method, url).timeout(timeout);
    let mut has_type = false;
    if let Some(h) = payload.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            if let Some(v) = v.as_str() {
                has_type |= k.eq_ignore_ascii_case("content-type");
                req = req.header(k.as_str(), v);
            }
        }
    }
    match payload.get("body") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => req = req.body(s.clone()),
        Some(other) => {
            if !has_type {
                req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
            }
            req = req.body(other.to_string());
        }
    }
    let res = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Err(Failure::again("the request timed out")),
        Err(e) => {
            // The guard's refusal of a resolved address is final; a failed
            // connection may work next time.
            let text = format!("{e:?}");
            if text.contains("no address outbound requests may reach") {
                return Err(Failure::final_(
                    "refused destination: the host resolves only to internal addresses",
                ));
            }
            return Err(Failure::again(format!(
                "the request failed: {}",
                connect_reason(&e)
            )));
        }
    };
    let status = res.status();
    let wait = retry_after(res.headers(), now_ms);
    let (body, truncated) = read_capped(res).await;
    let result = json!({ "status": status.as_u16(), "body": body, "truncated": truncated });
    if status.is_success() {
        return Ok(result);
    }
    let message = format!("the server answered {}", status.as_u16());
    if status.as_u16() == 429 || status.is_server_error() {
        Err(Failure {
            message,
            retry: true,
            retry_after_ms: wait,
            result,
        })
    } else {
        Err(Failure {
            message,
            retry: false,
            retry_after_ms: None,
            result,
        })
    }
}

/// A short reason for a failed connection (no internals of the client).
fn connect_reason(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "could not connect"
    } else if e.is_request() {
        "the request could not be sent"
    } else {
        "the connection failed"
    }
}
