//! Idempotency-Key on POST and PATCH: replay, mismatch, in-flight duplicates, scope.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::TestApp;

#[tokio::test]
async fn same_key_same_request_replays_without_writing_again() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let post = |body: serde_json::Value, key: &'static str| {
        app.req(Method::POST, "/v1/collections/authors/records")
            .header("idempotency-key", key)
            .json(&body)
    };
    let first = app.send(post(json!({"name": "Ann"}), "key-1")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.header("idempotent-replayed").is_none());
    let second = app.send(post(json!({"name": "Ann"}), "key-1")).await;
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("location"), first.header("location"));
    assert_eq!(second.header("etag"), first.header("etag"));
    let list = app.get("/v1/collections/authors/records").await;
    assert_eq!(list.body["totalItems"], 1, "written once");

    let other = app.send(post(json!({"name": "Bob"}), "key-1")).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.problem_code(), "idempotency_key_reused");

    // A refused request is replayed as refused (and still writes nothing).
    let bad = app.send(post(json!({"nope": 1}), "key-2")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad2 = app.send(post(json!({"nope": 1}), "key-2")).await;
    assert_eq!(bad2.header("idempotent-replayed"), Some("true"));
    assert_eq!(bad2.body, bad.body);

    // Keys are scoped to the caller.
    let as_admin = app
        .send(
            app.req(Method::POST, "/v1/collections/authors/records")
                .header("idempotency-key", "key-1")
                .bearer_auth(crate::common::ADMIN_TOKEN)
                .json(&json!({"name": "Bob"})),
        )
        .await;
    assert_eq!(as_admin.status, StatusCode::CREATED);
    assert!(as_admin.header("idempotent-replayed").is_none());

    // PATCH takes keys too.
    let href = first.header("location").unwrap().to_owned();
    let p1 = app
        .send(
            app.req(Method::PATCH, &href)
                .header("idempotency-key", "p-1")
                .json(&json!({"name": "Ann B"})),
        )
        .await;
    let p2 = app
        .send(
            app.req(Method::PATCH, &href)
                .header("idempotency-key", "p-1")
                .json(&json!({"name": "Ann B"})),
        )
        .await;
    assert_eq!(p1.body["version"], 2);
    assert_eq!(p2.body["version"], 2, "not applied twice");
    assert_eq!(p2.header("idempotent-replayed"), Some("true"));

    let r = app.send(post(json!({"name": "x"}), "has space")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    app.shutdown().await;
}

// The first request is held in flight (its write waits on a lock the test holds) while
// nineteen duplicates arrive: exactly one 201, and nineteen 409s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_create_exactly_once() {
    let app = TestApp::spawn_with(crate::common::patient).await;
    app.posts().await;
    let send = || {
        let req = app
            .req(Method::POST, "/v1/collections/authors/records")
            .header("idempotency-key", "race-1")
            .json(&json!({"name": "Racer"}));
        tokio::spawn(async move { req.send().await.map(|r| r.status()) })
    };
    let hold = app.hold_writes("authors", None).await;
    let first = send();
    hold.until_waiting(&app, 1).await;
    let duplicates: Vec<_> = (0..19).map(|_| send()).collect();
    let mut statuses = Vec::new();
    if crate::common::postgres_url().is_some() {
        // The first request's key is claimed; its insert waits on the table lock.
        for t in duplicates {
            statuses.push(t.await.unwrap().unwrap());
        }
        hold.release().await;
    } else {
        // The first request's claim is itself a write, in the group that waits on
        // the lock; the duplicates' claims queue behind it.
        hold.until_waiting(&app, 20).await;
        hold.release().await;
        for t in duplicates {
            statuses.push(t.await.unwrap().unwrap());
        }
    }
    assert_eq!(first.await.unwrap().unwrap(), StatusCode::CREATED);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    let list = app.get("/v1/collections/authors/records").await;
    assert_eq!(list.body["totalItems"], 1, "exactly one record");
    // The key now replays the first answer.
    let again = app
        .send(
            app.req(Method::POST, "/v1/collections/authors/records")
                .header("idempotency-key", "race-1")
                .json(&json!({"name": "Racer"})),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    app.shutdown().await;
}
