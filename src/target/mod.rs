//! Targets: where a namespace's messages are delivered. Each target type lives in its
//! own file with its configuration and checks: `postgres`, `redis`, `http`, `kafka` and
//! `file`. [`TargetConfig`] is one `[[target]]` table, dispatched on `type`.

pub mod file;
pub mod http;
pub mod kafka;
pub mod postgres;
pub mod redis;
pub mod template;

use serde::Serialize;
use toml::Spanned;
use toml::de::DeTable;

use crate::config::diagnostic::{Code, Finding, KeyPath, Location};
use crate::config::file::Document;
use crate::config::pipeline::{RetryOverride, TargetCommon};
use crate::config::validate::Checks;

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
