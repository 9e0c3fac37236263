//! The `search_rebuild` job: after a collection's search settings change, it re-indexes
//! the records already there, 500 at a time in short transactions, so reads and writes
//! go on meanwhile. Records written during the rebuild are indexed by their own write;
//! a batch never overwrites them with older text (SQLite re-reads the row inside the
//! batch's transaction; PostgreSQL writes only rows whose version it read).

use serde_json::{Value, json};

use crate::jobs::model::{Job, NewJob};
use crate::jobs::service::{Failed, progress_op};
use crate::runtime::Runtime;
use crate::schema::search::{TSVECTOR_COLUMN, fts_table};
use crate::store::ddl::sqlite_search_values;
use crate::store::{Dialect, Sql, SqlValue, WriteOp};

pub const KIND: &str = "search_rebuild";
const BATCH: i64 = 500;

/// The job that rebuilds `collection`'s index.
pub fn job(collection: &str) -> NewJob {
    let mut job = NewJob::of(KIND, json!({ "collection": collection }));
    job.unique_key = Some(format!("{KIND}:{collection}"));
    job.max_attempts = 10;
    job.timeout_ms = 6 * 3600 * 1000;
    job
}

fn failed(error: String) -> Failed {
    Failed {
        error,
        retry: true,
        ..Failed::default()
    }
}

/// Runs a rebuild; the progress (`{"indexed": n, "after": id}`) is kept with each
/// batch, so a retried job resumes after the last one; the last step records the
/// settings the index now follows.
pub async fn run(rt: &Runtime, job: &Job, lease: &str) -> Result<Value, Failed> {
    let name = job.payload["collection"].as_str().unwrap_or_default();
    let d = rt.store.dialect();
    let mut signature = job.progress["signature"].as_str().map(str::to_owned);
    let mut after = job.progress["after"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut indexed = job.progress["indexed"].as_u64().unwrap_or(0);
    loop {
        // The settings are read again for every batch: a change while the job runs
        // starts it over with the new ones.
        let coll = rt.catalog().collections.get(name).cloned();
        let Some((coll, cfg)) = coll.and_then(|c| c.search().cloned().map(|cfg| (c, cfg))) else {
            // Dropped, or no longer searchable: nothing to index.
            return Ok(json!({ "collection": name, "indexed": indexed, "skipped": true }));
        };
        let t = coll.name();
        if signature.as_deref() != Some(cfg.signature().as_str()) {
            signature = Some(cfg.signature());
            after.clear();
            indexed = 0;
        }
        let mut q = Sql::new(d);
        q.push("SELECT ")
            .column(t, "id")
            .push(", ")
            .column(t, "version");
        if d == Dialect::Postgres {
            for f in &cfg.fields {
                q.push(", ").column(t, &f.name);
            }
        }
        q.push(" FROM ")
            .ident(t)
            .push(" WHERE ")
            .column(t, "id")
            .push(" > ");
        q.bind(SqlValue::Text(after.clone()))
            .push(" ORDER BY ")
            .column(t, "id")
            .push(" LIMIT ")
            .bind(SqlValue::Int(BATCH));
        let rows = rt
            .store
            .query_rows(q)
            .await
            .map_err(|e| failed(format!("reading {t}: {e}")))?;
        let Some(last) = rows
            .last()
            .and_then(|r| r.first())
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            // Settings changed during the last pass: start over with them.
            let now = rt
                .catalog()
                .collections
                .get(name)
                .and_then(|c| c.search().map(|s| s.signature()));
            if now.as_deref() != Some(cfg.signature().as_str()) {
                continue;
            }
            // Done: the index holds what these settings make of every record.
            rt.store
                .write(vec![WriteOp::System {
                    sql: crate::store::search::record_sql(d, t, &cfg.signature()),
                    expect: None,
                }])
                .await
                .map_err(|e| failed(format!("recording {t}'s index: {}", e.error)))?;
            return Ok(json!({ "collection": t, "indexed": indexed }));
        };
        let mut ops = Vec::new();
        match d {
            Dialect::Sqlite => {
                let fts = fts_table(t);
                let range = |sql: &mut Sql| {
                    sql.push(" WHERE ").column(t, "id").push(" > ");
                    sql.bind(SqlValue::Text(after.clone()));
                    sql.push(" AND ").column(t, "id").push(" <= ");
                    sql.bind(SqlValue::Text(last.clone()));
                };
                let mut del = Sql::new(d);
                del.push("DELETE FROM ")
                    .ident(&fts)
                    .push(" WHERE rowid IN (SELECT _rowid_ FROM ");
                del.ident(t);
                range(&mut del);
                del.push(")");
                let mut ins = Sql::new(d);
                ins.push("INSERT INTO ")
                    .ident(&fts)
                    .push(" (rowid, a, b, c, d) SELECT _rowid_, ");
                ins.push(&sqlite_search_values(
                    &crate::store::sql::quote_ident(t),
                    &cfg,
                ));
                ins.push(" FROM ").ident(t);
                range(&mut ins);
                ops.push(WriteOp::System {
                    sql: del,
                    expect: None,
                });
                ops.push(WriteOp::System {
                    sql: ins,
                    expect: None,
                });
            }
            Dialect::Postgres => {
                for row in &rows {
                    let (Some(id), Some(version)) = (
                        row.first().and_then(Value::as_str),
                        row.get(1).and_then(Value::as_i64),
                    ) else {
                        continue;
                    };
                    let vector = cfg.tsvector(|name| {
                        let i = cfg.fields.iter().position(|f| f.name == name)?;
                        row.get(2 + i).and_then(Value::as_str)
                    });
                    let mut up = Sql::new(d);
                    up.push("UPDATE ")
                        .ident(t)
                        .push(" SET ")
                        .ident(TSVECTOR_COLUMN);
                    up.push(" = ")
                        .bind(SqlValue::Text(vector))
                        .push("::text::tsvector");
                    up.push(" WHERE \"id\" = ")
                        .bind(SqlValue::Text(id.to_owned()));
                    up.push(" AND \"version\" = ").bind(SqlValue::Int(version));
                    ops.push(WriteOp::System {
                        sql: up,
                        expect: None,
                    });
                }
            }
        }
        indexed += rows.len() as u64;
        after = last;
        ops.push(progress_op(
            rt,
            job,
            lease,
            &json!({ "collection": t, "indexed": indexed, "after": after, "signature": signature }),
        ));
        rt.store
            .write(ops)
            .await
            .map_err(|e| failed(format!("indexing {t}: {}", e.error)))?;
        // Search pages cached before this batch may miss what it indexed.
        rt.cache.written(t, "", None).await;
    }
}
