//! The in-process read cache: records by id, list pages and list counts, in one
//! `moka` cache bounded by bytes (`cache.max_bytes`), with TinyLFU admission or plain
//! LRU (`cache.policy`) and an optional time to live (`cache.ttl_seconds`).
//!
//! Correctness rule: an entry is served only while nothing it depends on was written
//! since the read that made it began. Every entry carries the stamp noted before that
//! read: for list pages and counts the collection's generation (bumped by every write
//! to it), for records the generation of the record's stripe (one of 4,096 counters
//! that the writes of the records hashing to it bump). A stale entry is never served;
//! it is dropped when met. So a value read before a write can never be served after
//! that write's report, whatever order the read and the report's updates run in.
//! A write drops its record's entry; a schema change starts a new epoch.
//!
//! Concurrent misses for one key cause one store read (single-flight, moka's
//! `try_get_with`); a caller that joins a read which then turns out stale reads the
//! store itself.
//!
//! The cache is per process: it is correct as long as this process sees every write,
//! which holds for the embedded store, and for a shared store while its change feed
//! is up (otherwise the cache is suspended). No lock is held across an await.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;

use crate::config::{CacheConfig, CachePolicy};
use crate::store::{Record, StoreError};

/// What an entry holds; its index names it in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Record = 0,
    Count = 1,
    Page = 2,
}

const KINDS: [&str; 3] = ["record", "count", "page"];
const STRIPES: usize = 4096;

/// A point in a key's write history: (epoch, generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(u64, u64);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: Kind,
    coll: Box<str>,
    key: Box<str>,
}

/// A cached value.
#[derive(Debug, Clone)]
pub enum Value {
    Record(Arc<Record>),
    Count(i64),
    Page(Arc<Vec<Record>>),
}

#[derive(Debug, Clone)]
struct Entry {
    stamp: Stamp,
    weight: u32,
    value: Value,
}

/// Why a shared read produced nothing to keep.
#[derive(Debug)]
enum Miss {
    /// Nothing in the store, as read from this stamp on.
    Absent(Stamp),
    Store(StoreError),
}

/// Roughly how many bytes a record takes in memory (its maps and strings).
pub fn estimate_record_bytes(r: &Record) -> usize {
    fn value(v: &serde_json::Value) -> usize {
        use serde_json::Value;
        // A `Value` is 32 bytes wherever it lives; what it points to comes on top.
        32 + match v {
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(value).sum(),
            // Per entry: the key's heap bytes and String, plus the map's own slot.
            Value::Object(m) => m.iter().map(|(k, v)| 48 + k.len() + value(v)).sum(),
        }
    }
    std::mem::size_of::<Record>()
        + r.id.len()
        + r.created.len()
        + r.updated.len()
        + r.data
            .iter()
            .map(|(k, v)| 48 + k.len() + value(v))
            .sum::<usize>()
}

/// Roughly how many bytes a page of records takes in memory, with its key. An
/// estimate, on the high side.
pub fn estimate_page_bytes(key: &str, records: &[Record]) -> usize {
    128 + key.len() + records.iter().map(estimate_record_bytes).sum::<usize>()
}

fn weigh(key: &Key, value: &Value) -> u32 {
    let own = 96 + key.coll.len() + key.key.len();
    let size = own
        + match value {
            Value::Record(r) => estimate_record_bytes(r),
            Value::Count(_) => 8,
            Value::Page(p) => estimate_page_bytes("", p),
        };
    u32::try_from(size).unwrap_or(u32::MAX)
}

#[derive(Default)]
struct Generations {
    by_collection: HashMap<String, u64>,
}

struct Meters {
    requests: [[metrics::Counter; 2]; 3],
    bytes: [metrics::Gauge; 3],
}

pub struct ReadCache {
    cache: Option<Cache<Key, Entry>>,
    epoch: AtomicU64,
    /// While set (the change feed of a shared store is down), nothing is served or kept.
    suspended: AtomicBool,
    generations: Mutex<Generations>,
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    meters: Meters,
    /// Bytes held per kind, for `lintel_cache_bytes` (also kept without a recorder).
    held: Arc<[AtomicI64; 3]>,
}

impl ReadCache {
    /// A cache within `cfg.max_bytes` (0 turns it off), counting nowhere.
    pub fn new(cfg: &CacheConfig) -> Self {
        Self::build(cfg, None)
    }

    /// The same, counting hits, misses, evictions and bytes in `metrics`.
    pub fn with_metrics(cfg: &CacheConfig, metrics: &crate::telemetry::Metrics) -> Self {
        Self::build(cfg, Some(metrics))
    }

    fn build(cfg: &CacheConfig, metrics: Option<&crate::telemetry::Metrics>) -> Self {
        let meters = |m: Option<&crate::telemetry::Metrics>| {
            let make = || {
                let requests = KINDS.map(|kind| {
                    ["hit", "miss"].map(|result| {
                        metrics::counter!("lintel_cache_requests_total", "kind" => kind, "result" => result)
                    })
                });
                let evictions = KINDS
                    .map(|kind| metrics::counter!("lintel_cache_evictions_total", "kind" => kind));
                let bytes = KINDS.map(|kind| metrics::gauge!("lintel_cache_bytes", "kind" => kind));
                (Meters { requests, bytes }, evictions)
            };
            match m {
                Some(m) => m.scoped(make),
                None => (
                    Meters {
                        requests: std::array::from_fn(|_| {
                            std::array::from_fn(|_| metrics::Counter::noop())
                        }),
                        bytes: std::array::from_fn(|_| metrics::Gauge::noop()),
                    },
                    std::array::from_fn(|_| metrics::Counter::noop()),
                ),
            }
        };
        let (meters, evictions) = meters(metrics);
        let held: Arc<[AtomicI64; 3]> = Arc::new(std::array::from_fn(|_| AtomicI64::new(0)));
        let cache = (cfg.max_bytes > 0).then(|| {
            let listen_held = held.clone();
            let gauges = meters.bytes.clone();
            let mut b = Cache::builder()
                .max_capacity(cfg.max_bytes)
                .weigher(|k: &Key, e: &Entry| {
                    let _ = k;
                    e.weight
                })
                .eviction_policy(match cfg.policy {
                    CachePolicy::Tinylfu => EvictionPolicy::tiny_lfu(),
                    CachePolicy::Lru => EvictionPolicy::lru(),
                })
                .eviction_listener(move |k: Arc<Key>, e: Entry, cause: RemovalCause| {
                    let i = k.kind as usize;
                    // Size: evicted, or not admitted by TinyLFU.
                    if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                        evictions[i].increment(1);
                    }
                    let w = i64::from(e.weight);
                    let now = listen_held[i].fetch_sub(w, Ordering::Relaxed) - w;
                    gauges[i].set(now.max(0) as f64);
                });
            if cfg.ttl_seconds > 0 {
                // moka refuses more than 1,000 years; ten are as good as forever here.
                let ttl = cfg.ttl_seconds.min(10 * 365 * 86_400);
                b = b.time_to_live(Duration::from_secs(ttl));
            }
            b.build()
        });
        Self {
            cache,
            epoch: AtomicU64::new(0),
            suspended: AtomicBool::new(false),
            generations: Mutex::new(Generations::default()),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            meters,
            held,
        }
    }

    fn generations(&self) -> std::sync::MutexGuard<'_, Generations> {
        match self.generations.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn stripe(&self, coll: &str, id: &str) -> &AtomicU64 {
        let i = (self.hasher.hash_one((coll, id)) as usize) % STRIPES;
        &self.stripes[i]
    }

    /// The stamp a read of `key` notes before it starts; `None` while suspended.
    fn stamp_of(&self, kind: Kind, coll: &str, key: &str) -> Option<Stamp> {
        if self.suspended.load(Ordering::Acquire) {
            return None;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        Some(match kind {
            Kind::Record => Stamp(epoch, self.stripe(coll, key).load(Ordering::Acquire)),
            Kind::Count | Kind::Page => Stamp(
                epoch,
                self.generations()
                    .by_collection
                    .get(coll)
                    .copied()
                    .unwrap_or(0),
            ),
        })
    }

    fn count_request(&self, kind: Kind, hit: bool) {
        self.meters.requests[kind as usize][usize::from(!hit)].increment(1);
    }

    /// An entry about to be stored, counted in `lintel_cache_bytes` (the eviction
    /// listener takes it back out, also for one TinyLFU does not admit).
    fn entry(&self, key: &Key, stamp: Stamp, value: Value) -> Entry {
        let weight = weigh(key, &value);
        let i = key.kind as usize;
        let now = self.held[i].fetch_add(i64::from(weight), Ordering::Relaxed) + i64::from(weight);
        self.meters.bytes[i].set(now.max(0) as f64);
        Entry {
            stamp,
            weight,
            value,
        }
    }

    /// The value of `key`, from the cache when fresh, otherwise from `load` (one load
    /// at a time per key; the others wait for it). `Ok(None)`: the store has nothing
    /// (not cached).
    pub async fn get_or_load<F, Fut>(
        &self,
        kind: Kind,
        coll: &str,
        key: &str,
        load: F,
    ) -> Result<Option<Value>, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<Value>, StoreError>>,
    {
        let (Some(cache), Some(stamp)) = (&self.cache, self.stamp_of(kind, coll, key)) else {
            return load().await;
        };
        let k = Key {
            kind,
            coll: coll.into(),
            key: key.into(),
        };
        if let Some(e) = cache.get(&k).await {
            if e.stamp == stamp {
                self.count_request(kind, true);
                return Ok(Some(e.value));
            }
            cache.invalidate(&k).await;
        }
        self.count_request(kind, false);
        let shared = cache
            .try_get_with(k.clone(), async {
                match load().await {
                    Ok(Some(value)) => Ok(self.entry(&k, stamp, value)),
                    Ok(None) => Err(Miss::Absent(stamp)),
                    Err(e) => Err(Miss::Store(e)),
                }
            })
            .await;
        match shared {
            Ok(e) if Some(e.stamp) == self.stamp_of(kind, coll, key) => Ok(Some(e.value)),
            // Read before a write that has been reported since: not for this caller.
            Ok(_) => {
                cache.invalidate(&k).await;
                load().await
            }
            Err(miss) => match &*miss {
                Miss::Absent(at) if Some(*at) == self.stamp_of(kind, coll, key) => Ok(None),
                // "Not there" from before a write that has been reported since (a
                // create): read again.
                Miss::Absent(_) => load().await,
                Miss::Store(e) => Err(e.clone()),
            },
        }
    }

    /// A record by id, through the cache.
    pub async fn record<F, Fut>(
        &self,
        coll: &str,
        id: &str,
        load: F,
    ) -> Result<Option<Arc<Record>>, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<Arc<Record>>, StoreError>>,
    {
        let v = self
            .get_or_load(Kind::Record, coll, id, || {
                let f = load();
                async move { f.await.map(|r| r.map(Value::Record)) }
            })
            .await?;
        Ok(match v {
            Some(Value::Record(r)) => Some(r),
            _ => None,
        })
    }

    /// After a committed write: bumps the collection's and the record's generations,
    /// so nothing read before it is served again, and drops the record's entry. (Not
    /// written through: two writes' reports can arrive out of order, and only a read
    /// after both knows the last version.)
    pub async fn written(&self, coll: &str, id: &str, record: Option<Record>) {
        let _ = record;
        *self
            .generations()
            .by_collection
            .entry(coll.to_owned())
            .or_insert(0) += 1;
        self.stripe(coll, id).fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            let k = Key {
                kind: Kind::Record,
                coll: coll.into(),
                key: id.into(),
            };
            cache.invalidate(&k).await;
        }
    }

    fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(c) = &self.cache {
            c.invalidate_all();
        }
    }

    /// After a schema change: nothing read before it may be served.
    pub fn clear(&self) {
        self.reset();
    }

    /// The change feed of a shared store is down: changes by others may go unseen, so
    /// stop serving and keeping anything until [`ReadCache::resume`].
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::Release);
        self.reset();
    }

    /// Whether the cache serves (false while a shared store's change feed is down or
    /// not yet connected).
    pub fn is_live(&self) -> bool {
        !self.suspended.load(Ordering::Acquire)
    }

    /// The change feed is complete again (from an empty cache).
    pub fn resume(&self) {
        self.reset();
        self.suspended.store(false, Ordering::Release);
    }

    /// Runs moka's pending upkeep (evictions, listener calls) now; for tests.
    pub async fn settle(&self) {
        if let Some(c) = &self.cache {
            c.run_pending_tasks().await;
        }
    }

    /// The bytes held, by kind (record, count, page).
    pub fn held_bytes(&self) -> [i64; 3] {
        std::array::from_fn(|i| self.held[i].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;
    use std::sync::atomic::AtomicUsize;

    fn rec(id: &str, version: i64) -> Record {
        Record {
            id: id.into(),
            created: String::new(),
            updated: String::new(),
            version,
            data: Map::new(),
        }
    }

    fn cfg(max_bytes: u64, policy: CachePolicy) -> CacheConfig {
        CacheConfig {
            max_bytes,
            policy,
            ttl_seconds: 0,
        }
    }

    async fn read(c: &ReadCache, id: &str, version: i64, loads: &AtomicUsize) -> Option<i64> {
        c.record("posts", id, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(Some(Arc::new(rec(id, version))))
        })
        .await
        .ok()
        .flatten()
        .map(|r| r.version)
    }

    #[tokio::test]
    async fn hits_after_a_load_and_never_serves_what_a_write_made_stale() {
        let c = ReadCache::new(&cfg(1 << 20, CachePolicy::Tinylfu));
        let loads = AtomicUsize::new(0);
        assert_eq!(read(&c, "a", 1, &loads).await, Some(1));
        assert_eq!(read(&c, "a", 1, &loads).await, Some(1));
        assert_eq!(loads.load(Ordering::SeqCst), 1, "the second read hit");
        // A write: the next read goes to the store.
        c.written("posts", "a", Some(rec("a", 2))).await;
        assert_eq!(read(&c, "a", 2, &loads).await, Some(2));
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        assert_eq!(read(&c, "a", 99, &loads).await, Some(2), "cached again");
        // Reports out of order change nothing: whatever is read after them is kept.
        c.written("posts", "a", Some(rec("a", 1))).await;
        assert_eq!(read(&c, "a", 3, &loads).await, Some(3));
        // A delete: forgotten.
        c.written("posts", "a", None).await;
        assert_eq!(read(&c, "a", 4, &loads).await, Some(4));
        // A schema change: a new epoch.
        c.clear();
        assert_eq!(read(&c, "a", 5, &loads).await, Some(5));
        // Other records stay cached across a write.
        assert_eq!(read(&c, "b", 1, &loads).await, Some(1));
        let before = loads.load(Ordering::SeqCst);
        c.written("posts", "c", None).await;
        assert_eq!(read(&c, "b", 7, &loads).await, Some(1));
        assert_eq!(loads.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn a_read_that_raced_a_write_is_not_served_later() {
        let c = Arc::new(ReadCache::new(&cfg(1 << 20, CachePolicy::Tinylfu)));
        let gate = Arc::new(tokio::sync::Notify::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (c, gate, calls) = (c.clone(), gate.clone(), calls.clone());
            tokio::spawn(async move {
                c.record("posts", "a", || {
                    let (gate, calls) = (gate.clone(), calls.clone());
                    async move {
                        // The first read is held until the write is reported; it then
                        // returns what it read before the write.
                        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            gate.notified().await;
                            return Ok(Some(Arc::new(rec("a", 1))));
                        }
                        Ok(Some(Arc::new(rec("a", 2))))
                    }
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The write commits while the read is in flight.
        c.written("posts", "a", Some(rec("a", 2))).await;
        gate.notify_waiters();
        let got = reader
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .map(|r| r.version);
        assert_eq!(
            got,
            Some(2),
            "the caller read again after its shared read went stale"
        );
        let loads = AtomicUsize::new(0);
        assert_eq!(
            read(&c, "a", 2, &loads).await,
            Some(2),
            "the stale read was not kept"
        );
    }

    #[tokio::test]
    async fn a_shared_not_found_from_before_a_create_is_read_again() {
        let c = Arc::new(ReadCache::new(&cfg(1 << 20, CachePolicy::Tinylfu)));
        let gate = Arc::new(tokio::sync::Notify::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let first = {
            let (c, gate, calls) = (c.clone(), gate.clone(), calls.clone());
            tokio::spawn(async move {
                c.record("posts", "a", || {
                    let (gate, calls) = (gate.clone(), calls.clone());
                    async move {
                        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            gate.notified().await;
                            return Ok(None);
                        }
                        Ok(Some(Arc::new(rec("a", 1))))
                    }
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The record is created while the first read is in flight; its creator reads.
        c.written("posts", "a", Some(rec("a", 1))).await;
        let second = {
            let c = c.clone();
            tokio::spawn(async move {
                c.record("posts", "a", || async { Ok(Some(Arc::new(rec("a", 1)))) })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_waiters();
        let got = second
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .map(|r| r.version);
        assert_eq!(got, Some(1), "the creator sees its record");
        let _ = first.await;
    }

    #[tokio::test]
    async fn concurrent_misses_load_once() {
        let c = Arc::new(ReadCache::new(&cfg(1 << 20, CachePolicy::Tinylfu)));
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (c, loads) = (c.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_load(Kind::Count, "posts", "q", || {
                    let loads = loads.clone();
                    async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(Some(Value::Count(7)))
                    }
                })
                .await
            }));
        }
        for t in tasks {
            let v = t.await.ok().and_then(Result::ok).flatten();
            assert!(matches!(v, Some(Value::Count(7))));
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "one store read for 32 misses"
        );
    }

    fn page_of(n: usize, text_len: usize) -> Arc<Vec<Record>> {
        Arc::new(
            (0..n)
                .map(|i| {
                    let mut r = rec(&format!("r{i:015}"), 1);
                    r.data.insert(
                        "body".into(),
                        serde_json::Value::String("x".repeat(text_len)),
                    );
                    r
                })
                .collect(),
        )
    }

    #[tokio::test]
    async fn pages_stay_within_the_byte_budget_under_both_policies() {
        for policy in [CachePolicy::Tinylfu, CachePolicy::Lru] {
            let budget = 1024 * 1024;
            let c = ReadCache::new(&cfg(budget, policy));
            let big = page_of(100, 2000);
            let size = estimate_page_bytes("q0", &big);
            assert!(size > 100 * 2000 && size < 100 * 2600, "{size}");
            for i in 0..50 {
                let p = big.clone();
                let _ = c
                    .get_or_load(Kind::Page, "p", &format!("q{i}"), || {
                        let p = p.clone();
                        async move { Ok(Some(Value::Page(p))) }
                    })
                    .await;
            }
            c.settle().await;
            let held: i64 = c.held_bytes().iter().sum();
            assert!(held as u64 <= budget, "{policy:?}: {held} > {budget}");
            let weighted = c.cache.as_ref().map_or(0, |m| m.weighted_size());
            assert!(weighted <= budget, "{policy:?}: {weighted}");
            assert!(weighted > 0, "{policy:?}: something is kept");
            assert_eq!(held as u64, weighted, "{policy:?}: the byte gauge is exact");
            // A write to the collection makes its pages stale.
            c.written("p", "x", None).await;
            let loads = AtomicUsize::new(0);
            let _ = c
                .get_or_load(Kind::Page, "p", "q49", || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok(Some(Value::Count(0)))
                })
                .await;
            assert_eq!(loads.load(Ordering::SeqCst), 1, "{policy:?}");
        }
        // 0 turns the cache off: every read loads.
        let off = ReadCache::new(&cfg(0, CachePolicy::Tinylfu));
        let loads = AtomicUsize::new(0);
        read(&off, "a", 1, &loads).await;
        read(&off, "a", 1, &loads).await;
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_suspended_cache_serves_and_keeps_nothing() {
        let c = ReadCache::new(&cfg(1 << 20, CachePolicy::Lru));
        let loads = AtomicUsize::new(0);
        c.suspend();
        read(&c, "a", 1, &loads).await;
        read(&c, "a", 1, &loads).await;
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        c.resume();
        read(&c, "a", 1, &loads).await;
        read(&c, "a", 1, &loads).await;
        assert_eq!(loads.load(Ordering::SeqCst), 3);
    }
}
