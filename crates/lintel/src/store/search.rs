//! What each collection's search index holds (system migration 16): the signature of
//! the settings its records were indexed with. The DDL of a schema change writes it
//! when the index stays right for the records already there; otherwise the
//! `search_rebuild` job writes it when it has re-indexed them. A signature that differs
//! from the collection's settings means a rebuild is due (`crate::search::ensure`).

use crate::store::sql::{Dialect, Sql, SqlValue};

pub const TABLE: &str = "CREATE TABLE _lintel_search_state (
            collection TEXT PRIMARY KEY NOT NULL,
            signature TEXT NOT NULL
        );";

/// The statement that records `signature` for `collection`, as DDL text: both come
/// from a validated spec (identifiers, weight letters, language names), never from a
/// request.
pub fn record_ddl(collection: &str, signature: &str) -> String {
    format!(
        "INSERT INTO _lintel_search_state (collection, signature) VALUES ('{collection}', '{signature}') \
         ON CONFLICT (collection) DO UPDATE SET signature = excluded.signature"
    )
}

/// Moves the recorded signature from `old` to `new`, only if the index was current
/// (a lagging index stays lagging until its rebuild).
pub fn advance_ddl(collection: &str, old: &str, new: &str) -> String {
    format!(
        "UPDATE _lintel_search_state SET signature = '{new}' \
         WHERE collection = '{collection}' AND signature = '{old}'"
    )
}

pub fn forget_ddl(collection: &str) -> String {
    format!("DELETE FROM _lintel_search_state WHERE collection = '{collection}'")
}

/// The same upsert with bound values, for the rebuild job's last batch.
pub fn record_sql(d: Dialect, collection: &str, signature: &str) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("INSERT INTO _lintel_search_state (collection, signature) VALUES (")
        .bind(SqlValue::Text(collection.to_owned()))
        .push(", ")
        .bind(SqlValue::Text(signature.to_owned()))
        .push(") ON CONFLICT (collection) DO UPDATE SET signature = excluded.signature");
    sql
}

pub fn signature_sql(d: Dialect, collection: &str) -> Sql {
    let mut sql = Sql::new(d);
    sql.push("SELECT signature FROM _lintel_search_state WHERE collection = ")
        .bind(SqlValue::Text(collection.to_owned()));
    sql
}
