//! One-shot runs: every command gets a fresh container, used once and then removed.
//!
//! `fast` runs take a warm container from the pool when one is ready; otherwise (or with
//! `fast: false`) a container is launched for the request, the same way the pool does
//! it, so warm and cold differ only in when the container was started. Commands reach
//! the container through the stub (spec and output records) or, where the stub cannot
//! be used, through `docker exec`; this file also holds that exec path, shared with
//! sandboxes.
//!
//! Invariants: every container used here is removed afterwards (in the background, by
//! the reaper); a missing image is reported before anything is created.

use std::time::Instant;

use crate::config::Config;
use crate::config::PoolKey;
use crate::containers::labels::Kind;
use crate::containers::pool::Pool;
use crate::containers::profile::Profile;
use crate::engine::reference::ImageRef;
use crate::engine::Docker;
use crate::error::Result;
use crate::exec::{CommandResult, CommandSpec, OutputSink};

/// A validated `/run` request.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    /// The namespace whose snapshots it may run: the request's (the container itself is
    /// the server's, like every warm one).
    pub namespace: crate::config::Namespace,
    pub image: ImageRef,
    /// The egress policy (part of the pool key).
    pub network: crate::containers::profile::Network,
    /// The list of an allow-list policy (`containers::allow`).
    pub allow: Option<crate::containers::allow::AllowList>,
    /// The disk quota in MiB: a run asking for other than its profile's default is
    /// never served by the pool, whose containers have that.
    pub disk_mb: u64,
    /// The engine runtime it names, if any (`containers::runtime`).
    pub runtime: Option<String>,
    pub profile: Profile,
    pub fast: bool,
    pub command: CommandSpec,
}

/// Whether a pooled container (started before the request, with `/` as its workdir,
/// the profile's disk quota) can serve this command: a read-only profile can only
/// write to its `/tmp` tmpfs.
fn pool_can_serve(config: &Config, request: &RunRequest) -> bool {
    // Nor an allow-list: its container is made for its list.
    if request.disk_mb != config.disk_for(request.profile)
        || request.network == crate::containers::profile::Network::Allow
    {
        return false;
    }
    match (&request.command.workdir, request.profile.read_only_root()) {
        (Some(dir), true) => dir == "/tmp" || dir.starts_with("/tmp/"),
        _ => true,
    }
}

/// Runs a command in a fresh container.
pub fn run(
    docker: &Docker,
    config: &Config,
    pool: &Pool,
    request: &RunRequest,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    let started = Instant::now();
    let key = PoolKey {
        image: request.image.to_string(),
        profile: request.profile,
        network: request.network,
        runtime: crate::containers::runtime::resolve(docker, config, request.runtime.as_deref())?,
    };
    let pooled = if request.fast && pool_can_serve(config, request) {
        // A warm public container only while its rules are in place (a cold one is
        // checked as it is made).
        if request.network == crate::containers::profile::Network::Public {
            crate::containers::egress::ensure_public(docker)?;
        }
        pool.take(&key, |id| pool.reap(docker, id))
    } else {
        None
    };
    let from_pool = pooled.is_some();
    let mut container = match pooled {
        Some(warm) => warm,
        None => {
            // Refills wait until this start is done (see `Pool::cold_start`).
            let _cold = pool.cold_start();
            let snapshot = crate::containers::labels::check_image(
                docker,
                &request.namespace,
                request.image.as_str(),
            )?;
            let workdir = request.command.workdir.as_deref();
            let purpose = crate::containers::launcher::Purpose {
                kind: Kind::Run,
                workdir,
                disk_mb: request.disk_mb,
                allow: request.allow.as_ref(),
            };
            let warm = pool.launch(docker, config, &key, purpose)?;
            // A snapshot is its namespace's alone: never kept warm, where the next
            // run of any namespace would take it without this check.
            let allow = request.network == crate::containers::profile::Network::Allow;
            if request.fast && !snapshot && !allow {
                pool.note_used(&key);
            }
            warm
        }
    };
    let result = crate::containers::launcher::run_in(
        docker,
        &mut container,
        &request.command,
        started,
        sink,
    )
    .map(|result| crate::containers::disk::name_full(result, &container.id));
    if from_pool {
        pool.release(&key);
    }
    pool.reap(docker, container);
    result.map_err(|error| error.unless_engine_down(docker))
}
