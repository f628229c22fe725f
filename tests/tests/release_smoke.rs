//! The release agents on their real targets: the aarch64 and armv7 builds of
//! `cargo xtask dist` run under qemu-user against the local RabbitMQ, control plane and
//! Docker engine (the engine socket is just a unix socket), sync a group, run its app's
//! container and report, the aarch64 one over amqps (TLS, client certificate) and over MQTT;
//! the riscv64 build prints its version under qemu. Then the resident memory of a native
//! release agent idle with ten containers under management, over AMQP and over MQTT, printed
//! as figures. And the static release CLI, natively and under qemu, against a control plane.
//!
//! Ignored in a plain `cargo test`: they need the release artifacts. `scripts/test.sh`
//! builds them and runs these with `--ignored`.

mod support;

use nebula_tests::services::{test_image, tls_file};
use nebula_tests::system::{Agent, AgentMode};
use nebula_tests::unique_name;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::Scenario;
use support::amqp::{ReportTap, applied};

fn release_binary(triple: &str) -> PathBuf {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
        .join(triple)
        .join("agent-release/nebula-agent");
    assert!(
        path.exists(),
        "{} missing: run `cargo xtask dist --target {triple}` first",
        path.display()
    );
    path
}

/// How a smoke-tested agent reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Amqp,
    /// The broker's TLS listener, with the development CA and a client certificate.
    Amqps,
    /// RabbitMQ's MQTT plugin (`NEBULA_TRANSPORT=mqtt`).
    Mqtt,
}

impl Link {
    /// The broker URL and the extra environment of an agent on this link, for `scenario`.
    fn environment(self, scenario: &Scenario) -> (String, Vec<(&'static str, String)>) {
        match self {
            Self::Amqp => (scenario.vhost.amqp_url(), Vec::new()),
            Self::Amqps => (
                scenario.vhost.amqps_url(),
                vec![
                    ("NEBULA_AMQP_CA_FILE", tls_file("ca.pem")),
                    ("NEBULA_AMQP_CERT_FILE", tls_file("client.pem")),
                    ("NEBULA_AMQP_KEY_FILE", tls_file("client.key")),
                ],
            ),
            Self::Mqtt => (
                scenario.vhost.amqp_url(),
                vec![
                    ("NEBULA_TRANSPORT", "mqtt".to_string()),
                    (
                        "NEBULA_MQTT_URL",
                        format!("mqtt://guest:guest@127.0.0.1:1883/{}", scenario.vhost.name),
                    ),
                ],
            ),
        }
    }
}

/// Runs the `triple` agent through `launcher` and checks it converges and reports.
async fn smoke(triple: &str, launcher: &[&str], link: Link) {
    let scenario = Scenario::new(&format!(
        "qemu-{}",
        triple.split('-').next().unwrap_or(triple)
    ));
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("qemu");
    let group = unique_name("group");
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let device = unique_name("qemu-device");
    let mut tap = ReportTap::new(&scenario.vhost.amqp_url(), &device).await;
    let mut command: Vec<String> = launcher.iter().map(|part| part.to_string()).collect();
    command.push(release_binary(triple).to_string_lossy().into_owned());
    check_version(&command, triple);

    let (url, env) = link.environment(&scenario);
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();

    let start = Instant::now();
    let agent = Agent::start_command(
        &device,
        &AgentMode::Group(group),
        &url,
        &scenario.directory,
        &env,
        &command,
    )
    .await;
    scenario.converged(&app, 1, 1).await;
    let report = tap
        .wait(support::DEADLINE, |report| applied(report, &app, 1))
        .await;
    scenario.report(&format!("{triple} under {} ({link:?})", launcher[0]), start);
    assert_eq!(report.device_id.as_str(), device);
    assert!(
        report.resources.memory_total_bytes > 0,
        "the report carries device resources: {report:?}"
    );
    assert_eq!(agent.process.exits(), 0, "{}", agent.process.log());
}

/// `--version` names the version and the target the binary was built for.
fn check_version(command: &[String], triple: &str) {
    let output = std::process::Command::new(&command[0])
        .args(&command[1..])
        .arg("--version")
        .output()
        .expect("run --version");
    let line = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "--version failed: {output:?}");
    // Every release agent speaks amqps:// and MQTT (`cargo xtask dist` builds the `tls` and
    // `mqtt` features in).
    assert!(
        line.starts_with(concat!("nebula-agent ", env!("CARGO_PKG_VERSION")))
            && line.contains(triple)
            && line.contains("features: amqp,tls,mqtt"),
        "--version of the {triple} build: {line}"
    );
    eprintln!("{triple}: {}", line.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs `cargo xtask dist`; run by scripts/test.sh"]
async fn aarch64_musl_agent_runs_under_qemu() {
    // Over amqps: the release agents are built with TLS, and this is the primary target.
    smoke("aarch64-unknown-linux-musl", &["qemu-aarch64"], Link::Amqps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs `cargo xtask dist`; run by scripts/test.sh"]
async fn aarch64_musl_agent_runs_over_mqtt_under_qemu() {
    smoke("aarch64-unknown-linux-musl", &["qemu-aarch64"], Link::Mqtt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs `cargo xtask dist`; run by scripts/test.sh"]
async fn armv7_gnueabihf_agent_runs_under_qemu() {
    // Dynamically linked against glibc: qemu needs the armhf loader and libc (libc6-armhf-cross).
    smoke(
        "armv7-unknown-linux-gnueabihf",
        &["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"],
        Link::Amqp,
    )
    .await;
}

/// The RISC-V build starts under qemu and identifies itself (the full smoke test runs for
/// the two ARM targets, the boards most fleets have).
#[test]
#[ignore = "needs `cargo xtask dist`; run by scripts/test.sh"]
fn riscv64_agent_starts_under_qemu() {
    let triple = "riscv64gc-unknown-linux-gnu";
    let binary = release_binary(triple).to_string_lossy().into_owned();
    check_version(
        &[
            "qemu-riscv64".into(),
            "-L".into(),
            "/usr/riscv64-linux-gnu".into(),
            binary,
        ],
        triple,
    );
}

/// The static release CLI of `cargo xtask dist`, x86_64 natively and aarch64 under qemu-user,
/// against a real control plane: status, then an app created, read and deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs `cargo xtask dist`; run by scripts/test.sh"]
async fn release_cli_runs_on_both_targets() {
    use nebula_tests::system::{ADMIN_PASSWORD, ADMIN_USER};
    let scenario = Scenario::new("release-cli");
    let control_plane = scenario.control_plane("cp").await;
    let url = format!("http://{}", control_plane.address);
    for (triple, launcher) in [
        ("x86_64-unknown-linux-musl", None),
        ("aarch64-unknown-linux-musl", Some("qemu-aarch64")),
    ] {
        let binary = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
            .join(triple)
            .join("cli-release/nebula");
        assert!(
            binary.exists(),
            "{} missing: run `cargo xtask dist --only cli --target {triple}` first",
            binary.display()
        );
        let nebula = |arguments: &[&str]| {
            let mut command = match launcher {
                Some(qemu) => {
                    let mut command = std::process::Command::new(qemu);
                    command.arg(&binary);
                    command
                }
                None => std::process::Command::new(&binary),
            };
            let output = command
                .args(arguments)
                .env_clear()
                .env("HOME", &scenario.directory)
                .env("NEBULA_URL", &url)
                .env("NEBULA_USER", ADMIN_USER)
                .env("NEBULA_PASSWORD", ADMIN_PASSWORD)
                .output()
                .expect("run the release CLI");
            assert!(
                output.status.success(),
                "{triple}: nebula {arguments:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap_or_else(|error| {
                panic!("{triple}: nebula {arguments:?} printed no JSON ({error})")
            })
        };
        assert_eq!(
            nebula(&["status", "-o", "json"]),
            json!({"api_available": true})
        );
        let app = scenario.app_name("release-cli");
        let image = test_image(1);
        nebula(&[
            "apps",
            "create",
            &app,
            "--image",
            &image,
            "--running=false",
            "-o",
            "json",
        ]);
        assert_eq!(
            nebula(&["apps", "get", &app, "-o", "json"])["docker_image"],
            json!(image)
        );
        assert_eq!(nebula(&["apps", "delete", &app, "-o", "json"]), json!({}));
        eprintln!("{triple}: the release CLI created, read and deleted {app}");
    }
}

/// Resident memory of the native (x86_64 musl) release agent, idle, managing ten
/// containers, over AMQP. Measured natively: under qemu-user the figure would be the
/// emulator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs `cargo xtask dist`; run by scripts/test.sh"]
async fn idle_agent_footprint_with_ten_containers() {
    idle_footprint(Link::Amqp).await;
}

/// The same over MQTT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs `cargo xtask dist`; run by scripts/test.sh"]
async fn idle_mqtt_agent_footprint_with_ten_containers() {
    idle_footprint(Link::Mqtt).await;
}

async fn idle_footprint(link: Link) {
    let scenario = Scenario::new(&format!("footprint-{link:?}").to_lowercase());
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("footprint");
    let group = unique_name("group");
    rest.create_app(
        &app,
        json!({"docker_image": test_image(1), "containers_per": {"server": 10}}),
    )
    .await
    .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    let device = unique_name("footprint-device");
    let binary = release_binary("x86_64-unknown-linux-musl")
        .to_string_lossy()
        .into_owned();
    let (url, env) = link.environment(&scenario);
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    let agent = Agent::start_command(
        &device,
        &AgentMode::Group(group),
        &url,
        &scenario.directory,
        &env,
        &[binary],
    )
    .await;
    scenario.converged(&app, 10, 1).await;
    // Idle: converged, then a few report periods with nothing to do.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let resident = agent.process.resident_kib().await.expect("agent running");
    eprintln!(
        "footprint: idle x86_64-musl agent over {link:?} with 10 containers: {:.2} MiB resident (target 8 MiB)",
        resident as f64 / 1024.0
    );
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/e2e-convergence.txt"
    ));
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| {
            std::io::Write::write_all(
                &mut file,
                format!(
                    "footprint idle agent over {link:?}, 10 containers: {resident} KiB resident\n"
                )
                .as_bytes(),
            )
        });
    // The budget of issue 18: a board with 512 MiB runs the agent beside its apps.
    assert!(
        resident <= 8 * 1024,
        "idle agent with 10 containers: {resident} KiB resident, over the 8 MiB budget"
    );
    assert_eq!(agent.process.exits(), 0, "{}", agent.process.log());
}
