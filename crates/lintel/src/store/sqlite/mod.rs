//! The embedded store: SQLite in WAL mode behind [`executor::Executor`] (one writer
//! thread with group commit, read-only readers). What it does inside a transaction
//! (writes, catalog, migrations, idempotency keys) is the shared code of
//! [`engine`], run over [`Lite`]; this file keeps the connections and the file.

mod convert;
mod executor;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::Connection;

use crate::config::StoreConfig;
use crate::migrations::{AppliedMigration, Migration};
use crate::schema::Collection;
use crate::store::engine::{self, run_ready};
use crate::store::write::WriteError;
use crate::store::{
    Dialect, EventMarks, IdempotencyClaim, Record, Sql, Store, StoreError, StoredCollection,
    StoredResponse, WriteMeta, WriteOp, WriteOutcome,
};
use convert::{execute, map_error, query_i64, query_records};
use executor::Executor;

/// The connection as the shared algorithms of [`engine`] see it. Every call answers
/// synchronously, so [`run_ready`] completes them on the calling thread.
struct Lite<'a>(&'a Connection);

impl engine::Conn for Lite<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn execute(&self, sql: &Sql, coll: Option<&Collection>) -> Result<u64, StoreError> {
        execute(self.0, sql, coll).map(|n| n as u64)
    }

    async fn rows(&self, sql: &Sql) -> Result<Vec<engine::Row>, StoreError> {
        convert::typed_rows(self.0, sql)
    }

    async fn script(&self, text: &str) -> Result<(), StoreError> {
        self.0.execute_batch(text).map_err(|e| map_error(&e))
    }

    async fn records(&self, coll: &Collection, sql: &Sql) -> Result<Vec<Record>, StoreError> {
        query_records(self.0, coll, sql)
    }
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    exec: Executor,
    appended: Arc<tokio::sync::Notify>,
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
        Ok(Self {
            exec,
            appended: Arc::new(tokio::sync::Notify::new()),
        })
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
    run_ready(engine::run_system_migrations(&Lite(&tx)))?;
    tx.commit().map_err(|e| map_error(&e))
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
            .read(move |conn| {
                convert::typed_rows(conn, &sql)
                    .map(|rows| rows.into_iter().map(engine::Row::into_json).collect())
            })
            .await
    }

    async fn write_as(
        &self,
        ops: Vec<WriteOp>,
        meta: WriteMeta,
    ) -> Result<Vec<WriteOutcome>, WriteError> {
        let appends = ops.iter().any(WriteOp::appends_event);
        let out = self
            .exec
            .write(move |conn| {
                let mut out = Vec::with_capacity(ops.len());
                for (index, op) in ops.into_iter().enumerate() {
                    out.push(
                        run_ready(engine::apply_op(&Lite(conn), op, &meta))
                            .map_err(|error| WriteError { index, error })?,
                    );
                }
                Ok::<_, WriteError>(out)
            })
            .await?;
        if appends {
            self.appended.notify_one();
        }
        Ok(out)
    }

    async fn sequence_events(&self) -> Result<EventMarks, StoreError> {
        self.exec
            .read(|conn| run_ready(engine::event_marks(&Lite(conn))))
            .await
    }

    fn events_appended(&self) -> Arc<tokio::sync::Notify> {
        self.appended.clone()
    }

    async fn load_catalog(&self) -> Result<(Vec<StoredCollection>, i64), StoreError> {
        self.exec
            .read(|conn| {
                // One read transaction: the catalog and its generation from one snapshot.
                conn.execute_batch("BEGIN").map_err(|e| map_error(&e))?;
                let result = run_ready(engine::read_catalog(&Lite(conn)));
                let _ = conn.execute_batch("COMMIT");
                result
            })
            .await
    }

    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        self.exec
            .read(|conn| run_ready(engine::applied_migrations(&Lite(conn))))
            .await
    }

    async fn apply_migration(
        &self,
        migration: Migration,
        checksum: String,
        meta: WriteMeta,
    ) -> Result<bool, StoreError> {
        let out = self
            .exec
            .write(move |conn| {
                run_ready(engine::apply_migration(
                    &Lite(conn),
                    &migration,
                    &checksum,
                    &meta,
                ))
            })
            .await?;
        self.appended.notify_one();
        Ok(out)
    }

    async fn revert_migration(
        &self,
        migration: Migration,
        meta: WriteMeta,
    ) -> Result<(), StoreError> {
        self.exec
            .write(move |conn| run_ready(engine::revert_migration(&Lite(conn), &migration, &meta)))
            .await?;
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
        self.exec
            .write(move |conn| {
                run_ready(engine::idempotency_claim(
                    &Lite(conn),
                    &scope,
                    &key,
                    &fingerprint,
                    now_ms,
                    ttl_ms,
                    lock_ms,
                ))
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
                run_ready(engine::idempotency_complete(
                    &Lite(conn),
                    &scope,
                    &key,
                    token,
                    response,
                ))
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
                run_ready(engine::idempotency_release(
                    &Lite(conn),
                    &scope,
                    &key,
                    token,
                ))
            })
            .await
    }

    async fn close(&self) {
        self.exec.close().await;
    }
}
