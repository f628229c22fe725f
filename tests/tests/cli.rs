//! The `nebula` binary against a real control plane (embedded store, a RabbitMQ vhost of the
//! test's own): every command, the documents it prints, and the exit codes scripts rely on.
//! Each run of `nebula` gets an empty environment, so the developer's own NEBULA_* variables
//! and config file never leak in.

use nebula_tests::binaries::binary;
use nebula_tests::system::{
    ADMIN_PASSWORD, ADMIN_USER, Agent, AgentMode, ControlPlane, StoreKind, scratch_dir,
};
use nebula_tests::vhost::Vhost;
use nebula_tests::{openapi, services, unique_name, wait_for};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

const TOKEN: &str = "cli-test-token";

/// One control plane and the environment `nebula` runs with against it.
struct Fixture {
    control_plane: ControlPlane,
    home: PathBuf,
    directory: PathBuf,
    vhost: Vhost,
}

impl Fixture {
    async fn start(test: &str) -> Self {
        let vhost = Vhost::create(&unique_name(&format!("cli-{test}"))).expect("create vhost");
        let directory = scratch_dir(&format!("cli-{test}"));
        let control_plane = ControlPlane::start_with(
            "cp",
            &StoreKind::Embedded(directory.join("store")),
            &vhost.amqp_url(),
            &directory,
            &[
                ("NEBULA_ADMIN_TOKEN", TOKEN),
                (
                    "NEBULA_RABBITMQ_MANAGEMENT_URL",
                    &services::rabbitmq_management_url(),
                ),
            ],
        )
        .await
        .expect("control plane starts");
        let home = directory.join("home");
        std::fs::create_dir_all(&home).expect("home");
        Self {
            control_plane,
            home,
            directory,
            vhost,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.control_plane.address)
    }

    /// `nebula` with exactly `env` (plus HOME), no credentials unless given.
    fn run(&self, arguments: &[&str], env: &[(&str, &str)]) -> Run {
        let output = Command::new(binary("nebula"))
            .args(arguments)
            .env_clear()
            .env("HOME", &self.home)
            .envs(env.iter().copied())
            .output()
            .expect("run nebula");
        Run::new(arguments, output)
    }

    /// The admin's `nebula` with `input` on its stdin.
    fn admin_with_stdin(&self, arguments: &[&str], input: &str) -> Run {
        use std::io::Write;
        let mut child = Command::new(binary("nebula"))
            .args(arguments)
            .env_clear()
            .env("HOME", &self.home)
            .env("NEBULA_URL", self.url())
            .env("NEBULA_USER", ADMIN_USER)
            .env("NEBULA_PASSWORD", ADMIN_PASSWORD)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run nebula");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        Run::new(arguments, child.wait_with_output().expect("nebula ends"))
    }

    /// The control plane's OpenAPI document.
    async fn openapi(&self) -> Value {
        reqwest::Client::new()
            .get(format!("{}/api/v2/openapi.json", self.url()))
            .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
            .send()
            .await
            .expect("openapi")
            .json()
            .await
            .expect("json")
    }

    /// Asserts that every request made so far (counted by route template in /metrics) is an
    /// operation of `document`; the metrics text and how many routes were called.
    async fn requests_are_operations(&self, document: &Value) -> (String, usize) {
        let metrics = reqwest::get(format!("{}/metrics", self.url()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let mut routes = 0;
        for line in metrics
            .lines()
            .filter(|line| line.starts_with("nebula_http_requests_total{"))
        {
            let label = |name: &str| {
                line.split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_else(|| panic!("no {name} in {line}"))
                    .to_string()
            };
            let (route, method) = (label("route"), label("method"));
            if route == "/metrics" || route == "/readyz" {
                continue;
            }
            routes += 1;
            assert!(
                openapi::operation(document, &route, &method.to_ascii_lowercase()).is_some(),
                "the CLI called {method} {route}, which the document does not have"
            );
        }
        (metrics, routes)
    }

    /// `nebula` as the admin, pointed at this control plane through the environment.
    fn admin(&self, arguments: &[&str]) -> Run {
        let url = self.url();
        self.run(
            arguments,
            &[
                ("NEBULA_URL", &url),
                ("NEBULA_USER", ADMIN_USER),
                ("NEBULA_PASSWORD", ADMIN_PASSWORD),
            ],
        )
    }

    /// The admin's `nebula ... -o json`, which must succeed; its document.
    fn json(&self, arguments: &[&str]) -> Value {
        let mut arguments = arguments.to_vec();
        arguments.extend(["-o", "json"]);
        self.admin(&arguments).success().json()
    }
}

#[derive(Debug)]
struct Run {
    command: String,
    output: Output,
}

impl Run {
    fn new(arguments: &[&str], output: Output) -> Self {
        Self {
            command: format!("nebula {}", arguments.join(" ")),
            output,
        }
    }

    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn success(self) -> Self {
        self.exits(0)
    }

    /// Asserts the exit code; a failure shows what the command printed.
    fn exits(self, code: i32) -> Self {
        assert_eq!(
            self.code(),
            Some(code),
            "{}\nstdout: {}\nstderr: {}",
            self.command,
            self.stdout(),
            self.stderr()
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout()).unwrap_or_else(|error| {
            panic!("{}: not JSON ({error}): {}", self.command, self.stdout())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_lifecycle_through_the_cli() {
    let fixture = Fixture::start("apps").await;
    let app = unique_name("cli-app");
    let app = app.as_str();

    // Create with every kind of flag; the table shows the stored document.
    let created = fixture
        .admin(&[
            "apps",
            "create",
            app,
            "--image",
            "127.0.0.1:5000/nebula/test:1",
            "--port",
            "18081:8000",
            "--port",
            "9000",
            "--env",
            "MODE=edge",
            "--containers-per",
            "server=2",
            "--network",
            "nebula",
            "--volume",
            "/tmp:/data:ro",
            "--rolling-restart",
            "--running=false",
        ])
        .success()
        .stdout();
    assert!(
        created
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>() == ["app_name", app]),
        "{created}"
    );
    let document = fixture.json(&["apps", "get", app]);
    assert_eq!(document["app_id"], json!(1));
    assert_eq!(
        document["docker_image"],
        json!("127.0.0.1:5000/nebula/test:1")
    );
    assert_eq!(document["starting_ports"], json!([{"18081": "8000"}, 9000]));
    assert_eq!(document["env_vars"], json!({"MODE": "edge"}));
    assert_eq!(document["containers_per"], json!({"server": 2}));
    assert_eq!(document["networks"], json!(["nebula"]));
    assert_eq!(document["volumes"], json!(["/tmp:/data:ro"]));
    assert_eq!(document["rolling_restart"], json!(true));
    assert_eq!(document["running"], json!(false));

    let yaml = fixture
        .admin(&["apps", "get", app, "-o", "yaml"])
        .success()
        .stdout();
    assert!(yaml.contains(&format!("app_name: {app}\n")), "{yaml}");
    assert!(yaml.contains("- '18081': '8000'\n"), "{yaml}");

    // A partial update changes only what is given.
    let updated = fixture.json(&["apps", "update", app, "--env", "MODE=lab", "--privileged"]);
    assert_eq!(updated["app_id"], json!(2));
    assert_eq!(updated["env_vars"], json!({"MODE": "lab"}));
    assert_eq!(updated["privileged"], json!(true));
    assert_eq!(updated["starting_ports"], json!([{"18081": "8000"}, 9000]));
    // --replace is the full update: what is not given goes back to its default.
    let file = fixture.home.join("app.json");
    std::fs::write(
        &file,
        r#"{"docker_image": "127.0.0.1:5000/nebula/test:2", "running": false}"#,
    )
    .expect("write app file");
    let replaced = fixture.json(&[
        "apps",
        "update",
        app,
        "--replace",
        "--file",
        file.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(replaced["app_id"], json!(3));
    assert_eq!(
        replaced["docker_image"],
        json!("127.0.0.1:5000/nebula/test:2")
    );
    assert_eq!(replaced["starting_ports"], json!([]));
    assert_eq!(replaced["privileged"], json!(false));

    let list = fixture.json(&["apps", "list"]);
    assert!(
        list["apps"].as_array().expect("apps").contains(&json!(app)),
        "{list}"
    );
    let table = fixture.admin(&["apps", "list"]).success().stdout();
    assert!(
        table.starts_with("APP\n") && table.lines().any(|line| line == app),
        "{table}"
    );

    // Stopped apps cannot be restarted (5); start, restart and stop each bump app_id.
    let restart = fixture.admin(&["apps", "restart", app]).exits(5);
    assert!(
        restart
            .stderr()
            .contains(&format!("nebula apps start {app}")),
        "{}",
        restart.stderr()
    );
    assert_eq!(
        fixture.json(&["apps", "start", app])["running"],
        json!(true)
    );
    assert_eq!(fixture.json(&["apps", "restart", app])["app_id"], json!(5));
    let stopped = fixture.json(&["apps", "stop", app]);
    assert_eq!(
        (stopped["app_id"].clone(), stopped["running"].clone()),
        (json!(6), json!(false))
    );

    // Exit codes: exists 5, invalid request 2, not found 3.
    let exists = fixture
        .admin(&["apps", "create", app, "--image", "x:1"])
        .exits(5);
    assert!(
        exists.stderr().contains("already exists"),
        "{}",
        exists.stderr()
    );
    let other = unique_name("cli-other");
    let missing_image = fixture.admin(&["apps", "create", &other]).exits(2);
    assert!(
        missing_image.stderr().contains("--image"),
        "{}",
        missing_image.stderr()
    );
    let bad_field = fixture.admin(&["apps", "update", app, "--containers-per", "server=9999"]);
    assert_eq!(bad_field.code(), Some(2), "{}", bad_field.stderr());
    let unknown = fixture.admin(&["apps", "get", &other]).exits(3);
    assert!(
        unknown
            .stderr()
            .contains(&format!("app {other} does not exist")),
        "{}",
        unknown.stderr()
    );
    fixture
        .admin(&["apps", "update", &other, "--image", "x:1"])
        .exits(3);
    fixture.admin(&["apps", "delete", &other]).exits(3);

    let deleted = fixture.admin(&["apps", "delete", app]).success().stdout();
    assert_eq!(deleted.trim(), format!("deleted app {app}"));
    fixture.admin(&["apps", "get", app]).exits(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_prune_through_the_cli() {
    let fixture = Fixture::start("groups").await;
    let app = unique_name("cli-member");
    let group = unique_name("cli-group");
    let (app, group) = (app.as_str(), group.as_str());
    fixture
        .admin(&[
            "apps",
            "create",
            app,
            "--image",
            "127.0.0.1:5000/nebula/test:1",
        ])
        .success();

    // A group naming an app that does not exist: not found (3), and the group is not made.
    let ghost = unique_name("cli-ghost");
    let unknown_member = fixture
        .admin(&[
            "groups",
            "create",
            group,
            "--apps",
            &format!("{app},{ghost}"),
        ])
        .exits(3);
    assert!(
        unknown_member.stderr().contains("--apps"),
        "{}",
        unknown_member.stderr()
    );
    fixture.admin(&["groups", "get", group]).exits(3);

    let created = fixture.json(&["groups", "create", group, "--apps", app]);
    assert_eq!(created["apps"], json!([app]));
    assert_eq!(
        (
            created["device_group_id"].clone(),
            created["prune_id"].clone()
        ),
        (json!(1), json!(1))
    );
    fixture.admin(&["groups", "create", group]).exits(5);
    let info = fixture
        .admin(&["groups", "get", group, "--info"])
        .success()
        .stdout();
    let row = info
        .lines()
        .find(|line| line.starts_with(app))
        .unwrap_or_else(|| panic!("no row for {app}: {info}"));
    assert!(row.contains("127.0.0.1:5000/nebula/test:1"), "{info}");
    let list = fixture.json(&["groups", "list"]);
    assert!(
        list["device_groups"]
            .as_array()
            .expect("groups")
            .contains(&json!(group))
    );

    let emptied = fixture.json(&["groups", "update", group, "--apps", ""]);
    assert_eq!(emptied["apps"], json!([]));
    assert_eq!(emptied["device_group_id"], json!(2));
    let refilled = fixture.json(&["groups", "update", group, "--apps", app]);
    assert_eq!(refilled["apps"], json!([app]));

    // Prune: the group's prune_id goes up, by itself and with every group.
    assert_eq!(
        fixture.json(&["groups", "prune", group])["prune_id"],
        json!(2)
    );
    let all = fixture.json(&["prune"]);
    assert_eq!(all["prune_ids"][group], json!(3), "{all}");
    let table = fixture.admin(&["prune"]).success().stdout();
    assert!(
        table
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>() == [group, "4"]),
        "{table}"
    );
    fixture.admin(&["groups", "prune", &ghost]).exits(3);

    // Deleting an app takes it out of its groups.
    fixture.admin(&["apps", "delete", app]).success();
    assert_eq!(fixture.json(&["groups", "get", group])["apps"], json!([]));
    let deleted = fixture
        .admin(&["groups", "delete", group])
        .success()
        .stdout();
    assert_eq!(deleted.trim(), format!("deleted device group {group}"));
    fixture.admin(&["groups", "get", group]).exits(3);
    fixture.admin(&["groups", "delete", group]).exits(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_flags_environment_config_file_and_token() {
    let fixture = Fixture::start("auth").await;
    let url = fixture.url();
    let url = url.as_str();

    // No credentials, or wrong ones: 4, with what to set.
    let anonymous = fixture.run(&["status"], &[("NEBULA_URL", url)]).exits(4);
    assert!(
        anonymous.stderr().contains("NEBULA_USER"),
        "{}",
        anonymous.stderr()
    );
    fixture
        .run(
            &["status", "-u", ADMIN_USER, "-p", "wrong"],
            &[("NEBULA_URL", url)],
        )
        .exits(4);
    fixture
        .run(
            &["apps", "list"],
            &[("NEBULA_URL", url), ("NEBULA_TOKEN", "wrong")],
        )
        .exits(4);

    // Flags, then environment, then the token.
    let status = fixture
        .run(
            &[
                "status",
                "--url",
                url,
                "-u",
                ADMIN_USER,
                "-p",
                ADMIN_PASSWORD,
            ],
            &[],
        )
        .success()
        .stdout();
    assert!(status.contains(url) && status.contains("true"), "{status}");
    let by_token = fixture
        .run(
            &["status", "-o", "json"],
            &[("NEBULA_URL", url), ("NEBULA_TOKEN", TOKEN)],
        )
        .success()
        .json();
    assert_eq!(by_token, json!({"api_available": true}));

    // The config file under XDG_CONFIG_HOME, with a wrong password: flags and environment
    // beat it key by key, and alone it fails.
    let config_home = fixture.home.join("xdg");
    std::fs::create_dir_all(config_home.join("nebula")).expect("config dir");
    std::fs::write(
        config_home.join("nebula/config.toml"),
        format!(
            "url = \"{url}\"\nuser = \"{ADMIN_USER}\"\npassword = \"wrong\"\noutput = \"json\"\n"
        ),
    )
    .expect("write config");
    let xdg = config_home.to_str().expect("utf-8 path");
    fixture
        .run(&["status"], &[("XDG_CONFIG_HOME", xdg)])
        .exits(4);
    let from_file = fixture
        .run(
            &["status"],
            &[
                ("XDG_CONFIG_HOME", xdg),
                ("NEBULA_PASSWORD", ADMIN_PASSWORD),
            ],
        )
        .success()
        .json();
    assert_eq!(
        from_file,
        json!({"api_available": true}),
        "output = json from the file"
    );
    fixture
        .run(
            &["status", "-p", ADMIN_PASSWORD],
            &[("XDG_CONFIG_HOME", xdg)],
        )
        .success();
    fixture
        .run(
            &["status", "-p", "wrong"],
            &[
                ("XDG_CONFIG_HOME", xdg),
                ("NEBULA_PASSWORD", ADMIN_PASSWORD),
            ],
        )
        .exits(4);
    // Without XDG_CONFIG_HOME: ~/.config/nebula/config.toml.
    let home_config = fixture.home.join(".config/nebula");
    std::fs::create_dir_all(&home_config).expect("config dir");
    std::fs::write(
        home_config.join("config.toml"),
        format!("url = \"{url}\"\ntoken = \"{TOKEN}\"\n"),
    )
    .expect("write config");
    fixture.run(&["apps", "list"], &[]).success();
}

/// Users, user groups and the audit trail through the CLI: a user group and a user made (the
/// password from stdin), the user's login allowed what its group allows, its token refreshed,
/// the audit trail paged, both deleted; every request an operation of the OpenAPI document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_user_groups_and_audit_through_the_cli() {
    let fixture = Fixture::start("users").await;
    let (user, group) = (unique_name("cli-user"), unique_name("cli-ug"));
    let (user, group) = (user.as_str(), group.as_str());
    let url = fixture.url();
    let as_user = |arguments: &[&str], password: &str| {
        fixture.run(
            arguments,
            &[
                ("NEBULA_URL", &url),
                ("NEBULA_USER", user),
                ("NEBULA_PASSWORD", password),
            ],
        )
    };

    let created = fixture.json(&[
        "user-groups",
        "create",
        group,
        "--members",
        user,
        "--app",
        "web=rw",
        "--group",
        "floor=ro",
        "--pruning",
    ]);
    assert_eq!(created["group_members"], json!([user]), "{created}");
    assert_eq!(created["apps"], json!({"web": "rw"}), "{created}");
    assert_eq!(
        created["device_groups"],
        json!({"floor": "ro"}),
        "{created}"
    );
    assert_eq!(
        (created["pruning_allowed"].clone(), created["admin"].clone()),
        (json!(true), json!(false))
    );
    fixture.admin(&["user-groups", "create", group]).exits(5);
    fixture.admin(&["user-groups", "update", group]).exits(2);

    let made = fixture
        .admin_with_stdin(
            &["users", "create", user, "--password-stdin"],
            "s3cret-pw\n",
        )
        .success()
        .stdout();
    assert!(
        made.lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>() == ["user_name", user]),
        "{made}"
    );
    assert!(!made.contains("s3cret-pw"), "{made}");
    fixture
        .admin_with_stdin(&["users", "create", user, "--password-stdin"], "other\n")
        .exits(5);
    let shown = fixture.json(&["users", "get", user]);
    assert!(
        shown["password"]
            .as_str()
            .is_some_and(|hash| hash.starts_with("$argon2id$")),
        "{shown}"
    );
    // The user logs in with the password from stdin, but is no admin until its group is.
    as_user(&["status"], "s3cret-pw").success();
    as_user(&["audit"], "wrong").exits(4);
    as_user(&["audit"], "s3cret-pw").exits(4);
    let admin = fixture.json(&["user-groups", "update", group, "--admin"]);
    assert_eq!(
        (admin["admin"].clone(), admin["group_members"].clone()),
        (json!(true), json!([user]))
    );
    as_user(&["audit"], "s3cret-pw").success();

    // A new token, shown once: it logs in.
    let refreshed = fixture
        .admin(&["users", "refresh", user])
        .success()
        .stdout();
    assert!(refreshed.contains("shown only now"), "{refreshed}");
    let token = refreshed
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no token: {refreshed}"));
    fixture
        .run(
            &["status"],
            &[("NEBULA_URL", &url), ("NEBULA_TOKEN", token)],
        )
        .success();

    // The audit trail, newest first, a page at a time.
    let page = fixture.json(&["audit", "--page-size", "2"]);
    let entries = page["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{page}");
    assert_eq!(
        (entries[0]["route"].clone(), entries[0]["name"].clone()),
        (json!("/api/v2/users/{user}/refresh"), json!(user)),
        "{page}"
    );
    let next = page["next"].as_str().expect("a next page");
    let older = fixture.json(&["audit", "--page-size", "1", "--before", next]);
    assert_eq!(older["entries"][0]["kind"], "user", "{older}");
    let table = fixture
        .admin(&["audit", "--page-size", "3"])
        .success()
        .stdout();
    assert!(table.starts_with("WHEN "), "{table}");
    assert!(
        table.contains(&format!("user_group {group}"))
            && table.contains("(older entries: --before "),
        "{table}"
    );

    assert!(
        fixture.json(&["users", "list"])["users"]
            .as_array()
            .expect("users")
            .contains(&json!(user))
    );
    assert_eq!(
        fixture.json(&["user-groups", "list"])["user_groups"],
        json!([group])
    );
    let deleted = fixture.admin(&["users", "delete", user]).success().stdout();
    assert_eq!(deleted.trim(), format!("deleted user {user}"));
    let gone = fixture.admin(&["users", "get", user]).exits(3);
    assert!(
        gone.stderr()
            .contains(&format!("user {user} does not exist")),
        "{}",
        gone.stderr()
    );
    fixture.admin(&["users", "refresh", user]).exits(3);
    // Deleting the user took it out of its group.
    assert_eq!(
        fixture.json(&["user-groups", "get", group])["group_members"],
        json!([])
    );
    fixture.admin(&["user-groups", "delete", group]).success();
    fixture.admin(&["user-groups", "get", group]).exits(3);
    fixture.admin(&["user-groups", "delete", group]).exits(3);

    let document = fixture.openapi().await;
    let (metrics, routes) = fixture.requests_are_operations(&document).await;
    assert!(routes >= 10, "{metrics}");
}

async fn logs_in(url: &str) -> bool {
    lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .is_ok()
}

/// A device's own broker login through the CLI: minted (the URL logs in), minted again (the
/// old password stops working), revoked (no login any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_credentials_through_the_cli() {
    let fixture = Fixture::start("credential").await;
    let device = unique_name("cli-cred-dev");
    let _cleanup = nebula_tests::vhost::DeviceUser::of(&device);
    // A scope is required, and only one kind of it.
    fixture.admin(&["devices", "credential", &device]).exits(2);
    fixture
        .admin(&[
            "devices",
            "credential",
            &device,
            "--group",
            "g",
            "--apps",
            "a",
        ])
        .exits(2);
    let first = fixture.json(&["devices", "credential", &device, "--group", "edge"]);
    assert_eq!(first["device_id"], device.as_str(), "{first}");
    let first_url = first["amqp_url"].as_str().expect("amqp_url").to_string();
    assert!(
        logs_in(&first_url).await,
        "the minted login works: {first_url}"
    );
    // Minted again (app mode this time), as a table: the new URL replaces the old one.
    let table = fixture
        .admin(&["devices", "credential", &device, "--apps", "a,b"])
        .success()
        .stdout();
    let second_url = table
        .split_whitespace()
        .find(|word| word.starts_with("amqp://"))
        .unwrap_or_else(|| panic!("no URL in the table: {table}"))
        .to_string();
    assert_ne!(first_url, second_url);
    assert!(
        !logs_in(&first_url).await,
        "the replaced password still works"
    );
    assert!(logs_in(&second_url).await, "the new login works");
    let revoked = fixture.json(&["devices", "revoke", &device]);
    assert_eq!(revoked["had_credential"], true, "{revoked}");
    assert!(!logs_in(&second_url).await, "a revoked device logged in");
    let again = fixture.json(&["devices", "revoke", &device]);
    assert_eq!(again["had_credential"], false, "{again}");

    // Provisioning tokens: made (shown once), listed without their secret, deleted.
    fixture.admin(&["tokens", "create"]).exits(2);
    fixture
        .admin(&["tokens", "create", "--group", "edge", "--uses", "0"])
        .exits(2);
    let made = fixture.json(&[
        "tokens",
        "create",
        "--group",
        "edge",
        "--uses",
        "3",
        "--expires-in",
        "600",
    ]);
    let token = made["token"].as_str().expect("token");
    let token_id = made["token_id"].as_str().expect("token_id");
    assert_eq!(
        (made["uses"].as_u64(), made["uses_left"].as_u64()),
        (Some(3), Some(3))
    );
    let table = fixture.admin(&["tokens", "list"]).success().stdout();
    assert!(
        table.contains(token_id) && table.contains("group edge") && table.contains("3/3"),
        "{table}"
    );
    let secret = token.split_once('.').expect("id.secret").1;
    assert!(
        !table.contains(secret),
        "the list shows the secret: {table}"
    );
    let deleted = fixture.json(&["tokens", "delete", token_id]);
    assert_eq!(deleted["deleted"], true, "{deleted}");
    fixture.admin(&["tokens", "delete", token_id]).exits(3);
    let listed = fixture.json(&["tokens", "list"]);
    assert_eq!(
        listed["provisioning_tokens"],
        serde_json::json!([]),
        "{listed}"
    );
}

/// The device inventory and rollout status through the CLI, with a real agent on the Docker
/// engine: the device shows up online with its app at the current revision, `rollout status
/// --watch` ends once a change reached it, every document the CLI prints fits the OpenAPI
/// document, every request it made is an operation of it, and a stopped agent is offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_rollout_through_the_cli() {
    let docker = services::docker().expect("docker");
    nebula_tests::docker::remove_leftovers(&docker, "cli-fleet", Some("cli-fleet-dev"))
        .await
        .expect("remove leftovers");
    let fixture = Fixture::start("fleet").await;
    let (app, group, device) = (
        unique_name("cli-fleet-app"),
        unique_name("cli-fleet-g"),
        unique_name("cli-fleet-dev"),
    );
    let (app, group, device) = (app.as_str(), group.as_str(), device.as_str());
    let image = |version| services::test_image(version);
    fixture
        .admin(&["apps", "create", app, "--image", &image(1)])
        .success();
    fixture
        .admin(&["groups", "create", group, "--apps", app])
        .success();
    // Reports every second (the fallback presence rule, without a broker answer, would say
    // offline after 3 s of silence).
    let agent = Agent::start_with(
        device,
        &AgentMode::Group(group.to_string()),
        &fixture.vhost.amqp_url(),
        &fixture.directory,
        &[("NEBULA_REPORT_INTERVAL_SECS", "1")],
    )
    .await;
    let document = fixture.openapi().await;

    // The device appears, online, its app current at revision 1.
    let at = |revision: u64| {
        move |list: &Value| {
            list["devices"].as_array().is_some_and(|devices| {
                devices.iter().any(|entry| {
                    entry["device_id"] == device
                        && entry["online"] == true
                        && entry["apps"][0]["rollout"] == "current"
                        && entry["apps"][0]["applied_revision"] == revision
                })
            })
        }
    };
    let list_path = format!("/api/v2/devices?limit=100&device_group={group}");
    let listed = wait_for(
        "the device online at revision 1",
        Duration::from_secs(120),
        || {
            let list = fixture.json(&["devices", "list", "--group", group]);
            let done = at(1)(&list);
            async move { done.then_some(list) }
        },
    )
    .await
    .expect("device listed");
    let errors = openapi::check_answer(&document, "get", &list_path, 200, &listed);
    assert!(errors.is_empty(), "{errors:#?}");
    // The container as last reported: a report can carry an engine listing taken (and shared
    // for up to a second) just before the container started, so wait for one that shows it
    // running.
    let shown = wait_for(
        "the device's container reported running",
        Duration::from_secs(30),
        || {
            let shown = fixture.json(&["devices", "get", device]);
            let running = shown["apps"][0]["containers"][0]["state"] == "running";
            async move { running.then_some(shown) }
        },
    )
    .await
    .expect("container reported running");
    let errors = openapi::check_answer(
        &document,
        "get",
        &format!("/api/v2/devices/{device}"),
        200,
        &shown,
    );
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(shown["report_interval_secs"], 1, "{shown}");
    assert_eq!(shown["mode"], "group");
    assert!(
        shown["target"]
            .as_str()
            .is_some_and(|target| target.contains("linux")),
        "{shown}"
    );
    assert!(
        shown["kernel"]
            .as_str()
            .is_some_and(|kernel| kernel.starts_with("Linux ")),
        "{shown}"
    );
    assert!(shown["docker_version"].is_string(), "{shown}");
    assert_eq!(
        shown["apps"][0]["containers"][0]["restart_count"], 0,
        "{shown}"
    );
    let table = fixture.admin(&["devices", "list"]).success().stdout();
    assert!(
        table.contains(device) && table.contains(&format!("{app} 1/1 current")),
        "{table}"
    );

    // A change, followed until it reached the device.
    fixture
        .admin(&["apps", "update", app, "--image", &image(2)])
        .success();
    let watched = fixture
        .admin(&["rollout", "status", group, "--watch", "--timeout", "120"])
        .success()
        .stdout();
    assert!(watched.contains("1/1 current, 0 behind"), "{watched}");
    let list = fixture.json(&["devices", "list", "--group", group]);
    assert!(at(2)(&list), "after --watch ended: {list}");
    let status = fixture.json(&["rollout", "status", app]);
    let errors = openapi::check_answer(
        &document,
        "get",
        &format!("/api/v2/apps/{app}/status"),
        200,
        &status,
    );
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(
        (status["current"].clone(), status["done"].clone()),
        (json!(1), json!(true))
    );

    // Every request the CLI made (counted by route template in /metrics) is an operation
    // of the document.
    let (metrics, routes) = fixture.requests_are_operations(&document).await;
    assert!(routes >= 6, "{metrics}");
    assert!(
        metrics.contains("nebula_devices{state=\"online\"} 1\n"),
        "{metrics}"
    );

    // The agent goes away: offline once the broker dropped its connection, and with it its
    // queue (SIGKILL closes the socket: at once), and the last answer is older than
    // PRESENCE_TTL (5 s).
    agent.process.kill_and_stay_down().await;
    let stopped = std::time::Instant::now();
    wait_for("the device offline", Duration::from_secs(30), || {
        let shown = fixture.json(&["devices", "get", device]);
        async move { (shown["online"] == false).then_some(()) }
    })
    .await
    .expect("offline");
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "offline only after {:?}",
        stopped.elapsed()
    );
    let offline = fixture.json(&["devices", "list", "--offline"]);
    assert_eq!(offline["devices"][0]["device_id"], device, "{offline}");
    fixture
        .admin(&["devices", "get", "no-such-device"])
        .exits(3);
    nebula_tests::docker::remove_app_containers(&docker, app)
        .await
        .expect("remove containers");
}
