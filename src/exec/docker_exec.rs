//! Commands by `docker exec`: where the stub cannot be used (a container without it,
//! a sandbox made by an older release), and the stub's own file and detached operations.
//! Deadlines and cancellations are kept from outside: every process of an exec carries a
//! token in its environment, and a second exec kills them all (a dropped connection
//! does not stop them). When the engine could not start the process, what it wrote in
//! the stream is read by `engine::exec_refusal`, never here: a missing program is the
//! command's exit 127, an unusable workdir an `Error::WorkdirUnusable`.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::engine::{Docker, DockerError, ExecSpec};
use crate::error::{Error, Result};
use crate::exec::{collect_stream, CommandResult, CommandSpec, OutputSink, Status};

/// Runs one of the stub's own operations with `docker exec`.
pub fn exec_plain(
    docker: &Docker,
    container: &str,
    spec: &CommandSpec,
    started: Instant,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    exec_direct(docker, container, spec, started, sink)
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
    let exec_id = docker.exec_create(container, &spec)?;
    docker.exec_start_detached(&exec_id)
}

/// Runs a command with `docker exec` in a running container.
pub fn exec_direct(
    docker: &Docker,
    container: &str,
    spec: &CommandSpec,
    started: Instant,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    // Every process of this exec carries the token, so that a deadline can find them
    // all (the engine's exec has no kill of its own).
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let token = format!(
        "x{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let mut env = spec.env.clone();
    env.push(format!("{EXEC_TOKEN}={token}"));
    let exec_spec = ExecSpec {
        cmd: spec.argv.clone(),
        env,
        working_dir: spec.workdir.clone(),
        user: None,
        attach_stdin: spec.stdin.is_some(),
    };
    let exec_id = docker.exec_create(container, &exec_spec)?;
    let mut hijacked = docker.exec_start(&exec_id)?;
    crate::exec::connected(sink, &hijacked);
    let feed = spec.stdin.as_deref().map(|data| {
        let writer = hijacked.stdin.try_clone();
        (writer, move |mut writer: UnixStream| {
            writer.write_all(data)?;
            writer.shutdown(std::net::Shutdown::Write)
        })
    });
    let collected = with_feeder(feed, || {
        collect_stream(
            &mut hijacked,
            Instant::now() + spec.timeout,
            spec.max_output_bytes,
            || kill_exec_tree(docker, container, &token),
            sink,
        )
    });
    // Processes of a `docker exec` outlive its connection: when the observer cancelled
    // the command (or the stream broke), kill them from outside.
    if crate::exec::cancelled(sink) {
        kill_exec_tree(docker, container, &token);
        return Err(Error::RunLost(
            "the command was stopped: its client went away".into(),
        ));
    }
    let collected = collected.map_err(|source| {
        kill_exec_tree(docker, container, &token);
        Error::Engine(DockerError::Io {
            operation: "exec stream".into(),
            source,
        })
    })?;
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

/// The environment variable that marks the processes of one `docker exec`.
const EXEC_TOKEN: &str = "AGENTKERNEL_RUN";

/// Kills every process of an exec from a second exec, as the same user, by the token
/// in their environment (notes §5: a dropped exec connection does not stop anything).
/// Needs a shell in the image: without the stub, containers run an idle shell anyway.
fn kill_exec_tree(docker: &Docker, container: &str, token: &str) {
    const SCRIPT: &str = "t=\"$0=$1\"; for round in 1 2 3; do for d in /proc/[0-9]*; do \
        grep -qzx \"$t\" \"$d/environ\" 2>/dev/null && kill -KILL \"${d#/proc/}\" 2>/dev/null; \
        done; done; true";
    let killer = ExecSpec {
        cmd: vec![
            "sh".into(),
            "-c".into(),
            SCRIPT.into(),
            EXEC_TOKEN.into(),
            token.into(),
        ],
        ..ExecSpec::default()
    };
    let killed = docker
        .exec_create(container, &killer)
        .and_then(|id| docker.exec_start(&id))
        .map(|mut hijacked| {
            let _ = hijacked.set_read_timeout(Some(Duration::from_secs(5)));
            crate::engine::drain_frames(&mut hijacked.frames, |_, _| {})
        });
    match killed {
        Ok(_) => log::info!("exec in container {container} passed its deadline: killed"),
        Err(error) => {
            log::warn!("exec in container {container} passed its deadline; cannot kill it: {error}")
        }
    }
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
