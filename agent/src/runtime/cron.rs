//! Cron runs as containers (issue 14): what one run of a cron job is created as, and how a
//! run's labels read back. Pure; [`crate::cron_runner`] decides when runs start and go.
//!
//! A run is container `<cron_job>-<unix fire time>`, labelled like an app's containers —
//! `orchestrator=nebula` (and the runtime's `device_id`), so the agent owns it — but with
//! `cron_job_name` instead of `app_name`: the app listing ([`super::observe_labels`]) needs an
//! `app_name` and never sees a run, so app reconcile cannot take one for a stray container.
//! `cron_job_id` and `incarnation` say which config the run was started from, as `app_id`
//! and `incarnation` do for an app.

use super::{ContainerSpec, NetworkPlan, RestartPolicy};
use crate::error::DockerError;
use nebula_protocol::model::DEFAULT_STOP_TIMEOUT_SECS;
use nebula_protocol::placement::{
    LABEL_CRON_JOB_NAME, LABEL_INCARNATION, LABEL_ORCHESTRATOR, ORCHESTRATOR_VALUE,
};
use nebula_protocol::{CronJob, ImageRef, Incarnation, Name, Revision};
use std::collections::{BTreeMap, HashMap};

/// Label holding the cron job revision (`cron_job_id`) a run was started from.
pub const LABEL_CRON_JOB_ID: &str = "cron_job_id";

/// One run container of a cron job, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedCronContainer {
    pub name: String,
    pub job: Name,
    /// The `cron_job_id` label.
    pub cron_job_id: Option<Revision>,
    /// The `incarnation` label.
    pub incarnation: Option<Incarnation>,
    pub image: String,
    /// Docker's state word: `running`, `exited`, `created`, ...
    pub state: String,
}

impl ObservedCronContainer {
    /// Whether the run is over (or never started: a create that failed half-way). Any other
    /// state — running, paused, restarting, being removed — is a run still going, which a
    /// fire must not start a second one beside.
    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "exited" | "dead" | "created")
    }

    /// The fire time in the run's name, which orders a job's runs.
    pub fn fired_at(&self) -> Option<i64> {
        fire_time(&self.job, &self.name)
    }
}

/// The container name of `job`'s run for the fire at `at` (Unix seconds).
pub fn run_name(job: &Name, at: i64) -> String {
    format!("{job}-{at}")
}

/// The fire time of run `name` of `job`, if it is named like one.
pub fn fire_time(job: &Name, name: &str) -> Option<i64> {
    name.strip_prefix(job.as_str())?
        .strip_prefix('-')?
        .parse()
        .ok()
}

impl ContainerSpec {
    /// The spec of `job`'s run for the fire at `at`: the job's image, env, volumes, devices,
    /// networks (the app rules) and privileged flag, no ports, and no restart policy — a run
    /// that ended is the result, to be kept with its exit code, not restarted.
    pub fn for_cron_run(job: &CronJob, at: i64) -> Result<Self, DockerError> {
        let image: ImageRef =
            job.docker_image
                .parse()
                .map_err(
                    |error: nebula_protocol::ImageRefError| DockerError::InvalidSpec {
                        app: job.cron_job_name.to_string(),
                        reason: error.to_string(),
                    },
                )?;
        let labels = BTreeMap::from([
            (
                LABEL_ORCHESTRATOR.to_string(),
                ORCHESTRATOR_VALUE.to_string(),
            ),
            (
                LABEL_CRON_JOB_NAME.to_string(),
                job.cron_job_name.to_string(),
            ),
            (LABEL_CRON_JOB_ID.to_string(), job.cron_job_id.to_string()),
            (LABEL_INCARNATION.to_string(), job.incarnation.to_string()),
        ]);
        Ok(Self {
            name: run_name(&job.cron_job_name, at),
            app_name: job.cron_job_name.clone(),
            image: image.canonical(),
            labels,
            env: job
                .env_vars
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect(),
            ports: Vec::new(),
            volumes: job.volumes.clone(),
            devices: job.devices.clone(),
            privileged: job.privileged,
            network: NetworkPlan::from_networks(&job.networks),
            stop_timeout_secs: DEFAULT_STOP_TIMEOUT_SECS,
            restart: RestartPolicy::No,
        })
    }
}

/// Reads a run's labels back; `None` for a container without a `cron_job_name` label (not
/// a cron run). Both runtimes use it.
pub fn observe_cron_labels(
    name: String,
    labels: &HashMap<String, String>,
    image: String,
    state: String,
) -> Option<ObservedCronContainer> {
    let number = |label: &str| labels.get(label).and_then(|value| value.parse().ok());
    Some(ObservedCronContainer {
        name,
        job: labels.get(LABEL_CRON_JOB_NAME)?.parse().ok()?,
        cron_job_id: number(LABEL_CRON_JOB_ID),
        incarnation: number(LABEL_INCARNATION),
        image,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> CronJob {
        let mut job = CronJob::new(
            Name::new("nightly-backup").expect("name"),
            "0 3 * * *",
            "127.0.0.1:5000/nebula/test:1",
        );
        job.cron_job_id = 4;
        job.incarnation = 2;
        job.env_vars.insert("TARGET".into(), "s3".into());
        job.volumes = vec!["/data:/data:ro".into()];
        job.devices = vec!["/dev/null:/dev/x".into()];
        job.privileged = true;
        job.networks = vec!["host".into()];
        job
    }

    #[test]
    fn a_run_spec_carries_the_job_and_its_fire_time() {
        let job = job();
        let spec = ContainerSpec::for_cron_run(&job, 1_796_119_200).expect("spec");
        assert_eq!(spec.name, "nightly-backup-1796119200");
        assert_eq!(spec.image, "127.0.0.1:5000/nebula/test:1");
        assert_eq!(
            spec.labels,
            BTreeMap::from([
                ("orchestrator".to_string(), "nebula".to_string()),
                ("cron_job_name".to_string(), "nightly-backup".to_string()),
                ("cron_job_id".to_string(), "4".to_string()),
                ("incarnation".to_string(), "2".to_string()),
            ])
        );
        assert_eq!(spec.env, vec!["TARGET=s3"]);
        assert_eq!(spec.volumes, job.volumes);
        assert_eq!(spec.devices, job.devices);
        assert!(spec.privileged && spec.ports.is_empty());
        assert_eq!(spec.network, NetworkPlan::Mode("host".into()));
        assert_eq!(spec.restart, RestartPolicy::No);

        let labels = spec.labels.clone().into_iter().collect();
        let observed = observe_cron_labels(spec.name.clone(), &labels, spec.image, "exited".into())
            .expect("a run");
        assert_eq!(observed.job, job.cron_job_name);
        assert_eq!(
            (observed.cron_job_id, observed.incarnation),
            (Some(4), Some(2))
        );
        assert_eq!(observed.fired_at(), Some(1_796_119_200));
        assert!(observed.is_finished());
        // An app container's labels are no cron run, and a run is no app container.
        assert!(
            super::super::observe_labels(
                observed.name.clone(),
                &labels,
                String::new(),
                "running".into(),
                None
            )
            .is_none()
        );
    }

    #[test]
    fn fire_times_are_read_from_run_names_only() {
        let job = Name::new("a-b").expect("name");
        assert_eq!(fire_time(&job, "a-b-60"), Some(60));
        assert_eq!(fire_time(&job, "a-b-x"), None);
        assert_eq!(fire_time(&job, "a-60"), None);
        assert_eq!(fire_time(&job, "a-b60"), None);
    }
}
