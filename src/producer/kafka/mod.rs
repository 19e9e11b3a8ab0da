//! The Kafka backend: an idempotent producer with `acks=all` and a consumer group that
//! commits after delivery. Its configuration and checks live here; the backend itself
//! in `topic.rs`.

#[cfg(feature = "kafka")]
mod topic;

#[cfg(feature = "kafka")]
pub use topic::KafkaTopic;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::units::{ByteSize, HumanDuration};

/// `[producer]` with `type = "kafka"`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Bootstrap servers, `host:port` separated by commas. Required.
    pub brokers: String,
    /// Topic the namespace's messages are written to. Required.
    pub topic: String,
    /// Topic of the DLQ. Default: `<topic>.dlq`.
    #[serde(default)]
    pub dlq_topic: Option<String>,
    /// Consumer group. Default: `wald.<namespace>`.
    #[serde(default)]
    pub group: Option<String>,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`. Default: none.
    #[serde(default)]
    pub compression: Compression,
    /// How long the producer waits to fill a batch. Default: 5ms. Range: up to 1s.
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
    /// After this long without a delivery report the write answers 504 with
    /// `"durability": "unknown"`. Default: 30s. Range: 1s..=5m.
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: HumanDuration,
    /// Further librdkafka properties (`"security.protocol" = "SASL_SSL"`, ...). The
    /// properties that durability rests on cannot be overridden. Default: none.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_linger() -> HumanDuration {
    HumanDuration::from_millis(5)
}

pub(crate) fn default_delivery_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// librdkafka properties that wald sets itself for durability and must not be changed.
pub const RESERVED_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
];

/// Kafka brokers take batches up to `message.max.bytes` (1048588 by default); the payload
/// travels as the record's value with the envelope in headers, so 1000 KiB leaves room.
pub const MAX_MESSAGE: ByteSize = ByteSize::kib(1000);

impl Config {
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        check_brokers(checks, &at.key("brokers"), &self.brokers);
        check_topic(checks, &at.key("topic"), &self.topic);
        if let Some(dlq) = &self.dlq_topic {
            check_topic(checks, &at.key("dlq_topic"), dlq);
            if *dlq == self.topic {
                checks.error(
                    Code::InvalidValue,
                    &at.key("dlq_topic"),
                    "`dlq_topic` is the namespace's own topic: failed messages would be delivered again",
                    "name another topic, or remove `dlq_topic` to use `<topic>.dlq`",
                );
            }
        }
        if self.linger.get() > std::time::Duration::from_secs(1) {
            checks.error(
                Code::InvalidValue,
                &at.key("linger"),
                "`linger` is longer than 1s",
                "set `linger` to a few milliseconds",
            );
        }
        check_delivery_timeout(checks, &at.key("delivery_timeout"), self.delivery_timeout);
        check_options(checks, &at.key("options"), &self.options);
    }
}

/// `brokers` must be a comma-separated list of `host:port`.
pub fn check_brokers(checks: &mut Checks, at: &KeyPath, brokers: &str) {
    let valid = !brokers.trim().is_empty()
        && brokers.split(',').all(|broker| {
            let broker = broker.trim();
            let broker = broker.split_once("://").map(|(_, rest)| rest).unwrap_or(broker);
            matches!(broker.rsplit_once(':'), Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok())
        });
    if !valid {
        checks.error(
            Code::InvalidUrl,
            at,
            "`brokers` must be `host:port` entries separated by commas",
            "write for example \"kafka-1:9092,kafka-2:9092\"",
        );
    }
}

/// Kafka topic names: 1 to 249 of `a-zA-Z0-9._-`, not `.` or `..`.
pub fn check_topic(checks: &mut Checks, at: &KeyPath, topic: &str) {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        checks.error(
            Code::BackendLimit,
            at,
            format!("`{}` is not a valid Kafka topic name", topic.escape_debug()),
            "use 1 to 249 characters of a-z, A-Z, 0-9, `.`, `_` and `-`",
        );
    }
}

/// A producer's `delivery_timeout` must be from 1s to 5m.
pub fn check_delivery_timeout(checks: &mut Checks, at: &KeyPath, timeout: HumanDuration) {
    if !(1..=300).contains(&timeout.get().as_secs()) {
        checks.error(
            Code::InvalidValue,
            at,
            "`delivery_timeout` must be from 1s to 5m",
            "set `delivery_timeout` to for example \"30s\"",
        );
    }
}

pub fn check_options(
    checks: &mut Checks,
    at: &KeyPath,
    options: &std::collections::BTreeMap<String, String>,
) {
    for key in options.keys() {
        if RESERVED_OPTIONS.contains(&key.as_str()) {
            checks.error(
                Code::InvalidValue,
                &at.key(key.clone()),
                format!("`{key}` is set by wald and cannot be overridden"),
                "remove it: wald sets it for durability, or from `brokers` and `group`",
            );
        }
    }
}
