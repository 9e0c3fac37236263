//! Removes the files that committed writes stopped naming: follows the event log from
//! its own position (`_lintel_files_cursor`) and, for each `record.updated` or
//! `record.deleted` of a collection with file fields, removes the blob and then the
//! row of every name the record held before and holds no more. Any write path is
//! covered (updates, deletes, cascades, batches, imports) and only after its commit.
//! Removing twice is harmless, so several instances may race; the position moves by
//! compare-and-set.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::files::{file_fields, forget_of, names_in};
use crate::runtime::Runtime;
use crate::store::events::EventQuery;
use crate::store::{Sql, SqlValue, StoreError, WriteOp};

const PAGE: i64 = 500;

/// Runs until `shutdown` fires: after each growth of the log, and each second.
pub async fn run(rt: Runtime, mut shutdown: watch::Receiver<bool>) {
    let mut ends = rt.events.bus.subscribe();
    loop {
        let more = match pass(&rt).await {
            Ok(n) => n >= PAGE as usize,
            Err(e) => {
                tracing::warn!(error = %e, "removing dropped files failed");
                false
            }
        };
        if more {
            continue;
        }
        tokio::select! {
            _ = ends.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

async fn cursor(rt: &Runtime) -> Result<i64, StoreError> {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT seq FROM _lintel_files_cursor WHERE id = 1");
    rt.store.query_count(sql).await
}

async fn move_to(rt: &Runtime, from: i64, to: i64) -> Result<(), StoreError> {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("UPDATE _lintel_files_cursor SET seq = ")
        .bind(SqlValue::Int(to))
        .push(" WHERE id = 1 AND seq = ")
        .bind(SqlValue::Int(from));
    match rt
        .store
        .write(vec![WriteOp::System { sql, expect: None }])
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(e.error),
    }
}

/// The names an event's write dropped, with the record they belonged to.
pub fn dropped(rt: &Runtime, ev: &Value) -> Vec<(String, String, String)> {
    let kind = ev["type"].as_str().unwrap_or_default();
    if kind != "record.updated" && kind != "record.deleted" {
        return Vec::new();
    }
    let Some(coll) = ev["collection"].as_str().and_then(|c| rt.catalog().get(c)) else {
        return Vec::new();
    };
    let record = ev["recordId"].as_str().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    for f in file_fields(&coll) {
        let before = names_in(ev["previous"].get(&f.name));
        let after = names_in(ev["record"].get(&f.name));
        out.extend(
            before
                .into_iter()
                .filter(|n| !after.contains(n))
                .map(|n| (coll.name().to_owned(), record.clone(), n)),
        );
    }
    out
}

/// One page of the log after the position; returns how many events it read.
pub async fn pass(rt: &Runtime) -> Result<usize, StoreError> {
    let any_files = rt
        .catalog()
        .names()
        .iter()
        .filter_map(|n| rt.catalog().get(n))
        .any(|c| file_fields(&c).next().is_some());
    if !any_files {
        return Ok(0);
    }
    let from = cursor(rt).await?;
    let page = match crate::events::page(
        rt.store.as_ref(),
        Some(from),
        EventQuery {
            limit: PAGE,
            ..EventQuery::default()
        },
    )
    .await
    {
        Ok(p) => p,
        Err(crate::events::EventsError::Purged { oldest }) => {
            move_to(rt, from, oldest - 1).await?;
            return Ok(0);
        }
        Err(crate::events::EventsError::Store(e)) => return Err(e),
    };
    if page.items.is_empty() {
        return Ok(0);
    }
    let dropped: Vec<(String, String, String)> =
        page.items.iter().flat_map(|ev| dropped(rt, ev)).collect();
    forget_of(rt, &dropped).await;
    move_to(rt, from, page.next_after).await?;
    Ok(page.items.len())
}
