//! Scenario 1, prune: raising a group's prune_id removes every unused image on its devices
//! and nothing in use. In a test binary of its own, since it prunes the whole engine.
//!
//! It depends on nothing else on the engine: the unused image is one of its own (an empty
//! file system imported under a unique name, labelled `nebula.test=e2e_prune`), so a
//! container that some other program runs from the shared test image (the quick start's
//! demo, another test) cannot keep it, and leftovers of killed earlier runs are removed first.

mod support;

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use nebula_tests::docker::{LABEL_TEST, LABEL_TEST_RUN, remove_leftovers};
use nebula_tests::services::test_image;
use nebula_tests::system::{Agent, AgentMode};
use nebula_tests::unique_name;
use serde_json::json;
use std::time::Instant;
use support::{Scenario, identities};

const TEST: &str = "e2e_prune";
const DEVICE_PREFIX: &str = "prune-device";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_unused_images_only() {
    let scenario = Scenario::new("prune");
    let docker = &scenario.docker;
    remove_leftovers(docker, TEST, Some(DEVICE_PREFIX))
        .await
        .expect("remove leftovers of earlier runs");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("pruned");
    let group = unique_name("group");
    rest.create_app(&app, json!({"docker_image": test_image(2)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let _agent = Agent::start(
        &unique_name(DEVICE_PREFIX),
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    let running = identities(&scenario.converged(&app, 1, 1).await);
    // The image in use, by id: a tag of it may come and go with other programs on the engine
    // (another registry's copy of the same content, a test untagging the shared image).
    let image_in_use = docker
        .inspect_container(&running[0].1, None)
        .await
        .expect("inspect the app's container")
        .image
        .expect("the container's image id");

    // An image no container uses, of this test's own: an empty tar archive imported (nothing
    // is pulled, and no other image shares its id), labelled with the test and this run.
    let run = unique_name(TEST);
    let victim_repository = format!("nebula-prune-victim-{run}").replace('_', "-");
    let mut import = docker.create_image(
        Some(
            CreateImageOptionsBuilder::default()
                .from_src("-")
                .repo(&victim_repository)
                .tag("old")
                .changes(vec![format!(
                    "LABEL {LABEL_TEST}={TEST} {LABEL_TEST_RUN}={run}"
                )])
                .build(),
        ),
        Some(bollard::body_full(vec![0_u8; 1024].into())),
        None,
    );
    while let Some(progress) = import.next().await {
        progress.expect("import the victim image");
    }
    let victim = format!("{victim_repository}:old");
    let inspected = docker
        .inspect_image(&victim)
        .await
        .expect("victim imported");
    let labels = inspected
        .config
        .and_then(|config| config.labels)
        .unwrap_or_default();
    assert_eq!(labels.get(LABEL_TEST).map(String::as_str), Some(TEST));
    assert_eq!(labels.get(LABEL_TEST_RUN), Some(&run));

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
        docker.inspect_image(&image_in_use).await.is_ok(),
        "the image in use ({image_in_use}) was pruned"
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
