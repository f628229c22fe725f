//! The one shutdown path. SIGTERM/SIGINT and fatal errors both cancel one token; a fatal
//! error also records why, so `main` exits non-zero and the supervisor restarts the instance
//! (DESIGN §3 "fail hard").

use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

/// Cancels the instance; remembers the first fatal reason.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    fatal: Arc<OnceLock<String>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a handle around an existing token (so a test or `main` can cancel it).
    pub fn with_token(token: CancellationToken) -> Self {
        Self {
            token,
            fatal: Arc::default(),
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// A graceful stop: in-flight requests finish, the process exits 0.
    pub fn stop(&self) {
        self.token.cancel();
    }

    /// A fatal error: stop, and exit non-zero with this reason.
    pub fn fail(&self, reason: impl std::fmt::Display) {
        let reason = reason.to_string();
        if self.fatal.set(reason.clone()).is_ok() {
            tracing::error!(reason = %reason, "fatal error, shutting down");
        }
        self.token.cancel();
    }

    /// The reason of the first fatal error, if any.
    pub fn fatal_reason(&self) -> Option<String> {
        self.fatal.get().cloned()
    }
}
