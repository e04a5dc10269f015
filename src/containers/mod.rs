//! What our containers are: profiles (the isolation settings), labels and names, the
//! warm pool with its launcher and reaper, the sweep of what a crash left behind, the
//! removals owed while the engine could not do them, and the watch on the engine.

pub mod cleanup;
pub mod labels;
pub mod launcher;
pub mod pool;
pub mod profile;
pub mod sweep;
pub mod watch;
