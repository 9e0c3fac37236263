//! Signing in: `POST /v1/auth/login` with a password (or a pending second factor),
//! the sign-in lockout (`SignInGuard`), and opening a token or cookie session.

use serde_json::json;

use crate::access::Caller;
use crate::auth::audit;
use crate::auth::error::AuthError;
use crate::ratelimit::lockout::{Gate, Policy};
use crate::runtime::Runtime;

pub(crate) fn invalid_credentials() -> AuthError {
    AuthError::InvalidCredentials
}

/// Sign-in protection for one account and the client address (`ratelimit/lockout.rs`):
/// every way of signing in that checks a secret (a password, a second-factor code)
/// goes through the same gate and counts its failures the same way.
pub struct SignInGuard {
    collection: String,
    email: String,
    /// The account's and the address's counters (`lockout::signin_keys`).
    pub(crate) keys: [(String, Policy); 2],
}

impl SignInGuard {
    pub fn new(state: &Runtime, caller: &Caller, collection: &str, email: &str) -> Self {
        Self {
            collection: collection.to_owned(),
            email: email.to_owned(),
            keys: crate::ratelimit::lockout::signin_keys(
                &state.config.auth,
                collection,
                email,
                caller.ip.as_deref(),
            ),
        }
    }

    fn keys(&self) -> [(&str, Policy); 2] {
        [
            (self.keys[0].0.as_str(), self.keys[0].1),
            (self.keys[1].0.as_str(), self.keys[1].1),
        ]
    }

    /// Before any secret is checked: `429 signin_locked` while the account or the
    /// address is locked; a delay after a few failures.
    pub async fn gate(&self, state: &Runtime, caller: &Caller) -> Result<(), AuthError> {
        match state.login_guard.gate(&self.keys(), state.clock.now_ms()) {
            Gate::Locked { retry_after_ms } => {
                audit::record(
                    state,
                    audit::Event::new("login_refused_locked", "denied")
                        .collection(self.collection.clone())
                        .ip(caller.ip.clone())
                        .detail(json!({ "email": self.email })),
                );
                Err(AuthError::Locked {
                    retry_after: retry_after_ms.div_ceil(1000).max(1),
                })
            }
            Gate::Proceed { delay_ms } if delay_ms > 0 => {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                Ok(())
            }
            Gate::Proceed { .. } => Ok(()),
        }
    }

    /// A wrong secret: counted toward the lockout, each lock it causes audited, and the
    /// failure itself audited with its reason.
    pub fn failed(&self, state: &Runtime, caller: &Caller, subject: Option<&str>, reason: &str) {
        for key in state.login_guard.failed(&self.keys(), state.clock.now_ms()) {
            audit::record(
                state,
                audit::Event::new("signin_locked", "locked")
                    .collection(self.collection.clone())
                    .ip(caller.ip.clone())
                    .detail(json!({ "key": key, "lockSecs": state.config.auth.lockout_secs })),
            );
        }
        audit::record(
            state,
            audit::Event::new("login_failed", "denied")
                .collection(self.collection.clone())
                .subject(subject.unwrap_or_default())
                .ip(caller.ip.clone())
                .detail(json!({ "reason": reason })),
        );
    }
}
