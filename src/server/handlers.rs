//! Handlers: plain functions from (context, typed request) to a reply, named after
//! their routes, and `dispatch`, the one `match` from a `Request` to its handler.
//!
//! Invariants: a handler's first step is its body's `validate` (see `request`), so a
//! request the client got wrong is answered before any engine call, and the domain
//! code below gets inputs it never re-validates (`RunRequest`, `CommandSpec`,
//! `CreateSandbox`, `SandboxPath` and file bytes). A handler whose answer carries
//! output (commands, streams, files, detached logs) takes its room in the output
//! memory before it runs or reads anything (503 when there is none), and its reply
//! holds it until written.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::config::Config;
use crate::containers::labels::SandboxName;
use crate::engine::DockerError;
use crate::error::Error;
use crate::exec::{Cancel, CommandResult, KeepWithin, OutputBudget};
use crate::files::{self, SandboxPath};
use crate::run::RunRequest;
use crate::sandbox;
use crate::tenants::{Holdings, Refusal};

use super::request::{
    BatchBody, CreateBody, ExecBody, ExtendBody, FilesBody, PutFileBody, Request, RunBody,
    SnapshotBody,
};
use super::response::{ApiError, Reply};
use super::sse::StreamJob;
use super::views::{sandbox_data, snapshot_data, write_batch_data, write_command_data};
use super::Context;

/// Runs the handler of a request: the single `match` from request to handler.
/// In the server's namespace: the command line's local mode.
pub fn dispatch(context: &Context, request: Request) -> Result<Reply, ApiError> {
    dispatch_with(context, &context.config.namespace, request, &Cancel::new())
}

/// `dispatch` in the namespace the request's key selects, with the handle through which
/// the server stops a command whose client hung up before its answer. Handlers work in
/// the configuration of that namespace: it is all they see.
pub fn dispatch_with(
    context: &Context,
    namespace: &crate::config::Namespace,
    request: Request,
    cancel: &Cancel,
) -> Result<Reply, ApiError> {
    let config = context.config_in(namespace);
    let config = &*config;
    // A command or file operation keeps its sandbox from being idle while it lasts (a
    // stream's, while its stream lasts: see `sse`).
    let _busy = match &request {
        Request::ExecSandbox(name, _)
        | Request::ExecSandboxStream(name, _)
        | Request::ExecDetach(name, _)
        | Request::DetachedList(name)
        | Request::DetachedStatus(name, _)
        | Request::DetachedLogs { sandbox: name, .. }
        | Request::DetachedKill(name, _)
        | Request::GetSandboxFile(name, _)
        | Request::PutSandboxFile(name, _, _)
        | Request::DeleteSandboxFile(name, _)
        | Request::PostSandboxFiles(name, _)
        | Request::GetArchive(name, _)
        | Request::PutArchive(name, _, _) => Some(context.expiry.busy(&config.namespace, name)),
        _ => None,
    };
    let named = request.sandbox();
    let result = match request {
        Request::OpenApi => get_openapi(context),
        Request::Health => get_health(context),
        Request::Pool => get_pool(context, config),
        Request::Backends => get_backends(context),
        Request::GetSandboxByUuid(uuid) => get_sandbox_by_uuid(context, config, &uuid),
        Request::ExtendSandbox(name, body) => post_sandbox_extend(context, config, &name, body),
        Request::Run(body) => post_run(context, config, body, cancel),
        Request::RunStream(body) => post_run_stream(context, config, body),
        Request::BatchRun(body) => post_batch_run(context, config, body),
        Request::ListSandboxes => get_sandboxes(context, config),
        Request::CreateSandbox(body) => post_sandboxes(context, config, body),
        Request::GetSandbox(name) => get_sandbox(context, config, &name),
        Request::DeleteSandbox(name) => delete_sandbox(context, config, &name),
        Request::ExecSandbox(name, body) => post_sandbox_exec(context, config, &name, body, cancel),
        Request::ExecSandboxStream(name, body) => {
            post_sandbox_exec_stream(context, config, &name, body)
        }
        Request::ExecDetach(name, body) => post_sandbox_exec_detach(context, config, &name, body),
        Request::DetachedList(name) => get_detached_list(context, config, &name),
        Request::DetachedStatus(name, id) => get_detached(context, config, &name, &id),
        Request::DetachedKill(name, id) => delete_detached(context, config, &name, &id),
        Request::DetachedLogs {
            sandbox,
            id,
            stderr_only,
        } => get_detached_logs(context, config, &sandbox, &id, stderr_only),
        Request::StartSandbox(name) => post_sandbox_start(context, config, &name),
        Request::StopSandbox(name) => post_sandbox_stop(context, config, &name),
        Request::PauseSandbox(name) => post_sandbox_pause(context, config, &name),
        Request::SandboxStats(name) => get_sandbox_stats(context, config, &name),
        Request::ResumeSandbox(name) => post_sandbox_resume(context, config, &name),
        Request::SandboxLogs(name) => get_sandbox_logs(context, config, &name),
        Request::GetSandboxFile(name, path) => get_sandbox_file(context, config, &name, &path),
        Request::PutSandboxFile(name, path, body) => {
            put_sandbox_file(context, config, &name, &path, body)
        }
        Request::DeleteSandboxFile(name, path) => {
            delete_sandbox_file(context, config, &name, &path)
        }
        Request::PostSandboxFiles(name, body) => post_sandbox_files(context, config, &name, body),
        Request::ListSnapshots => get_snapshots(context, config),
        Request::Metrics => get_metrics(context, config),
        Request::GetArchive(name, dir) => get_archive(context, config, &name, &dir),
        Request::ListVolumes => get_volumes(context, config),
        Request::DeleteVolume(name) => delete_volume(context, config, &name),
        Request::PutArchive(name, dir, archive) => {
            put_archive(context, config, &name, &dir, &archive)
        }
        Request::CreateSnapshot(body) => post_snapshots(context, config, body),
        Request::GetSnapshot(name) => get_snapshot(context, config, &name),
        Request::DeleteSnapshot(name) => delete_snapshot(context, config, &name),
        Request::RestoreSnapshot(name, body) => post_snapshot_restore(context, config, &name, body),
    };
    match (result, named) {
        (Err(ApiError::Domain(error)), Some((name, needs))) => Err(ApiError::Domain(
            sandbox::settle(&context.docker, config, &name, needs, error),
        )),
        (result, _) => result,
    }
}

/// A command's place among its namespace's concurrent runs, taken once the request is
/// known to be valid: held while it runs (a stream's, until its stream ends, in its
/// reply; a batch takes its own, one per command running at once).
fn run_slot(context: &Context, config: &Config) -> Result<crate::tenants::RunSlots, ApiError> {
    Ok(context.tenants.run_slots(&config.namespace, 1)?)
}

/// `data` stays the string `"ok"` the SDKs expect; what the edge counts rides beside it.
pub fn get_health(context: &Context) -> Result<Reply, ApiError> {
    use std::sync::atomic::Ordering::SeqCst;
    let edge = &context.edge;
    Ok(Reply::json(
        200,
        json!({
            "success": true,
            "data": "ok",
            "status": "ok",
            "workers": {
                "configured": context.config.workers,
                "alive": edge.workers_alive.load(SeqCst),
            },
            "connections": {
                "open": edge.connections.load(SeqCst),
                "max": edge.max_connections.load(SeqCst),
            },
            "output_memory": {
                "used": context.output_memory.used(),
                "max": context.output_memory.limit(),
            },
            // Liveness is the 200; readiness is whether the engine answers (never asked
            // here: a frozen engine must not hold up the answer).
            "engine": if context.engine.is_up() { "up" } else { "down" },
        }),
    ))
}

/// Room in the output memory for everything `bytes` may come to, taken now.
fn reserve_output(context: &Context, bytes: u64) -> Result<OutputBudget, ApiError> {
    context.output_memory.reserve(bytes).ok_or_else(|| {
        let limit = context.output_memory.limit();
        log::warn!("output memory full ({limit} bytes): a request needing {bytes} refused");
        Error::OutputMemoryFull { limit }.into()
    })
}

/// What a request's commands may keep: both streams of each at their caps, with room
/// for the runs that record how they interleaved, and never more than the request's
/// budget.
fn output_need(config: &Config, caps: impl IntoIterator<Item = u64>) -> u64 {
    caps.into_iter()
        .map(|cap| cap.saturating_mul(5) / 2)
        .fold(0u64, u64::saturating_add)
        .min(config.max_request_output_bytes)
}

/// The answer of a command: written from the result's own buffers, holding its room
/// in the output memory (less what the command did not keep) until written.
fn command_reply(result: CommandResult, budget: OutputBudget) -> Reply {
    budget.settle();
    Reply::data(move |out| write_command_data(out, &result, false), budget)
}

/// The warm pool's keys and counts: the images every namespace runs, so the operator's.
pub fn get_pool(context: &Context, config: &Config) -> Result<Reply, ApiError> {
    operator_only(context, config, "The pool serves every namespace")?;
    Ok(Reply::ok(context.pool.stats()))
}

/// Refuses a request of a namespace other than the server's own (a tenant's key): what
/// it asks for covers every namespace.
fn operator_only(context: &Context, config: &Config, what: &str) -> Result<(), ApiError> {
    if config.namespace == context.config.namespace {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "{what}: ask with the server's own key (AGENTKERNEL_API_KEY) or a key of its \
         namespace"
    )))
}

pub fn post_run(
    context: &Context,
    config: &Config,
    body: RunBody,
    cancel: &Cancel,
) -> Result<Reply, ApiError> {
    let request = body.validate(config)?;
    let _slot = run_slot(context, config)?;
    let need = output_need(config, [request.command.max_output_bytes]);
    let budget = reserve_output(context, need)?;
    // The container is the server's (a warm one, or made like one), whoever asks.
    let result = crate::run::run(
        &context.docker,
        &context.config,
        &context.pool,
        &request,
        &mut KeepWithin::new(&budget, Some(cancel)),
    );
    if cancel.is_cancelled() {
        return Err(ApiError::ClientGone);
    }
    Ok(command_reply(result?, budget))
}

pub fn post_run_stream(
    context: &Context,
    config: &Config,
    body: RunBody,
) -> Result<Reply, ApiError> {
    let request = body.validate(config)?;
    // Errors that have a status code are answered before the stream starts.
    crate::containers::labels::check_image(
        &context.docker,
        &config.namespace,
        request.image.as_str(),
    )?;
    let slot = run_slot(context, config)?;
    let holds = reserve_output(context, super::sse::STREAM_MEMORY_BYTES)?;
    let mut reply = Reply::events(StreamJob::Run(request), holds);
    reply.run_slots = Some(slot);
    Ok(reply)
}

pub fn get_sandboxes(context: &Context, config: &Config) -> Result<Reply, ApiError> {
    let sandboxes = sandbox::list(&context.docker, config)?;
    Ok(Reply::ok(Value::Array(
        sandboxes
            .iter()
            .map(|found| sandbox_view(context, found))
            .collect(),
    )))
}

pub fn post_sandboxes(
    context: &Context,
    config: &Config,
    mut body: CreateBody,
) -> Result<Reply, ApiError> {
    if let Some(snapshot) = body.snapshot.clone() {
        from_snapshot(context, config, &mut body, &snapshot)?;
    }
    // What the engine's host has bounds an override too (asked once, then cached).
    let host = || Ok(context.docker.host_resources().map_err(Error::from)?);
    let elsewhere = body.elsewhere;
    let request = body.validate(config, &host)?;
    // Within the namespace's quotas, counting the creates in progress (held until this
    // one's container exists, or failed).
    let adding = Holdings {
        sandboxes: [(request.name.to_string(), request.limits.memory_mb)].into(),
        snapshots: Default::default(),
        volumes: request.volumes.iter().map(|m| m.name.to_string()).collect(),
    };
    let reserved = reserve(context, config, adding, elsewhere)?;
    let create = |launcher| sandbox::create(&context.docker, config, &launcher, &request);
    let not_before = crate::containers::labels::rfc3339(std::time::SystemTime::now());
    let created = match create(context.pool.launcher()) {
        Err(error) if context.pool.stub_mount_failed(&error) => create(context.pool.launcher()),
        other => other,
    };
    // Made (or not): the engine counts it from here.
    drop(reserved);
    // The engine went away during the create: it may have made the container all the
    // same. The client is told the create failed, so once the engine is back, whatever
    // this create made goes.
    if let Err(Error::Engine(DockerError::Unreachable { .. } | DockerError::Io { .. })) = &created {
        let container = crate::containers::labels::container_name(&config.namespace, &request.name);
        let cleanup = context.pool.cleanup();
        cleanup.owe_failed_create(&config.namespace, &container, not_before);
    }
    let created = created?;
    context.expiry.touch(&config.namespace, &request.name);
    context
        .history
        .event(&config.namespace, &request.name, "created");
    Ok(Reply::created(sandbox_view(context, &created)))
}

/// Reserves what a create adds within the namespace's quotas (`tenants::reserve`),
/// counting what the namespace holds on a cluster's other agents.
fn reserve(
    context: &Context,
    config: &Config,
    adding: Holdings,
    elsewhere: crate::tenants::Elsewhere,
) -> Result<Option<crate::tenants::Reservation>, ApiError> {
    let has = || holdings_of(context, config, &adding);
    match context
        .tenants
        .reserve(&config.namespace, adding.clone(), elsewhere, has)
    {
        Ok(reservation) => Ok(reservation),
        Err(Refusal::Over(over)) => Err(over.into()),
        Err(Refusal::Failed(error)) => Err(error.into()),
    }
}

/// What the namespace holds of what `adding` adds, by name: its sandboxes (whatever
/// their state: a stopped one may start at any time) with the memory they were given,
/// its snapshots, its volumes; and when the first of its sandboxes ends by itself, if
/// one will (when trying again may succeed).
fn holdings_of(
    context: &Context,
    config: &Config,
    adding: &Holdings,
) -> Result<(Holdings, std::time::Duration), Error> {
    let mut has = Holdings::default();
    let mut retry_after = crate::tenants::NO_EXPIRY_RETRY;
    if !adding.sandboxes.is_empty() {
        let sandboxes = sandbox::list(&context.docker, config)?;
        for found in &sandboxes {
            let labelled = found.labels.get(crate::containers::labels::MEMORY_MB);
            // Made before the label: what the engine applied. One gone meanwhile: none.
            let memory_mb = match labelled.and_then(|value| value.parse::<u64>().ok()) {
                Some(memory_mb) => memory_mb,
                None => match context.docker.container_inspect(&found.uuid) {
                    Ok(inspect) => (inspect.host_config.memory.max(0) as u64) / (1024 * 1024),
                    Err(error) if error.is_not_found() => 0,
                    Err(error) => return Err(Error::Engine(error)),
                },
            };
            has.sandboxes.insert(found.name.clone(), memory_mb);
        }
        let now = std::time::SystemTime::now();
        if let Some(first) = sandboxes
            .iter()
            .filter_map(|found| context.expiry.terms(&found.uuid, &found.labels).expires_at)
            .min()
        {
            // The expiry thread's look, and a second for the removal.
            retry_after = first.duration_since(now).unwrap_or_default() + 2 * crate::expiry::EVERY;
        }
    }
    if !adding.snapshots.is_empty() {
        let snapshots = crate::snapshot::list(&context.docker, config)?;
        has.snapshots = snapshots.into_iter().map(|found| found.name).collect();
    }
    if !adding.volumes.is_empty() {
        let volumes = crate::volume::list(&context.docker, config)?;
        has.volumes = volumes.into_iter().map(|volume| volume.name).collect();
    }
    Ok((has, retry_after))
}

/// A create from a snapshot takes the snapshot's profile and limits, where the body
/// gives none (a snapshot that does not exist is a 404 here; a malformed name is left
/// to the body's validation).
fn from_snapshot(
    context: &Context,
    config: &Config,
    body: &mut CreateBody,
    snapshot: &str,
) -> Result<(), ApiError> {
    let Ok(name) = SandboxName::parse(snapshot) else {
        return Ok(());
    };
    let found = crate::snapshot::get(&context.docker, config, &name)?;
    if body.profile.is_none() {
        body.profile = found.profile.filter(|profile| !profile.is_empty());
    }
    // Its runtime: a fork of a gVisor sandbox stays under gVisor, unless asked (where
    // this server allows the source's runtime; else its default).
    if body.runtime.is_none() {
        let default = config.default_runtime.as_deref().unwrap_or("runc");
        body.runtime = found
            .runtime
            .filter(|runtime| crate::containers::runtime::allowed(config, default, runtime));
    }
    // Its policy too: a fork never reaches further than its source, unless asked.
    // (Not when it is wider than the ceiling now: then the default, brought down.)
    // (Under gVisor the network is none, whatever the source's was.)
    let runtime = body
        .runtime
        .as_deref()
        .or(config.default_runtime.as_deref());
    if body.network.is_none() && !crate::containers::runtime::is_gvisor(runtime) {
        let allowed = |name: &String| {
            crate::containers::profile::Network::parse(name)
                .is_ok_and(|network| network <= config.max_network)
        };
        body.network = match (found.network.filter(allowed), found.allow) {
            (Some(network), Some(list)) if network == "allow" => Some(json!({ "allow": list })),
            // A list that no longer reads: nothing, never wider than the source.
            (Some(network), _) if network == "allow" => Some(json!("none")),
            (network, _) => network.map(Value::String),
        };
    }
    // Limits an engine did not apply read back as 0: those are left to the defaults.
    if let Some(limits) = found.limits {
        if body.memory_mb.is_none() && limits.memory_mb > 0 {
            body.memory_mb = Some(limits.memory_mb);
        }
        if body.pids.is_none() && limits.pids > 0 {
            body.pids = Some(limits.pids);
        }
        if body.disk_mb.is_none() && limits.disk_mb > 0 {
            body.disk_mb = Some(limits.disk_mb);
        }
        if body.vcpus.is_none() && limits.millicpus > 0 && limits.millicpus.is_multiple_of(1000) {
            body.vcpus = Some(limits.millicpus / 1000);
        }
    }
    Ok(())
}

pub fn get_volumes(context: &Context, config: &Config) -> Result<Reply, ApiError> {
    let volumes = crate::volume::list(&context.docker, config)?;
    Ok(Reply::ok(Value::Array(
        volumes
            .iter()
            .map(|volume| json!({ "name": volume.name, "created_at": volume.created_at }))
            .collect(),
    )))
}

pub fn delete_volume(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    crate::volume::delete(&context.docker, config, name)?;
    Ok(Reply::ok(json!({ "name": name.as_str(), "removed": true })))
}

pub fn get_snapshots(context: &Context, config: &Config) -> Result<Reply, ApiError> {
    let snapshots = crate::snapshot::list(&context.docker, config)?;
    Ok(Reply::ok(Value::Array(
        snapshots.iter().map(snapshot_data).collect(),
    )))
}

pub fn post_snapshots(
    context: &Context,
    config: &Config,
    body: SnapshotBody,
) -> Result<Reply, ApiError> {
    let elsewhere = body.elsewhere;
    let (sandbox, name) = body.validate()?;
    let name = name
        .unwrap_or_else(|| crate::snapshot::default_name(&sandbox, std::time::SystemTime::now()));
    let adding = Holdings {
        snapshots: [name.to_string()].into(),
        ..Holdings::default()
    };
    let _reserved = reserve(context, config, adding, elsewhere)?;
    // The copy can take a while: the sandbox is in use meanwhile, not idle.
    let _busy = context.expiry.busy(&config.namespace, &sandbox);
    let taken =
        crate::snapshot::take(&context.docker, config, &sandbox, &name).map_err(|error| {
            sandbox::settle(
                &context.docker,
                config,
                &sandbox,
                sandbox::Needs::Anything,
                error,
            )
        })?;
    context
        .history
        .event(&config.namespace, &sandbox, "snapshotted");
    Ok(Reply::created(snapshot_data(&taken)))
}

pub fn get_snapshot(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    let found = crate::snapshot::get(&context.docker, config, name)?;
    Ok(Reply::ok(snapshot_data(&found)))
}

pub fn delete_snapshot(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    crate::snapshot::delete(&context.docker, config, name)?;
    Ok(Reply::ok(json!({ "name": name.as_str(), "removed": true })))
}

/// A new sandbox with the snapshot's files: named as the body says, or after the sandbox
/// the snapshot was taken of (409 while that one exists).
pub fn post_snapshot_restore(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    mut body: CreateBody,
) -> Result<Reply, ApiError> {
    if body.image.is_some() || body.snapshot.is_some() {
        return Err(ApiError::BadBody(
            "a restore takes neither image nor snapshot: the snapshot is the one in the path"
                .into(),
        ));
    }
    if body.name.is_none() {
        let found = crate::snapshot::get(&context.docker, config, name)?;
        body.name = Some(found.sandbox);
    }
    body.snapshot = Some(name.to_string());
    post_sandboxes(context, config, body)
}

/// A sandbox as the API shows it, with its terms (`expires_at`, `idle_timeout`).
fn sandbox_view(context: &Context, found: &sandbox::Sandbox) -> Value {
    let mut data = sandbox_data(found);
    let terms = context.expiry.terms(&found.uuid, &found.labels);
    let (expires_at, idle_timeout) = crate::expiry::shown(terms);
    data["expires_at"] = json!(expires_at);
    data["idle_timeout"] = json!(idle_timeout);
    data
}

pub fn get_sandbox(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    let found = sandbox::get(&context.docker, config, name)?;
    Ok(Reply::ok(sandbox_view(context, &found)))
}

pub fn delete_sandbox(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    // Not at the same time as a removal for expiry: one of them removes it.
    let deciding = context.expiry.deciding();
    let (removed, labels) = sandbox::delete(&context.docker, config, name)?;
    context.expiry.forget(&removed, &labels);
    drop(deciding);
    context.history.event(&config.namespace, name, "removed");
    Ok(Reply::ok(json!({ "name": name.as_str(), "removed": true })))
}

pub fn post_sandbox_start(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    let started = sandbox::start(&context.docker, config, name)?;
    context.expiry.touch(&config.namespace, name);
    context.history.event(&config.namespace, name, "started");
    Ok(Reply::ok(sandbox_view(context, &started)))
}

pub fn post_sandbox_stop(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    let stopped = sandbox::stop(&context.docker, config, name)?;
    context.history.event(&config.namespace, name, "stopped");
    Ok(Reply::ok(sandbox_view(context, &stopped)))
}

/// `GET /sandboxes/{name}/stats`: one reading of what the sandbox uses.
pub fn get_sandbox_stats(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    let stats = sandbox::stats(&context.docker, config, name)?;
    Ok(Reply::ok(json!({
        "name": name.as_str(),
        "cpu_percent": stats.cpu_percent,
        "memory": {"used_bytes": stats.memory_used, "limit_bytes": stats.memory_limit},
        "pids": stats.pids,
        "network": {"rx_bytes": stats.network_rx, "tx_bytes": stats.network_tx},
        "block_io": {"read_bytes": stats.block_read, "write_bytes": stats.block_write},
    })))
}

/// `POST /sandboxes/{name}/pause`: its processes frozen, their memory kept.
pub fn post_sandbox_pause(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    let paused = sandbox::pause(&context.docker, config, name)?;
    // Idle from the pause on (not since before it).
    context.expiry.touch(&config.namespace, name);
    context.history.event(&config.namespace, name, "paused");
    Ok(Reply::ok(sandbox_view(context, &paused)))
}

/// `POST /sandboxes/{name}/resume`: a paused sandbox's processes go on.
pub fn post_sandbox_resume(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    let resumed = sandbox::resume(&context.docker, config, name)?;
    context.expiry.touch(&config.namespace, name);
    context.history.event(&config.namespace, name, "resumed");
    Ok(Reply::ok(sandbox_view(context, &resumed)))
}

pub fn post_sandbox_exec(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    body: ExecBody,
    cancel: &Cancel,
) -> Result<Reply, ApiError> {
    let spec = body.validate(config)?;
    let _slot = run_slot(context, config)?;
    let budget = reserve_output(context, output_need(config, [spec.max_output_bytes]))?;
    let result = sandbox::exec(
        &context.docker,
        config,
        name,
        &spec,
        &mut KeepWithin::new(&budget, Some(cancel)),
    );
    if cancel.is_cancelled() {
        return Err(ApiError::ClientGone);
    }
    let result = result.map_err(|error| error.unless_engine_down(&context.docker))?;
    context
        .history
        .exec(&config.namespace, name, &spec.argv, &result);
    Ok(command_reply(result, budget))
}

pub fn post_sandbox_exec_stream(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    body: ExecBody,
) -> Result<Reply, ApiError> {
    let spec = body.validate(config)?;
    let slot = run_slot(context, config)?;
    let running = sandbox::running(&context.docker, config, name)?;
    let holds = reserve_output(context, super::sse::STREAM_MEMORY_BYTES)?;
    let mut reply = Reply::events(
        StreamJob::Exec(
            Box::new(running),
            config.namespace.clone(),
            name.clone(),
            spec,
        ),
        holds,
    );
    reply.run_slots = Some(slot);
    Ok(reply)
}

/// The history of the sandbox of that name: the current one's when it exists (from
/// its creation on), else everything recorded under the name (a removed sandbox's
/// past); 404 when there is neither.
pub fn get_sandbox_logs(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    let entries = match sandbox::get(&context.docker, config, name) {
        Ok(_) => context.history.read_current(&config.namespace, name),
        Err(Error::SandboxNotFound(_)) => {
            let entries = context.history.read(&config.namespace, name);
            if entries.is_empty() {
                return Err(Error::SandboxNotFound(name.to_string()).into());
            }
            entries
        }
        Err(error) => return Err(error.into()),
    };
    Ok(Reply::ok(Value::Array(entries)))
}

/// Runs every command of the batch, up to `batch_concurrency` at once; one command's
/// failure is its own result, not the batch's. The commands share one output budget.
pub fn post_batch_run(
    context: &Context,
    config: &Config,
    body: BatchBody,
) -> Result<Reply, ApiError> {
    // An entry that does not validate is that entry's failure, like one that cannot run.
    let requests: Vec<Result<RunRequest, String>> = body.validate(config)?;
    let caps = requests
        .iter()
        .flatten()
        .map(|request| request.command.max_output_bytes);
    let budget = reserve_output(context, output_need(config, caps))?;
    type Slot = Mutex<Option<Result<CommandResult, String>>>;
    let results: Vec<Slot> = requests.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    // As many commands at once as the namespace may still run (at least one).
    let wanted = config.batch_concurrency.clamp(1, requests.len().max(1));
    let run_slots = context
        .tenants
        .run_slots(&config.namespace, wanted as u64)?;
    let threads = run_slots.count() as usize;
    std::thread::scope(|scope| {
        for index in 0..threads {
            let spawned = std::thread::Builder::new()
                .name(format!("batch-{index}"))
                .spawn_scoped(scope, || loop {
                    let item = next.fetch_add(1, Ordering::SeqCst);
                    let Some(request) = requests.get(item) else {
                        return;
                    };
                    let outcome = match request {
                        Ok(request) => crate::run::run(
                            &context.docker,
                            &context.config,
                            &context.pool,
                            request,
                            &mut KeepWithin::new(&budget, None),
                        )
                        .map_err(|error| error.to_string()),
                        Err(message) => Err(message.clone()),
                    };
                    *results[item].lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
                });
            if let Err(error) = spawned {
                log::error!("cannot start a batch thread: {error}");
            }
        }
    });
    let results: Vec<Result<CommandResult, String>> = results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Err("not run".into()))
        })
        .collect();
    budget.settle();
    Ok(Reply::data(
        move |out| write_batch_data(out, &results),
        budget,
    ))
}

/// A directory of the sandbox as a tar archive (`application/x-tar`).
pub fn get_archive(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    dir: &SandboxPath,
) -> Result<Reply, ApiError> {
    let budget = context.output_memory.on_demand(config.max_file_bytes);
    let archive = files::read_archive(&context.docker, config, name, dir, &budget)?;
    Ok(Reply::raw(200, archive, "application/x-tar", Some(budget)))
}

/// Extracts a tar archive (the body) into a directory of the sandbox.
pub fn put_archive(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    dir: &SandboxPath,
    archive: &[u8],
) -> Result<Reply, ApiError> {
    let members = files::write_archive(&context.docker, config, name, dir, archive)?;
    Ok(Reply::ok(
        json!({ "path": dir.as_str(), "members": members }),
    ))
}

/// `GET /sandboxes/{name}/files/{path}`: the content as text when it is UTF-8, else as
/// base64; `size` is the file's byte count either way. The content is written from
/// the bytes read, never copied into a string first.
pub fn get_sandbox_file(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    path: &SandboxPath,
) -> Result<Reply, ApiError> {
    let budget = context
        .output_memory
        .on_demand(files::read_memory_bound(config));
    let data = files::read_file(&context.docker, config, name, path, &budget)?;
    let utf8 = std::str::from_utf8(&data).is_ok();
    Ok(Reply::data(
        move |out| {
            out.write_all(b"{\"content\":")?;
            if utf8 {
                crate::codec::json::write_utf8(out, &data)?;
            } else {
                out.write_all(b"\"")?;
                crate::codec::base64::encode_to(out, &data)?;
                out.write_all(b"\"")?;
            }
            let encoding = if utf8 { "utf8" } else { "base64" };
            write!(
                out,
                ",\"encoding\":\"{encoding}\",\"size\":{}}}",
                data.len()
            )
        },
        budget,
    ))
}

/// `PUT /sandboxes/{name}/files/{path}` with `{"content", "encoding"}`.
pub fn put_sandbox_file(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    path: &SandboxPath,
    body: PutFileBody,
) -> Result<Reply, ApiError> {
    let data = body.validate()?;
    let size = data.len();
    let files = [(path.clone(), data)];
    files::write_files(&context.docker, config, name, &files)?;
    Ok(Reply::ok(json!({ "path": path.as_str(), "size": size })))
}

/// `DELETE /sandboxes/{name}/files/{path}`.
pub fn delete_sandbox_file(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    path: &SandboxPath,
) -> Result<Reply, ApiError> {
    files::delete_file(&context.docker, config, name, path)?;
    Ok(Reply::ok(json!({ "path": path.as_str(), "deleted": true })))
}

/// `POST /sandboxes/{name}/files` with `{"files": {path: content}}`: one upload for all.
pub fn post_sandbox_files(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    body: FilesBody,
) -> Result<Reply, ApiError> {
    let files = body.validate()?;
    let written = files::write_files(&context.docker, config, name, &files)?;
    Ok(Reply::ok(json!({ "written": written })))
}

/// `GET /backends`, as the published SDKs ask it: one backend, docker, usable when
/// the engine answers, with the engine's runtimes.
pub fn get_backends(context: &Context) -> Result<Reply, ApiError> {
    let (usable, reason) = match context.docker.ping() {
        Ok(version) => (
            true,
            format!(
                "Docker Engine API {version} at {}",
                context.docker.socket().display()
            ),
        ),
        Err(error) => (false, error.to_string()),
    };
    let runtimes = crate::containers::runtime::available(&context.docker).ok();
    let capabilities = json!({
        "mount_cwd": false, "mount_home": false, "attach": false, "host_volumes": false,
        "ssh": false, "proxy_secret_bindings": false, "secret_files": false,
        "snapshots": false, "resume": true, "full_state_pause_resume": false,
        "full_state_fork": false, "endpoints": false,
    });
    Ok(Reply::ok(json!({
        "default_backend": "docker",
        "backends": [{
            "backend": "docker",
            "configured": true,
            "usable": usable,
            "readiness_reason": reason,
            "capabilities": capabilities,
            "runtimes": runtimes
                .as_ref()
                .map(|runtimes| crate::containers::runtime::offered(&context.config, runtimes)),
            // The server's default, else the engine's.
            "default_runtime": runtimes.map(|runtimes| {
                context.config.default_runtime.clone().unwrap_or(runtimes.default)
            }),
        }],
    })))
}

pub fn get_sandbox_by_uuid(
    context: &Context,
    config: &Config,
    uuid: &str,
) -> Result<Reply, ApiError> {
    let found = sandbox::find_by_uuid(&context.docker, config, uuid)?;
    Ok(Reply::ok(sandbox_view(context, &found)))
}

/// `POST /sandboxes/{name}/extend`: moves the sandbox's expiry `by` later (from now,
/// if it is past). A sandbox without a ttl does not expire, and stays so: its answer
/// says so (`expires_at: null`) rather than pretend a time.
pub fn post_sandbox_extend(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    body: ExtendBody,
) -> Result<Reply, ApiError> {
    let by = body.validate()?;
    let found = sandbox::get(&context.docker, config, name)?;
    let still_there = || match context.docker.container_inspect(&found.uuid) {
        Ok(_) => Ok(()),
        Err(error) if error.is_not_found() => Err(Error::SandboxNotFound(name.to_string())),
        Err(error) => Err(Error::Engine(error)),
    };
    match context
        .expiry
        .extend(&found.uuid, &found.labels, by, still_there)?
    {
        Some(at) => {
            context.history.event(&config.namespace, name, "extended");
            Ok(Reply::ok(json!({
                "name": name.as_str(),
                "expires_at": crate::containers::labels::rfc3339(at),
            })))
        }
        None => Ok(Reply::ok(json!({
            "name": name.as_str(),
            "expires_at": null,
            "message": "this sandbox has no ttl: it does not expire",
        }))),
    }
}

/// `POST /sandboxes/{name}/exec/detach`: starts the command and answers at once with
/// its record (`id`, `pid`, `status`, ...); it runs on in the sandbox.
pub fn post_sandbox_exec_detach(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    body: ExecBody,
) -> Result<Reply, ApiError> {
    let spec = body.validate(config)?;
    let record = crate::detached::start_in(&context.docker, config, name, &spec)?;
    context
        .history
        .append_detached(&config.namespace, name, &spec.argv, &record);
    Ok(Reply::ok(record))
}

pub fn get_detached_list(
    context: &Context,
    config: &Config,
    name: &SandboxName,
) -> Result<Reply, ApiError> {
    let records = crate::detached::list_in(&context.docker, config, name)?;
    Ok(Reply::ok(records))
}

pub fn get_detached(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    id: &str,
) -> Result<Reply, ApiError> {
    let record = crate::detached::status(&context.docker, config, name, id)?;
    Ok(Reply::ok(record))
}

pub fn delete_detached(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    id: &str,
) -> Result<Reply, ApiError> {
    let message = crate::detached::kill_in(&context.docker, config, name, id)?;
    Ok(Reply::ok(message))
}

pub fn get_detached_logs(
    context: &Context,
    config: &Config,
    name: &SandboxName,
    id: &str,
    stderr_only: bool,
) -> Result<Reply, ApiError> {
    let budget = context
        .output_memory
        .on_demand(crate::detached::LOGS_MEMORY_BYTES);
    let mut logs = crate::detached::logs_of(&context.docker, config, name, id, &budget)?;
    if stderr_only {
        logs["stdout"] = Value::Null;
        logs["truncated"]["stdout"] = Value::Null;
    }
    let mut reply = Reply::ok(logs);
    reply.holds = Some(budget);
    Ok(reply)
}

/// The OpenAPI 3.1 description of every route, body, answer and error of this server,
/// kept beside this file and checked against the router by `routes`' tests.
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /openapi.json`: the OpenAPI document, as `application/json`. The one success
/// answer that is not in the `{"success","data","error"}` envelope: it is the
/// description of the envelope (and of everything else), so it is served as is. It
/// needs the API key like every other route.
/// How long a scrape waits for the engine's list of sandboxes.
const METRICS_ENGINE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Prometheus text: the counters the server keeps, and the pool's, the engine's and
/// the sandboxes' state now (one container list; none when the engine is down).
pub fn get_metrics(context: &Context, config: &Config) -> Result<Reply, ApiError> {
    use crate::containers::labels;
    use std::sync::atomic::Ordering::Relaxed;
    operator_only(
        context,
        config,
        "Metrics cover every namespace of the server",
    )?;
    let engine_up = context.engine.is_up();
    // Every namespace the server serves (the server's and its tenants').
    let namespaces = context.tenants.namespaces(&config.namespace);
    // A scrape waits for the engine briefly: a slow one is not waited for (no counts).
    let sandboxes = if engine_up {
        context
            .docker
            .container_list_within(&labels::all_sandboxes(), METRICS_ENGINE_WAIT)
            .ok()
            .map(|found| {
                let mut by_status = std::collections::BTreeMap::new();
                let served = |one: &crate::engine::ContainerSummary| {
                    labels::in_namespaces(one.labels.as_ref(), &namespaces)
                };
                for one in found.into_iter().filter(served) {
                    let status = sandbox::SandboxStatus::from_engine(&one.state);
                    *by_status.entry(status.name()).or_insert(0u64) += 1;
                }
                by_status
            })
    } else {
        None
    };
    let state = super::metrics::State {
        pool: context.pool.stats(),
        engine_up,
        sandboxes,
        expired: context.expiry.expired_count(),
        connections: context.edge.connections.load(Relaxed) as u64,
        output_memory_used: context.output_memory.used(),
    };
    Ok(Reply::text(200, context.metrics.render(&state)))
}

pub fn get_openapi(_context: &Context) -> Result<Reply, ApiError> {
    // Parsed per request rather than kept in a global: it takes well under a millisecond,
    // and a unit test proves it parses.
    let document: Value = serde_json::from_str(OPENAPI).map_err(|error| {
        log::error!("the embedded OpenAPI document is not JSON: {error}");
        ApiError::Panic
    })?;
    Ok(Reply::json(200, document))
}
