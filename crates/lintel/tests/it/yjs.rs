//! Collaborative documents (`yjs` fields) over real connections, with a Yjs client
//! (`yrs`) speaking the y-websocket protocol: writers and readers by the record's
//! rules, updates relayed and stored, the REST value, binary updates over HTTP, and a
//! restart that loses nothing. The npm `yjs` + `y-websocket` test is in
//! tests/yjs (run by .ci/run).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Text, Transact, Update};

use crate::common::{TestApp, access, bearer, login, signup};

/// A y-websocket client holding its own copy of the document.
struct Client {
    doc: yrs::Doc,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Client {
    async fn connect(app: &TestApp, path: &str, token: Option<&str>) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}{path}", app.addr)
            .into_client_request()
            .unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (socket, res) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(res.status(), 101);
        let mut c = Client {
            doc: yrs::Doc::new(),
            socket,
        };
        // As y-websocket does: our state vector first.
        let sv = c.doc.transact().state_vector();
        c.send(Message::Sync(SyncMessage::SyncStep1(sv))).await;
        c
    }

    async fn send(&mut self, m: Message) {
        self.socket
            .send(WsMessage::Binary(m.encode_v1().into()))
            .await
            .unwrap();
    }

    /// Handles what arrives until nothing does for `quiet`.
    async fn pump(&mut self, quiet: Duration) {
        loop {
            let Ok(Some(Ok(msg))) = tokio::time::timeout(quiet, self.socket.next()).await else {
                return;
            };
            let WsMessage::Binary(b) = msg else { continue };
            let mut dec = yrs::updates::decoder::DecoderV1::from(b.as_ref());
            let messages: Vec<_> = yrs::sync::MessageReader::new(&mut dec).collect();
            for m in messages {
                match m.unwrap() {
                    Message::Sync(SyncMessage::SyncStep1(sv)) => {
                        let u = self.doc.transact().encode_state_as_update_v1(&sv);
                        self.send(Message::Sync(SyncMessage::SyncStep2(u))).await;
                    }
                    Message::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) => {
                        self.doc
                            .transact_mut()
                            .apply_update(Update::decode_v1(&u).unwrap())
                            .unwrap();
                    }
                    _ => {}
                }
            }
        }
    }

    /// Inserts text at the end of `content` and sends the update.
    async fn type_text(&mut self, s: &str) {
        let text = self.doc.get_or_insert_text("content");
        let update = {
            let mut txn = self.doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, s);
            txn.encode_update_v1()
        };
        self.send(Message::Sync(SyncMessage::Update(update))).await;
    }

    fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("content");
        text.get_string(&self.doc.transact())
    }
}

const QUIET: Duration = Duration::from_millis(400);

async fn pages(app: &TestApp) -> (String, String, String) {
    app.collection(json!({
        "name": "pages",
        "fields": [{"name": "title", "type": "text"}, {"name": "owner", "type": "text"}, {"name": "doc", "type": "yjs"}],
        "rules": {"list": "", "view": "", "create": "@request.auth.id != \"\"", "update": "owner = @request.auth.id"},
    }))
    .await;
    let a = signup(app, "ann@example.com").await;
    signup(app, "bob@example.com").await;
    let ann = access(&login(app, "ann@example.com").await);
    let bob = access(&login(app, "bob@example.com").await);
    let r = bearer(
        app,
        &ann,
        Method::POST,
        "/v1/collections/pages/records",
        Some(json!({"title": "p", "owner": a["id"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["doc"], json!({}), "an empty document");
    (r.body["id"].as_str().unwrap().to_owned(), ann, bob)
}

/// Waits until the record's `doc` holds `want`.
async fn record_doc(app: &TestApp, id: &str, want: &Value) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let r = app
            .send(app.req(Method::GET, &format!("/v1/collections/pages/records/{id}")))
            .await;
        last = r.body["doc"].clone();
        if &last == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test]
async fn writers_edit_readers_follow_and_a_readers_edit_is_refused() {
    let app = TestApp::spawn().await;
    let (id, ann, bob) = pages(&app).await;
    let path = format!("/v1/yjs/pages/{id}/doc");
    let mut a = Client::connect(&app, &path, Some(&ann)).await;
    let mut b = Client::connect(&app, &path, Some(&bob)).await;
    let mut anon = Client::connect(&app, &path, None).await;
    a.pump(QUIET).await;
    b.pump(QUIET).await;
    anon.pump(QUIET).await;
    a.type_text("hello").await;
    b.pump(QUIET).await;
    anon.pump(QUIET).await;
    assert_eq!(b.text(), "hello");
    assert_eq!(anon.text(), "hello");
    // Bob may view, not update: his edit is neither applied nor relayed.
    b.type_text(" from bob").await;
    a.pump(QUIET).await;
    assert_eq!(a.text(), "hello");
    let r = app.send(app.req(Method::GET, &path)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"content": "hello"}));
    // The whole state as one binary update.
    let res = app
        .req(Method::GET, &format!("{path}?format=update"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    let bytes = res.bytes().await.unwrap();
    let fresh = yrs::Doc::new();
    fresh
        .transact_mut()
        .apply_update(Update::decode_v1(&bytes).unwrap())
        .unwrap();
    let t = fresh.get_or_insert_text("content");
    assert_eq!(t.get_string(&fresh.transact()), "hello");
    // Binary updates over HTTP: the writer's applies and reaches the peers.
    let more = {
        let d = yrs::Doc::new();
        d.transact_mut()
            .apply_update(Update::decode_v1(&bytes).unwrap())
            .unwrap();
        let t = d.get_or_insert_text("content");
        let sv = d.transact().state_vector();
        {
            let mut txn = d.transact_mut();
            t.insert(&mut txn, 5, " world");
        }
        d.transact().encode_state_as_update_v1(&sv)
    };
    let post = |token: Option<String>, body: Vec<u8>| {
        let mut r = app
            .req(Method::POST, &path)
            .header("content-type", "application/octet-stream")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        app.send(r)
    };
    let r = post(Some(bob.clone()), more.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = post(None, more.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = post(Some(ann.clone()), b"not an update".to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["code"], "invalid_update");
    let r = post(Some(ann.clone()), more).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    a.pump(QUIET).await;
    assert_eq!(a.text(), "hello world");
    // The record shows the document's JSON, written once edits settle, as an update
    // event like any other.
    let want = json!({"content": "hello world"});
    assert_eq!(record_doc(&app, &id, &want).await, want);
    let r = app
        .admin(Method::GET, "/v1/events?types=record.updated", None)
        .await;
    assert!(
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["record"]["doc"] == want),
        "{}",
        r.text
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_restart_keeps_every_acknowledged_edit() {
    let app = TestApp::spawn().await;
    let (id, ann, _) = pages(&app).await;
    let path = format!("/v1/yjs/pages/{id}/doc");
    let mut a = Client::connect(&app, &path, Some(&ann)).await;
    a.pump(QUIET).await;
    // Enough edits to be compacted on the way.
    for i in 0..250 {
        a.type_text(&format!("{}", i % 10)).await;
    }
    let mut b = Client::connect(&app, &path, Some(&ann)).await;
    b.pump(Duration::from_millis(800)).await;
    assert_eq!(b.text().len(), 250);
    let expected = b.text();
    drop(a);
    drop(b);
    let dir = app.stop_keep_dir().await;
    let cfg = crate::common::config(dir.path()).await;
    let app = TestApp::start_in(dir, cfg).await;
    let r = app.send(app.req(Method::GET, &path)).await;
    assert_eq!(r.body, json!({"content": expected}));
    let want = json!({"content": expected});
    assert_eq!(record_doc(&app, &id, &want).await, want);
    app.shutdown().await;
}

#[tokio::test]
async fn yjs_fields_are_checked_and_refused_where_they_do_not_apply() {
    let app = TestApp::spawn().await;
    let (id, ann, _) = pages(&app).await;
    // Not writable through the records API.
    let r = bearer(
        &app,
        &ann,
        Method::PATCH,
        &format!("/v1/collections/pages/records/{id}"),
        Some(json!({"doc": {"content": "x"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"]["doc"]["code"], "read_only");
    // A PUT without it keeps the document.
    let r = bearer(
        &app,
        &ann,
        Method::PATCH,
        &format!("/v1/collections/pages/records/{id}"),
        Some(json!({"title": "q"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["doc"], json!({}));
    // Unknown paths.
    for p in [
        format!("/v1/yjs/pages/{id}/title"),
        format!("/v1/yjs/pages/{id}/nope"),
        "/v1/yjs/pages/nosuchrecord/doc".to_owned(),
        format!("/v1/yjs/nope/{id}/doc"),
    ] {
        let r = app.send(app.req(Method::GET, &p)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{p}");
    }
    let r = app
        .send(app.req(Method::GET, &format!("/v1/yjs/pages/{id}/doc?format=xml")))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Options a yjs field does not take.
    let r = app
        .admin(
            Method::POST,
            "/v1/collections",
            Some(
                json!({"name": "bad", "fields": [{"name": "d", "type": "yjs", "required": true}]}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // A field added later starts as an empty document on existing records.
    let r = app
        .admin(
            Method::PATCH,
            "/v1/collections/pages",
            Some(json!({"addFields": [{"name": "notes", "type": "yjs"}]})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .send(app.req(Method::GET, &format!("/v1/collections/pages/records/{id}")))
        .await;
    assert_eq!(r.body["notes"], json!({}));
    // A deleted record's document goes with it.
    let r = app
        .admin(
            Method::DELETE,
            &format!("/v1/collections/pages/records/{id}"),
            None,
        )
        .await;
    assert!(r.status.is_success());
    let r = app
        .send(app.req(Method::GET, &format!("/v1/yjs/pages/{id}/doc")))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.shutdown().await;
}

/// The real npm `yjs` and `y-websocket` packages (tests/yjs/yjs.mjs): two writers
/// edit one text concurrently, one of them offline for a while, and converge; a third
/// joins later and gets the whole state; a reader's edit is not applied; the REST
/// value and a restart agree with the clients. Needs Node.js and `npm ci` in
/// `YJS_CLIENT_DIR`; without it the test fails when selected with `--ignored`.
#[tokio::test]
#[ignore = "needs Node.js with yjs and y-websocket installed (YJS_CLIENT_DIR)"]
async fn npm_yjs_clients_converge() {
    let dir = std::env::var("YJS_CLIENT_DIR")
        .expect("YJS_CLIENT_DIR names the folder with yjs.mjs and node_modules");
    let app = TestApp::spawn().await;
    let (id, ann, bob) = pages(&app).await;
    let token = |t: String| {
        let app = &app;
        async move {
            let r = bearer(app, &t, Method::POST, "/v1/realtime/token", None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            r.body["token"].as_str().unwrap().to_owned()
        }
    };
    let (a, b, c, r) = (
        token(ann.clone()).await,
        token(ann.clone()).await,
        token(ann.clone()).await,
        token(bob.clone()).await,
    );
    let out = tokio::process::Command::new("node")
        .arg(format!("{dir}/yjs.mjs"))
        .arg(format!("ws://{}/v1/yjs", app.addr))
        .arg(format!("pages/{id}/doc"))
        .args([&a, &b, &c, &r])
        .output()
        .await
        .expect("node runs");
    assert!(
        out.status.success(),
        "yjs.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sameEverywhere"], true, "{report}");
    assert_eq!(report["sawOnlineWhileOffline"], false, "{report}");
    assert_eq!(report["readerApplied"], false, "{report}");
    let text = report["text"].as_str().unwrap().to_owned();
    for part in ["alpha", "beta", "offline-b", "online-a"] {
        assert!(text.contains(part), "{text}");
    }
    let path = format!("/v1/yjs/pages/{id}/doc");
    let r = app.send(app.req(Method::GET, &path)).await;
    assert_eq!(r.body, json!({"content": text}));
    let dir = app.stop_keep_dir().await;
    let cfg = crate::common::config(dir.path()).await;
    let app = TestApp::start_in(dir, cfg).await;
    let r = app.send(app.req(Method::GET, &path)).await;
    assert_eq!(r.body, json!({"content": text}), "after a restart");
    let want = json!({"content": text});
    assert_eq!(record_doc(&app, &id, &want).await, want);
    app.shutdown().await;
}

/// Opens a WebSocket with extra headers; the HTTP status when it is refused.
async fn ws_status(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}{path}", app.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, res)) => res.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn a_cookie_opens_sockets_only_from_allowed_origins_and_rules_are_rechecked() {
    let app = TestApp::spawn_with(|c| {
        c.realtime.heartbeat_secs = 1;
        c.realtime.max_connections_per_user = 2;
    })
    .await;
    let (id, ann, _) = pages(&app).await;
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "ann@example.com", "password": crate::common::PW, "mode": "cookie"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let cookie = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("lintel_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let path = format!("/v1/yjs/pages/{id}/doc");
    let host = app.addr.to_string();
    let own = format!("http://{host}");
    // Cross-site WebSocket hijacking: another origin's page carries the cookie too.
    for p in [path.as_str(), "/v1/realtime/ws"] {
        let status = ws_status(
            &app,
            p,
            &[("cookie", &cookie), ("origin", "https://evil.example")],
        )
        .await;
        assert_eq!(status, 403, "{p}");
        let status = ws_status(&app, p, &[("cookie", &cookie), ("origin", &own)]).await;
        assert_eq!(status, 101, "{p}");
    }
    // Connections count against the realtime limits (2 an account here).
    let mut a = Client::connect(&app, &path, Some(&ann)).await;
    let _b = Client::connect(&app, &path, Some(&ann)).await;
    assert_eq!(
        ws_status(&app, &path, &[("authorization", &format!("Bearer {ann}"))]).await,
        429
    );
    // The record changes hands: ann's open socket may no longer write.
    a.pump(QUIET).await;
    let r = app
        .admin(
            Method::PATCH,
            &format!("/v1/collections/pages/records/{id}"),
            Some(json!({"owner": "someone-else"})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.type_text("too late").await;
    tokio::time::sleep(QUIET).await;
    let r = app.send(app.req(Method::GET, &path)).await;
    assert_eq!(r.body, json!({}), "the edit was refused: {}", r.text);
    app.shutdown().await;
}
