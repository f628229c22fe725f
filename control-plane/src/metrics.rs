//! Counters of what this instance did, served at `GET /metrics` in the Prometheus text format.
//!
//! They let an operator see sync load and publish rates without reading logs, and let
//! `nebula-bench` count the sync requests a storm really caused (agents that fail and retry
//! ask more than once). Counts and route templates only, never names: the endpoint is
//! unauthenticated like `/healthz`, so a scraper needs no admin credentials, and what it
//! shows must not list the fleet's apps or devices.
//!
//! Histograms (HTTP latency by route, sync answers, publish confirms, report ingestion) use
//! fixed buckets from 1 ms to 10 s; gauges of the fleet (devices online and offline, the
//! outbox backlog) are read from the store when scraped and passed in as [`Gauges`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram with [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds, so that it stays an integer.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(index) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The `_bucket`, `_sum` and `_count` lines, with `labels` (`key="value",...` or empty)
    /// in front of `le`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count();
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {count}"
        );
        let braces = |labels: &str| {
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// HTTP requests of one route template and method.
#[derive(Debug, Default)]
struct RouteStats {
    statuses: BTreeMap<u16, u64>,
    latency: Histogram,
}

/// Values of the fleet, read from the store when `/metrics` is scraped (`None`: the store
/// did not answer, the lines are left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub devices_online: Option<u64>,
    pub devices_offline: Option<u64>,
    pub outbox_backlog: Option<u64>,
}

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
    broker_connections: AtomicU64,
    writes: AtomicU64,
    write_batches: AtomicU64,
    corrupt_records: AtomicU64,
    outbox_skipped_corrupt: AtomicU64,
    sync_corrupt: AtomicU64,
    sync_refused: AtomicU64,
    sync_foreign_store: AtomicU64,
    reports_stored: AtomicU64,
    reports_stale: AtomicU64,
    reports_rejected: AtomicU64,
    login_failures: AtomicU64,
    audit_failures: AtomicU64,
    logins_throttled: AtomicU64,
    sync_latency: Histogram,
    confirm_latency: Histogram,
    report_latency: Histogram,
    /// By (route template, method).
    http: Mutex<BTreeMap<(String, String), RouteStats>>,
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
            broker_connections: AtomicU64::default(),
            writes: AtomicU64::default(),
            write_batches: AtomicU64::default(),
            corrupt_records: AtomicU64::default(),
            outbox_skipped_corrupt: AtomicU64::default(),
            sync_corrupt: AtomicU64::default(),
            sync_refused: AtomicU64::default(),
            sync_foreign_store: AtomicU64::default(),
            reports_stored: AtomicU64::default(),
            reports_stale: AtomicU64::default(),
            reports_rejected: AtomicU64::default(),
            login_failures: AtomicU64::default(),
            audit_failures: AtomicU64::default(),
            logins_throttled: AtomicU64::default(),
            sync_latency: Histogram::default(),
            confirm_latency: Histogram::default(),
            report_latency: Histogram::default(),
            http: Mutex::default(),
        }
    }
}

impl Metrics {
    /// A sync request was answered `elapsed` after it was taken off the queue.
    pub fn sync_latency(&self, elapsed: Duration) {
        self.sync_latency.observe(elapsed);
    }

    /// The broker confirmed a publish `elapsed` after it was sent.
    pub fn confirm_latency(&self, elapsed: Duration) {
        self.confirm_latency.observe(elapsed);
    }

    /// A device report was ingested (`stored`: it is the device's latest now; otherwise a
    /// later one was there already) in `elapsed`.
    pub fn report_ingested(&self, stored: bool, elapsed: Duration) {
        let counter = if stored {
            &self.reports_stored
        } else {
            &self.reports_stale
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.report_latency.observe(elapsed);
    }

    /// A message on the reports queue was not a valid report of the device it names.
    pub fn report_rejected(&self) {
        self.reports_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A request came with credentials that are wrong.
    pub fn login_failed(&self) {
        self.login_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A write was done but its audit entry could not be stored.
    pub fn audit_failed(&self) {
        self.audit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was refused unchecked: its source is locked out after failed logins.
    pub fn login_throttled(&self) {
        self.logins_throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP request to `route` (the route's template, never the names in the path) was
    /// answered with `status` after `elapsed`.
    pub fn http_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let mut http = self
            .http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stats = http
            .entry((route.to_string(), method.to_string()))
            .or_default();
        *stats.statuses.entry(status).or_default() += 1;
        stats.latency.observe(elapsed);
    }

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

    /// A broker connection was made and is serving (the first one, or one after a loss).
    pub fn broker_connected(&self) {
        self.broker_connections.fetch_add(1, Ordering::Relaxed);
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

    /// A sync request was refused: beyond what the asking device's credential covers, or
    /// for another device than the one that sent it.
    pub fn sync_refused(&self) {
        self.sync_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A sync request came from an agent that last synced with another store.
    pub fn sync_foreign_store(&self) {
        self.sync_foreign_store.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter, histogram and gauge.
    pub fn render(&self, gauges: &Gauges) -> String {
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
            "nebula_broker_connections_total",
            "Broker connections made by this instance: the first, then one per failover or reconnect.",
            &[("", get(&self.broker_connections))],
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
            "nebula_sync_requests_refused_total",
            "Sync requests refused: beyond what the asking device's own credential covers, or for another device than the one that sent them.",
            &[("", get(&self.sync_refused))],
        );
        counter(
            "nebula_sync_foreign_store_total",
            "Sync requests from agents that last synced with another store than this instance's.",
            &[("", get(&self.sync_foreign_store))],
        );
        counter(
            "nebula_reports_ingested_total",
            "Device reports ingested: stored as the device's latest, or stale (a later one of the same agent was there).",
            &[
                ("{result=\"stored\"}", get(&self.reports_stored)),
                ("{result=\"stale\"}", get(&self.reports_stale)),
            ],
        );
        counter(
            "nebula_reports_rejected_total",
            "Messages on the reports queue that were not valid reports of the device they name.",
            &[("", get(&self.reports_rejected))],
        );
        counter(
            "nebula_login_failures_total",
            "Requests with wrong credentials (the source address is in the log, never the secret).",
            &[("", get(&self.login_failures))],
        );
        counter(
            "nebula_audit_failures_total",
            "Writes done whose audit entry could not be stored (each is in the log).",
            &[("", get(&self.audit_failures))],
        );
        counter(
            "nebula_logins_throttled_total",
            "Requests refused with 429, unchecked, because their address is locked out after failed logins.",
            &[("", get(&self.logins_throttled))],
        );
        let http = self
            .http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        out.push_str(
            "# HELP nebula_http_requests_total HTTP requests answered, by route template, method and status.\n\
             # TYPE nebula_http_requests_total counter\n",
        );
        for ((route, method), stats) in http.iter() {
            for (status, count) in &stats.statuses {
                let _ = writeln!(
                    out,
                    "nebula_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
                );
            }
        }
        out.push_str(
            "# HELP nebula_http_request_duration_seconds Time to answer HTTP requests, by route template and method.\n\
             # TYPE nebula_http_request_duration_seconds histogram\n",
        );
        for ((route, method), stats) in http.iter() {
            stats.latency.render(
                &mut out,
                "nebula_http_request_duration_seconds",
                &format!("route=\"{route}\",method=\"{method}\""),
            );
        }
        drop(http);
        for (name, help, histogram) in [
            (
                "nebula_sync_duration_seconds",
                "Time from taking a sync request off the queue to publishing its answer.",
                &self.sync_latency,
            ),
            (
                "nebula_publish_confirm_duration_seconds",
                "Time from publishing a change to the broker's confirm.",
                &self.confirm_latency,
            ),
            (
                "nebula_report_ingest_duration_seconds",
                "Time to ingest one device report into the store.",
                &self.report_latency,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            histogram.render(&mut out, name, "");
        }
        let mut gauge = |name: &str, help: &str, samples: &[(&str, Option<u64>)]| {
            if samples.iter().all(|(_, value)| value.is_none()) {
                return;
            }
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in samples {
                if let Some(value) = value {
                    let _ = writeln!(out, "{name}{labels} {value}");
                }
            }
        };
        gauge(
            "nebula_devices",
            "Devices in the registry, by whether they are online now (the whole fleet: every instance shows the same; counted at most every 10 s).",
            &[
                ("{state=\"online\"}", gauges.devices_online),
                ("{state=\"offline\"}", gauges.devices_offline),
            ],
        );
        gauge(
            "nebula_outbox_backlog",
            "Objects whose last change has not been confirmed by the broker yet (outbox flags set in the store).",
            &[("", gauges.outbox_backlog)],
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
        metrics.sync_refused();
        metrics.sync_foreign_store();
        metrics.sync_foreign_store();
        metrics.report_ingested(true, Duration::from_millis(2));
        metrics.report_ingested(false, Duration::from_millis(2));
        metrics.report_ingested(true, Duration::from_millis(2));
        metrics.report_rejected();
        metrics.sync_latency(Duration::from_millis(3));
        metrics.confirm_latency(Duration::from_secs(20));
        metrics.http_request("/api/v2/apps/{app}", "GET", 200, Duration::from_millis(4));
        metrics.http_request("/api/v2/apps/{app}", "GET", 403, Duration::from_millis(30));
        metrics.http_request("/api/v2/apps/{app}", "GET", 200, Duration::from_micros(500));
        let body = metrics.render(&Gauges {
            devices_online: Some(3),
            devices_offline: Some(1),
            outbox_backlog: Some(0),
        });
        let read = |name: &str| sample::<u64>(&body, name);
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
        assert_eq!(
            read("nebula_reports_ingested_total{result=\"stored\"}"),
            Some(2)
        );
        assert_eq!(
            read("nebula_reports_ingested_total{result=\"stale\"}"),
            Some(1)
        );
        assert_eq!(read("nebula_reports_rejected_total"), Some(1));
        let route = "route=\"/api/v2/apps/{app}\",method=\"GET\"";
        assert_eq!(
            read(&format!(
                "nebula_http_requests_total{{{route},status=\"200\"}}"
            )),
            Some(2)
        );
        assert_eq!(
            read(&format!(
                "nebula_http_requests_total{{{route},status=\"403\"}}"
            )),
            Some(1)
        );
        // Buckets are cumulative: 0.5 ms and 4 ms by 5 ms, all three by 50 ms.
        assert_eq!(
            read(&format!(
                "nebula_http_request_duration_seconds_bucket{{{route},le=\"0.001\"}}"
            )),
            Some(1)
        );
        assert_eq!(
            read(&format!(
                "nebula_http_request_duration_seconds_bucket{{{route},le=\"0.005\"}}"
            )),
            Some(2)
        );
        assert_eq!(
            read(&format!(
                "nebula_http_request_duration_seconds_bucket{{{route},le=\"0.05\"}}"
            )),
            Some(3)
        );
        assert_eq!(
            read(&format!(
                "nebula_http_request_duration_seconds_count{{{route}}}"
            )),
            Some(3)
        );
        // 20 s is past every bound but +Inf.
        assert_eq!(
            read("nebula_publish_confirm_duration_seconds_bucket{le=\"10\"}"),
            Some(0)
        );
        assert_eq!(
            read("nebula_publish_confirm_duration_seconds_bucket{le=\"+Inf\"}"),
            Some(1)
        );
        assert_eq!(read("nebula_sync_duration_seconds_count"), Some(1));
        let sum: f64 = sample(&body, "nebula_sync_duration_seconds_sum").expect("sum");
        assert!((sum - 0.003).abs() < 1e-9, "{sum}");
        assert_eq!(read("nebula_devices{state=\"online\"}"), Some(3));
        assert_eq!(read("nebula_devices{state=\"offline\"}"), Some(1));
        assert_eq!(read("nebula_outbox_backlog"), Some(0));
        // Without the store's answer the gauges are left out, not shown as zero.
        let without = metrics.render(&Gauges::default());
        assert!(!without.contains("nebula_devices"), "{without}");
        assert!(body.contains("# TYPE nebula_changes_published_total counter\n"));
        let started: f64 = sample(&body, "process_start_time_seconds").expect("start time");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        assert!((now.as_secs_f64() - started).abs() < 60.0, "{started}");
    }
}
