//! A RabbitMQ virtual host per end-to-end scenario: each scenario gets its own `nebula.sync`
//! queue, exchanges and agent queues, so scenarios that stop control planes or intercept sync
//! requests cannot disturb each other.

use std::process::Command;

#[derive(Debug)]
pub struct Vhost {
    pub name: String,
    /// The node it was made through (`rabbitmqctl -n`), when not rabbitmqctl's default one.
    node: Option<String>,
}

impl Vhost {
    /// Creates the vhost on the single broker and gives the guest user full rights on it.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        Self::create_on(None, name)
    }

    /// Creates the vhost through `node` (a cluster's node: the vhost exists on every node).
    pub fn create_on(node: Option<&str>, name: &str) -> anyhow::Result<Self> {
        let vhost = Self {
            name: name.to_string(),
            node: node.map(str::to_string),
        };
        vhost.rabbitmqctl(&["add_vhost", name])?;
        vhost.rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"])?;
        Ok(vhost)
    }

    fn rabbitmqctl(&self, arguments: &[&str]) -> anyhow::Result<()> {
        match &self.node {
            Some(node) => rabbitmqctl(&[&["-n", node.as_str()], arguments].concat()),
            None => rabbitmqctl(arguments),
        }
    }

    /// The broker URL for this vhost, directly or through `host:port` (a partition proxy).
    pub fn amqp_url_via(&self, address: &str) -> String {
        format!("amqp://guest:guest@{address}/{}", self.name)
    }

    /// The broker URL for this vhost at the broker's own address.
    pub fn amqp_url(&self) -> String {
        self.in_url(&crate::services::amqp_url())
    }

    /// The URL of the broker's TLS listener for this vhost.
    pub fn amqps_url(&self) -> String {
        self.in_url(&crate::services::amqps_url())
    }

    /// `base` with its vhost part ("/%2f" by default) replaced by this vhost.
    fn in_url(&self, base: &str) -> String {
        let without_vhost = base.rsplit_once('/').map_or(base, |(prefix, _)| prefix);
        format!("{without_vhost}/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = self.rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

/// rabbitmqctl, at most a minute: a paused cluster node must not hang a test.
pub(crate) fn rabbitmqctl(arguments: &[&str]) -> anyhow::Result<()> {
    rabbitmqctl_output(arguments).map(drop)
}

/// rabbitmqctl's standard output, at most a minute.
pub(crate) fn rabbitmqctl_output(arguments: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("timeout")
        .arg("60")
        .arg("rabbitmqctl")
        .args(arguments)
        .output()?;
    if !output.status.success() {
        anyhow::bail!(
            "rabbitmqctl {}: {}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A device's own broker user (`nebula-device-<id>`, minted by a test), deleted on drop
/// whatever happens to the test: deleting a vhost leaves users.
#[derive(Debug)]
pub struct DeviceUser(pub String);

impl DeviceUser {
    pub fn of(device: &str) -> Self {
        Self(format!("nebula-device-{device}"))
    }
}

impl Drop for DeviceUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}
