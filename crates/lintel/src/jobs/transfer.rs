//! Bulk import and export as jobs. An import's body is spooled to a file in
//! `<data_dir>/jobs/` while the request streams in (never held whole in memory); the
//! `import` job then reads it row by row, applies the same checks and access rules as
//! a create, and writes either everything in one transaction (`atomic`) or batch by
//! batch keeping the good rows (`partial`). Each batch commits together with the job's
//! progress under its lease, so a retried job resumes after the last committed batch
//! and never imports a row twice. An `export` job pages through the collection with
//! the caller's list rule and writes NDJSON or CSV to a file served by
//! `GET /v1/jobs/{id}/result`.
//!
//! Spool and export files live on the instance that received the request, so these
//! jobs go to that instance's own queue (`instance:<id>`).

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::access::{Caller, Principal, Via};
use crate::jobs::model::Job;
use crate::jobs::service::Failed;
use crate::records::service;
use crate::runtime::Runtime;
use crate::schema::{Collection, FieldType};
use crate::store::{Sql, SqlValue, WriteError, WriteMeta, WriteOp};

/// Rows per batch (validation, partial writes, progress).
const BATCH: usize = 500;
/// Bad rows reported one by one; past this only counted.
const MAX_REPORTED: usize = 1000;
/// The longest NDJSON line read (a longer one is a bad row, skipped without being
/// held).
const MAX_LINE: usize = 1024 * 1024;

/// The file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ndjson" => Some(Format::Ndjson),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    /// The media type of the format.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// The folder of spool and export files.
pub fn folder(rt: &Runtime) -> PathBuf {
    rt.config.data_dir.join("jobs")
}

/// A spool or export file name: only ids and a known extension, never a path.
pub fn file_path(rt: &Runtime, name: &str) -> Option<PathBuf> {
    let ok = name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.')
        && !name.starts_with('.');
    ok.then(|| folder(rt).join(name))
}

/// The queue of jobs that must run on this instance (their files are here).
pub fn local_queue(rt: &Runtime) -> String {
    format!("instance:{}", rt.jobs.instance)
}

/// Who started an import or export, as the job keeps it: enough to act as that
/// caller again (the account, and an API key's scopes).
pub fn caller_ref(caller: &Caller) -> Value {
    let scopes = match &caller.via {
        Via::ApiKey { id, scopes } => json!({ "key": id, "scopes": scopes }),
        _ => Value::Null,
    };
    let who = match (&caller.principal, &caller.via) {
        (_, Via::AdminToken) => json!({ "admin": true }),
        (Principal::Superuser { id, email }, _) => json!({ "superuser": id, "email": email }),
        (Principal::User { coll, record }, _) => {
            json!({ "collection": coll.name(), "id": record.id })
        }
        (Principal::Service { name }, _) => json!({ "service": name }),
        (Principal::Anonymous, _) => Value::Null,
    };
    json!({ "who": who, "key": scopes })
}

/// The caller an import or export acts as, from [`caller_ref`]; `None` when the
/// account is gone.
pub async fn caller_from(rt: &Runtime, r: &Value) -> Option<Caller> {
    let who = &r["who"];
    let principal = if who["admin"] == true {
        Principal::Superuser {
            id: "admin".into(),
            email: String::new(),
        }
    } else if let Some(id) = who["superuser"].as_str() {
        let mut sql = Sql::new(rt.store.dialect());
        sql.push("SELECT COUNT(*) FROM _lintel_superusers WHERE id = ")
            .bind(SqlValue::Text(id.to_owned()));
        if rt.store.query_count(sql).await.ok()? != 1 {
            return None;
        }
        Principal::Superuser {
            id: id.to_owned(),
            email: who["email"].as_str().unwrap_or_default().to_owned(),
        }
    } else if let (Some(c), Some(id)) = (who["collection"].as_str(), who["id"].as_str()) {
        let coll = rt.catalog().get(c)?;
        let record = service::get(rt, &coll, id).await.ok()?;
        Principal::User { coll, record }
    } else if let Some(name) = who["service"].as_str() {
        Principal::Service {
            name: name.to_owned(),
        }
    } else {
        return None;
    };
    let via = if who["admin"] == true {
        Via::AdminToken
    } else if let Some(key) = r["key"]["key"].as_str() {
        // A key revoked or expired since the job started no longer acts.
        let mut sql = Sql::new(rt.store.dialect());
        sql.push("SELECT COUNT(*) FROM _lintel_api_keys WHERE id = ")
            .bind(SqlValue::Text(key.to_owned()))
            .push(" AND revoked IS NULL AND (expires IS NULL OR expires > ")
            .bind(SqlValue::Int(rt.clock.now_ms()))
            .push(")");
        if rt.store.query_count(sql).await.ok()? != 1 {
            return None;
        }
        Via::ApiKey {
            id: key.to_owned(),
            scopes: r["key"]["scopes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    } else {
        Via::Nothing
    };
    Some(Caller {
        principal,
        via,
        ip: None,
        tls: false,
    })
}

/// One row read from an import file: its line number and its fields, or why it could
/// not be read.
type RowRead = (u64, Result<Map<String, Value>, String>);

/// A CSV cell as the field's JSON value.
fn csv_value(coll: &Collection, name: &str, cell: &str) -> Option<Value> {
    if cell.is_empty() {
        return None;
    }
    let Some(f) = coll.field(name) else {
        return Some(Value::String(cell.to_owned()));
    };
    let parsed = match f.field_type {
        FieldType::Integer => cell.parse::<i64>().ok().map(Value::from),
        FieldType::Number => cell
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        FieldType::Bool => match cell.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(Value::Bool(true)),
            "false" | "0" | "no" => Some(Value::Bool(false)),
            _ => None,
        },
        FieldType::Json | FieldType::GeoPoint => serde_json::from_str(cell).ok(),
        FieldType::Relation if f.multiple => serde_json::from_str(cell).ok(),
        _ => Some(Value::String(cell.to_owned())),
    };
    // A cell that does not parse goes in as text, so the field's check names it.
    Some(parsed.unwrap_or_else(|| Value::String(cell.to_owned())))
}

/// Reads an import file on a blocking thread, sending batches of rows.
fn read_rows(
    path: PathBuf,
    format: Format,
    coll: Arc<Collection>,
    skip_to: u64,
    tx: tokio::sync::mpsc::Sender<Vec<RowRead>>,
) -> Result<(), String> {
    let file =
        std::fs::File::open(&path).map_err(|e| format!("the import file cannot be read: {e}"))?;
    let mut batch = Vec::with_capacity(BATCH);
    let send = |batch: &mut Vec<RowRead>| -> bool {
        if batch.is_empty() {
            return true;
        }
        tx.blocking_send(std::mem::take(batch)).is_ok()
    };
    match format {
        Format::Ndjson => {
            use std::io::Read;
            let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
            let mut buf = Vec::new();
            let mut n = 0u64;
            loop {
                buf.clear();
                n += 1;
                let read = (&mut reader)
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut buf)
                    .map_err(|e| format!("line {n} cannot be read: {e}"))?;
                if read == 0 {
                    break;
                }
                let row = if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
                    // A line no row needs: skip to its end without holding it.
                    loop {
                        let mut rest = Vec::new();
                        let r = (&mut reader)
                            .take(64 * 1024)
                            .read_until(b'\n', &mut rest)
                            .map_err(|e| format!("line {n} cannot be read: {e}"))?;
                        if r == 0 || rest.ends_with(b"\n") {
                            break;
                        }
                    }
                    Err(format!("longer than {MAX_LINE} bytes"))
                } else {
                    let text = String::from_utf8_lossy(&buf);
                    let line = text.trim();
                    if n <= skip_to || line.is_empty() {
                        continue;
                    }
                    if std::str::from_utf8(&buf).is_err() {
                        Err("not UTF-8".to_owned())
                    } else {
                        match serde_json::from_str::<Value>(line) {
                            Ok(Value::Object(m)) => Ok(m),
                            Ok(_) => Err("not a JSON object".to_owned()),
                            Err(e) => Err(format!("not JSON: {e}")),
                        }
                    }
                };
                if n <= skip_to {
                    continue;
                }
                batch.push((n, row));
                if batch.len() >= BATCH && !send(&mut batch) {
                    return Ok(());
                }
            }
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(true)
                .from_reader(std::io::BufReader::with_capacity(256 * 1024, file));
            let headers = reader
                .headers()
                .map_err(|e| format!("the CSV header cannot be read: {e}"))?
                .clone();
            for rec in reader.records() {
                let (n, row) = match rec {
                    Ok(r) => {
                        let n = r.position().map_or(0, |p| p.line());
                        if r.len() != headers.len() {
                            (
                                n,
                                Err(format!(
                                    "{} cells where the header has {}",
                                    r.len(),
                                    headers.len()
                                )),
                            )
                        } else {
                            let mut m = Map::new();
                            for (h, cell) in headers.iter().zip(r.iter()) {
                                if let Some(v) = csv_value(&coll, h, cell) {
                                    m.insert(h.to_owned(), v);
                                }
                            }
                            (n, Ok(m))
                        }
                    }
                    Err(e) => {
                        let n = e.position().map_or(0, |p| p.line());
                        (n, Err(format!("not CSV: {e}")))
                    }
                };
                if n <= skip_to {
                    continue;
                }
                batch.push((n, row));
                if batch.len() >= BATCH && !send(&mut batch) {
                    return Ok(());
                }
            }
        }
    }
    send(&mut batch);
    Ok(())
}

/// What an import has done so far (also the job's progress and result).
#[derive(Debug, Default)]
struct Tally {
    processed: u64,
    imported: u64,
    failed: u64,
    errors: Vec<Value>,
    /// The last line whose batch is committed (partial mode).
    line: u64,
}

impl Tally {
    fn bad(&mut self, line: u64, errors: Value) {
        self.failed += 1;
        if self.errors.len() < MAX_REPORTED {
            self.errors.push(json!({ "line": line, "errors": errors }));
        }
    }

    fn progress(&self) -> Value {
        json!({ "processed": self.processed, "failed": self.failed, "imported": self.imported, "line": self.line, "errors": self.errors })
    }

    fn result(&self, mode: &str) -> Value {
        json!({
            "mode": mode,
            "imported": self.imported,
            "failed": self.failed,
            "errors": self.errors,
            "errorsTruncated": self.failed as usize > self.errors.len(),
        })
    }
}

/// A refused row's field errors as JSON.
fn row_errors(e: crate::records::error::RecordError) -> Value {
    use crate::records::error::RecordError;
    match e {
        RecordError::Invalid(errors)
        | RecordError::Store(crate::store::StoreError::Constraint(errors)) => {
            serde_json::to_value(errors).unwrap_or(Value::Null)
        }
        RecordError::Refused(_) => {
            json!({ "_record": { "code": "forbidden", "message": "the create rule does not allow this record" } })
        }
        other => {
            json!({ "_record": { "code": "invalid", "message": format!("{other:?}").chars().take(200).collect::<String>() } })
        }
    }
}

/// Runs an `import` job.
pub async fn run_import(rt: &Runtime, job: &Job, lease: &str) -> Result<Value, Failed> {
    let final_ = |m: String| Failed {
        error: m,
        retry: false,
        ..Failed::default()
    };
    let p = &job.payload;
    let mode = p["mode"].as_str().unwrap_or("atomic").to_owned();
    let format = p["format"]
        .as_str()
        .and_then(Format::parse)
        .ok_or_else(|| final_("the job names no format".into()))?;
    let path = p["file"]
        .as_str()
        .and_then(|f| file_path(rt, f))
        .ok_or_else(|| final_("the job names no import file".into()))?;
    let coll = p["collection"]
        .as_str()
        .and_then(|c| rt.catalog().get(c))
        .ok_or_else(|| final_("the collection no longer exists".into()))?;
    let caller = caller_from(rt, &p["as"])
        .await
        .ok_or_else(|| final_("the account that started the import no longer exists".into()))?;
    let meta = WriteMeta::by(Some(caller.event_actor()));
    // A partial import resumes after its last committed batch.
    let mut tally = Tally {
        line: job.progress["line"].as_u64().unwrap_or(0),
        imported: job.progress["imported"].as_u64().unwrap_or(0),
        processed: job.progress["processed"].as_u64().unwrap_or(0),
        failed: job.progress["failed"].as_u64().unwrap_or(0),
        errors: job.progress["errors"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    };
    if mode == "atomic" {
        // The whole import committed with its progress before the last attempt could
        // record the end: it is done, never imported twice.
        if job.progress["committed"] == true {
            return Ok(json!({
                "mode": mode,
                "imported": job.progress["imported"],
                "failed": 0,
                "errors": [],
                "errorsTruncated": false,
            }));
        }
        tally = Tally::default();
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<RowRead>>(4);
    let reader = {
        let coll = coll.clone();
        let skip = tally.line;
        tokio::task::spawn_blocking(move || read_rows(path, format, coll, skip, tx))
    };
    let atomic = mode == "atomic";
    let max_rows = rt.config.jobs.import_atomic_max_rows;
    let mut pending: Vec<(u64, WriteOp)> = Vec::new();
    while let Some(rows) = rx.recv().await {
        let mut prepared = Vec::with_capacity(rows.len());
        let mut lines = Vec::with_capacity(rows.len());
        for (line, row) in rows {
            tally.processed += 1;
            match row {
                Err(msg) => tally.bad(
                    line,
                    json!({ "_line": { "code": "invalid", "message": msg } }),
                ),
                Ok(input) => match service::prepare_create(
                    rt,
                    &caller,
                    &coll,
                    input,
                    &crate::files::Fresh::default(),
                )
                .await
                {
                    Ok(p) => {
                        prepared.push(p);
                        lines.push(line);
                    }
                    Err(e) => tally.bad(line, row_errors(e)),
                },
            }
            tally.line = tally.line.max(line);
        }
        let ready = service::finish(rt, &caller, prepared)
            .await
            .map_err(|e| Failed {
                error: format!("preparing rows failed: {e:?}")
                    .chars()
                    .take(300)
                    .collect(),
                retry: true,
                ..Failed::default()
            })?;
        let ops: Vec<(u64, WriteOp)> = lines
            .into_iter()
            .zip(ready.into_iter().map(|r| r.op))
            .collect();
        if atomic {
            pending.extend(ops);
            if pending.len() > max_rows {
                return Err(final_(format!(
                    "an atomic import takes at most {max_rows} rows; use mode=partial"
                )));
            }
            let _ = crate::jobs::service::heartbeat(rt, &job.id, lease, &tally.progress()).await;
        } else {
            write_partial(rt, job, lease, &meta, ops, &mut tally).await?;
        }
    }
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => {
            return Err(Failed {
                error: msg,
                retry: false,
                result: tally.result(&mode),
                ..Failed::default()
            });
        }
        Err(e) => return Err(final_(format!("reading the import file failed: {e}"))),
    }
    if atomic {
        if tally.failed > 0 {
            return Err(Failed {
                error: format!(
                    "{} bad rows; nothing was imported (mode=atomic)",
                    tally.failed
                ),
                retry: false,
                retry_after_ms: None,
                delay_ms: None,
                result: tally.result(&mode),
            });
        }
        let n = pending.len() as u64;
        let lines: Vec<u64> = pending.iter().map(|(l, _)| *l).collect();
        let mut ops: Vec<WriteOp> = pending.into_iter().map(|(_, op)| op).collect();
        tally.imported = n;
        let mut progress = tally.progress();
        progress["committed"] = json!(true);
        ops.push(crate::jobs::service::progress_op(rt, job, lease, &progress));
        match service::apply_writes(rt, ops, meta).await {
            Ok(_) => {}
            // Only a constraint names its row; anything else (busy, a failed commit,
            // the lease lost) is the whole write's and worth another attempt.
            Err(WriteError {
                index,
                error: error @ crate::store::StoreError::Constraint(_),
            }) if index < lines.len() => {
                tally.imported = 0;
                tally.bad(lines[index], row_errors(service::store_error(error)));
                return Err(Failed {
                    error: "a row was refused by the store; nothing was imported (mode=atomic)"
                        .into(),
                    retry: false,
                    retry_after_ms: None,
                    delay_ms: None,
                    result: tally.result(&mode),
                });
            }
            Err(WriteError { error, .. }) => {
                return Err(Failed {
                    error: format!("writing the import failed: {error}"),
                    retry: true,
                    ..Failed::default()
                });
            }
        }
    }
    Ok(tally.result(&mode))
}

/// Writes one batch of a partial import with its progress, dropping rows the store
/// refuses (each reported) until the rest commits.
async fn write_partial(
    rt: &Runtime,
    job: &Job,
    lease: &str,
    meta: &WriteMeta,
    mut ops: Vec<(u64, WriteOp)>,
    tally: &mut Tally,
) -> Result<(), Failed> {
    loop {
        let n = ops.len() as u64;
        let mut batch: Vec<WriteOp> = ops.iter().map(|(_, op)| op.clone()).collect();
        let mut progress = tally.progress();
        progress["imported"] = json!(tally.imported + n);
        batch.push(crate::jobs::service::progress_op(rt, job, lease, &progress));
        match service::apply_writes(rt, batch, meta.clone()).await {
            Ok(_) => {
                tally.imported += n;
                return Ok(());
            }
            Err(WriteError {
                index,
                error: error @ crate::store::StoreError::Constraint(_),
            }) if index < ops.len() => {
                let (line, _) = ops.remove(index);
                tally.bad(line, row_errors(service::store_error(error)));
            }
            Err(WriteError { error, .. }) => {
                return Err(Failed {
                    error: match error {
                        crate::store::StoreError::NotFound => "the job's lease was lost".to_owned(),
                        e => format!("writing a batch failed: {e}"),
                    },
                    retry: true,
                    ..Failed::default()
                });
            }
        }
    }
}

/// Writes one CSV row.
fn csv_line(cells: &[String]) -> String {
    let mut out = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if c.contains([',', '"', '\n', '\r']) || c.starts_with(' ') || c.ends_with(' ') {
            out.push('"');
            out.push_str(&c.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(c);
        }
    }
    out.push_str("\r\n");
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs an `export` job: pages through the collection with the caller's list rule.
pub async fn run_export(rt: &Runtime, job: &Job, lease: &str) -> Result<Value, Failed> {
    use tokio::io::AsyncWriteExt;
    let final_ = |m: String| Failed {
        error: m,
        retry: false,
        ..Failed::default()
    };
    let p = &job.payload;
    let format = p["format"]
        .as_str()
        .and_then(Format::parse)
        .ok_or_else(|| final_("the job names no format".into()))?;
    let coll = p["collection"]
        .as_str()
        .and_then(|c| rt.catalog().get(c))
        .ok_or_else(|| final_("the collection no longer exists".into()))?;
    let caller = caller_from(rt, &p["as"])
        .await
        .ok_or_else(|| final_("the account that started the export no longer exists".into()))?;
    let name = format!("{}.{}", job.id, format.as_str());
    let path = file_path(rt, &name).ok_or_else(|| final_("bad export file name".into()))?;
    let again = |m: String| Failed {
        error: m,
        retry: true,
        ..Failed::default()
    };
    let mut file = tokio::io::BufWriter::new(
        tokio::fs::File::create(&path)
            .await
            .map_err(|e| again(format!("creating the export file failed: {e}")))?,
    );
    let fields: Option<Vec<String>> = p["fields"].as_array().map(|a| {
        a.iter()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect()
    });
    let columns: Vec<String> = match &fields {
        Some(f) => f.clone(),
        None => {
            let mut c: Vec<String> = ["id", "created", "updated", "version"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            c.extend(
                coll.fields()
                    .iter()
                    .filter(|f| !coll.is_hidden(&f.name))
                    .map(|f| f.name.clone()),
            );
            c
        }
    };
    if format == Format::Csv {
        file.write_all(csv_line(&columns).as_bytes())
            .await
            .map_err(|e| again(e.to_string()))?;
    }
    let mut params = crate::records::query::ListParams {
        filter: p["filter"].as_str().map(str::to_owned),
        sort: p["sort"].as_str().map(str::to_owned),
        per_page: Some("500".into()),
        skip_total: Some("true".into()),
        fields: fields.as_ref().map(|f| f.join(",")),
        cursor: Some(String::new()),
        ..Default::default()
    };
    let mut rows = 0u64;
    loop {
        let page = service::list(rt, &caller, &coll, &params)
            .await
            .map_err(|e| match e {
                // A busy or failing store is worth another attempt; a refused query is not.
                crate::records::error::RecordError::Store(s) => {
                    again(format!("reading the records failed: {s}"))
                }
                other => final_(
                    format!("the export's query is refused: {other:?}")
                        .chars()
                        .take(300)
                        .collect(),
                ),
            })?;
        let items = service::render_many(
            rt,
            &caller,
            &coll,
            &page.records(),
            page.plan.fields.as_deref(),
            &page.plan.expand,
        )
        .await
        .map_err(|e| again(format!("{e:?}")))?;
        for mut item in items {
            if let Some(o) = item.as_object_mut() {
                o.remove("_links");
            }
            let line = match format {
                Format::Ndjson => {
                    let mut s = item.to_string();
                    s.push('\n');
                    s
                }
                Format::Csv => {
                    let cells: Vec<String> =
                        columns.iter().map(|c| cell(&item[c.as_str()])).collect();
                    csv_line(&cells)
                }
            };
            file.write_all(line.as_bytes())
                .await
                .map_err(|e| again(e.to_string()))?;
            rows += 1;
        }
        let _ = crate::jobs::service::heartbeat(
            rt,
            &job.id,
            lease,
            &json!({ "processed": rows, "failed": 0 }),
        )
        .await;
        let next = if page.has_more {
            page.last()
                .map(|r| crate::records::query::encode_cursor(&page.plan, r))
        } else {
            None
        };
        match next {
            Some(c) => params.cursor = Some(c),
            None => break,
        }
    }
    file.flush().await.map_err(|e| again(e.to_string()))?;
    let bytes = tokio::fs::metadata(&path)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(json!({
        "format": format.as_str(),
        "rows": rows,
        "bytes": bytes,
        "file": name,
        "_links": { "download": { "href": format!("/v1/jobs/{}/result", job.id) } },
    }))
}

/// Removes a job's files (best effort).
pub async fn remove_files(rt: &Runtime, names: &[&str]) {
    for n in names {
        if let Some(p) = file_path(rt, n) {
            let _ = tokio::fs::remove_file(p).await;
        }
    }
}

/// Deletes files no job needs any more: uploads of imports that ended or never
/// started (an hour old, so an upload still arriving is left alone) and export files
/// whose job is gone (purged or deleted). Returns how many were removed.
pub async fn sweep_files(rt: &Runtime) -> u64 {
    let Ok(mut entries) = tokio::fs::read_dir(folder(rt)).await else {
        return 0;
    };
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT payload FROM _lintel_jobs WHERE kind = 'import' AND status IN ('queued', 'retrying', 'running')");
    let Ok(rows) = rt.store.query_rows(sql).await else {
        return 0;
    };
    let active: std::collections::HashSet<String> = rows
        .iter()
        .filter_map(|r| r.first().and_then(Value::as_str))
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|p| p["file"].as_str().map(str::to_owned))
        .collect();
    let mut removed = 0;
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        let old = entry
            .metadata()
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= std::time::Duration::from_secs(3600));
        let gone = if name.ends_with(".in") {
            old && !active.contains(&name)
        } else if let Some((id, "ndjson" | "csv")) = name.split_once('.') {
            matches!(
                crate::jobs::service::get(rt, id).await,
                Err(crate::jobs::JobError::NotFound)
            )
        } else {
            false
        };
        if gone && tokio::fs::remove_file(entry.path()).await.is_ok() {
            removed += 1;
        }
    }
    removed
}
