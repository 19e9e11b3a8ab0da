//! A pipeline file as a whole: its tables put together ([`config`]), checked together
//! ([`validate`]), a set of files loaded at once ([`load_pipelines`]), and what a reload
//! would change against what runs ([`diff`]).
//!
//! Three stages, as in the design: **parse** ([`crate::config::file`]: read, TOML,
//! `${VAR}`, serde types as written in [`config`] and each table's own file) ->
//! **validate** ([`validate`]: pure, returns every finding of every file) -> **build**
//! (the runtime connects and opens files; `validate --connect` runs its checks alone).

pub mod config;
pub mod connect;
pub mod diff;
pub mod sample;
pub mod validate;

use std::path::{Path, PathBuf};

use crate::config::diagnostic::{Code, Diagnostic, Finding, KeyPath, Location, Severity};
use crate::config::env::Lookup;
use crate::config::file::{self, Document, SourceText};
use config::PipelineConfig;

/// A pipeline file that parsed and validated without errors.
#[derive(Clone, Debug)]
pub struct LoadedPipeline {
    pub source: SourceText,
    pub config: PipelineConfig,
}

/// What loading a set of pipeline files gave: the good ones, and every finding.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub pipelines: Vec<LoadedPipeline>,
    /// Files read, in the order they were loaded.
    pub files: Vec<PathBuf>,
    pub diagnostics: Vec<Diagnostic>,
    /// Files rejected for errors, with the namespace each declares where that much
    /// could be read: a reload keeps that namespace as it runs.
    pub rejected: Vec<(PathBuf, Option<String>)>,
}

impl LoadReport {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }

    /// Whether some path could not be read at all.
    pub fn could_not_run(&self) -> bool {
        self.diagnostics.iter().any(|d| d.code.is_could_not_run())
    }
}

/// The pipeline files that `paths` name: a file as given, a directory's `*.toml`
/// entries (not hidden ones; one that is not a regular file is reported when read),
/// each file once.
pub fn collect_files(paths: &[PathBuf], diagnostics: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut add = |file: PathBuf, files: &mut Vec<PathBuf>| {
        let identity = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
        if seen.insert(identity) {
            files.push(file);
        }
    };
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => match read_dir_pipelines(path) {
                Ok(found) if found.is_empty() => diagnostics.push(Diagnostic::for_path(
                    path,
                    Finding::error(Code::NoPipelines, Location::File, "no pipeline files (*.toml) in this directory")
                        .with_hint("add a file such as `orders.toml` declaring `namespace = \"orders\"`; see pipelines/examples/"),
                )),
                Ok(found) => found.into_iter().for_each(|f| add(f, &mut files)),
                Err(e) => diagnostics.push(Diagnostic::for_path(path, file::unreadable(&e))),
            },
            Ok(_) => add(path.clone(), &mut files),
            Err(e) => diagnostics.push(Diagnostic::for_path(path, file::unreadable(&e))),
        }
    }
    files
}

fn read_dir_pipelines(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        // Whatever the entry is: an entry that is not a regular file (a directory, a
        // FIFO) is reported when it is read, a broken or looping link too.
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// Loads, parses and validates every pipeline file that `paths` name.
pub fn load_pipelines(paths: &[PathBuf], lookup: Lookup) -> LoadReport {
    let mut diagnostics = Vec::new();
    let files = collect_files(paths, &mut diagnostics)
        .into_iter()
        .map(|path| {
            let bytes = file::read_bytes(&path);
            (path, bytes)
        })
        .collect();
    let mut report = load_pipeline_set(files, lookup);
    diagnostics.append(&mut report.diagnostics);
    report.diagnostics = diagnostics;
    report
}

/// A pipeline file's path with its bytes, or why they could not be read.
pub type FileBytes = (PathBuf, Result<Vec<u8>, Box<file::Rejected>>);

/// Parses and validates a set of pipeline files given with their contents (or why they
/// could not be read), as if they were the whole pipelines directory.
pub fn load_pipeline_set(files: Vec<FileBytes>, lookup: Lookup) -> LoadReport {
    let mut report = LoadReport::default();
    let mut loaded: Vec<LoadedPipeline> = Vec::new();
    for (path, bytes) in files {
        let (source, config, findings) = match bytes.and_then(|bytes| file::text_of(&path, bytes)) {
            Ok(text) => load_pipeline_text(&path, &text, lookup),
            Err(rejected) => (rejected.source, None, rejected.findings),
        };
        let has_errors = findings.iter().any(|f| f.severity == Severity::Error);
        let mut placed: Vec<Diagnostic> = findings.into_iter().map(|f| source.place(f)).collect();
        placed.sort_by_key(|d| (d.line, d.column));
        report.diagnostics.extend(placed);
        report.files.push(path.clone());
        match (config, has_errors) {
            (Some(config), false) => loaded.push(LoadedPipeline { source, config }),
            (config, _) => report.rejected.push((path, config.map(|c| c.namespace))),
        }
    }
    // A namespace declared twice: every later file is in error and names the first.
    let duplicates = validate::validate_set(
        loaded
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.config.namespace.as_str())),
    );
    let mut rejected = vec![false; loaded.len()];
    for (index, finding, first) in duplicates {
        let first_place = loaded[first].source.place(finding.clone());
        let place = match (first_place.line, first_place.column) {
            (Some(line), Some(column)) => format!("{}:{line}:{column}", first_place.file.display()),
            _ => first_place.file.display().to_string(),
        };
        let finding = finding.with_hint(format!(
            "it is first declared at {place}; each namespace has exactly one file, so rename one or remove it"
        ));
        report.diagnostics.push(loaded[index].source.place(finding));
        rejected[index] = true;
    }
    for (pipeline, rejected) in loaded.into_iter().zip(rejected) {
        if rejected {
            let namespace = Some(pipeline.config.namespace.clone());
            report
                .rejected
                .push((pipeline.source.path.clone(), namespace));
        } else {
            report.pipelines.push(pipeline);
        }
    }
    report
}

/// Parses and validates the text of a pipeline file; `path` only names it.
pub fn load_pipeline_text(
    path: &Path,
    text: &str,
    lookup: Lookup,
) -> (SourceText, Option<PipelineConfig>, Vec<Finding>) {
    let mut doc = match Document::parse(path, text, lookup) {
        Ok(doc) => doc,
        Err(rejected) => return (rejected.source, None, rejected.findings),
    };
    if doc.root.get_ref().is_empty() {
        let finding = Finding::error(Code::EmptyFile, Location::File, "file declares nothing")
            .with_hint("a pipeline file needs at least `namespace`, `[source]` and one `[[target]]`; see docs/configuration.md");
        return (doc.source, None, vec![finding]);
    }
    let mut config = config::parse_pipeline(&mut doc);
    let mut findings = std::mem::take(&mut doc.findings);
    // The files a pipeline file names are read with it: a reload reads them again.
    if let Some(schema) = config.as_mut().and_then(|c| c.source.schema.as_mut())
        && let Err(e) = schema.load(path)
    {
        let at = KeyPath::root().key("source").key("schema");
        findings.push(
            Finding::error(Code::InvalidSchema, Location::Path { path: at, needle: None }, e)
                .with_hint("`schema` is a JSON Schema file, its path relative to this pipeline file's directory"),
        );
    }
    debug_assert!(
        config.is_some() || findings.iter().any(|f| f.severity == Severity::Error),
        "a pipeline that did not parse must say why"
    );
    if let Some(config) = &config {
        findings.extend(validate::validate_pipeline(config));
    }
    (doc.source, config, findings)
}
