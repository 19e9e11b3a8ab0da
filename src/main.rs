//! The `wald` binary: parses arguments and runs a subcommand; see [`wald::cli`].

use std::process::ExitCode;

use clap::Parser;

/// Buffers are allocated on the runtime's threads and freed on the log's writer thread;
/// glibc's allocator spent a tenth of the server's CPU on that under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = wald::cli::Cli::parse();
    match wald::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
