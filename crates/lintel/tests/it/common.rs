//! The test harness: `TestApp::spawn()` starts Lintel on 127.0.0.1:0 with a fresh data
//! folder and an admin token, and offers request helpers for the anonymous and admin
//! personas.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lintel::clock::ManualClock;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// At least 32 characters: Lintel refuses shorter admin tokens.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghij";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// The server's clock, when the test moves time itself ([`TestApp::spawn_clocked`]).
    pub clock: Option<Arc<ManualClock>>,
    running: Option<lintel::Running>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the problem shape and returns the code.
    pub fn problem_code(&self) -> &str {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "not a problem: {} {}",
            self.status,
            self.text
        );
        assert_eq!(
            self.body["status"],
            json!(self.status.as_u16()),
            "{}",
            self.text
        );
        assert!(
            self.body["type"].is_string() && self.body["title"].is_string(),
            "{}",
            self.text
        );
        assert!(self.body["detail"].is_string(), "{}", self.text);
        assert!(
            self.body["requestId"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{}",
            self.text
        );
        self.body["code"].as_str().unwrap_or("")
    }

    /// The code of one field error.
    pub fn field_error(&self, field: &str) -> Option<&str> {
        self.body["errors"][field]["code"].as_str()
    }
}

/// The PostgreSQL server the suite runs against, when `LINTEL_TEST_DATABASE_URL` is set
/// (e.g. `postgres://postgres@127.0.0.1:5432/test`); otherwise the embedded store.
pub fn postgres_url() -> Option<String> {
    std::env::var("LINTEL_TEST_DATABASE_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A configuration for a server whose data lives in `dir`. On PostgreSQL each data
/// folder gets its own database (named in the folder, so a restart finds it again).
pub async fn config(dir: &std::path::Path) -> lintel::Config {
    let mut cfg = lintel::Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        admin_token: lintel::config::Secret(ADMIN_TOKEN.into()),
        ..Default::default()
    };
    cfg.http.shutdown_grace_ms = 2_000;
    // Cheap hashes keep the suite fast; production defaults are far costlier.
    cfg.auth.argon2_memory_kib = 1024;
    cfg.auth.argon2_iterations = 1;
    if let Some(admin_url) = postgres_url() {
        let marker = dir.join(".test-database");
        let name = match std::fs::read_to_string(&marker) {
            Ok(n) => n,
            Err(_) => {
                let n = format!("lintel_t_{}", lintel::ids::record_id());
                std::fs::write(&marker, &n).expect("write the database marker");
                n
            }
        };
        create_database(&admin_url, &name).await;
        let mut url = url::Url::parse(&admin_url).expect("LINTEL_TEST_DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        cfg.database_url = lintel::config::Secret(url.to_string());
    }
    cfg
}

async fn admin_client(admin_url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("LINTEL_TEST_DATABASE_URL is set but PostgreSQL is not reachable: {e}")
        });
    tokio::spawn(conn);
    client
}

async fn create_database(admin_url: &str, name: &str) {
    let client = admin_client(admin_url).await;
    if let Err(e) = client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        && e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
    {
        panic!("creating test database {name}: {e}");
    }
}

/// Drops the PostgreSQL database of a data folder made by [`config`] (no-op on SQLite).
pub async fn drop_database(dir: &std::path::Path) {
    let (Some(admin_url), Ok(name)) = (
        postgres_url(),
        std::fs::read_to_string(dir.join(".test-database")),
    ) else {
        return;
    };
    let client = admin_client(&admin_url).await;
    let _ = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await;
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(f: impl FnOnce(&mut lintel::Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = config(dir.path()).await;
        f(&mut cfg);
        Self::start_in(dir, cfg).await
    }

    /// A server whose clock stands still until the test moves it ([`TestApp::advance`]).
    pub async fn spawn_clocked(f: impl FnOnce(&mut lintel::Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = config(dir.path()).await;
        f(&mut cfg);
        Self::start_clocked(dir, cfg, Arc::new(ManualClock::new())).await
    }

    pub async fn start_in(dir: tempfile::TempDir, cfg: lintel::Config) -> Self {
        let running = lintel::start(cfg).await.expect("server starts");
        Self::with(running, dir, None)
    }

    /// A server on a listener the test bound itself (its port known beforehand).
    pub async fn start_on(
        dir: tempfile::TempDir,
        cfg: lintel::Config,
        listener: std::net::TcpListener,
    ) -> Self {
        let running = lintel::start_on(
            cfg,
            Arc::new(lintel::clock::SystemClock::new()),
            Some(listener),
        )
        .await
        .expect("server starts");
        Self::with(running, dir, None)
    }

    pub async fn start_clocked(
        dir: tempfile::TempDir,
        cfg: lintel::Config,
        clock: Arc<ManualClock>,
    ) -> Self {
        let running = lintel::start_with(cfg, clock.clone())
            .await
            .expect("server starts");
        Self::with(running, dir, Some(clock))
    }

    fn with(
        running: lintel::Running,
        dir: tempfile::TempDir,
        clock: Option<Arc<ManualClock>>,
    ) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        TestApp {
            addr: running.addr,
            client,
            dir,
            clock,
            running: Some(running),
        }
    }

    /// Moves the server's clock forward (only for [`TestApp::spawn_clocked`] servers).
    pub fn advance(&self, by: Duration) {
        self.clock
            .as_ref()
            .expect("a server started with spawn_clocked")
            .advance(by);
    }

    /// The sum of this server's samples of `name` whose labels include every pair of
    /// `labels` (each server has its own registry, so nothing else counts here).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.running().state.metrics.render();
        sum_metric(&text, name, labels)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.expect("request sent");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.req(Method::GET, path)).await
    }

    pub async fn json(&self, method: Method, path: &str, body: Value) -> Reply {
        self.send(self.req(method, path).json(&body)).await
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut r = self.req(method, path).bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        self.send(r).await
    }

    /// Creates a collection and asserts 201. Without `rules` in the spec, the
    /// collection is made open to anyone (the tests of rules give their own).
    pub async fn collection(&self, mut spec: Value) -> Reply {
        if spec.get("rules").is_none() {
            spec["rules"] =
                json!({"list": "", "view": "", "create": "", "update": "", "delete": ""});
        }
        let r = self
            .admin(Method::POST, "/v1/collections", Some(spec))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r
    }

    /// Creates a record and asserts 201.
    pub async fn create(&self, coll: &str, body: Value) -> Value {
        let r = self
            .json(
                Method::POST,
                &format!("/v1/collections/{coll}/records"),
                body,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body
    }

    /// The `posts` table used across tests (and `authors` it relates to).
    pub async fn posts(&self) {
        self.collection(json!({
            "name": "authors",
            "fields": [{"name": "name", "type": "text", "required": true}]
        }))
        .await;
        self.collection(json!({
            "name": "posts",
            "kind": "table",
            "fields": [
                {"name": "title", "type": "text", "required": true, "max": 100},
                {"name": "slug", "type": "text", "unique": true, "pattern": "[a-z0-9-]+"},
                {"name": "views", "type": "integer", "min": 0},
                {"name": "score", "type": "number"},
                {"name": "published", "type": "bool", "default": false},
                {"name": "contact", "type": "email"},
                {"name": "link", "type": "url"},
                {"name": "at", "type": "datetime"},
                {"name": "category", "type": "select", "values": ["news", "tech", "life"]},
                {"name": "meta", "type": "json"},
                {"name": "author", "type": "relation", "collection": "authors", "onDelete": "restrict"},
                {"name": "coauthors", "type": "relation", "collection": "authors", "multiple": true}
            ],
            "indexes": [{"fields": ["views"]}]
        }))
        .await;
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        drop_database(self.dir.path()).await;
    }

    /// Stops the server but keeps the data folder.
    pub async fn stop_keep_dir(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.dir
    }

    pub fn running(&self) -> &lintel::Running {
        self.running.as_ref().unwrap_or_else(|| unreachable!())
    }
}

/// A local SMTP sink: accepts every message and keeps it (the raw DATA text).
pub struct SmtpSink {
    pub port: u16,
    pub messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Woken at each message kept.
    arrived: Arc<tokio::sync::Notify>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        Self::start_slow(std::time::Duration::ZERO).await
    }

    /// A sink that waits `delay` before greeting each connection (a slow server).
    pub async fn start_slow(delay: std::time::Duration) -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = messages.clone();
        let arrived = Arc::new(tokio::sync::Notify::new());
        let notify = arrived.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let store = store.clone();
                let notify = notify.clone();
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut lines = BufReader::new(r).lines();
                    tokio::time::sleep(delay).await;
                    let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                    let mut data: Option<String> = None;
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Some(buf) = data.as_mut() {
                            if line == "." {
                                store.lock().unwrap().push(std::mem::take(buf));
                                notify.notify_waiters();
                                data = None;
                                let _ = w.write_all(b"250 queued\r\n").await;
                            } else {
                                buf.push_str(line.strip_prefix('.').unwrap_or(&line));
                                buf.push('\n');
                            }
                            continue;
                        }
                        let cmd = line.to_ascii_uppercase();
                        let reply: &[u8] = if cmd.starts_with("EHLO") {
                            b"250-sink\r\n250 8BITMIME\r\n"
                        } else if cmd.starts_with("DATA") {
                            data = Some(String::new());
                            b"354 go on\r\n"
                        } else if cmd.starts_with("QUIT") {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            break;
                        } else {
                            b"250 ok\r\n"
                        };
                        let _ = w.write_all(reply).await;
                    }
                });
            }
        });
        Self {
            port,
            messages,
            arrived,
        }
    }

    /// Waits for the `n`th message (0-based) to arrive (woken by the sink as each one
    /// is kept; at most 30 s) and returns it.
    pub async fn message(&self, n: usize) -> String {
        let wait = async {
            loop {
                let next = self.arrived.notified();
                tokio::pin!(next);
                next.as_mut().enable();
                if let Some(m) = self.messages.lock().unwrap().get(n) {
                    return m.clone();
                }
                next.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("no mail #{n} arrived"))
    }

    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }
}

/// The token in a Lintel mail ("Or enter this token: ...").
pub fn mailed_token(mail: &str) -> String {
    let unfolded = mail.replace("=\n", "");
    unfolded
        .split("token: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("a token in the mail")
        .to_owned()
}

// Personas shared by the suites: a signed-up user, its access token, a superuser and
// API keys. Every helper asserts its own success, so a persona that could not be made
// fails the test where it was asked for.

/// The password every persona signs up with.
pub const PW: &str = "correct horse battery";

/// Signs a user up through the records API (asserts 201) and returns the record.
pub async fn signup(app: &TestApp, email: &str) -> Value {
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

/// Signs a user in with a bearer token (asserts 200) and returns the login body.
pub async fn login(app: &TestApp, email: &str) -> Value {
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": email, "password": PW}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

/// A request with a bearer token (access token, API key or admin token).
pub async fn bearer(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let mut r = app.req(method, path).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    app.send(r).await
}

/// The access token of a login body.
pub fn access(login: &Value) -> String {
    login["accessToken"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

/// Makes `root@example.com` a superuser (straight in the store) and returns its
/// access token.
pub async fn superuser_token(app: &TestApp) -> String {
    let hash = app
        .running()
        .state
        .auth
        .hasher
        .hash(PW.into())
        .await
        .unwrap();
    lintel::auth::superusers::upsert(
        app.running().state.store.as_ref(),
        "root@example.com",
        &hash,
    )
    .await
    .unwrap();
    let r = app
        .json(
            Method::POST,
            "/v1/auth/login",
            json!({"email": "root@example.com", "password": PW, "collection": "_superusers"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    access(&r.body)
}

/// Creates an API key with `scopes` for the account of `token` (asserts 201).
pub async fn api_key(app: &TestApp, token: &str, scopes: Value) -> String {
    let r = bearer(
        app,
        token,
        Method::POST,
        "/v1/auth/api-keys",
        Some(json!({"name": "k", "scopes": scopes})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["key"].as_str().unwrap().to_owned()
}

/// The sum of the samples of `name` in Prometheus text whose labels include `labels`.
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap_or_else(|_| panic!("a number: {v}")))
        .sum()
}

/// For tests that hold the write lock and count writes: writes wait long on the
/// lock (`store.busy_timeout_ms`, `database_pool.lock_timeout_ms`), so a hold never
/// turns into a 503, and no purge runs (its first run, at start, is a write of its
/// own that would join the ones counted).
pub fn patient(c: &mut lintel::Config) {
    c.store.purge_interval_secs = 0;
    c.store.busy_timeout_ms = 30_000;
    c.database_pool.lock_timeout_ms = 30_000;
}

/// A write lock held from outside Lintel, so its writes wait (and overlap) until the
/// test lets go. On SQLite: `BEGIN IMMEDIATE` on the database file from another
/// connection (the writer's next group blocks in its own `BEGIN IMMEDIATE`, and every
/// write sent meanwhile queues behind it). On PostgreSQL: `LOCK TABLE .. IN EXCLUSIVE
/// MODE`, or `SELECT .. FOR UPDATE` of one row, in an open transaction.
pub struct WriteHold {
    inner: HoldInner,
    /// SQLite: the sizes of the groups the writer had started when the hold began.
    started_before: f64,
}

enum HoldInner {
    Sqlite {
        release: std::sync::mpsc::Sender<()>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Postgres(tokio_postgres::Client),
}

impl TestApp {
    /// Holds the write lock of `table` (on PostgreSQL; the whole database on SQLite),
    /// or only the row `row` of it on PostgreSQL.
    pub async fn hold_writes(&self, table: &str, row: Option<&str>) -> WriteHold {
        // Background writes of earlier requests (audit rows) finish first, so every
        // write that waits on the hold is one the test sent.
        let busy = self
            .running()
            .state
            .tasks
            .wait_idle(Duration::from_secs(10))
            .await;
        assert_eq!(busy, 0, "background tasks still running");
        let started_before = self.metric("lintel_store_group_commit_size_sum", &[]).await;
        let state = &self.running().state;
        if state.config.database_url.0.is_empty() {
            let path = state.config.database_path();
            let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
            let (release, release_rx) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                let conn = rusqlite::Connection::open(path).expect("open the database");
                conn.busy_timeout(Duration::from_secs(30))
                    .expect("busy timeout");
                conn.execute_batch("BEGIN IMMEDIATE")
                    .expect("take the write lock");
                let _ = locked_tx.send(());
                let _ = release_rx.recv();
                conn.execute_batch("COMMIT").expect("let go");
            });
            locked_rx.await.expect("the lock is held");
            WriteHold {
                inner: HoldInner::Sqlite {
                    release,
                    thread: Some(thread),
                },
                started_before,
            }
        } else {
            let (client, conn) =
                tokio_postgres::connect(&state.config.database_url.0, tokio_postgres::NoTls)
                    .await
                    .expect("connect to the test database");
            tokio::spawn(conn);
            client.batch_execute("BEGIN").await.expect("begin");
            match row {
                Some(id) => {
                    client
                        .execute(
                            &format!("SELECT 1 FROM \"{table}\" WHERE id = $1 FOR UPDATE"),
                            &[&id],
                        )
                        .await
                        .expect("lock the row");
                }
                None => client
                    .batch_execute(&format!("LOCK TABLE \"{table}\" IN EXCLUSIVE MODE"))
                    .await
                    .expect("lock the table"),
            }
            WriteHold {
                inner: HoldInner::Postgres(client),
                started_before,
            }
        }
    }
}

impl WriteHold {
    /// Writes of `app` waiting on the hold. SQLite: those in groups the writer started
    /// since the hold began (blocked in `BEGIN IMMEDIATE`) plus those queued behind
    /// them. PostgreSQL: other sessions of the database waiting on a lock.
    pub async fn waiting(&self, app: &TestApp) -> usize {
        match &self.inner {
            HoldInner::Sqlite { .. } => {
                let started = app.metric("lintel_store_group_commit_size_sum", &[]).await
                    - self.started_before;
                let queued = app.metric("lintel_store_write_queue", &[]).await;
                (started + queued) as usize
            }
            HoldInner::Postgres(client) => {
                // Inside the hold's transaction the statistics are a snapshot taken
                // once: clear it so each call sees the sessions as they are now.
                client
                    .batch_execute("SELECT pg_stat_clear_snapshot()")
                    .await
                    .expect("clear the statistics snapshot");
                let n: i64 = client
                    .query_one(
                        "SELECT COUNT(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event_type = 'Lock'
                           AND state = 'active' AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .expect("pg_stat_activity")
                    .get(0);
                n as usize
            }
        }
    }

    /// Waits (polled every 5 ms, for at most 20 s) until exactly `n` writes wait.
    pub async fn until_waiting(&self, app: &TestApp, n: usize) {
        let mut seen = 0;
        for _ in 0..4000 {
            seen = self.waiting(app).await;
            if seen == n {
                return;
            }
            assert!(seen < n, "{seen} writes wait, more than the {n} expected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("only {seen} of {n} writes ever waited on the hold");
    }

    pub async fn release(mut self) {
        match &mut self.inner {
            HoldInner::Sqlite { release, thread } => {
                let _ = release.send(());
                if let Some(t) = thread.take() {
                    tokio::task::spawn_blocking(move || t.join().expect("the holder thread"))
                        .await
                        .expect("join");
                }
            }
            HoldInner::Postgres(client) => client.batch_execute("COMMIT").await.expect("commit"),
        }
    }
}

/// The `notes` collection: owned records, private by default.
pub async fn notes(app: &TestApp) {
    app.collection(json!({
        "name": "notes",
        "fields": [
            {"name": "owner", "type": "relation", "collection": "users", "required": true},
            {"name": "title", "type": "text"},
            {"name": "private", "type": "bool", "default": true}
        ],
        "rules": {
            "list": "owner = @request.auth.id || private = false",
            "view": "owner = @request.auth.id || private = false",
            "create": "owner = @request.auth.id",
            "update": "owner = @request.auth.id",
            "delete": "owner = @request.auth.id"
        }
    }))
    .await;
}
