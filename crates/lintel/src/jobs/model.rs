//! What a job is: its status, the request that enqueues one (checked field by field)
//! and its JSON form.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::clock::format_ms;
use crate::validation::{FieldErrors, push_field_error};

/// Kinds Lintel runs itself; an external worker claims them only by naming them.
pub const BUILTIN_KINDS: [&str; 7] = [
    "http",
    "mail",
    "webhook",
    "import",
    "export",
    "housekeeping",
    "search_rebuild",
];
/// Kinds only the server enqueues (through their own endpoints, its mail flows or its
/// own schedule).
pub const RESERVED_KINDS: [&str; 6] = [
    "mail",
    "webhook",
    "import",
    "export",
    "housekeeping",
    "search_rebuild",
];

pub const DEFAULT_QUEUE: &str = "default";
pub const DEFAULT_MAX_ATTEMPTS: i64 = 25;
pub const MAX_MAX_ATTEMPTS: i64 = 1000;
pub const DEFAULT_TIMEOUT_SECS: i64 = 300;
pub const MAX_TIMEOUT_SECS: i64 = 86_400;
/// The largest payload, result or progress, in bytes of JSON.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Dead,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Retrying,
        JobStatus::Succeeded,
        JobStatus::Dead,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Retrying => "retrying",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Dead => "dead",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// A finished job changes no more unless someone retries it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Dead | JobStatus::Cancelled
        )
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub queue: String,
    pub payload: Value,
    pub priority: i64,
    pub status: JobStatus,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_at: i64,
    pub unique_key: Option<String>,
    pub timeout_ms: i64,
    pub lease_id: Option<String>,
    pub lease_expires: Option<i64>,
    pub last_error: Option<String>,
    pub progress: Value,
    pub result: Value,
    /// The caller who started an import or export (`<collection>/<id>`), who may read it.
    pub owner: Option<String>,
    pub created: i64,
    pub updated: i64,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub lease_ms: Option<i64>,
    pub schedule_id: Option<String>,
}

/// The href of a job.
pub fn job_href(id: &str) -> String {
    format!("/v1/jobs/{id}")
}

impl Job {
    /// The job as clients see it (the lease id only where a worker claimed it).
    pub fn to_json(&self, with_lease: bool) -> Value {
        let ts = |ms: Option<i64>| ms.map_or(Value::Null, |m| Value::String(format_ms(m)));
        let mut links = Map::new();
        links.insert("self".into(), json!({ "href": job_href(&self.id) }));
        links.insert(
            "events".into(),
            json!({ "href": format!("{}/events", job_href(&self.id)) }),
        );
        if self.kind == "export" && self.status == JobStatus::Succeeded {
            links.insert(
                "result".into(),
                json!({ "href": format!("{}/result", job_href(&self.id)) }),
            );
        }
        // A mail's body holds a single-use link: it never leaves the server.
        let payload = if self.kind == "mail" {
            json!({ "to": self.payload["to"], "subject": self.payload["subject"] })
        } else {
            self.payload.clone()
        };
        let mut out = json!({
            "id": self.id,
            "kind": self.kind,
            "queue": self.queue,
            "payload": payload,
            "priority": self.priority,
            "status": self.status.as_str(),
            "attempts": self.attempts,
            "maxAttempts": self.max_attempts,
            "runAt": ts(Some(self.run_at)),
            "uniqueKey": self.unique_key,
            "timeout": self.timeout_ms / 1000,
            "lastError": self.last_error,
            "progress": self.progress,
            "result": self.result,
            "created": ts(Some(self.created)),
            "updated": ts(Some(self.updated)),
            "startedAt": ts(self.started),
            "finishedAt": ts(self.finished),
            "scheduleId": self.schedule_id,
            "_links": Value::Object(links),
        });
        if self.status == JobStatus::Running
            && let Some(obj) = out.as_object_mut()
        {
            obj.insert("leaseExpiresAt".into(), ts(self.lease_expires));
            if with_lease {
                obj.insert(
                    "leaseId".into(),
                    self.lease_id.clone().map_or(Value::Null, Value::String),
                );
            }
        }
        out
    }
}

/// `POST /v1/jobs` as sent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewJobInput {
    pub kind: Option<Value>,
    pub queue: Option<Value>,
    pub payload: Option<Value>,
    pub priority: Option<Value>,
    pub run_at: Option<Value>,
    pub max_attempts: Option<Value>,
    pub unique_key: Option<Value>,
    pub timeout: Option<Value>,
}

/// A job to enqueue, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub kind: String,
    pub queue: String,
    pub payload: Value,
    pub priority: i64,
    pub run_at: Option<i64>,
    pub max_attempts: i64,
    pub unique_key: Option<String>,
    pub timeout_ms: i64,
    pub owner: Option<String>,
    pub schedule_id: Option<String>,
}

impl NewJob {
    /// A job of `kind` with defaults.
    pub fn of(kind: &str, payload: Value) -> Self {
        Self {
            kind: kind.to_owned(),
            queue: DEFAULT_QUEUE.to_owned(),
            payload,
            priority: 0,
            run_at: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
            timeout_ms: DEFAULT_TIMEOUT_SECS * 1000,
            owner: None,
            schedule_id: None,
        }
    }
}

/// A name of a kind or queue: 1 to 64 of `a-z A-Z 0-9 _ . : -`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn int_in(
    errors: &mut FieldErrors,
    field: &str,
    v: Option<&Value>,
    range: std::ops::RangeInclusive<i64>,
    default: i64,
) -> i64 {
    match v {
        None | Some(Value::Null) => default,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(x) if range.contains(&x) => x,
            _ => {
                push_field_error(
                    errors,
                    field,
                    "out_of_range",
                    format!("a whole number from {} to {}", range.start(), range.end()),
                );
                default
            }
        },
        Some(_) => {
            push_field_error(errors, field, "invalid_type", "must be a whole number");
            default
        }
    }
}

/// Checks a request to enqueue a job. `prefix` names the fields inside another body
/// (`job.` in a schedule). Reserved kinds are refused unless `internal`.
pub fn check(input: &NewJobInput, prefix: &str, internal: bool) -> Result<NewJob, FieldErrors> {
    let mut errors = FieldErrors::new();
    let f = |name: &str| format!("{prefix}{name}");
    let kind = match &input.kind {
        Some(Value::String(k)) if valid_name(k) => {
            if RESERVED_KINDS.contains(&k.as_str()) && !internal {
                push_field_error(
                    &mut errors,
                    f("kind"),
                    "reserved",
                    "import and export jobs start at their collection's endpoints; mail and housekeeping are the server's own",
                );
            }
            k.clone()
        }
        Some(Value::String(_)) => {
            push_field_error(
                &mut errors,
                f("kind"),
                "invalid",
                "1 to 64 letters, digits, '_', '.', ':' or '-'",
            );
            String::new()
        }
        None | Some(Value::Null) => {
            push_field_error(&mut errors, f("kind"), "required", "is required");
            String::new()
        }
        Some(_) => {
            push_field_error(&mut errors, f("kind"), "invalid_type", "must be a string");
            String::new()
        }
    };
    let queue = match &input.queue {
        None | Some(Value::Null) => DEFAULT_QUEUE.to_owned(),
        Some(Value::String(q)) if valid_name(q) => q.clone(),
        Some(_) => {
            push_field_error(
                &mut errors,
                f("queue"),
                "invalid",
                "1 to 64 letters, digits, '_', '.', ':' or '-'",
            );
            String::new()
        }
    };
    let payload = input.payload.clone().unwrap_or(Value::Null);
    if payload.to_string().len() > MAX_PAYLOAD_BYTES {
        push_field_error(
            &mut errors,
            f("payload"),
            "too_large",
            format!("at most {MAX_PAYLOAD_BYTES} bytes of JSON"),
        );
    }
    let priority = int_in(
        &mut errors,
        &f("priority"),
        input.priority.as_ref(),
        -1000..=1000,
        0,
    );
    let max_attempts = int_in(
        &mut errors,
        &f("maxAttempts"),
        input.max_attempts.as_ref(),
        1..=MAX_MAX_ATTEMPTS,
        DEFAULT_MAX_ATTEMPTS,
    );
    let timeout = int_in(
        &mut errors,
        &f("timeout"),
        input.timeout.as_ref(),
        1..=MAX_TIMEOUT_SECS,
        DEFAULT_TIMEOUT_SECS,
    );
    let run_at = match &input.run_at {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            match crate::clock::normalize_datetime(s).and_then(|n| crate::clock::ts_millis(&n)) {
                Some(ms) => Some(ms),
                None => {
                    push_field_error(
                        &mut errors,
                        f("runAt"),
                        "invalid_datetime",
                        "must be an RFC 3339 date-time",
                    );
                    None
                }
            }
        }
        Some(_) => {
            push_field_error(&mut errors, f("runAt"), "invalid_type", "must be a string");
            None
        }
    };
    let unique_key = match &input.unique_key {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 200 => Some(k.clone()),
        Some(_) => {
            push_field_error(
                &mut errors,
                f("uniqueKey"),
                "invalid",
                "a string of 1 to 200 bytes",
            );
            None
        }
    };
    if kind == "http"
        && let Err((field, msg)) = crate::jobs::http::check_payload(&payload)
    {
        push_field_error(&mut errors, f(&format!("payload.{field}")), "invalid", msg);
    }
    if errors.is_empty() {
        Ok(NewJob {
            kind,
            queue,
            payload,
            priority,
            run_at,
            max_attempts,
            unique_key,
            timeout_ms: timeout * 1000,
            owner: None,
            schedule_id: None,
        })
    } else {
        Err(errors)
    }
}
