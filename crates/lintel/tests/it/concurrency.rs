//! Concurrency: optimistic locking under parallel updates, and many parallel writes
//! grouped into shared commits without losing any.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_updates_with_one_etag_exactly_one_wins() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let rec = app.create("posts", json!({"title": "t", "views": 0})).await;
    let href = format!(
        "/v1/collections/posts/records/{}",
        rec["id"].as_str().unwrap()
    );
    let etag = app.get(&href).await.header("etag").unwrap().to_owned();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let req = app
            .req(Method::PATCH, &href)
            .header("if-match", &etag)
            .json(&json!({"views": i + 1}));
        tasks.push(tokio::spawn(
            async move { req.send().await.map(|r| r.status()) },
        ));
    }
    let mut ok = 0;
    let mut stale = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::PRECONDITION_FAILED => stale += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(stale, 15);
    assert_eq!(app.get(&href).await.body["version"], 2);

    // Without If-Match, concurrent patches are all applied (retried on the fresh record).
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let req = app
            .req(Method::PATCH, &href)
            .json(&json!({"title": "again"}));
        tasks.push(tokio::spawn(
            async move { req.send().await.map(|r| r.status()) },
        ));
    }
    for t in tasks {
        let s = t.await.unwrap().unwrap();
        assert!(s == StatusCode::OK || s == StatusCode::CONFLICT, "{s}");
    }
    assert!(app.get(&href).await.body["version"].as_i64().unwrap() >= 3);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_creates_are_all_committed() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let req = app
            .req(Method::POST, "/v1/collections/authors/records")
            .json(&json!({"name": format!("n{i}")}));
        tasks.push(tokio::spawn(
            async move { req.send().await.map(|r| r.status()) },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), StatusCode::CREATED);
    }
    assert_eq!(
        app.get("/v1/collections/authors/records").await.body["totalItems"],
        200
    );
    let metrics = app.admin(reqwest::Method::GET, "/metrics", None).await.text;
    assert!(metrics.contains("lintel_store_commits_total"));
    app.shutdown().await;
}
