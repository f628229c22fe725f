//! Fails when a crate links a dependency its architecture invariants forbid.

/// (crate, forbidden dependencies, why).
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

pub fn run() -> Result<(), String> {
    let mut violations = Vec::new();
    for (krate, forbidden, why) in RULES {
        // Every target and every feature: a dependency behind an optional feature or a
        // platform cfg is still one a user can end up shipping.
        let tree = super::output(
            "cargo",
            &[
                "tree",
                "--package",
                krate,
                "--edges",
                "normal,build",
                "--target",
                "all",
                "--all-features",
                "--prefix",
                "none",
                "--format",
                "{p}",
            ],
        )?;
        let names: std::collections::BTreeSet<&str> = tree
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        for dependency in *forbidden {
            if names.contains(dependency) {
                violations.push(format!("{krate} depends on {dependency} ({why})"));
            }
        }
        println!(
            "check-deps: {krate}: {} crates, none of {}",
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
