//! The agent's shared state and its per-app workers.
//!
//! Transports update the desired state through [`Shared::update`], which persists it before
//! returning (so the caller may then acknowledge the message), and wakes the worker of each
//! changed app. One worker per app (the seed's thread per app) plans with
//! [`crate::reconcile::plan_app`] and executes the actions; an error or a desired-state change
//! mid-plan leads to a fresh observation and a new plan, so nothing stays half-applied.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::{DockerError, StateError};
use crate::reconcile::{self, Action};
use crate::runtime::{ContainerRuntime, ContainerSpec, ImageOutcome, containers_of};
use crate::state::{Changes, DesiredState, StateStore};
use nebula_protocol::{AppConfig, Name, Revision};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a rolling restart waits for one container to run (and be healthy).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const READY_POLL: Duration = Duration::from_millis(250);

/// What one reconcile pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Nothing to do.
    Idle,
    /// The whole plan ran.
    Applied,
    /// The desired state changed (or shutdown began) mid-plan; re-plan at once.
    Interrupted,
}

/// State shared by the transport, the workers and the reporter of one agent.
#[derive(Debug)]
pub struct Shared<R> {
    pub config: Config,
    pub runtime: R,
    store: StateStore,
    desired: tokio::sync::Mutex<DesiredState>,
    workers: Mutex<HashMap<Name, Arc<Notify>>>,
    /// Last error per app (a failed pull, a Docker error), for reports.
    errors: Mutex<BTreeMap<Name, String>>,
    /// Wakes the reporter after an applied change.
    pub report_now: Notify,
    /// Wakes the prune task after a group change.
    prune_now: Notify,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// A failure outside the transport (persisting the prune revision) that must end the
    /// agent with an error.
    fatal: Mutex<Option<StateError>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps stay consistent even if a holder panicked; keep going.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<R: ContainerRuntime> Shared<R> {
    pub fn new(
        config: Config,
        runtime: R,
        store: StateStore,
        desired: DesiredState,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            runtime,
            store,
            desired: tokio::sync::Mutex::new(desired),
            workers: Mutex::new(HashMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            report_now: Notify::new(),
            prune_now: Notify::new(),
            shutdown,
            tasks: TaskTracker::new(),
            fatal: Mutex::new(None),
        })
    }

    /// A copy of the desired state.
    pub async fn desired(&self) -> DesiredState {
        self.desired.lock().await.clone()
    }

    pub async fn desired_app(&self, app: &Name) -> Option<AppConfig> {
        self.desired.lock().await.apps.get(app).cloned()
    }

    /// Applies `change` to the desired state and, when it changed anything, persists the
    /// result before returning and wakes the affected workers. Writes are serialised by the
    /// lock, so the file always holds the latest state.
    pub async fn update(
        self: &Arc<Self>,
        change: impl FnOnce(&mut DesiredState) -> Changes,
    ) -> Result<Changes, StateError> {
        let mut desired = self.desired.lock().await;
        let mut next = desired.clone();
        let changes = change(&mut next);
        if changes.is_empty() && next == *desired {
            return Ok(changes);
        }
        let store = self.store.clone();
        let snapshot = next.clone();
        tokio::task::spawn_blocking(move || store.save(&snapshot))
            .await
            .map_err(|error| StateError::Write {
                path: self.store.path().display().to_string(),
                source: std::io::Error::other(error.to_string()),
            })??;
        *desired = next;
        drop(desired);
        for app in &changes.apps {
            self.wake(app);
        }
        if changes.group {
            self.prune_now.notify_one();
        }
        Ok(changes)
    }

    /// Wakes (starting if needed) the worker of `app`.
    pub fn wake(self: &Arc<Self>, app: &Name) {
        let notify = {
            let mut workers = lock(&self.workers);
            if let Some(notify) = workers.get(app) {
                notify.clone()
            } else {
                let notify = Arc::new(Notify::new());
                workers.insert(app.clone(), notify.clone());
                let shared = self.clone();
                let app = app.clone();
                let worker_notify = notify.clone();
                self.tasks
                    .spawn(async move { shared.app_worker(app, worker_notify).await });
                notify
            }
        };
        notify.notify_one();
    }

    /// Group mode: starts workers for apps that have containers but are not desired, so
    /// their containers are removed (an app dropped from the group while the agent was down).
    pub async fn adopt_orphans(self: &Arc<Self>) {
        match self.runtime.list_containers().await {
            Ok(containers) => {
                let apps: BTreeSet<Name> = containers
                    .into_iter()
                    .map(|container| container.app_name)
                    .collect();
                for app in apps {
                    if !lock(&self.workers).contains_key(&app) {
                        self.wake(&app);
                    }
                }
            }
            Err(error) => {
                // The workers of desired apps retry on their own; orphans are looked for
                // again at the next group change.
                tracing::warn!(error = %error, "cannot list containers to find orphans");
            }
        }
    }

    /// Records a fatal error and stops the agent; [`crate::run`] returns it.
    fn fail(&self, error: StateError) {
        tracing::error!(error = %error, "fatal error");
        lock(&self.fatal).get_or_insert(error);
        self.shutdown.cancel();
    }

    /// The fatal error recorded by a background task, if any.
    pub fn take_fatal(&self) -> Option<StateError> {
        lock(&self.fatal).take()
    }

    pub fn app_error(&self, app: &Name) -> Option<String> {
        lock(&self.errors).get(app).cloned()
    }

    fn set_error(&self, app: &Name, error: Option<String>) {
        let mut errors = lock(&self.errors);
        match error {
            Some(error) => errors.insert(app.clone(), error),
            None => errors.remove(app),
        };
    }

    /// One app's reconcile loop: plan, execute, then sleep until woken, the periodic
    /// re-check (unhealthy containers) or shutdown. Errors back off and retry.
    async fn app_worker(self: Arc<Self>, app: Name, notify: Arc<Notify>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), self.config.max_backoff);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let desired = self.desired_app(&app).await;
            let wait = match self.reconcile_app(&app, desired.as_ref()).await {
                Ok(Outcome::Interrupted) => continue,
                Ok(outcome) => {
                    backoff.reset();
                    if outcome == Outcome::Applied {
                        self.report_now.notify_one();
                    }
                    self.config.resync_interval
                }
                Err(error) => {
                    tracing::warn!(app = %app, error = %error, retryable = error.is_retryable(), "applying app failed; will retry");
                    self.set_error(&app, Some(error.to_string()));
                    self.report_now.notify_one();
                    backoff.next_delay()
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = notify.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Observes, plans and executes once.
    async fn reconcile_app(
        &self,
        app: &Name,
        desired: Option<&AppConfig>,
    ) -> Result<Outcome, DockerError> {
        let capacity = self.runtime.capacity();
        let all = self.runtime.list_containers().await?;
        let observed: Vec<_> = containers_of(&all, app).cloned().collect();
        let plan = reconcile::plan_app(desired, capacity, &observed);
        if plan.is_empty() {
            return Ok(Outcome::Idle);
        }
        let revision = desired.map(|app| app.app_id);
        tracing::info!(app = %app, revision = ?revision, actions = plan.len(), "applying");
        let mut pull_note = None;
        for action in plan {
            // A newer desired state makes the rest of this plan moot; finishing the current
            // action and re-planning keeps every container consistent.
            let current = self
                .desired
                .lock()
                .await
                .apps
                .get(app)
                .map(|app| app.app_id);
            if current != revision || self.shutdown.is_cancelled() {
                return Ok(Outcome::Interrupted);
            }
            execute(
                &self.runtime,
                app,
                desired,
                &action,
                self.config.max_restart_wait,
                &self.shutdown,
                &mut pull_note,
            )
            .await?;
        }
        self.set_error(app, pull_note);
        tracing::info!(app = %app, revision = ?revision, "applied");
        Ok(Outcome::Applied)
    }

    /// Group mode: prunes unused images whenever the group's `prune_id` goes up.
    pub async fn prune_loop(self: Arc<Self>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), self.config.max_backoff);
        loop {
            let desired = self.desired().await;
            let mut retry = false;
            if let Some(group) = &desired.group {
                let prune_id = group.prune_id;
                if desired.last_pruned.is_none() {
                    if let Err(error) = self.record_prune(prune_id).await {
                        self.fail(error);
                        return;
                    }
                } else if reconcile::prune_due(prune_id, desired.last_pruned) {
                    match self.runtime.prune_images().await {
                        Ok(()) => {
                            backoff.reset();
                            if let Err(error) = self.record_prune(prune_id).await {
                                self.fail(error);
                                return;
                            }
                            self.report_now.notify_one();
                        }
                        Err(error) => {
                            tracing::warn!(error = %error, prune_id, "prune failed; will retry");
                            retry = true;
                        }
                    }
                }
            }
            let wait = if retry {
                backoff.next_delay()
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.prune_now.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn record_prune(self: &Arc<Self>, prune_id: Revision) -> Result<(), StateError> {
        self.update(|state| {
            state.last_pruned = Some(prune_id);
            Changes::default()
        })
        .await
        .map(|_| ())
    }
}

/// Runs one action. `pull_note` collects a failed pull that fell back to a local image, for
/// the app's report.
pub async fn execute<R: ContainerRuntime>(
    runtime: &R,
    app: &Name,
    desired: Option<&AppConfig>,
    action: &Action,
    max_restart_wait: Duration,
    shutdown: &CancellationToken,
    pull_note: &mut Option<String>,
) -> Result<(), DockerError> {
    let spec = |index: u32| -> Result<ContainerSpec, DockerError> {
        let config = desired.ok_or_else(|| DockerError::InvalidSpec {
            app: app.to_string(),
            reason: "no desired config".into(),
        })?;
        ContainerSpec::for_app(config, index)
    };
    match action {
        Action::RandomWait => {
            if !max_restart_wait.is_zero() {
                let ceiling = u64::try_from(max_restart_wait.as_millis()).unwrap_or(u64::MAX);
                let wait = Duration::from_millis(fastrand::u64(0..=ceiling));
                tracing::info!(app = %app, wait_ms = wait.as_millis() as u64, "waiting before replacing containers");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        Action::EnsureImage => {
            let image = spec(0)?.image;
            match runtime.ensure_image(&image).await? {
                ImageOutcome::Pulled => *pull_note = None,
                ImageOutcome::LocalFallback { pull_error } => {
                    *pull_note = Some(format!(
                        "pull of {image} failed, running the local copy: {pull_error}"
                    ));
                }
            }
        }
        Action::Create { index } => runtime.create_container(&spec(*index)?).await?,
        Action::Replace { index, name } => {
            let spec = spec(*index)?;
            runtime.remove_container(name).await?;
            runtime.create_container(&spec).await?;
        }
        Action::AwaitReady { index } => await_ready(runtime, &spec(*index)?.name, shutdown).await?,
        Action::Remove { name } => runtime.remove_container(name).await?,
        Action::Start { name } => {
            tracing::info!(app = %app, container = %name, "starting a stopped container");
            runtime.start_container(name).await?;
        }
        Action::Restart { name } => {
            tracing::warn!(app = %app, container = %name, "restarting an unhealthy container");
            runtime.restart_container(name).await?;
        }
    }
    Ok(())
}

/// Waits until a container runs and, with a health check, is healthy.
async fn await_ready<R: ContainerRuntime>(
    runtime: &R,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<(), DockerError> {
    let started = Instant::now();
    loop {
        if let Some(container) = runtime.inspect_container(name).await?
            && container.is_ready()
        {
            return Ok(());
        }
        if started.elapsed() >= READY_TIMEOUT || shutdown.is_cancelled() {
            return Err(DockerError::NotReady {
                name: name.to_string(),
                wanted: "running and healthy",
                seconds: READY_TIMEOUT.as_secs(),
            });
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// Observes, plans and executes until the app is converged (or `max_passes` plans ran):
/// the reconcile loop of one app without the worker around it, for tests and tools.
pub async fn converge_app<R: ContainerRuntime>(
    runtime: &R,
    app: &Name,
    desired: Option<&AppConfig>,
    max_passes: usize,
) -> Result<Option<String>, DockerError> {
    let shutdown = CancellationToken::new();
    let mut pull_note = None;
    for _ in 0..max_passes {
        let all = runtime.list_containers().await?;
        let observed: Vec<_> = containers_of(&all, app).cloned().collect();
        let plan = reconcile::plan_app(desired, runtime.capacity(), &observed);
        if plan.is_empty() {
            return Ok(pull_note);
        }
        for action in &plan {
            execute(
                runtime,
                app,
                desired,
                action,
                Duration::ZERO,
                &shutdown,
                &mut pull_note,
            )
            .await?;
        }
    }
    Err(DockerError::Operation {
        operation: "converge",
        target: app.to_string(),
        reason: format!("not converged after {max_passes} plans"),
    })
}
