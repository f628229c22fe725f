//! What the generic write path needs to know about a kind of object: how it is named,
//! versioned and stored ([`Resource`]), and what the broker must hear when it changes or goes
//! away ([`Lifecycle`]). Adding a kind is an implementation of both and its routes (STYLE
//! §13); the write path itself ([`super::write`]) is written once.

use super::{Service, ServiceError, Stored};
use crate::error::StoreError;
use crate::store::{AppDocument, CronJobDocument, GroupDocument, Kind};
use async_trait::async_trait;
use nebula_protocol::{AppConfig, CronJob, DeviceGroup, Incarnation, Name, ObjectVersion};

/// A kind of object the store holds and the broker publishes.
pub(crate) trait Resource:
    Clone + PartialEq + Send + Sync + std::fmt::Debug + 'static
{
    const KIND: Kind;

    fn name(&self) -> &Name;

    /// (incarnation, revision).
    fn version(&self) -> ObjectVersion;

    /// Makes this the first revision of a new incarnation (a create).
    fn created(&mut self, incarnation: Incarnation);

    /// Makes this the successor of `previous`: same name and incarnation, and, with
    /// `revise`, the next revision. Without it (a prune request) the revision stays.
    fn follows(&mut self, previous: &Self, revise: bool);

    /// The objects this one is linked to at the broker (a group's member apps, whose
    /// exchanges are bound to its exchange). Empty for kinds without links.
    fn links(&self) -> Vec<Name> {
        Vec::new()
    }

    /// The stored body: the document, and the links that may still exist at the broker
    /// although the document no longer lists them (see [`GroupDocument::unbind`]).
    fn to_body(&self, detach: &[Name]) -> Result<String, StoreError>;

    /// Parses a stored body back; a body that does not parse is [`StoreError::Corrupt`].
    fn from_body(name: &str, body: &str) -> Result<(Self, Vec<Name>), StoreError>;

    fn not_found(name: Name) -> ServiceError;

    fn exists(name: Name) -> ServiceError;
}

/// The broker side of a kind's lifecycle, run by the write path after the store write.
#[async_trait]
pub(crate) trait Lifecycle: Resource {
    /// This kind's write queues.
    fn writes(service: &Service) -> &super::write::Writes<Self>;

    /// The exchange of the object called `name`; `None` for a kind published through other
    /// objects' exchanges (a cron job, through its groups').
    fn exchange(name: &Name) -> Option<String>;

    /// Checks a new or changed document against the rest of the store before it is written
    /// (a group's members must exist). `previous` is `None` on create.
    async fn check(
        _service: &Service,
        _previous: Option<&Self>,
        _next: &Self,
    ) -> Result<(), ServiceError> {
        Ok(())
    }

    /// Brings the broker in step with `stored` (topology) and publishes its full state with
    /// a confirm. Idempotent: the outbox runs it again for a write whose publish was never
    /// confirmed.
    async fn publish(service: &Service, stored: &Stored<Self>) -> Result<(), ServiceError>;

    /// After a write was published: a follow-up change the store now needs (a group that
    /// lists an app deleted while the group was being written), if any.
    async fn repair(
        _service: &Service,
        _stored: &Stored<Self>,
    ) -> Result<Option<Self>, ServiceError> {
        Ok(None)
    }

    /// The broker half of a delete, then the tombstone's outbox flag cleared (the tombstone
    /// stays). Idempotent, so the outbox can finish a delete an instance died in the middle
    /// of.
    async fn finish_delete(service: &Service, tombstone: Stored<Self>) -> Result<(), ServiceError>;
}

fn corrupt(kind: Kind, name: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        kind: kind.label(),
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

fn json<T: serde::Serialize>(kind: Kind, name: &Name, document: &T) -> Result<String, StoreError> {
    serde_json::to_string(document).map_err(|error| corrupt(kind, name.as_str(), error))
}

fn parse<T: serde::de::DeserializeOwned>(
    kind: Kind,
    name: &str,
    body: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(body).map_err(|error| corrupt(kind, name, error))
}

/// A stored body must be the object it is stored under: a record whose body names another
/// object was written by hand or damaged.
fn check_name(kind: Kind, record_name: &str, document_name: &Name) -> Result<(), StoreError> {
    if document_name.as_str() == record_name {
        Ok(())
    } else {
        Err(corrupt(
            kind,
            record_name,
            format!("its body is for {document_name}"),
        ))
    }
}

impl Resource for AppConfig {
    const KIND: Kind = Kind::App;

    fn name(&self) -> &Name {
        &self.app_name
    }

    fn version(&self) -> ObjectVersion {
        AppConfig::version(self)
    }

    fn created(&mut self, incarnation: Incarnation) {
        self.app_id = 1;
        self.incarnation = incarnation;
    }

    fn follows(&mut self, previous: &Self, revise: bool) {
        self.app_name = previous.app_name.clone();
        self.incarnation = previous.incarnation;
        self.app_id = previous.app_id + u64::from(revise);
    }

    fn to_body(&self, _detach: &[Name]) -> Result<String, StoreError> {
        json(Kind::App, &self.app_name, &AppDocument::from(self))
    }

    fn from_body(name: &str, body: &str) -> Result<(Self, Vec<Name>), StoreError> {
        let document: AppDocument = parse(Kind::App, name, body)?;
        let config = document.to_config()?;
        check_name(Kind::App, name, &config.app_name)?;
        // A body that parses but breaks the rules every write enforces (an image reference
        // edited by hand, say) would be published as is and rejected by every agent.
        config
            .validate()
            .map_err(|error| corrupt(Kind::App, name, error))?;
        Ok((config, Vec::new()))
    }

    fn not_found(name: Name) -> ServiceError {
        ServiceError::AppNotFound(name)
    }

    fn exists(name: Name) -> ServiceError {
        ServiceError::AppExists(name)
    }
}

impl Resource for DeviceGroup {
    const KIND: Kind = Kind::DeviceGroup;

    fn name(&self) -> &Name {
        &self.device_group
    }

    fn version(&self) -> ObjectVersion {
        DeviceGroup::version(self)
    }

    fn created(&mut self, incarnation: Incarnation) {
        self.device_group_id = 1;
        self.prune_id = 1;
        self.incarnation = incarnation;
    }

    fn follows(&mut self, previous: &Self, revise: bool) {
        self.device_group = previous.device_group.clone();
        self.incarnation = previous.incarnation;
        self.device_group_id = previous.device_group_id + u64::from(revise);
    }

    fn links(&self) -> Vec<Name> {
        self.apps.clone()
    }

    fn to_body(&self, detach: &[Name]) -> Result<String, StoreError> {
        let mut document = GroupDocument::from(self);
        document.unbind = detach.iter().map(ToString::to_string).collect();
        json(Kind::DeviceGroup, &self.device_group, &document)
    }

    fn from_body(name: &str, body: &str) -> Result<(Self, Vec<Name>), StoreError> {
        let document: GroupDocument = parse(Kind::DeviceGroup, name, body)?;
        let group = document.to_group()?;
        check_name(Kind::DeviceGroup, name, &group.device_group)?;
        group
            .validate()
            .map_err(|error| corrupt(Kind::DeviceGroup, name, error))?;
        let detach = document
            .unbind
            .iter()
            .map(|app| {
                Name::new(app.as_str()).map_err(|error| corrupt(Kind::DeviceGroup, name, error))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((group, detach))
    }

    fn not_found(name: Name) -> ServiceError {
        ServiceError::GroupNotFound(name)
    }

    fn exists(name: Name) -> ServiceError {
        ServiceError::GroupExists(name)
    }
}

impl Resource for CronJob {
    const KIND: Kind = Kind::CronJob;

    fn name(&self) -> &Name {
        &self.cron_job_name
    }

    fn version(&self) -> ObjectVersion {
        CronJob::version(self)
    }

    fn created(&mut self, incarnation: Incarnation) {
        self.cron_job_id = 1;
        self.incarnation = incarnation;
    }

    fn follows(&mut self, previous: &Self, revise: bool) {
        self.cron_job_name = previous.cron_job_name.clone();
        self.incarnation = previous.incarnation;
        self.cron_job_id = previous.cron_job_id + u64::from(revise);
    }

    fn to_body(&self, _detach: &[Name]) -> Result<String, StoreError> {
        json(
            Kind::CronJob,
            &self.cron_job_name,
            &CronJobDocument::from(self),
        )
    }

    fn from_body(name: &str, body: &str) -> Result<(Self, Vec<Name>), StoreError> {
        let document: CronJobDocument = parse(Kind::CronJob, name, body)?;
        let job = document.to_job()?;
        check_name(Kind::CronJob, name, &job.cron_job_name)?;
        job.validate()
            .map_err(|error| corrupt(Kind::CronJob, name, error))?;
        Ok((job, Vec::new()))
    }

    fn not_found(name: Name) -> ServiceError {
        ServiceError::CronJobNotFound(name)
    }

    fn exists(name: Name) -> ServiceError {
        ServiceError::CronJobExists(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_with_their_detach_list() {
        let mut group = DeviceGroup::new(Name::new("edge").expect("name"));
        group.apps = vec![Name::new("web").expect("name")];
        group.incarnation = 42;
        let detach = vec![Name::new("old").expect("name")];
        let body = group.to_body(&detach).expect("body");
        assert_eq!(
            DeviceGroup::from_body("edge", &body).expect("parse"),
            (group.clone(), detach)
        );
        // Written before the detach list existed: none.
        let legacy =
            r#"{"device_group":"edge","device_group_id":3,"prune_id":1,"apps":[],"cron_jobs":[]}"#;
        let (read, detach) = DeviceGroup::from_body("edge", legacy).expect("legacy");
        assert_eq!((read.incarnation, read.device_group_id), (0, 3));
        assert!(detach.is_empty());
    }

    #[test]
    fn corrupt_bodies_are_errors_of_that_object() {
        let app = AppConfig::new(Name::new("web").expect("name"), "nginx");
        let body = app.to_body(&[]).expect("body");
        assert!(AppConfig::from_body("web", &body).is_ok());
        for (name, bad) in [
            ("web", "{not json"),
            ("web", r#"{"app_name":"web"}"#),
            ("other", body.as_str()),
            ("web", &body.replace("nginx", "NOT VALID")),
        ] {
            assert!(
                matches!(
                    AppConfig::from_body(name, bad),
                    Err(StoreError::Corrupt { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn successors_keep_name_and_incarnation() {
        let mut previous = AppConfig::new(Name::new("web").expect("name"), "nginx");
        previous.created(7);
        let mut next = previous.clone();
        next.incarnation = 99;
        next.app_id = 50;
        next.follows(&previous, true);
        assert_eq!(next.version(), ObjectVersion::new(7, 2));
        let mut group = DeviceGroup::new(Name::new("g").expect("name"));
        group.created(3);
        let mut pruned = group.clone();
        pruned.prune_id = 2;
        pruned.follows(&group, false);
        assert_eq!((pruned.device_group_id, pruned.prune_id), (1, 2));
    }

    #[test]
    fn cron_job_bodies_round_trip_and_bad_schedules_are_corrupt() {
        let mut job = CronJob::new(Name::new("backup").expect("name"), "*/5 * * * *", "busybox");
        job.created(9);
        job.env_vars.insert("A".into(), "1".into());
        let body = job.to_body(&[]).expect("body");
        assert_eq!(
            CronJob::from_body("backup", &body).expect("parse"),
            (job.clone(), Vec::new())
        );
        let bad = body.replace("*/5 * * * *", "61 * * * *");
        assert!(matches!(
            CronJob::from_body("backup", &bad),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            CronJob::from_body("other", &body),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
