//! Device reports (DESIGN §3): what the device is told to run, what it runs, and how loaded
//! it is. Built from the desired state and one observation of the runtime.

use crate::config::Mode;
use crate::device::{self, CpuSampler};
use crate::reconcile;
use crate::runtime::{ContainerRuntime, containers_of};
use crate::supervisor::Shared;
use nebula_protocol::{AppReport, ContainerReport, DeviceReport, Name, ResourceUsage};
use std::collections::BTreeSet;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

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
            if !reconcile::is_converged(config, capacity, &observed) {
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
                    })
                    .collect(),
                error: shared.app_error(&app).or_else(|| list_error.clone()),
            }
        })
        .collect();

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
    }
}
