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
        // The reader of its output went away (`wald ... | head`): stop quietly, as a
        // process ended by SIGPIPE does.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
