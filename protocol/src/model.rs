//! Domain types of the objects in `shared/API.md`, with their documented defaults and the
//! validation every side applies.
//!
//! These are the wire types. REST DTOs and store documents live in the control plane and are
//! converted at its edge, so the JSON spelling of the v2 API never constrains this layout.

use crate::image::{ImageRef, ImageRefError};
use crate::names::{Name, NameError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A monotonic object revision: `app_id`, `device_group_id`, `prune_id`, `cron_job_id`.
/// Starts at 1 on create and goes up by exactly 1 on every change.
pub type Revision = u64;

/// Which life of a name an object is: fixed when the object is created, and greater for
/// every later re-create under the same name (the store hands them out, see the control
/// plane's store). Revisions restart at 1 on a re-create, so only (incarnation, revision)
/// tells a re-created object from the one that was deleted. 0 is what objects and containers
/// of protocol version 1, which had no incarnation, are read as.
pub type Incarnation = u64;

/// The identity of one version of an object, ordered by incarnation, then revision: a
/// message is newer than what an agent holds exactly when its `ObjectVersion` is greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectVersion {
    pub incarnation: Incarnation,
    pub revision: Revision,
}

impl ObjectVersion {
    pub fn new(incarnation: Incarnation, revision: Revision) -> Self {
        Self {
            incarnation,
            revision,
        }
    }
}

impl std::fmt::Display for ObjectVersion {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.incarnation, self.revision)
    }
}

/// Networks an app joins when the client does not say (the v2 default).
pub const DEFAULT_NETWORKS: [&str; 2] = ["nebula", "bridge"];
/// The bridge network the agent creates when missing and attaches containers to first.
pub const NEBULA_NETWORK: &str = "nebula";
/// Largest container count `containers_per` may ask for on one device.
pub const MAX_CONTAINERS_PER_DEVICE: u32 = 1024;
/// Docker's own default: how long a container gets to stop after SIGTERM before SIGKILL.
pub const DEFAULT_STOP_TIMEOUT_SECS: u32 = 10;
/// Longest `stop_timeout_secs` an app may ask for: an hour. A container may hold its app's
/// update or stop that long; the agent waits for the engine's answer a minute longer.
pub const MAX_STOP_TIMEOUT_SECS: u32 = 3600;

/// Why an object's configuration is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("invalid name {value:?}: {source}")]
    Name { value: String, source: NameError },
    #[error("invalid docker_image: {0}")]
    Image(#[from] ImageRefError),
    #[error("invalid port {0}: must be 1-65535")]
    Port(u32),
    #[error("starting port {port} with {count} containers runs past port 65535")]
    PortRange { port: u16, count: u32 },
    #[error("containers_per {key} must be 1-{max}, got {value}")]
    ContainersPer {
        key: &'static str,
        value: u32,
        max: u32,
    },
    #[error("invalid env var name {0:?}")]
    EnvName(String),
    #[error("invalid {field} entry {value:?}: expected {expected}")]
    Mount {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("invalid schedule {0:?}: expected 5 cron fields")]
    Schedule(String),
    #[error("{0} is listed twice")]
    Duplicate(String),
    #[error("{0} is marked unavailable but is not a member, or its config is present")]
    Unavailable(String),
    #[error("stop_timeout_secs must be 0-{max}, got {value}")]
    StopTimeout { value: u32, max: u32 },
}

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl PortProtocol {
    /// Docker's (and the v2 container side's) spelling: `tcp`, `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            _ => None,
        }
    }
}

/// How a container's ports are published; `i` is the container's 0-based index on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortMapping {
    /// v2's plain int `p`: container port `p` (TCP) published on host port `p + i`.
    Same(u16),
    /// v2's `{"<host>": "<container>"}`: container port (TCP) published on host port
    /// `host + i`.
    Mapped { host: u16, container: u16 },
    /// `{"<host>": "<container>/udp"}` (or `/tcp`): the same with the protocol spelled out,
    /// as Docker spells a container port. Kept apart from [`Self::Mapped`] so that a read
    /// returns what was written. Appended in protocol version 2.
    MappedWithProtocol {
        host: u16,
        container: u16,
        protocol: PortProtocol,
    },
}

impl PortMapping {
    pub fn host_base(self) -> u16 {
        match self {
            Self::Same(port) => port,
            Self::Mapped { host, .. } | Self::MappedWithProtocol { host, .. } => host,
        }
    }

    pub fn container_port(self) -> u16 {
        match self {
            Self::Same(port) => port,
            Self::Mapped { container, .. } | Self::MappedWithProtocol { container, .. } => {
                container
            }
        }
    }

    /// TCP unless the mapping says otherwise (v2 published TCP only).
    pub fn protocol(self) -> PortProtocol {
        match self {
            Self::MappedWithProtocol { protocol, .. } => protocol,
            Self::Same(_) | Self::Mapped { .. } => PortProtocol::Tcp,
        }
    }
}

/// How a REST client wrote an app's `env_vars`: v2 takes a dict and, as upstream, a list of
/// `K=V` strings, and echoes the form given. A presentation detail of the control plane: never
/// on the wire (`AppConfig::env_vars_form` is skipped by serde) and meaningless to agents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EnvVarsForm {
    #[default]
    Dict,
    List,
}

/// When the agent pulls an app's image (`pull_policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    /// Pull on every change of the app (once per revision), as v2 did; a local copy is used
    /// when the registry cannot be reached.
    #[default]
    Always,
    /// Pull only when the image is not on the device: for devices on metered links, and
    /// for tags that never move.
    IfNotPresent,
}

impl PullPolicy {
    /// The JSON spelling: `always`, `if_not_present`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::IfNotPresent => "if_not_present",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "always" => Some(Self::Always),
            "if_not_present" => Some(Self::IfNotPresent),
            _ => None,
        }
    }
}

/// v2's one-key `containers_per` dict. The key is kept as the client spelled it
/// (`server`/`instance`, `memory`/`mem`) so that a read returns what was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainersPer {
    /// `server`: N containers per device.
    Server(u32),
    /// `instance`: the same as `server`.
    Instance(u32),
    /// `cpu`: N containers per CPU core.
    Cpu(u32),
    /// `memory`: one container per N MB of host memory.
    Memory(u32),
    /// `mem`: the same as `memory`.
    Mem(u32),
}

impl Default for ContainersPer {
    fn default() -> Self {
        Self::Server(1)
    }
}

impl ContainersPer {
    /// The v2 JSON key of this variant.
    pub fn key(self) -> &'static str {
        match self {
            Self::Server(_) => "server",
            Self::Instance(_) => "instance",
            Self::Cpu(_) => "cpu",
            Self::Memory(_) => "memory",
            Self::Mem(_) => "mem",
        }
    }

    pub fn value(self) -> u32 {
        match self {
            Self::Server(value)
            | Self::Instance(value)
            | Self::Cpu(value)
            | Self::Memory(value)
            | Self::Mem(value) => value,
        }
    }

    /// Builds the variant for a v2 key; `None` for an unknown key.
    pub fn from_key(key: &str, value: u32) -> Option<Self> {
        Some(match key {
            "server" => Self::Server(value),
            "instance" => Self::Instance(value),
            "cpu" => Self::Cpu(value),
            "memory" => Self::Memory(value),
            "mem" => Self::Mem(value),
            _ => return None,
        })
    }

    pub fn validate(self) -> Result<(), ValidationError> {
        let max = match self {
            Self::Memory(_) | Self::Mem(_) => u32::MAX,
            _ => MAX_CONTAINERS_PER_DEVICE,
        };
        let value = self.value();
        if value == 0 || value > max {
            return Err(ValidationError::ContainersPer {
                key: self.key(),
                value,
                max,
            });
        }
        Ok(())
    }
}

/// The full desired configuration of an app, as every change message carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppConfig {
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
    /// Appended in protocol version 2.
    pub incarnation: Incarnation,
    /// Seconds a container gets to stop after SIGTERM before it is killed (Docker's `-t`).
    /// Appended in protocol version 2; [`DEFAULT_STOP_TIMEOUT_SECS`] is Docker's default.
    pub stop_timeout_secs: u32,
    /// When the image is pulled. Appended in protocol version 2.
    pub pull_policy: PullPolicy,
    /// How the control plane's REST client wrote `env_vars` ([`EnvVarsForm`]): not encoded,
    /// so messages are byte for byte what they were, and a decoded config holds the default.
    #[serde(skip)]
    pub env_vars_form: EnvVarsForm,
}

impl AppConfig {
    /// An app with every field at its v2 default, at revision 1.
    pub fn new(app_name: Name, docker_image: impl Into<String>) -> Self {
        Self {
            app_name,
            app_id: 1,
            docker_image: docker_image.into(),
            starting_ports: Vec::new(),
            containers_per: ContainersPer::default(),
            env_vars: BTreeMap::new(),
            running: true,
            networks: default_networks(),
            volumes: Vec::new(),
            devices: Vec::new(),
            privileged: false,
            rolling_restart: false,
            incarnation: 0,
            stop_timeout_secs: DEFAULT_STOP_TIMEOUT_SECS,
            pull_policy: PullPolicy::default(),
            env_vars_form: EnvVarsForm::Dict,
        }
    }

    /// (incarnation, `app_id`).
    pub fn version(&self) -> ObjectVersion {
        ObjectVersion::new(self.incarnation, self.app_id)
    }

    /// The parsed image reference; only fails for a config that was never validated.
    pub fn image(&self) -> Result<ImageRef, ImageRefError> {
        self.docker_image.parse()
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        self.image()?;
        self.containers_per.validate()?;
        validate_ports(&self.starting_ports)?;
        if self.stop_timeout_secs > MAX_STOP_TIMEOUT_SECS {
            return Err(ValidationError::StopTimeout {
                value: self.stop_timeout_secs,
                max: MAX_STOP_TIMEOUT_SECS,
            });
        }
        validate_workload(&self.env_vars, &self.networks, &self.volumes, &self.devices)
    }
}

/// The v2 default `networks`.
pub fn default_networks() -> Vec<String> {
    DEFAULT_NETWORKS
        .iter()
        .map(|network| network.to_string())
        .collect()
}

fn validate_ports(ports: &[PortMapping]) -> Result<(), ValidationError> {
    for mapping in ports {
        for port in [mapping.host_base(), mapping.container_port()] {
            if port == 0 {
                return Err(ValidationError::Port(0));
            }
        }
    }
    Ok(())
}

/// Checks the fields apps and cron jobs share.
fn validate_workload(
    env_vars: &BTreeMap<String, String>,
    networks: &[String],
    volumes: &[String],
    devices: &[String],
) -> Result<(), ValidationError> {
    for key in env_vars.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ValidationError::EnvName(key.clone()));
        }
    }
    for (index, network) in networks.iter().enumerate() {
        Name::new(network.as_str()).map_err(|source| ValidationError::Name {
            value: network.clone(),
            source,
        })?;
        if networks[..index].contains(network) {
            return Err(ValidationError::Duplicate(network.clone()));
        }
    }
    for volume in volumes {
        validate_mount(
            "volumes",
            volume,
            &["ro", "rw", "z", "Z", "ro,z", "ro,Z", "rw,z", "rw,Z"],
        )?;
    }
    for device in devices {
        validate_mount("devices", device, &["r", "w", "m", "rw", "rm", "wm", "rwm"])?;
    }
    Ok(())
}

/// `host:container[:mode]` with both paths non-empty and an allowed mode.
fn validate_mount(field: &'static str, value: &str, modes: &[&str]) -> Result<(), ValidationError> {
    let parts: Vec<&str> = value.split(':').collect();
    let well_formed = match parts.as_slice() {
        [host, container] => !host.is_empty() && !container.is_empty(),
        [host, container, mode] => {
            !host.is_empty() && !container.is_empty() && modes.contains(mode)
        }
        _ => false,
    };
    if well_formed && !value.contains('\0') {
        Ok(())
    } else {
        Err(ValidationError::Mount {
            field,
            value: value.to_string(),
            expected: if field == "volumes" {
                "host:container[:ro|rw]"
            } else {
                "host:container[:rwm]"
            },
        })
    }
}

/// A device group: the apps and cron jobs every device of the group runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGroup {
    pub device_group: Name,
    pub device_group_id: Revision,
    pub prune_id: Revision,
    pub apps: Vec<Name>,
    pub cron_jobs: Vec<Name>,
    /// Appended in protocol version 2.
    pub incarnation: Incarnation,
}

impl DeviceGroup {
    pub fn new(device_group: Name) -> Self {
        Self {
            device_group,
            device_group_id: 1,
            prune_id: 1,
            apps: Vec::new(),
            cron_jobs: Vec::new(),
            incarnation: 0,
        }
    }

    /// (incarnation, `device_group_id`). `prune_id` is not part of it: a prune request
    /// changes only `prune_id`, and is recognised by that alone.
    pub fn version(&self) -> ObjectVersion {
        ObjectVersion::new(self.incarnation, self.device_group_id)
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        for (index, app) in self.apps.iter().enumerate() {
            if self.apps[..index].contains(app) {
                return Err(ValidationError::Duplicate(app.to_string()));
            }
        }
        for (index, job) in self.cron_jobs.iter().enumerate() {
            if self.cron_jobs[..index].contains(job) {
                return Err(ValidationError::Duplicate(job.to_string()));
            }
        }
        Ok(())
    }
}

/// A cron job: one container `<cron_job>-<unix time>` started whenever the schedule is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronJob {
    pub cron_job_name: Name,
    pub cron_job_id: Revision,
    pub schedule: String,
    pub docker_image: String,
    pub env_vars: BTreeMap<String, String>,
    pub running: bool,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
    pub devices: Vec<String>,
    pub privileged: bool,
    /// Appended in protocol version 2.
    pub incarnation: Incarnation,
}

impl CronJob {
    pub fn new(
        cron_job_name: Name,
        schedule: impl Into<String>,
        docker_image: impl Into<String>,
    ) -> Self {
        Self {
            cron_job_name,
            cron_job_id: 1,
            schedule: schedule.into(),
            docker_image: docker_image.into(),
            env_vars: BTreeMap::new(),
            running: true,
            networks: default_networks(),
            volumes: Vec::new(),
            devices: Vec::new(),
            privileged: false,
            incarnation: 0,
        }
    }

    /// (incarnation, `cron_job_id`).
    pub fn version(&self) -> ObjectVersion {
        ObjectVersion::new(self.incarnation, self.cron_job_id)
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        self.docker_image.parse::<ImageRef>()?;
        crate::cron::Schedule::parse(&self.schedule)
            .map_err(|_| ValidationError::Schedule(self.schedule.clone()))?;
        validate_workload(&self.env_vars, &self.networks, &self.volumes, &self.devices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppConfig {
        AppConfig::new(Name::new("web").expect("name"), "nginx")
    }

    #[test]
    fn new_app_has_v2_defaults() {
        let app = app();
        assert_eq!(app.app_id, 1);
        assert_eq!(app.containers_per, ContainersPer::Server(1));
        assert!(app.running);
        assert_eq!(app.networks, vec!["nebula", "bridge"]);
        assert!(!app.privileged && !app.rolling_restart);
        assert!(app.starting_ports.is_empty() && app.env_vars.is_empty());
        assert_eq!(app.stop_timeout_secs, 10);
        assert_eq!(app.pull_policy, PullPolicy::Always);
        assert!(app.validate().is_ok());
    }

    #[test]
    fn stop_timeout_is_bounded() {
        let mut app = app();
        for good in [0, 1, MAX_STOP_TIMEOUT_SECS] {
            app.stop_timeout_secs = good;
            assert!(app.validate().is_ok(), "{good}");
        }
        app.stop_timeout_secs = MAX_STOP_TIMEOUT_SECS + 1;
        assert_eq!(
            app.validate(),
            Err(ValidationError::StopTimeout {
                value: MAX_STOP_TIMEOUT_SECS + 1,
                max: MAX_STOP_TIMEOUT_SECS
            })
        );
    }

    #[test]
    fn ports_are_tcp_unless_they_say_udp() {
        assert_eq!(PortMapping::Same(80).protocol(), PortProtocol::Tcp);
        let mapped = PortMapping::Mapped {
            host: 8080,
            container: 80,
        };
        assert_eq!(mapped.protocol(), PortProtocol::Tcp);
        let udp = PortMapping::MappedWithProtocol {
            host: 5353,
            container: 53,
            protocol: PortProtocol::Udp,
        };
        assert_eq!(
            (udp.host_base(), udp.container_port(), udp.protocol()),
            (5353, 53, PortProtocol::Udp)
        );
        for protocol in [PortProtocol::Tcp, PortProtocol::Udp] {
            assert_eq!(PortProtocol::from_name(protocol.as_str()), Some(protocol));
        }
        assert_eq!(PortProtocol::from_name("sctp"), None);
        for policy in [PullPolicy::Always, PullPolicy::IfNotPresent] {
            assert_eq!(PullPolicy::from_name(policy.as_str()), Some(policy));
        }
        assert_eq!(PullPolicy::from_name("never"), None);
    }

    #[test]
    fn containers_per_keys_round_trip_and_validate() {
        for key in ["server", "instance", "cpu", "memory", "mem"] {
            let per = ContainersPer::from_key(key, 2).expect("known key");
            assert_eq!(per.key(), key);
            assert_eq!(per.value(), 2);
            assert!(per.validate().is_ok());
            assert!(
                ContainersPer::from_key(key, 0)
                    .expect("key")
                    .validate()
                    .is_err()
            );
        }
        assert!(ContainersPer::from_key("gpu", 1).is_none());
        assert!(
            ContainersPer::Server(MAX_CONTAINERS_PER_DEVICE + 1)
                .validate()
                .is_err()
        );
        assert!(ContainersPer::Memory(4096).validate().is_ok());
    }

    #[test]
    fn rejects_bad_app_fields() {
        let mut bad = app();
        bad.starting_ports = vec![PortMapping::Same(0)];
        assert_eq!(bad.validate(), Err(ValidationError::Port(0)));

        let mut bad = app();
        bad.env_vars.insert("A=B".into(), "x".into());
        assert!(matches!(bad.validate(), Err(ValidationError::EnvName(_))));

        let mut bad = app();
        bad.volumes = vec!["/data".into()];
        assert!(matches!(bad.validate(), Err(ValidationError::Mount { .. })));

        let mut bad = app();
        bad.devices = vec!["/dev/ttyUSB0:/dev/ttyUSB0:x".into()];
        assert!(matches!(bad.validate(), Err(ValidationError::Mount { .. })));

        let mut bad = app();
        bad.networks = vec!["nebula".into(), "nebula".into()];
        assert!(matches!(bad.validate(), Err(ValidationError::Duplicate(_))));

        let mut bad = app();
        bad.docker_image = "UPPER/Case".into();
        assert!(matches!(bad.validate(), Err(ValidationError::Image(_))));
    }

    #[test]
    fn accepts_good_mounts_and_empty_networks() {
        let mut good = app();
        good.volumes = vec!["/data:/data".into(), "/etc/x:/x:ro".into()];
        good.devices = vec!["/dev/i2c-1:/dev/i2c-1".into(), "/dev/a:/dev/b:rwm".into()];
        good.networks = vec![];
        assert!(good.validate().is_ok());
    }

    #[test]
    fn cron_job_defaults_and_schedule() {
        let job = CronJob::new(Name::new("backup").expect("name"), "*/5 * * * *", "busybox");
        assert_eq!(job.networks, vec!["nebula", "bridge"]);
        assert!(job.validate().is_ok());
        let bad = CronJob {
            schedule: "every minute".into(),
            ..job
        };
        assert!(matches!(bad.validate(), Err(ValidationError::Schedule(_))));
    }

    #[test]
    fn versions_order_by_incarnation_first() {
        let old = ObjectVersion::new(5, 90);
        let recreated = ObjectVersion::new(6, 1);
        assert!(recreated > old);
        assert!(ObjectVersion::new(6, 2) > recreated);
        let mut app = app();
        app.incarnation = 6;
        app.app_id = 2;
        assert_eq!(app.version(), ObjectVersion::new(6, 2));
        assert_eq!(app.version().to_string(), "6/2");
    }

    #[test]
    fn group_rejects_duplicates() {
        let mut group = DeviceGroup::new(Name::new("g").expect("name"));
        assert_eq!((group.device_group_id, group.prune_id), (1, 1));
        group.apps = vec![Name::new("a").expect("name"), Name::new("a").expect("name")];
        assert!(group.validate().is_err());
    }
}
