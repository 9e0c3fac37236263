//! Live subscriptions (server-sent events): a client connects, gets a `clientId`, and
//! sets its subscriptions (`posts`, `posts/RECORD_ID`, `posts?filter=...`). One task
//! follows the event log and hands each event to every subscriber that may see it:
//! the view rule decides per subscriber and per event, before and after the change,
//! so a record that leaves a subscriber's view (or filter) arrives as a `delete` and
//! one that enters it as a `create`. Each client has a bounded queue; a client that
//! cannot keep up is dropped (`too_slow`), and writers never wait for readers. A
//! reconnecting client names the last event it saw (`Last-Event-ID`) and is replayed
//! what it missed from the log before it goes live, with no gap and no duplicate.

pub mod routes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::access::permit;
use crate::access::render::render;
use crate::access::{Caller, rules};
use crate::events::{EventsError, record_from_json};
use crate::runtime::Runtime;
use crate::schema::{Action, Collection};
use crate::store::events::EventQuery;
use crate::store::{Record, StoreError};
use crate::validation::{FieldErrors, push_field_error};

/// Events read from the log at a time.
const PAGE: i64 = 500;
/// Messages a client's queue holds before it counts as too slow.
pub const QUEUE: usize = 1024;

/// What a client is sent.
#[derive(Debug)]
pub enum Out {
    Event {
        seq: i64,
        topic: String,
        /// `{"action", "collection", "record"}`, serialised once for every client.
        data: Arc<str>,
    },
    /// The position asked for is past retention: reload and go on from `seq`. `ids`:
    /// the subscriptions concerned (all of a resumed SSE stream's).
    Reset { seq: i64, ids: Vec<String> },
    /// A WebSocket protocol message (`subscribed`, `error`), in order with the events.
    Message(Value),
}

/// One subscription, as written and as understood.
#[derive(Debug, Clone)]
pub struct Sub {
    /// What its events are labelled with: the topic as written (SSE) or the
    /// subscription's id (WebSocket).
    pub topic: String,
    pub collection: String,
    pub record: Option<String>,
    pub filter: Option<lintel_filter::Expr>,
    /// Events up to this one are not for it (it began, or resumed, after them).
    pub from: i64,
}

struct Client {
    owner: String,
    ip: Option<String>,
    caller: Caller,
    subs: Vec<Sub>,
    tx: mpsc::Sender<Out>,
    /// The last event considered for this client.
    cursor: i64,
    /// Set by a reconnect (`Last-Event-ID`): replayed from here once subscribed.
    resume: Option<i64>,
    /// Being replayed: the live feed leaves it alone meanwhile.
    replaying: bool,
    /// Where the cursor stood before a WebSocket `after` rewound it for a replay.
    rewound_from: Option<i64>,
    slow: Arc<AtomicBool>,
}

/// The connected clients and the feed's position.
#[derive(Default)]
pub struct RealtimeRuntime {
    hub: Mutex<Hub>,
}

#[derive(Default)]
struct Hub {
    clients: HashMap<String, Client>,
    /// The last event the feed has handed out.
    last: i64,
}

/// Why a realtime request is refused.
#[derive(Debug)]
pub enum RealtimeError {
    /// Bad topics or filters (400 `validation_failed`).
    Invalid(FieldErrors),
    /// No such client (404).
    UnknownClient,
    /// Another caller's client, or a collection whose list rule refuses this caller
    /// outright (403 `forbidden`).
    Forbidden(String),
    /// Over a connection limit (429 `too_many_connections`).
    TooMany(String),
    Store(StoreError),
}

impl From<StoreError> for RealtimeError {
    fn from(e: StoreError) -> Self {
        RealtimeError::Store(e)
    }
}

/// Who a client belongs to: an account, a key, or anonymous.
fn owner_of(caller: &Caller) -> String {
    match caller.account() {
        Some((c, id)) => format!("{c}/{id}"),
        None => caller.actor(),
    }
}

/// A new connection: its client id, and the receiving end of its queue with the flag
/// that says it was dropped for being slow. `last_event` resumes after that event.
pub fn connect(
    rt: &Runtime,
    caller: Caller,
    last_event: Option<i64>,
) -> Result<(String, mpsc::Receiver<Out>, Arc<AtomicBool>), RealtimeError> {
    let cfg = &rt.config.realtime;
    let owner = owner_of(&caller);
    let mut hub = rt
        .realtime
        .hub
        .lock()
        .map_err(|_| RealtimeError::Store(StoreError::Internal("realtime lock".into())))?;
    if !caller.is_anonymous()
        && hub.clients.values().filter(|c| c.owner == owner).count() >= cfg.max_connections_per_user
    {
        return Err(RealtimeError::TooMany(format!(
            "at most {} connections per account",
            cfg.max_connections_per_user
        )));
    }
    if caller.ip.is_some()
        && hub.clients.values().filter(|c| c.ip == caller.ip).count()
            >= cfg.max_connections_per_address
    {
        return Err(RealtimeError::TooMany(format!(
            "at most {} connections per address",
            cfg.max_connections_per_address
        )));
    }
    let id = crate::ids::record_id();
    let (tx, rx) = mpsc::channel(QUEUE);
    let slow = Arc::new(AtomicBool::new(false));
    let cursor = hub.last;
    hub.clients.insert(
        id.clone(),
        Client {
            owner,
            ip: caller.ip.clone(),
            caller,
            subs: Vec::new(),
            tx,
            cursor,
            resume: last_event,
            replaying: false,
            rewound_from: None,
            slow: slow.clone(),
        },
    );
    Ok((id, rx, slow))
}

/// A connection ended.
pub fn disconnect(rt: &Runtime, id: &str) {
    if let Ok(mut hub) = rt.realtime.hub.lock() {
        hub.clients.remove(id);
    }
}

/// Parses and checks subscriptions for `caller`.
fn parse(rt: &Runtime, caller: &Caller, topics: &[String]) -> Result<Vec<Sub>, RealtimeError> {
    let max = rt.config.realtime.max_subscriptions;
    if topics.len() > max {
        let mut errors = FieldErrors::new();
        push_field_error(
            &mut errors,
            "subscriptions",
            "too_many",
            format!("at most {max} subscriptions per connection"),
        );
        return Err(RealtimeError::Invalid(errors));
    }
    let catalog = rt.catalog();
    let mut errors = FieldErrors::new();
    let mut subs = Vec::with_capacity(topics.len());
    for (i, topic) in topics.iter().enumerate() {
        let key = format!("subscriptions[{i}]");
        // A topic names SSE events: no line breaks or other control characters.
        if topic.chars().any(char::is_control) || topic.len() > 2048 {
            push_field_error(
                &mut errors,
                key,
                "invalid_topic",
                "at most 2048 bytes, without control characters",
            );
            continue;
        }
        let (path, filter) = match topic.split_once("?filter=") {
            Some((p, f)) => (p, Some(f)),
            None => (topic.as_str(), None),
        };
        let (name, record) = match path.split_once('/') {
            Some((c, r)) => (c, Some(r)),
            None => (path, None),
        };
        let Some(coll) = catalog.get(name) else {
            push_field_error(
                &mut errors,
                key,
                "unknown_collection",
                format!("no collection '{name}'"),
            );
            continue;
        };
        if let Some(r) = record
            && !crate::schema::kinds::is_record_id(r)
        {
            push_field_error(
                &mut errors,
                key,
                "invalid_topic",
                "not a record id after the collection",
            );
            continue;
        }
        if !caller.scope_allows(coll.name(), Action::List)
            || rules::is_denied_outright(caller, &coll, Action::List)
        {
            return Err(RealtimeError::Forbidden(format!(
                "the list rule of '{name}' admits no event for this caller"
            )));
        }
        let expr = match filter {
            None => None,
            Some(f) => {
                if let Err(e) = crate::store::filter::check(&coll, f) {
                    push_field_error(
                        &mut errors,
                        key,
                        e.code,
                        format!("{} (at position {})", e.message, e.position),
                    );
                    continue;
                }
                match lintel_filter::parse(f) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        push_field_error(&mut errors, key, "invalid_filter", e.message);
                        continue;
                    }
                }
            }
        };
        subs.push(Sub {
            topic: topic.clone(),
            collection: coll.name().to_owned(),
            record: record.map(str::to_owned),
            filter: expr,
            from: 0,
        });
    }
    if errors.is_empty() {
        Ok(subs)
    } else {
        Err(RealtimeError::Invalid(errors))
    }
}

/// Sets a client's subscriptions (replacing them) and answers once they are live: a
/// resumed client is first replayed what it missed.
pub async fn subscribe(
    rt: &Runtime,
    caller: &Caller,
    client_id: &str,
    topics: &[String],
) -> Result<Vec<String>, RealtimeError> {
    let mut subs = parse(rt, caller, topics)?;
    let resume = {
        let mut hub = rt
            .realtime
            .hub
            .lock()
            .map_err(|_| RealtimeError::Store(StoreError::Internal("realtime lock".into())))?;
        let last = hub.last;
        let client = hub
            .clients
            .get_mut(client_id)
            .ok_or(RealtimeError::UnknownClient)?;
        if client.owner != owner_of(caller) {
            return Err(RealtimeError::Forbidden(
                "this client belongs to another caller".into(),
            ));
        }
        let resume = match client.resume.take() {
            Some(after) => {
                client.cursor = after;
                client.replaying = true;
                true
            }
            None => {
                // Subscriptions apply to what commits from now on.
                client.cursor = client.cursor.max(last);
                false
            }
        };
        for sub in &mut subs {
            sub.from = client.cursor;
        }
        client.subs = subs;
        resume
    };
    if resume {
        replay(rt, client_id, None).await?;
    }
    Ok(topics.to_vec())
}

/// One WebSocket subscription: `id` names it in its events; `after` replays the
/// events after that one first. Answers once it is live (the `subscribed` message is
/// queued after the replayed events).
pub async fn subscribe_one(
    rt: &Runtime,
    caller: &Caller,
    client_id: &str,
    id: &str,
    topic: &str,
    filter: Option<&str>,
    after: Option<i64>,
) -> Result<(), RealtimeError> {
    let invalid = |code: &'static str, why: String| {
        let mut errors = FieldErrors::new();
        push_field_error(&mut errors, "id", code, why);
        RealtimeError::Invalid(errors)
    };
    if id.is_empty() || id.len() > 128 {
        return Err(invalid("invalid", "must be 1 to 128 characters".into()));
    }
    if topic.contains('?') {
        let mut errors = FieldErrors::new();
        push_field_error(
            &mut errors,
            "topic",
            "invalid_topic",
            "a collection or collection/RECORD_ID; the filter goes in `filter`",
        );
        return Err(RealtimeError::Invalid(errors));
    }
    let written = match filter {
        Some(f) => format!("{topic}?filter={f}"),
        None => topic.to_owned(),
    };
    let mut sub = match parse(rt, caller, std::slice::from_ref(&written)) {
        Ok(mut v) => v
            .pop()
            .ok_or_else(|| invalid("invalid", "no topic".into()))?,
        // Field names of the WebSocket message, not of the SSE body.
        Err(RealtimeError::Invalid(e)) => {
            let mut errors = FieldErrors::new();
            for (_, item) in e {
                let field = if filter.is_some()
                    && !item.code.contains("topic")
                    && item.code != "unknown_collection"
                {
                    "filter"
                } else {
                    "topic"
                };
                push_field_error(&mut errors, field, &item.code, item.message);
            }
            return Err(RealtimeError::Invalid(errors));
        }
        Err(e) => return Err(e),
    };
    sub.topic = id.to_owned();
    let replay_now = {
        let mut hub = rt
            .realtime
            .hub
            .lock()
            .map_err(|_| RealtimeError::Store(StoreError::Internal("realtime lock".into())))?;
        let last = hub.last;
        let max = rt.config.realtime.max_subscriptions;
        let client = hub
            .clients
            .get_mut(client_id)
            .ok_or(RealtimeError::UnknownClient)?;
        if client.subs.iter().any(|s| s.topic == id) {
            return Err(invalid(
                "duplicate",
                "a subscription with this id is live; unsubscribe it first".into(),
            ));
        }
        if client.subs.len() >= max {
            return Err(invalid(
                "too_many",
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let live = client.cursor.max(last);
        match after {
            Some(a) if a < live => {
                // The others already had what comes before the cursor.
                let cursor = client.cursor;
                for s in &mut client.subs {
                    s.from = s.from.max(cursor);
                }
                sub.from = a.max(0);
                client.subs.push(sub);
                client.rewound_from = Some(cursor);
                client.cursor = cursor.min(a.max(0));
                client.replaying = true;
                true
            }
            _ => {
                sub.from = live;
                client.cursor = live;
                client.subs.push(sub);
                // Queued with the subscription made live: nothing of it comes first.
                if client.tx.try_send(subscribed(id)).is_err() {
                    drop(hub);
                    drop_slow(rt, client_id);
                    return Err(RealtimeError::UnknownClient);
                }
                false
            }
        }
    };
    if replay_now && let Err(e) = replay(rt, client_id, Some(subscribed(id))).await {
        // The connection cannot be brought up to date: it ends (the client
        // reconnects and subscribes again).
        disconnect(rt, client_id);
        return Err(e);
    }
    Ok(())
}

fn subscribed(id: &str) -> Out {
    Out::Message(json!({"type": "subscribed", "id": id}))
}

/// Ends a WebSocket subscription; false when there was none by that id.
pub fn unsubscribe_one(rt: &Runtime, client_id: &str, id: &str) -> bool {
    with_client(rt, client_id, |c, _| {
        let before = c.subs.len();
        c.subs.retain(|s| s.topic != id);
        c.subs.len() != before
    })
    .unwrap_or(false)
}

/// Queues a protocol message for a client; false when it is gone or too slow.
pub fn message(rt: &Runtime, client_id: &str, msg: Value) -> bool {
    let sent = with_client(rt, client_id, |c, _| {
        c.tx.try_send(Out::Message(msg)).is_ok()
    });
    if sent == Some(false) {
        drop_slow(rt, client_id);
    }
    sent == Some(true)
}

/// Hands a resumed client the events after its cursor, page by page, until it has
/// caught up with the feed; then the feed takes over (it skipped the client meanwhile).
/// `done` is queued as the replay ends, in the same step that makes the client live.
async fn replay(rt: &Runtime, id: &str, done: Option<Out>) -> Result<(), RealtimeError> {
    let mut done = done;
    loop {
        let Some(cursor) = with_client(rt, id, |c, _| c.cursor) else {
            return Ok(());
        };
        let page = match crate::events::page(
            rt.store.as_ref(),
            Some(cursor),
            EventQuery {
                limit: PAGE,
                ..EventQuery::default()
            },
        )
        .await
        {
            Ok(p) => p,
            Err(EventsError::Purged { oldest }) => {
                // Subscriptions that began before what the log keeps get a reset
                // (reload, then go on from the feed's position); the others carry on
                // from where they stood.
                // (again, a queue that overflowed)
                let step = with_client(rt, id, |c, last| {
                    let mut ids = Vec::new();
                    for s in &mut c.subs {
                        if s.from < oldest - 1 {
                            s.from = last;
                            ids.push(s.topic.clone());
                        }
                    }
                    if !ids.is_empty() && c.tx.try_send(Out::Reset { seq: last, ids }).is_err() {
                        return (false, true);
                    }
                    match c.rewound_from.take() {
                        Some(back) if back >= oldest - 1 && back < last => {
                            c.cursor = back;
                            (true, false)
                        }
                        _ => {
                            c.cursor = last;
                            c.replaying = false;
                            let full = done.take().is_some_and(|m| c.tx.try_send(m).is_err());
                            (false, full)
                        }
                    }
                });
                match step {
                    Some((true, _)) => continue,
                    Some((_, true)) => drop_slow(rt, id),
                    _ => {}
                }
                return Ok(());
            }
            Err(EventsError::Store(e)) => return Err(e.into()),
        };
        if page.items.is_empty() {
            // (finished, a queue that overflowed)
            let finished = with_client(rt, id, |c, last| {
                if last <= c.cursor {
                    c.replaying = false;
                    c.rewound_from = None;
                    let full = done.take().is_some_and(|m| c.tx.try_send(m).is_err());
                    (true, full)
                } else {
                    (false, false)
                }
            });
            match finished {
                Some((_, true)) => {
                    drop_slow(rt, id);
                    return Ok(());
                }
                Some((false, _)) => {}
                _ => return Ok(()),
            }
            // The feed moved on meanwhile: those events are in the log by now.
            tokio::task::yield_now().await;
            continue;
        }
        let now = rt.clock.now();
        let catalog = rt.catalog();
        let full = with_client(rt, id, |c, _| {
            for ev in &page.items {
                let seq = ev["seq"].as_i64().unwrap_or(0);
                if seq <= c.cursor {
                    continue;
                }
                if let Some(p) = Prepared::new(ev, &catalog)
                    && send(c, &p, &now).is_err()
                {
                    return true;
                }
                c.cursor = seq;
            }
            false
        });
        if full == Some(true) {
            drop_slow(rt, id);
            return Ok(());
        }
        // A long replay does not hold a worker thread for its whole length.
        tokio::task::yield_now().await;
    }
}

/// Runs `f` on client `id` (and the feed's position) under the hub's lock.
fn with_client<T>(rt: &Runtime, id: &str, f: impl FnOnce(&mut Client, i64) -> T) -> Option<T> {
    let mut hub = rt.realtime.hub.lock().ok()?;
    let last = hub.last;
    hub.clients.get_mut(id).map(|c| f(c, last))
}

fn drop_slow(rt: &Runtime, id: &str) {
    if let Ok(mut hub) = rt.realtime.hub.lock()
        && let Some(c) = hub.clients.remove(id)
    {
        c.slow.store(true, Ordering::SeqCst);
    }
}

/// Whether `record` is one the client sees through `sub`: the view rule, the record
/// the topic names, and the subscription's filter.
fn sees(caller: &Caller, coll: &Collection, sub: &Sub, record: &Record, now: &str) -> bool {
    if sub.record.as_deref().is_some_and(|r| r != record.id) {
        return false;
    }
    if permit::view(caller, coll, record, now).is_none() {
        return false;
    }
    let Some(expr) = &sub.filter else {
        return true;
    };
    let auth = caller.auth_fields();
    let env = crate::store::filter::Env {
        now,
        auth: auth.as_ref(),
        body: None,
    };
    rules::eval(expr, coll, record, &env).unwrap_or(false)
}

/// A record event as every client needs it: decoded once, and its rendering (the
/// same for every caller who may see it: hidden fields never leave) serialised once
/// per action (`memo`: create, update, delete).
struct Prepared {
    seq: i64,
    coll: Arc<Collection>,
    before: Option<Record>,
    after: Option<Record>,
    memo: std::cell::RefCell<[Option<Arc<str>>; 3]>,
}

impl Prepared {
    /// `None` for events that are not record changes of a known collection.
    fn new(ev: &Value, catalog: &crate::schema::Catalog) -> Option<Prepared> {
        let kind = ev["type"].as_str().unwrap_or_default();
        if !matches!(kind, "record.created" | "record.updated" | "record.deleted") {
            return None;
        }
        let coll = catalog.get(ev["collection"].as_str()?)?;
        Some(Prepared {
            seq: ev["seq"].as_i64().unwrap_or(0),
            coll,
            before: record_from_json(&ev["previous"]),
            after: record_from_json(&ev["record"]),
            memo: Default::default(),
        })
    }

    fn rendered(&self, action: usize, visible: permit::Visible<'_>) -> Arc<str> {
        if let Some(r) = &self.memo.borrow()[action] {
            return r.clone();
        }
        let name = ["create", "update", "delete"][action];
        let data = json!({
            "action": name,
            "collection": self.coll.name(),
            "record": Value::Object(render(&self.coll, visible, None)),
        });
        let r: Arc<str> = Arc::from(data.to_string());
        self.memo.borrow_mut()[action] = Some(r.clone());
        r
    }
}

/// Queues what the event means to client `c`, for each of its subscriptions; `Err`
/// when its queue is full.
fn send(c: &Client, ev: &Prepared, now: &str) -> Result<(), ()> {
    let coll = &ev.coll;
    for sub in c
        .subs
        .iter()
        .filter(|s| s.collection == coll.name() && ev.seq > s.from)
    {
        let was = ev
            .before
            .as_ref()
            .is_some_and(|r| sees(&c.caller, coll, sub, r, now));
        let is = ev
            .after
            .as_ref()
            .is_some_and(|r| sees(&c.caller, coll, sub, r, now));
        let (action, record) = match (was, is) {
            (false, true) => (0, ev.after.as_ref()),
            (true, true) => (1, ev.after.as_ref()),
            (true, false) => (2, ev.before.as_ref()),
            (false, false) => continue,
        };
        let Some(record) = record else { continue };
        let Some(visible) = permit::view(&c.caller, coll, record, now) else {
            continue;
        };
        let data = ev.rendered(action, visible);
        c.tx.try_send(Out::Event {
            seq: ev.seq,
            topic: sub.topic.clone(),
            data,
        })
        .map_err(|_| ())?;
    }
    Ok(())
}

/// Follows the event log and hands each event to the clients that may see it, until
/// `shutdown` fires.
pub async fn run(rt: Runtime, mut shutdown: watch::Receiver<bool>) {
    let mut ends = rt.events.bus.subscribe();
    let start = match rt.store.sequence_events().await {
        Ok(m) => m.last,
        Err(e) => {
            tracing::warn!(error = %e, "realtime: reading the log's end failed");
            0
        }
    };
    if let Ok(mut hub) = rt.realtime.hub.lock() {
        hub.last = start;
        for c in hub.clients.values_mut() {
            c.cursor = c.cursor.max(start);
        }
    }
    loop {
        // Nobody listening: no read of the log; the position just follows its end.
        let idle = match rt.realtime.hub.lock() {
            Ok(mut hub) if hub.clients.values().all(|c| c.subs.is_empty()) => {
                let end = *ends.borrow();
                hub.last = hub.last.max(end);
                true
            }
            _ => false,
        };
        let last = rt.realtime.hub.lock().map(|h| h.last).unwrap_or(start);
        let more = if idle {
            false
        } else {
            match crate::events::page(
                rt.store.as_ref(),
                Some(last),
                EventQuery {
                    limit: PAGE,
                    ..EventQuery::default()
                },
            )
            .await
            {
                Ok(page) => {
                    let n = page.items.len();
                    feed(&rt, &page.items);
                    n >= PAGE as usize
                }
                Err(EventsError::Purged { oldest }) => {
                    if let Ok(mut hub) = rt.realtime.hub.lock() {
                        hub.last = oldest - 1;
                    }
                    true
                }
                Err(EventsError::Store(e)) => {
                    tracing::warn!(error = %e, "realtime: reading the log failed");
                    false
                }
            }
        };
        if more {
            continue;
        }
        tokio::select! {
            _ = ends.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            // Every stream and socket ends now (their queues close), so connections
            // drain instead of waiting out the grace period.
            if let Ok(mut hub) = rt.realtime.hub.lock() {
                hub.clients.clear();
            }
            return;
        }
    }
}

/// Hands a page of events to every live client, in order.
fn feed(rt: &Runtime, items: &[Value]) {
    if items.is_empty() {
        return;
    }
    let now = rt.clock.now();
    let catalog = rt.catalog();
    let Ok(mut hub) = rt.realtime.hub.lock() else {
        return;
    };
    let mut slow = Vec::new();
    for ev in items {
        let seq = ev["seq"].as_i64().unwrap_or(0);
        let prepared = Prepared::new(ev, &catalog);
        for (id, c) in hub.clients.iter_mut() {
            if c.replaying || c.resume.is_some() || seq <= c.cursor {
                continue;
            }
            if let Some(p) = prepared.as_ref()
                && send(c, p, &now).is_err()
            {
                slow.push(id.clone());
            }
            c.cursor = seq;
        }
        hub.last = hub.last.max(seq);
    }
    for id in slow {
        if let Some(c) = hub.clients.remove(&id) {
            c.slow.store(true, Ordering::SeqCst);
        }
    }
}
