//! The in-process read cache of the embedded store: records by id and list counts.
//!
//! Correctness rule: a reader may only insert what it read if no write to that
//! collection happened since it started reading. Every collection has a generation,
//! bumped by each write under the same lock that the write-through update of the cache
//! takes; a reader notes the generation before reading and inserts only if it is
//! unchanged, in one critical section. So a value read before a write can never land
//! after that write's update. Writes update records in place (write-through) so reads
//! of other records stay cached; counts are dropped by any write to their collection.
//! A schema change clears everything (a new epoch).
//!
//! The cache is per process: it is correct as long as this process sees every write,
//! which holds for the embedded store. Records and counts are bounded by entry counts,
//! list pages by their estimated size in bytes (a page holds up to 501 records of any
//! size); when full, an arbitrary entry is evicted (random eviction; stale pages go
//! first). No lock is held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::Record;

/// A point in a collection's write history: (epoch, generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(u64, u64);

/// (collection, key) -> the stamp it was read at and the value.
type Entries<V> = HashMap<(String, String), (Stamp, V)>;

#[derive(Default)]
struct Inner {
    /// While set (the change feed of a shared store is down), nothing is served or kept.
    suspended: bool,
    epoch: u64,
    generations: HashMap<String, u64>,
    records: HashMap<(String, String), Arc<Record>>,
    counts: Entries<i64>,
    /// Pages with their estimated size.
    pages: Entries<(usize, Arc<Vec<Record>>)>,
    /// The sum of the pages' estimated sizes.
    page_bytes: usize,
}

impl Inner {
    fn stamp(&self, coll: &str) -> Stamp {
        Stamp(self.epoch, self.generations.get(coll).copied().unwrap_or(0))
    }

    fn clear_pages(&mut self) {
        self.pages.clear();
        self.page_bytes = 0;
    }

    /// Evicts pages until `room` more bytes fit in `budget`: pages no read can hit
    /// any more (their collection was written since) first, then arbitrary ones.
    fn make_room(&mut self, room: usize, budget: usize) {
        if self.page_bytes + room <= budget {
            return;
        }
        let stale: Vec<(String, String)> = self
            .pages
            .iter()
            .filter(|((coll, _), (stamp, _))| *stamp != self.stamp(coll))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some((_, (size, _))) = self.pages.remove(&k) {
                self.page_bytes -= size;
            }
        }
        while self.page_bytes + room > budget {
            let Some(k) = self.pages.keys().next().cloned() else {
                break;
            };
            if let Some((_, (size, _))) = self.pages.remove(&k) {
                self.page_bytes -= size;
            }
        }
    }
}

/// Roughly how many bytes a page of records takes in memory (the records, their maps
/// and strings, and the key), for the page budget. An estimate, on the high side.
pub fn estimate_page_bytes(key: &str, records: &[Record]) -> usize {
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
    let record = |r: &Record| {
        std::mem::size_of::<Record>()
            + r.id.len()
            + r.created.len()
            + r.updated.len()
            + r.data
                .iter()
                .map(|(k, v)| 48 + k.len() + value(v))
                .sum::<usize>()
    };
    128 + key.len() + records.iter().map(record).sum::<usize>()
}

pub struct ReadCache {
    inner: Mutex<Inner>,
    max_records: usize,
    max_counts: usize,
    max_page_bytes: usize,
    /// `lintel_cache_requests_total` by kind (record, count, page) and result (hit, miss).
    requests: [[metrics::Counter; 2]; 3],
}

impl ReadCache {
    /// `max_records == 0` turns record caching off; `max_counts == 0` count caching;
    /// `max_page_bytes == 0` page caching.
    pub fn new(max_records: usize, max_counts: usize, max_page_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_records,
            max_counts,
            max_page_bytes,
            requests: std::array::from_fn(|_| std::array::from_fn(|_| metrics::Counter::noop())),
        }
    }

    /// Counts hits and misses in `metrics` (a cache made with `new` counts nowhere).
    pub fn with_metrics(mut self, metrics: &crate::telemetry::Metrics) -> Self {
        self.requests = metrics.scoped(|| {
            ["record", "count", "page"].map(|kind| {
                ["hit", "miss"].map(|result| {
                    metrics::counter!("lintel_cache_requests_total", "kind" => kind, "result" => result)
                })
            })
        });
        self
    }

    fn count_request(&self, kind: usize, hit: bool) {
        self.requests[kind][usize::from(!hit)].increment(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The stamp to note before reading from the store.
    pub fn stamp(&self, coll: &str) -> Stamp {
        self.lock().stamp(coll)
    }

    pub fn record(&self, coll: &str, id: &str) -> Option<Arc<Record>> {
        if self.max_records == 0 {
            return None;
        }
        let inner = self.lock();
        let hit = if inner.suspended {
            None
        } else {
            inner
                .records
                .get(&(coll.to_owned(), id.to_owned()))
                .cloned()
        };
        drop(inner);
        self.count_request(0, hit.is_some());
        hit
    }

    /// Inserts a record read from the store, unless the collection was written since
    /// `before`.
    pub fn put_record(&self, coll: &str, before: Stamp, record: Arc<Record>) {
        if self.max_records == 0 {
            return;
        }
        let mut inner = self.lock();
        if inner.suspended || inner.stamp(coll) != before {
            return;
        }
        if inner.records.len() >= self.max_records
            && let Some(k) = inner.records.keys().next().cloned()
        {
            inner.records.remove(&k);
        }
        inner
            .records
            .insert((coll.to_owned(), record.id.clone()), record);
    }

    pub fn count(&self, coll: &str, key: &str) -> Option<i64> {
        if self.max_counts == 0 {
            return None;
        }
        let inner = self.lock();
        let current = inner.stamp(coll);
        let hit = inner
            .counts
            .get(&(coll.to_owned(), key.to_owned()))
            .filter(|(stamp, _)| !inner.suspended && *stamp == current)
            .map(|(_, n)| *n);
        drop(inner);
        self.count_request(1, hit.is_some());
        hit
    }

    pub fn put_count(&self, coll: &str, before: Stamp, key: String, count: i64) {
        if self.max_counts == 0 {
            return;
        }
        let mut inner = self.lock();
        if inner.suspended || inner.stamp(coll) != before {
            return;
        }
        if inner.counts.len() >= self.max_counts {
            inner.counts.clear();
        }
        inner.counts.insert((coll.to_owned(), key), (before, count));
    }

    /// A cached list page (the records of one list query), valid until the next write
    /// to its collection.
    pub fn page(&self, coll: &str, key: &str) -> Option<Arc<Vec<Record>>> {
        if self.max_page_bytes == 0 {
            return None;
        }
        let inner = self.lock();
        let current = inner.stamp(coll);
        let hit = inner
            .pages
            .get(&(coll.to_owned(), key.to_owned()))
            .filter(|(stamp, _)| !inner.suspended && *stamp == current)
            .map(|(_, (_, p))| p.clone());
        drop(inner);
        self.count_request(2, hit.is_some());
        hit
    }

    /// Keeps a page within `cache.page_bytes` (a page larger than all of it is not
    /// kept). The size is estimated before the lock is taken.
    pub fn put_page(&self, coll: &str, before: Stamp, key: String, records: Arc<Vec<Record>>) {
        if self.max_page_bytes == 0 {
            return;
        }
        let size = estimate_page_bytes(&key, &records) + coll.len();
        if size > self.max_page_bytes {
            return;
        }
        let mut inner = self.lock();
        if inner.suspended || inner.stamp(coll) != before {
            return;
        }
        let slot = (coll.to_owned(), key);
        if let Some((_, (old, _))) = inner.pages.remove(&slot) {
            inner.page_bytes -= old;
        }
        inner.make_room(size, self.max_page_bytes);
        inner.page_bytes += size;
        inner.pages.insert(slot, (before, (size, records)));
    }

    /// After a committed write: bumps the generation and updates the record in place
    /// (`Some`) or forgets it (`None`, a delete).
    pub fn written(&self, coll: &str, id: &str, record: Option<Record>) {
        let mut inner = self.lock();
        *inner.generations.entry(coll.to_owned()).or_insert(0) += 1;
        let key = (coll.to_owned(), id.to_owned());
        // Writes can report out of commit order; only a newer version replaces a cached
        // one in place, anything else just forgets it.
        let newer = match (&record, inner.records.get(&key)) {
            (Some(r), Some(cached)) => r.version > cached.version,
            _ => false,
        };
        match record {
            Some(r) if newer && self.max_records > 0 => {
                inner.records.insert(key, Arc::new(r));
            }
            _ => {
                inner.records.remove(&key);
            }
        }
    }

    /// After a schema change: nothing read before it may be served or inserted.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.records.clear();
        inner.counts.clear();
        inner.clear_pages();
    }

    /// The change feed of a shared store is down: changes by others may go unseen, so
    /// stop serving and keeping anything until [`ReadCache::resume`].
    pub fn suspend(&self) {
        let mut inner = self.lock();
        inner.suspended = true;
        inner.epoch += 1;
        inner.records.clear();
        inner.counts.clear();
        inner.clear_pages();
    }

    /// Whether the cache serves (false while a shared store's change feed is down or
    /// not yet connected).
    pub fn is_live(&self) -> bool {
        !self.lock().suspended
    }

    /// The change feed is complete again (from an empty cache).
    pub fn resume(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.records.clear();
        inner.counts.clear();
        inner.clear_pages();
        inner.suspended = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn rec(id: &str, version: i64) -> Record {
        Record {
            id: id.into(),
            created: String::new(),
            updated: String::new(),
            version,
            data: Map::new(),
        }
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_inserted() {
        let c = ReadCache::new(10, 10, 1 << 20);
        let before = c.stamp("posts");
        c.written("posts", "a", Some(rec("a", 2)));
        c.put_record("posts", before, Arc::new(rec("a", 1)));
        assert!(
            c.record("posts", "a").is_none(),
            "the stale read was refused"
        );
        let before = c.stamp("posts");
        c.put_record("posts", before, Arc::new(rec("a", 2)));
        assert_eq!(c.record("posts", "a").map(|r| r.version), Some(2));
        c.written("posts", "a", Some(rec("a", 3)));
        assert_eq!(
            c.record("posts", "a").map(|r| r.version),
            Some(3),
            "write-through"
        );
        c.written("posts", "a", Some(rec("a", 2)));
        assert!(
            c.record("posts", "a").is_none(),
            "an older version reported late is not kept"
        );
        let before = c.stamp("posts");
        c.put_record("posts", before, Arc::new(rec("a", 3)));
        c.written("posts", "a", None);
        assert!(c.record("posts", "a").is_none(), "deleted");
    }

    #[test]
    fn counts_die_with_any_write_and_schema_changes_clear_all() {
        let c = ReadCache::new(10, 10, 1 << 20);
        let s = c.stamp("posts");
        c.put_count("posts", s, "k".into(), 5);
        assert_eq!(c.count("posts", "k"), Some(5));
        c.written("posts", "zzz", None);
        assert_eq!(c.count("posts", "k"), None);
        let s = c.stamp("posts");
        c.put_record("posts", s, Arc::new(rec("b", 1)));
        c.clear();
        assert!(c.record("posts", "b").is_none());
        c.put_record("posts", s, Arc::new(rec("b", 1)));
        assert!(
            c.record("posts", "b").is_none(),
            "reads from before the schema change are refused"
        );
    }

    #[test]
    fn a_suspended_cache_serves_and_keeps_nothing() {
        let c = ReadCache::new(10, 10, 1 << 20);
        c.suspend();
        let s = c.stamp("p");
        c.put_record("p", s, Arc::new(rec("a", 1)));
        c.put_count("p", s, "k".into(), 1);
        assert!(c.record("p", "a").is_none());
        assert!(c.count("p", "k").is_none());
        c.resume();
        let s = c.stamp("p");
        c.put_record("p", s, Arc::new(rec("a", 1)));
        assert!(c.record("p", "a").is_some());
    }

    #[test]
    fn pages_die_with_any_write_to_their_collection() {
        let c = ReadCache::new(10, 10, 1 << 20);
        let s = c.stamp("p");
        c.put_page("p", s, "q".into(), Arc::new(vec![rec("a", 1)]));
        assert_eq!(c.page("p", "q").map(|v| v.len()), Some(1));
        c.written("other", "x", None);
        assert!(
            c.page("p", "q").is_some(),
            "other collections do not matter"
        );
        c.written("p", "b", None);
        assert!(c.page("p", "q").is_none());
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

    #[test]
    fn pages_are_bounded_by_their_size_in_bytes() {
        let budget = 1024 * 1024;
        let c = ReadCache::new(10, 10, budget);
        let big = page_of(100, 2000);
        let size = estimate_page_bytes("q0", &big);
        assert!(
            size > 100 * 2000 && size < 100 * 2600,
            "the estimate follows the records' size: {size}"
        );
        // Far more pages than fit: the total stays within the budget, the newest is kept.
        for i in 0..50 {
            let s = c.stamp("p");
            c.put_page("p", s, format!("q{i}"), big.clone());
            let inner = c.lock();
            assert!(
                inner.page_bytes <= budget,
                "{} > {budget}",
                inner.page_bytes
            );
            let sum: usize = inner.pages.values().map(|(_, (n, _))| n).sum();
            assert_eq!(sum, inner.page_bytes, "the running total is exact");
        }
        assert!(c.page("p", "q49").is_some());
        assert!(c.lock().pages.len() <= budget / size);
        // Many small pages fit where few large ones do.
        let small = page_of(1, 10);
        for i in 0..200 {
            let s = c.stamp("small");
            c.put_page("small", s, format!("k{i}"), small.clone());
        }
        assert!(c.page("small", "k199").is_some());
        // A page larger than the whole budget is not kept, and evicts nothing.
        let before = c.lock().pages.len();
        let s = c.stamp("p");
        c.put_page("p", s, "huge".into(), page_of(501, 4000));
        assert!(c.page("p", "huge").is_none());
        assert_eq!(c.lock().pages.len(), before);
        c.clear();
        assert_eq!(c.lock().page_bytes, 0);
        // 0 turns pages off.
        let off = ReadCache::new(10, 10, 0);
        let s = off.stamp("p");
        off.put_page("p", s, "q".into(), small);
        assert!(off.page("p", "q").is_none());
    }

    #[test]
    fn stale_pages_are_evicted_first() {
        let unit = page_of(10, 1000);
        let size = estimate_page_bytes("a", &unit) + 1;
        let c = ReadCache::new(10, 10, size * 3 + size / 2);
        for (coll, key) in [("p", "a"), ("p", "b"), ("s", "c")] {
            let s = c.stamp(coll);
            c.put_page(coll, s, key.into(), unit.clone());
        }
        c.written("s", "x", None);
        let s = c.stamp("p");
        c.put_page("p", s, "d".into(), unit.clone());
        for key in ["a", "b", "d"] {
            assert!(c.page("p", key).is_some(), "{key} was kept");
        }
        assert_eq!(c.lock().pages.len(), 3, "the stale page made room");
    }

    #[test]
    fn bounded() {
        let c = ReadCache::new(3, 10, 1024);
        for i in 0..10 {
            let s = c.stamp("p");
            c.put_record("p", s, Arc::new(rec(&i.to_string(), 1)));
        }
        assert!(c.lock().records.len() <= 3);
    }
}
