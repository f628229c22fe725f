//! What every end-to-end scenario shares: its own vhost, scratch directory and control
//! plane, convergence checks against the Docker engine, and the timing report.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of this support module"
)]

pub mod amqp;

use nebula_tests::docker::{AppContainer, app_containers, remove_app_containers};
use nebula_tests::system::{ControlPlane, StoreKind, scratch_dir};
use nebula_tests::vhost::Vhost;
use nebula_tests::{unique_name, wait_for};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long any convergence may take before a scenario fails. Generous: CI has two cores
/// shared by the broker, the engine, the control planes, the agents and the compiler.
pub const DEADLINE: Duration = Duration::from_secs(90);

pub struct Scenario {
    pub name: String,
    pub vhost: Vhost,
    pub directory: PathBuf,
    pub docker: bollard::Docker,
    /// Apps whose containers are removed when the scenario ends.
    apps: std::sync::Mutex<Vec<String>>,
    /// MongoDB(-wire) databases dropped when the scenario ends.
    databases: std::sync::Mutex<Vec<String>>,
}

impl Scenario {
    pub fn new(name: &str) -> Self {
        let vhost = Vhost::create(&unique_name(&format!("e2e-{name}"))).expect("create vhost");
        Self {
            name: name.to_string(),
            vhost,
            directory: scratch_dir(name),
            docker: nebula_tests::services::docker().expect("docker"),
            apps: std::sync::Mutex::new(Vec::new()),
            databases: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A unique app name, cleaned up at the end of the scenario.
    pub fn app_name(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        self.apps.lock().expect("apps lock").push(name.clone());
        name
    }

    /// Control planes called `names`, sharing one MongoDB(-wire) database of this scenario
    /// (dropped when it ends) and its vhost; returns them and the database's name.
    pub async fn control_planes_on_mongo(&self, names: &[&str]) -> (Vec<ControlPlane>, String) {
        let database = unique_name("nebula_e2e").replace('-', "_");
        self.databases
            .lock()
            .expect("databases lock")
            .push(database.clone());
        let store = StoreKind::Mongo(database.clone());
        let mut control_planes = Vec::new();
        for name in names {
            control_planes.push(
                ControlPlane::start(name, &store, &self.vhost.amqp_url(), &self.directory)
                    .await
                    .expect("control plane starts"),
            );
        }
        (control_planes, database)
    }

    pub async fn control_plane(&self, name: &str) -> ControlPlane {
        let store = StoreKind::Embedded(self.directory.join(format!("store-{name}")));
        ControlPlane::start(name, &store, &self.vhost.amqp_url(), &self.directory)
            .await
            .expect("control plane starts")
    }

    /// Waits until `app` has exactly `count` running containers `<app>-1..=count`, all at
    /// revision `app_id` (for `count == 0`: no container at all), and returns them.
    pub async fn converged(&self, app: &str, count: usize, app_id: u64) -> Vec<AppContainer> {
        let docker = self.docker.clone();
        let what = format!("{app}: {count} running containers at app_id {app_id}");
        let result = wait_for(&what, DEADLINE, || {
            let docker = docker.clone();
            async move {
                let containers = app_containers(&docker, app).await.ok()?;
                is_converged(app, &containers, count, app_id).then_some(containers)
            }
        })
        .await;
        match result {
            Ok(containers) => containers,
            Err(error) => {
                let seen = app_containers(&self.docker, app).await.unwrap_or_default();
                let seen: Vec<_> = seen
                    .iter()
                    .map(|c| (&c.name, c.running, c.app_id))
                    .collect();
                panic!(
                    "{error}; on the engine: {seen:?}; logs in {}",
                    self.directory.display()
                )
            }
        }
    }

    /// Records and prints how long a step took to converge.
    pub fn report(&self, step: &str, since: Instant) {
        let line = format!(
            "{:<28} {:<44} {:>8.2} s",
            self.name,
            step,
            since.elapsed().as_secs_f64()
        );
        // On stderr: the test harness shows it with --nocapture; the file keeps it either way.
        eprintln!("convergence: {line}");
        let path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/e2e-convergence.txt"
        ));
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let apps = std::mem::take(&mut *self.apps.lock().expect("apps lock"));
        let databases = std::mem::take(&mut *self.databases.lock().expect("databases lock"));
        let docker = self.docker.clone();
        // Drop runs inside the test's runtime; clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                for app in apps {
                    let _ = remove_app_containers(&docker, &app).await;
                }
                if !databases.is_empty()
                    && let Ok(client) =
                        mongodb::Client::with_uri_str(nebula_tests::services::mongo_url()).await
                {
                    for database in databases {
                        let _ = client.database(&database).drop().await;
                    }
                }
            });
        })
        .join();
    }
}

/// Exactly `count` running containers named `<app>-1..=count`, all at `app_id`.
pub fn is_converged(app: &str, containers: &[AppContainer], count: usize, app_id: u64) -> bool {
    if containers.len() != count {
        return false;
    }
    let mut names: Vec<String> = containers
        .iter()
        .map(|container| container.name.clone())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (1..=count).map(|n| format!("{app}-{n}")).collect();
    expected.sort();
    names == expected
        && containers
            .iter()
            .all(|container| container.running && container.app_id == Some(app_id))
}

/// Container ids and start times: equal before and after means nothing was restarted.
pub fn identities(containers: &[AppContainer]) -> Vec<(String, String, String)> {
    containers
        .iter()
        .map(|container| {
            (
                container.name.clone(),
                container.id.clone(),
                container.started_at.clone(),
            )
        })
        .collect()
}

/// The app_id a REST reply carries.
pub fn app_id(document: &serde_json::Value) -> u64 {
    document["app_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no app_id in {document}"))
}

/// Fetches `http://127.0.0.1:<port>/` from a test container's httpd.
pub async fn http_body(port: u16) -> Option<String> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    response.text().await.ok()
}

/// The protocol's AppConfig for a v2 app document, as a control plane would send it.
pub fn app_config_from_document(document: &serde_json::Value) -> nebula_protocol::AppConfig {
    use nebula_protocol::{AppConfig, ContainersPer, Name, PortMapping};
    let strings = |key: &str| -> Vec<String> {
        document[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let name = Name::new(document["app_name"].as_str().expect("app_name")).expect("valid app name");
    let mut app = AppConfig::new(
        name,
        document["docker_image"].as_str().expect("docker_image"),
    );
    app.app_id = app_id(document);
    app.starting_ports = document["starting_ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|port| match port {
                    serde_json::Value::Number(number) => {
                        PortMapping::Same(number.as_u64().expect("port") as u16)
                    }
                    serde_json::Value::Object(map) => {
                        let (host, container) = map.iter().next().expect("one entry");
                        let host = host.parse().expect("port");
                        match container.as_str().and_then(|text| text.split_once('/')) {
                            Some((port, protocol)) => PortMapping::MappedWithProtocol {
                                host,
                                container: port.parse().expect("port"),
                                protocol: nebula_protocol::PortProtocol::from_name(protocol)
                                    .expect("protocol"),
                            },
                            None => PortMapping::Mapped {
                                host,
                                container: container.as_str().map_or_else(
                                    || container.as_u64().expect("port") as u16,
                                    |text| text.parse().expect("port"),
                                ),
                            },
                        }
                    }
                    other => panic!("unexpected port {other}"),
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some((key, value)) = document["containers_per"]
        .as_object()
        .and_then(|map| map.iter().next())
    {
        app.containers_per =
            ContainersPer::from_key(key, value.as_u64().expect("count") as u32).expect("known key");
    }
    // A dict, or the list of `K=V` strings a client may have written instead.
    app.env_vars = match &document["env_vars"] {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|item| item.as_str()?.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        other => other
            .as_object()
            .map(|map| {
                map.iter()
                    .map(|(key, value)| {
                        (key.clone(), value.as_str().unwrap_or_default().to_string())
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    app.running = document["running"].as_bool().unwrap_or(true);
    app.networks = strings("networks");
    app.volumes = strings("volumes");
    app.devices = strings("devices");
    app.privileged = document["privileged"].as_bool().unwrap_or(false);
    app.rolling_restart = document["rolling_restart"].as_bool().unwrap_or(false);
    if let Some(seconds) = document["stop_timeout_secs"].as_u64() {
        app.stop_timeout_secs = u32::try_from(seconds).expect("stop_timeout_secs");
    }
    if let Some(policy) = document["pull_policy"].as_str() {
        app.pull_policy = nebula_protocol::PullPolicy::from_name(policy).expect("pull_policy");
    }
    app
}

/// An agent environment of owned values, as `Agent::start_with` takes it.
pub fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect()
}

/// The address of the test broker (for a proxy in front of it).
pub fn broker_address() -> std::net::SocketAddr {
    let url = nebula_tests::services::amqp_url();
    let authority = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5672");
    std::net::ToSocketAddrs::to_socket_addrs(authority)
        .expect("broker address")
        .next()
        .expect("one address")
}
