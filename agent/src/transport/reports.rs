//! Device reports, over any transport: best effort. A report is published after every applied change
//! (the boot sync's included) and every report interval after the connection came up — not
//! at the connection itself: a fleet reconnecting after a broker restart would add one
//! publish per device to the storm, for nothing the next change or interval does not say.
//! A report asked for by a change that says nothing new (the same apps, containers, errors
//! and convergence as the last one this connection published: a retry failing the same way
//! every backoff, an unhealthy container restarted into the same state) is not sent: on a
//! metered link each costs about 1 KB. The periodic report is always sent; it carries fresh
//! resource usage.
//! A report that cannot be published is logged
//! and the next one tries again: reports never stop the agent. How a report is published is
//! the transport's ([`ReportPublisher`]). On a graceful stop the agent sends one last
//! report marked `stopping` (best-effort, time-limited), and the control plane shows the
//! device offline at once rather than when the broker drops its connection.

use super::FlowEnd;
use crate::device::CpuSampler;
use crate::report;
use crate::runtime::ContainerRuntime;
use crate::supervisor::Shared;
use nebula_protocol::{DeviceReport, Message, encode};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Changes often come in bursts (a rolling restart): one report for the burst.
const COALESCE: Duration = Duration::from_millis(200);
/// The longest a stopping agent spends on its goodbye report (well within the session's
/// wind-down).
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);

/// How one transport publishes a report.
pub(crate) trait ReportPublisher {
    /// Publishes one encoded report (as far as the transport can tell it was taken).
    async fn publish(&mut self, payload: &[u8]) -> Result<(), String>;
    /// Whether the connection is still up: a failed publish on a lost one ends the loop.
    fn connected(&self) -> bool;
}

/// Publishes reports through `publisher` until `stop` is cancelled or the connection is lost.
pub(crate) async fn report_loop<R: ContainerRuntime, P: ReportPublisher>(
    shared: Arc<Shared<R>>,
    mut publisher: P,
    stop: CancellationToken,
) -> FlowEnd {
    let mut cpu = CpuSampler::default();
    let period = shared.config.report_interval;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the last report published on this connection said, for skipping repeats.
    let mut last_published: Option<DeviceReport> = None;
    loop {
        let periodic = tokio::select! {
            () = stop.cancelled() => return goodbye(&shared, &mut publisher, &mut cpu).await,
            _ = interval.tick() => true,
            () = shared.report_now.notified() => {
                tokio::select! {
                    () = stop.cancelled() => return goodbye(&shared, &mut publisher, &mut cpu).await,
                    () = tokio::time::sleep(COALESCE) => {}
                }
                false
            }
        };
        let report = report::build(&shared, &mut cpu).await;
        let updated = report.updated;
        let state = without_readings(&report);
        if !periodic && last_published.as_ref() == Some(&state) {
            tracing::debug!(updated, "device report unchanged; not sent");
            continue;
        }
        let payload = encode(&Message::DeviceReport(report));
        // Stop-aware: a report in flight when the connection is lost must not hold up the
        // session's reconnect for the confirm timeout.
        let published = tokio::select! {
            () = stop.cancelled() => None,
            published = publisher.publish(&payload) => Some(published),
        };
        let Some(published) = published else {
            return goodbye(&shared, &mut publisher, &mut cpu).await;
        };
        match published {
            Ok(()) => {
                tracing::debug!(updated, "published device report");
                last_published = Some(state);
            }
            Err(error) if !publisher.connected() => return FlowEnd::ConnectionLost(error),
            Err(error) => {
                tracing::warn!(error = %error, "device report not delivered; the next report tries again");
            }
        }
    }
}

/// On a graceful stop (the agent shutting down, not a session ending for a reconnect), one
/// last report marked `stopping`. Best-effort: a broker that does not take it in
/// [`GOODBYE_TIMEOUT`] only means the device shows offline when the broker drops the
/// connection instead.
async fn goodbye<R: ContainerRuntime, P: ReportPublisher>(
    shared: &Shared<R>,
    publisher: &mut P,
    cpu: &mut CpuSampler,
) -> FlowEnd {
    if !shared.shutdown.is_cancelled() || !publisher.connected() {
        return FlowEnd::Stopped;
    }
    let sent = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        let mut report = report::build(shared, cpu).await;
        report.stopping = true;
        publisher
            .publish(&encode(&Message::DeviceReport(report)))
            .await
    })
    .await;
    match sent {
        Ok(Ok(())) => tracing::debug!("published the stopping report"),
        Ok(Err(error)) => tracing::debug!(error = %error, "stopping report not delivered"),
        Err(_) => tracing::debug!("stopping report not confirmed in time"),
    }
    FlowEnd::Stopped
}

/// The report without what changes on its own between any two reports (when it was made,
/// uptimes, its place in the session, resource usage): what a change-triggered report must
/// differ in to be worth sending.
fn without_readings(report: &DeviceReport) -> DeviceReport {
    let mut state = report.clone();
    state.report_creation_time = 0;
    state.uptime_secs = 0;
    state.agent_uptime_secs = 0;
    state.session = 0;
    state.sequence = 0;
    state.resources.cpu_percent = 0.0;
    state.resources.memory_used_bytes = 0;
    state.resources.root_disk_used_bytes = 0;
    state
}

#[cfg(test)]
mod tests {
    use super::without_readings;
    use nebula_protocol::{
        AppReport, ContainerReport, DeviceMode, DeviceReport, Name, ResourceUsage,
    };

    fn report(sequence: u64, uptime_secs: u64, cpu_percent: f32, state: &str) -> DeviceReport {
        let name = |text: &str| Name::new(text).expect("name");
        DeviceReport {
            device_id: name("pi-1"),
            hostname: "pi".into(),
            device_group: None,
            device_group_id: None,
            prune_id: None,
            report_creation_time: uptime_secs * 1000,
            updated: true,
            agent_version: "0.1.0".into(),
            apps: vec![AppReport {
                app_name: name("web"),
                desired_revision: Some(3),
                applied_revision: Some(3),
                containers: vec![ContainerReport {
                    name: "web-1".into(),
                    image: "img".into(),
                    state: state.into(),
                    health: None,
                    app_id: Some(3),
                    restart_count: Some(0),
                    incarnation: Some(7),
                }],
                error: None,
                desired_incarnation: Some(7),
                converged: true,
            }],
            resources: ResourceUsage {
                cpu_cores: 2,
                cpu_percent,
                memory_total_bytes: 1 << 30,
                memory_used_bytes: uptime_secs << 20,
                root_disk_total_bytes: 1 << 34,
                root_disk_used_bytes: uptime_secs << 10,
            },
            target: "aarch64-unknown-linux-musl".into(),
            os: "Debian".into(),
            kernel: "Linux 6.1".into(),
            docker_version: Some("27.0".into()),
            uptime_secs,
            agent_uptime_secs: uptime_secs,
            report_interval_secs: 21_600,
            mode: DeviceMode::Apps(vec![name("web")]),
            session: 9,
            sequence,
            device_group_incarnation: None,
            stopping: false,
            cron_jobs: Vec::new(),
        }
    }

    #[test]
    fn reports_that_differ_only_in_readings_say_nothing_new() {
        let first = without_readings(&report(1, 100, 1.5, "running"));
        assert_eq!(first, without_readings(&report(2, 160, 7.0, "running")));
        assert_ne!(first, without_readings(&report(3, 220, 1.5, "exited")));
        // A cron job (or one of its runs) that came or went is something new too.
        let mut with_run = report(4, 280, 1.5, "running");
        with_run.cron_jobs = vec![nebula_protocol::CronJobReport {
            cron_job_name: Name::new("tick").expect("name"),
            containers: Vec::new(),
        }];
        assert_ne!(first, without_readings(&with_run));
    }
}
