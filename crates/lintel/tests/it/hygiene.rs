//! Regression tests for the findings of the security review (issue 9), over HTTP where
//! the finding shows there, through a real `lintel serve` process where it concerns
//! start-up and configuration.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{SmtpSink, TestApp};

const PW: &str = "correct horse battery";

fn with_mail(c: &mut lintel::Config, port: u16) {
    c.mail.smtp_host = "127.0.0.1".into();
    c.mail.smtp_port = port;
    c.mail.smtp_tls = "none".into();
}

async fn signup(app: &TestApp, email: &str) -> Value {
    let r = app
        .json(
            Method::POST,
            "/v1/collections/users/records",
            json!({"email": email, "password": PW}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body
}

async fn settle(app: &TestApp) {
    let left = app
        .running()
        .state
        .tasks
        .wait_idle(Duration::from_secs(10))
        .await;
    assert_eq!(left, 0, "background tasks still running");
}

async fn audit(app: &TestApp, event: &str) -> Vec<Value> {
    let r = app
        .admin(Method::GET, &format!("/v1/audit?event={event}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().unwrap().clone()
}

/// A stand-in identity provider: only its discovery document, enough to start a sign-in.
#[tokio::test]
async fn work_spawned_by_an_idempotent_request_keeps_its_request_id() {
    let app = TestApp::spawn().await;
    app.collection(json!({
        "name": "secret",
        "fields": [{"name": "body", "type": "text"}],
        "rules": {}
    }))
    .await;
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/secret/records")
                .header("idempotency-key", "k1")
                .header("x-request-id", "req-idem-000001")
                .json(&json!({"body": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(r.body["requestId"], "req-idem-000001");
    settle(&app).await;
    let rows = audit(&app, "rule_denied").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["requestId"], "req-idem-000001", "{rows:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_waits_for_mail_still_being_sent() {
    // The mail server takes its time to answer; the request does not wait for it.
    let sink = SmtpSink::start_slow(Duration::from_millis(700)).await;
    let port = sink.port;
    let app = TestApp::spawn_with(|c| with_mail(c, port)).await;
    signup(&app, "a@example.com").await;
    let r = app
        .json(
            Method::POST,
            "/v1/auth/request-password-reset",
            json!({"email": "a@example.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(sink.count(), 0, "still being sent");
    app.shutdown().await;
    assert_eq!(sink.count(), 1, "shutdown waited for the mail");
}

/// `lintel serve` as a process, configured by the environment only.
