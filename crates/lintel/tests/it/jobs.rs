//! The job queue: enqueue and manage, uniqueKey, the worker protocol under leases,
//! lease expiry, backoff on an explicit clock, `http` jobs through the outbound guard,
//! enqueue inside a batch, schedules.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lintel::clock::Clock;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Reply, TestApp, api_key, bearer, login, signup, superuser_token};

/// Lintel's own workers off, so only the test's worker takes jobs.
fn no_workers(c: &mut lintel::Config) {
    c.jobs.concurrency = 0;
}

async fn enqueue(app: &TestApp, body: Value) -> Value {
    let r = app.admin(Method::POST, "/v1/jobs", Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body
}

async fn job(app: &TestApp, id: &str) -> Value {
    let r = app
        .admin(Method::GET, &format!("/v1/jobs/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

/// A worker's key: a superuser's API key scoped `jobs:work`.
async fn worker(app: &TestApp) -> String {
    let root = superuser_token(app).await;
    api_key(app, &root, json!(["jobs:work"])).await
}

async fn work(app: &TestApp, key: &str, path: &str, body: Value) -> Reply {
    bearer(app, key, Method::POST, path, Some(body)).await
}

/// Polls a job until `done` holds (Lintel's own workers run in the background).
async fn until(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        let j = job(app, id).await;
        if done(&j) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {id} never reached the state: {}", job(app, id).await);
}

#[tokio::test]
async fn jobs_are_enqueued_read_listed_cancelled_and_deleted() {
    let app = TestApp::spawn_with(no_workers).await;
    let j = enqueue(
        &app,
        json!({"kind": "email.digest", "queue": "mail", "payload": {"user": 7}, "priority": 5, "maxAttempts": 3, "timeout": 60}),
    )
    .await;
    let id = j["id"].as_str().unwrap();
    assert_eq!(j["status"], "queued");
    assert_eq!(j["kind"], "email.digest");
    assert_eq!(j["queue"], "mail");
    assert_eq!(j["payload"]["user"], 7);
    assert_eq!(j["priority"], 5);
    assert_eq!(j["attempts"], 0);
    assert_eq!(j["maxAttempts"], 3);
    assert_eq!(j["timeout"], 60);
    assert!(j["runAt"].as_str().is_some());
    assert_eq!(j["_links"]["self"]["href"], format!("/v1/jobs/{id}"));
    let defaults = enqueue(&app, json!({"kind": "noop"})).await;
    assert_eq!(defaults["queue"], "default");
    assert_eq!(defaults["maxAttempts"], 25);
    assert_eq!(defaults["priority"], 0);
    assert_eq!(job(&app, id).await["payload"]["user"], 7);

    let r = app.admin(Method::GET, "/v1/jobs?queue=mail", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["totalItems"], 1);
    assert_eq!(r.body["page"], 1);
    assert_eq!(r.body["perPage"], 30);
    assert_eq!(r.body["items"][0]["id"], id);
    let r = app
        .admin(Method::GET, "/v1/jobs?status=queued&perPage=1&page=2", None)
        .await;
    assert_eq!(r.body["totalItems"], 2);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);

    // Only finished jobs are deleted.
    let r = app
        .admin(Method::DELETE, &format!("/v1/jobs/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.problem_code(), "invalid_status");
    let r = app
        .admin(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    assert!(r.body["finishedAt"].as_str().is_some());
    let r = app
        .admin(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = app
        .admin(Method::DELETE, &format!("/v1/jobs/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app
        .admin(Method::GET, &format!("/v1/jobs/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_jobs_are_refused_with_the_field() {
    let app = TestApp::spawn_with(no_workers).await;
    for (body, field, code) in [
        (json!({}), "kind", "required"),
        (json!({"kind": "has space"}), "kind", "invalid"),
        (json!({"kind": "import"}), "kind", "reserved"),
        (
            json!({"kind": "x", "priority": 5000}),
            "priority",
            "out_of_range",
        ),
        (
            json!({"kind": "x", "maxAttempts": 0}),
            "maxAttempts",
            "out_of_range",
        ),
        (
            json!({"kind": "x", "timeout": "soon"}),
            "timeout",
            "invalid_type",
        ),
        (
            json!({"kind": "x", "runAt": "tomorrow"}),
            "runAt",
            "invalid_datetime",
        ),
        (
            json!({"kind": "x", "uniqueKey": ""}),
            "uniqueKey",
            "invalid",
        ),
        (json!({"kind": "x", "queue": "a/b"}), "queue", "invalid"),
        (
            json!({"kind": "http", "payload": {"url": "ftp://x"}}),
            "payload.url",
            "invalid",
        ),
        (
            json!({"kind": "http", "payload": {"url": "http://169.254.169.254/"}}),
            "payload.url",
            "refused_destination",
        ),
        (
            json!({"kind": "http", "payload": {"url": "https://example.com", "method": "BREW"}}),
            "payload.method",
            "invalid",
        ),
    ] {
        let r = app
            .admin(Method::POST, "/v1/jobs", Some(body.clone()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.field_error(field), Some(code), "{body}: {}", r.text);
    }
    let r = app
        .admin(
            Method::POST,
            "/v1/jobs",
            Some(json!({"kind": "x", "nope": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // Nobody but superusers enqueues.
    let r = app
        .json(Method::POST, "/v1/jobs", json!({"kind": "x"}))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    signup(&app, "u@example.com").await;
    let user = crate::common::access(&login(&app, "u@example.com").await);
    let r = bearer(
        &app,
        &user,
        Method::POST,
        "/v1/jobs",
        Some(json!({"kind": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = bearer(&app, &user, Method::GET, "/v1/jobs", None).await;
    assert_eq!(r.status, StatusCode::OK, "others list only their own jobs");
    assert_eq!(r.body["totalItems"], 0);
    let id = enqueue(&app, json!({"kind": "x"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = bearer(&app, &user, Method::GET, &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "a job someone else started is not there"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_unique_key_admits_one_active_job() {
    let app = TestApp::spawn_with(no_workers).await;
    let key = worker(&app).await;
    let first = enqueue(&app, json!({"kind": "sync", "uniqueKey": "user-7"})).await;
    let r = app
        .admin(
            Method::POST,
            "/v1/jobs",
            Some(json!({"kind": "sync", "uniqueKey": "user-7", "payload": 2})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["id"], first["id"]);
    // Still held while it runs; free once it finished.
    let claimed = work(
        &app,
        &key,
        "/v1/jobs/claim",
        json!({"kinds": ["sync"], "max": 10}),
    )
    .await;
    assert_eq!(
        claimed.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        claimed.text
    );
    let lease = claimed.body["items"][0]["leaseId"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .admin(
            Method::POST,
            "/v1/jobs",
            Some(json!({"kind": "sync", "uniqueKey": "user-7"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let id = first["id"].as_str().unwrap();
    let r = work(
        &app,
        &key,
        &format!("/v1/jobs/{id}/complete"),
        json!({"leaseId": lease, "result": {"ok": true}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .admin(
            Method::POST,
            "/v1/jobs",
            Some(json!({"kind": "sync", "uniqueKey": "user-7"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_ne!(r.body["id"], first["id"]);
    app.shutdown().await;
}

#[tokio::test]
async fn workers_claim_by_priority_heartbeat_and_complete_under_their_lease() {
    let app = TestApp::spawn_with(no_workers).await;
    let key = worker(&app).await;
    let low = enqueue(&app, json!({"kind": "resize", "priority": 1})).await;
    let high = enqueue(&app, json!({"kind": "resize", "priority": 9})).await;
    enqueue(&app, json!({"kind": "other"})).await;
    enqueue(
        &app,
        json!({"kind": "resize", "runAt": "2999-01-01T00:00:00Z"}),
    )
    .await;
    let r = work(
        &app,
        &key,
        "/v1/jobs/claim",
        json!({"kinds": ["resize"], "max": 100, "lease": 30}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        2,
        "only due jobs of the kinds asked: {}",
        r.text
    );
    assert_eq!(items[0]["id"], high["id"]);
    assert_eq!(items[1]["id"], low["id"]);
    assert_eq!(items[0]["status"], "running");
    assert_eq!(items[0]["attempts"], 1);
    assert!(items[0]["leaseExpiresAt"].as_str().is_some());
    let lease = items[0]["leaseId"].as_str().unwrap();
    let id = high["id"].as_str().unwrap();
    // Nothing left to claim.
    let r = work(&app, &key, "/v1/jobs/claim", json!({"kinds": ["resize"]})).await;
    assert_eq!(r.body["items"], json!([]));
    // Reads never show the lease.
    assert!(job(&app, id).await.get("leaseId").is_none());
    let r = work(
        &app,
        &key,
        &format!("/v1/jobs/{id}/heartbeat"),
        json!({"leaseId": lease, "progress": {"processed": 5}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["progress"]["processed"], 5);
    for wrong in ["nope", ""] {
        let r = work(
            &app,
            &key,
            &format!("/v1/jobs/{id}/complete"),
            json!({"leaseId": wrong}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        assert_eq!(r.problem_code(), "lease_lost");
    }
    let r = work(
        &app,
        &key,
        &format!("/v1/jobs/{id}/complete"),
        json!({"leaseId": lease, "result": {"w": 640}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(r.body["result"]["w"], 640);
    // A second completion with the same lease is refused.
    let r = work(
        &app,
        &key,
        &format!("/v1/jobs/{id}/complete"),
        json!({"leaseId": lease}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Batch forms: one good, one with a wrong lease, one unknown job.
    let other_lease = items[1]["leaseId"].as_str().unwrap();
    let r = work(
        &app,
        &key,
        "/v1/jobs/complete",
        json!({"items": [
            {"id": low["id"], "leaseId": other_lease, "result": 1},
            {"id": id, "leaseId": lease},
            {"id": "aaaaaaaaaaaaaaaa", "leaseId": "x"},
        ]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let statuses: Vec<i64> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 409, 404], "{}", r.text);
    // Bad claims.
    for (body, field) in [
        (json!({"max": 0}), "max"),
        (json!({"max": 1001}), "max"),
        (json!({"lease": 0}), "lease"),
        (json!({"lease": 3601}), "lease"),
        (json!({"kinds": ["a b"]}), "kinds"),
        (json!({"kinds": ["mail"]}), "kinds"),
        (json!({"kinds": ["http"]}), "kinds"),
    ] {
        let r = work(&app, &key, "/v1/jobs/claim", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.field_error(field).is_some(), "{body}: {}", r.text);
    }
    // Only workers claim.
    let root = superuser_token(&app).await;
    let reader = api_key(&app, &root, json!(["jobs:read"])).await;
    let r = work(&app, &reader, "/v1/jobs/claim", json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.problem_code(), "insufficient_scope");
    let r = app.json(Method::POST, "/v1/jobs/claim", json!({})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_dies_mid_job_leads_to_exactly_one_completion() {
    let app = TestApp::spawn_clocked(no_workers).await;
    let key = worker(&app).await;
    let j = enqueue(&app, json!({"kind": "render"})).await;
    let id = j["id"].as_str().unwrap();
    let first = work(
        &app,
        &key,
        "/v1/jobs/claim",
        json!({"kinds": ["render"], "lease": 30}),
    )
    .await;
    let dead_lease = first.body["items"][0]["leaseId"]
        .as_str()
        .unwrap()
        .to_owned();
    // The first worker dies: its lease runs out and the sweep puts the job back with the
    // attempt counted.
    app.advance(Duration::from_secs(31));
    let back = until(&app, id, |j| j["status"] == "retrying").await;
    assert_eq!(back["attempts"], 1);
    assert!(
        back["lastError"]
            .as_str()
            .unwrap()
            .contains("lease expired")
    );
    let second = work(
        &app,
        &key,
        "/v1/jobs/claim",
        json!({"kinds": ["render"], "lease": 30}),
    )
    .await;
    assert_eq!(second.body["items"][0]["id"], id, "{}", second.text);
    assert_eq!(second.body["items"][0]["attempts"], 2);
    let lease = second.body["items"][0]["leaseId"]
        .as_str()
        .unwrap()
        .to_owned();
    // The first worker wakes up and tries to finish: refused.
    let r = work(
        &app,
        &key,
        &format!("/v1/jobs/{id}/complete"),
        json!({"leaseId": dead_lease}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let r = work(
        &app,
        &key,
        &format!("/v1/jobs/{id}/heartbeat"),
        json!({"leaseId": dead_lease}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = work(
        &app,
        &key,
        &format!("/v1/jobs/{id}/complete"),
        json!({"leaseId": lease, "result": "done"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let done = job(&app, id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["result"], "done");
    app.shutdown().await;
}

#[tokio::test]
async fn failures_back_off_with_jitter_then_die_and_can_be_retried() {
    let app = TestApp::spawn_clocked(no_workers).await;
    let key = worker(&app).await;
    let j = enqueue(&app, json!({"kind": "flaky", "maxAttempts": 3})).await;
    let id = j["id"].as_str().unwrap();
    // Attempt n waits up to 5 s * 2^(n-1) (jobs.backoff_base_seconds = 5).
    for (attempt, ceiling_ms) in [(1, 5_000i64), (2, 10_000)] {
        let c = work(&app, &key, "/v1/jobs/claim", json!({"kinds": ["flaky"]})).await;
        assert_eq!(c.body["items"][0]["attempts"], attempt, "{}", c.text);
        let lease = c.body["items"][0]["leaseId"].as_str().unwrap();
        let now = app.clock.as_ref().unwrap().now_ms();
        let r = work(
            &app,
            &key,
            &format!("/v1/jobs/{id}/fail"),
            json!({"leaseId": lease, "error": "boom"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["status"], "retrying");
        assert_eq!(r.body["lastError"], "boom");
        let run_at = ms(&r.body["runAt"]);
        assert!(
            (now..=now + ceiling_ms).contains(&run_at),
            "attempt {attempt}: {run_at} - {now}"
        );
        // Not claimable before its time.
        if run_at > now {
            let early = work(&app, &key, "/v1/jobs/claim", json!({"kinds": ["flaky"]})).await;
            assert_eq!(early.body["items"], json!([]));
        }
        app.advance(Duration::from_millis(u64::try_from(ceiling_ms).unwrap()));
    }
    let c = work(&app, &key, "/v1/jobs/claim", json!({"kinds": ["flaky"]})).await;
    let lease = c.body["items"][0]["leaseId"].as_str().unwrap();
    let r = work(
        &app,
        &key,
        &format!("/v1/jobs/{id}/fail"),
        json!({"leaseId": lease, "error": "boom 3"}),
    )
    .await;
    assert_eq!(r.body["status"], "dead", "attempts used up: {}", r.text);
    let r = app.admin(Method::GET, "/v1/jobs?status=dead", None).await;
    assert_eq!(r.body["items"][0]["id"], id);
    let r = app
        .admin(Method::POST, &format!("/v1/jobs/{id}/retry"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["attempts"], 0);
    // A failure that must not be retried is final at once; so is Retry-After honoured.
    let c = work(&app, &key, "/v1/jobs/claim", json!({"kinds": ["flaky"]})).await;
    let lease = c.body["items"][0]["leaseId"].as_str().unwrap();
    let now = app.clock.as_ref().unwrap().now_ms();
    let r = work(
        &app,
        &key,
        &format!("/v1/jobs/{id}/fail"),
        json!({"leaseId": lease, "error": "slow down", "retryAfter": 120}),
    )
    .await;
    assert_eq!(ms(&r.body["runAt"]), now + 120_000, "{}", r.text);
    app.advance(Duration::from_secs(120));
    let c = work(&app, &key, "/v1/jobs/claim", json!({"kinds": ["flaky"]})).await;
    let lease = c.body["items"][0]["leaseId"].as_str().unwrap();
    let r = work(
        &app,
        &key,
        &format!("/v1/jobs/{id}/fail"),
        json!({"leaseId": lease, "error": "bad input", "retry": false}),
    )
    .await;
    assert_eq!(r.body["status"], "dead", "{}", r.text);
    let r = app
        .admin(Method::POST, &format!("/v1/jobs/{id}/retry"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .admin(Method::POST, &format!("/v1/jobs/{id}/retry"), None)
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "a queued job is not retried: {}",
        r.text
    );
    app.shutdown().await;
}

fn ms(v: &Value) -> i64 {
    let t = time::OffsetDateTime::parse(
        v.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// A local server that answers 503 (with `Retry-After: 1`) `fails` times, then 200.
async fn flaky_server(fails: usize) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let reply = if n < fails {
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                };
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/hook"), hits)
}

#[tokio::test]
async fn an_http_job_retries_a_failing_server_until_it_recovers() {
    let (url, hits) = flaky_server(2).await;
    let app = TestApp::spawn_clocked(|c| {
        c.outbound.allow_hosts = vec!["127.0.0.1/32".into()];
        c.jobs.poll_ms = 20;
    })
    .await;
    let j = enqueue(
        &app,
        json!({"kind": "http", "payload": {"url": url, "method": "POST", "body": {"hello": 1}}}),
    )
    .await;
    let id = j["id"].as_str().unwrap();
    for attempt in 1..=2 {
        let failed = until(&app, id, |j| {
            j["attempts"] == attempt && j["status"] == "retrying"
        })
        .await;
        assert_eq!(failed["lastError"], "the server answered 503");
        assert_eq!(failed["result"]["status"], 503);
        // Retry-After: 1 is honoured: due one second later.
        assert_eq!(
            ms(&failed["runAt"]) - ms(&failed["updated"]),
            1000,
            "{failed}"
        );
        app.advance(Duration::from_secs(1));
    }
    let done = until(&app, id, |j| j["status"] == "succeeded").await;
    assert_eq!(done["attempts"], 3);
    assert_eq!(done["result"]["status"], 200);
    assert_eq!(done["result"]["body"], "ok");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn http_jobs_never_reach_internal_addresses_unless_allowed() {
    let (url, hits) = flaky_server(0).await;
    // Without the exception the literal address is refused at enqueue...
    let app = TestApp::spawn_with(|c| c.jobs.poll_ms = 20).await;
    let r = app
        .admin(
            Method::POST,
            "/v1/jobs",
            Some(json!({"kind": "http", "payload": {"url": url}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.field_error("payload.url"), Some("refused_destination"));
    for name in ["localhost", "LOCALHOST.", "api.localhost"] {
        let url = url.replace("127.0.0.1", name);
        let r = app
            .admin(
                Method::POST,
                "/v1/jobs",
                Some(json!({"kind": "http", "payload": {"url": url}})),
            )
            .await;
        assert_eq!(
            r.field_error("payload.url"),
            Some("refused_destination"),
            "{url}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no request reached the internal server"
    );
    // A 4xx answer is final.
    app.shutdown().await;
    let app = TestApp::spawn_with(|c| {
        c.outbound.allow_hosts = vec!["127.0.0.1/32".into()];
        c.jobs.poll_ms = 20;
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let j = enqueue(
        &app,
        json!({"kind": "http", "payload": {"url": format!("http://{addr}/gone")}}),
    )
    .await;
    let dead = until(&app, j["id"].as_str().unwrap(), |j| j["status"] == "dead").await;
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["result"]["status"], 404);
    app.shutdown().await;
}

#[tokio::test]
async fn jobs_are_enqueued_in_a_batch_with_its_record_writes() {
    let app = TestApp::spawn_with(no_workers).await;
    app.collection(
        json!({"name": "orders", "fields": [{"name": "sku", "type": "text", "unique": true}]}),
    )
    .await;
    let r = app
        .admin(
            Method::POST,
            "/v1/batch",
            Some(json!({"operations": [
                {"method": "POST", "path": "/v1/collections/orders/records", "body": {"sku": "a"}},
                {"method": "POST", "path": "/v1/jobs", "body": {"kind": "fulfil", "payload": {"sku": "a"}}},
            ]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["results"][0]["status"], 201);
    assert_eq!(r.body["results"][1]["status"], 201);
    assert_eq!(r.body["results"][1]["body"]["kind"], "fulfil");
    // A failing record write takes the job with it.
    let r = app
        .admin(
            Method::POST,
            "/v1/batch",
            Some(json!({"operations": [
                {"method": "POST", "path": "/v1/jobs", "body": {"kind": "fulfil", "payload": {"sku": "a"}}},
                {"method": "POST", "path": "/v1/collections/orders/records", "body": {"sku": "a"}},
            ]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["failedOperation"], 1);
    let r = app.admin(Method::GET, "/v1/jobs?kind=fulfil", None).await;
    assert_eq!(r.body["totalItems"], 1, "{}", r.text);
    // Only superusers enqueue, in a batch too.
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": [{"method": "POST", "path": "/v1/jobs", "body": {"kind": "x"}}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn schedules_fire_once_per_slot_and_once_after_downtime() {
    let app = TestApp::spawn_clocked(no_workers).await;
    let r = app
        .admin(
            Method::POST,
            "/v1/schedules",
            Some(json!({"name": "digest", "cron": "*/5 * * * *", "timezone": "Europe/Paris", "job": {"kind": "digest", "payload": {"n": 1}}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["paused"], false);
    let next = ms(&r.body["nextRunAt"]);
    let now = app.clock.as_ref().unwrap().now_ms();
    assert!(next > now && next <= now + 5 * 60_000, "{}", r.text);
    assert_eq!(next % (5 * 60_000), 0);
    assert_eq!(job_count(&app, "digest").await, 0);
    app.advance(Duration::from_millis(u64::try_from(next - now).unwrap()));
    assert_eq!(wait_count(&app, "digest", 1).await, 1);
    // Down for an hour: the twelve missed slots fire once.
    app.advance(Duration::from_secs(3600));
    assert_eq!(wait_count(&app, "digest", 2).await, 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        job_count(&app, "digest").await,
        2,
        "missed slots fire once, not once each"
    );
    let s = app
        .admin(Method::GET, &format!("/v1/schedules/{id}"), None)
        .await;
    assert!(s.body["lastJobId"].as_str().is_some(), "{}", s.text);
    let jobs = app.admin(Method::GET, "/v1/jobs?kind=digest", None).await;
    assert_eq!(jobs.body["items"][0]["scheduleId"], id.as_str());
    assert_eq!(jobs.body["items"][0]["payload"]["n"], 1);
    // Paused: no slot fires.
    let r = app
        .admin(
            Method::PATCH,
            &format!("/v1/schedules/{id}"),
            Some(json!({"paused": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["paused"], true);
    app.advance(Duration::from_secs(600));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(job_count(&app, "digest").await, 2);
    let r = app.admin(Method::GET, "/v1/schedules", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let r = app
        .admin(Method::DELETE, &format!("/v1/schedules/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app
        .admin(Method::GET, &format!("/v1/schedules/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.shutdown().await;
}

async fn job_count(app: &TestApp, kind: &str) -> i64 {
    let r = app
        .admin(Method::GET, &format!("/v1/jobs?kind={kind}"), None)
        .await;
    r.body["totalItems"].as_i64().unwrap()
}

async fn wait_count(app: &TestApp, kind: &str, n: i64) -> i64 {
    for _ in 0..200 {
        if job_count(app, kind).await >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    job_count(app, kind).await
}

#[tokio::test]
async fn bad_schedules_are_refused() {
    let app = TestApp::spawn_with(no_workers).await;
    for (body, field, code) in [
        (
            json!({"name": "a", "cron": "61 * * * *", "job": {"kind": "x"}}),
            "cron",
            "invalid_cron",
        ),
        (
            json!({"name": "a", "job": {"kind": "x"}}),
            "cron",
            "required",
        ),
        (
            json!({"name": "a", "cron": "* * * * *", "timezone": "Mars/Base", "job": {"kind": "x"}}),
            "timezone",
            "invalid_timezone",
        ),
        (json!({"name": "a", "cron": "* * * * *"}), "job", "required"),
        (
            json!({"name": "a", "cron": "* * * * *", "job": {"kind": "export"}}),
            "job.kind",
            "reserved",
        ),
        (
            json!({"name": "", "cron": "* * * * *", "job": {"kind": "x"}}),
            "name",
            "invalid",
        ),
        (
            json!({"name": "a", "cron": "0 0 30 2 *", "job": {"kind": "x"}}),
            "cron",
            "never",
        ),
    ] {
        let r = app
            .admin(Method::POST, "/v1/schedules", Some(body.clone()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.field_error(field), Some(code), "{body}: {}", r.text);
    }
    let ok = json!({"name": "a", "cron": "@hourly", "job": {"kind": "x"}});
    let r = app
        .admin(Method::POST, "/v1/schedules", Some(ok.clone()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app.admin(Method::POST, "/v1/schedules", Some(ok)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.problem_code(), "schedule_exists");
    let r = app.json(Method::GET, "/v1/schedules", Value::Null).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}

#[tokio::test]
async fn admin_area_scopes_are_refused_when_a_collection_has_the_name() {
    let app = TestApp::spawn_with(no_workers).await;
    let root = superuser_token(&app).await;
    // Before a collection takes the name, the scope means the admin area.
    api_key(&app, &root, json!(["jobs:read", "events:read"])).await;
    app.collection(json!({"name": "jobs", "fields": [{"name": "title", "type": "text"}]}))
        .await;
    let r = bearer(
        &app,
        &root,
        Method::POST,
        "/v1/auth/api-keys",
        Some(json!({"name": "k", "scopes": ["jobs:read"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.field_error("scopes[0]"), Some("ambiguous_scope"));
    // The collection's own actions still name it.
    let key = api_key(&app, &root, json!(["jobs:list", "jobs:view"])).await;
    let r = bearer(
        &app,
        &key,
        Method::GET,
        "/v1/collections/jobs/records",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = bearer(&app, &key, Method::GET, "/v1/jobs", None).await;
    assert_eq!(r.body["totalItems"], 0, "no job-queue access: {}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn a_thousand_jobs_are_claimed_and_completed_in_one_call_each() {
    let app = TestApp::spawn_with(no_workers).await;
    let key = worker(&app).await;
    for b in 0..10 {
        let ops: Vec<Value> = (0..100)
            .map(|i| json!({"method": "POST", "path": "/v1/jobs", "body": {"kind": "bulk", "payload": b * 100 + i}}))
            .collect();
        let r = app
            .admin(Method::POST, "/v1/batch", Some(json!({"operations": ops})))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let c = work(
        &app,
        &key,
        "/v1/jobs/claim",
        json!({"kinds": ["bulk"], "max": 1000}),
    )
    .await;
    let items = c.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1000);
    let done: Vec<Value> = items
        .iter()
        .map(|j| json!({"id": j["id"], "leaseId": j["leaseId"], "result": j["payload"]}))
        .collect();
    let r = work(&app, &key, "/v1/jobs/complete", json!({"items": done})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let ok = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == 200)
        .count();
    assert_eq!(ok, 1000);
    let r = app
        .admin(
            Method::GET,
            "/v1/jobs?kind=bulk&status=succeeded&perPage=1",
            None,
        )
        .await;
    assert_eq!(r.body["totalItems"], 1000);
    assert_eq!(r.body["items"][0]["result"], r.body["items"][0]["payload"]);
    app.shutdown().await;
}
