//! The threads that own SQLite connections: one writer and a pool of read-only readers.
//!
//! Async code never touches a connection: it sends a closure over a channel and awaits
//! the answer. The writer groups every write waiting in its queue into one transaction
//! (group commit), each write inside its own savepoint so one failure does not undo the
//! others, and answers only after the commit, so an acknowledged write is durable to the
//! configured `synchronous` level and throughput does not fall to one fsync per request.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::config::{StoreConfig, Synchronous};
use crate::store::StoreError;

/// A write as the writer thread sees it.
trait WriteTask: Send {
    /// Runs inside the open transaction; returns whether it succeeded and what to do
    /// once the transaction's fate is known.
    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn FnOnce(Result<(), StoreError>) + Send>;
    /// Answers without running.
    fn fail(self: Box<Self>, err: StoreError);
}

struct Task<F, T, E> {
    f: F,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> WriteTask for Task<F, T, E>
where
    F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn FnOnce(Result<(), StoreError>) + Send> {
        let Task { f, reply } = *self;
        let result = match run_cached(conn, "SAVEPOINT w") {
            Err(e) => Err(E::from(StoreError::Internal(format!("savepoint: {e}")))),
            Ok(()) => {
                let result = match std::panic::catch_unwind(AssertUnwindSafe(|| f(conn))) {
                    Ok(r) => r,
                    Err(_) => Err(E::from(StoreError::Internal("a write panicked".into()))),
                };
                let ended = if result.is_ok() {
                    run_cached(conn, "RELEASE w")
                } else {
                    conn.execute_batch("ROLLBACK TO w; RELEASE w")
                };
                match ended {
                    Ok(()) => result,
                    Err(e) => {
                        // Never leave a failed write's savepoint open inside the group.
                        let _ = conn.execute_batch("ROLLBACK TO w; RELEASE w");
                        Err(E::from(StoreError::Internal(format!(
                            "ending savepoint: {e}"
                        ))))
                    }
                }
            }
        };
        Box::new(move |commit: Result<(), StoreError>| {
            let out = match (result, commit) {
                (Ok(v), Ok(())) => Ok(v),
                (Ok(_), Err(e)) => Err(E::from(e)),
                (Err(e), _) => Err(e),
            };
            let _ = reply.send(out);
        })
    }

    fn fail(self: Box<Self>, err: StoreError) {
        let _ = self.reply.send(Err(E::from(err)));
    }
}

/// Runs a statement through the connection's statement cache (savepoints run for
/// every write; parsing them each time is measurable).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

enum WriteMsg {
    Task(Box<dyn WriteTask>),
    Close(oneshot::Sender<()>),
}

enum ReadMsg {
    Task(Box<dyn FnOnce(&Connection) + Send>),
    Close,
}

/// The store's metrics, made once in the server's registry.
#[derive(Clone)]
struct StoreMetrics {
    read_seconds: metrics::Histogram,
    read_rejected: metrics::Counter,
    write_rejected: metrics::Counter,
    /// Writes sent to the writer and not yet taken into a group.
    write_queue: metrics::Gauge,
    group_size: metrics::Histogram,
    commit_seconds: metrics::Histogram,
    commits: metrics::Counter,
}

impl StoreMetrics {
    fn new(m: &crate::telemetry::Metrics) -> Self {
        m.scoped(|| Self {
            read_seconds: metrics::histogram!("lintel_store_read_seconds"),
            read_rejected: metrics::counter!("lintel_store_read_rejected_total"),
            write_rejected: metrics::counter!("lintel_store_write_rejected_total"),
            write_queue: metrics::gauge!("lintel_store_write_queue"),
            group_size: metrics::histogram!("lintel_store_group_commit_size"),
            commit_seconds: metrics::histogram!("lintel_store_commit_seconds"),
            commits: metrics::counter!("lintel_store_commits_total"),
        })
    }
}

/// Handles to the connection threads.
pub struct Executor {
    metrics: StoreMetrics,
    write_tx: flume::Sender<WriteMsg>,
    read_tx: flume::Sender<ReadMsg>,
    readers: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn apply_pragmas(conn: &Connection, cfg: &StoreConfig, writer: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(cfg.busy_timeout_ms))?;
    conn.set_prepared_statement_cache_capacity(256);
    if writer {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match cfg.synchronous {
                Synchronous::Normal => "NORMAL",
                Synchronous::Full => "FULL",
            },
        )?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    } else {
        conn.pragma_update(None, "query_only", true)?;
    }
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Measured on full-text search over 100,000 documents: 1.4x the queries a second
    // of reads through `pread` (docs/benchmarks.md).
    conn.pragma_update(
        None,
        "mmap_size",
        i64::try_from(cfg.mmap_bytes).unwrap_or(i64::MAX),
    )?;
    register_functions(conn)
}

/// SQL functions Lintel's statements use that SQLite lacks (PostgreSQL gets them from
/// a system migration): `lintel_geo_distance(latA, lonA, latB, lonB)` in kilometres,
/// NULL when any coordinate is NULL; `lintel_search_text(language, text, ...)`, the
/// index terms of texts for full-text search (the search triggers call it).
fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "lintel_search_text",
        -1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            use crate::schema::search::{Language, MAX_POSITIONS, index_text};
            let mut out = String::new();
            let mut budget = MAX_POSITIONS;
            let mut i = 0;
            let text_at = |i: usize| match ctx.get_raw(i) {
                rusqlite::types::ValueRef::Text(b) => Some(String::from_utf8_lossy(b)),
                _ => None,
            };
            while i + 1 < ctx.len() {
                let lang = text_at(i)
                    .and_then(|l| Language::parse(&l))
                    .unwrap_or(crate::schema::search::DEFAULT_LANGUAGE);
                if let Some(text) = text_at(i + 1) {
                    if i > 0 && !out.is_empty() {
                        out.push(' ');
                        out.push_str(crate::schema::search::FIELD_BREAK);
                    }
                    index_text(lang, &text, &mut out, &mut budget);
                }
                i += 2;
            }
            Ok(out)
        },
    )?;
    conn.create_scalar_function(
        "lintel_geo_distance",
        4,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let mut c = [0.0f64; 4];
            for (i, slot) in c.iter_mut().enumerate() {
                match ctx.get::<Option<f64>>(i)? {
                    Some(v) => *slot = v,
                    None => return Ok(None),
                }
            }
            Ok(Some(crate::schema::kinds::geo_distance_km(
                c[0], c[1], c[2], c[3],
            )))
        },
    )
}

impl Executor {
    /// Opens the database (creating it), runs `init` on the writer connection before
    /// anything else, then starts the threads.
    pub fn open(
        path: &Path,
        cfg: &StoreConfig,
        metrics: &crate::telemetry::Metrics,
        init: impl FnOnce(&mut Connection) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        let map =
            |e: rusqlite::Error| StoreError::Internal(format!("opening {}: {e}", path.display()));
        let mut writer = Connection::open(path).map_err(map)?;
        apply_pragmas(&writer, cfg, true).map_err(map)?;
        init(&mut writer)?;

        let (write_tx, write_rx) = flume::bounded::<WriteMsg>(cfg.write_queue.max(1));
        let (read_tx, read_rx) = flume::bounded::<ReadMsg>(cfg.read_queue.max(1));
        let mut threads = Vec::new();
        let max_group = cfg.max_group_commit.max(1);
        let metrics = StoreMetrics::new(metrics);
        let writer_metrics = metrics.clone();
        threads.push(
            std::thread::Builder::new()
                .name("lintel-sqlite-writer".into())
                .spawn(move || writer_loop(writer, write_rx, max_group, writer_metrics))
                .map_err(|e| StoreError::Internal(format!("spawning writer: {e}")))?,
        );
        let readers = cfg.readers.max(1);
        for i in 0..readers {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(map)?;
            apply_pragmas(&conn, cfg, false).map_err(map)?;
            let rx = read_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("lintel-sqlite-reader-{i}"))
                    .spawn(move || reader_loop(conn, rx))
                    .map_err(|e| StoreError::Internal(format!("spawning reader: {e}")))?,
            );
        }
        Ok(Self {
            metrics,
            write_tx,
            read_tx,
            readers,
            threads: Mutex::new(threads),
        })
    }

    /// Runs `f` on a reader connection.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let read_seconds = self.metrics.read_seconds.clone();
        let job = Box::new(move |conn: &Connection| {
            let started = Instant::now();
            let out = f(conn);
            read_seconds.record(started.elapsed().as_secs_f64());
            let _ = tx.send(out);
        });
        match self.read_tx.try_send(ReadMsg::Task(job)) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => {
                self.metrics.read_rejected.increment(1);
                return Err(StoreError::Unavailable("the read queue is full".into()));
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                return Err(StoreError::Unavailable("the store is closed".into()));
            }
        }
        rx.await
            .map_err(|_| StoreError::Internal("a reader dropped the request".into()))?
    }

    /// Runs `f` inside the writer's current group transaction, in its own savepoint.
    /// The answer comes after the transaction commits.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let task: Box<dyn WriteTask> = Box::new(Task { f, reply });
        match self.write_tx.try_send(WriteMsg::Task(task)) {
            // Counted once it is in the queue (the writer may take it, and count it
            // out, an instant before: the gauge is exact whenever the two settle).
            Ok(()) => self.metrics.write_queue.increment(1.0),
            Err(flume::TrySendError::Full(_)) => {
                self.metrics.write_rejected.increment(1);
                return Err(E::from(StoreError::Unavailable(
                    "the write queue is full".into(),
                )));
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                return Err(E::from(StoreError::Unavailable(
                    "the store is closed".into(),
                )));
            }
        }
        rx.await.map_err(|_| {
            E::from(StoreError::Internal(
                "the writer dropped the request".into(),
            ))
        })?
    }

    /// Finishes queued writes, checkpoints the WAL and stops every thread.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.write_tx.send_async(WriteMsg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        for _ in 0..self.readers {
            // Behind whatever reads are still queued; never blocks the async thread.
            let _ = self.read_tx.send_async(ReadMsg::Close).await;
        }
        let threads = match self.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

fn reader_loop(conn: Connection, rx: flume::Receiver<ReadMsg>) {
    while let Ok(msg) = rx.recv() {
        match msg {
            ReadMsg::Task(job) => {
                if std::panic::catch_unwind(AssertUnwindSafe(|| job(&conn))).is_err() {
                    tracing::error!("a read panicked");
                }
            }
            ReadMsg::Close => break,
        }
    }
}

fn writer_loop(
    conn: Connection,
    rx: flume::Receiver<WriteMsg>,
    max_group: usize,
    metrics: StoreMetrics,
) {
    let mut closing: Option<oneshot::Sender<()>> = None;
    while closing.is_none() {
        let Ok(first) = rx.recv() else { break };
        let mut tasks = Vec::new();
        match first {
            WriteMsg::Task(t) => tasks.push(t),
            WriteMsg::Close(ack) => closing = Some(ack),
        }
        // Everything already waiting joins this transaction; on close, everything queued.
        while closing.is_some() || tasks.len() < max_group {
            match rx.try_recv() {
                Ok(WriteMsg::Task(t)) => tasks.push(t),
                Ok(WriteMsg::Close(ack)) => closing = Some(ack),
                Err(_) => break,
            }
        }
        metrics.write_queue.decrement(tasks.len() as f64);
        if !tasks.is_empty() {
            run_group(&conn, tasks, &metrics);
        }
    }
    if let Err(e) = conn.execute_batch("PRAGMA optimize; PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "checkpoint at close failed");
    }
    drop(conn);
    if let Some(ack) = closing {
        let _ = ack.send(());
    }
}

fn run_group(conn: &Connection, tasks: Vec<Box<dyn WriteTask>>, metrics: &StoreMetrics) {
    let started = Instant::now();
    metrics.group_size.record(tasks.len() as f64);
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = super::convert::map_error(&e);
        for t in tasks {
            t.fail(err.clone());
        }
        return;
    }
    let mut completions = Vec::with_capacity(tasks.len());
    let mut aborted: Option<StoreError> = None;
    for t in tasks {
        if let Some(e) = &aborted {
            t.fail(e.clone());
            continue;
        }
        completions.push(t.run(conn));
        // Some errors (I/O, full disk, out of memory) make SQLite roll the whole
        // transaction back by itself. Then nothing of this group is kept, and the
        // remaining tasks must not run in autocommit mode.
        if conn.is_autocommit() {
            tracing::error!("the group transaction was rolled back by the database");
            aborted = Some(StoreError::Unavailable(
                "the transaction was rolled back by the database".into(),
            ));
        }
    }
    let commit = match aborted {
        Some(e) => Err(e),
        None => conn.execute_batch("COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            super::convert::map_error(&e)
        }),
    };
    metrics
        .commit_seconds
        .record(started.elapsed().as_secs_f64());
    metrics.commits.increment(1);
    for c in completions {
        c(commit.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_full_read_queue_answers_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let cfg = StoreConfig {
            readers: 1,
            read_queue: 1,
            ..StoreConfig::default()
        };
        let exec = match Executor::open(
            &dir.path().join("t.db"),
            &cfg,
            &crate::telemetry::Metrics::new(),
            |_| Ok(()),
        ) {
            Ok(e) => Arc::new(e),
            Err(e) => panic!("open: {e}"),
        };
        // The only reader is kept busy...
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let e = exec.clone();
        let busy = tokio::spawn(async move {
            e.read(move |_| {
                let _ = started_tx.send(());
                let _ = release_rx.recv_timeout(Duration::from_secs(10));
                Ok(1)
            })
            .await
        });
        let started =
            tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(10)))
                .await;
        assert!(
            matches!(started, Ok(Ok(()))),
            "the reader took the first read"
        );
        // ...one read waits in the queue...
        let e = exec.clone();
        let queued = tokio::spawn(async move { e.read(|_| Ok(2)).await });
        for _ in 0..500 {
            if exec.read_tx.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(exec.read_tx.len(), 1);
        // ...and the next is refused at once, as a 503 the client may retry.
        let refused = tokio::time::timeout(Duration::from_secs(2), exec.read(|_| Ok(3))).await;
        let Ok(Err(err)) = refused else {
            panic!("a read past the queue's bound was accepted (or left waiting)");
        };
        // Unavailable is the store's "retry shortly" (503 with Retry-After at the edge).
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let _ = release_tx.send(());
        assert!(matches!(busy.await, Ok(Ok(1))));
        assert!(matches!(queued.await, Ok(Ok(2))), "the queued read ran");
        exec.close().await;
    }
}
