//! Reading one configuration file into typed values, keeping every place known.
//!
//! The stages for one file: read (size limit, UTF-8) -> parse TOML into a spanned tree
//! (every syntax error) -> expand `${VAR}` in every string (every missing variable) ->
//! index the span of every key and value -> deserialize section by section, so that an
//! error in `[consumer]` does not hide one in a `[[target]]`.
//!
//! Tagged tables (`[producer]`, `[[target]]`) are dispatched on their `type` here, on
//! the spanned tree, rather than with serde's internally tagged enums: those buffer the
//! table and lose both the spans and `deny_unknown_fields`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostic::{Code, Diagnostic, Finding, KeyPath, Location, did_you_mean};
use super::env::{self, Lookup};
use super::secret;

/// Configuration files are small; anything larger is a mistake (a log, a dump).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Syntax errors shown per file; after the first few, the parser's recovery mostly
/// reports the consequences of the first.
const MAX_SYNTAX_ERRORS: usize = 10;

/// A file's text and the spans of its keys and values, so that findings can be placed.
#[derive(Debug, Clone)]
pub struct SourceText {
    pub path: PathBuf,
    pub text: String,
    /// Span of each value, by path.
    values: HashMap<KeyPath, Range<usize>>,
    /// Span of each key, by path.
    keys: HashMap<KeyPath, Range<usize>>,
}

impl SourceText {
    pub fn new(path: &Path, text: String) -> Self {
        Self {
            path: path.to_path_buf(),
            text,
            values: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    /// Gives a finding its line and column. A path that is not in the file (a missing
    /// key) points at its nearest ancestor that is.
    pub fn place(&self, finding: Finding) -> Diagnostic {
        match self.span_of(&finding.location) {
            Some(span) => Diagnostic::at_span(&self.path, &self.text, span, finding),
            None => Diagnostic::for_path(&self.path, finding),
        }
    }

    fn span_of(&self, location: &Location) -> Option<Range<usize>> {
        match location {
            Location::File => None,
            Location::Span(span) => Some(span.clone()),
            Location::Key(path) => self
                .keys
                .get(path)
                .cloned()
                .or_else(|| self.nearest_value(path)),
            Location::Path { path, needle } => {
                let span = self.nearest_value(path)?;
                let inner = needle
                    .as_deref()
                    .and_then(|n| self.text.get(span.clone())?.find(n).map(|i| (i, n.len())));
                Some(match inner {
                    Some((offset, len)) => span.start + offset..span.start + offset + len,
                    None => span,
                })
            }
        }
    }

    fn nearest_value(&self, path: &KeyPath) -> Option<Range<usize>> {
        let mut current = Some(path.clone());
        while let Some(path) = current {
            if let Some(span) = self.values.get(&path) {
                // A table's span covers its whole body; point at its first line.
                let end = self.text[span.start..]
                    .find('\n')
                    .map(|i| span.start + i)
                    .unwrap_or(span.end)
                    .min(span.end);
                return Some(span.start..end.max(span.start + 1));
            }
            if let Some(span) = self.keys.get(&path) {
                return Some(span.clone());
            }
            current = path.parent();
        }
        None
    }
}

/// A file that could not be made into a tree: its text as far as it could be read,
/// and why.
#[derive(Debug)]
pub struct Rejected {
    pub source: SourceText,
    pub findings: Vec<Finding>,
}

impl Rejected {
    fn new(source: SourceText, findings: Vec<Finding>) -> Box<Self> {
        Box::new(Self { source, findings })
    }
}

/// Why a path could not be read, with a hint for the common causes.
pub fn unreadable(e: &std::io::Error) -> Finding {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => {
            "check the path; `wald validate` takes pipeline files and directories"
        }
        std::io::ErrorKind::PermissionDenied => "make the file readable by wald's user",
        _ if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            "a symbolic link points back at itself; fix the link"
        }
        _ => "check that the path is a readable file",
    };
    Finding::error(
        Code::Unreadable,
        Location::File,
        format!("cannot read: {e}"),
    )
    .with_hint(hint)
}

/// Why an entry that is not a regular file is not read as a pipeline file.
pub fn not_a_regular_file(kind: &std::fs::FileType) -> Finding {
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Finding::error(
        Code::NotARegularFile,
        Location::File,
        format!("this entry is {what}, not a file; it is not read"),
    )
    .with_hint("a pipeline file is a regular file (or a link to one); rename or remove this entry")
}

/// Reads a file as UTF-8 text, within [`MAX_FILE_BYTES`].
pub fn read_text(path: &Path) -> Result<String, Box<Rejected>> {
    text_of(path, read_bytes(path)?)
}

/// Reads a file's bytes, and at most one byte more than [`MAX_FILE_BYTES`]. Only a
/// regular file (or a link to one) is read: anything else is refused before it is
/// opened, and the file is opened without blocking and checked again once open, so
/// that a FIFO put in its place cannot hold the reader.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, Box<Rejected>> {
    use std::os::unix::fs::OpenOptionsExt;
    let rejected =
        |finding: Finding| Rejected::new(SourceText::new(path, String::new()), vec![finding]);
    let regular = |meta: &std::fs::Metadata| {
        if meta.is_file() {
            Ok(())
        } else {
            Err(rejected(not_a_regular_file(&meta.file_type())))
        }
    };
    regular(&std::fs::metadata(path).map_err(|e| rejected(unreadable(&e)))?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| rejected(unreadable(&e)))?;
    regular(&file.metadata().map_err(|e| rejected(unreadable(&e)))?)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| rejected(unreadable(&e)))?;
    Ok(bytes)
}

/// The bytes of the file at `path` as UTF-8 text, within [`MAX_FILE_BYTES`].
pub fn text_of(path: &Path, bytes: Vec<u8>) -> Result<String, Box<Rejected>> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Rejected::new(
            SourceText::new(path, String::new()),
            vec![
                Finding::error(
                    Code::FileTooLarge,
                    Location::File,
                    format!("file is larger than {} KiB", MAX_FILE_BYTES / 1024),
                )
                .with_hint("a pipeline file declares one namespace and is a few KiB; check that this is the right file"),
            ],
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
        let finding = Finding::error(
            Code::NotUtf8,
            Location::Span(at..at + 1),
            "file is not UTF-8 text",
        )
        .with_hint("save the file as UTF-8; configuration files are text");
        Rejected::new(SourceText::new(path, lossy), vec![finding])
    })
}

/// One file being turned into typed values: its spanned tree and what was found so far.
pub struct Document<'i> {
    pub source: SourceText,
    pub root: Spanned<DeTable<'i>>,
    pub findings: Vec<Finding>,
}

impl<'i> Document<'i> {
    /// Parses `text`; `None` with findings when the TOML itself is broken.
    pub fn parse(path: &Path, text: &'i str, lookup: Lookup) -> Result<Self, Box<Rejected>> {
        let source = SourceText::new(path, text.to_string());
        let (root, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            let mut findings: Vec<Finding> = Vec::new();
            for finding in errors.iter().map(syntax_finding) {
                if !findings.contains(&finding) {
                    findings.push(finding);
                }
            }
            let more = findings.len().saturating_sub(MAX_SYNTAX_ERRORS);
            findings.truncate(MAX_SYNTAX_ERRORS);
            if more > 0
                && let Some(last) = findings.last_mut()
            {
                last.message
                    .push_str(&format!(" (and {more} more syntax errors)"));
            }
            return Err(Rejected::new(source, findings));
        }
        let mut doc = Self {
            source,
            root,
            findings: Vec::new(),
        };
        let span = doc.root.span();
        doc.source.values.insert(KeyPath::root(), span);
        let mut walker = Walker {
            source: &mut doc.source,
            findings: &mut doc.findings,
            lookup,
        };
        walker.table(doc.root.get_mut(), &KeyPath::root());
        Ok(doc)
    }

    /// Removes `key` from `table` and returns it.
    pub fn take(table: &mut DeTable<'i>, key: &str) -> Option<Spanned<DeValue<'i>>> {
        table.remove(key)
    }

    /// Deserializes a table into `T`, recording the error if it does not fit.
    pub fn section<T: DeserializeOwned>(&mut self, table: Spanned<DeTable<'i>>) -> Option<T> {
        let span = table.span();
        match T::deserialize(toml::de::Deserializer::from(table)) {
            Ok(value) => Some(value),
            Err(e) => {
                self.findings.push(serde_finding(&e, span));
                None
            }
        }
    }

    /// Deserializes a value that must be a table; `what` names it in the error.
    pub fn table_section<T: DeserializeOwned>(
        &mut self,
        value: Spanned<DeValue<'i>>,
        what: &str,
    ) -> Option<T> {
        let table = self.expect_table(value, what)?;
        self.section(table)
    }

    pub fn expect_table(
        &mut self,
        value: Spanned<DeValue<'i>>,
        what: &str,
    ) -> Option<Spanned<DeTable<'i>>> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(table) => Some(Spanned::new(span, table)),
            other => {
                self.findings.push(
                    Finding::error(
                        Code::InvalidType,
                        Location::Span(span),
                        format!("`{what}` must be a table, found {}", other.type_str()),
                    )
                    .with_hint(format!("write it as `[{what}]` followed by its keys")),
                );
                None
            }
        }
    }

    /// Takes `type` out of a tagged table and checks it against `kinds`. The rest of the
    /// table is left for the chosen kind's own struct.
    pub fn take_type(
        &mut self,
        table: &mut Spanned<DeTable<'i>>,
        what: &str,
        kinds: &[&str],
    ) -> Option<String> {
        let span = table.span();
        let Some(value) = table.get_mut().remove("type") else {
            self.findings.push(
                Finding::error(
                    Code::MissingKey,
                    Location::Span(span),
                    format!("{what} has no `type`"),
                )
                .with_hint(format!(
                    "add `type = \"{}\"` (one of: {})",
                    kinds[0],
                    kinds.join(", ")
                )),
            );
            return None;
        };
        let value_span = value.span();
        let kind = match value.into_inner() {
            DeValue::String(kind) => kind.into_owned(),
            other => {
                self.findings.push(Finding::error(
                    Code::InvalidType,
                    Location::Span(value_span),
                    format!("`type` must be a string, found {}", other.type_str()),
                ));
                return None;
            }
        };
        if kinds.contains(&kind.as_str()) {
            return Some(kind);
        }
        let hint = match did_you_mean(&kind, kinds.iter().copied()) {
            Some(near) => format!("did you mean `{near}`? {what} types: {}", kinds.join(", ")),
            None => format!("{what} types: {}", kinds.join(", ")),
        };
        self.findings.push(
            Finding::error(
                Code::UnknownType,
                Location::Span(value_span),
                format!("unknown {what} type `{kind}`"),
            )
            .with_hint(hint),
        );
        None
    }

    /// Splits the keys named in `keys` off `table` into a table of their own, so that
    /// fields shared by every kind (a target's `name`) and the kind's own fields can be
    /// deserialized by two strict structs.
    pub fn split(table: &mut Spanned<DeTable<'i>>, keys: &[&str]) -> Spanned<DeTable<'i>> {
        let mut common = DeTable::new();
        for key in keys {
            if let Some((k, v)) = table.get_mut().remove_entry(*key) {
                common.insert(k, v);
            }
        }
        Spanned::new(table.span(), common)
    }
}

/// Walks the tree once: expands `${VAR}` in every string and records every span.
struct Walker<'s, 'l> {
    source: &'s mut SourceText,
    findings: &'s mut Vec<Finding>,
    lookup: Lookup<'l>,
}

impl Walker<'_, '_> {
    fn table(&mut self, table: &mut DeTable<'_>, path: &KeyPath) {
        for (key, value) in table.iter_mut() {
            let path = path.key(key.get_ref().as_ref());
            self.source.keys.insert(path.clone(), key.span());
            self.value(value, &path);
        }
    }

    fn value(&mut self, value: &mut Spanned<DeValue<'_>>, path: &KeyPath) {
        self.source.values.insert(path.clone(), value.span());
        if let DeValue::String(text) = value.get_ref() {
            self.check_inline_secret(path, text, value.span());
        }
        match value.get_mut() {
            DeValue::String(text) if env::has_placeholders(text) => {
                match env::expand(text, self.lookup) {
                    Ok(expanded) => *text = Cow::Owned(expanded),
                    Err(errors) => {
                        for e in errors {
                            self.findings.push(
                                Finding::error(
                                    Code::MissingEnvVar,
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
                }
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.value(item, &path.index(i));
                }
            }
            DeValue::Table(table) => self.table(table, path),
            _ => {}
        }
    }
}

impl Walker<'_, '_> {
    /// A secret written into the file rather than taken from the environment is a
    /// warning: files end up in repositories and tickets.
    fn check_inline_secret(&mut self, path: &KeyPath, text: &str, span: Range<usize>) {
        let raw = self.source.text.get(span).unwrap_or("");
        if raw.contains("${") || text.is_empty() {
            return;
        }
        let key = super::checks::last_key(path);
        let secret_key = secret::SECRET_KEYS.contains(&key.as_str())
            || key.eq_ignore_ascii_case("authorization");
        let url_password = url::Url::parse(text).is_ok_and(|u| u.password().is_some());
        if secret_key || url_password {
            let what = if url_password {
                "a password in a URL"
            } else {
                "a secret"
            };
            self.findings.push(
                Finding::warning(
                    Code::InlineSecret,
                    Location::Path {
                        path: path.clone(),
                        needle: None,
                    },
                    format!("`{key}` holds {what} written into the file"),
                )
                .with_hint(format!(
                    "take it from the environment: `{key} = \"${{VARIABLE}}\"`"
                )),
            );
        }
    }
}

fn syntax_finding(e: &toml::de::Error) -> Finding {
    let span = e.span().unwrap_or(0..0);
    let message = e.message().trim().replace('\n', "; ");
    Finding::error(
        Code::Syntax,
        Location::Span(span),
        format!("TOML syntax: {message}"),
    )
    .with_hint("fix the TOML syntax at this place; strings need quotes, tables `[name]`")
}

/// Turns serde's error for a section into a finding with a stable code and a hint.
pub fn serde_finding(e: &toml::de::Error, fallback: Range<usize>) -> Finding {
    let message = e.message().trim();
    let span = e.span().unwrap_or(fallback);
    let quoted = backticked(message);
    let location = Location::Span(span);
    if message.starts_with("unknown field") {
        let key = quoted.first().cloned().unwrap_or_default();
        let known: Vec<&str> = quoted.iter().skip(1).map(String::as_str).collect();
        let hint = match did_you_mean(&key, known.iter().copied()) {
            Some(near) => format!("did you mean `{near}`?"),
            None if known.is_empty() => "this table takes no keys here; remove it".to_string(),
            None => format!("remove it, or use one of: {}", known.join(", ")),
        };
        return Finding::error(Code::UnknownKey, location, format!("unknown key `{key}`"))
            .with_hint(hint);
    }
    if message.starts_with("missing field") {
        let key = quoted.first().cloned().unwrap_or_default();
        return Finding::error(
            Code::MissingKey,
            location,
            format!("missing required key `{key}`"),
        )
        .with_hint(format!(
            "add `{key} = ...` to this table; see docs/configuration.md"
        ));
    }
    if message.starts_with("unknown variant") {
        let value = quoted.first().cloned().unwrap_or_default();
        let known: Vec<&str> = quoted.iter().skip(1).map(String::as_str).collect();
        let hint = match did_you_mean(&value, known.iter().copied()) {
            Some(near) => format!("did you mean `{near}`? allowed: {}", known.join(", ")),
            None => format!("allowed: {}", known.join(", ")),
        };
        return Finding::error(
            Code::InvalidValue,
            location,
            format!("`{value}` is not allowed here"),
        )
        .with_hint(hint);
    }
    if message.starts_with("invalid type") {
        return Finding::error(
            Code::InvalidType,
            location,
            message.replace("invalid type: ", "wrong type: "),
        )
        .with_hint("check the value's type: strings in quotes, numbers without");
    }
    Finding::error(Code::InvalidValue, location, message.to_string())
}

/// The words between backticks in a serde message, in order.
fn backticked(message: &str) -> Vec<String> {
    message
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}
