//! Full-text search as a capability: one query over several collections at once
//! (`/v1/search`), each searched through the records list with its own list rule and
//! merged by score, and the job that rebuilds a collection's index when its search
//! settings change. The index itself is kept by the stores (`store::ddl`, the write
//! SQL) and the query language lives in `schema::search`.

pub mod rebuild;
pub mod routes;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::access::Caller;
use crate::access::permit;
use crate::records::error::RecordError;
use crate::records::query::{ListParams, MAX_PER_PAGE};
use crate::records::service;
use crate::runtime::Runtime;
use crate::schema::Collection;
use crate::schema::search::SCORE;

/// The most collections one search covers.
pub const MAX_COLLECTIONS: usize = 16;
/// How deep a search pages: `page * perPage` at most.
pub const MAX_DEPTH: usize = MAX_PER_PAGE;

/// One page of a search over several collections.
pub struct Found {
    pub items: Vec<Value>,
    pub total: i64,
}

/// Searches `collections` (each with the caller's list rule; a collection the caller
/// may not list contributes nothing), merges by score (ties by id, then collection)
/// and returns page `page` of `per_page`.
pub async fn search(
    rt: &Runtime,
    caller: &Caller,
    collections: &[Arc<Collection>],
    q: &str,
    page: usize,
    per_page: usize,
    highlight: bool,
) -> Result<Found, RecordError> {
    let depth = page * per_page;
    let mut all: Vec<(f64, String, String, Value)> = Vec::new();
    let mut total = 0;
    for coll in collections {
        if permit::list(caller, coll).is_err() {
            continue;
        }
        let params = ListParams {
            search: Some(q.to_owned()),
            per_page: Some(depth.to_string()),
            highlight: highlight.then(|| "1".to_owned()),
            ..ListParams::default()
        };
        let found = service::list(rt, caller, coll, &params).await?;
        total += found.total.unwrap_or(0);
        let visible = found.records();
        let mut items = service::render_many(rt, caller, coll, &visible, None, &[]).await?;
        if let Some(s) = &found.plan.search {
            service::add_search_members(coll, s, &visible, &mut items);
        }
        for (item, v) in items.into_iter().zip(visible.iter()) {
            let score = item.get(SCORE).and_then(Value::as_f64).unwrap_or(0.0);
            let mut item = match item {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            item.insert("_collection".into(), Value::String(coll.name().to_owned()));
            all.push((
                score,
                v.record().id.clone(),
                coll.name().to_owned(),
                Value::Object(item),
            ));
        }
    }
    all.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.1.cmp(&b.1))
            .then_with(|| a.2.cmp(&b.2))
    });
    let items = all
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|(_, _, _, v)| v)
        .collect();
    Ok(Found { items, total })
}
