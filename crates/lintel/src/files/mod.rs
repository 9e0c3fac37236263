//! Files: the `file` field kind's values, where their bytes live ([`blob`]), what they
//! are ([`detect`]), what they are called ([`names`]), how a multipart record write
//! brings them ([`upload`]), and their metadata in `_lintel_files` (original name,
//! size, detected type, SHA-256, record, field, uploader, created).
//!
//! A file is kept in three steps: its metadata row commits, its staged bytes are
//! renamed into the blob store, then the record write that names it commits (or fails,
//! and the file is forgotten at once). A name leaves a record through any write
//! (update, delete, cascade, batch, import); the [`reaper`] follows the event log and
//! removes the blob, then the row, of each name a committed write dropped. The
//! housekeeping sweep removes what a crash left: rows no record names (after an hour)
//! and stale staged uploads.

pub mod blob;
pub mod crypt;
pub mod detect;
pub mod error;
pub mod names;
pub mod reaper;
pub mod routes;
#[cfg(feature = "s3")]
pub mod s3;
pub mod thumbs;
pub mod tus;
pub mod upload;

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Map, Value, json};

pub use error::FileError;
pub use upload::{Staged, Upload};

use crate::runtime::Runtime;
use crate::schema::{Collection, FieldSpec, FieldType};
use crate::store::{Dialect, Record, Sql, SqlValue, StoreError, WriteError, WriteOp};
use crate::validation::{FieldErrors, push_field_error};

/// How long a metadata row may stay unnamed by its record before the sweep removes
/// it (an upload is kept moments before its record commits).
pub const GRACE_MS: i64 = 3_600_000;

/// The files part of the runtime.
pub struct FilesRuntime {
    pub blobs: Arc<dyn blob::Blobs>,
    /// Thumbnails made at once (decoding is CPU and memory; the rest wait).
    pub thumb_permits: tokio::sync::Semaphore,
    /// Where resumable uploads grow (on the same disk as the blobs: kept by a rename).
    pub uploads: std::path::PathBuf,
    /// Uploads a request is appending to now.
    pub busy: std::sync::Mutex<HashSet<String>>,
    /// The master keys of encryption at rest (`files.encryption_keys`), if any.
    pub keys: Option<crypt::MasterKeys>,
}

impl FilesRuntime {
    pub fn new(
        blobs: Arc<dyn blob::Blobs>,
        uploads: std::path::PathBuf,
        keys: Option<crypt::MasterKeys>,
    ) -> Self {
        Self {
            blobs,
            thumb_permits: tokio::sync::Semaphore::new(2),
            uploads,
            busy: std::sync::Mutex::new(HashSet::new()),
            keys,
        }
    }

    /// The key of an encrypted file (`dek`: its wrapped key); `Ok(None)` for a file
    /// kept in the clear, an error when no configured master key opens it.
    pub fn file_key(&self, dek: Option<&str>) -> Result<Option<crypt::FileKey>, FileError> {
        let Some(wrapped) = dek else {
            return Ok(None);
        };
        self.keys
            .as_ref()
            .and_then(|k| k.unwrap(wrapped))
            .map(Some)
            .ok_or_else(|| {
                FileError::Io("no configured files.encryption_keys opens this file's key".into())
            })
    }
}

/// The files a record write just uploaded: their names (which the record may now
/// name) and, for a create, the id their rows were kept under.
#[derive(Debug, Default)]
pub struct Fresh {
    pub id: Option<String>,
    pub names: Vec<String>,
}

/// A kept file's metadata.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub name: String,
    pub collection: String,
    pub record: String,
    pub field: String,
    pub blob: String,
    pub original: String,
    pub size: u64,
    pub mime: String,
    pub sha256: String,
    pub created: i64,
    /// The file's own key, wrapped by a master key (encrypted at rest), or none.
    pub dek: Option<String>,
}

impl FileMeta {
    /// Whether browsers might run it (served only as an attachment).
    pub fn detected_active(&self) -> bool {
        matches!(
            self.mime.as_str(),
            "text/html"
                | "image/svg+xml"
                | "application/xml"
                | "text/x-shellscript"
                | "application/x-executable"
                | "application/vnd.microsoft.portable-executable"
                | "application/x-mach-binary"
                | "application/wasm"
        )
    }
}

const COLS: &str =
    "name, collection, record, field, blob, original, size, type, sha256, created, dek";

fn decode(row: &[Value]) -> Option<FileMeta> {
    let s = |i: usize| row.get(i).and_then(Value::as_str).map(str::to_owned);
    let n = |i: usize| row.get(i).and_then(Value::as_i64);
    Some(FileMeta {
        name: s(0)?,
        collection: s(1)?,
        record: s(2)?,
        field: s(3)?,
        blob: s(4)?,
        original: s(5)?,
        size: u64::try_from(n(6)?).ok()?,
        mime: s(7)?,
        sha256: s(8)?,
        created: n(9)?,
        dek: s(10),
    })
}

/// The names a file field's value holds.
pub fn names_in(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The file fields of a collection.
pub fn file_fields(coll: &Collection) -> impl Iterator<Item = &FieldSpec> {
    coll.fields()
        .iter()
        .filter(|f| f.field_type == FieldType::File)
}

/// Resolves the file fields of a record write, before validation: `field` (names, or
/// null to remove all), `field+` (names to add) and `field-` (names to remove) become
/// the field's new list. A name must be one the record holds (`current`) or one this
/// request uploaded (`fresh`): a client cannot point a record at another's file.
pub fn resolve_input(
    coll: &Collection,
    current: Option<&Record>,
    input: &mut Map<String, Value>,
    fresh: &[String],
) -> Result<(), FieldErrors> {
    let mut errors = FieldErrors::new();
    for f in file_fields(coll) {
        let plus = format!("{}+", f.name);
        let minus = format!("{}-", f.name);
        if !input.contains_key(&f.name) && !input.contains_key(&plus) && !input.contains_key(&minus)
        {
            continue;
        }
        let held = names_in(current.and_then(|r| r.data.get(&f.name)));
        let as_names = |key: &str, v: &Value, errors: &mut FieldErrors| -> Vec<String> {
            match v {
                Value::Null => Vec::new(),
                Value::String(_) | Value::Array(_) => {
                    if let Value::Array(a) = v
                        && a.iter().any(|x| !x.is_string())
                    {
                        push_field_error(errors, key, "invalid_type", "must be file names");
                    }
                    names_in(Some(v))
                }
                _ => {
                    push_field_error(
                        errors,
                        key,
                        "invalid_type",
                        "must be a file name or a list of them; files come as multipart parts",
                    );
                    Vec::new()
                }
            }
        };
        let mut list = match input.remove(&f.name) {
            Some(v) => as_names(&f.name, &v, &mut errors),
            None => held.clone(),
        };
        if let Some(v) = input.remove(&plus) {
            let more = as_names(&plus, &v, &mut errors);
            if f.multiple {
                list.extend(more);
            } else if !more.is_empty() {
                // One file: adding one replaces it.
                list = more;
            }
        }
        if let Some(v) = input.remove(&minus) {
            let gone: HashSet<String> = as_names(&minus, &v, &mut errors).into_iter().collect();
            list.retain(|n| !gone.contains(n));
        }
        let mut seen = HashSet::new();
        list.retain(|n| seen.insert(n.clone()));
        if let Some(bad) = list
            .iter()
            .find(|n| !held.contains(n) && !fresh.contains(n))
        {
            push_field_error(
                &mut errors,
                &f.name,
                "unknown_file",
                format!("'{bad}' is not a file of this record; upload files as multipart parts"),
            );
            continue;
        }
        let max = f.max_count.unwrap_or(1);
        if list.len() > max as usize {
            push_field_error(
                &mut errors,
                &f.name,
                "too_many",
                format!("at most {max} file{}", if max == 1 { "" } else { "s" }),
            );
            continue;
        }
        let value = if f.multiple {
            Value::from(list)
        } else {
            list.into_iter().next().map_or(Value::Null, Value::String)
        };
        input.insert(f.name.clone(), value);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn insert_sql(
    d: Dialect,
    coll: &str,
    record: &str,
    uploader: Option<&str>,
    s: &Staged,
    now: i64,
    dek: Option<&str>,
) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("INSERT INTO _lintel_files (name, collection, record, field, blob, original, size, type, sha256, uploader, created, dek) VALUES (");
    sql.bind_all([
        SqlValue::Text(s.name.clone()),
        SqlValue::Text(coll.to_owned()),
        SqlValue::Text(record.to_owned()),
        SqlValue::Text(s.field.clone()),
        SqlValue::Text(s.key.clone()),
        SqlValue::Text(s.original.clone()),
        SqlValue::Int(i64::try_from(s.size).unwrap_or(i64::MAX)),
        SqlValue::Text(s.detected.mime.to_owned()),
        SqlValue::Text(s.sha256.clone()),
        uploader.map_or(SqlValue::Null, |u| SqlValue::Text(u.to_owned())),
        SqlValue::Int(now),
        dek.map_or(SqlValue::Null, |k| SqlValue::Text(k.to_owned())),
    ]);
    sql.push(")");
    sql
}

/// Keeps staged files for a record about to be written: their rows commit first, then
/// their bytes move into the blob store (sealed first, with encryption at rest). On
/// failure nothing of them is left.
pub async fn keep(
    rt: &Runtime,
    coll: &str,
    record: &str,
    uploader: Option<&str>,
    files: &[Staged],
) -> Result<(), FileError> {
    if files.is_empty() {
        return Ok(());
    }
    let d = rt.store.dialect();
    let now = rt.clock.now_ms();
    let mut sealed: Vec<Option<(crypt::FileKey, String)>> = Vec::with_capacity(files.len());
    for _ in files {
        sealed.push(match &rt.files.keys {
            Some(mk) => {
                let fk = crypt::FileKey::random()
                    .map_err(|_| FileError::Io("no random file key".into()))?;
                let wrapped = mk
                    .wrap(&fk)
                    .map_err(|_| FileError::Io("wrapping a file key failed".into()))?;
                Some((fk, wrapped))
            }
            None => None,
        });
    }
    let ops = files
        .iter()
        .zip(&sealed)
        .map(|(s, k)| WriteOp::System {
            sql: insert_sql(
                d,
                coll,
                record,
                uploader,
                s,
                now,
                k.as_ref().map(|k| k.1.as_str()),
            ),
            expect: Some(1),
        })
        .collect();
    if let Err(WriteError { error, .. }) = rt.store.write(ops).await {
        upload::discard(files).await;
        return Err(error.into());
    }
    for (i, s) in files.iter().enumerate() {
        if let Err(e) = keep_one(rt, s, sealed[i].as_ref().map(|k| &k.0)).await {
            // Uploads already kept go back to their uploads (the caller releases
            // them); the rest is removed, rows last.
            for s in files[..i].iter().filter(|s| s.upload.is_some()) {
                if let Err(e) = restore_upload(rt, s).await {
                    tracing::warn!(file = %s.name, error = %e, "returning an upload failed");
                }
            }
            upload::discard(&files[i..]).await;
            forget(
                rt,
                &files.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            )
            .await;
            return Err(e.into());
        }
    }
    Ok(())
}

/// Moves one staged file into the blob store, sealing it on the way with a key.
async fn keep_one(rt: &Runtime, s: &Staged, fk: Option<&crypt::FileKey>) -> std::io::Result<()> {
    let Some(fk) = fk else {
        return rt.files.blobs.keep(&s.path, &s.key).await;
    };
    let sealed_path = s.path.with_extension("sealed");
    let (src, dst, key) = (s.path.clone(), sealed_path.clone(), fk.clone());
    let sealing = tokio::task::spawn_blocking(move || crypt::seal_file(&key, &src, &dst))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
    if let Err(e) = sealing {
        let _ = tokio::fs::remove_file(&sealed_path).await;
        return Err(e);
    }
    if let Err(e) = rt.files.blobs.keep(&sealed_path, &s.key).await {
        let _ = tokio::fs::remove_file(&sealed_path).await;
        return Err(e);
    }
    // The clear bytes go (an upload's are restored from the sealed ones if needed).
    tokio::fs::remove_file(&s.path).await
}

/// Undoes [`keep`] after the record write failed: files from resumable uploads go back
/// to their uploads (released, to be attached again), the others are removed.
pub async fn unkeep(rt: &Runtime, caller: &crate::access::Caller, files: &[Staged]) {
    let mut gone = Vec::new();
    let mut back = Vec::new();
    for s in files {
        match &s.upload {
            Some(_) => match restore_upload(rt, s).await {
                Ok(()) => back.push(s),
                Err(e) => {
                    tracing::warn!(file = %s.name, error = %e, "returning an upload failed");
                    gone.push(s.name.clone());
                }
            },
            None => gone.push(s.name.clone()),
        }
    }
    forget(rt, &gone).await;
    if !back.is_empty() {
        let mut sql = Sql::new(rt.store.dialect());
        sql.push("DELETE FROM _lintel_files WHERE name IN (");
        sql.bind_all(back.iter().map(|s| SqlValue::Text(s.name.clone())));
        sql.push(")");
        if let Err(e) = rt
            .store
            .write(vec![WriteOp::System { sql, expect: None }])
            .await
        {
            tracing::warn!(error = %e.error, "removing returned uploads' rows failed");
        }
        let back: Vec<Staged> = back.into_iter().cloned().collect();
        tus::release(rt, caller, &back).await;
    }
}

/// Gives a kept file's bytes back to the upload they came from (opened again when they
/// were sealed).
async fn restore_upload(rt: &Runtime, s: &Staged) -> std::io::Result<()> {
    if rt.files.keys.is_none() {
        return rt.files.blobs.take_back(&s.key, &s.path).await;
    }
    let meta = by_names(rt, std::slice::from_ref(&s.name))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .pop()
        .ok_or_else(|| std::io::Error::other("the file's row is gone"))?;
    let fk = rt
        .files
        .file_key(meta.dek.as_deref())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut stream = plain_stream(rt.files.blobs.clone(), s.key.clone(), fk, s.size, 0, s.size);
    let mut out = tokio::fs::File::create(&s.path).await?;
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        tokio::io::AsyncWriteExt::write_all(&mut out, &chunk?).await?;
    }
    tokio::io::AsyncWriteExt::flush(&mut out).await?;
    rt.files.blobs.remove(&s.key).await
}

/// Re-wraps every file key an older master key wrapped with the current one (after a
/// rotation: the new key first in `files.encryption_keys`). Files' bytes are not
/// touched. Returns how many keys it re-wrapped.
pub async fn rewrap(rt: &Runtime) -> Result<u64, StoreError> {
    let Some(mk) = &rt.files.keys else {
        return Ok(0);
    };
    let mut done = 0;
    loop {
        let mut sql = Sql::new(rt.store.dialect());
        sql.push("SELECT name, dek FROM _lintel_files WHERE dek IS NOT NULL AND dek NOT LIKE ")
            .bind(SqlValue::Text(format!("{}:%", mk.current())))
            .push(" ORDER BY name LIMIT 500");
        let rows = rt.store.query_rows(sql).await?;
        let mut handled = 0;
        for r in &rows {
            let (Some(name), Some(old)) = (
                r.first().and_then(Value::as_str),
                r.get(1).and_then(Value::as_str),
            ) else {
                continue;
            };
            let Some(new) = mk.unwrap(old).and_then(|fk| mk.wrap(&fk).ok()) else {
                tracing::warn!(
                    file = name,
                    "no configured master key opens this file's key"
                );
                continue;
            };
            let mut up = Sql::new(rt.store.dialect());
            up.push("UPDATE _lintel_files SET dek = ")
                .bind(SqlValue::Text(new))
                .push(" WHERE name = ")
                .bind(SqlValue::Text(name.to_owned()))
                .push(" AND dek = ")
                .bind(SqlValue::Text(old.to_owned()));
            let out = rt
                .store
                .write(vec![WriteOp::System {
                    sql: up,
                    expect: None,
                }])
                .await
                .map_err(|e| e.error)?;
            handled += 1;
            // Counted only when this call moved it (another instance, or housekeeping
            // beside a request, may have got there first).
            if matches!(out.first(), Some(crate::store::WriteOutcome::Affected(n)) if *n > 0) {
                done += 1;
            }
        }
        // A page of keys no master key opens would come back forever.
        if rows.len() < 500 || handled == 0 {
            return Ok(done);
        }
    }
}

/// Removes files by name: each blob, then the rows. Failures are logged (the sweep
/// retries what is left).
pub async fn forget(rt: &Runtime, names: &[String]) {
    if names.is_empty() {
        return;
    }
    for chunk in names.chunks(200) {
        let metas = match by_names(rt, chunk).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading file rows to remove failed");
                return;
            }
        };
        remove_all(rt, &metas).await;
    }
}

/// Removes files a record dropped, given as (collection, record, name): only rows that
/// belong to that record go, whatever a name in the log says.
pub async fn forget_of(rt: &Runtime, dropped: &[(String, String, String)]) {
    for chunk in dropped.chunks(200) {
        let names: Vec<String> = chunk.iter().map(|d| d.2.clone()).collect();
        let metas = match by_names(rt, &names).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading file rows to remove failed");
                return;
            }
        };
        let owned: Vec<FileMeta> = metas
            .into_iter()
            .filter(|m| {
                chunk
                    .iter()
                    .any(|(c, r, n)| *n == m.name && *c == m.collection && *r == m.record)
            })
            .collect();
        remove_all(rt, &owned).await;
    }
}

/// Removes the blobs, then the rows, of these files.
pub async fn remove_all(rt: &Runtime, metas: &[FileMeta]) {
    let mut gone = Vec::with_capacity(metas.len());
    for m in metas {
        match rt.files.blobs.remove(&m.blob).await {
            Ok(()) => gone.push(m.name.clone()),
            Err(e) => tracing::warn!(file = %m.name, error = %e, "removing a file's bytes failed"),
        }
    }
    if gone.is_empty() {
        return;
    }
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("DELETE FROM _lintel_files WHERE name IN (");
    sql.bind_all(gone.into_iter().map(SqlValue::Text));
    sql.push(")");
    if let Err(e) = rt
        .store
        .write(vec![WriteOp::System { sql, expect: None }])
        .await
    {
        tracing::warn!(error = %e.error, "removing file rows failed");
    }
}

async fn by_names(rt: &Runtime, names: &[String]) -> Result<Vec<FileMeta>, StoreError> {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT ")
        .push(COLS)
        .push(" FROM _lintel_files WHERE name IN (");
    sql.bind_all(names.iter().cloned().map(SqlValue::Text));
    sql.push(")");
    Ok(rt
        .store
        .query_rows(sql)
        .await?
        .iter()
        .filter_map(|r| decode(r))
        .collect())
}

/// One file's metadata.
pub async fn meta(rt: &Runtime, name: &str) -> Result<Option<FileMeta>, StoreError> {
    if !names::is_stored_name(name) {
        return Ok(None);
    }
    Ok(by_names(rt, &[name.to_owned()]).await?.pop())
}

/// The file field of `record` (of `coll`) that holds `name`.
pub fn field_holding<'a>(
    coll: &'a Collection,
    record: &Record,
    name: &str,
) -> Option<&'a FieldSpec> {
    file_fields(coll).find(|f| names_in(record.data.get(&f.name)).iter().any(|n| n == name))
}

/// Removes what crashes left: rows older than [`GRACE_MS`] that their record does not
/// name (or whose collection or field is gone), with their blobs, and stale staged
/// uploads. Returns what it removed.
pub async fn sweep(rt: &Runtime) -> Value {
    let before = rt.clock.now_ms() - GRACE_MS;
    let staged = rt
        .files
        .blobs
        .clean_staging(crate::clock::now_ms() - GRACE_MS)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cleaning staged uploads failed");
            0
        });
    let mut removed = 0usize;
    let catalog = rt.catalog();
    let d = rt.store.dialect();
    // Per collection: rows no file field of their record names (whatever field the
    // row says: a renamed field keeps its files), or every row of a collection that is
    // gone or holds no files any more.
    let mut colls = Sql::new(d);
    colls.push("SELECT DISTINCT collection FROM _lintel_files");
    let colls = rt.store.query_rows(colls).await.unwrap_or_default();
    for c in colls
        .iter()
        .filter_map(|r| r.first().and_then(Value::as_str))
    {
        let mut sql = Sql::new(d);
        sql.push("SELECT ")
            .push(COLS)
            .push(" FROM _lintel_files f WHERE f.collection = ")
            .bind(SqlValue::Text(c.to_owned()))
            .push(" AND f.created < ")
            .bind(SqlValue::Int(before));
        if let Some(coll) = catalog.get(c) {
            let fields: Vec<&FieldSpec> = file_fields(&coll).collect();
            if !fields.is_empty() {
                sql.push(" AND NOT EXISTS (SELECT 1 FROM ")
                    .ident(coll.name())
                    .push(" r WHERE r.id = f.record AND (");
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        sql.push(" OR ");
                    }
                    match (f.multiple, d) {
                        (false, _) => {
                            sql.column("r", &f.name).push(" = f.name");
                        }
                        (true, Dialect::Sqlite) => {
                            sql.push("EXISTS (SELECT 1 FROM json_each(")
                                .column("r", &f.name)
                                .push(") j WHERE j.value = f.name)");
                        }
                        (true, Dialect::Postgres) => {
                            sql.column("r", &f.name)
                                .push(" @> jsonb_build_array(f.name)");
                        }
                    }
                }
                sql.push("))");
            }
        }
        sql.push(" LIMIT 500");
        match rt.store.query_rows(sql).await {
            Ok(rows) => {
                let metas: Vec<FileMeta> = rows.iter().filter_map(|r| decode(r)).collect();
                removed += metas.len();
                remove_all(rt, &metas).await;
            }
            Err(e) => tracing::warn!(error = %e, "sweeping file rows failed"),
        }
    }
    let expired = tus::sweep(rt).await;
    let rewrapped = rewrap(rt).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "re-wrapping file keys failed");
        0
    });
    json!({ "unnamedFiles": removed, "stagedUploads": staged, "expiredUploads": expired, "rewrappedKeys": rewrapped })
}

/// A stream of the plain bytes `offset..offset + len` of a blob: as stored, or, with a
/// file key, opened chunk by chunk (only the chunks the range touches are read).
pub fn plain_stream(
    blobs: Arc<dyn blob::Blobs>,
    key: String,
    fk: Option<crypt::FileKey>,
    size: u64,
    offset: u64,
    len: u64,
) -> futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>> {
    use futures_util::StreamExt;
    let Some(fk) = fk else {
        return futures_util::stream::once(async move { blobs.read(&key, offset, len).await })
            .map(|r| {
                r.map(|reader| tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024))
            })
            .map(|r| match r {
                Ok(s) => s.boxed(),
                Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten()
            .boxed();
    };
    if len == 0 {
        return futures_util::stream::empty().boxed();
    }
    let first = offset / crypt::CHUNK;
    let last = (offset + len - 1) / crypt::CHUNK;
    futures_util::stream::unfold(first, move |i| {
        let blobs = blobs.clone();
        let key = key.clone();
        let fk = fk.clone();
        async move {
            if i > last {
                return None;
            }
            let item = async {
                let (at, span) = crypt::chunk_span(size, i);
                let mut reader = blobs.read(&key, at, span).await?;
                let mut sealed = Vec::with_capacity(span as usize);
                tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut sealed).await?;
                let plain = crypt::open_chunk(&fk, size, i, &mut sealed).ok_or_else(|| {
                    std::io::Error::other("a chunk of an encrypted file does not open")
                })?;
                let start = i * crypt::CHUNK;
                let from = offset.saturating_sub(start) as usize;
                let to = ((offset + len).min(start + plain.len() as u64) - start) as usize;
                Ok(plain.slice(from..to))
            }
            .await;
            Some((item, i + 1))
        }
    })
    .boxed()
}
