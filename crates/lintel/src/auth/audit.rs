//! The audit log: sign-ins and their failures, token refreshes and reuse, revocations,
//! rule denials, CSRF rejections and admin changes, each with the request id. Written
//! in the background (a slow log never slows a request) and readable by superusers at
//! `GET /v1/audit`.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::runtime::Runtime;
use crate::store::{EventDraft, Sql, SqlValue, WriteMeta, WriteOp};

/// One audit entry under construction.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: &'static str,
    pub outcome: &'static str,
    pub actor: Option<String>,
    pub collection: Option<String>,
    pub subject: Option<String>,
    pub ip: Option<String>,
    pub detail: Option<Value>,
}

impl Event {
    pub fn new(event: &'static str, outcome: &'static str) -> Self {
        Self {
            event,
            outcome,
            actor: None,
            collection: None,
            subject: None,
            ip: None,
            detail: None,
        }
    }

    pub fn actor(mut self, a: impl Into<String>) -> Self {
        self.actor = Some(a.into());
        self
    }

    pub fn collection(mut self, c: impl Into<String>) -> Self {
        self.collection = Some(c.into());
        self
    }

    pub fn subject(mut self, s: impl Into<String>) -> Self {
        self.subject = Some(s.into());
        self
    }

    pub fn ip(mut self, ip: Option<String>) -> Self {
        self.ip = ip;
        self
    }

    pub fn detail(mut self, d: Value) -> Self {
        self.detail = Some(d);
        self
    }
}

/// The request id of the current span's request, when there is one.
fn current_request_id() -> Option<String> {
    crate::telemetry::CURRENT_REQUEST_ID
        .try_with(|id| id.clone())
        .ok()
}

/// Records an event in the background.
pub fn record(state: &Runtime, e: Event) {
    let now = state.clock.now_ms();
    record_as(state, new_id(now), now, e);
}

/// Audit ids: the zero-padded time of the event, then a random part, so ids sort by
/// time (the audit list pages by id, and the purge cuts by id).
fn new_id(now_ms: i64) -> String {
    format!("{now_ms:013}{}", crate::ids::record_id())
}

fn record_as(state: &Runtime, id: String, now: i64, e: Event) {
    let request_id = current_request_id();
    let opt = |v: Option<String>| v.map_or(SqlValue::Null, SqlValue::Text);
    let mut sql = Sql::new(state.store.dialect());
    sql.push("INSERT INTO _lintel_audit (id, at, event, outcome, actor, collection, subject, ip, request_id, detail) VALUES (");
    let values = [
        SqlValue::Text(id),
        SqlValue::Int(now),
        SqlValue::Text(e.event.to_owned()),
        SqlValue::Text(e.outcome.to_owned()),
        opt(e.actor.clone()),
        opt(e.collection.clone()),
        opt(e.subject.clone()),
        opt(e.ip.clone()),
        opt(request_id.clone()),
        opt(e.detail.as_ref().map(|d| d.to_string())),
    ];
    sql.bind_all(values);
    sql.push(")");
    tracing::info!(event = e.event, outcome = e.outcome, "audit");
    let mut ops = vec![WriteOp::System { sql, expect: None }];
    // Auth events join the event log in the same transaction as their audit row. Rule
    // denials (coalesced per caller and window) stay in the audit log only, and schema
    // changes are logged by the store as `collection.*` events already.
    if e.event != "rule_denied" && !e.event.starts_with("collection_") {
        ops.push(WriteOp::Event(Box::new(EventDraft {
            kind: format!("auth.{}", e.event),
            collection: e.collection,
            record_id: e.subject,
            record: Some(json!({
                "outcome": e.outcome,
                "ip": e.ip,
                "detail": e.detail,
            })),
            previous: None,
        })));
    }
    let meta = WriteMeta {
        actor: e.actor.map(|a| json!({ "name": a })),
        request_id: request_id.clone(),
        time_ms: Some(now),
    };
    let store = state.store.clone();
    state.tasks.spawn(async move {
        if let Err(err) = store.write_as(ops, meta).await {
            tracing::error!(error = %err.error, request_id = ?request_id, "writing the audit log failed");
        }
    });
}

/// Tracked callers past which new ones share one row per collection and action.
const MAX_DENIAL_KEYS: usize = 10_000;
/// The actor of the shared row when too many callers are tracked.
const MANY_CALLERS: &str = "(many callers)";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DenialKey {
    actor: String,
    ip: Option<String>,
    collection: String,
    action: &'static str,
}

#[derive(Debug)]
struct DenialWindow {
    row_id: String,
    started_ms: i64,
    count: u64,
}

/// A row whose count must be brought up to date.
#[derive(Debug, PartialEq, Eq)]
pub struct CountUpdate {
    row_id: String,
    action: &'static str,
    count: u64,
}

/// Repeated rule denials, coalesced in memory: the first denial of a caller on a
/// collection and action writes a `rule_denied` row at once; the ones that follow
/// within `audit.denial_window_secs` only count, and the row's `detail.count` is
/// brought up to date when the window closes (swept every few seconds, and at
/// shutdown). Bounded: past `MAX_DENIAL_KEYS` callers, new ones share one row per
/// collection and action.
pub struct Denials {
    window_ms: i64,
    windows: Mutex<HashMap<DenialKey, DenialWindow>>,
}

enum Noted {
    /// Write a new row with this id (and first bring a closed window's row up to date).
    New(String, Option<CountUpdate>),
    /// Counted in an open window.
    Counted,
}

impl Denials {
    pub fn new(window_secs: u64) -> Self {
        Self {
            window_ms: i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<DenialKey, DenialWindow>> {
        match self.windows.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
    }

    fn note(&self, mut key: DenialKey, now_ms: i64) -> Noted {
        if self.window_ms == 0 {
            return Noted::New(new_id(now_ms), None);
        }
        let mut map = self.map();
        if !map.contains_key(&key) && map.len() >= MAX_DENIAL_KEYS {
            key.actor = MANY_CALLERS.to_owned();
            key.ip = None;
        }
        let closed = match map.get_mut(&key) {
            Some(w) if now_ms - w.started_ms < self.window_ms => {
                w.count += 1;
                return Noted::Counted;
            }
            Some(w) => (w.count > 1).then(|| CountUpdate {
                row_id: w.row_id.clone(),
                action: key.action,
                count: w.count,
            }),
            None => None,
        };
        let row_id = new_id(now_ms);
        map.insert(
            key,
            DenialWindow {
                row_id: row_id.clone(),
                started_ms: now_ms,
                count: 1,
            },
        );
        Noted::New(row_id, closed)
    }

    /// Forgets the windows that closed by `now_ms` (all of them with `None`) and
    /// returns the rows whose count must be written.
    fn take_closed(&self, now_ms: Option<i64>) -> Vec<CountUpdate> {
        let mut out = Vec::new();
        self.map().retain(|key, w| {
            let open = now_ms.is_some_and(|now| now - w.started_ms < self.window_ms);
            if !open && w.count > 1 {
                out.push(CountUpdate {
                    row_id: w.row_id.clone(),
                    action: key.action,
                    count: w.count,
                });
            }
            open
        });
        out
    }
}

/// Records that the rules refused `action` on `collection` to a caller, coalesced with
/// the same caller's recent denials (see [`Denials`]).
pub fn record_denial(
    state: &Runtime,
    actor: String,
    ip: Option<String>,
    collection: &str,
    action: &'static str,
) {
    let now = state.clock.now_ms();
    let key = DenialKey {
        actor,
        ip,
        collection: collection.to_owned(),
        action,
    };
    match state.denials.note(key.clone(), now) {
        Noted::Counted => {
            tracing::info!(
                event = "rule_denied",
                outcome = "denied",
                "audit (counted in the caller's open row)"
            );
        }
        Noted::New(id, closed) => {
            write_counts(state, closed.into_iter().collect());
            record_as(
                state,
                id,
                now,
                Event::new("rule_denied", "denied")
                    .actor(key.actor)
                    .collection(key.collection)
                    .ip(key.ip)
                    .detail(json!({ "action": action, "count": 1 })),
            );
        }
    }
}

/// Brings the counts of closed denial windows up to date (every few seconds; with
/// `all`, every window, at shutdown).
pub fn flush_denials(state: &Runtime, all: bool) {
    let now = (!all).then(|| state.clock.now_ms());
    write_counts(state, state.denials.take_closed(now));
}

fn write_counts(state: &Runtime, updates: Vec<CountUpdate>) {
    if updates.is_empty() {
        return;
    }
    let ops = updates
        .into_iter()
        .map(|u| {
            let mut sql = Sql::new(state.store.dialect());
            sql.push("UPDATE _lintel_audit SET detail = ")
                .bind(SqlValue::Text(
                    json!({ "action": u.action, "count": u.count }).to_string(),
                ))
                .push(" WHERE id = ")
                .bind(SqlValue::Text(u.row_id));
            WriteOp::System { sql, expect: None }
        })
        .collect();
    let store = state.store.clone();
    state.tasks.spawn(async move {
        if let Err(err) = store.write(ops).await {
            tracing::error!(error = %err.error, "updating rule denial counts failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(actor: &str, action: &'static str) -> DenialKey {
        DenialKey {
            actor: actor.to_owned(),
            ip: None,
            collection: "posts".to_owned(),
            action,
        }
    }

    #[test]
    fn repeated_denials_share_a_row_per_window() {
        let d = Denials::new(60);
        let Noted::New(first, None) = d.note(key("a", "list"), 0) else {
            panic!("the first denial writes a row");
        };
        for t in 1..5 {
            assert!(matches!(d.note(key("a", "list"), t), Noted::Counted));
        }
        assert!(
            matches!(d.note(key("a", "view"), 5), Noted::New(_, None)),
            "another action is another row"
        );
        assert!(
            matches!(d.note(key("b", "list"), 5), Noted::New(_, None)),
            "another caller is another row"
        );
        assert!(d.take_closed(Some(30_000)).is_empty(), "still open");
        // The window closes: a new row, and the old one's count is due.
        let Noted::New(second, Some(update)) = d.note(key("a", "list"), 60_000) else {
            panic!("a new window");
        };
        assert_ne!(first, second);
        assert_eq!(
            update,
            CountUpdate {
                row_id: first,
                action: "list",
                count: 5
            }
        );
        d.note(key("a", "list"), 60_001);
        let all = d.take_closed(None);
        assert_eq!(
            all.len(),
            1,
            "only windows with more than one denial: {all:?}"
        );
        assert_eq!(all[0].count, 2);
        assert!(d.map().is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let d = Denials::new(60);
        for i in 0..MAX_DENIAL_KEYS + 50 {
            d.note(key(&i.to_string(), "list"), 0);
        }
        assert_eq!(
            d.map().len(),
            MAX_DENIAL_KEYS + 1,
            "one shared row for the rest"
        );
        let d = Denials::new(0);
        assert!(matches!(d.note(key("a", "list"), 0), Noted::New(..)));
        assert!(
            matches!(d.note(key("a", "list"), 0), Noted::New(..)),
            "no window: a row each"
        );
        assert!(d.map().is_empty());
    }
}
