//! The agent without a broker: persisted desired state is restored and converged while the
//! broker is unreachable, a restart leaves containers at their revision alone, SIGTERM-style
//! cancellation stops cleanly, and bad configuration exits with 64.

mod common;

use common::{config, unique, wait_for};
use nebula_agent::runtime::simulated::SimulatedRuntime;
use nebula_agent::state::{DesiredState, StateStore};
use nebula_protocol::{AppConfig, ContainersPer, Name};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn converges_persisted_state_with_the_broker_unreachable_and_restarts_nothing() {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let app = Name::new(unique("offline")).expect("name");
    let mut persisted = DesiredState::default();
    let mut desired = AppConfig::new(app.clone(), "127.0.0.1:5000/nebula/test:1");
    desired.app_id = 3;
    desired.containers_per = ContainersPer::Server(2);
    persisted.apps.insert(app.clone(), desired);
    StateStore::new(state_dir.path())
        .save(&persisted)
        .expect("save");

    let state_path = state_dir.path().to_str().expect("utf-8 path").to_string();
    let agent_config = config(&[
        ("NEBULA_APPS", app.as_str()),
        ("NEBULA_DEVICE_ID", "offline-device"),
        // Nothing listens on port 1: the broker is unreachable.
        ("NEBULA_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ("NEBULA_STATE_DIR", &state_path),
        ("NEBULA_RUNTIME", "simulated"),
    ]);
    let runtime = SimulatedRuntime::new();

    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(nebula_agent::run(
        agent_config.clone(),
        runtime.clone(),
        shutdown.clone(),
    ));
    wait_for(
        "persisted app applied offline",
        Duration::from_secs(10),
        || {
            let runtime = runtime.clone();
            let app = app.clone();
            async move { runtime.applied_revision(&app) == Some(3) }
        },
    )
    .await;
    assert_eq!(runtime.container_names(&app).len(), 2);
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("stops promptly")
        .expect("task");
    assert!(stopped.is_ok(), "{stopped:?}");
    // Shutdown leaves the app's containers running.
    assert_eq!(runtime.applied_revision(&app), Some(3));

    // A restart: containers already at their revision are not touched.
    let operations_before = runtime.operations();
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(nebula_agent::run(
        agent_config,
        runtime.clone(),
        shutdown.clone(),
    ));
    // Proving that nothing happens needs a pause longer than a reconcile pass (the workers
    // start at once and re-check every 500 ms in tests).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(runtime.operations(), operations_before);
    shutdown.cancel();
    assert!(agent.await.expect("task").is_ok());
}

#[test]
fn bad_configuration_exits_with_64() {
    for environment in [
        vec![],
        vec![("NEBULA_DEVICE_GROUP", "g"), ("NEBULA_APPS", "a")],
        vec![("NEBULA_APPS", "bad name")],
        // Issue 18: a bad DOCKER_HOST restart-looped instead of exiting 64.
        vec![("NEBULA_APPS", "a"), ("DOCKER_HOST", "tcp//127.0.0.1:2375")],
        vec![
            ("NEBULA_APPS", "a"),
            ("DOCKER_HOST", "unix://relative/docker.sock"),
        ],
        vec![("NEBULA_APPS", "a"), ("DOCKER_HOST", "ssh://pi@device")],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_nebula-agent"))
            .env_clear()
            .envs(environment.iter().copied())
            .output()
            .expect("run the binary");
        assert_eq!(output.status.code(), Some(64), "{environment:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("configuration error"), "{stderr}");
    }
}

#[test]
fn sigterm_stops_cleanly() {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nebula-agent"))
        .env_clear()
        .env("NEBULA_APPS", "sigterm-app")
        .env("NEBULA_DEVICE_ID", "sigterm-device")
        .env("NEBULA_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("NEBULA_STATE_DIR", state_dir.path())
        .env("NEBULA_RUNTIME", "simulated")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Give it time to install its signal handlers.
    std::thread::sleep(Duration::from_millis(500));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(0));
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 18: every app worker listed the engine's containers on its own, every pass. One
/// observation of the engine per pass serves every app: ten converged apps cost one list
/// per resync period (500 ms in tests), not ten.
#[tokio::test]
async fn one_observation_of_the_engine_serves_every_app() {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let mut persisted = DesiredState::default();
    let apps: Vec<Name> = (0..10)
        .map(|index| Name::new(unique(&format!("observe{index}"))).expect("name"))
        .collect();
    for app in &apps {
        persisted.apps.insert(
            app.clone(),
            AppConfig::new(app.clone(), "127.0.0.1:5000/nebula/test:1"),
        );
    }
    StateStore::new(state_dir.path())
        .save(&persisted)
        .expect("save");
    let names: Vec<&str> = apps.iter().map(Name::as_str).collect();
    let joined = names.join(",");
    let runtime = SimulatedRuntime::new();
    let (shutdown, agent) = start_simulated(&joined, "observe-device", state_dir.path(), &runtime);
    wait_for("every app applied", Duration::from_secs(10), || {
        let runtime = runtime.clone();
        let apps = apps.clone();
        async move {
            apps.iter()
                .all(|app| runtime.applied_revision(app) == Some(1))
        }
    })
    .await;
    // A rate over a window: four resync periods with nothing to do.
    let before = runtime.list_calls();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let lists = runtime.list_calls() - before;
    shutdown.cancel();
    assert!(agent.await.expect("task").is_ok());
    assert!(
        lists <= 6,
        "{lists} container lists in 4 resync periods of 10 apps"
    );
}

/// Issue 18: the systemd unit could give up: systemd's default start limit (5 starts in
/// 10 s) stops restarting a fast crash loop for good, leaving the device unmanaged until
/// someone visits it. The unit turns the limit off in `[Unit]` (where systemd reads it) and
/// restarts always, except on a configuration error (exit 64).
#[test]
fn the_systemd_unit_never_gives_up_restarting() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/nebula-agent.service"
    ))
    .expect("unit file");
    let mut sections: HashMap<String, Vec<String>> = HashMap::new();
    let mut current = String::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            current = line.to_string();
        } else {
            sections
                .entry(current.clone())
                .or_default()
                .push(line.to_string());
        }
    }
    let has = |section: &str, setting: &str| {
        sections
            .get(section)
            .is_some_and(|lines| lines.iter().any(|line| line == setting))
    };
    assert!(has("[Unit]", "StartLimitIntervalSec=0"), "{unit}");
    assert!(has("[Service]", "Restart=always"), "{unit}");
    assert!(has("[Service]", "RestartPreventExitStatus=64"), "{unit}");
}

/// Issue 18: app workers never ended, and each kept polling the engine. A worker whose app
/// is neither wanted nor has containers ends: here the container of an app dropped from
/// `NEBULA_APPS` is removed, then nothing lists the engine any more (no other app has a
/// desired config yet, and there is no broker to report to).
#[tokio::test]
async fn the_worker_of_a_removed_app_ends() {
    use nebula_agent::runtime::ContainerSpec;
    let state_dir = tempfile::tempdir().expect("tempdir");
    let kept = Name::new(unique("kept")).expect("name");
    let dropped = Name::new(unique("dropped")).expect("name");
    let runtime = SimulatedRuntime::new();
    let mut leftover = AppConfig::new(dropped.clone(), "127.0.0.1:5000/nebula/test:1");
    leftover.app_id = 3;
    runtime.adopt_container(&ContainerSpec::for_app(&leftover, 0).expect("spec"));
    let (shutdown, agent) =
        start_simulated(kept.as_str(), "retire-device", state_dir.path(), &runtime);
    wait_for("the dropped app removed", Duration::from_secs(10), || {
        let runtime = runtime.clone();
        let dropped = dropped.clone();
        async move { runtime.container_names(&dropped).is_empty() }
    })
    .await;
    // Let the worker see its app converged (one more pass), then four resync periods.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = runtime.list_calls();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let lists = runtime.list_calls() - before;
    shutdown.cancel();
    assert!(agent.await.expect("task").is_ok());
    assert_eq!(
        lists, 0,
        "the engine was listed {lists} times with no app to look after"
    );
}

/// Starts an app-mode agent on `runtime` with no broker to reach (port 1).
fn start_simulated(
    apps: &str,
    device: &str,
    state_dir: &std::path::Path,
    runtime: &SimulatedRuntime,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), nebula_agent::error::AgentError>>,
) {
    let agent_config = config(&[
        ("NEBULA_APPS", apps),
        ("NEBULA_DEVICE_ID", device),
        ("NEBULA_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ("NEBULA_STATE_DIR", state_dir.to_str().expect("utf-8")),
        ("NEBULA_RUNTIME", "simulated"),
    ]);
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(nebula_agent::run(
        agent_config,
        runtime.clone(),
        shutdown.clone(),
    ));
    (shutdown, agent)
}
