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
