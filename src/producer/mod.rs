//! Log backends: where a namespace's messages are made durable before the API answers.
//!
//! Each backend lives in its own file with its configuration and checks: `embedded`
//! (the segment log on local disk, the default), `kafka`, `sqs` and `redis_streams`.
//! [`BackendConfig`] is the `[producer]` table of a pipeline file, dispatched on `type`.
//!
//! The runtime reaches every backend through [`Backend`]: append, read as a consumer
//! group and commit what was delivered, park messages in a dead-letter log, and hold
//! delayed messages until they are due. `tests/backend_conformance.rs` runs the same
//! scenarios on each.

pub mod embedded;
pub mod envelope;
pub mod kafka;
pub mod redis_streams;
pub mod sqs;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use toml::Spanned;
use toml::de::DeTable;

use crate::config::checks::Checks;
use crate::config::diagnostic::KeyPath;
use crate::config::file::Document;
use crate::config::units::ByteSize;

use crate::message::{DELIVERY_GROUP, Durability, Record, StoredRecord};
use embedded::LogError;

/// Why a backend refused a request. Nothing of a refused append was acknowledged,
/// except with [`BackendError::Unknown`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The embedded log failed; see [`LogError`].
    #[error(transparent)]
    Log(#[from] LogError),
    /// The backend cannot be reached or refused the request for now; it passes by
    /// itself (a broker restarting, a network outage).
    #[error("{0}")]
    Unavailable(String),
    /// The request was sent but whether it took effect is not known (a `WAIT` for
    /// replicas that timed out).
    #[error("{0}")]
    Unknown(String),
}

impl BackendError {
    /// Whether trying again later can succeed without anyone stepping in.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Log(_))
    }
}

/// A namespace's log, whichever backend holds it.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Appends `records`, durable together, and answers once the backend confirmed
    /// (design: durability contract).
    async fn append(&self, records: Vec<Record>) -> Result<Durability, BackendError>;

    /// Reads the log as consumer group `group`, from where the group's commits left
    /// off. What a member of the group read and did not commit before it died is read
    /// again, by this member or another.
    async fn subscribe(&self, group: &str) -> Result<Box<dyn Subscription>, BackendError>;

    /// Parks `records` in the namespace's dead-letter log.
    async fn dead_letter(&self, records: Vec<Record>) -> Result<(), BackendError>;

    /// Up to `max` entries of the dead-letter log, oldest first.
    async fn dead_letters(&self, max: usize) -> Result<Vec<StoredRecord>, BackendError>;

    /// Holds read messages until they are due: (record, due in ms since the epoch).
    /// Once this returns, a commit may pass them.
    async fn schedule(&self, delayed: Vec<(StoredRecord, u64)>) -> Result<(), BackendError>;

    /// Up to `max` held messages that are due at `now_ms`, held until
    /// [`Backend::complete`] forgets them. A backend shared by several instances leases
    /// what it hands out, so that only one delivers it unless that one dies.
    async fn due(&self, now_ms: u64, max: usize) -> Result<Vec<StoredRecord>, BackendError>;

    /// Forgets held messages that were delivered.
    async fn complete(&self, delivered: Vec<StoredRecord>) -> Result<(), BackendError>;

    /// When the next held message is due, if one is held.
    async fn next_due(&self) -> Result<Option<u64>, BackendError>;

    /// Why the backend cannot take writes now, if it cannot (for status and
    /// readiness).
    fn unavailable(&self) -> Option<String>;
}

/// One member of a consumer group, reading a log.
#[async_trait]
pub trait Subscription: Send {
    /// Up to `max` records, waiting a while for at least one; may answer none. Each
    /// record's `offset` numbers it within this subscription, in the order read.
    /// Cancelling the call loses nothing.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<StoredRecord>, BackendError>;

    /// The offset the next record read will have.
    fn position(&self) -> u64;

    /// Marks every record below `next_offset` done for the group.
    async fn commit(&mut self, next_offset: u64) -> Result<(), BackendError>;
}

/// The last error of a shared backend's requests, cleared by the next success: what
/// its [`Backend::unavailable`] reports. Clones share it (the backend and its reader
/// tasks).
#[derive(Clone)]
pub(crate) struct LastError {
    /// Which backend, to begin the message with ("Redis", "Kafka", "SQS").
    backend: &'static str,
    error: Arc<Mutex<Option<String>>>,
}

impl LastError {
    pub(crate) fn new(backend: &'static str) -> Self {
        Self {
            backend,
            error: Arc::default(),
        }
    }

    /// Remembers how the last request went: failed with `error`, or (`None`) not.
    pub(crate) fn note<E: std::fmt::Display + ?Sized>(&self, error: Option<&E>) {
        if let Ok(mut last) = self.error.lock() {
            *last = error.map(|e| format!("{}: {e}", self.backend));
        }
    }

    /// Remembers that the last request succeeded.
    pub(crate) fn clear(&self) {
        self.note::<str>(None);
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.error.lock().ok()?.clone()
    }
}

/// The error of a lock whose holder panicked.
pub(crate) fn poisoned() -> BackendError {
    BackendError::Unavailable("a lock was poisoned".into())
}

/// What a subscription's reader task hands over, given out up to `max` at a time: the
/// part the shared backends' subscriptions have in common. The task numbers the
/// records in the order read.
pub(crate) struct Handed {
    incoming: tokio::sync::mpsc::Receiver<Vec<StoredRecord>>,
    buffered: Vec<StoredRecord>,
    position: u64,
}

impl Handed {
    pub(crate) fn new(incoming: tokio::sync::mpsc::Receiver<Vec<StoredRecord>>) -> Self {
        Self {
            incoming,
            buffered: Vec::new(),
            position: 0,
        }
    }

    /// Up to `max` records, waiting for the reader task's next batch if none is left.
    pub(crate) async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Vec<StoredRecord>, BackendError> {
        if self.buffered.is_empty() {
            match self.incoming.recv().await {
                Some(batch) => self.buffered = batch,
                None => return Err(BackendError::Unavailable("the reader task stopped".into())),
            }
        }
        let rest = self.buffered.split_off(max.min(self.buffered.len()));
        let batch = std::mem::replace(&mut self.buffered, rest);
        if let Some(last) = batch.last() {
            self.position = last.offset + 1;
        }
        Ok(batch)
    }

    pub(crate) fn position(&self) -> u64 {
        self.position
    }
}

/// `[producer]`: the backend a namespace logs to, by `type`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BackendConfig {
    Embedded(embedded::Config),
    Kafka(kafka::Config),
    Sqs(sqs::Config),
    RedisStreams(redis_streams::Config),
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self::Embedded(embedded::Config::default())
    }
}

/// The values of `type` in `[producer]`.
pub const KINDS: &[&str] = &["embedded", "kafka", "sqs", "redis_streams"];

impl BackendConfig {
    pub(crate) fn parse<'i>(
        doc: &mut Document<'i>,
        mut table: Spanned<DeTable<'i>>,
    ) -> Option<Self> {
        let kind = doc.take_type(&mut table, "producer", KINDS)?;
        Some(match kind.as_str() {
            "embedded" => Self::Embedded(doc.section(table)?),
            "kafka" => Self::Kafka(doc.section(table)?),
            "sqs" => Self::Sqs(doc.section(table)?),
            _ => Self::RedisStreams(doc.section(table)?),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "embedded",
            Self::Kafka(_) => "kafka",
            Self::Sqs(_) => "sqs",
            Self::RedisStreams(_) => "redis_streams",
        }
    }

    /// The consumer group delivery reads the log of `namespace` as.
    pub fn consumer_group(&self, namespace: &str) -> String {
        match self {
            Self::RedisStreams(c) => c.group.clone(),
            Self::Kafka(c) => c
                .group
                .clone()
                .unwrap_or_else(|| format!("wald.{namespace}")),
            _ => DELIVERY_GROUP.to_string(),
        }
    }

    /// The largest payload this backend carries in one message.
    pub fn max_message_bytes(&self) -> ByteSize {
        match self {
            Self::Embedded(c) => c.segment_size,
            Self::Kafka(_) => kafka::MAX_MESSAGE,
            Self::Sqs(_) => sqs::MAX_MESSAGE,
            Self::RedisStreams(_) => redis_streams::MAX_MESSAGE,
        }
    }

    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        match self {
            Self::Embedded(c) => c.validate(checks, at),
            Self::Kafka(c) => c.validate(checks, at),
            Self::Sqs(c) => c.validate(checks, at),
            Self::RedisStreams(c) => c.validate(checks, at),
        }
    }
}
