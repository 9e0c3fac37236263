//! The PostgreSQL store: the same [`Store`] as SQLite, over deadpool connection pools
//! (a primary for writes, optional replicas for reads). Statements come from the same
//! builders rendered with `Dialect::Postgres`; this module only runs them.
//!
//! Each write request is one transaction. Relation targets are locked `FOR KEY SHARE`
//! while checked, and a delete locks its row `FOR UPDATE` before checking referrers, so
//! a concurrent insert and delete cannot leave a dangling relation. Migrations run
//! under a transaction-scoped advisory lock, so instances starting together apply each
//! one exactly once. Sessions carry `lock_timeout` and `statement_timeout`: a would-be
//! deadlock or a stuck statement becomes a 503, never a hang. Pool exhaustion waits up
//! to the acquire timeout, then 503.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use serde_json::{Map, Number, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{NoTls, Row};

use crate::config::PoolConfig;
use crate::migrations::{AppliedMigration, Migration};
use crate::schema::Collection;
use crate::schema::kinds::Storage;
use crate::store::engine;
use crate::store::failure::Failure;
use crate::store::write::{WriteError, delete_reaches_others};
use crate::store::{
    Dialect, EventMarks, IdempotencyClaim, Record, Sql, SqlValue, Store, StoreError,
    StoredCollection, StoredResponse, WriteMeta, WriteOp, WriteOutcome,
};

/// Serialises schema changes across instances (an arbitrary, fixed key).
const MIGRATION_LOCK: i64 = 0x6c69_6e74_656c;

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // Every typed value is cast in the SQL text (`$1::int8`), so the type asked for
        // is the value's own; null goes to whatever column it fills.
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Bool(b) => b.to_sql(ty, out),
            SqlValue::Int(i) => i.to_sql(ty, out),
            SqlValue::Float(f) => f.to_sql(ty, out),
            SqlValue::Text(s) | SqlValue::Timestamp(s) => s.as_str().to_sql(ty, out),
            SqlValue::Bytes(b) => b.as_slice().to_sql(ty, out),
            SqlValue::Json(s) => {
                if *ty == Type::JSONB {
                    out.extend_from_slice(&[1]);
                }
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// The channel on which instances tell each other what they changed.
const CHANGES_CHANNEL: &str = "lintel_changes";
/// NOTIFY payloads must stay under 8000 bytes; past this, "everything changed".
const MAX_PAYLOAD: usize = 7_000;

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    primary: Pool,
    replicas: Vec<Pool>,
    next_replica: AtomicUsize,
    /// How to open the dedicated LISTEN connection.
    listen_config: tokio_postgres::Config,
    /// This process, so it can ignore its own change notices.
    instance: String,
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The server's metrics registry.
    metrics: crate::telemetry::Metrics,
    /// Woken after a commit that appended events.
    appended: Arc<tokio::sync::Notify>,
}

/// The change notice payload: the sender, then one line per change
/// (`r\t<collection>\t<id>`, `c` for the catalog, `*` for everything).
fn change_payload(instance: &str, lines: &[String]) -> String {
    let mut payload = format!("{instance}\n{}", lines.join("\n"));
    if payload.len() > MAX_PAYLOAD {
        payload = format!("{instance}\n*");
    }
    payload
}

fn parse_payload(instance: &str, payload: &str) -> Vec<crate::store::ChangeNotice> {
    use crate::store::ChangeNotice;
    let mut lines = payload.lines();
    if lines.next() == Some(instance) {
        return Vec::new();
    }
    lines
        .map(|l| {
            let mut parts = l.split('\t');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("r"), Some(c), Some(id)) => ChangeNotice::Record {
                    collection: c.to_owned(),
                    id: id.to_owned(),
                },
                (Some("c"), None, None) => ChangeNotice::Catalog,
                (Some("j"), None, None) => ChangeNotice::Jobs,
                _ => ChangeNotice::All,
            }
        })
        .collect()
}

/// Holds a LISTEN connection open and forwards notices; on any loss it says so and
/// reconnects with backoff. Ends when nobody receives any more.
async fn listen_loop(
    cfg: tokio_postgres::Config,
    instance: String,
    tx: tokio::sync::mpsc::Sender<crate::store::ChangeNotice>,
) {
    use crate::store::ChangeNotice;
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Ok((client, mut conn)) = cfg.connect(NoTls).await {
            let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                while let Some(Ok(msg)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    if let tokio_postgres::AsyncMessage::Notification(n) = msg
                        && ntx.send(n.payload().to_owned()).is_err()
                    {
                        break;
                    }
                }
            });
            if client
                .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
                .await
                .is_ok()
            {
                backoff = Duration::from_millis(100);
                if tx.send(ChangeNotice::Listening).await.is_err() {
                    driver.abort();
                    return;
                }
                // A heartbeat notices a connection that died without an error
                // (a half-open socket would otherwise look like a quiet feed).
                let mut heartbeat = tokio::time::interval(Duration::from_secs(15));
                heartbeat.tick().await;
                loop {
                    tokio::select! {
                        payload = nrx.recv() => {
                            let Some(payload) = payload else { break };
                            for notice in parse_payload(&instance, &payload) {
                                if tx.send(notice).await.is_err() {
                                    driver.abort();
                                    return;
                                }
                            }
                        }
                        _ = heartbeat.tick() => {
                            let alive = tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1")).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                tracing::warn!("the PostgreSQL change feed was lost; reconnecting");
            }
            driver.abort();
            if tx.send(ChangeNotice::Lost).await.is_err() {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn build_pool(url: &str, cfg: &PoolConfig, role: &'static str) -> Result<Pool, StoreError> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Internal(format!("invalid database URL ({role}): {e}")))?;
    pg.options(format!(
        "-c lock_timeout={} -c statement_timeout={}",
        cfg.lock_timeout_ms, cfg.statement_timeout_ms
    ));
    pg.connect_timeout(Duration::from_millis(cfg.acquire_timeout_ms.max(1)));
    pg.application_name("lintel");
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let idle = Duration::from_secs(cfg.idle_timeout_secs);
    let lifetime = Duration::from_secs(cfg.max_lifetime_secs);
    Pool::builder(manager)
        .max_size(cfg.max_size.max(1))
        .wait_timeout(Some(Duration::from_millis(cfg.acquire_timeout_ms)))
        .create_timeout(Some(Duration::from_millis(cfg.acquire_timeout_ms.max(1))))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(Runtime::Tokio1)
        .pre_recycle(deadpool_postgres::Hook::sync_fn(move |_, metrics| {
            if metrics.age() > lifetime || metrics.last_used() > idle {
                return Err(deadpool_postgres::HookError::message("connection expired"));
            }
            Ok(())
        }))
        .build()
        .map_err(|e| StoreError::Internal(format!("building the {role} pool: {e}")))
}

fn map_pg(e: &tokio_postgres::Error, coll: Option<&Collection>) -> StoreError {
    classify(e).into_store_error(coll)
}

/// Sorts a PostgreSQL error into the drivers' shared vocabulary (see [`Failure`]).
fn classify(e: &tokio_postgres::Error) -> Failure {
    let Some(code) = e.code() else {
        // No SQL state: the connection is gone or could not be made.
        return Failure::Unavailable(format!("database unreachable: {e}"));
    };
    if *code == SqlState::UNIQUE_VIOLATION {
        return Failure::Unique {
            index: e
                .as_db_error()
                .and_then(|d| d.constraint())
                .map(str::to_owned),
            columns: Vec::new(),
        };
    }
    if *code == SqlState::CHECK_VIOLATION
        || *code == SqlState::NOT_NULL_VIOLATION
        || code.code().starts_with("22")
    {
        // A value the column cannot hold (a constraint, out of range, bad encoding).
        return Failure::BadValue;
    }
    if *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::TOO_MANY_CONNECTIONS
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || code.code().starts_with("08")
    {
        // Includes a read-only server (failover in progress) and a broken connection.
        return Failure::Unavailable(format!("{e}"));
    }
    if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_COLUMN {
        return Failure::MissingSchema(format!("{e}"));
    }
    Failure::Other(format!("{e}"))
}

fn params(sql: &Sql) -> Vec<&(dyn ToSql + Sync)> {
    sql.params
        .iter()
        .map(|p| p as &(dyn ToSql + Sync))
        .collect()
}

async fn query<C: GenericClient>(
    c: &C,
    sql: &Sql,
    coll: Option<&Collection>,
) -> Result<Vec<Row>, StoreError> {
    let stmt = c
        .prepare_cached(&sql.text)
        .await
        .map_err(|e| map_pg(&e, coll))?;
    c.query(&stmt, &params(sql))
        .await
        .map_err(|e| map_pg(&e, coll))
}

async fn execute<C: GenericClient>(
    c: &C,
    sql: &Sql,
    coll: Option<&Collection>,
) -> Result<u64, StoreError> {
    let stmt = c
        .prepare_cached(&sql.text)
        .await
        .map_err(|e| map_pg(&e, coll))?;
    c.execute(&stmt, &params(sql))
        .await
        .map_err(|e| map_pg(&e, coll))
}

async fn query_i64<C: GenericClient>(c: &C, sql: &Sql) -> Result<i64, StoreError> {
    let rows = query(c, sql, None).await?;
    rows.first()
        .and_then(|r| r.try_get::<_, i64>(0).ok())
        .ok_or_else(|| StoreError::Internal("a count returned no row".into()))
}

fn decode_record(coll: &Collection, row: &Row) -> Result<Record, StoreError> {
    let bad = |e: tokio_postgres::Error| StoreError::Internal(format!("decoding a record: {e}"));
    let mut data = Map::new();
    if coll.is_document() {
        if let Some(Value::Object(map)) = row.try_get::<_, Option<Value>>(4).map_err(bad)? {
            data = map;
        }
    } else {
        for (i, f) in coll.fields().iter().enumerate() {
            let idx = 4 + i;
            let v = match f.field_type.storage(f.multiple) {
                Storage::Json => row
                    .try_get::<_, Option<Value>>(idx)
                    .map_err(bad)?
                    .unwrap_or(Value::Null),
                Storage::Bool => row
                    .try_get::<_, Option<bool>>(idx)
                    .map_err(bad)?
                    .map_or(Value::Null, Value::Bool),
                Storage::Integer => row
                    .try_get::<_, Option<i64>>(idx)
                    .map_err(bad)?
                    .map_or(Value::Null, Value::from),
                Storage::Real => row
                    .try_get::<_, Option<f64>>(idx)
                    .map_err(bad)?
                    .and_then(Number::from_f64)
                    .map_or(Value::Null, Value::Number),
                Storage::Text | Storage::Timestamp => row
                    .try_get::<_, Option<String>>(idx)
                    .map_err(bad)?
                    .map_or(Value::Null, Value::String),
            };
            data.insert(f.name.clone(), v);
        }
    }
    // A search adds its relevance after the record's columns.
    let columns = 4 + if coll.is_document() {
        1
    } else {
        coll.fields().len()
    };
    if row.len() > columns
        && let Some(n) = row
            .try_get::<_, Option<f64>>(columns)
            .map_err(bad)?
            .and_then(Number::from_f64)
    {
        data.insert(crate::schema::search::SCORE.into(), Value::Number(n));
    }
    Ok(Record {
        id: row.try_get(0).map_err(bad)?,
        created: row.try_get(1).map_err(bad)?,
        updated: row.try_get(2).map_err(bad)?,
        version: row.try_get(3).map_err(bad)?,
        data,
    })
}

impl PgStore {
    /// Connects, opens the pools and brings Lintel's own tables up to date.
    pub async fn open(
        url: &str,
        replica_urls: &str,
        cfg: &PoolConfig,
        metrics: crate::telemetry::Metrics,
    ) -> Result<Self, StoreError> {
        let primary = build_pool(url, cfg, "primary")?;
        let mut replicas = Vec::new();
        for r in replica_urls
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            replicas.push(build_pool(r, cfg, "replica")?);
        }
        let mut listen_config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Internal(format!("invalid database URL: {e}")))?;
        listen_config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5));
        let store = Self {
            primary,
            replicas,
            next_replica: AtomicUsize::new(0),
            listen_config,
            instance: crate::ids::record_id(),
            listener: std::sync::Mutex::new(None),
            metrics,
            appended: Arc::new(tokio::sync::Notify::new()),
        };
        store.run_system_migrations().await?;
        // Warm the pool to its minimum so the first requests do not pay for connecting.
        let mut warm = Vec::new();
        for _ in 0..cfg.min_idle.min(cfg.max_size) {
            if let Ok(c) = store.primary.get().await {
                warm.push(c);
            }
        }
        drop(warm);
        Ok(store)
    }

    async fn get(&self, pool: &Pool, role: &'static str) -> Result<Object, StoreError> {
        let started = Instant::now();
        let result = pool.get().await;
        self.metrics.scoped(|| {
            metrics::histogram!("lintel_db_pool_acquire_seconds", "role" => role)
                .record(started.elapsed().as_secs_f64());
            let status = pool.status();
            metrics::gauge!("lintel_db_pool_size", "role" => role).set(status.size as f64);
            metrics::gauge!("lintel_db_pool_available", "role" => role)
                .set(status.available as f64);
            metrics::gauge!("lintel_db_pool_in_use", "role" => role)
                .set(status.size.saturating_sub(status.available) as f64);
            metrics::gauge!("lintel_db_pool_waiting", "role" => role).set(status.waiting as f64);
        });
        result.map_err(|e| match e {
            deadpool_postgres::PoolError::Timeout(_) => {
                self.metrics.scoped(|| {
                    metrics::counter!("lintel_db_pool_timeouts_total", "role" => role).increment(1)
                });
                StoreError::Unavailable("no database connection became free in time".into())
            }
            other => StoreError::Unavailable(format!("database unreachable: {other}")),
        })
    }

    /// A connection to the primary, for writes and for reads that must see them.
    async fn db_write(&self) -> Result<Object, StoreError> {
        self.get(&self.primary, "primary").await
    }

    /// A connection for reads: a replica when configured (round robin), else the primary.
    async fn db_read(&self) -> Result<Object, StoreError> {
        if self.replicas.is_empty() {
            return self.db_write().await;
        }
        let i = self.next_replica.fetch_add(1, Ordering::Relaxed) % self.replicas.len();
        self.get(&self.replicas[i], "replica").await
    }

    async fn run_system_migrations(&self) -> Result<(), StoreError> {
        let mut client = self.db_write().await?;
        let tx = client.transaction().await.map_err(|e| map_pg(&e, None))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| map_pg(&e, None))?;
        engine::run_system_migrations(&Pg(&tx)).await?;
        tx.commit().await.map_err(|e| map_pg(&e, None))
    }
}

/// A string as an SQL literal (standard conforming strings: only `'` is special).
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A transaction on a pooled connection, rolled back if it is dropped unfinished (a
/// cancelled request), so no connection returns to the pool inside a transaction.
struct OpenTransaction {
    client: Option<Object>,
}

impl OpenTransaction {
    async fn begin(client: Object) -> Result<Self, StoreError> {
        // The guard exists before BEGIN is sent: if this future is dropped while BEGIN
        // is in flight, the guard still rolls it back.
        let guard = Self {
            client: Some(client),
        };
        guard
            .client()?
            .batch_execute("BEGIN")
            .await
            .map_err(|e| map_pg(&e, None))?;
        Ok(guard)
    }

    fn client(&self) -> Result<&Object, StoreError> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Internal("transaction used after it ended".into()))
    }

    async fn rollback(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.batch_execute("ROLLBACK").await;
        }
    }

    /// COMMIT succeeded: the transaction is over.
    fn finished(&mut self) {
        self.client = None;
    }
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // Without a runtime the process is exiting and the pool goes with it.
            rt.spawn(async move {
                let _ = c.batch_execute("ROLLBACK").await;
            });
        }
    }
}

/// Locks every record the ops update or delete, in one global order (collection,
/// then id), before any op runs: two transactions touching the same records in
/// different orders then queue instead of deadlocking.
async fn lock_in_order(c: &Object, ops: &[WriteOp]) -> Result<(), StoreError> {
    // Updates take `FOR NO KEY UPDATE`, which does not conflict with the `FOR KEY
    // SHARE` that relation checks take; deletes need `FOR UPDATE`.
    let mut targets: BTreeMap<(&str, &str), std::collections::BTreeSet<&str>> = BTreeMap::new();
    for op in ops {
        match op {
            WriteOp::Update { coll, record, .. } => {
                targets
                    .entry((coll.name(), "NO KEY UPDATE"))
                    .or_default()
                    .insert(&record.id);
            }
            WriteOp::Delete { coll, id, .. } => {
                targets
                    .entry((coll.name(), "UPDATE"))
                    .or_default()
                    .insert(id);
            }
            WriteOp::Insert { .. }
            | WriteOp::System { .. }
            | WriteOp::Query { .. }
            | WriteOp::Event(_) => {}
        }
    }
    for ((coll, mode), ids) in targets {
        let mut sql = Sql::new(Dialect::Postgres);
        sql.push("SELECT COUNT(*) FROM (SELECT 1 FROM ")
            .ident(coll)
            .push(" WHERE \"id\" IN (");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(SqlValue::Text((*id).to_owned()));
        }
        sql.push(") ORDER BY \"id\" FOR ").push(mode).push(") AS t");
        query_i64(c, &sql).await?;
    }
    Ok(())
}

/// Applies ops in order; returns their outcomes and the change lines for the notice.
async fn apply_all(
    c: &Object,
    ops: Vec<WriteOp>,
    meta: &WriteMeta,
) -> Result<(Vec<WriteOutcome>, Vec<String>), WriteError> {
    lock_in_order(c, &ops).await.map_err(WriteError::from)?;
    let mut out = Vec::with_capacity(ops.len());
    let mut lines = Vec::with_capacity(ops.len());
    for (index, op) in ops.into_iter().enumerate() {
        if let Some((coll, id)) = op.target() {
            lines.push(format!("r\t{coll}\t{id}"));
        }
        if op.queues_job() && !lines.iter().any(|l| l == "j") {
            lines.push("j".to_owned());
        }
        if let WriteOp::Delete {
            coll, referrers, ..
        } = &op
            && delete_reaches_others(referrers, coll.name())
        {
            // Other records may change with it (set null, cascade).
            lines.push("*".to_owned());
        }
        out.push(
            engine::apply_op(&Pg(c), op, meta)
                .await
                .map_err(|error| WriteError { index, error })?,
        );
    }
    Ok((out, lines))
}

async fn notify<C: GenericClient>(c: &C, payload: &str) -> Result<(), StoreError> {
    c.execute("SELECT pg_notify($1, $2)", &[&CHANGES_CHANNEL, &payload])
        .await
        .map_err(|e| map_pg(&e, None))?;
    Ok(())
}

/// A connection (or transaction) as the shared algorithms of [`engine`] see it.
struct Pg<'a, C>(&'a C);

impl<C: GenericClient + Sync> engine::Conn for Pg<'_, C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn execute(&self, sql: &Sql, coll: Option<&Collection>) -> Result<u64, StoreError> {
        execute(self.0, sql, coll).await
    }

    async fn rows(&self, sql: &Sql) -> Result<Vec<engine::Row>, StoreError> {
        let rows = query(self.0, sql, None).await?;
        rows.iter().map(typed_row).collect()
    }

    async fn script(&self, text: &str) -> Result<(), StoreError> {
        self.0
            .batch_execute(text)
            .await
            .map_err(|e| map_pg(&e, None))
    }

    async fn records(&self, coll: &Collection, sql: &Sql) -> Result<Vec<Record>, StoreError> {
        let rows = query(self.0, sql, Some(coll)).await?;
        rows.iter().map(|r| decode_record(coll, r)).collect()
    }
}

/// A row as typed cells, by column type.
fn typed_row(row: &Row) -> Result<engine::Row, StoreError> {
    let bad = |e: tokio_postgres::Error| StoreError::Internal(format!("decoding a row: {e}"));
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)
                .map_err(bad)?
                .map(SqlValue::Int)
        } else if *t == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)
                .map_err(bad)?
                .map(|n| SqlValue::Int(n.into()))
        } else if *t == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)
                .map_err(bad)?
                .map(|n| SqlValue::Int(n.into()))
        } else if *t == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)
                .map_err(bad)?
                .map(SqlValue::Bool)
        } else if *t == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i)
                .map_err(bad)?
                .map(SqlValue::Float)
        } else if *t == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)
                .map_err(bad)?
                .map(SqlValue::Bytes)
        } else if *t == Type::JSONB || *t == Type::JSON {
            row.try_get::<_, Option<Value>>(i)
                .map_err(bad)?
                .map(|v| SqlValue::Json(v.to_string()))
        } else {
            row.try_get::<_, Option<String>>(i)
                .map_err(bad)?
                .map(SqlValue::Text)
        };
        out.push(v.unwrap_or(SqlValue::Null));
    }
    Ok(engine::Row(out))
}

#[async_trait]
impl Store for PgStore {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.db_write().await?;
        c.simple_query("SELECT 1")
            .await
            .map_err(|e| map_pg(&e, None))?;
        Ok(())
    }

    async fn query_records(
        &self,
        coll: Arc<Collection>,
        sql: Sql,
    ) -> Result<Vec<Record>, StoreError> {
        let c = self.db_read().await?;
        let rows = query(&c, &sql, Some(&coll)).await?;
        rows.iter().map(|r| decode_record(&coll, r)).collect()
    }

    async fn query_count(&self, sql: Sql) -> Result<i64, StoreError> {
        let c = self.db_read().await?;
        query_i64(&c, &sql).await
    }

    async fn query_rows(&self, sql: Sql) -> Result<Vec<Vec<Value>>, StoreError> {
        let c = self.db_write().await?;
        let rows = query(&c, &sql, None).await?;
        rows.iter()
            .map(|r| typed_row(r).map(engine::Row::into_json))
            .collect()
    }

    async fn write_as(
        &self,
        ops: Vec<WriteOp>,
        meta: WriteMeta,
    ) -> Result<Vec<WriteOutcome>, WriteError> {
        let appends = ops.iter().any(WriteOp::appends_event);
        let mut open = OpenTransaction::begin(self.db_write().await?).await?;
        let result = match open.client() {
            Ok(c) => apply_all(c, ops, &meta).await,
            Err(e) => Err(e.into()),
        };
        let (out, lines) = match result {
            Ok(v) => v,
            Err(e) => {
                open.rollback().await;
                return Err(e);
            }
        };
        // The change notice is delivered to the other instances when (and only if) the
        // transaction commits. It travels with COMMIT in one simple-protocol round
        // trip; the payload holds only validated names and ids, quoted as a literal.
        let payload = change_payload(&self.instance, &lines);
        let batch = format!(
            "SELECT pg_notify('{CHANGES_CHANNEL}', {}); COMMIT",
            sql_literal(&payload)
        );
        let committed = match open.client() {
            Ok(c) => c.batch_execute(&batch).await,
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = committed {
            // If the notice failed, COMMIT did not run: end the transaction here.
            open.rollback().await;
            return Err(WriteError::from(map_pg(&e, None)));
        }
        open.finished();
        self.metrics
            .scoped(|| metrics::counter!("lintel_store_commits_total").increment(1));
        if appends {
            self.appended.notify_one();
        }
        Ok(out)
    }

    async fn sequence_events(&self) -> Result<EventMarks, StoreError> {
        let mut client = self.db_write().await?;
        if !engine::events_pending(&Pg(&client)).await? {
            return engine::event_marks(&Pg(&client)).await;
        }
        let tx = client.transaction().await.map_err(|e| map_pg(&e, None))?;
        let marks = engine::sequence_events(&Pg(&tx)).await?;
        tx.commit().await.map_err(|e| map_pg(&e, None))?;
        Ok(marks)
    }

    fn events_appended(&self) -> Arc<tokio::sync::Notify> {
        self.appended.clone()
    }

    async fn load_catalog(&self) -> Result<(Vec<StoredCollection>, i64), StoreError> {
        let mut client = self.db_write().await?;
        // One snapshot for the catalog and its generation.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| map_pg(&e, None))?;
        let result = engine::read_catalog(&Pg(&tx)).await;
        let _ = tx.commit().await;
        result
    }

    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        let c = self.db_write().await?;
        engine::applied_migrations(&Pg(&c)).await
    }

    async fn apply_migration(
        &self,
        migration: Migration,
        checksum: String,
        meta: WriteMeta,
    ) -> Result<bool, StoreError> {
        let mut client = self.db_write().await?;
        let tx = client.transaction().await.map_err(|e| map_pg(&e, None))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| map_pg(&e, None))?;
        if !engine::apply_migration(&Pg(&tx), &migration, &checksum, &meta).await? {
            return Ok(false);
        }
        notify(&tx, &change_payload(&self.instance, &["c".to_owned()])).await?;
        tx.commit().await.map_err(|e| map_pg(&e, None))?;
        self.appended.notify_one();
        Ok(true)
    }

    async fn revert_migration(
        &self,
        migration: Migration,
        meta: WriteMeta,
    ) -> Result<(), StoreError> {
        let mut client = self.db_write().await?;
        let tx = client.transaction().await.map_err(|e| map_pg(&e, None))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| map_pg(&e, None))?;
        engine::revert_migration(&Pg(&tx), &migration, &meta).await?;
        notify(&tx, &change_payload(&self.instance, &["c".to_owned()])).await?;
        tx.commit().await.map_err(|e| map_pg(&e, None))?;
        self.appended.notify_one();
        Ok(())
    }

    async fn idempotency_claim(
        &self,
        scope: String,
        key: String,
        fingerprint: String,
        now_ms: i64,
        ttl_ms: i64,
        lock_ms: i64,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut client = self.db_write().await?;
        let tx = client.transaction().await.map_err(|e| map_pg(&e, None))?;
        let claim = engine::idempotency_claim(
            &Pg(&tx),
            &scope,
            &key,
            &fingerprint,
            now_ms,
            ttl_ms,
            lock_ms,
        )
        .await?;
        tx.commit().await.map_err(|e| map_pg(&e, None))?;
        Ok(claim)
    }

    async fn idempotency_complete(
        &self,
        scope: String,
        key: String,
        token: i64,
        response: StoredResponse,
    ) -> Result<(), StoreError> {
        let c = self.db_write().await?;
        engine::idempotency_complete(&Pg(&c), &scope, &key, token, response).await
    }

    async fn idempotency_release(
        &self,
        scope: String,
        key: String,
        token: i64,
    ) -> Result<(), StoreError> {
        let c = self.db_write().await?;
        engine::idempotency_release(&Pg(&c), &scope, &key, token).await
    }

    fn watch_changes(&self) -> Option<tokio::sync::mpsc::Receiver<crate::store::ChangeNotice>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let task = tokio::spawn(listen_loop(
            self.listen_config.clone(),
            self.instance.clone(),
            tx,
        ));
        if let Ok(mut slot) = self.listener.lock()
            && let Some(old) = slot.replace(task)
        {
            old.abort();
        }
        Some(rx)
    }

    async fn close(&self) {
        if let Ok(mut slot) = self.listener.lock()
            && let Some(task) = slot.take()
        {
            task.abort();
        }
        self.primary.close();
        for r in &self.replicas {
            r.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::failure::{DRIVER_CASES, DRIVER_CASES_SETUP};

    /// The same statements as the SQLite driver's test, on a real server: run by
    /// `.ci/run` with `LINTEL_TEST_DATABASE_URL` set (`cargo test -p lintel --lib --
    /// --ignored postgres`); selected without it, it fails.
    #[tokio::test]
    #[ignore = "needs PostgreSQL: LINTEL_TEST_DATABASE_URL"]
    async fn postgres_errors_sort_into_the_shared_kinds() {
        let url = std::env::var("LINTEL_TEST_DATABASE_URL")
            .expect("LINTEL_TEST_DATABASE_URL must name a PostgreSQL server for this test");
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let schema = format!("lintel_failure_{}", std::process::id());
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path TO {schema}"
            ))
            .await
            .unwrap();
        client.batch_execute(DRIVER_CASES_SETUP).await.unwrap();
        for (statement, kind) in DRIVER_CASES {
            let err = client.batch_execute(statement).await.unwrap_err();
            assert_eq!(classify(&err).kind(), *kind, "{statement}: {err}");
        }
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    }

    use crate::store::ChangeNotice;

    #[test]
    fn change_notices_round_trip_and_skip_their_sender() {
        let lines = vec!["r\tposts\tabc".to_owned(), "c".to_owned(), "j".to_owned()];
        let payload = change_payload("me", &lines);
        assert!(
            parse_payload("me", &payload).is_empty(),
            "own notices are ignored"
        );
        assert_eq!(
            parse_payload("other", &payload),
            vec![
                ChangeNotice::Record {
                    collection: "posts".into(),
                    id: "abc".into()
                },
                ChangeNotice::Catalog,
                ChangeNotice::Jobs
            ]
        );
        let many: Vec<String> = (0..1000).map(|i| format!("r\tposts\t{i:016}")).collect();
        let big = change_payload("me", &many);
        assert!(big.len() < 8000);
        assert_eq!(parse_payload("other", &big), vec![ChangeNotice::All]);
    }
}
