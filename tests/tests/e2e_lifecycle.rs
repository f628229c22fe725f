//! Scenario 1: every app operation converges on the Docker engine, in group mode and in
//! app mode — create, update, stop, start, restart, rolling restart, membership changes,
//! delete — with the right image, count, names, ports, env, volumes and labels.

mod support;

use nebula_tests::services::test_image;
use nebula_tests::system::{Agent, AgentMode, free_port};
use serde_json::json;
use std::time::Instant;
use support::{Scenario, app_id, http_body, identities};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_mode_lifecycle_converges() {
    let scenario = Scenario::new("lifecycle-group");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("web");
    let other = scenario.app_name("side");
    let group = nebula_tests::unique_name("group");
    let port = free_port();
    let volume = scenario.directory.join("volume");
    std::fs::create_dir_all(&volume).expect("volume dir");

    // Create: two containers with every field that shows on the engine.
    let created = rest
        .create_app(
            &app,
            json!({
                "docker_image": test_image(1),
                "containers_per": {"server": 2},
                "starting_ports": [{ port.to_string(): "8000" }],
                "env_vars": {"MODE": "edge"},
                "volumes": [format!("{}:/data:ro", volume.display())],
                "networks": ["nebula"],
            }),
        )
        .await
        .expect("create app");
    assert_eq!(app_id(&created), 1);
    rest.create_group(&group, &[&app])
        .await
        .expect("create group");

    let start = Instant::now();
    let agent = Agent::start(
        "device-lifecycle",
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    let containers = scenario.converged(&app, 2, 1).await;
    scenario.report("create (2 containers)", start);
    for (index, container) in containers.iter().enumerate() {
        assert_eq!(container.image, test_image(1));
        assert_eq!(container.env.get("MODE").map(String::as_str), Some("edge"));
        assert_eq!(
            container.ports.get("8000/tcp"),
            Some(&vec![port + index as u16]),
            "{container:?}"
        );
        assert!(
            container
                .binds
                .iter()
                .any(|bind| bind == &format!("{}:/data:ro", volume.display())),
            "{container:?}"
        );
        assert_eq!(
            container.labels.get("orchestrator").map(String::as_str),
            Some("nebula")
        );
        assert_eq!(container.labels.get("app_name"), Some(&app));
        assert_eq!(container.restart_policy.as_deref(), Some("unless-stopped"));
        assert!(
            container.networks.contains(&"nebula".to_string()),
            "{container:?}"
        );
        assert!(!container.privileged);
    }
    let body = nebula_tests::wait_for("httpd answers", support::DEADLINE, || http_body(port + 1))
        .await
        .expect("http");
    assert!(body.contains('1'), "version 1 served, got {body:?}");

    // Update the image: every container replaced at the new revision.
    let start = Instant::now();
    let updated = rest
        .update_app(&app, json!({"docker_image": test_image(2)}))
        .await
        .expect("update");
    assert_eq!(app_id(&updated), 2);
    let containers = scenario.converged(&app, 2, 2).await;
    scenario.report("update image", start);
    assert!(
        containers
            .iter()
            .all(|container| container.image == test_image(2))
    );

    // Stop removes, start brings back.
    let start = Instant::now();
    let stopped = rest.app_action(&app, "stop").await.expect("stop");
    assert_eq!(stopped["running"], json!(false));
    scenario.converged(&app, 0, 3).await;
    scenario.report("stop", start);
    let start = Instant::now();
    rest.app_action(&app, "start").await.expect("start");
    let before_restart = scenario.converged(&app, 2, 4).await;
    scenario.report("start", start);

    // Restart replaces every container.
    let start = Instant::now();
    rest.app_action(&app, "restart").await.expect("restart");
    let after_restart = scenario.converged(&app, 2, 5).await;
    scenario.report("restart", start);
    for (before, after) in before_restart.iter().zip(&after_restart) {
        assert_ne!(before.id, after.id, "restart must replace {}", before.name);
    }

    // Rolling restart at a larger size: never more than one container down at a time.
    let start = Instant::now();
    rest.update_app(
        &app,
        json!({"rolling_restart": true, "containers_per": {"server": 3}}),
    )
    .await
    .expect("rolling");
    scenario.converged(&app, 3, 6).await;
    scenario.report("grow to 3 (rolling)", start);
    let start = Instant::now();
    rest.app_action(&app, "restart")
        .await
        .expect("rolling restart");
    // Sampled, not exact: a dip between two samples could be missed, but one the
    // sampling does see is a real violation.
    let mut fewest_running = usize::MAX;
    loop {
        let containers = nebula_tests::docker::app_containers(&scenario.docker, &app)
            .await
            .expect("list");
        fewest_running = fewest_running.min(
            containers
                .iter()
                .filter(|container| container.running)
                .count(),
        );
        if support::is_converged(&app, &containers, 3, 7) {
            break;
        }
        assert!(
            start.elapsed() < support::DEADLINE,
            "rolling restart did not converge: {containers:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    scenario.report("rolling restart (3)", start);
    assert!(
        fewest_running >= 2,
        "a rolling restart took {} of 3 containers down at once",
        3 - fewest_running
    );

    // Shrink with rolling restart on.
    let start = Instant::now();
    rest.update_app(&app, json!({"containers_per": {"server": 1}}))
        .await
        .expect("shrink");
    scenario.converged(&app, 1, 8).await;
    scenario.report("shrink to 1 (rolling)", start);

    // Membership: an app added to the group starts, removed from it stops.
    rest.create_app(&other, json!({"docker_image": test_image(1)}))
        .await
        .expect("create other");
    let start = Instant::now();
    rest.update_group(&group, &[&app, &other])
        .await
        .expect("add to group");
    scenario.converged(&other, 1, 1).await;
    scenario.report("app added to group", start);
    let start = Instant::now();
    let kept = identities(&scenario.converged(&app, 1, 8).await);
    rest.update_group(&group, &[&app])
        .await
        .expect("remove from group");
    scenario.converged(&other, 0, 1).await;
    scenario.report("app removed from group", start);
    assert_eq!(
        identities(&scenario.converged(&app, 1, 8).await),
        kept,
        "a group change must not touch other apps"
    );

    // Delete: containers removed and the app leaves the group.
    let start = Instant::now();
    rest.delete_app(&app).await.expect("delete");
    scenario.converged(&app, 0, 0).await;
    scenario.report("delete app", start);
    let group_document = rest
        .get(&format!("/device_groups/{group}"))
        .await
        .expect("get")
        .ok()
        .expect("group");
    assert_eq!(group_document["apps"], json!([]));
    assert_eq!(
        agent.process.exits(),
        0,
        "the agent never crashed:\n{}",
        agent.process.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_mode_lifecycle_converges() {
    let scenario = Scenario::new("lifecycle-apps");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let first = scenario.app_name("alpha");
    let later = scenario.app_name("beta");
    rest.create_app(
        &first,
        json!({"docker_image": test_image(1), "env_vars": {"N": "1"}}),
    )
    .await
    .expect("create");

    // The second app does not exist yet when the agent starts: it waits for it.
    let start = Instant::now();
    let agent = Agent::start(
        "device-apps",
        &AgentMode::Apps(vec![first.clone(), later.clone()]),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    scenario.converged(&first, 1, 1).await;
    scenario.report("app mode create", start);
    let start = Instant::now();
    rest.create_app(
        &later,
        json!({"docker_image": test_image(2), "containers_per": {"instance": 2}}),
    )
    .await
    .expect("create later");
    scenario.converged(&later, 2, 1).await;
    scenario.report("app created after agent start", start);

    let start = Instant::now();
    rest.update_app(&first, json!({"env_vars": {"N": "2"}}))
        .await
        .expect("update");
    let containers = scenario.converged(&first, 1, 2).await;
    assert_eq!(containers[0].env.get("N").map(String::as_str), Some("2"));
    scenario.report("app mode update", start);

    let start = Instant::now();
    rest.app_action(&first, "stop").await.expect("stop");
    scenario.converged(&first, 0, 3).await;
    rest.app_action(&first, "start").await.expect("start");
    scenario.converged(&first, 1, 4).await;
    scenario.report("app mode stop + start", start);

    // Deleted and created again: revisions start over at 1 and the agent follows.
    let start = Instant::now();
    rest.delete_app(&later).await.expect("delete");
    scenario.converged(&later, 0, 0).await;
    scenario.report("app mode delete", start);
    let start = Instant::now();
    rest.create_app(&later, json!({"docker_image": test_image(1)}))
        .await
        .expect("re-create");
    scenario.converged(&later, 1, 1).await;
    scenario.report("app mode re-create", start);
    assert_eq!(
        agent.process.exits(),
        0,
        "the agent never crashed:\n{}",
        agent.process.log()
    );
}
