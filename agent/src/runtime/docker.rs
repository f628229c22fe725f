//! The Docker engine adapter (bollard over the unix socket).
//!
//! Every operation is idempotent where Docker allows it (removing a missing container,
//! creating an existing network), because the executor retries a failed plan from scratch.

use super::{
    ContainerRuntime, ContainerSpec, ImageOutcome, NetworkPlan, ObservedCronContainer,
    RestartPolicy,
};
use crate::config::{ContainerLogs, RegistryAuth};
use crate::error::DockerError;
use crate::reconcile::{Health, ObservedContainer};
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryHealthStatusEnum, DeviceMapping,
    HealthStatusEnum, HostConfig, HostConfigLogConfig, NetworkConnectRequest, NetworkCreateRequest,
    PortBinding, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, PruneImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptions,
};
use futures_util::StreamExt;
use nebula_protocol::ImageRef;
use nebula_protocol::model::{MAX_STOP_TIMEOUT_SECS, NEBULA_NETWORK};
use nebula_protocol::placement::{
    DeviceCapacity, LABEL_APP_NAME, LABEL_CRON_JOB_NAME, LABEL_DEVICE_ID, LABEL_ORCHESTRATOR,
    ORCHESTRATOR_VALUE, PublishedPort,
};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Serialises network creation among all Docker runtimes of this process (tests run many).
fn network_lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// How long a pull may go without a progress event before it is given up. Docker sends one
/// at least every second or so while a layer downloads; a pull silent this long is stuck (a
/// dead link the engine has not noticed), and holding the app's worker there would keep
/// every newer change of the app from being applied.
const PULL_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The Docker engine.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    registry: Option<RegistryAuth>,
    capacity: DeviceCapacity,
    /// The device whose containers this runtime creates and sees; `None` sees every Nebula
    /// container on the engine. Labelling by device keeps an agent from adopting (and
    /// removing as orphans) containers another agent on the same engine manages.
    owner: Option<String>,
    /// Set once the API version was negotiated down to the engine's (balena and older
    /// Docker engines speak older API versions than bollard's default).
    negotiated: Arc<tokio::sync::OnceCell<()>>,
    logs: ContainerLogs,
    pull_stall_timeout: Duration,
    /// The engine's default log driver, asked once: rotation options are set only where it
    /// is `json-file` (balenaOS, for one, logs to journald, kept in memory).
    default_log_driver: Arc<tokio::sync::OnceCell<String>>,
}

/// How long a stop or restart may take before the agent gives up waiting for the engine's
/// answer: the engine answers only once the container's stop timeout ran out, which may be
/// up to [`MAX_STOP_TIMEOUT_SECS`] (other calls keep bollard's 2 minutes).
fn stop_request_timeout() -> Duration {
    Duration::from_secs(u64::from(MAX_STOP_TIMEOUT_SECS) + 60)
}

impl DockerRuntime {
    /// Connects to `docker_host` (`unix://` path). The connection is lazy: an engine that is
    /// down makes the first operation fail (and be retried), not the agent's start.
    pub fn connect(
        docker_host: &str,
        registry: Option<RegistryAuth>,
        capacity: DeviceCapacity,
    ) -> Result<Self, DockerError> {
        let docker = Docker::connect_with_host(docker_host)
            .map_err(|error| DockerError::Unreachable(error.to_string()))?;
        Ok(Self {
            docker,
            registry,
            capacity,
            owner: None,
            negotiated: Arc::new(tokio::sync::OnceCell::new()),
            logs: ContainerLogs::default(),
            pull_stall_timeout: PULL_STALL_TIMEOUT,
            default_log_driver: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// The rotation options for a created container, when the engine's default log driver
    /// is `json-file`; `None` leaves the engine's own logging alone.
    async fn log_config(&self) -> Result<Option<HostConfigLogConfig>, DockerError> {
        let driver = self
            .default_log_driver
            .get_or_try_init(|| async {
                let info = self
                    .docker
                    .info()
                    .await
                    .map_err(|error| operation_error("info", "engine", error))?;
                let driver = info.logging_driver.unwrap_or_default();
                if driver != "json-file" {
                    tracing::info!(driver, "the engine logs elsewhere than json-file; container log rotation is left to it");
                }
                Ok::<_, DockerError>(driver)
            })
            .await?;
        Ok((driver == "json-file").then(|| HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), self.logs.max_size.clone()),
                ("max-file".to_string(), self.logs.max_files.to_string()),
            ])),
        }))
    }

    /// Gives up a pull after `timeout` without a progress event (tests use seconds).
    pub fn with_pull_stall_timeout(mut self, timeout: Duration) -> Self {
        self.pull_stall_timeout = timeout;
        self
    }

    /// Whether the container called `name` is one this runtime manages: the orchestrator
    /// label and, when this runtime has an owner, that device's label. A container that is
    /// gone by now has nothing to protect.
    async fn is_ours(&self, name: &str) -> Result<bool, DockerError> {
        let response = match self.docker.inspect_container(name, None).await {
            Ok(response) => response,
            Err(error) if status_of(&error) == Some(404) => return Ok(true),
            Err(error) => return Err(operation_error("inspect container", name, error)),
        };
        let labels = response
            .config
            .and_then(|config| config.labels)
            .unwrap_or_default();
        let label = |key: &str| labels.get(key).map(String::as_str);
        Ok(label(LABEL_ORCHESTRATOR) == Some(ORCHESTRATOR_VALUE)
            && self
                .owner
                .as_deref()
                .is_none_or(|owner| label(LABEL_DEVICE_ID) == Some(owner)))
    }

    /// Sets how the logs of created containers are rotated.
    pub fn with_container_logs(mut self, logs: ContainerLogs) -> Self {
        self.logs = logs;
        self
    }

    /// Labels created containers with `device` and only sees containers with that label.
    pub fn owned_by(mut self, device: &str) -> Self {
        self.owner = Some(device.to_string());
        self
    }

    /// Negotiates the API version on first use; an engine that is down is asked again on
    /// the next operation. Clones share the client's version, so once is enough.
    async fn negotiate(&self) -> Result<(), DockerError> {
        self.negotiated
            .get_or_try_init(|| async {
                let docker = self
                    .docker
                    .clone()
                    .negotiate_version()
                    .await
                    .map_err(|error| {
                        DockerError::Unreachable(format!(
                            "cannot negotiate the API version: {error}"
                        ))
                    })?;
                let version = docker.client_version();
                tracing::info!(
                    api_version = %format!("{}.{}", version.major_version, version.minor_version),
                    "connected to the Docker engine"
                );
                Ok(())
            })
            .await
            .map(|_| ())
    }

    fn credentials_for(&self, image: &ImageRef) -> Option<DockerCredentials> {
        let registry = self.registry.as_ref()?;
        (image.registry_or_default() == registry.host).then(|| DockerCredentials {
            username: Some(registry.user.clone()),
            password: Some(registry.password.clone()),
            serveraddress: Some(registry.host.clone()),
            ..Default::default()
        })
    }

    /// Ensures exactly one network called `name` exists. The engine does not stop two
    /// concurrent creates of one name (and then refuses to use the ambiguous name), so
    /// creation is serialised in this process and duplicates are cleaned up.
    async fn ensure_network(&self, name: &str) -> Result<(), DockerError> {
        let _serialised = network_lock().lock().await;
        let filters = HashMap::from([("name", vec![name])]);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let mut networks: Vec<_> = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|error| operation_error("list networks", name, error))?
            .into_iter()
            // The name filter matches substrings.
            .filter(|network| network.name.as_deref() == Some(name))
            .collect();
        if networks.is_empty() {
            let request = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                ..Default::default()
            };
            return match self.docker.create_network(request).await {
                Ok(_) => {
                    tracing::info!(network = name, "created network");
                    Ok(())
                }
                Err(error) if status_of(&error) == Some(409) => Ok(()),
                Err(error) => Err(operation_error("create network", name, error)),
            };
        }
        // Keep the oldest; a duplicate still in use cannot be removed and stays ambiguous,
        // so the create using it fails and is retried.
        networks.sort_by(|a, b| a.created.cmp(&b.created));
        for duplicate in networks.iter().skip(1) {
            if let Some(id) = &duplicate.id {
                match self.docker.remove_network(id).await {
                    Ok(()) => tracing::warn!(network = name, id, "removed a duplicate network"),
                    Err(error) => {
                        tracing::warn!(network = name, id, error = %error, "cannot remove a duplicate network")
                    }
                }
            }
        }
        Ok(())
    }

    /// Every container, any state, with this runtime's labels (orchestrator, owner) and a
    /// `kind` label (`app_name` or `cron_job_name`, whatever its value).
    async fn list_ours(&self, kind: &str) -> Result<Vec<ContainerSummary>, DockerError> {
        self.negotiate().await?;
        let mut labels = vec![
            format!("{LABEL_ORCHESTRATOR}={ORCHESTRATOR_VALUE}"),
            kind.to_string(),
        ];
        if let Some(owner) = &self.owner {
            labels.push(format!("{LABEL_DEVICE_ID}={owner}"));
        }
        let filters = HashMap::from([("label", labels)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|error| operation_error("list", "containers", error))
    }

    /// Adds the owner label to a create body.
    fn labelled(&self, mut body: ContainerCreateBody) -> ContainerCreateBody {
        if let Some(owner) = &self.owner {
            body.labels
                .get_or_insert_with(Default::default)
                .insert(LABEL_DEVICE_ID.to_string(), owner.clone());
        }
        body
    }

    fn create_body(
        spec: &ContainerSpec,
        log_config: Option<HostConfigLogConfig>,
    ) -> ContainerCreateBody {
        let container_port =
            |port: &PublishedPort| format!("{}/{}", port.container, port.protocol.as_str());
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
            .ports
            .iter()
            .map(|port| {
                (
                    container_port(port),
                    Some(vec![PortBinding {
                        host_ip: None,
                        host_port: Some(port.host.to_string()),
                    }]),
                )
            })
            .collect();
        let devices = spec
            .devices
            .iter()
            .map(|device| {
                let mut parts = device.splitn(3, ':');
                DeviceMapping {
                    path_on_host: parts.next().map(str::to_string),
                    path_in_container: parts.next().map(str::to_string),
                    cgroup_permissions: Some(parts.next().unwrap_or("rwm").to_string()),
                }
            })
            .collect();
        let network_mode = match &spec.network {
            NetworkPlan::Mode(mode) => mode.clone(),
            NetworkPlan::Nebula { .. } => NEBULA_NETWORK.to_string(),
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            exposed_ports: Some(spec.ports.iter().map(container_port).collect()),
            stop_timeout: Some(i64::from(spec.stop_timeout_secs)),
            host_config: Some(HostConfig {
                binds: Some(spec.volumes.clone()),
                devices: Some(devices),
                privileged: Some(spec.privileged),
                port_bindings: Some(port_bindings),
                network_mode: Some(network_mode),
                restart_policy: Some(bollard::models::RestartPolicy {
                    name: Some(match spec.restart {
                        RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
                        RestartPolicy::No => RestartPolicyNameEnum::NO,
                    }),
                    maximum_retry_count: None,
                }),
                log_config,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn create_once(
        &self,
        spec: &ContainerSpec,
        log_config: Option<HostConfigLogConfig>,
    ) -> Result<(), BollardError> {
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        self.docker
            .create_container(
                Some(options),
                self.labelled(Self::create_body(spec, log_config)),
            )
            .await?;
        Ok(())
    }
}

/// The HTTP status of an engine error, if it is one.
fn status_of(error: &BollardError) -> Option<u16> {
    match error {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn operation_error(operation: &'static str, target: &str, error: BollardError) -> DockerError {
    match error {
        BollardError::DockerResponseServerError { message, .. } => DockerError::Operation {
            operation,
            target: target.to_string(),
            reason: message,
        },
        other => DockerError::Unreachable(format!("{operation} {target}: {other}")),
    }
}

/// Parses the health out of a `docker ps` status such as `Up 3 minutes (healthy)`, for
/// engines whose container list has no `Health` field.
fn health_from_status(status: &str) -> Option<Health> {
    if status.contains("(healthy)") {
        Some(Health::Healthy)
    } else if status.contains("(unhealthy)") {
        Some(Health::Unhealthy)
    } else if status.contains("(health: starting)") {
        Some(Health::Starting)
    } else {
        None
    }
}

fn observed(
    name: String,
    labels: Option<&HashMap<String, String>>,
    image: Option<String>,
    state: String,
    health: Option<Health>,
) -> Option<ObservedContainer> {
    super::observe_labels(name, labels?, image.unwrap_or_default(), state, health)
}

/// A listed container's name (without Docker's leading `/`) and state word; `None` for a
/// container listed without a name.
fn name_and_state(summary: &ContainerSummary) -> Option<(String, String)> {
    let name = summary
        .names
        .as_ref()?
        .first()?
        .trim_start_matches('/')
        .to_string();
    let state = summary
        .state
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    Some((name, state))
}

impl ContainerRuntime for DockerRuntime {
    fn capacity(&self) -> DeviceCapacity {
        self.capacity
    }

    async fn list_containers(&self) -> Result<Vec<ObservedContainer>, DockerError> {
        let summaries = self.list_ours(LABEL_APP_NAME).await?;
        Ok(summaries
            .into_iter()
            .filter_map(|summary| {
                let (name, state) = name_and_state(&summary)?;
                let health = match summary.health.as_ref().and_then(|health| health.status) {
                    Some(ContainerSummaryHealthStatusEnum::HEALTHY) => Some(Health::Healthy),
                    Some(ContainerSummaryHealthStatusEnum::UNHEALTHY) => Some(Health::Unhealthy),
                    Some(ContainerSummaryHealthStatusEnum::STARTING) => Some(Health::Starting),
                    _ => summary.status.as_deref().and_then(health_from_status),
                };
                observed(
                    name,
                    summary.labels.as_ref(),
                    summary.image.clone(),
                    state,
                    health,
                )
            })
            .collect())
    }

    async fn list_cron_containers(&self) -> Result<Vec<ObservedCronContainer>, DockerError> {
        let summaries = self.list_ours(LABEL_CRON_JOB_NAME).await?;
        Ok(summaries
            .into_iter()
            .filter_map(|summary| {
                let (name, state) = name_and_state(&summary)?;
                super::cron::observe_cron_labels(
                    name,
                    summary.labels.as_ref()?,
                    summary.image.clone().unwrap_or_default(),
                    state,
                )
            })
            .collect())
    }

    async fn inspect_container(
        &self,
        name: &str,
    ) -> Result<Option<ObservedContainer>, DockerError> {
        self.negotiate().await?;
        let response = match self.docker.inspect_container(name, None).await {
            Ok(response) => response,
            Err(error) if status_of(&error) == Some(404) => return Ok(None),
            Err(error) => return Err(operation_error("inspect container", name, error)),
        };
        let state = response.state.as_ref();
        let health = match state
            .and_then(|state| state.health.as_ref())
            .and_then(|health| health.status)
        {
            Some(HealthStatusEnum::HEALTHY) => Some(Health::Healthy),
            Some(HealthStatusEnum::UNHEALTHY) => Some(Health::Unhealthy),
            Some(HealthStatusEnum::STARTING) => Some(Health::Starting),
            _ => None,
        };
        let state_word = state
            .and_then(|state| state.status)
            .map(|status| status.to_string())
            .unwrap_or_default();
        let config = response.config.as_ref();
        Ok(observed(
            name.to_string(),
            config.and_then(|config| config.labels.as_ref()),
            config.and_then(|config| config.image.clone()),
            state_word,
            health,
        ))
    }

    async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        self.negotiate().await?;
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(error) if status_of(&error) == Some(404) => Ok(false),
            Err(error) => Err(operation_error("inspect image", image, error)),
        }
    }

    async fn ensure_image(&self, image: &str) -> Result<ImageOutcome, DockerError> {
        self.negotiate().await?;
        let reference: ImageRef =
            image
                .parse()
                .map_err(
                    |error: nebula_protocol::ImageRefError| DockerError::InvalidSpec {
                        app: image.to_string(),
                        reason: error.to_string(),
                    },
                )?;
        let from_image = reference.name();
        let mut builder = CreateImageOptionsBuilder::new().from_image(&from_image);
        let tag_or_digest = reference
            .digest
            .clone()
            .or_else(|| reference.tag_for_pull().map(str::to_string));
        if let Some(tag) = &tag_or_digest {
            builder = builder.tag(tag);
        }
        tracing::info!(image, "pulling image");
        let started = Instant::now();
        let mut last_progress_log = Instant::now();
        let mut stream = self.docker.create_image(
            Some(builder.build()),
            None,
            self.credentials_for(&reference),
        );
        let mut pull_error = None;
        let mut final_status = None;
        loop {
            let item = match tokio::time::timeout(self.pull_stall_timeout, stream.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    pull_error = Some(format!(
                        "stalled: no progress for {} s",
                        self.pull_stall_timeout.as_secs()
                    ));
                    break;
                }
            };
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|detail| detail.message) {
                        pull_error = Some(detail);
                        break;
                    }
                    let status = info.status.unwrap_or_default();
                    if status.starts_with("Status:") || status.starts_with("Digest:") {
                        final_status = Some(status);
                    } else if last_progress_log.elapsed() >= Duration::from_secs(5) {
                        // Big images on slow links: a line every few seconds shows the pull
                        // is alive without one line per progress event.
                        last_progress_log = Instant::now();
                        tracing::info!(
                            image,
                            layer = info.id.as_deref().unwrap_or(""),
                            status,
                            "pull progress"
                        );
                    } else {
                        tracing::debug!(
                            image,
                            layer = info.id.as_deref().unwrap_or(""),
                            status,
                            "pull progress"
                        );
                    }
                }
                Err(error) => {
                    pull_error = Some(error.to_string());
                    break;
                }
            }
        }
        let Some(pull_error) = pull_error else {
            tracing::info!(
                image,
                status = final_status.as_deref().unwrap_or(""),
                seconds = started.elapsed().as_secs_f32(),
                "pulled image"
            );
            return Ok(ImageOutcome::Pulled);
        };
        // Any failure to find a local copy leaves the pull's error as the reason.
        if self.image_present(image).await.unwrap_or(false) {
            tracing::warn!(image, error = %pull_error, "pull failed; running the local copy");
            Ok(ImageOutcome::LocalFallback { pull_error })
        } else {
            Err(DockerError::ImageUnavailable {
                image: image.to_string(),
                reason: pull_error,
            })
        }
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<(), DockerError> {
        self.negotiate().await?;
        if let NetworkPlan::Nebula { .. } = &spec.network {
            self.ensure_network(NEBULA_NETWORK).await?;
        }
        let log_config = self.log_config().await?;
        match self.create_once(spec, log_config.clone()).await {
            Ok(()) => {}
            // A leftover of the same name: one of ours (a crash between create and start)
            // is replaced; anything else may be a service someone runs on the device by
            // hand, and is never touched.
            Err(error) if status_of(&error) == Some(409) => {
                if !self.is_ours(&spec.name).await? {
                    return Err(DockerError::NameTaken {
                        name: spec.name.clone(),
                    });
                }
                tracing::warn!(container = %spec.name, "replacing a leftover container of the same name");
                self.remove_container(&spec.name).await?;
                self.create_once(spec, log_config)
                    .await
                    .map_err(|error| operation_error("create container", &spec.name, error))?;
            }
            Err(error) => return Err(operation_error("create container", &spec.name, error)),
        }
        let connected: Result<(), DockerError> = async {
            if let NetworkPlan::Nebula { extra } = &spec.network {
                for network in extra {
                    let request = NetworkConnectRequest {
                        container: spec.name.clone(),
                        endpoint_config: None,
                    };
                    self.docker
                        .connect_network(network, request)
                        .await
                        .map_err(|error| operation_error("connect network", network, error))?;
                }
            }
            self.docker
                .start_container(&spec.name, None)
                .await
                .map_err(|error| operation_error("start container", &spec.name, error))
        }
        .await;
        if let Err(error) = connected {
            // Never leave a created-but-not-started container behind looking like ours.
            let _ = self.remove_container(&spec.name).await;
            return Err(error);
        }
        tracing::info!(container = %spec.name, image = %spec.image, "started container");
        Ok(())
    }

    async fn remove_container(&self, name: &str) -> Result<(), DockerError> {
        self.negotiate().await?;
        // No `t`: the engine waits the container's own StopTimeout (its app's
        // `stop_timeout_secs`, Docker's 10 s on containers created before it was set).
        match self
            .docker
            .clone()
            .with_timeout(stop_request_timeout())
            .stop_container(name, None::<StopContainerOptions>)
            .await
        {
            // 304: already stopped; 404: already gone.
            Ok(()) => {}
            Err(error) if matches!(status_of(&error), Some(304 | 404)) => {}
            Err(error) => return Err(operation_error("stop container", name, error)),
        }
        let remove = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(name, Some(remove)).await {
            Ok(()) => {
                tracing::info!(container = name, "removed container");
                Ok(())
            }
            Err(error) if status_of(&error) == Some(404) => Ok(()),
            // 409 "removal already in progress" ends in the state we want.
            Err(error) if status_of(&error) == Some(409) => Ok(()),
            Err(error) => Err(operation_error("remove container", name, error)),
        }
    }

    async fn start_container(&self, name: &str) -> Result<(), DockerError> {
        self.negotiate().await?;
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            Err(error) if status_of(&error) == Some(304) => Ok(()),
            Err(error) => Err(operation_error("start container", name, error)),
        }
    }

    async fn restart_container(&self, name: &str) -> Result<(), DockerError> {
        self.negotiate().await?;
        self.docker
            .clone()
            .with_timeout(stop_request_timeout())
            .restart_container(name, None)
            .await
            .map_err(|error| operation_error("restart container", name, error))
    }

    async fn prune_images(&self) -> Result<(), DockerError> {
        self.negotiate().await?;
        // `dangling=false` prunes every unused image, not only untagged ones.
        let filters = HashMap::from([("dangling", vec!["false"])]);
        let options = PruneImagesOptionsBuilder::new().filters(&filters).build();
        let response = self
            .docker
            .prune_images(Some(options))
            .await
            .map_err(|error| operation_error("prune", "images", error))?;
        tracing::info!(
            images = response.images_deleted.map_or(0, |deleted| deleted.len()),
            reclaimed_bytes = response.space_reclaimed.unwrap_or(0),
            "pruned unused images"
        );
        Ok(())
    }

    async fn restart_count(&self, name: &str) -> Option<u64> {
        self.negotiate().await.ok()?;
        let response = self.docker.inspect_container(name, None).await.ok()?;
        response
            .restart_count
            .and_then(|count| u64::try_from(count).ok())
    }

    async fn engine_version(&self) -> Option<String> {
        self.negotiate().await.ok()?;
        self.docker.version().await.ok()?.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nebula_protocol::PortProtocol;

    #[test]
    fn health_from_docker_ps_status() {
        assert_eq!(
            health_from_status("Up 3 minutes (healthy)"),
            Some(Health::Healthy)
        );
        assert_eq!(
            health_from_status("Up 1 second (health: starting)"),
            Some(Health::Starting)
        );
        assert_eq!(
            health_from_status("Up 9 minutes (unhealthy)"),
            Some(Health::Unhealthy)
        );
        assert_eq!(health_from_status("Exited (0) 3 minutes ago"), None);
    }

    #[test]
    fn create_body_maps_every_field() {
        let spec = ContainerSpec {
            name: "web-2".into(),
            app_name: "web".parse().expect("name"),
            image: "nginx:latest".into(),
            labels: [("orchestrator".to_string(), "nebula".to_string())].into(),
            env: vec!["A=1".into()],
            ports: vec![
                PublishedPort {
                    host: 8001,
                    container: 80,
                    protocol: PortProtocol::Tcp,
                },
                PublishedPort {
                    host: 5353,
                    container: 53,
                    protocol: PortProtocol::Udp,
                },
            ],
            volumes: vec!["/a:/b:ro".into()],
            devices: vec!["/dev/null:/dev/x".into(), "/dev/zero:/dev/z:r".into()],
            privileged: true,
            network: NetworkPlan::Mode("host".into()),
            stop_timeout_secs: 30,
            restart: RestartPolicy::UnlessStopped,
        };
        let logs = HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), "1m".to_string()),
                ("max-file".to_string(), "2".to_string()),
            ])),
        };
        let body = DockerRuntime::create_body(&spec, Some(logs));
        assert_eq!(body.stop_timeout, Some(30));
        let host = body.host_config.expect("host config");
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(host.privileged, Some(true));
        assert_eq!(host.binds, Some(vec!["/a:/b:ro".to_string()]));
        let bindings = host.port_bindings.expect("ports");
        assert_eq!(
            bindings["80/tcp"].as_ref().expect("binding")[0]
                .host_port
                .as_deref(),
            Some("8001")
        );
        let devices = host.devices.expect("devices");
        assert_eq!(devices[0].cgroup_permissions.as_deref(), Some("rwm"));
        assert_eq!(devices[1].cgroup_permissions.as_deref(), Some("r"));
        assert_eq!(
            host.restart_policy.expect("policy").name,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        assert_eq!(
            bindings["53/udp"].as_ref().expect("binding")[0]
                .host_port
                .as_deref(),
            Some("5353")
        );
        let mut exposed = body.exposed_ports.expect("exposed");
        exposed.sort();
        assert_eq!(exposed, vec!["53/udp".to_string(), "80/tcp".to_string()]);
        let log_config = host.log_config.expect("log config");
        assert_eq!(log_config.typ.as_deref(), Some("json-file"));
        let options = log_config.config.expect("options");
        assert_eq!(options["max-size"], "1m");
        assert_eq!(options["max-file"], "2");
    }
}
