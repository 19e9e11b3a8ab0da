//! The `wald` binary: parses arguments and runs a subcommand; see [`wald::cli`].

use std::process::ExitCode;

use clap::Parser;

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
