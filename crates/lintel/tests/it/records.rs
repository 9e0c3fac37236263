//! The records API: CRUD with conditional requests, validation of every field type,
//! constraints as field errors, document collections, listing (filters, sorting,
//! pagination, projection, expansion) and the rejection of injection attempts.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::TestApp;

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn create_read_update_delete_with_validators() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let r = app
        .json(
            Method::POST,
            "/v1/collections/posts/records",
            json!({"title": "Hello", "views": 3}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let rec = r.body.clone();
    let rid = id(&rec);
    assert_eq!(rid.len(), 16);
    assert_eq!(rec["version"], 1);
    assert_eq!(rec["published"], false, "default applied");
    assert!(rec["created"].as_str().unwrap().ends_with('Z'));
    let href = format!("/v1/collections/posts/records/{rid}");
    assert_eq!(r.header("location"), Some(href.as_str()));
    assert_eq!(rec["_links"]["self"]["href"], json!(href));
    let etag = r.header("etag").unwrap().to_owned();

    let g = app.get(&href).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header("etag"), Some(etag.as_str()));
    assert!(g.header("last-modified").is_some());
    assert_eq!(g.header("cache-control"), Some("private, no-cache"));
    let nm = app
        .send(app.req(Method::GET, &href).header("if-none-match", &etag))
        .await;
    assert_eq!(nm.status, StatusCode::NOT_MODIFIED);
    let lm = g.header("last-modified").unwrap().to_owned();
    let nm = app
        .send(app.req(Method::GET, &href).header("if-modified-since", &lm))
        .await;
    assert_eq!(nm.status, StatusCode::NOT_MODIFIED);

    // PATCH changes only the given fields and bumps the version.
    let p = app.json(Method::PATCH, &href, json!({"views": 4})).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert_eq!(p.body["version"], 2);
    assert_eq!(p.body["title"], "Hello");
    assert_eq!(p.body["views"], 4);
    assert_eq!(p.body["created"], rec["created"]);
    assert_ne!(p.header("etag"), Some(etag.as_str()));

    // A stale ETag gets 412 and changes nothing.
    let stale = app
        .send(
            app.req(Method::PATCH, &href)
                .header("if-match", &etag)
                .json(&json!({"views": 99})),
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.problem_code(), "precondition_failed");
    assert_eq!(app.get(&href).await.body["views"], 4);

    // PUT replaces the whole record: missing fields take defaults or null.
    let fresh = p.header("etag").unwrap().to_owned();
    let put = app
        .send(
            app.req(Method::PUT, &href)
                .header("if-match", &fresh)
                .json(&json!({"title": "Replaced"})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    assert_eq!(put.body["views"], json!(null));
    assert_eq!(put.body["version"], 3);

    // System fields cannot be written.
    let sys = app
        .json(Method::PATCH, &href, json!({"id": "mine", "version": 10}))
        .await;
    assert_eq!(sys.status, StatusCode::BAD_REQUEST);
    assert_eq!(sys.field_error("id"), Some("read_only"));
    assert_eq!(sys.field_error("version"), Some("read_only"));

    let garbled = app
        .send(app.req(Method::DELETE, &href).header(
            "if-match",
            reqwest::header::HeaderValue::from_bytes(b"\"x\xe9\"").unwrap(),
        ))
        .await;
    assert_eq!(
        garbled.status,
        StatusCode::BAD_REQUEST,
        "an unreadable If-Match is refused, not ignored"
    );
    let stale_delete = app
        .send(app.req(Method::DELETE, &href).header("if-match", &etag))
        .await;
    assert_eq!(stale_delete.status, StatusCode::PRECONDITION_FAILED);
    let del = app.send(app.req(Method::DELETE, &href)).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let gone = app.get(&href).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.problem_code(), "not_found");
    let again = app.send(app.req(Method::DELETE, &href)).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let r = app.get("/v1/collections/ghosts/records/abc").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .json(
            Method::PATCH,
            "/v1/collections/posts/records/nosuchid",
            json!({"views": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.shutdown().await;
}

#[tokio::test]
async fn every_field_type_and_option_is_enforced() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let cases = [
        (json!({}), "title", "required"),
        (json!({"title": ""}), "title", "required"),
        (json!({"title": 5}), "title", "invalid_type"),
        (json!({"title": "x".repeat(101)}), "title", "too_long"),
        (
            json!({"title": "t", "slug": "Not A Slug"}),
            "slug",
            "pattern_mismatch",
        ),
        (json!({"title": "t", "views": -1}), "views", "too_small"),
        (json!({"title": "t", "views": 1.5}), "views", "invalid_type"),
        (json!({"title": "t", "views": "3"}), "views", "invalid_type"),
        (
            json!({"title": "t", "score": "high"}),
            "score",
            "invalid_type",
        ),
        (
            json!({"title": "t", "published": "yes"}),
            "published",
            "invalid_type",
        ),
        (
            json!({"title": "t", "contact": "not-an-email"}),
            "contact",
            "invalid_email",
        ),
        (
            json!({"title": "t", "link": "ftp://x.org"}),
            "link",
            "invalid_url",
        ),
        (
            json!({"title": "t", "link": "not a url"}),
            "link",
            "invalid_url",
        ),
        (
            json!({"title": "t", "at": "last tuesday"}),
            "at",
            "invalid_datetime",
        ),
        (
            json!({"title": "t", "category": "sports"}),
            "category",
            "invalid_choice",
        ),
        (
            json!({"title": "t", "author": 12}),
            "author",
            "invalid_type",
        ),
        (
            json!({"title": "t", "author": "bad id!"}),
            "author",
            "invalid_id",
        ),
        (
            json!({"title": "t", "coauthors": "abc"}),
            "coauthors",
            "invalid_type",
        ),
        (
            json!({"title": "t", "author": "nosuchauthor0000"}),
            "author",
            "relation_not_found",
        ),
        (
            json!({"title": "t", "coauthors": ["nosuchauthor0000"]}),
            "coauthors",
            "relation_not_found",
        ),
        (
            json!({"title": "t", "unknown": 1}),
            "unknown",
            "unknown_field",
        ),
        (json!({"title": "t", "_links": {}}), "_links", "read_only"),
        (json!({"title": "a\u{0}b"}), "title", "invalid_character"),
        (
            json!({"title": "t", "meta": {"k": "\u{0}"}}),
            "meta",
            "invalid_character",
        ),
    ];
    for (body, field, code) in cases {
        let r = app
            .json(Method::POST, "/v1/collections/posts/records", body.clone())
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.field_error(field), Some(code), "{body}: {}", r.text);
    }
    // Nothing was written by the refused requests.
    let list = app.get("/v1/collections/posts/records").await;
    assert_eq!(list.body["totalItems"], 0);

    // Valid values come back normalised.
    let author = app.create("authors", json!({"name": "Ann"})).await;
    let ok = app
        .create(
            "posts",
            json!({
                "title": "t", "slug": "a-b", "views": 2.0, "score": 1.5, "published": true,
                "contact": "ann@example.com", "link": "https://example.com/x",
                "at": "2024-05-01T12:00:00+02:00", "category": "tech", "meta": {"k": [1, 2]},
                "author": id(&author), "coauthors": [id(&author), id(&author)]
            }),
        )
        .await;
    assert_eq!(ok["views"], 2);
    assert_eq!(ok["at"], "2024-05-01T10:00:00.000Z");
    assert_eq!(ok["meta"], json!({"k": [1, 2]}));
    assert_eq!(ok["coauthors"], json!([id(&author)]), "deduplicated");
    // In a json field, [] and "" are values, not "empty".
    let j = app.create("posts", json!({"title": "j", "meta": []})).await;
    assert_eq!(j["meta"], json!([]));
    assert_eq!(j["coauthors"], json!([]));
    let r = app
        .json(
            Method::POST,
            "/v1/collections/posts/records",
            json!({"title": "t", "at": "9999-12-31T23:59:59-01:00"}),
        )
        .await;
    assert_eq!(
        r.field_error("at"),
        Some("invalid_datetime"),
        "out of range, refused not crashed"
    );

    // Unique and relation constraints from the store are field errors.
    let dup = app
        .json(
            Method::POST,
            "/v1/collections/posts/records",
            json!({"title": "u", "slug": "a-b"}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::BAD_REQUEST);
    assert_eq!(dup.field_error("slug"), Some("unique"));
    // A referenced record cannot be deleted.
    let del = app
        .send(app.req(
            Method::DELETE,
            &format!("/v1/collections/authors/records/{}", id(&author)),
        ))
        .await;
    assert_eq!(del.status, StatusCode::CONFLICT);
    assert_eq!(del.problem_code(), "record_referenced");
    app.shutdown().await;
}

#[tokio::test]
async fn document_collections_take_any_json_and_check_their_schema() {
    let app = TestApp::spawn().await;
    app.collection(
        json!({"name": "events", "kind": "document", "indexes": [{"fields": ["meta.kind"]}]}),
    )
    .await;
    let e = app
        .create(
            "events",
            json!({"meta": {"kind": "click", "tags": ["a", "b"]}, "n": 3}),
        )
        .await;
    assert_eq!(e["meta"]["tags"], json!(["a", "b"]));
    let href = format!("/v1/collections/events/records/{}", id(&e));
    // Merge patch: null removes, objects merge.
    let p = app
        .json(Method::PATCH, &href, json!({"n": null, "meta": {"x": 1}}))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert!(p.body.get("n").is_none());
    assert_eq!(p.body["meta"]["kind"], "click");
    assert_eq!(p.body["meta"]["x"], 1);
    let r = app
        .json(
            Method::POST,
            "/v1/collections/events/records",
            json!({"id": "x"}),
        )
        .await;
    assert_eq!(r.field_error("id"), Some("read_only"));

    app.create(
        "events",
        json!({"meta": {"kind": "view", "tags": ["c"]}, "n": 10}),
    )
    .await;
    let q = app
        .send(
            app.req(Method::GET, "/v1/collections/events/records")
                .query(&[("filter", "meta.kind = 'view'")]),
        )
        .await;
    assert_eq!(q.body["totalItems"], 1, "{}", q.text);
    let q = app
        .send(
            app.req(Method::GET, "/v1/collections/events/records")
                .query(&[("filter", "meta.tags ~ 'a'")]),
        )
        .await;
    assert_eq!(q.body["totalItems"], 1, "{}", q.text);
    let q = app
        .send(
            app.req(Method::GET, "/v1/collections/events/records")
                .query(&[("filter", "n >= 10"), ("sort", "-meta.kind")]),
        )
        .await;
    assert_eq!(q.body["items"][0]["meta"]["kind"], "view", "{}", q.text);

    app.collection(json!({
        "name": "people",
        "kind": "document",
        "schema": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}
        }
    }))
    .await;
    let r = app
        .json(
            Method::POST,
            "/v1/collections/people/records",
            json!({"age": -1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.field_error("name"), Some("schema"), "{}", r.text);
    assert_eq!(r.field_error("age"), Some("schema"), "{}", r.text);
    let p = app.create("people", json!({"name": "Bo", "age": 3})).await;
    let r = app
        .json(
            Method::PATCH,
            &format!("/v1/collections/people/records/{}", id(&p)),
            json!({"age": "old"}),
        )
        .await;
    assert_eq!(
        r.field_error("age"),
        Some("schema"),
        "the merged document is checked"
    );
    app.shutdown().await;
}

async fn seed(app: &TestApp, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..n {
        let cat = ["news", "tech", "life"][i % 3];
        out.push(
            app.create(
                "posts",
                json!({"title": format!("Post {i:02}"), "views": i % 5, "category": cat, "published": i % 2 == 0}),
            )
            .await,
        );
    }
    out
}

async fn list(app: &TestApp, params: &[(&str, &str)]) -> crate::common::Reply {
    app.send(
        app.req(Method::GET, "/v1/collections/posts/records")
            .query(params),
    )
    .await
}

#[tokio::test]
async fn listing_filters_sorts_and_pages() {
    let app = TestApp::spawn().await;
    app.posts().await;
    seed(&app, 25).await;

    let r = list(
        &app,
        &[
            (
                "filter",
                "views >= 3 && (category = 'news' || category = \"tech\")",
            ),
            ("sort", "-views,title"),
            ("perPage", "4"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let total = r.body["totalItems"].as_u64().unwrap();
    assert_eq!(total, 7, "{}", r.text);
    assert_eq!(r.body["totalPages"], 2);
    assert_eq!(r.body["page"], 1);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert!(
        items
            .windows(2)
            .all(|w| w[0]["views"].as_i64() >= w[1]["views"].as_i64())
    );
    assert!(
        r.body["_links"]["next"]["href"]
            .as_str()
            .unwrap()
            .contains("page=2")
    );
    assert!(r.body["_links"].get("prev").is_none());
    assert!(r.header("link").unwrap().contains("rel=\"next\""));
    let p2 = list(
        &app,
        &[
            (
                "filter",
                "views >= 3 && (category = 'news' || category = \"tech\")",
            ),
            ("sort", "-views,title"),
            ("perPage", "4"),
            ("page", "2"),
        ],
    )
    .await;
    assert_eq!(p2.body["items"].as_array().unwrap().len(), 3);
    assert!(
        p2.body["_links"]["prev"]["href"]
            .as_str()
            .unwrap()
            .contains("page=1")
    );
    assert!(p2.body["_links"].get("next").is_none());

    // Case-insensitive contains, negations, null, booleans, @now.
    for (filter, expected) in [
        ("title ~ 'post 1'", 10),
        ("title !~ 'POST 1'", 15),
        ("category != 'news'", 16),
        ("published = true", 13),
        ("contact = null", 25),
        ("contact != null", 0),
        ("created <= @now", 25),
        ("created > '2999-01-01'", 0),
        ("views > 2.5", 10),
        ("2 < views", 10),
    ] {
        let r = list(&app, &[("filter", filter), ("skipTotal", "0")]).await;
        assert_eq!(r.status, StatusCode::OK, "{filter}: {}", r.text);
        assert_eq!(r.body["totalItems"], expected, "{filter}");
    }

    // Projection and skipTotal.
    let r = list(
        &app,
        &[("fields", "id,title"), ("skipTotal", "1"), ("perPage", "2")],
    )
    .await;
    let first = r.body["items"][0].as_object().unwrap();
    assert!(first.contains_key("title") && !first.contains_key("views"));
    assert_eq!(r.body["totalItems"], json!(null));
    assert!(r.body["_links"]["next"].is_object());

    // Conditional list.
    let etag = r.header("etag").unwrap().to_owned();
    let nm = app
        .send(
            app.req(Method::GET, "/v1/collections/posts/records")
                .query(&[("fields", "id,title"), ("skipTotal", "1"), ("perPage", "2")])
                .header("if-none-match", etag),
        )
        .await;
    assert_eq!(nm.status, StatusCode::NOT_MODIFIED);

    // A cached page and count never outlive a write.
    let before = list(&app, &[("filter", "views >= 3"), ("sort", "title")]).await;
    let again = list(&app, &[("filter", "views >= 3"), ("sort", "title")]).await;
    assert_eq!(before.body["totalItems"], again.body["totalItems"]);
    app.create("posts", json!({"title": "AAA first", "views": 4}))
        .await;
    let after = list(&app, &[("filter", "views >= 3"), ("sort", "title")]).await;
    assert_eq!(
        after.body["totalItems"].as_i64(),
        before.body["totalItems"].as_i64().map(|n| n + 1)
    );
    assert_eq!(after.body["items"][0]["title"], "AAA first");

    let r = list(&app, &[("perPage", "501")]).await;
    assert_eq!(r.field_error("perPage"), Some("invalid"));
    let r = list(&app, &[("page", "0")]).await;
    assert_eq!(r.field_error("page"), Some("invalid"));
    app.shutdown().await;
}

#[tokio::test]
async fn keyset_pagination_visits_every_record_once() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let all = seed(&app, 23).await;
    for sort in [
        "-views,title",
        "views",
        "-created",
        "category,-title",
        "contact",
    ] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        for _ in 0..20 {
            let r = list(
                &app,
                &[("sort", sort), ("perPage", "5"), ("cursor", &cursor)],
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{sort}: {}", r.text);
            for item in r.body["items"].as_array().unwrap() {
                seen.push(id(item));
            }
            match r.body["nextCursor"].as_str() {
                Some(c) => {
                    assert!(
                        r.body["_links"]["next"]["href"]
                            .as_str()
                            .unwrap()
                            .contains("cursor=")
                    );
                    cursor = c.to_owned();
                }
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "{sort}: every record exactly once");
        assert_eq!(seen.len(), all.len(), "{sort}: no duplicates");
    }
    let r = list(&app, &[("sort", "views"), ("cursor", "garbage!")]).await;
    assert_eq!(r.field_error("cursor"), Some("invalid_cursor"));
    let first = list(&app, &[("sort", "views"), ("perPage", "2"), ("cursor", "")]).await;
    let c = first.body["nextCursor"].as_str().unwrap();
    let r = list(&app, &[("sort", "title"), ("cursor", c)]).await;
    assert_eq!(
        r.field_error("cursor"),
        Some("invalid_cursor"),
        "a cursor is tied to its sort"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn expand_inlines_related_records() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let a = app.create("authors", json!({"name": "Ann"})).await;
    let b = app.create("authors", json!({"name": "Bob"})).await;
    let p = app
        .create(
            "posts",
            json!({"title": "t", "author": id(&a), "coauthors": [id(&b), id(&a)]}),
        )
        .await;
    let r = app
        .get(&format!(
            "/v1/collections/posts/records/{}?expand=author,coauthors",
            id(&p)
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["expand"]["author"]["name"], "Ann");
    assert_eq!(r.body["expand"]["coauthors"][0]["name"], "Bob");
    assert_eq!(r.body["expand"]["coauthors"][1]["name"], "Ann");
    let l = list(&app, &[("expand", "author")]).await;
    assert_eq!(l.body["items"][0]["expand"]["author"]["name"], "Ann");
    let bad = list(&app, &[("expand", "title")]).await;
    assert_eq!(bad.field_error("expand"), Some("invalid_expand"));
    let q = list(&app, &[("filter", &format!("coauthors ~ '{}'", id(&b)))]).await;
    assert_eq!(q.body["totalItems"], 1, "{}", q.text);
    app.create("posts", json!({"title": "alone"})).await;
    let q = list(&app, &[("filter", "coauthors = null")]).await;
    assert_eq!(
        q.body["totalItems"], 1,
        "an empty list is no value: {}",
        q.text
    );
    let q = list(&app, &[("filter", "author = coauthors")]).await;
    assert_eq!(q.status, StatusCode::BAD_REQUEST);
    app.shutdown().await;
}

#[tokio::test]
async fn filter_errors_say_where() {
    let app = TestApp::spawn().await;
    app.posts().await;
    for (filter, code, position) in [
        ("title = ", "unexpected_end", 8),
        ("title = 'open", "unterminated_string", 8),
        ("nosuch = 1", "unknown_field", 0),
        ("views = 'abc'", "type_mismatch", 8),
        ("published > true", "type_mismatch", 0),
        ("at > 'not a date'", "type_mismatch", 5),
        ("title > null", "type_mismatch", 8),
        ("1 = 1", "no_field", 0),
        ("@later = title", "unknown_macro", 0),
        ("created > '9999-12-31T23:59:59-01:00'", "type_mismatch", 10),
    ] {
        let r = list(&app, &[("filter", filter)]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{filter}: {}", r.text);
        assert_eq!(r.problem_code(), "invalid_filter", "{filter}");
        assert_eq!(r.field_error("filter"), Some(code), "{filter}: {}", r.text);
        assert_eq!(
            r.body["errors"]["filter"]["position"], position,
            "{filter}: {}",
            r.text
        );
    }
    let deep = format!("{}title = 'x'{}", "(".repeat(40), ")".repeat(40));
    let r = list(&app, &[("filter", &deep)]).await;
    assert_eq!(r.field_error("filter"), Some("too_deep"));
    let long = format!("title = '{}'", "x".repeat(5000));
    let r = list(&app, &[("filter", &long)]).await;
    assert_eq!(r.field_error("filter"), Some("too_long"));
    app.shutdown().await;
}

#[tokio::test]
async fn injection_attempts_are_data_or_errors() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let evil = "x'; DROP TABLE posts;--";
    app.create("posts", json!({"title": evil})).await;
    // As a value, the text is matched literally.
    let r = list(&app, &[("filter", "title = \"x'; DROP TABLE posts;--\"")]).await;
    assert_eq!(r.body["totalItems"], 1, "{}", r.text);
    let r = list(&app, &[("filter", "title ~ '%'")]).await;
    assert_eq!(
        r.body["totalItems"], 0,
        "LIKE wildcards in values match themselves"
    );
    for (param, value) in [
        ("filter", "title'; DROP TABLE posts;--"),
        ("filter", "title = 'a' OR 1=1"),
        ("filter", "title = 'a'; DELETE FROM posts"),
        ("sort", "title'; DROP TABLE posts;--"),
        ("sort", "title DESC; DROP TABLE posts"),
        ("fields", "id,title'; DROP TABLE posts;--"),
        ("expand", "author'); DROP TABLE posts;--"),
    ] {
        let r = list(&app, &[(param, value)]).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{param}={value}: {}",
            r.text
        );
        r.problem_code();
        assert!(
            !r.text.to_lowercase().contains("sqlite"),
            "no internals leak: {}",
            r.text
        );
    }
    let r = app.get("/v1/collections/posts'--/records").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.get("/v1/collections/posts/records/x'%20OR%201=1").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The table and its record are intact.
    let r = list(&app, &[]).await;
    assert_eq!(r.body["totalItems"], 1);
    app.shutdown().await;
}

#[tokio::test]
async fn datetime_fields_compare_and_sort_as_instants() {
    let app = TestApp::spawn().await;
    app.posts().await;
    for (i, at) in [
        "2024-01-01T12:00:00+02:00",
        "2024-01-01T09:30:00Z",
        "2024-01-01T11:00:00+00:30",
        "2023-12-31T23:59:59.999Z",
    ]
    .iter()
    .enumerate()
    {
        app.create("posts", json!({"title": format!("t{i}"), "at": at}))
            .await;
    }
    // 10:00 UTC, 09:30 UTC, 10:30 UTC, the day before.
    let r = list(
        &app,
        &[
            ("filter", "at > '2024-01-01T10:00:00+01:00'"),
            ("sort", "at"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let titles: Vec<_> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].clone())
        .collect();
    assert_eq!(
        titles,
        vec![json!("t1"), json!("t0"), json!("t2")],
        "{}",
        r.text
    );
    assert_eq!(r.body["items"][0]["at"], "2024-01-01T09:30:00.000Z");
    let r = list(&app, &[("filter", "at = '2024-01-01T10:00:00Z'")]).await;
    assert_eq!(r.body["totalItems"], 1, "{}", r.text);
    let r = list(&app, &[("filter", "at ~ '2024'")]).await;
    assert_eq!(r.field_error("filter"), Some("type_mismatch"));
    // Keyset pagination over a datetime field, nulls included.
    app.create("posts", json!({"title": "no date"})).await;
    let mut seen = 0;
    let mut cursor = String::new();
    for _ in 0..10 {
        let r = list(
            &app,
            &[("sort", "-at"), ("perPage", "2"), ("cursor", &cursor)],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        seen += r.body["items"].as_array().unwrap().len();
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, 5);
    app.shutdown().await;
}

// Sorting a document collection by JSON paths: a nested path orders numbers as numbers
// (10 after 9), ties on it are broken by the next key, and the direction of each key is
// its own. One record per sort key would not show the tie-break at all.
#[tokio::test]
async fn json_path_sorts_break_ties_by_the_next_key() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "scores", "kind": "document", "indexes": [{"fields": ["player.stats.points"]}]}))
        .await;
    for (name, team, points) in [
        ("dee", "red", 9),
        ("ann", "blue", 10),
        ("cy", "red", 10),
        ("bob", "blue", 9),
        ("eve", "blue", 10),
        ("fay", "red", 2),
    ] {
        app.create(
            "scores",
            json!({"player": {"name": name, "team": team, "stats": {"points": points}}}),
        )
        .await;
    }
    let order = |sort: &'static str| {
        let app = &app;
        async move {
            let r = app
                .send(
                    app.req(Method::GET, "/v1/collections/scores/records")
                        .query(&[("sort", sort)]),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{sort}: {}", r.text);
            r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["player"]["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        order("-player.stats.points,player.name").await,
        ["ann", "cy", "eve", "bob", "dee", "fay"]
    );
    assert_eq!(
        order("-player.stats.points,-player.name").await,
        ["eve", "cy", "ann", "dee", "bob", "fay"]
    );
    assert_eq!(
        order("player.team,-player.stats.points,player.name").await,
        ["ann", "eve", "bob", "cy", "dee", "fay"]
    );
    app.shutdown().await;
}
