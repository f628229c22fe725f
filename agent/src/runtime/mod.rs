//! The container runtime: a thin adapter the executor drives. [`docker::DockerRuntime`]
//! talks to the Docker engine; [`simulated::SimulatedRuntime`] keeps containers in memory for
//! the fleet simulator and for fast tests. One contract suite (`tests/runtime_contract.rs`)
//! runs against both.

pub mod cron;
pub mod docker;
pub mod simulated;

pub use cron::ObservedCronContainer;

use crate::error::DockerError;
use crate::reconcile::ObservedContainer;
use nebula_protocol::model::NEBULA_NETWORK;
use nebula_protocol::placement::{
    self, DeviceCapacity, LABEL_APP_ID, LABEL_APP_NAME, LABEL_CONFIG_HASH, LABEL_INCARNATION,
    LABEL_ORCHESTRATOR, ORCHESTRATOR_VALUE, PublishedPort,
};
use nebula_protocol::{AppConfig, Name};
use std::collections::BTreeMap;
use std::future::Future;

/// Everything needed to create one container of an app (or one run of a cron job,
/// [`ContainerSpec::for_cron_run`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    /// The app (or cron job) the container belongs to, for errors.
    pub app_name: Name,
    /// `docker_image` in canonical form (tag defaulted to `latest`).
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub env: Vec<String>,
    /// Host port, container port and protocol (TCP or UDP).
    pub ports: Vec<PublishedPort>,
    pub volumes: Vec<String>,
    pub devices: Vec<String>,
    pub privileged: bool,
    pub network: NetworkPlan,
    /// Seconds the container gets to stop after SIGTERM. Set on the container itself, so
    /// that whoever stops it later (this agent removing an orphan, `docker stop` by hand)
    /// waits as long as its app asked.
    pub stop_timeout_secs: u32,
    pub restart: RestartPolicy,
}

/// What the engine does when a container's process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Apps: restarted until stopped on purpose.
    UnlessStopped,
    /// Cron runs: a run that ended stays ended (its exit code and logs are the result).
    No,
}

/// Where a container's network interfaces go (API.md `networks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPlan {
    /// `host` or `none` listed first: that network mode alone.
    Mode(String),
    /// Created on the `nebula` bridge (made if missing), then connected to `extra`.
    Nebula { extra: Vec<String> },
}

impl NetworkPlan {
    pub fn from_networks(networks: &[String]) -> Self {
        match networks.first().map(String::as_str) {
            Some(mode @ ("host" | "none")) => Self::Mode(mode.to_string()),
            _ => Self::Nebula {
                extra: networks
                    .iter()
                    .filter(|network| network.as_str() != NEBULA_NETWORK)
                    .cloned()
                    .collect(),
            },
        }
    }
}

impl ContainerSpec {
    /// The spec of container `index` of `app`. Labels say what it was created from —
    /// revision, incarnation and config hash — so that a later plan can tell a current
    /// container from one of another revision, another life of the app, or other settings.
    pub fn for_app(app: &AppConfig, index: u32) -> Result<Self, DockerError> {
        let invalid = |reason: String| DockerError::InvalidSpec {
            app: app.app_name.to_string(),
            reason,
        };
        let image = app.image().map_err(|error| invalid(error.to_string()))?;
        let ports = placement::published_ports(&app.starting_ports, index)
            .map_err(|error| invalid(error.to_string()))?;
        let labels = BTreeMap::from([
            (
                LABEL_ORCHESTRATOR.to_string(),
                ORCHESTRATOR_VALUE.to_string(),
            ),
            (LABEL_APP_NAME.to_string(), app.app_name.to_string()),
            (LABEL_APP_ID.to_string(), app.app_id.to_string()),
            (LABEL_INCARNATION.to_string(), app.incarnation.to_string()),
            (LABEL_CONFIG_HASH.to_string(), placement::config_hash(app)),
        ]);
        Ok(Self {
            name: placement::container_name(&app.app_name, index),
            app_name: app.app_name.clone(),
            image: image.canonical(),
            labels,
            env: app
                .env_vars
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect(),
            ports,
            volumes: app.volumes.clone(),
            devices: app.devices.clone(),
            privileged: app.privileged,
            network: NetworkPlan::from_networks(&app.networks),
            stop_timeout_secs: app.stop_timeout_secs,
            restart: RestartPolicy::UnlessStopped,
        })
    }
}

/// How an image was made available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOutcome {
    Pulled,
    /// The pull failed but a local copy exists: the device keeps working offline, and the
    /// failure is reported.
    LocalFallback {
        pull_error: String,
    },
}

/// What the executor needs from a container runtime. Futures are `Send` so that a
/// simulator can run thousands of agents on a multi-threaded runtime.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// CPU cores and memory, for `containers_per`.
    fn capacity(&self) -> DeviceCapacity;

    /// Whether reports carry this host's real memory, disk and CPU usage. A simulated
    /// device reports its configured capacity instead: thousands of simulated agents in one
    /// process would otherwise all report the simulator's host.
    fn reports_host_resources(&self) -> bool {
        true
    }

    /// Every Nebula-managed app container (label `orchestrator=nebula` and an `app_name`),
    /// any state. Cron runs are not among them: app reconcile never sees (nor removes) them.
    fn list_containers(
        &self,
    ) -> impl Future<Output = Result<Vec<ObservedContainer>, DockerError>> + Send;

    /// Every Nebula-managed cron run container (label `orchestrator=nebula` and a
    /// `cron_job_name`), any state.
    fn list_cron_containers(
        &self,
    ) -> impl Future<Output = Result<Vec<ObservedCronContainer>, DockerError>> + Send;

    /// One container by name, `None` when it does not exist.
    fn inspect_container(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ObservedContainer>, DockerError>> + Send;

    /// Whether `image` (canonical reference) is on the device, without pulling it.
    fn image_present(&self, image: &str) -> impl Future<Output = Result<bool, DockerError>> + Send;

    /// Pulls `image` (canonical reference); falls back to a local copy.
    fn ensure_image(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<ImageOutcome, DockerError>> + Send;

    /// Creates and starts a container (an app's, or a cron run). A leftover container of the same name is replaced
    /// when it is one of ours (our labels, this device); any other container of that name is
    /// left alone and the create fails with [`DockerError::NameTaken`].
    fn create_container(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Stops (waiting the container's own stop timeout) and removes a container; a missing
    /// one is not an error.
    fn remove_container(&self, name: &str) -> impl Future<Output = Result<(), DockerError>> + Send;

    fn start_container(&self, name: &str) -> impl Future<Output = Result<(), DockerError>> + Send;

    fn restart_container(&self, name: &str)
    -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Removes every image no container uses (not only dangling ones).
    fn prune_images(&self) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// How often the runtime restarted a container (its restart policy after a crash), for
    /// reports; `None` when unknown. Best effort: a failure is no error.
    fn restart_count(&self, name: &str) -> impl Future<Output = Option<u64>> + Send {
        let _ = name;
        async { None }
    }

    /// The engine's version, for reports; `None` when unknown or unreachable.
    fn engine_version(&self) -> impl Future<Output = Option<String>> + Send {
        async { None }
    }
}

/// Reads the labels this agent sets back into an [`ObservedContainer`]; `None` for a
/// container without an `app_name` label (not one of ours). Both runtimes use it, so they
/// cannot disagree on what a label means.
pub fn observe_labels(
    name: String,
    labels: &std::collections::HashMap<String, String>,
    image: String,
    state: String,
    health: Option<crate::reconcile::Health>,
) -> Option<ObservedContainer> {
    let number = |label: &str| labels.get(label).and_then(|value| value.parse().ok());
    Some(ObservedContainer {
        name,
        app_name: labels.get(LABEL_APP_NAME)?.parse().ok()?,
        app_id: number(LABEL_APP_ID),
        incarnation: number(LABEL_INCARNATION),
        config_hash: labels.get(LABEL_CONFIG_HASH).cloned(),
        image,
        state,
        health,
    })
}

/// The observed containers of one app.
pub fn containers_of<'a>(
    containers: &'a [ObservedContainer],
    app: &'a Name,
) -> impl Iterator<Item = &'a ObservedContainer> + 'a {
    containers
        .iter()
        .filter(move |container| &container.app_name == app)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nebula_protocol::{PortMapping, PortProtocol};

    #[test]
    fn spec_carries_every_app_field() {
        let mut app = AppConfig::new(
            Name::new("web").expect("name"),
            "127.0.0.1:5000/nebula/test",
        );
        app.app_id = 3;
        app.incarnation = 2;
        app.starting_ports = vec![
            PortMapping::Same(8000),
            PortMapping::Mapped {
                host: 9000,
                container: 80,
            },
        ];
        app.env_vars.insert("A".into(), "b=c".into());
        app.volumes = vec!["/data:/data:ro".into()];
        app.devices = vec!["/dev/null:/dev/x".into()];
        app.privileged = true;
        let spec = ContainerSpec::for_app(&app, 2).expect("spec");
        assert_eq!(spec.name, "web-3");
        assert_eq!(spec.image, "127.0.0.1:5000/nebula/test:latest");
        let ports: Vec<_> = spec
            .ports
            .iter()
            .map(|port| (port.host, port.container, port.protocol))
            .collect();
        assert_eq!(
            ports,
            vec![
                (8002, 8000, PortProtocol::Tcp),
                (9002, 80, PortProtocol::Tcp)
            ]
        );
        assert_eq!(spec.stop_timeout_secs, 10);
        assert_eq!(spec.env, vec!["A=b=c"]);
        assert_eq!(spec.labels["orchestrator"], "nebula");
        assert_eq!(spec.labels["app_name"], "web");
        assert_eq!(spec.labels["app_id"], "3");
        assert_eq!(spec.labels["incarnation"], "2");
        assert_eq!(spec.labels["config_hash"], placement::config_hash(&app));
        assert_eq!(spec.labels["config_hash"].len(), 16);
        assert_eq!(spec.volumes, app.volumes);
        assert_eq!(spec.devices, app.devices);
        assert!(spec.privileged);
        assert_eq!(
            spec.network,
            NetworkPlan::Nebula {
                extra: vec!["bridge".into()]
            }
        );
    }

    #[test]
    fn labels_read_back_into_what_was_created() {
        let mut app = AppConfig::new(Name::new("web").expect("name"), "nginx");
        app.app_id = 7;
        app.incarnation = 3;
        let spec = ContainerSpec::for_app(&app, 0).expect("spec");
        let labels = spec.labels.clone().into_iter().collect();
        let observed = observe_labels(
            spec.name.clone(),
            &labels,
            spec.image.clone(),
            "running".into(),
            None,
        )
        .expect("ours");
        assert_eq!(observed.app_name, app.app_name);
        assert_eq!(observed.app_id, Some(7));
        assert_eq!(observed.incarnation, Some(3));
        assert_eq!(
            observed.config_hash.as_deref(),
            Some(placement::config_hash(&app).as_str())
        );
        assert!(crate::reconcile::is_current(
            &observed,
            &app,
            &placement::config_hash(&app)
        ));

        // A container of the previous release: no incarnation, no hash.
        let old: std::collections::HashMap<String, String> = [
            ("app_name".to_string(), "web".to_string()),
            ("app_id".to_string(), "7".to_string()),
        ]
        .into();
        let observed = observe_labels("web-1".into(), &old, "nginx".into(), "running".into(), None)
            .expect("ours");
        assert_eq!((observed.incarnation, observed.config_hash), (None, None));
        // Not one of ours.
        assert!(
            observe_labels(
                "x".into(),
                &std::collections::HashMap::new(),
                "nginx".into(),
                "running".into(),
                None
            )
            .is_none()
        );
    }

    #[test]
    fn network_plans() {
        let plan = |networks: &[&str]| {
            NetworkPlan::from_networks(&networks.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(plan(&[]), NetworkPlan::Nebula { extra: vec![] });
        assert_eq!(plan(&["host"]), NetworkPlan::Mode("host".into()));
        assert_eq!(plan(&["none", "x"]), NetworkPlan::Mode("none".into()));
        assert_eq!(
            plan(&["nebula", "a", "b"]),
            NetworkPlan::Nebula {
                extra: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            plan(&["a", "host"]),
            NetworkPlan::Nebula {
                extra: vec!["a".into(), "host".into()]
            }
        );
    }
}
