//! agentkernel: run untrusted commands in isolated Docker containers, through an HTTP
//! API or the command line. See ARCHITECTURE.md for the map of this crate.

#![forbid(unsafe_code)]

pub mod api;
pub mod base64;
pub mod cli;
pub mod client;
pub mod command;
pub mod config;
pub mod detached;
pub mod docker;
pub mod error;
pub mod files;
pub mod history;
pub mod labels;
pub mod pool;
pub mod profile;
pub mod run;
pub mod sandbox;
pub mod stub;
pub mod sweep;
pub mod tar;
