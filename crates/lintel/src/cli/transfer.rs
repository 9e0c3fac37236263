//! `lintel import` and `lintel export`: clients of a running server. They start the
//! job over HTTP (the file streamed up, never read whole), follow it to its end and,
//! for an export, stream the result down. A progress bar on a terminal, plain lines
//! otherwise. The server is `--url` (or `LINTEL_URL`), the credential `LINTEL_TOKEN`
//! (an access token, an API key or the admin token).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Where and as whom.
pub struct Target {
    pub url: String,
    pub token: String,
}

impl Target {
    pub fn from_env(url: String) -> anyhow::Result<Self> {
        let token = std::env::var("LINTEL_TOKEN").unwrap_or_default();
        if token.trim().is_empty() {
            bail!("set LINTEL_TOKEN to an access token, an API key or the admin token");
        }
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
        })
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    // The client speaks HTTPS with the same TLS provider as the server.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?)
}

/// A problem answer as one line.
async fn failure(res: reqwest::Response) -> anyhow::Error {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let detail = body["detail"].as_str().unwrap_or("");
    let errors = if body["errors"].is_object() {
        format!(" {}", body["errors"])
    } else {
        String::new()
    };
    anyhow::anyhow!("the server answered {status}: {detail}{errors}")
}

/// Progress shown as a bar (terminal) or as a line every few seconds.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_line: std::time::Instant,
}

impl Progress {
    fn new(len: Option<u64>, what: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match len {
                Some(n) => indicatif::ProgressBar::new(n).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                ),
                None => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_message(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            last_line: std::time::Instant::now(),
        }
    }

    fn set(&mut self, pos: Option<u64>, message: String) {
        match &self.bar {
            Some(b) => {
                if let Some(p) = pos {
                    b.set_position(p);
                }
                b.set_message(message);
            }
            None => {
                if self.last_line.elapsed() >= Duration::from_secs(2) {
                    eprintln!("{message}");
                    self.last_line = std::time::Instant::now();
                }
            }
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Follows a job until it ends; returns it.
async fn follow(
    client: &reqwest::Client,
    t: &Target,
    href: &str,
    verb: &str,
) -> anyhow::Result<Value> {
    let mut progress = Progress::new(None, verb);
    loop {
        let res = client
            .get(format!("{}{href}", t.url))
            .bearer_auth(&t.token)
            .send()
            .await
            .context("reading the job")?;
        if !res.status().is_success() {
            return Err(failure(res).await);
        }
        let job: Value = res.json().await?;
        let p = &job["progress"];
        let status = job["status"].as_str().unwrap_or("");
        progress.set(
            None,
            format!(
                "{verb}: {status}, {} processed, {} failed",
                p["processed"].as_u64().unwrap_or(0),
                p["failed"].as_u64().unwrap_or(0)
            ),
        );
        if matches!(status, "succeeded" | "dead" | "cancelled") {
            progress.done();
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn format_of(path: &Path, given: Option<&str>) -> anyhow::Result<&'static str> {
    let name = given.map(str::to_owned).unwrap_or_else(|| {
        path.extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase()
    });
    match name.as_str() {
        "ndjson" | "jsonl" => Ok("application/x-ndjson"),
        "csv" => Ok("text/csv"),
        other => bail!(
            "cannot tell the format of {} ({other:?}): use --format ndjson or csv",
            path.display()
        ),
    }
}

/// `lintel import COLLECTION FILE`.
pub async fn import(
    t: Target,
    collection: &str,
    file: &Path,
    mode: &str,
    format: Option<&str>,
) -> anyhow::Result<()> {
    let content_type = format_of(file, format)?;
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let len = f.metadata().await.map(|m| m.len()).ok();
    let progress = std::sync::Arc::new(std::sync::Mutex::new(Progress::new(len, "uploading")));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stream = {
        let progress = progress.clone();
        let sent = sent.clone();
        tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).inspect(move |chunk| {
            if let Ok(c) = chunk {
                let n = sent.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed)
                    + c.len() as u64;
                if let Ok(mut p) = progress.lock() {
                    p.set(Some(n), format!("uploading: {n} bytes"));
                }
            }
        })
    };
    let client = client()?;
    let res = client
        .post(format!(
            "{}/v1/collections/{collection}/import?mode={mode}",
            t.url
        ))
        .bearer_auth(&t.token)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .context("sending the file")?;
    if let Ok(p) = progress.lock() {
        p.done();
    }
    if res.status() != reqwest::StatusCode::ACCEPTED {
        return Err(failure(res).await);
    }
    let job: Value = res.json().await?;
    let href = job["_links"]["self"]["href"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eprintln!("import job {} started", job["id"].as_str().unwrap_or("?"));
    let job = follow(&client, &t, &href, "importing").await?;
    let r = &job["result"];
    eprintln!(
        "{}: {} imported, {} failed",
        job["status"].as_str().unwrap_or("?"),
        r["imported"].as_u64().unwrap_or(0),
        r["failed"].as_u64().unwrap_or(0)
    );
    for e in r["errors"].as_array().into_iter().flatten().take(20) {
        eprintln!("  line {}: {}", e["line"], e["errors"]);
    }
    if job["status"] != "succeeded" {
        bail!(
            "{}",
            job["lastError"].as_str().unwrap_or("the import failed")
        );
    }
    Ok(())
}

/// `lintel export COLLECTION`.
pub async fn export(
    t: Target,
    collection: &str,
    format: &str,
    filter: Option<String>,
    sort: Option<String>,
    fields: Option<Vec<String>>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let client = client()?;
    let res = client
        .post(format!("{}/v1/collections/{collection}/export", t.url))
        .bearer_auth(&t.token)
        .json(&json!({ "format": format, "filter": filter, "sort": sort, "fields": fields }))
        .send()
        .await
        .context("starting the export")?;
    if res.status() != reqwest::StatusCode::ACCEPTED {
        return Err(failure(res).await);
    }
    let job: Value = res.json().await?;
    let href = job["_links"]["self"]["href"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let job = follow(&client, &t, &href, "exporting").await?;
    if job["status"] != "succeeded" {
        bail!(
            "{}",
            job["lastError"].as_str().unwrap_or("the export failed")
        );
    }
    let download = job["result"]["_links"]["download"]["href"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let res = client
        .get(format!("{}{download}", t.url))
        .bearer_auth(&t.token)
        .send()
        .await
        .context("downloading the export")?;
    if !res.status().is_success() {
        return Err(failure(res).await);
    }
    let mut body = res.bytes_stream();
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &out {
        Some(p) => Box::new(
            tokio::fs::File::create(p)
                .await
                .with_context(|| format!("creating {}", p.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    while let Some(chunk) = body.next().await {
        sink.write_all(&chunk?).await?;
    }
    sink.flush().await?;
    eprintln!(
        "exported {} rows{}",
        job["result"]["rows"].as_u64().unwrap_or(0),
        out.map(|p| format!(" to {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}
