//! Where the CLI finds the control plane and its credentials: flags, then the environment,
//! then a TOML config file, each key on its own (a flag beats the same variable, which beats
//! the same key in the file). Resolved into [`Settings`] before any request is made.

use crate::args::GlobalArgs;
use crate::output::OutputFormat;
use std::path::{Path, PathBuf};

pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The environment as the CLI sees it. The process's in `main`; a map in tests.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for std::collections::BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(ToString::to_string)
    }
}

/// Configuration that cannot work; the CLI exits with code 2 before any request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "config file {path} is invalid: {reason} (keys: url, user, password, token, output, ca_file)"
    )]
    Parse { path: PathBuf, reason: String },
    #[error("{source_name} is invalid: {reason}")]
    Invalid { source_name: String, reason: String },
    #[error(
        "user {user:?} has no password: set -p/--password, NEBULA_PASSWORD or password in the config file"
    )]
    MissingPassword { user: String },
    #[error("a password without a user: set -u/--user, NEBULA_USER or user in the config file")]
    MissingUser,
}

/// One source of settings: the flags, the environment or the file. `None`: not set there.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub url: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub output: Option<OutputFormat>,
    pub ca_file: Option<String>,
}

impl Layer {
    pub fn from_flags(flags: &GlobalArgs) -> Self {
        Self {
            url: flags.url.clone(),
            user: flags.user.clone(),
            password: flags.password.clone(),
            token: flags.token.clone(),
            output: flags.output,
            ca_file: flags.ca_file.clone(),
        }
    }

    /// `NEBULA_URL`, `NEBULA_USER`, `NEBULA_PASSWORD`, `NEBULA_TOKEN`, `NEBULA_OUTPUT`,
    /// `NEBULA_CA_FILE`. An
    /// empty variable counts as unset (`NEBULA_TOKEN= nebula ...` switches a token off).
    pub fn from_environment(environment: &dyn Environment) -> Result<Self, ConfigError> {
        let get = |name| environment.var(name).filter(|value| !value.is_empty());
        let output = match get("NEBULA_OUTPUT") {
            None => None,
            Some(text) => Some(text.parse().map_err(|reason| ConfigError::Invalid {
                source_name: "NEBULA_OUTPUT".into(),
                reason,
            })?),
        };
        Ok(Self {
            url: get("NEBULA_URL"),
            user: get("NEBULA_USER"),
            password: get("NEBULA_PASSWORD"),
            token: get("NEBULA_TOKEN"),
            output,
            ca_file: get("NEBULA_CA_FILE"),
        })
    }

    pub fn parse_file(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: error.message().to_string(),
        })
    }
}

/// The config file: `--config`, else `NEBULA_CONFIG`, else `$XDG_CONFIG_HOME/nebula/config.toml`
/// (an absolute `XDG_CONFIG_HOME` only, as the XDG spec says), else
/// `$HOME/.config/nebula/config.toml`. The flag says whether the user named the file: a
/// named file must exist, the default one may be absent.
pub fn config_path(flags: &GlobalArgs, environment: &dyn Environment) -> Option<(PathBuf, bool)> {
    let nonempty = |name| environment.var(name).filter(|value| !value.is_empty());
    if let Some(path) = &flags.config {
        return Some((path.clone(), true));
    }
    if let Some(path) = nonempty("NEBULA_CONFIG") {
        return Some((PathBuf::from(path), true));
    }
    let config_home = nonempty("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(|| nonempty("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some((config_home.join("nebula").join("config.toml"), false))
}

/// Reads the config file layer; an absent default file is an empty layer.
pub fn read_file_layer(location: Option<(PathBuf, bool)>) -> Result<Layer, ConfigError> {
    let Some((path, named)) = location else {
        return Ok(Layer::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Layer::parse_file(&path, &text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !named => {
            Ok(Layer::default())
        }
        Err(error) => Err(ConfigError::Read {
            path,
            reason: error.to_string(),
        }),
    }
}

/// How requests authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    // Secrets never end up in a debug print or a panic message.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => formatter.write_str("None"),
            Self::Basic { user, .. } => write!(formatter, "Basic({user:?}, <password>)"),
            Self::Bearer(_) => formatter.write_str("Bearer(<token>)"),
        }
    }
}

/// Everything a command needs to talk to the control plane and print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Without a trailing slash: `http://127.0.0.1:8080`.
    pub url: String,
    pub auth: Auth,
    pub output: OutputFormat,
    /// PEM file of the authorities trusted for `https://` instead of the built-in ones.
    pub ca_file: Option<PathBuf>,
}

/// Merges the layers, key by key, flags first. A user (from any layer) means basic
/// authentication and needs a password; otherwise a token means bearer authentication.
pub fn resolve(flags: &Layer, environment: &Layer, file: &Layer) -> Result<Settings, ConfigError> {
    let layers = [flags, environment, file];
    let pick = |key: fn(&Layer) -> &Option<String>| {
        layers
            .iter()
            .find_map(|layer| key(layer).clone().filter(|value| !value.is_empty()))
    };
    let url = pick(|layer| &layer.url).unwrap_or_else(|| DEFAULT_URL.to_string());
    let url = url.trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::Invalid {
            source_name: "the control plane URL (--url, NEBULA_URL, url)".into(),
            reason: format!("{url:?} must start with http:// or https://"),
        });
    }
    let auth = match (
        pick(|layer| &layer.user),
        pick(|layer| &layer.password),
        pick(|layer| &layer.token),
    ) {
        (Some(user), Some(password), _) => Auth::Basic { user, password },
        (Some(user), None, _) => return Err(ConfigError::MissingPassword { user }),
        (None, Some(_), None) => return Err(ConfigError::MissingUser),
        (None, _, Some(token)) => Auth::Bearer(token),
        (None, None, None) => Auth::None,
    };
    let output = layers
        .iter()
        .find_map(|layer| layer.output)
        .unwrap_or_default();
    let ca_file = pick(|layer| &layer.ca_file).map(PathBuf::from);
    Ok(Settings {
        url,
        auth,
        output,
        ca_file,
    })
}

/// Flags, environment and file together, as `main` does it.
pub fn load(flags: &GlobalArgs, environment: &dyn Environment) -> Result<Settings, ConfigError> {
    let file = read_file_layer(config_path(flags, environment))?;
    resolve(
        &Layer::from_flags(flags),
        &Layer::from_environment(environment)?,
        &file,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn layer(url: Option<&str>, user: Option<&str>, password: Option<&str>) -> Layer {
        Layer {
            url: url.map(Into::into),
            user: user.map(Into::into),
            password: password.map(Into::into),
            ..Layer::default()
        }
    }

    #[test]
    fn defaults_without_any_setting() {
        let empty = Layer::default();
        let settings = resolve(&empty, &empty, &empty).expect("resolves");
        assert_eq!(settings.url, DEFAULT_URL);
        assert_eq!(settings.auth, Auth::None);
        assert_eq!(settings.output, OutputFormat::Table);
    }

    #[test]
    fn flags_beat_environment_beats_file_key_by_key() {
        let flags = layer(Some("http://flag:1"), None, None);
        let environment = Layer {
            output: Some(OutputFormat::Json),
            ..layer(Some("http://env:2"), Some("env-user"), None)
        };
        let file = Layer {
            output: Some(OutputFormat::Yaml),
            ..layer(Some("http://file:3/"), Some("file-user"), Some("file-pass"))
        };
        let settings = resolve(&flags, &environment, &file).expect("resolves");
        assert_eq!(settings.url, "http://flag:1");
        assert_eq!(
            settings.auth,
            Auth::Basic {
                user: "env-user".into(),
                password: "file-pass".into()
            }
        );
        assert_eq!(settings.output, OutputFormat::Json);

        let settings = resolve(&Layer::default(), &Layer::default(), &file).expect("resolves");
        assert_eq!(settings.url, "http://file:3", "trailing slash dropped");
        assert_eq!(settings.output, OutputFormat::Yaml);
    }

    #[test]
    fn a_user_means_basic_auth_else_a_token_means_bearer() {
        let token = Layer {
            token: Some("secret".into()),
            ..Layer::default()
        };
        let settings = resolve(&Layer::default(), &token, &Layer::default()).expect("resolves");
        assert_eq!(settings.auth, Auth::Bearer("secret".into()));
        let user = layer(None, Some("u"), Some("p"));
        let settings = resolve(&user, &token, &Layer::default()).expect("resolves");
        assert_eq!(
            settings.auth,
            Auth::Basic {
                user: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(
            resolve(&layer(None, Some("u"), None), &token, &Layer::default()),
            Err(ConfigError::MissingPassword { user: "u".into() })
        );
        assert_eq!(
            resolve(
                &layer(None, None, Some("p")),
                &Layer::default(),
                &Layer::default()
            ),
            Err(ConfigError::MissingUser)
        );
    }

    #[test]
    fn url_needs_a_scheme() {
        let error = resolve(
            &layer(Some("cp:8080"), None, None),
            &Layer::default(),
            &Layer::default(),
        )
        .expect_err("no scheme");
        assert!(
            error.to_string().contains("must start with http://"),
            "{error}"
        );
    }

    #[test]
    fn environment_layer_reads_the_contract_names() {
        let environment = BTreeMap::from([
            ("NEBULA_URL", "http://e:1"),
            ("NEBULA_USER", "u"),
            ("NEBULA_PASSWORD", "p"),
            ("NEBULA_TOKEN", ""),
            ("NEBULA_OUTPUT", "yaml"),
        ]);
        let layer = Layer::from_environment(&environment).expect("valid");
        assert_eq!(layer.url.as_deref(), Some("http://e:1"));
        assert_eq!(layer.user.as_deref(), Some("u"));
        assert_eq!(layer.password.as_deref(), Some("p"));
        assert_eq!(layer.token, None, "empty counts as unset");
        assert_eq!(layer.output, Some(OutputFormat::Yaml));
        let bad = BTreeMap::from([("NEBULA_OUTPUT", "xml")]);
        assert!(Layer::from_environment(&bad).is_err());
    }

    #[test]
    fn config_file_keys_and_errors() {
        let path = Path::new("/c.toml");
        let layer = Layer::parse_file(
            path,
            "url = \"http://f:1\"\nuser = \"u\"\npassword = \"p\"\ntoken = \"t\"\noutput = \"json\"\n",
        )
        .expect("valid");
        assert_eq!(layer.url.as_deref(), Some("http://f:1"));
        assert_eq!(layer.token.as_deref(), Some("t"));
        assert_eq!(layer.output, Some(OutputFormat::Json));
        let error = Layer::parse_file(path, "uri = \"x\"\n").expect_err("unknown key");
        assert!(error.to_string().contains("/c.toml"), "{error}");
        assert!(Layer::parse_file(path, "url = 1\n").is_err());
    }

    #[test]
    fn config_file_location() {
        let flags = GlobalArgs::default();
        let xdg = BTreeMap::from([("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/u")]);
        assert_eq!(
            config_path(&flags, &xdg),
            Some((PathBuf::from("/xdg/nebula/config.toml"), false))
        );
        let relative_xdg = BTreeMap::from([("XDG_CONFIG_HOME", "xdg"), ("HOME", "/home/u")]);
        assert_eq!(
            config_path(&flags, &relative_xdg),
            Some((PathBuf::from("/home/u/.config/nebula/config.toml"), false))
        );
        let named = BTreeMap::from([("NEBULA_CONFIG", "/etc/n.toml"), ("HOME", "/home/u")]);
        assert_eq!(
            config_path(&flags, &named),
            Some((PathBuf::from("/etc/n.toml"), true))
        );
        let flag = GlobalArgs {
            config: Some(PathBuf::from("/flag.toml")),
            ..GlobalArgs::default()
        };
        assert_eq!(
            config_path(&flag, &named),
            Some((PathBuf::from("/flag.toml"), true))
        );
        assert_eq!(config_path(&flags, &BTreeMap::new()), None);
    }

    #[test]
    fn a_missing_default_file_is_fine_a_missing_named_file_is_not() {
        let missing = PathBuf::from("/nonexistent/nebula/config.toml");
        assert_eq!(
            read_file_layer(Some((missing.clone(), false))),
            Ok(Layer::default())
        );
        assert!(matches!(
            read_file_layer(Some((missing, true))),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let basic = format!(
            "{:?}",
            Auth::Basic {
                user: "u".into(),
                password: "hunter2".into()
            }
        );
        let bearer = format!("{:?}", Auth::Bearer("tok3n".into()));
        assert!(!basic.contains("hunter2") && !bearer.contains("tok3n"));
    }
}
