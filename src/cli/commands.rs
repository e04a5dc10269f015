//! Client commands turned into typed API requests (`Action::request`, the server's own
//! `Request` values) and run through a `Backend`; stdin; exit codes.

use std::io::{self, IsTerminal, Read, Write};
use std::time::Duration;

use serde_json::Value;

use super::backend::{self, Backend};
use super::output::*;
use super::*;
use crate::containers::labels::SandboxName;
use crate::server::request::{
    CommandFields, CreateBody, ExecBody, ExtendBody, Request, RunBody, SnapshotBody,
};

impl Action {
    /// The request this action is. `stdin` is what to feed a run or exec command. Fails
    /// only on an invalid sandbox name.
    pub fn request(&self, stdin: Option<String>) -> Result<Request, String> {
        Ok(match self {
            Action::Run {
                image,
                profile,
                network,
                disk_mb,
                runtime,
                fast,
                command,
            } => Request::Run(RunBody {
                image: image.clone(),
                profile: profile.clone(),
                network: network.clone().map(Value::String),
                disk_mb: *disk_mb,
                runtime: runtime.clone(),
                // Left out when it is the server's default, as every field not given.
                fast: (!fast).then_some(false),
                command: command_fields(command, stdin),
            }),
            Action::Exec { name, command } => Request::ExecSandbox(
                SandboxName::parse(name)?,
                ExecBody {
                    sudo: None,
                    command: command_fields(command, stdin),
                },
            ),
            Action::Create {
                name,
                image,
                profile,
                network,
                memory_mb,
                vcpus,
                pids,
                disk_mb,
                runtime,
                ttl,
                idle_timeout,
                ..
            } => Request::CreateSandbox(CreateBody {
                name: Some(name.clone()),
                image: image.clone(),
                profile: profile.clone(),
                network: network.clone().map(Value::String),
                memory_mb: *memory_mb,
                vcpus: *vcpus,
                pids: *pids,
                disk_mb: *disk_mb,
                runtime: runtime.clone(),
                ttl: ttl.clone().map(Value::String),
                idle_timeout: idle_timeout.clone().map(Value::String),
                ..CreateBody::default()
            }),
            Action::List { .. } => Request::ListSandboxes,
            Action::Info { name, .. } => Request::GetSandbox(SandboxName::parse(name)?),
            Action::Change { verb, name, .. } => {
                let name = SandboxName::parse(name)?;
                match verb {
                    Verb::Start => Request::StartSandbox(name),
                    Verb::Stop => Request::StopSandbox(name),
                    Verb::Pause => Request::PauseSandbox(name),
                    Verb::Resume => Request::ResumeSandbox(name),
                    Verb::Remove => Request::DeleteSandbox(name),
                }
            }
            Action::Extend { name, by, .. } => Request::ExtendSandbox(
                SandboxName::parse(name)?,
                ExtendBody {
                    by: Some(by.clone()),
                },
            ),
            Action::Stats { name, .. } => Request::SandboxStats(SandboxName::parse(name)?),
            Action::Snapshot { op, .. } => {
                let snapshot = |name: &str| {
                    SandboxName::parse(name)
                        .map_err(|message| message.replacen("sandbox name", "snapshot name", 1))
                };
                match op {
                    SnapshotOp::Create { sandbox, name } => {
                        SandboxName::parse(sandbox)?;
                        if let Some(name) = name {
                            snapshot(name)?;
                        }
                        Request::CreateSnapshot(SnapshotBody {
                            sandbox: Some(sandbox.clone()),
                            name: name.clone(),
                            ..SnapshotBody::default()
                        })
                    }
                    SnapshotOp::List => Request::ListSnapshots,
                    SnapshotOp::Info { name } => Request::GetSnapshot(snapshot(name)?),
                    SnapshotOp::Remove { name } => Request::DeleteSnapshot(snapshot(name)?),
                    SnapshotOp::Restore { name, sandbox } => {
                        if let Some(sandbox) = sandbox {
                            SandboxName::parse(sandbox)?;
                        }
                        Request::RestoreSnapshot(
                            snapshot(name)?,
                            CreateBody {
                                name: sandbox.clone(),
                                ..CreateBody::default()
                            },
                        )
                    }
                }
            }
            Action::Copy { .. } => return Err("cp is not one request".into()),
            Action::Health => Request::Health,
        })
    }

    /// The sandbox this action names, if any.
    fn sandbox(&self) -> Option<&str> {
        match self {
            Action::Exec { name, .. }
            | Action::Create { name, .. }
            | Action::Info { name, .. }
            | Action::Change { name, .. }
            | Action::Extend { name, .. }
            | Action::Stats { name, .. } => Some(name),
            _ => None,
        }
    }

    fn runs_a_command(&self) -> Option<&CommandArgs> {
        match self {
            Action::Run { command, .. } | Action::Exec { command, .. } => Some(command),
            _ => None,
        }
    }
}

/// The body fields of `/run` and exec; fields not given are left out, so the server's
/// defaults apply.
fn command_fields(command: &CommandArgs, stdin: Option<String>) -> CommandFields {
    CommandFields {
        command: Some(command.argv.clone()),
        env: (!command.env.is_empty()).then(|| command.env.clone()),
        workdir: command.workdir.clone(),
        stdin,
        timeout_ms: command.timeout_ms,
        max_output_bytes: None,
    }
}

/// The streaming form of a run or exec request (`/run/stream`,
/// `/sandboxes/{name}/exec/stream`): the same body, output as it comes.
fn streamed(request: Request) -> Request {
    match request {
        Request::Run(body) => Request::RunStream(body),
        Request::ExecSandbox(name, body) => Request::ExecSandboxStream(name, body),
        other => other,
    }
}

/// The exit code a command's `data` calls for, the way `docker run` reports it.
pub fn exit_code_of(data: &Value) -> i32 {
    let status = data["status"].as_str().unwrap_or_default();
    let code = data["exit_code"].as_i64();
    match (status, data["signal"].as_i64(), code) {
        ("timeout", _, _) => 124,
        ("signaled", Some(signal), _) if (1..128).contains(&signal) => 128 + signal as i32,
        (_, _, Some(code)) if (0..=255).contains(&code) => code as i32,
        // Killed for memory, or with its supervisor, without an exit status: what
        // SIGKILL would have said.
        ("oom_killed" | "killed", _, _) => 137,
        _ => 125,
    }
}

/// Most stdin we pass through (the server's body limit is usually far lower).
pub(super) const MAX_STDIN_BYTES: u64 = 64 * 1024 * 1024;

/// Our stdin, when it is not a terminal and has something in it.
pub(super) fn read_stdin() -> Result<Option<String>, String> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    if let Err(error) = stdin
        .lock()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut bytes)
    {
        // A closed stdin (`<&-`) is no input, not a failure.
        log::debug!("not passing stdin through: {error}");
        return Ok(None);
    }
    if bytes.len() as u64 > MAX_STDIN_BYTES {
        return Err(format!(
            "stdin is larger than {MAX_STDIN_BYTES} bytes: pass big inputs as files"
        ));
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| "stdin is not UTF-8 text (the API carries stdin as a JSON string)".into())
}

/// Runs a client action; prints what it says; returns the exit code.
pub(super) fn run_client(backend: &Backend, action: &Action) -> i32 {
    // A failure of agentkernel itself: 125 where the exit code is the command's.
    let failed = if action.runs_a_command().is_some() {
        125
    } else {
        1
    };
    let fail = |message: &dyn std::fmt::Display| {
        eprintln!("agentkernel: {message}");
        failed
    };
    // Names become URL paths: only valid ones may, so that no path normalisation
    // (`..`) can make the two modes see different requests.
    if let Some(Err(message)) = action.sandbox().map(SandboxName::parse) {
        return fail(&message);
    }
    if let Action::Copy { from, to } = action {
        return match super::copy::copy(backend, from, to) {
            Ok(text) => match io::stdout().lock().write_all(text.as_bytes()) {
                Ok(()) => 0,
                Err(error) => fail(&format!("cannot write output: {error}")),
            },
            Err(message) => fail(&message),
        };
    }
    if let Some(command) = action.runs_a_command() {
        let stdin = match read_stdin() {
            Ok(stdin) => stdin,
            Err(message) => return fail(&message),
        };
        return match action.request(stdin) {
            Ok(request) => run_command(backend, request, command, failed),
            Err(message) => fail(&message),
        };
    }
    if *action == Action::Health {
        if let Err(error) = backend.engine_reachable() {
            return fail(&error);
        }
    }
    let request = match action.request(None) {
        Ok(request) => request,
        Err(message) => return fail(&message),
    };
    let data = match backend.send(request, None).and_then(|answer| answer.data()) {
        Ok(data) => data,
        Err(error) => return fail(&error),
    };
    let text = match action {
        Action::List { json: false } => sandbox_table(&data),
        Action::Info { json: false, .. } => sandbox_fields(&data),
        Action::Create { json: false, .. } | Action::Change { json: false, .. } => {
            format!("{}\n", action.sandbox().unwrap_or_default())
        }
        Action::Extend { json: false, .. } => match data["expires_at"].as_str() {
            Some(at) => format!("{at}\n"),
            None => "never (the sandbox has no expiry to extend)\n".to_string(),
        },
        Action::Stats { json: false, .. } => sandbox_fields(&data),
        Action::Snapshot { op, json: false } => match op {
            SnapshotOp::List => snapshot_table(&data),
            SnapshotOp::Info { .. } => sandbox_fields(&data),
            // The snapshot's name (or the restored sandbox's).
            _ => format!("{}\n", scalar(&data["name"])),
        },
        Action::Health => format!("{}\n", data.as_str().unwrap_or("ok")),
        _ => format!("{data}\n"),
    };
    match io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(error) => fail(&format!("cannot write output: {error}")),
    }
}

pub(super) fn run_command(
    backend: &Backend,
    request: Request,
    command: &CommandArgs,
    failed: i32,
) -> i32 {
    let timeout = Some(
        command
            .timeout_ms
            .map_or(backend::UNKNOWN_COMMAND_TIMEOUT, Duration::from_millis),
    );
    if command.json {
        // Not streamed: the API's own non-streaming answer, printed as it is.
        let answer = backend.send(request, timeout);
        return match answer.and_then(|answer| answer.data()) {
            Ok(data) => {
                println!("{data}");
                exit_code_of(&data)
            }
            Err(error) => {
                eprintln!("agentkernel: {error}");
                failed
            }
        };
    }
    let mut console = Console::default();
    match backend.stream(streamed(request), timeout, &mut console) {
        Ok(data) => {
            // What the status alone does not say (a supervisor killed under the command).
            if let Some(message) = data["message"].as_str() {
                eprintln!("agentkernel: {message}");
            }
            exit_code_of(&data)
        }
        // Our reader left (`| head`): end quietly, as a tool killed by SIGPIPE would.
        Err(_) if console.broken_pipe => 141,
        Err(error) => {
            eprintln!("agentkernel: {error}");
            failed
        }
    }
}
