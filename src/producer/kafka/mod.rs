//! The Kafka backend: an idempotent producer with `acks=all` and a consumer group that
//! commits after delivery. Its configuration and checks are in `config.rs`, the backend
//! itself in `topic.rs`, its delayed messages in `delays.rs`, its dead-letter queue and
//! replays in `dlq.rs`, its recent records in `recent.rs`, what they share in `client.rs`; what it shares
//! with the Kafka target is in [`crate::kafka`].

#[cfg(feature = "kafka")]
mod client;
pub mod config;
#[cfg(feature = "kafka")]
mod delays;
#[cfg(feature = "kafka")]
mod dlq;
#[cfg(feature = "kafka")]
mod recent;
#[cfg(feature = "kafka")]
mod topic;

pub use config::{Config, MAX_MESSAGE};
#[cfg(feature = "kafka")]
pub use topic::KafkaTopic;
