//! `nebula groups …`: the device-group endpoints of shared/API.md.

use super::Context;
use crate::args::GroupsCommand;
use crate::error::{CliError, Subject};
use crate::output::{Table, cell};
use serde_json::{Value, json};

pub fn run(context: &mut Context<'_>, command: GroupsCommand) -> Result<(), CliError> {
    match command {
        GroupsCommand::List => {
            let document = context.check(context.client.get("/device_groups"), &Subject::None)?;
            context.print(&document, |document| {
                Table::names("DEVICE GROUP", &document["device_groups"])
            })
        }
        GroupsCommand::Get { name, info } => {
            let subject = Subject::Group(name.to_string());
            if info {
                let document = context.check(
                    context.client.get(&format!("/device_groups/{name}/info")),
                    &subject,
                )?;
                context.print(&document, info_table)
            } else {
                let document = context.check(
                    context.client.get(&format!("/device_groups/{name}")),
                    &subject,
                )?;
                context.print(&document, Table::fields)
            }
        }
        GroupsCommand::Create { name, apps } => {
            let subject = Subject::Group(name.to_string());
            let body = json!({ "apps": names(&apps) });
            let document = context.check(
                context
                    .client
                    .post(&format!("/device_groups/{name}"), &body),
                &subject,
            )?;
            context.print(&document, Table::fields)
        }
        GroupsCommand::Update { name, apps } => {
            let subject = Subject::Group(name.to_string());
            // PATCH with only `apps`: the group's cron jobs stay as they are.
            let body = json!({ "apps": names(&apps) });
            let document = context.check(
                context
                    .client
                    .patch(&format!("/device_groups/{name}/update"), &body),
                &subject,
            )?;
            context.print(&document, Table::fields)
        }
        GroupsCommand::Delete { name } => {
            let subject = Subject::Group(name.to_string());
            let document = context.check(
                context.client.delete(&format!("/device_groups/{name}")),
                &subject,
            )?;
            context.print(&document, |_| {
                Table::message(format!("deleted device group {name}"))
            })
        }
        GroupsCommand::Prune { name } => {
            let subject = Subject::Group(name.to_string());
            let document = context.check(
                context
                    .client
                    .post(&format!("/device_groups/{name}/prune"), &json!({})),
                &subject,
            )?;
            context.print(&document, Table::fields)
        }
    }
}

/// `--apps a,b` (or repeated); `--apps ''` is the empty list.
fn names(apps: &[String]) -> Vec<&str> {
    apps.iter()
        .map(|app| app.trim())
        .filter(|app| !app.is_empty())
        .collect()
}

/// The group's apps in full, one row each.
fn info_table(document: &Value) -> Table {
    let mut table = Table::new(&[
        "APP",
        "APP_ID",
        "IMAGE",
        "RUNNING",
        "PORTS",
        "CONTAINERS_PER",
    ]);
    for app in document["apps"].as_array().into_iter().flatten() {
        table = table.row(
            [
                "app_name",
                "app_id",
                "docker_image",
                "running",
                "starting_ports",
                "containers_per",
            ]
            .iter()
            .map(|key| cell(&app[*key]))
            .collect(),
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_blanks() {
        assert_eq!(names(&["a".into(), " b ".into()]), ["a", "b"]);
        assert!(names(&[String::new()]).is_empty());
    }

    #[test]
    fn info_has_a_row_per_app() {
        let table = info_table(&json!({"apps": [
            {"app_name": "web", "app_id": 2, "docker_image": "nginx:1", "running": true,
             "starting_ports": [{"8081": "80"}], "containers_per": {"server": 1}}
        ]}));
        assert_eq!(
            table.rows,
            [["web", "2", "nginx:1", "true", "8081=80", "server=1"]]
        );
    }
}
