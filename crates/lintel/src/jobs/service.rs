//! Job operations for the routes, the batch endpoint, Lintel's own workers and the
//! scheduler: enqueue (once per `uniqueKey`), read, list, retry, cancel, delete, and the
//! worker protocol (claim, heartbeat, complete, fail) under leases.

use serde_json::Value;

use crate::jobs::backoff::Backoff;
use crate::jobs::error::JobError;
use crate::jobs::model::{Job, JobStatus, NewJob};
use crate::jobs::store::{self as sql, ClaimFilter, ListFilter};
use crate::runtime::Runtime;
use crate::store::{Dialect, Sql, StoreError, WriteError, WriteMeta, WriteOp, WriteOutcome};

/// The most job event streams open at once on an instance.
pub const MAX_STREAMS: usize = 256;

/// The jobs part of the runtime.
pub struct JobsRuntime {
    /// This instance's lasting id (kept in the data folder): the queue of jobs whose
    /// files are here.
    pub instance: String,
    /// Wakes this instance's workers (a job was enqueued here).
    pub wake: tokio::sync::Notify,
    pub backoff: Backoff,
    /// The guard and client of outbound requests.
    pub outbound: crate::outbound::Outbound,
    /// Open `GET /v1/jobs/{id}/events` streams (each polls the store): bounded.
    pub streams: std::sync::Arc<tokio::sync::Semaphore>,
}

impl JobsRuntime {
    pub fn new(config: &crate::config::Config, instance: String) -> anyhow::Result<Self> {
        Ok(Self {
            instance,
            wake: tokio::sync::Notify::new(),
            backoff: Backoff::from_config(&config.jobs),
            outbound: crate::outbound::Outbound::new(&config.outbound.allow_hosts)?,
            streams: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        })
    }
}

/// Refuses an `http` job whose URL names an internal address literally (a name is
/// checked again, address by address, when the job runs). `field` prefixes the error.
pub fn check_destination(rt: &Runtime, job: &NewJob, prefix: &str) -> Result<(), JobError> {
    if job.kind != "http" {
        return Ok(());
    }
    let url = job
        .payload
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default();
    rt.jobs
        .outbound
        .guard
        .check_url(url)
        .map(|_| ())
        .map_err(|r| {
            JobError::field(
                &format!("{prefix}payload.url"),
                "refused_destination",
                r.to_string(),
            )
        })
}

/// Runs one statement that returns rows, in its own transaction on the primary.
async fn rows(rt: &Runtime, sql: Sql) -> Result<Vec<Vec<Value>>, StoreError> {
    match rt
        .store
        .write(vec![WriteOp::Query { sql }])
        .await
        .map_err(|WriteError { error, .. }| error)?
        .pop()
    {
        Some(WriteOutcome::Rows(r)) => Ok(r),
        _ => Ok(Vec::new()),
    }
}

fn first(rows: &[Vec<Value>]) -> Result<Option<Job>, StoreError> {
    rows.first().map(|r| sql::decode(r)).transpose()
}

/// The ops that enqueue a job inside a larger transaction (a batch): the insert, and
/// when the job has a `uniqueKey`, the read of the active job holding it.
pub fn enqueue_ops(d: Dialect, job: &NewJob, now: i64) -> Vec<WriteOp> {
    enqueue_ops_as(d, &crate::ids::record_id(), job, now)
}

/// [`enqueue_ops`] for a job whose id the caller chose (to store it beside).
pub fn enqueue_ops_as(d: Dialect, id: &str, job: &NewJob, now: i64) -> Vec<WriteOp> {
    let mut ops = vec![WriteOp::Query {
        sql: sql::insert(d, id, job, now),
    }];
    if let Some(k) = &job.unique_key {
        ops.push(WriteOp::Query {
            sql: sql::active_with_key(d, k),
        });
    }
    ops
}

/// The job the ops of [`enqueue_ops`] enqueued (true) or found holding its key (false).
pub fn enqueued(outcomes: &[WriteOutcome]) -> Result<(Job, bool), JobError> {
    let pick = |o: Option<&WriteOutcome>| match o {
        Some(WriteOutcome::Rows(r)) => first(r),
        _ => Ok(None),
    };
    if let Some(job) = pick(outcomes.first())? {
        return Ok((job, true));
    }
    match pick(outcomes.get(1))? {
        Some(job) => Ok((job, false)),
        // The key's holder finished between the two statements: rare; the caller may
        // simply enqueue again.
        None => Err(JobError::Duplicate),
    }
}

/// Enqueues a job: 201 with the new job, or the active job with the same `uniqueKey`.
pub async fn enqueue(rt: &Runtime, job: &NewJob, meta: WriteMeta) -> Result<(Job, bool), JobError> {
    let now = rt.clock.now_ms();
    let out = rt
        .store
        .write_as(enqueue_ops(rt.store.dialect(), job, now), meta)
        .await
        .map_err(|WriteError { error, .. }| error)?;
    let (job, created) = enqueued(&out)?;
    if created {
        rt.jobs.wake.notify_one();
    }
    Ok((job, created))
}

/// One job.
pub async fn get(rt: &Runtime, id: &str) -> Result<Job, JobError> {
    if !crate::schema::kinds::is_record_id(id) {
        return Err(JobError::NotFound);
    }
    let rows = rt
        .store
        .query_rows(sql::by_id(rt.store.dialect(), id))
        .await?;
    first(&rows)?.ok_or(JobError::NotFound)
}

/// A page of jobs, newest first, and how many match.
pub async fn list(
    rt: &Runtime,
    filter: &ListFilter,
    page: i64,
    per_page: i64,
) -> Result<(Vec<Job>, i64), JobError> {
    let d = rt.store.dialect();
    let offset = (page - 1).saturating_mul(per_page);
    let items = sql::decode_all(
        &rt.store
            .query_rows(sql::list(d, filter, per_page, offset))
            .await?,
    )?;
    let total = rt.store.query_count(sql::count(d, filter)).await?;
    Ok((items, total))
}

/// The job an update found, or why it found none (missing, or in the wrong status).
async fn changed_or(
    rt: &Runtime,
    id: &str,
    rows: Vec<Vec<Value>>,
    wanted: &'static str,
) -> Result<Job, JobError> {
    if let Some(job) = first(&rows)? {
        return Ok(job);
    }
    let job = get(rt, id).await?;
    Err(JobError::Status {
        status: job.status.as_str(),
        wanted,
    })
}

/// Runs a dead, cancelled or waiting job again now.
pub async fn retry(rt: &Runtime, id: &str) -> Result<Job, JobError> {
    get(rt, id).await?;
    let r = rows(rt, sql::retry(rt.store.dialect(), id, rt.clock.now_ms())).await;
    let r = match r {
        Err(StoreError::Constraint(_)) => return Err(JobError::Duplicate),
        other => other?,
    };
    let job = changed_or(rt, id, r, "dead, cancelled or retrying").await?;
    rt.jobs.wake.notify_one();
    Ok(job)
}

/// Cancels a job that has not finished (a running one's worker loses its lease).
pub async fn cancel(rt: &Runtime, id: &str) -> Result<Job, JobError> {
    get(rt, id).await?;
    let r = rows(rt, sql::cancel(rt.store.dialect(), id, rt.clock.now_ms())).await?;
    changed_or(rt, id, r, "queued, retrying or running").await
}

/// Deletes a finished job.
pub async fn delete(rt: &Runtime, id: &str) -> Result<(), JobError> {
    let job = get(rt, id).await?;
    let out = rt
        .store
        .write(vec![WriteOp::System {
            sql: sql::delete(rt.store.dialect(), id),
            expect: None,
        }])
        .await
        .map_err(|WriteError { error, .. }| error)?;
    match out.first() {
        Some(WriteOutcome::Affected(1)) => Ok(()),
        _ => Err(JobError::Status {
            status: job.status.as_str(),
            wanted: "succeeded, dead or cancelled",
        }),
    }
}

fn record_claims(rt: &Runtime, jobs: &[Job], now: i64) {
    rt.metrics.scoped(|| {
        for j in jobs {
            metrics::histogram!("lintel_jobs_claim_delay_seconds", "queue" => j.queue.clone(), "kind" => j.kind.clone())
                .record((now - j.run_at).max(0) as f64 / 1000.0);
        }
    });
}

/// Claims up to `max` due jobs under leases of `lease_ms`, highest priority first.
pub async fn claim(
    rt: &Runtime,
    filter: &ClaimFilter,
    max: i64,
    lease_ms: i64,
) -> Result<Vec<Job>, JobError> {
    let now = rt.clock.now_ms();
    let token = format!("{}.", crate::ids::secret_token());
    let r = rows(
        rt,
        sql::claim(rt.store.dialect(), filter, max, lease_ms, &token, now),
    )
    .await?;
    let mut jobs = sql::decode_all(&r)?;
    jobs.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.run_at.cmp(&b.run_at))
            .then(a.id.cmp(&b.id))
    });
    record_claims(rt, &jobs, now);
    Ok(jobs)
}

/// Why a call naming a lease found no running job under it.
async fn lease_miss(rt: &Runtime, id: &str) -> JobError {
    match get(rt, id).await {
        Ok(_) => JobError::LeaseLost,
        Err(e) => e,
    }
}

/// Extends a lease (and records progress).
pub async fn heartbeat(
    rt: &Runtime,
    id: &str,
    lease: &str,
    progress: &Value,
) -> Result<Job, JobError> {
    let r = rows(
        rt,
        sql::heartbeat(rt.store.dialect(), id, lease, progress, rt.clock.now_ms()),
    )
    .await?;
    match first(&r)? {
        Some(job) => Ok(job),
        None => Err(lease_miss(rt, id).await),
    }
}

fn count_finished(rt: &Runtime, job: &Job) {
    let outcome = job.status.as_str();
    rt.metrics.scoped(|| {
        metrics::counter!("lintel_jobs_finished_total", "queue" => job.queue.clone(), "kind" => job.kind.clone(), "outcome" => outcome)
            .increment(1);
    });
}

/// Ends a leased job in success.
pub async fn complete(
    rt: &Runtime,
    id: &str,
    lease: &str,
    result: &Value,
) -> Result<Job, JobError> {
    let r = rows(
        rt,
        sql::complete(rt.store.dialect(), id, lease, result, rt.clock.now_ms()),
    )
    .await?;
    match first(&r)? {
        Some(job) => {
            count_finished(rt, &job);
            Ok(job)
        }
        None => Err(lease_miss(rt, id).await),
    }
}

/// How an attempt failed, as a worker reports it.
#[derive(Debug, Clone, Default)]
pub struct Failed {
    pub error: String,
    /// `false` makes the job dead at once (a failure that must not be retried).
    pub retry: bool,
    pub retry_after_ms: Option<i64>,
    /// The exact delay before the next attempt, past the backoff's cap (a schedule
    /// of the kind's own, such as webhooks').
    pub delay_ms: Option<i64>,
    pub result: Value,
}

/// The statement that ends an attempt of `job` in failure.
fn fail_sql(rt: &Runtime, job: &Job, lease: &str, f: &Failed, now: i64) -> Sql {
    let last = !f.retry || job.attempts >= job.max_attempts;
    let run_at = (!last).then(|| match f.delay_ms {
        Some(d) => now.saturating_add(d.max(0)),
        None => rt
            .jobs
            .backoff
            .next_run(now, job.attempts, f.retry_after_ms),
    });
    let error: String = f.error.chars().take(2000).collect();
    sql::fail(
        rt.store.dialect(),
        &job.id,
        lease,
        &error,
        run_at,
        &f.result,
        now,
    )
}

/// Ends a leased attempt in failure: retried after a backoff, or dead.
pub async fn fail(rt: &Runtime, id: &str, lease: &str, f: &Failed) -> Result<Job, JobError> {
    let job = get(rt, id).await?;
    if job.status != JobStatus::Running || job.lease_id.as_deref() != Some(lease) {
        return Err(JobError::LeaseLost);
    }
    let now = rt.clock.now_ms();
    let r = rows(rt, fail_sql(rt, &job, lease, f, now)).await?;
    match first(&r)? {
        Some(job) => {
            count_finished(rt, &job);
            Ok(job)
        }
        None => Err(lease_miss(rt, id).await),
    }
}

/// One item of a batch complete or fail: the job, or why not.
pub type ItemResult = Result<Job, JobError>;

/// Completes many leased jobs in one transaction.
pub async fn complete_many(
    rt: &Runtime,
    items: &[(String, String, Value)],
) -> Result<Vec<ItemResult>, JobError> {
    let d = rt.store.dialect();
    let now = rt.clock.now_ms();
    // One statement per 400 jobs (SQLite takes at most 500 terms in a compound
    // SELECT), all in one transaction.
    let ops = items
        .chunks(400)
        .map(|c| WriteOp::Query {
            sql: sql::complete_many(d, c, now),
        })
        .collect();
    let out = rt
        .store
        .write(ops)
        .await
        .map_err(|WriteError { error, .. }| error)?;
    let mut done: std::collections::HashMap<String, Job> = std::collections::HashMap::new();
    for o in out {
        if let WriteOutcome::Rows(r) = o {
            for j in sql::decode_all(&r)? {
                done.insert(j.id.clone(), j);
            }
        }
    }
    let mut results = Vec::with_capacity(items.len());
    for (id, _, _) in items {
        let job = done.remove(id);
        results.push(match job {
            Some(j) => {
                count_finished(rt, &j);
                Ok(j)
            }
            None => Err(lease_miss(rt, id).await),
        });
    }
    Ok(results)
}

/// Fails many leased jobs in one transaction.
pub async fn fail_many(
    rt: &Runtime,
    items: &[(String, String, Failed)],
) -> Result<Vec<ItemResult>, JobError> {
    let now = rt.clock.now_ms();
    let mut results: Vec<Option<ItemResult>> = Vec::with_capacity(items.len());
    let mut ops = Vec::new();
    let mut at = Vec::new();
    for (i, (id, lease, f)) in items.iter().enumerate() {
        match get(rt, id).await {
            Ok(job)
                if job.status == JobStatus::Running
                    && job.lease_id.as_deref() == Some(lease.as_str()) =>
            {
                ops.push(WriteOp::Query {
                    sql: fail_sql(rt, &job, lease, f, now),
                });
                at.push(i);
                results.push(None);
            }
            Ok(_) => results.push(Some(Err(JobError::LeaseLost))),
            Err(e) => results.push(Some(Err(e))),
        }
    }
    if !ops.is_empty() {
        let out = rt
            .store
            .write(ops)
            .await
            .map_err(|WriteError { error, .. }| error)?;
        for (i, o) in at.into_iter().zip(out) {
            let job = match o {
                WriteOutcome::Rows(r) => first(&r)?,
                _ => None,
            };
            results[i] = Some(match job {
                Some(j) => {
                    count_finished(rt, &j);
                    Ok(j)
                }
                None => Err(lease_miss(rt, &items[i].0).await),
            });
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(Err(JobError::LeaseLost)))
        .collect())
}

/// Puts jobs whose lease expired back (or makes them dead); returns them.
pub async fn reap(rt: &Runtime) -> Result<Vec<Job>, JobError> {
    let r = rows(rt, sql::reap(rt.store.dialect(), rt.clock.now_ms())).await?;
    let jobs = sql::decode_all(&r)?;
    for j in &jobs {
        if j.status == JobStatus::Dead {
            count_finished(rt, j);
        }
    }
    Ok(jobs)
}

/// Replaces a job's payload (a sent mail's body, which holds a single-use link).
pub async fn redact_payload(rt: &Runtime, id: &str, payload: &Value) -> Result<(), JobError> {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("UPDATE _lintel_jobs SET payload = ")
        .bind(crate::store::SqlValue::Text(payload.to_string()))
        .push(" WHERE id = ")
        .bind(crate::store::SqlValue::Text(id.to_owned()));
    rt.store
        .write(vec![WriteOp::System { sql, expect: None }])
        .await
        .map_err(|WriteError { error, .. }| error)?;
    Ok(())
}

/// Hands a job back without counting the attempt (this instance is shutting down).
pub async fn release(rt: &Runtime, id: &str, lease: &str) -> Result<(), JobError> {
    rt.store
        .write(vec![WriteOp::System {
            sql: sql::release(rt.store.dialect(), id, lease, rt.clock.now_ms()),
            expect: None,
        }])
        .await
        .map_err(|WriteError { error, .. }| error)?;
    Ok(())
}

/// The statement that records a job's progress, only while `lease` holds it.
pub fn progress_op(rt: &Runtime, job: &Job, lease: &str, progress: &Value) -> WriteOp {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("UPDATE _lintel_jobs SET progress = ")
        .bind(crate::store::sql::SqlValue::Text(progress.to_string()))
        .push(" WHERE id = ")
        .bind(crate::store::sql::SqlValue::Text(job.id.clone()))
        .push(" AND lease_id = ")
        .bind(crate::store::sql::SqlValue::Text(lease.to_owned()))
        .push(" AND status = 'running'");
    WriteOp::System {
        sql,
        expect: Some(1),
    }
}
