//! Facts about the device: machine id, host name, CPU cores, memory, root disk and CPU
//! usage, read from `/etc`, `/proc` and `statvfs` — no shelling out, nothing that needs a
//! library the size budget cannot afford.

use crate::config::{HostIdentity, MachineId};
use nebula_protocol::ResourceUsage;
use nebula_protocol::placement::DeviceCapacity;
use std::path::Path;

/// Where the machine id is looked for, in order: systemd's, then D-Bus's (older systems and
/// some containers only have the latter).
pub const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// The host name (reported, never the device id).
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The host name and the machine id the configuration defaults the device id to.
pub fn host_identity() -> HostIdentity {
    HostIdentity {
        hostname: hostname(),
        machine_id: read_machine_id(MACHINE_ID_FILES.iter().map(Path::new)),
    }
}

/// The first of `files` that can be read and is not blank (an image built for first-boot
/// setup ships an empty `/etc/machine-id`).
pub fn read_machine_id<'a>(files: impl IntoIterator<Item = &'a Path>) -> Option<MachineId> {
    files.into_iter().find_map(|path| {
        let contents = std::fs::read_to_string(path).ok()?;
        (!contents.trim().is_empty()).then(|| MachineId {
            path: path.to_path_buf(),
            contents,
        })
    })
}

/// CPU cores (online) and total memory.
pub fn capacity() -> DeviceCapacity {
    let cpu_cores = std::thread::available_parallelism()
        .map_or(1, |cores| u32::try_from(cores.get()).unwrap_or(u32::MAX));
    let memory_mb = read_meminfo().map_or(0, |memory| memory.total_bytes / (1024 * 1024));
    DeviceCapacity {
        cpu_cores,
        memory_mb,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Parses `/proc/meminfo`: `MemTotal` and `MemAvailable`, in kB.
pub fn parse_meminfo(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kilobytes| kilobytes * 1024)
    };
    let total_bytes = field("MemTotal:")?;
    let available_bytes = field("MemAvailable:").or_else(|| field("MemFree:"))?;
    Some(Memory {
        total_bytes,
        available_bytes,
    })
}

fn read_meminfo() -> Option<Memory> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// Busy and total jiffies from the `cpu` line of `/proc/stat`.
pub fn parse_cpu_times(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle + iowait are not busy time.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Measures CPU usage between two reports.
#[derive(Debug, Default)]
pub struct CpuSampler {
    previous: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Percentage of CPU busy since the previous call (since boot on the first call).
    pub fn sample(&mut self) -> f32 {
        let Some(current) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_cpu_times(&text))
        else {
            return 0.0;
        };
        let (busy_before, total_before) = self.previous.unwrap_or((0, 0));
        self.previous = Some(current);
        let busy = current.0.saturating_sub(busy_before);
        let total = current.1.saturating_sub(total_before);
        if total == 0 {
            0.0
        } else {
            // Precision loss is irrelevant for a percentage in a report.
            (busy as f64 * 100.0 / total as f64) as f32
        }
    }
}

/// What a report says about the host besides its load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// `PRETTY_NAME` of `/etc/os-release` (`Debian GNU/Linux 12 (bookworm)`).
    pub os: String,
    /// Kernel name and release (`Linux 6.1.0-18-arm64`).
    pub kernel: String,
    /// Seconds since boot.
    pub uptime_secs: u64,
}

/// Where the operating system's name is looked for, in order (os-release(5)).
const OS_RELEASE_FILES: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// This host's facts; what cannot be read is left empty (a report is never refused for it).
pub fn host_facts() -> HostFacts {
    let uname = rustix::system::uname();
    let kernel = format!(
        "{} {}",
        uname.sysname().to_string_lossy(),
        uname.release().to_string_lossy()
    );
    HostFacts {
        os: OS_RELEASE_FILES
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| parse_os_release(&text))
            .unwrap_or_default(),
        kernel: kernel.trim().to_string(),
        uptime_secs: std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|text| parse_uptime(&text))
            .unwrap_or(0),
    }
}

/// `PRETTY_NAME` (else `NAME`) of an os-release file, unquoted.
pub fn parse_os_release(text: &str) -> Option<String> {
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
            let value = value.trim().trim_matches('"').trim_matches('\'');
            (!value.is_empty()).then(|| value.to_string())
        })
    };
    field("PRETTY_NAME").or_else(|| field("NAME"))
}

/// The whole seconds of the first number of `/proc/uptime` (`350735.47 234388.90`).
pub fn parse_uptime(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let seconds = first.split('.').next()?;
    seconds.parse().ok()
}

/// Memory, root disk and CPU usage for a report.
pub fn resource_usage(cpu: &mut CpuSampler) -> ResourceUsage {
    let capacity = capacity();
    let memory = read_meminfo().unwrap_or(Memory {
        total_bytes: 0,
        available_bytes: 0,
    });
    let (root_disk_total_bytes, root_disk_used_bytes) = rustix::fs::statvfs("/")
        .map(|stats| {
            let total = stats.f_blocks.saturating_mul(stats.f_frsize);
            let free = stats.f_bfree.saturating_mul(stats.f_frsize);
            (total, total.saturating_sub(free))
        })
        .unwrap_or((0, 0));
    ResourceUsage {
        cpu_cores: capacity.cpu_cores,
        cpu_percent: cpu.sample(),
        memory_total_bytes: memory.total_bytes,
        memory_used_bytes: memory.total_bytes.saturating_sub(memory.available_bytes),
        root_disk_total_bytes,
        root_disk_used_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_comes_from_the_first_file_that_has_one() {
        let directory = tempfile::tempdir().expect("tempdir");
        let (etc, dbus) = (
            directory.path().join("etc-machine-id"),
            directory.path().join("dbus-machine-id"),
        );
        let files = [etc.as_path(), dbus.as_path()];
        assert_eq!(read_machine_id(files), None);
        std::fs::write(&dbus, "0123456789abcdef0123456789abcdef\n").expect("write");
        // An empty /etc/machine-id (first boot not done) falls back to D-Bus's.
        std::fs::write(&etc, "\n").expect("write");
        let found = read_machine_id(files).expect("dbus machine id");
        assert_eq!(found.path, dbus);
        std::fs::write(&etc, "fedcba9876543210fedcba9876543210\n").expect("write");
        let found = read_machine_id(files).expect("etc machine id");
        assert_eq!(found.path, etc);
        assert_eq!(found.contents.trim(), "fedcba9876543210fedcba9876543210");
    }

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:        3999000 kB\nMemFree:          100000 kB\nMemAvailable:    2000000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(Memory {
                total_bytes: 3_999_000 * 1024,
                available_bytes: 2_000_000 * 1024
            })
        );
        assert_eq!(parse_meminfo("nonsense"), None);
    }

    #[test]
    fn parses_cpu_times() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_cpu_times(text), Some((150, 1000)));
        assert_eq!(parse_cpu_times("intr 1"), None);
    }

    #[test]
    fn parses_os_release_and_uptime() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            parse_os_release(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            parse_os_release("NAME='Alpine Linux'\n").as_deref(),
            Some("Alpine Linux")
        );
        assert_eq!(parse_os_release("ID=x\nPRETTY_NAME=\n"), None);
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Some(350_735));
        assert_eq!(parse_uptime(""), None);
    }

    #[test]
    fn reads_this_machine() {
        let capacity = capacity();
        assert!(capacity.cpu_cores >= 1);
        assert!(capacity.memory_mb > 0);
        assert!(!hostname().is_empty());
        let facts = host_facts();
        assert!(facts.kernel.starts_with("Linux "), "{facts:?}");
        assert!(facts.uptime_secs > 0, "{facts:?}");
        let usage = resource_usage(&mut CpuSampler::default());
        assert!(usage.root_disk_total_bytes >= usage.root_disk_used_bytes);
        assert!(usage.memory_total_bytes >= usage.memory_used_bytes);
        assert!((0.0..=100.0).contains(&usage.cpu_percent));
    }
}
