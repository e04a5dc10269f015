//! Pauses and `docker exec` starts of one container, kept apart. Freezing a container
//! while `runc exec` sets a process up in it wedges the container: runc's init is
//! frozen half-way, the engine's calls on the container wait for it until their
//! timeout, and even `docker rm -f` hangs (seen here with a pause racing a detached
//! exec's start). So a pause waits for the starts in flight, and a start waits for a
//! pause in flight (and for one waiting: else a steady stream of starts keeps pauses
//! out); a start is over once its process runs. Within this process: a pause at the
//! engine behind the server's back is not covered. Both waits are bounded (`WAIT`):
//! past it a pause is refused (the sandbox is busy), and a command's start fails as
//! the engine's (its pause call is that slow). A deadline's kill waits only for a pause
//! in flight, never for one waiting, and goes on past `WAIT`.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::engine::{Docker, DockerError};

/// The longest a pause waits for starts, or a start for a pause.
const WAIT: Duration = Duration::from_secs(10);
/// The longest a start waits for the engine to say its process runs.
const RUNNING_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, Default, PartialEq, Eq)]
struct Gate {
    starting: usize,
    /// Pauses waiting for the starts in flight: new starts wait for them (else a steady
    /// stream of starts would keep a pause out).
    waiting: usize,
    pausing: bool,
}

static GATES: Mutex<BTreeMap<String, Gate>> = Mutex::new(BTreeMap::new());
static CHANGED: Condvar = Condvar::new();

fn gates() -> MutexGuard<'static, BTreeMap<String, Gate>> {
    GATES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits, at most until `deadline`, while `busy` holds of the container's gate.
fn wait_while<'a>(
    mut gates: MutexGuard<'a, BTreeMap<String, Gate>>,
    container: &str,
    deadline: Instant,
    busy: impl Fn(&Gate) -> bool,
) -> (MutexGuard<'a, BTreeMap<String, Gate>>, bool) {
    loop {
        if !gates.get(container).is_some_and(&busy) {
            return (gates, true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (gates, false);
        }
        gates = CHANGED
            .wait_timeout(gates, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn release(container: &str, change: impl FnOnce(&mut Gate)) {
    let mut gates = gates();
    if let Some(gate) = gates.get_mut(container) {
        change(gate);
        if *gate == Gate::default() {
            gates.remove(container);
        }
    }
    drop(gates);
    CHANGED.notify_all();
}

/// A `docker exec` start in flight, until dropped.
pub struct Starting(String);

impl Drop for Starting {
    fn drop(&mut self) {
        release(&self.0, |gate| {
            gate.starting = gate.starting.saturating_sub(1)
        });
    }
}

/// Before an exec's create: waits for a pause in flight or waiting (at most `WAIT`);
/// hold it until the exec's process runs (`until_running`, or its first output).
pub fn starting(container: &str) -> Result<Starting, DockerError> {
    let (gates, clear) = wait_while(gates(), container, Instant::now() + WAIT, |gate| {
        gate.pausing || gate.waiting > 0
    });
    if !clear {
        return Err(DockerError::Io {
            operation: "exec".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "a pause of the container did not end within {} s",
                    WAIT.as_secs()
                ),
            ),
        });
    }
    Ok(start_in(gates, container))
}

/// `starting` for a deadline's kill: waits only for a pause in flight, and goes on
/// past `WAIT` (a kill that cannot wait).
pub fn starting_a_kill(container: &str) -> Starting {
    let (gates, _) = wait_while(gates(), container, Instant::now() + WAIT, |gate| {
        gate.pausing
    });
    start_in(gates, container)
}

fn start_in(mut gates: MutexGuard<'_, BTreeMap<String, Gate>>, container: &str) -> Starting {
    gates.entry(container.to_string()).or_default().starting += 1;
    Starting(container.to_string())
}

/// A pause in flight, until dropped.
pub struct Pausing(String);

impl Drop for Pausing {
    fn drop(&mut self) {
        release(&self.0, |gate| gate.pausing = false);
    }
}

/// Before a pause: waits for the starts (and another pause) in flight; `None` when they
/// did not end within `WAIT` (the pause is not made).
pub fn pausing(container: &str) -> Option<Pausing> {
    let mut gates = gates();
    gates.entry(container.to_string()).or_default().waiting += 1;
    let (mut gates, clear) = wait_while(gates, container, Instant::now() + WAIT, |gate| {
        gate.starting > 0 || gate.pausing
    });
    if let Some(gate) = gates.get_mut(container) {
        gate.waiting = gate.waiting.saturating_sub(1);
    }
    if !clear {
        let empty = gates.get(container) == Some(&Gate::default());
        if empty {
            gates.remove(container);
        }
        drop(gates);
        CHANGED.notify_all();
        return None;
    }
    gates.entry(container.to_string()).or_default().pausing = true;
    Some(Pausing(container.to_string()))
}

/// After an attached exec's start (the engine answers before its process is set up):
/// returns once the engine has the process's pid (it says `Running` before the runtime
/// has set the process up: measured) or its exit code, or after `RUNNING_WITHIN`.
pub fn until_running(docker: &Docker, exec_id: &str) {
    let deadline = Instant::now() + RUNNING_WITHIN;
    while Instant::now() < deadline {
        match docker.exec_inspect(exec_id) {
            Ok(found) if found.pid <= 0 && found.exit_code.is_none() => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_waits_for_starts_and_starts_for_a_pause() {
        let container = "gate-test-1";
        let start = starting(container).unwrap();
        let paused_at = std::sync::Arc::new(Mutex::new(None));
        let pause = std::thread::Builder::new()
            .name("gate-pause".into())
            .spawn({
                let paused_at = std::sync::Arc::clone(&paused_at);
                move || {
                    let held = pausing(container).unwrap();
                    *paused_at.lock().unwrap() = Some(Instant::now());
                    std::thread::sleep(Duration::from_millis(200));
                    drop(held);
                }
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(paused_at.lock().unwrap().is_none(), "paused during a start");
        let started_done = Instant::now();
        drop(start);
        std::thread::sleep(Duration::from_millis(50));
        let paused = paused_at.lock().unwrap().expect("the pause went on");
        assert!(paused >= started_done);
        // A start meanwhile waits for the pause to end.
        let second = starting(container).unwrap();
        assert!(paused.elapsed() >= Duration::from_millis(190));
        drop(second);
        pause.join().unwrap();
        assert!(gates().get(container).is_none(), "nothing kept");
    }

    #[test]
    fn a_steady_stream_of_starts_never_keeps_a_pause_out() {
        let container = "gate-test-2";
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Three starters, each always one start in flight (overlapping).
        let starters: Vec<_> = (0..3)
            .map(|n| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::Builder::new()
                    .name(format!("gate-starter-{n}"))
                    .spawn(move || {
                        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                            let held = starting(container).unwrap();
                            std::thread::sleep(Duration::from_millis(20));
                            drop(held);
                        }
                    })
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..3 {
            let asked = Instant::now();
            let held = pausing(container).expect("the pause got in");
            assert!(
                asked.elapsed() < Duration::from_secs(1),
                "{:?}",
                asked.elapsed()
            );
            drop(held);
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for starter in starters {
            starter.join().unwrap();
        }
        assert!(gates().get(container).is_none(), "nothing kept");
    }
}
