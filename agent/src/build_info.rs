//! What `nebula-agent --version` prints: the version, the target the binary was built for
//! and its optional features, so a binary found on a board identifies itself.

/// The crate version (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The target triple the binary was compiled for (set by `build.rs`).
pub const TARGET: &str = env!("NEBULA_BUILD_TARGET");

/// The optional cargo features compiled in (`amqp` is a default one, but an MQTT-only build
/// leaves it out, and the line must tell the two apart).
pub fn features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "amqp") {
        features.push("amqp");
    }
    if cfg!(feature = "tls") {
        features.push("tls");
    }
    if cfg!(feature = "mqtt") {
        features.push("mqtt");
    }
    features
}

/// One line: `nebula-agent 0.1.0 (aarch64-unknown-linux-musl; features: amqp,tls,mqtt)`.
pub fn version_line() -> String {
    let features = features();
    let features = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(",")
    };
    format!("nebula-agent {VERSION} ({TARGET}; features: {features})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_line_names_version_target_and_features() {
        let line = version_line();
        assert!(
            line.starts_with(&format!("nebula-agent {VERSION} (")),
            "{line}"
        );
        assert!(line.contains(TARGET), "{line}");
        assert!(
            TARGET.contains("-linux-"),
            "build.rs sets a real triple: {TARGET}"
        );
        assert_eq!(line.contains("tls"), cfg!(feature = "tls"), "{line}");
        assert_eq!(line.contains("amqp"), cfg!(feature = "amqp"), "{line}");
        assert_eq!(line.contains("mqtt"), cfg!(feature = "mqtt"), "{line}");
    }
}
