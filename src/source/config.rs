//! `[source]`: how a namespace's messages arrive (the HTTP ingest API): who may write,
//! how large a message may be, how fast and how delayed. The table as written, with its
//! defaults and its checks.

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::policy::RateLimit;
use crate::config::units::{ByteSize, HumanDuration};
use crate::source::schema::SchemaFile;

/// Largest `max_message_bytes` a namespace may accept whatever its backend.
pub const MAX_MESSAGE_BYTES: ByteSize = ByteSize::mib(16);

/// `[source]`: the HTTP ingest API of this namespace.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Only `"http"` today. Required.
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// SHA-256 (hex) of each API key allowed to write; `wald hash-key` prints one.
    /// Default: none, which requires `public = true`.
    #[serde(default)]
    pub api_keys_sha256: Vec<String>,
    /// Accept writes without a key. Must be said explicitly. Default: false.
    #[serde(default)]
    pub public: bool,
    /// Largest payload accepted, after base64 decoding. Default: 1MiB, or the
    /// backend's limit where that is lower (sqs: 184KiB, kafka: 1000KiB).
    /// Range: 1B..=16MiB, and at most the backend's limit.
    #[serde(default)]
    pub max_message_bytes: Option<ByteSize>,
    /// Token bucket per namespace. Default: none (unlimited).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Longest `delay` a write may ask for. Default: 7d. Range: up to 365d.
    #[serde(default = "SourceConfig::default_max_delay")]
    pub max_delay: HumanDuration,
    /// A JSON Schema file (relative to the pipeline file) every payload must satisfy,
    /// checked before anything is appended. Default: none.
    #[serde(default)]
    pub schema: Option<SchemaFile>,
}

impl SourceConfig {
    fn default_max_delay() -> HumanDuration {
        HumanDuration::from_secs(7 * 24 * 3600)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Http,
}

impl SourceConfig {
    /// Checks the table at `at` (`source`), against the `producer` backend's kind and
    /// the most it carries per message.
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath, producer: (&str, ByteSize)) {
        if self.public && !self.api_keys_sha256.is_empty() {
            checks.error(
                Code::NoAuth,
                &at.key("public"),
                "`public = true` and `api_keys_sha256` contradict each other",
                "remove `public` to require a key, or remove the keys to accept anyone",
            );
        }
        if !self.public && self.api_keys_sha256.is_empty() {
            checks.error(
                Code::NoAuth,
                at,
                "the namespace has no API keys and is not public: nobody could write to it",
                "add `api_keys_sha256 = [\"...\"]` (`wald hash-key` prints a hash), or `public = true`",
            );
        }
        for (i, hash) in self.api_keys_sha256.iter().enumerate() {
            checks.sha256(&at.key("api_keys_sha256").index(i), hash);
        }
        if let Some(size) = self.max_message_bytes {
            checks.range(
                Code::InvalidValue,
                &at.key("max_message_bytes"),
                size,
                ByteSize(1),
                MAX_MESSAGE_BYTES,
            );
            let (backend, limit) = producer;
            if size > limit {
                checks.error(
                    Code::BackendLimit,
                    &at.key("max_message_bytes"),
                    format!(
                        "`max_message_bytes` is {size}, but the {backend} backend carries at most {limit} per message"
                    ),
                    format!("set `max_message_bytes` to at most \"{limit}\", or leave it out to use that limit"),
                );
            }
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate(checks, &at.key("rate_limit"));
        }
        let year = HumanDuration::from_secs(365 * 24 * 3600);
        if self.max_delay > year {
            checks.error(
                Code::InvalidValue,
                &at.key("max_delay"),
                "`max_delay` is longer than 365 days",
                "set `max_delay` to at most \"365d\"",
            );
        }
    }
}
