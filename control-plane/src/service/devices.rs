//! The device registry and rollout status (issue 15): what agents' reports say, kept in the
//! store, and read back as "which devices are there, are they online, did my change reach
//! them".
//!
//! One ingestion path: [`Service::ingest_report`] is the only place a report enters the
//! store, whichever consumer took it off the `nebula.reports` queue. Report history (the v2
//! `GET /api/v2/reports`, issue 14) belongs there too, next to the latest-report write, so
//! that no second consumer ever competes for the same queue.
//!
//! Online: the device's agent is connected to the broker now — its agent queue exists. The
//! agent's queues are exclusive, so they live exactly as long as its connection; the broker
//! knows, and asking it (a passive declare, [`Service::online`]) costs the device nothing on
//! its link. That is what lets agents on metered links report only on change and every six
//! hours (issue 19) instead of every minute just to look alive. An agent that stops
//! gracefully says so in a last report (best-effort) and shows offline at once; one killed
//! shows offline when the broker drops its connection (at once for a closed socket, within
//! the heartbeat rules for a dead link); answers are kept for [`PRESENCE_TTL`]. Without a
//! broker answer (the instance is reconnecting) presence falls back to the reports: one
//! received within the last [`OFFLINE_AFTER_INTERVALS`] of the device's own report intervals
//! (the report carries the agent's interval; a stored document without one counts
//! [`DEFAULT_REPORT_INTERVAL_SECS`]).

use super::{Service, ServiceError};
use crate::error::StoreError;
use crate::store::{
    DeviceAppDocument, DeviceContainerDocument, DeviceCronContainerDocument, DeviceCronJobDocument,
    DeviceDocument, DeviceQuery, DeviceRecord, DeviceResourcesDocument,
};
use nebula_protocol::{
    AppConfig, DeviceGroup, DeviceMode, DeviceReport, Incarnation, Name, Revision, names,
};
use std::collections::BTreeMap;

/// A device is offline after this many of its report intervals without a report.
pub const OFFLINE_AFTER_INTERVALS: u64 = 3;
/// The interval assumed for a stored document that carries none (0): the agent's default
/// (`NEBULA_REPORT_INTERVAL_SECS`).
pub const DEFAULT_REPORT_INTERVAL_SECS: u64 = 60;
/// Bounds of what one report may carry into the store: a misbehaving agent must not grow a
/// record without limit.
pub const MAX_APPS_PER_REPORT: usize = 256;
pub const MAX_CONTAINERS_PER_APP: usize = 256;
/// Cron jobs and runs of one job (an agent keeps a job's 3 newest finished runs and at most
/// one going).
pub const MAX_CRON_JOBS_PER_REPORT: usize = 256;
pub const MAX_RUNS_PER_CRON_JOB: usize = 256;
/// Longer strings (a Docker error with a whole pull log in it) are cut to this many bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// The stored (JSON) form of one device at most, in bytes. The bounds above still allow a
/// record of hundreds of megabytes (256 apps of 256 containers of kilobyte strings), far past
/// MongoDB's 16 MB document limit, and the store refusing a write would look like the store
/// failing. A real device's record is a few kilobytes.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// How long `/metrics` shows the same online/offline counts (`Service::device_counts`).
pub const DEVICE_COUNTS_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a device's presence, as the broker answered it, is taken as it is: a page of the
/// inventory or a `/metrics` count asks the broker at most once per device in this time.
pub const PRESENCE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// Presence probes in flight at once when `/metrics` counts the registry.
const PRESENCE_PROBES: usize = 16;
/// Whether a device's agent queue existed, and when the broker said so.
pub type Probed = (tokio::time::Instant, bool);
/// Online and offline devices, and when they were counted.
pub type CountedDevices = (tokio::time::Instant, (u64, u64));
/// Compare-and-swap retries of one report against concurrent ingesters of the same device.
const INGEST_ATTEMPTS: usize = 8;

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// It is the device's latest report now.
    Stored,
    /// An ingester already stored a later report of the same agent session.
    Stale,
}

/// Why a report was refused (it is dropped and counted, never retried).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report of device {device} arrived with routing key {routing_key}")]
    WrongRoutingKey { device: String, routing_key: String },
    #[error("report of device {device} is too large: {reason}")]
    TooLarge { device: String, reason: String },
    /// The store refused this one record (not the store failing): retrying the same report
    /// would only fail again.
    #[error("report of device {device} cannot be stored: {reason}")]
    Unstorable { device: String, reason: String },
}

/// A device as the inventory shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    pub document: DeviceDocument,
    pub last_seen_ms: u64,
    pub online: bool,
    /// Per reported app: where it stands against the store's current version.
    pub app_states: BTreeMap<String, AppState>,
}

/// Where one app stands on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppState {
    /// Told the store's current (incarnation, revision) and running exactly that.
    Current,
    /// Not there yet: the change has not arrived, is being applied, or the device is away.
    Behind,
    /// The last attempt to apply the current version failed (the report carries the error).
    /// An error the device reports while told an older version is not this version's: the
    /// device is behind (a fix deployed after a failure is not failed before it was tried).
    Failed,
    /// The app is not meant for this device any more (deleted, or out of its group); the
    /// device reports what it still has of it.
    Removed,
}

impl AppState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Behind => "behind",
            Self::Failed => "failed",
            Self::Removed => "removed",
        }
    }
}

/// Filters of a device listing (`GET /api/v2/devices`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    pub device_group: Option<String>,
    pub app: Option<String>,
    pub online: Option<bool>,
    pub after: Option<String>,
    pub limit: usize,
}

/// One page of devices, and the id to continue after (`None`: no more).
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePage {
    pub devices: Vec<DeviceStatus>,
    pub next: Option<String>,
}

/// One device in a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutDevice {
    pub device_id: String,
    pub online: bool,
    pub state: AppState,
    pub desired_revision: Option<Revision>,
    pub applied_revision: Option<Revision>,
    /// The errors of the apps that failed, by app.
    pub errors: BTreeMap<String, String>,
}

/// "Did my change reach the fleet?": every device that should run the app or group, and
/// where each stands against the current version.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub incarnation: Incarnation,
    pub revision: Revision,
    pub devices: Vec<RolloutDevice>,
}

impl Rollout {
    pub fn count(&self, state: AppState) -> usize {
        self.devices
            .iter()
            .filter(|device| device.state == state)
            .count()
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_string();
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `value`, or 0 when it is NaN or infinite. JSON has no such numbers: serde_json writes them
/// as `null`, which then does not read back as a number, and the device's record would be
/// unreadable (not shown) until its next report. Every float of a report goes through here.
fn finite(value: f32) -> f32 {
    if value.is_finite() { value } else { 0.0 }
}

/// The stored form of a report, bounded.
pub fn document_of(report: &DeviceReport) -> Result<DeviceDocument, ReportError> {
    let too_large = |reason: String| ReportError::TooLarge {
        device: report.device_id.to_string(),
        reason,
    };
    if report.apps.len() > MAX_APPS_PER_REPORT {
        return Err(too_large(format!(
            "{} apps (at most {MAX_APPS_PER_REPORT})",
            report.apps.len()
        )));
    }
    if let Some(app) = report
        .apps
        .iter()
        .find(|app| app.containers.len() > MAX_CONTAINERS_PER_APP)
    {
        return Err(too_large(format!(
            "{} containers of app {} (at most {MAX_CONTAINERS_PER_APP})",
            app.containers.len(),
            app.app_name
        )));
    }
    if report.cron_jobs.len() > MAX_CRON_JOBS_PER_REPORT {
        return Err(too_large(format!(
            "{} cron jobs (at most {MAX_CRON_JOBS_PER_REPORT})",
            report.cron_jobs.len()
        )));
    }
    if let Some(job) = report
        .cron_jobs
        .iter()
        .find(|job| job.containers.len() > MAX_RUNS_PER_CRON_JOB)
    {
        return Err(too_large(format!(
            "{} runs of cron job {} (at most {MAX_RUNS_PER_CRON_JOB})",
            job.containers.len(),
            job.cron_job_name
        )));
    }
    let (mode, configured_apps) = match &report.mode {
        DeviceMode::Group(_) => ("group", Vec::new()),
        DeviceMode::Apps(apps) => {
            if apps.len() > MAX_APPS_PER_REPORT {
                return Err(too_large(format!("{} configured apps", apps.len())));
            }
            ("apps", apps.iter().map(ToString::to_string).collect())
        }
    };
    let device_group = match &report.mode {
        DeviceMode::Group(group) => Some(group.to_string()),
        DeviceMode::Apps(_) => report.device_group.as_ref().map(ToString::to_string),
    };
    Ok(DeviceDocument {
        device_id: report.device_id.to_string(),
        hostname: cut(&report.hostname),
        mode: mode.to_string(),
        device_group,
        device_group_id: report.device_group_id,
        device_group_incarnation: report.device_group_incarnation,
        prune_id: report.prune_id,
        configured_apps,
        agent_version: cut(&report.agent_version),
        target: cut(&report.target),
        os: cut(&report.os),
        kernel: cut(&report.kernel),
        docker_version: report.docker_version.as_deref().map(cut),
        uptime_secs: report.uptime_secs,
        agent_uptime_secs: report.agent_uptime_secs,
        report_interval_secs: report.report_interval_secs,
        report_creation_time: report.report_creation_time,
        updated: report.updated,
        session: report.session,
        sequence: report.sequence,
        stopping: report.stopping,
        apps: report
            .apps
            .iter()
            .map(|app| DeviceAppDocument {
                app_name: app.app_name.to_string(),
                desired_incarnation: app.desired_incarnation,
                desired_revision: app.desired_revision,
                applied_revision: app.applied_revision,
                converged: app.converged,
                error: app.error.as_deref().map(cut),
                containers: app
                    .containers
                    .iter()
                    .map(|container| DeviceContainerDocument {
                        name: cut(&container.name),
                        image: cut(&container.image),
                        state: cut(&container.state),
                        health: container.health.as_deref().map(cut),
                        app_id: container.app_id,
                        incarnation: container.incarnation,
                        restart_count: container.restart_count,
                    })
                    .collect(),
            })
            .collect(),
        cron_jobs: report
            .cron_jobs
            .iter()
            .map(|job| DeviceCronJobDocument {
                cron_job_name: job.cron_job_name.to_string(),
                containers: job
                    .containers
                    .iter()
                    .map(|run| DeviceCronContainerDocument {
                        name: cut(&run.name),
                        image: cut(&run.image),
                        state: cut(&run.state),
                        cron_job_id: run.cron_job_id,
                        incarnation: run.incarnation,
                    })
                    .collect(),
            })
            .collect(),
        resources: DeviceResourcesDocument {
            cpu_cores: report.resources.cpu_cores,
            cpu_percent: finite(report.resources.cpu_percent),
            memory_total_bytes: report.resources.memory_total_bytes,
            memory_used_bytes: report.resources.memory_used_bytes,
            root_disk_total_bytes: report.resources.root_disk_total_bytes,
            root_disk_used_bytes: report.resources.root_disk_used_bytes,
        },
    })
}

/// The stored body of `document`, refused beyond [`MAX_DOCUMENT_BYTES`].
pub fn body_of(document: &DeviceDocument) -> Result<String, ReportError> {
    let body = serde_json::to_string(document).map_err(|error| ReportError::Unstorable {
        device: document.device_id.clone(),
        reason: error.to_string(),
    })?;
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(ReportError::TooLarge {
            device: document.device_id.clone(),
            reason: format!("{} bytes stored (at most {MAX_DOCUMENT_BYTES})", body.len()),
        });
    }
    Ok(body)
}

/// The queue whose existence says `device`'s agent is connected: its group's queue, or in app
/// mode its first configured app's (every queue of an agent lives and dies with its one
/// connection). `None` when the report names neither, or a name is not valid.
pub fn presence_queue(
    device: &str,
    mode: &str,
    device_group: Option<&str>,
    configured_apps: &[String],
) -> Option<String> {
    let device = Name::new(device).ok()?;
    if mode == "group" {
        Some(names::group_queue(&device, &Name::new(device_group?).ok()?))
    } else {
        Some(names::app_queue(
            &device,
            &Name::new(configured_apps.first()?.as_str()).ok()?,
        ))
    }
}

/// The presence rule without the broker: online iff the last report is not the agent's
/// goodbye (`stopping`) and arrived within the last [`OFFLINE_AFTER_INTERVALS`] of the
/// device's report intervals.
pub fn is_online(
    stopping: bool,
    report_interval_secs: u64,
    last_seen_ms: u64,
    now_ms: u64,
) -> bool {
    !stopping && reported_recently(report_interval_secs, last_seen_ms, now_ms)
}

/// A report within the last [`OFFLINE_AFTER_INTERVALS`] of the device's report intervals
/// (`report_interval_secs`, [`DEFAULT_REPORT_INTERVAL_SECS`] when 0).
pub fn reported_recently(report_interval_secs: u64, last_seen_ms: u64, now_ms: u64) -> bool {
    let interval_secs = if report_interval_secs == 0 {
        DEFAULT_REPORT_INTERVAL_SECS
    } else {
        report_interval_secs
    };
    let interval_ms = interval_secs.saturating_mul(1000);
    now_ms.saturating_sub(last_seen_ms) < interval_ms.saturating_mul(OFFLINE_AFTER_INTERVALS)
}

/// The fields of a stored document that presence needs: `/metrics` counts the fleet without
/// building every device's full document.
#[derive(serde::Deserialize)]
struct PresenceFields {
    #[serde(default)]
    mode: String,
    #[serde(default)]
    device_group: Option<String>,
    #[serde(default)]
    configured_apps: Vec<String>,
    #[serde(default)]
    report_interval_secs: u64,
    #[serde(default)]
    stopping: bool,
}

/// Where `app` stands on a device that reported `entry` for it, when the store's current
/// version is `current` (`None`: the device should not run it).
pub fn app_state(
    entry: Option<&DeviceAppDocument>,
    current: Option<(Incarnation, Revision)>,
) -> AppState {
    match current {
        Some((incarnation, revision)) => {
            let told_current = |entry: &&DeviceAppDocument| {
                entry.desired_incarnation == Some(incarnation)
                    && entry.desired_revision == Some(revision)
            };
            let at_current = entry
                .filter(told_current)
                .is_some_and(|entry| entry.applied_revision == Some(revision) && entry.converged);
            // Only an error applying the current version fails it.
            let failed = entry
                .filter(told_current)
                .is_some_and(|entry| entry.error.is_some());
            if at_current {
                AppState::Current
            } else if failed {
                AppState::Failed
            } else {
                AppState::Behind
            }
        }
        None => AppState::Removed,
    }
}

/// Where a group-mode device that reported `document` (its apps standing as `app_states`)
/// is against the group's current version `current` (incarnation, revision).
///
/// Current: it holds that version, every member app is current on it, and nothing is left
/// to remove (apps still to remove leave `updated` false until they are gone). Failed: it
/// was told that version and an app failed there: a member app failed at its current
/// version, or an app the group no longer has could not be removed. A device reporting no
/// group version (an agent from before it did) is judged by its apps alone. Anything else
/// is behind, errors of a version it no longer runs included.
pub fn group_state(
    document: &DeviceDocument,
    app_states: &BTreeMap<String, AppState>,
    current: (Incarnation, Revision),
) -> AppState {
    let (incarnation, revision) = current;
    let group_current = document.device_group_incarnation == Some(incarnation)
        && document.device_group_id == Some(revision);
    let told_current = document
        .device_group_incarnation
        .is_none_or(|reported| reported == incarnation)
        && document
            .device_group_id
            .is_none_or(|reported| reported == revision);
    let all_current = app_states.values().all(|state| *state == AppState::Current);
    let failed = app_states.values().any(|state| *state == AppState::Failed)
        || document.apps.iter().any(|app| {
            app.error.is_some() && app_states.get(&app.app_name) == Some(&AppState::Removed)
        });
    if group_current && all_current && document.updated {
        AppState::Current
    } else if told_current && failed {
        AppState::Failed
    } else {
        AppState::Behind
    }
}

/// Apps and groups of the store, read once per request and looked up per device.
#[derive(Debug, Default)]
struct Catalog {
    apps: BTreeMap<String, Option<AppConfig>>,
    groups: BTreeMap<String, Option<DeviceGroup>>,
}

impl Catalog {
    async fn app(&mut self, service: &Service, name: &str) -> Option<AppConfig> {
        if let Some(known) = self.apps.get(name) {
            return known.clone();
        }
        let found = match Name::new(name) {
            // A corrupt app cannot be compared with: treated as unknown.
            Ok(name) => service.get_app(&name).await.ok().flatten(),
            Err(_) => None,
        };
        self.apps.insert(name.to_string(), found.clone());
        found
    }

    async fn group(&mut self, service: &Service, name: &str) -> Option<DeviceGroup> {
        if let Some(known) = self.groups.get(name) {
            return known.clone();
        }
        let found = match Name::new(name) {
            Ok(name) => service.get_group(&name).await.ok().flatten(),
            Err(_) => None,
        };
        self.groups.insert(name.to_string(), found.clone());
        found
    }

    /// The apps the store says the device should run.
    async fn apps_of(&mut self, service: &Service, document: &DeviceDocument) -> Vec<String> {
        if document.mode == "group" {
            match document.device_group.as_deref() {
                Some(group) => self
                    .group(service, group)
                    .await
                    .map(|group| group.apps.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                None => Vec::new(),
            }
        } else {
            document.configured_apps.clone()
        }
    }

    /// Where every reported (and every expected) app stands on the device.
    async fn app_states(
        &mut self,
        service: &Service,
        document: &DeviceDocument,
    ) -> BTreeMap<String, AppState> {
        let expected = self.apps_of(service, document).await;
        let mut names: Vec<String> = document
            .apps
            .iter()
            .map(|app| app.app_name.clone())
            .collect();
        names.extend(expected.iter().cloned());
        let mut states = BTreeMap::new();
        for name in names {
            if states.contains_key(&name) {
                continue;
            }
            let current = if expected.contains(&name) {
                self.app(service, &name)
                    .await
                    .map(|config| (config.incarnation, config.app_id))
            } else {
                None
            };
            let entry = document.apps.iter().find(|app| app.app_name == name);
            states.insert(name, app_state(entry, current));
        }
        states
    }
}

impl Service {
    /// Stores `report` as its device's latest, unless a later report of the same agent
    /// session is already stored. `routing_key` is the one the report arrived with: a
    /// report must come from the device it names. The one ingestion path (module docs).
    pub async fn ingest_report(
        &self,
        report: &DeviceReport,
        routing_key: &str,
        received_ms: u64,
    ) -> Result<Ingested, IngestError> {
        let expected_key = names::report_routing_key(&report.device_id);
        if routing_key != expected_key {
            return Err(IngestError::Report(ReportError::WrongRoutingKey {
                device: report.device_id.to_string(),
                routing_key: routing_key.to_string(),
            }));
        }
        let document = document_of(report).map_err(IngestError::Report)?;
        let body = body_of(&document).map_err(IngestError::Report)?;
        let mut apps: Vec<String> = document.configured_apps.clone();
        for app in &document.apps {
            if !apps.contains(&app.app_name) {
                apps.push(app.app_name.clone());
            }
        }
        let record = DeviceRecord {
            device_id: document.device_id.clone(),
            version: 0,
            last_seen_ms: received_ms,
            device_group: document.device_group.clone(),
            apps,
            body,
        };
        for _ in 0..INGEST_ATTEMPTS {
            let expected = match self.store.get_device(&record.device_id).await {
                Ok(None) => None,
                Ok(Some(stored)) => {
                    if let Ok(previous) = serde_json::from_str::<DeviceDocument>(&stored.body)
                        && previous.session == document.session
                        && previous.sequence >= document.sequence
                    {
                        if previous.sequence == document.sequence {
                            // The stored report again (a redelivery): its past report may be
                            // what failed last time. Written again as it was (same key,
                            // same slot), which is a no-op if it is there.
                            self.keep_report(&previous, stored.last_seen_ms, stored.version)
                                .await
                                .map_err(IngestError::Service)?;
                        }
                        return Ok(Ingested::Stale);
                    }
                    Some(stored.version)
                }
                // Overwritten by this report (see `Store::put_device`).
                Err(StoreError::Corrupt { .. }) => Some(0),
                Err(error) => return Err(IngestError::Service(self.store_error(error))),
            };
            match self.store.put_device(&record, expected).await {
                Ok(version) => {
                    self.keep_report(&document, received_ms, version)
                        .await
                        .map_err(IngestError::Service)?;
                    return Ok(Ingested::Stored);
                }
                // Another ingester wrote the device meanwhile: compare with what it wrote.
                Err(
                    StoreError::Conflict { .. }
                    | StoreError::AlreadyExists { .. }
                    | StoreError::NotFound { .. },
                ) => {}
                // An error of this record, not of the store: requeued, the report would
                // fail the same way on every instance.
                Err(error) if !error.is_fatal() => {
                    return Err(IngestError::Report(ReportError::Unstorable {
                        device: record.device_id.clone(),
                        reason: error.to_string(),
                    }));
                }
                Err(error) => return Err(IngestError::Service(self.store_error(error))),
            }
        }
        // Only a storm of reports of one device gets here; the next report tries again.
        Ok(Ingested::Stale)
    }

    /// Removes devices not seen for `expiry`; how many.
    pub async fn expire_devices(&self, expiry: std::time::Duration) -> Result<u64, ServiceError> {
        let expiry_ms = u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX);
        self.store
            .expire_devices(now_ms().saturating_sub(expiry_ms))
            .await
            .map_err(|error| self.store_error(error))
    }

    async fn status_of(
        &self,
        record: DeviceRecord,
        catalog: &mut Catalog,
        now_ms: u64,
    ) -> Option<DeviceStatus> {
        let document: DeviceDocument = match serde_json::from_str(&record.body) {
            Ok(document) => document,
            Err(error) => {
                // Replaced by the device's next report; until then it is not shown.
                tracing::warn!(device = %record.device_id, error = %error, "unreadable device record skipped");
                return None;
            }
        };
        let queue = presence_queue(
            &record.device_id,
            &document.mode,
            document.device_group.as_deref(),
            &document.configured_apps,
        );
        let online = self
            .online(
                queue,
                document.stopping,
                document.report_interval_secs,
                record.last_seen_ms,
                now_ms,
            )
            .await;
        let app_states = catalog.app_states(self, &document).await;
        Some(DeviceStatus {
            document,
            last_seen_ms: record.last_seen_ms,
            online,
            app_states,
        })
    }

    /// Whether a device is online (the module's rule): not said goodbye, and its agent queue
    /// exists, as the broker answered within [`PRESENCE_TTL`] or answers now; without an
    /// answer (no queue name, the broker unreachable), whether it reported recently.
    async fn online(
        &self,
        queue: Option<String>,
        stopping: bool,
        report_interval_secs: u64,
        last_seen_ms: u64,
        now_ms: u64,
    ) -> bool {
        if stopping {
            return false;
        }
        let Some(queue) = queue else {
            return is_online(stopping, report_interval_secs, last_seen_ms, now_ms);
        };
        let now = tokio::time::Instant::now();
        let known = self
            .presence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&queue)
            .copied();
        if let Some((asked, exists)) = known
            && now.duration_since(asked) < PRESENCE_TTL
        {
            return exists;
        }
        match self.broker.queue_exists(&queue).await {
            Ok(exists) => {
                let mut presence = self
                    .presence
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Answers older than their time to live go when the map has grown: the map
                // stays about the size of the fleet looked at recently.
                if presence.len() >= 1024 && presence.len().is_power_of_two() {
                    presence.retain(|_, (asked, _)| now.duration_since(*asked) < PRESENCE_TTL);
                }
                presence.insert(queue, (now, exists));
                exists
            }
            Err(error) => {
                tracing::debug!(queue, error = %error, "presence from the reports: the broker did not answer");
                is_online(stopping, report_interval_secs, last_seen_ms, now_ms)
            }
        }
    }

    /// One device of the inventory.
    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceStatus>, ServiceError> {
        let record = match self.store.get_device(device_id).await {
            Ok(record) => record,
            Err(StoreError::Corrupt { .. }) => None,
            Err(error) => return Err(self.store_error(error)),
        };
        let Some(record) = record else {
            return Ok(None);
        };
        Ok(self
            .status_of(record, &mut Catalog::default(), now_ms())
            .await)
    }

    /// A page of the inventory: group and app filters run in the store, the online filter
    /// here (presence depends on the time of asking), reading further pages until this one
    /// is full.
    pub async fn devices(&self, filter: &DeviceFilter) -> Result<DevicePage, ServiceError> {
        let limit = filter.limit.max(1);
        let now = now_ms();
        let mut catalog = Catalog::default();
        let mut devices = Vec::new();
        let mut after = filter.after.clone();
        loop {
            let batch = self
                .store
                .list_devices(&DeviceQuery {
                    device_group: filter.device_group.clone(),
                    app: filter.app.clone(),
                    after: after.clone(),
                    limit: limit + 1,
                })
                .await
                .map_err(|error| self.store_error(error))?;
            let exhausted = batch.len() <= limit;
            for record in batch {
                if devices.len() == limit {
                    // One more matched than the page holds: there is a next page.
                    return Ok(DevicePage {
                        next: devices
                            .last()
                            .map(|device: &DeviceStatus| device.document.device_id.clone()),
                        devices,
                    });
                }
                after = Some(record.device_id.clone());
                let Some(status) = self.status_of(record, &mut catalog, now).await else {
                    continue;
                };
                if filter.online.is_none_or(|online| online == status.online) {
                    devices.push(status);
                }
            }
            if exhausted {
                return Ok(DevicePage {
                    devices,
                    next: None,
                });
            }
        }
    }

    /// Online and offline devices of the whole registry (for `/metrics`), counted at most
    /// once per [`DEVICE_COUNTS_TTL`]: counting scans the whole registry (every record's
    /// body comes back from the store; only its presence fields are parsed), and scrapers,
    /// several Prometheus servers or a dashboard, must not turn into one full scan each.
    /// The lock is held while counting, so scrapes arriving meanwhile wait for that one scan
    /// and take its answer. A failed count is not kept.
    pub async fn device_counts(&self) -> Result<(u64, u64), ServiceError> {
        let mut cached = self.device_counts.lock().await;
        if let Some((counted, counts)) = *cached
            && counted.elapsed() < DEVICE_COUNTS_TTL
        {
            return Ok(counts);
        }
        let counts = self.count_devices().await?;
        *cached = Some((tokio::time::Instant::now(), counts));
        Ok(counts)
    }

    /// One scan of the registry: each record's last-seen time, report interval and goodbye
    /// flag, and presence from the broker (no app or group lookups). Unreadable records are not counted, as the
    /// inventory does not show them.
    async fn count_devices(&self) -> Result<(u64, u64), ServiceError> {
        let records = self
            .store
            .list_devices(&DeviceQuery::default())
            .await
            .map_err(|error| self.store_error(error))?;
        let now = now_ms();
        // Presence asks the broker per device: a few at a time, so that a large registry is
        // counted in round trips divided by PRESENCE_PROBES, not one after another.
        let mut devices = Vec::with_capacity(records.len());
        for record in &records {
            let Ok(fields) = serde_json::from_str::<PresenceFields>(&record.body) else {
                continue;
            };
            let queue = presence_queue(
                &record.device_id,
                &fields.mode,
                fields.device_group.as_deref(),
                &fields.configured_apps,
            );
            devices.push((queue, fields, record.last_seen_ms));
        }
        let (mut online, mut offline) = (0u64, 0u64);
        for chunk in devices.chunks(PRESENCE_PROBES) {
            let mut probes = Vec::with_capacity(chunk.len());
            for (queue, fields, last_seen_ms) in chunk {
                probes.push(self.online(
                    queue.clone(),
                    fields.stopping,
                    fields.report_interval_secs,
                    *last_seen_ms,
                    now,
                ));
            }
            for answer in futures_util::future::join_all(probes).await {
                if answer {
                    online += 1;
                } else {
                    offline += 1;
                }
            }
        }
        Ok((online, offline))
    }

    /// Every device of the store's current version of `app` should run: app-mode devices
    /// configured for it and group-mode devices of groups that have it.
    pub async fn app_rollout(&self, app: &Name) -> Result<Option<Rollout>, ServiceError> {
        let Some(config) = self.get_app(app).await? else {
            return Ok(None);
        };
        let mut records: BTreeMap<String, DeviceRecord> = BTreeMap::new();
        let mut queries = vec![DeviceQuery {
            app: Some(app.to_string()),
            ..DeviceQuery::default()
        }];
        for group in self.list_groups().await? {
            let Ok(name) = Name::new(group.as_str()) else {
                continue;
            };
            if let Ok(Some(group)) = self.get_group(&name).await
                && group.apps.contains(app)
            {
                queries.push(DeviceQuery {
                    device_group: Some(name.to_string()),
                    ..DeviceQuery::default()
                });
            }
        }
        for query in queries {
            for record in self
                .store
                .list_devices(&query)
                .await
                .map_err(|error| self.store_error(error))?
            {
                records.insert(record.device_id.clone(), record);
            }
        }
        let now = now_ms();
        let mut catalog = Catalog::default();
        let mut devices = Vec::new();
        for record in records.into_values() {
            let Some(status) = self.status_of(record, &mut catalog, now).await else {
                continue;
            };
            // Listed by app but no longer meant to run it (out of its group): not part of
            // this rollout.
            let Some(state) = status.app_states.get(app.as_str()).copied() else {
                continue;
            };
            if state == AppState::Removed {
                continue;
            }
            let entry = status
                .document
                .apps
                .iter()
                .find(|entry| entry.app_name == app.as_str());
            devices.push(RolloutDevice {
                device_id: status.document.device_id.clone(),
                online: status.online,
                state,
                desired_revision: entry.and_then(|entry| entry.desired_revision),
                applied_revision: entry.and_then(|entry| entry.applied_revision),
                errors: entry
                    .and_then(|entry| entry.error.clone())
                    .map(|error| BTreeMap::from([(app.to_string(), error)]))
                    .unwrap_or_default(),
            });
        }
        Ok(Some(Rollout {
            incarnation: config.incarnation,
            revision: config.app_id,
            devices,
        }))
    }

    /// Every device of `group`, and whether it runs the group's current revision with every
    /// member app at its current version.
    pub async fn group_rollout(&self, group: &Name) -> Result<Option<Rollout>, ServiceError> {
        let Some(current) = self.get_group(group).await? else {
            return Ok(None);
        };
        let records = self
            .store
            .list_devices(&DeviceQuery {
                device_group: Some(group.to_string()),
                ..DeviceQuery::default()
            })
            .await
            .map_err(|error| self.store_error(error))?;
        let now = now_ms();
        let mut catalog = Catalog::default();
        let mut devices = Vec::new();
        for record in records {
            let Some(status) = self.status_of(record, &mut catalog, now).await else {
                continue;
            };
            if status.document.mode != "group" {
                continue;
            }
            let document = &status.document;
            let version = (current.incarnation, current.device_group_id);
            let group_current = document.device_group_incarnation == Some(version.0)
                && document.device_group_id == Some(version.1);
            let errors: BTreeMap<String, String> = document
                .apps
                .iter()
                .filter_map(|app| Some((app.app_name.clone(), app.error.clone()?)))
                .collect();
            let all_current = status
                .app_states
                .values()
                .all(|state| *state == AppState::Current);
            let state = group_state(document, &status.app_states, version);
            devices.push(RolloutDevice {
                device_id: document.device_id.clone(),
                online: status.online,
                state,
                desired_revision: document.device_group_id,
                applied_revision: (group_current && all_current).then_some(current.device_group_id),
                errors,
            });
        }
        Ok(Some(Rollout {
            incarnation: current.incarnation,
            revision: current.device_group_id,
            devices,
        }))
    }
}

/// Why a report was not ingested.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The report itself is wrong: dropped, counted, never retried.
    #[error(transparent)]
    Report(ReportError),
    /// The store failed (the instance is stopping); another instance takes the report.
    #[error(transparent)]
    Service(ServiceError),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn entry(
        incarnation: Option<u64>,
        desired: Option<u64>,
        applied: Option<u64>,
        converged: bool,
        error: Option<&str>,
    ) -> DeviceAppDocument {
        DeviceAppDocument {
            app_name: "web".into(),
            desired_incarnation: incarnation,
            desired_revision: desired,
            applied_revision: applied,
            converged,
            error: error.map(str::to_string),
            containers: Vec::new(),
        }
    }

    #[test]
    fn app_states() {
        let current = Some((7, 3));
        let at = entry(Some(7), Some(3), Some(3), true, None);
        assert_eq!(app_state(Some(&at), current), AppState::Current);
        // Told, but not applied yet; applied but one container missing; the old incarnation's
        // revision 3; not reported at all.
        for behind in [
            entry(Some(7), Some(3), Some(2), false, None),
            entry(Some(7), Some(3), Some(3), false, None),
            entry(Some(6), Some(3), Some(3), true, None),
            entry(Some(7), Some(2), Some(2), true, None),
        ] {
            assert_eq!(
                app_state(Some(&behind), current),
                AppState::Behind,
                "{behind:?}"
            );
        }
        assert_eq!(app_state(None, current), AppState::Behind);
        let failed = entry(Some(7), Some(3), Some(2), false, Some("pull failed"));
        assert_eq!(app_state(Some(&failed), current), AppState::Failed);
        // An error left from before does not hide that the current version runs.
        let recovered = entry(Some(7), Some(3), Some(3), true, Some("old error"));
        assert_eq!(app_state(Some(&recovered), current), AppState::Current);
        assert_eq!(app_state(Some(&at), None), AppState::Removed);
        // The error of a version the device was told before the current one (a failed
        // deploy, then its fix): behind until it tries the fix, not failed.
        for old in [
            entry(Some(7), Some(2), Some(1), false, Some("pull failed")),
            entry(Some(6), Some(3), Some(2), false, Some("pull failed")),
            entry(None, None, None, false, Some("pull failed")),
        ] {
            assert_eq!(app_state(Some(&old), current), AppState::Behind, "{old:?}");
        }
    }

    #[test]
    fn a_non_finite_float_is_stored_as_0_and_the_record_reads_back() {
        for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut report = sample_report();
            report.resources.cpu_percent = value;
            let document = document_of(&report).expect("bounded");
            assert_eq!(document.resources.cpu_percent, 0.0, "{value}");
            let body = body_of(&document).expect("small");
            let read: DeviceDocument = serde_json::from_str(&body).expect("reads back");
            assert_eq!(read, document);
        }
        let report = sample_report();
        let document = document_of(&report).expect("bounded");
        assert_eq!(document.resources.cpu_percent, 1.5);
    }

    #[test]
    fn group_states() {
        let current = (1, 5);
        let states =
            |state: AppState| BTreeMap::from([("web".to_string(), state), ("db".into(), state)]);
        let mut document = sample();
        document.device_group_incarnation = Some(1);
        document.device_group_id = Some(5);
        document.apps = vec![entry(Some(7), Some(3), Some(3), true, None)];
        assert_eq!(
            group_state(&document, &states(AppState::Current), current),
            AppState::Current
        );
        // Apps still to remove.
        document.updated = false;
        assert_eq!(
            group_state(&document, &states(AppState::Current), current),
            AppState::Behind
        );
        document.updated = true;
        // Told the current group, and an app failed at its current version.
        document.apps[0].error = Some("pull failed".into());
        assert_eq!(
            group_state(&document, &states(AppState::Failed), current),
            AppState::Failed
        );
        // The error of an app the group no longer has: it could not be removed.
        let mut removing = document.clone();
        removing.apps[0].app_name = "old".into();
        let mut with_removed = states(AppState::Current);
        with_removed.insert("old".into(), AppState::Removed);
        assert_eq!(
            group_state(&removing, &with_removed, current),
            AppState::Failed
        );
        // The same error while the device still holds the group's previous revision: the
        // failure is the old version's (fixed since), the device is behind.
        for (incarnation, revision) in [(Some(1), Some(4)), (Some(0), Some(5))] {
            let mut old = document.clone();
            old.device_group_incarnation = incarnation;
            old.device_group_id = revision;
            assert_eq!(
                group_state(&old, &states(AppState::Failed), current),
                AppState::Behind
            );
            assert_eq!(group_state(&old, &with_removed, current), AppState::Behind);
        }
        // The apps' own errors of older versions are behind already (`app_state`).
        assert_eq!(
            group_state(&document, &states(AppState::Behind), current),
            AppState::Behind
        );
        // An agent that reports no group version: judged by its apps.
        let mut unversioned = document.clone();
        unversioned.device_group_incarnation = None;
        unversioned.device_group_id = None;
        assert_eq!(
            group_state(&unversioned, &states(AppState::Failed), current),
            AppState::Failed
        );
        assert_eq!(
            group_state(&unversioned, &states(AppState::Current), current),
            AppState::Behind
        );
    }

    #[test]
    fn the_report_rule_counts_three_of_the_devices_intervals() {
        assert!(reported_recently(60, 1_000_000, 1_000_000 + 179_999));
        assert!(!reported_recently(60, 1_000_000, 1_000_000 + 180_000));
        assert!(reported_recently(1, 1_000_000, 1_000_000 + 2_999));
        assert!(!reported_recently(1, 1_000_000, 1_000_000 + 3_000));
        // No interval stored: the agent's default.
        assert!(reported_recently(0, 1_000_000, 1_000_000 + 179_999));
        assert!(!reported_recently(0, 1_000_000, 1_000_000 + 180_000));
        // A report "from the future" (another instance's clock ahead) is recent.
        assert!(reported_recently(60, 2_000_000, 1_000_000));
    }

    #[test]
    fn a_goodbye_report_is_offline_at_once() {
        assert!(is_online(false, 60, 1_000_000, 1_000_001));
        assert!(!is_online(true, 60, 1_000_000, 1_000_001));
    }

    #[test]
    fn metrics_read_the_presence_fields_of_a_stored_document() {
        let mut document = sample();
        document.stopping = true;
        let body = serde_json::to_string(&document).expect("serialise");
        let fields: PresenceFields = serde_json::from_str(&body).expect("parse");
        assert_eq!((fields.report_interval_secs, fields.stopping), (60, true));
        // Records stored before the flag existed read as not stopping.
        let old = body.replace(",\"stopping\":true", "");
        assert_ne!(old, body);
        let fields: PresenceFields = serde_json::from_str(&old).expect("parse");
        assert!(!fields.stopping);
        let document: DeviceDocument = serde_json::from_str(&old).expect("parse");
        assert!(!document.stopping);
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_TEXT_BYTES);
        let cut = cut(&text);
        assert!(cut.len() <= MAX_TEXT_BYTES + "…".len(), "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(super::cut("short"), "short");
    }

    /// A report of device `pi-1` with one app `web` of one container.
    pub(crate) fn sample_report() -> DeviceReport {
        use nebula_protocol::{AppReport, ContainerReport, ResourceUsage};
        let name = |text: &str| Name::new(text).expect("name");
        DeviceReport {
            device_id: name("pi-1"),
            hostname: "pi".into(),
            device_group: None,
            device_group_id: None,
            prune_id: None,
            report_creation_time: 1,
            updated: true,
            agent_version: "0.1.0".into(),
            apps: vec![AppReport {
                app_name: name("web"),
                desired_revision: Some(3),
                applied_revision: Some(3),
                containers: vec![ContainerReport {
                    name: "web-1".into(),
                    image: "img".into(),
                    state: "running".into(),
                    health: None,
                    app_id: Some(3),
                    restart_count: Some(0),
                    incarnation: Some(7),
                }],
                error: None,
                desired_incarnation: Some(7),
                converged: true,
            }],
            resources: ResourceUsage {
                cpu_cores: 2,
                cpu_percent: 1.5,
                memory_total_bytes: 1 << 30,
                memory_used_bytes: 1 << 29,
                root_disk_total_bytes: 1 << 34,
                root_disk_used_bytes: 1 << 33,
            },
            target: "x86_64-unknown-linux-musl".into(),
            os: "Debian".into(),
            kernel: "Linux 6.1".into(),
            docker_version: Some("27.0".into()),
            uptime_secs: 10,
            agent_uptime_secs: 5,
            report_interval_secs: 60,
            mode: DeviceMode::Apps(vec![name("web")]),
            session: 1,
            sequence: 1,
            device_group_incarnation: None,
            stopping: false,
            cron_jobs: Vec::new(),
        }
    }

    #[test]
    fn cron_runs_are_stored_within_their_bounds() {
        use nebula_protocol::{CronContainerReport, CronJobReport};
        let mut report = sample_report();
        let run = CronContainerReport {
            name: "tick-1796119260".into(),
            image: "busybox".into(),
            state: "exited".into(),
            cron_job_id: Some(2),
            incarnation: Some(5),
        };
        report.cron_jobs = vec![CronJobReport {
            cron_job_name: Name::new("tick").expect("name"),
            containers: vec![run.clone()],
        }];
        let document = document_of(&report).expect("bounded");
        assert_eq!(
            document.cron_jobs,
            vec![DeviceCronJobDocument {
                cron_job_name: "tick".into(),
                containers: vec![DeviceCronContainerDocument {
                    name: "tick-1796119260".into(),
                    image: "busybox".into(),
                    state: "exited".into(),
                    cron_job_id: Some(2),
                    incarnation: Some(5),
                }],
            }]
        );
        // Records stored before reports carried cron runs read as none.
        let body = body_of(&document).expect("small");
        let old = body.replace(
            &format!(
                ",\"cron_jobs\":{}",
                serde_json::to_string(&document.cron_jobs).expect("json")
            ),
            "",
        );
        assert_ne!(old, body);
        let read: DeviceDocument = serde_json::from_str(&old).expect("parse");
        assert!(read.cron_jobs.is_empty());
        // A misbehaving agent's endless runs are refused.
        report.cron_jobs[0].containers = vec![run; MAX_RUNS_PER_CRON_JOB + 1];
        assert!(matches!(
            document_of(&report),
            Err(ReportError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_record_beyond_the_document_cap_is_refused() {
        let report = sample_report();
        let body = body_of(&document_of(&report).expect("bounded")).expect("small");
        assert!(body.len() < 4096, "{}", body.len());
        // Within every per-field bound (64 apps of 16 containers, kilobyte images), but
        // megabytes stored: refused, not handed to the store.
        let mut large = report;
        let container = large.apps[0].containers[0].clone();
        large.apps[0].containers = vec![
            nebula_protocol::ContainerReport {
                image: "i".repeat(MAX_TEXT_BYTES),
                ..container
            };
            16
        ];
        large.apps = (0..64)
            .map(|index| nebula_protocol::AppReport {
                app_name: Name::new(format!("app-{index}")).expect("name"),
                ..large.apps[0].clone()
            })
            .collect();
        let document = document_of(&large).expect("within the per-field bounds");
        let error = body_of(&document).expect_err("too large");
        assert!(
            matches!(&error, ReportError::TooLarge { device, .. } if device == "pi-1"),
            "{error}"
        );
    }

    fn memory_service() -> (Service, std::sync::Arc<crate::broker::fake::FakeBroker>) {
        use crate::broker::Publisher;
        use crate::store::Store;
        use std::sync::Arc;
        let broker = Arc::new(crate::broker::fake::FakeBroker::new());
        let service = Service::new(
            Arc::new(crate::store::memory::MemoryStore::new()) as Arc<dyn Store>,
            Arc::clone(&broker) as Arc<dyn Publisher>,
            crate::shutdown::Shutdown::new(),
        );
        (service, broker)
    }

    /// Stores a report of `device` (app mode, app `web`) received at `received_ms`.
    async fn ingest_at(service: &Service, device: &str, received_ms: u64) {
        let mut report = sample_report();
        report.device_id = Name::new(device).expect("name");
        // A later reception is a later report of the same agent session.
        report.sequence = received_ms;
        let key = names::report_routing_key(&report.device_id);
        let ingested = service
            .ingest_report(&report, &key, received_ms)
            .await
            .expect("ingest");
        assert_eq!(ingested, Ingested::Stored);
    }

    /// A report of `device` now, and its agent connected (its queue exists).
    async fn ingest(service: &Service, broker: &crate::broker::fake::FakeBroker, device: &str) {
        ingest_at(service, device, now_ms()).await;
        broker.set_queue(&format!("nebula.device.{device}.app.web"), true);
    }

    async fn online(service: &Service, device: &str) -> bool {
        service
            .device(device)
            .await
            .expect("read")
            .expect("known")
            .online
    }

    #[tokio::test(start_paused = true)]
    async fn online_is_the_agent_queue_existing_not_a_recent_report() {
        let (service, broker) = memory_service();
        let queue = "nebula.device.pi-1.app.web";
        // A report a day old (the agent's interval says 60 s), but connected: online. This is
        // an idle device on a metered link, reporting every six hours.
        ingest_at(&service, "pi-1", now_ms() - 24 * 3600 * 1000).await;
        broker.set_queue(queue, true);
        assert!(online(&service, "pi-1").await);
        // Its connection ends (the queue goes): offline once the broker's answer is older
        // than PRESENCE_TTL, however recent the last report.
        ingest_at(&service, "pi-1", now_ms()).await;
        broker.set_queue(queue, false);
        assert!(
            online(&service, "pi-1").await,
            "the answer is kept for PRESENCE_TTL"
        );
        tokio::time::advance(PRESENCE_TTL).await;
        assert!(!online(&service, "pi-1").await);
        // Without a broker answer, presence comes from the reports: recent, online; old,
        // offline.
        broker.set_connected(false);
        tokio::time::advance(PRESENCE_TTL).await;
        assert!(online(&service, "pi-1").await);
        ingest_at(&service, "pi-2", now_ms() - 180_000).await;
        assert!(!online(&service, "pi-2").await);
        // A goodbye is offline whatever the broker says.
        broker.set_connected(true);
        broker.set_queue("nebula.device.pi-3.app.web", true);
        let mut goodbye = sample_report();
        goodbye.device_id = Name::new("pi-3").expect("name");
        goodbye.stopping = true;
        let key = names::report_routing_key(&goodbye.device_id);
        service
            .ingest_report(&goodbye, &key, now_ms())
            .await
            .expect("ingest");
        assert!(!online(&service, "pi-3").await);
    }

    #[test]
    fn the_presence_queue_is_the_group_queue_or_the_first_app_queue() {
        let apps = ["web".to_string(), "db".to_string()];
        assert_eq!(
            presence_queue("pi-1", "group", Some("edge"), &[]).as_deref(),
            Some("nebula.device.pi-1.group.edge")
        );
        assert_eq!(
            presence_queue("pi-1", "apps", None, &apps).as_deref(),
            Some("nebula.device.pi-1.app.web")
        );
        assert_eq!(presence_queue("pi-1", "group", None, &[]), None);
        assert_eq!(presence_queue("pi-1", "apps", None, &[]), None);
        assert_eq!(presence_queue("not valid!", "apps", None, &apps), None);
    }

    #[tokio::test(start_paused = true)]
    async fn scrapes_share_one_count_for_ten_seconds() {
        let (service, broker) = memory_service();
        ingest(&service, &broker, "pi-1").await;
        assert_eq!(service.device_counts().await.expect("count"), (1, 0));
        ingest(&service, &broker, "pi-2").await;
        // Concurrent scrapes within the TTL: the count made first, no new scan.
        let (left, right) = tokio::join!(service.device_counts(), service.device_counts());
        assert_eq!(
            (left.expect("count"), right.expect("count")),
            ((1, 0), (1, 0))
        );
        tokio::time::advance(DEVICE_COUNTS_TTL).await;
        assert_eq!(service.device_counts().await.expect("count"), (2, 0));
    }

    fn sample() -> DeviceDocument {
        DeviceDocument {
            device_id: "pi-1".into(),
            hostname: "pi".into(),
            mode: "group".into(),
            device_group: Some("edge".into()),
            device_group_id: Some(1),
            device_group_incarnation: Some(1),
            prune_id: Some(1),
            configured_apps: Vec::new(),
            agent_version: "0.1.0".into(),
            target: "x".into(),
            os: String::new(),
            kernel: String::new(),
            docker_version: None,
            uptime_secs: 0,
            agent_uptime_secs: 0,
            report_interval_secs: 60,
            report_creation_time: 0,
            stopping: false,
            updated: true,
            session: 1,
            sequence: 1,
            apps: Vec::new(),
            cron_jobs: Vec::new(),
            resources: DeviceResourcesDocument {
                cpu_cores: 1,
                cpu_percent: 0.0,
                memory_total_bytes: 0,
                memory_used_bytes: 0,
                root_disk_total_bytes: 0,
                root_disk_used_bytes: 0,
            },
        }
    }
}
