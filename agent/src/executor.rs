//! Executing plans: one observe → plan → execute pass over an app, shared by the agent's
//! per-app workers ([`crate::supervisor`]) and by [`converge_app`] (tests and tools), so
//! there is exactly one way a plan is carried out.
//!
//! Between two actions a pass asks its [`PassGuard`] whether the plan still matters: a
//! newer desired config (or shutdown) makes the rest of the plan moot, and finishing the
//! action in hand and re-planning from a fresh observation keeps every container
//! consistent.

use crate::error::DockerError;
use crate::reconcile::{self, Action, ObservedContainer};
use crate::runtime::{ContainerRuntime, ContainerSpec, ImageOutcome, containers_of};
use nebula_protocol::{AppConfig, Name, ObjectVersion, PullPolicy};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a rolling restart waits for one container to run (and be healthy).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const READY_POLL: Duration = Duration::from_millis(250);

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    /// Nothing to do: the app is converged.
    Idle,
    /// The whole plan ran.
    Applied,
    /// The desired config changed (or shutdown began) mid-plan; re-plan at once.
    Interrupted,
}

/// What a pass needs from the agent around it: whether a plan made for `planned_for` still
/// matters, and the engine's containers (the agent shares one listing among its workers).
pub trait PassGuard: Sync {
    fn still_wanted(
        &self,
        app: &Name,
        planned_for: Option<&AppConfig>,
    ) -> impl Future<Output = bool> + Send;

    /// Every container of the engine that `runtime` manages.
    fn observe<R: ContainerRuntime>(
        &self,
        runtime: &R,
    ) -> impl Future<Output = Result<Arc<Vec<ObservedContainer>>, DockerError>> + Send {
        async { runtime.list_containers().await.map(Arc::new) }
    }

    /// Called after a pass changed (or may have changed) containers.
    fn engine_changed(&self) {}

    /// Whether a pull of `image` begun for `planned_for` is still worth finishing. A
    /// change that keeps the image (an env var, a port) must not throw away a download
    /// half done on a slow link; by default, whether the plan still matters.
    fn pull_still_wanted(
        &self,
        app: &Name,
        planned_for: Option<&AppConfig>,
        image: &str,
    ) -> impl Future<Output = bool> + Send {
        let _ = image;
        self.still_wanted(app, planned_for)
    }
}

/// What a long step watches for while it runs.
#[derive(Debug, Clone, Copy)]
enum Watch<'a> {
    /// Any change of the desired config.
    Plan,
    /// A change of the image (or the app no longer running here).
    Image(&'a str),
}

/// A guard for a desired config that cannot change under the pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedDesired;

impl PassGuard for FixedDesired {
    async fn still_wanted(&self, _app: &Name, _planned_for: Option<&AppConfig>) -> bool {
        true
    }
}

/// What an app's worker remembers between passes about the app's image, so that a pass
/// that fails after the pull (a port taken, a name conflict) does not go back to the
/// registry on every retry: one pull per (incarnation, revision) of the app.
#[derive(Debug, Default)]
pub struct ImageMemory {
    /// The version whose image was made available (pulled, found present, or a local copy
    /// after a failed pull).
    ready_for: Option<ObjectVersion>,
    /// A failed pull that fell back to a local copy, for the app's report.
    pub note: Option<String>,
}

/// How often a long step (a pull, a rolling restart's wait) checks whether its plan is
/// still wanted.
const SUPERSEDED_POLL: Duration = Duration::from_millis(500);

/// One app's pass: what to converge, and how.
#[derive(Debug)]
pub struct Pass<'a, R> {
    pub runtime: &'a R,
    pub app: &'a Name,
    /// `None`: the app is not wanted here; its containers go.
    pub desired: Option<&'a AppConfig>,
    pub max_restart_wait: Duration,
    pub shutdown: &'a CancellationToken,
}

/// Container actions a pass runs together: removals, then (re)creations, then repairs. An
/// app without `rolling_restart` has no reason to wait for one container before touching
/// the next, and a container that ignores SIGTERM makes each stop last its whole timeout.
fn batch_kind(action: &Action) -> Option<u8> {
    match action {
        Action::Remove { .. } => Some(0),
        Action::Replace { .. } | Action::Create { .. } => Some(1),
        Action::Start { .. } | Action::Restart { .. } => Some(2),
        Action::RandomWait | Action::EnsureImage | Action::AwaitReady { .. } => None,
    }
}

/// Splits a plan into steps run one after another; with `parallel`, consecutive container
/// actions of one kind form one step whose actions run at once.
fn steps(plan: &[Action], parallel: bool) -> Vec<&[Action]> {
    let mut steps = Vec::new();
    let mut rest = plan;
    while let Some(first) = rest.first() {
        let length = match batch_kind(first) {
            Some(kind) if parallel => rest
                .iter()
                .take_while(|action| batch_kind(action) == Some(kind))
                .count(),
            _ => 1,
        };
        let (step, tail) = rest.split_at(length);
        steps.push(step);
        rest = tail;
    }
    steps
}

impl<R: ContainerRuntime> Pass<'_, R> {
    /// Observes, plans and executes once. `memory` carries what earlier passes of this app
    /// did with its image.
    pub async fn run(
        &self,
        guard: &impl PassGuard,
        memory: &mut ImageMemory,
    ) -> Result<PassOutcome, DockerError> {
        let all = guard.observe(self.runtime).await?;
        let observed: Vec<_> = containers_of(&all, self.app).cloned().collect();
        let plan = reconcile::plan_app(self.desired, self.runtime.capacity(), &observed);
        if plan.is_empty() {
            return Ok(PassOutcome::Idle);
        }
        let outcome = self.apply(&plan, guard, memory).await;
        guard.engine_changed();
        outcome
    }

    async fn apply(
        &self,
        plan: &[Action],
        guard: &impl PassGuard,
        memory: &mut ImageMemory,
    ) -> Result<PassOutcome, DockerError> {
        let version = self.desired.map(AppConfig::version);
        tracing::info!(app = %self.app, version = ?version, actions = plan.len(), "applying");
        // One container at a time only where the app asks for it, and only while it runs:
        // stopping a rolling app stops every container at once too.
        let parallel = self
            .desired
            .is_none_or(|app| !app.rolling_restart || !app.running);
        for step in steps(plan, parallel) {
            if self.shutdown.is_cancelled() || !guard.still_wanted(self.app, self.desired).await {
                return Ok(PassOutcome::Interrupted);
            }
            if let [action] = step {
                if !self.execute(action, guard, memory).await? {
                    return Ok(PassOutcome::Interrupted);
                }
            } else {
                // Every action of the step runs to its end (none is left half-done), then
                // the first failure, if any, fails the pass.
                let results = futures_util::future::join_all(
                    step.iter().map(|action| self.container_action(action)),
                )
                .await;
                let mut first_error = None;
                for error in results.into_iter().filter_map(Result::err) {
                    // The report carries one error per app; the log keeps every one.
                    tracing::warn!(app = %self.app, error = %error, "container action failed");
                    first_error.get_or_insert(error);
                }
                if let Some(error) = first_error {
                    return Err(error);
                }
            }
        }
        tracing::info!(app = %self.app, version = ?version, "applied");
        Ok(PassOutcome::Applied)
    }

    /// The spec of container `index` of the desired config.
    fn spec(&self, index: u32) -> Result<ContainerSpec, DockerError> {
        ContainerSpec::for_app(self.config()?, index)
    }

    fn config(&self) -> Result<&AppConfig, DockerError> {
        self.desired.ok_or_else(|| DockerError::InvalidSpec {
            app: self.app.to_string(),
            reason: "no desired config".into(),
        })
    }

    /// Runs one action; `false` when the plan was superseded while it ran.
    async fn execute(
        &self,
        action: &Action,
        guard: &impl PassGuard,
        memory: &mut ImageMemory,
    ) -> Result<bool, DockerError> {
        match action {
            Action::RandomWait => {
                if !self.max_restart_wait.is_zero() {
                    let ceiling =
                        u64::try_from(self.max_restart_wait.as_millis()).unwrap_or(u64::MAX);
                    let wait = Duration::from_millis(fastrand::u64(0..=ceiling));
                    tracing::info!(app = %self.app, wait_ms = wait.as_millis() as u64, "waiting before replacing containers");
                    tokio::select! {
                        () = self.shutdown.cancelled() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
            Action::EnsureImage => {
                let image = self.spec(0)?.image;
                let Some(result) = self
                    .unless_superseded(
                        guard,
                        Watch::Image(&image),
                        self.ensure_image(&image, memory),
                    )
                    .await
                else {
                    return Ok(false);
                };
                result?;
            }
            Action::AwaitReady { index } => {
                let name = self.spec(*index)?.name;
                let Some(result) = self
                    .unless_superseded(
                        guard,
                        Watch::Plan,
                        await_ready(self.runtime, &name, self.shutdown),
                    )
                    .await
                else {
                    return Ok(false);
                };
                result?;
            }
            container_action => self.container_action(container_action).await?,
        }
        Ok(true)
    }

    /// Runs `work` unless the desired config changes (or shutdown begins) first: `None`
    /// then, and `work` is dropped (a pull's request is closed, the engine gives it up).
    async fn unless_superseded<T>(
        &self,
        guard: &impl PassGuard,
        watch: Watch<'_>,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let superseded = async {
            loop {
                tokio::time::sleep(SUPERSEDED_POLL).await;
                let wanted = match watch {
                    Watch::Plan => guard.still_wanted(self.app, self.desired).await,
                    Watch::Image(image) => {
                        guard.pull_still_wanted(self.app, self.desired, image).await
                    }
                };
                if self.shutdown.is_cancelled() || !wanted {
                    return;
                }
            }
        };
        tokio::select! {
            output = work => Some(output),
            () = superseded => {
                tracing::info!(app = %self.app, "desired config changed; dropping the rest of the plan");
                None
            }
        }
    }

    /// Makes the desired image available: once per version of the app; without a pull when
    /// the image is present and either the app says `if_not_present` or the reference is a
    /// digest (which cannot move).
    async fn ensure_image(&self, image: &str, memory: &mut ImageMemory) -> Result<(), DockerError> {
        let config = self.config()?;
        let version = config.version();
        let pinned = config
            .image()
            .is_ok_and(|reference| reference.digest.is_some());
        let pulled_already = memory.ready_for == Some(version);
        // A local look, no registry round trip: an image removed since (by hand) is pulled
        // again even for the same version.
        if (pulled_already || pinned || config.pull_policy == PullPolicy::IfNotPresent)
            && self.runtime.image_present(image).await?
        {
            if !pulled_already {
                memory.note = None;
                tracing::info!(app = %self.app, image, "image present; not pulling");
            }
            memory.ready_for = Some(version);
            return Ok(());
        }
        match self.runtime.ensure_image(image).await? {
            ImageOutcome::Pulled => memory.note = None,
            ImageOutcome::LocalFallback { pull_error } => {
                memory.note = Some(format!(
                    "pull of {image} failed, running the local copy: {pull_error}"
                ));
            }
        }
        memory.ready_for = Some(version);
        Ok(())
    }

    /// Runs one container action (the ones a step may run together).
    async fn container_action(&self, action: &Action) -> Result<(), DockerError> {
        let runtime = self.runtime;
        match action {
            Action::Create { index } => runtime.create_container(&self.spec(*index)?).await,
            Action::Replace { index, name } => {
                let spec = self.spec(*index)?;
                runtime.remove_container(name).await?;
                runtime.create_container(&spec).await
            }
            Action::Remove { name } => runtime.remove_container(name).await,
            Action::Start { name } => {
                tracing::info!(app = %self.app, container = %name, "starting a stopped container");
                runtime.start_container(name).await
            }
            Action::Restart { name } => {
                tracing::warn!(app = %self.app, container = %name, "restarting an unhealthy container");
                runtime.restart_container(name).await
            }
            Action::RandomWait | Action::EnsureImage | Action::AwaitReady { .. } => {
                unreachable!("{action:?} is not a container action")
            }
        }
    }
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

/// Runs passes until the app is converged (or `max_passes` plans ran): the reconcile loop
/// of one app without the worker around it, for tests and tools. Returns the note of a
/// pull that fell back to a local image.
pub async fn converge_app<R: ContainerRuntime>(
    runtime: &R,
    app: &Name,
    desired: Option<&AppConfig>,
    max_passes: usize,
) -> Result<Option<String>, DockerError> {
    let shutdown = CancellationToken::new();
    let pass = Pass {
        runtime,
        app,
        desired,
        max_restart_wait: Duration::ZERO,
        shutdown: &shutdown,
    };
    let mut memory = ImageMemory::default();
    for _ in 0..max_passes {
        if pass.run(&FixedDesired, &mut memory).await? == PassOutcome::Idle {
            return Ok(memory.note);
        }
    }
    Err(DockerError::Operation {
        operation: "converge",
        target: app.to_string(),
        reason: format!("not converged after {max_passes} plans"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::simulated::SimulatedRuntime;
    use nebula_protocol::ContainersPer;

    const IMAGE: &str = "127.0.0.1:5000/nebula/test:1";
    const PINNED: &str = "127.0.0.1:5000/nebula/test@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn app(image: &str, policy: PullPolicy) -> AppConfig {
        let mut app = AppConfig::new(Name::new("web").expect("name"), image);
        app.app_id = 1;
        app.containers_per = ContainersPer::Server(1);
        app.pull_policy = policy;
        app
    }

    fn pulls(runtime: &SimulatedRuntime) -> usize {
        runtime
            .operations()
            .iter()
            .filter(|operation| operation.starts_with("pull "))
            .count()
    }

    /// Runs `passes` passes of `app` with one image memory, as a worker does.
    async fn run(runtime: &SimulatedRuntime, app: &AppConfig, passes: usize) -> Vec<bool> {
        let shutdown = CancellationToken::new();
        let pass = Pass {
            runtime,
            app: &app.app_name,
            desired: Some(app),
            max_restart_wait: Duration::ZERO,
            shutdown: &shutdown,
        };
        let mut memory = ImageMemory::default();
        let mut outcomes = Vec::new();
        for _ in 0..passes {
            outcomes.push(pass.run(&FixedDesired, &mut memory).await.is_ok());
        }
        outcomes
    }

    #[tokio::test]
    async fn if_not_present_and_digests_skip_the_pull_of_a_present_image() {
        for (image, policy) in [
            (IMAGE, PullPolicy::IfNotPresent),
            (PINNED, PullPolicy::Always),
        ] {
            let runtime = SimulatedRuntime::new();
            let config = app(image, policy);
            let canonical = config.image().expect("image").canonical();
            runtime.add_local_image(&canonical);
            assert_eq!(run(&runtime, &config, 2).await, vec![true, true]);
            assert_eq!(pulls(&runtime), 0, "{image} {policy:?}");
            assert_eq!(runtime.applied_revision(&config.app_name), Some(1));
        }
    }

    #[tokio::test]
    async fn an_absent_image_is_pulled_whatever_the_policy() {
        for policy in [PullPolicy::IfNotPresent, PullPolicy::Always] {
            let runtime = SimulatedRuntime::new();
            let config = app(IMAGE, policy);
            assert_eq!(run(&runtime, &config, 2).await, vec![true, true]);
            assert_eq!(pulls(&runtime), 1, "{policy:?}");
        }
        // `always` pulls a present image too: once per version.
        let runtime = SimulatedRuntime::new();
        let config = app(IMAGE, PullPolicy::Always);
        runtime.add_local_image(&config.image().expect("image").canonical());
        run(&runtime, &config, 2).await;
        assert_eq!(pulls(&runtime), 1);
    }

    #[tokio::test]
    async fn passes_failing_after_the_pull_pull_once_per_version() {
        let runtime = SimulatedRuntime::new();
        let mut config = app(IMAGE, PullPolicy::Always);
        // The container's name is taken by someone else: every pass fails at the create.
        runtime.add_foreign_container("web-1");
        assert_eq!(run(&runtime, &config, 3).await, vec![false, false, false]);
        assert_eq!(pulls(&runtime), 1);
        assert!(runtime.has_foreign_container("web-1"));
        // A new revision is pulled again, once.
        config.app_id = 2;
        run(&runtime, &config, 3).await;
        assert_eq!(pulls(&runtime), 2);
    }
}
