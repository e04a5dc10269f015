//! Commands by `docker exec`: where the stub cannot be used (a container without it,
//! a sandbox made by an older release), and the stub's own file and detached operations.
//! Deadlines and cancellations are kept from outside, since the engine's exec has no
//! kill and a dropped connection does not stop anything (notes §5): a second exec kills
//! every process of the first by a mark they all carry.
//!
//! A command's mark is its audit login uid (`/proc/PID/loginuid`): a shell sets it to a
//! number of ours before it `exec`s the command, and from then on no process of the
//! command can change it (that takes `CAP_AUDIT_CONTROL`, which no container of ours
//! has) and every process it forks inherits it, whatever it does to its environment, its
//! session or its parent. It needs a kernel with audit support and an engine whose
//! processes have no login uid yet (the engine's own service, not a login session, so
//! any systemd host); where the kill finds otherwise it says so in the log once, and only
//! the second mark, a token in the environment, remains, which a command can remove.
//! The stub's own operations, which need no shell, carry only the token.
//!
//! When the engine could not start the process, what it wrote in the stream is read by
//! `engine::exec_refusal`, never here: a missing program is the command's exit 127, an
//! unusable workdir an `Error::WorkdirUnusable`.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::engine::{Docker, DockerError, ExecSpec};
use crate::error::{Error, Result};
use crate::exec::{collect_stream, CommandResult, CommandSpec, OutputSink, Status};

/// The environment variable that marks the processes of one `docker exec`.
const EXEC_TOKEN: &str = "AGENTKERNEL_RUN";

/// How the processes of one exec are found again.
struct Mark {
    /// The audit login uid its shell gives the command (none for the stub's operations).
    login_uid: Option<u32>,
    token: String,
}

impl Mark {
    fn new(with_login_uid: bool) -> Mark {
        static EXECS: AtomicU64 = AtomicU64::new(0);
        let count = EXECS.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Unique among the execs of this server, and unlikely to meet another's: a
        // valid uid (never 2^32 - 1, "unset") in [2^30, 2^31).
        let mixed = (u64::from(std::process::id()) << 20) ^ (count << 8) ^ u64::from(nanos);
        Mark {
            login_uid: with_login_uid.then_some((1 << 30) | (mixed as u32 & 0x3fff_ffff)),
            token: format!("x{}-{count}", std::process::id()),
        }
    }

    /// The exec's argv: the command itself, behind a shell that marks it first. The
    /// shell leaves nothing of its own in the environment (`PWD`, `SHLVL`) unless the
    /// command was given it, and `exec "$@"` keeps the argv exact.
    fn argv(&self, spec: &CommandSpec) -> Vec<String> {
        let Some(login_uid) = self.login_uid else {
            return spec.argv.clone();
        };
        let given = |key: &str| {
            spec.env
                .iter()
                .any(|entry| entry.split_once('=').is_some_and(|(k, _)| k == key))
        };
        let unset: Vec<&str> = ["PWD", "SHLVL"]
            .into_iter()
            .filter(|key| !given(key))
            .collect();
        let unset = if unset.is_empty() {
            String::new()
        } else {
            format!("unset {}; ", unset.join(" "))
        };
        let script =
            format!("echo {login_uid} 2>/dev/null >/proc/self/loginuid; {unset}exec \"$@\"");
        let mut argv = vec!["sh".to_string(), "-c".to_string(), script, "sh".to_string()];
        argv.extend(spec.argv.iter().cloned());
        argv
    }
}

/// Runs a user's command with `docker exec` in a running container that has no stub;
/// see the module comment for how its processes are marked and killed.
pub fn exec_direct(
    docker: &Docker,
    container: &str,
    spec: &CommandSpec,
    started: Instant,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    exec_marked(docker, container, spec, &Mark::new(true), started, sink)
}

/// Runs one of the stub's own operations with `docker exec`: exact argv, no shell, so
/// that it works in images without one.
pub fn exec_plain(
    docker: &Docker,
    container: &str,
    spec: &CommandSpec,
    started: Instant,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    exec_marked(docker, container, spec, &Mark::new(false), started, sink)
}

/// Starts `argv` as an exec nobody attaches to (a detached command's supervisor): the
/// engine answers at once and the process runs on, an exec root of its own.
pub fn spawn_detached(
    docker: &Docker,
    container: &str,
    argv: Vec<String>,
    env: Vec<String>,
) -> std::result::Result<(), DockerError> {
    let spec = ExecSpec {
        cmd: argv,
        env,
        ..ExecSpec::default()
    };
    // (A detached start is answered once its process runs.)
    let _starting = crate::exec::gate::starting(container)?;
    let exec_id = docker.exec_create(container, &spec)?;
    docker.exec_start_detached(&exec_id)
}

fn exec_marked(
    docker: &Docker,
    container: &str,
    spec: &CommandSpec,
    mark: &Mark,
    started: Instant,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    let mut env = spec.env.clone();
    env.push(format!("{EXEC_TOKEN}={}", mark.token));
    let exec_spec = ExecSpec {
        cmd: mark.argv(spec),
        env,
        working_dir: spec.workdir.clone(),
        user: None,
        attach_stdin: spec.stdin.is_some(),
    };
    let starting = crate::exec::gate::starting(container)?;
    let exec_id = docker.exec_create(container, &exec_spec)?;
    let mut hijacked = docker.exec_start(&exec_id)?;
    crate::exec::gate::until_running(docker, &exec_id);
    drop(starting);
    crate::exec::connected(sink, &hijacked.stdin);
    let feed = spec.stdin.as_deref().map(|data| {
        let writer = hijacked.stdin.try_clone();
        (writer, move |mut writer: UnixStream| {
            writer.write_all(data)?;
            writer.shutdown(std::net::Shutdown::Write)
        })
    });
    // Whether the kill at the deadline reached the command (a paused container, say,
    // refuses it): a timeout is reported only if it did.
    let deadline_kill = std::cell::Cell::new(true);
    let collected = with_feeder(feed, || {
        collect_stream(
            &mut hijacked,
            Instant::now() + spec.timeout,
            spec.max_output_bytes,
            || deadline_kill.set(kill_exec_tree(docker, container, mark)),
            sink,
        )
    });
    // Processes of a `docker exec` outlive its connection: when the observer cancelled
    // the command (or the stream broke), kill them from outside.
    if crate::exec::cancelled(sink) {
        kill_exec_tree(docker, container, mark);
        return Err(Error::RunLost(
            "the command was stopped: its client went away".into(),
        ));
    }
    let collected = collected.map_err(|source| {
        kill_exec_tree(docker, container, mark);
        Error::Engine(DockerError::Io {
            operation: "exec stream".into(),
            source,
        })
    })?;
    if collected.timed_out && !deadline_kill.get() {
        return Err(Error::RunLost(
            "the command passed its deadline and could not be killed".into(),
        ));
    }
    let mut exit_code = if collected.timed_out {
        None
    } else {
        wait_exec_exit(docker, &exec_id)?
    };
    match crate::engine::exec_refusal(exit_code, &collected.stdout, &collected.stderr) {
        None => {}
        // A program that is not there is the command's own outcome, as a shell (and
        // the stub) report it: 127, with the engine's words as its output.
        Some(DockerError::ExecutableNotFound { .. }) => exit_code = Some(127),
        Some(DockerError::WorkdirUnusable { dir, reason }) => {
            return Err(Error::WorkdirUnusable { dir, reason })
        }
        Some(refusal) => return Err(Error::Engine(refusal)),
    }
    let status = if collected.timed_out {
        Status::Timeout
    } else if collected.truncated {
        Status::OutputTruncated
    } else {
        Status::Exited
    };
    Ok(CommandResult {
        output: collected.output,
        stdout: collected.stdout,
        stderr: collected.stderr,
        exit_code,
        signal: None,
        status,
        duration: started.elapsed(),
        message: None,
    })
}

/// Kills every process of an exec from a second exec, as the same user: those with its
/// login uid, and those with its token in their environment; round after round until a
/// round finds none. Needs a shell in the image: without the stub, containers run an
/// idle shell anyway. Prints `unmarked` (and nothing else, ever) when this engine's
/// processes cannot be marked.
const KILL_SCRIPT: &str =
    "m=\"$1\"; t=\"$0=$2\"; own=; read own </proc/self/loginuid 2>/dev/null; \
    [ \"$own\" = 4294967295 ] || echo unmarked; round=0; \
    while [ $round -lt 100 ]; do found=; for d in /proc/[0-9]*; do l=; \
    read l <\"$d/loginuid\" 2>/dev/null; \
    if [ -n \"$m\" ] && [ \"$l\" = \"$m\" ] || grep -qzx \"$t\" \"$d/environ\" 2>/dev/null; then \
    kill -KILL \"${d#/proc/}\" 2>/dev/null && found=1; fi; done; \
    [ -n \"$found\" ] || break; round=$((round+1)); done; true";

/// Kills every process of the exec marked `mark`; false if the engine would not run the
/// killer.
fn kill_exec_tree(docker: &Docker, container: &str, mark: &Mark) -> bool {
    let login_uid = mark
        .login_uid
        .map(|uid| uid.to_string())
        .unwrap_or_default();
    let killer = ExecSpec {
        cmd: vec![
            "sh".into(),
            "-c".into(),
            KILL_SCRIPT.into(),
            EXEC_TOKEN.into(),
            login_uid,
            mark.token.clone(),
        ],
        ..ExecSpec::default()
    };
    let mut said = Vec::new();
    // (Held until the kill's output is drained: it runs for a moment.)
    let _starting = crate::exec::gate::starting_a_kill(container);
    let killed = docker
        .exec_create(container, &killer)
        .and_then(|id| docker.exec_start(&id))
        .map(|mut hijacked| {
            let _ = hijacked.set_read_timeout(Some(Duration::from_secs(5)));
            crate::engine::drain_frames(&mut hijacked.frames, |_, bytes| {
                said.extend_from_slice(bytes)
            })
        });
    let done = match killed {
        Ok(_) => {
            log::info!("exec in container {container} stopped: its processes were killed");
            true
        }
        Err(error) => {
            log::warn!("exec in container {container} stopped; cannot kill its processes: {error}");
            false
        }
    };
    static SAID_UNMARKED: AtomicBool = AtomicBool::new(false);
    if mark.login_uid.is_some()
        && said == b"unmarked\n"
        && !SAID_UNMARKED.swap(true, Ordering::SeqCst)
    {
        log::warn!(
            "the engine's processes already have an audit login uid (or the kernel has no \
             audit support): commands run by docker exec are killed by an environment \
             token only, which a command can remove"
        );
    }
    done
}

/// Polls exec inspect until the process is gone: the stream can end a moment before
/// the engine records the exit code.
pub(crate) fn wait_exec_exit(docker: &Docker, exec_id: &str) -> Result<Option<i64>> {
    let give_up = Instant::now() + Duration::from_secs(2);
    loop {
        let inspect = docker.exec_inspect(exec_id)?;
        if !inspect.running || Instant::now() >= give_up {
            return Ok(inspect.exit_code);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `read` while a `stdin-feeder` thread runs `feed` on its own handle of the
/// connection: reading and writing must overlap, or a command that echoes its input
/// deadlocks on a full pipe.
pub fn with_feeder<T, F>(feed: Option<(io::Result<UnixStream>, F)>, read: impl FnOnce() -> T) -> T
where
    F: FnOnce(UnixStream) -> io::Result<()> + Send,
{
    let Some((writer, feed)) = feed else {
        return read();
    };
    // A handle of our own to cut the connection: once reading is over (the command
    // ended, timed out or was cut), a feeder still blocked on a full pipe must not hold
    // the request for its write timeout.
    let cutter = writer.as_ref().ok().and_then(|w| w.try_clone().ok());
    std::thread::scope(|scope| {
        let feeder = std::thread::Builder::new()
            .name("stdin-feeder".into())
            .spawn_scoped(scope, move || feed(writer?));
        let result = read();
        if let Some(cutter) = &cutter {
            let _ = cutter.shutdown(std::net::Shutdown::Write);
        }
        if let Ok(handle) = feeder {
            match handle.join() {
                Ok(Err(error)) => log::debug!("stdin feeder stopped early: {error}"),
                Err(_) => log::warn!("stdin feeder panicked"),
                Ok(Ok(())) => {}
            }
        }
        result
    })
}
