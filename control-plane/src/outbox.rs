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

/// Passes until shutdown. A broker error only ends the pass: the broker link replaces the
/// connection and runs a pass of its own on the new one before it serves. Any other error
/// is fatal.
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
            Err(ServiceError::Amqp(error)) => {
                tracing::warn!(error = %error, "outbox pass stopped by the broker; the reconnect finishes it");
            }
            Err(error) => {
                tracing::error!(error = %error, "outbox pass failed");
                shutdown.fail(&error);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::fake::FakeBroker;
    use crate::store::memory::MemoryStore;
    use nebula_protocol::{AppConfig, Message, Name};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_publish_still_waiting_for_its_confirm_is_not_republished() {
        let broker = Arc::new(FakeBroker::new());
        let service = Service::new(
            Arc::new(MemoryStore::new()),
            broker.clone(),
            Shutdown::new(),
        );
        let name = Name::new("slow").expect("name");
        service
            .create_app(AppConfig::new(name.clone(), "nginx"))
            .await
            .expect("create");

        // A slow broker: the update's publish waits 300 ms for its confirm, long enough for
        // two outbox passes that both see its flag.
        broker.set_confirm_delay(Some(Duration::from_millis(300)));
        let writer = service.clone();
        let update = tokio::spawn(async move {
            writer
                .update_app(&name, |current| -> Result<AppConfig, ServiceError> {
                    let mut next = current.clone();
                    next.docker_image = "nginx:2".into();
                    Ok(next)
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, seen) = service
            .republish_pending(Some(&PendingSet::new()))
            .await
            .expect("pass");
        assert_eq!(seen.len(), 1, "the update's flag is set while it waits");
        let (handled, _) = service.republish_pending(Some(&seen)).await.expect("pass");
        assert_eq!(handled, 0, "in flight here: left to the request");
        update.await.expect("join").expect("update");

        let published = broker.snapshot().published;
        let updates = published
            .iter()
            .filter(|(_, message)| matches!(message, Message::AppChanged(app) if app.app_id == 2))
            .count();
        assert_eq!(updates, 1, "{published:?}");
        // Confirmed: nothing is left for the outbox.
        let (handled, seen) = service.republish_pending(None).await.expect("pass");
        assert_eq!((handled, seen.len()), (0, 0));
    }
}
