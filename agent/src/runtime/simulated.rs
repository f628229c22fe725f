//! An in-memory runtime for the fleet simulator (`NEBULA_RUNTIME=simulated`): containers are
//! records in a map, created "running" at once. Clones share state, so a simulator (or a
//! test) keeps one clone to observe what the agent applied.

use super::{ContainerRuntime, ContainerSpec, ImageOutcome, ObservedCronContainer};
use crate::error::DockerError;
use crate::reconcile::{Health, ObservedContainer};
use nebula_protocol::placement::DeviceCapacity;
use nebula_protocol::{Name, ObjectVersion, Revision};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct Inner {
    containers: BTreeMap<String, (ContainerSpec, ObservedContainer)>,
    /// Cron runs, apart from app containers as Docker's listings keep them apart (by label).
    cron_runs: BTreeMap<String, (ContainerSpec, ObservedCronContainer)>,
    /// `None`: every image can be pulled. `Some`: only these can.
    pullable: Option<BTreeSet<String>>,
    /// Images present "locally".
    local: BTreeSet<String>,
    /// Images whose containers report a health check (start as `starting`).
    with_healthcheck: BTreeSet<String>,
    /// Operations performed, for tests ("create web-1", "remove web-1", ...).
    operations: Vec<String>,
    /// How many times the containers were listed (an observation of the engine).
    list_calls: u64,
    /// Containers another party made (not ours): a create of that name fails.
    foreign: BTreeSet<String>,
}

/// An in-memory container runtime.
#[derive(Debug, Clone)]
pub struct SimulatedRuntime {
    inner: Arc<Mutex<Inner>>,
    capacity: DeviceCapacity,
}

impl Default for SimulatedRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl SimulatedRuntime {
    /// A device with 4 cores and 4 GiB where every image can be pulled.
    pub fn new() -> Self {
        Self::with_capacity(DeviceCapacity {
            cpu_cores: 4,
            memory_mb: 4096,
        })
    }

    pub fn with_capacity(capacity: DeviceCapacity) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock can only come from a test assertion elsewhere; the
        // data is plain records, still consistent, so keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Restricts pulls to `images` (canonical references); others fail like an unreachable
    /// registry.
    pub fn set_pullable(&self, images: impl IntoIterator<Item = String>) {
        self.lock().pullable = Some(images.into_iter().collect());
    }

    /// Marks an image as present locally without a pull.
    pub fn add_local_image(&self, image: &str) {
        self.lock().local.insert(image.to_string());
    }

    /// Containers of `image` get a health check that starts as `starting`.
    pub fn add_healthcheck_image(&self, image: &str) {
        self.lock().with_healthcheck.insert(image.to_string());
    }

    /// Sets a container's health, as Docker's health check would.
    pub fn set_health(&self, name: &str, health: Option<Health>) {
        if let Some((_, observed)) = self.lock().containers.get_mut(name) {
            observed.health = health;
        }
    }

    /// Sets a container's state word (`exited`, ...), as a crash, a manual stop or (for a
    /// cron run) the end of its process would.
    pub fn set_state(&self, name: &str, state: &str) {
        let mut inner = self.lock();
        if let Some((_, observed)) = inner.containers.get_mut(name) {
            observed.state = state.to_string();
        }
        if let Some((_, observed)) = inner.cron_runs.get_mut(name) {
            observed.state = state.to_string();
        }
    }

    /// The spec a container (or cron run) was created with.
    pub fn spec(&self, name: &str) -> Option<ContainerSpec> {
        let inner = self.lock();
        inner
            .containers
            .get(name)
            .map(|(spec, _)| spec.clone())
            .or_else(|| inner.cron_runs.get(name).map(|(spec, _)| spec.clone()))
    }

    /// The names of `job`'s run containers, oldest fire first.
    pub fn cron_run_names(&self, job: &Name) -> Vec<String> {
        let inner = self.lock();
        let mut runs: Vec<&ObservedCronContainer> = inner
            .cron_runs
            .values()
            .map(|(_, observed)| observed)
            .filter(|observed| &observed.job == job)
            .collect();
        runs.sort_by_key(|run| run.fired_at());
        runs.into_iter().map(|run| run.name.clone()).collect()
    }

    /// Adds a container this agent does not manage, as someone on the device would have.
    pub fn add_foreign_container(&self, name: &str) {
        self.lock().foreign.insert(name.to_string());
    }

    /// Whether the container another party made is still there.
    pub fn has_foreign_container(&self, name: &str) -> bool {
        self.lock().foreign.contains(name)
    }

    /// How many times the containers were listed so far.
    pub fn list_calls(&self) -> u64 {
        self.lock().list_calls
    }

    /// The operations performed so far.
    pub fn operations(&self) -> Vec<String> {
        self.lock().operations.clone()
    }

    /// The revision every container of `app` runs at, when they all agree and run.
    pub fn applied_revision(&self, app: &Name) -> Option<Revision> {
        let inner = self.lock();
        let mut revisions = inner
            .containers
            .values()
            .filter(|(_, observed)| &observed.app_name == app)
            .map(|(_, observed)| observed.is_running().then_some(observed.app_id).flatten());
        let first = revisions.next()??;
        revisions
            .all(|revision| revision == Some(first))
            .then_some(first)
    }

    /// The (incarnation, revision) every container of `app` runs at, when they all agree
    /// and run: tells a re-created app at revision 1 from the deleted one.
    pub fn applied_version(&self, app: &Name) -> Option<ObjectVersion> {
        let inner = self.lock();
        let mut versions = inner
            .containers
            .values()
            .filter(|(_, observed)| &observed.app_name == app)
            .map(|(_, observed)| {
                let revision = observed.app_id.filter(|_| observed.is_running())?;
                Some(ObjectVersion::new(
                    observed.incarnation.unwrap_or(0),
                    revision,
                ))
            });
        let first = versions.next()??;
        versions
            .all(|version| version == Some(first))
            .then_some(first)
    }

    /// Adds a container as another agent (or the previous release) left it: `spec`'s
    /// labels as they are, running. For tests of what the agent does with it.
    pub fn adopt_container(&self, spec: &ContainerSpec) {
        let labels = spec.labels.clone().into_iter().collect();
        if let Some(observed) = super::observe_labels(
            spec.name.clone(),
            &labels,
            spec.image.clone(),
            "running".into(),
            None,
        ) {
            let mut inner = self.lock();
            inner.local.insert(spec.image.clone());
            inner
                .containers
                .insert(spec.name.clone(), (spec.clone(), observed));
        }
    }

    /// The names of `app`'s containers.
    pub fn container_names(&self, app: &Name) -> Vec<String> {
        self.lock()
            .containers
            .values()
            .filter(|(_, observed)| &observed.app_name == app)
            .map(|(_, observed)| observed.name.clone())
            .collect()
    }

    fn not_found(operation: &'static str, name: &str) -> DockerError {
        DockerError::Operation {
            operation,
            target: name.to_string(),
            reason: "no such container".into(),
        }
    }
}

impl ContainerRuntime for SimulatedRuntime {
    fn capacity(&self) -> DeviceCapacity {
        self.capacity
    }

    fn reports_host_resources(&self) -> bool {
        false
    }

    async fn list_containers(&self) -> Result<Vec<ObservedContainer>, DockerError> {
        let mut inner = self.lock();
        inner.list_calls += 1;
        Ok(inner
            .containers
            .values()
            .map(|(_, observed)| observed.clone())
            .collect())
    }

    async fn list_cron_containers(&self) -> Result<Vec<ObservedCronContainer>, DockerError> {
        // Not counted in `list_calls`, which measures the app workers' shared listing: the
        // cron runner lists runs on its own clock.
        let inner = self.lock();
        Ok(inner
            .cron_runs
            .values()
            .map(|(_, observed)| observed.clone())
            .collect())
    }

    async fn inspect_container(
        &self,
        name: &str,
    ) -> Result<Option<ObservedContainer>, DockerError> {
        let mut inner = self.lock();
        let Some((_, observed)) = inner.containers.get_mut(name) else {
            return Ok(None);
        };
        let snapshot = observed.clone();
        // A simulated health check passes on the check after the one that saw it start,
        // so a rolling restart observes `starting` before `healthy` as with Docker.
        if observed.health == Some(Health::Starting) {
            observed.health = Some(Health::Healthy);
        }
        Ok(Some(snapshot))
    }

    async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        Ok(self.lock().local.contains(image))
    }

    async fn ensure_image(&self, image: &str) -> Result<ImageOutcome, DockerError> {
        let mut inner = self.lock();
        inner.operations.push(format!("pull {image}"));
        let pullable = inner
            .pullable
            .as_ref()
            .is_none_or(|pullable| pullable.contains(image));
        if pullable {
            inner.local.insert(image.to_string());
            Ok(ImageOutcome::Pulled)
        } else if inner.local.contains(image) {
            Ok(ImageOutcome::LocalFallback {
                pull_error: "simulated registry unreachable".into(),
            })
        } else {
            Err(DockerError::ImageUnavailable {
                image: image.to_string(),
                reason: "simulated registry unreachable".into(),
            })
        }
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<(), DockerError> {
        let mut inner = self.lock();
        if inner.foreign.contains(&spec.name) {
            return Err(DockerError::NameTaken {
                name: spec.name.clone(),
            });
        }
        if !inner.local.contains(&spec.image) {
            return Err(DockerError::Operation {
                operation: "create container",
                target: spec.name.clone(),
                reason: format!("no such image {}", spec.image),
            });
        }
        let health = inner
            .with_healthcheck
            .contains(&spec.image)
            .then_some(Health::Starting);
        // Read back through the labels, as from Docker: what a container is, is what its
        // labels say.
        let labels = spec.labels.clone().into_iter().collect();
        if let Some(run) = super::cron::observe_cron_labels(
            spec.name.clone(),
            &labels,
            spec.image.clone(),
            "running".into(),
        ) {
            inner.operations.push(format!("create {}", spec.name));
            inner
                .cron_runs
                .insert(spec.name.clone(), (spec.clone(), run));
            return Ok(());
        }
        let observed = super::observe_labels(
            spec.name.clone(),
            &labels,
            spec.image.clone(),
            "running".into(),
            health,
        )
        .ok_or_else(|| DockerError::InvalidSpec {
            app: spec.app_name.to_string(),
            reason: "no app_name label".into(),
        })?;
        inner.operations.push(format!("create {}", spec.name));
        inner
            .containers
            .insert(spec.name.clone(), (spec.clone(), observed));
        Ok(())
    }

    async fn remove_container(&self, name: &str) -> Result<(), DockerError> {
        let mut inner = self.lock();
        if inner.containers.remove(name).is_some() || inner.cron_runs.remove(name).is_some() {
            inner.operations.push(format!("remove {name}"));
        }
        Ok(())
    }

    async fn start_container(&self, name: &str) -> Result<(), DockerError> {
        let mut inner = self.lock();
        let (_, observed) = inner
            .containers
            .get_mut(name)
            .ok_or_else(|| Self::not_found("start container", name))?;
        observed.state = "running".into();
        inner.operations.push(format!("start {name}"));
        Ok(())
    }

    async fn restart_container(&self, name: &str) -> Result<(), DockerError> {
        let mut inner = self.lock();
        let (_, observed) = inner
            .containers
            .get_mut(name)
            .ok_or_else(|| Self::not_found("restart container", name))?;
        observed.state = "running".into();
        if observed.health.is_some() {
            observed.health = Some(Health::Starting);
        }
        inner.operations.push(format!("restart {name}"));
        Ok(())
    }

    async fn prune_images(&self) -> Result<(), DockerError> {
        let mut inner = self.lock();
        // As Docker: an image any container uses, even a finished cron run, stays.
        let used: BTreeSet<String> = inner
            .containers
            .values()
            .map(|(spec, _)| spec)
            .chain(inner.cron_runs.values().map(|(spec, _)| spec))
            .map(|spec| spec.image.clone())
            .collect();
        inner.local.retain(|image| used.contains(image));
        inner.operations.push("prune".into());
        Ok(())
    }
}
