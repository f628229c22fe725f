//! `/api/v2/device_groups` and `/api/v2/prune` handlers.

use super::dto::{self, GroupPatch};
use super::errors::ApiError;
use super::{AppState, Body, PathName, ok, require};
use crate::auth::{Permission, Principal};
use crate::service::ServiceError;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use nebula_protocol::DeviceGroup;
use serde_json::json;

type Result<T> = std::result::Result<T, ApiError>;

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response> {
    require(&principal, Permission::ListDeviceGroups)?;
    let groups = state.service.list_groups().await?;
    Ok(ok(StatusCode::OK, json!({"device_groups": groups})))
}

pub async fn read(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathName(group): PathName,
) -> Result<Response> {
    require(&principal, Permission::ReadDeviceGroup(group.as_str()))?;
    match state.service.get_group(&group).await? {
        Some(document) => Ok(ok(StatusCode::OK, dto::group_json(&document))),
        None => Err(ServiceError::GroupNotFound(group).into()),
    }
}

pub async fn info(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathName(group): PathName,
) -> Result<Response> {
    require(&principal, Permission::ReadDeviceGroup(group.as_str()))?;
    let Some(info) = state.service.group_info(&group).await? else {
        return Err(ServiceError::GroupNotFound(group).into());
    };
    let apps: Vec<_> = info.apps.iter().map(dto::app_json).collect();
    let apps_list: Vec<&str> = info.group.apps.iter().map(|app| app.as_str()).collect();
    Ok(ok(
        StatusCode::OK,
        json!({
            "apps": apps,
            "apps_list": apps_list,
            "cron_jobs": [],
            "cron_jobs_list": info.group.cron_jobs.iter().map(|job| job.as_str()).collect::<Vec<_>>(),
            "prune_id": info.group.prune_id,
            "device_group_id": info.group.device_group_id,
        }),
    ))
}

fn parse(body: &[u8]) -> Result<GroupPatch> {
    let object = dto::parse_object(body)?;
    dto::parse_group(&object)
}

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathName(group): PathName,
    Body(body): Body,
) -> Result<Response> {
    require(&principal, Permission::WriteDeviceGroup(group.as_str()))?;
    if state.service.get_group(&group).await?.is_some() {
        return Err(ServiceError::GroupExists(group).into());
    }
    let patch = parse(&body)?;
    let mut document = DeviceGroup::new(group);
    patch.apply(&mut document);
    let document = state.service.create_group(document).await?;
    Ok(ok(StatusCode::OK, dto::group_json(&document)))
}

/// POST: the body is the full membership (omitted lists become empty).
pub async fn full_update(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathName(group): PathName,
    Body(body): Body,
) -> Result<Response> {
    require(&principal, Permission::WriteDeviceGroup(group.as_str()))?;
    let patch = parse(&body)?;
    let full = GroupPatch {
        apps: Some(patch.apps.unwrap_or_default()),
        cron_jobs: Some(patch.cron_jobs.unwrap_or_default()),
    };
    update(&state, &group, full).await
}

/// PUT/PATCH: only the given lists change.
pub async fn partial_update(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathName(group): PathName,
    Body(body): Body,
) -> Result<Response> {
    require(&principal, Permission::WriteDeviceGroup(group.as_str()))?;
    let patch = parse(&body)?;
    if patch.is_empty() {
        return Err(ApiError::malformed());
    }
    update(&state, &group, patch).await
}

async fn update(
    state: &AppState,
    group: &nebula_protocol::Name,
    patch: GroupPatch,
) -> Result<Response> {
    let document = state
        .service
        .update_group(group, move |current| {
            let mut document = current.clone();
            patch.clone().apply(&mut document);
            Ok::<_, ApiError>(document)
        })
        .await?;
    Ok(ok(StatusCode::ACCEPTED, dto::group_json(&document)))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathName(group): PathName,
) -> Result<Response> {
    require(&principal, Permission::WriteDeviceGroup(group.as_str()))?;
    state.service.delete_group(&group).await?;
    Ok(ok(StatusCode::OK, json!({})))
}

pub async fn prune(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathName(group): PathName,
) -> Result<Response> {
    require(&principal, Permission::Prune)?;
    let document = state.service.prune_group(&group).await?;
    Ok(ok(StatusCode::ACCEPTED, dto::group_json(&document)))
}

pub async fn prune_all(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response> {
    require(&principal, Permission::Prune)?;
    let prune_ids = state.service.prune_all().await?;
    Ok(ok(StatusCode::ACCEPTED, json!({"prune_ids": prune_ids})))
}
