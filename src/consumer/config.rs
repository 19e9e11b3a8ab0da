//! `[consumer]`: how a namespace's messages are delivered to its targets: how many at
//! once, in which order, retried how, and the DLQ. The table as written, with its
//! defaults and its checks.

use serde::{Deserialize, Serialize};

use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, KeyPath};
use crate::config::policy::RetryPolicy;
use crate::config::units::HumanDuration;

/// `[consumer]`: how messages are delivered.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Batches delivered at once. Default: 4. Range: 1..=1024.
    pub concurrency: u32,
    /// Most messages in one batch. Default: 256. Range: 1..=10000.
    pub batch_size: u32,
    /// How long a batch waits to fill up. Default: 5ms. Range: up to 10s.
    pub linger: HumanDuration,
    /// `per_key` keeps each key's order; `none` delivers with full concurrency.
    /// Default: per_key.
    pub order: Order,
    /// `[consumer.retry]`. Read on its own by [`parse_pipeline`], so that its errors
    /// and those of `[consumer]` are all reported.
    #[serde(skip_deserializing)]
    pub retry: RetryPolicy,
    /// `[consumer.dlq]`, read on its own likewise.
    #[serde(skip_deserializing)]
    pub dlq: DlqConfig,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            batch_size: 256,
            linger: HumanDuration::from_millis(5),
            order: Order::PerKey,
            retry: RetryPolicy::default(),
            dlq: DlqConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    PerKey,
    None,
}

/// `[consumer.dlq]`: where messages go after their last attempt.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DlqConfig {
    /// Keep failed messages in a DLQ of the same backend kind. When false, a message
    /// that exhausts its attempts is dropped with an ERROR log. Default: true.
    pub enabled: bool,
    /// How often one message may be replayed from the DLQ, against endless loops.
    /// Default: 3. Range: 1..=100.
    pub max_replays: u32,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_replays: 3,
        }
    }
}

impl ConsumerConfig {
    /// Checks the table at `at` (`consumer`), with `[consumer.retry]` and
    /// `[consumer.dlq]`.
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        checks.range(
            Code::InvalidBatch,
            &at.key("concurrency"),
            self.concurrency,
            1,
            1024,
        );
        checks.range(
            Code::InvalidBatch,
            &at.key("batch_size"),
            self.batch_size,
            1,
            10_000,
        );
        if self.linger.get() > std::time::Duration::from_secs(10) {
            checks.error(
                Code::InvalidBatch,
                &at.key("linger"),
                "`linger` is longer than 10s: every message would wait that long",
                "set `linger` to a few milliseconds, at most \"10s\"",
            );
        }
        self.retry.validate(checks, &at.key("retry"));
        checks.range(
            Code::InvalidValue,
            &at.key("dlq").key("max_replays"),
            self.dlq.max_replays,
            1,
            100,
        );
    }
}
