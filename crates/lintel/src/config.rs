//! Typed configuration, layered: defaults, then `lintel.toml`, then `LINTEL_*`
//! environment variables (`__` separates nesting levels, e.g. `LINTEL_HTTP__BODY_LIMIT`;
//! a secret can come from a file, e.g. `LINTEL_ADMIN_TOKEN_FILE`), then command-line
//! flags.
//!
//! The resulting [`Config`] is passed through `AppState`; nothing here is global.
//! Unknown keys are reported back to the caller so they can be logged as warnings.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value as FigValue};
use serde::{Deserialize, Serialize};

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(<unset>)")
        } else {
            f.write_str("Secret(<redacted>)")
        }
    }
}

/// Everything Lintel can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the embedded store, the admin token and the migrations live.
    pub data_dir: PathBuf,
    /// Where collection migration files are written and read; empty = `<data_dir>/migrations`.
    pub migrations_dir: PathBuf,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The admin bearer token; empty = generated on first start into `<data_dir>/admin-token`.
    pub admin_token: Secret,
    /// Apply pending migration files at start-up.
    pub auto_migrate: bool,
    /// A PostgreSQL URL (`postgres://user:pass@host:5432/db`); empty = the embedded
    /// SQLite store under `data_dir`.
    pub database_url: Secret,
    /// Read replicas, comma-separated URLs; reads go to them, writes to the primary.
    pub database_replica_urls: Secret,
    pub database_pool: PoolConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub idempotency: IdempotencyConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    pub audit: AuditConfig,
    pub events: EventsConfig,
    pub jobs: JobsConfig,
    pub outbound: OutboundConfig,
    pub files: FilesConfig,
    pub realtime: RealtimeConfig,
    pub metrics: MetricsConfig,
    pub mail: MailConfig,
    pub tls: TlsConfig,
    pub cors: CorsConfig,
    pub security: SecurityConfig,
    pub rate_limit: RateLimitConfig,
}

/// Cross-origin requests from browsers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`); empty = no CORS headers at all.
    /// There is no `*`: credentials and wildcards do not mix.
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    /// Let cookies travel with cross-origin requests.
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight, in seconds.
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec(),
            allowed_headers: [
                "authorization",
                "content-type",
                "if-match",
                "if-none-match",
                "idempotency-key",
                "x-csrf-token",
                "x-request-id",
                "api-version",
            ]
            .map(String::from)
            .to_vec(),
            allow_credentials: true,
            max_age_secs: 600,
        }
    }
}

/// Security headers on every response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    pub referrer_policy: String,
    pub frame_options: String,
    /// For every response (Lintel serves JSON; nothing may be framed or run).
    pub content_security_policy: String,
    /// `Strict-Transport-Security` max-age when serving TLS; 0 = none.
    pub hsts_max_age_secs: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            referrer_policy: "no-referrer".into(),
            frame_options: "DENY".into(),
            content_security_policy:
                "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
                    .into(),
            hsts_max_age_secs: 31_536_000,
        }
    }
}

/// Rate limiting (see `ratelimit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Counters kept at most (per rule and key).
    pub max_keys: usize,
    /// Checked in order; every matching rule counts the request.
    pub rules: Vec<RateRule>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_keys: 100_000,
            rules: default_rate_rules(),
        }
    }
}

/// What a rule counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyBy {
    /// The client address (after trusted proxies).
    Ip,
    /// The signed-in account (anonymous callers by address).
    User,
    /// The API key (other callers by address).
    ApiKey,
    /// One counter for everyone.
    Global,
}

/// One rate-limit rule (applied by `ratelimit`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// Names the policy in the headers.
    pub name: String,
    /// A path pattern: `*` matches one segment, a final `**` the rest.
    pub path: String,
    /// Methods it applies to; empty = all.
    #[serde(default)]
    pub methods: Vec<String>,
    pub key: KeyBy,
    pub algorithm: RateAlgorithm,
    /// Requests per period.
    pub limit: u32,
    pub period_secs: u64,
    /// Token bucket capacity / leaky bucket queue length (default: `limit`).
    #[serde(default)]
    pub burst: u32,
}

/// How a rate-limit rule counts (the state machines are in `ratelimit::algorithms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateAlgorithm {
    /// At most `limit` per aligned window of `period`.
    FixedWindow,
    /// At most `limit` in any `period` ending now (every hit remembered).
    SlidingLog,
    /// The fixed-window count blended with the previous window's, weighted by overlap.
    SlidingWindow,
    /// Tokens refill at `limit` per `period` up to `burst`; each request takes one.
    TokenBucket,
    /// Requests leave at `limit` per `period`; up to `burst` wait in the queue (they are
    /// delayed, not refused), more are refused.
    LeakyBucket,
}

/// The default rules: strict on sign-in and account recovery, generous on the API.
pub fn default_rate_rules() -> Vec<RateRule> {
    vec![
        RateRule {
            name: "auth".into(),
            path: "/v1/auth/**".into(),
            methods: vec!["POST".into()],
            key: KeyBy::Ip,
            algorithm: RateAlgorithm::SlidingWindow,
            limit: 30,
            period_secs: 60,
            burst: 0,
        },
        RateRule {
            name: "api".into(),
            path: "/**".into(),
            methods: Vec::new(),
            key: KeyBy::Ip,
            algorithm: RateAlgorithm::TokenBucket,
            limit: 6000,
            period_secs: 60,
            burst: 300,
        },
    ]
}

/// Accounts, sessions and tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `HS256` (with `jwt_secret`) or `EdDSA` (with `jwt_private_key_file`).
    pub jwt_algorithm: String,
    /// The HS256 signing key; empty = generated on first start into
    /// the store, where every instance sharing it finds it.
    pub jwt_secret: Secret,
    /// An Ed25519 private key (PKCS#8 PEM) for EdDSA.
    pub jwt_private_key_file: PathBuf,
    /// The matching public key (PEM), for verifying.
    pub jwt_public_key_file: PathBuf,
    /// The `iss` of issued tokens.
    pub issuer: String,
    /// Access token lifetime, in seconds.
    pub access_ttl_secs: u64,
    /// Refresh token (and token session) lifetime, in seconds.
    pub refresh_ttl_secs: u64,
    /// A cookie session ends after this long without use, in seconds.
    pub session_idle_secs: u64,
    /// A cookie session ends this long after login whatever happens, in seconds.
    pub session_absolute_secs: u64,
    /// Always mark cookies `Secure` (they are whenever the request came over TLS).
    pub cookie_secure: bool,
    /// Origins allowed to make cookie-authenticated unsafe requests (besides the
    /// server's own), e.g. `https://app.example.com`.
    pub allowed_origins: Vec<String>,
    /// Shortest password accepted (at least 8).
    pub password_min_length: usize,
    /// Argon2id memory cost, in KiB.
    pub argon2_memory_kib: u32,
    /// Argon2id passes.
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    pub argon2_parallelism: u32,
    /// Password hashes computed at once (0 = one per CPU core); more wait their turn.
    pub hash_concurrency: usize,
    /// Single-use email tokens (verification, reset, email change) live this long, in seconds.
    pub email_token_ttl_secs: u64,
    /// The public address of the app, used in links in emails.
    pub public_url: String,
    /// Failed sign-ins for one account within `lockout_window_secs` before it is locked.
    pub lockout_threshold: u32,
    /// Failed sign-ins from one address within the window before it is locked.
    pub lockout_ip_threshold: u32,
    pub lockout_window_secs: u64,
    /// How long a lock lasts, in seconds.
    pub lockout_secs: u64,
    /// OpenID Connect providers by name.
    pub oidc: std::collections::BTreeMap<String, OidcProviderConfig>,
}

/// One OpenID Connect identity provider.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OidcProviderConfig {
    /// The issuer URL; its discovery document is read from
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Scopes asked for (openid and email are always included).
    pub scopes: Vec<String>,
    /// The auth collection accounts are linked into.
    pub collection: String,
    /// Where the provider sends the browser back: `<public_url>/v1/auth/oidc/<name>/callback`
    /// unless given.
    pub redirect_url: String,
    /// Origins besides the issuer's that its discovery document may name for the
    /// authorization endpoint, the token endpoint and the JWKS (Google, for one, serves
    /// them from `https://oauth2.googleapis.com` and `https://www.googleapis.com`).
    pub endpoint_origins: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_algorithm: "HS256".into(),
            jwt_secret: Secret::default(),
            jwt_private_key_file: PathBuf::new(),
            jwt_public_key_file: PathBuf::new(),
            issuer: "lintel".into(),
            access_ttl_secs: 15 * 60,
            refresh_ttl_secs: 30 * 24 * 3600,
            session_idle_secs: 2 * 3600,
            session_absolute_secs: 7 * 24 * 3600,
            cookie_secure: false,
            allowed_origins: Vec::new(),
            password_min_length: 10,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hash_concurrency: 0,
            email_token_ttl_secs: 3600,
            public_url: "http://127.0.0.1:8090".into(),
            lockout_threshold: 10,
            lockout_ip_threshold: 50,
            lockout_window_secs: 15 * 60,
            lockout_secs: 15 * 60,
            oidc: Default::default(),
        }
    }
}

/// Prometheus metrics. Never open to anyone on the API listener: there `/metrics`
/// needs the admin token, a superuser (a superuser's API key needs `metrics:read`),
/// or `metrics.token`. With `metrics.listen` set, metrics are served on that address
/// instead (meant for a private network; no credential asked) and `/metrics` on the
/// API listener is gone.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A separate plain-HTTP address for `/metrics` (e.g. `127.0.0.1:9464`); empty =
    /// served on the API listener behind a token.
    pub listen: String,
    /// A bearer token a scraper may present on the API listener (at least 32
    /// characters); empty = only superusers.
    pub token: Secret,
}

/// The audit log (`_lintel_audit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Rows older than this many days are purged; 0 keeps them forever.
    pub retention_days: u64,
    /// Repeated rule denials of one caller on one collection and action within this
    /// many seconds share one `rule_denied` row (with a `count`); 0 = a row each.
    pub denial_window_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 90,
            denial_window_secs: 60,
        }
    }
}

/// The event log (`GET /v1/events`, and what webhooks and realtime consume).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Events older than this many days are purged; 0 keeps them forever.
    pub retention_days: u64,
    /// How often (milliseconds) to look for events other instances appended (and, on
    /// PostgreSQL, number any a crash left unnumbered).
    pub poll_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_days: 7,
            poll_ms: 250,
        }
    }
}

/// The job queue (`/v1/jobs`) and Lintel's own workers for the built-in kinds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Built-in jobs (http, import, export, housekeeping) this instance runs at once;
    /// 0 runs none here (external workers still claim their kinds).
    pub concurrency: usize,
    /// How often (milliseconds) idle workers look for due jobs and expired leases.
    pub poll_ms: u64,
    /// The first retry waits up to this many seconds; each further one doubles it.
    pub backoff_base_seconds: u64,
    /// No retry waits longer than this many seconds.
    pub backoff_max_seconds: u64,
    /// Finished jobs (succeeded, dead, cancelled) are purged this many days after
    /// they ended; 0 keeps them.
    pub retention_days: u64,
    /// The lease (seconds) Lintel's own workers hold on a job, renewed while it runs;
    /// a crashed instance's jobs run again this long after it died.
    pub lease_seconds: u64,
    /// The largest import body, in bytes (spooled to disk, never held in memory).
    pub import_max_bytes: u64,
    /// The most rows an atomic import takes (they are written in one transaction);
    /// partial imports have no limit.
    pub import_atomic_max_rows: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            poll_ms: 500,
            backoff_base_seconds: 5,
            backoff_max_seconds: 3600,
            retention_days: 7,
            lease_seconds: 60,
            import_max_bytes: 1024 * 1024 * 1024,
            import_atomic_max_rows: 200_000,
        }
    }
}

/// Requests Lintel makes to other servers (`http` jobs, webhooks).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// Destinations allowed although they are loopback, private, link-local or
    /// otherwise internal: CIDRs (`10.0.0.0/8`, `127.0.0.1/32`) or host names.
    pub allow_hosts: Vec<String>,
}

/// Uploaded files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// The most bytes of files one request may upload (and of any one file).
    pub max_upload_bytes: u64,
    /// How long a file token (`POST /v1/files/token`) is accepted.
    pub token_ttl_seconds: u64,
    /// Where files' bytes live: `local` (under the data folder) or `s3` (a build with
    /// the `s3` feature).
    pub backend: String,
    pub s3: S3Config,
    /// Encryption at rest: master keys (base64 of 32 random bytes), the first wrapping
    /// new files' keys, the others only opening what they wrapped (rotation). Empty =
    /// files are kept in the clear.
    pub encryption_keys: Vec<Secret>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 2 * 1024 * 1024 * 1024,
            token_ttl_seconds: 120,
            backend: "local".into(),
            s3: S3Config::default(),
            encryption_keys: Vec::new(),
        }
    }
}

/// Live subscriptions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeConfig {
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Open streams one account may hold.
    pub max_connections_per_user: usize,
    /// Open streams one client address may hold.
    pub max_connections_per_address: usize,
    /// Seconds between heartbeats (and checks that the caller's session stands).
    pub heartbeat_secs: u64,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            max_subscriptions: 1000,
            max_connections_per_user: 100,
            max_connections_per_address: 1000,
            heartbeat_secs: 15,
        }
    }
}

/// An S3-compatible bucket for files (`files.backend = "s3"`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Default `us-east-1`.
    pub region: String,
    /// For S3-compatible servers (MinIO, Ceph, R2, moto): their URL; objects are then
    /// addressed by path. Empty = AWS.
    pub endpoint: String,
    /// Empty = credentials from the environment's usual AWS variables are not read:
    /// set both here (or `LINTEL_FILES__S3__ACCESS_KEY_ID` / `..._SECRET_ACCESS_KEY`).
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Objects' key prefix (a folder in the bucket).
    pub prefix: String,
    /// Allow a plain-http endpoint (test servers).
    pub allow_http: bool,
}

/// Outgoing mail (verification, password reset, email change).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailConfig {
    /// The SMTP server; empty = mail is not sent (the flows answer 409
    /// `mail_not_configured`).
    pub smtp_host: String,
    pub smtp_port: u16,
    /// `none`, `starttls` or `tls` (implicit TLS).
    pub smtp_tls: String,
    pub smtp_username: String,
    pub smtp_password: Secret,
    /// The From address.
    pub from: String,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            smtp_host: String::new(),
            smtp_port: 587,
            smtp_tls: "starttls".into(),
            smtp_username: String::new(),
            smtp_password: Secret::default(),
            from: "Lintel <no-reply@localhost>".into(),
        }
    }
}

/// The in-process read cache: records by id, list pages and counts, in one budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// The whole cache, in bytes (estimated); 0 turns it off.
    pub max_bytes: u64,
    /// Which entries make room for new ones.
    pub policy: CachePolicy,
    /// Entries older than this are dropped; 0 keeps them until evicted or stale.
    pub ttl_seconds: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            policy: CachePolicy::Tinylfu,
            ttl_seconds: 0,
        }
    }
}

/// The read cache's eviction policy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CachePolicy {
    /// Admission by frequency (TinyLFU), eviction by recency: resists scans.
    Tinylfu,
    /// Least recently used.
    Lru,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, human-readable otherwise.
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `lintel=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Longest time a request may take before it is answered with 503, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long in-flight requests get to finish after a shutdown signal, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Compress responses (gzip) when the client accepts it.
    pub compression: bool,
    /// Proxies (addresses or ranges) whose `Forwarded` / `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// A client must send a request's headers (and finish a TLS handshake) within this.
    pub header_read_timeout_ms: u64,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle_timeout_ms: u64,
    /// Largest request head accepted (at least 8192).
    pub max_header_bytes: usize,
    /// Open connections at most; more wait to be accepted.
    pub max_connections: usize,
}

/// Serving HTTPS (rustls): certificate files, reloaded when they change; optional
/// client certificates (mutual TLS); an optional plain-HTTP listener that redirects.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; empty = plain HTTP.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates that client certificates must chain to (mutual TLS).
    pub client_ca_file: PathBuf,
    /// With a client CA: `required` (default) or `optional`.
    pub client_auth: String,
    /// A plain-HTTP address that answers every request with a redirect to HTTPS.
    pub redirect_listen: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// WAL + `synchronous=NORMAL`: a committed write survives a process crash; the last
    /// commits before a power loss may be lost (the database stays consistent).
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before it is acknowledged.
    Full,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Read-only SQLite connections, each on its own thread.
    pub readers: usize,
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// How long a connection waits on a locked database, in milliseconds.
    pub busy_timeout_ms: u64,
    /// The most writes grouped into one transaction.
    pub max_group_commit: usize,
    /// Writes waiting for the writer before new ones get 503.
    pub write_queue: usize,
    /// Reads waiting for a reader before new ones get 503.
    pub read_queue: usize,
    /// How often expired rows (sessions, tokens, OIDC states, idempotency keys, old
    /// audit rows) are deleted, in seconds; 0 = never. Both stores.
    pub purge_interval_secs: u64,
    /// Bytes of the database file each SQLite connection maps into memory
    /// (`PRAGMA mmap_size`): reads of mapped pages skip a system call and a copy.
    /// 0 reads through `pread` only.
    pub mmap_bytes: u64,
}

/// The PostgreSQL connection pool (one per primary and per replica).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Connections at most.
    pub max_size: usize,
    /// Connections opened at start and kept open.
    pub min_idle: usize,
    /// How long a request waits for a connection before it gets 503, in milliseconds.
    pub acquire_timeout_ms: u64,
    /// Idle connections older than this are closed, in seconds.
    pub idle_timeout_secs: u64,
    /// Connections older than this are replaced, in seconds.
    pub max_lifetime_secs: u64,
    /// `statement_timeout` of every session, in milliseconds.
    pub statement_timeout_ms: u64,
    /// `lock_timeout` of every session, in milliseconds.
    pub lock_timeout_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 16,
            min_idle: 1,
            acquire_timeout_ms: 5_000,
            idle_timeout_secs: 600,
            max_lifetime_secs: 1_800,
            statement_timeout_ms: 30_000,
            lock_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long a stored response is replayed, in seconds.
    pub ttl_secs: u64,
    /// A key still marked in flight after this many seconds is considered abandoned.
    pub lock_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./lintel_data"),
            migrations_dir: PathBuf::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            admin_token: Secret::default(),
            auto_migrate: true,
            database_url: Secret::default(),
            database_replica_urls: Secret::default(),
            database_pool: PoolConfig::default(),
            log: LogConfig::default(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            idempotency: IdempotencyConfig::default(),
            cache: CacheConfig::default(),
            auth: AuthConfig::default(),
            audit: AuditConfig::default(),
            events: EventsConfig::default(),
            jobs: JobsConfig::default(),
            outbound: OutboundConfig::default(),
            files: FilesConfig::default(),
            realtime: RealtimeConfig::default(),
            metrics: MetricsConfig::default(),
            mail: MailConfig::default(),
            tls: TlsConfig {
                client_auth: "required".into(),
                ..TlsConfig::default()
            },
            cors: CorsConfig::default(),
            security: SecurityConfig::default(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit: 2 * 1024 * 1024,
            request_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            compression: true,
            trusted_proxies: Vec::new(),
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            readers: 4,
            synchronous: Synchronous::Normal,
            busy_timeout_ms: 5_000,
            max_group_commit: 256,
            write_queue: 4096,
            read_queue: 4096,
            purge_interval_secs: 300,
            mmap_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 24 * 3600,
            lock_secs: 60,
        }
    }
}

impl Config {
    /// The folder migration files live in.
    pub fn migrations_path(&self) -> PathBuf {
        if self.migrations_dir.as_os_str().is_empty() {
            self.data_dir.join("migrations")
        } else {
            self.migrations_dir.clone()
        }
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("data.db")
    }
}

/// Values given on the command line; each `Some` overrides every other layer.
#[derive(Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrations_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFlags>,
}

/// `--tls-cert` and `--tls-key`.
#[derive(Debug, Default, Serialize)]
pub struct TlsFlags {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The loaded configuration and the keys nobody knows (to be logged once logging is up).
pub struct Loaded {
    pub config: Config,
    pub unknown_keys: Vec<String>,
}

/// Loads the layers from the process's environment. `file` is the explicit `--config`
/// path; without it `lintel.toml` in the working directory is read when present.
pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> anyhow::Result<Loaded> {
    load_from(file, flags, std::env::vars_os())
}

/// `LINTEL_*` variables read by Lintel that are not configuration keys.
const OTHER_VARIABLES: [&str; 1] = [
    // `lintel superuser create` reads the password from it.
    "LINTEL_SUPERUSER_PASSWORD",
];

/// The configuration key a `LINTEL_*` variable names: the rest of the name,
/// lower-cased, with `__` between nesting levels. `None` for other variables.
pub fn env_key(name: &str) -> Option<String> {
    let rest = name
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("LINTEL_"))
        .and_then(|_| name.get(7..))?;
    Some(rest.to_ascii_lowercase().replace("__", "."))
}

/// Keys holding secrets: always text (never parsed as numbers), and each can be given
/// as a file instead, by `LINTEL_<KEY>_FILE` (e.g. `LINTEL_ADMIN_TOKEN_FILE`,
/// `LINTEL_AUTH__JWT_SECRET_FILE`), whose content (trimmed) is the value.
pub fn is_secret_key(key: &str) -> bool {
    matches!(
        key,
        "admin_token"
            | "database_url"
            | "database_replica_urls"
            | "auth.jwt_secret"
            | "metrics.token"
            | "mail.smtp_password"
    ) || key
        .strip_prefix("auth.oidc.")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(name, field)| !name.is_empty() && field == "client_secret")
}

/// The environment layer: every `LINTEL_*` variable as a (key, value) pair, secrets
/// read from their `_FILE`s. Variables that are not configuration keys are left to
/// the unknown-key report, except [`OTHER_VARIABLES`].
fn env_layer(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    defaults: &std::collections::BTreeMap<String, FigValue>,
    unusable: &mut Vec<String>,
) -> anyhow::Result<Vec<(String, FigValue)>> {
    // Text settings take the variable's text as it is (`12345` stays a string); others
    // are parsed (numbers, booleans, `[a, b]` lists).
    let is_text = |key: &str| {
        is_secret_key(key)
            || matches!(defaults.get(key), Some(FigValue::String(..)))
            || key.strip_prefix("auth.oidc.").is_some_and(|rest| {
                rest.split_once('.').is_some_and(|(_, field)| {
                    matches!(
                        field,
                        "issuer" | "client_id" | "collection" | "redirect_url"
                    )
                })
            })
    };
    let mut out: Vec<(String, FigValue)> = Vec::new();
    let mut given: std::collections::BTreeMap<String, String> = Default::default();
    for (name, value) in vars {
        let name = name.to_string_lossy().trim().to_owned();
        if OTHER_VARIABLES
            .iter()
            .any(|o| o.eq_ignore_ascii_case(&name))
        {
            continue;
        }
        let Some(key) = env_key(&name) else { continue };
        if key.split('.').any(str::is_empty) {
            // `LINTEL_`, `LINTEL_A____B`: names no key can have.
            unusable.push(name);
            continue;
        }
        let value = value.to_string_lossy().into_owned();
        let file_of = key
            .strip_suffix("_file")
            .filter(|k| !defaults.contains_key(&key) && is_secret_key(k));
        let (key, value) = match file_of {
            Some(secret) => {
                let text = std::fs::read_to_string(value.trim())
                    .with_context(|| format!("reading {name} ({})", value.trim()))?;
                (secret.to_owned(), FigValue::from(text.trim().to_owned()))
            }
            None if is_text(&key) => (key, FigValue::from(value)),
            None => {
                let Ok(parsed) = value.parse::<FigValue>();
                (key, parsed)
            }
        };
        if let Some(other) = given.insert(key.clone(), name.clone()) {
            anyhow::bail!("{other} and {name} both set {key}; give one of them");
        }
        out.push((key, value));
    }
    Ok(out)
}

/// [`load`] with the environment given (tests pass their own).
pub fn load_from(
    file: Option<&Path>,
    flags: &FlagOverrides,
    env: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> anyhow::Result<Loaded> {
    let defaults: std::collections::BTreeMap<String, FigValue> =
        flatten(&Figment::from(Serialized::defaults(Config::default())))?
            .into_iter()
            .collect();
    let known: BTreeSet<String> = defaults.keys().cloned().collect();
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    match file {
        Some(path) => {
            anyhow::ensure!(
                path.exists(),
                "configuration file {} does not exist",
                path.display()
            );
            figment = figment.merge(Toml::file_exact(path));
        }
        None if Path::new("lintel.toml").exists() => {
            figment = figment.merge(Toml::file_exact("lintel.toml"));
        }
        None => {}
    }
    let mut unusable = Vec::new();
    for (key, value) in env_layer(env, &defaults, &mut unusable)? {
        figment = figment.merge(Serialized::global(&key, value));
    }
    figment = figment.merge(Serialized::globals(flags));

    // Keys that no field takes are reported, not fatal: a typo in an environment
    // variable should not stop a deploy, but it must be visible.
    let given = key_set(&figment)?;
    // Maps keyed by the user's own names (OIDC providers) have no defaults to compare to.
    let open = |k: &str| k.starts_with("auth.oidc.");
    let unknown_keys: Vec<String> = given
        .difference(&known)
        .filter(|k| !open(k))
        .cloned()
        .chain(unusable)
        .collect();
    let mut pruned = Figment::from(Serialized::defaults(Config::default()));
    for (key, value) in flatten(&figment)? {
        if known.contains(&key) || open(&key) {
            pruned = pruned.merge(Serialized::global(&key, value));
        }
    }
    let config: Config = pruned
        .extract()
        .context("invalid configuration (check lintel.toml, LINTEL_* variables and flags)")?;
    Ok(Loaded {
        config,
        unknown_keys,
    })
}

fn flatten(figment: &Figment) -> anyhow::Result<Vec<(String, FigValue)>> {
    let dict = figment
        .extract::<Dict>()
        .context("reading the configuration (check lintel.toml and LINTEL_* variables)")?;
    let mut out = Vec::new();
    walk("", &dict, &mut out);
    Ok(out)
}

fn walk(prefix: &str, dict: &Dict, out: &mut Vec<(String, FigValue)>) {
    for (key, value) in dict {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            FigValue::Dict(_, inner) => walk(&path, inner, out),
            other => out.push((path, other.clone())),
        }
    }
}

fn key_set(figment: &Figment) -> anyhow::Result<BTreeSet<String>> {
    Ok(flatten(figment)?.into_iter().map(|(k, _)| k).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        Vec::new()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn environment_variables_apply_including_files_and_secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let token = secret("admin", "an-admin-token-of-forty-characters-0001\n");
        let db = secret("db", "postgres://u:p@db.internal:5432/app\n");
        let replicas = secret("replicas", "postgres://r1/app,postgres://r2/app");
        let jwt = secret("jwt", "0123456789012345678901234567890123456789");
        let smtp = secret("smtp", "smtp-pass");
        let google = secret("google", "g-secret");
        let vars = env(&[
            ("LINTEL_TLS__CERT_FILE", "/etc/lintel/cert.pem"),
            ("LINTEL_TLS__KEY_FILE", "/etc/lintel/key.pem"),
            ("LINTEL_TLS__CLIENT_CA_FILE", "/etc/lintel/ca.pem"),
            ("LINTEL_AUTH__JWT_ALGORITHM", "EdDSA"),
            ("LINTEL_AUTH__JWT_PRIVATE_KEY_FILE", "/etc/lintel/ed.pem"),
            ("LINTEL_AUTH__JWT_PUBLIC_KEY_FILE", "/etc/lintel/ed.pub"),
            ("LINTEL_ADMIN_TOKEN_FILE", &token),
            ("LINTEL_DATABASE_URL_FILE", &db),
            ("LINTEL_DATABASE_REPLICA_URLS_FILE", &replicas),
            ("LINTEL_AUTH__JWT_SECRET_FILE", &jwt),
            ("LINTEL_MAIL__SMTP_PASSWORD_FILE", &smtp),
            (
                "LINTEL_AUTH__OIDC__GOOGLE__ISSUER",
                "https://accounts.google.com",
            ),
            ("LINTEL_AUTH__OIDC__GOOGLE__CLIENT_SECRET_FILE", &google),
            ("LINTEL_HTTP__BODY_LIMIT", "1234"),
            ("LINTEL_STORE__READ_QUEUE", "7"),
            ("LINTEL_AUDIT__RETENTION_DAYS", "30"),
            ("LINTEL_CACHE__MAX_BYTES", "4096"),
            ("LINTEL_CACHE__POLICY", "lru"),
            (
                "LINTEL_OUTBOUND__ALLOW_HOSTS",
                "[127.0.0.1/32, hooks.internal]",
            ),
            ("LINTEL_JOBS__CONCURRENCY", "0"),
            ("LINTEL_MAIL__SMTP_USERNAME", "12345"),
            // Not configuration: read by `lintel superuser create`.
            ("LINTEL_SUPERUSER_PASSWORD", "whatever"),
            // Neither special nor silently dropped.
            ("LINTEL_TEST_DATABASE_URL", "postgres://x/y"),
            ("LINTEL_TYPO_FILE", "/nowhere"),
            ("LINTEL_HTTP__BODY_LIMT", "1"),
            ("LINTEL_A____B", "1"),
            ("PATH", "/usr/bin"),
        ]);
        let loaded = match load_from(None, &FlagOverrides::default(), vars) {
            Ok(l) => l,
            Err(e) => panic!("{e:#}"),
        };
        let c = &loaded.config;
        assert_eq!(c.outbound.allow_hosts, ["127.0.0.1/32", "hooks.internal"]);
        assert_eq!(c.jobs.concurrency, 0);
        assert_eq!(c.tls.cert_file, PathBuf::from("/etc/lintel/cert.pem"));
        assert_eq!(c.tls.key_file, PathBuf::from("/etc/lintel/key.pem"));
        assert_eq!(c.tls.client_ca_file, PathBuf::from("/etc/lintel/ca.pem"));
        assert_eq!(
            c.auth.jwt_private_key_file,
            PathBuf::from("/etc/lintel/ed.pem")
        );
        assert_eq!(
            c.auth.jwt_public_key_file,
            PathBuf::from("/etc/lintel/ed.pub")
        );
        assert_eq!(c.admin_token.0, "an-admin-token-of-forty-characters-0001");
        assert_eq!(c.database_url.0, "postgres://u:p@db.internal:5432/app");
        assert_eq!(
            c.database_replica_urls.0,
            "postgres://r1/app,postgres://r2/app"
        );
        assert_eq!(
            c.auth.jwt_secret.0,
            "0123456789012345678901234567890123456789"
        );
        assert_eq!(c.mail.smtp_password.0, "smtp-pass");
        assert_eq!(c.mail.smtp_username, "12345", "text stays text");
        let google = c.auth.oidc.get("google").unwrap();
        assert_eq!(google.client_secret.0, "g-secret");
        assert_eq!(google.issuer, "https://accounts.google.com");
        assert_eq!(c.http.body_limit, 1234);
        assert_eq!(c.store.read_queue, 7);
        assert_eq!(c.audit.retention_days, 30);
        assert_eq!(c.cache.max_bytes, 4096);
        assert_eq!(c.cache.policy, CachePolicy::Lru);
        assert_eq!(
            loaded.unknown_keys,
            vec![
                "http.body_limt".to_owned(),
                "test_database_url".to_owned(),
                "typo_file".to_owned(),
                "LINTEL_A____B".to_owned(),
            ]
        );
    }

    #[test]
    fn a_secret_given_twice_or_a_missing_secret_file_stops_loading() {
        let both = env(&[
            ("LINTEL_ADMIN_TOKEN", "x"),
            ("LINTEL_ADMIN_TOKEN_FILE", "/nonexistent"),
        ]);
        assert!(load_from(None, &FlagOverrides::default(), both).is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "from-the-file").unwrap();
        let both = env(&[
            ("LINTEL_ADMIN_TOKEN", "inline"),
            ("LINTEL_ADMIN_TOKEN_FILE", &f.display().to_string()),
        ]);
        let err = load_from(None, &FlagOverrides::default(), both)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("both set admin_token"), "{err}");
        let missing = env(&[("LINTEL_AUTH__JWT_SECRET_FILE", "/nonexistent/jwt")]);
        let err = load_from(None, &FlagOverrides::default(), missing)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("LINTEL_AUTH__JWT_SECRET_FILE"), "{err}");
    }

    /// Every `LINTEL_*` variable the documentation spells out in full names a
    /// configuration key (or a secret file of one), or is one of the few others.
    #[test]
    fn every_documented_variable_is_known() {
        let known = key_set(&Figment::from(Serialized::defaults(Config::default()))).unwrap();
        let docs = [
            include_str!("../../../README.md"),
            include_str!("../../../docs/auth.md"),
            include_str!("../../../docs/edge.md"),
        ];
        let mut checked = 0;
        for doc in docs {
            for (i, _) in doc.match_indices("LINTEL_") {
                let name: String = doc[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                // `LINTEL_AUTH__LOCKOUT_...`: shorthand for a family, not a name.
                if name.ends_with('_') || doc[i + name.len()..].starts_with("...") {
                    continue;
                }
                // The test suite's own (README, "Testing"); the server does not read them.
                if OTHER_VARIABLES.contains(&name.as_str()) || name.starts_with("LINTEL_TEST_") {
                    continue;
                }
                let key = env_key(&name).unwrap();
                let key = if key.starts_with("auth.oidc.") {
                    continue;
                } else {
                    key
                };
                let ok = known.contains(&key)
                    || key
                        .strip_suffix("_file")
                        .is_some_and(|k| is_secret_key(k) && known.contains(k));
                assert!(ok, "{name} is documented but configures nothing");
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} names checked");
    }

    #[test]
    fn secret_debug_hides_value() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn file_values_apply_and_unknown_keys_are_reported() {
        let dir = std::env::temp_dir().join(format!("lintel-cfg-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("lintel.toml");
        let written = std::fs::write(
            &path,
            "listen = \"127.0.0.1:7001\"\nsurprise = 1\n[http]\nbody_limit = 1234\n[store]\nsynchronous = \"full\"\n",
        );
        assert!(written.is_ok());
        let flags = FlagOverrides {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 7002))),
            ..Default::default()
        };
        let loaded = load_from(Some(&path), &flags, no_env());
        let _ = std::fs::remove_dir_all(&dir);
        let Ok(loaded) = loaded else {
            panic!("configuration did not load");
        };
        assert_eq!(loaded.config.http.body_limit, 1234, "the file applies");
        assert_eq!(loaded.config.store.synchronous, Synchronous::Full);
        assert_eq!(loaded.config.listen.port(), 7002, "flags win over the file");
        assert_eq!(loaded.unknown_keys, vec!["surprise".to_owned()]);
        assert!(
            load_from(
                Some(Path::new("/nonexistent/lintel.toml")),
                &FlagOverrides::default(),
                no_env()
            )
            .is_err()
        );
    }

    #[test]
    fn flags_override_defaults() {
        let flags = FlagOverrides {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9999))),
            ..Default::default()
        };
        let loaded = load_from(None, &flags, no_env());
        assert!(loaded.is_ok());
        if let Ok(loaded) = loaded {
            assert_eq!(loaded.config.listen.port(), 9999);
            assert_eq!(loaded.config.http.body_limit, 2 * 1024 * 1024);
        }
    }
}
