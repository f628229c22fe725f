//! `nebula-bench <scenario> [--option value]...`: Nebula's benchmarks against real
//! RabbitMQ and control-plane processes. Each scenario prints progress on stderr and ends
//! with one JSON line of figures (and the parameters used) on stdout.

use nebula_tests::bench::{self, Options};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: nebula-bench <fanout|sync-storm|rest|footprint|dead-link|auth-backends> [--agents N] [--seconds N] [...]";

/// How long leftover blocking work (a cluster node being started again) may hold up the
/// exit once the scenario has its result.
const EXIT_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("nebula-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run());
    // Dropping a runtime waits for its blocking tasks without a bound: a scenario that
    // failed midway must not hang its caller (CI) until that caller's own timeout.
    runtime.shutdown_timeout(EXIT_GRACE);
    code
}

async fn run() -> ExitCode {
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
    let agent_log = match bench::agent_log::install(scenario) {
        Ok(agent_log) => agent_log,
        Err(error) => {
            eprintln!("nebula-bench: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match scenario.as_str() {
        "fanout" => bench::fanout::run(&options).await,
        "sync-storm" => bench::sync_storm::run(&options).await,
        "rest" => bench::rest::run(&options).await,
        "footprint" => bench::footprint::run(&options).await,
        "dead-link" => bench::dead_link::run(&options).await,
        "auth-backends" => bench::auth_backends::run(&options).await,
        other => {
            eprintln!("nebula-bench: unknown scenario {other:?}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    agent_log.flush();
    match result {
        Ok(figures) => {
            #[allow(
                clippy::print_stdout,
                reason = "the JSON line on stdout is the benchmark's output"
            )]
            {
                println!("{figures}");
            }
            // A scenario with targets (footprint's monthly bytes, dead-link's times) lists the checks that
            // failed: the figures are printed all the same, and the run fails.
            let failed: Vec<&str> = figures["failed_checks"]
                .as_array()
                .map(|checks| checks.iter().filter_map(|check| check.as_str()).collect())
                .unwrap_or_default();
            if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                for check in failed {
                    eprintln!("nebula-bench: {scenario} failed: {check}");
                }
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("nebula-bench: {scenario} failed: {error:#}");
            bench::agent_log::explain(&agent_log, &error);
            ExitCode::FAILURE
        }
    }
}
