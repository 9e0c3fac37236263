//! The batch endpoint: all or nothing, per-operation results, the failing op named.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::TestApp;

#[tokio::test]
async fn batch_applies_all_operations_in_one_transaction() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let a = app.create("authors", json!({"name": "Ann"})).await;
    let b = app.create("authors", json!({"name": "Bob"})).await;
    let a_href = format!(
        "/v1/collections/authors/records/{}",
        a["id"].as_str().unwrap()
    );
    let b_href = format!("/collections/authors/records/{}", b["id"].as_str().unwrap());
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": [
                {"method": "POST", "path": "/v1/collections/authors/records", "body": {"name": "Cy"}},
                {"method": "PATCH", "path": a_href, "body": {"name": "Ann 2"}, "ifMatch": format!("\"{}-1\"", a["id"].as_str().unwrap())},
                {"method": "DELETE", "path": b_href},
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 201);
    assert_eq!(results[0]["body"]["name"], "Cy");
    assert_eq!(results[1]["status"], 200);
    assert_eq!(results[1]["body"]["version"], 2);
    assert_eq!(results[2]["status"], 204);
    assert_eq!(results[2]["body"], Value::Null);
    let list = app.get("/v1/collections/authors/records").await;
    assert_eq!(list.body["totalItems"], 2);
    app.shutdown().await;
}

#[tokio::test]
async fn a_failing_operation_rolls_back_the_whole_batch() {
    let app = TestApp::spawn().await;
    app.posts().await;
    app.collection(
        json!({"name": "tags", "fields": [{"name": "label", "type": "text", "unique": true}]}),
    )
    .await;
    // The third op violates a unique constraint only the store can see (op 1 made it).
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": [
                {"method": "POST", "path": "/v1/collections/tags/records", "body": {"label": "a"}},
                {"method": "POST", "path": "/v1/collections/authors/records", "body": {"name": "Ann"}},
                {"method": "POST", "path": "/v1/collections/tags/records", "body": {"label": "a"}},
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["failedOperation"], 2);
    assert_eq!(r.field_error("label"), Some("unique"));
    assert_eq!(
        app.get("/v1/collections/tags/records").await.body["totalItems"],
        0
    );
    assert_eq!(
        app.get("/v1/collections/authors/records").await.body["totalItems"],
        0
    );

    // Validation failures name the op before anything runs.
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": [
                {"method": "POST", "path": "/v1/collections/authors/records", "body": {"name": "Ann"}},
                {"method": "POST", "path": "/v1/collections/authors/records", "body": {"name": 5}},
            ]}),
        )
        .await;
    assert_eq!(r.body["failedOperation"], 1);
    assert_eq!(r.field_error("name"), Some("invalid_type"));
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": [{"method": "GET", "path": "/v1/collections/authors/records"}]}),
        )
        .await;
    assert_eq!(r.field_error("method"), Some("invalid_method"));
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": [{"method": "POST", "path": "/etc/passwd", "body": {}}]}),
        )
        .await;
    assert_eq!(r.field_error("path"), Some("invalid_path"));
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": [{"method": "DELETE", "path": "/v1/collections/authors/records/nosuchrecord0000"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["failedOperation"], 0);

    let a = app.create("authors", json!({"name": "Ann"})).await;
    let href = format!(
        "/v1/collections/authors/records/{}",
        a["id"].as_str().unwrap()
    );
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": [
                {"method": "PATCH", "path": href, "body": {"name": "x"}},
                {"method": "DELETE", "path": href},
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["failedOperation"], 1);
    assert_eq!(r.field_error("path"), Some("duplicate_target"));
    app.send(app.req(Method::DELETE, &href)).await;

    let too_many: Vec<Value> = (0..101)
        .map(|i| json!({"method": "POST", "path": "/v1/collections/authors/records", "body": {"name": format!("n{i}")}}))
        .collect();
    let r = app
        .json(Method::POST, "/v1/batch", json!({"operations": too_many}))
        .await;
    assert_eq!(r.field_error("operations"), Some("invalid_count"));
    let r = app
        .json(Method::POST, "/v1/batch", json!({"operations": []}))
        .await;
    assert_eq!(r.field_error("operations"), Some("invalid_count"));
    assert_eq!(
        app.get("/v1/collections/authors/records").await.body["totalItems"],
        0
    );
    app.shutdown().await;
}
