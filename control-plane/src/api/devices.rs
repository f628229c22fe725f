//! `/api/v2/devices` (the device inventory) and `/api/v2/apps/<a>/status`,
//! `/api/v2/device_groups/<g>/status` (rollout status): beyond v2 (API.md), same auth and
//! error style. The JSON is typed here ([`Device`], [`RolloutStatus`]): converted from the
//! service's view at the edge, never the stored document itself.

use super::errors::ApiError;
use super::{AppState, PathName, query_flag, schema};
use crate::service::ServiceError;
use crate::service::devices::{AppState as RolloutState, DeviceFilter, DeviceStatus, Rollout};
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

type Result<T> = std::result::Result<T, ApiError>;

/// Devices per page when `limit` is not given, and the most one page holds.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// A device of the inventory.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub device_id: String,
    pub hostname: String,
    /// Its agent is connected to the broker (its agent queue exists), and its last report is
    /// not a goodbye; without a broker answer, a report of it arrived within the last 3 of its
    /// report intervals (`report_interval_secs`).
    pub online: bool,
    /// When a control plane last received a report of it (Unix seconds).
    pub last_seen: f64,
    /// `group` or `apps`.
    pub mode: String,
    pub device_group: Option<String>,
    /// The group's revision and incarnation the device holds.
    pub device_group_id: Option<u64>,
    pub device_group_incarnation: Option<u64>,
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
    /// Every app is applied at its desired revision.
    pub updated: bool,
    pub apps: Vec<DeviceApp>,
    pub resources: Resources,
}

/// One app on one device.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceApp {
    pub app_name: String,
    /// Against the store's current version: `current`, `behind`, `failed`, or `removed`
    /// (not meant for this device any more; what it still has of it).
    pub rollout: String,
    pub desired_incarnation: Option<u64>,
    pub desired_revision: Option<u64>,
    pub applied_revision: Option<u64>,
    pub converged: bool,
    /// The last error applying it (a failed pull, a Docker error).
    pub error: Option<String>,
    pub containers: Vec<Container>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub name: String,
    pub image: String,
    /// Docker's state: `running`, `exited`, `restarting`, ...
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or `null` without a health check.
    pub health: Option<String>,
    pub app_id: Option<u64>,
    pub incarnation: Option<u64>,
    pub restart_count: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpu_cores: u32,
    pub cpu_percent: f32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub root_disk_total_bytes: u64,
    pub root_disk_used_bytes: u64,
}

/// A page of devices.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceList {
    pub devices: Vec<Device>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next: Option<String>,
}

/// `403 {"device_exists": false}`: no report of that device (never, or expired).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceExists {
    pub device_exists: bool,
}

/// Query of `GET /devices`.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceQueryParams {
    /// Only devices of this group (group mode).
    pub device_group: Option<String>,
    /// Only devices configured for or running this app.
    pub app: Option<String>,
    /// Only online (`true`) or offline (`false`) devices.
    pub online: Option<bool>,
    /// Devices per page, 1-1000 (default 100).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

/// One device in a rollout.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutDevice {
    pub device_id: String,
    pub online: bool,
    /// `current`, `behind` or `failed`.
    pub state: String,
    /// The revision the device was told (of the app, or of the group).
    pub desired_revision: Option<u64>,
    /// The revision it runs (of the group: only once every member app is current).
    pub applied_revision: Option<u64>,
    /// Why it failed, by app.
    pub errors: BTreeMap<String, String>,
}

/// "Did my change reach the fleet?"
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutStatus {
    /// `app` or `device_group`.
    pub kind: String,
    pub name: String,
    /// The current version in the store.
    pub incarnation: u64,
    pub revision: u64,
    /// Devices that should run it.
    pub total: usize,
    pub current: usize,
    pub behind: usize,
    pub failed: usize,
    /// Of the devices not current, how many are offline (they catch up when they return).
    pub offline: usize,
    /// Every device is current or failed: nothing is still on its way. False while no device
    /// of it has reported yet (`total` 0): an empty fleet has not received the change.
    pub done: bool,
    pub devices: Vec<RolloutDevice>,
}

pub fn device_json(status: &DeviceStatus) -> Device {
    let document = &status.document;
    Device {
        device_id: document.device_id.clone(),
        hostname: document.hostname.clone(),
        online: status.online,
        last_seen: status.last_seen_ms as f64 / 1000.0,
        mode: document.mode.clone(),
        device_group: document.device_group.clone(),
        device_group_id: document.device_group_id,
        device_group_incarnation: document.device_group_incarnation,
        configured_apps: document.configured_apps.clone(),
        agent_version: document.agent_version.clone(),
        target: document.target.clone(),
        os: document.os.clone(),
        kernel: document.kernel.clone(),
        docker_version: document.docker_version.clone(),
        uptime_secs: document.uptime_secs,
        agent_uptime_secs: document.agent_uptime_secs,
        report_interval_secs: document.report_interval_secs,
        updated: document.updated,
        apps: document
            .apps
            .iter()
            .map(|app| DeviceApp {
                app_name: app.app_name.clone(),
                rollout: status
                    .app_states
                    .get(&app.app_name)
                    .map_or("removed", |state| state.as_str())
                    .to_string(),
                desired_incarnation: app.desired_incarnation,
                desired_revision: app.desired_revision,
                applied_revision: app.applied_revision,
                converged: app.converged,
                error: app.error.clone(),
                containers: app
                    .containers
                    .iter()
                    .map(|container| Container {
                        name: container.name.clone(),
                        image: container.image.clone(),
                        state: container.state.clone(),
                        health: container.health.clone(),
                        app_id: container.app_id,
                        incarnation: container.incarnation,
                        restart_count: container.restart_count,
                    })
                    .collect(),
            })
            .collect(),
        resources: Resources {
            cpu_cores: document.resources.cpu_cores,
            cpu_percent: document.resources.cpu_percent,
            memory_total_bytes: document.resources.memory_total_bytes,
            memory_used_bytes: document.resources.memory_used_bytes,
            root_disk_total_bytes: document.resources.root_disk_total_bytes,
            root_disk_used_bytes: document.resources.root_disk_used_bytes,
        },
    }
}

pub fn rollout_json(kind: &str, name: &str, rollout: &Rollout) -> RolloutStatus {
    let current = rollout.count(RolloutState::Current);
    let failed = rollout.count(RolloutState::Failed);
    let behind = rollout.count(RolloutState::Behind);
    RolloutStatus {
        kind: kind.to_string(),
        name: name.to_string(),
        incarnation: rollout.incarnation,
        revision: rollout.revision,
        total: rollout.devices.len(),
        current,
        behind,
        failed,
        offline: rollout
            .devices
            .iter()
            .filter(|device| !device.online && device.state != RolloutState::Current)
            .count(),
        done: behind == 0 && !rollout.devices.is_empty(),
        devices: rollout
            .devices
            .iter()
            .map(|device| RolloutDevice {
                device_id: device.device_id.clone(),
                online: device.online,
                state: device.state.as_str().to_string(),
                desired_revision: device.desired_revision,
                applied_revision: device.applied_revision,
                errors: device.errors.clone(),
            })
            .collect(),
    }
}

/// Parses the query of `GET /devices`: unknown keys and bad values are answered like bad
/// body fields (`unknown_parameters`, `invalid_parameters`).
pub fn parse_query(query: Option<&str>) -> Result<DeviceFilter> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|_| ApiError::malformed())?;
    let mut filter = DeviceFilter {
        limit: DEFAULT_PAGE,
        ..DeviceFilter::default()
    };
    let (mut unknown, mut invalid) = (Vec::new(), Vec::new());
    for (key, value) in pairs {
        match key.as_str() {
            "device_group" => filter.device_group = Some(value),
            "app" => filter.app = Some(value),
            "after" => filter.after = Some(value),
            "online" => match query_flag(&value) {
                Some(online) => filter.online = Some(online),
                None => invalid.push(key),
            },
            "limit" => match value.parse::<usize>() {
                Ok(limit) if (1..=MAX_PAGE).contains(&limit) => filter.limit = limit,
                _ => invalid.push(key),
            },
            _ => unknown.push(key),
        }
    }
    if !unknown.is_empty() {
        return Err(ApiError::unknown(unknown));
    }
    if !invalid.is_empty() {
        return Err(ApiError::invalid(invalid));
    }
    Ok(filter)
}

fn json<T: Serialize>(value: &T) -> Response {
    (StatusCode::OK, Json(value)).into_response()
}

#[utoipa::path(
    get,
    path = "/devices",
    tag = "devices",
    params(DeviceQueryParams),
    responses(
        (status = 200, description = "A page of devices, sorted by id", body = DeviceList),
        (status = 400, description = "Unknown query parameters, or bad values", body = schema::BadRequest),
    )
)]
pub async fn list(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response> {
    let filter = parse_query(query.as_deref())?;
    let page = state.service.devices(&filter).await?;
    Ok(json(&DeviceList {
        devices: page.devices.iter().map(device_json).collect(),
        next: page.next,
    }))
}

#[utoipa::path(
    get,
    path = "/devices/{device}",
    tag = "devices",
    params(("device" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device", body = Device),
        (status = 400, description = "Invalid device id", body = schema::InvalidName),
        (status = 403, description = "No report of that device (`device_exists: false`), or not allowed", body = DeviceNotFound),
    )
)]
pub async fn read(State(state): State<AppState>, PathName(device): PathName) -> Result<Response> {
    match state.service.device(device.as_str()).await? {
        Some(status) => Ok(json(&device_json(&status))),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            serde_json::json!({"device_exists": false}),
        )),
    }
}

/// `403` of `GET /devices/<id>`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum DeviceNotFound {
    Device(DeviceExists),
    Access(schema::AccessDenied),
}

#[utoipa::path(
    get,
    path = "/apps/{app}/status",
    tag = "rollout",
    params(("app" = String, Path, description = "App name")),
    responses(
        (status = 200, description = "Where every device that should run the app stands", body = RolloutStatus),
        (status = 400, description = "Invalid name", body = schema::InvalidName),
        (status = 403, description = "No such app (`app_exists: false`), or not allowed", body = schema::Forbidden),
    )
)]
pub async fn app_status(
    State(state): State<AppState>,
    PathName(app): PathName,
) -> Result<Response> {
    match state.service.app_rollout(&app).await? {
        Some(rollout) => Ok(json(&rollout_json("app", app.as_str(), &rollout))),
        None => Err(ServiceError::AppNotFound(app).into()),
    }
}

#[utoipa::path(
    get,
    path = "/device_groups/{group}/status",
    tag = "rollout",
    params(("group" = String, Path, description = "Device group name")),
    responses(
        (status = 200, description = "Where every device of the group stands", body = RolloutStatus),
        (status = 400, description = "Invalid name", body = schema::InvalidName),
        (status = 403, description = "No such group (`device_group_exists: false`), or not allowed", body = schema::Forbidden),
    )
)]
pub async fn group_status(
    State(state): State<AppState>,
    PathName(group): PathName,
) -> Result<Response> {
    match state.service.group_rollout(&group).await? {
        Some(rollout) => Ok(json(&rollout_json(
            "device_group",
            group.as_str(),
            &rollout,
        ))),
        None => Err(ServiceError::GroupNotFound(group).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_is_done_once_every_device_is_current_or_failed_and_there_is_one() {
        let device = |state| crate::service::devices::RolloutDevice {
            device_id: "pi-1".into(),
            online: true,
            state,
            desired_revision: Some(2),
            applied_revision: Some(2),
            errors: BTreeMap::new(),
        };
        let done = |devices| {
            rollout_json(
                "app",
                "web",
                &Rollout {
                    incarnation: 1,
                    revision: 2,
                    devices,
                },
            )
            .done
        };
        // No device has reported yet: `rollout status --watch` keeps waiting.
        assert!(!done(vec![]));
        assert!(!done(vec![device(RolloutState::Behind)]));
        assert!(done(vec![device(RolloutState::Current)]));
        assert!(done(vec![
            device(RolloutState::Current),
            device(RolloutState::Failed)
        ]));
    }

    #[test]
    fn device_queries_parse() {
        let filter =
            parse_query(Some("device_group=edge&online=false&limit=5&after=pi-3")).expect("valid");
        assert_eq!(
            filter,
            DeviceFilter {
                device_group: Some("edge".into()),
                app: None,
                online: Some(false),
                after: Some("pi-3".into()),
                limit: 5,
            }
        );
        assert_eq!(parse_query(None).expect("empty").limit, DEFAULT_PAGE);
        assert_eq!(
            parse_query(Some("color=red")),
            Err(ApiError::unknown(vec!["color".into()]))
        );
        for bad in ["online=maybe", "limit=0", "limit=1001", "limit=x"] {
            assert!(
                matches!(parse_query(Some(bad)), Err(error) if error.body.get("invalid_parameters").is_some()),
                "{bad}"
            );
        }
    }
}
