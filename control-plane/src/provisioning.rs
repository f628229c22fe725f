//! Provisioning tokens (issue 16): an admin makes one for a device group or a list of apps,
//! with an expiry and a number of uses; a device exchanges it once for its own broker
//! credential (`POST /api/v2/devices/<id>/enrol`) at its first boot. No I/O: the store side is
//! `service::provisioning`.
//!
//! A token reads `<token id>.<secret>`: the id names the stored record, the secret (32 random
//! bytes, hex) is kept only as its SHA-256, so a copy of the store enrols nobody. The whole
//! token is shown once, in the answer that made it.

use crate::device_credentials::Scope;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A token lives a day unless asked otherwise: long enough to flash a batch of SD cards.
pub const DEFAULT_EXPIRES_IN_SECS: u64 = 24 * 60 * 60;
/// At most a year: a token is a standing key to the fleet's scope while it lives.
pub const MAX_EXPIRES_IN_SECS: u64 = 365 * 24 * 60 * 60;
pub const DEFAULT_USES: u64 = 1;
pub const MAX_USES: u64 = 1_000_000;

/// The stored record of a token (`Kind::ProvisioningToken`, named by its id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenDocument {
    pub token_id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    pub scope: Scope,
    pub expires_at_ms: u64,
    /// How many devices it may enrol in all, and how many more.
    pub uses: u64,
    pub uses_left: u64,
    pub created_at_ms: u64,
    pub created_by: String,
}

/// A new token: its id and secret, from the operating system's random source.
pub struct NewToken {
    pub token_id: String,
    pub secret: String,
}

impl std::fmt::Debug for NewToken {
    // Never the secret.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NewToken")
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

impl NewToken {
    pub fn generate() -> Result<Self, String> {
        let mut bytes = [0u8; 40];
        getrandom::fill(&mut bytes).map_err(|error| error.to_string())?;
        Ok(Self {
            token_id: hex(&bytes[..8]),
            secret: hex(&bytes[8..]),
        })
    }

    /// What the admin hands to devices.
    pub fn text(&self) -> String {
        format!("{}.{}", self.token_id, self.secret)
    }
}

/// Splits a presented token into its id and secret; `None` when it is not shaped like one
/// (16 hex digits, a dot, 64 hex digits).
pub fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.trim().split_once('.')?;
    let hex_of = |text: &str, len: usize| {
        text.len() == len && text.bytes().all(|byte| byte.is_ascii_hexdigit())
    };
    (hex_of(id, 16) && hex_of(secret, 64)).then_some((id, secret))
}

pub fn secret_digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Whether an enrolment id is shaped like one: 32 to 128 characters of `[A-Za-z0-9_-]` (the
/// agent makes 64 hex digits).
pub fn valid_enrolment_id(id: &str) -> bool {
    (32..=128).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// Why a presented token enrols nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown id or wrong secret: a guess, counted as a failed login.
    Wrong,
    Expired,
    UsedUp,
}

impl TokenDocument {
    /// Whether `secret` is this token's (compared in constant time).
    pub fn is_secret(&self, secret: &str) -> bool {
        let given = secret_digest(secret);
        bool::from(given.as_bytes().ct_eq(self.secret_sha256.as_bytes()))
    }

    /// Whether `secret` is this token's and it may enrol one more device at `now_ms`.
    pub fn admits(&self, secret: &str, now_ms: u64) -> Result<(), Refusal> {
        if !self.is_secret(secret) {
            return Err(Refusal::Wrong);
        }
        if now_ms >= self.expires_at_ms {
            return Err(Refusal::Expired);
        }
        if self.uses_left == 0 {
            return Err(Refusal::UsedUp);
        }
        Ok(())
    }
}

/// Lowercase hex of `bytes` (users' secrets and digests too).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nebula_protocol::Name;

    fn document(token: &NewToken) -> TokenDocument {
        TokenDocument {
            token_id: token.token_id.clone(),
            secret_sha256: secret_digest(&token.secret),
            scope: Scope::DeviceGroup(Name::new("edge").expect("name")),
            expires_at_ms: 2_000,
            uses: 2,
            uses_left: 2,
            created_at_ms: 1_000,
            created_by: "admin".into(),
        }
    }

    #[test]
    fn a_new_token_splits_back_into_its_id_and_secret() {
        let token = NewToken::generate().expect("random");
        let text = token.text();
        assert_eq!(
            split(&text),
            Some((token.token_id.as_str(), token.secret.as_str()))
        );
        assert_eq!(
            split(&format!(" {text}\n")).map(|(id, _)| id),
            Some(token.token_id.as_str())
        );
        assert!(Name::new(&token.token_id).is_ok(), "the id names a record");
        assert_ne!(token.secret, NewToken::generate().expect("random").secret);
    }

    #[test]
    fn anything_not_shaped_like_a_token_is_refused_before_the_store() {
        let secret = "a".repeat(64);
        for bad in [
            String::new(),
            "0123456789abcdef".into(),
            format!("0123456789abcdef{secret}"),
            format!("0123456789abcde.{secret}"),
            format!("0123456789abcdeg.{secret}"),
            format!("0123456789abcdef.{}", "a".repeat(63)),
            format!("0123456789abcdef.{secret}.x"),
            format!("../../etc.{secret}"),
        ] {
            assert_eq!(split(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_the_right_secret_of_a_live_token_with_uses_left_admits() {
        let token = NewToken::generate().expect("random");
        let mut document = document(&token);
        assert_eq!(document.admits(&token.secret, 1_999), Ok(()));
        let other = NewToken::generate().expect("random");
        assert_eq!(document.admits(&other.secret, 1_999), Err(Refusal::Wrong));
        assert_eq!(document.admits(&token.secret, 2_000), Err(Refusal::Expired));
        // A wrong secret says nothing about expiry.
        assert_eq!(document.admits(&other.secret, 2_000), Err(Refusal::Wrong));
        document.uses_left = 0;
        assert_eq!(document.admits(&token.secret, 1_999), Err(Refusal::UsedUp));
    }

    #[test]
    fn the_store_keeps_only_the_secrets_digest() {
        let token = NewToken::generate().expect("random");
        assert!(!format!("{token:?}").contains(&token.secret));
        let stored = serde_json::to_string(&document(&token)).expect("json");
        assert!(!stored.contains(&token.secret));
        assert!(stored.contains(&secret_digest(&token.secret)));
    }
}
