//! Schedules: a job enqueued on every slot of a cron expression in a time zone. Each
//! slot fires exactly once across instances: firing moves `next_run` from the slot's
//! value to the next one with a compare-and-set in the same transaction as the
//! enqueue, so an instance that lost the race enqueues nothing. After downtime the
//! missed slots fire once, not once each: the next slot is counted from now.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock::format_ms;
use crate::jobs::cron::{Cron, time_zone};
use crate::jobs::error::JobError;
use crate::jobs::model::{NewJobInput, check};
use crate::jobs::service::{enqueue_ops, enqueued};
use crate::runtime::Runtime;
use crate::store::{Sql, SqlValue, StoreError, WriteError, WriteMeta, WriteOp};
use crate::validation::{FieldErrors, push_field_error};

/// The most schedules one store holds.
pub const MAX_SCHEDULES: i64 = 1000;

const COLS: &str =
    "id, name, cron, timezone, job, paused, next_run, last_run, last_job, created, updated";

/// `POST /v1/schedules` as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    pub name: Option<Value>,
    pub cron: Option<Value>,
    pub timezone: Option<Value>,
    pub job: Option<NewJobInput>,
    pub paused: Option<bool>,
}

/// `PATCH /v1/schedules/{id}` as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulePatch {
    pub paused: bool,
}

/// A schedule as clients see it.
fn to_json(r: &[Value]) -> Value {
    let at = |i: usize| r.get(i).cloned().unwrap_or(Value::Null);
    let ts = |i: usize| {
        r.get(i)
            .and_then(Value::as_i64)
            .map_or(Value::Null, |m| Value::String(format_ms(m)))
    };
    let id = at(0);
    let job = r
        .get(4)
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    let paused = r.get(5).and_then(Value::as_i64).unwrap_or(0) != 0;
    json!({
        "id": id,
        "name": at(1),
        "cron": at(2),
        "timezone": at(3),
        "job": job,
        "paused": paused,
        "nextRunAt": if paused { Value::Null } else { ts(6) },
        "lastRunAt": ts(7),
        "lastJobId": at(8),
        "created": ts(9),
        "updated": ts(10),
        "_links": { "self": { "href": format!("/v1/schedules/{}", id.as_str().unwrap_or_default()) } },
    })
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

/// Creates a schedule.
pub async fn create(rt: &Runtime, input: NewSchedule) -> Result<Value, JobError> {
    let mut errors = FieldErrors::new();
    let name = match &input.name {
        Some(Value::String(n)) if !n.trim().is_empty() && n.len() <= 100 => n.clone(),
        _ => {
            push_field_error(&mut errors, "name", "invalid", "1 to 100 characters");
            String::new()
        }
    };
    let cron_text = match &input.cron {
        Some(Value::String(c)) if c.len() <= 200 => match Cron::parse(c) {
            Ok(_) => c.clone(),
            Err(e) => {
                push_field_error(&mut errors, "cron", "invalid_cron", e);
                String::new()
            }
        },
        _ => {
            push_field_error(
                &mut errors,
                "cron",
                "required",
                "a cron expression such as \"*/5 * * * *\"",
            );
            String::new()
        }
    };
    let tz_name = match &input.timezone {
        None | Some(Value::Null) => "UTC".to_owned(),
        Some(Value::String(t)) if t.len() <= 64 => match time_zone(t) {
            Ok(_) => t.clone(),
            Err(e) => {
                push_field_error(&mut errors, "timezone", "invalid_timezone", e);
                String::new()
            }
        },
        Some(_) => {
            push_field_error(
                &mut errors,
                "timezone",
                "invalid_timezone",
                "an IANA time zone name such as Europe/Paris",
            );
            String::new()
        }
    };
    let job_input = match &input.job {
        Some(j) => {
            match check(j, "job.", false) {
                Ok(job) => {
                    if let Err(JobError::Invalid(e)) =
                        crate::jobs::service::check_destination(rt, &job, "job.")
                    {
                        errors.extend(e);
                    }
                }
                Err(e) => errors.extend(e),
            }
            Some(j.clone())
        }
        None => {
            push_field_error(
                &mut errors,
                "job",
                "required",
                "the job to enqueue on each slot",
            );
            None
        }
    };
    if !errors.is_empty() {
        return Err(JobError::Invalid(errors));
    }
    let count = rt
        .store
        .query_count({
            let mut s = Sql::new(rt.store.dialect());
            s.push("SELECT COUNT(*) FROM _lintel_schedules");
            s
        })
        .await?;
    if count >= MAX_SCHEDULES {
        return Err(JobError::field(
            "name",
            "too_many",
            format!("at most {MAX_SCHEDULES} schedules"),
        ));
    }
    let now = rt.clock.now_ms();
    let (cron, tz) = match (Cron::parse(&cron_text), time_zone(&tz_name)) {
        (Ok(c), Ok(t)) => (c, t),
        _ => return Err(JobError::field("cron", "invalid_cron", "cannot be parsed")),
    };
    let Some(next) = cron.next_after(now, &tz) else {
        return Err(JobError::field(
            "cron",
            "never",
            "no slot in the next five years",
        ));
    };
    let id = crate::ids::record_id();
    let job_json = serde_json::to_string(&job_value(job_input.as_ref()))
        .map_err(|e| JobError::Store(StoreError::Internal(e.to_string())))?;
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("INSERT INTO _lintel_schedules (id, name, cron, timezone, job, paused, next_run, created, updated) VALUES (");
    sql.bind_all([
        text(&id),
        text(&name),
        text(&cron_text),
        text(&tz_name),
        text(&job_json),
        SqlValue::Int(i64::from(input.paused.unwrap_or(false))),
        SqlValue::Int(next),
        SqlValue::Int(now),
        SqlValue::Int(now),
    ]);
    sql.push(") ON CONFLICT (name) DO NOTHING");
    match rt
        .store
        .write(vec![WriteOp::System {
            sql,
            expect: Some(1),
        }])
        .await
    {
        Ok(_) => {}
        Err(WriteError {
            error: StoreError::NotFound | StoreError::Constraint(_),
            ..
        }) => return Err(JobError::ScheduleExists),
        Err(WriteError { error, .. }) => return Err(error.into()),
    }
    get(rt, &id).await
}

/// The job part of a schedule as stored (the request's own members).
fn job_value(j: Option<&NewJobInput>) -> Value {
    let Some(j) = j else { return Value::Null };
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: &Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v.clone());
        }
    };
    put("kind", &j.kind);
    put("queue", &j.queue);
    put("payload", &j.payload);
    put("priority", &j.priority);
    put("maxAttempts", &j.max_attempts);
    put("uniqueKey", &j.unique_key);
    put("timeout", &j.timeout);
    Value::Object(m)
}

async fn row(rt: &Runtime, id: &str) -> Result<Vec<Value>, JobError> {
    if !crate::schema::kinds::is_record_id(id) {
        return Err(JobError::NotFound);
    }
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT ")
        .push(COLS)
        .push(" FROM _lintel_schedules WHERE id = ")
        .bind(text(id));
    rt.store
        .query_rows(sql)
        .await?
        .into_iter()
        .next()
        .ok_or(JobError::NotFound)
}

/// One schedule.
pub async fn get(rt: &Runtime, id: &str) -> Result<Value, JobError> {
    Ok(to_json(&row(rt, id).await?))
}

/// Every schedule, by name.
pub async fn list(rt: &Runtime) -> Result<Vec<Value>, JobError> {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT ")
        .push(COLS)
        .push(" FROM _lintel_schedules ORDER BY name LIMIT ")
        .bind(SqlValue::Int(MAX_SCHEDULES));
    Ok(rt
        .store
        .query_rows(sql)
        .await?
        .iter()
        .map(|r| to_json(r))
        .collect())
}

/// Pauses or resumes a schedule; resuming counts the next slot from now.
pub async fn set_paused(rt: &Runtime, id: &str, paused: bool) -> Result<Value, JobError> {
    let r = row(rt, id).await?;
    let now = rt.clock.now_ms();
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("UPDATE _lintel_schedules SET paused = ")
        .bind(SqlValue::Int(i64::from(paused)));
    if !paused {
        let cron = r
            .get(2)
            .and_then(Value::as_str)
            .and_then(|c| Cron::parse(c).ok());
        let tz = r
            .get(3)
            .and_then(Value::as_str)
            .and_then(|t| time_zone(t).ok());
        if let (Some(c), Some(tz)) = (cron, tz)
            && let Some(next) = c.next_after(now, &tz)
        {
            sql.push(", next_run = ").bind(SqlValue::Int(next));
        }
    }
    sql.push(", updated = ")
        .bind(SqlValue::Int(now))
        .push(" WHERE id = ")
        .bind(text(id));
    rt.store
        .write(vec![WriteOp::System {
            sql,
            expect: Some(1),
        }])
        .await
        .map_err(|WriteError { error, .. }| match error {
            StoreError::NotFound => JobError::NotFound,
            e => JobError::Store(e),
        })?;
    get(rt, id).await
}

/// Deletes a schedule (jobs it enqueued stay).
pub async fn delete(rt: &Runtime, id: &str) -> Result<(), JobError> {
    row(rt, id).await?;
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("DELETE FROM _lintel_schedules WHERE id = ")
        .bind(text(id));
    rt.store
        .write(vec![WriteOp::System {
            sql,
            expect: Some(1),
        }])
        .await
        .map_err(|WriteError { error, .. }| match error {
            StoreError::NotFound => JobError::NotFound,
            e => JobError::Store(e),
        })?;
    Ok(())
}

/// Enqueues the job of every due schedule, once per slot across instances. Returns
/// how many fired here.
pub async fn fire_due(rt: &Runtime) -> Result<usize, JobError> {
    let d = rt.store.dialect();
    let now = rt.clock.now_ms();
    let mut sql = Sql::new(d);
    sql.push("SELECT ")
        .push(COLS)
        .push(" FROM _lintel_schedules WHERE paused = 0 AND next_run <= ")
        .bind(SqlValue::Int(now))
        .push(" ORDER BY next_run LIMIT 100");
    let due = rt.store.query_rows(sql).await?;
    let mut fired = 0;
    for r in due {
        let (Some(id), Some(cron), Some(tz), Some(job), Some(slot)) = (
            r.first().and_then(Value::as_str),
            r.get(2)
                .and_then(Value::as_str)
                .and_then(|c| Cron::parse(c).ok()),
            r.get(3)
                .and_then(Value::as_str)
                .and_then(|t| time_zone(t).ok()),
            r.get(4)
                .and_then(Value::as_str)
                .and_then(|j| serde_json::from_str::<NewJobInput>(j).ok()),
            r.get(6).and_then(Value::as_i64),
        ) else {
            continue;
        };
        // The next slot counts from now: missed slots fire once, not once each.
        let next = cron.next_after(now.max(slot), &tz).unwrap_or(i64::MAX);
        let mut new_job = match check(&job, "job.", true) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(schedule = id, errors = ?e, "a schedule's job no longer passes its checks; skipping the slot");
                continue;
            }
        };
        new_job.schedule_id = Some(id.to_owned());
        let mut advance = Sql::new(d);
        let job_ops = enqueue_ops(d, &new_job, now);
        advance
            .push("UPDATE _lintel_schedules SET next_run = ")
            .bind(SqlValue::Int(next))
            .push(", last_run = ")
            .bind(SqlValue::Int(now))
            .push(", updated = ")
            .bind(SqlValue::Int(now))
            .push(" WHERE id = ")
            .bind(text(id))
            .push(" AND next_run = ")
            .bind(SqlValue::Int(slot));
        let mut ops = vec![WriteOp::System {
            sql: advance,
            expect: Some(1),
        }];
        ops.extend(job_ops);
        let meta = WriteMeta::by(Some(json!({ "type": "schedule", "id": id }))).at(now);
        match rt.store.write_as(ops, meta).await {
            Ok(out) => {
                if let Ok((job, _)) = enqueued(out.get(1..).unwrap_or(&[]))
                    && let Err(e) = note_last_job(rt, id, &job.id).await
                {
                    tracing::warn!(schedule = id, error = %e, "recording a schedule's last job failed");
                }
                fired += 1;
                rt.jobs.wake.notify_one();
            }
            // Another instance fired this slot.
            Err(WriteError {
                error: StoreError::NotFound,
                ..
            }) => {}
            Err(WriteError { error, .. }) => return Err(error.into()),
        }
    }
    Ok(fired)
}

async fn note_last_job(rt: &Runtime, id: &str, job: &str) -> Result<(), StoreError> {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("UPDATE _lintel_schedules SET last_job = ")
        .bind(text(job))
        .push(" WHERE id = ")
        .bind(text(id));
    rt.store
        .write(vec![WriteOp::System { sql, expect: None }])
        .await
        .map_err(|WriteError { error, .. }| error)?;
    Ok(())
}
