//! The system on a three-node RabbitMQ cluster (`scripts/services.sh start rabbitmq-cluster`):
//! two control planes on different nodes over one MongoDB(-wire) store, a fleet spread over
//! the three nodes, quorum queues.
//!
//! * A node is killed with SIGKILL while four writers stream updates, and started again:
//!   every write answered 2xx is in the store and on every device at the end, every error
//!   answer is a 503, no control plane exits, no agent fails hard.
//! * pause_minority: two nodes stopped, the survivor pauses; writes are refused (503) and
//!   nothing is stored or applied meanwhile; with the nodes back everything converges.
//!
//! The scenarios stop and kill cluster nodes, so they take turns (one lock); no other test
//! binary uses the cluster, and cargo runs test binaries one after another.

use nebula_protocol::Name;
use nebula_tests::cluster::Cluster;
use nebula_tests::fleet::Fleet;
use nebula_tests::rest::Rest;
use nebula_tests::system::{ControlPlane, StoreKind, scratch_dir};
use nebula_tests::unique_name;
use nebula_tests::vhost::Vhost;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The scenarios take turns on the one cluster.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WRITERS: usize = 4;
/// Agents of the fleet: enough that every node gets some (each picks a node at random).
const AGENTS: usize = 30;
/// How long the writers stream; the node dies at `KILL_AT` and comes back at `RESTART_AT`.
const STREAM: Duration = Duration::from_secs(24);
const KILL_AT: Duration = Duration::from_secs(6);
const RESTART_AT: Duration = Duration::from_secs(14);
const CONVERGE: Duration = Duration::from_secs(90);
/// The pause between two writes of one writer.
const PACE: Duration = Duration::from_millis(150);
/// How long after the kill writes may be refused (the control planes reconnect in well under
/// a second; this leaves room for a loaded machine).
const FAILOVER: Duration = Duration::from_secs(10);

/// One writer's outcome: every answer in order.
#[derive(Debug, Default)]
struct Writes {
    /// `(key number, revision)` of every write answered 2xx.
    acknowledged: Vec<(usize, u64)>,
    /// Which control plane answered each 2xx, and when.
    acknowledged_by: Vec<(usize, Instant)>,
    /// Status codes of the other answers, and when they came.
    refused: Vec<u16>,
    refused_at: Vec<Instant>,
    /// Requests that got no HTTP answer at all.
    unanswered: Vec<String>,
}

/// A cluster scenario's common set-up: a vhost, two control planes on different nodes over
/// one store, a device group of `apps` apps, a fleet following it.
struct Setup {
    cluster: Cluster,
    vhost: Vhost,
    directory: std::path::PathBuf,
    control_planes: Vec<ControlPlane>,
    /// The node the first control plane is connected to.
    first_node: usize,
    apps: Vec<String>,
    fleet: Fleet,
}

impl Setup {
    async fn new(label: &str, apps: usize, agents: usize) -> Self {
        let cluster = Cluster::from_env();
        // After the other scenario the cluster may still be completing its recovery.
        cluster
            .wait_complete(Duration::from_secs(240))
            .await
            .expect("three running nodes (scripts/services.sh start rabbitmq-cluster)");
        let vhost = cluster
            .create_vhost(&unique_name(&format!("e2e-{label}")))
            .expect("vhost");
        let urls = cluster.url_list(&vhost.name);
        let directory = scratch_dir(label);
        let store = StoreKind::Mongo(unique_name(&format!("e2e_{label}")).replace('-', "_"));
        let extra = [("NEBULA_PUBLISH_TIMEOUT_SECS", "5")];
        let first = ControlPlane::start_with("cp-a", &store, &urls, &directory, &extra)
            .await
            .expect("control plane a");
        let first_node = node_of(&cluster, &vhost, "nebula-control-plane", 1)
            .await
            .pop()
            .expect("one connection");
        // The second one on another node: each starts on a node at random, so restart it
        // until it lands elsewhere (two in three do at each start).
        let mut second = None;
        for attempt in 0..12 {
            let candidate = ControlPlane::start_with(
                &format!("cp-b{attempt}"),
                &store,
                &urls,
                &directory,
                &extra,
            )
            .await
            .expect("control plane b");
            let nodes = node_of(&cluster, &vhost, "nebula-control-plane", 2).await;
            if nodes.iter().filter(|node| **node == first_node).count() == 1 {
                second = Some(candidate);
                break;
            }
            candidate
                .process
                .stop(Duration::from_secs(10))
                .await
                .expect("stopped");
        }
        let second = second.expect("a second control plane on another node");
        let rest = first.rest();
        let apps: Vec<String> = (0..apps)
            .map(|index| unique_name(&format!("w{index}")))
            .collect();
        for app in &apps {
            rest.create_app(app, json!({"docker_image": "nebula/cluster-test:1"}))
                .await
                .expect("create app");
        }
        let group = unique_name("cluster-group");
        let members: Vec<&str> = apps.iter().map(String::as_str).collect();
        rest.create_group(&group, &members).await.expect("group");
        let state_root = std::path::Path::new("/dev/shm").join(unique_name("cluster-fleet"));
        let fleet = Fleet::start(agents, &group, &urls, &state_root, 60).expect("fleet");
        for app in &apps {
            fleet
                .wait_applied(&name(app), 1, Instant::now(), CONVERGE)
                .await
                .expect("the fleet applied the first revision");
        }
        Self {
            cluster,
            vhost,
            directory,
            control_planes: vec![first, second],
            first_node,
            apps,
            fleet,
        }
    }

    fn rests(&self) -> Vec<Rest> {
        self.control_planes.iter().map(ControlPlane::rest).collect()
    }

    async fn finish(self) {
        for control_plane in &self.control_planes {
            assert_eq!(
                control_plane.process.exits(),
                0,
                "a control plane exited:\n{}",
                control_plane.process.log()
            );
        }
        assert_eq!(self.fleet.restarts(), 0, "an agent failed hard");
        self.fleet.stop().await;
        for control_plane in &self.control_planes {
            control_plane.process.stop(Duration::from_secs(10)).await;
        }
        let _ = &self.directory;
    }
}

/// A figure of the run: on stderr, and with the other e2e scenarios' convergence times in
/// `target/e2e-convergence.txt` (printed at the end of the test command).
fn record(line: &str) {
    use std::io::Write;
    eprintln!("{line}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/e2e-convergence.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "cluster: {line}");
    }
}

fn name(app: &str) -> Name {
    Name::new(app).expect("valid name")
}

/// The node index of every connection of `vhost` whose name starts with `prefix`, once at
/// least `expected` of them are there (sorted by name).
async fn node_of(cluster: &Cluster, vhost: &Vhost, prefix: &str, expected: usize) -> Vec<usize> {
    nebula_tests::wait_for(
        &format!("{expected} connections named {prefix}"),
        Duration::from_secs(30),
        || {
            let connections = cluster.connections(&vhost.name).unwrap_or_default();
            async move {
                let nodes: Vec<usize> = connections
                    .into_iter()
                    .filter(|(name, _)| name.starts_with(prefix))
                    .map(|(_, node)| node)
                    .collect();
                (nodes.len() >= expected).then_some(nodes)
            }
        },
    )
    .await
    .expect("connections")
}

/// Write `key` of a writer: the app's environment holds every key the writer has sent so
/// far, so an acknowledged key must be in every later state of the app.
fn body(keys: usize) -> Value {
    let env: BTreeMap<String, String> = (1..=keys)
        .map(|key| (format!("K{key}"), key.to_string()))
        .collect();
    json!({ "env_vars": env })
}

async fn stream(rests: Vec<Rest>, app: String, until: Instant) -> Writes {
    let mut writes = Writes::default();
    let mut key = 0;
    while Instant::now() < until {
        key += 1;
        // Both control planes in turn: one of them loses its node.
        let which = key % rests.len();
        match rests[which]
            .put(&format!("/apps/{app}/update"), body(key))
            .await
        {
            Ok(reply) if (200..300).contains(&reply.status) => {
                let revision = reply.body["app_id"].as_u64().expect("app_id");
                writes.acknowledged.push((key, revision));
                writes.acknowledged_by.push((which, Instant::now()));
                // A steady stream, not a flood: 30 simulated agents sharing two cores with
                // three brokers apply about 25 changes a second each, and a backlog would
                // hide how long the failover itself took to converge.
                tokio::time::sleep(PACE).await;
            }
            Ok(reply) => {
                writes.refused.push(reply.status);
                writes.refused_at.push(Instant::now());
                // A refused write is not retried (the next one carries its key anyway);
                // don't spin on a control plane that is reconnecting.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => writes.unanswered.push(error.to_string()),
        }
    }
    writes
}

/// The environment the store holds for `app`, and its revision.
async fn stored(rest: &Rest, app: &str) -> (BTreeMap<String, String>, u64) {
    let body = rest
        .get(&format!("/apps/{app}"))
        .await
        .expect("read")
        .ok()
        .expect("2xx");
    let env = serde_json::from_value(body["env_vars"].clone()).expect("env map");
    (env, body["app_id"].as_u64().expect("app_id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_loses_no_acknowledged_write() {
    let _turn = CLUSTER.lock().await;
    let setup = Setup::new("cluster-kill", WRITERS, AGENTS).await;
    let spread: BTreeSet<usize> = node_of(&setup.cluster, &setup.vhost, "nebula-agent", AGENTS)
        .await
        .into_iter()
        .collect();
    assert_eq!(spread.len(), 3, "agents on every node: {spread:?}");
    // The node the first control plane is on, so that a control plane fails over too.
    let victim = setup.first_node;

    let rest = setup.control_planes[1].rest();
    let mut initial = Vec::new();
    for app in &setup.apps {
        initial.push(stored(&rest, app).await.1);
    }
    let started = Instant::now();
    let until = started + STREAM;
    let writers: Vec<_> = setup
        .apps
        .iter()
        .map(|app| tokio::spawn(stream(setup.rests(), app.clone(), until)))
        .collect();
    tokio::time::sleep(KILL_AT).await;
    let killed_at = Instant::now();
    let cluster = setup.cluster.clone();
    let killed = tokio::task::spawn_blocking(move || cluster.kill(victim))
        .await
        .expect("join")
        .expect("SIGKILL a node");
    record(&format!(
        "node {victim} (pid {killed}) killed with SIGKILL at {:?}",
        started.elapsed()
    ));
    tokio::time::sleep(RESTART_AT.saturating_sub(started.elapsed())).await;
    let cluster = setup.cluster.clone();
    tokio::task::spawn_blocking(move || cluster.start_missing())
        .await
        .expect("join")
        .expect("node back");
    record(&format!("node {victim} back at {:?}", started.elapsed()));
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.push(writer.await.expect("writer"));
    }

    let converging = Instant::now();
    for ((app, writes), initial) in setup.apps.iter().zip(&outcomes).zip(&initial) {
        assert!(
            writes.unanswered.is_empty(),
            "{app}: requests without an answer: {:?}",
            writes.unanswered
        );
        assert!(
            writes.refused.iter().all(|status| *status == 503),
            "{app}: error answers other than 503: {:?}",
            writes.refused
        );
        assert!(
            !writes.acknowledged.is_empty(),
            "{app}: nothing acknowledged"
        );
        let revisions: Vec<u64> = writes
            .acknowledged
            .iter()
            .map(|(_, revision)| *revision)
            .collect();
        assert!(
            revisions.windows(2).all(|pair| pair[0] < pair[1]),
            "{app}: acknowledged revisions not increasing: {revisions:?}"
        );
        let (env, revision) = stored(&rest, app).await;
        for (key, acknowledged_revision) in &writes.acknowledged {
            assert_eq!(
                env.get(&format!("K{key}")),
                Some(&key.to_string()),
                "{app}: acknowledged write {key} (revision {acknowledged_revision}) missing from the store"
            );
            assert!(revision >= *acknowledged_revision);
        }
        // Each acknowledged write is a revision of its own (none was merged away or lost);
        // beyond them, only writes answered 503 may have been stored (those already stored
        // when their connection failed).
        let written = revision - initial;
        let acknowledged = writes.acknowledged.len() as u64;
        assert!(
            (acknowledged..=acknowledged + writes.refused.len() as u64).contains(&written),
            "{app}: {written} revisions written for {acknowledged} acknowledged and {} refused writes",
            writes.refused.len()
        );
        setup
            .fleet
            .wait_applied(&name(app), revision, converging, CONVERGE)
            .await
            .expect("every device applies the final revision");
        for device in &setup.fleet.devices {
            let containers = device.runtime.container_names(&name(app));
            assert!(
                !containers.is_empty(),
                "{app} not running on {}",
                device.device_id
            );
            for container in containers {
                let spec = device.runtime.spec(&container).expect("spec");
                let applied: BTreeMap<String, String> = spec
                    .env
                    .iter()
                    .filter_map(|pair| pair.split_once('='))
                    .filter(|(key, _)| key.starts_with('K'))
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect();
                assert_eq!(
                    applied, env,
                    "{app} on {} differs from the store",
                    device.device_id
                );
            }
        }
    }
    // The failover itself: the 503s came only in the seconds after the kill, and both control
    // planes served writes again afterwards (one of them through a new connection).
    for writes in &outcomes {
        for at in &writes.refused_at {
            let after = at.saturating_duration_since(killed_at);
            assert!(
                *at >= killed_at && after < FAILOVER,
                "a write refused {after:?} after the kill"
            );
        }
    }
    for index in 0..setup.control_planes.len() {
        assert!(
            outcomes.iter().any(|writes| writes
                .acknowledged_by
                .iter()
                .any(|(which, at)| *which == index && *at > killed_at + FAILOVER)),
            "control plane {index} served no write after the failover"
        );
    }
    for control_plane in &setup.control_planes {
        let address = &control_plane.address;
        let ready = reqwest::get(format!("http://{address}/readyz"))
            .await
            .expect("readyz");
        assert_eq!(ready.status(), 200);
    }
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        setup.control_planes[0].address
    ))
    .await
    .expect("metrics")
    .text()
    .await
    .expect("text");
    let connections: Option<u64> = metrics
        .lines()
        .find_map(|line| line.strip_prefix("nebula_broker_connections_total "))
        .and_then(|value| value.trim().parse().ok());
    assert!(
        connections >= Some(2),
        "the control plane on the killed node reconnected: {connections:?}"
    );
    let acknowledged: usize = outcomes
        .iter()
        .map(|writes| writes.acknowledged.len())
        .sum();
    let refused: usize = outcomes.iter().map(|writes| writes.refused.len()).sum();
    // The failover as the writers saw it: when the 503s came, relative to the kill.
    let last_refusal = outcomes
        .iter()
        .flat_map(|writes| &writes.refused_at)
        .map(|at| at.saturating_duration_since(killed_at).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    record(&format!(
        "{acknowledged} writes acknowledged, {refused} answered 503 (the last {last_refusal:.0} ms after the kill), every device equal to the store {:.1} s after the stream",
        converging.elapsed().as_secs_f64()
    ));
    assert_eq!(
        setup.cluster.running_nodes().expect("status").len(),
        3,
        "the killed node is back in the cluster"
    );
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_minority_refuses_writes_and_converges_when_the_majority_is_back() {
    // Last in turn (the other scenario takes the lock at once): this one leaves the cluster
    // finishing its recovery in the background (see the end), which the other would have to
    // wait out first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _turn = CLUSTER.lock().await;
    let setup = Setup::new("cluster-pause", 1, 9).await;
    let app = setup.apps[0].clone();
    let rests = setup.rests();
    let (before, revision_before) = stored(&rests[0], &app).await;

    // Two nodes down: whichever node survives is in a minority and pauses.
    setup.cluster.stop(1).expect("stop node 1");
    setup.cluster.stop(2).expect("stop node 2");
    let stopped = Instant::now();
    // The survivor has paused when its AMQP listener is gone. Until then a control plane
    // whose node was stopped may reconnect to it and have a write stored just before the
    // pause drops the connection (stored and answered 503, as designed): the refusals below
    // are about a cluster that has paused, so they wait for it.
    let survivor = setup.cluster.port(0);
    nebula_tests::wait_for(
        "the surviving node to pause",
        Duration::from_secs(60),
        || async move {
            nebula_tests::cluster::listener_pid(survivor)
                .is_none()
                .then_some(())
        },
    )
    .await
    .expect("the minority node did not pause");
    for (index, control_plane) in setup.control_planes.iter().enumerate() {
        let address = control_plane.address.clone();
        nebula_tests::wait_for(
            &format!("control plane {index} to see the broker gone"),
            Duration::from_secs(60),
            || {
                let url = format!("http://{address}/readyz");
                async move {
                    let status = reqwest::get(&url).await.ok()?.status();
                    (status == 503).then_some(())
                }
            },
        )
        .await
        .expect("not ready");
    }
    // Writes are refused, and nothing is stored or applied.
    for (attempt, rest) in rests.iter().enumerate() {
        let reply = rest
            .put(
                &format!("/apps/{app}/update"),
                json!({"env_vars": {"DURING": attempt.to_string()}}),
            )
            .await
            .expect("an answer");
        assert_eq!(reply.status, 503, "{}", reply.body);
    }
    let (during, revision_during) = stored(&rests[0], &app).await;
    assert_eq!((&during, revision_during), (&before, revision_before));
    for device in &setup.fleet.devices {
        assert_eq!(
            device.runtime.applied_revision(&name(&app)),
            Some(revision_before)
        );
    }
    record(&format!(
        "two nodes stopped; both control planes refused writes within {:.1} s",
        stopped.elapsed().as_secs_f64()
    ));

    // The majority back: the control planes serve again and a change reaches every device.
    // The survivor usually resumes within seconds of seeing the other two VMs, but a node of
    // RabbitMQ 3.10 can wait up to 100 s for its MQTT plugin's Raft leader (one run in four
    // measured), so up to three minutes are allowed. The restarted nodes finish booting on
    // their own (they are daemons): whoever uses the cluster next waits for all three nodes
    // (`Cluster::wait_complete`, `scripts/services.sh start`).
    let cluster = setup.cluster.clone();
    let restarting = std::thread::spawn(move || cluster.start_missing());
    let back = Instant::now();
    for control_plane in &setup.control_planes {
        control_plane
            .wait_ready_within(Duration::from_secs(180))
            .await
            .expect("ready again");
    }
    let reply = rests[1]
        .put(
            &format!("/apps/{app}/update"),
            json!({"env_vars": {"AFTER": "1"}}),
        )
        .await
        .expect("an answer");
    assert!((200..300).contains(&reply.status), "{}", reply.body);
    let revision = reply.body["app_id"].as_u64().expect("app_id");
    setup
        .fleet
        .wait_applied(&name(&app), revision, back, CONVERGE)
        .await
        .expect("converged");
    record(&format!(
        "majority back; a change applied on every device {:.1} s after the nodes were started",
        back.elapsed().as_secs_f64()
    ));
    setup.finish().await;
    if restarting.is_finished() {
        restarting.join().expect("join").expect("nodes back");
    }
}
