//! Devices' own broker users, made and removed through RabbitMQ's management HTTP API
//! (`NEBULA_RABBITMQ_MANAGEMENT_URL`).
//!
//! Chosen over `rabbitmq_auth_backend_http` (the broker asking the control plane at every
//! login and resource check): with users held by the broker, devices keep connecting and
//! reconnecting while every control plane is down, and no login of ten thousand devices
//! coming back after a broker restart turns into ten thousand HTTP calls to the API.
//! What a user may do is `crate::device_credentials::grants`.

use crate::device_credentials::Grants;
use nebula_protocol::{Name, names};
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::json;
use std::time::Duration;

/// How long one call of the management API may take.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("the broker's management API at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the broker's management API answered {status} to {operation}: {body}")]
    Refused {
        operation: String,
        status: StatusCode,
        body: String,
    },
}

/// A client of the management API for one virtual host.
#[derive(Clone)]
pub struct BrokerUsers {
    client: Client,
    /// The API's base URL, without credentials (they go in the Authorization header).
    base: Url,
    user: String,
    password: String,
    vhost: String,
}

impl std::fmt::Debug for BrokerUsers {
    // Never the administrator's password.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BrokerUsers")
            .field("base", &self.base.as_str())
            .field("user", &self.user)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

/// One binding as the management API lists it.
#[derive(Debug, serde::Deserialize)]
struct Binding {
    properties_key: String,
}

impl BrokerUsers {
    /// `management_url`: `http(s)://user:password@host:15672` (a user tagged `administrator`);
    /// `vhost`: the devices' virtual host.
    pub fn new(management_url: &str, vhost: &str) -> Result<Self, String> {
        let mut base = Url::parse(management_url).map_err(|error| error.to_string())?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err("not an http:// or https:// URL with a host".into());
        }
        let decode = |text: &str| {
            percent_decode(text).ok_or_else(|| "bad percent-encoding in the user info".to_string())
        };
        let user = decode(base.username())?;
        let password = decode(base.password().unwrap_or_default())?;
        if user.is_empty() {
            return Err("no user name (http://user:password@host:15672)".into());
        }
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let client = Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|error| error.to_string())?;
        Ok(Self {
            client,
            base,
            user,
            password,
            vhost: vhost.to_string(),
        })
    }

    /// Creates (or replaces the password and permissions of) `device`'s user.
    pub async fn put_device(
        &self,
        device: &Name,
        password: &str,
        grants: &Grants,
    ) -> Result<(), UsersError> {
        let user = names::device_user(device);
        self.call(
            Method::PUT,
            &["users", &user],
            Some(json!({"password": password, "tags": ""})),
        )
        .await?;
        self.call(
            Method::PUT,
            &["permissions", &self.vhost, &user],
            Some(json!({
                "configure": grants.configure,
                "write": grants.write,
                "read": grants.read,
            })),
        )
        .await?;
        for topic in &grants.topics {
            self.call(
                Method::PUT,
                &["topic-permissions", &self.vhost, &user],
                Some(json!({
                    "exchange": topic.exchange,
                    "write": topic.write,
                    "read": topic.read,
                })),
            )
            .await?;
        }
        Ok(())
    }

    /// Removes `device`'s user. The broker closes the user's open connections with it
    /// (`CONNECTION_FORCED - user '…' is deleted`, RabbitMQ 3.10; the revocation test checks).
    pub async fn remove_device(&self, device: &Name) -> Result<(), UsersError> {
        let user = names::device_user(device);
        self.call(Method::DELETE, &["users", &user], None).await?;
        Ok(())
    }

    /// Deletes what a device's user may have made and left behind: the exchanges and queues
    /// named like its agent queues (`names`), and bindings of the `nebula.reports` queue to its
    /// scope's `exchanges` (its write permission on that name lets it bind them; the report
    /// consumer rejects what they carry). Missing ones are no error, and neither is an
    /// exclusive queue still held by the connection the broker is closing: it goes with it.
    pub async fn remove_leftovers(
        &self,
        names: &[String],
        exchanges: &[String],
    ) -> Result<(), UsersError> {
        for name in names {
            self.call(Method::DELETE, &["exchanges", &self.vhost, name], None)
                .await?;
        }
        let queue = names::REPORTS_QUEUE;
        for exchange in exchanges {
            let path = ["bindings", &self.vhost, "e", exchange, "q", queue];
            let listed = self.call(Method::GET, &path, None).await?;
            let bindings: Vec<Binding> = serde_json::from_str(&listed).unwrap_or_default();
            for binding in bindings {
                let mut one = path.to_vec();
                one.push(&binding.properties_key);
                self.call(Method::DELETE, &one, None).await?;
            }
        }
        for name in names {
            match self
                .call(Method::DELETE, &["queues", &self.vhost, name], None)
                .await
            {
                Err(UsersError::Refused { status, body, .. })
                    if status == StatusCode::BAD_REQUEST && body.contains("exclusive") => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// One call; a missing object of a DELETE or GET is no error (an empty answer).
    async fn call(
        &self,
        method: Method,
        path: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<String, UsersError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| UsersError::Unreachable {
                url: self.base.to_string(),
                reason: "the URL cannot take a path".into(),
            })?
            .pop_if_empty()
            .push("api")
            .extend(path);
        let operation = format!(
            "{method} /api/{}",
            path.first().copied().unwrap_or_default()
        );
        let mut request = self
            .client
            .request(method.clone(), url)
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| UsersError::Unreachable {
                url: self.base.to_string(),
                reason: error.to_string(),
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        // A missing object is gone either way; a missing exchange listed for bindings has none.
        if status.is_success()
            || (matches!(method, Method::DELETE | Method::GET) && status == StatusCode::NOT_FOUND)
        {
            return Ok(text);
        }
        Err(UsersError::Refused {
            operation,
            status,
            body: text.chars().take(300).collect(),
        })
    }
}

/// `%XX`-decodes a URL's user info.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_gives_the_credentials_and_a_base_without_them() {
        let users = BrokerUsers::new("http://ad%40min:p%3Ass@127.0.0.1:15672", "/").expect("url");
        assert_eq!(users.user, "ad@min");
        assert_eq!(users.password, "p:ss");
        assert_eq!(users.base.as_str(), "http://127.0.0.1:15672/");
        for bad in [
            "amqp://guest:guest@127.0.0.1",
            "http://127.0.0.1:15672",
            "not a url",
        ] {
            assert!(BrokerUsers::new(bad, "/").is_err(), "{bad}");
        }
    }
}
