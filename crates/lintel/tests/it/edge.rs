//! The HTTP edge: versions, request ids, the problem shape for every failure,
//! health, readiness, metrics, the OpenAPI document, HTTP/2 and compression.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, TestApp};

#[tokio::test]
async fn health_ready_and_headers() {
    let app = TestApp::spawn().await;
    let r = app.get("/v1/health").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ok");
    assert_eq!(r.header("api-version"), Some("1"));
    assert!(r.header("x-request-id").is_some_and(|id| id.len() >= 8));
    let r = app.get("/v1/ready").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn request_id_is_kept_when_sane_and_replaced_otherwise() {
    let app = TestApp::spawn().await;
    let r = app
        .send(
            app.req(Method::GET, "/v1/health")
                .header("x-request-id", "client-id-12345"),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("client-id-12345"));
    let r = app
        .send(
            app.req(Method::GET, "/v1/nope")
                .header("x-request-id", "bad id with spaces"),
        )
        .await;
    let id = r.header("x-request-id").unwrap().to_owned();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(
        r.body["requestId"],
        json!(id),
        "problem carries the response's request id"
    );
    let r = app
        .send(app.req(Method::GET, "/v1/health").header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    app.shutdown().await;
}

#[tokio::test]
async fn version_in_path_or_header() {
    let app = TestApp::spawn().await;
    // Unprefixed paths take the header's version (or the current one).
    let r = app
        .send(app.req(Method::GET, "/health").header("api-version", "1"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.header("api-version"), Some("1"));
    let r = app.get("/health").await;
    assert_eq!(r.status, StatusCode::OK);

    let r = app
        .send(app.req(Method::GET, "/health").header("api-version", "7"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.problem_code(), "unsupported_version");
    assert_eq!(r.body["supportedVersions"], json!(["1"]));

    let r = app.get("/v2/health").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.problem_code(), "unsupported_version");

    let r = app
        .send(
            app.req(Method::GET, "/v1/health")
                .header("api-version", "2"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.problem_code(), "version_conflict");
    app.shutdown().await;
}

#[tokio::test]
async fn every_failure_is_a_problem() {
    let app = TestApp::spawn_with(|c| c.http.body_limit = 1024).await;
    app.posts().await;

    let r = app.get("/v1/no/such/route").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.problem_code(), "route_not_found");

    let r = app.send(app.req(Method::DELETE, "/v1/health")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.problem_code(), "method_not_allowed");

    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/posts/records")
                .header("content-type", "text/plain")
                .body("title=x"),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.problem_code(), "unsupported_media_type");

    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/posts/records")
                .header("content-type", "application/json")
                .body("{\"title\": "),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.problem_code(), "invalid_json");

    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/posts/records")
                .header("content-type", "application/json")
                .body("[1, 2]"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.problem_code(), "invalid_body");

    let big = json!({ "title": "x".repeat(4000) });
    let r = app
        .json(Method::POST, "/v1/collections/posts/records", big)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.problem_code(), "payload_too_large");

    // A path segment that is not valid percent-encoded UTF-8.
    let r = app.get("/v1/collections/%FF%FE/records").await;
    assert!(r.status.is_client_error());
    r.problem_code();

    let r = app.get("/v1/collections/posts/records?perPage=abc").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.field_error("perPage"), Some("invalid"));
    app.shutdown().await;
}

#[tokio::test]
async fn openapi_documents_every_route_and_every_documented_path_answers() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let doc = app.get("/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc.body["paths"].as_object().unwrap();
    // The endpoints the README promises.
    for (path, method) in [
        ("/v1/health", "get"),
        ("/v1/ready", "get"),
        ("/v1/openapi.json", "get"),
        ("/metrics", "get"),
        ("/v1/collections", "get"),
        ("/v1/collections", "post"),
        ("/v1/collections/{name}", "get"),
        ("/v1/collections/{name}", "patch"),
        ("/v1/collections/{name}", "delete"),
        ("/v1/collections/{collection}/records", "get"),
        ("/v1/collections/{collection}/records", "post"),
        ("/v1/collections/{collection}/records/{id}", "get"),
        ("/v1/collections/{collection}/records/{id}", "put"),
        ("/v1/collections/{collection}/records/{id}", "patch"),
        ("/v1/collections/{collection}/records/{id}", "delete"),
        ("/v1/batch", "post"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} missing from the document"
        );
    }
    // Every documented operation is routed: it never answers "no route" or 405.
    let mut checked = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{name}", "posts")
            .replace("{collection}", "posts")
            .replace("{id}", "doesnotexist0000");
        for method in ["get", "post", "put", "patch", "delete"] {
            if !item[method].is_object() {
                continue;
            }
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let res = app
                .req(m, &concrete)
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = res.status();
            // An event stream never ends: its status says enough.
            let streaming = res
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            let body: Value = if streaming {
                Value::Null
            } else {
                res.json().await.unwrap_or(Value::Null)
            };
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if status == StatusCode::NOT_FOUND {
                assert_ne!(
                    body["code"], "route_not_found",
                    "{method} {path} is documented but not routed"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 16);
    app.shutdown().await;
}

// Each server has its own registry, so the counts are exact: nothing another test's
// server does shows up here.
#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = TestApp::spawn_with(crate::common::patient).await;
    app.posts().await;
    let records = "/v1/collections/{collection}/records";
    let one = "/v1/collections/{collection}/records/{id}";
    // The audit rows of the collection changes are written in the background first.
    let busy = app
        .running()
        .state
        .tasks
        .wait_idle(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(busy, 0);
    let before_commits = app.metric("lintel_store_commits_total", &[]).await;
    app.get("/v1/collections/posts/records").await;
    let rec = app.create("authors", json!({"name": "Ann"})).await;
    let href = format!(
        "/v1/collections/authors/records/{}",
        rec["id"].as_str().unwrap()
    );
    app.get(&href).await;
    let second = app.get(&href).await;
    assert_eq!(second.body["name"], "Ann");
    let r = app.admin(Method::GET, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let m = |name: &str, labels: &[(&str, &str)]| crate::common::sum_metric(&r.text, name, labels);
    assert_eq!(
        m(
            "lintel_http_requests_total",
            &[("route", records), ("method", "GET"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "lintel_http_requests_total",
            &[("route", records), ("method", "POST"), ("status", "201")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "lintel_http_requests_total",
            &[("route", one), ("method", "GET"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        m(
            "lintel_http_request_duration_seconds_count",
            &[("route", one)]
        ),
        2.0
    );
    // Only the /metrics request itself is in flight while it renders.
    assert_eq!(m("lintel_http_requests_in_flight", &[]), 1.0);
    // One create, one commit (the collection changes before were counted earlier).
    assert_eq!(m("lintel_store_commits_total", &[]) - before_commits, 1.0);
    // On PostgreSQL the cache waits for the change feed, so the first reads may miss.
    if crate::common::postgres_url().is_none() {
        assert_eq!(
            m(
                "lintel_cache_requests_total",
                &[("kind", "record"), ("result", "hit")]
            ),
            1.0,
            "the second read is served from the cache: {}",
            r.text
        );
        assert_eq!(
            m(
                "lintel_cache_requests_total",
                &[("kind", "record"), ("result", "miss")]
            ),
            1.0
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_and_gzip() {
    let app = TestApp::spawn().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let res = h2.get(app.url("/v1/health")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);

    let res = app
        .client
        .get(app.url("/v1/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers().get("content-encoding").unwrap(), "gzip");
    app.shutdown().await;
}

// A create is held in flight (its write waits on a lock the test holds) when shutdown
// is triggered: new connections are refused at once, the held request still gets its
// real answer once the lock goes, and afterwards the store is closed (SQLite: the WAL
// is empty and the file can be switched out of WAL mode, which needs sole access;
// PostgreSQL: no other session is left on the database).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_finishes_the_request_in_flight_and_closes_the_store() {
    let app = TestApp::spawn_with(crate::common::patient).await;
    app.posts().await;
    let hold = app.hold_writes("authors", None).await;
    let req = app
        .req(Method::POST, "/v1/collections/authors/records")
        .json(&json!({"name": "in flight"}));
    let in_flight = tokio::spawn(async move {
        let res = req.send().await.expect("answered, not cut off");
        let status = res.status();
        (status, res.json::<serde_json::Value>().await.unwrap())
    });
    hold.until_waiting(&app, 1).await;
    let addr = app.addr;
    let state = app.running().state.clone();
    let _ = app.running().trigger().send(true);
    let mut refused = false;
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(refused, "the listener closed once shutdown began");
    assert!(
        !in_flight.is_finished(),
        "the held request is still waiting"
    );
    let stopping = tokio::spawn(app.stop_keep_dir());
    hold.release().await;
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "in flight");
    let dir = stopping.await.unwrap();

    if state.config.database_url.0.is_empty() {
        let path = state.config.database_path();
        let wal = format!("{}-wal", path.display());
        let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(wal_len, 0, "the WAL was checkpointed at close");
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete", "no other connection has the database open");
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
            .unwrap();
    } else {
        let (db, conn) =
            tokio_postgres::connect(&state.config.database_url.0, tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut left = -1;
        for _ in 0..400 {
            db.batch_execute("SELECT pg_stat_clear_snapshot()")
                .await
                .unwrap();
            left = db
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(left, 0, "Lintel's connections are closed");
    }
    drop(state);
    // The acknowledged create is in the store after a restart.
    let cfg = crate::common::config(dir.path()).await;
    let app = TestApp::start_in(dir, cfg).await;
    let r = app.get("/v1/collections/authors/records").await;
    assert_eq!(r.body["totalItems"], 1, "{}", r.text);
    assert_eq!(r.body["items"][0]["name"], "in flight");
    app.shutdown().await;
}

#[tokio::test]
async fn the_admin_token_is_generated_once_into_a_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn_with(|c| c.admin_token = lintel::config::Secret::default()).await;
    let path = app.dir.path().join("admin-token");
    let token = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    assert!(token.len() >= 32);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let r = app
        .send(app.req(Method::GET, "/v1/collections").bearer_auth(&token))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .send(
            app.req(Method::GET, "/v1/collections")
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A restart reuses it.
    let dir = app.stop_keep_dir().await;
    let mut cfg = crate::common::config(dir.path()).await;
    cfg.admin_token = lintel::config::Secret::default();
    let app = TestApp::start_in(dir, cfg).await;
    let r = app
        .send(app.req(Method::GET, "/v1/collections").bearer_auth(&token))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    app.shutdown().await;
}
