//! Passwords: the rules a new password must meet (length, not a common password, not
//! the email), and argon2id hashing and verification, run on the blocking pool (a
//! bounded number at a time) so a hash never stalls the async workers.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

use tokio::sync::Semaphore;

use crate::config::AuthConfig;

/// The most common passwords of 8 characters or more, lower-cased (from the list
/// Django ships, itself from public breach corpora).
const COMMON: &str = include_str!("common-passwords.txt");

/// Longest password accepted: argon2 hashes any length, but a megabyte password is a
/// denial-of-service, not a password.
pub const MAX_LENGTH: usize = 256;

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| COMMON.lines().map(str::trim).collect())
}

/// Checks a new password; the error is a field error code and message.
pub fn check(cfg: &AuthConfig, password: &str, email: &str) -> Result<(), (&'static str, String)> {
    let min = cfg.password_min_length.max(8);
    let len = password.chars().count();
    if len < min {
        return Err(("too_short", format!("must be at least {min} characters")));
    }
    if password.len() > MAX_LENGTH {
        return Err(("too_long", format!("must be at most {MAX_LENGTH} bytes")));
    }
    let lower = password.to_lowercase();
    if common().contains(lower.as_str()) {
        return Err((
            "too_common",
            "is one of the most common passwords; choose another".into(),
        ));
    }
    let local = email.split('@').next().unwrap_or("").to_lowercase();
    if lower == email.to_lowercase() || (local.len() >= 4 && lower == local) {
        return Err(("like_email", "must not be the email address".into()));
    }
    Ok(())
}

/// Why a password operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordError {
    /// Too many wrong passwords for the account or the address: retry after this many
    /// seconds (`429 signin_locked`).
    Locked { retry_after: u64 },
    /// Hashing failed: bad parameters, no randomness, the blocking pool gone (a 500).
    Hashing(String),
}

impl std::fmt::Display for PasswordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordError::Locked { retry_after } => {
                write!(f, "locked for {retry_after} s after wrong passwords")
            }
            PasswordError::Hashing(msg) => f.write_str(msg),
        }
    }
}

fn argon(cfg: &AuthConfig) -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(
        cfg.argon2_memory_kib,
        cfg.argon2_iterations,
        cfg.argon2_parallelism,
        None,
    )
    .map_err(|e| PasswordError::Hashing(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes and verifies passwords on the blocking pool, at most `permits` at a time, so
/// a burst of sign-ups or sign-ins queues for CPU and memory (each argon2 run holds
/// `argon2_memory_kib`) instead of taking the whole machine.
pub struct Hasher {
    argon: Argon2<'static>,
    permits: Arc<Semaphore>,
    decoy: String,
}

impl Hasher {
    /// Builds the hasher and its decoy hash; blocking (one argon2 run), so call it from
    /// the blocking pool at start-up.
    pub fn new(cfg: &AuthConfig) -> anyhow::Result<Self> {
        let argon = argon(cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
        let decoy = argon
            .hash_password_with_salt(b"decoy password", &salt)
            .map_err(|e| anyhow::anyhow!("decoy hash: {e}"))?
            .to_string();
        let permits = if cfg.hash_concurrency == 0 {
            std::thread::available_parallelism().map_or(2, usize::from)
        } else {
            cfg.hash_concurrency
        };
        Ok(Self {
            argon,
            permits: Arc::new(Semaphore::new(permits)),
            decoy,
        })
    }

    /// Hashes a password into a PHC string (`$argon2id$v=19$m=...`).
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| PasswordError::Hashing(e.to_string()))?;
        let argon = self.argon.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the hash is done, even if the request is dropped meanwhile.
            let _permit = permit;
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| PasswordError::Hashing(format!("salt: {e}")))?;
            argon
                .hash_password_with_salt(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Hashing(format!("hashing: {e}")))
        })
        .await
        .map_err(|e| PasswordError::Hashing(e.to_string()))?
    }

    /// Whether `password` matches the PHC hash (parameters come from the hash itself).
    pub async fn verify(&self, hash: String, password: String) -> bool {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            Argon2::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// A hash of a random password, verified against when an account does not exist
    /// so that a wrong email takes as long as a wrong password.
    pub fn decoy(&self) -> &str {
        &self.decoy
    }
}

/// Checks an account's current password where a request must give it (a password
/// change, an email change): wrong answers count toward the same per-account and
/// per-address lockout as sign-ins, so these routes cannot be used to guess a password
/// past it. Ok(false) for a wrong password (already counted and audited with
/// `failure_event`); `PasswordError::Locked` while locked.
pub async fn check_current(
    state: &crate::runtime::Runtime,
    collection: &str,
    account: &crate::store::Record,
    ip: Option<String>,
    candidate: String,
    failure_event: &'static str,
) -> Result<bool, PasswordError> {
    use crate::auth::audit;
    use crate::ratelimit::lockout::{self, Gate};
    let field = |name: &str| {
        account
            .data
            .get(name)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (email, hash, account_id) = (field("email"), field("passwordHash"), &account.id);
    let keys = lockout::signin_keys(&state.config.auth, collection, &email, ip.as_deref());
    let guard_keys = [
        (keys[0].0.as_str(), keys[0].1),
        (keys[1].0.as_str(), keys[1].1),
    ];
    match state.login_guard.gate(&guard_keys, state.clock.now_ms()) {
        Gate::Locked { retry_after_ms } => {
            audit::record(
                state,
                audit::Event::new("password_check_refused_locked", "denied")
                    .collection(collection.to_owned())
                    .subject(account_id.to_owned())
                    .ip(ip),
            );
            return Err(PasswordError::Locked {
                retry_after: retry_after_ms.div_ceil(1000).max(1),
            });
        }
        Gate::Proceed { delay_ms } if delay_ms > 0 => {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        }
        Gate::Proceed { .. } => {}
    }
    if state.auth.hasher.verify(hash, candidate).await {
        state.login_guard.succeeded(guard_keys[0].0);
        return Ok(true);
    }
    for key in state.login_guard.failed(&guard_keys, state.clock.now_ms()) {
        audit::record(
            state,
            audit::Event::new("signin_locked", "locked")
                .collection(collection.to_owned())
                .ip(ip.clone())
                .detail(
                    serde_json::json!({ "key": key, "lockSecs": state.config.auth.lockout_secs }),
                ),
        );
    }
    audit::record(
        state,
        audit::Event::new(failure_event, "denied")
            .collection(collection.to_owned())
            .subject(account_id.to_owned())
            .ip(ip)
            .detail(serde_json::json!({ "reason": "wrong_password" })),
    );
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let cfg = AuthConfig::default();
        assert_eq!(
            check(&cfg, "short", "a@b.c").map_err(|e| e.0),
            Err("too_short")
        );
        assert_eq!(
            check(&cfg, "Password123", "a@b.c").map_err(|e| e.0),
            Err("too_common")
        );
        assert_eq!(
            check(&cfg, "alice@example.com", "alice@example.com").map_err(|e| e.0),
            Err("like_email")
        );
        assert!(check(&cfg, "correct horse battery", "a@b.c").is_ok());
        assert_eq!(
            check(&cfg, &"x".repeat(300), "a@b.c").map_err(|e| e.0),
            Err("too_long")
        );
    }

    #[tokio::test]
    async fn hash_and_verify() {
        let cfg = AuthConfig {
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            ..AuthConfig::default()
        };
        let Ok(hasher) = Hasher::new(&cfg) else {
            panic!("hasher")
        };
        let h = hasher.hash("correct horse battery".into()).await;
        let Ok(h) = h else { panic!("hashing failed") };
        assert!(h.starts_with("$argon2id$"));
        assert!(
            hasher
                .verify(h.clone(), "correct horse battery".into())
                .await
        );
        assert!(!hasher.verify(h, "wrong horse battery".into()).await);
        assert!(!hasher.verify("not a hash".into(), "x".into()).await);
        assert!(hasher.decoy().starts_with("$argon2id$"));
        assert!(!hasher.verify(hasher.decoy().to_owned(), "x".into()).await);
    }
}
