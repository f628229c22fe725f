//! Cron jobs end to end (issue 14): a `* * * * *` job of a device group runs on a real
//! Docker engine within 70 s of being created, as container `<job>-<fire time>`, and keeps
//! firing while the device's broker link is cut — the agent's own scheduler runs it from the
//! desired state it persisted, not from messages. The device's reports list the run.

mod support;

use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use nebula_tests::proxy::{Mode, PartitionProxy};
use nebula_tests::services::once_test_image;
use nebula_tests::system::{Agent, AgentMode};
use nebula_tests::{unique_name, wait_for};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::Scenario;
use support::amqp::ReportTap;

/// The bound for the first run of a `* * * * *` job, from its create.
const FIRST_RUN: Duration = Duration::from_secs(70);

/// One run container of the job, as the engine lists it.
#[derive(Debug, Clone)]
struct Run {
    name: String,
    state: String,
    labels: HashMap<String, String>,
}

async fn runs(docker: &bollard::Docker, job: &str) -> Vec<Run> {
    let filters = HashMap::from([("label".to_string(), vec![format!("cron_job_name={job}")])]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .expect("list containers");
    let mut runs: Vec<Run> = containers
        .into_iter()
        .map(|container| Run {
            name: container
                .names
                .and_then(|names| names.into_iter().next())
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            state: container
                .state
                .map(|state| state.to_string())
                .unwrap_or_default(),
            labels: container.labels.unwrap_or_default(),
        })
        .collect();
    runs.sort_by(|a, b| a.name.cmp(&b.name));
    runs
}

/// Removes the job's runs when the test ends, however it ends (declared before the agent,
/// so that it is dropped after it).
struct RemoveRuns {
    docker: bollard::Docker,
    job: String,
}

impl Drop for RemoveRuns {
    fn drop(&mut self) {
        let (docker, job) = (self.docker.clone(), self.job.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                for run in runs(&docker, &job).await {
                    let _ = docker
                        .remove_container(
                            &run.name,
                            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// The fire time a run's name ends in.
fn fire_time(job: &str, run: &Run) -> i64 {
    run.name
        .strip_prefix(&format!("{job}-"))
        .and_then(|at| at.parse().ok())
        .unwrap_or_else(|| panic!("run {} is not named {job}-<unix time>", run.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_fires_on_schedule_and_keeps_firing_with_the_broker_down() {
    let scenario = Scenario::new("cron");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let job = unique_name("cron-job");
    let group = unique_name("cron-group");
    let _cleanup = RemoveRuns {
        docker: scenario.docker.clone(),
        job: job.clone(),
    };
    let proxy = PartitionProxy::start(support::broker_address(), Mode::Forward)
        .await
        .expect("proxy");
    // Every report of the device, from before the first run (reports go out every 5 s here).
    let mut tap = ReportTap::new(&scenario.vhost.amqp_url(), "cron-device").await;
    let _agent = Agent::start(
        "cron-device",
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url_via(&proxy.address().to_string()),
        &scenario.directory,
    )
    .await;
    rest.post(&format!("/device_groups/{group}"), json!({}))
        .await
        .expect("group")
        .ok()
        .expect("group created");

    let created = Instant::now();
    let document = rest
        .post(
            &format!("/cron_jobs/{job}"),
            json!({"schedule": "* * * * *", "docker_image": once_test_image(), "env_vars": {"RUN": "cron"}}),
        )
        .await
        .expect("create")
        .ok()
        .expect("cron job created");
    assert_eq!(document["cron_job_id"], json!(1));
    rest.put(
        &format!("/device_groups/{group}/update"),
        json!({"cron_jobs": [job]}),
    )
    .await
    .expect("membership")
    .ok()
    .expect("group lists the job");

    let docker = scenario.docker.clone();
    let first = wait_for(
        "the first run",
        FIRST_RUN.saturating_sub(created.elapsed()),
        || {
            let (docker, job) = (docker.clone(), job.clone());
            async move { runs(&docker, &job).await.into_iter().next() }
        },
    )
    .await
    .expect("a run within 70 s of the create");
    scenario.report("create → first run started", created);
    assert_eq!(fire_time(&job, &first) % 60, 0, "fires on the minute");
    assert_eq!(first.labels.get("cron_job_name"), Some(&job));
    assert_eq!(
        first.labels.get("cron_job_id").map(String::as_str),
        Some("1")
    );
    // The device's next report lists the run under its job (the agent's report interval
    // here is 5 s), before the link goes dark.
    let listed = Instant::now();
    let report = tap
        .wait(Duration::from_secs(20), |report| {
            report.cron_jobs.iter().any(|entry| {
                entry.cron_job_name == job.as_str()
                    && entry.containers.iter().any(|run| run.name == first.name)
            })
        })
        .await;
    scenario.report("first run → listed in a report", listed);
    let runs_reported = report
        .cron_jobs
        .iter()
        .find(|entry| entry.cron_job_name == job.as_str())
        .map(|entry| entry.containers.clone())
        .unwrap_or_default();
    assert!(
        runs_reported
            .iter()
            .all(|run| run.cron_job_id == Some(1) && !run.state.is_empty()),
        "{runs_reported:?}"
    );

    // The broker link goes dark; the schedule goes on.
    proxy.set_mode(Mode::Blackhole);
    let cut = Instant::now();
    let seen = fire_time(&job, &first);
    let later = wait_for(
        "two more runs with the broker cut",
        Duration::from_secs(150),
        || {
            let (docker, job) = (docker.clone(), job.clone());
            async move {
                let all = runs(&docker, &job).await;
                let after: Vec<i64> = all
                    .iter()
                    .map(|run| fire_time(&job, run))
                    .filter(|at| *at > seen)
                    .collect();
                (after.len() >= 2).then_some(all)
            }
        },
    )
    .await
    .expect("the job keeps firing with the broker down");
    scenario.report("broker cut → two more runs", cut);
    let times: Vec<i64> = later.iter().map(|run| fire_time(&job, run)).collect();
    assert!(
        times.windows(2).all(|pair| pair[1] - pair[0] == 60),
        "one run per minute, none skipped: {times:?}"
    );
    // The earlier runs ended on their own (the image exits 0 after 2 s).
    assert!(
        later
            .iter()
            .filter(|run| fire_time(&job, run) < *times.last().expect("runs"))
            .all(|run| run.state == "exited"),
        "{later:?}"
    );
}
