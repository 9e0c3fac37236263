//! PostgreSQL only: pool limits, lock timeouts, recovery after lost connections,
//! instances starting together, read replicas. These need a server: they are ignored
//! in the plain run and run (and fail loudly without PostgreSQL) with
//! `LINTEL_TEST_DATABASE_URL=... cargo test -p lintel --test it -- --include-ignored`.

use std::time::Duration;

use lintel::clock::Clock;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{TestApp, config, postgres_url};

fn require_postgres() -> String {
    postgres_url().expect("these tests need PostgreSQL: set LINTEL_TEST_DATABASE_URL")
}

/// A direct connection to the database a test server uses.
async fn connect(app: &TestApp) -> tokio_postgres::Client {
    let cfg = config(app.dir.path()).await;
    let (client, conn) = tokio_postgres::connect(&cfg.database_url.0, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (LINTEL_TEST_DATABASE_URL)"]
async fn an_exhausted_pool_answers_503_with_retry_after_and_locks_time_out() {
    require_postgres();
    let app = TestApp::spawn_with(|c| {
        c.database_pool.max_size = 1;
        c.database_pool.acquire_timeout_ms = 300;
        c.database_pool.lock_timeout_ms = 1_500;
    })
    .await;
    app.collection(json!({"name": "items", "fields": [{"name": "n", "type": "integer"}]}))
        .await;
    let rec = app.create("items", json!({"n": 1})).await;
    let href = format!(
        "/v1/collections/items/records/{}",
        rec["id"].as_str().unwrap()
    );

    // Hold the row from outside, so the server's only connection waits on the lock.
    let mut db = connect(&app).await;
    let tx = db.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM items WHERE id = $1 FOR UPDATE",
        &[&rec["id"].as_str().unwrap()],
    )
    .await
    .unwrap();
    let patch = app.req(Method::PATCH, &href).json(&json!({"n": 2}));
    let blocked = tokio::spawn(async move { patch.send().await.map(|r| r.status()) });
    // The server's only connection is taken once its write waits on the row lock (an
    // event seen in pg_stat_activity, not a guess of how long that takes).
    let watcher = connect(&app).await;
    let mut waiting = 0;
    for _ in 0..400 {
        waiting = watcher
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(waiting, 1, "the PATCH waits on the row lock");

    let started = std::time::Instant::now();
    let r = app.get("/v1/collections/items/records").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.problem_code(), "store_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it waited for the acquire timeout, not forever"
    );

    // The lock timeout turns the blocked write into a clear 503 too.
    assert_eq!(
        blocked.await.unwrap().unwrap(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    tx.rollback().await.unwrap();
    let r = app.json(Method::PATCH, &href, json!({"n": 3})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // This server's registry: the list's two acquires (its rows and its count are read
    // at once) timed out, and so may the background work's (the event sequencer, the
    // job sweep) while the only connection was held.
    assert!(
        app.metric("lintel_db_pool_timeouts_total", &[("role", "primary")])
            .await
            >= 2.0
    );
    assert!(
        app.metric(
            "lintel_db_pool_acquire_seconds_count",
            &[("role", "primary")]
        )
        .await
            >= 3.0
    );
    assert_eq!(
        app.metric("lintel_db_pool_size", &[("role", "primary")])
            .await,
        1.0
    );
    app.shutdown().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (LINTEL_TEST_DATABASE_URL)"]
async fn collections_are_tables_with_native_types_and_indexes() {
    require_postgres();
    let app = TestApp::spawn().await;
    app.posts().await;
    app.collection(
        json!({"name": "docs", "kind": "document", "indexes": [{"fields": ["meta.kind"]}]}),
    )
    .await;
    let db = connect(&app).await;
    let rows = db
        .query(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'posts'",
            &[],
        )
        .await
        .unwrap();
    let types: std::collections::HashMap<String, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(types["views"], "bigint");
    assert_eq!(types["score"], "double precision");
    assert_eq!(types["published"], "boolean");
    assert_eq!(types["at"], "timestamp with time zone");
    assert_eq!(types["meta"], "jsonb");
    assert_eq!(types["coauthors"], "jsonb");
    assert_eq!(types["title"], "text");
    let indexes: Vec<String> = db
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'docs'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        indexes
            .iter()
            .any(|d| d.contains("gin") && d.contains("jsonb_path_ops")),
        "{indexes:?}"
    );
    assert!(indexes.iter().any(|d| d.contains("#>")), "{indexes:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (LINTEL_TEST_DATABASE_URL)"]
async fn lintel_recovers_when_its_connections_are_killed() {
    require_postgres();
    let app = TestApp::spawn_with(|c| c.database_pool.max_size = 4).await;
    app.collection(json!({"name": "items", "fields": [{"name": "n", "type": "integer"}]}))
        .await;
    app.create("items", json!({"n": 1})).await;
    let db = connect(&app).await;
    let killed = db
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(killed >= 1, "the server's connections were terminated");
    // Requests fail cleanly (503, never 500) until the pool has fresh connections.
    let mut recovered = false;
    for _ in 0..20 {
        let r = app.get("/v1/collections/items/records").await;
        match r.status {
            StatusCode::OK => {
                recovered = true;
                break;
            }
            StatusCode::SERVICE_UNAVAILABLE => r.problem_code(),
            other => panic!("unexpected {other}: {}", r.text),
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "no restart needed");
    assert_eq!(app.get("/v1/ready").await.status, StatusCode::OK);
    app.create("items", json!({"n": 2})).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (LINTEL_TEST_DATABASE_URL)"]
async fn two_instances_starting_on_one_empty_database_apply_migrations_once() {
    require_postgres();
    // The migrations both instances find in their folders.
    let first = TestApp::spawn().await;
    first
        .collection(json!({"name": "a", "fields": [{"name": "x", "type": "text"}]}))
        .await;
    first
        .collection(json!({"name": "b", "kind": "document"}))
        .await;
    first
        .admin(
            Method::PATCH,
            "/v1/collections/a",
            Some(json!({"addFields": [{"name": "y", "type": "integer"}]})),
        )
        .await;
    let files = first.dir.path().join("migrations");

    let shared = tempfile::tempdir().unwrap();
    let db_url = config(shared.path()).await.database_url;
    let mut starts = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("migrations")).unwrap();
        for e in std::fs::read_dir(&files).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join("migrations").join(e.file_name())).unwrap();
        }
        let mut cfg = config(dir.path()).await;
        cfg.database_url = db_url.clone();
        if i == 0 {
            // The first reads through a replica pool (the same server stands in for
            // one); the second has none, so its read cache is on.
            cfg.database_replica_urls = db_url.clone();
        }
        starts.push(tokio::spawn(lintel::start(cfg)));
        dirs.push(dir);
    }
    let mut running = Vec::new();
    for s in starts {
        running.push(s.await.unwrap().expect("both instances start"));
    }
    let (client, conn) = tokio_postgres::connect(&db_url.0, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT COUNT(*) FROM _lintel_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 4,
        "each migration (users and three) applied exactly once"
    );
    // Both serve the schema; reads go through the replica pool.
    let http = reqwest::Client::new();
    for r in &running {
        let res = http
            .post(format!("http://{}/v1/collections/a/records", r.addr))
            .json(&json!({"x": "hi", "y": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let list: serde_json::Value = http
            .get(format!("http://{}/v1/collections/a/records", r.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(list["totalItems"].as_i64().unwrap() >= 1);
    }
    // A change made through one instance reaches the other's cache and catalog.
    let (a, b) = (running[0].addr, running[1].addr);
    let rec: serde_json::Value = http
        .post(format!("http://{a}/v1/collections/a/records"))
        .json(&json!({"x": "v1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = format!("/v1/collections/a/records/{}", rec["id"].as_str().unwrap());
    // Wait until both instances' change feeds are connected (their caches serve),
    // then let B cache it.
    for r in &running {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !r.state.cache.is_live() {
            assert!(
                std::time::Instant::now() < deadline,
                "the change feed connects"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for _ in 0..2 {
        let got: serde_json::Value = http
            .get(format!("http://{b}{path}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["x"], "v1");
    }
    // A change behind Lintel's back (no notice) is not seen: B serves its cached copy.
    client
        .execute(
            "UPDATE a SET x = 'behind' WHERE id = $1",
            &[&rec["id"].as_str().unwrap()],
        )
        .await
        .unwrap();
    let got: serde_json::Value = http
        .get(format!("http://{b}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["x"], "v1", "B serves the record from its cache");
    let res = http
        .patch(format!("http://{a}{path}"))
        .json(&json!({"x": "v2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = http
        .post(format!("http://{a}/v1/collections"))
        .bearer_auth(crate::common::ADMIN_TOKEN)
        .json(&json!({"name": "later"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let mut seen_update = false;
    let mut seen_collection = false;
    for _ in 0..40 {
        let got: serde_json::Value = http
            .get(format!("http://{b}{path}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen_update |= got["x"] == "v2";
        let later = http
            .get(format!("http://{b}/v1/collections/later/records"))
            .send()
            .await
            .unwrap();
        // Rule-less collections are for superusers: 401 means B knows it, 404 not yet.
        seen_collection |= later.status() == StatusCode::UNAUTHORIZED;
        if seen_update && seen_collection {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_update, "B's cache dropped the record A changed");
    assert!(
        seen_collection,
        "B reloaded its catalog after A's schema change"
    );

    // One signing key in the store: a token from A works on B, and a logout on B
    // ends it on A.
    let res = http
        .post(format!("http://{a}/v1/collections/users/records"))
        .json(&json!({"email": "x@example.com", "password": "a long passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let login: serde_json::Value = http
        .post(format!("http://{a}/v1/auth/login"))
        .json(&json!({"email": "x@example.com", "password": "a long passphrase"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["accessToken"].as_str().unwrap();
    let me = |host: std::net::SocketAddr| {
        http.get(format!("http://{host}/v1/auth/me"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(me(b).await.unwrap().status(), StatusCode::OK);
    let out = http
        .post(format!("http://{b}/v1/auth/logout"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_eq!(me(a).await.unwrap().status(), StatusCode::UNAUTHORIZED);

    let metrics = http
        .get(format!("http://{}/metrics", running[0].addr))
        .bearer_auth(crate::common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("role=\"replica\""),
        "reads used the replica pool"
    );
    for r in running {
        r.shutdown().await;
    }
    drop(dirs);
    first.shutdown().await;
    let name = std::fs::read_to_string(shared.path().join(".test-database")).unwrap();
    let (admin, conn) = tokio_postgres::connect(&require_postgres(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (LINTEL_TEST_DATABASE_URL)"]
async fn batches_touching_records_in_opposite_orders_never_deadlock() {
    require_postgres();
    let app = TestApp::spawn_with(|c| {
        crate::common::patient(c);
        c.database_pool.max_size = 32;
    })
    .await;
    app.collection(json!({"name": "items", "fields": [{"name": "n", "type": "integer"}]}))
        .await;
    let x = app.create("items", json!({"n": 0})).await;
    let y = app.create("items", json!({"n": 0})).await;
    let px = format!(
        "/v1/collections/items/records/{}",
        x["id"].as_str().unwrap()
    );
    let py = format!(
        "/v1/collections/items/records/{}",
        y["id"].as_str().unwrap()
    );
    // Every batch waits on the table lock before any runs, so they all overlap.
    let hold = app.hold_writes("items", None).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (a, b) = if i % 2 == 0 { (&px, &py) } else { (&py, &px) };
        let req = app
            .req(Method::POST, "/v1/batch")
            .json(&json!({"operations": [
                {"method": "PATCH", "path": a, "body": {"n": i}},
                {"method": "PATCH", "path": b, "body": {"n": i}},
            ]}));
        tasks.push(tokio::spawn(
            async move { req.send().await.map(|r| r.status()) },
        ));
    }
    hold.until_waiting(&app, 20).await;
    hold.release().await;
    let mut applied = 0;
    for t in tasks {
        let status = t.await.unwrap().unwrap();
        // Records are locked in one order whatever the batch's order, so no deadlock
        // (503); a batch that read a record another changed meanwhile is a clean 409.
        match status {
            StatusCode::OK => applied += 1,
            StatusCode::CONFLICT => {}
            other => panic!("{other}"),
        }
    }
    assert!(applied >= 1);
    // Each batch wrote the same n to both records, all or nothing: both end with the
    // n of the batch that committed last, and each was written once per batch.
    let (gx, gy) = (app.get(&px).await.body, app.get(&py).await.body);
    assert_eq!(gx["n"], gy["n"], "{gx} {gy}");
    assert_eq!(gx["version"], json!(1 + applied), "{gx}");
    assert_eq!(gy["version"], json!(1 + applied), "{gy}");
    app.shutdown().await;
}

/// Two instances on one database, each with its own clock standing still (moved
/// together by the test).
async fn two_clocked_instances() -> (TestApp, TestApp) {
    let first = TestApp::spawn_clocked(|c| c.jobs.concurrency = 0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path()).await;
    cfg.database_url = config(first.dir.path()).await.database_url;
    cfg.jobs.concurrency = 0;
    let start = first.clock.as_ref().unwrap().now_ms();
    let second = TestApp::start_clocked(
        dir,
        cfg,
        std::sync::Arc::new(lintel::clock::ManualClock::at(start)),
    )
    .await;
    (first, second)
}

async fn jobs_of(app: &TestApp, kind: &str) -> Vec<serde_json::Value> {
    let r = app
        .admin(
            Method::GET,
            &format!("/v1/jobs?kind={kind}&perPage=500"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (LINTEL_TEST_DATABASE_URL)"]
async fn a_schedule_fires_once_per_slot_across_two_instances() {
    require_postgres();
    let (a, b) = two_clocked_instances().await;
    let r = a
        .admin(
            Method::POST,
            "/v1/schedules",
            Some(json!({"name": "tick", "cron": "* * * * *", "job": {"kind": "tick"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    for slot in 1..=3usize {
        a.advance(Duration::from_secs(60));
        b.advance(Duration::from_secs(60));
        let mut n = 0;
        for _ in 0..200 {
            n = jobs_of(&a, "tick").await.len();
            if n >= slot {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Both instances sweep every second: give the loser time to (not) fire.
        tokio::time::sleep(Duration::from_millis(2200)).await;
        n = n.max(jobs_of(&b, "tick").await.len());
        assert_eq!(n, slot, "slot {slot} fired {n} jobs in all");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (LINTEL_TEST_DATABASE_URL)"]
async fn workers_on_two_instances_never_claim_one_job_twice() {
    require_postgres();
    let (a, b) = two_clocked_instances().await;
    let ops: Vec<serde_json::Value> = (0..200)
        .map(|i| json!({"method": "POST", "path": "/v1/jobs", "body": {"kind": "crunch", "payload": i}}))
        .take(100)
        .collect();
    for chunk in [ops.clone(), ops] {
        let r = a
            .admin(
                Method::POST,
                "/v1/batch",
                Some(json!({"operations": chunk})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let mut claims = Vec::new();
    for app in [&a, &b, &a, &b, &a, &b, &a, &b] {
        let req = app
            .req(Method::POST, "/v1/jobs/claim")
            .bearer_auth(crate::common::ADMIN_TOKEN)
            .json(&json!({"kinds": ["crunch"], "max": 40}));
        claims.push(tokio::spawn(req.send()));
    }
    let mut ids = Vec::new();
    for c in claims {
        let body: serde_json::Value = c.await.unwrap().unwrap().json().await.unwrap();
        for j in body["items"].as_array().unwrap() {
            ids.push(j["id"].as_str().unwrap().to_owned());
        }
    }
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a job was claimed twice");
    assert_eq!(ids.len(), 200, "every job claimed once");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL (LINTEL_TEST_DATABASE_URL)"]
async fn a_job_queued_on_one_instance_wakes_the_workers_of_another() {
    require_postgres();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        }
    });
    // The first instance runs no workers; the second's look for jobs only once a
    // minute, so only the notice can make it run the job in time.
    let first = TestApp::spawn_with(|c| {
        c.jobs.concurrency = 0;
        c.outbound.allow_hosts = vec!["127.0.0.1/32".into()];
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path()).await;
    cfg.database_url = config(first.dir.path()).await.database_url;
    cfg.jobs.poll_ms = 60_000;
    cfg.outbound.allow_hosts = vec!["127.0.0.1/32".into()];
    let second = TestApp::start_in(dir, cfg).await;
    // Let the second instance's listener and first sweep settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = first
        .admin(
            Method::POST,
            "/v1/jobs",
            Some(json!({"kind": "http", "payload": {"url": format!("http://{addr}/")}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let href = format!("/v1/jobs/{}", r.body["id"].as_str().unwrap());
    let started = std::time::Instant::now();
    let mut status = String::new();
    while started.elapsed() < Duration::from_secs(20) {
        status = first.admin(Method::GET, &href, None).await.body["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if status == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "succeeded");
    first.shutdown().await;
    second.shutdown().await;
}
