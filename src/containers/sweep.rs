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
    // A removal the engine already had in progress (an `AutoRemove` container whose
    // stub just exited) answers at once but takes a moment: wait for it, briefly, so
    // that "swept" means gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let left = [Kind::Run, Kind::Pool].iter().any(|kind| {
            docker
                .container_list(&labels::filters(&config.namespace, Some(*kind)))
                .map(|containers| !containers.is_empty())
                .unwrap_or(false)
        });
        if !left {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    removed
}
