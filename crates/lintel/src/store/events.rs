//! The event log (the transactional outbox) as the store keeps it: the table, the
//! statement that appends an event inside a write's transaction, the statements that
//! read, sequence and purge it.
//!
//! `seq` is the order readers see, and it must never let a reader skip an event that
//! commits later with a lower number. SQLite has one writer, so the row id assigned
//! inside the transaction is already in commit order. PostgreSQL commits concurrent
//! transactions in any order, so an event is inserted without a `seq` and numbered
//! only after it committed, by [`sequence_sql`] under a lock on the counter row:
//! numbers are handed out by one transaction at a time, to committed rows only.

use serde_json::Value;

use crate::schema::Collection;
use crate::store::Record;
use crate::store::sql::{Dialect, Sql, SqlValue};

/// Who made a write and for which request: the `actor` and `requestId` of its events.
#[derive(Debug, Clone, Default)]
pub struct WriteMeta {
    /// `{"type": "user", "id": ..., "collection": ...}` and the like; `None` for the
    /// system itself.
    pub actor: Option<Value>,
    pub request_id: Option<String>,
    /// The time of the write (milliseconds since the epoch) from the server's clock;
    /// `None` reads the system clock.
    pub time_ms: Option<i64>,
}

impl WriteMeta {
    /// A write on behalf of `actor`, for the request this task is handling.
    pub fn by(actor: Option<Value>) -> Self {
        Self {
            actor,
            request_id: crate::telemetry::CURRENT_REQUEST_ID
                .try_with(Clone::clone)
                .ok(),
            time_ms: None,
        }
    }

    /// The same write stamped with the server clock's time.
    pub fn at(mut self, time_ms: i64) -> Self {
        self.time_ms = Some(time_ms);
        self
    }
}

/// The actor of a write an account makes for itself outside the records API (a
/// confirmed email change, a sign-in that creates the account).
pub fn account_actor(collection: &str, id: &str) -> Value {
    serde_json::json!({ "type": "user", "id": id, "collection": collection })
}

/// An event a caller appends itself (auth events); record and collection events are
/// appended by the store as it applies the change.
#[derive(Debug, Clone)]
pub struct EventDraft {
    pub kind: String,
    pub collection: Option<String>,
    pub record_id: Option<String>,
    pub record: Option<Value>,
    pub previous: Option<Value>,
}

/// Lintel's event tables (system migration 8).
pub const SQLITE_TABLES: &str = "CREATE TABLE _lintel_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL,
            type TEXT NOT NULL,
            time TEXT NOT NULL,
            at_ms BIGINT NOT NULL,
            collection TEXT,
            record_id TEXT,
            record TEXT,
            previous TEXT,
            actor TEXT,
            request_id TEXT
        );
        CREATE TABLE _lintel_event_meta (
            id INTEGER PRIMARY KEY NOT NULL,
            last BIGINT NOT NULL,
            purged BIGINT NOT NULL
        );
        INSERT INTO _lintel_event_meta (id, last, purged) VALUES (1, 0, 0);";

/// The PostgreSQL form: `pos` orders inserts, `seq` is given after commit.
pub const POSTGRES_TABLES: &str = "CREATE TABLE _lintel_events (
            pos BIGSERIAL PRIMARY KEY,
            seq BIGINT UNIQUE,
            id TEXT NOT NULL,
            type TEXT NOT NULL,
            time TEXT NOT NULL,
            at_ms BIGINT NOT NULL,
            collection TEXT,
            record_id TEXT,
            record TEXT,
            previous TEXT,
            actor TEXT,
            request_id TEXT
        );
        CREATE INDEX _lintel_events_pending ON _lintel_events (pos) WHERE seq IS NULL;
        CREATE TABLE _lintel_event_meta (
            id INTEGER PRIMARY KEY NOT NULL,
            last BIGINT NOT NULL,
            purged BIGINT NOT NULL
        );
        INSERT INTO _lintel_event_meta (id, last, purged) VALUES (1, 0, 0);";

/// A record as events carry it, serialised straight to text without copying a value
/// (this runs on the writer, inside the write's transaction).
pub fn record_text(coll: &Collection, record: &Record) -> String {
    struct View<'a>(&'a Collection, &'a Record);
    impl serde::Serialize for View<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let (coll, r) = (self.0, self.1);
            let hidden = coll.has_hidden();
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("id", &r.id)?;
            m.serialize_entry("created", &r.created)?;
            m.serialize_entry("updated", &r.updated)?;
            m.serialize_entry("version", &r.version)?;
            for (k, v) in &r.data {
                if !(hidden && coll.is_hidden(k)) {
                    m.serialize_entry(k, v)?;
                }
            }
            m.end()
        }
    }
    serde_json::to_string(&View(coll, record)).unwrap_or_default()
}

fn opt_text(v: Option<String>) -> SqlValue {
    v.map_or(SqlValue::Null, SqlValue::Text)
}

fn opt_json(v: Option<&Value>) -> SqlValue {
    v.map_or(SqlValue::Null, |v| SqlValue::Text(v.to_string()))
}

/// `INSERT` of one event about a record, its JSON written straight from the records.
pub fn record_insert_sql(
    d: Dialect,
    kind: &str,
    coll: &Collection,
    id: &str,
    record: Option<&Record>,
    previous: Option<&Record>,
    meta: &WriteMeta,
) -> Sql {
    let at_ms = meta.time_ms.unwrap_or_else(crate::clock::now_ms);
    let text_of =
        |r: Option<&Record>| r.map_or(SqlValue::Null, |r| SqlValue::Text(record_text(coll, r)));
    let mut sql = Sql::new(d);
    sql.push(
        "INSERT INTO _lintel_events (id, type, time, at_ms, collection, record_id, record, previous, actor, request_id) VALUES (",
    );
    sql.bind_all([
        SqlValue::Text(crate::ids::request_id()),
        SqlValue::Text(kind.to_owned()),
        SqlValue::Text(crate::clock::format_ms(at_ms)),
        SqlValue::Int(at_ms),
        SqlValue::Text(coll.name().to_owned()),
        SqlValue::Text(id.to_owned()),
        text_of(record),
        text_of(previous),
        opt_json(meta.actor.as_ref()),
        opt_text(meta.request_id.clone()),
    ]);
    sql.push(")");
    sql
}

/// `INSERT` of one event (both dialects: the `seq` comes from the table).
pub fn insert_sql(d: Dialect, draft: &EventDraft, meta: &WriteMeta) -> Sql {
    let at_ms = meta.time_ms.unwrap_or_else(crate::clock::now_ms);
    let mut sql = Sql::new(d);
    sql.push(
        "INSERT INTO _lintel_events (id, type, time, at_ms, collection, record_id, record, previous, actor, request_id) VALUES (",
    );
    sql.bind_all([
        SqlValue::Text(crate::ids::request_id()),
        SqlValue::Text(draft.kind.clone()),
        SqlValue::Text(crate::clock::format_ms(at_ms)),
        SqlValue::Int(at_ms),
        opt_text(draft.collection.clone()),
        opt_text(draft.record_id.clone()),
        opt_json(draft.record.as_ref()),
        opt_json(draft.previous.as_ref()),
        opt_json(meta.actor.as_ref()),
        opt_text(meta.request_id.clone()),
    ]);
    sql.push(")");
    sql
}

/// PostgreSQL only, inside a transaction that holds the counter row
/// ([`lock_counter_sql`]): numbers committed events that have no `seq` yet, in insert
/// order, after `last`.
pub fn sequence_sql(last: i64, max: i64) -> Sql {
    let mut sql = Sql::new(Dialect::Postgres);
    sql.push(
        "WITH p AS (SELECT pos, row_number() OVER (ORDER BY pos) AS n FROM _lintel_events
           WHERE seq IS NULL ORDER BY pos LIMIT ",
    );
    sql.bind(SqlValue::Int(max));
    sql.push(") UPDATE _lintel_events SET seq = ");
    sql.bind(SqlValue::Int(last));
    sql.push(" + p.n FROM p WHERE _lintel_events.pos = p.pos");
    sql
}

/// Locks the counter row (PostgreSQL) and reads it.
pub const LOCK_COUNTER: &str = "SELECT last FROM _lintel_event_meta WHERE id = 1 FOR UPDATE";

/// Whether any committed event waits for its number (PostgreSQL).
pub const ANY_PENDING: &str =
    "SELECT COUNT(*) FROM (SELECT 1 FROM _lintel_events WHERE seq IS NULL LIMIT 1) AS t";

/// The highest `seq` given and the highest purged, per dialect.
pub fn marks_sql(d: Dialect) -> Sql {
    let mut sql = Sql::new(d);
    match d {
        Dialect::Sqlite => sql.push(
            "SELECT max(COALESCE((SELECT max(seq) FROM _lintel_events), 0), last, purged), purged
             FROM _lintel_event_meta WHERE id = 1",
        ),
        Dialect::Postgres => sql.push("SELECT last, purged FROM _lintel_event_meta WHERE id = 1"),
    };
    sql
}

/// What a reader asks for.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub after: i64,
    pub types: Vec<String>,
    pub collection: Option<String>,
    pub limit: i64,
}

/// The columns [`row_json`] reads, in order.
pub const COLUMNS: &str =
    "seq, id, type, time, collection, record_id, record, previous, actor, request_id";

/// Events after a position, in `seq` order.
pub fn list_sql(d: Dialect, q: &EventQuery) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("SELECT ")
        .push(COLUMNS)
        .push(" FROM _lintel_events WHERE seq > ");
    sql.bind(SqlValue::Int(q.after));
    if !q.types.is_empty() {
        sql.push(" AND type IN (");
        for (i, t) in q.types.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(SqlValue::Text(t.clone()));
        }
        sql.push(")");
    }
    if let Some(c) = &q.collection {
        sql.push(" AND collection = ")
            .bind(SqlValue::Text(c.clone()));
    }
    sql.push(" ORDER BY seq LIMIT ")
        .bind(SqlValue::Int(q.limit));
    sql
}

/// One row of [`list_sql`] as the event clients see.
pub fn row_json(row: &[Value]) -> Value {
    let at = |i: usize| row.get(i).cloned().unwrap_or(Value::Null);
    let parsed = |i: usize| match row.get(i) {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    serde_json::json!({
        "seq": at(0),
        "id": at(1),
        "type": at(2),
        "time": at(3),
        "collection": at(4),
        "recordId": at(5),
        "record": parsed(6),
        "previous": parsed(7),
        "actor": parsed(8),
        "requestId": at(9),
    })
}

/// Moves the purge mark past the oldest events older than `cutoff_ms` (at most
/// `batch` of them, looked for from the oldest by `seq`).
pub fn purge_mark_sql(d: Dialect, cutoff_ms: i64, batch: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push(
        "UPDATE _lintel_event_meta SET purged = COALESCE((SELECT max(seq) FROM (SELECT seq, at_ms FROM _lintel_events
           WHERE seq > (SELECT purged FROM _lintel_event_meta WHERE id = 1) ORDER BY seq LIMIT ",
    );
    sql.bind(SqlValue::Int(batch));
    sql.push(") AS t WHERE at_ms < ");
    sql.bind(SqlValue::Int(cutoff_ms));
    sql.push("), purged) WHERE id = 1");
    sql
}

/// Deletes the events at or below the purge mark (at most `batch`).
pub fn purge_sql(d: Dialect, batch: i64) -> Sql {
    let mut sql = Sql::new(d);
    sql.push(
        "DELETE FROM _lintel_events WHERE seq IN (SELECT seq FROM _lintel_events
           WHERE seq <= (SELECT purged FROM _lintel_event_meta WHERE id = 1) ORDER BY seq LIMIT ",
    );
    sql.bind(SqlValue::Int(batch));
    sql.push(")");
    sql
}
