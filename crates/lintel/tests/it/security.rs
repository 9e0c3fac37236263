//! Regression tests for the attacks an outside security review made work (issue 9):
//! each test is an attack that used to succeed, and now must fail. They run on both
//! stores like the rest of the suite.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{
    PW, Reply, TestApp, access, api_key, bearer, login, notes, signup, superuser_token,
};

async fn cookie_login(app: &TestApp, email: &str) -> (String, String, Reply) {
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": email, "password": PW, "mode": "cookie"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let cookie = set_cookie(&r, "lintel_session")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = r.body["csrfToken"].as_str().unwrap().to_owned();
    (cookie, csrf, r)
}

fn set_cookie<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
}

// Item 2: a missing or null operand never satisfies `=` in a rule.
#[tokio::test]
async fn a_missing_body_value_does_not_equal_an_anonymous_callers_id() {
    let app = TestApp::spawn().await;
    app.collection(json!({
        "name": "owned",
        "fields": [{"name": "owner", "type": "text"}, {"name": "title", "type": "text"}],
        "rules": {
            "list": "@request.auth.id != \"\"",
            "view": "@request.auth.id != \"\"",
            "create": "@request.body.owner = @request.auth.id",
        }
    }))
    .await;
    // Anonymous, no owner: null = null used to let this through.
    let r = app
        .json(
            Method::POST,
            "/v1/collections/owned/records",
            json!({"title": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // An explicit null owner is no better.
    let r = app
        .json(
            Method::POST,
            "/v1/collections/owned/records",
            json!({"title": "x", "owner": null}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // `@request.auth.id != ""` is false for an anonymous caller.
    let r = app.get("/v1/collections/owned/records").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let signed_in = app
        .admin(
            Method::POST,
            "/v1/collections/owned/records",
            Some(json!({"title": "by admin"})),
        )
        .await;
    assert_eq!(signed_in.status, StatusCode::CREATED, "{}", signed_in.text);
    let r = app.get("/v1/collections/owned/records").await;
    assert_eq!(r.body["items"], json!([]), "{}", r.text);
    let id = signed_in.body["id"].as_str().unwrap();
    let r = app
        .get(&format!("/v1/collections/owned/records/{id}"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    // A signed-in user who names themself is let in.
    let u = signup(&app, "u@example.com").await;
    let t = access(&login(&app, "u@example.com").await);
    let r = bearer(
        &app,
        &t,
        Method::POST,
        "/v1/collections/owned/records",
        Some(json!({"title": "mine", "owner": u["id"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = bearer(&app, &t, Method::GET, "/v1/collections/owned/records", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2, "{}", r.text);
    app.shutdown().await;
}

// `= null` is the explicit test for "no value"; two null fields are not equal.
#[tokio::test]
async fn null_tests_and_null_fields_follow_the_truth_table() {
    let app = TestApp::spawn().await;
    app.collection(json!({
        "name": "pairs",
        "fields": [{"name": "a", "type": "text"}, {"name": "b", "type": "text"}],
    }))
    .await;
    app.create("pairs", json!({})).await;
    app.create("pairs", json!({"a": "x"})).await;
    app.create("pairs", json!({"a": "x", "b": "x"})).await;
    app.create("pairs", json!({"a": "y", "b": "x"})).await;
    let count = |filter: &'static str| {
        let app = &app;
        async move {
            let r = app
                .send(
                    app.req(Method::GET, "/v1/collections/pairs/records")
                        .query(&[("filter", filter)]),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{filter}: {}", r.text);
            r.body["items"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("a = b").await, 1, "two nulls are not equal");
    assert_eq!(count("a != b").await, 2, "a null differs from a value");
    assert_eq!(count("a = null").await, 1);
    assert_eq!(count("a != null").await, 3);
    assert_eq!(count("b != \"x\"").await, 2, "null differs from \"x\"");
    // A missing request value: every comparison is false, except `= null`.
    assert_eq!(count("a != @request.auth.id").await, 0);
    assert_eq!(count("a = @request.auth.id").await, 0);
    assert_eq!(count("@request.auth.id = null").await, 4);
    app.shutdown().await;
}

// Item 11: the update rule also holds for the record as it will be.
#[tokio::test]
async fn an_update_cannot_move_a_record_into_someone_elses_ownership() {
    let app = TestApp::spawn().await;
    notes(&app).await;
    let a = signup(&app, "a@example.com").await;
    let b = signup(&app, "b@example.com").await;
    let tb = access(&login(&app, "b@example.com").await);
    let r = bearer(
        &app,
        &tb,
        Method::POST,
        "/v1/collections/notes/records",
        Some(json!({"owner": b["id"], "title": "b's"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let note = r.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/collections/notes/records/{note}");
    let r = bearer(
        &app,
        &tb,
        Method::PATCH,
        &path,
        Some(json!({"owner": a["id"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.problem_code(), "forbidden");
    let r = bearer(
        &app,
        &tb,
        Method::PUT,
        &path,
        Some(json!({"owner": a["id"], "title": "b's"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // The same move inside a batch is refused too, and nothing is applied.
    let r = bearer(
        &app,
        &tb,
        Method::POST,
        "/v1/batch",
        Some(json!({"operations": [
            {"method": "PATCH", "path": path, "body": {"owner": a["id"]}}
        ]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app.admin(Method::GET, &path, None).await;
    assert_eq!(r.body["owner"], b["id"], "{}", r.text);
    // Changes that keep the owner go through.
    let r = bearer(
        &app,
        &tb,
        Method::PATCH,
        &path,
        Some(json!({"title": "still b's"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;
}

// Item 10: relations can neither be expanded through a hidden field nor point at
// records the writer cannot see.
#[tokio::test]
async fn relations_reveal_nothing_the_caller_cannot_see() {
    let app = TestApp::spawn().await;
    notes(&app).await;
    app.collection(json!({
        "name": "links",
        "fields": [
            {"name": "note", "type": "relation", "collection": "notes"},
            {"name": "secret", "type": "relation", "collection": "notes", "hidden": true},
        ],
        "rules": {"list": "", "view": "", "create": "@request.auth.id != \"\"", "update": ""}
    }))
    .await;
    let a = signup(&app, "a@example.com").await;
    let b = signup(&app, "b@example.com").await;
    let ta = access(&login(&app, "a@example.com").await);
    let tb = access(&login(&app, "b@example.com").await);
    let r = bearer(
        &app,
        &ta,
        Method::POST,
        "/v1/collections/notes/records",
        Some(json!({"owner": a["id"], "title": "a's private note"})),
    )
    .await;
    let private_note = r.body["id"].as_str().unwrap().to_owned();
    let r = bearer(
        &app,
        &tb,
        Method::POST,
        "/v1/collections/notes/records",
        Some(json!({"owner": b["id"], "title": "b's note"})),
    )
    .await;
    let b_note = r.body["id"].as_str().unwrap().to_owned();
    // B cannot point at A's private note: refused exactly like an id that is not there.
    let refused = bearer(
        &app,
        &tb,
        Method::POST,
        "/v1/collections/links/records",
        Some(json!({"note": private_note})),
    )
    .await;
    let missing = bearer(
        &app,
        &tb,
        Method::POST,
        "/v1/collections/links/records",
        Some(json!({"note": "zzzzzzzzzzzzzzz"})),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert_eq!(refused.field_error("note"), Some("relation_not_found"));
    assert_eq!(refused.status, missing.status);
    assert_eq!(refused.body["errors"], missing.body["errors"]);
    // Its own note is fine.
    let r = bearer(
        &app,
        &tb,
        Method::POST,
        "/v1/collections/links/records",
        Some(json!({"note": b_note})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let link = r.body["id"].as_str().unwrap().to_owned();
    // A superuser sets the hidden relation; nobody can expand it.
    let r = app
        .admin(
            Method::PATCH,
            &format!("/v1/collections/links/records/{link}"),
            Some(json!({"secret": private_note})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for path in [
        format!("/v1/collections/links/records/{link}?expand=secret"),
        "/v1/collections/links/records?expand=secret".to_owned(),
    ] {
        let r = bearer(&app, &tb, Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text);
        assert_eq!(r.field_error("expand"), Some("invalid_expand"));
        assert!(!r.text.contains("private note"), "{}", r.text);
    }
    // A record B already links to stays linked when B changes something else.
    let r = bearer(
        &app,
        &tb,
        Method::PATCH,
        &format!("/v1/collections/links/records/{link}"),
        Some(json!({"note": b_note})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;
}

// Item 3: an ended session cookie does not lock anyone out.
#[tokio::test]
async fn a_stale_session_cookie_is_ignored_cleared_and_replaced() {
    let app = TestApp::spawn().await;
    app.posts().await;
    signup(&app, "a@example.com").await;
    let (cookie, csrf, r) = cookie_login(&app, "a@example.com").await;
    // The cookie lives as long as the session can: the idle expiry (2 h by default)
    // comes before the absolute one (7 days).
    let session = set_cookie(&r, "lintel_session").unwrap();
    assert!(session.contains("Max-Age=7200"), "{session}");
    let r = app
        .send(
            app.req(Method::POST, "/v1/auth/logout")
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    // A route that does not need the cookie answers as for anyone, and clears it.
    let r = app
        .send(
            app.req(Method::GET, "/v1/collections/posts/records")
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let cleared = set_cookie(&r, "lintel_session").expect("the stale cookie is cleared");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // Sign-up works with the stale cookie.
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/users/records")
                .header("cookie", &cookie)
                .json(&json!({"email": "b@example.com", "password": PW})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // Sign-in works and replaces it.
    let r = app
        .send(
            app.req(Method::POST, "/v1/auth/login")
                .header("cookie", &cookie)
                .json(&json!({"email": "a@example.com", "password": PW, "mode": "cookie"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let fresh = set_cookie(&r, "lintel_session").unwrap();
    assert!(!fresh.contains("Max-Age=0"), "{fresh}");
    assert_eq!(
        r.headers
            .get_all("set-cookie")
            .iter()
            .filter(|v| v.to_str().unwrap().starts_with("lintel_session="))
            .count(),
        1,
        "only the new session's cookie is set"
    );
    let fresh = fresh.split(';').next().unwrap();
    let me = app
        .send(app.req(Method::GET, "/v1/auth/me").header("cookie", fresh))
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    // A route that needs an account still says so.
    let me = app
        .send(
            app.req(Method::GET, "/v1/auth/me")
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{}", me.text);
    app.shutdown().await;
}

// Item 4: a batch is checked whole before any password is hashed, and hashing counts
// against the address's `auth` budget.
#[tokio::test]
async fn batched_signups_are_checked_first_and_spend_the_auth_budget() {
    let app = TestApp::spawn_with(|c| {
        for r in &mut c.rate_limit.rules {
            if r.name == "auth" {
                r.limit = 5;
            }
        }
    })
    .await;
    let signups = |n: usize, tag: &str| -> Vec<Value> {
        (0..n)
            .map(|i| {
                json!({"method": "POST", "path": "/v1/collections/users/records",
                       "body": {"email": format!("{tag}{i}@example.com"), "password": PW}})
            })
            .collect()
    };
    // 20 sign-ups and one bad operation: refused at validation, nothing hashed.
    let mut ops = signups(20, "bad");
    ops.push(json!({"method": "POST", "path": "/v1/collections/nope/records", "body": {}}));
    let r = app
        .json(Method::POST, "/v1/batch", json!({"operations": ops}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.body["failedOperation"], 20);
    // So the budget is untouched: 5 sign-ups in one batch pass...
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": signups(5, "ok")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // ...and past it, sign-up is refused before any hashing, in a batch or alone.
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": signups(3, "over")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert!(r.header("retry-after").is_some());
    let r = app
        .json(
            Method::POST,
            "/v1/collections/users/records",
            json!({"email": "single@example.com", "password": PW}),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    let r = app
        .admin(
            Method::GET,
            "/v1/collections/users/records?filter=email~\"over\"",
            None,
        )
        .await;
    assert_eq!(r.body["items"], json!([]), "{}", r.text);
    app.shutdown().await;
}

// Item 6: idempotency keys belong to one caller, and token routes are never replayed.
#[tokio::test]
async fn idempotency_keys_never_replay_another_callers_response() {
    let app = TestApp::spawn().await;
    notes(&app).await;
    let a = signup(&app, "a@example.com").await;
    let (cookie, csrf, _) = cookie_login(&app, "a@example.com").await;
    let body = json!({"owner": a["id"], "title": "a's secret"});
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/notes/records")
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .header("idempotency-key", "k1")
                .json(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // An anonymous caller with the same key and body does not get A's response.
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/notes/records")
                .header("idempotency-key", "k1")
                .json(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert!(r.header("idempotent-replayed").is_none());
    assert!(!r.text.contains("a's secret"));
    // A bad credential is refused before anything is replayed.
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/notes/records")
                .bearer_auth("not-a-token")
                .header("idempotency-key", "k1")
                .json(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // The same caller gets its replay.
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/notes/records")
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .header("idempotency-key", "k1")
                .json(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.header("idempotent-replayed"), Some("true"));

    // A refresh replayed under one key is a second use of the token: reuse detection
    // revokes the family instead of handing out the same pair again.
    let l = login(&app, "a@example.com").await;
    let refresh = || {
        app.req(Method::POST, "/v1/auth/refresh")
            .header("idempotency-key", "r1")
            .json(&json!({"refreshToken": l["refreshToken"]}))
    };
    let first = app.send(refresh()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let second = app.send(refresh()).await;
    assert_eq!(second.status, StatusCode::UNAUTHORIZED, "{}", second.text);
    assert_eq!(second.problem_code(), "invalid_refresh_token");
    let r = bearer(
        &app,
        first.body["accessToken"].as_str().unwrap(),
        Method::GET,
        "/v1/auth/me",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the family is revoked");
    app.shutdown().await;
}

// Item 7: scopes bind every route, admin ones included.
#[tokio::test]
async fn api_key_scopes_bind_admin_and_account_routes() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let root = superuser_token(&app).await;
    let narrow = api_key(&app, &root, json!(["posts:read"])).await;
    let r = bearer(&app, &narrow, Method::GET, "/v1/collections", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.problem_code(), "insufficient_scope");
    let r = bearer(&app, &narrow, Method::GET, "/v1/audit", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = bearer(
        &app,
        &narrow,
        Method::GET,
        "/v1/collections/posts/records",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // `*` in a record scope does not reach admin areas.
    let wide = api_key(&app, &root, json!(["*:*"])).await;
    let r = bearer(&app, &wide, Method::DELETE, "/v1/collections/posts", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // Admin scopes: read is not write.
    let reader = api_key(&app, &root, json!(["collections:read", "audit:read"])).await;
    let r = bearer(&app, &reader, Method::GET, "/v1/collections", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = bearer(&app, &reader, Method::GET, "/v1/audit", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = bearer(&app, &reader, Method::DELETE, "/v1/collections/posts", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let writer = api_key(&app, &root, json!(["collections:write"])).await;
    let r = bearer(&app, &writer, Method::DELETE, "/v1/collections/posts", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    // A user's key cannot hold admin scopes at all.
    signup(&app, "u@example.com").await;
    let user = access(&login(&app, "u@example.com").await);
    let r = bearer(
        &app,
        &user,
        Method::POST,
        "/v1/auth/api-keys",
        Some(json!({"name": "k", "scopes": ["collections:write"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // No key, however wide, manages its owner's sessions.
    let key = api_key(&app, &user, json!(["*:*"])).await;
    for (method, path) in [
        (Method::GET, "/v1/auth/sessions"),
        (Method::DELETE, "/v1/auth/sessions/abc"),
        (Method::POST, "/v1/auth/logout-all"),
    ] {
        let r = bearer(&app, &key, method, path, None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text);
        assert_eq!(r.problem_code(), "api_key_not_allowed");
    }
    let r = bearer(&app, &user, Method::GET, "/v1/auth/sessions", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.text);
    app.shutdown().await;
}

// Item 8: a new password revokes sessions, refresh families and API keys.
#[tokio::test]
async fn a_password_change_revokes_api_keys_unless_kept() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let u = signup(&app, "u@example.com").await;
    let path = format!(
        "/v1/collections/users/records/{}",
        u["id"].as_str().unwrap()
    );
    let l = login(&app, "u@example.com").await;
    let key = api_key(&app, &access(&l), json!(["posts:read"])).await;
    let r = bearer(
        &app,
        &key,
        Method::GET,
        "/v1/collections/posts/records",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Kept on request.
    let r = bearer(
        &app,
        &access(&l),
        Method::PATCH,
        &path,
        Some(json!({"password": "a new horse battery", "oldPassword": PW, "keepApiKeys": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.body.get("keepApiKeys").is_none());
    let r = bearer(
        &app,
        &key,
        Method::GET,
        "/v1/collections/posts/records",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "the key was kept: {}", r.text);
    let r = bearer(&app, &access(&l), Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "sessions end anyway");
    // By default the keys go with the old password.
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "u@example.com", "password": "a new horse battery"}),
        )
        .await;
    let t = access(&r.body);
    let r = bearer(
        &app,
        &t,
        Method::PATCH,
        &path,
        Some(json!({"password": PW, "oldPassword": "a new horse battery"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = bearer(
        &app,
        &key,
        Method::GET,
        "/v1/collections/posts/records",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": l["refreshToken"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    app.shutdown().await;
}

// Item 13: a copy of the database cannot mint or use tokens.
#[tokio::test]
async fn the_database_holds_no_usable_session_secret_or_signing_key() {
    let app = TestApp::spawn().await;
    signup(&app, "u@example.com").await;
    let l = login(&app, "u@example.com").await;
    let jwt = access(&l);
    let payload = jwt.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let sid = claims["sid"].as_str().unwrap().to_owned();
    let refresh = l["refreshToken"].as_str().unwrap().to_owned();
    let store = app.running().state.store.clone();
    let mut sql = lintel::store::Sql::new(store.dialect());
    sql.push("SELECT id FROM _lintel_sessions");
    let ids: Vec<String> = store
        .query_rows(sql)
        .await
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![lintel::auth::tokens::digest(&sid)]);
    let mut sql = lintel::store::Sql::new(store.dialect());
    sql.push("SELECT hash FROM _lintel_refresh_tokens");
    let rows = store.query_rows(sql).await.unwrap();
    assert!(rows.iter().all(|r| r[0].as_str() != Some(&refresh)));
    let mut sql = lintel::store::Sql::new(store.dialect());
    sql.push("SELECT name FROM _lintel_secrets");
    let secrets = store.query_rows(sql).await.unwrap();
    if crate::common::postgres_url().is_none() {
        use std::os::unix::fs::PermissionsExt;
        assert!(secrets.is_empty(), "the signing key is not in the database");
        let dir = app.dir.path();
        for f in ["data.db", "jwt-secret"] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{f} is private: {mode:o}");
        }
    }
    // The refreshed pair still works.
    let r = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": refresh}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = bearer(&app, &access(&r.body), Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;
}

// A signing key an earlier version kept in the database moves to the key file, so
// tokens issued before the upgrade stay valid.
#[tokio::test]
async fn a_signing_key_in_an_old_database_moves_to_the_key_file() {
    if crate::common::postgres_url().is_some() {
        return; // PostgreSQL keeps the shared key in the database by design.
    }
    let app = TestApp::spawn().await;
    signup(&app, "u@example.com").await;
    let jwt = access(&login(&app, "u@example.com").await);
    let key = std::fs::read_to_string(app.dir.path().join("jwt-secret")).unwrap();
    let store = app.running().state.store.clone();
    let mut sql = lintel::store::Sql::new(store.dialect());
    sql.push("INSERT INTO _lintel_secrets (name, value) VALUES ('jwt_hs256', ")
        .bind(lintel::store::SqlValue::Text(key.trim().to_owned()))
        .push(")");
    store
        .write(vec![lintel::store::WriteOp::System {
            sql,
            expect: Some(1),
        }])
        .await
        .unwrap();
    let dir = app.stop_keep_dir().await;
    std::fs::remove_file(dir.path().join("jwt-secret")).unwrap();
    let cfg = crate::common::config(dir.path()).await;
    let app = TestApp::start_in(dir, cfg).await;
    let r = bearer(&app, &jwt, Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let moved = std::fs::read_to_string(app.dir.path().join("jwt-secret")).unwrap();
    assert_eq!(moved.trim(), key.trim());
    let store = app.running().state.store.clone();
    let mut sql = lintel::store::Sql::new(store.dialect());
    sql.push("SELECT name FROM _lintel_secrets");
    assert!(store.query_rows(sql).await.unwrap().is_empty());
    app.shutdown().await;
}

// `/metrics` is not open to anyone: admin, superuser key with `metrics:read`, the
// scraper token, or a separate listener.
#[tokio::test]
async fn metrics_need_a_credential_or_their_own_listener() {
    const SCRAPER: &str = "scraper-token-0123456789abcdef0123456789";
    let app = TestApp::spawn_with(|c| {
        c.metrics.token = lintel::config::Secret(SCRAPER.into());
    })
    .await;
    app.posts().await;
    let r = app.get("/metrics").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert!(!r.text.contains("lintel_http"), "{}", r.text);
    let r = bearer(&app, "wrong-token", Method::GET, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    signup(&app, "u@example.com").await;
    let user = access(&login(&app, "u@example.com").await);
    let r = bearer(&app, &user, Method::GET, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = bearer(&app, SCRAPER, Method::GET, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.text.contains("lintel_http"), "{}", r.text);
    let r = app.admin(Method::GET, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let root = superuser_token(&app).await;
    let posts = api_key(&app, &root, json!(["posts:read"])).await;
    let r = bearer(&app, &posts, Method::GET, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let scraper_key = api_key(&app, &root, json!(["metrics:read"])).await;
    let r = bearer(&app, &scraper_key, Method::GET, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;

    // On a listener of their own, metrics leave the API listener.
    let app = TestApp::spawn_with(|c| c.metrics.listen = "127.0.0.1:0".into()).await;
    let r = app.admin(Method::GET, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let addr = app.running().metrics_addr.expect("a metrics listener");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("lintel_"), "{text}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_short_metrics_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path()).await;
    cfg.metrics.token = lintel::config::Secret("short".into());
    let err = lintel::start(cfg).await.err().expect("refused");
    assert!(err.to_string().contains("metrics.token"), "{err}");
}

// Item 10: what a delete does to the records that name it is the relation's policy;
// an owner is not blocked by references made through records they cannot see.
#[tokio::test]
async fn deletes_follow_each_relations_policy() {
    let app = TestApp::spawn().await;
    notes(&app).await;
    app.collection(json!({
        "name": "comments",
        "fields": [
            {"name": "note", "type": "relation", "collection": "notes"},
            {"name": "text", "type": "text"}
        ],
        "rules": {"list": "", "view": "", "create": "@request.auth.id != \"\""}
    }))
    .await;
    let a = signup(&app, "a@example.com").await;
    signup(&app, "b@example.com").await;
    let ta = access(&login(&app, "a@example.com").await);
    let tb = access(&login(&app, "b@example.com").await);
    let r = bearer(
        &app,
        &ta,
        Method::POST,
        "/v1/collections/notes/records",
        Some(json!({"owner": a["id"], "title": "public", "private": false})),
    )
    .await;
    let note = r.body["id"].as_str().unwrap().to_owned();
    let r = bearer(
        &app,
        &tb,
        Method::POST,
        "/v1/collections/comments/records",
        Some(json!({"note": note, "text": "b was here"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let comment = r.body["id"].as_str().unwrap().to_owned();
    // A makes the note private again and deletes it: B's comment does not block it
    // (comments.note is optional, so its reference is removed).
    let path = format!("/v1/collections/notes/records/{note}");
    let r = bearer(
        &app,
        &ta,
        Method::PATCH,
        &path,
        Some(json!({"private": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = bearer(&app, &ta, Method::DELETE, &path, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app
        .get(&format!("/v1/collections/comments/records/{comment}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["note"], Value::Null, "{}", r.text);
    assert_eq!(
        r.body["version"], 2,
        "the unlink is a new version: {}",
        r.text
    );
    app.shutdown().await;
}

#[tokio::test]
async fn restrict_set_null_and_cascade_on_both_kinds_of_relation() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "folders", "fields": [
        {"name": "name", "type": "text"},
        {"name": "parent", "type": "relation", "collection": "folders", "onDelete": "cascade"}
    ]}))
    .await;
    app.collection(json!({"name": "files", "fields": [
        {"name": "folder", "type": "relation", "collection": "folders", "onDelete": "cascade"},
        {"name": "shared", "type": "relation", "collection": "folders", "multiple": true},
        {"name": "pinned", "type": "relation", "collection": "folders", "onDelete": "restrict"}
    ]}))
    .await;
    let root = app.create("folders", json!({"name": "root"})).await;
    let root = root["id"].as_str().unwrap().to_owned();
    let child = app
        .create("folders", json!({"name": "child", "parent": root}))
        .await;
    let child = child["id"].as_str().unwrap().to_owned();
    let leaf = app
        .create("folders", json!({"name": "leaf", "parent": child}))
        .await;
    let leaf = leaf["id"].as_str().unwrap().to_owned();
    let other = app.create("folders", json!({"name": "other"})).await;
    let other = other["id"].as_str().unwrap().to_owned();
    let in_leaf = app.create("files", json!({"folder": leaf})).await;
    let in_leaf = in_leaf["id"].as_str().unwrap().to_owned();
    let shared = app
        .create("files", json!({"folder": other, "shared": [leaf, other]}))
        .await;
    let shared = shared["id"].as_str().unwrap().to_owned();
    let pinned = app
        .create("files", json!({"folder": other, "pinned": child}))
        .await;
    let pinned = pinned["id"].as_str().unwrap().to_owned();
    let del = |id: &str| {
        let app = &app;
        let id = id.to_owned();
        async move {
            app.send(app.req(
                Method::DELETE,
                &format!("/v1/collections/folders/records/{id}"),
            ))
            .await
        }
    };
    // Restrict anywhere down the cascade refuses the whole delete: nothing changes.
    let r = del(&root).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.problem_code(), "record_referenced");
    let r = app
        .get(&format!("/v1/collections/files/records/{in_leaf}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "rolled back: {}", r.text);
    let r = app
        .get(&format!("/v1/collections/files/records/{shared}"))
        .await;
    assert_eq!(r.body["shared"], json!([leaf, other]), "{}", r.text);
    // Without the pin, the cascade runs down the tree and the multiple relation loses
    // only the deleted id.
    let r = app
        .json(
            Method::PATCH,
            &format!("/v1/collections/files/records/{pinned}"),
            json!({"pinned": null}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = del(&root).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    for (coll, id) in [
        ("folders", &root),
        ("folders", &child),
        ("folders", &leaf),
        ("files", &in_leaf),
    ] {
        let r = app
            .get(&format!("/v1/collections/{coll}/records/{id}"))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{coll}/{id}: {}", r.text);
    }
    let r = app
        .get(&format!("/v1/collections/files/records/{shared}"))
        .await;
    assert_eq!(r.body["shared"], json!([other]), "{}", r.text);
    let r = app.get("/v1/collections/folders/records").await;
    assert_eq!(r.body["totalItems"], 1, "{}", r.text);
    // A self-reference does not loop.
    let selfish = app.create("folders", json!({"name": "self"})).await;
    let selfish = selfish["id"].as_str().unwrap().to_owned();
    let r = app
        .json(
            Method::PATCH,
            &format!("/v1/collections/folders/records/{selfish}"),
            json!({"parent": selfish}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = del(&selfish).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    // Bad policies are refused when the collection is defined.
    for (field, code) in [
        (
            json!({"name": "x", "type": "text", "onDelete": "cascade"}),
            "not_allowed",
        ),
        (
            json!({"name": "x", "type": "relation", "collection": "folders", "required": true, "onDelete": "setNull"}),
            "not_allowed",
        ),
    ] {
        let r = app
            .admin(
                Method::POST,
                "/v1/collections",
                Some(json!({"name": "bad", "fields": [field]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(
            r.field_error("fields[0].onDelete"),
            Some(code),
            "{}",
            r.text
        );
    }
    app.shutdown().await;
}

// Review of the fixes, finding 1: `~` on a JSON array is element membership in the
// per-record check, exactly as in list SQL (never a substring of the array's text).
#[tokio::test]
async fn contains_on_a_json_array_is_membership_in_rules_too() {
    let app = TestApp::spawn().await;
    app.collection(json!({
        "name": "projects",
        "kind": "document",
        "rules": {
            "list": "members ~ @request.auth.email",
            "view": "members ~ @request.auth.email",
            "update": "members ~ @request.auth.email",
            "delete": "members ~ @request.auth.email"
        }
    }))
    .await;
    let r = app
        .admin(
            Method::POST,
            "/v1/collections/projects/records",
            Some(json!({"members": ["tim@corp.com"], "name": "secret"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let path = format!(
        "/v1/collections/projects/records/{}",
        r.body["id"].as_str().unwrap()
    );
    signup(&app, "im@corp.com").await;
    signup(&app, "tim@corp.com").await;
    let near = access(&login(&app, "im@corp.com").await);
    let member = access(&login(&app, "tim@corp.com").await);
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"name": "mine now"}))),
        (Method::DELETE, None),
    ] {
        let r = bearer(&app, &near, method.clone(), &path, body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {}", r.text);
    }
    let r = bearer(
        &app,
        &near,
        Method::GET,
        "/v1/collections/projects/records",
        None,
    )
    .await;
    assert_eq!(r.body["items"], json!([]), "{}", r.text);
    let r = bearer(&app, &member, Method::GET, &path, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = bearer(
        &app,
        &member,
        Method::GET,
        "/v1/collections/projects/records",
        None,
    )
    .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.text);
    app.shutdown().await;
}

// Finding 2: JSON null is no value, and JSON comparisons never cross types, in list
// SQL on both stores as in the per-record check.
#[tokio::test]
async fn json_nulls_and_types_agree_between_lists_and_records() {
    let app = TestApp::spawn().await;
    app.collection(json!({
        "name": "posts_doc",
        "kind": "document",
        "rules": {"list": "publishedAt != null", "view": "publishedAt != null"}
    }))
    .await;
    let mut ids = Vec::new();
    for doc in [
        json!({"publishedAt": null, "priority": null}),
        json!({"publishedAt": "2026-01-01", "priority": "high"}),
        json!({"publishedAt": "2026-01-02", "priority": 1}),
        json!({"publishedAt": "2026-01-03", "priority": true}),
        json!({"priority": 2}),
    ] {
        let r = app
            .admin(Method::POST, "/v1/collections/posts_doc/records", Some(doc))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    // Anyone lists only the published ones, and may view exactly those.
    let r = app.get("/v1/collections/posts_doc/records").await;
    assert_eq!(r.body["totalItems"], 3, "{}", r.text);
    for (i, id) in ids.iter().enumerate() {
        let r = app
            .get(&format!("/v1/collections/posts_doc/records/{id}"))
            .await;
        let want = if (1..=3).contains(&i) {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(r.status, want, "record {i}: {}", r.text);
    }
    let count = |filter: &'static str| {
        let app = &app;
        async move {
            let r = app
                .send(
                    app.req(Method::GET, "/v1/collections/posts_doc/records")
                        .bearer_auth(crate::common::ADMIN_TOKEN)
                        .query(&[("filter", filter)]),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{filter}: {}", r.text);
            r.body["totalItems"].as_i64().unwrap()
        }
    };
    assert_eq!(
        count("priority < 3").await,
        2,
        "numbers only, no null or string"
    );
    assert_eq!(count("priority = 1").await, 1, "not the boolean true");
    assert_eq!(count("priority = true").await, 1);
    assert_eq!(
        count("priority != 1").await,
        4,
        "null, missing and other types differ"
    );
    assert_eq!(
        count("priority = null").await,
        1,
        "JSON null (the missing member is not there at all on one record)"
    );
    assert_eq!(count("priority ~ \"ig\"").await, 1, "strings only");
    assert_eq!(count("priority !~ \"ig\"").await, 4);
    app.shutdown().await;
}

// Finding 3: a password change checks the rule first, and wrong current passwords
// count toward the sign-in lockout.
#[tokio::test]
async fn a_password_change_is_no_password_oracle() {
    let app = TestApp::spawn_with(|c| c.auth.lockout_threshold = 3).await;
    app.admin(
        Method::PATCH,
        "/v1/collections/users",
        Some(json!({"rules": {
            "list": "id = @request.auth.id",
            "view": "@request.auth.id != \"\"",
            "create": "",
            "update": "id = @request.auth.id",
            "delete": "id = @request.auth.id"
        }})),
    )
    .await;
    let victim = signup(&app, "victim@example.com").await;
    let me = signup(&app, "me@example.com").await;
    let t = access(&login(&app, "me@example.com").await);
    let victim_path = format!(
        "/v1/collections/users/records/{}",
        victim["id"].as_str().unwrap()
    );
    // Someone else's account: refused by the rule whatever the guess.
    for guess in ["wrong guess here", PW] {
        let r = bearer(
            &app,
            &t,
            Method::PATCH,
            &victim_path,
            Some(json!({"oldPassword": guess, "password": "Xy9#long-enough-pw"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    }
    // One's own (a stolen token): wrong guesses lock like sign-ins do.
    let my_path = format!(
        "/v1/collections/users/records/{}",
        me["id"].as_str().unwrap()
    );
    for _ in 0..3 {
        let r = bearer(
            &app,
            &t,
            Method::PATCH,
            &my_path,
            Some(json!({"oldPassword": "wrong guess here", "password": "Xy9#long-enough-pw"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.field_error("oldPassword"), Some("invalid"));
    }
    let r = bearer(
        &app,
        &t,
        Method::PATCH,
        &my_path,
        Some(json!({"oldPassword": PW, "password": "Xy9#long-enough-pw"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.problem_code(), "signin_locked");
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "me@example.com", "password": PW}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "sign-in shares the lock"
    );
    app.shutdown().await;
}

// Finding 4: a long cascade chain is bounded and walked without recursion.
#[tokio::test]
async fn cascades_are_bounded_and_deep_chains_do_not_recurse() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "nodes", "fields": [
        {"name": "parent", "type": "relation", "collection": "nodes", "onDelete": "cascade"}
    ]}))
    .await;
    let state = &app.running().state;
    let coll = state.catalog().get("nodes").unwrap();
    let chain = |n: usize| {
        let mut ops = Vec::new();
        let mut parent: Option<String> = None;
        let mut first = String::new();
        for i in 0..n {
            let id = lintel::ids::record_id();
            if i == 0 {
                first = id.clone();
            }
            let mut data = serde_json::Map::new();
            data.insert(
                "parent".into(),
                parent.clone().map_or(Value::Null, Value::String),
            );
            let now = lintel::clock::now();
            ops.push(lintel::store::WriteOp::Insert {
                coll: coll.clone(),
                record: lintel::store::Record {
                    id: id.clone(),
                    created: now.clone(),
                    updated: now,
                    version: 1,
                    data,
                },
            });
            parent = Some(id);
        }
        (first, ops)
    };
    // 1,500 deep: over the bound, refused whole.
    let (top, ops) = chain(1_500);
    state.store.write(ops).await.unwrap();
    let r = app
        .send(app.req(
            Method::DELETE,
            &format!("/v1/collections/nodes/records/{top}"),
        ))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let r = app.get("/v1/collections/nodes/records?perPage=1").await;
    assert_eq!(r.body["totalItems"], 1_500, "nothing deleted: {}", r.text);
    // 900 deep: within it, all gone in one delete (recursion this deep would be
    // thousands of frames on the writer thread).
    let (top, ops) = chain(900);
    state.store.write(ops).await.unwrap();
    let r = app
        .send(app.req(
            Method::DELETE,
            &format!("/v1/collections/nodes/records/{top}"),
        ))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app.get("/v1/collections/nodes/records?perPage=1").await;
    assert_eq!(r.body["totalItems"], 1_500, "{}", r.text);
    app.shutdown().await;
}

// Finding 6: a new collection cannot take an admin area's name, so a scope such as
// `audit:read` never means both the audit log and a collection.
#[tokio::test]
async fn admin_area_names_are_reserved_for_new_collections() {
    let app = TestApp::spawn().await;
    for name in ["audit", "Audit", "types"] {
        let r = app
            .admin(
                Method::POST,
                "/v1/collections",
                Some(json!({"name": name, "fields": [{"name": "x", "type": "text"}]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {}", r.text);
        assert_eq!(r.field_error("name"), Some("invalid_name"));
    }
    app.shutdown().await;
}

// The audit log records each kind of event the README lists, with the request's id:
// sign-ins and failures, refreshes and their reuse, sign-outs and revocations, API
// keys, password changes, rule denials and CSRF rejections.
#[tokio::test]
async fn the_audit_log_records_every_listed_event_with_its_request_id() {
    let app = TestApp::spawn().await;
    notes(&app).await;
    let a = signup(&app, "a@example.com").await;
    let a_path = format!(
        "/v1/collections/users/records/{}",
        a["id"].as_str().unwrap()
    );
    let mut expect: Vec<(&str, String)> = Vec::new();
    let id_of = |r: &Reply| r.header("x-request-id").unwrap().to_owned();
    // login and login_failed
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "a@example.com", "password": "not it at all"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    expect.push(("login_failed", id_of(&r)));
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "a@example.com", "password": PW}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    expect.push(("login", id_of(&r)));
    let first = r.body.clone();
    // token_refreshed, then refresh_token_reused for the same token again
    let r = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": first["refreshToken"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    expect.push(("token_refreshed", id_of(&r)));
    let r = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": first["refreshToken"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    expect.push(("refresh_token_reused", id_of(&r)));
    // refresh_failed for a token nobody issued
    let r = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": "nope.nope"}),
        )
        .await;
    expect.push(("refresh_failed", id_of(&r)));
    // api_key_created / api_key_revoked
    let t = access(&login(&app, "a@example.com").await);
    let r = bearer(
        &app,
        &t,
        Method::POST,
        "/v1/auth/api-keys",
        Some(json!({"name": "k", "scopes": ["notes:read"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    expect.push(("api_key_created", id_of(&r)));
    let key_id = r.body["id"].as_str().unwrap().to_owned();
    let r = bearer(
        &app,
        &t,
        Method::DELETE,
        &format!("/v1/auth/api-keys/{key_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    expect.push(("api_key_revoked", id_of(&r)));
    // rule_denied
    let r = bearer(
        &app,
        &t,
        Method::POST,
        "/v1/collections/notes/records",
        Some(json!({"owner": "someoneelse0000", "title": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    expect.push(("rule_denied", id_of(&r)));
    // session_revoked (another session of one's own), logout, logout_all
    let other = access(&login(&app, "a@example.com").await);
    let r = bearer(&app, &other, Method::GET, "/v1/auth/sessions", None).await;
    let other_session = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = bearer(
        &app,
        &t,
        Method::DELETE,
        &format!("/v1/auth/sessions/{other_session}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    expect.push(("session_revoked", id_of(&r)));
    let r = bearer(&app, &t, Method::POST, "/v1/auth/logout", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    expect.push(("logout", id_of(&r)));
    let t = access(&login(&app, "a@example.com").await);
    let r = bearer(&app, &t, Method::POST, "/v1/auth/logout-all", None).await;
    assert!(r.status.is_success(), "{}", r.text);
    expect.push(("logout_all", id_of(&r)));
    // password_changed
    let t = access(&login(&app, "a@example.com").await);
    let r = bearer(
        &app,
        &t,
        Method::PATCH,
        &a_path,
        Some(json!({"oldPassword": PW, "password": "a whole new horse"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    expect.push(("password_changed", id_of(&r)));
    // csrf_rejected: a cookie session's unsafe request without the token
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "a@example.com", "password": "a whole new horse", "mode": "cookie"}),
        )
        .await;
    let cookie = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("lintel_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/notes/records")
                .header("cookie", cookie)
                .json(&json!({"owner": a["id"], "title": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    expect.push(("csrf_rejected", id_of(&r)));

    let left = app
        .running()
        .state
        .tasks
        .wait_idle(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(left, 0);
    lintel::auth::audit::flush_denials(&app.running().state, true);
    let _ = app
        .running()
        .state
        .tasks
        .wait_idle(std::time::Duration::from_secs(10))
        .await;
    for (event, request_id) in &expect {
        let r = app
            .admin(
                Method::GET,
                &format!("/v1/audit?event={event}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let items = r.body["items"].as_array().unwrap();
        assert!(
            items.iter().any(|i| i["requestId"] == request_id.as_str()),
            "{event} with request id {request_id}: {}",
            r.text
        );
    }
    app.shutdown().await;
}
