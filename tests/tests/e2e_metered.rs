//! Issue 19, metered links: the agent gets the long heartbeat it asks for, and a link that
//! dies silently is noticed within one heartbeat timeout, after which the agent reconnects
//! and re-syncs as soon as the broker has let go of the dead connection.
//!
//! The link is killed with [`LinkDrop`]: every packet of the agent's broker connection is
//! dropped at the IP level, both ways, and nothing is refused or reset — what a cellular
//! carrier's NAT does when it forgets a mapping, or a radio link that goes quiet. New
//! connections (another local port) get through, as they would through a new mapping.

mod support;

use nebula_tests::services::test_image;
use nebula_tests::system::{Agent, AgentMode};
use nebula_tests::wire::{LinkDrop, agent_connections, broker_heartbeat_secs};
use nebula_tests::{unique_name, wait_for};
use serde_json::json;
use std::time::{Duration, Instant};
use support::{Scenario, app_id};

fn broker_port() -> u16 {
    nebula_tests::wire::Transport::Amqp.broker_port()
}

/// The heartbeat the agent asks for is the one the connection runs with, also above
/// RabbitMQ's own default of 60 s (lapin alone would take the lower of the two; see
/// `third_party/lapin/NEBULA.md`), and the default is the documented one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_gets_the_heartbeat_it_asks_for() {
    let scenario = Scenario::new("heartbeat");
    for (heartbeat, expected) in [
        (None, nebula_agent::config::DEFAULT_HEARTBEAT_SECS),
        (Some("900"), 900),
        (Some("7"), 7),
    ] {
        let device = unique_name("heartbeat-device");
        let mut environment = Vec::new();
        if let Some(heartbeat) = heartbeat {
            environment.push(("NEBULA_HEARTBEAT_SECS", heartbeat));
        }
        // No control plane is needed: the connection exists before the agent looks for its
        // group (which it then keeps asking for).
        let agent = Agent::start_with(
            &device,
            &AgentMode::Group(unique_name("group")),
            &scenario.vhost.amqp_url(),
            &scenario.directory,
            &environment,
        )
        .await;
        let negotiated = wait_for(
            "the agent's broker connection",
            Duration::from_secs(30),
            || async { broker_heartbeat_secs(&device).ok() },
        )
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", agent.process.log()));
        assert_eq!(negotiated, expected, "heartbeat asked for: {heartbeat:?}");
        agent.process.stop(Duration::from_secs(10)).await;
    }
}

/// A short heartbeat keeps this fast (the socket's limit on unacknowledged data, half the
/// timeout up to 2 minutes, is half of it here too). The `dead-link` benchmark of `.ci/run`
/// checks the release agent at its defaults (`tests/src/bench/dead_link.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_link_is_noticed_within_the_heartbeat_and_the_agent_resyncs() {
    dead_link_scenario("dead-link", 4, 2).await;
}

async fn dead_link_scenario(name: &str, heartbeat_secs: u64, max_backoff_secs: u64) {
    let heartbeat = Duration::from_secs(heartbeat_secs);
    let scenario = Scenario::new(name);
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("metered");
    let group = unique_name("metered");
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let device = unique_name("metered-device");
    let (heartbeat_text, backoff_text) = (heartbeat_secs.to_string(), max_backoff_secs.to_string());
    let agent = Agent::start_with(
        &device,
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
        &[
            ("NEBULA_HEARTBEAT_SECS", heartbeat_text.as_str()),
            ("NEBULA_MAX_BACKOFF_SECS", backoff_text.as_str()),
        ],
    )
    .await;
    scenario.converged(&app, 1, 1).await;
    let (pid, port) = nebula_tests::wire::agent_connection(&agent, broker_port())
        .await
        .expect("one broker connection");
    let losses_before = agent.process.log().matches(LOST).count();

    let link_drop = LinkDrop::start(port, broker_port()).expect("iptables rule (needs root)");
    let dropped = Instant::now();
    // A change the device cannot hear about over the dead link.
    let revision = app_id(
        &rest
            .update_app(&app, json!({"env_vars": {"WHILE": "unreachable"}}))
            .await
            .expect("update"),
    );

    // Noticed: the agent writes a heartbeat after half a timeout without writing, and
    // TCP_USER_TIMEOUT gives the unacknowledged write half a timeout (at most 2 minutes, far
    // above this test's): one timeout here, with two seconds of slack for the timers and a
    // loaded machine.
    let notice_bound = heartbeat + Duration::from_secs(2);
    let log = wait_for(
        "the agent to notice the dead link",
        notice_bound + Duration::from_secs(60),
        || async {
            let log = agent.process.log();
            (log.matches(LOST).count() > losses_before).then_some(log)
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", agent.process.log()));
    let noticed = dropped.elapsed();
    scenario.report("dead link noticed", dropped);
    assert!(
        noticed <= notice_bound,
        "noticed after {noticed:?}, bound {notice_bound:?}"
    );
    // By the socket's own timeout, not by lapin's two heartbeat timeouts of silence.
    let loss = log
        .lines()
        .filter(|line| line.contains(LOST))
        .nth(losses_before)
        .unwrap_or_default()
        .to_string();
    assert!(
        loss.contains("timed out"),
        "the connection should end on TCP_USER_TIMEOUT: {loss}"
    );

    // Re-synced: the new connection's exclusive queue is refused (RESOURCE_LOCKED) until
    // RabbitMQ drops the dead connection: two to three heartbeat timeouts after it last heard
    // from the agent (about when the link died), or a minute after its own next heartbeat
    // (scripts/services.sh's TCP_USER_TIMEOUT), whichever comes first — the former, at this
    // short heartbeat. The agent retries within its backoff cap, then syncs and applies the
    // change.
    let containers = scenario.converged(&app, 1, revision).await;
    let resynced = dropped.elapsed();
    scenario.report("dead link: re-synced", dropped);
    assert_eq!(
        containers[0].env.get("WHILE").map(String::as_str),
        Some("unreachable")
    );
    let resync_bound = heartbeat * 3 + Duration::from_secs(max_backoff_secs + 15);
    assert!(
        resynced <= resync_bound,
        "re-synced after {resynced:?}, bound {resync_bound:?}"
    );
    let ports = agent_connections(pid, broker_port()).expect("connections");
    assert!(
        !ports.contains(&port) && ports.len() == 1,
        "one new connection: {ports:?} (dead one was {port})"
    );
    drop(link_drop);
    agent.process.stop(Duration::from_secs(10)).await;
}

/// What the agent logs when its broker connection ends.
const LOST: &str = "lost the broker connection";
