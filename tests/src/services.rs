//! Where the real services are, with the defaults `scripts/services.sh` starts them on.

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// RabbitMQ.
pub fn amqp_url() -> String {
    env_or(
        "NEBULA_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

/// RabbitMQ's TLS listener: certificates of the development CA (`scripts/dev-ca.sh`), and
/// it asks every client for one of that CA's too.
pub fn amqps_url() -> String {
    env_or(
        "NEBULA_TEST_AMQPS_URL",
        "amqps://guest:guest@127.0.0.1:5671/%2f",
    )
}

/// RabbitMQ's management API on the single node, with an administrator's login (where control
/// planes make devices' own broker users).
pub fn rabbitmq_management_url() -> String {
    env_or(
        "NEBULA_TEST_RABBITMQ_MANAGEMENT_URL",
        "http://guest:guest@127.0.0.1:15672",
    )
}

/// A file of the development CA (`scripts/dev-ca.sh`): `ca.pem`, `client.pem`, `client.key`.
pub fn tls_file(name: &str) -> String {
    format!(
        "{}/{name}",
        env_or("NEBULA_TEST_TLS_DIR", "/var/lib/nebula-dev/tls")
    )
}

/// The MongoDB-wire server.
pub fn mongo_url() -> String {
    env_or("NEBULA_TEST_MONGO_URL", "mongodb://127.0.0.1:27017")
}

/// The local registry, `host:port`.
pub fn registry() -> String {
    env_or("NEBULA_TEST_REGISTRY", "127.0.0.1:5000")
}

pub fn registry_user() -> String {
    env_or("NEBULA_TEST_REGISTRY_USER", "nebula")
}

pub fn registry_password() -> String {
    env_or("NEBULA_TEST_REGISTRY_PASSWORD", "nebula-registry")
}

/// The busybox test image, version 1 or 2 (`/version` holds the number; httpd on port 8000).
pub fn test_image(version: u32) -> String {
    format!("{}/nebula/test:{version}", registry())
}

/// The test image as one short run that exits 0 (for cron jobs).
pub fn once_test_image() -> String {
    format!("{}/nebula/test-once:1", registry())
}

/// The test image with a HEALTHCHECK.
pub fn healthy_test_image() -> String {
    format!("{}/nebula/test-healthy:1", registry())
}

/// The Docker engine.
pub fn docker() -> anyhow::Result<bollard::Docker> {
    Ok(bollard::Docker::connect_with_local_defaults()?)
}

/// Registry credentials in the form bollard takes.
pub fn registry_credentials() -> bollard::auth::DockerCredentials {
    bollard::auth::DockerCredentials {
        username: Some(registry_user()),
        password: Some(registry_password()),
        serveraddress: Some(registry()),
        ..Default::default()
    }
}
