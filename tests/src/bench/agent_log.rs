//! The simulated agents' own logs during a benchmark, kept in a file (stderr holds the
//! progress lines): when agents fail to converge, the benchmark's error names them and
//! [`explain`] prints what each of them last logged.

use crate::fleet::Laggards;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Lines printed per laggard, and laggards explained.
const LINES_PER_AGENT: usize = 40;
const AGENTS_EXPLAINED: usize = 3;

/// The agents' log file. Buffered, so that a thousand agents logging at once do not take
/// turns at a write per line (and skew the figures); [`AgentLog::flush`] writes it out.
#[derive(Debug)]
pub struct AgentLog {
    path: PathBuf,
    writer: Arc<Mutex<BufWriter<std::fs::File>>>,
}

/// One log line's writer: the shared buffer, locked per write.
struct SharedWriter(Arc<Mutex<BufWriter<std::fs::File>>>);

impl Write for SharedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        lock(&self.0).flush()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends every agent's log (`info` and up, or the filter in `NEBULA_BENCH_LOG`) to
/// `/tmp/nebula-bench-<scenario>.log`, replacing an earlier run's.
pub fn install(scenario: &str) -> anyhow::Result<AgentLog> {
    let path = std::env::temp_dir().join(format!("nebula-bench-{scenario}.log"));
    let file = std::fs::File::create(&path)
        .map_err(|error| anyhow::anyhow!("cannot create {}: {error}", path.display()))?;
    let writer = Arc::new(Mutex::new(BufWriter::with_capacity(1 << 20, file)));
    let filter = std::env::var("NEBULA_BENCH_LOG")
        .unwrap_or_else(|_| "nebula_agent=info,nebula_tests::fleet=info".into());
    let make_writer = {
        let writer = Arc::clone(&writer);
        move || SharedWriter(Arc::clone(&writer))
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter)?)
        .with_ansi(false)
        .with_writer(make_writer)
        .try_init()
        .map_err(|error| anyhow::anyhow!("cannot install the log: {error}"))?;
    Ok(AgentLog { path, writer })
}

impl AgentLog {
    /// Writes out what is buffered: the file is complete up to now.
    pub fn flush(&self) {
        if let Err(error) = lock(&self.writer).flush() {
            eprintln!(
                "nebula-bench: cannot write {}: {error}",
                self.path.display()
            );
        }
    }
}

/// When `error` is about agents that did not converge, prints the last lines each of the
/// first few of them logged (their span is `agent{device=<id>}`).
pub fn explain(agent_log: &AgentLog, error: &anyhow::Error) {
    agent_log.flush();
    let log = agent_log.path.as_path();
    let Some(laggards) = error.downcast_ref::<Laggards>() else {
        return;
    };
    for device in laggards.devices.iter().take(AGENTS_EXPLAINED) {
        let needle = format!("device={device}}}");
        let lines = match std::fs::File::open(log) {
            Ok(file) => last_lines_with(BufReader::new(file), &needle, LINES_PER_AGENT),
            Err(error) => {
                eprintln!("nebula-bench: cannot read {}: {error}", log.display());
                return;
            }
        };
        eprintln!(
            "nebula-bench: the last {} log lines of agent {device} (all in {}):",
            lines.len(),
            log.display()
        );
        for line in lines {
            eprintln!("  {line}");
        }
    }
}

fn last_lines_with(reader: impl BufRead, needle: &str, keep: usize) -> Vec<String> {
    let mut lines = std::collections::VecDeque::with_capacity(keep);
    for line in reader.lines().map_while(Result::ok) {
        if line.contains(needle) {
            if lines.len() == keep {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }
    lines.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_of_one_device_only() {
        let log = "\
a agent{device=sim-1}: connected
b agent{device=sim-10}: connected
c agent{device=sim-1}: synced
d agent{device=sim-1}: lost
";
        let lines = last_lines_with(log.as_bytes(), "device=sim-1}", 2);
        assert_eq!(
            lines,
            vec![
                "c agent{device=sim-1}: synced",
                "d agent{device=sim-1}: lost"
            ]
        );
    }
}
