//! The fan-out: follows the event log from its own position (`_lintel_webhook_cursor`)
//! and, for each event and each enabled webhook that wants it, writes a delivery and
//! queues its `webhook` job. The deliveries of a page of events and the move of the
//! position commit together, the move guarded by a compare-and-set: an event is fanned
//! out once even with several instances, and a crash in between repeats nothing.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::jobs::NewJob;
use crate::runtime::Runtime;
use crate::store::events::EventQuery;
use crate::store::{Record, Sql, SqlValue, StoreError, WriteError, WriteMeta, WriteOp};
use crate::webhooks::{Webhook, WebhookError, list};

/// Events read per pass.
const PAGE: i64 = 200;

/// A delivery's attempts at most (the first and seven retries).
pub const MAX_ATTEMPTS: i64 = 8;
/// A page with nothing to deliver moves the position at most this often (the next
/// pass reads it again meanwhile): writes a webhook does not want cost no write here.
const IDLE_MOVE: Duration = Duration::from_secs(5);

/// How often deliveries whose job ended unlogged are looked for.
const UNSTICK_EVERY: Duration = Duration::from_secs(2);

/// What a pass did.
pub enum Pass {
    /// The position moved past this many events.
    Moved(usize),
    /// Nothing to do, or nothing worth a write yet.
    Stayed,
}

/// Before a webhook is created or enabled while none is: moves the position to the
/// log's end, so the fan-out does not read the events no webhook was there for.
pub fn catch_up_op(rt: &Runtime, last: i64) -> WriteOp {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("UPDATE _lintel_webhook_cursor SET seq = ")
        .bind(SqlValue::Int(last))
        .push(" WHERE id = 1 AND seq < ")
        .bind(SqlValue::Int(last))
        .push(" AND NOT EXISTS (SELECT 1 FROM _lintel_webhooks WHERE enabled = 1)");
    WriteOp::System { sql, expect: None }
}

/// Runs the fan-out until `shutdown` fires: after each growth of the log, and each
/// second.
pub async fn run(rt: Runtime, mut shutdown: watch::Receiver<bool>) {
    let mut ends = rt.events.bus.subscribe();
    let mut last_move = std::time::Instant::now();
    let mut last_unstick = std::time::Instant::now();
    loop {
        if last_unstick.elapsed() >= UNSTICK_EVERY {
            last_unstick = std::time::Instant::now();
            if let Err(e) = unstick(&rt).await {
                tracing::warn!(error = %e, "failing deliveries whose job ended failed");
            }
        }
        let idle_move = last_move.elapsed() >= IDLE_MOVE;
        let more = match fan_out(&rt, idle_move).await {
            Ok(Pass::Moved(n)) => {
                last_move = std::time::Instant::now();
                n >= PAGE as usize
            }
            Ok(Pass::Stayed) => false,
            Err(e) => {
                tracing::warn!(error = %e, "fanning events out to webhooks failed");
                false
            }
        };
        if more {
            continue;
        }
        tokio::select! {
            _ = ends.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

async fn cursor(rt: &Runtime) -> Result<i64, StoreError> {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT seq FROM _lintel_webhook_cursor WHERE id = 1");
    rt.store.query_count(sql).await
}

fn advance(rt: &Runtime, from: i64, to: i64) -> WriteOp {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("UPDATE _lintel_webhook_cursor SET seq = ")
        .bind(SqlValue::Int(to))
        .push(" WHERE id = 1 AND seq = ")
        .bind(SqlValue::Int(from));
    WriteOp::System {
        sql,
        expect: Some(1),
    }
}

/// The record an event is about, for the webhook's filter: after the change, or
/// before it for a delete.
fn record_of(ev: &Value) -> Option<Record> {
    let r = if ev["record"].is_object() {
        &ev["record"]
    } else {
        &ev["previous"]
    };
    crate::events::record_from_json(r)
}

/// Whether `w` wants event `ev` (its type, collection and filter).
pub fn matches(rt: &Runtime, w: &Webhook, ev: &Value) -> bool {
    let seq = ev["seq"].as_i64().unwrap_or(0);
    let kind = ev["type"].as_str().unwrap_or_default();
    if seq <= w.after_seq || !w.wants(kind) {
        return false;
    }
    if let Some(c) = &w.collection
        && ev["collection"].as_str() != Some(c.as_str())
    {
        return false;
    }
    let Some(filter) = &w.filter else {
        return true;
    };
    let (Some(coll), Some(record)) = (
        w.collection.as_deref().and_then(|c| rt.catalog().get(c)),
        record_of(ev),
    ) else {
        return false;
    };
    let Ok(expr) = lintel_filter::parse(filter) else {
        return false;
    };
    let now = rt.clock.now();
    let env = crate::store::filter::Env {
        now: &now,
        auth: None,
        body: None,
    };
    crate::access::rules::eval(&expr, &coll, &record, &env).unwrap_or(false)
}

/// The body of a delivery (Standard Webhooks): `{type, timestamp, data}`.
pub fn body_of(ev: &Value) -> String {
    let mut data = Map::new();
    data.insert("collection".into(), ev["collection"].clone());
    if !ev["recordId"].is_null() {
        data.insert("recordId".into(), ev["recordId"].clone());
    }
    data.insert("record".into(), ev["record"].clone());
    if !ev["previous"].is_null() {
        data.insert("previous".into(), ev["previous"].clone());
    }
    data.insert("seq".into(), ev["seq"].clone());
    json!({ "type": ev["type"], "timestamp": ev["time"], "data": Value::Object(data) }).to_string()
}

/// The ops that record a delivery of `body` to `w` and queue its first attempt now.
pub fn delivery_ops(
    rt: &Runtime,
    w: &Webhook,
    seq: Option<i64>,
    kind: &str,
    body: String,
    now: i64,
) -> (String, Vec<WriteOp>) {
    let d = rt.store.dialect();
    let id = format!("msg_{}", crate::ids::record_id());
    let job_id = crate::ids::record_id();
    let mut sql = Sql::new(d);
    sql.push("INSERT INTO _lintel_webhook_deliveries (id, webhook, seq, type, body, status, attempts, next_attempt_at, job, created) VALUES (");
    sql.bind_all([
        SqlValue::Text(id.clone()),
        SqlValue::Text(w.id.clone()),
        seq.map_or(SqlValue::Null, SqlValue::Int),
        SqlValue::Text(kind.to_owned()),
        SqlValue::Text(body),
        SqlValue::Text("pending".into()),
        SqlValue::Text("[]".into()),
        SqlValue::Int(now),
        SqlValue::Text(job_id.clone()),
        SqlValue::Int(now),
    ]);
    sql.push(")");
    let job = delivery_job(json!({ "webhook": w.id, "delivery": id }), MAX_ATTEMPTS);
    let mut ops = vec![WriteOp::System {
        sql,
        expect: Some(1),
    }];
    ops.extend(crate::jobs::service::enqueue_ops_as(d, &job_id, &job, now));
    (id, ops)
}

/// The op that records a delivery of an ordered webhook, waiting its turn: no job
/// until [`advance_ops`] gives it one.
pub fn waiting_delivery_op(
    rt: &Runtime,
    w: &Webhook,
    seq: i64,
    kind: &str,
    body: String,
    now: i64,
) -> WriteOp {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("INSERT INTO _lintel_webhook_deliveries (id, webhook, seq, type, body, status, attempts, next_attempt_at, job, created) VALUES (");
    sql.bind_all([
        SqlValue::Text(format!("msg_{}", crate::ids::record_id())),
        SqlValue::Text(w.id.clone()),
        SqlValue::Int(seq),
        SqlValue::Text(kind.to_owned()),
        SqlValue::Text(body),
        SqlValue::Text("pending".into()),
        SqlValue::Text("[]".into()),
    ]);
    sql.push(", NULL, NULL, ")
        .bind(SqlValue::Int(now))
        .push(")");
    WriteOp::System {
        sql,
        expect: Some(1),
    }
}

/// The ops that start the next waiting delivery of webhook `wid` (lowest `seq` first)
/// when none of its pending deliveries has a live job: the head of an ordered webhook
/// goes out alone, and a failing head holds the rest back until it succeeds or fails
/// for good. With `lock` the first op locks the webhook's row (a caller that already
/// updated the row holds that lock), so a fan-out and a finishing attempt on other
/// instances take turns and each sees what the other committed.
pub fn advance_ops(rt: &Runtime, wid: &str, now: i64, lock: bool) -> Vec<WriteOp> {
    let d = rt.store.dialect();
    let w = || SqlValue::Text(wid.to_owned());
    let job_id = crate::ids::record_id();
    let mut lock_sql = Sql::new(d);
    lock_sql
        .push("UPDATE _lintel_webhooks SET updated = updated WHERE id = ")
        .bind(w());
    let mut head = Sql::new(d);
    head.push("UPDATE _lintel_webhook_deliveries SET job = ")
        .bind(SqlValue::Text(job_id.clone()))
        .push(", next_attempt_at = ")
        .bind(SqlValue::Int(now))
        .push(
            " WHERE id = (SELECT id FROM _lintel_webhook_deliveries WHERE webhook = ",
        )
        .bind(w())
        .push(" AND job IS NULL AND status = 'pending' ORDER BY seq LIMIT 1)")
        .push(" AND NOT EXISTS (SELECT 1 FROM _lintel_webhook_deliveries s JOIN _lintel_jobs j ON j.id = s.job WHERE s.webhook = ")
        .bind(w())
        .push(" AND s.status = 'pending' AND s.job IS NOT NULL AND j.status IN ")
        .push(crate::jobs::store::ACTIVE)
        .push(")");
    let job = delivery_job(json!({ "webhook": wid }), MAX_ATTEMPTS);
    let start = crate::jobs::store::insert_when(d, &job_id, &job, now, |c| {
        c.push("EXISTS (SELECT 1 FROM _lintel_webhook_deliveries WHERE job = ")
            .bind(SqlValue::Text(job_id.clone()))
            .push(")");
    });
    let mut ops = Vec::with_capacity(3);
    if lock {
        ops.push(WriteOp::System {
            sql: lock_sql,
            expect: None,
        });
    }
    ops.push(WriteOp::System {
        sql: head,
        expect: None,
    });
    ops.push(WriteOp::Query { sql: start });
    ops
}

/// Gives every delivery of webhook `wid` still waiting its turn a job of its own (the
/// webhook stopped being ordered): they go in parallel from now on.
pub async fn release_waiting(rt: &Runtime, wid: &str) -> Result<usize, WebhookError> {
    let d = rt.store.dialect();
    let mut done = 0;
    loop {
        let mut sql = Sql::new(d);
        sql.push("SELECT id FROM _lintel_webhook_deliveries WHERE webhook = ")
            .bind(SqlValue::Text(wid.to_owned()))
            .push(" AND job IS NULL AND status = 'pending' ORDER BY seq LIMIT 200");
        let rows = rt.store.query_rows(sql).await?;
        if rows.is_empty() {
            return Ok(done);
        }
        let now = rt.clock.now_ms();
        let mut ops = Vec::new();
        for id in rows
            .iter()
            .filter_map(|r| r.first().and_then(Value::as_str))
        {
            let job_id = crate::ids::record_id();
            let mut mark = Sql::new(d);
            mark.push("UPDATE _lintel_webhook_deliveries SET job = ")
                .bind(SqlValue::Text(job_id.clone()))
                .push(", next_attempt_at = ")
                .bind(SqlValue::Int(now))
                .push(" WHERE id = ")
                .bind(SqlValue::Text(id.to_owned()))
                .push(" AND job IS NULL");
            ops.push(WriteOp::System {
                sql: mark,
                expect: None,
            });
            let job = delivery_job(json!({ "webhook": wid, "delivery": id }), MAX_ATTEMPTS);
            ops.extend(crate::jobs::service::enqueue_ops_as(d, &job_id, &job, now));
        }
        done += rows.len();
        rt.store
            .write(ops)
            .await
            .map_err(|WriteError { error, .. }| WebhookError::Store(error))?;
        rt.jobs.wake.notify_one();
        if rows.len() < 200 {
            return Ok(done);
        }
    }
}

/// Deliveries logged `pending` whose job ended without logging them (its lease was
/// reaped to `dead`, or it was cancelled or deleted): marked `failed`, and an ordered
/// webhook's next delivery starts. Runs on the fan-out's loop every few seconds.
pub async fn unstick(rt: &Runtime) -> Result<usize, WebhookError> {
    let d = rt.store.dialect();
    let mut sql = Sql::new(d);
    sql.push("SELECT s.id, s.webhook, s.job FROM _lintel_webhook_deliveries s LEFT JOIN _lintel_jobs j ON j.id = s.job WHERE s.status = 'pending' AND s.job IS NOT NULL AND (j.id IS NULL OR j.status NOT IN ")
        .push(crate::jobs::store::ACTIVE)
        .push(") LIMIT 100");
    let rows = rt.store.query_rows(sql).await?;
    let now = rt.clock.now_ms();
    let mut n = 0;
    for r in &rows {
        let col = |i: usize| {
            r.get(i)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (id, wid, job) = (col(0), col(1), col(2));
        let mut fail = Sql::new(d);
        fail.push("UPDATE _lintel_webhook_deliveries SET status = 'failed', next_attempt_at = NULL WHERE id = ")
            .bind(SqlValue::Text(id))
            .push(" AND status = 'pending' AND job = ")
            .bind(SqlValue::Text(job));
        let mut ops = vec![WriteOp::System {
            sql: fail,
            expect: None,
        }];
        ops.extend(advance_ops(rt, &wid, now, true));
        rt.store
            .write(ops)
            .await
            .map_err(|WriteError { error, .. }| WebhookError::Store(error))?;
        n += 1;
    }
    if n > 0 {
        rt.jobs.wake.notify_one();
    }
    Ok(n)
}

/// The job of one delivery's attempts.
pub fn delivery_job(payload: Value, max_attempts: i64) -> NewJob {
    let mut job = NewJob::of("webhook", payload);
    job.queue = "webhooks".into();
    job.max_attempts = max_attempts;
    job.timeout_ms = 60_000;
    job
}

/// One pass: the next page of events after the position. A page with no delivery
/// moves the position only when `idle_move` (a bounded number of writes for events
/// no webhook wants); with no enabled webhook nothing is read at all.
pub async fn fan_out(rt: &Runtime, idle_move: bool) -> Result<Pass, WebhookError> {
    let hooks = list(rt, true).await?;
    if hooks.is_empty() {
        return Ok(Pass::Stayed);
    }
    let from = cursor(rt).await?;
    let page = match crate::events::page(
        rt.store.as_ref(),
        Some(from),
        EventQuery {
            limit: PAGE,
            ..EventQuery::default()
        },
    )
    .await
    {
        Ok(p) => p,
        Err(crate::events::EventsError::Purged { oldest }) => {
            tracing::warn!(
                from,
                oldest,
                "webhook fan-out fell behind retention; skipping to the oldest kept event"
            );
            let _ = rt.store.write(vec![advance(rt, from, oldest - 1)]).await;
            return Ok(Pass::Stayed);
        }
        Err(crate::events::EventsError::Store(e)) => return Err(e.into()),
    };
    if page.items.is_empty() {
        return Ok(Pass::Stayed);
    }
    let now = rt.clock.now_ms();
    let mut ops = vec![advance(rt, from, page.next_after)];
    let mut waiting: Vec<&str> = Vec::new();
    for ev in &page.items {
        for w in &hooks {
            if matches(rt, w, ev) {
                let kind = ev["type"].as_str().unwrap_or_default();
                match ev["seq"].as_i64() {
                    Some(seq) if w.ordered => {
                        ops.push(waiting_delivery_op(rt, w, seq, kind, body_of(ev), now));
                        if !waiting.contains(&w.id.as_str()) {
                            waiting.push(&w.id);
                        }
                    }
                    seq => {
                        let (_, more) = delivery_ops(rt, w, seq, kind, body_of(ev), now);
                        ops.extend(more);
                    }
                }
            }
        }
    }
    for wid in waiting {
        ops.extend(advance_ops(rt, wid, now, true));
    }
    let queued = ops.len() > 1;
    // A full page moves on regardless: what a webhook wants may be behind it.
    if !queued && !idle_move && page.items.len() < PAGE as usize {
        return Ok(Pass::Stayed);
    }
    match rt.store.write_as(ops, WriteMeta::default()).await {
        Ok(_) => {
            if queued {
                rt.jobs.wake.notify_one();
            }
            Ok(Pass::Moved(page.items.len()))
        }
        // Another instance moved the position first: it fanned this page out.
        Err(WriteError {
            index: 0,
            error: StoreError::NotFound,
        }) => Ok(Pass::Stayed),
        Err(WriteError { error, .. }) => Err(error.into()),
    }
}
