//! `sync-storm`: N agents booting at once, and again after a RabbitMQ restart: the time until
//! every agent has synced and converged, broker memory and CPU during the storm, and sync
//! requests answered per second.

use super::Options;
use super::broker::BrokerSampler;
use super::fleet_setup::FleetBench;
use crate::fleet::Fleet;
use serde_json::json;
use std::time::{Duration, Instant};

pub async fn run(options: &Options) -> anyhow::Result<serde_json::Value> {
    let agents = options.number("agents", 100)? as usize;
    let deadline = Duration::from_secs(options.number("deadline-secs", 300)?);
    let bench = FleetBench::prepare("sync-storm").await?;
    let app = bench.app_name();

    eprintln!("sync-storm: booting {agents} agents at once");
    let sampler = BrokerSampler::start();
    let booted = Instant::now();
    let fleet = Fleet::start(
        agents,
        &bench.group,
        &bench.vhost.amqp_url(),
        &bench.state_root,
        3600,
    )?;
    fleet.wait_applied(&app, 1, booted, deadline).await?;
    let boot_secs = booted.elapsed().as_secs_f64();
    let boot_broker = sampler.stop().await;
    eprintln!("sync-storm: all synced in {boot_secs:.2} s; restarting RabbitMQ");

    // Every agent loses its connection, fails hard, and boots again through the full sync.
    let sampler = BrokerSampler::start();
    let restarted = Instant::now();
    for arguments in [["stop_app"], ["start_app"]] {
        let status = std::process::Command::new("rabbitmqctl")
            .args(arguments)
            .status()?;
        anyhow::ensure!(status.success(), "rabbitmqctl {arguments:?} failed");
    }
    // A change made right after the restart proves each agent re-synced and consumes again.
    let rest = bench.control_plane.rest();
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
    fleet
        .wait_applied(&app, revision, restarted, deadline)
        .await?;
    let restart_secs = restarted.elapsed().as_secs_f64();
    let restart_broker = sampler.stop().await;
    let restarts = fleet.restarts();
    fleet.stop().await;
    bench
        .control_plane
        .process
        .stop(Duration::from_secs(10))
        .await;
    Ok(json!({
        "scenario": "sync-storm",
        "parameters": {"agents": agents},
        "agents": agents,
        "boot": {
            "all_synced_secs": boot_secs,
            "sync_requests_per_sec": agents as f64 / boot_secs,
            "broker": boot_broker,
        },
        "after_broker_restart": {
            "all_resynced_and_converged_secs": restart_secs,
            "sync_requests_per_sec": agents as f64 / restart_secs,
            "broker": restart_broker,
            "agent_restarts": restarts,
        },
    }))
}
