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
//! is bounded by the size of its tmpfs (the sandbox's `/tmp`, or its own where `/tmp`
//! persists: `Profile::sandbox_host_settings`), and reads of it by
//! `MAX_LOG_BYTES` (the newest bytes of each stream, read from the end of the file,
//! never the whole file) and by `MAX_LOG_JSON_BYTES` once escaped, so a logs answer
//! always fits what the server reads of it (`ANSWER_BYTES`): a larger log is cut and
//! says so, never fails.

use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::config::Config;
use crate::containers::labels::{rfc3339, SandboxName};
use crate::engine::Docker;
use crate::error::{Error, Result};
use crate::exec::{CommandSpec, Cut, KeepWithin, NoObserver, Observer, OutputBudget};
use crate::sandbox::{exec_in, ExecTarget, SocketRoute, Via};
use crate::stub::reap::{self, list_processes, ProcessEntry};
use crate::stub::STUB_PATH;

const STATE_DIR: &str = crate::stub::DETACHED_DIR;
/// Most bytes of each stream a logs read returns (the newest ones).
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;
/// Most bytes each stream's text takes in the stub's JSON answer: a control byte
/// escapes to six, so output full of them is cut further, to fewer of its newest bytes.
const MAX_LOG_JSON_BYTES: usize = 2 * MAX_LOG_BYTES as usize;
/// Most bytes the server reads of an operation's answer: a logs answer (two texts,
/// their keys and `truncated`) always fits.
const ANSWER_BYTES: u64 = 2 * MAX_LOG_JSON_BYTES as u64 + 64 * 1024;
/// What a logs read holds on the server at most: the stub's answer, and the value
/// parsed from it.
pub const LOGS_MEMORY_BYTES: u64 = 2 * ANSWER_BYTES;
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
    let (stdout, stdout_cut) = newest_text(&dir(id).join("stdout"));
    let (stderr, stderr_cut) = newest_text(&dir(id).join("stderr"));
    let cut = |cut: bool| cut.then_some("max_log_bytes");
    Ok(json!({
        "stdout": stdout,
        "stderr": stderr,
        "truncated": { "stdout": cut(stdout_cut), "stderr": cut(stderr_cut) },
    }))
}

/// The newest bytes of a log as text (`null` when it cannot be read): at most
/// `MAX_LOG_BYTES` of them, read from the end of the file, and fewer when their text
/// would escape to more than `MAX_LOG_JSON_BYTES`; and whether older bytes were left out.
fn newest_text(path: &std::path::Path) -> (Value, bool) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (Value::Null, false);
    };
    let length = file.metadata().map_or(0, |meta| meta.len());
    let start = length.saturating_sub(MAX_LOG_BYTES);
    let mut bytes = Vec::new();
    let read = file
        .seek(std::io::SeekFrom::Start(start))
        .and_then(|_| file.take(MAX_LOG_BYTES).read_to_end(&mut bytes));
    if read.is_err() {
        return (Value::Null, false);
    }
    let text = String::from_utf8_lossy(&bytes);
    let kept = newest_within(&text, MAX_LOG_JSON_BYTES);
    (json!(kept), start > 0 || kept.len() < text.len())
}

/// The longest end of `text` whose JSON string (quotes aside) takes at most `limit`
/// bytes.
fn newest_within(text: &str, limit: usize) -> &str {
    let mut size = 0;
    for (index, character) in text.char_indices().rev() {
        size += match character {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            control if u32::from(control) < 0x20 => 6,
            other => other.len_utf8(),
        };
        if size > limit {
            return &text[index + character.len_utf8()..];
        }
    }
    text
}

// ---- On the server ----------------------------------------------------------------

/// Runs one operation in the sandbox's running container (through the one exec path,
/// so a sandbox stopped or deleted under it, or a missing workdir, is explained); its
/// JSON answer, or the error. With a budget, the answer and the value parsed from it
/// are taken from it first (`Error::OutputMemoryFull` when there is no room), and the
/// answer's bytes given back once parsed.
fn exec_op(
    docker: &Docker,
    config: &Config,
    target: ExecTarget<'_>,
    id: &str,
    args: Vec<String>,
    env: Vec<String>,
    budget: Option<&OutputBudget>,
) -> Result<Value> {
    let sandbox = target.sandbox;
    let mut argv = vec![STUB_PATH.to_string(), "stub".to_string()];
    argv.extend(args);
    // No workdir for the exec itself: a detached command's workdir goes to the stub
    // (`--workdir`), which creates it as an exec's stub does.
    let spec = CommandSpec::new(argv, env, None, None, Duration::from_secs(20), ANSWER_BYTES)
        .map_err(Error::Invalid)?;
    let no_room = |budget: &OutputBudget| Error::OutputMemoryFull {
        limit: budget.memory_limit(),
    };
    let mut observer: Box<dyn Observer> = match budget {
        Some(budget) => Box::new(KeepWithin::new(budget, None)),
        None => Box::new(NoObserver),
    };
    exec_in(
        docker,
        config,
        target,
        &spec,
        observer.as_mut(),
        |result| match result.exit_code {
            Some(0) => {
                let answer = result.stdout.len() as u64;
                if let Some(budget) = budget {
                    // Room for the value, about the size of the JSON it comes from.
                    let cut = result.output.cut[0] == Some(Cut::RequestBudget);
                    if cut || budget.take(answer, 0) < answer {
                        return Err(no_room(budget));
                    }
                }
                let value = serde_json::from_slice(&result.stdout).map_err(|error| {
                    Error::RunLost(format!(
                        "unreadable answer from the sandbox's stub: {error}"
                    ))
                });
                drop(result);
                if let Some(budget) = budget {
                    budget.release(answer);
                }
                value
            }
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

/// The running sandbox's container id, if it has our stub, its exec socket and its
/// init's pid.
fn container(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
) -> Result<(String, Option<SocketRoute>, i64)> {
    let inspect = crate::sandbox::inspect_ours(docker, config, name)?;
    if inspect.state.paused {
        return Err(Error::SandboxPaused(name.to_string()));
    }
    if !inspect.state.running {
        return Err(Error::SandboxNotRunning(name.to_string()));
    }
    if !crate::sandbox::has_stub(&inspect) {
        return Err(Error::Invalid(format!(
            "sandbox '{name}' was created without the stub: detached execs need it"
        )));
    }
    let route = crate::sandbox::socket_route(config, &inspect);
    Ok((inspect.id, route, inspect.state.pid))
}

/// Operations are runs of the stub, which answers in JSON: through the sandbox's exec
/// socket, else by plain `docker exec`.
fn stub_target<'a>(
    sandbox: &'a SandboxName,
    (container, route, init_pid): &'a (String, Option<SocketRoute>, i64),
) -> ExecTarget<'a> {
    ExecTarget {
        sandbox,
        container,
        via: Via::StubOp,
        route: route.as_ref(),
        init_pid: *init_pid,
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
    let mut record = exec_op(docker, config, target, &detached, args, Vec::new(), None)?;
    record["sandbox"] = json!(name.as_str());
    Ok(record)
}

pub fn status(docker: &Docker, config: &Config, name: &SandboxName, id: &str) -> Result<Value> {
    let container = container(docker, config, name)?;
    let args = vec!["--detached-status".to_string(), checked(id)?.to_string()];
    let target = stub_target(name, &container);
    let mut record = exec_op(docker, config, target, id, args, Vec::new(), None)?;
    record["sandbox"] = json!(name.as_str());
    Ok(record)
}

pub fn list_in(docker: &Docker, config: &Config, name: &SandboxName) -> Result<Value> {
    let container = container(docker, config, name)?;
    let args = vec!["--detached-list".to_string()];
    let target = stub_target(name, &container);
    let mut records = exec_op(docker, config, target, "", args, Vec::new(), None)?;
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
    exec_op(docker, config, target, id, args, Vec::new(), None)
}

/// The newest output of a detached command; what the read holds is taken from
/// `budget` (at most `LOGS_MEMORY_BYTES`), and the value stays counted there.
pub fn logs_of(
    docker: &Docker,
    config: &Config,
    name: &SandboxName,
    id: &str,
    budget: &OutputBudget,
) -> Result<Value> {
    let container = container(docker, config, name)?;
    let args = vec!["--detached-logs".to_string(), checked(id)?.to_string()];
    let target = stub_target(name, &container);
    let mut logs = exec_op(docker, config, target, id, args, Vec::new(), Some(budget))?;
    // A stub older than `truncated` (a sandbox made by an earlier build) says nothing
    // of cuts: it cut nothing but the oldest bytes past MAX_LOG_BYTES, unknown here.
    if logs.get("truncated").is_none() {
        logs["truncated"] = json!({ "stdout": null, "stderr": null });
    }
    Ok(logs)
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
    fn log_texts_are_cut_to_their_newest_part_that_fits_escaped() {
        assert_eq!(newest_within("abc", 3), "abc");
        assert_eq!(newest_within("abc", 2), "bc");
        assert_eq!(newest_within("a\u{1}b", 6), "b");
        assert_eq!(newest_within("a\u{1}b", 7), "\u{1}b");
        assert_eq!(newest_within("x\n€", 5), "\n€");
        assert_eq!(newest_within("x\n€", 4), "€");
        let text = "\u{0}".repeat(1000);
        let kept = newest_within(&text, MAX_LOG_JSON_BYTES);
        assert_eq!(kept.len(), 1000);
        let escaped = serde_json::to_string(&newest_within(&text, 600)).unwrap();
        assert_eq!(escaped.len(), 600 + 2);
    }

    #[test]
    fn a_logs_answer_fits_what_the_server_reads_of_it() {
        let dir = std::env::temp_dir().join(format!("ak-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stdout");
        // Older bytes, then a megabyte of NULs: six bytes each once escaped.
        let mut content = b"old ".repeat(100_000);
        content.extend(std::iter::repeat_n(0u8, MAX_LOG_BYTES as usize));
        std::fs::write(&path, &content).unwrap();
        let (text, cut) = newest_text(&path);
        assert!(cut);
        let answer = json!({ "stdout": text, "stderr": text, "truncated": {
            "stdout": "max_log_bytes", "stderr": "max_log_bytes" } });
        assert!(answer.to_string().len() as u64 <= ANSWER_BYTES);
        assert_eq!(text.as_str().unwrap().len(), MAX_LOG_JSON_BYTES / 6);
        std::fs::write(&path, b"short\n").unwrap();
        assert_eq!(newest_text(&path), (json!("short\n"), false));
        assert_eq!(newest_text(&dir.join("missing")), (Value::Null, false));
        std::fs::remove_dir_all(&dir).unwrap();
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
