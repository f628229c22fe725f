//! `nebula-bench <scenario> [--option value]...`: Nebula's benchmarks against real
//! RabbitMQ and control-plane processes. Each scenario prints progress on stderr and ends
//! with one JSON line of figures (and the parameters used) on stdout.

use nebula_tests::bench::{self, Options};
use std::process::ExitCode;

const USAGE: &str =
    "usage: nebula-bench <fanout|sync-storm|rest|footprint> [--agents N] [--seconds N] [...]";

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let Some((scenario, rest)) = arguments.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(64);
    };
    let options = match Options::parse(rest) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("nebula-bench: {error}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let result = match scenario.as_str() {
        "fanout" => bench::fanout::run(&options).await,
        "sync-storm" => bench::sync_storm::run(&options).await,
        "rest" => bench::rest::run(&options).await,
        "footprint" => bench::footprint::run(&options).await,
        other => {
            eprintln!("nebula-bench: unknown scenario {other:?}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(figures) => {
            #[allow(
                clippy::print_stdout,
                reason = "the JSON line on stdout is the benchmark's output"
            )]
            {
                println!("{figures}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("nebula-bench: {scenario} failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
