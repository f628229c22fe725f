//! Counters of what this instance did, served at `GET /metrics` in the Prometheus text format.
//!
//! They let an operator see sync load and publish rates without reading logs, and let
//! `nebula-bench` count the sync requests a storm really caused (agents that fail and retry
//! ask more than once). Counters only, never names: the endpoint is unauthenticated like
//! `/healthz`, so a scraper needs no admin credentials.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The counters, shared by the REST handlers, the outbox and the sync responder.
#[derive(Debug, Default)]
pub struct Metrics {
    sync_found: AtomicU64,
    sync_not_found: AtomicU64,
    sync_rejected: AtomicU64,
    changes_published: AtomicU64,
    outbox_republished: AtomicU64,
}

impl Metrics {
    /// A sync request was answered; `found` is false for an explicit not-found reply.
    pub fn sync_answered(&self, found: bool) {
        let counter = if found {
            &self.sync_found
        } else {
            &self.sync_not_found
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A message on the sync queue was not a valid sync request and was rejected.
    pub fn sync_rejected(&self) {
        self.sync_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// The broker confirmed the publish of a change.
    pub fn change_published(&self) {
        self.changes_published.fetch_add(1, Ordering::Relaxed);
    }

    /// The outbox finished a change whose publish had not been confirmed.
    pub fn outbox_republished(&self) {
        self.outbox_republished.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter.
    pub fn render(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        counter(
            "nebula_sync_requests_answered_total",
            "Sync requests answered, by whether the app or group exists.",
            &[
                ("{result=\"found\"}", get(&self.sync_found)),
                ("{result=\"not_found\"}", get(&self.sync_not_found)),
            ],
        );
        counter(
            "nebula_sync_requests_rejected_total",
            "Messages on the sync queue that were not valid sync requests.",
            &[("", get(&self.sync_rejected))],
        );
        counter(
            "nebula_changes_published_total",
            "Changes whose publish the broker confirmed.",
            &[("", get(&self.changes_published))],
        );
        counter(
            "nebula_outbox_republished_total",
            "Unconfirmed changes the outbox finished.",
            &[("", get(&self.outbox_republished))],
        );
        out
    }
}

/// Reads the value of one sample (`name` with its labels, as rendered) from a `/metrics`
/// body; for this crate's tests (`nebula-bench` reads the text itself, as a scraper would).
pub fn sample(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_rendered_and_read_back() {
        let metrics = Metrics::default();
        metrics.sync_answered(true);
        metrics.sync_answered(true);
        metrics.sync_answered(false);
        metrics.sync_rejected();
        metrics.change_published();
        metrics.outbox_republished();
        metrics.outbox_republished();
        let body = metrics.render();
        let read = |name| sample(&body, name);
        assert_eq!(
            read("nebula_sync_requests_answered_total{result=\"found\"}"),
            Some(2)
        );
        assert_eq!(
            read("nebula_sync_requests_answered_total{result=\"not_found\"}"),
            Some(1)
        );
        assert_eq!(read("nebula_sync_requests_rejected_total"), Some(1));
        assert_eq!(read("nebula_changes_published_total"), Some(1));
        assert_eq!(read("nebula_outbox_republished_total"), Some(2));
        assert_eq!(read("nebula_no_such_counter"), None);
        assert!(body.contains("# TYPE nebula_changes_published_total counter\n"));
    }
}
