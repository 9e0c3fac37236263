//! `GET /v1/events`: the event log, read in `seq` order by superusers and their API
//! keys scoped `events:read`.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::events::{MAX_LIMIT, MAX_TYPES, page};
use crate::http::extract::Admin;
use crate::http::openapi::ProblemDoc;
use crate::state::AppState;
use crate::store::events::EventQuery;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events))
}

/// The query of `GET /v1/events`, checked: unknown parameters are refused so a typo
/// does not silently read everything.
fn parse(query: Option<&str>) -> Result<(Option<i64>, EventQuery), ApiError> {
    let mut after = None;
    let mut q = EventQuery {
        limit: 100,
        ..EventQuery::default()
    };
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "after" => match v.parse::<i64>() {
                Ok(n) if n >= 0 => after = Some(n),
                _ => {
                    return Err(ApiError::field(
                        "after",
                        "invalid",
                        "a seq: a whole number, 0 or more",
                    ));
                }
            },
            "limit" => match v.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = n,
                _ => {
                    return Err(ApiError::field(
                        "limit",
                        "invalid",
                        format!("a whole number from 1 to {MAX_LIMIT}"),
                    ));
                }
            },
            "types" => {
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if t.len() > 64
                        || !t
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
                    {
                        return Err(ApiError::field(
                            "types",
                            "invalid",
                            "event types such as record.created, comma-separated",
                        ));
                    }
                    q.types.push(t.to_owned());
                }
                if q.types.len() > MAX_TYPES {
                    return Err(ApiError::field(
                        "types",
                        "too_many",
                        format!("at most {MAX_TYPES} types"),
                    ));
                }
            }
            "collection" => {
                if v.is_empty() || v.len() > 64 {
                    return Err(ApiError::field(
                        "collection",
                        "invalid",
                        "a collection name",
                    ));
                }
                q.collection = Some(v.into_owned());
            }
            other => {
                let other: String = other.chars().take(32).collect();
                return Err(ApiError::field(
                    &other,
                    "unknown_parameter",
                    "not a parameter of this endpoint (after, types, collection, limit)",
                ));
            }
        }
    }
    Ok((after, q))
}

/// The link to the page after `next_after`, with the same filters.
fn next_href(next_after: i64, q: &EventQuery) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    ser.append_pair("after", &next_after.to_string());
    if !q.types.is_empty() {
        ser.append_pair("types", &q.types.join(","));
    }
    if let Some(c) = &q.collection {
        ser.append_pair("collection", c);
    }
    ser.append_pair("limit", &q.limit.to_string());
    format!("/v1/events?{}", ser.finish())
}

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    summary = "Read committed changes in order (superusers; API keys need events:read)",
    params(
        ("after" = Option<i64>, Query, description = "Events with a higher seq (default: from the oldest kept)"),
        ("types" = Option<String>, Query, description = "Only these types, comma-separated (record.created, record.updated, record.deleted, collection.created, collection.altered, collection.dropped, auth.*)"),
        ("collection" = Option<String>, Query, description = "Only events about this collection"),
        ("limit" = Option<i64>, Query, description = "At most this many (default 100, max 1000)"),
    ),
    responses(
        (status = 200, description = "`{items: [...], _links: {next: {href}}}` in seq order; follow next to resume", body = Value),
        (status = 400, description = "A parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not a superuser, or a key without events:read", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 410, description = "`after` is older than retention: `oldestSeq` is the first kept", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
async fn list_events(
    State(state): State<AppState>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (after, q) = parse(query.as_deref())?;
    let page = page(state.store.as_ref(), after, q.clone()).await?;
    let body = json!({
        "items": page.items,
        "_links": { "next": { "href": next_href(page.next_after, &q) } },
    });
    let mut res = axum::Json(body).into_response();
    crate::http::no_store(&mut res);
    Ok(res)
}
