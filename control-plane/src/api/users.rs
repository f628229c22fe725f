//! `/api/v2/users` handlers (admin only, declared in `api_routes`). Secrets are answered only
//! as their hashes, except the new token of `/refresh`, shown once.

use super::dto;
use super::errors::ApiError;
use super::schema;
use super::{AppState, Body, PathName, ok};
use crate::service::ServiceError;
use crate::service::users::Secrets;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use nebula_protocol::Name;
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, ApiError>;

const USER_FIELDS: [&str; 3] = ["password", "token", "user_name"];
/// Longest accepted password or token: argon2 takes any length, but a megabyte of password
/// would only cost the hasher.
const MAX_SECRET_CHARS: usize = 1024;
/// Shortest token a client may choose: a token is kept as its plain SHA-256 (it is looked up
/// by it), which only a token with enough entropy makes safe to keep. Generated ones are 64
/// hex characters.
const MIN_TOKEN_CHARS: usize = 16;

/// Whether a client's token can be one: visible ASCII only (a header value is trimmed, so a
/// space could never log in), [`MIN_TOKEN_CHARS`] to [`MAX_SECRET_CHARS`] long.
fn token_ok(token: &str) -> bool {
    (MIN_TOKEN_CHARS..=MAX_SECRET_CHARS).contains(&token.len())
        && token.bytes().all(|byte| byte.is_ascii_graphic())
}

/// The secrets a body gives: unknown fields, then wrong types are reported; a password is a
/// non-empty string of at most [`MAX_SECRET_CHARS`], a token as [`token_ok`] says.
fn parse_secrets(body: &[u8], user: &Name) -> Result<Secrets> {
    let object = dto::parse_object(body)?;
    dto::unknown_fields(&object, &USER_FIELDS)?;
    let mut secrets = Secrets::default();
    let mut invalid = Vec::new();
    for (key, value) in &object {
        let secret = value
            .as_str()
            .filter(|text| !text.is_empty() && text.chars().count() <= MAX_SECRET_CHARS)
            .map(str::to_string);
        let ok = match key.as_str() {
            "password" => secret.map(|text| secrets.password = Some(text)).is_some(),
            "token" => secret
                .filter(|text| token_ok(text))
                .map(|text| secrets.token = Some(text))
                .is_some(),
            "user_name" => value.as_str() == Some(user.as_str()),
            _ => false,
        };
        if !ok {
            invalid.push(key.clone());
        }
    }
    if invalid.is_empty() {
        Ok(secrets)
    } else {
        Err(ApiError::invalid(invalid))
    }
}

fn user_json(user: &crate::users::UserDocument) -> Value {
    serde_json::to_value(user).unwrap_or_default()
}

#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    responses((status = 200, description = "The names of all users", body = schema::UserList))
)]
pub async fn list(State(state): State<AppState>) -> Result<Response> {
    let users = state.service.list_users().await?;
    Ok(ok(StatusCode::OK, json!({"users": users})))
}

#[utoipa::path(
    get,
    path = "/users/{user}",
    tag = "users",
    params(("user" = String, Path, description = "User name")),
    responses((status = 200, description = "The user, secrets hashed", body = schema::User), (status = 403, description = "No such user (`user_exists: false`) or not allowed", body = schema::Forbidden), (status = 400, description = "Invalid name", body = schema::InvalidName))
)]
pub async fn read(State(state): State<AppState>, PathName(user): PathName) -> Result<Response> {
    match state.service.get_user(&user).await? {
        Some(document) => Ok(ok(StatusCode::OK, user_json(&document))),
        None => Err(ServiceError::UserNotFound(user).into()),
    }
}

#[utoipa::path(
    post,
    path = "/users/{user}",
    tag = "users",
    params(("user" = String, Path, description = "User name")),
    request_body = schema::UserFields,
    responses((status = 200, description = "Created; a password or token not given is generated (set one later, or refresh the token)", body = schema::User), (status = 400, description = "Unknown or wrongly typed fields, or a token another user has", body = schema::BadRequest), (status = 403, description = "Exists already (`user_exists: true`), or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn create(
    State(state): State<AppState>,
    PathName(user): PathName,
    Body(body): Body,
) -> Result<Response> {
    // v2 answers "exists" before looking at the body.
    if state.service.get_user(&user).await?.is_some() {
        return Err(ServiceError::UserExists(user).into());
    }
    // An empty body is a user with generated secrets (the SDK sends `{}` or nothing).
    let secrets = if body.iter().all(u8::is_ascii_whitespace) {
        Secrets::default()
    } else {
        parse_secrets(&body, &user)?
    };
    let document = state.service.create_user(&user, secrets).await?;
    tracing::info!(user = %user, "user created");
    Ok(ok(StatusCode::OK, user_json(&document)))
}

#[utoipa::path(
    delete,
    path = "/users/{user}",
    tag = "users",
    params(("user" = String, Path, description = "User name")),
    responses((status = 200, description = "Deleted, with its token and its place in every user group", body = schema::Empty), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such user, or not allowed", body = schema::Forbidden))
)]
pub async fn delete(State(state): State<AppState>, PathName(user): PathName) -> Result<Response> {
    state.service.delete_user(&user).await?;
    tracing::info!(user = %user, "user deleted");
    Ok(ok(StatusCode::OK, json!({})))
}

#[utoipa::path(
    method(put, patch),
    path = "/users/{user}/update",
    tag = "users",
    params(("user" = String, Path, description = "User name")),
    request_body = schema::UserFields,
    responses((status = 200, description = "The given secrets changed", body = schema::User), (status = 400, description = "Empty, unknown or wrongly typed fields, or a token another user has", body = schema::BadRequest), (status = 403, description = "No such user, or not allowed", body = schema::Forbidden), (status = 413, description = "Body over 1 MiB", body = schema::TooLarge))
)]
pub async fn update(
    State(state): State<AppState>,
    PathName(user): PathName,
    Body(body): Body,
) -> Result<Response> {
    // v2 answers "does not exist" before looking at the body.
    if state.service.get_user(&user).await?.is_none() {
        return Err(ServiceError::UserNotFound(user).into());
    }
    let secrets = parse_secrets(&body, &user)?;
    if secrets.password.is_none() && secrets.token.is_none() {
        return Err(ApiError::malformed());
    }
    let document = state.service.update_user(&user, secrets).await?;
    tracing::info!(user = %user, "user's secrets changed");
    Ok(ok(StatusCode::OK, user_json(&document)))
}

#[utoipa::path(
    post,
    path = "/users/{user}/refresh",
    tag = "users",
    params(("user" = String, Path, description = "User name")),
    responses((status = 200, description = "A new token, shown this once; the old one stops working", body = schema::NewToken), (status = 400, description = "Invalid name", body = schema::InvalidName), (status = 403, description = "No such user, or not allowed", body = schema::Forbidden))
)]
pub async fn refresh(State(state): State<AppState>, PathName(user): PathName) -> Result<Response> {
    let token = state.service.refresh_user_token(&user).await?;
    tracing::info!(user = %user, "user's token refreshed");
    let mut response = ok(StatusCode::OK, json!({"token": token}));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}
