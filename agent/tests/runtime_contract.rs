//! One contract suite for every [`ContainerRuntime`]: the simulated one (in memory) and the
//! Docker one against the real engine and the local registry with authentication
//! (`scripts/services.sh`, `scripts/test-image.sh`). Each test uses its own app name and
//! removes its containers, so the suite runs in parallel with everything else.

use nebula_agent::config::RegistryAuth;
use nebula_agent::cron_runner::CronRunner;
use nebula_agent::error::DockerError;
use nebula_agent::executor::converge_app;
use nebula_agent::reconcile::ObservedContainer;
use nebula_agent::runtime::docker::DockerRuntime;
use nebula_agent::runtime::simulated::SimulatedRuntime;
use nebula_agent::runtime::{ContainerRuntime, ContainerSpec, ImageOutcome};
use nebula_protocol::placement::{
    DeviceCapacity, LABEL_CONFIG_HASH, LABEL_INCARNATION, config_hash,
};
use nebula_protocol::{AppConfig, ContainersPer, CronJob, Name, PortMapping};
use std::collections::BTreeMap;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn registry() -> String {
    env_or("NEBULA_TEST_REGISTRY", "127.0.0.1:5000")
}

fn unique(prefix: &str) -> Name {
    Name::new(format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ))
    .expect("name")
}

/// A runtime plus the images its tests use.
struct Fixture<R> {
    runtime: R,
    image_1: String,
    image_2: String,
    healthy: String,
    /// Nowhere to be had.
    missing: String,
    /// Present locally, registry unreachable.
    local_only: String,
    /// Whether the containers really serve HTTP on their published ports.
    serves_http: bool,
    /// A Docker tag this fixture made, removed on drop.
    docker_tag: Option<String>,
    /// Ends a cron run's process, as its job finishing would (the test image serves HTTP
    /// until stopped).
    end_run: fn(&R, &str),
}

impl<R> Drop for Fixture<R> {
    fn drop(&mut self) {
        if let Some(tag) = &self.docker_tag {
            // Untags only: the image itself is test:1's.
            let _ = std::process::Command::new("docker")
                .args(["rmi", tag])
                .output();
        }
    }
}

const CAPACITY: DeviceCapacity = DeviceCapacity {
    cpu_cores: 2,
    memory_mb: 2048,
};

fn simulated() -> Fixture<SimulatedRuntime> {
    let runtime = SimulatedRuntime::with_capacity(CAPACITY);
    let registry = registry();
    let image_1 = format!("{registry}/nebula/test:1");
    let image_2 = format!("{registry}/nebula/test:2");
    let healthy = format!("{registry}/nebula/test-healthy:1");
    runtime.set_pullable([image_1.clone(), image_2.clone(), healthy.clone()]);
    runtime.add_healthcheck_image(&healthy);
    let local_only = "127.0.0.1:5999/nebula/offline:1".to_string();
    runtime.add_local_image(&local_only);
    Fixture {
        runtime,
        image_1,
        image_2,
        healthy,
        missing: format!("{registry}/nebula/does-not-exist:1"),
        local_only,
        serves_http: false,
        docker_tag: None,
        end_run: |runtime, run| runtime.set_state(run, "exited"),
    }
}

async fn docker() -> Fixture<DockerRuntime> {
    let registry = registry();
    let auth = RegistryAuth {
        host: registry.clone(),
        user: env_or("NEBULA_TEST_REGISTRY_USER", "nebula"),
        password: env_or("NEBULA_TEST_REGISTRY_PASSWORD", "nebula-registry"),
    };
    let host = env_or("DOCKER_HOST", "unix:///var/run/docker.sock");
    let runtime = DockerRuntime::connect(&host, Some(auth), CAPACITY).expect("docker");
    let image_1 = format!("{registry}/nebula/test:1");
    // The offline image: test:1 re-tagged under a registry nothing listens on.
    assert_eq!(
        runtime.ensure_image(&image_1).await.expect("pull test:1"),
        ImageOutcome::Pulled
    );
    let tag = format!("{:08x}", fastrand::u32(..));
    let local_only = format!("127.0.0.1:5999/nebula/offline:{tag}");
    let status = std::process::Command::new("docker")
        .args(["tag", &image_1, &local_only])
        .status()
        .expect("docker tag");
    assert!(status.success());
    Fixture {
        runtime,
        image_1,
        image_2: format!("{registry}/nebula/test:2"),
        healthy: format!("{registry}/nebula/test-healthy:1"),
        missing: format!("{registry}/nebula/does-not-exist:{tag}"),
        docker_tag: Some(local_only.clone()),
        local_only,
        serves_http: true,
        end_run: |_, run| {
            let status = std::process::Command::new("docker")
                .args(["stop", run])
                .output()
                .expect("docker stop");
            assert!(status.status.success(), "{status:?}");
        },
    }
}

/// Removes an app's containers even when the test panics.
struct Cleanup(Name);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=app_name={}", self.0);
        if let Ok(output) = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .arg("rm")
                    .arg("-f")
                    .args(&ids)
                    .output();
            }
        }
    }
}

/// Removes a cron job's runs even when the test panics.
struct CronCleanup(Name);

impl Drop for CronCleanup {
    fn drop(&mut self) {
        let filter = format!("label=cron_job_name={}", self.0);
        if let Ok(output) = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .arg("rm")
                    .arg("-f")
                    .args(&ids)
                    .output();
            }
        }
    }
}

fn app(name: &Name, image: &str, revision: u64, count: u32) -> AppConfig {
    let mut app = AppConfig::new(name.clone(), image);
    app.app_id = revision;
    app.containers_per = ContainersPer::Server(count);
    // `bridge` is Docker's default network; connecting to it exercises extra networks.
    app.networks = vec!["nebula".into(), "bridge".into()];
    app
}

async fn containers<R: ContainerRuntime>(runtime: &R, app: &Name) -> Vec<ObservedContainer> {
    let mut containers: Vec<_> = runtime
        .list_containers()
        .await
        .expect("list")
        .into_iter()
        .filter(|container| &container.app_name == app)
        .collect();
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    containers
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response
        .split("\r\n\r\n")
        .nth(1)
        .map(|body| body.trim().to_string())
}

async fn http_eventually(port: u16, expected: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let body = http_get(port, "/version").await;
        if body.as_deref() == Some(expected) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "port {port}: got {body:?}, want {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn creates_updates_and_stops<R: ContainerRuntime>(fixture: Fixture<R>) {
    let runtime = &fixture.runtime;
    let name = unique("contract-life");
    let _cleanup = Cleanup(name.clone());
    let base_port = 20_000 + u16::try_from(fastrand::u32(0..20_000)).expect("port");
    let mut config = app(&name, &fixture.image_1, 1, 2);
    config.incarnation = 3;
    config.starting_ports = vec![PortMapping::Mapped {
        host: base_port,
        container: 8000,
    }];
    config.env_vars.insert("NEBULA_TEST".into(), "yes".into());

    assert_eq!(
        converge_app(runtime, &name, Some(&config), 3)
            .await
            .expect("converge"),
        None
    );
    let observed = containers(runtime, &name).await;
    assert_eq!(
        observed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        vec![format!("{name}-1"), format!("{name}-2")]
    );
    assert!(
        observed
            .iter()
            .all(|c| c.app_id == Some(1) && c.is_running())
    );
    let inspected = runtime
        .inspect_container(&format!("{name}-2"))
        .await
        .expect("inspect")
        .expect("exists");
    assert_eq!(inspected.app_id, Some(1));
    // Labelled with what it was created from, and read back from the labels.
    assert_eq!(inspected.incarnation, Some(config.incarnation));
    assert_eq!(
        inspected.config_hash.as_deref(),
        Some(config_hash(&config).as_str())
    );
    if fixture.serves_http {
        http_eventually(base_port, "1").await;
        http_eventually(base_port + 1, "1").await;
    }

    // Update: a new revision with a new image replaces every container.
    let mut update = config.clone();
    update.app_id = 2;
    update.docker_image = fixture.image_2.clone();
    converge_app(runtime, &name, Some(&update), 3)
        .await
        .expect("converge update");
    let observed = containers(runtime, &name).await;
    assert_eq!(observed.len(), 2);
    assert!(
        observed
            .iter()
            .all(|c| c.app_id == Some(2) && c.is_running())
    );
    if fixture.serves_http {
        http_eventually(base_port, "2").await;
        http_eventually(base_port + 1, "2").await;
    }

    // Shrink, then stop.
    let mut shrink = update.clone();
    shrink.app_id = 3;
    shrink.containers_per = ContainersPer::Server(1);
    converge_app(runtime, &name, Some(&shrink), 3)
        .await
        .expect("converge shrink");
    assert_eq!(containers(runtime, &name).await.len(), 1);

    let mut stopped = shrink.clone();
    stopped.app_id = 4;
    stopped.running = false;
    converge_app(runtime, &name, Some(&stopped), 3)
        .await
        .expect("converge stop");
    assert!(containers(runtime, &name).await.is_empty());
}

async fn rolling_restart_waits_for_health<R: ContainerRuntime>(fixture: Fixture<R>) {
    let runtime = &fixture.runtime;
    let name = unique("contract-roll");
    let _cleanup = Cleanup(name.clone());
    let mut config = app(&name, &fixture.healthy, 1, 2);
    config.rolling_restart = true;
    converge_app(runtime, &name, Some(&config), 3)
        .await
        .expect("converge");
    for container in containers(runtime, &name).await {
        let inspected = runtime
            .inspect_container(&container.name)
            .await
            .expect("inspect")
            .expect("exists");
        assert!(inspected.is_ready(), "{inspected:?}");
    }

    // A restart (new revision) one container at a time, growing to 3.
    let mut grow = config.clone();
    grow.app_id = 2;
    grow.containers_per = ContainersPer::Server(3);
    converge_app(runtime, &name, Some(&grow), 3)
        .await
        .expect("converge grow");
    let observed = containers(runtime, &name).await;
    assert_eq!(observed.len(), 3);
    assert!(observed.iter().all(|c| c.app_id == Some(2)));

    // `containers_per: cpu` sizes by the device's cores (2 here), shrinking by one.
    let mut per_cpu = grow.clone();
    per_cpu.app_id = 3;
    per_cpu.containers_per = ContainersPer::Cpu(1);
    converge_app(runtime, &name, Some(&per_cpu), 3)
        .await
        .expect("converge shrink");
    let observed = containers(runtime, &name).await;
    assert_eq!(observed.len(), 2);
    assert!(observed.iter().all(|c| c.app_id == Some(3)));

    converge_app(runtime, &name, None, 3).await.expect("remove");
    assert!(containers(runtime, &name).await.is_empty());
}

async fn unavailable_image_is_an_error<R: ContainerRuntime>(fixture: Fixture<R>) {
    let runtime = &fixture.runtime;
    let error = runtime
        .ensure_image(&fixture.missing)
        .await
        .expect_err("missing image");
    assert!(
        matches!(error, DockerError::ImageUnavailable { .. }),
        "{error:?}"
    );
    let name = unique("contract-missing");
    let _cleanup = Cleanup(name.clone());
    let config = app(&name, &fixture.missing, 1, 1);
    assert!(
        converge_app(runtime, &name, Some(&config), 2)
            .await
            .is_err()
    );
    assert!(containers(runtime, &name).await.is_empty());
}

async fn local_image_runs_when_registry_is_unreachable<R: ContainerRuntime>(fixture: Fixture<R>) {
    let runtime = &fixture.runtime;
    let outcome = runtime
        .ensure_image(&fixture.local_only)
        .await
        .expect("local fallback");
    assert!(
        matches!(outcome, ImageOutcome::LocalFallback { .. }),
        "{outcome:?}"
    );
    let name = unique("contract-offline");
    let _cleanup = Cleanup(name.clone());
    let config = app(&name, &fixture.local_only, 1, 1);
    let note = converge_app(runtime, &name, Some(&config), 3)
        .await
        .expect("converge");
    assert!(note.is_some_and(|note| note.contains("pull")));
    let observed = containers(runtime, &name).await;
    assert_eq!(observed.len(), 1);
    assert!(observed[0].is_running());
    // The container must go before the fixture untags its image.
    converge_app(runtime, &name, None, 2).await.expect("remove");
}

async fn operations_are_idempotent<R: ContainerRuntime>(fixture: Fixture<R>) {
    let runtime = &fixture.runtime;
    let name = unique("contract-idem");
    let _cleanup = Cleanup(name.clone());
    let config = app(&name, &fixture.image_1, 1, 1);
    runtime.ensure_image(&fixture.image_1).await.expect("pull");
    let spec = ContainerSpec::for_app(&config, 0).expect("spec");
    runtime.create_container(&spec).await.expect("create");
    // Creating over a leftover of the same name replaces it.
    runtime.create_container(&spec).await.expect("create again");
    assert_eq!(containers(runtime, &name).await.len(), 1);
    runtime
        .start_container(&spec.name)
        .await
        .expect("start a running container");
    runtime
        .restart_container(&spec.name)
        .await
        .expect("restart");
    runtime.remove_container(&spec.name).await.expect("remove");
    runtime
        .remove_container(&spec.name)
        .await
        .expect("remove a missing container");
    assert!(
        runtime
            .inspect_container(&spec.name)
            .await
            .expect("inspect")
            .is_none()
    );
}

/// Issue 12, defect 2. Containers the previous release created (no incarnation or config
/// hash label) are kept at their revision — an agent upgrade restarts nothing — but once
/// the app is deleted and re-created (a new incarnation, revision 1 again), every one of
/// them is replaced: old and new incarnations never run side by side.
async fn other_incarnations_are_replaced_and_previous_release_containers_kept<
    R: ContainerRuntime,
>(
    fixture: Fixture<R>,
) {
    let runtime = &fixture.runtime;
    let name = unique("contract-incarnation");
    let _cleanup = Cleanup(name.clone());
    let old = app(&name, &fixture.image_1, 1, 2);
    runtime.ensure_image(&fixture.image_1).await.expect("pull");
    for index in 0..2 {
        let mut spec = ContainerSpec::for_app(&old, index).expect("spec");
        spec.labels.remove(LABEL_INCARNATION);
        spec.labels.remove(LABEL_CONFIG_HASH);
        runtime.create_container(&spec).await.expect("create");
    }
    let before = containers(runtime, &name).await;
    assert!(
        before
            .iter()
            .all(|c| c.incarnation.is_none() && c.config_hash.is_none())
    );

    // Upgraded agent, same desired config: nothing to do.
    converge_app(runtime, &name, Some(&old), 1)
        .await
        .expect("already converged");
    assert_eq!(containers(runtime, &name).await, before);

    // Deleted and re-created under the same name: incarnation 1, revision 1 again.
    let mut recreated = app(&name, &fixture.image_2, 1, 2);
    recreated.incarnation = 1;
    converge_app(runtime, &name, Some(&recreated), 3)
        .await
        .expect("converge");
    let after = containers(runtime, &name).await;
    assert_eq!(after.len(), 2);
    for container in &after {
        assert_eq!(container.image, fixture.image_2, "{container:?}");
        assert_eq!(container.app_id, Some(1));
        assert_eq!(container.incarnation, Some(1));
        assert_eq!(
            container.config_hash.as_deref(),
            Some(config_hash(&recreated).as_str())
        );
    }
    converge_app(runtime, &name, None, 2).await.expect("remove");
}

/// The runs of cron job `job`, by name.
async fn runs<R: ContainerRuntime>(runtime: &R, job: &Name) -> Vec<String> {
    let mut runs: Vec<String> = runtime
        .list_cron_containers()
        .await
        .expect("list runs")
        .into_iter()
        .filter(|run| &run.job == job)
        .map(|run| run.name)
        .collect();
    runs.sort();
    runs
}

/// Issue 14. A cron run is created with its labels and listed as a run, never as an app
/// container: app reconcile of the same name does not remove it.
async fn cron_runs_are_listed_apart_from_apps<R: ContainerRuntime>(fixture: Fixture<R>) {
    let runtime = &fixture.runtime;
    let name = unique("contract-cron");
    let _cleanup = CronCleanup(name.clone());
    let mut job = CronJob::new(name.clone(), "* * * * *", fixture.image_1.clone());
    job.cron_job_id = 4;
    job.incarnation = 2;
    runtime.ensure_image(&fixture.image_1).await.expect("pull");
    let spec = ContainerSpec::for_cron_run(&job, 1_796_119_260).expect("spec");
    runtime.create_container(&spec).await.expect("create");
    let listed: Vec<_> = runtime
        .list_cron_containers()
        .await
        .expect("list runs")
        .into_iter()
        .filter(|run| run.job == name)
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let run = &listed[0];
    assert_eq!(run.name, format!("{name}-1796119260"));
    assert_eq!((run.cron_job_id, run.incarnation), (Some(4), Some(2)));
    assert_eq!(run.fired_at(), Some(1_796_119_260));
    assert!(!run.is_finished(), "{run:?}");
    assert!(containers(runtime, &name).await.is_empty());
    assert!(
        runtime
            .list_containers()
            .await
            .expect("list")
            .iter()
            .all(|container| container.name != run.name)
    );
    // An app of the same name that is not wanted: its pass finds nothing to remove.
    converge_app(runtime, &name, None, 2)
        .await
        .expect("converge");
    assert_eq!(runs(runtime, &name).await, vec![run.name.clone()]);
    runtime.remove_container(&run.name).await.expect("remove");
    assert!(runs(runtime, &name).await.is_empty());
}

/// Issue 14, the runner against the runtime: a fire starts one run, a run still going
/// skips the next fire, finished runs are kept to the newest three, and a job that goes
/// takes its runs with it. The clock is the test's (fires a minute apart, no waiting).
async fn cron_runner_starts_skips_and_cleans_up<R: ContainerRuntime>(fixture: Fixture<R>) {
    const T0: i64 = 1_796_119_200;
    let runtime = &fixture.runtime;
    let name = unique("contract-cronrun");
    let _cleanup = CronCleanup(name.clone());
    let mut job = CronJob::new(name.clone(), "* * * * *", fixture.image_1.clone());
    job.env_vars.insert("NEBULA_TEST".into(), "cron".into());
    let mut runner = CronRunner::default();
    runner.set_jobs(&BTreeMap::from([(name.clone(), job.clone())]), T0);
    let run_name = |minute: i64| format!("{name}-{}", T0 + minute * 60);
    for minute in [1, 3, 4, 5, 6] {
        let starts = runner.tick(runtime, T0 + minute * 60).await;
        assert_eq!(starts.len(), 1, "minute {minute}");
        let started = starts
            .into_iter()
            .next()
            .expect("one start")
            .start(runtime)
            .await
            .expect("start");
        assert_eq!(started, run_name(minute));
        if minute == 1 {
            // Still going at the next fire (minute 2), as the engine says: skipped.
            assert!(runner.tick(runtime, T0 + 2 * 60).await.is_empty());
            assert_eq!(runs(runtime, &name).await, vec![run_name(1)]);
        }
        (fixture.end_run)(runtime, &started);
    }
    // Run 1 went when run 6 started; once 6 finished too, the newest three are kept.
    assert_eq!(
        runs(runtime, &name).await,
        vec![run_name(3), run_name(4), run_name(5), run_name(6)]
    );
    nebula_agent::cron_runner::remove_old_runs(runtime, &name)
        .await
        .expect("cleanup");
    assert_eq!(
        runs(runtime, &name).await,
        vec![run_name(4), run_name(5), run_name(6)]
    );
    // A fire whose run exists already (the clock stepped back over a minute it fired in)
    // is not run again: its finished run, exit code and logs stay.
    let mut again = CronRunner::default();
    again.set_jobs(
        &BTreeMap::from([(name.clone(), job.clone())]),
        T0 + 6 * 60 - 1,
    );
    assert!(again.tick(runtime, T0 + 6 * 60).await.is_empty());
    assert_eq!(
        runs(runtime, &name).await,
        vec![run_name(4), run_name(5), run_name(6)]
    );
    // The job is stopped: so are its runs, gone. (Not a sweep of jobs no longer desired
    // here: on a shared engine that would take every other test's and agent's runs.)
    job.running = false;
    runner.set_jobs(&BTreeMap::from([(name.clone(), job)]), T0 + 7 * 60);
    assert!(runner.tick(runtime, T0 + 7 * 60).await.is_empty());
    assert!(runs(runtime, &name).await.is_empty());
}

macro_rules! contract_suite {
    ($($test:ident),* $(,)?) => {
        mod simulated_runtime {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::simulated()).await;
                }
            )*
        }
        mod docker_runtime {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::docker().await).await;
                }
            )*
        }
    };
}

contract_suite!(
    creates_updates_and_stops,
    rolling_restart_waits_for_health,
    unavailable_image_is_an_error,
    local_image_runs_when_registry_is_unreachable,
    operations_are_idempotent,
    other_incarnations_are_replaced_and_previous_release_containers_kept,
    cron_runs_are_listed_apart_from_apps,
    cron_runner_starts_skips_and_cleans_up,
);

#[tokio::test]
async fn simulated_prune_removes_unused_images_only() {
    let fixture = simulated();
    let runtime = &fixture.runtime;
    let name = unique("contract-prune");
    let config = app(&name, &fixture.image_1, 1, 1);
    converge_app(runtime, &name, Some(&config), 3)
        .await
        .expect("converge");
    runtime.ensure_image(&fixture.image_2).await.expect("pull");
    runtime.prune_images().await.expect("prune");
    runtime.set_pullable([]);
    // The used image is still there (local fallback works), the unused one is gone.
    assert!(matches!(
        runtime.ensure_image(&fixture.image_1).await,
        Ok(ImageOutcome::LocalFallback { .. })
    ));
    assert!(runtime.ensure_image(&fixture.image_2).await.is_err());
}

async fn restarts_unhealthy<R: ContainerRuntime>(
    runtime: &R,
    name: &Name,
    image: &str,
    make_unhealthy: impl Fn(&str),
) {
    use nebula_agent::reconcile::{Action, Health, plan_app};
    let config = app(name, image, 1, 1);
    converge_app(runtime, name, Some(&config), 3)
        .await
        .expect("converge");
    let container = format!("{name}-1");
    make_unhealthy(&container);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let observed = containers(runtime, name).await;
        if observed.first().and_then(|c| c.health) == Some(Health::Unhealthy) {
            let plan = plan_app(Some(&config), CAPACITY, &observed);
            assert_eq!(
                plan,
                vec![Action::Restart {
                    name: container.clone()
                }]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never unhealthy: {observed:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    converge_app(runtime, name, Some(&config), 3)
        .await
        .expect("restart");
    let restarted = runtime
        .inspect_container(&container)
        .await
        .expect("inspect")
        .expect("exists");
    assert!(restarted.is_running());
    assert_ne!(restarted.health, Some(Health::Unhealthy));
}

#[tokio::test]
async fn simulated_unhealthy_container_is_restarted() {
    let fixture = simulated();
    let name = unique("contract-unhealthy");
    let runtime = fixture.runtime.clone();
    restarts_unhealthy(&fixture.runtime, &name, &fixture.healthy, |container| {
        runtime.set_health(container, Some(nebula_agent::reconcile::Health::Unhealthy));
    })
    .await;
    assert!(
        fixture
            .runtime
            .operations()
            .iter()
            .any(|op| op.starts_with("restart"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_unhealthy_container_is_restarted() {
    let fixture = docker().await;
    let name = unique("contract-unhealthy");
    let _cleanup = Cleanup(name.clone());
    // This image's health check always fails: Docker marks it unhealthy after ~3 s.
    let image = format!("{}/nebula/test-unhealthy:1", registry());
    restarts_unhealthy(&fixture.runtime, &name, &image, |_| {}).await;
}

/// `docker inspect` of a container, as JSON.
fn docker_inspect(container: &str) -> String {
    let output = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .}}", container])
        .output()
        .expect("docker inspect");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_maps_every_app_field() {
    let fixture = docker().await;
    let runtime = &fixture.runtime;
    let name = unique("contract-fields");
    let _cleanup = Cleanup(name.clone());
    let volume = tempfile::tempdir().expect("tempdir");
    let mut config = app(&name, &fixture.image_1, 7, 1);
    config
        .env_vars
        .insert("GREETING".into(), "hello world".into());
    config.volumes = vec![format!("{}:/data:ro", volume.path().display())];
    config.devices = vec!["/dev/null:/dev/nebula-null:rw".into()];
    // `privileged: true` cannot start here (this engine runs without the capabilities to
    // grant them); the field's mapping is unit-tested in `runtime::docker`.
    config.privileged = false;
    converge_app(runtime, &name, Some(&config), 3)
        .await
        .expect("converge");
    let inspect = docker_inspect(&format!("{name}-1"));
    for expected in [
        "\"GREETING=hello world\"".to_string(),
        format!("\"{}:/data:ro\"", volume.path().display()),
        "\"PathOnHost\":\"/dev/null\",\"PathInContainer\":\"/dev/nebula-null\",\"CgroupPermissions\":\"rw\"".to_string(),
        "\"Privileged\":false".to_string(),
        "\"RestartPolicy\":{\"Name\":\"unless-stopped\"".to_string(),
        "\"NetworkMode\":\"nebula\"".to_string(),
        "\"orchestrator\":\"nebula\"".to_string(),
        format!("\"app_name\":\"{name}\""),
        "\"app_id\":\"7\"".to_string(),
    ] {
        assert!(inspect.contains(&expected), "missing {expected} in {inspect}");
    }
    // Connected to the extra network too.
    assert!(inspect.contains("\"bridge\":{"), "{inspect}");

    // `none` first: that network mode alone.
    let mut isolated = config.clone();
    isolated.app_id = 8;
    isolated.networks = vec!["none".into()];
    converge_app(runtime, &name, Some(&isolated), 3)
        .await
        .expect("converge");
    let inspect = docker_inspect(&format!("{name}-1"));
    assert!(inspect.contains("\"NetworkMode\":\"none\""), "{inspect}");

    // `[]`: the nebula network only.
    let mut nebula_only = isolated.clone();
    nebula_only.app_id = 9;
    nebula_only.networks = vec![];
    converge_app(runtime, &name, Some(&nebula_only), 3)
        .await
        .expect("converge");
    let inspect = docker_inspect(&format!("{name}-1"));
    assert!(inspect.contains("\"NetworkMode\":\"nebula\""), "{inspect}");
    assert!(!inspect.contains("\"bridge\":{"), "{inspect}");
    converge_app(runtime, &name, None, 2).await.expect("remove");
}

/// Issue 14: a cron run carries its job's fields, no restart policy, and the labels the
/// agent finds it by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_maps_every_cron_job_field() {
    let fixture = docker().await;
    let runtime = &fixture.runtime;
    let name = unique("contract-cronfields");
    let _cleanup = CronCleanup(name.clone());
    let volume = tempfile::tempdir().expect("tempdir");
    let mut job = CronJob::new(name.clone(), "0 3 * * *", fixture.image_1.clone());
    job.cron_job_id = 6;
    job.incarnation = 2;
    job.env_vars.insert("GREETING".into(), "hello cron".into());
    job.volumes = vec![format!("{}:/data:ro", volume.path().display())];
    job.devices = vec!["/dev/null:/dev/nebula-null:rw".into()];
    job.networks = vec!["nebula".into(), "bridge".into()];
    let spec = ContainerSpec::for_cron_run(&job, 1_796_119_200).expect("spec");
    runtime.create_container(&spec).await.expect("create");
    let inspect = docker_inspect(&format!("{name}-1796119200"));
    for expected in [
        "\"GREETING=hello cron\"".to_string(),
        format!("\"{}:/data:ro\"", volume.path().display()),
        "\"PathOnHost\":\"/dev/null\",\"PathInContainer\":\"/dev/nebula-null\",\"CgroupPermissions\":\"rw\"".to_string(),
        "\"Privileged\":false".to_string(),
        "\"RestartPolicy\":{\"Name\":\"no\"".to_string(),
        "\"NetworkMode\":\"nebula\"".to_string(),
        "\"orchestrator\":\"nebula\"".to_string(),
        format!("\"cron_job_name\":\"{name}\""),
        "\"cron_job_id\":\"6\"".to_string(),
        "\"incarnation\":\"2\"".to_string(),
    ] {
        assert!(inspect.contains(&expected), "missing {expected} in {inspect}");
    }
    assert!(inspect.contains("\"bridge\":{"), "{inspect}");
    assert!(!inspect.contains("\"app_name\""), "{inspect}");
    runtime.remove_container(&spec.name).await.expect("remove");
}
