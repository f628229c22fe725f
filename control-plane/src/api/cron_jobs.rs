//! `/api/v2/cron_jobs` handlers. A cron job reaches devices through the groups that list it
//! (`service::cron_jobs`); the agent's own scheduler runs it.

use super::dto::{self, CronJobPatch};
use super::errors::ApiError;
use super::schema;
use super::{AppState, Body, PathName, ok};
use crate::service::ServiceError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use nebula_protocol::{CronJob, Name};
use serde_json::json;

type Result<T> = std::result::Result<T, ApiError>;

#[utoipa::path(
    get,
    path = "/cron_jobs",
    tag = "cron_jobs",
    responses((status = 200, description = "The names of all cron jobs", body = schema::CronJobList))
)]
pub async fn list(State(state): State<AppState>) -> Result<Response> {
    let jobs = state.service.list_cron_jobs().await?;
    Ok(ok(StatusCode::OK, json!({"cron_jobs": jobs})))
}

#[utoipa::path(
    get,
    path = "/cron_jobs/{cron_job}",
    tag = "cron_jobs",
    params(("cron_job" = String, Path, description = "Cron job name")),
    responses((status = 200, description = "The cron job", body = schema::CronJob), (status = 403, description = "No such cron job (`cron_job_exists: false`) or not allowed", body = schema::Forbidden), (status = 400, description = "Invalid name", body = schema::InvalidName))
)]
pub async fn read(State(state): State<AppState>, PathName(job): PathName) -> Result<Response> {
    match state.service.get_cron_job(&job).await? {
        Some(config) => Ok(ok(StatusCode::OK, dto::cron_job_json(&config))),
        None => Err(ServiceError::CronJobNotFound(job).into()),
    }
}

/// A full cron job from a body: omitted fields take their defaults; `schedule` and
/// `docker_image` are required (missing ones are listed together, as upstream).
fn full_job(job: &Name, body: &[u8]) -> Result<CronJob> {
    let object = dto::parse_object(body)?;
    let patch = dto::parse_cron_job(&object, job)?;
    let missing: Vec<&str> = [
        ("schedule", patch.schedule.is_none()),
        ("docker_image", patch.docker_image.is_none()),
    ]
    .into_iter()
    .filter_map(|(field, missing)| missing.then_some(field))
    .collect();
    if !missing.is_empty() {
        return Err(ApiError::missing(&missing));
    }
    let mut config = CronJob::new(job.clone(), "", "");
    patch.apply(&mut config);
    dto::validate_cron_job(&config)?;
    Ok(config)
}

#[utoipa::path(
    post,
    path = "/cron_jobs/{cron_job}",
    tag = "cron_jobs",
    params(("cron_job" = String, Path, description = "Cron job name")),
    request_body = schema::CronJobFields,
    responses((status = 200, description = "Created at cron_job_id 1", body = schema::CronJob), (status = 400, description = "Missing schedule or docker_image, invalid schedule (`schedule_valid: false`) or bad fields", body = schema::BadRequest), (status = 403, description = "Exists already (`cron_job_exists: true`), or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn create(
    State(state): State<AppState>,
    PathName(job): PathName,
    Body(body): Body,
) -> Result<Response> {
    // v2 answers "exists" before looking at the body.
    if state.service.get_cron_job(&job).await?.is_some() {
        return Err(ServiceError::CronJobExists(job).into());
    }
    let config = full_job(&job, &body)?;
    let config = state.service.create_cron_job(config).await?;
    Ok(ok(StatusCode::OK, dto::cron_job_json(&config)))
}

#[utoipa::path(
    delete,
    path = "/cron_jobs/{cron_job}",
    tag = "cron_jobs",
    params(("cron_job" = String, Path, description = "Cron job name")),
    responses((status = 200, description = "Deleted: every group leaves it", body = schema::Empty), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such cron job, or not allowed", body = schema::Forbidden))
)]
pub async fn delete(State(state): State<AppState>, PathName(job): PathName) -> Result<Response> {
    state.service.delete_cron_job(&job).await?;
    Ok(ok(StatusCode::OK, json!({})))
}

/// Applies `change` to the stored cron job and answers `202` with the new document.
async fn change(
    state: &AppState,
    job: &Name,
    change: impl Fn(&CronJob) -> Result<CronJob> + Send + Sync + 'static,
) -> Result<Response> {
    let config = state.service.update_cron_job(job, change).await?;
    Ok(ok(StatusCode::ACCEPTED, dto::cron_job_json(&config)))
}

#[utoipa::path(
    post,
    path = "/cron_jobs/{cron_job}/update",
    tag = "cron_jobs",
    params(("cron_job" = String, Path, description = "Cron job name")),
    request_body = schema::CronJobFields,
    responses((status = 202, description = "Replaced: omitted fields reset, cron_job_id+1", body = schema::CronJob), (status = 400, description = "Missing schedule or docker_image, invalid schedule or bad fields", body = schema::BadRequest), (status = 403, description = "No such cron job, or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn full_update(
    State(state): State<AppState>,
    PathName(job): PathName,
    Body(body): Body,
) -> Result<Response> {
    let config = full_job(&job, &body)?;
    change(&state, &job, move |_| Ok(config.clone())).await
}

#[utoipa::path(
    method(put, patch),
    path = "/cron_jobs/{cron_job}/update",
    tag = "cron_jobs",
    params(("cron_job" = String, Path, description = "Cron job name")),
    request_body = schema::CronJobFields,
    responses((status = 202, description = "The given fields changed, cron_job_id+1", body = schema::CronJob), (status = 400, description = "Empty, unknown or wrongly typed fields, invalid schedule", body = schema::BadRequest), (status = 403, description = "No such cron job, or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn partial_update(
    State(state): State<AppState>,
    PathName(job): PathName,
    Body(body): Body,
) -> Result<Response> {
    let object = dto::parse_object(&body)?;
    let patch: CronJobPatch = dto::parse_cron_job(&object, &job)?;
    if patch.is_empty() {
        return Err(ApiError::malformed());
    }
    // Validation needs the merged job, so it runs inside the read-modify-write.
    change(&state, &job, move |current| {
        let mut config = current.clone();
        patch.clone().apply(&mut config);
        dto::validate_cron_job(&config)?;
        Ok(config)
    })
    .await
}
