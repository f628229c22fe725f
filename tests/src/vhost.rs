//! A RabbitMQ virtual host per end-to-end scenario: each scenario gets its own `nebula.sync`
//! queue, exchanges and agent queues, so scenarios that stop control planes or intercept sync
//! requests cannot disturb each other.

use std::process::Command;

#[derive(Debug)]
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    /// Creates the vhost and gives the guest user full rights on it.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        rabbitmqctl(&["add_vhost", name])?;
        rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"])?;
        Ok(Self {
            name: name.to_string(),
        })
    }

    /// The broker URL for this vhost, directly or through `host:port` (a partition proxy).
    pub fn amqp_url_via(&self, address: &str) -> String {
        format!("amqp://guest:guest@{address}/{}", self.name)
    }

    /// The broker URL for this vhost at the broker's own address.
    pub fn amqp_url(&self) -> String {
        let base = crate::services::amqp_url();
        // Replace the vhost part ("/%2f" by default) of the configured URL.
        let without_vhost = base
            .rsplit_once('/')
            .map_or(base.as_str(), |(prefix, _)| prefix);
        format!("{without_vhost}/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

fn rabbitmqctl(arguments: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("rabbitmqctl").args(arguments).output()?;
    if !output.status.success() {
        anyhow::bail!(
            "rabbitmqctl {}: {}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
