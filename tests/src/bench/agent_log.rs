//! The simulated agents' own logs during a benchmark, kept in a file (stderr holds the
//! progress lines): when agents fail to converge, the benchmark's error names them and
//! [`explain`] prints what each of them last logged.

use crate::fleet::Laggards;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Lines printed per laggard, and laggards explained.
const LINES_PER_AGENT: usize = 40;
const AGENTS_EXPLAINED: usize = 3;

/// Sends every agent's log (`info` and up, or the filter in `NEBULA_BENCH_LOG`) to
/// `/tmp/nebula-bench-<scenario>.log`, replacing an earlier run's; returns its path.
pub fn install(scenario: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("nebula-bench-{scenario}.log"));
    let file = std::fs::File::create(&path)
        .map_err(|error| anyhow::anyhow!("cannot create {}: {error}", path.display()))?;
    let filter = std::env::var("NEBULA_BENCH_LOG")
        .unwrap_or_else(|_| "nebula_agent=info,nebula_tests::fleet=info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter)?)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init()
        .map_err(|error| anyhow::anyhow!("cannot install the log: {error}"))?;
    Ok(path)
}

/// When `error` is about agents that did not converge, prints the last lines each of the
/// first few of them logged (their span is `agent{device=<id>}`).
pub fn explain(log: &Path, error: &anyhow::Error) {
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
