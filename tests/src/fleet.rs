//! The fleet simulator: N agents in one process, each the real `nebula_agent::run` with its
//! own broker connection, queue and sync, over the simulated container runtime.
//!
//! Each agent sits under its own restart loop, as under systemd on a device: when `run`
//! fails hard (its state cannot be written), it is started again after a short delay. A lost
//! broker connection is not such a failure: the agent reconnects by itself.

use nebula_agent::runtime::simulated::SimulatedRuntime;
use nebula_protocol::{Name, Revision};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One simulated device.
#[derive(Debug, Clone)]
pub struct SimulatedDevice {
    pub device_id: Name,
    pub runtime: SimulatedRuntime,
}

/// The agents that did not converge in time (an error of [`Fleet::wait_applied`]).
#[derive(Debug)]
pub struct Laggards {
    pub devices: Vec<String>,
    summary: String,
}

impl std::fmt::Display for Laggards {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.summary)
    }
}

impl std::error::Error for Laggards {}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    pub devices: Vec<SimulatedDevice>,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    /// How many times agents failed hard and were restarted.
    restarts: Arc<AtomicU64>,
    state_root: PathBuf,
}

impl Fleet {
    /// Starts `count` agents of device group `group`. Their state lives under `state_root`:
    /// put it on a tmpfs (`/dev/shm`), since a real fleet has a disk per device and one shared
    /// disk would serialise ten thousand fsyncs.
    pub fn start(
        count: usize,
        group: &str,
        amqp_url: &str,
        state_root: &Path,
        report_interval_secs: u64,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            count,
            group,
            amqp_url,
            state_root,
            report_interval_secs,
            &[],
        )
    }

    /// [`Fleet::start`] with more of the agents' environment: `NEBULA_TRANSPORT=mqtt` and
    /// `NEBULA_MQTT_URL` for a fleet over MQTT.
    pub fn start_with(
        count: usize,
        group: &str,
        amqp_url: &str,
        state_root: &Path,
        report_interval_secs: u64,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let restarts = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let mut devices = Vec::with_capacity(count);
        let prefix = crate::unique_name("sim");
        for index in 0..count {
            let device_id = format!("{prefix}-{index}");
            let state_dir = state_root.join(&device_id);
            let report_interval = report_interval_secs.to_string();
            let mut environment: HashMap<&str, &str> = HashMap::from([
                ("NEBULA_AMQP_URL", amqp_url),
                ("NEBULA_DEVICE_ID", device_id.as_str()),
                ("NEBULA_DEVICE_GROUP", group),
                ("NEBULA_RUNTIME", "simulated"),
                ("NEBULA_STATE_DIR", state_dir.to_str().unwrap_or_default()),
                ("NEBULA_REPORT_INTERVAL_SECS", report_interval.as_str()),
            ]);
            environment.extend(extra_env.iter().copied());
            let host = nebula_agent::config::HostIdentity {
                hostname: device_id.clone(),
                machine_id: None,
            };
            let config = nebula_agent::Config::from_env(&environment, &host)?;
            let runtime = SimulatedRuntime::new();
            devices.push(SimulatedDevice {
                device_id: config.device_id.clone(),
                runtime: runtime.clone(),
            });
            let (shutdown, restarts) = (shutdown.clone(), Arc::clone(&restarts));
            // Every line an agent logs names its device (see `bench::agent_log`).
            let span = tracing::info_span!("agent", device = %config.device_id);
            tasks.spawn(tracing::Instrument::instrument(async move {
                loop {
                    let result =
                        nebula_agent::run(config.clone(), runtime.clone(), shutdown.clone()).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    if let Err(error) = result {
                        tracing::debug!(error = %error, "simulated agent failed hard; restarting");
                    }
                    restarts.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }, span));
        }
        Ok(Self {
            devices,
            shutdown,
            tasks,
            restarts,
            state_root: state_root.to_path_buf(),
        })
    }

    /// Agent restarts after failing hard, over the fleet's life.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Waits until every device applied `app` at `revision` or newer; returns each device's
    /// time from `since` (sampled every few milliseconds), or an error at `deadline`.
    pub async fn wait_applied(
        &self,
        app: &Name,
        revision: Revision,
        since: Instant,
        deadline: Duration,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut pending: Vec<usize> = (0..self.devices.len()).collect();
        let mut latencies = Vec::with_capacity(self.devices.len());
        let mut progress = Instant::now();
        loop {
            let now = Instant::now();
            // The shape of a storm (how many applied when) says where its time goes.
            if now.duration_since(progress) >= Duration::from_secs(2) {
                progress = now;
                eprintln!(
                    "fleet: {app} at {revision}: {} of {} applied after {:.1} s",
                    self.devices.len() - pending.len(),
                    self.devices.len(),
                    since.elapsed().as_secs_f64()
                );
            }
            pending.retain(|&index| {
                let applied = self.devices[index]
                    .runtime
                    .applied_revision(app)
                    .is_some_and(|held| held >= revision);
                if applied {
                    latencies.push(now - since);
                }
                !applied
            });
            if pending.is_empty() {
                return Ok(latencies);
            }
            if since.elapsed() > deadline {
                let devices = pending
                    .iter()
                    .map(|&index| self.devices[index].device_id.to_string())
                    .collect();
                let holding = pending
                    .iter()
                    .take(5)
                    .map(|&index| {
                        let device = &self.devices[index];
                        let held = device.runtime.applied_revision(app);
                        format!("{} holds {held:?}", device.device_id)
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Laggards {
                    devices,
                    summary: format!(
                        "{} of {} agents did not apply {app} at {revision} within {deadline:?} ({holding})",
                        pending.len(),
                        self.devices.len()
                    ),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops every agent and removes their state.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_dir_all(&self.state_root);
    }
}
