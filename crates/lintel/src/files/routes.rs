//! `/v1/files`: downloads of record files, with the record's view rule, validators,
//! ranges and a safe `Content-Disposition`; and file tokens, which stand for their
//! caller in `<img src>` and links for a short while and open nothing but downloads.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::{Caller, Via};
use crate::auth::tokens::FILE_AUDIENCE;
use crate::error::ApiError;
use crate::files::{FileError, FileMeta, field_holding, meta, names};
use crate::http::openapi::ProblemDoc;
use crate::records::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(file_token))
        .routes(routes!(download))
        .routes(routes!(tus_options, tus_create))
        .routes(routes!(tus_head, tus_patch, tus_delete))
        .routes(routes!(rewrap_keys))
}

#[utoipa::path(
    post,
    path = "/v1/files/rewrap-keys",
    tag = "files",
    summary = "Re-wrap file keys with the current master key (after a rotation)",
    description = "Superusers (API keys: `files:write`). Every file key an older master key of `files.encryption_keys` wrapped is wrapped again with the first; no file's bytes are read or rewritten. Housekeeping does the same on its own. Answers `{rewrapped}`.",
    responses(
        (status = 200, description = "`{rewrapped}`: how many keys moved", body = serde_json::Value),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a superuser", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn rewrap_keys(
    State(state): State<AppState>,
    _: crate::http::extract::Admin,
) -> Result<Response, ApiError> {
    let n = crate::files::rewrap(&state).await.map_err(ApiError::from)?;
    Ok(axum::Json(json!({ "rewrapped": n })).into_response())
}

/// The tus protocol version served.
const TUS: &str = "1.0.0";

fn tus_headers(res: &mut Response, up: Option<&crate::files::tus::Upload>) {
    let h = res.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS));
    if let Some(up) = up {
        h.insert("upload-offset", HeaderValue::from(up.received));
        h.insert("upload-length", HeaderValue::from(up.length));
        if let Some(d) = crate::clock::http_date(&crate::clock::format_ms(up.expires))
            && let Ok(v) = HeaderValue::from_str(&d)
        {
            h.insert("upload-expires", v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A tus answer: the error's problem, with the protocol's header.
fn tus_err(e: impl Into<ApiError>) -> Response {
    let mut res = e.into().into_response();
    tus_headers(&mut res, None);
    res
}

/// The caller an upload belongs to; API keys are refused (uploads are a signed-in
/// caller's, as file tokens are).
fn tus_owner(caller: &Caller, headers: &HeaderMap) -> Result<String, Response> {
    if header_str(headers, header::HeaderName::from_static("tus-resumable")) != Some(TUS) {
        let mut res = ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "tus_version",
            "Send Tus-Resumable: 1.0.0 (the tus version this server speaks).",
        )
        .into_response();
        res.headers_mut()
            .insert("tus-version", HeaderValue::from_static(TUS));
        return Err(res);
    }
    if matches!(caller.via, Via::ApiKey { .. }) {
        return Err(tus_err(ApiError::forbidden(
            "api_key_not_allowed",
            "Resumable uploads belong to a signed-in caller; an API key cannot make one.",
        )));
    }
    crate::files::tus::owner_of(caller)
        .ok_or_else(|| tus_err(ApiError::unauthorized("Sign in to upload.")))
}

#[utoipa::path(
    options,
    path = "/v1/uploads",
    tag = "files",
    summary = "What the tus server supports",
    responses((status = 204, description = "Tus-Version, Tus-Extension (creation, expiration, termination), Tus-Max-Size"))
)]
async fn tus_options(State(state): State<AppState>) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    tus_headers(&mut res, None);
    let h = res.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(TUS));
    h.insert(
        "tus-extension",
        HeaderValue::from_static("creation,expiration,termination"),
    );
    h.insert(
        "tus-max-size",
        HeaderValue::from(state.config.files.max_upload_bytes),
    );
    res
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs.
fn upload_filename(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let meta = header_str(headers, header::HeaderName::from_static("upload-metadata"))?;
    meta.split(',').find_map(|pair| {
        let (key, value) = pair.trim().split_once(' ')?;
        if key != "filename" && key != "name" {
            return None;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()?;
        String::from_utf8(bytes).ok()
    })
}

#[utoipa::path(
    post,
    path = "/v1/uploads",
    tag = "files",
    summary = "Create a resumable upload (tus creation)",
    description = "Needs a signed-in caller (bearer token or cookie) or the admin token; `Tus-Resumable: 1.0.0` and `Upload-Length` (at most `files.max_upload_bytes`); `Upload-Metadata` may carry `filename`. The upload expires unattached after 24 hours (`Upload-Expires`); attach it once with `\"field\": {\"upload\": \"<id>\"}` in a record write. At most 50 unattached uploads a caller.",
    responses(
        (status = 201, description = "Location: /v1/uploads/{id}"),
        (status = 400, description = "No or a bad Upload-Length", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Too many unattached uploads", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "Not Tus-Resumable: 1.0.0", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Upload-Length over files.max_upload_bytes", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn tus_create(State(state): State<AppState>, caller: Caller, headers: HeaderMap) -> Response {
    let owner = match tus_owner(&caller, &headers) {
        Ok(o) => o,
        Err(res) => return res,
    };
    let Some(length) = header_str(&headers, header::HeaderName::from_static("upload-length"))
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return tus_err(ApiError::field(
            "Upload-Length",
            "invalid",
            "required: the upload's size in bytes (deferred lengths are not supported)",
        ));
    };
    let max = state.config.files.max_upload_bytes;
    if length > max {
        return tus_err(FileError::TooLarge {
            field: "Upload-Length".into(),
            limit: max,
        });
    }
    match crate::files::tus::create(&state, &owner, length, upload_filename(&headers)).await {
        Ok(up) => {
            let mut res = StatusCode::CREATED.into_response();
            tus_headers(&mut res, Some(&up));
            if let Ok(v) = HeaderValue::from_str(&format!("/v1/uploads/{}", up.id)) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            res
        }
        Err(e) => tus_err(e),
    }
}

#[utoipa::path(
    head,
    path = "/v1/uploads/{id}",
    tag = "files",
    summary = "An upload's offset (tus)",
    params(("id" = String, Path, description = "Upload id")),
    responses(
        (status = 200, description = "Upload-Offset, Upload-Length, Upload-Expires"),
        (status = 404, description = "No such upload of the caller's (or expired, or attached)"),
    )
)]
async fn tus_head(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let owner = match tus_owner(&caller, &headers) {
        Ok(o) => o,
        Err(res) => return res,
    };
    match crate::files::tus::get(&state, &owner, &id).await {
        Ok(up) => {
            let mut res = StatusCode::OK.into_response();
            tus_headers(&mut res, Some(&up));
            res
        }
        Err(e) => tus_err(e),
    }
}

#[utoipa::path(
    patch,
    path = "/v1/uploads/{id}",
    tag = "files",
    summary = "Append bytes to an upload (tus)",
    description = "`Content-Type: application/offset+octet-stream`, `Upload-Offset` equal to the upload's offset. Bytes received before an interruption are kept.",
    params(("id" = String, Path, description = "Upload id")),
    responses(
        (status = 204, description = "Appended; Upload-Offset is the new offset"),
        (status = 404, description = "No such upload of the caller's", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Upload-Offset is not the upload's (`offset_mismatch`)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "More bytes than Upload-Length", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "Not application/offset+octet-stream", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 423, description = "Another request is appending (`upload_locked`)", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn tus_patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let owner = match tus_owner(&caller, &headers) {
        Ok(o) => o,
        Err(res) => return res,
    };
    if header_str(&headers, header::CONTENT_TYPE).is_none_or(|ct| {
        !ct.trim()
            .eq_ignore_ascii_case("application/offset+octet-stream")
    }) {
        return tus_err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "A tus PATCH is Content-Type: application/offset+octet-stream.",
        ));
    }
    let Some(offset) = header_str(&headers, header::HeaderName::from_static("upload-offset"))
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return tus_err(ApiError::field(
            "Upload-Offset",
            "invalid",
            "required: the offset the bytes start at",
        ));
    };
    let up = match crate::files::tus::get(&state, &owner, &id).await {
        Ok(up) => up,
        Err(e) => return tus_err(e),
    };
    match crate::files::tus::append(&state, &up, offset, body).await {
        Ok(at) => {
            let mut res = StatusCode::NO_CONTENT.into_response();
            let now = crate::files::tus::Upload { received: at, ..up };
            tus_headers(&mut res, Some(&now));
            res
        }
        Err(e) => tus_err(e),
    }
}

#[utoipa::path(
    delete,
    path = "/v1/uploads/{id}",
    tag = "files",
    summary = "End an upload and drop its bytes (tus termination)",
    params(("id" = String, Path, description = "Upload id")),
    responses(
        (status = 204, description = "Gone"),
        (status = 404, description = "No such upload of the caller's", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn tus_delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let owner = match tus_owner(&caller, &headers) {
        Ok(o) => o,
        Err(res) => return res,
    };
    let up = match crate::files::tus::get(&state, &owner, &id).await {
        Ok(up) => up,
        Err(e) => return tus_err(e),
    };
    match crate::files::tus::delete(&state, &up).await {
        Ok(()) => {
            let mut res = StatusCode::NO_CONTENT.into_response();
            tus_headers(&mut res, None);
            res
        }
        Err(e) => tus_err(e),
    }
}

#[utoipa::path(
    post,
    path = "/v1/files/token",
    tag = "files",
    summary = "A short-lived token that lets links and <img src> fetch files as the caller",
    description = "For signed-in callers (bearer token or session cookie) and the admin token; an API key is refused (send the key itself). The token opens downloads only, as `?token=`, for `files.token_ttl_seconds`, and ends with its session.",
    responses(
        (status = 200, description = "`{token, expiresIn}`", body = serde_json::Value),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "An API key", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn file_token(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let ttl = state.config.files.token_ttl_seconds;
    crate::auth::caller::purpose_token(&state, &caller, FILE_AUDIENCE, ttl, "file token")
}

/// The caller a file token stands for, if it is still good.
async fn token_caller(state: &AppState, token: &str) -> Result<Caller, FileError> {
    crate::auth::purpose::caller_of(state, FILE_AUDIENCE, token)
        .await?
        .ok_or(FileError::BadToken)
}

#[derive(Debug, Deserialize)]
struct DownloadParams {
    token: Option<String>,
    download: Option<String>,
    thumb: Option<String>,
}

/// A `Range` header's one range, resolved against `size`: `Ok(None)` serves the whole
/// file (no range, several ranges, or a form this server does not read).
fn one_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, FileError> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    let (start, end) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => {
            let Some(n) = num(b) else { return Ok(None) };
            if n == 0 {
                return Err(FileError::Unsatisfiable { size });
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (false, true) => {
            let Some(s) = num(a) else { return Ok(None) };
            (s, size.saturating_sub(1))
        }
        (false, false) => {
            let (Some(s), Some(e)) = (num(a), num(b)) else {
                return Ok(None);
            };
            if e < s {
                return Ok(None);
            }
            (s, e.min(size.saturating_sub(1)))
        }
        (true, true) => return Ok(None),
    };
    if size == 0 || start >= size {
        return Err(FileError::Unsatisfiable { size });
    }
    Ok(Some((start, end)))
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn etag_of(m: &FileMeta) -> String {
    format!("\"{}\"", &m.sha256[..m.sha256.len().min(32)])
}

#[utoipa::path(
    get,
    path = "/v1/files/{collection}/{id}/{filename}",
    tag = "files",
    summary = "Download a record's file",
    description = "The record's view rule applies to the caller (credentials, or `?token=` from POST /v1/files/token). A `private` field's files need an identified caller. `?download=1` forces an attachment; HTML, SVG, XML, scripts and executables are always attachments. Validators: ETag (content hash) and Last-Modified; Range (one range) and If-Range.",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("id" = String, Path, description = "Record id"),
        ("filename" = String, Path, description = "The stored file name, as the record holds it"),
        ("token" = Option<String>, Query, description = "A file token"),
        ("download" = Option<String>, Query, description = "1: serve as an attachment"),
        ("thumb" = Option<String>, Query, description = "A thumb size the field lists (WxH)"),
    ),
    responses(
        (status = 200, description = "The file"),
        (status = 206, description = "One range of the file"),
        (status = 304, description = "Not modified"),
        (status = 400, description = "A thumb size the field does not list (`invalid_thumb`)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "A private file without an identified caller, or a bad file token", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such collection, record (or not visible) or file", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 416, description = "The range lies outside the file", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, id, filename)): Path<(String, String, String)>,
    Query(params): Query<DownloadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = match params.token.as_deref() {
        Some(t) => token_caller(&state, t).await?,
        None => caller,
    };
    let coll = service::collection(&state, &collection)?;
    if !names::is_stored_name(&filename) {
        return Err(FileError::NotFound.into());
    }
    let granted = service::get_visible(&state, &caller, &coll, &id)
        .await
        .map_err(|e| match e {
            crate::records::error::RecordError::Store(crate::store::StoreError::NotFound) => {
                ApiError::from(FileError::NotFound)
            }
            e => e.into(),
        })?;
    let record = granted.record();
    let field = field_holding(&coll, record, &filename).ok_or(FileError::NotFound)?;
    if field.private && caller.is_anonymous() {
        return Err(FileError::NeedsCaller.into());
    }
    let thumb = match params.thumb.as_deref() {
        None => None,
        Some(t) => {
            let listed = field
                .thumbs
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|s| s == t);
            match crate::schema::kinds::thumb_size(t) {
                Some(size) if listed => Some(size),
                _ => return Err(FileError::BadThumb(t.to_owned()).into()),
            }
        }
    };
    let m = meta(&state, &filename)
        .await
        .map_err(ApiError::from)?
        .filter(|m| m.collection == coll.name() && m.record == record.id)
        .ok_or(FileError::NotFound)?;
    // What is served: the file, or its thumbnail when one can be made (otherwise the
    // file itself, as PocketBase does).
    let file_key = state.files.file_key(m.dek.as_deref())?;
    let mut blob = m.blob.clone();
    let mut size = m.size;
    let mut mime = m.mime.clone();
    let mut etag = etag_of(&m);
    let mut serve_key = file_key.clone();
    if let Some((w, h)) = thumb
        && let Some((key, len, media)) = thumbnail(&state, &m, file_key.as_ref(), w, h).await
    {
        blob = key;
        size = len;
        mime = media.to_owned();
        etag = format!("\"{}-{w}x{h}\"", etag.trim_matches('"'));
        serve_key = file_key.map(|k| k.for_thumb(w, h));
    }
    let created_ts = crate::clock::format_ms(m.created);
    let last_modified = crate::clock::http_date(&created_ts).unwrap_or_default();
    let attachment = m.detected_active()
        || params
            .download
            .as_deref()
            .is_some_and(|d| d != "0" && d != "false");
    let cache = if field.private || !caller.is_anonymous() {
        "private, max-age=600"
    } else {
        "public, max-age=86400"
    };
    let mut common = HeaderMap::new();
    let mut put = |k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            common.insert(k, v);
        }
    };
    put(header::ETAG, &etag);
    put(header::LAST_MODIFIED, &last_modified);
    put(header::CACHE_CONTROL, cache);
    put(header::ACCEPT_RANGES, "bytes");
    put(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    put(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; sandbox",
    );
    // Conditional requests: If-None-Match wins over If-Modified-Since.
    let modified_secs = m.created / 1000;
    let not_modified = match header_str(&headers, header::IF_NONE_MATCH) {
        Some(inm) => inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag),
        None => header_str(&headers, header::IF_MODIFIED_SINCE)
            .and_then(crate::clock::parse_http_date)
            .is_some_and(|since| modified_secs <= since),
    };
    if not_modified {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        res.headers_mut().extend(common);
        return Ok(res);
    }
    let mut range = header_str(&headers, header::RANGE)
        .map(|r| one_range(r, size))
        .transpose();
    // If-Range: the range holds only while the file is the one the client has.
    if let Some(ir) = header_str(&headers, header::IF_RANGE) {
        let same = if ir.trim_start().starts_with('"') {
            ir.trim() == etag
        } else {
            crate::clock::parse_http_date(ir.trim()) == Some(modified_secs)
        };
        if !same {
            range = Ok(None);
        }
    }
    let range = match range {
        Ok(r) => r.flatten(),
        Err(e) => {
            let mut res = ApiError::from(e).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(res);
        }
    };
    let (status, offset, len) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, size),
    };
    // A missing blob is a 500 now, not a 200 cut short later.
    match state.files.blobs.size(&blob).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(ApiError::internal(format!("file {} has no bytes", m.name))),
        Err(e) => return Err(ApiError::internal(format!("file {}: {e}", m.name))),
    }
    // Large reads: a file is streamed in 256 KiB (or sealed 64 KiB) chunks.
    let mut res = Response::new(Body::from_stream(crate::files::plain_stream(
        state.files.blobs.clone(),
        blob,
        serve_key,
        size,
        offset,
        len,
    )));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.extend(common);
    if let Ok(v) = HeaderValue::from_str(&mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&names::content_disposition(!attachment, &m.original)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) =
            HeaderValue::from_str(&format!("bytes {}-{}/{}", offset, offset + len - 1, size))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(res)
}

/// The thumbnail of a file at `w` x `h`: made and kept on first request. `None`
/// serves the file itself: not an image this server decodes, too large a source, a
/// bomb, or bytes that do not decode.
async fn thumbnail(
    state: &AppState,
    m: &FileMeta,
    file_key: Option<&crate::files::crypt::FileKey>,
    w: u32,
    h: u32,
) -> Option<(String, u64, &'static str)> {
    use crate::files::crypt;
    use crate::files::thumbs;
    if !thumbs::supported(&m.mime) || m.size > thumbs::MAX_SOURCE_BYTES {
        return None;
    }
    let key = thumbs::key(&m.blob, w, h);
    let media = if m.mime == "image/jpeg" {
        "image/jpeg"
    } else {
        "image/png"
    };
    // A sealed thumbnail is longer than its plain bytes by its chunks' tags.
    let plain = |stored: u64| {
        if file_key.is_some() {
            crypt::plain_size(stored)
        } else {
            stored
        }
    };
    if let Ok(Some(len)) = state.files.blobs.size(&key).await {
        return Some((key, plain(len), media));
    }
    let _permit = state.files.thumb_permits.acquire().await.ok()?;
    // Made by a request that held the permit before this one.
    if let Ok(Some(len)) = state.files.blobs.size(&key).await {
        return Some((key, plain(len), media));
    }
    let mut stream = crate::files::plain_stream(
        state.files.blobs.clone(),
        m.blob.clone(),
        file_key.cloned(),
        m.size,
        0,
        m.size,
    );
    let mut bytes = Vec::with_capacity(usize::try_from(m.size).unwrap_or(0));
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        bytes.extend_from_slice(&chunk.ok()?);
    }
    let mime = m.mime.clone();
    let made = tokio::task::spawn_blocking(move || thumbs::make(&bytes, &mime, w, h))
        .await
        .ok()?;
    let (out, media) = match made {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(file = %m.name, error = ?e, "no thumbnail; serving the file");
            return None;
        }
    };
    let stored = match file_key {
        Some(k) => crypt::seal(&k.for_thumb(w, h), &out)?,
        None => out.clone(),
    };
    if let Err(e) = state.files.blobs.put(&key, &stored).await {
        tracing::warn!(file = %m.name, error = %e, "keeping a thumbnail failed");
        return None;
    }
    Some((key, out.len() as u64, media))
}

#[cfg(test)]
mod tests {
    use super::one_range;

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(one_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(one_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(one_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(one_range("bytes=95-200", 100).unwrap(), Some((95, 99)));
        assert_eq!(one_range("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(one_range("items=0-1", 100).unwrap(), None);
        assert!(one_range("bytes=100-", 100).is_err());
        assert!(one_range("bytes=-0", 100).is_err());
    }
}
