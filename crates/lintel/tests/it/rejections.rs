//! Rejection paths, each checked for its status, its problem code, and that nothing
//! changed where it matters (issue 17). They run on both stores like the rest.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{
    ADMIN_TOKEN, Reply, TestApp, access, api_key, bearer, login, notes, signup, superuser_token,
};

fn href(coll: &str, rec: &Value) -> String {
    format!(
        "/v1/collections/{coll}/records/{}",
        rec["id"].as_str().unwrap()
    )
}

/// The record as the admin sees it now (asserts 200).
async fn current(app: &TestApp, path: &str) -> Value {
    let r = app.admin(Method::GET, path, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

fn assert_validation(r: &Reply, field: &str, code: &str, what: &str) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text);
    assert_eq!(r.problem_code(), "validation_failed", "{what}");
    assert_eq!(r.field_error(field), Some(code), "{what}: {}", r.text);
}

// PATCH and PUT run the same validators as POST; a validator skipped on updates (or
// a PUT that keeps the old value of a left-out required field) shows up here.
#[tokio::test]
async fn updates_are_validated_like_creates_and_change_nothing_when_refused() {
    let app = TestApp::spawn().await;
    app.posts().await;
    let rec = app
        .create(
            "posts",
            json!({"title": "kept", "slug": "kept", "views": 1, "category": "news"}),
        )
        .await;
    let path = href("posts", &rec);
    let before = current(&app, &path).await;
    let cases = [
        (json!({"views": "many"}), "views", "invalid_type"),
        (json!({"views": -1}), "views", "too_small"),
        (json!({"title": "x".repeat(101)}), "title", "too_long"),
        (json!({"slug": "Not A Slug"}), "slug", "pattern_mismatch"),
        (json!({"category": "sports"}), "category", "invalid_choice"),
        (json!({"title": ""}), "title", "required"),
    ];
    for (patch, field, code) in &cases {
        let r = app.json(Method::PATCH, &path, patch.clone()).await;
        assert_validation(&r, field, code, &format!("PATCH {patch}"));
        // PUT with the same bad value (and a valid title where the case is not about it).
        let mut put = patch.clone();
        if *field != "title" {
            put["title"] = json!("t");
        }
        let r = app.json(Method::PUT, &path, put.clone()).await;
        assert_validation(&r, field, code, &format!("PUT {put}"));
    }
    // PUT replaces the whole record: a required field left out is missing, not kept.
    let r = app
        .json(Method::PUT, &path, json!({"slug": "other", "views": 2}))
        .await;
    assert_validation(&r, "title", "required", "PUT without title");
    assert_eq!(current(&app, &path).await, before, "nothing changed");

    // A PUT to an id that does not exist does not create it.
    let r = app
        .json(
            Method::PUT,
            "/v1/collections/posts/records/nosuchrecord0000",
            json!({"title": "ghost"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.problem_code(), "not_found");
    let r = app
        .json(
            Method::PATCH,
            "/v1/collections/posts/records/nosuchrecord0000",
            json!({"title": "ghost"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.problem_code(), "not_found");
    let list = app.get("/v1/collections/posts/records").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["totalItems"], 1, "{}", list.text);
    app.shutdown().await;
}

// The body checks of the edge (JSON syntax, media type, size) hold for PATCH and PUT,
// not only POST.
#[tokio::test]
async fn bad_bodies_on_patch_and_put_are_problems() {
    let app = TestApp::spawn_with(|c| c.http.body_limit = 4096).await;
    app.posts().await;
    let rec = app.create("posts", json!({"title": "kept"})).await;
    let path = href("posts", &rec);
    let before = current(&app, &path).await;
    for m in [Method::PATCH, Method::PUT] {
        let r = app
            .send(
                app.req(m.clone(), &path)
                    .header("content-type", "application/json")
                    .body("{\"title\": "),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{m}: {}", r.text);
        assert_eq!(r.problem_code(), "invalid_json", "{m}");
        let r = app
            .send(
                app.req(m.clone(), &path)
                    .header("content-type", "text/plain")
                    .body("{\"title\": \"t\"}"),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{m}: {}",
            r.text
        );
        assert_eq!(r.problem_code(), "unsupported_media_type", "{m}");
        let r = app
            .json(m.clone(), &path, json!({"title": "x".repeat(8000)}))
            .await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{m}: {}", r.text);
        assert_eq!(r.problem_code(), "payload_too_large", "{m}");
        // A JSON value that is not an object.
        let r = app.json(m.clone(), &path, json!(["title"])).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{m}: {}", r.text);
    }
    assert_eq!(current(&app, &path).await, before, "nothing changed");
    app.shutdown().await;
}

// A collection without rules is for superusers only: listing and creating are 401 for
// anonymous callers and 403 for users; a record is 404 to both, as if absent; nothing
// is read, changed or removed.
#[tokio::test]
async fn collections_without_rules_refuse_anonymous_callers_on_every_method() {
    let app = TestApp::spawn().await;
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(json!({"name": "vault", "fields": [{"name": "secret", "type": "text"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .admin(
            Method::POST,
            "/v1/collections/vault/records",
            Some(json!({"secret": "s3"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let path = href("vault", &r.body);
    let before = current(&app, &path).await;
    signup(&app, "u@example.com").await;
    let user = access(&login(&app, "u@example.com").await);
    for (m, p, body) in [
        (
            Method::GET,
            "/v1/collections/vault/records".to_owned(),
            None,
        ),
        (
            Method::POST,
            "/v1/collections/vault/records".to_owned(),
            Some(json!({"secret": "new"})),
        ),
        (Method::GET, path.clone(), None),
        (Method::PATCH, path.clone(), Some(json!({"secret": "x"}))),
        (Method::PUT, path.clone(), Some(json!({"secret": "x"}))),
        (Method::DELETE, path.clone(), None),
    ] {
        let mut req = app.req(m.clone(), &p);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let anon = app.send(req).await;
        // A signed-in user is no superuser either.
        let user = bearer(&app, &user, m.clone(), &p, body).await;
        if p == path {
            // A record the caller may not view is absent to them (docs/auth.md).
            for (who, r) in [("anonymous", &anon), ("user", &user)] {
                assert_eq!(r.status, StatusCode::NOT_FOUND, "{who} {m}: {}", r.text);
                assert_eq!(r.problem_code(), "not_found");
            }
        } else {
            assert_eq!(anon.status, StatusCode::UNAUTHORIZED, "{}", anon.text);
            assert_eq!(anon.problem_code(), "unauthorized");
            assert_eq!(user.status, StatusCode::FORBIDDEN, "{}", user.text);
            assert_eq!(user.problem_code(), "forbidden");
        }
    }
    // Nor through a batch.
    let r = app
        .json(
            Method::POST,
            "/v1/batch",
            json!({"operations": [
                {"method": "POST", "path": "/v1/collections/vault/records", "body": {"secret": "new"}},
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(r.problem_code(), "unauthorized");
    assert_eq!(r.body["failedOperation"], 0);
    assert_eq!(current(&app, &path).await, before, "nothing changed");
    let r = app
        .admin(Method::GET, "/v1/collections/vault/records", None)
        .await;
    assert_eq!(r.body["totalItems"], 1, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn refused_batches_apply_nothing() {
    let app = TestApp::spawn().await;
    notes(&app).await;
    let a = signup(&app, "a@example.com").await;
    let b = signup(&app, "b@example.com").await;
    let ta = access(&login(&app, "a@example.com").await);
    let tb = access(&login(&app, "b@example.com").await);
    let r = bearer(
        &app,
        &ta,
        Method::POST,
        "/v1/collections/notes/records",
        Some(json!({"owner": a["id"], "title": "A-private"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let hidden = href("notes", &r.body);
    let hidden_before = current(&app, &hidden).await;
    let count = || async {
        app.admin(Method::GET, "/v1/collections/notes/records", None)
            .await
            .body["totalItems"]
            .clone()
    };

    // A hidden target is absent to the caller: 404, named, and B's own create in the
    // same batch is rolled back.
    for op in [
        json!({"method": "PATCH", "path": hidden, "body": {"title": "mine"}}),
        json!({"method": "DELETE", "path": hidden}),
    ] {
        let r = bearer(
            &app,
            &tb,
            Method::POST,
            "/v1/batch",
            Some(json!({"operations": [
                {"method": "POST", "path": "/v1/collections/notes/records", "body": {"owner": b["id"], "title": "B"}},
                op,
            ]})),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{op}: {}", r.text);
        assert_eq!(r.problem_code(), "not_found");
        assert_eq!(r.body["failedOperation"], 1);
    }
    assert_eq!(count().await, 1, "B's note was not kept");
    assert_eq!(current(&app, &hidden).await, hidden_before);

    // No `operations` at all.
    for body in [json!({}), json!({"operations": "all"})] {
        let r = bearer(&app, &tb, Method::POST, "/v1/batch", Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.problem_code(), "invalid_body", "{body}");
    }

    // A stale ifMatch: 412 for that operation, the ones before it undone.
    let r = bearer(
        &app,
        &ta,
        Method::PATCH,
        &hidden,
        Some(json!({"title": "A v2"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v2 = current(&app, &hidden).await;
    let stale = format!("\"{}-1\"", v2["id"].as_str().unwrap());
    let r = bearer(
        &app,
        &ta,
        Method::POST,
        "/v1/batch",
        Some(json!({"operations": [
            {"method": "POST", "path": "/v1/collections/notes/records", "body": {"owner": a["id"], "title": "new"}},
            {"method": "PATCH", "path": hidden, "body": {"title": "lost update"}, "ifMatch": stale},
        ]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.text);
    assert_eq!(r.problem_code(), "precondition_failed");
    assert_eq!(r.body["failedOperation"], 1);
    assert_eq!(count().await, 1, "the create before it was undone");
    assert_eq!(current(&app, &hidden).await, v2);
    app.shutdown().await;
}

// Collection management: no token is 401, a user's token 403, an unknown name 404 —
// and none of them changes the definition.
#[tokio::test]
async fn collection_management_refuses_strangers_and_unknown_names() {
    let app = TestApp::spawn().await;
    app.collection(json!({"name": "notes", "fields": [{"name": "body", "type": "text"}]}))
        .await;
    let before = current(&app, "/v1/collections/notes").await;
    signup(&app, "u@example.com").await;
    let user = access(&login(&app, "u@example.com").await);
    let patch = json!({"addFields": [{"name": "extra", "type": "text"}]});
    for (m, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(patch.clone())),
        (Method::DELETE, None),
    ] {
        let mut req = app.req(m.clone(), "/v1/collections/notes");
        if let Some(b) = &body {
            req = req.json(b);
        }
        let r = app.send(req).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "anonymous {m}: {}",
            r.text
        );
        assert_eq!(r.problem_code(), "unauthorized");
        let r = bearer(
            &app,
            &user,
            m.clone(),
            "/v1/collections/notes",
            body.clone(),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "user {m}: {}", r.text);
        assert_eq!(r.problem_code(), "forbidden");
        let r = app.admin(m.clone(), "/v1/collections/ghost", body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "unknown {m}: {}", r.text);
        assert_eq!(r.problem_code(), "not_found");
    }
    assert_eq!(current(&app, "/v1/collections/notes").await, before);
    let files = std::fs::read_dir(app.dir.path().join("migrations"))
        .unwrap()
        .count();
    assert_eq!(files, 2, "users and notes; refused changes write nothing");
    app.shutdown().await;
}

// The built-in `users` collection: its built-in fields cannot be dropped or renamed;
// other fields can be added. Dropping the whole collection IS allowed today (204), and
// then nobody can sign in or sign up: this pins that behaviour so a change to it is
// seen (reported on issue 17; not changed here).
#[tokio::test]
async fn the_users_collection_keeps_its_built_in_fields_but_can_be_dropped() {
    let app = TestApp::spawn().await;
    signup(&app, "u@example.com").await;
    let before = current(&app, "/v1/collections/users").await;
    for change in [
        json!({"dropFields": ["email"]}),
        json!({"dropFields": ["passwordHash"]}),
        json!({"dropFields": ["verified"]}),
        json!({"renameFields": [{"from": "email", "to": "mail"}]}),
    ] {
        let r = app
            .admin(Method::PATCH, "/v1/collections/users", Some(change.clone()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{change}: {}", r.text);
        assert_eq!(r.problem_code(), "validation_failed");
        assert_eq!(r.field_error("changes"), Some("invalid_change"), "{change}");
    }
    assert_eq!(current(&app, "/v1/collections/users").await, before);
    login(&app, "u@example.com").await;
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/users",
            Some(json!({"addFields": [{"name": "nick", "type": "text"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    login(&app, "u@example.com").await;

    let r = app
        .admin(Method::DELETE, "/v1/collections/users", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "u@example.com", "password": crate::common::PW}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.field_error("collection"), Some("unknown_collection"));
    let r = app
        .json(
            Method::POST,
            "/v1/collections/users/records",
            json!({"email": "v@example.com", "password": crate::common::PW}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn auth_endpoints_refuse_bad_input_and_foreign_sessions() {
    let app = TestApp::spawn().await;
    signup(&app, "a@example.com").await;
    signup(&app, "b@example.com").await;

    // Malformed login bodies.
    for body in [
        json!({"email": 5, "password": "x"}),
        json!({"email": "a@example.com"}),
        json!(["a@example.com"]),
    ] {
        let r = app.json(Method::POST, "/v1/auth/login", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.problem_code(), "invalid_body", "{body}");
    }
    let r = app
        .send(
            app.req(Method::POST, "/v1/auth/login")
                .header("content-type", "application/json")
                .body("{\"email\":"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.problem_code(), "invalid_json");

    // A refresh token nobody issued.
    for t in ["garbage", "", "lk_rt_0000000000000000000000000000"] {
        let r = app
            .json(Method::POST, "/v1/auth/refresh", json!({"refreshToken": t}))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{t:?}: {}", r.text);
        assert_eq!(r.problem_code(), "invalid_refresh_token", "{t:?}");
    }

    // B cannot revoke A's session: 404, and A's session still works.
    let la = login(&app, "a@example.com").await;
    let ta = access(&la);
    let tb = access(&login(&app, "b@example.com").await);
    let r = bearer(&app, &ta, Method::GET, "/v1/auth/sessions", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let a_session = r.body["items"][0]["id"].as_str().unwrap().to_owned();
    let r = bearer(
        &app,
        &tb,
        Method::DELETE,
        &format!("/v1/auth/sessions/{a_session}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.problem_code(), "not_found");
    let r = bearer(&app, &ta, Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::OK, "A's session survived: {}", r.text);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": la["refreshToken"]}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "A's refresh token too: {}",
        r.text
    );

    // An API key cannot make more keys, whatever its scopes.
    let ta = access(&r.body);
    let key = api_key(&app, &ta, json!(["users:read"])).await;
    let r = bearer(
        &app,
        &key,
        Method::POST,
        "/v1/auth/api-keys",
        Some(json!({"name": "child", "scopes": ["users:read"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.problem_code(), "api_key_not_allowed");
    let r = bearer(&app, &ta, Method::GET, "/v1/auth/api-keys", None).await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.text
    );

    // The audit log: 401 without credentials, 403 for a user, 200 for a superuser.
    let r = app.get("/v1/audit").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(r.problem_code(), "unauthorized");
    let r = bearer(&app, &ta, Method::GET, "/v1/audit", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let root = superuser_token(&app).await;
    let r = bearer(&app, &root, Method::GET, "/v1/audit", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = bearer(&app, ADMIN_TOKEN, Method::GET, "/v1/audit", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;
}

// Turning the second factor off needs a valid code: a wrong one leaves it on.
#[tokio::test]
async fn disabling_totp_needs_a_valid_code() {
    use lintel::auth::mfa::{code_at, unbase32};
    let app = TestApp::spawn().await;
    signup(&app, "a@example.com").await;
    let t = access(&login(&app, "a@example.com").await);
    let r = bearer(&app, &t, Method::POST, "/v1/auth/totp/enroll", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let secret = unbase32(r.body["secret"].as_str().unwrap()).unwrap();
    let step = || (lintel::clock::now_ms() / 1000 / 30) as u64;
    let r = bearer(
        &app,
        &t,
        Method::POST,
        "/v1/auth/totp/disable",
        Some(json!({"code": code_at(&secret, step())})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "not on yet: {}", r.text);
    assert_eq!(r.field_error("code"), Some("not_enabled"));
    let r = bearer(
        &app,
        &t,
        Method::POST,
        "/v1/auth/totp/confirm",
        Some(json!({"code": code_at(&secret, step())})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let password_only = json!({"email": "a@example.com", "password": crate::common::PW});
    let valid: Vec<String> = (step() - 2..=step() + 2)
        .map(|s| code_at(&secret, s))
        .collect();
    let wrong = (0u32..)
        .map(|n| format!("{:06}", (n * 7919) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap();
    for body in [
        json!({"code": wrong}),
        json!({"recoveryCode": "not-a-recovery-code"}),
        json!({}),
    ] {
        let r = bearer(
            &app,
            &t,
            Method::POST,
            "/v1/auth/totp/disable",
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.problem_code(), "validation_failed");
        assert_eq!(r.field_error("code"), Some("invalid_code"), "{body}");
        let l = app
            .json(Method::POST, "/v1/auth/login", password_only.clone())
            .await;
        assert_eq!(l.status, StatusCode::UNAUTHORIZED, "still on: {}", l.text);
        assert_eq!(l.problem_code(), "mfa_required");
    }
    // The next step's code (the confirming one is spent) turns it off.
    let r = bearer(
        &app,
        &t,
        Method::POST,
        "/v1/auth/totp/disable",
        Some(json!({"code": code_at(&secret, step() + 1)})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let l = app
        .json(Method::POST, "/v1/auth/login", password_only)
        .await;
    assert_eq!(l.status, StatusCode::OK, "off: {}", l.text);
    app.shutdown().await;
}
