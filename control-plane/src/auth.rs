//! Authentication and authorization.
//!
//! Authentication turns a request's `Authorization` header into a [`Principal`]: the local
//! admin from configuration (checked here, without the store), or a stored user (checked by
//! `service::users` when the header is not the admin's), whose permissions are the union over
//! its user groups. Each route then asks [`Principal::allows`] about the one [`Permission`]
//! declared next to it (`api::access`). Authentication runs before any handler or cache
//! (API.md difference 1).
//!
//! Secrets are compared in constant time over SHA-256 digests, so neither the content nor the
//! length of the configured secret leaks through timing (API.md difference 7). Repeated
//! failures from one address are slowed down ([`crate::login_throttle`]).

use crate::login_throttle::{LoginThrottle, Verdict};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin from `NEBULA_ADMIN_*`: every permission.
    LocalAdmin,
    /// Authentication is disabled (`NEBULA_AUTH_ENABLED=false`, development only).
    Anonymous,
    /// A stored user, with the union of its groups' permissions when it authenticated.
    User {
        name: String,
        permissions: crate::users::Permissions,
    },
}

/// What a request needs. Object permissions are `ro` for reads and `rw` for writes
/// (`rw` implies `ro`); prunes need `pruning_allowed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission<'a> {
    Status,
    ReadApp(&'a str),
    WriteApp(&'a str),
    ListApps,
    ReadDeviceGroup(&'a str),
    WriteDeviceGroup(&'a str),
    ListDeviceGroups,
    ReadCronJob(&'a str),
    WriteCronJob(&'a str),
    ListCronJobs,
    Prune,
    /// The device inventory (every device's report).
    ListDevices,
    /// The report history (every device's past reports).
    ListReports,
    /// Admin only: users, user groups, devices' credentials, provisioning tokens, the audit
    /// trail.
    Admin,
}

impl Principal {
    pub fn allows(&self, permission: &Permission<'_>) -> bool {
        match self {
            // The local admin and a development instance may do everything; the match
            // stays exhaustive so a new principal must decide for every permission.
            Self::LocalAdmin | Self::Anonymous => {
                let _ = permission;
                true
            }
            Self::User { permissions, .. } => permissions.allows(permission),
        }
    }

    /// Who, for logs and records: `admin`, `anonymous` or `user:<name>`.
    pub fn who(&self) -> String {
        match self {
            Self::LocalAdmin => "admin".to_string(),
            Self::Anonymous => "anonymous".to_string(),
            Self::User { name, .. } => format!("user:{name}"),
        }
    }
}

/// Configured credentials of the local admin.
#[derive(Clone, Default)]
pub struct AdminCredentials {
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminCredentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log secrets.
        formatter
            .debug_struct("AdminCredentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

fn equal(provided: &[u8], expected: &[u8; 32]) -> bool {
    bool::from(digest(provided).ct_eq(expected))
}

/// What became of a request's credentials as far as the local admin goes
/// ([`Authenticator::check_admin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCheck {
    Authenticated(Principal),
    /// No credentials given.
    Missing,
    /// Credentials that are not the admin's: a stored user's, or wrong (not counted yet).
    NotAdmin,
    /// The source is locked out after failed logins: refused without a check.
    Locked {
        retry_after: Duration,
    },
}

/// Stripes of the per-source turns at checking stored users' credentials
/// ([`Authenticator::user_check_turn`]): two sources share one with odds 1 in this.
const TURN_STRIPES: usize = 64;

/// Checks `Authorization` headers against the configuration. Clones share one throttle.
#[derive(Clone)]
pub struct Authenticator {
    enabled: bool,
    basic: Option<(String, [u8; 32])>,
    token: Option<[u8; 32]>,
    throttle: Arc<Mutex<LoginThrottle>>,
    turns: Arc<[tokio::sync::Mutex<()>; TURN_STRIPES]>,
    /// Randomly keyed, so that which addresses share a stripe cannot be foreseen.
    stripe_of: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Authenticator")
            .field("enabled", &self.enabled)
            .field("basic", &self.basic.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl Authenticator {
    pub fn new(enabled: bool, credentials: &AdminCredentials) -> Self {
        let basic = match (&credentials.user, &credentials.password) {
            (Some(user), Some(password)) => Some((user.clone(), digest(password.as_bytes()))),
            _ => None,
        };
        Self {
            enabled,
            basic,
            token: credentials
                .token
                .as_deref()
                .map(|token| digest(token.as_bytes())),
            throttle: Arc::default(),
            turns: Arc::new(std::array::from_fn(|_| tokio::sync::Mutex::new(()))),
            stripe_of: std::collections::hash_map::RandomState::new(),
        }
    }

    /// A source's turn at a stored-user check, held from its lockout check to the count of
    /// its failure: the user check reads the store (and runs argon2) between the two, and
    /// without turns a burst of concurrent guesses from one address would all pass the
    /// lockout check before the first was counted. One address's user logins are checked one
    /// at a time (tens of milliseconds each for a password, about one for a token); `None`
    /// (no source known) takes no turn, as it is not throttled either.
    pub async fn user_check_turn(
        &self,
        source: Option<IpAddr>,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        use std::hash::BuildHasher;
        let source = source.filter(|_| self.enabled)?;
        let stripe = (self.stripe_of.hash_one(crate::login_throttle::key(source))
            % TURN_STRIPES as u64) as usize;
        Some(self.turns[stripe].lock().await)
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        self.throttle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The local admin's check, for a caller that goes on to stored users when the header is
    /// not the admin's: a locked-out source is refused unchecked, and nothing is counted
    /// (the caller counts with [`Self::count_failure`] once the users did not match either).
    pub fn check_admin(&self, source: Option<IpAddr>, authorization: Option<&str>) -> AdminCheck {
        if let Some(retry_after) = self.locked_out(source) {
            return AdminCheck::Locked { retry_after };
        }
        match (self.authenticate(authorization), authorization) {
            (Some(principal), _) => AdminCheck::Authenticated(principal),
            (None, None) => AdminCheck::Missing,
            (None, Some(_)) => AdminCheck::NotAdmin,
        }
    }

    /// For requests that carry another secret than an admin login (a device's provisioning
    /// token): how long `source` is still locked out after failed logins, if it is.
    pub fn locked_out(&self, source: Option<IpAddr>) -> Option<Duration> {
        let source = source.filter(|_| self.enabled)?;
        match self.throttle().check(source, Instant::now()) {
            Verdict::Locked { retry_after } => Some(retry_after),
            Verdict::Proceed => None,
        }
    }

    /// Counts a wrong secret of that kind against `source`, like a failed login; returns its
    /// failures in a row (`None` when not throttled).
    pub fn count_failure(&self, source: Option<IpAddr>) -> Option<u32> {
        let source = source.filter(|_| self.enabled)?;
        Some(self.throttle().failed(source, Instant::now()))
    }

    /// Whether `user` is the configured admin's name: a claimed name is logged only then (a
    /// token or password typed into the user field must not reach the log).
    pub fn is_known_user(&self, user: &str) -> bool {
        self.basic
            .as_ref()
            .is_some_and(|(name, _)| equal(user.as_bytes(), &digest(name.as_bytes())))
    }

    /// The principal for an `Authorization` header value, or `None` when it is missing or wrong.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<Principal> {
        if !self.enabled {
            return Some(Principal::Anonymous);
        }
        match parts(authorization?)? {
            (Scheme::Basic, value) => {
                let (user, expected) = self.basic.as_ref()?;
                let decoded = String::from_utf8(basic_decoded(value)?).ok()?;
                let (given_user, given_password) = decoded.split_once(':')?;
                // Both halves are always compared, so a wrong user name costs the same time.
                let user_ok = equal(given_user.as_bytes(), &digest(user.as_bytes()));
                let password_ok = equal(given_password.as_bytes(), expected);
                (user_ok & password_ok).then_some(Principal::LocalAdmin)
            }
            (Scheme::Bearer, value) => {
                let expected = self.token.as_ref()?;
                equal(value.as_bytes(), expected).then_some(Principal::LocalAdmin)
            }
            (Scheme::Other, _) => None,
        }
    }
}

/// The schemes an `Authorization` header value may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Basic,
    Bearer,
    Other,
}

/// An `Authorization` header value split into its scheme and the (trimmed) rest; `None` when
/// it has no space. The one parse that authentication and the failed-login log share.
fn parts(authorization: &str) -> Option<(Scheme, &str)> {
    let (scheme, value) = authorization.trim().split_once(' ')?;
    let scheme = if scheme.eq_ignore_ascii_case("basic") {
        Scheme::Basic
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else {
        Scheme::Other
    };
    Some((scheme, value.trim()))
}

/// The bytes of `user:password` a Basic value carries, `None` when it is not base64.
fn basic_decoded(value: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(value).ok()
}

/// The secrets an `Authorization` header carries, for the stored users' check.
pub enum Credentials {
    Basic { user: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    // Never the secret.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { user, .. } => write!(formatter, "Basic({user}:<redacted>)"),
            Self::Bearer(_) => formatter.write_str("Bearer(<redacted>)"),
        }
    }
}

/// The credentials in an `Authorization` header value; `None` when it holds none readable.
pub fn credentials(authorization: &str) -> Option<Credentials> {
    match parts(authorization)? {
        (Scheme::Basic, value) => {
            let decoded = String::from_utf8(basic_decoded(value)?).ok()?;
            let (user, password) = decoded.split_once(':')?;
            Some(Credentials::Basic {
                user: user.to_string(),
                password: password.to_string(),
            })
        }
        (Scheme::Bearer, value) if !value.is_empty() => {
            Some(Credentials::Bearer(value.to_string()))
        }
        _ => None,
    }
}

/// The scheme of an `Authorization` header value, for logs: `basic`, `bearer` or `other`.
pub fn scheme(authorization: &str) -> &'static str {
    match parts(authorization) {
        Some((Scheme::Basic, _)) => "basic",
        Some((Scheme::Bearer, _)) => "bearer",
        Some((Scheme::Other, _)) | None => "other",
    }
}

/// The user name a Basic `Authorization` header claims (at most 64 characters), for logs.
/// Never the password; nothing for other schemes.
pub fn claimed_user(authorization: &str) -> Option<String> {
    let (Scheme::Basic, value) = parts(authorization)? else {
        return None;
    };
    let decoded = basic_decoded(value)?;
    let decoded = String::from_utf8_lossy(&decoded);
    let (user, _password) = decoded.split_once(':')?;
    Some(user.chars().take(64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What became of a request's credentials as far as the admin goes (the middleware's
    /// path when no stored user matches either).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Outcome {
        Authenticated(Principal),
        /// No credentials given: not a guess, not counted.
        Missing,
        /// Wrong credentials; the source's failures in a row (`None` when not throttled).
        Wrong {
            failures: Option<u32>,
        },
        /// The source is locked out after failed logins: refused without a check.
        Locked {
            retry_after: Duration,
        },
    }

    /// The middleware's steps for a header no stored user matches: the admin's check, then
    /// the count of a failure.
    fn authenticate_from_admin(
        auth: &Authenticator,
        source: Option<IpAddr>,
        authorization: Option<&str>,
    ) -> Outcome {
        match auth.check_admin(source, authorization) {
            AdminCheck::Authenticated(principal) => Outcome::Authenticated(principal),
            AdminCheck::Missing => Outcome::Missing,
            AdminCheck::Locked { retry_after } => Outcome::Locked { retry_after },
            AdminCheck::NotAdmin => Outcome::Wrong {
                failures: auth.count_failure(source),
            },
        }
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(
            true,
            &AdminCredentials {
                user: Some("nebula".into()),
                password: Some("secret".into()),
                token: Some("tok".into()),
            },
        )
    }

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn accepts_the_admin_by_basic_and_bearer() {
        let auth = authenticator();
        assert_eq!(
            auth.authenticate(Some(&basic("nebula", "secret"))),
            Some(Principal::LocalAdmin)
        );
        assert_eq!(
            auth.authenticate(Some("Bearer tok")),
            Some(Principal::LocalAdmin)
        );
        assert_eq!(
            auth.authenticate(Some("bearer tok")),
            Some(Principal::LocalAdmin)
        );
    }

    #[test]
    fn rejects_everything_else() {
        let auth = authenticator();
        for header in [
            None,
            Some(basic("nebula", "wrong")),
            Some(basic("other", "secret")),
            Some(basic("nebula", "secret2")),
            Some("Bearer tok2".to_string()),
            Some("Bearer".to_string()),
            Some("Basic !!!".to_string()),
            Some("Digest abc".to_string()),
        ] {
            assert_eq!(auth.authenticate(header.as_deref()), None, "{header:?}");
        }
    }

    #[test]
    fn missing_secrets_never_match() {
        let auth = Authenticator::new(true, &AdminCredentials::default());
        assert_eq!(auth.authenticate(Some("Bearer ")), None);
        assert_eq!(auth.authenticate(Some(&basic("", ""))), None);
    }

    #[test]
    fn disabled_lets_anyone_in() {
        let auth = Authenticator::new(false, &AdminCredentials::default());
        assert_eq!(auth.authenticate(None), Some(Principal::Anonymous));
    }

    #[test]
    fn logs_get_the_scheme_and_user_never_the_secret() {
        let header = basic("nebula", "hunter2");
        assert_eq!(scheme(&header), "basic");
        assert_eq!(claimed_user(&header).as_deref(), Some("nebula"));
        assert_eq!(scheme("Bearer tok"), "bearer");
        assert_eq!(claimed_user("Bearer tok"), None);
        assert_eq!(scheme("Digest abc"), "other");
        assert_eq!(claimed_user("Basic !!!"), None);
        let long = basic(&"u".repeat(200), "x");
        assert_eq!(claimed_user(&long).map(|user| user.len()), Some(64));
    }

    #[test]
    fn failures_lock_a_source_out_and_a_disabled_instance_never() {
        let source = Some("192.0.2.7".parse().expect("address"));
        let other = Some("192.0.2.8".parse().expect("address"));
        let auth = authenticator();
        let wrong = basic("nebula", "wrong");
        let right = basic("nebula", "secret");
        // No credentials: not counted.
        for _ in 0..10 {
            assert_eq!(
                authenticate_from_admin(&auth, source, None),
                Outcome::Missing
            );
        }
        for n in 1..=crate::login_throttle::FREE_FAILURES {
            assert_eq!(
                authenticate_from_admin(&auth, source, Some(&wrong)),
                Outcome::Wrong { failures: Some(n) }
            );
        }
        assert_eq!(
            authenticate_from_admin(&auth, source, Some(&right)),
            Outcome::Authenticated(Principal::LocalAdmin)
        );
        // A success does not reset the count; clones (one per request) share the throttle.
        assert_eq!(
            authenticate_from_admin(&auth.clone(), source, Some("Bearer nope")),
            Outcome::Wrong { failures: Some(6) }
        );
        for header in [Some(right.as_str()), Some(wrong.as_str()), None] {
            assert!(
                matches!(
                    authenticate_from_admin(&auth, source, header),
                    Outcome::Locked { .. }
                ),
                "{header:?}"
            );
        }
        assert_eq!(
            authenticate_from_admin(&auth, other, Some(&right)),
            Outcome::Authenticated(Principal::LocalAdmin)
        );
        // Without a source address (no peer known) nothing is throttled.
        assert_eq!(
            authenticate_from_admin(&auth, None, Some(&wrong)),
            Outcome::Wrong { failures: None }
        );

        let disabled = Authenticator::new(false, &AdminCredentials::default());
        for _ in 0..20 {
            assert_eq!(
                authenticate_from_admin(&disabled, source, Some(&wrong)),
                Outcome::Authenticated(Principal::Anonymous)
            );
        }
    }

    #[test]
    fn only_the_configured_user_name_is_known() {
        let auth = authenticator();
        assert!(auth.is_known_user("nebula"));
        assert!(!auth.is_known_user("tok"));
        assert!(!auth.is_known_user(""));
        assert!(!Authenticator::new(true, &AdminCredentials::default()).is_known_user("nebula"));
    }

    #[test]
    fn debug_redacts_secrets() {
        let text = format!(
            "{:?}",
            AdminCredentials {
                user: Some("u".into()),
                password: Some("hunter2".into()),
                token: Some("tok".into())
            }
        );
        assert!(!text.contains("hunter2") && !text.contains("tok\""));
    }
}
