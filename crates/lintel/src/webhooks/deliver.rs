//! One attempt of a delivery (the `webhook` job kind): signs the stored body with the
//! webhook's secret (and a rotated-out one still in its grace period), posts it through
//! the outbound guard, and logs the attempt on the delivery. 2xx is success; 429, 5xx,
//! timeouts and connection failures are retried on the Standard Webhooks schedule (a
//! `Retry-After` on 429 or 503 replaces the next step); 3xx (never followed) and other
//! 4xx are final. An endpoint failing for five days is disabled, with a
//! `webhook.disabled` event.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::jobs::Job;
use crate::jobs::service::Failed;
use crate::runtime::Runtime;
use crate::store::{EventDraft, Sql, SqlValue, WriteMeta, WriteOp};
use crate::webhooks::dispatch::advance_ops;
use crate::webhooks::{Webhook, get, sign};

/// The waits before the retries (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h).
pub const SCHEDULE_MS: [i64; 7] = [
    5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
];
/// Each attempt's time limit.
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// The most of an answer read, and kept in the log.
const READ_CAP: usize = 64 * 1024;
const LOG_CAP: usize = 1024;
/// An endpoint failing this long is disabled.
const DISABLE_AFTER_MS: i64 = 5 * 24 * 3600 * 1000;

fn final_(m: impl Into<String>) -> Failed {
    Failed {
        error: m.into(),
        retry: false,
        ..Failed::default()
    }
}

/// The outcome of one request.
struct Attempt {
    status: Option<u16>,
    error: Option<String>,
    response: String,
    retry: bool,
    retry_after_ms: Option<i64>,
    latency_ms: u128,
}

async fn post(rt: &Runtime, w: &Webhook, id: &str, body: &str) -> Attempt {
    let started = Instant::now();
    let now = rt.clock.now_ms();
    let ts = now / 1000;
    let mut sigs: Vec<String> = sign(&w.secret, id, ts, body).into_iter().collect();
    if let (Some(old), Some(until)) = (&w.old_secret, w.old_secret_until)
        && until > now
        && let Some(s) = sign(old, id, ts, body)
    {
        sigs.push(s);
    }
    let fail = |error: String, retry: bool| Attempt {
        status: None,
        error: Some(error),
        response: String::new(),
        retry,
        retry_after_ms: None,
        latency_ms: started.elapsed().as_millis(),
    };
    let url = match rt.jobs.outbound.guard.check_url(&w.url) {
        Ok(u) => u,
        Err(r) => return fail(format!("refused destination: {r}"), false),
    };
    let mut req = rt
        .jobs
        .outbound
        .client
        .post(url)
        .timeout(TIMEOUT)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sigs.join(" "));
    for (k, v) in &w.headers {
        if let Some(v) = v.as_str() {
            req = req.header(k.as_str(), v);
        }
    }
    let mut res = match req.body(body.to_owned()).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return fail("the request timed out".into(), true),
        Err(e) => {
            let text = format!("{e:?}");
            if text.contains("no address outbound requests may reach") {
                return fail(
                    "refused destination: the host resolves only to internal addresses".into(),
                    true,
                );
            }
            return fail(
                if e.is_connect() {
                    "could not connect".into()
                } else {
                    "the request failed".into()
                },
                true,
            );
        }
    };
    let status = res.status();
    let wait = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after_ms(v, now));
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        let room = READ_CAP.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= READ_CAP {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf[..buf.len().min(LOG_CAP)]).into_owned();
    let code = status.as_u16();
    Attempt {
        status: Some(code),
        error: (!status.is_success()).then(|| format!("the endpoint answered {code}")),
        response: text,
        retry: code == 429 || status.is_server_error(),
        retry_after_ms: if matches!(code, 429 | 503) {
            wait
        } else {
            None
        },
        latency_ms: started.elapsed().as_millis(),
    }
}

/// A `Retry-After` value (seconds, or an HTTP date) as the wait in milliseconds from
/// `now_ms`, clamped to 1 s – 24 h.
pub fn retry_after_ms(value: &str, now_ms: i64) -> Option<i64> {
    let v = value.trim();
    let ms = match v.parse::<i64>() {
        Ok(s) => s.saturating_mul(1000),
        Err(_) => crate::clock::parse_http_date(v)?
            .saturating_mul(1000)
            .saturating_sub(now_ms),
    };
    Some(ms.clamp(1_000, 86_400_000))
}

/// Runs one attempt of a `webhook` job. The job names its delivery, or (the head of
/// an ordered webhook, started by [`advance_ops`]) is named by it.
pub async fn run(rt: &Runtime, job: &Job) -> Result<Value, Failed> {
    let Some(wid) = job.payload["webhook"].as_str() else {
        return Err(final_("the job names no webhook"));
    };
    let w = get(rt, wid)
        .await
        .map_err(|_| final_("the webhook was deleted"))?;
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT id, body, attempts, status, seq FROM _lintel_webhook_deliveries WHERE ");
    match job.payload["delivery"].as_str() {
        Some(did) => sql.push("id = ").bind(SqlValue::Text(did.to_owned())),
        None => sql.push("job = ").bind(SqlValue::Text(job.id.clone())),
    };
    let rows = rt.store.query_rows(sql).await.map_err(|e| Failed {
        error: format!("reading the delivery failed: {e}"),
        retry: true,
        ..Failed::default()
    })?;
    let Some(row) = rows.first() else {
        return Err(final_("the delivery is gone"));
    };
    let col = |i: usize| row.get(i).and_then(Value::as_str).unwrap_or_default();
    let did = col(0).to_owned();
    let did = did.as_str();
    let body = col(1).to_owned();
    let mut attempts: Vec<Value> = serde_json::from_str(col(2)).unwrap_or_default();
    // Already logged as done: this job ran it before a crash kept the job from
    // finishing. Nothing is sent twice on that account.
    if col(3) != "pending" {
        return Ok(json!({ "delivery": did, "status": col(3) }));
    }
    // Only an ordered webhook's deliveries start the next one when they end.
    let in_order = w.ordered && row.get(4).is_some_and(|v| !v.is_null());
    if !w.enabled {
        let now = rt.clock.now_ms();
        let mut off = Sql::new(rt.store.dialect());
        off.push("UPDATE _lintel_webhook_deliveries SET status = 'failed', next_attempt_at = NULL WHERE id = ")
            .bind(SqlValue::Text(did.to_owned()));
        let mut ops = vec![WriteOp::System {
            sql: off,
            expect: None,
        }];
        if in_order {
            ops.extend(advance_ops(rt, &w.id, now, true));
        }
        if let Err(e) = rt.store.write_as(ops, WriteMeta::default().at(now)).await {
            tracing::warn!(delivery = did, error = %e.error, "logging a webhook attempt failed");
        }
        rt.jobs.wake.notify_one();
        return Err(final_("the webhook is disabled"));
    }
    let a = post(rt, &w, did, &body).await;
    let now = rt.clock.now_ms();
    attempts.push(json!({
        "at": crate::clock::format_ms(now),
        "responseStatus": a.status,
        "latencyMs": a.latency_ms as u64,
        "response": a.response,
        "error": a.error,
    }));
    let succeeded = a.error.is_none();
    let disable = !succeeded
        && w.failing_since
            .is_some_and(|since| now - since >= DISABLE_AFTER_MS);
    // The job's own attempt count covers retries asked for by hand too.
    let more = a.retry && job.attempts < job.max_attempts && !disable;
    let delay = a.retry_after_ms.unwrap_or_else(|| {
        let i = usize::try_from(job.attempts.saturating_sub(1)).unwrap_or(0);
        SCHEDULE_MS
            .get(i)
            .copied()
            .unwrap_or(SCHEDULE_MS[SCHEDULE_MS.len() - 1])
    });
    let status = if succeeded {
        "succeeded"
    } else if more {
        "pending"
    } else {
        "failed"
    };
    let mut log = Sql::new(rt.store.dialect());
    log.push("UPDATE _lintel_webhook_deliveries SET status = ")
        .bind(SqlValue::Text(status.into()))
        .push(", attempts = ")
        .bind(SqlValue::Text(Value::from(attempts).to_string()))
        .push(", next_attempt_at = ")
        .bind(if more && !succeeded {
            SqlValue::Int(now + delay)
        } else {
            SqlValue::Null
        })
        .push(" WHERE id = ")
        .bind(SqlValue::Text(did.to_owned()));
    let mut ops = vec![WriteOp::System {
        sql: log,
        expect: None,
    }];
    let mut health = Sql::new(rt.store.dialect());
    if succeeded {
        health.push("UPDATE _lintel_webhooks SET failing_since = NULL WHERE id = ");
    } else {
        health
            .push("UPDATE _lintel_webhooks SET failing_since = COALESCE(failing_since, ")
            .bind(SqlValue::Int(now))
            .push(") WHERE id = ");
    }
    health.bind(SqlValue::Text(w.id.clone()));
    ops.push(WriteOp::System {
        sql: health,
        expect: None,
    });
    if disable {
        let mut off = Sql::new(rt.store.dialect());
        off.push("UPDATE _lintel_webhooks SET enabled = 0, updated = ")
            .bind(SqlValue::Int(now))
            .push(" WHERE id = ")
            .bind(SqlValue::Text(w.id.clone()));
        ops.push(WriteOp::System {
            sql: off,
            expect: None,
        });
        ops.push(WriteOp::Event(Box::new(EventDraft {
            kind: "webhook.disabled".into(),
            collection: None,
            record_id: Some(w.id.clone()),
            record: Some(json!({ "id": w.id, "url": w.url, "failingSince": w.failing_since.map(crate::clock::format_ms) })),
            previous: None,
        })));
    }
    // The delivery is done with: the next one of an ordered webhook may go (the health
    // update above holds the webhook's row).
    let done = succeeded || !more;
    if done && in_order {
        ops.extend(advance_ops(rt, &w.id, now, false));
    }
    if let Err(e) = rt.store.write_as(ops, WriteMeta::default().at(now)).await {
        tracing::warn!(delivery = did, error = %e.error, "logging a webhook attempt failed");
    }
    if done && in_order {
        rt.jobs.wake.notify_one();
    }
    if succeeded {
        Ok(json!({ "delivery": did, "responseStatus": a.status }))
    } else {
        Err(Failed {
            error: a.error.unwrap_or_default(),
            retry: more,
            retry_after_ms: None,
            delay_ms: Some(delay),
            result: json!({ "delivery": did, "responseStatus": a.status }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::retry_after_ms;

    #[test]
    fn retry_after_is_seconds_or_a_date_clamped_to_a_second_and_a_day() {
        assert_eq!(retry_after_ms("120", 0), Some(120_000));
        assert_eq!(retry_after_ms(" 0 ", 0), Some(1_000));
        assert_eq!(retry_after_ms("-5", 0), Some(1_000));
        assert_eq!(retry_after_ms("999999999", 0), Some(86_400_000));
        // 1994-11-06T08:49:37Z is 784111777 s after the epoch.
        let at = 784_111_777_000;
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", at - 30_000),
            Some(30_000)
        );
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", at + 30_000),
            Some(1_000)
        );
        assert_eq!(retry_after_ms("soon", 0), None);
    }
}
