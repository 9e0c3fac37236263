//! Validation of record input against a collection: every field type and option, with
//! one field error per bad field. Values come out normalised (datetimes in canonical
//! UTC form, integers as integers, relation lists deduplicated).

use serde_json::{Map, Value};

use crate::schema::kinds::{FieldType, check_value, contains_nul, empty_value, is_empty};
use crate::schema::{Collection, SYSTEM_FIELDS};
use crate::validation::{FieldErrors, push_field_error};

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
        // A collaborative document changes only through /v1/yjs; a new record starts
        // with an empty one, and other writes keep what is stored.
        if f.field_type == FieldType::Yjs {
            match (given, mode) {
                (Some(_), _) => push_field_error(
                    &mut errors,
                    f.name.as_str(),
                    "read_only",
                    "a yjs field is edited through /v1/yjs/{collection}/{id}/{field}",
                ),
                (None, Mode::Create) => {
                    out.insert(f.name.clone(), Value::Object(Map::new()));
                }
                (None, _) => {}
            }
            continue;
        }
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
        match check_value(f, coll.pattern(&f.name), &value) {
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
