//! Sessions and refresh tokens behind the [`SessionStore`] trait. A session is one
//! sign-in: a cookie session (the cookie holds a secret whose digest is stored) or a
//! token session (a family of refresh tokens). Refresh tokens rotate: each is used
//! once; a second use of the same token means it was stolen, and the whole family is
//! revoked.
//!
//! [`SqlSessions`] keeps them in the main store (SQLite or PostgreSQL); a Redis-backed
//! implementation can replace it without touching callers.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::store::{Sql, SqlValue, Store, StoreError, WriteError, WriteOp};

/// One sign-in.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    /// `cookie` or `token`.
    pub kind: String,
    pub collection: String,
    pub user_id: String,
    pub csrf: Option<String>,
    pub created: i64,
    pub last_seen: i64,
    pub expires: i64,
    pub revoked: Option<i64>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Session {
    pub fn active(&self, now: i64) -> bool {
        self.revoked.is_none() && self.expires > now
    }
}

/// A new session and, for token sessions, its first refresh token.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub session: Session,
    pub secret_hash: Option<String>,
    pub refresh: Option<(String, i64)>,
}

/// What presenting a refresh token did.
#[derive(Debug)]
pub enum Rotation {
    /// The token was current: it is now used, and the new one replaces it.
    Rotated(Session),
    /// The token had been used before: the family is now revoked.
    Reused(Session),
    /// Unknown, expired or revoked.
    Invalid,
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    async fn create(&self, new: NewSession) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError>;
    async fn by_secret(&self, secret_hash: &str) -> Result<Option<Session>, StoreError>;
    async fn touch(&self, id: &str, now: i64) -> Result<(), StoreError>;
    /// Uses `old_hash` and issues `new_hash` (valid until `expires`) in its family.
    async fn rotate(
        &self,
        old_hash: &str,
        new_hash: &str,
        now: i64,
        expires: i64,
    ) -> Result<Rotation, StoreError>;
    /// Revokes one session; false when it was not active.
    async fn revoke(&self, id: &str, now: i64) -> Result<bool, StoreError>;
    /// Revokes every session of an account; returns how many.
    async fn revoke_all(
        &self,
        collection: &str,
        user_id: &str,
        now: i64,
    ) -> Result<u64, StoreError>;
    /// The account's active sessions, newest first.
    async fn list(
        &self,
        collection: &str,
        user_id: &str,
        now: i64,
    ) -> Result<Vec<Session>, StoreError>;
    /// The statements that revoke every session of an account (and so its refresh
    /// tokens), for a caller to run inside its own transaction on the main store;
    /// None when sessions live elsewhere (then the caller uses `revoke_all`).
    fn revoke_all_ops(&self, _collection: &str, _user_id: &str, _now: i64) -> Option<Vec<WriteOp>> {
        None
    }
}

/// Sessions in the main store's `_lintel_sessions` and `_lintel_refresh_tokens`.
pub struct SqlSessions {
    store: Arc<dyn Store>,
}

impl SqlSessions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    fn sql(&self) -> Sql {
        Sql::new(self.store.dialect())
    }

    async fn one(&self, sql: Sql) -> Result<Option<Session>, StoreError> {
        Ok(self.store.query_rows(sql).await?.first().map(|r| decode(r)))
    }

    async fn run(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.store
            .write(ops)
            .await
            .map(|_| ())
            .map_err(|WriteError { error, .. }| error)
    }
}

const COLUMNS: &str =
    "id, kind, collection, user_id, csrf, created, last_seen, expires, revoked, ip, user_agent";

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn opt_text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn decode(r: &[Value]) -> Session {
    let at = |i: usize| r.get(i).cloned().unwrap_or(Value::Null);
    Session {
        id: text(&at(0)),
        kind: text(&at(1)),
        collection: text(&at(2)),
        user_id: text(&at(3)),
        csrf: opt_text(&at(4)),
        created: at(5).as_i64().unwrap_or(0),
        last_seen: at(6).as_i64().unwrap_or(0),
        expires: at(7).as_i64().unwrap_or(0),
        revoked: at(8).as_i64(),
        ip: opt_text(&at(9)),
        user_agent: opt_text(&at(10)),
    }
}

fn opt(v: &Option<String>) -> SqlValue {
    v.clone().map_or(SqlValue::Null, SqlValue::Text)
}

pub fn system(sql: Sql, expect: Option<u64>) -> WriteOp {
    WriteOp::System { sql, expect }
}

#[async_trait]
impl SessionStore for SqlSessions {
    async fn create(&self, new: NewSession) -> Result<(), StoreError> {
        let s = &new.session;
        let mut sql = self.sql();
        sql.push("INSERT INTO _lintel_sessions (id, kind, collection, user_id, secret_hash, csrf, created, last_seen, expires, ip, user_agent) VALUES (");
        let values = [
            SqlValue::Text(s.id.clone()),
            SqlValue::Text(s.kind.clone()),
            SqlValue::Text(s.collection.clone()),
            SqlValue::Text(s.user_id.clone()),
            opt(&new.secret_hash),
            opt(&s.csrf),
            SqlValue::Int(s.created),
            SqlValue::Int(s.last_seen),
            SqlValue::Int(s.expires),
            opt(&s.ip),
            opt(&s.user_agent),
        ];
        sql.bind_all(values);
        sql.push(")");
        let mut ops = vec![system(sql, Some(1))];
        if let Some((hash, expires)) = &new.refresh {
            let mut t = self.sql();
            t.push(
                "INSERT INTO _lintel_refresh_tokens (hash, session_id, created, expires) VALUES (",
            )
            .bind(SqlValue::Text(hash.clone()))
            .push(", ")
            .bind(SqlValue::Text(s.id.clone()))
            .push(", ")
            .bind(SqlValue::Int(s.created))
            .push(", ")
            .bind(SqlValue::Int(*expires))
            .push(")");
            ops.push(system(t, Some(1)));
        }
        self.run(ops).await
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let mut sql = self.sql();
        sql.push("SELECT ")
            .push(COLUMNS)
            .push(" FROM _lintel_sessions WHERE id = ")
            .bind(SqlValue::Text(id.to_owned()));
        self.one(sql).await
    }

    async fn by_secret(&self, secret_hash: &str) -> Result<Option<Session>, StoreError> {
        let mut sql = self.sql();
        sql.push("SELECT ")
            .push(COLUMNS)
            .push(" FROM _lintel_sessions WHERE secret_hash = ")
            .bind(SqlValue::Text(secret_hash.to_owned()));
        self.one(sql).await
    }

    async fn touch(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let mut sql = self.sql();
        sql.push("UPDATE _lintel_sessions SET last_seen = ")
            .bind(SqlValue::Int(now))
            .push(" WHERE id = ")
            .bind(SqlValue::Text(id.to_owned()));
        self.run(vec![system(sql, None)]).await
    }

    async fn rotate(
        &self,
        old_hash: &str,
        new_hash: &str,
        now: i64,
        expires: i64,
    ) -> Result<Rotation, StoreError> {
        let mut sql = self.sql();
        sql.push("SELECT session_id, used, expires FROM _lintel_refresh_tokens WHERE hash = ")
            .bind(SqlValue::Text(old_hash.to_owned()));
        let rows = self.store.query_rows(sql).await?;
        let Some(row) = rows.first() else {
            return Ok(Rotation::Invalid);
        };
        let session_id = row.first().map(text).unwrap_or_default();
        let used = row.get(1).and_then(Value::as_i64);
        let token_expires = row.get(2).and_then(Value::as_i64).unwrap_or(0);
        let Some(session) = self.get(&session_id).await? else {
            return Ok(Rotation::Invalid);
        };
        if used.is_some() {
            self.revoke(&session.id, now).await?;
            return Ok(Rotation::Reused(session));
        }
        if !session.active(now) || token_expires <= now {
            return Ok(Rotation::Invalid);
        }
        // Used at most once: a concurrent rotation of the same token changes no row
        // here, fails the transaction, and counts as reuse.
        let mut mark = self.sql();
        mark.push("UPDATE _lintel_refresh_tokens SET used = ")
            .bind(SqlValue::Int(now))
            .push(" WHERE hash = ")
            .bind(SqlValue::Text(old_hash.to_owned()))
            .push(" AND used IS NULL");
        let mut insert = self.sql();
        insert
            .push(
                "INSERT INTO _lintel_refresh_tokens (hash, session_id, created, expires) VALUES (",
            )
            .bind(SqlValue::Text(new_hash.to_owned()))
            .push(", ")
            .bind(SqlValue::Text(session.id.clone()))
            .push(", ")
            .bind(SqlValue::Int(now))
            .push(", ")
            .bind(SqlValue::Int(expires))
            .push(")");
        let mut seen = self.sql();
        seen.push("UPDATE _lintel_sessions SET last_seen = ")
            .bind(SqlValue::Int(now))
            .push(" WHERE id = ")
            .bind(SqlValue::Text(session.id.clone()))
            .push(" AND revoked IS NULL");
        match self
            .run(vec![
                system(mark, Some(1)),
                system(insert, Some(1)),
                system(seen, Some(1)),
            ])
            .await
        {
            Ok(()) => Ok(Rotation::Rotated(session)),
            Err(StoreError::NotFound) => {
                self.revoke(&session.id, now).await?;
                Ok(Rotation::Reused(session))
            }
            Err(e) => Err(e),
        }
    }

    async fn revoke(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let mut sql = self.sql();
        sql.push("UPDATE _lintel_sessions SET revoked = ")
            .bind(SqlValue::Int(now))
            .push(" WHERE id = ")
            .bind(SqlValue::Text(id.to_owned()))
            .push(" AND revoked IS NULL");
        match self.run(vec![system(sql, Some(1))]).await {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn revoke_all(
        &self,
        collection: &str,
        user_id: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut sql = self.sql();
        sql.push("UPDATE _lintel_sessions SET revoked = ")
            .bind(SqlValue::Int(now))
            .push(" WHERE collection = ")
            .bind(SqlValue::Text(collection.to_owned()))
            .push(" AND user_id = ")
            .bind(SqlValue::Text(user_id.to_owned()))
            .push(" AND revoked IS NULL");
        let out = self
            .store
            .write(vec![system(sql, None)])
            .await
            .map_err(|WriteError { error, .. }| error)?;
        Ok(match out.first() {
            Some(crate::store::WriteOutcome::Affected(n)) => *n,
            _ => 0,
        })
    }

    async fn list(
        &self,
        collection: &str,
        user_id: &str,
        now: i64,
    ) -> Result<Vec<Session>, StoreError> {
        let mut sql = self.sql();
        sql.push("SELECT ")
            .push(COLUMNS)
            .push(" FROM _lintel_sessions WHERE collection = ")
            .bind(SqlValue::Text(collection.to_owned()))
            .push(" AND user_id = ")
            .bind(SqlValue::Text(user_id.to_owned()))
            .push(" AND revoked IS NULL AND expires > ")
            .bind(SqlValue::Int(now))
            .push(" ORDER BY created DESC, id LIMIT 200");
        Ok(self
            .store
            .query_rows(sql)
            .await?
            .iter()
            .map(|r| decode(r))
            .collect())
    }

    fn revoke_all_ops(&self, collection: &str, user_id: &str, now: i64) -> Option<Vec<WriteOp>> {
        let mut sql = self.sql();
        sql.push("UPDATE _lintel_sessions SET revoked = ")
            .bind(SqlValue::Int(now))
            .push(" WHERE collection = ")
            .bind(SqlValue::Text(collection.to_owned()))
            .push(" AND user_id = ")
            .bind(SqlValue::Text(user_id.to_owned()))
            .push(" AND revoked IS NULL");
        Some(vec![system(sql, None)])
    }
}
