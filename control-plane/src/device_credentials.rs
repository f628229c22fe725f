//! A device's own broker credential (issue 16): what it entitles the device to, the broker
//! permissions that enforce it, and whether a sync request stays within it. No I/O: the
//! broker side is `broker::users`, the store side `service::credentials`.
//!
//! A device holding its own credential (broker user [`names::device_user`]) may, on the
//! broker:
//! * declare, bind and consume only its own agent queues for its scope
//!   (`nebula.device.<id>.group.<g>`, or `nebula.device.<id>.app.<a>` per app);
//! * bind them only to its scope's exchanges (reading an exchange is what binding to it needs);
//! * publish only to the sync exchange with routing key `sync.<id>` and to the reports exchange
//!   with `report.<id>` (topic permissions) — never to `nebula.app.*`, `nebula.group.*` or the
//!   default exchange, through which it could reach any queue.
//!
//! The sync responder answers it only for its scope ([`check_sync`]), and the report
//! consumer takes only its own reports from it ([`check_report`]). RabbitMQ matches a
//! permission's regular expression against every kind of resource by name, so a device may
//! also declare an exchange named like its own queue, and bind to it what it may write to:
//! its queue, the sync and reports exchanges, and the `nebula.reports` queue (named like the
//! reports exchange). Both checks therefore take only deliveries published straight to the
//! exchange agents use, never dead-lettered ones; what else arrives is rejected (counted,
//! logged).

use nebula_protocol::{Name, SyncTarget, names};
use serde::{Deserialize, Serialize};

/// What a device's credential entitles it to follow: one device group, or a list of apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    DeviceGroup(Name),
    Apps(Vec<Name>),
}

impl Scope {
    /// Whether a sync request for `target` is within the scope.
    pub fn covers(&self, target: &SyncTarget) -> bool {
        match (self, target) {
            (Self::DeviceGroup(group), SyncTarget::DeviceGroup(asked)) => group == asked,
            (Self::Apps(apps), SyncTarget::App(asked)) => apps.contains(asked),
            _ => false,
        }
    }
}

/// The stored record of a device's credential (`Kind::DeviceCredential`, named by the device
/// id). The password is not kept: the broker holds its hash, and the answer to the request
/// that made it is the only place it is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialDocument {
    pub device_id: Name,
    pub scope: Scope,
    /// When it was minted (Unix milliseconds), and by whom (the API principal).
    pub created_at_ms: u64,
    pub created_by: String,
    /// An enrolled device's enrolment id, as SHA-256 (hex): the device may repeat its
    /// enrolment with it (an answer lost on the way), nobody else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolment_id_sha256: Option<String>,
}

/// RabbitMQ permissions of one user on one virtual host: regular expressions over resource
/// names, for configure (declare, delete), write (publish; bind a queue) and read (consume;
/// bind to an exchange).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    pub configure: String,
    pub write: String,
    pub read: String,
    /// Topic permissions: per topic exchange, which routing keys the user may publish with
    /// (`write`) and bind with (`read`).
    pub topics: Vec<TopicGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicGrant {
    pub exchange: &'static str,
    pub write: String,
    pub read: String,
}

/// A regular expression matching only `names` (RabbitMQ's are Erlang `re`, PCRE-like). Names
/// hold `[A-Za-z0-9_.-]` only (`nebula_protocol::names`), of which only `.` is special.
fn exactly(names: &[String]) -> String {
    let escaped: Vec<String> = names.iter().map(|name| name.replace('.', "\\.")).collect();
    format!("^({})$", escaped.join("|"))
}

/// Matches nothing: RabbitMQ's way to grant no access ("^$" also matches the default
/// exchange's empty name, which must never be writable; `a^` cannot match anything).
const NOTHING: &str = "a^";

/// The agent queues of `device` for `scope`.
pub fn agent_queues(device: &Name, scope: &Scope) -> Vec<String> {
    match scope {
        Scope::DeviceGroup(group) => vec![names::group_queue(device, group)],
        Scope::Apps(apps) => apps
            .iter()
            .map(|app| names::app_queue(device, app))
            .collect(),
    }
}

/// The exchanges of `scope`'s group or apps.
pub fn scope_exchanges(scope: &Scope) -> Vec<String> {
    match scope {
        Scope::DeviceGroup(group) => vec![names::group_exchange(group)],
        Scope::Apps(apps) => apps.iter().map(names::app_exchange).collect(),
    }
}

/// Whether a device id and scope could make agent queue names another device's: a word
/// `group` or `app` in the id or a scope name (`nebula.device.a.group.b` + group `c` is device
/// `a` + group `b.group.c`; id `pi.app` + group `x` is device `pi` + app `group.x`), which
/// the permissions would then cover. Returns the first such name.
pub fn ambiguous<'a>(device: &'a Name, scope: &'a Scope) -> Option<&'a Name> {
    Some(device)
        .filter(|device| has_ambiguous_word(device))
        .or_else(|| scope_ambiguous(scope))
}

/// [`ambiguous`] for the scope's names alone (a provisioning token's, before any device).
pub fn scope_ambiguous(scope: &Scope) -> Option<&Name> {
    match scope {
        Scope::DeviceGroup(group) => Some(group).filter(|group| has_ambiguous_word(group)),
        Scope::Apps(apps) => apps.iter().find(|app| has_ambiguous_word(app)),
    }
}

fn has_ambiguous_word(name: &Name) -> bool {
    name.as_str()
        .split('.')
        .any(|word| word == "group" || word == "app")
}

/// The broker permissions of `device`'s own credential for `scope` (see the module doc).
pub fn grants(device: &Name, scope: &Scope) -> Grants {
    let queues = agent_queues(device, scope);
    let exchanges = scope_exchanges(scope);
    let mut writable = queues.clone();
    writable.extend([
        names::SYNC_EXCHANGE.to_string(),
        names::REPORTS_EXCHANGE.to_string(),
    ]);
    let mut readable = queues.clone();
    readable.extend(exchanges);
    let configure = if queues.is_empty() {
        NOTHING.to_string()
    } else {
        exactly(&queues)
    };
    Grants {
        configure,
        write: exactly(&writable),
        read: exactly(&readable),
        topics: vec![
            TopicGrant {
                exchange: names::SYNC_EXCHANGE,
                write: exactly(&[names::sync_routing_key(device)]),
                read: NOTHING.to_string(),
            },
            TopicGrant {
                exchange: names::REPORTS_EXCHANGE,
                write: exactly(&[names::report_routing_key(device)]),
                read: NOTHING.to_string(),
            },
        ],
    }
}

/// The URL a device connects with: `base` (an `amqp://` or `amqps://` URL; its own user
/// info, if any, is dropped) with `user` and `password` in it (both empty: none).
pub fn device_url(base: &str, user: &str, password: &str) -> Result<String, String> {
    let mut url = reqwest::Url::parse(base).map_err(|error| error.to_string())?;
    if !matches!(url.scheme(), "amqp" | "amqps") || url.host_str().is_none() {
        return Err("not an amqp:// or amqps:// URL with a host".into());
    }
    let password = (!password.is_empty()).then_some(password);
    url.set_username(user)
        .and_then(|()| url.set_password(password))
        .map_err(|()| "the URL cannot hold user info".to_string())?;
    Ok(url.to_string())
}

/// The virtual host of a broker URL (`/` when it names none).
pub fn vhost_of(url: &str) -> Result<String, String> {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.vhost)
        .map_err(|error| error.to_string())
}

/// How a delivery reached the control plane's queue, as far as the broker vouches for it.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// The exchange it was first published to, and its routing key.
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// Its `user_id` property: RabbitMQ refuses a publish whose `user_id` is not the
    /// connection's user, so when present it names the publisher.
    pub user_id: Option<&'a str>,
    /// It carries an `x-death` header: it was dead-lettered out of some queue, and the exchange
    /// and routing key it arrived with are then the dead-lettering queue's choice, not checked
    /// against anyone's permissions.
    pub dead_lettered: bool,
}

/// Why a sync request or a report is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "it was dead-lettered (x-death): its exchange and routing key say nothing of its sender"
    )]
    DeadLettered,
    #[error("it came through exchange {0:?}, not one agents publish to")]
    UnexpectedExchange(String),
    #[error("the routing key {0:?} of the sync exchange names no device")]
    BadRoutingKey(String),
    #[error("it came through the sync exchange without the user_id of device {0}'s own credential")]
    NoDeviceUser(Name),
    #[error("it claims device {claimed}, but was sent as device {sent_as}")]
    NotItsDevice { claimed: Name, sent_as: Name },
    #[error("sent with device {0}'s own credential, which is no longer on record (revoked)")]
    Revoked(Name),
    #[error(
        "device {0} has its own credential, but this request was not sent with it (no user_id)"
    )]
    NotVouched(Name),
    #[error("device {device}'s credential does not cover {target}")]
    OutOfScope { device: Name, target: String },
}

/// The device the broker vouches for as the sender of a delivery that came through one of
/// `exchanges` (each with the routing key of `device_of_key`), or `None` when it vouches for
/// none (the default exchange, `amq.topic`: a device credential cannot write to either, so
/// what comes through them was sent with another login, which may claim any device). Then
/// `claimed` must be that device.
///
/// Only a delivery published straight to the exchange it names is taken: RabbitMQ matches a
/// permission's regular expression against every kind of resource by name, so a device may
/// declare an exchange named like its own queue, bind it to the sync or reports exchange,
/// and publish there with any routing key; the delivery then names that exchange. A
/// dead-lettered one is refused for the same reason.
fn vouched_sender(
    claimed: &Name,
    asker: Asker<'_>,
    own_exchange: &str,
    device_of_key: impl Fn(&str) -> Option<Name>,
) -> Result<Option<Name>, Refusal> {
    if asker.dead_lettered {
        return Err(Refusal::DeadLettered);
    }
    let by_key = match asker.exchange {
        exchange if exchange == own_exchange => Some(
            device_of_key(asker.routing_key)
                .ok_or_else(|| Refusal::BadRoutingKey(asker.routing_key.to_string()))?,
        ),
        "" | names::MQTT_EXCHANGE => None,
        other => return Err(Refusal::UnexpectedExchange(other.to_string())),
    };
    let by_user = asker.user_id.and_then(names::device_of_user);
    if let Some(sent_as) = [&by_key, &by_user]
        .into_iter()
        .flatten()
        .find(|sent_as| *sent_as != claimed)
    {
        return Err(Refusal::NotItsDevice {
            claimed: claimed.clone(),
            sent_as: sent_as.clone(),
        });
    }
    Ok(by_user)
}

/// Checks a sync request of `device` (as the request claims) for `target` against what the
/// broker vouches for (`asker`) and the device's credential on record, if any.
///
/// A device credential can send sync requests only to the sync exchange with its own routing
/// key (its topic permission) and its own `user_id` if any: both must name the claimed device
/// ([`vouched_sender`]). A device with a credential on record is answered only within its
/// scope, whoever asks for it. A device without one is answered as before (the shared broker
/// login of a development setup or of a fleet not yet enrolled, and agents of earlier
/// releases, which publish through the default exchange).
pub fn check_sync(
    device: &Name,
    target: &SyncTarget,
    asker: Asker<'_>,
    credential: Option<&CredentialDocument>,
) -> Result<(), Refusal> {
    let by_user = vouched_sender(device, asker, names::SYNC_EXCHANGE, |key| {
        names::device_of_sync_routing_key(key)
    })?;
    // Only device credentials' agents use the sync exchange, and they always set their
    // user_id: without it, a user whose record is gone (a race, a store restored from an
    // older backup) would be answered as a device without a credential.
    if asker.exchange == names::SYNC_EXCHANGE && by_user.is_none() {
        return Err(Refusal::NoDeviceUser(device.clone()));
    }
    match credential {
        Some(credential) if !credential.scope.covers(target) => Err(Refusal::OutOfScope {
            device: device.clone(),
            target: target_label(target),
        }),
        // A device with its own credential asks with it: a request claiming it without its
        // user_id comes from another login (a shared one), which must not get answers signed
        // for this device (they could be handed to it later, out of date).
        Some(_) if by_user.is_none() => Err(Refusal::NotVouched(device.clone())),
        Some(_) => Ok(()),
        None if by_user.is_some() => Err(Refusal::Revoked(device.clone())),
        None => Ok(()),
    }
}

/// Checks a report of `device` (as the report says) against what the broker vouches for: a
/// device credential can publish reports only straight to the reports exchange with its own
/// routing key (and its own `user_id` if any).
pub fn check_report(device: &Name, asker: Asker<'_>) -> Result<(), Refusal> {
    vouched_sender(device, asker, names::REPORTS_EXCHANGE, |key| {
        key.strip_prefix("report.")
            .and_then(|id| Name::new(id).ok())
    })
    .map(|_| ())
}

fn target_label(target: &SyncTarget) -> String {
    match target {
        SyncTarget::App(app) => format!("app {app}"),
        SyncTarget::DeviceGroup(group) => format!("device group {group}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(value: &str) -> Name {
        Name::new(value).expect("valid name")
    }

    fn credential(device: &str, scope: Scope) -> CredentialDocument {
        CredentialDocument {
            device_id: name(device),
            scope,
            created_at_ms: 0,
            created_by: "admin".into(),
            enrolment_id_sha256: None,
        }
    }

    fn via_exchange<'a>(routing_key: &'a str, user_id: Option<&'a str>) -> Asker<'a> {
        Asker {
            exchange: names::SYNC_EXCHANGE,
            routing_key,
            user_id,
            dead_lettered: false,
        }
    }

    fn through<'a>(exchange: &'a str, user_id: Option<&'a str>) -> Asker<'a> {
        Asker {
            exchange,
            routing_key: names::SYNC_QUEUE,
            user_id,
            dead_lettered: false,
        }
    }

    #[test]
    fn a_group_device_may_touch_its_queue_its_group_and_publish_its_own_keys_only() {
        let grants = grants(&name("pi.7"), &Scope::DeviceGroup(name("edge")));
        assert_eq!(grants.configure, r"^(nebula\.device\.pi\.7\.group\.edge)$");
        assert_eq!(
            grants.write,
            r"^(nebula\.device\.pi\.7\.group\.edge|nebula\.sync\.requests|nebula\.reports)$"
        );
        assert_eq!(
            grants.read,
            r"^(nebula\.device\.pi\.7\.group\.edge|nebula\.group\.edge)$"
        );
        assert_eq!(grants.topics[0].exchange, "nebula.sync.requests");
        assert_eq!(grants.topics[0].write, r"^(sync\.pi\.7)$");
        assert_eq!(grants.topics[1].exchange, "nebula.reports");
        assert_eq!(grants.topics[1].write, r"^(report\.pi\.7)$");
        assert!(grants.topics.iter().all(|topic| topic.read == NOTHING));
    }

    #[test]
    fn an_app_device_gets_a_queue_and_an_exchange_per_app() {
        let grants = grants(&name("pos"), &Scope::Apps(vec![name("till"), name("log")]));
        assert_eq!(
            grants.configure,
            r"^(nebula\.device\.pos\.app\.till|nebula\.device\.pos\.app\.log)$"
        );
        assert!(grants.read.contains(r"nebula\.app\.till|nebula\.app\.log"));
        let none = super::grants(&name("pos"), &Scope::Apps(vec![]));
        assert_eq!(none.configure, NOTHING);
    }

    #[test]
    fn the_device_url_is_the_base_with_the_device_login() {
        assert_eq!(
            device_url(
                "amqps://admin:x@broker.example:5671/fleet",
                "nebula-device-pi.7",
                "0af3"
            )
            .expect("url"),
            "amqps://nebula-device-pi.7:0af3@broker.example:5671/fleet"
        );
        assert_eq!(
            vhost_of("amqp://guest:guest@127.0.0.1:5672/%2f").expect("vhost"),
            "/"
        );
        assert_eq!(
            vhost_of("amqp://127.0.0.1:5672/fleet").expect("vhost"),
            "fleet"
        );
        assert!(device_url("http://127.0.0.1:15672", "u", "p").is_err());
        assert_eq!(
            device_url("amqp://cp:secret@broker:5672/%2f", "", "").expect("url"),
            "amqp://broker:5672/%2f"
        );
        let group = |value| Scope::DeviceGroup(name(value));
        assert_eq!(
            ambiguous(&name("a.group.b"), &group("c")),
            Some(&name("a.group.b"))
        );
        assert_eq!(
            ambiguous(&name("pi.app"), &group("x")),
            Some(&name("pi.app"))
        );
        assert_eq!(
            ambiguous(&name("pi"), &group("b.group.c")),
            Some(&name("b.group.c"))
        );
        let apps = Scope::Apps(vec![name("web"), name("group.x")]);
        assert_eq!(ambiguous(&name("pi"), &apps), Some(&name("group.x")));
        assert_eq!(
            ambiguous(&name("group-7.apps"), &group("groups.application")),
            None
        );
    }

    #[test]
    fn a_credentialed_device_is_answered_within_its_scope_only() {
        let device = name("pi");
        let record = credential("pi", Scope::DeviceGroup(name("edge")));
        let asker = via_exchange("sync.pi", Some("nebula-device-pi"));
        let own = SyncTarget::DeviceGroup(name("edge"));
        assert_eq!(check_sync(&device, &own, asker, Some(&record)), Ok(()));
        for other in [
            SyncTarget::DeviceGroup(name("lab")),
            SyncTarget::App(name("edge")),
        ] {
            assert!(matches!(
                check_sync(&device, &other, asker, Some(&record)),
                Err(Refusal::OutOfScope { .. })
            ));
        }
        // Through the default exchange, without a user_id (what only a shared login can
        // send): not answered at all, even within the device's scope.
        let shared = through("", None);
        for target in [SyncTarget::App(name("x")), own.clone()] {
            assert!(check_sync(&device, &target, shared, Some(&record)).is_err());
        }
        assert_eq!(
            check_sync(&device, &own, shared, Some(&record)),
            Err(Refusal::NotVouched(device.clone()))
        );
        let apps = credential("pi", Scope::Apps(vec![name("a"), name("b")]));
        assert_eq!(
            check_sync(&device, &SyncTarget::App(name("b")), asker, Some(&apps)),
            Ok(())
        );
    }

    #[test]
    fn a_request_for_another_device_than_the_sender_is_refused() {
        let target = SyncTarget::DeviceGroup(name("edge"));
        let other = check_sync(
            &name("victim"),
            &target,
            via_exchange("sync.pi", None),
            None,
        );
        assert!(
            matches!(other, Err(Refusal::NotItsDevice { .. })),
            "{other:?}"
        );
        let by_user = through("", Some("nebula-device-pi"));
        assert!(matches!(
            check_sync(&name("victim"), &target, by_user, None),
            Err(Refusal::NotItsDevice { .. })
        ));
        assert!(matches!(
            check_sync(
                &name("pi"),
                &target,
                via_exchange("nebula.sync", None),
                None
            ),
            Err(Refusal::BadRoutingKey(_))
        ));
    }

    #[test]
    fn devices_without_a_credential_are_answered_unless_sent_with_a_revoked_one() {
        let target = SyncTarget::App(name("web"));
        let device = name("pi");
        for asker in [through("", None), through(names::MQTT_EXCHANGE, None)] {
            assert_eq!(
                check_sync(&device, &target, asker, None),
                Ok(()),
                "{asker:?}"
            );
        }
        // The sync exchange is a device credential's way only: its user_id is required,
        // so a user whose record is gone is never answered as a device without one.
        for asker in [
            via_exchange("sync.pi", None),
            via_exchange("sync.pi", Some("guest")),
        ] {
            assert_eq!(
                check_sync(&device, &target, asker, None),
                Err(Refusal::NoDeviceUser(device.clone())),
                "{asker:?}"
            );
        }
        assert_eq!(
            check_sync(
                &device,
                &target,
                via_exchange("sync.pi", Some("nebula-device-pi")),
                None
            ),
            Err(Refusal::Revoked(device))
        );
    }
}
