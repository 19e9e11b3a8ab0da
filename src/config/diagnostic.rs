//! Findings about configuration files and how they are shown: like a compiler, with
//! `file:line:column`, the source line, a caret under the problem, and a hint that says
//! what to do. Also as JSON Lines for machines.
//!
//! Validation speaks in [`KeyPath`]s (`consumer.retry.max_attempts`, `target[1].url`);
//! the file's span index turns a path into a line and column when the finding is shown,
//! so the pure validation stage never handles byte offsets.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::secret::redact_line;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Stable machine codes for every kind of finding. They appear in `--format json`, in
/// the admin API and in tests, so they never change once released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// The path does not exist or cannot be read.
    Unreadable,
    /// The entry is not a regular file (a FIFO, a socket, a directory, a device).
    NotARegularFile,
    /// The file is larger than a configuration file can sensibly be.
    FileTooLarge,
    /// The file is not UTF-8 text.
    NotUtf8,
    /// The file holds nothing.
    EmptyFile,
    /// A directory holds no pipeline file.
    NoPipelines,
    /// TOML syntax error.
    Syntax,
    /// A key that wald does not know; never silently ignored.
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value of the wrong TOML type.
    InvalidType,
    /// A value of the right type that is not allowed.
    InvalidValue,
    /// `type = "..."` names no known backend, target or store.
    UnknownType,
    /// `${VAR}` names a variable that is not set and has no default.
    MissingEnvVar,
    /// The namespace name breaks `[a-z0-9][a-z0-9_-]{0,63}`.
    InvalidNamespace,
    /// Two files declare the same namespace.
    DuplicateNamespace,
    /// Two targets of one namespace share a name.
    DuplicateTarget,
    /// Retry policy bounds that contradict each other.
    InvalidRetry,
    /// Batch size, linger or concurrency out of range.
    InvalidBatch,
    /// A URL that does not parse or has the wrong scheme.
    InvalidUrl,
    /// A placeholder in a SQL statement or key template that wald cannot fill.
    UnknownPlaceholder,
    /// A value beyond what the chosen backend or target accepts.
    BackendLimit,
    /// The namespace has neither API keys nor `public = true`.
    NoAuth,
    /// A namespace without targets: messages are logged but delivered nowhere.
    NoTargets,
    /// A Postgres statement that does not use the message id cannot be idempotent.
    NotIdempotent,
    /// A secret written into the file instead of `${VAR}`.
    InlineSecret,
    /// `validate --connect`: a backend, target or store could not be reached.
    Unreachable,
    /// `[source] schema` names a file that cannot be read or is not a JSON Schema.
    InvalidSchema,
    /// A `filter` or `transform` that does not compile.
    InvalidExpression,
    /// A `[[test]]` case that does not hold (`wald validate`).
    TestFailed,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unreadable => "unreadable",
            Code::NotARegularFile => "not_a_regular_file",
            Code::FileTooLarge => "file_too_large",
            Code::NotUtf8 => "not_utf8",
            Code::EmptyFile => "empty_file",
            Code::NoPipelines => "no_pipelines",
            Code::Syntax => "syntax",
            Code::UnknownKey => "unknown_key",
            Code::MissingKey => "missing_key",
            Code::InvalidType => "invalid_type",
            Code::InvalidValue => "invalid_value",
            Code::UnknownType => "unknown_type",
            Code::MissingEnvVar => "missing_env_var",
            Code::InvalidNamespace => "invalid_namespace",
            Code::DuplicateNamespace => "duplicate_namespace",
            Code::DuplicateTarget => "duplicate_target",
            Code::InvalidRetry => "invalid_retry",
            Code::InvalidBatch => "invalid_batch",
            Code::InvalidUrl => "invalid_url",
            Code::UnknownPlaceholder => "unknown_placeholder",
            Code::BackendLimit => "backend_limit",
            Code::NoAuth => "no_auth",
            Code::NoTargets => "no_targets",
            Code::NotIdempotent => "not_idempotent",
            Code::InlineSecret => "inline_secret",
            Code::Unreachable => "unreachable",
            Code::InvalidSchema => "invalid_schema",
            Code::InvalidExpression => "invalid_expression",
            Code::TestFailed => "test_failed",
        }
    }

    /// Findings that mean the check could not run at all (exit code 2), as opposed to
    /// a file that was read and found wrong (exit code 1).
    pub fn is_could_not_run(self) -> bool {
        matches!(self, Code::Unreadable)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One step of a [`KeyPath`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Where a value sits in a file: `target[1].url`. The root is the empty path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.into()));
        next
    }

    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }

    pub fn parent(&self) -> Option<Self> {
        let mut parent = self.clone();
        parent.0.pop().map(|_| parent)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Where in a file a finding points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// The whole file (it could not be read, or is empty).
    File,
    /// A byte range of the file's text, as the TOML parser reports it.
    Span(Range<usize>),
    /// A key's value; `needle`, when given, is text inside the value to point at (a
    /// placeholder in a statement, a variable in `${...}`).
    Path {
        path: KeyPath,
        needle: Option<String>,
    },
    /// A key itself rather than its value (an unknown key, a duplicate name).
    Key(KeyPath),
}

/// A problem found in one file, before it is given a line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub hint: Option<String>,
    pub location: Location,
}

impl Finding {
    pub fn error(code: Code, location: Location, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            hint: None,
            location,
        }
    }

    pub fn warning(code: Code, location: Location, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, location, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A finding placed in its file: what `validate` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub hint: Option<String>,
    /// The offending line, secrets masked; not part of the JSON form.
    #[serde(skip)]
    pub source_line: Option<String>,
    /// Where the caret starts in `source_line` (1-based); differs from `column` when
    /// a long line is shown in part.
    #[serde(skip)]
    pub caret_column: usize,
    /// How many columns the caret underlines.
    #[serde(skip)]
    pub width: usize,
}

/// Longest part of a source line that is shown, in characters.
const MAX_EXCERPT: usize = 100;

/// The part of `line` around `column` that is shown, and the caret's column in it.
fn excerpt(line: &str, column: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= MAX_EXCERPT {
        return (line.to_string(), column);
    }
    let start = column
        .saturating_sub(MAX_EXCERPT / 2)
        .min(chars.len().saturating_sub(MAX_EXCERPT));
    let end = (start + MAX_EXCERPT).min(chars.len());
    let shown: String = chars[start..end]
        .iter()
        .map(|c| {
            if c.is_control() && *c != '\t' {
                '\u{fffd}'
            } else {
                *c
            }
        })
        .collect();
    let prefix = if start > 0 { "..." } else { "" };
    let suffix = if end < chars.len() { "..." } else { "" };
    (
        format!("{prefix}{shown}{suffix}"),
        column - start + prefix.len(),
    )
}

impl Diagnostic {
    /// A finding about a path that has no text to point into (unreadable, no files).
    pub fn for_path(path: &Path, finding: Finding) -> Self {
        Self {
            file: path.to_path_buf(),
            line: None,
            column: None,
            severity: finding.severity,
            code: finding.code,
            message: finding.message,
            hint: finding.hint,
            source_line: None,
            caret_column: 0,
            width: 0,
        }
    }

    /// Places a finding at `span` of `text`.
    pub fn at_span(path: &Path, text: &str, span: Range<usize>, finding: Finding) -> Self {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = text[start..]
            .find('\n')
            .map(|i| start + i)
            .unwrap_or(text.len());
        let line_text = text[line_start..line_end].trim_end_matches('\r');
        let line = text[..line_start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let end = floor_char_boundary(text, span.end.clamp(start, line_end.max(start)));
        let width = text[start..end].chars().count().max(1);
        let (source_line, caret_column) = excerpt(&redact_line(line_text), column);
        Self {
            line: Some(line),
            column: Some(column),
            source_line: Some(source_line),
            caret_column,
            width: width.min(MAX_EXCERPT),
            ..Self::for_path(path, finding)
        }
    }

    /// The human form: header, `--> file:line:column`, the line with a caret, the hint.
    pub fn render(&self) -> String {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!("{label}[{}]: {}\n", self.code, self.message);
        let place = match (self.line, self.column) {
            (Some(line), Some(column)) => format!("{}:{line}:{column}", self.file.display()),
            _ => self.file.display().to_string(),
        };
        let gutter = self.line.map(|l| l.to_string().len()).unwrap_or(1);
        let pad = " ".repeat(gutter);
        out.push_str(&format!("{pad}--> {place}\n"));
        if let (Some(line), Some(text)) = (self.line, &self.source_line) {
            out.push_str(&format!("{pad} |\n{line} | {text}\n"));
            let indent: String = text
                .chars()
                .take(self.caret_column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("{pad} | {indent}{}\n", "^".repeat(self.width)));
        }
        if let Some(hint) = &self.hint {
            out.push_str(&format!("{pad} = hint: {hint}\n"));
        }
        out
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(distance, c)| *distance <= (c.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_become_lines_and_columns() {
        let text = "namespace = \"a\"\n[consumer]\nbatch_size = 0\n";
        let start = text.find("0\n").unwrap();
        let d = Diagnostic::at_span(
            Path::new("a.toml"),
            text,
            start..start + 1,
            Finding::error(Code::InvalidBatch, Location::File, "too small"),
        );
        assert_eq!((d.line, d.column), (Some(3), Some(14)));
        let rendered = d.render();
        assert!(rendered.contains("a.toml:3:14"), "{rendered}");
        assert!(rendered.contains("3 | batch_size = 0"), "{rendered}");
        assert!(rendered.contains("  |              ^\n"), "{rendered}");
    }

    #[test]
    fn long_lines_are_shown_around_the_column() {
        let text = format!("a = \"{}\"", "x".repeat(500));
        let d = Diagnostic::at_span(
            Path::new("a.toml"),
            &text,
            300..301,
            Finding::error(Code::Syntax, Location::File, "bad"),
        );
        assert_eq!(d.column, Some(301));
        let shown = d.source_line.clone().unwrap();
        assert!(
            shown.starts_with("...") && shown.ends_with("..."),
            "{shown}"
        );
        assert!(shown.chars().count() <= MAX_EXCERPT + 6);
        assert_eq!(shown.chars().nth(d.caret_column - 1), Some('x'));
    }

    #[test]
    fn typos_get_a_suggestion() {
        let keys = ["max_attempts", "initial_backoff", "max_backoff"];
        assert_eq!(did_you_mean("max_attemps", keys), Some("max_attempts"));
        assert_eq!(did_you_mean("colour", keys), None);
    }

    #[test]
    fn key_paths_read_like_toml() {
        let path = KeyPath::root().key("target").index(1).key("url");
        assert_eq!(path.to_string(), "target[1].url");
        assert_eq!(path.parent().unwrap().to_string(), "target[1]");
    }
}
