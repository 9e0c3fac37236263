//! The audit log: sign-ins and their failures, token refreshes and reuse, revocations,
//! rule denials, CSRF rejections and admin changes, each with the request id. Written
//! in the background (a slow log never slows a request) and readable by superusers at
//! `GET /v1/audit`.

use serde_json::Value;

use crate::app::AppState;
use crate::store::{Sql, SqlValue, WriteOp};

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
    crate::http::edge::CURRENT_REQUEST_ID
        .try_with(|id| id.clone())
        .ok()
}

/// Records an event in the background.
pub fn record(state: &AppState, e: Event) {
    let request_id = current_request_id();
    let now = crate::clock::now_ms();
    let id = format!("{now:013}{}", crate::ids::record_id());
    let opt = |v: Option<String>| v.map_or(SqlValue::Null, SqlValue::Text);
    let mut sql = Sql::new(state.store.dialect());
    sql.push("INSERT INTO _lintel_audit (id, at, event, outcome, actor, collection, subject, ip, request_id, detail) VALUES (");
    let values = [
        SqlValue::Text(id),
        SqlValue::Int(now),
        SqlValue::Text(e.event.to_owned()),
        SqlValue::Text(e.outcome.to_owned()),
        opt(e.actor),
        opt(e.collection),
        opt(e.subject),
        opt(e.ip),
        opt(request_id.clone()),
        opt(e.detail.map(|d| d.to_string())),
    ];
    sql.bind_all(values);
    sql.push(")");
    tracing::info!(event = e.event, outcome = e.outcome, "audit");
    let store = state.store.clone();
    state.tasks.spawn(async move {
        if let Err(err) = store
            .write(vec![WriteOp::System { sql, expect: None }])
            .await
        {
            tracing::error!(error = %err.error, request_id = ?request_id, "writing the audit log failed");
        }
    });
}
