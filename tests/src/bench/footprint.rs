//! `footprint`: the agent's size per built target; the resident memory of one real agent
//! process (the release build, Docker runtime) idle with ten containers and while applying a
//! change to them; and the broker-side bytes of its idle connection (heartbeats only: reports
//! are switched off for the window), extrapolated to an hour and a month.

use super::Options;
use super::fleet_setup::FleetBench;
use crate::docker::{app_containers, remove_app_containers};
use crate::services::{docker, test_image};
use crate::system::{Agent, AgentMode, scratch_dir};
use crate::unique_name;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CONTAINERS: usize = 10;
const TARGETS: [&str; 4] = [
    "aarch64-unknown-linux-musl",
    "armv7-unknown-linux-gnueabihf",
    "x86_64-unknown-linux-musl",
    "riscv64gc-unknown-linux-gnu",
];

fn target_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
}

/// Sizes of the release agents that `cargo xtask dist` built.
pub fn binary_sizes() -> serde_json::Value {
    let mut sizes = serde_json::Map::new();
    for triple in TARGETS {
        let path = target_dir().join(triple).join("agent-release/nebula-agent");
        if let Ok(metadata) = std::fs::metadata(&path) {
            sizes.insert(triple.to_string(), json!(metadata.len()));
        }
    }
    serde_json::Value::Object(sizes)
}

/// The agent that ships: the size-optimised x86_64 musl build of `cargo xtask dist` (this
/// machine's own architecture, so no emulator inflates the figures).
fn release_agent() -> anyhow::Result<PathBuf> {
    let path = target_dir().join("x86_64-unknown-linux-musl/agent-release/nebula-agent");
    anyhow::ensure!(
        path.exists(),
        "{} missing: run `cargo xtask dist --target x86_64-unknown-linux-musl` first",
        path.display()
    );
    Ok(path)
}

pub async fn run(options: &Options) -> anyhow::Result<serde_json::Value> {
    // Two heartbeat periods at least (RabbitMQ's default timeout is 60 s, a frame each way
    // every 30 s); longer windows give finer figures.
    let idle_secs = options.number("idle-secs", 65)?;
    let agent_binary = release_agent()?;
    let bench = FleetBench::prepare_with(
        "footprint",
        json!({"docker_image": test_image(1), "containers_per": {"server": CONTAINERS}}),
    )
    .await?;
    let (control_plane, app) = (&bench.control_plane, bench.app.as_str());
    let rest = control_plane.rest();
    let directory = scratch_dir("bench-footprint-agent");
    let device = unique_name("footprint-device");
    let agent = Agent::start_command(
        &device,
        &AgentMode::Group(bench.group.clone()),
        &bench.vhost.amqp_url(),
        &directory,
        // No periodic reports: the idle window measures heartbeats alone.
        &[("NEBULA_REPORT_INTERVAL_SECS", "86400")],
        &[agent_binary.to_string_lossy().into_owned()],
    )
    .await;
    let result = measure(&agent, &rest, app, &device, idle_secs).await;
    agent.process.stop(Duration::from_secs(10)).await;
    control_plane.process.stop(Duration::from_secs(10)).await;
    if let Ok(engine) = docker() {
        let _ = remove_app_containers(&engine, app).await;
    }
    let (idle_kib, applying_peak_kib, broker) = result?;
    Ok(json!({
        "scenario": "footprint",
        "parameters": {"containers": CONTAINERS, "idle_secs": idle_secs},
        "binary_bytes": binary_sizes(),
        "agent": agent_binary.display().to_string(),
        "idle_resident_kib": idle_kib,
        "applying_change_peak_resident_kib": applying_peak_kib,
        "idle_broker_traffic": broker,
    }))
}

async fn measure(
    agent: &Agent,
    rest: &crate::rest::Rest,
    app: &str,
    device: &str,
    idle_secs: u64,
) -> anyhow::Result<(u64, u64, serde_json::Value)> {
    let engine = docker()?;
    eprintln!("footprint: waiting for {CONTAINERS} containers");
    wait_running(&engine, app, 1, Duration::from_secs(180)).await?;

    eprintln!("footprint: idle for {idle_secs} s");
    let before = connection_octets(device)?;
    // Heartbeats go each way every half timeout: a shorter window can hold none and would
    // print a traffic of zero.
    anyhow::ensure!(
        idle_secs >= before.heartbeat_secs,
        "--idle-secs {idle_secs} is shorter than the heartbeat timeout ({} s)",
        before.heartbeat_secs
    );
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let after = connection_octets(device)?;
    let window = idle_start.elapsed().as_secs_f64();
    let idle_kib = resident(agent).await?;
    let bytes = (after.received + after.sent).saturating_sub(before.received + before.sent);
    let per_hour = bytes as f64 * 3600.0 / window;
    let broker = json!({
        "heartbeat_timeout_secs": after.heartbeat_secs,
        "window_secs": window,
        "bytes_in_window": bytes,
        "bytes_per_hour": per_hour,
        // 30 days; AMQP bytes as RabbitMQ counts them (TCP/IP headers not included).
        "bytes_per_month": per_hour * 24.0 * 30.0,
    });

    eprintln!("footprint: applying a change to {CONTAINERS} containers");
    let reply = rest
        .update_app(app, json!({"env_vars": {"FOOTPRINT": "changed"}}))
        .await?;
    let revision = reply["app_id"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no app_id in {reply}"))?;
    let peak = PeakSampler::start(agent.clone());
    wait_running(&engine, app, revision, Duration::from_secs(180)).await?;
    let applying_peak_kib = peak.stop().await;
    Ok((idle_kib, applying_peak_kib, broker))
}

async fn resident(agent: &Agent) -> anyhow::Result<u64> {
    agent
        .process
        .resident_kib()
        .await
        .ok_or_else(|| anyhow::anyhow!("the agent is not running:\n{}", agent.process.log()))
}

/// Waits until `app` has all its containers running at `revision` on the engine.
async fn wait_running(
    engine: &bollard::Docker,
    app: &str,
    revision: u64,
    deadline: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let containers = app_containers(engine, app).await?;
        let ready = containers
            .iter()
            .filter(|container| container.running && container.app_id == Some(revision))
            .count();
        if ready == CONTAINERS && containers.len() == CONTAINERS {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < deadline,
            "{ready} of {CONTAINERS} containers of {app} running at revision {revision} after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Samples an agent's resident memory every 20 ms until stopped; keeps the peak.
struct PeakSampler {
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl PeakSampler {
    fn start(agent: Agent) -> Self {
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = std::sync::Arc::clone(&running);
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kib) = agent.process.resident_kib().await {
                    peak = peak.max(kib);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        });
        Self { running, task }
    }

    async fn stop(self) -> u64 {
        self.running
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// AMQP bytes RabbitMQ counted on one connection, and its heartbeat timeout.
#[derive(Debug, Clone, Copy)]
struct Octets {
    received: u64,
    sent: u64,
    heartbeat_secs: u64,
}

/// The octet counters of the connection the agent of `device` named after itself
/// ("nebula-agent <device>"). RabbitMQ refreshes them every few seconds (its statistics
/// interval), small next to the measuring window.
fn connection_octets(device: &str) -> anyhow::Result<Octets> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "client_properties",
            "recv_oct",
            "send_oct",
            "timeout",
            "--formatter",
            "json",
            "-q",
        ])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "rabbitmqctl list_connections: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let connections: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    let wanted = format!("nebula-agent {device}");
    connections
        .iter()
        .find(|connection| connection_name(connection).as_deref() == Some(wanted.as_str()))
        .map(|connection| Octets {
            received: connection["recv_oct"].as_u64().unwrap_or_default(),
            sent: connection["send_oct"].as_u64().unwrap_or_default(),
            heartbeat_secs: connection["timeout"].as_u64().unwrap_or_default(),
        })
        .ok_or_else(|| anyhow::anyhow!("no broker connection named {wanted:?}"))
}

/// rabbitmqctl's JSON renders client properties as `[name, type, value]` triples.
fn connection_name(connection: &serde_json::Value) -> Option<String> {
    connection["client_properties"]
        .as_array()?
        .iter()
        .find(|property| property[0] == "connection_name")
        .and_then(|property| property[2].as_str().map(str::to_string))
}
