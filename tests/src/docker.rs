//! What is actually on the Docker engine: the end-to-end tests judge by this, not by logs.

use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use nebula_protocol::placement::{
    LABEL_APP_ID, LABEL_APP_NAME, LABEL_ORCHESTRATOR, ORCHESTRATOR_VALUE,
};
use std::collections::{BTreeMap, HashMap};

/// One container of an app, as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppContainer {
    pub name: String,
    pub id: String,
    pub image: String,
    pub running: bool,
    pub started_at: String,
    pub app_id: Option<u64>,
    pub env: BTreeMap<String, String>,
    /// container port ("8000/tcp") → host ports.
    pub ports: BTreeMap<String, Vec<u16>>,
    /// `source:destination[:ro]` bind mounts.
    pub binds: Vec<String>,
    pub networks: Vec<String>,
    pub restart_policy: Option<String>,
    pub privileged: bool,
    pub labels: HashMap<String, String>,
}

/// Every container labelled as `app`'s, sorted by name.
pub async fn app_containers(
    docker: &bollard::Docker,
    app: &str,
) -> anyhow::Result<Vec<AppContainer>> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_ORCHESTRATOR}={ORCHESTRATOR_VALUE}"),
            format!("{LABEL_APP_NAME}={app}"),
        ],
    )]);
    let summaries = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    let mut containers = Vec::new();
    for summary in summaries {
        let Some(id) = summary.id else { continue };
        // A container can vanish between list and inspect while an agent replaces it.
        let Ok(details) = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
        else {
            continue;
        };
        let config = details.config.unwrap_or_default();
        let host_config = details.host_config.unwrap_or_default();
        let state = details.state.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        let env = config
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|pair| {
                pair.split_once('=')
                    .map(|(key, value)| (key.to_string(), value.to_string()))
            })
            .collect();
        let ports = host_config
            .port_bindings
            .unwrap_or_default()
            .into_iter()
            .map(|(port, bindings)| {
                let hosts = bindings
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|binding| binding.host_port.and_then(|port| port.parse().ok()))
                    .collect();
                (port, hosts)
            })
            .collect();
        let networks = details
            .network_settings
            .and_then(|settings| settings.networks)
            .map(|networks| networks.into_keys().collect())
            .unwrap_or_default();
        containers.push(AppContainer {
            name: details
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            id,
            image: config.image.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            started_at: state.started_at.unwrap_or_default(),
            app_id: labels
                .get(LABEL_APP_ID)
                .and_then(|value| value.parse().ok()),
            env,
            ports,
            binds: host_config.binds.unwrap_or_default(),
            networks,
            restart_policy: host_config
                .restart_policy
                .and_then(|policy| policy.name)
                .map(|name| name.to_string()),
            privileged: host_config.privileged.unwrap_or(false),
            labels,
        });
    }
    containers.sort_by(|left, right| left.name.cmp(&right.name));
    Ok(containers)
}

/// Removes every container of `app` (test cleanup).
pub async fn remove_app_containers(docker: &bollard::Docker, app: &str) -> anyhow::Result<()> {
    for container in app_containers(docker, app).await? {
        let _ = docker
            .remove_container(
                &container.id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await;
    }
    Ok(())
}

/// Label on everything a test creates on the engine itself (not through an agent): the
/// test's name, so that a later run of the same test can find its leftovers.
pub const LABEL_TEST: &str = "nebula.test";
/// Label with the test run's `unique_name`, which holds the pid of the test process.
pub const LABEL_TEST_RUN: &str = "nebula.test.run";

/// The pid inside a [`crate::unique_name`] (`<prefix>-<pid>-<random>`).
pub fn unique_name_pid(name: &str) -> Option<u32> {
    let mut parts = name.rsplit('-');
    parts.next()?;
    parts.next()?.parse().ok()
}

/// Whether a name made by [`crate::unique_name`] belongs to a process that has ended: such
/// a name is a leftover of a run that was killed before its cleanup. Names of runs still
/// going (this one, or the same test in another checkout on the same engine) are kept.
fn run_has_ended(name: &str) -> bool {
    unique_name_pid(name).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes what earlier, killed runs of a test left on the engine: containers and images
/// labelled `nebula.test=<test>` whose `nebula.test.run` has ended, and containers of agents
/// whose device id was made by `unique_name(device_prefix)` for a run that has ended.
/// Returns how many objects it removed.
pub async fn remove_leftovers(
    docker: &bollard::Docker,
    test: &str,
    device_prefix: Option<&str>,
) -> anyhow::Result<usize> {
    use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
    let mut removed = 0;
    let test_label = format!("{LABEL_TEST}={test}");
    let mut leftover_containers = Vec::new();
    for label in [
        test_label.clone(),
        format!("{LABEL_ORCHESTRATOR}={ORCHESTRATOR_VALUE}"),
    ] {
        let filters = HashMap::from([("label".to_string(), vec![label])]);
        let containers = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        for container in containers {
            let labels = container.labels.unwrap_or_default();
            let of_an_ended_run = labels.get(LABEL_TEST_RUN).is_some_and(|run| {
                labels.get(LABEL_TEST).is_some_and(|name| name == test) && run_has_ended(run)
            });
            let of_an_ended_agent = device_prefix.is_some_and(|prefix| {
                labels
                    .get(nebula_protocol::placement::LABEL_DEVICE_ID)
                    .is_some_and(|device| {
                        device.starts_with(&format!("{prefix}-")) && run_has_ended(device)
                    })
            });
            if let (true, Some(id)) = (of_an_ended_run || of_an_ended_agent, container.id) {
                leftover_containers.push(id);
            }
        }
    }
    leftover_containers.sort();
    leftover_containers.dedup();
    for id in leftover_containers {
        docker
            .remove_container(
                &id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await?;
        removed += 1;
    }
    let filters = HashMap::from([("label".to_string(), vec![test_label])]);
    let images = docker
        .list_images(Some(
            ListImagesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await?;
    for image in images {
        if image
            .labels
            .get(LABEL_TEST_RUN)
            .is_some_and(|run| run_has_ended(run))
        {
            docker
                .remove_image(
                    &image.id,
                    Some(RemoveImageOptionsBuilder::default().force(true).build()),
                    None,
                )
                .await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The labels of a container or image a test creates on the engine itself: see
/// [`remove_leftovers`].
pub fn test_labels(test: &str, run: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_TEST.to_string(), test.to_string()),
        (LABEL_TEST_RUN.to_string(), run.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_carry_their_pid() {
        let name = crate::unique_name("prune-device");
        assert_eq!(unique_name_pid(&name), Some(std::process::id()));
        assert!(!run_has_ended(&name), "this process is running");
        assert_eq!(unique_name_pid("no-pid-here"), None);
        // pid_max is at most 2^22 on Linux: this pid cannot exist.
        assert!(run_has_ended("prune-device-4294967295-0badf00d"));
    }
}
