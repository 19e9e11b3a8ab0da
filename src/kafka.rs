//! What the Kafka backend and the Kafka target share: the checks of their common keys
//! and the `--connect` probe of a cluster.

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::units::HumanDuration;

/// `delivery_timeout` when the file does not say.
pub(crate) fn default_delivery_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
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

/// How long fetching a cluster's metadata may take.
#[cfg(feature = "kafka")]
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Fetches the cluster's metadata (all topics, so that no topic is auto-created) and
/// looks for `topic`.
#[cfg(feature = "kafka")]
pub async fn probe(
    brokers: &str,
    options: &std::collections::BTreeMap<String, String>,
    topic: &str,
) -> Result<(), crate::probe::Unreachable> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let mut config = ClientConfig::new();
    for (key, value) in options {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| format!("invalid client settings: {e}"))?;
        let metadata = consumer
            .fetch_metadata(None, PROBE_TIMEOUT)
            .map_err(|e| format!("cannot fetch metadata: {e}"))?;
        if metadata.topics().iter().any(|t| t.name() == topic) {
            Ok(())
        } else {
            Err(format!("topic `{topic}` does not exist").into())
        }
    })
    .await
    .map_err(|e| crate::probe::Unreachable(format!("the check failed: {e}")))?
}

#[cfg(not(feature = "kafka"))]
pub async fn probe(
    _brokers: &str,
    _options: &std::collections::BTreeMap<String, String>,
    _topic: &str,
) -> Result<(), crate::probe::Unreachable> {
    Err("this build of wald has no Kafka support (cargo feature `kafka`)".into())
}
