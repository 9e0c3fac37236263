//! Superuser accounts, kept apart from every collection in `_lintel_superusers`:
//! created from the command line (`lintel superuser create`), signed in like users
//! (`"collection": "_superusers"`), and allowed everything the admin token allows.

use crate::store::{Sql, SqlValue, Store, StoreError, WriteError, WriteOp};

/// A superuser as stored.
#[derive(Debug, Clone)]
pub struct Superuser {
    pub id: String,
    pub email: String,
    pub password_hash: String,
}

fn decode(r: &[serde_json::Value]) -> Superuser {
    let s = |i: usize| {
        r.get(i)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    Superuser {
        id: s(0),
        email: s(1),
        password_hash: s(2),
    }
}

async fn one(
    store: &dyn Store,
    column: &str,
    value: &str,
) -> Result<Option<Superuser>, StoreError> {
    let mut sql = Sql::new(store.dialect());
    sql.push("SELECT id, email, password_hash FROM _lintel_superusers WHERE ")
        .push(column)
        .push(" = ")
        .bind(SqlValue::Text(value.to_owned()));
    Ok(store.query_rows(sql).await?.first().map(|r| decode(r)))
}

/// The superuser with this id.
pub async fn get(store: &dyn Store, id: &str) -> Result<Option<Superuser>, StoreError> {
    one(store, "id", id).await
}

/// The superuser with this (normalised) email.
pub async fn by_email(store: &dyn Store, email: &str) -> Result<Option<Superuser>, StoreError> {
    one(store, "email", email).await
}

/// Creates a superuser, or sets the password of an existing one with that email.
/// Returns the id and whether it was created.
pub async fn upsert(
    store: &dyn Store,
    email: &str,
    password_hash: &str,
) -> Result<(String, bool), StoreError> {
    let now = crate::clock::now_ms();
    let mut sql = Sql::new(store.dialect());
    if let Some(existing) = one(store, "email", email).await? {
        sql.push("UPDATE _lintel_superusers SET password_hash = ")
            .bind(SqlValue::Text(password_hash.to_owned()))
            .push(", updated = ")
            .bind(SqlValue::Int(now))
            .push(" WHERE id = ")
            .bind(SqlValue::Text(existing.id.clone()));
        store
            .write(vec![WriteOp::System {
                sql,
                expect: Some(1),
            }])
            .await
            .map_err(|WriteError { error, .. }| error)?;
        return Ok((existing.id, false));
    }
    let id = crate::ids::record_id();
    sql.push(
        "INSERT INTO _lintel_superusers (id, email, password_hash, created, updated) VALUES (",
    )
    .bind(SqlValue::Text(id.clone()))
    .push(", ")
    .bind(SqlValue::Text(email.to_owned()))
    .push(", ")
    .bind(SqlValue::Text(password_hash.to_owned()))
    .push(", ")
    .bind(SqlValue::Int(now))
    .push(", ")
    .bind(SqlValue::Int(now))
    .push(")");
    store
        .write(vec![WriteOp::System {
            sql,
            expect: Some(1),
        }])
        .await
        .map_err(|WriteError { error, .. }| error)?;
    Ok((id, true))
}
