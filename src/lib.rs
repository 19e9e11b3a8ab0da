//! wald: a write-ahead-log service. Services POST messages to a namespace; wald makes
//! them durable on the namespace's log backend before it answers, then delivers each
//! message to the namespace's targets with retries, a dead-letter queue and replay.
//!
//! # Layout
//!
//! A pipeline file's tables each have their code under the same word: `[source]` in
//! [`source`], `[producer]` in [`producer`], `[consumer]` in [`consumer`],
//! `[[target]]` in [`targets`]. The modules form five layers; a module imports only from
//! its own layer and the ones below, and no two files import each other, even through
//! others (`tests/layout.rs` checks both on every `cargo test`).
//!
//! 1. **Ground**, what every layer shares:
//!    - [`message`]: the message model: records as appended and stored, durability,
//!      the `wald-*` header names, consumer group names, ids, the clock.
//!    - [`config`]: the configuration toolkit: TOML with places, `${VAR}`, units,
//!      secrets, diagnostics at `file:line:column`, checks, the retry and rate-limit
//!      policies several tables share.
//!    - [`component`]: the health of the background parts and how they retry.
//!    - [`shutdown`]: asking tasks to stop. [`telemetry`]: logging and metric names.
//! 2. **Plugins**, each a folder of its kind, each with its table and checks in a
//!    `config.rs` beside its implementation and its `--connect` probe:
//!    - [`producer`]: the log backends (`embedded`, `kafka`, `sqs`, `redis_streams`)
//!      behind the [`producer::Backend`] trait, the only road to a namespace's log.
//!    - [`targets`]: where messages are delivered (`postgres`, `redis`, `http`,
//!      `kafka`, `file`); `template` fills placeholders.
//!    - [`status`]: transaction status: its model and its stores (embedded, Postgres,
//!      Redis).
//!    - [`kafka`]: what the Kafka backend and target share; [`probe`]: the reachability
//!      checks several plugins share.
//!    - [`processing`]: `[[processor]]` steps and a target's `filter` and `transform`:
//!      jq programs compiled with the file, run on each message with bounded work.
//!    - [`alerts`]: `[alerts]` of `wald.toml`: signed events to an operator's endpoint
//!      (a message dead-lettered, a circuit opened or closed, a file quarantined).
//! 3. **Runtime**, what runs:
//!    - [`source`]: the write use case (a message made a record, idempotency keys,
//!      admission, the append), with its own error.
//!    - [`consumer`]: delivery (the read loop, lanes, attempts, retries, the DLQ and its
//!      replay, delayed messages, outcomes recorded).
//!    - [`pipeline`]: a pipeline file as a whole: put together, validated (pure), loaded
//!      as a set, compared with what runs (`plan`, reload), its `--connect` checks.
//!    - [`service`]: `wald.toml`, the service settings.
//!    - [`runtime`]: the supervisor (the running namespaces, reload), each namespace,
//!      the status tailer, the watcher, counters.
//! 4. **HTTP** ([`http`]): handlers that map requests to the runtime and its errors to
//!    JSON answers with stable codes; the router and its layers; the accept loop.
//! 5. **CLI** ([`cli`]): the `wald` subcommands, and `serve`, the service's whole life.

pub mod alerts;
pub mod cli;
pub mod component;
pub mod config;
pub mod consumer;
pub mod http;
pub mod kafka;
pub mod message;
pub mod pipeline;
pub mod probe;
pub mod processing;
pub mod producer;
pub mod runtime;
pub mod service;
pub mod shutdown;
pub mod source;
pub mod status;
pub mod targets;
pub mod telemetry;
