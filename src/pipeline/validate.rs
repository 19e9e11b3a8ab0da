//! The pure validation stage: typed configuration in, every finding out. No I/O, so it
//! can run in `validate`, in `plan` and before every reload.
//!
//! Each plugin (backend, target) checks its own keys in its own file through
//! [`Checks`]; this module checks the namespace as a whole and a set of files together.

use std::collections::HashMap;
use std::fmt::Display;

use super::config::{PipelineConfig, RetryOverride, RetryPolicy};
use crate::config::diagnostic::{Code, Finding, KeyPath, Location};
use crate::config::units::ByteSize;

/// Collects findings for one file.
#[derive(Debug, Default)]
pub struct Checks {
    pub findings: Vec<Finding>,
}

impl Checks {
    pub fn error(
        &mut self,
        code: Code,
        path: &KeyPath,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.findings
            .push(Finding::error(code, value_at(path), message).with_hint(hint));
    }

    pub fn warning(
        &mut self,
        code: Code,
        path: &KeyPath,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.findings
            .push(Finding::warning(code, value_at(path), message).with_hint(hint));
    }

    pub fn push(&mut self, finding: Finding) {
        self.findings.push(finding);
    }

    /// `value` must lie in `min..=max`.
    pub fn range<T: PartialOrd + Display>(
        &mut self,
        code: Code,
        path: &KeyPath,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min || value > max {
            let key = last_key(path);
            self.error(
                code,
                path,
                format!("`{key}` is {value}, outside {min}..={max}"),
                format!("set `{key}` to a value from {min} to {max}"),
            );
        }
    }

    /// `raw` must be a URL with one of `schemes`. Returns it when it is.
    pub fn url(&mut self, path: &KeyPath, raw: &str, schemes: &[&str]) -> Option<url::Url> {
        let key = last_key(path);
        let examples = schemes
            .iter()
            .map(|s| format!("{s}://..."))
            .collect::<Vec<_>>()
            .join(" or ");
        match url::Url::parse(raw) {
            Ok(url) if schemes.contains(&url.scheme()) && url.has_host() => Some(url),
            Ok(url) if !schemes.contains(&url.scheme()) => {
                self.error(
                    Code::InvalidUrl,
                    path,
                    format!(
                        "`{key}` has scheme `{}`, expected {}",
                        url.scheme(),
                        schemes.join(" or ")
                    ),
                    format!("write it as {examples}"),
                );
                None
            }
            Ok(_) => {
                self.error(
                    Code::InvalidUrl,
                    path,
                    format!("`{key}` has no host"),
                    format!("write it as {examples}"),
                );
                None
            }
            Err(e) => {
                // The message names the problem, never the value: it may hold a password.
                self.error(
                    Code::InvalidUrl,
                    path,
                    format!("`{key}` is not a valid URL: {e}"),
                    format!("write it as {examples}"),
                );
                None
            }
        }
    }

    /// `value` must be a SHA-256 hash in hex, as `wald hash-key` prints it.
    pub fn sha256(&mut self, path: &KeyPath, value: &str) {
        if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.error(
                Code::InvalidValue,
                path,
                "not a SHA-256 hash: expected 64 hex digits",
                "store the hash, not the key: `wald hash-key` prints it",
            );
        }
    }

    /// `name` must be a name wald can use in file names, metrics and URLs.
    pub fn name(&mut self, code: Code, path: &KeyPath, name: &str, what: &str) {
        if !is_valid_name(name) {
            self.error(
                code,
                path,
                format!("{what} `{}` is not a valid name", name.escape_debug()),
                "use 1 to 64 characters of a-z, 0-9, `_` and `-`, starting with a letter or digit",
            );
        }
    }
}

fn value_at(path: &KeyPath) -> Location {
    Location::Path {
        path: path.clone(),
        needle: None,
    }
}

/// The last key of a path, for messages: `max_attempts` of `consumer.retry.max_attempts`.
pub fn last_key(path: &KeyPath) -> String {
    let full = path.to_string();
    full.rsplit('.').next().unwrap_or(&full).to_string()
}

/// `[a-z0-9][a-z0-9_-]{0,63}`: namespace and target names.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// Largest `max_message_bytes` a namespace may accept whatever its backend.
pub const MAX_MESSAGE_BYTES: ByteSize = ByteSize::mib(16);

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

    let source = root.key("source");
    if config.source.public && !config.source.api_keys_sha256.is_empty() {
        checks.error(
            Code::NoAuth,
            &source.key("public"),
            "`public = true` and `api_keys_sha256` contradict each other",
            "remove `public` to require a key, or remove the keys to accept anyone",
        );
    }
    if !config.source.public && config.source.api_keys_sha256.is_empty() {
        checks.error(
            Code::NoAuth,
            &source,
            "the namespace has no API keys and is not public: nobody could write to it",
            "add `api_keys_sha256 = [\"...\"]` (`wald hash-key` prints a hash), or `public = true`",
        );
    }
    for (i, hash) in config.source.api_keys_sha256.iter().enumerate() {
        checks.sha256(&source.key("api_keys_sha256").index(i), hash);
    }
    if let Some(size) = config.source.max_message_bytes {
        checks.range(
            Code::InvalidValue,
            &source.key("max_message_bytes"),
            size,
            ByteSize(1),
            MAX_MESSAGE_BYTES,
        );
        let limit = config.producer.max_message_bytes();
        if size > limit {
            checks.error(
                Code::BackendLimit,
                &source.key("max_message_bytes"),
                format!(
                    "`max_message_bytes` is {size}, but the {} backend carries at most {limit} per message",
                    config.producer.kind()
                ),
                format!("set `max_message_bytes` to at most \"{limit}\", or leave it out to use that limit"),
            );
        }
    }
    if let Some(limit) = config.source.rate_limit {
        let at = source.key("rate_limit");
        checks.range(
            Code::InvalidValue,
            &at.key("per_second"),
            limit.per_second,
            1,
            10_000_000,
        );
        if let Some(burst) = limit.burst {
            checks.range(Code::InvalidValue, &at.key("burst"), burst, 1, 100_000_000);
        }
    }
    let year = crate::config::units::HumanDuration::from_secs(365 * 24 * 3600);
    if config.source.max_delay > year {
        checks.error(
            Code::InvalidValue,
            &source.key("max_delay"),
            "`max_delay` is longer than 365 days",
            "set `max_delay` to at most \"365d\"",
        );
    }

    let consumer = root.key("consumer");
    checks.range(
        Code::InvalidBatch,
        &consumer.key("concurrency"),
        config.consumer.concurrency,
        1,
        1024,
    );
    checks.range(
        Code::InvalidBatch,
        &consumer.key("batch_size"),
        config.consumer.batch_size,
        1,
        10_000,
    );
    if config.consumer.linger.get() > std::time::Duration::from_secs(10) {
        checks.error(
            Code::InvalidBatch,
            &consumer.key("linger"),
            "`linger` is longer than 10s: every message would wait that long",
            "set `linger` to a few milliseconds, at most \"10s\"",
        );
    }
    validate_retry(&mut checks, &consumer.key("retry"), &config.consumer.retry);
    checks.range(
        Code::InvalidValue,
        &consumer.key("dlq").key("max_replays"),
        config.consumer.dlq.max_replays,
        1,
        100,
    );

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
        if let Some(retry) = &target.retry {
            validate_retry_override(&mut checks, &at.key("retry"), retry, &config.consumer.retry);
        }
        target.kind.validate(&mut checks, &at);
    }
    checks.findings
}

fn validate_retry(checks: &mut Checks, at: &KeyPath, retry: &RetryPolicy) {
    checks.range(
        Code::InvalidRetry,
        &at.key("max_attempts"),
        retry.max_attempts,
        1,
        100,
    );
    if !(1.0..=10.0).contains(&retry.multiplier) {
        checks.error(
            Code::InvalidRetry,
            &at.key("multiplier"),
            format!("`multiplier` is {}, outside 1.0..=10.0", retry.multiplier),
            "set `multiplier` from 1.0 (constant backoff) to 10.0",
        );
    }
    if retry.initial_backoff.get().is_zero() {
        checks.error(
            Code::InvalidRetry,
            &at.key("initial_backoff"),
            "`initial_backoff` is zero: a failing target would be retried in a tight loop",
            "set `initial_backoff` to at least \"1ms\"; \"200ms\" is a good start",
        );
    }
    if retry.max_backoff < retry.initial_backoff {
        checks.error(
            Code::InvalidRetry,
            &at.key("max_backoff"),
            format!(
                "`max_backoff` ({}) is shorter than `initial_backoff` ({})",
                retry.max_backoff, retry.initial_backoff
            ),
            "raise `max_backoff` or lower `initial_backoff`",
        );
    }
    if retry.max_backoff.get() > std::time::Duration::from_secs(24 * 3600) {
        checks.error(
            Code::InvalidRetry,
            &at.key("max_backoff"),
            "`max_backoff` is longer than 24h",
            "set `max_backoff` to at most \"24h\"",
        );
    }
}

fn validate_retry_override(
    checks: &mut Checks,
    at: &KeyPath,
    retry: &RetryOverride,
    base: &RetryPolicy,
) {
    let mut merged = Checks::default();
    validate_retry(&mut merged, at, &retry.apply(base));
    // A bound broken by the namespace's own policy is reported there, not again here.
    let mut inherited = Checks::default();
    validate_retry(&mut inherited, at, base);
    checks.findings.extend(
        merged
            .findings
            .into_iter()
            .filter(|f| !inherited.findings.contains(f)),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_namespace_pattern() {
        assert!(is_valid_name("orders"));
        assert!(is_valid_name("0rders_v2-eu"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("Orders"));
        assert!(!is_valid_name("-orders"));
        assert!(!is_valid_name("ord ers"));
        assert!(!is_valid_name(&"a".repeat(65)));
        assert!(is_valid_name(&"a".repeat(64)));
    }
}
