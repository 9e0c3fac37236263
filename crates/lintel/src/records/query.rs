//! The list query: parsing `filter`, `sort`, `page`, `perPage`, `cursor`, `fields`,
//! `expand` and `skipTotal`, and building the SELECT (offset or keyset pagination) and
//! COUNT statements. Sort keys and projected fields are checked against the schema.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::schema::kinds::Storage;
use crate::schema::search::{Analyzed, SCORE, TSVECTOR_COLUMN, WEIGHTS, fts_table};
use crate::schema::{Collection, FieldType, SYSTEM_FIELDS, is_identifier};
use crate::store::Record;
use crate::store::filter::{Env, FilterError, compile};
use crate::store::sql::{Dialect, Sql, SqlValue, record_columns};
use crate::validation::{FieldErrors, push_field_error};

pub const DEFAULT_PER_PAGE: usize = 30;
pub const MAX_PER_PAGE: usize = 500;
const MAX_SORT_KEYS: usize = 8;
const MAX_PAGE: usize = 1_000_000;

/// The raw query parameters of a list request.
#[derive(Debug, Default, Clone)]
pub struct ListParams {
    pub filter: Option<String>,
    pub sort: Option<String>,
    pub page: Option<String>,
    pub per_page: Option<String>,
    pub fields: Option<String>,
    pub expand: Option<String>,
    pub skip_total: Option<String>,
    pub cursor: Option<String>,
    pub search: Option<String>,
    pub highlight: Option<String>,
}

impl ListParams {
    pub fn from_query(query: &str) -> Self {
        let mut p = ListParams::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let v = Some(v.into_owned());
            match k.as_ref() {
                "filter" => p.filter = v,
                "sort" => p.sort = v,
                "page" => p.page = v,
                "perPage" => p.per_page = v,
                "fields" => p.fields = v,
                "expand" => p.expand = v,
                "skipTotal" => p.skip_total = v,
                "cursor" => p.cursor = v,
                "search" => p.search = v,
                "highlight" => p.highlight = v,
                _ => {}
            }
        }
        p
    }
}

/// What a sort key reads.
#[derive(Debug, Clone)]
pub enum SortTarget {
    Column(String),
    Path(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct SortKey {
    pub target: SortTarget,
    pub desc: bool,
    /// A datetime field: cursor values are bound as timestamps.
    pub timestamp: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PageMode {
    Offset {
        page: usize,
    },
    /// Keyset pagination; `after` is the decoded cursor (None for the first page).
    Cursor {
        after: Option<Cursor>,
    },
}

/// The position after which a keyset page starts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// The sort expression the cursor was made for.
    s: String,
    /// The sort key values of the last record, then its id.
    k: Vec<Value>,
}

/// A validated list request, ready to run.
#[derive(Debug)]
pub struct ListPlan {
    pub select: Sql,
    pub count: Option<Sql>,
    pub mode: PageMode,
    pub per_page: usize,
    pub sort: Vec<SortKey>,
    pub sort_text: String,
    pub fields: Option<Vec<String>>,
    pub expand: Vec<String>,
    /// A full-text search: the analyzed query and whether to highlight.
    pub search: Option<SearchPlan>,
}

/// The search part of a list.
#[derive(Debug)]
pub struct SearchPlan {
    pub query: crate::schema::search::Analyzed,
    pub highlight: bool,
}

/// Why a list query is refused (400 either way; the edge gives the problem its shape).
#[derive(Debug)]
pub enum QueryError {
    /// Bad paging, sorting, projection or expansion parameters (`validation_failed`,
    /// `detailKind: query`).
    Params(FieldErrors),
    /// A filter that does not parse or compile (`invalid_filter`, with the position).
    Filter(FilterError),
    /// A search query that does not parse (`invalid_search`, with the position).
    Search(crate::schema::search::SearchError),
}

fn filter_error(e: FilterError) -> QueryError {
    QueryError::Filter(e)
}

/// Parses and checks the parameters and builds the statements.
pub fn plan(
    coll: &Collection,
    params: &ListParams,
    dialect: Dialect,
    now: &Env<'_>,
    rule: Option<&lintel_filter::Expr>,
) -> Result<ListPlan, QueryError> {
    let mut errors = FieldErrors::new();
    let per_page = match params.per_page.as_deref() {
        None | Some("") => DEFAULT_PER_PAGE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PER_PAGE).contains(&n) => n,
            _ => {
                push_field_error(
                    &mut errors,
                    "perPage",
                    "invalid",
                    format!("must be a whole number from 1 to {MAX_PER_PAGE}"),
                );
                DEFAULT_PER_PAGE
            }
        },
    };
    let page = match params.page.as_deref() {
        None | Some("") => 1,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                push_field_error(
                    &mut errors,
                    "page",
                    "invalid",
                    "must be a whole number from 1",
                );
                1
            }
        },
    };
    let skip_total = matches!(params.skip_total.as_deref(), Some("1" | "true"));
    let search_text = params.search.as_deref().filter(|s| !s.trim().is_empty());
    let search_cfg = match (search_text, coll.search()) {
        (Some(_), None) => {
            push_field_error(
                &mut errors,
                "search",
                "not_searchable",
                format!("collection '{}' has no searchable fields", coll.name()),
            );
            None
        }
        (Some(_), cfg) => cfg,
        (None, _) => None,
    };
    // With a search and no sort, the most relevant come first.
    let sort_given = params.sort.as_deref().filter(|s| !s.trim().is_empty());
    let by_relevance = search_text.is_some() && sort_given.is_none();
    let sort_text = sort_given.map(str::to_owned).unwrap_or_else(|| {
        if by_relevance {
            String::new()
        } else {
            "-created".into()
        }
    });
    let sort = match parse_sort(coll, &sort_text) {
        Ok(s) => s,
        Err(msg) => {
            push_field_error(&mut errors, "sort", "invalid_sort", msg);
            Vec::new()
        }
    };
    let fields = match params.fields.as_deref() {
        None | Some("") => None,
        Some(s) => match parse_fields(coll, s) {
            Ok(f) => Some(f),
            Err(msg) => {
                push_field_error(&mut errors, "fields", "unknown_field", msg);
                None
            }
        },
    };
    let expand = match params.expand.as_deref() {
        None | Some("") => Vec::new(),
        Some(s) => match parse_expand(coll, s) {
            Ok(e) => e,
            Err(msg) => {
                push_field_error(&mut errors, "expand", "invalid_expand", msg);
                Vec::new()
            }
        },
    };
    let mode = match params.cursor.as_deref() {
        None => PageMode::Offset { page },
        Some("") => PageMode::Cursor { after: None },
        Some(c) => match decode_cursor(c) {
            Some(cur) if cur.s == sort_text && cur.k.len() == sort.len() + 1 => {
                PageMode::Cursor { after: Some(cur) }
            }
            Some(_) => {
                push_field_error(
                    &mut errors,
                    "cursor",
                    "invalid_cursor",
                    "the cursor was made for another sort order",
                );
                PageMode::Cursor { after: None }
            }
            None => {
                push_field_error(
                    &mut errors,
                    "cursor",
                    "invalid_cursor",
                    "is not a cursor from this API",
                );
                PageMode::Cursor { after: None }
            }
        },
    };
    if by_relevance && params.cursor.is_some() {
        push_field_error(
            &mut errors,
            "cursor",
            "invalid_cursor",
            "results ordered by relevance are paged with page, not cursor (or give a sort)",
        );
    }
    if params.cursor.is_some() && params.page.is_some() {
        push_field_error(
            &mut errors,
            "page",
            "conflict",
            "use either page or cursor, not both",
        );
    }
    if !errors.is_empty() {
        return Err(QueryError::Params(errors));
    }

    let search = match (search_text, search_cfg) {
        (Some(text), Some(cfg)) => {
            let parsed = crate::schema::search::parse(text).map_err(QueryError::Search)?;
            Some(SearchPlan {
                query: parsed.analyze(&cfg.languages()),
                highlight: matches!(params.highlight.as_deref(), Some("1" | "true")),
            })
        }
        _ => None,
    };
    let expr = match params.filter.as_deref() {
        None => None,
        Some(f) if f.trim().is_empty() => None,
        Some(f) => Some(lintel_filter::parse(f).map_err(|e| {
            filter_error(FilterError {
                code: e.code.as_str(),
                message: e.message.clone(),
                position: e.position,
            })
        })?),
    };

    let t = coll.name();
    // The access rule and the client's filter, ANDed: a list or a count only ever
    // sees the rows the rule permits.
    let condition = |sql: &mut Sql| -> Result<bool, QueryError> {
        let mut any = false;
        if let Some(s) = &search {
            sql.push(" WHERE ");
            search_match(sql, t, &s.query);
            any = true;
        }
        if let Some(rule) = rule {
            sql.push(if any { " AND (" } else { " WHERE (" });
            let mut part = Sql::new(dialect);
            part.params = std::mem::take(&mut sql.params);
            let before = part.params.len();
            match compile(rule, coll, now, &mut part) {
                Ok(()) => {
                    sql.params = part.params;
                    sql.push(&part.text);
                }
                Err(e) => {
                    // A rule that cannot run for this caller permits nothing.
                    tracing::warn!(collection = t, error = %e.message, "list rule failed; denying");
                    part.params.truncate(before);
                    sql.params = part.params;
                    sql.push("1 = 0");
                }
            }
            sql.push(")");
            any = true;
        }
        if let Some(expr) = &expr {
            sql.push(if any { " AND " } else { " WHERE " });
            compile(expr, coll, now, sql).map_err(filter_error)?;
            any = true;
        }
        Ok(any)
    };
    let count = if skip_total {
        None
    } else {
        let mut c = Sql::new(dialect);
        c.push("SELECT COUNT(*) FROM ").ident(t);
        if search.is_some() {
            search_join(&mut c, t);
        }
        condition(&mut c)?;
        Some(c)
    };

    let mut select = Sql::new(dialect);
    select.push("SELECT ");
    record_columns(&mut select, coll);
    if let Some(s) = &search {
        select.push(", ");
        search_score(&mut select, t, &s.query);
        select.push(" AS ").ident(SCORE);
    }
    select.push(" FROM ").ident(t);
    if search.is_some() {
        search_join(&mut select, t);
    }
    let has_where = condition(&mut select)?;
    if let PageMode::Cursor { after: Some(cur) } = &mode {
        select.push(if has_where { " AND " } else { " WHERE " });
        keyset_condition(&mut select, t, &sort, &cur.k);
    }
    select.push(" ORDER BY ");
    if by_relevance {
        select.ident(SCORE).push(" DESC, ");
    }
    for (i, key) in sort.iter().enumerate() {
        if i > 0 {
            select.push(", ");
        }
        write_sort_target(&mut select, t, &key.target);
        select.push(if key.desc {
            " DESC NULLS LAST"
        } else {
            " ASC NULLS FIRST"
        });
    }
    if !sort.is_empty() {
        select.push(", ");
    }
    select.column(t, "id").push(" ASC");
    // One more row than the page tells whether there is a next page without a count.
    select
        .push(" LIMIT ")
        .bind(SqlValue::Int(per_page as i64 + 1));
    if let PageMode::Offset { page } = mode {
        select
            .push(" OFFSET ")
            .bind(SqlValue::Int(((page - 1) * per_page) as i64));
    }
    Ok(ListPlan {
        select,
        count,
        mode,
        per_page,
        sort,
        sort_text,
        fields,
        expand,
        search,
    })
}

/// The join that a search on SQLite needs: the FTS5 table, row for row.
fn search_join(sql: &mut Sql, t: &str) {
    if sql.dialect == Dialect::Sqlite {
        let fts = fts_table(t);
        sql.push(" JOIN ").ident(&fts).push(" ON ");
        sql.column(&fts, "rowid").push(" = ");
        // `_rowid_`: a field may be named `rowid`, never `_rowid_`.
        sql.column(t, "_rowid_");
    }
}

/// The condition that a record matches the query (nothing, for a query of stop words).
fn search_match(sql: &mut Sql, t: &str, q: &Analyzed) {
    if q.matches_nothing() {
        sql.push("1 = 0");
        return;
    }
    match sql.dialect {
        Dialect::Sqlite => {
            sql.ident(&fts_table(t)).push(" MATCH ");
            sql.bind(SqlValue::Text(q.fts5()));
        }
        Dialect::Postgres => {
            sql.column(t, TSVECTOR_COLUMN).push(" @@ ");
            sql.bind(SqlValue::Text(q.tsquery()))
                .push("::text::tsquery");
        }
    }
}

/// A record's relevance, higher is better: FTS5's BM25 (negated) or `ts_rank_cd`, both
/// with the weights of the classes A–D.
fn search_score(sql: &mut Sql, t: &str, q: &Analyzed) {
    if q.matches_nothing() {
        sql.push("0.0");
        return;
    }
    let [a, b, c, d] = WEIGHTS;
    match sql.dialect {
        Dialect::Sqlite => {
            sql.push("-bm25(").ident(&fts_table(t));
            sql.push(&format!(", {a:.1}, {b:.1}, {c:.1}, {d:.1})"));
        }
        Dialect::Postgres => {
            sql.push(&format!(
                "ts_rank_cd('{{{d:.1},{c:.1},{b:.1},{a:.1}}}'::float4[], "
            ));
            sql.column(t, TSVECTOR_COLUMN).push(", ");
            sql.bind(SqlValue::Text(q.tsquery()))
                .push("::text::tsquery)::float8");
        }
    }
}

fn write_sort_target(sql: &mut Sql, table: &str, t: &SortTarget) {
    match t {
        SortTarget::Column(c) => {
            sql.column(table, c);
        }
        SortTarget::Path(p) => sql.json_path(table, "data", p),
    }
}

fn parse_sort(coll: &Collection, text: &str) -> Result<Vec<SortKey>, String> {
    let mut keys = Vec::new();
    for raw in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (desc, name) = match raw.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, raw.strip_prefix('+').unwrap_or(raw)),
        };
        let target = if SYSTEM_FIELDS.contains(&name) {
            SortTarget::Column(name.to_owned())
        } else if coll.is_document() {
            let path: Vec<String> = name.split('.').map(str::to_owned).collect();
            if !path.iter().all(|s| {
                is_identifier(s) || (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            }) {
                return Err(format!("'{}' is not a field path", truncate(name)));
            }
            SortTarget::Path(path)
        } else {
            match coll.field(name).filter(|f| !f.hidden) {
                Some(f) if f.field_type.sortable(f.multiple) => SortTarget::Column(name.to_owned()),
                Some(_) => {
                    return Err(format!(
                        "cannot sort by '{name}' (json, geoPoint and multiple relation fields)"
                    ));
                }
                None => {
                    return Err(format!(
                        "collection '{}' has no field '{}'",
                        coll.name(),
                        truncate(name)
                    ));
                }
            }
        };
        keys.push(SortKey {
            timestamp: !coll.is_document()
                && coll
                    .field(name)
                    .is_some_and(|f| f.field_type.storage(f.multiple) == Storage::Timestamp),
            target,
            desc,
        });
        if name == "id" {
            // id is always the last tie-breaker; sorting by it explicitly ends the list.
            break;
        }
        if keys.len() > MAX_SORT_KEYS {
            return Err(format!("at most {MAX_SORT_KEYS} sort keys"));
        }
    }
    // Drop an explicit id key: the implicit ascending id tie-breaker follows.
    if let Some(last) = keys.last()
        && matches!(&last.target, SortTarget::Column(c) if c == "id")
        && !last.desc
    {
        keys.pop();
    }
    Ok(keys)
}

fn parse_fields(coll: &Collection, text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ok = SYSTEM_FIELDS.contains(&name)
            || name == "expand"
            || if coll.is_document() {
                is_identifier(name)
            } else {
                coll.field(name).is_some_and(|f| !f.hidden)
            };
        if !ok {
            return Err(format!(
                "collection '{}' has no field '{}'",
                coll.name(),
                truncate(name)
            ));
        }
        out.push(name.to_owned());
    }
    Ok(out)
}

/// The relation fields to expand.
pub fn parse_expand(coll: &Collection, text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        // A hidden field is not there for clients, not even to expand.
        match coll.field(name).filter(|f| !f.hidden) {
            Some(f) if f.field_type == FieldType::Relation => out.push(name.to_owned()),
            Some(_) => return Err(format!("'{name}' is not a relation field")),
            None => {
                return Err(format!(
                    "collection '{}' has no field '{}'",
                    coll.name(),
                    truncate(name)
                ));
            }
        }
    }
    if out.len() > 8 {
        return Err("at most 8 relations can be expanded".into());
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn sql_value(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map(SqlValue::Int)
            .unwrap_or_else(|| SqlValue::Float(n.as_f64().unwrap_or(0.0))),
        Value::String(s) => SqlValue::Text(s.clone()),
        other => SqlValue::Text(other.to_string()),
    }
}

/// Binds a cursor value for comparison with a sort key.
fn bind_key(sql: &mut Sql, key: &SortKey, v: SqlValue) {
    match &key.target {
        SortTarget::Column(_) if key.timestamp => {
            sql.bind(match v {
                SqlValue::Text(s) => SqlValue::Timestamp(s),
                other => other,
            });
        }
        SortTarget::Column(_) => {
            sql.bind(v);
        }
        SortTarget::Path(_) => {
            sql.bind_json_scalar(v);
        }
    }
}

/// Rows strictly after the cursor in the order `sort, id ASC` (with nulls first in
/// ascending keys and last in descending ones, as the ORDER BY says).
fn keyset_condition(sql: &mut Sql, table: &str, sort: &[SortKey], values: &[Value]) {
    sql.push("(");
    let n = sort.len();
    for i in 0..=n {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        for (j, key) in sort.iter().enumerate().take(i) {
            if j > 0 {
                sql.push(" AND ");
            }
            write_sort_target(sql, table, &key.target);
            if values[j].is_null() {
                sql.push(" IS NULL");
            } else {
                sql.push(" = ");
                bind_key(sql, key, sql_value(&values[j]));
            }
        }
        if i > 0 {
            sql.push(" AND ");
        }
        if i == n {
            sql.column(table, "id")
                .push(" > ")
                .bind(sql_value(&values[n]));
        } else {
            let key = &sort[i];
            let v = &values[i];
            match (key.desc, v.is_null()) {
                (false, true) => {
                    write_sort_target(sql, table, &key.target);
                    sql.push(" IS NOT NULL");
                }
                (false, false) => {
                    write_sort_target(sql, table, &key.target);
                    sql.push(" > ");
                    bind_key(sql, key, sql_value(v));
                }
                (true, true) => {
                    sql.push("1 = 0");
                }
                (true, false) => {
                    sql.push("(");
                    write_sort_target(sql, table, &key.target);
                    sql.push(" < ");
                    bind_key(sql, key, sql_value(v));
                    sql.push(" OR ");
                    write_sort_target(sql, table, &key.target);
                    sql.push(" IS NULL)");
                }
            }
        }
        sql.push(")");
    }
    sql.push(")");
}

/// The value a sort key has in a record.
fn sort_value(record: &Record, key: &SortKey) -> Value {
    match &key.target {
        SortTarget::Column(c) => match c.as_str() {
            "id" => Value::String(record.id.clone()),
            "created" => Value::String(record.created.clone()),
            "updated" => Value::String(record.updated.clone()),
            "version" => Value::from(record.version),
            name => record.data.get(name).cloned().unwrap_or(Value::Null),
        },
        SortTarget::Path(path) => {
            let mut cur = record.data.get(&path[0]).cloned().unwrap_or(Value::Null);
            for seg in &path[1..] {
                let index = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit());
                cur = match &cur {
                    // The SQL path reads an all-digit segment as an array index only.
                    Value::Object(_) if index => Value::Null,
                    Value::Object(m) => m.get(seg).cloned().unwrap_or(Value::Null),
                    Value::Array(a) => seg
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| a.get(i).cloned())
                        .unwrap_or(Value::Null),
                    _ => Value::Null,
                };
            }
            match cur {
                // JSON containers sort by their text in SQLite; keep the cursor comparable.
                Value::Object(_) | Value::Array(_) => Value::String(cur.to_string()),
                v => v,
            }
        }
    }
}

/// The cursor pointing after `record`.
pub fn encode_cursor(plan: &ListPlan, record: &Record) -> String {
    let mut k: Vec<Value> = plan
        .sort
        .iter()
        .map(|key| sort_value(record, key))
        .collect();
    k.push(Value::String(record.id.clone()));
    let cur = Cursor {
        s: plan.sort_text.clone(),
        k,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cur).unwrap_or_default())
}

fn decode_cursor(text: &str) -> Option<Cursor> {
    if text.len() > 4096 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let cur: Cursor = serde_json::from_slice(&bytes).ok()?;
    if cur.k.iter().any(|v| v.is_object() || v.is_array()) {
        return None;
    }
    Some(cur)
}
