//! The event log as capabilities consume it: reading pages of committed changes in
//! `seq` order ([`page`]), the [`EventBus`] that tells consumers the log grew, the
//! [`Subscription`] that follows the log from a position, and the sequencer task that
//! numbers committed events (PostgreSQL) and publishes the new end of the log.
//!
//! The bus carries only "the log now ends at `seq`": a consumer reads the events
//! themselves from the store, at its own pace. So a slow consumer never blocks a
//! writer and one that falls behind (or restarts) resumes from its last `seq`.
//! Events are appended by the store in the writes' own transactions (see
//! `store::events`), never here.

pub mod error;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::runtime::Runtime;
use crate::store::events::{EventQuery, list_sql, row_json};
use crate::store::{EventMarks, Store, StoreError};
pub use error::EventsError;
pub use routes::router;

/// The most events one page holds.
pub const MAX_LIMIT: i64 = 1000;
/// The most `types` one query may name.
pub const MAX_TYPES: usize = 20;

/// Tells consumers in this process that the log grew. The in-process bus is a watch
/// channel holding the highest `seq`; a bus across instances (NATS JetStream) will
/// implement the same trait.
pub trait EventBus: Send + Sync + 'static {
    /// The log now ends at `last` (numbers only go up; a lower one is ignored).
    fn publish(&self, last: i64);
    /// A receiver of the log's end, starting at its current value.
    fn subscribe(&self) -> watch::Receiver<i64>;
}

/// The bus inside one process.
pub struct LocalBus {
    tx: watch::Sender<i64>,
}

impl LocalBus {
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(0),
        }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus for LocalBus {
    fn publish(&self, last: i64) {
        self.tx.send_if_modified(|cur| {
            if last > *cur {
                *cur = last;
                true
            } else {
                false
            }
        });
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        self.tx.subscribe()
    }
}

/// The events part of the runtime.
pub struct EventsRuntime {
    pub bus: Arc<dyn EventBus>,
}

impl EventsRuntime {
    pub fn new() -> Self {
        Self {
            bus: Arc::new(LocalBus::new()),
        }
    }
}

impl Default for EventsRuntime {
    fn default() -> Self {
        Self::new()
    }
}

/// A page of events.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Value>,
    /// The `seq` to ask `after` next: the last item's, or the query's own when empty.
    pub next_after: i64,
}

/// Events after `q.after` (or from the oldest kept, when `after` is `None`). A
/// position inside the purged range is refused with the oldest `seq` still kept.
pub async fn page(
    store: &dyn Store,
    after: Option<i64>,
    mut q: EventQuery,
) -> Result<Page, EventsError> {
    let marks = read_marks(store).await?;
    q.after = match after {
        Some(a) if a < marks.purged => {
            return Err(EventsError::Purged {
                oldest: marks.purged + 1,
            });
        }
        Some(a) => a,
        None => marks.purged,
    };
    let rows = store.query_rows(list_sql(store.dialect(), &q)).await?;
    let items: Vec<Value> = rows.iter().map(|r| row_json(r)).collect();
    let next_after = items
        .last()
        .and_then(|e| e.get("seq"))
        .and_then(Value::as_i64)
        .unwrap_or(q.after);
    Ok(Page { items, next_after })
}

async fn read_marks(store: &dyn Store) -> Result<EventMarks, StoreError> {
    let rows = store
        .query_rows(crate::store::events::marks_sql(store.dialect()))
        .await?;
    let first = rows.first();
    let at = |i: usize| {
        first
            .and_then(|r| r.get(i))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    Ok(EventMarks {
        last: at(0),
        purged: at(1),
    })
}

/// Follows the log from a position: each [`Subscription::next`] returns the next
/// events (waiting for the bus when there are none).
pub struct Subscription {
    store: Arc<dyn Store>,
    ends: watch::Receiver<i64>,
    query: EventQuery,
}

impl Subscription {
    /// Follows events after `after` that match `query` (its `after` is ignored).
    pub fn new(rt: &Runtime, after: i64, mut query: EventQuery) -> Self {
        query.after = after;
        if query.limit <= 0 {
            query.limit = 100;
        }
        Self {
            store: rt.store.clone(),
            ends: rt.events.bus.subscribe(),
            query,
        }
    }

    /// The position after the events returned so far.
    pub fn position(&self) -> i64 {
        self.query.after
    }

    /// The next events, at least one; waits while there are none. An error from the
    /// store (or a purged position) is returned as is; the caller decides to retry.
    pub async fn next(&mut self) -> Result<Vec<Value>, EventsError> {
        loop {
            self.ends.borrow_and_update();
            let page = page(
                self.store.as_ref(),
                Some(self.query.after),
                self.query.clone(),
            )
            .await?;
            self.query.after = page.next_after;
            if !page.items.is_empty() {
                return Ok(page.items);
            }
            // A publish between the read and here marked the receiver changed, so
            // this returns at once rather than missing it. A periodic re-read covers
            // a bus that missed a change made elsewhere.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.ends.changed()).await;
        }
    }
}

/// Numbers committed events and publishes the log's end: after each commit that
/// appended events (the store's wake-up), and every `poll` (events other instances
/// appended, and any left unnumbered by a crash). Ends when `shutdown` fires.
pub async fn run_sequencer(
    rt: Runtime,
    poll: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    let appended = rt.store.events_appended();
    let mut failures = 0u32;
    loop {
        match rt.store.sequence_events().await {
            Ok(marks) => {
                failures = 0;
                rt.events.bus.publish(marks.last);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(error = %e, "numbering events failed; retrying");
                }
            }
        }
        tokio::select! {
            _ = appended.notified() => {
                // Commits come in bursts: one numbering pass serves the burst.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// A record as an event carries it (`record` or `previous`), back as a [`Record`]:
/// the system fields out of the data. `None` for anything but a record object.
pub fn record_from_json(r: &Value) -> Option<crate::store::Record> {
    let o = r.as_object()?;
    let mut data = o.clone();
    for k in ["id", "created", "updated", "version"] {
        data.remove(k);
    }
    let text = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Some(crate::store::Record {
        id: o.get("id")?.as_str()?.to_owned(),
        created: text("created"),
        updated: text("updated"),
        version: o.get("version").and_then(Value::as_i64).unwrap_or(0),
        data,
    })
}
