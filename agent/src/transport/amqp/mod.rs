//! The AMQP transport (DESIGN §3): one connection at a time, on it one boot flow per target
//! ([`follow`]) and the reporter ([`reports`]).
//!
//! A lost connection does not end the agent: its workers and containers keep running, and
//! the transport reconnects in-process — the first attempt of the process at once, every
//! later one (the first after a loss included) after a full-jitter delay up to half the time
//! the link has been down, at most `NEBULA_MAX_BACKOFF_SECS` ([`ReconnectSchedule`]) — then
//! declares, binds, syncs and consumes again for every target. The agent queues are
//! exclusive, so they died with the old connection; the sync of the new one is what makes up
//! for every change missed meanwhile. Only a failed state write ends the agent with an error.
//!
//! With a list of broker URLs (a RabbitMQ cluster), the first attempt goes to a random node,
//! the one after a lost connection to a random other node, and the one after a failed
//! attempt to the next node of the list ([`crate::brokers`]).
//!
//! Dead links ([`connect`]): the agent asks for the heartbeat timeout it is configured with
//! (RabbitMQ honours the client's value; lapin is patched to send it, see
//! `third_party/lapin/NEBULA.md`) and sets `TCP_USER_TIMEOUT` to half of it (at most two
//! minutes, [`crate::config::Config::unacknowledged_limit`]), so a heartbeat (or anything
//! else) the broker never acknowledges ends the connection then instead of after lapin's two
//! timeouts of silence or the kernel's ~15 minutes of retransmissions.

mod follow;
mod queue;
mod reports;
mod signature;
mod sync;
mod watch;

pub use watch::LAST_QUEUE_CHECK;

use crate::backoff::ReconnectSchedule;
use crate::config::Mode;
use crate::error::{AgentError, AmqpError, StateError};
use crate::runtime::ContainerRuntime;
use crate::supervisor::Shared;
use crate::transport::Target;
use crate::transport::reports::report_loop;
use futures_util::StreamExt;
use lapin::tcp::{AMQPUriTcpExt, AsyncTcpStream, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use nebula_protocol::Name;
use nebula_protocol::names;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tracing::Instrument;

/// How long one connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The first reconnect after a loss waits up to this long (uniformly); later ones up to half
/// the time the link has been down, at most the configured cap.
const RECONNECT_BASE: Duration = Duration::from_secs(1);
/// How long the tasks of a lost connection get to wind down before they are aborted.
const SESSION_WIND_DOWN: Duration = Duration::from_secs(10);
/// Frame size asked for unless the URL sets `frame_max`. lapin keeps 32 frames of buffer
/// each way, so RabbitMQ's default of 128 KiB costs 8 MiB of RSS; 16 KiB costs 1 MiB, and
/// larger messages (a big group state) are simply split across frames.
const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

pub(crate) use super::FlowEnd;

pub(crate) fn operation(operation: &'static str) -> impl FnOnce(lapin::Error) -> AmqpError {
    move |source| AmqpError::Operation { operation, source }
}

/// The AMQP reply code of a channel or connection closed by the broker (404, 405, ...).
pub(crate) fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp_error) => Some(amqp_error.get_id()),
        _ => None,
    }
}

/// The agent queue of `target` (DESIGN §3).
pub(crate) fn agent_queue(target: &Target, device: &Name) -> String {
    match target {
        Target::App(app) => names::app_queue(device, app),
        Target::Group(group) => names::group_queue(device, group),
    }
}

/// The exchange `target`'s queue is bound to.
pub(crate) fn exchange(target: &Target) -> String {
    match target {
        Target::App(app) => names::app_exchange(app),
        Target::Group(group) => names::group_exchange(group),
    }
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Runs the transport until shutdown (`Ok`) or a failed state write (`Err`).
///
/// The first attempt goes to a random node of the broker list
/// ([`crate::brokers::BrokerList`]); after a failed attempt the agent tries the next node,
/// after a lost connection a random other one (after the schedule's delay); with one URL,
/// that one again.
pub async fn run<R: ContainerRuntime>(shared: Arc<Shared<R>>) -> Result<(), AgentError> {
    let mut schedule = ReconnectSchedule::new(RECONNECT_BASE, shared.config.max_backoff);
    let mut brokers = shared.config.brokers.clone();
    brokers.start_at(fastrand::usize(..));
    let nodes = brokers.brokers().len();
    warn_of_a_shared_login(&shared.config.device_id, &brokers);
    if let Some(key) = &shared.config.signing_key {
        tracing::info!(
            signing_key = %nebula_protocol::signing::public_key_hex(key),
            "changes and sync replies count only when signed with the pinned control plane key"
        );
    }
    // The configuration took the URLs' own heartbeat parameter into account, and bounds it
    // to the AMQP field's 16 bits.
    let heartbeat = u16::try_from(shared.config.heartbeat.as_secs()).unwrap_or(u16::MAX);
    let unacknowledged_limit = shared.config.unacknowledged_limit();
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("nebula-agent {}", shared.config.device_id).into());
    loop {
        let delay = schedule.before_attempt();
        let broker = brokers.next();
        let (node, vhost) = (broker.address(), broker.vhost());
        if !delay.is_zero() {
            tracing::info!(
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                node,
                vhost,
                "connecting to the broker after a delay"
            );
            tokio::select! {
                () = shared.shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
        let mut uri = broker.uri().clone();
        // A device credential's login (`nebula-device-<id>`) goes in the `user_id` of what
        // the agent publishes, and sync requests then go through the sync exchange (the only
        // way such a login may send them). Any other login (a shared one, or one the broker
        // knows under another name, as with EXTERNAL) publishes as agents always did.
        let user = &uri.authority.userinfo.username;
        let device_login: Option<Arc<str>> =
            names::device_of_user(user).map(|_| Arc::from(user.as_str()));
        uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
        uri.query.heartbeat = Some(heartbeat);
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            connect(
                uri,
                properties.clone(),
                &shared.config.tls,
                unacknowledged_limit,
            ),
        );
        let connection = tokio::select! {
            () = shared.shutdown.cancelled() => return Ok(()),
            result = attempt => match result {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, node, vhost, nodes, "broker unreachable; retrying");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(timeout_s = CONNECT_TIMEOUT.as_secs(), node, vhost, nodes, "broker did not answer; retrying");
                    continue;
                }
            },
        };
        tracing::info!(device = %shared.config.device_id, node, vhost, nodes, "connected to the broker");
        let connected_at = Instant::now();
        match session(&shared, Arc::new(connection), device_login).await? {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Lost(reason) => {
                tracing::warn!(
                    reason,
                    node,
                    vhost,
                    "lost the broker connection; apps keep running, reconnecting"
                );
                schedule.session_ended(connected_at);
                brokers.leave(fastrand::usize(..));
            }
        }
    }
}

/// Says loudly at start when the agent logs in with a broker user other than its own device
/// credential's (`nebula-device-<id>`, `POST /api/v2/devices/<id>/credentials`): a login
/// shared by devices (the development setup's `guest`) lets whoever holds it publish changes
/// to every device.
fn warn_of_a_shared_login(device: &nebula_protocol::Name, brokers: &crate::brokers::BrokerList) {
    let own = names::device_user(device);
    for broker in brokers.brokers() {
        let user = &broker.uri().authority.userinfo.username;
        if *user != own {
            tracing::warn!(
                user = %user,
                own_user = %own,
                "logging in to the broker with a login that is not this device's own credential: \
                 if other devices share it, whoever holds it can publish changes to every device \
                 (fine for development; for a fleet, mint one per device, README \"Securing a fleet\")"
            );
            return;
        }
    }
}

/// Opens an AMQP connection whose socket gives up on data the broker has not acknowledged
/// within `unacknowledged_limit` (`TCP_USER_TIMEOUT`).
///
/// Without it, a link that dies silently (a cellular NAT that dropped its mapping, a pulled
/// cable upstream) is noticed only when lapin has read nothing for two heartbeat timeouts,
/// or when the kernel gives up retransmitting (about 15 minutes with Linux's defaults). The
/// agent writes a heartbeat after half a timeout without writing, so a dead link is noticed
/// within half a timeout plus the limit, at no cost in bytes. TCP keepalive is not set: the
/// heartbeats keep the socket from idling longer than half a timeout, so its probes would not
/// fire, and RabbitMQ needs the heartbeats anyway to drop a dead device's connection.
async fn connect(
    uri: AMQPUri,
    properties: ConnectionProperties,
    tls: &crate::tls::TlsSettings,
    unacknowledged_limit: Duration,
) -> Result<Connection, lapin::Error> {
    let runtime = lapin::runtime::default_runtime()?;
    let limit_ms = u32::try_from(unacknowledged_limit.as_millis()).unwrap_or(u32::MAX);
    #[cfg(feature = "tls")]
    let connector = tls.config.clone().map(lapin::tcp::RustlsConnector::from);
    // amqps:// needs the tls feature; the configuration refuses it without.
    #[cfg(not(feature = "tls"))]
    let _ = tls;
    Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, runtime| {
            let io_error = |error: std::io::Error| {
                lapin::Error::from(lapin::ErrorKind::IOError(Arc::new(error)))
            };
            // TCP first, with the socket option set on it; TLS (amqps://) then wraps it.
            let mut plain = uri.clone();
            plain.scheme = AMQPScheme::AMQP;
            let stream = plain
                .connect_with_config_async(OwnedTLSConfig::default().as_ref(), &runtime)
                .await
                .map_err(io_error)?;
            // Without it (a kernel or sandbox that refuses the option) the connection still
            // works; a dead link is then noticed by lapin's missing heartbeats, later.
            if let AsyncTcpStream::Plain(socket) = &stream
                && let Err(errno) =
                    rustix::net::sockopt::set_tcp_user_timeout(socket.get_ref(), limit_ms)
            {
                tracing::warn!(error = %errno, "cannot set TCP_USER_TIMEOUT on the broker connection; a dead link will be noticed only after two heartbeat timeouts of silence");
            }
            match uri.scheme {
                AMQPScheme::AMQP => Ok(stream),
                // The broker's certificate is verified for the URL's host name, against
                // NEBULA_AMQP_CA_FILE or the system's store (crate::tls).
                #[cfg(feature = "tls")]
                AMQPScheme::AMQPS => match &connector {
                    Some(connector) => stream
                        .into_rustls(connector, &uri.authority.host)
                        .await
                        .map_err(io_error),
                    None => Err(io_error(std::io::Error::other(
                        "amqps:// without TLS settings (a bug: the configuration makes them)",
                    ))),
                },
                #[cfg(not(feature = "tls"))]
                AMQPScheme::AMQPS => Err(io_error(std::io::Error::other(
                    "amqps:// needs an agent built with the `tls` feature",
                ))),
            }
        },
        properties,
    )
    .await
}

/// One connection's life: a boot flow per target and the reporter, until shutdown, the
/// connection's loss, or a failed state write.
async fn session<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    connection: Arc<Connection>,
    device_login: Option<Arc<str>>,
) -> Result<SessionEnd, StateError> {
    let stop = shared.shutdown.child_token();
    let mut events = connection.events_listener();
    let mut tasks: JoinSet<Result<FlowEnd, StateError>> = JoinSet::new();
    // Tasks run in the session's span (the fleet simulator names each agent's device in it).
    tasks.spawn({
        let (shared, connection, stop) = (shared.clone(), connection.clone(), stop.clone());
        let publisher = reports::AmqpReports {
            connection,
            channel: None,
            routing_key: names::report_routing_key(&shared.config.device_id),
            device_login: device_login.clone(),
        };
        async move { Ok(report_loop(shared, publisher, stop).await) }.in_current_span()
    });
    let targets = match &shared.config.mode {
        Mode::Group(group) => vec![Target::Group(group.clone())],
        Mode::Apps(apps) => apps.iter().cloned().map(Target::App).collect(),
    };
    for target in targets {
        tasks.spawn(
            follow::follow(
                shared.clone(),
                connection.clone(),
                device_login.clone(),
                target,
                stop.clone(),
            )
            .in_current_span(),
        );
    }
    let end = loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break Ok(SessionEnd::Shutdown),
            event = events.next() => match event {
                // Channel-level (soft) errors, such as the expected 404 of binding to an
                // exchange that does not exist yet, are handled by the operation that caused
                // them; anything else means the connection is gone.
                Some(lapin::Event::Error(error)) if error.is_amqp_soft_error() => {
                    tracing::debug!(error = %error, "channel error");
                }
                Some(lapin::Event::Error(error)) => break Ok(SessionEnd::Lost(error.to_string())),
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(reason, "the broker blocked this connection");
                }
                Some(_) => {}
                None => break Ok(SessionEnd::Lost("event stream ended".into())),
            },
            joined = tasks.join_next() => match joined {
                Some(Ok(Ok(FlowEnd::Stopped))) => {}
                Some(Ok(Ok(FlowEnd::ConnectionLost(reason)))) => break Ok(SessionEnd::Lost(reason)),
                Some(Ok(Err(error))) => break Err(error),
                Some(Err(error)) => {
                    // A task panicked (a bug): start over on a new connection rather than
                    // run with a target nobody follows.
                    break Ok(SessionEnd::Lost(format!("a transport task failed: {error}")));
                }
                None => break Ok(SessionEnd::Shutdown),
            },
        }
    };
    // Let every task finish what it is doing (a state write must never be cut in half),
    // then close the connection: cleanly on shutdown, so the broker requeues unacknowledged
    // deliveries at once; a lost one has nothing to close.
    stop.cancel();
    let mut fatal = None;
    let wind_down = async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(error)) = joined {
                fatal.get_or_insert(error);
            }
        }
    };
    if tokio::time::timeout(SESSION_WIND_DOWN, wind_down)
        .await
        .is_err()
    {
        tracing::warn!("transport tasks did not stop in time; aborting them");
        tasks.abort_all();
    }
    if connection.status().connected() {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            connection.close(200, "agent stopping or reconnecting".into()),
        )
        .await;
    }
    match fatal {
        Some(error) if end.is_ok() => Err(error),
        _ => end,
    }
}
