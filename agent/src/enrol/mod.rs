//! Enrolment at first boot (issue 16): a device given `NEBULA_PROVISIONING_TOKEN` and
//! `NEBULA_CONTROL_PLANE_URL` exchanges the token once for its own broker credential
//! (`POST /api/v2/devices/<id>/enrol`) and keeps it in its state dir (`credential.json`, mode
//! 0600). From then on — every later start, the token still set or not — the kept credential
//! gives the broker URL and what the device follows, in place of `NEBULA_AMQP_URL` and
//! `NEBULA_DEVICE_GROUP`/`NEBULA_APPS` ([`Enrolled`] is the environment the agent then reads
//! its configuration from).
//!
//! Runs in `main` before the rest of the configuration, blocking: nothing else can start
//! without a credential. An unreachable control plane or a 5xx is waited out (backoff up to
//! `NEBULA_MAX_BACKOFF_SECS`); a refusal (token wrong, expired or used up, device already
//! enrolled) is a configuration error (exit 64) that says what to do.

pub mod http;

use crate::config::{self, Environment, HostIdentity};
use crate::error::ConfigError;
use crate::state::file::write_private;
use crate::tls::{self, TlsSettings};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The kept credential, in the state dir.
pub const CREDENTIAL_FILE: &str = "credential.json";
/// This device's enrolment id while it enrols (random, made before the first request and kept
/// across retries and restarts): repeating the enrolment with it gets the credential again if
/// an answer was lost. Removed once the credential is kept.
pub const ENROLMENT_ID_FILE: &str = "enrolment-id";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What enrolment gave the device: the control plane's answer, kept as it came.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub device_id: String,
    /// `NEBULA_AMQP_URL` with the device's own login in it.
    pub amqp_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<String>>,
    /// The control plane's public key, pinned: changes must be signed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
}

impl std::fmt::Debug for Credential {
    // The URL holds the password.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Credential")
            .field("device_id", &self.device_id)
            .field("device_group", &self.device_group)
            .field("apps", &self.apps)
            .field("signing_key", &self.signing_key)
            .finish_non_exhaustive()
    }
}

/// The environment with an enrolled device's credential in place of the broker URL and the
/// scope; the base environment unchanged without one.
#[derive(Debug)]
pub struct Enrolled<E> {
    base: E,
    credential: Option<Credential>,
}

impl<E: Environment> Environment for Enrolled<E> {
    fn get(&self, key: &str) -> Option<String> {
        let Some(credential) = &self.credential else {
            return self.base.get(key);
        };
        match key {
            "NEBULA_AMQP_URL" => Some(credential.amqp_url.clone()),
            "NEBULA_DEVICE_GROUP" => credential.device_group.clone(),
            "NEBULA_APPS" => credential.apps.as_ref().map(|apps| apps.join(",")),
            // Pinned at enrolment: an environment variable cannot unpin it.
            "NEBULA_SIGNING_KEY" if credential.signing_key.is_some() => {
                credential.signing_key.clone()
            }
            // The older names of the scope would otherwise add a second one.
            "DEVICE_GROUP" | "APP_NAME" => None,
            _ => self.base.get(key),
        }
    }
}

impl<E> Enrolled<E> {
    /// Whether the agent runs with an enrolled credential.
    pub fn credential(&self) -> Option<&Credential> {
        self.credential.as_ref()
    }
}

/// The environment the agent's configuration is read from: `base`, with the kept credential
/// if the device has one, after enrolling with `NEBULA_PROVISIONING_TOKEN` if it has none yet.
pub fn environment<E: Environment>(
    base: E,
    host: &HostIdentity,
) -> Result<Enrolled<E>, ConfigError> {
    let value = |key: &str| base.get(key).filter(|value| !value.trim().is_empty());
    let path = config::state_dir(&base).join(CREDENTIAL_FILE);
    let token = value("NEBULA_PROVISIONING_TOKEN");
    let credential = match read_credential(&path)? {
        Some(credential) => {
            if token.is_some() {
                tracing::info!(path = %path.display(), "already enrolled: NEBULA_PROVISIONING_TOKEN is not used and can be removed");
            }
            Some(credential)
        }
        None => match token {
            None => None,
            Some(token) => Some(enrol(&base, host, token.trim(), &path)?),
        },
    };
    let Some(credential) = credential else {
        return Ok(Enrolled {
            base,
            credential: None,
        });
    };
    let device_id = config::device_id(&base, host)?;
    if credential.device_id != device_id.as_str() {
        return Err(invalid(
            "NEBULA_DEVICE_ID",
            format!(
                "{device_id}, but {} holds device {}'s credential: set NEBULA_DEVICE_ID back, or delete the file (and have an admin revoke the old device) to enrol again",
                path.display(),
                credential.device_id
            ),
        ));
    }
    // An MQTT-only build is MQTT by default.
    let mqtt = value("NEBULA_TRANSPORT").map_or(!cfg!(feature = "amqp"), |transport| {
        transport.trim() == "mqtt"
    });
    if mqtt {
        return Err(invalid(
            "NEBULA_TRANSPORT",
            "mqtt, but this device is enrolled with an AMQP credential (enrolment does not make MQTT credentials yet)".into(),
        ));
    }
    for variable in [
        "NEBULA_AMQP_URL",
        "NEBULA_DEVICE_GROUP",
        "NEBULA_APPS",
        "DEVICE_GROUP",
        "APP_NAME",
    ] {
        if value(variable).is_some() {
            tracing::warn!(
                variable,
                "ignored: this device is enrolled, and its credential says which broker and what it follows"
            );
        }
    }
    Ok(Enrolled {
        base,
        credential: Some(credential),
    })
}

/// The kept credential, if there is one.
fn read_credential(path: &Path) -> Result<Option<Credential>, ConfigError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(invalid(
                "NEBULA_STATE_DIR",
                format!("cannot read {}: {error}", path.display()),
            ));
        }
    };
    // Never moved aside and re-enrolled like a corrupt state file: the control plane refuses
    // a second enrolment of a device, so an admin has to look at it anyway.
    serde_json::from_slice(&bytes).map(Some).map_err(|error| {
        invalid(
            "NEBULA_STATE_DIR",
            format!(
                "{} is not a credential ({error}): restore it, or delete it and have an admin revoke this device to enrol again",
                path.display()
            ),
        )
    })
}

/// Exchanges `token` for the device's credential and keeps it at `path`.
fn enrol(
    base: &impl Environment,
    host: &HostIdentity,
    token: &str,
    path: &Path,
) -> Result<Credential, ConfigError> {
    let value = |key: &str| base.get(key).filter(|value| !value.trim().is_empty());
    let url = value("NEBULA_CONTROL_PLANE_URL").ok_or_else(|| {
        invalid(
            "NEBULA_CONTROL_PLANE_URL",
            "not set, but NEBULA_PROVISIONING_TOKEN is: enrolment needs the control plane's URL"
                .into(),
        )
    })?;
    let control_plane =
        http::BaseUrl::parse(&url).map_err(|reason| invalid("NEBULA_CONTROL_PLANE_URL", reason))?;
    if control_plane.secure && !cfg!(feature = "tls") {
        return Err(invalid(
            "NEBULA_CONTROL_PLANE_URL",
            "https://, but this agent was built without TLS (the `tls` feature); the release builds have it".into(),
        ));
    }
    if !control_plane.secure {
        tracing::warn!(
            control_plane = %url,
            "enrolling over plain http://: the token and the device's credential cross the network in clear, and whoever answers in the control plane's place hands the device its broker and signing key; use https:// beyond a trusted network"
        );
    }
    let tls = TlsSettings::from_env(
        value,
        &tls::CONTROL_PLANE,
        usize::from(control_plane.secure),
        1,
    )?;
    #[cfg(feature = "tls")]
    let tls = tls.config;
    #[cfg(not(feature = "tls"))]
    let tls: http::Tls = {
        let _ = tls;
        None
    };
    let device_id = config::device_id(base, host)?;
    let directory = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let enrolment_id = enrolment_id(&directory.join(ENROLMENT_ID_FILE)).map_err(|error| {
        invalid(
            "NEBULA_STATE_DIR",
            format!(
                "cannot keep the enrolment id in {}: {error}",
                directory.display()
            ),
        )
    })?;
    let request = serde_json::to_vec(&serde_json::json!({
        "provisioning_token": token,
        "enrolment_id": enrolment_id,
    }))
    .map_err(|error| invalid("NEBULA_PROVISIONING_TOKEN", error.to_string()))?;
    let endpoint = format!("/api/v2/devices/{device_id}/enrol");
    let max_backoff = value("NEBULA_MAX_BACKOFF_SECS")
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map_or(
            Duration::from_secs(config::DEFAULT_MAX_BACKOFF_SECS),
            Duration::from_secs,
        );
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(1), max_backoff);
    tracing::info!(device = %device_id, control_plane = %url, "enrolling with the provisioning token");
    loop {
        let outcome = http::post_json(&control_plane, &endpoint, &request, &tls, REQUEST_TIMEOUT);
        let retry = match outcome {
            Ok(response) if response.status == 200 => {
                // Checked before it is kept (a bad one would stop every later start), and
                // kept before the enrolment id goes: until then a failure here is retried,
                // and the repeat (same id) gets the credential again.
                match answer(&response.body, &device_id)
                    .and_then(|credential| keep(path, credential))
                {
                    Ok(credential) => {
                        // Done with: a later enrolment (after a revocation) gets a new id.
                        let _ = std::fs::remove_file(directory.join(ENROLMENT_ID_FILE));
                        tracing::info!(device = %device_id, path = %path.display(), signed_changes = credential.signing_key.is_some(), "enrolled: the device's own credential is kept in the state dir");
                        return Ok(credential);
                    }
                    Err(problem) => problem,
                }
            }
            Ok(response) if response.status == 429 || response.status >= 500 => {
                format!(
                    "the control plane answered {}: {}",
                    response.status,
                    message(&response.body)
                )
            }
            Ok(response) => {
                return Err(invalid(
                    "NEBULA_PROVISIONING_TOKEN",
                    format!(
                        "the control plane refused the enrolment ({}: {}){}",
                        response.status,
                        message(&response.body),
                        match response.status {
                            401 => ": ask an admin for a new token",
                            409 =>
                                ": an admin revokes the device's credential (nebula devices revoke), then it can enrol again",
                            404 => ": is NEBULA_CONTROL_PLANE_URL the control plane's?",
                            _ => "",
                        }
                    ),
                ));
            }
            Err(error) => error,
        };
        let wait = backoff.next_delay();
        tracing::warn!(error = %retry, retry_in_secs = wait.as_secs_f64(), "enrolment failed; trying again");
        std::thread::sleep(wait);
    }
}

/// The enrolment answer, checked: this device's, a broker URL, exactly one of a group and a
/// non-empty list of apps (valid names), and a signing key that parses if there is one.
fn answer(body: &[u8], device_id: &nebula_protocol::Name) -> Result<Credential, String> {
    let credential: Credential = serde_json::from_slice(body)
        .map_err(|error| format!("the control plane's answer is not an enrolment: {error}"))?;
    if credential.device_id != device_id.as_str() {
        return Err(format!(
            "the control plane enrolled device {}",
            credential.device_id
        ));
    }
    if !(credential.amqp_url.starts_with("amqp://") || credential.amqp_url.starts_with("amqps://"))
    {
        return Err("the enrolment answer's amqp_url is not an AMQP URL".into());
    }
    let valid = |name: &String| nebula_protocol::Name::new(name.as_str()).is_ok();
    match (&credential.device_group, &credential.apps) {
        (Some(group), None) if valid(group) => {}
        (None, Some(apps)) if !apps.is_empty() && apps.iter().all(valid) => {}
        _ => return Err("the enrolment answer has no valid group or apps".into()),
    }
    if let Some(key) = &credential.signing_key {
        nebula_protocol::signing::parse_public_key(key)
            .map_err(|reason| format!("the enrolment answer's signing_key: {reason}"))?;
    }
    Ok(credential)
}

/// Keeps the credential at `path`.
fn keep(path: &Path, credential: Credential) -> Result<Credential, String> {
    write_credential(path, &credential)
        .map(|()| credential)
        .map_err(|error| format!("cannot keep the credential in {}: {error}", path.display()))
}

/// The device's enrolment id: the one kept at `path`, or a new one (32 random bytes, hex) kept
/// there before it is ever sent.
fn enrolment_id(path: &Path) -> std::io::Result<String> {
    if let Ok(kept) = std::fs::read_to_string(path) {
        let kept = kept.trim();
        if kept.len() == 64 && kept.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Ok(kept.to_string());
        }
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("no random bytes from the operating system"))?;
    let id: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    write_private(path, id.as_bytes())?;
    Ok(id)
}

/// The `error` of a JSON error answer, or the body itself (shortened).
fn message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            value
                .get("error")
                .and_then(|error| error.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

/// Writes the credential atomically and durably, mode 0600 (it holds the device's password).
fn write_credential(path: &Path, credential: &Credential) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(credential).map_err(std::io::Error::other)?;
    write_private(path, &bytes)
}

fn invalid(variable: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { variable, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    fn host() -> HostIdentity {
        HostIdentity::default()
    }

    fn credential(device: &str) -> Credential {
        Credential {
            device_id: device.into(),
            amqp_url: "amqp://nebula-device-pi:secret@broker:5672/%2f".into(),
            device_group: Some("edge".into()),
            apps: None,
            signing_key: None,
        }
    }

    fn base(state: &Path, pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut environment: HashMap<String, String> = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        environment.insert("NEBULA_STATE_DIR".into(), state.display().to_string());
        environment
    }

    #[test]
    fn without_a_token_or_a_kept_credential_the_environment_is_unchanged() {
        let state = tempfile::tempdir().expect("tempdir");
        let environment = environment(
            base(
                state.path(),
                &[("NEBULA_AMQP_URL", "amqp://a"), ("DEVICE_GROUP", "g")],
            ),
            &host(),
        )
        .expect("environment");
        assert!(environment.credential().is_none());
        assert_eq!(
            environment.get("NEBULA_AMQP_URL").as_deref(),
            Some("amqp://a")
        );
        assert_eq!(environment.get("DEVICE_GROUP").as_deref(), Some("g"));
    }

    #[test]
    fn a_kept_credential_replaces_the_broker_url_and_the_scope() {
        let state = tempfile::tempdir().expect("tempdir");
        let path = state.path().join(CREDENTIAL_FILE);
        write_credential(&path, &credential("pi")).expect("write");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let environment = environment(
            base(
                state.path(),
                &[
                    ("NEBULA_DEVICE_ID", "pi"),
                    ("NEBULA_AMQP_URL", "amqp://guest:guest@elsewhere"),
                    ("NEBULA_APPS", "web"),
                    ("APP_NAME", "web"),
                    ("NEBULA_PROVISIONING_TOKEN", "spent"),
                    ("NEBULA_LOG_FORMAT", "json"),
                ],
            ),
            &host(),
        )
        .expect("environment");
        assert_eq!(
            environment.get("NEBULA_AMQP_URL").as_deref(),
            Some("amqp://nebula-device-pi:secret@broker:5672/%2f")
        );
        assert_eq!(
            environment.get("NEBULA_DEVICE_GROUP").as_deref(),
            Some("edge")
        );
        assert_eq!(environment.get("NEBULA_APPS"), None);
        assert_eq!(environment.get("APP_NAME"), None);
        assert_eq!(
            environment.get("NEBULA_LOG_FORMAT").as_deref(),
            Some("json")
        );
        let config = crate::config::Config::from_env(&environment, &host()).expect("config");
        assert_eq!(config.mode_label(), "group edge");
        assert!(
            !format!("{environment:?}").contains("secret"),
            "{environment:?}"
        );
    }

    #[test]
    fn an_apps_credential_gives_app_mode() {
        let state = tempfile::tempdir().expect("tempdir");
        let mut apps = credential("pi");
        apps.device_group = None;
        apps.apps = Some(vec!["web".into(), "api".into()]);
        write_credential(&state.path().join(CREDENTIAL_FILE), &apps).expect("write");
        let environment = environment(base(state.path(), &[("NEBULA_DEVICE_ID", "pi")]), &host())
            .expect("environment");
        let config = crate::config::Config::from_env(&environment, &host()).expect("config");
        assert_eq!(config.mode_label(), "apps web,api");
    }

    #[test]
    fn another_devices_or_a_damaged_credential_stops_the_agent_with_what_to_do() {
        let state = tempfile::tempdir().expect("tempdir");
        let path = state.path().join(CREDENTIAL_FILE);
        write_credential(&path, &credential("pi")).expect("write");
        let error = environment(
            base(state.path(), &[("NEBULA_DEVICE_ID", "other")]),
            &host(),
        )
        .expect_err("another device's");
        assert!(
            error.to_string().contains("holds device pi's credential"),
            "{error}"
        );
        let error = environment(
            base(
                state.path(),
                &[("NEBULA_DEVICE_ID", "pi"), ("NEBULA_TRANSPORT", "mqtt")],
            ),
            &host(),
        )
        .expect_err("mqtt");
        assert!(error.to_string().contains("AMQP credential"), "{error}");
        std::fs::write(&path, b"{\"device_id\":").expect("write");
        let error = environment(base(state.path(), &[("NEBULA_DEVICE_ID", "pi")]), &host())
            .expect_err("damaged");
        assert!(error.to_string().contains("is not a credential"), "{error}");
    }

    #[test]
    fn a_token_without_the_control_planes_url_is_a_configuration_error() {
        let state = tempfile::tempdir().expect("tempdir");
        for (pairs, variable) in [
            (
                vec![("NEBULA_PROVISIONING_TOKEN", "t")],
                "NEBULA_CONTROL_PLANE_URL",
            ),
            (
                vec![
                    ("NEBULA_PROVISIONING_TOKEN", "t"),
                    ("NEBULA_CONTROL_PLANE_URL", "ftp://x"),
                ],
                "NEBULA_CONTROL_PLANE_URL",
            ),
        ] {
            let mut pairs = pairs;
            pairs.push(("NEBULA_DEVICE_ID", "pi"));
            match environment(base(state.path(), &pairs), &host()) {
                Err(ConfigError::Invalid { variable: got, .. }) => assert_eq!(got, variable),
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }

    fn answer(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn an_agent_without_tls_refuses_an_https_control_plane_at_start() {
        let state = tempfile::tempdir().expect("tempdir");
        let pairs = [
            ("NEBULA_DEVICE_ID", "pi"),
            ("NEBULA_PROVISIONING_TOKEN", "t"),
            ("NEBULA_CONTROL_PLANE_URL", "https://127.0.0.1:1"),
        ];
        match environment(base(state.path(), &pairs), &host()) {
            Err(ConfigError::Invalid { variable, reason }) => {
                assert_eq!(variable, "NEBULA_CONTROL_PLANE_URL");
                assert!(reason.contains("without TLS"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A control plane stand-in answering each connection with the next of `answers`; what
    /// each request said comes back from the thread.
    fn serve(answers: Vec<String>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let thread = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut stream, _) = listener.accept().expect("accept");
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.ends_with(b"}") {
                    let read = stream.read(&mut buffer).expect("read");
                    if read == 0 {
                        break;
                    }
                    request.extend_from_slice(&buffer[..read]);
                }
                requests.push(String::from_utf8(request).expect("text"));
                stream.write_all(answer.as_bytes()).expect("write");
            }
            requests
        });
        (port, thread)
    }

    #[test]
    fn a_device_enrols_once_through_a_passing_outage_and_keeps_its_credential() {
        let state = tempfile::tempdir().expect("tempdir");
        let (port, server) = serve(vec![
            answer(
                "503 Service Unavailable",
                r#"{"error":"store unavailable"}"#,
            ),
            // Enrolled, but an answer that cannot be kept: retried (not kept, not fatal).
            answer(
                "200 OK",
                r#"{"device_id":"pi","amqp_url":"amqp://nebula-device-pi:pw@127.0.0.1:5672/%2f","device_group":"edge","signing_key":""}"#,
            ),
            answer(
                "200 OK",
                r#"{"device_id":"pi","amqp_url":"amqp://nebula-device-pi:pw@127.0.0.1:5672/%2f","device_group":"edge"}"#,
            ),
        ]);
        let pairs = [
            ("NEBULA_DEVICE_ID", "pi"),
            ("NEBULA_PROVISIONING_TOKEN", " 0123.abcd\n"),
            ("NEBULA_MAX_BACKOFF_SECS", "1"),
        ];
        let mut environment_of = base(state.path(), &pairs);
        environment_of.insert(
            "NEBULA_CONTROL_PLANE_URL".into(),
            format!("http://127.0.0.1:{port}"),
        );
        let enrolled = environment(environment_of.clone(), &host()).expect("enrolled");
        assert_eq!(enrolled.get("NEBULA_DEVICE_GROUP").as_deref(), Some("edge"));
        let requests = server.join().expect("server");
        assert_eq!(requests.len(), 3, "{requests:?}");
        assert!(
            requests[1].starts_with("POST /api/v2/devices/pi/enrol HTTP/1.1"),
            "{}",
            requests[1]
        );
        // The same enrolment id in every attempt (kept in the state dir before the first),
        // gone once the credential is kept.
        let bodies: Vec<serde_json::Value> = requests
            .iter()
            .map(|request| {
                let body = request.split("\r\n\r\n").nth(1).expect("a body");
                serde_json::from_str(body).expect("json")
            })
            .collect();
        assert_eq!(bodies[1]["provisioning_token"], "0123.abcd");
        let id = bodies[0]["enrolment_id"].as_str().expect("an enrolment id");
        assert_eq!(id.len(), 64);
        assert!(
            bodies.iter().all(|body| body["enrolment_id"] == id),
            "{bodies:?}"
        );
        assert!(!state.path().join(ENROLMENT_ID_FILE).exists());
        let path = state.path().join(CREDENTIAL_FILE);
        assert_eq!(
            std::fs::metadata(&path).expect("kept").permissions().mode() & 0o777,
            0o600
        );
        // Started again (no server any more): the kept credential, no second enrolment.
        let again = environment(environment_of, &host()).expect("kept credential");
        assert_eq!(again.credential(), enrolled.credential());
    }

    #[test]
    fn a_refused_enrolment_says_why_and_keeps_nothing() {
        let state = tempfile::tempdir().expect("tempdir");
        let (port, server) = serve(vec![answer(
            "401 Unauthorized",
            r#"{"error":"provisioning token expired"}"#,
        )]);
        let mut environment_of = base(
            state.path(),
            &[
                ("NEBULA_DEVICE_ID", "pi"),
                ("NEBULA_PROVISIONING_TOKEN", "t"),
            ],
        );
        environment_of.insert(
            "NEBULA_CONTROL_PLANE_URL".into(),
            format!("http://127.0.0.1:{port}"),
        );
        let error = environment(environment_of, &host()).expect_err("refused");
        let text = error.to_string();
        assert!(text.contains("401: provisioning token expired"), "{text}");
        assert!(text.contains("new token"), "{text}");
        server.join().expect("server");
        assert!(!state.path().join(CREDENTIAL_FILE).exists());
    }
}
