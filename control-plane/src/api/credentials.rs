//! `POST` and `DELETE /api/v2/devices/<id>/credentials` (API.md, issue 16): an admin mints a
//! device's own broker credential — answered once, as the AMQP URL the device uses as
//! `NEBULA_AMQP_URL` — or revokes it. The logic is `service::credentials`.

use super::errors::ApiError;
use super::{AppState, Body, PathName, dto, schema};
use crate::auth::Principal;
use crate::device_credentials::{self, Scope};
use crate::service::credentials::{self, CredentialError};
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use nebula_protocol::Name;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

type Result<T> = std::result::Result<T, ApiError>;

/// The body of a mint: what the credential entitles the device to.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // The OpenAPI schema of the body; parsed by hand (`scope`).
pub struct CredentialScope {
    /// Group mode: the device group the device follows.
    device_group: Option<String>,
    /// App mode: the apps the device follows.
    apps: Option<Vec<String>>,
}

/// `200` of a mint: the only answer that ever holds the password.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintedCredential {
    pub device_id: String,
    /// `NEBULA_AMQP_URL` for the device: its own user (`nebula-device-<id>`) and password in
    /// each of the broker URLs for devices (comma-separated when several: a cluster's nodes).
    pub amqp_url: String,
    /// The public key the control plane signs changes with (64 hex digits), for the device to
    /// pin (`NEBULA_SIGNING_KEY`); absent when changes are not signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
}

impl std::fmt::Debug for MintedCredential {
    // The URL holds the password.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MintedCredential")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// `200` of a revoke.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokedCredential {
    pub device_id: String,
    /// Whether the device had a credential on record.
    pub had_credential: bool,
}

#[utoipa::path(
    post,
    path = "/devices/{device}/credentials",
    tag = "devices",
    params(("device" = String, Path, description = "Device id")),
    request_body = CredentialScope,
    responses(
        (status = 200, description = "Minted (a credential the device had stops working)", body = MintedCredential),
        (status = 400, description = "Not exactly one of `device_group` and `apps`, invalid names (also: a word `group` or `app` between the dots of the device id or a scope name), unknown fields", body = schema::BadRequest),
        (status = 403, description = "Not allowed", body = schema::AccessDenied),
        (status = 413, description = "Body over 1 MiB", body = schema::TooLarge),
        (status = 503, description = "Device credentials are not configured (`NEBULA_RABBITMQ_MANAGEMENT_URL`), or the broker's management API failed", body = schema::Unavailable),
    )
)]
pub async fn mint(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathName(device): PathName,
    Body(body): Body,
) -> Result<Response> {
    let scope = scope(&dto::parse_object(&body)?, &[])?;
    // A word `group` or `app` in the id or a scope name could make its queues' names
    // another device's.
    if let Some(ambiguous) = device_credentials::ambiguous(&device, &scope) {
        return Err(ApiError::invalid_name(ambiguous.as_str()));
    }
    let issuer = issuer(&state)?;
    let amqp_url = credentials::mint(&state.service, issuer, &device, scope, &principal.who())
        .await
        .map_err(credential_error)?;
    tracing::info!(device = %device, "device credential minted");
    // The password is in it: no cache along the way may keep it.
    let answer = MintedCredential {
        device_id: device.to_string(),
        amqp_url,
        signing_key: issuer.signing_key.clone(),
    };
    let mut response = super::ok(StatusCode::OK, json!(answer));
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

#[utoipa::path(
    delete,
    path = "/devices/{device}/credentials",
    tag = "devices",
    params(("device" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "Revoked: the device's broker user is gone, and the broker has closed its open connections", body = RevokedCredential),
        (status = 400, description = "Invalid device id", body = schema::InvalidName),
        (status = 403, description = "Not allowed", body = schema::AccessDenied),
        (status = 503, description = "Device credentials are not configured, or the broker's management API failed", body = schema::Unavailable),
    )
)]
pub async fn revoke(State(state): State<AppState>, PathName(device): PathName) -> Result<Response> {
    let issuer = issuer(&state)?;
    let had = credentials::revoke(&state.service, issuer, &device)
        .await
        .map_err(credential_error)?;
    tracing::info!(device = %device, had_credential = had, "device credential revoked");
    Ok(super::ok(
        StatusCode::OK,
        json!({"device_id": device.as_str(), "had_credential": had}),
    ))
}

pub(super) fn issuer(state: &AppState) -> Result<&credentials::CredentialIssuer> {
    state.credentials.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "device credentials are not configured on this control plane: set NEBULA_RABBITMQ_MANAGEMENT_URL"}),
        )
    })
}

/// Exactly one of `device_group` (a name) and `apps` (a list of names); fields other than
/// those and `other_fields` are refused.
pub(super) fn scope(object: &Map<String, Value>, other_fields: &[&str]) -> Result<Scope> {
    let unknown: Vec<String> = object
        .keys()
        .filter(|key| {
            !matches!(key.as_str(), "device_group" | "apps")
                && !other_fields.contains(&key.as_str())
        })
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::unknown(unknown));
    }
    let invalid = |field: &str| ApiError::invalid(vec![field.to_string()]);
    match (object.get("device_group"), object.get("apps")) {
        (Some(Value::String(group)), None) => Name::new(group.as_str())
            .map(Scope::DeviceGroup)
            .map_err(|_| ApiError::invalid_name(group)),
        (None, Some(Value::Array(apps))) if !apps.is_empty() => {
            let mut names = Vec::with_capacity(apps.len());
            for app in apps {
                let text = app.as_str().ok_or_else(|| invalid("apps"))?;
                let name = Name::new(text).map_err(|_| ApiError::invalid_name(text))?;
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            Ok(Scope::Apps(names))
        }
        (Some(_), None) => Err(invalid("device_group")),
        (None, Some(_)) => Err(invalid("apps")),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            json!({"missing_parameters": true, "error": "give exactly one of device_group (a name) and apps (a non-empty list of names)"}),
        )),
    }
}

pub(super) fn credential_error(error: CredentialError) -> ApiError {
    match error {
        CredentialError::Service(error) => error.into(),
        error @ CredentialError::AlreadyHasOne(_) => {
            ApiError::new(StatusCode::CONFLICT, json!({"error": error.to_string()}))
        }
        error @ (CredentialError::Broker(_)
        | CredentialError::Random(_)
        | CredentialError::DeviceUrl(_)) => {
            tracing::error!(error = %error, "device credential not changed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": error.to_string()}),
            )
        }
    }
}
