//! What can go wrong with a job or schedule, said without HTTP (the edge maps each
//! variant in `crate::error`; docs/errors.md lists the codes).

use crate::store::StoreError;
use crate::validation::{FieldErrors, push_field_error};

/// A failed job or schedule operation.
#[derive(Debug)]
pub enum JobError {
    /// Input that fails its checks (400 `validation_failed`).
    Invalid(FieldErrors),
    /// No job (or schedule) with that id that the caller may see (404).
    NotFound,
    /// The lease named is not the job's current one: it expired, the job was
    /// cancelled or another worker holds it now (409 `lease_lost`).
    LeaseLost,
    /// The job's status does not allow the operation (409 `invalid_status`).
    Status {
        status: &'static str,
        wanted: &'static str,
    },
    /// A job with the same `uniqueKey` is queued or running (409 `duplicate_job`).
    Duplicate,
    /// A schedule with that name exists (409 `schedule_exists`).
    ScheduleExists,
    /// The store failed.
    Store(StoreError),
}

impl JobError {
    pub fn field(field: &str, code: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        push_field_error(&mut errors, field, code, message);
        JobError::Invalid(errors)
    }
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        JobError::Store(e)
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Invalid(e) => write!(f, "invalid: {e:?}"),
            JobError::NotFound => write!(f, "not found"),
            JobError::LeaseLost => write!(f, "the lease is no longer the job's"),
            JobError::Status { status, wanted } => {
                write!(f, "the job is {status}; this needs {wanted}")
            }
            JobError::Duplicate => write!(f, "a job with this unique key is active"),
            JobError::ScheduleExists => write!(f, "a schedule with this name exists"),
            JobError::Store(e) => write!(f, "{e}"),
        }
    }
}
