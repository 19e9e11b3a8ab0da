//! `[producer] type = "kafka"`: the table as written, with its defaults and its checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::units::{ByteSize, HumanDuration};
use crate::kafka::{check_brokers, check_delivery_timeout, check_options, check_topic};

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
    /// Delay topic, one partition per delay tier (7). Default: `<topic>.delays`.
    #[serde(default)]
    pub delay_topic: Option<String>,
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
    #[serde(default = "crate::kafka::default_delivery_timeout")]
    pub delivery_timeout: HumanDuration,
    /// Further librdkafka properties (`"security.protocol" = "SASL_SSL"`, ...). The
    /// properties that durability rests on cannot be overridden. Default: none.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_linger() -> HumanDuration {
    HumanDuration::from_millis(5)
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

/// Kafka brokers take batches up to `message.max.bytes` (1048588 by default); the payload
/// travels as the record's value with the envelope in headers, so 1000 KiB leaves room.
pub const MAX_MESSAGE: ByteSize = ByteSize::kib(1000);

impl Config {
    /// The consumer group that delivers `namespace`: `group`, or `wald.<namespace>`.
    pub fn group(&self, namespace: &str) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("wald.{namespace}"))
    }

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
        if let Some(delays) = &self.delay_topic {
            check_topic(checks, &at.key("delay_topic"), delays);
            if *delays == self.topic || Some(delays) == self.dlq_topic.as_ref() {
                checks.error(
                    Code::InvalidValue,
                    &at.key("delay_topic"),
                    "`delay_topic` is the namespace's topic or its DLQ topic",
                    "name a topic of its own, with 7 partitions, or remove `delay_topic` to use `<topic>.delays`",
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
