//! `nebula devices …`: the device inventory (`GET /api/v2/devices`, `/devices/<id>`), and
//! devices' own broker logins (`POST`/`DELETE /api/v2/devices/<id>/credentials`).

use super::Context;
use crate::args::DevicesCommand;
use crate::error::{CliError, Subject};
use crate::output::{Table, cell};
use serde_json::{Value, json};

pub fn run(context: &mut Context<'_>, command: DevicesCommand) -> Result<(), CliError> {
    match command {
        DevicesCommand::List {
            group,
            app,
            online,
            offline,
            limit,
            after,
            all,
        } => {
            let mut query = vec![format!("limit={limit}")];
            if let Some(group) = group {
                query.push(format!("device_group={group}"));
            }
            if let Some(app) = app {
                query.push(format!("app={app}"));
            }
            if online || offline {
                query.push(format!("online={online}"));
            }
            // Names are validated (`Name`): no escaping needed in the query.
            let mut after = after.map(|after| after.to_string());
            let mut devices = Vec::new();
            let next = loop {
                let mut page_query = query.clone();
                if let Some(after) = &after {
                    page_query.push(format!("after={after}"));
                }
                let page = context.check(
                    context
                        .client
                        .get(&format!("/devices?{}", page_query.join("&"))),
                    &Subject::None,
                )?;
                devices.extend(page["devices"].as_array().cloned().unwrap_or_default());
                let next = page["next"].as_str().map(str::to_string);
                match next {
                    Some(next) if all => after = Some(next),
                    next => break next,
                }
            };
            let document = json!({"devices": devices, "next": next});
            context.print(&document, list_table)
        }
        DevicesCommand::Get { device } => {
            let subject = Subject::Device(device.to_string());
            let document =
                context.check(context.client.get(&format!("/devices/{device}")), &subject)?;
            context.print(&document, device_table)
        }
        DevicesCommand::Credential {
            device,
            group,
            apps,
        } => {
            let scope = match group {
                Some(group) => json!({"device_group": group}),
                None => json!({"apps": apps}),
            };
            let document = context.check(
                context
                    .client
                    .post(&format!("/devices/{device}/credentials"), &scope),
                &Subject::None,
            )?;
            context.print(&document, |document| {
                Table::new(&["DEVICE", "AMQP URL (its NEBULA_AMQP_URL; shown only now)"]).row(vec![
                    cell(&document["device_id"]),
                    cell(&document["amqp_url"]),
                ])
            })
        }
        DevicesCommand::Revoke { device } => {
            let document = context.check(
                context
                    .client
                    .delete(&format!("/devices/{device}/credentials")),
                &Subject::None,
            )?;
            context.print(&document, |document| {
                Table::new(&["DEVICE", "HAD A CREDENTIAL"]).row(vec![
                    cell(&document["device_id"]),
                    cell(&document["had_credential"]),
                ])
            })
        }
    }
}

/// `web 3/3 current` per app: applied/desired revision and where it stands.
fn app_summary(app: &Value) -> String {
    format!(
        "{} {}/{} {}",
        cell(&app["app_name"]),
        cell(&app["applied_revision"]),
        cell(&app["desired_revision"]),
        cell(&app["rollout"])
    )
}

fn list_table(document: &Value) -> Table {
    let mut table = Table::new(&["DEVICE", "ONLINE", "GROUP", "AGENT", "LAST SEEN", "APPS"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64());
    for device in document["devices"].as_array().into_iter().flatten() {
        let seen = device["last_seen"]
            .as_f64()
            .map_or_else(|| "-".to_string(), |seen| age(now - seen));
        let apps: Vec<String> = device["apps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(app_summary)
            .collect();
        table = table.row(vec![
            cell(&device["device_id"]),
            cell(&device["online"]),
            cell(&device["device_group"]),
            cell(&device["agent_version"]),
            seen,
            if apps.is_empty() {
                "-".to_string()
            } else {
                apps.join(", ")
            },
        ]);
    }
    if let Some(next) = document["next"].as_str() {
        table = table.row(vec![format!("(more: --after {next}, or --all)")]);
    }
    table
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn age(seconds: f64) -> String {
    let seconds = seconds.max(0.0) as u64;
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86_400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

fn device_table(document: &Value) -> Table {
    let mut table = Table::new(&["FIELD", "VALUE"]);
    for key in [
        "device_id",
        "hostname",
        "online",
        "mode",
        "device_group",
        "device_group_id",
        "configured_apps",
        "agent_version",
        "target",
        "os",
        "kernel",
        "docker_version",
        "uptime_secs",
        "report_interval_secs",
        "updated",
    ] {
        table = table.row(vec![key.to_string(), cell(&document[key])]);
    }
    for app in document["apps"].as_array().into_iter().flatten() {
        table = table.row(vec![
            format!("app {}", cell(&app["app_name"])),
            app_summary(app),
        ]);
        if let Some(error) = app["error"].as_str() {
            table = table.row(vec!["  error".to_string(), error.to_string()]);
        }
        for container in app["containers"].as_array().into_iter().flatten() {
            table = table.row(vec![
                format!("  {}", cell(&container["name"])),
                format!(
                    "{} {} health={} restarts={}",
                    cell(&container["image"]),
                    cell(&container["state"]),
                    cell(&container["health"]),
                    cell(&container["restart_count"])
                ),
            ]);
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(age(-3.0), "0s ago");
        assert_eq!(age(59.9), "59s ago");
        assert_eq!(age(60.0), "1m ago");
        assert_eq!(age(7200.0), "2h ago");
        assert_eq!(age(200_000.0), "2d ago");
    }

    #[test]
    fn the_list_table_shows_each_app_against_its_revision() {
        let document = json!({"devices": [{
            "device_id": "pi-1", "online": true, "device_group": "edge", "agent_version": "0.1.0",
            "last_seen": 0.0,
            "apps": [{"app_name": "web", "applied_revision": 2, "desired_revision": 3, "rollout": "behind"}]
        }], "next": "pi-1"});
        let table = list_table(&document);
        assert_eq!(table.rows[0][0], "pi-1");
        assert_eq!(table.rows[0][1], "true");
        assert_eq!(table.rows[0][5], "web 2/3 behind");
        assert!(table.rows[1][0].contains("--after pi-1"), "{table:?}");
    }
}
