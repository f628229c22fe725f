//! The messages that travel between control plane and agents.
//!
//! Every change message carries the object's full desired state and its revision, so a
//! receiver can apply any message on its own and ignore one that is not newer than what it
//! holds (DESIGN §2). Append-only: add variants and fields at the end, never reorder.

use crate::model::{
    AppConfig, CronJob, DeviceGroup, Incarnation, ObjectVersion, Revision, ValidationError,
};
use crate::names::{self, Name};
use serde::{Deserialize, Serialize};

/// Everything that crosses the broker, wrapped in the envelope of [`crate::envelope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// An app was created or changed: its full config at a new revision.
    AppChanged(AppConfig),
    /// An app was deleted; devices stop and remove its containers.
    AppDeleted {
        app_name: Name,
        app_id: Revision,
        /// Appended in protocol version 2.
        incarnation: Incarnation,
    },
    /// A device group was created or changed, with the full config of every member.
    DeviceGroupChanged(GroupState),
    /// A device group was deleted; its devices stop and remove every app of it.
    DeviceGroupDeleted {
        device_group: Name,
        device_group_id: Revision,
        /// Appended in protocol version 2.
        incarnation: Incarnation,
    },
    /// An agent asks for the current state of one app or group.
    SyncRequest(SyncRequest),
    /// The control plane's answer to a [`SyncRequest`].
    SyncReply(SyncReply),
    /// An agent's periodic and on-change report.
    DeviceReport(DeviceReport),
}

impl Message {
    /// The MQTT topic a change message is published on (the object's, see
    /// [`crate::names::app_topic`]); `None` for the messages that are not changes.
    pub fn topic(&self) -> Option<String> {
        match self {
            Self::AppChanged(config) => Some(names::app_topic(&config.app_name)),
            Self::AppDeleted { app_name, .. } => Some(names::app_topic(app_name)),
            Self::DeviceGroupChanged(state) => Some(names::group_topic(&state.group.device_group)),
            Self::DeviceGroupDeleted { device_group, .. } => Some(names::group_topic(device_group)),
            Self::SyncRequest(_) | Self::SyncReply(_) | Self::DeviceReport(_) => None,
        }
    }

    /// The version a delete message removes, for the revision rules of DESIGN §2.
    pub fn deleted_version(&self) -> Option<ObjectVersion> {
        match self {
            Self::AppDeleted {
                app_id,
                incarnation,
                ..
            } => Some(ObjectVersion::new(*incarnation, *app_id)),
            Self::DeviceGroupDeleted {
                device_group_id,
                incarnation,
                ..
            } => Some(ObjectVersion::new(*incarnation, *device_group_id)),
            _ => None,
        }
    }

    /// The kind of message, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AppChanged(_) => "app_changed",
            Self::AppDeleted { .. } => "app_deleted",
            Self::DeviceGroupChanged(_) => "device_group_changed",
            Self::DeviceGroupDeleted { .. } => "device_group_deleted",
            Self::SyncRequest(_) => "sync_request",
            Self::SyncReply(_) => "sync_reply",
            Self::DeviceReport(_) => "device_report",
        }
    }

    /// Checks every config the message carries. Names are already valid by construction.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Self::AppChanged(app) => app.validate(),
            Self::DeviceGroupChanged(state) => state.validate(),
            Self::SyncReply(reply) => match &reply.result {
                SyncResult::App(app) => app.validate(),
                SyncResult::Group(state) => state.validate(),
                SyncResult::NotFound => Ok(()),
            },
            Self::AppDeleted { .. }
            | Self::DeviceGroupDeleted { .. }
            | Self::SyncRequest(_)
            | Self::DeviceReport(_) => Ok(()),
        }
    }
}

/// A device group with the full config of each of its apps and cron jobs: what a group-mode
/// agent needs to converge without asking for anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub group: DeviceGroup,
    pub apps: Vec<AppConfig>,
    pub cron_jobs: Vec<CronJob>,
    /// Members whose config the control plane could not read (a corrupt record): a device
    /// keeps whatever it holds for them, since leaving them out of `apps` would tell it to
    /// remove them. Appended in protocol version 2.
    pub unavailable: Vec<Name>,
}

impl GroupState {
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.group.validate()?;
        self.apps.iter().try_for_each(AppConfig::validate)?;
        for app in &self.unavailable {
            if !self.group.apps.contains(app)
                || self.apps.iter().any(|config| &config.app_name == app)
            {
                return Err(ValidationError::Unavailable(app.to_string()));
            }
        }
        self.cron_jobs.iter().try_for_each(CronJob::validate)
    }
}

/// The identity of a store, fixed when the store is first initialised (DESIGN §2). Sync
/// replies carry it, so that an agent can tell "not found" from the store it has always
/// synced with (authoritative: remove) from "not found" from some other, perhaps empty,
/// store (never acted on). Shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StoreId(pub u128);

impl StoreId {
    /// Parses the 32 hex digits [`StoreId`]'s `Display` writes.
    pub fn parse_hex(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(Self)
    }
}

impl std::fmt::Display for StoreId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:032x}", self.0)
    }
}

impl std::fmt::Debug for StoreId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "StoreId({self})")
    }
}

/// What a sync request asks about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncTarget {
    App(Name),
    DeviceGroup(Name),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub device_id: Name,
    pub target: SyncTarget,
    /// Echoed in the reply; also set as the AMQP correlation id.
    pub correlation_id: String,
    pub agent_version: String,
    /// The store the agent last synced with, if any (appended in protocol version 2): a
    /// control plane answering from another store can tell, and say so (`/readyz`).
    pub known_store: Option<StoreId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReply {
    pub correlation_id: String,
    pub result: SyncResult,
    /// The store the answer comes from (appended in protocol version 2).
    pub store_id: StoreId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResult {
    App(AppConfig),
    Group(GroupState),
    /// No such app or group (yet): the agent waits and asks again. Authoritative only from
    /// the store the agent already knows (see [`StoreId`]).
    NotFound,
}

/// A device's state as the agent last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    pub device_id: Name,
    pub hostname: String,
    pub device_group: Option<Name>,
    pub device_group_id: Option<Revision>,
    pub prune_id: Option<Revision>,
    /// Unix seconds at which the agent made the report.
    pub report_creation_time: u64,
    /// True when every app is applied at its desired revision.
    pub updated: bool,
    pub agent_version: String,
    pub apps: Vec<AppReport>,
    pub resources: ResourceUsage,
    // Appended in protocol version 2 (issue 15: the device inventory).
    /// The target triple the agent was built for (`aarch64-unknown-linux-musl`).
    pub target: String,
    /// The operating system (`PRETTY_NAME` of `/etc/os-release`), empty when unknown.
    pub os: String,
    /// The kernel (`Linux 6.1.0-18-arm64`), empty when unknown.
    pub kernel: String,
    /// The Docker engine's version, `None` when the engine did not answer.
    pub docker_version: Option<String>,
    /// Seconds since the device booted.
    pub uptime_secs: u64,
    /// Seconds since the agent started.
    pub agent_uptime_secs: u64,
    /// How often the agent reports when nothing changes: the control plane's fallback
    /// presence rule ("no report for three intervals", when the broker cannot say whether
    /// the agent's queue exists) needs the agent's own interval.
    pub report_interval_secs: u64,
    /// What the agent was configured to run.
    pub mode: DeviceMode,
    /// Random, new at every agent start, and [`DeviceReport::sequence`] counting up within it:
    /// reports of one device ingested by competing consumers can arrive out of order, and
    /// the device's clock (a board without a real-time clock) cannot order them.
    pub session: u64,
    pub sequence: u64,
    /// The incarnation of the device group the agent holds (group mode).
    pub device_group_incarnation: Option<Incarnation>,
    /// The agent's last report before a graceful stop (best-effort): the control plane shows
    /// the device offline at once instead of when the broker drops its connection.
    pub stopping: bool,
    /// The run containers of each cron job: every job the agent holds and every job that
    /// has runs on the engine, by name. Appended in protocol version 2 (after `stopping`).
    pub cron_jobs: Vec<CronJobReport>,
}

/// An agent's configuration: a device group, or a list of apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceMode {
    Group(Name),
    Apps(Vec<Name>),
}

/// One app on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppReport {
    pub app_name: Name,
    pub desired_revision: Option<Revision>,
    pub applied_revision: Option<Revision>,
    pub containers: Vec<ContainerReport>,
    /// The last error applying this app (a failed pull, a Docker error), if any.
    pub error: Option<String>,
    // Appended in protocol version 2 (issue 15: rollout status).
    /// The incarnation of the desired config: with `desired_revision`, the exact version the
    /// device was told to run (a re-created app starts again at revision 1).
    pub desired_incarnation: Option<Incarnation>,
    /// The containers are exactly what the desired config asks for (count, revision,
    /// incarnation, settings); `applied_revision` alone can match while one is missing.
    pub converged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerReport {
    pub name: String,
    pub image: String,
    /// Docker's state: `running`, `exited`, `restarting`, ...
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or `None` without a health check.
    pub health: Option<String>,
    pub app_id: Option<Revision>,
    // Appended in protocol version 2.
    /// How often Docker restarted the container (a crash loop shows here), `None` when the
    /// runtime does not say.
    pub restart_count: Option<u64>,
    /// The `incarnation` label of the container.
    pub incarnation: Option<Incarnation>,
}

/// One cron job on one device: its run containers (`<job>-<fire time>`, labelled
/// `cron_job_name`), oldest fire first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronJobReport {
    pub cron_job_name: Name,
    pub containers: Vec<CronContainerReport>,
}

/// One run of a cron job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronContainerReport {
    pub name: String,
    pub image: String,
    /// Docker's state: `running`, `exited`, `created`, ...
    pub state: String,
    /// The `cron_job_id` label: the job revision the run was started from.
    pub cron_job_id: Option<Revision>,
    /// The `incarnation` label.
    pub incarnation: Option<Incarnation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceUsage {
    pub cpu_cores: u32,
    pub cpu_percent: f32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub root_disk_total_bytes: u64,
    pub root_disk_used_bytes: u64,
}
