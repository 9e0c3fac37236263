//! Full-text search: relevance on a fixed corpus with known answers (stems, phrases,
//! prefixes, exclusions, OR, weights, stop words), the list rule for users A and B on
//! lists and on `/v1/search`, the index after every kind of write, escaped highlights,
//! malformed queries, field options, and the rebuild job that `updateFields` starts.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, Reply, TestApp, access, bearer, login, signup};

fn q(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn search(app: &TestApp, coll: &str, query: &str, extra: &str) -> Reply {
    app.get(&format!(
        "/v1/collections/{coll}/records?search={}{extra}",
        q(query)
    ))
    .await
}

/// The `ref` of each item, in order.
fn refs(r: &Reply) -> Vec<String> {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["ref"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn batch_create(app: &TestApp, coll: &str, docs: &[Value]) {
    for chunk in docs.chunks(100) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|d| json!({"method": "POST", "path": format!("/v1/collections/{coll}/records"), "body": d}))
            .collect();
        let r = app
            .json(Method::POST, "/v1/batch", json!({"operations": ops}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
}

/// 2,000 short documents: 1,988 of filler (`alpha<n % 50> bravo<n % 7>`), and twelve
/// with known answers.
async fn corpus(app: &TestApp) {
    app.collection(json!({"name": "docs", "fields": [
        {"name": "ref", "type": "text"},
        {"name": "title", "type": "text", "searchable": true, "weight": "A"},
        {"name": "body", "type": "text", "searchable": true},
        {"name": "rank", "type": "integer"}
    ]}))
    .await;
    let known = [
        ("run1", "Running shoes for trails", "lightweight and sturdy"),
        ("run2", "Morning notes", "She runs every morning"),
        ("fox1", "The quick brown fox", "jumps over the lazy dog"),
        ("fox2", "Colours", "quick and brown are colours of a fox"),
        ("prog1", "Programming in Rust", "ownership and borrowing"),
        ("prog2", "Notes", "a programmer's notebook"),
        ("pet1", "Pets", "cats and dogs"),
        ("pet2", "Pets", "cats only"),
        ("w1", "Weightword", "filler text"),
        ("w2", "Other", "weightword in the body"),
        ("zoo1", "Zebra", "stripes"),
        ("zoo2", "Giraffe", "long neck"),
    ];
    let mut docs: Vec<Value> = known
        .iter()
        .enumerate()
        .map(|(i, (r, t, b))| json!({"ref": r, "title": t, "body": b, "rank": i}))
        .collect();
    for n in 0..1988 {
        docs.push(json!({
            "ref": format!("f{n}"),
            "title": format!("Filler {n}"),
            "body": format!("alpha{} bravo{}", n % 50, n % 7),
            "rank": 100 + n
        }));
    }
    batch_create(app, "docs", &docs).await;
}

#[tokio::test]
async fn relevance_on_a_fixed_corpus() {
    let app = TestApp::spawn().await;
    corpus(&app).await;
    let set = |r: &Reply| {
        let mut v = refs(r);
        v.sort();
        v
    };
    // Stems: "runs" and "Running" both stem to "run".
    assert_eq!(
        set(&search(&app, "docs", "run", "").await),
        ["run1", "run2"]
    );
    assert_eq!(
        set(&search(&app, "docs", "RUNNING", "").await),
        ["run1", "run2"]
    );
    // All words must match; a phrase only in order.
    assert_eq!(
        set(&search(&app, "docs", "quick brown", "").await),
        ["fox1", "fox2"]
    );
    assert_eq!(
        set(&search(&app, "docs", "\"quick brown fox\"", "").await),
        ["fox1"]
    );
    assert_eq!(
        set(&search(&app, "docs", "\"brown quick\"", "").await),
        Vec::<String>::new()
    );
    // Prefixes.
    assert_eq!(
        set(&search(&app, "docs", "program*", "").await),
        ["prog1", "prog2"]
    );
    assert_eq!(
        set(&search(&app, "docs", "programming*", "").await),
        ["prog1", "prog2"]
    );
    // Exclusions and OR.
    assert_eq!(set(&search(&app, "docs", "cats -dogs", "").await), ["pet2"]);
    assert_eq!(
        set(&search(&app, "docs", "zebra OR giraffe", "").await),
        ["zoo1", "zoo2"]
    );
    // Weights: the title (A) outranks the body (D), and scores say so.
    let r = search(&app, "docs", "weightword", "").await;
    assert_eq!(refs(&r), ["w1", "w2"]);
    let (a, b) = (
        r.body["items"][0]["_score"].as_f64().unwrap(),
        r.body["items"][1]["_score"].as_f64().unwrap(),
    );
    assert!(a > b && b > 0.0, "{a} > {b} > 0");
    // Stop words only: no items, not an error.
    let r = search(&app, "docs", "the of and", "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["totalItems"], 0);
    // Counts over the filler, with the filter and paging combined.
    let r = search(&app, "docs", "bravo3", "&perPage=50").await;
    let expected = (0..1988).filter(|n| n % 7 == 3).count();
    assert_eq!(r.body["totalItems"], expected, "{}", r.text);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 50);
    let r = search(&app, "docs", "bravo3 alpha7", "").await;
    let expected = (0..1988).filter(|n| n % 7 == 3 && n % 50 == 7).count();
    assert_eq!(r.body["totalItems"], expected, "{}", r.text);
    let r = search(
        &app,
        "docs",
        "bravo3",
        &format!("&filter={}", q("rank < 200")),
    )
    .await;
    let expected = (0..100).filter(|n| n % 7 == 3).count();
    assert_eq!(r.body["totalItems"], expected, "{}", r.text);
    // An explicit sort replaces relevance; paging is stable and complete.
    let r = search(&app, "docs", "bravo3", "&sort=rank&perPage=10&page=2").await;
    let ranks: Vec<i64> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["rank"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = (0..1988)
        .filter(|n| n % 7 == 3)
        .skip(10)
        .take(10)
        .map(|n| 100 + n)
        .collect();
    assert_eq!(ranks, want);
    let mut seen = std::collections::HashSet::new();
    for page in 1..=3 {
        let r = search(&app, "docs", "alpha7", &format!("&perPage=15&page={page}")).await;
        for id in refs(&r) {
            assert!(
                seen.insert(id),
                "ties are broken by id: no repeats across pages"
            );
        }
    }
    assert_eq!(seen.len(), (0..1988).filter(|n| n % 50 == 7).count());
    // The same query on /v1/search.
    let r = app
        .get(&format!(
            "/v1/search?q={}&collections=docs",
            q("weightword")
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["totalItems"], 2);
    assert_eq!(r.body["page"], 1);
    assert_eq!(r.body["perPage"], 30);
    assert_eq!(r.body["items"][0]["ref"], "w1");
    assert_eq!(r.body["items"][0]["_collection"], "docs");
    assert!(r.body["items"][0]["_score"].as_f64().unwrap() > 0.0);
    app.shutdown().await;
}

#[tokio::test]
async fn rules_apply_to_search_for_users_a_and_b() {
    let app = TestApp::spawn().await;
    let own = "owner = @request.auth.id";
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(json!({"name": "notes", "fields": [
                {"name": "owner", "type": "relation", "collection": "users"},
                {"name": "body", "type": "text", "searchable": true}
            ], "rules": {"list": own, "view": own, "create": "@request.auth.id != ''", "update": own, "delete": own}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    app.collection(json!({"name": "posts", "fields": [
        {"name": "title", "type": "text", "searchable": true}
    ]}))
    .await;
    app.create("posts", json!({"title": "a public secret"}))
        .await;
    let mut tokens = Vec::new();
    for who in ["a@example.com", "b@example.com"] {
        let user = signup(&app, who).await;
        let t = access(&login(&app, who).await);
        let r = bearer(
            &app,
            &t,
            Method::POST,
            "/v1/collections/notes/records",
            Some(json!({"owner": user["id"], "body": format!("secret plan of {who}")})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        tokens.push(t);
    }
    for (t, who) in tokens.iter().zip(["a@example.com", "b@example.com"]) {
        let r = bearer(
            &app,
            t,
            Method::GET,
            "/v1/collections/notes/records?search=secret",
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["totalItems"], 1, "{}", r.text);
        assert!(r.body["items"][0]["body"].as_str().unwrap().contains(who));
        // Across collections: the public post and the caller's own note only.
        let r = bearer(
            &app,
            t,
            Method::GET,
            "/v1/search?q=secret&collections=notes,posts",
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["totalItems"], 2, "{}", r.text);
        let bodies: Vec<String> = r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{}/{}",
                    i["_collection"].as_str().unwrap(),
                    i["body"].as_str().or(i["title"].as_str()).unwrap()
                )
            })
            .collect();
        assert!(
            bodies
                .iter()
                .any(|b| b == &format!("notes/secret plan of {who}")),
            "{bodies:?}"
        );
        assert!(
            bodies.iter().any(|b| b == "posts/a public secret"),
            "{bodies:?}"
        );
    }
    // Anonymous: the notes' list rule refuses it, so they contribute nothing.
    let r = app.get("/v1/search?q=secret").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["totalItems"], 1, "{}", r.text);
    assert_eq!(r.body["items"][0]["_collection"], "posts");
    let r = app.get("/v1/collections/notes/records?search=secret").await;
    assert_eq!(r.body["totalItems"].as_i64().unwrap_or(0), 0, "{}", r.text);
    // An unknown collection is 404; one without searchable fields is a 400.
    let r = app.get("/v1/search?q=secret&collections=posts,nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    app.collection(json!({"name": "plain", "fields": [{"name": "x", "type": "text"}]}))
        .await;
    let r = app.get("/v1/search?q=secret&collections=plain").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.field_error("collections"), Some("not_searchable"));
    let r = app.get("/v1/collections/plain/records?search=x").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.field_error("search"), Some("not_searchable"));
    app.shutdown().await;
}

#[tokio::test]
async fn the_index_follows_every_write() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "items", "fields": [
        {"name": "ref", "type": "text"},
        {"name": "name", "type": "text", "searchable": true}
    ]}))
    .await;
    let a = app
        .create("items", json!({"ref": "a", "name": "copper kettle"}))
        .await;
    assert_eq!(count(&app, "kettle").await, 1);
    // An update replaces the old words.
    let r = app
        .json(
            Method::PATCH,
            &format!(
                "/v1/collections/items/records/{}",
                a["id"].as_str().unwrap()
            ),
            json!({"name": "iron skillet"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(count(&app, "kettle").await, 0);
    assert_eq!(count(&app, "skillet").await, 1);
    // A delete removes it.
    let r = app
        .req(
            Method::DELETE,
            &format!(
                "/v1/collections/items/records/{}",
                a["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(count(&app, "skillet").await, 0);
    // A batch, and a refused batch that leaves nothing in the index.
    batch_create(
        &app,
        "items",
        &[json!({"name": "teapot one"}), json!({"name": "teapot two"})],
    )
    .await;
    assert_eq!(count(&app, "teapot").await, 2);
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": [
                {"method": "POST", "path": "/v1/collections/items/records", "body": {"name": "ghostly saucer"}},
                {"method": "POST", "path": "/v1/collections/items/records", "body": {"name": 5}}
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(count(&app, "saucer").await, 0);
    // An import.
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/items/import?mode=atomic")
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/x-ndjson")
                .body("{\"name\":\"imported ladle\"}\n{\"name\":\"imported whisk\"}\n"),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let href = r.header("location").unwrap().to_owned();
    job_done(&app, &href).await;
    assert_eq!(count(&app, "imported").await, 2);
    assert_eq!(count(&app, "ladle").await, 1);
    // Highlights: matched words marked, stored markup escaped.
    app.create(
        "items",
        json!({"name": "<script>alert(1)</script> needle & <b>thread</b>"}),
    )
    .await;
    let r = search(&app, "items", "needle thread", "&highlight=1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["items"][0]["_highlight"]["name"],
        "&lt;script&gt;alert(1)&lt;/script&gt; <mark>needle</mark> &amp; &lt;b&gt;<mark>thread</mark>&lt;/b&gt;"
    );
    // Search lists are revalidated like any list.
    let etag = r.header("etag").unwrap().to_owned();
    assert_eq!(r.header("cache-control"), Some("private, no-cache"));
    assert_eq!(r.header("vary"), Some("Authorization, Cookie"));
    let again = app
        .send(
            app.req(
                Method::GET,
                "/v1/collections/items/records?search=needle%20thread&highlight=1",
            )
            .header("if-none-match", &etag),
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    app.shutdown().await;
}

async fn count(app: &TestApp, word: &str) -> i64 {
    let r = app
        .get(&format!("/v1/collections/items/records?search={word}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["totalItems"].as_i64().unwrap()
}

async fn job_done(app: &TestApp, href: &str) -> Value {
    for _ in 0..600 {
        let r = app.admin(Method::GET, href, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        match r.body["status"].as_str() {
            Some("succeeded") => return r.body,
            Some("dead" | "cancelled") => panic!("job failed: {}", r.text),
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    panic!("job never finished")
}

#[tokio::test]
async fn malformed_queries_and_options_are_refused() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "posts", "fields": [
        {"name": "title", "type": "text", "searchable": true}
    ]}))
    .await;
    for (query, position) in [
        ("cat \"dog", 4),
        ("cat - dog", 4),
        ("OR cat", 0),
        ("cat OR", 4),
        ("-cat", 0),
    ] {
        let r = search(&app, "posts", query, "").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text);
        assert_eq!(r.problem_code(), "invalid_search", "{query}");
        assert_eq!(r.field_error("search"), Some("invalid_search"), "{query}");
        assert_eq!(r.body["errors"]["search"]["position"], position, "{query}");
        assert_eq!(r.body["position"], position, "{query}");
        let r = app.get(&format!("/v1/search?q={}", q(query))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text);
        assert_eq!(r.field_error("q"), Some("invalid_search"), "{query}");
    }
    let long = "a".repeat(513);
    assert_eq!(search(&app, "posts", &long, "").await.body["position"], 512);
    let many: Vec<String> = (0..33).map(|i| format!("w{i}")).collect();
    let r = search(&app, "posts", &many.join(" "), "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.problem_code(), "invalid_search");
    let r = app.get("/v1/search").await;
    assert_eq!(r.field_error("q"), Some("invalid_search"), "{}", r.text);
    let r = app.get("/v1/search?q=x&perPage=100&page=6").await;
    assert_eq!(r.field_error("page"), Some("too_deep"), "{}", r.text);
    let r = search(&app, "posts", "cat", "&cursor=").await;
    assert_eq!(
        r.field_error("cursor"),
        Some("invalid_cursor"),
        "{}",
        r.text
    );
    // Field options: only text, never hidden, weights A-D, known languages.
    for (field, key) in [
        (
            json!({"name": "n", "type": "number", "searchable": true}),
            "searchable",
        ),
        (
            json!({"name": "n", "type": "text", "searchable": true, "hidden": true}),
            "searchable",
        ),
        (
            json!({"name": "n", "type": "text", "searchable": true, "weight": "E"}),
            "weight",
        ),
        (
            json!({"name": "n", "type": "text", "searchable": true, "language": "klingon"}),
            "language",
        ),
        (
            json!({"name": "n", "type": "text", "weight": "A"}),
            "weight",
        ),
    ] {
        let r = app
            .admin(
                Method::POST,
                "/v1/collections",
                Some(json!({"name": "bad", "fields": [field]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {}", r.text);
        assert!(
            r.body["errors"]
                .as_object()
                .unwrap()
                .keys()
                .any(|k| k.ends_with(key)),
            "{field}: {}",
            r.text
        );
    }
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(json!({"name": "bad", "searchLanguage": "klingon", "fields": []})),
        )
        .await;
    assert_eq!(
        r.field_error("searchLanguage"),
        Some("invalid"),
        "{}",
        r.text
    );
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/posts",
            Some(json!({"updateFields": [{"name": "title", "weight": "Z"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/posts",
            Some(json!({"updateFields": [{"name": "nope", "searchable": true}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn marking_fields_searchable_rebuilds_the_index() {
    let app = TestApp::spawn().await;
    app.collection(
        json!({"name": "books", "searchLanguage": "simple", "fields": [
            {"name": "title", "type": "text"},
            {"name": "blurb", "type": "text"}
        ]}),
    )
    .await;
    let docs: Vec<Value> = (0..1200)
        .map(|i| json!({"title": format!("volume {i}"), "blurb": if i == 7 { "a rare gem" } else { "common stuff" }}))
        .collect();
    batch_create(&app, "books", &docs).await;
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/books",
            Some(json!({"updateFields": [
                {"name": "title", "searchable": true, "weight": "A"},
                {"name": "blurb", "searchable": true, "weight": "B"}
            ]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let href = r.header("location").unwrap().to_owned();
    assert!(href.starts_with("/v1/jobs/"), "{href}");
    assert_eq!(r.body["fields"][0]["searchable"], true);
    // Written while the job runs (or before it starts): indexed by the write itself.
    app.create(
        "books",
        json!({"title": "fresh volume", "blurb": "rare too"}),
    )
    .await;
    let done = job_done(&app, &href).await;
    assert!(
        done["result"]["indexed"].as_u64().unwrap() >= 1200,
        "{done}"
    );
    let r = search(&app, "books", "rare", "").await;
    assert_eq!(r.body["totalItems"], 2, "{}", r.text);
    let r = search(&app, "books", "volume", "&perPage=1").await;
    assert_eq!(r.body["totalItems"], 1201, "{}", r.text);
    // `simple`: no stemming, stop words kept.
    assert_eq!(search(&app, "books", "a", "").await.body["totalItems"], 1);
    // A new weight changes what the old rows hold: another rebuild.
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/books",
            Some(json!({"updateFields": [{"name": "blurb", "weight": "C"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    job_done(&app, r.header("location").unwrap()).await;
    // Adding a new searchable field needs none (old records have no value there).
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/books",
            Some(json!({"addFields": [{"name": "notes", "type": "text", "searchable": true}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.create("books", json!({"title": "x", "notes": "marginalia"}))
        .await;
    assert_eq!(
        search(&app, "books", "marginalia", "").await.body["totalItems"],
        1
    );
    // Unmarking every field drops the index; searching is then refused.
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/books",
            Some(json!({"updateFields": [
                {"name": "title", "searchable": false},
                {"name": "blurb", "searchable": false},
                {"name": "notes", "searchable": false}
            ]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["fields"][0].get("weight"), None);
    let r = search(&app, "books", "rare", "").await;
    assert_eq!(
        r.field_error("search"),
        Some("not_searchable"),
        "{}",
        r.text
    );
    // Writes still work without the index, and dropping the collection works.
    app.create("books", json!({"title": "after"})).await;
    let r = app
        .admin(Method::DELETE, "/v1/collections/books", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn a_phrase_never_spans_two_fields() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "cards", "fields": [
        {"name": "front", "type": "text", "searchable": true},
        {"name": "back", "type": "text", "searchable": true}
    ]}))
    .await;
    app.create("cards", json!({"front": "the end", "back": "game over"}))
        .await;
    assert_eq!(
        search(&app, "cards", "end game", "").await.body["totalItems"],
        1
    );
    assert_eq!(
        search(&app, "cards", "\"end game\"", "").await.body["totalItems"],
        0
    );
    assert_eq!(
        search(&app, "cards", "\"game over\"", "").await.body["totalItems"],
        1
    );
    // An empty sort still means by relevance.
    let r = search(&app, "cards", "game", "&sort=").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn a_search_change_applied_by_a_migration_file_is_indexed_at_start() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "books", "fields": [{"name": "title", "type": "text"}]}))
        .await;
    for t in ["moby dick", "dick tracy", "emma"] {
        app.create("books", json!({"title": t})).await;
    }
    let dir = app.stop_keep_dir().await;
    std::fs::write(
        dir.path().join("migrations").join("99999999999999999_search.json"),
        r#"{"version":"99999999999999999","name":"search","up":[{"op":"alterCollection","name":"books","updateFields":[{"name":"title","searchable":true}]}]}"#,
    )
    .unwrap();
    let cfg = crate::common::config(dir.path()).await;
    let app = TestApp::start_in(dir, cfg).await;
    let mut found = 0;
    for _ in 0..200 {
        found = search(&app, "books", "dick", "").await.body["totalItems"]
            .as_i64()
            .unwrap_or(0);
        if found == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        found, 2,
        "the rebuild queued at start-up indexed the old records"
    );
    app.shutdown().await;
}
