//! The edge's protections over HTTP: rate limits (429, the RateLimit headers, the
//! reset, each algorithm), client addresses through trusted proxies, sign-in lockout,
//! CORS for allowed and refused origins, and the security headers.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{Reply, TestApp};

fn rule(
    name: &str,
    path: &str,
    key: &str,
    algorithm: &str,
    limit: u32,
    period: u64,
    burst: u32,
) -> lintel::ratelimit::Rule {
    serde_json::from_value(json!({
        "name": name, "path": path, "key": key, "algorithm": algorithm,
        "limit": limit, "period_secs": period, "burst": burst
    }))
    .unwrap()
}

async fn with_rules(rules: Vec<lintel::ratelimit::Rule>) -> TestApp {
    TestApp::spawn_with(|c| c.rate_limit.rules = rules).await
}

/// A server under `rules` whose clock stands still until the test moves it, so a
/// window or bucket never turns over in the middle of a test.
async fn clocked_rules(rules: Vec<lintel::ratelimit::Rule>) -> TestApp {
    TestApp::spawn_clocked(|c| c.rate_limit.rules = rules).await
}

#[tokio::test]
async fn each_algorithm_refuses_past_its_limit_with_headers() {
    for algorithm in [
        "fixed_window",
        "sliding_log",
        "sliding_window",
        "token_bucket",
    ] {
        let app = clocked_rules(vec![rule("tight", "/v1/health", "ip", algorithm, 3, 60, 3)]).await;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = app.get("/v1/health").await;
            assert_eq!(r.status, StatusCode::OK, "{algorithm}");
            assert_eq!(
                r.header("ratelimit-policy"),
                Some("\"tight\";q=3;w=60"),
                "{algorithm}"
            );
            seen.push(r.header("ratelimit").unwrap().to_owned());
        }
        for (i, s) in seen.iter().enumerate() {
            assert!(
                s.starts_with(&format!("\"tight\";r={};t=", 2 - i)),
                "{algorithm}: {s}"
            );
        }
        let r = app.get("/v1/health").await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{algorithm}");
        assert_eq!(r.problem_code(), "rate_limited");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{algorithm}: {retry}");
        assert!(r.header("ratelimit").unwrap().starts_with("\"tight\";r=0;"));
        // Other routes are not under this rule.
        assert_eq!(app.get("/v1/ready").await.status, StatusCode::OK);
        app.shutdown().await;
    }
}

#[tokio::test]
async fn a_refused_client_gets_through_after_retry_after() {
    // Two per second, a bucket of two: a token comes back every 500 ms.
    let app = clocked_rules(vec![rule(
        "tb",
        "/v1/health",
        "ip",
        "token_bucket",
        2,
        1,
        2,
    )])
    .await;
    assert_eq!(app.get("/v1/health").await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/health").await.status, StatusCode::OK);
    let r = app.get("/v1/health").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(retry, 1);
    // Not yet refilled: still refused.
    app.advance(Duration::from_millis(400));
    assert_eq!(
        app.get("/v1/health").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Once Retry-After has passed, let through (and only one token came back).
    app.advance(Duration::from_millis(1000 * retry - 400));
    assert_eq!(app.get("/v1/health").await.status, StatusCode::OK);
    app.shutdown().await;
}

#[tokio::test]
async fn the_leaky_bucket_spreads_a_burst_out() {
    // Five per second (one per 200 ms), three may queue.
    let app = with_rules(vec![rule(
        "lb",
        "/v1/health",
        "ip",
        "leaky_bucket",
        5,
        1,
        3,
    )])
    .await;
    let started = Instant::now();
    let results = futures::future::join_all((0..4).map(|_| async {
        let r = app.get("/v1/health").await;
        (r.status, started.elapsed())
    }))
    .await;
    let ok: Vec<Duration> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(ok.len(), 3, "{results:?}");
    assert_eq!(
        results
            .iter()
            .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        1
    );
    let slowest = ok.iter().max().unwrap();
    assert!(
        *slowest >= Duration::from_millis(350),
        "queued, not refused: {slowest:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn limits_count_per_account_and_trust_only_configured_proxies() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit.rules = vec![
            rule("me", "/v1/auth/me", "user", "fixed_window", 2, 60, 2),
            rule("health", "/v1/health", "ip", "fixed_window", 1, 60, 1),
        ];
        c.http.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let mut tokens = Vec::new();
    for email in ["a@example.com", "b@example.com"] {
        app.json(
            Method::POST,
            "/v1/collections/users/records",
            json!({"email": email, "password": "correct horse battery"}),
        )
        .await;
        let l = app
            .json(
                Method::POST,
                "/v1/auth/login",
                json!({"email": email, "password": "correct horse battery"}),
            )
            .await;
        tokens.push(l.body["accessToken"].as_str().unwrap().to_owned());
    }
    let me = |t: &str| app.send(app.req(Method::GET, "/v1/auth/me").bearer_auth(t));
    for t in &tokens {
        assert_eq!(me(t).await.status, StatusCode::OK);
        assert_eq!(me(t).await.status, StatusCode::OK);
        assert_eq!(
            me(t).await.status,
            StatusCode::TOO_MANY_REQUESTS,
            "each account has its own count"
        );
    }
    // Behind a trusted proxy, each forwarded client is counted on its own.
    let via = |client: &str| {
        app.send(
            app.req(Method::GET, "/v1/health")
                .header("x-forwarded-for", format!("{client}, 127.0.0.1")),
        )
    };
    assert_eq!(via("203.0.113.1").await.status, StatusCode::OK);
    assert_eq!(
        via("203.0.113.1").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(via("203.0.113.2").await.status, StatusCode::OK);
    app.shutdown().await;

    // Without trust, forwarding headers change nothing.
    let app = with_rules(vec![rule(
        "health",
        "/v1/health",
        "ip",
        "fixed_window",
        1,
        60,
        1,
    )])
    .await;
    let spoof = |client: &str| {
        app.send(
            app.req(Method::GET, "/v1/health")
                .header("x-forwarded-for", client.to_owned()),
        )
    };
    assert_eq!(spoof("203.0.113.1").await.status, StatusCode::OK);
    assert_eq!(
        spoof("203.0.113.2").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.shutdown().await;
}

#[tokio::test]
async fn repeated_sign_in_failures_lock_the_account_and_are_audited() {
    let app = TestApp::spawn_with(|c| {
        c.auth.lockout_threshold = 3;
        c.auth.lockout_secs = 60;
    })
    .await;
    app.json(
        Method::POST,
        "/v1/collections/users/records",
        json!({"email": "a@example.com", "password": "correct horse battery"}),
    )
    .await;
    let attempt = |pw: &str| {
        app.json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "a@example.com", "password": pw}),
        )
    };
    for _ in 0..3 {
        assert_eq!(
            attempt("wrong password!").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let r = attempt("correct horse battery").await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "locked even with the right password"
    );
    assert_eq!(r.problem_code(), "signin_locked");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry), "{retry}");
    // Another account is not locked.
    app.json(
        Method::POST,
        "/v1/collections/users/records",
        json!({"email": "b@example.com", "password": "correct horse battery"}),
    )
    .await;
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "b@example.com", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Audit rows are written in the background: wait for that work, not a while.
    let left = app
        .running()
        .state
        .tasks
        .wait_idle(Duration::from_secs(10))
        .await;
    assert_eq!(left, 0, "background work finished");
    let r = app
        .admin(Method::GET, "/v1/audit?event=signin_locked", None)
        .await;
    let found = !r.body["items"].as_array().unwrap().is_empty();
    assert!(found, "the lock is audited");
    app.shutdown().await;
}

fn cors_headers(r: &Reply) -> Vec<String> {
    r.headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn cors_answers_allowed_origins_only_and_security_headers_are_everywhere() {
    let app = TestApp::spawn_with(|c| {
        c.cors.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let preflight = |origin: &str| {
        app.send(
            app.req(Method::OPTIONS, "/v1/collections/users/records")
                .header("origin", origin.to_owned())
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type, authorization",
                ),
        )
    };
    let ok = preflight("https://app.example.com").await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    assert!(
        ok.header("access-control-allow-methods")
            .unwrap()
            .contains("PATCH")
    );
    assert!(
        ok.header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    // A refused origin's preflight is still answered here (204, not the route's 405),
    // with no CORS header at all; without the status check a server that failed the
    // request outright would pass.
    let refused = preflight("https://evil.example").await;
    assert_eq!(refused.status, StatusCode::NO_CONTENT, "{}", refused.text);
    assert!(cors_headers(&refused).is_empty(), "{:?}", refused.headers);
    assert_eq!(refused.header("x-content-type-options"), Some("nosniff"));

    let get = |origin: &str| {
        app.send(
            app.req(Method::GET, "/v1/health")
                .header("origin", origin.to_owned()),
        )
    };
    let r = get("https://app.example.com").await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        r.header("access-control-expose-headers")
            .unwrap()
            .contains("ETag")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    // A refused origin's actual request is served (the browser withholds it), with no
    // CORS headers.
    let r = get("https://evil.example").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "ok");
    assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);

    // Security headers on successes, problems and preflights alike.
    for r in [
        app.get("/v1/health").await,
        app.get("/v1/nowhere").await,
        ok,
    ] {
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert!(
            r.header("content-security-policy")
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
    }
    app.shutdown().await;
}

async fn raw(app: &TestApp) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(app.addr).await.unwrap()
}

/// Reads until the peer closes (or `within` passes); returns what arrived.
async fn read_until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_idle_and_oversized_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    // Each limit on its own server, the others set far away, so each is shown alone.
    let app = TestApp::spawn_with(|c| {
        c.http.header_read_timeout_ms = 500;
        c.http.idle_timeout_ms = 60_000;
    })
    .await;
    // Headers that never finish: closed after the header read timeout.
    let mut s = raw(&app).await;
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(
        read_until_closed(&mut s, Duration::from_secs(10))
            .await
            .is_some(),
        "closed"
    );
    // Closed by the timeout, not at once (the upper bound is the read's own 10 s).
    assert!(started.elapsed() >= Duration::from_millis(450));

    app.shutdown().await;

    // A kept-alive connection that goes quiet: closed after the idle timeout.
    let app = TestApp::spawn_with(|c| {
        c.http.header_read_timeout_ms = 30_000;
        c.http.idle_timeout_ms = 1000;
        c.http.max_header_bytes = 8192;
        c.http.max_connections = 3;
    })
    .await;
    let mut s = raw(&app).await;
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let got = got.expect("closed once idle");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let quiet = started.elapsed();
    assert!(quiet >= Duration::from_millis(900), "{quiet:?}");

    // An oversized head is refused.
    let mut s = raw(&app).await;
    let big = format!(
        "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = s.write_all(big.as_bytes()).await;
    // `None` is a connection still open after 5 s: the limit did not cut it off. (This
    // was `unwrap_or_default()`, which turned that hang into an empty, passing answer.)
    let got = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("an oversized head closes the connection");
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 431"), "{got}");

    app.shutdown().await;

    // At the connection limit, the next connection waits for a free slot. Idle
    // connections are kept for a minute here, so no slot frees by itself.
    let app = TestApp::spawn_with(|c| {
        c.http.header_read_timeout_ms = 60_000;
        c.http.idle_timeout_ms = 60_000;
        c.http.max_connections = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = raw(&app).await;
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    // Each held connection has had its answer: all three slots are taken.
    for s in &mut held {
        let mut buf = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(s, &mut buf)
            .await
            .unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }
    let waiting = tokio::spawn({
        let addr = app.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let got = read_until_closed(&mut s, Duration::from_secs(30))
                .await
                .expect("answered once a slot is free");
            (got, std::time::Instant::now())
        }
    });
    // A short look for an answer that must not come (it can only pass wrongly, never
    // fail wrongly: no slot frees on its own here).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "no slot yet");
    let released = std::time::Instant::now();
    held.clear();
    let (got, answered) = waiting.await.unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(answered >= released, "answered only after a slot was freed");
    app.shutdown().await;
}

#[tokio::test]
async fn the_default_rules_are_on_and_every_matching_policy_is_reported() {
    let app = TestApp::spawn().await;
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "nobody@example.com", "password": "whatever it is"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"auth\";q=30;w=60, \"api\";q=6000;w=60")
    );
    let state = r.header("ratelimit").unwrap();
    assert!(
        state.starts_with("\"auth\";r=29;t=") && state.contains(", \"api\";r="),
        "{state}"
    );
    let r = app.get("/v1/health").await;
    assert_eq!(r.header("ratelimit-policy"), Some("\"api\";q=6000;w=60"));
    app.shutdown().await;
}

// `http.request_timeout_ms`: a request whose body trickles in past the limit is stopped
// with 503 `request_timeout` (and Retry-After) instead of holding its handler.
#[tokio::test]
async fn a_request_slower_than_the_request_timeout_is_stopped() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn_with(|c| {
        c.http.request_timeout_ms = 300;
        c.http.header_read_timeout_ms = 30_000;
    })
    .await;
    app.collection(json!({"name": "notes", "fields": [{"name": "t", "type": "text"}]}))
        .await;
    let mut s = raw(&app).await;
    let body = "{\"t\": \"slow\"}";
    s.write_all(
        format!(
            "POST /v1/collections/notes/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            body.len(),
            &body[..3]
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let got = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("answered and closed within 5 s");
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("request_timeout"), "{got}");
    assert!(got.to_ascii_lowercase().contains("retry-after: 1"), "{got}");
    // Stopped by the limit (the upper bound is the read's own 5 s).
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    // Nothing was created, and a request in time still works.
    let r = app.get("/v1/collections/notes/records").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["totalItems"], 0);
    app.create("notes", json!({"t": "quick"})).await;
    app.shutdown().await;
}
