//! Validation of record input against a collection: every field type and option, with
//! one field error per bad field. Values come out normalised (datetimes in canonical
//! UTC form, integers as integers, relation lists deduplicated).

use serde_json::{Map, Value};

use crate::clock::normalize_datetime;
use crate::collections::model::{Collection, FieldSpec, FieldType, SYSTEM_FIELDS};
use crate::error::{FieldErrors, push_field_error};

/// How the input relates to the stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new record: missing fields take their default.
    Create,
    /// The whole record (PUT): missing fields take their default or null.
    Replace,
    /// Some fields (PATCH): only the given fields are checked and returned.
    Patch,
}

/// Members a client can never set.
fn is_read_only(key: &str) -> bool {
    SYSTEM_FIELDS.contains(&key) || key == "_links" || key == "expand"
}

/// Validates the input of a table collection. Returns the values to store: every field
/// for Create/Replace, the given ones for Patch.
pub fn validate_table(
    coll: &Collection,
    input: &Map<String, Value>,
    mode: Mode,
) -> Result<Map<String, Value>, FieldErrors> {
    let mut errors = FieldErrors::new();
    for key in input.keys() {
        if is_read_only(key) {
            push_field_error(
                &mut errors,
                key.as_str(),
                "read_only",
                "is set by the server and cannot be written",
            );
        } else if coll.field(key).is_none() {
            push_field_error(
                &mut errors,
                key.as_str(),
                "unknown_field",
                format!("collection '{}' has no such field", coll.name()),
            );
        }
    }
    let mut out = Map::new();
    for f in coll.fields() {
        let given = input.get(&f.name);
        let value = match (given, mode) {
            (None, Mode::Patch) => continue,
            (None, _) => f.default.clone().unwrap_or(Value::Null),
            (Some(v), _) => v.clone(),
        };
        if is_empty(f, &value) {
            if f.required {
                push_field_error(&mut errors, f.name.as_str(), "required", "is required");
            } else {
                out.insert(f.name.clone(), empty_value(f));
            }
            continue;
        }
        match check_value(coll, f, &value) {
            Ok(v) => {
                out.insert(f.name.clone(), v);
            }
            Err((code, msg)) => push_field_error(&mut errors, f.name.as_str(), code, msg),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Validates a whole document (after any merge) of a document collection.
pub fn validate_document(coll: &Collection, doc: &Map<String, Value>) -> Result<(), FieldErrors> {
    let mut errors = FieldErrors::new();
    for (key, value) in doc {
        if key.contains('\0') || contains_nul(value) {
            push_field_error(
                &mut errors,
                key.replace('\0', ""),
                "invalid_character",
                "must not contain NUL characters",
            );
        }
    }
    for key in doc.keys() {
        if is_read_only(key) {
            push_field_error(
                &mut errors,
                key.as_str(),
                "read_only",
                "is set by the server and cannot be written",
            );
        }
    }
    if let Some(validator) = coll.json_schema() {
        let instance = Value::Object(doc.clone());
        for err in validator.iter_errors(&instance) {
            let field = match err.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    let base = pointer_to_path(err.instance_path().as_str());
                    let prop = property.as_str().unwrap_or_default();
                    if base.is_empty() {
                        prop.to_owned()
                    } else {
                        format!("{base}.{prop}")
                    }
                }
                _ => pointer_to_path(err.instance_path().as_str()),
            };
            let field = if field.is_empty() {
                "document".to_owned()
            } else {
                field
            };
            push_field_error(&mut errors, field, "schema", err.to_string());
            if errors.len() >= 50 {
                break;
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn pointer_to_path(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

/// Null, or an empty string or list: all count as "no value" (for json fields only
/// null does: `[]` and `""` are values there).
fn is_empty(f: &FieldSpec, v: &Value) -> bool {
    if f.field_type == FieldType::Json {
        return v.is_null();
    }
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn empty_value(f: &FieldSpec) -> Value {
    if f.field_type == FieldType::Relation && f.multiple {
        Value::Array(Vec::new())
    } else {
        Value::Null
    }
}

type Check = Result<Value, (&'static str, String)>;

/// Whether a JSON value holds a NUL character anywhere (no store keeps those
/// portably: PostgreSQL refuses them in text and jsonb).
pub fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Checks one non-empty value against its field; also used for defaults.
pub fn check_value(coll: &Collection, f: &FieldSpec, value: &Value) -> Check {
    if contains_nul(value) {
        return Err((
            "invalid_character",
            "must not contain NUL characters".into(),
        ));
    }
    match f.field_type {
        FieldType::Text => {
            let s = expect_str(value, "text")?;
            check_len(f, s)?;
            check_pattern(coll, f, s)?;
            Ok(value.clone())
        }
        FieldType::Email => {
            let s = expect_str(value, "an email address")?;
            if !is_email(s) {
                return Err(("invalid_email", "is not a valid email address".into()));
            }
            check_pattern(coll, f, s)?;
            Ok(value.clone())
        }
        FieldType::Url => {
            let s = expect_str(value, "a URL")?;
            match url::Url::parse(s) {
                Ok(u)
                    if matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && s.len() <= 2048 => {}
                _ => return Err(("invalid_url", "is not a valid http(s) URL".into())),
            }
            check_pattern(coll, f, s)?;
            Ok(value.clone())
        }
        FieldType::Datetime => {
            let s = expect_str(value, "an RFC 3339 date-time")?;
            normalize_datetime(s).map(Value::String).ok_or((
                "invalid_datetime",
                "is not an RFC 3339 date-time (e.g. 2024-05-01T12:00:00Z)".into(),
            ))
        }
        FieldType::Select => {
            let s = expect_str(value, "one of the allowed values")?;
            let values = f.values.as_deref().unwrap_or_default();
            if values.iter().any(|v| v == s) {
                Ok(value.clone())
            } else {
                Err((
                    "invalid_choice",
                    format!("must be one of: {}", values.join(", ")),
                ))
            }
        }
        FieldType::Number => {
            let n = value
                .as_f64()
                .filter(|_| value.is_number())
                .ok_or(("invalid_type", "must be a number".to_owned()))?;
            check_range(f, n)?;
            Ok(value.clone())
        }
        FieldType::Integer => {
            let n = match value {
                Value::Number(n) => n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|x| x.fract() == 0.0 && x.abs() < 9.0e15)
                        .map(|x| x as i64)
                }),
                _ => None,
            }
            .ok_or(("invalid_type", "must be a whole number".to_owned()))?;
            check_range(f, n as f64)?;
            Ok(Value::from(n))
        }
        FieldType::Bool => match value {
            Value::Bool(_) => Ok(value.clone()),
            _ => Err(("invalid_type", "must be true or false".into())),
        },
        FieldType::Json => {
            if let Some(max) = f.max {
                let size = value.to_string().len();
                if size as f64 > max {
                    return Err(("too_large", format!("must be at most {max} bytes of JSON")));
                }
            }
            Ok(value.clone())
        }
        FieldType::Relation => check_relation(f, value),
    }
}

fn expect_str<'a>(value: &'a Value, what: &str) -> Result<&'a str, (&'static str, String)> {
    value
        .as_str()
        .ok_or(("invalid_type", format!("must be {what} (a string)")))
}

fn check_len(f: &FieldSpec, s: &str) -> Result<(), (&'static str, String)> {
    let len = s.chars().count() as f64;
    if let Some(min) = f.min
        && len < min
    {
        return Err(("too_short", format!("must be at least {min} characters")));
    }
    if let Some(max) = f.max
        && len > max
    {
        return Err(("too_long", format!("must be at most {max} characters")));
    }
    Ok(())
}

fn check_range(f: &FieldSpec, n: f64) -> Result<(), (&'static str, String)> {
    if let Some(min) = f.min
        && n < min
    {
        return Err(("too_small", format!("must be at least {min}")));
    }
    if let Some(max) = f.max
        && n > max
    {
        return Err(("too_large", format!("must be at most {max}")));
    }
    Ok(())
}

fn check_pattern(coll: &Collection, f: &FieldSpec, s: &str) -> Result<(), (&'static str, String)> {
    match coll.pattern(&f.name) {
        Some(re) if !re.is_match(s) => Err((
            "pattern_mismatch",
            "does not match the required pattern".into(),
        )),
        _ => Ok(()),
    }
}

/// A record id as Lintel makes them, or one imported: 1-64 URL-safe characters.
pub fn is_record_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_relation(f: &FieldSpec, value: &Value) -> Check {
    if !f.multiple {
        let s = value
            .as_str()
            .ok_or(("invalid_type", "must be a record id (a string)".to_owned()))?;
        if !is_record_id(s) {
            return Err(("invalid_id", "is not a record id".into()));
        }
        return Ok(value.clone());
    }
    let items = value
        .as_array()
        .ok_or(("invalid_type", "must be a list of record ids".to_owned()))?;
    let mut ids: Vec<Value> = Vec::with_capacity(items.len());
    for item in items {
        match item.as_str() {
            Some(s) if is_record_id(s) => {
                if !ids.iter().any(|v| v.as_str() == Some(s)) {
                    ids.push(item.clone());
                }
            }
            _ => return Err(("invalid_id", "every item must be a record id".into())),
        }
    }
    let n = ids.len() as f64;
    if let Some(min) = f.min
        && n < min
    {
        return Err(("too_few", format!("must list at least {min} records")));
    }
    if let Some(max) = f.max
        && n > max
    {
        return Err(("too_many", format!("must list at most {max} records")));
    }
    Ok(Value::Array(ids))
}

/// A pragmatic address check: local@domain, no spaces, a dotted domain of sane labels.
fn is_email(s: &str) -> bool {
    if s.len() > 254 {
        return false;
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(is_email("a.b+c@example.com"));
        assert!(!is_email("a@b"));
        assert!(!is_email("no at.com"));
        assert!(!is_email("a@@b.com"));
        assert!(!is_email(".a@b.com"));
    }

    #[test]
    fn record_ids() {
        assert!(is_record_id("abc123_-"));
        assert!(!is_record_id(""));
        assert!(!is_record_id("a'b"));
    }
}
