//! `fanout`: N agents in one device group; a stream of app updates through the REST API;
//! for each update, what the user waits for — from sending the request until the change is
//! applied on every agent — and then its parts: the REST call (store write and the broker's
//! confirm) and the time after the 2xx.
//!
//! `--broker cluster` runs it on the three-node cluster (agents spread over its nodes),
//! `--broker both` on the single node and then on the cluster, side by side.
//! `--transport mqtt` runs the agents over MQTT (issue 17; the single node's MQTT listener).
//!
//! Not counted: an agent's work on a real container runtime (the simulated one applies at
//! once; `footprint` and the e2e suite have real-Docker figures), and network latency to
//! devices (everything is on one machine).

use super::Options;
use super::fleet_setup::{Broker, FleetBench, on_brokers};
use super::stats::Percentiles;
use crate::fleet::Fleet;
use crate::wire::{self, Transport};
use serde_json::json;
use std::time::{Duration, Instant};

pub async fn run(options: &Options) -> anyhow::Result<serde_json::Value> {
    on_brokers(options, "fanout", |broker| run_on(options, broker)).await
}

async fn run_on(options: &Options, broker: Broker) -> anyhow::Result<serde_json::Value> {
    let agents = options.number("agents", 100)? as usize;
    let updates = options.number("updates", 20)?;
    let deadline = Duration::from_secs(options.number("deadline-secs", 120)?);
    let transport = Transport::parse(&options.text("transport", "amqp"))?;
    anyhow::ensure!(
        transport == Transport::Amqp || broker == Broker::Single,
        "--transport mqtt runs on the single broker only (the cluster's nodes have no MQTT listener)"
    );
    let bench = FleetBench::prepare("fanout", broker).await?;
    let app = bench.app_name();

    eprintln!(
        "fanout: starting {agents} agents ({} broker, {})",
        broker.label(),
        transport.name()
    );
    let mqtt_url = format!(
        "mqtt://guest:guest@127.0.0.1:{}/{}",
        wire::MQTT_PORT,
        bench.vhost.name
    );
    let mqtt_env = [
        ("NEBULA_TRANSPORT", "mqtt"),
        ("NEBULA_MQTT_URL", mqtt_url.as_str()),
    ];
    let extra_env: &[(&str, &str)] = match transport {
        Transport::Amqp => &[],
        Transport::Mqtt => &mqtt_env,
    };
    let booted = Instant::now();
    let fleet = Fleet::start_with(
        agents,
        &bench.group,
        &bench.amqp_url,
        &bench.state_root,
        3600,
        extra_env,
    )?;
    fleet.wait_applied(&app, 1, booted, deadline).await?;
    let boot_secs = booted.elapsed().as_secs_f64();
    eprintln!("fanout: {agents} agents converged in {boot_secs:.2} s; sending {updates} updates");

    let rest = bench.control_plane.rest().with_timeout(deadline);
    let (mut per_agent, mut per_update, mut from_request) = (Vec::new(), Vec::new(), Vec::new());
    let (mut write_latency, mut request_to_all) = (Vec::new(), Vec::new());
    for update in 0..updates {
        let sent = Instant::now();
        let reply = rest
            .update_app(
                &bench.app,
                json!({"env_vars": {"UPDATE": update.to_string()}}),
            )
            .await?;
        let acknowledged = Instant::now();
        let revision = reply["app_id"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no app_id in {reply}"))?;
        // Measured from the request: the control plane answers only after the broker
        // confirmed the publish, so fast agents often apply before the 2xx is even read.
        let latencies = fleet.wait_applied(&app, revision, sent, deadline).await?;
        let rest_latency = acknowledged - sent;
        write_latency.push(rest_latency);
        request_to_all.push(latencies.iter().copied().max().unwrap_or_default());
        per_update.push(
            latencies
                .iter()
                .copied()
                .max()
                .unwrap_or_default()
                .saturating_sub(rest_latency),
        );
        eprintln!(
            "fanout: update {}/{updates}: 2xx after {} ms, every agent applied {} ms after the request",
            update + 1,
            rest_latency.as_millis(),
            latencies
                .iter()
                .max()
                .copied()
                .unwrap_or_default()
                .as_millis()
        );
        from_request.extend(latencies.iter().copied());
        per_agent.extend(
            latencies
                .into_iter()
                .map(|latency| latency.saturating_sub(rest_latency)),
        );
    }
    let restarts = fleet.restarts();
    let stopping = Instant::now();
    fleet.stop().await;
    eprintln!(
        "fanout: {agents} agents stopped in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    bench
        .control_plane
        .process
        .stop(Duration::from_secs(10))
        .await;
    Ok(json!({
        "scenario": "fanout",
        "broker": broker.label(),
        "parameters": {"agents": agents, "updates": updates, "broker": broker.label(), "transport": transport.name()},
        "agents": agents,
        "updates": updates,
        // What the user waits for, per update: request sent -> applied on every agent.
        "request_to_applied_on_every_agent_ms": Percentiles::of(&mut request_to_all),
        // The same per (update, agent).
        "request_to_applied_per_agent_ms": Percentiles::of(&mut from_request),
        // The update's REST call alone: store commit plus the broker's confirm of a transient
        // message routed to every agent's exclusive queue.
        "rest_write_ms": Percentiles::of(&mut write_latency),
        // From the 2xx to applied on every agent, per update; 0 when every agent was faster.
        "after_2xx_applied_on_every_agent_ms": Percentiles::of(&mut per_update),
        // From the 2xx to applied, per (update, agent).
        "after_2xx_applied_per_agent_ms": Percentiles::of(&mut per_agent),
        "boot_converged_secs": boot_secs,
        "agent_restarts": restarts,
    }))
}
