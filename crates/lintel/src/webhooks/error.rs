//! What can go wrong managing webhooks, said without HTTP (the edge maps each variant
//! in `crate::error`; docs/errors.md lists the codes).

use crate::store::StoreError;
use crate::validation::{FieldErrors, push_field_error};

/// A failed webhook operation.
#[derive(Debug)]
pub enum WebhookError {
    /// Input that fails its checks (400 `validation_failed`).
    Invalid(FieldErrors),
    /// No webhook (or delivery) with that id (404).
    NotFound,
    /// An attempt of the delivery is running now (409 `delivery_in_flight`).
    InFlight,
    /// The delivery waits its turn behind an ordered webhook's head (409
    /// `delivery_waiting`).
    Waiting,
    /// The store failed.
    Store(StoreError),
}

impl WebhookError {
    pub fn field(field: &str, code: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        push_field_error(&mut errors, field, code, message);
        WebhookError::Invalid(errors)
    }
}

impl From<StoreError> for WebhookError {
    fn from(e: StoreError) -> Self {
        WebhookError::Store(e)
    }
}

impl From<crate::jobs::JobError> for WebhookError {
    fn from(e: crate::jobs::JobError) -> Self {
        match e {
            crate::jobs::JobError::Store(s) => WebhookError::Store(s),
            crate::jobs::JobError::Invalid(f) => WebhookError::Invalid(f),
            _ => WebhookError::Store(StoreError::Internal(e.to_string())),
        }
    }
}

impl std::fmt::Display for WebhookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebhookError::Invalid(e) => write!(f, "invalid: {e:?}"),
            WebhookError::NotFound => write!(f, "not found"),
            WebhookError::InFlight => write!(f, "an attempt is in flight"),
            WebhookError::Waiting => write!(f, "the delivery waits its turn"),
            WebhookError::Store(e) => write!(f, "{e}"),
        }
    }
}
