//! Lintel: a backend server in one binary. This library holds everything; the `lintel`
//! binary only parses the command line and calls [`cli::run`].
//!
//! Capabilities live in their own modules, each with its router and service code:
//! [`collections`], [`records`], [`batch`], [`auth`] (accounts, sessions, tokens, API
//! keys, rules, second factor, mail flows, single sign-on, audit). Shared parts:
//! [`http`] (the edge: listener, middleware, extractors, OpenAPI, system routes),
//! [`ratelimit`], [`cache`] (the read cache), [`store`] (the storage trait, its SQLite
//! and PostgreSQL drivers, and the purge of expired rows), [`migrations`], [`tasks`]
//! (background work drained at shutdown), [`state`] (the application state), [`app`]
//! (start-up, shutdown),
//! [`config`], [`error`], [`clock`], [`ids`], [`telemetry`]. See docs/ARCHITECTURE.md.

pub mod access;
pub mod app;
pub mod auth;
pub mod batch;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod collections;
pub mod config;
pub mod error;
pub mod events;
pub mod files;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod migrations;
pub mod outbound;
pub mod ratelimit;
pub mod realtime;
pub mod records;
pub mod runtime;
pub mod schema;
pub mod search;
pub mod state;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod validation;
pub mod webhooks;
pub mod yjs;

pub use app::{Running, start, start_on, start_with};
pub use config::Config;
pub use state::AppState;
