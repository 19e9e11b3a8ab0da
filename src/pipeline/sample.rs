//! A dry run of sample messages (`wald validate --sample FILE.jsonl`), and the
//! `[[test]]` cases of a pipeline file, which are samples with what each target
//! should make of them. Each line, a
//! write request as the API takes it, goes through its namespace as if written: the
//! write rules and the schema at ingest, then, for each target it is for, the
//! namespace's `[[processor]]` steps and the target's filter and transform, and what
//! the target would be sent. Nothing is written and nothing is reached. A sample's ids
//! are `sample-<line>` and its timestamp 0, so that the output is the same every run.

use serde::Serialize;
use serde_json::Value;

use super::LoadedPipeline;
use super::config::TestCase;
use crate::config::diagnostic::{Code, Finding, KeyPath, Location};
use crate::message::{HEADER_MESSAGE_ID, HEADER_TARGETS, StoredRecord};
use crate::processing::{Processed, Processing};
use crate::source::WriteError;
use crate::source::record::{MessageIn, to_record};
use crate::source::schema::Violation;
use crate::targets::Message;

/// What one sample line came to.
#[derive(Debug, Serialize)]
pub struct Sampled {
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(flatten)]
    pub outcome: SampleOutcome,
}

/// Refused at ingest, or what each target would get.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SampleOutcome {
    /// The line is not a write request, or names no namespace of the files.
    Unreadable { error: String },
    /// The write would be refused: nothing appended.
    Refused {
        code: &'static str,
        error: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        violations: Vec<Violation>,
    },
    /// Accepted; each target's part.
    Accepted { targets: Vec<TargetPart> },
}

/// One target's part of an accepted sample.
#[derive(Debug, Serialize)]
pub struct TargetPart {
    pub target: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(flatten)]
    pub part: Part,
}

#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Part {
    /// What the target would be sent.
    Send { sends: Value },
    /// A filter kept it from the target.
    Skipped { by: String },
    /// Processing failed on it: it would go to the DLQ.
    Failed { error: String },
    /// The write names other targets.
    NotAddressed,
}

/// Runs sample `text`, line `line` of its file, against `pipelines`. A sample without
/// `namespace` goes to the only pipeline, if there is one.
pub fn run(pipelines: &[LoadedPipeline], line: usize, text: &str) -> Sampled {
    let unreadable = |namespace: Option<String>, error: String| Sampled {
        line,
        namespace,
        outcome: SampleOutcome::Unreadable { error },
    };
    let message: MessageIn = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(e) => return unreadable(None, format!("not a write request: {e}")),
    };
    let pipeline = match (&message.namespace, pipelines) {
        (Some(name), _) => pipelines.iter().find(|p| &p.config.namespace == name),
        (None, [only]) => Some(only),
        (None, _) => None,
    };
    let Some(pipeline) = pipeline else {
        let error = match &message.namespace {
            Some(name) => format!("no pipeline file given declares namespace `{name}`"),
            None => "the sample names no `namespace`, and more than one pipeline is given".into(),
        };
        return unreadable(message.namespace.clone(), error);
    };
    let config = &pipeline.config;
    let id = format!("sample-{line}");
    let namespace = Some(config.namespace.clone());
    let (record, _) = match to_record(config, message, &id, None) {
        Ok(made) => made,
        Err(e) => {
            let (code, violations) = match e {
                WriteError::SchemaViolation(ref v) => ("schema_violation", v.clone()),
                WriteError::TooLarge(_) => ("message_too_large", Vec::new()),
                _ => ("invalid_message", Vec::new()),
            };
            return Sampled {
                line,
                namespace,
                outcome: SampleOutcome::Refused {
                    code,
                    error: e.to_string(),
                    violations,
                },
            };
        }
    };
    let mut headers = record.headers;
    for (name, value) in &mut headers {
        if name == HEADER_MESSAGE_ID {
            *value = id.clone().into_bytes();
        }
    }
    let stored = StoredRecord {
        offset: line.saturating_sub(1) as u64,
        timestamp_ms: 0,
        key: record.key,
        headers,
        payload: record.payload,
    };
    let addressed: Option<Vec<&str>> = stored
        .header(HEADER_TARGETS)
        .map(|t| t.split(',').collect());
    let message = Message::of_record(&config.namespace, &stored);
    let targets = config
        .targets
        .iter()
        .map(|t| {
            let part = if addressed
                .as_ref()
                .is_some_and(|a| !a.contains(&t.name.as_str()))
            {
                Part::NotAddressed
            } else {
                let processing = Processing::new(&config.processors, t);
                match processing.apply(message.clone()) {
                    Processed::Deliver(m) => Part::Send {
                        sends: t.kind.preview(&m),
                    },
                    Processed::Skipped(by) => Part::Skipped { by },
                    Processed::Failed(error) => Part::Failed { error },
                }
            };
            TargetPart {
                target: t.name.clone(),
                kind: t.kind.kind(),
                part,
            }
        })
        .collect();
    Sampled {
        line,
        namespace,
        outcome: SampleOutcome::Accepted { targets },
    }
}

impl Sampled {
    /// The human form: a heading line, then a line or a block per target.
    pub fn render(&self, file: &str) -> String {
        let place = format!("{file}:{}", self.line);
        let namespace = self.namespace.as_deref().unwrap_or("-");
        match &self.outcome {
            SampleOutcome::Unreadable { error } => format!("{place}: error: {error}\n"),
            SampleOutcome::Refused {
                code,
                error,
                violations,
            } => {
                let mut out = format!("{place}: {namespace}: refused ({code}): {error}\n");
                for v in violations {
                    let pointer = if v.pointer.is_empty() {
                        "(payload)"
                    } else {
                        &v.pointer
                    };
                    out.push_str(&format!("    {pointer}: {}\n", v.message));
                }
                out
            }
            SampleOutcome::Accepted { targets } => {
                let mut out = format!("{place}: {namespace}: accepted\n");
                for t in targets {
                    let head = format!("  {} ({})", t.target, t.kind);
                    match &t.part {
                        Part::Send { sends } => {
                            out.push_str(&format!("{head}: sends\n"));
                            let pretty = serde_json::to_string_pretty(sends).unwrap_or_default();
                            for line in pretty.lines() {
                                out.push_str(&format!("      {line}\n"));
                            }
                        }
                        Part::Skipped { by } => out.push_str(&format!("{head}: skipped by {by}\n")),
                        Part::Failed { error } => {
                            out.push_str(&format!("{head}: fails, to the DLQ: {error}\n"))
                        }
                        Part::NotAddressed => {
                            out.push_str(&format!("{head}: not addressed by the write\n"))
                        }
                    }
                }
                out
            }
        }
    }

    /// Whether the line could be run at all.
    pub fn ran(&self) -> bool {
        !matches!(self.outcome, SampleOutcome::Unreadable { .. })
    }
}

/// Runs the `[[test]]` cases of `pipeline`: a finding at each case that does not hold,
/// saying what differs. A case's ids are `sample-<n>`, `n` its place among the cases.
pub fn run_tests(pipeline: &LoadedPipeline) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (i, case) in pipeline.config.tests.iter().enumerate() {
        let sampled = run(
            std::slice::from_ref(pipeline),
            i + 1,
            &case.input.to_string(),
        );
        let problems = check(case, &sampled);
        if problems.is_empty() {
            continue;
        }
        findings.push(
            Finding::error(
                Code::TestFailed,
                Location::Key(KeyPath::root().key("test").index(i)),
                format!(
                    "test `{}` does not hold:\n  {}",
                    case.name,
                    problems.join("\n  ")
                ),
            )
            .with_hint(
                "`wald validate --sample` with the input on a line shows all that the targets get",
            ),
        );
    }
    findings
}

/// What differs between `case` and what its input came to.
fn check(case: &TestCase, sampled: &Sampled) -> Vec<String> {
    let targets = match (&sampled.outcome, &case.refused) {
        (SampleOutcome::Unreadable { error }, _) => return vec![format!("the input: {error}")],
        (SampleOutcome::Refused { code, .. }, Some(expected)) if code == expected => {
            return Vec::new();
        }
        (SampleOutcome::Refused { code, error, .. }, _) => {
            return vec![format!("refused ({code}): {error}")];
        }
        (SampleOutcome::Accepted { .. }, Some(expected)) => {
            return vec![format!(
                "expected a refusal ({expected}), the write was accepted"
            )];
        }
        (SampleOutcome::Accepted { targets }, None) => targets,
    };
    let mut problems = Vec::new();
    for (name, expected) in &case.expect {
        let Some(part) = targets.iter().find(|t| &t.target == name) else {
            problems.push(format!("the namespace has no target `{name}`"));
            continue;
        };
        let got = match &part.part {
            Part::Send { sends } => sends.clone(),
            Part::Skipped { by } => Value::from(format!("skipped (by {by})")),
            Part::Failed { error } => Value::from(format!("failed: {error}")),
            Part::NotAddressed => Value::from("not_addressed"),
        };
        let outcome_holds = match (expected.as_str(), &part.part) {
            (Some("skipped"), Part::Skipped { .. })
            | (Some("failed"), Part::Failed { .. })
            | (Some("not_addressed"), Part::NotAddressed) => true,
            (Some(_), _) => false,
            (None, Part::Send { sends }) => {
                differences(name, expected, sends, &mut problems);
                true
            }
            (None, _) => false,
        };
        if !outcome_holds {
            problems.push(format!("{name}: expected {expected}, got {got}"));
        }
    }
    problems
}

/// Each key of `expected` whose value differs in `got`, at its path.
fn differences(path: &str, expected: &Value, got: &Value, out: &mut Vec<String>) {
    match (expected, got) {
        (Value::Object(expected), Value::Object(got)) => {
            for (key, value) in expected {
                match got.get(key) {
                    Some(other) => differences(&format!("{path}.{key}"), value, other, out),
                    None => out.push(format!("{path}.{key}: expected {value}, got nothing")),
                }
            }
        }
        _ if expected == got => {}
        _ => out.push(format!("{path}: expected {expected}, got {got}")),
    }
}
