//! What went wrong, in words that say what to fix, and the exit code scripts test for.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the control plane is unreachable, timed out, or failed (5xx, unexpected answer) |
//! | 2 | usage: bad flags, bad configuration, or a request the control plane rejected as invalid (400) |
//! | 3 | not found: the app, device group, device, token, user or user group does not exist |
//! | 4 | unauthorized (401) or forbidden (403 `access_allowed: false`) |
//! | 5 | already exists, or the object's state forbids it (restart of a stopped app) |
//!
//! 2 is clap's code for usage errors; bad configuration shares it, because for a CLI both
//! mean "fix how you called me" (the daemons' 64 is for supervisors, which do not read
//! messages).

use crate::client::RequestError;
use crate::config::ConfigError;
use serde_json::Value;

/// The object a command acts on, so that an answer like `{"app_exists": false}` can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    None,
    App(String),
    Group(String),
    Device(String),
    User(String),
    UserGroup(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Failure = 1,
    Usage = 2,
    NotFound = 3,
    Unauthorized = 4,
    Conflict = 5,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach {url}: {reason}; is the control plane running? set --url or NEBULA_URL")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Failure(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Conflict(String),
    /// stdout went away (`nebula apps list | head -1`): nothing to say, nobody to say it to.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Config(_) | Self::Usage(_) => ExitCode::Usage,
            Self::Unreachable { .. } | Self::Failure(_) | Self::Output(_) => ExitCode::Failure,
            Self::NotFound(_) => ExitCode::NotFound,
            Self::Unauthorized(_) => ExitCode::Unauthorized,
            Self::Conflict(_) => ExitCode::Conflict,
        }
    }

    /// Turns a failed request into the error for the user; `subject` names the object the
    /// command is about, `url` the control plane (for the messages).
    pub fn from_request(error: RequestError, subject: &Subject, url: &str) -> Self {
        match error {
            RequestError::Unreachable { url, reason } => Self::Unreachable { url, reason },
            RequestError::Timeout { url } => Self::Failure(format!(
                "no answer from {url} within 60 s: the control plane or its broker may be overloaded; its log says more"
            )),
            RequestError::Status {
                method,
                path,
                status,
                body,
            } => classify(status, &body, subject, url, &format!("{method} {path}")),
        }
    }
}

fn flag(body: &Value, key: &str) -> Option<bool> {
    body.get(key).and_then(Value::as_bool)
}

fn quoted_list(value: &Value) -> String {
    match value.as_array() {
        Some(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map_or_else(|| item.to_string(), ToString::to_string)
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => value.to_string(),
    }
}

/// The meaning of a non-2xx answer of the v2 API (shared/API.md): the original API says
/// "not found" and "already exists" with 403 and a boolean key, so the key decides, not the
/// status alone.
pub fn classify(
    status: u16,
    body: &Value,
    subject: &Subject,
    url: &str,
    request: &str,
) -> CliError {
    let (app, group) = match subject {
        Subject::App(name) => (Some(name.as_str()), None),
        Subject::Group(name) => (None, Some(name.as_str())),
        Subject::None | Subject::Device(_) | Subject::User(_) | Subject::UserGroup(_) => {
            (None, None)
        }
    };
    if status == 401 {
        return CliError::Unauthorized(format!(
            "{url} refused the credentials (HTTP 401): set -u/--user and -p/--password \
             (NEBULA_USER, NEBULA_PASSWORD) or NEBULA_TOKEN, or put them in the config file"
        ));
    }
    if flag(body, "too_many_failed_logins") == Some(true) {
        let seconds = body
            .get("retry_after_secs")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        return CliError::Unauthorized(format!(
            "{url} refuses this address for {seconds} s after too many failed logins (HTTP 429): \
             check the credentials, then try again"
        ));
    }
    if flag(body, "access_allowed") == Some(false) {
        return CliError::Unauthorized(format!(
            "not allowed (HTTP 403 on {request}): this user lacks the permission; an admin can \
             grant it through the user group's apps, device_groups or pruning_allowed \
             (e.g. `nebula user-groups update <group> --app NAME=rw`)"
        ));
    }
    match flag(body, "app_exists") {
        Some(false) => {
            return CliError::NotFound(match app {
                Some(app) => {
                    format!("app {app} does not exist (`nebula apps list` shows the apps)")
                }
                None => "an app named in --apps does not exist (`nebula apps list` shows the apps)"
                    .to_string(),
            });
        }
        Some(true) => {
            let app = app.unwrap_or("<app>");
            return CliError::Conflict(format!(
                "app {app} already exists: change it with `nebula apps update {app}` or delete it first"
            ));
        }
        None => {}
    }
    match flag(body, "device_group_exists") {
        Some(false) => {
            let group = group.unwrap_or("<group>");
            return CliError::NotFound(format!(
                "device group {group} does not exist (`nebula groups list` shows the groups)"
            ));
        }
        Some(true) => {
            let group = group.unwrap_or("<group>");
            return CliError::Conflict(format!(
                "device group {group} already exists: change it with `nebula groups update {group}` or delete it first"
            ));
        }
        None => {}
    }
    if let Some(exists) = flag(body, "user_exists") {
        let user = match subject {
            Subject::User(user) => user.as_str(),
            _ => "<user>",
        };
        return if exists {
            CliError::Conflict(format!(
                "user {user} already exists: `nebula users refresh {user}` gives it a new \
                     token, or delete it first"
            ))
        } else {
            CliError::NotFound(format!(
                "user {user} does not exist (`nebula users list` shows the users)"
            ))
        };
    }
    if let Some(exists) = flag(body, "user_group_exists") {
        let group = match subject {
            Subject::UserGroup(group) => group.as_str(),
            _ => "<user group>",
        };
        return if exists {
            CliError::Conflict(format!(
                "user group {group} already exists: change it with \
                     `nebula user-groups update {group}` or delete it first"
            ))
        } else {
            CliError::NotFound(format!(
                "user group {group} does not exist (`nebula user-groups list` shows them)"
            ))
        };
    }
    if flag(body, "device_exists") == Some(false) {
        let device = match subject {
            Subject::Device(device) => device.as_str(),
            _ => "<device>",
        };
        return CliError::NotFound(format!(
            "device {device} has not reported (or was not seen for the expiry): `nebula devices list` shows the devices"
        ));
    }
    if flag(body, "token_exists") == Some(false) {
        return CliError::NotFound(
            "no such provisioning token (`nebula tokens list` shows them)".to_string(),
        );
    }
    if flag(body, "running_before_restart") == Some(false) {
        let app = app.unwrap_or("<app>");
        return CliError::Conflict(format!(
            "app {app} is stopped and restart only restarts a running app: use `nebula apps start {app}`"
        ));
    }
    if let Some(missing) = body.get("missing_parameters") {
        return CliError::Usage(if missing.as_bool() == Some(true) {
            format!(
                "the control plane could not read the request body of {request} (HTTP {status})"
            )
        } else {
            let fields = quoted_list(missing);
            let hint = if fields.contains("docker_image") {
                " (set --image, or docker_image in --file)"
            } else {
                ""
            };
            format!("missing {fields}{hint}")
        });
    }
    if let Some(fields) = body.get("unknown_parameters") {
        return CliError::Usage(format!(
            "unknown fields: {} (the fields of an app are in shared/API.md; check --file)",
            quoted_list(fields)
        ));
    }
    if let Some(fields) = body.get("invalid_parameters") {
        return CliError::Usage(format!("fields of the wrong type: {}", quoted_list(fields)));
    }
    if let Some(name) = body.get("invalid_name") {
        return CliError::Usage(format!(
            "invalid name {name}: 1-64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"
        ));
    }
    if let Some(problem) = body.get("starting_ports").and_then(Value::as_str) {
        return CliError::Usage(format!(
            "invalid --port: {problem} (a port is 1-65535, as CONTAINER or HOST:CONTAINER)"
        ));
    }
    if let Some(key) = ["apps_is_list", "cron_jobs_is_list"]
        .into_iter()
        .find(|key| flag(body, key) == Some(false))
    {
        return CliError::Usage(format!("{key} is false: the value must be a list of names"));
    }
    if status == 413 {
        return CliError::Usage(format!("the request body is too large (HTTP 413): {body}"));
    }
    if status == 404 {
        return CliError::Failure(format!(
            "{url} does not serve {request} (HTTP 404): is --url the control plane's address, \
             and does its version have this endpoint?"
        ));
    }
    if (400..500).contains(&status) {
        return CliError::Usage(format!("{request} was rejected (HTTP {status}): {body}"));
    }
    CliError::Failure(format!(
        "{request} failed on the control plane (HTTP {status}): {body}; its log says more"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const URL: &str = "http://cp:8080";

    fn code(status: u16, body: Value, subject: &Subject) -> (ExitCode, String) {
        let error = classify(status, &body, subject, URL, "POST /apps/web");
        (error.exit_code(), error.to_string())
    }

    #[test]
    fn every_answer_of_the_api_maps_to_its_exit_code() {
        let app = Subject::App("web".into());
        let group = Subject::Group("floor".into());
        let cases = [
            (
                401,
                json!({"authenticated": false}),
                &Subject::None,
                ExitCode::Unauthorized,
            ),
            (
                403,
                json!({"access_allowed": false}),
                &app,
                ExitCode::Unauthorized,
            ),
            (
                429,
                json!({"too_many_failed_logins": true, "retry_after_secs": 4}),
                &app,
                ExitCode::Unauthorized,
            ),
            (403, json!({"app_exists": false}), &app, ExitCode::NotFound),
            (
                403,
                json!({"app_exists": false}),
                &group,
                ExitCode::NotFound,
            ),
            (403, json!({"app_exists": true}), &app, ExitCode::Conflict),
            (
                403,
                json!({"device_group_exists": false}),
                &group,
                ExitCode::NotFound,
            ),
            (
                403,
                json!({"device_group_exists": true}),
                &group,
                ExitCode::Conflict,
            ),
            (
                403,
                json!({"running_before_restart": false}),
                &app,
                ExitCode::Conflict,
            ),
            (
                403,
                json!({"user_exists": false}),
                &Subject::User("ann".into()),
                ExitCode::NotFound,
            ),
            (
                403,
                json!({"user_exists": true}),
                &Subject::User("ann".into()),
                ExitCode::Conflict,
            ),
            (
                403,
                json!({"user_group_exists": false}),
                &Subject::UserGroup("ops".into()),
                ExitCode::NotFound,
            ),
            (
                403,
                json!({"user_group_exists": true}),
                &Subject::UserGroup("ops".into()),
                ExitCode::Conflict,
            ),
            (
                400,
                json!({"missing_parameters": ["docker_image"]}),
                &app,
                ExitCode::Usage,
            ),
            (
                400,
                json!({"missing_parameters": true}),
                &app,
                ExitCode::Usage,
            ),
            (
                400,
                json!({"unknown_parameters": ["colour"]}),
                &app,
                ExitCode::Usage,
            ),
            (
                400,
                json!({"invalid_parameters": ["running"]}),
                &app,
                ExitCode::Usage,
            ),
            (400, json!({"invalid_name": "-x"}), &app, ExitCode::Usage),
            (
                400,
                json!({"starting_ports": "invalid port"}),
                &app,
                ExitCode::Usage,
            ),
            (
                403,
                json!({"starting_ports": "can only be a list containing integers or dicts"}),
                &app,
                ExitCode::Usage,
            ),
            (400, json!({"apps_is_list": false}), &group, ExitCode::Usage),
            (
                413,
                json!({"payload_too_large": true}),
                &app,
                ExitCode::Usage,
            ),
            (404, json!({"not_found": true}), &app, ExitCode::Failure),
            (
                503,
                json!({"error": "broker unavailable"}),
                &app,
                ExitCode::Failure,
            ),
            (500, Value::String("<html>".into()), &app, ExitCode::Failure),
        ];
        for (status, body, subject, expected) in cases {
            let (actual, message) = code(status, body.clone(), subject);
            assert_eq!(actual, expected, "{status} {body}: {message}");
        }
    }

    #[test]
    fn messages_say_what_to_fix() {
        let app = Subject::App("web".into());
        let (_, message) = code(403, json!({"app_exists": false}), &app);
        assert!(message.contains("app web does not exist"), "{message}");
        let (_, message) = code(403, json!({"app_exists": true}), &app);
        assert!(message.contains("nebula apps update web"), "{message}");
        let (_, message) = code(400, json!({"missing_parameters": ["docker_image"]}), &app);
        assert!(message.contains("--image"), "{message}");
        let (_, message) = code(401, json!({}), &Subject::None);
        assert!(
            message.contains("NEBULA_USER") && message.contains(URL),
            "{message}"
        );
        let (_, message) = code(403, json!({"running_before_restart": false}), &app);
        assert!(message.contains("nebula apps start web"), "{message}");
        let user = Subject::User("ann".into());
        let (_, message) = code(403, json!({"user_exists": false}), &user);
        assert!(message.contains("user ann does not exist"), "{message}");
        let (_, message) = code(403, json!({"user_exists": true}), &user);
        assert!(message.contains("user ann already exists"), "{message}");
        let user_group = Subject::UserGroup("ops".into());
        let (_, message) = code(403, json!({"user_group_exists": false}), &user_group);
        assert!(
            message.contains("user group ops does not exist"),
            "{message}"
        );
        let (_, message) = code(403, json!({"user_group_exists": true}), &user_group);
        assert!(
            message.contains("nebula user-groups update ops"),
            "{message}"
        );
        let (_, message) = code(503, json!({"error": "broker unavailable"}), &app);
        assert!(message.contains("broker unavailable"), "{message}");
    }

    #[test]
    fn unreachable_names_the_url_and_the_fix() {
        let error = CliError::from_request(
            RequestError::Unreachable {
                url: "http://127.0.0.1:9/api/v2/apps".into(),
                reason: "connection refused".into(),
            },
            &Subject::None,
            URL,
        );
        assert_eq!(error.exit_code(), ExitCode::Failure);
        let message = error.to_string();
        assert!(
            message.contains("cannot reach http://127.0.0.1:9/api/v2/apps"),
            "{message}"
        );
        assert!(message.contains("set --url or NEBULA_URL"), "{message}");
    }

    #[test]
    fn configuration_and_usage_errors_are_code_2() {
        assert_eq!(
            CliError::from(ConfigError::MissingUser).exit_code(),
            ExitCode::Usage
        );
        assert_eq!(CliError::Usage("x".into()).exit_code(), ExitCode::Usage);
        assert_eq!(ExitCode::Usage as u8, 2);
        assert_eq!(ExitCode::Conflict as u8, 5);
    }
}
