//! The application state: the one value every handler receives ([`AppState`]). It
//! holds the [`Runtime`] capabilities run on (and derefs to it, so `&state` is a
//! `&Runtime` wherever one is wanted) and what only the HTTP edge uses: the admin
//! token's digest, the OpenAPI document, trusted proxies and the TLS certificate. It
//! is built by start-up (`crate::app`) and holds no start-up or shutdown code.

use std::ops::Deref;
use std::sync::Arc;

use crate::ids::{constant_time_eq, token_digest};
pub use crate::runtime::Runtime;
pub(crate) use crate::runtime::load_catalog;

/// The state every handler receives; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub struct Inner {
    /// What capabilities run on.
    pub rt: Runtime,
    /// SHA-256 of the admin token.
    pub(crate) admin_digest: [u8; 32],
    /// The OpenAPI document: the static part, and the whole as of the current catalog.
    pub openapi: crate::http::openapi::Document,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<crate::http::client_ip::Cidr>,
    /// The TLS certificate in use, when serving HTTPS.
    pub tls: Option<Arc<crate::http::serve::Tls>>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Deref for Inner {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.rt
    }
}

impl AppState {
    pub fn admin_token_matches(&self, token: &str) -> bool {
        constant_time_eq(&token_digest(token), &self.admin_digest)
    }

    /// The runtime, owned (for tasks that outlive the request).
    pub fn runtime(&self) -> Runtime {
        self.rt.clone()
    }
}
