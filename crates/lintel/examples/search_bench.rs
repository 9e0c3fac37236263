//! The load client of `bench/search.sh`: loads a corpus into a running Lintel, then
//! measures full-text search through Lintel's HTTP API and the same queries run
//! directly on the store (FTS5 on SQLite; PostgreSQL's own `to_tsquery` on a table it
//! indexes itself), and record reads with and without the read cache.
//!
//! search_bench <url> <admin-token> load <docs>
//! search_bench <url> <admin-token> search <sqlite:DB | postgres:URL> <seconds> <clients>
//! search_bench <url> <admin-token> get <label> <seconds> <clients>
//! search_bench - - direct <sqlite db> <seconds>   (FTS5 only, one thread)
//!
//! `QUERY=<query>` runs one query instead of the 200; `LINTEL_SHAPE=1` runs FTS5 with
//! the SQL Lintel's list builds (records joined to the index) instead of the minimal
//! one; `PRAGMAS="..."` replaces the direct connection's settings (by default Lintel's
//! `mmap_size` of 256 MiB).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const SYLLABLES: [&str; 20] = [
    "ka", "ro", "mi", "tu", "sa", "ne", "po", "li", "da", "vo", "ge", "ha", "zu", "bi", "fo", "ku",
    "ra", "te", "yo", "ni",
];
const VOCABULARY: usize = 5000;
const PER_PAGE: usize = 20;

fn word(rank: usize) -> String {
    let mut w = format!("{}{}", SYLLABLES[rank % 20], SYLLABLES[(rank / 20) % 20]);
    if rank >= 400 {
        w.push_str(SYLLABLES[(rank / 400) % 20]);
    }
    if rank >= 8000 {
        w.push('x');
    }
    w
}

/// xorshift64*, seeded: the same corpus and queries on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Word ranks drawn by Zipf's law (s = 1), as natural text is.
struct Zipf(Vec<f64>);
impl Zipf {
    fn new(n: usize) -> Self {
        let mut acc = 0.0;
        Self(
            (1..=n)
                .map(|r| {
                    acc += 1.0 / r as f64;
                    acc
                })
                .collect(),
        )
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.0[self.0.len() - 1];
        let x = (rng.next() as f64 / u64::MAX as f64) * total;
        self.0.partition_point(|c| *c < x).min(self.0.len() - 1)
    }
}

fn doc(rng: &mut Rng, zipf: &Zipf) -> (String, String) {
    let words = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| word(zipf.sample(rng)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    (words(rng, 5), words(rng, 40))
}

/// (Lintel's query, the same as PostgreSQL `to_tsquery` text).
fn queries() -> Vec<(String, String)> {
    let mut rng = Rng(0x5EED);
    let zipf = Zipf::new(VOCABULARY);
    let mut out = Vec::new();
    for i in 0..200 {
        let q = match i % 5 {
            0 => {
                let w = word(10 + rng.below(90));
                (w.clone(), w)
            }
            1 => {
                let w = word(500 + rng.below(1500));
                (w.clone(), w)
            }
            2 => {
                let (a, b) = (word(10 + rng.below(200)), word(200 + rng.below(1000)));
                (format!("{a} {b}"), format!("{a} & {b}"))
            }
            3 => {
                let (_, body) = doc(&mut rng, &zipf);
                let w: Vec<&str> = body.split(' ').collect();
                let k = rng.below(w.len() - 1);
                (
                    format!("\"{} {}\"", w[k], w[k + 1]),
                    format!("{} <-> {}", w[k], w[k + 1]),
                )
            }
            _ => {
                let w = word(400 + rng.below(3000));
                let p = &w[..4];
                (format!("{p}*"), format!("{p}:*"))
            }
        };
        out.push(q);
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(label: &str, mut lat: Vec<Duration>, elapsed: Duration) {
    lat.sort();
    println!(
        "{label:<34} {:>9.0} q/s   p50 {:>7.3} ms   p99 {:>7.3} ms   ({} queries)",
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );
}

/// Runs `clients` loops of `f` for `seconds`, each over the queries from its own offset.
async fn drive<F, Fut>(seconds: u64, clients: usize, f: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = c * 37;
            while Instant::now() < end {
                let t = Instant::now();
                f(i).await;
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all, start.elapsed())
}

async fn load(http: &reqwest::Client, url: &str, token: &str, docs: usize) {
    let r = http
        .post(format!("{url}/v1/collections"))
        .bearer_auth(token)
        .json(&json!({"name": "articles", "fields": [
            {"name": "title", "type": "text", "searchable": true, "weight": "A"},
            {"name": "body", "type": "text", "searchable": true}
        ], "rules": {"list": "", "view": "", "create": "", "update": "", "delete": ""}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let mut rng = Rng(0xC0FFEE);
    let zipf = Zipf::new(VOCABULARY);
    let mut body = String::with_capacity(docs * 320);
    for _ in 0..docs {
        let (title, text) = doc(&mut rng, &zipf);
        body.push_str(&json!({"title": title, "body": text}).to_string());
        body.push('\n');
    }
    let started = Instant::now();
    let r = http
        .post(format!("{url}/v1/collections/articles/import?mode=atomic"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let href = r.headers()["location"].to_str().unwrap().to_owned();
    loop {
        let job: Value = http
            .get(format!("{url}{href}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match job["status"].as_str() {
            Some("succeeded") => break,
            Some("dead" | "cancelled") => panic!("import failed: {job}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    println!(
        "loaded {docs} documents (with their index) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn search_http(http: reqwest::Client, url: String, seconds: u64, clients: usize) {
    let qs = Arc::new(queries());
    let (lat, took) = drive(seconds, clients, move |i| {
        let (http, url, qs) = (http.clone(), url.clone(), qs.clone());
        async move {
            let q = &qs[i % qs.len()].0;
            let r = http
                .get(format!("{url}/v1/collections/articles/records"))
                .query(&[
                    ("search", q.as_str()),
                    ("perPage", "20"),
                    ("skipTotal", "1"),
                ])
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            let _ = r.bytes().await.unwrap();
        }
    })
    .await;
    report(&format!("lintel HTTP, {clients} clients"), lat, took);
}

fn sqlite_direct(db: &str, seconds: u64, clients: usize) {
    use lintel::schema::search::{Language, fts_table, parse};
    let mut list: Vec<String> = queries().into_iter().map(|(q, _)| q).collect();
    if let Ok(one) = std::env::var("QUERY") {
        list = vec![one];
    }
    let qs: Arc<Vec<String>> = Arc::new(
        list.iter()
            .map(|q| parse(q).unwrap().analyze(&[Language::English]).fts5())
            .collect(),
    );
    let fts = fts_table("articles");
    let sql = if std::env::var_os("LINTEL_SHAPE").is_some() {
        format!(
            "SELECT \"articles\".\"id\", \"articles\".\"created\", \"articles\".\"updated\", \"articles\".\"version\", \"articles\".\"title\", \"articles\".\"body\", -bm25(\"{fts}\", 1.0, 0.4, 0.2, 0.1) AS \"_score\" \
             FROM \"articles\" JOIN \"{fts}\" ON \"{fts}\".\"rowid\" = \"articles\".\"_rowid_\" \
             WHERE \"{fts}\" MATCH ?1 ORDER BY \"_score\" DESC, \"articles\".\"id\" ASC LIMIT ?2 OFFSET ?3"
        )
    } else {
        format!(
            "SELECT a.id, a.title, a.body, -bm25(\"{fts}\", 1.0, 0.4, 0.2, 0.1) AS s \
             FROM \"{fts}\" JOIN articles a ON a._rowid_ = \"{fts}\".rowid \
             WHERE \"{fts}\" MATCH ?1 ORDER BY s DESC LIMIT ?2 OFFSET ?3"
        )
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (qs, sql, db) = (qs.clone(), sql.clone(), db.to_owned());
            std::thread::spawn(move || {
                let conn = rusqlite::Connection::open_with_flags(
                    &db,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .unwrap();
                // Lintel's own read settings (store.mmap_bytes), unless PRAGMAS says else.
                let pragmas = std::env::var("PRAGMAS")
                    .unwrap_or_else(|_| "PRAGMA mmap_size=268435456;".to_owned());
                conn.execute_batch(&pragmas).unwrap();
                let mut stmt = conn.prepare(&sql).unwrap();
                let mut lat = Vec::new();
                let mut i = c * 37;
                while Instant::now() < end {
                    let t = Instant::now();
                    let rows: Vec<(String, String, String)> = stmt
                        .query_map(
                            rusqlite::params![&qs[i % qs.len()], PER_PAGE as i64 + 1, 0i64],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                        )
                        .unwrap()
                        .collect::<Result<_, _>>()
                        .unwrap();
                    std::hint::black_box(rows);
                    lat.push(t.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    report(
        &format!("SQLite FTS5 direct, {clients} threads"),
        lat,
        start.elapsed(),
    );
}

async fn postgres_direct(pg: &str, seconds: u64, clients: usize) {
    let (client, conn) = tokio_postgres::connect(pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // PostgreSQL's own analysis: a table it indexes with to_tsvector('english').
    client
        .batch_execute(
            "DROP TABLE IF EXISTS bench_native;
             CREATE TABLE bench_native AS SELECT id, title, body,
               setweight(to_tsvector('english', title), 'A') || to_tsvector('english', body) AS tsv
               FROM articles;
             CREATE INDEX bench_native_tsv ON bench_native USING GIN (tsv);
             ANALYZE bench_native;",
        )
        .await
        .unwrap();
    let qs: Arc<Vec<String>> = Arc::new(queries().into_iter().map(|(_, t)| t).collect());
    let mut clients_ = Vec::new();
    for _ in 0..clients {
        let (c, conn) = tokio_postgres::connect(pg, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        clients_.push(Arc::new(c));
    }
    let clients_ = Arc::new(clients_);
    let sql = format!(
        "SELECT id, title, body, ts_rank_cd(tsv, q) AS s FROM bench_native, to_tsquery('english', $1) q \
         WHERE tsv @@ q ORDER BY s DESC LIMIT {PER_PAGE}"
    );
    let (lat, took) = drive(seconds, clients, move |i| {
        let (cs, qs, sql) = (clients_.clone(), qs.clone(), sql.clone());
        async move {
            let c = &cs[i % cs.len()];
            let rows = c.query(&sql, &[&qs[i % qs.len()]]).await.unwrap();
            std::hint::black_box(rows);
        }
    })
    .await;
    report(
        &format!("PostgreSQL to_tsquery direct, {clients} conns"),
        lat,
        took,
    );
    client
        .batch_execute("DROP TABLE bench_native")
        .await
        .unwrap();
}

async fn gets(http: reqwest::Client, url: String, label: &str, seconds: u64, clients: usize) {
    let page: Value = http
        .get(format!(
            "{url}/v1/collections/articles/records?perPage=500&fields=id"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Arc<Vec<String>> = Arc::new(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect(),
    );
    let (lat, took) = drive(seconds, clients, move |i| {
        let (http, url, ids) = (http.clone(), url.clone(), ids.clone());
        async move {
            let r = http
                .get(format!(
                    "{url}/v1/collections/articles/records/{}",
                    ids[i % ids.len()]
                ))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            let _ = r.bytes().await.unwrap();
        }
    })
    .await;
    report(&format!("GET by id, {label}, {clients} clients"), lat, took);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, token, mode) = (args[1].clone(), args[2].clone(), args[3].as_str());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    match mode {
        "load" => load(&http, &url, &token, args[4].parse().unwrap()).await,
        "direct" => sqlite_direct(&args[4], args[5].parse().unwrap(), 1),
        "search" => {
            let (store, seconds, clients) = (
                args[4].as_str(),
                args[5].parse().unwrap(),
                args[6].parse().unwrap(),
            );
            search_http(http.clone(), url.clone(), seconds, 1).await;
            search_http(http.clone(), url.clone(), seconds, clients).await;
            if let Some(db) = store.strip_prefix("sqlite:") {
                sqlite_direct(db, seconds, 1);
                sqlite_direct(db, seconds, clients);
            } else if let Some(pg) = store.strip_prefix("postgres:") {
                postgres_direct(pg, seconds, 1).await;
                postgres_direct(pg, seconds, clients).await;
            }
        }
        "get" => {
            gets(
                http,
                url,
                &args[4],
                args[5].parse().unwrap(),
                args[6].parse().unwrap(),
            )
            .await;
        }
        other => panic!("unknown mode {other}"),
    }
}
