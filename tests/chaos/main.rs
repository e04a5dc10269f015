//! Chaos tests: the real server binary against a private Docker daemon that each test
//! starts for itself (`engine::PrivateEngine`), then kills, freezes, restarts or cuts
//! off. `make chaos` runs them, one at a time (their deadlines are measured); they need
//! root and fail, never skip, where a private daemon cannot start.

#[allow(dead_code)]
#[path = "../integration/harness.rs"]
mod harness;

mod cluster;
mod disks;
mod engine;
mod faults;
mod gvisor;
mod link;
