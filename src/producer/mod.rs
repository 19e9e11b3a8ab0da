//! `[producer]`: the log backends, where a namespace's messages are made durable before
//! the API answers.
//!
//! Each backend is a folder with its table and checks in `config.rs` beside its
//! implementation: `embedded` (the segment log on local disk, the default), `kafka`,
//! `sqs` and `redis_streams`. [`config`] is the `[producer]` table, dispatched on
//! `type`; [`open`] opens the backend it names.
//!
//! Everything reaches a namespace's log through [`Backend`] ([`backend`]): append, read
//! as a consumer group and commit what was delivered, park messages in a dead-letter
//! log, hold delayed messages until they are due, and tell where the log stands, as far
//! as the backend can. `tests/backend_conformance.rs` runs the same scenarios on each.

pub mod backend;
pub mod config;
pub mod embedded;
pub mod envelope;
pub mod kafka;
pub mod redis_streams;
pub mod sqs;

use std::path::Path;
use std::sync::Arc;

use crate::probe::Unreachable;

pub use backend::{
    Backend, BackendError, DeadLetter, Durable, GroupPosition, LogPosition, LogStats, Positions,
    QueueCounts, REPLAY_CLAIM, Subscription,
};
pub use config::{BackendConfig, KINDS};

/// Opens the backend `config` names for `namespace`: the embedded log under
/// `data_dir`, or a client of the shared backend.
pub fn open(
    namespace: &str,
    config: &BackendConfig,
    data_dir: &Path,
) -> Result<Arc<dyn Backend>, BackendError> {
    match config {
        BackendConfig::Embedded(embedded) => {
            let store = embedded::NamespaceStore::open(data_dir, namespace, embedded)?;
            Ok(Arc::new(embedded::Embedded(Arc::new(store))))
        }
        BackendConfig::RedisStreams(redis) => Ok(Arc::new(redis_streams::RedisStreams::open(
            namespace, redis,
        )?)),
        #[cfg(feature = "kafka")]
        BackendConfig::Kafka(kafka) => Ok(Arc::new(kafka::KafkaTopic::open(namespace, kafka)?)),
        #[cfg(feature = "sqs")]
        BackendConfig::Sqs(sqs) => Ok(Arc::new(sqs::SqsQueue::open(namespace, sqs)?)),
        #[allow(unreachable_patterns)]
        other => Err(BackendError::Invalid(format!(
            "the {} backend is not available in this version",
            other.kind()
        ))),
    }
}

/// Reaches the backend `config` names for `namespace` the way [`open`] would, and
/// writes nothing: `wald validate --connect`.
pub async fn probe(
    config: &BackendConfig,
    namespace: &str,
    data_dir: &Path,
) -> Result<(), Unreachable> {
    match config {
        BackendConfig::Embedded(_) => crate::probe::writable_dir(&data_dir.join(namespace)),
        BackendConfig::Kafka(c) => crate::kafka::probe(&c.brokers, &c.options, &c.topic).await,
        BackendConfig::Sqs(c) => sqs::probe(c).await,
        BackendConfig::RedisStreams(c) => crate::probe::redis(c.url.expose()).await,
    }
}
