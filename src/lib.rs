//! wald: a write-ahead-log service. Services POST messages to a namespace; wald makes
//! them durable on the namespace's log backend before it answers, then delivers each
//! message to the namespace's targets with retries, a dead-letter queue and replay.
//!
//! # Layout
//!
//! - [`cli`]: the `wald` subcommands (`serve`, `validate`, `plan`, `hash-key`, ...).
//! - [`config`]: `wald.toml` and pipeline files: parsing with places, `${VAR}`
//!   expansion, pure validation that reports every error, diagnostics, and the diff
//!   of a reload.
//! - [`backend`]: log backends, one file each (`embedded`, `kafka`, `sqs`,
//!   `redis_streams`) with its configuration and checks.
//! - [`target`]: delivery targets, one file each (`postgres`, `redis`, `http`, `kafka`,
//!   `file`) with its configuration, checks and delivery; `template` fills
//!   placeholders.
//! - [`connect`]: the build stage's reachability checks behind `validate --connect`.
//! - [`runtime`]: the supervisor (the running namespaces, the generation, reload on a
//!   change, SIGHUP or the admin API), each namespace with its storage; delivery
//!   (lanes, retries, the DLQ, delays) and DLQ replay.
//! - [`status`]: transaction status: the store (embedded, Postgres or Redis) and the
//!   tailer that records every logged message in it.
//! - [`http`]: the HTTP API server: ingest, status, DLQ, admin (pipelines, reload,
//!   plan), probes, OpenAPI, errors, auth, request ids.
//! - [`telemetry`]: logging set-up.

pub mod cli;
pub mod component;
pub mod config;
pub mod consumer;
pub mod http;
pub mod kafka;
pub mod message;
pub mod pipeline;
pub mod probe;
pub mod producer;
pub mod runtime;
pub mod service;
pub mod shutdown;
pub mod source;
pub mod status;
pub mod targets;
pub mod telemetry;
