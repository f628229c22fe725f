//! What the agent's tests on the real Docker engine share: a runtime, images built for one
//! test, cleanup of what a test created, and a fake registry that the engine pulls from.
//!
//! Everything made here carries the label `nebula.test=agent` and a name unique to the test
//! run, and is removed on drop: the tests pass while other tests and the quick start use the
//! same engine, and never touch what they did not create.

use nebula_agent::config::RegistryAuth;
use nebula_agent::runtime::docker::DockerRuntime;
use nebula_protocol::placement::DeviceCapacity;
use nebula_protocol::{AppConfig, ContainersPer, Name};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::{env_or, unique};

/// The label on every image and container these tests make themselves.
pub const LABEL_TEST: &str = "nebula.test";
pub const TEST_LABEL_VALUE: &str = "agent";

pub const CAPACITY: DeviceCapacity = DeviceCapacity {
    cpu_cores: 2,
    memory_mb: 2048,
};

pub fn registry() -> String {
    env_or("NEBULA_TEST_REGISTRY", "127.0.0.1:5000")
}

/// `$NEBULA_TEST_IMAGE:<version>`.
pub fn test_image(version: u32) -> String {
    format!("{}/nebula/test:{version}", registry())
}

pub fn registry_auth() -> RegistryAuth {
    RegistryAuth {
        host: registry(),
        user: env_or("NEBULA_TEST_REGISTRY_USER", "nebula"),
        password: env_or("NEBULA_TEST_REGISTRY_PASSWORD", "nebula-registry"),
    }
}

/// A fresh runtime on the engine of `DOCKER_HOST` (nothing negotiated yet).
pub fn docker_runtime() -> DockerRuntime {
    let host = env_or("DOCKER_HOST", "unix:///var/run/docker.sock");
    DockerRuntime::connect(&host, Some(registry_auth()), CAPACITY).expect("docker")
}

pub fn unique_name(prefix: &str) -> Name {
    Name::new(unique(prefix)).expect("name")
}

/// An app of `count` containers of `image` at `revision`, on the `nebula` network only.
pub fn app(name: &Name, image: &str, revision: u64, count: u32) -> AppConfig {
    let mut app = AppConfig::new(name.clone(), image);
    app.app_id = revision;
    app.containers_per = ContainersPer::Server(count);
    app.networks = Vec::new();
    app
}

/// Pulls `image` from the local registry with the test credentials, through a throwaway
/// docker CLI config: the machine's own (`~/.docker`) is never touched, and on a fresh
/// machine it holds no login for the registry.
pub fn pull(image: &str) {
    use std::io::Write;
    let config = tempfile::tempdir().expect("tempdir");
    let auth = registry_auth();
    let mut login = std::process::Command::new("docker")
        .arg("--config")
        .arg(config.path())
        .args(["login", "-u", &auth.user, "--password-stdin", &auth.host])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run docker login");
    login
        .stdin
        .take()
        .expect("stdin")
        .write_all(auth.password.as_bytes())
        .expect("write the password");
    let output = login.wait_with_output().expect("docker login");
    assert!(
        output.status.success(),
        "docker login {}: {}",
        auth.host,
        String::from_utf8_lossy(&output.stderr)
    );
    let config = config.path().to_string_lossy().into_owned();
    docker(&["--config", &config, "pull", "-q", image]);
}

/// Runs `docker` with `arguments`; panics with its stderr when it fails. Returns stdout.
pub fn docker(arguments: &[&str]) -> String {
    let output = std::process::Command::new("docker")
        .args(arguments)
        .output()
        .expect("run docker");
    assert!(
        output.status.success(),
        "docker {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `docker inspect --format <format> <object>`.
pub fn inspect(object: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, object])
}

/// Whether a container (name or id) exists.
pub fn container_exists(container: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", "--type", "container", container])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Names of the containers labelled `app_name=<app>` (any device), sorted.
pub fn app_container_names(app: &Name) -> Vec<String> {
    let filter = format!("label=app_name={app}");
    let mut names: Vec<String> =
        docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])
            .lines()
            .map(str::to_string)
            .collect();
    names.sort();
    names
}

/// Removes the containers of the apps it names, and the containers it was given by name,
/// even when the test panics.
#[derive(Default)]
pub struct Cleanup {
    apps: Vec<Name>,
    containers: Vec<String>,
}

impl Cleanup {
    pub fn apps(apps: &[&Name]) -> Self {
        Self {
            apps: apps.iter().map(|app| (*app).clone()).collect(),
            containers: Vec::new(),
        }
    }

    pub fn container(&mut self, container: &str) {
        self.containers.push(container.to_string());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut doomed = self.containers.clone();
        for app in &self.apps {
            doomed.extend(app_container_names(app));
        }
        if !doomed.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&doomed)
                .output();
        }
    }
}

/// An image built for one test from `$NEBULA_TEST_IMAGE:1` (busybox) with the classic
/// builder — nothing is pulled — and tagged under a registry nothing listens on
/// (127.0.0.1:5999), so only this engine has it. Removed on drop.
pub struct TestImage {
    pub reference: String,
}

impl TestImage {
    /// `FROM test:1`, then `instructions`; `files` are copied into the build context first
    /// (as `(name in the context, source path)`).
    pub fn build(purpose: &str, instructions: &str, files: &[(&str, &Path)]) -> Self {
        let context = tempfile::tempdir().expect("tempdir");
        for (name, source) in files {
            std::fs::copy(source, context.path().join(name)).expect("copy into the context");
        }
        let dockerfile = format!(
            "FROM {}\nLABEL {LABEL_TEST}={TEST_LABEL_VALUE}\n{instructions}\n",
            test_image(1)
        );
        std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
        // The base must be local for a build without any pull.
        pull(&test_image(1));
        let reference = format!("127.0.0.1:5999/nebula-test/{purpose}:{}", unique("run"));
        let output = std::process::Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", &reference])
            .arg(context.path())
            .output()
            .expect("docker build");
        assert!(
            output.status.success(),
            "docker build {reference}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self { reference }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.reference])
            .output();
    }
}

/// What [`FakeRegistry`] does with a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryBehaviour {
    /// Every manifest is unknown: the pull fails at once.
    NotFound,
    /// Serves a manifest and a config, then starts the layer and sends no more bytes: a
    /// link that stalls in the middle of a download.
    StallInLayer,
}

/// Just enough of the registry API (v2, plain HTTP on 127.0.0.1, which the engine treats as
/// an insecure registry) for the engine to pull from it. Counts manifest requests: every pull
/// asks for the manifest (this engine twice per pull: a HEAD, then a GET).
pub struct FakeRegistry {
    pub address: String,
    manifest_requests: Arc<AtomicUsize>,
    layer_started: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The image config; `{unique}` makes every registry's digests its own, since the engine
/// shares a download between pulls of one digest (another test's registry would serve it).
const CONFIG_BLOB: &str = r#"{"architecture":"amd64","os":"linux","comment":"{unique}","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
const LAYER_SIZE: usize = 4 * 1024 * 1024;

fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let output = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

impl FakeRegistry {
    pub async fn start(behaviour: RegistryBehaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let manifest_requests = Arc::new(AtomicUsize::new(0));
        let layer_started = Arc::new(Notify::new());
        let unique = unique("registry");
        let config_blob = CONFIG_BLOB.replace("{unique}", &unique);
        let config_digest = format!("sha256:{}", sha256_hex(config_blob.as_bytes()));
        let layer_digest = format!(
            "sha256:{}",
            sha256_hex(format!("a layer that never arrives {unique}").as_bytes())
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{config_digest}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{LAYER_SIZE},"digest":"{layer_digest}"}}]}}"#,
            config_blob.len()
        );
        let manifest_digest = format!("sha256:{}", sha256_hex(manifest.as_bytes()));
        let served = Arc::new(Served {
            manifest,
            manifest_digest,
            config_digest,
            config_blob,
        });
        let task = tokio::spawn({
            let manifest_requests = manifest_requests.clone();
            let layer_started = layer_started.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let manifest_requests = manifest_requests.clone();
                    let layer_started = layer_started.clone();
                    let served = served.clone();
                    tokio::spawn(async move {
                        let _ = serve_connection(
                            stream,
                            behaviour,
                            &served,
                            &manifest_requests,
                            &layer_started,
                        )
                        .await;
                    });
                }
            }
        });
        Self {
            address,
            manifest_requests,
            layer_started,
            task,
        }
    }

    /// How many times the engine asked for a manifest (a fixed number per pull).
    pub fn manifest_requests(&self) -> usize {
        self.manifest_requests.load(Ordering::SeqCst)
    }

    /// Resolves once the engine has started downloading the layer (then stalls).
    pub async fn layer_started(&self) {
        self.layer_started.notified().await;
    }
}

/// What one fake registry serves.
struct Served {
    manifest: String,
    manifest_digest: String,
    config_digest: String,
    config_blob: String,
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    behaviour: RegistryBehaviour,
    served: &Served,
    manifest_requests: &AtomicUsize,
    layer_started: &Notify,
) -> std::io::Result<()> {
    let Served {
        manifest,
        manifest_digest,
        config_digest,
        config_blob,
    } = served;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    // The engine tries TLS first: a ClientHello starts with 0x16. Closing at once makes it
    // fall back to plain HTTP without waiting for a handshake timeout.
    if reader.fill_buf().await?.first() == Some(&0x16) {
        return Ok(());
    }
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 || header == "\r\n" {
                break;
            }
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        let head = method == "HEAD";
        let respond = |status: &str, content_type: &str, extra: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\r\n{}",
                body.len(),
                if head { "" } else { body }
            )
        };
        let response = if path == "/v2/" {
            respond("200 OK", "application/json", "", "{}")
        } else if path.contains("/manifests/") {
            manifest_requests.fetch_add(1, Ordering::SeqCst);
            match behaviour {
                RegistryBehaviour::NotFound => respond(
                    "404 Not Found",
                    "application/json",
                    "",
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                ),
                RegistryBehaviour::StallInLayer => respond(
                    "200 OK",
                    "application/vnd.docker.distribution.manifest.v2+json",
                    &format!("Docker-Content-Digest: {manifest_digest}\r\n"),
                    manifest,
                ),
            }
        } else if path.ends_with(config_digest.as_str()) {
            respond(
                "200 OK",
                "application/octet-stream",
                &format!("Docker-Content-Digest: {config_digest}\r\n"),
                config_blob,
            )
        } else if path.contains("/blobs/") && !head {
            // The layer: its headers and a first chunk, then silence, with the connection
            // held open — a stalled link, not a closed one.
            writer
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {LAYER_SIZE}\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await?;
            writer.write_all(&[0u8; 16 * 1024]).await?;
            writer.flush().await?;
            layer_started.notify_waiters();
            layer_started.notify_one();
            std::future::pending::<()>().await;
            return Ok(());
        } else {
            respond(
                "404 Not Found",
                "application/json",
                "",
                r#"{"errors":[{"code":"NOT_FOUND","message":"not found"}]}"#,
            )
        };
        writer.write_all(response.as_bytes()).await?;
        writer.flush().await?;
    }
}
