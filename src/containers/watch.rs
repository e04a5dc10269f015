//! The `engine-watch` thread: asks the engine every `INTERVAL` whether it answers, says
//! so in the log when that changes, and puts things right when it comes back.
//!
//! While the engine is down (killed, frozen, restarting) the server stays up: `/health`
//! answers 200 with `engine: "down"`, requests that need the engine answer 503 naming
//! it, and the pool tries no refill. When it answers again (or for the first time, for
//! a server started before it): the start-up sweep runs if it has not yet, the warm
//! containers that died with the engine's connections are replaced, and the removals
//! the engine could not do are retried at once. Sandboxes need nothing from here: their
//! restart policy (`always` while running, `no` once stopped through us) has the engine
//! start the ones that were running when it comes back.
//!
//! Invariants: `/health` never waits for the engine (it reads the state kept here);
//! the thread never calls the engine for longer than `PROBE_TIMEOUT` per probe, and
//! notices shutdown within `STEP`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::containers::pool::Pool;
use crate::containers::sweep;
use crate::engine::{Docker, PROBE_TIMEOUT};

/// How often the engine is asked.
const INTERVAL: Duration = Duration::from_millis(500);
/// How often the thread looks at the shutdown flag while it waits.
const STEP: Duration = Duration::from_millis(100);

pub struct EngineWatch {
    up: AtomicBool,
    /// Whether the start-up sweep has run.
    swept: AtomicBool,
    /// When the server started, in seconds since the epoch: the start-up sweep removes
    /// only what was created before.
    started: i64,
}

impl Default for EngineWatch {
    fn default() -> EngineWatch {
        EngineWatch::new()
    }
}

impl EngineWatch {
    pub fn new() -> EngineWatch {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        EngineWatch {
            up: AtomicBool::new(true),
            swept: AtomicBool::new(false),
            started,
        }
    }

    /// Whether the engine answered the last probe.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// The first look, before the server serves: with the engine up, the start-up
    /// sweep runs now; without it, the server starts anyway and the sweep waits.
    pub fn first_look(&self, docker: &Docker, config: &Config, pool: &Pool) {
        match docker.probe(PROBE_TIMEOUT) {
            Ok(()) => {
                // Nothing of this server's exists yet: everything temporary goes.
                sweep::at_start(docker, config, None);
                self.swept.store(true, Ordering::SeqCst);
            }
            Err(error) => {
                log::warn!(
                    "Docker Engine not answering ({error}): serving anyway; requests that \
                     need it answer 503 until it does, and the start-up sweep waits for it"
                );
                self.up.store(false, Ordering::SeqCst);
                pool.engine_lost();
            }
        }
    }

    /// The `engine-watch` thread's body, until `shutdown`.
    pub fn watch_loop(&self, docker: &Docker, config: &Config, pool: &Pool, shutdown: &AtomicBool) {
        while !shutdown.load(Ordering::SeqCst) {
            let answered = docker.probe(PROBE_TIMEOUT);
            match (answered, self.is_up()) {
                (Ok(()), true) => {
                    pool.cleanup().retry(docker);
                    crate::containers::disk::sweep_now_and_then(docker);
                    disks_now_and_then(docker, config);
                }
                (Ok(()), false) => {
                    log::info!(
                        "Docker Engine at {} answers again",
                        docker.socket().display()
                    );
                    self.recover(docker, config, pool);
                    self.up.store(true, Ordering::SeqCst);
                }
                (Err(error), true) => {
                    log::warn!(
                        "Docker Engine not answering: {error}; requests that need it answer \
                         503 until it is back"
                    );
                    self.up.store(false, Ordering::SeqCst);
                    pool.engine_lost();
                }
                (Err(_), false) => {}
            }
            let mut waited = Duration::ZERO;
            while waited < INTERVAL && !shutdown.load(Ordering::SeqCst) {
                std::thread::sleep(STEP);
                waited += STEP;
            }
        }
    }

    /// What the engine's return needs: the sweep it may have missed, a pool without the
    /// dead, and the removals it owes.
    fn recover(&self, docker: &Docker, config: &Config, pool: &Pool) {
        if !self.swept.load(Ordering::SeqCst) {
            // Created before the server started: its own containers are younger.
            sweep::at_start(docker, config, Some(self.started));
            self.swept.store(true, Ordering::SeqCst);
        }
        // Its restart unmounted the disks' binds of the containers it started again.
        sweep::give_disks_back(docker, config);
        pool.engine_back(docker);
        let cleanup = pool.cleanup();
        cleanup.due_now();
        let settled = cleanup.retry(docker);
        if settled > 0 {
            log::info!("settled {settled} container removals owed while the engine was away");
        }
    }
}

/// `sweep::give_disks_back`, at most every 30 s (an engine restarted between two
/// looks of the watch unmounted the disks' binds as it stopped).
fn disks_now_and_then(docker: &Docker, config: &Config) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|at| at.elapsed() < Duration::from_secs(30)) {
        return;
    }
    *last = Some(std::time::Instant::now());
    drop(last);
    sweep::give_disks_back(docker, config);
}
