//! `/api/v2/apps` handlers.

use super::dto::{self, AppPatch};
use super::errors::ApiError;
use super::schema;
use super::{AppState, Body, PathName, ok};
use crate::service::ServiceError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use nebula_protocol::{AppConfig, EnvVarsForm, Name};
use serde_json::json;

type Result<T> = std::result::Result<T, ApiError>;

#[utoipa::path(
    get,
    path = "/apps",
    tag = "apps",
    responses((status = 200, description = "The names of all apps", body = schema::AppList))
)]
pub async fn list(State(state): State<AppState>) -> Result<Response> {
    let apps = state.service.list_apps().await?;
    Ok(ok(StatusCode::OK, json!({"apps": apps})))
}

#[utoipa::path(
    get,
    path = "/apps/{app}",
    tag = "apps",
    params(("app" = String, Path, description = "App name")),
    responses((status = 200, description = "The app", body = schema::App), (status = 403, description = "No such app (`app_exists: false`) or not allowed", body = schema::Forbidden), (status = 400, description = "Invalid name", body = schema::InvalidName))
)]
pub async fn read(State(state): State<AppState>, PathName(app): PathName) -> Result<Response> {
    match state.service.get_app(&app).await? {
        Some(config) => Ok(ok(StatusCode::OK, dto::app_json(&config))),
        None => Err(ServiceError::AppNotFound(app).into()),
    }
}

/// A full config from a body: omitted fields take their defaults, `docker_image` is required.
/// `replacing`: a full update, where upstream answers omitted `env_vars` as `[]` (the list
/// form), where a create answers `{}`.
fn full_config(app: &Name, body: &[u8], replacing: bool) -> Result<AppConfig> {
    let object = dto::parse_object(body)?;
    let patch = dto::parse_app(&object, app)?;
    if patch.docker_image.is_none() {
        return Err(ApiError::missing(&["docker_image"]));
    }
    let mut config = AppConfig::new(app.clone(), "");
    if replacing {
        config.env_vars_form = EnvVarsForm::List;
    }
    patch.apply(&mut config);
    dto::validate_app(&config)?;
    Ok(config)
}

#[utoipa::path(
    post,
    path = "/apps/{app}",
    tag = "apps",
    params(("app" = String, Path, description = "App name")),
    request_body = schema::AppFields,
    responses((status = 200, description = "Created at app_id 1", body = schema::App), (status = 400, description = "Missing docker_image, bad fields or ports", body = schema::BadRequest), (status = 403, description = "Exists already (`app_exists: true`), bad port shape, or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn create(
    State(state): State<AppState>,
    PathName(app): PathName,
    Body(body): Body,
) -> Result<Response> {
    // v2 answers "exists" before looking at the body.
    if state.service.get_app(&app).await?.is_some() {
        return Err(ServiceError::AppExists(app).into());
    }
    let config = full_config(&app, &body, false)?;
    let config = state.service.create_app(config).await?;
    Ok(ok(StatusCode::OK, dto::app_json(&config)))
}

#[utoipa::path(
    delete,
    path = "/apps/{app}",
    tag = "apps",
    params(("app" = String, Path, description = "App name")),
    responses((status = 200, description = "Deleted", body = schema::Empty), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such app, or not allowed", body = schema::Forbidden))
)]
pub async fn delete(State(state): State<AppState>, PathName(app): PathName) -> Result<Response> {
    state.service.delete_app(&app).await?;
    Ok(ok(StatusCode::OK, json!({})))
}

/// Applies `change` to the stored app and answers `202` with the new document.
async fn change(
    state: &AppState,
    app: &Name,
    change: impl Fn(&AppConfig) -> Result<AppConfig> + Send + Sync + 'static,
) -> Result<Response> {
    let config = state.service.update_app(app, change).await?;
    Ok(ok(StatusCode::ACCEPTED, dto::app_json(&config)))
}

#[utoipa::path(
    post,
    path = "/apps/{app}/start",
    tag = "apps",
    params(("app" = String, Path, description = "App name")),
    responses((status = 202, description = "running: true, app_id+1", body = schema::App), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such app, or not allowed", body = schema::Forbidden))
)]
pub async fn start(State(state): State<AppState>, PathName(app): PathName) -> Result<Response> {
    change(&state, &app, |current| {
        Ok(AppConfig {
            running: true,
            ..current.clone()
        })
    })
    .await
}

#[utoipa::path(
    post,
    path = "/apps/{app}/stop",
    tag = "apps",
    params(("app" = String, Path, description = "App name")),
    responses((status = 202, description = "running: false, app_id+1", body = schema::App), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such app, or not allowed", body = schema::Forbidden))
)]
pub async fn stop(State(state): State<AppState>, PathName(app): PathName) -> Result<Response> {
    change(&state, &app, |current| {
        Ok(AppConfig {
            running: false,
            ..current.clone()
        })
    })
    .await
}

/// A restart is a new revision of the same config: agents recreate the containers.
#[utoipa::path(
    post,
    path = "/apps/{app}/restart",
    tag = "apps",
    params(("app" = String, Path, description = "App name")),
    responses((status = 202, description = "app_id+1: devices recreate the containers", body = schema::App), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such app, stopped (`running_before_restart: false`), or not allowed", body = schema::Forbidden))
)]
pub async fn restart(State(state): State<AppState>, PathName(app): PathName) -> Result<Response> {
    change(&state, &app, |current| {
        if current.running {
            Ok(current.clone())
        } else {
            Err(ServiceError::NotRunning(current.app_name.clone()).into())
        }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/apps/{app}/update",
    tag = "apps",
    params(("app" = String, Path, description = "App name")),
    request_body = schema::AppFields,
    responses((status = 202, description = "Replaced: omitted fields reset, app_id+1", body = schema::App), (status = 400, description = "Missing docker_image, bad fields or ports", body = schema::BadRequest), (status = 403, description = "No such app, bad port shape, or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn full_update(
    State(state): State<AppState>,
    PathName(app): PathName,
    Body(body): Body,
) -> Result<Response> {
    let config = full_config(&app, &body, true)?;
    change(&state, &app, move |_| Ok(config.clone())).await
}

#[utoipa::path(
    method(put, patch),
    path = "/apps/{app}/update",
    tag = "apps",
    params(("app" = String, Path, description = "App name")),
    request_body = schema::AppFields,
    responses((status = 202, description = "The given fields changed, app_id+1", body = schema::App), (status = 400, description = "Empty, unknown or wrongly typed fields, bad ports", body = schema::BadRequest), (status = 403, description = "No such app, bad port shape, or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn partial_update(
    State(state): State<AppState>,
    PathName(app): PathName,
    Body(body): Body,
) -> Result<Response> {
    let object = dto::parse_object(&body)?;
    let patch: AppPatch = dto::parse_app(&object, &app)?;
    if patch.is_empty() {
        return Err(ApiError::malformed());
    }
    // Validation needs the merged config, so it runs inside the read-modify-write.
    change(&state, &app, move |current| {
        let mut config = current.clone();
        patch.clone().apply(&mut config);
        dto::validate_app(&config)?;
        Ok(config)
    })
    .await
}
