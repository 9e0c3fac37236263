//! What capabilities run on ([`Runtime`]): the configuration, clock, store, catalog,
//! read cache, background tasks, metrics, and the runtimes of the capabilities (auth
//! keys and sessions, mail, identity providers, the rate limiter and lockout, the
//! audit log's denial window). The application state (`crate::state::AppState`)
//! holds one and adds what only the HTTP edge uses; capability code takes
//! `&Runtime`, so it needs nothing from the edge.

use std::ops::Deref;
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::migrations::VersionClock;
use crate::schema::{Catalog, Collection};
use crate::store::Store;

/// Shared by every request and background task; cheap to clone.
#[derive(Clone)]
pub struct Runtime(pub(crate) Arc<RuntimeInner>);

pub struct RuntimeInner {
    /// The configuration the process started with.
    pub config: Config,
    /// Where request handling reads the time (see [`crate::clock`]).
    pub clock: Arc<dyn crate::clock::Clock>,
    /// The storage engine.
    pub store: Arc<dyn Store>,
    /// The collections and their generation, swapped whole after each schema change.
    pub(crate) catalog: RwLock<(i64, Arc<Catalog>, u64)>,
    /// Numbers catalog reloads in the order they start reading (see `load_catalog_into`).
    pub(crate) reload_tickets: std::sync::atomic::AtomicU64,
    /// Makes migration versions.
    pub versions: VersionClock,
    /// Records and counts read from the store, kept until a write changes them.
    pub cache: crate::cache::ReadCache,
    /// Renders `/metrics`.
    pub metrics: crate::telemetry::Metrics,
    /// Token keys and the session store.
    pub auth: crate::auth::AuthRuntime,
    /// Outgoing mail, when an SMTP server is configured.
    pub mailer: Option<Arc<crate::auth::mail::Mailer>>,
    /// Outgoing HTTP (identity providers).
    pub http_client: reqwest::Client,
    /// The identity providers' discovery documents and key sets, kept for a while.
    pub oidc_providers: crate::auth::oidc::ProviderCache,
    /// Rate-limit rules and counters (None when turned off).
    pub limiter: Option<crate::ratelimit::Limiter>,
    /// Failed sign-ins per account and address.
    pub login_guard: crate::ratelimit::lockout::LoginGuard,
    /// Background tasks (audit writes, mail, ...), waited for at shutdown.
    pub tasks: crate::tasks::Tasks,
    /// Recent rule denials, coalesced into one audit row per caller and window.
    pub denials: crate::auth::audit::Denials,
    /// The event log's bus (consumers learn the log grew).
    pub events: crate::events::EventsRuntime,
    /// The job queue's wake-ups, backoff and outbound client.
    pub jobs: crate::jobs::JobsRuntime,
    /// Where uploaded files' bytes live.
    pub files: crate::files::FilesRuntime,
    /// Live subscriptions' clients.
    pub realtime: crate::realtime::RealtimeRuntime,
    pub yjs: crate::yjs::YjsRuntime,
}

impl Deref for Runtime {
    type Target = RuntimeInner;
    fn deref(&self) -> &RuntimeInner {
        &self.0
    }
}

impl Runtime {
    /// The current catalog (a snapshot; the lock is released on return).
    pub fn catalog(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(c) => c.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Re-reads the collections from the store.
    pub async fn reload_catalog(&self) -> anyhow::Result<()> {
        self.load_catalog_into(false).await
    }

    /// Re-reads the collections and installs them even if the generation went down
    /// (a migration reverted by another process).
    pub async fn reload_catalog_forced(&self) -> anyhow::Result<()> {
        self.load_catalog_into(true).await
    }

    async fn load_catalog_into(&self, force: bool) -> anyhow::Result<()> {
        let ticket = self
            .reload_tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let (generation, catalog) = load_catalog(self.store.as_ref()).await?;
        let mut slot = match self.catalog.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Two reloads can finish out of order: none replaces what a reload that started
        // reading after it installed (a forced one, for a generation that went down,
        // included), or it would bring back a catalog from before that change.
        let wins = ticket > slot.2 && (force || generation >= slot.0);
        if wins {
            *slot = (generation, Arc::new(catalog), ticket);
            self.cache.clear();
        }
        Ok(())
    }
}

pub(crate) async fn load_catalog(store: &dyn Store) -> anyhow::Result<(i64, Catalog)> {
    let (stored, generation) = store
        .load_catalog()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut catalog = Catalog::default();
    for s in stored {
        let name = s.spec.name.clone();
        let coll = Collection::compile(s.spec, s.created, s.updated)
            .map_err(|e| anyhow::anyhow!("collection {name} cannot be compiled: {e}"))?;
        catalog.collections.insert(name, Arc::new(coll));
    }
    Ok((generation, catalog))
}
