//! One module per kind of object; each command is one REST call and a print.

pub mod apps;
pub mod audit;
pub mod devices;
pub mod fleet;
pub mod groups;
pub mod rollout;
pub mod tokens;
pub mod user_groups;
pub mod users;

use crate::client::Client;
use crate::config::Settings;
use crate::error::{CliError, Subject};
use crate::output::{self, Table};
use serde_json::Value;
use std::io::{Read, Write};

/// What every command gets: the client, the settings it was made from, where to print, and
/// where `--file -` reads from.
pub struct Context<'a> {
    pub client: Client,
    pub settings: Settings,
    pub stdout: &'a mut dyn Write,
    pub stdin: &'a mut dyn Read,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Context")
            .field("client", &self.client)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context<'_> {
    /// Turns a failed request into the user's error, naming `subject`.
    pub fn check(
        &self,
        result: Result<Value, crate::client::RequestError>,
        subject: &Subject,
    ) -> Result<Value, CliError> {
        result.map_err(|error| CliError::from_request(error, subject, &self.settings.url))
    }

    /// Prints a document in the chosen format; `table` makes the person's view of it.
    pub fn print(
        &mut self,
        document: &Value,
        table: impl FnOnce(&Value) -> Table,
    ) -> Result<(), CliError> {
        output::print(self.stdout, self.settings.output, document, table)?;
        Ok(())
    }
}
