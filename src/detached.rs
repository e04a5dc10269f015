//! Detached execs: commands started in a persistent sandbox that outlive the request,
//! the published SDKs' `exec_detached` family. All their state lives inside the
//! sandbox, under `/tmp/.agentkernel-detached/<id>/` (the command line, the pid, its
//! stdout and stderr, and its exit once known), so it survives a server restart and
//! goes away with the sandbox. The in-container side runs as our stub (`agentkernel
//! stub --supervise ...`, `--detached-status ...`), as the sandbox's user; the server
//! side turns each operation into one `docker exec` of it.
//!
//! Invariants: ids are 16 lowercase hex digits, checked on both sides, so an id never
//! names a path outside the state directory; a detached command runs below its
//! supervisor (`stub --supervise ID`), an exec of its own that nobody attaches to, a
//! child subreaper that records the command's exit and stays while anything the
//! command started runs. Found again by what only an exec root can be (parent 0 inside
//! the container, and its own argv), never by the pid file a command could rewrite, the
//! supervisor is what a kill (DELETE) goes by: everything below it is killed, and if it
//! was killed itself, the sandbox's init has killed what it left (`stub::reap`). Output
//! is bounded by the size of the sandbox's `/tmp` tmpfs, and reads of it by
//! `MAX_LOG_BYTES`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::config::Config;
use crate::containers::labels::{rfc3339, SandboxName};
use crate::engine::Docker;
use crate::error::{Error, Result};
use crate::exec::{CommandSpec, NoObserver};
use crate::sandbox::{exec_in, ExecTarget, Via};
use crate::stub::reap::{self, list_processes, ProcessEntry};
use crate::stub::STUB_PATH;

const STATE_DIR: &str = "/tmp/.agentkernel-detached";
/// Most bytes of each stream a logs read returns (the newest ones).
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;
/// Exit code of the in-container side for an unknown id.
const NOT_FOUND: i32 = 10;

/// An in-container operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetachedOp {
    /// Waits (briefly) for the supervisor started for `id` to have started its command,
    /// and prints the command's record.
    Wait {
        id: String,
    },
    /// The supervisor itself: runs `argv` in `workdir` (made if missing) and records
    /// it; started by the server as an exec of its own.
    Supervise {
        id: String,
        workdir: Option<String>,
        argv: Vec<String>,
    },
    Status {
        id: String,
    },
    List,
    Kill {
        id: String,
    },
    Logs {
        id: String,
    },
}

pub fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn new_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:016x}",
        (nanos as u64) ^ (u64::from(std::process::id()) << 48)
    )
}

fn dir(id: &str) -> PathBuf {
    PathBuf::from(STATE_DIR).join(id)
}

// ---- In the container -----------------------------------------------------------

/// Runs an operation inside the container; prints JSON on stdout; returns the exit
/// code (0, `NOT_FOUND`, or 1 with a message on stderr).
pub fn run_op(op: DetachedOp) -> i32 {
    let result = match op {
        DetachedOp::Wait { id } => wait_started(&id).map(|r| r.to_string()),
        // Nobody reads its output: it answers through its files.
        DetachedOp::Supervise { id, workdir, argv } => {
            return match supervise(&id, workdir.as_deref(), &argv) {
                Ok(_) => 0,
                Err((code, message)) => {
                    eprintln!("{message}");
                    code
                }
            }
        }
        DetachedOp::Status { id } => record(&id).map(|r| r.to_string()),
        DetachedOp::List => list().map(|r| r.to_string()),
        DetachedOp::Kill { id } => kill(&id),
        DetachedOp::Logs { id } => logs(&id).map(|r| r.to_string()),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err((code, message)) => {
            eprintln!("{message}");
            code
        }
    }
}

type OpResult<T> = std::result::Result<T, (i32, String)>;

fn failed(error: impl std::fmt::Display) -> (i32, String) {
    (1, error.to_string())
}

/// How long the server's start waits for the supervisor to have started its command.
const START_WAIT: Duration = Duration::from_secs(5);

fn wait_started(id: &str) -> OpResult<Value> {
    let dir = dir(id);
    let until = Instant::now() + START_WAIT;
    while !["spawning", "pid", "exit.json"]
        .iter()
        .any(|name| dir.join(name).exists())
    {
        if Instant::now() >= until {
            return Err(failed(format!(
                "the supervisor of detached command '{id}' did not start its command within {} s",
                START_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    record(id)
}

/// Runs the command and records its exit. A command that cannot start (its workdir
/// cannot be made, its program cannot run) is recorded as exited 126 or 127 with the
/// reason on its stderr, as a one-shot run or an exec reports it. Then stays, as a
/// child subreaper, until everything the command left in the background has ended.
fn supervise(id: &str, workdir: Option<&str>, argv: &[String]) -> OpResult<String> {
    crate::stub::protect_self();
    let subreaper = rustix::process::Pid::from_raw(1);
    rustix::process::set_child_subreaper(subreaper).map_err(failed)?;
    let dir = dir(id);
    std::fs::create_dir_all(&dir).map_err(failed)?;
    let meta = json!({ "command": argv, "started_at": rfc3339(SystemTime::now()) });
    std::fs::write(dir.join("command.json"), meta.to_string()).map_err(failed)?;
    let stdout = std::fs::File::create(dir.join("stdout")).map_err(failed)?;
    let stderr = std::fs::File::create(dir.join("stderr")).map_err(failed)?;
    let cannot_start = |message: String, code: i32| -> OpResult<String> {
        let _ = writeln!(
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("stderr"))
                .map_err(failed)?,
            "{message}"
        );
        let exit = json!({ "exit_code": code, "signal": null });
        std::fs::write(dir.join("exit.json"), exit.to_string()).map_err(failed)?;
        Ok(String::new())
    };
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // Made here like the stub makes an exec's workdir, rather than given to the engine
    // as the exec's WorkingDir: the runtime refuses a missing one before any of our
    // code runs, and the command would have no record at all.
    if let Some(workdir) = workdir {
        if let Err(error) = std::fs::create_dir_all(workdir) {
            return cannot_start(
                format!("agentkernel: cannot use workdir '{workdir}': {error}"),
                126,
            );
        }
        command.current_dir(workdir);
    }
    // Said before the command exists: once it runs it may stop us (`kill -STOP $PPID`)
    // before we write its pid, and the start must not wait for that.
    std::fs::write(dir.join("spawning"), "").map_err(failed)?;
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let code = if error.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return cannot_start(
                format!("agentkernel: cannot run '{}': {error}", argv[0]),
                code,
            );
        }
    };
    std::fs::write(dir.join("pid"), child.id().to_string()).map_err(failed)?;
    let status = child.wait().map_err(failed)?;
    use std::os::unix::process::ExitStatusExt;
    let exit = json!({ "exit_code": status.code(), "signal": status.signal() });
    let recorded = std::fs::write(dir.join("exit.json"), exit.to_string()).map_err(failed);
    crate::stub::reap::reap_until_childless();
    recorded.map(|_| String::new())
}

/// The supervisor of detached command `id`, if it runs: an exec root (parent 0, which
/// no process inside the container can have) whose argv is `stub --supervise ID ...`.
fn supervisor(id: &str, processes: &[ProcessEntry]) -> Option<u32> {
    processes
        .iter()
        .filter(|process| process.parent == 0 && process.pid != 1 && !process.zombie)
        .map(|process| process.pid)
        .find(|&pid| {
            let argv = crate::stub::reap::argv_of(pid);
            argv.get(1..4) == Some(&["stub".to_string(), "--supervise".into(), id.into()][..])
        })
}

/// The SDKs' `DetachedCommand`.
fn record(id: &str) -> OpResult<Value> {
    record_among(id, &list_processes())
}

/// The record, with `processes` to find its supervisor among.
fn record_among(id: &str, processes: &[ProcessEntry]) -> OpResult<Value> {
    let dir = dir(id);
    let meta: Value = std::fs::read(dir.join("command.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| (NOT_FOUND, format!("no detached command '{id}'")))?;
    let pid: Option<i64> = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|text| text.trim().parse().ok());
    let exit: Option<Value> = std::fs::read(dir.join("exit.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let (status, exit_code) = match &exit {
        Some(exit) => {
            let code = exit["exit_code"]
                .as_i64()
                .or_else(|| exit["signal"].as_i64().map(|signal| 128 + signal));
            (
                if code == Some(0) {
                    "completed"
                } else {
                    "failed"
                },
                code,
            )
        }
        None if supervisor(id, processes).is_some() => ("running", None),
        // The supervisor vanished without recording an exit (it was killed, and the
        // sandbox's init killed what it left).
        None => ("failed", None),
    };
    Ok(json!({
        "id": id,
        "command": meta["command"],
        "pid": pid.unwrap_or(0),
        "status": status,
        "exit_code": exit_code,
        "started_at": meta["started_at"],
    }))
}

fn list() -> OpResult<Value> {
    let processes = list_processes();
    let mut records = Vec::new();
    if let Ok(entries) = std::fs::read_dir(STATE_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if valid_id(&name) {
                if let Ok(record) = record_among(&name, &processes) {
                    records.push(record);
                }
            }
        }
    }
    records.sort_by(|a, b| a["started_at"].as_str().cmp(&b["started_at"].as_str()));
    Ok(Value::Array(records))
}

/// How long a kill waits for the supervisor to record the end of its command.
const KILL_RECORD_WAIT: Duration = Duration::from_secs(1);

/// Kills everything below the command's supervisor; the supervisor records the end and
/// goes. One that does not (stopped by its command) is killed too, and the end recorded
/// here. Orphans of a supervisor killed earlier were killed by the sandbox's init; the
/// sweep here makes sure of it.
fn kill(id: &str) -> OpResult<String> {
    record(id)?;
    let Some(supervisor) = supervisor(id, &list_processes()) else {
        reap::sweep_orphans();
        return Ok(json!(format!("Detached command '{id}' was not running")).to_string());
    };
    reap::kill_below(supervisor);
    let exit = dir(id).join("exit.json");
    let until = Instant::now() + KILL_RECORD_WAIT;
    while !exit.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !exit.exists() {
        reap::kill_one(supervisor);
        let killed = json!({ "exit_code": null, "signal": 9 });
        std::fs::write(&exit, killed.to_string()).map_err(failed)?;
    }
    reap::sweep_orphans();
    Ok(json!(format!("Killed detached command '{id}'")).to_string())
}

fn logs(id: &str) -> OpResult<Value> {
    record(id)?;
    let read = |name: &str| -> Value {
        let path = dir(id).join(name);
        let Ok(bytes) = std::fs::read(&path) else {
            return Value::Null;
        };
        let start = bytes.len().saturating_sub(MAX_LOG_BYTES as usize);
        json!(String::from_utf8_lossy(&bytes[start..]))
    };
    Ok(json!({ "stdout": read("stdout"), "stderr": read("stderr") }))
}

// ---- On the server ----------------------------------------------------------------

/// Runs one operation in the sandbox's running container (through the one exec path,
/// so a sandbox stopped or deleted under it, or a missing workdir, is explained); its
/// JSON answer, or the error.
fn exec_op(
    docker: &Docker,
    config: &Config,
    target: ExecTarget<'_>,
    id: &str,
    args: Vec<String>,
    env: Vec<String>,
) -> Result<Value> {
    let sandbox = target.sandbox;
    let mut argv = vec![STUB_PATH.to_string(), "stub".to_string()];
    argv.extend(args);
    // No workdir for the exec itself: a detached command's workdir goes to the stub
    // (`--workdir`), which creates it as an exec's stub does.
    let spec = CommandSpec::new(
        argv,
        env,
        None,
        None,
        Duration::from_secs(20),
        4 * MAX_LOG_BYTES,
    )
    .map_err(Error::Invalid)?;
    exec_in(
        docker,
        config,
        target,
        &spec,
        &mut NoObserver,
        |result| match result.exit_code {
            Some(0) => serde_json::from_slice(&result.stdout).map_err(|error| {
                Error::RunLost(format!(
                    "unreadable answer from the sandbox's stub: {error}"
                ))
            }),
            Some(code) if code == i64::from(NOT_FOUND) => Err(Error::DetachedNotFound {
                sandbox: sandbox.to_string(),
                id: id.to_string(),
            }),
            code => Err(Error::RunLost(format!(
                "detached command operation failed in sandbox '{sandbox}': {}",
                failure_text(code, &result.stderr, &result.stdout)
            ))),
        },
    )
}

/// What a failed operation said: its stderr, else its stdout, else how it ended.
fn failure_text(code: Option<i64>, stderr: &[u8], stdout: &[u8]) -> String {
    let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    let (stderr, stdout) = (said(stderr), said(stdout));
    if !stderr.is_empty() {
        stderr
    } else if !stdout.is_empty() {
        stdout
    } else if let Some(code) = code {
        format!("the stub exited with {code} and said nothing")
    } else {
        "the stub did not finish in time".to_string()
    }
}

/// The running sandbox's container id, if it has our stub.
fn container(docker: &Docker, config: &Config, name: &SandboxName) -> Result<String> {
    let inspect = crate::sandbox::inspect_ours(docker, config, name)?;
    if !inspect.state.running {
        return Err(Error::SandboxNotRunning(name.to_string()));
    }
    if !crate::sandbox::has_stub(&inspect) {
        return Err(Error::Invalid(format!(
            "sandbox '{name}' was created without the stub: detached execs need it"
        )));
    }
    Ok(inspect.id)
}

/// Operations go by plain `docker exec` of the stub, which answers in JSON.
fn stub_target<'a>(sandbox: &'a SandboxName, container: &'a str) -> ExecTarget<'a> {
    ExecTarget {
        sandbox,
        container,
        via: Via::StubOp,
    }
}

fn checked(id: &str) -> Result<&str> {
    if valid_id(id) {
        Ok(id)
    } else {
        Err(Error::Invalid(format!(
            "invalid detached command id '{id}'"
        )))
    }
}

pub fn start_in(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
    spec: &CommandSpec,
) -> Result<Value> {
    let container = container(docker, config, name)?;
    let detached = new_id();
    // The supervisor, an exec of its own (see the module comment); then the record,
    // once it has started the command.
    let mut supervisor = [STUB_PATH, "stub", "--supervise", &detached]
        .map(String::from)
        .to_vec();
    if let Some(workdir) = &spec.workdir {
        supervisor.extend(["--workdir".to_string(), workdir.clone()]);
    }
    supervisor.push("--".to_string());
    supervisor.extend(spec.argv.iter().cloned());
    let target = stub_target(name, &container);
    crate::sandbox::spawn_in(docker, config, target, supervisor, spec.env.clone())?;
    let args = vec!["--detached-wait".to_string(), detached.clone()];
    let mut record = exec_op(docker, config, target, &detached, args, Vec::new())?;
    record["sandbox"] = json!(name.as_str());
    Ok(record)
}

pub fn status(docker: &Docker, config: &Config, name: &SandboxName, id: &str) -> Result<Value> {
    let container = container(docker, config, name)?;
    let args = vec!["--detached-status".to_string(), checked(id)?.to_string()];
    let target = stub_target(name, &container);
    let mut record = exec_op(docker, config, target, id, args, Vec::new())?;
    record["sandbox"] = json!(name.as_str());
    Ok(record)
}

pub fn list_in(docker: &Docker, config: &Config, name: &SandboxName) -> Result<Value> {
    let container = container(docker, config, name)?;
    let args = vec!["--detached-list".to_string()];
    let target = stub_target(name, &container);
    let mut records = exec_op(docker, config, target, "", args, Vec::new())?;
    if let Some(records) = records.as_array_mut() {
        for record in records {
            record["sandbox"] = json!(name.as_str());
        }
    }
    Ok(records)
}

pub fn kill_in(docker: &Docker, config: &Config, name: &SandboxName, id: &str) -> Result<Value> {
    let container = container(docker, config, name)?;
    let args = vec!["--detached-kill".to_string(), checked(id)?.to_string()];
    let target = stub_target(name, &container);
    exec_op(docker, config, target, id, args, Vec::new())
}

pub fn logs_of(docker: &Docker, config: &Config, name: &SandboxName, id: &str) -> Result<Value> {
    let container = container(docker, config, name)?;
    let args = vec!["--detached-logs".to_string(), checked(id)?.to_string()];
    let target = stub_target(name, &container);
    exec_op(docker, config, target, id, args, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_operations_never_say_nothing() {
        assert_eq!(failure_text(Some(1), b" oops\n", b"out"), "oops");
        assert_eq!(
            failure_text(Some(126), b"", b"engine words\r\n"),
            "engine words"
        );
        assert_eq!(
            failure_text(Some(137), b"", b""),
            "the stub exited with 137 and said nothing"
        );
        assert_eq!(
            failure_text(None, b"", b""),
            "the stub did not finish in time"
        );
    }

    #[test]
    fn ids_are_sixteen_hex_digits() {
        assert!(valid_id(&new_id()), "{}", new_id());
        for bad in [
            "",
            "../../etc/passwd",
            "0123456789ABCDEF",
            "0123456789abcde",
            "0123456789abcdef0",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
