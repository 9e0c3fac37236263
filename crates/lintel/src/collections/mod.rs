//! Collection management (admin only): create, list, read, alter and drop collections.
//! Every change is applied as a migration: written to a versioned file in the
//! migrations folder and applied to the store in one transaction, so the files in
//! version control always reproduce the live schema.
//!
//! All of it is admin HTTP routes (`routes.rs`, with the edge); what a collection is
//! lives in `schema`, how it changes in `migrations` and `store::ddl`.

pub mod routes;

pub use routes::{CollectionPatch, ensure_users, router};
