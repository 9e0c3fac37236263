//! Regression tests for the findings of the security review (issue 9), over HTTP where
//! the finding shows there, through a real `lintel serve` process where it concerns
//! start-up and configuration.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{PW, SmtpSink, TestApp, signup};
const HOUR_MS: i64 = 3600 * 1000;
const DAY_MS: i64 = 24 * HOUR_MS;

fn with_mail(c: &mut lintel::Config, port: u16) {
    c.mail.smtp_host = "127.0.0.1".into();
    c.mail.smtp_port = port;
    c.mail.smtp_tls = "none".into();
}

async fn login(app: &TestApp, email: &str, password: &str) -> crate::common::Reply {
    app.json(
        Method::POST,
        "/v1/auth/login",
        json!({"email": email, "password": password}),
    )
    .await
}

async fn count(app: &TestApp, table: &str) -> i64 {
    let state = &app.running().state;
    let mut sql = lintel::store::Sql::new(state.store.dialect());
    sql.push("SELECT COUNT(*) FROM ").push(table);
    let rows = state.store.query_rows(sql).await.unwrap();
    rows[0][0].as_i64().unwrap()
}

/// Lets the background writes (audit rows, mail) of the requests so far finish.
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
async fn discovery_only_provider() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let doc = json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/jwks"),
    });
    let router = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json(doc) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    base
}

const TABLES: [&str; 6] = [
    "_lintel_oauth_states",
    "_lintel_auth_tokens",
    "_lintel_sessions",
    "_lintel_refresh_tokens",
    "_lintel_idempotency",
    "_lintel_audit",
];

async fn counts(app: &TestApp) -> Vec<i64> {
    let mut out = Vec::new();
    for t in TABLES {
        out.push(count(app, t).await);
    }
    out
}

async fn purge_at(app: &TestApp, at_ms: i64) -> lintel::store::purge::PurgeReport {
    let state = &app.running().state;
    let policy = lintel::store::purge::PurgePolicy::from_config(&state.config);
    lintel::store::purge::purge_expired(state.store.as_ref(), &policy, at_ms, || true)
        .await
        .unwrap()
}

#[tokio::test]
async fn expired_rows_of_every_kind_are_purged() {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let issuer = discovery_only_provider().await;
    let app = TestApp::spawn_with(|c| {
        // Purged by hand below, at chosen times.
        c.store.purge_interval_secs = 0;
        with_mail(c, port);
        c.auth.oidc.insert(
            "stub".into(),
            lintel::config::OidcProviderConfig {
                issuer,
                client_id: "lintel".into(),
                collection: "users".into(),
                ..Default::default()
            },
        );
    })
    .await;
    app.collection(json!({"name": "notes", "fields": [{"name": "body", "type": "text"}]}))
        .await;
    // A session with a used and a current refresh token.
    signup(&app, "a@example.com").await;
    let l = login(&app, "a@example.com", PW).await;
    assert_eq!(l.status, StatusCode::OK, "{}", l.text);
    let r = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": l.body["refreshToken"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // A mailed single-use token.
    let r = app
        .json(
            Method::POST,
            "/v1/auth/request-password-reset",
            json!({"email": "a@example.com"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    sink.message(0).await;
    // An OpenID Connect state, left by an anonymous caller who never came back.
    let r = app.get("/v1/auth/oidc/stub/start").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    // An idempotency key.
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/notes/records")
                .header("idempotency-key", "k1")
                .json(&json!({"body": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    settle(&app).await;

    let before = counts(&app).await;
    assert_eq!(before[..5], [1, 1, 1, 2, 1], "{before:?}");
    assert!(before[5] >= 3, "audit rows: {before:?}");
    let now = lintel::clock::now_ms();
    assert_eq!(purge_at(&app, now).await.total(), 0, "nothing expired yet");
    assert_eq!(counts(&app).await, before);

    // Two hours on: sign-in states (10 minutes) and mailed tokens (1 hour) are gone.
    let r = purge_at(&app, now + 2 * HOUR_MS).await;
    assert_eq!(
        (r.oauth_states, r.auth_tokens, r.total()),
        (1, 1, 2),
        "{r:?}"
    );
    // Two days on: idempotency keys (24 hours).
    let r = purge_at(&app, now + 2 * DAY_MS).await;
    assert_eq!((r.idempotency, r.total()), (1, 1), "{r:?}");
    // A month on: sessions and refresh tokens (30 days), the events and the finished
    // mail job (7 days).
    let r = purge_at(&app, now + 31 * DAY_MS).await;
    assert_eq!(
        (r.sessions, r.refresh_tokens, r.jobs, r.total() - r.events),
        (1, 2, 1, 4),
        "{r:?}"
    );
    assert!(r.events > 0, "{r:?}");
    assert_eq!(
        count(&app, "_lintel_audit").await,
        before[5],
        "audit rows are kept"
    );
    // Past the audit retention (90 days).
    let r = purge_at(&app, now + 91 * DAY_MS).await;
    assert_eq!(r.audit as i64, before[5], "{r:?}");
    assert_eq!(counts(&app).await, vec![0; 6]);
    app.shutdown().await;
}

#[tokio::test]
async fn the_purge_runs_on_its_own_schedule() {
    let app = TestApp::spawn_with(|c| {
        c.store.purge_interval_secs = 1;
        c.idempotency.ttl_secs = 1;
    })
    .await;
    app.collection(json!({"name": "notes", "fields": [{"name": "body", "type": "text"}]}))
        .await;
    let r = app
        .send(
            app.req(Method::POST, "/v1/collections/notes/records")
                .header("idempotency-key", "k1")
                .json(&json!({"body": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(count(&app, "_lintel_idempotency").await, 1);
    let mut left = 1;
    for _ in 0..100 {
        left = count(&app, "_lintel_idempotency").await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the expired key was purged without help");
    app.shutdown().await;
}

#[tokio::test]
async fn repeated_rule_denials_share_one_audit_row_with_a_count() {
    let app = TestApp::spawn().await;
    // No rules: superusers only.
    app.collection(json!({
        "name": "secret",
        "fields": [{"name": "body", "type": "text"}],
        "rules": {}
    }))
    .await;
    for _ in 0..7 {
        let r = app.get("/v1/collections/secret/records").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    }
    settle(&app).await;
    let rows = audit(&app, "rule_denied").await;
    assert_eq!(rows.len(), 1, "one row for seven denials: {rows:?}");
    assert_eq!(rows[0]["detail"]["action"], "list");
    // The count is written when the window closes (here: forced, as at shutdown).
    lintel::auth::audit::flush_denials(&app.running().state, true);
    settle(&app).await;
    let rows = audit(&app, "rule_denied").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["detail"], json!({"action": "list", "count": 7}));
    // Another action is another row.
    let r = app
        .json(
            Method::POST,
            "/v1/collections/secret/records",
            json!({"body": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    settle(&app).await;
    assert_eq!(audit(&app, "rule_denied").await.len(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn a_new_mailed_token_makes_the_earlier_ones_useless() {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let app = TestApp::spawn_with(|c| with_mail(c, port)).await;
    signup(&app, "a@example.com").await;
    let mut n = 0;
    let mut two = async |path: &str, token: Option<&str>, body: Value| {
        let mut tokens = Vec::new();
        for _ in 0..2 {
            let mut req = app.req(Method::POST, path).json(&body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = app.send(req).await;
            assert_eq!(r.status, StatusCode::NO_CONTENT, "{path}: {}", r.text);
            tokens.push(crate::common::mailed_token(&sink.message(n).await));
            n += 1;
        }
        tokens
    };
    let confirm = async |path: &str, body: Value| app.json(Method::POST, path, body).await;

    let v = two(
        "/v1/auth/request-verification",
        None,
        json!({"email": "a@example.com"}),
    )
    .await;
    let r = confirm("/v1/auth/confirm-verification", json!({"token": v[0]})).await;
    assert_eq!(r.field_error("token"), Some("invalid_token"), "{}", r.text);
    let r = confirm("/v1/auth/confirm-verification", json!({"token": v[1]})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    let p = two(
        "/v1/auth/request-password-reset",
        None,
        json!({"email": "a@example.com"}),
    )
    .await;
    let new_pw = "brand new passphrase";
    let r = confirm(
        "/v1/auth/confirm-password-reset",
        json!({"token": p[0], "password": new_pw}),
    )
    .await;
    assert_eq!(r.field_error("token"), Some("invalid_token"), "{}", r.text);
    let r = confirm(
        "/v1/auth/confirm-password-reset",
        json!({"token": p[1], "password": new_pw}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    let l = login(&app, "a@example.com", new_pw).await;
    let access = l.body["accessToken"].as_str().unwrap().to_owned();
    let c = two(
        "/v1/auth/request-email-change",
        Some(&access),
        json!({"newEmail": "b@example.com"}),
    )
    .await;
    let r = confirm(
        "/v1/auth/confirm-email-change",
        json!({"token": c[0], "password": new_pw}),
    )
    .await;
    assert_eq!(r.field_error("token"), Some("invalid_token"), "{}", r.text);
    let r = confirm(
        "/v1/auth/confirm-email-change",
        json!({"token": c[1], "password": new_pw}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn wrong_passwords_at_email_change_count_and_lock_like_sign_ins() {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let app = TestApp::spawn_with(|c| {
        with_mail(c, port);
        c.auth.lockout_threshold = 3;
    })
    .await;
    signup(&app, "a@example.com").await;
    let l = login(&app, "a@example.com", PW).await;
    let access = l.body["accessToken"].as_str().unwrap();
    let r = app
        .send(
            app.req(Method::POST, "/v1/auth/request-email-change")
                .bearer_auth(access)
                .json(&json!({"newEmail": "b@example.com"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let token = crate::common::mailed_token(&sink.message(0).await);
    let attempt = async |password: &str| {
        app.json(
            Method::POST,
            "/v1/auth/confirm-email-change",
            json!({"token": token, "password": password}),
        )
        .await
    };
    for _ in 0..3 {
        let r = attempt("wrong password!!").await;
        assert_eq!(r.field_error("password"), Some("invalid"), "{}", r.text);
    }
    // Locked, even with the right password; and signing in is locked too.
    let r = attempt(PW).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.problem_code(), "signin_locked");
    assert!(r.header("retry-after").is_some());
    let r = login(&app, "a@example.com", PW).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    settle(&app).await;
    assert_eq!(audit(&app, "email_change_failed").await.len(), 3);
    assert_eq!(audit(&app, "signin_locked").await.len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_short_admin_token_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path()).await;
    cfg.admin_token = lintel::config::Secret("thirty-one-characters-long-0123".into());
    assert_eq!(cfg.admin_token.0.len(), 31);
    let err = lintel::start(cfg).await.err().expect("start-up refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("at least 32"), "{msg}");
    crate::common::drop_database(dir.path()).await;
}

#[tokio::test]
async fn the_data_folder_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn_with(|c| c.data_dir = c.data_dir.join("srv").join("lintel")).await;
    for d in [
        app.dir.path().join("srv"),
        app.dir.path().join("srv/lintel"),
    ] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    app.shutdown().await;
}

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
async fn mail_being_sent_at_shutdown_is_sent_once_then_or_after_restart() {
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
    // Mail is a durable job: shutdown lets one being sent finish (within the grace
    // period) and leaves one not yet claimed in the queue for the next start.
    let dir = app.stop_keep_dir().await;
    let sent_before_restart = sink.count();
    let cfg = {
        let mut c = crate::common::config(dir.path()).await;
        with_mail(&mut c, port);
        c
    };
    let app = TestApp::start_in(dir, cfg).await;
    for _ in 0..200 {
        if sink.count() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        sink.count(),
        1,
        "sent exactly once (before the restart: {sent_before_restart})"
    );
    assert!(sink.message(0).await.contains("reset"), "the reset mail");
    // The mail job never shows its body (it holds the single-use link).
    let r = app.admin(Method::GET, "/v1/jobs?kind=mail", None).await;
    assert_eq!(r.body["totalItems"], 1, "{}", r.text);
    let job = &r.body["items"][0];
    assert_eq!(job["payload"]["to"], "a@example.com");
    assert!(job["payload"].get("body").is_none(), "{job}");
    app.shutdown().await;
}

/// `lintel serve` as a process, configured by the environment only.
pub(crate) struct Served {
    pub child: tokio::process::Child,
    pub addr: String,
    pub log: Vec<String>,
}

pub(crate) async fn serve(
    data: &std::path::Path,
    env: &[(&str, String)],
) -> Result<Served, (Option<i32>, Vec<String>)> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lintel"));
    cmd.arg("serve")
        .env_remove("LINTEL_TEST_DATABASE_URL")
        .env_remove("LINTEL_TEST_OIDC_DIR")
        .env("LINTEL_LOG__FORMAT", "json")
        .env("LINTEL_LISTEN", "127.0.0.1:0")
        .env("LINTEL_DATA_DIR", data)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("lintel serve started or stopped in time")
            .unwrap();
        let Some(line) = line else {
            let status = child.wait().await.unwrap();
            return Err((status.code(), log));
        };
        let addr = serde_json::from_str::<Value>(&line)
            .ok()
            .filter(|v| v["fields"]["message"] == "listening")
            .and_then(|v| v["fields"]["addr"].as_str().map(str::to_owned));
        log.push(line);
        if let Some(addr) = addr {
            // Keep reading, so the process never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(Served { child, addr, log });
        }
    }
}

fn write_secret(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test]
async fn environment_variables_configure_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    let (cert, key) = lintel::http::serve::write_dev_cert(&secrets).unwrap();
    let admin = "an-admin-token-given-in-a-file-0123456789";
    let jwt = "a-signing-secret-given-in-a-file-0123456789";
    let mut env = vec![
        ("LINTEL_TLS__CERT_FILE", cert.display().to_string()),
        ("LINTEL_TLS__KEY_FILE", key.display().to_string()),
        (
            "LINTEL_ADMIN_TOKEN_FILE",
            write_secret(&secrets, "admin", &format!("{admin}\n")),
        ),
        (
            "LINTEL_AUTH__JWT_SECRET_FILE",
            write_secret(&secrets, "jwt", jwt),
        ),
        ("LINTEL_AUTH__ARGON2_MEMORY_KIB", "1024".into()),
        ("LINTEL_AUTH__ARGON2_ITERATIONS", "1".into()),
        ("LINTEL_TYPO_KEY", "1".into()),
    ];
    // On PostgreSQL, the URL comes from a file too.
    let data = tmp.path().join("data");
    let db_dir = tempfile::tempdir().unwrap();
    if crate::common::postgres_url().is_some() {
        let url = crate::common::config(db_dir.path()).await.database_url.0;
        env.push((
            "LINTEL_DATABASE_URL_FILE",
            write_secret(&secrets, "db", &url),
        ));
    }
    let served = match serve(&data, &env).await {
        Ok(s) => s,
        Err((code, log)) => panic!("lintel serve exited ({code:?}): {log:#?}"),
    };
    let log = served.log.join("\n");
    assert!(
        served
            .log
            .iter()
            .any(|l| l.contains("unknown configuration key ignored") && l.contains("typo_key")),
        "the unknown variable is named: {log}"
    );
    let port = served.addr.rsplit(':').next().unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    // The TLS files were used (this is HTTPS), and the admin token came from its file.
    let r = client
        .get(format!("{base}/v1/collections"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client
        .get(format!("{base}/v1/collections"))
        .bearer_auth(crate::common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Access tokens are signed with the secret from its file.
    let r = client
        .post(format!("{base}/v1/collections/users/records"))
        .json(&json!({"email": "a@example.com", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let l: Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": "a@example.com", "password": PW}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(
        l["accessToken"].as_str().unwrap(),
        &jsonwebtoken::DecodingKey::from_secret(jwt.as_bytes()),
        &validation,
    );
    assert!(claims.is_ok(), "{claims:?}");
    let mut child = served.child;
    let _ = child.kill().await;
    crate::common::drop_database(db_dir.path()).await;

    // A database URL from a file is used (here one nobody answers at).
    let bad = write_secret(&secrets, "bad-db", "postgres://nobody@127.0.0.1:1/none\n");
    let admin_file = write_secret(&secrets, "admin", admin);
    let failed = serve(
        &tmp.path().join("data2"),
        &[
            ("LINTEL_DATABASE_URL_FILE", bad),
            ("LINTEL_ADMIN_TOKEN_FILE", admin_file),
        ],
    )
    .await;
    let Err((code, log)) = failed else {
        panic!("started without its database");
    };
    assert_eq!(code, Some(1));
    assert!(
        log.iter().any(|l| l.contains("PostgreSQL")),
        "the URL from the file was used: {log:#?}"
    );
}

#[tokio::test]
async fn an_admin_token_file_open_to_others_is_reported() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let token = "a-token-someone-wrote-0123456789abcdef";
    let file = data.join("admin-token");
    std::fs::write(&file, token).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let mut env = Vec::new();
    if crate::common::postgres_url().is_some() {
        let url = crate::common::config(db_dir.path()).await.database_url.0;
        env.push(("LINTEL_DATABASE_URL", url));
    }
    let served = match serve(&data, &env).await {
        Ok(s) => s,
        Err((code, log)) => panic!("lintel serve exited ({code:?}): {log:#?}"),
    };
    assert!(
        served
            .log
            .iter()
            .any(|l| l.contains("open to other users") && l.contains("admin-token")),
        "{:#?}",
        served.log
    );
    // A warning, not a refusal: the token works.
    let r = reqwest::Client::new()
        .get(format!("http://{}/v1/collections", served.addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut child = served.child;
    let _ = child.kill().await;
    crate::common::drop_database(db_dir.path()).await;
}
