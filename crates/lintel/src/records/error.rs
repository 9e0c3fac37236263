//! What can go wrong in a record operation, said without HTTP: the edge maps each
//! variant to its problem (`crate::error`), and docs/errors.md lists the codes.

use crate::access::Refusal;
use crate::auth::password::PasswordError;
use crate::records::query::QueryError;
use crate::store::StoreError;
use crate::validation::{FieldErrors, push_field_error};

/// A record operation's failure.
#[derive(Debug)]
pub enum RecordError {
    /// No collection of that name (404).
    UnknownCollection(String),
    /// The store's answer about the record: not there (404), changed since `If-Match`
    /// (412), a constraint (400), still referenced (409), busy (503), a bug (500).
    Store(StoreError),
    /// Input that fails validation (400 `validation_failed`).
    Invalid(FieldErrors),
    /// A refused list query (400).
    Query(QueryError),
    /// Access refused (401/403); rule refusals are in the audit log already.
    Refused(Refusal),
    /// Too many password hashes from this address (429 `rate_limited`).
    HashBudget { retry_after: u64 },
    /// A password operation failed (locked out: 429; hashing: 500).
    Password(PasswordError),
    /// Concurrent updates kept winning the race (409 `write_contention`).
    Contention,
    /// An operation produced no result it must have (500, logged).
    Internal(String),
}

impl RecordError {
    /// One field's error.
    pub fn field(field: &str, code: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        push_field_error(&mut errors, field, code, message);
        RecordError::Invalid(errors)
    }
}

impl From<StoreError> for RecordError {
    fn from(e: StoreError) -> Self {
        RecordError::Store(e)
    }
}

impl From<Refusal> for RecordError {
    fn from(r: Refusal) -> Self {
        RecordError::Refused(r)
    }
}

impl From<QueryError> for RecordError {
    fn from(e: QueryError) -> Self {
        RecordError::Query(e)
    }
}

impl From<PasswordError> for RecordError {
    fn from(e: PasswordError) -> Self {
        RecordError::Password(e)
    }
}
