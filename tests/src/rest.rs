//! A small client for the control plane's v2 REST API, as an operator's script would use it.

use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Rest {
    client: reqwest::Client,
    base: String,
    user: String,
    password: String,
}

/// The control plane's count of answered sync requests, and which process counted them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAnswered {
    pub started: String,
    pub answered: u64,
}

/// A response: status and JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The body when the status is 2xx, else an error naming both.
    pub fn ok(self) -> anyhow::Result<Value> {
        if (200..300).contains(&self.status) {
            Ok(self.body)
        } else {
            anyhow::bail!("HTTP {}: {}", self.status, self.body)
        }
    }
}

impl Rest {
    /// `address` is `host:port`; credentials are the local admin's.
    pub fn new(address: &str, user: &str, password: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("reqwest client");
        Self {
            client,
            base: format!("http://{address}/api/v2"),
            user: user.into(),
            password: password.into(),
        }
    }

    /// Like [`Rest::new`], over HTTPS, trusting only the CA in `ca_pem` (a PEM file).
    pub fn https(address: &str, user: &str, password: &str, ca_pem: &std::path::Path) -> Self {
        let ca = std::fs::read(ca_pem).expect("read the CA file");
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("a PEM CA"))
            .build()
            .expect("reqwest client");
        Self {
            client,
            base: format!("https://{address}/api/v2"),
            user: user.into(),
            password: password.into(),
        }
    }

    /// The same client with another request timeout (benchmarks at 10,000 agents wait
    /// longer for a write's broker confirm than a test should).
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("reqwest client");
        self
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Reply> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        };
        Ok(Reply { status, body })
    }

    /// The control plane's `/metrics` body (Prometheus text; no credentials needed).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let root = self.base.trim_end_matches("/api/v2");
        let response = self.client.get(format!("{root}/metrics")).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET /metrics: HTTP {}",
            response.status()
        );
        Ok(response.text().await?)
    }

    /// Sync requests the control plane has answered (found or not) since it started, and
    /// when that was (`process_start_time_seconds`, which tells a restart apart).
    pub async fn sync_requests_answered(&self) -> anyhow::Result<SyncAnswered> {
        // Black-box on purpose: the metric names are the contract, not the crate's parser.
        let body = self.metrics().await?;
        let counted: Vec<u64> = body
            .lines()
            .filter(|line| line.starts_with("nebula_sync_requests_answered_total{"))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse().ok())
            .collect();
        anyhow::ensure!(
            counted.len() == 2,
            "/metrics lacks the found and not_found sync counters:\n{body}"
        );
        let started = body
            .lines()
            .find_map(|line| line.strip_prefix("process_start_time_seconds "))
            .ok_or_else(|| anyhow::anyhow!("/metrics lacks process_start_time_seconds"))?
            .to_string();
        Ok(SyncAnswered {
            started,
            answered: counted.iter().sum(),
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    pub async fn create_app(&self, app: &str, config: Value) -> anyhow::Result<Value> {
        self.post(&format!("/apps/{app}"), config).await?.ok()
    }

    pub async fn update_app(&self, app: &str, fields: Value) -> anyhow::Result<Value> {
        self.put(&format!("/apps/{app}/update"), fields).await?.ok()
    }

    /// `stop`, `start` or `restart`.
    pub async fn app_action(&self, app: &str, action: &str) -> anyhow::Result<Value> {
        self.post(&format!("/apps/{app}/{action}"), json!({}))
            .await?
            .ok()
    }

    pub async fn delete_app(&self, app: &str) -> anyhow::Result<Value> {
        self.delete(&format!("/apps/{app}")).await?.ok()
    }

    pub async fn create_group(&self, group: &str, apps: &[&str]) -> anyhow::Result<Value> {
        self.post(&format!("/device_groups/{group}"), json!({ "apps": apps }))
            .await?
            .ok()
    }

    pub async fn update_group(&self, group: &str, apps: &[&str]) -> anyhow::Result<Value> {
        self.put(
            &format!("/device_groups/{group}/update"),
            json!({ "apps": apps }),
        )
        .await?
        .ok()
    }

    pub async fn prune_group(&self, group: &str) -> anyhow::Result<Value> {
        self.post(&format!("/device_groups/{group}/prune"), json!({}))
            .await?
            .ok()
    }

    pub async fn delete_group(&self, group: &str) -> anyhow::Result<Value> {
        self.delete(&format!("/device_groups/{group}")).await?.ok()
    }
}
