//! `nebula-agent`: reads the configuration, starts logging, runs the agent until SIGTERM or
//! SIGINT, and maps the outcome to an exit code (64 for bad configuration, 1 for any other
//! failure, so the supervisor restarts it).

use nebula_agent::config::{self, Config, LogFormat, ProcessEnvironment, RuntimeKind};
use nebula_agent::error::ConfigError;
use nebula_agent::runtime::docker::DockerRuntime;
use nebula_agent::runtime::simulated::SimulatedRuntime;
use nebula_agent::{AgentError, build_info, device, enrol};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// sysexits.h EX_USAGE: the configuration is wrong, restarting will not help.
const EXIT_CONFIG: u8 = 64;

const USAGE: &str = "\
usage: nebula-agent [--version | --help]

Configured through the environment (see the agent README and DESIGN §5):
  NEBULA_DEVICE_GROUP             follow a device group (group mode), or
  NEBULA_APPS (or APP_NAME)       follow a comma-separated list of apps (app mode)
  NEBULA_PROVISIONING_TOKEN       first boot: exchange this token for the device's own broker
                                  credential, kept in NEBULA_STATE_DIR/credential.json (0600),
                                  which then gives the broker URL and the group or apps
  NEBULA_CONTROL_PLANE_URL        with the token: http(s)://host:port of the control plane
  NEBULA_CONTROL_PLANE_CA_FILE, _CERT_FILE, _KEY_FILE   its https:// trust store and client cert
  NEBULA_SIGNING_KEY              the control plane's ed25519 public key (64 hex digits): changes
                                  not signed with it are dropped (pinned at enrolment if it signs)
  NEBULA_AMQP_URL                 broker URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
                                  or a comma-separated list of a cluster's nodes: the agent starts
                                  at a random node and moves to the next one after a failed
                                  attempt or a lost connection
  NEBULA_AMQP_CA_FILE, _CERT_FILE, _KEY_FILE   amqps:// trust store and client certificate (PEM)
  NEBULA_TRANSPORT                amqp (default) or mqtt (the default of an MQTT-only build)
  NEBULA_MQTT_URL                 with mqtt: mqtt:// or mqtts:// URL, the vhost as its path
                                  (default mqtt://guest:guest@127.0.0.1:1883)
  NEBULA_MQTT_CA_FILE, _CERT_FILE, _KEY_FILE   mqtts:// trust store and client certificate (PEM)
  NEBULA_DEVICE_ID                device id (default: /etc/machine-id, else /var/lib/dbus/machine-id;
                                  two agents with one id are refused by the broker)
  NEBULA_STATE_DIR                where desired state is persisted (default /var/lib/nebula-agent)
  NEBULA_RUNTIME                  docker (default) or simulated
  NEBULA_REGISTRY_HOST/USER/PASSWORD   registry login for image pulls
  NEBULA_MAX_RESTART_WAIT_SECS    random wait before restarts and updates
  NEBULA_REPORT_INTERVAL_SECS     periodic device report (default 21600: six hours; reports also
                                  go out after every change they would show)
  NEBULA_HEARTBEAT_SECS           AMQP heartbeat timeout asked of the broker (default 900); a dead
                                  link is noticed within 9.5 min at it (or the URL's heartbeat
                                  parameter); over MQTT the keep-alive is half of it
  NEBULA_MAX_BACKOFF_SECS         ceiling of every retry wait, reconnects included (default 30)
  NEBULA_LOG_FORMAT               text (default) or json; RUST_LOG filters
";

fn main() -> ExitCode {
    // The agent takes no arguments besides these two: everything else is environment, so
    // a stray argument is a mistake to report rather than ignore.
    if let Some(argument) = std::env::args().nth(1) {
        #[allow(
            clippy::print_stdout,
            reason = "--version and --help answer on stdout, like every command-line tool"
        )]
        return match argument.as_str() {
            "--version" | "-V" => {
                println!("{}", build_info::version_line());
                ExitCode::SUCCESS
            }
            "--help" | "-h" => {
                print!("{USAGE}");
                ExitCode::SUCCESS
            }
            other => {
                eprintln!("nebula-agent: unknown argument {other:?}\n\n{USAGE}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    let configuration_error = |error: ConfigError| {
        eprintln!("nebula-agent: configuration error: {error}");
        ExitCode::from(EXIT_CONFIG)
    };
    // Logging first: enrolment, which comes before the rest of the configuration, logs.
    match config::log_format(&ProcessEnvironment) {
        Ok(format) => init_tracing(format),
        Err(error) => return configuration_error(error),
    }
    let host = device::host_identity();
    let config = match enrol::environment(ProcessEnvironment, &host)
        .and_then(|environment| Config::from_env(&environment, &host))
    {
        Ok(config) => config,
        Err(error) => return configuration_error(error),
    };

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
                .owned_by(config.device_id.as_str())
                .with_container_logs(config.container_logs.clone());
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
