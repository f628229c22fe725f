//! The state file: [`DesiredState`] on disk, written atomically — temp file, fsync, rename,
//! fsync of the directory — so a power cut leaves either the old or the new state, never a
//! torn one. Readable only by its owner (mode 0600): it holds registry hosts, environment
//! variables and volumes of every app.
//!
//! Format: 4 bytes of magic and version, then postcard. postcard is not self-describing, so
//! every layout change gets a new version byte and a migration from the previous one:
//!
//! * `NBS\x01` — the release before incarnations: `{apps: BTreeMap<Name, AppConfigV1>,
//!   group: Option<DeviceGroupV1>, last_pruned: Option<Revision>}`. Read and converted
//!   (incarnation 0, no tombstones, no known store); never written.
//! * `NBS\x02` — [`DesiredState`] before `AppConfig` gained `stop_timeout_secs` and
//!   `pull_policy` ([`AppConfigFormat2`]). Read and converted (Docker's stop timeout,
//!   `always`); never written.
//! * `NBS\x03` — [`DesiredState`] before it held the group's cron jobs
//!   ([`DesiredStateFormat3`]). Read and converted (no cron jobs: the next group message or
//!   sync brings them); never written.
//! * `NBS\x04` — [`DesiredState`] as declared.
//!
//! The file holds wire types, so an appended protocol field changes its layout too:
//! `the_current_format_is_pinned` fails on any such change, and the fix is a new format
//! version with a migration here, never an edit of an old one.
//!
//! A file that cannot be read back is moved aside and the agent starts empty and re-syncs:
//! a corrupt file must not crash-loop the agent.

use super::DesiredState;
use crate::error::StateError;
use nebula_protocol::legacy::{AppConfigV1, DeviceGroupV1};
use nebula_protocol::model::DEFAULT_STOP_TIMEOUT_SECS;
use nebula_protocol::{
    AppConfig, ContainersPer, DeviceGroup, Incarnation, Name, ObjectVersion, PortMapping,
    PullPolicy, Revision, StoreId,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Magic and version of the format this release writes.
const MAGIC_V4: &[u8; 4] = b"NBS\x04";
/// Magic and version of the previous formats, still read.
const MAGIC_V3: &[u8; 4] = b"NBS\x03";
const MAGIC_V2: &[u8; 4] = b"NBS\x02";
const MAGIC_V1: &[u8; 4] = b"NBS\x01";
const STATE_FILE: &str = "desired-state.bin";
/// Owner read and write only.
const FILE_MODE: u32 = 0o600;

/// [`AppConfig`] as state format 2 holds it, field for field.
#[derive(Deserialize)]
struct AppConfigFormat2 {
    app_name: Name,
    app_id: Revision,
    docker_image: String,
    starting_ports: Vec<PortMapping>,
    containers_per: ContainersPer,
    env_vars: BTreeMap<String, String>,
    running: bool,
    networks: Vec<String>,
    volumes: Vec<String>,
    devices: Vec<String>,
    privileged: bool,
    rolling_restart: bool,
    incarnation: Incarnation,
}

impl From<AppConfigFormat2> for AppConfig {
    fn from(old: AppConfigFormat2) -> Self {
        Self {
            app_name: old.app_name,
            app_id: old.app_id,
            docker_image: old.docker_image,
            starting_ports: old.starting_ports,
            containers_per: old.containers_per,
            env_vars: old.env_vars,
            running: old.running,
            networks: old.networks,
            volumes: old.volumes,
            devices: old.devices,
            privileged: old.privileged,
            rolling_restart: old.rolling_restart,
            incarnation: old.incarnation,
            // What an agent of format 2 did: Docker's stop timeout, a pull on every change.
            stop_timeout_secs: DEFAULT_STOP_TIMEOUT_SECS,
            pull_policy: PullPolicy::Always,
            env_vars_form: nebula_protocol::EnvVarsForm::Dict,
        }
    }
}

/// [`DesiredState`] as state format 2 holds it, field for field.
#[derive(Deserialize)]
struct DesiredStateFormat2 {
    apps: BTreeMap<Name, AppConfigFormat2>,
    group: Option<DeviceGroup>,
    last_pruned: Option<Revision>,
    deleted_apps: BTreeMap<Name, ObjectVersion>,
    deleted_groups: BTreeMap<Name, ObjectVersion>,
    store_id: Option<StoreId>,
}

impl From<DesiredStateFormat2> for DesiredState {
    fn from(old: DesiredStateFormat2) -> Self {
        Self {
            apps: old
                .apps
                .into_iter()
                .map(|(name, app)| (name, app.into()))
                .collect(),
            group: old.group,
            last_pruned: old.last_pruned,
            deleted_apps: old.deleted_apps,
            deleted_groups: old.deleted_groups,
            store_id: old.store_id,
            cron_jobs: BTreeMap::new(),
        }
    }
}

/// [`DesiredState`] as state format 3 holds it, field for field: everything but the cron
/// jobs, appended in format 4.
#[derive(Deserialize)]
struct DesiredStateFormat3 {
    apps: BTreeMap<Name, AppConfig>,
    group: Option<DeviceGroup>,
    last_pruned: Option<Revision>,
    deleted_apps: BTreeMap<Name, ObjectVersion>,
    deleted_groups: BTreeMap<Name, ObjectVersion>,
    store_id: Option<StoreId>,
}

impl From<DesiredStateFormat3> for DesiredState {
    fn from(old: DesiredStateFormat3) -> Self {
        Self {
            apps: old.apps,
            group: old.group,
            last_pruned: old.last_pruned,
            deleted_apps: old.deleted_apps,
            deleted_groups: old.deleted_groups,
            store_id: old.store_id,
            cron_jobs: BTreeMap::new(),
        }
    }
}

/// The state of the release before incarnations (format 1), field for field.
#[derive(Deserialize)]
struct DesiredStateV1 {
    apps: BTreeMap<Name, AppConfigV1>,
    group: Option<DeviceGroupV1>,
    last_pruned: Option<Revision>,
}

impl From<DesiredStateV1> for DesiredState {
    fn from(old: DesiredStateV1) -> Self {
        Self {
            apps: old
                .apps
                .into_iter()
                .map(|(name, app)| (name, app.into()))
                .collect(),
            group: old.group.map(Into::into),
            last_pruned: old.last_pruned,
            ..Self::default()
        }
    }
}

/// Reads and writes [`DesiredState`] in a directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    directory: PathBuf,
}

impl StateStore {
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        Self {
            directory: directory.into(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.directory.join(STATE_FILE)
    }

    /// Loads the state. A missing file is an empty state; a corrupt one is renamed to
    /// `<file>.corrupt-<unix time>` and reported in the second value, and the agent starts
    /// empty (it re-syncs from the control plane).
    pub fn load(&self) -> Result<(DesiredState, Option<StateError>), StateError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok((DesiredState::default(), None));
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        match decode_state(&bytes) {
            Ok(state) => Ok((state, None)),
            Err(reason) => {
                let seconds = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_secs());
                let aside = path.with_extension(format!("corrupt-{seconds}"));
                std::fs::rename(&path, &aside).map_err(|source| StateError::Write {
                    path: aside.display().to_string(),
                    source,
                })?;
                Ok((
                    DesiredState::default(),
                    Some(StateError::Corrupt {
                        path: path.display().to_string(),
                        reason,
                    }),
                ))
            }
        }
    }

    /// Writes the state atomically and durably, in the current format, mode 0600.
    pub fn save(&self, state: &DesiredState) -> Result<(), StateError> {
        let path = self.path();
        let write_error = |source| StateError::Write {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.directory).map_err(write_error)?;
        let bytes = postcard::to_extend(state, MAGIC_V4.to_vec()).map_err(|error| {
            write_error(std::io::Error::other(format!(
                "cannot encode state: {error}"
            )))
        })?;
        write_private(&path, &bytes).map_err(write_error)?;
        Ok(())
    }
}

fn decode_state(bytes: &[u8]) -> Result<DesiredState, String> {
    let state = if let Some(body) = bytes.strip_prefix(MAGIC_V4.as_slice()) {
        decode_exactly::<DesiredState>(body)?
    } else if let Some(body) = bytes.strip_prefix(MAGIC_V3.as_slice()) {
        decode_exactly::<DesiredStateFormat3>(body)?.into()
    } else if let Some(body) = bytes.strip_prefix(MAGIC_V2.as_slice()) {
        decode_exactly::<DesiredStateFormat2>(body)?.into()
    } else if let Some(body) = bytes.strip_prefix(MAGIC_V1.as_slice()) {
        decode_exactly::<DesiredStateV1>(body)?.into()
    } else {
        return Err("bad magic or unknown format version".into());
    };
    for app in state.apps.values() {
        app.validate().map_err(|error| error.to_string())?;
    }
    if let Some(group) = &state.group {
        group.validate().map_err(|error| error.to_string())?;
    }
    for job in state.cron_jobs.values() {
        job.validate().map_err(|error| error.to_string())?;
    }
    Ok(state)
}

fn decode_exactly<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(|error| error.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(value)
}

/// Writes `bytes` to `path` atomically and durably — temporary file, fsync, rename, fsync of
/// the directory — mode 0600: a power cut leaves the old file or the new one, never a torn one.
/// The state file and an enrolled device's credential (`crate::enrol`) are written this way.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let directory = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(directory)?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&temporary)?;
    // `mode` applies only to a file this call creates; a temp file left by a crash keeps
    // whatever mode it had, so set it explicitly.
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    sync_directory(directory)
}

/// Makes the rename durable: without it a power cut can lose the directory entry.
fn sync_directory(directory: &Path) -> std::io::Result<()> {
    std::fs::File::open(directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{app, group, name};
    use super::*;
    use nebula_protocol::{ContainersPer, ObjectVersion, PortMapping, StoreId};

    #[test]
    fn saves_atomically_with_mode_0600_and_loads_back() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(directory.path().join("nested"));
        assert_eq!(store.load().expect("load").0, DesiredState::default());

        let mut state = DesiredState::default();
        state.apply_group_change(group(2, 3, &["a", "b"], vec![app("a", 1, 4)]));
        state.last_pruned = Some(2);
        state
            .deleted_apps
            .insert(name("b"), ObjectVersion::new(1, 9));
        state
            .deleted_groups
            .insert(name("old"), ObjectVersion::new(4, 2));
        state.store_id = Some(StoreId(u128::MAX - 7));
        store.save(&state).expect("save");
        let (loaded, warning) = store.load().expect("load");
        assert_eq!(loaded, state);
        assert!(warning.is_none());

        let bytes = std::fs::read(store.path()).expect("read");
        assert_eq!(&bytes[..4], b"NBS\x04");
        let mode = std::fs::metadata(store.path())
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        // No temporary file is left behind.
        let entries: Vec<_> = std::fs::read_dir(directory.path().join("nested"))
            .expect("read dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn a_leftover_temp_file_does_not_lend_its_mode() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(directory.path());
        let temporary = store.path().with_extension("tmp");
        std::fs::write(&temporary, b"half written").expect("write");
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        store.save(&DesiredState::default()).expect("save");
        let mode = std::fs::metadata(store.path())
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }

    /// The state file the release before incarnations (commit 08d36e6, `NBS\x01`) wrote for group
    /// `edge` at revision 3, prune_id 2, with member `web` at revision 4 (image
    /// `127.0.0.1:5000/nebula/test:1`, port 8000, 2 per server, env `A=1`, networks
    /// `nebula`, rolling restart) and `last_pruned` 2 — captured byte for byte from that
    /// release's `StateStore::save`.
    const PREVIOUS_RELEASE_FILE: &[u8] = &[
        b'N', b'B', b'S', 0x01, // magic, format 1
        0x01, // apps: 1 entry
        0x03, b'w', b'e', b'b', // key "web"
        0x03, b'w', b'e', b'b', // app_name
        0x04, // app_id 4
        0x1c, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'5', b'0', b'0', b'0',
        b'/', b'n', b'e', b'b', b'u', b'l', b'a', b'/', b't', b'e', b's', b't', b':',
        b'1', // docker_image
        0x01, 0x00, 0xc0, 0x3e, // starting_ports: [Same(8000)]
        0x00, 0x02, // containers_per: Server(2)
        0x01, 0x01, b'A', 0x01, b'1', // env_vars {A: 1}
        0x01, // running
        0x01, 0x06, b'n', b'e', b'b', b'u', b'l', b'a', // networks ["nebula"]
        0x00, // volumes
        0x00, // devices
        0x00, // privileged
        0x01, // rolling_restart
        0x01, // group: Some
        0x04, b'e', b'd', b'g', b'e', // device_group
        0x03, // device_group_id 3
        0x02, // prune_id 2
        0x01, 0x03, b'w', b'e', b'b', // apps ["web"]
        0x00, // cron_jobs
        0x01, 0x02, // last_pruned: Some(2)
    ];

    #[test]
    fn a_state_file_of_the_previous_release_is_migrated() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(directory.path());
        std::fs::write(store.path(), PREVIOUS_RELEASE_FILE).expect("write");
        let (state, warning) = store.load().expect("load");
        assert!(warning.is_none(), "{warning:?}");

        let web = &state.apps[&name("web")];
        assert_eq!(web.version(), ObjectVersion::new(0, 4));
        assert_eq!(web.docker_image, "127.0.0.1:5000/nebula/test:1");
        assert_eq!(web.starting_ports, vec![PortMapping::Same(8000)]);
        assert_eq!(web.containers_per, ContainersPer::Server(2));
        assert_eq!(web.env_vars.get("A").map(String::as_str), Some("1"));
        assert!(web.running && web.rolling_restart && !web.privileged);
        assert_eq!(web.networks, vec!["nebula".to_string()]);
        let group = state.group.as_ref().expect("group");
        assert_eq!(group.version(), ObjectVersion::new(0, 3));
        assert_eq!(group.prune_id, 2);
        assert_eq!(group.apps, vec![name("web")]);
        assert_eq!(state.last_pruned, Some(2));
        assert!(state.deleted_apps.is_empty() && state.deleted_groups.is_empty());
        assert_eq!(state.store_id, None);

        // The next save writes the current format, which loads back the same.
        store.save(&state).expect("save");
        assert_eq!(&std::fs::read(store.path()).expect("read")[..4], b"NBS\x04");
        assert_eq!(store.load().expect("load").0, state);
    }

    /// What the previous format (`NBS\x02`, main 93e7cd7) wrote for group `edge` (incarnation
    /// 5, revision 3, prune_id 2) with member `web` (incarnation 7, revision 4, image
    /// `127.0.0.1:5000/nebula/test:1`, port 8000, 2 per server, env `A=1`, networks
    /// `nebula`, rolling restart), `last_pruned` 2, a tombstone of `old` at 1/9 and a known
    /// store — captured byte for byte from that commit's `StateStore::save`.
    const PREVIOUS_FORMAT_FILE: &str = "4e425302010377656203776562041c3132372e302e302e313a353030302f6e6562756c612f746573743a310100c03e000201014101310101066e6562756c610000000107010465646765030201037765620005010201036f6c6401090001f7ccd5a2b4c6c88880deb7de9af1d9a2a302";

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&hex[index..index + 2], 16).expect("hex"))
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Issue 18: the state file must survive the next field. A file of the previous format
    /// loads, every app with the defaults of the fields it did not have.
    #[test]
    fn a_state_file_of_the_previous_format_is_migrated() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(directory.path());
        std::fs::write(store.path(), unhex(PREVIOUS_FORMAT_FILE)).expect("write");
        let (state, warning) = store.load().expect("load");
        assert!(warning.is_none(), "{warning:?}");

        let web = &state.apps[&name("web")];
        assert_eq!(web.version(), ObjectVersion::new(7, 4));
        assert_eq!(web.docker_image, "127.0.0.1:5000/nebula/test:1");
        assert_eq!(web.starting_ports, vec![PortMapping::Same(8000)]);
        assert_eq!(web.containers_per, ContainersPer::Server(2));
        assert!(web.running && web.rolling_restart);
        assert_eq!(web.stop_timeout_secs, 10);
        assert_eq!(web.pull_policy, PullPolicy::Always);
        let group = state.group.as_ref().expect("group");
        assert_eq!(
            (group.version(), group.prune_id),
            (ObjectVersion::new(5, 3), 2)
        );
        assert_eq!(state.last_pruned, Some(2));
        assert_eq!(
            state.deleted_apps.get(&name("old")),
            Some(&ObjectVersion::new(1, 9))
        );
        assert!(state.store_id.is_some());

        store.save(&state).expect("save");
        assert_eq!(&std::fs::read(store.path()).expect("read")[..4], b"NBS\x04");
        assert_eq!(store.load().expect("load").0, state);
    }

    /// What format 3 (`NBS\x03`, before cron jobs) wrote for group `g` (incarnation 5,
    /// revision 3) with member `web` (incarnation 7, revision 4, stop timeout 30,
    /// `if_not_present`), `last_pruned` 2, a tombstone of `old` at 1/9 and store 42 — the
    /// pinned bytes of that format, captured from its `StateStore::save`.
    const FORMAT_3_FILE: &str = "4e42530301037765620377656204056e67696e78000001000102066e6562756c610662726964676500000000071e01010167030101037765620005010201036f6c64010900012a";

    /// Issue 14: a file of format 3 loads with no cron jobs (the next group message or sync
    /// brings them), everything else as it was.
    #[test]
    fn a_state_file_of_format_3_is_migrated() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(directory.path());
        std::fs::write(store.path(), unhex(FORMAT_3_FILE)).expect("write");
        let (state, warning) = store.load().expect("load");
        assert!(warning.is_none(), "{warning:?}");
        assert_eq!(state, format_3_state());
        assert!(state.cron_jobs.is_empty());

        store.save(&state).expect("save");
        assert_eq!(&std::fs::read(store.path()).expect("read")[..4], b"NBS\x04");
        assert_eq!(store.load().expect("load").0, state);
    }

    /// The state [`FORMAT_3_FILE`] holds.
    fn format_3_state() -> DesiredState {
        let mut state = DesiredState::default();
        let mut web = app("web", 7, 4);
        web.stop_timeout_secs = 30;
        web.pull_policy = PullPolicy::IfNotPresent;
        state.apply_group_change(group(5, 3, &["web"], vec![web]));
        state.last_pruned = Some(2);
        state
            .deleted_apps
            .insert(name("old"), ObjectVersion::new(1, 9));
        state.store_id = Some(StoreId(42));
        state
    }

    /// The bytes of the current format for a state using every field. A change here means
    /// the layout changed (an appended protocol field, a new state field): give it a new
    /// format version with a migration from this one instead of editing the hex.
    #[test]
    fn the_current_format_is_pinned() {
        let mut state = format_3_state();
        let mut job = nebula_protocol::CronJob::new(name("backup"), "*/5 * * * *", "busybox");
        job.incarnation = 2;
        job.cron_job_id = 6;
        job.env_vars.insert("A".into(), "1".into());
        state.cron_jobs.insert(name("backup"), job);
        let directory = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(directory.path());
        store.save(&state).expect("save");
        let bytes = std::fs::read(store.path()).expect("read");
        assert_eq!(hex(&bytes), CURRENT_FORMAT_FILE);
        assert_eq!(store.load().expect("load").0, state);
    }

    const CURRENT_FORMAT_FILE: &str = "4e42530401037765620377656204056e67696e78000001000102066e6562756c610662726964676500000000071e01010167030101037765620005010201036f6c64010900012a01066261636b7570066261636b7570060b2a2f35202a202a202a202a0762757379626f7801014101310102066e6562756c610662726964676500000002";

    #[test]
    fn corrupt_file_is_moved_aside_and_the_agent_starts_empty() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(directory.path());
        let mut truncated = PREVIOUS_RELEASE_FILE.to_vec();
        truncated.pop();
        let mut trailing = PREVIOUS_RELEASE_FILE.to_vec();
        trailing.push(0);
        for garbage in [
            &b""[..],
            b"NBS\x01\xff\xff\xff",
            b"NBS\x02\xff\xff\xff",
            b"NBS\x03\xff\xff\xff",
            b"NBS\x04\xff\xff\xff",
            b"random bytes",
            b"NBS\x09",
            &truncated,
            &trailing,
        ] {
            std::fs::write(store.path(), garbage).expect("write");
            let (state, warning) = store.load().expect("load does not fail");
            assert_eq!(state, DesiredState::default());
            assert!(matches!(warning, Some(StateError::Corrupt { .. })));
            assert!(!store.path().exists());
            // Starting again after the corrupt file was moved aside is clean.
            assert!(store.load().expect("load").1.is_none());
        }
        let aside = std::fs::read_dir(directory.path())
            .expect("read dir")
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|entry| entry.file_name().to_string_lossy().contains("corrupt"))
            })
            .count();
        assert!(aside >= 1);
    }
}
