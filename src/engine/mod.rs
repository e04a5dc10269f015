//! Our own synchronous Docker Engine API client over the unix socket.
//!
//! Methods mirror Engine operations (`container_create`, `exec_start`, ...) and speak
//! plain Rust types; the Engine's PascalCase JSON, its socket path and its wire format
//! live in this module and nowhere else. Each call opens its own connection (a unix
//! connect costs ~0.2 ms, below the noise of any container operation) and sends
//! `Connection: close`, so no call can ever read another call's leftovers.
//!
//! Invariants: every socket has read and write timeouts; the API version is negotiated
//! through an unversioned `/_ping` and never hard-coded; there is no image pull call
//! at all (the air-gap invariant: a missing image is an error, never a download).

mod errors;
pub mod frames;
pub mod http;
pub mod reference;

pub use self::errors::{exec_refusal, DockerError};

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use self::frames::FrameReader;
use self::http::{body_framing, read_body, read_head, write_request, Head};

/// Newest API version we speak; older daemons get their own version.
const CLIENT_MAX_API: (u32, u32) = (1, 47);
/// How long `probe` waits for the engine by default: past it, a frozen engine counts as
/// not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest JSON answer we accept from the engine (a long container list is ~1 KiB each).
const MAX_RESPONSE_BYTES: u64 = 32 * 1024 * 1024;

pub type Result<T> = std::result::Result<T, DockerError>;

/// What to create: a plain description that `container_create` turns into Engine JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    pub name: Option<String>,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// Keep stdin open and attachable (one-shot runs that feed stdin, the stub).
    pub open_stdin: bool,
    /// With `open_stdin`: stdin stays open when its attached client goes (a sandbox's
    /// init, which gets its exec token there from each server that attaches), instead
    /// of closing with it (`StdinOnce`, a temporary container's lifeline).
    pub stdin_stays_open: bool,
    pub auto_remove: bool,
    /// Restart policy `always` (else `no`): the engine starts the container again when
    /// it comes back after a crash or a reboot (see `container_set_restart`).
    pub restart_always: bool,
    /// Seconds between SIGTERM and SIGKILL when the engine stops the container (at its
    /// own shutdown, or when it restarts after a crash); the engine's default if `None`.
    pub stop_timeout_seconds: Option<u32>,
    pub host: HostSettings,
}

/// The isolation part of a container: what profiles decide.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSettings {
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    /// The engine's `NetworkMode`: `none`, `bridge`, or a network's name.
    pub network_mode: String,
    /// Kernel settings of the container's own namespaces (`net.*`).
    pub sysctls: BTreeMap<String, String>,
    pub read_only_root: bool,
    pub cap_add: Vec<String>,
    /// Mount point → tmpfs option string (`rw,size=64m,mode=1777`).
    pub tmpfs: BTreeMap<String, String>,
    /// Read-only bind mounts: (host path, container path). Given as `Mounts`, not
    /// `Binds` strings, so that no character of a path can change their meaning.
    pub read_only_mounts: Vec<(PathBuf, String)>,
    /// Named volumes, writable.
    pub volumes: Vec<VolumeMount>,
    pub init: bool,
    /// The writable layer's size in MiB, where the storage driver enforces one
    /// (`StorageOpt`; see `containers::disk`).
    pub storage_size_mb: Option<u64>,
    /// The engine runtime (`runc`, `runsc`); the engine's default if `None`.
    pub runtime: Option<String>,
    /// Resolvers the engine's own forwards names to (`Dns`); the host's if empty.
    pub dns: Vec<String>,
    /// A fixed address on the network `network_mode` names (one with a subnet of
    /// ours).
    pub ipv4_address: Option<String>,
    /// The container's host name (the engine's default, its short id, if `None`).
    pub hostname: Option<String>,
}

/// A named volume to mount: its name, where, and the labels the engine gives it should
/// it have to make it itself (it was removed since we made it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VolumeMount {
    pub name: String,
    pub target: String,
    pub labels: BTreeMap<String, String>,
}

/// The fields of `GET /containers/{id}/json` that we use.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspect {
    pub id: String,
    pub name: String,
    pub state: ContainerState,
    pub config: InspectConfig,
    pub host_config: InspectHostConfig,
    /// The storage driver's paths of the container's layers (`UpperDir`, `WorkDir`
    /// for the overlay drivers).
    #[serde(default)]
    pub graph_driver: Option<GraphDriver>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GraphDriver {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub data: Option<BTreeMap<String, String>>,
}

/// What `engine_info` reads of `GET /info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineInfo {
    /// The storage driver (`overlay2`, `fuse-overlayfs`, `btrfs`, ...).
    pub driver: String,
    /// Its `Backing Filesystem` (`extfs`, `xfs`, ...), where it says.
    pub backing_filesystem: Option<String>,
    /// The runtimes the engine has, sorted.
    pub runtimes: Vec<String>,
    /// Those of them that are gVisor (their program is `runsc`), whatever their name.
    pub gvisor: Vec<String>,
    pub default_runtime: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    pub status: String,
    pub running: bool,
    /// Frozen (`docker pause`); `running` stays true meanwhile.
    #[serde(default)]
    pub paused: bool,
    /// The init's pid on the engine's host (0 when it does not run).
    #[serde(default)]
    pub pid: i64,
    #[serde(rename = "OOMKilled", default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub exit_code: i64,
    #[serde(default)]
    pub error: String,
}

/// What `container_stats` reads of the engine's answer (snake_case, unlike the rest).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerStats {
    /// When the engine took the reading; Go's zero time when it had none to take.
    #[serde(default)]
    pub read: String,
    #[serde(default)]
    pub cpu_stats: CpuStats,
    #[serde(default)]
    pub precpu_stats: CpuStats,
    #[serde(default)]
    pub memory_stats: MemoryStats,
    #[serde(default)]
    pub pids_stats: PidsStats,
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkStats>,
    #[serde(default)]
    pub blkio_stats: BlkioStats,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CpuStats {
    #[serde(default)]
    pub cpu_usage: CpuUsage,
    #[serde(default)]
    pub system_cpu_usage: u64,
    #[serde(default)]
    pub online_cpus: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CpuUsage {
    #[serde(default)]
    pub total_usage: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MemoryStats {
    #[serde(default)]
    pub usage: u64,
    #[serde(default)]
    pub limit: u64,
    /// cgroup v1 `cache` / v2 `inactive_file`: page cache, not the sandbox's own use.
    #[serde(default)]
    pub stats: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PidsStats {
    #[serde(default)]
    pub current: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetworkStats {
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub tx_bytes: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BlkioStats {
    #[serde(default)]
    pub io_service_bytes_recursive: Option<Vec<BlkioEntry>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BlkioEntry {
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub value: u64,
}

impl ContainerStats {
    /// The engine's answer, or `None` when it holds no reading: the container stopped
    /// while it sampled (a reading stamped with Go's zero time) or went (an empty body).
    pub fn parse(body: &[u8]) -> serde_json::Result<Option<ContainerStats>> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let stats: ContainerStats = serde_json::from_slice(body)?;
        Ok((!stats.read.starts_with("0001-01-01")).then_some(stats))
    }

    /// CPU use over the sampling interval, as a percent of `limit_cpus` (of the whole
    /// host when there is no limit).
    pub fn cpu_percent_of(&self, limit_cpus: f64) -> f64 {
        let used = self
            .cpu_stats
            .cpu_usage
            .total_usage
            .saturating_sub(self.precpu_stats.cpu_usage.total_usage) as f64;
        let system = self
            .cpu_stats
            .system_cpu_usage
            .saturating_sub(self.precpu_stats.system_cpu_usage) as f64;
        let cpus = self.cpu_stats.online_cpus.max(1) as f64;
        if system <= 0.0 {
            return 0.0;
        }
        let of_cpus = if limit_cpus > 0.0 {
            limit_cpus.min(cpus)
        } else {
            cpus
        };
        let percent = used / system * cpus / of_cpus * 100.0;
        (percent * 10.0).round() / 10.0
    }

    /// Memory in use, less the page cache (as `docker stats` shows it).
    pub fn memory_used(&self) -> u64 {
        let cache = ["total_inactive_file", "inactive_file", "cache"]
            .iter()
            .find_map(|key| self.memory_stats.stats.get(*key))
            .copied()
            .unwrap_or(0);
        self.memory_stats.usage.saturating_sub(cache)
    }

    /// Bytes of block I/O whose op is `op` (`read` or `write`, any case).
    pub fn block_bytes(&self, op: &str) -> u64 {
        self.blkio_stats
            .io_service_bytes_recursive
            .iter()
            .flatten()
            .filter(|entry| entry.op.eq_ignore_ascii_case(op))
            .map(|entry| entry.value)
            .sum()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectConfig {
    pub image: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub user: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectHostConfig {
    #[serde(default)]
    pub memory: i64,
    #[serde(default)]
    pub nano_cpus: i64,
    #[serde(default)]
    pub pids_limit: Option<i64>,
    #[serde(default)]
    pub network_mode: String,
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// Mount point → options of the container's tmpfs mounts.
    #[serde(default)]
    pub tmpfs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub restart_policy: Option<RestartPolicy>,
    /// The runtime (`runc`, `runsc`); empty on engines that do not say.
    #[serde(default)]
    pub runtime: String,
    /// The storage driver's options (`size`, where it enforces one).
    #[serde(default)]
    pub storage_opt: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    /// `no`, `always`, `unless-stopped`, `on-failure`; empty on some engines for `no`.
    #[serde(default)]
    pub name: String,
}

/// What `HEAD /containers/{id}/archive` says about one path, from its
/// `X-Docker-Container-Path-Stat` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStat {
    pub kind: PathKind,
    /// Size in bytes (for a symlink, the length of its target).
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    File,
    Directory,
    /// A symbolic link and the target the engine reports for it.
    Symlink(String),
    /// A device, FIFO, socket or other irregular file.
    Other,
}

impl PathStat {
    /// Decodes the header: base64 of `{"name","size","mode","mtime","linkTarget"}`, where
    /// `mode` is a Go `FileMode` (permission bits plus type bits at the top).
    pub fn from_header(value: &str) -> Result<PathStat> {
        #[derive(Deserialize)]
        struct Raw {
            size: i64,
            mode: u64,
            #[serde(rename = "linkTarget", default)]
            link_target: String,
        }
        const MODE_DIR: u64 = 1 << 31;
        const MODE_SYMLINK: u64 = 1 << 27;
        // Go's ModeType: dir, symlink, named pipe, socket, device, char device, irregular.
        const MODE_TYPE: u64 =
            MODE_DIR | MODE_SYMLINK | 1 << 25 | 1 << 24 | 1 << 26 | 1 << 21 | 1 << 19;
        let bad = |why: String| DockerError::Protocol(format!("path stat header: {why}"));
        let json = crate::codec::base64::decode(value.trim()).map_err(bad)?;
        let raw: Raw = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
        let kind = if raw.mode & MODE_DIR != 0 {
            PathKind::Directory
        } else if raw.mode & MODE_SYMLINK != 0 {
            PathKind::Symlink(raw.link_target)
        } else if raw.mode & MODE_TYPE != 0 {
            PathKind::Other
        } else {
            PathKind::File
        };
        Ok(PathStat {
            kind,
            size: raw.size.max(0) as u64,
        })
    }
}

/// One entry of `GET /containers/json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    pub id: String,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// When the engine created it, in seconds since the epoch (the engine's clock).
    #[serde(default)]
    pub created: i64,
}

/// A volume, as `GET /volumes` and `GET /volumes/{name}` tell it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeInfo {
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// A network, as `GET /networks/{name}` tells it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInfo {
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub options: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(default, rename = "IPAM")]
    pub ipam: Option<NetworkIpam>,
}

/// A network's address plan: its subnets.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetworkIpam {
    #[serde(default, rename = "Config")]
    pub config: Option<Vec<NetworkSubnet>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetworkSubnet {
    #[serde(default, rename = "Subnet")]
    pub subnet: Option<String>,
    #[serde(default, rename = "Gateway")]
    pub gateway: Option<String>,
}

/// One entry of `GET /images/json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    pub id: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Bytes of the image, its parents' layers included.
    #[serde(default)]
    pub size: i64,
}

/// What `GET /images/{name}/json` tells that we use.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub id: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub config: Option<ImageConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExecInspect {
    #[serde(rename = "Running")]
    pub running: bool,
    /// The process's pid on the host, once the runtime has set it up (the engine says
    /// `Running` before that: 0 meanwhile).
    #[serde(rename = "Pid", default)]
    pub pid: i64,
    #[serde(rename = "ExitCode")]
    pub exit_code: Option<i64>,
}

/// What an exec runs.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub attach_stdin: bool,
}

/// A hijacked attach or exec connection: frames come from `frames`, stdin goes to
/// `stdin`. Dropping both closes the connection.
pub struct Hijacked {
    pub frames: FrameReader<BufReader<UnixStream>>,
    pub stdin: UnixStream,
}

impl Hijacked {
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stdin.set_read_timeout(timeout)
    }
}

/// A body to send: JSON or raw bytes with a content type.
#[derive(Clone)]
enum Body<'a> {
    Json(Value),
    Raw(&'a str, &'a [u8]),
}

/// What the engine's host has, from `GET /info`: the ceiling of any container's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    pub cpus: u64,
    pub memory_bytes: u64,
}

/// How long `host_resources` trusts its last answer.
const HOST_RESOURCES_TTL: Duration = Duration::from_secs(600);

/// The client. Cheap to share between threads (`&Docker` is all a caller needs).
pub struct Docker {
    socket: PathBuf,
    timeout: Duration,
    /// `/v1.NN` once negotiated; negotiation is retried while the engine is away.
    api_prefix: Mutex<Option<String>>,
    /// The last `/info` answer and when it came.
    host_resources: Mutex<Option<(Instant, HostResources)>>,
}

impl Docker {
    /// `socket` is the unix socket path; `timeout` bounds every ordinary call.
    pub fn new(socket: PathBuf, timeout: Duration) -> Docker {
        Docker {
            socket,
            timeout,
            api_prefix: Mutex::new(None),
            host_resources: Mutex::new(None),
        }
    }

    /// The socket named by `DOCKER_HOST` (`unix://...`), else the default path.
    pub fn socket_from_env(docker_host: Option<&str>) -> std::result::Result<PathBuf, String> {
        match docker_host {
            None | Some("") => Ok(PathBuf::from("/var/run/docker.sock")),
            Some(value) => match value.strip_prefix("unix://") {
                Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
                _ => Err(format!(
                    "DOCKER_HOST '{value}' is not supported: only unix:// sockets are"
                )),
            },
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn connect(&self, timeout: Option<Duration>) -> Result<UnixStream> {
        let stream =
            UnixStream::connect(&self.socket).map_err(|source| DockerError::Unreachable {
                socket: self.socket.clone(),
                source,
            })?;
        let io_error = |source| DockerError::Io {
            operation: "connect".into(),
            source,
        };
        stream.set_read_timeout(timeout).map_err(io_error)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(io_error)?;
        Ok(stream)
    }

    /// Negotiates the API version once: `min(daemon, ours)`.
    fn prefix(&self) -> Result<String> {
        if let Some(prefix) = self
            .api_prefix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(prefix);
        }
        let (head, _) = self.send_raw("GET", "/_ping", None, &[], Some(self.timeout))?;
        let daemon = head
            .header("api-version")
            .and_then(parse_version)
            .ok_or_else(|| {
                DockerError::Protocol("/_ping answered without an Api-Version header".into())
            })?;
        let (major, minor) = daemon.min(CLIENT_MAX_API);
        let prefix = format!("/v{major}.{minor}");
        log::debug!(
            "docker: API version {major}.{minor} (daemon {}.{})",
            daemon.0,
            daemon.1
        );
        *self.api_prefix.lock().unwrap_or_else(|e| e.into_inner()) = Some(prefix.clone());
        Ok(prefix)
    }

    /// Checks that the engine answers; returns its API version.
    pub fn ping(&self) -> Result<String> {
        Ok(self.prefix()?.trim_start_matches("/v").to_string())
    }

    /// Asks the engine, now, whether it answers: an unversioned `HEAD /_ping` (no body
    /// to read) on a fresh connection that must answer within `timeout` (unlike `ping`,
    /// which trusts an earlier negotiation). A frozen engine accepts the connection and
    /// never answers; that is a timeout here, said in words that name the socket.
    pub fn probe(&self, timeout: Duration) -> Result<()> {
        let mut stream = self.connect(Some(timeout))?;
        let io_error = |source: io::Error| {
            let source = if matches!(
                source.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no answer from {} within {} ms",
                        self.socket.display(),
                        timeout.as_millis()
                    ),
                )
            } else {
                source
            };
            DockerError::Io {
                operation: "HEAD /_ping".into(),
                source,
            }
        };
        stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
        write_request(
            &mut stream,
            "HEAD",
            "/_ping",
            &[("Connection", "close")],
            None,
        )
        .map_err(io_error)?;
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader).map_err(io_error)?;
        if head.status == 200 {
            Ok(())
        } else {
            Err(DockerError::Api {
                status: head.status,
                message: "/_ping did not answer OK".into(),
            })
        }
    }

    /// Sends one request on a fresh connection and reads the whole answer.
    fn send_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Body<'_>>,
        headers: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<(Head, Vec<u8>)> {
        let operation = || format!("{method} {}", path.split('?').next().unwrap_or(path));
        // A socket timeout reads "Resource temporarily unavailable": say what it was.
        let io_error = |source: io::Error| DockerError::Io {
            operation: operation(),
            source: match (source.kind(), timeout) {
                (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, Some(limit)) => {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no answer within {} s (--engine-timeout-secs)",
                            limit.as_secs_f64()
                        ),
                    )
                }
                _ => source,
            },
        };
        let mut stream = self.connect(timeout)?;
        let json_bytes;
        let body = match &body {
            Some(Body::Json(value)) => {
                json_bytes = serde_json::to_vec(value).expect("JSON values always serialize");
                Some(("application/json", json_bytes.as_slice()))
            }
            Some(Body::Raw(content_type, bytes)) => Some((*content_type, *bytes)),
            None => None,
        };
        let mut all_headers = vec![("Connection", "close")];
        all_headers.extend_from_slice(headers);
        let written = write_request(&mut stream, method, path, &all_headers, body);
        if written.is_err() {
            // Its answer is there already, or will not come.
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        }
        let mut reader = BufReader::new(stream);
        // An engine that refuses a request before its body (an archive for a path that
        // does not exist) answers and closes while the body is still being written:
        // its answer, not the broken pipe, is what happened.
        let head = match (read_head(&mut reader), written) {
            (Ok(head), _) => head,
            (Err(_), Err(error)) | (Err(error), Ok(())) => return Err(io_error(error)),
        };
        let framing = body_framing(method, &head).map_err(io_error)?;
        let bytes = read_body(&mut reader, framing, MAX_RESPONSE_BYTES).map_err(io_error)?;
        log::debug!("docker: {method} {path} -> {}", head.status);
        Ok((head, bytes))
    }

    /// A versioned call that must succeed with one of `ok_statuses`.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Body<'_>>,
        ok_statuses: &[u16],
        timeout: Option<Duration>,
    ) -> Result<(Head, Vec<u8>)> {
        let full_path = format!("{}{path}", self.prefix()?);
        let (head, bytes) = self.send_raw(method, &full_path, body.clone(), &[], timeout)?;
        if ok_statuses.contains(&head.status) {
            return Ok((head, bytes));
        }
        let error = DockerError::from_answer(head.status, &bytes);
        // The engine was upgraded or downgraded under us: negotiate again, once.
        if matches!(&error, DockerError::Api { status: 400, message } if message.contains("client version"))
        {
            log::info!("docker: {error}; negotiating the API version again");
            *self.api_prefix.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let full_path = format!("{}{path}", self.prefix()?);
            let (head, bytes) = self.send_raw(method, &full_path, body, &[], timeout)?;
            if ok_statuses.contains(&head.status) {
                return Ok((head, bytes));
            }
            return Err(DockerError::from_answer(head.status, &bytes));
        }
        Err(error)
    }

    fn call_json<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        path: &str,
        body: Option<Body<'_>>,
        ok_statuses: &[u16],
    ) -> Result<T> {
        let (_, bytes) = self.call(method, path, body, ok_statuses, Some(self.timeout))?;
        serde_json::from_slice(&bytes)
            .map_err(|error| DockerError::Protocol(format!("{method} {path}: {error}")))
    }

    /// The CPUs and memory of the engine's host. Asked once and kept for
    /// `HOST_RESOURCES_TTL`, so requests that check their limits against it cost no
    /// engine call; the lock is not held across the call (two threads may both ask).
    pub fn host_resources(&self) -> Result<HostResources> {
        let cached = *self
            .host_resources
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((at, resources)) = cached {
            if at.elapsed() < HOST_RESOURCES_TTL {
                return Ok(resources);
            }
        }
        #[derive(Deserialize)]
        struct Info {
            #[serde(rename = "NCPU")]
            ncpu: u64,
            #[serde(rename = "MemTotal")]
            mem_total: u64,
        }
        let info: Info = self.call_json("GET", "/info", None, &[200])?;
        let resources = HostResources {
            cpus: info.ncpu,
            memory_bytes: info.mem_total,
        };
        *self
            .host_resources
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), resources));
        Ok(resources)
    }

    /// The storage driver and the runtimes of the engine (asked each time: a runtime may
    /// be registered while we run).
    pub fn engine_info(&self) -> Result<EngineInfo> {
        #[derive(Deserialize)]
        struct Info {
            #[serde(rename = "Driver", default)]
            driver: String,
            #[serde(rename = "DriverStatus", default)]
            driver_status: Option<Vec<Vec<String>>>,
            #[serde(rename = "Runtimes", default)]
            runtimes: Option<BTreeMap<String, Value>>,
            #[serde(rename = "DefaultRuntime", default)]
            default_runtime: String,
        }
        let info: Info = self.call_json("GET", "/info", None, &[200])?;
        let backing_filesystem =
            info.driver_status
                .unwrap_or_default()
                .into_iter()
                .find_map(|pair| match pair.as_slice() {
                    [key, value] if key == "Backing Filesystem" => Some(value.clone()),
                    _ => None,
                });
        let runtimes = info.runtimes.unwrap_or_default();
        let gvisor = runtimes
            .iter()
            .filter(|(_, runtime)| {
                ["path", "runtimeType"].iter().any(|key| {
                    runtime[*key]
                        .as_str()
                        .is_some_and(|program| program.contains("runsc"))
                })
            })
            .map(|(name, _)| name.clone())
            .collect();
        Ok(EngineInfo {
            driver: info.driver,
            backing_filesystem,
            gvisor,
            runtimes: runtimes.into_keys().collect(),
            default_runtime: info.default_runtime,
        })
    }

    pub fn image_exists(&self, image: &str) -> Result<bool> {
        let path = format!("/images/{}/json", encode_component(image));
        match self.call("GET", &path, None, &[200], Some(self.timeout)) {
            Ok(_) => Ok(true),
            Err(error) if error.is_not_found() => Ok(false),
            // An unparseable reference (uppercase, bad characters) cannot be present.
            Err(DockerError::Api { status: 400, .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The image's id, tags and labels; a missing image is `is_not_found`.
    pub fn image_inspect(&self, image: &str) -> Result<ImageInspect> {
        let path = format!("/images/{}/json", encode_component(image));
        self.call_json("GET", &path, None, &[200])
    }

    /// Every image carrying all of the `key=value` labels.
    pub fn image_list(&self, labels: &[String]) -> Result<Vec<ImageSummary>> {
        let filters = json!({ "label": labels }).to_string();
        let path = format!("/images/json?filters={}", encode_component(&filters));
        self.call_json("GET", &path, None, &[200])
    }

    /// Removes the image `repo:tag` names (and its layers no other image uses); one a
    /// container still uses is refused (`is_conflict`), never forced.
    pub fn image_remove(&self, image: &str) -> Result<()> {
        let path = format!("/images/{}", encode_component(image));
        self.call("DELETE", &path, None, &[200], Some(self.timeout))
            .map(|_| ())
    }

    /// Commits the container's filesystem as the image `repo:tag`, with the container
    /// paused meanwhile (a consistent copy), and `labels` over the container's own (the
    /// engine keeps those: a label is only undone by an empty value). Copying a large
    /// filesystem takes its time: up to
    /// `timeout`. Returns the image id.
    pub fn container_commit(
        &self,
        id: &str,
        repo: &str,
        tag: &str,
        labels: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<String> {
        #[derive(Deserialize)]
        struct Committed {
            #[serde(rename = "Id")]
            id: String,
        }
        let path = format!(
            "/commit?container={}&repo={}&tag={}&pause=1",
            encode_component(id),
            encode_component(repo),
            encode_component(tag)
        );
        let body = json!({ "Labels": labels });
        let (_, bytes) = self.call("POST", &path, Some(Body::Json(body)), &[201], Some(timeout))?;
        let committed: Committed = serde_json::from_slice(&bytes)
            .map_err(|error| DockerError::Protocol(format!("commit: {error}")))?;
        Ok(committed.id)
    }

    /// Creates the named volume with `labels` (the local driver); one of that name
    /// already there is kept as it is (the engine's own rule).
    pub fn volume_create(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let body = json!({ "Name": name, "Labels": labels });
        self.call(
            "POST",
            "/volumes/create",
            Some(Body::Json(body)),
            &[201],
            Some(self.timeout),
        )
        .map(|_| ())
    }

    /// A volume's labels; a missing one is `is_not_found`.
    pub fn volume_inspect(&self, name: &str) -> Result<VolumeInfo> {
        let path = format!("/volumes/{}", encode_component(name));
        self.call_json("GET", &path, None, &[200])
    }

    /// Every volume carrying all of the `key=value` labels.
    pub fn volume_list(&self, labels: &[String]) -> Result<Vec<VolumeInfo>> {
        #[derive(Deserialize)]
        struct Listed {
            #[serde(rename = "Volumes")]
            volumes: Option<Vec<VolumeInfo>>,
        }
        let filters = json!({ "label": labels }).to_string();
        let path = format!("/volumes?filters={}", encode_component(&filters));
        let listed: Listed = self.call_json("GET", &path, None, &[200])?;
        Ok(listed.volumes.unwrap_or_default())
    }

    /// A network's labels and driver options; a missing one is `is_not_found`.
    pub fn network_inspect(&self, name: &str) -> Result<NetworkInfo> {
        let path = format!("/networks/{}", encode_component(name));
        self.call_json("GET", &path, None, &[200])
    }

    /// Creates a bridge network without IPv6, with driver `options` and `labels`; one of
    /// that name made meanwhile is `is_conflict`.
    pub fn network_create(
        &self,
        name: &str,
        options: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.network_create_with(name, options, labels, None)
    }

    /// `network_create` with a subnet of our choosing (and its first address as the
    /// gateway): containers may then be given fixed addresses in it.
    pub fn network_create_with(
        &self,
        name: &str,
        options: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
        subnet: Option<(&str, &str)>,
    ) -> Result<()> {
        let mut body = json!({
            "Name": name,
            "CheckDuplicate": true,
            "Driver": "bridge",
            "EnableIPv6": false,
            "Internal": false,
            "Attachable": false,
            "Options": options,
            "Labels": labels,
        });
        if let Some((subnet, gateway)) = subnet {
            body["IPAM"] = json!({
                "Driver": "default",
                "Config": [{ "Subnet": subnet, "Gateway": gateway }],
            });
        }
        self.call(
            "POST",
            "/networks/create",
            Some(Body::Json(body)),
            &[201],
            Some(self.timeout),
        )
        .map(|_| ())
    }

    /// Removes a volume; one a container uses is refused (`is_conflict`), never forced.
    pub fn volume_remove(&self, name: &str) -> Result<()> {
        let path = format!("/volumes/{}", encode_component(name));
        self.call("DELETE", &path, None, &[204], Some(self.timeout))
            .map(|_| ())
    }

    /// Creates a container; returns its id.
    pub fn container_create(&self, spec: &ContainerSpec) -> Result<String> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "Id")]
            id: String,
        }
        let path = match &spec.name {
            Some(name) => format!("/containers/create?name={}", encode_component(name)),
            None => "/containers/create".to_string(),
        };
        let created: Created =
            self.call_json("POST", &path, Some(Body::Json(create_body(spec))), &[201])?;
        Ok(created.id)
    }

    pub fn container_start(&self, id: &str) -> Result<()> {
        let path = format!("/containers/{}/start", encode_component(id));
        self.call("POST", &path, None, &[204, 304], Some(self.timeout))
            .map(|_| ())
    }

    /// Sets the restart policy to `always` or `no`. A container whose policy is
    /// `always` is started again by the engine when the engine itself starts (after a
    /// crash or a reboot); a stopped one stays stopped only with `no`.
    pub fn container_set_restart(&self, id: &str, always: bool) -> Result<()> {
        let path = format!("/containers/{}/update", encode_component(id));
        let body = json!({ "RestartPolicy": restart_policy(always) });
        self.call(
            "POST",
            &path,
            Some(Body::Json(body)),
            &[200],
            Some(self.timeout),
        )
        .map(|_| ())
    }

    /// One reading of a container's resource use: the engine samples twice, a second
    /// apart, so that CPU use is a rate. `None` when the container stopped or went
    /// while the engine sampled (`ContainerStats::parse`).
    pub fn container_stats(&self, id: &str) -> Result<Option<ContainerStats>> {
        let path = format!("/containers/{}/stats?stream=false", encode_component(id));
        let (_, bytes) = self.call("GET", &path, None, &[200], Some(self.timeout))?;
        ContainerStats::parse(&bytes)
            .map_err(|error| DockerError::Protocol(format!("GET {path}: {error}")))
    }

    /// Freezes every process of the container (the cgroup freezer); memory is kept.
    pub fn container_pause(&self, id: &str) -> Result<()> {
        let path = format!("/containers/{}/pause", encode_component(id));
        self.call("POST", &path, None, &[204], Some(self.timeout))
            .map(|_| ())
    }

    pub fn container_unpause(&self, id: &str) -> Result<()> {
        let path = format!("/containers/{}/unpause", encode_component(id));
        self.call("POST", &path, None, &[204], Some(self.timeout))
            .map(|_| ())
    }

    /// Stops (SIGTERM, then SIGKILL after `grace_seconds`); already stopped is fine.
    pub fn container_stop(&self, id: &str, grace_seconds: u32) -> Result<()> {
        let path = format!(
            "/containers/{}/stop?t={grace_seconds}",
            encode_component(id)
        );
        let timeout = self.timeout + Duration::from_secs(grace_seconds.into());
        self.call("POST", &path, None, &[204, 304], Some(timeout))
            .map(|_| ())
    }

    /// Sends SIGKILL; a container that is not running is not an error.
    pub fn container_kill(&self, id: &str) -> Result<()> {
        let path = format!("/containers/{}/kill?signal=SIGKILL", encode_component(id));
        match self.call("POST", &path, None, &[204], Some(self.timeout)) {
            Ok(_) => Ok(()),
            Err(error) if error.is_conflict() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Waits until the container is not running; returns its exit code.
    pub fn container_wait(&self, id: &str, timeout: Duration) -> Result<i64> {
        #[derive(Deserialize)]
        struct Waited {
            #[serde(rename = "StatusCode")]
            status_code: i64,
        }
        let path = format!("/containers/{}/wait", encode_component(id));
        let (_, bytes) = self.call("POST", &path, None, &[200], Some(timeout))?;
        let waited: Waited = serde_json::from_slice(&bytes)
            .map_err(|error| DockerError::Protocol(format!("wait: {error}")))?;
        Ok(waited.status_code)
    }

    /// Force-removes a container and its anonymous volumes; already gone is fine.
    pub fn container_remove(&self, id: &str) -> Result<()> {
        let path = format!("/containers/{}?force=1&v=1", encode_component(id));
        match self.call("DELETE", &path, None, &[204], Some(self.timeout)) {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(DockerError::Api {
                status: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(DockerError::ContainerRemoving(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    pub fn container_inspect(&self, id: &str) -> Result<ContainerInspect> {
        let path = format!("/containers/{}/json", encode_component(id));
        self.call_json("GET", &path, None, &[200])
    }

    /// All containers (running or not) carrying every one of the `key=value` labels.
    pub fn container_list(&self, labels: &[String]) -> Result<Vec<ContainerSummary>> {
        self.container_list_within(labels, self.timeout)
    }

    /// `container_list`, answered within `timeout` (a scrape must not wait for a slow
    /// engine as long as a request does).
    pub fn container_list_within(
        &self,
        labels: &[String],
        timeout: Duration,
    ) -> Result<Vec<ContainerSummary>> {
        let filters = json!({ "label": labels }).to_string();
        let path = format!(
            "/containers/json?all=1&filters={}",
            encode_component(&filters)
        );
        let (_, bytes) = self.call("GET", &path, None, &[200], Some(timeout))?;
        serde_json::from_slice(&bytes)
            .map_err(|error| DockerError::Protocol(format!("GET {path}: {error}")))
    }

    /// Attaches to a created container's streams (before start, so nothing is missed).
    pub fn container_attach(&self, id: &str, with_stdin: bool) -> Result<Hijacked> {
        let stdin = if with_stdin { "&stdin=1" } else { "" };
        let path = format!(
            "/containers/{}/attach?stream=1&stdout=1&stderr=1{stdin}",
            encode_component(id)
        );
        self.hijack(&path, None)
    }

    pub fn exec_create(&self, container: &str, spec: &ExecSpec) -> Result<String> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "Id")]
            id: String,
        }
        let body = json!({
            "AttachStdin": spec.attach_stdin,
            "AttachStdout": true,
            "AttachStderr": true,
            "Tty": false,
            "Cmd": spec.cmd,
            "Env": spec.env,
            "WorkingDir": spec.working_dir.clone().unwrap_or_default(),
            "User": spec.user.clone().unwrap_or_default(),
        });
        let path = format!("/containers/{}/exec", encode_component(container));
        let created: Created = self.call_json("POST", &path, Some(Body::Json(body)), &[201])?;
        Ok(created.id)
    }

    pub fn exec_start(&self, exec_id: &str) -> Result<Hijacked> {
        let path = format!("/exec/{}/start", encode_component(exec_id));
        self.hijack(&path, Some(json!({"Detach": false, "Tty": false})))
    }

    /// Starts an exec that nobody attaches to: the engine answers at once, and the
    /// process runs on with its output discarded.
    pub fn exec_start_detached(&self, exec_id: &str) -> Result<()> {
        let path = format!("/exec/{}/start", encode_component(exec_id));
        let body = Body::Json(json!({"Detach": true, "Tty": false}));
        self.call("POST", &path, Some(body), &[200], Some(self.timeout))
            .map(|_| ())
    }

    /// The container's processes as the host sees them (`ps -ef` columns: `UID`, `PID`,
    /// `PPID`, ..., `CMD`), one map per process.
    pub fn container_top(&self, id: &str) -> Result<Vec<BTreeMap<String, String>>> {
        #[derive(Deserialize)]
        struct Top {
            #[serde(rename = "Titles")]
            titles: Vec<String>,
            #[serde(rename = "Processes")]
            processes: Option<Vec<Vec<String>>>,
        }
        let path = format!("/containers/{}/top", encode_component(id));
        let top: Top = self.call_json("GET", &path, None, &[200])?;
        Ok(top
            .processes
            .unwrap_or_default()
            .into_iter()
            .map(|row| top.titles.iter().cloned().zip(row).collect())
            .collect())
    }

    pub fn exec_inspect(&self, exec_id: &str) -> Result<ExecInspect> {
        let path = format!("/exec/{}/json", encode_component(exec_id));
        self.call_json("GET", &path, None, &[200])
    }

    /// Downloads `path` as a tar archive (at most `max_bytes` of it).
    pub fn archive_get(&self, id: &str, path: &str, max_bytes: u64) -> Result<Vec<u8>> {
        let full_path = format!(
            "{}/containers/{}/archive?path={}",
            self.prefix()?,
            encode_component(id),
            encode_component(path)
        );
        let io_error = |source| DockerError::Io {
            operation: "GET archive".into(),
            source,
        };
        let mut stream = self.connect(Some(self.timeout))?;
        write_request(
            &mut stream,
            "GET",
            &full_path,
            &[("Connection", "close")],
            None,
        )
        .map_err(io_error)?;
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader).map_err(io_error)?;
        let framing = body_framing("GET", &head).map_err(io_error)?;
        let bytes = read_body(&mut reader, framing, max_bytes).map_err(io_error)?;
        if head.status == 200 {
            Ok(bytes)
        } else {
            Err(DockerError::from_answer(head.status, &bytes))
        }
    }

    /// Describes `path` in the container's filesystem as the engine sees it (the rootfs
    /// and volumes, not tmpfs mounts); `None` when it does not exist.
    pub fn archive_stat(&self, id: &str, path: &str) -> Result<Option<PathStat>> {
        let path = format!(
            "/containers/{}/archive?path={}",
            encode_component(id),
            encode_component(path)
        );
        let (head, _) = match self.call("HEAD", &path, None, &[200], Some(self.timeout)) {
            Ok(answer) => answer,
            Err(error) if error.is_not_found() => return Ok(None),
            Err(error) => return Err(error),
        };
        let header = head
            .header("x-docker-container-path-stat")
            .ok_or_else(|| DockerError::Protocol("HEAD archive without a path stat".into()))?;
        PathStat::from_header(header).map(Some)
    }

    /// Extracts a tar archive into the existing directory `dir`. A member may not replace
    /// a directory with a file or the other way round (`noOverwriteDirNonDir`): without
    /// that flag, a file named like an existing directory would delete the directory.
    pub fn archive_put(&self, id: &str, dir: &str, tar: &[u8]) -> Result<()> {
        let path = format!(
            "/containers/{}/archive?noOverwriteDirNonDir=1&path={}",
            encode_component(id),
            encode_component(dir)
        );
        self.call(
            "PUT",
            &path,
            Some(Body::Raw("application/x-tar", tar)),
            &[200],
            Some(self.timeout),
        )
        .map(|_| ())
    }

    /// Sends an upgrade request and hands back the raw connection. Stream reads have no
    /// timeout until the caller sets one: a command may legitimately stay silent.
    fn hijack(&self, path: &str, body: Option<Value>) -> Result<Hijacked> {
        let full_path = format!("{}{path}", self.prefix()?);
        let io_error = |source| DockerError::Io {
            operation: format!("POST {}", path.split('?').next().unwrap_or(path)),
            source,
        };
        let mut stream = self.connect(Some(self.timeout))?;
        let json_bytes = body.map(|value| serde_json::to_vec(&value).expect("JSON serializes"));
        let headers = [("Connection", "Upgrade"), ("Upgrade", "tcp")];
        let request_body = json_bytes
            .as_deref()
            .map(|bytes| ("application/json", bytes));
        write_request(&mut stream, "POST", &full_path, &headers, request_body).map_err(io_error)?;
        let writer = stream.try_clone().map_err(io_error)?;
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader).map_err(io_error)?;
        if head.status != 101 && head.status != 200 {
            let framing = body_framing("POST", &head).map_err(io_error)?;
            let bytes = read_body(&mut reader, framing, 64 * 1024).unwrap_or_default();
            return Err(DockerError::from_answer(head.status, &bytes));
        }
        writer.set_read_timeout(None).map_err(io_error)?;
        Ok(Hijacked {
            frames: FrameReader::new(reader),
            stdin: writer,
        })
    }
}

fn create_body(spec: &ContainerSpec) -> Value {
    let host = &spec.host;
    let host_config = json!({
        "Memory": host.memory_bytes,
        // Equal to Memory: no swap on top of the limit.
        "MemorySwap": host.memory_bytes,
        "NanoCpus": host.nano_cpus,
        "PidsLimit": host.pids_limit,
        "NetworkMode": host.network_mode,
        "ReadonlyRootfs": host.read_only_root,
        "CapDrop": ["ALL"],
        "CapAdd": host.cap_add,
        "SecurityOpt": ["no-new-privileges"],
        "Privileged": false,
        "Tmpfs": host.tmpfs,
        "Mounts": host.read_only_mounts.iter().map(|(source, target)| json!({
            "Type": "bind",
            "Source": source,
            "Target": target,
            "ReadOnly": true,
        })).chain(host.volumes.iter().map(|volume| json!({
            "Type": "volume",
            "Source": volume.name,
            "Target": volume.target,
            "ReadOnly": false,
            "VolumeOptions": { "Labels": volume.labels },
        }))).collect::<Vec<Value>>(),
        "Init": host.init,
        "AutoRemove": spec.auto_remove,
        "RestartPolicy": restart_policy(spec.restart_always),
        // Output comes through attach and exec: the engine keeps no log of it (a log
        // file on the engine's disk would be a write no quota bounds).
        "LogConfig": { "Type": "none" },
    });
    let mut host_config = host_config;
    if !host.sysctls.is_empty() {
        host_config["Sysctls"] = json!(host.sysctls);
    }
    if let Some(size_mb) = host.storage_size_mb {
        host_config["StorageOpt"] = json!({ "size": format!("{size_mb}M") });
    }
    if let Some(runtime) = &host.runtime {
        host_config["Runtime"] = json!(runtime);
    }
    if !host.dns.is_empty() {
        host_config["Dns"] = json!(host.dns);
    }
    let mut body = json!({
        "Image": spec.image,
        "Labels": spec.labels,
        "Env": spec.env,
        "Tty": false,
        "OpenStdin": spec.open_stdin,
        "StdinOnce": spec.open_stdin && !spec.stdin_stays_open,
        "AttachStdin": spec.open_stdin,
        "AttachStdout": true,
        "AttachStderr": true,
        "HostConfig": host_config,
    });
    if let Some(hostname) = &host.hostname {
        body["Hostname"] = json!(hostname);
    }
    if let Some(address) = &host.ipv4_address {
        body["NetworkingConfig"] = json!({
            "EndpointsConfig": {
                host.network_mode.clone(): { "IPAMConfig": { "IPv4Address": address } },
            },
        });
    }
    if let Some(entrypoint) = &spec.entrypoint {
        body["Entrypoint"] = json!(entrypoint);
    }
    if let Some(cmd) = &spec.cmd {
        body["Cmd"] = json!(cmd);
    }
    if let Some(dir) = &spec.working_dir {
        body["WorkingDir"] = json!(dir);
    }
    if let Some(user) = &spec.user {
        body["User"] = json!(user);
    }
    if let Some(seconds) = spec.stop_timeout_seconds {
        body["StopTimeout"] = json!(seconds);
    }
    body
}

fn restart_policy(always: bool) -> Value {
    json!({ "Name": if always { "always" } else { "no" } })
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether a runtime's name is gVisor's (`runsc`, or a variant `runsc-...`); the engine's
/// info may say so of others (`containers::runtime::is_gvisor`).
pub fn is_gvisor_name(name: Option<&str>) -> bool {
    name.is_some_and(|name| name == "runsc" || name.starts_with("runsc-"))
}

/// A runtime's name as the engine takes one (letters, digits, `.`, `_`, `-`; at most
/// 64).
pub fn valid_runtime_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Percent-encodes everything but unreserved characters, for paths and query values.
pub fn encode_component(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Reads a hijacked stream to its end, passing each frame to `sink`; used where the
/// caller needs no incremental control.
pub fn drain_frames(
    frames: &mut FrameReader<impl Read>,
    mut sink: impl FnMut(frames::StreamKind, &[u8]),
) -> io::Result<()> {
    let mut payload = Vec::new();
    while let Some(kind) = frames.next_frame(&mut payload)? {
        sink(kind, &payload);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_query_components() {
        assert_eq!(encode_component("ab-c_1.~"), "ab-c_1.~");
        assert_eq!(
            encode_component("{\"label\":[\"a=b c\"]}"),
            "%7B%22label%22%3A%5B%22a%3Db%20c%22%5D%7D"
        );
        assert_eq!(encode_component("repo/x:1@sha"), "repo%2Fx%3A1%40sha");
    }

    #[test]
    fn reads_docker_host() {
        assert_eq!(
            Docker::socket_from_env(None).unwrap(),
            PathBuf::from("/var/run/docker.sock")
        );
        assert_eq!(
            Docker::socket_from_env(Some("unix:///tmp/d.sock")).unwrap(),
            PathBuf::from("/tmp/d.sock")
        );
        assert!(Docker::socket_from_env(Some("tcp://1.2.3.4:2375")).is_err());
    }

    #[test]
    fn negotiates_down_to_the_older_side() {
        assert_eq!(parse_version("1.41"), Some((1, 41)));
        assert_eq!(parse_version("1.52").unwrap().min(CLIENT_MAX_API), (1, 47));
        assert_eq!(parse_version("x"), None);
    }

    #[test]
    fn create_body_turns_swap_off_and_drops_capabilities() {
        let spec = ContainerSpec {
            image: "img:1".into(),
            host: HostSettings {
                memory_bytes: 256 << 20,
                network_mode: "none".into(),
                sysctls: BTreeMap::from([("net.ipv6.conf.all.disable_ipv6".into(), "1".into())]),
                ..HostSettings::default()
            },
            ..ContainerSpec::default()
        };
        let body = create_body(&spec);
        assert_eq!(body["HostConfig"]["MemorySwap"], json!(256 << 20));
        assert_eq!(body["HostConfig"]["RestartPolicy"], json!({"Name": "no"}));
        assert_eq!(body["HostConfig"]["CapDrop"], json!(["ALL"]));
        assert_eq!(body["HostConfig"]["NetworkMode"], json!("none"));
        assert_eq!(
            body["HostConfig"]["Sysctls"],
            json!({"net.ipv6.conf.all.disable_ipv6": "1"})
        );
        assert_eq!(body["HostConfig"]["Privileged"], json!(false));
        assert!(body.get("Entrypoint").is_none());
        let spec = ContainerSpec {
            host: HostSettings {
                read_only_mounts: vec![("/opt/a:b,c".into(), "/.x/y".into())],
                volumes: vec![VolumeMount {
                    name: "ak_ns_v".into(),
                    target: "/data".into(),
                    labels: BTreeMap::from([("k".to_string(), "v".to_string())]),
                }],
                ..HostSettings::default()
            },
            ..ContainerSpec::default()
        };
        assert!(body.get("StopTimeout").is_none());
        let always = ContainerSpec {
            restart_always: true,
            stop_timeout_seconds: Some(1),
            ..ContainerSpec::default()
        };
        assert_eq!(
            create_body(&always)["HostConfig"]["RestartPolicy"],
            json!({"Name": "always"})
        );
        assert_eq!(create_body(&always)["StopTimeout"], json!(1));
        assert_eq!(
            create_body(&spec)["HostConfig"]["Mounts"],
            json!([
                {"Type": "bind", "Source": "/opt/a:b,c", "Target": "/.x/y", "ReadOnly": true},
                {"Type": "volume", "Source": "ak_ns_v", "Target": "/data", "ReadOnly": false,
                 "VolumeOptions": {"Labels": {"k": "v"}}}
            ])
        );
    }

    #[test]
    fn path_stat_headers_decode_go_file_modes() {
        let header = |json: &str| crate::codec::base64::encode(json.as_bytes());
        let file = r#"{"name":"hello.txt","size":12,"mode":420,"mtime":"2023-11-14T22:13:20Z","linkTarget":""}"#;
        assert_eq!(
            PathStat::from_header(&header(file)).unwrap(),
            PathStat {
                kind: PathKind::File,
                size: 12
            }
        );
        let dir = r#"{"name":"etc","size":4096,"mode":2147484141,"linkTarget":""}"#;
        assert_eq!(
            PathStat::from_header(&header(dir)).unwrap().kind,
            PathKind::Directory
        );
        let link = r#"{"name":"sh","size":7,"mode":134218239,"linkTarget":"/bin/busybox"}"#;
        assert_eq!(
            PathStat::from_header(&header(link)).unwrap().kind,
            PathKind::Symlink("/bin/busybox".into())
        );
        // A named pipe: 1<<25 | 0644.
        let fifo = format!(r#"{{"name":"p","size":0,"mode":{}}}"#, (1u64 << 25) | 0o644);
        assert_eq!(
            PathStat::from_header(&header(&fifo)).unwrap().kind,
            PathKind::Other
        );
        assert!(PathStat::from_header("not base64!").is_err());
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn stats_read_as_docker_stats_shows_them() {
        // Two samples a second apart, from an engine on a 2-CPU host (cgroup v1), as
        // the engine sends them (fields we do not read left out).
        let body = br#"{"read":"2026-11-30T04:50:00Z",
            "cpu_stats":{"cpu_usage":{"total_usage":3500000000},"system_cpu_usage":202000000000,"online_cpus":2},
            "precpu_stats":{"cpu_usage":{"total_usage":3000000000},"system_cpu_usage":200000000000,"online_cpus":2},
            "memory_stats":{"usage":10485760,"limit":536870912,"stats":{"total_inactive_file":2097152,"cache":4194304}},
            "pids_stats":{"current":3},
            "networks":{"eth0":{"rx_bytes":100,"tx_bytes":40},"eth1":{"rx_bytes":1,"tx_bytes":2}},
            "blkio_stats":{"io_service_bytes_recursive":[{"major":8,"minor":0,"op":"Read","value":4096},
                {"major":8,"minor":0,"op":"Write","value":8192},{"major":8,"minor":0,"op":"Total","value":12288}]}}"#;
        let stats: ContainerStats = serde_json::from_slice(body).unwrap();
        // 0.5 s of CPU in 2 s of host CPU time on 2 CPUs: half a CPU.
        assert_eq!(stats.cpu_percent_of(1.0), 50.0);
        assert_eq!(stats.cpu_percent_of(0.5), 100.0);
        assert_eq!(stats.cpu_percent_of(0.0), 25.0, "no limit: of the host");
        assert_eq!(stats.memory_used(), 10485760 - 2097152);
        assert_eq!(stats.block_bytes("read"), 4096);
        assert_eq!(stats.block_bytes("write"), 8192);
        assert_eq!(
            stats.networks.values().map(|n| n.rx_bytes).sum::<u64>(),
            101
        );
        // A container that just started has no earlier sample, and cgroup v2 engines
        // send null for the block I/O list.
        let fresh: ContainerStats = serde_json::from_slice(
            br#"{"cpu_stats":{"cpu_usage":{"total_usage":5},"system_cpu_usage":0},"precpu_stats":{},
                "memory_stats":{},"pids_stats":{},"blkio_stats":{"io_service_bytes_recursive":null}}"#,
        )
        .unwrap();
        assert_eq!(fresh.cpu_percent_of(1.0), 0.0);
        assert_eq!(fresh.block_bytes("read"), 0);
    }

    #[test]
    fn stats_of_a_container_that_stopped_or_went_while_sampled_are_no_reading() {
        let parse = |body: &[u8]| ContainerStats::parse(body).unwrap();
        // Removed while the engine sampled: 200 with an empty body (measured, 20.10).
        assert!(parse(b"").is_none());
        // Killed while it sampled: a reading stamped with Go's zero time, all zeros.
        let stopped = br#"{"read":"0001-01-01T00:00:00Z","preread":"2026-11-30T21:10:21.285781222Z",
            "pids_stats":{},"blkio_stats":{"io_service_bytes_recursive":null},"num_procs":0,
            "storage_stats":{},"cpu_stats":{"cpu_usage":{"total_usage":0},"throttling_data":{"periods":0}},
            "precpu_stats":{"cpu_usage":{"total_usage":29909789},"system_cpu_usage":401460000000,"online_cpus":2},
            "memory_stats":{},"name":"/optimistic_turing","id":"fef055bd4da0"}"#;
        assert!(parse(stopped).is_none());
        let live = parse(br#"{"read":"2026-11-30T04:50:00Z","pids_stats":{"current":3}}"#);
        assert_eq!(live.unwrap().pids_stats.current, 3);
        assert!(
            ContainerStats::parse(b"{").is_err(),
            "anything else is an error"
        );
    }
}
