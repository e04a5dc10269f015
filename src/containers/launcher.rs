//! How commands reach temporary containers (`Launcher`: the stub, or `docker exec`
//! where the stub cannot serve), and the launching of one: create, attach, start, and
//! the stub's hello. The pool and the cold path of `/run` both launch here, so warm
//! and cold containers are the same.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Config;
use crate::config::PoolKey;
use crate::containers::cleanup::Cleanup;
use crate::containers::labels::{self, Kind};
use crate::containers::owner::Owner;
use crate::containers::stubs;
use crate::engine::{ContainerSpec, Docker};
use crate::error::{Error, Result};
use crate::exec::socket::{self, ExecSocket};
use crate::exec::stub::{Lifeline, StubStream};
use crate::exec::{CommandResult, CommandSpec, OutputSink};
use crate::stub;

/// How commands reach temporary containers.
#[derive(Debug, Clone, PartialEq)]
pub enum Launcher {
    /// Our static executable, mounted at `stub::STUB_PATH` from this host path.
    Stub { host_path: PathBuf },
    /// `docker exec` into an idle container; the reason the stub is not used.
    Exec { reason: String },
}

impl Launcher {
    /// The read-only mount that puts the stub into a container (none under exec).
    pub fn stub_mounts(&self) -> Vec<(PathBuf, String)> {
        match self {
            Launcher::Stub { host_path } => vec![(host_path.clone(), stub::STUB_PATH.to_string())],
            Launcher::Exec { .. } => Vec::new(),
        }
    }

    /// The stub where our own executable can serve as one, else exec (said once, here).
    /// The stub mounted is this very version's copy under `<data_dir>/stubs`
    /// (`stubs::install`), so that containers made now keep working after an upgrade;
    /// without a data dir, the executable's own path.
    pub fn detect(allow_stub: bool, data_dir: Option<&Path>) -> Launcher {
        let launcher = if !allow_stub {
            Launcher::Exec {
                reason: "disabled by configuration".into(),
            }
        } else {
            match read_own_executable() {
                Ok((path, meta, head)) if stub::is_static_executable(&head) => Launcher::Stub {
                    host_path: stub_copy(data_dir, &path, &meta),
                },
                Ok((path, _, _)) => Launcher::Exec {
                    reason: format!("{} is not a static executable", path.display()),
                },
                Err(error) => Launcher::Exec {
                    reason: format!("cannot read our own executable: {error}"),
                },
            }
        };
        if let Launcher::Exec { reason } = &launcher {
            log::warn!("in-container stub unavailable ({reason}): runs use docker exec");
        }
        launcher
    }
}

/// gVisor needs the stub: without it (`--no-stub`) the deadline's kill goes by marks
/// on host processes, which gVisor's are not.
pub fn check_gvisor(gvisor: bool, launcher: &Launcher) -> Result<()> {
    match launcher {
        Launcher::Exec { reason } if gvisor => Err(Error::Invalid(format!(
            "runtime runsc needs the in-container stub, which this server does not use \
             ({reason})"
        ))),
        _ => Ok(()),
    }
}

/// Our executable's path, and the metadata and content of the very file this process
/// runs (through `/proc/self/exe`, which stays ours even if the path was replaced).
/// Our own executable: its path, its metadata and its first `HEAD_BYTES` (the ELF
/// header and program headers, all the static check reads).
fn read_own_executable() -> std::io::Result<(PathBuf, std::fs::Metadata, Vec<u8>)> {
    let path = std::env::current_exe()?;
    let file = open_own_executable(&path)?;
    let meta = file.metadata()?;
    let mut head = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, HEAD_BYTES), &mut head)?;
    Ok((path, meta, head))
}

/// How much of our executable the static check reads.
const HEAD_BYTES: u64 = 64 * 1024;

fn open_own_executable(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open("/proc/self/exe").or_else(|_| std::fs::File::open(path))
}

/// The host path to mount as the stub: this version's copy under the data dir, or (with
/// a warning) the executable itself.
fn stub_copy(data_dir: Option<&Path>, path: &Path, meta: &std::fs::Metadata) -> PathBuf {
    let open = || Ok(Box::new(open_own_executable(path)?) as Box<dyn std::io::Read>);
    let problem = match data_dir.map(|dir| stubs::install(dir, meta, open)) {
        Some(Ok(copy)) => return copy,
        Some(Err(error)) => format!("cannot keep a copy under the data dir: {error}"),
        None => "no data dir".to_string(),
    };
    log::warn!(
        "stub: {problem}; containers mount {} itself, and sandboxes made now will not start \
         once it is replaced or removed",
        path.display()
    );
    path.to_path_buf()
}

/// A started temporary container, ready for one command.
pub struct Warm {
    pub id: String,
    /// The attach connection to its stub (none under the exec launcher).
    pub(crate) stream: Option<StubStream>,
    /// A warm container's exec socket and its init's pid: the fast way to its stub,
    /// which the attach connection backs up.
    socket: Option<(ExecSocket, i64)>,
    /// Under the exec launcher, what ties the container's life to this process's.
    lifeline: Option<Lifeline>,
}

impl Warm {
    /// Whether the stub (or the idle shell) is still there: it sends nothing until it
    /// gets a spec (the shell never does), so a readable connection means it closed.
    pub(crate) fn is_alive(&self) -> bool {
        match (&self.stream, &self.lifeline) {
            (Some(stream), _) => stream.is_quiet(),
            (None, Some(lifeline)) => lifeline.is_alive(),
            (None, None) => true,
        }
    }
}

/// Lets a used container go: closing the connection ends its stub (and so the
/// container, which removes itself), and the explicit removal makes sure of it (or,
/// when the engine cannot, is owed to `cleanup`).
pub(crate) fn remove_warm(docker: &Docker, cleanup: &Cleanup, warm: Warm) {
    let id = warm.id.clone();
    drop(warm);
    cleanup.remove(docker, &id);
}

/// The command that keeps a sandbox alive: a shell loop that `docker-init` can stop
/// with SIGTERM at once.
pub fn idle_command() -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done".into(),
    ]
}

/// The command that keeps a temporary container alive under the exec launcher: a
/// shell that waits for the end of its stdin, which the server holds (see
/// `Warm::lifeline`); `docker-init` can stop it with SIGTERM at once.
pub fn temporary_idle_command() -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        "trap 'exit 0' TERM INT; while read -r _; do :; done".into(),
    ]
}

/// The labels of a temporary container: ours, and marked with this process as owner.
fn temporary_labels(
    config: &Config,
    kind: Kind,
    image: &str,
    profile: &str,
) -> std::collections::BTreeMap<String, String> {
    let mut labels = labels::labels(&config.namespace, kind, image, profile, None);
    labels.insert(labels::OWNER.to_string(), Owner::this().label());
    labels
}

/// What a temporary container is launched for: the pool or a run, with the run's
/// workdir (given on the cold path, so that a read-only profile gets a writable one)
/// and the disk quota.
#[derive(Debug, Clone, Copy)]
pub struct Purpose<'a> {
    pub kind: Kind,
    pub workdir: Option<&'a str>,
    pub disk_mb: u64,
    /// The list of an allow-list policy (the key's network is then `Allow`).
    pub allow: Option<&'a crate::containers::allow::AllowList>,
}

/// Creates, attaches and starts a temporary container for `key`. An allow-list one
/// gets an address of its own, tried again with another when the engine finds it
/// taken.
pub fn launch(
    docker: &Docker,
    config: &Config,
    cleanup: &Cleanup,
    launcher: &Launcher,
    key: &PoolKey,
    purpose: Purpose<'_>,
) -> Result<Warm> {
    let mut tries = 0;
    loop {
        tries += 1;
        match launch_once(docker, config, cleanup, launcher, key, purpose) {
            Err(Error::Engine(error))
                if tries < 3 && crate::containers::allow::address_taken(&error) => {}
            other => return other,
        }
    }
}

fn launch_once(
    docker: &Docker,
    config: &Config,
    cleanup: &Cleanup,
    launcher: &Launcher,
    key: &PoolKey,
    purpose: Purpose<'_>,
) -> Result<Warm> {
    let Purpose {
        kind,
        workdir,
        disk_mb,
        allow,
    } = purpose;
    let profile = key.profile;
    let entrypoint = match launcher {
        Launcher::Stub { .. } => vec![stub::STUB_PATH.to_string(), "stub".to_string()],
        Launcher::Exec { .. } => temporary_idle_command(),
    };
    // Both hold the container's stdin: it ends with this process.
    let open_stdin = true;
    let mut labels = temporary_labels(config, kind, &key.image, profile.name());
    // Never an image's (a snapshot's): the policy is the key's.
    labels.insert(labels::NETWORK.to_string(), key.network.name().to_string());
    labels.insert(labels::ALLOW_ADDRESS.to_string(), String::new());
    labels.insert(labels::DISK_MB.to_string(), disk_mb.to_string());
    let mut spec = ContainerSpec {
        name: None,
        image: key.image.clone(),
        labels,
        entrypoint: Some(entrypoint),
        cmd: None,
        env: Vec::new(),
        working_dir: None,
        user: profile.user().map(str::to_string),
        open_stdin,
        stdin_stays_open: false,
        auto_remove: open_stdin,
        restart_always: false,
        // As init, the stub ignores SIGTERM (the command must not be able to end it):
        // an engine that stops or restarts would wait the default 10 s for each
        // temporary container. They hold nothing worth a grace period.
        stop_timeout_seconds: Some(1),
        host: profile.host_settings(
            profile.default_limits(),
            workdir.unwrap_or("/"),
            launcher.stub_mounts(),
        ),
    };
    if key.network == crate::containers::profile::Network::Public {
        crate::containers::egress::ensure_public(docker)?;
    }
    key.network
        .apply(&mut spec.host, crate::containers::egress::host_has_ipv6());
    // Our own /etc/hosts, /etc/hostname and /etc/resolv.conf, read-only.
    let hostname = crate::containers::etc::TEMPORARY_HOSTNAME;
    spec.host.hostname = Some(hostname.to_string());
    spec.host
        .read_only_mounts
        .extend(crate::containers::etc::mounts(
            config.data_dir.as_deref(),
            key.network,
            hostname,
        ));
    if key.network == crate::containers::profile::Network::Allow {
        let list = allow.cloned().unwrap_or_default();
        crate::containers::allow::make_ready(
            docker,
            config,
            &mut spec.host,
            &mut spec.labels,
            &list,
        )?;
    }
    // A warm container of the pool gets an exec socket (its directory here, its token
    // once it said hello), which its run takes: the records then skip the engine.
    let gvisor = crate::containers::runtime::is_gvisor(
        crate::containers::runtime::effective(docker, config, &key.runtime).as_deref(),
    );
    // (A request is refused this at its validation; a gVisor default of the engine's
    // is only known here.)
    if gvisor && key.network != crate::containers::profile::Network::None {
        return Err(Error::Invalid(
            "runtime runsc runs without a network here: network must be none".into(),
        ));
    }
    check_gvisor(gvisor, launcher)?;
    let with_socket = kind == Kind::Pool && matches!(launcher, Launcher::Stub { .. }) && !gvisor;
    if with_socket {
        let owner = profile
            .user()
            .map(crate::containers::profile::numeric_owner);
        spec.host.tmpfs.insert(
            stub::EXEC_SOCKET_DIR.to_string(),
            socket::tmpfs_options(owner),
        );
    }
    // The stub is the container's init itself (it reaps orphans): no other process
    // holds the container's stdout, so nothing but the stub can write records there,
    // and as PID 1 the command cannot kill it from inside. Under the exec launcher the
    // idle shell is PID 1 for the same reason: a command cannot kill or stop it, and
    // when it ends, the kernel kills every process of the container.
    spec.host.init = false;
    spec.host.runtime = crate::containers::runtime::effective(docker, config, &key.runtime);
    let tmp = profile.tmp_options();
    crate::containers::runtime::adapt(&mut spec.host, &tmp);
    let disk = crate::containers::disk::apply(docker, &mut spec.host, &mut spec.labels, disk_mb)?;
    let id = docker.container_create(&spec).map_err(|error| {
        if error.is_not_found() {
            Error::ImageMissing(key.image.clone())
        } else {
            Error::Engine(error)
        }
    })?;
    if let Err(error) = crate::containers::disk::prepare(docker, &id, &disk, disk_mb) {
        cleanup.remove(docker, &id);
        return Err(error);
    }
    let attached = (|| {
        let hijacked = docker.container_attach(&id, open_stdin)?;
        docker.container_start(&id)?;
        if let Launcher::Exec { .. } = launcher {
            return Ok((None, Some(Lifeline::new(hijacked)), None));
        }
        let mut stream = StubStream::new(hijacked);
        stream
            .read_hello()
            .map_err(crate::exec::stub::hello_docker_error)?;
        let socket = if with_socket {
            warm_socket(docker, &id, &mut stream)
        } else {
            None
        };
        Ok((Some(stream), None, socket))
    })();
    match attached {
        Ok((stream, lifeline, socket)) => {
            let warm = Warm {
                id,
                stream,
                lifeline,
                socket,
            };
            // An allow-list container runs no command before its rules are in place.
            if key.network == crate::containers::profile::Network::Allow {
                if let Err(error) = crate::containers::allow::look(docker) {
                    remove_warm(docker, cleanup, warm);
                    return Err(error);
                }
            }
            Ok(warm)
        }
        Err(error) => {
            cleanup.remove(docker, &id);
            Err(Error::Engine(error))
        }
    }
}

/// Gives a warm container's stub a token for its exec socket and finds its pid; `None`
/// (its run then goes over the attach connection) if either fails.
fn warm_socket(docker: &Docker, id: &str, stream: &mut StubStream) -> Option<(ExecSocket, i64)> {
    let made = (|| -> std::result::Result<(ExecSocket, i64), String> {
        let socket = socket::random().map_err(|error| error.to_string())?;
        stream
            .send_raw(&socket.token_record())
            .map_err(|error| error.to_string())?;
        let pid = docker
            .container_inspect(id)
            .map_err(|error| error.to_string())?
            .state
            .pid;
        Ok((socket, pid))
    })();
    match made {
        Ok(made) => Some(made),
        Err(error) => {
            log::warn!(
                "warm container {id}: no exec socket ({error}): its run uses the attach connection"
            );
            None
        }
    }
}

/// Runs one command in a started temporary container: through its attached stub,
/// else by `docker exec`.
pub fn run_in(
    docker: &Docker,
    warm: &mut Warm,
    spec: &CommandSpec,
    started: Instant,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    if let Some((socket, pid)) = warm.socket.take() {
        if let Some(result) =
            crate::exec::stub::run_via_socket(docker, &warm.id, &socket, pid, spec, started, sink)
        {
            return result;
        }
    }
    match warm.stream.as_mut() {
        Some(stream) => {
            crate::exec::stub::run_attached(docker, &warm.id, stream, spec, started, sink)
        }
        None => crate::exec::docker_exec::exec_direct(docker, &warm.id, spec, started, sink),
    }
}
