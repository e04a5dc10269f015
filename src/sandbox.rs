//! Persistent sandboxes: long-lived containers that keep their filesystem across
//! stop and start, found again after a server restart through their labels alone.
//!
//! Invariants: a sandbox is exactly a container in our namespace labelled
//! `kind=sandbox`; nothing about it is kept in server memory, so the engine is always
//! the truth; limits reported are read back from the engine, never echoed from the
//! request; a failed create leaves no container behind; every command that enters a
//! sandbox's container (an exec, a detached exec's operation, a file operation of the
//! stub) goes through `exec_in`, so its failures are always told in the sandbox's
//! terms.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::containers::labels::{self, container_name, Kind, SandboxName};
use crate::containers::launcher::{idle_command, Launcher};
use crate::containers::profile::{Limits, Profile};
use crate::engine::reference::ImageRef;
use crate::engine::{ContainerInspect, ContainerSpec, Docker, DockerError};
use crate::error::{Error, Result};
use crate::exec::socket;
use crate::exec::{CommandResult, CommandSpec, OutputSink};
use crate::stub;

/// How long a stopping sandbox gets between SIGTERM and SIGKILL.
const STOP_GRACE_SECONDS: u32 = 5;
/// How long an exec the engine refused waits for the sandbox's state to say why.
const EXEC_STATE_SETTLE: Duration = Duration::from_secs(2);

/// A sandbox as the API reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub name: String,
    /// The container's short id, and its full id (the SDKs' `uuid`).
    pub id: String,
    pub uuid: String,
    pub status: SandboxStatus,
    pub image: String,
    pub profile: String,
    pub created_at: String,
    /// Read back from the engine; only `get` has them (a list carries no HostConfig).
    pub limits: Option<Limits>,
    /// Its disk quota and what it holds; only `get` has it.
    pub disk: Option<crate::containers::disk::DiskView>,
    /// The engine runtime it runs under; only `get` has it.
    pub runtime: Option<String>,
    /// The container's labels (its terms among them: see `expiry`).
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStatus {
    Running,
    Paused,
    Stopped,
}

impl SandboxStatus {
    pub fn from_engine(state: &str) -> SandboxStatus {
        match state {
            "running" | "restarting" => SandboxStatus::Running,
            "paused" => SandboxStatus::Paused,
            _ => SandboxStatus::Stopped,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SandboxStatus::Running => "running",
            SandboxStatus::Paused => "paused",
            SandboxStatus::Stopped => "stopped",
        }
    }
}

/// A validated create request.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSandbox {
    pub name: SandboxName,
    pub image: ImageRef,
    pub profile: Profile,
    /// Its egress policy, for its whole life (`containers::egress`).
    pub network: crate::containers::profile::Network,
    /// The list of an allow-list policy (`containers::allow`).
    pub allow: Option<crate::containers::allow::AllowList>,
    /// The engine runtime it names, if any (`containers::runtime`).
    pub runtime: Option<String>,
    pub limits: Limits,
    /// The namespace's volumes to mount (made on first use).
    pub volumes: Vec<crate::volume::Mount>,
    /// Removed by itself this long after its creation, unless extended (`expiry`).
    pub ttl: Option<Duration>,
    /// Removed by itself after this long without an exec, file operation or stream.
    pub idle_timeout: Option<Duration>,
}

pub fn list(docker: &Docker, config: &Config) -> Result<Vec<Sandbox>> {
    let filters = labels::filters(&config.namespace, Some(Kind::Sandbox));
    let mut sandboxes: Vec<Sandbox> = docker
        .container_list(&filters)?
        .into_iter()
        .filter_map(|summary| {
            let labels = summary.labels.unwrap_or_default();
            Some(Sandbox {
                name: labels.get(labels::SANDBOX)?.clone(),
                id: short_id(&summary.id),
                uuid: summary.id.clone(),
                status: SandboxStatus::from_engine(&summary.state),
                image: labels.get(labels::IMAGE).cloned().unwrap_or(summary.image),
                profile: labels.get(labels::PROFILE).cloned().unwrap_or_default(),
                created_at: labels.get(labels::CREATED).cloned().unwrap_or_default(),
                limits: None,
                disk: None,
                runtime: None,
                labels,
            })
        })
        .collect();
    sandboxes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(sandboxes)
}

/// Inspects the sandbox's container, treating containers that are not ours (another
/// namespace, another kind, or no labels at all) as not found.
pub fn inspect_ours(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
) -> Result<ContainerInspect> {
    let container = container_name(&config.namespace, name);
    let inspect = docker.container_inspect(&container).map_err(|error| {
        if error.is_not_found() {
            Error::SandboxNotFound(name.to_string())
        } else {
            Error::Engine(error)
        }
    })?;
    let labels = inspect.config.labels.clone().unwrap_or_default();
    let ours = labels.get(labels::NAMESPACE).map(String::as_str) == Some(config.namespace.as_str())
        && labels.get(labels::KIND).map(String::as_str) == Some(Kind::Sandbox.name())
        && labels.get(labels::SANDBOX).map(String::as_str) == Some(name.as_str());
    if ours {
        Ok(inspect)
    } else {
        Err(Error::SandboxNotFound(name.to_string()))
    }
}

/// What an operation needs of its sandbox: to run (a command, a pause, a reading), or
/// only to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Running,
    Anything,
}

/// What a failed operation on a sandbox says once it is known whether the sandbox
/// went, stopped or froze meanwhile. A removal, stop or pause racing the operation
/// (another client, the expiry thread, someone at the engine) makes the engine refuse
/// it in words of its own (404 after our look, "marked for removal", "cannot pause a
/// stopped container", a layer directory gone from under a disk): the client's 404 or
/// 409, never the server's 5xx. Other errors, and these where the sandbox is as the
/// operation needed it, are unchanged.
pub fn settle(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
    needs: Needs,
    error: Error,
) -> Error {
    let may_have_raced = matches!(
        error,
        Error::Engine(
            DockerError::Api { .. }
                | DockerError::ContainerRemoving(_)
                | DockerError::Protocol(_)
                | DockerError::InStream(_)
                | DockerError::ContainerStopped(_)
        ) | Error::DiskQuota(_)
            | Error::RunLost(_)
    );
    if !may_have_raced {
        return error;
    }
    // (The engine says it before its inspect does: a running container being removed
    // is "running" until it is killed.)
    if matches!(error, Error::Engine(DockerError::ContainerRemoving(_))) {
        return Error::SandboxNotFound(name.to_string());
    }
    let state = match inspect_ours(docker, config, name) {
        Ok(inspect) => inspect.state,
        Err(Error::SandboxNotFound(_)) => return Error::SandboxNotFound(name.to_string()),
        Err(_) => return error,
    };
    // A run that broke off is its own story (an init killed, out of memory) unless its
    // sandbox went; a disk that cannot be given one that stays stopped is the host's.
    let raced_a_stop = needs == Needs::Running
        && matches!(error, Error::Engine(_))
        && (!state.running || state.paused);
    // (Not a dead one: a removal the engine could not finish leaves it listed, and its
    // name taken, until a removal succeeds; the engine's words say why.)
    match state.status.as_str() {
        "removing" => Error::SandboxNotFound(name.to_string()),
        _ if raced_a_stop && state.paused => Error::SandboxPaused(name.to_string()),
        _ if raced_a_stop => Error::SandboxNotRunning(name.to_string()),
        _ => error,
    }
}

fn from_inspect(inspect: &ContainerInspect) -> Sandbox {
    let labels = inspect.config.labels.clone().unwrap_or_default();
    let host = &inspect.host_config;
    Sandbox {
        name: labels.get(labels::SANDBOX).cloned().unwrap_or_default(),
        id: short_id(&inspect.id),
        uuid: inspect.id.clone(),
        status: SandboxStatus::from_engine(&inspect.state.status),
        image: labels
            .get(labels::IMAGE)
            .cloned()
            .unwrap_or_else(|| inspect.config.image.clone()),
        profile: labels.get(labels::PROFILE).cloned().unwrap_or_default(),
        created_at: labels.get(labels::CREATED).cloned().unwrap_or_default(),
        limits: Some(Limits {
            memory_mb: (host.memory.max(0) as u64) / (1024 * 1024),
            millicpus: (host.nano_cpus.max(0) as u64) / 1_000_000,
            // As asked: gVisor's own threads were added to it (`runtime::adapt`).
            pids: (host.pids_limit.unwrap_or(0)
                - if crate::containers::runtime::is_gvisor(Some(host.runtime.as_str())) {
                    crate::containers::runtime::GVISOR_PIDS
                } else {
                    0
                })
            .max(0) as u64,
            disk_mb: labels
                .get(labels::DISK_MB)
                .and_then(|mb| mb.parse().ok())
                .unwrap_or(0),
        }),
        disk: Some(crate::containers::disk::view(inspect)),
        runtime: Some(match host.runtime.as_str() {
            "" => "runc".to_string(),
            runtime => runtime.to_string(),
        }),
        labels,
    }
}

/// The sandbox whose container id is `uuid` (the full id, or a prefix of 12 or more).
pub fn find_by_uuid(docker: &Docker, config: &Config, uuid: &str) -> Result<Sandbox> {
    let found = list(docker, config)?
        .into_iter()
        .find(|sandbox| uuid.len() >= 12 && sandbox.uuid.starts_with(uuid));
    match found {
        Some(sandbox) => {
            let name = SandboxName::parse(&sandbox.name).map_err(Error::Invalid)?;
            get(docker, config, &name)
        }
        None => Err(Error::SandboxNotFound(uuid.to_string())),
    }
}

pub fn get(docker: &Docker, config: &Config, name: &SandboxName) -> Result<Sandbox> {
    Ok(from_inspect(&inspect_ours(docker, config, name)?))
}

pub fn create(
    docker: &Docker,
    config: &Config,
    launcher: &Launcher,
    request: &CreateSandbox,
) -> Result<Sandbox> {
    labels::check_image(docker, &config.namespace, request.image.as_str())?;
    let runtime = crate::containers::runtime::resolve(docker, config, request.runtime.as_deref())?;
    if request.network == crate::containers::profile::Network::Public {
        crate::containers::egress::ensure_public(docker)?;
    }
    // Volumes are made (or found) before the container, which mounts them; a create
    // that cannot succeed makes none: a taken name, or a mount over a tmpfs the profile
    // puts there.
    if !request.volumes.is_empty() {
        let taken = docker.container_inspect(&container_name(&config.namespace, &request.name));
        if taken.is_ok() {
            return Err(Error::SandboxExists(request.name.to_string()));
        }
        let tmpfs = request
            .profile
            .sandbox_host_settings(request.limits, Vec::new(), stub::DETACHED_DIR)
            .tmpfs;
        if let Some(mount) = request.volumes.iter().find(|m| tmpfs.contains_key(&m.path)) {
            return Err(Error::Invalid(format!(
                "volume '{}:{}': the '{}' profile has a tmpfs at '{}'",
                mount.name,
                mount.path,
                request.profile.name(),
                mount.path
            )));
        }
    }
    let volumes = request
        .volumes
        .iter()
        .map(|mount| crate::volume::ensure(docker, &config.namespace, &mount.name, &mount.path))
        .collect::<Result<Vec<_>>>()?;
    // With the stub mounted, it is also the sandbox's idle main process, so images
    // without a shell work too.
    let mounts = launcher.stub_mounts();
    let entrypoint = match launcher {
        Launcher::Stub { .. } => vec![stub::STUB_PATH.into(), "stub".into(), "--idle".into()],
        Launcher::Exec { .. } => idle_command(),
    };
    let mut labels = labels::labels(
        &config.namespace,
        Kind::Sandbox,
        request.image.as_str(),
        request.profile.name(),
        Some(&request.name),
    );
    if !mounts.is_empty() {
        labels.insert(labels::STUB.to_string(), "1".to_string());
    }
    if let Some(ttl) = request.ttl {
        // Rounded up to the second: never removed before its time.
        let at = (std::time::SystemTime::now() + ttl)
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                since.as_secs() + u64::from(since.subsec_nanos() > 0)
            });
        labels.insert(labels::EXPIRES_AT.to_string(), at.to_string());
    }
    if let Some(idle) = request.idle_timeout {
        labels.insert(labels::IDLE_TIMEOUT.to_string(), idle.as_secs().to_string());
    }
    // With the stub as init and a data dir on this host: an exec socket (not under
    // gVisor, whose sandbox the host cannot reach into: execs take `docker exec`).
    let name = container_name(&config.namespace, &request.name);
    let gvisor = crate::containers::runtime::is_gvisor(
        crate::containers::runtime::effective(docker, config, &runtime).as_deref(),
    );
    if gvisor && request.network != crate::containers::profile::Network::None {
        return Err(Error::Invalid(
            "runtime runsc runs without a network here: network must be none".into(),
        ));
    }
    crate::containers::launcher::check_gvisor(gvisor, launcher)?;
    let socket = match (launcher, &config.data_dir) {
        (Launcher::Stub { .. }, Some(data_dir)) if !gvisor => {
            let prepared =
                socket::new_key().and_then(|key| socket::prepare(data_dir, &key).map(|()| key));
            match prepared {
                Ok(key) => Some((data_dir.clone(), key)),
                Err(error) => {
                    log::warn!("sandbox {name}: no exec socket ({error}): execs use docker exec");
                    None
                }
            }
        }
        _ => None,
    };
    if let Some((_, key)) = &socket {
        labels.insert(labels::EXEC_SOCKET.to_string(), key.clone());
    }
    labels.insert(
        labels::MEMORY_MB.to_string(),
        request.limits.memory_mb.to_string(),
    );
    labels.insert(
        labels::NETWORK.to_string(),
        request.network.name().to_string(),
    );
    labels.insert(
        labels::DISK_MB.to_string(),
        request.limits.disk_mb.to_string(),
    );
    // A container gets its image's labels, ours overriding them: a sandbox's terms are
    // never an image's (a snapshot's, or one built to carry them), so the ones it does
    // not have are set empty, which reads as none.
    for key in labels::TERMS {
        labels.entry(key.to_string()).or_default();
    }
    let forget_socket = || {
        if let Some((data_dir, key)) = &socket {
            socket::remove(data_dir, key);
        }
    };
    let mut spec = ContainerSpec {
        name: Some(name.clone()),
        image: request.image.to_string(),
        labels,
        entrypoint: Some(entrypoint),
        cmd: None,
        env: Vec::new(),
        working_dir: None,
        user: request.profile.user().map(str::to_string),
        // The init gets its exec token on its stdin, from every server that attaches.
        open_stdin: socket.is_some(),
        stdin_stays_open: true,
        auto_remove: false,
        // Running until stopped through us: the engine starts it again after a crash.
        restart_always: true,
        stop_timeout_seconds: None,
        host: request
            .profile
            .sandbox_host_settings(request.limits, mounts, stub::DETACHED_DIR),
    };
    spec.host.volumes = volumes;
    spec.host.runtime = crate::containers::runtime::effective(docker, config, &runtime);
    crate::containers::runtime::adapt(&mut spec.host, &request.profile.tmp_options());
    // Always ours, never an image's (a snapshot's): what its forks keep.
    spec.labels.insert(
        labels::RUNTIME.to_string(),
        spec.host.runtime.clone().unwrap_or_default(),
    );
    request
        .network
        .apply(&mut spec.host, crate::containers::egress::host_has_ipv6());
    // Our own /etc/hosts, /etc/hostname and /etc/resolv.conf, read-only.
    let hostname = crate::containers::etc::hostname(request.name.as_str());
    spec.host
        .read_only_mounts
        .extend(crate::containers::etc::mounts(
            config.data_dir.as_deref(),
            request.network,
            &hostname,
        ));
    spec.host.hostname = Some(hostname);
    if socket.is_some() {
        spec.host.tmpfs.insert(
            stub::EXEC_SOCKET_DIR.to_string(),
            socket::tmpfs_options(owner_of(request.profile)),
        );
    }
    // The idle stub is the sandbox's init: it reaps orphans and handles SIGTERM.
    spec.host.init = !matches!(launcher, Launcher::Stub { .. });
    let disk = match crate::containers::disk::apply(
        docker,
        &mut spec.host,
        &mut spec.labels,
        request.limits.disk_mb,
    ) {
        Ok(disk) => disk,
        Err(error) => {
            forget_socket();
            return Err(error);
        }
    };
    let allow = request.network == crate::containers::profile::Network::Allow;
    let mut tries = 0;
    let id = loop {
        tries += 1;
        // An allow-list sandbox: an address of its own (another one when the engine
        // finds it taken at the start).
        if allow {
            let list = request.allow.clone().unwrap_or_default();
            crate::containers::allow::make_ready(
                docker,
                config,
                &mut spec.host,
                &mut spec.labels,
                &list,
            )
            .inspect_err(|_| forget_socket())?;
        }
        let id = docker.container_create(&spec).map_err(|error| {
            forget_socket();
            if error.is_conflict() {
                Error::SandboxExists(request.name.to_string())
            } else if error.is_not_found() {
                Error::ImageMissing(request.image.to_string())
            } else {
                Error::Engine(error)
            }
        })?;
        let started = crate::containers::disk::prepare(docker, &id, &disk, request.limits.disk_mb)
            .and_then(|()| docker.container_start(&id).map_err(Error::Engine))
            // An allow-list sandbox runs nothing before its rules are in place.
            .and_then(|()| match allow {
                true => crate::containers::allow::look(docker),
                false => Ok(()),
            });
        let Err(error) = started else {
            break id;
        };
        // Removed meanwhile (a delete of its name, or at the engine): the engine's or
        // the disk's words for it are no fault of the server's.
        let gone = matches!(error, Error::Engine(DockerError::ContainerRemoving(_)))
            || match docker.container_inspect(&id) {
                Ok(inspect) => inspect.state.status == "removing",
                Err(engine) => engine.is_not_found(),
            };
        let error = match error {
            Error::Engine(_) | Error::DiskQuota(_) if gone => {
                Error::SandboxRemovedMeanwhile(request.name.to_string())
            }
            other => other,
        };
        // Never leave a half-made sandbox behind.
        match docker.container_remove(&id) {
            Ok(()) => crate::containers::disk::release_when_gone(docker, &id),
            Err(cleanup) => {
                log::warn!("could not remove failed sandbox container {id}: {cleanup}")
            }
        }
        let taken = matches!(&error, Error::Engine(engine) if crate::containers::allow::address_taken(engine));
        if !(allow && taken && tries < 3) {
            forget_socket();
            return Err(error);
        }
    };
    if let Some((data_dir, key)) = &socket {
        give_token(docker, data_dir, key, &id);
    }
    get(docker, config, &request.name)
}

pub fn start(docker: &Docker, config: &Config, name: &SandboxName) -> Result<Sandbox> {
    let inspect = inspect_ours(docker, config, name)?;
    // The engine refuses to start a paused container: it is resumed, not started.
    if inspect.state.paused {
        return Err(Error::SandboxPaused(name.to_string()));
    }
    let labels = inspect.config.labels.clone().unwrap_or_default();
    let public = crate::containers::profile::Network::Public.name();
    if labels.get(labels::NETWORK).map(String::as_str) == Some(public) {
        crate::containers::egress::ensure_public(docker)?;
    }
    crate::containers::disk::ensure(docker, &inspect.id)?;
    // A running one is left as it is (gVisor cannot update a running container; the
    // engine's start of a running one does nothing).
    if !inspect.state.running {
        docker.container_set_restart(&inspect.id, true)?;
        docker.container_start(&inspect.id)?;
    }
    // An allow-list sandbox runs nothing of a client's before its rules are in place
    // (for its address, which the engine gives it again at each start).
    if crate::containers::allow::is_allow(&labels) {
        if let Err(error) = crate::containers::allow::look(docker) {
            let _ = docker.container_set_restart(&inspect.id, false);
            let _ = docker.container_stop(&inspect.id, 0);
            return Err(error);
        }
    }
    // A started init has no token yet.
    if let (Some(key), Some(data_dir)) = (socket_key(&inspect), &config.data_dir) {
        give_token(docker, data_dir, key, &inspect.id);
    }
    get(docker, config, name)
}

/// The key of the sandbox's exec socket, if it was made with one.
fn socket_key(inspect: &ContainerInspect) -> Option<&str> {
    inspect
        .config
        .labels
        .as_ref()?
        .get(labels::EXEC_SOCKET)
        .map(String::as_str)
        .filter(|key| socket::valid_key(key))
}

/// Gives a started sandbox's init its exec token; failures only cost speed (the next
/// exec tries again, else goes by `docker exec`), so they are logged.
fn give_token(docker: &Docker, data_dir: &std::path::Path, key: &str, container: &str) {
    let given = socket::open(data_dir, key)
        .map_err(|error| error.to_string())
        .and_then(|socket| {
            socket
                .give_token(docker, container)
                .map_err(|error| error.to_string())
        });
    if let Err(error) = given {
        log::warn!("sandbox {container}: cannot give its init the exec token: {error}");
    }
}

/// The uid and gid a profile runs as, where it names a user: the owner of the
/// sandbox's socket directory, in which its init must create the socket.
fn owner_of(profile: Profile) -> Option<(u32, u32)> {
    profile
        .user()
        .map(crate::containers::profile::numeric_owner)
}

/// One reading of what a running sandbox uses: CPU as a percent of its own limit (over
/// the engine's sampling second), memory used (without the page cache) and its limit,
/// processes, and network and block I/O bytes since it started.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub cpu_percent: f64,
    pub memory_used: u64,
    pub memory_limit: u64,
    pub pids: u64,
    pub network_rx: u64,
    pub network_tx: u64,
    pub block_read: u64,
    pub block_write: u64,
}

pub fn stats(docker: &Docker, config: &Config, name: &SandboxName) -> Result<Stats> {
    let inspect = inspect_ours(docker, config, name)?;
    if !inspect.state.running {
        return Err(Error::SandboxNotRunning(name.to_string()));
    }
    // The engine has no reading when the container stops or goes while it samples:
    // asked once more (it may run again); else what happened is `settle`'s to say, as
    // for any request (404, 409), never a 502.
    let raw = match docker.container_stats(&inspect.id)? {
        Some(raw) => raw,
        None => docker.container_stats(&inspect.id)?.ok_or_else(|| {
            Error::Engine(DockerError::Protocol(format!(
                "the engine gave no reading of sandbox '{name}'"
            )))
        })?,
    };
    let limit_cpus = inspect.host_config.nano_cpus.max(0) as f64 / 1e9;
    Ok(Stats {
        cpu_percent: raw.cpu_percent_of(limit_cpus),
        memory_used: raw.memory_used(),
        memory_limit: raw.memory_stats.limit,
        pids: raw.pids_stats.current,
        network_rx: raw.networks.values().map(|n| n.rx_bytes).sum(),
        network_tx: raw.networks.values().map(|n| n.tx_bytes).sum(),
        block_read: raw.block_bytes("read"),
        block_write: raw.block_bytes("write"),
    })
}

/// Freezes a running sandbox's processes (the engine's pause); memory is kept. The
/// engine keeps it paused whatever happens to this server.
pub fn pause(docker: &Docker, config: &Config, name: &SandboxName) -> Result<Sandbox> {
    forget_running(config, name);
    let inspect = inspect_ours(docker, config, name)?;
    if inspect.state.paused {
        return Ok(from_inspect(&inspect));
    }
    if !inspect.state.running {
        return Err(Error::SandboxNotRunning(name.to_string()));
    }
    let pausing = crate::exec::gate::pausing(&inspect.id)
        .ok_or_else(|| Error::SandboxBusy(name.to_string()))?;
    let paused = docker.container_pause(&inspect.id);
    drop(pausing);
    if let Err(error) = paused {
        // Paused by another request meanwhile: as asked. Stopped meanwhile (started
        // again since, maybe: the engine's words say so): a 409.
        let now = inspect_ours(docker, config, name)?;
        if !now.state.paused {
            if matches!(error, DockerError::ContainerStopped(_)) || !now.state.running {
                return Err(Error::SandboxNotRunning(name.to_string()));
            }
            return Err(error.into());
        }
    }
    // An exec that looked at it just before may have put it back.
    forget_running(config, name);
    get(docker, config, name)
}

/// Lets a paused sandbox's processes go on (a running one is left as it is).
pub fn resume(docker: &Docker, config: &Config, name: &SandboxName) -> Result<Sandbox> {
    let inspect = inspect_ours(docker, config, name)?;
    if !inspect.state.paused {
        if !inspect.state.running {
            return Err(Error::SandboxNotRunning(name.to_string()));
        }
        return Ok(from_inspect(&inspect));
    }
    if let Err(error) = docker.container_unpause(&inspect.id) {
        // Resumed by another request meanwhile: as asked; stopped meanwhile: a 409.
        // Still paused: the unpause's own failure, in the engine's words.
        let now = inspect_ours(docker, config, name)?;
        if !now.state.running {
            return Err(Error::SandboxNotRunning(name.to_string()));
        }
        if now.state.paused {
            return Err(error.into());
        }
    }
    get(docker, config, name)
}

pub fn stop(docker: &Docker, config: &Config, name: &SandboxName) -> Result<Sandbox> {
    forget_running(config, name);
    let inspect = inspect_ours(docker, config, name)?;
    // Stopped stays stopped, also after the engine restarts (set again after the stop:
    // a start-up sweep adopting it as running may have raced the first). gVisor cannot
    // update a running container: only after its stop (which the engine does not undo).
    let runtime = Some(inspect.host_config.runtime.as_str());
    if !crate::containers::runtime::is_gvisor(runtime) {
        // (A runtime that cannot update a running container: only after the stop.)
        let _ = docker.container_set_restart(&inspect.id, false);
    }
    docker.container_stop(&inspect.id, STOP_GRACE_SECONDS)?;
    docker.container_set_restart(&inspect.id, false)?;
    get(docker, config, name)
}

/// Removes the sandbox; gives its container's id and labels.
pub fn delete(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
) -> Result<(String, BTreeMap<String, String>)> {
    forget_running(config, name);
    let inspect = inspect_ours(docker, config, name)?;
    let labels = inspect.config.labels.clone().unwrap_or_default();
    delete_container(docker, config, &inspect.id, &labels)?;
    Ok((inspect.id, labels))
}

/// Removes a sandbox's container (`id`, labelled `labels`) and its exec token.
pub fn delete_container(
    docker: &Docker,
    config: &Config,
    id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    // A removal the engine could not finish (a file written into the container while
    // it removed its filesystem: "directory not empty") leaves it dead: again, twice.
    let mut tries = 0;
    loop {
        tries += 1;
        match docker.container_remove(id) {
            Ok(()) => break,
            Err(error @ DockerError::Api { status: 500, .. }) if tries < 3 => {
                log::warn!("removal of container {id} failed ({error}): trying again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => return Err(error.into()),
        }
    }
    after_removal(docker, config, id, labels);
    Ok(())
}

/// What goes with a removed container: its disk and its exec token.
pub fn after_removal(
    docker: &Docker,
    config: &Config,
    id: &str,
    labels: &BTreeMap<String, String>,
) {
    crate::containers::disk::release_when_gone(docker, id);
    if let (Some(key), Some(data_dir)) = (labels.get(labels::EXEC_SOCKET), &config.data_dir) {
        socket::remove(data_dir, key);
    }
}

/// Whether the sandbox's container has our stub mounted (the `stub` label).
pub fn has_stub(inspect: &ContainerInspect) -> bool {
    inspect
        .config
        .labels
        .as_ref()
        .is_some_and(|labels| labels.get(labels::STUB).map(String::as_str) == Some("1"))
}

/// How a command reaches a sandbox's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A `docker exec` of the mounted stub, which runs the command from a spec record,
    /// so that the deadline, the output cap and the status are enforced inside.
    StubProtocol,
    /// A plain `docker exec` of the command, for sandboxes without the stub; its
    /// processes carry a mark by which a deadline kills them (`exec::docker_exec`).
    DockerExec,
    /// A plain `docker exec` of one of the stub's own operations (files, detached
    /// execs): exact argv, no shell.
    StubOp,
}

/// Where an exec goes: a sandbox, by name and container id.
#[derive(Debug, Clone, Copy)]
pub struct ExecTarget<'a> {
    pub sandbox: &'a SandboxName,
    pub container: &'a str,
    pub via: Via,
    /// The sandbox's exec socket, if it has one (see `socket_route`).
    pub route: Option<&'a SocketRoute>,
    /// The init's pid when the sandbox was looked at (0: unknown): another one after a
    /// failure means the sandbox was restarted under the exec.
    pub init_pid: i64,
}

/// Runs `spec` in a sandbox's container: the one way into a sandbox, taken by execs
/// (plain and streamed), detached execs and the files API's stub operations.
/// `outcome` reads the result (a stub operation's exit code, say). Every failure, of
/// the run or of `outcome`, is explained in the sandbox's terms: a sandbox stopped or
/// deleted under the exec is a `SandboxNotRunning` or `SandboxNotFound`, a missing
/// workdir a `WorkdirUnusable`; only what remains is the engine's fault.
pub fn exec_in<T>(
    docker: &Docker,
    config: &Config,
    target: ExecTarget<'_>,
    spec: &CommandSpec,
    sink: OutputSink<'_>,
    outcome: impl FnOnce(CommandResult) -> Result<T>,
) -> Result<T> {
    let started = Instant::now();
    // The init's exec socket where the sandbox has one, for execs and the stub's own
    // operations alike (run as the exec's command); else `docker exec`.
    let fast = match (target.via, target.route) {
        (Via::StubProtocol | Via::StubOp, Some(route)) => crate::exec::stub::exec_via_socket(
            docker,
            target.container,
            &route.socket,
            route.init_pid,
            spec,
            started,
            sink,
        ),
        _ => None,
    };
    if fast.is_none() && target.route.is_some() {
        forget_running(config, target.sandbox);
    }
    let user_command = target.via != Via::StubOp;
    let result = match (fast, target.via) {
        (Some(result), _) => result,
        (None, Via::StubProtocol) => {
            crate::exec::stub::exec_via_stub(docker, target.container, spec, started, sink)
        }
        (None, Via::DockerExec) => {
            crate::exec::docker_exec::exec_direct(docker, target.container, spec, started, sink)
        }
        (None, Via::StubOp) => {
            crate::exec::docker_exec::exec_plain(docker, target.container, spec, started, sink)
        }
    };
    result
        .map(|result| match user_command {
            true => crate::containers::disk::name_full(result, target.container),
            false => result,
        })
        .and_then(outcome)
        .map_err(|error| explain_exec_failure(docker, config, target, error))
}

/// Starts `argv` in a sandbox's container as an exec that nobody attaches to (a
/// detached command's supervisor), an exec root of its own; its failures are told as
/// `exec_in` tells them.
pub fn spawn_in(
    docker: &Docker,
    config: &Config,
    target: ExecTarget<'_>,
    argv: Vec<String>,
    env: Vec<String>,
) -> Result<()> {
    crate::exec::docker_exec::spawn_detached(docker, target.container, argv, env)
        .map_err(|error| explain_exec_failure(docker, config, target, Error::Engine(error)))
}

/// Runs a command in a running sandbox: through the stub where the sandbox has it, else
/// plain `docker exec`.
pub fn exec(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
    spec: &CommandSpec,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    let running = running(docker, config, name)?;
    exec_running(docker, config, &running, spec, sink)
}

/// A sandbox found running, and how its execs reach it: one look at the engine, which
/// a streamed exec takes before its stream starts (to answer 404 or 409 as plain JSON)
/// and its exec then uses.
#[derive(Debug, Clone)]
pub struct Running {
    name: SandboxName,
    container: String,
    via: Via,
    route: Option<SocketRoute>,
    init_pid: i64,
}

/// Sandboxes with an exec socket found running lately, by namespace and name, with
/// their init's start time: while that very process still runs in that very container,
/// the sandbox runs as it was seen, and the engine need not be asked again (an exec
/// saves a round trip). Anything else (gone, restarted, another container under the
/// name) asks the engine.
static SEEN_RUNNING: Mutex<Vec<(String, Running, u64)>> = Mutex::new(Vec::new());
/// Most entries kept (the oldest go first).
const MAX_SEEN_RUNNING: usize = 256;

fn seen_running() -> std::sync::MutexGuard<'static, Vec<(String, Running, u64)>> {
    SEEN_RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

fn seen_key(config: &Config, name: &SandboxName) -> String {
    format!("{}/{}", config.namespace.as_str(), name.as_str())
}

/// Forgets what `running` saw of a sandbox (stopped, deleted, or its socket failed).
pub fn forget_running(config: &Config, name: &SandboxName) {
    let key = seen_key(config, name);
    seen_running().retain(|(seen, _, _)| *seen != key);
}

/// Whether `pid`, started at `start` (clock ticks), is still that process, in the
/// container `id` (its cgroup path names the container), and not frozen (paused, by us
/// or by anyone with the engine: an exec would wait for a hello that cannot come).
fn same_init(pid: i64, start: u64, id: &str) -> bool {
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    crate::stub::reap::process(pid).is_some_and(|process| process.start == start && !process.zombie)
        && cgroups.contains(id)
        && thawed(&cgroups) == Some(true)
}

/// Whether the cgroup of a process (its `/proc/PID/cgroup`) is known not to be frozen:
/// cgroup v1's freezer state, or v2's `frozen` event. `None` when neither can be read.
fn thawed(cgroups: &str) -> Option<bool> {
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        if controllers.split(',').any(|c| c == "freezer") {
            let state =
                std::fs::read_to_string(format!("/sys/fs/cgroup/freezer{path}/freezer.state"))
                    .ok()?;
            return Some(state.trim() == "THAWED");
        }
        if controllers.is_empty() {
            // (A hybrid host's unified tree has no `frozen` key: then the v1 line
            // decides.)
            if let Ok(events) =
                std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cgroup.events"))
            {
                if let Some(frozen) = events.lines().find_map(|line| line.strip_prefix("frozen ")) {
                    return Some(frozen.trim() == "0");
                }
            }
        }
    }
    None
}

/// The sandbox of that name, if it runs (else `SandboxNotFound` or `SandboxNotRunning`).
pub fn running(docker: &Docker, config: &Config, name: &SandboxName) -> Result<Running> {
    let key = seen_key(config, name);
    let seen = seen_running()
        .iter()
        .find(|(seen, _, _)| *seen == key)
        .map(|(_, running, start)| (running.clone(), *start));
    if let Some((running, start)) = seen {
        let pid = running.route.as_ref().map_or(0, |route| route.init_pid);
        if same_init(pid, start, &running.container) {
            return Ok(running);
        }
        forget_running(config, name);
    }
    let found = look_up_running(docker, config, name)?;
    if let Some(route) = &found.route {
        let start = u32::try_from(route.init_pid)
            .ok()
            .and_then(crate::stub::reap::process)
            .map(|process| process.start);
        if let Some(start) =
            start.filter(|start| same_init(route.init_pid, *start, &found.container))
        {
            let mut seen = seen_running();
            seen.retain(|(seen, _, _)| *seen != key);
            if seen.len() >= MAX_SEEN_RUNNING {
                seen.remove(0);
            }
            seen.push((key, found.clone(), start));
        }
    }
    Ok(found)
}

/// `running`, asking the engine.
fn look_up_running(docker: &Docker, config: &Config, name: &SandboxName) -> Result<Running> {
    let inspect = inspect_ours(docker, config, name)?;
    if inspect.state.paused {
        return Err(Error::SandboxPaused(name.to_string()));
    }
    if !inspect.state.running {
        return Err(Error::SandboxNotRunning(name.to_string()));
    }
    let route = socket_route(config, &inspect);
    if route.is_none() && socket_key(&inspect).is_none() && has_stub(&inspect) {
        say_once_without_socket(name, &inspect.id);
    }
    Ok(Running {
        name: name.clone(),
        via: if has_stub(&inspect) {
            Via::StubProtocol
        } else {
            Via::DockerExec
        },
        init_pid: inspect.state.pid,
        container: inspect.id,
        route,
    })
}

/// `exec` into a sandbox `running` found.
pub fn exec_running(
    docker: &Docker,
    config: &Config,
    running: &Running,
    spec: &CommandSpec,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    let target = ExecTarget {
        sandbox: &running.name,
        container: &running.container,
        via: running.via,
        route: running.route.as_ref(),
        init_pid: running.init_pid,
    };
    exec_in(docker, config, target, spec, sink, Ok)
}

/// Says once per container (and process) that a sandbox made before the exec socket
/// (by an earlier release) is exec'd into by `docker exec`.
fn say_once_without_socket(name: &SandboxName, container: &str) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if said.iter().any(|id| id == container) {
        return;
    }
    // Bounded: a long-lived server with many old sandboxes forgets the oldest.
    if said.len() >= 1024 {
        said.remove(0);
    }
    said.push(container.to_string());
    log::info!(
        "sandbox {name} predates the exec socket (made by an earlier release): its execs use docker exec"
    );
}

/// How to reach a running sandbox's init on its exec socket (`exec::socket`).
#[derive(Debug, Clone)]
pub struct SocketRoute {
    socket: socket::ExecSocket,
    init_pid: i64,
}

/// The sandbox's exec socket, where it has one and its token is here.
pub fn socket_route(config: &Config, inspect: &ContainerInspect) -> Option<SocketRoute> {
    let (key, data_dir) = (socket_key(inspect)?, config.data_dir.as_ref()?);
    match socket::open(data_dir, key) {
        Ok(socket) => Some(SocketRoute {
            socket,
            init_pid: inspect.state.pid,
        }),
        Err(error) => {
            log::warn!(
                "container {}: no exec token ({error}): using docker exec",
                inspect.id
            );
            None
        }
    }
}

/// Why an exec failed, when the sandbox itself is the reason: an exec racing a delete
/// or a stop meets the engine's 404 or 409, its in-stream refusal, a stream cut short
/// or a killed process. Whichever it met, the sandbox's state now says what happened:
/// gone (or being removed) is a `SandboxNotFound`, not running a `SandboxNotRunning`,
/// running with another init than the exec met a `SandboxRestarted`. Otherwise the
/// error stands.
fn explain_exec_failure(
    docker: &Docker,
    config: &Config,
    target: ExecTarget<'_>,
    error: Error,
) -> Error {
    let name = target.sandbox;
    // Only the engine's answers and broken-off runs may have the sandbox as their
    // reason; an engine that cannot be reached cannot say.
    if !matches!(error, Error::Engine(_) | Error::RunLost(_))
        || matches!(error, Error::Engine(DockerError::Unreachable { .. }))
    {
        return error;
    }
    // The engine refuses an exec in a container it is already killing (or cuts its
    // stream, or forgets its execs) a moment before inspect stops calling it running:
    // give the state that moment to catch up. Only a sandbox that keeps running costs
    // the wait, and then the failure is the engine's own, which is rare.
    let give_up = Instant::now() + EXEC_STATE_SETTLE;
    let state = loop {
        let state = inspect_ours(docker, config, name);
        let running = matches!(&state, Ok(inspect) if inspect.state.running
            && !inspect.state.paused
            && !matches!(inspect.state.status.as_str(), "removing" | "dead"));
        if !running || Instant::now() >= give_up {
            break state;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    match state {
        Err(Error::SandboxNotFound(_)) => Error::SandboxNotFound(name.to_string()),
        // The engine went away with the exec: it is the reason, and the client hears
        // so (503 naming it), not that the run was lost. (A call that only failed, or
        // was slow, says nothing: the engine must also fail a probe.)
        Err(gone @ Error::Engine(DockerError::Unreachable { .. })) => gone,
        Err(gone @ Error::Engine(DockerError::Io { .. }))
            if docker.probe(crate::engine::PROBE_TIMEOUT).is_err() =>
        {
            gone
        }
        Ok(inspect) if inspect.state.status == "removing" => {
            Error::SandboxNotFound(name.to_string())
        }
        Ok(inspect) if inspect.state.paused => Error::SandboxPaused(name.to_string()),
        Ok(inspect) if !inspect.state.running => Error::SandboxNotRunning(name.to_string()),
        // Stopped and started again (by a client, or its restart policy) under the
        // exec: the command ended with the processes of the first start.
        Ok(inspect) if target.init_pid > 0 && target.init_pid != inspect.state.pid => {
            Error::SandboxRestarted(name.to_string())
        }
        // The sandbox is there and running (or the engine's answer says nothing of
        // it): the exec's own failure, with the engine's typed answers kept typed.
        _ => match error {
            Error::Engine(DockerError::ContainerRemoving(_)) => {
                Error::SandboxNotFound(name.to_string())
            }
            Error::Engine(engine) if engine.is_not_found() => {
                Error::SandboxNotFound(name.to_string())
            }
            Error::Engine(engine) if engine.is_conflict() => {
                Error::SandboxNotRunning(name.to_string())
            }
            other => other,
        },
    }
}

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}
