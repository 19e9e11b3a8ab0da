//! A pipeline file: one namespace, its HTTP source, its producer backend, its consumer
//! policy and its targets. The structs here are the file as written (serde types with
//! their defaults); [`super::validate`] checks them, and the runtime builds from them.

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::backend::BackendConfig;
use crate::config::diagnostic::{Code, Finding, Location};
use crate::config::file::Document;
use crate::config::units::{ByteSize, HumanDuration};
use crate::target::TargetConfig;

/// One namespace, as declared by one file in `pipelines/`.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineConfig {
    /// The namespace's name: `[a-z0-9][a-z0-9_-]{0,63}`. Required.
    pub namespace: String,
    /// Free text shown in status and `plan`. Default: empty.
    pub description: String,
    /// How messages arrive. Required, because it says who may write.
    pub source: SourceConfig,
    /// Where messages are logged durably. Default: the embedded log.
    pub producer: BackendConfig,
    /// How the consumer delivers to the targets.
    pub consumer: ConsumerConfig,
    /// Where messages are delivered, in `[[target]]` order.
    pub targets: Vec<TargetConfig>,
}

impl PipelineConfig {
    /// The largest payload this namespace accepts: `max_message_bytes`, or its default
    /// within the backend's limit.
    pub fn max_message_bytes(&self) -> ByteSize {
        self.source
            .max_message_bytes
            .unwrap_or_else(|| DEFAULT_MAX_MESSAGE_BYTES.min(self.producer.max_message_bytes()))
    }
}

/// `max_message_bytes` when the file does not say.
pub const DEFAULT_MAX_MESSAGE_BYTES: ByteSize = ByteSize::mib(1);

/// The top-level keys of a pipeline file; each table is read on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    namespace: String,
    #[serde(default)]
    description: String,
}

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

/// `rate_limit = { per_second = 5000, burst = 10000 }`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained messages per second. Required; at least 1.
    pub per_second: u32,
    /// Messages allowed at once above the rate. Default: `per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
}

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

/// `[consumer.retry]`: exponential backoff between attempts of one target.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts before the message goes to the DLQ, the first included. Default: 8.
    /// Range: 1..=100.
    pub max_attempts: u32,
    /// Wait before the second attempt. Default: 200ms.
    pub initial_backoff: HumanDuration,
    /// Longest wait between attempts. Default: 1m. At least `initial_backoff`.
    pub max_backoff: HumanDuration,
    /// Growth of the wait per attempt. Default: 2.0. Range: 1.0..=10.0.
    pub multiplier: f64,
    /// `full` (a random wait up to the backoff), `equal` (half fixed, half random) or
    /// `none`. Default: full.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: HumanDuration::from_millis(200),
            max_backoff: HumanDuration::from_secs(60),
            multiplier: 2.0,
            jitter: Jitter::Full,
        }
    }
}

/// A target's `retry = { ... }`: any key given replaces the namespace's policy.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOverride {
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<HumanDuration>,
    pub max_backoff: Option<HumanDuration>,
    pub multiplier: Option<f64>,
    pub jitter: Option<Jitter>,
}

impl RetryOverride {
    /// The policy that applies to a target: the namespace's, with this override on top.
    pub fn apply(&self, base: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            initial_backoff: self.initial_backoff.unwrap_or(base.initial_backoff),
            max_backoff: self.max_backoff.unwrap_or(base.max_backoff),
            multiplier: self.multiplier.unwrap_or(base.multiplier),
            jitter: self.jitter.unwrap_or(base.jitter),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    Full,
    Equal,
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

/// Keys of a `[[target]]` shared by every target type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetCommon {
    pub name: String,
    #[serde(default)]
    pub retry: Option<RetryOverride>,
}

/// Reads a parsed pipeline file into its typed form, recording every problem in `doc`.
/// Each table is read on its own, so that an error in one does not hide those in
/// another. Returns `None` when any of them failed.
pub fn parse_pipeline(doc: &mut Document<'_>) -> Option<PipelineConfig> {
    let root_span = doc.root.span();
    let mut root = std::mem::take(doc.root.get_mut());
    let source = Document::take(&mut root, "source");
    let consumer = Document::take(&mut root, "consumer");
    let producer = Document::take(&mut root, "producer");
    let targets = Document::take(&mut root, "target");
    let head: Option<Head> = doc.section(Spanned::new(root_span.clone(), root));

    let source = match source {
        Some(value) => doc.table_section::<SourceConfig>(value, "source"),
        None => {
            doc.findings.push(
                Finding::error(Code::MissingKey, Location::Span(root_span.start..root_span.start), "missing required table `[source]`")
                    .with_hint("add `[source]` with `type = \"http\"` and `api_keys_sha256 = [...]` or `public = true`"),
            );
            None
        }
    };
    let consumer = match consumer {
        Some(value) => parse_consumer(doc, value),
        None => Some(ConsumerConfig::default()),
    };
    let producer = match producer {
        None => Some(BackendConfig::default()),
        Some(value) => doc
            .expect_table(value, "producer")
            .and_then(|table| BackendConfig::parse(doc, table)),
    };
    let targets = match targets {
        None => Some(Vec::new()),
        Some(value) => parse_targets(doc, value),
    };

    let head = head?;
    Some(PipelineConfig {
        namespace: head.namespace,
        description: head.description,
        source: source?,
        producer: producer?,
        consumer: consumer?,
        targets: targets?,
    })
}

fn parse_consumer<'i>(
    doc: &mut Document<'i>,
    value: Spanned<DeValue<'i>>,
) -> Option<ConsumerConfig> {
    let mut table = doc.expect_table(value, "consumer")?;
    let retry = match Document::take(table.get_mut(), "retry") {
        Some(value) => doc.table_section::<RetryPolicy>(value, "consumer.retry"),
        None => Some(RetryPolicy::default()),
    };
    let dlq = match Document::take(table.get_mut(), "dlq") {
        Some(value) => doc.table_section::<DlqConfig>(value, "consumer.dlq"),
        None => Some(DlqConfig::default()),
    };
    let consumer: Option<ConsumerConfig> = doc.section(table);
    Some(ConsumerConfig {
        retry: retry?,
        dlq: dlq?,
        ..consumer?
    })
}

fn parse_targets<'i>(
    doc: &mut Document<'i>,
    value: Spanned<DeValue<'i>>,
) -> Option<Vec<TargetConfig>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        doc.findings.push(
            Finding::error(
                Code::InvalidType,
                Location::Span(span),
                "`target` must be an array of tables",
            )
            .with_hint("declare each target with its own `[[target]]` header"),
        );
        return None;
    };
    let mut targets = Vec::new();
    let mut complete = true;
    for item in items {
        let parsed = doc
            .expect_table(item, "target")
            .and_then(|table: Spanned<DeTable<'i>>| TargetConfig::parse(doc, table));
        match parsed {
            Some(target) => targets.push(target),
            None => complete = false,
        }
    }
    complete.then_some(targets)
}
