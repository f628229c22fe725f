//! Scenarios 2, 3, 6, 7 and 8: agents that are down, killed mid-change, partitioned,
//! started without a broker, or fed poison — and still lose nothing.

mod support;

use nebula_protocol::{DeviceGroup, GroupState, Message, Name, SyncResult, encode, names};
use nebula_tests::proxy::{Mode, PartitionProxy};
use nebula_tests::services::test_image;
use nebula_tests::system::{Agent, AgentMode};
use nebula_tests::unique_name;
use serde_json::json;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use support::amqp::{
    ReportTap, applied, connect, hold_next_sync_request, publish_raw, queue_messages,
};
use support::{DEADLINE, Scenario, app_config_from_document, app_id, broker_address, identities};

const GRACE: Duration = Duration::from_secs(10);

/// Scenario 2a: changes made while an agent is down reach it when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_an_agent_is_down_reach_it() {
    let scenario = Scenario::new("down");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let (app, added) = (scenario.app_name("down"), scenario.app_name("added"));
    let group = unique_name("group");
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let agent = Agent::start(
        "device-down",
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    let running = identities(&scenario.converged(&app, 1, 1).await);

    let status = agent.process.stop(GRACE).await.expect("agent was running");
    assert!(
        status.success(),
        "SIGTERM must stop the agent cleanly: {status:?}\n{}",
        agent.process.log()
    );
    assert_eq!(
        identities(&scenario.converged(&app, 1, 1).await),
        running,
        "SIGTERM leaves app containers running"
    );

    rest.update_app(&app, json!({"env_vars": {"WHILE": "down"}}))
        .await
        .expect("update");
    rest.create_app(&added, json!({"docker_image": test_image(2)}))
        .await
        .expect("create added");
    rest.update_group(&group, &[&app, &added])
        .await
        .expect("update group");

    let start = Instant::now();
    agent.process.restart_with(&[]).await;
    let containers = scenario.converged(&app, 1, 2).await;
    assert_eq!(
        containers[0].env.get("WHILE").map(String::as_str),
        Some("down")
    );
    scenario.converged(&added, 1, 1).await;
    scenario.report("changes made while down", start);
}

/// Scenario 2b: a change made while the agent waits for its boot sync reply is not missed,
/// even when the reply is older than the change (held back to force the race).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_the_boot_sync_is_not_missed() {
    let scenario = Scenario::new("sync-race");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("race");
    let group = unique_name("group");
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    let group_document = rest.create_group(&group, &[&app]).await.expect("group");
    let stale_app = app_config_from_document(
        &rest
            .get(&format!("/apps/{app}"))
            .await
            .expect("get")
            .ok()
            .expect("app"),
    );

    // With the control plane down, the test takes the agent's sync request itself.
    control_plane.process.stop(GRACE).await;
    let (_connection, channel) = connect(&scenario.vhost.amqp_url()).await;
    let device = "device-race";
    let agent = Agent::start(
        device,
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    let held = hold_next_sync_request(&channel).await;
    assert_eq!(held.request.device_id, device);

    // The change happens after the agent bound its queue and before it got its reply.
    control_plane.process.restart_with(&[]).await;
    control_plane
        .wait_ready()
        .await
        .expect("control plane back");
    let start = Instant::now();
    let updated = rest
        .update_app(&app, json!({"docker_image": test_image(2)}))
        .await
        .expect("update");
    assert_eq!(app_id(&updated), 2);
    let queue = names::group_queue(
        &Name::new(device).expect("name"),
        &Name::new(group.as_str()).expect("name"),
    );
    nebula_tests::wait_for("the change queued for the agent", DEADLINE, || {
        let depth = queue_messages(&scenario.vhost, &queue);
        async move { depth.filter(|depth| *depth >= 1) }
    })
    .await
    .expect("change queued");

    // Answer with the state from before the change, as a slow control plane might.
    let stale = GroupState {
        group: DeviceGroup {
            device_group: Name::new(group.as_str()).expect("name"),
            device_group_id: group_document["device_group_id"]
                .as_u64()
                .expect("device_group_id"),
            prune_id: group_document["prune_id"].as_u64().expect("prune_id"),
            apps: vec![Name::new(app.as_str()).expect("name")],
            cron_jobs: vec![],
            incarnation: 0,
        },
        apps: vec![stale_app],
        cron_jobs: vec![],
        unavailable: vec![],
    };
    held.reply(
        &channel,
        SyncResult::Group(stale),
        nebula_protocol::StoreId(0),
    )
    .await;
    let containers = scenario.converged(&app, 1, 2).await;
    assert_eq!(containers[0].image, test_image(2));
    scenario.report("change during boot sync", start);
    drop(agent);
}

/// Scenario 3: SIGKILL in the middle of a change; the restarted agent converges, and a
/// restart of a converged agent restarts no container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_change_converges_without_restarting_finished_containers() {
    let scenario = Scenario::new("sigkill");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("kill");
    let group = unique_name("group");
    let device = "device-kill";
    // Rolling: one container replaced at a time, so the change lasts long enough to be
    // killed in the middle of it. Replaced all at once (the default), the four containers
    // can all be new by the time the kill lands (seen once, on an idle machine).
    rest.create_app(
        &app,
        json!({"docker_image": test_image(1), "containers_per": {"server": 4}, "rolling_restart": true}),
    )
    .await
    .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let agent = Agent::start(
        device,
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    scenario.converged(&app, 4, 1).await;

    rest.update_app(&app, json!({"docker_image": test_image(2)}))
        .await
        .expect("update");
    // Kill as soon as the change is visibly under way: some containers new, some not.
    nebula_tests::wait_for("change under way", DEADLINE, || {
        let docker = scenario.docker.clone();
        let app = app.clone();
        async move {
            let containers = nebula_tests::docker::app_containers(&docker, &app)
                .await
                .ok()?;
            let old = containers
                .iter()
                .filter(|container| container.app_id == Some(1))
                .count();
            (old < 4).then_some(())
        }
    })
    .await
    .expect("change starts");
    let start = Instant::now();
    let killed = agent.process.kill().await.expect("the agent was running");
    assert_eq!(killed.signal(), Some(9), "SIGKILL landed: {killed:?}");
    // Frozen as the kill left it (the supervisor restarts the agent 300 ms later): the
    // change must have been under way, not finished.
    let at_kill = nebula_tests::docker::app_containers(&scenario.docker, &app)
        .await
        .expect("list");
    assert!(
        !support::is_converged(&app, &at_kill, 4, 2),
        "the kill landed after the change had finished: {:?}",
        at_kill
            .iter()
            .map(|c| (&c.name, c.app_id))
            .collect::<Vec<_>>()
    );
    let converged = identities(&scenario.converged(&app, 4, 2).await);
    scenario.report("converge after SIGKILL mid-change", start);
    assert!(agent.process.exits() >= 1);

    // Restart the converged agent: once it reports itself up to date, nothing was restarted.
    let mut tap = ReportTap::new(&scenario.vhost.amqp_url(), device).await;
    let restarted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert_eq!(
        agent
            .process
            .kill()
            .await
            .and_then(|status| status.signal()),
        Some(9)
    );
    tap.wait(DEADLINE, |report| {
        report.report_creation_time >= restarted_at && applied(report, &app, 2)
    })
    .await;
    // The report says converged; give a reconcile pass that would wrongly restart something
    // a moment to do so before comparing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        identities(&scenario.converged(&app, 4, 2).await),
        converged,
        "an agent restart restarted containers"
    );
}

/// Scenario 6: one agent partitioned from the broker while 24 changes happen; the other is
/// unaffected, and the partitioned one converges within seconds of the partition healing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_agent_converges_after_the_partition_heals() {
    let scenario = Scenario::new("partition");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let (cut_app, free_app) = (scenario.app_name("cut"), scenario.app_name("free"));
    let (cut_group, free_group) = (unique_name("cut"), unique_name("free"));
    for (app, group) in [(&cut_app, &cut_group), (&free_app, &free_group)] {
        rest.create_app(app, json!({"docker_image": test_image(1)}))
            .await
            .expect("create");
        rest.create_group(group, &[app]).await.expect("group");
    }
    let proxy = PartitionProxy::start(broker_address(), Mode::Forward)
        .await
        .expect("proxy");
    let cut_url = scenario.vhost.amqp_url_via(&proxy.address().to_string());
    let cut = Agent::start(
        "device-cut",
        &AgentMode::Group(cut_group.clone()),
        &cut_url,
        &scenario.directory,
    )
    .await;
    let _free = Agent::start(
        "device-free",
        &AgentMode::Group(free_group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    scenario.converged(&cut_app, 1, 1).await;
    scenario.converged(&free_app, 1, 1).await;

    proxy.set_mode(Mode::Blackhole);
    let start = Instant::now();
    let mut last = 1;
    for change in 0..12 {
        for app in [&cut_app, &free_app] {
            last = app_id(
                &rest
                    .update_app(app, json!({"env_vars": {"CHANGE": change.to_string()}}))
                    .await
                    .expect("update"),
            );
        }
    }
    let free = scenario.converged(&free_app, 1, last).await;
    assert_eq!(free[0].env.get("CHANGE").map(String::as_str), Some("11"));
    scenario.report("unpartitioned agent, 24 changes", start);
    assert!(
        nebula_tests::docker::app_containers(&scenario.docker, &cut_app)
            .await
            .expect("list")
            .iter()
            .all(|c| c.app_id == Some(1)),
        "the partitioned agent cannot have seen the changes"
    );

    let healed = Instant::now();
    proxy.set_mode(Mode::Forward);
    let cut_containers = scenario.converged(&cut_app, 1, last).await;
    assert_eq!(
        cut_containers[0].env.get("CHANGE").map(String::as_str),
        Some("11")
    );
    scenario.report("partitioned agent after heal", healed);
    drop(cut);
}

/// Scenario 7: an agent started with the broker unreachable keeps running (and repairs) its
/// persisted apps, and converges when the broker comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_broker_keeps_its_apps_and_converges_later() {
    let scenario = Scenario::new("no-broker");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("offline");
    let group = unique_name("group");
    rest.create_app(
        &app,
        json!({"docker_image": test_image(1), "containers_per": {"server": 2}}),
    )
    .await
    .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let proxy = PartitionProxy::start(broker_address(), Mode::Forward)
        .await
        .expect("proxy");
    let url = scenario.vhost.amqp_url_via(&proxy.address().to_string());
    let agent = Agent::start(
        "device-offline",
        &AgentMode::Group(group.clone()),
        &url,
        &scenario.directory,
    )
    .await;
    let before = scenario.converged(&app, 2, 1).await;

    agent.process.stop(GRACE).await;
    proxy.set_mode(Mode::Refuse);
    agent.process.restart_with(&[]).await;
    // Offline, the agent still repairs its apps from the persisted desired state.
    let start = Instant::now();
    let docker = scenario.docker.clone();
    docker
        .remove_container(
            &before[0].id,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
        )
        .await
        .expect("remove a container behind the agent's back");
    let repaired = scenario.converged(&app, 2, 1).await;
    scenario.report("repair with broker unreachable", start);
    assert_ne!(
        repaired[0].id, before[0].id,
        "{} was recreated",
        before[0].name
    );
    assert_eq!(
        repaired[1].id, before[1].id,
        "{} was left alone",
        before[1].name
    );

    let updated = app_id(
        &rest
            .update_app(&app, json!({"docker_image": test_image(2)}))
            .await
            .expect("update"),
    );
    let start = Instant::now();
    proxy.set_mode(Mode::Forward);
    scenario.converged(&app, 2, updated).await;
    scenario.report("converge once the broker answers", start);
}

/// Scenario 8: poison on an agent's queue is rejected; the agent keeps working, no crash loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_rejected_without_a_crash_loop() {
    let scenario = Scenario::new("poison");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("poison");
    let group = unique_name("group");
    let device = "device-poison";
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let agent = Agent::start(
        device,
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    scenario.converged(&app, 1, 1).await;
    let current = app_id(
        &rest
            .update_app(&app, json!({"env_vars": {"V": "2"}}))
            .await
            .expect("update"),
    );
    let before = identities(&scenario.converged(&app, 1, current).await);
    let document = rest
        .get(&format!("/apps/{app}"))
        .await
        .expect("get")
        .ok()
        .expect("app");

    let mut invalid = app_config_from_document(&document);
    invalid.app_id = current + 10;
    invalid.docker_image = "NOT A VALID IMAGE".into();
    let mut stale = app_config_from_document(&document);
    stale.app_id = 1;
    stale.docker_image = test_image(2);
    let mut wrong_version = encode(&Message::AppChanged(app_config_from_document(&document)));
    wrong_version[2] = 99;
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", (0..64).map(|_| fastrand::u8(..)).collect()),
        ("empty", Vec::new()),
        ("wrong magic", b"XX\x01\x00".to_vec()),
        ("wrong version", wrong_version),
        ("invalid config", encode(&Message::AppChanged(invalid))),
        ("stale revision", encode(&Message::AppChanged(stale))),
    ];
    let (_connection, channel) = connect(&scenario.vhost.amqp_url()).await;
    let queue = names::group_queue(
        &Name::new(device).expect("name"),
        &Name::new(group.as_str()).expect("name"),
    );
    for (_, bytes) in &poison {
        publish_raw(&channel, &queue, bytes).await;
    }
    nebula_tests::wait_for("poison consumed", DEADLINE, || {
        let depth = queue_messages(&scenario.vhost, &queue);
        async move { depth.filter(|depth| *depth == 0) }
    })
    .await
    .expect("agent drains its queue");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        identities(&scenario.converged(&app, 1, current).await),
        before,
        "poison changed containers"
    );
    assert_eq!(
        agent.process.exits(),
        0,
        "poison crashed the agent:\n{}",
        agent.process.log()
    );

    let start = Instant::now();
    let next = app_id(
        &rest
            .update_app(&app, json!({"env_vars": {"V": "3"}}))
            .await
            .expect("update"),
    );
    scenario.converged(&app, 1, next).await;
    scenario.report("change after poison", start);
    assert_eq!(agent.process.exits(), 0);
}
