//! `GET /v1/search`: one query over several collections.
//!
//! Who: anyone; each collection answers with the caller's list rule and key scopes
//! (one the caller may not list contributes nothing). Cost: per collection, one search
//! query of at most `page * perPage` (≤ 500) rows and one count; at most 16
//! collections. Refused: a malformed query (`400 invalid_search`, `errors.q`), an
//! unknown collection (404), one without searchable fields, paging past 500 results.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Caller;
use crate::error::ApiError;
use crate::http::extract::page_param;
use crate::http::openapi::ProblemDoc;
use crate::records::query::DEFAULT_PER_PAGE;
use crate::search::{MAX_COLLECTIONS, MAX_DEPTH, search};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(search_all))
}

/// A paging parameter, or its default when absent or empty.
fn whole(v: Option<&str>, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
    match v {
        None | Some("") => Ok(default),
        Some(s) => page_param(s, name, max as i64).map(|n| n as usize),
    }
}

#[utoipa::path(
    get,
    path = "/v1/search",
    tag = "search",
    summary = "Search several collections at once",
    description = "Full-text search over the searchable fields of `collections` (all searchable collections when left out), each with the caller's list rule, merged by `_score` (ties by id). Items are records as their collection renders them plus `_collection` and `_score` (and `_highlight` with `highlight=1`). Query syntax: docs/search.md.",
    params(
        ("q" = String, Query, description = "The query: words, \"phrases\", prefix*, -excluded, a OR b"),
        ("collections" = Option<String>, Query, description = "Comma-separated collection names"),
        ("page" = Option<u32>, Query, description = "Page number, from 1"),
        ("perPage" = Option<u32>, Query, description = "Items per page (default 30); page × perPage ≤ 500"),
        ("highlight" = Option<bool>, Query, description = "Add `_highlight` snippets"),
    ),
    responses(
        (status = 200, description = "`{items, page, perPage, totalItems}`", body = serde_json::Value),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "Malformed query or paging", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such collection", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn search_all(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = query.unwrap_or_default();
    let (mut q, mut names, mut page, mut per_page, mut highlight) = (None, None, None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let v = Some(v.into_owned());
        match k.as_ref() {
            "q" => q = v,
            "collections" => names = v,
            "page" => page = v,
            "perPage" => per_page = v,
            "highlight" => highlight = v,
            _ => {}
        }
    }
    let q = q.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        ApiError::invalid_search(
            "q",
            &crate::schema::search::SearchError {
                message: "a query is required".into(),
                position: 0,
            },
        )
    })?;
    if let Err(e) = crate::schema::search::parse(&q) {
        return Err(ApiError::invalid_search("q", &e));
    }
    let page = whole(page.as_deref(), "page", 1, MAX_DEPTH)?;
    let per_page = whole(per_page.as_deref(), "perPage", DEFAULT_PER_PAGE, MAX_DEPTH)?;
    if page * per_page > MAX_DEPTH {
        return Err(ApiError::field(
            "page",
            "too_deep",
            format!(
                "a search pages at most {MAX_DEPTH} results deep (page × perPage); narrow the query"
            ),
        ));
    }
    let highlight = matches!(highlight.as_deref(), Some("1" | "true"));
    let catalog = state.catalog();
    let collections = match names.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => catalog
            .collections
            .values()
            .filter(|c| c.search().is_some())
            .cloned()
            .collect::<Vec<_>>(),
        Some(list) => {
            let mut out: Vec<std::sync::Arc<crate::schema::Collection>> = Vec::new();
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if out.iter().any(|c| c.name() == name) {
                    continue;
                }
                let coll = crate::records::service::collection(&state, name)?;
                if coll.search().is_none() {
                    return Err(ApiError::field(
                        "collections",
                        "not_searchable",
                        format!("collection '{name}' has no searchable fields"),
                    ));
                }
                out.push(coll);
            }
            out
        }
    };
    if collections.len() > MAX_COLLECTIONS {
        return Err(ApiError::field(
            "collections",
            "too_many",
            format!("a search covers at most {MAX_COLLECTIONS} collections; name them"),
        ));
    }
    let found = search(&state, &caller, &collections, &q, page, per_page, highlight).await?;
    let body = json!({
        "items": found.items,
        "page": page,
        "perPage": per_page,
        "totalItems": found.total,
    });
    let bytes = serde_json::to_vec(&body).map_err(ApiError::internal)?;
    Ok(crate::http::etagged_json(bytes, &headers))
}
