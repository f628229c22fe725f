//! What an agent's broker connection costs on the wire, at the IP level: every packet of the
//! connection, both directions, IP and TCP headers included — what a metered link bills.
//!
//! [`Capture`] runs `tcpdump` on the loopback interface (the broker is on 127.0.0.1) for a
//! transport's broker port, and [`agent_connections`] finds which local ports a process holds
//! towards that port, so that the packets of exactly one agent's connection are counted
//! whatever else talks to the broker at the same time. [`Transport`] says, per transport,
//! which port that is and how a data segment reads: AMQP frames, or MQTT packets
//! (PINGREQ/PINGRESP as its heartbeats).
//!
//! [`LinkDrop`] makes one connection's link die the way a cellular one does — packets vanish
//! in both directions, nothing is refused or reset — with an iptables rule on its local port,
//! so that only the socket's own timers can notice (the partition proxy, which stays a TCP
//! peer and keeps acknowledging, cannot test those).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The agent's transports, as far as the wire is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Amqp,
    Mqtt,
}

/// The MQTT listener of the test broker (`scripts/services.sh`).
pub const MQTT_PORT: u16 = 1883;

impl Transport {
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "amqp" => Ok(Self::Amqp),
            "mqtt" => Ok(Self::Mqtt),
            other => anyhow::bail!("unknown transport {other:?}: expected amqp or mqtt"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Amqp => "amqp",
            Self::Mqtt => "mqtt",
        }
    }

    /// The broker's port for this transport, from the test services' URL.
    pub fn broker_port(self) -> u16 {
        match self {
            Self::Amqp => {
                let url = crate::services::amqp_url();
                url.parse::<lapin::uri::AMQPUri>()
                    .map_or(5672, |uri| uri.authority.port)
            }
            Self::Mqtt => MQTT_PORT,
        }
    }

    /// What a segment's payload (its first bytes) sent in `direction` carries. `None` for a
    /// pure ACK.
    pub fn kind(
        self,
        payload: &[u8],
        payload_len: u32,
        direction: Direction,
    ) -> Option<SegmentKind> {
        if payload_len == 0 {
            return None;
        }
        Some(match self {
            Self::Amqp => amqp_kind(payload),
            Self::Mqtt => mqtt_kind(payload, direction),
        })
    }
}

/// MQTT 3.1.1 packets: the packet type is the high nibble of the first byte. A PUBLISH is a
/// delivery when the broker sends it, the agent's publish (a report, a sync request) when the
/// agent does; a PUBACK acknowledges either.
fn mqtt_kind(payload: &[u8], direction: Direction) -> SegmentKind {
    match payload.first().map(|byte| byte >> 4) {
        Some(12 | 13) => SegmentKind::Heartbeat,
        Some(3) if direction == Direction::FromBroker => SegmentKind::Delivery,
        Some(3) => SegmentKind::Publish,
        Some(4) => SegmentKind::Ack,
        _ => SegmentKind::Other,
    }
}

/// What a data segment carries, by its first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SegmentKind {
    /// A keep-alive of the protocol (AMQP heartbeat frame, MQTT PINGREQ/PINGRESP).
    Heartbeat,
    /// A message the broker delivers to the agent (AMQP basic.deliver).
    Delivery,
    /// A message the agent publishes (AMQP basic.publish: reports, sync requests).
    Publish,
    /// An acknowledgement of a message (AMQP basic.ack: the agent's of a delivery, the
    /// broker's confirm of a publish).
    Ack,
    /// Anything else (connection set-up, declares, a frame that does not start the segment).
    Other,
}

impl SegmentKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Heartbeat => "heartbeat",
            Self::Delivery => "delivery",
            Self::Publish => "publish",
            Self::Ack => "ack",
            Self::Other => "other",
        }
    }
}

/// AMQP 0-9-1 frames: type (1 method, 2 header, 3 body, 8 heartbeat), channel (2), size (4),
/// then for a method its class and method ids (2 + 2).
fn amqp_kind(payload: &[u8]) -> SegmentKind {
    match payload {
        [8, ..] => SegmentKind::Heartbeat,
        [
            1,
            _,
            _,
            _,
            _,
            _,
            _,
            class_high,
            class_low,
            method_high,
            method_low,
            ..,
        ] => {
            match (
                u16::from_be_bytes([*class_high, *class_low]),
                u16::from_be_bytes([*method_high, *method_low]),
            ) {
                (60, 60) => SegmentKind::Delivery,
                (60, 40) => SegmentKind::Publish,
                (60, 80) => SegmentKind::Ack,
                _ => SegmentKind::Other,
            }
        }
        _ => SegmentKind::Other,
    }
}

/// One captured IP packet of a TCP connection.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Seconds since the Unix epoch (the capture's clock is the system clock).
    pub time: f64,
    /// The IP packet's length: IP header, TCP header with options, payload.
    pub ip_bytes: u32,
    pub source_port: u16,
    pub destination_port: u16,
    pub syn: bool,
    pub payload_len: u32,
    /// The payload's first bytes (the capture keeps a prefix of each packet).
    pub payload: Vec<u8>,
}

/// Seconds since the Unix epoch, on the capture's clock.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// A running `tcpdump` writing a pcap file.
#[derive(Debug)]
pub struct Capture {
    child: tokio::process::Child,
    path: PathBuf,
    stderr: PathBuf,
}

/// Bytes kept of each packet: link, IP and TCP headers with options, and the first frame
/// header of the payload, which is all [`Transport::kind`] reads.
const SNAPSHOT_BYTES: &str = "160";

impl Capture {
    /// Starts capturing TCP packets to or from `port` on the loopback interface into
    /// `directory`, and returns once tcpdump is listening.
    pub async fn start(directory: &Path, port: u16) -> anyhow::Result<Self> {
        std::fs::create_dir_all(directory)?;
        let path = directory.join(format!("capture-{port}-{}.pcap", std::process::id()));
        let stderr = path.with_extension("log");
        let log = std::fs::File::create(&stderr)?;
        let child = tokio::process::Command::new("tcpdump")
            // A 16 MiB kernel buffer: other clients of the broker (a qemu agent, the fleet
            // benchmarks) may be busy on the same port meanwhile, and one dropped packet
            // fails the capture.
            .args([
                "-i",
                "lo",
                "-n",
                "-U",
                "-B",
                "16384",
                "-s",
                SNAPSHOT_BYTES,
                "-w",
            ])
            .arg(&path)
            .args(["tcp", "port", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                anyhow::anyhow!("tcpdump: {error} (scripts/setup.sh installs it; it needs root)")
            })?;
        let capture = Self {
            child,
            path,
            stderr,
        };
        crate::wait_for("tcpdump to listen", Duration::from_secs(20), || async {
            std::fs::read_to_string(&capture.stderr)
                .ok()
                .filter(|log| log.contains("listening on"))
                .map(|_| ())
        })
        .await
        .map_err(|error| anyhow::anyhow!("{error}: {}", capture.log()))?;
        Ok(capture)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The packets captured so far (tcpdump writes each one as it comes: `-U`).
    pub fn packets(&self) -> anyhow::Result<Vec<Packet>> {
        parse_pcap(&std::fs::read(&self.path)?)
    }

    /// Stops tcpdump and returns every packet it captured. Fails if the kernel dropped any
    /// (a figure with packets missing would be too low).
    pub async fn stop(mut self) -> anyhow::Result<Vec<Packet>> {
        if let Some(pid) = self.child.id() {
            let pid = rustix::process::Pid::from_raw(i32::try_from(pid)?)
                .ok_or_else(|| anyhow::anyhow!("tcpdump has no pid"))?;
            rustix::process::kill_process(pid, rustix::process::Signal::INT)?;
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await??;
        let log = self.log();
        let dropped = log
            .lines()
            .find(|line| line.contains("dropped by kernel"))
            .and_then(|line| line.split_whitespace().next())
            .and_then(|count| count.parse::<u64>().ok());
        anyhow::ensure!(
            dropped == Some(0),
            "tcpdump lost packets or did not say how many: {log}"
        );
        let packets = self.packets();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.stderr);
        packets
    }
}

/// Reads a classic pcap file (what tcpdump -w writes): the packets that are TCP over IPv4 or
/// IPv6.
pub fn parse_pcap(bytes: &[u8]) -> anyhow::Result<Vec<Packet>> {
    anyhow::ensure!(bytes.len() >= 24, "pcap file too short");
    let magic = u32::from_le_bytes(bytes[0..4].try_into()?);
    let (little_endian, nanoseconds) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        other => anyhow::bail!("not a pcap file (magic {other:#x})"),
    };
    let read_u32 = |at: &[u8]| -> u32 {
        let array = [at[0], at[1], at[2], at[3]];
        if little_endian {
            u32::from_le_bytes(array)
        } else {
            u32::from_be_bytes(array)
        }
    };
    let link_header = match read_u32(&bytes[20..24]) {
        0 => 4,    // BSD loopback
        1 => 14,   // Ethernet: what Linux's lo gives
        101 => 0,  // raw IP
        113 => 16, // Linux cooked
        276 => 20, // Linux cooked v2
        other => anyhow::bail!("pcap link type {other} not supported"),
    };
    let mut packets = Vec::new();
    let mut offset = 24;
    while offset + 16 <= bytes.len() {
        let seconds = f64::from(read_u32(&bytes[offset..]));
        let fraction = f64::from(read_u32(&bytes[offset + 4..]));
        let captured = read_u32(&bytes[offset + 8..]) as usize;
        let start = offset + 16;
        let end = start + captured;
        if end > bytes.len() {
            // tcpdump was stopped mid-write: the last record is incomplete.
            break;
        }
        let time = seconds + fraction / if nanoseconds { 1e9 } else { 1e6 };
        if let Some(packet) = parse_ip(time, bytes.get(start + link_header..end).unwrap_or(&[])) {
            packets.push(packet);
        }
        offset = end;
    }
    Ok(packets)
}

fn parse_ip(time: f64, ip: &[u8]) -> Option<Packet> {
    let (ip_bytes, header_len, protocol) = match ip.first()? >> 4 {
        4 => {
            let header_len = usize::from(ip.first()? & 0x0f) * 4;
            let total = u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]);
            (u32::from(total), header_len, *ip.get(9)?)
        }
        6 => {
            let payload = u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]);
            (40 + u32::from(payload), 40, *ip.get(6)?)
        }
        _ => return None,
    };
    if protocol != 6 {
        return None;
    }
    let tcp = ip.get(header_len..)?;
    let tcp_header_len = usize::from(tcp.get(12)? >> 4) * 4;
    let flags = *tcp.get(13)?;
    let payload_len = ip_bytes.checked_sub(u32::try_from(header_len + tcp_header_len).ok()?)?;
    Some(Packet {
        time,
        ip_bytes,
        source_port: u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]),
        destination_port: u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]),
        syn: flags & 0x02 != 0,
        payload_len,
        payload: tcp.get(tcp_header_len..).unwrap_or(&[]).to_vec(),
    })
}

/// The local ports of the established TCP connections `pid` holds to `remote_port`, read from
/// `/proc` (the sockets among its file descriptors, matched in its network namespace's table).
pub fn agent_connections(pid: u32, remote_port: u16) -> anyhow::Result<BTreeSet<u16>> {
    let mut inodes = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(contents) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in contents.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (the tenth field)
            let (Some(local), Some(remote), Some(state), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let port_of = |address: &str| {
                address
                    .rsplit(':')
                    .next()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
            };
            // 01: ESTABLISHED.
            if *state == "01"
                && port_of(remote) == Some(remote_port)
                && inodes.contains(*inode)
                && let Some(port) = port_of(local)
            {
                ports.insert(port);
            }
        }
    }
    Ok(ports)
}

/// The agent process's id and the local port of its one broker connection (to
/// `broker_port`), once it has exactly one (at most 30 s).
pub async fn agent_connection(
    agent: &crate::system::Agent,
    broker_port: u16,
) -> anyhow::Result<(u32, u16)> {
    let pid = agent
        .process
        .pid()
        .await
        .ok_or_else(|| anyhow::anyhow!("the agent is not running:\n{}", agent.process.log()))?;
    let port = crate::wait_for(
        "the agent's broker connection",
        Duration::from_secs(30),
        || async {
            let ports = agent_connections(pid, broker_port).ok()?;
            (ports.len() == 1)
                .then(|| ports.into_iter().next())
                .flatten()
        },
    )
    .await?;
    Ok((pid, port))
}

/// The heartbeat timeout RabbitMQ runs the connection of `device`'s agent with (the one the
/// agent named "nebula-agent <device>").
pub fn broker_heartbeat_secs(device: &str) -> anyhow::Result<u64> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "client_properties",
            "timeout",
            "--formatter",
            "json",
            "-q",
        ])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "rabbitmqctl list_connections: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let connections: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    let wanted = format!("nebula-agent {device}");
    connections
        .iter()
        .find(|connection| connection_name(connection).as_deref() == Some(wanted.as_str()))
        .and_then(|connection| connection["timeout"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("no broker connection named {wanted:?}"))
}

/// rabbitmqctl's JSON renders client properties as `[name, type, value]` triples.
fn connection_name(connection: &serde_json::Value) -> Option<String> {
    connection["client_properties"]
        .as_array()?
        .iter()
        .find(|property| property[0] == "connection_name")
        .and_then(|property| property[2].as_str().map(str::to_string))
}

/// The packets of the connection whose local port is `port` (towards `broker_port`).
pub fn of_connection(packets: &[Packet], port: u16, broker_port: u16) -> Vec<Packet> {
    packets
        .iter()
        .filter(|packet| {
            (packet.source_port == port && packet.destination_port == broker_port)
                || (packet.source_port == broker_port && packet.destination_port == port)
        })
        .cloned()
        .collect()
}

/// Bytes and packets of a set of packets, in total, per direction, and per kind of data
/// segment and its direction (`"heartbeat to broker"`, `"ack from broker"`, ...), where a pure
/// ACK counts for the last data segment it could be acknowledging (the last one sent the
/// other way before it).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Tally {
    pub packets: u64,
    pub ip_bytes: u64,
    pub to_broker_packets: u64,
    pub to_broker_ip_bytes: u64,
    pub from_broker_packets: u64,
    pub from_broker_ip_bytes: u64,
    /// Payload bytes (what the broker's own counters see), both directions.
    pub payload_bytes: u64,
    /// `"<kind> <to|from> broker" -> [packets, IP bytes]`, ACKs included.
    pub by_kind: std::collections::BTreeMap<String, [u64; 2]>,
    /// `"<kind> <to|from> broker" -> data segments` (ACKs not counted).
    pub segments: std::collections::BTreeMap<String, u64>,
}

/// Which way a data segment went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToBroker,
    FromBroker,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Self::ToBroker => "to broker",
            Self::FromBroker => "from broker",
        }
    }
}

impl Tally {
    pub fn of(transport: Transport, packets: &[Packet], broker_port: u16) -> Self {
        let mut tally = Self::default();
        let mut last_to_broker = SegmentKind::Other;
        let mut last_from_broker = SegmentKind::Other;
        for packet in packets {
            let to_broker = packet.destination_port == broker_port;
            let sent = if to_broker {
                Direction::ToBroker
            } else {
                Direction::FromBroker
            };
            let (kind, direction) = match transport.kind(&packet.payload, packet.payload_len, sent)
            {
                Some(kind) if to_broker => {
                    last_to_broker = kind;
                    (kind, Direction::ToBroker)
                }
                Some(kind) => {
                    last_from_broker = kind;
                    (kind, Direction::FromBroker)
                }
                None if packet.syn => (
                    SegmentKind::Other,
                    if to_broker {
                        Direction::ToBroker
                    } else {
                        Direction::FromBroker
                    },
                ),
                None if to_broker => (last_from_broker, Direction::FromBroker),
                None => (last_to_broker, Direction::ToBroker),
            };
            let bytes = u64::from(packet.ip_bytes);
            tally.packets += 1;
            tally.ip_bytes += bytes;
            tally.payload_bytes += u64::from(packet.payload_len);
            if to_broker {
                tally.to_broker_packets += 1;
                tally.to_broker_ip_bytes += bytes;
            } else {
                tally.from_broker_packets += 1;
                tally.from_broker_ip_bytes += bytes;
            }
            let key = format!("{} {}", kind.label(), direction.label());
            if packet.payload_len > 0 {
                *tally.segments.entry(key.clone()).or_default() += 1;
            }
            let entry = tally.by_kind.entry(key).or_default();
            entry[0] += 1;
            entry[1] += bytes;
        }
        tally
    }

    /// IP bytes of the data segments of `kind` sent in `direction`, with their ACKs.
    pub fn bytes_of(&self, kind: SegmentKind, direction: Direction) -> u64 {
        self.by_kind
            .get(&format!("{} {}", kind.label(), direction.label()))
            .map_or(0, |entry| entry[1])
    }

    /// How many data segments of `kind` were sent in `direction`.
    pub fn segments_of(&self, kind: SegmentKind, direction: Direction) -> u64 {
        self.segments
            .get(&format!("{} {}", kind.label(), direction.label()))
            .copied()
            .unwrap_or(0)
    }
}

/// The packets with `from <= time < to`.
pub fn between(packets: &[Packet], from: f64, to: f64) -> Vec<Packet> {
    packets
        .iter()
        .filter(|packet| packet.time >= from && packet.time < to)
        .cloned()
        .collect()
}

/// Drops every packet of one TCP connection to or from local port `port`, both directions,
/// at the IP level (iptables INPUT rules, so senders see their packets leave and simply never
/// get an answer). Removed on drop. Each rule carries this process's id in a comment, so a
/// later run removes the leftovers of a killed one and never another live run's.
#[derive(Debug)]
pub struct LinkDrop {
    rules: Vec<Vec<String>>,
}

const DROP_COMMENT: &str = "nebula-test-link-drop-pid-";

impl LinkDrop {
    /// Drops the connection between local port `port` and `broker_port`, both ways. Only
    /// that pair of ports: the same local port may serve a connection to another service
    /// at the same time, which must go on.
    pub fn start(port: u16, broker_port: u16) -> anyhow::Result<Self> {
        remove_dead_runs_rules();
        let comment = format!("{DROP_COMMENT}{}", std::process::id());
        let rules: Vec<Vec<String>> = [(port, broker_port), (broker_port, port)]
            .iter()
            .map(|(source, destination)| {
                [
                    "INPUT",
                    "-p",
                    "tcp",
                    "--sport",
                    &source.to_string(),
                    "--dport",
                    &destination.to_string(),
                    "-m",
                    "comment",
                    "--comment",
                    &comment,
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|part| part.to_string())
                .collect()
            })
            .collect();
        let mut link_drop = Self { rules: Vec::new() };
        for rule in rules {
            iptables("-I", &rule)?;
            link_drop.rules.push(rule);
        }
        Ok(link_drop)
    }
}

impl Drop for LinkDrop {
    fn drop(&mut self) {
        for rule in &self.rules {
            if let Err(error) = iptables("-D", rule) {
                eprintln!("could not remove iptables rule {rule:?}: {error}");
            }
        }
    }
}

fn iptables(action: &str, rule: &[String]) -> anyhow::Result<()> {
    let output = std::process::Command::new("iptables")
        .arg("-w")
        .arg(action)
        .args(rule)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "iptables {action} {}: {}",
        rule.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Removes the link-drop rules of test processes that no longer exist.
fn remove_dead_runs_rules() {
    let Ok(output) = std::process::Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(pid) = line
            .split(DROP_COMMENT)
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        // `iptables -S` may quote the comment, which has no spaces; no shell is involved.
        let arguments: Vec<String> = rule
            .split_whitespace()
            .map(|part| part.trim_matches('"').to_string())
            .collect();
        let _ = iptables("-D", &arguments);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_segments_are_told_apart_by_their_first_frame() {
        let heartbeat = [8, 0, 0, 0, 0, 0, 0, 0xce];
        assert_eq!(
            Transport::Amqp.kind(&heartbeat, 8, Direction::ToBroker),
            Some(SegmentKind::Heartbeat)
        );
        let deliver = [1, 0, 1, 0, 0, 0, 40, 0, 60, 0, 60, 0];
        assert_eq!(
            Transport::Amqp.kind(&deliver, 300, Direction::ToBroker),
            Some(SegmentKind::Delivery)
        );
        let publish = [1, 0, 2, 0, 0, 0, 40, 0, 60, 0, 40];
        assert_eq!(
            Transport::Amqp.kind(&publish, 300, Direction::ToBroker),
            Some(SegmentKind::Publish)
        );
        let ack = [1, 0, 2, 0, 0, 0, 13, 0, 60, 0, 80];
        assert_eq!(
            Transport::Amqp.kind(&ack, 21, Direction::ToBroker),
            Some(SegmentKind::Ack)
        );
        assert_eq!(Transport::Amqp.kind(&[], 0, Direction::ToBroker), None);
        assert_eq!(
            Transport::Amqp.kind(&[3, 0], 100, Direction::ToBroker),
            Some(SegmentKind::Other)
        );
    }

    #[test]
    fn mqtt_packets_are_told_apart_by_type_and_direction() {
        let mqtt = |payload: &[u8], direction| Transport::Mqtt.kind(payload, 2, direction);
        for ping in [[0xc0, 0], [0xd0, 0]] {
            assert_eq!(
                mqtt(&ping, Direction::ToBroker),
                Some(SegmentKind::Heartbeat)
            );
        }
        // PUBLISH, QoS 1.
        assert_eq!(
            mqtt(&[0x32, 40], Direction::FromBroker),
            Some(SegmentKind::Delivery)
        );
        assert_eq!(
            mqtt(&[0x32, 40], Direction::ToBroker),
            Some(SegmentKind::Publish)
        );
        assert_eq!(
            mqtt(&[0x40, 2], Direction::ToBroker),
            Some(SegmentKind::Ack)
        );
        // CONNECT, SUBSCRIBE.
        assert_eq!(
            mqtt(&[0x10, 30], Direction::ToBroker),
            Some(SegmentKind::Other)
        );
        assert_eq!(
            mqtt(&[0x82, 30], Direction::ToBroker),
            Some(SegmentKind::Other)
        );
        assert_eq!(Transport::Mqtt.kind(&[], 0, Direction::ToBroker), None);
    }

    fn packet(time: f64, from: u16, to: u16, payload: &[u8], syn: bool) -> Packet {
        Packet {
            time,
            ip_bytes: 52 + payload.len() as u32,
            source_port: from,
            destination_port: to,
            syn,
            payload_len: payload.len() as u32,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn acks_count_for_what_they_acknowledge() {
        let heartbeat = [8, 0, 0, 0, 0, 0, 0, 0xce];
        let packets = vec![
            packet(0.0, 40000, 5672, &[], true),
            packet(1.0, 5672, 40000, &heartbeat, false),
            packet(1.1, 40000, 5672, &[], false),
            packet(
                2.0,
                40000,
                5672,
                &[1, 0, 2, 0, 0, 0, 40, 0, 60, 0, 40],
                false,
            ),
            packet(2.1, 5672, 40000, &[], false),
        ];
        let tally = Tally::of(Transport::Amqp, &packets, 5672);
        assert_eq!(tally.packets, 5);
        assert_eq!(tally.by_kind["heartbeat from broker"], [2, 60 + 52]);
        assert_eq!(tally.by_kind["publish to broker"], [2, 63 + 52]);
        assert_eq!(tally.by_kind["other to broker"], [1, 52]);
        assert_eq!(
            tally.bytes_of(SegmentKind::Publish, Direction::ToBroker),
            63 + 52
        );
        assert_eq!(tally.to_broker_packets, 3);
        assert_eq!(tally.payload_bytes, 8 + 11);
        assert_eq!(between(&packets, 1.0, 2.0).len(), 2);
    }

    #[test]
    fn pcap_records_of_tcp_over_ipv4_on_loopback() {
        // Global header (little-endian, microseconds, Ethernet), then one record: a TCP
        // segment 127.0.0.1:40000 -> 127.0.0.1:5672 with the 8-byte AMQP heartbeat.
        let mut file = Vec::new();
        file.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        file.extend_from_slice(&[2, 0, 4, 0]);
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&160u32.to_le_bytes());
        file.extend_from_slice(&1u32.to_le_bytes());
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut ip = vec![
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        let mut tcp = vec![0u8; 32];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5672u16.to_be_bytes());
        tcp[12] = 8 << 4;
        tcp[13] = 0x18;
        ip.append(&mut tcp);
        ip.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0xce]);
        frame.append(&mut ip);
        file.extend_from_slice(&7u32.to_le_bytes());
        file.extend_from_slice(&500_000u32.to_le_bytes());
        file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        file.extend_from_slice(&frame);
        let packets = parse_pcap(&file).expect("parses");
        assert_eq!(packets.len(), 1);
        let packet = &packets[0];
        assert_eq!(packet.ip_bytes, 60);
        assert_eq!(packet.payload_len, 8);
        assert_eq!((packet.source_port, packet.destination_port), (40000, 5672));
        assert!((packet.time - 7.5).abs() < 1e-9);
        assert_eq!(
            Transport::Amqp.kind(&packet.payload, packet.payload_len, Direction::ToBroker),
            Some(SegmentKind::Heartbeat)
        );
    }
}
