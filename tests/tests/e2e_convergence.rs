//! Issue 12 (convergence core v2), agent side, end to end: real control plane, broker,
//! agents and Docker engine.
//!
//! * A device that was down while a member app changed — its exclusive queue gone with its
//!   connection, its group unchanged — converges when it comes back (defect 1).
//! * A second agent with the same device id (a cloned SD card) is refused its queue, says
//!   what to do, does not crash-loop, and never takes changes from the first (defect 9).

mod support;

use nebula_protocol::{Name, names};
use nebula_tests::services::test_image;
use nebula_tests::system::{Agent, AgentMode};
use nebula_tests::unique_name;
use serde_json::json;
use std::time::{Duration, Instant};
use support::amqp::queue_messages;
use support::{DEADLINE, Scenario, app_id, identities};

const GRACE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_app_changed_while_the_device_was_down_converges_after_restart() {
    let scenario = Scenario::new("down-member");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let (app, other) = (scenario.app_name("member"), scenario.app_name("steady"));
    let group = unique_name("group");
    for name in [&app, &other] {
        rest.create_app(name, json!({"docker_image": test_image(1)}))
            .await
            .expect("create");
    }
    let group_document = rest
        .create_group(&group, &[&app, &other])
        .await
        .expect("group");
    let device = "device-down-member";
    let agent = Agent::start(
        device,
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    scenario.converged(&app, 1, 1).await;
    let steady = identities(&scenario.converged(&other, 1, 1).await);

    let status = agent.process.stop(GRACE).await.expect("agent was running");
    assert!(status.success(), "{status:?}\n{}", agent.process.log());
    // The agent's queue is exclusive: it went with the connection, so nothing holds the
    // change below for the device.
    let queue = names::group_queue(
        &Name::new(device).expect("name"),
        &Name::new(group.as_str()).expect("name"),
    );
    nebula_tests::wait_for("the agent queue gone", DEADLINE, || {
        let gone = queue_messages(&scenario.vhost, &queue).is_none();
        async move { gone.then_some(()) }
    })
    .await
    .expect("exclusive queue deleted with its connection");

    // The member app changes; the group does not.
    let updated = app_id(
        &rest
            .update_app(
                &app,
                json!({"docker_image": test_image(2), "env_vars": {"WHILE": "down"}}),
            )
            .await
            .expect("update"),
    );
    let group_now = rest
        .get(&format!("/device_groups/{group}"))
        .await
        .expect("get group")
        .ok()
        .expect("group");
    assert_eq!(
        group_now["device_group_id"], group_document["device_group_id"],
        "the group revision must stay the same for this scenario"
    );

    let start = Instant::now();
    agent.process.restart_with(&[]).await;
    let containers = scenario.converged(&app, 1, updated).await;
    assert_eq!(containers[0].image, test_image(2));
    assert_eq!(
        containers[0].env.get("WHILE").map(String::as_str),
        Some("down")
    );
    assert_eq!(
        identities(&scenario.converged(&other, 1, 1).await),
        steady,
        "the unchanged member must not be restarted"
    );
    scenario.report("member changed while down", start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_device_id_is_refused_and_does_not_share_changes() {
    let scenario = Scenario::new("duplicate-id");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("dup");
    let group = unique_name("group");
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let device = "device-cloned-card";
    let first = Agent::start(
        device,
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    scenario.converged(&app, 1, 1).await;

    // The clone: same device id, its own disk (state directory and log).
    let clone_directory = scenario.directory.join("clone");
    std::fs::create_dir_all(&clone_directory).expect("clone dir");
    let clone = Agent::start_with(
        device,
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &clone_directory,
        &[("NEBULA_MAX_BACKOFF_SECS", "2"), ("NO_COLOR", "1")],
    )
    .await;
    // The agent's own explanation, which follows lapin's log line of the 405 (waiting for
    // "RESOURCE_LOCKED" alone raced with it: lapin's line names the code too).
    nebula_tests::wait_for("the clone reports the duplicate", DEADLINE, || {
        let log = clone.process.log();
        async move { log.contains("NEBULA_DEVICE_ID").then_some(()) }
    })
    .await
    .expect("the clone says what is wrong");
    let log = clone.process.log();
    assert!(
        log.contains("RESOURCE_LOCKED") && log.contains("/etc/machine-id"),
        "{log}"
    );

    // Every change reaches the containers through the first agent; the clone sees none.
    let start = Instant::now();
    let mut last = 1;
    for change in 0..4 {
        last = app_id(
            &rest
                .update_app(&app, json!({"env_vars": {"CHANGE": change.to_string()}}))
                .await
                .expect("update"),
        );
        scenario.converged(&app, 1, last).await;
    }
    scenario.report("4 changes next to a clone", start);
    let log = clone.process.log();
    assert!(
        !log.contains("app changed"),
        "the clone got a change:\n{log}"
    );
    assert!(
        !clone.state_dir.exists(),
        "the clone must not have synced or persisted anything"
    );
    assert_eq!(clone.process.exits(), 0, "no crash loop:\n{log}");
    assert_eq!(first.process.exits(), 0, "{}", first.process.log());

    // The first agent goes (the card is moved): the clone takes over.
    first.process.stop(GRACE).await;
    nebula_tests::wait_for("the clone takes over", DEADLINE, || {
        let log = clone.process.log();
        async move { log.contains("synced; consuming changes").then_some(()) }
    })
    .await
    .expect("the clone follows the group once the queue is free");
    let next = app_id(
        &rest
            .update_app(&app, json!({"env_vars": {"CHANGE": "after"}}))
            .await
            .expect("update"),
    );
    assert!(next > last);
    scenario.converged(&app, 1, next).await;
}
