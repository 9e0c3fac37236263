//! Start-up (store, migrations, admin token, catalog), the listener with graceful
//! shutdown, and background upkeep. The state it builds is [`crate::state::AppState`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Layer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;

use crate::config::Config;
use crate::error::ApiError;
use crate::ids::token_digest;
use crate::migrations::VersionClock;
use crate::runtime::{Runtime, RuntimeInner};
pub use crate::state::AppState;
use crate::state::{Inner, load_catalog};
use crate::store::Store;
use crate::store::sqlite::SqliteStore;

/// Opens the store for `config`: PostgreSQL when `database_url` is set, else SQLite
/// under the data folder. Either way the data folder (migrations, the admin token) is
/// created first, readable by this user only.
pub async fn open_store(
    config: &Config,
    metrics: &crate::telemetry::Metrics,
) -> anyhow::Result<Arc<dyn Store>> {
    let dir = config.data_dir.clone();
    tokio::task::spawn_blocking(move || create_private_dir(&dir)).await??;
    if !config.database_url.0.is_empty() {
        let store = crate::store::postgres::PgStore::open(
            &config.database_url.0,
            &config.database_replica_urls.0,
            &config.database_pool,
            metrics.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("opening the PostgreSQL store: {e}"))?;
        return Ok(Arc::new(store));
    }
    let path = config.database_path();
    let store_cfg = config.store.clone();
    let metrics = metrics.clone();
    let store = tokio::task::spawn_blocking(move || -> anyhow::Result<SqliteStore> {
        SqliteStore::open(&path, &store_cfg, metrics).map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await??;
    Ok(Arc::new(store))
}

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// Creates a folder (and its missing parents) readable by this user only (0700). An
/// existing folder is left as it is, with a warning when others may enter it. Blocking.
/// This instance's lasting id, kept in `<data_dir>/instance-id` (made on first start),
/// so jobs whose files live here find their way back after a restart.
fn instance_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_owned();
        if crate::schema::kinds::is_record_id(&id) {
            return Ok(id);
        }
    }
    let id = crate::ids::record_id();
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data folder {}", dir.display()))?;
    if let Ok(meta) = std::fs::metadata(dir)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %dir.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the data folder is open to other users; chmod 700 it"
        );
    }
    Ok(())
}

/// The generated HS256 signing key. On SQLite it lives in `jwt-secret` (mode 0600)
/// beside the database, never in it, so a copy of the database file cannot mint
/// tokens (a key an earlier version kept in the database moves to the file). On
/// PostgreSQL every instance must share it, so it stays in the database, guarded by
/// the database's own access control (or set `auth.jwt_secret` to keep it out).
async fn signing_secret(config: &Config, store: &dyn Store) -> anyhow::Result<String> {
    if !config.database_url.0.is_empty() {
        return crate::auth::tokens::stored_secret(store).await;
    }
    let legacy = crate::auth::tokens::take_stored_secret(store).await?;
    let path = config.data_dir.join("jwt-secret");
    let secret = tokio::task::spawn_blocking(move || match legacy {
        Some(s) if !path.exists() => {
            write_secret(&path, &s)?;
            Ok(s)
        }
        _ => secret_file(&path, "the token signing key"),
    })
    .await??;
    crate::auth::tokens::forget_stored_secret(store).await?;
    Ok(secret)
}

/// The admin token: configured, or read from / generated into `<data-dir>/admin-token`.
/// Refuses one shorter than [`MIN_ADMIN_TOKEN_LEN`]. Blocking.
fn admin_token(config: &Config) -> anyhow::Result<String> {
    let (token, source) = if config.admin_token.0.is_empty() {
        let path = config.data_dir.join("admin-token");
        (
            secret_file(&path, "the admin token")?,
            path.display().to_string(),
        )
    } else {
        (
            config.admin_token.0.clone(),
            "admin_token (LINTEL_ADMIN_TOKEN / LINTEL_ADMIN_TOKEN_FILE)".to_owned(),
        )
    };
    anyhow::ensure!(
        token.chars().count() >= MIN_ADMIN_TOKEN_LEN,
        "the admin token from {source} is {} characters long; it must have at least {MIN_ADMIN_TOKEN_LEN} (leave admin_token unset to have one generated)",
        token.chars().count()
    );
    Ok(token)
}

/// Why a secret file's mode is unsafe: readable or writable by group or others.
fn loose_mode(mode: u32) -> Option<String> {
    (mode & 0o077 != 0).then(|| format!("{:o}", mode & 0o777))
}

/// A secret kept in a file (mode 0600): read, or generated on first use. An existing
/// file that others may read is used, with a warning. Blocking.
fn secret_file(path: &Path, what: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => {
            if let Ok(meta) = std::fs::metadata(path)
                && let Some(mode) = loose_mode(meta.permissions().mode())
            {
                tracing::warn!(
                    path = %path.display(),
                    %mode,
                    "the file holding {what} is open to other users; chmod 600 it"
                );
            }
            return Ok(t.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let token = crate::ids::secret_token();
    write_secret(path, &token)?;
    tracing::info!(path = %path.display(), "generated {what}; it is in this file");
    Ok(token)
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    /// The separate metrics listener's address, when `metrics.listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The plain-HTTP redirect listener's address, when `tls.redirect_listen` is set.
    pub redirect_addr: Option<SocketAddr>,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, drains in-flight requests (up to the grace period), closes the
    /// store, and waits for all of it.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Waits until the server stops (after [`Running::shutdown`] or a fatal error).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    pub fn trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Starts Lintel: opens the store, applies pending migrations, binds the listener.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, Arc::new(crate::clock::SystemClock::new())).await
}

/// [`start`] with the clock the server reads the time from (a test's
/// [`ManualClock`](crate::clock::ManualClock)).
pub async fn start_with(
    config: Config,
    clock: Arc<dyn crate::clock::Clock>,
) -> anyhow::Result<Running> {
    start_on(config, clock, None).await
}

/// [`start_with`] on a listener the caller already bound (a socket handed over by a
/// service manager, or a test that must know the port before the server starts);
/// `config.listen` is then not used.
pub async fn start_on(
    config: Config,
    clock: Arc<dyn crate::clock::Clock>,
    listener: Option<std::net::TcpListener>,
) -> anyhow::Result<Running> {
    // Before the store is touched: a refused token leaves nothing half-started.
    let token = {
        let cfg = config.clone();
        tokio::task::spawn_blocking(move || admin_token(&cfg)).await??
    };
    let metrics = crate::telemetry::Metrics::new();
    let store = open_store(&config, &metrics).await?;
    if config.auto_migrate {
        let applied =
            crate::migrations::apply_pending(store.as_ref(), &config.migrations_path()).await?;
        if !applied.is_empty() {
            tracing::info!(count = applied.len(), "applied pending migrations");
        }
    }
    let keys = {
        let cfg = config.auth.clone();
        let stored =
            if cfg.jwt_algorithm.eq_ignore_ascii_case("HS256") && cfg.jwt_secret.0.is_empty() {
                signing_secret(&config, store.as_ref()).await?
            } else {
                String::new()
            };
        tokio::task::spawn_blocking(move || crate::auth::tokens::Keys::load(&cfg, &stored))
            .await??
    };
    let hasher = {
        let cfg = config.auth.clone();
        tokio::task::spawn_blocking(move || crate::auth::password::Hasher::new(&cfg)).await??
    };
    let catalog = load_catalog(store.as_ref()).await?;
    let versions = VersionClock::default();
    for m in store
        .applied_migrations()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        versions.seed(&m.version);
    }
    for f in crate::migrations::scan(&config.migrations_path())? {
        versions.seed(&f.migration.version);
    }
    let (router, openapi) = crate::http::api();
    let openapi =
        crate::http::openapi::Document::new(&openapi, config.auth.password_min_length.max(8))
            .context("serialising the OpenAPI document")?;
    // Reads from a replica can predate this process's own writes; a cache filled from
    // them could keep that old state, so with replicas the cache stays off.
    let config_cache = if config.database_replica_urls.0.trim().is_empty() {
        config.cache.clone()
    } else {
        crate::config::CacheConfig {
            max_bytes: 0,
            ..config.cache.clone()
        }
    };
    // One TLS implementation for the whole process (ring); installing it twice (a
    // second server in one process) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let instance = {
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || instance_id(&dir)).await??
    };
    let jobs = crate::jobs::JobsRuntime::new(&config, instance)
        .context("configuring outbound requests")?;
    let files = {
        let dir = config.data_dir.join("files");
        let uploads = dir.join("uploads");
        let cfg = config.files.clone();
        let made = uploads.clone();
        let blobs = tokio::task::spawn_blocking(move || open_blobs(&cfg, &dir, &made)).await??;
        let keys = crate::files::crypt::MasterKeys::from_config(&config.files.encryption_keys)?;
        crate::files::FilesRuntime::new(blobs, uploads, keys)
    };
    let store_for_auth = store.clone();
    let trusted_proxies = crate::http::client_ip::parse_all(&config.http.trusted_proxies)?;
    let tls = if config.tls.cert_file.as_os_str().is_empty() {
        None
    } else {
        let cfg = config.tls.clone();
        Some(Arc::new(
            tokio::task::spawn_blocking(move || crate::http::serve::Tls::load(&cfg)).await??,
        ))
    };
    crate::ratelimit::validate(&config.rate_limit.rules)?;
    anyhow::ensure!(
        config.metrics.token.0.is_empty()
            || config.metrics.token.0.chars().count() >= MIN_ADMIN_TOKEN_LEN,
        "metrics.token must be at least {MIN_ADMIN_TOKEN_LEN} characters"
    );
    let limiter = config.rate_limit.enabled.then(|| {
        crate::ratelimit::Limiter::new(
            config.rate_limit.rules.clone(),
            Box::new(crate::ratelimit::MemoryStore::new(
                config.rate_limit.max_keys,
            )),
            clock.clone(),
            &metrics,
        )
    });
    let mailer_cfg = config.mail.clone();
    let denial_window_secs = config.audit.denial_window_secs;
    let rt = Runtime(Arc::new(RuntimeInner {
        config,
        clock,
        store,
        catalog: RwLock::new((catalog.0, Arc::new(catalog.1), 0)),
        reload_tickets: std::sync::atomic::AtomicU64::new(0),
        versions,
        cache: crate::cache::ReadCache::with_metrics(&config_cache, &metrics),
        metrics,
        auth: crate::auth::AuthRuntime::new(keys, hasher, store_for_auth),
        mailer: crate::auth::mail::Mailer::from_config(&mailer_cfg)?.map(Arc::new),
        http_client,
        oidc_providers: Default::default(),
        limiter,
        login_guard: Default::default(),
        tasks: crate::tasks::Tasks::new(),
        denials: crate::auth::audit::Denials::new(denial_window_secs),
        events: crate::events::EventsRuntime::new(),
        jobs,
        files,
        realtime: Default::default(),
        yjs: Default::default(),
    }));
    let state = AppState(Arc::new(Inner {
        rt,
        admin_digest: token_digest(&token),
        openapi,
        trusted_proxies,
        tls: tls.clone(),
    }));
    crate::collections::ensure_users(&state).await?;
    let router = crate::http::finish(router, state.clone());

    let edge = axum::middleware::from_fn(crate::http::edge::edge);
    let version = axum::middleware::from_fn(crate::http::edge::version);
    let panic = CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
        tracing::error!("a request handler panicked");
        axum::response::IntoResponse::into_response(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The server failed to handle the request.",
        ))
    });
    // Inside `edge`, so a panic's problem gets the request id like any other error.
    let service = edge.layer(panic.layer(version.layer(router)));
    let app: axum::Router = if state.config.http.compression {
        axum::Router::new().fallback_service(CompressionLayer::new().layer(service))
    } else {
        axum::Router::new().fallback_service(service)
    };

    let listener = match listener {
        Some(l) => {
            l.set_nonblocking(true)
                .context("making the handed-over listener non-blocking")?;
            tokio::net::TcpListener::from_std(l).context("using the handed-over listener")?
        }
        None => tokio::net::TcpListener::bind(state.config.listen)
            .await
            .with_context(|| format!("listening on {}", state.config.listen))?,
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, tls = state.tls.is_some(), "listening");
    let redirect = if state.tls.is_some() && !state.config.tls.redirect_listen.is_empty() {
        let l = tokio::net::TcpListener::bind(&state.config.tls.redirect_listen)
            .await
            .with_context(|| {
                format!(
                    "listening on {} (tls.redirect_listen)",
                    state.config.tls.redirect_listen
                )
            })?;
        tracing::info!(addr = %l.local_addr()?, "redirecting plain HTTP to HTTPS");
        Some(l)
    } else {
        None
    };

    let metrics_listener = if state.config.metrics.listen.is_empty() {
        None
    } else {
        let l = tokio::net::TcpListener::bind(&state.config.metrics.listen)
            .await
            .with_context(|| {
                format!(
                    "listening on {} (metrics.listen)",
                    state.config.metrics.listen
                )
            })?;
        tracing::info!(addr = %l.local_addr()?, "serving metrics");
        Some(l)
    };
    let redirect_addr = match &redirect {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };

    let (shutdown, rx) = watch::channel(false);
    let grace = Duration::from_millis(state.config.http.shutdown_grace_ms);
    let task_state = state.clone();
    // A shared store (PostgreSQL) reports what other instances change; until its feed
    // is up, the cache serves nothing.
    let changes = state.store.watch_changes().map(|feed| {
        state.cache.suspend();
        tokio::spawn(follow_changes(state.clone(), feed, rx.clone()))
    });
    let task = tokio::spawn(async move {
        let upkeep = tokio::spawn(upkeep(task_state.clone(), rx.clone()));
        let workers = tokio::spawn(crate::jobs::runner::run(
            Runtime::clone(&task_state),
            rx.clone(),
        ));
        let fan_out = tokio::spawn(crate::webhooks::dispatch::run(
            Runtime::clone(&task_state),
            rx.clone(),
        ));
        let reaper = tokio::spawn(crate::files::reaper::run(
            Runtime::clone(&task_state),
            rx.clone(),
        ));
        let realtime = tokio::spawn(crate::realtime::run(
            Runtime::clone(&task_state),
            rx.clone(),
        ));
        let yjs = tokio::spawn(crate::yjs::run(Runtime::clone(&task_state), rx.clone()));
        // Search indexes that lag their settings get their rebuild job.
        let ensure_state = Runtime::clone(&task_state);
        tokio::spawn(async move { crate::search::ensure_all(&ensure_state).await });
        let sequencer = tokio::spawn(crate::events::run_sequencer(
            Runtime::clone(&task_state),
            Duration::from_millis(task_state.config.events.poll_ms.max(10)),
            rx.clone(),
        ));
        let purge = (task_state.config.store.purge_interval_secs > 0)
            .then(|| tokio::spawn(purge_loop(task_state.clone(), rx.clone())));
        let mut deadline = rx.clone();
        let mut announce = rx.clone();
        let signalled = Arc::new(std::sync::OnceLock::new());
        let signalled_at = signalled.clone();
        tokio::spawn(async move {
            if announce.wait_for(|s| *s).await.is_ok() {
                let _ = signalled_at.set(tokio::time::Instant::now());
                tracing::info!("shutting down: no new connections, draining requests");
            }
        });
        if let Some(l) = redirect {
            tokio::spawn(crate::http::serve::redirect(l, addr.port(), rx.clone()));
        }
        if let Some(l) = metrics_listener {
            let router = crate::http::system::metrics_listener(task_state.clone());
            let mut stop = rx.clone();
            tokio::spawn(async move {
                let done = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(l, router).with_graceful_shutdown(done).await {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            });
        }
        let server = crate::http::serve::serve(
            listener,
            app,
            task_state.config.http.clone(),
            task_state.tls.clone(),
            rx.clone(),
        );
        tokio::select! {
            _ = server => {}
            _ = async move {
                let _ = deadline.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "grace period over; dropping remaining connections");
            }
        }
        upkeep.abort();
        // Background work (audit rows, mail, writes of dropped requests) gets what is
        // left of the grace period to finish before the store closes.
        let left = signalled
            .get()
            .map_or(grace, |at| grace.saturating_sub(at.elapsed()));
        let started = tokio::time::Instant::now();
        // Lintel's workers hand back the jobs they still hold.
        let mut workers = workers;
        if tokio::time::timeout(left, &mut workers).await.is_err() {
            workers.abort();
        }
        if let Some(mut p) = purge {
            // It stops between batches once told to.
            if tokio::time::timeout(left, &mut p).await.is_err() {
                p.abort();
            }
        }
        // Open documents write their JSON and close their rooms.
        if tokio::time::timeout(left, yjs).await.is_err() {
            tracing::warn!("documents still closing after the grace period");
        }
        task_state
            .tasks
            .wait_idle(left.saturating_sub(started.elapsed()))
            .await;
        // Rows of coalesced rule denials get their final counts (after the rows
        // themselves were written above).
        crate::auth::audit::flush_denials(&task_state, true);
        let unfinished = task_state
            .tasks
            .wait_idle(left.saturating_sub(started.elapsed()))
            .await;
        if unfinished > 0 {
            tracing::warn!(
                tasks = unfinished,
                "background tasks still running after the grace period; closing the store anyway"
            );
        }
        if let Some(c) = changes {
            c.abort();
        }
        sequencer.abort();
        fan_out.abort();
        reaper.abort();
        realtime.abort();
        task_state.store.close().await;
        tracing::info!("store closed; stopped");
    });
    Ok(Running {
        addr,
        metrics_addr,
        redirect_addr,
        state,
        shutdown,
        task,
    })
}

/// Applies other instances' changes to the read cache and the catalog.
async fn follow_changes(
    state: AppState,
    mut feed: tokio::sync::mpsc::Receiver<crate::store::ChangeNotice>,
    mut stop: watch::Receiver<bool>,
) {
    use crate::store::ChangeNotice;
    loop {
        let notice = tokio::select! {
            n = feed.recv() => n,
            _ = stop.wait_for(|s| *s) => return,
        };
        match notice {
            None => return,
            Some(ChangeNotice::Record { collection, id }) => {
                state.cache.written(&collection, &id, None).await
            }
            Some(ChangeNotice::All) => state.cache.clear(),
            Some(ChangeNotice::Jobs) => state.jobs.wake.notify_one(),
            Some(ChangeNotice::Catalog) => {
                if let Err(e) = state.reload_catalog_forced().await {
                    tracing::warn!(error = %e, "reloading the catalog after another instance's change failed");
                }
            }
            Some(ChangeNotice::Lost) => state.cache.suspend(),
            Some(ChangeNotice::Listening) => {
                // Catch up on what was missed while the feed was down.
                if let Err(e) = state.reload_catalog_forced().await {
                    tracing::warn!(error = %e, "reloading the catalog failed");
                }
                state.cache.resume();
            }
        }
    }
}

/// Periodic housekeeping: metric upkeep, limiter and lockout sweeps, certificate
/// reloads, the counts of coalesced rule denials.
async fn upkeep(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        state.metrics.run_upkeep();
        if let Some(l) = &state.limiter {
            l.sweep();
        }
        if let Some(tls) = state.tls.clone()
            && let Ok(true) = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await
        {
            state
                .metrics
                .scoped(|| metrics::counter!("lintel_tls_reloads_total").increment(1));
        }
        state.login_guard.sweep(
            state.clock.now_ms(),
            (state
                .config
                .auth
                .lockout_window_secs
                .max(state.config.auth.lockout_secs)
                * 1000) as i64,
        );
        crate::auth::audit::flush_denials(&state, false);
    }
}

/// Deletes expired rows every `store.purge_interval_secs` (the first run at start),
/// until shutdown. With Lintel's workers on, each run is a `housekeeping` job (one at
/// a time across instances, by its unique key); without them it runs here, stopping
/// between batches at shutdown.
async fn purge_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(state.config.store.purge_interval_secs.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let policy = crate::store::purge::PurgePolicy::from_config(&state.config);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if state.config.jobs.concurrency > 0 {
            let mut job = crate::jobs::NewJob::of("housekeeping", serde_json::Value::Null);
            job.queue = "system".into();
            job.unique_key = Some("housekeeping".into());
            job.max_attempts = 3;
            if let Err(e) =
                crate::jobs::service::enqueue(&state, &job, crate::store::WriteMeta::default())
                    .await
            {
                tracing::warn!(error = %e, "queueing the housekeeping job failed");
            }
            continue;
        }
        let stopping = stop.clone();
        let keep_going = move || !*stopping.borrow();
        let started = std::time::Instant::now();
        match crate::store::purge::purge_expired(
            state.store.as_ref(),
            &policy,
            state.clock.now_ms(),
            keep_going,
        )
        .await
        {
            Ok(r) if r.total() == 0 => {}
            Ok(r) => tracing::info!(
                oauth_states = r.oauth_states,
                auth_tokens = r.auth_tokens,
                sessions = r.sessions,
                refresh_tokens = r.refresh_tokens,
                idempotency = r.idempotency,
                audit = r.audit,
                events = r.events,
                jobs = r.jobs,
                ms = started.elapsed().as_millis() as u64,
                "purged expired rows"
            ),
            Err(e) => tracing::warn!(error = %e, "purging expired rows failed"),
        }
    }
}

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let running = start(config).await?;
    let trigger = running.trigger();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = trigger.send(true);
    });
    running.wait().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// The blob store `files.backend` names, with the uploads folder made. Blocking.
fn open_blobs(
    cfg: &crate::config::FilesConfig,
    dir: &std::path::Path,
    uploads: &std::path::Path,
) -> anyhow::Result<Arc<dyn crate::files::blob::Blobs>> {
    std::fs::create_dir_all(uploads).context("making the uploads folder")?;
    match cfg.backend.as_str() {
        "local" | "" => Ok(Arc::new(
            crate::files::blob::LocalDisk::open(dir).context("opening the files folder")?,
        )),
        #[cfg(feature = "s3")]
        "s3" => Ok(Arc::new(
            crate::files::s3::S3::open(&cfg.s3, dir).context("opening the files bucket")?,
        )),
        #[cfg(not(feature = "s3"))]
        "s3" => anyhow::bail!(
            "files.backend = \"s3\" needs a build with the s3 feature (cargo build --features s3)"
        ),
        other => anyhow::bail!("files.backend must be \"local\" or \"s3\", not {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn data_folders_are_private_and_loose_secret_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("b");
        create_private_dir(&dir).unwrap();
        for d in [tmp.path().join("a"), dir.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        assert_eq!(loose_mode(0o100600), None);
        assert_eq!(loose_mode(0o100400), None);
        assert_eq!(loose_mode(0o100640).as_deref(), Some("640"));
        assert_eq!(loose_mode(0o100604).as_deref(), Some("604"));
    }

    #[test]
    fn short_admin_tokens_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: tmp.path().to_path_buf(),
            ..Config::default()
        };
        config.admin_token = crate::config::Secret("x".repeat(MIN_ADMIN_TOKEN_LEN - 1));
        let err = admin_token(&config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("at least 32"), "{err}");
        config.admin_token = crate::config::Secret("x".repeat(MIN_ADMIN_TOKEN_LEN));
        assert!(admin_token(&config).is_ok());
        // A short token in the data folder's file is refused too.
        config.admin_token = crate::config::Secret::default();
        std::fs::write(tmp.path().join("admin-token"), "short\n").unwrap();
        assert!(admin_token(&config).is_err());
        std::fs::remove_file(tmp.path().join("admin-token")).unwrap();
        let generated = admin_token(&config).unwrap();
        assert!(generated.len() >= MIN_ADMIN_TOKEN_LEN);
    }
}
