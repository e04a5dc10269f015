//! Crash-only cleanup: temporary containers (one-shot runs, warm pool) of our namespace
//! are removed at start-up, because a crashed server may have left them, and at
//! shutdown. Persistent sandboxes are never removed here; at start-up, running ones
//! without the restart policy `always` (made by an older release) are given it.
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
//!
//! Invariants: a sweep removes only the temporary containers of this process and of
//! owners that are verifiably gone (`owner::judge`); those of another server or CLI run
//! of the namespace that still runs, and those whose owner cannot be checked, are kept.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::containers::labels::{self, Kind};
use crate::containers::owner::{self, Verdict};
use crate::engine::{ContainerSummary, Docker};

/// Removes our namespace's temporary containers that are ours or whose owner is gone
/// (only those the engine created before `created_before`, in seconds since the epoch,
/// when given); returns how many went. Failures are logged, not fatal: the next sweep
/// tries again.
pub fn remove_temporary(docker: &Docker, config: &Config, created_before: Option<i64>) -> usize {
    let leases = config
        .data_dir
        .as_ref()
        .map(|dir| owner::leases_dir(dir, config.namespace.as_str()));
    // One verdict per owner, and one log line.
    let mut verdicts: BTreeMap<Option<String>, (Verdict, usize)> = BTreeMap::new();
    let mut removed = BTreeSet::new();
    // Owners with containers still there (kept, or not removed), and whether every list
    // answered: only then are the other free leases known to be of no use.
    let mut remaining = BTreeSet::new();
    let mut listed_all = true;
    for kind in [Kind::Run, Kind::Pool] {
        let containers =
            match docker.container_list(&labels::filters(&config.namespace, Some(kind))) {
                Ok(containers) => containers,
                Err(error) => {
                    log::warn!("sweep: cannot list {} containers: {error}", kind.name());
                    listed_all = false;
                    continue;
                }
            };
        for container in containers {
            if created_before.is_some_and(|before| container.created >= before)
                || lost_by_engine(docker, &container)
            {
                continue;
            }
            let label = container
                .labels
                .as_ref()
                .and_then(|labels| labels.get(labels::OWNER))
                .cloned();
            let (verdict, count) = verdicts
                .entry(label.clone())
                .or_insert_with(|| (owner::judge(label.as_deref(), leases.as_deref()), 0));
            *count += 1;
            let gone = verdict.removable()
                && match docker.container_remove(&container.id) {
                    Ok(()) => {
                        crate::containers::disk::release_when_gone(docker, &container.id);
                        removed.insert(container.id)
                    }
                    Err(error) => {
                        log::warn!("sweep: cannot remove {}: {error}", container.id);
                        false
                    }
                };
            if !gone {
                remaining.extend(label);
            }
        }
    }
    for (label, (verdict, count)) in &verdicts {
        let owner = label.as_deref().unwrap_or("none");
        match verdict {
            Verdict::Ours | Verdict::Alive => {}
            Verdict::Gone(reason) => {
                log::info!("sweep: {count} temporary containers of owner {owner}, gone ({reason})")
            }
            Verdict::Unknown(reason) => log::warn!(
                "sweep: kept {count} temporary containers of owner {owner}: cannot tell whether \
                 it is gone ({reason})"
            ),
        }
    }
    if !removed.is_empty() {
        log::info!("sweep: removed {} temporary containers", removed.len());
    }
    if let (Some(leases), true) = (&leases, listed_all) {
        owner::remove_free_leases(leases, &remaining);
    }
    // A removal the engine already had in progress (an `AutoRemove` container whose
    // stub just exited) answers at once but takes a moment: wait for it, briefly, so
    // that "swept" means gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !removed.is_empty() && std::time::Instant::now() < deadline {
        let left = [Kind::Run, Kind::Pool].iter().any(|kind| {
            docker
                .container_list(&labels::filters(&config.namespace, Some(*kind)))
                .map(|containers| containers.iter().any(|c| removed.contains(&c.id)))
                .unwrap_or(false)
        });
        if !left {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Their disks (and those of containers that removed themselves) go with them.
    crate::containers::disk::sweep(docker);
    removed.len()
}

/// The start-up sweep: the temporary containers left behind (created before
/// `created_before`, when given), then the running sandboxes' restart policies.
pub fn at_start(docker: &Docker, config: &Config, created_before: Option<i64>) {
    remove_temporary(docker, config, created_before);
    adopt_sandboxes(docker, config);
    give_disks_back(docker, config);
}

/// Containers whose disk is ours (under this server's data dir, of any namespace it
/// serves) that run without it (the engine unmounted the disks' binds when it stopped,
/// for a restart or a reboot, and started them again without): a sandbox is stopped,
/// given its disk, and started again; a temporary one is removed. Never left running
/// without its quota. Returns how many.
pub fn give_disks_back(docker: &Docker, config: &Config) -> usize {
    // Only a process whose disks these are, and that sees its mounts as the engine
    // does (never one in namespaces of its own, nor one with quotas off).
    if !crate::containers::disk::looks_after_disks(docker) {
        return 0;
    }
    let mut namespaces = crate::containers::disk::served();
    if namespaces.is_empty() {
        namespaces.push(config.namespace.clone());
    }
    let filters = vec![
        format!("{}=true", labels::MANAGED),
        format!(
            "{}={}",
            labels::DISK,
            crate::containers::disk::Enforcement::LoopFilesystem.name()
        ),
    ];
    let Ok(containers) = docker.container_list(&filters) else {
        return 0;
    };
    let mut given = 0;
    for sandbox in containers
        .iter()
        .filter(|c| labels::in_namespaces(c.labels.as_ref(), &namespaces))
    {
        let Ok(inspect) = docker.container_inspect(&sandbox.id) else {
            continue;
        };
        // A sandbox that should run (policy `always`: not stopped through us) but does
        // not: the engine could not start it again on its layer without the disk's bind
        // (the directory it runs in was on the disk). Given its disk, started.
        let should_run = inspect
            .host_config
            .restart_policy
            .as_ref()
            .is_some_and(|policy| policy.name == "always");
        let is_sandbox = inspect
            .config
            .labels
            .as_ref()
            .and_then(|labels| labels.get(labels::KIND))
            .is_some_and(|kind| kind == Kind::Sandbox.name());
        // (Exited: started once, and not by a create still under way.)
        if inspect.state.status == "exited"
            && should_run
            && is_sandbox
            && crate::containers::disk::has_own_disk(&inspect.id)
        {
            let started = crate::containers::disk::ensure(docker, &sandbox.id).and_then(|()| {
                docker
                    .container_start(&sandbox.id)
                    .map_err(crate::error::Error::Engine)
            });
            match started {
                Ok(()) => {
                    log::info!(
                        "sandbox container {} started again with its disk",
                        sandbox.id
                    );
                    given += 1;
                }
                Err(error) => log::warn!(
                    "sweep: sandbox container {} could not be started with its disk: {error}",
                    sandbox.id
                ),
            }
            continue;
        }
        if !crate::containers::disk::runs_without_disk(&inspect) {
            continue;
        }
        let kind = inspect
            .config
            .labels
            .as_ref()
            .and_then(|labels| labels.get(labels::KIND).cloned())
            .unwrap_or_default();
        log::error!(
            "container {} runs without its disk (the engine started it again without it)",
            sandbox.id
        );
        if kind != Kind::Sandbox.name() {
            match docker.container_remove(&sandbox.id) {
                Ok(()) => {
                    crate::containers::disk::release_when_gone(docker, &sandbox.id);
                    given += 1;
                }
                Err(error) => log::warn!("sweep: cannot remove {}: {error}", sandbox.id),
            }
            continue;
        }
        // (Its processes are about to start again anyway: a short grace.)
        let restarted = docker
            .container_stop(&sandbox.id, 1)
            .map_err(crate::error::Error::Engine)
            .and_then(|()| crate::containers::disk::ensure(docker, &sandbox.id))
            .and_then(|()| {
                docker
                    .container_start(&sandbox.id)
                    .map_err(crate::error::Error::Engine)
            });
        match restarted {
            Ok(()) => given += 1,
            Err(error) => log::warn!(
                "sweep: sandbox container {} ran without its disk and could not get it back: {error}",
                sandbox.id
            ),
        }
    }
    given
}

/// Gives every running sandbox of the namespace the restart policy `always` where it
/// has another: those made by a release before restart policies (or started behind
/// our back) would otherwise be left stopped when the engine restarts. Stopped ones
/// keep theirs (`no`, so that they stay stopped). Returns how many were changed;
/// failures are logged, and the next start tries again.
fn adopt_sandboxes(docker: &Docker, config: &Config) -> usize {
    let sandboxes =
        match docker.container_list(&labels::filters(&config.namespace, Some(Kind::Sandbox))) {
            Ok(sandboxes) => sandboxes,
            Err(error) => {
                log::warn!("sweep: cannot list sandboxes: {error}");
                return 0;
            }
        };
    let mut adopted = 0;
    for sandbox in sandboxes.iter().filter(|s| s.state == "running") {
        let Ok(inspect) = docker.container_inspect(&sandbox.id) else {
            continue;
        };
        let policy = inspect.host_config.restart_policy.map(|p| p.name);
        if policy.as_deref() == Some("always") || !inspect.state.running {
            continue;
        }
        let name = sandbox.names.join(",").trim_start_matches('/').to_string();
        if let Err(error) = docker.container_set_restart(&sandbox.id, true) {
            log::warn!("sweep: cannot set the restart policy of {name}: {error}");
            continue;
        }
        // Stopped through the API meanwhile (which sets `no` first): its `no` stands.
        let stopped = docker
            .container_inspect(&sandbox.id)
            .map_or(true, |inspect| !inspect.state.running);
        if stopped {
            let _ = docker.container_set_restart(&sandbox.id, false);
            continue;
        }
        adopted += 1;
        log::info!(
            "sandbox {name} (restart policy {}) now has policy always: it comes back with the engine",
            policy.as_deref().unwrap_or("none")
        );
    }
    adopted
}

/// Whether the engine lists a container it no longer knows: `dead`, and not found.
pub fn lost_by_engine(docker: &Docker, container: &ContainerSummary) -> bool {
    container.state == "dead"
        && docker
            .container_inspect(&container.id)
            .is_err_and(|error| error.is_not_found())
}
