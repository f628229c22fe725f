//! Executing plans: one observe → plan → execute pass over an app, shared by the agent's
//! per-app workers ([`crate::supervisor`]) and by [`converge_app`] (tests and tools), so
//! there is exactly one way a plan is carried out.
//!
//! Between two actions a pass asks its [`PassGuard`] whether the plan still matters: a
//! newer desired config (or shutdown) makes the rest of the plan moot, and finishing the
//! action in hand and re-planning from a fresh observation keeps every container
//! consistent.

use crate::error::DockerError;
use crate::reconcile::{self, Action};
use crate::runtime::{ContainerRuntime, ContainerSpec, ImageOutcome, containers_of};
use nebula_protocol::{AppConfig, Name};
use std::future::Future;
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

/// Says whether a plan made for `planned_for` still matters.
pub trait PassGuard: Sync {
    fn still_wanted(
        &self,
        app: &Name,
        planned_for: Option<&AppConfig>,
    ) -> impl Future<Output = bool> + Send;
}

/// A guard for a desired config that cannot change under the pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedDesired;

impl PassGuard for FixedDesired {
    async fn still_wanted(&self, _app: &Name, _planned_for: Option<&AppConfig>) -> bool {
        true
    }
}

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

impl<R: ContainerRuntime> Pass<'_, R> {
    /// Observes, plans and executes once. `pull_note` collects a failed pull that fell
    /// back to a local image, for the app's report.
    pub async fn run(
        &self,
        guard: &impl PassGuard,
        pull_note: &mut Option<String>,
    ) -> Result<PassOutcome, DockerError> {
        let all = self.runtime.list_containers().await?;
        let observed: Vec<_> = containers_of(&all, self.app).cloned().collect();
        let plan = reconcile::plan_app(self.desired, self.runtime.capacity(), &observed);
        if plan.is_empty() {
            return Ok(PassOutcome::Idle);
        }
        let version = self.desired.map(AppConfig::version);
        tracing::info!(app = %self.app, version = ?version, actions = plan.len(), "applying");
        for action in &plan {
            if self.shutdown.is_cancelled() || !guard.still_wanted(self.app, self.desired).await {
                return Ok(PassOutcome::Interrupted);
            }
            execute(
                self.runtime,
                self.app,
                self.desired,
                action,
                self.max_restart_wait,
                self.shutdown,
                pull_note,
            )
            .await?;
        }
        tracing::info!(app = %self.app, version = ?version, "applied");
        Ok(PassOutcome::Applied)
    }
}

/// Runs one action. `pull_note` collects a failed pull that fell back to a local image, for
/// the app's report.
async fn execute<R: ContainerRuntime>(
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
    let mut pull_note = None;
    for _ in 0..max_passes {
        if pass.run(&FixedDesired, &mut pull_note).await? == PassOutcome::Idle {
            return Ok(pull_note);
        }
    }
    Err(DockerError::Operation {
        operation: "converge",
        target: app.to_string(),
        reason: format!("not converged after {max_passes} plans"),
    })
}
