//! Collection management: admin access, definitions and their validation, alters,
//! drops, and the migration file each change writes.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::TestApp;

#[tokio::test]
async fn collection_management_needs_the_admin_token() {
    let app = TestApp::spawn().await;
    let r = app.get("/v1/collections").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.problem_code(), "unauthorized");
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections")
                .bearer_auth("wrong")
                .json(&json!({"name": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app.admin(Method::GET, "/v1/collections", None).await;
    assert_eq!(r.status, StatusCode::OK);
    // A fresh project has only the built-in users collection.
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["items"][0]["name"], "users");
    assert_eq!(r.body["items"][0]["kind"], "auth");
    app.shutdown().await;
}

#[tokio::test]
async fn create_get_list_and_drop() {
    let app = TestApp::spawn().await;
    let r = app
        .collection(json!({"name": "notes", "fields": [{"name": "body", "type": "text"}]}))
        .await;
    assert_eq!(r.header("location"), Some("/v1/collections/notes"));
    assert_eq!(r.body["kind"], "table");
    assert_eq!(
        r.body["_links"]["records"]["href"],
        "/v1/collections/notes/records"
    );
    let r = app.admin(Method::GET, "/v1/collections/notes", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["fields"][0]["name"], "body");
    let r = app.admin(Method::GET, "/v1/collections", None).await;
    assert_eq!(
        r.body["items"].as_array().unwrap().len(),
        2,
        "notes and users"
    );

    app.create("notes", json!({"body": "hi"})).await;
    let r = app
        .admin(Method::DELETE, "/v1/collections/notes", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app.get("/v1/collections/notes/records").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.admin(Method::GET, "/v1/collections/notes", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The name is free again.
    app.collection(json!({"name": "notes"})).await;
    app.shutdown().await;
}

#[tokio::test]
async fn bad_definitions_get_field_errors() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"name": "1abc"}), "name", "invalid_name"),
        (json!({"name": "bad-name"}), "name", "invalid_name"),
        (json!({"name": "collections"}), "name", "invalid_name"),
        (json!({"name": "_lintel_x"}), "name", "invalid_name"),
        (
            json!({"name": "t", "fields": [{"name": "id", "type": "text"}]}),
            "fields[0].name",
            "invalid_name",
        ),
        (
            json!({"name": "t", "fields": [{"name": "a", "type": "text"}, {"name": "A", "type": "text"}]}),
            "fields[1].name",
            "duplicate",
        ),
        (
            json!({"name": "t", "fields": [{"name": "s", "type": "select"}]}),
            "fields[0].values",
            "required",
        ),
        (
            json!({"name": "t", "fields": [{"name": "r", "type": "relation", "collection": "ghost"}]}),
            "fields[0].collection",
            "unknown_collection",
        ),
        (
            json!({"name": "t", "fields": [{"name": "p", "type": "text", "pattern": "(unclosed"}]}),
            "fields[0].pattern",
            "invalid_pattern",
        ),
        (
            json!({"name": "t", "fields": [{"name": "n", "type": "integer", "min": 5, "default": 1}]}),
            "fields[0].default",
            "too_small",
        ),
        (
            json!({"name": "t", "fields": [{"name": "b", "type": "bool", "min": 1}]}),
            "fields[0].min",
            "not_allowed",
        ),
        (
            json!({"name": "t", "indexes": [{"fields": ["nope"]}]}),
            "indexes[0].fields",
            "unknown_field",
        ),
        (
            json!({"name": "t", "kind": "document", "schema": {"type": 12}}),
            "schema",
            "invalid_schema",
        ),
        (
            json!({"name": "t", "fields": [{"name": "a", "type": "text"}], "indexes": [{"name": "x y\"; --", "fields": ["a"]}]}),
            "indexes[0].name",
            "invalid_name",
        ),
        (
            json!({"name": "t", "kind": "document", "fields": [{"name": "a", "type": "text"}]}),
            "fields",
            "not_allowed",
        ),
    ];
    for (spec, field, code) in cases {
        let r = app
            .admin(Method::POST, "/v1/collections", Some(spec.clone()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{spec}: {}", r.text);
        assert_eq!(r.problem_code(), "validation_failed");
        assert_eq!(r.field_error(field), Some(code), "{spec}: {}", r.text);
    }
    // Unknown types and options are refused by the body parser.
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(json!({"name": "t", "fields": [{"name": "a", "type": "blob"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.problem_code(), "invalid_body");
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(json!({"name": "t", "fields": [{"name": "a", "type": "text", "requierd": true}]})),
        )
        .await;
    assert_eq!(r.problem_code(), "invalid_body");

    app.collection(json!({"name": "dup"})).await;
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(json!({"name": "DUP"})),
        )
        .await;
    assert_eq!(r.field_error("name"), Some("already_exists"));
    // Index names are one namespace across collections.
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(json!({"name": "other", "fields": [{"name": "a", "type": "text"}], "indexes": [{"name": "dup__created__idx", "fields": ["a"]}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.problem_code(), "schema_conflict");
    // Nothing was written for the refused definitions.
    let files = std::fs::read_dir(app.dir.path().join("migrations"))
        .unwrap()
        .count();
    assert_eq!(files, 2, "the users collection's and the one accepted");
    app.shutdown().await;
}

#[tokio::test]
async fn alter_adds_renames_and_drops_fields_and_indexes() {
    let app = TestApp::spawn().await;
    app.collection(json!({
        "name": "items",
        "fields": [{"name": "a", "type": "text"}, {"name": "b", "type": "integer", "unique": true}],
        "indexes": [{"fields": ["a", "b"]}]
    }))
    .await;
    let rec = app.create("items", json!({"a": "x", "b": 1})).await;
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/items",
            Some(json!({
                "addFields": [{"name": "c", "type": "bool", "default": true}],
                "renameFields": [{"from": "a", "to": "alpha"}],
                "dropIndexes": ["items__a_b__idx"],
                "addIndexes": [{"fields": ["alpha"], "unique": true}]
            })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let names: Vec<_> = r.body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("alpha"), json!("b"), json!("c")]);
    assert_eq!(r.body["indexes"][0]["name"], "items__alpha__uniq");

    // The record kept its data under the new name; the new field is null.
    let got = app
        .get(&format!(
            "/v1/collections/items/records/{}",
            rec["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(got.body["alpha"], "x");
    assert_eq!(got.body["c"], json!(null));
    // The new unique index is enforced.
    let dup = app
        .json(
            Method::POST,
            "/v1/collections/items/records",
            json!({"alpha": "x", "b": 2}),
        )
        .await;
    assert_eq!(dup.field_error("alpha"), Some("unique"));

    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/items",
            Some(json!({"dropFields": ["b"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let got = app
        .get(&format!(
            "/v1/collections/items/records/{}",
            rec["id"].as_str().unwrap()
        ))
        .await;
    // With the status checked: a 404 or an error body has no `b` either.
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["alpha"], "x", "{}", got.text);
    assert!(got.body.get("b").is_none(), "{}", got.text);
    // And `b` is gone from the schema, not only from the rendering.
    let r = app
        .json(
            Method::POST,
            "/v1/collections/items/records",
            json!({"alpha": "y", "b": 3}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.field_error("b"), Some("unknown_field"));

    for (patch, why) in [
        (json!({"dropFields": ["ghost"]}), "unknown field"),
        (
            json!({"renameFields": [{"from": "alpha", "to": "c"}]}),
            "name taken",
        ),
        (
            json!({"addFields": [{"name": "c", "type": "text"}]}),
            "duplicate",
        ),
        (json!({"dropIndexes": ["nope"]}), "unknown index"),
        (json!({}), "empty change"),
    ] {
        let r = app
            .admin(Method::PATCH, "/v1/collections/items", Some(patch))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}: {}", r.text);
        assert_eq!(r.problem_code(), "validation_failed", "{why}");
    }
    let files = std::fs::read_dir(app.dir.path().join("migrations"))
        .unwrap()
        .count();
    assert_eq!(
        files, 4,
        "users, create + two alters; refused changes write nothing"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn relation_targets_cannot_be_dropped() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let r = app
        .admin(Method::DELETE, "/v1/collections/authors", None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.problem_code(), "collection_referenced");
    app.shutdown().await;
}
