//! The command line, as clap parses it: every command, flag and help text. Nothing here does
//! I/O; what a command does is in [`crate::commands`].

use crate::output::OutputFormat;
use clap::{Args, Parser, Subcommand};
use nebula_protocol::Name;
use std::path::PathBuf;

/// Shown at the end of `nebula --help`: scripts rely on these codes.
const EXIT_CODES: &str = "\
Configuration: flags > environment (NEBULA_URL, NEBULA_USER, NEBULA_PASSWORD, NEBULA_TOKEN,
NEBULA_OUTPUT, NEBULA_CA_FILE) > config file ($XDG_CONFIG_HOME/nebula/config.toml, else
~/.config/nebula/config.toml, with the keys url, user, password, token, output, ca_file).

Exit codes: 0 ok, 1 control plane unreachable or failing, 2 usage or invalid request,
3 not found, 4 unauthorized or forbidden, 5 already exists or conflicting state.";

/// `nebula`: manage the apps and device groups of a Nebula control plane over its REST API.
#[derive(Debug, Parser)]
#[command(name = "nebula", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes. Each is optional here: config::resolve fills the gaps from
/// the environment and the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// Control plane URL [env: NEBULA_URL] [default: http://127.0.0.1:8080]
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// User for HTTP basic authentication [env: NEBULA_USER]
    #[arg(short = 'u', long, global = true, value_name = "USER")]
    pub user: Option<String>,
    /// Password for HTTP basic authentication [env: NEBULA_PASSWORD]
    #[arg(short = 'p', long, global = true, value_name = "PASSWORD")]
    pub password: Option<String>,
    /// Bearer token, used when no user is set [env: NEBULA_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Output format [env: NEBULA_OUTPUT] [default: table]
    #[arg(short = 'o', long, global = true, value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
    /// Config file [env: NEBULA_CONFIG] [default: $XDG_CONFIG_HOME/nebula/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// PEM file of the authorities trusted for an https:// URL, instead of the built-in
    /// ones [env: NEBULA_CA_FILE]
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_file: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apps: the containers every device of their groups runs
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Device groups: which apps the devices of a group run
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// The device inventory: what every agent last reported, and whether it is online
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Provisioning tokens: devices exchange one for their own broker login at first boot
    /// (the agent's NEBULA_PROVISIONING_TOKEN)
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Whether a change reached the fleet
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Operators' own logins (admin only)
    #[command(subcommand)]
    Users(UsersCommand),
    /// User groups: what their members may do, per app, device group and cron job (admin
    /// only)
    #[command(subcommand)]
    UserGroups(UserGroupsCommand),
    /// The audit trail: every write that succeeded, newest first (admin only)
    Audit {
        /// Entries per page (1-1000)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        page_size: u16,
        /// Entries older than this one (the `next` of the previous page)
        #[arg(long, value_name = "ID")]
        before: Option<Name>,
    },
    /// Remove unused images on the devices of every group
    Prune,
    /// Check that the control plane answers and accepts the credentials
    Status,
    /// Print a shell completion script (bash: `nebula completions bash > /etc/bash_completion.d/nebula`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// List the names of all apps
    List,
    /// Show an app
    Get { name: Name },
    /// Create an app (only --image is required)
    Create {
        name: Name,
        #[command(flatten)]
        fields: AppFields,
    },
    /// Change the given fields of an app (with --replace: set the whole app; omitted fields
    /// reset to their defaults)
    Update {
        name: Name,
        #[command(flatten)]
        fields: AppFields,
        /// Replace the whole app instead of changing only the given fields
        #[arg(long)]
        replace: bool,
    },
    /// Delete an app: devices stop and remove its containers
    Delete { name: Name },
    /// Stop an app: devices stop and remove its containers
    Stop { name: Name },
    /// Start a stopped app
    Start { name: Name },
    /// Restart the containers of a running app
    Restart { name: Name },
}

/// The fields of an app document (API.md), as flags. A list flag given only as `''` (for
/// example `--network ''`) sends an empty list.
#[derive(Debug, Clone, Default, Args)]
pub struct AppFields {
    /// Docker image, `[registry[:port]/][namespace/]name[:tag]`
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Port, repeatable: `8080` (the same host port) or `HOST:CONTAINER` (`8081:8000`); the
    /// host port goes up by one for each further container on a device
    #[arg(long = "port", value_name = "[HOST:]CONTAINER")]
    pub ports: Vec<String>,
    /// Environment variable, repeatable
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Containers per device: `server=N`, `cpu=N` (per core) or `memory=MB` (one per MB)
    #[arg(long, value_name = "KIND=N")]
    pub containers_per: Option<String>,
    /// Docker network, repeatable (default: nebula and bridge; `host` or `none` alone)
    #[arg(long = "network", value_name = "NETWORK")]
    pub networks: Vec<String>,
    /// Bind mount, repeatable
    #[arg(long = "volume", value_name = "HOST:CONTAINER[:ro|rw]")]
    pub volumes: Vec<String>,
    /// Device mapping, repeatable
    #[arg(long = "device", value_name = "HOST:CONTAINER[:rwm]")]
    pub devices: Vec<String>,
    /// Privileged containers
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub privileged: Option<bool>,
    /// Replace containers one at a time on a change (health-gated)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub rolling_restart: Option<bool>,
    /// Whether devices run the app (`--running=false` creates it stopped)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub running: Option<bool>,
    /// A JSON app document (`-` reads stdin); the flags above override its fields
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List the names of all device groups
    List,
    /// Show a device group (with --info: the full documents of its apps)
    Get {
        name: Name,
        /// The group's apps in full (GET /device_groups/<group>/info)
        #[arg(long)]
        info: bool,
    },
    /// Create a device group
    Create {
        name: Name,
        /// Member apps, comma-separated or repeated
        #[arg(long, value_name = "APP,...", value_delimiter = ',')]
        apps: Vec<String>,
    },
    /// Set the apps of a device group (`--apps ''` removes them all)
    Update {
        name: Name,
        /// Member apps, comma-separated or repeated; replaces the current list
        #[arg(long, value_name = "APP,...", value_delimiter = ',', required = true)]
        apps: Vec<String>,
    },
    /// Delete a device group
    Delete { name: Name },
    /// Remove unused images on the group's devices
    Prune { name: Name },
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List devices, sorted by id, one page at a time (`--all` for every page)
    List {
        /// Only devices of this device group
        #[arg(long, value_name = "GROUP")]
        group: Option<Name>,
        /// Only devices configured for or running this app
        #[arg(long, value_name = "APP")]
        app: Option<Name>,
        /// Only online devices
        #[arg(long, conflicts_with = "offline")]
        online: bool,
        /// Only offline devices
        #[arg(long)]
        offline: bool,
        /// Devices per page (1-1000)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Start after this device id (the `next` of the previous page)
        #[arg(long, value_name = "DEVICE")]
        after: Option<Name>,
        /// Every page, not only the first
        #[arg(long)]
        all: bool,
    },
    /// Show a device: its agent, host, apps and containers
    Get { device: Name },
    /// Mint the device's own broker login for its group (or apps) and print the URL it
    /// connects with: its NEBULA_AMQP_URL, shown only now (minting again replaces it)
    Credential {
        device: Name,
        /// The device group the device follows
        #[arg(
            long,
            value_name = "GROUP",
            required_unless_present = "apps",
            conflicts_with = "apps"
        )]
        group: Option<Name>,
        /// App mode: the apps the device follows (comma-separated)
        #[arg(long, value_name = "APP", value_delimiter = ',')]
        apps: Vec<Name>,
    },
    /// Revoke the device's own broker login: its open connection is closed and it cannot
    /// log in again (its containers keep running)
    Revoke { device: Name },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make a token for a device group (or apps) and print it: shown only now
    Create {
        /// Devices enrolled with it follow this device group
        #[arg(
            long,
            value_name = "GROUP",
            required_unless_present = "apps",
            conflicts_with = "apps"
        )]
        group: Option<Name>,
        /// App mode: the apps devices enrolled with it follow (comma-separated)
        #[arg(long, value_name = "APP", value_delimiter = ',')]
        apps: Vec<Name>,
        /// How many devices it may enrol
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        uses: u64,
        /// Seconds it stays usable (at most a year)
        #[arg(long, default_value_t = 86_400, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
        expires_in: u64,
    },
    /// List the tokens (never their secrets), expired and used-up ones too
    List,
    /// Delete a token: it enrols nobody any more (enrolled devices keep their logins)
    Delete {
        /// The token's id: the part before the dot
        token_id: Name,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List the names of all users
    List,
    /// Show a user (its password and token only as their hashes)
    Get {
        #[arg(value_name = "USER")]
        name: Name,
    },
    /// Create a user; without --password-stdin the control plane generates a password that
    /// is never shown (`nebula users refresh` gives a token to log in with)
    Create {
        #[arg(value_name = "USER")]
        name: Name,
        /// Read the password from stdin (one line; `printf %s "$PW" | nebula users create
        /// ann --password-stdin`), so that it stays out of the shell history (-p/--password is
        /// the password you log in with, not the new user's)
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user: its token stops working and it leaves every user group
    Delete {
        #[arg(value_name = "USER")]
        name: Name,
    },
    /// Make a new token for a user and print it: shown only now (the old one stops working)
    Refresh {
        #[arg(value_name = "USER")]
        name: Name,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserGroupsCommand {
    /// List the names of all user groups
    List,
    /// Show a user group
    Get { name: Name },
    /// Create a user group (omitted fields: no members, nothing allowed)
    Create {
        name: Name,
        #[command(flatten)]
        fields: UserGroupFields,
    },
    /// Change the given fields of a user group (a given list or map replaces the current one)
    Update {
        name: Name,
        #[command(flatten)]
        fields: UserGroupFields,
    },
    /// Delete a user group: its members lose what it allowed
    Delete { name: Name },
}

/// The fields of a user group document, as flags. A repeatable flag given only as `''`
/// (`--app ''`) sends an empty map or list. Names need not exist yet.
#[derive(Debug, Clone, Default, Args)]
pub struct UserGroupFields {
    /// Member users, comma-separated or repeated
    #[arg(long, value_name = "USER,...", value_delimiter = ',')]
    pub members: Vec<String>,
    /// Access to an app, repeatable
    #[arg(long = "app", value_name = "NAME=ro|rw")]
    pub apps: Vec<String>,
    /// Access to a device group, repeatable
    #[arg(long = "group", value_name = "NAME=ro|rw")]
    pub device_groups: Vec<String>,
    /// Access to a cron job, repeatable
    #[arg(long = "cron-job", value_name = "NAME=ro|rw")]
    pub cron_jobs: Vec<String>,
    /// Members may prune images (`nebula prune`, `nebula groups prune`)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub pruning: Option<bool>,
    /// Members may do everything
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub admin: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// How many devices run the current revision of an app or device group, how many are
    /// behind or failed, and which (exit code 1 when a device failed)
    Status {
        /// An app or a device group (`--app`/`--group` when both exist)
        name: Name,
        /// NAME is an app
        #[arg(long, conflicts_with = "group")]
        app: bool,
        /// NAME is a device group
        #[arg(long)]
        group: bool,
        /// Follow the rollout until every device is current or failed (an offline device
        /// stays behind until it reports again or expires; with no device yet, wait for
        /// the first); see --timeout
        #[arg(short = 'w', long)]
        watch: bool,
        /// With --watch: give up after this many seconds (exit code 1)
        #[arg(long, value_name = "SECONDS", requires = "watch")]
        timeout: Option<u64>,
        /// With --watch: seconds between two looks
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        interval: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(arguments: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("nebula").chain(arguments.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let before =
            parse(&["--url", "http://cp:1", "-u", "a", "-p", "b", "apps", "list"]).expect("parses");
        let after = parse(&["apps", "list", "-o", "json", "--token", "t"]).expect("parses");
        assert_eq!(before.global.url.as_deref(), Some("http://cp:1"));
        assert_eq!(before.global.user.as_deref(), Some("a"));
        assert_eq!(before.global.password.as_deref(), Some("b"));
        assert_eq!(after.global.output, Some(OutputFormat::Json));
        assert_eq!(after.global.token.as_deref(), Some("t"));
        assert!(matches!(after.command, Command::Apps(AppsCommand::List)));
    }

    #[test]
    fn app_flags_parse_into_fields() {
        let cli = parse(&[
            "apps",
            "create",
            "web",
            "--image",
            "nginx:1",
            "--port",
            "8081:80",
            "--port",
            "9000",
            "--env",
            "A=1",
            "--containers-per",
            "server=2",
            "--network",
            "host",
            "--volume",
            "/a:/b:ro",
            "--device",
            "/dev/x:/dev/x",
            "--privileged",
            "--rolling-restart=false",
            "--running",
            "false",
        ])
        .expect("parses");
        let Command::Apps(AppsCommand::Create { name, fields }) = cli.command else {
            panic!("not apps create: {cli:?}");
        };
        assert_eq!(name.as_ref(), "web");
        assert_eq!(fields.image.as_deref(), Some("nginx:1"));
        assert_eq!(fields.ports, ["8081:80", "9000"]);
        assert_eq!(fields.env, ["A=1"]);
        assert_eq!(fields.containers_per.as_deref(), Some("server=2"));
        assert_eq!(fields.networks, ["host"]);
        assert_eq!(fields.volumes, ["/a:/b:ro"]);
        assert_eq!(fields.devices, ["/dev/x:/dev/x"]);
        assert_eq!(fields.privileged, Some(true));
        assert_eq!(fields.rolling_restart, Some(false));
        assert_eq!(fields.running, Some(false));
    }

    #[test]
    fn group_apps_are_comma_separated_or_repeated() {
        let cli =
            parse(&["groups", "create", "g", "--apps", "a,b", "--apps", "c"]).expect("parses");
        let Command::Groups(GroupsCommand::Create { apps, .. }) = cli.command else {
            panic!("not groups create");
        };
        assert_eq!(apps, ["a", "b", "c"]);
        let cli = parse(&["groups", "update", "g", "--apps", ""]).expect("parses");
        let Command::Groups(GroupsCommand::Update { apps, .. }) = cli.command else {
            panic!("not groups update");
        };
        assert!(apps.iter().all(String::is_empty), "{apps:?}");
    }

    #[test]
    fn device_and_rollout_flags_parse() {
        let cli = parse(&[
            "devices",
            "list",
            "--group",
            "edge",
            "--offline",
            "--limit",
            "5",
            "--all",
        ])
        .expect("parses");
        let Command::Devices(DevicesCommand::List {
            group,
            offline,
            online,
            limit,
            all,
            ..
        }) = cli.command
        else {
            panic!("not devices list");
        };
        assert_eq!(group.as_ref().map(|name| name.as_str()), Some("edge"));
        assert!(offline && !online && all);
        assert_eq!(limit, 5);
        let cli =
            parse(&["rollout", "status", "local", "--watch", "--timeout", "60"]).expect("parses");
        let Command::Rollout(RolloutCommand::Status {
            name,
            watch,
            timeout,
            app,
            group,
            ..
        }) = cli.command
        else {
            panic!("not rollout status");
        };
        assert_eq!(name.as_str(), "local");
        assert!(watch && !app && !group);
        assert_eq!(timeout, Some(60));
    }

    #[test]
    fn user_and_user_group_flags_parse() {
        let cli = parse(&["users", "create", "ann", "--password-stdin"]).expect("parses");
        let Command::Users(UsersCommand::Create {
            name,
            password_stdin,
        }) = cli.command
        else {
            panic!("not users create");
        };
        assert_eq!(name.as_str(), "ann");
        assert!(password_stdin);
        let cli = parse(&["users", "refresh", "ann", "-o", "json"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Users(UsersCommand::Refresh { .. })
        ));
        let cli = parse(&[
            "user-groups",
            "create",
            "ops",
            "--members",
            "ann,bob",
            "--members",
            "cy",
            "--app",
            "web=rw",
            "--app",
            "api=ro",
            "--group",
            "floor=ro",
            "--cron-job",
            "backup=rw",
            "--pruning",
            "--admin=false",
        ])
        .expect("parses");
        let Command::UserGroups(UserGroupsCommand::Create { name, fields }) = cli.command else {
            panic!("not user-groups create");
        };
        assert_eq!(name.as_str(), "ops");
        assert_eq!(fields.members, ["ann", "bob", "cy"]);
        assert_eq!(fields.apps, ["web=rw", "api=ro"]);
        assert_eq!(fields.device_groups, ["floor=ro"]);
        assert_eq!(fields.cron_jobs, ["backup=rw"]);
        assert_eq!((fields.pruning, fields.admin), (Some(true), Some(false)));
        // update takes the same flags, none required (the command says what is missing).
        let cli = parse(&["user-groups", "update", "ops"]).expect("parses");
        let Command::UserGroups(UserGroupsCommand::Update { fields, .. }) = cli.command else {
            panic!("not user-groups update");
        };
        assert!(fields.members.is_empty() && fields.pruning.is_none() && fields.admin.is_none());
    }

    #[test]
    fn audit_flags_parse() {
        let cli = parse(&["audit"]).expect("parses");
        let Command::Audit { page_size, before } = cli.command else {
            panic!("not audit");
        };
        assert_eq!((page_size, before), (100, None));
        let cli = parse(&[
            "audit",
            "--page-size",
            "5",
            "--before",
            "0123456789abcdef0123456789abcdef",
        ])
        .expect("parses");
        let Command::Audit { page_size, before } = cli.command else {
            panic!("not audit");
        };
        assert_eq!(page_size, 5);
        assert_eq!(
            before.as_ref().map(Name::as_str),
            Some("0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn usage_errors_are_reported_by_clap() {
        for arguments in [
            &["apps"][..],
            &["apps", "get"],
            &["apps", "get", "-bad"],
            &["apps", "get", "has/slash"],
            &["apps", "create", "web", "--privileged=maybe"],
            &["groups", "update", "g"],
            &["apps", "list", "-o", "xml"],
            &["completions", "powershell7"],
            &["frobnicate"],
            &["devices", "list", "--online", "--offline"],
            &["devices", "list", "--limit", "0"],
            &["devices", "list", "--limit", "1001"],
            &["rollout", "status", "x", "--app", "--group"],
            &["rollout", "status", "x", "--timeout", "5"],
            &["users"],
            &["users", "get"],
            &["users", "create", "ann", "--password-stdin=yes"],
            &["users", "delete", "has/slash"],
            &["user-groups", "create", "ops", "--pruning=maybe"],
            &["user-groups", "get", "-x"],
            &["audit", "--page-size", "0"],
            &["audit", "--page-size", "1001"],
            &["audit", "--before", "a/b"],
        ] {
            let error = parse(arguments).expect_err(&format!("{arguments:?} must not parse"));
            assert_eq!(error.exit_code(), 2, "{arguments:?}: {error}");
        }
    }
}
