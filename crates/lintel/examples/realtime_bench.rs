//! Realtime load, measured (issue 14): N subscribers of one collection over SSE or
//! WebSocket, a writer creating records at a fixed rate, and for every event the time
//! from its commit (the record's `created`, same machine clock) to each subscriber.
//! Prints one JSON line: connections, RSS before and after connecting (per
//! connection), deliveries expected and made, and the p50/p99/max latency over all
//! deliveries and of the last subscriber per event.
//!
//!   cargo run --release --example realtime_bench -- \
//!     URL ADMIN_TOKEN SERVER_PID sse|ws|pb CONNECTIONS RATE SECONDS
//!   cargo run --release --example realtime_bench -- \
//!     URL ADMIN_TOKEN SERVER_PID yjs WRITERS 0 UPDATES_PER_WRITER
//!
//! Driven by bench/realtime.sh, which starts the server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) the process has used (clock ticks of 1/100 s).
fn cpu_secs(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u + k) / 100.0)
        })
        .unwrap_or(0.0)
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// (record id, latency in ms) of one delivered event.
fn latency(data: &Value) -> Option<(String, i64)> {
    // PocketBase writes "2026-12-08 01:02:03.456Z".
    let created = data["record"]["created"].as_str()?.replacen(' ', "T", 1);
    let at = time::OffsetDateTime::parse(&created, &time::format_description::well_known::Rfc3339)
        .ok()?;
    let ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
    Some((data["record"]["id"].as_str()?.to_owned(), now_ms() - ms))
}

type Samples = Arc<Mutex<Vec<(String, i64)>>>;

async fn sse_subscriber(
    http: reqwest::Client,
    base: String,
    api: &'static str,
    ready: tokio::sync::mpsc::Sender<()>,
    samples: Samples,
    stop: Arc<tokio::sync::Notify>,
) {
    let res = match http.get(format!("{base}{api}/realtime")).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            eprintln!("sse: {}", r.status());
            return;
        }
        Err(e) => {
            eprintln!("sse: {e}");
            return;
        }
    };
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let mut mine = Vec::new();
    let mut subscribed = false;
    loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            _ = stop.notified() => break,
        };
        let Some(Ok(chunk)) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let mut event = "";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = if matches!(v.trim(), "connect" | "PB_CONNECT") {
                        "connect"
                    } else {
                        "other"
                    };
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            if event == "connect" && !subscribed {
                let id = v["clientId"].as_str().unwrap_or_default().to_owned();
                let r = http
                    .post(format!("{base}{api}/realtime"))
                    .json(&json!({"clientId": id, "subscriptions": ["bench_rt"]}))
                    .send()
                    .await;
                if !matches!(&r, Ok(r) if r.status().is_success()) {
                    eprintln!("subscribe failed");
                    return;
                }
                subscribed = true;
                let _ = ready.send(()).await;
            } else if let Some(s) = latency(&v) {
                mine.push(s);
            }
        }
    }
    samples.lock().await.extend(mine);
}

async fn ws_subscriber(
    base: String,
    ready: tokio::sync::mpsc::Sender<()>,
    samples: Samples,
    stop: Arc<tokio::sync::Notify>,
) {
    let url = format!("{}/v1/realtime/ws", base.replacen("http", "ws", 1));
    let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url).await else {
        eprintln!("ws: connect failed");
        return;
    };
    let sub = json!({"type": "subscribe", "id": "b", "topic": "bench_rt"}).to_string();
    if socket
        .send(tokio_tungstenite::tungstenite::Message::Text(sub.into()))
        .await
        .is_err()
    {
        return;
    }
    let mut mine = Vec::new();
    loop {
        let msg = tokio::select! {
            m = socket.next() => m,
            _ = stop.notified() => break,
        };
        let Some(Ok(msg)) = msg else { break };
        let tokio_tungstenite::tungstenite::Message::Text(t) = msg else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        match v["type"].as_str() {
            Some("subscribed") => {
                let _ = ready.send(()).await;
            }
            Some("event") => {
                if let Some(s) = latency(&v) {
                    mine.push(s);
                }
            }
            _ => {}
        }
    }
    samples.lock().await.extend(mine);
}

/// Yjs updates per second on one document: `writers` clients each send `per_writer`
/// one-character inserts as fast as the socket takes them; an observer counts the
/// relayed updates until it has them all.
async fn yjs_bench(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    pid: &str,
    writers: usize,
    per_writer: u64,
) {
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::encoder::Encode;
    use yrs::{Text, Transact};
    let _ = http
        .post(format!("{base}/v1/collections"))
        .bearer_auth(token)
        .json(&json!({"name": "bench_doc", "fields": [{"name": "doc", "type": "yjs"}],
                       "rules": {"list": "", "view": "", "create": "", "update": "", "delete": ""}}))
        .send()
        .await;
    let rec: Value = match http
        .post(format!("{base}/v1/collections/bench_doc/records"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(e) => {
            eprintln!("yjs: {e}");
            return;
        }
    };
    let id = rec["id"].as_str().unwrap_or_default().to_owned();
    let url = format!(
        "{}/v1/yjs/bench_doc/{id}/doc",
        base.replacen("http", "ws", 1)
    );
    let Ok((mut observer, _)) = tokio_tungstenite::connect_async(url.clone()).await else {
        eprintln!("yjs: observer connect failed");
        return;
    };
    let expected = writers as u64 * per_writer;
    // Counts relayed updates until all arrived or none came for 3 s (a writer the
    // server dropped for reading too slowly sends no more); the time is the last one's.
    let counting = tokio::spawn(async move {
        let mut seen = 0u64;
        let mut last = Instant::now();
        while seen < expected {
            match tokio::time::timeout(Duration::from_secs(3), observer.next()).await {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b)))) => {
                    // Updates are [0 sync, 2 update, ...]; awareness and sync steps are not counted.
                    if b.len() > 2 && b[0] == 0 && b[1] == 2 {
                        seen += 1;
                        last = Instant::now();
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        (seen, last)
    });
    let rss_before = rss_kib(pid);
    let done = Arc::new(tokio::sync::Notify::new());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let url = url.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let Ok((socket, _)) = tokio_tungstenite::connect_async(url).await else {
                return;
            };
            // A peer that reads nothing is dropped as too slow: drain what comes back.
            let (mut socket, mut incoming) = socket.split();
            let drain =
                tokio::spawn(async move { while let Some(Ok(_)) = incoming.next().await {} });
            let doc = yrs::Doc::new();
            let text = doc.get_or_insert_text("content");
            for i in 0..per_writer {
                let update = {
                    let mut txn = doc.transact_mut();
                    let len = text.len(&txn);
                    text.insert(&mut txn, len, if i % 2 == 0 { "a" } else { "b" });
                    txn.encode_update_v1()
                };
                let frame = Message::Sync(SyncMessage::Update(update)).encode_v1();
                if socket
                    .send(tokio_tungstenite::tungstenite::Message::Binary(
                        frame.into(),
                    ))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Keep the socket open until the observer is done: what the server has
            // not read yet is lost when a client goes (it would sync again on return).
            let _ = tokio::time::timeout(Duration::from_secs(120), done.notified()).await;
            drain.abort();
        }));
    }
    let (seen, last) = counting.await.unwrap_or((0, Instant::now()));
    done.notify_waiters();
    let secs = last.duration_since(started).as_secs_f64().max(0.001);
    let rss = rss_kib(pid);
    for t in tasks {
        t.abort();
    }
    println!(
        "{}",
        json!({
            "mode": "yjs", "writers": writers, "updates_sent": expected, "updates_relayed": seen,
            "secs": (secs * 100.0).round() / 100.0,
            "updates_per_sec": (seen as f64 / secs).round(),
            "rss_before_kib": rss_before, "rss_after_kib": rss,
        })
    );
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let [_, base, token, pid, mode, conns, rate, seconds] = args.as_slice() else {
        eprintln!(
            "usage: realtime_bench URL ADMIN_TOKEN SERVER_PID sse|ws|pb CONNECTIONS RATE SECONDS"
        );
        std::process::exit(2);
    };
    let conns: usize = conns.parse().unwrap_or(1000);
    let rate: u64 = rate.parse().unwrap_or(100);
    let seconds: u64 = seconds.parse().unwrap_or(10);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .unwrap_or_default();
    if mode == "yjs" {
        yjs_bench(&http, base, token, pid, conns, seconds).await;
        return;
    }
    // `pb`: the same SSE workload against PocketBase (its /api paths and token).
    let pb = mode == "pb";
    let api = if pb { "/api" } else { "/v1" };
    let admin = |r: reqwest::RequestBuilder| {
        if pb {
            r.header("authorization", token.as_str())
        } else {
            r.bearer_auth(token)
        }
    };
    let spec = if pb {
        json!({"name": "bench_rt", "type": "base", "listRule": "", "viewRule": "", "createRule": "",
               "fields": [{"name": "n", "type": "number"}, {"name": "note", "type": "text"},
                          {"name": "created", "type": "autodate", "onCreate": true, "onUpdate": false}]})
    } else {
        json!({"name": "bench_rt", "fields": [{"name": "n", "type": "integer"}, {"name": "note", "type": "text"}],
               "rules": {"list": "", "view": "", "create": "", "update": "", "delete": ""}})
    };
    let _ = admin(http.post(format!("{base}{api}/collections")))
        .json(&spec)
        .send()
        .await;
    let rss_before = rss_kib(pid);
    let samples: Samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(conns.max(1));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        let (b, r, s, st) = (
            base.clone(),
            ready_tx.clone(),
            samples.clone(),
            stop.clone(),
        );
        tasks.push(if mode == "ws" {
            tokio::spawn(ws_subscriber(b, r, s, st))
        } else {
            tokio::spawn(sse_subscriber(http.clone(), b, api, r, s, st))
        });
        // Opened in waves so the listener's backlog keeps up.
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < conns {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(pid);
    // The writer: one record every 1/RATE s.
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let total = rate * seconds;
    let mut written = 0u64;
    let write_started = Instant::now();
    let cpu_server = cpu_secs(pid);
    let cpu_client = cpu_secs("self");
    for n in 0..total {
        tick.tick().await;
        let r = admin(http.post(format!("{base}{api}/collections/bench_rt/records")))
            .json(&json!({"n": n, "note": "a realtime benchmark record"}))
            .send()
            .await;
        if matches!(&r, Ok(r) if r.status().is_success()) {
            written += 1;
        }
    }
    let write_secs = write_started.elapsed().as_secs_f64();
    let cpu_server = cpu_secs(pid) - cpu_server;
    let cpu_client = cpu_secs("self") - cpu_client;
    let rss_load = rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.notify_waiters();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let samples = samples.lock().await;
    let mut all: Vec<i64> = samples.iter().map(|(_, l)| *l).collect();
    all.sort_unstable();
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (id, l) in samples.iter() {
        let e = last.entry(id.as_str()).or_insert(*l);
        *e = (*e).max(*l);
    }
    let mut last: Vec<i64> = last.into_values().collect();
    last.sort_unstable();
    println!(
        "{}",
        json!({
            "mode": mode, "connections": conns, "subscribed": ready,
            "connect_secs": (connect_secs * 10.0).round() / 10.0,
            "rate": rate, "seconds": seconds, "written": written,
            "write_secs": (write_secs * 10.0).round() / 10.0,
            "server_cpu_secs": (cpu_server * 10.0).round() / 10.0,
            "client_cpu_secs": (cpu_client * 10.0).round() / 10.0,
            "deliveries_per_sec": (samples.len() as f64 / write_secs).round(),
            "deliveries_expected": written * ready as u64,
            "deliveries": samples.len(),
            "rss_before_kib": rss_before, "rss_connected_kib": rss_after, "rss_under_load_kib": rss_load,
            "kib_per_connection": if ready > 0 { ((rss_after.saturating_sub(rss_before)) as f64 / ready as f64 * 10.0).round() / 10.0 } else { 0.0 },
            "latency_ms": {"p50": pct(&all, 0.5), "p99": pct(&all, 0.99), "max": all.last().copied().unwrap_or(-1)},
            "last_subscriber_ms": {"p50": pct(&last, 0.5), "p99": pct(&last, 0.99), "max": last.last().copied().unwrap_or(-1)},
        })
    );
}
