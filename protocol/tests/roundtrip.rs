//! Property tests: every message survives encode → decode unchanged, and no byte string
//! makes the decoder panic.

#[path = "support/samples.rs"]
mod samples;

use nebula_protocol::*;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = Name> {
    "[a-z0-9][a-z0-9_.-]{0,20}"
        .prop_map(|value| Name::new(value).expect("strategy yields valid names"))
}

fn revision() -> impl Strategy<Value = Revision> {
    1..u64::MAX
}

fn incarnation() -> impl Strategy<Value = Incarnation> {
    any::<u64>()
}

fn port() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn port_mapping() -> impl Strategy<Value = PortMapping> {
    prop_oneof![
        port().prop_map(PortMapping::Same),
        (port(), port()).prop_map(|(host, container)| PortMapping::Mapped { host, container }),
        (port(), port(), any::<bool>()).prop_map(|(host, container, udp)| {
            PortMapping::MappedWithProtocol {
                host,
                container,
                protocol: if udp {
                    PortProtocol::Udp
                } else {
                    PortProtocol::Tcp
                },
            }
        }),
    ]
}

fn containers_per() -> impl Strategy<Value = ContainersPer> {
    prop_oneof![
        (1..=1024u32).prop_map(ContainersPer::Server),
        (1..=1024u32).prop_map(ContainersPer::Instance),
        (1..=1024u32).prop_map(ContainersPer::Cpu),
        (1..=u32::MAX).prop_map(ContainersPer::Memory),
        (1..=u32::MAX).prop_map(ContainersPer::Mem),
    ]
}

fn image() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("nginx".to_string()),
        "[a-z0-9]{1,8}(/[a-z0-9]{1,8})?(:[a-z0-9]{1,8})?",
        "(127\\.0\\.0\\.1|registry\\.local):[1-9][0-9]{0,3}/[a-z]{1,8}:[a-z0-9]{1,5}",
    ]
}

fn mount() -> impl Strategy<Value = String> {
    "/[a-z]{1,8}:/[a-z]{1,8}(:ro|:rw)?"
}

fn app() -> impl Strategy<Value = AppConfig> {
    (
        (
            name(),
            revision(),
            image(),
            vec(port_mapping(), 0..4),
            containers_per(),
            incarnation(),
        ),
        (
            btree_map("[A-Z_]{1,8}", ".{0,16}", 0..4),
            any::<bool>(),
            vec(name(), 0..3),
            vec(mount(), 0..3),
            any::<bool>(),
            any::<bool>(),
        ),
        (
            0..=nebula_protocol::model::MAX_STOP_TIMEOUT_SECS,
            prop_oneof![Just(PullPolicy::Always), Just(PullPolicy::IfNotPresent)],
        ),
    )
        .prop_map(
            |(
                (app_name, app_id, docker_image, starting_ports, containers_per, incarnation),
                (env_vars, running, networks, volumes, privileged, rolling_restart),
                (stop_timeout_secs, pull_policy),
            )| {
                let mut networks: Vec<String> = networks.into_iter().map(String::from).collect();
                networks.dedup();
                networks.sort();
                networks.dedup();
                AppConfig {
                    app_name,
                    app_id,
                    docker_image,
                    starting_ports,
                    containers_per,
                    env_vars,
                    running,
                    networks,
                    volumes,
                    devices: Vec::new(),
                    privileged,
                    rolling_restart,
                    incarnation,
                    stop_timeout_secs,
                    pull_policy,
                    env_vars_form: nebula_protocol::EnvVarsForm::Dict,
                }
            },
        )
}

fn cron_job() -> impl Strategy<Value = CronJob> {
    (
        name(),
        revision(),
        image(),
        any::<bool>(),
        prop_oneof![Just("*/5 * * * *"), Just("0 3 * * 1-5")],
        incarnation(),
    )
        .prop_map(
            |(cron_job_name, cron_job_id, docker_image, running, schedule, incarnation)| CronJob {
                cron_job_id,
                running,
                incarnation,
                ..CronJob::new(cron_job_name, schedule, docker_image)
            },
        )
}

fn unique(names: Vec<Name>) -> Vec<Name> {
    let mut names = names;
    names.sort();
    names.dedup();
    names
}

fn group_state() -> impl Strategy<Value = GroupState> {
    (
        name(),
        revision(),
        revision(),
        vec(app(), 0..3),
        vec(cron_job(), 0..2),
        incarnation(),
    )
        .prop_map(
            |(device_group, device_group_id, prune_id, apps, cron_jobs, incarnation)| GroupState {
                group: DeviceGroup {
                    device_group,
                    device_group_id,
                    prune_id,
                    apps: unique(apps.iter().map(|app| app.app_name.clone()).collect()),
                    cron_jobs: unique(
                        cron_jobs
                            .iter()
                            .map(|job| job.cron_job_name.clone())
                            .collect(),
                    ),
                    incarnation,
                },
                apps,
                cron_jobs,
                unavailable: Vec::new(),
            },
        )
}

fn report() -> impl Strategy<Value = DeviceReport> {
    let base = (
        name(),
        ".{0,16}",
        proptest::option::of(name()),
        any::<u64>(),
        any::<bool>(),
        vec((name(), proptest::option::of(revision())), 0..3),
        0.0f32..100.0,
    )
        .prop_map(
            |(device_id, hostname, device_group, time, updated, apps, cpu_percent)| DeviceReport {
                device_id,
                hostname,
                device_group: device_group.clone(),
                device_group_id: Some(1),
                prune_id: None,
                report_creation_time: time,
                updated,
                agent_version: "0.1.0".into(),
                apps: apps
                    .into_iter()
                    .map(|(app_name, revision)| AppReport {
                        app_name,
                        desired_revision: revision,
                        applied_revision: revision,
                        containers: vec![ContainerReport {
                            name: "c-1".into(),
                            image: "i".into(),
                            state: "running".into(),
                            health: Some("healthy".into()),
                            app_id: revision,
                            restart_count: Some(3),
                            incarnation: Some(7),
                        }],
                        error: None,
                        desired_incarnation: revision.map(|_| 7),
                        converged: updated,
                    })
                    .collect(),
                resources: ResourceUsage {
                    cpu_cores: 4,
                    cpu_percent,
                    memory_total_bytes: 1 << 32,
                    memory_used_bytes: 1 << 30,
                    root_disk_total_bytes: 1 << 35,
                    root_disk_used_bytes: 1 << 33,
                },
                target: "x86_64-unknown-linux-musl".into(),
                os: String::new(),
                kernel: "Linux 6.1".into(),
                docker_version: None,
                uptime_secs: time / 2,
                agent_uptime_secs: time / 4,
                report_interval_secs: 60,
                mode: match &device_group {
                    Some(group) => DeviceMode::Group(group.clone()),
                    None => DeviceMode::Apps(Vec::new()),
                },
                session: time ^ 0x5555,
                sequence: time / 3,
                device_group_incarnation: device_group.as_ref().map(|_| 1),
                stopping: updated && time % 2 == 0,
                cron_jobs: Vec::new(),
            },
        );
    let cron_jobs = vec((name(), 0usize..4, proptest::option::of(revision())), 0..3);
    (base, cron_jobs).prop_map(|(report, cron_jobs)| DeviceReport {
        cron_jobs: cron_jobs.into_iter().map(cron_job_report).collect(),
        ..report
    })
}

/// A job with `runs` runs, the last one still going.
fn cron_job_report(
    (cron_job_name, runs, revision): (Name, usize, Option<Revision>),
) -> CronJobReport {
    CronJobReport {
        containers: (0..runs)
            .map(|run| CronContainerReport {
                name: format!("{cron_job_name}-{}", 1_700_000_000 + run * 60),
                image: "busybox".into(),
                state: if run + 1 == runs { "running" } else { "exited" }.into(),
                cron_job_id: revision,
                incarnation: revision.map(|_| 3),
            })
            .collect(),
        cron_job_name,
    }
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        app().prop_map(Message::AppChanged),
        (name(), revision(), incarnation()).prop_map(|(app_name, app_id, incarnation)| {
            Message::AppDeleted {
                app_name,
                app_id,
                incarnation,
            }
        }),
        group_state().prop_map(Message::DeviceGroupChanged),
        (name(), revision(), incarnation()).prop_map(
            |(device_group, device_group_id, incarnation)| Message::DeviceGroupDeleted {
                device_group,
                device_group_id,
                incarnation,
            }
        ),
        (
            name(),
            name(),
            any::<bool>(),
            ".{0,36}",
            proptest::option::of(any::<u128>())
        )
            .prop_map(|(device_id, target, group, correlation_id, known_store)| {
                Message::SyncRequest(SyncRequest {
                    device_id,
                    target: if group {
                        SyncTarget::DeviceGroup(target)
                    } else {
                        SyncTarget::App(target)
                    },
                    correlation_id,
                    agent_version: "0.1.0".into(),
                    known_store: known_store.map(StoreId),
                })
            }),
        (
            ".{0,36}",
            prop_oneof![
                app().prop_map(SyncResult::App),
                group_state().prop_map(SyncResult::Group),
                Just(SyncResult::NotFound),
            ],
            any::<u128>()
        )
            .prop_map(
                |(correlation_id, result, store_id)| Message::SyncReply(SyncReply {
                    correlation_id,
                    result,
                    store_id: StoreId(store_id),
                })
            ),
        report().prop_map(Message::DeviceReport),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(message in message()) {
        prop_assert_eq!(message.validate(), Ok(()));
        let bytes = encode(&message);
        prop_assert_eq!(decode(&bytes), Ok(message));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn corrupted_envelopes_never_panic(index in 0usize..4096, byte in any::<u8>(), variant in 0usize..7) {
        let mut bytes = encode(&samples::every_variant()[variant].1);
        let index = index % bytes.len();
        bytes[index] = byte;
        let _ = decode(&bytes);
        bytes.truncate(index);
        let _ = decode(&bytes);
    }
}
