//! Scenario 5: RabbitMQ restarted under running agents — over AMQP in group and app mode,
//! and over MQTT. Agents lose their connection, reconnect in-process (they do not exit),
//! re-sync and converge; app containers keep running throughout (their ids do not change).
//!
//! In a test binary of its own: restarting the broker would disturb any test running
//! next to it, and cargo runs test binaries one after another.

mod support;

use nebula_tests::services::test_image;
use nebula_tests::system::{Agent, AgentMode};
use nebula_tests::unique_name;
use serde_json::json;
use std::time::Instant;
use support::amqp::{ReportTap, applied};
use support::{Scenario, app_id, identities};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_survive_a_broker_restart_without_restarting_apps() {
    let scenario = Scenario::new("broker-restart");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let (grouped, single) = (scenario.app_name("grouped"), scenario.app_name("single"));
    let over_mqtt = scenario.app_name("over.mqtt");
    let group = unique_name("group");
    rest.create_app(
        &grouped,
        json!({"docker_image": test_image(1), "containers_per": {"server": 2}}),
    )
    .await
    .expect("create");
    rest.create_app(&single, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_app(&over_mqtt, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&grouped]).await.expect("group");
    let group_agent = Agent::start(
        "device-br-group",
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    let app_agent = Agent::start(
        "device-br-app",
        &AgentMode::Apps(vec![single.clone()]),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    let mqtt_url = format!("mqtt://guest:guest@127.0.0.1:1883/{}", scenario.vhost.name);
    let mqtt_agent = Agent::start_with(
        "device-br-mqtt",
        &AgentMode::Apps(vec![over_mqtt.clone()]),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
        &[("NEBULA_TRANSPORT", "mqtt"), ("NEBULA_MQTT_URL", &mqtt_url)],
    )
    .await;
    let grouped_before = identities(&scenario.converged(&grouped, 2, 1).await);
    let single_before = identities(&scenario.converged(&single, 1, 1).await);
    let mqtt_before = identities(&scenario.converged(&over_mqtt, 1, 1).await);

    let start = Instant::now();
    for arguments in [["stop_app"], ["start_app"]] {
        let status = std::process::Command::new("rabbitmqctl")
            .args(arguments)
            .status()
            .expect("rabbitmqctl");
        assert!(status.success(), "rabbitmqctl {arguments:?}");
    }
    let _ = std::process::Command::new("rabbitmqctl")
        .args(["await_startup"])
        .status();
    control_plane
        .wait_ready()
        .await
        .expect("control plane back");

    // Once each agent reports itself synced and up to date again (a report made after the
    // restart went through a new connection), nothing was restarted.
    let restarted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for (device, app) in [
        ("device-br-group", &grouped),
        ("device-br-app", &single),
        ("device-br-mqtt", &over_mqtt),
    ] {
        let mut tap = ReportTap::new(&scenario.vhost.amqp_url(), device).await;
        tap.wait(support::DEADLINE, |report| {
            report.report_creation_time >= restarted_at && applied(report, app, 1)
        })
        .await;
    }
    scenario.report("broker restart, agents re-synced", start);
    for agent in [&group_agent, &app_agent, &mqtt_agent] {
        assert_eq!(
            agent.process.exits(),
            0,
            "a lost connection must not end the agent:\n{}",
            agent.process.log()
        );
    }
    assert_eq!(
        identities(&scenario.converged(&grouped, 2, 1).await),
        grouped_before,
        "containers restarted"
    );
    assert_eq!(
        identities(&scenario.converged(&single, 1, 1).await),
        single_before,
        "containers restarted"
    );
    assert_eq!(
        identities(&scenario.converged(&over_mqtt, 1, 1).await),
        mqtt_before,
        "containers restarted"
    );

    // A change after the restart reaches both, proving they re-synced and consume again.
    let grouped_id = app_id(
        &rest
            .update_app(&grouped, json!({"env_vars": {"AFTER": "restart"}}))
            .await
            .expect("update"),
    );
    let single_id = app_id(
        &rest
            .update_app(&single, json!({"env_vars": {"AFTER": "restart"}}))
            .await
            .expect("update"),
    );
    let mqtt_id = app_id(
        &rest
            .update_app(&over_mqtt, json!({"env_vars": {"AFTER": "restart"}}))
            .await
            .expect("update"),
    );
    scenario.converged(&grouped, 2, grouped_id).await;
    scenario.converged(&single, 1, single_id).await;
    scenario.converged(&over_mqtt, 1, mqtt_id).await;
    scenario.report("broker restart + change", start);
}
