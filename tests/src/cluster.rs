//! The local three-node RabbitMQ cluster (`scripts/services.sh start rabbitmq-cluster`):
//! its nodes' URLs and names, per-test vhosts on it, which node each connection is on, and
//! the faults the cluster tests inject (a node killed with SIGKILL, nodes stopped, the
//! missing nodes started again). Nodes are numbered from 0 in the order of
//! `NEBULA_TEST_CLUSTER_AMQP_URL`; node `i` is `nebula-c{i+1}@localhost`.

use crate::vhost::{Vhost, rabbitmqctl, rabbitmqctl_output};
use std::process::Command;

const DEFAULT_URLS: &str = "amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f";

#[derive(Debug, Clone)]
pub struct Cluster {
    urls: Vec<String>,
}

impl Cluster {
    pub fn from_env() -> Self {
        let urls = std::env::var("NEBULA_TEST_CLUSTER_AMQP_URL")
            .unwrap_or_else(|_| DEFAULT_URLS.to_string());
        Self {
            urls: urls.split(',').map(|url| url.trim().to_string()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The Erlang node name of node `index`.
    pub fn node_name(&self, index: usize) -> String {
        format!("nebula-c{}@localhost", index + 1)
    }

    /// The AMQP port of node `index`.
    pub fn port(&self, index: usize) -> u16 {
        self.urls[index]
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|port| port.parse().ok())
            .expect("a port in every cluster URL")
    }

    /// Every node's URL for `vhost`, comma-separated: what `NEBULA_AMQP_URL` takes.
    pub fn url_list(&self, vhost: &str) -> String {
        self.urls
            .iter()
            .map(|url| {
                let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
                format!("{base}/{vhost}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A vhost made through the first node (it exists on all of them).
    pub fn create_vhost(&self, name: &str) -> anyhow::Result<Vhost> {
        Vhost::create_on(Some(&self.node_name(0)), name)
    }

    /// `(connection name, node index)` of every client connection to `vhost`, as the first
    /// node that answers lists them (the listing covers the whole cluster). Two clients may
    /// give the same name: both are kept.
    pub fn connections(&self, vhost: &str) -> anyhow::Result<Vec<(String, usize)>> {
        for index in 0..self.len() {
            let node = self.node_name(index);
            // `list_connections` lists every vhost's connections (it takes no `-p`): the
            // vhost column keeps other tests' and benchmarks' clients out.
            let Ok(output) = rabbitmqctl_output(&[
                "-n",
                &node,
                "list_connections",
                "vhost",
                "port",
                "client_properties",
                "--formatter",
                "json",
                "-q",
            ]) else {
                continue;
            };
            let entries: Vec<serde_json::Value> = serde_json::from_str(&output)?;
            let mut connections = Vec::new();
            for entry in entries.iter().filter(|entry| entry["vhost"] == vhost) {
                let port = entry["port"].as_u64().unwrap_or_default();
                let Some(on) = (0..self.len()).find(|&node| u64::from(self.port(node)) == port)
                else {
                    continue;
                };
                connections.push((connection_name(&entry["client_properties"]), on));
            }
            connections.sort();
            return Ok(connections);
        }
        anyhow::bail!("no cluster node answered")
    }

    /// The running nodes, as node `index` sees them.
    pub fn running_nodes_seen_by(&self, index: usize) -> anyhow::Result<Vec<String>> {
        let output = rabbitmqctl_output(&[
            "-n",
            &self.node_name(index),
            "cluster_status",
            "--formatter",
            "json",
        ])?;
        let status: serde_json::Value = serde_json::from_str(&output)?;
        Ok(status["running_nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|node| node.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The running nodes, as the first node that answers sees them.
    pub fn running_nodes(&self) -> anyhow::Result<Vec<String>> {
        let mut last = None;
        for index in 0..self.len() {
            match self.running_nodes_seen_by(index) {
                Ok(nodes) => return Ok(nodes),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no cluster node")))
    }

    /// Kills node `index`'s Erlang VM (the beam.smp listening on its AMQP port) with
    /// SIGKILL, and waits until it is gone (blocking, up to 15 s); returns its pid.
    pub fn kill(&self, index: usize) -> anyhow::Result<u32> {
        let port = self.port(index);
        let pid =
            listener_pid(port).ok_or_else(|| anyhow::anyhow!("nothing listens on port {port}"))?;
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
        // Dead only once epmd has dropped its name too: until then `services.sh start` takes
        // the node for running and does not start it again (a restart right after the kill
        // then waited 180 s for a node that never came).
        let name = self.node_name(index);
        let short_name = name.split('@').next().unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while process_alive(pid) || epmd_lists(short_name) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "node {name} (pid {pid}) still registered 15 s after SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(pid)
    }

    /// Stops node `index` cleanly (its Erlang VM exits).
    pub fn stop(&self, index: usize) -> anyhow::Result<()> {
        rabbitmqctl(&["-n", &self.node_name(index), "stop"])
    }

    /// Starts the nodes that are down (`scripts/services.sh start rabbitmq-cluster`) and
    /// returns once all of them run in the cluster again.
    pub fn start_missing(&self) -> anyhow::Result<()> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the repository root");
        let output = Command::new("bash")
            .args(["scripts/services.sh", "start", "rabbitmq-cluster"])
            .current_dir(root)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "services.sh start rabbitmq-cluster: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Waits (polling, at most `deadline`) until all nodes run in the cluster.
    pub async fn wait_complete(&self, deadline: std::time::Duration) -> anyhow::Result<()> {
        let cluster = self.clone();
        crate::wait_for("every cluster node running", deadline, || {
            let (cluster, expected) = (cluster.clone(), cluster.len());
            async move {
                tokio::task::spawn_blocking(move || cluster.running_nodes())
                    .await
                    .ok()?
                    .ok()
                    .filter(|nodes| nodes.len() == expected)
                    .map(drop)
            }
        })
        .await
    }
}

/// The `connection_name` a client gave (rabbitmqctl renders client properties as
/// `[key, type, value]` triples); empty when it gave none.
fn connection_name(properties: &serde_json::Value) -> String {
    properties
        .as_array()
        .into_iter()
        .flatten()
        .find(|property| property[0] == "connection_name")
        .and_then(|property| property[2].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Whether `pid` runs (a zombie, killed but not yet reaped, does not).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Whether epmd has an Erlang node of this short name registered.
fn epmd_lists(short_name: &str) -> bool {
    Command::new("epmd")
        .arg("-names")
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line.starts_with(&format!("name {short_name} at port ")))
        })
}

/// The pid of the process listening on TCP `port` on this machine (from `ss`).
pub fn listener_pid(port: u16) -> Option<u32> {
    let output = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split("pid=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
