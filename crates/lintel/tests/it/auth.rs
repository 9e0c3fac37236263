//! Accounts, sessions, tokens, API keys, second factors and access rules, persona by
//! persona: anonymous, user A, user B, a superuser, and API keys with and without a
//! scope. Every rejection path is checked as carefully as the way through.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, Reply, TestApp};

use crate::common::{PW, access as token, bearer as as_user, login, signup, superuser_token};

#[tokio::test]
async fn sign_up_normalises_the_email_and_checks_passwords_and_protected_fields() {
    let app = TestApp::spawn().await;
    let alice = signup(&app, "  Alice@Example.COM ").await;
    assert_eq!(alice["email"], "alice@example.com", "emails are normalised");
    assert_eq!(alice["verified"], false);
    assert!(alice.get("passwordHash").is_none() && alice.get("password").is_none());

    // Password rules, with the field and the reason.
    for (pw, code) in [
        ("short", "too_short"),
        ("password1234", "too_common"),
        ("bob@example.com", "like_email"),
    ] {
        let r = app
            .json(
                Method::POST,
                "/v1/collections/users/records",
                json!({"email": "bob@example.com", "password": pw}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{pw}: {}", r.text);
        assert_eq!(r.field_error("password"), Some(code), "{pw}");
    }
    let r = app
        .json(
            Method::POST,
            "/v1/collections/users/records",
            json!({"email": "bob@example.com"}),
        )
        .await;
    assert_eq!(r.field_error("password"), Some("required"));
    // The same address twice is refused; clients cannot set protected fields.
    let r = app
        .json(
            Method::POST,
            "/v1/collections/users/records",
            json!({"email": "ALICE@example.com", "password": PW}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.field_error("email").is_some(), "{}", r.text);
    let r = app
        .json(
            Method::POST,
            "/v1/collections/users/records",
            json!({"email": "eve@example.com", "password": PW, "verified": true, "passwordHash": "x"}),
        )
        .await;
    assert_eq!(r.field_error("verified"), Some("protected"), "{}", r.text);
    assert_eq!(r.field_error("passwordHash"), Some("protected"));
    app.shutdown().await;
}

#[tokio::test]
async fn sign_in_answers_alike_for_wrong_passwords_and_unknown_emails_and_refuses_bad_tokens() {
    let app = TestApp::spawn().await;
    let alice = signup(&app, "  Alice@Example.COM ").await;
    // Wrong password and unknown email: the same answer.
    let wrong = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "alice@example.com", "password": "not the password"}),
        )
        .await;
    let unknown = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "nobody@example.com", "password": PW}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.problem_code(), "invalid_credentials");
    assert_eq!(unknown.problem_code(), "invalid_credentials");
    assert_eq!(wrong.body["detail"], unknown.body["detail"]);

    let l = login(&app, "ALICE@example.com").await;
    assert_eq!(l["expiresIn"], 900);
    assert_eq!(l["user"]["id"], alice["id"]);
    assert!(l["user"].get("passwordHash").is_none());
    let access = token(&l);
    let me = as_user(&app, &access, Method::GET, "/v1/auth/me", None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["user"]["email"], "alice@example.com");

    // A tampered or garbage token is refused, never treated as anonymous.
    let mut tampered = access.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [tampered.as_str(), "garbage", "lk_nothing_here"] {
        let r = as_user(&app, bad, Method::GET, "/v1/auth/me", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(r.problem_code(), "invalid_token");
    }
    let r = app.get("/v1/auth/me").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_family() {
    let app = TestApp::spawn().await;
    signup(&app, "alice@example.com").await;
    let l = login(&app, "alice@example.com").await;
    // Refresh rotates; reusing the old token revokes the whole family.
    let first = l["refreshToken"].as_str().unwrap().to_owned();
    let r = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": first}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let second = r.body["refreshToken"].as_str().unwrap().to_owned();
    let access2 = r.body["accessToken"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let ok = as_user(&app, &access2, Method::GET, "/v1/auth/me", None).await;
    assert_eq!(ok.status, StatusCode::OK);
    let reuse = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": first}),
        )
        .await;
    assert_eq!(reuse.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reuse.problem_code(), "invalid_refresh_token");
    let after = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": second}),
        )
        .await;
    assert_eq!(
        after.status,
        StatusCode::UNAUTHORIZED,
        "the family is revoked"
    );
    let r = as_user(&app, &access2, Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "its access tokens too");
    app.shutdown().await;
}

#[tokio::test]
async fn sessions_are_listed_revoked_and_ended_by_logout_and_logout_all() {
    let app = TestApp::spawn().await;
    signup(&app, "alice@example.com").await;
    // Sessions: list, revoke one, log out, log out everywhere.
    let s1 = login(&app, "alice@example.com").await;
    let s2 = login(&app, "alice@example.com").await;
    let list = as_user(&app, &token(&s1), Method::GET, "/v1/auth/sessions", None).await;
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", list.text);
    assert_eq!(items.iter().filter(|s| s["current"] == true).count(), 1);
    let other = items.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = as_user(
        &app,
        &token(&s1),
        Method::DELETE,
        &format!("/v1/auth/sessions/{other}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = as_user(&app, &token(&s2), Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "revoked session");
    let r = as_user(&app, &token(&s1), Method::POST, "/v1/auth/logout", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = as_user(&app, &token(&s1), Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "logged out");
    let r = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": s1["refreshToken"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let a = login(&app, "alice@example.com").await;
    let b = login(&app, "alice@example.com").await;
    let r = as_user(&app, &token(&a), Method::POST, "/v1/auth/logout-all", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for t in [token(&a), token(&b)] {
        let r = as_user(&app, &t, Method::GET, "/v1/auth/me", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_password_change_needs_the_old_password_and_ends_every_session() {
    let app = TestApp::spawn().await;
    let alice = signup(&app, "  Alice@Example.COM ").await;
    // Changing the password needs the old one and ends every session.
    let s = login(&app, "alice@example.com").await;
    let id = alice["id"].as_str().unwrap();
    let path = format!("/v1/collections/users/records/{id}");
    let r = as_user(
        &app,
        &token(&s),
        Method::PATCH,
        &path,
        Some(json!({"password": "a new long passphrase"})),
    )
    .await;
    assert_eq!(r.field_error("oldPassword"), Some("invalid"), "{}", r.text);
    let r = as_user(
        &app,
        &token(&s),
        Method::PATCH,
        &path,
        Some(json!({"password": "a new long passphrase", "oldPassword": PW})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = as_user(&app, &token(&s), Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "alice@example.com", "password": "a new long passphrase"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    app.shutdown().await;
}

/// Notes owned by users; private ones only their owner sees.
async fn notes(app: &TestApp) {
    app.collection(json!({
        "name": "notes",
        "fields": [
            {"name": "owner", "type": "relation", "collection": "users", "required": true},
            {"name": "title", "type": "text"},
            {"name": "private", "type": "bool", "default": true}
        ],
        "rules": {
            "list": "owner = @request.auth.id || private = false",
            "view": "owner = @request.auth.id || private = false",
            "create": "@request.auth.id != null && owner = @request.auth.id",
            "update": "owner = @request.auth.id",
            "delete": "owner = @request.auth.id"
        }
    }))
    .await;
    app.collection(json!({
        "name": "comments",
        "fields": [
            {"name": "note", "type": "relation", "collection": "notes"},
            {"name": "text", "type": "text"}
        ],
        "rules": {"list": "", "view": "", "create": "@request.auth.id != null"}
    }))
    .await;
}

/// Users A and B with notes: A's private and public ones, B's private one.
struct Notebook {
    app: TestApp,
    a_id: String,
    b_id: String,
    ta: String,
    tb: String,
    a_private: String,
    a_public: String,
}

async fn create_note(app: &TestApp, token: &str, body: Value) -> Reply {
    as_user(
        app,
        token,
        Method::POST,
        "/v1/collections/notes/records",
        Some(body),
    )
    .await
}

async fn notebook() -> Notebook {
    let app = TestApp::spawn().await;
    notes(&app).await;
    let a = signup(&app, "a@example.com").await;
    let b = signup(&app, "b@example.com").await;
    let (a_id, b_id) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );
    let ta = token(&login(&app, "a@example.com").await);
    let tb = token(&login(&app, "b@example.com").await);
    let a_private = create_note(&app, &ta, json!({"owner": a_id, "title": "A-private"})).await;
    assert_eq!(a_private.status, StatusCode::CREATED, "{}", a_private.text);
    let a_private = a_private.body["id"].as_str().unwrap().to_owned();
    let a_public = create_note(
        &app,
        &ta,
        json!({"owner": a_id, "title": "A-public", "private": false}),
    )
    .await
    .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b_private = create_note(&app, &tb, json!({"owner": b_id, "title": "B-private"})).await;
    assert_eq!(b_private.status, StatusCode::CREATED);
    Notebook {
        app,
        a_id,
        b_id,
        ta,
        tb,
        a_private,
        a_public,
    }
}

#[tokio::test]
async fn notes_are_created_only_by_and_for_their_owner() {
    let Notebook {
        app,
        a_id,
        b_id,
        ta,
        ..
    } = notebook().await;
    let (a_id, b_id) = (a_id.as_str(), b_id.as_str());
    // Creating for someone else, or anonymously, is refused.
    let r = create_note(&app, &ta, json!({"owner": b_id, "title": "forged"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .json(
            Method::POST,
            "/v1/collections/notes/records",
            json!({"owner": a_id, "title": "anon"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn lists_and_counts_show_only_what_the_list_rule_allows() {
    let Notebook { app, tb, .. } = notebook().await;
    // B lists: its own note and A's public one; the count agrees; filters cannot
    // reach past the rule.
    let r = as_user(
        &app,
        &tb,
        Method::GET,
        "/v1/collections/notes/records",
        None,
    )
    .await;
    let titles: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles.len(), 2, "{}", r.text);
    assert!(titles.contains(&"A-public") && titles.contains(&"B-private"));
    assert_eq!(r.body["totalItems"], 2);
    let r = as_user(
        &app,
        &tb,
        Method::GET,
        "/v1/collections/notes/records?filter=title%20~%20%22A-private%22",
        None,
    )
    .await;
    assert_eq!(r.body["totalItems"], 0, "{}", r.text);
    let r = app.get("/v1/collections/notes/records").await;
    assert_eq!(
        r.body["totalItems"], 1,
        "anonymous: public only: {}",
        r.text
    );

    // The superuser sees everything.
    let r = app
        .admin(Method::GET, "/v1/collections/notes/records", None)
        .await;
    assert_eq!(r.body["totalItems"], 3);
    app.shutdown().await;
}

#[tokio::test]
async fn a_record_the_caller_may_not_view_is_404_for_every_method_and_in_batches() {
    let Notebook {
        app,
        b_id,
        ta,
        tb,
        a_private,
        a_public,
        ..
    } = notebook().await;
    let b_id = b_id.as_str();
    // B cannot read, change or delete A's private note: 404, as if absent.
    let path = format!("/v1/collections/notes/records/{a_private}");
    for (m, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"title": "mine now"}))),
        (
            Method::PUT,
            Some(json!({"owner": b_id, "title": "mine now"})),
        ),
        (Method::DELETE, None),
    ] {
        let r = as_user(&app, &tb, m.clone(), &path, body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m}: {}", r.text);
    }
    // ... nor by batch.
    let r = as_user(
        &app,
        &tb,
        Method::POST,
        "/v1/batch",
        Some(json!({"operations": [
            {"method": "PATCH", "path": format!("/v1/collections/notes/records/{a_public}"), "body": {"title": "x"}},
            {"method": "DELETE", "path": path.clone()}
        ]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.body["failedOperation"], 0);
    // B can see A's public note but not change it: 403.
    let r = as_user(
        &app,
        &tb,
        Method::PATCH,
        &format!("/v1/collections/notes/records/{a_public}"),
        Some(json!({"title": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A still reads its note, unchanged.
    let r = as_user(&app, &ta, Method::GET, &path, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["title"], "A-private");
    app.shutdown().await;
}

#[tokio::test]
async fn relations_and_expansion_never_reach_a_record_the_caller_may_not_view() {
    let Notebook {
        app,
        ta,
        tb,
        a_private,
        ..
    } = notebook().await;
    // A relation cannot point at a record the writer may not view...
    let c = as_user(
        &app,
        &tb,
        Method::POST,
        "/v1/collections/comments/records",
        Some(json!({"note": a_private, "text": "peek"})),
    )
    .await;
    assert_eq!(c.status, StatusCode::BAD_REQUEST, "{}", c.text);
    assert_eq!(c.field_error("note"), Some("relation_not_found"));
    // ...and expanding one never shows a record the caller may not view.
    let c = as_user(
        &app,
        &ta,
        Method::POST,
        "/v1/collections/comments/records",
        Some(json!({"note": a_private, "text": "mine"})),
    )
    .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.text);
    let r = as_user(
        &app,
        &tb,
        Method::GET,
        "/v1/collections/comments/records?expand=note",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1));
    // `expand.note` compared to null alone also passed when expand did nothing at all;
    // the reference is kept, nothing of the note leaks anywhere in the answer, and A's
    // request below shows that expand does work.
    assert_eq!(r.body["items"][0]["note"], json!(a_private), "{}", r.text);
    assert_eq!(
        r.body["items"][0]["expand"]["note"],
        Value::Null,
        "{}",
        r.text
    );
    assert!(!r.text.contains("A-private"), "{}", r.text);
    let r = as_user(
        &app,
        &ta,
        Method::GET,
        "/v1/collections/comments/records?expand=note",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["items"][0]["expand"]["note"]["title"], "A-private");
    app.shutdown().await;
}

#[tokio::test]
async fn users_see_only_their_own_account_and_never_its_hidden_fields() {
    let Notebook { app, a_id, tb, .. } = notebook().await;
    let a_id = a_id.as_str();
    // Users see only their own account.
    let r = as_user(
        &app,
        &tb,
        Method::GET,
        "/v1/collections/users/records",
        None,
    )
    .await;
    assert_eq!(r.body["totalItems"], 1);
    let r = as_user(
        &app,
        &tb,
        Method::GET,
        &format!("/v1/collections/users/records/{a_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Hidden fields are not filterable, sortable or selectable.
    for q in [
        "filter=passwordHash%20~%20%22a%22",
        "sort=passwordHash",
        "fields=passwordHash",
    ] {
        let r = as_user(
            &app,
            &tb,
            Method::GET,
            &format!("/v1/collections/users/records?{q}"),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.text);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn protected_fields_are_set_only_by_superusers() {
    let Notebook { app, b_id, tb, .. } = notebook().await;
    let b_id = b_id.as_str();
    // Protected fields: only superusers set them; sending them back unchanged (a PUT
    // of the whole record) is fine.
    let own = as_user(
        &app,
        &tb,
        Method::GET,
        &format!("/v1/collections/users/records/{b_id}"),
        None,
    )
    .await;
    let mut whole = own.body.clone();
    for k in ["id", "created", "updated", "version", "_links"] {
        whole.as_object_mut().unwrap().remove(k);
    }
    let r = as_user(
        &app,
        &tb,
        Method::PUT,
        &format!("/v1/collections/users/records/{b_id}"),
        Some(whole),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = as_user(
        &app,
        &tb,
        Method::PATCH,
        &format!("/v1/collections/users/records/{b_id}"),
        Some(json!({"verified": true})),
    )
    .await;
    assert_eq!(r.field_error("verified"), Some("protected"));
    let r = app
        .admin(
            Method::PATCH,
            &format!("/v1/collections/users/records/{b_id}"),
            Some(json!({"verified": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["verified"], true);
    app.shutdown().await;
}

#[tokio::test]
async fn api_keys_act_as_their_owner_narrowed_to_their_scopes() {
    let Notebook {
        app, a_id, ta, tb, ..
    } = notebook().await;
    let a_id = a_id.as_str();
    // API keys act as their owner, narrowed to their scopes.
    let k = as_user(
        &app,
        &ta,
        Method::POST,
        "/v1/auth/api-keys",
        Some(json!({"name": "reader", "scopes": ["notes:read"]})),
    )
    .await;
    assert_eq!(k.status, StatusCode::CREATED, "{}", k.text);
    let key = k.body["key"].as_str().unwrap().to_owned();
    let key_id = k.body["id"].as_str().unwrap().to_owned();
    let r = as_user(
        &app,
        &key,
        Method::GET,
        "/v1/collections/notes/records",
        None,
    )
    .await;
    assert_eq!(r.body["totalItems"], 2, "A's two notes: {}", r.text);
    let r = as_user(
        &app,
        &key,
        Method::POST,
        "/v1/collections/notes/records",
        Some(json!({"owner": a_id, "title": "by key"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.problem_code(), "insufficient_scope");
    let k2 = as_user(
        &app,
        &ta,
        Method::POST,
        "/v1/auth/api-keys",
        Some(json!({"name": "users only", "scopes": ["users:read"]})),
    )
    .await;
    let key2 = k2.body["key"].as_str().unwrap().to_owned();
    let r = as_user(
        &app,
        &key2,
        Method::GET,
        "/v1/collections/notes/records",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = as_user(
        &app,
        &ta,
        Method::POST,
        "/v1/auth/api-keys",
        Some(json!({"name": "bad", "scopes": ["nowhere:read", "notes:fly"]})),
    )
    .await;
    assert_eq!(r.field_error("scopes[0]"), Some("invalid_scope"));
    assert_eq!(r.field_error("scopes[1]"), Some("invalid_scope"));
    let list = as_user(&app, &ta, Method::GET, "/v1/auth/api-keys", None).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 2);
    assert!(!list.text.contains(&key[10..]), "secrets are never listed");
    let r = as_user(
        &app,
        &tb,
        Method::DELETE,
        &format!("/v1/auth/api-keys/{key_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "B cannot revoke A's key");
    let r = as_user(
        &app,
        &ta,
        Method::DELETE,
        &format!("/v1/auth/api-keys/{key_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = as_user(
        &app,
        &key,
        Method::GET,
        "/v1/collections/notes/records",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "revoked key");
    app.shutdown().await;
}

#[tokio::test]
async fn users_cannot_manage_collections_and_rule_denials_are_audited() {
    let Notebook {
        app,
        a_id,
        b_id,
        ta,
        tb,
        a_public,
        ..
    } = notebook().await;
    let (a_id, b_id) = (a_id.as_str(), b_id.as_str());
    // Rule denials from three callers (they are coalesced per caller and window):
    // A's forged create, an anonymous create, B's change of A's public note (alone
    // and in a batch).
    let r = create_note(&app, &ta, json!({"owner": b_id, "title": "forged"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .json(
            Method::POST,
            "/v1/collections/notes/records",
            json!({"owner": a_id, "title": "anon"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let public = format!("/v1/collections/notes/records/{a_public}");
    let r = as_user(
        &app,
        &tb,
        Method::PATCH,
        &public,
        Some(json!({"title": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = as_user(
        &app,
        &tb,
        Method::POST,
        "/v1/batch",
        Some(json!({"operations": [
            {"method": "PATCH", "path": public, "body": {"title": "x"}}
        ]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // Users cannot manage collections; the audit log is for superusers and has
    // recorded the denials.
    let r = as_user(&app, &ta, Method::GET, "/v1/collections", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = as_user(&app, &ta, Method::GET, "/v1/audit", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Audit rows are written in the background: wait for that work to finish.
    let left = app
        .running()
        .state
        .tasks
        .wait_idle(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(left, 0);
    let r = app
        .admin(Method::GET, "/v1/audit?event=rule_denied", None)
        .await;
    let denied = r.body["items"].as_array().unwrap().len();
    assert!(r.body["items"][0]["requestId"].is_string(), "{}", r.text);
    assert!(denied >= 3, "rule denials are audited");
    let r = app
        .admin(Method::GET, "/v1/audit?event=collection_created", None)
        .await;
    assert!(
        r.body["items"].as_array().unwrap().len() >= 2,
        "admin changes are audited: {}",
        r.text
    );
    assert_eq!(r.body["items"][0]["actor"], "admin token");
    app.shutdown().await;
}

#[tokio::test]
async fn cookie_sessions_need_csrf_proof_for_unsafe_requests() {
    let app = TestApp::spawn().await;
    notes(&app).await;
    let a = signup(&app, "a@example.com").await;
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "a@example.com", "password": PW, "mode": "cookie"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.body.get("accessToken").is_none());
    let csrf = r.body["csrfToken"].as_str().unwrap().to_owned();
    let set: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("lintel_session="))
        .unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Lax"));
    let cookie = session.split(';').next().unwrap().to_owned();

    let me = app
        .send(
            app.req(Method::GET, "/v1/auth/me")
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["via"], "cookie");

    let body = json!({"owner": a["id"], "title": "t"});
    let post = || {
        app.req(Method::POST, "/v1/collections/notes/records")
            .header("cookie", &cookie)
            .json(&body)
    };
    let r = app.send(post()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.problem_code(), "csrf_failed");
    let r = app.send(post().header("x-csrf-token", "wrong")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .send(
            post()
                .header("x-csrf-token", &csrf)
                .header("origin", "https://evil.example"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "cross-site origin");
    let r = app.send(post().header("x-csrf-token", &csrf)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    let r = app
        .send(
            app.req(Method::POST, "/v1/auth/logout")
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let me = app
        .send(
            app.req(Method::GET, "/v1/auth/me")
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}

#[tokio::test]
async fn superusers_sign_in_and_manage_collections() {
    let app = TestApp::spawn().await;
    let t = superuser_token(&app).await;
    let r = as_user(&app, &t, Method::GET, "/v1/collections", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = as_user(
        &app,
        &t,
        Method::POST,
        "/v1/collections",
        Some(json!({"name": "things", "fields": [{"name": "a", "type": "text"}]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // Without rules, a collection is for superusers only.
    let r = app
        .json(
            Method::POST,
            "/v1/collections/things/records",
            json!({"a": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app.get("/v1/collections/things/records").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = as_user(
        &app,
        &t,
        Method::POST,
        "/v1/collections/things/records",
        Some(json!({"a": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // A user's password does not open the superuser door.
    signup(&app, "u@example.com").await;
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "u@example.com", "password": PW, "collection": "_superusers"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Rules are validated when a collection is defined.
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(
                json!({"name": "bad", "fields": [{"name": "a", "type": "text"}],
                "rules": {"list": "nope = 1", "view": "@request.what = 1", "create": "a = "}}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.field_error("rules.list").is_some());
    assert!(r.field_error("rules.view").is_some());
    assert!(r.field_error("rules.create").is_some());
    let _ = ADMIN_TOKEN;
    app.shutdown().await;
}

#[tokio::test]
async fn totp_second_factor_with_single_use_codes() {
    let app = TestApp::spawn().await;
    signup(&app, "a@example.com").await;
    let t = token(&login(&app, "a@example.com").await);
    let r = as_user(&app, &t, Method::POST, "/v1/auth/totp/enroll", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let uri = r.body["uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/lintel:a%40example.com?secret="),
        "{uri}"
    );
    let secret = lintel::auth::mfa::unbase32(r.body["secret"].as_str().unwrap()).unwrap();
    let now = || (lintel::clock::now_ms() / 1000) as u64;
    let code_now = |offset: u64| lintel::auth::mfa::code_at(&secret, now() / 30 + offset);

    let r = as_user(
        &app,
        &t,
        Method::POST,
        "/v1/auth/totp/confirm",
        Some(json!({"code": "000000"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = as_user(
        &app,
        &t,
        Method::POST,
        "/v1/auth/totp/confirm",
        Some(json!({"code": code_now(0)})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let recovery: Vec<String> = r.body["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);

    let attempt = |extra: Value| {
        let mut body = json!({"email": "a@example.com", "password": PW});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        app.json(Method::POST, "/v1/auth/login", body)
    };
    let r = attempt(json!({})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.problem_code(), "mfa_required");
    let r = attempt(json!({"totp": "123456"})).await;
    assert_eq!(r.problem_code(), "invalid_mfa");
    // The confirming code was for this step; the next step's code works once.
    let next = code_now(1);
    let r = attempt(json!({"totp": next})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = attempt(json!({"totp": next})).await;
    assert_eq!(r.problem_code(), "invalid_mfa", "a code is single-use");
    let r = attempt(json!({"recoveryCode": recovery[0]})).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = attempt(json!({"recoveryCode": recovery[0]})).await;
    assert_eq!(r.problem_code(), "invalid_mfa", "recovery codes too");
    app.shutdown().await;
}

/// A six-digit code that is none of the codes valid around now.
fn wrong_code(secret: &[u8]) -> String {
    let step = (lintel::clock::now_ms() / 1000 / 30) as u64;
    let valid: Vec<String> = (step - 2..=step + 2)
        .map(|s| lintel::auth::mfa::code_at(secret, s))
        .collect();
    (0..)
        .map(|n: u32| format!("{:06}", (n * 7919) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap()
}

#[tokio::test]
async fn wrong_second_factor_codes_count_toward_the_sign_in_lockout() {
    let app = TestApp::spawn_with(|c| {
        c.auth.lockout_threshold = 3;
        c.auth.lockout_secs = 60;
    })
    .await;
    signup(&app, "a@example.com").await;
    let t = token(&login(&app, "a@example.com").await);
    let r = as_user(&app, &t, Method::POST, "/v1/auth/totp/enroll", None).await;
    let secret = lintel::auth::mfa::unbase32(r.body["secret"].as_str().unwrap()).unwrap();
    let step = || (lintel::clock::now_ms() / 1000 / 30) as u64;
    let r = as_user(
        &app,
        &t,
        Method::POST,
        "/v1/auth/totp/confirm",
        Some(json!({"code": lintel::auth::mfa::code_at(&secret, step())})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let attempt = |body: Value| app.json(Method::POST, "/v1/auth/login", body);
    let with_password = |extra: Value| {
        let mut body = json!({"email": "a@example.com", "password": PW});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        attempt(body)
    };

    // The right password without a code: not a failure; the answer carries the
    // mfaToken that finishes this sign-in.
    let r = with_password(json!({})).await;
    assert_eq!(r.problem_code(), "mfa_required");
    let mfa_token = r.body["mfaToken"].as_str().unwrap().to_owned();
    // Two wrong codes with the password, one more with the mfaToken: three failures.
    for _ in 0..2 {
        let r = with_password(json!({"totp": wrong_code(&secret)})).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
        assert_eq!(r.problem_code(), "invalid_mfa");
    }
    let r = attempt(json!({"mfaToken": mfa_token, "totp": wrong_code(&secret)})).await;
    assert_eq!(r.problem_code(), "invalid_mfa");
    // Locked: the right password with the right code is refused, and so is the
    // mfaToken with the right code.
    let right = lintel::auth::mfa::code_at(&secret, step() + 1);
    let r = with_password(json!({"totp": right})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.problem_code(), "signin_locked");
    assert!(r.header("retry-after").is_some());
    let r = attempt(json!({"mfaToken": mfa_token, "totp": right})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.problem_code(), "signin_locked");

    // Audited: each wrong code and the lock.
    let left = app
        .running()
        .state
        .tasks
        .wait_idle(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(left, 0);
    let mut found = (0, false);
    let r = app
        .admin(Method::GET, "/v1/audit?event=login_failed", None)
        .await;
    found.0 = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["detail"]["reason"] == "invalid_mfa")
        .count();
    let r = app
        .admin(Method::GET, "/v1/audit?event=signin_locked", None)
        .await;
    found.1 = !r.body["items"].as_array().unwrap().is_empty();

    assert_eq!(
        found,
        (3, true),
        "three wrong codes and the lock are audited"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn email_flows_use_single_use_tokens_and_never_tell_who_exists() {
    let sink = crate::common::SmtpSink::start().await;
    let port = sink.port;
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp_host = "127.0.0.1".into();
        c.mail.smtp_port = port;
        c.mail.smtp_tls = "none".into();
        c.mail.from = "Lintel <no-reply@example.test>".into();
    })
    .await;
    let a = signup(&app, "a@example.com").await;
    let path = format!(
        "/v1/collections/users/records/{}",
        a["id"].as_str().unwrap()
    );

    // Verification: the same 204 for a stranger, and no mail to them.
    let r = app
        .json(
            Method::POST,
            "/v1/auth/request-verification",
            json!({"email": "nobody@example.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/request-verification",
            json!({"email": "A@example.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let mail = sink.message(0).await;
    assert!(mail.contains("To: a@example.com"), "{mail}");
    assert_eq!(sink.count(), 1, "nothing was sent for the stranger");
    let verify = crate::common::mailed_token(&mail);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/confirm-verification",
            json!({"token": verify}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/confirm-verification",
            json!({"token": verify}),
        )
        .await;
    assert_eq!(r.field_error("token"), Some("invalid_token"), "single use");
    let r = app.admin(Method::GET, &path, None).await;
    assert_eq!(r.body["verified"], true);

    // Password reset: replaying the token fails; sessions end.
    let session = token(&login(&app, "a@example.com").await);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/request-password-reset",
            json!({"email": "nobody@example.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.json(
        Method::POST,
        "/v1/auth/request-password-reset",
        json!({"email": "a@example.com"}),
    )
    .await;
    let reset = crate::common::mailed_token(&sink.message(1).await);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/confirm-password-reset",
            json!({"token": reset, "password": "short"}),
        )
        .await;
    assert_eq!(r.field_error("password"), Some("too_short"));
    let r = app
        .json(
            Method::POST,
            "/v1/auth/confirm-password-reset",
            json!({"token": reset, "password": "brand new passphrase"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/confirm-password-reset",
            json!({"token": reset, "password": "another passphrase!"}),
        )
        .await;
    assert_eq!(
        r.field_error("token"),
        Some("invalid_token"),
        "replayed reset token"
    );
    let r = as_user(&app, &session, Method::GET, "/v1/auth/me", None).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the reset ended old sessions"
    );
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "a@example.com", "password": "brand new passphrase"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let t = token(&r.body);

    // Email change: mailed to the new address, needs the password.
    let r = as_user(
        &app,
        &t,
        Method::POST,
        "/v1/auth/request-email-change",
        Some(json!({"newEmail": "new@example.com"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let mail = sink.message(2).await;
    assert!(mail.contains("To: new@example.com"), "{mail}");
    let change = crate::common::mailed_token(&mail);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/confirm-email-change",
            json!({"token": change, "password": "wrong password!!"}),
        )
        .await;
    assert_eq!(r.field_error("password"), Some("invalid"));
    let r = app
        .json(
            Method::POST,
            "/v1/auth/confirm-email-change",
            json!({"token": change, "password": "brand new passphrase"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app.admin(Method::GET, &path, None).await;
    assert_eq!(r.body["email"], "new@example.com");
    // Email is not changed by a plain PATCH.
    let l = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "new@example.com", "password": "brand new passphrase"}),
        )
        .await;
    assert_eq!(l.status, StatusCode::OK);
    let r = as_user(
        &app,
        &token(&l.body),
        Method::PATCH,
        &path,
        Some(json!({"email": "x@example.com"})),
    )
    .await;
    assert_eq!(r.field_error("email"), Some("protected"));
    app.shutdown().await;
}

#[tokio::test]
async fn mail_flows_answer_409_without_a_mail_server() {
    let app = TestApp::spawn().await;
    for (path, body) in [
        (
            "/v1/auth/request-password-reset",
            json!({"email": "a@example.com"}),
        ),
        (
            "/v1/auth/request-verification",
            json!({"email": "a@example.com"}),
        ),
    ] {
        let r = app.json(Method::POST, path, body).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{path}: {}", r.text);
        assert_eq!(r.problem_code(), "mail_not_configured");
        assert!(r.header("retry-after").is_none(), "retrying does not help");
    }
    signup(&app, "a@example.com").await;
    let t = token(&login(&app, "a@example.com").await);
    let r = as_user(
        &app,
        &t,
        Method::POST,
        "/v1/auth/request-email-change",
        Some(json!({"newEmail": "b@example.com"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.problem_code(), "mail_not_configured");
    app.shutdown().await;
}

/// Writes an Ed25519 key pair (PKCS#8 private key, SPKI public key) into `dir`.
fn ed25519_pair(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    (private, public)
}

/// The claims of a JWT, unverified.
fn claims_of(jwt: &str) -> (Value, Value) {
    use base64::Engine as _;
    let part = |i: usize| -> Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(i).unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    (part(0), part(1))
}

// With `auth.jwt_algorithm = "EdDSA"` tokens are signed with the configured Ed25519 key
// and checked with its public key; a token signed any other way is refused, including
// the algorithm-confusion forgery (HS256 keyed with the public key) and HS256 with a
// `jwt_secret` left in the configuration.
#[tokio::test]
async fn eddsa_tokens_verify_with_the_public_key_and_hs256_forgeries_are_refused() {
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = ed25519_pair(keys.path(), "server");
    let (other_private, _) = ed25519_pair(keys.path(), "other");
    const LEFTOVER: &str = "an-hs256-secret-left-in-the-config-0123456789";
    let app = TestApp::spawn_with(|c| {
        c.auth.jwt_algorithm = "EdDSA".into();
        c.auth.jwt_private_key_file = private.clone();
        c.auth.jwt_public_key_file = public.clone();
        c.auth.jwt_secret = lintel::config::Secret(LEFTOVER.into());
    })
    .await;
    signup(&app, "a@example.com").await;
    let l = login(&app, "a@example.com").await;
    let jwt = token(&l);
    let (header, claims) = claims_of(&jwt);
    assert_eq!(header["alg"], "EdDSA", "{header}");
    // The token verifies with the public key, outside Lintel too.
    let public_pem = std::fs::read(&public).unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "sub"]);
    let checked =
        jsonwebtoken::decode::<Value>(&jwt, &DecodingKey::from_ed_pem(&public_pem).unwrap(), &v)
            .expect("the access token verifies with the configured public key");
    assert_eq!(checked.claims["sub"], claims["sub"]);
    let r = as_user(&app, &jwt, Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["user"]["email"], "a@example.com");
    // Refreshing issues EdDSA tokens as well.
    let r = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": l["refreshToken"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let refreshed = token(&r.body);
    assert_eq!(claims_of(&refreshed).0["alg"], "EdDSA");
    let r = as_user(&app, &refreshed, Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Forgeries with the very same claims (the session is live).
    let forge = |alg: Algorithm, key: &EncodingKey| {
        jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
    };
    let other_pem = std::fs::read(&other_private).unwrap();
    let forged = [
        (
            "HS256 keyed with the public key",
            forge(Algorithm::HS256, &EncodingKey::from_secret(&public_pem)),
        ),
        (
            "HS256 keyed with a leftover jwt_secret",
            forge(
                Algorithm::HS256,
                &EncodingKey::from_secret(LEFTOVER.as_bytes()),
            ),
        ),
        (
            "EdDSA with another key",
            forge(
                Algorithm::EdDSA,
                &EncodingKey::from_ed_pem(&other_pem).unwrap(),
            ),
        ),
    ];
    for (what, t) in &forged {
        let r = as_user(&app, t, Method::GET, "/v1/auth/me", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text);
        assert_eq!(r.problem_code(), "invalid_token", "{what}");
    }
    // `alg: none` with the claims and no signature.
    use base64::Engine as _;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    let r = as_user(&app, &none, Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "alg none: {}", r.text);
    assert_eq!(r.problem_code(), "invalid_token");
    // Expiry: the same claims signed with the server's own private key are accepted
    // while `exp` is ahead and refused once it has passed (beyond the 5 s leeway), so
    // the expiry check, not the signature, is what refuses the second.
    let server_key = EncodingKey::from_ed_pem(&std::fs::read(&private).unwrap()).unwrap();
    let now = lintel::clock::now_ms() / 1000;
    for (exp, want) in [
        (now + 60, StatusCode::OK),
        (now - 60, StatusCode::UNAUTHORIZED),
    ] {
        let mut c = claims.clone();
        c["exp"] = json!(exp);
        let t = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &c, &server_key).unwrap();
        let r = as_user(&app, &t, Method::GET, "/v1/auth/me", None).await;
        assert_eq!(r.status, want, "exp {exp} (now {now}): {}", r.text);
    }
    // The real token still works after all that.
    let r = as_user(&app, &refreshed, Method::GET, "/v1/auth/me", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;
}

fn session_set_cookie(r: &Reply) -> String {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("lintel_session="))
        .unwrap_or_else(|| panic!("a session cookie: {:?}", r.headers))
}

// `auth.cookie_secure = true` marks the session cookies `Secure` on plain HTTP (behind
// a TLS-terminating proxy), and each sign-in gets a new session id: signing in again in
// the same browser ends the session its cookie named.
#[tokio::test]
async fn secure_cookies_by_config_and_a_new_session_id_at_each_sign_in() {
    // Without the setting, on plain HTTP: no `Secure` (the control for the case below).
    let app = TestApp::spawn().await;
    signup(&app, "a@example.com").await;
    let cookie_login = |cookie: Option<String>| {
        let mut req = app
            .req(Method::POST, "/v1/auth/login")
            .json(&json!({"email": "a@example.com", "password": PW, "mode": "cookie"}));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        app.send(req)
    };
    let r = cookie_login(None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!session_set_cookie(&r).contains("Secure"), "{r:?}");
    app.shutdown().await;

    let app = TestApp::spawn_with(|c| c.auth.cookie_secure = true).await;
    signup(&app, "a@example.com").await;
    // A request that carries a live session cookie needs its CSRF token, sign-in too.
    let cookie_login = |cookie: Option<(String, String)>| {
        let mut req = app
            .req(Method::POST, "/v1/auth/login")
            .json(&json!({"email": "a@example.com", "password": PW, "mode": "cookie"}));
        if let Some((c, csrf)) = cookie {
            req = req.header("cookie", c).header("x-csrf-token", csrf);
        }
        app.send(req)
    };
    let me =
        |cookie: String| app.send(app.req(Method::GET, "/v1/auth/me").header("cookie", cookie));
    let r = cookie_login(None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let set: Vec<String> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(set.len() >= 2, "{set:?}");
    for c in &set {
        let attrs: Vec<&str> = c.split(';').map(str::trim).collect();
        assert!(attrs.contains(&"Secure"), "{c}");
    }
    let first = session_set_cookie(&r).split(';').next().unwrap().to_owned();
    let csrf = r.body["csrfToken"].as_str().unwrap().to_owned();
    let r = me(first.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // The same browser signs in again, sending its cookie along.
    let r = cookie_login(Some((first.clone(), csrf))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let second = session_set_cookie(&r).split(';').next().unwrap().to_owned();
    assert_ne!(second, first, "a new session id");
    let r = me(second.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = me(first).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the old session ended: {}",
        r.text
    );
    app.shutdown().await;
}

// `@request.body.*` in create and update rules: the rule reads the request body.
#[tokio::test]
async fn body_rules_allow_and_refuse_writes_by_what_is_sent() {
    let app = TestApp::spawn().await;
    app.collection(json!({
        "name": "drafts",
        "fields": [
            {"name": "title", "type": "text"},
            {"name": "status", "type": "select", "values": ["draft", "published"]}
        ],
        "rules": {
            "list": "", "view": "",
            "create": "@request.auth.id != \"\" && @request.body.status = \"draft\"",
            "update": "@request.body.status = \"draft\""
        }
    }))
    .await;
    signup(&app, "a@example.com").await;
    let t = token(&login(&app, "a@example.com").await);
    let post = |body: Value| {
        as_user(
            &app,
            &t,
            Method::POST,
            "/v1/collections/drafts/records",
            Some(body),
        )
    };
    let r = post(json!({"title": "ok", "status": "draft"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let path = format!(
        "/v1/collections/drafts/records/{}",
        r.body["id"].as_str().unwrap()
    );
    for body in [
        json!({"title": "no", "status": "published"}),
        json!({"title": "no status"}),
        json!({"title": "null", "status": null}),
    ] {
        let r = post(body.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{body}: {}", r.text);
        assert_eq!(r.problem_code(), "forbidden");
    }
    let r = app.get("/v1/collections/drafts/records").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["totalItems"], 1, "{}", r.text);

    // Update: the same rule over the PATCH body.
    let r = as_user(
        &app,
        &t,
        Method::PATCH,
        &path,
        Some(json!({"status": "published"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.problem_code(), "forbidden");
    let r = app.get(&path).await;
    assert_eq!(r.body["status"], "draft", "{}", r.text);
    assert_eq!(r.body["version"], 1);
    let r = as_user(
        &app,
        &t,
        Method::PATCH,
        &path,
        Some(json!({"title": "renamed", "status": "draft"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["title"], "renamed");
    app.shutdown().await;
}
