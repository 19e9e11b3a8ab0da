//! Targets: where a namespace's messages are delivered. Each target type lives in its
//! own file with its configuration, its checks and its delivery: `postgres`, `redis`,
//! `http`, `kafka` and `file`. [`TargetConfig`] is one `[[target]]` table, dispatched
//! on `type`; [`Target`] is a built target that delivers [`Message`]s.

pub mod delivery;
pub mod file;
pub mod http;
pub mod kafka;
pub mod postgres;
pub mod redis;
pub mod template;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::DeTable;

use crate::config::checks::Checks;
use crate::config::diagnostic::KeyPath;
use crate::config::file::Document;
use crate::config::policy::{BreakerPolicy, RateLimit, RetryOverride};
use crate::probe::Unreachable;
use crate::processing::config::{Expression, ProcessorConfig};
pub use delivery::{BatchError, DeliveryError, Message, ValueShape};

/// One `[[target]]`.
#[derive(Clone, Debug, Serialize)]
pub struct TargetConfig {
    /// Unique within the namespace; status and the DLQ refer to it. Required.
    pub name: String,
    /// Replaces keys of the namespace's `[consumer.retry]` for this target.
    /// Default: none.
    pub retry: Option<RetryOverride>,
    /// When this target stops being tried for a while (`circuit_breaker = {...}`).
    /// Default: on, 5 failures in a row, 1s cool-down doubling up to 1m.
    pub circuit_breaker: BreakerPolicy,
    /// The most messages a second delivered to this target (`rate_limit = {
    /// per_second, burst }`). Default: none.
    pub rate_limit: Option<RateLimit>,
    /// The most messages in delivery to this target at once, over all lanes.
    /// Default: none (each lane's run). Range: 1..=100000.
    pub max_in_flight: Option<u32>,
    /// A jq expression: the message goes to this target when it gives true.
    /// Default: none (every message).
    pub filter: Option<Expression>,
    /// A jq program: what this target receives. Default: none (the message as is).
    pub transform: Option<Expression>,
    /// `[[target.processor]]`: this target's own steps, after the namespace's and
    /// before `filter` and `transform`. Default: none.
    pub processor: Vec<ProcessorConfig>,
    #[serde(flatten)]
    pub kind: TargetKind,
}

/// Keys of a `[[target]]` shared by every target type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetCommon {
    pub name: String,
    #[serde(default)]
    pub retry: Option<RetryOverride>,
    #[serde(default)]
    pub circuit_breaker: BreakerPolicy,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    #[serde(default)]
    pub filter: Option<Expression>,
    #[serde(default)]
    pub transform: Option<Expression>,
    #[serde(default)]
    pub processor: Vec<ProcessorConfig>,
}

/// A target's own keys, by `type`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TargetKind {
    Postgres(postgres::Config),
    Redis(redis::Config),
    Http(http::Config),
    Kafka(kafka::Config),
    File(file::Config),
}

/// The values of `type` in `[[target]]`.
pub const KINDS: &[&str] = &["postgres", "redis", "http", "kafka", "file"];

impl TargetConfig {
    pub(crate) fn parse<'i>(
        doc: &mut Document<'i>,
        mut table: Spanned<DeTable<'i>>,
    ) -> Option<Self> {
        let kind = doc.take_type(&mut table, "target", KINDS);
        let common: Option<TargetCommon> = doc.section(Document::split(
            &mut table,
            &[
                "name",
                "retry",
                "circuit_breaker",
                "rate_limit",
                "max_in_flight",
                "filter",
                "transform",
                "processor",
            ],
        ));
        let kind = match kind?.as_str() {
            "postgres" => TargetKind::Postgres(doc.section(table)?),
            "redis" => TargetKind::Redis(doc.section(table)?),
            "http" => TargetKind::Http(doc.section(table)?),
            "kafka" => TargetKind::Kafka(doc.section(table)?),
            _ => TargetKind::File(doc.section(table)?),
        };
        let common = common?;
        Some(Self {
            name: common.name,
            retry: common.retry,
            circuit_breaker: common.circuit_breaker,
            rate_limit: common.rate_limit,
            max_in_flight: common.max_in_flight,
            filter: common.filter,
            transform: common.transform,
            processor: common.processor,
            kind,
        })
    }
}

impl TargetKind {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
            Self::Http(_) => "http",
            Self::Kafka(_) => "kafka",
            Self::File(_) => "file",
        }
    }

    /// Reaches the target the way delivery would, and writes nothing:
    /// `wald validate --connect`.
    pub async fn probe(&self) -> Result<(), Unreachable> {
        match self {
            Self::Postgres(c) => postgres::probe(c).await,
            Self::Redis(c) => crate::probe::redis(c.url.expose()).await,
            Self::Http(c) => crate::probe::tcp(&c.url).await,
            Self::Kafka(c) => crate::kafka::probe(&c.brokers, &c.options, &c.topic).await,
            Self::File(c) => match c.path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => {
                    crate::probe::writable_dir(parent)
                }
                _ => crate::probe::writable_dir(std::path::Path::new(".")),
            },
        }
    }

    /// What delivering `message` would send (the line, the request, the statement
    /// and its parameters, the command, the record), worked out from the
    /// configuration alone: nothing is reached. `wald validate --sample`.
    pub fn preview(&self, message: &Message) -> serde_json::Value {
        match self {
            Self::Postgres(c) => postgres::preview(c, message),
            Self::Redis(c) => redis::preview(c, message),
            Self::Http(c) => http::preview(c, message),
            Self::Kafka(c) => kafka::preview(c, message),
            Self::File(c) => file::preview(c, message),
        }
    }

    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        match self {
            Self::Postgres(c) => c.validate(checks, at),
            Self::Redis(c) => c.validate(checks, at),
            Self::Http(c) => c.validate(checks, at),
            Self::Kafka(c) => c.validate(checks, at),
            Self::File(c) => c.validate(checks, at),
        }
    }
}

/// A target ready to deliver: its connections or files are open.
pub enum Target {
    File(file::FileTarget),
    Http(http::HttpTarget),
    Postgres(postgres::PostgresTarget),
    Redis(redis::RedisTarget),
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaTarget),
}

impl Target {
    /// Its `type`, as a pipeline file names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Http(_) => "http",
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => "kafka",
        }
    }

    /// The build stage: opens what the target needs. A target type whose delivery is
    /// not available yet is an error here, so its namespace's messages wait in the log.
    pub async fn build(config: &TargetConfig) -> Result<Self, DeliveryError> {
        match &config.kind {
            TargetKind::File(c) => Ok(Self::File(file::FileTarget::open(c).await?)),
            TargetKind::Http(c) => Ok(Self::Http(http::HttpTarget::new(c)?)),
            TargetKind::Postgres(c) => Ok(Self::Postgres(postgres::PostgresTarget::new(c)?)),
            TargetKind::Redis(c) => Ok(Self::Redis(redis::RedisTarget::new(c)?)),
            #[cfg(feature = "kafka")]
            TargetKind::Kafka(c) => Ok(Self::Kafka(kafka::KafkaTarget::new(c)?)),
            #[allow(unreachable_patterns)]
            other => Err(DeliveryError::permanent(format!(
                "delivery to {} targets is not available in this version",
                other.kind()
            ))),
        }
    }

    /// Delivers `messages` in order, stopping at the first failure. Postgres runs the
    /// batch in one transaction, Redis sends it as one pipeline, Kafka produces it at
    /// once and waits for every report, a file takes it in one write; HTTP delivers
    /// one message after the other.
    pub async fn deliver_batch(&self, messages: &[Message]) -> Result<(), BatchError> {
        match self {
            Self::Postgres(t) => t.deliver_batch(messages).await,
            Self::Redis(t) => t.deliver_batch(messages).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(t) => t.deliver_batch(messages).await,
            Self::File(t) => t.deliver_batch(messages).await,
            Self::Http(t) => one_by_one(messages, |m| t.deliver(m)).await,
        }
    }
}

/// Delivers messages one after the other with `deliver`, stopping at the first failure.
async fn one_by_one<'m, F, Fut>(messages: &'m [Message], deliver: F) -> Result<(), BatchError>
where
    F: Fn(&'m Message) -> Fut,
    Fut: std::future::Future<Output = Result<(), DeliveryError>>,
{
    for (delivered, message) in messages.iter().enumerate() {
        deliver(message)
            .await
            .map_err(|error| BatchError { delivered, error })?;
    }
    Ok(())
}
