//! Compiles a parsed filter (`lintel_filter::Expr`) into an SQL condition for one
//! collection. Every literal becomes a bound parameter; every field is looked up in the
//! collection's schema (or, in a document collection, becomes a JSON path parameter);
//! operators map to a fixed set of SQL fragments. Type mismatches are reported with the
//! position in the filter text.

use lintel_filter::{CompareOp, Expr, Literal, Operand, Span};
use serde_json::Map;

use crate::clock::normalize_datetime;
use crate::schema::{Collection, FieldSpec};
use crate::store::sql::{Sql, SqlValue, like_escape};

/// A filter that cannot be compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterError {
    pub code: &'static str,
    pub message: String,
    pub position: usize,
}

fn err(code: &'static str, span: Span, message: impl Into<String>) -> FilterError {
    FilterError {
        code,
        message: message.into(),
        position: span.start,
    }
}

/// What `@` macros expand to: the time, and for requests the caller and the body.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    pub now: &'a str,
    /// The caller's fields for `@request.auth.*` (None: anonymous).
    pub auth: Option<&'a Map<String, serde_json::Value>>,
    /// The request body for `@request.body.*`.
    pub body: Option<&'a Map<String, serde_json::Value>>,
}

impl<'a> Env<'a> {
    pub fn now(now: &'a str) -> Self {
        Self {
            now,
            auth: None,
            body: None,
        }
    }
}

/// The type of a column or JSON value as the compiler sees it (the field kinds say
/// which their fields are).
pub(crate) use crate::schema::kinds::FilterKind as Kind;

/// Where a field operand reads from.
pub(crate) enum Target {
    Column { name: String, kind: Kind },
    JsonPath { column: String, path: Vec<String> },
}

/// Resolves a field path against the collection: a system field, a table field (a
/// path continues into a json field), or any path into a document.
pub(crate) fn resolve(
    coll: &Collection,
    path: &[String],
    span: Span,
) -> Result<Target, FilterError> {
    let Some(first) = path.first() else {
        return Err(err("unknown_field", span, "empty field name"));
    };
    let system = match first.as_str() {
        "id" => Some(Kind::Text),
        "created" | "updated" => Some(Kind::Datetime),
        "version" => Some(Kind::Number),
        _ => None,
    };
    if let Some(kind) = system {
        if path.len() > 1 {
            return Err(err(
                "unknown_field",
                span,
                format!("'{first}' has no members"),
            ));
        }
        return Ok(Target::Column {
            name: first.clone(),
            kind,
        });
    }
    if coll.is_document() {
        return Ok(Target::JsonPath {
            column: "data".into(),
            path: path.to_vec(),
        });
    }
    let Some(field) = coll.field(first).filter(|f| !f.hidden) else {
        return Err(err(
            "unknown_field",
            span,
            format!("collection '{}' has no field '{first}'", coll.name()),
        ));
    };
    if field.field_type.has_members() {
        return Ok(Target::JsonPath {
            column: field.name.clone(),
            path: path[1..].to_vec(),
        });
    }
    if path.len() > 1 {
        return Err(err(
            "unknown_field",
            span,
            format!(
                "field '{first}' is a {} and has no members",
                field.field_type.as_str()
            ),
        ));
    }
    Ok(Target::Column {
        name: field.name.clone(),
        kind: field_kind(field),
    })
}

pub(crate) fn field_kind(f: &FieldSpec) -> Kind {
    f.field_type.filter_kind(f.multiple)
}

/// A literal side, after macros are expanded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// The literal `null`: the explicit test for "no value" (`x = null`, `x != null`).
    Null,
    /// A null that came from data (a request value sent as JSON null, a null field):
    /// it equals nothing, not even another null.
    DataNull,
    /// A `@request` value that is not there (an anonymous caller's id, a field the
    /// body lacks): every comparison with it is false, except `= null`.
    Absent,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// A JSON value from the request as a literal.
fn json_literal(v: Option<&serde_json::Value>, span: Span) -> Result<Value, FilterError> {
    Ok(match v {
        None => Value::Absent,
        Some(serde_json::Value::Null) => Value::DataNull,
        Some(serde_json::Value::String(s)) => Value::Text(s.clone()),
        Some(serde_json::Value::Bool(b)) => Value::Bool(*b),
        Some(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Some(_) => {
            return Err(err(
                "type_mismatch",
                span,
                "only text, number, bool and null request values can be compared",
            ));
        }
    })
}

fn lookup<'a>(
    map: Option<&'a Map<String, serde_json::Value>>,
    path: &[String],
) -> Option<&'a serde_json::Value> {
    let (first, rest) = path.split_first()?;
    let mut cur = map?.get(first)?;
    for seg in rest {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(seg)?,
            _ => return None,
        };
    }
    Some(cur)
}

pub(crate) fn literal_value(
    op: &Operand,
    env: &Env<'_>,
) -> Result<Option<(Value, Span)>, FilterError> {
    let now = env.now;
    Ok(match op {
        Operand::Field { .. } | Operand::Call { .. } => None,
        Operand::Literal { value, span } => Some((
            match value {
                Literal::Null => Value::Null,
                Literal::String(s) => Value::Text(s.clone()),
                Literal::Integer(i) => Value::Int(*i),
                Literal::Float(f) => Value::Float(*f),
                Literal::Bool(b) => Value::Bool(*b),
            },
            *span,
        )),
        Operand::Macro { path, span } => match path
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["now"] => Some((Value::Text(now.to_owned()), *span)),
            ["request", "auth", _, ..] => {
                Some((json_literal(lookup(env.auth, &path[2..]), *span)?, *span))
            }
            ["request", "body", _, ..] => {
                Some((json_literal(lookup(env.body, &path[2..]), *span)?, *span))
            }
            _ => {
                return Err(err(
                    "unknown_macro",
                    *span,
                    format!(
                        "unknown macro '@{}' (supported: @now, @request.auth.<field>, @request.body.<field>)",
                        path.join(".")
                    ),
                ));
            }
        },
    })
}

/// Compiles `expr` into `sql` as a condition.
pub fn compile(
    expr: &Expr,
    coll: &Collection,
    now: &Env<'_>,
    sql: &mut Sql,
) -> Result<(), FilterError> {
    match expr {
        Expr::And(a, b) | Expr::Or(a, b) => {
            sql.push("(");
            compile(a, coll, now, sql)?;
            sql.push(if matches!(expr, Expr::And(..)) {
                " AND "
            } else {
                " OR "
            });
            compile(b, coll, now, sql)?;
            sql.push(")");
            Ok(())
        }
        Expr::Compare {
            left,
            op,
            right,
            span,
        } => compare(left, *op, right, *span, coll, now, sql),
    }
}

fn flip(op: CompareOp) -> Option<CompareOp> {
    Some(match op {
        CompareOp::Eq => CompareOp::Eq,
        CompareOp::Ne => CompareOp::Ne,
        CompareOp::Gt => CompareOp::Lt,
        CompareOp::Ge => CompareOp::Le,
        CompareOp::Lt => CompareOp::Gt,
        CompareOp::Le => CompareOp::Ge,
        CompareOp::Like | CompareOp::NotLike => return None,
    })
}

fn sql_op(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Eq => " = ",
        CompareOp::Ne => " <> ",
        CompareOp::Gt => " > ",
        CompareOp::Ge => " >= ",
        CompareOp::Lt => " < ",
        CompareOp::Le => " <= ",
        CompareOp::Like | CompareOp::NotLike => " LIKE ",
    }
}

fn write_target(sql: &mut Sql, table: &str, t: &Target) {
    match t {
        Target::Column { name, .. } => {
            sql.column(table, name);
        }
        Target::JsonPath { column, path } => sql.json_path(table, column, path),
    }
}

fn compare(
    left: &Operand,
    op: CompareOp,
    right: &Operand,
    span: Span,
    coll: &Collection,
    now: &Env<'_>,
    sql: &mut Sql,
) -> Result<(), FilterError> {
    let table = coll.name();
    check_call_compare(left, op, right, span)?;
    let lv = literal_value(left, now)?;
    let rv = literal_value(right, now)?;
    match (left, lv, right, rv) {
        (
            Operand::Field { path: lp, span: ls },
            None,
            Operand::Field { path: rp, span: rs },
            None,
        ) => {
            let a = resolve(coll, lp, *ls)?;
            let b = resolve(coll, rp, *rs)?;
            if matches!(op, CompareOp::Like | CompareOp::NotLike) {
                return Err(err(
                    "type_mismatch",
                    span,
                    "~ and !~ compare a field with a value, not two fields",
                ));
            }
            let (ka, kb) = (kind_of(&a), kind_of(&b));
            if ka != kb && ka != Kind::Json && kb != Kind::Json {
                return Err(err(
                    "type_mismatch",
                    span,
                    "the two fields have different types",
                ));
            }
            if ka == Kind::IdList || kb == Kind::IdList {
                return Err(err(
                    "type_mismatch",
                    span,
                    "multiple relations cannot be compared with each other",
                ));
            }
            sql.push("(");
            write_target(sql, table, &a);
            let op_text = match op {
                // `=` never holds for a null side (SQL's own `=`); `!=` holds when
                // exactly one side is null.
                CompareOp::Ne => sql.null_safe_ne(),
                _ => sql_op(op),
            };
            sql.push(op_text);
            write_target(sql, table, &b);
            sql.push(")");
            Ok(())
        }
        (
            Operand::Call {
                name,
                args,
                span: cs,
            },
            None,
            _,
            Some((v, vs)),
        ) => call_vs_value(sql, coll, (name, args, *cs), op, v, vs, span, now),
        (
            _,
            Some((v, vs)),
            Operand::Call {
                name,
                args,
                span: cs,
            },
            None,
        ) => {
            let Some(op) = flip(op) else {
                return Err(err(
                    "type_mismatch",
                    span,
                    "a distance is compared with =, !=, <, <=, > or >=",
                ));
            };
            call_vs_value(sql, coll, (name, args, *cs), op, v, vs, span, now)
        }
        (Operand::Call { .. }, None, _, None) | (_, None, Operand::Call { .. }, None) => Err(err(
            "type_mismatch",
            span,
            "compare geoDistance(...) with a number",
        )),
        (Operand::Field { path, span: fs }, None, _, Some((v, vs))) => {
            let t = resolve(coll, path, *fs)?;
            field_vs_value(sql, table, &t, op, v, vs, span)
        }
        (_, Some((v, vs)), Operand::Field { path, span: fs }, None) => {
            let Some(op) = flip(op) else {
                return Err(err(
                    "type_mismatch",
                    span,
                    "put the field on the left of ~ and !~",
                ));
            };
            let t = resolve(coll, path, *fs)?;
            field_vs_value(sql, table, &t, op, v, vs, span)
        }
        (_, Some((a, _)), _, Some((b, _)))
            if matches!(left, Operand::Macro { .. }) || matches!(right, Operand::Macro { .. }) =>
        {
            // Two values (a request value against a literal): decided here.
            let yes = const_compare(&a, op, &b).map_err(|m| err("type_mismatch", span, m))?;
            sql.push(if yes { "(1 = 1)" } else { "(1 = 0)" });
            Ok(())
        }
        _ => Err(err(
            "no_field",
            span,
            "a comparison needs a field on at least one side",
        )),
    }
}

/// Compares two values (no field involved). The truth table for null and missing
/// values is in docs/filters.md: the literal `null` tests for "no value"; otherwise a
/// missing (`Absent`) side makes every comparison false, and a null side never
/// satisfies `=` (two nulls are not equal) but differs from any value under `!=`.
pub(crate) fn const_compare(a: &Value, op: CompareOp, b: &Value) -> Result<bool, String> {
    use std::cmp::Ordering;
    let no_value = |v: &Value| matches!(v, Value::Null | Value::DataNull | Value::Absent);
    if matches!(a, Value::Null) || matches!(b, Value::Null) {
        let other = if matches!(a, Value::Null) { b } else { a };
        return match op {
            CompareOp::Eq => Ok(no_value(other)),
            CompareOp::Ne => Ok(!no_value(other)),
            _ => Err("null can only be compared with = and !=".into()),
        };
    }
    if matches!(a, Value::Absent) || matches!(b, Value::Absent) {
        return Ok(false);
    }
    match (a, b) {
        (Value::DataNull, Value::DataNull) => return Ok(false),
        (Value::DataNull, _) | (_, Value::DataNull) => {
            // A null differs from any value and contains nothing.
            return Ok(matches!(op, CompareOp::Ne | CompareOp::NotLike));
        }
        _ => {}
    }
    let ord: Option<Ordering> = match (a, b) {
        (Value::Text(x), Value::Text(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            as_f64(a).partial_cmp(&as_f64(b))
        }
        _ => return Err("the two values have different types".into()),
    };
    Ok(match op {
        CompareOp::Eq => ord == Some(Ordering::Equal),
        CompareOp::Ne => ord != Some(Ordering::Equal),
        CompareOp::Gt => ord == Some(Ordering::Greater),
        CompareOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
        CompareOp::Lt => ord == Some(Ordering::Less),
        CompareOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        CompareOp::Like | CompareOp::NotLike => {
            let (Value::Text(x), Value::Text(y)) = (a, b) else {
                return Err("~ and !~ take text on both sides".into());
            };
            let hit = x.to_lowercase().contains(&y.to_lowercase());
            hit == (op == CompareOp::Like)
        }
    })
}

pub(crate) fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        _ => f64::NAN,
    }
}

pub(crate) fn kind_of(t: &Target) -> Kind {
    match t {
        Target::Column { kind, .. } => *kind,
        Target::JsonPath { .. } => Kind::Json,
    }
}

/// One coordinate of a `geoDistance` call: a number from the record (a numeric field
/// or a JSON member, such as a geoPoint's `lat`) or a value.
pub(crate) enum GeoArg {
    Field(Target),
    Value(f64),
    /// A request value that is not there (or null): the distance is unknown, so every
    /// comparison with it is false.
    Missing,
}

/// `geoDistance(...)` resolved against a collection: the great-circle distance in
/// kilometres between (lat_a, lon_a) and (lat_b, lon_b).
pub(crate) struct GeoDistance {
    pub lat_a: GeoArg,
    pub lon_a: GeoArg,
    pub lat_b: GeoArg,
    pub lon_b: GeoArg,
}

/// The functions filters and rules may call.
pub const FUNCTIONS: &str =
    "geoDistance(geoPointField, lat, lon) or geoDistance(lonA, latA, lonB, latB)";

/// Resolves a function call. The only function is `geoDistance`, in two forms: a
/// geoPoint field and a point, or four coordinates in PocketBase's order (longitude
/// first).
pub(crate) fn resolve_call(
    coll: &Collection,
    name: &str,
    args: &[Operand],
    span: Span,
    env: &Env<'_>,
) -> Result<GeoDistance, FilterError> {
    if name != "geoDistance" {
        return Err(err(
            "unknown_function",
            span,
            format!("unknown function '{name}' (supported: {FUNCTIONS})"),
        ));
    }
    let number = |op: &Operand| -> Result<GeoArg, FilterError> {
        if let Some((v, vs)) = literal_value(op, env)? {
            return match v {
                Value::Int(i) => Ok(GeoArg::Value(i as f64)),
                Value::Float(f) => Ok(GeoArg::Value(f)),
                Value::Absent | Value::DataNull => Ok(GeoArg::Missing),
                _ => Err(err(
                    "type_mismatch",
                    vs,
                    "geoDistance takes numbers (degrees)",
                )),
            };
        }
        let Operand::Field { path, span } = op else {
            return Err(err(
                "invalid_arguments",
                op.span(),
                "geoDistance takes fields, numbers or macros, not calls",
            ));
        };
        let t = resolve(coll, path, *span)?;
        match kind_of(&t) {
            Kind::Number | Kind::Json => Ok(GeoArg::Field(t)),
            _ => Err(err(
                "type_mismatch",
                *span,
                format!("'{}' is not a number", path.join(".")),
            )),
        }
    };
    let g = match args {
        [point, lat, lon] => {
            let Operand::Field { path, span: ps } = point else {
                return Err(err(
                    "invalid_arguments",
                    point.span(),
                    "the first of three arguments is a geoPoint field",
                ));
            };
            let field = match path.as_slice() {
                [one] => coll.field(one).filter(|f| !f.hidden),
                _ => None,
            };
            let Some(field) = field.filter(|f| f.field_type == crate::schema::FieldType::GeoPoint)
            else {
                return Err(err(
                    "type_mismatch",
                    *ps,
                    format!("'{}' is not a geoPoint field", path.join(".")),
                ));
            };
            let member = |m: &str| {
                GeoArg::Field(Target::JsonPath {
                    column: field.name.clone(),
                    path: vec![m.to_owned()],
                })
            };
            Ok(GeoDistance {
                lat_a: member("lat"),
                lon_a: member("lon"),
                lat_b: number(lat)?,
                lon_b: number(lon)?,
            })
        }
        [lon_a, lat_a, lon_b, lat_b] => Ok(GeoDistance {
            lat_a: number(lat_a)?,
            lon_a: number(lon_a)?,
            lat_b: number(lat_b)?,
            lon_b: number(lon_b)?,
        }),
        _ => Err(err(
            "invalid_arguments",
            span,
            format!("geoDistance takes 3 or 4 arguments: {FUNCTIONS}"),
        )),
    }?;
    // Coordinates given as values must be on Earth (those read from records are
    // whatever was stored; a geoPoint's are checked when written).
    for (arg, (lo, hi), what) in [
        (&g.lat_a, (-90.0, 90.0), "latitude"),
        (&g.lat_b, (-90.0, 90.0), "latitude"),
        (&g.lon_a, (-180.0, 180.0), "longitude"),
        (&g.lon_b, (-180.0, 180.0), "longitude"),
    ] {
        if let GeoArg::Value(v) = arg
            && !(lo..=hi).contains(v)
        {
            return Err(err(
                "invalid_arguments",
                span,
                format!("a {what} is between {lo} and {hi} degrees (got {v})"),
            ));
        }
    }
    Ok(g)
}

/// The shapes a comparison with a function call may take, checked the same way by
/// the SQL compiler, the rule evaluator and rule definition: a distance compares with
/// a number (a literal or a macro), never with a field, another call or `null`, and
/// not with `~`/`!~`.
pub(crate) fn check_call_compare(
    left: &Operand,
    op: CompareOp,
    right: &Operand,
    span: Span,
) -> Result<(), FilterError> {
    let is_call = |o: &Operand| matches!(o, Operand::Call { .. });
    if !is_call(left) && !is_call(right) {
        return Ok(());
    }
    for o in [left, right] {
        if let Operand::Call { name, span, .. } = o
            && name != "geoDistance"
        {
            return Err(err(
                "unknown_function",
                *span,
                format!("unknown function '{name}' (supported: {FUNCTIONS})"),
            ));
        }
    }
    let other = if is_call(left) { right } else { left };
    let numberish = match other {
        Operand::Literal { value, .. } => {
            matches!(value, Literal::Integer(_) | Literal::Float(_))
        }
        Operand::Macro { .. } => true,
        Operand::Field { .. } | Operand::Call { .. } => false,
    };
    if !numberish || matches!(op, CompareOp::Like | CompareOp::NotLike) {
        return Err(err(
            "type_mismatch",
            span,
            "a distance is compared with a number (or a macro) under =, !=, <, <=, > or >=",
        ));
    }
    Ok(())
}

/// Writes the distance (`lintel_geo_distance`, the same function on both stores).
fn write_geo(sql: &mut Sql, table: &str, g: &GeoDistance) {
    sql.push("lintel_geo_distance(");
    for (i, arg) in [&g.lat_a, &g.lon_a, &g.lat_b, &g.lon_b]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            sql.push(", ");
        }
        match arg {
            GeoArg::Field(Target::Column { name, .. }) => {
                sql.column(table, name);
            }
            GeoArg::Field(Target::JsonPath { column, path }) => {
                sql.json_number(table, column, path);
            }
            GeoArg::Value(v) => {
                sql.bind(SqlValue::Float(*v));
            }
            GeoArg::Missing => {
                sql.bind(SqlValue::Null);
            }
        }
    }
    sql.push(")");
}

/// `geoDistance(...) <op> value`: the value is a number; `~` and `null` do not apply.
#[allow(clippy::too_many_arguments)]
fn call_vs_value(
    sql: &mut Sql,
    coll: &Collection,
    call: (&str, &[Operand], Span),
    op: CompareOp,
    v: Value,
    vs: Span,
    span: Span,
    env: &Env<'_>,
) -> Result<(), FilterError> {
    let g = resolve_call(coll, call.0, call.1, call.2, env)?;
    if matches!(op, CompareOp::Like | CompareOp::NotLike) {
        return Err(err(
            "type_mismatch",
            span,
            "a distance is compared with =, !=, <, <=, > or >=",
        ));
    }
    let n = match v {
        Value::Int(i) => i as f64,
        Value::Float(f) => f,
        Value::Absent | Value::DataNull => {
            sql.push("(1 = 0)");
            return Ok(());
        }
        _ => {
            return Err(err(
                "type_mismatch",
                vs,
                "a distance (kilometres) is compared with a number",
            ));
        }
    };
    sql.push("(");
    write_geo(sql, coll.name(), &g);
    sql.push(sql_op(op));
    sql.bind(SqlValue::Float(n));
    sql.push(")");
    Ok(())
}

fn field_vs_value(
    sql: &mut Sql,
    table: &str,
    t: &Target,
    op: CompareOp,
    v: Value,
    vs: Span,
    span: Span,
) -> Result<(), FilterError> {
    let kind = kind_of(t);
    if let Value::Absent = v {
        // A missing request value makes every comparison false (fail closed: an
        // anonymous caller's `@request.auth.id != ""` does not hold).
        sql.push("(1 = 0)");
        return Ok(());
    }
    // A null request value is not the literal: it equals nothing; `!=` holds for
    // fields that have a value, as for the literal.
    let v = match (v, op) {
        (Value::DataNull, CompareOp::Ne) => Value::Null,
        (Value::DataNull, _) => {
            sql.push("(1 = 0)");
            return Ok(());
        }
        (v, _) => v,
    };
    if let Value::Null = v {
        if let (Kind::IdList, Target::Column { name, .. }) = (kind, t) {
            // An empty list of relations is "no value", like null.
            return match op {
                CompareOp::Eq | CompareOp::Ne => {
                    sql.push(if op == CompareOp::Eq { "(" } else { "(NOT " });
                    sql.json_array_empty(table, name);
                    sql.push(")");
                    Ok(())
                }
                _ => Err(err(
                    "type_mismatch",
                    vs,
                    "null can only be compared with = and !=",
                )),
            };
        }
        return match op {
            CompareOp::Eq | CompareOp::Ne => {
                sql.push("(");
                match t {
                    // A JSON `null` is no value, like a missing member.
                    Target::JsonPath { column, path } => {
                        sql.json_path_text_value(table, column, path)
                    }
                    Target::Column { .. } => write_target(sql, table, t),
                }
                sql.push(if op == CompareOp::Eq {
                    " IS NULL)"
                } else {
                    " IS NOT NULL)"
                });
                Ok(())
            }
            _ => Err(err(
                "type_mismatch",
                vs,
                "null can only be compared with = and !=",
            )),
        };
    }
    let like = matches!(op, CompareOp::Like | CompareOp::NotLike);
    let negate = op == CompareOp::NotLike;
    let bound = match (kind, v) {
        (Kind::Text, Value::Text(s)) => SqlValue::Text(s),
        (Kind::Datetime, Value::Text(s)) => {
            if like {
                SqlValue::Text(s)
            } else {
                SqlValue::Text(normalize_datetime(&s).ok_or_else(|| {
                    err(
                        "type_mismatch",
                        vs,
                        format!("'{}' is not an RFC 3339 date-time", truncate(&s)),
                    )
                })?)
            }
        }
        (Kind::Timestamp, Value::Text(s)) => {
            if like {
                return Err(err(
                    "type_mismatch",
                    span,
                    "~ and !~ work on text fields, not date-times",
                ));
            }
            SqlValue::Timestamp(normalize_datetime(&s).ok_or_else(|| {
                err(
                    "type_mismatch",
                    vs,
                    format!("'{}' is not an RFC 3339 date-time", truncate(&s)),
                )
            })?)
        }
        (Kind::Number, Value::Int(i)) => SqlValue::Int(i),
        (Kind::Number, Value::Float(f)) => SqlValue::Float(f),
        (Kind::Bool, Value::Bool(b)) => SqlValue::Bool(b),
        (Kind::IdList, Value::Text(s)) => {
            if !like {
                return Err(err(
                    "type_mismatch",
                    span,
                    "use ~ or !~ to test whether a multiple relation holds an id",
                ));
            }
            sql.push(if negate {
                "(NOT COALESCE("
            } else {
                "(COALESCE("
            });
            if let Target::Column { name, .. } = t {
                sql.json_array_contains(table, name, SqlValue::Text(s));
            }
            sql.push(", FALSE))");
            return Ok(());
        }
        (Kind::Json, v) => {
            let value = match v {
                Value::Text(s) => SqlValue::Text(s),
                Value::Int(i) => SqlValue::Int(i),
                Value::Float(f) => SqlValue::Float(f),
                Value::Bool(b) => SqlValue::Bool(b),
                Value::Null | Value::DataNull | Value::Absent => SqlValue::Null,
            };
            if like {
                let Target::JsonPath { column, path } = t else {
                    return Err(err("type_mismatch", span, "~ needs a JSON path"));
                };
                let SqlValue::Text(s) = value else {
                    return Err(err("type_mismatch", vs, "~ and !~ take a string"));
                };
                sql.push(if negate {
                    "(NOT COALESCE("
                } else {
                    "(COALESCE("
                });
                sql.json_contains_or_like(table, column, path, s);
                sql.push(", FALSE))");
                return Ok(());
            }
            if op == CompareOp::Eq
                && let Target::JsonPath { column, path } = t
                && sql.json_path_equals(table, column, path, value.clone())
            {
                return Ok(());
            }
            // Values of different JSON types are unequal and unordered (as in the rule
            // evaluator): the comparison holds only under a type match; `!=` is its
            // negation, true for a null or missing value too.
            let Target::JsonPath { column, path } = t else {
                return Err(err(
                    "type_mismatch",
                    span,
                    "a JSON comparison needs a JSON path",
                ));
            };
            sql.push(if op == CompareOp::Ne {
                "(NOT COALESCE(("
            } else {
                "(COALESCE(("
            });
            sql.json_type_matches(table, column, path, &value);
            sql.push(" AND ");
            write_target(sql, table, t);
            let cmp = if op == CompareOp::Ne {
                " = "
            } else {
                sql_op(op)
            };
            sql.push(cmp).bind_json_scalar(value).push("), FALSE))");
            return Ok(());
        }
        (kind, _) => {
            return Err(err(
                "type_mismatch",
                vs,
                format!(
                    "the field holds {} values; this literal does not fit",
                    kind_name(kind)
                ),
            ));
        }
    };
    if like {
        if !matches!(kind, Kind::Text | Kind::Datetime) {
            return Err(err("type_mismatch", span, "~ and !~ work on text fields"));
        }
        let SqlValue::Text(s) = bound else {
            return Err(err("type_mismatch", vs, "~ and !~ take a string"));
        };
        let pattern = format!("%{}%", like_escape(&s));
        sql.push("(");
        if negate {
            write_target(sql, table, t);
            sql.push(" IS NULL OR ");
        }
        sql.like_ci(negate, pattern, |sql| write_target(sql, table, t));
        sql.push(")");
        return Ok(());
    }
    if kind == Kind::Bool && !matches!(op, CompareOp::Eq | CompareOp::Ne) {
        return Err(err(
            "type_mismatch",
            span,
            "bool fields compare with = and != only",
        ));
    }
    sql.push("(");
    write_target(sql, table, t);
    if op == CompareOp::Ne {
        let ne = sql.null_safe_ne();
        sql.push(ne);
    } else {
        sql.push(sql_op(op));
    }
    sql.bind(bound);
    sql.push(")");
    Ok(())
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Text => "text",
        Kind::Datetime | Kind::Timestamp => "date-time",
        Kind::Number => "number",
        Kind::Bool => "true/false",
        Kind::IdList => "record id",
        Kind::Json => "JSON",
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Checks a rule's text against a collection: it parses, its fields exist (and are not
/// hidden) and its macros are known.
pub fn check(coll: &Collection, text: &str) -> Result<(), FilterError> {
    if text.trim().is_empty() {
        return Ok(());
    }
    let expr = lintel_filter::parse(text).map_err(|e| FilterError {
        code: e.code.as_str(),
        message: e.message.clone(),
        position: e.position,
    })?;
    walk(&expr, coll)
}

fn walk(expr: &Expr, coll: &Collection) -> Result<(), FilterError> {
    match expr {
        Expr::And(a, b) | Expr::Or(a, b) => {
            walk(a, coll)?;
            walk(b, coll)
        }
        Expr::Compare {
            left,
            op: cmp,
            right,
            span,
        } => {
            check_call_compare(left, *cmp, right, *span)?;
            for op in [left, right] {
                match op {
                    Operand::Field { path, span } => {
                        resolve(coll, path, *span)?;
                    }
                    Operand::Macro { .. } => {
                        literal_value(op, &Env::now(""))?;
                    }
                    Operand::Call { name, args, span } => {
                        resolve_call(coll, name, args, *span, &Env::now(""))?;
                    }
                    Operand::Literal { .. } => {}
                }
            }
            Ok(())
        }
    }
}

/// Validates a whole collection spec ([`crate::schema::validate_spec`]) and, when
/// that passes the names, its rules: each parses and names only fields of the
/// collection and known macros. Value types are checked when a rule runs (a
/// mismatch denies).
pub fn validate_spec(
    spec: &crate::schema::CollectionSpec,
    existing: &[String],
    altering: bool,
) -> crate::validation::FieldErrors {
    let mut errors = crate::schema::validate_spec(spec, existing, altering);
    if spec.rules.is_unset() {
        return errors;
    }
    let mut bare = spec.clone();
    bare.rules = crate::schema::Rules::default();
    let Ok(coll) = Collection::compile(bare, String::new(), String::new()) else {
        return errors;
    };
    for (name, rule) in spec.rules.all() {
        let Some(text) = rule else { continue };
        if let Err(e) = check(&coll, text) {
            crate::validation::push_field_error(
                &mut errors,
                format!("rules.{name}"),
                e.code,
                format!("{} (at position {})", e.message, e.position),
            );
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cell of the table in docs/filters.md ("null, missing and empty").
    #[test]
    fn truth_table() {
        let lit = Value::Null;
        let null = Value::DataNull;
        let missing = Value::Absent;
        let empty = Value::Text(String::new());
        let x = Value::Text("x".into());
        let cols = [&lit, &null, &missing, &empty, &x];
        let rows: [(&Value, [bool; 5], [bool; 5]); 4] = [
            (
                &null,
                [true, false, false, false, false],
                [false, false, false, true, true],
            ),
            (
                &missing,
                [true, false, false, false, false],
                [false, false, false, false, false],
            ),
            (
                &empty,
                [false, false, false, true, false],
                [true, true, false, false, true],
            ),
            (
                &x,
                [false, false, false, false, true],
                [true, true, false, true, false],
            ),
        ];
        for (left, eq, ne) in rows {
            for (i, right) in cols.iter().enumerate() {
                for (op, want) in [(CompareOp::Eq, eq[i]), (CompareOp::Ne, ne[i])] {
                    assert_eq!(
                        const_compare(left, op, right),
                        Ok(want),
                        "{left:?} {op:?} {right:?}"
                    );
                    assert_eq!(
                        const_compare(right, op, left),
                        Ok(want),
                        "{right:?} {op:?} {left:?} (symmetric)"
                    );
                }
            }
        }
        for op in [CompareOp::Lt, CompareOp::Ge, CompareOp::Like] {
            for v in [&null, &missing] {
                assert_eq!(const_compare(v, op, &x), Ok(false), "{v:?} {op:?}");
                assert_eq!(const_compare(&x, op, v), Ok(false), "{op:?} {v:?}");
            }
            assert!(const_compare(&lit, op, &x).is_err());
        }
        assert_eq!(const_compare(&null, CompareOp::NotLike, &x), Ok(true));
        assert_eq!(const_compare(&missing, CompareOp::NotLike, &x), Ok(false));
        assert_eq!(const_compare(&lit, CompareOp::Eq, &lit), Ok(true));
    }
}
