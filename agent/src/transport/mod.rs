//! Transports: how desired state reaches the agent and reports leave it: AMQP (lapin, the
//! `amqp` feature, on by default) or MQTT (rumqttc, the `mqtt` feature), each a thin adapter
//! over the same core.
//! What a transport follows is a [`Target`]; what a message does to the desired state is
//! decided once, in [`dispatch`], whatever carried it; when a report goes out, in
//! [`reports`].

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod dispatch;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub(crate) mod reports;
pub mod sync_attempts;

use nebula_protocol::{Name, SyncTarget};

/// How a task of a session ended.
#[derive(Debug)]
pub(crate) enum FlowEnd {
    /// Its stop token was cancelled (shutdown, or the session is winding down).
    Stopped,
    /// The connection is gone.
    ConnectionLost(String),
}

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
