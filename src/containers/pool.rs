//! The warm pool of temporary containers (launched by `launcher`).
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::{json, Value};

use crate::config::{Config, PoolKey};
use crate::containers::cleanup::Cleanup;
use crate::containers::demand::{self, Demand, Sizing};
use crate::containers::labels::Kind;
use crate::containers::launcher::{launch, remove_warm, Launcher, Purpose, Warm};
use crate::engine::{Docker, DockerError};
use crate::error::{Error, Result};

/// Most keys the pool keeps warm containers for.
pub const MAX_KEYS: usize = 16;
/// Longest pause between refill attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a key that requests added may go unused before it is dropped.
const DYNAMIC_IDLE: Duration = Duration::from_secs(600);
/// How long without a take counts as a quiet moment for refills and teardowns.
const QUIET: Duration = Duration::from_millis(150);
/// How long after a take even an urgent refill waits (see `refill_loop`).
const SETTLE: Duration = Duration::from_millis(50);
/// Most used containers held for a quiet moment, and longest hold.
pub const MAX_HELD: usize = 32;
const MAX_HOLD: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct KeyState {
    /// The least this key keeps warm (`--pool`, `--pool-size`, `--pool-dynamic-size`).
    min: usize,
    /// The fast requests that wanted one of its containers lately.
    demand: Demand,
    /// What it keeps warm now (`sizing.target`), and why: set by `Pool::resize`.
    sizing: Sizing,
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

impl KeyState {
    fn new(min: usize, last_used: Option<Instant>) -> KeyState {
        KeyState {
            min,
            sizing: Sizing {
                min,
                wanted: min,
                target: min,
                ..Sizing::default()
            },
            last_used,
            ..KeyState::default()
        }
    }

    /// Ready containers beyond the target, oldest first, taken out.
    fn surplus(&mut self) -> Vec<Warm> {
        let extra = self.ready.len().saturating_sub(self.sizing.target);
        self.ready.drain(..extra).map(|slot| slot.0).collect()
    }
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
    /// stub copy was deleted since start): from then on, the exec launcher.
    stub_unusable: AtomicBool,
    keys: Mutex<BTreeMap<PoolKey, KeyState>>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// Least kept for keys added because requests used them.
    dynamic_target: usize,
    /// Most kept for all keys together (unless their minimums add up to more).
    max_target: usize,
    max_keys: usize,
    reap_sender: Sender<Warm>,
    reap_receiver: Receiver<Warm>,
    /// Containers queued for removal or being removed.
    reaping: AtomicUsize,
    /// Warm containers removed since the start (for `GET /metrics`).
    reaped: std::sync::atomic::AtomicU64,
    /// Requests launching a container of their own right now (the cold path).
    cold_starts: AtomicUsize,
    /// When a request last took a warm container.
    last_take: Mutex<Option<Instant>>,
    /// Remove used containers on the caller's thread (no reaper thread runs).
    inline_reaping: bool,
    /// Removals the engine could not do yet.
    cleanup: Cleanup,
    /// Whether the engine answers (as `engine-watch` last saw it): no refill is tried
    /// while it does not, and the pool is renewed when it comes back.
    engine_up: AtomicBool,
}

impl Pool {
    /// A pool for one process that serves one command at a time (the CLI): no warm
    /// containers, no background threads, used containers removed at once.
    pub fn local(launcher: Launcher) -> Pool {
        let mut pool = Pool::new(launcher, &[], 0, 0);
        pool.inline_reaping = true;
        pool
    }

    /// A pool keeping `initial` keys warm, at least their given number each, and keys
    /// that requests use at least `dynamic_target`; keys grow with demand, all of them
    /// together up to `max_target` (see `demand`).
    pub fn new(
        launcher: Launcher,
        initial: &[(PoolKey, usize)],
        dynamic_target: usize,
        max_target: usize,
    ) -> Pool {
        let mut keys = BTreeMap::new();
        for (key, min) in initial {
            keys.insert(key.clone(), KeyState::new(*min, None));
        }
        let (reap_sender, reap_receiver) = bounded(4096);
        Pool {
            launcher,
            stub_unusable: AtomicBool::new(false),
            keys: Mutex::new(keys),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            dynamic_target,
            max_target,
            max_keys: MAX_KEYS,
            reap_sender,
            reap_receiver,
            reaping: AtomicUsize::new(0),
            reaped: std::sync::atomic::AtomicU64::new(0),
            cold_starts: AtomicUsize::new(0),
            last_take: Mutex::new(None),
            inline_reaping: false,
            cleanup: Cleanup::default(),
            engine_up: AtomicBool::new(true),
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
            Error::Engine(DockerError::MountSourceMissing { .. } | DockerError::MountInvalid(_))
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
        purpose: Purpose<'_>,
    ) -> Result<Warm> {
        // `launcher()` is asked again for the retry: a failed stub mount switches it.
        let attempt = || {
            launch(
                docker,
                config,
                &self.cleanup,
                &self.launcher(),
                key,
                purpose,
            )
        };
        match attempt() {
            Err(error) if self.stub_mount_failed(&error) => attempt(),
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
        let now = Instant::now();
        let mut keys = self.lock();
        let state = keys.get_mut(key)?;
        if state.last_used.is_some() {
            state.last_used = Some(now);
        }
        state.demand.record(now);
        *self.last_take.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
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
        // The refill thread, woken, sets the targets from the demand (as `stats` does).
        drop(keys);
        self.wake.notify_all();
        taken
    }

    /// Removals the engine could not do yet (see `Cleanup`).
    pub fn cleanup(&self) -> &Cleanup {
        &self.cleanup
    }

    /// The engine stopped answering: no refill is tried until it is back.
    pub fn engine_lost(&self) {
        self.engine_up.store(false, Ordering::SeqCst);
    }

    /// The engine answers again: the warm containers of before are gone with its
    /// connections (their stubs saw them close), so they are removed, and every key is
    /// refilled at once, its failures forgotten.
    pub fn engine_back(&self, docker: &Docker) {
        let dead: Vec<Warm> = {
            let mut keys = self.lock();
            let mut dead = Vec::new();
            for state in keys.values_mut() {
                let (alive, gone): (Vec<WarmSlot>, Vec<WarmSlot>) =
                    state.ready.drain(..).partition(|slot| slot.0.is_alive());
                state.ready = alive.into();
                dead.extend(gone.into_iter().map(|slot| slot.0));
                state.failures_in_a_row = 0;
                state.retry_at = None;
            }
            dead
        };
        self.engine_up.store(true, Ordering::SeqCst);
        self.wake.notify_all();
        if !dead.is_empty() {
            log::info!(
                "pool: {} warm containers did not survive the engine's absence; refilling",
                dead.len()
            );
        }
        for warm in dead {
            self.reap(docker, warm);
        }
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
                KeyState::new(self.dynamic_target, Some(Instant::now())),
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

    /// Sets every key's target from its demand, within `max_target` for all of them
    /// together (see `demand`).
    fn resize(&self, keys: &mut BTreeMap<PoolKey, KeyState>, now: Instant) {
        for state in keys.values_mut() {
            state.sizing = Sizing::new(state.min, self.max_target, &mut state.demand, now);
        }
        demand::share(
            keys.values_mut().map(|state| &mut state.sizing),
            self.max_target,
        );
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
            remove_warm(docker, &self.cleanup, error.into_inner());
            self.reaping.fetch_sub(1, Ordering::SeqCst);
            self.reaped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> Value {
        let mut keys = self.lock();
        self.resize(&mut keys, Instant::now());
        let entries: Vec<Value> = keys
            .iter()
            .map(|(key, state)| {
                json!({
                    "image": key.image,
                    "profile": key.profile.name(),
                    "network": key.network.name(),
                    "runtime": key.runtime,
                    "target": state.sizing.target,
                    "ready": state.ready.len(),
                    "creating": state.creating,
                    "in_use": state.in_use,
                    "created": state.created,
                    "failed": state.failed,
                    "fallbacks": state.fallbacks,
                    "sizing": state.sizing.to_json(),
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
            "reaped": self.reaped.load(Ordering::Relaxed),
            "owed_removals": self.cleanup.owed(),
        })
    }

    /// The `pool-refill` thread's body: tops up every key until shutdown.
    pub fn refill_loop(&self, docker: &Docker, config: &Config) {
        loop {
            for warm in self.expire_idle_keys() {
                self.reap(docker, warm);
            }
            let next = {
                let mut keys = self.lock();
                loop {
                    if self.shutdown.load(Ordering::SeqCst) {
                        return;
                    }
                    let now = Instant::now();
                    // Targets follow demand down as well as up: what is beyond them
                    // goes (removed by the reaper in a quiet moment).
                    self.resize(&mut keys, now);
                    let surplus: Vec<Warm> =
                        keys.values_mut().flat_map(KeyState::surplus).collect();
                    if !surplus.is_empty() {
                        break Err(surplus);
                    }
                    // Starting a container is heavy work for the engine, and it slows
                    // the runs going on meanwhile: while requests keep coming, only a
                    // key down to a quarter of its target is refilled at once; the
                    // rest waits for a quiet moment.
                    // Even an urgent refill waits a moment after a take, so that requests
                    // arriving together have marked their cold starts (below) first.
                    let last_take = *self.last_take.lock().unwrap_or_else(|e| e.into_inner());
                    let quiet_at = last_take.map(|at| at + QUIET).filter(|at| *at > now);
                    let settled_at = last_take.map(|at| at + SETTLE).filter(|at| *at > now);
                    // No refill starts while a request launches its own container (the
                    // request's start would queue behind ours in the engine), unless
                    // the key has nothing ready or coming: requests that keep arriving
                    // faster than a cold start would otherwise never let it refill.
                    let cold_starts = self.cold_starts.load(Ordering::SeqCst);
                    let engine_up = self.engine_up.load(Ordering::SeqCst);
                    let wanted = keys.iter().find(|(_, state)| {
                        let have = state.ready.len() + state.creating;
                        let urgent = have < state.sizing.target.div_ceil(4);
                        engine_up
                            && (cold_starts == 0 || have == 0)
                            && settled_at.is_none()
                            && have < state.sizing.target
                            && (urgent || quiet_at.is_none())
                            && state.retry_at.is_none_or(|at| at <= now)
                    });
                    if let Some((key, _)) = wanted {
                        let key = key.clone();
                        keys.get_mut(&key).expect("key exists").creating += 1;
                        break Ok(key);
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
            let key = match next {
                Ok(key) => key,
                Err(surplus) => {
                    for warm in surplus {
                        self.reap(docker, warm);
                    }
                    continue;
                }
            };
            let purpose = Purpose {
                kind: Kind::Pool,
                workdir: None,
                disk_mb: config.disk_for(key.profile),
                allow: None,
            };
            let launched = self.launch(docker, config, &key, purpose);
            if self.shutdown.load(Ordering::SeqCst) {
                // `shut_down` has already emptied the pool: this one would be missed.
                if let Ok(warm) = launched {
                    remove_warm(docker, &self.cleanup, warm);
                }
                return;
            }
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
                        "pool: cannot start a warm {}/{}/{}/{} container: {error}",
                        key.image,
                        key.profile,
                        key.network,
                        key.runtime.as_deref().unwrap_or("default")
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
                remove_warm(docker, &self.cleanup, warm);
                self.reaping.fetch_sub(1, Ordering::SeqCst);
                self.reaped.fetch_add(1, Ordering::Relaxed);
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
            remove_warm(docker, &self.cleanup, warm);
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
