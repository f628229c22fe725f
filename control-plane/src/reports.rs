//! The report ingester: consumes `nebula.reports` (DESIGN §3) and hands every device report
//! to [`Service::ingest_report`], the one ingestion path.
//!
//! Every instance consumes the queue (competing consumers) with a bounded prefetch, like the
//! sync responder. A message that is not a device report, or a report that breaks the rules
//! (another device's routing key, larger than [`MAX_REPORT_BYTES`] before decoding, a stored
//! record beyond its cap, a record the store refuses), is rejected without requeue, counted
//! and logged: never retried forever. A report the store failed on is requeued once for
//! another instance while this one stops (the store failing ends the instance); failing
//! again there, it is dropped: the device's next report replaces it, and a report that
//! somehow breaks every store must not take every instance down in turn. The consumer ending
//! for any other reason ends the broker connection (`broker::link` makes a new one): one
//! that no longer ingests must not go on while device records go stale.
//!
//! The queue itself stays bounded (`x-max-length`, drop-head, one-hour TTL; see
//! `broker::amqp`): with every control plane down, the newest reports wait and the oldest
//! go, which is what a "latest report" registry wants anyway.

use crate::broker::amqp::{AmqpBroker, operation};
use crate::broker::consume::asker;
use crate::broker::consume::consume;
use crate::device_credentials::check_report;
use crate::error::AmqpError;
use crate::service::Service;
use crate::service::devices::{IngestError, Ingested, now_ms};
use crate::shutdown::Shutdown;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use nebula_protocol::{DeviceReport, Message, decode, names};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Reports one instance holds unacknowledged and ingests at once. Each costs a store read
/// and a write; more in flight than this only queues inside the store.
pub const REPORT_PREFETCH: u16 = 64;
/// The largest delivery decoded as a report, in bytes. A real report is a few kilobytes; one
/// near the bounds of `service::devices` would be a record MongoDB cannot hold. Checked before
/// decoding, so a huge message costs no allocation beyond what the broker handed over.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;
/// How often devices not seen for the expiry are removed.
const EXPIRY_PASS: Duration = Duration::from_secs(3600);

/// Consumes `nebula.reports` on `broker`'s connection until `stop`, or a broker error.
pub async fn run(
    broker: AmqpBroker,
    service: Service,
    stop: CancellationToken,
) -> Result<(), AmqpError> {
    let service = &service;
    consume(
        &broker,
        names::REPORTS_QUEUE,
        REPORT_PREFETCH,
        "report ingester",
        &stop,
        move |_, delivery| handle(service, delivery),
    )
    .await
}

/// The report a delivery holds, or why it is rejected (logged here).
fn report_of(data: &[u8], routing_key: &str) -> Option<DeviceReport> {
    if data.len() > MAX_REPORT_BYTES {
        tracing::warn!(
            device = routing_key.strip_prefix("report.").unwrap_or(routing_key),
            bytes = data.len(),
            limit = MAX_REPORT_BYTES,
            "oversized device report, rejected"
        );
        return None;
    }
    match decode(data) {
        Ok(Message::DeviceReport(report)) => Some(report),
        Ok(other) => {
            tracing::warn!(
                kind = other.kind(),
                "not a device report on the reports queue, rejected"
            );
            None
        }
        Err(error) => {
            tracing::warn!(error = %error, bytes = data.len(), "undecodable device report, rejected");
            None
        }
    }
}

async fn handle(service: &Service, delivery: Delivery) -> Result<(), AmqpError> {
    let started = std::time::Instant::now();
    let Some(report) = report_of(&delivery.data, delivery.routing_key.as_str()) else {
        return reject(service, &delivery).await;
    };
    if let Err(refusal) = check_report(&report.device_id, asker(&delivery)) {
        tracing::warn!(device = %report.device_id, refusal = %refusal, "device report refused");
        return reject(service, &delivery).await;
    }
    let routing_key = delivery.routing_key.as_str();
    match service.ingest_report(&report, routing_key, now_ms()).await {
        Ok(ingested) => {
            service
                .metrics()
                .report_ingested(ingested == Ingested::Stored, started.elapsed());
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map(|_| ())
                .map_err(operation("basic.ack"))
        }
        Err(IngestError::Report(error)) => {
            tracing::warn!(error = %error, "device report rejected");
            reject(service, &delivery).await
        }
        Err(IngestError::Service(error)) => {
            // The store failed (the service has started the shutdown): another instance
            // takes the report, once (module docs).
            tracing::error!(
                error = %error,
                device = %report.device_id,
                redelivered = delivery.redelivered,
                "cannot ingest device report"
            );
            if delivery.redelivered {
                return reject(service, &delivery).await;
            }
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .map(|_| ())
                .map_err(operation("basic.nack"))
        }
    }
}

async fn reject(service: &Service, delivery: &Delivery) -> Result<(), AmqpError> {
    service.metrics().report_rejected();
    delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .map(|_| ())
        .map_err(operation("basic.reject"))
}

/// Removes devices not seen for `expiry`, and past reports beyond the report history's time
/// limit, at start and every hour, until shutdown. Every instance runs it; removing what
/// another instance already removed is a no-op.
pub async fn expire(service: Service, expiry: Duration, shutdown: Shutdown) {
    loop {
        match service.expire_reports().await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(
                removed,
                ttl_secs = service.report_retention().ttl.as_secs(),
                "expired past reports"
            ),
            Err(error) => {
                tracing::error!(error = %error, "expiring past reports failed");
                return;
            }
        }
        match service.expire_audit().await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(
                removed,
                ttl_secs = service.audit_ttl().as_secs(),
                "expired audit entries"
            ),
            // The trail's own trouble: devices and reports are still expired.
            Err(error) => tracing::error!(error = %error, "expiring audit entries failed"),
        }
        match service.expire_devices(expiry).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(
                removed,
                expiry_secs = expiry.as_secs(),
                "expired devices not seen for the expiry"
            ),
            Err(error) => {
                tracing::error!(error = %error, "expiring devices failed");
                return;
            }
        }
        tokio::select! {
            () = shutdown.token().cancelled() => return,
            () = tokio::time::sleep(EXPIRY_PASS) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::devices::tests::sample_report;

    #[test]
    fn a_delivery_beyond_the_cap_is_rejected_before_decoding() {
        let report = sample_report();
        let key = names::report_routing_key(&report.device_id);
        let small = nebula_protocol::encode(&Message::DeviceReport(report.clone()));
        assert_eq!(report_of(&small, &key), Some(report.clone()));
        // A valid report, but over the cap: its error alone is 300 KiB.
        let mut large = report;
        large.apps[0].error = Some("e".repeat(300 * 1024));
        let bytes = nebula_protocol::encode(&Message::DeviceReport(large));
        assert!(bytes.len() > MAX_REPORT_BYTES);
        assert_eq!(report_of(&bytes, &key), None);
    }
}
