//! The HTTP API: handlers that take a request apart, call the runtime and map its
//! answer or error to JSON. [`router`] builds the routes and the layers every request
//! passes through over shared [`state`]; [`server`] accepts connections and keeps each
//! one within its limits.
//!
//! Routes: the write routes ([`ingest`]), namespace status and the probes
//! ([`health`]), transaction status ([`transaction`]), metrics as JSON and for
//! Prometheus ([`metrics`]), the DLQ ([`dlq`]), pipelines, reload and plan
//! ([`admin`]), recent messages ([`messages`]), the OpenAPI document and its page
//! ([`openapi`]), the status page ([`ui`]). Every
//! answer carries `X-Request-Id` ([`request_id`]); every error is JSON with a stable
//! code ([`error`]).

pub mod admin;
pub mod auth;
pub mod dlq;
pub mod error;
pub mod health;
pub mod hygiene;
pub mod ingest;
pub mod messages;
pub mod metrics;
pub mod openapi;
pub mod request_id;
pub mod router;
pub mod server;
pub mod state;
pub mod tls;
pub mod transaction;
pub mod ui;

pub use router::{router, with_layers};
pub use state::AppState;
