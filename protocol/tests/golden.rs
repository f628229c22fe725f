//! Golden bytes for every message variant. postcard is not self-describing: a reordered
//! variant or field still decodes, into the wrong thing. These tests pin the exact bytes, so
//! such a change fails here instead of on a fleet running two agent versions.
//!
//! A failing test here means the wire format changed. That is only ever right for an
//! append at the end of a struct or enum, with a protocol review; then update the hex.

#[path = "support/samples.rs"]
mod samples;

use nebula_protocol::{PortMapping, PortProtocol, decode, encode};

const GOLDEN: &[(&str, &str)] = &[
    (
        "app_changed",
        "4e42020003776562071c3132372e302e302e313a353030302f6e6562756c612f746573743a3202005001903f50020201044d4f444504656467650102066e6562756c6106627269646765010e2f646174613a2f646174613a726f01152f6465762f6932632d313a2f6465762f6932632d3100018180d1d9c89891031e01",
    ),
    ("app_deleted", "4e42020103776562088180d1d9c8989103"),
    (
        "device_group_changed",
        "4e4202020465646765030202037765620662726f6b656e01066261636b7570090103776562071c3132372e302e302e313a353030302f6e6562756c612f746573743a3202005001903f50020201044d4f444504656467650102066e6562756c6106627269646765010e2f646174613a2f646174613a726f01152f6465762f6932632d313a2f6465762f6932632d3100018180d1d9c89891031e0101066261636b7570010b2a2f35202a202a202a202a0762757379626f78000102066e6562756c610662726964676500000005010662726f6b656e",
    ),
    ("device_group_deleted", "4e42020304656467650409"),
    (
        "sync_request",
        "4e4202040470692d3101046564676502633105302e312e3001f7ccd5a2b4c6c88880deb7de9af1d9a2a302",
    ),
    (
        "sync_reply",
        "4e4202050263310003776562071c3132372e302e302e313a353030302f6e6562756c612f746573743a3202005001903f50020201044d4f444504656467650102066e6562756c6106627269646765010e2f646174613a2f646174613a726f01152f6465762f6932632d313a2f6465762f6932632d3100018180d1d9c89891031e01f7ccd5a2b4c6c88880deb7de9af1d9a2a302",
    ),
    (
        "device_report",
        // Protocol 2 appended the inventory facts: restart_count and incarnation after
        // each container's app_id, desired_incarnation and converged after each app's
        // error, and target .. stopping after resources; then cron_jobs (each job's run
        // containers) after stopping.
        "4e4202060470692d310270690104656467650103010280e2cfaa060105302e312e3001037765620107010701057765622d31056e67696e780772756e6e696e670001070102010900010901040000484180d0acf30e8094ebdc038080e59a7780a0d9e61d1a616172636836342d756e6b6e6f776e2d6c696e75782d6d75736c1e44656269616e20474e552f4c696e75782031322028626f6f6b776f726d290b4c696e757820362e312e30010632382e322e32901c3c3c000465646765888e98a8c0e080810105010b0001066261636b757001116261636b75702d313639393939393938300762757379626f780665786974656401020105",
    ),
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn every_variant_has_golden_bytes() {
    let variants = samples::every_variant();
    assert_eq!(
        variants.len(),
        GOLDEN.len(),
        "add a golden entry for every new variant"
    );
    for ((name, message), (golden_name, golden_hex)) in variants.iter().zip(GOLDEN) {
        assert_eq!(name, golden_name);
        let bytes = encode(message);
        assert_eq!(&hex(&bytes), golden_hex, "wire bytes of {name} changed");
        assert_eq!(&decode(&bytes).expect("golden bytes decode"), message);
    }
}

/// postcard cannot leave a field out: a report of an agent built before `cron_jobs` was
/// appended (the same bytes, one field short) is refused as malformed, never misread, and a
/// decoder of that build refuses a current report for its trailing bytes. Reports are best
/// effort; the agent's next report after its upgrade is read again.
#[test]
fn a_report_from_before_cron_jobs_is_refused_not_misread() {
    let (name, current) = &samples::every_variant()[6];
    assert_eq!(*name, "device_report");
    let nebula_protocol::Message::DeviceReport(report) = current else {
        panic!("not a report");
    };
    let mut without = report.clone();
    without.cron_jobs.clear();
    let mut bytes = encode(&nebula_protocol::Message::DeviceReport(without));
    // An empty list is one zero byte, the last of the message.
    assert_eq!(bytes.pop(), Some(0));
    assert!(matches!(
        decode(&bytes),
        Err(nebula_protocol::DecodeError::Malformed(_))
    ));
}

#[test]
fn variant_tags_are_in_declaration_order() {
    for (index, (name, message)) in samples::every_variant().iter().enumerate() {
        assert_eq!(message.kind(), *name);
        assert_eq!(usize::from(encode(message)[3]), index, "tag of {name}");
    }
}

/// The port mapping forms, each pinned on its own: the protocol form was appended in
/// protocol version 2 and must decode as what it is on every agent that knows it.
#[test]
fn port_mappings_have_golden_bytes() {
    let mappings = [
        (PortMapping::Same(53), "0035"),
        (
            PortMapping::Mapped {
                host: 5353,
                container: 53,
            },
            "01e92935",
        ),
        (
            PortMapping::MappedWithProtocol {
                host: 5353,
                container: 53,
                protocol: PortProtocol::Udp,
            },
            "02e9293501",
        ),
        (
            PortMapping::MappedWithProtocol {
                host: 5353,
                container: 53,
                protocol: PortProtocol::Tcp,
            },
            "02e9293500",
        ),
    ];
    for (mapping, golden_hex) in mappings {
        let bytes = postcard::to_allocvec(&mapping).expect("encode");
        assert_eq!(hex(&bytes), golden_hex, "{mapping:?}");
        assert_eq!(
            postcard::from_bytes::<PortMapping>(&bytes).expect("decode"),
            mapping
        );
    }
}
