//! The outbox loop: at start and every `NEBULA_OUTBOX_INTERVAL_SECS`, republish every change
//! whose publish was never confirmed (DESIGN §3). Every instance runs it; republishing twice
//! is harmless because agents ignore revisions they already hold.

use crate::service::{PendingSet, Service, ServiceError};
use crate::shutdown::Shutdown;
use std::time::Duration;

/// The pass at start: every flagged object, since nothing of this instance is in flight.
pub async fn run_once(service: &Service) -> Result<usize, ServiceError> {
    let (handled, _) = service.republish_pending(None).await?;
    if handled > 0 {
        tracing::info!(handled, "outbox: republished unconfirmed changes");
    }
    Ok(handled)
}

/// Passes until shutdown. Errors are fatal and already reported through `shutdown` by the
/// service; the loop just stops.
///
/// A periodic pass only republishes flags it already saw, at the same version, in the pass
/// before: a change is republished between one and two intervals after its publish failed,
/// and a request that is merely in flight is left alone (see
/// [`Service::republish_pending`]).
pub async fn run(service: Service, interval: Duration, shutdown: Shutdown) {
    let mut previous = PendingSet::new();
    loop {
        tokio::select! {
            () = shutdown.token().cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match service.republish_pending(Some(&previous)).await {
            Ok((handled, seen)) => {
                if handled > 0 {
                    tracing::info!(handled, "outbox: republished unconfirmed changes");
                }
                previous = seen;
            }
            Err(error) => {
                tracing::error!(error = %error, "outbox pass failed");
                shutdown.fail(&error);
                return;
            }
        }
    }
}
