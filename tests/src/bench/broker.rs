//! Samples the RabbitMQ node's (beam.smp) resident memory and CPU while a scenario runs.

use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BrokerUsage {
    pub max_resident_mib: f64,
    /// Average CPU over the sampled period, in percent of one core.
    pub cpu_percent: f64,
}

/// Samples until `stop` is dropped or called.
#[derive(Debug)]
pub struct BrokerSampler {
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BrokerUsage>,
}

impl BrokerSampler {
    pub fn start() -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&running);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut usage = BrokerUsage::default();
            let first_ticks = beam_pid().and_then(cpu_ticks);
            while flag.load(Ordering::Relaxed) {
                if let Some(resident) = beam_pid().and_then(resident_kib) {
                    usage.max_resident_mib = usage.max_resident_mib.max(resident as f64 / 1024.0);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if let (Some(first), Some(last)) = (first_ticks, beam_pid().and_then(cpu_ticks)) {
                // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
                let busy = last.saturating_sub(first) as f64 / 100.0;
                usage.cpu_percent = 100.0 * busy / started.elapsed().as_secs_f64();
            }
            usage
        });
        Self { running, task }
    }

    pub async fn stop(self) -> BrokerUsage {
        self.running.store(false, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

fn beam_pid() -> Option<u32> {
    let output = std::process::Command::new("pgrep")
        .args(["-o", "beam.smp"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
