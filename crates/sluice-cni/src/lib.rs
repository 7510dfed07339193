//! sluice-cni: the sluice CNI plugin (spec 1.1.0) and a small CNI runtime.
//!
//! The plugin is thin: it validates the runtime's request (environment + network configuration)
//! and asks `sluice-agent`, over its unix socket, to do the work (IP allocation, veth pair,
//! datapath attach). It then turns the agent's `Attachment` into a spec-exact CNI result.
//!
//! - [`commands::run`] is one plugin invocation (the binary is a wrapper around it).
//! - [`runtime`] executes a `.conflist` as a container runtime does (used by the lab and tests).
//!
//! Error codes are in [`error::codes`]: the spec's 1–99, sluice's own from 100.

pub mod commands;
pub mod env;
pub mod error;
pub mod netconf;
pub mod result;
pub mod runtime;
pub mod version;

pub use commands::{run, Outcome};
pub use error::CniError;
