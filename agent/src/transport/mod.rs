//! Transports: how desired state reaches the agent and reports leave it. AMQP (lapin) is
//! the only one today. What a transport follows is a [`Target`]; what a message does to the
//! desired state is decided once, in [`dispatch`], whatever carried it.

pub mod amqp;
pub mod dispatch;

use nebula_protocol::{Name, SyncTarget};

/// What one boot flow follows: one app (app mode) or the device group (group mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    App(Name),
    Group(Name),
}

impl Target {
    /// Whether changes of `app` concern this target: its own app, or — for a group — any
    /// app (the desired state decides membership from the group document).
    pub fn follows_app(&self, app: &Name) -> bool {
        match self {
            Self::App(followed) => followed == app,
            Self::Group(_) => true,
        }
    }

    /// Whether a delete of `app` ends this target (app mode: its boot flow starts over).
    pub fn is_app(&self, app: &Name) -> bool {
        matches!(self, Self::App(followed) if followed == app)
    }

    pub fn is_group(&self, group: &Name) -> bool {
        matches!(self, Self::Group(followed) if followed == group)
    }

    pub fn sync_target(&self) -> SyncTarget {
        match self {
            Self::App(app) => SyncTarget::App(app.clone()),
            Self::Group(group) => SyncTarget::DeviceGroup(group.clone()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::App(app) => write!(formatter, "app {app}"),
            Self::Group(group) => write!(formatter, "group {group}"),
        }
    }
}
