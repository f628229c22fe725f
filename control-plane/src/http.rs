//! The HTTP server: hyper's HTTP/1 connection driver around the axum router, with the time
//! limits and the connection cap of [`HttpLimits`], HTTPS when configured
//! ([`crate::https`]), and a graceful shutdown.
//!
//! axum's own `serve` sets no header-read timeout and no connection limit, so a client that
//! opens connections and sends nothing (or sends headers a byte a minute) could hold an
//! instance's descriptors forever. Here: headers must arrive within the header timeout, the
//! whole request must be answered within the request timeout (a JSON 503 otherwise), and at
//! most `max_connections` are served at once — the rest wait in the kernel's listen backlog.

use crate::api::errors::ApiError;
use crate::config::HttpLimits;
use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long accepting pauses after an error (out of file descriptors, typically) before it
/// tries again, instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Adds the request timeout to `router`.
pub fn with_request_timeout(router: Router, limit: Duration) -> Router {
    router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| async move {
            // Writes run in tasks of their own (service::write), so giving up on the answer
            // never abandons a write half done; the client just does not learn its outcome.
            match tokio::time::timeout(limit, next.run(request)).await {
                Ok(response) => response,
                Err(_) => ApiError::timed_out(limit.as_secs_f64()).into_response(),
            }
        },
    ))
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` is cancelled, then
/// lets open requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let router = with_request_timeout(router, limits.request_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(error = %error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Every request of the connection learns its peer (failed logins are counted per
        // address: crate::login_throttle).
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let (watcher, tls) = (graceful.watcher(), tls.clone());
        let header_read_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            match tls {
                None => drive(stream, service, header_read_timeout, watcher).await,
                // The handshake in the connection's own task, so a slow client never holds
                // up accepting; it gets the header timeout, as a plain client its headers.
                Some(tls) => {
                    match tokio::time::timeout(header_read_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            drive(stream, service, header_read_timeout, watcher).await
                        }
                        Ok(Err(error)) => tracing::debug!(error = %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_secs = grace.as_secs_f64(), "requests still in flight after the grace period");
        }
    }
}

/// Serves one connection (plain or TLS) until it ends or the graceful shutdown closes it.
async fn drive<I, S>(io: I, service: S, header_read_timeout: Duration, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(error = %error, "http connection ended with an error");
    }
}
