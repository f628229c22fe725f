//! `nebula-agent`: the daemon on each device (DESIGN §2, §3, §5).
//!
//! It follows one device group or a list of apps over AMQP, persists the desired state it
//! is told before acknowledging, and drives a container runtime towards it with a sans-I/O
//! reconciler. The crate is a library first: `main.rs` only reads the configuration, starts
//! logging and calls [`run`]; a fleet simulator calls [`run`] thousands of times in one
//! process with [`runtime::simulated::SimulatedRuntime`] (no process-global state here).
//!
//! Codemap:
//! * [`enrol`] — first boot: a provisioning token → the device's own credential, kept in the
//!   state dir; the environment the configuration is then read from.
//! * [`config`] — environment → validated [`config::Config`]; [`brokers`] the broker list
//!   (`NEBULA_AMQP_URL`, one node or a cluster's) and its rotation; [`tls`] the CA and
//!   client certificate of `amqps://`.
//! * [`state`] — desired state, its version and sync rules, the versioned state file.
//! * [`reconcile`] — (desired, observed) → actions; pure. [`cron`] — when cron jobs fire;
//!   pure. [`cron_runner`] — the task that starts, skips and cleans up the runs.
//! * [`executor`] — one observe → plan → execute pass.
//! * [`supervisor`] — shared state, per-app workers running passes, the prune task.
//! * [`runtime`] — the container runtime trait, Docker and simulated implementations.
//! * [`transport`] — what a message does ([`transport::dispatch`]); AMQP connection,
//!   reconnects, boot flow, sync, consumption, reports.
//! * [`report`], [`device`] — device reports and the host facts in them.
//! * [`build_info`] — what `--version` prints.

#![forbid(unsafe_code)]

pub mod backoff;
#[cfg(feature = "amqp")]
pub mod brokers;
pub mod build_info;
pub mod config;
pub mod cron;
pub mod cron_runner;
pub mod device;
pub mod enrol;
pub mod error;
pub mod executor;
pub mod mqtt_url;
pub mod reconcile;
pub mod report;
pub mod runtime;
pub mod state;
pub mod supervisor;
pub mod tls;
pub mod transport;

pub use config::Config;
#[cfg(feature = "amqp")]
pub use error::AmqpError;
pub use error::{AgentError, ConfigError, DockerError, StateError};

// An agent needs a way to hear of changes.
#[cfg(not(any(feature = "amqp", feature = "mqtt")))]
compile_error!("build nebula-agent with the `amqp` feature (the default), `mqtt`, or both");
pub use runtime::ContainerRuntime;

use config::Mode;
use state::{DesiredState, StateStore};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for workers to finish the container operation in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs one agent until `shutdown` is cancelled (`Ok`) or its desired state cannot be
/// persisted (`Err`; the supervisor restarts the process). A lost broker connection is not
/// an error: the transport reconnects. Containers are left running either way.
pub async fn run<R: ContainerRuntime>(
    config: Config,
    runtime: R,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let store = StateStore::new(&config.state_dir);
    let loader = store.clone();
    let (mut desired, warning) = tokio::task::spawn_blocking(move || loader.load())
        .await
        .map_err(|error| AgentError::Task(error.to_string()))??;
    if let Some(warning) = warning {
        tracing::error!(error = %warning, "state file was corrupt; moved it aside, starting empty and re-syncing");
    }
    keep_configured(&mut desired, &config.mode);
    tracing::info!(
        device = %config.device_id,
        mode = %config.mode_label(),
        apps = desired.apps.len(),
        cron_jobs = desired.cron_jobs.len(),
        tls = config.tls.summary.as_deref().unwrap_or("off"),
        "starting nebula-agent {}",
        report::AGENT_VERSION
    );

    let persisted: Vec<_> = desired.apps.keys().cloned().collect();
    let group_mode = matches!(config.mode, Mode::Group(_));
    // The agent's own token: cancelled on external shutdown and when the transport fails, so
    // workers stop either way.
    let agent_shutdown = shutdown.child_token();
    let shared = supervisor::Shared::new(config, runtime, store, desired, agent_shutdown.clone());
    // Converge what was persisted before the broker answers: a device keeps running its
    // apps offline, and containers already at their revision are left alone.
    for app in &persisted {
        shared.wake(app);
    }
    // Also removes, in app mode, the containers of apps dropped from NEBULA_APPS.
    shared.tasks.spawn(tracing::Instrument::in_current_span(
        shared.clone().resync_loop(),
    ));
    if group_mode {
        shared.tasks.spawn(tracing::Instrument::in_current_span(
            shared.clone().prune_loop(),
        ));
    }
    // Cron jobs run from the persisted desired state whether or not the broker answers. In
    // app mode there are none; the task then only removes runs a group left behind.
    shared
        .tasks
        .spawn(tracing::Instrument::in_current_span(cron_runner::run(
            shared.clone(),
        )));

    // The configuration refuses a transport this agent was built without, so only the
    // transports built in are reachable here.
    let mut result = match &shared.config.transport {
        #[cfg(feature = "amqp")]
        config::Transport::Amqp => transport::amqp::run(shared.clone()).await,
        #[cfg(feature = "mqtt")]
        config::Transport::Mqtt(url) => transport::mqtt::run(shared.clone(), url.clone()).await,
    };
    if let Some(fatal) = shared.take_fatal() {
        result = Err(fatal.into());
    }
    if let Err(error) = &result {
        tracing::error!(error = %error, "stopping");
    }
    agent_shutdown.cancel();
    shared.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("workers did not stop within the grace period");
    }
    tracing::info!("stopped; app containers keep running");
    result
}

/// Drops persisted state that the current configuration no longer asks for (the device was
/// moved to another group, or an app was removed from `NEBULA_APPS`).
fn keep_configured(desired: &mut DesiredState, mode: &Mode) {
    match mode {
        Mode::Apps(apps) => {
            desired.group = None;
            desired.last_pruned = None;
            desired.deleted_groups.clear();
            // Cron jobs come with a group only.
            desired.cron_jobs.clear();
            desired.apps.retain(|app, _| apps.contains(app));
            desired.deleted_apps.retain(|app, _| apps.contains(app));
        }
        Mode::Group(group) => {
            desired.deleted_groups.retain(|deleted, _| deleted == group);
            if desired
                .group
                .as_ref()
                .is_some_and(|held| &held.device_group != group)
            {
                desired.group = None;
                desired.last_pruned = None;
                desired.apps.clear();
                desired.deleted_apps.clear();
                desired.cron_jobs.clear();
            }
        }
    }
}
