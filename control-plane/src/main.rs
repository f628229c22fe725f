//! `nebula-control-plane`: reads the configuration, starts logging, runs the control plane,
//! and maps the outcome to an exit code (64 for bad configuration, 1 for a fatal error).

use nebula_control_plane::config::{Config, LogFormat, ProcessEnvironment};
use nebula_control_plane::shutdown::Shutdown;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// `EX_USAGE` from sysexits.h: the configuration is wrong, restarting will not help.
const EXIT_CONFIG: u8 = 64;

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal; supervisors and log shippers get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn wait_for_signal(shutdown: Shutdown) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
        () = shutdown.token().cancelled() => return,
    }
    tracing::info!("signal received, shutting down");
    shutdown.stop();
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_environment(&ProcessEnvironment) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("nebula-control-plane: configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(config.log_format);
    let shutdown = Shutdown::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    match nebula_control_plane::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "control plane stopped");
            ExitCode::FAILURE
        }
    }
}
