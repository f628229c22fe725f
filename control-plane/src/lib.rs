//! Nebula's control plane: the v2 REST API over an embedded or MongoDB store, every change
//! published to RabbitMQ with confirms, and agents' sync requests answered (DESIGN §1, §6).
//!
//! Codemap: [`config`] (environment → validated [`config::Config`]), [`store`] (the `Store`
//! trait and its backends), [`broker`] (the `Publisher` trait, lapin and a fake), [`service`]
//! (the change logic: store write → confirmed publish → outbox flag cleared), [`api`] (axum
//! routes and JSON), [`auth`], [`sync`] (the sync responder), [`reports`] (the report
//! ingester), [`outbox`], [`shutdown`].
//!
//! Architecture invariant: instances share nothing but the store and the broker, so any
//! number of them can run behind a load balancer.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod config;
pub mod device_credentials;
pub mod error;
pub mod gate;
pub mod http;
pub mod https;
pub mod login_throttle;
pub mod metrics;
pub mod outbox;
pub mod provisioning;
pub mod reports;
pub mod service;
pub mod shutdown;
pub mod signing;
pub mod store;
pub mod sync;
pub mod users;

use crate::api::AppState;
use crate::auth::Authenticator;
use crate::broker::link::{self, BrokerLink};
use crate::config::{Config, StoreConfig};
use crate::error::{AmqpError, StoreError};
use crate::service::{Service, ServiceError};
use crate::shutdown::Shutdown;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// How often the store is pinged, so an instance whose database is gone fails hard even
/// when idle.
const STORE_WATCH_INTERVAL: Duration = Duration::from_secs(5);
/// How long connecting to the broker is tried at start before the instance gives up (its
/// supervisor restarts it). Later losses are retried for as long as the instance runs.
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// Why the control plane stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("http server failed: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Fatal(String),
}

/// Opens the configured store.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Embedded { data_dir } => {
            // The default is relative: started from another directory, a control plane opens
            // another (empty) store. Say where it is, absolutely.
            let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.clone());
            if data_dir.is_relative() {
                tracing::warn!(data_dir = %absolute.display(), "NEBULA_DATA_DIR is relative; the store is where the control plane was started from");
            }
            tracing::info!(data_dir = %absolute.display(), "opening the embedded store");
            Arc::new(store::embedded::EmbeddedStore::open(data_dir)?)
        }
        StoreConfig::Mongo { url, database } => {
            Arc::new(store::mongo::MongoStore::connect(url, database).await?)
        }
    })
}

/// Runs the control plane until `shutdown` is cancelled (graceful, `Ok`) or a fatal error
/// (`Err`, the process must exit non-zero).
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), RunError> {
    let credentials = match &config.device_credentials {
        Some(settings) => Some(Arc::new(
            service::credentials::CredentialIssuer::new(settings, config.signing.as_deref())
                .map_err(RunError::Fatal)?,
        )),
        None => None,
    };
    let store = open_store(&config.store).await?;
    tracing::info!(backend = store.backend(), store_id = %store.identity(), "store open");
    let link = BrokerLink::new(
        config.amqp_urls.clone(),
        config.publish_timeout,
        config.queue_type,
    )
    .signing_with(config.signing.clone());
    match &config.signing {
        Some(signer) => {
            tracing::info!(
                public_key = signer.public_key(),
                "changes and sync replies are signed"
            );
        }
        None => tracing::warn!(
            "changes are not signed (NEBULA_SIGNING_KEY_FILE is not set): a broker login that may publish to the change exchanges can reconfigure devices"
        ),
    }
    let Some(session) = link
        .connect(Some(CONNECT_PATIENCE), shutdown.token())
        .await?
    else {
        return Ok(());
    };
    link.serve(&session);
    let service = Service::new(Arc::clone(&store), Arc::new(link.clone()), shutdown.clone())
        .with_report_retention(config.report_retention)
        .with_audit_ttl(config.audit_ttl);
    service.metrics().broker_connected();
    if service.store_is_empty().await? {
        // Normal on a first start. Next to other instances serving the same broker it means
        // this one is on the wrong data directory or database: agents that synced with them
        // show up in /readyz (`foreign_stores`) and the log, and they never act on a "not
        // found" from this store.
        tracing::warn!(store_id = %store.identity(), "the store is empty");
    }

    // The broker's bindings as the store says (whatever happened while no instance ran), then
    // changes a previous instance stored but never got confirmed, before anything new.
    let groups = service.reconcile_topology().await?;
    tracing::info!(groups, "broker topology reconciled with the store");
    outbox::run_once(&service).await?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen {
            address: config.listen,
            source,
        })?;
    let address = listener.local_addr().map_err(RunError::Serve)?;
    // The message stays "listening" (tools and tests look for it); `scheme` says which.
    match &config.https {
        Some(https) => {
            tracing::info!(address = %address, scheme = "https", certificate = https.cert_path, "listening");
        }
        None => tracing::info!(address = %address, scheme = "http", "listening"),
    }
    for warning in [
        config::insecure_listen_warning(&config),
        config::plain_http_warning(&config),
        config::shared_login_warning(&config),
    ]
    .into_iter()
    .flatten()
    {
        tracing::warn!("{warning}");
    }

    let tasks = TaskTracker::new();
    // The broker connection, its consumers (sync responder, report ingester) and every
    // reconnect after it.
    tasks.spawn(link::run(
        link.clone(),
        session,
        service.clone(),
        config.sync_prefetch,
        shutdown.clone(),
    ));
    {
        let store = Arc::clone(&store);
        let shutdown = shutdown.clone();
        tasks.spawn(async move { watch_store(store, shutdown).await });
    }
    tasks.spawn(outbox::run(
        service.clone(),
        config.outbox_interval,
        shutdown.clone(),
    ));
    tasks.spawn(reports::expire(
        service.clone(),
        config.device_expiry,
        shutdown.clone(),
    ));
    tasks.close();

    let state = AppState {
        service: service.clone(),
        authenticator: Authenticator::new(config.auth_enabled, &config.admin),
        credentials,
    };
    let grace = config.shutdown_grace;
    http::serve(
        listener,
        config.https.map(|https| https.acceptor),
        api::router(state),
        config.http,
        shutdown.token().clone(),
        grace,
    )
    .await;
    // Writes still running (a batch, its settling) finish on the open connection; background
    // tasks watch the same token. Both get the grace period, then the connection closes.
    if !service.finish_writes(grace).await {
        tracing::warn!("writes still running after the grace period; the outbox finishes them");
    }
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!("background tasks did not stop in time");
    }
    link.close().await;
    match shutdown.fatal_reason() {
        Some(reason) => Err(RunError::Fatal(reason)),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

async fn watch_store(store: Arc<dyn Store>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.token().cancelled() => return,
            () = tokio::time::sleep(STORE_WATCH_INTERVAL) => {}
        }
        // A database that stops answering (rather than refusing) must fail the instance too.
        let answered = tokio::time::timeout(STORE_WATCH_INTERVAL, store.ping())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::unavailable(format!(
                    "no answer to a ping within {} s",
                    STORE_WATCH_INTERVAL.as_secs()
                )))
            });
        if let Err(error) = answered {
            shutdown.fail(&error);
            return;
        }
    }
}
