//! Webhooks: subscriptions to the event log, delivered as signed HTTP requests (the
//! Standard Webhooks scheme: `webhook-id`, `webhook-timestamp`, `webhook-signature`).
//! A webhook is a row in `_lintel_webhooks`; the fan-out ([`dispatch`]) follows the
//! event log and, for each event a webhook wants, writes a delivery and queues a
//! `webhook` job in one transaction with the fan-out's position, so each event is
//! delivered to each webhook once; the job ([`deliver`]) makes the attempts and logs
//! them on the delivery. Every request goes through the outbound guard.

pub mod deliver;
pub mod dispatch;
pub mod error;
pub mod routes;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::Sha256;

use crate::clock::format_ms;
use crate::runtime::Runtime;
use crate::store::{Sql, SqlValue, StoreError, WriteError, WriteOp};
use crate::validation::{FieldErrors, push_field_error};
pub use error::WebhookError;
pub use routes::router;

/// The columns [`decode`] reads, in order.
const COLS: &str = "id, url, events, collection, filter, description, enabled, headers, ordered, secret, old_secret, old_secret_until, after_seq, failing_since, created, updated";

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_GRACE_MS: i64 = 24 * 3600 * 1000;
/// The most webhooks one store holds.
pub const MAX_WEBHOOKS: i64 = 1000;

/// A webhook as stored.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub collection: Option<String>,
    pub filter: Option<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub headers: Map<String, Value>,
    pub ordered: bool,
    pub secret: String,
    pub old_secret: Option<String>,
    pub old_secret_until: Option<i64>,
    pub after_seq: i64,
    pub failing_since: Option<i64>,
    pub created: i64,
    pub updated: i64,
}

fn decode(r: &[Value]) -> Option<Webhook> {
    let s = |i: usize| r.get(i).and_then(Value::as_str).map(str::to_owned);
    let n = |i: usize| r.get(i).and_then(Value::as_i64);
    let j = |i: usize| {
        r.get(i)
            .and_then(Value::as_str)
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
    };
    Some(Webhook {
        id: s(0)?,
        url: s(1)?,
        events: j(2)
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        collection: s(3),
        filter: s(4),
        description: s(5),
        enabled: n(6).unwrap_or(0) != 0,
        headers: j(7)
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default(),
        ordered: n(8).unwrap_or(0) != 0,
        secret: s(9)?,
        old_secret: s(10),
        old_secret_until: n(11),
        after_seq: n(12).unwrap_or(0),
        failing_since: n(13),
        created: n(14).unwrap_or(0),
        updated: n(15).unwrap_or(0),
    })
}

impl Webhook {
    /// The webhook as clients see it (never the secret).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "collection": self.collection,
            "filter": self.filter,
            "description": self.description,
            "enabled": self.enabled,
            "headers": self.headers,
            "ordered": self.ordered,
            "failingSince": self.failing_since.map(format_ms),
            "created": format_ms(self.created),
            "updated": format_ms(self.updated),
            "_links": {
                "self": { "href": format!("/v1/webhooks/{}", self.id) },
                "deliveries": { "href": format!("/v1/webhooks/{}/deliveries", self.id) },
            },
        })
    }

    /// Whether the webhook wants an event of `kind` (`record.*` and `*` match by prefix).
    pub fn wants(&self, kind: &str) -> bool {
        self.events.iter().any(|p| {
            p == "*"
                || p == kind
                || p.strip_suffix(".*").is_some_and(|prefix| {
                    kind.strip_prefix(prefix)
                        .is_some_and(|r| r.starts_with('.'))
                })
        })
    }
}

/// A new secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    if getrandom::fill(&mut b).is_err() {
        // The OS generator does not fail on supported platforms; a predictable secret
        // would be worse than stopping.
        std::process::abort();
    }
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b)
    )
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the secret's key.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// `POST /v1/webhooks` and `PATCH` as sent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    pub url: Option<Value>,
    pub events: Option<Value>,
    pub collection: Option<Value>,
    pub filter: Option<Value>,
    pub description: Option<Value>,
    pub enabled: Option<bool>,
    pub headers: Option<Value>,
    pub ordered: Option<bool>,
}

/// Headers a webhook may not set (the request's own).
const RESERVED_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

fn valid_pattern(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    let body = p.strip_suffix(".*").unwrap_or(p);
    !body.is_empty()
        && p.len() <= 64
        && body
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
}

/// Checks a webhook's fields, over `current` for a PATCH; returns the values to store.
fn check(
    rt: &Runtime,
    input: &WebhookInput,
    current: Option<&Webhook>,
) -> Result<Webhook, WebhookError> {
    let mut errors = FieldErrors::new();
    let mut w = current.cloned().unwrap_or(Webhook {
        id: crate::ids::record_id(),
        url: String::new(),
        events: Vec::new(),
        collection: None,
        filter: None,
        description: None,
        enabled: true,
        headers: Map::new(),
        ordered: false,
        secret: String::new(),
        old_secret: None,
        old_secret_until: None,
        after_seq: 0,
        failing_since: None,
        created: 0,
        updated: 0,
    });
    match &input.url {
        Some(Value::String(u)) if u.len() <= 2048 => match rt.jobs.outbound.guard.check_url(u) {
            Ok(_) => w.url = u.clone(),
            Err(crate::outbound::Refused::Internal(m)) => {
                push_field_error(&mut errors, "url", "refused_destination", m)
            }
            Err(crate::outbound::Refused::BadUrl(m)) => {
                push_field_error(&mut errors, "url", "invalid", m)
            }
        },
        None if current.is_some() => {}
        None => push_field_error(&mut errors, "url", "required", "an http or https URL"),
        Some(_) => push_field_error(
            &mut errors,
            "url",
            "invalid",
            "an http or https URL of at most 2048 bytes",
        ),
    }
    match &input.events {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= 50 => {
            let list: Vec<String> = a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            if list.len() != a.len() || !list.iter().all(|p| valid_pattern(p)) {
                push_field_error(
                    &mut errors,
                    "events",
                    "invalid",
                    "event types such as record.created, or record.* for all of a kind",
                );
            } else {
                w.events = list;
            }
        }
        None if current.is_some() => {}
        None => push_field_error(
            &mut errors,
            "events",
            "required",
            "the event types to deliver",
        ),
        Some(_) => push_field_error(&mut errors, "events", "invalid", "1 to 50 event types"),
    }
    match &input.collection {
        None => {}
        Some(Value::Null) => w.collection = None,
        Some(Value::String(c)) if rt.catalog().get(c).is_some() => w.collection = Some(c.clone()),
        Some(_) => push_field_error(
            &mut errors,
            "collection",
            "unknown_collection",
            "no collection of that name",
        ),
    }
    match &input.filter {
        None => {}
        Some(Value::Null) => w.filter = None,
        Some(Value::String(f)) if f.len() <= 2048 => {
            w.filter = Some(f.clone()).filter(|f| !f.trim().is_empty())
        }
        Some(_) => push_field_error(
            &mut errors,
            "filter",
            "invalid",
            "a filter of at most 2048 bytes",
        ),
    }
    if let Some(f) = &w.filter {
        match w.collection.as_deref().and_then(|c| rt.catalog().get(c)) {
            None => push_field_error(
                &mut errors,
                "filter",
                "needs_collection",
                "a filter needs the webhook's collection",
            ),
            Some(coll) => {
                if let Err(e) = crate::store::filter::check(&coll, f) {
                    push_field_error(
                        &mut errors,
                        "filter",
                        e.code,
                        format!("{} (at position {})", e.message, e.position),
                    );
                }
            }
        }
    }
    match &input.description {
        None => {}
        Some(Value::Null) => w.description = None,
        Some(Value::String(d)) if d.len() <= 500 => w.description = Some(d.clone()),
        Some(_) => push_field_error(
            &mut errors,
            "description",
            "invalid",
            "at most 500 characters",
        ),
    }
    if let Some(e) = input.enabled {
        w.enabled = e;
        if e {
            w.failing_since = None;
        }
    }
    if let Some(o) = input.ordered {
        w.ordered = o;
    }
    match &input.headers {
        None => {}
        Some(Value::Null) => w.headers = Map::new(),
        Some(Value::Object(h)) if h.len() <= 20 => {
            let ok = h.iter().all(|(k, v)| {
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok()
                    && !RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str())
                    && v.as_str()
                        .is_some_and(|s| reqwest::header::HeaderValue::from_str(s).is_ok())
            });
            if ok {
                w.headers = h.clone();
            } else {
                push_field_error(
                    &mut errors,
                    "headers",
                    "invalid",
                    "string headers with valid names, none of the request's own (content-type, webhook-*)",
                );
            }
        }
        Some(_) => push_field_error(
            &mut errors,
            "headers",
            "invalid",
            "an object of at most 20 string headers",
        ),
    }
    if errors.is_empty() {
        Ok(w)
    } else {
        Err(WebhookError::Invalid(errors))
    }
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

fn opt(s: &Option<String>) -> SqlValue {
    s.as_deref().map_or(SqlValue::Null, text)
}

/// Every webhook, oldest first (`enabled_only` for the fan-out).
pub async fn list(rt: &Runtime, enabled_only: bool) -> Result<Vec<Webhook>, WebhookError> {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT ")
        .push(COLS)
        .push(" FROM _lintel_webhooks");
    if enabled_only {
        sql.push(" WHERE enabled = 1");
    }
    sql.push(" ORDER BY created, id LIMIT ")
        .bind(SqlValue::Int(MAX_WEBHOOKS));
    Ok(rt
        .store
        .query_rows(sql)
        .await?
        .iter()
        .filter_map(|r| decode(r))
        .collect())
}

/// One webhook.
pub async fn get(rt: &Runtime, id: &str) -> Result<Webhook, WebhookError> {
    if !crate::schema::kinds::is_record_id(id) {
        return Err(WebhookError::NotFound);
    }
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT ")
        .push(COLS)
        .push(" FROM _lintel_webhooks WHERE id = ")
        .bind(text(id));
    rt.store
        .query_rows(sql)
        .await?
        .first()
        .and_then(|r| decode(r))
        .ok_or(WebhookError::NotFound)
}

/// Creates a webhook; returns it and its secret (shown once). It receives events
/// committed from now on, none from before.
pub async fn create(rt: &Runtime, input: &WebhookInput) -> Result<(Webhook, String), WebhookError> {
    let mut w = check(rt, input, None)?;
    let mut count = Sql::new(rt.store.dialect());
    count.push("SELECT COUNT(*) FROM _lintel_webhooks");
    if rt.store.query_count(count).await? >= MAX_WEBHOOKS {
        return Err(WebhookError::field(
            "url",
            "too_many",
            format!("at most {MAX_WEBHOOKS} webhooks"),
        ));
    }
    let now = rt.clock.now_ms();
    w.secret = new_secret();
    w.after_seq = rt.store.sequence_events().await?.last;
    w.created = now;
    w.updated = now;
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("INSERT INTO _lintel_webhooks (id, url, events, collection, filter, description, enabled, headers, ordered, secret, after_seq, created, updated) VALUES (");
    sql.bind_all([
        text(&w.id),
        text(&w.url),
        text(&Value::from(w.events.clone()).to_string()),
        opt(&w.collection),
        opt(&w.filter),
        opt(&w.description),
        SqlValue::Int(i64::from(w.enabled)),
        text(&Value::Object(w.headers.clone()).to_string()),
        SqlValue::Int(i64::from(w.ordered)),
        text(&w.secret),
        SqlValue::Int(w.after_seq),
        SqlValue::Int(now),
        SqlValue::Int(now),
    ]);
    sql.push(")");
    rt.store
        .write(vec![
            dispatch::catch_up_op(rt, w.after_seq),
            WriteOp::System { sql, expect: None },
        ])
        .await
        .map_err(|WriteError { error, .. }| WebhookError::Store(error))?;
    let secret = w.secret.clone();
    Ok((w, secret))
}

async fn write(rt: &Runtime, sql: Sql, expect: Option<u64>) -> Result<(), WebhookError> {
    rt.store
        .write(vec![WriteOp::System { sql, expect }])
        .await
        .map_err(|WriteError { error, .. }| match error {
            StoreError::NotFound => WebhookError::NotFound,
            e => WebhookError::Store(e),
        })?;
    Ok(())
}

/// Changes a webhook's fields (from the next commit on).
pub async fn patch(rt: &Runtime, id: &str, input: &WebhookInput) -> Result<Webhook, WebhookError> {
    let current = get(rt, id).await?;
    let w = check(rt, input, Some(&current))?;
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("UPDATE _lintel_webhooks SET url = ")
        .bind(text(&w.url))
        .push(", events = ")
        .bind(text(&Value::from(w.events.clone()).to_string()))
        .push(", collection = ")
        .bind(opt(&w.collection))
        .push(", filter = ")
        .bind(opt(&w.filter))
        .push(", description = ")
        .bind(opt(&w.description))
        .push(", enabled = ")
        .bind(SqlValue::Int(i64::from(w.enabled)))
        .push(", failing_since = ")
        .bind(w.failing_since.map_or(SqlValue::Null, SqlValue::Int))
        .push(", headers = ")
        .bind(text(&Value::Object(w.headers.clone()).to_string()))
        .push(", ordered = ")
        .bind(SqlValue::Int(i64::from(w.ordered)))
        .push(", updated = ")
        .bind(SqlValue::Int(rt.clock.now_ms()))
        .push(" WHERE id = ")
        .bind(text(id));
    let last = rt.store.sequence_events().await?.last;
    rt.store
        .write(vec![
            dispatch::catch_up_op(rt, last),
            WriteOp::System {
                sql,
                expect: Some(1),
            },
        ])
        .await
        .map_err(|WriteError { error, .. }| match error {
            StoreError::NotFound => WebhookError::NotFound,
            e => WebhookError::Store(e),
        })?;
    if current.ordered && !w.ordered {
        dispatch::release_waiting(rt, id).await?;
    }
    get(rt, id).await
}

/// Deletes a webhook and its delivery log (queued attempts end at their next try).
pub async fn delete(rt: &Runtime, id: &str) -> Result<(), WebhookError> {
    get(rt, id).await?;
    let mut hooks = Sql::new(rt.store.dialect());
    hooks
        .push("DELETE FROM _lintel_webhooks WHERE id = ")
        .bind(text(id));
    let mut log = Sql::new(rt.store.dialect());
    log.push("DELETE FROM _lintel_webhook_deliveries WHERE webhook = ")
        .bind(text(id));
    rt.store
        .write(vec![
            WriteOp::System {
                sql: hooks,
                expect: Some(1),
            },
            WriteOp::System {
                sql: log,
                expect: None,
            },
        ])
        .await
        .map_err(|WriteError { error, .. }| WebhookError::Store(error))?;
    Ok(())
}

/// A new secret; the old one keeps signing beside it for [`ROTATION_GRACE_MS`].
pub async fn rotate(rt: &Runtime, id: &str) -> Result<String, WebhookError> {
    let current = get(rt, id).await?;
    let secret = new_secret();
    let now = rt.clock.now_ms();
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("UPDATE _lintel_webhooks SET secret = ")
        .bind(text(&secret))
        .push(", old_secret = ")
        .bind(text(&current.secret))
        .push(", old_secret_until = ")
        .bind(SqlValue::Int(now + ROTATION_GRACE_MS))
        .push(", updated = ")
        .bind(SqlValue::Int(now))
        .push(" WHERE id = ")
        .bind(text(id))
        .push(" AND secret = ")
        .bind(text(&current.secret));
    write(rt, sql, Some(1)).await?;
    Ok(secret)
}
