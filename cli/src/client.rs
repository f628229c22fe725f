//! The HTTP client: one blocking request per call to the control plane's `/api/v2`, JSON in
//! and out. It knows nothing about apps or groups; [`crate::error`] turns a failed answer into
//! a message and an exit code.

use crate::config::{Auth, Settings};
use serde_json::Value;
use std::time::Duration;

/// How long connecting may take: a control plane on the LAN answers in milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole request may take. A write is answered only after the broker confirmed
/// its publish, which takes seconds on a large fleet (README, Performance).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got no 2xx answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("no answer from {url} within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { url: String },
    /// The control plane answered with a status outside 2xx and (normally) a JSON body.
    #[error("{method} {path} answered HTTP {status}: {body}")]
    Status {
        method: String,
        path: String,
        status: u16,
        body: Value,
    },
}

/// A client of one control plane with one set of credentials.
#[derive(Debug)]
pub struct Client {
    http: reqwest::blocking::Client,
    /// `http://host:port/api/v2`.
    api: String,
    auth: Auth,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Self, RequestError> {
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("nebula-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_file {
            // Only the given authorities, as `curl --cacert`: a fleet's own CA is pinned.
            let unusable = |reason: String| RequestError::Unreachable {
                url: settings.url.clone(),
                reason: format!("CA file {}: {reason}", path.display()),
            };
            let pem = std::fs::read(path).map_err(|error| unusable(error.to_string()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|error| unusable(root_cause(&error)))?;
            if certificates.is_empty() {
                return Err(unusable(
                    "no certificate (-----BEGIN CERTIFICATE-----) in it".into(),
                ));
            }
            builder = builder.tls_built_in_root_certs(false);
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().map_err(|error| RequestError::Unreachable {
            url: settings.url.clone(),
            reason: format!("cannot set up the HTTP client: {}", root_cause(&error)),
        })?;
        Ok(Self {
            http,
            api: format!("{}/api/v2", settings.url),
            auth: settings.auth.clone(),
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, RequestError> {
        self.call(reqwest::Method::GET, path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, RequestError> {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    pub fn patch(&self, path: &str, body: &Value) -> Result<Value, RequestError> {
        self.call(reqwest::Method::PATCH, path, Some(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Value, RequestError> {
        self.call(reqwest::Method::PUT, path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<Value, RequestError> {
        self.call(reqwest::Method::DELETE, path, None)
    }

    /// `path` below `/api/v2`, starting with `/`. Names in it are validated
    /// ([`nebula_protocol::Name`]), so they need no escaping.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, RequestError> {
        let url = format!("{}{path}", self.api);
        let mut request = self.http.request(method.clone(), &url);
        request = match &self.auth {
            Auth::None => request,
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
            Auth::Bearer(token) => request.bearer_auth(token),
        };
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().map_err(|error| {
            if error.is_timeout() {
                RequestError::Timeout { url: url.clone() }
            } else {
                RequestError::Unreachable {
                    url: url.clone(),
                    reason: root_cause(&error),
                }
            }
        })?;
        let status = response.status().as_u16();
        let text = response.text().map_err(|error| RequestError::Unreachable {
            url: url.clone(),
            reason: format!("the answer broke off: {}", root_cause(&error)),
        })?;
        // Every answer of the control plane is JSON; anything else (a proxy's HTML error
        // page) is kept as a string so that the message can show it.
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(RequestError::Status {
                method: method.to_string(),
                path: path.to_string(),
                status,
                body,
            })
        }
    }
}

/// The innermost cause of an error: reqwest's own message ("error sending request for
/// url ...") does not say what happened, its root cause does ("Connection refused").
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
