//! Lintel's own workers: they claim the built-in kinds this instance runs (up to
//! `jobs.concurrency` at once), keep each lease alive while the job runs, stop a job
//! that was cancelled or ran past its `timeout`, and end it with its result or its
//! failure. The same loop puts jobs whose lease expired back in the queue (for
//! external workers too), fires due schedules, and refreshes the queue's gauges. At
//! shutdown, jobs still running are handed back without counting the attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use crate::jobs::model::Job;
use crate::jobs::service::{self, Failed};
use crate::jobs::store::ClaimFilter;
use crate::jobs::{JobError, schedules};
use crate::runtime::Runtime;

/// The kinds this instance's workers run.
pub const RUNS: [&str; 5] = ["http", "mail", "webhook", "housekeeping", "search_rebuild"];
/// The kinds whose files are on one instance: claimed from its own queue only.
pub const LOCAL: [&str; 2] = ["import", "export"];

type Leases = Arc<Mutex<HashMap<String, String>>>;

/// Runs until `shutdown` fires.
pub async fn run(rt: Runtime, mut shutdown: watch::Receiver<bool>) {
    let cfg = rt.config.jobs.clone();
    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    let poll = Duration::from_millis(cfg.poll_ms.max(10));
    let lease_ms = i64::try_from(cfg.lease_seconds.max(1).saturating_mul(1000)).unwrap_or(60_000);
    let leases: Leases = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let filters = [
        ClaimFilter {
            queues: Vec::new(),
            kinds: RUNS.iter().map(|k| (*k).to_owned()).collect(),
        },
        ClaimFilter {
            queues: vec![crate::jobs::transfer::local_queue(&rt)],
            kinds: LOCAL.iter().map(|k| (*k).to_owned()).collect(),
        },
    ];
    let mut last_sweep: Option<Instant> = None;
    let mut last_stats: Option<Instant> = None;
    loop {
        if last_sweep.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_sweep = Some(Instant::now());
            if let Err(e) = service::reap(&rt).await {
                tracing::warn!(error = %e, "putting back jobs with expired leases failed");
            }
            if let Err(e) = schedules::fire_due(&rt).await {
                tracing::warn!(error = %e, "firing due schedules failed");
            }
        }
        if last_stats.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            last_stats = Some(Instant::now());
            refresh_gauges(&rt).await;
        }
        while tasks.try_join_next().is_some() {}
        let mut full_claim = false;
        for filter in &filters {
            let free = slots.available_permits();
            if free == 0 {
                break;
            }
            match service::claim(&rt, filter, free as i64, lease_ms).await {
                Ok(jobs) => {
                    full_claim |= jobs.len() == free;
                    for job in jobs {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        let Some(lease) = job.lease_id.clone() else {
                            continue;
                        };
                        if let Ok(mut l) = leases.lock() {
                            l.insert(job.id.clone(), lease.clone());
                        }
                        let rt = rt.clone();
                        let leases = leases.clone();
                        tasks.spawn(async move {
                            execute(&rt, job.clone(), &lease, lease_ms).await;
                            if let Ok(mut l) = leases.lock() {
                                l.remove(&job.id);
                            }
                            drop(permit);
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming jobs failed"),
            }
        }
        if full_claim {
            // More may be due: claim again as soon as a slot frees.
            tokio::select! {
                _ = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => break,
            }
        } else {
            tokio::select! {
                _ = rt.jobs.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => break,
            }
        }
        if *shutdown.borrow() {
            break;
        }
    }
    // Jobs already running get half the shutdown grace period to finish (a mail
    // being sent); what is still running then is handed back below, within the rest.
    let grace = Duration::from_millis(rt.config.http.shutdown_grace_ms / 2);
    let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let held: Vec<(String, String)> = leases
        .lock()
        .map(|l| l.iter().map(|(a, b)| (a.clone(), b.clone())).collect())
        .unwrap_or_default();
    for (id, lease) in held {
        if let Err(e) = service::release(&rt, &id, &lease).await {
            tracing::warn!(job = %id, error = %e, "handing a job back at shutdown failed");
        }
    }
}

/// The gauges of jobs by status, queue and kind.
async fn refresh_gauges(rt: &Runtime) {
    let Ok(rows) = rt
        .store
        .query_rows(crate::jobs::store::stats(rt.store.dialect()))
        .await
    else {
        return;
    };
    rt.metrics.scoped(|| {
        for status in crate::jobs::JobStatus::ALL {
            // Statuses with no job left read 0 rather than their last value.
            metrics::gauge!("lintel_jobs", "status" => status.as_str()).set(0.0);
        }
        let mut by_status: HashMap<String, f64> = HashMap::new();
        for r in &rows {
            let s = |i: usize| r.get(i).and_then(Value::as_str).unwrap_or("").to_owned();
            let n = r.get(3).and_then(Value::as_i64).unwrap_or(0) as f64;
            metrics::gauge!("lintel_jobs_by_kind", "status" => s(0), "queue" => s(1), "kind" => s(2)).set(n);
            *by_status.entry(s(0)).or_default() += n;
        }
        for (status, n) in by_status {
            metrics::gauge!("lintel_jobs", "status" => status).set(n);
        }
    });
}

/// How one attempt ended.
enum Ended {
    Done(Value),
    Failed(Failed),
    /// The lease is gone (the job was cancelled or the lease expired): stop quietly.
    Lost,
}

/// Runs one claimed job to its end.
async fn execute(rt: &Runtime, job: Job, lease: &str, lease_ms: i64) {
    let started = Instant::now();
    let lost = Arc::new(tokio::sync::Notify::new());
    // Aborts the heartbeat however this attempt ends (also when the runner aborts it).
    struct Beat(tokio::task::JoinHandle<()>);
    impl Drop for Beat {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let beat = {
        let rt = rt.clone();
        let id = job.id.clone();
        let lease = lease.to_owned();
        let lost = lost.clone();
        let every = Duration::from_millis(u64::try_from(lease_ms / 3).unwrap_or(1000).max(100));
        let lease_len = Duration::from_millis(u64::try_from(lease_ms).unwrap_or(60_000));
        Beat(tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(every).await;
                match service::heartbeat(&rt, &id, &lease, &Value::Null).await {
                    Ok(_) => renewed = Instant::now(),
                    Err(JobError::LeaseLost | JobError::NotFound) => {
                        lost.notify_one();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(job = %id, error = %e, "renewing a lease failed");
                        // Past the lease another worker may hold the job: stop here
                        // rather than run it twice at once.
                        if renewed.elapsed() >= lease_len {
                            lost.notify_one();
                            return;
                        }
                    }
                }
            }
        }))
    };
    let timeout = Duration::from_millis(u64::try_from(job.timeout_ms).unwrap_or(300_000).max(1));
    let ended = tokio::select! {
        r = tokio::time::timeout(timeout, run_kind(rt, &job)) => match r {
            Ok(e) => e,
            Err(_) => Ended::Failed(Failed {
                error: format!("timed out after {} s", timeout.as_secs()),
                retry: true,
                ..Failed::default()
            }),
        },
        _ = lost.notified() => Ended::Lost,
    };
    drop(beat);
    rt.metrics.scoped(|| {
        metrics::histogram!("lintel_jobs_run_seconds", "kind" => job.kind.clone())
            .record(started.elapsed().as_secs_f64());
    });
    let res = match ended {
        Ended::Done(result) => service::complete(rt, &job.id, lease, &result)
            .await
            .map(|_| ()),
        Ended::Failed(f) => service::fail(rt, &job.id, lease, &f).await.map(|_| ()),
        Ended::Lost => Ok(()),
    };
    match res {
        Ok(()) | Err(JobError::LeaseLost) => {}
        Err(e) => tracing::warn!(job = %job.id, error = %e, "recording a job's end failed"),
    }
}

/// Dispatches a job to its kind.
async fn run_kind(rt: &Runtime, job: &Job) -> Ended {
    match job.kind.as_str() {
        "http" => {
            let timeout = Duration::from_millis(u64::try_from(job.timeout_ms).unwrap_or(30_000));
            match crate::jobs::http::run(
                &rt.jobs.outbound,
                &job.payload,
                timeout,
                rt.clock.now_ms(),
            )
            .await
            {
                Ok(v) => Ended::Done(v),
                Err(f) => Ended::Failed(Failed {
                    error: f.message,
                    retry: f.retry,
                    retry_after_ms: f.retry_after_ms,
                    delay_ms: None,
                    result: f.result,
                }),
            }
        }
        "mail" => {
            let Some(mailer) = rt.mailer.clone() else {
                return Ended::Failed(Failed {
                    error: "no mail server is configured (mail.smtp_host)".into(),
                    retry: true,
                    ..Failed::default()
                });
            };
            let p = &job.payload;
            let body = p["body"].as_str().unwrap_or_default().to_owned();
            match mailer
                .deliver(
                    p["to"].as_str().unwrap_or_default(),
                    p["subject"].as_str().unwrap_or_default(),
                    body,
                )
                .await
            {
                Ok(()) => {
                    // The body holds a single-use link: it does not stay in the store.
                    let _ = service::redact_payload(
                        rt,
                        &job.id,
                        &json!({ "to": p["to"], "subject": p["subject"], "body": null }),
                    )
                    .await;
                    Ended::Done(json!({ "sent": true }))
                }
                Err((error, permanent)) => Ended::Failed(Failed {
                    error,
                    retry: !permanent,
                    ..Failed::default()
                }),
            }
        }
        "housekeeping" => {
            let policy = crate::store::purge::PurgePolicy::from_config(&rt.config);
            match crate::store::purge::purge_expired(
                rt.store.as_ref(),
                &policy,
                rt.clock.now_ms(),
                || true,
            )
            .await
            {
                Ok(r) => Ended::Done(json!({
                    "files": crate::jobs::transfer::sweep_files(rt).await,
                    "recordFiles": crate::files::sweep(rt).await,
                    "documents": crate::yjs::sweep(rt).await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "sweeping documents failed");
                        0
                    }),
                    "oauthStates": r.oauth_states,
                    "authTokens": r.auth_tokens,
                    "sessions": r.sessions,
                    "refreshTokens": r.refresh_tokens,
                    "idempotency": r.idempotency,
                    "audit": r.audit,
                    "events": r.events,
                    "jobs": r.jobs,
                })),
                Err(e) => Ended::Failed(Failed {
                    error: format!("purging failed: {e}"),
                    retry: true,
                    ..Failed::default()
                }),
            }
        }
        "webhook" => match crate::webhooks::deliver::run(rt, job).await {
            Ok(v) => Ended::Done(v),
            Err(f) => Ended::Failed(f),
        },
        "search_rebuild" => {
            let lease = job.lease_id.clone().unwrap_or_default();
            match crate::search::rebuild::run(rt, job, &lease).await {
                Ok(v) => Ended::Done(v),
                Err(f) => Ended::Failed(f),
            }
        }
        "import" | "export" => {
            let lease = job.lease_id.clone().unwrap_or_default();
            let r = if job.kind == "import" {
                crate::jobs::transfer::run_import(rt, job, &lease).await
            } else {
                crate::jobs::transfer::run_export(rt, job, &lease).await
            };
            // The spooled upload is no longer needed once the import is final.
            let done = match &r {
                Ok(_) => true,
                Err(f) => !f.retry || job.attempts >= job.max_attempts,
            };
            if job.kind == "import"
                && done
                && let Some(f) = job.payload["file"].as_str()
            {
                crate::jobs::transfer::remove_files(rt, &[f]).await;
            }
            match r {
                Ok(v) => Ended::Done(v),
                Err(f) => Ended::Failed(f),
            }
        }
        other => Ended::Failed(Failed {
            error: format!("this server does not run jobs of kind {other}"),
            retry: false,
            ..Failed::default()
        }),
    }
}
