//! What our containers are: profiles (the isolation settings), labels and names, the
//! warm pool with its launcher and reaper, the owners of temporary containers and the
//! sweep of what a crash left behind, the removals owed while the engine could not do
//! them, the watch on the engine, and the stub copies containers mount.

pub mod allow;
pub mod cleanup;
pub mod demand;
pub mod disk;
pub mod dns;
pub mod egress;
pub mod etc;
pub mod labels;
pub mod launcher;
pub mod owner;
pub mod pool;
pub mod profile;
pub mod runtime;
pub mod stubs;
pub mod sweep;
pub mod watch;
