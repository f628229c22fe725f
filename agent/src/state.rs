//! Desired state: what the agent was last told, persisted before a message is acknowledged.
//!
//! [`DesiredState`] and its update rules are pure (DESIGN §2: apply only newer revisions), so
//! they are unit-tested without a broker. [`StateStore`] writes it atomically — temp file,
//! fsync, rename, fsync of the directory — so a power cut leaves either the old or the new
//! state, never a torn one. A file that cannot be read back is moved aside and the agent
//! starts empty and re-syncs: a corrupt file must not crash-loop the agent.

use crate::error::StateError;
use nebula_protocol::{AppConfig, DeviceGroup, GroupState, Name, Revision};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Everything the agent has been told to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub apps: BTreeMap<Name, AppConfig>,
    /// Group mode: the group document last applied.
    pub group: Option<DeviceGroup>,
    /// Group mode: the `prune_id` last acted on.
    pub last_pruned: Option<Revision>,
}

/// How much a message or reply is trusted against what is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// A change message: applied only when its revision is newer (duplicates, replays and
    /// reordering are harmless).
    Incremental,
    /// A sync reply: the control plane's current state. Applied whenever it differs, because
    /// an object deleted and re-created while the device was offline starts again at
    /// revision 1 and must not be ignored.
    Sync,
}

/// What an update changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Apps whose desired config changed or went away.
    pub apps: Vec<Name>,
    /// The group document changed.
    pub group: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && !self.group
    }
}

impl DesiredState {
    fn accepts(held: Option<Revision>, offered: Revision, authority: Authority) -> bool {
        match (held, authority) {
            (None, _) => true,
            (Some(held), Authority::Incremental) => offered > held,
            (Some(held), Authority::Sync) => offered != held,
        }
    }

    /// Applies an app's config. In group mode (`self.group` set) an app that is not a
    /// member is ignored: membership comes from the group document alone.
    pub fn apply_app(&mut self, app: AppConfig, authority: Authority) -> Changes {
        if let Some(group) = &self.group
            && !group.apps.contains(&app.app_name)
        {
            return Changes::default();
        }
        let held = self.apps.get(&app.app_name).map(|held| held.app_id);
        if !Self::accepts(held, app.app_id, authority) {
            return Changes::default();
        }
        let name = app.app_name.clone();
        self.apps.insert(name.clone(), app);
        Changes {
            apps: vec![name],
            group: false,
        }
    }

    /// Forgets an app (deleted, or unknown at sync), so that a re-created app starting
    /// again at revision 1 is accepted. A delete older than the held revision is ignored.
    pub fn remove_app(&mut self, app_name: &Name, deleted_revision: Option<Revision>) -> Changes {
        let Some(held) = self.apps.get(app_name) else {
            return Changes::default();
        };
        if deleted_revision.is_some_and(|deleted| deleted < held.app_id) {
            return Changes::default();
        }
        self.apps.remove(app_name);
        if let Some(group) = &mut self.group {
            group.apps.retain(|member| member != app_name);
        }
        Changes {
            apps: vec![app_name.clone()],
            group: false,
        }
    }

    /// Applies a group's state: the group document, then its `apps` list as the membership
    /// (apps no longer listed are forgotten), then each member's full config.
    pub fn apply_group(&mut self, state: GroupState, authority: Authority) -> Changes {
        let held = self.group.as_ref().map(|group| group.device_group_id);
        let same_group = self
            .group
            .as_ref()
            .is_none_or(|group| group.device_group == state.group.device_group);
        if same_group && !Self::accepts(held, state.group.device_group_id, authority) {
            // A prune request bumps only `prune_id` (API.md: `/device_groups/<dg>/prune`),
            // so a group message at the same revision may still carry a newer one.
            if let Some(group) = &mut self.group
                && state.group.prune_id > group.prune_id
            {
                group.prune_id = state.group.prune_id;
                return Changes {
                    apps: Vec::new(),
                    group: true,
                };
            }
            return Changes::default();
        }
        let mut changes = Changes {
            apps: Vec::new(),
            group: true,
        };
        let members = state.group.apps.clone();
        self.group = Some(state.group);
        let gone: Vec<Name> = self
            .apps
            .keys()
            .filter(|app| !members.contains(app))
            .cloned()
            .collect();
        for app in gone {
            self.apps.remove(&app);
            changes.apps.push(app);
        }
        for app in state.apps {
            changes.apps.extend(self.apply_app(app, authority).apps);
        }
        changes
    }

    /// Forgets the group and every app (group deleted, or unknown at sync).
    pub fn clear_group(&mut self) -> Changes {
        let changes = Changes {
            apps: self.apps.keys().cloned().collect(),
            group: self.group.is_some(),
        };
        self.apps.clear();
        self.group = None;
        self.last_pruned = None;
        changes
    }
}

/// The magic and format version at the start of the state file.
const STATE_MAGIC: &[u8; 4] = b"NBS\x01";
const STATE_FILE: &str = "desired-state.bin";

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

    /// Writes the state atomically and durably.
    pub fn save(&self, state: &DesiredState) -> Result<(), StateError> {
        let path = self.path();
        let write_error = |source| StateError::Write {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.directory).map_err(write_error)?;
        let mut bytes = STATE_MAGIC.to_vec();
        bytes = postcard::to_extend(state, bytes).map_err(|error| {
            write_error(std::io::Error::other(format!(
                "cannot encode state: {error}"
            )))
        })?;
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary).map_err(write_error)?;
        file.write_all(&bytes).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        drop(file);
        std::fs::rename(&temporary, &path).map_err(write_error)?;
        sync_directory(&self.directory).map_err(write_error)?;
        Ok(())
    }
}

fn decode_state(bytes: &[u8]) -> Result<DesiredState, String> {
    let body = bytes
        .strip_prefix(STATE_MAGIC.as_slice())
        .ok_or_else(|| "bad magic or unknown format version".to_string())?;
    let (state, rest) =
        postcard::take_from_bytes::<DesiredState>(body).map_err(|error| error.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    for app in state.apps.values() {
        app.validate().map_err(|error| error.to_string())?;
    }
    Ok(state)
}

/// Makes the rename durable: without it a power cut can lose the directory entry.
fn sync_directory(directory: &Path) -> std::io::Result<()> {
    std::fs::File::open(directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nebula_protocol::DeviceGroup;

    fn name(value: &str) -> Name {
        Name::new(value).expect("name")
    }

    fn app(app_name: &str, revision: Revision) -> AppConfig {
        let mut app = AppConfig::new(name(app_name), "nginx");
        app.app_id = revision;
        app
    }

    fn group(revision: Revision, apps: &[&str], configs: Vec<AppConfig>) -> GroupState {
        let mut group = DeviceGroup::new(name("g"));
        group.device_group_id = revision;
        group.apps = apps.iter().map(|app| name(app)).collect();
        GroupState {
            group,
            apps: configs,
            cron_jobs: Vec::new(),
            unavailable: Vec::new(),
        }
    }

    #[test]
    fn applies_only_newer_revisions_from_messages() {
        let mut state = DesiredState::default();
        assert_eq!(
            state.apply_app(app("a", 2), Authority::Incremental).apps,
            vec![name("a")]
        );
        assert!(
            state
                .apply_app(app("a", 2), Authority::Incremental)
                .is_empty()
        );
        assert!(
            state
                .apply_app(app("a", 1), Authority::Incremental)
                .is_empty()
        );
        assert_eq!(state.apps[&name("a")].app_id, 2);
        assert!(
            !state
                .apply_app(app("a", 3), Authority::Incremental)
                .is_empty()
        );
    }

    #[test]
    fn sync_replies_win_even_when_older() {
        let mut state = DesiredState::default();
        state.apply_app(app("a", 7), Authority::Incremental);
        assert!(state.apply_app(app("a", 7), Authority::Sync).is_empty());
        // Deleted and re-created while the device was offline.
        assert!(!state.apply_app(app("a", 1), Authority::Sync).is_empty());
        assert_eq!(state.apps[&name("a")].app_id, 1);
    }

    #[test]
    fn deleting_forgets_the_revision() {
        let mut state = DesiredState::default();
        state.apply_app(app("a", 5), Authority::Incremental);
        // A stale delete of an older incarnation is ignored.
        assert!(state.remove_app(&name("a"), Some(4)).is_empty());
        assert!(!state.remove_app(&name("a"), Some(5)).is_empty());
        assert!(state.remove_app(&name("a"), Some(5)).is_empty());
        // The re-created app starts over at 1 and is accepted.
        assert!(
            !state
                .apply_app(app("a", 1), Authority::Incremental)
                .is_empty()
        );
    }

    #[test]
    fn group_membership_is_authoritative() {
        let mut state = DesiredState::default();
        let changes = state.apply_group(
            group(1, &["a", "b"], vec![app("a", 1), app("b", 1)]),
            Authority::Sync,
        );
        assert!(changes.group);
        assert_eq!(changes.apps, vec![name("a"), name("b")]);

        // A member's change arrives through the group queue.
        assert!(
            !state
                .apply_app(app("a", 2), Authority::Incremental)
                .is_empty()
        );
        // A non-member's change is ignored.
        assert!(
            state
                .apply_app(app("z", 9), Authority::Incremental)
                .is_empty()
        );

        // b leaves, c joins; a's config in the message is older than held and ignored.
        let changes = state.apply_group(
            group(2, &["a", "c"], vec![app("a", 1), app("c", 3)]),
            Authority::Incremental,
        );
        assert_eq!(changes.apps, vec![name("b"), name("c")]);
        assert_eq!(state.apps[&name("a")].app_id, 2);
        assert!(!state.apps.contains_key(&name("b")));

        // A stale group message changes nothing.
        assert!(
            state
                .apply_group(group(1, &["b"], vec![app("b", 9)]), Authority::Incremental)
                .is_empty()
        );

        // A prune request: same group revision, prune_id up.
        let mut prune = group(2, &["a", "c"], vec![app("a", 2), app("c", 3)]);
        prune.group.prune_id = 5;
        let changes = state.apply_group(prune.clone(), Authority::Incremental);
        assert!(changes.group && changes.apps.is_empty());
        assert_eq!(state.group.as_ref().map(|group| group.prune_id), Some(5));
        assert!(state.apply_group(prune, Authority::Incremental).is_empty());

        let cleared = state.clear_group();
        assert!(cleared.group);
        assert_eq!(cleared.apps, vec![name("a"), name("c")]);
        assert_eq!(state, DesiredState::default());
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(directory.path().join("nested"));
        assert_eq!(store.load().expect("load").0, DesiredState::default());

        let mut state = DesiredState::default();
        state.apply_group(group(3, &["a"], vec![app("a", 4)]), Authority::Sync);
        state.last_pruned = Some(2);
        store.save(&state).expect("save");
        let (loaded, warning) = store.load().expect("load");
        assert_eq!(loaded, state);
        assert!(warning.is_none());
        // No temporary file is left behind.
        let entries: Vec<_> = std::fs::read_dir(directory.path().join("nested"))
            .expect("read dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_the_agent_starts_empty() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(directory.path());
        for garbage in [
            &b""[..],
            b"NBS\x01\xff\xff\xff",
            b"random bytes",
            b"NBS\x09",
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
