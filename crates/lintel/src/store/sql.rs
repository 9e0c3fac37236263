//! SQL text with bound parameters, and the small helpers where SQLite and PostgreSQL
//! differ (placeholders, case-insensitive matching, null-safe comparison, JSON access,
//! column types). Every value goes in as a parameter; identifiers are quoted and only
//! ever come from a validated schema.

use std::fmt::Write as _;

use serde_json::Value;

use crate::schema::kinds::Storage;
use crate::schema::{Collection, FieldSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// JSON text; a `jsonb` parameter on PostgreSQL.
    Json(String),
    /// A canonical RFC 3339 UTC instant; a `timestamptz` on PostgreSQL, text on SQLite.
    Timestamp(String),
    /// Raw bytes: `bytea` on PostgreSQL, a blob on SQLite.
    Bytes(Vec<u8>),
}

/// A statement under construction.
#[derive(Debug, Clone)]
pub struct Sql {
    pub dialect: Dialect,
    pub text: String,
    pub params: Vec<SqlValue>,
}

impl Sql {
    pub fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            text: String::with_capacity(128),
            params: Vec::new(),
        }
    }

    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Appends a quoted identifier. Names are validated before they reach here; the
    /// doubling of quotes is a second line of defence.
    pub fn ident(&mut self, name: &str) -> &mut Self {
        quote_ident_into(&mut self.text, name);
        self
    }

    /// `"table"."column"`
    pub fn column(&mut self, table: &str, column: &str) -> &mut Self {
        self.ident(table).push(".").ident(column)
    }

    /// Appends a placeholder bound to `value`.
    pub fn bind(&mut self, value: SqlValue) -> &mut Self {
        // PostgreSQL infers a parameter's type from its context, which fails for
        // `jsonb_build_array($1)` and picks int8 for `views > $1` with 2.5: every typed
        // value says its type.
        let cast = match (&value, self.dialect) {
            (_, Dialect::Sqlite) | (SqlValue::Null, _) => "",
            (SqlValue::Bool(_), _) => "::boolean",
            (SqlValue::Int(_), _) => "::int8",
            (SqlValue::Float(_), _) => "::float8",
            (SqlValue::Text(_), _) => "::text",
            (SqlValue::Json(_), _) => "::jsonb",
            (SqlValue::Timestamp(_), _) => "::text::timestamptz",
            (SqlValue::Bytes(_), _) => "::bytea",
        };
        self.params.push(value);
        let n = self.params.len();
        match self.dialect {
            Dialect::Sqlite => write!(self.text, "?{n}"),
            Dialect::Postgres => write!(self.text, "${n}{cast}"),
        }
        .ok();
        self
    }

    /// Appends placeholders for `values`, separated by commas.
    pub fn bind_all(&mut self, values: impl IntoIterator<Item = SqlValue>) -> &mut Self {
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v);
        }
        self
    }

    /// A value compared with a JSON path: as is on SQLite (its JSON functions return SQL
    /// scalars), as `jsonb` on PostgreSQL (where paths return `jsonb`).
    pub fn bind_json_scalar(&mut self, value: SqlValue) -> &mut Self {
        match self.dialect {
            Dialect::Sqlite => self.bind(value),
            Dialect::Postgres => {
                self.push("to_jsonb(");
                self.bind(value);
                self.push(")")
            }
        }
    }

    /// Case-insensitive "contains" of `pattern` (already a LIKE pattern) against the
    /// expression written by `expr`.
    pub fn like_ci(&mut self, negate: bool, pattern: String, expr: impl FnOnce(&mut Sql)) {
        expr(self);
        let op = match (self.dialect, negate) {
            (Dialect::Sqlite, false) => " LIKE ",
            (Dialect::Sqlite, true) => " NOT LIKE ",
            (Dialect::Postgres, false) => " ILIKE ",
            (Dialect::Postgres, true) => " NOT ILIKE ",
        };
        self.push(op);
        self.bind(SqlValue::Text(pattern));
        self.push(" ESCAPE '\\'");
    }

    /// The operator for "differs from, where null differs from any value".
    pub fn null_safe_ne(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => " IS NOT ",
            Dialect::Postgres => " IS DISTINCT FROM ",
        }
    }

    /// A JSON value inside a JSON column, as an SQL scalar.
    pub fn json_path(&mut self, table: &str, column: &str, path: &[String]) {
        match self.dialect {
            Dialect::Sqlite => {
                self.push("json_extract(");
                self.column(table, column);
                self.push(", ");
                self.json_path_text(path);
                self.push(")");
            }
            Dialect::Postgres => {
                self.push("(");
                self.column(table, column);
                self.push(" #> ");
                self.pg_path(path);
                self.push(")");
            }
        }
    }

    /// A JSON number inside a JSON column as a double; SQL NULL when the value there
    /// is not a number (or missing).
    pub fn json_number(&mut self, table: &str, column: &str, path: &[String]) {
        match self.dialect {
            Dialect::Sqlite => {
                self.push("(CASE WHEN json_type(");
                self.column(table, column);
                self.push(", ");
                self.json_path_text(path);
                self.push(") IN ('integer', 'real') THEN ");
                self.json_path(table, column, path);
                self.push(" END)");
            }
            Dialect::Postgres => {
                self.push("(CASE WHEN jsonb_typeof(");
                self.column(table, column);
                self.push(" #> ");
                self.pg_path(path);
                self.push(") = 'number' THEN (");
                self.column(table, column);
                self.push(" #>> ");
                self.pg_path(path);
                self.push(")::float8 END)");
            }
        }
    }

    /// A JSON value inside a JSON column as SQL text, SQL NULL for a JSON `null` or a
    /// missing path (PostgreSQL's `#>` would give the jsonb value `null`, which is
    /// not SQL NULL): for "is there a value" tests.
    pub fn json_path_text_value(&mut self, table: &str, column: &str, path: &[String]) {
        match self.dialect {
            Dialect::Sqlite => self.json_path(table, column, path),
            Dialect::Postgres => {
                self.push("(");
                self.column(table, column);
                self.push(" #>> ");
                self.pg_path(path);
                self.push(")");
            }
        }
    }

    /// Whether the JSON value at `path` has the JSON type of `value` (string, number,
    /// boolean), so that a comparison never crosses types, as in the per-record rule
    /// evaluator. Any other value: always true.
    pub fn json_type_matches(
        &mut self,
        table: &str,
        column: &str,
        path: &[String],
        value: &SqlValue,
    ) {
        let (sqlite, pg) = match value {
            SqlValue::Text(_) => ("('text')", "'string'"),
            SqlValue::Int(_) | SqlValue::Float(_) => ("('integer', 'real')", "'number'"),
            SqlValue::Bool(_) => ("('true', 'false')", "'boolean'"),
            _ => {
                self.push("TRUE");
                return;
            }
        };
        match self.dialect {
            Dialect::Sqlite => {
                self.push("json_type(");
                self.column(table, column).push(", ");
                self.json_path_text(path);
                self.push(") IN ").push(sqlite);
            }
            Dialect::Postgres => {
                self.push("jsonb_typeof(");
                self.column(table, column).push(" #> ");
                self.pg_path(path);
                self.push(") = ").push(pg);
            }
        }
    }

    /// For a JSON path: when it holds an array, whether the array holds `value`;
    /// when it holds a string, whether it contains `value`, ignoring case; otherwise
    /// false.
    pub fn json_contains_or_like(
        &mut self,
        table: &str,
        column: &str,
        path: &[String],
        value: String,
    ) {
        let pattern = format!("%{}%", like_escape(&value));
        match self.dialect {
            Dialect::Sqlite => {
                self.push("CASE WHEN json_type(");
                self.column(table, column).push(", ");
                self.json_path_text(path);
                self.push(") = 'array' THEN EXISTS (SELECT 1 FROM json_each(");
                self.column(table, column).push(", ");
                self.json_path_text(path);
                self.push(") WHERE json_each.value = ")
                    .bind(SqlValue::Text(value));
                self.push(") WHEN json_type(");
                self.column(table, column).push(", ");
                self.json_path_text(path);
                self.push(") = 'text' THEN json_extract(");
                self.column(table, column).push(", ");
                self.json_path_text(path);
                self.push(") LIKE ")
                    .bind(SqlValue::Text(pattern))
                    .push(" ESCAPE '\\' ELSE FALSE END");
            }
            Dialect::Postgres => {
                self.push("CASE WHEN jsonb_typeof(");
                self.column(table, column).push(" #> ");
                self.pg_path(path);
                self.push(") = 'array' THEN (");
                self.column(table, column).push(" #> ");
                self.pg_path(path);
                self.push(") @> jsonb_build_array(")
                    .bind(SqlValue::Text(value));
                self.push(") WHEN jsonb_typeof(");
                self.column(table, column).push(" #> ");
                self.pg_path(path);
                self.push(") = 'string' THEN (");
                self.column(table, column).push(" #>> ");
                self.pg_path(path);
                self.push(") ILIKE ")
                    .bind(SqlValue::Text(pattern))
                    .push(" ESCAPE '\\' ELSE FALSE END");
            }
        }
    }

    /// A SQLite JSON path. Written inline when every segment is an identifier or an
    /// index (always, after validation), so expression indexes on the same path match;
    /// bound as a parameter otherwise.
    fn json_path_text(&mut self, path: &[String]) {
        let text = sqlite_json_path(path);
        if path_is_safe(path) {
            self.push("'").push(&text).push("'");
        } else {
            self.bind(SqlValue::Text(text));
        }
    }

    /// `path = value` in a form an index on the whole document can serve: on
    /// PostgreSQL, containment (`data @> {"a":{"b":value}}`, which a GIN index answers).
    /// Returns false (writing nothing) where that form does not apply, so the caller
    /// writes the plain comparison.
    pub fn json_path_equals(
        &mut self,
        table: &str,
        column: &str,
        path: &[String],
        value: SqlValue,
    ) -> bool {
        let keys_only = path_is_safe(path)
            && !path.is_empty()
            && path.iter().all(|s| !s.bytes().all(|b| b.is_ascii_digit()));
        if self.dialect != Dialect::Postgres
            || !keys_only
            || matches!(value, SqlValue::Null | SqlValue::Json(_))
        {
            return false;
        }
        self.push("(");
        self.column(table, column);
        self.push(" @> ");
        for seg in path {
            // Segments are identifier characters only (checked above).
            self.push("jsonb_build_object('").push(seg).push("', ");
        }
        self.bind(value);
        for _ in path {
            self.push(")");
        }
        self.push(")");
        true
    }

    /// A PostgreSQL path (`'{a,b}'`), inline when every segment is safe, like SQLite's.
    fn pg_path(&mut self, path: &[String]) {
        let text = format!("{{{}}}", path.join(","));
        if path_is_safe(path) {
            self.push("'").push(&text).push("'");
        } else {
            self.bind(SqlValue::Text(text)).push("::text[]");
        }
    }

    /// Whether a JSON array column is null or empty.
    pub fn json_array_empty(&mut self, table: &str, column: &str) {
        self.push("(");
        self.column(table, column);
        self.push(" IS NULL OR ");
        match self.dialect {
            Dialect::Sqlite => self.push("json_array_length("),
            Dialect::Postgres => self.push("jsonb_array_length("),
        };
        self.column(table, column);
        self.push(") = 0)");
    }

    /// Whether the JSON array in a column contains a value.
    pub fn json_array_contains(&mut self, table: &str, column: &str, value: SqlValue) {
        match self.dialect {
            Dialect::Sqlite => {
                self.push("EXISTS (SELECT 1 FROM json_each(");
                self.column(table, column);
                self.push(") WHERE json_each.value = ");
                self.bind(value);
                self.push(")");
            }
            Dialect::Postgres => {
                self.column(table, column);
                self.push(" @> jsonb_build_array(");
                self.bind(value);
                self.push(")");
            }
        }
    }
}

/// Segments made only of identifier characters can be written into SQL text.
fn path_is_safe(path: &[String]) -> bool {
    path.iter()
        .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// Quotes an identifier for either dialect.
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    quote_ident_into(&mut s, name);
    s
}

fn quote_ident_into(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

/// `$.a.b[0]` for SQLite's JSON functions. Segments are identifiers or integers.
pub fn sqlite_json_path(path: &[String]) -> String {
    let mut s = String::from("$");
    for seg in path {
        if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
            let _ = write!(s, "[{seg}]");
        } else {
            let _ = write!(s, ".\"{seg}\"");
        }
    }
    s
}

/// Escapes `%`, `_` and `\` so they match themselves in a LIKE pattern.
pub fn like_escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// The column type of a field, from its kind's storage class.
pub fn column_type(dialect: Dialect, field: &FieldSpec) -> &'static str {
    match (dialect, field.field_type.storage(field.multiple)) {
        (Dialect::Sqlite, Storage::Real) => "REAL",
        (Dialect::Sqlite, Storage::Integer | Storage::Bool) => "INTEGER",
        (Dialect::Sqlite, Storage::Text | Storage::Timestamp | Storage::Json) => "TEXT",
        (Dialect::Postgres, Storage::Real) => "DOUBLE PRECISION",
        (Dialect::Postgres, Storage::Integer) => "BIGINT",
        (Dialect::Postgres, Storage::Bool) => "BOOLEAN",
        (Dialect::Postgres, Storage::Timestamp) => "TIMESTAMPTZ",
        (Dialect::Postgres, Storage::Json) => "JSONB",
        // Binary collation, so text sorts and compares as on SQLite.
        (Dialect::Postgres, Storage::Text) => "TEXT COLLATE \"C\"",
    }
}

/// Converts a validated JSON value of a field into its bound parameter.
pub fn field_value(field: &FieldSpec, value: &Value) -> SqlValue {
    let storage = field.field_type.storage(field.multiple);
    match (storage, value) {
        (_, Value::Null) => SqlValue::Null,
        (Storage::Json, v) => SqlValue::Json(v.to_string()),
        (_, Value::Bool(b)) => SqlValue::Bool(*b),
        (Storage::Integer, Value::Number(n)) => {
            n.as_i64().map(SqlValue::Int).unwrap_or(SqlValue::Null)
        }
        (_, Value::Number(n)) => n.as_f64().map(SqlValue::Float).unwrap_or(SqlValue::Null),
        (Storage::Timestamp, Value::String(s)) => SqlValue::Timestamp(s.clone()),
        (_, Value::String(s)) => SqlValue::Text(s.clone()),
        (_, Value::Array(_) | Value::Object(_)) => SqlValue::Json(value.to_string()),
    }
}

/// Writes the list of record columns of a collection, qualified by its table.
pub fn record_columns(sql: &mut Sql, coll: &Collection) {
    let t = coll.name();
    for (i, c) in ["id", "created", "updated", "version"].iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.column(t, c);
    }
    if coll.is_document() {
        sql.push(", ").column(t, "data");
    } else {
        for f in coll.fields() {
            sql.push(", ");
            if sql.dialect == Dialect::Postgres
                && f.field_type.storage(f.multiple) == Storage::Timestamp
            {
                // Read back in the same canonical text form SQLite stores.
                sql.push("to_char(");
                sql.column(t, &f.name);
                sql.push(" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')");
            } else {
                sql.column(t, &f.name);
            }
        }
    }
}

/// `SELECT <record columns> FROM "t" WHERE "t"."id" = ?`
pub fn select_by_id(dialect: Dialect, coll: &Collection, id: &str) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT ");
    record_columns(&mut sql, coll);
    sql.push(" FROM ").ident(coll.name()).push(" WHERE ");
    sql.column(coll.name(), "id").push(" = ");
    sql.bind(SqlValue::Text(id.to_owned()));
    sql
}

/// `SELECT <record columns> FROM "t" WHERE "t"."id" IN (...)`
pub fn select_by_ids(dialect: Dialect, coll: &Collection, ids: &[String]) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT ");
    record_columns(&mut sql, coll);
    sql.push(" FROM ").ident(coll.name()).push(" WHERE ");
    sql.column(coll.name(), "id").push(" IN (");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.bind(SqlValue::Text(id.clone()));
    }
    sql.push(")");
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_per_dialect() {
        let mut a = Sql::new(Dialect::Sqlite);
        a.push("x = ")
            .bind(SqlValue::Int(1))
            .push(" AND y = ")
            .bind(SqlValue::Int(2));
        assert_eq!(a.text, "x = ?1 AND y = ?2");
        let mut b = Sql::new(Dialect::Postgres);
        b.push("x = ")
            .bind(SqlValue::Int(1))
            .push(" AND z = ")
            .bind(SqlValue::Null);
        assert_eq!(
            b.text, "x = $1::int8 AND z = $2",
            "typed values carry their type"
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("posts"), "\"posts\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn like_escapes_wildcards() {
        assert_eq!(like_escape("50%_a\\"), "50\\%\\_a\\\\");
    }

    #[test]
    fn json_paths() {
        let p = vec!["meta".to_owned(), "tags".to_owned(), "0".to_owned()];
        assert_eq!(sqlite_json_path(&p), "$.\"meta\".\"tags\"[0]");
    }
}
