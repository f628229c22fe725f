//! The agent's container handling on the real Docker engine (issue 18): what a board on a
//! metered link needs — parallel replace and stop, one pull per change, pulls that cannot
//! hang, name conflicts that never destroy a container the agent does not own, UDP ports,
//! rotated logs, API-version negotiation on every call, orphans in app mode.
//!
//! Every test uses its own app names, images and device ids and removes what it made, so the
//! file runs in parallel with the rest of the suite and the quick start on one engine.

mod common;

use common::engine::{
    Cleanup, FakeRegistry, RegistryBehaviour, TestImage, app, app_container_names,
    container_exists, docker, docker_runtime, inspect, pull, test_image, unique_name,
};
use common::{config, wait_for};
use nebula_agent::executor::converge_app;
use nebula_agent::runtime::ContainerRuntime;
use nebula_agent::runtime::docker::DockerRuntime;
use nebula_agent::state::{DesiredState, StateStore};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A process that ignores SIGTERM, as a shell as PID 1 does: `docker stop` waits out the
/// whole stop timeout, then kills it.
const IGNORES_SIGTERM: &str = r#"CMD ["/bin/busybox", "sh", "-c", "trap '' TERM; exec /bin/busybox httpd -f -p 8000 -h /www"]"#;

/// Issue 18: an app of 2 containers ignoring SIGTERM took 21 s to update and 20 s to stop,
/// one container after another. Without `rolling_restart` all containers of an app are
/// replaced and stopped at once: four take one stop timeout (10 s), not four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_containers_ignoring_sigterm_update_and_stop_within_12_s() {
    let image = TestImage::build("sigterm", IGNORES_SIGTERM, &[]);
    let runtime = docker_runtime();
    let name = unique_name("engine-sigterm");
    let _cleanup = Cleanup::apps(&[&name]);
    let mut config = app(&name, &image.reference, 1, 4);
    converge_app(&runtime, &name, Some(&config), 3)
        .await
        .expect("converge");
    assert_eq!(app_container_names(&name).len(), 4);

    config.app_id = 2;
    let started = Instant::now();
    converge_app(&runtime, &name, Some(&config), 3)
        .await
        .expect("update");
    let update = started.elapsed();
    let revisions: Vec<String> = app_container_names(&name)
        .iter()
        .map(|container| inspect(container, "{{index .Config.Labels \"app_id\"}}"))
        .collect();
    assert_eq!(revisions, vec!["2"; 4]);

    config.app_id = 3;
    config.running = false;
    let started = Instant::now();
    converge_app(&runtime, &name, Some(&config), 3)
        .await
        .expect("stop");
    let stop = started.elapsed();
    assert!(app_container_names(&name).is_empty());
    eprintln!(
        "4 containers ignoring SIGTERM: update {:.1} s, stop {:.1} s",
        update.as_secs_f64(),
        stop.as_secs_f64()
    );
    assert!(update <= Duration::from_secs(12), "update took {update:?}");
    assert!(stop <= Duration::from_secs(12), "stop took {stop:?}");
}

/// Issue 18: a create that hit a name conflict force-removed whatever container had the
/// name. A container without this agent's labels — made by hand, or by another agent — is
/// never removed; the conflict is the app's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_container_named_like_ours_survives() {
    let runtime = docker_runtime().owned_by("engine-foreign-device");
    let name = unique_name("engine-foreign");
    let mut cleanup = Cleanup::apps(&[&name]);
    // Made by hand: no labels of ours at all.
    let by_hand = format!("{name}-1");
    cleanup.container(&by_hand);
    pull(&test_image(1));
    let hand_made_id = docker(&[
        "create",
        "--name",
        &by_hand,
        "--label",
        "nebula.test=agent",
        &test_image(1),
    ]);
    // Another device's container of an app of the same name.
    let other_device = format!("{name}-2");
    cleanup.container(&other_device);
    let other_id = docker(&[
        "create",
        "--name",
        &other_device,
        "--label",
        "nebula.test=agent",
        "--label",
        "orchestrator=nebula",
        "--label",
        &format!("app_name={name}"),
        "--label",
        "app_id=1",
        "--label",
        "device_id=another-device",
        &test_image(1),
    ]);

    let config = app(&name, &test_image(1), 1, 2);
    let error = converge_app(&runtime, &name, Some(&config), 2)
        .await
        .expect_err("the names are taken");
    assert!(
        error.to_string().contains(&by_hand) || error.to_string().contains(&other_device),
        "{error}"
    );
    assert!(
        container_exists(&hand_made_id),
        "the hand-made container was removed"
    );
    assert!(
        container_exists(&other_id),
        "another device's container was removed"
    );
    assert_eq!(inspect(&hand_made_id, "{{.Name}}"), format!("/{by_hand}"));
}

/// Issue 18: UDP ports could not be published (`/tcp` was hard-coded). `"<host>": "53/udp"`
/// publishes the container's UDP port 53 on the host port, and a datagram gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_port_answers() {
    use nebula_protocol::{PortMapping, PortProtocol};
    let runtime = docker_runtime();
    let name = unique_name("engine-udp");
    let _cleanup = Cleanup::apps(&[&name]);
    let image = common::env_or(
        "NEBULA_TEST_IMAGE_UDP",
        &format!("{}/nebula/test-udp", common::engine::registry()),
    );
    // A free UDP port on the host (bound for a moment, then released for Docker).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("free port")
        .port();
    let mut config = app(&name, &format!("{image}:1"), 1, 1);
    config.starting_ports = vec![PortMapping::MappedWithProtocol {
        host: port,
        container: 53,
        protocol: PortProtocol::Udp,
    }];
    converge_app(&runtime, &name, Some(&config), 3)
        .await
        .expect("converge");
    let bindings = inspect(&format!("{name}-1"), "{{json .HostConfig.PortBindings}}");
    assert!(
        bindings.contains(&format!(
            r#""53/udp":[{{"HostIp":"","HostPort":"{port}"}}]"#
        )),
        "{bindings}"
    );
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut answer = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while answer.is_none() && Instant::now() < deadline {
        socket
            .send_to(b"ping", ("127.0.0.1", port))
            .await
            .expect("send");
        let mut buffer = [0u8; 64];
        if let Ok(Ok((length, _))) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buffer)).await
        {
            answer = Some(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
    }
    assert_eq!(answer.as_deref(), Some("nebula udp ping"));
    converge_app(&runtime, &name, None, 2)
        .await
        .expect("remove");
}

/// Issue 18: container logs were never rotated, and json-file grows until the SD card is
/// full. On an engine logging to json-file (this one), every container gets a maximum size
/// and number of files. Its app's stop timeout is the container's own StopTimeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_rotated_logs_and_their_app_stop_timeout() {
    let runtime = docker_runtime();
    let name = unique_name("engine-logs");
    let _cleanup = Cleanup::apps(&[&name]);
    let mut config = app(&name, &test_image(1), 1, 1);
    // Above bollard's 2-minute request limit: stops wait for the engine a minute longer
    // than the longest stop timeout. (The test image stops at once on SIGTERM.)
    config.stop_timeout_secs = 130;
    converge_app(&runtime, &name, Some(&config), 3)
        .await
        .expect("converge");
    let log_config = inspect(&format!("{name}-1"), "{{json .HostConfig.LogConfig}}");
    assert_eq!(
        log_config,
        r#"{"Type":"json-file","Config":{"max-file":"3","max-size":"10m"}}"#
    );
    assert_eq!(
        inspect(&format!("{name}-1"), "{{.Config.StopTimeout}}"),
        "130"
    );
    converge_app(&runtime, &name, None, 2)
        .await
        .expect("remove");
}

/// Issue 18: some engine calls skipped API-version negotiation. Every call path negotiates
/// first: whatever a fresh runtime is asked to do, its first request to the engine is
/// `GET /version`, seen through a recording proxy in front of the engine's socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_engine_call_negotiates_the_api_version_first() {
    let proxy = RecordingProxy::start().await;
    let missing = unique_name("engine-negotiate").to_string();
    let fresh = || {
        DockerRuntime::connect(&proxy.docker_host, None, common::engine::CAPACITY).expect("connect")
    };
    let mut first_requests = Vec::new();
    macro_rules! first_request_of {
        ($call:expr) => {{
            proxy.clear();
            let _ = $call;
            first_requests.push((stringify!($call), proxy.first_request()));
        }};
    }
    first_request_of!(fresh().list_containers().await);
    first_request_of!(fresh().inspect_container(&missing).await);
    first_request_of!(fresh().remove_container(&missing).await);
    first_request_of!(fresh().start_container(&missing).await);
    first_request_of!(fresh().restart_container(&missing).await);
    first_request_of!(fresh().ensure_image("127.0.0.1:1/nebula/none:1").await);
    for (call, first) in &first_requests {
        assert!(
            first
                .as_deref()
                .is_some_and(|line| line.starts_with("GET /version")),
            "{call}: first request {first:?}"
        );
    }
}

/// A unix socket in front of the engine's that records the first request line of every
/// connection.
struct RecordingProxy {
    docker_host: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _directory: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingProxy {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let engine = common::env_or("DOCKER_HOST", "unix:///var/run/docker.sock")
            .trim_start_matches("unix://")
            .to_string();
        let directory = tempfile::tempdir().expect("tempdir");
        let socket = directory.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let requests = requests.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let requests = requests.clone();
                    let engine = engine.clone();
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buffer = [0u8; 4096];
                        while !head.windows(2).any(|pair| pair == b"\r\n") {
                            match client.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => head.extend_from_slice(&buffer[..read]),
                            }
                        }
                        let line = String::from_utf8_lossy(&head)
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string();
                        requests.lock().expect("lock").push(line);
                        let Ok(mut upstream) = tokio::net::UnixStream::connect(&engine).await
                        else {
                            return;
                        };
                        if upstream.write_all(&head).await.is_ok() {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                    });
                }
            }
        });
        Self {
            docker_host: format!("unix://{}", socket.display()),
            requests,
            _directory: directory,
            task,
        }
    }

    fn clear(&self) {
        self.requests.lock().expect("lock").clear();
    }

    fn first_request(&self) -> Option<String> {
        self.requests.lock().expect("lock").first().cloned()
    }
}

/// Issue 18: a stalled pull blocked the app's worker without limit (the timeout covered
/// the response headers only). A pull that makes no progress for the stall timeout (60 s
/// in the agent, 3 s here) fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pull_times_out() {
    let registry = FakeRegistry::start(RegistryBehaviour::StallInLayer).await;
    let image = format!("{}/nebula/stalled:1", registry.address);
    let runtime = docker_runtime().with_pull_stall_timeout(Duration::from_secs(3));
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(60), runtime.ensure_image(&image))
        .await
        .expect("the pull ends");
    let took = started.elapsed();
    eprintln!("stalled pull failed after {took:?}");
    let error = result.expect_err("a stalled pull fails");
    assert!(error.to_string().contains("stalled"), "{error}");
    // The stall timeout counts from the last progress event, so the whole pull may take a
    // little longer than 3 s, but nowhere near the engine's own limits (minutes).
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// Issue 18: every failed pass pulled the image again (a lasting create failure was a
/// registry round trip every few seconds per device). A pull happens once per (app,
/// incarnation, revision): here a create that keeps failing (its host port is taken) is
/// retried for seconds, with one pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_create_does_not_pull_again() {
    let registry = FakeRegistry::start(RegistryBehaviour::NotFound).await;
    let image = format!("{}/nebula/pull-once:1", registry.address);
    pull(&test_image(1));
    docker(&["tag", &test_image(1), &image]);
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker")
                .args(["rmi", &self.0])
                .output();
        }
    }
    let _untag = Untag(image.clone());
    // How many manifest requests one pull makes (the engine asks more than once).
    let _ = std::process::Command::new("docker")
        .args(["pull", &image])
        .output();
    let per_pull = registry.manifest_requests();
    assert!(per_pull >= 1, "the engine never asked the fake registry");
    // The host port every pass tries to publish is taken for the whole test.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = taken.local_addr().expect("address").port();

    let name = unique_name("engine-pull-once");
    let device = unique_name("engine-pull-once-device");
    let _cleanup = Cleanup::apps(&[&name]);
    let state_dir = tempfile::tempdir().expect("tempdir");
    let mut desired = DesiredState::default();
    let mut config = app(&name, &image, 1, 1);
    config.starting_ports = vec![nebula_protocol::PortMapping::Mapped {
        host: port,
        container: 8000,
    }];
    desired.apps.insert(name.clone(), config);
    StateStore::new(state_dir.path())
        .save(&desired)
        .expect("save");
    let agent_config = common::config(&[
        ("NEBULA_APPS", name.as_str()),
        ("NEBULA_DEVICE_ID", device.as_str()),
        ("NEBULA_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        (
            "NEBULA_STATE_DIR",
            state_dir.path().to_str().expect("utf-8"),
        ),
    ]);
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(nebula_agent::run(
        agent_config,
        docker_runtime().owned_by(device.as_str()),
        shutdown.clone(),
    ));
    wait_for("a first pull", Duration::from_secs(20), || async {
        registry.manifest_requests() > per_pull
    })
    .await;
    // Several passes (tests retry within 500 ms) fail at the create meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let requests = registry.manifest_requests() - per_pull;
    shutdown.cancel();
    agent.await.expect("task").expect("agent");
    drop(taken);
    assert_eq!(
        requests, per_pull,
        "manifest requests of the agent's pulls of one revision ({per_pull} per pull)"
    );
}

/// Issue 18: app mode never removed the containers of apps dropped from `NEBULA_APPS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_mode_removes_the_containers_of_a_dropped_app() {
    let kept = unique_name("engine-kept");
    let dropped = unique_name("engine-dropped");
    let device = unique_name("engine-orphans-device");
    let _cleanup = Cleanup::apps(&[&kept, &dropped]);
    let state_dir = tempfile::tempdir().expect("tempdir");
    let mut desired = DesiredState::default();
    for name in [&kept, &dropped] {
        desired
            .apps
            .insert(name.clone(), app(name, &test_image(1), 1, 1));
    }
    StateStore::new(state_dir.path())
        .save(&desired)
        .expect("save");
    let state_path = state_dir.path().to_str().expect("utf-8").to_string();
    let run = |apps: String| {
        let agent_config = config(&[
            ("NEBULA_APPS", apps.as_str()),
            ("NEBULA_DEVICE_ID", device.as_str()),
            ("NEBULA_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ("NEBULA_STATE_DIR", state_path.as_str()),
        ]);
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(nebula_agent::run(
            agent_config,
            docker_runtime().owned_by(device.as_str()),
            shutdown.clone(),
        ));
        (shutdown, agent)
    };

    let (shutdown, agent) = run(format!("{kept},{dropped}"));
    wait_for("both apps running", Duration::from_secs(30), || async {
        app_container_names(&kept).len() == 1 && app_container_names(&dropped).len() == 1
    })
    .await;
    shutdown.cancel();
    agent.await.expect("task").expect("agent");

    let (shutdown, agent) = run(kept.to_string());
    wait_for(
        "the dropped app removed",
        Duration::from_secs(20),
        || async { app_container_names(&dropped).is_empty() },
    )
    .await;
    assert_eq!(app_container_names(&kept), vec![format!("{kept}-1")]);
    shutdown.cancel();
    agent.await.expect("task").expect("agent");
}

/// Issue 18: a newer desired state interrupts a pull in progress (a stalled one here), so
/// the app's worker turns to the new config at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_desired_state_interrupts_a_stalled_pull() {
    use nebula_agent::executor::{ImageMemory, Pass, PassGuard, PassOutcome};
    use nebula_protocol::{AppConfig, Name};
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Superseded(AtomicBool);
    impl PassGuard for Superseded {
        async fn still_wanted(&self, _app: &Name, _planned_for: Option<&AppConfig>) -> bool {
            !self.0.load(Ordering::SeqCst)
        }
    }

    let registry = FakeRegistry::start(RegistryBehaviour::StallInLayer).await;
    let name = unique_name("engine-interrupt");
    let _cleanup = Cleanup::apps(&[&name]);
    let config = app(
        &name,
        &format!("{}/nebula/stalled:1", registry.address),
        1,
        1,
    );
    let runtime = docker_runtime();
    let shutdown = CancellationToken::new();
    let guard = Superseded(AtomicBool::new(false));
    let pass = Pass {
        runtime: &runtime,
        app: &name,
        desired: Some(&config),
        max_restart_wait: Duration::ZERO,
        shutdown: &shutdown,
    };
    let mut image = ImageMemory::default();
    let run = pass.run(&guard, &mut image);
    tokio::pin!(run);
    tokio::select! {
        () = registry.layer_started() => {}
        outcome = &mut run => panic!("the pass ended before the pull stalled: {outcome:?}"),
    }
    guard.0.store(true, Ordering::SeqCst);
    let outcome = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the pass ends within 5 s of the change");
    assert!(
        matches!(outcome, Ok(PassOutcome::Interrupted)),
        "{outcome:?}"
    );
}
