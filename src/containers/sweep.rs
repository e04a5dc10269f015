//! Crash-only cleanup: temporary containers (one-shot runs, warm pool) of our namespace
//! are removed at start-up, because a crashed server may have left them, and at
//! shutdown. Persistent sandboxes are never touched here.
//!
//! The start-up sweep waits for the engine when it is down at start (`engine-watch`
//! runs it once the engine answers), and then removes only containers created before
//! this server started: by then its own runs and pool may have containers of their own.
//!
//! A container the engine lost is passed over: Docker 20.10, restarting after a crash,
//! may race its own removal of `AutoRemove` containers and go on listing one as `dead`
//! while inspect and removal answer 404 (until its next restart). Such a container
//! holds nothing and cannot be removed; waiting for it to go would only hold up the
//! sweep.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::containers::labels::{self, Kind};
use crate::engine::{ContainerSummary, Docker};

/// Removes our namespace's temporary containers (only those the engine created before
/// `created_before`, in seconds since the epoch, when given); returns how many went.
/// Failures are logged, not fatal: the next sweep tries again.
pub fn remove_temporary(docker: &Docker, config: &Config, created_before: Option<i64>) -> usize {
    let is_swept = |container: &ContainerSummary| {
        created_before.is_none_or(|before| container.created < before)
            && !lost_by_engine(docker, container)
    };
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
        for container in containers.iter().filter(|c| is_swept(c)) {
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
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let left = [Kind::Run, Kind::Pool].iter().any(|kind| {
            docker
                .container_list(&labels::filters(&config.namespace, Some(*kind)))
                .map(|containers| containers.iter().any(is_swept))
                .unwrap_or(false)
        });
        if !left {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    removed
}

/// Whether the engine lists a container it no longer knows: `dead`, and not found.
pub fn lost_by_engine(docker: &Docker, container: &ContainerSummary) -> bool {
    container.state == "dead"
        && docker
            .container_inspect(&container.id)
            .is_err_and(|error| error.is_not_found())
}
