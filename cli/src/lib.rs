//! `nebula`, the operators' command-line client of the control plane.
//!
//! It speaks the v2 REST API of `shared/API.md` and nothing else: no broker, no store, no
//! Docker engine (`cargo xtask check-deps` holds it to that). Layout: [`args`] is the command
//! line (clap), [`config`] merges flags, environment and config file into [`config::Settings`]
//! before any request, [`client`] makes the HTTP requests, [`commands`] has one module per kind
//! of object, [`output`] prints tables, JSON or YAML, and [`error`] turns every failure into a
//! message that says what to fix and an exit code.

pub mod args;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod output;

use args::{Cli, Command};
use clap::CommandFactory;
use commands::Context;
use config::Environment;
use error::CliError;
use std::io::{Read, Write};

/// Runs one parsed command line. `main` passes the process's environment, stdout and stdin.
pub fn run(
    cli: Cli,
    environment: &dyn Environment,
    stdout: &mut dyn Write,
    stdin: &mut dyn Read,
) -> Result<(), CliError> {
    // Completions need no control plane and no configuration: a broken config file must not
    // stop a user from installing them.
    let command = match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "nebula", stdout);
            return Ok(());
        }
        command => command,
    };
    let settings = config::load(&cli.global, environment)?;
    let client = client::Client::new(&settings)
        .map_err(|error| CliError::from_request(error, &error::Subject::None, &settings.url))?;
    let mut context = Context {
        client,
        settings,
        stdout,
        stdin,
    };
    let result = match command {
        Command::Apps(command) => commands::apps::run(&mut context, command),
        Command::Groups(command) => commands::groups::run(&mut context, command),
        Command::Devices(command) => commands::devices::run(&mut context, command),
        Command::Tokens(command) => commands::tokens::run(&mut context, command),
        Command::Rollout(command) => commands::rollout::run(&mut context, command),
        Command::Users(command) => commands::users::run(&mut context, command),
        Command::UserGroups(command) => commands::user_groups::run(&mut context, command),
        Command::Audit { page_size, before } => {
            commands::audit::run(&mut context, page_size, before.as_ref())
        }
        Command::Prune => commands::fleet::prune(&mut context),
        Command::Status => commands::fleet::status(&mut context),
        Command::Completions { .. } => unreachable!("handled before the settings are loaded"),
    };
    context.stdout.flush()?;
    result
}
