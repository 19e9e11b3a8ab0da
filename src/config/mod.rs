//! The configuration toolkit, the ground that every table's code builds on: reading a
//! TOML file with the place of every key ([`file`]), `${VAR}` expansion ([`env`]),
//! human durations and sizes ([`units`]), secrets that are never printed ([`secret`]),
//! findings placed at `file:line:column` and rendered ([`diagnostic`]), and `wald.toml`,
//! the service's own settings ([`service`]); [`checks`], what every table's validation
//! writes its findings with, and [`policy`], the retry and rate-limit policies that
//! several tables share.
//!
//! A pipeline file as a whole, its tables put together, loaded and compared, is
//! [`crate::pipeline`]; each table's own keys are read and checked beside its code.

pub mod checks;
pub mod diagnostic;
pub mod env;
pub mod file;
pub mod policy;
pub mod secret;
pub mod service;
pub mod units;

use std::path::Path;

use diagnostic::{Diagnostic, Severity};
use env::Lookup;
use file::Document;
use service::ServiceConfig;

/// Loads `wald.toml`; without a file, the defaults.
pub fn load_service(
    path: Option<&Path>,
    lookup: Lookup,
) -> (Option<ServiceConfig>, Vec<Diagnostic>) {
    let Some(path) = path else {
        return (Some(ServiceConfig::default()), Vec::new());
    };
    let rejected = |r: Box<file::Rejected>| -> Vec<Diagnostic> {
        r.findings.into_iter().map(|f| r.source.place(f)).collect()
    };
    let text = match file::read_text(path) {
        Ok(text) => text,
        Err(r) => return (None, rejected(r)),
    };
    let mut doc = match Document::parse(path, &text, lookup) {
        Ok(doc) => doc,
        Err(r) => return (None, rejected(r)),
    };
    let config = service::parse_service(&mut doc);
    let mut findings = std::mem::take(&mut doc.findings);
    if let Some(config) = &config {
        findings.extend(config.validate());
    }
    let has_errors = findings.iter().any(|f| f.severity == Severity::Error);
    let diagnostics = findings.into_iter().map(|f| doc.source.place(f)).collect();
    (config.filter(|_| !has_errors), diagnostics)
}
