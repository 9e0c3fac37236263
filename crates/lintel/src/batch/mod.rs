//! `POST /v1/batch`: up to 100 record operations applied in one transaction, all or
//! nothing. Each operation is checked with the same rules as the records API; when one
//! fails, nothing is applied and the problem names the failing operation.
//!
//! Updates and deletes read their record before the transaction (as single requests
//! do); the write then only applies if that record is unchanged, so a concurrent change
//! fails the batch instead of being overwritten.
//!
//! The endpoint is HTTP through and through (`routes.rs`, with the edge); the record
//! operations it applies are `records::service`'s.

pub mod routes;

pub use routes::{BatchOperation, BatchRequest, MAX_OPERATIONS, router};
