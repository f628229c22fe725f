//! `nebula user-groups …`: what users may do (`/api/v2/user_groups`, admin only), and the
//! user group fields as flags.

use super::Context;
use crate::args::{UserGroupFields, UserGroupsCommand};
use crate::error::{CliError, Subject};
use crate::output::Table;
use nebula_protocol::Name;
use serde_json::{Map, Value, json};

pub fn run(context: &mut Context<'_>, command: UserGroupsCommand) -> Result<(), CliError> {
    match command {
        UserGroupsCommand::List => {
            let document = context.check(context.client.get("/user_groups"), &Subject::None)?;
            context.print(&document, |document| {
                Table::names("USER GROUP", &document["user_groups"])
            })
        }
        UserGroupsCommand::Get { name } => {
            let subject = Subject::UserGroup(name.to_string());
            let document = context.check(
                context.client.get(&format!("/user_groups/{name}")),
                &subject,
            )?;
            context.print(&document, Table::fields)
        }
        UserGroupsCommand::Create { name, fields } => {
            let body = Value::Object(body(&fields)?);
            let subject = Subject::UserGroup(name.to_string());
            let document = context.check(
                context.client.post(&format!("/user_groups/{name}"), &body),
                &subject,
            )?;
            context.print(&document, Table::fields)
        }
        UserGroupsCommand::Update { name, fields } => {
            let body = body(&fields)?;
            if body.is_empty() {
                return Err(CliError::Usage(format!(
                    "nothing to change: give --members, --app, --group, --cron-job, --pruning or \
                     --admin (`nebula user-groups update --help`); `nebula user-groups get {name}` \
                     shows the group"
                )));
            }
            let subject = Subject::UserGroup(name.to_string());
            let document = context.check(
                context
                    .client
                    .put(&format!("/user_groups/{name}/update"), &Value::Object(body)),
                &subject,
            )?;
            context.print(&document, Table::fields)
        }
        UserGroupsCommand::Delete { name } => {
            let subject = Subject::UserGroup(name.to_string());
            let document = context.check(
                context.client.delete(&format!("/user_groups/{name}")),
                &subject,
            )?;
            context.print(&document, |_| {
                Table::message(format!("deleted user group {name}"))
            })
        }
    }
}

/// The request body for the given flags: only the fields given, so it serves create (defaults
/// for the rest) and update (the rest unchanged).
pub fn body(fields: &UserGroupFields) -> Result<Map<String, Value>, CliError> {
    let mut body = Map::new();
    if !fields.members.is_empty() {
        let members = fields
            .members
            .iter()
            .map(|member| member.trim())
            .filter(|member| !member.is_empty())
            .map(|member| name("--members", member, member))
            .collect::<Result<Vec<_>, _>>()?;
        body.insert("group_members".to_string(), json!(members));
    }
    for (key, flag, values) in [
        ("apps", "--app", &fields.apps),
        ("device_groups", "--group", &fields.device_groups),
        ("cron_jobs", "--cron-job", &fields.cron_jobs),
    ] {
        if !values.is_empty() {
            body.insert(key.to_string(), Value::Object(grants(flag, values)?));
        }
    }
    for (key, value) in [("pruning_allowed", fields.pruning), ("admin", fields.admin)] {
        if let Some(value) = value {
            body.insert(key.to_string(), json!(value));
        }
    }
    Ok(body)
}

/// `NAME=ro|rw`, repeated, as `{"NAME": "ro"|"rw"}`; a value `''` alone is the empty map.
fn grants(flag: &str, values: &[String]) -> Result<Map<String, Value>, CliError> {
    let mut map = Map::new();
    for value in values.iter().filter(|value| !value.is_empty()) {
        let usage = |why: &str| {
            CliError::Usage(format!(
                "{flag} {value:?}: {why}; use {flag} NAME=ro or NAME=rw"
            ))
        };
        let (object, access) = value.split_once('=').ok_or_else(|| usage("no '='"))?;
        if !matches!(access, "ro" | "rw") {
            return Err(usage(&format!("access {access:?} is neither ro nor rw")));
        }
        map.insert(name(flag, value, object)?, json!(access));
    }
    Ok(map)
}

/// A valid name (the control plane's rule), checked before anything is sent.
fn name(flag: &str, value: &str, name: &str) -> Result<String, CliError> {
    Name::new(name).map(|name| name.to_string()).map_err(|_| {
        CliError::Usage(format!(
            "{flag} {value:?}: invalid name {name:?}: 1-64 characters of A-Z a-z 0-9 _ . -, \
             starting with a letter or digit"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCode;

    fn build(fields: &UserGroupFields) -> Result<Value, CliError> {
        body(fields).map(Value::Object)
    }

    #[test]
    fn only_given_flags_are_sent() {
        assert_eq!(
            build(&UserGroupFields::default()).expect("empty"),
            json!({})
        );
        let fields = UserGroupFields {
            admin: Some(false),
            ..UserGroupFields::default()
        };
        assert_eq!(build(&fields).expect("body"), json!({"admin": false}));
    }

    #[test]
    fn every_flag_becomes_its_api_field() {
        let fields = UserGroupFields {
            members: vec!["ann".into(), " bob ".into()],
            apps: vec!["web=rw".into(), "api=ro".into()],
            device_groups: vec!["floor=ro".into()],
            cron_jobs: vec!["backup=rw".into()],
            pruning: Some(true),
            admin: Some(false),
        };
        assert_eq!(
            build(&fields).expect("body"),
            json!({
                "group_members": ["ann", "bob"],
                "apps": {"web": "rw", "api": "ro"},
                "device_groups": {"floor": "ro"},
                "cron_jobs": {"backup": "rw"},
                "pruning_allowed": true,
                "admin": false
            })
        );
    }

    #[test]
    fn an_empty_value_sends_an_empty_list_or_map() {
        let fields = UserGroupFields {
            members: vec![String::new()],
            apps: vec![String::new()],
            ..UserGroupFields::default()
        };
        assert_eq!(
            build(&fields).expect("body"),
            json!({"group_members": [], "apps": {}})
        );
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for fields in [
            UserGroupFields {
                apps: vec!["web".into()],
                ..UserGroupFields::default()
            },
            UserGroupFields {
                apps: vec!["web=admin".into()],
                ..UserGroupFields::default()
            },
            UserGroupFields {
                device_groups: vec!["=ro".into()],
                ..UserGroupFields::default()
            },
            UserGroupFields {
                cron_jobs: vec!["has/slash=rw".into()],
                ..UserGroupFields::default()
            },
            UserGroupFields {
                members: vec!["-ann".into()],
                ..UserGroupFields::default()
            },
        ] {
            let error = build(&fields).expect_err(&format!("{fields:?} is invalid"));
            assert_eq!(error.exit_code(), ExitCode::Usage, "{error}");
        }
    }
}
