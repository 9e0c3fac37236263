//! Bulk import and export as jobs (202): NDJSON and CSV, atomic and partial modes, bad
//! rows reported by line, exports with a filter downloaded from the job, Server-Sent
//! Events of progress, who may start and read them, and `kill -9` mid-import.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, PW, Reply, TestApp, access, bearer, login, signup};

async fn items(app: &TestApp) {
    app.collection(json!({"name": "items", "fields": [
        {"name": "name", "type": "text", "required": true},
        {"name": "qty", "type": "integer", "min": 0},
        {"name": "tag", "type": "select", "values": ["a", "b"]}
    ]}))
    .await;
}

/// `n` NDJSON rows; the rows at `bad` lines (1-based) have a negative `qty`.
fn ndjson(n: usize, bad: &[usize]) -> String {
    let mut out = String::with_capacity(n * 40);
    for i in 1..=n {
        let qty: i64 = if bad.contains(&i) {
            -1
        } else {
            (i % 100) as i64
        };
        let tag = if i % 2 == 0 { "a" } else { "b" };
        out.push_str(&format!(
            "{{\"name\":\"item {i}\",\"qty\":{qty},\"tag\":\"{tag}\"}}\n"
        ));
    }
    out
}

async fn import(app: &TestApp, mode: &str, ct: &str, body: String) -> Reply {
    app.send(
        app.req(
            Method::POST,
            &format!("/v1/collections/items/import?mode={mode}"),
        )
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", ct)
        .body(body),
    )
    .await
}

async fn finished(app: &TestApp, href: &str) -> Value {
    for _ in 0..2400 {
        let r = app.admin(Method::GET, href, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if matches!(
            r.body["status"].as_str(),
            Some("succeeded" | "dead" | "cancelled")
        ) {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{href} did not finish");
}

async fn count(app: &TestApp, filter: &str) -> i64 {
    let r = app
        .admin(
            Method::GET,
            &format!(
                "/v1/collections/items/records?perPage=1&filter={}",
                urlencode(filter)
            ),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["totalItems"].as_i64().unwrap()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn a_100k_row_import_with_bad_rows_keeps_nothing_atomic_and_the_good_rows_partial() {
    let app = TestApp::spawn().await;
    items(&app).await;
    let bad = [
        7, 500, 9_999, 10_000, 33_333, 50_001, 70_000, 88_888, 99_999, 100_000,
    ];
    let body = ndjson(100_000, &bad);
    let r = import(&app, "atomic", "application/x-ndjson", body.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let href = r.header("location").unwrap().to_owned();
    assert_eq!(href, format!("/v1/jobs/{}", r.body["id"].as_str().unwrap()));
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.body["kind"], "import");
    let job = finished(&app, &href).await;
    assert_eq!(
        job["status"], "dead",
        "an atomic import with bad rows is final: {job}"
    );
    assert_eq!(job["result"]["failed"], 10);
    assert_eq!(job["result"]["imported"], 0);
    let lines: Vec<i64> = job["result"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, bad.iter().map(|b| *b as i64).collect::<Vec<_>>());
    assert_eq!(
        job["result"]["errors"][0]["errors"]["qty"]["code"],
        "too_small"
    );
    assert_eq!(
        count(&app, "").await,
        0,
        "nothing of an atomic import with bad rows is kept"
    );

    let r = import(&app, "partial", "application/x-ndjson", body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = finished(&app, r.header("location").unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["imported"], 99_990);
    assert_eq!(job["result"]["failed"], 10);
    assert_eq!(job["progress"]["processed"], 100_000);
    assert_eq!(count(&app, "").await, 99_990);
    assert_eq!(count(&app, "qty < 0").await, 0);

    // Export the same with a filter, as NDJSON and as CSV.
    for (format, lines_expected) in [("ndjson", 49_995usize), ("csv", 49_996)] {
        let r = app
            .admin(
                Method::POST,
                "/v1/collections/items/export",
                Some(json!({"format": format, "filter": "tag = 'a'", "sort": "qty", "fields": ["id", "name", "qty"]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let job = finished(&app, r.header("location").unwrap()).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["result"]["rows"], 49_995);
        let download = job["result"]["_links"]["download"]["href"]
            .as_str()
            .unwrap();
        let file = app.admin(Method::GET, download, None).await;
        assert_eq!(file.status, StatusCode::OK);
        let lines: Vec<&str> = file.text.lines().collect();
        assert_eq!(lines.len(), lines_expected, "{format}");
        if format == "csv" {
            assert_eq!(lines[0], "id,name,qty");
            assert!(file.header("content-type").unwrap().starts_with("text/csv"));
        } else {
            let first: Value = serde_json::from_str(lines[0]).unwrap();
            assert_eq!(first.as_object().unwrap().len(), 3, "{first}");
            assert_eq!(first["qty"], 0, "sorted by qty");
        }
    }
    app.shutdown().await;
}

#[tokio::test]
async fn csv_imports_count_the_header_as_line_one() {
    let app = TestApp::spawn().await;
    items(&app).await;
    let csv =
        "name,qty,tag\n\"Widget, large\",3,a\nGadget,-4,b\n,1,a\n\"Multi\nline\",2,c\nBolt,x,a\n";
    let r = import(&app, "partial", "text/csv", csv.into()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = finished(&app, r.header("location").unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["imported"], 1);
    let errors = job["result"]["errors"].as_array().unwrap();
    let by_line: Vec<(i64, &str, &str)> = errors
        .iter()
        .map(|e| {
            let (field, err) = e["errors"].as_object().unwrap().iter().next().unwrap();
            (
                e["line"].as_i64().unwrap(),
                field.as_str(),
                err["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_line,
        [
            (3, "qty", "too_small"),
            (4, "name", "required"),
            (5, "tag", "invalid_choice"),
            (7, "qty", "invalid_type")
        ],
        "{job}"
    );
    assert_eq!(count(&app, "name = 'Widget, large' && qty = 3").await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn imports_and_exports_refuse_strangers_and_bad_requests() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "items", "fields": [{"name": "name", "type": "text"}],
        "rules": {"list": "@request.auth.id != ''", "view": "", "create": "@request.auth.id != ''", "update": null, "delete": null}}))
        .await;
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/items/import")
                .header("content-type", "application/x-ndjson")
                .body("{}\n"),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/items/import")
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.text);
    let r = import(&app, "sometimes", "application/x-ndjson", "{}\n".into()).await;
    assert_eq!(r.field_error("mode"), Some("invalid"), "{}", r.text);
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/nope/import")
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "text/csv")
                .body("a\n1\n"),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    for (body, field) in [
        (json!({"format": "xml"}), "format"),
        (json!({"filter": "name = "}), "filter"),
        (json!({"sort": "nope"}), "sort"),
    ] {
        let r = app
            .admin(
                Method::POST,
                "/v1/collections/items/export",
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(r.field_error(field).is_some(), "{body}: {}", r.text);
    }
    // A user imports; the job is theirs to read, not another user's.
    signup(&app, "a@example.com").await;
    signup(&app, "b@example.com").await;
    let a = access(&login(&app, "a@example.com").await);
    let b = access(&login(&app, "b@example.com").await);
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/items/import")
                .bearer_auth(&a)
                .header("content-type", "application/x-ndjson")
                .body("{\"name\": \"mine\"}\n"),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let href = r.header("location").unwrap().to_owned();
    let mut status = String::new();
    for _ in 0..200 {
        let r = bearer(&app, &a, Method::GET, &href, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        status = r.body["status"].as_str().unwrap().to_owned();
        if status == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, "succeeded");
    let r = bearer(&app, &b, Method::GET, &href, None).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "another user's job is not there"
    );
    let r = bearer(&app, &a, Method::GET, "/v1/jobs", None).await;
    assert_eq!(
        r.body["totalItems"], 1,
        "a user lists the jobs they started: {}",
        r.text
    );
    let r = bearer(
        &app,
        &a,
        Method::POST,
        "/v1/jobs",
        Some(json!({"kind": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let _ = PW;
    app.shutdown().await;
}

#[tokio::test]
async fn job_events_stream_progress_and_end_with_the_status() {
    let app = TestApp::spawn().await;
    items(&app).await;
    let r = import(&app, "partial", "application/x-ndjson", ndjson(3_000, &[2])).await;
    let href = r.header("location").unwrap().to_owned();
    let res = app
        .req(Method::GET, &format!("{href}/events"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // The stream ends by itself after the status event.
    let text = tokio::time::timeout(Duration::from_secs(60), res.text())
        .await
        .expect("the stream ends")
        .unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.last(), Some(&"status"), "{text}");
    assert_eq!(events.iter().filter(|e| **e == "status").count(), 1);
    let status_data = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let status: Value = serde_json::from_str(status_data).unwrap();
    assert_eq!(status["status"], "succeeded");
    // A finished job's stream ends at once.
    let res = app
        .req(Method::GET, &format!("{href}/events"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let text = tokio::time::timeout(Duration::from_secs(5), res.text())
        .await
        .expect("ends at once")
        .unwrap();
    assert!(text.contains("event: status"), "{text}");
    app.shutdown().await;
}

#[tokio::test]
async fn kill_9_during_an_atomic_import_leaves_nothing_half_imported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut env = vec![
        ("LINTEL_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("LINTEL_JOBS__LEASE_SECONDS", "2".to_owned()),
        ("LINTEL_JOBS__POLL_MS", "50".to_owned()),
    ];
    // On PostgreSQL the killed process and the next one share the test's database.
    let db_dir = tempfile::tempdir().unwrap();
    if crate::common::postgres_url().is_some() {
        let url = crate::common::config(db_dir.path()).await.database_url.0;
        env.push(("LINTEL_DATABASE_URL", url));
    }
    let served = crate::hygiene::serve(&data, &env)
        .await
        .unwrap_or_else(|(c, l)| panic!("{c:?} {l:#?}"));
    // No server of this process has installed the TLS provider the client needs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let base = format!("http://{}", served.addr);
    let r = client
        .post(format!("{base}/v1/collections"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "items", "rules": {"list": "", "view": "", "create": "", "update": "", "delete": ""},
            "fields": [{"name": "name", "type": "text", "required": true}, {"name": "qty", "type": "integer"}, {"name": "tag", "type": "text"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    const N: i64 = 150_000;
    let r = client
        .post(format!("{base}/v1/collections/items/import?mode=atomic"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(ndjson(N as usize, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let href = r.headers()["location"].to_str().unwrap().to_owned();
    // Wait until the job runs (it has read some rows), then kill the process.
    let total = |base: String| {
        let client = client.clone();
        async move {
            let v: Value = client
                .get(format!("{base}/v1/collections/items/records?perPage=1"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["totalItems"].as_i64().unwrap()
        }
    };
    for _ in 0..400 {
        let j: Value = client
            .get(format!("{base}{href}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if j["progress"]["processed"].as_i64().unwrap_or(0) > 0 || j["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut child = served.child;
    child.kill().await.unwrap();
    let _ = child.wait().await;
    // What the killed process left: all or nothing.
    let served = crate::hygiene::serve(&data, &env)
        .await
        .unwrap_or_else(|(c, l)| panic!("{c:?} {l:#?}"));
    let base = format!("http://{}", served.addr);
    let after_kill = total(base.clone()).await;
    assert!(
        after_kill == 0 || after_kill == N,
        "half-imported: {after_kill}"
    );
    // The job runs again once its lease expires, and completes the import once.
    let mut status = Value::Null;
    for _ in 0..1200 {
        let j: Value = client
            .get(format!("{base}{href}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let n = total(base.clone()).await;
        assert!(n == 0 || n == N, "half-imported: {n}");
        if j["status"] != "queued" && j["status"] != "running" && j["status"] != "retrying" {
            status = j;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(total(base).await, N);
    let mut child = served.child;
    let _ = child.kill().await;
    crate::common::drop_database(db_dir.path()).await;
}

#[tokio::test]
async fn a_line_too_long_is_one_bad_row_and_never_held_whole() {
    let app = TestApp::spawn().await;
    items(&app).await;
    let long = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let body = format!("{{\"name\": \"first\"}}\n{long}\n{{\"name\": \"third\"}}\nnot json\n");
    let r = import(&app, "partial", "application/x-ndjson", body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = finished(&app, r.header("location").unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["imported"], 2);
    let errors = job["result"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{job}");
    assert_eq!(errors[0]["line"], 2);
    assert!(
        errors[0]["errors"]["_line"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than")
    );
    assert_eq!(errors[1]["line"], 4);
    app.shutdown().await;
}
