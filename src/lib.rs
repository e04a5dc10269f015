//! agentkernel: run untrusted commands in isolated Docker containers, through an HTTP
//! API or the command line. See ARCHITECTURE.md for the map of this crate.

#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod containers;
pub mod detached;
pub mod engine;
pub mod error;
pub mod exec;
pub mod expiry;
pub mod files;
pub mod history;
pub mod run;
pub mod sandbox;
pub mod server;
pub mod snapshot;
pub mod stub;
pub mod tenants;
pub mod volume;
