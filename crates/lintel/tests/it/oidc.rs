//! Single sign-on against a real OpenID provider: the npm package `oidc-provider`
//! (a certified implementation), started here from `tests/oidc-provider`. Needs
//! Node.js and `npm ci` in that folder; `.ci/run` does both and points
//! `LINTEL_TEST_OIDC_DIR` at it. The tests of the browser binding, of the discovery
//! document's origins, of PKCE, of the ID token's verification and of the JWKS
//! refetch use a stand-in provider (`fake_provider`, with keys and ID tokens the test
//! makes) and run with the suite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    // Audit rows are written in the background: wait for that work, then look.
    let left = app
        .running()
        .state
        .tasks
        .wait_idle(std::time::Duration::from_secs(10))
        .await;
    assert_eq!(left, 0, "background work finished");
    let r = app
        .admin(Method::GET, &format!("/v1/audit?event={event}"), None)
        .await;
    if r.body["items"].as_array().is_some_and(|i| !i.is_empty()) {
        return r.body["items"][0].clone();
    }
    panic!("no {event} in the audit log: {}", r.text);
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
/// made from its issuer URL, a JWKS of the keys the test publishes, and a token
/// endpoint that answers with the ID token the test set (none if none was set) and
/// keeps each request it got; counts the requests to each.
struct FakeProvider {
    issuer: String,
    discovery_hits: Arc<AtomicUsize>,
    token_hits: Arc<AtomicUsize>,
    jwks_hits: Arc<AtomicUsize>,
    /// The keys `/jwks` serves.
    jwks: Arc<Mutex<Vec<Value>>>,
    /// The ID token the next token request is answered with.
    id_token: Arc<Mutex<Option<String>>>,
    /// The token requests received, in order.
    token_requests: Arc<Mutex<Vec<TokenRequest>>>,
}

/// A code exchange as the provider saw it.
#[derive(Clone, Debug)]
struct TokenRequest {
    form: HashMap<String, String>,
    authorization: Option<String>,
}

impl FakeProvider {
    fn publish(&self, key: &SigningKey) {
        self.jwks.lock().unwrap().push(key.jwk());
    }

    fn answer_with(&self, id_token: String) {
        *self.id_token.lock().unwrap() = Some(id_token);
    }

    fn token_requests(&self) -> Vec<TokenRequest> {
        self.token_requests.lock().unwrap().clone()
    }
}

async fn fake_provider(doc: fn(&str) -> Value) -> FakeProvider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let op = FakeProvider {
        issuer: issuer.clone(),
        discovery_hits: Arc::default(),
        token_hits: Arc::default(),
        jwks_hits: Arc::default(),
        jwks: Arc::default(),
        id_token: Arc::default(),
        token_requests: Arc::default(),
    };
    let body = doc(&issuer);
    let (d, t, j) = (
        op.discovery_hits.clone(),
        op.token_hits.clone(),
        op.jwks_hits.clone(),
    );
    let (keys, id_token, requests) = (
        op.jwks.clone(),
        op.id_token.clone(),
        op.token_requests.clone(),
    );
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
            "/jwks",
            axum::routing::get(move || {
                j.fetch_add(1, Ordering::SeqCst);
                let keys = keys.lock().unwrap().clone();
                async move { axum::Json(json!({ "keys": keys })) }
            }),
        )
        .route(
            "/token",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                t.fetch_add(1, Ordering::SeqCst);
                requests.lock().unwrap().push(TokenRequest {
                    form: url::form_urlencoded::parse(body.as_bytes())
                        .into_owned()
                        .collect(),
                    authorization: headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned()),
                });
                let answer = match id_token.lock().unwrap().take() {
                    Some(t) => json!({"access_token": "x", "token_type": "Bearer", "id_token": t}),
                    None => json!({"access_token": "x"}),
                };
                async move { axum::Json(answer) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await });
    op
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

/// A provider's signing key, made here: Ed25519 (`EdDSA`, one of the algorithms
/// Lintel accepts), named `kid` in the JWKS.
struct SigningKey {
    kid: String,
    pair: rcgen::KeyPair,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        SigningKey {
            kid: kid.to_owned(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        }
    }

    /// The public key as the provider publishes it.
    fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "use": "sig",
            "alg": "EdDSA",
            "kid": self.kid,
            "x": b64(self.pair.public_key_raw()),
        })
    }

    fn encoding_key(&self) -> jsonwebtoken::EncodingKey {
        jsonwebtoken::EncodingKey::from_ed_pem(self.pair.serialize_pem().as_bytes()).unwrap()
    }

    /// An ID token with these claims, signed by this key and naming it.
    fn sign(&self, claims: &Value) -> String {
        self.sign_naming(&self.kid, claims)
    }

    /// Signed by this key, naming the key `kid` in its header.
    fn sign_naming(&self, kid: &str, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding_key()).unwrap()
    }

    /// Signed by this key (EdDSA) under a header that claims another `alg`.
    fn sign_claiming_alg(&self, alg: &str, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(json!({"alg": alg, "typ": "JWT", "kid": self.kid})
                .to_string()
                .as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &self.encoding_key(),
            jsonwebtoken::Algorithm::EdDSA,
        )
        .unwrap();
        format!("{input}.{sig}")
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a good ID token for `alice@example.test` from `op`, for the sign-in
/// that /start sent `nonce` with.
fn good_claims(op: &FakeProvider, nonce: &str) -> Value {
    let now = now_s();
    json!({
        "iss": op.issuer,
        "aud": "lintel",
        "sub": "fake-alice",
        "email": "alice@example.test",
        "email_verified": true,
        "nonce": nonce,
        "iat": now,
        "exp": now + 300,
    })
}

/// A sign-in started at Lintel: the binding cookie and the parameters of the
/// redirect to the provider's authorization endpoint.
struct Started {
    cookie: String,
    authorize: reqwest::Url,
    params: HashMap<String, String>,
}

async fn start_sign_in(app: &TestApp, provider: &str) -> Started {
    let r = app.get(&format!("/v1/auth/oidc/{provider}/start")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let cookie = set_cookies(&r)
        .into_iter()
        .find(|c| c.starts_with("lintel_oidc="))
        .expect("start sets the binding cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let authorize = reqwest::Url::parse(r.header("location").unwrap()).unwrap();
    let params = authorize.query_pairs().into_owned().collect();
    Started {
        cookie,
        authorize,
        params,
    }
}

/// Lintel's callback for `started`, in its browser, with the code `code`.
async fn come_back(app: &TestApp, provider: &str, started: &Started, code: &str) -> Reply {
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("code", code)
        .append_pair("state", &started.params["state"])
        .finish();
    app.send(
        app.req(
            Method::GET,
            &format!("/v1/auth/oidc/{provider}/callback?{q}"),
        )
        .header("cookie", &started.cookie),
    )
    .await
}

/// A whole sign-in through `op`: start, the provider answers the code exchange with
/// the ID token `mint` makes for that start, the callback.
async fn sign_in_with(
    app: &TestApp,
    op: &FakeProvider,
    mint: impl FnOnce(&Started) -> String,
) -> (Started, Reply) {
    let started = start_sign_in(app, "fake").await;
    op.answer_with(mint(&started));
    let r = come_back(app, "fake", &started, "the-code").await;
    (started, r)
}

/// Lintel with the stand-in `op` as provider `fake`.
async fn with_fake_provider(op: &FakeProvider) -> TestApp {
    TestApp::spawn_with(|c| {
        c.auth
            .oidc
            .insert("fake".into(), provider_config(&op.issuer));
    })
    .await
}

async fn count(app: &TestApp, table: &str) -> i64 {
    let state = &app.running().state;
    let mut sql = lintel::store::Sql::new(state.store.dialect());
    sql.push("SELECT COUNT(*) FROM ").push(table);
    let rows = state.store.query_rows(sql).await.unwrap();
    rows[0][0].as_i64().unwrap()
}

async fn users(app: &TestApp) -> u64 {
    let r = app
        .admin(Method::GET, "/v1/collections/users/records", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["totalItems"].as_u64().unwrap()
}

/// A signed-in answer: 200, tokens that work, alice's verified account.
async fn assert_signed_in(app: &TestApp, r: &Reply) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["user"]["email"], "alice@example.test");
    assert_eq!(r.body["user"]["verified"], true);
    assert!(r.body["refreshToken"].is_string(), "{}", r.text);
    let me = app
        .send(
            app.req(Method::GET, "/v1/auth/me")
                .bearer_auth(r.body["accessToken"].as_str().unwrap()),
        )
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
}

#[tokio::test]
async fn pkce_and_a_good_id_token_sign_in() {
    let op = fake_provider(honest).await;
    let key = SigningKey::new("k1");
    op.publish(&key);
    let app = with_fake_provider(&op).await;

    let (started, r) = sign_in_with(&app, &op, |s| {
        key.sign(&good_claims(&op, &s.params["nonce"]))
    })
    .await;
    // The good ID token signs in: the baseline the refusals are measured against.
    assert_signed_in(&app, &r).await;
    assert_eq!(users(&app).await, 1);
    assert_eq!(count(&app, "_lintel_sessions").await, 1);

    // The authorization redirect: the code flow, S256 PKCE, a state and a nonce.
    let p = &started.params;
    assert_eq!(
        started.authorize.as_str().split('?').next().unwrap(),
        format!("{}/auth", op.issuer)
    );
    assert_eq!(p["response_type"], "code");
    assert_eq!(p["client_id"], "lintel");
    assert!(p["scope"].split(' ').any(|s| s == "openid"), "{p:?}");
    assert_eq!(p["code_challenge_method"], "S256");
    for k in ["state", "nonce", "code_challenge"] {
        assert!(p[k].len() >= 43, "{k} is long enough: {p:?}");
    }
    // The code exchange carries the verifier whose SHA-256 is that challenge.
    let requests = op.token_requests();
    assert_eq!(requests.len(), 1);
    let form = &requests[0].form;
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "the-code");
    assert_eq!(form["redirect_uri"], p["redirect_uri"]);
    let verifier = &form["code_verifier"];
    assert!(
        (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
        "an RFC 7636 verifier: {verifier}"
    );
    assert_eq!(
        b64(&<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes())),
        p["code_challenge"],
        "S256(code_verifier) = code_challenge"
    );
    assert_ne!(
        verifier, &p["code_challenge"],
        "the verifier itself never left"
    );
    assert!(
        !started.authorize.as_str().contains(verifier.as_str()),
        "the verifier is not in the authorization redirect"
    );
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some(format!("Basic {}", base64_std("lintel:s3cretForTests")).as_str()),
        "the client authenticates with its secret"
    );

    // Each sign-in has its own verifier, challenge, state and nonce.
    let (again, r) = sign_in_with(&app, &op, |s| {
        key.sign(&good_claims(&op, &s.params["nonce"]))
    })
    .await;
    assert_signed_in(&app, &r).await;
    for k in ["state", "nonce", "code_challenge"] {
        assert_ne!(again.params[k], started.params[k], "{k}");
    }
    let requests = op.token_requests();
    assert_ne!(requests[1].form["code_verifier"], *verifier);
    assert_eq!(
        b64(&<sha2::Sha256 as sha2::Digest>::digest(
            requests[1].form["code_verifier"].as_bytes()
        )),
        again.params["code_challenge"]
    );
    assert_eq!(users(&app).await, 1, "the same person, the same account");
    app.shutdown().await;
}

fn base64_std(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn id_tokens_that_fail_verification_are_refused() {
    let op = fake_provider(honest).await;
    let key = SigningKey::new("k1");
    op.publish(&key);
    let stranger = SigningKey::new("k1");
    let app = with_fake_provider(&op).await;

    type Mint<'a> = Box<dyn Fn(&SigningKey, &FakeProvider, &str) -> String + 'a>;
    let with = |change: fn(&mut Value)| -> Mint<'_> {
        Box::new(move |k, op, nonce| {
            let mut c = good_claims(op, nonce);
            change(&mut c);
            k.sign(&c)
        })
    };
    let mut cases: Vec<(&str, Mint<'_>, &str)> = vec![
        (
            "signed by a key not in the JWKS (naming the published kid)",
            Box::new(|_, op, nonce| stranger.sign(&good_claims(op, nonce))),
            "signature or claims are invalid",
        ),
        (
            "alg HS256, signed with the public key's bytes as the secret",
            Box::new(|k, op, nonce| {
                let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
                h.kid = Some(k.kid.clone());
                jsonwebtoken::encode(
                    &h,
                    &good_claims(op, nonce),
                    &jsonwebtoken::EncodingKey::from_secret(k.pair.public_key_raw()),
                )
                .unwrap()
            }),
            "unsupported ID token algorithm",
        ),
        (
            "alg HS256, signed with the published JWK as the secret",
            Box::new(|k, op, nonce| {
                let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
                h.kid = Some(k.kid.clone());
                jsonwebtoken::encode(
                    &h,
                    &good_claims(op, nonce),
                    &jsonwebtoken::EncodingKey::from_secret(k.jwk().to_string().as_bytes()),
                )
                .unwrap()
            }),
            "unsupported ID token algorithm",
        ),
        (
            "alg none, no signature",
            Box::new(|k, op, nonce| {
                format!(
                    "{}.{}.",
                    b64(json!({"alg": "none", "typ": "JWT", "kid": k.kid})
                        .to_string()
                        .as_bytes()),
                    b64(good_claims(op, nonce).to_string().as_bytes())
                )
            }),
            "malformed ID token",
        ),
        (
            "alg ES256 claimed over the key's EdDSA signature",
            Box::new(|k, op, nonce| k.sign_claiming_alg("ES256", &good_claims(op, nonce))),
            "signature or claims are invalid",
        ),
        (
            "a good signature over altered claims",
            Box::new(|k, op, nonce| {
                let good = k.sign(&good_claims(op, nonce));
                let mut claims = good_claims(op, nonce);
                claims["email"] = "mallory@example.test".into();
                let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
                parts[1] = b64(claims.to_string().as_bytes());
                parts.join(".")
            }),
            "signature or claims are invalid",
        ),
        (
            "another audience",
            with(|c| c["aud"] = "someone-else".into()),
            "signature or claims are invalid",
        ),
        (
            "another issuer",
            with(|c| c["iss"] = "https://id.evil.example".into()),
            "signature or claims are invalid",
        ),
        (
            "expired (an hour ago, beyond the leeway)",
            with(|c| {
                c["iat"] = (now_s() - 7200).into();
                c["exp"] = (now_s() - 3600).into();
            }),
            "signature or claims are invalid",
        ),
        (
            "no expiry",
            with(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "signature or claims are invalid",
        ),
        (
            "a nonce other than the one /start sent",
            with(|c| c["nonce"] = "not-the-nonce-start-sent".into()),
            "nonce does not match",
        ),
        (
            "no nonce",
            with(|c| {
                c.as_object_mut().unwrap().remove("nonce");
            }),
            "nonce does not match",
        ),
        (
            "email_verified false",
            with(|c| c["email_verified"] = false.into()),
            "did not vouch for a verified email",
        ),
        (
            "no email_verified",
            with(|c| {
                c.as_object_mut().unwrap().remove("email_verified");
            }),
            "did not vouch for a verified email",
        ),
    ];
    // A nonce from another sign-in (started, never finished) is not this one's.
    let other = start_sign_in(&app, "fake").await;
    let other_nonce = other.params["nonce"].clone();
    cases.push((
        "the nonce of another sign-in",
        Box::new(move |k, op, _| k.sign(&good_claims(op, &other_nonce))),
        "nonce does not match",
    ));

    for (i, (what, mint, reason)) in cases.iter().enumerate() {
        let (started, r) = sign_in_with(&app, &op, |s| mint(&key, &op, &s.params["nonce"])).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text);
        assert_eq!(r.problem_code(), "oidc_failed", "{what}");
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/problem+json")),
            "{what}"
        );
        assert!(
            r.body["detail"].as_str().unwrap().contains(reason),
            "{what}: {}",
            r.text
        );
        // Refused after the code exchange (for the ID token, not for anything before).
        assert_eq!(op.token_requests().len(), i + 1, "{what}");
        // No tokens, no session, no account.
        assert!(r.body.get("accessToken").is_none(), "{what}");
        assert!(
            !set_cookies(&r)
                .iter()
                .any(|c| c.starts_with("lintel_session=")),
            "{what}"
        );
        assert_eq!(users(&app).await, 0, "{what}");
        assert_eq!(count(&app, "_lintel_sessions").await, 0, "{what}");
        assert_eq!(count(&app, "_lintel_refresh_tokens").await, 0, "{what}");
        // And the state is spent: the same callback cannot be tried again.
        let again = come_back(&app, "fake", &started, "the-code").await;
        assert_eq!(again.status, StatusCode::BAD_REQUEST, "{what}");
        assert!(
            again.body["detail"]
                .as_str()
                .unwrap()
                .contains("already used"),
            "{what}: {}",
            again.text
        );
    }
    // The JWKS was read once: no refused token made Lintel fetch it again.
    assert_eq!(op.jwks_hits.load(Ordering::SeqCst), 1);

    // The same server, provider and key sign in with a good token.
    let (_, r) = sign_in_with(&app, &op, |s| {
        key.sign(&good_claims(&op, &s.params["nonce"]))
    })
    .await;
    assert_signed_in(&app, &r).await;
    assert_eq!(users(&app).await, 1);
    assert_eq!(count(&app, "_lintel_sessions").await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn an_unknown_kid_fetches_the_jwks_once_more_and_a_still_unknown_kid_is_refused() {
    let op = fake_provider(honest).await;
    let k1 = SigningKey::new("k1");
    op.publish(&k1);
    let app = with_fake_provider(&op).await;
    let jwks_hits = || op.jwks_hits.load(Ordering::SeqCst);
    let claims = |s: &Started| good_claims(&op, &s.params["nonce"]);

    let (_, r) = sign_in_with(&app, &op, |s| k1.sign(&claims(s))).await;
    assert_signed_in(&app, &r).await;
    assert_eq!(jwks_hits(), 1, "read for the first token");
    let (_, r) = sign_in_with(&app, &op, |s| k1.sign(&claims(s))).await;
    assert_signed_in(&app, &r).await;
    assert_eq!(jwks_hits(), 1, "then kept");

    // The provider rotates in k2: a token naming it makes Lintel read the JWKS again,
    // once, and it signs in; the new set is kept.
    let k2 = SigningKey::new("k2");
    op.publish(&k2);
    let (_, r) = sign_in_with(&app, &op, |s| k2.sign(&claims(s))).await;
    assert_signed_in(&app, &r).await;
    assert_eq!(jwks_hits(), 2, "one more read for the unknown kid");
    let (_, r) = sign_in_with(&app, &op, |s| k2.sign(&claims(s))).await;
    assert_signed_in(&app, &r).await;
    let (_, r) = sign_in_with(&app, &op, |s| k1.sign(&claims(s))).await;
    assert_signed_in(&app, &r).await;
    assert_eq!(jwks_hits(), 2, "k1 and k2 from the kept set");
    let sessions = count(&app, "_lintel_sessions").await;

    // A kid the provider never publishes: one more read, then refused.
    let k9 = SigningKey::new("k9");
    for n in 1..=2 {
        let (_, r) = sign_in_with(&app, &op, |s| k9.sign(&claims(s))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.problem_code(), "oidc_failed");
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap()
                .contains("not in the provider's JWKS"),
            "{}",
            r.text
        );
        assert!(r.body.get("accessToken").is_none());
        assert_eq!(jwks_hits(), 2 + n, "exactly one read per refused token");
    }
    // Nor does a published kid on a key that is not its own get in.
    let (_, r) = sign_in_with(&app, &op, |s| k9.sign_naming("k2", &claims(s))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(jwks_hits(), 4, "a known kid: no read");
    assert_eq!(count(&app, "_lintel_sessions").await, sessions);
    assert_eq!(users(&app).await, 1);
    app.shutdown().await;
}
