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
use crate::jobs::JobError;
use crate::jobs::model::Job;
use crate::records::error::RecordError;
use crate::records::query::{ListParams, MAX_PER_PAGE};
use crate::records::service;
use crate::runtime::Runtime;
use crate::schema::Collection;
use crate::schema::search::SCORE;
use crate::store::{Sql, WriteMeta, WriteOp};

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
/// and returns page `page` of `per_page`. Only the records of that page are rendered
/// and highlighted.
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
    let mut pages = Vec::new();
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
        pages.push((coll, found));
    }
    // (score, id, collection index, record index), best first.
    let mut order: Vec<(f64, &str, usize, usize)> = Vec::new();
    let visible: Vec<_> = pages.iter().map(|(_, p)| p.records()).collect();
    for (c, records) in visible.iter().enumerate() {
        for (r, v) in records.iter().enumerate() {
            let record = v.record();
            let score = record
                .data
                .get(SCORE)
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            order.push((score, record.id.as_str(), c, r));
        }
    }
    order.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.1.cmp(b.1))
            .then_with(|| pages[a.2].0.name().cmp(pages[b.2].0.name()))
    });
    let chosen: Vec<(usize, usize)> = order
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|(_, _, c, r)| (c, r))
        .collect();
    let mut rendered: Vec<Option<Value>> = vec![None; chosen.len()];
    for (c, (coll, found)) in pages.iter().enumerate() {
        let slots: Vec<usize> = (0..chosen.len()).filter(|i| chosen[*i].0 == c).collect();
        if slots.is_empty() {
            continue;
        }
        let mine: Vec<_> = slots.iter().map(|i| visible[c][chosen[*i].1]).collect();
        let mut items = service::render_many(rt, caller, coll, &mine, None, &[]).await?;
        if let Some(s) = &found.plan.search {
            service::add_search_members(coll, s, &mine, &mut items);
        }
        for (slot, item) in slots.into_iter().zip(items) {
            let mut item = match item {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            item.insert("_collection".into(), Value::String(coll.name().to_owned()));
            rendered[slot] = Some(Value::Object(item));
        }
    }
    Ok(Found {
        items: rendered.into_iter().flatten().collect(),
        total,
    })
}

/// Makes sure `coll`'s index follows its settings: nothing when it does, the settings
/// recorded when there is no record to index, otherwise a `search_rebuild` job (the
/// one already queued or running, if any).
pub async fn ensure(
    rt: &Runtime,
    coll: &Collection,
    meta: WriteMeta,
) -> Result<Option<Job>, JobError> {
    let Some(cfg) = coll.search() else {
        return Ok(None);
    };
    let d = rt.store.dialect();
    let rows = rt
        .store
        .query_rows(crate::store::search::signature_sql(d, coll.name()))
        .await?;
    let stored = rows.first().and_then(|r| r.first()).and_then(Value::as_str);
    if stored == Some(cfg.signature().as_str()) {
        return Ok(None);
    }
    let mut any = Sql::new(d);
    any.push("SELECT COUNT(*) FROM (SELECT 1 FROM ")
        .ident(coll.name())
        .push(" LIMIT 1) AS one");
    if rt.store.query_count(any).await? == 0 {
        // Records written from now on are indexed by their own writes.
        rt.store
            .write(vec![WriteOp::System {
                sql: crate::store::search::record_sql(d, coll.name(), &cfg.signature()),
                expect: None,
            }])
            .await
            .map_err(|e| e.error)?;
        return Ok(None);
    }
    // A job with the same unique key that ends between the enqueue's two statements
    // reads as a duplicate: once more, then the start-up check is the fallback.
    let job = rebuild::job(coll.name());
    match crate::jobs::service::enqueue(rt, &job, meta.clone()).await {
        Err(JobError::Duplicate) => match crate::jobs::service::enqueue(rt, &job, meta).await {
            Ok((job, _)) => Ok(Some(job)),
            Err(e) => {
                tracing::warn!(collection = coll.name(), error = %e, "queuing a search rebuild failed");
                Ok(None)
            }
        },
        Ok((job, _)) => Ok(Some(job)),
        Err(e) => Err(e),
    }
}

/// At start-up: a rebuild for every collection whose index lags its settings (a
/// change applied by `lintel migrate`, or a server stopped before its job was queued).
pub async fn ensure_all(rt: &Runtime) {
    let colls: Vec<Arc<Collection>> = rt
        .catalog()
        .collections
        .values()
        .filter(|c| c.search().is_some())
        .cloned()
        .collect();
    for coll in colls {
        let meta =
            WriteMeta::by(Some(serde_json::json!({ "type": "system" }))).at(rt.clock.now_ms());
        match ensure(rt, &coll, meta).await {
            Ok(Some(job)) => {
                tracing::info!(collection = coll.name(), job = %job.id, "search index rebuild queued");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(collection = coll.name(), error = %e, "checking the search index failed");
            }
        }
    }
}
