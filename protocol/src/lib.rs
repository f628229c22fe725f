//! Nebula's wire protocol: the types that cross between the control plane and the agents,
//! the versioned envelope they travel in, the names of every exchange and queue, and the
//! validation rules both sides share.
//!
//! This crate does no I/O and has no async dependencies, so that it can be tested
//! exhaustively and linked into the smallest agent build. postcard is not self-describing:
//! enum variants and struct fields are append-only. Never reorder or remove one; the golden
//! byte tests in `tests/golden.rs` fail when that happens by accident.

pub mod cron;
pub mod envelope;
pub mod image;
pub mod legacy;
pub mod message;
pub mod model;
pub mod names;
pub mod placement;
pub mod signing;

pub use envelope::{DecodeError, MAGIC, PROTOCOL_VERSION, decode, encode};
pub use image::{ImageRef, ImageRefError};
pub use message::{
    AppReport, ContainerReport, CronContainerReport, CronJobReport, DeviceMode, DeviceReport,
    GroupState, Message, ResourceUsage, StoreId, SyncReply, SyncRequest, SyncResult, SyncTarget,
};
pub use model::{
    AppConfig, ContainersPer, CronJob, DeviceGroup, EnvVarsForm, Incarnation, ObjectVersion,
    PortMapping, PortProtocol, PullPolicy, Revision, ValidationError,
};
pub use names::{Name, NameError};
