//! The error types of each layer. Each says whether retrying the same operation can help, so
//! callers decide between retrying, answering the client, or failing hard (DESIGN §3).

use crate::store::Kind;

/// Whether an operation that failed may succeed when tried again unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A later attempt may succeed (a timeout, a connection that may come back).
    Helps,
    /// The same input fails the same way (bad data, a conflict the caller must resolve).
    Useless,
}

/// Errors of the store layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {name} does not exist")]
    NotFound { kind: &'static str, name: String },
    /// Another writer changed the object since it was read: re-read and try again.
    #[error("{kind} {name} changed concurrently (expected version {expected})")]
    Conflict {
        kind: &'static str,
        name: String,
        expected: u64,
    },
    #[error("stored {kind} {name} is corrupt: {reason}")]
    Corrupt {
        kind: &'static str,
        name: String,
        reason: String,
    },
    /// The database refused this one object (larger than it can hold): an error of the
    /// object, not of the store, so it does not end the instance; writing it again fails
    /// the same way.
    #[error("{kind} {name} refused by the store: {reason}")]
    Refused {
        kind: &'static str,
        name: String,
        reason: String,
    },
    /// The database cannot be reached or failed; the instance fails hard.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// The stored `kind` `name` cannot be read back.
    pub fn corrupt(kind: Kind, name: &str, reason: impl std::fmt::Display) -> Self {
        Self::Corrupt {
            kind: kind.label(),
            name: name.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The database failed or cannot be reached.
    pub fn unavailable(reason: impl std::fmt::Display) -> Self {
        Self::Unavailable(reason.to_string())
    }

    pub fn retry(&self) -> Retry {
        match self {
            Self::Conflict { .. } | Self::Unavailable(_) => Retry::Helps,
            Self::AlreadyExists { .. }
            | Self::NotFound { .. }
            | Self::Corrupt { .. }
            | Self::Refused { .. } => Retry::Useless,
        }
    }

    /// True when the store itself is in trouble, rather than the request. A corrupt record
    /// is not: it is an error of that one object (answered 500, skipped by the outbox,
    /// rejected in sync), and ending the instance over it would only crash-loop every
    /// instance on the same record.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Errors talking to the broker. Every one of them ends the broker connection (the instance
/// stays up and reconnects, see `broker::link`), except [`AmqpError::NotFound`] — an exchange
/// another instance just deleted is that object's race, not a broker failure — and
/// [`AmqpError::Unavailable`], which is what the operations get while there is no connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AmqpError {
    #[error("cannot connect to the broker: {0}")]
    Connect(String),
    #[error("broker operation {operation} failed: {reason}")]
    Operation {
        operation: &'static str,
        reason: String,
    },
    #[error("publish to {exchange} was not confirmed: {reason}")]
    NotConfirmed { exchange: String, reason: String },
    #[error("broker connection lost: {0}")]
    ConnectionLost(String),
    /// No broker connection right now: the instance is reconnecting (to another node of the
    /// cluster, or to the same broker once it is back).
    #[error("no broker connection (reconnecting): {0}")]
    Unavailable(String),
    /// The broker answered 404: the exchange does not exist (any more). Only the channel of
    /// that operation was closed.
    #[error("broker operation {operation} on {target}: not found")]
    NotFound {
        operation: &'static str,
        target: String,
    },
}

impl AmqpError {
    pub fn retry(&self) -> Retry {
        // A new connection (the instance reconnects by itself) may succeed.
        Retry::Helps
    }

    /// The object's race (see [`AmqpError::NotFound`]), not a broker failure.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Whether the connection the operation ran on must be dropped and a new one made: every
    /// failure of the broker itself (lost connection, missing confirm, a refused operation),
    /// not an object's race, and not the absence of a connection, which is already known.
    pub fn ends_connection(&self) -> bool {
        !matches!(self, Self::NotFound { .. } | Self::Unavailable(_))
    }
}

/// Invalid configuration: the process exits with code 64 before doing any I/O.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{variable} is invalid: {reason}")]
    Invalid {
        variable: &'static str,
        reason: String,
    },
    #[error("{variable} is required {when}")]
    Missing {
        variable: &'static str,
        when: &'static str,
    },
}

impl ConfigError {
    pub fn retry(&self) -> Retry {
        Retry::Useless
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification() {
        assert_eq!(StoreError::Unavailable("x".into()).retry(), Retry::Helps);
        assert_eq!(
            StoreError::AlreadyExists {
                kind: "app",
                name: "a".into()
            }
            .retry(),
            Retry::Useless
        );
        assert_eq!(AmqpError::ConnectionLost("x".into()).retry(), Retry::Helps);
        assert_eq!(
            ConfigError::Missing {
                variable: "X",
                when: "always"
            }
            .retry(),
            Retry::Useless
        );
    }
}
