//! Lintel's integration suite: every test starts a real server on port 0 with its own

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! data folder and speaks HTTP to it. One binary, so linking happens once.

mod auth;
mod batch;
mod cli;
mod collections;
mod common;
mod concurrency;
mod conditional;
mod edge;
mod events;
mod expiry;
mod files;
mod hygiene;
mod idempotency;
mod jobs;
mod kinds;
mod layers;
mod migrations;
mod oidc;
mod openapi;
mod postgres;
mod protect;
mod realtime;
mod records;
mod rejections;
mod search;
mod security;
mod tls;
mod transfer;
mod webhooks;
mod yjs;
