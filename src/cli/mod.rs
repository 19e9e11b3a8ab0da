//! The `wald` subcommands. Each parses its arguments here and calls into the library;
//! exit codes are part of the interface (documented in `docs/operations.md`).

pub mod serve;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sha2::Digest;

use crate::config::diagnostic::{Diagnostic, Severity};
use crate::config::{self, env};
use crate::pipeline::{self, LoadReport};
use crate::service::ServiceConfig;

/// A write-ahead-log service: durable HTTP ingest, delivery to many targets, DLQ and replay.
#[derive(Debug, Parser)]
#[command(name = "wald", version, about)]
pub struct Cli {
    /// The service settings file. Default: `wald.toml` if it exists, else built-in defaults.
    #[arg(long, global = true, env = "WALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: the HTTP API and every namespace in the pipelines directory.
    Serve(ServeArgs),
    /// Check pipeline files without running anything (a dry run).
    ///
    /// Exit codes: 0 valid, 1 invalid (or warnings with --deny-warnings), 2 could not
    /// run (no such path, unreadable).
    Validate {
        /// Pipeline files and directories (a directory's *.toml). Default: the
        /// pipelines directory of wald.toml.
        paths: Vec<PathBuf>,
        /// `human` (like a compiler) or `json` (one object per finding per line).
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
        /// Also reach every backend, target and store (writes nothing to them).
        #[arg(long)]
        connect: bool,
    },
    /// Show what a reload of pipeline files would change on a running server (needs the
    /// admin key): per namespace added, changed (which keys, secrets as fingerprints,
    /// whether the consumer restarts) or removed, and every file's errors. Changes
    /// nothing.
    ///
    /// The files given are taken as the whole pipelines directory: a running namespace
    /// none of them declares shows as removed.
    ///
    /// Exit codes: 0 no change, 1 invalid files, 2 could not run (unreadable path, no
    /// answer, refused), 3 changes.
    Plan {
        /// Pipeline files and directories (a directory's *.toml). Default: the
        /// pipelines directory of wald.toml.
        paths: Vec<PathBuf>,
        /// `human` or `json` (the server's answer).
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// The server's base URL.
        #[arg(long, env = "WALD_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// The admin key.
        #[arg(long, env = "WALD_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
    },
    /// Write messages to a running server, and print each answer as a JSON line.
    ///
    /// Exit codes: 0 every message accepted, 1 a message refused, 2 no answer.
    Write(WriteArgs),
    /// Show a running server's health, or one namespace's status, as JSON.
    ///
    /// Exit codes: 0 running, 1 degraded, failed or no such namespace, 2 no answer.
    Status {
        /// The namespace; without it, every namespace's health.
        namespace: Option<String>,
        /// The server's base URL.
        #[arg(long, env = "WALD_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Show a write's transaction: each message's state per target, as JSON.
    ///
    /// Exit codes: 0 found, 1 unknown transaction or refused, 2 no answer.
    Tx {
        /// The `transaction_id` a write was answered with.
        id: String,
        /// The server's base URL.
        #[arg(long, env = "WALD_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Inspect and replay a namespace's dead-letter queue (needs the admin key).
    ///
    /// Exit codes: 0 done, 1 refused by the server, 2 no answer.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        /// The server's base URL.
        #[arg(
            long,
            env = "WALD_SERVER",
            default_value = "http://127.0.0.1:8080",
            global = true
        )]
        server: String,
        /// The admin key.
        #[arg(long, env = "WALD_ADMIN_KEY", hide_env_values = true, global = true)]
        admin_key: Option<String>,
    },
    /// Print the SHA-256 of an API key, as `api_keys_sha256` and `admin_key_sha256` take.
    ///
    /// The key is read from standard input when not given, so that it stays out of the
    /// shell history.
    HashKey {
        /// The key to hash.
        key: Option<String>,
        /// Make a new random key and print it with its hash.
        #[arg(long, conflicts_with = "key")]
        generate: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead-letter entries as JSON: target, attempts, errors, payload.
    List {
        namespace: String,
        /// Only this target's entries.
        #[arg(long)]
        target: Option<String>,
        /// `parked` (not replayed yet), `replayed` or `all`.
        #[arg(long, default_value = "parked")]
        state: String,
        /// Start at this dead-letter offset.
        #[arg(long)]
        from: Option<u64>,
        /// At most this many entries (up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Append parked entries to the log again, for the target that failed.
    Replay {
        namespace: String,
        /// Only these message ids (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Only this target's entries.
        #[arg(long)]
        target: Option<String>,
        /// Show what would be replayed, and replay nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replays per second.
        #[arg(long)]
        rate: Option<u32>,
    },
}

/// Settings of `wald serve` that override `wald.toml`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, instead of `listen`.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Pipelines directory, instead of `pipelines_dir`.
    #[arg(long)]
    pipelines: Option<PathBuf>,
    /// Data directory, instead of `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// What `wald write` sends, and where.
#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    /// The server's base URL.
    #[arg(long, env = "WALD_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The namespace's API key, if it has keys.
    #[arg(long, env = "WALD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The namespace; with a payload argument.
    #[arg(long, short, required_unless_present = "file")]
    namespace: Option<String>,
    /// The message's key.
    #[arg(long, short)]
    key: Option<String>,
    /// Deliver no sooner than this long from now ("10m").
    #[arg(long)]
    delay: Option<String>,
    /// The payload, as JSON.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    payload: Option<String>,
    /// A JSON Lines file of whole write requests (`{"namespace": ..., "payload": ...}`),
    /// sent one by one; `-` reads standard input.
    #[arg(long, conflicts_with_all = ["namespace", "key", "delay"])]
    file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(cli.config.as_deref(), args),
        Command::Validate {
            paths,
            format,
            deny_warnings,
            connect,
        } => validate(cli.config.as_deref(), paths, format, deny_warnings, connect),
        Command::HashKey { key, generate } => hash_key(key, generate),
        Command::Plan {
            paths,
            format,
            server,
            admin_key,
        } => plan(
            cli.config.as_deref(),
            paths,
            format,
            &server,
            admin_key.as_deref(),
        ),
        Command::Write(args) => write(args),
        Command::Status { namespace, server } => status(&server, namespace.as_deref()),
        Command::Tx { id, server } => transaction(&server, &id),
        Command::Dlq {
            action,
            server,
            admin_key,
        } => dlq(action, &server, admin_key.as_deref()),
    }
}

/// `--config`, or `wald.toml` when it exists.
fn service_config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit.map(Path::to_path_buf).or_else(|| {
        Path::new("wald.toml")
            .exists()
            .then(|| PathBuf::from("wald.toml"))
    })
}

/// The paths given, or the pipelines directory of `wald.toml`.
fn pipeline_paths(service: Option<&ServiceConfig>, paths: Vec<PathBuf>) -> Vec<PathBuf> {
    if !paths.is_empty() {
        return paths;
    }
    vec![service.map_or_else(|| PathBuf::from("pipelines"), |s| s.pipelines_dir.clone())]
}

fn plan(
    config_path: Option<&Path>,
    paths: Vec<PathBuf>,
    format: Format,
    server: &str,
    admin_key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use base64::Engine;
    let (service, _) = crate::service::load_service(
        service_config_path(config_path).as_deref(),
        &env::process_env,
    );
    let paths = pipeline_paths(service.as_ref(), paths);
    let mut problems = Vec::new();
    let files = pipeline::collect_files(&paths, &mut problems);
    let mut sent = Vec::new();
    for file in &files {
        match config::file::read_bytes(file) {
            Ok(bytes) => sent.push(serde_json::json!({
                "name": file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                "content_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
            })),
            Err(rejected) => problems.extend(
                rejected
                    .findings
                    .into_iter()
                    .map(|f| rejected.source.place(f)),
            ),
        }
    }
    if !problems.is_empty() {
        print_diagnostics(&problems);
        return Ok(ExitCode::from(2));
    }
    let url = format!("{}/api/v1/admin/plan", server.trim_end_matches('/'));
    let mut request = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "files": sent }));
    if let Some(key) = admin_key {
        request = request.bearer_auth(key);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let answer = runtime.block_on(async {
        let response = request.send().await?;
        let ok = response.status().is_success();
        let body = response
            .json::<serde_json::Value>()
            .await
            .unwrap_or_default();
        Ok::<_, reqwest::Error>((ok, body))
    });
    let (ok, body) = match answer {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("error: no answer from {url}: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if !ok {
        eprintln!(
            "error: {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("the server refused the plan")
        );
        return Ok(ExitCode::from(2));
    }
    match format {
        Format::Json => writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&body)?
        )?,
        Format::Human => write!(std::io::stdout(), "{}", render_plan(&body))?,
    }
    let count = |key: &str| body[key].as_array().map_or(0, Vec::len);
    let code = if count("quarantined") + count("blocked_by") > 0 {
        1
    } else if count("added") + count("changed") + count("removed") > 0 {
        3
    } else {
        0
    };
    Ok(ExitCode::from(code))
}

/// A plan answer, as a person reads it.
fn render_plan(plan: &serde_json::Value) -> String {
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

fn validate(
    config_path: Option<&Path>,
    paths: Vec<PathBuf>,
    format: Format,
    deny_warnings: bool,
    connect: bool,
) -> anyhow::Result<ExitCode> {
    let service_path = service_config_path(config_path);
    let (service, mut service_diagnostics) =
        crate::service::load_service(service_path.as_deref(), &env::process_env);
    let paths = pipeline_paths(service.as_ref(), paths);
    let mut report = pipeline::load_pipelines(&paths, &env::process_env);
    service_diagnostics.append(&mut report.diagnostics);
    report.diagnostics = service_diagnostics;

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
    Ok(ExitCode::from(validate_exit_code(&report, deny_warnings)))
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

fn summary(report: &LoadReport, connected: bool) -> String {
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
    let reached = if connected && errors == 0 {
        ", every backend and target reached"
    } else {
        ""
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

fn hash_key(key: Option<String>, generate: bool) -> anyhow::Result<ExitCode> {
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

fn serve(config_path: Option<&Path>, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let service_path = service_config_path(config_path);
    let (service, diagnostics) =
        crate::service::load_service(service_path.as_deref(), &env::process_env);
    let Some(mut service) = service else {
        print_diagnostics(&diagnostics);
        anyhow::bail!("wald.toml is invalid; `wald validate` shows why");
    };
    crate::telemetry::init(service.log_format);
    if let Some(listen) = args.listen {
        service.listen = listen;
    }
    if let Some(pipelines) = args.pipelines {
        service.pipelines_dir = pipelines;
    }
    if let Some(data_dir) = args.data_dir {
        service.data_dir = data_dir;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve::run(service))?;
    Ok(ExitCode::SUCCESS)
}

fn write(args: WriteArgs) -> anyhow::Result<ExitCode> {
    let requests: Vec<serde_json::Value> = match (&args.file, &args.payload) {
        (Some(path), _) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
            };
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(i, line)| {
                    serde_json::from_str(line)
                        .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))
                })
                .collect::<anyhow::Result<_>>()?
        }
        (None, Some(payload)) => {
            let payload: serde_json::Value = serde_json::from_str(payload)
                .context("the payload is not JSON; quote a string as '\"text\"'")?;
            let mut request =
                serde_json::json!({ "namespace": args.namespace, "payload": payload });
            if let Some(key) = &args.key {
                request["key"] = key.clone().into();
            }
            if let Some(delay) = &args.delay {
                request["delay"] = delay.clone().into();
            }
            vec![request]
        }
        (None, None) => anyhow::bail!("give a payload or --file"),
    };
    let url = format!("{}/api/v1/wal/write", args.server.trim_end_matches('/'));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut refused = false;
        for request in requests {
            let mut call = client.post(&url).json(&request);
            if let Some(key) = &args.api_key {
                call = call.bearer_auth(key);
            }
            let response = match call.send().await {
                Ok(response) => response,
                Err(e) => {
                    eprintln!("error: no answer from {url}: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            refused |= !response.status().is_success();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            writeln!(std::io::stdout(), "{body}")?;
        }
        Ok(ExitCode::from(u8::from(refused)))
    })
}

fn status(server: &str, namespace: Option<&str>) -> anyhow::Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let url = match namespace {
        Some(namespace) => format!("{base}/api/v1/wal/namespace/{namespace}/status"),
        None => format!("{base}/api/v1/health"),
    };
    show(&url, |body| {
        body["status"] == "ok" || body["state"] == "running"
    })
}

fn transaction(server: &str, id: &str) -> anyhow::Result<ExitCode> {
    let url = format!(
        "{}/api/v1/wal/transaction/{id}/status",
        server.trim_end_matches('/')
    );
    show(&url, |_| true)
}

fn dlq(action: DlqAction, server: &str, admin_key: Option<&str>) -> anyhow::Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let client = reqwest::Client::new();
    let request = match action {
        DlqAction::List {
            namespace,
            target,
            state,
            from,
            limit,
        } => {
            let mut url = url::Url::parse(&format!("{base}/api/v1/wal/namespace/{namespace}/dlq"))
                .context("the server URL is not valid")?;
            {
                let mut query = url.query_pairs_mut();
                query
                    .append_pair("state", &state)
                    .append_pair("limit", &limit.to_string());
                if let Some(target) = &target {
                    query.append_pair("target", target);
                }
                if let Some(from) = from {
                    query.append_pair("from", &from.to_string());
                }
            }
            client.get(url)
        }
        DlqAction::Replay {
            namespace,
            ids,
            target,
            dry_run,
            rate,
        } => {
            let mut body = serde_json::json!({ "dry_run": dry_run });
            if !ids.is_empty() {
                body["ids"] = ids.into();
            }
            if let Some(target) = target {
                body["target"] = target.into();
            }
            if let Some(rate) = rate {
                body["rate_per_second"] = rate.into();
            }
            client
                .post(format!(
                    "{base}/api/v1/wal/namespace/{namespace}/dlq/replay"
                ))
                .json(&body)
        }
    };
    let request = match admin_key {
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    send_and_show(request, |_| true)
}

/// GETs `url` and prints the JSON answer; exits 0 when the answer is a success that
/// `good` accepts, 1 otherwise, 2 when there was no answer.
fn show(url: &str, good: impl Fn(&serde_json::Value) -> bool) -> anyhow::Result<ExitCode> {
    send_and_show(reqwest::Client::new().get(url), good)
}

/// Sends `request` and prints the JSON answer; exits 0 when the answer is a success
/// that `good` accepts, 1 otherwise, 2 when there was no answer.
fn send_and_show(
    request: reqwest::RequestBuilder,
    good: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                eprintln!("error: no answer: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        let ok = response.status().is_success();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&body)?
        )?;
        Ok(ExitCode::from(u8::from(!(ok && good(&body)))))
    })
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics.iter().filter(|d| d.severity == Severity::Error) {
        eprintln!("{}", d.render());
    }
}
