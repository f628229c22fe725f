//! `nebula tokens …`: provisioning tokens (`POST`/`GET /api/v2/provisioning_tokens`,
//! `DELETE /api/v2/provisioning_tokens/<id>`).

use super::Context;
use crate::args::TokensCommand;
use crate::error::{CliError, Subject};
use crate::output::{Table, cell};
use serde_json::{Value, json};

pub fn run(context: &mut Context<'_>, command: TokensCommand) -> Result<(), CliError> {
    match command {
        TokensCommand::Create {
            group,
            apps,
            uses,
            expires_in,
        } => {
            let mut body = match group {
                Some(group) => json!({"device_group": group}),
                None => json!({"apps": apps}),
            };
            body["uses"] = json!(uses);
            body["expires_in_secs"] = json!(expires_in);
            let document = context.check(
                context.client.post("/provisioning_tokens", &body),
                &Subject::None,
            )?;
            context.print(&document, |document| {
                Table::new(&[
                    "TOKEN (the devices' NEBULA_PROVISIONING_TOKEN; shown only now)",
                    "SCOPE",
                    "USES",
                ])
                .row(vec![
                    cell(&document["token"]),
                    scope(document),
                    cell(&document["uses"]),
                ])
            })
        }
        TokensCommand::List => {
            let document =
                context.check(context.client.get("/provisioning_tokens"), &Subject::None)?;
            context.print(&document, |document| {
                let mut table =
                    Table::new(&["TOKEN ID", "SCOPE", "USES LEFT", "EXPIRED", "CREATED BY"]);
                for token in document["provisioning_tokens"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    table = table.row(vec![
                        cell(&token["token_id"]),
                        scope(token),
                        format!("{}/{}", cell(&token["uses_left"]), cell(&token["uses"])),
                        cell(&token["expired"]),
                        cell(&token["created_by"]),
                    ]);
                }
                table
            })
        }
        TokensCommand::Delete { token_id } => {
            let document = context.check(
                context
                    .client
                    .delete(&format!("/provisioning_tokens/{token_id}")),
                &Subject::None,
            )?;
            context.print(&document, |document| {
                Table::new(&["TOKEN ID", "DELETED"]).row(vec![
                    cell(&document["token_id"]),
                    cell(&document["deleted"]),
                ])
            })
        }
    }
}

/// `group edge` or `apps web,api`.
fn scope(token: &Value) -> String {
    match (&token["device_group"], token["apps"].as_array()) {
        (Value::String(group), _) => format!("group {group}"),
        (_, Some(apps)) => format!(
            "apps {}",
            apps.iter().map(cell).collect::<Vec<_>>().join(",")
        ),
        _ => String::new(),
    }
}
