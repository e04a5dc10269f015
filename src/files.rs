//! Files inside a sandbox: read, write (one or many) and delete, by absolute path.
//!
//! Reads and writes go through the Engine's archive endpoints (a tar out, a tar in,
//! built and read by `tar.rs`), which work on stopped sandboxes too. Those endpoints see
//! only the container's root filesystem and volumes: a tmpfs mount (`/tmp` where the
//! root is read-only, `/dev/shm`), `/proc`, `/sys`, `/dev` and the engine's
//! bind-mounted `/etc/hosts` files
//! exist only inside the running container, and an upload there "succeeds" into the
//! directory hidden under the mount. Such paths, and every delete (the archive API has
//! none), go through the in-container stub instead (`stub --cat/--untar/--rm`, run by
//! `docker exec` as the sandbox's own user), which needs the sandbox running.
//!
//! Invariants: a `SandboxPath` is absolute, normalised (no empty, `.` or `..`
//! segments), free of NUL and bounded, so nothing below re-checks it; no file larger
//! than `Config::max_file_bytes` is buffered, decided from the stat size, the tar
//! header or the stub's own check before its data moves; what a read buffers is taken
//! from the request's output budget first (from the stat's size before the download,
//! or as the stub's bytes arrive), so that reads held at once stay within the output
//! memory; a batch write is one archive
//! upload and at most one stub exec, whatever the number of files; archive uploads
//! never replace a directory with a file (`noOverwriteDirNonDir`). This module knows no
//! HTTP status codes.
//!
//! Known limits: a batch is not atomic (a failure can leave earlier files written);
//! the tmpfs check is lexical, so a rootfs symlink into `/tmp` used as a parent
//! directory of a write is not followed; sandboxes created without the stub answer
//! paths on a tmpfs and deletes with `Error::Invalid`.

use std::collections::HashSet;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::codec::tar::{self, EntryKind, FileEntry, TarError};
use crate::config::Config;
use crate::containers::labels::{self, SandboxName};
use crate::containers::profile::numeric_owner;
use crate::engine::{Docker, DockerError, PathKind};
use crate::error::{Error, Result};
use crate::exec::{CommandResult, CommandSpec, Cut, KeepWithin, NoObserver, OutputBudget};
use crate::sandbox::{exec_in, ExecTarget, SocketRoute, Via};
use crate::stub::{self, file_exit};

/// Linux's PATH_MAX and NAME_MAX: no longer path can be opened anyway.
const MAX_PATH_BYTES: usize = 4096;
const MAX_SEGMENT_BYTES: usize = 255;
/// How many symlinks a read follows on the archive path, like a small ELOOP bound.
const MAX_SYMLINK_HOPS: usize = 8;
/// Room in a downloaded tar for headers, PAX records and padding around the data.
const TAR_OVERHEAD_BYTES: u64 = 1024 * 1024 + 64 * 1024;
/// Bound on the stub's stderr and on the stdout of operations that print nothing.
const STUB_MESSAGE_BYTES: u64 = 64 * 1024;
/// Mode of written files: what a shell's `umask 022` gives.
const FILE_MODE: u32 = 0o644;

/// Mounts every container has that the archive endpoints do not see, besides the
/// sandbox's own tmpfs mounts (read from inspect).
const CONTAINER_ONLY_MOUNTS: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/.agentkernel",
];

/// An absolute, normalised path inside a sandbox: `/` followed by segments that are
/// neither empty, `.` nor `..`, with no NUL, at most 4096 bytes (segments at most 255).
/// Never the root itself: files are what this API reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SandboxPath(String);

impl SandboxPath {
    /// Takes `text` as absolute whether or not it starts with `/` (clients send both),
    /// collapses empty segments, drops `.` segments and refuses `..`.
    pub fn parse(text: &str) -> std::result::Result<SandboxPath, String> {
        let shown = text.escape_debug();
        if text.contains('\0') {
            return Err(format!(
                "invalid file path '{shown}': it contains a NUL byte"
            ));
        }
        let mut normalized = String::with_capacity(text.len() + 1);
        for segment in text.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    return Err(format!(
                        "invalid file path '{shown}': '..' segments are not allowed"
                    ))
                }
                _ if segment.len() > MAX_SEGMENT_BYTES => {
                    return Err(format!(
                        "invalid file path '{shown}': a segment is longer than \
                         {MAX_SEGMENT_BYTES} bytes"
                    ))
                }
                _ => {
                    normalized.push('/');
                    normalized.push_str(segment);
                }
            }
        }
        if normalized.is_empty() {
            return Err(format!(
                "invalid file path '{shown}': it names the root directory, not a file"
            ));
        }
        if normalized.len() > MAX_PATH_BYTES {
            return Err(format!(
                "invalid file path: longer than {MAX_PATH_BYTES} bytes"
            ));
        }
        Ok(SandboxPath(normalized))
    }

    /// The raw (percent-encoded) URL path after `/files/`, decoded, then `parse`d.
    pub fn from_url(encoded: &str) -> std::result::Result<SandboxPath, String> {
        SandboxPath::parse(&percent_decode(encoded)?)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path without its leading `/`: the tar member name for an extraction at `/`.
    fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// Whether this path is `mount` or lies below it.
    fn is_within(&self, mount: &str) -> bool {
        let mount = mount.trim_end_matches('/');
        mount.is_empty()
            || self.0 == mount
            || (self.0.starts_with(mount) && self.0.as_bytes()[mount.len()] == b'/')
    }

    /// Where a symlink at this path leads: `target` taken relative to this path's
    /// directory unless absolute, with `.` and `..` resolved lexically (`..` stops at
    /// the root, as the kernel's does). `None` when it leads to the root.
    fn follow(&self, target: &str) -> Option<SandboxPath> {
        let parent = &self.0[..self.0.rfind('/').unwrap_or(0)];
        let joined = if target.starts_with('/') {
            target.to_string()
        } else {
            format!("{parent}/{target}")
        };
        let mut segments: Vec<&str> = Vec::new();
        for segment in joined.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                other => segments.push(other),
            }
        }
        SandboxPath::parse(&segments.join("/")).ok()
    }
}

impl fmt::Display for SandboxPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(text: &str) -> std::result::Result<String, String> {
    let hex = |byte: u8| match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let pair = bytes
                .get(index + 1)
                .copied()
                .and_then(hex)
                .zip(bytes.get(index + 2).copied().and_then(hex));
            let Some((high, low)) = pair else {
                return Err(format!(
                    "invalid file path '{}': '%' must start a %XX escape",
                    text.escape_debug()
                ));
            };
            decoded.push(high << 4 | low);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| {
        format!(
            "invalid file path '{}': not UTF-8 once percent-decoded",
            text.escape_debug()
        )
    })
}

/// What the file operations need to know about a sandbox's container.
struct Container<'a> {
    name: &'a SandboxName,
    id: String,
    running: bool,
    has_stub: bool,
    read_only_root: bool,
    profile: String,
    /// Mount points of its tmpfs mounts.
    tmpfs: Vec<String>,
    /// Numeric owner for archive uploads: the configured user when numeric, else root.
    uid: u32,
    gid: u32,
    /// `Config::max_file_bytes`.
    limit: u64,
    /// Its exec socket, for the stub's operations.
    route: Option<SocketRoute>,
    /// Its init's pid (0 when it does not run).
    init_pid: i64,
}

impl<'a> Container<'a> {
    fn open(docker: &Docker, config: &Config, name: &'a SandboxName) -> Result<Container<'a>> {
        let inspect = crate::sandbox::inspect_ours(docker, config, name)?;
        // Frozen: nothing in it answers, and its files are held as they were.
        if inspect.state.paused {
            return Err(Error::SandboxPaused(name.to_string()));
        }
        // A stopped one's files are its disk's (mounted again after an engine restart).
        if !inspect.state.running {
            crate::containers::disk::ensure(docker, &inspect.id)?;
        }
        let has_stub = crate::sandbox::has_stub(&inspect);
        let route = crate::sandbox::socket_route(config, &inspect);
        let labels = inspect.config.labels.unwrap_or_default();
        let (uid, gid) = numeric_owner(&inspect.config.user);
        Ok(Container {
            name,
            id: inspect.id,
            running: inspect.state.running,
            has_stub,
            read_only_root: inspect.host_config.readonly_rootfs,
            profile: labels.get(labels::PROFILE).cloned().unwrap_or_default(),
            tmpfs: inspect
                .host_config
                .tmpfs
                .unwrap_or_default()
                .into_keys()
                .collect(),
            uid,
            gid,
            limit: config.max_file_bytes,
            route,
            init_pid: inspect.state.pid,
        })
    }

    /// Whether only the running container sees `path` (the archive endpoints do not).
    fn container_only(&self, path: &SandboxPath) -> bool {
        let mounts = self.tmpfs.iter().map(String::as_str);
        mounts
            .chain(CONTAINER_ONLY_MOUNTS.iter().copied())
            .any(|mount| path.is_within(mount))
    }

    /// The stub can reach `path` now: the sandbox runs and has the stub mounted.
    fn require_stub(&self, path: &SandboxPath) -> Result<()> {
        if !self.has_stub {
            return Err(Error::Invalid(format!(
                "'{path}' can only be reached inside the running container (a tmpfs path, or \
                 a delete), which is not supported for sandbox '{}': it was created without \
                 the agentkernel stub",
                self.name
            )));
        }
        if !self.running {
            return Err(self.needs_running(path));
        }
        Ok(())
    }

    fn needs_running(&self, path: &SandboxPath) -> Error {
        Error::FileNeedsRunning {
            sandbox: self.name.to_string(),
            path: path.to_string(),
        }
    }

    fn not_found(&self, path: &str) -> Error {
        Error::FileNotFound {
            sandbox: self.name.to_string(),
            path: path.to_string(),
        }
    }

    fn read_only(&self, path: &str) -> Error {
        Error::ReadOnlyRoot {
            path: path.to_string(),
            profile: self.profile.clone(),
        }
    }

    /// Engine errors of an archive call on this container, in the sandbox's terms.
    fn engine_error(&self, error: Error, path: &SandboxPath) -> Error {
        match error {
            Error::Engine(DockerError::ContainerRemoving(_)) => {
                Error::SandboxNotFound(self.name.to_string())
            }
            Error::Engine(engine) if engine.is_not_found() => {
                Error::SandboxNotFound(self.name.to_string())
            }
            Error::Engine(engine) if engine.is_conflict() => self.needs_running(path),
            other => other,
        }
    }

    /// Runs `agentkernel stub ARGS...` by `docker exec`, as the container's user,
    /// through the one exec path into a sandbox (so a sandbox stopped or deleted under
    /// the operation is explained as such), and reads its outcome. `read` is for an
    /// operation that prints data: at most that many bytes of it, kept within that
    /// budget (others print only messages, bounded by `STUB_MESSAGE_BYTES`).
    fn stub_exec(
        &self,
        docker: &Docker,
        config: &Config,
        path: &SandboxPath,
        args: &[&str],
        stdin: Option<Vec<u8>>,
        read: Option<(u64, &OutputBudget)>,
    ) -> Result<CommandResult> {
        let mut argv = vec![stub::STUB_PATH.to_string(), "stub".to_string()];
        argv.extend(args.iter().map(|arg| arg.to_string()));
        let spec = CommandSpec::new(
            argv,
            Vec::new(),
            None,
            stdin,
            config.docker_timeout,
            read.map_or(0, |(max, _)| max).max(STUB_MESSAGE_BYTES),
        )
        .map_err(Error::Invalid)?;
        let target = ExecTarget {
            sandbox: self.name,
            container: &self.id,
            via: Via::StubOp,
            route: self.route.as_ref(),
            init_pid: self.init_pid,
        };
        let outcome = |result: CommandResult| self.stub_outcome(&result, path).map(|()| result);
        let run = |observer: &mut dyn crate::exec::Observer| {
            exec_in(docker, config, target, &spec, observer, outcome)
        };
        let result = match read {
            Some((_, budget)) => run(&mut KeepWithin::new(budget, None)),
            None => run(&mut NoObserver),
        };
        result.map_err(|error| match error {
            Error::SandboxNotRunning(_) => self.needs_running(path),
            other => other,
        })
    }

    /// The stub's exit code and `PATH<TAB>message` stderr line as a domain error.
    fn stub_outcome(&self, result: &CommandResult, requested: &SandboxPath) -> Result<()> {
        let code = match result.exit_code {
            Some(0) => return Ok(()),
            Some(code) => code,
            None => {
                return Err(Error::Engine(DockerError::Io {
                    operation: "stub file operation".into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the in-container stub did not finish in time",
                    ),
                }))
            }
        };
        let stderr = crate::exec::text(&result.stderr);
        let line = stderr.lines().next().unwrap_or_default();
        let (path, message) = line.split_once('\t').unwrap_or((requested.as_str(), line));
        let path = path.to_string();
        let on_root = SandboxPath::parse(&path).map_or(true, |p| !self.container_only(&p));
        Err(match i32::try_from(code).unwrap_or(file_exit::FAILED) {
            file_exit::NOT_FOUND => self.not_found(&path),
            file_exit::IS_DIRECTORY => Error::NotAFile {
                path,
                what: "a directory",
            },
            file_exit::NOT_REGULAR => Error::NotAFile {
                path,
                what: "a special file",
            },
            file_exit::TOO_LARGE => Error::FileTooLarge {
                path,
                limit: self.limit,
            },
            file_exit::PERMISSION_DENIED => Error::FileAccessDenied {
                path,
                reason: "permission denied for the sandbox's user".into(),
            },
            file_exit::NOT_A_DIRECTORY => Error::Invalid(format!(
                "Cannot reach '{path}': one of its parents is a file, not a directory"
            )),
            file_exit::READ_ONLY if self.read_only_root && on_root => self.read_only(&path),
            file_exit::READ_ONLY => Error::FileAccessDenied {
                path,
                reason: "it lies on a read-only filesystem".into(),
            },
            file_exit::NO_SPACE => Error::NoSpace { path },
            // Killed, by a stop of the sandbox or the kernel: the operation broke off.
            _ if code >= 128 => Error::RunLost(format!(
                "the in-container stub was killed (exit {code}) while working on '{path}'"
            )),
            _ => Error::Engine(DockerError::Protocol(format!(
                "the in-container stub failed on '{path}' (exit {code}): {}",
                if message.is_empty() {
                    "it said nothing"
                } else {
                    message
                }
            ))),
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The most a read takes from its budget: the engine's archive of the largest file,
/// and the content taken out of it.
pub fn read_memory_bound(config: &Config) -> u64 {
    config
        .max_file_bytes
        .saturating_mul(2)
        .saturating_add(TAR_OVERHEAD_BYTES)
}

/// Reads the regular file at `path`, following symlinks; what it buffers is taken from
/// `budget` first (`Error::OutputMemoryFull` when there is no room), and the content
/// stays counted there.
pub fn read_file(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
    path: &SandboxPath,
    budget: &OutputBudget,
) -> Result<Vec<u8>> {
    let container = Container::open(docker, config, name)?;
    let limit = config.max_file_bytes;
    let too_large = || Error::FileTooLarge {
        path: path.to_string(),
        limit,
    };
    let mut current = path.clone();
    for _ in 0..=MAX_SYMLINK_HOPS {
        if container.container_only(&current) {
            container.require_stub(path)?;
            let max = limit.to_string();
            let args = ["--cat", current.as_str(), &max];
            let result =
                container.stub_exec(docker, config, path, &args, None, Some((limit, budget)))?;
            if result.output.cut[0] == Some(Cut::RequestBudget) {
                return Err(Error::OutputMemoryFull {
                    limit: budget.memory_limit(),
                });
            }
            return Ok(result.stdout);
        }
        let stat = docker
            .archive_stat(&container.id, current.as_str())
            .map_err(|error| container.engine_error(error.into(), path))?
            .ok_or_else(|| container.not_found(path.as_str()))?;
        match stat.kind {
            PathKind::File if stat.size > limit => return Err(too_large()),
            PathKind::File => {
                // The archive and the content taken out of it, held for a moment
                // together: both are taken now, before anything is downloaded.
                let archive_bytes = stat.size + TAR_OVERHEAD_BYTES;
                take_all(budget, archive_bytes + stat.size)?;
                let archive = docker
                    .archive_get(&container.id, current.as_str(), limit + TAR_OVERHEAD_BYTES)
                    .map_err(|error| container.engine_error(error.into(), path))?;
                let entry =
                    tar::read_first_entry(&mut archive.as_slice(), limit).map_err(|error| {
                        match error {
                            TarError::TooLarge { .. } => too_large(),
                            other => Error::Engine(DockerError::Protocol(format!(
                                "the archive of '{path}': {other}"
                            ))),
                        }
                    })?;
                if entry.kind != EntryKind::File {
                    // Replaced between the stat and the download.
                    return Err(Error::NotAFile {
                        path: path.to_string(),
                        what: "not a regular file any more",
                    });
                }
                drop(archive);
                budget.release(archive_bytes);
                // A file that changed since its stat: count what it is now.
                let size = entry.data.len() as u64;
                if size > stat.size {
                    take_all(budget, size - stat.size)?;
                } else {
                    budget.release(stat.size - size);
                }
                return Ok(entry.data);
            }
            PathKind::Directory => {
                return Err(Error::NotAFile {
                    path: path.to_string(),
                    what: "a directory",
                })
            }
            PathKind::Other => {
                return Err(Error::NotAFile {
                    path: path.to_string(),
                    what: "a special file",
                })
            }
            PathKind::Symlink(target) => {
                current = current.follow(&target).ok_or_else(|| Error::NotAFile {
                    path: path.to_string(),
                    what: "a directory",
                })?;
            }
        }
    }
    Err(Error::Invalid(format!(
        "Cannot read '{path}': more than {MAX_SYMLINK_HOPS} symlinks lead from it"
    )))
}

/// Takes `bytes` from the budget, all of them, or fails the read.
fn take_all(budget: &OutputBudget, bytes: u64) -> Result<()> {
    if budget.take(bytes, 0) < bytes {
        return Err(Error::OutputMemoryFull {
            limit: budget.memory_limit(),
        });
    }
    Ok(())
}

/// Writes files (mode 0644, replacing what is there, parents created); returns how
/// many. Files on the root filesystem go in one archive upload, the others in one stub
/// exec; every size and precondition is checked before anything is written.
pub fn write_files(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
    files: &[(SandboxPath, Vec<u8>)],
) -> Result<usize> {
    let limit = config.max_file_bytes;
    if let Some((path, _)) = files.iter().find(|(_, data)| data.len() as u64 > limit) {
        return Err(Error::FileTooLarge {
            path: path.to_string(),
            limit,
        });
    }
    if files.is_empty() {
        return Ok(0);
    }
    let container = Container::open(docker, config, name)?;
    let (inside, on_root): (Vec<_>, Vec<_>) = files
        .iter()
        .partition(|(path, _)| container.container_only(path));
    if let Some((path, _)) = inside.first() {
        container.require_stub(path)?;
    }
    if let Some((path, _)) = on_root.first() {
        if container.read_only_root {
            return Err(container.read_only(path.as_str()));
        }
    }
    let mtime = unix_now();
    let archive_of = |files: &[&(SandboxPath, Vec<u8>)]| {
        let entries: Vec<FileEntry<'_>> = files
            .iter()
            .map(|(path, data)| FileEntry {
                name: path.relative(),
                data,
                mode: FILE_MODE,
                mtime,
                uid: container.uid,
                gid: container.gid,
            })
            .collect();
        tar::write_archive(&entries).map_err(|error| Error::Invalid(error.to_string()))
    };
    if !on_root.is_empty() {
        let archive = archive_of(&on_root)?;
        docker
            .archive_put(&container.id, "/", &archive)
            .map_err(|error| upload_error(&container, error, &on_root))?;
        let path = named_file(&on_root, None);
        crate::containers::disk::check_room(&container.id, &path)?;
    }
    if let Some((path, _)) = inside.first() {
        let archive = archive_of(&inside)?;
        let max = limit.to_string();
        let args = ["--untar", "/", &max];
        container.stub_exec(docker, config, path, &args, Some(archive), None)?;
    }
    log::debug!(
        "wrote {} files to sandbox {name} ({} through the stub)",
        files.len(),
        inside.len()
    );
    Ok(files.len())
}

/// An archive upload's failure, in the sandbox's terms.
fn upload_error(
    container: &Container<'_>,
    error: DockerError,
    files: &[&(SandboxPath, Vec<u8>)],
) -> Error {
    match error {
        error if error.is_not_found() => Error::SandboxNotFound(container.name.to_string()),
        DockerError::WouldReplaceDirectory { path } => Error::NotAFile {
            path: named_file(files, Some(&path)),
            what: "a directory",
        },
        DockerError::NotADirectory { path } => Error::Invalid(format!(
            "Cannot write '{}': one of its parents is a file, not a directory",
            named_file(files, Some(&path))
        )),
        DockerError::ReadOnlyFilesystem { path } => {
            container.read_only(&named_file(files, path.as_deref()))
        }
        other => Error::Engine(other),
    }
}

/// The file of a batch that a path in an engine error concerns: the file at that path,
/// else one below it (the engine named a parent), else the batch's first.
fn named_file(files: &[&(SandboxPath, Vec<u8>)], engine_path: Option<&str>) -> String {
    let paths = || files.iter().map(|(path, _)| path);
    engine_path
        .and_then(|engine_path| {
            paths()
                .find(|path| path.as_str() == engine_path)
                .or_else(|| paths().find(|path| path.is_within(engine_path)))
        })
        .or_else(|| paths().next())
        .map_or_else(|| "/".to_string(), SandboxPath::to_string)
}

/// Whether the engine's answer to an archive download was cut at our limit.
fn cut_at_limit(error: &DockerError) -> bool {
    matches!(error, DockerError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData)
}

/// `GET /sandboxes/{name}/archive?path=DIR`: DIR as a tar archive, as the engine makes
/// it (members named `<DIR's last part>/...`), at most `max_file_bytes` of it. Root
/// filesystem and volumes only: a tmpfs, `/proc`, `/sys` or `/dev` path is a 400.
pub fn read_archive(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
    dir: &SandboxPath,
    budget: &OutputBudget,
) -> Result<Vec<u8>> {
    let container = Container::open(docker, config, name)?;
    if container.container_only(dir) {
        return Err(archive_unreachable(dir));
    }
    let limit = config.max_file_bytes;
    take_all(budget, limit)?;
    let archive = docker
        .archive_get(&container.id, dir.as_str(), limit)
        .map_err(|error| match error {
            error if error.is_not_found() => container.not_found(dir.as_str()),
            error if cut_at_limit(&error) => Error::FileTooLarge {
                path: dir.to_string(),
                limit,
            },
            other => container.engine_error(other.into(), dir),
        });
    budget.release(limit - archive.as_ref().map_or(0, |bytes| bytes.len() as u64));
    archive
}

fn archive_unreachable(dir: &SandboxPath) -> Error {
    Error::Invalid(format!(
        "'{dir}' is on a tmpfs (or under /proc, /sys or /dev): archives reach a sandbox's root \
         filesystem and volumes only (use the files API there)"
    ))
}

/// `PUT /sandboxes/{name}/archive?path=DIR`: extracts the tar `archive` into the existing
/// directory DIR. Every member is checked first (`read_members`); one that could land
/// outside DIR, or that is not a file, directory or symlink, refuses the whole archive
/// and nothing is written; what the engine gets is our own rewrite of what was checked
/// (`rebuild_archive`). Returns the number of members. (A symlink the sandbox itself
/// keeps under DIR is followed by the engine, within the container's filesystem.)
pub fn write_archive(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
    dir: &SandboxPath,
    archive: &[u8],
) -> Result<usize> {
    let container = Container::open(docker, config, name)?;
    let (archive, members) = rebuild_archive(archive, container.uid, container.gid)?;
    if container.container_only(dir) {
        return Err(archive_unreachable(dir));
    }
    if container.read_only_root {
        return Err(container.read_only(dir.as_str()));
    }
    docker
        .archive_put(&container.id, dir.as_str(), &archive)
        .map_err(|error| match error {
            error if error.is_not_found() => container.not_found(dir.as_str()),
            DockerError::WouldReplaceDirectory { path } => Error::NotAFile {
                path,
                what: "a directory",
            },
            DockerError::NotADirectory { path } => Error::Invalid(format!(
                "Cannot extract into '{dir}': '{path}' is a file, not a directory"
            )),
            DockerError::ReadOnlyFilesystem { path } => {
                container.read_only(path.as_deref().unwrap_or(dir.as_str()))
            }
            other => container.engine_error(other.into(), dir),
        })?;
    crate::containers::disk::check_room(&container.id, dir.as_str())?;
    Ok(members)
}

/// One member of an archive that passed `read_members`' checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Relative, without `.` or empty parts; empty for the archive's root itself.
    pub name: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Every member of a tar archive, each checked (`Err`: why it is refused): names are
/// relative, at most 4096 bytes, without `..` or NUL, not below a symlink member of the
/// same archive and not an earlier member's; a symlink's target is relative, climbs
/// (`..`) only before its first name and never above the archive's root; hard links,
/// devices and FIFOs are refused. Checked that way, nothing one archive holds reaches
/// outside the directory it is extracted into, however its own links chain (links the
/// directory already holds are the sandbox's: the engine follows them, within the
/// container). An archive that does not read, or that ends without its end marker (cut
/// short), is an `Err` of its own.
pub fn read_members(archive: &[u8]) -> Result<Vec<(String, std::result::Result<Checked, String>)>> {
    let mut reader = archive;
    let mut members = Vec::new();
    // Hashes of the accepted symlinks' names, and of every accepted name: a member
    // costs the length of its name, however many links came before it.
    let mut links: HashSet<u64> = HashSet::new();
    let mut names: HashSet<u64> = HashSet::new();
    loop {
        if reader.is_empty() {
            return Err(Error::Invalid(
                "the body is not a whole tar archive: it ends without the end-of-archive \
                 blocks"
                    .into(),
            ));
        }
        let entry = match tar::read_first_entry(&mut reader, archive.len() as u64) {
            Ok(entry) => entry,
            Err(TarError::Empty) => return Ok(members),
            Err(error) => {
                return Err(Error::Invalid(format!(
                    "the body is not a tar archive we can take: {error}"
                )))
            }
        };
        let raw = entry.name.clone();
        let checked = check_member(entry, &links, &names);
        if let Ok(member) = &checked {
            let hash = name_hash(member.name.as_bytes());
            names.insert(hash);
            if matches!(member.kind, EntryKind::Symlink { .. }) {
                links.insert(hash);
            }
        }
        members.push((raw, checked));
    }
}

/// Longest member name taken (what Linux takes as a path).
const MAX_MEMBER_NAME: usize = 4096;

/// FNV-1a of a normalised name; `prefix_hashes` gives the same value for each proper
/// prefix that ends before a `/`.
fn name_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The hashes of a normalised name's proper prefixes (`a`, `a/b` of `a/b/c`).
fn prefix_hashes(name: &str) -> impl Iterator<Item = u64> + '_ {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    name.bytes().filter_map(move |byte| {
        let before = hash;
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        (byte == b'/').then_some(before)
    })
}

fn check_member(
    entry: tar::Entry,
    links: &HashSet<u64>,
    names: &HashSet<u64>,
) -> std::result::Result<Checked, String> {
    if entry.name.len() > MAX_MEMBER_NAME {
        return Err(format!("a name longer than {MAX_MEMBER_NAME} bytes"));
    }
    if entry.name.starts_with('/') {
        return Err("an absolute name".into());
    }
    if entry.name.contains('\0') {
        return Err("a NUL byte in its name".into());
    }
    let parts: Vec<&str> = entry
        .name
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    if parts.contains(&"..") {
        return Err("a '..' part in its name".into());
    }
    let name = parts.join("/");
    if prefix_hashes(&name).any(|hash| links.contains(&hash)) {
        return Err("a name below a symlink member of the same archive".into());
    }
    // A second member of a name would replace the first, or fail in the engine half
    // way through.
    if !name.is_empty() && names.contains(&name_hash(name.as_bytes())) {
        return Err("a name that an earlier member has".into());
    }
    match &entry.kind {
        EntryKind::File | EntryKind::Directory => {}
        EntryKind::Symlink { target } => {
            if target.is_empty() || target.starts_with('/') || target.contains('\0') {
                return Err("a symlink to an absolute path (or to nothing)".into());
            }
            let target_parts: Vec<&str> = target
                .split('/')
                .filter(|part| !part.is_empty() && *part != ".")
                .collect();
            let climbs = target_parts
                .iter()
                .take_while(|part| **part == "..")
                .count();
            if target_parts[climbs..].contains(&"..") {
                return Err("a symlink whose target climbs back ('..' after a name)".into());
            }
            if climbs > parts.len().saturating_sub(1) {
                return Err("a symlink that points outside the directory".into());
            }
        }
        EntryKind::Other(b'1') => return Err("a hard link".into()),
        EntryKind::Other(_) => return Err("a device, FIFO or other special file".into()),
    }
    Ok(Checked {
        name,
        kind: entry.kind,
        mode: entry.mode & 0o777,
        data: entry.data,
    })
}

/// The archive an upload becomes, once every member passed `read_members`: written
/// again by our own writer (what the engine extracts is exactly what was checked, never
/// the client's bytes), owned by `uid:gid`, permission bits only, each name after `./`
/// (so that no first block looks compressed to the engine); returns it and its count.
pub fn rebuild_archive(archive: &[u8], uid: u32, gid: u32) -> Result<(Vec<u8>, usize)> {
    let members = read_members(archive)?;
    let mut kept = Vec::new();
    for (raw, checked) in members {
        match checked {
            Ok(member) if member.name.is_empty() => {}
            Ok(member) => kept.push(member),
            Err(why) => {
                return Err(Error::Invalid(format!(
                    "archive member {raw:?} refused: {why} (nothing was written)"
                )))
            }
        }
    }
    let names: Vec<String> = kept
        .iter()
        .map(|member| format!("./{}", member.name))
        .collect();
    let mtime = unix_now();
    let written: Vec<tar::Member<'_>> = kept
        .iter()
        .zip(&names)
        .map(|(member, name)| tar::Member {
            name,
            kind: match &member.kind {
                EntryKind::Directory => tar::MemberKind::Directory,
                EntryKind::Symlink { target } => tar::MemberKind::Symlink(target),
                _ => tar::MemberKind::File(&member.data),
            },
            mode: match member.kind {
                EntryKind::Directory if member.mode == 0 => 0o755,
                _ => member.mode,
            },
            mtime,
            uid,
            gid,
        })
        .collect();
    let rebuilt =
        tar::write_members(&written).map_err(|error| Error::Invalid(error.to_string()))?;
    Ok((rebuilt, kept.len()))
}

/// Removes the file (or symlink) at `path`; never a directory. Needs the sandbox
/// running: the archive endpoints cannot delete.
pub fn delete_file(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
    path: &SandboxPath,
) -> Result<()> {
    let container = Container::open(docker, config, name)?;
    container.require_stub(path)?;
    container.stub_exec(docker, config, path, &["--rm", path.as_str()], None, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> String {
        SandboxPath::parse(text).unwrap().as_str().to_string()
    }

    /// A tar of raw headers: (name, typeflag, link target), no data.
    fn archive_of(members: &[(&str, u8, &str)]) -> Vec<u8> {
        let mut archive = Vec::new();
        for (name, kind, link) in members {
            let mut header = [0u8; 512];
            header[..name.len()].copy_from_slice(name.as_bytes());
            header[100..107].copy_from_slice(b"0000644");
            header[124..135].copy_from_slice(b"00000000000");
            header[136..147].copy_from_slice(b"00000000000");
            header[156] = *kind;
            header[157..157 + link.len()].copy_from_slice(link.as_bytes());
            header[257..265].copy_from_slice(b"ustar\x0000");
            header[148..156].copy_from_slice(b"        ");
            let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
            header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            archive.extend_from_slice(&header);
        }
        archive.extend_from_slice(&[0u8; 1024]);
        archive
    }

    #[test]
    fn uploaded_archives_stay_within_their_directory() {
        let fine = archive_of(&[
            ("./", b'5', ""),
            ("d/", b'5', ""),
            ("d/f", b'0', ""),
            ("d/up", b'2', "../f2"),
            ("d/e/in", b'2', "../../d"),
            ("d/self", b'2', "."),
            ("d/down", b'2', "e/x"),
        ]);
        let (rebuilt, count) = rebuild_archive(&fine, 7, 8).unwrap();
        assert_eq!(count, 6);
        let read = read_members(&rebuilt).unwrap();
        assert!(read
            .iter()
            .all(|(name, checked)| name.starts_with("./") && checked.is_ok()));
        for (member, why) in [
            (("/etc/x", b'0', ""), "absolute name"),
            (("d/../../x", b'0', ""), "'..'"),
            (("d/l", b'2', "/etc/passwd"), "absolute path"),
            (("d/l", b'2', "../../etc"), "outside"),
            (("l", b'2', ".."), "outside"),
            (("t", b'2', "s/s/../../.."), "climbs back"),
            (("h", b'1', "d/f"), "hard link"),
            (("dev", b'3', ""), "special file"),
            (("fifo", b'6', ""), "special file"),
        ] {
            let error =
                rebuild_archive(&archive_of(&[("ok", b'0', ""), member]), 0, 0).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(why), "{member:?}: {message}");
            assert!(message.contains(member.0), "{member:?}: {message}");
        }
        // A name below a symlink member of the same archive goes where the link points.
        let through = archive_of(&[("s", b'2', "."), ("s/x", b'0', "")]);
        let message = rebuild_archive(&through, 0, 0).unwrap_err().to_string();
        assert!(message.contains("below a symlink member"), "{message}");
        let twice = archive_of(&[("x", b'0', ""), ("./x/", b'5', "")]);
        let message = rebuild_archive(&twice, 0, 0).unwrap_err().to_string();
        assert!(message.contains("an earlier member has"), "{message}");
        assert!(rebuild_archive(b"not a tar", 0, 0).is_err());
        assert!(rebuild_archive(&[], 0, 0).is_err());
        // Cut short: no end-of-archive blocks.
        let whole = archive_of(&[("ok", b'0', "")]);
        assert!(read_members(&whole[..512]).is_err());
        assert_eq!(rebuild_archive(&[0u8; 1024], 0, 0).unwrap().1, 0);
    }

    #[test]
    fn paths_are_absolute_and_collapsed() {
        assert_eq!(path("/tmp/x"), "/tmp/x");
        assert_eq!(path("tmp/x"), "/tmp/x");
        assert_eq!(path("//tmp//x/"), "/tmp/x");
        assert_eq!(path("/./tmp/./x"), "/tmp/x");
        assert_eq!(path("/tmp/x.d/..x/..."), "/tmp/x.d/..x/...");
        assert_eq!(path("/tmp/a b/ü"), "/tmp/a b/ü");
    }

    #[test]
    fn paths_refuse_dotdot_nul_root_and_overlong() {
        for (bad, expected) in [
            ("/tmp/../etc/passwd", "'..'"),
            ("..", "'..'"),
            ("/tmp/x/..", "'..'"),
            ("/tmp/\0x", "NUL"),
            ("", "root directory"),
            ("/", "root directory"),
            ("//./", "root directory"),
        ] {
            let error = SandboxPath::parse(bad).unwrap_err();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
        let long_segment = format!("/{}", "x".repeat(256));
        assert!(SandboxPath::parse(&long_segment).is_err());
        assert!(SandboxPath::parse(&format!("/{}", "x".repeat(255))).is_ok());
        let long_path = "/abcdefgh".repeat(456);
        assert!(long_path.len() > MAX_PATH_BYTES);
        assert!(SandboxPath::parse(&long_path).is_err());
    }

    #[test]
    fn url_paths_are_percent_decoded_before_they_are_checked() {
        let decoded = |text: &str| SandboxPath::from_url(text).map(|p| p.as_str().to_string());
        assert_eq!(decoded("tmp/a%20b.txt").unwrap(), "/tmp/a b.txt");
        assert_eq!(decoded("/tmp%2Fx").unwrap(), "/tmp/x");
        assert_eq!(decoded("tmp/%C3%BC").unwrap(), "/tmp/ü");
        assert_eq!(decoded("tmp/a+b").unwrap(), "/tmp/a+b");
        assert!(decoded("tmp/%2E%2E/etc").unwrap_err().contains("'..'"));
        assert!(decoded("tmp/%00").unwrap_err().contains("NUL"));
        assert!(decoded("tmp/%zz").unwrap_err().contains("%XX"));
        assert!(decoded("tmp/%+1").unwrap_err().contains("%XX"));
        assert!(decoded("tmp/%4").unwrap_err().contains("%XX"));
        assert!(decoded("tmp/%ff").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn mounts_contain_their_own_subtree_only() {
        let tmp_file = SandboxPath::parse("/tmp/x").unwrap();
        assert!(tmp_file.is_within("/tmp"));
        assert!(tmp_file.is_within("/tmp/"));
        assert!(tmp_file.is_within("/"));
        assert!(SandboxPath::parse("/tmp").unwrap().is_within("/tmp"));
        assert!(!SandboxPath::parse("/tmpfoo/x").unwrap().is_within("/tmp"));
        assert!(!SandboxPath::parse("/var/tmp/x").unwrap().is_within("/tmp"));
    }

    #[test]
    fn symlinks_are_followed_lexically() {
        let link = SandboxPath::parse("/usr/bin/python").unwrap();
        let follow = |target: &str| link.follow(target).map(|p| p.as_str().to_string());
        assert_eq!(follow("python3").as_deref(), Some("/usr/bin/python3"));
        assert_eq!(follow("/bin/busybox").as_deref(), Some("/bin/busybox"));
        assert_eq!(follow("../lib/./x").as_deref(), Some("/usr/lib/x"));
        assert_eq!(follow("../../../../etc/x").as_deref(), Some("/etc/x"));
        assert_eq!(follow("/"), None);
        assert_eq!(follow(".."), Some("/usr".to_string()));
    }

    #[test]
    fn engine_paths_name_the_file_of_a_batch() {
        let batch: Vec<(SandboxPath, Vec<u8>)> = ["/root/a", "/root/f/x", "/etc"]
            .iter()
            .map(|path| (SandboxPath::parse(path).unwrap(), Vec::new()))
            .collect();
        let files: Vec<&(SandboxPath, Vec<u8>)> = batch.iter().collect();
        assert_eq!(named_file(&files, Some("/etc")), "/etc");
        assert_eq!(named_file(&files, Some("/root/f")), "/root/f/x");
        assert_eq!(named_file(&files, Some("/elsewhere")), "/root/a");
        assert_eq!(named_file(&files, None), "/root/a");
        assert_eq!(named_file(&[], None), "/");
    }
}
