//! Record writes as data ([`WriteOp`]) and the SQL each one needs, rendered for a
//! dialect. A store runs a list of ops in one transaction: relation targets are checked
//! to exist, compare-and-set on `version` gives optimistic locking, and deletes refuse
//! to orphan records that still point at the target.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;

use crate::schema::search::TSVECTOR_COLUMN;
use crate::schema::{Collection, FieldSpec, FieldType};
use crate::store::sql::{Dialect, Sql, SqlValue, field_value};
use crate::store::{Record, StoreError};
use crate::validation::{FieldErrors, push_field_error};

/// One record write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Insert {
        coll: Arc<Collection>,
        record: Record,
    },
    /// Replaces the stored record when its version is still `expected_version`.
    Update {
        coll: Arc<Collection>,
        record: Record,
        expected_version: i64,
    },
    Delete {
        coll: Arc<Collection>,
        id: String,
        expected_version: Option<i64>,
        /// Every relation of the catalog by target, so the delete can follow each
        /// referring field's `onDelete` policy (restrict, set null, cascade) down the
        /// chain.
        referrers: Arc<RelationGraph>,
        /// The request's time: the `updated` of records a set-null policy changes.
        now: String,
    },
    /// A statement on one of Lintel's own tables (sessions, tokens, audit...), in the
    /// same transaction as the record writes beside it. With `expect`, any other
    /// number of changed rows fails the whole transaction with `NotFound` (a token
    /// already used, a session already revoked).
    System { sql: Sql, expect: Option<u64> },
    /// A statement on Lintel's own tables that returns rows (`UPDATE ... RETURNING`,
    /// a read inside the transaction); its rows come back as JSON scalars.
    Query { sql: Sql },
    /// An event appended to the log in the same transaction (auth events; record and
    /// collection events are appended by the store itself).
    Event(Box<crate::store::events::EventDraft>),
}

impl WriteOp {
    /// The record an op writes, for the read cache and change notices.
    pub fn target(&self) -> Option<(&str, &str)> {
        match self {
            WriteOp::Insert { coll, record } | WriteOp::Update { coll, record, .. } => {
                Some((coll.name(), &record.id))
            }
            WriteOp::Delete { coll, id, .. } => Some((coll.name(), id)),
            WriteOp::System { .. } | WriteOp::Query { .. } | WriteOp::Event(_) => None,
        }
    }

    /// Whether the op queues a job (other instances' workers are woken for it).
    pub fn queues_job(&self) -> bool {
        matches!(self, WriteOp::Query { sql } if sql.text.starts_with("INSERT INTO _lintel_jobs"))
    }

    /// Whether applying the op appends to the event log.
    pub fn appends_event(&self) -> bool {
        !matches!(self, WriteOp::System { .. } | WriteOp::Query { .. })
    }
}

/// A failed batch of ops: which op failed (0 when the commit itself failed) and why.
#[derive(Debug, Clone)]
pub struct WriteError {
    pub index: usize,
    pub error: StoreError,
}

impl From<StoreError> for WriteError {
    fn from(error: StoreError) -> Self {
        Self { index: 0, error }
    }
}

/// What a successful op produced.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    Written(Record),
    Deleted,
    /// A system statement ran and changed this many rows.
    Affected(u64),
    /// The rows a query returned.
    Rows(Vec<Vec<serde_json::Value>>),
}

fn record_values(coll: &Collection, record: &Record) -> Vec<SqlValue> {
    if coll.is_document() {
        vec![SqlValue::Json(
            Value::Object(record.data.clone()).to_string(),
        )]
    } else {
        coll.fields()
            .iter()
            .map(|f| field_value(f, record.data.get(&f.name).unwrap_or(&Value::Null)))
            .collect()
    }
}

fn data_columns(coll: &Collection) -> Vec<&str> {
    if coll.is_document() {
        vec!["data"]
    } else {
        coll.fields().iter().map(|f| f.name.as_str()).collect()
    }
}

pub fn insert_sql(dialect: Dialect, coll: &Collection, record: &Record) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("INSERT INTO ")
        .ident(coll.name())
        .push(" (\"id\", \"created\", \"updated\", \"version\"");
    for c in data_columns(coll) {
        sql.push(", ").ident(c);
    }
    let tsvector = search_vector(dialect, coll, record);
    if tsvector.is_some() {
        sql.push(", ").ident(TSVECTOR_COLUMN);
    }
    sql.push(") VALUES (");
    sql.bind(SqlValue::Text(record.id.clone())).push(", ");
    sql.bind(SqlValue::Text(record.created.clone())).push(", ");
    sql.bind(SqlValue::Text(record.updated.clone())).push(", ");
    sql.bind(SqlValue::Int(record.version));
    for v in record_values(coll, record) {
        sql.push(", ").bind(v);
    }
    if let Some(v) = tsvector {
        sql.push(", ")
            .bind(SqlValue::Text(v))
            .push("::text::tsvector");
    }
    sql.push(")");
    sql
}

/// On PostgreSQL, the `tsvector` a searchable collection's row carries (SQLite's FTS5
/// table follows the rows through triggers instead).
fn search_vector(dialect: Dialect, coll: &Collection, record: &Record) -> Option<String> {
    let cfg = coll.search().filter(|_| dialect == Dialect::Postgres)?;
    Some(cfg.tsvector(|name| record.data.get(name).and_then(Value::as_str)))
}

pub fn update_sql(dialect: Dialect, coll: &Collection, record: &Record, expected: i64) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("UPDATE ")
        .ident(coll.name())
        .push(" SET \"updated\" = ");
    sql.bind(SqlValue::Text(record.updated.clone()));
    sql.push(", \"version\" = ")
        .bind(SqlValue::Int(record.version));
    for (c, v) in data_columns(coll)
        .into_iter()
        .zip(record_values(coll, record))
    {
        sql.push(", ").ident(c).push(" = ").bind(v);
    }
    if let Some(v) = search_vector(dialect, coll, record) {
        sql.push(", ")
            .ident(TSVECTOR_COLUMN)
            .push(" = ")
            .bind(SqlValue::Text(v))
            .push("::text::tsvector");
    }
    sql.push(" WHERE \"id\" = ")
        .bind(SqlValue::Text(record.id.clone()));
    sql.push(" AND \"version\" = ")
        .bind(SqlValue::Int(expected));
    sql
}

pub fn delete_sql(dialect: Dialect, coll: &Collection, id: &str, expected: Option<i64>) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("DELETE FROM ")
        .ident(coll.name())
        .push(" WHERE \"id\" = ");
    sql.bind(SqlValue::Text(id.to_owned()));
    if let Some(v) = expected {
        sql.push(" AND \"version\" = ").bind(SqlValue::Int(v));
    }
    sql
}

/// `SELECT COUNT(*) FROM "t" WHERE "id" = ?`
pub fn exists_sql(dialect: Dialect, table: &str, id: &str) -> Sql {
    count_ids_sql(dialect, table, &[id.to_owned()])
}

/// `SELECT COUNT(*) FROM "t" WHERE "id" IN (...)`
pub fn count_ids_sql(dialect: Dialect, table: &str, ids: &[String]) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT COUNT(*) FROM ")
        .ident(table)
        .push(" WHERE \"id\" IN (")
        .bind_all(ids.iter().map(|id| SqlValue::Text(id.clone())))
        .push(")");
    sql
}

/// `SELECT COUNT(*) FROM (SELECT 1 FROM "t" WHERE "id" IN (...) FOR <lock>) AS t`:
/// counts rows and locks them (PostgreSQL).
fn count_locked_sql(dialect: Dialect, table: &str, ids: &[String], lock: &str) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT COUNT(*) FROM (SELECT 1 FROM ")
        .ident(table)
        .push(" WHERE \"id\" IN (")
        .bind_all(ids.iter().map(|id| SqlValue::Text(id.clone())))
        .push(") FOR ")
        .push(lock)
        .push(") AS t");
    sql
}

/// Counts the relation targets that exist; on PostgreSQL it also locks them (`FOR KEY
/// SHARE`) so a concurrent delete waits for the writing transaction.
pub fn relation_targets_sql(dialect: Dialect, table: &str, ids: &[String]) -> Sql {
    match dialect {
        Dialect::Sqlite => count_ids_sql(dialect, table, ids),
        Dialect::Postgres => count_locked_sql(dialect, table, ids, "KEY SHARE"),
    }
}

/// Where rows are locked (PostgreSQL): counts the record and locks it `FOR UPDATE`
/// before a delete. None on SQLite, whose single writer serialises writes.
pub fn lock_row_sql(dialect: Dialect, table: &str, id: &str) -> Option<Sql> {
    match dialect {
        Dialect::Sqlite => None,
        Dialect::Postgres => Some(count_locked_sql(dialect, table, &[id.to_owned()], "UPDATE")),
    }
}

/// Whether any record of `coll` points at `id` through `field`.
pub fn referrer_sql(dialect: Dialect, coll: &Collection, field: &FieldSpec, id: &str) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT COUNT(*) FROM (SELECT 1 FROM ")
        .ident(coll.name())
        .push(" WHERE ");
    refers_to(&mut sql, coll, field, id);
    sql.push(" LIMIT 1) AS r");
    sql
}

pub use crate::schema::RelationGraph;

/// At most this many records are deleted through `cascade` by one delete; past it
/// the delete is refused (the caller removes the references in smaller steps). Each
/// costs a scan per referring field, inside the write transaction.
pub const MAX_CASCADE: usize = 1_000;

/// The refusal of a delete while `rc.field` still names the record.
pub fn referenced(rc: &Collection, field: &FieldSpec) -> StoreError {
    StoreError::Referenced(format!("{}.{}", rc.name(), field.name))
}

/// One step of a delete's walk over the records that name it.
pub enum DeleteStep {
    /// Apply the policies of the relations that name this record (collection, id).
    Expand(String, String),
    /// Delete this record: everything that named it has been handled.
    Delete(Arc<Collection>, String),
}

/// The order in which a delete handles the records that name it, the same for both
/// drivers: a worklist (never recursion, so a deep chain cannot exhaust a stack), each
/// record expanded before it is deleted so its own referrers go first, cycles stopped
/// by a visited set, at most [`MAX_CASCADE`] records cascaded.
pub struct DeleteSteps {
    work: Vec<DeleteStep>,
    visited: BTreeSet<(String, String)>,
}

impl DeleteSteps {
    /// The walk for deleting `coll`/`id` (which the caller deletes itself).
    pub fn new(coll: &str, id: &str) -> Self {
        Self {
            work: vec![DeleteStep::Expand(coll.to_owned(), id.to_owned())],
            visited: BTreeSet::from([(coll.to_owned(), id.to_owned())]),
        }
    }

    /// How many referring ids to read at most: one more than may still be cascaded,
    /// so that going past the limit is seen.
    pub fn room(&self) -> usize {
        (MAX_CASCADE + 2).saturating_sub(self.visited.len())
    }

    /// A record of `rc` names one being deleted through a cascading relation.
    pub fn cascade(&mut self, rc: &Arc<Collection>, id: &str) -> Result<(), StoreError> {
        if !self.visited.insert((rc.name().to_owned(), id.to_owned())) {
            return Ok(());
        }
        if self.visited.len() > MAX_CASCADE + 1 {
            return Err(StoreError::Referenced(format!(
                "more than {MAX_CASCADE} records through cascading deletes"
            )));
        }
        self.work
            .push(DeleteStep::Delete(rc.clone(), id.to_owned()));
        self.work
            .push(DeleteStep::Expand(rc.name().to_owned(), id.to_owned()));
        Ok(())
    }
}

impl Iterator for DeleteSteps {
    type Item = DeleteStep;

    fn next(&mut self) -> Option<DeleteStep> {
        self.work.pop()
    }
}

/// Whether deleting a record of `coll` can change other records (a `setNull` or
/// `cascade` relation names the collection), so caches must forget more than it.
pub fn delete_reaches_others(graph: &RelationGraph, coll: &str) -> bool {
    graph.get(coll).is_some_and(|refs| {
        refs.iter()
            .any(|(_, f)| f.delete_policy() != crate::schema::OnDelete::Restrict)
    })
}

fn refers_to(sql: &mut Sql, rc: &Collection, field: &FieldSpec, id: &str) {
    if field.multiple {
        sql.json_array_contains(rc.name(), &field.name, SqlValue::Text(id.to_owned()));
    } else {
        sql.column(rc.name(), &field.name)
            .push(" = ")
            .bind(SqlValue::Text(id.to_owned()));
    }
}

/// The ids of up to `limit` records of `rc` whose `field` names `id`.
pub fn referring_ids_sql(
    dialect: Dialect,
    rc: &Collection,
    field: &FieldSpec,
    id: &str,
    limit: usize,
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT \"id\" FROM ")
        .ident(rc.name())
        .push(" WHERE ");
    refers_to(&mut sql, rc, field, id);
    sql.push(" ORDER BY \"id\" LIMIT ")
        .bind(SqlValue::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
    if dialect == Dialect::Postgres {
        // Locked before they are followed and deleted: a concurrent write that adds
        // a reference to one of them waits, instead of pointing at a deleted record.
        sql.push(" FOR UPDATE");
    }
    sql
}

/// Every record of `rc` whose `field` names `id` (read before and after a set-null
/// unlink, for the events it makes).
pub fn referring_records_sql(
    dialect: Dialect,
    rc: &Collection,
    field: &FieldSpec,
    id: &str,
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT ");
    crate::store::sql::record_columns(&mut sql, rc);
    sql.push(" FROM ").ident(rc.name()).push(" WHERE ");
    refers_to(&mut sql, rc, field, id);
    sql.push(" ORDER BY \"id\"");
    sql
}

/// Removes `id` from `field` of every record of `rc` that names it (null for a single
/// relation, the id taken out of a multiple one), as a new version of each.
pub fn unlink_sql(
    dialect: Dialect,
    rc: &Collection,
    field: &FieldSpec,
    id: &str,
    now: &str,
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("UPDATE ")
        .ident(rc.name())
        .push(" SET ")
        .ident(&field.name);
    if !field.multiple {
        sql.push(" = NULL");
    } else {
        match dialect {
            Dialect::Sqlite => {
                sql.push(" = (SELECT json_group_array(value) FROM json_each(")
                    .column(rc.name(), &field.name)
                    .push(") WHERE value <> ")
                    .bind(SqlValue::Text(id.to_owned()))
                    .push(")");
            }
            Dialect::Postgres => {
                sql.push(" = COALESCE((SELECT jsonb_agg(e) FROM jsonb_array_elements(")
                    .column(rc.name(), &field.name)
                    .push(") AS e WHERE e <> to_jsonb(")
                    .bind(SqlValue::Text(id.to_owned()))
                    .push(")), '[]'::jsonb)");
            }
        }
    }
    sql.push(", \"version\" = \"version\" + 1, \"updated\" = ")
        .bind(SqlValue::Text(now.to_owned()))
        .push(" WHERE ");
    refers_to(&mut sql, rc, field, id);
    sql
}

/// The relation targets a record names, per field: (field, target collection, ids).
pub fn relation_targets(coll: &Collection, record: &Record) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    if coll.is_document() {
        return out;
    }
    for f in coll.fields() {
        if f.field_type != FieldType::Relation {
            continue;
        }
        let Some(target) = &f.collection else {
            continue;
        };
        let ids: BTreeSet<String> = match record.data.get(&f.name) {
            Some(Value::String(s)) => std::iter::once(s.clone()).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => BTreeSet::new(),
        };
        if !ids.is_empty() {
            out.push((f.name.clone(), target.clone(), ids.into_iter().collect()));
        }
    }
    out
}

/// The field errors of a unique index violated over `fields`.
pub fn unique_violation(fields: &[String]) -> FieldErrors {
    let mut errors = FieldErrors::new();
    for f in fields {
        let message = if fields.len() > 1 {
            format!(
                "another record has the same values of {}",
                fields.join(", ")
            )
        } else {
            "another record has this value".to_owned()
        };
        push_field_error(&mut errors, f, "unique", message);
    }
    errors
}

/// The field error for a relation whose target is missing.
pub fn missing_target(field: &str, target: &str) -> FieldErrors {
    let mut errors = FieldErrors::new();
    push_field_error(
        &mut errors,
        field,
        "relation_not_found",
        format!("no record with that id in '{target}'"),
    );
    errors
}
