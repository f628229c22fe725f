//! The agent over `amqps://` against the real broker's TLS listener (`scripts/services.sh`:
//! 127.0.0.1:5671, certificates of the development CA, a client certificate required):
//! it converges and follows a change with the fleet's CA and its client certificate; it
//! refuses a broker whose certificate its trust store does not vouch for; the broker refuses
//! it without a client certificate; bad TLS files stop it at start with exit code 64. A device with its own broker credential converges over amqps and is cut off when it is
//! revoked; an agent enrols with a provisioning token over HTTPS at first boot. And the
//! control plane over HTTPS (`NEBULA_TLS_CERT`/`NEBULA_TLS_KEY`), driven by the CLI with
//! `--ca-file`, which refuses it without.

mod support;

use nebula_tests::binaries::binary;
use nebula_tests::services::{test_image, tls_file};
use nebula_tests::system::{ADMIN_PASSWORD, ADMIN_USER, Agent, AgentMode, ControlPlane, StoreKind};
use nebula_tests::{unique_name, wait_for};
use serde_json::json;
use std::time::{Duration, Instant};
use support::{Scenario, borrowed};

/// How long a refused agent is given to show why in its log (its first attempt is at once).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(30);

fn ca_and_client_certificate() -> Vec<(&'static str, String)> {
    vec![
        ("NEBULA_AMQP_CA_FILE", tls_file("ca.pem")),
        ("NEBULA_AMQP_CERT_FILE", tls_file("client.pem")),
        ("NEBULA_AMQP_KEY_FILE", tls_file("client.key")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_converges_over_amqps_with_a_client_certificate() {
    let scenario = Scenario::new("tls");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("tls");
    let group = unique_name("group");
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");

    let start = Instant::now();
    let env = ca_and_client_certificate();
    let agent = Agent::start_with(
        &unique_name("tls-device"),
        &AgentMode::Group(group),
        &scenario.vhost.amqps_url(),
        &scenario.directory,
        &borrowed(&env),
    )
    .await;
    scenario.converged(&app, 1, 1).await;
    scenario.report("create over amqps", start);
    // A change after the boot flow arrives over the TLS connection too.
    let start = Instant::now();
    rest.update_app(&app, json!({"docker_image": test_image(2)}))
        .await
        .expect("update");
    scenario.converged(&app, 1, 2).await;
    scenario.report("update over amqps", start);
    let log = agent.process.log();
    assert!(
        log.contains("client certificate"),
        "the agent says what it trusts and presents: {log}"
    );
    assert_eq!(agent.process.exits(), 0, "{log}");
}

/// A device with its own broker credential (issue 16), minted through the API over amqps:
/// the agent converges with it and follows a change; revoked, its connection is closed,
/// it cannot log in again, and its app keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_its_own_credential_converges_and_is_cut_off_when_revoked() {
    let scenario = Scenario::new("device-credential");
    let (control_plane, app, group) = credentials_fleet(&scenario, "enrolled", &[]).await;
    let rest = control_plane.rest();
    let device = unique_name("enrolled-device");
    let _cleanup = nebula_tests::vhost::DeviceUser::of(&device);
    let credentials = format!("/devices/{device}/credentials");
    let minted = rest
        .post(&credentials, json!({"device_group": group}))
        .await
        .expect("mint")
        .ok()
        .expect("minted");
    let url = minted["amqp_url"].as_str().expect("amqp_url").to_string();
    assert!(
        url.starts_with(&format!("amqps://nebula-device-{device}:")),
        "{url}"
    );

    let start = Instant::now();
    let env = ca_and_client_certificate();
    let agent = Agent::start_with(
        &device,
        &AgentMode::Group(group.clone()),
        &url,
        &scenario.directory,
        &borrowed(&env),
    )
    .await;
    scenario.converged(&app, 1, 1).await;
    scenario.report("create with the device's own credential", start);
    let start = Instant::now();
    rest.update_app(&app, json!({"docker_image": test_image(2)}))
        .await
        .expect("update");
    scenario.converged(&app, 1, 2).await;
    scenario.report("update with the device's own credential", start);
    let log = agent.process.log();
    assert!(
        !log.contains("not this device's own credential"),
        "the agent took its own login for a shared one: {log}"
    );

    let start = Instant::now();
    let revoked = rest
        .delete(&credentials)
        .await
        .expect("revoke")
        .ok()
        .expect("revoked");
    assert_eq!(revoked["had_credential"], true, "{revoked}");
    let log = wait_for(
        "the revoked agent refused by the broker",
        Duration::from_secs(60),
        || {
            let log = agent.process.log();
            async move { log.contains("ACCESS_REFUSED").then_some(log) }
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}: {}", agent.process.log()));
    scenario.report("revoked: connection closed, login refused", start);
    assert!(log.contains("lost the broker connection"), "{log}");
    // The device keeps running what it had.
    scenario.converged(&app, 1, 2).await;
}

/// Enrolment at first boot and signed changes (issue 16): an admin makes a provisioning token;
/// an agent given only the token and the control plane's `https://` URL with its CA — no
/// broker URL, no group — enrols, keeps its credential and the control plane's public key
/// (mode 0600) and converges over amqps. A change forged with the broker's admin login —
/// unsigned, or signed with another key — is dropped. Restarted with the token used up, the
/// agent runs on the kept credential and follows a genuine (signed) change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrols_with_a_provisioning_token_at_first_boot_and_keeps_its_credential() {
    use std::os::unix::fs::PermissionsExt;

    let scenario = Scenario::new("enrolment");
    let (cert, key) = (tls_file("server.pem"), tls_file("server.key"));
    let signing_key = signing_key_file(&scenario.directory);
    let (control_plane, app, group) = credentials_fleet(
        &scenario,
        "enrolment",
        &[
            ("NEBULA_TLS_CERT", &cert),
            ("NEBULA_TLS_KEY", &key),
            ("NEBULA_SIGNING_KEY_FILE", &signing_key),
        ],
    )
    .await;
    let rest = control_plane.rest();
    let made = rest
        .post("/provisioning_tokens", json!({"device_group": group}))
        .await
        .expect("make a token")
        .ok()
        .expect("token made");
    let token = made["token"].as_str().expect("token").to_string();
    let device = unique_name("enrolling-device");
    let _cleanup = nebula_tests::vhost::DeviceUser::of(&device);

    let mut env = ca_and_client_certificate();
    env.extend([
        ("NEBULA_PROVISIONING_TOKEN", token.clone()),
        ("NEBULA_CONTROL_PLANE_URL", control_plane.url()),
        ("NEBULA_CONTROL_PLANE_CA_FILE", tls_file("ca.pem")),
    ]);
    let start = Instant::now();
    let agent = Agent::start_with(
        &device,
        &AgentMode::Enrolled,
        "",
        &scenario.directory,
        &borrowed(&env),
    )
    .await;
    let before = scenario.converged(&app, 1, 1).await;
    scenario.report("first boot: enrol with a token, then converge", start);
    let kept = agent.state_dir.join("credential.json");
    let mode = std::fs::metadata(&kept)
        .expect("the credential is kept in the state dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", kept.display());
    let credential: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&kept).expect("read")).expect("json");
    assert_eq!(credential["device_id"], device.as_str());
    assert_eq!(credential["device_group"], group.as_str());
    let pinned = credential["signing_key"]
        .as_str()
        .expect("the key is pinned");
    assert!(
        control_plane.process.log().contains(pinned),
        "the pinned key is not the control plane's: {pinned}"
    );
    assert!(
        credential["amqp_url"]
            .as_str()
            .is_some_and(|url| url.starts_with(&format!("amqps://nebula-device-{device}:"))),
        "{credential}"
    );
    let log = agent.process.log();
    assert!(log.contains("enrolled"), "{log}");
    assert!(!log.contains(&token), "the token is in the agent's log");
    assert!(log.contains("pinned control plane key"), "{log}");

    // Forged with the broker's admin login: the group deleted, unsigned and with a signature
    // of another key. Each would stop the app; the agent drops both.
    let admin = lapin::Connection::connect(
        &scenario.vhost.amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("admin connection");
    let channel = admin.create_channel().await.expect("channel");
    let forged = nebula_protocol::encode(&nebula_protocol::Message::DeviceGroupDeleted {
        device_group: nebula_protocol::Name::new(group.as_str()).expect("name"),
        device_group_id: u64::MAX / 2,
        incarnation: u64::MAX / 2,
    });
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        nebula_protocol::signing::SIGNATURE_HEADER.into(),
        lapin::types::AMQPValue::LongString(vec![7u8; 64].into()),
    );
    for properties in [
        lapin::BasicProperties::default(),
        lapin::BasicProperties::default().with_headers(headers),
    ] {
        channel
            .basic_publish(
                nebula_protocol::names::group_exchange(
                    &nebula_protocol::Name::new(group.as_str()).expect("name"),
                )
                .as_str()
                .into(),
                "".into(),
                lapin::options::BasicPublishOptions::default(),
                &forged,
                properties,
            )
            .await
            .expect("publish");
    }
    let rejected = "rejecting a change that is not signed by the control plane";
    wait_for("both forgeries rejected", Duration::from_secs(30), || {
        let log = agent.process.log();
        async move { (log.matches(rejected).count() >= 2).then_some(()) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}: {}", agent.process.log()));
    let log = agent.process.log();
    assert!(log.contains("no signature"), "{log}");
    assert!(log.contains("does not verify"), "{log}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The very same container, never stopped (a forgery applied and then undone by a re-sync
    // would show a new one).
    let after = scenario.converged(&app, 1, 1).await;
    assert_eq!(
        (&after[0].id, &after[0].started_at),
        (&before[0].id, &before[0].started_at)
    );
    admin.close(200, "done".into()).await.expect("close");
    let listed = rest
        .get("/provisioning_tokens")
        .await
        .expect("list")
        .ok()
        .expect("listed");
    assert_eq!(listed["provisioning_tokens"][0]["uses_left"], 0, "{listed}");
    agent.process.stop(Duration::from_secs(10)).await;

    // Again, the token used up: the kept credential, no second enrolment.
    let agent = Agent::start_with(
        &device,
        &AgentMode::Enrolled,
        "",
        &scenario.directory,
        &borrowed(&env),
    )
    .await;
    let start = Instant::now();
    rest.update_app(&app, json!({"docker_image": test_image(2)}))
        .await
        .expect("update");
    scenario.converged(&app, 1, 2).await;
    scenario.report("update after a restart on the kept credential", start);
    let log = agent.process.log();
    assert!(log.contains("already enrolled"), "{log}");
}

/// A control plane that makes devices' own credentials (for the broker's amqps:// listener),
/// with `extra` environment, and a group `app` (image 1) is in: (control plane, app, group).
async fn credentials_fleet(
    scenario: &Scenario,
    app: &str,
    extra: &[(&str, &str)],
) -> (ControlPlane, String, String) {
    let management = nebula_tests::services::rabbitmq_management_url();
    let device_url = scenario.vhost.amqps_url();
    let mut env = vec![
        ("NEBULA_RABBITMQ_MANAGEMENT_URL", management.as_str()),
        ("NEBULA_DEVICE_AMQP_URL", device_url.as_str()),
    ];
    env.extend_from_slice(extra);
    let control_plane = ControlPlane::start_with(
        &format!("cp-{app}"),
        &StoreKind::Embedded(scenario.directory.join("store-cp")),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
        &env,
    )
    .await
    .expect("control plane starts");
    let rest = control_plane.rest();
    let app = scenario.app_name(app);
    let group = unique_name("group");
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");
    (control_plane, app, group)
}

/// A fresh ed25519 key for the control plane to sign with (PKCS#8 PEM, as `openssl genpkey`
/// makes it for an operator).
fn signing_key_file(directory: &std::path::Path) -> String {
    let path = directory.join("signing.key");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&path)
        .status()
        .expect("run openssl");
    assert!(made.success(), "openssl genpkey failed");
    path.to_string_lossy().into_owned()
}

/// Starts an agent on the TLS listener with `env` and returns its log once it shows `needle`.
async fn refused(scenario: &Scenario, env: &[(&'static str, String)], needle: &str) -> String {
    let agent = Agent::start_with(
        &unique_name("tls-refused"),
        &AgentMode::Group(unique_name("group")),
        &scenario.vhost.amqps_url(),
        &scenario.directory,
        &borrowed(env),
    )
    .await;
    let log = wait_for(needle, REFUSAL_DEADLINE, || async {
        let log = agent.process.log();
        log.contains(needle).then_some(log)
    })
    .await
    .unwrap_or_else(|error| panic!("{error}: {}", agent.process.log()));
    assert!(
        !log.contains("connected to the broker"),
        "the agent got a connection anyway: {log}"
    );
    agent.process.stop(Duration::from_secs(10)).await;
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_outside_the_trust_store_is_refused() {
    let scenario = Scenario::new("tls-unknown-ca");
    // No NEBULA_AMQP_CA_FILE: the system's authorities (Debian's ca-certificates), which do
    // not include the development CA. The client certificate is there, so the refusal is the
    // agent's.
    let env = vec![
        ("NEBULA_AMQP_CERT_FILE", tls_file("client.pem")),
        ("NEBULA_AMQP_KEY_FILE", tls_file("client.key")),
    ];
    let log = refused(&scenario, &env, "UnknownIssuer").await;
    assert!(
        log.contains("the system's certificate authorities"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_refuses_an_agent_without_a_client_certificate() {
    let scenario = Scenario::new("tls-no-client-cert");
    let env = vec![("NEBULA_AMQP_CA_FILE", tls_file("ca.pem"))];
    // rustls reports the broker's alert: the handshake needed a certificate.
    refused(&scenario, &env, "CertificateRequired").await;
}

#[test]
fn bad_tls_files_stop_the_agent_with_exit_code_64() {
    let directory = nebula_tests::system::scratch_dir("tls-config");
    let not_a_certificate = directory.join("garbage.pem");
    std::fs::write(&not_a_certificate, "not a certificate\n").expect("write");
    let missing = directory.join("missing.pem");
    let cases: [(&str, &[(&str, String)]); 4] = [
        (
            "NEBULA_AMQP_CA_FILE",
            &[("NEBULA_AMQP_CA_FILE", missing.display().to_string())],
        ),
        (
            "NEBULA_AMQP_CA_FILE",
            &[(
                "NEBULA_AMQP_CA_FILE",
                not_a_certificate.display().to_string(),
            )],
        ),
        (
            "NEBULA_AMQP_KEY_FILE",
            &[("NEBULA_AMQP_CERT_FILE", tls_file("client.pem"))],
        ),
        // The CA's certificate with the client's key: they do not belong together.
        (
            "NEBULA_AMQP_KEY_FILE",
            &[
                ("NEBULA_AMQP_CERT_FILE", tls_file("ca.pem")),
                ("NEBULA_AMQP_KEY_FILE", tls_file("client.key")),
            ],
        ),
    ];
    for (variable, env) in cases {
        let output = std::process::Command::new(binary("nebula-agent"))
            .env_clear()
            .env("NEBULA_DEVICE_ID", unique_name("tls-config"))
            .env("NEBULA_DEVICE_GROUP", "group")
            .env("NEBULA_AMQP_URL", nebula_tests::services::amqps_url())
            .env("NEBULA_STATE_DIR", directory.join("state"))
            .envs(env.iter().map(|(key, value)| (*key, value)))
            .output()
            .expect("run the agent");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{env:?}: {stderr}");
        assert!(
            stderr.contains(variable),
            "{env:?} names {variable}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_talks_https_to_the_control_plane_with_the_fleet_ca() {
    let scenario = Scenario::new("tls-https");
    let store = StoreKind::Embedded(scenario.directory.join("store"));
    let (cert, key) = (tls_file("server.pem"), tls_file("server.key"));
    let control_plane = ControlPlane::start_with(
        "cp-https",
        &store,
        &scenario.vhost.amqp_url(),
        &scenario.directory,
        &[("NEBULA_TLS_CERT", &cert), ("NEBULA_TLS_KEY", &key)],
    )
    .await
    .expect("control plane starts over HTTPS");
    let url = control_plane.url();
    assert!(url.starts_with("https://"), "{url}");
    let app = scenario.app_name("https");
    let ca = tls_file("ca.pem");
    let cli = |arguments: &[&str], ca_file: Option<&str>| {
        let mut command = std::process::Command::new(binary("nebula"));
        command
            .args(arguments)
            .env_clear()
            .env("HOME", &scenario.directory)
            .env("NEBULA_URL", &url)
            .env("NEBULA_USER", ADMIN_USER)
            .env("NEBULA_PASSWORD", ADMIN_PASSWORD);
        if let Some(ca_file) = ca_file {
            command.env("NEBULA_CA_FILE", ca_file);
        }
        command.output().expect("run nebula")
    };
    let image = test_image(1);
    let created = cli(&["apps", "create", &app, "--image", &image], Some(&ca));
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let shown = cli(&["apps", "get", &app, "-o", "json"], Some(&ca));
    let document: serde_json::Value = serde_json::from_slice(&shown.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&shown.stderr)));
    assert_eq!(document["docker_image"], image.as_str(), "{document}");
    // Without the fleet's CA the CLI's built-in authorities do not vouch for the certificate.
    let refused = cli(&["apps", "get", &app], None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    // A plain-HTTP client gets no API out of the TLS port.
    let plain = cli(
        &[
            "apps",
            "get",
            &app,
            "--url",
            &url.replacen("https", "http", 1),
        ],
        Some(&ca),
    );
    assert!(!plain.status.success());
}
