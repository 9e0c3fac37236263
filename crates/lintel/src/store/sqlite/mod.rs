//! The embedded store: SQLite in WAL mode behind [`executor::Executor`] (one writer
//! thread with group commit, read-only readers). Lintel's own tables are created by the
//! embedded, versioned, checksummed migrations in [`SYSTEM_MIGRATIONS`].

mod convert;
mod executor;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::config::StoreConfig;
use crate::migrations::{AppliedMigration, Migration, checksum};
use crate::schema::OnDelete;
use crate::schema::{Collection, CollectionSpec};
use crate::store::ddl::{self, CatalogChange};
use crate::store::write::{
    DeleteStep, DeleteSteps, RelationGraph, WriteError, count_ids_sql, delete_sql, exists_sql,
    insert_sql, missing_target, referenced, referrer_sql, referring_ids_sql, relation_targets,
    unlink_sql, update_sql,
};
use crate::store::{
    Dialect, IdempotencyClaim, Record, Sql, Store, StoreError, StoredCollection, StoredResponse,
    WriteOp, WriteOutcome,
};
use convert::{execute, map_error, query_i64, query_records, query_rows};
use executor::Executor;

/// Lintel's own tables, in order. Never edit an entry once released: add a new one.
pub const SYSTEM_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "catalog",
        "CREATE TABLE _lintel_collections (
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
        );",
    ),
    (
        2,
        "idempotency",
        "CREATE TABLE _lintel_idempotency (
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
    ),
    (3, "auth", crate::store::AUTH_TABLES),
    (4, "secrets", crate::store::SECRETS_TABLE),
    (5, "oauth_state_browser", crate::store::OAUTH_STATE_BROWSER),
    (6, "expiry_indexes", crate::store::EXPIRY_INDEXES),
];

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    exec: Executor,
}

impl SqliteStore {
    /// Opens (or creates) the database and brings Lintel's own tables up to date.
    /// Blocking: call it from a blocking context.
    pub fn open(
        path: &Path,
        cfg: &StoreConfig,
        metrics: crate::telemetry::Metrics,
    ) -> Result<Self, StoreError> {
        private_file(path)?;
        let exec = Executor::open(path, cfg, &metrics, run_system_migrations)?;
        Ok(Self { exec })
    }
}

/// The database file holds every record, session and key digest: it is created
/// readable by its owner only (SQLite gives its `-wal` and `-shm` files the same
/// mode), and an existing one that others can read is reported at start.
fn private_file(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{mode:o}"),
                        "the database file is readable by other users; chmod 600 it"
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| {
                        StoreError::Internal(format!("creating {}: {e}", path.display()))
                    })?;
            }
            Err(e) => {
                return Err(StoreError::Internal(format!(
                    "reading {}: {e}",
                    path.display()
                )));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn run_system_migrations(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(|e| map_error(&e))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS _lintel_system_migrations (
            version INTEGER PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TEXT NOT NULL
        )",
    )
    .map_err(|e| map_error(&e))?;
    for (version, name, sql) in SYSTEM_MIGRATIONS {
        let sum = checksum(sql.as_bytes());
        let recorded: Option<String> = tx
            .query_row(
                "SELECT checksum FROM _lintel_system_migrations WHERE version = ?1",
                params![version],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| map_error(&e))?;
        match recorded {
            Some(r) if r == sum => {}
            Some(_) => {
                return Err(StoreError::Internal(format!(
                    "system migration {version} ({name}) differs from the one applied to this database"
                )));
            }
            None => {
                tx.execute_batch(sql).map_err(|e| map_error(&e))?;
                tx.execute(
                    "INSERT INTO _lintel_system_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
                    params![version, name, sum, crate::clock::now()],
                )
                .map_err(|e| map_error(&e))?;
            }
        }
    }
    tx.commit().map_err(|e| map_error(&e))
}

fn load_specs(conn: &Connection) -> Result<BTreeMap<String, CollectionSpec>, StoreError> {
    let (stored, _) = read_catalog(conn)?;
    Ok(stored
        .into_iter()
        .map(|c| (c.spec.name.clone(), c.spec))
        .collect())
}

/// Runs migration steps and the catalog changes they imply, inside the caller's savepoint.
fn run_steps(conn: &Connection, ops: &[crate::migrations::SchemaOp]) -> Result<(), StoreError> {
    let mut specs = load_specs(conn)?;
    let steps = ddl::plan(Dialect::Sqlite, ops, &mut specs).map_err(StoreError::Schema)?;
    let now = crate::clock::now();
    for step in steps {
        for stmt in &step.statements {
            conn.execute_batch(stmt).map_err(|e| {
                // The driver's text can quote SQL: it goes to the log, not the client.
                tracing::warn!(error = %e, "a schema statement failed");
                StoreError::Schema(
                    "the database refused the schema change (details in the server log)".into(),
                )
            })?;
        }
        match step.catalog {
            CatalogChange::Upsert(spec) => {
                let text = serde_json::to_string(&spec)
                    .map_err(|e| StoreError::Internal(e.to_string()))?;
                conn.execute(
                    "INSERT INTO _lintel_collections (name, spec, created, updated) VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated = excluded.updated",
                    params![spec.name, text, now],
                )
                .map_err(|e| map_error(&e))?;
            }
            CatalogChange::Delete(name) => {
                conn.execute(
                    "DELETE FROM _lintel_collections WHERE name = ?1",
                    params![name],
                )
                .map_err(|e| map_error(&e))?;
            }
            CatalogChange::None => {}
        }
    }
    Ok(())
}

fn read_catalog(conn: &Connection) -> Result<(Vec<StoredCollection>, i64), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, spec, created, updated FROM _lintel_collections ORDER BY name",
        )
        .map_err(|e| map_error(&e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(|e| map_error(&e))?;
    let mut out = Vec::new();
    for row in rows {
        let (name, spec, created, updated) = row.map_err(|e| map_error(&e))?;
        let spec = serde_json::from_str(&spec)
            .map_err(|e| StoreError::Internal(format!("catalog entry {name} is corrupt: {e}")))?;
        out.push(StoredCollection {
            spec,
            created,
            updated,
        });
    }
    let generation = conn
        .query_row("SELECT COUNT(*) FROM _lintel_migrations", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|e| map_error(&e))?;
    Ok((out, generation))
}

fn check_relations(
    conn: &Connection,
    coll: &Collection,
    record: &Record,
) -> Result<(), StoreError> {
    for (field, target, ids) in relation_targets(coll, record) {
        let found = query_i64(conn, &count_ids_sql(Dialect::Sqlite, &target, &ids))?;
        if found != ids.len() as i64 {
            return Err(StoreError::Constraint(missing_target(&field, &target)));
        }
    }
    Ok(())
}

/// Tells a missing record from a stale version after a write changed no row.
fn no_row_changed(conn: &Connection, coll: &Collection, id: &str) -> StoreError {
    match query_i64(conn, &exists_sql(Dialect::Sqlite, coll.name(), id)) {
        Ok(0) => StoreError::NotFound,
        Ok(_) => StoreError::VersionConflict,
        Err(e) => e,
    }
}

/// Applies the `onDelete` policy of every relation that names `coll`/`id` before the
/// record is deleted (the steps come from [`DeleteSteps`], shared with PostgreSQL):
/// restrict refuses, setNull unlinks, cascade deletes the referring records after
/// their own referrers.
fn follow_referrers(
    conn: &Connection,
    graph: &RelationGraph,
    coll: &str,
    id: &str,
    now: &str,
) -> Result<(), StoreError> {
    let d = Dialect::Sqlite;
    let mut steps = DeleteSteps::new(coll, id);
    while let Some(step) = steps.next() {
        match step {
            DeleteStep::Delete(rc, rid) => {
                execute(conn, &delete_sql(d, &rc, &rid, None), Some(&rc))?;
            }
            DeleteStep::Expand(c, rid) => {
                for (rc, field) in graph.get(&c).into_iter().flatten() {
                    match field.delete_policy() {
                        OnDelete::Restrict => {
                            if query_i64(conn, &referrer_sql(d, rc, field, &rid))? > 0 {
                                return Err(referenced(rc, field));
                            }
                        }
                        OnDelete::SetNull => {
                            execute(conn, &unlink_sql(d, rc, field, &rid, now), Some(rc))?;
                        }
                        OnDelete::Cascade => {
                            let sql = referring_ids_sql(d, rc, field, &rid, steps.room());
                            let rows = query_rows(conn, &sql)?;
                            let ids = rows
                                .iter()
                                .filter_map(|r| r.first().and_then(|v| v.as_str()));
                            for child in ids {
                                steps.cascade(rc, child)?;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn apply_op(conn: &Connection, op: WriteOp) -> Result<WriteOutcome, StoreError> {
    match op {
        WriteOp::Insert { coll, record } => {
            check_relations(conn, &coll, &record)?;
            execute(
                conn,
                &insert_sql(Dialect::Sqlite, &coll, &record),
                Some(&coll),
            )?;
            Ok(WriteOutcome::Written(record))
        }
        WriteOp::Update {
            coll,
            record,
            expected_version,
        } => {
            check_relations(conn, &coll, &record)?;
            let n = execute(
                conn,
                &update_sql(Dialect::Sqlite, &coll, &record, expected_version),
                Some(&coll),
            )?;
            if n == 0 {
                return Err(no_row_changed(conn, &coll, &record.id));
            }
            Ok(WriteOutcome::Written(record))
        }
        WriteOp::Delete {
            coll,
            id,
            expected_version,
            referrers,
        } => {
            follow_referrers(conn, &referrers, coll.name(), &id, &crate::clock::now())?;
            let n = execute(
                conn,
                &delete_sql(Dialect::Sqlite, &coll, &id, expected_version),
                Some(&coll),
            )?;
            if n == 0 {
                return Err(no_row_changed(conn, &coll, &id));
            }
            Ok(WriteOutcome::Deleted)
        }
        WriteOp::System { sql, expect } => {
            let n = execute(conn, &sql, None)? as u64;
            if expect.is_some_and(|e| e != n) {
                return Err(StoreError::NotFound);
            }
            Ok(WriteOutcome::Affected(n))
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.exec
            .read(|conn| {
                conn.query_row("SELECT 1", [], |_| Ok(()))
                    .map_err(|e| map_error(&e))
            })
            .await
    }

    async fn query_records(
        &self,
        coll: Arc<Collection>,
        sql: Sql,
    ) -> Result<Vec<Record>, StoreError> {
        self.exec
            .read(move |conn| query_records(conn, &coll, &sql))
            .await
    }

    async fn query_count(&self, sql: Sql) -> Result<i64, StoreError> {
        self.exec.read(move |conn| query_i64(conn, &sql)).await
    }

    async fn query_rows(&self, sql: Sql) -> Result<Vec<Vec<serde_json::Value>>, StoreError> {
        self.exec
            .read(move |conn| convert::query_rows(conn, &sql))
            .await
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, WriteError> {
        self.exec
            .write(move |conn| {
                let mut out = Vec::with_capacity(ops.len());
                for (index, op) in ops.into_iter().enumerate() {
                    out.push(apply_op(conn, op).map_err(|error| WriteError { index, error })?);
                }
                Ok(out)
            })
            .await
    }

    async fn load_catalog(&self) -> Result<(Vec<StoredCollection>, i64), StoreError> {
        self.exec
            .read(|conn| {
                // One read transaction: the catalog and its generation from one snapshot.
                conn.execute_batch("BEGIN").map_err(|e| map_error(&e))?;
                let result = read_catalog(conn);
                let _ = conn.execute_batch("COMMIT");
                result
            })
            .await
    }

    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        self.exec
            .read(|conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT version, name, checksum, applied_at, content FROM _lintel_migrations
                         ORDER BY length(version), version",
                    )
                    .map_err(|e| map_error(&e))?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                        ))
                    })
                    .map_err(|e| map_error(&e))?;
                let mut out = Vec::new();
                for row in rows {
                    let (version, name, checksum, applied_at, content) =
                        row.map_err(|e| map_error(&e))?;
                    let content = serde_json::from_str(&content).map_err(|e| {
                        StoreError::Internal(format!(
                            "recorded migration {version} is corrupt: {e}"
                        ))
                    })?;
                    out.push(AppliedMigration {
                        version,
                        name,
                        checksum,
                        applied_at,
                        content,
                    });
                }
                Ok(out)
            })
            .await
    }

    async fn apply_migration(
        &self,
        migration: Migration,
        checksum: String,
    ) -> Result<bool, StoreError> {
        self.exec
            .write(move |conn| {
                let recorded: Option<String> = conn
                    .query_row(
                        "SELECT checksum FROM _lintel_migrations WHERE version = ?1",
                        params![migration.version],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| map_error(&e))?;
                match recorded {
                    Some(c) if c == checksum => return Ok(false),
                    Some(_) => {
                        return Err(StoreError::Schema(format!(
                            "migration {} is already applied with other content",
                            migration.version
                        )));
                    }
                    None => {}
                }
                run_steps(conn, &migration.up)?;
                let content = serde_json::to_string(&migration)
                    .map_err(|e| StoreError::Internal(e.to_string()))?;
                conn.execute(
                    "INSERT INTO _lintel_migrations (version, name, checksum, content, applied_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        migration.version,
                        migration.name,
                        checksum,
                        content,
                        crate::clock::now()
                    ],
                )
                .map_err(|e| map_error(&e))?;
                Ok(true)
            })
            .await
    }

    async fn revert_migration(&self, migration: Migration) -> Result<(), StoreError> {
        self.exec
            .write(move |conn| {
                run_steps(conn, &migration.down)?;
                let n = conn
                    .execute(
                        "DELETE FROM _lintel_migrations WHERE version = ?1",
                        params![migration.version],
                    )
                    .map_err(|e| map_error(&e))?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            })
            .await
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
        self.exec
            .write(move |conn| {
                let row = conn
                    .query_row(
                        "SELECT fingerprint, state, status, headers, body, created_ms, locked_until_ms
                         FROM _lintel_idempotency WHERE scope = ?1 AND key = ?2",
                        params![scope, key],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, Option<i64>>(2)?,
                                r.get::<_, Option<String>>(3)?,
                                r.get::<_, Option<Vec<u8>>>(4)?,
                                r.get::<_, i64>(5)?,
                                r.get::<_, i64>(6)?,
                            ))
                        },
                    )
                    .optional()
                    .map_err(|e| map_error(&e))?;
                let claim = |conn: &Connection| {
                    conn.execute(
                        "INSERT INTO _lintel_idempotency (scope, key, fingerprint, state, created_ms, locked_until_ms)
                         VALUES (?1, ?2, ?3, 'pending', ?4, ?5)
                         ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                           state = 'pending', status = NULL, headers = NULL, body = NULL,
                           created_ms = excluded.created_ms, locked_until_ms = excluded.locked_until_ms",
                        params![scope, key, fingerprint, now_ms, now_ms + lock_ms],
                    )
                    .map_err(|e| map_error(&e))
                    .map(|_| IdempotencyClaim::Proceed { token: now_ms })
                };
                let Some((fp, state, status, headers, body, created_ms, locked_until)) = row else {
                    return claim(conn);
                };
                if created_ms + ttl_ms < now_ms {
                    return claim(conn);
                }
                if fp != fingerprint {
                    return Ok(IdempotencyClaim::Mismatch);
                }
                if state == "done" {
                    let headers: Vec<(String, String)> = headers
                        .and_then(|h| serde_json::from_str(&h).ok())
                        .unwrap_or_default();
                    return Ok(IdempotencyClaim::Replay(StoredResponse {
                        status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(200),
                        headers,
                        body: body.unwrap_or_default(),
                    }));
                }
                if locked_until > now_ms {
                    return Ok(IdempotencyClaim::InFlight);
                }
                claim(conn)
            })
            .await
    }

    async fn idempotency_complete(
        &self,
        scope: String,
        key: String,
        token: i64,
        response: StoredResponse,
    ) -> Result<(), StoreError> {
        self.exec
            .write(move |conn| {
                let headers =
                    serde_json::to_string(&response.headers).map_err(|e| StoreError::Internal(e.to_string()))?;
                conn.execute(
                    "UPDATE _lintel_idempotency SET state = 'done', status = ?3, headers = ?4, body = ?5
                     WHERE scope = ?1 AND key = ?2 AND created_ms = ?6 AND state = 'pending'",
                    params![scope, key, response.status, headers, response.body, token],
                )
                .map_err(|e| map_error(&e))?;
                Ok(())
            })
            .await
    }

    async fn idempotency_release(
        &self,
        scope: String,
        key: String,
        token: i64,
    ) -> Result<(), StoreError> {
        self.exec
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM _lintel_idempotency WHERE scope = ?1 AND key = ?2 AND state = 'pending' AND created_ms = ?3",
                    params![scope, key, token],
                )
                .map_err(|e| map_error(&e))?;
                Ok(())
            })
            .await
    }

    async fn close(&self) {
        self.exec.close().await;
    }
}
