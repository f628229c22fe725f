//! Transports: how desired state reaches the agent and reports leave it. AMQP (lapin) is
//! the only one today; each transport is a thin adapter over [`crate::supervisor::Shared`].

pub mod amqp;
