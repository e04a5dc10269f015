//! Disk quotas: a bound on what a container writes to its root filesystem, that holds
//! whatever the command does.
//!
//! Where the engine's storage driver takes a size (`StorageOpt`: btrfs, zfs, overlay2
//! over xfs), the engine enforces it. Where it does not (overlay2 over ext4, and
//! fuse-overlayfs, the driver of these machines), the server gives the container's
//! writable layer a filesystem of its own, between the engine's create and the first
//! start: a sparse file of the quota's size, `<data>/disks/<id>.img`, made ext4 and
//! loop-mounted at `<data>/disks/<id>`, holding a copy of the layer's directory (the one
//! of its `UpperDir` and `WorkDir`, which must be one mount for the overlay's renames),
//! bound over it. Every write of the container lands there:
//! past the quota it fails with "No space left on device" (`df /` inside shows the
//! quota), and the host's disk gives the container no more than the quota (and ext4's
//! own bookkeeping, a few MiB).
//!
//! The engine unmounts the bind when it removes the layer; `release` then unmounts the
//! filesystem and deletes its file (after every removal of ours, and `sweep` for those
//! whose container went another way). Mounts do not survive a reboot of the host:
//! `ensure` mounts them again before a sandbox is started, and at start-up a sandbox
//! the engine restarted on its own without its disk is stopped, given it, and started.
//!
//! Where neither can hold (no root, no `mkfs.ext4`, an engine whose layers are not
//! this host's files, another driver), containers are refused (`Error::DiskQuota`)
//! unless the operator turned quotas off (`--no-disk-quota`): never made unbounded
//! without saying so.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::engine::{ContainerInspect, Docker, EngineInfo, HostSettings};
use crate::error::{Error, Result};

/// How quotas are made to hold on this engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// The engine's own `StorageOpt` size.
    StorageOpt,
    /// A loop-mounted filesystem of the quota's size under the writable layer.
    LoopFilesystem,
    /// Turned off by the operator.
    Off,
    /// Cannot hold here; the words say why.
    Unavailable(String),
}

impl Enforcement {
    /// The name `GET /sandboxes/{name}` gives it.
    pub fn name(&self) -> &'static str {
        match self {
            Enforcement::StorageOpt => "storage-opt",
            Enforcement::LoopFilesystem => "loop-filesystem",
            Enforcement::Off => "off",
            Enforcement::Unavailable(_) => "unavailable",
        }
    }
}

/// What the host offers, for `decide`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCapabilities {
    pub root: bool,
    pub mkfs: bool,
    /// The engine's daemon shares our mount namespace (or none was found to compare).
    pub same_mounts: bool,
    pub data_dir: bool,
}

/// How quotas hold for an engine with this storage driver, on a host with these
/// capabilities.
pub fn decide(info: &EngineInfo, host: &HostCapabilities) -> Enforcement {
    let backing = info.backing_filesystem.as_deref().unwrap_or("");
    // overlay2 takes a size only over xfs mounted with project quotas, which the
    // engine's info does not tell: it gets a filesystem per container, as over ext4.
    let _ = backing;
    match info.driver.as_str() {
        "btrfs" | "zfs" => return Enforcement::StorageOpt,
        "overlay2" | "fuse-overlayfs" => {}
        other => {
            return Enforcement::Unavailable(format!(
                "the engine's storage driver '{other}' takes no size and has no layer \
                 directories of its own"
            ))
        }
    }
    let missing = if !host.root {
        "the server is not root (mounting a filesystem per container needs it)"
    } else if !host.mkfs {
        "mkfs.ext4 is not installed (Debian: e2fsprogs)"
    } else if !host.data_dir {
        "the server has no data dir"
    } else if !host.same_mounts {
        "the engine runs in another mount namespace than the server (or is not in view)"
    } else {
        return Enforcement::LoopFilesystem;
    };
    Enforcement::Unavailable(format!(
        "the storage driver '{}' needs a filesystem per container, and {missing}",
        info.driver
    ))
}

struct State {
    dir: Option<PathBuf>,
    off: bool,
    /// What the engine was found to need (asked once it answers).
    found: Mutex<Option<(Instant, Enforcement)>>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Set once, before the first container: where disks are kept (`<data>/disks`), and
/// whether the operator turned quotas off.
pub fn configure(data_dir: Option<&Path>, enabled: bool) {
    // Mounts are found in the mount table by their absolute, resolved paths.
    let dir = data_dir.map(|dir| {
        let dir = dir.join("disks");
        let _ = fs::create_dir_all(&dir);
        let _ = fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        fs::canonicalize(&dir).unwrap_or(dir)
    });
    let _ = STATE.set(State {
        dir,
        off: !enabled,
        found: Mutex::new(None),
    });
}

fn state() -> &'static State {
    STATE.get_or_init(|| State {
        dir: None,
        off: false,
        found: Mutex::new(None),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The containers whose disk a thread of this process is making, mounting or
/// releasing. One at a time per container: a start racing its create, or two starts,
/// would each mount it (stacked mounts, of which a release undid only the last).
static BUSY: Mutex<std::collections::BTreeSet<String>> =
    Mutex::new(std::collections::BTreeSet::new());
static FREED: Condvar = Condvar::new();

/// A container's disk held by this thread until dropped.
struct Held(String);

fn hold(id: &str) -> Held {
    let mut busy = lock(&BUSY);
    while busy.contains(id) {
        busy = FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
    }
    busy.insert(id.to_string());
    Held(id.to_string())
}

impl Drop for Held {
    fn drop(&mut self) {
        lock(&BUSY).remove(&self.0);
        FREED.notify_all();
    }
}

/// How quotas hold on this engine: found at the first container and kept (an answer
/// that they cannot is looked at again after a minute: a package may be installed).
pub fn enforcement(docker: &Docker) -> Result<Enforcement> {
    let state = state();
    if state.off {
        return Ok(Enforcement::Off);
    }
    let mut found = lock(&state.found);
    if let Some((at, enforcement)) = &*found {
        let stale = matches!(enforcement, Enforcement::Unavailable(_))
            && at.elapsed() > Duration::from_secs(60);
        if !stale {
            return Ok(enforcement.clone());
        }
    }
    let info = docker.engine_info().map_err(Error::Engine)?;
    let host = HostCapabilities {
        root: rustix::process::geteuid().is_root(),
        mkfs: Command::new("mkfs.ext4")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok(),
        same_mounts: same_mount_namespace_as_engine(),
        data_dir: state.dir.is_some(),
    };
    let enforcement = decide(&info, &host);
    if let Enforcement::Unavailable(reason) = &enforcement {
        log::warn!("disk quotas cannot be enforced: {reason}; containers are refused");
    }
    *found = Some((Instant::now(), enforcement.clone()));
    Ok(enforcement)
}

/// Whether an engine (`dockerd`) is in view and every one shares our mount namespace:
/// our mounts must be the engine's to see. None in view (a PID namespace of our own)
/// cannot be checked, and counts as not (mounts made in a mount namespace of our own
/// would leave the engine's layers as they are: quotas that do not hold).
fn same_mount_namespace_as_engine() -> bool {
    let ours = fs::read_link("/proc/self/ns/mnt").ok();
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    let engines: Vec<_> = entries
        .flatten()
        .filter(|entry| {
            fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == "dockerd")
        })
        .collect();
    !engines.is_empty()
        && engines
            .iter()
            .all(|entry| ours.is_some() && fs::read_link(entry.path().join("ns/mnt")).ok() == ours)
}

/// Before a create: asks the engine for the size where it enforces one; refuses where
/// quotas cannot hold; labels the container with how its quota holds. Returns that.
pub fn apply(
    docker: &Docker,
    host: &mut HostSettings,
    labels: &mut std::collections::BTreeMap<String, String>,
    quota_mb: u64,
) -> Result<Enforcement> {
    let enforcement = enforcement(docker)?;
    labels.insert(
        crate::containers::labels::DISK.to_string(),
        enforcement.name().to_string(),
    );
    match &enforcement {
        Enforcement::StorageOpt => host.storage_size_mb = Some(quota_mb),
        Enforcement::Unavailable(reason) => return Err(Error::DiskQuota(reason.clone())),
        Enforcement::LoopFilesystem | Enforcement::Off => host.storage_size_mb = None,
    }
    Ok(enforcement)
}

/// After the create, before the first start: the container's own filesystem under its
/// writable layer, where that is how quotas hold. On failure nothing of it is left
/// (the caller removes the container).
pub fn prepare(docker: &Docker, id: &str, enforcement: &Enforcement, quota_mb: u64) -> Result<()> {
    if *enforcement != Enforcement::LoopFilesystem {
        return Ok(());
    }
    let dir = disks_dir()?;
    let inspect = docker.container_inspect(id).map_err(Error::Engine)?;
    let _held = hold(&inspect.id);
    prepare_inspected(&dir, &inspect, quota_mb)
}

/// (With the container's disk held.)
fn prepare_inspected(dir: &Path, inspect: &ContainerInspect, quota_mb: u64) -> Result<()> {
    let id = inspect.id.as_str();
    // A start racing the create gave it its disk first (as the create would have).
    if image_path(dir, id).exists() {
        if let Ok(layer) = layer_dir(inspect) {
            if Mounts::read().is_mount_point(&layer) {
                return Ok(());
            }
        }
    }
    // Only before its first start: a started container's overlay holds its layer.
    if inspect.state.status != "created" {
        return Err(Error::DiskQuota(format!(
            "container {id} was started before it got its disk"
        )));
    }
    let dir = dir.to_path_buf();
    let layer = layer_dir(inspect)?;
    // Made by another process (another server on the same data dir): its own.
    if image_path(&dir, id).exists() {
        return Err(Error::DiskQuota(format!(
            "container {id} is being given its disk by another process"
        )));
    }
    make_disk(&dir, id, quota_mb)
        .and_then(|()| bind_layer(&dir, id, &layer, true))
        .map_err(|error| {
            release_dir(&dir, id);
            Error::DiskQuota(format!("cannot give container {id} its disk: {error}"))
        })
}

/// Before a container of ours is started again: its disk mounted under its layer, if
/// it has one that is not (the host rebooted). A container without a disk of ours is
/// left as it is.
pub fn ensure(docker: &Docker, id: &str) -> Result<()> {
    // Held before the look: a removal under way is seen, and never has a disk bound
    // back over the layer the engine is deleting.
    let _held = hold(id);
    let inspect = docker.container_inspect(id).map_err(Error::Engine)?;
    // A running container's overlay holds its layer: nothing is bound under it (one
    // that runs without its disk is `sweep::give_disks_back`'s).
    if inspect.state.running {
        return Ok(());
    }
    if inspect.state.status == "removing" {
        return Err(Error::Engine(
            crate::engine::DockerError::ContainerRemoving(format!(
                "container {id} is being removed"
            )),
        ));
    }
    let labelled = label(&inspect, crate::containers::labels::DISK)
        .is_some_and(|how| how == Enforcement::LoopFilesystem.name());
    let Ok(dir) = disks_dir() else {
        return match labelled {
            true => Err(Error::DiskQuota("the server has no data dir".into())),
            false => Ok(()),
        };
    };
    let id = inspect.id.as_str();
    if !image_path(&dir, id).exists() {
        if !labelled {
            return Ok(());
        }
        // Made with a disk it does not have yet (a start raced its create), or lost
        // (the data dir was wiped): never started without one.
        let quota_mb = label(&inspect, crate::containers::labels::DISK_MB)
            .and_then(|mb| mb.parse().ok())
            .unwrap_or(0);
        if quota_mb == 0 {
            return Err(Error::DiskQuota(format!(
                "container {id} has no disk quota label"
            )));
        }
        return prepare_inspected(&dir, &inspect, quota_mb).map_err(|error| match error {
            Error::DiskQuota(reason) => Error::DiskQuota(format!(
                "its disk is gone ({reason}): it is not started without one"
            )),
            other => other,
        });
    }
    let layer = layer_dir(&inspect)?;
    let mounts = Mounts::read();
    if mounts.is_mount_point(&layer) {
        return Ok(());
    }
    let disk = dir.join(id);
    if !mounts.is_mount_point(&disk) {
        mount_disk(&dir, id).map_err(Error::DiskQuota)?;
    }
    bind_layer(&dir, id, &layer, false).map_err(Error::DiskQuota)
}

/// Whether the container runs without the disk it was given (the engine unmounted the
/// bind when it stopped, for a restart of the engine or a reboot, and started it again
/// without).
pub fn runs_without_disk(inspect: &ContainerInspect) -> bool {
    let Ok(dir) = disks_dir() else {
        return false;
    };
    if !inspect.state.running || inspect.state.pid <= 0 {
        return false;
    }
    // Only a disk of ours (under our data dir): another process's (the CLI's, with a
    // data dir of its own) is its own to look after.
    if !image_path(&dir, &inspect.id).exists() {
        return false;
    }
    // Its disk is mounted and bound over its layer: an engine that stops unmounts the
    // binds of every layer (and starts the container again on the bare directory).
    // (What the container's root says of its size is no test: under gVisor the
    // engine's pid is gVisor's, whose root is its own.)
    let mounts = Mounts::read();
    match layer_dir(inspect) {
        Ok(layer) => {
            !mounts.is_mount_point(&dir.join(&inspect.id)) || !mounts.is_mount_point(&layer)
        }
        Err(_) => false,
    }
}

/// After a removal of the container: its disk unmounted and deleted once the engine
/// no longer has it (a removal still in progress, as of a container that removes
/// itself, is looked at again by `sweep_now_and_then`, within a second).
pub fn release_when_gone(docker: &Docker, id: &str) {
    if disks_dir().is_ok_and(|dir| !image_path(&dir, id).exists()) {
        return;
    }
    match docker.container_inspect(id) {
        Err(error) if error.is_not_found() => release(id),
        _ => {
            let mut pending = lock(&PENDING);
            if pending.len() < MAX_PENDING {
                pending.insert(id.to_string());
            }
        }
    }
}

/// Disks whose container's removal was in progress (the rest wait for `sweep`).
static PENDING: Mutex<std::collections::BTreeSet<String>> =
    Mutex::new(std::collections::BTreeSet::new());
const MAX_PENDING: usize = 4096;

/// Whether the container's disk is one of ours (under this server's data dir).
pub fn has_own_disk(id: &str) -> bool {
    disks_dir().is_ok_and(|dir| image_path(&dir, id).exists())
}

/// The namespaces this server serves (its own and its tenants'): the containers whose
/// disks it looks after.
static SERVED: Mutex<Vec<crate::config::Namespace>> = Mutex::new(Vec::new());

pub fn set_served(namespaces: Vec<crate::config::Namespace>) {
    *lock(&SERVED) = namespaces;
}

pub fn served() -> Vec<crate::config::Namespace> {
    lock(&SERVED).clone()
}

/// Whether this process gives containers disks of their own (and so looks after
/// them): quotas on, and found to hold that way here.
pub fn looks_after_disks(docker: &Docker) -> bool {
    enforcement(docker).is_ok_and(|found| found == Enforcement::LoopFilesystem)
}

/// After the container is gone: its disk unmounted and deleted. Never while the
/// container exists (it would lose its files).
pub fn release(id: &str) {
    if let Ok(dir) = disks_dir() {
        let _held = hold(id);
        release_dir(&dir, id);
    }
}

/// What the container's disk holds and may hold, in MiB, where it has one of ours.
pub fn usage(id: &str) -> Option<(u64, u64)> {
    let dir = disks_dir().ok()?;
    let disk = dir.join(id);
    if !Mounts::read().is_mount_point(&disk) {
        return None;
    }
    let stat = rustix::fs::statvfs(&disk).ok()?;
    let block = stat.f_frsize.max(1);
    let used = stat.f_blocks.saturating_sub(stat.f_bfree) * block;
    let size = image_path(&dir, id).metadata().ok()?.len();
    Some((used >> 20, size >> 20))
}

/// Whether the container's disk is full: less than 1 MiB left of it.
pub fn is_full(id: &str) -> bool {
    disk_stat(id).is_some_and(|stat| stat.free < 1 << 20)
}

/// What the container's own disk holds and has free, in bytes, where it has one and
/// it is mounted.
pub struct DiskStat {
    pub used: u64,
    pub free: u64,
}

pub fn disk_stat(id: &str) -> Option<DiskStat> {
    let dir = disks_dir().ok()?;
    let disk = dir.join(id);
    if !image_path(&dir, id).exists() || !Mounts::read().is_mount_point(&disk) {
        return None;
    }
    let stat = rustix::fs::statvfs(&disk).ok()?;
    let block = stat.f_frsize.max(1);
    Some(DiskStat {
        used: stat.f_blocks.saturating_sub(stat.f_bfree) * block,
        free: stat.f_bavail * block,
    })
}

/// A container's disk as `GET /sandboxes/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskView {
    /// What its create asked for (0: made before quotas).
    pub quota_mb: u64,
    /// What it holds now, where that can be read (its own filesystem's use).
    pub used_mb: Option<u64>,
    /// How the quota holds: `loop-filesystem`, `storage-opt`, or `none` (made with
    /// quotas off, or before them).
    pub enforced_by: &'static str,
}

/// The disk of a container of ours, from its labels, its settings and its mounts.
pub fn view(inspect: &ContainerInspect) -> DiskView {
    let quota_mb = label(inspect, crate::containers::labels::DISK_MB)
        .and_then(|mb| mb.parse().ok())
        .unwrap_or(0);
    let has_file = disks_dir().is_ok_and(|dir| image_path(&dir, &inspect.id).exists());
    let storage_opt = inspect
        .host_config
        .storage_opt
        .as_ref()
        .is_some_and(|options| options.contains_key("size"));
    let (used_mb, enforced_by) = if has_file {
        (usage(&inspect.id).map(|(used, _)| used), "loop-filesystem")
    } else if storage_opt {
        (None, "storage-opt")
    } else {
        (None, "none")
    };
    DiskView {
        quota_mb,
        used_mb,
        enforced_by,
    }
}

/// A command's result, its status naming the disk quota when the command ended with
/// the container's disk full: its writes past the quota failed (or, on fuse-overlayfs,
/// seemed to succeed and were dropped), whatever its exit code says.
pub fn name_full(mut result: crate::exec::CommandResult, id: &str) -> crate::exec::CommandResult {
    // Full, whatever the command did: on fuse-overlayfs a write into a full disk may
    // seem to succeed and not be kept, so a command that ends with the disk full is
    // told so, even one that only read.
    if result.status == crate::exec::Status::Exited && is_full(id) {
        let quota_mb = usage(id).map_or(0, |(_, quota)| quota);
        result.status = crate::exec::Status::DiskQuotaExceeded;
        result.message = Some(format!(
            "the container's root filesystem reached its disk quota of {quota_mb} MiB: \
             writes past it failed ('No space left on device') or were not kept"
        ));
    }
    result
}

/// Releases the disks of removals that were in progress and are done; gives whether
/// none is left.
fn release_pending(docker: &Docker) -> bool {
    let pending: Vec<String> = lock(&PENDING).iter().cloned().collect();
    for id in pending {
        match docker.container_inspect(&id) {
            Err(error) if error.is_not_found() => {
                release(&id);
                lock(&PENDING).remove(&id);
            }
            Err(_) => break,
            // (A removal that never ends, a dead container: left to `sweep`.)
            Ok(inspect) if inspect.state.status == "dead" => {
                lock(&PENDING).remove(&id);
            }
            Ok(_) => {}
        }
    }
    lock(&PENDING).is_empty()
}

/// Before a process that made containers ends (the CLI without a server): their
/// removals waited for, at most `within`, and their disks released.
pub fn flush_pending(docker: &Docker, within: Duration) {
    let deadline = Instant::now() + within;
    while !release_pending(docker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The disks of removals that were in progress, once gone; `sweep`, at most once a
/// minute (from `engine-watch`, every half second).
pub fn sweep_now_and_then(docker: &Docker) {
    release_pending(docker);
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = lock(&LAST);
    if last.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
        return;
    }
    *last = Some(Instant::now());
    drop(last);
    let released = sweep(docker);
    if released > 0 {
        log::info!("released {released} disks whose containers are gone");
    }
}

/// After a write into the container from outside (the files API): an error if it left
/// the disk full. (A full fuse-overlayfs layer takes writes into the page cache and
/// drops them: the engine reports no failure.)
pub fn check_room(id: &str, path: &str) -> Result<()> {
    if is_full(id) {
        return Err(Error::DiskQuotaFull {
            path: path.to_string(),
            quota_mb: usage(id).map_or(0, |(_, quota)| quota),
        });
    }
    Ok(())
}

/// Before a commit (a snapshot): refused when the layer's files add up to more than
/// the quota (sparse files: the image would hold them whole, on the host's disk).
pub fn check_commit(id: &str) -> Result<()> {
    let Some(quota) = usage(id).map(|(_, quota)| quota << 20) else {
        return Ok(());
    };
    let Ok(dir) = disks_dir() else {
        return Ok(());
    };
    let mut total: u64 = 0;
    let mut left: u32 = 1_000_000;
    let mut stack = vec![dir.join(id).join("layer").join("diff")];
    while let Some(path) = stack.pop() {
        let Ok(entries) = fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            left = left.saturating_sub(1);
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total = total.saturating_add(meta.len());
            }
            if total > quota || left == 0 {
                return Err(Error::Invalid(format!(
                    "cannot snapshot: the sandbox's files add up to more than its disk \
                     quota of {} MiB (sparse files are copied whole into a snapshot): \
                     remove them first",
                    quota >> 20
                )));
            }
        }
    }
    Ok(())
}

/// Releases every disk whose container the engine no longer has. Returns how many.
pub fn sweep(docker: &Docker) -> usize {
    // Only a process that gives containers their disks (and sees its mounts as the
    // engine does) releases what it finds.
    if !looks_after_disks(docker) {
        return 0;
    }
    let Ok(dir) = disks_dir() else {
        return 0;
    };
    let Ok(entries) = fs::read_dir(&dir) else {
        return 0;
    };
    // By its file, its mount point, or its loop device alone (a disk still mounted or
    // attached after its file was deleted).
    let attached = loop_devices()
        .into_iter()
        .filter(|(_, file)| file.parent() == Some(dir.as_path()))
        .filter_map(|(_, file)| Some(file.file_name()?.to_string_lossy().into_owned()));
    let ids: std::collections::BTreeSet<String> = entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .chain(attached)
        .map(|name| {
            name.strip_suffix(".img")
                .map_or(name.clone(), str::to_string)
        })
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    let mut released = 0;
    for id in &ids {
        match docker.container_inspect(id) {
            Err(error) if error.is_not_found() => {
                let _held = hold(id);
                release_dir(&dir, id);
                released += 1;
            }
            _ => {}
        }
    }
    released
}

fn disks_dir() -> Result<PathBuf> {
    state()
        .dir
        .clone()
        .ok_or_else(|| Error::DiskQuota("the server has no data dir".into()))
}

fn image_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.img"))
}

/// One of a container's labels.
fn label<'a>(inspect: &'a ContainerInspect, key: &str) -> Option<&'a String> {
    inspect.config.labels.as_ref()?.get(key)
}

/// The directory of the writable layer (of its `UpperDir` and `WorkDir`), from the
/// engine's answer.
fn layer_dir(inspect: &ContainerInspect) -> Result<PathBuf> {
    let data = inspect
        .graph_driver
        .as_ref()
        .and_then(|driver| driver.data.as_ref());
    let parent = |key: &str| {
        data.and_then(|data| data.get(key))
            .map(PathBuf::from)
            .filter(|path| path.is_dir())
            .and_then(|path| path.parent().map(Path::to_path_buf))
    };
    match (parent("UpperDir"), parent("WorkDir")) {
        (Some(upper), Some(work)) if upper == work => Ok(upper),
        _ => Err(Error::DiskQuota(format!(
            "the engine's layer directories of container {} are not on this host",
            inspect.id
        ))),
    }
}

/// The sparse file of `quota_mb`, made ext4, mounted at `<dir>/<id>`.
fn make_disk(dir: &Path, id: &str, quota_mb: u64) -> std::result::Result<(), String> {
    fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let image = image_path(dir, id);
    // Only root reads a container's files.
    let file = std::os::unix::fs::OpenOptionsExt::mode(
        fs::OpenOptions::new().write(true).create_new(true),
        0o600,
    )
    .open(&image)
    .map_err(|e| format!("{}: {e}", image.display()))?;
    file.set_len(quota_mb << 20)
        .map_err(|error| format!("{}: {error}", image.display()))?;
    drop(file);
    // No reserved blocks (the quota is the container's), inode tables made lazily.
    let image_text = image.to_string_lossy();
    let options = "lazy_itable_init=1,lazy_journal_init=1";
    crate::containers::egress::run(
        "mkfs.ext4",
        &["-q", "-F", "-m", "0", "-E", options, &image_text],
        None,
    )?;
    mount_disk(dir, id)
}

fn mount_disk(dir: &Path, id: &str) -> std::result::Result<(), String> {
    let disk = dir.join(id);
    match fs::create_dir(&disk) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(format!("{}: {error}", disk.display())),
    }
    let image = image_path(dir, id);
    let run = crate::containers::egress::run;
    // Our own loop device, then the mount of it (`mount -o loop` looks for the file on
    // loop devices already and may take a device another process is setting up: seen
    // here as "already mounted" under load). A few tries: another process may take the
    // free device first.
    let mut last = String::new();
    for _ in 0..3 {
        let device = match run(
            "losetup",
            &["--find", "--show", &image.to_string_lossy()],
            None,
        ) {
            Ok(device) => device.trim().to_string(),
            Err(error) => {
                last = error;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let mounted = run(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                "nosuid,nodev",
                &device,
                &disk.to_string_lossy(),
            ],
            None,
        );
        match mounted {
            Ok(_) => return Ok(()),
            // Mounted all the same (what failed came after): never a second mount.
            Err(_) if Mounts::read().is_mount_point(&disk) => return Ok(()),
            Err(error) => {
                log::warn!("disk of {id}: {error}; trying again");
                let _ = run("losetup", &["-d", &device], None);
                last = error;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Err(last)
}

/// Detaches the loop devices of a disk's file, deleted or not (one still in use is
/// detached by the kernel once its last user is gone).
fn detach(image: &Path) {
    for (name, file) in loop_devices() {
        if file == image {
            let _ =
                crate::containers::egress::run("losetup", &["-d", &format!("/dev/{name}")], None);
        }
    }
}

/// Every loop device of the host (`loopN`) and its file, from the kernel's own table
/// (`/sys/block/loopN/loop/backing_file`, which still names a file once deleted).
fn loop_devices() -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let file = fs::read_to_string(entry.path().join("loop/backing_file")).ok()?;
            let file = file.trim_end_matches('\n');
            let file = file.strip_suffix(" (deleted)").unwrap_or(file);
            Some((name, PathBuf::from(file)))
        })
        .collect()
}

/// Detaches the loop device `major:minor` (the kernel frees it once its last mount is
/// gone), found by the kernel's name for it: this works after its file was deleted.
fn detach_device(device: &str) {
    let Ok(target) = fs::read_link(format!("/sys/dev/block/{device}")) else {
        return;
    };
    let Some(name) = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
    else {
        return;
    };
    if name.starts_with("loop") && name[4..].bytes().all(|b| b.is_ascii_digit()) {
        let _ = crate::containers::egress::run("losetup", &["-d", &format!("/dev/{name}")], None);
    }
}

/// Binds the disk's `layer` over the container's layer directory; `fresh` first copies
/// what that holds (the engine's files of the layer), its owner and its mode.
fn bind_layer(dir: &Path, id: &str, layer: &Path, fresh: bool) -> std::result::Result<(), String> {
    let inside = dir.join(id).join("layer");
    if fresh {
        let meta = fs::metadata(layer).map_err(|e| format!("{}: {e}", layer.display()))?;
        fs::create_dir(&inside).map_err(|e| format!("{}: {e}", inside.display()))?;
        std::os::unix::fs::chown(&inside, Some(meta.uid()), Some(meta.gid()))
            .and_then(|()| fs::set_permissions(&inside, meta.permissions()))
            .map_err(|e| format!("{}: {e}", inside.display()))?;
        // Never into another filesystem (a mount under the layer: its `merged`).
        crate::containers::egress::run(
            "cp",
            &[
                "-a",
                "--one-file-system",
                &layer.join(".").to_string_lossy(),
                &inside.to_string_lossy(),
            ],
            None,
        )?;
    }
    rustix::mount::mount_bind(&inside, layer).map_err(|error| {
        format!(
            "bind {} over {}: {error}",
            inside.display(),
            layer.display()
        )
    })
}

/// Unmounts everything of the disk (its binds, should any be left, then itself, as
/// many times as it is mounted), detaches its loop devices and deletes it. (With the
/// container's disk held.)
fn release_dir(dir: &Path, id: &str) {
    let disk = dir.join(id);
    // Bounded: a mount that cannot be undone is said once per round.
    for _ in 0..8 {
        let mounts = Mounts::read();
        let Some(device) = mounts.device_of(&disk) else {
            break;
        };
        for point in mounts.points_of(&device) {
            if let Err(error) = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH)
            {
                log::warn!("disk of {id}: cannot unmount {}: {error}", point.display());
            }
        }
        detach_device(&device);
    }
    detach(&image_path(dir, id));
    for result in [fs::remove_dir(&disk), fs::remove_file(image_path(dir, id))] {
        if let Err(error) = result {
            if error.kind() != std::io::ErrorKind::NotFound {
                log::warn!("disk of {id}: {error}");
            }
        }
    }
}

/// This process's mount table (`/proc/self/mountinfo`): (device, mount point) pairs.
struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    fn read() -> Mounts {
        Mounts(parse_mountinfo(
            &fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        ))
    }

    fn is_mount_point(&self, path: &Path) -> bool {
        self.0.iter().any(|(_, point)| point == path)
    }

    fn device_of(&self, path: &Path) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(_, point)| point == path)
            .map(|(device, _)| device.clone())
    }

    /// Every mount point of `device`, the latest first.
    fn points_of(&self, device: &str) -> Vec<PathBuf> {
        self.0
            .iter()
            .rev()
            .filter(|(found, _)| found == device)
            .map(|(_, point)| point.clone())
            .collect()
    }
}

/// (major:minor, mount point) of each line of a `mountinfo`, its octal escapes
/// (`\040` for a space) undone.
pub fn parse_mountinfo(text: &str) -> Vec<(String, PathBuf)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let device = fields.nth(2)?;
            let point = fields.nth(1)?;
            Some((device.to_string(), PathBuf::from(unescape(point))))
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match octal {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(driver: &str, backing: Option<&str>) -> EngineInfo {
        EngineInfo {
            driver: driver.into(),
            backing_filesystem: backing.map(str::to_string),
            ..EngineInfo::default()
        }
    }

    const CAPABLE: HostCapabilities = HostCapabilities {
        root: true,
        mkfs: true,
        same_mounts: true,
        data_dir: true,
    };

    #[test]
    fn the_engine_enforces_where_its_driver_takes_a_size() {
        for (driver, backing) in [("btrfs", None), ("zfs", None)] {
            assert_eq!(
                decide(&info(driver, backing), &CAPABLE),
                Enforcement::StorageOpt
            );
        }
    }

    #[test]
    fn overlay_drivers_get_a_filesystem_per_container_where_the_host_allows() {
        for (driver, backing) in [
            ("overlay2", "extfs"),
            ("overlay2", "xfs"),
            ("fuse-overlayfs", "extfs"),
        ] {
            assert_eq!(
                decide(&info(driver, Some(backing)), &CAPABLE),
                Enforcement::LoopFilesystem
            );
        }
        let not_root = HostCapabilities {
            root: false,
            ..CAPABLE
        };
        let Enforcement::Unavailable(reason) = decide(&info("fuse-overlayfs", None), &not_root)
        else {
            panic!("unavailable without root");
        };
        assert!(reason.contains("not root"), "{reason}");
        let no_mkfs = HostCapabilities {
            mkfs: false,
            ..CAPABLE
        };
        let Enforcement::Unavailable(reason) = decide(&info("overlay2", None), &no_mkfs) else {
            panic!("unavailable without mkfs");
        };
        assert!(reason.contains("e2fsprogs"), "{reason}");
        let Enforcement::Unavailable(reason) = decide(&info("vfs", None), &CAPABLE) else {
            panic!("vfs has no layer dirs");
        };
        assert!(reason.contains("'vfs'"), "{reason}");
    }

    #[test]
    fn mountinfo_lines_give_device_and_unescaped_mount_point() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 36 7:3 / /var/lib/agentkernel/disks/abc rw,nosuid - ext4 /dev/loop3 rw\n\
                    38 36 7:3 /upper /var/lib/docker/x/diff rw - ext4 /dev/loop3 rw\n";
        let mounts = Mounts(parse_mountinfo(text));
        assert_eq!(mounts.0[0], ("98:0".to_string(), PathBuf::from("/mnt/a b")));
        let disk = Path::new("/var/lib/agentkernel/disks/abc");
        assert!(mounts.is_mount_point(disk));
        assert_eq!(mounts.device_of(disk).as_deref(), Some("7:3"));
        assert_eq!(
            mounts.points_of("7:3"),
            vec![
                PathBuf::from("/var/lib/docker/x/diff"),
                PathBuf::from("/var/lib/agentkernel/disks/abc")
            ]
        );
        assert!(!mounts.is_mount_point(Path::new("/var/lib/docker")));
    }

    #[test]
    fn a_short_or_odd_mountinfo_line_is_skipped_and_odd_escapes_kept() {
        assert!(parse_mountinfo("36 35\n\n").is_empty());
        assert_eq!(unescape("a\\0b\\134c"), "a\\0b\\c");
    }
}
