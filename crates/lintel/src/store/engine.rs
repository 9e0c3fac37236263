//! The store's algorithms, written once for both drivers: record writes (relation
//! checks, compare-and-set, `onDelete`), the catalog, migration bookkeeping, Lintel's
//! own system migrations and idempotency keys. They speak to a connection through
//! [`Conn`] (statements with bound parameters, rows decoded into [`Row`]s, DDL
//! scripts), and differ by dialect only through the SQL helpers of `store::sql` and
//! `store::write`. The drivers keep what is truly theirs: connections, transactions,
//! locks, notifications and error codes.
//!
//! The SQLite driver's connection answers synchronously, so on its writer thread these
//! futures are polled to completion at once ([`run_ready`]); PostgreSQL awaits them.

use std::collections::BTreeMap;
use std::future::Future;

use crate::migrations::{AppliedMigration, Migration, SchemaOp, checksum};
use crate::schema::{Collection, CollectionSpec, OnDelete};
use crate::store::ddl::{self, CatalogChange};
use crate::store::events::{self, EventDraft, WriteMeta};
use crate::store::sql::{select_by_id, select_by_ids};
use crate::store::write::{
    DeleteStep, DeleteSteps, RelationGraph, delete_sql, exists_sql, insert_sql, lock_row_sql,
    missing_target, referenced, referrer_sql, referring_ids_sql, referring_records_sql,
    relation_targets, relation_targets_sql, unlink_sql, update_sql,
};
use crate::store::{
    Dialect, EventMarks, IdempotencyClaim, Record, Sql, SqlValue, StoreError, StoredCollection,
    StoredResponse, WriteOp, WriteOutcome,
};

/// A connection (inside the driver's transaction) as the shared algorithms use it.
pub(crate) trait Conn {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; the rows changed. `coll` names the collection whose
    /// constraints a failure maps to field errors.
    fn execute(
        &self,
        sql: &Sql,
        coll: Option<&Collection>,
    ) -> impl Future<Output = Result<u64, StoreError>>;
    /// Runs a query; its rows as typed cells.
    fn rows(&self, sql: &Sql) -> impl Future<Output = Result<Vec<Row>, StoreError>>;
    /// Runs a script of statements without parameters (DDL).
    fn script(&self, text: &str) -> impl Future<Output = Result<(), StoreError>>;
    /// Runs a query whose columns are `coll`'s record columns.
    fn records(
        &self,
        coll: &Collection,
        sql: &Sql,
    ) -> impl Future<Output = Result<Vec<Record>, StoreError>>;
}

/// One row of a system query, each cell as the driver decoded it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row(pub Vec<SqlValue>);

impl Row {
    /// The row as JSON scalars (what `Store::query_rows` returns): numbers, booleans,
    /// text, JSON values parsed; bytes as null.
    pub fn into_json(self) -> Vec<serde_json::Value> {
        use serde_json::Value;
        self.0
            .into_iter()
            .map(|cell| match cell {
                SqlValue::Null | SqlValue::Bytes(_) => Value::Null,
                SqlValue::Bool(b) => Value::Bool(b),
                SqlValue::Int(n) => Value::from(n),
                SqlValue::Float(x) => {
                    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
                }
                SqlValue::Text(s) | SqlValue::Timestamp(s) => Value::String(s),
                SqlValue::Json(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
            })
            .collect()
    }

    fn cell(&self, i: usize) -> Result<&SqlValue, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Internal(format!("a row has no column {i}")))
    }

    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?
            .ok_or_else(|| StoreError::Internal(format!("column {i} is null")))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.cell(i)? {
            SqlValue::Null => Ok(None),
            SqlValue::Text(s) | SqlValue::Json(s) | SqlValue::Timestamp(s) => Ok(Some(s.clone())),
            other => Err(StoreError::Internal(format!(
                "column {i} holds {other:?}, not text"
            ))),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?
            .ok_or_else(|| StoreError::Internal(format!("column {i} is null")))
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(i)? {
            SqlValue::Null => Ok(None),
            SqlValue::Int(n) => Ok(Some(*n)),
            other => Err(StoreError::Internal(format!(
                "column {i} holds {other:?}, not an integer"
            ))),
        }
    }

    pub fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.cell(i)? {
            SqlValue::Null => Ok(None),
            SqlValue::Bytes(b) => Ok(Some(b.clone())),
            SqlValue::Text(s) => Ok(Some(s.clone().into_bytes())),
            other => Err(StoreError::Internal(format!(
                "column {i} holds {other:?}, not bytes"
            ))),
        }
    }
}

/// Polls a future that never waits (one whose connection answers synchronously) to
/// its end, on the current thread.
pub(crate) fn run_ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        // Not reached with a synchronous connection; yield rather than spin hard.
        std::thread::yield_now();
    }
}

async fn query_i64<C: Conn>(c: &C, sql: &Sql) -> Result<i64, StoreError> {
    c.rows(sql)
        .await?
        .first()
        .ok_or_else(|| StoreError::Internal("a count returned no row".into()))?
        .int(0)
}

/// A statement of fixed text with bound values: each `?N` in `text` binds `values[N-1]`
/// (in the dialect's own placeholder form; a value named twice is bound twice).
fn stmt(d: Dialect, text: &str, values: Vec<SqlValue>) -> Sql {
    let mut sql = Sql::new(d);
    let mut rest = text;
    while let Some(i) = rest.find('?') {
        sql.push(&rest[..i]);
        let digits = rest[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
        let n: usize = rest[i + 1..i + 1 + digits].parse().unwrap_or(0);
        debug_assert!(
            (1..=values.len()).contains(&n),
            "placeholder ?{n} in a fixed statement has no value: {text}"
        );
        let value = n
            .checked_sub(1)
            .and_then(|k| values.get(k))
            .cloned()
            .unwrap_or(SqlValue::Null);
        sql.bind(value);
        rest = &rest[i + 1 + digits..];
    }
    sql.push(rest);
    sql
}

fn text(s: impl Into<String>) -> SqlValue {
    SqlValue::Text(s.into())
}

// ---- record writes ----

/// Every relation target of a record exists (on PostgreSQL the targets are locked
/// against a concurrent delete until the transaction ends).
async fn check_relations<C: Conn>(
    c: &C,
    coll: &Collection,
    record: &Record,
) -> Result<(), StoreError> {
    for (field, target, ids) in relation_targets(coll, record) {
        let sql = relation_targets_sql(c.dialect(), &target, &ids);
        if query_i64(c, &sql).await? != ids.len() as i64 {
            return Err(StoreError::Constraint(missing_target(&field, &target)));
        }
    }
    Ok(())
}

/// Tells a missing record from a stale version after a write changed no row.
async fn no_row_changed<C: Conn>(c: &C, coll: &Collection, id: &str) -> StoreError {
    match query_i64(c, &exists_sql(c.dialect(), coll.name(), id)).await {
        Ok(0) => StoreError::NotFound,
        Ok(_) => StoreError::VersionConflict,
        Err(e) => e,
    }
}

/// Applies the `onDelete` policy of every relation that names `coll`/`id` before the
/// record is deleted, in the order [`DeleteSteps`] gives: restrict refuses, setNull
/// unlinks, cascade deletes the referring records after their own referrers.
async fn follow_referrers<C: Conn>(
    c: &C,
    graph: &RelationGraph,
    coll: &str,
    id: &str,
    now: &str,
    meta: &WriteMeta,
) -> Result<(), StoreError> {
    let d = c.dialect();
    let mut steps = DeleteSteps::new(coll, id);
    while let Some(step) = steps.next() {
        match step {
            DeleteStep::Delete(rc, rid) => {
                let previous = c.records(&rc, &select_by_id(d, &rc, &rid)).await?;
                c.execute(&delete_sql(d, &rc, &rid, None), Some(&rc))
                    .await?;
                if let Some(p) = previous.first() {
                    record_event(c, &rc, "record.deleted", &p.id, None, Some(p), meta).await?;
                }
            }
            DeleteStep::Expand(name, rid) => {
                for (rc, field) in graph.get(&name).into_iter().flatten() {
                    match field.delete_policy() {
                        OnDelete::Restrict => {
                            if query_i64(c, &referrer_sql(d, rc, field, &rid)).await? > 0 {
                                return Err(referenced(rc, field));
                            }
                        }
                        OnDelete::SetNull => {
                            let before = c
                                .records(rc, &referring_records_sql(d, rc, field, &rid))
                                .await?;
                            c.execute(&unlink_sql(d, rc, field, &rid, now), Some(rc))
                                .await?;
                            let ids: Vec<String> = before.iter().map(|r| r.id.clone()).collect();
                            let before: std::collections::HashMap<&str, &Record> =
                                before.iter().map(|r| (r.id.as_str(), r)).collect();
                            for chunk in ids.chunks(500) {
                                let after = c.records(rc, &select_by_ids(d, rc, chunk)).await?;
                                for a in &after {
                                    let p = before.get(a.id.as_str()).copied();
                                    record_event(c, rc, "record.updated", &a.id, Some(a), p, meta)
                                        .await?;
                                }
                            }
                        }
                        OnDelete::Cascade => {
                            let sql = referring_ids_sql(d, rc, field, &rid, steps.room());
                            for row in c.rows(&sql).await? {
                                steps.cascade(rc, &row.text(0)?)?;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Appends an event about a record.
async fn record_event<C: Conn>(
    c: &C,
    coll: &Collection,
    kind: &str,
    id: &str,
    record: Option<&Record>,
    previous: Option<&Record>,
    meta: &WriteMeta,
) -> Result<(), StoreError> {
    let sql = events::record_insert_sql(c.dialect(), kind, coll, id, record, previous, meta);
    c.execute(&sql, None).await?;
    Ok(())
}

/// Applies one write inside the driver's transaction, and appends its events.
pub(crate) async fn apply_op<C: Conn>(
    c: &C,
    op: WriteOp,
    meta: &WriteMeta,
) -> Result<WriteOutcome, StoreError> {
    let d = c.dialect();
    match op {
        WriteOp::Insert { coll, record } => {
            check_relations(c, &coll, &record).await?;
            c.execute(&insert_sql(d, &coll, &record), Some(&coll))
                .await?;
            record_event(
                c,
                &coll,
                "record.created",
                &record.id,
                Some(&record),
                None,
                meta,
            )
            .await?;
            Ok(WriteOutcome::Written(record))
        }
        WriteOp::Update {
            coll,
            record,
            expected_version,
        } => {
            check_relations(c, &coll, &record).await?;
            // Read inside the transaction (on PostgreSQL the row is locked already), so
            // the event's `previous` is exactly the version this update replaces.
            let previous = c
                .records(&coll, &select_by_id(d, &coll, &record.id))
                .await?;
            let sql = update_sql(d, &coll, &record, expected_version);
            if c.execute(&sql, Some(&coll)).await? == 0 {
                return Err(no_row_changed(c, &coll, &record.id).await);
            }
            record_event(
                c,
                &coll,
                "record.updated",
                &record.id,
                Some(&record),
                previous.first(),
                meta,
            )
            .await?;
            Ok(WriteOutcome::Written(record))
        }
        WriteOp::Delete {
            coll,
            id,
            expected_version,
            referrers,
            now,
        } => {
            // Where rows are locked (PostgreSQL), lock this one first: an insert that
            // holds a key-share lock on it (adding a reference) finishes before the
            // referrer checks below run.
            if let Some(lock) = lock_row_sql(d, coll.name(), &id)
                && query_i64(c, &lock).await? == 0
            {
                return Err(StoreError::NotFound);
            }
            let previous = c.records(&coll, &select_by_id(d, &coll, &id)).await?;
            if previous.is_empty() {
                return Err(StoreError::NotFound);
            }
            follow_referrers(c, &referrers, coll.name(), &id, &now, meta).await?;
            let sql = delete_sql(d, &coll, &id, expected_version);
            if c.execute(&sql, Some(&coll)).await? == 0 {
                return Err(no_row_changed(c, &coll, &id).await);
            }
            record_event(
                c,
                &coll,
                "record.deleted",
                &id,
                None,
                previous.first(),
                meta,
            )
            .await?;
            Ok(WriteOutcome::Deleted)
        }
        WriteOp::System { sql, expect } => {
            let n = c.execute(&sql, None).await?;
            if expect.is_some_and(|e| e != n) {
                return Err(StoreError::NotFound);
            }
            Ok(WriteOutcome::Affected(n))
        }
        WriteOp::Query { sql } => {
            let rows = c.rows(&sql).await?;
            Ok(WriteOutcome::Rows(
                rows.into_iter().map(Row::into_json).collect(),
            ))
        }
        WriteOp::Event(draft) => {
            c.execute(&events::insert_sql(d, &draft, meta), None)
                .await?;
            Ok(WriteOutcome::Affected(1))
        }
    }
}

// ---- the event log ----

/// Numbers committed events that wait for a `seq` (PostgreSQL, in the caller's
/// transaction; see `store::events`) and returns the log's marks.
pub(crate) async fn sequence_events<C: Conn>(c: &C) -> Result<EventMarks, StoreError> {
    let d = c.dialect();
    if d == Dialect::Postgres {
        let last = query_i64(c, &stmt(d, events::LOCK_COUNTER, vec![])).await?;
        let n = c.execute(&events::sequence_sql(last, 10_000), None).await?;
        if n > 0 {
            let bump = stmt(
                d,
                "UPDATE _lintel_event_meta SET last = ?1 WHERE id = 1",
                vec![SqlValue::Int(last + i64::try_from(n).unwrap_or(0))],
            );
            c.execute(&bump, None).await?;
        }
    }
    event_marks(c).await
}

/// The event log's marks, read.
pub(crate) async fn event_marks<C: Conn>(c: &C) -> Result<EventMarks, StoreError> {
    let rows = c.rows(&events::marks_sql(c.dialect())).await?;
    let r = rows
        .first()
        .ok_or_else(|| StoreError::Internal("the event counter row is missing".into()))?;
    Ok(EventMarks {
        last: r.int(0)?,
        purged: r.int(1)?,
    })
}

/// Whether committed events wait for a number (PostgreSQL).
pub(crate) async fn events_pending<C: Conn>(c: &C) -> Result<bool, StoreError> {
    Ok(query_i64(c, &stmt(c.dialect(), events::ANY_PENDING, vec![])).await? > 0)
}

// ---- catalog and migrations ----

/// The collections and the catalog's generation (the number of applied migrations).
pub(crate) async fn read_catalog<C: Conn>(
    c: &C,
) -> Result<(Vec<StoredCollection>, i64), StoreError> {
    let d = c.dialect();
    let rows = c
        .rows(&stmt(
            d,
            "SELECT name, spec, created, updated FROM _lintel_collections ORDER BY name",
            vec![],
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name = r.text(0)?;
        let spec = serde_json::from_str(&r.text(1)?)
            .map_err(|e| StoreError::Internal(format!("catalog entry {name} is corrupt: {e}")))?;
        out.push(StoredCollection {
            spec,
            created: r.text(2)?,
            updated: r.text(3)?,
        });
    }
    let generation = query_i64(
        c,
        &stmt(d, "SELECT COUNT(*) FROM _lintel_migrations", vec![]),
    )
    .await?;
    Ok((out, generation))
}

/// Runs migration steps and the catalog changes they imply, in the caller's
/// transaction.
async fn run_steps<C: Conn>(c: &C, ops: &[SchemaOp], meta: &WriteMeta) -> Result<(), StoreError> {
    let d = c.dialect();
    let (stored, _) = read_catalog(c).await?;
    let mut specs: BTreeMap<String, CollectionSpec> = stored
        .into_iter()
        .map(|s| (s.spec.name.clone(), s.spec))
        .collect();
    let mut before = specs.clone();
    let steps = ddl::plan(d, ops, &mut specs).map_err(StoreError::Schema)?;
    let now = crate::clock::now();
    for step in steps {
        for statement in &step.statements {
            c.script(statement).await.map_err(|e| {
                // The driver's text can quote SQL: it goes to the log, not the client.
                tracing::warn!(error = %e, "a schema statement failed");
                StoreError::Schema(
                    "the database refused the schema change (details in the server log)".into(),
                )
            })?;
        }
        match step.catalog {
            CatalogChange::Upsert(spec) => {
                let json = serde_json::to_string(&spec)
                    .map_err(|e| StoreError::Internal(e.to_string()))?;
                let sql = stmt(
                    d,
                    "INSERT INTO _lintel_collections (name, spec, created, updated) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated = excluded.updated",
                    vec![text(&spec.name), text(json), text(&now), text(&now)],
                );
                c.execute(&sql, None).await?;
                let previous = before.insert(spec.name.clone(), (*spec).clone());
                let kind = if previous.is_some() {
                    "collection.altered"
                } else {
                    "collection.created"
                };
                collection_event(c, kind, &spec.name, Some(&spec), previous.as_ref(), meta).await?;
            }
            CatalogChange::Delete(name) => {
                let sql = stmt(
                    d,
                    "DELETE FROM _lintel_collections WHERE name = ?1",
                    vec![text(&name)],
                );
                c.execute(&sql, None).await?;
                let previous = before.remove(&name);
                collection_event(
                    c,
                    "collection.dropped",
                    &name,
                    None,
                    previous.as_ref(),
                    meta,
                )
                .await?;
            }
            CatalogChange::None => {}
        }
    }
    Ok(())
}

/// Appends an event about a collection: its definition after and before.
async fn collection_event<C: Conn>(
    c: &C,
    kind: &str,
    name: &str,
    spec: Option<&CollectionSpec>,
    previous: Option<&CollectionSpec>,
    meta: &WriteMeta,
) -> Result<(), StoreError> {
    let json = |s: &CollectionSpec| serde_json::to_value(s).ok();
    let draft = EventDraft {
        kind: kind.to_owned(),
        collection: Some(name.to_owned()),
        record_id: None,
        record: spec.and_then(json),
        previous: previous.and_then(json),
    };
    c.execute(&events::insert_sql(c.dialect(), &draft, meta), None)
        .await?;
    Ok(())
}

/// Every applied migration, oldest first.
pub(crate) async fn applied_migrations<C: Conn>(
    c: &C,
) -> Result<Vec<AppliedMigration>, StoreError> {
    let rows = c
        .rows(&stmt(
            c.dialect(),
            "SELECT version, name, checksum, applied_at, content FROM _lintel_migrations
             ORDER BY length(version), version",
            vec![],
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let version = r.text(0)?;
        let content = serde_json::from_str(&r.text(4)?).map_err(|e| {
            StoreError::Internal(format!("recorded migration {version} is corrupt: {e}"))
        })?;
        out.push(AppliedMigration {
            version,
            name: r.text(1)?,
            checksum: r.text(2)?,
            applied_at: r.text(3)?,
            content,
        });
    }
    Ok(out)
}

/// Applies a migration unless it is recorded already (false then); one recorded with
/// other content is refused.
pub(crate) async fn apply_migration<C: Conn>(
    c: &C,
    migration: &Migration,
    checksum: &str,
    meta: &WriteMeta,
) -> Result<bool, StoreError> {
    let d = c.dialect();
    let rows = c
        .rows(&stmt(
            d,
            "SELECT checksum FROM _lintel_migrations WHERE version = ?1",
            vec![text(&migration.version)],
        ))
        .await?;
    match rows.first().map(|r| r.text(0)).transpose()? {
        Some(recorded) if recorded == checksum => return Ok(false),
        Some(_) => {
            return Err(StoreError::Schema(format!(
                "migration {} is already applied with other content",
                migration.version
            )));
        }
        None => {}
    }
    run_steps(c, &migration.up, meta).await?;
    let content =
        serde_json::to_string(migration).map_err(|e| StoreError::Internal(e.to_string()))?;
    let sql = stmt(
        d,
        "INSERT INTO _lintel_migrations (version, name, checksum, content, applied_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        vec![
            text(&migration.version),
            text(&migration.name),
            text(checksum),
            text(content),
            text(crate::clock::now()),
        ],
    );
    c.execute(&sql, None).await?;
    Ok(true)
}

/// Reverts an applied migration (its `down` steps); a migration not applied is
/// `NotFound`.
pub(crate) async fn revert_migration<C: Conn>(
    c: &C,
    migration: &Migration,
    meta: &WriteMeta,
) -> Result<(), StoreError> {
    run_steps(c, &migration.down, meta).await?;
    let sql = stmt(
        c.dialect(),
        "DELETE FROM _lintel_migrations WHERE version = ?1",
        vec![text(&migration.version)],
    );
    if c.execute(&sql, None).await? == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// One of Lintel's own migrations: the same on both stores except where a column type
/// differs. Never edit one once released (its checksum is recorded): add a new one.
pub(crate) struct SystemMigration {
    pub version: i64,
    pub name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

impl SystemMigration {
    const fn same(version: i64, name: &'static str, sql: &'static str) -> Self {
        Self {
            version,
            name,
            sqlite: sql,
            postgres: sql,
        }
    }

    pub fn sql(&self, d: Dialect) -> &'static str {
        match d {
            Dialect::Sqlite => self.sqlite,
            Dialect::Postgres => self.postgres,
        }
    }
}

const CATALOG_TABLES: &str = "CREATE TABLE _lintel_collections (
            name TEXT PRIMARY KEY NOT NULL,
            spec TEXT NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        );
        CREATE TABLE _lintel_migrations (
            version TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            content TEXT NOT NULL,
            applied_at TEXT NOT NULL
        );";

/// Lintel's own tables, in order.
pub(crate) const SYSTEM_MIGRATIONS: &[SystemMigration] = &[
    SystemMigration::same(1, "catalog", CATALOG_TABLES),
    SystemMigration {
        version: 2,
        name: "idempotency",
        sqlite: "CREATE TABLE _lintel_idempotency (
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            state TEXT NOT NULL,
            status INTEGER,
            headers TEXT,
            body BLOB,
            created_ms INTEGER NOT NULL,
            locked_until_ms INTEGER NOT NULL,
            PRIMARY KEY (scope, key)
        );
        CREATE INDEX _lintel_idempotency_created ON _lintel_idempotency (created_ms);",
        postgres: "CREATE TABLE _lintel_idempotency (
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            state TEXT NOT NULL,
            status INTEGER,
            headers TEXT,
            body BYTEA,
            created_ms BIGINT NOT NULL,
            locked_until_ms BIGINT NOT NULL,
            PRIMARY KEY (scope, key)
        );
        CREATE INDEX _lintel_idempotency_created ON _lintel_idempotency (created_ms);",
    },
    SystemMigration::same(3, "auth", crate::store::AUTH_TABLES),
    SystemMigration::same(4, "secrets", crate::store::SECRETS_TABLE),
    SystemMigration::same(5, "oauth_state_browser", crate::store::OAUTH_STATE_BROWSER),
    SystemMigration::same(6, "expiry_indexes", crate::store::EXPIRY_INDEXES),
    SystemMigration {
        version: 7,
        name: "geo_distance",
        // SQLite has no trigonometry built in: the driver registers the function on
        // every connection (`sqlite::executor::register_functions`).
        sqlite: "SELECT 'lintel_geo_distance is registered on each connection';",
        postgres: "CREATE OR REPLACE FUNCTION lintel_geo_distance(
            lat_a DOUBLE PRECISION, lon_a DOUBLE PRECISION,
            lat_b DOUBLE PRECISION, lon_b DOUBLE PRECISION
        ) RETURNS DOUBLE PRECISION LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
            SELECT 2 * 6371.0 * asin(sqrt(least(1.0, greatest(0.0,
                power(sin(radians(lat_b - lat_a) / 2), 2)
                + cos(radians(lat_a)) * cos(radians(lat_b))
                  * power(sin(radians(lon_b - lon_a) / 2), 2)
            ))))
        $$;",
    },
    SystemMigration {
        version: 8,
        name: "events",
        sqlite: events::SQLITE_TABLES,
        postgres: events::POSTGRES_TABLES,
    },
    SystemMigration::same(9, "jobs", crate::store::jobs::TABLES),
    SystemMigration::same(10, "webhooks", crate::store::webhooks::TABLES),
    SystemMigration::same(
        11,
        "webhook_delivery_order",
        crate::store::webhooks::DELIVERY_INDEXES,
    ),
    SystemMigration::same(12, "files", crate::store::files::TABLES),
    SystemMigration::same(13, "uploads", crate::store::files::UPLOADS_TABLE),
    SystemMigration::same(14, "file_keys", crate::store::files::FILE_KEYS),
    SystemMigration::same(15, "yjs", crate::store::yjs::TABLE),
    SystemMigration::same(16, "search_state", crate::store::search::TABLE),
];

/// Brings Lintel's own tables up to date, in the caller's transaction (which the
/// PostgreSQL driver serialises across instances with an advisory lock). A recorded
/// migration whose text changed is refused.
pub(crate) async fn run_system_migrations<C: Conn>(c: &C) -> Result<(), StoreError> {
    let d = c.dialect();
    c.script(match d {
        Dialect::Sqlite => {
            "CREATE TABLE IF NOT EXISTS _lintel_system_migrations (
            version INTEGER PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TEXT NOT NULL
        )"
        }
        Dialect::Postgres => {
            "CREATE TABLE IF NOT EXISTS _lintel_system_migrations (
                version BIGINT PRIMARY KEY NOT NULL,
                name TEXT NOT NULL,
                checksum TEXT NOT NULL,
                applied_at TEXT NOT NULL
            )"
        }
    })
    .await?;
    for m in SYSTEM_MIGRATIONS {
        let sql = m.sql(d);
        let sum = checksum(sql.as_bytes());
        let rows = c
            .rows(&stmt(
                d,
                "SELECT checksum FROM _lintel_system_migrations WHERE version = ?1",
                vec![SqlValue::Int(m.version)],
            ))
            .await?;
        match rows.first().map(|r| r.text(0)).transpose()? {
            Some(recorded) if recorded == sum => {}
            Some(_) => {
                return Err(StoreError::Internal(format!(
                    "system migration {} ({}) differs from the one applied to this database",
                    m.version, m.name
                )));
            }
            None => {
                c.script(sql).await?;
                let record = stmt(
                    d,
                    "INSERT INTO _lintel_system_migrations (version, name, checksum, applied_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    vec![
                        SqlValue::Int(m.version),
                        text(m.name),
                        text(sum),
                        text(crate::clock::now()),
                    ],
                );
                c.execute(&record, None).await?;
            }
        }
    }
    Ok(())
}

// ---- idempotency keys ----

/// Claims an idempotency key, in the caller's transaction: proceed (a new or expired
/// key, or one whose holder's lock ran out), replay a finished response, or refuse a
/// key in flight or reused with another request.
pub(crate) async fn idempotency_claim<C: Conn>(
    c: &C,
    scope: &str,
    key: &str,
    fingerprint: &str,
    now_ms: i64,
    ttl_ms: i64,
    lock_ms: i64,
) -> Result<IdempotencyClaim, StoreError> {
    let d = c.dialect();
    let mut select = stmt(
        d,
        "SELECT fingerprint, state, status, headers, body, created_ms, locked_until_ms
         FROM _lintel_idempotency WHERE scope = ?1 AND key = ?2",
        vec![text(scope), text(key)],
    );
    if d == Dialect::Postgres {
        select.push(" FOR UPDATE");
    }
    let rows = c.rows(&select).await?;
    let locked_until = now_ms + lock_ms;
    let Some(r) = rows.first() else {
        let insert = stmt(
            d,
            "INSERT INTO _lintel_idempotency (scope, key, fingerprint, state, created_ms, locked_until_ms)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?5) ON CONFLICT (scope, key) DO NOTHING",
            vec![
                text(scope),
                text(key),
                text(fingerprint),
                SqlValue::Int(now_ms),
                SqlValue::Int(locked_until),
            ],
        );
        // Another instance may have inserted it since the read: that one holds it.
        return Ok(if c.execute(&insert, None).await? == 1 {
            IdempotencyClaim::Proceed { token: now_ms }
        } else {
            IdempotencyClaim::InFlight
        });
    };
    let expired = r.int(5)? + ttl_ms < now_ms;
    if !expired && r.text(0)? != fingerprint {
        return Ok(IdempotencyClaim::Mismatch);
    }
    if !expired && r.text(1)? == "done" {
        return Ok(IdempotencyClaim::Replay(StoredResponse {
            status: r
                .opt_int(2)?
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(200),
            headers: r
                .opt_text(3)?
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or_default(),
            body: r.opt_bytes(4)?.unwrap_or_default(),
        }));
    }
    if !expired && r.int(6)? > now_ms {
        return Ok(IdempotencyClaim::InFlight);
    }
    let retake = stmt(
        d,
        "UPDATE _lintel_idempotency SET fingerprint = ?3, state = 'pending', status = NULL,
           headers = NULL, body = NULL, created_ms = ?4, locked_until_ms = ?5
         WHERE scope = ?1 AND key = ?2",
        vec![
            text(scope),
            text(key),
            text(fingerprint),
            SqlValue::Int(now_ms),
            SqlValue::Int(locked_until),
        ],
    );
    c.execute(&retake, None).await?;
    Ok(IdempotencyClaim::Proceed { token: now_ms })
}

/// Stores the response of a claimed key (the claim made with `token`).
pub(crate) async fn idempotency_complete<C: Conn>(
    c: &C,
    scope: &str,
    key: &str,
    token: i64,
    response: StoredResponse,
) -> Result<(), StoreError> {
    let headers = serde_json::to_string(&response.headers)
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    let sql = stmt(
        c.dialect(),
        "UPDATE _lintel_idempotency SET state = 'done', status = ?3, headers = ?4, body = ?5
         WHERE scope = ?1 AND key = ?2 AND created_ms = ?6 AND state = 'pending'",
        vec![
            text(scope),
            text(key),
            SqlValue::Int(i64::from(response.status)),
            text(headers),
            SqlValue::Bytes(response.body),
            SqlValue::Int(token),
        ],
    );
    c.execute(&sql, None).await?;
    Ok(())
}

/// Lets a claimed key go (the request failed before it had a response to keep).
pub(crate) async fn idempotency_release<C: Conn>(
    c: &C,
    scope: &str,
    key: &str,
    token: i64,
) -> Result<(), StoreError> {
    let sql = stmt(
        c.dialect(),
        "DELETE FROM _lintel_idempotency WHERE scope = ?1 AND key = ?2 AND state = 'pending' AND created_ms = ?3",
        vec![text(scope), text(key), SqlValue::Int(token)],
    );
    c.execute(&sql, None).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_statements_take_each_dialects_placeholders() {
        let s = stmt(
            Dialect::Sqlite,
            "DELETE FROM t WHERE a = ?1 AND b = ?2",
            vec![text("x"), SqlValue::Int(2)],
        );
        assert_eq!(s.text, "DELETE FROM t WHERE a = ?1 AND b = ?2");
        assert_eq!(s.params.len(), 2);
        let p = stmt(
            Dialect::Postgres,
            "DELETE FROM t WHERE a = ?1 AND b = ?2",
            vec![text("x"), SqlValue::Int(2)],
        );
        assert_eq!(p.text, "DELETE FROM t WHERE a = $1::text AND b = $2::int8");
        // Numbers, not positions, pick the value.
        let q = stmt(
            Dialect::Sqlite,
            "UPDATE t SET a = ?2 WHERE b = ?1 AND c = ?1",
            vec![text("one"), text("two")],
        );
        assert_eq!(
            q.params,
            vec![text("two"), text("one"), text("one")],
            "{}",
            q.text
        );
    }

    #[test]
    fn system_migrations_keep_their_released_text() {
        // Existing databases recorded these checksums: a changed text would refuse to
        // open them. Add a migration instead of editing one.
        let released = [
            (
                1,
                Dialect::Sqlite,
                "ce8d5059149cdded3ff2bc6fe98deb8fe3a25cd536686cd985e85b5bc657d38b",
            ),
            (
                1,
                Dialect::Postgres,
                "ce8d5059149cdded3ff2bc6fe98deb8fe3a25cd536686cd985e85b5bc657d38b",
            ),
            (
                2,
                Dialect::Sqlite,
                "73d71c1e6f858270b962e04716fb046c3e7d5deaa5a67b985e05e0ea2c46ebfb",
            ),
            (
                2,
                Dialect::Postgres,
                "505cb209b04e33cecb88398b95f594bc7eb66624dbf422de16875a0c4530e82f",
            ),
        ];
        for (version, d, sum) in released {
            let m = SYSTEM_MIGRATIONS
                .iter()
                .find(|m| m.version == version)
                .unwrap();
            assert_eq!(checksum(m.sql(d).as_bytes()), sum, "{version} {d:?}");
        }
        let versions: Vec<i64> = SYSTEM_MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=16).collect::<Vec<i64>>());
    }
}
