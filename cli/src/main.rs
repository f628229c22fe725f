//! `nebula`: parses the command line, runs it, and maps the outcome to an exit code (see
//! `error`: 0 ok, 1 unreachable or failing control plane, 2 usage, 3 not found,
//! 4 unauthorized, 5 conflict).

use clap::Parser;
use nebula_cli::args::Cli;
use nebula_cli::config::ProcessEnvironment;
use nebula_cli::error::CliError;
use std::process::ExitCode;

fn main() -> ExitCode {
    // clap prints its own usage errors and help, and exits with 2 (or 0 for --help).
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut stdout = std::io::BufWriter::new(stdout.lock());
    let mut stdin = std::io::stdin();
    match nebula_cli::run(cli, &ProcessEnvironment, &mut stdout, &mut stdin) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            // `nebula apps list | head -1`: the reader has what it wanted.
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("nebula: {error}");
            ExitCode::from(error.exit_code() as u8)
        }
    }
}
