//! `footprint`: the agent's size per built target; the resident memory of one real agent
//! process (the release build, Docker runtime) idle with ten containers and while applying a
//! change to them; and what its broker connection costs on the wire (issue 19), counted at
//! the IP level by a packet capture of that one connection ([`crate::wire`]): both
//! directions, IP and TCP headers included, for
//!
//! * the boot: connect, declare, bind, sync, consume, and the report after applying;
//! * the agent's queue checks after the boot (1, 3, 7 … 255 s after consuming starts: once
//!   per connection);
//! * an idle window at the agent's default settings once those are over (heartbeats only,
//!   unless a periodic report falls into it), a little over half a heartbeat timeout long by
//!   default: each side sends a heartbeat after half a timeout without sending (lapin and
//!   RabbitMQ alike; measured: six each way in 60 s at a 20 s timeout), so the window holds
//!   one each way;
//! * one app update reaching the device: the change message and the agent's ack of it, and
//!   the report it triggers.
//!
//! The monthly idle figure: per direction, one heartbeat's bytes (with its ACK) as measured
//! times the half timeouts in 30 days, plus anything else the idle window carried scaled to
//! 30 days, plus the report bytes measured for the change times the reports a month the report
//! interval makes. It fails the run (the JSON's `failed_checks`, a non-zero exit) when it is
//! over `--max-idle-bytes-per-month` (2,000,000 by default: issue 19's 2 MB), or when the
//! window does not hold the heartbeats that figure assumes.
//!
//! Over MQTT (`--transport mqtt`, issue 17) the same phases, with MQTT's packets: PINGREQ
//! and PINGRESP are the keep-alive (the agent asks for a keep-alive of half its heartbeat
//! timeout, so the same window holds one of each), PUBLISH and PUBACK the messages and their
//! acknowledgements; there are no queue checks.
//!
//! Options: `--transport amqp|mqtt`, `--idle-secs N` (default: half the
//! heartbeat timeout plus 10 s), `--heartbeat-secs N` and `--report-interval-secs N` to
//! measure other settings than the agent's defaults, `--max-idle-bytes-per-month N`.

use super::Options;
use super::fleet_setup::FleetBench;
use crate::docker::{app_containers, remove_app_containers};
use crate::services::{docker, test_image};
use crate::system::{Agent, AgentMode, scratch_dir};
use crate::wire::{
    self, Capture, Direction, Packet, SegmentKind, Tally, Transport, agent_connections,
};
use crate::{unique_name, wait_for};
use nebula_agent::config::{DEFAULT_HEARTBEAT_SECS, DEFAULT_REPORT_INTERVAL_SECS};
use nebula_agent::transport::amqp::LAST_QUEUE_CHECK;
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
/// The month of the monthly figures: 30 days.
const MONTH_SECS: f64 = 30.0 * 24.0 * 3600.0;
/// Issue 19: an idle device costs at most 2 MB (10^6 bytes) a month on the wire.
const DEFAULT_BUDGET_BYTES_PER_MONTH: u64 = 2_000_000;

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
pub(super) fn release_agent() -> anyhow::Result<PathBuf> {
    let path = target_dir().join("x86_64-unknown-linux-musl/agent-release/nebula-agent");
    anyhow::ensure!(
        path.exists(),
        "{} missing: run `cargo xtask dist --target x86_64-unknown-linux-musl` first",
        path.display()
    );
    Ok(path)
}

/// The settings the agent runs with: its defaults unless an option says otherwise.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub(super) heartbeat_secs: Option<u64>,
    pub(super) report_interval_secs: Option<u64>,
    pub(super) transport: Transport,
}

impl Settings {
    pub(super) fn heartbeat_secs(self) -> u64 {
        self.heartbeat_secs.unwrap_or(DEFAULT_HEARTBEAT_SECS)
    }

    fn report_interval_secs(self) -> u64 {
        self.report_interval_secs
            .unwrap_or(DEFAULT_REPORT_INTERVAL_SECS)
    }

    /// The agent's environment for these settings, on `vhost`. The test harness sets a short
    /// report interval for every agent; an empty value gives the agent's own default back.
    fn environment(self, vhost: &str) -> Vec<(&'static str, String)> {
        let mut environment = vec![(
            "NEBULA_REPORT_INTERVAL_SECS",
            self.report_interval_secs
                .map_or_else(String::new, |secs| secs.to_string()),
        )];
        if let Some(secs) = self.heartbeat_secs {
            environment.push(("NEBULA_HEARTBEAT_SECS", secs.to_string()));
        }
        if self.transport == Transport::Mqtt {
            environment.push(("NEBULA_TRANSPORT", "mqtt".into()));
            environment.push((
                "NEBULA_MQTT_URL",
                format!("mqtt://guest:guest@127.0.0.1:{}/{vhost}", wire::MQTT_PORT),
            ));
        }
        environment
    }
}

/// Starts the release agent `binary` as `device` of the bench's group, with `settings`.
pub(super) async fn start_release_agent(
    binary: &std::path::Path,
    bench: &FleetBench,
    device: &str,
    directory: &std::path::Path,
    settings: Settings,
) -> Agent {
    let environment = settings.environment(&bench.vhost.name);
    let environment: Vec<(&str, &str)> = environment
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    Agent::start_command(
        device,
        &AgentMode::Group(bench.group.clone()),
        &bench.vhost.amqp_url(),
        directory,
        &environment,
        &[binary.to_string_lossy().into_owned()],
    )
    .await
}

pub async fn run(options: &Options) -> anyhow::Result<serde_json::Value> {
    let transport = Transport::parse(&options.text("transport", "amqp"))?;
    let settings = Settings {
        heartbeat_secs: options.optional_number("heartbeat-secs")?,
        report_interval_secs: options.optional_number("report-interval-secs")?,
        transport,
    };
    // A little over half a heartbeat timeout by default: see the module docs.
    let idle_secs = options.number("idle-secs", settings.heartbeat_secs() / 2 + 10)?;
    let budget = options.number("max-idle-bytes-per-month", DEFAULT_BUDGET_BYTES_PER_MONTH)?;
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
    let broker_port = transport.broker_port();
    // Started before the agent so that its boot is on it too; only its connection's
    // packets are counted.
    let capture = Capture::start(&directory, broker_port).await?;
    let agent = start_release_agent(&agent_binary, &bench, &device, &directory, settings).await;
    let result = measure(
        &agent,
        &rest,
        app,
        &device,
        idle_secs,
        &capture,
        settings,
        broker_port,
    )
    .await;
    agent.process.stop(Duration::from_secs(10)).await;
    control_plane.process.stop(Duration::from_secs(10)).await;
    let packets = capture.stop().await;
    if let Ok(engine) = docker() {
        let _ = remove_app_containers(&engine, app).await;
    }
    let measured = result?;
    let packets = wire::of_connection(&packets?, measured.port, broker_port);
    let wire_figures = wire_figures(
        transport,
        &packets,
        broker_port,
        &measured,
        settings,
        budget,
    );
    let failed_checks = wire_figures.1;
    Ok(json!({
        "scenario": "footprint",
        "parameters": {
            "containers": CONTAINERS,
            "idle_secs": idle_secs,
            "transport": transport.name(),
            "heartbeat_secs": settings.heartbeat_secs(),
            "report_interval_secs": settings.report_interval_secs(),
            "agent_defaults": settings.heartbeat_secs.is_none() && settings.report_interval_secs.is_none(),
            "max_idle_bytes_per_month": budget,
        },
        "binary_bytes": binary_sizes(),
        "agent": agent_binary.display().to_string(),
        "idle_resident_kib": measured.idle_kib,
        "applying_change_peak_resident_kib": measured.applying_peak_kib,
        "negotiated_heartbeat_secs": measured.negotiated_heartbeat_secs,
        "wire": wire_figures.0,
        "failed_checks": failed_checks,
    }))
}

/// What [`measure`] saw, with the times (on the capture's clock) of each phase.
#[derive(Debug)]
struct Measured {
    idle_kib: u64,
    applying_peak_kib: u64,
    negotiated_heartbeat_secs: u64,
    /// The agent's local port of its broker connection.
    port: u16,
    boot_end: f64,
    /// When the queue checks after the boot were over.
    settled: f64,
    idle: (f64, f64),
    change: (f64, f64),
}

/// The wire figures, and the checks that failed.
fn wire_figures(
    transport: Transport,
    packets: &[Packet],
    broker_port: u16,
    measured: &Measured,
    settings: Settings,
    budget: u64,
) -> (serde_json::Value, Vec<String>) {
    let tally =
        |from: f64, to: f64| Tally::of(transport, &wire::between(packets, from, to), broker_port);
    let boot = tally(0.0, measured.boot_end);
    let queue_checks = tally(measured.boot_end, measured.settled);
    let idle = tally(measured.idle.0, measured.idle.1);
    let change = tally(measured.change.0, measured.change.1);
    let window = measured.idle.1 - measured.idle.0;
    let report_bytes = |tally: &Tally| {
        tally.bytes_of(SegmentKind::Publish, Direction::ToBroker)
            + tally.bytes_of(SegmentKind::Ack, Direction::FromBroker)
    };
    let change_message_bytes = change.bytes_of(SegmentKind::Delivery, Direction::FromBroker)
        + change.bytes_of(SegmentKind::Ack, Direction::ToBroker);
    // A change makes the agent report twice: when the change arrives (the device is
    // behind) and when it is applied. One report is the window's report bytes over its
    // report publishes.
    let reports_in_change = change.segments_of(SegmentKind::Publish, Direction::ToBroker);
    let one_report = report_bytes(&change) / reports_in_change.max(1);
    let mut failed = Vec::new();
    // Each side sends a heartbeat after half a timeout without sending (lapin and RabbitMQ
    // alike): per side, the bytes of one heartbeat (with its ACK) as measured, times the
    // half timeouts in a month. A window of a little over half a timeout holds the agent's
    // next heartbeat; the broker's comes on a timer of its own that ticks every half timeout
    // and sends at the second tick after the broker last sent anything (its answer to the
    // agent's last queue check), so it can fall after the window: then its size is taken to
    // be the agent's (the same 8-byte frame and headers, and one ACK: 60 + 52 bytes here).
    // The window's own bytes scaled to a month would count one heartbeat over a longer
    // window and come out a few per cent low.
    let interval = measured.negotiated_heartbeat_secs as f64 / 2.0;
    let per_heartbeat = |direction| {
        let segments = idle.segments_of(SegmentKind::Heartbeat, direction);
        (segments > 0)
            .then(|| idle.bytes_of(SegmentKind::Heartbeat, direction) as f64 / segments as f64)
    };
    let agent_heartbeat = per_heartbeat(Direction::ToBroker);
    let broker_heartbeat = per_heartbeat(Direction::FromBroker).or(agent_heartbeat);
    let keepalive_bytes = idle.bytes_of(SegmentKind::Heartbeat, Direction::ToBroker)
        + idle.bytes_of(SegmentKind::Heartbeat, Direction::FromBroker);
    let keepalive_per_month = match (agent_heartbeat, broker_heartbeat) {
        (Some(agent), Some(broker)) => (agent + broker) * MONTH_SECS / interval,
        _ => {
            failed.push(format!(
                "no heartbeat of the agent in the {window:.0} s idle window (one is due every {interval:.0} s)"
            ));
            0.0
        }
    };
    // Anything else an idle connection carried (nothing, normally), scaled by the window.
    let other_idle = idle
        .ip_bytes
        .saturating_sub(keepalive_bytes + report_bytes(&idle));
    let heartbeats_per_month = keepalive_per_month + other_idle as f64 * MONTH_SECS / window;
    let reports_per_month = MONTH_SECS / settings.report_interval_secs() as f64;
    let idle_per_month = heartbeats_per_month + one_report as f64 * reports_per_month;
    if one_report == 0 {
        failed.push(
            "no report was seen after the change: the monthly figure would leave reports out"
                .to_string(),
        );
    }
    if idle_per_month > budget as f64 {
        failed.push(format!(
            "an idle agent costs {idle_per_month:.0} bytes a month on the wire, over the budget of {budget}"
        ));
    }
    eprintln!(
        "footprint ({}): idle {} packets, {} IP bytes in {window:.1} s -> {:.0} bytes/month of keep-alive \
         + {one_report} bytes per report x {reports_per_month:.1} reports/month = {idle_per_month:.0} bytes/month \
         (budget {budget}); one change: {} IP bytes ({change_message_bytes} the change message, {reports_in_change} reports of {one_report}); boot: {} IP bytes",
        transport.name(),
        idle.packets,
        idle.ip_bytes,
        heartbeats_per_month,
        change.ip_bytes,
        boot.ip_bytes,
    );
    let figures = json!({
        "counted": "every IP packet of the agent's broker connection, both directions, IP and TCP headers included (not Ethernet or radio framing, not DNS, not TLS: the test broker is plain AMQP or MQTT on loopback)",
        "idle": {
            "window_secs": window,
            "tally": idle,
            "keepalive_bytes_per_month": heartbeats_per_month,
            "broker_heartbeat_in_window": per_heartbeat(Direction::FromBroker).is_some(),
            "report_bytes": one_report,
            "reports_per_month": reports_per_month,
            "bytes_per_month": idle_per_month,
            "bytes_per_hour": idle_per_month / (MONTH_SECS / 3600.0),
        },
        "change": {
            "tally": change,
            "change_message_bytes": change_message_bytes,
            "reports": reports_in_change,
            "report_bytes": one_report,
        },
        "boot": boot,
        "after_boot_queue_checks": queue_checks,
    });
    (figures, failed)
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the arguments are the scenario's parts"
)]
async fn measure(
    agent: &Agent,
    rest: &crate::rest::Rest,
    app: &str,
    device: &str,
    idle_secs: u64,
    capture: &Capture,
    settings: Settings,
    broker_port: u16,
) -> anyhow::Result<Measured> {
    let transport = settings.transport;
    let engine = docker()?;
    eprintln!("footprint: waiting for {CONTAINERS} containers");
    wait_running(&engine, app, 1, CONTAINERS, Duration::from_secs(180)).await?;
    let (pid, port) = wire::agent_connection(agent, broker_port).await?;
    // MQTT has no negotiation: the agent's keep-alive is half its heartbeat timeout, as
    // AMQP's heartbeats go after half the negotiated timeout.
    let negotiated_heartbeat_secs = match transport {
        Transport::Amqp => wire::broker_heartbeat_secs(device)?,
        Transport::Mqtt => settings.heartbeat_secs(),
    };
    // The boot ends with the report of the first convergence.
    let boot_end = report_confirmed(capture, transport, port, broker_port, 0.0).await?;
    // The AMQP agent checks its queue for a while after consuming starts (before the
    // report): the idle window starts once those checks are over, when only heartbeats are
    // left. The MQTT agent has none.
    let queue_checks = match transport {
        Transport::Amqp => LAST_QUEUE_CHECK.as_secs_f64(),
        Transport::Mqtt => 0.0,
    };
    let settled = boot_end + queue_checks + 5.0;
    eprintln!(
        "footprint: waiting {:.0} s for the agent's queue checks to end",
        settled - wire::now()
    );
    tokio::time::sleep(Duration::from_secs_f64((settled - wire::now()).max(0.0))).await;

    eprintln!(
        "footprint: idle for {idle_secs} s (heartbeat timeout {negotiated_heartbeat_secs} s)"
    );
    let idle_start = wire::now();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle_end = wire::now();
    let idle_kib = resident(agent).await?;
    let ports = agent_connections(pid, broker_port)?;
    anyhow::ensure!(
        ports.len() == 1 && ports.contains(&port),
        "the agent's connection changed during the idle window (ports {ports:?}, was {port}): it reconnected\n{}",
        agent.process.log()
    );

    eprintln!("footprint: applying a change to {CONTAINERS} containers");
    let change_start = wire::now();
    let reply = rest
        .update_app(app, json!({"env_vars": {"FOOTPRINT": "changed"}}))
        .await?;
    let revision = reply["app_id"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no app_id in {reply}"))?;
    let peak = PeakSampler::start(agent.clone());
    wait_running(&engine, app, revision, CONTAINERS, Duration::from_secs(180)).await?;
    // The agent reports 200 ms after it applied a change; without this wait the window
    // could close on the report it sent when the change arrived, before that one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let applying_peak_kib = peak.stop().await;
    let change_end = report_confirmed(capture, transport, port, broker_port, change_start).await?;
    Ok(Measured {
        idle_kib,
        applying_peak_kib,
        negotiated_heartbeat_secs,
        port,
        boot_end,
        settled: idle_start,
        idle: (idle_start, idle_end),
        change: (change_start, change_end),
    })
}

/// Waits until the capture shows a report of the agent on connection `port` after `since`
/// confirmed by the broker, and the connection then quiet for a second (the agent's ACK of
/// the confirm included); returns the time of its last packet, plus a millisecond.
async fn report_confirmed(
    capture: &Capture,
    transport: Transport,
    port: u16,
    broker_port: u16,
    since: f64,
) -> anyhow::Result<f64> {
    const QUIET: f64 = 1.0;
    wait_for(
        "the agent's report and its confirm",
        Duration::from_secs(60),
        || async {
            let packets = wire::of_connection(&capture.packets().ok()?, port, broker_port);
            let packets: Vec<&Packet> = packets
                .iter()
                .filter(|packet| packet.time >= since)
                .collect();
            let published = packets.iter().position(|packet| {
                packet.destination_port == broker_port
                    && transport.kind(&packet.payload, packet.payload_len, Direction::ToBroker)
                        == Some(SegmentKind::Publish)
            })?;
            packets[published..].iter().find(|packet| {
                packet.source_port == broker_port
                    && transport.kind(&packet.payload, packet.payload_len, Direction::FromBroker)
                        == Some(SegmentKind::Ack)
            })?;
            let last = packets.last()?.time;
            (wire::now() - last >= QUIET).then_some(last + 0.001)
        },
    )
    .await
}

async fn resident(agent: &Agent) -> anyhow::Result<u64> {
    agent
        .process
        .resident_kib()
        .await
        .ok_or_else(|| anyhow::anyhow!("the agent is not running:\n{}", agent.process.log()))
}

/// Waits until `app` has its `expected` containers running at `revision` on the engine.
pub(super) async fn wait_running(
    engine: &bollard::Docker,
    app: &str,
    revision: u64,
    expected: usize,
    deadline: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let containers = app_containers(engine, app).await?;
        let ready = containers
            .iter()
            .filter(|container| container.running && container.app_id == Some(revision))
            .count();
        if ready == expected && containers.len() == expected {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < deadline,
            "{ready} of {expected} containers of {app} running at revision {revision} after {deadline:?}"
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
