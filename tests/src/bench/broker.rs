//! Samples the RabbitMQ node(s)' (beam.smp) resident memory and CPU while a scenario runs:
//! the Erlang VMs listening on the given AMQP ports (one, or a cluster's three, summed).

use crate::cluster::listener_pid;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BrokerUsage {
    /// The highest sum over the nodes of their resident memory.
    pub max_resident_mib: f64,
    /// Average CPU over the sampled period, summed over the nodes, in percent of one core.
    pub cpu_percent: f64,
    /// CPU time over the sampled period, summed over the nodes, in seconds.
    pub cpu_secs: f64,
}

/// Samples until `stop` is called.
#[derive(Debug)]
pub struct BrokerSampler {
    running: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<BrokerUsage>>,
}

impl BrokerSampler {
    pub fn start(ports: Vec<u16>) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&running);
        let task = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut usage = BrokerUsage::default();
            // CPU ticks per VM: the first and the last seen (a node killed and started
            // again is another process, counted on its own).
            let mut ticks: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
            let mut pids: Vec<u32> = Vec::new();
            let mut sample = |pids: &[u32], usage: &mut BrokerUsage| {
                let mut resident = 0;
                for &pid in pids {
                    resident += resident_kib(pid).unwrap_or(0);
                    if let Some(now) = cpu_ticks(pid) {
                        ticks.entry(pid).or_insert((now, now)).1 = now;
                    }
                }
                usage.max_resident_mib = usage.max_resident_mib.max(resident as f64 / 1024.0);
            };
            while flag.load(Ordering::Relaxed) {
                if pids.len() < ports.len() || pids.iter().any(|pid| cpu_ticks(*pid).is_none()) {
                    pids = ports
                        .iter()
                        .filter_map(|port| listener_pid(*port))
                        .collect();
                }
                sample(&pids, &mut usage);
                std::thread::sleep(Duration::from_millis(200));
            }
            sample(&pids, &mut usage);
            let busy: u64 = ticks.values().map(|(first, last)| last - first).sum();
            // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
            usage.cpu_secs = busy as f64 / 100.0;
            usage.cpu_percent = 100.0 * usage.cpu_secs / started.elapsed().as_secs_f64();
            usage
        });
        Self {
            running,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) -> BrokerUsage {
        self.running.store(false, Ordering::Relaxed);
        match self.task.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => BrokerUsage::default(),
        }
    }
}

/// A scenario that fails midway drops its sampler without `stop`: the sampling thread must
/// end all the same, or the runtime waits for it forever when the benchmark exits (a failed
/// run hung CI until its timeout).
impl Drop for BrokerSampler {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
    }
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
