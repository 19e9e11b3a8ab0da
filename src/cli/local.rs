//! The subcommands that need no server: `validate` (a dry run of pipeline files, with
//! `--connect` reaching what they name) and `hash-key`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use sha2::Digest;

use crate::config::env;
use crate::pipeline::{self, LoadReport};

use super::args::*;
use super::render::*;

pub(super) fn validate(
    config_path: Option<&Path>,
    paths: Vec<PathBuf>,
    format: Format,
    deny_warnings: bool,
    connect: bool,
    sample: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let service_path = service_config_path(config_path);
    let (service, mut service_diagnostics) =
        crate::service::load_service(service_path.as_deref(), &env::process_env);
    let paths = pipeline_paths(service.as_ref(), paths);
    let mut report = pipeline::load_pipelines(&paths, &env::process_env);
    service_diagnostics.append(&mut report.diagnostics);
    report.diagnostics = service_diagnostics;
    for p in &report.pipelines {
        let failed = pipeline::sample::run_tests(p);
        report
            .diagnostics
            .extend(failed.into_iter().map(|f| p.source.place(f)));
    }

    if connect && report.errors() == 0 {
        let service = service.clone().unwrap_or_default();
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        let found = runtime.block_on(crate::pipeline::connect::check_all(
            &service,
            &report.pipelines,
        ));
        report.diagnostics.extend(found);
    }

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        Format::Human => {
            for d in &report.diagnostics {
                writeln!(out, "{}", d.render())?;
            }
            writeln!(out, "{}", summary(&report, connect))?;
        }
        Format::Json => {
            for d in &report.diagnostics {
                writeln!(out, "{}", serde_json::to_string(d)?)?;
            }
        }
    }
    let code = validate_exit_code(&report, deny_warnings);
    match sample {
        Some(sample) if code == 0 => run_samples(&report, sample, format, &mut out),
        _ => Ok(ExitCode::from(code)),
    }
}

/// `validate --sample`: each line of `file` through its namespace. 0 when every line
/// ran, 1 when one could not (not a write request, no such namespace), 2 when the file
/// cannot be read.
fn run_samples(
    report: &LoadReport,
    file: &Path,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return Ok(ExitCode::from(2));
        }
    };
    let name = file.display().to_string();
    let mut all_ran = true;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let sampled = crate::pipeline::sample::run(&report.pipelines, i + 1, line);
        all_ran &= sampled.ran();
        match format {
            Format::Human => write!(out, "{}", sampled.render(&name))?,
            Format::Json => {
                let mut json = serde_json::to_value(&sampled)?;
                json["sample"] = name.clone().into();
                writeln!(out, "{json}")?;
            }
        }
    }
    Ok(ExitCode::from(if all_ran { 0 } else { 1 }))
}

/// 0 valid, 1 invalid, 2 could not run.
pub fn validate_exit_code(report: &LoadReport, deny_warnings: bool) -> u8 {
    if report.could_not_run() {
        2
    } else if report.errors() > 0 || (deny_warnings && report.warnings() > 0) {
        1
    } else {
        0
    }
}

pub(super) fn hash_key(key: Option<String>, generate: bool) -> anyhow::Result<ExitCode> {
    let hash = |key: &str| hex::encode(sha2::Sha256::digest(key.as_bytes()));
    if generate {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
        let key = format!("wald_{}", hex::encode(bytes));
        writeln!(std::io::stdout(), "key:    {key}\nsha256: {}", hash(&key))?;
        return Ok(ExitCode::SUCCESS);
    }
    let key = match key {
        Some(key) => key,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the key from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    anyhow::ensure!(
        !key.is_empty(),
        "the key is empty; pass it as an argument, on standard input, or use --generate"
    );
    writeln!(std::io::stdout(), "{}", hash(&key))?;
    Ok(ExitCode::SUCCESS)
}
