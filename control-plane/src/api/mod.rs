//! The REST API of `shared/API.md`, served by axum.
//!
//! Layout: [`router`] builds the routes; authentication is a middleware on `/api/v2` that
//! runs before any handler; handlers parse with [`dto`], call the [`Service`], and render
//! with [`dto`] again. Every answer, errors and unknown routes included, is JSON.
//!
//! Routes and the OpenAPI document come from one place: every handler carries a
//! `#[utoipa::path]` annotation, and [`routes`] registers handlers only through
//! `utoipa_axum::routes!`, which takes the path and methods from that annotation. A route
//! is therefore served exactly when it is documented; `tests/openapi.rs` checks it anyway,
//! and validates real answers against the document ([`openapi`]).

pub mod access;
pub mod apps;
pub mod audit;
pub mod credentials;
pub mod cron_jobs;
pub mod device_groups;
pub mod devices;
pub mod dto;
pub mod errors;
pub mod provisioning;
pub mod reports;
pub mod schema;
pub mod user_groups;
pub mod users;

use crate::auth::{self, AdminCheck, Authenticator};
use crate::metrics::Gauges;
use crate::service::Service;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use errors::ApiError;
use nebula_protocol::Name;
use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder, SecurityRequirement};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub service: Service,
    pub authenticator: Authenticator,
    /// Devices' own broker credentials; `None` without `NEBULA_RABBITMQ_MANAGEMENT_URL`.
    pub credentials: Option<std::sync::Arc<crate::service::credentials::CredentialIssuer>>,
}

/// A JSON success answer.
pub fn ok(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// Validates a name from the path.
/// A yes/no query value as v2 clients send it (Python's `True`/`False` included).
pub fn query_flag(value: &str) -> Option<bool> {
    match value {
        "true" | "True" | "1" => Some(true),
        "false" | "False" | "0" => Some(false),
        _ => None,
    }
}

pub fn path_name(raw: &str) -> Result<Name, ApiError> {
    Name::new(raw).map_err(|_| ApiError::invalid_name(raw))
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

/// `429` with `Retry-After` for a source locked out after failed logins (admin logins and
/// enrolments' provisioning tokens alike), counted.
pub fn locked_out(state: &AppState, retry_after: std::time::Duration) -> Response {
    state.service.metrics().login_throttled();
    // Whole seconds, rounded up: a client retrying right after them is let through.
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = ApiError::too_many_failed_logins(seconds).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    response
}

async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    // The peer's address, which crate::http puts on every request; a router driven without it
    // (unit tests) is not throttled.
    let source = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let authenticator = &state.authenticator;
    // The local admin first (no store involved), then the stored users.
    let principal = match authenticator.check_admin(source, header) {
        AdminCheck::Authenticated(principal) => Some(principal),
        AdminCheck::Locked { retry_after } => return locked_out(&state, retry_after),
        AdminCheck::Missing => None,
        AdminCheck::NotAdmin => {
            let given = header.unwrap_or_default();
            // From the lockout check to the count, one check at a time per source; a password
            // check's argon2 slot first (see `password_check_slot`).
            let _slot = state.service.password_check_slot(given).await;
            let _turn = authenticator.user_check_turn(source).await;
            if let Some(retry_after) = authenticator.locked_out(source) {
                return locked_out(&state, retry_after);
            }
            match state.service.authenticate_user(given).await {
                Ok(Some(principal)) => Some(principal),
                Ok(None) => {
                    failed_login(&state, source, given).await;
                    None
                }
                Err(error) => return ApiError::from(error).into_response(),
            }
        }
    };
    match principal {
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

/// Counts and logs credentials that were given and wrong (a request without any is not a
/// guess). Never the secret: the scheme, and a claimed user name only when it is a known one
/// (a token typed into the user field must not be logged).
async fn failed_login(state: &AppState, source: Option<std::net::IpAddr>, given: &str) {
    let failures = state.authenticator.count_failure(source);
    state.service.metrics().login_failed();
    let mut user = auth::claimed_user(given);
    if let Some(name) = &user
        && !state.authenticator.is_known_user(name)
        && !state.service.is_user(name).await
    {
        user = None;
    }
    tracing::warn!(
        source = %source.map_or_else(|| "unknown".to_string(), |source| source.to_string()),
        failures_in_a_row = failures.unwrap_or(0),
        scheme = auth::scheme(given),
        user = user.as_deref().unwrap_or("-"),
        "failed login"
    );
}

#[utoipa::path(
    get,
    path = "/status",
    tag = "status",
    responses((status = 200, description = "The API answers and accepts the credentials", body = schema::ApiStatus))
)]
async fn status() -> Result<Response, ApiError> {
    Ok(ok(StatusCode::OK, json!({"api_available": true})))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process is alive", body = schema::Alive))
)]
async fn healthz() -> Response {
    ok(StatusCode::OK, json!({"alive": true}))
}

/// Ready when the store and the broker answer. The detail says which store this instance
/// serves, whether it is empty, and which other stores agents asking it synced with before:
/// an instance started on an empty store next to a running fleet shows up here (and in the
/// log) as soon as one agent asks it.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Store and broker answer", body = schema::Ready),
        (status = 503, description = "The store or the broker does not answer", body = schema::Ready),
    )
)]
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

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4: counts of this process and of the fleet, no names", body = String, content_type = "text/plain"))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    let service = &state.service;
    let devices = service.device_counts().await.ok();
    let gauges = Gauges {
        devices_online: devices.map(|(online, _)| online),
        devices_offline: devices.map(|(_, offline)| offline),
        outbox_backlog: service.outbox_backlog().await.ok(),
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        service.metrics().render(&gauges),
    )
        .into_response()
}

/// Counts every routed request by its route template (never the names in the path) and
/// status, with its latency: a route layer, so that the template is known.
async fn count_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = method_label(request.method());
    let response = next.run(request).await;
    state.service.metrics().http_request(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The metrics label of a request's method. Counted before authentication, so any client
/// could otherwise make a new label set with every made-up method (`XYZ123`).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "status",
    responses((status = 200, description = "This document: OpenAPI 3.1 of every route", body = Object))
)]
async fn openapi_json() -> Result<Response, ApiError> {
    Ok((StatusCode::OK, Json(openapi())).into_response())
}

/// The authenticated routes under `/api/v2`, each registered from its annotation, one
/// handler at a time, with the one permission it needs next to it (`access`).
fn api_routes() -> OpenApiRouter<AppState> {
    use access::{Need, READ, WRITE, guarded};
    let route = |(route, need)| guarded(route, need);
    [
        (routes!(status), Need::Authenticated),
        (routes!(openapi_json), Need::Authenticated),
        (routes!(apps::list), Need::Apps),
        (routes!(apps::read), Need::App(READ)),
        (routes!(apps::create), Need::App(WRITE)),
        (routes!(apps::delete), Need::App(WRITE)),
        (routes!(apps::start), Need::App(WRITE)),
        (routes!(apps::stop), Need::App(WRITE)),
        (routes!(apps::restart), Need::App(WRITE)),
        (routes!(apps::full_update), Need::App(WRITE)),
        (routes!(apps::partial_update), Need::App(WRITE)),
        (routes!(devices::app_status), Need::App(READ)),
        (routes!(device_groups::list), Need::DeviceGroups),
        (routes!(device_groups::read), Need::DeviceGroup(READ)),
        (routes!(device_groups::create), Need::DeviceGroup(WRITE)),
        (routes!(device_groups::delete), Need::DeviceGroup(WRITE)),
        (routes!(device_groups::info), Need::DeviceGroup(READ)),
        (
            routes!(device_groups::full_update),
            Need::DeviceGroup(WRITE),
        ),
        (
            routes!(device_groups::partial_update),
            Need::DeviceGroup(WRITE),
        ),
        (routes!(device_groups::prune), Need::Prune),
        (routes!(devices::group_status), Need::DeviceGroup(READ)),
        (routes!(device_groups::prune_all), Need::Prune),
        (routes!(cron_jobs::list), Need::CronJobs),
        (routes!(cron_jobs::read), Need::CronJob(READ)),
        (routes!(cron_jobs::create), Need::CronJob(WRITE)),
        (routes!(cron_jobs::delete), Need::CronJob(WRITE)),
        (routes!(cron_jobs::full_update), Need::CronJob(WRITE)),
        (routes!(cron_jobs::partial_update), Need::CronJob(WRITE)),
        (routes!(devices::list), Need::Devices),
        (routes!(devices::read), Need::Devices),
        (routes!(reports::list), Need::Reports),
        (routes!(credentials::mint), Need::Admin),
        (routes!(credentials::revoke), Need::Admin),
        (routes!(provisioning::create), Need::Admin),
        (routes!(provisioning::list), Need::Admin),
        (routes!(provisioning::delete), Need::Admin),
        (routes!(users::list), Need::Admin),
        (routes!(users::read), Need::Admin),
        (routes!(users::create), Need::Admin),
        (routes!(users::delete), Need::Admin),
        (routes!(users::update), Need::Admin),
        (routes!(users::refresh), Need::Admin),
        (routes!(user_groups::list), Need::Admin),
        (routes!(user_groups::read), Need::Admin),
        (routes!(user_groups::create), Need::Admin),
        (routes!(user_groups::delete), Need::Admin),
        (routes!(user_groups::update), Need::Admin),
        (routes!(audit::list), Need::Admin),
    ]
    .into_iter()
    .map(route)
    .fold(OpenApiRouter::new(), OpenApiRouter::routes)
}

/// The routes under `/api/v2` that authenticate by other means than an admin login: a
/// device's enrolment carries its provisioning token.
fn device_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(provisioning::enrol))
}

/// The unauthenticated operational routes.
fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Both, as served: `/api/v2` nested.
fn routes() -> (Router<AppState>, Router<AppState>, OpenApi) {
    let (api, api_document) = OpenApiRouter::new()
        .nest("/api/v2", api_routes())
        .split_for_parts();
    let (devices, devices_document) = OpenApiRouter::new()
        .nest("/api/v2", device_routes())
        .split_for_parts();
    let (open, open_document) = open_routes().split_for_parts();
    let mut document = api_document;
    document.merge(devices_document);
    document.merge(open_document);
    (api, open.merge(devices), document)
}

/// The error bodies every authenticated operation may answer, whatever its own are.
fn error_response(description: &str, schema: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(schema)))
                    .build(),
            )
            .build(),
    )
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Nebula control plane",
        description = "The Nebula v2 REST API (shared/API.md) and its extensions: device inventory, rollout status. Names are 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit. Every answer is JSON except /metrics.",
    ),
    components(schemas(
        schema::Unauthenticated,
        schema::TooManyFailedLogins,
        schema::AccessDenied,
        schema::Corrupt,
        schema::Unavailable,
        schema::TooLarge,
        schema::NotFound,
    ))
)]
struct Components;

/// The OpenAPI 3.1 document of every route [`router`] serves, built from the same
/// annotations (once per process).
pub fn openapi() -> OpenApi {
    static DOCUMENT: std::sync::OnceLock<OpenApi> = std::sync::OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let (_, _, routes) = routes();
            let mut document = <Components as utoipa::OpenApi>::openapi();
            document.merge(routes);
            document.info.version = env!("CARGO_PKG_VERSION").to_string();
            let components = document.components.get_or_insert_with(Default::default);
            components.add_security_scheme(
                "basic",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
            );
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
            for (path, item) in document.paths.paths.iter_mut() {
                // Enrolment authenticates with the device's provisioning token instead.
                let authenticated = path.starts_with("/api/v2/") && !path.ends_with("/enrol");
                for operation in [
                    &mut item.get,
                    &mut item.put,
                    &mut item.post,
                    &mut item.delete,
                    &mut item.patch,
                ]
                .into_iter()
                .flatten()
                {
                    if !authenticated {
                        operation.security = Some(Vec::new());
                        continue;
                    }
                    operation.security = Some(vec![
                        SecurityRequirement::new("basic", Vec::<String>::new()),
                        SecurityRequirement::new("bearer", Vec::<String>::new()),
                    ]);
                    let responses = &mut operation.responses.responses;
                    for (status, description, schema) in [
                        ("401", "Missing or wrong credentials", "Unauthenticated"),
                        ("403", "Not allowed", "AccessDenied"),
                        (
                            "429",
                            "Too many failed logins from this address: try again after Retry-After seconds",
                            "TooManyFailedLogins",
                        ),
                        ("500", "A stored object cannot be read back", "Corrupt"),
                        (
                            "503",
                            "The store or the broker is unavailable, or the request timed out",
                            "Unavailable",
                        ),
                    ] {
                        responses
                            .entry(status.to_string())
                            .or_insert_with(|| error_response(description, schema));
                    }
                    if operation.request_body.is_some() {
                        responses
                            .entry("413".to_string())
                            .or_insert_with(|| error_response("Body over 1 MiB", "TooLarge"));
                        responses.entry("400".to_string()).or_insert_with(|| {
                            error_response("Not a JSON object", "MissingParameters")
                        });
                    }
                }
            }
            document
        })
        .clone()
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let (api, open, _) = routes();
    let api = api
        .method_not_allowed_fallback(method_not_allowed)
        // Inside authentication: the audit knows who.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_request,
        ));
    let open = open.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        count_request,
    ));
    Router::new()
        .merge(open)
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::method_label;
    use axum::http::Method;

    #[test]
    fn made_up_methods_share_one_metrics_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        for made_up in ["XYZ123", "PROPFIND", "get"] {
            let method = Method::from_bytes(made_up.as_bytes()).expect("a token");
            assert_eq!(method_label(&method), "other", "{made_up}");
        }
        assert_eq!(method_label(&Method::TRACE), "other");
        assert_eq!(method_label(&Method::CONNECT), "other");
    }
}
