//! Device reports (DESIGN §3): what the device is told to run, what it runs, and how loaded
//! it is. Built from the desired state and one observation of the runtime. The control
//! plane's device inventory and rollout status are made of these facts (issue 15).

use crate::config::Mode;
use crate::device::{self, CpuSampler};
use crate::reconcile;
use crate::runtime::{ContainerRuntime, containers_of};
use crate::supervisor::Shared;
use nebula_protocol::{AppReport, ContainerReport, DeviceMode, DeviceReport, Name, ResourceUsage};
use std::collections::BTreeSet;
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
    }
}
