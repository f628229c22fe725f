//! Desired state: what the agent was last told, persisted before a message is acknowledged.
//!
//! [`DesiredState`] and its update rules are pure, so every rule of DESIGN §2 is unit-tested
//! without a broker:
//!
//! * Versions are [`ObjectVersion`]s — (incarnation, revision) — compared as a whole, never
//!   the revision alone: an app deleted and re-created under the same name starts again at
//!   revision 1 in a greater incarnation.
//! * A change message (this module) is applied only when it is strictly newer than what is
//!   held, and newer than the tombstone of a deleted incarnation.
//! * A sync reply ([`sync`]) is authoritative for everything it covers — the group document,
//!   its membership and every member's config — whatever versions are held, but a `NotFound`
//!   is acted on only from the store the agent already knows.
//!
//! * Cron jobs (group mode only) travel inside the group's document: each is applied by its
//!   own version, even in a group message at the held group version, since the control
//!   plane re-publishes the group unchanged when only a cron job changed.
//!
//! [`file::StateStore`] persists it atomically in a versioned file format.

pub mod file;
pub mod sync;

pub use file::StateStore;
pub use sync::{StoreChange, SyncOutcome};

use nebula_protocol::{
    AppConfig, CronJob, DeviceGroup, GroupState, Name, ObjectVersion, Revision, StoreId,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything the agent has been told to run. The field order is the state file's format
/// (postcard); a change of it needs a new format version in [`file`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub apps: BTreeMap<Name, AppConfig>,
    /// Group mode: the group document last applied.
    pub group: Option<DeviceGroup>,
    /// Group mode: the `prune_id` last acted on.
    pub last_pruned: Option<Revision>,
    /// Tombstones: the version at which each app was deleted, so that a change message of
    /// the deleted incarnation arriving late (a redelivery, a slow publisher) cannot bring
    /// the app back. Cleared by a newer version of the app.
    pub deleted_apps: BTreeMap<Name, ObjectVersion>,
    /// Tombstones of deleted device groups, for the same reason.
    pub deleted_groups: BTreeMap<Name, ObjectVersion>,
    /// The store of the last sync reply that found its target: a `NotFound` from any other
    /// store is never acted on (see [`sync`]).
    pub store_id: Option<StoreId>,
    /// Group mode: the group's cron jobs (members of `group.cron_jobs`) as last told. State
    /// format 4; empty in a file of an older format.
    pub cron_jobs: BTreeMap<Name, CronJob>,
}

/// What an update changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Apps whose desired config changed or went away.
    pub apps: Vec<Name>,
    /// The group document changed.
    pub group: bool,
    /// The desired cron jobs changed (one added, removed or of another config).
    pub cron: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && !self.group && !self.cron
    }

    fn app(name: &Name) -> Self {
        Self {
            apps: vec![name.clone()],
            ..Self::default()
        }
    }
}

impl DesiredState {
    /// The version of `app` held, if any.
    pub fn app_version(&self, app: &Name) -> Option<ObjectVersion> {
        self.apps.get(app).map(AppConfig::version)
    }

    /// Whether `app` is wanted by the followed group. Without a group (app mode) every app
    /// the transport hands over is followed.
    fn is_member(&self, app: &Name) -> bool {
        self.group
            .as_ref()
            .is_none_or(|group| group.apps.contains(app))
    }

    /// Applies an `AppChanged` message: only when strictly newer than both the held config
    /// and the app's tombstone. In group mode an app that is not a member is ignored:
    /// membership comes from the group document alone.
    pub fn apply_app_change(&mut self, app: AppConfig) -> Changes {
        let name = app.app_name.clone();
        let offered = app.version();
        if !self.is_member(&name)
            || self
                .deleted_apps
                .get(&name)
                .is_some_and(|tomb| offered <= *tomb)
            || self.app_version(&name).is_some_and(|held| offered <= held)
        {
            return Changes::default();
        }
        self.deleted_apps.remove(&name);
        self.apps.insert(name.clone(), app);
        Changes::app(&name)
    }

    /// Applies an `AppDeleted` message of version `deleted`: the app goes and a tombstone
    /// remembers the version. A delete older than the held config (the app was re-created
    /// since) or not newer than the tombstone (a duplicate) changes nothing. Returns the app
    /// in [`Changes::apps`] exactly when the delete was accepted.
    pub fn apply_app_delete(&mut self, app: &Name, deleted: ObjectVersion) -> Changes {
        if self.app_version(app).is_some_and(|held| held > deleted)
            || self
                .deleted_apps
                .get(app)
                .is_some_and(|tomb| *tomb >= deleted)
        {
            return Changes::default();
        }
        self.apps.remove(app);
        self.deleted_apps.insert(app.clone(), deleted);
        Changes::app(app)
    }

    /// Applies a `DeviceGroupChanged` message. Newer than the held group (and its
    /// tombstone): the document is replaced, apps no longer listed go, and each member's
    /// config in the message is applied by the rules of [`Self::apply_app_change`] (a member
    /// may have changed again since the group was written); cron jobs likewise, and those no
    /// longer listed go. At the same version, only a higher `prune_id` (a prune request
    /// bumps nothing else) and newer cron job configs are taken. Older: ignored.
    pub fn apply_group_change(&mut self, state: GroupState) -> Changes {
        let name = state.group.device_group.clone();
        let offered = state.group.version();
        if self
            .deleted_groups
            .get(&name)
            .is_some_and(|tomb| offered <= *tomb)
        {
            return Changes::default();
        }
        if let Some(held) = self.group.as_mut().filter(|held| held.device_group == name) {
            match offered.cmp(&held.version()) {
                std::cmp::Ordering::Less => return Changes::default(),
                std::cmp::Ordering::Equal => {
                    // The same document again: a prune request (a higher `prune_id`), or a
                    // cron job changed (the control plane re-publishes the group at its
                    // version with the job's newer config). Nothing else can differ.
                    let mut changes = Changes::default();
                    if state.group.prune_id > held.prune_id {
                        held.prune_id = state.group.prune_id;
                        changes.group = true;
                    }
                    changes.cron = self.apply_cron_jobs(state.cron_jobs);
                    return changes;
                }
                std::cmp::Ordering::Greater => {}
            }
        }
        let mut changes = self.replace_group_document(state.group);
        for app in state.apps {
            changes.apps.extend(self.apply_app_change(app).apps);
        }
        changes.cron |= self.apply_cron_jobs(state.cron_jobs);
        changes
    }

    /// Applies the cron jobs of a group message, each only when it is a member of the held
    /// group and strictly newer than the held config (as [`Self::apply_app_change`] for
    /// apps: a job may have changed again since the message was written). Returns whether
    /// any was taken.
    fn apply_cron_jobs(&mut self, jobs: Vec<CronJob>) -> bool {
        let mut changed = false;
        for job in jobs {
            let name = job.cron_job_name.clone();
            let member = self
                .group
                .as_ref()
                .is_some_and(|group| group.cron_jobs.contains(&name));
            let newer = self
                .cron_jobs
                .get(&name)
                .is_none_or(|held| job.version() > held.version());
            if member && newer {
                self.cron_jobs.insert(name, job);
                changed = true;
            }
        }
        changed
    }

    /// Applies a `DeviceGroupDeleted` message: unless the held group is newer, everything
    /// goes and a tombstone remembers the version. Returns a non-empty [`Changes`] exactly
    /// when the delete was accepted.
    pub fn apply_group_delete(&mut self, group: &Name, deleted: ObjectVersion) -> Changes {
        let held = self
            .group
            .as_ref()
            .filter(|held| &held.device_group == group)
            .map(DeviceGroup::version);
        if held.is_some_and(|held| held > deleted)
            || self
                .deleted_groups
                .get(group)
                .is_some_and(|tomb| *tomb >= deleted)
        {
            return Changes::default();
        }
        let mut changes = self.forget_group();
        self.deleted_groups.insert(group.clone(), deleted);
        // Even with nothing held, the accepted delete must restart the boot flow.
        changes.group = true;
        changes
    }

    /// Installs a new group document: apps that are no longer members go, and a group of
    /// another incarnation restarts the prune bookkeeping (its `prune_id` starts over).
    fn replace_group_document(&mut self, group: DeviceGroup) -> Changes {
        let mut changes = Changes {
            group: self.group.as_ref() != Some(&group),
            ..Changes::default()
        };
        let same_life = self.group.as_ref().is_some_and(|held| {
            held.device_group == group.device_group && held.incarnation == group.incarnation
        });
        if !same_life {
            self.last_pruned = None;
        }
        let gone: Vec<Name> = self
            .apps
            .keys()
            .filter(|app| !group.apps.contains(app))
            .cloned()
            .collect();
        for app in gone {
            self.apps.remove(&app);
            changes.apps.push(app);
        }
        // A cron job deleted (or moved out of the group) is no longer listed: it goes.
        let jobs_before = self.cron_jobs.len();
        self.cron_jobs
            .retain(|job, _| group.cron_jobs.contains(job));
        changes.cron = self.cron_jobs.len() != jobs_before;
        // Tombstones matter only for apps that can still arrive: members. Dropping the
        // others keeps the state file bounded by the group's size.
        self.deleted_apps.retain(|app, _| group.apps.contains(app));
        self.deleted_groups.remove(&group.device_group);
        self.group = Some(group);
        changes
    }

    /// Forgets the group, every app and every cron job (deleted, or not found by the known
    /// store).
    fn forget_group(&mut self) -> Changes {
        let changes = Changes {
            apps: self.apps.keys().cloned().collect(),
            group: self.group.is_some(),
            cron: !self.cron_jobs.is_empty(),
        };
        self.apps.clear();
        self.cron_jobs.clear();
        self.group = None;
        self.last_pruned = None;
        self.deleted_apps.clear();
        changes
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn name(value: &str) -> Name {
        Name::new(value).expect("name")
    }

    /// App `app_name` at (incarnation, revision).
    pub(crate) fn app(app_name: &str, incarnation: u64, revision: Revision) -> AppConfig {
        let mut app = AppConfig::new(name(app_name), "nginx");
        app.incarnation = incarnation;
        app.app_id = revision;
        app
    }

    /// Group `g` at (incarnation, revision) with `members` and the member configs `configs`.
    pub(crate) fn group(
        incarnation: u64,
        revision: Revision,
        members: &[&str],
        configs: Vec<AppConfig>,
    ) -> GroupState {
        let mut group = DeviceGroup::new(name("g"));
        group.incarnation = incarnation;
        group.device_group_id = revision;
        group.apps = members.iter().map(|app| name(app)).collect();
        GroupState {
            group,
            apps: configs,
            cron_jobs: Vec::new(),
            unavailable: Vec::new(),
        }
    }

    fn version(incarnation: u64, revision: Revision) -> ObjectVersion {
        ObjectVersion::new(incarnation, revision)
    }

    /// Cron job `job_name` at (incarnation, revision) on `schedule`.
    pub(crate) fn cron_job(
        job_name: &str,
        incarnation: u64,
        revision: Revision,
        schedule: &str,
    ) -> CronJob {
        let mut job = CronJob::new(name(job_name), schedule, "busybox");
        job.incarnation = incarnation;
        job.cron_job_id = revision;
        job
    }

    /// [`group`] with the cron jobs `members` listed and `configs` carried.
    pub(crate) fn group_with_jobs(
        incarnation: u64,
        revision: Revision,
        members: &[&str],
        configs: Vec<CronJob>,
    ) -> GroupState {
        let mut state = group(incarnation, revision, &[], Vec::new());
        state.group.cron_jobs = members.iter().map(|job| name(job)).collect();
        state.cron_jobs = configs;
        state
    }

    fn held_job_version(state: &DesiredState, job: &str) -> Option<ObjectVersion> {
        state.cron_jobs.get(&name(job)).map(CronJob::version)
    }

    #[test]
    fn cron_jobs_apply_by_their_own_version_even_at_the_same_group_version() {
        let mut state = DesiredState::default();
        let changes = state.apply_group_change(group_with_jobs(
            1,
            2,
            &["backup", "report"],
            vec![
                cron_job("backup", 1, 1, "0 * * * *"),
                cron_job("report", 1, 1, "5 * * * *"),
            ],
        ));
        assert!(changes.group && changes.cron);
        assert_eq!(held_job_version(&state, "backup"), Some(version(1, 1)));

        // The control plane re-publishes the group at its version with backup's newer config:
        // taken, though the group version did not move.
        let mut newer = cron_job("backup", 1, 2, "*/5 * * * *");
        newer.env_vars.insert("A".into(), "1".into());
        let changes = state.apply_group_change(group_with_jobs(
            1,
            2,
            &["backup", "report"],
            vec![newer.clone(), cron_job("report", 1, 1, "5 * * * *")],
        ));
        assert_eq!(
            changes,
            Changes {
                cron: true,
                ..Changes::default()
            }
        );
        assert_eq!(state.cron_jobs[&name("backup")], newer);

        // The same message again, or one carrying an older config, changes nothing.
        assert!(
            state
                .apply_group_change(group_with_jobs(
                    1,
                    2,
                    &["backup", "report"],
                    vec![newer.clone()]
                ))
                .is_empty()
        );
        assert!(
            state
                .apply_group_change(group_with_jobs(
                    1,
                    2,
                    &["backup", "report"],
                    vec![cron_job("backup", 1, 1, "0 * * * *")]
                ))
                .is_empty()
        );
        assert_eq!(state.cron_jobs[&name("backup")], newer);
        // A job the group does not list is not taken, at any version.
        assert!(
            state
                .apply_group_change(group_with_jobs(
                    1,
                    2,
                    &["backup", "report"],
                    vec![cron_job("stranger", 1, 9, "* * * * *")]
                ))
                .is_empty()
        );
        // A re-created job (another incarnation) wins at revision 1.
        let changes = state.apply_group_change(group_with_jobs(
            1,
            2,
            &["backup", "report"],
            vec![cron_job("backup", 2, 1, "0 0 * * *")],
        ));
        assert!(changes.cron && !changes.group);
        assert_eq!(held_job_version(&state, "backup"), Some(version(2, 1)));
        // A prune request and a job change in one message: both taken.
        let mut both = group_with_jobs(
            1,
            2,
            &["backup", "report"],
            vec![cron_job("report", 1, 2, "5 * * * *")],
        );
        both.group.prune_id = 9;
        let changes = state.apply_group_change(both);
        assert!(changes.group && changes.cron);
        assert_eq!(state.group.as_ref().map(|group| group.prune_id), Some(9));
        assert_eq!(held_job_version(&state, "report"), Some(version(1, 2)));
    }

    #[test]
    fn cron_jobs_a_newer_group_no_longer_lists_go() {
        let mut state = DesiredState::default();
        state.apply_group_change(group_with_jobs(
            1,
            2,
            &["backup", "report"],
            vec![
                cron_job("backup", 1, 3, "0 * * * *"),
                cron_job("report", 1, 1, "5 * * * *"),
            ],
        ));
        // report deleted (the group's version goes up); backup's config in the message is
        // older than held and ignored.
        let changes = state.apply_group_change(group_with_jobs(
            1,
            3,
            &["backup"],
            vec![cron_job("backup", 1, 2, "0 * * * *")],
        ));
        assert!(changes.group && changes.cron);
        assert_eq!(
            state.cron_jobs.keys().collect::<Vec<_>>(),
            vec![&name("backup")]
        );
        assert_eq!(held_job_version(&state, "backup"), Some(version(1, 3)));
        // An older group message cannot bring report back.
        assert!(
            state
                .apply_group_change(group_with_jobs(
                    1,
                    2,
                    &["backup", "report"],
                    vec![cron_job("report", 1, 9, "5 * * * *")]
                ))
                .is_empty()
        );
        assert!(!state.cron_jobs.contains_key(&name("report")));
        // The group deleted: every job goes.
        let changes = state.apply_group_delete(&name("g"), version(1, 3));
        assert!(changes.cron);
        assert!(state.cron_jobs.is_empty());
    }

    #[test]
    fn app_changes_apply_only_when_strictly_newer() {
        let mut state = DesiredState::default();
        assert_eq!(state.apply_app_change(app("a", 1, 2)).apps, vec![name("a")]);
        // A duplicate and an older revision are ignored.
        assert!(state.apply_app_change(app("a", 1, 2)).is_empty());
        assert!(state.apply_app_change(app("a", 1, 1)).is_empty());
        assert_eq!(state.app_version(&name("a")), Some(version(1, 2)));
        assert!(!state.apply_app_change(app("a", 1, 3)).is_empty());
    }

    #[test]
    fn incarnation_decides_before_revision() {
        let mut state = DesiredState::default();
        state.apply_app_change(app("a", 2, 1));
        // Revision 90 of the deleted incarnation 1 is older than revision 1 of incarnation 2:
        // comparing revisions alone would let the stale message win.
        assert!(state.apply_app_change(app("a", 1, 90)).is_empty());
        assert_eq!(state.app_version(&name("a")), Some(version(2, 1)));
        // The re-created app (incarnation 3) wins at revision 1.
        assert!(!state.apply_app_change(app("a", 3, 1)).is_empty());
        assert_eq!(state.app_version(&name("a")), Some(version(3, 1)));
    }

    #[test]
    fn a_tombstone_keeps_a_deleted_incarnation_out_until_a_newer_one_arrives() {
        let mut state = DesiredState::default();
        state.apply_app_change(app("a", 4, 5));
        assert_eq!(
            state.apply_app_delete(&name("a"), version(4, 5)).apps,
            vec![name("a")]
        );
        assert!(state.apps.is_empty());
        assert_eq!(state.deleted_apps[&name("a")], version(4, 5));
        // A change of the deleted incarnation arriving late is ignored, and so is a
        // duplicate delete.
        assert!(state.apply_app_change(app("a", 4, 5)).is_empty());
        assert!(state.apply_app_change(app("a", 4, 3)).is_empty());
        assert!(state.apply_app_delete(&name("a"), version(4, 5)).is_empty());
        assert!(state.apps.is_empty());
        // The re-created app (a newer incarnation) is accepted and clears the tombstone.
        assert!(!state.apply_app_change(app("a", 5, 1)).is_empty());
        assert!(state.deleted_apps.is_empty());
        assert_eq!(state.app_version(&name("a")), Some(version(5, 1)));
    }

    #[test]
    fn a_delete_older_than_the_held_config_is_ignored() {
        let mut state = DesiredState::default();
        state.apply_app_change(app("a", 5, 1));
        // The delete of incarnation 4 arrives after its re-creation.
        assert!(state.apply_app_delete(&name("a"), version(4, 9)).is_empty());
        assert_eq!(state.app_version(&name("a")), Some(version(5, 1)));
        assert!(state.deleted_apps.is_empty());
        // A delete of an app never held still leaves a tombstone against late changes.
        assert!(!state.apply_app_delete(&name("b"), version(1, 2)).is_empty());
        assert!(state.apply_app_change(app("b", 1, 2)).is_empty());
    }

    #[test]
    fn group_changes_follow_membership_and_member_versions() {
        let mut state = DesiredState::default();
        let changes = state.apply_group_change(group(
            1,
            1,
            &["a", "b"],
            vec![app("a", 1, 1), app("b", 1, 1)],
        ));
        assert!(changes.group);
        assert_eq!(changes.apps, vec![name("a"), name("b")]);

        // A member's change arrives through the group queue; a non-member's is ignored.
        assert!(!state.apply_app_change(app("a", 1, 2)).is_empty());
        assert!(state.apply_app_change(app("z", 1, 9)).is_empty());

        // b leaves, c joins; a's config in the message is older than held and ignored.
        let changes = state.apply_group_change(group(
            1,
            2,
            &["a", "c"],
            vec![app("a", 1, 1), app("c", 1, 3)],
        ));
        assert_eq!(changes.apps, vec![name("b"), name("c")]);
        assert_eq!(state.app_version(&name("a")), Some(version(1, 2)));
        assert!(!state.apps.contains_key(&name("b")));

        // A stale group message changes nothing, whatever it carries.
        assert!(
            state
                .apply_group_change(group(1, 1, &["b"], vec![app("b", 1, 9)]))
                .is_empty()
        );
        // Neither does revision 7 of an older incarnation of the group.
        assert!(
            state
                .apply_group_change(group(0, 7, &["b"], vec![app("b", 1, 9)]))
                .is_empty()
        );
    }

    #[test]
    fn a_prune_request_at_the_same_group_version_updates_prune_id_only() {
        let mut state = DesiredState::default();
        state.apply_group_change(group(1, 2, &["a"], vec![app("a", 1, 2)]));
        let mut prune = group(1, 2, &["a"], vec![app("a", 1, 2)]);
        prune.group.prune_id = 5;
        let changes = state.apply_group_change(prune.clone());
        assert!(changes.group && changes.apps.is_empty());
        assert_eq!(state.group.as_ref().map(|group| group.prune_id), Some(5));
        // The same prune again, or a lower one, changes nothing.
        assert!(state.apply_group_change(prune.clone()).is_empty());
        prune.group.prune_id = 4;
        assert!(state.apply_group_change(prune).is_empty());
        assert_eq!(state.group.as_ref().map(|group| group.prune_id), Some(5));
    }

    #[test]
    fn a_re_created_group_starts_its_prune_bookkeeping_over() {
        let mut state = DesiredState::default();
        state.apply_group_change(group(1, 3, &[], Vec::new()));
        state.last_pruned = Some(7);
        // A newer revision of the same incarnation keeps it.
        state.apply_group_change(group(1, 4, &[], Vec::new()));
        assert_eq!(state.last_pruned, Some(7));
        // Another incarnation numbers its prunes from 1 again.
        state.apply_group_change(group(2, 1, &[], Vec::new()));
        assert_eq!(state.last_pruned, None);
    }

    #[test]
    fn group_delete_forgets_everything_and_keeps_a_tombstone() {
        let mut state = DesiredState::default();
        state.apply_group_change(group(3, 2, &["a"], vec![app("a", 1, 1)]));
        state.last_pruned = Some(1);
        // A delete of an older incarnation is ignored.
        assert!(
            state
                .apply_group_delete(&name("g"), version(2, 8))
                .is_empty()
        );
        assert!(state.group.is_some());

        let changes = state.apply_group_delete(&name("g"), version(3, 2));
        assert!(changes.group);
        assert_eq!(changes.apps, vec![name("a")]);
        assert!(state.apps.is_empty() && state.group.is_none());
        assert_eq!(state.last_pruned, None);
        // A late change of the deleted incarnation does not bring the group back; a
        // duplicate delete is not accepted twice.
        assert!(
            state
                .apply_group_change(group(3, 2, &["a"], vec![app("a", 1, 1)]))
                .is_empty()
        );
        assert!(
            state
                .apply_group_delete(&name("g"), version(3, 2))
                .is_empty()
        );
        // The re-created group is.
        assert!(
            !state
                .apply_group_change(group(4, 1, &["a"], vec![app("a", 1, 1)]))
                .is_empty()
        );
        assert!(state.deleted_groups.is_empty());
        assert_eq!(state.app_version(&name("a")), Some(version(1, 1)));
    }

    #[test]
    fn tombstones_stay_bounded_by_the_group_membership() {
        let mut state = DesiredState::default();
        state.apply_group_change(group(
            1,
            1,
            &["a", "b"],
            vec![app("a", 1, 1), app("b", 1, 1)],
        ));
        state.apply_app_delete(&name("a"), version(1, 1));
        state.apply_app_delete(&name("b"), version(1, 1));
        assert_eq!(state.deleted_apps.len(), 2);
        // The group drops b; only a's tombstone is still useful.
        state.apply_group_change(group(1, 2, &["a"], Vec::new()));
        assert_eq!(
            state.deleted_apps.keys().collect::<Vec<_>>(),
            vec![&name("a")]
        );
    }
}
