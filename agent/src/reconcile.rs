//! The heart of the agent, without I/O: given an app's desired config and the containers the
//! runtime reports, the ordered list of actions that converges them.
//!
//! The planner is pure so that every case (grow, shrink, replace, rolling replace at any
//! size, stopped apps, unhealthy containers, apps removed from the group) is unit-tested
//! without Docker or a broker. The executor in [`crate::supervisor`] runs the actions in
//! order and re-plans from a fresh observation after any error or desired-state change, so
//! an interrupted plan is never left half-applied: the next plan finishes it.
//!
//! Which containers are current is decided by their labels (see [`is_current`]): revision,
//! incarnation and the hash of the config they were created from.

use nebula_protocol::placement::{DeviceCapacity, config_hash, container_count, container_index};
use nebula_protocol::{AppConfig, Incarnation, Name, Revision};
use std::collections::BTreeMap;

/// Docker's health of a container with a HEALTHCHECK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// One Nebula-managed container as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub name: String,
    pub app_name: Name,
    /// The `app_id` label: the revision the container was created for.
    pub app_id: Option<Revision>,
    /// The `incarnation` label; absent on containers of the previous release (read as 0).
    pub incarnation: Option<Incarnation>,
    /// The `config_hash` label; absent on containers of the previous release.
    pub config_hash: Option<String>,
    pub image: String,
    /// Docker's state word: `running`, `exited`, `created`, `restarting`, ...
    pub state: String,
    pub health: Option<Health>,
}

impl ObservedContainer {
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }

    /// Running and, when it has a health check, healthy: what a rolling restart waits for.
    pub fn is_ready(&self) -> bool {
        self.is_running() && matches!(self.health, None | Some(Health::Healthy))
    }
}

/// One step of a plan. Container indexes are 0-based; names are `<app>-<index + 1>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Wait a random time up to `NEBULA_MAX_RESTART_WAIT_SECS` before replacing running
    /// containers, so a fleet does not hit the registry in the same second.
    RandomWait,
    /// Pull the image (falling back to a local copy when the registry is unreachable).
    EnsureImage,
    /// Create and start the container at `index`.
    Create { index: u32 },
    /// Stop and remove the existing container, then create and start it at the desired revision.
    Replace { index: u32, name: String },
    /// Wait until the container at `index` runs (and is healthy when it has a health check).
    AwaitReady { index: u32 },
    /// Stop and remove a container.
    Remove { name: String },
    /// Start a container at the desired revision that is not running.
    Start { name: String },
    /// Restart a container Docker reports unhealthy.
    Restart { name: String },
}

/// Whether `container` was created for exactly `app`'s desired config, `desired_hash` being
/// `config_hash(app)`: same revision and same incarnation (a missing label is incarnation
/// 0), and — when it has one — the same config hash. A container without the hash label was
/// created by the previous release and is kept (an agent upgrade restarts nothing), but
/// containers of another incarnation are never taken for current ones: a re-created app
/// starts again at revision 1, the revision alone cannot tell it from the deleted one.
pub fn is_current(container: &ObservedContainer, app: &AppConfig, desired_hash: &str) -> bool {
    container.app_id == Some(app.app_id)
        && container.incarnation.unwrap_or(0) == app.incarnation
        && container
            .config_hash
            .as_deref()
            .is_none_or(|hash| hash == desired_hash)
}

/// The containers an app needs on this device.
pub fn desired_count(app: &AppConfig, capacity: DeviceCapacity) -> u32 {
    if app.running {
        container_count(app.containers_per, capacity)
    } else {
        0
    }
}

/// Plans one app. `desired` is `None` when the app is not (or no longer) wanted on this
/// device; `observed` holds that app's containers only.
pub fn plan_app(
    desired: Option<&AppConfig>,
    capacity: DeviceCapacity,
    observed: &[ObservedContainer],
) -> Vec<Action> {
    let Some(app) = desired.filter(|app| app.running) else {
        // Not wanted, or `running: false`: every container goes.
        return observed
            .iter()
            .map(|container| Action::Remove {
                name: container.name.clone(),
            })
            .collect();
    };
    let count = desired_count(app, capacity);
    let desired_hash = config_hash(app);

    let mut by_index: BTreeMap<u32, &ObservedContainer> = BTreeMap::new();
    let mut removals = Vec::new();
    for container in observed {
        match container_index(&app.app_name, &container.name) {
            Some(index) if index < count => {
                by_index.insert(index, container);
            }
            // Beyond the count (shrink) or not named like one of ours (renamed by hand).
            _ => removals.push(Action::Remove {
                name: container.name.clone(),
            }),
        }
    }

    let mut missing = Vec::new();
    let mut outdated = Vec::new();
    let mut repairs = Vec::new();
    // Containers at the desired revision that are not ready yet: a rolling restart waits
    // for them before touching the next one, so a revision that never gets healthy halts
    // the rollout instead of replacing every container with it.
    let mut not_ready = Vec::new();
    for index in 0..count {
        if let Some(container) = by_index.get(&index)
            && is_current(container, app, &desired_hash)
            && !container.is_ready()
        {
            not_ready.push(index);
        }
        match by_index.get(&index) {
            None => missing.push(index),
            Some(container) if !is_current(container, app, &desired_hash) => {
                outdated.push((index, container.name.clone()));
            }
            Some(container) if container.health == Some(Health::Unhealthy) => {
                repairs.push(Action::Restart {
                    name: container.name.clone(),
                });
            }
            // `restarting` is Docker's restart policy at work; leave it to Docker.
            Some(container) if !container.is_running() && container.state != "restarting" => {
                repairs.push(Action::Start {
                    name: container.name.clone(),
                });
            }
            Some(_) => {}
        }
    }

    let mut actions = Vec::new();
    if !outdated.is_empty() {
        actions.push(Action::RandomWait);
    }
    if !missing.is_empty() || !outdated.is_empty() {
        actions.push(Action::EnsureImage);
    }
    if app.rolling_restart {
        // One container at a time, in index order, each awaited before the next, so the
        // app keeps serving from the others; extras go only once the new ones are ready.
        if !outdated.is_empty() || !missing.is_empty() {
            actions.append(&mut repairs);
            actions.extend(
                not_ready
                    .into_iter()
                    .map(|index| Action::AwaitReady { index }),
            );
        }
        let mut outdated = outdated.into_iter().peekable();
        let mut missing = missing.into_iter().peekable();
        loop {
            let next_outdated = outdated.peek().map(|(index, _)| *index);
            let next_missing = missing.peek().copied();
            match (next_outdated, next_missing) {
                (Some(a), Some(b)) if b < a => {
                    missing.next();
                    actions.push(Action::Create { index: b });
                    actions.push(Action::AwaitReady { index: b });
                }
                (Some(_), _) => {
                    if let Some((index, name)) = outdated.next() {
                        actions.push(Action::Replace { index, name });
                        actions.push(Action::AwaitReady { index });
                    }
                }
                (None, Some(index)) => {
                    missing.next();
                    actions.push(Action::Create { index });
                    actions.push(Action::AwaitReady { index });
                }
                (None, None) => break,
            }
        }
        actions.extend(removals);
    } else {
        // All at once: extras first so their host ports and resources are free.
        actions.extend(removals);
        actions.extend(
            outdated
                .into_iter()
                .map(|(index, name)| Action::Replace { index, name }),
        );
        actions.extend(missing.into_iter().map(|index| Action::Create { index }));
    }
    actions.extend(repairs);
    actions
}

/// Whether the app is where it should be: nothing left to plan but repairs (restarting an
/// unhealthy container, starting a stopped one), which do not change what runs.
pub fn is_converged(
    desired: Option<&AppConfig>,
    capacity: DeviceCapacity,
    observed: &[ObservedContainer],
) -> bool {
    plan_app(desired, capacity, observed)
        .iter()
        .all(|action| matches!(action, Action::Restart { .. } | Action::Start { .. }))
}

/// The revision an app's containers are at, for reports: the desired one when converged
/// (including "no containers" for a stopped app); otherwise the oldest revision among them.
/// A container of another incarnation than the desired one has no revision in this one's
/// numbering, so then the answer is `None` ("not at any revision of this app yet") rather
/// than a number that could coincide with the desired revision.
pub fn applied_revision(
    desired: Option<&AppConfig>,
    capacity: DeviceCapacity,
    observed: &[ObservedContainer],
) -> Option<Revision> {
    match desired {
        Some(app) if is_converged(desired, capacity, observed) => Some(app.app_id),
        Some(app)
            if observed
                .iter()
                .any(|container| container.incarnation.unwrap_or(0) != app.incarnation) =>
        {
            None
        }
        _ => observed
            .iter()
            .filter_map(|container| container.app_id)
            .min(),
    }
}

/// Whether the group's prune request is new: `prune_id` went up since the last prune.
/// With nothing recorded yet the current one is taken as done, so a fresh device does not
/// prune on its first boot.
pub fn prune_due(group_prune_id: Revision, last_pruned: Option<Revision>) -> bool {
    last_pruned.is_some_and(|last| group_prune_id > last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nebula_protocol::ContainersPer;

    const DEVICE: DeviceCapacity = DeviceCapacity {
        cpu_cores: 4,
        memory_mb: 4096,
    };

    fn app(revision: Revision, count: u32, rolling: bool) -> AppConfig {
        let mut app = AppConfig::new(Name::new("web").expect("name"), "nginx");
        app.app_id = revision;
        app.containers_per = ContainersPer::Server(count);
        app.rolling_restart = rolling;
        app
    }

    /// Container `index` at `revision` of incarnation 0, without a config hash label (as
    /// the previous release labelled them; the hash is tested on its own below).
    fn container(index: u32, revision: Revision) -> ObservedContainer {
        ObservedContainer {
            name: format!("web-{}", index + 1),
            app_name: Name::new("web").expect("name"),
            app_id: Some(revision),
            incarnation: Some(0),
            config_hash: None,
            image: "nginx:latest".into(),
            state: "running".into(),
            health: None,
        }
    }

    fn containers(count: u32, revision: Revision) -> Vec<ObservedContainer> {
        (0..count).map(|index| container(index, revision)).collect()
    }

    /// Applies a plan to a model of the device, the way a correct executor would.
    fn simulate(
        app: &AppConfig,
        mut observed: Vec<ObservedContainer>,
        plan: &[Action],
    ) -> Vec<ObservedContainer> {
        for action in plan {
            match action {
                Action::Create { index } | Action::Replace { index, .. } => {
                    let name = format!("web-{}", index + 1);
                    observed.retain(|container| container.name != name);
                    let mut created = container(*index, app.app_id);
                    created.incarnation = Some(app.incarnation);
                    created.config_hash = Some(config_hash(app));
                    observed.push(created);
                }
                Action::Remove { name } => observed.retain(|container| &container.name != name),
                Action::Start { name } | Action::Restart { name } => {
                    for container in observed.iter_mut().filter(|c| &c.name == name) {
                        container.state = "running".into();
                        container.health = None;
                    }
                }
                Action::RandomWait | Action::EnsureImage | Action::AwaitReady { .. } => {}
            }
        }
        observed
    }

    #[test]
    fn converged_app_needs_nothing() {
        let desired = app(3, 2, false);
        assert!(plan_app(Some(&desired), DEVICE, &containers(2, 3)).is_empty());
        assert_eq!(
            applied_revision(Some(&desired), DEVICE, &containers(2, 3)),
            Some(3)
        );
    }

    #[test]
    fn fresh_device_pulls_then_creates_without_waiting() {
        let desired = app(1, 3, false);
        assert_eq!(
            plan_app(Some(&desired), DEVICE, &[]),
            vec![
                Action::EnsureImage,
                Action::Create { index: 0 },
                Action::Create { index: 1 },
                Action::Create { index: 2 },
            ]
        );
        assert_eq!(applied_revision(Some(&desired), DEVICE, &[]), None);
    }

    #[test]
    fn grows_and_shrinks() {
        let grow = plan_app(Some(&app(2, 3, false)), DEVICE, &containers(1, 2));
        assert_eq!(
            grow,
            vec![
                Action::EnsureImage,
                Action::Create { index: 1 },
                Action::Create { index: 2 }
            ]
        );
        let shrink = plan_app(Some(&app(2, 1, false)), DEVICE, &containers(3, 2));
        assert_eq!(
            shrink,
            vec![
                Action::Remove {
                    name: "web-2".into()
                },
                Action::Remove {
                    name: "web-3".into()
                }
            ]
        );
    }

    #[test]
    fn new_revision_replaces_all_at_once_after_the_random_wait() {
        let plan = plan_app(Some(&app(5, 2, false)), DEVICE, &containers(2, 4));
        assert_eq!(
            plan,
            vec![
                Action::RandomWait,
                Action::EnsureImage,
                Action::Replace {
                    index: 0,
                    name: "web-1".into()
                },
                Action::Replace {
                    index: 1,
                    name: "web-2".into()
                },
            ]
        );
    }

    #[test]
    fn only_outdated_containers_are_replaced() {
        let mut observed = containers(3, 5);
        observed[1].app_id = Some(4);
        observed[2].app_id = None;
        let plan = plan_app(Some(&app(5, 3, false)), DEVICE, &observed);
        assert_eq!(
            plan,
            vec![
                Action::RandomWait,
                Action::EnsureImage,
                Action::Replace {
                    index: 1,
                    name: "web-2".into()
                },
                Action::Replace {
                    index: 2,
                    name: "web-3".into()
                },
            ]
        );
    }

    #[test]
    fn rolling_replace_awaits_each_container_at_every_size() {
        for old in 0..=6u32 {
            for new in 1..=6u32 {
                let desired = app(9, new, true);
                let observed = containers(old, 8);
                let plan = plan_app(Some(&desired), DEVICE, &observed);

                // Every create or replace is immediately followed by its readiness wait,
                // so at most one container is ever being replaced.
                for (position, action) in plan.iter().enumerate() {
                    if let Action::Create { index } | Action::Replace { index, .. } = action {
                        assert_eq!(
                            plan.get(position + 1),
                            Some(&Action::AwaitReady { index: *index }),
                            "old {old} new {new}: {plan:?}"
                        );
                    }
                }
                // Indexes go in order, and removals of extras come after every new one is ready.
                let indexes: Vec<u32> = plan
                    .iter()
                    .filter_map(|action| match action {
                        Action::Create { index } | Action::Replace { index, .. } => Some(*index),
                        _ => None,
                    })
                    .collect();
                assert_eq!(indexes, (0..new).collect::<Vec<_>>(), "old {old} new {new}");
                let last_ready = plan
                    .iter()
                    .rposition(|action| matches!(action, Action::AwaitReady { .. }));
                let first_remove = plan
                    .iter()
                    .position(|action| matches!(action, Action::Remove { .. }));
                if let (Some(ready), Some(remove)) = (last_ready, first_remove) {
                    assert!(ready < remove, "old {old} new {new}: {plan:?}");
                }
                assert_eq!(
                    plan.iter()
                        .filter(|action| matches!(action, Action::Remove { .. }))
                        .count() as u32,
                    old.saturating_sub(new)
                );
                assert_eq!(plan.contains(&Action::RandomWait), old > 0);

                // Executing the plan converges: a second plan is empty.
                let after = simulate(&desired, observed, &plan);
                assert!(
                    plan_app(Some(&desired), DEVICE, &after).is_empty(),
                    "old {old} new {new}"
                );
                assert_eq!(applied_revision(Some(&desired), DEVICE, &after), Some(9));
            }
        }
    }

    #[test]
    fn every_plan_converges_at_every_size() {
        for rolling in [false, true] {
            for old in 0..=5u32 {
                for new in 1..=5u32 {
                    for old_revision in [1, 2] {
                        let desired = app(2, new, rolling);
                        let observed = containers(old, old_revision);
                        let plan = plan_app(Some(&desired), DEVICE, &observed);
                        let after = simulate(&desired, observed, &plan);
                        assert!(plan_app(Some(&desired), DEVICE, &after).is_empty());
                        assert_eq!(after.len() as u32, new);
                    }
                }
            }
        }
    }

    #[test]
    fn rolling_with_mixed_missing_and_outdated_goes_in_index_order() {
        let observed = vec![container(1, 1), container(3, 1)];
        let plan = plan_app(Some(&app(2, 4, true)), DEVICE, &observed);
        assert_eq!(
            plan,
            vec![
                Action::RandomWait,
                Action::EnsureImage,
                Action::Create { index: 0 },
                Action::AwaitReady { index: 0 },
                Action::Replace {
                    index: 1,
                    name: "web-2".into()
                },
                Action::AwaitReady { index: 1 },
                Action::Create { index: 2 },
                Action::AwaitReady { index: 2 },
                Action::Replace {
                    index: 3,
                    name: "web-4".into()
                },
                Action::AwaitReady { index: 3 },
            ]
        );
    }

    #[test]
    fn running_false_removes_everything() {
        let mut stopped = app(4, 3, false);
        stopped.running = false;
        let plan = plan_app(Some(&stopped), DEVICE, &containers(3, 3));
        assert_eq!(plan.len(), 3);
        assert!(
            plan.iter()
                .all(|action| matches!(action, Action::Remove { .. }))
        );
        assert!(plan_app(Some(&stopped), DEVICE, &[]).is_empty());
        // A stopped app with no containers is applied at its revision.
        assert_eq!(applied_revision(Some(&stopped), DEVICE, &[]), Some(4));
        assert_eq!(desired_count(&stopped, DEVICE), 0);
    }

    #[test]
    fn app_removed_from_group_or_deleted_removes_everything() {
        let plan = plan_app(None, DEVICE, &containers(2, 7));
        assert_eq!(
            plan,
            vec![
                Action::Remove {
                    name: "web-1".into()
                },
                Action::Remove {
                    name: "web-2".into()
                }
            ]
        );
        assert!(plan_app(None, DEVICE, &[]).is_empty());
        assert_eq!(applied_revision(None, DEVICE, &containers(2, 7)), Some(7));
    }

    #[test]
    fn unhealthy_containers_are_restarted_and_stopped_ones_started() {
        let mut observed = containers(4, 2);
        observed[0].health = Some(Health::Unhealthy);
        observed[1].state = "exited".into();
        observed[2].state = "restarting".into();
        observed[3].health = Some(Health::Starting);
        let plan = plan_app(Some(&app(2, 4, false)), DEVICE, &observed);
        assert_eq!(
            plan,
            vec![
                Action::Restart {
                    name: "web-1".into()
                },
                Action::Start {
                    name: "web-2".into()
                }
            ]
        );
        // Repairs do not make the app "not at its revision".
        assert_eq!(
            applied_revision(Some(&app(2, 4, false)), DEVICE, &observed),
            Some(2)
        );
    }

    #[test]
    fn outdated_unhealthy_container_is_replaced_not_restarted() {
        let mut observed = containers(1, 1);
        observed[0].health = Some(Health::Unhealthy);
        let plan = plan_app(Some(&app(2, 1, false)), DEVICE, &observed);
        assert!(plan.contains(&Action::Replace {
            index: 0,
            name: "web-1".into()
        }));
        assert!(
            !plan
                .iter()
                .any(|action| matches!(action, Action::Restart { .. }))
        );
    }

    #[test]
    fn rolling_restart_halts_behind_a_container_that_is_not_ready() {
        // A previous pass replaced web-1 with revision 2, which is unhealthy.
        let mut observed = containers(3, 1);
        observed[0].app_id = Some(2);
        observed[0].health = Some(Health::Unhealthy);
        let plan = plan_app(Some(&app(2, 3, true)), DEVICE, &observed);
        assert_eq!(
            &plan[..4],
            &[
                Action::RandomWait,
                Action::EnsureImage,
                Action::Restart {
                    name: "web-1".into()
                },
                Action::AwaitReady { index: 0 },
            ]
        );
        // Only after web-1 is ready does web-2 get replaced.
        assert_eq!(
            plan[4],
            Action::Replace {
                index: 1,
                name: "web-2".into()
            }
        );
        // Without pending replacements there is nothing to gate.
        let mut settled = containers(2, 2);
        settled[1].health = Some(Health::Starting);
        assert!(plan_app(Some(&app(2, 2, true)), DEVICE, &settled).is_empty());
    }

    #[test]
    fn stray_names_are_removed() {
        let mut stray = container(0, 2);
        stray.name = "web-01".into();
        let plan = plan_app(Some(&app(2, 1, false)), DEVICE, &[stray]);
        assert_eq!(
            plan,
            vec![
                Action::EnsureImage,
                Action::Remove {
                    name: "web-01".into()
                },
                Action::Create { index: 0 }
            ]
        );
    }

    #[test]
    fn count_follows_containers_per() {
        let mut per_cpu = app(1, 1, false);
        per_cpu.containers_per = ContainersPer::Cpu(2);
        assert_eq!(desired_count(&per_cpu, DEVICE), 8);
        let mut per_memory = app(1, 1, false);
        per_memory.containers_per = ContainersPer::Memory(1024);
        assert_eq!(desired_count(&per_memory, DEVICE), 4);
        let plan = plan_app(Some(&per_memory), DEVICE, &[]);
        assert_eq!(
            plan.iter()
                .filter(|action| matches!(action, Action::Create { .. }))
                .count(),
            4
        );
    }

    #[test]
    fn containers_of_another_incarnation_are_replaced_even_at_the_same_revision() {
        // Issue 12, defect 2: "web" was deleted at revision 1 and re-created (incarnation 1)
        // at revision 1 again. Revision labels alone would keep the old containers.
        let mut recreated = app(1, 2, false);
        recreated.incarnation = 1;
        recreated.docker_image = "nginx:2".into();
        // One container of the deleted incarnation 0 from the previous release (no
        // incarnation label), one labelled incarnation 0 by this release.
        let mut observed = containers(2, 1);
        observed[0].incarnation = None;
        let plan = plan_app(Some(&recreated), DEVICE, &observed);
        assert_eq!(
            plan,
            vec![
                Action::RandomWait,
                Action::EnsureImage,
                Action::Replace {
                    index: 0,
                    name: "web-1".into()
                },
                Action::Replace {
                    index: 1,
                    name: "web-2".into()
                },
            ]
        );
        assert!(!is_converged(Some(&recreated), DEVICE, &observed));
        // Not "at revision 1": that would be the deleted app's revision 1.
        assert_eq!(applied_revision(Some(&recreated), DEVICE, &observed), None);
        let after = simulate(&recreated, observed, &plan);
        assert!(plan_app(Some(&recreated), DEVICE, &after).is_empty());
        assert_eq!(applied_revision(Some(&recreated), DEVICE, &after), Some(1));
    }

    #[test]
    fn containers_of_the_previous_release_at_the_desired_revision_are_kept() {
        // No incarnation and no config hash label: an agent upgrade restarts nothing.
        let desired = app(4, 2, false);
        let mut observed = containers(2, 4);
        for container in &mut observed {
            container.incarnation = None;
            container.config_hash = None;
        }
        assert!(plan_app(Some(&desired), DEVICE, &observed).is_empty());
        assert_eq!(applied_revision(Some(&desired), DEVICE, &observed), Some(4));
    }

    #[test]
    fn a_container_from_another_config_at_the_same_version_is_replaced() {
        let desired = app(3, 1, false);
        let mut observed = containers(1, 3);
        observed[0].config_hash = Some(config_hash(&desired));
        assert!(plan_app(Some(&desired), DEVICE, &observed).is_empty());
        // Same incarnation and revision, but created from other settings (a store that
        // handed the numbers out twice): not current.
        observed[0].config_hash = Some("0123456789abcdef".into());
        assert!(
            plan_app(Some(&desired), DEVICE, &observed).contains(&Action::Replace {
                index: 0,
                name: "web-1".into()
            })
        );
        assert!(!is_converged(Some(&desired), DEVICE, &observed));
    }

    #[test]
    fn repairs_do_not_make_an_app_unconverged_but_missing_containers_do() {
        let desired = app(2, 2, false);
        let mut observed = containers(2, 2);
        observed[0].state = "exited".into();
        assert!(is_converged(Some(&desired), DEVICE, &observed));
        observed.pop();
        assert!(!is_converged(Some(&desired), DEVICE, &observed));
        assert!(is_converged(None, DEVICE, &[]));
        assert!(!is_converged(None, DEVICE, &containers(1, 2)));
    }

    #[test]
    fn prune_only_when_prune_id_goes_up() {
        assert!(!prune_due(3, None));
        assert!(!prune_due(3, Some(3)));
        assert!(!prune_due(2, Some(3)));
        assert!(prune_due(4, Some(3)));
    }
}
