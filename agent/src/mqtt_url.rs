//! `NEBULA_MQTT_URL`: where an MQTT agent connects (`NEBULA_TRANSPORT=mqtt`).
//!
//! `mqtt://user:password@host:port/vhost`: port 1883 by default (`mqtts://`, TLS: 8883, in
//! an agent built with the `tls` feature; see `crate::tls`); the path, when given, is the
//! RabbitMQ virtual host, which RabbitMQ's MQTT plugin takes in the user name (`vhost:user`,
//! split at the last `:`, so a user name may not hold one); without a path the broker's
//! default MQTT vhost applies. IPv6 address literals are refused, as in `NEBULA_AMQP_URL`.
//! Parsed with the rest of the configuration, without I/O, whether or not this agent was
//! built with MQTT (the transport says so at start).

use std::fmt;

/// The MQTT port of RabbitMQ's plugin (and of MQTT).
pub const DEFAULT_PORT: u16 = 1883;
/// MQTT over TLS.
pub const DEFAULT_TLS_PORT: u16 = 8883;

/// A parsed `NEBULA_MQTT_URL`.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// `mqtts://`: the broker's certificate is verified for `host`.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// As the broker takes it: `vhost:user` when the URL names a vhost.
    pub username: String,
    pub password: String,
}

impl fmt::Debug for MqttUrl {
    // Never the password: configurations are logged.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{self}")
    }
}

impl fmt::Display for MqttUrl {
    // The address and user, never the password: for logs.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(
            formatter,
            "{scheme}://{}@{}:{}",
            self.username, self.host, self.port
        )
    }
}

impl MqttUrl {
    /// Parses `value`; the error says what is wrong, for `NEBULA_MQTT_URL is invalid: ...`.
    pub fn parse(value: &str) -> Result<Self, String> {
        parse(value, cfg!(feature = "tls"))
    }
}

/// [`MqttUrl::parse`], for an agent built with TLS (`tls_built`) or without.
fn parse(value: &str, tls_built: bool) -> Result<MqttUrl, String> {
    let value = value.trim();
    let (tls, rest) = match value.split_once("://") {
        Some(("mqtt", rest)) => (false, rest),
        Some(("mqtts", _)) if !tls_built => {
            return Err(
                "mqtts:// needs an agent built with the `tls` feature (the release builds have it)"
                    .into(),
            );
        }
        Some(("mqtts", rest)) => (true, rest),
        _ => return Err(format!("{value:?} is not an mqtt:// or mqtts:// URL")),
    };
    let (authority, vhost) = match rest.split_once('/') {
        Some((authority, path)) => (authority, percent_decode(path)?),
        None => (rest, String::new()),
    };
    let (credentials, address) = match authority.rsplit_once('@') {
        Some((credentials, address)) => (Some(credentials), address),
        None => (None, authority),
    };
    let (user, password) = match credentials {
        Some(credentials) => {
            let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
            (percent_decode(user)?, percent_decode(password)?)
        }
        // RabbitMQ's default user, as for AMQP URLs without credentials.
        None => ("guest".to_string(), "guest".to_string()),
    };
    if user.is_empty() {
        return Err("the user name is empty".into());
    }
    if user.contains(':') {
        return Err(
            "the user name holds a ':' (RabbitMQ would read what precedes it as a vhost)".into(),
        );
    }
    if address.starts_with('[') {
        return Err("IPv6 address literals are not supported: use a host name".into());
    }
    let (host, port) = match address.split_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{port:?} is not a port"))?;
            (host, port)
        }
        None if tls => (address, DEFAULT_TLS_PORT),
        None => (address, DEFAULT_PORT),
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if port == 0 {
        return Err("port 0".into());
    }
    let username = if !vhost.is_empty() {
        // A vhost named, even the default one (`%2f`): the plugin's own default vhost
        // (`mqtt.vhost`) need not be `/`.
        format!("{vhost}:{user}")
    } else {
        user
    };
    Ok(MqttUrl {
        tls,
        host: host.to_string(),
        port,
        username,
        password,
    })
}

/// `%xx` escapes of URL parts (a `/` vhost is `%2f`, as in AMQP URLs).
fn percent_decode(part: &str) -> Result<String, String> {
    let bytes = part.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            // Two hex digits exactly (`from_str_radix` alone would take a sign).
            let hex = part
                .get(index + 1..index + 3)
                .filter(|hex| hex.bytes().all(|byte| byte.is_ascii_hexdigit()))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("bad %-escape in {part:?}"))?;
            decoded.push(hex);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| format!("{part:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_credentials_port_and_vhost() {
        let url = MqttUrl::parse("mqtt://pi:s%40cret@broker.example.com:1884/fleet").expect("url");
        assert_eq!(
            url,
            MqttUrl {
                tls: false,
                host: "broker.example.com".into(),
                port: 1884,
                username: "fleet:pi".into(),
                password: "s@cret".into(),
            }
        );
        assert_eq!(url.to_string(), "mqtt://fleet:pi@broker.example.com:1884");
        assert!(!format!("{url:?}").contains("s@cret"));
        let default = MqttUrl::parse("mqtt://127.0.0.1").expect("url");
        assert_eq!(
            (
                default.port,
                default.username.as_str(),
                default.password.as_str()
            ),
            (DEFAULT_PORT, "guest", "guest")
        );
        // The default vhost spelled as in AMQP URLs is named too; no path, none.
        let slash = MqttUrl::parse("mqtt://u:p@h/%2f").expect("url");
        assert_eq!(slash.username, "/:u");
        for bare in ["mqtt://u:p@h:1883", "mqtt://u:p@h:1883/"] {
            assert_eq!(MqttUrl::parse(bare).expect("url").username, "u", "{bare}");
        }
    }

    #[test]
    fn rejects_what_is_not_an_mqtt_url() {
        for bad in [
            "amqp://u:p@h",
            "h:1883",
            "mqtt://",
            "mqtt://u:p@:1883",
            "mqtt://u:p@h:port",
            "mqtt://u:p@h:0",
            "mqtt://:p@h",
            "mqtt://u:p@h/%zz",
            "mqtt://u:p@h/%+1",
            "mqtt://u:p@[::1]:1883",
            "mqtt://u:p@::1",
            "mqtt://a%3Ab:p@h",
        ] {
            assert!(MqttUrl::parse(bad).is_err(), "{bad}");
        }
        let no_tls = parse("mqtts://u:p@h", false).expect_err("not built");
        assert!(no_tls.contains("`tls` feature"), "{no_tls}");
    }

    #[test]
    fn mqtts_defaults_to_port_8883() {
        let url = parse("mqtts://u:p@broker.example.com/fleet", true).expect("url");
        assert!(url.tls);
        assert_eq!(url.port, DEFAULT_TLS_PORT);
        assert_eq!(url.to_string(), "mqtts://fleet:u@broker.example.com:8883");
        let other = parse("mqtts://u:p@h:9883", true).expect("url");
        assert_eq!((other.tls, other.port), (true, 9883));
    }
}
