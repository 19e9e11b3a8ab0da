//! Targets: where a namespace's messages are delivered. Each target type lives in its
//! own file with its configuration, its checks and its delivery: `postgres`, `redis`,
//! `http`, `kafka` and `file`. [`TargetConfig`] is one `[[target]]` table, dispatched
//! on `type`; [`Target`] is a built target that delivers [`Message`]s.

pub mod file;
pub mod http;
pub mod kafka;
pub mod postgres;
pub mod redis;
pub mod template;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::DeTable;

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, Finding, KeyPath, Location};
use crate::config::file::Document;
use crate::config::policy::RetryOverride;

/// One `[[target]]`.
#[derive(Clone, Debug, Serialize)]
pub struct TargetConfig {
    /// Unique within the namespace; status and the DLQ refer to it. Required.
    pub name: String,
    /// Replaces keys of the namespace's `[consumer.retry]` for this target.
    /// Default: none.
    pub retry: Option<RetryOverride>,
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
        let common: Option<TargetCommon> =
            doc.section(Document::split(&mut table, &["name", "retry"]));
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

/// Reports template errors at `path`, each pointing at its placeholder.
pub(crate) fn report_template_errors(
    checks: &mut Checks,
    path: &KeyPath,
    errors: Vec<template::TemplateError>,
) {
    for e in errors {
        checks.push(
            Finding::error(
                Code::UnknownPlaceholder,
                Location::Path {
                    path: path.clone(),
                    needle: Some(e.needle),
                },
                e.message,
            )
            .with_hint(e.hint),
        );
    }
}

/// A message as targets receive it, read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub namespace: String,
    /// Its place in the namespace's log.
    pub offset: u64,
    pub message_id: String,
    pub transaction_id: String,
    pub key: Option<String>,
    /// When it was made durable, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The client's headers (wald's own `wald-*` headers left out).
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
    /// Whether `payload` is JSON (else binary).
    pub payload_is_json: bool,
}

impl Message {
    /// The payload as JSON: itself when it is JSON, else a base64 string.
    pub fn payload_json(&self) -> serde_json::Value {
        if self.payload_is_json
            && let Ok(value) = serde_json::from_slice(&self.payload)
        {
            return value;
        }
        serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&self.payload))
    }

    /// The whole message as one line of JSON: ids, namespace, key, timestamp, headers
    /// and payload. A JSON payload is copied as it came unless it spans lines.
    pub fn envelope(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Payload<'m> {
            Raw(&'m serde_json::value::RawValue),
            Value(serde_json::Value),
        }
        #[derive(Serialize)]
        struct Envelope<'m> {
            headers: &'m BTreeMap<String, String>,
            key: &'m Option<String>,
            message_id: &'m str,
            namespace: &'m str,
            offset: u64,
            payload: Payload<'m>,
            timestamp_ms: u64,
            transaction_id: &'m str,
        }
        let one_line_json =
            self.payload_is_json && !self.payload.iter().any(|b| matches!(b, b'\n' | b'\r'));
        let raw = one_line_json
            .then(|| serde_json::from_slice(&self.payload).ok())
            .flatten();
        let payload = match raw {
            Some(raw) => Payload::Raw(raw),
            None => Payload::Value(self.payload_json()),
        };
        let envelope = Envelope {
            headers: &self.headers,
            key: &self.key,
            message_id: &self.message_id,
            namespace: &self.namespace,
            offset: self.offset,
            payload,
            timestamp_ms: self.timestamp_ms,
            transaction_id: &self.transaction_id,
        };
        serde_json::to_vec(&envelope).expect("an envelope is always JSON")
    }
}

/// Why a delivery failed, and whether trying again may help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub message: String,
    /// False for errors that no retry can fix (a 4xx, a constraint violation): the
    /// message goes to the DLQ at once.
    pub retriable: bool,
    /// How long the target asked to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl DeliveryError {
    pub fn retriable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retriable: true,
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retriable: false,
            retry_after: None,
        }
    }
}

/// A batch that a target delivered only in part: `messages[..delivered]` went
/// through, `messages[delivered]` failed with `error`, the rest was not tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchError {
    pub delivered: usize,
    pub error: DeliveryError,
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
