//! Running the device's cron jobs (issue 14): the I/O around the pure [`Scheduler`].
//!
//! A task of its own ([`run`]), started with the agent and independent of the broker
//! connection: runs go on while the device is offline, from the desired state persisted at
//! boot. It wakes at the scheduler's next fire, at least once a minute, and whenever the
//! desired cron jobs change, and each time ([`CronRunner::tick`]):
//!
//! 1. lists the job runs on the engine (one listing, which also answers "is a run of this
//!    job still going?" for the scheduler — asked of the engine, not remembered, so a run
//!    that ended or was removed by hand is seen as such);
//! 2. stops and removes the runs of jobs that are stopped (`running: false`) or no longer
//!    desired — the latter only once this process has seen the desired state confirmed (a
//!    sync, a group change; at start in app mode), as with apps' orphans, so that a state
//!    file that lost its jobs removes nothing before the control plane says so;
//! 3. starts one run per due fire ([`StartRun`], spawned: a slow pull of one job's image
//!    must not make the next minute's fires of the others late), after which the job's
//!    finished runs beyond the [`KEPT_RUNS`] newest are removed.
//!
//! Runs are labelled as cron runs ([`crate::runtime::cron`]), which the app listing never
//! returns: app reconcile does not see them, and an image prune leaves their images alone
//! while a run (even a finished one) still uses them.

use crate::cron::{Fire, Scheduler};
use crate::error::DockerError;
use crate::runtime::{ContainerRuntime, ContainerSpec, ImageOutcome, ObservedCronContainer};
use crate::supervisor::Shared;
use nebula_protocol::{CronJob, ImageRef, Name, ObjectVersion};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

/// Finished runs kept per job, for their logs and exit codes (API.md "Cron jobs").
pub const KEPT_RUNS: usize = 3;

/// The longest the runner sleeps: the scheduler wants to be asked at least once a minute
/// ([`crate::cron::LATE_LIMIT`]), and stopped jobs' runs are looked for as often.
const MAX_SLEEP: Duration = Duration::from_secs(60);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain sets and maps stay consistent even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The jobs a runner is told, their fires, and what its runs being started need.
#[derive(Debug, Default)]
pub struct CronRunner {
    scheduler: Scheduler,
    jobs: BTreeMap<Name, CronJob>,
    /// Jobs with a run being started (pulling, creating): they count as running, so a slow
    /// pull is not overtaken by the next fire.
    starting: Arc<Mutex<BTreeSet<Name>>>,
    /// The job version whose image was made available in this process: a run pulls once
    /// per job version (as an app pulls once per version), later runs use the local image.
    pulled: Arc<Mutex<BTreeMap<Name, ObjectVersion>>>,
    /// Whether runs of jobs that are not desired may be removed (see the module doc).
    sweep: bool,
}

impl CronRunner {
    /// Sets the desired jobs at `now` (Unix seconds). A job whose config is unchanged keeps
    /// its next fire.
    pub fn set_jobs(&mut self, jobs: &BTreeMap<Name, CronJob>, now: i64) {
        if &self.jobs == jobs {
            return;
        }
        let list: Vec<CronJob> = jobs.values().cloned().collect();
        for dropped in self.scheduler.set_jobs(&list, now) {
            tracing::info!(cron_job = %dropped, "cron job no longer runs here");
        }
        self.jobs = jobs.clone();
    }

    /// The desired state has been confirmed in this process: from now on runs of jobs that
    /// are not desired are removed.
    pub fn enable_sweep(&mut self) {
        self.sweep = true;
    }

    /// When the next fire is due, if any job has one.
    pub fn next_wake(&self) -> Option<i64> {
        self.scheduler.next_wake()
    }

    /// Whether runs of `job` should exist at all.
    fn wanted(&self, job: &Name) -> Option<bool> {
        match self.jobs.get(job) {
            Some(config) => Some(config.running),
            None => self.sweep.then_some(false),
        }
    }

    /// One wake-up at `now`: removes the runs of stopped or gone jobs, decides the due fires
    /// (a job with a run going, or being started, is skipped) and returns the runs to start.
    pub async fn tick<R: ContainerRuntime>(&mut self, runtime: &R, now: i64) -> Vec<StartRun> {
        let runs = match runtime.list_cron_containers().await {
            Ok(runs) => Some(runs),
            Err(error) => {
                tracing::warn!(error = %error, "cannot list cron job runs; due fires are skipped");
                None
            }
        };
        if let Some(runs) = &runs {
            self.remove_unwanted(runtime, runs).await;
        }
        let starting = lock(&self.starting).clone();
        let going = |job: &Name| {
            starting.contains(job)
                || runs
                    .as_ref()
                    .is_none_or(|runs| runs.iter().any(|run| &run.job == job && !run.is_finished()))
        };
        let mut starts = Vec::new();
        for fire in self.scheduler.due(now, going) {
            match fire {
                Fire::Start { job, at } => {
                    let Some(config) = self.jobs.get(&job) else {
                        continue;
                    };
                    // The clock stepped back over a minute this job already fired in: the
                    // run of that fire exists (finished, or it would count as going). Running
                    // it again would replace it, and lose its exit code and logs.
                    let name = crate::runtime::cron::run_name(&job, at);
                    if runs
                        .as_ref()
                        .is_some_and(|runs| runs.iter().any(|run| run.name == name))
                    {
                        tracing::warn!(cron_job = %job, fire_time = at, "cron job fire already ran (the clock went back): skipped");
                        continue;
                    }
                    tracing::info!(cron_job = %job, fire_time = at, "cron job due: starting a run");
                    lock(&self.starting).insert(job.clone());
                    starts.push(StartRun {
                        job: config.clone(),
                        at,
                        pulled: self.pulled.clone(),
                        starting: Starting {
                            job,
                            set: self.starting.clone(),
                        },
                    });
                }
                Fire::StillRunning { job, at } if runs.is_some() => {
                    tracing::warn!(cron_job = %job, fire_time = at, "cron job due but its previous run is still going: skipped");
                }
                Fire::StillRunning { job, at } => {
                    tracing::warn!(cron_job = %job, fire_time = at, "cron job due but the engine's runs could not be listed: skipped");
                }
                Fire::Missed { job, at } => {
                    tracing::warn!(cron_job = %job, fire_time = at, now, "cron job fire missed (the clock jumped or the device was suspended): skipped");
                }
            }
        }
        starts
    }

    /// Stops and removes every run of a job that is stopped, or not desired once sweeping.
    async fn remove_unwanted<R: ContainerRuntime>(
        &self,
        runtime: &R,
        runs: &[ObservedCronContainer],
    ) {
        let starting = lock(&self.starting).clone();
        for run in runs {
            if self.wanted(&run.job) != Some(false) || starting.contains(&run.job) {
                continue;
            }
            match runtime.remove_container(&run.name).await {
                Ok(()) => {
                    tracing::info!(cron_job = %run.job, container = %run.name, "removed a run of a cron job that is stopped or gone");
                }
                Err(error) => {
                    tracing::warn!(cron_job = %run.job, container = %run.name, error = %error, "cannot remove a run of a stopped or gone cron job; will retry");
                }
            }
        }
    }
}

/// Marks a job as having a run being started, until dropped.
#[derive(Debug)]
struct Starting {
    job: Name,
    set: Arc<Mutex<BTreeSet<Name>>>,
}

impl Drop for Starting {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.job);
    }
}

/// One run to start: the job's config as it was when the fire was due.
#[derive(Debug)]
pub struct StartRun {
    job: CronJob,
    at: i64,
    pulled: Arc<Mutex<BTreeMap<Name, ObjectVersion>>>,
    starting: Starting,
}

impl StartRun {
    pub fn job(&self) -> &Name {
        &self.job.cron_job_name
    }

    /// Starts the run — `<job>-<fire time>`, its image pulled first when this job version
    /// has not pulled it yet or it is missing — then removes the job's finished runs beyond
    /// the [`KEPT_RUNS`] newest. Returns the run's container name.
    pub async fn start<R: ContainerRuntime>(self, runtime: &R) -> Result<String, DockerError> {
        let spec = ContainerSpec::for_cron_run(&self.job, self.at)?;
        self.make_image_available(runtime, &spec.image).await?;
        runtime.create_container(&spec).await?;
        tracing::info!(cron_job = %self.job.cron_job_name, container = %spec.name, "started cron run");
        drop(self.starting);
        if let Err(error) = remove_old_runs(runtime, &self.job.cron_job_name).await {
            tracing::warn!(cron_job = %self.job.cron_job_name, error = %error, "cannot remove old runs; the next run tries again");
        }
        Ok(spec.name)
    }

    async fn make_image_available<R: ContainerRuntime>(
        &self,
        runtime: &R,
        image: &str,
    ) -> Result<(), DockerError> {
        let name = &self.job.cron_job_name;
        let version = self.job.version();
        let pulled_already = lock(&self.pulled).get(name) == Some(&version);
        // A digest names one image for good: present is current.
        let by_digest = image
            .parse::<ImageRef>()
            .is_ok_and(|reference| reference.digest.is_some());
        let present = runtime.image_present(image).await?;
        if (!present || !(pulled_already || by_digest))
            && let ImageOutcome::LocalFallback { pull_error } = runtime.ensure_image(image).await?
        {
            tracing::warn!(cron_job = %name, image, error = %pull_error, "pull failed; the run uses the local image");
        }
        lock(&self.pulled).insert(name.clone(), version);
        Ok(())
    }
}

/// Removes `job`'s finished runs but the [`KEPT_RUNS`] newest.
pub async fn remove_old_runs<R: ContainerRuntime>(
    runtime: &R,
    job: &Name,
) -> Result<(), DockerError> {
    let mut finished: Vec<ObservedCronContainer> = runtime
        .list_cron_containers()
        .await?
        .into_iter()
        .filter(|run| &run.job == job && run.is_finished())
        .collect();
    // Newest first; a run whose name carries no fire time (renamed by hand) goes first.
    finished.sort_by_key(|run| std::cmp::Reverse(run.fired_at()));
    for run in finished.iter().skip(KEPT_RUNS) {
        runtime.remove_container(&run.name).await?;
        tracing::info!(cron_job = %job, container = %run.name, "removed an old run");
    }
    Ok(())
}

fn unix_now() -> (i64, Duration) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (
        i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        since_epoch,
    )
}

/// How long to sleep from `now_exact` (since the epoch) until `wake` (Unix seconds), at
/// most [`MAX_SLEEP`]; a little past the second so that the clock then reads `wake`.
fn sleep_until(wake: Option<i64>, now_exact: Duration) -> Duration {
    let Some(wake) = wake.and_then(|wake| u64::try_from(wake).ok()) else {
        return MAX_SLEEP;
    };
    Duration::from_secs(wake)
        .saturating_sub(now_exact)
        .saturating_add(Duration::from_millis(20))
        .min(MAX_SLEEP)
}

/// The agent's cron task: runs until shutdown (see the module doc).
pub async fn run<R: ContainerRuntime>(shared: Arc<Shared<R>>) {
    let mut runner = CronRunner::default();
    loop {
        if shared.take_cron_sweep() {
            runner.enable_sweep();
        }
        let jobs = shared.desired_cron_jobs().await;
        let (now, _) = unix_now();
        runner.set_jobs(&jobs, now);
        for start in runner.tick(&shared.runtime, now).await {
            let task = shared.clone();
            shared.tasks.spawn(
                async move {
                    let job = start.job().clone();
                    let result = tokio::select! {
                        // A pull in flight must not hold up shutdown; a half-created run is
                        // `created`, a finished run to the next cleanup.
                        () = task.shutdown.cancelled() => return,
                        result = start.start(&task.runtime) => result,
                    };
                    if let Err(error) = result {
                        tracing::warn!(cron_job = %job, error = %error, "cron run could not start; this fire is missed");
                    }
                }
                .in_current_span(),
            );
        }
        let wait = sleep_until(runner.next_wake(), unix_now().1);
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = shared.cron_now.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::simulated::SimulatedRuntime;
    use nebula_protocol::placement::{LABEL_CRON_JOB_NAME, LABEL_INCARNATION};

    /// 2026-12-01T10:00:00Z.
    const T0: i64 = 1_796_119_200;
    const MINUTE: i64 = 60;
    const IMAGE: &str = "127.0.0.1:5000/nebula/test:1";

    fn name(value: &str) -> Name {
        Name::new(value).expect("name")
    }

    fn job(job_name: &str, schedule: &str) -> CronJob {
        let mut job = CronJob::new(name(job_name), schedule, IMAGE);
        job.incarnation = 3;
        job.cron_job_id = 5;
        job
    }

    fn jobs(list: &[CronJob]) -> BTreeMap<Name, CronJob> {
        list.iter()
            .map(|job| (job.cron_job_name.clone(), job.clone()))
            .collect()
    }

    /// One wake-up at `now` whose runs are started before it returns.
    async fn tick(runner: &mut CronRunner, runtime: &SimulatedRuntime, now: i64) -> Vec<String> {
        let mut started = Vec::new();
        for start in runner.tick(runtime, now).await {
            started.push(start.start(runtime).await.expect("start"));
        }
        started
    }

    #[tokio::test]
    async fn a_fire_starts_one_run_with_the_jobs_config() {
        let runtime = SimulatedRuntime::new();
        let mut runner = CronRunner::default();
        let mut backup = job("backup", "*/5 * * * *");
        backup.env_vars.insert("TARGET".into(), "nas".into());
        backup.volumes = vec!["/data:/data".into()];
        backup.devices = vec!["/dev/null:/dev/x".into()];
        backup.networks = vec!["none".into()];
        backup.privileged = true;
        runner.set_jobs(&jobs(&[backup.clone()]), T0 + 1);
        assert_eq!(runner.next_wake(), Some(T0 + 5 * MINUTE));
        assert!(tick(&mut runner, &runtime, T0 + MINUTE).await.is_empty());

        let started = tick(&mut runner, &runtime, T0 + 5 * MINUTE).await;
        let expected = format!("backup-{}", T0 + 5 * MINUTE);
        assert_eq!(started, vec![expected.clone()]);
        let spec = runtime.spec(&expected).expect("created");
        assert_eq!(spec.image, IMAGE);
        assert_eq!(spec.labels["orchestrator"], "nebula");
        assert_eq!(spec.labels[LABEL_CRON_JOB_NAME], "backup");
        assert_eq!(spec.labels["cron_job_id"], "5");
        assert_eq!(spec.labels[LABEL_INCARNATION], "3");
        assert_eq!(spec.env, vec!["TARGET=nas"]);
        assert_eq!(spec.volumes, backup.volumes);
        assert_eq!(spec.devices, backup.devices);
        assert!(spec.privileged);
        assert_eq!(
            spec.network,
            crate::runtime::NetworkPlan::Mode("none".into())
        );
        assert_eq!(spec.restart, crate::runtime::RestartPolicy::No);
        // Pulled once for this job version; the app listing does not see the run.
        assert_eq!(
            runtime.operations(),
            vec![format!("pull {IMAGE}"), format!("create {expected}")]
        );
        assert!(runtime.list_containers().await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn a_run_still_going_is_not_started_twice() {
        let runtime = SimulatedRuntime::new();
        let mut runner = CronRunner::default();
        runner.set_jobs(&jobs(&[job("tick", "* * * * *")]), T0);
        assert_eq!(tick(&mut runner, &runtime, T0 + MINUTE).await.len(), 1);
        // Simulated runs keep running until told otherwise: the next fire is skipped.
        assert!(
            tick(&mut runner, &runtime, T0 + 2 * MINUTE)
                .await
                .is_empty()
        );
        // A run being started (a slow pull) counts as going too.
        runtime.set_state(&format!("tick-{}", T0 + MINUTE), "exited");
        let pending = runner.tick(&runtime, T0 + 3 * MINUTE).await;
        assert_eq!(pending.len(), 1);
        assert!(runner.tick(&runtime, T0 + 4 * MINUTE).await.is_empty());
        drop(pending);
        // Once the run ended, the next fire starts one; pulled once for this version.
        assert_eq!(
            tick(&mut runner, &runtime, T0 + 5 * MINUTE).await,
            vec![format!("tick-{}", T0 + 5 * MINUTE)]
        );
        let pulls = runtime
            .operations()
            .iter()
            .filter(|operation| operation.starts_with("pull"))
            .count();
        assert_eq!(pulls, 1);
    }

    #[tokio::test]
    async fn finished_runs_are_kept_to_the_newest_three() {
        let runtime = SimulatedRuntime::new();
        let mut runner = CronRunner::default();
        let tick_job = job("tick", "* * * * *");
        runner.set_jobs(&jobs(std::slice::from_ref(&tick_job)), T0);
        for minute in 1..=6 {
            let started = tick(&mut runner, &runtime, T0 + minute * MINUTE).await;
            assert_eq!(started.len(), 1);
            runtime.set_state(&started[0], "exited");
        }
        let names = |minutes: &[i64]| -> Vec<String> {
            minutes
                .iter()
                .map(|minute| format!("tick-{}", T0 + minute * MINUTE))
                .collect()
        };
        // After the 6th fire: runs 3, 4, 5 (finished) and 6 were left then; 6 finished since.
        assert_eq!(runtime.cron_run_names(&name("tick")), names(&[3, 4, 5, 6]));
        remove_old_runs(&runtime, &name("tick"))
            .await
            .expect("cleanup");
        assert_eq!(runtime.cron_run_names(&name("tick")), names(&[4, 5, 6]));
        // Another job's runs are not counted with these.
        let mut other = CronRunner::default();
        other.set_jobs(&jobs(&[job("other", "* * * * *")]), T0);
        tick(&mut other, &runtime, T0 + MINUTE).await;
        assert_eq!(runtime.cron_run_names(&name("tick")).len(), 3);
        assert_eq!(runtime.cron_run_names(&name("other")).len(), 1);
    }

    #[tokio::test]
    async fn stopped_and_removed_jobs_lose_their_runs() {
        let runtime = SimulatedRuntime::new();
        let mut runner = CronRunner::default();
        let a = job("a", "* * * * *");
        let b = job("b", "* * * * *");
        runner.set_jobs(&jobs(&[a.clone(), b.clone()]), T0);
        assert_eq!(tick(&mut runner, &runtime, T0 + MINUTE).await.len(), 2);

        // a stopped: its run is stopped and removed at once, and it fires no more.
        let mut stopped = a.clone();
        stopped.cron_job_id += 1;
        stopped.running = false;
        runner.set_jobs(&jobs(&[stopped, b.clone()]), T0 + MINUTE + 1);
        assert!(
            tick(&mut runner, &runtime, T0 + MINUTE + 1)
                .await
                .is_empty()
        );
        assert!(runtime.cron_run_names(&name("a")).is_empty());

        // b no longer desired: its runs stay until the desired state is confirmed (a state
        // file that lost its jobs must not remove runs before the sync)...
        runner.set_jobs(&BTreeMap::new(), T0 + MINUTE + 2);
        tick(&mut runner, &runtime, T0 + MINUTE + 2).await;
        assert_eq!(runtime.cron_run_names(&name("b")).len(), 1);
        // ... then go.
        runner.enable_sweep();
        tick(&mut runner, &runtime, T0 + MINUTE + 3).await;
        assert!(runtime.cron_run_names(&name("b")).is_empty());
        assert!(
            runtime
                .operations()
                .contains(&format!("remove b-{}", T0 + MINUTE))
        );
        assert_eq!(runner.next_wake(), None);
    }

    #[tokio::test]
    async fn app_reconcile_and_prune_leave_runs_alone() {
        let runtime = SimulatedRuntime::new();
        let mut runner = CronRunner::default();
        runner.set_jobs(&jobs(&[job("tick", "* * * * *")]), T0);
        let run = tick(&mut runner, &runtime, T0 + MINUTE).await.remove(0);
        runtime.set_state(&run, "exited");
        // An app pass that wants nothing removes nothing of the run.
        let app = name("tick");
        crate::executor::converge_app(&runtime, &app, None, 2)
            .await
            .expect("converge");
        runtime.prune_images().await.expect("prune");
        assert_eq!(runtime.cron_run_names(&name("tick")), vec![run]);
        // The finished run still holds its image.
        assert!(runtime.image_present(IMAGE).await.expect("present"));
    }

    #[test]
    fn the_runner_sleeps_until_the_next_fire_and_at_most_a_minute() {
        let now = Duration::from_millis(1_000_500);
        assert_eq!(sleep_until(Some(1_030), now), Duration::from_millis(29_520));
        assert_eq!(sleep_until(Some(5_000), now), MAX_SLEEP);
        assert_eq!(sleep_until(None, now), MAX_SLEEP);
        // A wake already past: at once.
        assert_eq!(sleep_until(Some(900), now), Duration::from_millis(20));
    }
}
