//! The command line as clap parses it: every subcommand with its arguments, and where
//! the files they name are.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

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
        /// A dry run: each line of FILE (a write request as `POST /api/v1/wal/write`
        /// takes it) through its namespace: refused at ingest, or what each target
        /// would be sent, skipped by a filter, or failed in processing. Writes and
        /// reaches nothing.
        #[arg(long, value_name = "FILE.jsonl")]
        sample: Option<PathBuf>,
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
    /// Pause a namespace's delivery, or one target's, on a running server (needs the
    /// admin key). Ingest goes on and messages wait in the log; the pause survives
    /// restarts and reloads until `wald resume`.
    ///
    /// Exit codes: 0 done, 1 refused by the server, 2 no answer.
    Pause(PauseArgs),
    /// Resume what `wald pause` paused: what waited is delivered in order.
    ///
    /// Exit codes: 0 done, 1 refused by the server, 2 no answer.
    Resume(PauseArgs),
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

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    pub namespace: String,
    /// Only this target; without it, the namespace's whole delivery.
    #[arg(long)]
    pub target: Option<String>,
    /// The server's base URL.
    #[arg(long, env = "WALD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The admin key.
    #[arg(long, env = "WALD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
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
    pub(super) listen: Option<std::net::SocketAddr>,
    /// Pipelines directory, instead of `pipelines_dir`.
    #[arg(long)]
    pub(super) pipelines: Option<PathBuf>,
    /// Data directory, instead of `data_dir`.
    #[arg(long)]
    pub(super) data_dir: Option<PathBuf>,
}

/// What `wald write` sends, and where.
#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    /// The server's base URL.
    #[arg(long, env = "WALD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub(super) server: String,
    /// The namespace's API key, if it has keys.
    #[arg(long, env = "WALD_API_KEY", hide_env_values = true)]
    pub(super) api_key: Option<String>,
    /// The namespace; with a payload argument.
    #[arg(long, short, required_unless_present = "file")]
    pub(super) namespace: Option<String>,
    /// The message's key.
    #[arg(long, short)]
    pub(super) key: Option<String>,
    /// Deliver no sooner than this long from now ("10m").
    #[arg(long)]
    pub(super) delay: Option<String>,
    /// The payload, as JSON.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub(super) payload: Option<String>,
    /// A JSON Lines file of whole write requests (`{"namespace": ..., "payload": ...}`),
    /// sent one by one; `-` reads standard input.
    #[arg(long, conflicts_with_all = ["namespace", "key", "delay"])]
    pub(super) file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// `--config`, or `wald.toml` when it exists.
pub(super) fn service_config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit.map(Path::to_path_buf).or_else(|| {
        Path::new("wald.toml")
            .exists()
            .then(|| PathBuf::from("wald.toml"))
    })
}

/// The paths given, or the pipelines directory of `wald.toml`.
pub(super) fn pipeline_paths(service: Option<&ServiceConfig>, paths: Vec<PathBuf>) -> Vec<PathBuf> {
    if !paths.is_empty() {
        return paths;
    }
    vec![service.map_or_else(|| PathBuf::from("pipelines"), |s| s.pipelines_dir.clone())]
}
