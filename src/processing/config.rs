//! The processing keys of a pipeline file: `[[processor]]` steps and a target's
//! `filter` and `transform`, each a jq expression compiled when the file is read.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::jq::{CompileError, Program};
use crate::config::checks::Checks;
use crate::config::diagnostic::{Code, Finding, KeyPath, Location};

/// A jq expression as written, and its program once compiled.
#[derive(Clone, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub struct Expression {
    code: String,
    compiled: Result<Arc<Program>, Vec<CompileError>>,
}

impl From<String> for Expression {
    fn from(code: String) -> Self {
        let compiled = Program::compile(&code).map(Arc::new);
        Self { code, compiled }
    }
}

impl From<Expression> for String {
    fn from(expression: Expression) -> Self {
        expression.code
    }
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expression").field(&self.code).finish()
    }
}

impl Expression {
    /// The program, when it compiled (a pipeline that runs has only those).
    pub fn program(&self) -> Option<&Arc<Program>> {
        self.compiled.as_ref().ok()
    }

    /// Reports each compile error at its place inside the string at `at`.
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        let Err(errors) = &self.compiled else {
            return;
        };
        for error in errors {
            // The text from the error to the end of its line finds the place in the
            // file's string (escapes aside); at the very end, the value is the place.
            let rest = self.code.get(error.offset..).unwrap_or("");
            let needle = rest.lines().next().map(str::trim_end).unwrap_or("");
            let needle = (!needle.is_empty()).then(|| needle.chars().take(60).collect());
            checks.push(
                Finding::error(
                    Code::InvalidExpression,
                    Location::Path {
                        path: at.clone(),
                        needle,
                    },
                    error.message.clone(),
                )
                .with_hint(error.hint),
            );
        }
    }
}

/// `[[processor]]`: a step every message of the namespace goes through, in order,
/// before its targets' own `filter` and `transform`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Shown in errors and status. Default: `processor[i]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Keeps the message when true. Exactly one of `filter` and `transform`.
    #[serde(default)]
    pub filter: Option<Expression>,
    /// What the message becomes.
    #[serde(default)]
    pub transform: Option<Expression>,
}

impl ProcessorConfig {
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        match (&self.filter, &self.transform) {
            (Some(filter), None) => filter.validate(checks, &at.key("filter")),
            (None, Some(transform)) => transform.validate(checks, &at.key("transform")),
            _ => checks.error(
                Code::InvalidValue,
                at,
                "a processor has exactly one of `filter` and `transform`",
                "split it into two `[[processor]]` steps, in the order they should run",
            ),
        }
    }
}
