//! `Checks`: what every table's validation writes its findings with (ranges, URLs,
//! hashes, names), so that each table checks its own keys in its own file and every
//! finding reads the same.

use std::fmt::Display;

use super::diagnostic::{Code, Finding, KeyPath, Location};

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

    /// The duration at `path` must not be shorter than the one at key `lower_key` of
    /// the same table (a cap below its start).
    pub fn not_shorter<T: PartialOrd + Display>(
        &mut self,
        code: Code,
        path: &KeyPath,
        value: T,
        lower_key: &str,
        lower: T,
    ) {
        if value < lower {
            let key = last_key(path);
            self.error(
                code,
                path,
                format!("`{key}` ({value}) is shorter than `{lower_key}` ({lower})"),
                format!("raise `{key}` or lower `{lower_key}`"),
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
