//! Live subscriptions over server-sent events, on real connections: the view rule per
//! subscriber and per event (users A and B, anonymous), filters with records moving in
//! and out, resume after a disconnect with no gap and no duplicate, `reset` past
//! retention, a slow client dropped while writes go on, and a stream that ends with
//! its session.

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{TestApp, access, bearer, login, signup};

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

/// An open stream.
struct Stream {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    client_id: String,
}

impl Stream {
    async fn open(app: &TestApp, token: Option<&str>, last_event: Option<&str>) -> Stream {
        let mut r = app.req(Method::GET, "/v1/realtime");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(l) = last_event {
            r = r.header("last-event-id", l);
        }
        let res = r.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let mut s = Stream {
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
            client_id: String::new(),
        };
        let first = s
            .next(Duration::from_secs(5))
            .await
            .expect("a connect event");
        assert_eq!(first.event, "connect");
        s.client_id = first.data["clientId"].as_str().unwrap().to_owned();
        s
    }

    /// The next event within `wait` (heartbeat comments skipped), or `None`.
    async fn next(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some(Sse {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
                });
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??
                .ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Every event until nothing arrives for `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(e) = self.next(quiet).await {
            out.push(e);
        }
        out
    }

    async fn subscribe(
        &self,
        app: &TestApp,
        token: Option<&str>,
        topics: Value,
    ) -> crate::common::Reply {
        let body = json!({"clientId": self.client_id, "subscriptions": topics});
        let mut r = app.req(Method::POST, "/v1/realtime").json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        app.send(r).await
    }
}

async fn notes(app: &TestApp, view: &str) {
    app.collection(json!({
        "name": "notes",
        "fields": [{"name": "title", "type": "text"}, {"name": "n", "type": "integer"}, {"name": "owner", "type": "text"}],
        "rules": {"list": view, "view": view, "create": "", "update": "", "delete": ""},
    }))
    .await;
}

fn summary(events: &[Sse]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.event.clone(),
                e.data["action"].as_str().unwrap_or_default().to_owned(),
                e.data["record"]["title"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

const QUIET: Duration = Duration::from_millis(600);

#[tokio::test]
async fn each_subscriber_sees_only_what_its_view_rule_allows() {
    let app = TestApp::spawn().await;
    notes(&app, "owner = @request.auth.id").await;
    let a = signup(&app, "ann@example.com").await;
    let a_id = a["id"].as_str().unwrap().to_owned();
    let a_tok = access(&login(&app, "ann@example.com").await);
    signup(&app, "bob@example.com").await;
    let b_tok = access(&login(&app, "bob@example.com").await);
    let mut sa = Stream::open(&app, Some(&a_tok), None).await;
    let mut sb = Stream::open(&app, Some(&b_tok), None).await;
    let mut anon = Stream::open(&app, None, None).await;
    for (s, t) in [
        (&sa, Some(a_tok.as_str())),
        (&sb, Some(b_tok.as_str())),
        (&anon, None),
    ] {
        let r = s.subscribe(&app, t, json!(["notes"])).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["subscriptions"], json!(["notes"]));
    }
    // Another caller cannot set A's subscriptions; an unknown client is 404.
    let r = sa.subscribe(&app, Some(&b_tok), json!(["notes"])).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .json(
            Method::POST,
            "/v1/realtime",
            json!({"clientId": "nosuchclient0000", "subscriptions": ["notes"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let rec = bearer(
        &app,
        &a_tok,
        Method::POST,
        "/v1/collections/notes/records",
        Some(json!({"title": "mine", "owner": a_id})),
    )
    .await;
    assert_eq!(rec.status, StatusCode::CREATED, "{}", rec.text);
    let id = rec.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/collections/notes/records/{id}");
    bearer(
        &app,
        &a_tok,
        Method::PATCH,
        &path,
        Some(json!({"title": "mine, edited"})),
    )
    .await;
    // Given away: A loses sight of it (a delete for A); B gains it (a create for B).
    let b = bearer(&app, &b_tok, Method::GET, "/v1/auth/me", None).await;
    let b_id = b.body["user"]["id"].as_str().unwrap_or_default().to_owned();
    assert!(!b_id.is_empty(), "{}", b.text);
    app.admin(Method::PATCH, &path, Some(json!({"owner": b_id})))
        .await;
    app.admin(Method::DELETE, &path, None).await;
    let got_a = summary(&sa.drain(QUIET).await);
    assert_eq!(
        got_a,
        [
            ("notes".into(), "create".into(), "mine".into()),
            ("notes".into(), "update".into(), "mine, edited".into()),
            ("notes".into(), "delete".into(), "mine, edited".into()),
        ],
        "A"
    );
    let got_b = summary(&sb.drain(QUIET).await);
    assert_eq!(
        got_b,
        [
            ("notes".into(), "create".into(), "mine, edited".into()),
            ("notes".into(), "delete".into(), "mine, edited".into()),
        ],
        "B"
    );
    assert!(anon.drain(QUIET).await.is_empty(), "anonymous sees nothing");
    app.shutdown().await;
}

#[tokio::test]
async fn filters_move_records_in_and_out_and_topics_are_checked() {
    let app = TestApp::spawn().await;
    notes(&app, "").await;
    // No rules: superusers only.
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(json!({"name": "secrets", "fields": [{"name": "t", "type": "text"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let mut s = Stream::open(&app, None, None).await;
    let r = s.subscribe(&app, None, json!(["notes?filter=n > 5"])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Refusals: a bad filter, an unknown collection, a superusers-only one.
    let r = s.subscribe(&app, None, json!(["notes?filter=n >"])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = s.subscribe(&app, None, json!(["nope"])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(
        r.body["errors"]["subscriptions[0]"]["code"],
        "unknown_collection"
    );
    let r = s.subscribe(&app, None, json!(["secrets"])).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // Refused changes leave the subscriptions as they were.
    let low = app.create("notes", json!({"title": "low", "n": 1})).await;
    let high = app.create("notes", json!({"title": "high", "n": 9})).await;
    let lp = format!(
        "/v1/collections/notes/records/{}",
        low["id"].as_str().unwrap()
    );
    let hp = format!(
        "/v1/collections/notes/records/{}",
        high["id"].as_str().unwrap()
    );
    app.json(Method::PATCH, &hp, json!({"n": 2})).await;
    app.json(Method::PATCH, &lp, json!({"n": 7})).await;
    app.json(Method::PATCH, &lp, json!({"title": "up"})).await;
    let got = summary(&s.drain(QUIET).await);
    let t = "notes?filter=n > 5".to_owned();
    assert_eq!(
        got,
        [
            (t.clone(), "create".into(), "high".into()),
            (t.clone(), "delete".into(), "high".into()),
            (t.clone(), "create".into(), "low".into()),
            (t.clone(), "update".into(), "up".into()),
        ]
    );
    // One record by id.
    let r = s
        .subscribe(
            &app,
            None,
            json!([format!("notes/{}", low["id"].as_str().unwrap())]),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.json(Method::PATCH, &hp, json!({"title": "other"}))
        .await;
    app.json(Method::PATCH, &lp, json!({"title": "this one"}))
        .await;
    let got = summary(&s.drain(QUIET).await);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].2, "this one");
    app.shutdown().await;
}

#[tokio::test]
async fn a_reconnecting_client_resumes_with_no_gap_and_no_duplicate() {
    let app = TestApp::spawn().await;
    notes(&app, "").await;
    let mut s = Stream::open(&app, None, None).await;
    s.subscribe(&app, None, json!(["notes"])).await;
    app.create("notes", json!({"title": "one"})).await;
    let first = s.next(Duration::from_secs(5)).await.unwrap();
    let seen = first.id.clone().unwrap();
    drop(s);
    for t in ["two", "three"] {
        app.create("notes", json!({"title": t})).await;
    }
    let mut s = Stream::open(&app, None, Some(&seen)).await;
    let r = s.subscribe(&app, None, json!(["notes"])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.create("notes", json!({"title": "four"})).await;
    let got = s.drain(QUIET).await;
    let titles: Vec<&str> = got
        .iter()
        .map(|e| e.data["record"]["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["two", "three", "four"]);
    let ids: Vec<i64> = got
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_position_past_retention_gets_a_reset() {
    let app = TestApp::spawn_clocked(|c| c.events.retention_days = 1).await;
    notes(&app, "").await;
    let mut s = Stream::open(&app, None, None).await;
    s.subscribe(&app, None, json!(["notes"])).await;
    app.create("notes", json!({"title": "old"})).await;
    let seen = s.next(Duration::from_secs(5)).await.unwrap().id.unwrap();
    drop(s);
    app.create("notes", json!({"title": "gone"})).await;
    // On PostgreSQL the sequencer numbers events a moment after their commit: the
    // purge must see this one numbered.
    for _ in 0..100 {
        let r = app
            .admin(Method::GET, "/v1/events?types=record.created", None)
            .await;
        if r.body["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|e| e["record"]["title"] == "gone"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.advance(Duration::from_secs(3 * 24 * 3600));
    let state = &app.running().state;
    let policy = lintel::store::purge::PurgePolicy::from_config(&state.config);
    lintel::store::purge::purge_expired(
        state.store.as_ref(),
        &policy,
        state.clock.now_ms(),
        || true,
    )
    .await
    .unwrap();
    app.create("notes", json!({"title": "new"})).await;
    let mut s = Stream::open(&app, None, Some(&seen)).await;
    s.subscribe(&app, None, json!(["notes"])).await;
    let got = s.drain(QUIET).await;
    assert_eq!(
        got.first().map(|e| e.event.as_str()),
        Some("reset"),
        "{got:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_slow_client_is_dropped_while_writes_go_on() {
    let app = TestApp::spawn().await;
    notes(&app, "").await;
    let mut slow = Stream::open(&app, None, None).await;
    slow.subscribe(&app, None, json!(["notes"])).await;
    let mut fast = Stream::open(&app, None, None).await;
    fast.subscribe(&app, None, json!(["notes"])).await;
    // The slow client reads nothing while thousands of changes commit.
    let big = "x".repeat(2000);
    let started = std::time::Instant::now();
    let mut received = 0usize;
    for batch in 0..40 {
        let ops: Vec<Value> = (0..100)
            .map(|i| json!({"method": "POST", "path": "/v1/collections/notes/records", "body": {"title": format!("{batch}-{i}-{big}")}}))
            .collect();
        let r = app
            .json(Method::POST, "/v1/batch", json!({"operations": ops}))
            .await;
        assert!(r.status.is_success(), "{}", r.text);
        // The fast client keeps up.
        while let Some(_e) = fast.next(Duration::from_millis(1)).await {
            received += 1;
        }
    }
    let writes = started.elapsed();
    received += fast.drain(QUIET).await.len();
    assert_eq!(received, 4000, "the fast client got everything");
    // The slow one, read at last, ends with too_slow.
    let mut last = None;
    while let Some(e) = slow.next(Duration::from_secs(3)).await {
        last = Some(e);
    }
    let last = last.expect("some events");
    assert_eq!(last.event, "error", "{last:?}");
    assert_eq!(last.data["code"], "too_slow");
    assert!(
        writes < Duration::from_secs(60),
        "writes never waited: {writes:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_stream_ends_with_its_session() {
    let app = TestApp::spawn_with(|c| c.realtime.heartbeat_secs = 1).await;
    notes(&app, "").await;
    signup(&app, "ann@example.com").await;
    let l = login(&app, "ann@example.com").await;
    let tok = access(&l);
    let mut s = Stream::open(&app, Some(&tok), None).await;
    s.subscribe(&app, Some(&tok), json!(["notes"])).await;
    let r = bearer(&app, &tok, Method::POST, "/v1/auth/logout", None).await;
    assert!(r.status.is_success(), "{}", r.text);
    let e = s.next(Duration::from_secs(5)).await.expect("an end event");
    assert_eq!(e.event, "error");
    assert_eq!(e.data["code"], "session_ended");
    assert!(
        s.next(Duration::from_secs(2)).await.is_none(),
        "the stream is closed"
    );
    app.shutdown().await;
}

/// A realtime WebSocket client.
struct Ws {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    async fn open(app: &TestApp, bearer_token: Option<&str>, query: &str) -> Ws {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{}/v1/realtime/ws{query}", app.addr);
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = bearer_token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (socket, res) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(res.status(), 101);
        Ws { socket }
    }

    async fn send(&mut self, v: Value) {
        use futures::SinkExt;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::Text(
                v.to_string().into(),
            ))
            .await
            .unwrap();
    }

    /// The next JSON message within `wait`; `None` on silence or close.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).ok(),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = self.next(quiet).await {
            out.push(v);
        }
        out
    }
}

async fn realtime_token(app: &TestApp, access_token: &str) -> String {
    let r = bearer(app, access_token, Method::POST, "/v1/realtime/token", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["expiresIn"], 60);
    r.body["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn websocket_subscriptions_follow_the_rules_and_resume_with_after() {
    let app = TestApp::spawn().await;
    notes(&app, "owner = @request.auth.id").await;
    let a = signup(&app, "ann@example.com").await;
    signup(&app, "bob@example.com").await;
    let ann = access(&login(&app, "ann@example.com").await);
    let bob = access(&login(&app, "bob@example.com").await);
    let ann_id = a["id"].as_str().unwrap().to_owned();
    let mut wa = Ws::open(&app, Some(&ann), "").await;
    let mut wb = Ws::open(&app, Some(&bob), "").await;
    let mut anon = Ws::open(&app, None, "").await;
    for w in [&mut wa, &mut wb, &mut anon] {
        w.send(json!({"type": "subscribe", "id": "s1", "topic": "notes"}))
            .await;
        let m = w.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!(m, json!({"type": "subscribed", "id": "s1"}));
    }
    app.create("notes", json!({"title": "ann's", "owner": ann_id}))
        .await;
    let m = wa.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(m["type"], "event");
    assert_eq!(m["subscription"], "s1");
    assert_eq!(m["action"], "create");
    assert_eq!(m["collection"], "notes");
    assert_eq!(m["record"]["title"], "ann's");
    let seen = m["seq"].as_i64().unwrap();
    assert!(wb.drain(QUIET).await.is_empty(), "bob may not view it");
    assert!(anon.drain(QUIET).await.is_empty(), "nor may anonymous");
    // A filter, bad input, unsubscribe.
    wa.send(json!({"type": "subscribe", "id": "big", "topic": "notes", "filter": "n > 10"}))
        .await;
    assert_eq!(
        wa.next(Duration::from_secs(5)).await.unwrap()["type"],
        "subscribed"
    );
    wa.send(json!({"type": "subscribe", "id": "bad", "topic": "notes", "filter": "n >"}))
        .await;
    let e = wa.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["id"], "bad");
    assert_eq!(e["problem"]["status"], 400);
    assert!(e["problem"]["errors"]["filter"].is_object(), "{e}");
    wa.send(json!({"type": "subscribe", "id": "x", "topic": "nope"}))
        .await;
    let e = wa.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        e["problem"]["errors"]["topic"]["code"],
        "unknown_collection"
    );
    wa.send(json!({"type": "subscribe", "id": "s1", "topic": "notes"}))
        .await;
    let e = wa.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e["problem"]["errors"]["id"]["code"], "duplicate");
    wa.send(json!({"type": "subscribe", "id": "nl", "topic": "notes", "filter": "n > 1\n"}))
        .await;
    let e = wa.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        e["problem"]["errors"]["topic"]["code"], "invalid_topic",
        "{e}"
    );
    wa.send(json!({"type": "hello"})).await;
    let e = wa.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e["problem"]["code"], "invalid_message");
    app.create("notes", json!({"title": "big", "n": 50, "owner": ann_id}))
        .await;
    let got = wa.drain(QUIET).await;
    let subs: Vec<&str> = got
        .iter()
        .map(|m| m["subscription"].as_str().unwrap())
        .collect();
    assert_eq!(subs.len(), 2, "{got:?}");
    assert!(subs.contains(&"s1") && subs.contains(&"big"));
    wa.send(json!({"type": "unsubscribe", "id": "big"})).await;
    assert_eq!(
        wa.next(Duration::from_secs(5)).await.unwrap(),
        json!({"type": "unsubscribed", "id": "big"})
    );
    // A new socket resumes after the first event: no gap, no duplicate.
    drop(wa);
    let mut again = Ws::open(&app, Some(&ann), "").await;
    again
        .send(json!({"type": "subscribe", "id": "r", "topic": "notes", "after": seen}))
        .await;
    let got = again.drain(QUIET).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["record"]["title"], "big");
    assert_eq!(got[1], json!({"type": "subscribed", "id": "r"}));
    // A second subscription replaying the same span: the first gets nothing twice.
    again
        .send(json!({"type": "subscribe", "id": "r2", "topic": "notes", "after": seen}))
        .await;
    let got = again.drain(QUIET).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["subscription"], "r2");
    assert_eq!(got[1], json!({"type": "subscribed", "id": "r2"}));
    app.create("notes", json!({"title": "live", "owner": ann_id}))
        .await;
    let got = again.drain(QUIET).await;
    let subs: Vec<&str> = got
        .iter()
        .map(|m| m["subscription"].as_str().unwrap())
        .collect();
    assert_eq!(subs.len(), 2, "{got:?}");
    assert!(subs.contains(&"r") && subs.contains(&"r2"));
    // A collection whose list rule refuses outright is 403.
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(json!({"name": "secret", "fields": [{"name": "t", "type": "text"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    again
        .send(json!({"type": "subscribe", "id": "s", "topic": "secret"}))
        .await;
    let e = again.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(e["problem"]["status"], 403, "{e}");
    app.shutdown().await;
}

#[tokio::test]
async fn realtime_tokens_open_connections_and_are_no_access_tokens() {
    let app = TestApp::spawn_with(|c| c.realtime.heartbeat_secs = 1).await;
    notes(&app, "@request.auth.id != \"\"").await;
    signup(&app, "ann@example.com").await;
    let ann = access(&login(&app, "ann@example.com").await);
    // Anonymous callers and API keys get none.
    let r = app.send(app.req(Method::POST, "/v1/realtime/token")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let rt = realtime_token(&app, &ann).await;
    // Not an access token, and not a file token.
    let r = bearer(
        &app,
        &rt,
        Method::GET,
        "/v1/collections/notes/records",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = app
        .send(app.req(Method::GET, &format!("/v1/files/notes/x/y.png?token={rt}")))
        .await;
    assert_ne!(r.status, StatusCode::OK);
    let r = app
        .send(app.req(Method::GET, "/v1/realtime?token=nonsense"))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // An EventSource-style stream with ?token= is the account's.
    let res = app
        .req(Method::GET, &format!("/v1/realtime?token={rt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    // A WebSocket with ?token= too; it ends when the session does.
    let mut w = Ws::open(&app, None, &format!("?token={rt}")).await;
    w.send(json!({"type": "subscribe", "id": "n", "topic": "notes"}))
        .await;
    assert_eq!(
        w.next(Duration::from_secs(5)).await.unwrap()["type"],
        "subscribed"
    );
    app.create("notes", json!({"title": "hi"})).await;
    assert_eq!(
        w.next(Duration::from_secs(5)).await.unwrap()["action"],
        "create"
    );
    let r = bearer(&app, &ann, Method::POST, "/v1/auth/logout", None).await;
    assert!(r.status.is_success(), "{}", r.text);
    let e = w
        .next(Duration::from_secs(5))
        .await
        .expect("an end message");
    assert_eq!(e["problem"]["code"], "session_ended");
    assert!(w.next(Duration::from_secs(3)).await.is_none(), "closed");
    // The token's session is gone: it opens nothing more.
    let r = app
        .send(app.req(Method::GET, &format!("/v1/realtime?token={rt}")))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}
