//! Device reports over AMQP ([`super::super::reports`] decides when): transient, to the
//! `nebula.reports` exchange without declaring it (a locked-down device account has no
//! configure rights, and the control plane owns the exchange), each with a confirm. A report
//! that cannot be published — the exchange does not exist yet, the channel closed, no
//! confirm — is logged and the next one tries again on a fresh channel.

use super::operation;
use crate::error::AmqpError;
use crate::transport::reports::ReportPublisher;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use nebula_protocol::names::REPORTS_EXCHANGE;
use std::sync::Arc;
use std::time::Duration;

/// AMQP delivery mode of transient messages: a lost report is replaced by the next one.
const TRANSIENT: u8 = 1;
/// How long the broker may take to confirm a report.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes reports on one connection, on a channel of their own.
pub(crate) struct AmqpReports {
    pub connection: Arc<Connection>,
    pub channel: Option<Channel>,
    /// `report.<device>`.
    pub routing_key: String,
    /// The connection's broker user when it is a device credential's, sent as `user_id` (the
    /// broker checks it).
    pub device_login: Option<Arc<str>>,
}

impl ReportPublisher for AmqpReports {
    async fn publish(&mut self, payload: &[u8]) -> Result<(), String> {
        publish(
            &self.connection,
            &mut self.channel,
            &self.routing_key,
            self.device_login.as_deref(),
            payload,
        )
        .await
        .map_err(|error| error.to_string())
    }

    fn connected(&self) -> bool {
        self.connection.status().connected()
    }
}

/// Publishes one report with a confirm, opening a channel if the last one is gone (a
/// publish to a missing exchange closes it).
async fn publish(
    connection: &Connection,
    channel: &mut Option<Channel>,
    routing_key: &str,
    device_login: Option<&str>,
    payload: &[u8],
) -> Result<(), AmqpError> {
    let open = match channel.take().filter(|open| open.status().connected()) {
        Some(open) => open,
        None => {
            let open = connection
                .create_channel()
                .await
                .map_err(operation("channel.open"))?;
            open.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(operation("confirm.select"))?;
            open
        }
    };
    let mut properties = BasicProperties::default().with_delivery_mode(TRANSIENT);
    if let Some(login) = device_login {
        properties = properties.with_user_id(login.into());
    }
    let confirm = open
        .basic_publish(
            REPORTS_EXCHANGE.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            payload,
            properties,
        )
        .await
        .map_err(operation("basic.publish report"))?;
    let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
        .await
        .map_err(|_| AmqpError::Timeout {
            operation: "report confirm",
            seconds: CONFIRM_TIMEOUT.as_secs(),
        })?
        .map_err(operation("report confirm"))?;
    if confirmation.is_nack() {
        return Err(AmqpError::Nacked {
            operation: "basic.publish report",
        });
    }
    *channel = Some(open);
    Ok(())
}
