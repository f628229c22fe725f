//! `nebula rollout status <app|group> [--watch]`: did a change reach the fleet
//! (`GET /api/v2/apps/<a>/status`, `/api/v2/device_groups/<g>/status`).

use super::Context;
use crate::args::RolloutCommand;
use crate::client::RequestError;
use crate::error::{CliError, Subject};
use crate::output::{OutputFormat, Table, cell};
use serde_json::Value;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Width of the progress bar, in characters.
const BAR_WIDTH: usize = 30;

/// Which status endpoint NAME is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    App,
    Group,
}

pub fn run(context: &mut Context<'_>, command: RolloutCommand) -> Result<(), CliError> {
    let RolloutCommand::Status {
        name,
        app,
        group,
        watch,
        timeout,
        interval,
    } = command;
    let name = name.to_string();
    let kind = match (app, group) {
        (true, _) => Kind::App,
        (_, true) => Kind::Group,
        _ => resolve(context, &name)?,
    };
    if !(interval.is_finite() && interval > 0.0) {
        return Err(CliError::Usage(format!(
            "--interval {interval}: give a number of seconds above 0"
        )));
    }
    let started = Instant::now();
    let terminal =
        std::io::stdout().is_terminal() && context.settings.output == OutputFormat::Table;
    let mut last_line = String::new();
    loop {
        let document = fetch(context, kind, &name)?;
        let done = document["done"].as_bool().unwrap_or(true);
        if !watch || done {
            if watch && context.settings.output == OutputFormat::Table {
                finish_progress(context, &document, terminal, &mut last_line)?;
            }
            context.print(&document, table)?;
            return outcome(&document);
        }
        if context.settings.output == OutputFormat::Table {
            let line = progress(&document);
            if terminal {
                write!(context.stdout, "\r{line}\x1b[K")?;
                context.stdout.flush()?;
            } else if line != last_line {
                writeln!(context.stdout, "{line}")?;
            }
            last_line = line;
        }
        if let Some(limit) = timeout
            && started.elapsed() >= Duration::from_secs(limit)
        {
            if terminal {
                writeln!(context.stdout)?;
            }
            context.print(&document, table)?;
            let standing = if document["total"].as_u64() == Some(0) {
                "no device has reported for it".to_string()
            } else {
                format!(
                    "{} behind ({} of them offline)",
                    cell(&document["behind"]),
                    cell(&document["offline"])
                )
            };
            return Err(CliError::Failure(format!(
                "the rollout of {name} was not done within {limit} s: {standing}"
            )));
        }
        std::thread::sleep(Duration::from_secs_f64(interval));
    }
}

fn path(kind: Kind, name: &str) -> String {
    match kind {
        Kind::App => format!("/apps/{name}/status"),
        Kind::Group => format!("/device_groups/{name}/status"),
    }
}

fn subject(kind: Kind, name: &str) -> Subject {
    match kind {
        Kind::App => Subject::App(name.to_string()),
        Kind::Group => Subject::Group(name.to_string()),
    }
}

fn fetch(context: &Context<'_>, kind: Kind, name: &str) -> Result<Value, CliError> {
    context.check(context.client.get(&path(kind, name)), &subject(kind, name))
}

/// Whether a 403 says "no such app" (or group): then NAME is the other kind.
fn is_missing(result: &Result<Value, RequestError>, key: &str) -> bool {
    matches!(result, Err(RequestError::Status { status: 403, body, .. })
        if body.get(key).and_then(Value::as_bool) == Some(false))
}

/// NAME is a group or an app; both existing is ambiguous.
fn resolve(context: &Context<'_>, name: &str) -> Result<Kind, CliError> {
    let group = context.client.get(&path(Kind::Group, name));
    let app = context.client.get(&path(Kind::App, name));
    match (
        is_missing(&group, "device_group_exists"),
        is_missing(&app, "app_exists"),
    ) {
        (false, false) if group.is_ok() && app.is_ok() => Err(CliError::Usage(format!(
            "both an app and a device group are named {name}: pass --app or --group"
        ))),
        (true, true) => Err(CliError::NotFound(format!(
            "no app or device group is named {name} (`nebula apps list`, `nebula groups list`)"
        ))),
        (false, _) => {
            context.check(group, &subject(Kind::Group, name))?;
            Ok(Kind::Group)
        }
        (true, false) => {
            context.check(app, &subject(Kind::App, name))?;
            Ok(Kind::App)
        }
    }
}

/// `[##########----------] 1/2 current, 1 behind (0 offline), 0 failed`
pub fn progress(document: &Value) -> String {
    let count = |key: &str| document[key].as_u64().unwrap_or(0);
    let (total, current, failed) = (count("total"), count("current"), count("failed"));
    if total == 0 {
        // Not done (the control plane says so): --watch waits for the first device to
        // report, until --timeout if one was given.
        return format!(
            "[{}] no device has reported for it yet",
            "-".repeat(BAR_WIDTH)
        );
    }
    let finished = usize::try_from(current + failed).unwrap_or(usize::MAX);
    let total_width = usize::try_from(total).unwrap_or(usize::MAX).max(1);
    let filled = (finished.min(total_width) * BAR_WIDTH) / total_width;
    format!(
        "[{}{}] {current}/{total} current, {} behind ({} offline), {failed} failed",
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled),
        count("behind"),
        count("offline"),
    )
}

fn finish_progress(
    context: &mut Context<'_>,
    document: &Value,
    terminal: bool,
    last_line: &mut String,
) -> Result<(), CliError> {
    let line = progress(document);
    if terminal {
        writeln!(context.stdout, "\r{line}\x1b[K")?;
    } else if line != *last_line {
        writeln!(context.stdout, "{line}")?;
    }
    *last_line = line;
    Ok(())
}

/// Exit code 1 when a device failed: scripts gate the next step on it.
fn outcome(document: &Value) -> Result<(), CliError> {
    let failed: Vec<String> = document["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|device| device["state"] == "failed")
        .map(|device| {
            format!(
                "{} ({})",
                cell(&device["device_id"]),
                errors(device).join("; ")
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failure(format!(
            "{} device(s) failed: {}",
            failed.len(),
            failed.join(", ")
        )))
    }
}

/// A device's errors of the rollout, `app: error` each.
fn errors(device: &Value) -> Vec<String> {
    device["errors"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(app, error)| format!("{app}: {}", cell(error)))
        .collect()
}

fn table(document: &Value) -> Table {
    let mut table = Table::new(&["DEVICE", "STATE", "ONLINE", "REVISION", "ERROR"]);
    table = table.row(vec![
        format!("{} {}", cell(&document["kind"]), cell(&document["name"])),
        format!(
            "{}/{} current",
            cell(&document["current"]),
            cell(&document["total"])
        ),
        String::new(),
        format!("revision {}", cell(&document["revision"])),
        String::new(),
    ]);
    for device in document["devices"].as_array().into_iter().flatten() {
        let errors = errors(device);
        table = table.row(vec![
            cell(&device["device_id"]),
            cell(&device["state"]),
            cell(&device["online"]),
            format!(
                "{}/{}",
                cell(&device["applied_revision"]),
                cell(&device["desired_revision"])
            ),
            if errors.is_empty() {
                "-".to_string()
            } else {
                errors.join("; ")
            },
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_progress_bar_fills_with_finished_devices() {
        let document = json!({"total": 4, "current": 1, "behind": 2, "failed": 1, "offline": 1});
        let line = progress(&document);
        assert!(
            line.starts_with(&format!("[{}{}]", "#".repeat(15), "-".repeat(15))),
            "{line}"
        );
        assert!(
            line.ends_with("1/4 current, 2 behind (1 offline), 1 failed"),
            "{line}"
        );
        let empty = progress(&json!({"total": 0, "current": 0, "behind": 0, "failed": 0}));
        assert_eq!(
            empty,
            format!(
                "[{}] no device has reported for it yet",
                "-".repeat(BAR_WIDTH)
            )
        );
    }

    #[test]
    fn a_failed_device_fails_the_command() {
        assert!(outcome(&json!({"devices": [{"device_id": "a", "state": "current"}]})).is_ok());
        let error = outcome(&json!({"devices": [
            {"device_id": "a", "state": "failed", "errors": {"web": "pull failed"}}
        ]}))
        .expect_err("failed");
        assert_eq!(error.exit_code(), crate::error::ExitCode::Failure);
        assert!(
            error.to_string().contains("a (web: pull failed)"),
            "{error}"
        );
    }
}
