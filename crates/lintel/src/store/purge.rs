//! Deleting what has expired from Lintel's own tables: OpenID Connect states, single-use
//! email tokens, sessions, refresh tokens, idempotency keys, and audit rows past their
//! retention. One set of statements for both dialects, run through [`Store::write`] in
//! batches (each its own short transaction, so a large backlog never holds the writer
//! for long). `app` runs it every `store.purge_interval_secs`.

use crate::config::Config;
use crate::store::{Sql, SqlValue, Store, StoreError, WriteError, WriteOp, WriteOutcome};

/// Rows deleted per statement.
const BATCH: i64 = 1_000;

/// What counts as expired.
#[derive(Debug, Clone)]
pub struct PurgePolicy {
    /// Idempotency keys older than this are gone, in milliseconds.
    pub idempotency_ttl_ms: i64,
    /// Audit rows older than this are gone, in milliseconds; `None` keeps them forever.
    pub audit_retention_ms: Option<i64>,
    /// Events older than this are gone, in milliseconds; `None` keeps them forever.
    pub events_retention_ms: Option<i64>,
    /// Finished jobs are gone this long after they ended; `None` keeps them.
    pub jobs_retention_ms: Option<i64>,
}

impl PurgePolicy {
    pub fn from_config(config: &Config) -> Self {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Self {
            idempotency_ttl_ms: ms(config.idempotency.ttl_secs),
            audit_retention_ms: (config.audit.retention_days > 0)
                .then(|| ms(config.audit.retention_days.saturating_mul(24 * 3600))),
            events_retention_ms: (config.events.retention_days > 0)
                .then(|| ms(config.events.retention_days.saturating_mul(24 * 3600))),
            jobs_retention_ms: (config.jobs.retention_days > 0)
                .then(|| ms(config.jobs.retention_days.saturating_mul(24 * 3600))),
        }
    }
}

/// How many rows of each kind one run deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub oauth_states: u64,
    pub auth_tokens: u64,
    pub sessions: u64,
    pub refresh_tokens: u64,
    pub idempotency: u64,
    pub audit: u64,
    pub events: u64,
    pub jobs: u64,
}

impl PurgeReport {
    pub fn total(&self) -> u64 {
        self.oauth_states
            + self.auth_tokens
            + self.sessions
            + self.refresh_tokens
            + self.idempotency
            + self.audit
            + self.events
            + self.jobs
    }
}

/// One table's rule: `DELETE FROM <table> WHERE <key> IN (SELECT <key> FROM <table>
/// WHERE <column> <op> ? LIMIT ?)`.
struct Rule {
    table: &'static str,
    key: &'static str,
    column: &'static str,
    op: &'static str,
}

/// Deletes every row that is expired at `now_ms`. `keep_going` is asked between
/// batches; when it says no (shutdown), the run stops early and reports what it did.
pub async fn purge_expired(
    store: &dyn Store,
    policy: &PurgePolicy,
    now_ms: i64,
    keep_going: impl Fn() -> bool,
) -> Result<PurgeReport, StoreError> {
    let mut report = PurgeReport::default();
    let expires = |table| Rule {
        table,
        key: "hash",
        column: "expires",
        op: "<=",
    };
    report.oauth_states = run(
        store,
        &expires("_lintel_oauth_states"),
        SqlValue::Int(now_ms),
        &keep_going,
    )
    .await?;
    report.auth_tokens = run(
        store,
        &expires("_lintel_auth_tokens"),
        SqlValue::Int(now_ms),
        &keep_going,
    )
    .await?;
    report.refresh_tokens = run(
        store,
        &expires("_lintel_refresh_tokens"),
        SqlValue::Int(now_ms),
        &keep_going,
    )
    .await?;
    report.sessions = run(
        store,
        &Rule {
            table: "_lintel_sessions",
            key: "id",
            column: "expires",
            op: "<=",
        },
        SqlValue::Int(now_ms),
        &keep_going,
    )
    .await?;
    report.idempotency = run(
        store,
        &Rule {
            table: "_lintel_idempotency",
            key: "(scope, key)",
            column: "created_ms",
            op: "<",
        },
        SqlValue::Int(now_ms.saturating_sub(policy.idempotency_ttl_ms)),
        &keep_going,
    )
    .await?;
    if let Some(retention) = policy.audit_retention_ms {
        // Audit ids start with the zero-padded time of the event, so the primary key
        // orders them by time and a prefix is a cut-off.
        let cutoff = now_ms.saturating_sub(retention).max(0);
        report.audit = run(
            store,
            &Rule {
                table: "_lintel_audit",
                key: "id",
                column: "id",
                op: "<",
            },
            SqlValue::Text(format!("{cutoff:013}")),
            &keep_going,
        )
        .await?;
    }
    if let Some(retention) = policy.events_retention_ms {
        let cutoff = now_ms.saturating_sub(retention).max(0);
        report.events = purge_events(store, cutoff, &keep_going).await?;
    }
    if let Some(retention) = policy.jobs_retention_ms {
        let cutoff = now_ms.saturating_sub(retention).max(0);
        report.jobs = run(
            store,
            &Rule {
                table: "_lintel_jobs",
                key: "id",
                column: "status IN ('succeeded', 'dead', 'cancelled') AND finished",
                op: "<",
            },
            SqlValue::Int(cutoff),
            &keep_going,
        )
        .await?;
    }
    Ok(report)
}

/// Deletes events older than `cutoff_ms`, oldest first, moving the purge mark (the
/// `seq` below which readers are told the log is gone) in the same transaction.
async fn purge_events(
    store: &dyn Store,
    cutoff_ms: i64,
    keep_going: &impl Fn() -> bool,
) -> Result<u64, StoreError> {
    use crate::store::events::{purge_mark_sql, purge_sql};
    let d = store.dialect();
    let mut total = 0;
    loop {
        let ops = vec![
            WriteOp::System {
                sql: purge_mark_sql(d, cutoff_ms, BATCH),
                expect: None,
            },
            WriteOp::System {
                sql: purge_sql(d, BATCH),
                expect: None,
            },
        ];
        let n = match store
            .write(ops)
            .await
            .map_err(|WriteError { error, .. }| error)?
            .get(1)
        {
            Some(WriteOutcome::Affected(n)) => *n,
            _ => 0,
        };
        total += n;
        if n == 0 || !keep_going() {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

async fn run(
    store: &dyn Store,
    rule: &Rule,
    bound: SqlValue,
    keep_going: &impl Fn() -> bool,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let mut sql = Sql::new(store.dialect());
        let select_key = rule.key.trim_start_matches('(').trim_end_matches(')');
        sql.push("DELETE FROM ")
            .push(rule.table)
            .push(" WHERE ")
            .push(rule.key)
            .push(" IN (SELECT ")
            .push(select_key)
            .push(" FROM ")
            .push(rule.table)
            .push(" WHERE ")
            .push(rule.column)
            .push(" ")
            .push(rule.op)
            .push(" ")
            .bind(bound.clone())
            .push(" LIMIT ")
            .bind(SqlValue::Int(BATCH))
            .push(")");
        let n = match store
            .write(vec![WriteOp::System { sql, expect: None }])
            .await
            .map_err(|WriteError { error, .. }| error)?
            .first()
        {
            Some(WriteOutcome::Affected(n)) => *n,
            _ => 0,
        };
        total += n;
        if n < BATCH as u64 || !keep_going() {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}
