//! Single sign-on against a real OpenID provider: the npm package `oidc-provider`
//! (a certified implementation), started here from `tests/oidc-provider`. Needs
//! Node.js and `npm ci` in that folder; `.ci/run` does both and points
//! `LINTEL_TEST_OIDC_DIR` at it. The tests of the browser binding and of the
//! discovery document's origins need no real provider and run with the suite.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::common::{Reply, TestApp, config};

struct Provider {
    issuer: String,
    child: tokio::process::Child,
}

async fn provider(redirect: &str) -> Provider {
    let dir = std::env::var("LINTEL_TEST_OIDC_DIR").expect(
        "LINTEL_TEST_OIDC_DIR must name crates/lintel/tests/oidc-provider after `npm ci` there",
    );
    let mut child = tokio::process::Command::new("node")
        .arg("oidc-provider.mjs")
        .current_dir(&dir)
        .env("PORT", "0")
        .env("CLIENT_ID", "lintel")
        .env("CLIENT_SECRET", "s3cretForTests")
        .env("REDIRECT_URI", redirect)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let out = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(out).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("the provider starts")
        .unwrap()
        .unwrap();
    let issuer = line.strip_prefix("READY ").expect("READY line").to_owned();
    Provider { issuer, child }
}

/// Follows the provider's login to the redirect back to Lintel; returns that URL.
async fn sign_in_at_provider(browser: &reqwest::Client, start: &str, login: &str) -> String {
    let r = browser.get(start).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "start redirects");
    let mut url = r.headers()["location"].to_str().unwrap().to_owned();
    let mut posted = false;
    for _ in 0..10 {
        let r = browser.get(&url).send().await.unwrap();
        let base = reqwest::Url::parse(&url).unwrap();
        if r.status() == StatusCode::OK && !posted {
            // The login form.
            let r = browser
                .post(&url)
                .form(&[("prompt", "login"), ("login", login), ("password", "x")])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::SEE_OTHER);
            posted = true;
            url = base
                .join(r.headers()["location"].to_str().unwrap())
                .unwrap()
                .to_string();
            continue;
        }
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "at {url}");
        let next = base
            .join(r.headers()["location"].to_str().unwrap())
            .unwrap()
            .to_string();
        if next.contains("/v1/auth/oidc/") {
            return next;
        }
        url = next;
    }
    panic!("the provider never sent the browser back");
}

/// A browser: keeps cookies, does not follow redirects.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn provider_config(issuer: &str) -> lintel::config::OidcProviderConfig {
    lintel::config::OidcProviderConfig {
        issuer: issuer.to_owned(),
        client_id: "lintel".into(),
        client_secret: lintel::config::Secret("s3cretForTests".into()),
        scopes: vec!["profile".into()],
        collection: "users".into(),
        ..Default::default()
    }
}

/// Lintel with the real provider configured as `test`.
async fn with_real_provider() -> (Provider, TestApp) {
    // Bound now and handed to Lintel: the provider must know the callback's port
    // before Lintel starts, and nothing else can take the port in between.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let callback = format!("http://127.0.0.1:{port}/v1/auth/oidc/test/callback");
    let op = provider(&callback).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path()).await;
    cfg.auth.public_url = format!("http://127.0.0.1:{port}");
    cfg.auth
        .oidc
        .insert("test".into(), provider_config(&op.issuer));
    let app = TestApp::start_on(dir, cfg, listener).await;
    (op, app)
}

async fn fetch(client: &reqwest::Client, url: &str) -> Reply {
    let res = client.get(url).send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

fn set_cookies(r: &Reply) -> Vec<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
#[ignore = "needs Node.js and the oidc-provider package (LINTEL_TEST_OIDC_DIR)"]
async fn sign_in_with_an_openid_provider() {
    let (mut op, app) = with_real_provider().await;
    let browser = browser();
    let start = app.url("/v1/auth/oidc/test/start");

    // A new address becomes a verified account, signed in with tokens.
    let back = sign_in_at_provider(&browser, &start, "alice").await;
    // Only in the browser that started the sign-in (it holds the binding cookie).
    let elsewhere = app.send(app.client.get(&back)).await;
    assert_eq!(
        elsewhere.status,
        StatusCode::BAD_REQUEST,
        "{}",
        elsewhere.text
    );
    assert_eq!(elsewhere.problem_code(), "oidc_failed");
    let r = fetch(&browser, &back).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["user"]["email"], "alice@example.test");
    assert_eq!(r.body["user"]["verified"], true);
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("lintel_oidc=;") && c.contains("Max-Age=0")),
        "the binding cookie is cleared"
    );
    let id = r.body["user"]["id"].clone();
    let me = app
        .send(
            app.req(Method::GET, "/v1/auth/me")
                .bearer_auth(r.body["accessToken"].as_str().unwrap()),
        )
        .await;
    assert_eq!(me.status, StatusCode::OK);

    // The callback works once: state is single-use.
    let again = fetch(&browser, &back).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.problem_code(), "oidc_failed");
    // A forged state is refused.
    let forged = app
        .get("/v1/auth/oidc/test/callback?code=abc&state=forged")
        .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    // Unknown provider, foreign return address.
    assert_eq!(
        app.get("/v1/auth/oidc/nope/start").await.status,
        StatusCode::NOT_FOUND
    );
    let r = app
        .get("/v1/auth/oidc/test/start?redirect=https%3A%2F%2Fevil.example%2F")
        .await;
    assert_eq!(r.field_error("redirect"), Some("not_allowed"));

    // The same person again is linked to the same account; with a cookie session and
    // a return address, the browser goes back to the app.
    let back = sign_in_at_provider(
        &browser,
        &format!(
            "{start}?mode=cookie&redirect={}",
            url::form_urlencoded::byte_serialize(app.url("/app").as_bytes()).collect::<String>()
        ),
        "alice",
    )
    .await;
    let r = fetch(&browser, &back).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert_eq!(r.header("location"), Some(app.url("/app").as_str()));
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("lintel_session="))
    );
    let users = app
        .admin(Method::GET, "/v1/collections/users/records", None)
        .await;
    assert_eq!(users.body["totalItems"], 1, "linked, not duplicated");
    assert_eq!(users.body["items"][0]["id"], id);

    // Closed sign-up: a new address is refused.
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/users",
            Some(json!({"rules": {"list": "id = @request.auth.id", "view": "id = @request.auth.id"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let fresh = self::browser();
    let back = sign_in_at_provider(&fresh, &start, "mallory").await;
    let r = fetch(&fresh, &back).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.problem_code(), "signup_closed");
    app.shutdown().await;
    let _ = op.child.kill().await;
}

const PW: &str = "correct horse battery";

/// The TOTP secret of an account, enrolled and turned on with the current code.
async fn turn_on_totp(app: &TestApp, access: &str) -> (Vec<u8>, Vec<String>) {
    let r = app
        .send(
            app.req(Method::POST, "/v1/auth/totp/enroll")
                .bearer_auth(access),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let secret = lintel::auth::mfa::unbase32(r.body["secret"].as_str().unwrap()).unwrap();
    let r = app
        .send(
            app.req(Method::POST, "/v1/auth/totp/confirm")
                .bearer_auth(access)
                .json(&json!({"code": code(&secret, 0)})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let recovery = r.body["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (secret, recovery)
}

/// The TOTP code `offset` steps from now.
fn code(secret: &[u8], offset: i64) -> String {
    let step = (lintel::clock::now_ms() / 1000 / 30) as i64 + offset;
    lintel::auth::mfa::code_at(secret, step as u64)
}

async fn audited(app: &TestApp, event: &str) -> Value {
    for _ in 0..100 {
        let r = app
            .admin(Method::GET, &format!("/v1/audit?event={event}"), None)
            .await;
        if r.body["items"].as_array().is_some_and(|i| !i.is_empty()) {
            return r.body["items"][0].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no {event} in the audit log");
}

#[tokio::test]
#[ignore = "needs Node.js and the oidc-provider package (LINTEL_TEST_OIDC_DIR)"]
async fn an_unverified_account_with_the_same_email_is_taken_over_cleanly() {
    let (mut op, app) = with_real_provider().await;
    let email = "alice@example.test";

    // The attacker signs up with the victim's address and never verifies it; signs in
    // with tokens and with a cookie, makes an API key and turns a second factor on.
    let r = app
        .json(
            Method::POST,
            "/v1/collections/users/records",
            json!({"email": email, "password": PW}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["verified"], false);
    let planted = r.body["id"].clone();
    let login = |extra: Value| {
        let mut body = json!({"email": email, "password": PW});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        app.json(Method::POST, "/v1/auth/login", body)
    };
    let tokens = login(json!({})).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.text);
    let access = tokens.body["accessToken"].as_str().unwrap().to_owned();
    let refresh = tokens.body["refreshToken"].clone();
    let cookie_login = login(json!({"mode": "cookie"})).await;
    let session_cookie = set_cookies(&cookie_login)
        .into_iter()
        .find(|c| c.starts_with("lintel_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let k = app
        .send(
            app.req(Method::POST, "/v1/auth/api-keys")
                .bearer_auth(&access)
                .json(&json!({"name": "kept", "scopes": ["users:read"]})),
        )
        .await;
    assert_eq!(k.status, StatusCode::CREATED, "{}", k.text);
    let key = k.body["key"].as_str().unwrap().to_owned();
    let (secret, _) = turn_on_totp(&app, &access).await;

    // The owner of the address signs in through the provider: the same account, now
    // verified, with no second factor of the attacker's in the way.
    let browser = browser();
    let back = sign_in_at_provider(&browser, &app.url("/v1/auth/oidc/test/start"), "alice").await;
    let r = fetch(&browser, &back).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["user"]["id"], planted);
    assert_eq!(r.body["user"]["verified"], true);
    let victim = r.body["accessToken"].as_str().unwrap().to_owned();

    // The attacker's password no longer signs in, even with a right code.
    let r = login(json!({"totp": code(&secret, 1)})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(r.problem_code(), "invalid_credentials");
    // Every credential the attacker held is dead: access token, refresh token, cookie
    // session, API key.
    let me = |auth: reqwest::RequestBuilder| app.send(auth);
    let r = me(app.req(Method::GET, "/v1/auth/me").bearer_auth(&access)).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "access token: {}",
        r.text
    );
    let r = app
        .json(
            Method::POST,
            "/v1/auth/refresh",
            json!({"refreshToken": refresh}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "refresh token: {}",
        r.text
    );
    let r = me(app
        .req(Method::GET, "/v1/auth/me")
        .header("cookie", &session_cookie))
    .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "cookie session: {}",
        r.text
    );
    let r = me(app.req(Method::GET, "/v1/auth/me").bearer_auth(&key)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "API key: {}", r.text);
    // The owner's session works; the takeover is in the audit log.
    let r = me(app.req(Method::GET, "/v1/auth/me").bearer_auth(&victim)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let entry = audited(&app, "account_taken_over").await;
    assert_eq!(entry["subject"], planted);
    assert!(
        entry["detail"]["sessionsRevoked"].as_u64().unwrap() >= 2,
        "{entry}"
    );
    assert_eq!(entry["detail"]["apiKeysRevoked"], 1, "{entry}");

    // A verified account is linked as it is: signing in again changes nothing.
    let again = self::browser();
    let back = sign_in_at_provider(&again, &app.url("/v1/auth/oidc/test/start"), "alice").await;
    let r = fetch(&again, &back).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = me(app.req(Method::GET, "/v1/auth/me").bearer_auth(&victim)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the owner's first session lives on"
    );
    app.shutdown().await;
    let _ = op.child.kill().await;
}

#[tokio::test]
#[ignore = "needs Node.js and the oidc-provider package (LINTEL_TEST_OIDC_DIR)"]
async fn an_account_with_a_second_factor_finishes_single_sign_on_with_its_code() {
    let (mut op, app) = with_real_provider().await;
    let start = app.url("/v1/auth/oidc/test/start");
    let b = browser();
    let back = sign_in_at_provider(&b, &start, "carol").await;
    let r = fetch(&b, &back).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let id = r.body["user"]["id"].clone();
    let (secret, recovery) = turn_on_totp(&app, r.body["accessToken"].as_str().unwrap()).await;

    // Signing in through the provider now stops at the second factor, as a password
    // sign-in does: no tokens, an mfaToken to finish with.
    let back = sign_in_at_provider(&b, &start, "carol").await;
    let r = fetch(&b, &back).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(r.problem_code(), "mfa_required");
    assert!(r.body.get("accessToken").is_none());
    let mfa_token = r.body["mfaToken"].as_str().unwrap().to_owned();
    let finish = |extra: Value| {
        let mut body = json!({"mfaToken": mfa_token});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        app.json(Method::POST, "/v1/auth/login", body)
    };
    let r = finish(json!({})).await;
    assert_eq!(r.field_error("totp"), Some("required"), "{}", r.text);
    let r = finish(json!({"totp": code(&secret, 5)})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.problem_code(), "invalid_mfa");
    let r = finish(json!({"totp": code(&secret, 1)})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["user"]["id"], id);
    let me = app
        .send(
            app.req(Method::GET, "/v1/auth/me")
                .bearer_auth(r.body["accessToken"].as_str().unwrap()),
        )
        .await;
    assert_eq!(me.status, StatusCode::OK);
    let r = finish(json!({"recoveryCode": recovery[0]})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.problem_code(),
        "invalid_mfa_token",
        "an mfaToken works once"
    );
    let pending = audited(&app, "login_mfa_pending").await;
    assert_eq!(pending["detail"]["via"], "oidc:test");

    // With a return address the browser goes back to the app with the mfaToken in the
    // fragment (and no session); finishing there opens the cookie session asked for.
    let app_url = app.url("/app");
    let back = sign_in_at_provider(
        &b,
        &format!(
            "{start}?mode=cookie&redirect={}",
            url::form_urlencoded::byte_serialize(app_url.as_bytes()).collect::<String>()
        ),
        "carol",
    )
    .await;
    let r = fetch(&b, &back).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert!(
        !set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("lintel_session=")),
        "no session before the second factor"
    );
    let location = r.header("location").unwrap();
    let fragment = location
        .strip_prefix(&format!("{app_url}#"))
        .unwrap_or_else(|| panic!("{location}"));
    let params: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(fragment.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(params["mfaRequired"], "totp");
    assert!(!params.contains_key("accessToken"));
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"mfaToken": params["mfaToken"], "recoveryCode": recovery[0]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.body["csrfToken"].is_string(), "{}", r.text);
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("lintel_session="))
    );
    app.shutdown().await;
    let _ = op.child.kill().await;
}

/// A stand-in provider on 127.0.0.1 (no Node.js needed): serves a discovery document
/// made from its issuer URL and a token endpoint that gives no ID token; counts the
/// requests to each.
struct FakeProvider {
    issuer: String,
    discovery_hits: Arc<AtomicUsize>,
    token_hits: Arc<AtomicUsize>,
}

async fn fake_provider(doc: fn(&str) -> Value) -> FakeProvider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let discovery_hits = Arc::new(AtomicUsize::new(0));
    let token_hits = Arc::new(AtomicUsize::new(0));
    let body = doc(&issuer);
    let (d, t) = (discovery_hits.clone(), token_hits.clone());
    let router = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                d.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                async move { axum::Json(body) }
            }),
        )
        .route(
            "/token",
            axum::routing::post(move || {
                t.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(json!({"access_token": "x"})) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await });
    FakeProvider {
        issuer,
        discovery_hits,
        token_hits,
    }
}

fn honest(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
    })
}

#[tokio::test]
async fn the_state_counts_only_in_the_browser_that_started_the_sign_in() {
    let op = fake_provider(honest).await;
    let app = TestApp::spawn_with(|c| {
        c.auth
            .oidc
            .insert("fake".into(), provider_config(&op.issuer));
    })
    .await;
    let started = app.get("/v1/auth/oidc/fake/start").await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
    let binding = set_cookies(&started)
        .into_iter()
        .find(|c| c.starts_with("lintel_oidc="))
        .expect("start sets the binding cookie");
    let attrs: Vec<&str> = binding.split("; ").collect();
    for a in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/v1/auth/oidc/fake/callback",
        "Max-Age=600",
    ] {
        assert!(attrs.contains(&a), "{a} in {binding}");
    }
    assert!(
        !attrs.contains(&"Secure"),
        "plain HTTP, cookies not secure: {binding}"
    );
    let cookie = attrs[0].to_owned();
    let location = reqwest::Url::parse(started.header("location").unwrap()).unwrap();
    let state = location
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let callback = format!("/v1/auth/oidc/fake/callback?code=c0de&state={state}");
    // Another sign-in in another browser: its cookie does not fit this state.
    let other = app.get("/v1/auth/oidc/fake/start").await;
    let other_cookie = set_cookies(&other)
        .into_iter()
        .find(|c| c.starts_with("lintel_oidc="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    for (what, header) in [
        ("no cookie", None),
        ("a forged cookie", Some("lintel_oidc=forged")),
        ("another sign-in's cookie", Some(other_cookie.as_str())),
    ] {
        let mut req = app.req(Method::GET, &callback);
        if let Some(h) = header {
            req = req.header("cookie", h);
        }
        let r = app.send(req).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text);
        assert_eq!(r.problem_code(), "oidc_failed", "{what}");
        assert!(
            r.body["detail"].as_str().unwrap().contains("browser"),
            "{what}: {}",
            r.text
        );
        assert!(
            set_cookies(&r)
                .iter()
                .any(|c| c.starts_with("lintel_oidc=;") && c.contains("Max-Age=0")),
            "{what}: the cookie is cleared"
        );
    }
    assert_eq!(
        op.token_hits.load(Ordering::SeqCst),
        0,
        "no code was exchanged for a refused state"
    );
    // The browser that started it goes on (and the refusals did not spend its state):
    // the code is exchanged (this stand-in provider then gives no ID token).
    let r = app
        .send(app.req(Method::GET, &callback).header("cookie", &cookie))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(
        r.body["detail"].as_str().unwrap().contains("no ID token"),
        "{}",
        r.text
    );
    assert_eq!(op.token_hits.load(Ordering::SeqCst), 1);
    let r = app
        .send(app.req(Method::GET, &callback).header("cookie", &cookie))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "used up: {}", r.text);
    assert_eq!(op.token_hits.load(Ordering::SeqCst), 1);
    // The discovery document was read once for two starts and a callback.
    assert_eq!(op.discovery_hits.load(Ordering::SeqCst), 1);
    app.shutdown().await;

    // Secure cookies when the server says so.
    let app = TestApp::spawn_with(|c| {
        c.auth.cookie_secure = true;
        c.auth
            .oidc
            .insert("fake".into(), provider_config(&op.issuer));
    })
    .await;
    let started = app.get("/v1/auth/oidc/fake/start").await;
    let binding = set_cookies(&started)
        .into_iter()
        .find(|c| c.starts_with("lintel_oidc="))
        .unwrap();
    assert!(binding.ends_with("; Secure"), "{binding}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_discovery_document_pointing_off_the_issuers_origin_is_refused() {
    fn evil_token(i: &str) -> Value {
        let mut d = honest(i);
        d["token_endpoint"] = "http://127.0.0.2:9/token".into();
        d
    }
    fn evil_jwks(i: &str) -> Value {
        let mut d = honest(i);
        d["jwks_uri"] = "https://keys.evil.example/jwks".into();
        d
    }
    fn evil_authorize(i: &str) -> Value {
        let mut d = honest(i);
        d["authorization_endpoint"] = "https://login.evil.example/auth".into();
        d
    }
    let mut providers = Vec::new();
    for doc in [evil_token, evil_jwks, evil_authorize] {
        providers.push(fake_provider(doc).await);
    }
    let issuers: Vec<String> = providers.iter().map(|p| p.issuer.clone()).collect();
    let allowed = fake_provider(evil_jwks).await;
    let allowed_issuer = allowed.issuer.clone();
    let app = TestApp::spawn_with(|c| {
        for (i, issuer) in issuers.iter().enumerate() {
            c.auth
                .oidc
                .insert(format!("evil{i}"), provider_config(issuer));
        }
        let mut p = provider_config(&allowed_issuer);
        p.endpoint_origins = vec!["https://keys.evil.example".into()];
        c.auth.oidc.insert("listed".into(), p);
    })
    .await;
    for i in 0..3 {
        let r = app.get(&format!("/v1/auth/oidc/evil{i}/start")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "evil{i}: {}", r.text);
        assert_eq!(r.problem_code(), "identity_provider_failed");
        assert!(r.header("location").is_none());
    }
    // An origin the configuration names is accepted.
    let r = app.get("/v1/auth/oidc/listed/start").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    app.shutdown().await;
}
