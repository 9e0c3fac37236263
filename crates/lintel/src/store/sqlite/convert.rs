//! Conversions between rusqlite and the store's types: parameters, rows to records,
//! and driver errors to [`StoreError`] (constraint names to field errors).

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ToSql};
use serde_json::{Map, Number, Value};

use crate::schema::Collection;
use crate::schema::kinds::Storage;
use crate::store::failure::Failure;
use crate::store::sql::{Sql, SqlValue};
use crate::store::{Record, StoreError};

impl ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            SqlValue::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            SqlValue::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
            SqlValue::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            SqlValue::Float(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            SqlValue::Text(s) | SqlValue::Json(s) | SqlValue::Timestamp(s) => {
                ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
            }
            SqlValue::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

/// Decodes a row laid out by `sql::record_columns`.
pub fn decode_record(coll: &Collection, row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let mut data = Map::new();
    if coll.is_document() {
        let text: String = row.get(4)?;
        if let Ok(Value::Object(map)) = serde_json::from_str(&text) {
            data = map;
        }
    } else {
        for (i, f) in coll.fields().iter().enumerate() {
            let storage = f.field_type.storage(f.multiple);
            let v = match row.get_ref(4 + i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => match storage {
                    Storage::Bool => Value::Bool(n != 0),
                    Storage::Real => Number::from_f64(n as f64)
                        .map(Value::Number)
                        .unwrap_or(Value::Null),
                    _ => Value::Number(n.into()),
                },
                ValueRef::Real(x) => Number::from_f64(x)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                ValueRef::Text(bytes) => {
                    let text = String::from_utf8_lossy(bytes);
                    if storage == Storage::Json {
                        serde_json::from_str(&text).unwrap_or(Value::String(text.into_owned()))
                    } else {
                        Value::String(text.into_owned())
                    }
                }
                ValueRef::Blob(_) => Value::Null,
            };
            data.insert(f.name.clone(), v);
        }
    }
    // A search adds its relevance after the record's columns.
    let columns = 4 + if coll.is_document() {
        1
    } else {
        coll.fields().len()
    };
    if row.as_ref().column_count() > columns
        && let ValueRef::Real(score) = row.get_ref(columns)?
        && let Some(n) = Number::from_f64(score)
    {
        data.insert(crate::schema::search::SCORE.into(), Value::Number(n));
    }
    Ok(Record {
        id: row.get(0)?,
        created: row.get(1)?,
        updated: row.get(2)?,
        version: row.get(3)?,
        data,
    })
}

/// Runs a query returning records.
pub fn query_records(
    conn: &Connection,
    coll: &Collection,
    sql: &Sql,
) -> Result<Vec<Record>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&sql.text)
        .map_err(|e| map_error_for(&e, Some(coll)))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(sql.params.iter()), |row| {
            decode_record(coll, row)
        })
        .map_err(|e| map_error_for(&e, Some(coll)))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| map_error_for(&e, Some(coll)))
}

/// Runs a query returning one integer.
pub fn query_i64(conn: &Connection, sql: &Sql) -> Result<i64, StoreError> {
    let mut stmt = conn.prepare_cached(&sql.text).map_err(|e| map_error(&e))?;
    stmt.query_row(rusqlite::params_from_iter(sql.params.iter()), |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| map_error(&e))
}

/// Runs a query; each row as typed cells (blobs as bytes).
pub fn typed_rows(
    conn: &Connection,
    sql: &Sql,
) -> Result<Vec<crate::store::engine::Row>, StoreError> {
    let mut stmt = conn.prepare_cached(&sql.text).map_err(|e| map_error(&e))?;
    let n = stmt.column_count();
    let rows = stmt
        .query_map(rusqlite::params_from_iter(sql.params.iter()), |row| {
            (0..n)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        ValueRef::Null => SqlValue::Null,
                        ValueRef::Integer(v) => SqlValue::Int(v),
                        ValueRef::Real(x) => SqlValue::Float(x),
                        ValueRef::Text(b) => {
                            SqlValue::Text(String::from_utf8_lossy(b).into_owned())
                        }
                        ValueRef::Blob(b) => SqlValue::Bytes(b.to_vec()),
                    })
                })
                .collect::<rusqlite::Result<Vec<SqlValue>>>()
                .map(crate::store::engine::Row)
        })
        .map_err(|e| map_error(&e))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| map_error(&e))
}

/// Runs a statement; returns the rows changed.
pub fn execute(
    conn: &Connection,
    sql: &Sql,
    coll: Option<&Collection>,
) -> Result<usize, StoreError> {
    let mut stmt = conn
        .prepare_cached(&sql.text)
        .map_err(|e| map_error_for(&e, coll))?;
    stmt.execute(rusqlite::params_from_iter(sql.params.iter()))
        .map_err(|e| map_error_for(&e, coll))
}

pub fn map_error(e: &rusqlite::Error) -> StoreError {
    map_error_for(e, None)
}

/// Maps a driver error (see [`Failure`]); unique violations become field errors of
/// the fields of `coll` involved.
pub fn map_error_for(e: &rusqlite::Error, coll: Option<&Collection>) -> StoreError {
    classify(e).into_store_error(coll)
}

/// Sorts a SQLite error into the drivers' shared vocabulary.
pub(crate) fn classify(e: &rusqlite::Error) -> Failure {
    use rusqlite::ffi;
    // A failure found while preparing (a missing table or column) comes with the
    // statement text and offset; it sorts the same way.
    let failure = match e {
        rusqlite::Error::SqliteFailure(err, msg) => Some((err, msg.as_deref().unwrap_or_default())),
        rusqlite::Error::SqlInputError { error, msg, .. } => Some((error, msg.as_str())),
        _ => None,
    };
    if let Some((err, msg)) = failure {
        match err.code {
            rusqlite::ErrorCode::ConstraintViolation => {
                return match err.extended_code {
                    ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                        unique_failure(msg)
                    }
                    ffi::SQLITE_CONSTRAINT_CHECK | ffi::SQLITE_CONSTRAINT_NOTNULL => {
                        Failure::BadValue
                    }
                    _ => Failure::Other(format!("constraint: {msg}")),
                };
            }
            rusqlite::ErrorCode::TooBig => return Failure::BadValue,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                return Failure::Unavailable("the database is busy".into());
            }
            _ => {}
        }
        if msg.starts_with("no such table") || msg.starts_with("no such column") {
            return Failure::MissingSchema(msg.to_owned());
        }
    }
    Failure::Other(e.to_string())
}

/// Parses `UNIQUE constraint failed: t.a, t.b` or `... failed: index 'name'`.
fn unique_failure(msg: &str) -> Failure {
    let rest = msg
        .strip_prefix("UNIQUE constraint failed: ")
        .unwrap_or_default();
    if let Some(index) = rest
        .strip_prefix("index '")
        .and_then(|r| r.strip_suffix('\''))
    {
        return Failure::Unique {
            index: Some(index.to_owned()),
            columns: Vec::new(),
        };
    }
    Failure::Unique {
        index: None,
        columns: rest
            .split(", ")
            .filter_map(|part| part.split_once('.').map(|(_, col)| col.to_owned()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::failure::{DRIVER_CASES, DRIVER_CASES_SETUP};

    #[test]
    fn errors_sort_into_the_shared_kinds() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(DRIVER_CASES_SETUP).unwrap();
        for (statement, kind) in DRIVER_CASES {
            let err = conn.execute_batch(statement).unwrap_err();
            assert_eq!(classify(&err).kind(), *kind, "{statement}: {err}");
        }
    }
}
