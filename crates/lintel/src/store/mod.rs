//! The storage boundary: one [`Store`] trait that the SQLite store implements now and
//! the PostgreSQL store implements the same way. Callers build SQL through
//! [`sql`] (which renders the dialect) and hand it to the store; a store only runs
//! statements, groups writes into transactions and maps driver errors to [`StoreError`].
//!
//! Nothing here knows about HTTP; the records and collections services map
//! [`StoreError`] to HTTP outcomes explicitly.

pub mod ddl;
pub(crate) mod engine;
pub mod events;
pub(crate) mod failure;
pub mod files;
pub mod filter;
pub mod jobs;
pub mod postgres;
pub mod purge;
pub mod search;
pub mod sql;
pub mod sqlite;
pub mod webhooks;
pub mod write;
pub mod yjs;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::migrations::{AppliedMigration, Migration};
use crate::schema::{Collection, CollectionSpec};
use crate::validation::FieldErrors;
pub use events::{EventDraft, WriteMeta};
pub use sql::{Dialect, Sql, SqlValue};
pub use write::{WriteError, WriteOp, WriteOutcome};

/// Lintel's identity tables, the same text for both dialects (only portable types:
/// times are epoch milliseconds in BIGINT, flags are 0/1).
pub const AUTH_TABLES: &str = "CREATE TABLE _lintel_superusers (
            id TEXT PRIMARY KEY NOT NULL,
            email TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            created BIGINT NOT NULL,
            updated BIGINT NOT NULL
        );
        CREATE TABLE _lintel_sessions (
            id TEXT PRIMARY KEY NOT NULL,
            kind TEXT NOT NULL,
            collection TEXT NOT NULL,
            user_id TEXT NOT NULL,
            secret_hash TEXT UNIQUE,
            csrf TEXT,
            created BIGINT NOT NULL,
            last_seen BIGINT NOT NULL,
            expires BIGINT NOT NULL,
            revoked BIGINT,
            ip TEXT,
            user_agent TEXT
        );
        CREATE INDEX _lintel_sessions_user ON _lintel_sessions (collection, user_id);
        CREATE TABLE _lintel_refresh_tokens (
            hash TEXT PRIMARY KEY NOT NULL,
            session_id TEXT NOT NULL,
            created BIGINT NOT NULL,
            expires BIGINT NOT NULL,
            used BIGINT
        );
        CREATE INDEX _lintel_refresh_tokens_session ON _lintel_refresh_tokens (session_id);
        CREATE TABLE _lintel_api_keys (
            id TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL,
            collection TEXT NOT NULL,
            user_id TEXT NOT NULL,
            scopes TEXT NOT NULL,
            created BIGINT NOT NULL,
            expires BIGINT,
            revoked BIGINT,
            last_used BIGINT
        );
        CREATE INDEX _lintel_api_keys_user ON _lintel_api_keys (collection, user_id);
        CREATE TABLE _lintel_auth_tokens (
            hash TEXT PRIMARY KEY NOT NULL,
            purpose TEXT NOT NULL,
            collection TEXT NOT NULL,
            user_id TEXT NOT NULL,
            data TEXT,
            created BIGINT NOT NULL,
            expires BIGINT NOT NULL,
            used BIGINT
        );
        CREATE TABLE _lintel_mfa (
            collection TEXT NOT NULL,
            user_id TEXT NOT NULL,
            secret TEXT NOT NULL,
            enabled BIGINT NOT NULL,
            last_step BIGINT NOT NULL,
            recovery TEXT NOT NULL,
            created BIGINT NOT NULL,
            PRIMARY KEY (collection, user_id)
        );
        CREATE TABLE _lintel_oauth_states (
            hash TEXT PRIMARY KEY NOT NULL,
            provider TEXT NOT NULL,
            verifier TEXT NOT NULL,
            nonce TEXT NOT NULL,
            redirect TEXT,
            mode TEXT NOT NULL,
            created BIGINT NOT NULL,
            expires BIGINT NOT NULL
        );
        CREATE TABLE _lintel_audit (
            id TEXT PRIMARY KEY NOT NULL,
            at BIGINT NOT NULL,
            event TEXT NOT NULL,
            outcome TEXT NOT NULL,
            actor TEXT,
            collection TEXT,
            subject TEXT,
            ip TEXT,
            request_id TEXT,
            detail TEXT
        );
        CREATE INDEX _lintel_audit_event ON _lintel_audit (event, at);";

/// The OpenID Connect `state` bound to the browser that started the sign-in: the
/// digest of the random value in that browser's `lintel_oidc` cookie.
pub const OAUTH_STATE_BROWSER: &str = "ALTER TABLE _lintel_oauth_states ADD COLUMN browser TEXT;";

/// Indexes for purging expired rows (`store::purge`) and for finding an account's
/// single-use tokens, the same text for both dialects.
pub const EXPIRY_INDEXES: &str =
    "CREATE INDEX _lintel_sessions_expires ON _lintel_sessions (expires);
        CREATE INDEX _lintel_refresh_tokens_expires ON _lintel_refresh_tokens (expires);
        CREATE INDEX _lintel_auth_tokens_expires ON _lintel_auth_tokens (expires);
        CREATE INDEX _lintel_auth_tokens_user ON _lintel_auth_tokens (collection, user_id, purpose);
        CREATE INDEX _lintel_oauth_states_expires ON _lintel_oauth_states (expires);";

/// Secrets generated once and shared by every instance on the store (the token
/// signing key when none is configured).
pub const SECRETS_TABLE: &str = "CREATE TABLE _lintel_secrets (
            name TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL
        );";

/// A record as stored: system fields plus the field values (table) or the document.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub created: String,
    pub updated: String,
    pub version: i64,
    pub data: Map<String, Value>,
}

/// A collection as the catalog table holds it.
#[derive(Debug, Clone)]
pub struct StoredCollection {
    pub spec: CollectionSpec,
    pub created: String,
    pub updated: String,
}

/// What a store can fail with. Callers decide what each means to a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The record (or collection) addressed does not exist.
    #[error("not found")]
    NotFound,
    /// The record's version is not the one the caller expected.
    #[error("version conflict")]
    VersionConflict,
    /// A constraint refused the write; the fields it concerns and why.
    #[error("constraint violated: {0:?}")]
    Constraint(FieldErrors),
    /// The record is still referenced by others and cannot be deleted.
    #[error("record is referenced by {0}")]
    Referenced(String),
    /// A schema change cannot be applied (e.g. a name is taken, a field is in use).
    #[error("schema change refused: {0}")]
    Schema(String),
    /// The store is overloaded or unreachable; the request may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a broken database. Logged, never shown.
    #[error("store failure: {0}")]
    Internal(String),
}

/// A change made by another process sharing the store, for the read cache.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeNotice {
    /// A record was written or deleted.
    Record { collection: String, id: String },
    /// The catalog (collections) changed: reload it.
    Catalog,
    /// A job was queued: workers may look for it now instead of at their next poll.
    Jobs,
    /// Too much changed to say: forget everything cached.
    All,
    /// The feed stopped: notices may be missed until `Listening` comes again.
    Lost,
    /// The feed is (again) complete from here on.
    Listening,
}

/// Where the event log stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventMarks {
    /// The highest `seq` readers can see.
    pub last: i64,
    /// Events up to this `seq` are purged.
    pub purged: i64,
}

/// The result of claiming an idempotency key.
#[derive(Debug, Clone)]
pub enum IdempotencyClaim {
    /// The key is new (or expired, or abandoned): run the request. The token proves
    /// ownership when completing or releasing (a claim taken over later has another).
    Proceed { token: i64 },
    /// A response is stored for the same request: replay it.
    Replay(StoredResponse),
    /// The same key was used with a different request.
    Mismatch,
    /// The first request with this key is still running.
    InFlight,
}

/// A response kept for replay.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The storage engine behind every capability.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The SQL dialect statements for this store must be rendered in.
    fn dialect(&self) -> Dialect;

    /// Succeeds when the store answers a trivial query.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Runs a query whose columns are a collection's record columns.
    async fn query_records(
        &self,
        coll: Arc<Collection>,
        sql: Sql,
    ) -> Result<Vec<Record>, StoreError>;

    /// Runs a query returning one integer (a count).
    async fn query_count(&self, sql: Sql) -> Result<i64, StoreError>;

    /// Runs a query on Lintel's own tables; each row as JSON scalars (text, integer,
    /// float, null). Always answered by the primary, so a read follows its write.
    async fn query_rows(&self, sql: Sql) -> Result<Vec<Vec<Value>>, StoreError>;

    /// Applies record writes in one transaction, all or nothing, with no actor for
    /// their events (Lintel's own bookkeeping).
    async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, WriteError> {
        self.write_as(ops, WriteMeta::default()).await
    }

    /// Applies record writes in one transaction, all or nothing, each change appended
    /// to the event log in the same transaction with `meta`'s actor and request. On
    /// failure the error names the index of the operation that failed.
    async fn write_as(
        &self,
        ops: Vec<WriteOp>,
        meta: WriteMeta,
    ) -> Result<Vec<WriteOutcome>, WriteError>;

    /// Numbers committed events that have none yet (PostgreSQL; on SQLite they are
    /// numbered as they commit) and returns the event log's marks.
    async fn sequence_events(&self) -> Result<EventMarks, StoreError>;

    /// Woken after a commit that appended events (coalesced: one wake-up may stand for
    /// many commits).
    fn events_appended(&self) -> Arc<tokio::sync::Notify>;

    /// Reads the catalog of collections, with its generation (the number of applied
    /// migrations, read in the same snapshot) so a newer catalog is never replaced by
    /// an older one.
    async fn load_catalog(&self) -> Result<(Vec<StoredCollection>, i64), StoreError>;

    /// Migrations recorded as applied, oldest first.
    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError>;

    /// Applies a migration's `up` steps and records it, in one transaction. `false`
    /// when it was already applied with the same checksum (another instance won).
    async fn apply_migration(
        &self,
        migration: Migration,
        checksum: String,
        meta: WriteMeta,
    ) -> Result<bool, StoreError>;

    /// Applies a recorded migration's `down` steps and forgets it, in one transaction.
    async fn revert_migration(
        &self,
        migration: Migration,
        meta: WriteMeta,
    ) -> Result<(), StoreError>;

    /// Claims an idempotency key for a request fingerprint.
    async fn idempotency_claim(
        &self,
        scope: String,
        key: String,
        fingerprint: String,
        now_ms: i64,
        ttl_ms: i64,
        lock_ms: i64,
    ) -> Result<IdempotencyClaim, StoreError>;

    /// Stores the response of a claimed key.
    async fn idempotency_complete(
        &self,
        scope: String,
        key: String,
        token: i64,
        response: StoredResponse,
    ) -> Result<(), StoreError>;

    /// Releases a claimed key without a response (the request failed on our side).
    async fn idempotency_release(
        &self,
        scope: String,
        key: String,
        token: i64,
    ) -> Result<(), StoreError>;

    /// A feed of changes made by other processes. `None` when this process is the only
    /// writer (the embedded store), so local bookkeeping is complete.
    fn watch_changes(&self) -> Option<tokio::sync::mpsc::Receiver<ChangeNotice>> {
        None
    }

    /// Finishes queued work and closes connections.
    async fn close(&self);
}
