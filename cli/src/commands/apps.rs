//! `nebula apps …`: the app endpoints of shared/API.md, and the app fields as flags.

use super::Context;
use crate::args::{AppFields, AppsCommand};
use crate::error::{CliError, Subject};
use crate::output::Table;
use nebula_protocol::ContainersPer;
use serde_json::{Map, Value, json};
use std::io::Read;

pub fn run(context: &mut Context<'_>, command: AppsCommand) -> Result<(), CliError> {
    match command {
        AppsCommand::List => {
            let document = context.check(context.client.get("/apps"), &Subject::None)?;
            context.print(&document, |document| Table::names("APP", &document["apps"]))
        }
        AppsCommand::Get { name } => {
            let subject = Subject::App(name.to_string());
            let document = context.check(context.client.get(&format!("/apps/{name}")), &subject)?;
            context.print(&document, Table::fields)
        }
        AppsCommand::Create { name, fields } => {
            let body = Value::Object(body(&fields, context.stdin)?);
            let subject = Subject::App(name.to_string());
            let document = context.check(
                context.client.post(&format!("/apps/{name}"), &body),
                &subject,
            )?;
            context.print(&document, Table::fields)
        }
        AppsCommand::Update {
            name,
            fields,
            replace,
        } => {
            let body = body(&fields, context.stdin)?;
            let path = format!("/apps/{name}/update");
            let subject = Subject::App(name.to_string());
            // POST is the full update of the v2 API (omitted fields reset to defaults);
            // PATCH changes only the fields given.
            let result = if replace {
                context.client.post(&path, &Value::Object(body))
            } else if body.is_empty() {
                return Err(CliError::Usage(format!(
                    "nothing to change: give a field flag (--image, --port, --env, ...) or --file \
                     (`nebula apps update --help` lists them); `nebula apps get {name}` shows the app"
                )));
            } else {
                context.client.patch(&path, &Value::Object(body))
            };
            let document = context.check(result, &subject)?;
            context.print(&document, Table::fields)
        }
        AppsCommand::Delete { name } => {
            let subject = Subject::App(name.to_string());
            let document =
                context.check(context.client.delete(&format!("/apps/{name}")), &subject)?;
            context.print(&document, |_| Table::message(format!("deleted app {name}")))
        }
        AppsCommand::Stop { name } => action(context, name.as_ref(), "stop"),
        AppsCommand::Start { name } => action(context, name.as_ref(), "start"),
        AppsCommand::Restart { name } => action(context, name.as_ref(), "restart"),
    }
}

fn action(context: &mut Context<'_>, name: &str, action: &str) -> Result<(), CliError> {
    let subject = Subject::App(name.to_string());
    let document = context.check(
        context
            .client
            .post(&format!("/apps/{name}/{action}"), &json!({})),
        &subject,
    )?;
    context.print(&document, Table::fields)
}

/// The request body for the given flags: the `--file` document (if any) with each flag that
/// was given written over it. Only given fields are in it, so it serves create (defaults for
/// the rest), a partial update and, with `--replace`, a full one.
pub fn body(fields: &AppFields, stdin: &mut dyn Read) -> Result<Map<String, Value>, CliError> {
    let mut body = match &fields.file {
        None => Map::new(),
        Some(path) => read_document(path, stdin)?,
    };
    let mut set = |key: &str, value: Value| {
        body.insert(key.to_string(), value);
    };
    if let Some(image) = &fields.image {
        set("docker_image", json!(image));
    }
    if let Some(ports) = list(&fields.ports) {
        set(
            "starting_ports",
            Value::Array(
                ports
                    .iter()
                    .map(|port| port_value(port))
                    .collect::<Result<_, _>>()?,
            ),
        );
    }
    if let Some(variables) = list(&fields.env) {
        let mut map = Map::new();
        for variable in variables {
            let (key, value) = variable
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("--env {variable:?} must be KEY=VALUE")))?;
            if key.is_empty() {
                return Err(CliError::Usage(format!("--env {variable:?} has no key")));
            }
            map.insert(key.to_string(), json!(value));
        }
        set("env_vars", Value::Object(map));
    }
    if let Some(text) = &fields.containers_per {
        set("containers_per", containers_per(text)?);
    }
    for (key, values) in [
        ("networks", &fields.networks),
        ("volumes", &fields.volumes),
        ("devices", &fields.devices),
    ] {
        if let Some(values) = list(values) {
            set(key, json!(values));
        }
    }
    for (key, value) in [
        ("privileged", fields.privileged),
        ("rolling_restart", fields.rolling_restart),
        ("running", fields.running),
    ] {
        if let Some(value) = value {
            set(key, json!(value));
        }
    }
    Ok(body)
}

/// A repeated flag: `None` when not given; empty values dropped, so `--network ''` alone
/// is an empty list.
fn list(values: &[String]) -> Option<Vec<&String>> {
    (!values.is_empty()).then(|| values.iter().filter(|value| !value.is_empty()).collect())
}

/// `8080` → `8080` (same host port); `8081:8000` → `{"8081": "8000"}` (host: container).
fn port_value(text: &str) -> Result<Value, CliError> {
    let port = |part: &str| {
        part.parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--port {text:?}: {part:?} is not a port (1-65535); use CONTAINER or HOST:CONTAINER"
                ))
            })
    };
    match text.split_once(':') {
        None => Ok(json!(port(text)?)),
        Some((host, container)) => {
            let (host, container) = (port(host)?, port(container)?);
            Ok(json!({ host.to_string(): container.to_string() }))
        }
    }
}

/// `server=2` → `{"server": 2}`; the kinds and limits are the protocol's.
fn containers_per(text: &str) -> Result<Value, CliError> {
    let usage = |why: String| {
        CliError::Usage(format!(
            "--containers-per {text:?}: {why}; use server=N, instance=N, cpu=N, memory=MB or mem=MB"
        ))
    };
    let (key, count) = text
        .split_once('=')
        .ok_or_else(|| usage("no '='".to_string()))?;
    let count: u32 = count
        .parse()
        .map_err(|_| usage(format!("{count:?} is not a whole number")))?;
    let kind = ContainersPer::from_key(key, count)
        .ok_or_else(|| usage(format!("unknown kind {key:?}")))?;
    kind.validate().map_err(|error| usage(error.to_string()))?;
    Ok(json!({ key: count }))
}

/// A JSON object from a file, or from stdin for `-`.
fn read_document(
    path: &std::path::Path,
    stdin: &mut dyn Read,
) -> Result<Map<String, Value>, CliError> {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        stdin
            .read_to_string(&mut text)
            .map_err(|error| CliError::Usage(format!("--file -: cannot read stdin: {error}")))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|error| CliError::Usage(format!("--file {}: {error}", path.display())))?
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(CliError::Usage(format!(
            "--file {}: must hold a JSON object (an app document)",
            path.display()
        ))),
        Err(error) => Err(CliError::Usage(format!(
            "--file {}: not valid JSON: {error}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn build(fields: &AppFields) -> Result<Value, CliError> {
        body(fields, &mut std::io::empty()).map(Value::Object)
    }

    #[test]
    fn only_given_flags_are_sent() {
        assert_eq!(build(&AppFields::default()).expect("empty"), json!({}));
        let fields = AppFields {
            image: Some("nginx:1".into()),
            running: Some(false),
            ..AppFields::default()
        };
        assert_eq!(
            build(&fields).expect("body"),
            json!({"docker_image": "nginx:1", "running": false})
        );
    }

    #[test]
    fn every_flag_becomes_its_api_field() {
        let fields = AppFields {
            image: Some("127.0.0.1:5000/nebula/test:1".into()),
            ports: vec!["8081:8000".into(), "9000".into()],
            env: vec!["A=1".into(), "B=x=y".into(), "EMPTY=".into()],
            containers_per: Some("cpu=2".into()),
            networks: vec!["nebula".into()],
            volumes: vec!["/data:/data:ro".into()],
            devices: vec!["/dev/ttyUSB0:/dev/ttyUSB0".into()],
            privileged: Some(true),
            rolling_restart: Some(true),
            running: Some(true),
            file: None,
        };
        assert_eq!(
            build(&fields).expect("body"),
            json!({
                "docker_image": "127.0.0.1:5000/nebula/test:1",
                "starting_ports": [{"8081": "8000"}, 9000],
                "env_vars": {"A": "1", "B": "x=y", "EMPTY": ""},
                "containers_per": {"cpu": 2},
                "networks": ["nebula"],
                "volumes": ["/data:/data:ro"],
                "devices": ["/dev/ttyUSB0:/dev/ttyUSB0"],
                "privileged": true,
                "rolling_restart": true,
                "running": true
            })
        );
    }

    #[test]
    fn an_empty_value_sends_an_empty_list() {
        let fields = AppFields {
            networks: vec![String::new()],
            ports: vec![String::new()],
            env: vec![String::new()],
            ..AppFields::default()
        };
        assert_eq!(
            build(&fields).expect("body"),
            json!({"networks": [], "starting_ports": [], "env_vars": {}})
        );
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for fields in [
            AppFields {
                ports: vec!["0".into()],
                ..AppFields::default()
            },
            AppFields {
                ports: vec!["70000".into()],
                ..AppFields::default()
            },
            AppFields {
                ports: vec!["80:http".into()],
                ..AppFields::default()
            },
            AppFields {
                env: vec!["NOVALUE".into()],
                ..AppFields::default()
            },
            AppFields {
                env: vec!["=x".into()],
                ..AppFields::default()
            },
            AppFields {
                containers_per: Some("gpu=1".into()),
                ..AppFields::default()
            },
            AppFields {
                containers_per: Some("server=0".into()),
                ..AppFields::default()
            },
            AppFields {
                containers_per: Some("server".into()),
                ..AppFields::default()
            },
        ] {
            let error = build(&fields).expect_err(&format!("{fields:?} is invalid"));
            assert_eq!(error.exit_code(), crate::error::ExitCode::Usage, "{error}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let fields = AppFields {
            file: Some(PathBuf::from("-")),
            image: Some("new:2".into()),
            ..AppFields::default()
        };
        let mut stdin = &br#"{"docker_image": "old:1", "privileged": true}"#[..];
        let body = body(&fields, &mut stdin).expect("body");
        assert_eq!(
            Value::Object(body),
            json!({"docker_image": "new:2", "privileged": true})
        );
        let mut not_an_object = &b"[1]"[..];
        assert!(super::body(&fields, &mut not_an_object).is_err());
        let mut not_json = &b"docker_image: x"[..];
        assert!(super::body(&fields, &mut not_json).is_err());
        let missing = AppFields {
            file: Some(PathBuf::from("/nonexistent/app.json")),
            ..AppFields::default()
        };
        let error = build(&missing).expect_err("no such file");
        assert!(
            error.to_string().contains("/nonexistent/app.json"),
            "{error}"
        );
    }
}
