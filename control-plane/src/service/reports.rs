//! The report history behind `GET /api/v2/reports` (API.md "Reports"): every report the
//! ingester stores as a device's latest is also kept as a past report, in upstream's shape,
//! bounded per device and in time (`store::history`; `NEBULA_REPORTS_PER_DEVICE`,
//! `NEBULA_REPORTS_TTL_SECS`).
//!
//! A past report is written after the device record, in the same ingestion. A store failing
//! between the two costs nothing once the report is redelivered: a redelivered copy of a
//! device's latest report writes its past report again, under the same key.

use super::{Service, ServiceError};
use crate::store::history::{ReportQuery, ReportRecord, report_key};
use crate::store::{DeviceDocument, history::slot_id};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// Past reports kept per device by default (`NEBULA_REPORTS_PER_DEVICE`). Agents report on
/// every change they would show and every 6 hours otherwise (their default), so this is the
/// last few dozen changes of a device, within the time limit.
pub const DEFAULT_PER_DEVICE: u32 = 60;
/// How long a past report is kept by default (`NEBULA_REPORTS_TTL_SECS`): a day.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// How far behind now listings stop by default: a report is keyed by its reception time
/// but written a moment later (a store round trip or two; up to `REPORT_PREFETCH` at once),
/// and instances' clocks differ by what NTP allows. A cursor handed out before such a report
/// was written would otherwise page past it for good.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5);

/// How much history is kept, and how listings read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Slots per device; 0 keeps no history.
    pub per_device: u32,
    pub ttl: Duration,
    /// Listings show reports received at least this long ago ([`DEFAULT_SETTLE`]).
    pub settle: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            per_device: DEFAULT_PER_DEVICE,
            ttl: DEFAULT_TTL,
            settle: DEFAULT_SETTLE,
        }
    }
}

/// A past report as `GET /reports` shows it: upstream's keys (`hostname`, `device_group`,
/// `report_creation_time`, `updated`, `memory_usage`, `root_disk_usage`, `cpu_usage`,
/// `apps_containers`, `cron_jobs_containers`, `current_device_group_config`), then ours.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PastReport {
    pub hostname: String,
    pub device_group: Option<String>,
    pub report_creation_time: u64,
    pub updated: bool,
    pub memory_usage: Usage,
    pub root_disk_usage: Usage,
    pub cpu_usage: CpuUsage,
    pub apps_containers: Vec<PastContainer>,
    /// Every run container of every cron job, as `apps_containers` lists apps' (empty in a
    /// report of an agent that did not report its runs).
    pub cron_jobs_containers: Vec<PastCronContainer>,
    pub current_device_group_config: PastConfig,
    pub device_id: String,
    /// When a control plane received it (Unix seconds).
    pub received: f64,
    pub agent_version: String,
    pub target: String,
    pub os: String,
    pub kernel: String,
    pub docker_version: Option<String>,
    pub uptime_secs: u64,
}

/// Bytes of memory or of the root disk, as psutil names them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuUsage {
    pub cores: u32,
    pub used_percent: f32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PastContainer {
    pub app_name: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub health: Option<String>,
    pub app_id: Option<u64>,
    pub restart_count: Option<u64>,
}

/// One run of a cron job (`<job>-<fire time>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PastCronContainer {
    pub cron_job_name: String,
    pub name: String,
    pub image: String,
    /// Docker's state: `running`, `exited`, ...
    pub state: String,
    /// The job revision the run was started from.
    pub cron_job_id: Option<u64>,
}

/// What the device held when it reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PastConfig {
    /// `group` or `apps`.
    pub mode: String,
    pub device_group: Option<String>,
    pub device_group_id: Option<u64>,
    pub prune_id: Option<u64>,
    /// App mode: the apps the agent is configured for.
    pub configured_apps: Vec<String>,
    pub apps: Vec<PastApp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PastApp {
    pub app_name: String,
    /// The revision the device was told.
    pub app_id: Option<u64>,
    pub applied_app_id: Option<u64>,
    pub converged: bool,
    pub error: Option<String>,
}

/// A page of past reports and the cursor after it (`None` with an empty page).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportPage {
    pub reports: Vec<serde_json::Value>,
    pub last_id: Option<String>,
}

fn usage(total: u64, used: u64) -> Usage {
    let used = used.min(total);
    Usage {
        total,
        used,
        free: total - used,
        percent: if total == 0 {
            0.0
        } else {
            // One decimal, as psutil gives it.
            (used as f64 * 1000.0 / total as f64).round() / 10.0
        },
    }
}

/// `document` (received at `received_ms`) in the shape `GET /reports` shows.
pub fn past_report(document: &DeviceDocument, received_ms: u64) -> PastReport {
    let resources = &document.resources;
    PastReport {
        hostname: document.hostname.clone(),
        device_group: document.device_group.clone(),
        report_creation_time: document.report_creation_time,
        updated: document.updated,
        memory_usage: usage(resources.memory_total_bytes, resources.memory_used_bytes),
        root_disk_usage: usage(
            resources.root_disk_total_bytes,
            resources.root_disk_used_bytes,
        ),
        cpu_usage: CpuUsage {
            cores: resources.cpu_cores,
            used_percent: resources.cpu_percent,
        },
        apps_containers: document
            .apps
            .iter()
            .flat_map(|app| {
                app.containers.iter().map(|container| PastContainer {
                    app_name: app.app_name.clone(),
                    name: container.name.clone(),
                    image: container.image.clone(),
                    state: container.state.clone(),
                    health: container.health.clone(),
                    app_id: container.app_id,
                    restart_count: container.restart_count,
                })
            })
            .collect(),
        cron_jobs_containers: document
            .cron_jobs
            .iter()
            .flat_map(|job| {
                job.containers.iter().map(|container| PastCronContainer {
                    cron_job_name: job.cron_job_name.clone(),
                    name: container.name.clone(),
                    image: container.image.clone(),
                    state: container.state.clone(),
                    cron_job_id: container.cron_job_id,
                })
            })
            .collect(),
        current_device_group_config: PastConfig {
            mode: document.mode.clone(),
            device_group: document.device_group.clone(),
            device_group_id: document.device_group_id,
            prune_id: document.prune_id,
            configured_apps: document.configured_apps.clone(),
            apps: document
                .apps
                .iter()
                .map(|app| PastApp {
                    app_name: app.app_name.clone(),
                    app_id: app.desired_revision,
                    applied_app_id: app.applied_revision,
                    converged: app.converged,
                    error: app.error.clone(),
                })
                .collect(),
        },
        device_id: document.device_id.clone(),
        received: received_ms as f64 / 1000.0,
        agent_version: document.agent_version.clone(),
        target: document.target.clone(),
        os: document.os.clone(),
        kernel: document.kernel.clone(),
        docker_version: document.docker_version.clone(),
        uptime_secs: document.uptime_secs,
    }
}

/// The past-report record of `document`, stored as its device record's version `version`:
/// `None` when no history is kept.
pub fn record_of(
    document: &DeviceDocument,
    received_ms: u64,
    version: u64,
    per_device: u32,
) -> Option<ReportRecord> {
    if per_device == 0 {
        return None;
    }
    let body = serde_json::to_string(&past_report(document, received_ms)).ok()?;
    let slot = u32::try_from(version % u64::from(per_device)).unwrap_or(0);
    Some(ReportRecord {
        key: report_key(received_ms, &document.device_id, version),
        device_id: document.device_id.clone(),
        slot,
        version,
        received_ms,
        hostname: document.hostname.clone(),
        device_group: document.device_group.clone(),
        // Every backend stores it as an int64 (a device clock beyond it is nonsense anyway),
        // so that every backend compares the same value.
        report_creation_time: document.report_creation_time.min(i64::MAX.unsigned_abs()),
        updated: document.updated,
        body,
    })
}

impl Service {
    /// Keeps `document`, just stored as its device's record at `version`, as a past report.
    /// A record the store refuses is logged and skipped (the device record is stored); a
    /// store failing is the caller's error.
    pub(crate) async fn keep_report(
        &self,
        document: &DeviceDocument,
        received_ms: u64,
        version: u64,
    ) -> Result<(), ServiceError> {
        let Some(record) = record_of(
            document,
            received_ms,
            version,
            self.report_retention.per_device,
        ) else {
            return Ok(());
        };
        match self.store.put_report(&record).await {
            Ok(()) => Ok(()),
            Err(error) if !error.is_fatal() => {
                tracing::warn!(
                    error = %error,
                    slot = %slot_id(&record.device_id, record.slot),
                    "past report not kept"
                );
                Ok(())
            }
            Err(error) => Err(self.store_error(error)),
        }
    }

    /// A page of past reports, oldest first, up to the settling horizon
    /// ([`Retention::settle`]).
    pub async fn reports(&self, query: &ReportQuery) -> Result<ReportPage, ServiceError> {
        let settle_ms = u64::try_from(self.report_retention.settle.as_millis()).unwrap_or(0);
        let query = ReportQuery {
            before: (settle_ms > 0).then(|| {
                crate::store::history::key_floor(super::devices::now_ms().saturating_sub(settle_ms))
            }),
            ..query.clone()
        };
        let records = self
            .store
            .list_reports(&query)
            .await
            .map_err(|error| self.store_error(error))?;
        let last_id = records.last().map(|record| record.key.clone());
        let reports = records
            .iter()
            .map(|record| {
                // A body that does not parse is shown as what can be said of it.
                serde_json::from_str(&record.body).unwrap_or_else(|_| {
                    serde_json::json!({
                        "hostname": record.hostname,
                        "device_group": record.device_group,
                        "report_creation_time": record.report_creation_time,
                        "updated": record.updated,
                        "device_id": record.device_id,
                    })
                })
            })
            .collect();
        Ok(ReportPage { reports, last_id })
    }

    /// Removes past reports older than the retention's time limit; how many.
    pub async fn expire_reports(&self) -> Result<u64, ServiceError> {
        let ttl_ms = u64::try_from(self.report_retention.ttl.as_millis()).unwrap_or(u64::MAX);
        self.store
            .expire_reports(super::devices::now_ms().saturating_sub(ttl_ms))
            .await
            .map_err(|error| self.store_error(error))
    }

    /// The same service keeping `retention` of report history.
    pub fn with_report_retention(mut self, retention: Retention) -> Self {
        self.report_retention = retention;
        self
    }

    pub fn report_retention(&self) -> Retention {
        self.report_retention
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::devices::tests::sample_report;
    use crate::service::devices::{Ingested, document_of};
    use crate::store::Store;
    use crate::store::memory::MemoryStore;
    use nebula_protocol::{Name, names};
    use std::sync::Arc;

    fn make(per_device: u32) -> (Service, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let service = Service::new(
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::new(crate::broker::fake::FakeBroker::new()),
            crate::shutdown::Shutdown::new(),
        )
        .with_report_retention(Retention {
            per_device,
            ttl: Duration::from_secs(3600),
            settle: Duration::ZERO,
        });
        (service, store)
    }

    async fn ingest(service: &Service, device: &str, sequence: u64, received_ms: u64) -> Ingested {
        let mut report = sample_report();
        report.device_id = Name::new(device).expect("name");
        report.sequence = sequence;
        report.report_creation_time = received_ms / 1000;
        let key = names::report_routing_key(&report.device_id);
        service
            .ingest_report(&report, &key, received_ms)
            .await
            .expect("ingest")
    }

    fn devices_and_times(page: &ReportPage) -> Vec<(String, u64)> {
        page.reports
            .iter()
            .map(|report| {
                (
                    report["device_id"].as_str().expect("id").to_string(),
                    report["report_creation_time"].as_u64().expect("time"),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn every_stored_report_is_kept_and_a_device_s_ring_drops_its_oldest() {
        let (service, _) = make(3);
        let start = 1_700_000_000_000;
        for sequence in 1..=5 {
            let at = start + sequence * 1000;
            assert_eq!(
                ingest(&service, "pi-1", sequence, at).await,
                Ingested::Stored
            );
            assert_eq!(
                ingest(&service, "pi-2", sequence, at + 1).await,
                Ingested::Stored
            );
        }
        // A duplicate (same session, not newer) is neither the latest nor kept.
        assert_eq!(
            ingest(&service, "pi-1", 5, start + 9_000).await,
            Ingested::Stale
        );
        let page = service
            .reports(&ReportQuery::default())
            .await
            .expect("list");
        let seconds = |sequence: u64| (start + sequence * 1000) / 1000;
        assert_eq!(
            devices_and_times(&page),
            [3, 4, 5]
                .iter()
                .flat_map(|&sequence| {
                    [
                        ("pi-1".to_string(), seconds(sequence)),
                        ("pi-2".to_string(), seconds(sequence)),
                    ]
                })
                .collect::<Vec<_>>()
        );
        // Paged by the cursor: two, then the rest, then nothing.
        let first = service
            .reports(&ReportQuery {
                limit: 2,
                ..ReportQuery::default()
            })
            .await
            .expect("page");
        assert_eq!(first.reports.len(), 2);
        let rest = service
            .reports(&ReportQuery {
                after: first.last_id.clone(),
                ..ReportQuery::default()
            })
            .await
            .expect("page");
        assert_eq!(rest.reports.len(), 4);
        let end = service
            .reports(&ReportQuery {
                after: rest.last_id.clone(),
                ..ReportQuery::default()
            })
            .await
            .expect("page");
        assert_eq!(
            end,
            ReportPage {
                reports: vec![],
                last_id: None
            }
        );
    }

    #[tokio::test]
    async fn no_history_is_kept_with_zero_slots_and_old_reports_expire() {
        let (service, _) = make(0);
        ingest(&service, "pi-1", 1, 1_000).await;
        let all = service
            .reports(&ReportQuery::default())
            .await
            .expect("list");
        assert!(all.reports.is_empty());

        let (service, store) = make(10);
        let now = crate::service::devices::now_ms();
        ingest(&service, "pi-1", 1, now - 2 * 3600 * 1000).await;
        ingest(&service, "pi-1", 2, now).await;
        assert_eq!(service.expire_reports().await.expect("expire"), 1);
        let left = store
            .list_reports(&ReportQuery::default())
            .await
            .expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].received_ms, now);
    }

    #[tokio::test]
    async fn listings_stop_short_of_the_settling_time_and_duplicates_are_kept_again() {
        let (service, store) = make(10);
        let retention = service.report_retention();
        let service = service.with_report_retention(Retention {
            settle: Duration::from_secs(5),
            ..retention
        });
        let now = crate::service::devices::now_ms();
        ingest(&service, "pi-1", 1, now - 60_000).await;
        ingest(&service, "pi-1", 2, now).await;
        let page = service
            .reports(&ReportQuery::default())
            .await
            .expect("list");
        assert_eq!(
            page.reports.len(),
            1,
            "the report of just now waits: {page:?}"
        );
        // The history write of a stored report failed (it is gone here): the redelivered
        // report, a duplicate of the latest, writes it again, under the same key.
        let held = store
            .list_reports(&ReportQuery::default())
            .await
            .expect("list");
        store.expire_reports(u64::MAX).await.expect("clear");
        assert_eq!(ingest(&service, "pi-1", 2, now + 30).await, Ingested::Stale);
        let again = store
            .list_reports(&ReportQuery::default())
            .await
            .expect("list");
        assert_eq!(again, held[1..].to_vec());
    }

    #[test]
    fn cron_runs_are_listed_like_apps_containers() {
        use nebula_protocol::{CronContainerReport, CronJobReport};
        let run = |name: &str, state: &str| CronContainerReport {
            name: name.into(),
            image: "busybox".into(),
            state: state.into(),
            cron_job_id: Some(2),
            incarnation: Some(5),
        };
        let mut report = sample_report();
        report.cron_jobs = vec![
            CronJobReport {
                cron_job_name: Name::new("backup").expect("name"),
                containers: vec![run("backup-60", "exited"), run("backup-120", "running")],
            },
            CronJobReport {
                cron_job_name: Name::new("idle").expect("name"),
                containers: Vec::new(),
            },
        ];
        let document = document_of(&report).expect("document");
        let value = serde_json::to_value(past_report(&document, 1_000)).expect("json");
        assert_eq!(
            value["cron_jobs_containers"],
            serde_json::json!([
                {"cron_job_name": "backup", "name": "backup-60", "image": "busybox",
                 "state": "exited", "cron_job_id": 2},
                {"cron_job_name": "backup", "name": "backup-120", "image": "busybox",
                 "state": "running", "cron_job_id": 2},
            ])
        );
        assert_eq!(
            value["apps_containers"][0]["app_name"], "web",
            "apps' containers as before: {value}"
        );
    }

    #[test]
    fn a_past_report_has_upstream_s_keys() {
        let document = document_of(&sample_report()).expect("document");
        let value = serde_json::to_value(past_report(&document, 1_000)).expect("json");
        for key in [
            "hostname",
            "device_group",
            "report_creation_time",
            "updated",
            "memory_usage",
            "root_disk_usage",
            "cpu_usage",
            "apps_containers",
            "cron_jobs_containers",
            "current_device_group_config",
        ] {
            assert!(value.get(key).is_some(), "{key} missing from {value}");
        }
        assert_eq!(
            usage(200, 50),
            Usage {
                total: 200,
                used: 50,
                free: 150,
                percent: 25.0
            }
        );
        assert_eq!(usage(0, 10).percent, 0.0);
    }
}
