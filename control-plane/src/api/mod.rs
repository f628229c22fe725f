//! The REST API of `shared/API.md`, served by axum.
//!
//! Layout: [`router`] builds the routes; authentication is a middleware on `/api/v2` that
//! runs before any handler; handlers parse with [`dto`], call the [`Service`], and render
//! with [`dto`] again. Every answer, errors and unknown routes included, is JSON.

pub mod apps;
pub mod device_groups;
pub mod dto;
pub mod errors;

use crate::auth::{Authenticator, Permission, Principal};
use crate::service::Service;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use errors::ApiError;
use nebula_protocol::Name;
use serde_json::{Value, json};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub service: Service,
    pub authenticator: Authenticator,
}

/// A JSON success answer.
pub fn ok(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// Validates a name from the path.
pub fn path_name(raw: &str) -> Result<Name, ApiError> {
    Name::new(raw).map_err(|_| ApiError::invalid_name(raw))
}

/// Fails with `403 {"access_allowed": false}` unless the principal may do this.
pub fn require(principal: &Principal, permission: Permission<'_>) -> Result<(), ApiError> {
    if principal.allows(&permission) {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// The raw request body, capped at [`MAX_BODY_BYTES`] with a JSON 413 past it.
#[derive(Debug)]
pub struct Body(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::body::Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::too_large())
            }
            Err(_) => Err(ApiError::malformed()),
        }
    }
}

/// A path name, validated, with a JSON answer when it is not a valid name.
#[derive(Debug)]
pub struct PathName(pub Name);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathName {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::invalid_name(""))?;
        path_name(&raw).map(Self)
    }
}

async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    match state.authenticator.authenticate(header) {
        Some(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        None => {
            let mut response = ApiError::unauthorized().into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"nebula\""),
            );
            response
        }
    }
}

async fn status(Extension(principal): Extension<Principal>) -> Result<Response, ApiError> {
    require(&principal, Permission::Status)?;
    Ok(ok(StatusCode::OK, json!({"api_available": true})))
}

async fn healthz() -> Response {
    ok(StatusCode::OK, json!({"alive": true}))
}

/// Ready when the store and the broker answer. The detail says which store this instance
/// serves, whether it is empty, and which other stores agents asking it synced with before:
/// an instance started on an empty store next to a running fleet shows up here (and in the
/// log) as soon as one agent asks it.
async fn readyz(State(state): State<AppState>) -> Response {
    let service = &state.service;
    let store = service.store().ping().await.is_ok();
    let broker = service.broker().is_connected();
    let status = if store && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let empty = if store {
        service.store_is_empty().await.ok()
    } else {
        None
    };
    let foreign: Vec<String> = service
        .foreign_stores()
        .iter()
        .map(ToString::to_string)
        .collect();
    ok(
        status,
        json!({
            "ready": store && broker,
            "store": store,
            "broker": broker,
            "store_id": service.store().identity().to_string(),
            "store_empty": empty,
            "foreign_stores": foreign,
        }),
    )
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.service.metrics().render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/apps", get(apps::list))
        .route(
            "/apps/{app}",
            get(apps::read).post(apps::create).delete(apps::delete),
        )
        .route("/apps/{app}/start", post(apps::start))
        .route("/apps/{app}/stop", post(apps::stop))
        .route("/apps/{app}/restart", post(apps::restart))
        .route(
            "/apps/{app}/update",
            post(apps::full_update)
                .put(apps::partial_update)
                .patch(apps::partial_update),
        )
        .route("/device_groups", get(device_groups::list))
        .route(
            "/device_groups/{group}",
            get(device_groups::read)
                .post(device_groups::create)
                .delete(device_groups::delete),
        )
        .route("/device_groups/{group}/info", get(device_groups::info))
        .route(
            "/device_groups/{group}/update",
            post(device_groups::full_update)
                .put(device_groups::partial_update)
                .patch(device_groups::partial_update),
        )
        .route("/device_groups/{group}/prune", post(device_groups::prune))
        .route("/prune", post(device_groups::prune_all))
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v2", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
