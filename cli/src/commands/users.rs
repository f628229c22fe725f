//! `nebula users …`: operators' own logins (`/api/v2/users`, admin only). The control plane
//! answers a user's password and token only as their hashes; the one secret it shows is the
//! new token of `refresh`, once.

use super::Context;
use crate::args::UsersCommand;
use crate::error::{CliError, Subject};
use crate::output::{Table, cell};
use serde_json::{Value, json};
use std::io::Read;

pub fn run(context: &mut Context<'_>, command: UsersCommand) -> Result<(), CliError> {
    match command {
        UsersCommand::List => {
            let document = context.check(context.client.get("/users"), &Subject::None)?;
            context.print(&document, |document| {
                Table::names("USER", &document["users"])
            })
        }
        UsersCommand::Get { name: user } => {
            let subject = Subject::User(user.to_string());
            let document =
                context.check(context.client.get(&format!("/users/{user}")), &subject)?;
            context.print(&document, Table::fields)
        }
        UsersCommand::Create {
            name: user,
            password_stdin,
        } => {
            let body = if password_stdin {
                create_body(Some(read_password(context.stdin)?))
            } else {
                create_body(None)
            };
            let subject = Subject::User(user.to_string());
            let document = context.check(
                context.client.post(&format!("/users/{user}"), &body),
                &subject,
            )?;
            context.print(&document, Table::fields)
        }
        UsersCommand::Delete { name: user } => {
            let subject = Subject::User(user.to_string());
            let document =
                context.check(context.client.delete(&format!("/users/{user}")), &subject)?;
            context.print(&document, |_| {
                Table::message(format!("deleted user {user}"))
            })
        }
        UsersCommand::Refresh { name: user } => {
            let subject = Subject::User(user.to_string());
            let document = context.check(
                context
                    .client
                    .post(&format!("/users/{user}/refresh"), &json!({})),
                &subject,
            )?;
            context.print(&document, |document| {
                Table::new(&["USER", "TOKEN (its NEBULA_TOKEN; shown only now)"])
                    .row(vec![user.to_string(), cell(&document["token"])])
            })
        }
    }
}

/// `{"password": ...}`, or `{}` for the control plane to generate one.
fn create_body(password: Option<String>) -> Value {
    match password {
        Some(password) => json!({ "password": password }),
        None => json!({}),
    }
}

/// The password from stdin: its first line, without the line ending (`echo` adds one).
fn read_password(stdin: &mut dyn Read) -> Result<String, CliError> {
    let mut text = String::new();
    stdin.read_to_string(&mut text).map_err(|error| {
        CliError::Usage(format!("--password-stdin: cannot read stdin: {error}"))
    })?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(CliError::Usage(
            "--password-stdin: stdin holds no password (give it on the first line)".to_string(),
        ));
    }
    Ok(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCode;

    #[test]
    fn the_password_is_the_first_line_of_stdin() {
        for input in [
            "s3cret pw\n",
            "s3cret pw",
            "s3cret pw\r\n",
            "s3cret pw\nrest\n",
        ] {
            let mut stdin = input.as_bytes();
            assert_eq!(
                read_password(&mut stdin).expect("password"),
                "s3cret pw",
                "{input:?}"
            );
        }
        for input in ["", "\n", "\nlater\n"] {
            let mut stdin = input.as_bytes();
            let error = read_password(&mut stdin).expect_err(input);
            assert_eq!(error.exit_code(), ExitCode::Usage, "{input:?}: {error}");
        }
    }

    #[test]
    fn create_sends_the_password_only_when_given() {
        assert_eq!(create_body(None), json!({}));
        assert_eq!(create_body(Some("pw".into())), json!({"password": "pw"}));
    }
}
