//! Resumable uploads, the tus 1.0 protocol (core, creation, expiration,
//! termination): an identified caller creates an upload of a declared length, sends
//! it in chunks that survive interruptions, and attaches it once to a file field in a
//! record write (`"video": {"upload": "<id>"}`). Uploads belong to their creator,
//! expire unattached after 24 hours and live in `<data_dir>/files/uploads` until kept.
//! Only one request appends to an upload at a time (423 otherwise).

use std::collections::HashSet;
use std::path::PathBuf;

use futures_util::StreamExt;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::access::Caller;
use crate::files::detect::{self, MarkupScan};
use crate::files::error::FileError;
use crate::files::upload::{Staged, check, hex};
use crate::files::{file_fields, names};
use crate::runtime::Runtime;
use crate::schema::{Collection, FieldSpec};
use crate::store::{Sql, SqlValue, WriteOp};

/// How long an unattached upload is kept.
pub const EXPIRY_MS: i64 = 24 * 3600 * 1000;
/// Unattached uploads one caller may hold at once.
pub const MAX_PER_OWNER: i64 = 50;

/// One upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub id: String,
    pub owner: String,
    pub length: u64,
    pub received: u64,
    pub filename: Option<String>,
    pub expires: i64,
}

/// Who an upload belongs to: an account, or the admin token.
pub fn owner_of(caller: &Caller) -> Option<String> {
    caller.account().map(|(c, id)| format!("{c}/{id}"))
}

fn path(rt: &Runtime, id: &str) -> Result<PathBuf, FileError> {
    if !crate::schema::kinds::is_record_id(id) {
        return Err(FileError::NotFound);
    }
    Ok(rt.files.uploads.join(id))
}

fn decode(row: &[Value]) -> Option<Upload> {
    let s = |i: usize| row.get(i).and_then(Value::as_str).map(str::to_owned);
    let n = |i: usize| row.get(i).and_then(Value::as_i64);
    Some(Upload {
        id: s(0)?,
        owner: s(1)?,
        length: u64::try_from(n(2)?).ok()?,
        received: u64::try_from(n(3)?).ok()?,
        filename: s(4),
        expires: n(5)?,
    })
}

/// Creates an upload of `length` bytes for `owner`.
pub async fn create(
    rt: &Runtime,
    owner: &str,
    length: u64,
    filename: Option<String>,
) -> Result<Upload, FileError> {
    let now = rt.clock.now_ms();
    let mut count = Sql::new(rt.store.dialect());
    count
        .push("SELECT COUNT(*) FROM _lintel_uploads WHERE owner = ")
        .bind(SqlValue::Text(owner.to_owned()))
        .push(" AND attached = 0 AND expires > ")
        .bind(SqlValue::Int(now));
    if rt.store.query_count(count).await? >= MAX_PER_OWNER {
        return Err(FileError::TooManyUploads);
    }
    let id = crate::ids::record_id();
    tokio::fs::File::create(path(rt, &id)?).await?;
    let up = Upload {
        id,
        owner: owner.to_owned(),
        length,
        received: 0,
        filename: filename.map(|f| names::clean_original(&f)),
        expires: now + EXPIRY_MS,
    };
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("INSERT INTO _lintel_uploads (id, owner, length, received, filename, created, expires, attached) VALUES (");
    sql.bind_all([
        SqlValue::Text(up.id.clone()),
        SqlValue::Text(up.owner.clone()),
        SqlValue::Int(i64::try_from(length).unwrap_or(i64::MAX)),
        SqlValue::Int(0),
        up.filename.clone().map_or(SqlValue::Null, SqlValue::Text),
        SqlValue::Int(now),
        SqlValue::Int(up.expires),
        SqlValue::Int(0),
    ]);
    sql.push(")");
    if let Err(e) = rt
        .store
        .write(vec![WriteOp::System { sql, expect: None }])
        .await
    {
        let _ = tokio::fs::remove_file(path(rt, &up.id)?).await;
        return Err(e.error.into());
    }
    Ok(up)
}

/// The caller's unattached, unexpired upload `id` (404 for anyone else's).
pub async fn get(rt: &Runtime, owner: &str, id: &str) -> Result<Upload, FileError> {
    if !crate::schema::kinds::is_record_id(id) {
        return Err(FileError::NotFound);
    }
    let mut sql = Sql::new(rt.store.dialect());
    sql.push(
        "SELECT id, owner, length, received, filename, expires FROM _lintel_uploads WHERE id = ",
    )
    .bind(SqlValue::Text(id.to_owned()))
    .push(" AND owner = ")
    .bind(SqlValue::Text(owner.to_owned()))
    .push(" AND attached = 0 AND expires > ")
    .bind(SqlValue::Int(rt.clock.now_ms()));
    rt.store
        .query_rows(sql)
        .await?
        .first()
        .and_then(|r| decode(r))
        .ok_or(FileError::NotFound)
}

/// Marks an upload as being appended to, for as long as the guard lives.
pub struct Busy<'a> {
    set: &'a std::sync::Mutex<HashSet<String>>,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.id);
        }
    }
}

fn busy<'a>(rt: &'a Runtime, id: &str) -> Result<Busy<'a>, FileError> {
    let set = &rt.files.busy;
    let mut s = set
        .lock()
        .map_err(|_| FileError::Io("the uploads lock is poisoned".into()))?;
    if !s.insert(id.to_owned()) {
        return Err(FileError::Locked);
    }
    Ok(Busy {
        set,
        id: id.to_owned(),
    })
}

/// Appends a request body at `offset` (which must be the upload's offset). Bytes that
/// arrived before the client went away are kept, as tus wants. Returns the new offset.
pub async fn append(
    rt: &Runtime,
    up: &Upload,
    offset: u64,
    body: axum::body::Body,
) -> Result<u64, FileError> {
    let _busy = busy(rt, &up.id)?;
    // Read again under the lock: another request may have moved it.
    let up = get(rt, &up.owner, &up.id).await?;
    if offset != up.received {
        return Err(FileError::OffsetMismatch {
            offset: up.received,
        });
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(path(rt, &up.id)?)
        .await?;
    // A tail past the recorded offset is from a request that never finished.
    file.set_len(offset).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut at = offset;
    let mut stream = body.into_data_stream();
    let mut cut = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                cut = Some(e.to_string());
                break;
            }
        };
        if at + chunk.len() as u64 > up.length {
            file.set_len(offset).await?;
            return Err(FileError::TooLarge {
                field: "Upload-Length".into(),
                limit: up.length,
            });
        }
        file.write_all(&chunk).await?;
        at += chunk.len() as u64;
    }
    file.flush().await?;
    file.sync_data().await?;
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("UPDATE _lintel_uploads SET received = ")
        .bind(SqlValue::Int(i64::try_from(at).unwrap_or(i64::MAX)))
        .push(" WHERE id = ")
        .bind(SqlValue::Text(up.id.clone()))
        .push(" AND received = ")
        .bind(SqlValue::Int(i64::try_from(offset).unwrap_or(i64::MAX)));
    rt.store
        .write(vec![WriteOp::System {
            sql,
            expect: Some(1),
        }])
        .await
        .map_err(|e| FileError::Store(e.error))?;
    if let Some(e) = cut {
        return Err(FileError::BadBody(e));
    }
    Ok(at)
}

/// Ends an upload and removes its bytes (termination).
pub async fn delete(rt: &Runtime, up: &Upload) -> Result<(), FileError> {
    let _busy = busy(rt, &up.id)?;
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("DELETE FROM _lintel_uploads WHERE id = ")
        .bind(SqlValue::Text(up.id.clone()));
    rt.store
        .write(vec![WriteOp::System { sql, expect: None }])
        .await
        .map_err(|e| FileError::Store(e.error))?;
    match tokio::fs::remove_file(path(rt, &up.id)?).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

async fn set_attached(rt: &Runtime, id: &str, owner: &str, to: i64) -> Result<bool, FileError> {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("UPDATE _lintel_uploads SET attached = ")
        .bind(SqlValue::Int(to))
        .push(" WHERE id = ")
        .bind(SqlValue::Text(id.to_owned()))
        .push(" AND owner = ")
        .bind(SqlValue::Text(owner.to_owned()))
        .push(" AND attached = ")
        .bind(SqlValue::Int(1 - to));
    if to == 1 {
        sql.push(" AND received = length AND expires > ")
            .bind(SqlValue::Int(rt.clock.now_ms()));
    }
    let out = rt
        .store
        .write(vec![WriteOp::System {
            sql,
            expect: Some(1),
        }])
        .await;
    match out {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.error, crate::store::StoreError::NotFound) => Ok(false),
        Err(e) => Err(e.error.into()),
    }
}

/// Claims a finished upload of the caller's for field `f` (part key `key`) and checks
/// its bytes as an uploaded file is checked. A refused file releases the claim.
async fn take(
    rt: &Runtime,
    owner: &str,
    id: &str,
    f: &FieldSpec,
    key: &str,
    append: bool,
) -> Result<Staged, FileError> {
    let invalid = || {
        FileError::field(
            key,
            "invalid_upload",
            format!("'{id}' is no finished, unattached upload of yours"),
        )
    };
    if !crate::schema::kinds::is_record_id(id) || !set_attached(rt, id, owner, 1).await? {
        return Err(invalid());
    }
    let checked = async {
        let mut sql = Sql::new(rt.store.dialect());
        sql.push("SELECT id, owner, length, received, filename, expires FROM _lintel_uploads WHERE id = ")
            .bind(SqlValue::Text(id.to_owned()));
        let up = rt
            .store
            .query_rows(sql)
            .await?
            .first()
            .and_then(|r| decode(r))
            .ok_or_else(invalid)?;
        let limit = f
            .max_size
            .unwrap_or(rt.config.files.max_upload_bytes)
            .min(rt.config.files.max_upload_bytes);
        if up.length > limit {
            return Err(FileError::field(
                key,
                "too_large",
                format!("must be at most {limit} bytes"),
            ));
        }
        let file_path = path(rt, id)?;
        let mut file = tokio::fs::File::open(&file_path).await?;
        let mut hash = Sha256::new();
        let mut head = Vec::with_capacity(detect::HEAD);
        let mut scan = MarkupScan::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if head.len() < detect::HEAD {
                let k = (detect::HEAD - head.len()).min(n);
                head.extend_from_slice(&buf[..k]);
            }
            scan.feed(&buf[..n]);
            hash.update(&buf[..n]);
        }
        let detected = detect::detect(&head);
        check(f, key, &detected, &head, scan.found)?;
        let original = up.filename.unwrap_or_else(|| "file".into());
        Ok(Staged {
            field: f.name.clone(),
            append,
            key: format!("{}{}", crate::ids::record_id(), crate::ids::record_id()),
            path: file_path,
            name: names::stored_name(
                &original,
                &crate::ids::record_id().to_ascii_lowercase(),
                detected.ext,
            ),
            original,
            size: up.length,
            detected,
            sha256: hex(&hash.finalize()),
            upload: Some(id.to_owned()),
        })
    }
    .await;
    if checked.is_err() {
        let _ = set_attached(rt, id, owner, 0).await;
    }
    checked
}

/// Replaces `{"upload": "<id>"}` values of file fields (alone, or in a list; under
/// `field` or `field+`) with the stored names of the uploads they claim. On failure
/// every claim is released.
pub async fn attach(
    rt: &Runtime,
    caller: &Caller,
    coll: &Collection,
    input: &mut Map<String, Value>,
) -> Result<Vec<Staged>, FileError> {
    let mut staged = Vec::new();
    let wants = |v: &Value| match v {
        Value::Object(o) => o.contains_key("upload"),
        Value::Array(a) => a.iter().any(|x| x.get("upload").is_some()),
        _ => false,
    };
    let fields: Vec<FieldSpec> = file_fields(coll).cloned().collect();
    let owner = owner_of(caller);
    let result: Result<(), FileError> = async {
        for f in &fields {
            for (key, append) in [(f.name.clone(), false), (format!("{}+", f.name), true)] {
                let Some(v) = input.get(&key).filter(|v| wants(v)).cloned() else {
                    continue;
                };
                let Some(owner) = owner.as_deref() else {
                    return Err(FileError::NeedsCaller);
                };
                let one = |v: &Value| -> Option<String> {
                    v.get("upload").and_then(Value::as_str).map(str::to_owned)
                };
                let new = match v {
                    Value::Object(_) => {
                        let id = one(&v).unwrap_or_default();
                        let s = take(rt, owner, &id, f, &key, append).await?;
                        let name = Value::String(s.name.clone());
                        staged.push(s);
                        if f.multiple {
                            Value::Array(vec![name])
                        } else {
                            name
                        }
                    }
                    Value::Array(items) => {
                        let mut out = Vec::with_capacity(items.len());
                        for item in items {
                            match one(&item) {
                                Some(id) => {
                                    let s = take(rt, owner, &id, f, &key, append).await?;
                                    out.push(Value::String(s.name.clone()));
                                    staged.push(s);
                                }
                                None => out.push(item),
                            }
                        }
                        Value::Array(out)
                    }
                    other => other,
                };
                input.insert(key, new);
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(staged),
        Err(e) => {
            release(rt, caller, &staged).await;
            Err(e)
        }
    }
}

/// Gives claimed uploads back (the write that claimed them failed before keeping them).
pub async fn release(rt: &Runtime, caller: &Caller, staged: &[Staged]) {
    let Some(owner) = owner_of(caller) else {
        return;
    };
    for id in staged.iter().filter_map(|s| s.upload.as_deref()) {
        if let Err(e) = set_attached(rt, id, &owner, 0).await {
            tracing::warn!(upload = id, error = %e, "releasing an upload failed");
        }
    }
}

/// Forgets uploads whose bytes are now kept files.
pub async fn finish(rt: &Runtime, staged: &[Staged]) {
    let ids: Vec<SqlValue> = staged
        .iter()
        .filter_map(|s| s.upload.clone())
        .map(SqlValue::Text)
        .collect();
    if ids.is_empty() {
        return;
    }
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("DELETE FROM _lintel_uploads WHERE id IN (");
    sql.bind_all(ids);
    sql.push(")");
    if let Err(e) = rt
        .store
        .write(vec![WriteOp::System { sql, expect: None }])
        .await
    {
        tracing::warn!(error = %e.error, "forgetting attached uploads failed");
    }
}

/// Removes expired uploads (unattached past 24 hours; claimed ones a crash left).
pub async fn sweep(rt: &Runtime) -> u64 {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT id FROM _lintel_uploads WHERE expires < ")
        .bind(SqlValue::Int(rt.clock.now_ms()))
        .push(" LIMIT 1000");
    let Ok(rows) = rt.store.query_rows(sql).await else {
        return 0;
    };
    let mut n = 0;
    for id in rows
        .iter()
        .filter_map(|r| r.first().and_then(Value::as_str))
    {
        if let Ok(p) = path(rt, id)
            && let Err(e) = tokio::fs::remove_file(p).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(upload = id, error = %e, "removing an expired upload failed");
            continue;
        }
        let mut del = Sql::new(rt.store.dialect());
        del.push("DELETE FROM _lintel_uploads WHERE id = ")
            .bind(SqlValue::Text(id.to_owned()));
        if rt
            .store
            .write(vec![WriteOp::System {
                sql: del,
                expect: None,
            }])
            .await
            .is_ok()
        {
            n += 1;
        }
    }
    n
}
