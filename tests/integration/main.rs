//! Integration tests: the real binary, on a free port, against the real Docker Engine.
//! One test binary; each test owns a namespace and cleans it up.

mod harness;

mod api;
mod cli;
mod cluster;
mod deadlines;
mod disk;
mod egress;
mod exec_socket;
mod expiry;
mod files;
mod hostile;
mod isolation;
mod lifecycle;
mod memory;
mod pool;
mod runs;
mod runtimes;
mod sandboxes;
mod snapshots;
mod streams;
mod tenants;
mod validation;
mod volumes;
