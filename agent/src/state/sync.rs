//! Applying a sync reply (DESIGN §2–§3).
//!
//! A reply that finds its target is authoritative for everything it covers: in group mode
//! the group document, its membership and the config of every member, whatever versions the
//! agent holds. That is what lets a device that missed messages (down while a member app
//! changed, its queue gone) converge: nothing but a sync can tell it, and a sync that
//! compared versions would be ignored exactly when the group itself did not change.
//!
//! A `NotFound` is different: it removes running apps, so it is trusted only from the store
//! the agent last synced with. A second control plane started on an empty store (or on the
//! wrong database) answers `NotFound` for everything; acting on that would wipe the fleet.

use super::{Changes, DesiredState};
use nebula_protocol::{AppConfig, CronJob, GroupState, Name, StoreId, SyncResult, SyncTarget};
use std::collections::BTreeMap;

/// How the store of a reply that found its target relates to the one the agent knew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChange {
    /// The store the agent synced with before.
    Same,
    /// The agent had synced with no store yet (first boot, or a state file of the
    /// previous release, which did not record one).
    First,
    /// Another store than before: the reply is still the control plane's current truth and
    /// is applied, but an operator should know (a restored backup, a migration).
    Switched { from: StoreId },
}

/// What a sync reply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The target exists; the reply was applied as authoritative.
    Applied { store: StoreChange },
    /// The known store does not have the target: what was held for it was removed.
    Removed,
    /// `NotFound` from a store the agent has not synced with (`known` is the one it has, if
    /// any): nothing was changed. `held_anything` says whether the agent runs anything for
    /// the target that such a reply would have removed.
    NotFoundElsewhere {
        known: Option<StoreId>,
        held_anything: bool,
    },
    /// The reply answers another target than the one asked about (a control-plane bug):
    /// nothing was changed.
    Mismatched,
}

impl SyncOutcome {
    /// Whether the target exists, so the agent can consume its queue.
    pub fn found(&self) -> bool {
        matches!(self, Self::Applied { .. })
    }
}

impl DesiredState {
    /// Applies the reply of `store` to a sync request about `target`.
    pub fn apply_sync(
        &mut self,
        target: &SyncTarget,
        store: StoreId,
        result: SyncResult,
    ) -> (Changes, SyncOutcome) {
        match (target, result) {
            (SyncTarget::App(app), SyncResult::App(config)) if &config.app_name == app => {
                let store = self.adopt_store(store);
                (self.apply_app_sync(config), SyncOutcome::Applied { store })
            }
            (SyncTarget::DeviceGroup(group), SyncResult::Group(state))
                if &state.group.device_group == group =>
            {
                let store = self.adopt_store(store);
                (self.apply_group_sync(state), SyncOutcome::Applied { store })
            }
            (target, SyncResult::NotFound) => {
                if self.store_id == Some(store) {
                    let changes = match target {
                        SyncTarget::App(app) => self.forget_app(app),
                        SyncTarget::DeviceGroup(_) => self.forget_group(),
                    };
                    return (changes, SyncOutcome::Removed);
                }
                let held_anything = match target {
                    SyncTarget::App(app) => self.apps.contains_key(app),
                    SyncTarget::DeviceGroup(_) => self.group.is_some() || !self.apps.is_empty(),
                };
                let outcome = SyncOutcome::NotFoundElsewhere {
                    known: self.store_id,
                    held_anything,
                };
                (Changes::default(), outcome)
            }
            _ => (Changes::default(), SyncOutcome::Mismatched),
        }
    }

    fn adopt_store(&mut self, store: StoreId) -> StoreChange {
        let change = match self.store_id {
            Some(known) if known == store => StoreChange::Same,
            Some(known) => StoreChange::Switched { from: known },
            None => StoreChange::First,
        };
        self.store_id = Some(store);
        change
    }

    /// App mode: the reply's config replaces whatever is held.
    fn apply_app_sync(&mut self, app: AppConfig) -> Changes {
        let name = app.app_name.clone();
        self.deleted_apps.remove(&name);
        if self.apps.get(&name) == Some(&app) {
            return Changes::default();
        }
        self.apps.insert(name.clone(), app);
        Changes::app(&name)
    }

    /// Group mode: afterwards the desired apps are exactly the reply's apps that are
    /// members. A member listed without a config (deleted while the reply was assembled)
    /// is not desired; its `AppChanged`, if it is re-created, will say otherwise. A member
    /// the control plane marks unavailable (its record is corrupt) keeps whatever is held
    /// for it: the reply says nothing about it either way.
    fn apply_group_sync(&mut self, state: GroupState) -> Changes {
        let GroupState {
            group,
            apps,
            cron_jobs,
            unavailable,
        } = state;
        let members = group.apps.clone();
        let job_members = group.cron_jobs.clone();
        let mut changes = self.replace_group_document(group);
        // Cron jobs: exactly the reply's listed members, as for apps.
        let jobs: BTreeMap<Name, CronJob> = cron_jobs
            .into_iter()
            .filter(|job| job_members.contains(&job.cron_job_name))
            .map(|job| (job.cron_job_name.clone(), job))
            .collect();
        if self.cron_jobs != jobs {
            self.cron_jobs = jobs;
            changes.cron = true;
        }
        let listed: BTreeMap<Name, AppConfig> = apps
            .into_iter()
            .filter(|app| members.contains(&app.app_name))
            .map(|app| (app.app_name.clone(), app))
            .collect();
        let unlisted: Vec<Name> = self
            .apps
            .keys()
            .filter(|app| !listed.contains_key(*app) && !unavailable.contains(app))
            .cloned()
            .collect();
        for app in unlisted {
            self.apps.remove(&app);
            changes.apps.push(app);
        }
        for (name, config) in listed {
            self.deleted_apps.remove(&name);
            if self.apps.get(&name) != Some(&config) {
                self.apps.insert(name.clone(), config);
                changes.apps.push(name);
            }
        }
        changes
    }

    /// App mode, `NotFound` from the known store: the app goes. Its tombstone, if any,
    /// stays.
    fn forget_app(&mut self, app: &Name) -> Changes {
        match self.apps.remove(app) {
            Some(_) => Changes::app(app),
            None => Changes::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{app, cron_job, group, group_with_jobs, name};
    use super::*;
    use nebula_protocol::ObjectVersion;

    const STORE: StoreId = StoreId(0xa1);
    const OTHER_STORE: StoreId = StoreId(0xb2);

    fn group_target() -> SyncTarget {
        SyncTarget::DeviceGroup(name("g"))
    }

    /// A device that synced group g (a at 1/1, b at 1/1) with `STORE`.
    fn synced_group() -> DesiredState {
        let mut state = DesiredState::default();
        let (_, outcome) = state.apply_sync(
            &group_target(),
            STORE,
            SyncResult::Group(group(
                1,
                3,
                &["a", "b"],
                vec![app("a", 1, 1), app("b", 1, 1)],
            )),
        );
        assert_eq!(
            outcome,
            SyncOutcome::Applied {
                store: StoreChange::First
            }
        );
        state
    }

    #[test]
    fn a_group_sync_at_an_unchanged_group_version_still_updates_member_apps() {
        // Issue 12, defect 1: the device was down while app a changed (the group did not),
        // and its queue is gone. Only the sync can tell it.
        let mut state = synced_group();
        let mut changed = app("a", 1, 2);
        changed.docker_image = "nginx:2".into();
        let (changes, outcome) = state.apply_sync(
            &group_target(),
            STORE,
            SyncResult::Group(group(
                1,
                3,
                &["a", "b"],
                vec![changed.clone(), app("b", 1, 1)],
            )),
        );
        assert!(outcome.found());
        assert_eq!(changes.apps, vec![name("a")]);
        assert!(!changes.group, "the group document did not change");
        assert_eq!(state.apps[&name("a")], changed);
    }

    #[test]
    fn after_a_group_sync_the_cron_jobs_are_exactly_the_listed_members() {
        let mut state = synced_group();
        state.apply_group_change(group_with_jobs(
            1,
            4,
            &["backup", "report"],
            vec![
                cron_job("backup", 1, 5, "0 * * * *"),
                cron_job("report", 1, 1, "5 * * * *"),
            ],
        ));
        assert_eq!(state.cron_jobs.len(), 2);
        // The reply lists backup (at an older version: the reply wins) and a new job; report
        // is gone, and a job carried but not listed is not desired.
        let reply = group_with_jobs(
            1,
            4,
            &["backup", "nightly"],
            vec![
                cron_job("backup", 1, 4, "0 * * * *"),
                cron_job("nightly", 1, 1, "0 3 * * *"),
                cron_job("stranger", 1, 1, "* * * * *"),
            ],
        );
        let (changes, outcome) =
            state.apply_sync(&group_target(), STORE, SyncResult::Group(reply.clone()));
        assert!(outcome.found());
        assert!(changes.cron);
        assert_eq!(
            state.cron_jobs.keys().collect::<Vec<_>>(),
            vec![&name("backup"), &name("nightly")]
        );
        assert_eq!(
            state.cron_jobs[&name("backup")].version(),
            ObjectVersion::new(1, 4)
        );
        // The same reply again changes nothing.
        let (changes, _) = state.apply_sync(&group_target(), STORE, SyncResult::Group(reply));
        assert!(!changes.cron);
        // NotFound from the known store: every job goes.
        let (changes, _) = state.apply_sync(&group_target(), STORE, SyncResult::NotFound);
        assert!(changes.cron && state.cron_jobs.is_empty());
    }

    #[test]
    fn a_sync_reply_wins_whatever_versions_are_held() {
        let mut state = synced_group();
        state.apply_app_change(app("a", 1, 9));
        // The store says a is at 1/4 (a message of a lost write, a restored backup): the
        // reply is the truth, even though it is older than what is held.
        let (changes, _) = state.apply_sync(
            &group_target(),
            STORE,
            SyncResult::Group(group(
                1,
                3,
                &["a", "b"],
                vec![app("a", 1, 4), app("b", 1, 1)],
            )),
        );
        assert_eq!(changes.apps, vec![name("a")]);
        assert_eq!(
            state.app_version(&name("a")),
            Some(ObjectVersion::new(1, 4))
        );
        // The same reply again changes nothing.
        let (changes, _) = state.apply_sync(
            &group_target(),
            STORE,
            SyncResult::Group(group(
                1,
                3,
                &["a", "b"],
                vec![app("a", 1, 4), app("b", 1, 1)],
            )),
        );
        assert!(changes.is_empty());
    }

    #[test]
    fn after_a_group_sync_the_desired_apps_are_exactly_the_listed_members() {
        let mut state = synced_group();
        // c is in the reply but not a member; b is a member without a config (deleted
        // while the reply was assembled); d is a new member.
        let (changes, _) = state.apply_sync(
            &group_target(),
            STORE,
            SyncResult::Group(group(
                1,
                4,
                &["a", "b", "d"],
                vec![app("a", 1, 1), app("c", 1, 1), app("d", 2, 1)],
            )),
        );
        assert!(changes.group);
        assert_eq!(changes.apps, vec![name("b"), name("d")]);
        assert_eq!(
            state.apps.keys().collect::<Vec<_>>(),
            vec![&name("a"), &name("d")]
        );
    }

    #[test]
    fn a_member_the_control_plane_cannot_read_is_kept_as_held() {
        // Issue 12, defect 5: b's record is corrupt in the store. The reply marks it
        // unavailable; leaving it out would have removed it from every device.
        let mut state = synced_group();
        let mut reply = group(1, 3, &["a", "b"], vec![app("a", 1, 2)]);
        reply.unavailable = vec![name("b")];
        let (changes, outcome) = state.apply_sync(&group_target(), STORE, SyncResult::Group(reply));
        assert!(outcome.found());
        assert_eq!(changes.apps, vec![name("a")]);
        assert_eq!(
            state.app_version(&name("b")),
            Some(ObjectVersion::new(1, 1))
        );
        assert_eq!(
            state.app_version(&name("a")),
            Some(ObjectVersion::new(1, 2))
        );
    }

    #[test]
    fn a_sync_reply_clears_the_tombstones_it_covers() {
        let mut state = synced_group();
        state.apply_app_delete(&name("a"), ObjectVersion::new(1, 1));
        state.apply_group_delete(&name("g"), ObjectVersion::new(1, 3));
        assert!(!state.deleted_groups.is_empty());
        // The group and a were re-created while the device was away.
        let (changes, _) = state.apply_sync(
            &group_target(),
            STORE,
            SyncResult::Group(group(2, 1, &["a"], vec![app("a", 2, 1)])),
        );
        assert_eq!(changes.apps, vec![name("a")]);
        assert!(state.deleted_groups.is_empty() && state.deleted_apps.is_empty());

        let mut app_mode = DesiredState::default();
        app_mode.apply_app_delete(&name("a"), ObjectVersion::new(3, 3));
        let (changes, _) = app_mode.apply_sync(
            &SyncTarget::App(name("a")),
            STORE,
            SyncResult::App(app("a", 4, 1)),
        );
        assert_eq!(changes.apps, vec![name("a")]);
        assert!(app_mode.deleted_apps.is_empty());
    }

    #[test]
    fn not_found_from_the_known_store_removes_what_is_held() {
        let mut state = synced_group();
        let (changes, outcome) = state.apply_sync(&group_target(), STORE, SyncResult::NotFound);
        assert_eq!(outcome, SyncOutcome::Removed);
        assert_eq!(changes.apps, vec![name("a"), name("b")]);
        assert!(state.apps.is_empty() && state.group.is_none());

        let mut app_mode = DesiredState::default();
        let target = SyncTarget::App(name("a"));
        app_mode.apply_sync(&target, STORE, SyncResult::App(app("a", 1, 1)));
        let (changes, outcome) = app_mode.apply_sync(&target, STORE, SyncResult::NotFound);
        assert_eq!(outcome, SyncOutcome::Removed);
        assert_eq!(changes.apps, vec![name("a")]);
        assert!(app_mode.apps.is_empty());
    }

    #[test]
    fn not_found_from_another_store_changes_nothing() {
        // Issue 12, defect 3: a second control plane on an empty store answers NotFound.
        let mut state = synced_group();
        let before = state.clone();
        let (changes, outcome) =
            state.apply_sync(&group_target(), OTHER_STORE, SyncResult::NotFound);
        assert!(changes.is_empty());
        assert_eq!(
            outcome,
            SyncOutcome::NotFoundElsewhere {
                known: Some(STORE),
                held_anything: true
            }
        );
        assert_eq!(state, before);
        assert_eq!(
            state.store_id,
            Some(STORE),
            "a NotFound never adopts a store"
        );
    }

    #[test]
    fn not_found_without_a_known_store_changes_nothing() {
        // A state file of the previous release records no store: its apps are kept until
        // a reply that finds them names the store.
        let mut state = DesiredState::default();
        state.apps.insert(name("a"), app("a", 0, 4));
        let target = SyncTarget::App(name("a"));
        let (changes, outcome) = state.apply_sync(&target, STORE, SyncResult::NotFound);
        assert!(changes.is_empty());
        assert_eq!(
            outcome,
            SyncOutcome::NotFoundElsewhere {
                known: None,
                held_anything: true
            }
        );
        assert!(state.apps.contains_key(&name("a")));
        // A fresh device asking about an app not created yet holds nothing to protect.
        let mut fresh = DesiredState::default();
        let (_, outcome) = fresh.apply_sync(&target, STORE, SyncResult::NotFound);
        assert_eq!(
            outcome,
            SyncOutcome::NotFoundElsewhere {
                known: None,
                held_anything: false
            }
        );
        assert_eq!(fresh, DesiredState::default());
    }

    #[test]
    fn a_found_reply_from_another_store_is_applied_and_adopts_it() {
        let mut state = synced_group();
        let (changes, outcome) = state.apply_sync(
            &group_target(),
            OTHER_STORE,
            SyncResult::Group(group(7, 1, &["z"], vec![app("z", 1, 1)])),
        );
        assert_eq!(
            outcome,
            SyncOutcome::Applied {
                store: StoreChange::Switched { from: STORE }
            }
        );
        assert_eq!(changes.apps, vec![name("a"), name("b"), name("z")]);
        assert_eq!(state.store_id, Some(OTHER_STORE));
        // From now on a NotFound of the new store is trusted, and one of the old is not.
        let (_, outcome) = state.apply_sync(&group_target(), STORE, SyncResult::NotFound);
        assert!(matches!(outcome, SyncOutcome::NotFoundElsewhere { .. }));
        let (_, outcome) = state.apply_sync(&group_target(), OTHER_STORE, SyncResult::NotFound);
        assert_eq!(outcome, SyncOutcome::Removed);
    }

    #[test]
    fn a_reply_about_another_target_changes_nothing() {
        let mut state = synced_group();
        let before = state.clone();
        let (changes, outcome) = state.apply_sync(
            &SyncTarget::DeviceGroup(name("other")),
            STORE,
            SyncResult::Group(group(1, 9, &[], Vec::new())),
        );
        assert!(changes.is_empty());
        assert_eq!(outcome, SyncOutcome::Mismatched);
        let (_, outcome) =
            state.apply_sync(&group_target(), STORE, SyncResult::App(app("a", 1, 1)));
        assert_eq!(outcome, SyncOutcome::Mismatched);
        assert_eq!(state, before);
    }
}
