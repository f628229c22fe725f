//! `sync-storm`: N agents booting at once, and again after a RabbitMQ restart: the time until
//! every agent has synced and converged, broker memory and CPU during the storm, and sync
//! requests answered per second (counted by the control plane, retries included).
//!
//! On the cluster (`--broker cluster`, or `both` for the single node and the cluster side by
//! side) the second storm is a node's loss instead of a restart: one node is killed with
//! SIGKILL and started again, its agents (about a third) reconnect to the other nodes and
//! sync again, and a change made right after the kill must reach every agent.

use super::Options;
use super::broker::BrokerSampler;
use super::fleet_setup::{Broker, FleetBench, on_brokers};
use crate::fleet::Fleet;
use crate::rest::Rest;
use serde_json::json;
use std::time::{Duration, Instant};

pub async fn run(options: &Options) -> anyhow::Result<serde_json::Value> {
    on_brokers(options, "sync-storm", |broker| run_on(options, broker)).await
}

async fn run_on(options: &Options, broker: Broker) -> anyhow::Result<serde_json::Value> {
    let agents = options.number("agents", 100)? as usize;
    let deadline = Duration::from_secs(options.number("deadline-secs", 300)?);
    let bench = FleetBench::prepare("sync-storm", broker).await?;
    let app = bench.app_name();

    eprintln!(
        "sync-storm: booting {agents} agents at once ({} broker)",
        broker.label()
    );
    let rest = bench.control_plane.rest();
    let sampler = BrokerSampler::start(broker.ports());
    let syncs = SyncCounter::start(rest.clone()).await?;
    let booted = Instant::now();
    let fleet = Fleet::start(
        agents,
        &bench.group,
        &bench.amqp_url,
        &bench.state_root,
        3600,
    )?;
    fleet.wait_applied(&app, 1, booted, deadline).await?;
    let boot_secs = booted.elapsed().as_secs_f64();
    let boot_broker = sampler.stop().await;
    let boot_syncs = syncs.stop().await?;

    // Single node: every agent loses its connection, reconnects and syncs again. Cluster:
    // the agents of the killed node do, on the other nodes.
    let sampler = BrokerSampler::start(broker.ports());
    let syncs = SyncCounter::start(rest.clone()).await?;
    let restarted = Instant::now();
    let node_back = match broker {
        Broker::Single => {
            eprintln!("sync-storm: all synced in {boot_secs:.2} s; restarting RabbitMQ");
            for arguments in [["stop_app"], ["start_app"]] {
                // Its chatter goes to stderr: stdout holds only the scenario's JSON line.
                let status = std::process::Command::new("rabbitmqctl")
                    .args(arguments)
                    .stdout(std::io::stderr())
                    .status()?;
                anyhow::ensure!(status.success(), "rabbitmqctl {arguments:?} failed");
            }
            None
        }
        Broker::Cluster => {
            let cluster = crate::cluster::Cluster::from_env();
            let victim = cluster.clone();
            let pid = tokio::task::spawn_blocking(move || victim.kill(0)).await??;
            eprintln!(
                "sync-storm: all synced in {boot_secs:.2} s; killed node 0 (pid {pid}) with SIGKILL"
            );
            Some(tokio::task::spawn_blocking(move || cluster.start_missing()))
        }
    };
    // A change made right after the restart proves each agent re-synced and consumes again.
    let revision = loop {
        match rest
            .update_app(&bench.app, json!({"env_vars": {"AFTER": "restart"}}))
            .await
        {
            Ok(reply) => {
                break reply["app_id"]
                    .as_u64()
                    .ok_or_else(|| anyhow::anyhow!("no app_id"))?;
            }
            Err(_) if restarted.elapsed() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => return Err(error),
        }
    };
    let converged = fleet
        .wait_applied(&app, revision, restarted, deadline)
        .await;
    let restart_secs = restarted.elapsed().as_secs_f64();
    // Failed or not, the killed node runs again before this returns (the next scenario and
    // the tests after need the whole cluster); `services.sh` bounds that wait.
    if let Some(node_back) = node_back {
        node_back.await??;
    }
    converged?;
    let restart_broker = sampler.stop().await;
    let restart_syncs = syncs.stop().await?;
    let restarts = fleet.restarts();
    fleet.stop().await;
    bench
        .control_plane
        .process
        .stop(Duration::from_secs(10))
        .await;
    let second = json!({
        "all_resynced_and_converged_secs": restart_secs,
        "sync_requests": restart_syncs.json(restart_secs),
        "broker": restart_broker,
        "agent_restarts": restarts,
    });
    let mut figures = json!({
        "scenario": "sync-storm",
        "broker": broker.label(),
        "parameters": {"agents": agents, "broker": broker.label()},
        "agents": agents,
        "boot": {
            "all_synced_secs": boot_secs,
            "sync_requests": boot_syncs.json(boot_secs),
            "broker": boot_broker,
        },
    });
    let second_name = match broker {
        Broker::Single => "after_broker_restart",
        Broker::Cluster => "after_node_killed",
    };
    figures[second_name] = second;
    Ok(figures)
}

/// Follows the control plane's count of answered sync requests during one phase.
struct SyncCounter {
    running: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<SyncCount>>,
}

#[derive(Debug, Clone, Copy)]
struct SyncCount {
    answered: u64,
    /// The highest rate over one sampling interval, as answered in it divided by its real
    /// length (about a second; the last one is shorter, a slow `/metrics` makes one longer).
    peak_per_sec: f64,
}

impl SyncCounter {
    async fn start(rest: Rest) -> anyhow::Result<Self> {
        let first = rest.sync_requests_answered().await?;
        let running = tokio_util::sync::CancellationToken::new();
        let token = running.clone();
        let task = tokio::spawn(async move {
            let (mut last, mut answered, mut peak_per_sec) = (first, 0, 0.0f64);
            let mut sampled = std::time::Instant::now();
            loop {
                let stopped = tokio::select! {
                    () = token.cancelled() => true,
                    () = tokio::time::sleep(Duration::from_secs(1)) => false,
                };
                // The control plane stays up through a broker restart, but a sample can go
                // unanswered; another start time would be a fresh process counting from zero.
                if let Ok(now) = rest.sync_requests_answered().await {
                    let delta = if now.started == last.started {
                        now.answered.saturating_sub(last.answered)
                    } else {
                        now.answered
                    };
                    answered += delta;
                    let interval = sampled.elapsed().as_secs_f64();
                    sampled = std::time::Instant::now();
                    if interval > 0.0 {
                        peak_per_sec = peak_per_sec.max(delta as f64 / interval);
                    }
                    last = now;
                }
                if stopped {
                    return Ok(SyncCount {
                        answered,
                        peak_per_sec,
                    });
                }
            }
        });
        Ok(Self { running, task })
    }

    async fn stop(self) -> anyhow::Result<SyncCount> {
        self.running.cancel();
        self.task.await?
    }
}

impl SyncCount {
    fn json(&self, secs: f64) -> serde_json::Value {
        json!({
            "answered": self.answered,
            "per_sec": self.answered as f64 / secs,
            "peak_per_sec": self.peak_per_sec,
        })
    }
}
