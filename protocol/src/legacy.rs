//! The object types of protocol version 1, kept only to read what an older release wrote
//! (an agent's persisted desired state) and convert it to the current types.
//!
//! Version 1 objects had no incarnation; they convert to incarnation 0, which every store
//! reads records of that era as too, so an upgraded agent and an upgraded control plane agree
//! on what a container created before the upgrade is.

use crate::model::{
    AppConfig, ContainersPer, DEFAULT_STOP_TIMEOUT_SECS, DeviceGroup, PortMapping, PullPolicy,
    Revision,
};
use crate::names::Name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// [`AppConfig`] as protocol version 1 encoded it. Field order is the wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppConfigV1 {
    pub app_name: Name,
    pub app_id: Revision,
    pub docker_image: String,
    pub starting_ports: Vec<PortMapping>,
    pub containers_per: ContainersPer,
    pub env_vars: BTreeMap<String, String>,
    pub running: bool,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
    pub devices: Vec<String>,
    pub privileged: bool,
    pub rolling_restart: bool,
}

impl From<AppConfigV1> for AppConfig {
    fn from(old: AppConfigV1) -> Self {
        Self {
            app_name: old.app_name,
            app_id: old.app_id,
            docker_image: old.docker_image,
            starting_ports: old.starting_ports,
            containers_per: old.containers_per,
            env_vars: old.env_vars,
            running: old.running,
            networks: old.networks,
            volumes: old.volumes,
            devices: old.devices,
            privileged: old.privileged,
            rolling_restart: old.rolling_restart,
            incarnation: 0,
            // Version 1 agents stopped with Docker's default and pulled on every change.
            stop_timeout_secs: DEFAULT_STOP_TIMEOUT_SECS,
            pull_policy: PullPolicy::Always,
            env_vars_form: crate::model::EnvVarsForm::Dict,
        }
    }
}

/// [`DeviceGroup`] as protocol version 1 encoded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGroupV1 {
    pub device_group: Name,
    pub device_group_id: Revision,
    pub prune_id: Revision,
    pub apps: Vec<Name>,
    pub cron_jobs: Vec<Name>,
}

impl From<DeviceGroupV1> for DeviceGroup {
    fn from(old: DeviceGroupV1) -> Self {
        Self {
            device_group: old.device_group,
            device_group_id: old.device_group_id,
            prune_id: old.prune_id,
            apps: old.apps,
            cron_jobs: old.cron_jobs,
            incarnation: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_bytes_read_as_incarnation_0() {
        let old = AppConfigV1 {
            app_name: Name::new("web").expect("name"),
            app_id: 4,
            docker_image: "nginx".into(),
            starting_ports: vec![PortMapping::Same(80)],
            containers_per: ContainersPer::Server(2),
            env_vars: BTreeMap::from([("A".into(), "1".into())]),
            running: true,
            networks: vec!["nebula".into()],
            volumes: Vec::new(),
            devices: Vec::new(),
            privileged: false,
            rolling_restart: true,
        };
        let bytes = postcard::to_allocvec(&old).expect("encode");
        let read: AppConfig = postcard::from_bytes::<AppConfigV1>(&bytes)
            .expect("decode")
            .into();
        assert_eq!(read.incarnation, 0);
        assert_eq!(read.app_id, 4);
        assert_eq!(read.containers_per, ContainersPer::Server(2));
        assert!(read.rolling_restart);
        assert_eq!(read.stop_timeout_secs, DEFAULT_STOP_TIMEOUT_SECS);
        assert_eq!(read.pull_policy, PullPolicy::Always);
        // The current layout is version 1 with appended fields: incarnation (one varint
        // byte for 0), stop_timeout_secs (10) and pull_policy (variant 0).
        let current = postcard::to_allocvec(&AppConfig::from(old.clone())).expect("encode");
        assert_eq!(current.len(), bytes.len() + 3, "three appended varints");
        assert_eq!(&current[..bytes.len()], &bytes[..]);

        let group = DeviceGroupV1 {
            device_group: Name::new("edge").expect("name"),
            device_group_id: 3,
            prune_id: 2,
            apps: vec![Name::new("web").expect("name")],
            cron_jobs: Vec::new(),
        };
        let bytes = postcard::to_allocvec(&group).expect("encode");
        let read: DeviceGroup = postcard::from_bytes::<DeviceGroupV1>(&bytes)
            .expect("decode")
            .into();
        assert_eq!(
            (read.incarnation, read.device_group_id, read.prune_id),
            (0, 3, 2)
        );
    }
}
