//! Device reports (DESIGN §3): what the device is told to run, what it runs, and how loaded
//! it is. Built from the desired state and one observation of the runtime (one listing of
//! the app containers, one of the cron runs). The control plane's device inventory and
//! rollout status are made of these facts (issue 15); its report history shows each cron
//! job's runs.

use crate::config::Mode;
use crate::device::{self, CpuSampler};
use crate::reconcile;
use crate::runtime::ObservedCronContainer;
use crate::runtime::{ContainerRuntime, containers_of};
use crate::supervisor::Shared;
use nebula_protocol::{
    AppReport, ContainerReport, CronContainerReport, CronJobReport, DeviceMode, DeviceReport, Name,
    ResourceUsage,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The agent's reporting session: a random id made at start and a sequence number per
/// report, so that the control plane can order one device's reports without trusting the
/// device's clock (boards without a real-time clock boot in 1970 until NTP answers).
#[derive(Debug)]
pub struct Session {
    id: u64,
    sequence: AtomicU64,
    started: Instant,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            id: fastrand::u64(..),
            sequence: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Session {
    /// The id and the next sequence number.
    fn next(&self) -> (u64, u64) {
        (self.id, self.sequence.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// Builds a report of the device now.
pub async fn build<R: ContainerRuntime>(shared: &Shared<R>, cpu: &mut CpuSampler) -> DeviceReport {
    let desired = shared.desired().await;
    let capacity = shared.runtime.capacity();
    let (containers, list_error) = match shared.runtime.list_containers().await {
        Ok(containers) => (containers, None),
        Err(error) => (Vec::new(), Some(error.to_string())),
    };
    let mut apps: BTreeSet<Name> = desired.apps.keys().cloned().collect();
    apps.extend(
        containers
            .iter()
            .map(|container| container.app_name.clone()),
    );
    if let Mode::Apps(configured) = &shared.config.mode {
        apps.extend(configured.iter().cloned());
    }

    // Restart counts need one inspection per container (Docker's list does not carry
    // them); reports are made on changes and every interval, not in a hot loop.
    let mut restart_counts = std::collections::HashMap::new();
    for container in &containers {
        if let Some(count) = shared.runtime.restart_count(&container.name).await {
            restart_counts.insert(container.name.clone(), count);
        }
    }
    let docker_version = shared.runtime.engine_version().await;
    // One listing of the runs: a failed one reports the jobs without runs (the app listing
    // of the same engine carries its error).
    let cron_runs = shared
        .runtime
        .list_cron_containers()
        .await
        .unwrap_or_default();
    let cron_jobs = cron_reports(desired.cron_jobs.keys().cloned(), cron_runs);

    let mut updated = list_error.is_none();
    let app_reports = apps
        .into_iter()
        .map(|app| {
            let config = desired.apps.get(&app);
            let observed: Vec<_> = containers_of(&containers, &app).cloned().collect();
            let applied = reconcile::applied_revision(config, capacity, &observed);
            let desired_revision = config.map(|config| config.app_id);
            // Judged on the containers' labels (incarnation and config hash included), not
            // on revision numbers: a re-created app's revision 1 is not the deleted one's.
            let converged = reconcile::is_converged(config, capacity, &observed);
            if !converged {
                updated = false;
            }
            AppReport {
                app_name: app.clone(),
                desired_revision,
                applied_revision: applied,
                containers: observed
                    .iter()
                    .map(|container| ContainerReport {
                        name: container.name.clone(),
                        image: container.image.clone(),
                        state: container.state.clone(),
                        health: container.health.map(|health| health.as_str().to_string()),
                        app_id: container.app_id,
                        restart_count: restart_counts.get(&container.name).copied(),
                        incarnation: container.incarnation,
                    })
                    .collect(),
                error: shared.app_error(&app).or_else(|| list_error.clone()),
                desired_incarnation: config.map(|config| config.incarnation),
                converged: converged && list_error.is_none(),
            }
        })
        .collect();

    let host = if shared.runtime.reports_host_resources() {
        device::host_facts()
    } else {
        // A simulated device: thousands in one process would all report the simulator's
        // host, which says nothing about them.
        device::HostFacts::default()
    };
    let (session, sequence) = shared.report_session.next();
    let resources = if shared.runtime.reports_host_resources() {
        device::resource_usage(cpu)
    } else {
        ResourceUsage {
            cpu_cores: capacity.cpu_cores,
            cpu_percent: 0.0,
            memory_total_bytes: capacity.memory_mb * 1024 * 1024,
            memory_used_bytes: 0,
            root_disk_total_bytes: 0,
            root_disk_used_bytes: 0,
        }
    };

    DeviceReport {
        device_id: shared.config.device_id.clone(),
        hostname: shared.config.hostname.clone(),
        device_group: match &shared.config.mode {
            Mode::Group(group) => Some(group.clone()),
            Mode::Apps(_) => None,
        },
        device_group_id: desired.group.as_ref().map(|group| group.device_group_id),
        prune_id: desired.group.as_ref().map(|group| group.prune_id),
        report_creation_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs()),
        updated,
        agent_version: AGENT_VERSION.to_string(),
        apps: app_reports,
        resources,
        target: crate::build_info::TARGET.to_string(),
        os: host.os,
        kernel: host.kernel,
        docker_version,
        uptime_secs: host.uptime_secs,
        agent_uptime_secs: shared.report_session.started.elapsed().as_secs(),
        report_interval_secs: shared.config.report_interval.as_secs(),
        mode: match &shared.config.mode {
            Mode::Group(group) => DeviceMode::Group(group.clone()),
            Mode::Apps(apps) => DeviceMode::Apps(apps.clone()),
        },
        session,
        sequence,
        device_group_incarnation: desired.group.as_ref().map(|group| group.incarnation),
        stopping: false,
        cron_jobs,
    }
}

/// Every job in `jobs` (the desired ones) and every job with runs in `runs`, by name, each
/// with its runs, oldest fire first.
fn cron_reports(
    jobs: impl IntoIterator<Item = Name>,
    runs: Vec<ObservedCronContainer>,
) -> Vec<CronJobReport> {
    let mut by_job: BTreeMap<Name, Vec<ObservedCronContainer>> =
        jobs.into_iter().map(|job| (job, Vec::new())).collect();
    for run in runs {
        by_job.entry(run.job.clone()).or_default().push(run);
    }
    by_job
        .into_iter()
        .map(|(cron_job_name, mut runs)| {
            // A run whose name carries no fire time (renamed by hand) comes first.
            runs.sort_by(|a, b| (a.fired_at(), &a.name).cmp(&(b.fired_at(), &b.name)));
            CronJobReport {
                cron_job_name,
                containers: runs
                    .into_iter()
                    .map(|run| CronContainerReport {
                        name: run.name,
                        image: run.image,
                        state: run.state,
                        cron_job_id: run.cron_job_id,
                        incarnation: run.incarnation,
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, HostIdentity};
    use crate::cron_runner::CronRunner;
    use crate::runtime::ContainerSpec;
    use crate::runtime::simulated::SimulatedRuntime;
    use crate::state::{DesiredState, StateStore};
    use nebula_protocol::CronJob;
    use std::collections::HashMap;
    use tokio_util::sync::CancellationToken;

    /// 2026-12-01T10:00:00Z.
    const T0: i64 = 1_796_119_200;
    const IMAGE: &str = "127.0.0.1:5000/nebula/test:1";

    fn name(value: &str) -> Name {
        Name::new(value).expect("name")
    }

    fn job(job_name: &str, schedule: &str) -> CronJob {
        let mut job = CronJob::new(name(job_name), schedule, IMAGE);
        job.cron_job_id = 4;
        job.incarnation = 2;
        job
    }

    #[tokio::test]
    async fn a_report_lists_each_cron_job_with_its_runs() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let environment = HashMap::from([
            ("NEBULA_DEVICE_GROUP", "edge"),
            ("NEBULA_DEVICE_ID", "pi-1"),
        ]);
        let config = Config::from_env(&environment, &HostIdentity::default()).expect("config");
        // `idle` fires at 03:00 only: not in these minutes.
        let (tick, idle) = (job("tick", "* * * * *"), job("idle", "0 3 * * *"));
        let desired = DesiredState {
            cron_jobs: [&tick, &idle]
                .into_iter()
                .map(|job| (job.cron_job_name.clone(), job.clone()))
                .collect(),
            ..DesiredState::default()
        };
        let runtime = SimulatedRuntime::new();
        let shared = crate::supervisor::Shared::new(
            config,
            runtime.clone(),
            StateStore::new(directory.path()),
            desired.clone(),
            CancellationToken::new(),
        );
        // Two fires of `tick` through the cron runner: the first run finished, the second
        // still going.
        let mut runner = CronRunner::default();
        runner.set_jobs(&desired.cron_jobs, T0);
        for minute in [1, 2] {
            for start in runner.tick(&runtime, T0 + minute * 60).await {
                start.start(&runtime).await.expect("run started");
            }
            if minute == 1 {
                runtime.set_state(&format!("tick-{}", T0 + 60), "exited");
            }
        }
        // A job this device no longer holds still has a run on the engine (its runs go once
        // the desired state is confirmed).
        let gone = job("gone", "* * * * *");
        runtime
            .create_container(&ContainerSpec::for_cron_run(&gone, T0).expect("spec"))
            .await
            .expect("run of a job no longer held");

        let report = build(&shared, &mut crate::device::CpuSampler::default()).await;
        let run = |job: &str, at: i64, state: &str| CronContainerReport {
            name: format!("{job}-{at}"),
            image: IMAGE.into(),
            state: state.into(),
            cron_job_id: Some(4),
            incarnation: Some(2),
        };
        assert_eq!(
            report.cron_jobs,
            vec![
                CronJobReport {
                    cron_job_name: name("gone"),
                    containers: vec![run("gone", T0, "running")],
                },
                CronJobReport {
                    cron_job_name: name("idle"),
                    containers: Vec::new(),
                },
                CronJobReport {
                    cron_job_name: name("tick"),
                    containers: vec![
                        run("tick", T0 + 60, "exited"),
                        run("tick", T0 + 120, "running"),
                    ],
                },
            ]
        );
        // Cron runs are not app containers, and do not make the device less updated.
        assert!(report.apps.is_empty());
        assert!(report.updated);
    }

    #[test]
    fn runs_are_ordered_by_fire_time_and_jobs_by_name() {
        let observed = |job: &str, name: &str| ObservedCronContainer {
            name: name.into(),
            job: Name::new(job).expect("name"),
            cron_job_id: None,
            incarnation: None,
            image: IMAGE.into(),
            state: "exited".into(),
        };
        let reports = cron_reports(
            [name("b")],
            vec![
                observed("b", "b-600"),
                observed("b", "b-60"),
                observed("b", "renamed"),
                observed("a", "a-120"),
            ],
        );
        let names: Vec<(String, Vec<String>)> = reports
            .into_iter()
            .map(|job| {
                (
                    job.cron_job_name.to_string(),
                    job.containers.into_iter().map(|run| run.name).collect(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("a".to_string(), vec!["a-120".to_string()]),
                (
                    "b".to_string(),
                    vec![
                        "renamed".to_string(),
                        "b-60".to_string(),
                        "b-600".to_string()
                    ]
                ),
            ]
        );
    }
}
