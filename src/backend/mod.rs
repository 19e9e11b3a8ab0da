//! Log backends: where a namespace's messages are made durable before the API answers.
//!
//! Each backend lives in its own file with its configuration and checks: `embedded`
//! (the segment log on local disk, the default), `kafka`, `sqs` and `redis_streams`.
//! [`BackendConfig`] is the `[producer]` table of a pipeline file, dispatched on `type`.

pub mod embedded;
pub mod kafka;
pub mod redis_streams;
pub mod sqs;

use serde::Serialize;
use toml::Spanned;
use toml::de::DeTable;

use crate::config::diagnostic::KeyPath;
use crate::config::file::Document;
use crate::config::units::ByteSize;
use crate::config::validate::Checks;

/// A message as a backend stores it: the log adds an offset and a timestamp.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Partitions and orders messages: one key's messages keep their order.
    pub key: Option<Vec<u8>>,
    /// Name and value pairs carried with the message (ids, content type, delay).
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
}

/// How durable an acknowledged append is; every write answer says which applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// On stable storage: synced (`fdatasync`), or confirmed by a replicated backend.
    Durable,
    /// Written but not yet synced (`sync = "interval"`): a crash can lose it.
    Written,
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
