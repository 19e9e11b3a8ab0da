//! How the subcommands print: a plan, a validation summary, diagnostics.

use crate::config::diagnostic::{Diagnostic, Severity};
use crate::pipeline::LoadReport;

/// A plan answer, as a person reads it.
pub(super) fn render_plan(plan: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let list = |key: &str| plan[key].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "against generation {}", plan["generation"]);
    for d in list("blocked_by") {
        let _ = writeln!(
            out,
            "! {}: {} (nothing would be applied)",
            text(&d["file"]),
            text(&d["message"])
        );
    }
    for a in list("added") {
        let _ = writeln!(
            out,
            "+ add     {} ({})",
            text(&a["namespace"]),
            text(&a["file"])
        );
    }
    for c in list("changed") {
        let mut effects = Vec::new();
        if c["replaces_backend"] == true {
            effects.push("replaces the backend");
        }
        if c["restarts_consumer"] == true {
            effects.push("restarts the consumer");
        }
        let effects = if effects.is_empty() {
            "applies in place".to_string()
        } else {
            effects.join(", ")
        };
        let _ = writeln!(
            out,
            "~ change  {} ({}): {effects}",
            text(&c["namespace"]),
            text(&c["file"])
        );
        for k in c["keys"].as_array().cloned().unwrap_or_default() {
            let side = |v: &serde_json::Value| {
                if v.is_null() {
                    "(none)".to_string()
                } else {
                    v.to_string()
                }
            };
            let _ = writeln!(
                out,
                "    {}: {} -> {}",
                text(&k["key"]),
                side(&k["from"]),
                side(&k["to"])
            );
        }
    }
    for r in list("removed") {
        let _ = writeln!(out, "- remove  {} (its data stays on disk)", text(&r));
    }
    for q in list("quarantined") {
        let keeps = match (&q["namespace"], q["keeps_running"] == true) {
            (serde_json::Value::String(n), true) => format!("; `{n}` keeps running as it is"),
            _ => String::new(),
        };
        let _ = writeln!(out, "! invalid {}{keeps}", text(&q["file"]));
        for e in q["errors"].as_array().cloned().unwrap_or_default() {
            let _ = writeln!(
                out,
                "    {}:{}:{}: error[{}]: {}",
                text(&e["file"]),
                e["line"].as_u64().unwrap_or(0),
                e["column"].as_u64().unwrap_or(0),
                text(&e["code"]),
                text(&e["message"]),
            );
            if let Some(hint) = e["hint"].as_str() {
                let _ = writeln!(out, "      hint: {hint}");
            }
        }
    }
    let _ = writeln!(
        out,
        "plan: {} to add, {} to change, {} to remove, {} unchanged, {} invalid",
        list("added").len(),
        list("changed").len(),
        list("removed").len(),
        list("unchanged").len(),
        list("quarantined").len() + list("blocked_by").len(),
    );
    out
}

pub(super) fn summary(report: &LoadReport, connected: bool) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let (errors, warnings) = (report.errors(), report.warnings());
    let files = plural(report.files.len(), "file");
    let names: Vec<&str> = report
        .pipelines
        .iter()
        .map(|p| p.config.namespace.as_str())
        .collect();
    let valid = format!(
        "{} valid{}",
        plural(names.len(), "namespace"),
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        }
    );
    let cases: usize = report.pipelines.iter().map(|p| p.config.tests.len()).sum();
    let reached = match (connected && errors == 0, cases) {
        (true, 0) => ", every backend and target reached".to_string(),
        (true, n) => format!(
            ", every backend and target reached, {} held",
            plural(n, "test case")
        ),
        (false, 0) => String::new(),
        (false, n) if errors == 0 => format!(", {} held", plural(n, "test case")),
        (false, _) => String::new(),
    };
    match (errors, warnings) {
        (0, 0) => format!("ok: {valid} in {files}{reached}"),
        (0, w) => format!("ok: {valid} in {files}{reached}, {}", plural(w, "warning")),
        (e, w) => format!(
            "invalid: {} and {} in {files}; {valid}",
            plural(e, "error"),
            plural(w, "warning")
        ),
    }
}

pub(super) fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics.iter().filter(|d| d.severity == Severity::Error) {
        eprintln!("{}", d.render());
    }
}
