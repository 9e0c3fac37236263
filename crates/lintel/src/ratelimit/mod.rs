//! Rate limiting: rules that match a route pattern and methods, count per client IP,
//! per account, per API key or globally, and apply one of five algorithms
//! ([`algorithms`]). Every matching response carries the IETF `RateLimit-Policy` and
//! `RateLimit` headers; a refused one is a 429 problem with `Retry-After`. Counters live
//! behind [`RateStore`] (in memory here, bounded, idle keys dropped), so a shared store
//! can replace it. Sign-in lockout is in [`lockout`].

pub mod algorithms;
pub mod lockout;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderValue;

use crate::access::{Caller, Via};
pub use algorithms::{Algorithm, Decision, Quota, State as Counter};

pub use crate::config::{KeyBy, RateRule as Rule};

impl Rule {
    fn quota(&self) -> Quota {
        Quota {
            limit: self.limit.max(1),
            period_ms: self.period_secs.max(1) * 1000,
            burst: if self.burst == 0 {
                self.limit
            } else {
                self.burst
            },
        }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && path_matches(&self.path, path)
    }
}

/// `*` matches one segment; a final `**` matches any rest (including nothing).
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.trim_matches('/').split('/');
    let mut s = path.trim_matches('/').split('/');
    loop {
        match (p.next(), s.next()) {
            (Some("**"), _) => return true,
            (Some(a), Some(b)) if a == "*" || a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Where counters live. Implementations must bound their memory.
pub trait RateStore: Send + Sync + 'static {
    /// Counts one request for `key` (opaque bytes) under rule `rule`.
    fn hit(
        &self,
        rule: usize,
        algorithm: Algorithm,
        quota: &Quota,
        key: &[u8],
        now_ms: u64,
    ) -> Decision;
    /// Drops counters that have returned to their initial state.
    fn sweep(&self, now_ms: u64, quotas: &[Quota]);
    /// Counters held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const SHARDS: usize = 16;

/// One shard: per rule, counters by key (looked up by `&str`, no allocation for a
/// key already counted).
type Shard = Vec<HashMap<Box<[u8]>, Counter>>;

/// Counters in memory, sharded; at most `max_keys` (beyond that, new keys share one
/// overflow counter per rule, which is strict but keeps memory bounded).
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl MemoryStore {
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            per_shard: (max_keys / SHARDS).max(16),
        }
    }

    fn shard(&self, rule: usize, key: &[u8]) -> &Mutex<Shard> {
        // FNV-1a: only spreads keys over shards (the maps inside use SipHash, which
        // guards against chosen collisions).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ rule as u64;
        for &b in key {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.shards[(h as usize) % SHARDS]
    }
}

const OVERFLOW: &[u8] = b"\0overflow";

impl RateStore for MemoryStore {
    fn hit(
        &self,
        rule: usize,
        algorithm: Algorithm,
        quota: &Quota,
        key: &[u8],
        now_ms: u64,
    ) -> Decision {
        let mut shard = match self.shard(rule, key).lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if shard.len() <= rule {
            shard.resize_with(rule + 1, HashMap::new);
        }
        if let Some(c) = shard[rule].get_mut(key) {
            return c.hit(now_ms, quota);
        }
        let mut key = key;
        if shard.iter().map(HashMap::len).sum::<usize>() >= self.per_shard {
            shard[rule].retain(|_, s| !s.idle(now_ms, quota));
            if shard.iter().map(HashMap::len).sum::<usize>() >= self.per_shard {
                key = OVERFLOW;
            }
        }
        shard[rule]
            .entry(Box::from(key))
            .or_insert_with(|| Counter::new(algorithm, now_ms, quota))
            .hit(now_ms, quota)
    }

    fn sweep(&self, now_ms: u64, quotas: &[Quota]) {
        for shard in &self.shards {
            let mut shard = match shard.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            for (r, map) in shard.iter_mut().enumerate() {
                if let Some(q) = quotas.get(r) {
                    map.retain(|_, s| !s.idle(now_ms, q));
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map(|m| m.iter().map(HashMap::len).sum::<usize>())
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// The rules and their counters.
pub struct Limiter {
    rules: Vec<Rule>,
    quotas: Vec<Quota>,
    /// Each rule's `RateLimit-Policy` item, made once (and as a header value, shared
    /// by every response when only that rule matches).
    policies: Vec<String>,
    policy_values: Vec<Option<HeaderValue>>,
    store: Box<dyn RateStore>,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    refused_total: metrics::Counter,
    keys: metrics::Gauge,
}

impl Limiter {
    pub fn new(
        rules: Vec<Rule>,
        store: Box<dyn RateStore>,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
        metrics: &crate::telemetry::Metrics,
    ) -> Self {
        let quotas: Vec<Quota> = rules.iter().map(Rule::quota).collect();
        let policies: Vec<String> = rules
            .iter()
            .zip(&quotas)
            .map(|(r, q)| format!("\"{}\";q={};w={}", r.name, q.limit, r.period_secs.max(1)))
            .collect();
        let policy_values = policies
            .iter()
            .map(|p: &String| HeaderValue::from_str(p).ok())
            .collect();
        Self {
            rules,
            quotas,
            policies,
            policy_values,
            store,
            clock,
            refused_total: metrics.scoped(|| metrics::counter!("lintel_ratelimit_refused_total")),
            keys: metrics.scoped(|| metrics::gauge!("lintel_ratelimit_keys")),
        }
    }

    fn now_ms(&self) -> u64 {
        // Monotonic: wall-clock jumps never refill or drain buckets.
        self.clock.monotonic_ms() + 1
    }

    pub fn sweep(&self) {
        self.store.sweep(self.now_ms(), &self.quotas);
        self.keys.set(self.store.len() as f64);
    }

    /// Counts `units` of costly work (password hashes) done for a client address under
    /// the rule named `rule`, as if each were a request that rule matched: a sign-up
    /// with many accounts in one batch spends the same budget as many sign-in POSTs.
    /// Err holds the seconds to wait. No rule of that name: no limit.
    pub fn charge(&self, rule: &str, ip: Option<std::net::IpAddr>, units: u32) -> Result<(), u64> {
        let Some(i) = self.rules.iter().position(|r| r.name == rule) else {
            return Ok(());
        };
        let rule = &self.rules[i];
        let (key, len) = ip_key(ip);
        let key: &[u8] = if rule.key == KeyBy::Global {
            b""
        } else {
            &key[..len]
        };
        let now = self.now_ms();
        for _ in 0..units {
            let d = self.store.hit(i, rule.algorithm, &self.quotas[i], key, now);
            if !d.allowed {
                self.refused_total.increment(1);
                return Err(d.retry_after_ms.div_ceil(1000).max(1));
            }
        }
        Ok(())
    }

    /// Whether a rule for this request counts by account or API key (so the caller
    /// must be resolved first).
    pub fn needs_caller(&self, method: &str, path: &str) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.key, KeyBy::User | KeyBy::ApiKey) && r.matches(method, path))
    }
}

/// Checks configuration: rules must be usable.
pub fn validate(rules: &[Rule]) -> anyhow::Result<()> {
    for r in rules {
        anyhow::ensure!(
            r.limit > 0,
            "rate_limit rule '{}': limit must be above 0",
            r.name
        );
        anyhow::ensure!(
            r.period_secs > 0,
            "rate_limit rule '{}': period_secs must be above 0",
            r.name
        );
        anyhow::ensure!(
            r.path.starts_with('/'),
            "rate_limit rule '{}': path must start with /",
            r.name
        );
        anyhow::ensure!(
            !r.name.is_empty()
                && r.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "rate_limit rule names are letters, digits, - and _"
        );
    }
    Ok(())
}

/// The key bytes of a client address, on the stack: `i` and the address's octets.
fn ip_key(ip: Option<std::net::IpAddr>) -> ([u8; 17], usize) {
    let mut k = [0u8; 17];
    k[0] = b'i';
    let n = match ip {
        Some(std::net::IpAddr::V4(v4)) => {
            k[1..5].copy_from_slice(&v4.octets());
            5
        }
        Some(std::net::IpAddr::V6(v6)) => {
            k[1..17].copy_from_slice(&v6.octets());
            17
        }
        None => 1,
    };
    (k, n)
}

/// What the limiter decided for one request that at least one rule matched.
pub struct Counted {
    /// Refused: the seconds to wait.
    pub refused_secs: Option<u64>,
    /// The leaky bucket's wait before the request runs.
    pub delay: Duration,
    /// `RateLimit-Policy` and `RateLimit` for the response.
    pub headers: Option<(HeaderValue, HeaderValue)>,
}

impl Limiter {
    /// Counts a request under every matching rule (`caller`: when
    /// [`needs_caller`](Self::needs_caller) said so). None when no rule matches.
    pub fn count(
        &self,
        method: &str,
        path: &str,
        ip: Option<std::net::IpAddr>,
        caller: Option<&Caller>,
    ) -> Option<Counted> {
        let (ip_bytes, ip_len) = ip_key(ip);
        let by_ip = &ip_bytes[..ip_len];
        let now = self.now_ms();
        let mut policies = String::new();
        let mut single_policy: Option<usize> = None;
        let mut matched = 0usize;
        let mut states = String::with_capacity(64);
        let mut refused: Option<u64> = None;
        let mut delay = 0u64;
        let mut num = itoa::Buffer::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matches(method, path) {
                continue;
            }
            let owned: Vec<u8>;
            let key: &[u8] = match (rule.key, caller) {
                (KeyBy::Global, _) => b"",
                (KeyBy::User, Some(c)) => match c.account() {
                    Some((coll, id)) => {
                        owned = [b"u", coll.as_bytes(), b"/", id.as_bytes()].concat();
                        &owned
                    }
                    None => by_ip,
                },
                (
                    KeyBy::ApiKey,
                    Some(Caller {
                        via: Via::ApiKey { id, .. },
                        ..
                    }),
                ) => {
                    owned = [b"k", id.as_bytes()].concat();
                    &owned
                }
                _ => by_ip,
            };
            let q = &self.quotas[i];
            let d = self.store.hit(i, rule.algorithm, q, key, now);
            matched += 1;
            if matched == 1 {
                single_policy = Some(i);
            } else {
                if matched == 2
                    && let Some(first) = single_policy.take()
                {
                    policies.push_str(&self.policies[first]);
                }
                policies.push_str(", ");
                states.push_str(", ");
                policies.push_str(&self.policies[i]);
            }
            states.push('"');
            states.push_str(&rule.name);
            states.push_str("\";r=");
            states.push_str(num.format(d.remaining));
            states.push_str(";t=");
            states.push_str(num.format(d.reset_ms.div_ceil(1000)));
            if d.allowed {
                delay = delay.max(d.delay_ms);
            } else {
                refused = Some(refused.unwrap_or(0).max(d.retry_after_ms));
            }
        }
        if matched == 0 {
            return None;
        }
        let policy = match single_policy {
            Some(i) => self.policy_values[i].clone(),
            None => HeaderValue::from_str(&policies).ok(),
        };
        let state_value = HeaderValue::from_maybe_shared(bytes::Bytes::from(states)).ok();
        let headers = policy.zip(state_value);
        if refused.is_some() {
            self.refused_total.increment(1);
        }
        Some(Counted {
            refused_secs: refused.map(|wait| wait.div_ceil(1000).max(1)),
            delay: Duration::from_millis(delay),
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(path_matches("/**", "/v1/anything/at/all"));
        assert!(path_matches("/v1/auth/**", "/v1/auth/login"));
        assert!(path_matches("/v1/auth/**", "/v1/auth"));
        assert!(!path_matches("/v1/auth/**", "/v1/authx/login"));
        assert!(path_matches(
            "/v1/collections/*/records",
            "/v1/collections/posts/records"
        ));
        assert!(!path_matches(
            "/v1/collections/*/records",
            "/v1/collections/posts/records/x"
        ));
        assert!(path_matches("/v1/health", "/v1/health"));
    }

    #[test]
    fn memory_is_bounded_and_swept() {
        let store = MemoryStore::new(16 * 16);
        let q = Quota {
            limit: 1,
            period_ms: 1000,
            burst: 1,
        };
        for i in 0..10_000 {
            store.hit(
                0,
                Algorithm::FixedWindow,
                &q,
                format!("k{i}").as_bytes(),
                10,
            );
        }
        assert!(store.len() <= 16 * 16 + 16, "bounded: {}", store.len());
        store.sweep(5000, &[q]);
        assert_eq!(store.len(), 0, "idle keys expire");
    }
}
