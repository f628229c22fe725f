//! The broker nodes the agent may connect to: `NEBULA_AMQP_URL`, one URL or a
//! comma-separated list of the nodes of a RabbitMQ cluster (DESIGN §5, §7).
//!
//! [`BrokerList`] is sans-I/O: it parses and validates the list and hands out the node of the
//! next connection attempt. The transport starts the rotation at a random node, so a fleet
//! spreads over the cluster (each agent's exclusive queues live on the node it is connected
//! to, so the fan-out of a change spreads with it), and takes the next node for every attempt
//! after a failed one or a lost connection: a node that is down costs one attempt, not the
//! whole outage. One URL is a list of one: every attempt goes to it.

use lapin::uri::AMQPUri;
use std::fmt;

/// One broker node: a parsed URL. Its `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Broker {
    uri: AMQPUri,
}

impl Broker {
    /// What to hand to lapin.
    pub fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// `host:port`, for logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.uri.authority.host, self.uri.authority.port)
    }

    /// The virtual host (decoded: `/` for `%2f`).
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }
}

impl fmt::Display for Broker {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} (vhost {})", self.address(), self.vhost())
    }
}

impl fmt::Debug for Broker {
    // A `?config` field must never put the broker password in a log line.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Broker")
            .field("scheme", &self.uri.scheme)
            .field("user", &self.uri.authority.userinfo.username)
            .field("password", &"<redacted>")
            .field("address", &self.address())
            .field("vhost", &self.uri.vhost)
            .field("query", &self.uri.query)
            .finish()
    }
}

/// The parsed broker list and where its rotation stands. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerList {
    brokers: Vec<Broker>,
    /// Index of the node [`BrokerList::next`] returns.
    next: usize,
}

impl BrokerList {
    /// Parses `NEBULA_AMQP_URL`: URLs separated by commas, each trimmed; empty entries (a
    /// trailing comma) are skipped and a repeated URL counts once. Each entry must be an
    /// `amqp://` URL (or `amqps://` in an agent built with the `tls` feature) that lapin
    /// parses. The error names the bad entry, its password masked. The rotation starts at the
    /// first node; see [`BrokerList::start_at`].
    pub fn parse(value: &str) -> Result<Self, String> {
        parse(value, cfg!(feature = "tls"))
    }

    /// The nodes, in the order they were listed.
    pub fn brokers(&self) -> &[Broker] {
        &self.brokers
    }

    /// How many of the nodes are reached over TLS (`amqps://`).
    pub fn tls_nodes(&self) -> usize {
        self.brokers
            .iter()
            .filter(|broker| broker.uri.scheme == lapin::uri::AMQPScheme::AMQPS)
            .count()
    }

    /// Starts the rotation at node `index` (modulo the number of nodes). The transport passes
    /// a random number, so a fleet started together spreads over the nodes.
    pub fn start_at(&mut self, index: usize) {
        self.next = index % self.brokers.len();
    }

    /// After the connection to the node [`BrokerList::next`] returned last was lost: the
    /// rotation goes on from one of the *other* nodes, chosen by `random` (modulo their
    /// number). Not simply the next one in the list: every agent of a lost node would then
    /// land on the same survivor.
    pub fn leave(&mut self, random: usize) {
        let count = self.brokers.len();
        if count > 1 {
            let lost = (self.next + count - 1) % count;
            self.next = (lost + 1 + random % (count - 1)) % count;
        }
    }

    /// The node of the next connection attempt; the one after it comes next time, wrapping
    /// around at the end of the list.
    #[allow(
        clippy::should_implement_trait,
        reason = "an endless rotation that lends its nodes, not an Iterator"
    )]
    pub fn next(&mut self) -> &Broker {
        let index = self.next;
        self.next = (index + 1) % self.brokers.len();
        &self.brokers[index]
    }
}

fn parse(value: &str, tls: bool) -> Result<BrokerList, String> {
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    if entries.is_empty() {
        return Err("no broker URL (expected amqp://user:password@host:port/vhost, or a comma-separated list of them)".into());
    }
    let mut brokers: Vec<Broker> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let broker = parse_entry(entry, tls).map_err(|reason| {
            if entries.len() == 1 {
                format!("{}: {reason}", redact(entry))
            } else {
                format!(
                    "entry {} of {} ({}): {reason}",
                    index + 1,
                    entries.len(),
                    redact(entry)
                )
            }
        })?;
        if !brokers.contains(&broker) {
            brokers.push(broker);
        }
    }
    Ok(BrokerList { brokers, next: 0 })
}

fn parse_entry(entry: &str, tls: bool) -> Result<Broker, String> {
    if !(entry.starts_with("amqp://") || entry.starts_with("amqps://")) {
        return Err("must start with amqp:// or amqps://".into());
    }
    if entry.starts_with("amqps://") && !tls {
        return Err("amqps:// needs an agent built with the `tls` feature".into());
    }
    // lapin's reasons name the part that is wrong (a port, a query parameter), never the
    // whole URL: the `amqp://` prefix rules out the one message that would.
    let uri = entry.parse::<AMQPUri>()?;
    // lapin's URL parser takes the host from `Url::domain`, which is empty for an IPv6
    // address, and falls back to `localhost`: the agent would silently connect elsewhere
    // (and every IPv6 node of a list would be the same one).
    let authority = entry
        .split_once("://")
        .map_or(entry, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.starts_with('[') {
        return Err(
            "an IPv6 address is not supported here (the AMQP client would connect to localhost instead); use a host name"
                .into(),
        );
    }
    Ok(Broker { uri })
}

/// `entry` with the password of its user info replaced by `***`, for error messages. Works on
/// the raw text (the entry may not parse): the user info is everything before the last `@`
/// ahead of any `?` or `#`, so a password with an unencoded `/` or `@` is masked too.
fn redact(entry: &str) -> String {
    let (scheme, rest) = match entry.find("://") {
        Some(at) => entry.split_at(at + 3),
        None => ("", entry),
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..end].rfind('@') else {
        return entry.to_string();
    };
    let (userinfo, host_and_more) = rest.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}{user}:***{host_and_more}"),
        None => entry.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn addresses(list: &mut BrokerList, count: usize) -> Vec<String> {
        (0..count).map(|_| list.next().address()).collect()
    }

    const THREE: &str =
        "amqp://u:p@rabbit-1:5672/%2f, amqp://u:p@rabbit-2:5673/%2f ,amqp://u:p@10.0.0.3/edge";

    #[test]
    fn a_list_is_split_trimmed_and_parsed() {
        let list = BrokerList::parse(THREE).expect("valid");
        let nodes: Vec<(String, &str)> = list
            .brokers()
            .iter()
            .map(|broker| (broker.address(), broker.vhost()))
            .collect();
        // An IPv4 host is kept as written (not replaced with lapin's default `localhost`),
        // and the port defaults to 5672.
        assert_eq!(
            nodes,
            vec![
                ("rabbit-1:5672".to_string(), "/"),
                ("rabbit-2:5673".to_string(), "/"),
                ("10.0.0.3:5672".to_string(), "edge"),
            ]
        );
        assert_eq!(list.brokers()[0].uri().authority.userinfo.password, "p");

        // Empty entries (a trailing comma, spaces around commas) are skipped; a repeated URL
        // counts once.
        let list =
            BrokerList::parse(" amqp://a/%2f , ,amqp://b/%2f,amqp://a/%2f, ").expect("valid");
        let hosts: Vec<String> = list.brokers().iter().map(Broker::address).collect();
        assert_eq!(hosts, vec!["a:5672", "b:5672"]);
    }

    #[test]
    fn an_empty_list_is_an_error() {
        for value in ["", " ", ",", " , ,"] {
            let error = BrokerList::parse(value).expect_err(value);
            assert!(error.contains("no broker URL"), "{value:?}: {error}");
        }
    }

    #[test]
    fn errors_name_the_bad_entry_without_its_password() {
        let error = BrokerList::parse("amqp://u:s3cret@good/%2f, amqp://u:s3cret@bad:notaport/%2f")
            .expect_err("bad port");
        assert!(
            error.starts_with("entry 2 of 2 (amqp://u:***@bad:notaport/%2f): "),
            "{error}"
        );
        assert!(!error.contains("s3cret"), "{error}");

        let error = BrokerList::parse("amqp://good/%2f,http://u:s3cret@broker/").expect_err("http");
        assert_eq!(
            error,
            "entry 2 of 2 (http://u:***@broker/): must start with amqp:// or amqps://"
        );
        // One URL: no position.
        let error = BrokerList::parse("amqp://broker/?frame_max=lots").expect_err("query");
        assert!(
            error.starts_with("amqp://broker/?frame_max=lots: "),
            "{error}"
        );

        let error = parse("amqp://a/%2f,amqps://u:s3cret@b/%2f", false).expect_err("no tls");
        assert_eq!(
            error,
            "entry 2 of 2 (amqps://u:***@b/%2f): amqps:// needs an agent built with the `tls` feature"
        );
        let error = BrokerList::parse("amqp://u:s3cret@[fd00::1]:5672/%2f").expect_err("ipv6");
        assert!(error.contains("IPv6"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");

        let list = parse("amqp://a/%2f,amqps://b/%2f", true).expect("tls");
        assert_eq!(list.brokers()[1].uri().authority.port, 5671);
    }

    #[test]
    fn passwords_are_masked_in_errors_logs_and_debug_output() {
        for (entry, masked) in [
            ("amqp://u:pw@host/v", "amqp://u:***@host/v"),
            ("amqp://u:p/w@d@host:1/v?x=@", "amqp://u:***@host:1/v?x=@"),
            ("u:pw@host", "u:***@host"),
            ("amqp://user@host/v", "amqp://user@host/v"),
            ("amqp://host/v", "amqp://host/v"),
        ] {
            assert_eq!(redact(entry), masked, "{entry}");
        }
        let list = BrokerList::parse("amqp://nebula:s3cret@rabbit:5672/edge").expect("valid");
        let broker = &list.brokers()[0];
        assert_eq!(broker.to_string(), "rabbit:5672 (vhost edge)");
        let debug = format!("{list:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("rabbit:5672"), "{debug}");
    }

    #[test]
    fn after_a_loss_the_agents_of_a_node_spread_over_the_others() {
        let mut list = BrokerList::parse(THREE).expect("valid");
        let mut landed = BTreeSet::new();
        for random in 0..6 {
            list.start_at(0);
            let lost = list.next().address().to_string();
            list.leave(random);
            let next = list.next().address().to_string();
            assert_ne!(next, lost, "random {random}");
            landed.insert(next);
        }
        assert_eq!(landed.len(), 2, "both other nodes: {landed:?}");
        // One node: nowhere else to go.
        let mut one = BrokerList::parse("amqp://a:5672/%2f").expect("valid");
        one.next();
        one.leave(5);
        assert_eq!(one.next().address(), "a:5672");
    }

    #[test]
    fn the_rotation_visits_every_node_in_turn_from_its_start() {
        let mut list = BrokerList::parse(THREE).expect("valid");
        assert_eq!(
            addresses(&mut list, 4),
            [
                "rabbit-1:5672",
                "rabbit-2:5673",
                "10.0.0.3:5672",
                "rabbit-1:5672"
            ]
        );
        // From any start, every run of three consecutive attempts covers all three nodes, so
        // the attempt after a failure always goes to another node.
        for start in 0..7 {
            list.start_at(start);
            let attempts = addresses(&mut list, 6);
            assert_eq!(attempts[0], list.brokers()[start % 3].address());
            for window in attempts.windows(3) {
                let distinct: BTreeSet<_> = window.iter().collect();
                assert_eq!(distinct.len(), 3, "start {start}: {attempts:?}");
            }
            for pair in attempts.windows(2) {
                assert_ne!(pair[0], pair[1]);
            }
        }
    }

    #[test]
    fn the_starting_node_is_spread_by_the_random_number() {
        let list = BrokerList::parse(THREE).expect("valid");
        // What the transport does: a random start. Seeded, the same seed gives the same
        // node; over many seeds every node comes first about equally often.
        let first = |seed: u64| {
            let mut list = list.clone();
            list.start_at(fastrand::Rng::with_seed(seed).usize(..));
            list.next().address()
        };
        assert_eq!(first(7), first(7));
        let mut counts = std::collections::BTreeMap::new();
        for seed in 0..3000 {
            *counts.entry(first(seed)).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(
            counts.values().all(|count| (800..1200).contains(count)),
            "{counts:?}"
        );
    }

    #[test]
    fn one_url_is_always_the_same_node() {
        let mut list = BrokerList::parse(crate::config::DEFAULT_AMQP_URL).expect("valid");
        assert_eq!(list.brokers().len(), 1);
        for start in [0, 1, 5, usize::MAX] {
            list.start_at(start);
            assert_eq!(
                addresses(&mut list, 3),
                ["127.0.0.1:5672", "127.0.0.1:5672", "127.0.0.1:5672"]
            );
        }
        assert_eq!(list.next().vhost(), "/");
    }
}
