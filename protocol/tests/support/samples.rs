//! One sample of every message variant, shared by the golden and round-trip tests.

use nebula_protocol::*;
use std::collections::BTreeMap;

pub fn name(value: &str) -> Name {
    Name::new(value).expect("valid sample name")
}

pub fn app() -> AppConfig {
    AppConfig {
        app_name: name("web"),
        app_id: 7,
        docker_image: "127.0.0.1:5000/nebula/test:2".into(),
        starting_ports: vec![
            PortMapping::Same(80),
            PortMapping::Mapped {
                host: 8080,
                container: 80,
            },
        ],
        containers_per: ContainersPer::Cpu(2),
        env_vars: BTreeMap::from([("MODE".into(), "edge".into())]),
        running: true,
        networks: vec!["nebula".into(), "bridge".into()],
        volumes: vec!["/data:/data:ro".into()],
        devices: vec!["/dev/i2c-1:/dev/i2c-1".into()],
        privileged: false,
        rolling_restart: true,
        incarnation: 1_764_460_800_000_001,
        stop_timeout_secs: 30,
        pull_policy: PullPolicy::IfNotPresent,
        env_vars_form: nebula_protocol::EnvVarsForm::Dict,
    }
}

pub fn cron_job() -> CronJob {
    CronJob {
        incarnation: 5,
        ..CronJob::new(name("backup"), "*/5 * * * *", "busybox")
    }
}

pub fn group_state() -> GroupState {
    GroupState {
        group: DeviceGroup {
            device_group: name("edge"),
            device_group_id: 3,
            prune_id: 2,
            apps: vec![name("web"), name("broken")],
            cron_jobs: vec![name("backup")],
            incarnation: 9,
        },
        apps: vec![app()],
        cron_jobs: vec![cron_job()],
        unavailable: vec![name("broken")],
    }
}

/// One message of every variant, in declaration order, with its name.
pub fn every_variant() -> Vec<(&'static str, Message)> {
    vec![
        ("app_changed", Message::AppChanged(app())),
        (
            "app_deleted",
            Message::AppDeleted {
                app_name: name("web"),
                app_id: 8,
                incarnation: 1_764_460_800_000_001,
            },
        ),
        (
            "device_group_changed",
            Message::DeviceGroupChanged(group_state()),
        ),
        (
            "device_group_deleted",
            Message::DeviceGroupDeleted {
                device_group: name("edge"),
                device_group_id: 4,
                incarnation: 9,
            },
        ),
        (
            "sync_request",
            Message::SyncRequest(SyncRequest {
                device_id: name("pi-1"),
                target: SyncTarget::DeviceGroup(name("edge")),
                correlation_id: "c1".into(),
                agent_version: "0.1.0".into(),
                known_store: Some(StoreId(0x0123_4567_89ab_cdef_0011_2233_4455_6677)),
            }),
        ),
        (
            "sync_reply",
            Message::SyncReply(SyncReply {
                correlation_id: "c1".into(),
                result: SyncResult::App(app()),
                store_id: StoreId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            }),
        ),
        (
            "device_report",
            Message::DeviceReport(DeviceReport {
                device_id: name("pi-1"),
                hostname: "pi".into(),
                device_group: Some(name("edge")),
                device_group_id: Some(3),
                prune_id: Some(2),
                report_creation_time: 1_700_000_000,
                updated: true,
                agent_version: "0.1.0".into(),
                apps: vec![AppReport {
                    app_name: name("web"),
                    desired_revision: Some(7),
                    applied_revision: Some(7),
                    containers: vec![ContainerReport {
                        name: "web-1".into(),
                        image: "nginx".into(),
                        state: "running".into(),
                        health: None,
                        app_id: Some(7),
                        restart_count: Some(2),
                        incarnation: Some(9),
                    }],
                    error: None,
                    desired_incarnation: Some(9),
                    converged: true,
                }],
                resources: ResourceUsage {
                    cpu_cores: 4,
                    cpu_percent: 12.5,
                    memory_total_bytes: 4_000_000_000,
                    memory_used_bytes: 1_000_000_000,
                    root_disk_total_bytes: 32_000_000_000,
                    root_disk_used_bytes: 8_000_000_000,
                },
                target: "aarch64-unknown-linux-musl".into(),
                os: "Debian GNU/Linux 12 (bookworm)".into(),
                kernel: "Linux 6.1.0".into(),
                docker_version: Some("28.2.2".into()),
                uptime_secs: 3600,
                agent_uptime_secs: 60,
                report_interval_secs: 60,
                mode: DeviceMode::Group(name("edge")),
                session: 0x0102_0304_0506_0708,
                sequence: 5,
                device_group_incarnation: Some(11),
                stopping: false,
                cron_jobs: vec![CronJobReport {
                    cron_job_name: name("backup"),
                    containers: vec![CronContainerReport {
                        name: "backup-1699999980".into(),
                        image: "busybox".into(),
                        state: "exited".into(),
                        cron_job_id: Some(2),
                        incarnation: Some(5),
                    }],
                }],
            }),
        ),
    ]
}
