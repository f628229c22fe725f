//! Authorization: every authenticated route needs exactly one permission, declared where the
//! route is registered (`api::api_routes`, `guarded(routes!(handler), Need::…)`) and checked
//! here before its handler runs — handlers never check by hand, so none can forget to.
//! A route registered without a guard is caught by the route × role test
//! (`tests/permissions.rs`), which expects every route to refuse someone.

use super::AppState;
use super::errors::ApiError;
use crate::auth::{Permission, Principal};
use crate::users::Access;
use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::UtoipaMethodRouter;

/// What a route needs, before its object's name (the route's one path parameter) is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any authenticated caller.
    Authenticated,
    App(Access),
    Apps,
    DeviceGroup(Access),
    DeviceGroups,
    CronJob(Access),
    CronJobs,
    Prune,
    Devices,
    Reports,
    Admin,
}

impl Need {
    /// The permission for the object `name` (the route's path parameter; empty for routes
    /// without one).
    pub fn permission(self, name: &str) -> Permission<'_> {
        match self {
            Self::Authenticated => Permission::Status,
            Self::App(Access::Ro) => Permission::ReadApp(name),
            Self::App(Access::Rw) => Permission::WriteApp(name),
            Self::Apps => Permission::ListApps,
            Self::DeviceGroup(Access::Ro) => Permission::ReadDeviceGroup(name),
            Self::DeviceGroup(Access::Rw) => Permission::WriteDeviceGroup(name),
            Self::DeviceGroups => Permission::ListDeviceGroups,
            Self::CronJob(Access::Ro) => Permission::ReadCronJob(name),
            Self::CronJob(Access::Rw) => Permission::WriteCronJob(name),
            Self::CronJobs => Permission::ListCronJobs,
            Self::Prune => Permission::Prune,
            Self::Devices => Permission::ListDevices,
            Self::Reports => Permission::ListReports,
            Self::Admin => Permission::Admin,
        }
    }
}

pub const READ: Access = Access::Ro;
pub const WRITE: Access = Access::Rw;

/// The route, answering `403 {"access_allowed": false}` to a caller without `need`.
pub fn guarded(route: UtoipaMethodRouter<AppState>, need: Need) -> UtoipaMethodRouter<AppState> {
    let (schemas, paths, method_router) = route;
    let method_router = method_router.route_layer(axum::middleware::from_fn(
        move |request: Request, next: Next| check(need, request, next),
    ));
    (schemas, paths, method_router)
}

/// The object a request names: our routes have at most one path parameter, its name, taken
/// raw (a name that is not valid is no one's object, and its handler answers 400).
pub async fn object_name(parts: &mut axum::http::request::Parts) -> Option<String> {
    RawPathParams::from_request_parts(parts, &())
        .await
        .ok()
        .and_then(|params| params.iter().next().map(|(_, value)| value.to_string()))
}

async fn check(need: Need, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let name = object_name(&mut parts).await.unwrap_or_default();
    let allowed = parts
        .extensions
        .get::<Principal>()
        .is_some_and(|principal| principal.allows(&need.permission(&name)));
    if !allowed {
        return ApiError::forbidden().into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}
