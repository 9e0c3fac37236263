//! Expiry on a server whose clock the test moves: lifetimes of one second, a working
//! control before, and the clock stepped past them (no sleeping).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{PW, SmtpSink, TestApp, access, bearer, login, mailed_token, signup};

async fn cookie(app: &TestApp, email: &str) -> String {
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": email, "password": PW, "mode": "cookie"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("lintel_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

async fn me(app: &TestApp, cookie: &str) -> crate::common::Reply {
    app.send(app.req(Method::GET, "/v1/auth/me").header("cookie", cookie))
        .await
}

// Cookie sessions end after `session_idle_secs` unused and after
// `session_absolute_secs` in all; API keys at their `expiresAt`; mailed tokens after
// `email_token_ttl_secs`.
#[tokio::test]
async fn sessions_api_keys_and_mailed_tokens_expire() {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let idle = TestApp::spawn_clocked(|c| {
        c.auth.session_idle_secs = 1;
        c.auth.email_token_ttl_secs = 1;
        c.mail.smtp_host = "127.0.0.1".into();
        c.mail.smtp_port = port;
        c.mail.smtp_tls = "none".into();
        c.mail.from = "Lintel <no-reply@example.test>".into();
    })
    .await;
    let absolute = TestApp::spawn_clocked(|c| c.auth.session_absolute_secs = 1).await;
    signup(&idle, "a@example.com").await;
    signup(&absolute, "a@example.com").await;

    let idle_cookie = cookie(&idle, "a@example.com").await;
    let absolute_cookie = cookie(&absolute, "a@example.com").await;
    // An API key that expires at the next whole second of the server's clock
    // (expiresAt has second precision).
    let t = access(&login(&idle, "a@example.com").await);
    let now_ms = idle
        .clock
        .as_ref()
        .map(|c| lintel::clock::Clock::now_ms(&**c))
        .unwrap();
    let at_secs = now_ms / 1000 + 1;
    let expires_at = time::OffsetDateTime::from_unix_timestamp(at_secs)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let r = bearer(
        &idle,
        &t,
        Method::POST,
        "/v1/auth/api-keys",
        Some(json!({"name": "brief", "scopes": ["users:read"], "expiresAt": expires_at})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.body["key"].as_str().unwrap().to_owned();
    let r = idle
        .json(
            Method::POST,
            "/v1/auth/request-verification",
            json!({"email": "a@example.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let token = mailed_token(&sink.message(0).await);

    // Controls: everything works before its time.
    assert_eq!(me(&idle, &idle_cookie).await.status, StatusCode::OK);
    assert_eq!(me(&absolute, &absolute_cookie).await.status, StatusCode::OK);
    let r = bearer(
        &idle,
        &key,
        Method::GET,
        "/v1/collections/users/records",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Past every lifetime above: two seconds on both servers' clocks.
    idle.advance(Duration::from_secs(2));
    absolute.advance(Duration::from_secs(2));

    let r = me(&idle, &idle_cookie).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "idle: {}", r.text);
    let r = me(&absolute, &absolute_cookie).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "absolute: {}", r.text);
    let r = bearer(
        &idle,
        &key,
        Method::GET,
        "/v1/collections/users/records",
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "expired key: {}",
        r.text
    );
    assert_eq!(r.problem_code(), "invalid_token");
    let r = idle
        .json(
            Method::POST,
            "/v1/auth/confirm-verification",
            json!({"token": token}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.field_error("token"), Some("invalid_token"));
    let r = idle
        .admin(Method::GET, "/v1/collections/users/records", None)
        .await;
    assert_eq!(r.body["items"][0]["verified"], false, "{}", r.text);
    idle.shutdown().await;
    absolute.shutdown().await;
}

#[tokio::test]
async fn a_set_null_delete_stamps_the_unlinked_records_with_the_servers_clock() {
    let app = TestApp::spawn_clocked(|_| {}).await;
    app.collection(json!({"name": "authors", "fields": [{"name": "name", "type": "text"}]}))
        .await;
    app.collection(json!({
        "name": "posts",
        "fields": [{"name": "author", "type": "relation", "collection": "authors"}],
    }))
    .await;
    let author = app.create("authors", json!({"name": "Ann"})).await;
    let post = app.create("posts", json!({"author": author["id"]})).await;
    app.advance(Duration::from_secs(3600));
    let del = app
        .send(app.req(
            Method::DELETE,
            &format!(
                "/v1/collections/authors/records/{}",
                author["id"].as_str().unwrap()
            ),
        ))
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
    let after = app
        .get(&format!(
            "/v1/collections/posts/records/{}",
            post["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(after.body["author"], Value::Null);
    assert_eq!(after.body["version"], 2);
    let hours = |v: &Value| -> i64 {
        let t = v.as_str().unwrap();
        // RFC 3339: the hour is the two digits after 'T'.
        t[11..13].parse::<i64>().unwrap() * 60 + t[14..16].parse::<i64>().unwrap()
    };
    let moved = (hours(&after.body["updated"]) - hours(&post["updated"])).rem_euclid(24 * 60);
    assert_eq!(moved, 60, "updated follows the server's clock, an hour on");
}
