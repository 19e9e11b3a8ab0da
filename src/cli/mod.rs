//! The `wald` subcommands: the command line ([`args`]), the ones that need no server
//! (`local.rs`: `validate`, `hash-key`), the ones that talk to a running server over
//! HTTP (`client.rs`: `plan`, `write`, `status`, `tx`, `dlq`), how they print
//! (`render.rs`), and `serve`, the service's whole life ([`serve`]). Exit codes are
//! part of the interface (documented in `docs/operations.md`).

pub mod args;
mod client;
mod local;
mod render;
pub mod serve;

use args::service_config_path;
pub use args::{Cli, Command, DlqAction, Format, ServeArgs, WriteArgs};
use client::{dlq, pause, plan, status, transaction, write};
pub use local::validate_exit_code;
use local::{hash_key, validate};
use render::print_diagnostics;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::env;

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(cli.config.as_deref(), args),
        Command::Validate {
            paths,
            format,
            deny_warnings,
            connect,
            sample,
        } => validate(
            cli.config.as_deref(),
            paths,
            format,
            deny_warnings,
            connect,
            sample.as_deref(),
        ),
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
        Command::Pause(args) => pause(args, true),
        Command::Resume(args) => pause(args, false),
    }
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
    let spans = crate::telemetry::traces::init(&service.telemetry)
        .context("starting the span exporter (`[telemetry] otlp_endpoint`)")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let served = runtime.block_on(serve::run(service));
    if let Some(spans) = spans {
        spans.shutdown(std::time::Duration::from_secs(5));
    }
    served?;
    Ok(ExitCode::SUCCESS)
}
