//! `/api/v2/device_groups` and `/api/v2/prune` handlers.

use super::dto::{self, GroupPatch};
use super::errors::ApiError;
use super::schema;
use super::{AppState, Body, PathName, ok};
use crate::service::ServiceError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use nebula_protocol::DeviceGroup;
use serde_json::json;

type Result<T> = std::result::Result<T, ApiError>;

#[utoipa::path(
    get,
    path = "/device_groups",
    tag = "device_groups",
    responses((status = 200, description = "The names of all device groups", body = schema::GroupList))
)]
pub async fn list(State(state): State<AppState>) -> Result<Response> {
    let groups = state.service.list_groups().await?;
    Ok(ok(StatusCode::OK, json!({"device_groups": groups})))
}

#[utoipa::path(
    get,
    path = "/device_groups/{group}",
    tag = "device_groups",
    params(("group" = String, Path, description = "Device group name")),
    responses((status = 200, description = "The device group", body = schema::Group), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such group (`device_group_exists: false`), or not allowed", body = schema::Forbidden))
)]
pub async fn read(State(state): State<AppState>, PathName(group): PathName) -> Result<Response> {
    match state.service.get_group(&group).await? {
        Some(document) => Ok(ok(StatusCode::OK, dto::group_json(&document))),
        None => Err(ServiceError::GroupNotFound(group).into()),
    }
}

#[utoipa::path(
    get,
    path = "/device_groups/{group}/info",
    tag = "device_groups",
    params(("group" = String, Path, description = "Device group name")),
    responses((status = 200, description = "The group with its apps in full", body = schema::GroupInfo), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such group, or not allowed", body = schema::Forbidden))
)]
pub async fn info(State(state): State<AppState>, PathName(group): PathName) -> Result<Response> {
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
            "cron_jobs": info.cron_jobs.iter().map(dto::cron_job_json).collect::<Vec<_>>(),
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

#[utoipa::path(
    post,
    path = "/device_groups/{group}",
    tag = "device_groups",
    params(("group" = String, Path, description = "Device group name")),
    request_body = schema::GroupFields,
    responses((status = 200, description = "Created at device_group_id 1", body = schema::Group), (status = 400, description = "Lists that are not lists, invalid names, unknown fields", body = schema::BadRequest), (status = 403, description = "Exists already, an unknown app, or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn create(
    State(state): State<AppState>,
    PathName(group): PathName,
    Body(body): Body,
) -> Result<Response> {
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
#[utoipa::path(
    post,
    path = "/device_groups/{group}/update",
    tag = "device_groups",
    params(("group" = String, Path, description = "Device group name")),
    request_body = schema::GroupFields,
    responses((status = 202, description = "Replaced (omitted lists become empty), device_group_id+1", body = schema::Group), (status = 400, description = "Lists that are not lists, invalid names, unknown fields", body = schema::BadRequest), (status = 403, description = "No such group, an unknown app, or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn full_update(
    State(state): State<AppState>,
    PathName(group): PathName,
    Body(body): Body,
) -> Result<Response> {
    let patch = parse(&body)?;
    let full = GroupPatch {
        apps: Some(patch.apps.unwrap_or_default()),
        cron_jobs: Some(patch.cron_jobs.unwrap_or_default()),
    };
    update(&state, &group, full).await
}

/// PUT/PATCH: only the given lists change.
#[utoipa::path(
    method(put, patch),
    path = "/device_groups/{group}/update",
    tag = "device_groups",
    params(("group" = String, Path, description = "Device group name")),
    request_body = schema::GroupFields,
    responses((status = 202, description = "The given lists changed, device_group_id+1", body = schema::Group), (status = 400, description = "Empty body, lists that are not lists, invalid names, unknown fields", body = schema::BadRequest), (status = 403, description = "No such group, an unknown app, or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn partial_update(
    State(state): State<AppState>,
    PathName(group): PathName,
    Body(body): Body,
) -> Result<Response> {
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

#[utoipa::path(
    delete,
    path = "/device_groups/{group}",
    tag = "device_groups",
    params(("group" = String, Path, description = "Device group name")),
    responses((status = 200, description = "Deleted", body = schema::Empty), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such group, or not allowed", body = schema::Forbidden))
)]
pub async fn delete(State(state): State<AppState>, PathName(group): PathName) -> Result<Response> {
    state.service.delete_group(&group).await?;
    Ok(ok(StatusCode::OK, json!({})))
}

#[utoipa::path(
    post,
    path = "/device_groups/{group}/prune",
    tag = "device_groups",
    params(("group" = String, Path, description = "Device group name")),
    responses((status = 202, description = "prune_id+1: the devices remove unused images", body = schema::Group), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such group, or not allowed", body = schema::Forbidden))
)]
pub async fn prune(State(state): State<AppState>, PathName(group): PathName) -> Result<Response> {
    let document = state.service.prune_group(&group).await?;
    Ok(ok(StatusCode::ACCEPTED, dto::group_json(&document)))
}

#[utoipa::path(
    post,
    path = "/prune",
    tag = "device_groups",
    responses((status = 202, description = "Every group's new prune_id", body = schema::PruneIds), (status = 403, description = "Not allowed", body = schema::AccessDenied))
)]
pub async fn prune_all(State(state): State<AppState>) -> Result<Response> {
    let prune_ids = state.service.prune_all().await?;
    Ok(ok(StatusCode::ACCEPTED, json!({"prune_ids": prune_ids})))
}
