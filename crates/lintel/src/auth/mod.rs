//! Identity and access: accounts in auth collections and superusers, sign-in with
//! cookie sessions or access and refresh tokens, API keys, access rules, second
//! factors, email flows, single sign-on and the audit log. See docs/auth.md.

pub mod accounts;
pub mod apikeys;
pub mod audit;
pub mod caller;
pub mod cookies;
pub mod error;
pub mod mail;
pub mod mfa;
pub mod oidc;
pub mod password;
pub mod purpose;
pub mod routes;
pub mod sessions;
pub mod signin;
pub mod superusers;
pub mod tokens;

use std::sync::Arc;

/// The name superusers go by wherever an auth collection is named.
pub use crate::access::SUPERUSERS;

/// What the identity code keeps for the life of the process.
pub struct AuthRuntime {
    pub keys: tokens::Keys,
    pub sessions: Arc<dyn sessions::SessionStore>,
    /// Password hashing on a bounded share of the blocking pool.
    pub hasher: password::Hasher,
}

impl AuthRuntime {
    pub fn new(
        keys: tokens::Keys,
        hasher: password::Hasher,
        store: Arc<dyn crate::store::Store>,
    ) -> Self {
        Self {
            keys,
            sessions: Arc::new(sessions::SqlSessions::new(store)),
            hasher,
        }
    }
}
