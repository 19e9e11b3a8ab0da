//! A pipeline file: one namespace, its `[source]`, its `[producer]` backend, its
//! `[consumer]` and its `[[target]]`s, each table read on its own by the code it
//! configures (`source::config`, `backend`, `consumer::config`, `target`); this puts
//! them together. [`super::validate`] checks the whole, and the runtime builds from it.

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::config::diagnostic::{Code, Finding, Location};
use crate::config::file::Document;
use crate::config::policy::RetryPolicy;
use crate::config::units::ByteSize;
use crate::consumer::config::{ConsumerConfig, DlqConfig};
use crate::processing::config::ProcessorConfig;
use crate::producer::BackendConfig;
use crate::source::config::SourceConfig;
use crate::targets::TargetConfig;

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
    /// Steps every message goes through on its way to each target, in
    /// `[[processor]]` order. Default: none.
    pub processors: Vec<ProcessorConfig>,
    /// Where messages are delivered, in `[[target]]` order.
    pub targets: Vec<TargetConfig>,
    /// `[[test]]` cases `wald validate` runs; nothing runs them in the service.
    #[serde(skip)]
    pub tests: Vec<TestCase>,
}

/// `[[test]]`: a write request and what each target should make of it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// Shown when it fails. Required.
    pub name: String,
    /// The write request, as `POST /api/v1/wal/write` takes it (`namespace` may be
    /// left out). Required.
    pub input: serde_json::Value,
    /// The code the write is refused with, when it should be refused.
    #[serde(default)]
    pub refused: Option<String>,
    /// Per target: `"skipped"`, `"failed"`, `"not_addressed"`, or what it is sent
    /// (keys left out are not compared). Targets not named are not checked.
    #[serde(default)]
    pub expect: std::collections::BTreeMap<String, serde_json::Value>,
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
    let processors = Document::take(&mut root, "processor");
    let tests = Document::take(&mut root, "test");
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
        Some(value) => parse_tables(doc, value, "target", TargetConfig::parse),
    };
    let processors = match processors {
        None => Some(Vec::new()),
        Some(value) => parse_tables(doc, value, "processor", Document::section),
    };
    let tests = match tests {
        None => Some(Vec::new()),
        Some(value) => parse_tables(doc, value, "test", Document::section),
    };

    let head = head?;
    Some(PipelineConfig {
        namespace: head.namespace,
        description: head.description,
        source: source?,
        producer: producer?,
        consumer: consumer?,
        processors: processors?,
        targets: targets?,
        tests: tests?,
    })
}

/// `[[what]]` (`target`, `processor`, `test`): each table read by `read`.
fn parse_tables<'i, T>(
    doc: &mut Document<'i>,
    value: Spanned<DeValue<'i>>,
    what: &str,
    mut read: impl FnMut(&mut Document<'i>, Spanned<DeTable<'i>>) -> Option<T>,
) -> Option<Vec<T>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        doc.findings.push(
            Finding::error(
                Code::InvalidType,
                Location::Span(span),
                format!("`{what}` must be an array of tables"),
            )
            .with_hint(format!("declare each with its own `[[{what}]]` header")),
        );
        return None;
    };
    let mut tables = Vec::new();
    let mut complete = true;
    for item in items {
        let table = doc.expect_table(item, what);
        match table.and_then(|t| read(doc, t)) {
            Some(table) => tables.push(table),
            None => complete = false,
        }
    }
    complete.then_some(tables)
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
