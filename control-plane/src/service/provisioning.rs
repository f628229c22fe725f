//! Provisioning tokens in the store, and enrolment: a device exchanges a token for its own
//! broker credential (`crate::provisioning` has the token's rules).
//!
//! Enrolment takes one use of the token before minting (a compare-and-swap on the record, so
//! concurrent enrolments cannot overspend it) and gives it back when the mint fails, so a
//! broker hiccup or a device that already has a credential costs no use.

use super::credentials::{self, CredentialError, CredentialIssuer, Enrolment, First, now_ms};
use super::{Service, ServiceError, conflict};
use crate::device_credentials::Scope;
use crate::error::StoreError;
use crate::provisioning::{self, NewToken, Refusal, TokenDocument};
use crate::store::{Kind, Record, to_record};
use nebula_protocol::Name;

const KIND: Kind = Kind::ProvisioningToken;
/// A use is taken or given back by compare-and-swap; only concurrent enrolments with one
/// token race, and a few retries settle them.
const WRITE_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("provisioning token refused: {0:?}")]
    Refused(Refusal),
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

impl From<ServiceError> for EnrolError {
    fn from(error: ServiceError) -> Self {
        Self::Credential(CredentialError::Service(error))
    }
}

/// A device's enrolment: its broker URL with its own login, and what it follows.
pub struct Enrolled {
    pub amqp_url: String,
    pub scope: Scope,
}

impl std::fmt::Debug for Enrolled {
    // The URL holds the device's password.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Enrolled")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Service {
    async fn token_record(&self, token_id: &str) -> Result<Option<Record>, ServiceError> {
        let record = self
            .store
            .get(KIND, token_id)
            .await
            .map_err(|error| self.store_error(error))?;
        Ok(record.filter(|record| !record.tombstone))
    }

    fn token_document(record: &Record) -> Result<TokenDocument, ServiceError> {
        serde_json::from_str(&record.body)
            .map_err(|error| ServiceError::Store(StoreError::corrupt(KIND, &record.name, error)))
    }

    /// Makes a token for `scope`; the answer's `NewToken` is the only copy of its secret.
    pub async fn create_token(
        &self,
        scope: Scope,
        expires_in_secs: u64,
        uses: u64,
        created_by: &str,
    ) -> Result<(NewToken, TokenDocument), CredentialError> {
        let token = NewToken::generate().map_err(CredentialError::Random)?;
        let now = now_ms();
        let document = TokenDocument {
            token_id: token.token_id.clone(),
            secret_sha256: provisioning::secret_digest(&token.secret),
            scope,
            expires_at_ms: now.saturating_add(expires_in_secs.saturating_mul(1000)),
            uses,
            uses_left: uses,
            created_at_ms: now,
            created_by: created_by.to_string(),
        };
        let record = to_record(KIND, &token.token_id, &document, false, false)
            .map_err(ServiceError::Store)?;
        self.store
            .insert(KIND, &record)
            .await
            .map_err(|error| self.store_error(error))?;
        Ok((token, document))
    }

    /// Every token not deleted, expired and used-up ones included (an admin sees what is
    /// left to clean), oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenDocument>, ServiceError> {
        let records = self
            .store
            .list(KIND)
            .await
            .map_err(|error| self.store_error(error))?;
        let mut documents = records
            .iter()
            .filter(|record| !record.tombstone)
            .map(Self::token_document)
            .collect::<Result<Vec<_>, _>>()?;
        documents
            .sort_by(|a, b| (a.created_at_ms, &a.token_id).cmp(&(b.created_at_ms, &b.token_id)));
        Ok(documents)
    }

    /// Deletes a token (devices it enrolled keep their credentials). Returns whether it existed.
    pub async fn delete_token(&self, token_id: &Name) -> Result<bool, ServiceError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some(current) = self.token_record(token_id.as_str()).await? else {
                return Ok(false);
            };
            let mut gone = current.clone();
            gone.tombstone = true;
            match self.store.replace(KIND, current.version, &gone).await {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => {}
                Err(error) => return Err(self.store_error(error)),
            }
        }
        Err(conflict(KIND, token_id.as_str()))
    }

    /// The token `token_id`, unless unknown or deleted.
    async fn token(&self, token_id: &str) -> Result<Option<TokenDocument>, ServiceError> {
        self.token_record(token_id)
            .await?
            .map(|record| Self::token_document(&record))
            .transpose()
    }

    /// Takes one use of the token `token_id` if `secret` is its own and it admits one more
    /// device now; returns its document as it was.
    async fn take_use(&self, token_id: &str, secret: &str) -> Result<TokenDocument, EnrolError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some(record) = self.token_record(token_id).await? else {
                return Err(EnrolError::Refused(Refusal::Wrong));
            };
            let document = Self::token_document(&record)?;
            document
                .admits(secret, now_ms())
                .map_err(EnrolError::Refused)?;
            let spent = TokenDocument {
                uses_left: document.uses_left - 1,
                ..document.clone()
            };
            if self.swap_token(&record, &spent).await? {
                return Ok(document);
            }
        }
        Err(conflict(KIND, token_id).into())
    }

    /// Gives back a use taken by [`Self::take_use`] whose enrolment failed.
    async fn give_back_use(&self, token_id: &str) {
        for _ in 0..WRITE_ATTEMPTS {
            let outcome = async {
                let Some(record) = self.token_record(token_id).await? else {
                    return Ok(true);
                };
                let mut document = Self::token_document(&record)?;
                document.uses_left = (document.uses_left + 1).min(document.uses);
                self.swap_token(&record, &document).await
            }
            .await;
            match outcome {
                Ok(true) => return,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(token_id, error = %error, "cannot give back the use of a failed enrolment");
                    return;
                }
            }
        }
    }

    /// Replaces `record` with `document` unless another write came first (`false`).
    async fn swap_token(
        &self,
        record: &Record,
        document: &TokenDocument,
    ) -> Result<bool, ServiceError> {
        let replacement =
            to_record(KIND, &record.name, document, false, false).map_err(ServiceError::Store)?;
        match self.store.replace(KIND, record.version, &replacement).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(error) => Err(self.store_error(error)),
        }
    }
}

/// Enrols `device` with the provisioning token `token`: its first credential, for the token's
/// scope. With `enrolment_id` (the device's own random id, kept across its retries), a device
/// whose credential this same enrolment made gets it minted again instead of a 409 (the answer
/// was lost, or the mint failed half-way), without spending another use.
pub async fn enrol(
    service: &Service,
    issuer: &CredentialIssuer,
    device: &Name,
    token: &str,
    enrolment_id: Option<&str>,
) -> Result<Enrolled, EnrolError> {
    let (token_id, secret) =
        provisioning::split(token).ok_or(EnrolError::Refused(Refusal::Wrong))?;
    let created_by = format!("provisioning token {token_id}");
    let digest = enrolment_id.map(provisioning::secret_digest);
    let mut enrolment = Enrolment {
        created_by: &created_by,
        enrolment_id_sha256: digest.as_deref(),
        repeat: false,
    };
    enrolment.repeat = service
        .credential(device)
        .await?
        .is_some_and(|live| credentials::is_repeat(&live, enrolment));
    if enrolment.repeat {
        // The token must still be the right one (and not deleted); expired or used up
        // since, it still repeats what it already granted, for no use.
        let scope = match service.token(token_id).await? {
            Some(document) if document.is_secret(secret) => document.scope,
            _ => return Err(EnrolError::Refused(Refusal::Wrong)),
        };
        match credentials::mint_first(service, issuer, device, scope.clone(), enrolment).await? {
            // (`Minted` is never the answer to an expected repeat.)
            First::Minted(amqp_url) => return Ok(Enrolled { amqp_url, scope }),
            First::Repeated(amqp_url, scope) => return Ok(Enrolled { amqp_url, scope }),
            // Revoked meanwhile: enrolled anew below, spending a use like any enrolment.
            First::Gone => enrolment.repeat = false,
        }
    }
    let scope = service.take_use(token_id, secret).await?.scope;
    let minted = credentials::mint_first(service, issuer, device, scope.clone(), enrolment).await;
    match minted {
        Ok(First::Minted(amqp_url)) => Ok(Enrolled { amqp_url, scope }),
        Ok(First::Repeated(amqp_url, scope)) => {
            // It became a repeat meanwhile (two attempts of the device at once): one use.
            service.give_back_use(token_id).await;
            Ok(Enrolled { amqp_url, scope })
        }
        Ok(First::Gone) => unreachable!("mint_first answers Gone only to an expected repeat"),
        Err(error) => {
            service.give_back_use(token_id).await;
            Err(error.into())
        }
    }
}
