//! Webhooks: signed deliveries of events (Standard Webhooks headers), retries with the
//! same webhook-id, secret rotation, the delivery log, the SSRF guard, and who may
//! manage them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{TestApp, api_key, bearer, login, signup, superuser_token};

/// One request the receiver got: its headers (lower-case names) and body.
#[derive(Debug, Clone)]
struct Got {
    headers: Vec<(String, String)>,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// A receiver on 127.0.0.1 answering the statuses in `answers` in turn (then 200),
/// each with `Retry-After: 1`.
async fn receiver(answers: Vec<u16>) -> (String, Arc<Mutex<Vec<Got>>>) {
    receiver_with(answers, "1").await
}

/// A receiver answering the statuses in `answers` in turn (then 200), each with this
/// `Retry-After`.
async fn receiver_with(answers: Vec<u16>, retry_after: &str) -> (String, Arc<Mutex<Vec<Got>>>) {
    let retry_after = retry_after.to_owned();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        let retry_after = retry_after;
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let (head, body) = loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).into_owned();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    let mut body = buf[i + 4..].to_vec();
                    while body.len() < len {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        body.extend_from_slice(&chunk[..n]);
                    }
                    break (head, body);
                }
            };
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let n = {
                let mut g = seen.lock().unwrap();
                g.push(Got {
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                g.len()
            };
            let status = answers.get(n - 1).copied().unwrap_or(200);
            let reply = format!(
                "HTTP/1.1 {status} X\r\nRetry-After: {retry_after}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    (format!("http://{addr}/hook"), got)
}

fn allow_local(c: &mut lintel::Config) {
    c.outbound.allow_hosts = vec!["127.0.0.1/32".into()];
    c.jobs.poll_ms = 20;
}

/// Checks a Standard Webhooks signature header against `secret`.
fn verifies(secret: &str, got: &Got) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let signed = format!(
        "{}.{}.{}",
        got.header("webhook-id"),
        got.header("webhook-timestamp"),
        got.body
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(signed.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    got.header("webhook-signature")
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(want.as_str()))
}

async fn wait_for(got: &Arc<Mutex<Vec<Got>>>, n: usize) -> Vec<Got> {
    for _ in 0..400 {
        if got.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    got.lock().unwrap().clone()
}

async fn notes(app: &TestApp) {
    app.collection(json!({"name": "notes", "fields": [{"name": "title", "type": "text"}, {"name": "n", "type": "integer"}]}))
        .await;
}

#[tokio::test]
async fn deliveries_are_signed_filtered_and_logged() {
    let (url, got) = receiver(vec![]).await;
    let app = TestApp::spawn_with(allow_local).await;
    notes(&app).await;
    app.create("notes", json!({"title": "before the webhook", "n": 1}))
        .await;
    let r = app
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["record.*"], "collection": "notes", "filter": "n > 5", "headers": {"x-team": "blue"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = r.body["id"].as_str().unwrap().to_owned();
    let shown = app
        .admin(Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert!(
        shown.body.get("secret").is_none(),
        "the secret is shown once"
    );
    assert!(!shown.text.contains(&secret));
    app.create("notes", json!({"title": "filtered out", "n": 2}))
        .await;
    let rec = app
        .create("notes", json!({"title": "wanted", "n": 9}))
        .await;
    let seen = wait_for(&got, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen_all = got.lock().unwrap().clone();
    assert_eq!(
        seen_all.len(),
        1,
        "only the new record that passes the filter: {seen:?}"
    );
    let g = &seen_all[0];
    assert!(verifies(&secret, g), "{g:?}");
    assert!(g.header("webhook-id").starts_with("msg_"));
    assert!(g.header("webhook-timestamp").parse::<i64>().is_ok());
    assert_eq!(g.header("x-team"), "blue");
    assert_eq!(g.header("content-type"), "application/json");
    let body: Value = serde_json::from_str(&g.body).unwrap();
    assert_eq!(body["type"], "record.created");
    assert!(body["timestamp"].as_str().is_some());
    assert_eq!(body["data"]["collection"], "notes");
    assert_eq!(body["data"]["record"]["id"], rec["id"]);
    assert_eq!(body["data"]["record"]["title"], "wanted");
    // The log says what the receiver saw.
    let mut log = Value::Null;
    for _ in 0..100 {
        log = app
            .admin(Method::GET, &format!("/v1/webhooks/{id}/deliveries"), None)
            .await
            .body;
        if log["items"][0]["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(log["totalItems"], 1, "{log}");
    let d = &log["items"][0];
    assert_eq!(d["webhookId"], g.header("webhook-id"));
    assert_eq!(d["type"], "record.created");
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["attempts"][0]["responseStatus"], 200);
    assert_eq!(d["attempts"][0]["response"], "ok");
    app.shutdown().await;
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_delivery_once_with_one_id() {
    let (url, got) = receiver(vec![503, 500]).await;
    let app = TestApp::spawn_clocked(allow_local).await;
    notes(&app).await;
    let r = app
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["record.created"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    app.create("notes", json!({"title": "x"})).await;
    wait_for(&got, 1).await;
    // 503 with Retry-After: 1 replaces the first step (5 s): one second on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.advance(Duration::from_secs(1));
    wait_for(&got, 2).await;
    // The 500 waits the schedule's second step: five minutes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.advance(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(got.lock().unwrap().len(), 2, "not before its time");
    app.advance(Duration::from_secs(240));
    let seen = wait_for(&got, 3).await;
    assert_eq!(seen.len(), 3);
    let ids: Vec<&str> = seen.iter().map(|g| g.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one webhook-id across attempts: {ids:?}"
    );
    let mut log = Value::Null;
    for _ in 0..100 {
        log = app
            .admin(Method::GET, &format!("/v1/webhooks/{id}/deliveries"), None)
            .await
            .body;
        if log["items"][0]["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let statuses: Vec<i64> = log["items"][0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["responseStatus"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 500, 200], "{log}");
    assert_eq!(log["totalItems"], 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one() {
    let (url, got) = receiver(vec![]).await;
    let app = TestApp::spawn_with(allow_local).await;
    let r = app
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["webhook.test"]})),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let old = r.body["secret"].as_str().unwrap().to_owned();
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let new = r.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    let r = app
        .admin(Method::POST, &format!("/v1/webhooks/{id}/test"), None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let seen = wait_for(&got, 1).await;
    let g = &seen[0];
    assert_eq!(g.header("webhook-signature").split(' ').count(), 2, "{g:?}");
    assert!(verifies(&old, g) && verifies(&new, g));
    let body: Value = serde_json::from_str(&g.body).unwrap();
    assert_eq!(body["type"], "webhook.test");
    // Retrying the delivery by hand sends it again with the same id.
    let delivery = g.header("webhook-id").to_owned();
    for _ in 0..100 {
        let log = app
            .admin(Method::GET, &format!("/v1/webhooks/{id}/deliveries"), None)
            .await
            .body;
        if log["items"][0]["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/webhooks/{id}/deliveries/{delivery}/retry"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let seen = wait_for(&got, 2).await;
    assert_eq!(seen[1].header("webhook-id"), delivery);
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/webhooks/{id}/deliveries/msg_nope/retry"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.shutdown().await;
}

#[tokio::test]
async fn internal_destinations_are_refused_unless_allowed() {
    let app = TestApp::spawn().await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://10.0.0.1/",
        "http://192.168.1.10/",
        "http://169.254.169.254/latest",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://localhost:8080/",
    ] {
        let r = app
            .admin(
                Method::POST,
                "/v1/webhooks",
                Some(json!({"url": url, "events": ["record.created"]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}: {}", r.text);
        assert_eq!(r.field_error("url"), Some("refused_destination"), "{url}");
    }
    for url in ["ftp://example.com/", "not a url", "file:///etc/passwd"] {
        let r = app
            .admin(
                Method::POST,
                "/v1/webhooks",
                Some(json!({"url": url, "events": ["record.created"]})),
            )
            .await;
        assert_eq!(r.field_error("url"), Some("invalid"), "{url}: {}", r.text);
    }
    // The PATCH of a url is checked the same way.
    let r = app
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": "https://example.com/hook", "events": ["record.created"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap();
    let r = app
        .admin(
            Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(json!({"url": "http://[::1]:80/"})),
        )
        .await;
    assert_eq!(
        r.field_error("url"),
        Some("refused_destination"),
        "{}",
        r.text
    );
    for (body, field) in [
        (
            json!({"url": "https://example.com", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://example.com", "events": ["Record Created"]}),
            "events",
        ),
        (
            json!({"url": "https://example.com", "events": ["record.created"], "collection": "nope"}),
            "collection",
        ),
        (
            json!({"url": "https://example.com", "events": ["record.created"], "filter": "n > 1"}),
            "filter",
        ),
        (
            json!({"url": "https://example.com", "events": ["record.created"], "headers": {"webhook-id": "x"}}),
            "headers",
        ),
    ] {
        let r = app
            .admin(Method::POST, "/v1/webhooks", Some(body.clone()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(r.field_error(field).is_some(), "{body}: {}", r.text);
    }
    app.shutdown().await;
    // Allowed through outbound.allow_hosts.
    let app = TestApp::spawn_with(|c| {
        c.outbound.allow_hosts = vec!["127.0.0.1/32".into(), "::1/128".into()]
    })
    .await;
    for url in ["http://127.0.0.1:9/x", "http://[::1]:9/x"] {
        let r = app
            .admin(
                Method::POST,
                "/v1/webhooks",
                Some(json!({"url": url, "events": ["record.created"]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{url}: {}", r.text);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn only_superusers_manage_webhooks() {
    let app = TestApp::spawn().await;
    let body = json!({"url": "https://example.com/hook", "events": ["record.created"]});
    let r = app.json(Method::POST, "/v1/webhooks", body.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    signup(&app, "u@example.com").await;
    let user = crate::common::access(&login(&app, "u@example.com").await);
    let r = bearer(
        &app,
        &user,
        Method::POST,
        "/v1/webhooks",
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = bearer(&app, &user, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let root = superuser_token(&app).await;
    let reader = api_key(&app, &root, json!(["webhooks:read"])).await;
    let r = bearer(
        &app,
        &reader,
        Method::POST,
        "/v1/webhooks",
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.problem_code(), "insufficient_scope");
    let writer = api_key(&app, &root, json!(["webhooks:write", "webhooks:read"])).await;
    let r = bearer(&app, &writer, Method::POST, "/v1/webhooks", Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = bearer(&app, &reader, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let id = r.body["items"][0]["id"].as_str().unwrap();
    let r = bearer(
        &app,
        &writer,
        Method::DELETE,
        &format!("/v1/webhooks/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = bearer(
        &app,
        &reader,
        Method::GET,
        &format!("/v1/webhooks/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.shutdown().await;
}

/// Verifies a delivery with the reference library (Python `standardwebhooks`).
fn reference_verifies(python: &str, secret: &str, got: &Got) -> Result<(), String> {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhooks/verify.py");
    let headers: serde_json::Map<String, Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .map(|h| ((*h).to_owned(), Value::String(got.header(h).to_owned())))
            .collect();
    let input = json!({ "secret": secret, "headers": headers, "body": got.body }).to_string();
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {python}: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

// The reference verifier (PyPI `standardwebhooks`, pinned in tests/webhooks) accepts
// every delivery, with the current secret and, during a rotation, with the old one;
// a tampered body is refused. `.ci/run` installs it and sets WEBHOOK_VERIFIER_PYTHON.
#[tokio::test]
#[ignore = "needs Python with standardwebhooks (WEBHOOK_VERIFIER_PYTHON)"]
async fn the_reference_verifier_accepts_every_delivery() {
    let python = std::env::var("WEBHOOK_VERIFIER_PYTHON")
        .expect("WEBHOOK_VERIFIER_PYTHON names a Python with standardwebhooks installed");
    let (url, got) = receiver(vec![]).await;
    let app = TestApp::spawn_with(allow_local).await;
    notes(&app).await;
    let r = app
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["record.*"]})),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let first = r.body["secret"].as_str().unwrap().to_owned();
    let rec = app
        .create("notes", json!({"title": "héllo \"quoted\" ✓", "n": 1}))
        .await;
    let seen = wait_for(&got, 1).await;
    reference_verifies(&python, &first, &seen[0]).unwrap();
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            None,
        )
        .await;
    let second = r.body["secret"].as_str().unwrap().to_owned();
    app.json(
        Method::PATCH,
        &format!(
            "/v1/collections/notes/records/{}",
            rec["id"].as_str().unwrap()
        ),
        json!({"n": 2}),
    )
    .await;
    let seen = wait_for(&got, 2).await;
    reference_verifies(&python, &second, &seen[1]).unwrap();
    reference_verifies(&python, &first, &seen[1]).unwrap();
    let mut tampered = seen[1].clone();
    tampered.body = tampered.body.replace("\"n\":2", "\"n\":3");
    assert!(reference_verifies(&python, &second, &tampered).is_err());
    app.shutdown().await;
}

// A `kill -9` while an attempt waits on the receiver loses nothing: after the restart
// the attempt's lease runs out and the delivery is sent again, with the same id.
#[tokio::test]
async fn kill_9_mid_delivery_loses_no_delivery() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The first request is never answered (the process dies waiting); later ones are.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = ids.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let id = head
                    .lines()
                    .find_map(|l| l.strip_prefix("webhook-id:").map(|v| v.trim().to_owned()))
                    .unwrap_or_default();
                let first = {
                    let mut g = seen.lock().unwrap();
                    g.push(id);
                    g.len() == 1
                };
                if first {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut env = vec![
        ("LINTEL_ADMIN_TOKEN", crate::common::ADMIN_TOKEN.to_owned()),
        ("LINTEL_JOBS__LEASE_SECONDS", "2".to_owned()),
        ("LINTEL_JOBS__POLL_MS", "50".to_owned()),
        ("LINTEL_OUTBOUND__ALLOW_HOSTS", "[127.0.0.1/32]".to_owned()),
    ];
    let db_dir = tempfile::tempdir().unwrap();
    if crate::common::postgres_url().is_some() {
        let url = crate::common::config(db_dir.path()).await.database_url.0;
        env.push(("LINTEL_DATABASE_URL", url));
    }
    let served = crate::hygiene::serve(&data, &env)
        .await
        .unwrap_or_else(|(c, l)| panic!("{c:?} {l:#?}"));
    // No server of this process has installed the TLS provider the client needs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let admin = |base: &str, m: Method, path: &str, body: Option<Value>| {
        let mut r = client
            .request(m, format!("{base}{path}"))
            .bearer_auth(crate::common::ADMIN_TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send()
    };
    let base = format!("http://{}", served.addr);
    let r = admin(&base, Method::POST, "/v1/collections", Some(json!({"name": "notes", "rules": {"create": ""}, "fields": [{"name": "title", "type": "text"}]})))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r: Value = admin(
        &base,
        Method::POST,
        "/v1/webhooks",
        Some(json!({"url": format!("http://{addr}/hook"), "events": ["record.created"]})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let hook = r["id"].as_str().unwrap().to_owned();
    let r = admin(
        &base,
        Method::POST,
        "/v1/collections/notes/records",
        Some(json!({"title": "x"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    for _ in 0..400 {
        if !ids.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        ids.lock().unwrap().len(),
        1,
        "the first attempt is in flight"
    );
    let mut child = served.child;
    child.kill().await.unwrap();
    let _ = child.wait().await;
    let served = crate::hygiene::serve(&data, &env)
        .await
        .unwrap_or_else(|(c, l)| panic!("{c:?} {l:#?}"));
    let base = format!("http://{}", served.addr);
    let mut log = Value::Null;
    for _ in 0..400 {
        log = admin(
            &base,
            Method::GET,
            &format!("/v1/webhooks/{hook}/deliveries"),
            None,
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        if log["items"][0]["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log["items"][0]["status"], "succeeded", "{log}");
    assert_eq!(log["totalItems"], 1);
    let seen = ids.lock().unwrap().clone();
    assert!(seen.len() >= 2, "sent again after the restart: {seen:?}");
    assert!(
        seen.iter().all(|i| *i == seen[0] && i.starts_with("msg_")),
        "one webhook-id: {seen:?}"
    );
    assert_eq!(log["items"][0]["webhookId"], seen[0].as_str());
    let mut child = served.child;
    let _ = child.kill().await;
    crate::common::drop_database(db_dir.path()).await;
}

/// The deliveries' log of webhook `id`, once `ready` holds for it (or after 2.5 s).
async fn log_when(app: &TestApp, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let mut log = Value::Null;
    for _ in 0..100 {
        log = app
            .admin(Method::GET, &format!("/v1/webhooks/{id}/deliveries"), None)
            .await
            .body;
        if ready(&log) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    log
}

#[tokio::test]
async fn ordered_deliveries_go_in_seq_order_behind_a_failing_head() {
    let (url, got) = receiver(vec![503, 503]).await;
    let app = TestApp::spawn_clocked(allow_local).await;
    notes(&app).await;
    let r = app
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["record.created"], "ordered": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["ordered"], true);
    let id = r.body["id"].as_str().unwrap().to_owned();
    for n in 0..4 {
        app.create("notes", json!({"title": "x", "n": n})).await;
    }
    wait_for(&got, 1).await;
    // The head failed: the three behind it wait, however long.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        got.lock().unwrap().len(),
        1,
        "a failing head holds the rest"
    );
    let log = log_when(&app, &id, |l| l["totalItems"] == 4).await;
    let waiting = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["attempts"].as_array().unwrap().is_empty())
        .count();
    assert_eq!(waiting, 3, "{log}");
    // A waiting delivery cannot jump the queue by hand.
    let behind = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["attempts"].as_array().unwrap().is_empty())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/webhooks/{id}/deliveries/{behind}/retry"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.problem_code(), "delivery_waiting");
    app.advance(Duration::from_secs(1));
    wait_for(&got, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got.lock().unwrap().len(), 2);
    app.advance(Duration::from_secs(1));
    let seen = wait_for(&got, 6).await;
    assert_eq!(seen.len(), 6, "{seen:?}");
    let seqs: Vec<i64> = seen
        .iter()
        .map(|g| {
            serde_json::from_str::<Value>(&g.body).unwrap()["data"]["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs[0], seqs[1]);
    assert_eq!(seqs[1], seqs[2]);
    assert!(
        seqs[2..].windows(2).all(|w| w[0] < w[1]),
        "in seq order, each once: {seqs:?}"
    );
    let ns: Vec<i64> = seen[2..]
        .iter()
        .map(|g| {
            serde_json::from_str::<Value>(&g.body).unwrap()["data"]["record"]["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ns, [0, 1, 2, 3]);
    assert_eq!(seen[0].header("webhook-id"), seen[2].header("webhook-id"));
    let log = log_when(&app, &id, |l| {
        l["items"]
            .as_array()
            .is_some_and(|i| i.iter().all(|d| d["status"] == "succeeded"))
    })
    .await;
    assert!(
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "succeeded"),
        "{log}"
    );
    // Turned off, deliveries go in parallel again.
    let p = app
        .admin(
            Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(json!({"ordered": false})),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert_eq!(p.body["ordered"], false);
    app.create("notes", json!({"title": "after", "n": 4})).await;
    assert_eq!(wait_for(&got, 7).await.len(), 7);
    app.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_failing_for_five_days_is_disabled() {
    let (url, got) = receiver(vec![500; 50]).await;
    let app = TestApp::spawn_clocked(allow_local).await;
    notes(&app).await;
    let r = app
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["record.created"]})),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    app.create("notes", json!({"title": "x"})).await;
    wait_for(&got, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.advance(Duration::from_secs(5));
    wait_for(&got, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let w = app
        .admin(Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(w.body["enabled"], true, "failing, not yet for five days");
    app.advance(Duration::from_secs(5 * 24 * 3600));
    wait_for(&got, 3).await;
    let mut w = Value::Null;
    for _ in 0..100 {
        w = app
            .admin(Method::GET, &format!("/v1/webhooks/{id}"), None)
            .await
            .body;
        if w["enabled"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(w["enabled"], false, "{w}");
    // The event is readable once the log's end has moved past it.
    let mut ev = app
        .admin(Method::GET, "/v1/events?types=webhook.disabled", None)
        .await;
    for _ in 0..100 {
        if ev.body["items"].as_array().is_some_and(|i| !i.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        ev = app
            .admin(Method::GET, "/v1/events?types=webhook.disabled", None)
            .await;
    }
    assert_eq!(ev.status, StatusCode::OK, "{}", ev.text);
    let items = ev.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", ev.text);
    assert_eq!(items[0]["recordId"], id.as_str());
    let log = log_when(&app, &id, |l| l["items"][0]["status"] == "failed").await;
    assert_eq!(log["items"][0]["status"], "failed", "{log}");
    assert!(log["items"][0]["nextAttemptAt"].is_null(), "{log}");
    // Disabled: new events are not delivered.
    app.create("notes", json!({"title": "y"})).await;
    app.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(got.lock().unwrap().len(), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn retry_after_replaces_the_next_step_clamped_to_a_day() {
    let (url, got) = receiver_with(vec![429], "999999").await;
    let app = TestApp::spawn_clocked(allow_local).await;
    notes(&app).await;
    let r = app
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["record.created"]})),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    app.create("notes", json!({"title": "x"})).await;
    wait_for(&got, 1).await;
    let log = log_when(&app, &id, |l| {
        l["items"][0]["attempts"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    })
    .await;
    let d = &log["items"][0];
    assert_eq!(d["status"], "pending", "{log}");
    let at = lintel::clock::ts_millis(d["attempts"][0]["at"].as_str().unwrap()).unwrap();
    let next = lintel::clock::ts_millis(d["nextAttemptAt"].as_str().unwrap()).unwrap();
    assert_eq!(next - at, 24 * 3600 * 1000, "{log}");
    // Not a minute before.
    app.advance(Duration::from_secs(24 * 3600 - 60));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(got.lock().unwrap().len(), 1);
    app.advance(Duration::from_secs(60));
    assert_eq!(wait_for(&got, 2).await.len(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_head_fails_and_the_next_ordered_delivery_goes() {
    let (url, got) = receiver(vec![500; 3]).await;
    let app = TestApp::spawn_clocked(allow_local).await;
    notes(&app).await;
    let r = app
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["record.created"], "ordered": true})),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    for n in 0..2 {
        app.create("notes", json!({"title": "x", "n": n})).await;
    }
    wait_for(&got, 1).await;
    // The head failed and waits for its retry; an admin cancels its job.
    let head = log_when(&app, &id, |l| {
        l["items"].as_array().is_some_and(|i| {
            i.iter()
                .any(|d| !d["attempts"].as_array().unwrap().is_empty())
        })
    })
    .await;
    let head_id = head["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| !d["attempts"].as_array().unwrap().is_empty())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let jobs = app
        .admin(Method::GET, "/v1/jobs?kind=webhook&status=retrying", None)
        .await;
    let job = jobs.body["items"][0]["id"].as_str().unwrap().to_owned();
    let c = app
        .admin(Method::POST, &format!("/v1/jobs/{job}/cancel"), None)
        .await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);
    // The next delivery goes (its first attempt, answered 500 again) without waiting.
    let seen = wait_for(&got, 2).await;
    assert_eq!(seen.len(), 2, "the queue moved on");
    let log = log_when(&app, &id, |l| {
        l["items"].as_array().is_some_and(|i| {
            i.iter()
                .any(|d| d["id"] == head_id.as_str() && d["status"] == "failed")
        })
    })
    .await;
    assert!(
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == head_id.as_str() && d["status"] == "failed"),
        "{log}"
    );
    app.shutdown().await;
}
