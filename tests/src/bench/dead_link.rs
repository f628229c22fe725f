//! `dead-link`: how long a device on a link that dies silently stays out of reach, at the
//! agent's default settings (issue 19). One release agent follows a one-container app; once
//! it runs and its queue checks after the boot are over (so that only heartbeats write on the
//! idle connection), every packet of its broker connection is dropped at the IP level, both ways, with
//! nothing refused or reset ([`LinkDrop`]: what a cellular carrier's NAT does when it forgets
//! a mapping), and the app is changed. Measured from the drop: when the agent noticed (its
//! log's "lost the broker connection"), and when the change runs on the engine (the agent
//! reconnected on a new connection — a new local port, as through a new mapping — synced
//! and applied).
//!
//! Bounds, stated in the README and failing the run when missed (`failed_checks`):
//!
//! * noticed within half a heartbeat timeout plus the socket's limit on unacknowledged data
//!   (`TCP_USER_TIMEOUT`: half the timeout, at most 2 minutes) — 450 + 120 = 570 s at the
//!   default 900 s: the agent writes a heartbeat after half a timeout without writing, and
//!   that write goes unacknowledged; plus [`SLACK`] for the timers;
//! * re-synced within that plus the reconnect backoff's cap (`NEBULA_MAX_BACKOFF_SECS`, 30 s).
//!   This needs the broker to have let go of the dead connection by then, which holds the
//!   agent's exclusive queue: `scripts/services.sh` gives RabbitMQ's sockets a 60 s
//!   `TCP_USER_TIMEOUT`, so it drops the connection a minute after anything it sends goes
//!   unanswered — here the change message, sent at once. (With nothing to send, its next
//!   heartbeat comes half a timeout to a timeout after it last sent, so up to 16 minutes; but
//!   then there is also no change to make up for, and any change made meanwhile is sent, and
//!   so starts the minute.) A stock broker takes two to three heartbeat timeouts, and this
//!   check fails there.
//!
//! Options: `--heartbeat-secs N` to run at another heartbeat than the default (the bounds
//! follow it).

use super::Options;
use super::fleet_setup::FleetBench;
use super::footprint::{Settings, release_agent, start_release_agent, wait_running};
use crate::docker::{app_containers, remove_app_containers};
use crate::services::{docker, test_image};
use crate::system::{Agent, scratch_dir};
use crate::wire::{self, LinkDrop, Transport, agent_connections, broker_heartbeat_secs};
use crate::{unique_name, wait_for};
use nebula_agent::config::{DEFAULT_MAX_BACKOFF_SECS, MAX_UNACKNOWLEDGED};
use nebula_agent::transport::amqp::LAST_QUEUE_CHECK;
use serde_json::json;
use std::time::{Duration, Instant};

/// Room for the timers, a loaded machine, and the sync and container start after a reconnect.
const SLACK: Duration = Duration::from_secs(30);
/// What the agent logs when its broker connection ends.
const LOST: &str = "lost the broker connection";

pub async fn run(options: &Options) -> anyhow::Result<serde_json::Value> {
    // The agent's own report interval (not the harness's 5 s), so that nothing but the
    // heartbeat writes on the idle connection.
    let settings = Settings {
        heartbeat_secs: options.optional_number("heartbeat-secs")?,
        report_interval_secs: None,
        transport: Transport::Amqp,
    };
    let heartbeat = Duration::from_secs(settings.heartbeat_secs());
    let agent_binary = release_agent()?;
    let bench =
        FleetBench::prepare_with("dead-link", json!({"docker_image": test_image(1)})).await?;
    let directory = scratch_dir("bench-dead-link-agent");
    let device = unique_name("dead-link-device");
    let started = Instant::now();
    let agent = start_release_agent(&agent_binary, &bench, &device, &directory, settings).await;
    let result = measure(&agent, &bench, &device, heartbeat, started).await;
    agent.process.stop(Duration::from_secs(10)).await;
    bench
        .control_plane
        .process
        .stop(Duration::from_secs(10))
        .await;
    if let Ok(engine) = docker() {
        let _ = remove_app_containers(&engine, &bench.app).await;
    }
    let measured = result?;
    let notice_bound = notice_bound(heartbeat);
    let resync_bound = notice_bound + Duration::from_secs(DEFAULT_MAX_BACKOFF_SECS);
    let mut failed = Vec::new();
    if !broker_drops_dead_connections() {
        failed.push(
            "the broker's sockets have no TCP_USER_TIMEOUT (its tcp_listen_options lack {raw, 6, 18, _}): \
             it was started before scripts/services.sh configured it; `scripts/services.sh restart rabbitmq`"
                .to_string(),
        );
    }
    if measured.noticed > notice_bound {
        failed.push(format!(
            "the dead link was noticed after {:.1} s, over the bound of {} s",
            measured.noticed.as_secs_f64(),
            notice_bound.as_secs()
        ));
    }
    if measured.resynced > resync_bound {
        failed.push(format!(
            "the change made while the link was dead ran after {:.1} s, over the bound of {} s",
            measured.resynced.as_secs_f64(),
            resync_bound.as_secs()
        ));
    }
    if !measured.loss.contains("timed out") {
        failed.push(format!(
            "the connection did not end on the socket's timeout (TCP_USER_TIMEOUT): {}",
            measured.loss
        ));
    }
    eprintln!(
        "dead-link: heartbeat {} s; noticed after {:.1} s (bound {} s), change applied after {:.1} s (bound {} s)",
        heartbeat.as_secs(),
        measured.noticed.as_secs_f64(),
        notice_bound.as_secs(),
        measured.resynced.as_secs_f64(),
        resync_bound.as_secs()
    );
    Ok(json!({
        "scenario": "dead-link",
        "parameters": {
            "heartbeat_secs": heartbeat.as_secs(),
            "agent_defaults": settings.heartbeat_secs.is_none(),
        },
        "negotiated_heartbeat_secs": measured.negotiated_heartbeat_secs,
        "link_dropped_to_noticed_secs": measured.noticed.as_secs_f64(),
        "link_dropped_to_change_applied_secs": measured.resynced.as_secs_f64(),
        "bounds_secs": {"noticed": notice_bound.as_secs(), "change_applied": resync_bound.as_secs()},
        "connection_end": measured.loss,
        "failed_checks": failed,
    }))
}

/// Whether the broker runs with the `TCP_USER_TIMEOUT` `scripts/services.sh` configures.
fn broker_drops_dead_connections() -> bool {
    std::process::Command::new("rabbitmqctl")
        .args(["eval", "application:get_env(rabbit, tcp_listen_options)."])
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .collect::<String>()
                .contains("{raw,6,18,")
        })
}

/// Half a heartbeat until the agent writes, the socket's limit until it gives up, and slack.
fn notice_bound(heartbeat: Duration) -> Duration {
    heartbeat / 2 + (heartbeat / 2).min(MAX_UNACKNOWLEDGED) + SLACK
}

#[derive(Debug)]
struct Measured {
    negotiated_heartbeat_secs: u64,
    noticed: Duration,
    resynced: Duration,
    /// The agent's log line saying why the connection ended.
    loss: String,
}

async fn measure(
    agent: &Agent,
    bench: &FleetBench,
    device: &str,
    heartbeat: Duration,
    started: Instant,
) -> anyhow::Result<Measured> {
    let engine = docker()?;
    let broker_port = Transport::Amqp.broker_port();
    wait_running(&engine, &bench.app, 1, 1, Duration::from_secs(180)).await?;
    let (pid, port) = wire::agent_connection(agent, broker_port).await?;
    let negotiated_heartbeat_secs = broker_heartbeat_secs(device)?;
    anyhow::ensure!(
        negotiated_heartbeat_secs == heartbeat.as_secs(),
        "the connection runs with a {negotiated_heartbeat_secs} s heartbeat, not the {} s asked for",
        heartbeat.as_secs()
    );
    // After the agent's queue checks (they write, and a write the broker does not
    // acknowledge is what ends the connection): from then on only heartbeats do.
    let settled = started + LAST_QUEUE_CHECK + Duration::from_secs(15);
    eprintln!(
        "dead-link: waiting {} s for the agent's queue checks to end",
        settled.saturating_duration_since(Instant::now()).as_secs()
    );
    tokio::time::sleep_until(settled.into()).await;
    let losses_before = agent.process.log().matches(LOST).count();

    let link_drop = LinkDrop::start(port, broker_port)?;
    let dropped = Instant::now();
    eprintln!(
        "dead-link: dropping every packet of the agent's connection (local port {port}); \
         noticing can take up to {} s",
        notice_bound(heartbeat).as_secs()
    );
    let reply = bench
        .control_plane
        .rest()
        .update_app(&bench.app, json!({"env_vars": {"WHILE": "unreachable"}}))
        .await?;
    let revision = reply["app_id"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no app_id in {reply}"))?;
    // Past the bounds, to measure how late a miss is (a stock broker: up to three timeouts).
    let deadline = heartbeat * 3 + Duration::from_secs(DEFAULT_MAX_BACKOFF_SECS) + SLACK;
    let loss = wait_for("the agent to notice the dead link", deadline, || async {
        agent
            .process
            .log()
            .lines()
            .filter(|line| line.contains(LOST))
            .nth(losses_before)
            .map(str::to_string)
    })
    .await
    .map_err(|error| anyhow::anyhow!("{error}\n{}", agent.process.log()))?;
    let noticed = dropped.elapsed();
    eprintln!("dead-link: noticed after {:.1} s", noticed.as_secs_f64());
    wait_running(
        &engine,
        &bench.app,
        revision,
        1,
        deadline.saturating_sub(noticed),
    )
    .await?;
    let resynced = dropped.elapsed();
    let containers = app_containers(&engine, &bench.app).await?;
    anyhow::ensure!(
        containers[0].env.get("WHILE").map(String::as_str) == Some("unreachable"),
        "the change made while the link was dead is not in the container: {:?}",
        containers[0].env
    );
    let ports = agent_connections(pid, broker_port)?;
    anyhow::ensure!(
        ports.len() == 1 && !ports.contains(&port),
        "expected one new connection, got local ports {ports:?} (the dead one was {port})"
    );
    drop(link_drop);
    Ok(Measured {
        negotiated_heartbeat_secs,
        noticed,
        resynced,
        loss,
    })
}
