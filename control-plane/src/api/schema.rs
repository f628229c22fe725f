//! The shapes of the v2 JSON bodies for the OpenAPI document (`GET /api/v2/openapi.json`).
//!
//! The v2 handlers parse and render JSON by hand ([`super::dto`]: every kind of bad input
//! has its documented answer), so these types only describe what they read and write;
//! `tests/openapi.rs` holds the two together by validating real answers of the router
//! against the document. Every struct denies unknown fields, which the document says as
//! `additionalProperties: false`: a key a handler adds without documenting it fails there.

#![allow(
    dead_code,
    reason = "schema-only types: read by the OpenAPI derive, never constructed"
)]

use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// One entry of `starting_ports`: a port (`8080`: the same host and container port, TCP),
/// or `{"<host>": "<container>"}` where the container side may end in `/tcp` or `/udp`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum StartingPort {
    Same(u16),
    Mapped(BTreeMap<String, String>),
}

/// `env_vars`: a dict, or (as upstream also takes) a list of `K=V` strings; echoed in the form
/// given. A full update without them answers `[]`, as upstream.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EnvVars {
    Dict(BTreeMap<String, String>),
    List(Vec<String>),
}

/// An app document (API.md "Apps").
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub app_name: String,
    /// The revision: 1 on create, +1 on every change.
    pub app_id: u64,
    pub docker_image: String,
    pub starting_ports: Vec<StartingPort>,
    /// One key: `server`/`instance`, `cpu`, `memory`/`mem`.
    pub containers_per: BTreeMap<String, u32>,
    pub env_vars: EnvVars,
    pub running: bool,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
    pub devices: Vec<String>,
    pub privileged: bool,
    pub rolling_restart: bool,
    /// Seconds a container gets after SIGTERM before it is killed (0-3600).
    pub stop_timeout_secs: u32,
    pub pull_policy: PullPolicy,
}

/// When the agent pulls an app's image.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Once per change of the app (v2's behaviour).
    Always,
    /// Only when the image is not on the device.
    IfNotPresent,
}

/// The fields a client may write (create and full update need `docker_image`; a partial
/// update any non-empty subset).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppFields {
    pub docker_image: Option<String>,
    pub starting_ports: Option<Vec<StartingPort>>,
    pub containers_per: Option<BTreeMap<String, u32>>,
    pub env_vars: Option<EnvVars>,
    pub running: Option<bool>,
    pub networks: Option<Vec<String>>,
    pub volumes: Option<Vec<String>>,
    pub devices: Option<Vec<String>>,
    pub privileged: Option<bool>,
    pub rolling_restart: Option<bool>,
    pub stop_timeout_secs: Option<u32>,
    pub pull_policy: Option<PullPolicy>,
    /// Accepted for v2 clients only when it equals the name in the path.
    pub app_name: Option<String>,
}

/// A cron job document (API.md "Cron jobs").
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CronJob {
    pub cron_job_name: String,
    /// The revision: 1 on create, +1 on every change.
    pub cron_job_id: u64,
    /// Five cron fields, UTC.
    pub schedule: String,
    pub docker_image: String,
    pub env_vars: BTreeMap<String, String>,
    pub running: bool,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
    pub devices: Vec<String>,
    pub privileged: bool,
}

/// The cron job fields a client may write (create and full update need `schedule` and
/// `docker_image`; a partial update any non-empty subset).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CronJobFields {
    pub schedule: Option<String>,
    pub docker_image: Option<String>,
    pub env_vars: Option<BTreeMap<String, String>>,
    pub running: Option<bool>,
    pub networks: Option<Vec<String>>,
    pub volumes: Option<Vec<String>>,
    pub devices: Option<Vec<String>>,
    pub privileged: Option<bool>,
    /// Accepted for v2 clients only when it equals the name in the path.
    pub cron_job_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CronJobList {
    pub cron_jobs: Vec<String>,
}

/// `400 {"schedule_valid": false}`: the schedule is not five cron fields.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleInvalid {
    pub schedule_valid: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppList {
    pub apps: Vec<String>,
}

/// A device group document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub device_group: String,
    pub device_group_id: u64,
    pub prune_id: u64,
    pub apps: Vec<String>,
    pub cron_jobs: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupFields {
    pub apps: Option<Vec<String>>,
    pub cron_jobs: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupList {
    pub device_groups: Vec<String>,
}

/// `GET /device_groups/<g>/info`: the group with its apps in full.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupInfo {
    pub apps: Vec<App>,
    pub apps_list: Vec<String>,
    pub cron_jobs: Vec<CronJob>,
    pub cron_jobs_list: Vec<String>,
    pub prune_id: u64,
    pub device_group_id: u64,
}

/// `POST /prune`: every group's new `prune_id`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneIds {
    pub prune_ids: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiStatus {
    pub api_available: bool,
}

/// `{}`: a delete's answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Alive {
    pub alive: bool,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    pub ready: bool,
    pub store: bool,
    pub broker: bool,
    /// The store's identity, 32 hex digits.
    pub store_id: String,
    /// `null` when the store did not answer.
    pub store_empty: Option<bool>,
    /// Other stores agents asking this instance synced with (the last hour).
    pub foreign_stores: Vec<String>,
}

// ----- error bodies --------------------------------------------------------------------

/// `401`: missing or wrong credentials.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Unauthenticated {
    pub authenticated: bool,
}

/// `429`: too many failed logins from this address; try again after `retry_after_secs`
/// (also in the `Retry-After` header).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TooManyFailedLogins {
    pub too_many_failed_logins: bool,
    pub retry_after_secs: u64,
}

/// `403`: authenticated, but not allowed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessDenied {
    pub access_allowed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppExists {
    pub app_exists: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupExists {
    pub device_group_exists: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CronJobExists {
    pub cron_job_exists: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserExists {
    pub user_exists: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserGroupExists {
    pub user_group_exists: bool,
}

/// A user: both secrets only as hashes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub user_name: String,
    /// argon2id PHC string of the password.
    pub password: String,
    /// Hex SHA-256 of the token.
    pub token: String,
}

/// A user's writable fields; on create each is generated when absent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserFields {
    pub password: Option<String>,
    pub token: Option<String>,
    /// Accepted only when it equals the name in the path.
    pub user_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserList {
    pub users: Vec<String>,
}

/// `POST /users/<u>/refresh`: the new token, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub token: String,
}

/// `ro` (read) or `rw` (read and write) on one named object.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Ro,
    Rw,
}

/// A user group: its members and what they may do.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserGroup {
    pub user_group: String,
    pub group_members: Vec<String>,
    pub pruning_allowed: bool,
    pub apps: BTreeMap<String, Access>,
    pub device_groups: BTreeMap<String, Access>,
    pub cron_jobs: BTreeMap<String, Access>,
    pub admin: bool,
}

/// A user group's writable fields (defaults on create: no members, nothing allowed).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserGroupFields {
    pub group_members: Option<Vec<String>>,
    pub pruning_allowed: Option<bool>,
    pub apps: Option<BTreeMap<String, Access>>,
    pub device_groups: Option<BTreeMap<String, Access>>,
    pub cron_jobs: Option<BTreeMap<String, Access>>,
    pub admin: Option<bool>,
    /// Accepted only when it equals the name in the path.
    pub user_group: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserGroupList {
    pub user_groups: Vec<String>,
}

/// One write recorded in the audit trail.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Unique; sorts as recorded.
    pub id: String,
    /// When the write was answered, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `admin`, `anonymous` or `user:<name>`.
    pub who: String,
    pub source: Option<String>,
    pub method: String,
    /// The route's template, e.g. `/api/v2/apps/{app}/stop`.
    pub route: String,
    /// `app`, `device_group`, `cron_job`, `user`, `user_group`, `device`, `provisioning_token`.
    pub kind: Option<String>,
    pub name: Option<String>,
    /// The object's revision just before the write (none for a create, or a kind without).
    pub old_revision: Option<u64>,
    /// Its revision as the write answered it (none for a delete, or a kind without).
    pub new_revision: Option<u64>,
    pub status: u16,
}

/// `GET /audit`: newest first; pass `next` as `before` for the following page (`next` is
/// null past the end).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next: Option<String>,
}

/// `403` of a restart of a stopped app.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotRunning {
    pub running_before_restart: bool,
}

/// `missing_parameters`: `true` for a body that is not a JSON object (or an empty partial
/// update), else the missing fields.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Missing {
    Malformed(bool),
    Fields(Vec<String>),
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MissingParameters {
    pub missing_parameters: Missing,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnknownParameters {
    pub unknown_parameters: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidParameters {
    pub invalid_parameters: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidName {
    pub invalid_name: String,
}

/// Port errors: `"invalid port"` (400) or the shape error (403).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortError {
    pub starting_ports: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppsNotList {
    pub apps_is_list: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CronJobsNotList {
    pub cron_jobs_is_list: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TooLarge {
    pub payload_too_large: bool,
    pub max_bytes: u64,
}

/// `500`: the stored object cannot be read back.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Corrupt {
    pub error: String,
    pub corrupt: bool,
}

/// `503`: the store or the broker is unavailable, or the request ran out of time.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Unavailable {
    pub error: String,
    pub timed_out: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotFound {
    pub not_found: bool,
}

/// `400` answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BadRequest {
    Missing(MissingParameters),
    Unknown(UnknownParameters),
    Invalid(InvalidParameters),
    Name(InvalidName),
    Port(PortError),
    AppsNotList(AppsNotList),
    CronJobsNotList(CronJobsNotList),
    Schedule(ScheduleInvalid),
}

/// `403` answers: not allowed, or v2's "does not exist" / "already exists" / state errors.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Forbidden {
    Access(AccessDenied),
    App(AppExists),
    Group(GroupExists),
    CronJob(CronJobExists),
    User(UserExists),
    UserGroup(UserGroupExists),
    NotRunning(NotRunning),
    Port(PortError),
}
