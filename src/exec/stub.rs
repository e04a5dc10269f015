//! The server side of the stub protocol: a spec record out, output and exit records in,
//! over an attach connection (a warm container's) or a `docker exec` of the mounted stub
//! (a sandbox's). The in-container side is `crate::stub`; the record format is shared.
//!
//! Invariants: the stub's first message must be its hello, so that an engine's refusal
//! written into the stream is never read as records; every read has a deadline (the
//! command's own plus `BACKSTOP` of silence, at most `DRAIN_CAP` past it while records
//! still arrive); a result is honest about how the command ended.
//! In a sandbox, an exec whose stub did not answer (killed, stopped by its command, cut
//! off, or its client gone) is killed from outside before the server answers: a second
//! exec, `stub --kill-exec PID START`, kills the stub it reported (`P` record) with its
//! tree and every orphan of the sandbox (`stub::reap`), and a stub that died that way is
//! reported as `killed`, never as a bare 502 with its command still running.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::engine::frames::StreamKind;
use crate::engine::{Docker, DockerError, ExecSpec, Hijacked};
use crate::error::{Error, Result};
use crate::exec::{Collected, CommandResult, CommandSpec, OutputSink, Status};
use crate::stub::{self, StubExit, StubSpec};

/// How long an exec waits for a sandbox's init to listen on its exec socket (it was
/// just started), and then to take the token it was given.
const SOCKET_LISTEN_WAIT: Duration = Duration::from_millis(300);
const SOCKET_TOKEN_WAIT: Duration = Duration::from_secs(2);
const SOCKET_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new stub may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long past the command's deadline the server waits for the stub's own answer.
const BACKSTOP: Duration = Duration::from_secs(5);
/// The most a stub still sending records may take past its command's deadline.
const DRAIN_CAP: Duration = Duration::from_secs(60);

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
    // Set up once the stub said hello.
    let starting = crate::exec::gate::starting(container)?;
    let exec_id = docker.exec_create(container, &exec_spec)?;
    let mut stream = StubStream::new(docker.exec_start(&exec_id)?);
    stream.read_hello().map_err(hello_failed)?;
    drop(starting);
    exec_with(docker, container, stream, spec, started, sink)
}

/// Runs one command in a sandbox through its init's exec socket (`exec::socket`); `None`
/// when the socket cannot serve it (the caller goes by `docker exec`), said in the log.
/// An init without its token (restarted since) gets it again, once.
pub fn exec_via_socket(
    docker: &Docker,
    container: &str,
    socket: &crate::exec::socket::ExecSocket,
    init_pid: i64,
    spec: &CommandSpec,
    started: Instant,
    sink: OutputSink<'_>,
) -> Option<Result<CommandResult>> {
    // The init forks at once; a supervisor that does not say hello in time was held up
    // (stopped by a command before it ran): `docker exec` instead.
    let open = || open_socket(socket, init_pid, crate::exec::socket::Listener::SandboxInit);
    // An init that has just started may not listen yet (refused, or the socket of the
    // init before it), or has no token yet (it closes before the hello): it gets the
    // token once, and a moment to read it.
    let mut gave_token = false;
    let started_trying = Instant::now();
    let stream = loop {
        let error = match open() {
            Ok(stream) => break stream,
            Err(error) => error,
        };
        let waited = started_trying.elapsed();
        let retry = match error.kind() {
            io::ErrorKind::UnexpectedEof if !gave_token => {
                if let Err(refused) = socket.give_token(docker, container) {
                    log::warn!("exec socket of container {container}: cannot give the token: {refused}; using docker exec");
                    return None;
                }
                gave_token = true;
                true
            }
            io::ErrorKind::UnexpectedEof => waited < SOCKET_TOKEN_WAIT,
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => {
                waited < SOCKET_LISTEN_WAIT
            }
            _ => false,
        };
        if !retry {
            log::warn!("exec socket of container {container}: {error}; using docker exec");
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Some(exec_with(docker, container, stream, spec, started, sink))
}

/// A stub reached on an init's exec socket that said hello (by `SOCKET_HELLO_TIMEOUT`).
fn open_socket(
    socket: &crate::exec::socket::ExecSocket,
    init_pid: i64,
    listener: crate::exec::socket::Listener,
) -> io::Result<StubStream> {
    let mut stream = StubStream::over_socket(socket.connect(init_pid, listener)?)?;
    stream.read_hello_within(SOCKET_HELLO_TIMEOUT)?;
    Ok(stream)
}

/// Runs one command in warm container `container` of the pool through its init's exec
/// socket (`init_pid`, given its token at launch); `None` when the socket cannot take it
/// before the spec is sent (the caller runs it over the attach connection instead).
pub fn run_via_socket(
    docker: &Docker,
    container: &str,
    socket: &crate::exec::socket::ExecSocket,
    init_pid: i64,
    spec: &CommandSpec,
    started: Instant,
    sink: OutputSink<'_>,
) -> Option<Result<CommandResult>> {
    match open_socket(socket, init_pid, crate::exec::socket::Listener::Temporary) {
        Ok(mut stream) => {
            let conversation = stream.converse(spec, sink);
            drop(stream);
            let kill = || kill_one_shot(docker, container);
            Some(settle(container, conversation, &kill, started, sink))
        }
        Err(error) => {
            // Said once at warn (a server that cannot see into containers meets this on
            // every run), then quietly.
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if SAID.swap(true, std::sync::atomic::Ordering::SeqCst) {
                log::debug!("warm container's exec socket: {error}; using its attach connection");
            } else {
                log::warn!("warm containers' exec socket unusable ({error}): warm runs use the attach connection (said once)");
            }
            None
        }
    }
}

/// The conversation with a stub that said hello, and what came of it: the command's
/// result, or, when the stub did not answer, the kill from outside first.
fn exec_with(
    docker: &Docker,
    container: &str,
    mut stream: StubStream,
    spec: &CommandSpec,
    started: Instant,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    let conversation = stream.converse(spec, sink);
    let supervisor = stream.supervisor;
    // Closing the connection is the first kill: a stub that still reads stops the
    // command itself.
    drop(stream);
    let kill = || kill_from_outside(docker, container, supervisor);
    settle(container, conversation, &kill, started, sink)
}

/// Runs one command in warm container `container` over the connection attached to its
/// init stub, which stays open (it holds the container until it is reaped); what came
/// of it as `exec_with` says.
pub fn run_attached(
    docker: &Docker,
    container: &str,
    stream: &mut StubStream,
    spec: &CommandSpec,
    started: Instant,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    let conversation = stream.converse(spec, sink);
    settle(
        container,
        conversation,
        &|| kill_one_shot(docker, container),
        started,
        sink,
    )
}

/// The kill from outside of a one-shot container of the pool: the container itself (it
/// serves one command, and is removed after it), by the engine, which needs no process
/// of its own in there (at the pids limit, none may start). Succeeds also when the
/// container no longer runs.
fn kill_one_shot(docker: &Docker, container: &str) -> std::result::Result<(), DockerError> {
    docker.container_kill(container)
}

/// The result of a conversation with a stub in `container`: its exit record, or, when
/// none came (the stub died, fell silent past the deadline, or the client went away),
/// the kill from outside first, so that nothing the command started outlives the answer.
fn settle(
    container: &str,
    conversation: io::Result<(Collected, Ending)>,
    kill_from_outside: &dyn Fn() -> std::result::Result<(), DockerError>,
    started: Instant,
    sink: OutputSink<'_>,
) -> Result<CommandResult> {
    let (collected, ending) = match conversation {
        Ok(ended) => ended,
        Err(error) => (Collected::default(), Ending::Lost(error)),
    };
    if crate::exec::cancelled(sink) {
        if let Err(error) = kill_from_outside() {
            log::warn!(
                "exec in container {container}: its client went away; cannot kill it: {error}"
            );
        }
        return Err(Error::RunLost(
            "the command was stopped: its client went away".into(),
        ));
    }
    match ending {
        Ending::Exit(exit) => Ok(result_from_exit(exit, collected, started)),
        // Silent past its deadline: if the kill from outside runs, the engine answers
        // and the command outlived its deadline (its stub stopped); if it cannot, the
        // result is unknown, and the caller asks the engine why.
        Ending::Silent => match kill_from_outside() {
            Ok(()) => Ok(timeout_result(collected, started)),
            Err(error) => {
                log::warn!("exec in container {container} did not answer by its deadline; cannot kill it: {error}");
                Err(run_lost(no_exit_record()))
            }
        },
        // The kill's own success says that the container runs: the stub died alone.
        // Otherwise the sandbox went away under the exec, which `sandbox::exec_in`
        // explains.
        Ending::Lost(error) => match kill_from_outside() {
            Ok(()) => {
                log::info!("exec in container {container}: its stub ended without a result ({error}); its processes were killed");
                Ok(killed_result(collected, started))
            }
            Err(kill_error) => {
                log::debug!("exec in container {container}: cannot kill it: {kill_error}");
                Err(run_lost(error))
            }
        },
    }
}

/// How long the kill from outside may take.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Kills an exec of the stub by a second exec (`stub --kill-exec`, see `stub::reap`):
/// the stub that reported itself (if it did), its tree, and every orphan of the
/// sandbox. Succeeds only if the kill ran, that is, if the container runs.
fn kill_from_outside(
    docker: &Docker,
    container: &str,
    supervisor: Option<(u32, u64)>,
) -> std::result::Result<(), DockerError> {
    // A container at its pids limit (a fork bomb) cannot start the killer every time:
    // the runtime's refusal, or a killer that could not fork, is tried again while the
    // bomb's own shells die off. A stopped or missing container, or an engine that does
    // not answer, is not.
    let mut attempt = 1;
    loop {
        match kill_once(docker, container, supervisor) {
            Err(DockerError::InStream(_) | DockerError::Protocol(_)) if attempt < KILL_TRIES => {
                attempt += 1;
                std::thread::sleep(KILL_RETRY_GAP);
            }
            done => return done,
        }
    }
}

/// How often the kill from outside is tried, and how long apart.
const KILL_TRIES: u32 = 4;
const KILL_RETRY_GAP: Duration = Duration::from_millis(250);

fn kill_once(
    docker: &Docker,
    container: &str,
    supervisor: Option<(u32, u64)>,
) -> std::result::Result<(), DockerError> {
    let (pid, start) = supervisor.unwrap_or((0, 0));
    let killer = ExecSpec {
        cmd: [stub::STUB_PATH, "stub", "--kill-exec"]
            .map(String::from)
            .into_iter()
            .chain([pid.to_string(), start.to_string()])
            .collect(),
        ..ExecSpec::default()
    };
    let starting = crate::exec::gate::starting_a_kill(container);
    let exec_id = docker.exec_create(container, &killer)?;
    let mut hijacked = docker.exec_start(&exec_id)?;
    crate::exec::gate::until_running(docker, &exec_id);
    drop(starting);
    let io_error = |source| DockerError::Io {
        operation: "kill exec".into(),
        source,
    };
    hijacked
        .set_read_timeout(Some(KILL_WAIT))
        .map_err(io_error)?;
    let mut said = Vec::new();
    crate::engine::drain_frames(&mut hijacked.frames, |_, bytes| {
        if said.len() < 4096 {
            said.extend_from_slice(bytes);
        }
    })
    .map_err(io_error)?;
    match crate::exec::docker_exec::wait_exec_exit(docker, &exec_id) {
        Ok(Some(0)) => Ok(()),
        Ok(code) => match crate::engine::exec_refusal(code, &said, &[]) {
            Some(refusal) => Err(refusal),
            None => Err(DockerError::Protocol(format!(
                "the kill exited with {code:?}: {}",
                String::from_utf8_lossy(&said).trim()
            ))),
        },
        Err(Error::Engine(error)) => Err(error),
        Err(other) => Err(DockerError::Protocol(other.to_string())),
    }
}

/// What came of an exec whose stub ended without a result, once everything it
/// started was killed.
fn killed_result(collected: Collected, started: Instant) -> CommandResult {
    let message = "the command's supervisor (its stub) ended without reporting a \
                   result: it was killed, by the command itself, from outside, or for \
                   memory; every process the command started was killed";
    without_exit(collected, started, Status::Killed, Some(message.into()))
}

/// A result with no exit code: what was collected, how it ended, and why.
fn without_exit(
    collected: Collected,
    started: Instant,
    status: Status,
    message: Option<String>,
) -> CommandResult {
    CommandResult {
        output: collected.output,
        stdout: collected.stdout,
        stderr: collected.stderr,
        exit_code: None,
        signal: None,
        status,
        duration: started.elapsed(),
        message,
    }
}

/// How a conversation with a stub ended.
pub enum Ending {
    /// Its exit record.
    Exit(StubExit),
    /// Nothing by the backstop: the stub is there but does not answer.
    Silent,
    /// The stream ended or broke before the exit record, or the observer went away.
    Lost(io::Error),
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

/// A failed hello as an engine error: the engine's own refusal, or an I/O failure.
pub fn hello_docker_error(source: io::Error) -> DockerError {
    match source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<EngineSaid>())
    {
        Some(EngineSaid(message)) => DockerError::from_in_stream(message),
        None => DockerError::Io {
            operation: "stub hello".into(),
            source,
        },
    }
}

/// A stub whose hello announced another protocol version (`None`: unreadable).
#[derive(Debug)]
struct VersionMismatch(Option<u64>);

impl std::fmt::Display for VersionMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Error::StubMismatch {
            found: self.0,
            expected: stub::PROTOCOL_VERSION,
        }
        .fmt(f)
    }
}

impl std::error::Error for VersionMismatch {}

/// A failed hello: the engine's own refusal, a stub of another protocol version, or a
/// stub that broke off.
fn hello_failed(error: io::Error) -> Error {
    if let Some(VersionMismatch(found)) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<VersionMismatch>())
    {
        return Error::StubMismatch {
            found: *found,
            expected: stub::PROTOCOL_VERSION,
        };
    }
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<EngineSaid>())
    {
        Some(EngineSaid(message)) => Error::Engine(DockerError::from_in_stream(message)),
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

/// The stub's records, read out of the stdout frames of an attach or exec connection,
/// or straight off a sandbox's exec socket (`exec::socket`).
pub struct StubStream {
    /// The connection: written to, its timeouts set, cut to cancel.
    control: UnixStream,
    records: Records,
    frame: Vec<u8>,
    position: usize,
    /// The stub's pid and start time, from its `P` record.
    supervisor: Option<(u32, u64)>,
}

enum Records {
    /// In the engine's stream framing (stdout frames hold the records).
    Frames(crate::engine::frames::FrameReader<io::BufReader<UnixStream>>),
    /// As they are (an exec socket).
    Raw(io::BufReader<UnixStream>),
}

impl Read for StubStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let frames = match &mut self.records {
            Records::Raw(reader) => return reader.read(out),
            Records::Frames(frames) => frames,
        };
        while self.position == self.frame.len() {
            match frames.next_frame(&mut self.frame)? {
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
    /// Whether nothing is waiting to be read: after its hello a stub sends nothing until
    /// it gets a spec, so a readable connection means it closed (or broke the protocol).
    pub fn is_quiet(&self) -> bool {
        is_quiet(&self.control)
    }

    pub fn new(hijacked: Hijacked) -> StubStream {
        StubStream {
            control: hijacked.stdin,
            records: Records::Frames(hijacked.frames),
            frame: Vec::new(),
            position: 0,
            supervisor: None,
        }
    }

    /// The records of a sandbox's exec socket, a connection already authenticated.
    pub fn over_socket(connection: UnixStream) -> io::Result<StubStream> {
        Ok(StubStream {
            records: Records::Raw(io::BufReader::new(connection.try_clone()?)),
            control: connection,
            frame: Vec::new(),
            position: 0,
            supervisor: None,
        })
    }

    /// Writes bytes (whole records) to the stub's stdin.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.control.write_all(bytes)
    }

    pub fn read_hello(&mut self) -> io::Result<()> {
        self.read_hello_within(HELLO_TIMEOUT)
    }

    /// `read_hello`, waiting at most `timeout`.
    pub fn read_hello_within(&mut self, timeout: Duration) -> io::Result<()> {
        self.control.set_read_timeout(Some(timeout))?;
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
            self.control.set_read_timeout(Some(ENGINE_TEXT_WAIT))?;
            let _ = self.by_ref().take(4096).read_to_end(&mut text);
            return Err(io::Error::other(EngineSaid(
                String::from_utf8_lossy(&text).trim().to_string(),
            )));
        }
        match stub::read_record(&mut (&kind[..]).chain(&mut *self))? {
            Some((stub::HELLO, payload)) => match stub::hello_version(&payload) {
                Some(version) if version == u64::from(stub::PROTOCOL_VERSION) => Ok(()),
                found => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    VersionMismatch(found),
                )),
            },
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

    /// Sends the spec (and stdin) and reads the records until the exit record, the end
    /// of the stream or the backstop; what was collected, and how it ended. An error
    /// means the spec could not be sent.
    pub fn converse(
        &mut self,
        spec: &CommandSpec,
        sink: OutputSink<'_>,
    ) -> io::Result<(Collected, Ending)> {
        let stub_spec = StubSpec {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            workdir: spec.workdir.clone(),
            // The command's own time: a cold container's start does not count against it.
            timeout_ms: spec.timeout.as_millis().max(1) as u64,
            // One byte over the cap: the server sees which stream went past it.
            max_output_bytes: spec.max_output_bytes.saturating_add(1),
            stdin: spec.stdin.is_some(),
        };
        crate::exec::connected(sink, &self.control);
        let payload = serde_json::to_vec(&stub_spec).expect("spec serializes");
        self.control
            .write_all(&stub::encode_record(stub::SPEC, &payload))?;
        let feed = spec
            .stdin
            .as_deref()
            .map(|data| (self.control.try_clone(), data));
        let backstop = Instant::now() + spec.timeout + BACKSTOP;
        let mut collected = Collected::new(sink.keep());
        let ending = with_records_fed(feed, || self.collect(&mut collected, spec, backstop, sink));
        Ok((collected, ending))
    }

    fn collect(
        &mut self,
        collected: &mut Collected,
        spec: &CommandSpec,
        backstop: Instant,
        sink: OutputSink<'_>,
    ) -> Ending {
        // Past the deadline a stub still draining output (a backlog on a starved
        // machine) is alive: each record buys it another BACKSTOP, up to DRAIN_CAP in
        // all. Only silence ends the wait early.
        let hard = backstop + DRAIN_CAP;
        let mut backstop = backstop;
        loop {
            // Measured from when the last record was dealt with: handing output on (to
            // a slow stream client) is not the stub's silence.
            backstop = backstop.max((Instant::now() + BACKSTOP).min(hard));
            let left = backstop.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ending::Silent;
            }
            if let Err(error) = self.control.set_read_timeout(Some(left)) {
                return Ending::Lost(error);
            }
            let record = match stub::read_record(self) {
                Ok(record) => record,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ending::Silent;
                }
                Err(error) => return Ending::Lost(error),
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
                        if let Err(error) = sink.output(kind, kept) {
                            return Ending::Lost(error);
                        }
                    }
                }
                Some((stub::EXIT, payload)) => {
                    return match serde_json::from_slice(&payload) {
                        Ok(exit) => Ending::Exit(exit),
                        Err(error) => Ending::Lost(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("exit record: {error}"),
                        )),
                    };
                }
                Some((stub::PROCESS, payload)) => {
                    let process: serde_json::Value =
                        serde_json::from_slice(&payload).unwrap_or_default();
                    if let (Some(pid), Some(start)) =
                        (process["pid"].as_u64(), process["start"].as_u64())
                    {
                        self.supervisor = Some((pid as u32, start));
                    }
                }
                Some(_) => {}
                None => {
                    return Ending::Lost(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream ended before the exit record",
                    ))
                }
            }
        }
    }
}

/// The stub kills the command at its deadline and reports it; no exit record by the
/// backstop means the records are not coming (a frozen engine relays nothing): the
/// result is unknown, never a `timeout` the stub did not report.
fn no_exit_record() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "no exit record within {} s past the command's deadline",
            BACKSTOP.as_secs()
        ),
    )
}

fn timeout_result(collected: Collected, started: Instant) -> CommandResult {
    without_exit(collected, started, Status::Timeout, None)
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
        message: None,
    }
}

/// Feeds stdin to a stub as records: data in chunks, then the end mark.
pub fn with_records_fed<T>(
    feed: Option<(io::Result<UnixStream>, &[u8])>,
    read: impl FnOnce() -> T,
) -> T {
    let feed = feed.map(|(writer, data)| {
        (writer, move |mut writer: UnixStream| {
            for chunk in data.chunks(32 * 1024) {
                writer.write_all(&stub::encode_record(stub::STDIN, chunk))?;
            }
            writer.write_all(&stub::encode_record(stub::STDIN_END, &[]))
        })
    });
    crate::exec::docker_exec::with_feeder(feed, read)
}

/// Whether nothing can be read from `socket` right now: no byte, no end of stream.
fn is_quiet(socket: &UnixStream) -> bool {
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

/// Under the exec launcher, the attach connection to a temporary container's idle
/// shell (its PID 1), which holds its stdin: when this process goes (ends, crashes, is
/// killed), the engine closes that stdin, the shell ends, and with it the container and
/// every command `docker exec` started in it. Best effort: a command running as the
/// shell's user can hold its stdin open through `/proc`; the next start-up sweep
/// removes such a container (the stub, non-dumpable, has no such hole).
pub struct Lifeline(Hijacked);

impl Lifeline {
    pub fn new(hijacked: Hijacked) -> Lifeline {
        Lifeline(hijacked)
    }

    /// Whether the shell is still there: only the end of the connection says it ended
    /// (whatever the shell wrote, a locale warning for one, is read and dropped).
    pub fn is_alive(&self) -> bool {
        let socket = &self.0.stdin;
        if socket.set_nonblocking(true).is_err() {
            return false;
        }
        let mut buffer = [0u8; 4096];
        let alive = loop {
            match (&*socket).read(&mut buffer) {
                Ok(0) => break false,
                Ok(_) => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break false,
            }
        };
        socket.set_nonblocking(false).is_ok() && alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Status;

    /// A stub stream whose other end writes `frames` (raw engine frames) and closes.
    fn stream_of(frames: &[u8]) -> StubStream {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut writer = theirs;
        writer.write_all(frames).unwrap();
        drop(writer);
        let reader = std::io::BufReader::new(ours.try_clone().unwrap());
        StubStream::new(Hijacked {
            frames: crate::engine::frames::FrameReader::new(reader),
            stdin: ours,
        })
    }

    /// One stdout frame holding `payload`.
    fn stdout_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![1, 0, 0, 0];
        frame.extend((payload.len() as u32).to_be_bytes());
        frame.extend(payload);
        frame
    }

    #[test]
    fn a_hello_of_another_protocol_version_is_a_clear_error() {
        let ours = stdout_frame(&stub::encode_record(stub::HELLO, stub::hello().as_bytes()));
        assert!(stream_of(&ours).read_hello().is_ok());
        for (hello, found) in [(&br#"{"version":99}"#[..], Some(99)), (b"{}", None)] {
            let frames = stdout_frame(&stub::encode_record(stub::HELLO, hello));
            let error = hello_failed(stream_of(&frames).read_hello().unwrap_err());
            assert!(
                matches!(error, Error::StubMismatch { found: f, expected } if f == found
                    && expected == stub::PROTOCOL_VERSION),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(message.contains("incompatible build"), "{message}");
        }
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
