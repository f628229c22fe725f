//! Names of objects and of every broker resource.
//!
//! Names of apps, device groups, cron jobs, users and devices end up inside exchange, queue
//! and container names, so they are validated once, here, and carried as [`Name`] from then
//! on. Every exchange, queue and routing key of DESIGN §3 is spelled by a function in this
//! module; nothing else in the codebase spells them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest name accepted, in bytes (all valid names are ASCII).
pub const MAX_NAME_LEN: usize = 64;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("name must start with a letter or digit")]
    BadFirstCharacter,
    #[error("name may only contain letters, digits, '_', '.' and '-'")]
    BadCharacter,
}

/// A validated object name: 1–64 characters of `[A-Za-z0-9_.-]`, starting with a letter or digit.
///
/// Deserialising a `Name` validates it, so a decoded message can never carry an invalid one.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// Validates `value` and wraps it.
    pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        validate_name(&value)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a name against the rules of DESIGN §4.
pub fn validate_name(value: &str) -> Result<(), NameError> {
    let first = value.bytes().next().ok_or(NameError::Empty)?;
    if value.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadFirstCharacter);
    }
    if !value
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'))
    {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for Name {
    type Error = NameError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> Self {
        name.0
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::new(value)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, formatter)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Queue that every control-plane instance consumes sync requests from (competing consumers).
pub const SYNC_QUEUE: &str = "nebula.sync";
/// Topic exchange agents logged in with their own device credential publish sync requests
/// to, with [`sync_routing_key`]; bound to [`SYNC_QUEUE`] with [`SYNC_BINDING_KEY`]. Not the
/// default exchange: a device allowed to write to that one could put messages into any
/// queue, another device's included, so a device's own broker credential may write only to
/// this exchange and to the reports exchange, each only with its own routing key. Named
/// unlike the queue: RabbitMQ's permissions match names whatever the kind, and write access
/// to a queue's name would let a device bind that queue.
pub const SYNC_EXCHANGE: &str = "nebula.sync.requests";
/// Binding key of [`SYNC_QUEUE`] on [`SYNC_EXCHANGE`]: every device's requests.
pub const SYNC_BINDING_KEY: &str = "sync.#";
/// Prefix of the broker user of a device's own credential ([`device_user`]).
pub const DEVICE_USER_PREFIX: &str = "nebula-device-";
/// RabbitMQ's direct reply-to pseudo queue, used for sync replies.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Topic exchange agents publish device reports to.
pub const REPORTS_EXCHANGE: &str = "nebula.reports";
/// Durable queue bound to [`REPORTS_EXCHANGE`] that control planes ingest reports from.
pub const REPORTS_QUEUE: &str = "nebula.reports";
/// Binding key of [`REPORTS_QUEUE`]: every device's reports.
pub const REPORTS_BINDING_KEY: &str = "report.#";
/// Default `x-expires` of agent queues: a device gone for a week stops holding broker memory.
pub const AGENT_QUEUE_EXPIRES_MS: u32 = 7 * 24 * 60 * 60 * 1000;
/// Queue argument that makes an unused queue expire.
pub const QUEUE_EXPIRES_ARGUMENT: &str = "x-expires";

/// `nebula.app.<app>`: fanout exchange carrying every change of one app.
pub fn app_exchange(app: &Name) -> String {
    format!("nebula.app.{app}")
}

/// `nebula.group.<group>`: fanout exchange of a device group; member apps' exchanges are bound to it.
pub fn group_exchange(group: &Name) -> String {
    format!("nebula.group.{group}")
}

/// `nebula.device.<device>.app.<app>`: an app-mode agent's queue for one app.
pub fn app_queue(device: &Name, app: &Name) -> String {
    format!("nebula.device.{device}.app.{app}")
}

/// `nebula.device.<device>.group.<group>`: a group-mode agent's queue.
pub fn group_queue(device: &Name, group: &Name) -> String {
    format!("nebula.device.{device}.group.{group}")
}

/// `sync.<device>`: routing key of a device's sync requests on [`SYNC_EXCHANGE`]. The broker
/// lets a device's own credential publish there with its own device id only, so the control
/// plane knows who asks.
pub fn sync_routing_key(device: &Name) -> String {
    format!("sync.{device}")
}

/// The device a routing key of [`SYNC_EXCHANGE`] names, if it is one of [`sync_routing_key`].
pub fn device_of_sync_routing_key(routing_key: &str) -> Option<Name> {
    Name::new(routing_key.strip_prefix("sync.")?).ok()
}

/// `nebula-device-<device>`: the broker user of a device's own credential.
pub fn device_user(device: &Name) -> String {
    format!("{DEVICE_USER_PREFIX}{device}")
}

/// The device whose own credential `user` is, if it is one of [`device_user`].
pub fn device_of_user(user: &str) -> Option<Name> {
    Name::new(user.strip_prefix(DEVICE_USER_PREFIX)?).ok()
}

/// `report.<device>`: routing key of a device's reports on [`REPORTS_EXCHANGE`].
pub fn report_routing_key(device: &Name) -> String {
    format!("report.{device}")
}

// ----- MQTT (RabbitMQ's MQTT plugin) ------------------------------------------------------
//
// MQTT clients publish and subscribe on RabbitMQ's `amq.topic` exchange; the plugin maps a
// topic to a routing key by turning every `/` into `.` (RabbitMQ 3.10 leaves a `.` of the
// topic as it is). A `.` inside a name would then split one topic level into two routing-key
// words, so names go into topics through [`topic_level`], which escapes `.` as `~` (not a
// name character: the escaping is one-to-one).

/// The exchange RabbitMQ's MQTT plugin publishes and subscribes on.
pub const MQTT_EXCHANGE: &str = "amq.topic";
/// MQTT topic agents publish sync requests to.
pub const SYNC_TOPIC: &str = "nebula/sync";

/// A name as one MQTT topic level: `.` escaped as `~`.
pub fn topic_level(name: &Name) -> String {
    name.as_str().replace('.', "~")
}

/// The `amq.topic` routing key RabbitMQ's MQTT plugin gives `topic`.
pub fn mqtt_routing_key(topic: &str) -> String {
    topic.replace('/', ".")
}

/// `nebula/app/<app>`: the MQTT topic of an app's changes.
pub fn app_topic(app: &Name) -> String {
    format!("nebula/app/{}", topic_level(app))
}

/// `nebula/group/<group>`: the MQTT topic of a device group's changes (its members' app
/// changes stay on their apps' topics).
pub fn group_topic(group: &Name) -> String {
    format!("nebula/group/{}", topic_level(group))
}

/// `nebula/device/<device>/reply`: where the control plane answers a device's sync requests
/// made over MQTT. It is spelled from the device id of the request, never taken from it.
pub fn reply_topic(device: &Name) -> String {
    format!("nebula/device/{}/reply", topic_level(device))
}

/// `report/<device>`: the MQTT topic of a device's reports. Its routing key on `amq.topic` is
/// exactly [`report_routing_key`] — the device id is not escaped here: the control plane
/// checks a report's routing key against its device id, and [`REPORTS_BINDING_KEY`] (through
/// which `amq.topic` is bound to the reports exchange) takes any number of words.
pub fn report_topic(device: &Name) -> String {
    format!("report/{device}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(value: &str) -> Name {
        Name::new(value).expect("valid name")
    }

    #[test]
    fn dotted_names_stay_one_topic_level_and_distinct() {
        let dotted = name("my.app");
        assert_eq!(app_topic(&dotted), "nebula/app/my~app");
        assert_eq!(mqtt_routing_key(&app_topic(&dotted)), "nebula.app.my~app");
        // Three words on amq.topic, as for any name: `nebula.app.*` patterns hold.
        for topic in [
            app_topic(&dotted),
            group_topic(&dotted),
            reply_topic(&name("a.b.c")),
        ] {
            let key = mqtt_routing_key(&topic);
            assert_eq!(
                key.split('.').count(),
                topic.split('/').count(),
                "{topic} -> {key}"
            );
        }
        // One-to-one: names that differ give keys that differ.
        let names = ["a.b", "a~b", "a-b", "a_b", "ab", "a..b", "a.b.c"];
        let keys: std::collections::BTreeSet<String> = names
            .iter()
            .filter_map(|value| Name::new(*value).ok())
            .map(|value| mqtt_routing_key(&app_topic(&value)))
            .collect();
        assert_eq!(
            keys.len(),
            names
                .iter()
                .filter(|value| Name::new(**value).is_ok())
                .count()
        );
        assert!(Name::new("a~b").is_err(), "~ must stay outside names");
        let device = name("pi.1");
        assert_eq!(
            mqtt_routing_key(&report_topic(&device)),
            report_routing_key(&device),
            "the same key over AMQP and MQTT"
        );
        assert_eq!(mqtt_routing_key(SYNC_TOPIC), SYNC_QUEUE);
    }

    #[test]
    fn accepts_valid_names() {
        for value in ["a", "A", "0", "app-1", "my_app.v2", &"x".repeat(64)] {
            assert!(Name::new(value).is_ok(), "{value}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("x".repeat(65)), Err(NameError::TooLong));
        assert_eq!(Name::new("-app"), Err(NameError::BadFirstCharacter));
        assert_eq!(Name::new(".app"), Err(NameError::BadFirstCharacter));
        assert_eq!(Name::new("_app"), Err(NameError::BadFirstCharacter));
        assert_eq!(Name::new("ä"), Err(NameError::BadFirstCharacter));
        for bad in ["a b", "a/b", "a:b", "aä", "a#", "a*", "a\n"] {
            assert_eq!(Name::new(bad), Err(NameError::BadCharacter), "{bad:?}");
        }
    }

    #[test]
    fn spells_the_topology_of_design_section_3() {
        let (app, group, device) = (name("web"), name("edge"), name("pi-7"));
        assert_eq!(app_exchange(&app), "nebula.app.web");
        assert_eq!(group_exchange(&group), "nebula.group.edge");
        assert_eq!(app_queue(&device, &app), "nebula.device.pi-7.app.web");
        assert_eq!(
            group_queue(&device, &group),
            "nebula.device.pi-7.group.edge"
        );
        assert_eq!(report_routing_key(&device), "report.pi-7");
        assert_eq!(app_topic(&app), "nebula/app/web");
        assert_eq!(group_topic(&group), "nebula/group/edge");
        assert_eq!(SYNC_QUEUE, "nebula.sync");
        assert_eq!(sync_routing_key(&device), "sync.pi-7");
        assert_eq!(SYNC_EXCHANGE, "nebula.sync.requests");
        assert_eq!(AGENT_QUEUE_EXPIRES_MS, 604_800_000);
    }

    #[test]
    fn devices_are_read_back_from_their_sync_routing_key_and_broker_user() {
        for id in ["pi-7", "a.b", "x_1"] {
            let device = name(id);
            assert_eq!(
                device_of_sync_routing_key(&sync_routing_key(&device)),
                Some(device.clone())
            );
            assert_eq!(device_of_user(&device_user(&device)), Some(device));
        }
        assert_eq!(device_user(&name("pi-7")), "nebula-device-pi-7");
        for other in ["nebula.sync", "sync.", "sync.bad name", "report.pi-7"] {
            assert_eq!(device_of_sync_routing_key(other), None, "{other}");
        }
        for other in [
            "guest",
            "nebula-device-",
            "nebula-device-bad name",
            "device-pi",
        ] {
            assert_eq!(device_of_user(other), None, "{other}");
        }
    }

    #[test]
    fn deserialising_validates() {
        let bytes = postcard::to_allocvec(&"bad name".to_string()).expect("encode");
        assert!(postcard::from_bytes::<Name>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&"good".to_string()).expect("encode");
        assert_eq!(
            postcard::from_bytes::<Name>(&bytes).expect("decode"),
            "good"
        );
    }
}
