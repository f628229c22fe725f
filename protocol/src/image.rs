//! Docker image references: `[registry[:port]/][namespace/]name[:tag][@digest]`.
//!
//! Both sides parse images the same way: the control plane to reject a bad `docker_image`
//! with a 400 before anything is stored, the agent to know which registry to log in to and
//! what to pull.

use std::fmt;
use std::str::FromStr;

/// The registry Docker assumes when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag Docker assumes when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference is longer than 255 characters")]
    TooLong,
    #[error("invalid registry {0:?}")]
    Registry(String),
    #[error(
        "invalid repository path component {0:?}: lowercase letters, digits and separators only"
    )]
    Component(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error("invalid digest {0:?}: expected algorithm:hex")]
    Digest(String),
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `host[:port]` when the reference names a registry.
    pub registry: Option<String>,
    /// `[namespace/]name`, every component lowercase.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// The registry to log in to and pull from.
    pub fn registry_or_default(&self) -> &str {
        self.registry.as_deref().unwrap_or(DEFAULT_REGISTRY)
    }

    /// `registry/repository` without tag or digest: the `fromImage` of a pull.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(registry) => format!("{registry}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// The tag a pull asks for: the given one, or `latest` when neither tag nor digest is given.
    pub fn tag_for_pull(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => Some(tag),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG),
        }
    }

    /// The reference a container is created from: digest wins over tag, tag defaults to `latest`.
    pub fn canonical(&self) -> String {
        match (&self.digest, self.tag_for_pull()) {
            (Some(digest), _) => format!("{}@{digest}", self.name()),
            (None, Some(tag)) => format!("{}:{tag}", self.name()),
            (None, None) => self.name(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.name())?;
        if let Some(tag) = &self.tag {
            write!(formatter, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(formatter, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(reference: &str) -> Result<Self, Self::Err> {
        if reference.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if reference.len() > 255 {
            return Err(ImageRefError::TooLong);
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest)?)),
            None => (reference, None),
        };
        // A ':' after the last '/' separates the tag; one before it is a registry port.
        let last_slash = rest.rfind('/').map_or(0, |index| index + 1);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(colon) => {
                let split = last_slash + colon;
                (&rest[..split], Some(parse_tag(&rest[split + 1..])?))
            }
            None => (rest, None),
        };
        // Docker's rule: the first component is a registry when it looks like a host.
        let (registry, repository) = match path.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(parse_registry(first)?), remainder)
            }
            _ => (None, path),
        };
        for component in repository.split('/') {
            if !is_path_component(component) {
                return Err(ImageRefError::Component(component.to_string()));
            }
        }
        Ok(Self {
            registry,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`, Docker's path component grammar.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !is_lower_alnum(*first) || !is_lower_alnum(*last) {
        return false;
    }
    let mut separator_run = String::new();
    for &byte in bytes {
        if is_lower_alnum(byte) {
            let allowed = matches!(separator_run.as_str(), "" | "." | "_" | "__")
                || separator_run.bytes().all(|separator| separator == b'-');
            if !allowed {
                return false;
            }
            separator_run.clear();
        } else if matches!(byte, b'.' | b'_' | b'-') {
            separator_run.push(byte as char);
        } else {
            return false;
        }
    }
    true
}

fn is_lower_alnum(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit()
}

fn parse_registry(registry: &str) -> Result<String, ImageRefError> {
    let invalid = || ImageRefError::Registry(registry.to_string());
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok_and(|port| port > 0));
    if host_ok && port_ok {
        Ok(registry.to_string())
    } else {
        Err(invalid())
    }
}

/// `[\w][\w.-]{0,127}`.
fn parse_tag(tag: &str) -> Result<String, ImageRefError> {
    let word = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let valid = tag.len() <= 128
        && tag.bytes().next().is_some_and(word)
        && tag
            .bytes()
            .all(|byte| word(byte) || byte == b'.' || byte == b'-');
    if valid {
        Ok(tag.to_string())
    } else {
        Err(ImageRefError::Tag(tag.to_string()))
    }
}

/// `algorithm:hex` with at least 32 hex digits, as the distribution spec requires.
fn parse_digest(digest: &str) -> Result<String, ImageRefError> {
    let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
        !algorithm.is_empty()
            && algorithm.bytes().all(|byte| {
                byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"+._-".contains(&byte)
            })
            && hex.len() >= 32
            && hex.bytes().all(|byte| byte.is_ascii_hexdigit())
    });
    if valid {
        Ok(digest.to_string())
    } else {
        Err(ImageRefError::Digest(digest.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(reference: &str) -> ImageRef {
        reference
            .parse()
            .unwrap_or_else(|error| panic!("{reference}: {error}"))
    }

    #[test]
    fn parses_every_form() {
        let plain = parse("nginx");
        assert_eq!(
            (plain.registry.as_deref(), plain.repository.as_str()),
            (None, "nginx")
        );
        assert_eq!(plain.canonical(), "nginx:latest");
        assert_eq!(plain.registry_or_default(), "docker.io");

        let namespaced = parse("library/nginx:1.25");
        assert_eq!(namespaced.repository, "library/nginx");
        assert_eq!(namespaced.tag.as_deref(), Some("1.25"));

        let with_port = parse("127.0.0.1:5000/nebula/test:2");
        assert_eq!(with_port.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(with_port.repository, "nebula/test");
        assert_eq!(with_port.name(), "127.0.0.1:5000/nebula/test");
        assert_eq!(with_port.tag_for_pull(), Some("2"));

        let registry_no_tag = parse("localhost/app");
        assert_eq!(registry_no_tag.registry.as_deref(), Some("localhost"));
        assert_eq!(registry_no_tag.canonical(), "localhost/app:latest");

        let digest = parse(&format!("ghcr.io/org/app@{DIGEST}"));
        assert_eq!(digest.digest.as_deref(), Some(DIGEST));
        assert_eq!(digest.tag_for_pull(), None);
        assert_eq!(digest.canonical(), format!("ghcr.io/org/app@{DIGEST}"));

        let both = parse(&format!("registry.local:443/a/b/c:v1@{DIGEST}"));
        assert_eq!(both.tag.as_deref(), Some("v1"));
        assert_eq!(
            both.to_string(),
            format!("registry.local:443/a/b/c:v1@{DIGEST}")
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "UPPER",
            "a//b",
            "a:",
            ":tag",
            "a:-tag",
            "a@sha256:xyz",
            "host:0/app",
            "a b",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "bad_host:99999/app",
            "a@",
        ] {
            assert!(
                bad.parse::<ImageRef>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(
            "x".repeat(256).parse::<ImageRef>(),
            Err(ImageRefError::TooLong)
        );
    }

    #[test]
    fn accepts_docker_separators() {
        for good in ["a.b", "a_b", "a__b", "a-b", "a---b", "my-org/my_app.v2"] {
            assert!(good.parse::<ImageRef>().is_ok(), "{good:?}");
        }
    }
}
