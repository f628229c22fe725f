//! Fails when a crate links a dependency its architecture invariants forbid.

/// (crate, forbidden dependencies, why), over every feature of the crate.
const RULES: &[(&str, &[&str], &str)] = &[
    (
        "nebula-protocol",
        &[
            "tokio", "lapin", "bollard", "mongodb", "axum", "rumqttc", "hyper", "mio",
        ],
        "the protocol crate does no I/O",
    ),
    (
        "nebula-agent",
        &[
            "mongodb",
            "axum",
            "openssl-sys",
            "openssl",
            "native-tls",
            "aws-lc-rs",
            "aws-lc-sys",
        ],
        "the agent ships to small devices: no database driver, no web server, no OpenSSL; \
         its TLS is rustls with ring, which cross-builds with zig alone (aws-lc needs cmake)",
    ),
    (
        "nebula-cli",
        &[
            "lapin",
            "mongodb",
            "bollard",
            "rumqttc",
            "redb",
            "axum",
            "openssl-sys",
            "openssl",
            "native-tls",
        ],
        "the CLI talks only REST: no broker, store or Docker client; TLS is rustls",
    ),
];

/// (crate, the only features built, forbidden dependencies, why): builds that leave a
/// dependency out.
const FEATURE_RULES: &[(&str, &str, &[&str], &str)] = &[
    (
        "nebula-agent",
        "mqtt,tls",
        &[
            "lapin",
            "amq-protocol",
            "amq-protocol-tcp",
            "amq-protocol-uri",
        ],
        "an MQTT-only agent (issue 17) links no AMQP client",
    ),
    (
        "nebula-agent",
        "amqp,tls",
        &["rumqttc"],
        "an AMQP-only agent links no MQTT client",
    ),
];

pub fn run() -> Result<(), String> {
    let mut violations = Vec::new();
    // Every feature: a dependency behind an optional feature is still one a user can end up
    // shipping.
    let all = RULES
        .iter()
        .map(|(krate, forbidden, why)| (*krate, None, *forbidden, *why));
    let some = FEATURE_RULES
        .iter()
        .map(|(krate, features, forbidden, why)| (*krate, Some(*features), *forbidden, *why));
    for (krate, features, forbidden, why) in all.chain(some) {
        let mut arguments = vec![
            "tree",
            "--package",
            krate,
            "--edges",
            "normal,build",
            // Every target: a platform cfg is no excuse either.
            "--target",
            "all",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ];
        match features {
            None => arguments.push("--all-features"),
            Some(features) => arguments.extend(["--no-default-features", "--features", features]),
        }
        let tree = super::output("cargo", &arguments)?;
        let names: std::collections::BTreeSet<&str> = tree
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        let label = match features {
            None => krate.to_string(),
            Some(features) => format!("{krate} (features {features} only)"),
        };
        for dependency in forbidden {
            if names.contains(dependency) {
                violations.push(format!("{label} depends on {dependency} ({why})"));
            }
        }
        println!(
            "check-deps: {label}: {} crates, none of {}",
            names.len(),
            forbidden.join("/")
        );
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations.join("\n"))
    }
}
