//! The warm pool and the launcher of temporary containers.
//!
//! A temporary container runs our stub (`agentkernel stub`, our own static executable
//! mounted read-only) as the child of the container's init, with stdin open and an
//! attach connection held by the server. A command is one spec record written to that
//! connection; the stub runs it with exact argv and answers with output and exit
//! records, so a run costs a process spawn, not a container start. The pool keeps a
//! target number of such containers created, started and attached per (image,
//! profile); the `pool-refill` thread tops it up, and the `reaper` thread removes used
//! containers off the request path.
//!
//! Invariants: a container is used for one command only, then removed; workers never
//! wait for a refill (an empty pool means the cold path, at once); warm containers are
//! `AutoRemove` and their stub exits when the server's connection closes, so a crashed
//! server leaves nothing running; the profile's limits are the same warm or cold.
//! Where the stub cannot be used (the executable is not static), temporary containers
//! run an idle shell instead and commands go through `docker exec`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::{json, Value};

use crate::config::Config;
use crate::containers::labels::{self, Kind};
use crate::containers::profile::Profile;
use crate::engine::frames::StreamKind;
use crate::engine::reference::ImageRef;
use crate::engine::{ContainerSpec, Docker, DockerError, ExecSpec, Hijacked};
use crate::error::{Error, Result};
use crate::exec::{Collected, CommandResult, CommandSpec, OutputSink, Status};
use crate::stub::{self, StubExit, StubSpec};

/// How long a new stub may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long past the command's deadline the server waits for the stub's own answer.
const BACKSTOP: Duration = Duration::from_secs(5);
/// Longest pause between refill attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a key that requests added may go unused before it is dropped.
const DYNAMIC_IDLE: Duration = Duration::from_secs(600);
/// How long without a take counts as a quiet moment for refills and teardowns.
const QUIET: Duration = Duration::from_millis(150);
/// How long after a take even an urgent refill waits (see `refill_loop`).
const SETTLE: Duration = Duration::from_millis(50);
/// Most used containers held for a quiet moment, and longest hold.
const MAX_HELD: usize = 32;
const MAX_HOLD: Duration = Duration::from_secs(10);

/// Lets a used container go: closing the connection ends its stub (and so the
/// container, which removes itself), and the explicit removal makes sure of it.
fn remove_warm(docker: &Docker, warm: Warm) {
    let id = warm.id.clone();
    drop(warm);
    if let Err(error) = docker.container_remove(&id) {
        log::warn!("could not remove container {id}: {error}");
    }
}

/// What a pool holds containers for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolKey {
    pub image: String,
    pub profile: Profile,
}

impl PoolKey {
    /// `image[:profile]`, where the profile is recognised by name after the last `:`.
    /// The image must be a valid reference (`ImageRef`).
    pub fn parse(text: &str, default_profile: Profile) -> std::result::Result<PoolKey, String> {
        if let Some((image, profile)) = text.rsplit_once(':') {
            if let Ok(profile) = Profile::parse(profile) {
                if !image.is_empty() {
                    return Ok(PoolKey {
                        image: ImageRef::parse(image)?.to_string(),
                        profile,
                    });
                }
            }
        }
        if text.is_empty() {
            return Err("empty pool image".into());
        }
        Ok(PoolKey {
            image: ImageRef::parse(text)?.to_string(),
            profile: default_profile,
        })
    }
}

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
    pub fn detect(allow_stub: bool) -> Launcher {
        let launcher = if !allow_stub {
            Launcher::Exec {
                reason: "disabled by configuration".into(),
            }
        } else {
            match std::env::current_exe().and_then(|path| Ok((std::fs::read(&path)?, path))) {
                Ok((bytes, path)) if stub::is_static_executable(&bytes) => {
                    Launcher::Stub { host_path: path }
                }
                Ok((_, path)) => Launcher::Exec {
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

/// A started temporary container, ready for one command.
pub struct Warm {
    pub id: String,
    /// The attach connection to its stub (none under the exec launcher).
    stream: Option<StubStream>,
}

impl Warm {
    /// Whether the stub is still there: after its hello it sends nothing until it gets
    /// a spec, so a readable connection means it closed (or broke the protocol).
    fn is_alive(&self) -> bool {
        let Some(stream) = &self.stream else {
            return true;
        };
        let socket = &stream.hijacked.stdin;
        if socket.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let quiet = matches!(
            (&*socket).read(&mut byte),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock
        );
        socket.set_nonblocking(false).is_ok() && quiet
    }
}

#[derive(Debug, Default)]
struct KeyState {
    target: usize,
    ready: VecDeque<WarmSlot>,
    creating: usize,
    in_use: usize,
    created: u64,
    failed: u64,
    fallbacks: u64,
    failures_in_a_row: u32,
    retry_at: Option<Instant>,
    /// For keys added because a request used them: when one last did. Such a key is
    /// dropped, with its warm containers, once idle for `DYNAMIC_IDLE`.
    last_used: Option<Instant>,
}

/// `Warm` is not `Debug`; the pool's bookkeeping is.
struct WarmSlot(Warm);

impl std::fmt::Debug for WarmSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Warm({})", self.0.id)
    }
}

pub struct Pool {
    launcher: Launcher,
    /// Set when the engine could not mount our executable (a remote engine, or the
    /// executable was deleted since start): from then on, the exec launcher.
    stub_unusable: AtomicBool,
    keys: Mutex<BTreeMap<PoolKey, KeyState>>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// Target for keys added because requests used them.
    dynamic_target: usize,
    max_keys: usize,
    reap_sender: Sender<Warm>,
    reap_receiver: Receiver<Warm>,
    /// Containers queued for removal or being removed.
    reaping: AtomicUsize,
    /// Requests launching a container of their own right now (the cold path).
    cold_starts: AtomicUsize,
    /// When a request last took a warm container.
    last_take: Mutex<Option<Instant>>,
    /// Remove used containers on the caller's thread (no reaper thread runs).
    inline_reaping: bool,
}

impl Pool {
    /// A pool for one process that serves one command at a time (the CLI): no warm
    /// containers, no background threads, used containers removed at once.
    pub fn local(launcher: Launcher) -> Pool {
        let mut pool = Pool::new(launcher, &[], 0);
        pool.inline_reaping = true;
        pool
    }

    pub fn new(launcher: Launcher, initial: &[(PoolKey, usize)], dynamic_target: usize) -> Pool {
        let mut keys = BTreeMap::new();
        for (key, target) in initial {
            keys.insert(
                key.clone(),
                KeyState {
                    target: *target,
                    ..KeyState::default()
                },
            );
        }
        let (reap_sender, reap_receiver) = bounded(4096);
        Pool {
            launcher,
            stub_unusable: AtomicBool::new(false),
            keys: Mutex::new(keys),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            dynamic_target,
            max_keys: 16,
            reap_sender,
            reap_receiver,
            reaping: AtomicUsize::new(0),
            cold_starts: AtomicUsize::new(0),
            last_take: Mutex::new(None),
            inline_reaping: false,
        }
    }

    /// How commands reach temporary containers now.
    pub fn launcher(&self) -> Launcher {
        if self.stub_unusable.load(Ordering::SeqCst) {
            Launcher::Exec {
                reason: "the engine cannot mount our executable".into(),
            }
        } else {
            self.launcher.clone()
        }
    }

    /// Whether `error` says the engine cannot mount our executable; if so, says so once
    /// and switches to the exec launcher for good.
    pub fn stub_mount_failed(&self, error: &Error) -> bool {
        let mount_error = matches!(
            error,
            Error::Engine(DockerError::Api { message, .. })
                if message.contains("bind source path does not exist")
                    || message.contains("invalid mount config")
        );
        if mount_error
            && matches!(self.launcher, Launcher::Stub { .. })
            && !self.stub_unusable.swap(true, Ordering::SeqCst)
        {
            log::warn!("in-container stub unavailable ({error}): runs use docker exec from now on");
        }
        mount_error && matches!(self.launcher, Launcher::Stub { .. })
    }

    /// Launches a temporary container with the current launcher, falling back to exec
    /// once if the engine cannot mount the stub.
    pub fn launch(
        &self,
        docker: &Docker,
        config: &Config,
        key: &PoolKey,
        kind: Kind,
        workdir: Option<&str>,
    ) -> Result<Warm> {
        match launch(docker, config, &self.launcher(), key, kind, workdir) {
            Err(error) if self.stub_mount_failed(&error) => {
                launch(docker, config, &self.launcher(), key, kind, workdir)
            }
            other => other,
        }
    }

    /// Marks a request's own container start (the cold path) until the guard drops.
    /// Refills wait for it: the engine serializes part of every container start (its
    /// network setup), so a refill started at the same moment, as the take that
    /// emptied the pool asks for, would put the request's start behind the pool's.
    pub fn cold_start(&self) -> ColdStart<'_> {
        self.cold_starts.fetch_add(1, Ordering::SeqCst);
        ColdStart(self)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<PoolKey, KeyState>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A warm container for `key`, if one is ready; never waits.
    /// Containers that died while waiting (killed, engine restarted) are passed over
    /// and handed to `dead` for removal.
    pub fn take(&self, key: &PoolKey, mut dead: impl FnMut(Warm)) -> Option<Warm> {
        let mut keys = self.lock();
        let state = keys.get_mut(key)?;
        if state.last_used.is_some() {
            state.last_used = Some(Instant::now());
        }
        *self.last_take.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let mut taken = None;
        while let Some(WarmSlot(warm)) = state.ready.pop_front() {
            if warm.is_alive() {
                taken = Some(warm);
                break;
            }
            dead(warm);
        }
        match taken {
            Some(_) => state.in_use += 1,
            None => state.fallbacks += 1,
        }
        drop(keys);
        self.wake.notify_all();
        taken
    }

    /// Gives back the in-use count of a container taken with `take`.
    pub fn release(&self, key: &PoolKey) {
        if let Some(state) = self.lock().get_mut(key) {
            state.in_use = state.in_use.saturating_sub(1);
        }
    }

    /// Starts keeping containers for a key that a request used (its image exists).
    pub fn note_used(&self, key: &PoolKey) {
        let mut keys = self.lock();
        if !keys.contains_key(key) && keys.len() < self.max_keys && self.dynamic_target > 0 {
            keys.insert(
                key.clone(),
                KeyState {
                    target: self.dynamic_target,
                    last_used: Some(Instant::now()),
                    ..KeyState::default()
                },
            );
            drop(keys);
            self.wake.notify_all();
        }
    }

    /// Drops the request-added keys nobody used for `DYNAMIC_IDLE`, so that requests
    /// naming many images cannot pin warm containers for good; returns their
    /// containers for removal.
    fn expire_idle_keys(&self) -> Vec<Warm> {
        let mut keys = self.lock();
        let idle: Vec<PoolKey> = keys
            .iter()
            .filter(|(_, state)| {
                state.in_use == 0
                    && state.creating == 0
                    && state
                        .last_used
                        .is_some_and(|at| at.elapsed() > DYNAMIC_IDLE)
            })
            .map(|(key, _)| key.clone())
            .collect();
        idle.iter()
            .filter_map(|key| keys.remove(key))
            .flat_map(|state| state.ready.into_iter().map(|slot| slot.0))
            .collect()
    }

    /// Removes a used container in the background (inline if the queue is full).
    pub fn reap(&self, docker: &Docker, mut warm: Warm) {
        // Past what the reaper holds, let the container end now (its stub exits when
        // the connection closes): the queue must not keep containers alive.
        if self.reaping.fetch_add(1, Ordering::SeqCst) >= MAX_HELD {
            warm.stream = None;
        }
        let queued = if self.inline_reaping {
            Err(crossbeam_channel::TrySendError::Full(warm))
        } else {
            self.reap_sender.try_send(warm)
        };
        if let Err(error) = queued {
            remove_warm(docker, error.into_inner());
            self.reaping.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub fn stats(&self) -> Value {
        let keys = self.lock();
        let entries: Vec<Value> = keys
            .iter()
            .map(|(key, state)| {
                json!({
                    "image": key.image,
                    "profile": key.profile.name(),
                    "target": state.target,
                    "ready": state.ready.len(),
                    "creating": state.creating,
                    "in_use": state.in_use,
                    "created": state.created,
                    "failed": state.failed,
                    "fallbacks": state.fallbacks,
                })
            })
            .collect();
        json!({
            "launcher": match self.launcher() {
                Launcher::Stub { .. } => "stub",
                Launcher::Exec { .. } => "exec",
            },
            "keys": entries,
            "reaping": self.reaping.load(Ordering::SeqCst),
        })
    }

    /// The `pool-refill` thread's body: tops up every key until shutdown.
    pub fn refill_loop(&self, docker: &Docker, config: &Config) {
        loop {
            for warm in self.expire_idle_keys() {
                self.reap(docker, warm);
            }
            let key = {
                let mut keys = self.lock();
                loop {
                    if self.shutdown.load(Ordering::SeqCst) {
                        return;
                    }
                    let now = Instant::now();
                    // Starting a container is heavy work for the engine, and it slows
                    // the runs going on meanwhile: while requests keep coming, only a
                    // key down to a quarter of its target is refilled at once; the
                    // rest waits for a quiet moment.
                    // Even an urgent refill waits a moment after a take, so that requests
                    // arriving together have marked their cold starts (below) first.
                    let last_take = *self.last_take.lock().unwrap_or_else(|e| e.into_inner());
                    let quiet_at = last_take.map(|at| at + QUIET).filter(|at| *at > now);
                    let settled_at = last_take.map(|at| at + SETTLE).filter(|at| *at > now);
                    // No refill starts while a request launches its own container:
                    // the request's start would queue behind ours in the engine.
                    let cold_starts = self.cold_starts.load(Ordering::SeqCst);
                    let wanted = keys.iter().find(|(_, state)| {
                        let have = state.ready.len() + state.creating;
                        let urgent = have < state.target.div_ceil(4);
                        cold_starts == 0
                            && settled_at.is_none()
                            && have < state.target
                            && (urgent || quiet_at.is_none())
                            && state.retry_at.is_none_or(|at| at <= now)
                    });
                    if let Some((key, _)) = wanted {
                        let key = key.clone();
                        keys.get_mut(&key).expect("key exists").creating += 1;
                        break key;
                    }
                    let next_retry = keys
                        .values()
                        .filter_map(|state| state.retry_at)
                        .chain(quiet_at)
                        .chain(settled_at)
                        .filter(|at| *at > now)
                        .min()
                        .map(|at| at - now)
                        .unwrap_or(Duration::from_secs(1));
                    keys = self
                        .wake
                        .wait_timeout(keys, next_retry)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            let launched = self.launch(docker, config, &key, Kind::Pool, None);
            let mut keys = self.lock();
            let Some(state) = keys.get_mut(&key) else {
                continue;
            };
            state.creating -= 1;
            match launched {
                Ok(warm) => {
                    state.created += 1;
                    state.failures_in_a_row = 0;
                    state.retry_at = None;
                    state.ready.push_back(WarmSlot(warm));
                }
                Err(error) => {
                    state.failed += 1;
                    state.failures_in_a_row += 1;
                    let backoff = Duration::from_millis(100)
                        .saturating_mul(1 << state.failures_in_a_row.min(5))
                        .min(MAX_BACKOFF);
                    state.retry_at = Some(Instant::now() + backoff);
                    log::warn!(
                        "pool: cannot start a warm {}/{} container: {error}",
                        key.image,
                        key.profile
                    );
                }
            }
        }
    }

    /// The `reaper` thread's body: removes used containers until shutdown has been
    /// asked and the queue is empty.
    pub fn reap_loop(&self, docker: &Docker) {
        // Used containers wait here, their stub idle and holding them open, until a
        // quiet moment: a teardown is heavy work for the engine and would slow the
        // runs going on meanwhile. Never more than `MAX_HELD`, never longer than
        // `MAX_HOLD`.
        let mut held: VecDeque<(Instant, Warm)> = VecDeque::new();
        loop {
            match self.reap_receiver.recv_timeout(Duration::from_millis(50)) {
                Ok(warm) => held.push_back((Instant::now(), warm)),
                Err(_) if self.shutdown.load(Ordering::SeqCst) && held.is_empty() => return,
                Err(_) => {}
            }
            let quiet = self
                .last_take
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none_or(|at| at.elapsed() >= QUIET);
            while let Some((since, _)) = held.front() {
                let due = quiet
                    || held.len() > MAX_HELD
                    || since.elapsed() >= MAX_HOLD
                    || self.shutdown.load(Ordering::SeqCst);
                if !due {
                    break;
                }
                let (_, warm) = held.pop_front().expect("front exists");
                remove_warm(docker, warm);
                self.reaping.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Stops the threads' loops and removes every ready container.
    pub fn shut_down(&self, docker: &Docker) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wake.notify_all();
        let ready: Vec<Warm> = self
            .lock()
            .values_mut()
            .flat_map(|state| state.ready.drain(..).map(|slot| slot.0))
            .collect();
        for warm in ready {
            let id = warm.id.clone();
            drop(warm);
            if let Err(error) = docker.container_remove(&id) {
                log::warn!("could not remove warm container {id}: {error}");
            }
        }
    }
}

/// A request's cold start in progress; see `Pool::cold_start`.
pub struct ColdStart<'a>(&'a Pool);

impl Drop for ColdStart<'_> {
    fn drop(&mut self) {
        // Under the lock, so that the refill thread cannot miss the wake-up between
        // its look at the count and its wait.
        let keys = self.0.lock();
        self.0.cold_starts.fetch_sub(1, Ordering::SeqCst);
        drop(keys);
        self.0.wake.notify_all();
    }
}

/// Creates, attaches and starts a temporary container for `key`. `workdir` is given on
/// the cold path so that a read-only profile gets a writable workdir.
pub fn launch(
    docker: &Docker,
    config: &Config,
    launcher: &Launcher,
    key: &PoolKey,
    kind: Kind,
    workdir: Option<&str>,
) -> Result<Warm> {
    let profile = key.profile;
    let (entrypoint, open_stdin) = match launcher {
        Launcher::Stub { .. } => (vec![stub::STUB_PATH.to_string(), "stub".to_string()], true),
        Launcher::Exec { .. } => (crate::sandbox::idle_command(), false),
    };
    let mut spec = ContainerSpec {
        name: None,
        image: key.image.clone(),
        labels: labels::labels(&config.namespace, kind, &key.image, profile.name(), None),
        entrypoint: Some(entrypoint),
        cmd: None,
        env: Vec::new(),
        working_dir: None,
        user: profile.user().map(str::to_string),
        open_stdin,
        auto_remove: open_stdin,
        host: profile.host_settings(
            profile.default_limits(),
            workdir.unwrap_or("/"),
            launcher.stub_mounts(),
        ),
    };
    // The stub is the container's init itself (it reaps orphans): no other process
    // holds the container's stdout, so nothing but the stub can write records there,
    // and as PID 1 the command cannot kill it from inside.
    spec.host.init = !matches!(launcher, Launcher::Stub { .. });
    let id = docker.container_create(&spec).map_err(|error| {
        if error.is_not_found() {
            Error::ImageMissing(key.image.clone())
        } else {
            Error::Engine(error)
        }
    })?;
    let attached = (|| {
        let stream = if open_stdin {
            Some(docker.container_attach(&id, true)?)
        } else {
            None
        };
        docker.container_start(&id)?;
        let Some(hijacked) = stream else {
            return Ok(None);
        };
        let mut stream = StubStream::new(hijacked);
        stream.read_hello().map_err(|source| {
            match source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<EngineSaid>())
            {
                Some(EngineSaid(message)) => DockerError::InStream(message.clone()),
                None => DockerError::Io {
                    operation: "stub hello".into(),
                    source,
                },
            }
        })?;
        Ok(Some(stream))
    })();
    match attached {
        Ok(stream) => Ok(Warm { id, stream }),
        Err(error) => {
            if let Err(cleanup) = docker.container_remove(&id) {
                log::warn!("could not remove failed container {id}: {cleanup}");
            }
            Err(Error::Engine(error))
        }
    }
}

/// Runs one command in a started temporary container.
pub fn run_in(
    docker: &Docker,
    warm: &mut Warm,
    spec: &CommandSpec,
    started: Instant,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    match warm.stream.as_mut() {
        Some(stream) => stream.run(spec, started, sink).map_err(run_lost),
        None => crate::run::exec_direct(docker, &warm.id, spec, started, sink),
    }
}

/// Runs one command in a running container by `docker exec` of its mounted stub.
pub fn exec_via_stub(
    docker: &Docker,
    container: &str,
    spec: &CommandSpec,
    started: Instant,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    let exec_spec = ExecSpec {
        cmd: vec![stub::STUB_PATH.to_string(), "stub".to_string()],
        attach_stdin: true,
        ..ExecSpec::default()
    };
    let exec_id = docker.exec_create(container, &exec_spec)?;
    let mut stream = StubStream::new(docker.exec_start(&exec_id)?);
    stream.read_hello().map_err(hello_failed)?;
    stream.run(spec, started, sink).map_err(run_lost)
}

/// How long the rest of an engine's in-stream error message may take to arrive.
const ENGINE_TEXT_WAIT: Duration = Duration::from_millis(500);

/// What the engine wrote into a hijacked stream in place of the stub's hello.
#[derive(Debug)]
struct EngineSaid(String);

impl std::fmt::Display for EngineSaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EngineSaid {}

/// A failed hello: the engine's own refusal, or a stub that broke off.
fn hello_failed(error: io::Error) -> Error {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<EngineSaid>())
    {
        Some(EngineSaid(message)) => Error::Engine(DockerError::InStream(message.clone())),
        None => run_lost(error),
    }
}

/// A stub conversation that broke off: the engine answered, so this is not an
/// unreachable engine (503) but a run whose result is unknown.
fn run_lost(error: io::Error) -> Error {
    Error::RunLost(format!(
        "the command's supervisor ended before reporting a result ({error}): the command \
         or its container was killed, ran out of memory, or its client went away"
    ))
}

/// The stub's records, read out of the stdout frames of an attach connection.
pub struct StubStream {
    hijacked: Hijacked,
    frame: Vec<u8>,
    position: usize,
}

impl Read for StubStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.position == self.frame.len() {
            match self.hijacked.frames.next_frame(&mut self.frame)? {
                None => return Ok(0),
                Some(StreamKind::Stdout) => self.position = 0,
                Some(_) => {
                    log::debug!("stub: {}", String::from_utf8_lossy(&self.frame).trim_end());
                    self.position = self.frame.len();
                }
            }
        }
        let count = out.len().min(self.frame.len() - self.position);
        out[..count].copy_from_slice(&self.frame[self.position..self.position + count]);
        self.position += count;
        Ok(count)
    }
}

impl StubStream {
    fn new(hijacked: Hijacked) -> StubStream {
        StubStream {
            hijacked,
            frame: Vec::new(),
            position: 0,
        }
    }

    fn read_hello(&mut self) -> io::Result<()> {
        self.hijacked.set_read_timeout(Some(HELLO_TIMEOUT))?;
        let mut kind = [0u8; 1];
        if self.read(&mut kind)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stub exited before saying hello",
            ));
        }
        if kind[0] != stub::HELLO {
            // Not our stub: once it has hijacked the connection, the engine reports a
            // failure to start the process (its container stopped or went away) as text
            // in the stream. Never read that as records.
            let mut text = kind.to_vec();
            self.hijacked.set_read_timeout(Some(ENGINE_TEXT_WAIT))?;
            let _ = self.by_ref().take(4096).read_to_end(&mut text);
            return Err(io::Error::other(EngineSaid(
                String::from_utf8_lossy(&text).trim().to_string(),
            )));
        }
        match stub::read_record(&mut (&kind[..]).chain(&mut *self))? {
            Some((stub::HELLO, _)) => Ok(()),
            Some((kind, _)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stub sent record {kind} before hello"),
            )),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stub exited before saying hello",
            )),
        }
    }

    fn run(
        &mut self,
        spec: &CommandSpec,
        started: Instant,
        sink: OutputSink<'_>,
    ) -> io::Result<CommandResult> {
        let stub_spec = StubSpec {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            workdir: spec.workdir.clone(),
            // The command's own time: a cold container's start does not count against it.
            timeout_ms: spec.timeout.as_millis().max(1) as u64,
            max_output_bytes: spec.max_output_bytes,
            stdin: spec.stdin.is_some(),
        };
        sink.connected(&self.hijacked.stdin);
        let payload = serde_json::to_vec(&stub_spec).expect("spec serializes");
        self.hijacked
            .stdin
            .write_all(&stub::encode_record(stub::SPEC, &payload))?;
        let feed = spec
            .stdin
            .as_deref()
            .map(|data| (self.hijacked.stdin.try_clone(), data));
        let backstop = Instant::now() + spec.timeout + BACKSTOP;
        crate::run::with_records_fed(feed, || self.collect(spec, started, backstop, sink))
    }

    fn collect(
        &mut self,
        spec: &CommandSpec,
        started: Instant,
        backstop: Instant,
        sink: OutputSink<'_>,
    ) -> io::Result<CommandResult> {
        let mut collected = Collected::default();
        loop {
            let left = backstop.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(timeout_result(collected, started));
            }
            self.hijacked.set_read_timeout(Some(left))?;
            let record = match stub::read_record(self) {
                Ok(record) => record,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(timeout_result(collected, started));
                }
                Err(error) => return Err(error),
            };
            match record {
                Some((kind @ (stub::STDOUT | stub::STDERR), bytes)) => {
                    let kind = if kind == stub::STDOUT {
                        StreamKind::Stdout
                    } else {
                        StreamKind::Stderr
                    };
                    let kept = collected.push(kind, &bytes, spec.max_output_bytes);
                    if !kept.is_empty() {
                        sink.output(kind, kept)?;
                    }
                }
                Some((stub::EXIT, payload)) => {
                    let exit: StubExit = serde_json::from_slice(&payload).map_err(|error| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("exit record: {error}"))
                    })?;
                    return Ok(result_from_exit(exit, collected, started));
                }
                Some(_) => {}
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream ended before the exit record",
                    ))
                }
            }
        }
    }
}

fn timeout_result(collected: Collected, started: Instant) -> CommandResult {
    CommandResult {
        output: collected.output,
        stdout: collected.stdout,
        stderr: collected.stderr,
        exit_code: None,
        signal: None,
        status: Status::Timeout,
        duration: started.elapsed(),
    }
}

/// The honest status: timeout, then OOM, then signal, then truncation, else exited.
pub fn result_from_exit(exit: StubExit, collected: Collected, started: Instant) -> CommandResult {
    let status = if exit.timed_out {
        Status::Timeout
    } else if exit.oom_killed {
        Status::OomKilled
    } else if exit.signal.is_some() {
        Status::Signaled
    } else if exit.truncated || collected.truncated {
        Status::OutputTruncated
    } else {
        Status::Exited
    };
    let exit_code = if exit.timed_out {
        None
    } else {
        exit.exit_code
            .or(exit.signal.map(|signal| 128 + i64::from(signal)))
    };
    CommandResult {
        output: collected.output,
        stdout: collected.stdout,
        stderr: collected.stderr,
        exit_code,
        signal: exit.signal,
        status,
        duration: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pool_keys() {
        let key = PoolKey::parse("agentkernel/busybox:latest", Profile::Moderate).unwrap();
        assert_eq!(key.image, "agentkernel/busybox:latest");
        assert_eq!(key.profile, Profile::Moderate);
        let key = PoolKey::parse("alpine:3.20:restrictive", Profile::Moderate).unwrap();
        assert_eq!(key.image, "alpine:3.20");
        assert_eq!(key.profile, Profile::Restrictive);
        let key = PoolKey::parse("busybox:permissive", Profile::Moderate).unwrap();
        assert_eq!(
            (key.image.as_str(), key.profile),
            ("busybox", Profile::Permissive)
        );
        assert!(PoolKey::parse("", Profile::Moderate).is_err());
        assert!(PoolKey::parse("../../etc", Profile::Moderate).is_err());
        assert!(PoolKey::parse("/:restrictive", Profile::Moderate).is_err());
    }

    #[test]
    fn exit_records_become_honest_statuses() {
        let exit = |code: Option<i64>, signal: Option<i32>| StubExit {
            exit_code: code,
            signal,
            timed_out: false,
            oom_killed: false,
            truncated: false,
            error: None,
        };
        let now = Instant::now();
        let result = result_from_exit(exit(Some(42), None), Collected::default(), now);
        assert_eq!(
            (result.status, result.exit_code),
            (Status::Exited, Some(42))
        );
        let result = result_from_exit(exit(None, Some(9)), Collected::default(), now);
        assert_eq!(
            (result.status, result.exit_code),
            (Status::Signaled, Some(137))
        );
        assert_eq!(result.signal, Some(9));
        let mut oom = exit(None, Some(9));
        oom.oom_killed = true;
        assert_eq!(
            result_from_exit(oom, Collected::default(), now).status,
            Status::OomKilled
        );
        let mut late = exit(None, None);
        late.timed_out = true;
        let result = result_from_exit(late, Collected::default(), now);
        assert_eq!((result.status, result.exit_code), (Status::Timeout, None));
    }
}
