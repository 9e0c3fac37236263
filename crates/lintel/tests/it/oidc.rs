//! Single sign-on against a real OpenID provider: the npm package `oidc-provider`
//! (a certified implementation), started here from `tests/oidc-provider`. Needs
//! Node.js and `npm ci` in that folder; `.ci/run` does both and points
//! `LINTEL_TEST_OIDC_DIR` at it.

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use crate::common::{TestApp, config};

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

#[tokio::test]
#[ignore = "needs Node.js and the oidc-provider package (LINTEL_TEST_OIDC_DIR)"]
async fn sign_in_with_an_openid_provider() {
    let port = free_port();
    let callback = format!("http://127.0.0.1:{port}/v1/auth/oidc/test/callback");
    let mut op = provider(&callback).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path()).await;
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.auth.public_url = format!("http://127.0.0.1:{port}");
    cfg.auth.oidc.insert(
        "test".into(),
        lintel::config::OidcProviderConfig {
            issuer: op.issuer.clone(),
            client_id: "lintel".into(),
            client_secret: lintel::config::Secret("s3cretForTests".into()),
            scopes: vec!["profile".into()],
            collection: "users".into(),
            redirect_url: String::new(),
        },
    );
    let app = TestApp::start_in(dir, cfg).await;
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let start = app.url("/v1/auth/oidc/test/start");

    // A new address becomes a verified account, signed in with tokens.
    let back = sign_in_at_provider(&browser, &start, "alice").await;
    let r = app.send(app.client.get(&back)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["user"]["email"], "alice@example.test");
    assert_eq!(r.body["user"]["verified"], true);
    let id = r.body["user"]["id"].clone();
    let me = app
        .send(
            app.req(Method::GET, "/v1/auth/me")
                .bearer_auth(r.body["accessToken"].as_str().unwrap()),
        )
        .await;
    assert_eq!(me.status, StatusCode::OK);

    // The callback works once: state is single-use.
    let again = app.send(app.client.get(&back)).await;
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
    let r = app.send(app.client.get(&back)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert_eq!(r.header("location"), Some(app.url("/app").as_str()));
    assert!(
        r.headers
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("lintel_session="))
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
    let fresh = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let back = sign_in_at_provider(&fresh, &start, "mallory").await;
    let r = app.send(app.client.get(&back)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.problem_code(), "signup_closed");
    app.shutdown().await;
    let _ = op.child.kill().await;
}
