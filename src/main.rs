//! The `gpt2q` command: parse flags, call the library, print one error, pick the exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cli::is_closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpt2q: error: {e}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
