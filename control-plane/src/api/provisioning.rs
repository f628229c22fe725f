//! Provisioning tokens and enrolment (issue 16): `POST`/`GET /api/v2/provisioning_tokens` and
//! `DELETE /api/v2/provisioning_tokens/<id>` for admins; `POST /api/v2/devices/<id>/enrol`
//! for devices, authenticated by the token in its body instead of an admin login (a device has
//! nothing else at its first boot). The logic is `service::provisioning`.

use super::credentials::{credential_error, issuer, scope};
use super::errors::ApiError;
use super::{AppState, Body, PathName, dto, schema};
use crate::auth::Principal;
use crate::device_credentials::{self, Scope};
use crate::provisioning::{
    DEFAULT_EXPIRES_IN_SECS, DEFAULT_USES, MAX_EXPIRES_IN_SECS, MAX_USES, Refusal, TokenDocument,
};
use crate::service::provisioning::{self as service, EnrolError};
use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::net::{IpAddr, SocketAddr};
use utoipa::ToSchema;

type Result<T> = std::result::Result<T, ApiError>;

/// The body of a new token.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // The OpenAPI schema of the body; parsed by hand.
pub struct TokenRequest {
    /// Devices enrolled with it follow this device group, or
    device_group: Option<String>,
    /// these apps (exactly one of the two).
    apps: Option<Vec<String>>,
    /// Seconds it stays usable (default 86400, at most 31536000).
    expires_in_secs: Option<u64>,
    /// How many devices it may enrol (default 1, at most 1000000).
    uses: Option<u64>,
}

/// A token as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub token_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<String>>,
    /// Unix seconds.
    pub expires_at: f64,
    pub expired: bool,
    pub uses: u64,
    pub uses_left: u64,
    pub created_at: f64,
    pub created_by: String,
}

/// `200` of a new token: the only answer that ever holds it whole.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenAnswer {
    /// What devices are given as `NEBULA_PROVISIONING_TOKEN`.
    pub token: String,
    #[serde(flatten)]
    pub details: Token,
}

impl std::fmt::Debug for NewTokenAnswer {
    // Never the token.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NewTokenAnswer")
            .field("details", &self.details)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenList {
    pub provisioning_tokens: Vec<Token>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeletedToken {
    pub token_id: String,
    pub deleted: bool,
}

/// The body of an enrolment.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // The OpenAPI schema of the body; parsed by hand.
pub struct EnrolRequest {
    provisioning_token: String,
    /// The device's own random id for this enrolment (32-128 of `[A-Za-z0-9_-]`), kept across
    /// its retries: repeating the enrolment with it mints the device's credential again
    /// instead of answering 409 (the first answer was lost).
    enrolment_id: Option<String>,
}

/// `200` of an enrolment: the device's credential, and what it follows.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Enrolment {
    pub device_id: String,
    /// `NEBULA_AMQP_URL` for the device: its own login in each broker URL for devices.
    pub amqp_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<String>>,
    /// The public key the control plane signs changes with, which the agent pins; absent
    /// when changes are not signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
}

impl std::fmt::Debug for Enrolment {
    // The URL holds the device's password.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Enrolment")
            .field("device_id", &self.device_id)
            .field("device_group", &self.device_group)
            .field("apps", &self.apps)
            .finish_non_exhaustive()
    }
}

/// `404` of a delete.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoSuchToken {
    /// Always `false`.
    pub token_exists: bool,
    pub error: String,
}

/// `401` and `409` of an enrolment.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolRefused {
    /// `invalid provisioning token`, `provisioning token expired` or `provisioning token used up`.
    pub error: String,
}

#[utoipa::path(
    post,
    path = "/provisioning_tokens",
    tag = "devices",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Made; the token is shown only here", body = NewTokenAnswer),
        (status = 400, description = "Not exactly one of `device_group` and `apps`, invalid names, `expires_in_secs` or `uses` out of range, unknown fields", body = schema::BadRequest),
        (status = 403, description = "Not allowed", body = schema::AccessDenied),
        (status = 503, description = "Device credentials are not configured (`NEBULA_RABBITMQ_MANAGEMENT_URL`): no device could enrol", body = schema::Unavailable),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Body(body): Body,
) -> Result<Response> {
    let object = dto::parse_object(&body)?;
    let scope = scope(&object, &["expires_in_secs", "uses"])?;
    if let Some(ambiguous) = device_credentials::scope_ambiguous(&scope) {
        return Err(ApiError::invalid_name(ambiguous.as_str()));
    }
    let expires_in_secs = bounded(
        &object,
        "expires_in_secs",
        DEFAULT_EXPIRES_IN_SECS,
        MAX_EXPIRES_IN_SECS,
    )?;
    let uses = bounded(&object, "uses", DEFAULT_USES, MAX_USES)?;
    // A token that could enrol nobody would only mislead whoever flashes the devices.
    issuer(&state)?;
    let (token, document) = state
        .service
        .create_token(scope, expires_in_secs, uses, &principal.who())
        .await
        .map_err(credential_error)?;
    tracing::info!(token_id = %document.token_id, uses, expires_in_secs, "provisioning token made");
    let answer = NewTokenAnswer {
        token: token.text(),
        details: listed(&document, now_ms()),
    };
    Ok(no_store(super::ok(StatusCode::OK, json!(answer))))
}

#[utoipa::path(
    get,
    path = "/provisioning_tokens",
    tag = "devices",
    responses(
        (status = 200, description = "Every token not deleted, expired and used-up ones too (never their secrets)", body = TokenList),
        (status = 403, description = "Not allowed", body = schema::AccessDenied),
    )
)]
pub async fn list(State(state): State<AppState>) -> Result<Response> {
    let now = now_ms();
    let tokens = state.service.list_tokens().await?;
    let list = TokenList {
        provisioning_tokens: tokens.iter().map(|token| listed(token, now)).collect(),
    };
    Ok(super::ok(StatusCode::OK, json!(list)))
}

#[utoipa::path(
    delete,
    path = "/provisioning_tokens/{token_id}",
    tag = "devices",
    params(("token_id" = String, Path, description = "The token's id (the part before the dot)")),
    responses(
        (status = 200, description = "Deleted: it enrols nobody from now on (devices it enrolled keep their credentials)", body = DeletedToken),
        (status = 400, description = "Invalid id", body = schema::InvalidName),
        (status = 403, description = "Not allowed", body = schema::AccessDenied),
        (status = 404, description = "No such token", body = NoSuchToken),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    PathName(token_id): PathName,
) -> Result<Response> {
    if !state.service.delete_token(&token_id).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            json!({"token_exists": false, "error": format!("no provisioning token {token_id}")}),
        ));
    }
    tracing::info!(token_id = %token_id, "provisioning token deleted");
    Ok(super::ok(
        StatusCode::OK,
        json!(DeletedToken {
            token_id: token_id.to_string(),
            deleted: true
        }),
    ))
}

#[utoipa::path(
    post,
    path = "/devices/{device}/enrol",
    tag = "devices",
    params(("device" = String, Path, description = "Device id")),
    request_body = EnrolRequest,
    responses(
        (status = 200, description = "Enrolled: the device's own credential (shown only here) and what it follows", body = Enrolment),
        (status = 400, description = "No `provisioning_token`, invalid device id (also: a word `group` or `app` between its dots), unknown fields", body = schema::BadRequest),
        (status = 401, description = "The token is wrong (counted as a failed login), expired or used up", body = EnrolRefused),
        (status = 403, description = "Not used: enrolment needs no admin login", body = schema::AccessDenied),
        (status = 409, description = "The device already has a credential: an admin revokes it first", body = EnrolRefused),
        (status = 429, description = "Too many failed logins from this address: try again after Retry-After seconds", body = schema::TooManyFailedLogins),
        (status = 500, description = "The token's record cannot be read back", body = schema::Corrupt),
        (status = 503, description = "Device credentials are not configured, or the store or the broker's management API failed", body = schema::Unavailable),
    ),
    security(())
)]
pub async fn enrol(
    State(state): State<AppState>,
    Peer(source): Peer,
    PathName(device): PathName,
    Body(body): Body,
) -> Result<Response> {
    if let Some(retry_after) = state.authenticator.locked_out(source) {
        return Ok(super::locked_out(&state, retry_after));
    }
    let (token, enrolment_id) = token_of(&dto::parse_object(&body)?)?;
    // The token's scope names were checked when it was made; the device id is checked here.
    if let Some(ambiguous) = device_credentials::ambiguous(&device, &Scope::Apps(Vec::new())) {
        return Err(ApiError::invalid_name(ambiguous.as_str()));
    }
    let issuer = issuer(&state)?;
    match service::enrol(
        &state.service,
        issuer,
        &device,
        &token,
        enrolment_id.as_deref(),
    )
    .await
    {
        Ok(enrolled) => {
            tracing::info!(device = %device, "device enrolled");
            let (device_group, apps) = scope_fields(&enrolled.scope);
            let answer = Enrolment {
                device_id: device.to_string(),
                amqp_url: enrolled.amqp_url,
                device_group,
                apps,
                signing_key: issuer.signing_key.clone(),
            };
            Ok(no_store(super::ok(StatusCode::OK, json!(answer))))
        }
        Err(EnrolError::Refused(refusal)) => {
            let error = match refusal {
                Refusal::Wrong => {
                    let failures = state.authenticator.count_failure(source);
                    state.service.metrics().login_failed();
                    tracing::warn!(
                        source = %source.map_or_else(|| "unknown".to_string(), |source| source.to_string()),
                        failures_in_a_row = failures.unwrap_or(0),
                        device = %device,
                        "failed enrolment: invalid provisioning token"
                    );
                    "invalid provisioning token"
                }
                Refusal::Expired => "provisioning token expired",
                Refusal::UsedUp => "provisioning token used up",
            };
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                json!({"error": error}),
            ))
        }
        Err(EnrolError::Credential(error)) => Err(credential_error(error)),
    }
}

/// The peer's address, which `crate::http` puts on every request (`None` when driven without
/// it, in unit tests: not throttled).
#[derive(Debug)]
pub struct Peer(Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(address)| address.ip()),
        ))
    }
}

/// The fields of an enrolment's body: the token, and the optional enrolment id.
fn token_of(object: &Map<String, Value>) -> Result<(String, Option<String>)> {
    let unknown: Vec<String> = object
        .keys()
        .filter(|key| !matches!(key.as_str(), "provisioning_token" | "enrolment_id"))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::unknown(unknown));
    }
    let enrolment_id = match object.get("enrolment_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if crate::provisioning::valid_enrolment_id(id) => Some(id.clone()),
        Some(_) => return Err(ApiError::invalid(vec!["enrolment_id".into()])),
    };
    match object.get("provisioning_token") {
        Some(Value::String(token)) => Ok((token.clone(), enrolment_id)),
        Some(_) => Err(ApiError::invalid(vec!["provisioning_token".into()])),
        None => Err(ApiError::missing(&["provisioning_token"])),
    }
}

/// An optional whole number field between 1 and `max`, `default` when absent.
fn bounded(object: &Map<String, Value>, field: &str, default: u64, max: u64) -> Result<u64> {
    match object.get(field) {
        None => Ok(default),
        Some(value) => value
            .as_u64()
            .filter(|number| (1..=max).contains(number))
            .ok_or_else(|| ApiError::invalid(vec![field.to_string()])),
    }
}

fn scope_fields(scope: &Scope) -> (Option<String>, Option<Vec<String>>) {
    match scope {
        Scope::DeviceGroup(group) => (Some(group.to_string()), None),
        Scope::Apps(apps) => (None, Some(apps.iter().map(ToString::to_string).collect())),
    }
}

fn listed(document: &TokenDocument, now_ms: u64) -> Token {
    let (device_group, apps) = scope_fields(&document.scope);
    Token {
        token_id: document.token_id.clone(),
        device_group,
        apps,
        expires_at: seconds(document.expires_at_ms),
        expired: now_ms >= document.expires_at_ms,
        uses: document.uses,
        uses_left: document.uses_left,
        created_at: seconds(document.created_at_ms),
        created_by: document.created_by.clone(),
    }
}

#[allow(
    clippy::cast_precision_loss,
    reason = "Unix milliseconds fit in f64's 53 bits"
)]
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn now_ms() -> u64 {
    crate::service::credentials::now_ms()
}

/// The answer holds a secret: no cache along the way may keep it.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
