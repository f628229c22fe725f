//! The MQTT transport (issue 17): MQTT 3.1.1 through RabbitMQ's MQTT plugin, with AMQP's boot
//! order and guarantees — subscribe first, then sync, then process changes — over the same
//! core: the desired state's rules, [`super::dispatch`] and the report policy of
//! [`super::reports`].
//!
//! One clean session at a time, the device id as client id: the broker keeps nothing for a
//! disconnected agent, and the sync of every new session makes up for what it missed, as
//! over AMQP. The topics are those of `nebula_protocol::names` (README, "MQTT"): the control
//! plane publishes each change once and RabbitMQ routes it to AMQP queues and MQTT
//! subscriptions alike. [`session`] holds the flow of one session.
//!
//! A lost session (the keep-alive went unanswered, the broker restarted or closed it) does
//! not end the agent: its workers and containers keep running, and a new session starts
//! after the [`ReconnectSchedule`]'s delay, as over AMQP.

mod session;

use crate::backoff::ReconnectSchedule;
use crate::error::AgentError;
use crate::mqtt_url::MqttUrl;
use crate::runtime::ContainerRuntime;
use crate::supervisor::Shared;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, SubAck};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The first reconnect after a loss waits up to this long (as over AMQP).
const RECONNECT_BASE: Duration = Duration::from_secs(1);
/// The shortest keep-alive asked for.
const MIN_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Largest message taken: a group state with many apps is larger than rumqttc's 10 KiB
/// default (the control plane caps app documents well below this).
const MAX_INCOMING_PACKET: usize = 4 * 1024 * 1024;
/// Largest message sent: a report with many containers.
const MAX_OUTGOING_PACKET: usize = 256 * 1024;
/// Requests (subscribe, publish, ack) queued for the event loop.
const REQUEST_CAPACITY: usize = 64;
/// How long connecting (TCP and CONNACK) and each write may take.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(15);

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the event loop's driver hands the session.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// The broker accepted the session (CONNACK).
    Connected,
    Subscribed(SubAck),
    Message(Publish),
    /// The session is over: why.
    Lost(String),
}

/// Runs the MQTT transport to `url` until shutdown (`Ok`) or a failed state write (`Err`).
pub async fn run<R: ContainerRuntime>(
    shared: Arc<Shared<R>>,
    url: MqttUrl,
) -> Result<(), AgentError> {
    // Never a quiet fall back to plain TCP: the configuration builds the TLS settings of
    // every mqtts:// URL (and refuses one in a build without TLS).
    if url.tls && !tls_configured(&shared) {
        return Err(AgentError::Task(
            "mqtts:// without TLS settings (a bug: the configuration makes them)".into(),
        ));
    }
    let mut schedule = ReconnectSchedule::new(RECONNECT_BASE, shared.config.max_backoff);
    loop {
        let delay = schedule.before_attempt();
        if !delay.is_zero() {
            tracing::info!(
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                broker = %url,
                "connecting to the MQTT broker after a delay"
            );
            tokio::select! {
                () = shared.shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
        let (client, mut event_loop) = AsyncClient::new(options(&shared, &url), REQUEST_CAPACITY);
        // rumqttc's 5 s default bounds the connect and every write: too short for a slow
        // cellular link (the MQTT agent's use case).
        event_loop
            .network_options
            .set_connection_timeout(NETWORK_TIMEOUT.as_secs());
        let (sender, inbound) = mpsc::unbounded_channel();
        // Aborted when the session ends, however it ends (this future dropped included): the
        // event loop holds the connection and would keep it alive.
        let driver = AbortOnDrop(tokio::spawn(drive(event_loop, sender)));
        let started = Instant::now();
        let end = session::run(&shared, &url, client, inbound).await;
        drop(driver);
        match end? {
            session::End::Shutdown => return Ok(()),
            session::End::Unreachable(reason) => {
                tracing::warn!(reason, broker = %url, "MQTT broker unreachable; retrying");
            }
            session::End::Lost(reason) => {
                tracing::warn!(
                    reason,
                    broker = %url,
                    "lost the MQTT session; apps keep running, reconnecting"
                );
                schedule.session_ended(started);
            }
        }
    }
}

#[cfg(feature = "tls")]
fn tls_configured<R>(shared: &Shared<R>) -> bool {
    shared.config.tls.config.is_some()
}

#[cfg(not(feature = "tls"))]
fn tls_configured<R>(_shared: &Shared<R>) -> bool {
    false
}

/// The session's options: clean, the device id as client id, acknowledgements sent by the
/// session itself once a change is persisted, and a keep-alive of half the heartbeat the
/// agent is configured with (as AMQP sends a heartbeat after half its timeout).
fn options<R>(shared: &Shared<R>, url: &MqttUrl) -> MqttOptions {
    let mut options = MqttOptions::new(shared.config.device_id.as_str(), &url.host, url.port);
    options.set_credentials(&url.username, &url.password);
    options.set_clean_session(true);
    options.set_manual_acks(true);
    // MQTT's keep-alive is a 16-bit count of seconds.
    let keep_alive = (shared.config.heartbeat / 2)
        .clamp(MIN_KEEP_ALIVE, Duration::from_secs(u64::from(u16::MAX)));
    options.set_keep_alive(keep_alive);
    options.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
    // mqtts://: the configuration built the rustls client (crate::tls), the broker's
    // certificate verified for the URL's host name.
    #[cfg(feature = "tls")]
    if url.tls
        && let Some(config) = &shared.config.tls.config
    {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(config.clone()),
        ));
    }
    options
}

/// Polls the event loop (which sends what the client queued and reads what the broker
/// sends) and hands the session what it needs, until the session ends.
async fn drive(mut event_loop: EventLoop, sender: mpsc::UnboundedSender<Inbound>) {
    loop {
        let inbound = match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Inbound::Connected,
            Ok(Event::Incoming(Packet::SubAck(ack))) => Inbound::Subscribed(ack),
            Ok(Event::Incoming(Packet::Publish(publish))) => Inbound::Message(publish),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = sender.send(Inbound::Lost("disconnected".into()));
                return;
            }
            Ok(_) => continue,
            Err(error) => {
                let _ = sender.send(Inbound::Lost(error.to_string()));
                return;
            }
        };
        if sender.send(inbound).is_err() {
            return;
        }
    }
}
