//! `/api/v2/user_groups` handlers (admin only, declared in `api_routes`). A group's
//! permissions name objects, which need not exist yet (access can be granted before the app
//! is made); its members are user names, likewise.

use super::dto;
use super::errors::ApiError;
use super::schema;
use super::{AppState, Body, PathName, ok};
use crate::service::ServiceError;
use crate::users::{Access, UserGroupDocument};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use nebula_protocol::Name;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

type Result<T> = std::result::Result<T, ApiError>;

const USER_GROUP_FIELDS: [&str; 7] = [
    "group_members",
    "pruning_allowed",
    "apps",
    "device_groups",
    "cron_jobs",
    "admin",
    "user_group",
];

/// The fields a body gives, typed.
#[derive(Debug, Clone, Default)]
struct Patch {
    group_members: Option<Vec<String>>,
    pruning_allowed: Option<bool>,
    apps: Option<BTreeMap<String, Access>>,
    device_groups: Option<BTreeMap<String, Access>>,
    cron_jobs: Option<BTreeMap<String, Access>>,
    admin: Option<bool>,
}

impl Patch {
    fn is_empty(&self) -> bool {
        self.group_members.is_none()
            && self.pruning_allowed.is_none()
            && self.apps.is_none()
            && self.device_groups.is_none()
            && self.cron_jobs.is_none()
            && self.admin.is_none()
    }

    fn apply(self, group: &mut UserGroupDocument) {
        if let Some(members) = self.group_members {
            group.group_members = members;
        }
        if let Some(flag) = self.pruning_allowed {
            group.pruning_allowed = flag;
        }
        if let Some(map) = self.apps {
            group.apps = map;
        }
        if let Some(map) = self.device_groups {
            group.device_groups = map;
        }
        if let Some(map) = self.cron_jobs {
            group.cron_jobs = map;
        }
        if let Some(flag) = self.admin {
            group.admin = flag;
        }
    }
}

/// A list of valid names, repeats dropped.
fn names(value: &Value) -> Option<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for item in value.as_array()? {
        let name = Name::new(item.as_str()?).ok()?.to_string();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Some(names)
}

/// `{name: "ro"|"rw"}` with valid names.
fn grants(value: &Value) -> Option<BTreeMap<String, Access>> {
    value
        .as_object()?
        .iter()
        .map(|(name, access)| {
            let name = Name::new(name).ok()?.to_string();
            Some((name, Access::parse(access.as_str()?)?))
        })
        .collect()
}

/// Parses a user group body: unknown fields, then wrong types are reported.
fn parse(object: &Map<String, Value>, group: &Name) -> Result<Patch> {
    dto::unknown_fields(object, &USER_GROUP_FIELDS)?;
    let mut patch = Patch::default();
    let mut invalid = Vec::new();
    for (key, value) in object {
        let ok = match key.as_str() {
            "group_members" => names(value)
                .map(|list| patch.group_members = Some(list))
                .is_some(),
            "pruning_allowed" => value
                .as_bool()
                .map(|flag| patch.pruning_allowed = Some(flag))
                .is_some(),
            "admin" => value
                .as_bool()
                .map(|flag| patch.admin = Some(flag))
                .is_some(),
            "apps" => grants(value).map(|map| patch.apps = Some(map)).is_some(),
            "device_groups" => grants(value)
                .map(|map| patch.device_groups = Some(map))
                .is_some(),
            "cron_jobs" => grants(value)
                .map(|map| patch.cron_jobs = Some(map))
                .is_some(),
            "user_group" => value.as_str() == Some(group.as_str()),
            _ => false,
        };
        if !ok {
            invalid.push(key.clone());
        }
    }
    if invalid.is_empty() {
        Ok(patch)
    } else {
        Err(ApiError::invalid(invalid))
    }
}

fn group_json(group: &UserGroupDocument) -> Value {
    serde_json::to_value(group).unwrap_or_default()
}

#[utoipa::path(
    get,
    path = "/user_groups",
    tag = "user_groups",
    responses((status = 200, description = "The names of all user groups", body = schema::UserGroupList))
)]
pub async fn list(State(state): State<AppState>) -> Result<Response> {
    let groups = state.service.list_user_groups().await?;
    Ok(ok(StatusCode::OK, json!({"user_groups": groups})))
}

#[utoipa::path(
    get,
    path = "/user_groups/{user_group}",
    tag = "user_groups",
    params(("user_group" = String, Path, description = "User group name")),
    responses((status = 200, description = "The user group", body = schema::UserGroup), (status = 403, description = "No such user group (`user_group_exists: false`) or not allowed", body = schema::Forbidden), (status = 400, description = "Invalid name", body = schema::InvalidName))
)]
pub async fn read(State(state): State<AppState>, PathName(group): PathName) -> Result<Response> {
    match state.service.get_user_group(&group).await? {
        Some(document) => Ok(ok(StatusCode::OK, group_json(&document))),
        None => Err(ServiceError::UserGroupNotFound(group).into()),
    }
}

#[utoipa::path(
    post,
    path = "/user_groups/{user_group}",
    tag = "user_groups",
    params(("user_group" = String, Path, description = "User group name")),
    request_body = schema::UserGroupFields,
    responses((status = 200, description = "Created; omitted fields take their defaults (no members, nothing allowed)", body = schema::UserGroup), (status = 400, description = "Unknown or wrongly typed fields", body = schema::BadRequest), (status = 403, description = "Exists already (`user_group_exists: true`), or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn create(
    State(state): State<AppState>,
    PathName(group): PathName,
    Body(body): Body,
) -> Result<Response> {
    if state.service.get_user_group(&group).await?.is_some() {
        return Err(ServiceError::UserGroupExists(group).into());
    }
    let patch = if body.iter().all(u8::is_ascii_whitespace) {
        Patch::default()
    } else {
        parse(&dto::parse_object(&body)?, &group)?
    };
    let mut document = UserGroupDocument::new(group.as_str());
    patch.apply(&mut document);
    state.service.create_user_group(&document).await?;
    tracing::info!(user_group = %group, "user group created");
    Ok(ok(StatusCode::OK, group_json(&document)))
}

#[utoipa::path(
    delete,
    path = "/user_groups/{user_group}",
    tag = "user_groups",
    params(("user_group" = String, Path, description = "User group name")),
    responses((status = 200, description = "Deleted: its members lose what it allowed", body = schema::Empty), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such user group, or not allowed", body = schema::Forbidden))
)]
pub async fn delete(State(state): State<AppState>, PathName(group): PathName) -> Result<Response> {
    state.service.delete_user_group(&group).await?;
    tracing::info!(user_group = %group, "user group deleted");
    Ok(ok(StatusCode::OK, json!({})))
}

#[utoipa::path(
    method(put, patch),
    path = "/user_groups/{user_group}/update",
    tag = "user_groups",
    params(("user_group" = String, Path, description = "User group name")),
    request_body = schema::UserGroupFields,
    responses((status = 200, description = "The given fields changed", body = schema::UserGroup), (status = 400, description = "Empty, unknown or wrongly typed fields", body = schema::BadRequest), (status = 403, description = "No such user group (`user_group_exists: false`), or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn update(
    State(state): State<AppState>,
    PathName(group): PathName,
    Body(body): Body,
) -> Result<Response> {
    // "Does not exist" before the body's faults, as for users.
    if state.service.get_user_group(&group).await?.is_none() {
        return Err(ServiceError::UserGroupNotFound(group).into());
    }
    let patch = parse(&dto::parse_object(&body)?, &group)?;
    if patch.is_empty() {
        return Err(ApiError::malformed());
    }
    let document = state
        .service
        .update_user_group(&group, move |document| patch.clone().apply(document))
        .await?;
    tracing::info!(user_group = %group, "user group changed");
    Ok(ok(StatusCode::OK, group_json(&document)))
}
