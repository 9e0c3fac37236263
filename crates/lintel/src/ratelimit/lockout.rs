//! Sign-in protection: failed sign-ins are counted per account and per client address.
//! After a few failures each new attempt is slowed down (doubling, capped); past the
//! threshold within the window, the account (or address) is locked for a while and
//! attempts are refused before any password is checked. Memory is bounded; entries
//! expire with their window.

use std::collections::HashMap;
use std::sync::Mutex;

/// Failures before attempts are slowed down.
const SLOW_AFTER: u32 = 3;
/// The longest slow-down, in milliseconds.
const MAX_DELAY_MS: u64 = 4_000;
/// Entries kept at most; past that, expired ones are dropped and then the oldest.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    first_ms: i64,
    locked_until_ms: i64,
}

/// The policy (from `auth.lockout_*`).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub threshold: u32,
    pub window_ms: i64,
    pub lock_ms: i64,
}

/// What a sign-in attempt must do first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Go ahead after waiting this long.
    Proceed { delay_ms: u64 },
    /// Refused until this many milliseconds have passed.
    Locked { retry_after_ms: u64 },
}

/// The keys a password failure of an account counts against, with their policies from
/// `auth.lockout_*`: the account (`acct:<collection>/<email>`) and the client address
/// (`ip:<address>`). The same keys as the login handler's, so every place that checks
/// a password shares one count and one lock.
pub fn signin_keys(
    cfg: &crate::config::AuthConfig,
    collection: &str,
    email: &str,
    ip: Option<&str>,
) -> [(String, Policy); 2] {
    let window_ms = (cfg.lockout_window_secs * 1000) as i64;
    let lock_ms = (cfg.lockout_secs * 1000) as i64;
    [
        (
            format!("acct:{collection}/{email}"),
            Policy {
                threshold: cfg.lockout_threshold.max(1),
                window_ms,
                lock_ms,
            },
        ),
        (
            format!("ip:{}", ip.unwrap_or("")),
            Policy {
                threshold: cfg.lockout_ip_threshold.max(1),
                window_ms,
                lock_ms,
            },
        ),
    ]
}

pub struct LoginGuard {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Default for LoginGuard {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl LoginGuard {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        match self.entries.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
    }

    /// Before checking a password: the strictest gate of the given keys.
    pub fn gate(&self, keys: &[(&str, Policy)], now_ms: i64) -> Gate {
        let map = self.map();
        let mut delay = 0;
        for (key, p) in keys {
            let Some(e) = map.get(*key) else { continue };
            if e.locked_until_ms > now_ms {
                return Gate::Locked {
                    retry_after_ms: (e.locked_until_ms - now_ms) as u64,
                };
            }
            if now_ms - e.first_ms < p.window_ms && e.failures >= SLOW_AFTER {
                let steps = (e.failures - SLOW_AFTER).min(10);
                delay = delay.max((250u64 << steps).min(MAX_DELAY_MS));
            }
        }
        Gate::Proceed { delay_ms: delay }
    }

    /// Records a failure; returns the keys that became locked by it.
    pub fn failed(&self, keys: &[(&str, Policy)], now_ms: i64) -> Vec<String> {
        let mut map = self.map();
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| e.locked_until_ms > now_ms || now_ms - e.first_ms < 3_600_000);
            if map.len() >= MAX_ENTRIES
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, e)| e.first_ms)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let mut locked = Vec::new();
        for (key, p) in keys {
            let e = map.entry((*key).to_owned()).or_insert(Entry {
                failures: 0,
                first_ms: now_ms,
                locked_until_ms: 0,
            });
            if now_ms - e.first_ms >= p.window_ms {
                *e = Entry {
                    failures: 0,
                    first_ms: now_ms,
                    locked_until_ms: 0,
                };
            }
            e.failures += 1;
            if e.failures >= p.threshold {
                e.locked_until_ms = now_ms + p.lock_ms;
                e.failures = 0;
                e.first_ms = now_ms;
                locked.push((*key).to_owned());
            }
        }
        locked
    }

    /// A successful sign-in clears the account's count (not the address's).
    pub fn succeeded(&self, key: &str) {
        self.map().remove(key);
    }

    /// Drops entries whose window and lock are over.
    pub fn sweep(&self, now_ms: i64, longest_window_ms: i64) {
        self.map()
            .retain(|_, e| e.locked_until_ms > now_ms || now_ms - e.first_ms < longest_window_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        threshold: 5,
        window_ms: 60_000,
        lock_ms: 30_000,
    };

    #[test]
    fn slows_down_then_locks_then_recovers() {
        let g = LoginGuard::default();
        let k = [("acct", P)];
        assert_eq!(g.gate(&k, 0), Gate::Proceed { delay_ms: 0 });
        for t in 0..3 {
            assert!(g.failed(&k, t).is_empty());
        }
        assert_eq!(g.gate(&k, 10), Gate::Proceed { delay_ms: 250 });
        g.failed(&k, 11);
        assert_eq!(g.gate(&k, 12), Gate::Proceed { delay_ms: 500 });
        assert_eq!(
            g.failed(&k, 13),
            vec!["acct".to_owned()],
            "the fifth failure locks"
        );
        assert_eq!(
            g.gate(&k, 1013),
            Gate::Locked {
                retry_after_ms: 29_000
            }
        );
        assert_eq!(
            g.gate(&k, 30_013),
            Gate::Proceed { delay_ms: 0 },
            "the lock ends"
        );
        g.failed(&k, 30_014);
        g.succeeded("acct");
        assert_eq!(g.gate(&k, 30_015), Gate::Proceed { delay_ms: 0 });
        // Failures spread beyond the window do not add up.
        let g = LoginGuard::default();
        for t in 0..10 {
            assert!(g.failed(&k, t * 61_000).is_empty());
        }
        g.sweep(10_000_000, 60_000);
        assert!(g.map().is_empty());
    }
}
