//! The store is the only truth (DESIGN §2), on the whole system: real control planes, agents,
//! broker and Docker engine. An app deleted and re-created while its device was down; a
//! second control plane on an empty store; two control planes changing one group at once; a
//! corrupt record in the store.

mod support;

use nebula_tests::docker::{AppContainer, app_containers};
use nebula_tests::services::test_image;
use nebula_tests::system::{Agent, AgentMode, ControlPlane};
use nebula_tests::{unique_name, wait_for};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{DEADLINE, Scenario, app_id, identities};

const GRACE: Duration = Duration::from_secs(10);
const INCARNATION: &str = nebula_protocol::placement::LABEL_INCARNATION;

fn incarnations(containers: &[AppContainer]) -> BTreeSet<String> {
    containers
        .iter()
        .map(|container| {
            container
                .labels
                .get(INCARNATION)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// Defect 2: deleted and re-created under the same name while the device was down, the app
/// starts again at revision 1 — and must still replace every old container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_deleted_and_re_created_while_the_device_was_down_is_a_new_app() {
    let scenario = Scenario::new("recreated");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("phoenix");
    let group = unique_name("group");
    let config = |version: &str| json!({"docker_image": test_image(1), "containers_per": {"server": 2}, "env_vars": {"V": version}});
    rest.create_app(&app, config("old")).await.expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let agent = Agent::start(
        "device-recreated",
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    let old = scenario.converged(&app, 2, 1).await;
    let old_incarnation = incarnations(&old);
    assert_eq!(old_incarnation.len(), 1, "one incarnation label: {old:?}");

    agent
        .process
        .stop(GRACE)
        .await
        .expect("the agent was running");
    rest.delete_app(&app).await.expect("delete");
    let recreated = rest
        .create_app(&app, config("new"))
        .await
        .expect("re-create");
    assert_eq!(app_id(&recreated), 1, "revisions start again at 1");
    rest.update_group(&group, &[&app])
        .await
        .expect("back in the group");

    let start = Instant::now();
    agent.process.restart_with(&[]).await;
    let docker = scenario.docker.clone();
    let replaced = wait_for("the re-created app's containers", DEADLINE, || {
        let docker = docker.clone();
        let (app, old_incarnation) = (app.clone(), old_incarnation.clone());
        async move {
            let containers = app_containers(&docker, &app).await.ok()?;
            (support::is_converged(&app, &containers, 2, 1)
                && containers
                    .iter()
                    .all(|container| container.env.get("V").map(String::as_str) == Some("new"))
                && incarnations(&containers).is_disjoint(&old_incarnation))
            .then_some(containers)
        }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}; logs in {}", scenario.directory.display()));
    scenario.report("re-created app while down", start);
    assert_eq!(incarnations(&replaced).len(), 1);
}

/// Defect 3: a second control plane started on an empty store answers the fleet's syncs
/// with "not found". Devices keep their apps; the empty one says what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_on_an_empty_store_removes_nothing() {
    let scenario = Scenario::new("empty-store");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("kept");
    let group = unique_name("group");
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let agent = Agent::start(
        "device-kept",
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    let running = identities(&scenario.converged(&app, 1, 1).await);
    let ours = readyz(&control_plane).await["store_id"].clone();

    // Same broker, a data directory of its own: empty.
    let empty = scenario.control_plane("cp-empty").await;
    assert_eq!(readyz(&empty).await["store_empty"], json!(true));
    control_plane.process.stop(GRACE).await;
    agent.process.stop(GRACE).await;
    agent.process.restart_with(&[]).await;

    // The agent asked the empty one, which answered "not found" and noticed whose agent
    // asked.
    let foreign = wait_for("the empty store noticing a foreign agent", DEADLINE, || {
        let empty = empty.clone();
        async move {
            let readyz = readyz(&empty).await;
            let listed = readyz["foreign_stores"].as_array()?.clone();
            (!listed.is_empty()).then_some(listed)
        }
    })
    .await
    .expect("the empty control plane reports the agent's store");
    assert_eq!(foreign, vec![ours]);
    let answered = empty.rest().metrics().await.expect("metrics");
    assert!(
        answered.contains("nebula_sync_requests_answered_total{result=\"not_found\"}"),
        "{answered}"
    );
    // Give a wrong removal every chance to happen: several reconcile passes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        identities(&scenario.converged(&app, 1, 1).await),
        running,
        "the agent removed or restarted its app on a \"not found\" from another store"
    );

    // The right control plane comes back: the agent syncs with it and follows changes.
    empty.process.stop(GRACE).await;
    control_plane.process.restart_with(&[]).await;
    control_plane.wait_ready().await.expect("back");
    let start = Instant::now();
    let updated = rest
        .update_app(&app, json!({"env_vars": {"AFTER": "the right store"}}))
        .await
        .expect("update");
    scenario.converged(&app, 1, app_id(&updated)).await;
    scenario.report("back on the right store", start);
}

/// Defect 4: two control planes change one group's membership at the same time, many times.
/// In the end the broker's bindings, the store and the device all agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_changing_one_group_leave_broker_store_and_device_agreeing() {
    let scenario = Scenario::new("group-race");
    let (control_planes, _) = scenario.control_planes_on_mongo(&["cp-a", "cp-b"]).await;
    let (first, second) = (&control_planes[0], &control_planes[1]);
    let apps: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|app| scenario.app_name(app))
        .collect();
    for app in &apps {
        first
            .rest()
            .create_app(app, json!({"docker_image": test_image(1)}))
            .await
            .expect("create");
    }
    let group = unique_name("group");
    first
        .rest()
        .create_group(&group, &[&apps[0]])
        .await
        .expect("group");
    let _agent = Agent::start(
        "device-race",
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    scenario.converged(&apps[0], 1, 1).await;

    let memberships: [Vec<&str>; 4] = [
        vec![&apps[0], &apps[1]],
        vec![&apps[2]],
        vec![&apps[1], &apps[2]],
        vec![&apps[0]],
    ];
    let start = Instant::now();
    let writers: Vec<_> = [first.rest(), second.rest()]
        .into_iter()
        .enumerate()
        .map(|(writer, rest)| {
            let group = group.clone();
            let memberships: Vec<Vec<String>> = memberships
                .iter()
                .map(|members| members.iter().map(|app| app.to_string()).collect())
                .collect();
            tokio::spawn(async move {
                for round in 0..12 {
                    let members = &memberships[(round + writer * 2) % memberships.len()];
                    let members: Vec<&str> = members.iter().map(String::as_str).collect();
                    rest.update_group(&group, &members)
                        .await
                        .expect("group update");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let document = first
        .rest()
        .get(&format!("/device_groups/{group}"))
        .await
        .expect("get")
        .ok()
        .expect("group");
    let members: BTreeSet<String> = document["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .map(|app| app.as_str().expect("name").to_string())
        .collect();
    assert_eq!(
        document["device_group_id"],
        json!(25),
        "24 updates, none lost"
    );

    let bound = bindings_to(&scenario.vhost.name, &format!("nebula.group.{group}"));
    let expected: BTreeSet<String> = members
        .iter()
        .map(|app| format!("nebula.app.{app}"))
        .collect();
    assert_eq!(
        bound, expected,
        "the broker's bindings contradict the store"
    );
    for app in &apps {
        if members.contains(app) {
            scenario.converged(app, 1, 1).await;
        } else {
            scenario.converged(app, 0, 1).await;
        }
    }
    scenario.report("24 concurrent group updates agree", start);
}

/// Defect 5: a corrupt app record. The control planes keep running and answer 500 for that
/// app only; the device keeps running it, and the group's other app keeps getting changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_stays_that_apps_problem() {
    let scenario = Scenario::new("corrupt");
    let (control_planes, database) = scenario.control_planes_on_mongo(&["cp"]).await;
    let control_plane = &control_planes[0];
    let rest = control_plane.rest();
    let (good, bad) = (scenario.app_name("good"), scenario.app_name("bad"));
    for app in [&good, &bad] {
        rest.create_app(app, json!({"docker_image": test_image(1)}))
            .await
            .expect("create");
    }
    let group = unique_name("group");
    rest.create_group(&group, &[&good, &bad])
        .await
        .expect("group");
    let agent = Agent::start(
        "device-corrupt",
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    scenario.converged(&good, 1, 1).await;
    let bad_running = identities(&scenario.converged(&bad, 1, 1).await);

    // Someone edits the record by hand.
    let client = mongodb::Client::with_uri_str(nebula_tests::services::mongo_url())
        .await
        .expect("mongo");
    let apps = client
        .database(&database)
        .collection::<mongodb::bson::Document>("apps");
    let edited = apps
        .update_one(
            mongodb::bson::doc! {"_id": bad.as_str()},
            mongodb::bson::doc! {"$set": {"body": "{\"app_name\": 42"}},
        )
        .await
        .expect("edit");
    assert_eq!(edited.matched_count, 1);

    let read = rest.get(&format!("/apps/{bad}")).await.expect("get");
    assert_eq!((read.status, &read.body["corrupt"]), (500, &json!(true)));
    // The device syncs again (as after any reconnect) and keeps the app it cannot be told
    // about, with the rest of its group.
    agent.process.stop(GRACE).await;
    agent.process.restart_with(&[]).await;
    let start = Instant::now();
    let updated = rest
        .update_app(&good, json!({"env_vars": {"STILL": "served"}}))
        .await
        .expect("the other app still changes");
    scenario.converged(&good, 1, app_id(&updated)).await;
    scenario.report("group with a corrupt member", start);
    assert_eq!(
        identities(&scenario.converged(&bad, 1, 1).await),
        bad_running,
        "the corrupt app was removed or restarted on the device"
    );
    assert_eq!(
        control_plane.process.exits(),
        0,
        "{}",
        control_plane.process.log()
    );
}

async fn readyz(control_plane: &ControlPlane) -> serde_json::Value {
    let url = format!("http://{}/readyz", control_plane.address);
    match reqwest::get(&url).await {
        Ok(response) => response.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// The source exchanges bound to `destination` in `vhost`, as the broker lists them.
fn bindings_to(vhost: &str, destination: &str) -> BTreeSet<String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_bindings",
            "-p",
            vhost,
            "--quiet",
            "--no-table-headers",
            "source_name",
            "destination_name",
        ])
        .output()
        .expect("rabbitmqctl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, to)| *to == destination)
        .map(|(from, _)| from.to_string())
        .collect()
}
