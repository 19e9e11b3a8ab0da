//! `[producer]`: which backend a namespace logs to, dispatched on `type` to that
//! backend's own table, with what every backend answers about itself (its consumer
//! group, its largest message).

use serde::Serialize;
use toml::Spanned;
use toml::de::DeTable;

// Each backend's table, not the backend: the tables depend on nothing of the backends.
use super::embedded::config as embedded;
use super::kafka::config as kafka;
use super::redis_streams::config as redis_streams;
use super::sqs::config as sqs;
use crate::config::checks::Checks;
use crate::config::diagnostic::KeyPath;
use crate::config::file::Document;
use crate::config::units::ByteSize;
use crate::message::DELIVERY_GROUP;

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

    /// Whether this is the embedded log: local to this instance, its status indexed by
    /// reading the log again (shared backends record status as a write is answered).
    pub fn is_embedded(&self) -> bool {
        matches!(self, Self::Embedded(_))
    }

    /// The consumer group delivery reads the log of `namespace` as.
    pub fn consumer_group(&self, namespace: &str) -> String {
        match self {
            Self::RedisStreams(c) => c.group.clone(),
            Self::Kafka(c) => c.group(namespace),
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
