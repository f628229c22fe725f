//! Users, user groups and the token index in the store, and the authentication of a stored
//! user (`crate::users` has the documents and the permission rules).
//!
//! A token is found through its own record, keyed by the token's SHA-256 and naming its
//! user; the user's document holds the same digest, and only an index record that its user
//! still confirms counts. So the index is written before the user (a crash in between leaves
//! an index record nobody confirms, harmless) and cleared after it, and no write needs to
//! span two records atomically.

use super::{Service, ServiceError, conflict};
use crate::auth::{self, Principal};
use crate::error::StoreError;
use crate::store::{Kind, Record, to_record};
use crate::users::{self, Permissions, UserDocument, UserGroupDocument};
use nebula_protocol::Name;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Compare-and-swap writes of one user or group race only with writes to the same one; a
/// few retries settle them.
const WRITE_ATTEMPTS: usize = 8;

/// The token index's record: which user a token digest belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TokenIndex {
    user_name: String,
}

/// A change of a user's secrets; `None` keeps the current one.
#[derive(Clone, Default)]
pub struct Secrets {
    pub password: Option<String>,
    pub token: Option<String>,
}

impl std::fmt::Debug for Secrets {
    // Never the secrets.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Secrets")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Service {
    fn parse_document<T: DeserializeOwned>(kind: Kind, record: &Record) -> Result<T, ServiceError> {
        serde_json::from_str(&record.body)
            .map_err(|error| ServiceError::Store(StoreError::corrupt(kind, &record.name, error)))
    }

    /// The live record of `name` and its document.
    async fn live<T: DeserializeOwned>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<(Record, T)>, ServiceError> {
        let record = self
            .store
            .get(kind, name)
            .await
            .map_err(|error| self.store_error(error))?;
        match record.filter(|record| !record.tombstone) {
            Some(record) => {
                let document = Self::parse_document(kind, &record)?;
                Ok(Some((record, document)))
            }
            None => Ok(None),
        }
    }

    /// Stores `document` as `name` unless a live one is there (then `false`); a tombstone is
    /// written over, continuing its versions.
    async fn put_new<T: Serialize>(
        &self,
        kind: Kind,
        name: &str,
        document: &T,
    ) -> Result<bool, ServiceError> {
        let record = to_record(kind, name, document, false, false).map_err(ServiceError::Store)?;
        for _ in 0..WRITE_ATTEMPTS {
            let current = self
                .store
                .get(kind, name)
                .await
                .map_err(|error| self.store_error(error))?;
            let outcome = match current {
                Some(current) if !current.tombstone => return Ok(false),
                Some(current) => self
                    .store
                    .replace(kind, current.version, &record)
                    .await
                    .map(|_| ()),
                None => self.store.insert(kind, &record).await,
            };
            match outcome {
                Ok(()) => return Ok(true),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => {}
                Err(error) => return Err(self.store_error(error)),
            }
        }
        Err(conflict(kind, name))
    }

    /// Replaces `current` with `document`, or with a tombstone for `None`; `false` when the
    /// record changed since it was read.
    async fn swap<T: Serialize>(
        &self,
        kind: Kind,
        current: &Record,
        document: Option<&T>,
    ) -> Result<bool, ServiceError> {
        let record = match document {
            Some(document) => to_record(kind, &current.name, document, false, false),
            None => Ok(Record {
                tombstone: true,
                ..current.clone()
            }),
        }
        .map_err(ServiceError::Store)?;
        match self.store.replace(kind, current.version, &record).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => Ok(false),
            Err(error) => Err(self.store_error(error)),
        }
    }

    /// Points the token `digest` at `user`; answers the user whose record it took over, if
    /// any. A live index record is taken over only when its own user does not hold that
    /// digest (left by a crash or a change, or a create still under way: the caller checks
    /// that user again once its own user is written, see [`Self::lost_token`]); otherwise
    /// the token belongs to someone else: `TokenTaken`. A record already naming `user` is
    /// written again, so that an unindex that read it before cannot remove it after.
    async fn index_token(&self, digest: &str, user: &str) -> Result<Option<String>, ServiceError> {
        let index = TokenIndex {
            user_name: user.to_string(),
        };
        for _ in 0..WRITE_ATTEMPTS {
            if self.put_new(Kind::UserToken, digest, &index).await? {
                return Ok(None);
            }
            let Some((record, held)) = self.live::<TokenIndex>(Kind::UserToken, digest).await?
            else {
                continue;
            };
            if held.user_name == user {
                if self.swap(Kind::UserToken, &record, Some(&index)).await? {
                    return Ok(None);
                }
                continue;
            }
            if self
                .confirmed_user(digest, &held.user_name)
                .await?
                .is_some()
            {
                return Err(ServiceError::TokenTaken);
            }
            if self.swap(Kind::UserToken, &record, Some(&index)).await? {
                return Ok(Some(held.user_name));
            }
        }
        Err(conflict(Kind::UserToken, digest))
    }

    /// Whether `user`, now written with the token `digest`, lost it: the index no longer
    /// names it (another user's create took it over meanwhile), or the user whose index
    /// record it took over (`displaced`) turned out to hold the digest after all (that user's
    /// create was under way). Either way the other side keeps the token. The store is
    /// linearizable per record, so two racing creates never both keep it: at worst both lose.
    async fn lost_token(
        &self,
        digest: &str,
        user: &str,
        displaced: Option<&str>,
    ) -> Result<bool, ServiceError> {
        if !self.token_names(digest, user).await? {
            return Ok(true);
        }
        match displaced {
            Some(other) => Ok(self.confirmed_user(digest, other).await?.is_some()),
            None => Ok(false),
        }
    }

    /// Drops the index record of `digest` if it still names `user` and that user does not
    /// hold the token (again: a concurrent create or change of that user may have made it
    /// theirs). Best effort: a record left behind is one its user no longer confirms.
    async fn unindex_token(&self, digest: &str, user: &str) {
        let outcome = async {
            if let Some((record, held)) = self.live::<TokenIndex>(Kind::UserToken, digest).await?
                && held.user_name == user
                && self.confirmed_user(digest, user).await?.is_none()
            {
                self.swap::<TokenIndex>(Kind::UserToken, &record, None)
                    .await?;
            }
            Ok::<_, ServiceError>(())
        }
        .await;
        if let Err(error) = outcome {
            tracing::warn!(error = %error, user, "old token index record left (no longer confirmed by its user)");
        }
    }

    /// Whether the index record of `digest` names `user`.
    async fn token_names(&self, digest: &str, user: &str) -> Result<bool, ServiceError> {
        Ok(self
            .live::<TokenIndex>(Kind::UserToken, digest)
            .await?
            .is_some_and(|(_, index)| index.user_name == user))
    }

    /// Puts `previous` back on a user whose change to `changed` lost its token to another
    /// user (only if nothing changed the user since; said in the log otherwise).
    async fn undo_user_change(
        &self,
        name: &Name,
        changed: &UserDocument,
        previous: &UserDocument,
    ) -> Result<(), ServiceError> {
        let undone = match self.live::<UserDocument>(Kind::User, name.as_str()).await? {
            Some((record, now)) if now == *changed => {
                self.swap(Kind::User, &record, Some(previous)).await?
            }
            _ => false,
        };
        if !undone {
            tracing::warn!(user = %name, "a change whose token was taken could not be undone: the user changed meanwhile");
        }
        Ok(())
    }

    /// The user `name` if it exists and holds the token `digest`.
    async fn confirmed_user(
        &self,
        digest: &str,
        name: &str,
    ) -> Result<Option<UserDocument>, ServiceError> {
        Ok(self
            .live::<UserDocument>(Kind::User, name)
            .await?
            .map(|(_, user)| user)
            .filter(|user| user.token == digest))
    }

    /// Creates a user; a missing password or token is generated (and not answered: the
    /// admin sets one later, or refreshes the token). Answers the stored document.
    pub async fn create_user(
        &self,
        name: &Name,
        secrets: Secrets,
    ) -> Result<UserDocument, ServiceError> {
        if self.get_user(name).await?.is_some() {
            return Err(ServiceError::UserExists(name.clone()));
        }
        let password = secret_or_generated(secrets.password)?;
        let token = secret_or_generated(secrets.token)?;
        let document = UserDocument {
            user_name: name.to_string(),
            password: hash(password).await?,
            token: users::token_digest(&token),
        };
        let displaced = self.index_token(&document.token, name.as_str()).await?;
        if self.put_new(Kind::User, name.as_str(), &document).await? {
            if self
                .lost_token(&document.token, name.as_str(), displaced.as_deref())
                .await?
            {
                // Ours is undone: only the user we wrote, if nothing changed it since.
                if let Some((record, now)) =
                    self.live::<UserDocument>(Kind::User, name.as_str()).await?
                    && now == document
                    && !self.swap::<UserDocument>(Kind::User, &record, None).await?
                {
                    tracing::warn!(user = %name, "a user whose token was taken changed meanwhile: left as it is");
                }
                self.unindex_token(&document.token, name.as_str()).await;
                return Err(ServiceError::TokenTaken);
            }
            Ok(document)
        } else {
            // Created meanwhile by another request: its token index stays, ours goes.
            self.unindex_token(&document.token, name.as_str()).await;
            Err(ServiceError::UserExists(name.clone()))
        }
    }

    pub async fn get_user(&self, name: &Name) -> Result<Option<UserDocument>, ServiceError> {
        Ok(self
            .live::<UserDocument>(Kind::User, name.as_str())
            .await?
            .map(|(_, user)| user))
    }

    pub async fn list_users(&self) -> Result<Vec<String>, ServiceError> {
        self.live_names(Kind::User).await
    }

    /// Changes a user's password and/or token; answers the stored document.
    pub async fn update_user(
        &self,
        name: &Name,
        secrets: Secrets,
    ) -> Result<UserDocument, ServiceError> {
        let password = match secrets.password {
            Some(password) => Some(hash(password).await?),
            None => None,
        };
        let token = secrets.token.as_deref().map(users::token_digest);
        for _ in 0..WRITE_ATTEMPTS {
            let Some((record, current)) =
                self.live::<UserDocument>(Kind::User, name.as_str()).await?
            else {
                return Err(ServiceError::UserNotFound(name.clone()));
            };
            let updated = UserDocument {
                user_name: current.user_name.clone(),
                password: password.clone().unwrap_or_else(|| current.password.clone()),
                token: token.clone().unwrap_or_else(|| current.token.clone()),
            };
            let displaced = if updated.token != current.token {
                self.index_token(&updated.token, name.as_str()).await?
            } else {
                None
            };
            if self.swap(Kind::User, &record, Some(&updated)).await? {
                if updated.token != current.token {
                    if self
                        .lost_token(&updated.token, name.as_str(), displaced.as_deref())
                        .await?
                    {
                        // Lost to another user's create meanwhile: the change is undone
                        // whole, so that a refused request changed nothing.
                        self.undo_user_change(name, &updated, &current).await?;
                        self.unindex_token(&updated.token, name.as_str()).await;
                        return Err(ServiceError::TokenTaken);
                    }
                    self.unindex_token(&current.token, name.as_str()).await;
                }
                return Ok(updated);
            }
        }
        Err(conflict(Kind::User, name.as_str()))
    }

    /// A new generated token for a user, answered in clear this once.
    pub async fn refresh_user_token(&self, name: &Name) -> Result<String, ServiceError> {
        let token = users::generate_secret().map_err(ServiceError::Secret)?;
        self.update_user(
            name,
            Secrets {
                password: None,
                token: Some(token.clone()),
            },
        )
        .await?;
        Ok(token)
    }

    /// Deletes a user, its token, and its membership in every user group (a user created
    /// later under the same name starts with no permissions).
    pub async fn delete_user(&self, name: &Name) -> Result<(), ServiceError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some((record, current)) =
                self.live::<UserDocument>(Kind::User, name.as_str()).await?
            else {
                return Err(ServiceError::UserNotFound(name.clone()));
            };
            // Out of its groups first: a user made later under this name must not find the
            // memberships, and a delete that fails here can be retried while the user exists.
            self.leave_user_groups(name).await?;
            if self.swap::<UserDocument>(Kind::User, &record, None).await? {
                self.unindex_token(&current.token, name.as_str()).await;
                // Once more: a group update may have listed it again in between.
                self.leave_user_groups(name).await?;
                return Ok(());
            }
        }
        Err(conflict(Kind::User, name.as_str()))
    }

    /// Removes `user` from every user group that lists it (the others are not written).
    async fn leave_user_groups(&self, user: &Name) -> Result<(), ServiceError> {
        for group in self.list_user_groups().await? {
            let Some((_, document)) = self
                .live::<UserGroupDocument>(Kind::UserGroup, &group)
                .await?
            else {
                continue;
            };
            if !document
                .group_members
                .iter()
                .any(|member| member == user.as_str())
            {
                continue;
            }
            let group = Name::new(&group).map_err(|error| {
                ServiceError::Store(StoreError::corrupt(Kind::UserGroup, &group, error))
            })?;
            let outcome = self
                .update_user_group(&group, |document| {
                    document
                        .group_members
                        .retain(|member| member != user.as_str());
                })
                .await;
            match outcome {
                Ok(_) | Err(ServiceError::UserGroupNotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    pub async fn create_user_group(
        &self,
        document: &UserGroupDocument,
    ) -> Result<(), ServiceError> {
        if self
            .put_new(Kind::UserGroup, &document.user_group, document)
            .await?
        {
            Ok(())
        } else {
            let name = Name::new(&document.user_group).map_err(|error| {
                ServiceError::Store(StoreError::corrupt(
                    Kind::UserGroup,
                    &document.user_group,
                    error,
                ))
            })?;
            Err(ServiceError::UserGroupExists(name))
        }
    }

    pub async fn get_user_group(
        &self,
        name: &Name,
    ) -> Result<Option<UserGroupDocument>, ServiceError> {
        Ok(self
            .live::<UserGroupDocument>(Kind::UserGroup, name.as_str())
            .await?
            .map(|(_, group)| group))
    }

    pub async fn list_user_groups(&self) -> Result<Vec<String>, ServiceError> {
        self.live_names(Kind::UserGroup).await
    }

    /// Applies `change` to a user group (compare-and-swap, retried); answers the result.
    pub async fn update_user_group(
        &self,
        name: &Name,
        change: impl Fn(&mut UserGroupDocument),
    ) -> Result<UserGroupDocument, ServiceError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some((record, mut group)) = self
                .live::<UserGroupDocument>(Kind::UserGroup, name.as_str())
                .await?
            else {
                return Err(ServiceError::UserGroupNotFound(name.clone()));
            };
            change(&mut group);
            group.user_group = name.to_string();
            if self.swap(Kind::UserGroup, &record, Some(&group)).await? {
                return Ok(group);
            }
        }
        Err(conflict(Kind::UserGroup, name.as_str()))
    }

    pub async fn delete_user_group(&self, name: &Name) -> Result<(), ServiceError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some((record, _)) = self
                .live::<UserGroupDocument>(Kind::UserGroup, name.as_str())
                .await?
            else {
                return Err(ServiceError::UserGroupNotFound(name.clone()));
            };
            if self
                .swap::<UserGroupDocument>(Kind::UserGroup, &record, None)
                .await?
            {
                return Ok(());
            }
        }
        Err(conflict(Kind::UserGroup, name.as_str()))
    }

    /// The permissions of user `name`: the union over the groups listing it. A corrupt group
    /// grants nothing (logged), rather than locking every user out.
    async fn permissions_of(&self, name: &str) -> Result<Permissions, ServiceError> {
        let records = self
            .store
            .list(Kind::UserGroup)
            .await
            .map_err(|error| self.store_error(error))?;
        let groups: Vec<UserGroupDocument> = records
            .iter()
            .filter(|record| !record.tombstone)
            .filter_map(
                |record| match Self::parse_document(Kind::UserGroup, record) {
                    Ok(group) => Some(group),
                    Err(error) => {
                        tracing::error!(error = %error, "user group unreadable: it grants nothing");
                        None
                    }
                },
            )
            .collect();
        Ok(Permissions::of(name, &groups))
    }

    /// The stored user an `Authorization` header authenticates, with its permissions;
    /// `None` when it names none (missing, malformed, unknown user, wrong secret).
    pub async fn authenticate_user(
        &self,
        authorization: &str,
    ) -> Result<Option<Principal>, ServiceError> {
        let user = match auth::credentials(authorization) {
            Some(auth::Credentials::Bearer(token)) => {
                let digest = users::token_digest(&token);
                match self.live::<TokenIndex>(Kind::UserToken, &digest).await? {
                    Some((_, index)) => self.confirmed_user(&digest, &index.user_name).await?,
                    None => None,
                }
            }
            Some(auth::Credentials::Basic { user, password }) => {
                let document = match Name::new(&user) {
                    Ok(name) => self.get_user(&name).await?,
                    Err(_) => None,
                };
                let hash = document.as_ref().map(|user| user.password.clone());
                // A missing user costs one password check too.
                // The caller holds a `password_check_slot` (the middleware takes it).
                let verified = tokio::task::spawn_blocking(move || match hash {
                    Some(hash) => users::verify_password(&password, &hash),
                    None => {
                        users::verify_nothing(&password);
                        false
                    }
                })
                .await
                .unwrap_or(false);
                document.filter(|_| verified)
            }
            None => None,
        };
        match user {
            Some(user) => Ok(Some(Principal::User {
                permissions: self.permissions_of(&user.user_name).await?,
                name: user.user_name,
            })),
            None => Ok(None),
        }
    }

    /// For an `Authorization` header whose check runs argon2 (Basic): one of the few slots
    /// for it ([`argon2_turn`]), to hold while [`Self::authenticate_user`] checks it. The
    /// middleware takes it before the source's turn (`auth::Authenticator::user_check_turn`),
    /// so a flood of password guesses holds at most that many turns, and token logins of
    /// other addresses never queue behind the hashing.
    pub async fn password_check_slot(
        &self,
        authorization: &str,
    ) -> Option<tokio::sync::SemaphorePermit<'static>> {
        match auth::credentials(authorization) {
            Some(auth::Credentials::Basic { .. }) => Some(argon2_turn().await),
            _ => None,
        }
    }

    /// Whether `name` is a stored user (a claimed name is logged only then).
    pub async fn is_user(&self, name: &str) -> bool {
        match Name::new(name) {
            Ok(name) => matches!(self.get_user(&name).await, Ok(Some(_))),
            Err(_) => false,
        }
    }
}

fn secret_or_generated(given: Option<String>) -> Result<String, ServiceError> {
    match given {
        Some(secret) => Ok(secret),
        None => users::generate_secret().map_err(ServiceError::Secret),
    }
}

/// A turn at argon2, which takes about 19 MiB and tens of milliseconds per check on
/// purpose: at most [`ARGON2_AT_ONCE`] run at once, so that a flood of Basic logins (valid
/// or not: an unknown user costs a check too) queues instead of taking the blocking pool's
/// hundreds of threads and gigabytes of memory.
pub async fn argon2_turn() -> tokio::sync::SemaphorePermit<'static> {
    static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(ARGON2_AT_ONCE);
    TURNS
        .acquire()
        .await
        .expect("the semaphore is static and never closed")
}

const ARGON2_AT_ONCE: usize = 4;

/// argon2 off the async workers: it is slow on purpose.
async fn hash(password: String) -> Result<String, ServiceError> {
    let _turn = argon2_turn().await;
    tokio::task::spawn_blocking(move || users::hash_password(&password))
        .await
        .map_err(|error| ServiceError::Secret(error.to_string()))?
        .map_err(ServiceError::Secret)
}
