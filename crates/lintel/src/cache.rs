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
//! which holds for the embedded store. Bounded by entry counts; when full, an arbitrary
//! entry is evicted (random eviction). No lock is held across an await.

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
    pages: Entries<Arc<Vec<Record>>>,
}

impl Inner {
    fn stamp(&self, coll: &str) -> Stamp {
        Stamp(self.epoch, self.generations.get(coll).copied().unwrap_or(0))
    }
}

pub struct ReadCache {
    inner: Mutex<Inner>,
    max_records: usize,
    max_counts: usize,
}

impl ReadCache {
    /// `max_records == 0` turns record caching off; `max_counts == 0` count caching.
    pub fn new(max_records: usize, max_counts: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_records,
            max_counts,
        }
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
        let name = if hit.is_some() { "hit" } else { "miss" };
        metrics::counter!("lintel_cache_requests_total", "kind" => "record", "result" => name)
            .increment(1);
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
        let name = if hit.is_some() { "hit" } else { "miss" };
        metrics::counter!("lintel_cache_requests_total", "kind" => "count", "result" => name)
            .increment(1);
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
    /// to its collection. Shares the count budget.
    pub fn page(&self, coll: &str, key: &str) -> Option<Arc<Vec<Record>>> {
        if self.max_counts == 0 {
            return None;
        }
        let inner = self.lock();
        let current = inner.stamp(coll);
        let hit = inner
            .pages
            .get(&(coll.to_owned(), key.to_owned()))
            .filter(|(stamp, _)| !inner.suspended && *stamp == current)
            .map(|(_, p)| p.clone());
        drop(inner);
        let name = if hit.is_some() { "hit" } else { "miss" };
        metrics::counter!("lintel_cache_requests_total", "kind" => "page", "result" => name)
            .increment(1);
        hit
    }

    pub fn put_page(&self, coll: &str, before: Stamp, key: String, records: Arc<Vec<Record>>) {
        if self.max_counts == 0 {
            return;
        }
        let mut inner = self.lock();
        if inner.suspended || inner.stamp(coll) != before {
            return;
        }
        if inner.pages.len() >= self.max_counts {
            inner.pages.clear();
        }
        inner
            .pages
            .insert((coll.to_owned(), key), (before, records));
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
        inner.pages.clear();
    }

    /// The change feed of a shared store is down: changes by others may go unseen, so
    /// stop serving and keeping anything until [`ReadCache::resume`].
    pub fn suspend(&self) {
        let mut inner = self.lock();
        inner.suspended = true;
        inner.epoch += 1;
        inner.records.clear();
        inner.counts.clear();
        inner.pages.clear();
    }

    /// The change feed is complete again (from an empty cache).
    pub fn resume(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.records.clear();
        inner.counts.clear();
        inner.pages.clear();
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
        let c = ReadCache::new(10, 10);
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
        let c = ReadCache::new(10, 10);
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
        let c = ReadCache::new(10, 10);
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
        let c = ReadCache::new(10, 10);
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

    #[test]
    fn bounded() {
        let c = ReadCache::new(3, 10);
        for i in 0..10 {
            let s = c.stamp("p");
            c.put_record("p", s, Arc::new(rec(&i.to_string(), 1)));
        }
        assert!(c.lock().records.len() <= 3);
    }
}
