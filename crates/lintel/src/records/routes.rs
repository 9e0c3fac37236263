//! The records API's HTTP routes (part of the edge: they take the application state
//! and answer with problems): create, read, list, replace, patch and delete, with
//! conditional requests, validators, links and list bodies. The operations themselves
//! are `records::service`.
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Caller;
use crate::access::permit::Visible;
use crate::access::render::{RecordView, record_href};
use crate::error::ApiError;
use crate::http::extract::RecordBody;
use crate::http::openapi::ProblemDoc;
use crate::records::query::{self, ListParams};
use crate::records::service::{self, etag, render_many, tag_matches};
use crate::records::validate::Mode;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_records, create_record))
        .routes(routes!(
            get_record,
            replace_record,
            patch_record,
            delete_record
        ))
        // Uploads are counted by `files::upload` (per file and per request); JSON bodies
        // by `RecordBody` (`http.body_limit`).
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// Claims the resumable uploads a write attaches (`{"upload": id}`); on failure the
/// files read so far are discarded.
async fn attach_uploads(
    state: &AppState,
    caller: &crate::access::Caller,
    coll: &crate::schema::Collection,
    input: &mut Map<String, Value>,
    staged: &mut Vec<crate::files::Staged>,
) -> Result<(), ApiError> {
    match crate::files::tus::attach(state, caller, coll, input).await {
        Ok(more) => {
            staged.extend(more);
            Ok(())
        }
        Err(e) => {
            crate::files::upload::discard(staged).await;
            Err(e.into())
        }
    }
}

/// A record write that failed after its files were kept. Refused (4xx): nothing
/// committed, so the files go (uploads back to their owners). After a 5xx the write
/// may have committed (a connection lost after COMMIT): the files stay, and the sweep
/// removes them within the hour if no record names them.
async fn undo_keep(
    state: &AppState,
    caller: &crate::access::Caller,
    staged: &[crate::files::Staged],
    e: &ApiError,
) {
    if e.status.is_client_error() {
        crate::files::unkeep(state, caller, staged).await;
    }
}

/// A write refused before its files were kept: staged bytes go, uploads are released.
async fn give_back(
    state: &AppState,
    caller: &crate::access::Caller,
    staged: &[crate::files::Staged],
) {
    crate::files::upload::discard(staged).await;
    crate::files::tus::release(state, caller, staged).await;
}

/// Reads a multipart record write: its fields, with the names of the files it
/// uploaded put under their field (`avatar`) or add-to-field key (`docs+`).
async fn read_upload(
    state: &AppState,
    coll: &crate::schema::Collection,
    mp: axum::extract::Multipart,
) -> Result<(Map<String, Value>, Vec<crate::files::Staged>), ApiError> {
    let up = crate::files::upload::read(state, coll, mp).await?;
    let mut input = up.input;
    for s in &up.files {
        let key = if s.append {
            format!("{}+", s.field)
        } else {
            s.field.clone()
        };
        let name = Value::String(s.name.clone());
        match input.get_mut(&key) {
            Some(Value::Array(a)) => a.push(name),
            Some(v @ Value::String(_)) => {
                let first = v.take();
                *v = Value::Array(vec![first, name]);
            }
            _ => {
                input.insert(key, Value::Array(vec![name]));
            }
        }
    }
    Ok((input, up.files))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `If-Match`; a value that is not visible ASCII is refused rather than ignored, so a
/// conditional write never turns unconditional.
fn if_match(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::field("If-Match", "invalid", "must be one or more entity tags")),
    }
}

/// A single-record response with its validators.
/// `body: None` serialises the record itself (the common case, without copies).
fn record_response(
    status: StatusCode,
    coll: &crate::schema::Collection,
    visible: Visible<'_>,
    body: Option<Value>,
) -> Response {
    let record = visible.record();
    let mut res = match body {
        Some(body) => (status, axum::Json(body)).into_response(),
        None => (
            status,
            axum::Json(RecordView {
                coll,
                record: visible,
            }),
        )
            .into_response(),
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag(record)) {
        h.insert(header::ETAG, v);
    }
    if let Some(v) =
        crate::clock::http_date(&record.updated).and_then(|d| HeaderValue::from_str(&d).ok())
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    crate::http::per_caller(h);
    if status == StatusCode::CREATED
        && let Ok(v) = HeaderValue::from_str(&record_href(coll.name(), &record.id))
    {
        h.insert(header::LOCATION, v);
    }
    res
}

#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/records",
    tag = "records",
    summary = "List records",
    description = "Filter (see docs/filters.md), sort (`-created,title`), paginate by `page`/`perPage` or by `cursor` (keyset: send an empty cursor for the first page), project with `fields`, expand relations with `expand`; `skipTotal=1` skips the count.",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("filter" = Option<String>, Query, description = "Filter expression"),
        ("sort" = Option<String>, Query, description = "Sort keys, `-` for descending"),
        ("page" = Option<u32>, Query, description = "Page number, from 1"),
        ("perPage" = Option<u32>, Query, description = "Items per page (default 30, max 500)"),
        ("cursor" = Option<String>, Query, description = "Keyset cursor (empty for the first page)"),
        ("fields" = Option<String>, Query, description = "Fields to return"),
        ("expand" = Option<String>, Query, description = "Relation fields to expand"),
        ("skipTotal" = Option<bool>, Query, description = "Skip counting the total"),
        ("search" = Option<String>, Query, description = "Full-text search over the searchable fields (see docs/search.md); sorted by relevance unless `sort` is given; each item gains `_score`"),
        ("highlight" = Option<bool>, Query, description = "With `search`: add `_highlight`, snippets of the matching fields with `<mark>` around matched words"),
    ),
    responses(
        (status = 200, description = "A page of records", body = Value),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "Bad query", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such collection", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn list_records(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let coll = service::collection(&state, &collection)?;
    let query = query.unwrap_or_default();
    let params = ListParams::from_query(&query);
    let page = service::list(&state, &caller, &coll, &params).await?;
    let visible = page.records();
    let mut items = render_many(
        &state,
        &caller,
        &coll,
        &visible,
        page.plan.fields.as_deref(),
        &page.plan.expand,
    )
    .await?;
    if let Some(search) = &page.plan.search {
        service::add_search_members(&coll, search, &visible, &mut items);
    }
    let (body, links) = service::list_body(coll.name(), &page, items, &query);
    let bytes = serde_json::to_vec(&body).map_err(ApiError::internal)?;
    let mut res = crate::http::etagged_json(bytes, &headers);
    let h = res.headers_mut();
    let link = links
        .iter()
        .map(|(rel, href)| format!("<{href}>; rel=\"{rel}\""))
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::from_str(&link) {
        h.insert(header::LINK, v);
    }
    Ok(res)
}

#[utoipa::path(
    post,
    path = "/v1/collections/{collection}/records",
    tag = "records",
    summary = "Create a record",
    description = "Accepts an `Idempotency-Key` header: a retry with the same key and body replays the first response.",
    params(("collection" = String, Path, description = "Collection name")),
    request_body(content = Value, description = "The record's fields (table) or any JSON object (document)"),
    responses(
        (status = 201, description = "Created; Location and ETag headers", body = Value),
        (status = 400, description = "Validation failed", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such collection", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn create_record(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    body: RecordBody,
) -> Result<Response, ApiError> {
    let coll = service::collection(&state, &collection)?;
    let (mut input, mut staged) = match body {
        RecordBody::Json(input) => (input, Vec::new()),
        RecordBody::Multipart(mp) => {
            // What needs no body is refused before a byte is stored.
            service::may_create(&state, &caller, &coll)?;
            read_upload(&state, &coll, mp).await?
        }
    };
    attach_uploads(&state, &caller, &coll, &mut input, &mut staged).await?;
    let fresh = crate::files::Fresh {
        id: (!staged.is_empty()).then(crate::ids::record_id),
        names: staged.iter().map(|s| s.name.clone()).collect(),
    };
    let prepared = match service::prepare_create(&state, &caller, &coll, input, &fresh).await {
        Ok(p) => p,
        Err(e) => {
            give_back(&state, &caller, &staged).await;
            return Err(e.into());
        }
    };
    if let Some(id) = &fresh.id
        && let Err(e) =
            crate::files::keep(&state, coll.name(), id, Some(&caller.actor()), &staged).await
    {
        crate::files::tus::release(&state, &caller, &staged).await;
        return Err(e.into());
    }
    let written = async {
        let ready = service::finish(&state, &caller, vec![prepared])
            .await?
            .pop()
            .ok_or_else(|| ApiError::internal("create prepared no write"))?;
        let written = ready
            .written
            .ok_or_else(|| ApiError::internal("create granted no response"))?;
        let record = service::write_one(&state, ready.op, caller.write_meta(state.clock.now_ms()))
            .await?
            .ok_or_else(|| ApiError::internal("create returned no record"))?;
        Ok::<_, ApiError>((written, record))
    }
    .await;
    let (written, record) = match written {
        Ok(w) => w,
        Err(e) => {
            undo_keep(&state, &caller, &staged, &e).await;
            return Err(e);
        }
    };
    crate::files::tus::finish(&state, &staged).await;
    Ok(record_response(
        StatusCode::CREATED,
        &coll,
        written.show(&record),
        None,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/records/{id}",
    tag = "records",
    summary = "Get a record",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("id" = String, Path, description = "Record id"),
        ("fields" = Option<String>, Query, description = "Fields to return"),
        ("expand" = Option<String>, Query, description = "Relation fields to expand"),
    ),
    responses(
        (status = 200, description = "The record; ETag and Last-Modified headers", body = Value),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such collection or record", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn get_record(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let coll = service::collection(&state, &collection)?;
    let granted = service::get_visible(&state, &caller, &coll, &id).await?;
    let record = granted.record();
    let (fields, expand) = match query.as_deref() {
        Some(q) if !q.is_empty() => {
            let p = ListParams::from_query(q);
            let fields = p.fields.as_deref().filter(|s| !s.is_empty()).map(|s| {
                s.split(',')
                    .map(|x| x.trim().to_owned())
                    .filter(|x| !x.is_empty())
                    .collect::<Vec<_>>()
            });
            let expand = match p.expand.as_deref() {
                Some(e) if !e.is_empty() => query::parse_expand(&coll, e)
                    .map_err(|m| ApiError::field("expand", "invalid_expand", m))?,
                _ => Vec::new(),
            };
            (fields, expand)
        }
        _ => (None, Vec::new()),
    };

    // A projected or expanded body is another representation, and expanded records
    // change on their own: such responses carry no record validators and are not
    // answered with 304 from the record's tag.
    let shaped = fields.is_some() || !expand.is_empty();
    let fresh = match header_str(&headers, header::IF_NONE_MATCH) {
        Some(h) => tag_matches(h, record, true),
        None => header_str(&headers, header::IF_MODIFIED_SINCE)
            .and_then(crate::clock::parse_http_date)
            .zip(crate::clock::ts_seconds(&record.updated))
            .is_some_and(|(since, updated)| updated <= since),
    };
    if fresh && !shaped {
        let mut res = record_response(StatusCode::OK, &coll, granted.visible(), Some(Value::Null));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        *res.body_mut() = axum::body::Body::empty();
        res.headers_mut().remove(header::CONTENT_TYPE);
        res.headers_mut().remove(header::CONTENT_LENGTH);
        return Ok(res);
    }
    if !shaped {
        return Ok(record_response(
            StatusCode::OK,
            &coll,
            granted.visible(),
            None,
        ));
    }
    let mut items = render_many(
        &state,
        &caller,
        &coll,
        &[granted.visible()],
        fields.as_deref(),
        &expand,
    )
    .await?;
    let body = items.pop().unwrap_or(Value::Null);
    let mut res = record_response(StatusCode::OK, &coll, granted.visible(), Some(body));
    {
        res.headers_mut().remove(header::ETAG);
        res.headers_mut().remove(header::LAST_MODIFIED);
    }
    Ok(res)
}

async fn update(
    state: AppState,
    caller: Caller,
    collection: String,
    id: String,
    headers: HeaderMap,
    body: RecordBody,
    mode: Mode,
) -> Result<Response, ApiError> {
    let coll = service::collection(&state, &collection)?;
    let if_match = if_match(&headers)?;
    let (mut input, mut staged) = match body {
        RecordBody::Json(input) => (input, Vec::new()),
        RecordBody::Multipart(mp) => {
            // What needs no body (a record the caller cannot see is 404) is refused
            // before a byte is stored.
            service::may_update(&state, &caller, &coll, &id).await?;
            read_upload(&state, &coll, mp).await?
        }
    };
    // Only collections with file fields can attach uploads (no extra work otherwise).
    if crate::files::file_fields(&coll).next().is_some() {
        let uploaded = staged.len();
        attach_uploads(&state, &caller, &coll, &mut input, &mut staged).await?;
        // A JSON write that claimed uploads: refused early if the caller cannot update.
        if uploaded == 0
            && !staged.is_empty()
            && let Err(e) = service::may_update(&state, &caller, &coll, &id).await
        {
            give_back(&state, &caller, &staged).await;
            return Err(e.into());
        }
    }
    let fresh = crate::files::Fresh {
        id: None,
        names: staged.iter().map(|s| s.name.clone()).collect(),
    };
    if let Err(e) =
        crate::files::keep(&state, coll.name(), &id, Some(&caller.actor()), &staged).await
    {
        crate::files::tus::release(&state, &caller, &staged).await;
        return Err(e.into());
    }
    let (record, written) = match service::update(
        &state,
        &caller,
        &coll,
        &id,
        input,
        service::UpdateHow {
            mode,
            if_match,
            fresh: &fresh,
        },
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            let e = ApiError::from(e);
            undo_keep(&state, &caller, &staged, &e).await;
            return Err(e);
        }
    };
    crate::files::tus::finish(&state, &staged).await;
    let written = written.ok_or_else(|| ApiError::internal("update granted no response"))?;
    Ok(record_response(
        StatusCode::OK,
        &coll,
        written.show(&record),
        None,
    ))
}

#[utoipa::path(
    put,
    path = "/v1/collections/{collection}/records/{id}",
    tag = "records",
    summary = "Replace a record",
    description = "Fields left out take their default or null. `If-Match` with the record's ETag makes the write conditional (412 when stale).",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("id" = String, Path, description = "Record id"),
    ),
    request_body(content = Value, description = "The whole record"),
    responses(
        (status = 200, description = "Replaced", body = Value),
        (status = 400, description = "Validation failed", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn replace_record(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: RecordBody,
) -> Result<Response, ApiError> {
    update(state, caller, collection, id, headers, body, Mode::Replace).await
}

#[utoipa::path(
    patch,
    path = "/v1/collections/{collection}/records/{id}",
    tag = "records",
    summary = "Change some fields of a record",
    description = "Only the given fields change (document collections: JSON merge patch). Accepts `If-Match` and `Idempotency-Key`.",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("id" = String, Path, description = "Record id"),
    ),
    request_body(content = Value, description = "The fields to change"),
    responses(
        (status = 200, description = "Updated", body = Value),
        (status = 400, description = "Validation failed", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn patch_record(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: RecordBody,
) -> Result<Response, ApiError> {
    update(state, caller, collection, id, headers, body, Mode::Patch).await
}

#[utoipa::path(
    delete,
    path = "/v1/collections/{collection}/records/{id}",
    tag = "records",
    summary = "Delete a record",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("id" = String, Path, description = "Record id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Not found", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Still referenced by other records", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn delete_record(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let coll = service::collection(&state, &collection)?;
    let op = service::prepare_delete(&state, &caller, &coll, &id, if_match(&headers)?).await?;
    service::write_one(&state, op, caller.write_meta(state.clock.now_ms())).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
