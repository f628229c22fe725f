//! JSON error answers. Every 4xx and 5xx carries a JSON body with the v2 keys clients test
//! for; nothing here is ever plain text.

use crate::error::StoreError;
use crate::service::ServiceError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answer: a status and its JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, body: Value) -> Self {
        Self { status, body }
    }

    /// `400 {"missing_parameters": true}`: malformed JSON, or an empty partial update.
    pub fn malformed() -> Self {
        Self::new(StatusCode::BAD_REQUEST, json!({"missing_parameters": true}))
    }

    pub fn missing(fields: &[&str]) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({"missing_parameters": fields}),
        )
    }

    pub fn unknown(fields: Vec<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({"unknown_parameters": fields}),
        )
    }

    pub fn invalid(fields: Vec<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({"invalid_parameters": fields}),
        )
    }

    pub fn invalid_name(name: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, json!({"invalid_name": name}))
    }

    pub fn invalid_port() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({"starting_ports": "invalid port"}),
        )
    }

    pub fn port_shape() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            json!({"starting_ports": "can only be a list containing integers or dicts"}),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, json!({"authenticated": false}))
    }

    /// `429`: the source is locked out after failed logins (crate::login_throttle).
    pub fn too_many_failed_logins(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"too_many_failed_logins": true, "retry_after_secs": retry_after_secs}),
        )
    }

    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, json!({"access_allowed": false}))
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, json!({"not_found": true}))
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"method_not_allowed": true}),
        )
    }

    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"payload_too_large": true, "max_bytes": super::MAX_BODY_BYTES}),
        )
    }

    pub fn unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": format!("{what} unavailable")}),
        )
    }

    /// `500`: the stored object cannot be read back. Only that object answers this; the
    /// instance and every other object keep working.
    pub fn corrupt(kind: &str, name: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": format!("the stored {kind} {name} is corrupt; see the control plane's log"), "corrupt": true}),
        )
    }

    /// `503`: the request took longer than the control plane allows.
    pub fn timed_out(seconds: f64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": format!("the request did not finish within {seconds} s"), "timed_out": true}),
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        let forbidden = |body| Self::new(StatusCode::FORBIDDEN, body);
        match error {
            ServiceError::AppNotFound(_) => forbidden(json!({"app_exists": false})),
            ServiceError::AppExists(_) => forbidden(json!({"app_exists": true})),
            ServiceError::GroupNotFound(_) => forbidden(json!({"device_group_exists": false})),
            ServiceError::GroupExists(_) => forbidden(json!({"device_group_exists": true})),
            ServiceError::CronJobNotFound(_) => forbidden(json!({"cron_job_exists": false})),
            ServiceError::CronJobExists(_) => forbidden(json!({"cron_job_exists": true})),
            ServiceError::UserNotFound(_) => forbidden(json!({"user_exists": false})),
            ServiceError::UserExists(_) => forbidden(json!({"user_exists": true})),
            ServiceError::UserGroupNotFound(_) => forbidden(json!({"user_group_exists": false})),
            ServiceError::UserGroupExists(_) => forbidden(json!({"user_group_exists": true})),
            // Said plainly: a client choosing its own token must choose another.
            ServiceError::TokenTaken => Self::new(
                StatusCode::BAD_REQUEST,
                json!({"invalid_parameters": ["token"], "error": "choose another token"}),
            ),
            ServiceError::Secret(error) => {
                tracing::error!(error = %error, "no secret could be made answering a request");
                Self::unavailable("randomness")
            }
            ServiceError::NotRunning(_) => forbidden(json!({"running_before_restart": false})),
            ServiceError::Store(StoreError::Corrupt { kind, name, .. }) => {
                Self::corrupt(kind, &name)
            }
            ServiceError::Store(error) => {
                tracing::error!(error = %error, "store error answering a request");
                Self::unavailable("store")
            }
            ServiceError::Amqp(error) => {
                tracing::error!(error = %error, "broker error answering a request");
                Self::unavailable("broker")
            }
            // Both mean the instance is stopping before the outcome was known.
            ServiceError::Rejected | ServiceError::Interrupted => {
                tracing::error!(error = %error, "write interrupted answering a request");
                Self::unavailable("control plane")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}
