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
//! The sync responder answers it only for its scope ([`check_sync`]). RabbitMQ matches a
//! permission's regular expression against every kind of resource by name; the queues
//! `nebula.sync` and `nebula.reports` share their exchanges' names, so a device may also bind
//! those two queues to its own scope's exchange: their consumers then reject the changes as
//! not being sync requests or reports (counted, logged), and the device learns nothing.

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

/// The broker permissions of `device`'s own credential for `scope` (see the module doc).
pub fn grants(device: &Name, scope: &Scope) -> Grants {
    let (queues, exchanges): (Vec<String>, Vec<String>) = match scope {
        Scope::DeviceGroup(group) => (
            vec![names::group_queue(device, group)],
            vec![names::group_exchange(group)],
        ),
        Scope::Apps(apps) => apps
            .iter()
            .map(|app| (names::app_queue(device, app), names::app_exchange(app)))
            .unzip(),
    };
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
/// info, if any, is dropped) with `user` and `password` in it.
pub fn device_url(base: &str, user: &str, password: &str) -> Result<String, String> {
    let mut url = reqwest::Url::parse(base).map_err(|error| error.to_string())?;
    if !matches!(url.scheme(), "amqp" | "amqps") || url.host_str().is_none() {
        return Err("not an amqp:// or amqps:// URL with a host".into());
    }
    url.set_username(user)
        .and_then(|()| url.set_password(Some(password)))
        .map_err(|()| "the URL cannot hold user info".to_string())?;
    Ok(url.to_string())
}

/// The virtual host of a broker URL (`/` when it names none).
pub fn vhost_of(url: &str) -> Result<String, String> {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.vhost)
        .map_err(|error| error.to_string())
}

/// Who a sync request comes from, as far as the broker vouches for it.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// The exchange and routing key it was published with.
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// Its `user_id` property: RabbitMQ refuses a message whose `user_id` is not the
    /// connection's user, so when present it names the publisher.
    pub user_id: Option<&'a str>,
}

/// Why a sync request is not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the routing key {0:?} of the sync exchange names no device")]
    BadRoutingKey(String),
    #[error("the request claims device {claimed}, but was sent as device {sent_as}")]
    NotItsDevice { claimed: Name, sent_as: Name },
    #[error("sent with device {0}'s own credential, which is no longer on record (revoked)")]
    Revoked(Name),
    #[error("device {device}'s credential does not cover {target}")]
    OutOfScope { device: Name, target: String },
}

/// Checks a sync request of `device` (as the request claims) for `target` against what the
/// broker vouches for (`asker`) and the device's credential on record, if any.
///
/// A device with its own credential can publish sync requests only with its own routing key
/// (its topic permission), so the routing key names it; its `user_id`, when set, too. Either
/// must agree with the request. A device with a credential on record is answered only within
/// its scope, whoever asks for it. A device without one is answered as before (the shared
/// broker login of a development setup or of a fleet not yet enrolled, and agents of earlier
/// releases, which publish through the default exchange).
pub fn check_sync(
    device: &Name,
    target: &SyncTarget,
    asker: Asker<'_>,
    credential: Option<&CredentialDocument>,
) -> Result<(), Refusal> {
    let mut sent_as = Vec::with_capacity(2);
    if asker.exchange == names::SYNC_EXCHANGE {
        sent_as.push(
            names::device_of_sync_routing_key(asker.routing_key)
                .ok_or_else(|| Refusal::BadRoutingKey(asker.routing_key.to_string()))?,
        );
    }
    let user_device = asker.user_id.and_then(names::device_of_user);
    sent_as.extend(user_device.clone());
    if let Some(other) = sent_as.into_iter().find(|sent_as| sent_as != device) {
        return Err(Refusal::NotItsDevice {
            claimed: device.clone(),
            sent_as: other,
        });
    }
    match credential {
        Some(credential) if !credential.scope.covers(target) => Err(Refusal::OutOfScope {
            device: device.clone(),
            target: target_label(target),
        }),
        Some(_) => Ok(()),
        None if user_device.is_some() => Err(Refusal::Revoked(device.clone())),
        None => Ok(()),
    }
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
        }
    }

    fn via_exchange<'a>(routing_key: &'a str, user_id: Option<&'a str>) -> Asker<'a> {
        Asker {
            exchange: names::SYNC_EXCHANGE,
            routing_key,
            user_id,
        }
    }

    #[test]
    fn a_group_device_may_touch_its_queue_its_group_and_publish_its_own_keys_only() {
        let grants = grants(&name("pi.7"), &Scope::DeviceGroup(name("edge")));
        assert_eq!(grants.configure, r"^(nebula\.device\.pi\.7\.group\.edge)$");
        assert_eq!(
            grants.write,
            r"^(nebula\.device\.pi\.7\.group\.edge|nebula\.sync|nebula\.reports)$"
        );
        assert_eq!(
            grants.read,
            r"^(nebula\.device\.pi\.7\.group\.edge|nebula\.group\.edge)$"
        );
        assert_eq!(grants.topics[0].exchange, "nebula.sync");
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
        // send): still bound by the device's record.
        let shared = Asker {
            exchange: "",
            routing_key: names::SYNC_QUEUE,
            user_id: None,
        };
        assert!(check_sync(&device, &SyncTarget::App(name("x")), shared, Some(&record)).is_err());
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
        let by_user = Asker {
            exchange: "",
            routing_key: names::SYNC_QUEUE,
            user_id: Some("nebula-device-pi"),
        };
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
        for asker in [
            via_exchange("sync.pi", None),
            via_exchange("sync.pi", Some("guest")),
            Asker {
                exchange: "",
                routing_key: names::SYNC_QUEUE,
                user_id: None,
            },
            Asker {
                exchange: names::MQTT_EXCHANGE,
                routing_key: names::SYNC_QUEUE,
                user_id: None,
            },
        ] {
            assert_eq!(
                check_sync(&device, &target, asker, None),
                Ok(()),
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
