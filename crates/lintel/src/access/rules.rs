//! Access rules: checking a rule when a collection is defined, and deciding, for a
//! caller, what a rule allows. Lists get the rule as an SQL condition (the same
//! compiler as filters, so a list or count only ever sees permitted rows); a single
//! record is checked by evaluating the rule against it here, with the same meaning.
//!
//! A rule that fails to evaluate (a type mismatch at run time) denies.

use lintel_filter::{CompareOp, Expr, Operand};
use serde_json::{Map, Value as Json};

use crate::access::Caller;
use crate::clock::normalize_datetime;
use crate::schema::kinds::geo_distance_km;
use crate::schema::{Action, Collection, Rule};
use crate::store::Record;
use crate::store::filter::{
    Env, FilterError, GeoArg, Kind, Target, Value, as_f64, check_call_compare, const_compare,
    kind_of, literal_value, resolve, resolve_call,
};

/// What a caller may list.
pub enum ListAccess<'a> {
    /// Every record.
    All,
    /// The records for which this holds.
    Filter(&'a Expr),
    /// Nothing: the rule is superusers-only.
    Denied,
}

/// The list rule for a caller.
pub fn list_access<'a>(caller: &Caller, coll: &'a Collection) -> ListAccess<'a> {
    if caller.is_superuser() {
        return ListAccess::All;
    }
    match coll.rule(Action::List) {
        Rule::Superusers => ListAccess::Denied,
        Rule::Anyone => ListAccess::All,
        Rule::Expr(e) => ListAccess::Filter(e),
    }
}

/// Whether the rule for `action` lets `caller` act on `record` (for create: the record
/// as it would be written). `body` is the request body for `@request.body.*`; `now`
/// is `@now` (a record timestamp from the server's clock).
pub fn allows(
    caller: &Caller,
    coll: &Collection,
    action: Action,
    record: &Record,
    body: Option<&Map<String, Json>>,
    now: &str,
) -> bool {
    if caller.is_superuser() {
        return true;
    }
    match coll.rule(action) {
        Rule::Superusers => false,
        Rule::Anyone => true,
        Rule::Expr(expr) => {
            let auth = caller.auth_fields();
            let env = Env {
                now,
                auth: auth.as_ref(),
                body,
            };
            match eval(expr, coll, record, &env) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(
                        collection = coll.name(),
                        action = action.as_str(),
                        error = %e.message,
                        "access rule failed to evaluate; denying"
                    );
                    false
                }
            }
        }
    }
}

/// Whether a rule is superusers-only for this caller (so the answer is 403, not 404).
pub fn is_denied_outright(caller: &Caller, coll: &Collection, action: Action) -> bool {
    !caller.is_superuser() && matches!(coll.rule(action), Rule::Superusers)
}

/// Evaluates a rule against one record.
pub fn eval(
    expr: &Expr,
    coll: &Collection,
    record: &Record,
    env: &Env,
) -> Result<bool, FilterError> {
    match expr {
        Expr::And(a, b) => Ok(eval(a, coll, record, env)? && eval(b, coll, record, env)?),
        Expr::Or(a, b) => Ok(eval(a, coll, record, env)? || eval(b, coll, record, env)?),
        Expr::Compare {
            left,
            op,
            right,
            span,
        } => {
            let mismatch = |m: String| FilterError {
                code: "type_mismatch",
                message: m,
                position: span.start,
            };
            check_call_compare(left, *op, right, *span)?;
            let l = operand(left, coll, record, env)?;
            let r = operand(right, coll, record, env)?;
            match (l, r) {
                (Side::Value(a), Side::Value(b)) => const_compare(&a, *op, &b).map_err(mismatch),
                (Side::Field(kind, v), Side::Value(b)) => {
                    field_vs(kind, &v, *op, &b).map_err(mismatch)
                }
                (Side::Value(a), Side::Field(kind, v)) => {
                    let flipped = match op {
                        CompareOp::Gt => CompareOp::Lt,
                        CompareOp::Ge => CompareOp::Le,
                        CompareOp::Lt => CompareOp::Gt,
                        CompareOp::Le => CompareOp::Ge,
                        CompareOp::Like | CompareOp::NotLike => {
                            return Err(mismatch("put the field on the left of ~ and !~".into()));
                        }
                        other => *other,
                    };
                    field_vs(kind, &v, flipped, &a).map_err(mismatch)
                }
                (Side::Field(ka, a), Side::Field(kb, b)) => {
                    if matches!(op, CompareOp::Like | CompareOp::NotLike) {
                        return Err(mismatch("~ and !~ compare a field with a value".into()));
                    }
                    if ka == Kind::IdList || kb == Kind::IdList {
                        return Err(mismatch("multiple relations cannot be compared".into()));
                    }
                    let b = scalar(kb, &b);
                    field_vs(ka, &a, *op, &b).map_err(mismatch)
                }
            }
        }
    }
}

enum Side {
    Field(Kind, Json),
    Value(Value),
}

fn operand(
    op: &Operand,
    coll: &Collection,
    record: &Record,
    env: &Env,
) -> Result<Side, FilterError> {
    if let Some((v, _)) = literal_value(op, env)? {
        return Ok(Side::Value(v));
    }
    let (path, span) = match op {
        Operand::Field { path, span } => (path, span),
        Operand::Call { name, args, span } => {
            let g = resolve_call(coll, name, args, *span, env)?;
            let coord = |a: &GeoArg| match a {
                GeoArg::Field(t) => read_target(coll, record, t).as_f64(),
                GeoArg::Value(v) => Some(*v),
                GeoArg::Missing => None,
            };
            // A distance is a value; an unknown one (a null point, a missing request
            // value) makes every comparison false, as in SQL.
            let d = match (
                coord(&g.lat_a),
                coord(&g.lon_a),
                coord(&g.lat_b),
                coord(&g.lon_b),
            ) {
                (Some(a), Some(b), Some(c), Some(d)) => Value::Float(geo_distance_km(a, b, c, d)),
                _ => Value::Absent,
            };
            return Ok(Side::Value(d));
        }
        Operand::Literal { .. } | Operand::Macro { .. } => return Ok(Side::Value(Value::Null)),
    };
    let target = resolve(coll, path, *span)?;
    Ok(Side::Field(
        kind_of(&target),
        read_target(coll, record, &target),
    ))
}

/// The value a resolved field path reads in one record.
fn read_target(coll: &Collection, record: &Record, target: &Target) -> Json {
    match target {
        Target::Column { name, .. } => match name.as_str() {
            "id" => Json::String(record.id.clone()),
            "created" => Json::String(record.created.clone()),
            "updated" => Json::String(record.updated.clone()),
            "version" => Json::from(record.version),
            other => record.data.get(other).cloned().unwrap_or(Json::Null),
        },
        Target::JsonPath { column, path } => {
            let mut cur = if coll.is_document() {
                Some(Json::Object(record.data.clone()))
            } else {
                record.data.get(column).cloned()
            };
            for seg in path {
                cur = match cur {
                    Some(Json::Object(m)) => m.get(seg).cloned(),
                    Some(Json::Array(a)) => {
                        seg.parse::<usize>().ok().and_then(|i| a.get(i).cloned())
                    }
                    _ => None,
                };
            }
            cur.unwrap_or(Json::Null)
        }
    }
}

/// A stored value as a comparable literal.
fn scalar(kind: Kind, v: &Json) -> Value {
    match v {
        Json::Null => Value::DataNull,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) if kind != Kind::Number || n.is_i64() => Value::Int(i),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => match kind {
            Kind::Datetime | Kind::Timestamp => {
                Value::Text(normalize_datetime(s).unwrap_or_else(|| s.clone()))
            }
            _ => Value::Text(s.clone()),
        },
        other => Value::Text(other.to_string()),
    }
}

fn field_vs(kind: Kind, field: &Json, op: CompareOp, v: &Value) -> Result<bool, String> {
    if let Value::Absent = v {
        return Ok(false);
    }
    if kind == Kind::IdList {
        let ids: Vec<&str> = field
            .as_array()
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        return match (op, v) {
            (CompareOp::Eq, Value::Null) => Ok(ids.is_empty()),
            (CompareOp::Ne, Value::Null | Value::DataNull) => Ok(!ids.is_empty()),
            (_, Value::DataNull) => Ok(false),
            (CompareOp::Like, Value::Text(s)) => Ok(ids.contains(&s.as_str())),
            (CompareOp::NotLike, Value::Text(s)) => Ok(!ids.contains(&s.as_str())),
            _ => Err("use ~ or !~ to test whether a multiple relation holds an id".into()),
        };
    }
    let f = scalar(kind, field);
    // A value of the wrong type for a typed field is an error, as in a filter.
    let typed_ok = matches!(
        (kind, v),
        (_, Value::Null | Value::DataNull)
            | (Kind::Json, _)
            | (
                Kind::Text | Kind::Datetime | Kind::Timestamp,
                Value::Text(_)
            )
            | (Kind::Number, Value::Int(_) | Value::Float(_))
            | (Kind::Bool, Value::Bool(_))
    );
    if !typed_ok {
        return Err("the field's type and the value's type differ".into());
    }
    let v = match (kind, v) {
        (Kind::Datetime | Kind::Timestamp, Value::Text(s))
            if !matches!(op, CompareOp::Like | CompareOp::NotLike) =>
        {
            Value::Text(normalize_datetime(s).ok_or("not an RFC 3339 date-time")?)
        }
        _ => v.clone(),
    };
    if kind == Kind::Json && matches!(op, CompareOp::Like | CompareOp::NotLike) {
        // As the SQL does: an array holds the string exactly as an element; a string
        // contains it, ignoring case; any other JSON value (or none) contains nothing.
        let Value::Text(needle) = &v else {
            return if matches!(v, Value::DataNull) {
                Ok(false)
            } else {
                Err("~ and !~ take a string".into())
            };
        };
        let hit = match field {
            Json::Array(items) => items.iter().any(|e| e.as_str() == Some(needle.as_str())),
            Json::String(s) => s.to_lowercase().contains(&needle.to_lowercase()),
            _ => false,
        };
        return Ok(hit == (op == CompareOp::Like));
    }
    if kind == Kind::Json {
        // JSON values of different types are simply unequal (and not ordered).
        let same = matches!(
            (&f, &v),
            (Value::Text(_), Value::Text(_))
                | (Value::Bool(_), Value::Bool(_))
                | (
                    Value::Int(_) | Value::Float(_),
                    Value::Int(_) | Value::Float(_)
                )
                | (Value::Null | Value::DataNull, _)
                | (_, Value::Null | Value::DataNull)
        );
        if !same {
            return Ok(op == CompareOp::Ne);
        }
        if let (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) = (&f, &v) {
            let (a, b) = (Value::Float(as_f64(&f)), Value::Float(as_f64(&v)));
            return const_compare(&a, op, &b);
        }
    }
    if matches!(op, CompareOp::Like | CompareOp::NotLike) {
        return match (&f, &v) {
            (Value::Text(a), Value::Text(b)) => {
                let hit = a.to_lowercase().contains(&b.to_lowercase());
                Ok(hit == (op == CompareOp::Like))
            }
            // A null field contains nothing.
            (Value::DataNull, Value::Text(_)) => Ok(op == CompareOp::NotLike),
            (_, Value::DataNull) => Ok(false),
            _ => Err("~ and !~ work on text".into()),
        };
    }
    const_compare(&f, op, &v)
}
