//! What a change message or a sync reply does to the desired state — written once for both
//! modes and any transport. [`route`] is pure (which rule of [`DesiredState`] a message goes
//! to, if any); [`apply_change`] runs it through [`Shared::update`], which persists before
//! returning; [`apply_sync_reply`] applies a sync reply as authoritative.

use super::Target;
use crate::error::StateError;
use crate::runtime::ContainerRuntime;
use crate::state::{Changes, DesiredState, StoreChange, SyncOutcome};
use crate::supervisor::Shared;
use nebula_protocol::{AppConfig, GroupState, Message, Name, ObjectVersion, StoreId, SyncReply};
use std::sync::Arc;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    AppChanged(AppConfig),
    AppDeleted {
        app: Name,
        version: ObjectVersion,
    },
    GroupChanged(GroupState),
    GroupDeleted {
        group: Name,
        version: ObjectVersion,
    },
    /// Not about this target (a misrouted publish, a sync message on a change queue).
    Elsewhere {
        kind: &'static str,
    },
}

/// Routes `message` received on `target`'s queue.
pub fn route(target: &Target, message: Message) -> Route {
    let kind = message.kind();
    let deleted = message.deleted_version();
    match (message, deleted) {
        (Message::AppChanged(config), _) if target.follows_app(&config.app_name) => {
            Route::AppChanged(config)
        }
        (Message::AppDeleted { app_name, .. }, Some(version)) if target.follows_app(&app_name) => {
            Route::AppDeleted {
                app: app_name,
                version,
            }
        }
        (Message::DeviceGroupChanged(state), _) if target.is_group(&state.group.device_group) => {
            Route::GroupChanged(state)
        }
        (Message::DeviceGroupDeleted { device_group, .. }, Some(version))
            if target.is_group(&device_group) =>
        {
            Route::GroupDeleted {
                group: device_group,
                version,
            }
        }
        _ => Route::Elsewhere { kind },
    }
}

/// What a change message did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dispatched {
    pub changes: Changes,
    /// The followed app or group was deleted: its boot flow starts over (the exchange is
    /// gone, and only a sync can tell when it is back).
    pub target_deleted: bool,
}

impl Route {
    /// Applies the rule of [`DesiredState`] this route stands for.
    pub fn apply(self, state: &mut DesiredState) -> Changes {
        match self {
            Self::AppChanged(config) => state.apply_app_change(config),
            Self::AppDeleted { app, version } => state.apply_app_delete(&app, version),
            Self::GroupChanged(group_state) => state.apply_group_change(group_state),
            Self::GroupDeleted { group, version } => state.apply_group_delete(&group, version),
            Self::Elsewhere { .. } => Changes::default(),
        }
    }

    /// Whether, once accepted, this message ends `target`'s boot flow.
    fn ends(&self, target: &Target) -> bool {
        match self {
            Self::AppDeleted { app, .. } => target.is_app(app),
            Self::GroupDeleted { .. } => true,
            _ => false,
        }
    }
}

/// Applies a change message received on `target`'s queue to the desired state (persisted
/// before this returns, so the caller may acknowledge it).
pub async fn apply_change<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    target: &Target,
    message: Message,
) -> Result<Dispatched, StateError> {
    let route = route(target, message);
    if let Route::Elsewhere { kind } = route {
        tracing::warn!(target = %target, kind, "ignoring a message not meant for this queue");
        return Ok(Dispatched::default());
    }
    let changes = {
        let route = route.clone();
        shared.update(move |state| route.apply(state)).await?
    };
    let applied = !changes.is_empty();
    match &route {
        Route::AppChanged(config) => {
            tracing::info!(app = %config.app_name, version = %config.version(), applied, "app changed");
        }
        Route::AppDeleted { app, version } => {
            tracing::info!(app = %app, version = %version, applied, "app deleted");
        }
        Route::GroupChanged(state) => {
            tracing::info!(group = %state.group.device_group, version = %state.group.version(), prune_id = state.group.prune_id, applied, "device group changed");
        }
        Route::GroupDeleted { group, version } => {
            tracing::info!(group = %group, version = %version, applied, "device group deleted");
        }
        Route::Elsewhere { .. } => {}
    }
    if applied && matches!(route, Route::GroupChanged(_) | Route::GroupDeleted { .. }) {
        // An app dropped from the group has containers but no desired config any more.
        shared.adopt_orphans().await;
    }
    Ok(Dispatched {
        // A delete that was not accepted (older than what is held, or a duplicate) ends
        // nothing.
        target_deleted: applied && route.ends(target),
        changes,
    })
}

/// Applies a sync reply for `target` as authoritative (persisted before this returns) and
/// logs what it did.
pub async fn apply_sync_reply<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    target: &Target,
    reply: SyncReply,
) -> Result<SyncOutcome, StateError> {
    let store = reply.store_id;
    let sync_target = target.sync_target();
    let mut outcome = SyncOutcome::Mismatched;
    let changes = shared
        .update(|state| {
            let (changes, applied) = state.apply_sync(&sync_target, store, reply.result);
            outcome = applied;
            changes
        })
        .await?;
    log_sync(target, store, outcome, changes.apps.len());
    if matches!(target, Target::Group(_))
        && matches!(outcome, SyncOutcome::Applied { .. } | SyncOutcome::Removed)
    {
        // Apps that left the group while the agent was away have containers but no
        // desired config; their workers remove them.
        shared.adopt_orphans().await;
    }
    // No report asked for here: the workers report once the sync's changes are applied, and
    // one more on arrival would cost a report on the wire at every boot.
    Ok(outcome)
}

/// Logs what a sync reply did; a `NotFound` from a store the agent does not know is an
/// operator's problem and says so loudly.
fn log_sync(target: &Target, store: StoreId, outcome: SyncOutcome, changed_apps: usize) {
    match outcome {
        SyncOutcome::Applied {
            store: StoreChange::Same,
        } => tracing::info!(target = %target, store = %store, changed_apps, "synced"),
        SyncOutcome::Applied {
            store: StoreChange::First,
        } => {
            tracing::info!(target = %target, store = %store, changed_apps, "synced; this is the first store this agent synced with")
        }
        SyncOutcome::Applied {
            store: StoreChange::Switched { from },
        } => tracing::warn!(
            target = %target,
            previous_store = %from,
            store = %store,
            changed_apps,
            "synced with a different store than before and applied its state (a restored backup, \
             a migrated store, or a control plane pointed at another database?); from now on only \
             this store may remove apps"
        ),
        SyncOutcome::Removed => tracing::info!(
            target = %target,
            store = %store,
            changed_apps,
            "the control plane's store has no such target: removed what was held for it"
        ),
        SyncOutcome::NotFoundElsewhere {
            known: Some(known), ..
        } => tracing::error!(
            target = %target,
            known_store = %known,
            reply_store = %store,
            "a control plane answered \"not found\" from store {store}, but this agent synced with \
             store {known}: keeping every app running and asking again later. Check for a second \
             control plane answering nebula.sync on an empty or wrong store (an empty \
             NEBULA_DATA_DIR, for example the relative default started from another directory, or \
             the wrong MongoDB database in NEBULA_MONGO_DB)"
        ),
        SyncOutcome::NotFoundElsewhere {
            known: None,
            held_anything: true,
        } => tracing::error!(
            target = %target,
            reply_store = %store,
            "a control plane answered \"not found\" from store {store}, and this agent has not \
             synced with any store yet (state of an earlier release) to tell whether that is the \
             right one: keeping every app running and asking again later. Check for a second \
             control plane on an empty NEBULA_DATA_DIR or the wrong NEBULA_MONGO_DB; if the target \
             was deleted on purpose, stop the agent, remove its state file (NEBULA_STATE_DIR) and \
             the target's containers, and start it again"
        ),
        SyncOutcome::NotFoundElsewhere {
            known: None,
            held_anything: false,
        } => tracing::info!(target = %target, store = %store, "unknown to the control plane"),
        SyncOutcome::Mismatched => tracing::warn!(
            target = %target,
            store = %store,
            "the sync reply is about something else (a control-plane bug); asking again later"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nebula_protocol::DeviceGroup;

    fn name(value: &str) -> Name {
        Name::new(value).expect("name")
    }

    fn group_state(group: &str) -> GroupState {
        GroupState {
            group: DeviceGroup::new(name(group)),
            apps: Vec::new(),
            cron_jobs: Vec::new(),
            unavailable: Vec::new(),
        }
    }

    #[test]
    fn app_messages_route_the_same_way_in_both_modes() {
        let app_mode = Target::App(name("web"));
        let group_mode = Target::Group(name("edge"));
        let changed = Message::AppChanged(AppConfig::new(name("web"), "nginx"));
        let deleted = Message::AppDeleted {
            app_name: name("web"),
            app_id: 4,
            incarnation: 2,
        };
        for target in [&app_mode, &group_mode] {
            assert!(matches!(
                route(target, changed.clone()),
                Route::AppChanged(_)
            ));
            assert_eq!(
                route(target, deleted.clone()),
                Route::AppDeleted {
                    app: name("web"),
                    version: ObjectVersion::new(2, 4)
                }
            );
        }
        // App mode follows its own app only.
        let other = Message::AppChanged(AppConfig::new(name("api"), "nginx"));
        assert_eq!(
            route(&app_mode, other),
            Route::Elsewhere {
                kind: "app_changed"
            }
        );
    }

    #[test]
    fn group_messages_route_only_to_their_group() {
        let group_mode = Target::Group(name("edge"));
        assert!(matches!(
            route(
                &group_mode,
                Message::DeviceGroupChanged(group_state("edge"))
            ),
            Route::GroupChanged(_)
        ));
        assert!(matches!(
            route(
                &group_mode,
                Message::DeviceGroupChanged(group_state("other"))
            ),
            Route::Elsewhere { .. }
        ));
        assert!(matches!(
            route(
                &Target::App(name("web")),
                Message::DeviceGroupChanged(group_state("edge"))
            ),
            Route::Elsewhere { .. }
        ));
        assert_eq!(
            route(
                &group_mode,
                Message::DeviceGroupDeleted {
                    device_group: name("edge"),
                    device_group_id: 3,
                    incarnation: 1
                }
            ),
            Route::GroupDeleted {
                group: name("edge"),
                version: ObjectVersion::new(1, 3)
            }
        );
    }
}
