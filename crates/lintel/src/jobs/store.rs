//! The queue's statements, one text for both dialects except the claim's row locks
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one writer). Every value is a
//! bound parameter. Rows come back as JSON scalars and decode into [`Job`]s.

use serde_json::Value;

use crate::jobs::model::{BUILTIN_KINDS, Job, JobStatus, NewJob};
use crate::store::{Dialect, Sql, SqlValue, StoreError};

/// The columns [`decode`] reads, in order.
pub const COLS: &str = "id, kind, queue, payload, priority, status, attempts, max_attempts, run_at, unique_key, timeout_ms, lease_id, lease_expires, last_error, progress, result, owner, created, updated, started, finished, lease_ms, schedule_id";

/// The statuses that hold a `uniqueKey`.
pub const ACTIVE: &str = "('queued', 'retrying', 'running')";

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

fn opt_text(s: Option<&str>) -> SqlValue {
    s.map_or(SqlValue::Null, text)
}

fn json_text(v: &Value) -> SqlValue {
    if v.is_null() {
        SqlValue::Null
    } else {
        SqlValue::Text(v.to_string())
    }
}

/// Decodes one row of [`COLS`].
pub fn decode(row: &[Value]) -> Result<Job, StoreError> {
    let bad = |what: &str| StoreError::Internal(format!("a job row has a bad {what}"));
    let s = |i: usize| row.get(i).and_then(Value::as_str).map(str::to_owned);
    let n = |i: usize| row.get(i).and_then(Value::as_i64);
    let j = |i: usize| {
        row.get(i)
            .and_then(Value::as_str)
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null)
    };
    Ok(Job {
        id: s(0).ok_or_else(|| bad("id"))?,
        kind: s(1).ok_or_else(|| bad("kind"))?,
        queue: s(2).ok_or_else(|| bad("queue"))?,
        payload: j(3),
        priority: n(4).unwrap_or(0),
        status: s(5)
            .and_then(|x| JobStatus::parse(&x))
            .ok_or_else(|| bad("status"))?,
        attempts: n(6).unwrap_or(0),
        max_attempts: n(7).unwrap_or(1),
        run_at: n(8).unwrap_or(0),
        unique_key: s(9),
        timeout_ms: n(10).unwrap_or(0),
        lease_id: s(11),
        lease_expires: n(12),
        last_error: s(13),
        progress: j(14),
        result: j(15),
        owner: s(16),
        created: n(17).unwrap_or(0),
        updated: n(18).unwrap_or(0),
        started: n(19),
        finished: n(20),
        lease_ms: n(21),
        schedule_id: s(22),
    })
}

/// Decodes every row.
pub fn decode_all(rows: &[Vec<Value>]) -> Result<Vec<Job>, StoreError> {
    rows.iter().map(|r| decode(r)).collect()
}

/// Inserts a job unless one with its `uniqueKey` is active; returns it (no row when
/// the key is taken: [`active_with_key`] finds that one).
pub fn insert(d: Dialect, id: &str, job: &NewJob, now: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push(
        "INSERT INTO _lintel_jobs (id, kind, queue, payload, priority, status, attempts, max_attempts,
           run_at, unique_key, timeout_ms, owner, schedule_id, created, updated) VALUES (",
    );
    sql.bind_all([
        text(id),
        text(&job.kind),
        text(&job.queue),
        json_text(&job.payload),
        SqlValue::Int(job.priority),
    ]);
    sql.push(", 'queued', 0, ");
    sql.bind_all([
        SqlValue::Int(job.max_attempts),
        SqlValue::Int(job.run_at.unwrap_or(now)),
        opt_text(job.unique_key.as_deref()),
        SqlValue::Int(job.timeout_ms),
        opt_text(job.owner.as_deref()),
        opt_text(job.schedule_id.as_deref()),
        SqlValue::Int(now),
        SqlValue::Int(now),
    ]);
    sql.push(") ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ")
        .push(ACTIVE)
        .push(" DO NOTHING RETURNING ")
        .push(COLS);
    sql
}

/// Inserts a job (without a `uniqueKey`) only when the condition `cond` appends holds
/// in the same statement: `INSERT ... SELECT ... WHERE <cond>`. A missing value is the
/// literal `NULL`, which PostgreSQL can type from the column.
pub fn insert_when(
    d: Dialect,
    id: &str,
    job: &NewJob,
    now: i64,
    cond: impl FnOnce(&mut Sql),
) -> Sql {
    let mut sql = Sql::new(d);
    sql.push(
        "INSERT INTO _lintel_jobs (id, kind, queue, payload, priority, status, attempts, max_attempts,
           run_at, unique_key, timeout_ms, owner, schedule_id, created, updated) SELECT ",
    );
    let values = [
        text(id),
        text(&job.kind),
        text(&job.queue),
        json_text(&job.payload),
        SqlValue::Int(job.priority),
        text("queued"),
        SqlValue::Int(0),
        SqlValue::Int(job.max_attempts),
        SqlValue::Int(job.run_at.unwrap_or(now)),
        SqlValue::Null,
        SqlValue::Int(job.timeout_ms),
        opt_text(job.owner.as_deref()),
        opt_text(job.schedule_id.as_deref()),
        SqlValue::Int(now),
        SqlValue::Int(now),
    ];
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        if matches!(v, SqlValue::Null) {
            sql.push("NULL");
        } else {
            sql.bind(v);
        }
    }
    sql.push(" WHERE ");
    cond(&mut sql);
    sql
}

/// The active job holding a `uniqueKey`.
pub fn active_with_key(d: Dialect, key: &str) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("SELECT ")
        .push(COLS)
        .push(" FROM _lintel_jobs WHERE unique_key = ")
        .bind(text(key))
        .push(" AND status IN ")
        .push(ACTIVE);
    sql
}

/// One job by id.
pub fn by_id(d: Dialect, id: &str) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("SELECT ")
        .push(COLS)
        .push(" FROM _lintel_jobs WHERE id = ")
        .bind(text(id));
    sql
}

/// What a listing asks for.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<JobStatus>,
    pub queue: Option<String>,
    pub kind: Option<String>,
    /// Only jobs this caller started (callers other than superusers).
    pub owner: Option<String>,
}

fn filter_where(sql: &mut Sql, f: &ListFilter) {
    sql.push(" WHERE 1 = 1");
    if let Some(s) = f.status {
        sql.push(" AND status = ").bind(text(s.as_str()));
    }
    if let Some(q) = &f.queue {
        sql.push(" AND queue = ").bind(text(q));
    }
    if let Some(k) = &f.kind {
        sql.push(" AND kind = ").bind(text(k));
    }
    if let Some(o) = &f.owner {
        sql.push(" AND owner = ").bind(text(o));
    }
}

/// A page of jobs, newest first.
pub fn list(d: Dialect, f: &ListFilter, limit: i64, offset: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("SELECT ").push(COLS).push(" FROM _lintel_jobs");
    filter_where(&mut sql, f);
    sql.push(" ORDER BY created DESC, id DESC LIMIT ")
        .bind(SqlValue::Int(limit))
        .push(" OFFSET ")
        .bind(SqlValue::Int(offset));
    sql
}

/// How many jobs match.
pub fn count(d: Dialect, f: &ListFilter) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("SELECT COUNT(*) FROM _lintel_jobs");
    filter_where(&mut sql, f);
    sql
}

/// What a worker claims.
#[derive(Debug, Clone, Default)]
pub struct ClaimFilter {
    pub queues: Vec<String>,
    /// Empty: every kind Lintel does not run itself.
    pub kinds: Vec<String>,
}

fn in_list(sql: &mut Sql, column: &str, values: &[String], negate: bool) {
    sql.push(" AND ")
        .push(column)
        .push(if negate { " NOT IN (" } else { " IN (" });
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.bind(text(v));
    }
    sql.push(")");
}

/// Claims up to `max` due jobs, highest priority first, each under a lease of
/// `lease_ms` whose id is `token` followed by the job's id.
pub fn claim(d: Dialect, f: &ClaimFilter, max: i64, lease_ms: i64, token: &str, now: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("UPDATE _lintel_jobs SET status = 'running', attempts = attempts + 1, lease_id = ")
        .bind(text(token))
        .push(" || id, lease_ms = ")
        .bind(SqlValue::Int(lease_ms))
        .push(", lease_expires = ")
        .bind(SqlValue::Int(now.saturating_add(lease_ms)))
        .push(", started = COALESCE(started, ")
        .bind(SqlValue::Int(now))
        .push("), updated = ")
        .bind(SqlValue::Int(now))
        .push(" WHERE id IN (SELECT id FROM _lintel_jobs WHERE status IN ('queued', 'retrying') AND run_at <= ")
        .bind(SqlValue::Int(now));
    if !f.queues.is_empty() {
        in_list(&mut sql, "queue", &f.queues, false);
    }
    if f.kinds.is_empty() {
        let builtin: Vec<String> = BUILTIN_KINDS.iter().map(|k| (*k).to_owned()).collect();
        in_list(&mut sql, "kind", &builtin, true);
    } else {
        in_list(&mut sql, "kind", &f.kinds, false);
    }
    sql.push(" ORDER BY priority DESC, run_at, id LIMIT ")
        .bind(SqlValue::Int(max));
    if d == Dialect::Postgres {
        sql.push(" FOR UPDATE SKIP LOCKED");
    }
    sql.push(") AND status IN ('queued', 'retrying') RETURNING ")
        .push(COLS);
    sql
}

/// Puts jobs whose lease ran out back in the queue (or makes them dead when their
/// attempts are used up); returns them.
pub fn reap(d: Dialect, now: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push(
        "UPDATE _lintel_jobs SET status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'retrying' END,
           finished = CASE WHEN attempts >= max_attempts THEN ",
    )
    .bind(SqlValue::Int(now))
    .push(" ELSE NULL END, lease_id = NULL, lease_expires = NULL, last_error = 'the lease expired: the worker stopped before finishing', run_at = ")
    .bind(SqlValue::Int(now))
    .push(", updated = ")
    .bind(SqlValue::Int(now))
    .push(" WHERE status = 'running' AND lease_expires < ")
    .bind(SqlValue::Int(now))
    .push(" RETURNING ")
    .push(COLS);
    sql
}

/// Ends a leased job: `succeeded` with its result.
pub fn complete(d: Dialect, id: &str, lease: &str, result: &Value, now: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("UPDATE _lintel_jobs SET status = 'succeeded', result = ")
        .bind(json_text(result))
        .push(", lease_id = NULL, lease_expires = NULL, finished = ")
        .bind(SqlValue::Int(now))
        .push(", updated = ")
        .bind(SqlValue::Int(now))
        .push(" WHERE id = ")
        .bind(text(id))
        .push(" AND lease_id = ")
        .bind(text(lease))
        .push(" AND status = 'running' RETURNING ")
        .push(COLS);
    sql
}

/// Ends many leased jobs in success in one statement: each `(id, lease, result)`
/// whose lease is still the job's. Returns the jobs it ended.
pub fn complete_many(d: Dialect, items: &[(String, String, Value)], now: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("UPDATE _lintel_jobs SET status = 'succeeded', result = v.result, lease_id = NULL, lease_expires = NULL, finished = ")
        .bind(SqlValue::Int(now))
        .push(", updated = ")
        .bind(SqlValue::Int(now))
        .push(" FROM (");
    for (i, (id, lease, result)) in items.iter().enumerate() {
        sql.push(if i == 0 {
            "SELECT "
        } else {
            " UNION ALL SELECT "
        });
        sql.bind(text(id)).push(" AS id, ");
        sql.bind(text(lease)).push(" AS lease, ");
        sql.bind(json_text(result)).push(" AS result");
    }
    sql.push(") AS v WHERE _lintel_jobs.id = v.id AND _lintel_jobs.lease_id = v.lease AND _lintel_jobs.status = 'running' RETURNING ");
    for (i, c) in COLS.split(", ").enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push("_lintel_jobs.").push(c);
    }
    sql
}

/// Ends a leased attempt in failure: `retrying` at `run_at`, or `dead` when `run_at`
/// is `None`.
pub fn fail(
    d: Dialect,
    id: &str,
    lease: &str,
    error: &str,
    run_at: Option<i64>,
    result: &Value,
    now: i64,
) -> Sql {
    let mut sql = Sql::new(d);
    match run_at {
        Some(at) => {
            sql.push("UPDATE _lintel_jobs SET status = 'retrying', run_at = ")
                .bind(SqlValue::Int(at))
                .push(", finished = NULL");
        }
        None => {
            sql.push("UPDATE _lintel_jobs SET status = 'dead', finished = ")
                .bind(SqlValue::Int(now));
        }
    }
    sql.push(", last_error = ")
        .bind(text(error))
        .push(", result = COALESCE(")
        .bind(json_text(result))
        .push(", result), lease_id = NULL, lease_expires = NULL, updated = ")
        .bind(SqlValue::Int(now))
        .push(" WHERE id = ")
        .bind(text(id))
        .push(" AND lease_id = ")
        .bind(text(lease))
        .push(" AND status = 'running' RETURNING ")
        .push(COLS);
    sql
}

/// Extends a lease by its length from now, and records progress when given.
pub fn heartbeat(d: Dialect, id: &str, lease: &str, progress: &Value, now: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("UPDATE _lintel_jobs SET lease_expires = ")
        .bind(SqlValue::Int(now))
        .push(" + lease_ms, progress = COALESCE(")
        .bind(json_text(progress))
        .push(", progress), updated = ")
        .bind(SqlValue::Int(now))
        .push(" WHERE id = ")
        .bind(text(id))
        .push(" AND lease_id = ")
        .bind(text(lease))
        .push(" AND status = 'running' RETURNING ")
        .push(COLS);
    sql
}

/// Queues a finished (dead, cancelled) or waiting (retrying) job to run now, with its
/// attempts counted from zero again.
pub fn retry(d: Dialect, id: &str, now: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("UPDATE _lintel_jobs SET status = 'queued', attempts = 0, run_at = ")
        .bind(SqlValue::Int(now))
        .push(", finished = NULL, lease_id = NULL, lease_expires = NULL, updated = ")
        .bind(SqlValue::Int(now))
        .push(" WHERE id = ")
        .bind(text(id))
        .push(" AND status IN ('dead', 'cancelled', 'retrying') RETURNING ")
        .push(COLS);
    sql
}

/// Cancels a job that has not finished; a running one loses its lease.
pub fn cancel(d: Dialect, id: &str, now: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("UPDATE _lintel_jobs SET status = 'cancelled', finished = ")
        .bind(SqlValue::Int(now))
        .push(", lease_id = NULL, lease_expires = NULL, updated = ")
        .bind(SqlValue::Int(now))
        .push(" WHERE id = ")
        .bind(text(id))
        .push(" AND status IN ('queued', 'retrying', 'running') RETURNING ")
        .push(COLS);
    sql
}

/// Deletes a finished job.
pub fn delete(d: Dialect, id: &str) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("DELETE FROM _lintel_jobs WHERE id = ")
        .bind(text(id))
        .push(" AND status IN ('succeeded', 'dead', 'cancelled')");
    sql
}

/// Hands the leases of a shutting-down worker back without counting the attempt.
pub fn release(d: Dialect, id: &str, lease: &str, now: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("UPDATE _lintel_jobs SET status = 'retrying', attempts = attempts - 1, lease_id = NULL, lease_expires = NULL, run_at = ")
        .bind(SqlValue::Int(now))
        .push(", updated = ")
        .bind(SqlValue::Int(now))
        .push(" WHERE id = ")
        .bind(text(id))
        .push(" AND lease_id = ")
        .bind(text(lease))
        .push(" AND status = 'running'");
    sql
}

/// Jobs by status, queue and kind (for the metrics gauges).
pub fn stats(d: Dialect) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("SELECT status, queue, kind, COUNT(*) FROM _lintel_jobs GROUP BY status, queue, kind");
    sql
}
