//! The running service: each namespace with its storage, as `wald serve` runs it.
//! Consumers, delivery and reload land here.

pub mod counters;
pub mod delivery;
pub mod dlq;
pub mod idempotency;
pub mod limits;
pub mod namespace;
pub mod retry;

pub use namespace::Namespace;
