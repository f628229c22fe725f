//! Real processes under a small supervisor that restarts them the way systemd's
//! `Restart=always` or Docker's restart policy would, so that "fail hard and restart" is
//! exercised exactly as on a device.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// How long the supervisor waits before restarting an exited process (systemd's RestartSec).
pub const RESTART_DELAY: Duration = Duration::from_millis(300);

/// A process that is restarted whenever it exits, until stopped.
#[derive(Debug, Clone)]
pub struct Supervised {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    program: PathBuf,
    arguments: Vec<String>,
    env: Mutex<BTreeMap<String, String>>,
    log_path: PathBuf,
    child: Mutex<Option<Child>>,
    /// How many times the process exited while supervised (SIGKILLs from `kill` included).
    exits: AtomicU32,
    /// Bumped by `stop` and `restart_with`, so that a supervisor task of an earlier run
    /// never restarts the process next to the current one.
    generation: AtomicU32,
    starts: AtomicU32,
    running: AtomicBool,
}

impl Supervised {
    /// Starts `program` with exactly `env` (plus PATH and HOME), logging to `log_dir/<name>.log`.
    pub async fn start(
        name: &str,
        program: PathBuf,
        env: BTreeMap<String, String>,
        log_dir: &Path,
    ) -> Self {
        Self::start_with_arguments(name, program, Vec::new(), env, log_dir).await
    }

    /// Like `start`, with command-line arguments (e.g. a binary run under qemu-user).
    pub async fn start_with_arguments(
        name: &str,
        program: PathBuf,
        arguments: Vec<String>,
        env: BTreeMap<String, String>,
        log_dir: &Path,
    ) -> Self {
        let inner = Arc::new(Inner {
            name: name.to_string(),
            program,
            arguments,
            env: Mutex::new(env),
            log_path: log_dir.join(format!("{name}.log")),
            child: Mutex::new(None),
            exits: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            starts: AtomicU32::new(0),
            running: AtomicBool::new(true),
        });
        inner.spawn().await;
        tokio::spawn(Inner::supervise(Arc::downgrade(&inner), 0));
        Self { inner }
    }

    /// SIGKILL: the process dies at once, mid-whatever; the supervisor restarts it. Returns
    /// how it ended (`signal() == Some(9)` when the kill landed).
    pub async fn kill(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.inner.child.lock().await;
        let child = guard.as_mut()?;
        let _ = child.start_kill();
        child.wait().await.ok()
    }

    /// SIGKILL, and no restart: the process is gone as a machine that lost power is. (Not
    /// `stop`, which asks politely first.)
    pub async fn kill_and_stay_down(&self) -> Option<std::process::ExitStatus> {
        self.inner.running.store(false, Ordering::SeqCst);
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.inner.child.lock().await;
        let child = guard.as_mut()?;
        let _ = child.start_kill();
        child.wait().await.ok()
    }

    /// Stops supervising and sends SIGTERM, waiting up to `grace` before SIGKILL.
    pub async fn stop(&self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.inner.running.store(false, Ordering::SeqCst);
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.inner.child.lock().await;
        let child = guard.as_mut()?;
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = child.start_kill();
                child.wait().await.ok()
            }
        }
    }

    /// Starts supervising again after `stop`, with an updated environment.
    pub async fn restart_with(&self, changes: &[(&str, &str)]) {
        {
            let mut env = self.inner.env.lock().await;
            for (key, value) in changes {
                env.insert((*key).to_string(), (*value).to_string());
            }
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.running.store(true, Ordering::SeqCst);
        self.inner.spawn().await;
        tokio::spawn(Inner::supervise(Arc::downgrade(&self.inner), generation));
    }

    /// The process id of the running process, if any.
    pub async fn pid(&self) -> Option<u32> {
        self.inner.child.lock().await.as_ref().and_then(Child::id)
    }

    /// Resident memory of the running process in KiB (VmRSS), if it runs.
    pub async fn resident_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid().await?)).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Exits the supervisor restarted the process after: crashes, fail-hard exits and the
    /// SIGKILLs of `kill`.
    pub fn exits(&self) -> u32 {
        self.inner.exits.load(Ordering::SeqCst)
    }

    /// How many times the process was started, the first start included.
    pub fn starts(&self) -> u32 {
        self.inner.starts.load(Ordering::SeqCst)
    }

    pub fn log_path(&self) -> &Path {
        &self.inner.log_path
    }

    /// The process's log so far, for assertions and for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.inner.log_path).unwrap_or_default()
    }
}

impl Inner {
    async fn spawn(&self) {
        let env = self.env.lock().await.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open process log");
        let child = Command::new(&self.program)
            .args(&self.arguments)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {}: {error}", self.program.display()));
        self.starts.fetch_add(1, Ordering::SeqCst);
        *self.child.lock().await = Some(child);
    }

    /// Restarts the process whenever it exits. Holds only a weak reference: when the test
    /// drops its last handle, the process is killed (see `Drop`) instead of living on and
    /// re-creating containers behind the test's clean-up.
    async fn supervise(weak: std::sync::Weak<Self>, generation: u32) {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Some(this) = weak.upgrade() else { return };
            let current = || {
                this.running.load(Ordering::SeqCst)
                    && this.generation.load(Ordering::SeqCst) == generation
            };
            if !current() {
                return;
            }
            let exited = {
                let mut guard = this.child.lock().await;
                match guard.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(_))) | Some(Err(_)) | None => true,
                    Some(Ok(None)) => false,
                }
            };
            if exited && current() {
                this.exits.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(RESTART_DELAY).await;
                if current() {
                    this.spawn().await;
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
        // SIGKILL now and wait a moment for it to land, so that a scenario's clean-up that
        // runs right after never races a dying agent.
        if let Some(child) = self.child.get_mut().as_mut() {
            let _ = child.start_kill();
            for _ in 0..50 {
                if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A supervised process's name for logs and failure messages.
impl std::fmt::Display for Supervised {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{} (log {})",
            self.inner.name,
            self.inner.log_path.display()
        )
    }
}
