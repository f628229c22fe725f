//! The store: where apps and device groups live, with their revisions and outbox flags.
//!
//! [`Store`] is a small object-safe trait over opaque records, implemented by the embedded
//! database ([`embedded`]), MongoDB ([`mongo`]) and an in-memory map for tests ([`memory`]);
//! one contract suite (`tests/support/store_contract.rs`) runs against all of them. Typed
//! documents ([`AppDocument`], [`GroupDocument`]) are converted to and from records here, so
//! neither the REST DTOs nor the protocol's wire types dictate the stored layout.
//!
//! Concurrency: every record carries a `version`. [`Store::replace`] is a compare-and-swap on
//! it that writes `version + 1` together with the new body in one atomic operation, so two
//! writers never produce the same version and neither update is lost (the loser re-reads and
//! retries). The domain revisions (`app_id`, ...) live in the body and are bumped by the
//! service in that same write. Within one instance the service never races itself (it
//! combines concurrent writes of one object, see `service::write`), so conflicts only come
//! from other instances.
//!
//! Identity: every store has a [`StoreId`], made when it is first initialised and never
//! changed, which sync replies carry (DESIGN §2), and hands out incarnations
//! ([`Store::next_incarnation`]) that only ever go up.
//!
//! Devices: the device registry ([`DeviceRecord`], the `*_device*` methods) is a separate
//! table of the same store, outside the write path: the latest report of every device,
//! overwritten by each newer one (compare-and-swap on its own `version`), never published,
//! never flagged for the outbox, never tombstoned. A device that stops reporting is removed
//! by [`Store::expire_devices`] after `NEBULA_DEVICE_EXPIRY_SECS`, so the table holds the
//! fleet that exists, not every device that ever did.
//!
//! Report history: past reports ([`ReportRecord`], the `*_report*` methods), a third table
//! outside the write path, bounded per device and in time ([`history`]).

pub mod embedded;
pub mod history;
pub mod memory;
pub mod mongo;

pub use crate::audit::AuditEntry;
use crate::error::StoreError;
use async_trait::async_trait;
pub use history::{ReportQuery, ReportRecord};
use nebula_protocol::{
    AppConfig, ContainersPer, CronJob, DeviceGroup, EnvVarsForm, Incarnation, Name, PortMapping,
    PortProtocol, PullPolicy, Revision, StoreId,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The collections of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    App,
    DeviceGroup,
    /// Devices' own broker credentials (`crate::device_credentials`): never published, so
    /// never in the outbox.
    DeviceCredential,
    /// Provisioning tokens (`crate::provisioning`): never published either.
    ProvisioningToken,
    /// Cron jobs: published inside the state of each group that lists them (no exchange of
    /// their own).
    CronJob,
    /// Users, user groups, and the token index (a token's SHA-256 → its user): never
    /// published (`service::users`).
    User,
    UserGroup,
    UserToken,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::App,
        Kind::DeviceGroup,
        Kind::DeviceCredential,
        Kind::ProvisioningToken,
        Kind::CronJob,
        Kind::User,
        Kind::UserGroup,
        Kind::UserToken,
    ];
    /// The kinds whose changes are published to the broker (through the outbox).
    pub const PUBLISHED: [Kind; 3] = [Kind::App, Kind::DeviceGroup, Kind::CronJob];

    /// Table or collection name.
    pub fn collection(self) -> &'static str {
        match self {
            Self::App => "apps",
            Self::DeviceGroup => "device_groups",
            Self::DeviceCredential => "device_credentials",
            Self::ProvisioningToken => "provisioning_tokens",
            Self::CronJob => "cron_jobs",
            Self::User => "users",
            Self::UserGroup => "user_groups",
            Self::UserToken => "user_tokens",
        }
    }

    /// Singular, for error messages and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::DeviceGroup => "device_group",
            Self::DeviceCredential => "device_credential",
            Self::ProvisioningToken => "provisioning_token",
            Self::CronJob => "cron_job",
            Self::User => "user",
            Self::UserGroup => "user_group",
            Self::UserToken => "user_token",
        }
    }
}

/// One stored object as the backends see it: a name, bookkeeping, and an opaque JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    /// Compare-and-swap token: 1 on insert, +1 on every [`Store::replace`].
    pub version: u64,
    /// Outbox flag: set in the same write as a change, cleared once its publish is confirmed.
    pub pending_publish: bool,
    /// The object is deleted: invisible to readers. The record stays (its outbox flag cleared
    /// once the broker knows), so that a re-created object continues its record's versions
    /// and a compare-and-swap based on a read of the old incarnation can never succeed
    /// against the new one.
    pub tombstone: bool,
    /// The typed document, serialised as JSON text.
    pub body: String,
}

/// The backends' interface. Every method is one atomic operation.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Which backend this is, for logs.
    fn backend(&self) -> &'static str;

    /// The store's identity, read (or made) when the store was opened.
    fn identity(&self) -> StoreId;

    /// A new incarnation for an object being created: greater than every incarnation this
    /// store handed out before, and at least the current time in microseconds since the Unix
    /// epoch, so that a store set up later (a restored backup, a migration) still hands out
    /// greater ones than an older store did. One atomic operation.
    async fn next_incarnation(&self) -> Result<Incarnation, StoreError>;

    /// Checks that the database answers (for `/readyz` and the liveness watchdog).
    async fn ping(&self) -> Result<(), StoreError>;

    async fn get(&self, kind: Kind, name: &str) -> Result<Option<Record>, StoreError>;

    /// Every record of a kind, tombstones included, sorted by name.
    async fn list(&self, kind: Kind) -> Result<Vec<Record>, StoreError>;

    /// Creates a record at version 1 (`record.version` is ignored).
    /// `AlreadyExists` when the name is taken, by a tombstone too.
    async fn insert(&self, kind: Kind, record: &Record) -> Result<(), StoreError>;

    /// Replaces the record iff its version is still `expected_version`, writing version
    /// `expected_version + 1`. `Conflict` when it changed, `NotFound` when it is gone.
    async fn replace(
        &self,
        kind: Kind,
        expected_version: u64,
        record: &Record,
    ) -> Result<u64, StoreError>;

    /// Clears the outbox flag iff the record is still at `record.version`, writing
    /// `record.body` with it. The version does not change, so the body written must say the
    /// same as the one at that version (the service only drops hints from it, such as a
    /// group's exchanges left to unbind): a writer that read the flagged record loses
    /// nothing. Returns whether the flag was cleared.
    async fn clear_pending(&self, kind: Kind, record: &Record) -> Result<bool, StoreError>;

    /// Records with the outbox flag set, sorted by name.
    async fn pending(&self, kind: Kind) -> Result<Vec<Record>, StoreError>;

    /// One device's record.
    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError>;

    /// The devices `query` selects, sorted by id: those whose id is greater than
    /// `query.after`, at most `query.limit` of them.
    async fn list_devices(&self, query: &DeviceQuery) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Writes a device record: with `expected_version` `None` it inserts at version 1
    /// (`AlreadyExists` when the device is known), with `Some(v)` it replaces iff the record
    /// is still at `v`, writing `v + 1` (`Conflict` otherwise, `NotFound` when it is gone).
    /// Returns the version written.
    async fn put_device(
        &self,
        record: &DeviceRecord,
        expected_version: Option<u64>,
    ) -> Result<u64, StoreError>;

    /// Removes every device whose `last_seen_ms` is before `seen_before_ms`; how many.
    async fn expire_devices(&self, seen_before_ms: u64) -> Result<u64, StoreError>;

    /// Writes a past report into its device's slot ([`history`]), replacing what the slot
    /// held.
    async fn put_report(&self, record: &ReportRecord) -> Result<(), StoreError>;

    /// The past reports `query` selects, sorted by key: those whose key is greater than
    /// `query.after`, at most `query.limit` of them.
    async fn list_reports(&self, query: &ReportQuery) -> Result<Vec<ReportRecord>, StoreError>;

    /// Removes every past report received before `received_before_ms`; how many.
    async fn expire_reports(&self, received_before_ms: u64) -> Result<u64, StoreError>;

    /// Adds an entry to the audit trail (its id is unique: `AuditEntry::make_id`).
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;

    /// Up to `limit` audit entries with ids below `before` (from the newest when `None`),
    /// newest first.
    async fn list_audit(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Removes the audit entries recorded before `before_ms`; returns how many.
    async fn expire_audit(&self, before_ms: u64) -> Result<u64, StoreError>;
}

/// A device's latest report as the backends see it: the indexed fields and an opaque body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: String,
    /// Compare-and-swap token: 1 on insert, +1 on every write.
    pub version: u64,
    /// When a control plane last ingested a report of the device (its clock, Unix ms).
    pub last_seen_ms: u64,
    /// The device's group in group mode: filtered on by the store.
    pub device_group: Option<String>,
    /// Every app the device is configured for or reports: filtered on by the store.
    pub apps: Vec<String>,
    /// The typed document ([`DeviceDocument`]), serialised as JSON text.
    pub body: String,
}

/// Which devices [`Store::list_devices`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceQuery {
    pub device_group: Option<String>,
    pub app: Option<String>,
    /// Keyset paging: only ids greater than this.
    pub after: Option<String>,
    pub limit: usize,
}

impl Default for DeviceQuery {
    fn default() -> Self {
        Self {
            device_group: None,
            app: None,
            after: None,
            limit: usize::MAX,
        }
    }
}

impl DeviceQuery {
    /// Whether `record` is selected (ignoring paging): how the embedded and memory stores
    /// filter, and what MongoDB's query says.
    pub fn matches(&self, record: &DeviceRecord) -> bool {
        self.device_group
            .as_ref()
            .is_none_or(|group| record.device_group.as_ref() == Some(group))
            && self
                .app
                .as_ref()
                .is_none_or(|app| record.apps.iter().any(|known| known == app))
            && self
                .after
                .as_ref()
                .is_none_or(|after| record.device_id.as_str() > after.as_str())
    }
}

/// Stored form of a device: its latest report, converted from the wire type at ingestion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDocument {
    pub device_id: String,
    pub hostname: String,
    /// `group` or `apps`.
    pub mode: String,
    pub device_group: Option<String>,
    pub device_group_id: Option<Revision>,
    pub device_group_incarnation: Option<Incarnation>,
    pub prune_id: Option<Revision>,
    /// App mode: the apps the agent is configured for.
    pub configured_apps: Vec<String>,
    pub agent_version: String,
    pub target: String,
    pub os: String,
    pub kernel: String,
    pub docker_version: Option<String>,
    pub uptime_secs: u64,
    pub agent_uptime_secs: u64,
    pub report_interval_secs: u64,
    /// The device's clock when it made the report (Unix seconds).
    pub report_creation_time: u64,
    pub updated: bool,
    pub session: u64,
    pub sequence: u64,
    pub apps: Vec<DeviceAppDocument>,
    pub resources: DeviceResourcesDocument,
    /// The agent's last report before a graceful stop: offline until its next report.
    #[serde(default)]
    pub stopping: bool,
    /// Each cron job's run containers. Records stored before reports carried them read as
    /// none.
    #[serde(default)]
    pub cron_jobs: Vec<DeviceCronJobDocument>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAppDocument {
    pub app_name: String,
    pub desired_incarnation: Option<Incarnation>,
    pub desired_revision: Option<Revision>,
    pub applied_revision: Option<Revision>,
    pub converged: bool,
    pub error: Option<String>,
    pub containers: Vec<DeviceContainerDocument>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceContainerDocument {
    pub name: String,
    pub image: String,
    pub state: String,
    pub health: Option<String>,
    pub app_id: Option<Revision>,
    pub incarnation: Option<Incarnation>,
    pub restart_count: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCronJobDocument {
    pub cron_job_name: String,
    pub containers: Vec<DeviceCronContainerDocument>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCronContainerDocument {
    pub name: String,
    pub image: String,
    pub state: String,
    pub cron_job_id: Option<Revision>,
    pub incarnation: Option<Incarnation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceResourcesDocument {
    pub cpu_cores: u32,
    pub cpu_percent: f32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub root_disk_total_bytes: u64,
    pub root_disk_used_bytes: u64,
}

/// Stored form of an app. Mirrors [`AppConfig`] with plain, self-describing field types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppDocument {
    pub app_name: String,
    pub app_id: Revision,
    pub docker_image: String,
    pub starting_ports: Vec<StoredPort>,
    pub containers_per: StoredContainersPer,
    pub env_vars: BTreeMap<String, String>,
    pub running: bool,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
    pub devices: Vec<String>,
    pub privileged: bool,
    pub rolling_restart: bool,
    /// Absent in records written before incarnations existed: those read as 0, as agents
    /// read containers of that era.
    #[serde(default)]
    pub incarnation: Incarnation,
    /// Absent in records written before the field existed: Docker's default.
    #[serde(default = "default_stop_timeout_secs")]
    pub stop_timeout_secs: u32,
    /// `always` or `if_not_present`; absent in older records: `always`, as v2 pulled.
    #[serde(default = "default_pull_policy")]
    pub pull_policy: String,
    /// `list` when the client wrote `env_vars` as a list of `K=V` strings; absent for a dict
    /// (and in older records), so records of dicts read the same by the previous release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars_form: Option<String>,
}

fn default_stop_timeout_secs() -> u32 {
    nebula_protocol::model::DEFAULT_STOP_TIMEOUT_SECS
}

fn default_pull_policy() -> String {
    PullPolicy::default().as_str().to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPort {
    pub host: u16,
    pub container: u16,
    /// True for v2's plain-int form, so a read returns what was written.
    pub same: bool,
    /// `tcp` or `udp` when the client spelled the protocol out (`"53/udp"`); absent for the
    /// v2 forms, which are TCP, and in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredContainersPer {
    pub key: String,
    pub value: u32,
}

/// Stored form of a device group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupDocument {
    pub device_group: String,
    pub device_group_id: Revision,
    pub prune_id: Revision,
    pub apps: Vec<String>,
    pub cron_jobs: Vec<String>,
    #[serde(default)]
    pub incarnation: Incarnation,
    /// Apps whose exchange may still be bound to the group's exchange although they are no
    /// longer members: written with the change that removed them, cleared with the outbox
    /// flag once the broker has unbound them. The broker's bindings are derived from the
    /// store this way, whatever order concurrent requests reached the broker in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unbind: Vec<String>,
}

/// Stored form of a cron job. Mirrors [`CronJob`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CronJobDocument {
    pub cron_job_name: String,
    pub cron_job_id: Revision,
    pub schedule: String,
    pub docker_image: String,
    pub env_vars: BTreeMap<String, String>,
    pub running: bool,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
    pub devices: Vec<String>,
    pub privileged: bool,
    pub incarnation: Incarnation,
}

impl From<&CronJob> for CronJobDocument {
    fn from(job: &CronJob) -> Self {
        Self {
            cron_job_name: job.cron_job_name.to_string(),
            cron_job_id: job.cron_job_id,
            schedule: job.schedule.clone(),
            docker_image: job.docker_image.clone(),
            env_vars: job.env_vars.clone(),
            running: job.running,
            networks: job.networks.clone(),
            volumes: job.volumes.clone(),
            devices: job.devices.clone(),
            privileged: job.privileged,
            incarnation: job.incarnation,
        }
    }
}

impl CronJobDocument {
    pub fn to_job(&self) -> Result<CronJob, StoreError> {
        Ok(CronJob {
            cron_job_name: name_of(Kind::CronJob, &self.cron_job_name)?,
            cron_job_id: self.cron_job_id,
            schedule: self.schedule.clone(),
            docker_image: self.docker_image.clone(),
            env_vars: self.env_vars.clone(),
            running: self.running,
            networks: self.networks.clone(),
            volumes: self.volumes.clone(),
            devices: self.devices.clone(),
            privileged: self.privileged,
            incarnation: self.incarnation,
        })
    }
}

/// A new, random store identity (for a store being initialised).
pub fn new_store_id() -> StoreId {
    StoreId(u128::from(fastrand::u64(..)) << 64 | u128::from(fastrand::u64(..)))
}

/// The current time in microseconds since the Unix epoch: the floor of a new incarnation.
pub fn now_micros() -> Incarnation {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
        })
}

fn name_of(kind: Kind, value: &str) -> Result<Name, StoreError> {
    Name::new(value).map_err(|error| StoreError::corrupt(kind, value, error))
}

impl From<&AppConfig> for AppDocument {
    fn from(config: &AppConfig) -> Self {
        Self {
            app_name: config.app_name.to_string(),
            app_id: config.app_id,
            docker_image: config.docker_image.clone(),
            starting_ports: config
                .starting_ports
                .iter()
                .map(|mapping| StoredPort {
                    host: mapping.host_base(),
                    container: mapping.container_port(),
                    same: matches!(mapping, PortMapping::Same(_)),
                    protocol: match mapping {
                        PortMapping::MappedWithProtocol { protocol, .. } => {
                            Some(protocol.as_str().to_string())
                        }
                        PortMapping::Same(_) | PortMapping::Mapped { .. } => None,
                    },
                })
                .collect(),
            containers_per: StoredContainersPer {
                key: config.containers_per.key().to_string(),
                value: config.containers_per.value(),
            },
            env_vars: config.env_vars.clone(),
            running: config.running,
            networks: config.networks.clone(),
            volumes: config.volumes.clone(),
            devices: config.devices.clone(),
            privileged: config.privileged,
            rolling_restart: config.rolling_restart,
            incarnation: config.incarnation,
            stop_timeout_secs: config.stop_timeout_secs,
            pull_policy: config.pull_policy.as_str().to_string(),
            env_vars_form: match config.env_vars_form {
                EnvVarsForm::Dict => None,
                EnvVarsForm::List => Some("list".to_string()),
            },
        }
    }
}

impl AppDocument {
    pub fn to_config(&self) -> Result<AppConfig, StoreError> {
        let kind = Kind::App;
        Ok(AppConfig {
            app_name: name_of(kind, &self.app_name)?,
            app_id: self.app_id,
            docker_image: self.docker_image.clone(),
            starting_ports: self
                .starting_ports
                .iter()
                .map(|port| {
                    Ok(match (&port.protocol, port.same) {
                        (Some(protocol), _) => PortMapping::MappedWithProtocol {
                            host: port.host,
                            container: port.container,
                            protocol: PortProtocol::from_name(protocol).ok_or_else(|| {
                                StoreError::corrupt(kind, &self.app_name, "unknown port protocol")
                            })?,
                        },
                        (None, true) => PortMapping::Same(port.container),
                        (None, false) => PortMapping::Mapped {
                            host: port.host,
                            container: port.container,
                        },
                    })
                })
                .collect::<Result<_, StoreError>>()?,
            containers_per: ContainersPer::from_key(
                &self.containers_per.key,
                self.containers_per.value,
            )
            .ok_or_else(|| {
                StoreError::corrupt(kind, &self.app_name, "unknown containers_per key")
            })?,
            env_vars: self.env_vars.clone(),
            running: self.running,
            networks: self.networks.clone(),
            volumes: self.volumes.clone(),
            devices: self.devices.clone(),
            privileged: self.privileged,
            rolling_restart: self.rolling_restart,
            incarnation: self.incarnation,
            stop_timeout_secs: self.stop_timeout_secs,
            pull_policy: PullPolicy::from_name(&self.pull_policy)
                .ok_or_else(|| StoreError::corrupt(kind, &self.app_name, "unknown pull_policy"))?,
            env_vars_form: match self.env_vars_form.as_deref() {
                None => EnvVarsForm::Dict,
                Some("list") => EnvVarsForm::List,
                Some(_) => {
                    return Err(StoreError::corrupt(
                        kind,
                        &self.app_name,
                        "unknown env_vars_form",
                    ));
                }
            },
        })
    }
}

impl From<&DeviceGroup> for GroupDocument {
    fn from(group: &DeviceGroup) -> Self {
        Self {
            device_group: group.device_group.to_string(),
            device_group_id: group.device_group_id,
            prune_id: group.prune_id,
            apps: group.apps.iter().map(ToString::to_string).collect(),
            cron_jobs: group.cron_jobs.iter().map(ToString::to_string).collect(),
            incarnation: group.incarnation,
            unbind: Vec::new(),
        }
    }
}

impl GroupDocument {
    pub fn to_group(&self) -> Result<DeviceGroup, StoreError> {
        let kind = Kind::DeviceGroup;
        let names = |values: &[String]| {
            values
                .iter()
                .map(|value| name_of(kind, value))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(DeviceGroup {
            device_group: name_of(kind, &self.device_group)?,
            device_group_id: self.device_group_id,
            prune_id: self.prune_id,
            apps: names(&self.apps)?,
            cron_jobs: names(&self.cron_jobs)?,
            incarnation: self.incarnation,
        })
    }
}

/// Builds a record from a typed document.
pub fn to_record<T: Serialize>(
    kind: Kind,
    name: &str,
    document: &T,
    pending_publish: bool,
    tombstone: bool,
) -> Result<Record, StoreError> {
    let body =
        serde_json::to_string(document).map_err(|error| StoreError::corrupt(kind, name, error))?;
    Ok(Record {
        name: name.to_string(),
        version: 0,
        pending_publish,
        tombstone,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app record as the previous release stored it: no incarnation, stop timeout, pull
    /// policy or port protocol.
    const PREVIOUS_RECORD: &str = r#"{"app_name":"web","app_id":3,"docker_image":"nginx","starting_ports":[{"host":80,"container":80,"same":true},{"host":8080,"container":80,"same":false}],"containers_per":{"key":"server","value":2},"env_vars":{},"running":true,"networks":["nebula"],"volumes":[],"devices":[],"privileged":false,"rolling_restart":false}"#;

    #[test]
    fn records_of_the_previous_release_read_with_the_defaults() {
        let document: AppDocument = serde_json::from_str(PREVIOUS_RECORD).expect("parse");
        let config = document.to_config().expect("config");
        assert_eq!(config.stop_timeout_secs, 10);
        assert_eq!(config.pull_policy, PullPolicy::Always);
        assert_eq!(config.incarnation, 0);
        assert_eq!(
            config.starting_ports,
            vec![
                PortMapping::Same(80),
                PortMapping::Mapped {
                    host: 8080,
                    container: 80
                }
            ]
        );
        // Written back, the v2 port forms carry no protocol key: the record reads the same
        // by the previous release.
        let written = serde_json::to_string(&AppDocument::from(&config)).expect("write");
        assert!(!written.contains("protocol"), "{written}");
    }

    #[test]
    fn new_fields_round_trip_through_the_record() {
        let mut config = AppConfig::new(Name::new("dns").expect("name"), "coredns");
        config.starting_ports = vec![PortMapping::MappedWithProtocol {
            host: 5353,
            container: 53,
            protocol: PortProtocol::Udp,
        }];
        config.stop_timeout_secs = 0;
        config.pull_policy = PullPolicy::IfNotPresent;
        let written = serde_json::to_string(&AppDocument::from(&config)).expect("write");
        let read: AppDocument = serde_json::from_str(&written).expect("read");
        assert_eq!(read.to_config().expect("config"), config);

        // The list form of env_vars is kept; a dict writes no form key (older releases read it).
        config.env_vars_form = nebula_protocol::EnvVarsForm::List;
        let listed = serde_json::to_string(&AppDocument::from(&config)).expect("write");
        let read: AppDocument = serde_json::from_str(&listed).expect("read");
        assert_eq!(read.to_config().expect("config"), config);
        assert!(!written.contains("env_vars_form"), "{written}");

        let mut corrupt: serde_json::Value = serde_json::from_str(&written).expect("json");
        corrupt["pull_policy"] = serde_json::json!("sometimes");
        let corrupt: AppDocument = serde_json::from_value(corrupt).expect("document");
        assert!(corrupt.to_config().is_err());
    }
}
