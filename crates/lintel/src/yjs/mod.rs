//! Collaborative documents: a `yjs` field holds a Yjs document that clients edit
//! together (the y-websocket protocol, or binary updates over HTTP). Each open
//! document is a room: one task that owns the document, applies the writers'
//! updates, appends each to the store before any other peer hears of it, relays
//! awareness (cursors, presence), and compacts the appended updates into one state.
//! The record's field holds the document's JSON (each root by name), written shortly
//! after edits settle, so lists, filters, webhooks and subscriptions see edits as an
//! ordinary `record.updated`. Rooms close when idle; a restart loses no acknowledged
//! edit (the updates are in the store) and re-renders any JSON a crash left stale.

pub mod routes;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use yrs::sync::{Awareness, Message, MessageReader, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Any, ArrayRef, MapRef, Out, ReadTxn, StateVector, TextRef, Transact, Update};

use crate::runtime::Runtime;
use crate::schema::kinds::FieldType;
use crate::store::{Sql, SqlValue, StoreError, WriteOp};

/// Most bytes of one message or update from a client.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Appended updates that trigger a compaction into one state.
const COMPACT_AFTER: usize = 200;
/// Frames a peer's queue holds before it counts as too slow and is dropped (frames
/// are shared between peers, not copied).
const PEER_QUEUE: usize = 256;
/// Commands a room's inbox holds; senders wait beyond that.
const INBOX: usize = 128;
/// Protocol messages one frame may pack.
const MESSAGES_PER_FRAME: usize = 64;
/// A room without peers closes after this long.
const IDLE: Duration = Duration::from_secs(10);
/// The record's JSON is written this long after the last edit...
const SETTLE: Duration = Duration::from_millis(250);
/// ...and at least this often while edits keep coming.
const SETTLE_MAX: Duration = Duration::from_secs(2);

/// The document of one record's field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocKey {
    pub collection: String,
    pub record: String,
    pub field: String,
}

impl DocKey {
    fn name(&self) -> String {
        format!("{}/{}/{}", self.collection, self.record, self.field)
    }
}

/// Why a document operation failed.
#[derive(Debug)]
pub enum YjsError {
    /// Bytes that are not a Yjs update (400 `invalid_update`).
    InvalidUpdate(String),
    /// The room could not be opened or was closing (503, retry).
    Unavailable,
    Store(StoreError),
}

impl From<StoreError> for YjsError {
    fn from(e: StoreError) -> Self {
        YjsError::Store(e)
    }
}

/// The open rooms.
#[derive(Default)]
pub struct YjsRuntime {
    /// Each open room by document, with the number that tells it from a later room
    /// of the same document.
    rooms: Mutex<HashMap<String, (u64, mpsc::Sender<Cmd>)>>,
    next_peer: AtomicU64,
}

enum Cmd {
    Join {
        peer: u64,
        out: mpsc::Sender<Bytes>,
        writer: bool,
        actor: Option<Value>,
        reply: oneshot::Sender<()>,
    },
    Frame {
        peer: u64,
        data: Vec<u8>,
    },
    Leave {
        peer: u64,
    },
    /// The peer's caller may (no longer) write: the rules changed since it joined.
    Role {
        peer: u64,
        writer: bool,
    },
    Apply {
        update: Vec<u8>,
        actor: Option<Value>,
        reply: oneshot::Sender<Result<(), YjsError>>,
    },
    State {
        reply: oneshot::Sender<(Vec<u8>, Value)>,
    },
    /// Write the record's JSON now (start-up repair) and close when idle.
    Flush,
    /// The server stops: write the JSON, close every peer.
    Close,
}

/// A connection's place in a room (it leaves when dropped).
pub struct Peer {
    id: u64,
    room: mpsc::Sender<Cmd>,
}

impl Peer {
    /// Makes the peer a writer or a reader.
    pub async fn set_writer(&self, writer: bool) {
        let _ = self
            .room
            .send(Cmd::Role {
                peer: self.id,
                writer,
            })
            .await;
    }

    /// Hands a client's binary message to the room; false when the room is gone.
    pub async fn frame(&self, data: Vec<u8>) -> bool {
        self.room
            .send(Cmd::Frame {
                peer: self.id,
                data,
            })
            .await
            .is_ok()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let leave = Cmd::Leave { peer: self.id };
        if let Err(mpsc::error::TrySendError::Full(leave)) = self.room.try_send(leave) {
            let room = self.room.clone();
            tokio::spawn(async move {
                let _ = room.send(leave).await;
            });
        }
    }
}

/// The room of `key`, opened if needed.
fn room(rt: &Runtime, key: &DocKey) -> Result<mpsc::Sender<Cmd>, YjsError> {
    let mut rooms = rt.yjs.rooms.lock().map_err(|_| YjsError::Unavailable)?;
    let name = key.name();
    if let Some((_, tx)) = rooms.get(&name)
        && !tx.is_closed()
    {
        return Ok(tx.clone());
    }
    let (tx, rx) = mpsc::channel(INBOX);
    let number = rt.yjs.next_peer.fetch_add(1, Ordering::Relaxed);
    rooms.insert(name, (number, tx.clone()));
    // Tracked, so shutdown waits for rooms to store what they hold.
    rt.tasks
        .spawn(run_room(rt.clone(), key.clone(), number, rx));
    Ok(tx)
}

/// Sends `make(reply)` to the room of `key` and waits for the answer, opening the
/// room again when it closed meanwhile.
async fn ask<T>(
    rt: &Runtime,
    key: &DocKey,
    make: impl Fn(oneshot::Sender<T>) -> Cmd,
) -> Result<T, YjsError> {
    for _ in 0..3 {
        let tx = room(rt, key)?;
        let (reply, answer) = oneshot::channel();
        if tx.send(make(reply)).await.is_err() {
            continue;
        }
        match answer.await {
            Ok(v) => return Ok(v),
            // The room closed before it answered (idle, or it could not load).
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    Err(YjsError::Unavailable)
}

/// Joins the room of `key`; the receiver gets the frames for this peer, beginning
/// with the server's sync step 1 and the current awareness.
pub async fn join(
    rt: &Runtime,
    key: &DocKey,
    writer: bool,
    actor: Option<Value>,
) -> Result<(Peer, mpsc::Receiver<Bytes>), YjsError> {
    for _ in 0..3 {
        let id = rt.yjs.next_peer.fetch_add(1, Ordering::Relaxed);
        let tx = room(rt, key)?;
        let (out, rx) = mpsc::channel(PEER_QUEUE);
        let (reply, answer) = oneshot::channel();
        let cmd = Cmd::Join {
            peer: id,
            out,
            writer,
            actor: actor.clone(),
            reply,
        };
        if tx.send(cmd).await.is_err() {
            continue;
        }
        if answer.await.is_ok() {
            return Ok((Peer { id, room: tx }, rx));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(YjsError::Unavailable)
}

/// The document as one Yjs update, and as JSON.
pub async fn state(rt: &Runtime, key: &DocKey) -> Result<(Vec<u8>, Value), YjsError> {
    ask(rt, key, |reply| Cmd::State { reply }).await
}

/// Applies a binary update (from HTTP): checked, appended, relayed to the peers.
pub async fn apply(
    rt: &Runtime,
    key: &DocKey,
    update: Vec<u8>,
    actor: Option<Value>,
) -> Result<(), YjsError> {
    // Refused before a room is opened (and its document read) for it.
    Update::decode_v1(&update).map_err(|e| YjsError::InvalidUpdate(e.to_string()))?;
    ask(rt, key, |reply| Cmd::Apply {
        update: update.clone(),
        actor: actor.clone(),
        reply,
    })
    .await?
}

/// The document's JSON: each root by name, its type guessed from its content when
/// this server never declared it (a Y.Map with entries is an object, content with
/// text is a string, other items an array; an empty root is left out).
pub fn doc_json(doc: &yrs::Doc) -> Value {
    let txn = doc.transact();
    let mut out = Map::new();
    for (name, root) in txn.root_refs() {
        let v = match root {
            Out::YText(t) => Value::String(yrs::GetString::get_string(&t, &txn)),
            Out::YMap(m) => any_json(&yrs::types::ToJson::to_json(&m, &txn)),
            Out::YArray(a) => any_json(&yrs::types::ToJson::to_json(&a, &txn)),
            Out::UndefinedRef(ptr) => {
                let map = MapRef::from(ptr);
                if yrs::Map::len(&map, &txn) > 0 {
                    any_json(&yrs::types::ToJson::to_json(&map, &txn))
                } else {
                    let text = yrs::GetString::get_string(&TextRef::from(ptr), &txn);
                    if !text.is_empty() {
                        Value::String(text)
                    } else {
                        let arr = ArrayRef::from(ptr);
                        if yrs::Array::len(&arr, &txn) == 0 {
                            continue;
                        }
                        any_json(&yrs::types::ToJson::to_json(&arr, &txn))
                    }
                }
            }
            other => any_json(&yrs::types::ToJson::to_json(&other, &txn)),
        };
        out.insert(name.to_string(), v);
    }
    Value::Object(out)
}

fn any_json(a: &Any) -> Value {
    match a {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(n) => match n {
            yrs::Number::Int(i) => Value::from(*i),
            yrs::Number::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
        },
        Any::String(s) => Value::String(s.to_string()),
        Any::Buffer(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Any::Array(items) => Value::Array(items.iter().map(any_json).collect()),
        Any::Map(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), any_json(&m[k])))
                    .collect(),
            )
        }
    }
}

fn key_sql(sql: &mut Sql, key: &DocKey) {
    sql.push(" collection = ")
        .bind(SqlValue::Text(key.collection.clone()))
        .push(" AND record = ")
        .bind(SqlValue::Text(key.record.clone()))
        .push(" AND field = ")
        .bind(SqlValue::Text(key.field.clone()));
}

/// Reads a document from the store: its state and every update appended since, and
/// the last `seq`.
async fn load(rt: &Runtime, key: &DocKey) -> Result<(yrs::Doc, i64, usize), StoreError> {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT seq, data FROM _lintel_yjs WHERE");
    key_sql(&mut sql, key);
    sql.push(" ORDER BY seq");
    let rows = rt.store.query_rows(sql).await?;
    let doc = yrs::Doc::new();
    let mut last = 0;
    let mut appended = 0;
    {
        let mut txn = doc.transact_mut();
        for r in &rows {
            let seq = r.first().and_then(Value::as_i64).unwrap_or(0);
            let Some(bytes) = r
                .get(1)
                .and_then(Value::as_str)
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            else {
                continue;
            };
            match Update::decode_v1(&bytes) {
                Ok(u) => {
                    if let Err(e) = txn.apply_update(u) {
                        tracing::warn!(doc = %key.name(), seq, error = %e, "a stored Yjs update does not apply");
                    }
                }
                Err(e) => {
                    tracing::warn!(doc = %key.name(), seq, error = %e, "a stored Yjs update does not decode")
                }
            }
            last = last.max(seq);
            if seq > 0 {
                appended += 1;
            }
        }
    }
    Ok((doc, last, appended))
}

/// Appends one update; returns its `seq`.
async fn append(rt: &Runtime, key: &DocKey, update: &[u8], after: i64) -> Result<i64, StoreError> {
    let mut seq = after + 1;
    for _ in 0..5 {
        let mut sql = Sql::new(rt.store.dialect());
        sql.push(
            "INSERT INTO _lintel_yjs (collection, record, field, seq, data, created) VALUES (",
        )
        .bind_all([
            SqlValue::Text(key.collection.clone()),
            SqlValue::Text(key.record.clone()),
            SqlValue::Text(key.field.clone()),
            SqlValue::Int(seq),
            SqlValue::Text(base64::engine::general_purpose::STANDARD.encode(update)),
            SqlValue::Int(rt.clock.now_ms()),
        ])
        .push(")");
        match rt
            .store
            .write(vec![WriteOp::System { sql, expect: None }])
            .await
        {
            Ok(_) => return Ok(seq),
            Err(e) => {
                // Another instance appended to this document (the key is taken): go
                // after its update. Any other failure is the store's.
                let mut q = Sql::new(rt.store.dialect());
                q.push("SELECT MAX(seq) FROM _lintel_yjs WHERE");
                key_sql(&mut q, key);
                let rows = rt.store.query_rows(q).await?;
                let max = rows
                    .first()
                    .and_then(|r| r.first())
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if max < seq {
                    return Err(e.error);
                }
                seq = max + 1;
            }
        }
    }
    Err(StoreError::Internal(
        "appending a Yjs update kept conflicting".into(),
    ))
}

/// Replaces the updates up to `upto` with one state, in one transaction.
async fn compact(rt: &Runtime, key: &DocKey, state: &[u8], upto: i64) -> Result<(), StoreError> {
    let mut del = Sql::new(rt.store.dialect());
    del.push("DELETE FROM _lintel_yjs WHERE");
    key_sql(&mut del, key);
    del.push(" AND seq <= ").bind(SqlValue::Int(upto));
    let mut ins = Sql::new(rt.store.dialect());
    ins.push("INSERT INTO _lintel_yjs (collection, record, field, seq, data, created) VALUES (")
        .bind_all([
            SqlValue::Text(key.collection.clone()),
            SqlValue::Text(key.record.clone()),
            SqlValue::Text(key.field.clone()),
            SqlValue::Int(0),
            SqlValue::Text(base64::engine::general_purpose::STANDARD.encode(state)),
            SqlValue::Int(rt.clock.now_ms()),
        ])
        .push(")");
    rt.store
        .write(vec![
            WriteOp::System {
                sql: del,
                expect: None,
            },
            WriteOp::System {
                sql: ins,
                expect: None,
            },
        ])
        .await
        .map(|_| ())
        .map_err(|e| e.error)
}

/// Removes every stored update of one document.
async fn forget(rt: &Runtime, key: &DocKey) {
    let mut del = Sql::new(rt.store.dialect());
    del.push("DELETE FROM _lintel_yjs WHERE");
    key_sql(&mut del, key);
    if let Err(e) = rt
        .store
        .write(vec![WriteOp::System {
            sql: del,
            expect: None,
        }])
        .await
    {
        tracing::warn!(doc = %key.name(), error = %e.error, "removing a document's updates failed");
    }
}

/// How writing the record's JSON went.
enum Flushed {
    Done,
    /// The record, its field or its collection is gone.
    Gone,
    /// A store error: try again later.
    Later,
}

/// Writes the document's JSON into the record (a `record.updated` event), unless it
/// already holds it.
async fn write_json(rt: &Runtime, key: &DocKey, json: &Value, actor: Option<Value>) -> Flushed {
    for _ in 0..8 {
        let Some(coll) = rt.catalog().get(&key.collection) else {
            return Flushed::Gone;
        };
        if coll
            .field(&key.field)
            .is_none_or(|f| f.field_type != FieldType::Yjs)
        {
            return Flushed::Gone;
        }
        let sql = crate::store::sql::select_by_id(rt.store.dialect(), &coll, &key.record);
        let current = match rt.store.query_records(coll.clone(), sql).await {
            Ok(mut rows) => match rows.pop() {
                Some(r) => r,
                None => return Flushed::Gone,
            },
            Err(e) => {
                tracing::warn!(doc = %key.name(), error = %e, "reading a document's record failed");
                return Flushed::Later;
            }
        };
        if current.data.get(&key.field) == Some(json) {
            return Flushed::Done;
        }
        let mut data = current.data.clone();
        data.insert(key.field.clone(), json.clone());
        let record = crate::store::Record {
            id: current.id.clone(),
            created: current.created.clone(),
            updated: rt.clock.now(),
            version: current.version + 1,
            data,
        };
        let op = WriteOp::Update {
            coll: coll.clone(),
            record,
            expected_version: current.version,
        };
        let meta = crate::store::WriteMeta::by(actor.clone());
        match crate::records::service::apply_writes(rt, vec![op], meta).await {
            Ok(_) => return Flushed::Done,
            Err(e) if matches!(e.error, StoreError::VersionConflict) => continue,
            Err(e) if matches!(e.error, StoreError::NotFound) => return Flushed::Gone,
            Err(e) => {
                tracing::warn!(doc = %key.name(), error = %e.error, "writing a document's JSON failed");
                return Flushed::Later;
            }
        }
    }
    Flushed::Later
}

struct Slot {
    out: mpsc::Sender<Bytes>,
    writer: bool,
    actor: Option<Value>,
    /// Awareness clients this peer announced (removed when it leaves).
    clients: HashSet<yrs::ClientID>,
}

struct Room {
    rt: Runtime,
    key: DocKey,
    awareness: Awareness,
    peers: HashMap<u64, Slot>,
    last_seq: i64,
    appended: usize,
    /// Edits not yet in the record's JSON: since when, and the last one.
    dirty: Option<(Instant, Instant)>,
    actor: Option<Value>,
    /// The store failed under an edit: every peer is dropped (they re-sync on
    /// reconnect, and their edits come back with them).
    broken: bool,
}

fn encode(msg: &Message) -> Bytes {
    Bytes::from(msg.encode_v1())
}

impl Room {
    fn send(&mut self, peer: u64, frame: Bytes) {
        let full = self
            .peers
            .get(&peer)
            .is_some_and(|p| p.out.try_send(frame).is_err());
        if full {
            self.drop_peer(peer);
        }
    }

    fn broadcast(&mut self, from: Option<u64>, frame: Bytes) {
        let mut slow = Vec::new();
        for (id, p) in &self.peers {
            if Some(*id) != from && p.out.try_send(frame.clone()).is_err() {
                slow.push(*id);
            }
        }
        for id in slow {
            self.drop_peer(id);
        }
    }

    /// Removes a peer and its awareness states, telling the others.
    fn drop_peer(&mut self, peer: u64) {
        let Some(slot) = self.peers.remove(&peer) else {
            return;
        };
        if slot.clients.is_empty() {
            return;
        }
        for c in &slot.clients {
            self.awareness.remove_state(*c);
        }
        if let Ok(update) = self.awareness.update_with_clients(slot.clients) {
            let frame = encode(&Message::Awareness(update));
            self.broadcast(None, frame);
        }
    }

    /// Applies, appends, then relays one update from `from`.
    async fn edit(
        &mut self,
        from: Option<u64>,
        bytes: Vec<u8>,
        actor: Option<Value>,
    ) -> Result<(), YjsError> {
        let update =
            Update::decode_v1(&bytes).map_err(|e| YjsError::InvalidUpdate(e.to_string()))?;
        if update.is_empty() {
            return Ok(());
        }
        // Every non-empty update is kept, even one that changes nothing yet: it may
        // wait for missing parents, and updates are idempotent.
        {
            let mut txn = self.awareness.doc().transact_mut();
            txn.apply_update(update)
                .map_err(|e| YjsError::InvalidUpdate(e.to_string()))?;
        }
        match append(&self.rt, &self.key, &bytes, self.last_seq).await {
            Ok(seq) => self.last_seq = seq,
            Err(e) => {
                tracing::error!(doc = %self.key.name(), error = %e, "appending a Yjs update failed; closing the room");
                self.broken = true;
                return Err(YjsError::Store(e));
            }
        }
        self.appended += 1;
        let now = Instant::now();
        self.dirty = Some(self.dirty.map_or((now, now), |(first, _)| (first, now)));
        if actor.is_some() {
            self.actor = actor;
        }
        let frame = encode(&Message::Sync(SyncMessage::Update(bytes)));
        self.broadcast(from, frame);
        if self.appended >= COMPACT_AFTER {
            self.compact().await;
        }
        Ok(())
    }

    async fn compact(&mut self) {
        let state = self
            .awareness
            .doc()
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        match compact(&self.rt, &self.key, &state, self.last_seq).await {
            Ok(()) => self.appended = 0,
            Err(e) => {
                tracing::warn!(doc = %self.key.name(), error = %e, "compacting a document failed")
            }
        }
    }

    /// Writes the record's JSON if edits are waiting; false when the record is gone.
    async fn flush(&mut self, force: bool) -> bool {
        if self.dirty.is_none() && !force {
            return true;
        }
        let json = doc_json(self.awareness.doc());
        match write_json(&self.rt, &self.key, &json, self.actor.clone()).await {
            Flushed::Done => {
                self.dirty = None;
                true
            }
            Flushed::Later => {
                // Try again a little later.
                let now = Instant::now();
                self.dirty = Some((now, now));
                true
            }
            Flushed::Gone => false,
        }
    }

    async fn frame(&mut self, peer: u64, data: Vec<u8>) {
        let Some((writer, actor)) = self.peers.get(&peer).map(|p| (p.writer, p.actor.clone()))
        else {
            return;
        };
        let mut decoder = DecoderV1::from(data.as_slice());
        let messages: Vec<_> = MessageReader::new(&mut decoder)
            .take(MESSAGES_PER_FRAME + 1)
            .collect();
        if messages.len() > MESSAGES_PER_FRAME {
            tracing::debug!(doc = %self.key.name(), "a frame packing too many messages; dropping the peer");
            self.drop_peer(peer);
            return;
        }
        for msg in messages {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(doc = %self.key.name(), error = %e, "a bad y-websocket message; dropping the peer");
                    self.drop_peer(peer);
                    return;
                }
            };
            if !self.peers.contains_key(&peer) {
                return;
            }
            match msg {
                Message::Sync(SyncMessage::SyncStep1(sv)) => {
                    let update = self
                        .awareness
                        .doc()
                        .transact()
                        .encode_state_as_update_v1(&sv);
                    self.send(peer, encode(&Message::Sync(SyncMessage::SyncStep2(update))));
                }
                Message::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) => {
                    if !writer {
                        // A reader's edits are refused: never applied, never relayed.
                        continue;
                    }
                    if self.edit(Some(peer), u, actor.clone()).await.is_err() {
                        if self.broken {
                            return;
                        }
                        self.drop_peer(peer);
                        return;
                    }
                }
                Message::Awareness(update) => {
                    if let Some(slot) = self.peers.get_mut(&peer) {
                        for (id, entry) in &update.clients {
                            if entry.json.as_ref() == "null" {
                                slot.clients.remove(id);
                            } else {
                                slot.clients.insert(*id);
                            }
                        }
                    }
                    let frame = encode(&Message::Awareness(update.clone()));
                    let _ = self.awareness.apply_update(update);
                    self.broadcast(Some(peer), frame);
                }
                Message::AwarenessQuery => {
                    if let Ok(u) = self.awareness.update() {
                        self.send(peer, encode(&Message::Awareness(u)));
                    }
                }
                Message::Auth(_) | Message::Custom(..) => {}
            }
        }
    }
}

/// One room's task: owns the document until it has had no peer for a while.
async fn run_room(rt: Runtime, key: DocKey, number: u64, mut rx: mpsc::Receiver<Cmd>) {
    let (doc, last_seq, appended) = match load(&rt, &key).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(doc = %key.name(), error = %e, "loading a document failed");
            close_room(&rt, &key, number, &mut rx);
            return;
        }
    };
    let mut room = Room {
        rt: rt.clone(),
        key: key.clone(),
        awareness: Awareness::new(doc),
        peers: HashMap::new(),
        last_seq,
        appended,
        dirty: None,
        actor: None,
        broken: false,
    };
    if room.appended >= COMPACT_AFTER {
        room.compact().await;
    }
    let mut idle_since = Instant::now();
    let mut gone = false;
    loop {
        let flush_at = room
            .dirty
            .map(|(first, last)| (last + SETTLE).min(first + SETTLE_MAX));
        let wake = match flush_at {
            Some(t) => t,
            None if room.peers.is_empty() => idle_since + IDLE,
            None => Instant::now() + Duration::from_secs(3600),
        };
        let cmd = tokio::select! {
            c = rx.recv() => c,
            _ = tokio::time::sleep_until(wake.into()) => None,
        };
        if cmd.is_some() && room.peers.is_empty() {
            idle_since = Instant::now();
        }
        match cmd {
            Some(Cmd::Join {
                peer,
                out,
                writer,
                actor,
                reply,
            }) => {
                let sv = room.awareness.doc().transact().state_vector();
                let mut first = vec![encode(&Message::Sync(SyncMessage::SyncStep1(sv)))];
                if let Ok(u) = room.awareness.update()
                    && !u.clients.is_empty()
                {
                    first.push(encode(&Message::Awareness(u)));
                }
                for f in first {
                    let _ = out.try_send(f);
                }
                room.peers.insert(
                    peer,
                    Slot {
                        out,
                        writer,
                        actor,
                        clients: HashSet::new(),
                    },
                );
                // The connection gave up waiting: it never becomes a peer.
                if reply.send(()).is_err() {
                    room.peers.remove(&peer);
                }
            }
            Some(Cmd::Frame { peer, data }) => room.frame(peer, data).await,
            Some(Cmd::Role { peer, writer }) => {
                if let Some(p) = room.peers.get_mut(&peer) {
                    p.writer = writer;
                }
            }
            Some(Cmd::Leave { peer }) => {
                room.drop_peer(peer);
                if room.peers.is_empty() {
                    idle_since = Instant::now();
                }
            }
            Some(Cmd::Apply {
                update,
                actor,
                reply,
            }) => {
                let done = room.edit(None, update, actor).await;
                let _ = reply.send(done);
            }
            Some(Cmd::State { reply }) => {
                let update = room
                    .awareness
                    .doc()
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default());
                let _ = reply.send((update, doc_json(room.awareness.doc())));
            }
            Some(Cmd::Flush) => {
                if !room.flush(true).await {
                    gone = true;
                }
            }
            Some(Cmd::Close) => {
                room.flush(false).await;
                break;
            }
            None => {
                if room.dirty.is_some_and(|(first, last)| {
                    let now = Instant::now();
                    now >= last + SETTLE || now >= first + SETTLE_MAX
                }) && !room.flush(false).await
                {
                    gone = true;
                }
                if room.peers.is_empty() && room.dirty.is_none() && idle_since.elapsed() >= IDLE {
                    break;
                }
            }
        }
        if room.broken || gone {
            break;
        }
    }
    if gone {
        forget(&rt, &key).await;
    } else if !room.broken {
        if room.dirty.is_some() {
            room.flush(false).await;
        }
        // Stale JSON keeps its appended updates, so start-up repair finds it.
        if room.appended > 0 && room.dirty.is_none() {
            room.compact().await;
        }
    }
    room.peers.clear();
    close_room(&rt, &key, number, &mut rx);
}

/// Takes the room out of the registry (if it is still this one) and refuses what
/// was queued meanwhile: those callers open a new room.
fn close_room(rt: &Runtime, key: &DocKey, number: u64, rx: &mut mpsc::Receiver<Cmd>) {
    if let Ok(mut rooms) = rt.yjs.rooms.lock() {
        let name = key.name();
        if rooms.get(&name).is_some_and(|(n, _)| *n == number) {
            rooms.remove(&name);
        }
    }
    rx.close();
    while rx.try_recv().is_ok() {}
}

/// Documents whose appended updates were never compacted: a crash may have left
/// their record's JSON behind them.
async fn repair(rt: &Runtime) {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT DISTINCT collection, record, field FROM _lintel_yjs WHERE seq > 0");
    let rows = match rt.store.query_rows(sql).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "listing documents to repair failed");
            return;
        }
    };
    for r in rows {
        let text = |i: usize| {
            r.get(i)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let key = DocKey {
            collection: text(0),
            record: text(1),
            field: text(2),
        };
        if let Ok(tx) = room(rt, &key) {
            let _ = tx.send(Cmd::Flush).await;
        }
    }
}

/// Removes the documents of records, fields or collections that no longer exist
/// (housekeeping); returns how many.
pub async fn sweep(rt: &Runtime) -> Result<u64, StoreError> {
    let mut sql = Sql::new(rt.store.dialect());
    sql.push("SELECT DISTINCT collection, record, field FROM _lintel_yjs");
    let rows = rt.store.query_rows(sql).await?;
    let catalog = rt.catalog();
    let mut removed = 0;
    for r in rows {
        let text = |i: usize| {
            r.get(i)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let key = DocKey {
            collection: text(0),
            record: text(1),
            field: text(2),
        };
        let exists = match catalog.get(&key.collection) {
            Some(coll)
                if coll
                    .field(&key.field)
                    .is_some_and(|f| f.field_type == FieldType::Yjs) =>
            {
                let sql = crate::store::sql::select_by_id(rt.store.dialect(), &coll, &key.record);
                !rt.store.query_records(coll.clone(), sql).await?.is_empty()
            }
            _ => false,
        };
        if !exists {
            forget(rt, &key).await;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Repairs stale JSON at start, then closes every room when the server stops.
pub async fn run(rt: Runtime, mut shutdown: watch::Receiver<bool>) {
    repair(&rt).await;
    let _ = shutdown.wait_for(|s| *s).await;
    let rooms: Vec<mpsc::Sender<Cmd>> = match rt.yjs.rooms.lock() {
        Ok(r) => r.values().map(|(_, tx)| tx.clone()).collect(),
        Err(_) => return,
    };
    for tx in rooms {
        let _ = tx.send(Cmd::Close).await;
    }
    // Rooms store what they hold, then leave the registry.
    for _ in 0..250 {
        if rt.yjs.rooms.lock().map(|r| r.is_empty()).unwrap_or(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
