//! The agent's shared state and its per-app workers.
//!
//! Transports update the desired state through [`Shared::update`], which persists it before
//! returning (so the caller may then acknowledge the message), and wakes the worker of each
//! changed app. One worker per app (the seed's thread per app) runs
//! [`crate::executor::Pass`]es; an error or a desired-state change mid-plan leads to a fresh
//! observation and a new plan, so nothing stays half-applied.

use crate::backoff::Backoff;
use crate::config::{Config, Mode};
use crate::error::{DockerError, StateError};
use crate::executor::{ImageMemory, Pass, PassGuard, PassOutcome};
use crate::reconcile::{self, ObservedContainer};
use crate::runtime::ContainerRuntime;
use crate::state::{Changes, DesiredState, StateStore};
use nebula_protocol::{AppConfig, CronJob, Name, Revision};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// State shared by the transport, the workers and the reporter of one agent.
#[derive(Debug)]
pub struct Shared<R> {
    pub config: Config,
    pub runtime: R,
    store: StateStore,
    desired: tokio::sync::Mutex<DesiredState>,
    workers: Mutex<HashMap<Name, Arc<Worker>>>,
    /// Last error per app (a failed pull, a Docker error), for reports.
    errors: Mutex<BTreeMap<Name, String>>,
    /// Wakes the reporter after an applied change.
    pub report_now: Notify,
    /// Orders this agent's reports (see [`crate::report::Session`]).
    pub report_session: crate::report::Session,
    /// Wakes the prune task after a group change.
    prune_now: Notify,
    /// Wakes the cron runner ([`crate::cron_runner`]) after its jobs changed.
    pub cron_now: Notify,
    /// Set once the desired state was confirmed (a sync, a group change; app mode at
    /// start): the cron runner may then remove runs of jobs that are not desired.
    cron_sweep: AtomicBool,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// A failure outside the transport (persisting the prune revision) that must end the
    /// agent with an error.
    fatal: Mutex<Option<StateError>>,
    /// The engine's containers as last listed, shared by the workers.
    observation: Observation,
}

/// What the agent holds of one app's worker.
#[derive(Debug, Default)]
struct Worker {
    /// Wakes the worker: a change of its app, or the periodic re-check.
    wake: Notify,
    /// Waiting out an error's backoff: the periodic re-check leaves it alone, so a lasting
    /// failure (a registry out of reach) is retried at the backoff's pace, not every
    /// re-check. A change of the app still wakes it.
    backing_off: AtomicBool,
}

/// How long one listing of the engine's containers serves the workers that ask for it,
/// unless one of them changed something meanwhile. The periodic re-check wakes every
/// worker at once, so they plan from one listing instead of one each.
const OBSERVATION_MAX_AGE: Duration = Duration::from_secs(1);

/// One listing of the engine shared by the workers (single flight: a worker that asks while
/// another lists waits for that listing).
#[derive(Debug, Default)]
struct Observation {
    /// Bumped whenever a worker has changed containers: a listing made before is stale.
    generation: AtomicU64,
    latest: tokio::sync::Mutex<Option<Snapshot>>,
}

#[derive(Debug)]
struct Snapshot {
    generation: u64,
    taken: Instant,
    containers: Arc<Vec<ObservedContainer>>,
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
            report_session: crate::report::Session::default(),
            prune_now: Notify::new(),
            cron_now: Notify::new(),
            cron_sweep: AtomicBool::new(false),
            shutdown,
            tasks: TaskTracker::new(),
            fatal: Mutex::new(None),
            observation: Observation::default(),
        })
    }

    /// A copy of the desired state.
    pub async fn desired(&self) -> DesiredState {
        self.desired.lock().await.clone()
    }

    /// The store of the last sync reply that found its target (sent as `known_store`).
    pub async fn known_store(&self) -> Option<nebula_protocol::StoreId> {
        self.desired.lock().await.store_id
    }

    pub async fn desired_app(&self, app: &Name) -> Option<AppConfig> {
        self.desired.lock().await.apps.get(app).cloned()
    }

    /// The desired cron jobs.
    pub async fn desired_cron_jobs(&self) -> BTreeMap<Name, CronJob> {
        self.desired.lock().await.cron_jobs.clone()
    }

    /// Wakes the cron runner; `confirmed`: the desired state was just confirmed, so runs of
    /// jobs that are not desired may go.
    pub fn wake_cron(&self, confirmed: bool) {
        if confirmed {
            self.cron_sweep.store(true, Ordering::Release);
        }
        self.cron_now.notify_one();
    }

    /// Whether the desired state was confirmed since the cron runner last asked.
    pub fn take_cron_sweep(&self) -> bool {
        self.cron_sweep.swap(false, Ordering::AcqRel)
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
        if changes.cron {
            self.wake_cron(true);
        }
        Ok(changes)
    }

    /// Wakes (starting if needed) the worker of `app`.
    pub fn wake(self: &Arc<Self>, app: &Name) {
        let worker = {
            let mut workers = lock(&self.workers);
            if let Some(worker) = workers.get(app) {
                worker.clone()
            } else {
                let worker = Arc::new(Worker::default());
                workers.insert(app.clone(), worker.clone());
                let shared = self.clone();
                let app = app.clone();
                let handle = worker.clone();
                // In the caller's span: the fleet simulator runs each agent in one naming
                // its device.
                self.tasks
                    .spawn(async move { shared.app_worker(app, handle).await }.in_current_span());
                worker
            }
        };
        worker.wake.notify_one();
    }

    /// Starts workers for apps that have containers but are not desired, so their
    /// containers are removed: in group mode after a sync or group change (an app dropped
    /// from the group while the agent was down), in app mode at start (an app dropped from
    /// `NEBULA_APPS`). Apps configured in app mode are left to their own sync.
    /// `false` when the engine could not be listed.
    pub async fn adopt_orphans(self: &Arc<Self>) -> bool {
        // The same moment for cron jobs: runs of jobs not desired may go.
        self.wake_cron(true);
        // The workers' shared listing: the workers woken here plan from it too.
        match self.observe().await {
            Ok(containers) => {
                let configured: &[Name] = match &self.config.mode {
                    Mode::Apps(apps) => apps,
                    Mode::Group(_) => &[],
                };
                let apps: BTreeSet<Name> = containers
                    .iter()
                    .map(|container| container.app_name.clone())
                    .filter(|app| !configured.contains(app))
                    .collect();
                for app in apps {
                    if !lock(&self.workers).contains_key(&app) {
                        self.wake(&app);
                    }
                }
                true
            }
            Err(error) => {
                // The workers of desired apps retry on their own; orphans are looked for
                // again at the next group change.
                tracing::warn!(error = %error, "cannot list containers to find orphans");
                false
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

    /// Wakes every worker every `resync_interval`, so that containers that crashed or went
    /// unhealthy are repaired; all at once, so that they share one listing of the engine.
    /// In app mode it also looks for orphans at start, and at each tick until that worked.
    pub async fn resync_loop(self: Arc<Self>) {
        let mut orphans_found = matches!(self.config.mode, Mode::Group(_));
        loop {
            if !orphans_found {
                // An engine that does not answer must not hold up shutdown.
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    found = self.adopt_orphans() => orphans_found = found,
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(self.config.resync_interval) => {}
            }
            let workers: Vec<Arc<Worker>> = lock(&self.workers).values().cloned().collect();
            for worker in workers {
                if !worker.backing_off.load(Ordering::Acquire) {
                    worker.wake.notify_one();
                }
            }
        }
    }

    /// The engine's containers: a listing at most [`OBSERVATION_MAX_AGE`] old that no
    /// worker has changed anything since, or a new one.
    async fn observe(&self) -> Result<Arc<Vec<ObservedContainer>>, DockerError> {
        let mut latest = self.observation.latest.lock().await;
        let generation = self.observation.generation.load(Ordering::Acquire);
        if let Some(snapshot) = latest.as_ref()
            && snapshot.generation == generation
            && snapshot.taken.elapsed() < OBSERVATION_MAX_AGE
        {
            return Ok(snapshot.containers.clone());
        }
        let containers = Arc::new(self.runtime.list_containers().await?);
        *latest = Some(Snapshot {
            generation,
            taken: Instant::now(),
            containers: containers.clone(),
        });
        Ok(containers)
    }

    /// Ends the worker of an app that is not wanted and has no containers left; a change
    /// that made it wanted meanwhile gets a new worker.
    async fn retire(self: &Arc<Self>, app: &Name) {
        lock(&self.workers).remove(app);
        self.set_error(app, None);
        if self.desired_app(app).await.is_some() {
            self.wake(app);
        }
    }

    /// One app's reconcile loop: a pass, then sleep until woken (a change, or the periodic
    /// re-check of [`Self::resync_loop`]) or shutdown. Errors back off and retry. The
    /// worker ends once its app is neither wanted nor has containers.
    async fn app_worker(self: Arc<Self>, app: Name, worker: Arc<Worker>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), self.config.max_backoff);
        let mut image = ImageMemory::default();
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let desired = self.desired_app(&app).await;
            let pass = Pass {
                runtime: &self.runtime,
                app: &app,
                desired: desired.as_ref(),
                max_restart_wait: self.config.max_restart_wait,
                shutdown: &self.shutdown,
            };
            let retry = match pass.run(self.as_ref(), &mut image).await {
                Ok(PassOutcome::Interrupted) => continue,
                Ok(PassOutcome::Idle) if desired.is_none() => {
                    self.retire(&app).await;
                    return;
                }
                Ok(outcome) => {
                    backoff.reset();
                    if outcome == PassOutcome::Applied {
                        self.set_error(&app, image.note.clone());
                        self.report_now.notify_one();
                    }
                    None
                }
                Err(error) => {
                    tracing::warn!(app = %app, error = %error, retryable = error.is_retryable(), "applying app failed; will retry");
                    self.set_error(&app, Some(error.to_string()));
                    self.report_now.notify_one();
                    Some(backoff.next_delay())
                }
            };
            worker.backing_off.store(retry.is_some(), Ordering::Release);
            let retry = async {
                match retry {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = worker.wake.notified() => {}
                () = retry => {}
            }
        }
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

/// A worker's plan is moot as soon as the app's desired config is no longer the one it was
/// made for (any field: a sync reply may change a config without a newer version).
impl<R: ContainerRuntime> PassGuard for Shared<R> {
    async fn still_wanted(&self, app: &Name, planned_for: Option<&AppConfig>) -> bool {
        self.desired.lock().await.apps.get(app) == planned_for
    }

    async fn observe<Q: ContainerRuntime>(
        &self,
        _runtime: &Q,
    ) -> Result<Arc<Vec<ObservedContainer>>, DockerError> {
        // The passes of this agent run on its own runtime, which `observe` lists.
        Shared::observe(self).await
    }

    fn engine_changed(&self) {
        self.observation.generation.fetch_add(1, Ordering::AcqRel);
    }

    async fn pull_still_wanted(
        &self,
        app: &Name,
        _planned_for: Option<&AppConfig>,
        image: &str,
    ) -> bool {
        self.desired
            .lock()
            .await
            .apps
            .get(app)
            .is_some_and(|config| {
                config.running
                    && config
                        .image()
                        .is_ok_and(|reference| reference.canonical() == image)
            })
    }
}
