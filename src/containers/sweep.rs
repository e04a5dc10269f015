//! Crash-only cleanup: temporary containers (one-shot runs, warm pool) of our namespace
//! are removed at start-up, because a crashed server may have left them, and at
//! shutdown. Persistent sandboxes are never touched here.

use crate::config::Config;
use crate::containers::labels::{self, Kind};
use crate::engine::Docker;

/// Removes our namespace's temporary containers; returns how many went. Failures are
/// logged, not fatal: the next sweep tries again.
pub fn remove_temporary(docker: &Docker, config: &Config) -> usize {
    let mut removed = 0;
    for kind in [Kind::Run, Kind::Pool] {
        let containers =
            match docker.container_list(&labels::filters(&config.namespace, Some(kind))) {
                Ok(containers) => containers,
                Err(error) => {
                    log::warn!("sweep: cannot list {} containers: {error}", kind.name());
                    continue;
                }
            };
        for container in containers {
            match docker.container_remove(&container.id) {
                Ok(()) => removed += 1,
                Err(error) => log::warn!("sweep: cannot remove {}: {error}", container.id),
            }
        }
    }
    if removed > 0 {
        log::info!("sweep: removed {removed} temporary containers");
    }
    removed
}
