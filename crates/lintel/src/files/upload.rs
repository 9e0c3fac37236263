//! Reading a `multipart/form-data` record write: file parts are streamed to the
//! staging folder (never held whole in memory) while their size is counted against
//! the field's `maxSize` and `files.max_upload_bytes` (413 the moment either is
//! passed), their SHA-256 computed and their first bytes kept for type detection;
//! text parts become the record's fields, converted per field type, and a `@json`
//! part may hold the JSON body instead.

use std::path::PathBuf;

use axum::extract::Multipart;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::files::detect::{self, Detected, MarkupScan};
use crate::files::error::FileError;
use crate::files::names;
use crate::runtime::Runtime;
use crate::schema::{Collection, FieldSpec, FieldType};

/// The most file parts one request may carry.
const MAX_PARTS: usize = 100;
/// The most parts of any kind one request may carry.
const MAX_ALL_PARTS: usize = 1000;

/// A file received and staged, not yet kept.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The file field it is for.
    pub field: String,
    /// Sent as `field+`: added to the field's files instead of replacing them.
    pub append: bool,
    pub key: String,
    pub path: PathBuf,
    /// The name the record holds.
    pub name: String,
    /// The client's name, cleaned.
    pub original: String,
    pub size: u64,
    pub detected: Detected,
    pub sha256: String,
    /// The resumable upload the bytes came from (they stay the upload's until kept).
    pub upload: Option<String>,
}

/// A multipart record write: its fields and its staged files.
#[derive(Debug, Default)]
pub struct Upload {
    pub input: Map<String, Value>,
    pub files: Vec<Staged>,
}

/// Removes staged files that will not be kept.
pub async fn discard(files: &[Staged]) {
    for f in files.iter().filter(|f| f.upload.is_none()) {
        if let Err(e) = tokio::fs::remove_file(&f.path).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "removing a staged upload failed");
        }
    }
}

fn bad(e: impl std::fmt::Display) -> FileError {
    FileError::BadBody(e.to_string())
}

/// The file field a part name addresses (`avatar`, `docs+`).
fn file_field<'a>(coll: &'a Collection, part: &str) -> Option<(&'a FieldSpec, bool)> {
    let (name, append) = match part.strip_suffix('+') {
        Some(n) => (n, true),
        None => (part, false),
    };
    coll.field(name)
        .filter(|f| f.field_type == FieldType::File)
        .map(|f| (f, append))
}

/// A text part's value as the field's type wants it.
fn convert(coll: &Collection, name: &str, text: String) -> Result<Value, FileError> {
    let base = name.trim_end_matches(['+', '-']);
    let Some(f) = coll.field(base) else {
        return Ok(Value::String(text));
    };
    if name.ends_with('-') || name.ends_with('+') {
        return Ok(match serde_json::from_str::<Value>(&text) {
            Ok(v @ Value::Array(_)) => v,
            _ => Value::String(text),
        });
    }
    let json = |t: &str| {
        serde_json::from_str::<Value>(t)
            .map_err(|_| FileError::field(base, "invalid_json", "must be JSON text"))
    };
    Ok(match f.field_type {
        _ if text.is_empty() && f.field_type != FieldType::Text => Value::Null,
        FieldType::Number | FieldType::Integer => match text.trim().parse::<f64>() {
            Ok(_) => json(text.trim())?,
            Err(_) => Value::String(text),
        },
        FieldType::Bool => match text.trim() {
            "true" | "1" | "on" => Value::Bool(true),
            "false" | "0" | "off" => Value::Bool(false),
            _ => Value::String(text),
        },
        FieldType::Json | FieldType::GeoPoint => json(&text)?,
        FieldType::Relation if f.multiple => match serde_json::from_str::<Value>(&text) {
            Ok(v @ Value::Array(_)) => v,
            _ => Value::Array(vec![Value::String(text)]),
        },
        FieldType::File if f.multiple => match serde_json::from_str::<Value>(&text) {
            Ok(v @ Value::Array(_)) => v,
            _ => Value::Array(vec![Value::String(text)]),
        },
        _ => Value::String(text),
    })
}

/// The checks of a received file against its field, once its bytes are in: the type
/// detected from `head` against `mimeTypes`, images a field with thumbnails would
/// never decode, and markup inside a binary file (`markup`: what [`MarkupScan`] found).
pub fn check(
    f: &FieldSpec,
    key: &str,
    d: &Detected,
    head: &[u8],
    markup: bool,
) -> Result<(), FileError> {
    if !detect::allowed(f.mime_types.as_deref(), d) {
        return Err(FileError::field(
            key,
            "invalid_type",
            format!(
                "the content is {}, which this field does not accept ({})",
                d.mime,
                f.mime_types.as_deref().unwrap_or_default().join(", ")
            ),
        ));
    }
    // A field that makes thumbnails refuses images it would never decode.
    if f.thumbs.is_some()
        && crate::files::thumbs::supported(d.mime)
        && let Some((w, h)) = crate::files::thumbs::dimensions(head)
        && !crate::files::thumbs::decodable(w, h)
    {
        return Err(FileError::field(
            key,
            "image_too_large",
            format!(
                "the image declares {w} x {h} pixels; at most {} pixels and {} a side",
                crate::files::thumbs::MAX_PIXELS,
                crate::files::thumbs::MAX_SIDE
            ),
        ));
    }
    if !d.text && markup {
        return Err(FileError::field(
            key,
            "polyglot",
            format!(
                "the content is {} but also holds markup a browser would run",
                d.mime
            ),
        ));
    }
    Ok(())
}

/// Reads a multipart body for a record of `coll`. On failure every staged file is
/// already removed.
pub async fn read(rt: &Runtime, coll: &Collection, mut mp: Multipart) -> Result<Upload, FileError> {
    let mut up = Upload::default();
    match read_into(rt, coll, &mut mp, &mut up).await {
        Ok(()) => Ok(up),
        Err(e) => {
            discard(&up.files).await;
            Err(e)
        }
    }
}

async fn read_into(
    rt: &Runtime,
    coll: &Collection,
    mp: &mut Multipart,
    up: &mut Upload,
) -> Result<(), FileError> {
    let text_cap = rt.config.http.body_limit as u64;
    let total_cap = rt.config.files.max_upload_bytes;
    let mut text_bytes = 0u64;
    let mut file_bytes = 0u64;
    let mut json_body: Option<Map<String, Value>> = None;
    let mut texts: Vec<(String, Value)> = Vec::new();
    let mut parts = 0usize;
    while let Some(mut part) = mp.next_field().await.map_err(bad)? {
        let name = part.name().unwrap_or_default().to_owned();
        parts += 1;
        if parts > MAX_ALL_PARTS {
            return Err(FileError::field(
                &name,
                "too_many",
                format!("at most {MAX_ALL_PARTS} parts a request"),
            ));
        }
        // Part names (and file names) count with the text: many empty parts cost too.
        text_bytes += (name.len() + part.file_name().map_or(0, str::len) + 64) as u64;
        if text_bytes > text_cap {
            return Err(FileError::TooLarge {
                field: name,
                limit: text_cap,
            });
        }
        if let Some(file_name) = part.file_name().map(str::to_owned) {
            let Some((f, append)) = file_field(coll, &name) else {
                return Err(FileError::field(
                    &name,
                    "not_a_file_field",
                    "files go only in file fields",
                ));
            };
            if up.files.len() >= MAX_PARTS {
                return Err(FileError::field(
                    &name,
                    "too_many",
                    format!("at most {MAX_PARTS} files a request"),
                ));
            }
            let limit = f.max_size.unwrap_or(total_cap).min(total_cap);
            let key = format!("{}{}", crate::ids::record_id(), crate::ids::record_id());
            let path = rt.files.blobs.staging().join(&key);
            let mut out = tokio::fs::File::create(&path).await?;
            let mut staged = Staged {
                field: f.name.clone(),
                append,
                key,
                path,
                name: String::new(),
                original: names::clean_original(&file_name),
                size: 0,
                detected: detect::OCTET_STREAM,
                sha256: String::new(),
                upload: None,
            };
            let mut hash = Sha256::new();
            let mut head: Vec<u8> = Vec::with_capacity(detect::HEAD);
            let mut scan = MarkupScan::default();
            let written: Result<(), FileError> = async {
                while let Some(chunk) = part.chunk().await.map_err(bad)? {
                    staged.size += chunk.len() as u64;
                    file_bytes += chunk.len() as u64;
                    if staged.size > limit || file_bytes > total_cap {
                        return Err(FileError::TooLarge {
                            field: f.name.clone(),
                            limit: if staged.size > limit {
                                limit
                            } else {
                                total_cap
                            },
                        });
                    }
                    if head.len() < detect::HEAD {
                        let n = (detect::HEAD - head.len()).min(chunk.len());
                        head.extend_from_slice(&chunk[..n]);
                    }
                    scan.feed(&chunk);
                    hash.update(&chunk);
                    out.write_all(&chunk).await?;
                }
                out.flush().await?;
                out.sync_data().await?;
                Ok(())
            }
            .await;
            drop(out);
            up.files.push(staged);
            written?;
            let Some(staged) = up.files.last_mut() else {
                continue;
            };
            staged.sha256 = hex(&hash.finalize());
            staged.detected = detect::detect(&head);
            check(f, &name, &staged.detected, &head, scan.found)?;
            let d = staged.detected;
            staged.name = names::stored_name(
                &staged.original,
                &crate::ids::record_id().to_ascii_lowercase(),
                d.ext,
            );
            continue;
        }
        let mut text = Vec::new();
        while let Some(chunk) = part.chunk().await.map_err(bad)? {
            text_bytes += chunk.len() as u64;
            if text_bytes > text_cap {
                return Err(FileError::TooLarge {
                    field: name,
                    limit: text_cap,
                });
            }
            text.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(text)
            .map_err(|_| FileError::field(&name, "invalid_text", "must be UTF-8 text"))?;
        if name == "@json" {
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => json_body = Some(m),
                _ => {
                    return Err(FileError::field(
                        "@json",
                        "invalid_json",
                        "must be a JSON object",
                    ));
                }
            }
            continue;
        }
        let v = convert(coll, &name, text)?;
        texts.push((name, v));
    }
    let mut input = json_body.unwrap_or_default();
    for (name, v) in texts {
        // A repeated part name is a list (`tags`, `docs-`).
        match input.get_mut(&name) {
            Some(Value::Array(a)) => match v {
                Value::Array(more) => a.extend(more),
                v => a.push(v),
            },
            Some(prev) if !name.starts_with('@') => {
                let first = prev.take();
                *prev = Value::Array(vec![first, v]);
            }
            _ => {
                input.insert(name, v);
            }
        }
    }
    up.input = input;
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
