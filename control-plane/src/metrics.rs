//! Counters of what this instance did, served at `GET /metrics` in the Prometheus text format.
//!
//! They let an operator see sync load and publish rates without reading logs, and let
//! `nebula-bench` count the sync requests a storm really caused (agents that fail and retry
//! ask more than once). Counters only, never names: the endpoint is unauthenticated like
//! `/healthz`, so a scraper needs no admin credentials.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The counters, shared by the REST handlers, the outbox and the sync responder.
#[derive(Debug)]
pub struct Metrics {
    /// When this process started counting, so a reader can tell a restarted instance (whose
    /// counters began again at zero) from one that merely answered nothing new.
    started: SystemTime,
    sync_found: AtomicU64,
    sync_not_found: AtomicU64,
    sync_rejected: AtomicU64,
    changes_published: AtomicU64,
    outbox_republished: AtomicU64,
    writes: AtomicU64,
    write_batches: AtomicU64,
    corrupt_records: AtomicU64,
    outbox_skipped_corrupt: AtomicU64,
    sync_corrupt: AtomicU64,
    sync_foreign_store: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: SystemTime::now(),
            sync_found: AtomicU64::default(),
            sync_not_found: AtomicU64::default(),
            sync_rejected: AtomicU64::default(),
            changes_published: AtomicU64::default(),
            outbox_republished: AtomicU64::default(),
            writes: AtomicU64::default(),
            write_batches: AtomicU64::default(),
            corrupt_records: AtomicU64::default(),
            outbox_skipped_corrupt: AtomicU64::default(),
            sync_corrupt: AtomicU64::default(),
            sync_foreign_store: AtomicU64::default(),
        }
    }
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

    /// One store write carried `changes` combined changes of one object.
    pub fn write_batch(&self, changes: usize) {
        self.write_batches.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(
            u64::try_from(changes).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// A stored record could not be read back (its body does not parse or breaks the rules).
    pub fn corrupt_record(&self) {
        self.corrupt_records.fetch_add(1, Ordering::Relaxed);
    }

    /// The outbox skipped a flagged record because it is corrupt.
    pub fn outbox_skipped_corrupt(&self) {
        self.outbox_skipped_corrupt.fetch_add(1, Ordering::Relaxed);
    }

    /// A sync request was rejected because what it asks about is corrupt in the store.
    pub fn sync_corrupt(&self) {
        self.sync_corrupt.fetch_add(1, Ordering::Relaxed);
    }

    /// A sync request came from an agent that last synced with another store.
    pub fn sync_foreign_store(&self) {
        self.sync_foreign_store.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter.
    pub fn render(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let started = self
            .started
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut out = format!(
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
             # TYPE process_start_time_seconds gauge\n\
             process_start_time_seconds {started:.3}\n"
        );
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
        counter(
            "nebula_writes_total",
            "Update requests written (several concurrent ones of one object share a store write).",
            &[("", get(&self.writes))],
        );
        counter(
            "nebula_write_batches_total",
            "Store writes that carried update requests.",
            &[("", get(&self.write_batches))],
        );
        counter(
            "nebula_corrupt_records_total",
            "Reads of a stored record that could not be parsed or broke the rules.",
            &[("", get(&self.corrupt_records))],
        );
        counter(
            "nebula_outbox_skipped_corrupt_total",
            "Flagged records the outbox skipped because they are corrupt.",
            &[("", get(&self.outbox_skipped_corrupt))],
        );
        counter(
            "nebula_sync_requests_corrupt_total",
            "Sync requests rejected because the app or group is corrupt in the store.",
            &[("", get(&self.sync_corrupt))],
        );
        counter(
            "nebula_sync_foreign_store_total",
            "Sync requests from agents that last synced with another store than this instance's.",
            &[("", get(&self.sync_foreign_store))],
        );
        out
    }
}

/// Reads the value of one sample (`name` with its labels, as rendered) from a `/metrics`
/// body; for this crate's tests (`nebula-bench` reads the text itself, as a scraper would).
pub fn sample<T: std::str::FromStr>(body: &str, name: &str) -> Option<T> {
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
        metrics.write_batch(3);
        metrics.write_batch(1);
        metrics.corrupt_record();
        metrics.outbox_skipped_corrupt();
        metrics.sync_corrupt();
        metrics.sync_foreign_store();
        metrics.sync_foreign_store();
        let body = metrics.render();
        let read = |name| sample::<u64>(&body, name);
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
        assert_eq!(read("nebula_writes_total"), Some(4));
        assert_eq!(read("nebula_write_batches_total"), Some(2));
        assert_eq!(read("nebula_corrupt_records_total"), Some(1));
        assert_eq!(read("nebula_outbox_skipped_corrupt_total"), Some(1));
        assert_eq!(read("nebula_sync_requests_corrupt_total"), Some(1));
        assert_eq!(read("nebula_sync_foreign_store_total"), Some(2));
        assert_eq!(read("nebula_no_such_counter"), None);
        assert!(body.contains("# TYPE nebula_changes_published_total counter\n"));
        let started: f64 = sample(&body, "process_start_time_seconds").expect("start time");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        assert!((now.as_secs_f64() - started).abs() < 60.0, "{started}");
    }
}
