//! `[producer] type = "redis_streams"`: the table as written, with its defaults and its
//! checks.

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::secret::Secret;
use crate::config::units::{ByteSize, HumanDuration};

/// `[producer]` with `type = "redis_streams"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `redis://` or `rediss://` URL, password included if any. Required.
    pub url: Secret<String>,
    /// Stream key. Default: `wal:<namespace>`.
    #[serde(default)]
    pub stream: Option<String>,
    /// Stream key of the DLQ. Default: `<stream>:dlq`.
    #[serde(default)]
    pub dlq_stream: Option<String>,
    /// Consumer group. Default: wald.
    #[serde(default = "default_group")]
    pub group: String,
    /// Replicas that must confirm each write (`WAIT`). Default: 0. Range: 0..=16.
    #[serde(default)]
    pub wait_replicas: u32,
    /// How long `WAIT` may take before the write answers 504. Default: 1s.
    #[serde(default = "default_wait_timeout")]
    pub wait_timeout: HumanDuration,
    /// Approximate stream length cap (`MAXLEN ~`). Entries are only trimmed once every
    /// group has acknowledged them. Default: none.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// Entries pending this long on a dead instance are claimed by another.
    /// Default: 30s. Range: 1s..=1h.
    #[serde(default = "default_claim_idle")]
    pub claim_idle: HumanDuration,
}

fn default_group() -> String {
    "wald".into()
}

fn default_wait_timeout() -> HumanDuration {
    HumanDuration::from_secs(1)
}

fn default_claim_idle() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// Redis's largest string; far above what a namespace should accept.
pub const MAX_MESSAGE: ByteSize = ByteSize::mib(512);

impl Config {
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        checks.url(&at.key("url"), self.url.expose(), &["redis", "rediss"]);
        for (key, value) in [("stream", &self.stream), ("dlq_stream", &self.dlq_stream)] {
            if let Some(name) = value
                && (name.trim().is_empty() || name.chars().any(char::is_whitespace))
            {
                checks.error(
                    Code::InvalidValue,
                    &at.key(key),
                    format!("`{key}` must be a non-empty key without spaces"),
                    "write for example \"wal:orders\"",
                );
            }
        }
        if self.stream.is_some() && self.stream == self.dlq_stream {
            checks.error(
                Code::InvalidValue,
                &at.key("dlq_stream"),
                "`dlq_stream` is the namespace's own stream",
                "name another stream, or remove `dlq_stream` to use `<stream>:dlq`",
            );
        }
        if self.group.trim().is_empty() {
            checks.error(
                Code::InvalidValue,
                &at.key("group"),
                "`group` is empty",
                "remove `group` to use \"wald\"",
            );
        }
        checks.range(
            Code::BackendLimit,
            &at.key("wait_replicas"),
            self.wait_replicas,
            0,
            16,
        );
        if let Some(maxlen) = self.maxlen {
            checks.range(
                Code::BackendLimit,
                &at.key("maxlen"),
                maxlen,
                1000,
                u64::MAX,
            );
        }
        let idle = self.claim_idle.get().as_secs();
        if !(1..=3600).contains(&idle) {
            checks.error(
                Code::InvalidValue,
                &at.key("claim_idle"),
                "`claim_idle` must be from 1s to 1h",
                "set `claim_idle` to for example \"30s\"",
            );
        }
    }

    /// The stream key of this namespace.
    pub fn stream_key(&self, namespace: &str) -> String {
        self.stream
            .clone()
            .unwrap_or_else(|| format!("wal:{namespace}"))
    }
}
