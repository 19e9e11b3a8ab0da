//! `[producer] type = "sqs"`: the table as written, with its defaults and its checks.

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::secret::Secret;
use crate::config::units::{ByteSize, HumanDuration};

/// `[producer]` with `type = "sqs"`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The queue's URL. A name ending in `.fifo` makes it a FIFO queue: messages of one
    /// key keep their order. Required.
    pub queue_url: String,
    /// The DLQ's URL. Default: none, which keeps failed messages in a queue named
    /// `<queue>-dlq` beside the main one.
    #[serde(default)]
    pub dlq_queue_url: Option<String>,
    /// AWS region. Default: us-east-1.
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint override (a local SQS-compatible server). Default: AWS's.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Static credentials; both or neither. Default: the AWS default chain.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret<String>>,
    /// Long-poll wait of `ReceiveMessage`. Default: 20s. Range: up to 20s.
    #[serde(default = "default_wait_time")]
    pub wait_time: HumanDuration,
    /// How long a received message stays invisible while it is delivered.
    /// Default: 30s. Range: 1s..=12h.
    #[serde(default = "default_visibility_timeout")]
    pub visibility_timeout: HumanDuration,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_wait_time() -> HumanDuration {
    HumanDuration::from_secs(20)
}

fn default_visibility_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// SQS carries at most 256 KiB per message, envelope and base64 included; a payload of
/// 184 KiB base64-encodes to 245 KiB and leaves room for the envelope.
pub const MAX_MESSAGE: ByteSize = ByteSize::kib(184);

impl Config {
    pub fn is_fifo(&self) -> bool {
        self.queue_url.trim_end_matches('/').ends_with(".fifo")
    }

    /// The DLQ's URL: `dlq_queue_url`, or `<queue>-dlq` (`<queue>-dlq.fifo`) beside the
    /// queue.
    pub fn dlq_url(&self) -> String {
        if let Some(url) = &self.dlq_queue_url {
            return url.clone();
        }
        let url = self.queue_url.trim_end_matches('/');
        match url.strip_suffix(".fifo") {
            Some(base) => format!("{base}-dlq.fifo"),
            None => format!("{url}-dlq"),
        }
    }

    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        checks.url(&at.key("queue_url"), &self.queue_url, &["https", "http"]);
        if let Some(dlq) = &self.dlq_queue_url {
            checks.url(&at.key("dlq_queue_url"), dlq, &["https", "http"]);
            // A FIFO DLQ hands a peek at most ten entries of a key at a time; a
            // standard one serves any queue.
            if dlq.trim_end_matches('/').ends_with(".fifo") && !self.is_fifo() {
                checks.error(
                    Code::BackendLimit,
                    &at.key("dlq_queue_url"),
                    "the DLQ of a standard queue must be a standard queue",
                    "use a standard queue (a name without `.fifo`); it suits a FIFO queue too",
                );
            }
        }
        if let Some(endpoint) = &self.endpoint {
            checks.url(&at.key("endpoint"), endpoint, &["https", "http"]);
        }
        if self.region.trim().is_empty() {
            checks.error(
                Code::InvalidValue,
                &at.key("region"),
                "`region` is empty",
                "set `region`, for example \"eu-west-1\"",
            );
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            checks.error(
                Code::InvalidValue,
                at,
                "`access_key_id` and `secret_access_key` go together",
                "give both, or neither to use the AWS default credential chain",
            );
        }
        if self.wait_time.get() > std::time::Duration::from_secs(20) {
            checks.error(
                Code::BackendLimit,
                &at.key("wait_time"),
                "SQS long polls wait at most 20s",
                "set `wait_time` to at most \"20s\"",
            );
        }
        let visibility = self.visibility_timeout.get().as_secs();
        if !(1..=12 * 3600).contains(&visibility) {
            checks.error(
                Code::BackendLimit,
                &at.key("visibility_timeout"),
                "SQS visibility timeouts are from 1s to 12h",
                "set `visibility_timeout` to for example \"30s\"",
            );
        }
    }
}
