//! The broker link: the instance's one broker connection at a time, over the nodes listed in
//! `NEBULA_AMQP_URL` (one broker, or the nodes of a cluster), replaced when it fails.
//!
//! The link is the [`Publisher`] the service writes through. While a connection serves, every
//! operation runs on it; an operation failing in a way that condemns the connection (a missing
//! confirm, a refused operation: [`AmqpError::ends_connection`]) ends it at once, so the next
//! request does not wait on a broker that is already known to be in trouble. Without a
//! connection every operation fails at once with [`AmqpError::Unavailable`], and the write
//! path refuses writes before storing them (`is_connected`). A write already stored when its
//! connection failed is answered 503 and keeps its outbox flag: the reconnect's outbox pass
//! publishes it, or, if it was still under way then, the periodic outbox (one to two
//! intervals later).
//!
//! [`run`] owns the connection's life: the consumers of `nebula.sync` and `nebula.reports` on
//! it, and when it ends (the node died or paused, the connection failed, a consumer ended, an
//! operation condemned it) it stops taking writes, connects again — to the next node first,
//! then round the list — reconciles the broker topology with the store and runs the outbox
//! (exactly what a starting instance does, since changes made meanwhile through other
//! instances or this one's failed writes may have missed the broker), and only then serves
//! again. The instance itself stays up and answers reads throughout; only the store failing
//! ends it (DESIGN §3).

use super::Publisher;
use super::amqp::{AmqpBroker, QueueType};
use crate::error::AmqpError;
use crate::service::Service;
use crate::shutdown::Shutdown;
use async_trait::async_trait;
use nebula_protocol::{Incarnation, Message};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The wait between two rounds over the nodes: a short fixed part and up to as much again at
/// random. A control plane is one of a few instances, not a fleet: what matters after a
/// broker restart is answering the devices' sync requests as soon as the broker is back
/// (each waits a limited time for its answer), not spreading a herd.
const CONNECT_RETRY: Duration = Duration::from_millis(500);
/// How long the consumers of an ended connection get to stop before they are left behind.
const SESSION_WIND_DOWN: Duration = Duration::from_secs(5);

/// One connection and what ended it.
#[derive(Debug, Clone)]
pub struct Session {
    pub broker: AmqpBroker,
    /// The node, for logs: `host:port/vhost`, never the credentials.
    pub node: String,
    /// Its place in the list.
    index: usize,
    ended: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

impl Session {
    /// Condemns the connection; the first reason is logged and kept.
    pub fn end(&self, reason: impl std::fmt::Display) {
        let reason = reason.to_string();
        if self.reason.set(reason.clone()).is_ok() {
            tracing::warn!(node = %self.node, reason = %reason, "dropping the broker connection");
        }
        self.ended.cancel();
    }

    fn reason(&self) -> String {
        self.reason
            .get()
            .cloned()
            .unwrap_or_else(|| "unknown".into())
    }
}

#[derive(Debug)]
struct Inner {
    urls: Vec<String>,
    /// Index of the node tried next.
    next: AtomicUsize,
    publish_timeout: Duration,
    queue_type: QueueType,
    /// Signs what each connection publishes (`crate::signing`).
    signer: Option<Arc<crate::signing::Signer>>,
    /// The connection writes go through; `None` while reconnecting.
    current: RwLock<Option<Session>>,
}

#[derive(Debug, Clone)]
pub struct BrokerLink {
    inner: Arc<Inner>,
}

impl BrokerLink {
    /// A link over `urls` (at least one), starting at a random node so that instances spread
    /// over a cluster's nodes.
    pub fn new(urls: Vec<String>, publish_timeout: Duration, queue_type: QueueType) -> Self {
        assert!(
            !urls.is_empty(),
            "the configuration guarantees a broker URL"
        );
        let start = fastrand::usize(..urls.len());
        Self {
            inner: Arc::new(Inner {
                urls,
                next: AtomicUsize::new(start),
                publish_timeout,
                queue_type,
                signer: None,
                current: RwLock::new(None),
            }),
        }
    }

    /// Signs every change and sync reply with `signer`. Only on a link not cloned yet (right
    /// after [`BrokerLink::new`]), so that every connection it makes signs.
    #[must_use]
    pub fn signing_with(mut self, signer: Option<Arc<crate::signing::Signer>>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("signing_with is called on a new link, before it is shared")
            .signer = signer;
        self
    }

    /// Connects, trying the nodes in turn (the next one first) until one takes the
    /// connection, for at most `patience` (`None`: until `stop`). `Ok(None)` when stopped.
    pub async fn connect(
        &self,
        patience: Option<Duration>,
        stop: &CancellationToken,
    ) -> Result<Option<Session>, AmqpError> {
        let started = Instant::now();
        let mut attempt = 0u64;
        loop {
            for _ in 0..self.inner.urls.len() {
                attempt += 1;
                let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.urls.len();
                let url = &self.inner.urls[index];
                let node = node_of(url);
                let connected = tokio::select! {
                    () = stop.cancelled() => return Ok(None),
                    connected = AmqpBroker::connect(url, self.inner.publish_timeout, self.inner.queue_type) => connected.map(|broker| broker.signing_with(self.inner.signer.clone())),
                };
                match connected {
                    Ok(broker) => {
                        tracing::info!(node = %node, queue_type = self.inner.queue_type.label(), "broker connected");
                        return Ok(Some(Session {
                            broker,
                            node,
                            index,
                            ended: CancellationToken::new(),
                            reason: Arc::default(),
                        }));
                    }
                    Err(error) => {
                        tracing::warn!(node = %node, attempt, error = %error, "broker connection failed");
                        if patience.is_some_and(|patience| started.elapsed() >= patience) {
                            return Err(error);
                        }
                    }
                }
            }
            let delay = CONNECT_RETRY + CONNECT_RETRY.mul_f64(fastrand::f64());
            tokio::select! {
                () = stop.cancelled() => return Ok(None),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Makes `session` the connection writes go through.
    pub fn serve(&self, session: &Session) {
        *self.slot() = Some(session.clone());
    }

    /// Stops taking writes (until [`BrokerLink::serve`]); returns the connection that served.
    fn withdraw(&self) -> Option<Session> {
        self.slot().take()
    }

    /// After `lost` failed: the next attempt goes to one of the other nodes, at random — not
    /// simply the next in the list, where every instance of the lost node would go.
    fn leave(&self, lost: &Session) {
        let count = self.inner.urls.len();
        if count > 1 {
            let next = lost.index + 1 + fastrand::usize(..count - 1);
            self.inner.next.store(next % count, Ordering::Relaxed);
        }
    }

    fn slot(&self) -> std::sync::RwLockWriteGuard<'_, Option<Session>> {
        self.inner
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The serving connection. One already condemned counts as none from that moment, not
    /// only once [`run`] has withdrawn it: the next write must not wait on it.
    fn current(&self) -> Result<Session, AmqpError> {
        self.inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .filter(|session| !session.ended.is_cancelled())
            .ok_or_else(|| AmqpError::Unavailable("reconnecting to the broker".into()))
    }

    /// Runs `operation` on the serving connection; an error that condemns the connection
    /// ends it (see the module docs).
    async fn on_session<T, F>(
        &self,
        operation: impl FnOnce(AmqpBroker) -> F,
    ) -> Result<T, AmqpError>
    where
        F: std::future::Future<Output = Result<T, AmqpError>>,
    {
        let session = self.current()?;
        let result = operation(session.broker.clone()).await;
        if let Err(error) = &result
            && error.ends_connection()
        {
            session.end(error);
        }
        result
    }

    /// Closes the serving connection (at shutdown).
    pub async fn close(&self) {
        if let Some(session) = self.withdraw() {
            session.broker.close().await;
        }
    }
}

#[async_trait]
impl Publisher for BrokerLink {
    async fn declare_exchange(&self, exchange: &str) -> Result<(), AmqpError> {
        self.on_session(|broker| async move { broker.declare_exchange(exchange).await })
            .await
    }

    async fn expose_to_mqtt(
        &self,
        exchange: &str,
        incarnation: Incarnation,
    ) -> Result<(), AmqpError> {
        self.on_session(|broker| async move { broker.expose_to_mqtt(exchange, incarnation).await })
            .await
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<(), AmqpError> {
        self.on_session(|broker| async move { broker.delete_exchange(exchange).await })
            .await
    }

    async fn bind_exchange(&self, destination: &str, source: &str) -> Result<(), AmqpError> {
        self.on_session(|broker| async move { broker.bind_exchange(destination, source).await })
            .await
    }

    async fn unbind_exchange(&self, destination: &str, source: &str) -> Result<(), AmqpError> {
        self.on_session(|broker| async move { broker.unbind_exchange(destination, source).await })
            .await
    }

    async fn publish(&self, exchange: &str, message: &Message) -> Result<(), AmqpError> {
        self.on_session(|broker| async move { broker.publish(exchange, message).await })
            .await
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool, AmqpError> {
        self.on_session(|broker| async move { broker.queue_exists(queue).await })
            .await
    }

    fn is_connected(&self) -> bool {
        self.current()
            .is_ok_and(|session| session.broker.is_connected())
    }
}

/// `host:port/vhost` of a broker URL, for logs (the URL holds the password).
fn node_of(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!(
            "{}:{}/{}",
            uri.authority.host,
            uri.authority.port,
            uri.vhost.replace('/', "%2f")
        ),
        Err(_) => "(unparsable URL)".into(),
    }
}

/// Serves `first` (already made the link's serving connection, its topology reconciled),
/// then every connection after it, until shutdown. See the module docs.
pub async fn run(
    link: BrokerLink,
    first: Session,
    service: Service,
    sync_prefetch: u16,
    shutdown: Shutdown,
) {
    let mut session = first;
    loop {
        serve_until_ended(&session, &service, sync_prefetch, &shutdown).await;
        if shutdown.token().is_cancelled() {
            return;
        }
        link.withdraw();
        link.leave(&session);
        tracing::warn!(node = %session.node, reason = %session.reason(), "broker connection lost; reconnecting (writes answer 503 meanwhile)");
        // Closed on the side: a node that hangs must not hold the reconnect for its timeout.
        let old = session.broker.clone();
        tokio::spawn(async move { old.close().await });
        match reconnect(&link, &service, &shutdown).await {
            Some(next) => session = next,
            None => return,
        }
        link.serve(&session);
        service.metrics().broker_connected();
        tracing::info!(node = %session.node, "serving again on a new broker connection");
    }
}

/// Runs the consumers of `session` until it ends (or shutdown).
async fn serve_until_ended(
    session: &Session,
    service: &Service,
    sync_prefetch: u16,
    shutdown: &Shutdown,
) {
    let stop = shutdown.token().child_token();
    let mut consumers = tokio::task::JoinSet::new();
    {
        let (broker, service, stop) = (session.broker.clone(), service.clone(), stop.clone());
        consumers
            .spawn(async move { crate::sync::run(broker, service, sync_prefetch, stop).await });
    }
    {
        let (broker, service, stop) = (session.broker.clone(), service.clone(), stop.clone());
        consumers.spawn(async move { crate::reports::run(broker, service, stop).await });
    }
    tokio::select! {
        () = shutdown.token().cancelled() => {}
        () = session.ended.cancelled() => {}
        watched = session.broker.watch(stop.clone()) => {
            if let Err(error) = watched {
                session.end(error);
            }
        }
        // A consumer only ends by itself on an error: the broker cancelled it (its queue's
        // node went away) or its channel failed. An instance that no longer answers syncs
        // must not keep serving writes as if all were well.
        Some(joined) = consumers.join_next() => {
            let reason = match joined {
                Ok(Err(error)) => error.to_string(),
                Ok(Ok(())) => "a consumer stopped".into(),
                Err(error) => format!("a consumer failed: {error}"),
            };
            session.end(reason);
        }
    }
    stop.cancel();
    if tokio::time::timeout(SESSION_WIND_DOWN, async {
        while consumers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("the consumers of the old broker connection did not stop in time");
        consumers.abort_all();
    }
}

/// A new connection, made ready to serve: the broker topology as the store says and every
/// unconfirmed change published, before any write goes through it. `None` on shutdown, and
/// when preparing fails for any reason but the broker (the store: as at start, the instance
/// ends).
async fn reconnect(link: &BrokerLink, service: &Service, shutdown: &Shutdown) -> Option<Session> {
    let mut failures = 0u32;
    loop {
        let session = match link.connect(None, shutdown.token()).await {
            Ok(Some(session)) => session,
            Ok(None) => return None,
            Err(error) => {
                // Unreachable without a patience; kept total.
                tracing::warn!(error = %error, "reconnecting to the broker failed");
                continue;
            }
        };
        let prepared = service.with_broker(Arc::new(session.broker.clone()));
        let ready = async {
            let groups = prepared.reconcile_topology().await?;
            let republished = crate::outbox::run_once(&prepared).await?;
            Ok::<_, crate::service::ServiceError>((groups, republished))
        };
        match ready.await {
            Ok((groups, republished)) => {
                tracing::info!(node = %session.node, groups, republished, "broker topology reconciled after the reconnect");
                return Some(session);
            }
            Err(crate::service::ServiceError::Amqp(error)) => {
                // This connection is no good either: another, after a growing pause (a
                // broker that takes connections and fails every operation must not get
                // tens of them a second).
                tracing::warn!(node = %session.node, error = %error, "preparing the new broker connection failed");
                session.broker.close().await;
                link.leave(&session);
                failures = failures.saturating_add(1);
                let pause = CONNECT_RETRY.saturating_mul(failures.min(20));
                tokio::select! {
                    () = shutdown.token().cancelled() => return None,
                    () = tokio::time::sleep(pause + pause.mul_f64(fastrand::f64())) => {}
                }
            }
            Err(error) => {
                shutdown.fail(format!("preparing a new broker connection failed: {error}"));
                session.broker.close().await;
                return None;
            }
        }
    }
}
