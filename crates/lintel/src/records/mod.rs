//! The records API: create, read, list, replace, patch and delete records of any
//! collection, with conditional requests (ETag, If-Match, If-None-Match,
//! Last-Modified), hypermedia links, filters, sorting, offset and keyset pagination,
//! projection and relation expansion.
//!
//! Every operation is checked against the collection's access rules for the caller
//! (see `access::rules`); records the caller may not view answer 404.
//!
//! `routes.rs` is the HTTP side (layer 5 with the edge); `service/` the operations,
//! `error.rs` their errors, `validate.rs` input checks, `query.rs` list queries.

pub mod error;
pub mod query;
pub mod routes;
pub mod service;
pub mod validate;

pub use routes::router;
