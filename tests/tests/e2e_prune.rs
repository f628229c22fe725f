//! Scenario 1, prune: raising a group's prune_id removes every unused image on its devices
//! and nothing in use. In a test binary of its own, since it prunes the whole engine.

mod support;

use bollard::query_parameters::{CreateImageOptionsBuilder, TagImageOptionsBuilder};
use futures_util::StreamExt;
use nebula_tests::services::{registry_credentials, test_image};
use nebula_tests::system::{Agent, AgentMode};
use nebula_tests::unique_name;
use serde_json::json;
use std::time::Instant;
use support::{Scenario, identities};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_unused_images_only() {
    let scenario = Scenario::new("prune");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("pruned");
    let group = unique_name("group");
    rest.create_app(&app, json!({"docker_image": test_image(2)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let _agent = Agent::start(
        "device-prune",
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    let running = identities(&scenario.converged(&app, 1, 1).await);

    // An image no container uses, under a name of this test's own.
    let docker = &scenario.docker;
    let mut pull = docker.create_image(
        Some(
            CreateImageOptionsBuilder::default()
                .from_image(&test_image(1))
                .build(),
        ),
        None,
        Some(registry_credentials()),
    );
    while let Some(progress) = pull.next().await {
        progress.expect("pull");
    }
    let victim = format!("nebula-prune-victim-{}", unique_name("img"));
    docker
        .tag_image(
            &test_image(1),
            Some(
                TagImageOptionsBuilder::default()
                    .repo(&victim)
                    .tag("old")
                    .build(),
            ),
        )
        .await
        .expect("tag");
    let victim = format!("{victim}:old");
    assert!(docker.inspect_image(&victim).await.is_ok());

    let start = Instant::now();
    let pruned = rest.prune_group(&group).await.expect("prune");
    assert_eq!(pruned["prune_id"], json!(2));
    nebula_tests::wait_for("unused image removed", support::DEADLINE, || {
        let docker = docker.clone();
        let victim = victim.clone();
        async move { docker.inspect_image(&victim).await.is_err().then_some(()) }
    })
    .await
    .expect("prune removes the unused image");
    scenario.report("prune", start);
    assert!(
        docker.inspect_image(&test_image(2)).await.is_ok(),
        "an image in use was pruned"
    );
    assert_eq!(
        identities(&scenario.converged(&app, 1, 1).await),
        running,
        "prune touched a running app"
    );

    // Global prune bumps every group's prune_id, this one's included.
    let global = rest
        .post("/prune", json!({}))
        .await
        .expect("global prune")
        .ok()
        .expect("2xx");
    assert_eq!(global["prune_ids"][&group], json!(3));
}
