//! Conditional requests where they must NOT match: a validator of another record or
//! another version gives the full body, a stale If-Match refuses every kind of write,
//! and a projected or expanded representation is never answered 304 from the plain
//! record's tag. (The matching cases are in `records::create_read_update_delete_*`.)

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{Reply, TestApp};

async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = app.req(Method::GET, path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.send(req).await
}

fn assert_full(r: &Reply, title: &str, why: &str) {
    assert_eq!(r.status, StatusCode::OK, "{why}: {}", r.text);
    assert_eq!(r.body["title"], title, "{why}: the body is sent");
}

#[tokio::test]
async fn validators_of_other_versions_or_records_do_not_match() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let other = app.create("posts", json!({"title": "other"})).await;
    let other_tag = format!("\"{}-1\"", other["id"].as_str().unwrap());
    let rec = app.create("posts", json!({"title": "v1"})).await;
    let id = rec["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/collections/posts/records/{id}");
    let v1 = format!("\"{id}-1\"");
    let p = app.json(Method::PATCH, &path, json!({"title": "v2"})).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    let v2 = p.header("etag").unwrap().to_owned();
    assert_eq!(v2, format!("\"{id}-2\""));
    let g = app.get(&path).await;
    assert_eq!(g.status, StatusCode::OK);
    let last_modified = g.header("last-modified").unwrap().to_owned();

    // If-None-Match that names something else: 200 with the body and the current tag.
    let weak_v1 = format!("W/{v1}");
    let both_old = format!("{other_tag}, {v1}");
    for inm in [
        other_tag.as_str(),
        v1.as_str(),
        weak_v1.as_str(),
        both_old.as_str(),
        "\"\"",
    ] {
        let r = get_with(&app, &path, &[("if-none-match", inm)]).await;
        assert_full(&r, "v2", &format!("If-None-Match: {inm}"));
        assert_eq!(r.header("etag"), Some(v2.as_str()));
    }
    // ... while the current tag, strong or weak (If-None-Match compares weakly), or in
    // a list, does match: the cases above fail for the right reason.
    let weak_v2 = format!("W/{v2}");
    let list_v2 = format!("{other_tag}, {v2}");
    for inm in [v2.as_str(), weak_v2.as_str(), list_v2.as_str()] {
        let r = get_with(&app, &path, &[("if-none-match", inm)]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "If-None-Match: {inm}");
        assert!(r.text.is_empty());
    }

    // If-Modified-Since before Last-Modified: 200. Unparseable: ignored, 200.
    let before = "Mon, 01 Jan 2001 00:00:00 GMT";
    let r = get_with(&app, &path, &[("if-modified-since", before)]).await;
    assert_full(&r, "v2", "If-Modified-Since in 2001");
    let r = get_with(&app, &path, &[("if-modified-since", "yesterday-ish")]).await;
    assert_full(&r, "v2", "If-Modified-Since unparseable");
    // A non-matching If-None-Match wins over a matching If-Modified-Since (RFC 9110
    // 13.1.3: the date is not evaluated when an entity tag is sent).
    let r = get_with(
        &app,
        &path,
        &[
            ("if-none-match", &other_tag),
            ("if-modified-since", &last_modified),
        ],
    )
    .await;
    assert_full(
        &r,
        "v2",
        "If-None-Match of another record with a fresh date",
    );
    let r = get_with(&app, &path, &[("if-modified-since", &last_modified)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "the date alone matches");
    app.shutdown().await;
}

#[tokio::test]
async fn a_stale_if_match_refuses_patch_put_and_delete() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let rec = app
        .create("posts", json!({"title": "v1", "views": 1}))
        .await;
    let id = rec["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/collections/posts/records/{id}");
    let p = app.json(Method::PATCH, &path, json!({"views": 2})).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    let current = app.get(&path).await.body;
    let v2 = format!("\"{id}-2\"");
    let stale = [
        format!("\"{id}-1\""),
        format!("W/\"{id}-2\""), // If-Match compares strongly: a weak tag never matches
        "\"somethingelse-2\"".to_owned(),
    ];
    for tag in &stale {
        for (m, body) in [
            (Method::PATCH, Some(json!({"views": 99}))),
            (Method::PUT, Some(json!({"title": "replaced"}))),
            (Method::DELETE, None),
        ] {
            let mut req = app.req(m.clone(), &path).header("if-match", tag);
            if let Some(b) = &body {
                req = req.json(b);
            }
            let r = app.send(req).await;
            assert_eq!(
                r.status,
                StatusCode::PRECONDITION_FAILED,
                "{m} If-Match: {tag}: {}",
                r.text
            );
            assert_eq!(r.problem_code(), "precondition_failed");
            let now = app.get(&path).await;
            assert_eq!(now.status, StatusCode::OK, "{m} {tag}: still there");
            assert_eq!(now.body, current, "{m} {tag}: nothing changed");
        }
    }
    // The current tag (alone, in a list, or `*`) lets each through.
    let list = format!("\"{id}-1\", {v2}");
    let r = app
        .send(
            app.req(Method::PATCH, &path)
                .header("if-match", &list)
                .json(&json!({"views": 3})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .send(
            app.req(Method::PUT, &path)
                .header("if-match", format!("\"{id}-3\""))
                .json(&json!({"title": "put"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .send(app.req(Method::DELETE, &path).header("if-match", "*"))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.shutdown().await;
}

// `fields=` and `expand=` responses are other representations: they carry no record
// ETag/Last-Modified, and the plain record's validators never turn them into 304 (a
// client holding the full record must not be told its copy is the projected one, and
// an expanded record changes when the related record does).
#[tokio::test]
async fn projected_and_expanded_responses_never_answer_304_to_the_records_tag() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let author = app.create("authors", json!({"name": "Ann"})).await;
    let rec = app
        .create(
            "posts",
            json!({"title": "t", "views": 1, "author": author["id"]}),
        )
        .await;
    let path = format!(
        "/v1/collections/posts/records/{}",
        rec["id"].as_str().unwrap()
    );
    let full = app.get(&path).await;
    assert_eq!(full.status, StatusCode::OK);
    let tag = full.header("etag").unwrap().to_owned();
    let lm = full.header("last-modified").unwrap().to_owned();
    for q in [
        "fields=id,title",
        "expand=author",
        "fields=id&expand=author",
    ] {
        let shaped = format!("{path}?{q}");
        let plain = app.get(&shaped).await;
        assert_eq!(plain.status, StatusCode::OK, "{q}: {}", plain.text);
        assert_eq!(plain.header("etag"), None, "{q}: no record tag");
        assert_eq!(plain.header("last-modified"), None, "{q}");
        for h in [
            ("if-none-match", tag.as_str()),
            ("if-none-match", "*"),
            ("if-modified-since", lm.as_str()),
        ] {
            let r = get_with(&app, &shaped, &[h]).await;
            assert_eq!(r.status, StatusCode::OK, "{q} with {h:?}: {}", r.text);
            assert_eq!(r.body, plain.body, "{q} with {h:?}");
        }
    }
    let r = app.get(&format!("{path}?fields=id,title")).await;
    assert_eq!(
        r.body
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec![
            "id".to_owned(),
            "title".to_owned(),
            "_links".to_owned()
        ]),
        "{}",
        r.text
    );
    let r = app.get(&format!("{path}?expand=author")).await;
    assert_eq!(r.body["expand"]["author"]["name"], "Ann", "{}", r.text);

    // A list with expand: its tag follows the body, so renaming the author (the post
    // itself unchanged) makes the old list tag stale.
    let list = "/v1/collections/posts/records?expand=author";
    let before = app.get(list).await;
    assert_eq!(before.status, StatusCode::OK);
    let list_tag = before.header("etag").unwrap().to_owned();
    let r = get_with(&app, list, &[("if-none-match", &list_tag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "unchanged list matches");
    let r = app
        .json(
            Method::PATCH,
            &format!(
                "/v1/collections/authors/records/{}",
                author["id"].as_str().unwrap()
            ),
            json!({"name": "Ann B."}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = get_with(&app, list, &[("if-none-match", &list_tag)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["items"][0]["expand"]["author"]["name"], "Ann B.");
    assert_ne!(r.header("etag"), Some(list_tag.as_str()));
    // The post's own tag did not move.
    let r = get_with(&app, &path, &[("if-none-match", &tag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    app.shutdown().await;
}
