//! The event log (`GET /v1/events`): every committed change, in the same transaction,
//! in commit order; nothing for a rolled-back write; retention and 410; who may read.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{PW, TestApp, api_key, bearer, login, signup, superuser_token};

/// Every event after `after` matching `query` (extra parameters), following
/// `_links.next` until a page comes back empty.
async fn read_all(app: &TestApp, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut href = format!("/v1/events?limit=7{query}");
    loop {
        let r = app.admin(Method::GET, &href, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let items = r.body["items"].as_array().unwrap().clone();
        let next = r.body["_links"]["next"]["href"]
            .as_str()
            .unwrap()
            .to_owned();
        if items.is_empty() {
            return out;
        }
        out.extend(items);
        href = next;
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn assert_increasing(events: &[Value]) {
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq must strictly increase: {seqs:?}"
    );
}

/// The events appear once the sequencer published them (at once on SQLite, after
/// commit on PostgreSQL): waits until `n` events of the query are there.
async fn wait_for(app: &TestApp, query: &str, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let all = read_all(app, query).await;
        if all.len() >= n {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    read_all(app, query).await
}

#[tokio::test]
async fn record_changes_are_logged_with_after_before_actor_and_request() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "notes", "fields": [{"name": "title", "type": "text"}]}))
        .await;
    let rec = app.create("notes", json!({"title": "one"})).await;
    let id = rec["id"].as_str().unwrap();
    let path = format!("/v1/collections/notes/records/{id}");
    let r = app
        .send(
            app.req(Method::PATCH, &path)
                .header("x-request-id", "req-events-1")
                .json(&json!({"title": "two"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app.admin(Method::DELETE, &path, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    let events = wait_for(&app, "&collection=notes", 4).await;
    assert_eq!(
        types(&events),
        [
            "collection.created",
            "record.created",
            "record.updated",
            "record.deleted"
        ]
    );
    assert_increasing(&events);
    let (coll, created, updated, deleted) = (&events[0], &events[1], &events[2], &events[3]);
    assert_eq!(coll["record"]["name"], "notes");
    assert_eq!(coll["actor"]["type"], "admin");
    assert_eq!(created["collection"], "notes");
    assert_eq!(created["recordId"], id);
    assert_eq!(created["record"]["title"], "one");
    assert_eq!(created["previous"], Value::Null);
    assert_eq!(created["actor"]["type"], "anonymous");
    assert!(created["id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(created["time"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert_eq!(updated["record"]["title"], "two");
    assert_eq!(updated["record"]["version"], 2);
    assert_eq!(updated["previous"]["title"], "one");
    assert_eq!(updated["requestId"], "req-events-1");
    assert_eq!(deleted["record"], Value::Null);
    assert_eq!(deleted["previous"]["title"], "two");
    assert_eq!(deleted["actor"]["type"], "admin");

    // Filters: types and a resumable position.
    let only = read_all(&app, "&types=record.updated,record.deleted").await;
    assert_eq!(types(&only), ["record.updated", "record.deleted"]);
    let after = created["seq"].as_i64().unwrap();
    let rest = read_all(&app, &format!("&after={after}&collection=notes")).await;
    assert_eq!(types(&rest), ["record.updated", "record.deleted"]);
    app.shutdown().await;
}

#[tokio::test]
async fn a_rolled_back_write_logs_nothing() {
    let app = TestApp::spawn().await;
    app.collection(
        json!({"name": "tags", "fields": [{"name": "label", "type": "text", "unique": true}]}),
    )
    .await;
    app.create("tags", json!({"label": "taken"})).await;
    // The second operation fails in the store (unique): the first is rolled back
    // with it, and so is its event.
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": [
                {"method": "POST", "path": "/v1/collections/tags/records", "body": {"label": "fresh"}},
                {"method": "POST", "path": "/v1/collections/tags/records", "body": {"label": "taken"}},
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // A refused single write too.
    let r = app
        .json(
            Method::POST,
            "/v1/collections/tags/records",
            json!({"label": "taken"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let ok = app.create("tags", json!({"label": "last"})).await;
    let events = wait_for(&app, "&types=record.created&collection=tags", 2).await;
    let labels: Vec<&str> = events
        .iter()
        .map(|e| e["record"]["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["taken", "last"], "{events:?}");
    assert_eq!(events[1]["recordId"], ok["id"]);
    app.shutdown().await;
}

#[tokio::test]
async fn a_reader_following_the_log_under_concurrent_writers_sees_each_event_once() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "hits", "fields": [{"name": "n", "type": "integer"}]}))
        .await;
    const WRITERS: usize = 4;
    const EACH: usize = 25;
    let reader = {
        let client = app.client.clone();
        let base = app.url("");
        tokio::spawn(async move {
            let mut seen: Vec<(i64, String)> = Vec::new();
            let mut after = 0i64;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while seen.len() < WRITERS * EACH && tokio::time::Instant::now() < deadline {
                let body: Value = client
                    .get(format!(
                        "{base}/v1/events?types=record.created&collection=hits&after={after}&limit=5"
                    ))
                    .bearer_auth(crate::common::ADMIN_TOKEN)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                for e in body["items"].as_array().unwrap() {
                    let seq = e["seq"].as_i64().unwrap();
                    assert!(seq > after, "a page went backwards");
                    after = seq;
                    seen.push((seq, e["recordId"].as_str().unwrap().to_owned()));
                }
            }
            seen
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = app.client.clone();
        let url = app.url("/v1/collections/hits/records");
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                let r = client
                    .post(&url)
                    .json(&json!({"n": w * 1000 + i}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
                let body: Value = r.json().await.unwrap();
                ids.push(body["id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut written = BTreeSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    let seen = reader.await.unwrap();
    let seen_ids: Vec<&String> = seen.iter().map(|(_, id)| id).collect();
    let unique: BTreeSet<&String> = seen_ids.iter().copied().collect();
    assert_eq!(seen_ids.len(), unique.len(), "an event was read twice");
    assert_eq!(
        unique.len(),
        written.len(),
        "the reader skipped events: saw {} of {}",
        unique.len(),
        written.len()
    );
    assert!(written.iter().all(|id| unique.contains(id)));
    app.shutdown().await;
}

#[tokio::test]
async fn cascades_and_set_null_are_logged_too() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "owners", "fields": [{"name": "name", "type": "text"}]}))
        .await;
    app.collection(json!({"name": "pets", "fields": [
        {"name": "name", "type": "text"},
        {"name": "owner", "type": "relation", "collection": "owners", "onDelete": "cascade"},
        {"name": "vet", "type": "relation", "collection": "owners", "onDelete": "setNull"}
    ]}))
    .await;
    let ann = app.create("owners", json!({"name": "Ann"})).await;
    let bob = app.create("owners", json!({"name": "Bob"})).await;
    let rex = app
        .create("pets", json!({"name": "Rex", "owner": ann["id"]}))
        .await;
    let tom = app
        .create(
            "pets",
            json!({"name": "Tom", "owner": bob["id"], "vet": ann["id"]}),
        )
        .await;
    let r = app
        .admin(
            Method::DELETE,
            &format!(
                "/v1/collections/owners/records/{}",
                ann["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let events = wait_for(
        &app,
        "&collection=pets&types=record.deleted,record.updated",
        2,
    )
    .await;
    assert_eq!(events.len(), 2, "{events:?}");
    let deleted = events
        .iter()
        .find(|e| e["type"] == "record.deleted")
        .unwrap();
    assert_eq!(deleted["recordId"], rex["id"]);
    assert_eq!(deleted["previous"]["name"], "Rex");
    let unlinked = events
        .iter()
        .find(|e| e["type"] == "record.updated")
        .unwrap();
    assert_eq!(unlinked["recordId"], tom["id"]);
    assert_eq!(unlinked["previous"]["vet"], ann["id"]);
    assert_eq!(unlinked["record"]["vet"], Value::Null);
    let owners = read_all(&app, "&collection=owners&types=record.deleted").await;
    assert_eq!(owners.len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn hidden_fields_stay_out_and_auth_events_join_the_log() {
    let app = TestApp::spawn().await;
    let user = signup(&app, "eve@example.com").await;
    login(&app, "eve@example.com").await;
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "eve@example.com", "password": "wrong password!"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let created = wait_for(&app, "&collection=users&types=record.created", 1).await;
    assert_eq!(created[0]["recordId"], user["id"]);
    assert_eq!(created[0]["record"]["email"], "eve@example.com");
    let text = created[0].to_string();
    assert!(
        !text.contains("passwordHash") && !text.contains("argon2"),
        "{text}"
    );
    assert!(!text.contains(PW));
    // Audit rows are written in the background: wait for them.
    let auth = wait_for(&app, "&types=auth.login,auth.login_failed", 2).await;
    let ok = auth.iter().find(|e| e["type"] == "auth.login").unwrap();
    assert!(
        auth.iter().any(|e| e["type"] == "auth.login_failed"),
        "{auth:?}"
    );
    assert_eq!(ok["recordId"], user["id"]);
    assert_eq!(ok["record"]["outcome"], "ok");
    app.shutdown().await;
}

#[tokio::test]
async fn only_superusers_and_keys_scoped_events_read_may_read() {
    let app = TestApp::spawn().await;
    let r = app.get("/v1/events").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    signup(&app, "u@example.com").await;
    let user = crate::common::access(&login(&app, "u@example.com").await);
    let r = bearer(&app, &user, Method::GET, "/v1/events", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let root = superuser_token(&app).await;
    let r = bearer(&app, &root, Method::GET, "/v1/events", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let reader = api_key(&app, &root, json!(["events:read"])).await;
    let r = bearer(&app, &reader, Method::GET, "/v1/events", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let other = api_key(&app, &root, json!(["collections:read"])).await;
    let r = bearer(&app, &other, Method::GET, "/v1/events", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.problem_code(), "insufficient_scope");
    app.shutdown().await;
}

#[tokio::test]
async fn bad_parameters_are_refused_with_the_field() {
    let app = TestApp::spawn().await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("after=-1", "after"),
        ("after=abc", "after"),
        ("types=record.created;drop", "types"),
        ("colection=posts", "colection"),
    ] {
        let r = app
            .admin(Method::GET, &format!("/v1/events?{query}"), None)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text);
        assert!(r.field_error(field).is_some(), "{query}: {}", r.text);
    }
    let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
    let r = app
        .admin(
            Method::GET,
            &format!("/v1/events?types={}", many.join(",")),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn a_purged_position_answers_410_with_the_oldest_seq() {
    let app = TestApp::spawn_clocked(|c| c.store.purge_interval_secs = 0).await;
    app.collection(json!({"name": "logs", "fields": [{"name": "m", "type": "text"}]}))
        .await;
    app.create("logs", json!({"m": "old"})).await;
    wait_for(&app, "&collection=logs&types=record.created", 1).await;
    let old = read_all(&app, "").await;
    let last_old = old.last().unwrap()["seq"].as_i64().unwrap();
    // Past the 7-day default retention.
    app.advance(Duration::from_secs(8 * 24 * 3600));
    app.create("logs", json!({"m": "new"})).await;
    wait_for(&app, &format!("&after={last_old}"), 1).await;
    let state = &app.running().state;
    let policy = lintel::store::purge::PurgePolicy::from_config(&state.config);
    let report = lintel::store::purge::purge_expired(
        state.store.as_ref(),
        &policy,
        state.clock.now_ms(),
        || true,
    )
    .await
    .unwrap();
    assert_eq!(report.events, old.len() as u64, "{report:?}");
    let r = app.admin(Method::GET, "/v1/events?after=0", None).await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.text);
    assert_eq!(r.problem_code(), "events_purged");
    assert_eq!(r.body["oldestSeq"], last_old + 1);
    // Resuming where the 410 says works, and so does starting from the oldest kept.
    for q in [format!("?after={last_old}"), String::new()] {
        let r = app
            .admin(Method::GET, &format!("/v1/events{q}"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let items = r.body["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{}", r.text);
        assert_eq!(items[0]["record"]["m"], "new");
    }
    app.shutdown().await;
}
