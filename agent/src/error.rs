//! Typed errors, one per layer. Each says whether retrying the same operation can help, so
//! callers decide between "back off and try again" and "fail hard" (DESIGN §3) without
//! string matching.

use nebula_protocol::DecodeError;

/// Bad configuration: never retryable, the process exits with code 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "set exactly one of NEBULA_DEVICE_GROUP (group mode) or NEBULA_APPS/APP_NAME (app mode)"
    )]
    NoMode,
    #[error("NEBULA_DEVICE_GROUP and NEBULA_APPS/APP_NAME are both set; set exactly one of them")]
    BothModes,
    #[error("{variable} is invalid: {reason}")]
    Invalid {
        variable: &'static str,
        reason: String,
    },
}

/// Errors talking to the broker. None of them ends the agent: a failed boot flow starts
/// over on a new channel, a lost connection is re-established (DESIGN §3), so whether one
/// is worth retrying is decided by whether the connection is still up, not by the variant.
#[cfg(feature = "amqp")]
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("{operation} failed: {source}")]
    Operation {
        operation: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker connection was lost: {0}")]
    ConnectionLost(String),
    #[error("the consumer of {queue} was cancelled by the broker")]
    ConsumerCancelled { queue: String },
    #[error("{operation} got no answer within {seconds} s")]
    Timeout {
        operation: &'static str,
        seconds: u64,
    },
    #[error("the broker refused {operation} (nack)")]
    Nacked { operation: &'static str },
}

/// Errors from the container runtime (Docker or simulated).
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine: {0}")]
    Unreachable(String),
    #[error("image {image} is neither pullable nor present locally: {reason}")]
    ImageUnavailable { image: String, reason: String },
    #[error("{operation} {target} failed: {reason}")]
    Operation {
        operation: &'static str,
        target: String,
        reason: String,
    },
    #[error("container {name} did not become {wanted} within {seconds} s")]
    NotReady {
        name: String,
        wanted: &'static str,
        seconds: u64,
    },
    #[error("invalid container spec for {app}: {reason}")]
    InvalidSpec { app: String, reason: String },
    /// A container this agent does not manage (no Nebula labels of this device) has the
    /// name one of ours needs. It is never removed: it may be a device's hand-made service.
    #[error("a container named {name} exists that this agent does not manage; rename or remove it")]
    NameTaken { name: String },
}

impl DockerError {
    /// Every runtime error except a spec the config itself makes impossible can go away on
    /// its own (engine restarted, registry back, port freed), so the reconciler retries
    /// those with backoff.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::InvalidSpec { .. })
    }
}

/// Errors persisting the desired state: the only errors that end the agent after start.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
}

impl StateError {
    /// A failed write usually means a full or read-only disk: retrying in this process does
    /// not fix it, so the agent fails hard rather than acking a message it did not persist.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[cfg(feature = "amqp")]
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("a message failed to decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("internal task failed: {0}")]
    Task(String),
}
