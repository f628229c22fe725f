//! `nebula-agent`: reads the configuration, starts logging, runs the agent until SIGTERM or
//! SIGINT, and maps the outcome to an exit code (64 for bad configuration, 1 for any other
//! failure, so the supervisor restarts it).

use nebula_agent::config::{Config, LogFormat, ProcessEnvironment, RuntimeKind};
use nebula_agent::runtime::docker::DockerRuntime;
use nebula_agent::runtime::simulated::SimulatedRuntime;
use nebula_agent::{AgentError, device};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// sysexits.h EX_USAGE: the configuration is wrong, restarting will not help.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let config = match Config::from_env(&ProcessEnvironment, &device::hostname()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("nebula-agent: configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(config.log_format);

    // One thread: the agent is I/O bound, and every thread costs RSS on a small board.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            signals.cancel();
        });
        match config.runtime {
            RuntimeKind::Docker => {
                let docker = DockerRuntime::connect(
                    &config.docker_host,
                    config.registry.clone(),
                    device::capacity(),
                )?
                .owned_by(config.device_id.as_str());
                nebula_agent::run(config, docker, shutdown).await
            }
            RuntimeKind::Simulated => {
                nebula_agent::run(config, SimulatedRuntime::new(), shutdown).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(AgentError::Config(error)) => {
            tracing::error!(error = %error, "configuration error");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(error) => {
            tracing::error!(error = %error, "nebula-agent failed");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process still dies on SIGTERM, just not cleanly.
            tracing::warn!("cannot install signal handlers");
            std::future::pending::<()>().await;
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
