//! Users and user groups (API.md "Users, user groups, permissions"): their stored documents,
//! how their secrets are kept, and how a user's permissions follow from its groups. No I/O;
//! `service::users` stores them and `auth` asks them.
//!
//! Passwords are kept as argon2id PHC strings (salted, slow on purpose: a stolen store does
//! not give them away). Tokens are kept as their plain SHA-256, which is also the key under
//! which the store finds a token's user (API.md difference 7: looked up by hash, never by
//! trying every user); that is safe for tokens with enough entropy: generated ones are 256
//! random bits, and a client's own must be at least 16 visible characters (`api::users`).

use crate::auth::Permission;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A user as stored and answered: both secrets only as hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDocument {
    pub user_name: String,
    /// argon2id PHC string of the password.
    pub password: String,
    /// Lowercase hex SHA-256 of the token.
    pub token: String,
}

/// Read-only or read-write access to one named object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Ro,
    Rw,
}

impl Access {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "ro" => Some(Self::Ro),
            "rw" => Some(Self::Rw),
            _ => None,
        }
    }

    /// Whether holding `self` satisfies a need of `needed`: `rw` implies `ro` (API.md
    /// difference 2).
    fn covers(self, needed: Self) -> bool {
        self >= needed
    }
}

/// A user group as stored and answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserGroupDocument {
    pub user_group: String,
    #[serde(default)]
    pub group_members: Vec<String>,
    #[serde(default)]
    pub pruning_allowed: bool,
    #[serde(default)]
    pub apps: BTreeMap<String, Access>,
    #[serde(default)]
    pub device_groups: BTreeMap<String, Access>,
    #[serde(default)]
    pub cron_jobs: BTreeMap<String, Access>,
    #[serde(default)]
    pub admin: bool,
}

impl UserGroupDocument {
    pub fn new(name: &str) -> Self {
        Self {
            user_group: name.to_string(),
            group_members: Vec::new(),
            pruning_allowed: false,
            apps: BTreeMap::new(),
            device_groups: BTreeMap::new(),
            cron_jobs: BTreeMap::new(),
            admin: false,
        }
    }
}

/// What a user may do: the union over the groups that list it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub admin: bool,
    pub pruning_allowed: bool,
    pub apps: BTreeMap<String, Access>,
    pub device_groups: BTreeMap<String, Access>,
    pub cron_jobs: BTreeMap<String, Access>,
}

fn merge(into: &mut BTreeMap<String, Access>, from: &BTreeMap<String, Access>) {
    for (name, access) in from {
        let held = into.entry(name.clone()).or_insert(*access);
        *held = (*held).max(*access);
    }
}

fn holds(map: &BTreeMap<String, Access>, name: &str, needed: Access) -> bool {
    map.get(name).is_some_and(|held| held.covers(needed))
}

impl Permissions {
    /// The union of `user`'s permissions over `groups` (those not listing it add nothing).
    pub fn of<'a>(user: &str, groups: impl IntoIterator<Item = &'a UserGroupDocument>) -> Self {
        let mut permissions = Self::default();
        for group in groups
            .into_iter()
            .filter(|group| group.group_members.iter().any(|member| member == user))
        {
            permissions.admin |= group.admin;
            permissions.pruning_allowed |= group.pruning_allowed;
            merge(&mut permissions.apps, &group.apps);
            merge(&mut permissions.device_groups, &group.device_groups);
            merge(&mut permissions.cron_jobs, &group.cron_jobs);
        }
        permissions
    }

    /// Whether these permissions grant `permission`. Admin grants everything; names are
    /// listed to every user (a name is not the object); the inventory, reports, users, user
    /// groups, credentials and the audit trail are admin-only.
    pub fn allows(&self, permission: &Permission<'_>) -> bool {
        if self.admin {
            return true;
        }
        match permission {
            Permission::Status
            | Permission::ListApps
            | Permission::ListDeviceGroups
            | Permission::ListCronJobs => true,
            Permission::ReadApp(name) => holds(&self.apps, name, Access::Ro),
            Permission::WriteApp(name) => holds(&self.apps, name, Access::Rw),
            Permission::ReadDeviceGroup(name) => holds(&self.device_groups, name, Access::Ro),
            Permission::WriteDeviceGroup(name) => holds(&self.device_groups, name, Access::Rw),
            Permission::ReadCronJob(name) => holds(&self.cron_jobs, name, Access::Ro),
            Permission::WriteCronJob(name) => holds(&self.cron_jobs, name, Access::Rw),
            Permission::Prune => self.pruning_allowed,
            Permission::ListDevices | Permission::ListReports | Permission::Admin => false,
        }
    }
}

/// A new random secret (a generated password or token): 256 bits, hex.
pub fn generate_secret() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| error.to_string())?;
    Ok(crate::provisioning::hex(&bytes))
}

/// The stored form of a token, and its lookup key: the same hex SHA-256 as a provisioning
/// token's secret.
pub fn token_digest(token: &str) -> String {
    crate::provisioning::secret_digest(token)
}

/// The stored form of a password: argon2id with a fresh salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|error| error.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|error| error.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| error.to_string())
}

/// Whether `password` matches the stored `hash` (false for a hash that does not parse).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// Spends the time of one password check for a user that does not exist, so that a wrong
/// user name costs what a wrong password does.
pub fn verify_nothing(password: &str) {
    static DUMMY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(hash) = DUMMY.get_or_init(|| hash_password("nebula-no-such-user").ok()) {
        let _ = verify_password(password, hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, members: &[&str]) -> UserGroupDocument {
        let mut group = UserGroupDocument::new(name);
        group.group_members = members.iter().map(ToString::to_string).collect();
        group
    }

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let hash = hash_password("hunter2").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("hunter2", &hash));
        assert!(!verify_password("hunter3", &hash));
        assert!(!verify_password("hunter2", "not a hash"));
        // Salted: the same password hashes differently each time.
        assert_ne!(hash, hash_password("hunter2").expect("hash"));
    }

    #[test]
    fn tokens_are_kept_as_their_sha256() {
        assert_eq!(
            token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let secret = generate_secret().expect("random");
        assert_eq!(secret.len(), 64);
        assert_ne!(secret, generate_secret().expect("random"));
    }

    #[test]
    fn permissions_are_the_union_over_the_users_groups_and_rw_implies_ro() {
        let mut readers = group("readers", &["ann", "bob"]);
        readers.apps.insert("web".into(), Access::Ro);
        readers.device_groups.insert("pos".into(), Access::Rw);
        let mut writers = group("writers", &["ann"]);
        writers.apps.insert("web".into(), Access::Rw);
        writers.cron_jobs.insert("backup".into(), Access::Ro);
        writers.pruning_allowed = true;
        let mut admins = group("admins", &["carl"]);
        admins.admin = true;
        let groups = [readers, writers, admins];

        let ann = Permissions::of("ann", &groups);
        assert!(ann.allows(&Permission::WriteApp("web")));
        assert!(ann.allows(&Permission::ReadApp("web")));
        assert!(ann.allows(&Permission::ReadDeviceGroup("pos")));
        assert!(ann.allows(&Permission::ReadCronJob("backup")));
        assert!(!ann.allows(&Permission::WriteCronJob("backup")));
        assert!(ann.allows(&Permission::Prune));
        assert!(!ann.allows(&Permission::Admin));
        assert!(!ann.allows(&Permission::ReadApp("other")));

        let bob = Permissions::of("bob", &groups);
        assert!(bob.allows(&Permission::ReadApp("web")));
        assert!(!bob.allows(&Permission::WriteApp("web")));
        assert!(bob.allows(&Permission::WriteDeviceGroup("pos")));
        assert!(!bob.allows(&Permission::Prune));
        assert!(bob.allows(&Permission::ListApps));
        assert!(!bob.allows(&Permission::ListReports));

        let carl = Permissions::of("carl", &groups);
        assert!(carl.allows(&Permission::Admin));
        assert!(carl.allows(&Permission::WriteCronJob("anything")));

        let nobody = Permissions::of("dave", &groups);
        assert_eq!(nobody, Permissions::default());
        assert!(nobody.allows(&Permission::Status));
        assert!(!nobody.allows(&Permission::ReadApp("web")));
    }
}
