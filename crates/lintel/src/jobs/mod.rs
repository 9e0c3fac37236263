//! The durable job queue: jobs live in the store (`_lintel_jobs`), so they survive a
//! crash and are shared by every instance on one PostgreSQL. A job is claimed under a
//! lease (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: the single writer), so no two
//! workers run it at once; a lease that runs out (the worker died) puts the job back
//! with the attempt counted. Failures retry with exponential backoff and full jitter
//! until `maxAttempts`, then the job is `dead` until someone retries it.
//!
//! Lintel runs the built-in kinds itself ([`runner`]: `http` through the outbound
//! guard, `import`, `export`, `housekeeping`); any other kind waits for an external
//! worker that claims it over HTTP. Schedules ([`schedules`]) enqueue jobs on cron
//! slots, each slot exactly once across instances.

pub mod backoff;
pub mod cron;
pub mod error;
pub mod http;
pub mod model;
pub mod routes;
pub mod runner;
pub mod schedules;
pub mod service;
pub mod store;
pub mod transfer;

pub use error::JobError;
pub use model::{Job, JobStatus, NewJob};
pub use routes::router;
pub use service::JobsRuntime;
