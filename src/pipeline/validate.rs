//! The pure validation stage: typed configuration in, every finding out. No I/O, so it
//! can run in `validate`, in `plan` and before every reload.
//!
//! Each plugin (backend, target) checks its own keys in its own file through
//! [`Checks`]; this module checks the namespace as a whole and a set of files together.

use std::collections::HashMap;

use super::config::PipelineConfig;
use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, Finding, KeyPath, Location};

/// Checks one pipeline on its own.
pub fn validate_pipeline(config: &PipelineConfig) -> Vec<Finding> {
    let mut checks = Checks::default();
    let root = KeyPath::root();
    checks.name(
        Code::InvalidNamespace,
        &root.key("namespace"),
        &config.namespace,
        "namespace",
    );

    config.source.validate(
        &mut checks,
        &root.key("source"),
        (config.producer.kind(), config.producer.max_message_bytes()),
    );
    config.consumer.validate(&mut checks, &root.key("consumer"));
    config.producer.validate(&mut checks, &root.key("producer"));

    if config.targets.is_empty() {
        checks.warning(
            Code::NoTargets,
            &root.key("namespace"),
            format!(
                "namespace `{}` has no targets: messages are logged but delivered nowhere",
                config.namespace
            ),
            "add a `[[target]]`, for example `type = \"file\"`",
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, target) in config.targets.iter().enumerate() {
        let at = root.key("target").index(i);
        checks.name(
            Code::InvalidValue,
            &at.key("name"),
            &target.name,
            "target name",
        );
        if let Some(first) = names.insert(&target.name, i) {
            checks.push(
                Finding::error(
                    Code::DuplicateTarget,
                    Location::Path {
                        path: at.key("name"),
                        needle: None,
                    },
                    format!(
                        "target name `{}` is used twice (targets {} and {})",
                        target.name,
                        first + 1,
                        i + 1
                    ),
                )
                .with_hint(
                    "give each target of a namespace its own name; status and the DLQ refer to it",
                ),
            );
        }
        target
            .circuit_breaker
            .validate(&mut checks, &at.key("circuit_breaker"));
        if let Some(limit) = &target.rate_limit {
            limit.validate(&mut checks, &at.key("rate_limit"));
        }
        if let Some(max) = target.max_in_flight {
            checks.range(
                Code::InvalidValue,
                &at.key("max_in_flight"),
                max,
                1,
                100_000,
            );
        }
        if let Some(retry) = &target.retry {
            retry.validate(&mut checks, &at.key("retry"), &config.consumer.retry);
        }
        for (j, processor) in target.processor.iter().enumerate() {
            processor.validate(&mut checks, &at.key("processor").index(j));
        }
        if let Some(filter) = &target.filter {
            filter.validate(&mut checks, &at.key("filter"));
        }
        if let Some(transform) = &target.transform {
            transform.validate(&mut checks, &at.key("transform"));
        }
        target.kind.validate(&mut checks, &at);
    }
    for (i, processor) in config.processors.iter().enumerate() {
        processor.validate(&mut checks, &root.key("processor").index(i));
    }
    checks.findings
}

/// Checks a set of pipelines together: a namespace declared by two files is an error
/// in the second, naming the first. Returns the findings per pipeline index.
pub fn validate_set<'a>(
    namespaces: impl IntoIterator<Item = (usize, &'a str)>,
) -> Vec<(usize, Finding, usize)> {
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut duplicates = Vec::new();
    for (index, namespace) in namespaces {
        match first.get(namespace) {
            Some(&earlier) => duplicates.push((
                index,
                Finding::error(
                    Code::DuplicateNamespace,
                    Location::Path {
                        path: KeyPath::root().key("namespace"),
                        needle: None,
                    },
                    format!("namespace `{namespace}` is declared twice"),
                ),
                earlier,
            )),
            None => {
                first.insert(namespace, index);
            }
        }
    }
    duplicates
}
