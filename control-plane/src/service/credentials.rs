//! Devices' own broker credentials (issue 16): the record in the store (what the device is
//! entitled to, read by the sync responder) and the user on the broker (what enforces it).
//!
//! Order, so that a broker user never exists without its record (a device user without one
//! is refused by the sync responder, `device_credentials::check_sync`): minting writes the
//! record first, then removes any user the device had (the broker closes its connections:
//! a new scope must not ride on bindings of the old one), then makes the user — and removes it
//! again if that fails half-way; revoking removes the user first, then what it left on the
//! broker, then marks the record revoked. A failure between the steps leaves a record
//! without a user, which grants nothing: the device cannot log in. Mints and revokes of one
//! instance run one at a time; two instances minting or revoking the same device at the same
//! moment can still interleave (an admin's race: mint or revoke again to settle it).

use super::{Service, ServiceError};
use crate::broker::users::{BrokerUsers, UsersError};
use crate::device_credentials::{self, CredentialDocument, Scope};
use crate::error::StoreError;
use crate::store::{Kind, Record, to_record};
use nebula_protocol::{Name, names};

/// What minting and revoking need besides the store: the broker's management API and the
/// URLs devices connect to.
#[derive(Debug)]
pub struct CredentialIssuer {
    pub users: BrokerUsers,
    /// The broker URLs devices get (without credentials), with their own login put in.
    pub device_amqp_urls: Vec<String>,
    /// The public key devices pin (`crate::signing`), handed out with their credential;
    /// `None` when changes are not signed.
    pub signing_key: Option<String>,
    /// One mint or revoke at a time (they are rare): each is several calls to the broker
    /// and the store, which must not interleave with another's for the same device.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl CredentialIssuer {
    pub fn new(
        config: &crate::config::DeviceCredentialsConfig,
        signer: Option<&crate::signing::Signer>,
    ) -> Result<Self, String> {
        let first = config
            .device_amqp_urls
            .first()
            .ok_or("no broker URL for devices")?;
        let vhost = device_credentials::vhost_of(first)?;
        Ok(Self {
            users: BrokerUsers::new(&config.management_url, &vhost)?,
            device_amqp_urls: config.device_amqp_urls.clone(),
            signing_key: signer.map(|signer| signer.public_key().to_string()),
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Broker(#[from] UsersError),
    #[error("cannot make a password: {0}")]
    Random(String),
    #[error("cannot build the device's broker URL: {0}")]
    DeviceUrl(String),
    /// Enrolment only makes a first credential: taking over a device that has one would cut
    /// the device off and hand its identity to whoever holds the token.
    #[error(
        "device {0} already has a credential: an admin revokes it first (DELETE /api/v2/devices/{0}/credentials)"
    )]
    AlreadyHasOne(Name),
}

/// Stored writes of one record race only with another admin's mint or revoke of the same
/// device; a few retries settle it.
const WRITE_ATTEMPTS: usize = 5;

impl Service {
    /// The device's credential record, revoked or not.
    async fn credential_record(&self, device: &Name) -> Result<Option<Record>, ServiceError> {
        self.store
            .get(Kind::DeviceCredential, device.as_str())
            .await
            .map_err(|error| self.store_error(error))
    }

    /// The device's credential on record, if it has one.
    pub async fn credential(
        &self,
        device: &Name,
    ) -> Result<Option<CredentialDocument>, ServiceError> {
        let record = self.credential_record(device).await?;
        match record.filter(|record| !record.tombstone) {
            None => Ok(None),
            Some(record) => serde_json::from_str(&record.body)
                .map(Some)
                .map_err(|error| {
                    ServiceError::Store(StoreError::corrupt(
                        Kind::DeviceCredential,
                        device.as_str(),
                        error,
                    ))
                }),
        }
    }

    /// The device's last credential, revoked or not (a revoked record keeps its scope, so
    /// that a revocation can be repeated to clean up what the device left); `None` without
    /// one, or when the record cannot be read.
    async fn last_credential(
        &self,
        device: &Name,
    ) -> Result<Option<CredentialDocument>, ServiceError> {
        let record = self.credential_record(device).await?;
        Ok(record.and_then(|record| serde_json::from_str(&record.body).ok()))
    }

    /// Writes the device's record, live or revoked (`revoked`; `document` is what it keeps,
    /// `None` for a record that could not be read). Returns whether one was live before.
    async fn put_credential_record(
        &self,
        device: &Name,
        document: Option<&CredentialDocument>,
        revoked: bool,
    ) -> Result<bool, ServiceError> {
        let kind = Kind::DeviceCredential;
        let record = match document {
            Some(document) => to_record(kind, device.as_str(), document, false, revoked),
            None => to_record(
                kind,
                device.as_str(),
                &serde_json::Value::Null,
                false,
                revoked,
            ),
        }
        .map_err(ServiceError::Store)?;
        let mut raced = None;
        for _ in 0..WRITE_ATTEMPTS {
            let current = self.credential_record(device).await?;
            let written = match &current {
                None if revoked => return Ok(false),
                None => self.store.insert(kind, &record).await.map(|()| 0),
                Some(current) => self.store.replace(kind, current.version, &record).await,
            };
            match written {
                Ok(_) => return Ok(current.is_some_and(|current| !current.tombstone)),
                Err(error @ (StoreError::Conflict { .. } | StoreError::AlreadyExists { .. })) => {
                    raced = Some(error);
                }
                Err(error) => return Err(self.store_error(error)),
            }
        }
        Err(ServiceError::Store(raced.unwrap_or(StoreError::Conflict {
            kind: kind.label(),
            name: device.to_string(),
            expected: 0,
        })))
    }
}

/// Mints `device`'s credential for `scope` (replacing one it had: the old password stops
/// working and its open connection is closed) and returns the URL the device connects with
/// (one per broker URL, comma-separated) — the only place its password is ever shown.
pub async fn mint(
    service: &Service,
    issuer: &CredentialIssuer,
    device: &Name,
    scope: Scope,
    created_by: &str,
) -> Result<String, CredentialError> {
    let _one = issuer.one_at_a_time.lock().await;
    mint_locked(service, issuer, device, scope, created_by, None).await
}

/// An enrolment's mint: `created_by` names the token, `enrolment_id_sha256` the device's
/// enrolment id (when it sent one).
#[derive(Debug, Clone, Copy)]
pub struct Enrolment<'a> {
    pub created_by: &'a str,
    pub enrolment_id_sha256: Option<&'a str>,
    /// The caller found a repeat of this enrolment and spent no use for it.
    pub repeat: bool,
}

/// What [`mint_first`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum First {
    /// The device's first credential.
    Minted(String),
    /// The device repeated its own enrolment (same token, same enrolment id): its
    /// credential minted again, for the scope it had.
    Repeated(String, Scope),
    /// A repeat was expected, but the device's credential is gone (revoked meanwhile):
    /// nothing was minted.
    Gone,
}

/// [`mint`], for a device without a live credential (enrolment), or one repeating its own
/// enrolment: checked under the same lock as the mint, so two enrolments of one device cannot
/// both pass.
pub async fn mint_first(
    service: &Service,
    issuer: &CredentialIssuer,
    device: &Name,
    scope: Scope,
    enrolment: Enrolment<'_>,
) -> Result<First, CredentialError> {
    let _one = issuer.one_at_a_time.lock().await;
    match service.credential(device).await? {
        // Expected a repeat (no use was spent for it), but revoked meanwhile: not a repeat
        // any more, the caller enrols it anew (or not).
        None if enrolment.repeat => Ok(First::Gone),
        None => mint_locked(
            service,
            issuer,
            device,
            scope,
            enrolment.created_by,
            enrolment.enrolment_id_sha256,
        )
        .await
        .map(First::Minted),
        Some(live) if is_repeat(&live, enrolment) => {
            let url = mint_locked(
                service,
                issuer,
                device,
                live.scope.clone(),
                enrolment.created_by,
                enrolment.enrolment_id_sha256,
            )
            .await?;
            Ok(First::Repeated(url, live.scope))
        }
        Some(_) => Err(CredentialError::AlreadyHasOne(device.clone())),
    }
}

/// Whether `live` was made by this same enrolment: the same token and enrolment id.
pub fn is_repeat(live: &CredentialDocument, enrolment: Enrolment<'_>) -> bool {
    use subtle::ConstantTimeEq;
    match (&live.enrolment_id_sha256, enrolment.enrolment_id_sha256) {
        (Some(kept), Some(given)) => {
            live.created_by == enrolment.created_by
                && bool::from(kept.as_bytes().ct_eq(given.as_bytes()))
        }
        _ => false,
    }
}

async fn mint_locked(
    service: &Service,
    issuer: &CredentialIssuer,
    device: &Name,
    scope: Scope,
    created_by: &str,
    enrolment_id_sha256: Option<&str>,
) -> Result<String, CredentialError> {
    let password = new_password()?;
    let user = names::device_user(device);
    let urls = issuer
        .device_amqp_urls
        .iter()
        .map(|base| device_credentials::device_url(base, &user, &password))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CredentialError::DeviceUrl)?;
    let grants = device_credentials::grants(device, &scope);
    let previous = service.last_credential(device).await?;
    let document = CredentialDocument {
        device_id: device.clone(),
        scope,
        created_at_ms: now_ms(),
        created_by: created_by.to_string(),
        enrolment_id_sha256: enrolment_id_sha256.map(str::to_string),
    };
    service
        .put_credential_record(device, Some(&document), false)
        .await?;
    issuer.users.remove_device(device).await?;
    // What the device made under its previous scope (or this one) goes with its old user:
    // a queue or exchange named like one of its queues, bound to an exchange the new scope
    // no longer covers, would go on carrying that exchange's changes.
    let mut scopes = vec![&document.scope];
    scopes.extend(previous.as_ref().map(|previous| &previous.scope));
    remove_leftovers(issuer, device, &scopes).await;
    if let Err(error) = issuer.users.put_device(device, &password, &grants).await {
        // Half made (a user without all its permissions): gone again, so that nothing but
        // the record remains, which grants nothing.
        if let Err(cleanup) = issuer.users.remove_device(device).await {
            tracing::error!(device = %device, error = %cleanup, "cannot remove the half-made broker user of a failed mint");
        }
        return Err(error.into());
    }
    Ok(urls.join(","))
}

/// Revokes `device`'s credential: its user is removed from the broker (which closes its open
/// connections), then what it made there (`BrokerUsers::remove_leftovers`), then its record is
/// marked revoked. Returns whether it had one on record.
pub async fn revoke(
    service: &Service,
    issuer: &CredentialIssuer,
    device: &Name,
) -> Result<bool, CredentialError> {
    let _one = issuer.one_at_a_time.lock().await;
    issuer.users.remove_device(device).await?;
    // Revoked before (a revocation repeated to clean up) or live, its last scope says what
    // to clean; a record that cannot be read is marked revoked all the same.
    let last = service.last_credential(device).await?;
    if let Some(last) = &last {
        remove_leftovers(issuer, device, &[&last.scope]).await;
    }
    Ok(service
        .put_credential_record(device, last.as_ref(), true)
        .await?)
}

/// Removes what `device`'s user may have made under `scopes` (`BrokerUsers::remove_leftovers`).
/// The user is gone by then: what it left costs the broker but grants nothing, so a failure
/// is logged, not returned; the next mint or revocation tries again.
async fn remove_leftovers(issuer: &CredentialIssuer, device: &Name, scopes: &[&Scope]) {
    let mut queues = Vec::new();
    let mut exchanges = Vec::new();
    for scope in scopes {
        queues.extend(device_credentials::agent_queues(device, scope));
        exchanges.extend(device_credentials::scope_exchanges(scope));
    }
    queues.sort_unstable();
    queues.dedup();
    exchanges.sort_unstable();
    exchanges.dedup();
    if let Err(error) = issuer.users.remove_leftovers(&queues, &exchanges).await {
        tracing::warn!(device = %device, error = %error, "cannot remove what the device left on the broker; revoke it again to retry");
    }
}

/// 32 random bytes from the operating system, hex: a password only a machine will type.
fn new_password() -> Result<String, CredentialError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| CredentialError::Random(error.to_string()))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
