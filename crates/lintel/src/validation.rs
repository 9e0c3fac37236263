//! Field errors: which field of the input is wrong, with a stable code and a human
//! message. Plain data, below every layer that checks input (the schema, the store,
//! the capabilities); the HTTP edge renders them into problem+json `errors`.

use std::collections::BTreeMap;

use serde::Serialize;

/// One field's error: a stable code and a human message.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldError {
    pub code: String,
    pub message: String,
    /// Where in the field's text the problem is (filters), as a byte offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
}

/// Field name -> error; ordered so bodies are deterministic.
pub type FieldErrors = BTreeMap<String, FieldError>;

/// Adds a field error unless the field already has one (the first reason wins).
pub fn push_field_error(
    errors: &mut FieldErrors,
    field: impl Into<String>,
    code: &str,
    message: impl Into<String>,
) {
    errors.entry(field.into()).or_insert_with(|| FieldError {
        code: code.to_owned(),
        message: message.into(),
        position: None,
    });
}
