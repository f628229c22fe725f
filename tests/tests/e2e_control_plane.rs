//! Scenarios 4 and 9: control planes killed with SIGKILL under a stream of writes lose no
//! acknowledged change, and devices end up exactly at the store's state.

mod support;

use nebula_tests::rest::Rest;
use nebula_tests::services::test_image;
use nebula_tests::system::{Agent, AgentMode, ControlPlane, StoreKind};
use nebula_tests::unique_name;
use serde_json::json;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::amqp::ChangeTap;
use support::{Scenario, app_id};

/// What one client saw acknowledged: (value written, app_id in the 2xx reply).
type Acknowledged = Vec<(u32, u64)>;

/// Each client writes its own app: (acknowledged writes, attempts that got no 2xx).
type ClientResult = (Acknowledged, u32);

/// Writes `K=1..=writes` to `app`, one at a time, through whichever of `endpoints` answers,
/// retrying a write whose request failed (its outcome unknown) until one gets a reply.
async fn write_stream(
    endpoints: Vec<Rest>,
    app: String,
    writes: u32,
    acknowledged_total: Arc<AtomicUsize>,
) -> ClientResult {
    let mut acknowledged = Vec::new();
    let mut unacknowledged = 0;
    let mut endpoint = 0;
    for value in 1..=writes {
        let started = Instant::now();
        loop {
            let rest = &endpoints[endpoint % endpoints.len()];
            match rest
                .put(
                    &format!("/apps/{app}/update"),
                    json!({"env_vars": {"K": value.to_string()}}),
                )
                .await
            {
                Ok(reply) if reply.status == 202 => {
                    acknowledged.push((value, app_id(&reply.body)));
                    acknowledged_total.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                // Not acknowledged (refused, reset, 5xx while failing hard): try again, on the
                // next endpoint when there are several.
                _ => {
                    unacknowledged += 1;
                    endpoint += 1;
                    assert!(
                        started.elapsed() < support::DEADLINE,
                        "no control plane answered for {:?}",
                        support::DEADLINE
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        endpoint += 1;
    }
    (acknowledged, unacknowledged)
}

/// How long a confirmed publish may take to reach the change tap's consumer.
const TAP_DELIVERY: Duration = Duration::from_secs(10);

/// Nothing acknowledged was lost, judged write by write. Each client is its app's only
/// writer and writes one value at a time, so:
/// * every acknowledged write went out to the devices as exactly itself: the tap saw a
///   publish of its revision carrying its value (a 2xx comes only after the broker's
///   confirm; a store that lost a write and handed its revision to another would show here);
/// * revisions increase, by one per write, plus at most one per attempt that got no answer
///   (its write may or may not have happened);
/// * the store holds the last acknowledged write.
///
/// Returns the last revision.
async fn assert_nothing_lost(
    rest: &Rest,
    app: &str,
    (acknowledged, unacknowledged): &ClientResult,
    tap: &ChangeTap,
) -> u64 {
    // A 2xx comes after the broker's confirm, so every acknowledged write is in the tap's
    // queue by now; its delivery to the tap may still be under way (the last write's, just
    // before this runs). Give deliveries time; the checks below judge what arrived.
    let _ = nebula_tests::wait_for("the tap saw every acknowledged write", TAP_DELIVERY, || {
        let published = tap.published(app);
        let all_seen = acknowledged
            .iter()
            .all(|(_, revision)| published.iter().any(|config| config.app_id == *revision));
        async move { all_seen.then_some(()) }
    })
    .await;
    let published = tap.published(app);
    for (value, revision) in acknowledged {
        let carried: Vec<Option<&str>> = published
            .iter()
            .filter(|config| config.app_id == *revision)
            .map(|config| config.env_vars.get("K").map(String::as_str))
            .collect();
        assert!(
            !carried.is_empty(),
            "{app}: acknowledged write K={value} at revision {revision} was never published"
        );
        let expected = value.to_string();
        assert!(
            carried.iter().all(|seen| *seen == Some(expected.as_str())),
            "{app}: revision {revision} was acknowledged for K={value} but published as {carried:?}"
        );
    }
    let gaps: u64 = acknowledged
        .windows(2)
        .map(|pair| {
            assert!(
                pair[1].1 > pair[0].1,
                "{app}: revisions of acknowledged writes must increase: {pair:?}"
            );
            pair[1].1 - pair[0].1 - 1
        })
        .sum();
    assert!(
        gaps <= u64::from(*unacknowledged),
        "{app}: {gaps} revisions between acknowledged writes, but only {unacknowledged} unanswered attempts"
    );
    let (last_value, last_id) = *acknowledged.last().expect("writes acknowledged");
    let document = rest
        .get(&format!("/apps/{app}"))
        .await
        .expect("get")
        .ok()
        .expect("app exists");
    assert_eq!(
        document["env_vars"]["K"],
        json!(last_value.to_string()),
        "{app}: last acknowledged write lost"
    );
    assert_eq!(
        app_id(&document),
        last_id,
        "{app}: store revision differs from the last acknowledged one"
    );
    last_id
}

/// Scenario 4: SIGKILL of the only control plane during 500 writes from four clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_killed_during_500_writes_loses_no_acknowledged_write() {
    let scenario = Scenario::new("cp-sigkill");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let apps: Vec<String> = (0..4)
        .map(|index| scenario.app_name(&format!("w{index}")))
        .collect();
    let group = unique_name("group");
    for app in &apps {
        rest.create_app(app, json!({"docker_image": test_image(1)}))
            .await
            .expect("create");
    }
    let app_names: Vec<&str> = apps.iter().map(String::as_str).collect();
    rest.create_group(&group, &app_names).await.expect("group");
    let tap = ChangeTap::new(&scenario.vhost.amqp_url(), &apps).await;
    let _agent = Agent::start(
        "device-writes",
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;

    let total = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let clients: Vec<_> = apps
        .iter()
        .map(|app| {
            tokio::spawn(write_stream(
                vec![rest.clone()],
                app.clone(),
                125,
                Arc::clone(&total),
            ))
        })
        .collect();
    nebula_tests::wait_for("150 acknowledged writes", support::DEADLINE, || {
        let total = Arc::clone(&total);
        async move { (total.load(Ordering::SeqCst) >= 150).then_some(()) }
    })
    .await
    .expect("writes flow");
    let killed = control_plane.process.kill().await.expect("it was running");
    assert_eq!(killed.signal(), Some(9), "SIGKILL landed: {killed:?}");
    let acknowledged_at_kill = total.load(Ordering::SeqCst);
    let mut results = Vec::new();
    for client in clients {
        results.push(client.await.expect("client task"));
    }
    scenario.report("500 writes with a SIGKILL", start);
    assert!(
        acknowledged_at_kill < 500,
        "the kill came after every write was acknowledged"
    );
    control_plane
        .wait_ready()
        .await
        .expect("control plane back");

    let start = Instant::now();
    for (app, result) in apps.iter().zip(&results) {
        let last_id = assert_nothing_lost(&rest, app, result, &tap).await;
        let containers = scenario.converged(app, 1, last_id).await;
        assert_eq!(
            containers[0].env.get("K").map(String::as_str),
            Some("125"),
            "{app} on the device"
        );
    }
    scenario.report("devices equal the store", start);
}

/// Scenario 9: two control planes on one MongoDB-wire store and one broker; writes through
/// either reach the agents, and killing one loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_share_the_work_and_survive_losing_one() {
    let scenario = Scenario::new("two-cps");
    let (control_planes, _) = scenario.control_planes_on_mongo(&["cp-a", "cp-b"]).await;
    let (first, second) = (&control_planes[0], &control_planes[1]);
    let apps: Vec<String> = (0..2)
        .map(|index| scenario.app_name(&format!("two{index}")))
        .collect();
    let group = unique_name("group");
    for (index, app) in apps.iter().enumerate() {
        let rest = if index == 0 {
            first.rest()
        } else {
            second.rest()
        };
        rest.create_app(app, json!({"docker_image": test_image(1)}))
            .await
            .expect("create");
    }
    let app_names: Vec<&str> = apps.iter().map(String::as_str).collect();
    second
        .rest()
        .create_group(&group, &app_names)
        .await
        .expect("group");
    let tap = ChangeTap::new(&scenario.vhost.amqp_url(), &apps).await;
    let _agent = Agent::start(
        "device-two",
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
    )
    .await;
    for app in &apps {
        scenario.converged(app, 1, 1).await;
    }

    let total = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let clients: Vec<_> = apps
        .iter()
        .map(|app| {
            tokio::spawn(write_stream(
                vec![first.rest(), second.rest()],
                app.clone(),
                60,
                Arc::clone(&total),
            ))
        })
        .collect();
    nebula_tests::wait_for("40 acknowledged writes", support::DEADLINE, || {
        let total = Arc::clone(&total);
        async move { (total.load(Ordering::SeqCst) >= 40).then_some(()) }
    })
    .await
    .expect("writes flow");
    // SIGKILL and keep it down: the survivor carries on alone.
    let killed = first
        .process
        .kill_and_stay_down()
        .await
        .expect("it was running");
    assert_eq!(killed.signal(), Some(9), "SIGKILL landed: {killed:?}");
    let mut results = Vec::new();
    for client in clients {
        results.push(client.await.expect("client task"));
    }
    scenario.report("120 writes over 2 instances, one killed", start);

    let start = Instant::now();
    for (app, result) in apps.iter().zip(&results) {
        let last_id = assert_nothing_lost(&second.rest(), app, result, &tap).await;
        let containers = scenario.converged(app, 1, last_id).await;
        assert_eq!(containers[0].env.get("K").map(String::as_str), Some("60"));
    }
    scenario.report("devices equal the store (survivor)", start);
}

/// Defect 7: a broker that takes the publish and never confirms it (here: a partition that
/// swallows every byte, as a memory alarm blocks publishers) fails the write within the
/// publish timeout — a 503, never a hang — and the instance drops that connection: writes
/// answer 503 at once while it reconnects, reads go on, the process never exits. The write
/// was stored first, so the outbox publishes it once the broker is reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_is_never_confirmed_fails_within_the_timeout_and_reconnects() {
    use nebula_tests::proxy::{Mode, PartitionProxy};
    let scenario = Scenario::new("no-confirm");
    let broker = {
        let url = nebula_tests::services::amqp_url();
        let authority = url
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("127.0.0.1:5672")
            .to_string();
        std::net::ToSocketAddrs::to_socket_addrs(&authority)
            .expect("broker address")
            .next()
            .expect("one address")
    };
    let proxy = PartitionProxy::start(broker, Mode::Forward)
        .await
        .expect("proxy");
    let store = StoreKind::Embedded(scenario.directory.join("store"));
    let control_plane = ControlPlane::start_with(
        "cp",
        &store,
        &scenario.vhost.amqp_url_via(&proxy.address().to_string()),
        &scenario.directory,
        &[
            ("NEBULA_PUBLISH_TIMEOUT_SECS", "2"),
            ("NEBULA_REQUEST_TIMEOUT_SECS", "20"),
        ],
    )
    .await
    .expect("control plane");
    let rest = control_plane.rest();
    let app = scenario.app_name("unconfirmed");
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    let tap = ChangeTap::new(&scenario.vhost.amqp_url(), std::slice::from_ref(&app)).await;

    proxy.set_mode(Mode::Blackhole);
    let sent = Instant::now();
    let answer = rest
        .put(
            &format!("/apps/{app}/update"),
            json!({"env_vars": {"K": "1"}}),
        )
        .await
        .expect("an answer, not a hang");
    let waited = sent.elapsed();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(15),
        "answered after {waited:?}"
    );
    assert!(
        control_plane.process.log().contains("within 2 s"),
        "{}",
        control_plane.process.log()
    );
    // While it reconnects (through the partition: every attempt times out), a write is
    // refused at once, before anything is stored, and a read is served.
    let sent = Instant::now();
    let refused = rest
        .put(
            &format!("/apps/{app}/update"),
            json!({"env_vars": {"K": "2"}}),
        )
        .await
        .expect("an answer");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    let read = rest.get(&format!("/apps/{app}")).await.expect("read");
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["env_vars"]["K"], json!("1"), "{}", read.body);

    // The broker reachable again: the same instance publishes the stored writes.
    proxy.set_mode(Mode::Forward);
    control_plane.wait_ready().await.expect("back");
    assert_eq!(
        control_plane.process.exits(),
        0,
        "{}",
        control_plane.process.log()
    );
    nebula_tests::wait_for("the stored write published", support::DEADLINE, || {
        let published = tap.published(&app);
        async move {
            published
                .iter()
                .any(|config| {
                    config.app_id == 2 && config.env_vars.get("K").map(String::as_str) == Some("1")
                })
                .then_some(())
        }
    })
    .await
    .expect("the outbox publishes what was stored");
}
