//! The in-container stub: our own static binary, mounted read-only into a container and
//! run as `agentkernel stub`. It receives one command spec on stdin, runs the command as
//! its child with exact argv, relays stdout and stderr in framed records as they come,
//! and ends with one exit record, so the server has the exact exit code (and signal)
//! without waiting for the container to stop.
//!
//! Wire format, both directions: records of `[kind u8][length u32 big-endian][payload]`.
//! Server → stub: `S` spec (JSON), then `I` stdin bytes and `E` end of stdin.
//! Stub → server: `H` hello (JSON, once at start), `P` the stub's own process (JSON
//! `{"pid","start"}`, once the spec is in), `O` stdout bytes, `R` stderr bytes, `X` exit
//! (JSON, last).
//!
//! Invariants: if the stub's own stdin closes (the server went away) or the deadline
//! passes, it kills the command's whole tree and exits. The stub is a child subreaper,
//! so the tree is every process below it by parent links, which the command cannot
//! change (`setsid`, double forks, a cleared environment and ignored signals do not
//! escape; see `reap`). The deadline is enforced here, in the container, so a timeout
//! answers at the deadline whatever the command does; output past the cap is read and
//! dropped. In a persistent sandbox (run by `docker exec`), background processes of a
//! command that ended on its own are left running, as a shell would, but stay below the
//! stub, which waits for them: if it is killed, the sandbox's init (`idle`) kills them.
//! Before it runs the command the stub reports its pid and start time (`P`), so that
//! the server can kill the exec from outside (`stub --kill-exec`) when the stub itself
//! cannot answer.
//!
//! File operations (`stub --cat PATH MAX`, `stub --untar DIR MAX`, `stub --rm PATH`) are
//! a second, record-free mode: run by plain `docker exec` as the container's user, for
//! the paths the Engine's archive endpoints cannot see (tmpfs mounts) and for deletes.
//! Data goes through stdout or stdin raw (a tar for `--untar`); failure is an exit code
//! from `file_exit` and one line `PATH<TAB>message` on stderr. They are bounded by MAX,
//! checked from the file's size or the tar header before data is moved, touch regular
//! files only, and refuse member names that are absolute or contain `..`.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub mod reap;

/// Where the server mounts its own executable inside containers.
pub const STUB_PATH: &str = "/.agentkernel/agentkernel";
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest record accepted in either direction.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Output is relayed in records of at most this many bytes.
const CHUNK_BYTES: usize = 32 * 1024;
/// How long output may keep coming after the command exited (background children
/// holding the pipes): the engine itself cuts such streams after about 2 s.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Server → init, on the init's stdin: the token every exec connection opens with.
pub const TOKEN: u8 = b'T';
/// Server → init, first on an exec connection: the token.
pub const AUTH: u8 = b'A';
/// Bytes of an exec token.
pub const TOKEN_BYTES: usize = 32;
/// Where a sandbox's init listens for execs, inside it: a directory the server mounts
/// from its data dir (`exec::socket`).
pub const EXEC_SOCKET_DIR: &str = "/.agentkernel-run";
pub const EXEC_SOCKET: &str = "/.agentkernel-run/exec.sock";
/// Where detached commands keep their state and output, in a sandbox (`detached`).
pub const DETACHED_DIR: &str = "/tmp/.agentkernel-detached";
/// How long an exec connection may take to present its token.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

pub const SPEC: u8 = b'S';
pub const STDIN: u8 = b'I';
pub const STDIN_END: u8 = b'E';
pub const HELLO: u8 = b'H';
pub const PROCESS: u8 = b'P';
pub const STDOUT: u8 = b'O';
pub const STDERR: u8 = b'R';
pub const EXIT: u8 = b'X';

/// The command, as the server sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StubSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
    /// Whether `I`/`E` records follow; without them the command's stdin is empty.
    pub stdin: bool,
}

/// How the command ended, as the stub reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StubExit {
    pub exit_code: Option<i64>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub truncated: bool,
    /// Set when the command could not be started at all.
    pub error: Option<String>,
}

pub fn encode_record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(5 + payload.len());
    record.push(kind);
    record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    record.extend_from_slice(payload);
    record
}

/// Reads one record; `None` at a clean end of stream.
pub fn read_record(reader: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a record header",
                ))
            }
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if length > MAX_RECORD_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("record of {length} bytes exceeds the limit"),
        ));
    }
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload)?;
    Ok(Some((header[0], payload)))
}

/// How long the exit record may wait for the output, held by a relay that is blocked
/// on a full pipe because the server stopped reading.
const EXIT_WRITE_WAIT: Duration = Duration::from_secs(2);

/// The stub's output side: records written whole, one at a time, and the one exit.
struct Output {
    stdout: Mutex<Box<dyn Write + Send>>,
    /// Set by whoever ends the run; no output record is written after it.
    claimed: AtomicBool,
}

impl Output {
    /// Records to `to`: stdout, or the exec socket connection that asked for the run.
    fn new(to: Box<dyn Write + Send>) -> Output {
        Output {
            stdout: Mutex::new(to),
            claimed: AtomicBool::new(false),
        }
    }

    fn record(&self, kind: u8, payload: &[u8]) {
        if self.claimed.load(Ordering::SeqCst) {
            return;
        }
        let mut stdout = self.stdout.lock().unwrap_or_else(|e| e.into_inner());
        let _ = stdout.write_all(&encode_record(kind, payload));
        let _ = stdout.flush();
    }

    /// Writes the exit record once and ends the process: as the container's init, our
    /// exit takes every other process there with it.
    fn finish(&self, exit: &StubExit) -> ! {
        self.finish_after(|| {}, || exit.clone())
    }

    /// The first caller claims the end and runs `before` (killing the tree) before it
    /// touches the output, so neither a relay blocked on a full pipe nor the command's
    /// own exit (caused by that kill) can delay the kill or report first. A later
    /// caller waits for the first to end the process.
    ///
    /// As a container's init, the stub then stays (with nothing else left running)
    /// until the server closes its stdin: the container's teardown is heavy work for
    /// the engine, and the server schedules it for a quiet moment. Run by `docker exec`
    /// in a sandbox, it ends at once, which ends the exec.
    fn finish_after(&self, before: impl FnOnce(), exit: impl FnOnce() -> StubExit) -> ! {
        if self.claimed.swap(true, Ordering::SeqCst) {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        before();
        let payload = serde_json::to_vec(&exit()).expect("exit record serializes");
        let give_up = Instant::now() + EXIT_WRITE_WAIT;
        loop {
            match self.stdout.try_lock() {
                Ok(mut stdout) => {
                    let _ = stdout.write_all(&encode_record(EXIT, &payload));
                    let _ = stdout.flush();
                    break;
                }
                Err(_) if Instant::now() < give_up => std::thread::sleep(Duration::from_millis(5)),
                // Nobody is reading: the server's own deadline will report the run.
                Err(_) => break,
            }
        }
        if std::process::id() != 1 {
            // Run by `docker exec` in a sandbox: the result is out, and what the command
            // left in the background stays below us until it ends (see `reap`).
            reap::reap_until_childless();
        }
        if std::process::id() == 1 {
            // Read stdin to its end ourselves: on the early paths (a bad spec, a
            // program that cannot start) no other thread watches it, and a server that
            // died must still take the container with it. (After a run asked for on
            // the exec socket, the main thread reads it: see `main`.)
            if RUN.load(Ordering::SeqCst) == RUN_BY_SOCKET {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            std::thread::spawn(|| {
                let mut sink = [0u8; 4096];
                while matches!(io::stdin().read(&mut sink), Ok(count) if count > 0) {}
                std::process::exit(0)
            });
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        std::process::exit(0)
    }
}

/// Hides our memory and file descriptors from the command: a process that is not
/// dumpable has its `/proc/PID` entries owned by root and refuses ptrace, so a
/// command running as the same user cannot write forged records into our stdout
/// through `/proc/PID/fd/1`.
pub(crate) fn protect_self() {
    if let Err(error) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("agentkernel stub: cannot make the stub non-dumpable: {error}");
    }
}

/// Waits for every child, not only the command: as the container's init, the orphans
/// its background processes leave are ours to reap. Sends the command's own status.
fn reap_children(command: u32, status: mpsc::Sender<rustix::process::WaitStatus>) {
    use rustix::process::{wait, WaitOptions};
    loop {
        match wait(WaitOptions::empty()) {
            Ok(Some((pid, wait_status))) => {
                if pid.as_raw_nonzero().get() as u32 == command {
                    let _ = status.send(wait_status);
                }
            }
            // No child at all: nothing can end before the next look.
            Ok(None) | Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// How often a sandbox's init looks for orphans (a cheap `waitid`, no `/proc` scan).
const ORPHAN_POLL: Duration = Duration::from_millis(50);

/// `agentkernel stub --idle`: the init of a persistent sandbox. It ends on SIGTERM or
/// SIGINT (`docker stop`): as PID 1, signals without a handler would be ignored. Every
/// process of a sandbox runs below an exec'd supervisor (an exec's stub, a detached
/// command's supervisor), so a process that becomes the init's child is an orphan of a
/// supervisor that was killed: the init kills it, and everything below it, at once.
pub fn idle() -> i32 {
    protect_self();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(error) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("agentkernel stub: cannot handle signals: {error}");
            return 1;
        }
    }
    let init = std::process::id() == 1;
    // The supervisors this init started for its exec socket: its children that are not
    // orphans.
    let supervisors = Arc::new(Mutex::new(Supervisors::default()));
    let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if init {
        make_tmp();
    }
    if init && std::path::Path::new(EXEC_SOCKET_DIR).is_dir() {
        serve_exec_socket(Arc::clone(&supervisors));
    }
    std::thread::spawn(move || loop {
        use rustix::process::{wait, WaitOptions};
        while let Ok(Some((pid, _))) = wait(WaitOptions::NOHANG) {
            let pid = pid.as_raw_nonzero().get() as u32;
            lock(&supervisors)
                .known
                .retain(|(supervisor, _)| *supervisor != pid);
        }
        // Fail closed: a command of the init's own uid may lower its limits (the
        // kernel lets it), and an init that can no longer read `/proc` could sweep
        // nothing. Then it ends, and with it every process of the sandbox (the engine
        // starts it again).
        if init && !reap::can_sweep(open_files) {
            eprintln!(
                "agentkernel stub: the init's limits were changed: ending the sandbox's processes"
            );
            std::process::exit(1);
        }
        // Held through the sweep: no supervisor starts or is listed meanwhile.
        let held = lock(&supervisors);
        if init && reap::has_children() && reap::has_unknown_children(&held.known) {
            // A fork of ours on its way to becoming a supervisor is not listed yet: it
            // is a child of the thread that spawns it (orphans land on the main
            // thread, never there), and is spared as one, looked up again in each
            // round of the sweep. Stopped by a command before it runs the stub, it can
            // do nothing else; nothing waits for it.
            let killed = reap::sweep_orphans_except(&held.known, &held.spawning);
            drop(held);
            if killed > 0 {
                eprintln!(
                    "agentkernel stub: killed {killed} processes whose exec's supervisor died"
                );
                // Reap them now, and look again.
                continue;
            }
        } else {
            drop(held);
        }
        std::thread::sleep(ORPHAN_POLL);
    });
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    0
}

/// A sandbox's `/tmp` is world-writable and sticky, as usual: where it is no tmpfs (it
/// persists on a writable root), an image without one gets it (the engine may have made
/// it already, as the parent of a mount point, with mode 755).
fn make_tmp() {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::create_dir("/tmp");
    let usual = std::fs::symlink_metadata("/tmp")
        .is_ok_and(|meta| !meta.is_dir() || meta.permissions().mode() & 0o7777 == 0o1777);
    if !usual {
        let _ = std::fs::set_permissions("/tmp", std::fs::Permissions::from_mode(0o1777));
    }
}

/// The exec socket's supervisors, as the init knows them: by (pid, start) once they
/// run, and, while a spawn is under way, the thread that spawns (whose children are
/// its forks). Nothing else tells a supervisor from an orphan: argv and age are a
/// command's to forge.
#[derive(Default)]
struct Supervisors {
    known: HashSet<(u32, u64)>,
    spawning: Vec<u32>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The init's exec socket (`EXEC_SOCKET`): the server connects from outside, opens with
/// the token it gave the init on its stdin (`TOKEN` records, which only an attach
/// through the engine can write: as a non-dumpable PID 1, the init's stdin is out of
/// every command's reach), and the init gives the connection to a supervisor: `stub`
/// with it as stdin and stdout, as `docker exec` would start it, or the one it started
/// ahead of the exec (`stub --spare`), which is handed the connection. A connection without the token
/// (a command of the sandbox) is closed unanswered. Without a token, or when the
/// socket cannot be made, execs go through `docker exec` as before.
fn serve_exec_socket(supervisors: Arc<Mutex<Supervisors>>) {
    let token = Arc::new(Mutex::new(None::<Vec<u8>>));
    let from_stdin = Arc::clone(&token);
    std::thread::spawn(move || {
        let mut stdin = io::stdin();
        // Until stdin ends (nobody can write it any more); the token stays.
        while let Ok(Some((kind, payload))) = read_record(&mut stdin) {
            if kind == TOKEN && payload.len() == TOKEN_BYTES {
                *lock(&from_stdin) = Some(payload);
            }
        }
    });
    let _ = std::fs::remove_file(EXEC_SOCKET);
    let listener = match std::os::unix::net::UnixListener::bind(EXEC_SOCKET) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("agentkernel stub: no exec socket ({error}): execs use docker exec");
            return;
        }
    };
    let handlers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let spares = Arc::new(Mutex::new(Spares::default()));
    let _ = std::thread::Builder::new().spawn(move || {
        refill_spare(&supervisors, &spares);
        for connection in listener.incoming().flatten() {
            // A thread each, so that a connection slow to present its token holds only
            // itself; a bounded number of them, and never a panic when the pids limit
            // refuses a thread: past either, the connection is dropped.
            if handlers.fetch_add(1, Ordering::SeqCst) >= MAX_AUTH_HANDLERS {
                handlers.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (token, supervisors, spares, done) = (
                Arc::clone(&token),
                Arc::clone(&supervisors),
                Arc::clone(&spares),
                Arc::clone(&handlers),
            );
            let started = std::thread::Builder::new().spawn(move || {
                // Refusals are not logged: a command could fill the log with them.
                let _ = start_supervisor(connection, &token, &supervisors, &spares);
                done.fetch_sub(1, Ordering::SeqCst);
            });
            if started.is_err() {
                handlers.fetch_sub(1, Ordering::SeqCst);
            }
        }
    });
}

/// Exec connections presenting their token at once, at most.
const MAX_AUTH_HANDLERS: usize = 16;

/// Reads with one deadline for all the reads, however the bytes trickle in.
struct Deadline<'a> {
    connection: &'a std::os::unix::net::UnixStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.connection.set_read_timeout(Some(left))?;
        (&mut &*self.connection).read(buffer)
    }
}

/// Reads an exec connection's first record by `until`: it must be `AUTH` with the
/// `expected` token (compared in constant time; no token yet refuses every connection).
fn authenticate(
    connection: &std::os::unix::net::UnixStream,
    until: Instant,
    expected: Option<&[u8]>,
) -> io::Result<()> {
    let presented = match read_record(&mut Deadline { connection, until })? {
        Some((AUTH, payload)) => payload,
        _ => return Err(io::Error::other("no token")),
    };
    let matches = expected.is_some_and(|expected| {
        expected.len() == presented.len()
            && expected
                .iter()
                .zip(&presented)
                .fold(0u8, |differ, (a, b)| differ | (a ^ b))
                == 0
    });
    if matches {
        Ok(())
    } else {
        Err(io::Error::other("wrong token"))
    }
}

/// Checks an exec connection's token and gives it a supervisor: the spare waiting for
/// it when there is one (no fork and exec on the exec's path), else a new one. Then
/// starts the next spare, after the exec is under way.
fn start_supervisor(
    connection: std::os::unix::net::UnixStream,
    token: &Mutex<Option<Vec<u8>>>,
    supervisors: &Arc<Mutex<Supervisors>>,
    spares: &Arc<Mutex<Spares>>,
) -> io::Result<()> {
    let expected = lock(token).clone();
    authenticate(
        &connection,
        Instant::now() + AUTH_TIMEOUT,
        expected.as_deref(),
    )?;
    // The supervisor's reads wait as long as they need.
    connection.set_read_timeout(None)?;
    let spare = lock(spares).ready.take();
    let handed = match spare {
        Some(spare) => spare.hand_over(&connection),
        None => false,
    };
    if handed {
        // Our copy goes now: the exec's end is its supervisor's alone.
        drop(connection);
    } else {
        let output = connection.try_clone()?;
        spawn_supervisor(
            &["stub"],
            Stdio::from(std::os::fd::OwnedFd::from(connection)),
            Stdio::from(std::os::fd::OwnedFd::from(output)),
            supervisors,
        )?;
    }
    refill_spare(supervisors, spares);
    Ok(())
}

/// Starts `STUB_PATH ARGS` with the given stdin and stdout, and lists it as one of the
/// init's supervisors.
fn spawn_supervisor(
    args: &[&str],
    stdin: Stdio,
    stdout: Stdio,
    supervisors: &Mutex<Supervisors>,
) -> io::Result<(u32, u64)> {
    // Not under the lock: a command may stop the child before it execs (same user),
    // and the orphan sweep must go on meanwhile; it spares this thread's children.
    let thread = reap::current_thread()?;
    lock(supervisors).spawning.push(thread);
    let spawned = Command::new(STUB_PATH)
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn();
    let mut supervisors = lock(supervisors);
    if let Some(at) = supervisors.spawning.iter().position(|t| *t == thread) {
        supervisors.spawning.remove(at);
    }
    let child = spawned?;
    let process = reap::process(child.id()).ok_or_else(|| io::Error::other("it ended"))?;
    supervisors.known.insert((process.pid, process.start));
    Ok((process.pid, process.start))
}

/// The supervisor started ahead of the next exec (`stub --spare`), and whether one is
/// being started.
#[derive(Default)]
struct Spares {
    ready: Option<Spare>,
    refilling: bool,
}

/// A spare supervisor: its stdin is the other end of `control`, which only the init
/// holds (a socket pair has no name to connect to).
struct Spare {
    control: std::os::unix::net::UnixStream,
    pid: u32,
    start: u64,
}

impl Spare {
    /// Passes the exec connection to the spare; false if it cannot take it (it ended,
    /// or a command of the sandbox stopped it), and then it is ended.
    fn hand_over(self, connection: &std::os::unix::net::UnixStream) -> bool {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        use std::os::fd::AsFd;
        let ready = reap::process(self.pid)
            .is_some_and(|p| p.start == self.start && !p.zombie && !p.stopped);
        if ready {
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [connection.as_fd()];
            if control.push(SendAncillaryMessage::ScmRights(&fds)) {
                let sent = sendmsg(
                    &self.control,
                    &[io::IoSlice::new(b"c")],
                    &mut control,
                    SendFlags::NOSIGNAL,
                );
                if sent == Ok(1) {
                    return true;
                }
            }
        }
        // Not to be used: killed (it is our child and not reaped, so the pid is still
        // its own), so that a command that stops spares cannot pile them up. The init
        // reaps it.
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        false
    }
}

/// Starts a spare supervisor unless one is ready or on its way, on a thread of its own:
/// a command may stop the child before it execs, and then the start waits (one such
/// start at most: `refilling`), holding neither an exec nor a connection handler.
fn refill_spare(supervisors: &Arc<Mutex<Supervisors>>, spares: &Arc<Mutex<Spares>>) {
    {
        let mut spares = lock(spares);
        if spares.ready.is_some() || spares.refilling {
            return;
        }
        spares.refilling = true;
    }
    let (for_thread, spares_for_thread) = (Arc::clone(supervisors), Arc::clone(spares));
    let started =
        std::thread::Builder::new().spawn(move || start_spare(&for_thread, &spares_for_thread));
    if started.is_err() {
        // No thread (the pids limit): execs start their supervisor themselves.
        lock(spares).refilling = false;
    }
}

/// `refill_spare`'s thread: starts the spare and makes it the ready one.
fn start_spare(supervisors: &Mutex<Supervisors>, spares: &Mutex<Spares>) {
    let started = std::os::unix::net::UnixStream::pair().and_then(|(ours, theirs)| {
        let (pid, start) = spawn_supervisor(
            &["stub", "--spare"],
            Stdio::from(std::os::fd::OwnedFd::from(theirs)),
            Stdio::null(),
            supervisors,
        )?;
        Ok(Spare {
            control: ours,
            pid,
            start,
        })
    });
    let mut spares = lock(spares);
    spares.refilling = false;
    // Without a spare (the pids limit, say), execs start their supervisor themselves.
    spares.ready = started.ok();
}

/// A file operation of the stub; see the module comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// Writes the regular file at `path` to stdout, if it holds at most `max` bytes.
    Cat { path: String, max: u64 },
    /// Extracts the regular files of the tar on stdin under `dir` (parents created), each
    /// at most `max` bytes.
    Untar { dir: String, max: u64 },
    /// Removes the file or symlink at `path`; never a directory.
    Rm { path: String },
}

/// Exit codes of the file operations. 1 and 2 keep their usual meaning (failure, usage)
/// so these start at 10.
pub mod file_exit {
    pub const OK: i32 = 0;
    /// Any other failure; the message says what.
    pub const FAILED: i32 = 1;
    pub const NOT_FOUND: i32 = 10;
    pub const IS_DIRECTORY: i32 = 11;
    /// A device, FIFO or socket.
    pub const NOT_REGULAR: i32 = 12;
    /// EACCES or EPERM.
    pub const PERMISSION_DENIED: i32 = 13;
    pub const TOO_LARGE: i32 = 14;
    /// A parent of the path is a file.
    pub const NOT_A_DIRECTORY: i32 = 15;
    pub const READ_ONLY: i32 = 16;
    pub const NO_SPACE: i32 = 17;
    /// The tar on stdin is unreadable, or holds a non-file or an unsafe name.
    pub const BAD_INPUT: i32 = 18;
}

/// A failed file operation: exit code, the path it concerns, and the message.
type FileFailure = (i32, String, String);

/// Runs one file operation; returns the exit code after writing any failure to stderr.
pub fn file_op(op: FileOp) -> i32 {
    let result = match &op {
        FileOp::Cat { path, max } => cat_file(path, *max),
        FileOp::Untar { dir, max } => untar(dir, *max),
        FileOp::Rm { path } => remove_file(path),
    };
    match result {
        Ok(()) => file_exit::OK,
        Err((code, path, message)) => {
            eprintln!("{path}\t{message}");
            code
        }
    }
}

/// The exit code for an I/O error, and its message without the `(os error N)` tail.
fn io_failure(path: &str, error: &io::Error) -> FileFailure {
    use io::ErrorKind::*;
    let code = match error.kind() {
        NotFound => file_exit::NOT_FOUND,
        PermissionDenied => file_exit::PERMISSION_DENIED,
        IsADirectory => file_exit::IS_DIRECTORY,
        NotADirectory => file_exit::NOT_A_DIRECTORY,
        ReadOnlyFilesystem => file_exit::READ_ONLY,
        StorageFull | QuotaExceeded => file_exit::NO_SPACE,
        FileTooLarge => file_exit::TOO_LARGE,
        _ => file_exit::FAILED,
    };
    let text = error.to_string();
    let message = match text.find(" (os error") {
        Some(end) => text[..end].to_string(),
        None => text,
    };
    (code, path.to_string(), message.to_lowercase())
}

fn cat_file(path: &str, max: u64) -> Result<(), FileFailure> {
    // Checked before opening: opening a FIFO for reading would block.
    let metadata = std::fs::metadata(path).map_err(|e| io_failure(path, &e))?;
    if metadata.is_dir() {
        return Err((
            file_exit::IS_DIRECTORY,
            path.into(),
            "is a directory".into(),
        ));
    }
    if !metadata.is_file() {
        let message = "is not a regular file".to_string();
        return Err((file_exit::NOT_REGULAR, path.into(), message));
    }
    if metadata.len() > max {
        let message = format!("holds {} bytes, more than {max}", metadata.len());
        return Err((file_exit::TOO_LARGE, path.into(), message));
    }
    let file = std::fs::File::open(path).map_err(|e| io_failure(path, &e))?;
    // Files may grow, and /proc files report size 0: the read itself is bounded too.
    let mut stdout = io::stdout().lock();
    let copied =
        io::copy(&mut file.take(max + 1), &mut stdout).map_err(|e| io_failure(path, &e))?;
    if copied > max {
        let message = format!("holds more than {max} bytes");
        return Err((file_exit::TOO_LARGE, path.into(), message));
    }
    stdout.flush().map_err(|e| io_failure(path, &e))
}

fn untar(dir: &str, max: u64) -> Result<(), FileFailure> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let bad_input = |message: String| (file_exit::BAD_INPUT, dir.to_string(), message);
    let mut stdin = io::stdin().lock();
    loop {
        let entry = match crate::codec::tar::read_first_entry(&mut stdin, max) {
            Ok(entry) => entry,
            Err(crate::codec::tar::TarError::Empty) => return Ok(()),
            Err(error @ crate::codec::tar::TarError::TooLarge { .. }) => {
                return Err((file_exit::TOO_LARGE, dir.to_string(), error.to_string()))
            }
            Err(error) => return Err(bad_input(error.to_string())),
        };
        let name = entry.name.trim_start_matches("./");
        let safe = !name.is_empty()
            && !name.starts_with('/')
            && !name.contains('\0')
            && !name.split('/').any(|part| part == "..");
        if !safe {
            return Err(bad_input(format!("unsafe member name {:?}", entry.name)));
        }
        let target = std::path::Path::new(dir).join(name);
        let shown = target.display().to_string();
        if entry.kind != crate::codec::tar::EntryKind::File {
            return Err(bad_input(format!("member {name:?} is not a regular file")));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_failure(&shown, &e))?;
        }
        // A symlink is replaced, not written through, as the Engine's extraction does.
        let existing = std::fs::symlink_metadata(&target).ok();
        if existing
            .as_ref()
            .is_some_and(|m| m.file_type().is_symlink())
        {
            std::fs::remove_file(&target).map_err(|e| io_failure(&shown, &e))?;
        }
        let created = existing.is_none_or(|m| m.file_type().is_symlink());
        let mode = entry.mode & 0o7777;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&target)
            .map_err(|e| io_failure(&shown, &e))?;
        file.write_all(&entry.data)
            .map_err(|e| io_failure(&shown, &e))?;
        if created {
            // The umask narrowed the mode given at creation; a file we did not create
            // keeps its mode (we may not own it).
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_failure(&shown, &e))?;
        }
    }
}

fn remove_file(path: &str) -> Result<(), FileFailure> {
    let metadata = std::fs::symlink_metadata(path).map_err(|e| io_failure(path, &e))?;
    if metadata.is_dir() {
        return Err((
            file_exit::IS_DIRECTORY,
            path.into(),
            "is a directory".into(),
        ));
    }
    std::fs::remove_file(path).map_err(|e| io_failure(path, &e))
}

/// Kills the command's whole tree: its process group first, in one signal that no fork
/// of a member can race (most of a fork bomb never leaves it), then every process below
/// us, which as a child subreaper is every process the command started, whatever group
/// or session it moved to (as a temporary container's init, every other process of the
/// container).
///
/// The group may outlive its leader (the command, once reaped): its id stays its own
/// while any member is left, and is reused only after the group is empty and pids have
/// wrapped around.
///
/// Fails closed: a stub that cannot read `/proc` (a command of its user can lower its
/// open-files limit) could find nothing to kill, so it ends without a result instead,
/// and the server's kill from outside runs (a fresh process, with its limits).
fn kill_tree(command: u32) {
    if let Some(group) = rustix::process::Pid::from_raw(command as i32) {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    if reap::process(std::process::id()).is_none() {
        eprintln!("agentkernel stub: cannot read /proc to kill the command's processes");
        std::process::exit(125);
    }
    reap::kill_below(std::process::id());
}

/// `agentkernel stub`: serves one command, then exits.
///
/// The spec comes on stdin, or, in a warm container of the pool, on the exec socket: as
/// the container's init, given a token (`TOKEN`) on stdin, the stub listens on
/// `EXEC_SOCKET` (when the container has its directory) for the one connection that
/// presents it, and serves the run there, without the engine in the way of the records.
/// Whichever asks first (a spec on stdin, or one on an authenticated connection) gets
/// the run; stdin stays the lifeline either way: its end ends the container.
pub fn main() -> i32 {
    protect_self();
    // Orphans of the command (`setsid`, double forks) become our children, not the
    // container init's, so the whole tree stays findable below us.
    let subreaper = rustix::process::Pid::from_raw(1);
    if let Err(error) = rustix::process::set_child_subreaper(subreaper) {
        eprintln!("agentkernel stub: cannot become a child subreaper: {error}");
    }
    let output = Arc::new(Output::new(Box::new(io::stdout())));
    output.record(HELLO, hello().as_bytes());
    let mut stdin = io::stdin();
    let mut listening = false;
    let spec = loop {
        match read_record(&mut stdin) {
            Ok(Some((TOKEN, token)))
                if token.len() == TOKEN_BYTES && !listening && std::process::id() == 1 =>
            {
                listening = listen_for_one_run(token);
            }
            Ok(Some((TOKEN, _))) => {}
            Ok(Some((SPEC, payload))) => {
                // Taken on the socket: stdin is only the lifeline now.
                if !claim_run(RUN_BY_STDIN) {
                    continue;
                }
                if listening {
                    close_socket();
                }
                match serde_json::from_slice::<StubSpec>(&payload) {
                    Ok(spec) => break spec,
                    Err(error) => output.finish(&failure(format!("bad spec: {error}"), 125)),
                }
            }
            Ok(Some(_)) if RUN.load(Ordering::SeqCst) == RUN_BY_SOCKET => {}
            // The server went away (or is sweeping a warm container, used or not).
            Ok(None) | Err(_) => return 0,
            Ok(Some((kind, _))) => {
                output.finish(&failure(format!("unexpected record {kind}"), 125))
            }
        }
    };
    serve(spec, stdin, output)
}

/// `agentkernel stub --spare`: a sandbox's exec supervisor, started by its init ahead of
/// the exec. Its stdin is one end of a socket pair whose other end only the init holds;
/// it waits there for the exec connection (passed as `SCM_RIGHTS`), then serves it as
/// `main` serves stdin. It ends if the init's end closes without one.
pub fn spare() -> i32 {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    protect_self();
    let subreaper = rustix::process::Pid::from_raw(1);
    if let Err(error) = rustix::process::set_child_subreaper(subreaper) {
        eprintln!("agentkernel stub: cannot become a child subreaper: {error}");
    }
    let connection = loop {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8; 1];
        let received = recvmsg(
            io::stdin(),
            &mut [io::IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let passed = control.drain().find_map(|message| match message {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        });
        match (received, passed) {
            (_, Some(fd)) => break std::os::unix::net::UnixStream::from(fd),
            (Err(rustix::io::Errno::INTR), None) => continue,
            // The init's end closed (or failed) before an exec came.
            _ => return 0,
        }
    };
    let output = match connection.try_clone() {
        Ok(clone) => Arc::new(Output::new(Box::new(clone))),
        Err(_) => return 1,
    };
    output.record(HELLO, hello().as_bytes());
    let mut input = connection;
    let spec = match read_record(&mut input) {
        Ok(Some((SPEC, payload))) => match serde_json::from_slice::<StubSpec>(&payload) {
            Ok(spec) => spec,
            Err(error) => output.finish(&failure(format!("bad spec: {error}"), 125)),
        },
        Ok(Some((kind, _))) => output.finish(&failure(format!("unexpected record {kind}"), 125)),
        Ok(None) | Err(_) => return 0,
    };
    serve(spec, input, output)
}

/// Who asked for a temporary container's one run: nobody yet, stdin or the exec socket.
static RUN: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(RUN_NONE);
const RUN_NONE: u8 = 0;
const RUN_BY_STDIN: u8 = 1;
const RUN_BY_SOCKET: u8 = 2;

/// Ends the exec socket of a run that stdin took, before the command starts: the path
/// goes (so nothing can connect any more), and one connection wakes the listener,
/// which sees the run taken and ends.
fn close_socket() {
    let _ = std::os::unix::net::UnixStream::connect(EXEC_SOCKET);
    let _ = std::fs::remove_file(EXEC_SOCKET);
}

/// Takes the one run for `by`; false if it was taken.
fn claim_run(by: u8) -> bool {
    RUN.compare_exchange(RUN_NONE, by, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

/// A temporary container's exec socket: listens (when the container has the socket's
/// directory) for the connection with `token` that asks for the run, in a thread of its
/// own; false if it cannot listen. Nothing else runs in the container until the run is
/// asked for, and once it is, the socket is gone.
fn listen_for_one_run(token: Vec<u8>) -> bool {
    if !std::path::Path::new(EXEC_SOCKET_DIR).is_dir() {
        return false;
    }
    let _ = std::fs::remove_file(EXEC_SOCKET);
    let Ok(listener) = std::os::unix::net::UnixListener::bind(EXEC_SOCKET) else {
        return false;
    };
    std::thread::spawn(look_up_commands);
    std::thread::spawn(move || {
        // As on the main thread, a panic of the run (a thread the pids limit refused,
        // say) must end the container, not just this thread.
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve_one_connection(listener, &token)
        }));
        if served.is_err() {
            std::process::exit(125);
        }
    });
    true
}

/// Accepts until a connection takes the run (then serves it and never returns) or the
/// run was taken on stdin (then returns).
fn serve_one_connection(listener: std::os::unix::net::UnixListener, token: &[u8]) {
    let (connection, spec, output) = loop {
        let Ok((connection, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if RUN.load(Ordering::SeqCst) != RUN_NONE {
            return;
        }
        if let Ok(asked) = ask_on_socket(connection, token) {
            break asked;
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(EXEC_SOCKET);
    if let Err(error) = connection.set_read_timeout(None) {
        output.finish(&failure(format!("exec socket: {error}"), 125));
    }
    match serde_json::from_slice::<StubSpec>(&spec) {
        Ok(spec) => serve(spec, connection, output),
        Err(error) => output.finish(&failure(format!("bad spec: {error}"), 125)),
    }
}

/// Most directory entries `look_up_commands` looks at.
const LOOKUPS: usize = 4096;

/// Looks up every command on the `PATH`, once, while the warm container waits: the
/// first lookups in a container's fresh filesystem are slow (about 40 µs each, and a
/// command's path search makes several), and the run should not pay for them.
fn look_up_commands() {
    let path = std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let entries = path
        .split(':')
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .take(LOOKUPS);
    for entry in entries {
        // Once the run began, the command has the machine.
        if RUN.load(Ordering::SeqCst) != RUN_NONE {
            return;
        }
        let _ = std::fs::metadata(entry.path());
    }
}

/// An exec socket connection that presents `token`, says hello and sends a spec, by
/// `AUTH_TIMEOUT`, and so takes the run: with the spec and its output side.
fn ask_on_socket(
    connection: std::os::unix::net::UnixStream,
    token: &[u8],
) -> io::Result<(std::os::unix::net::UnixStream, Vec<u8>, Arc<Output>)> {
    authenticate(&connection, Instant::now() + AUTH_TIMEOUT, Some(token))?;
    let output = Arc::new(Output::new(Box::new(connection.try_clone()?)));
    output.record(HELLO, hello().as_bytes());
    // The server sends the spec as soon as it reads the hello, however long that took
    // it: the wait for the spec starts now.
    let spec = match read_record(&mut Deadline {
        connection: &connection,
        until: Instant::now() + AUTH_TIMEOUT,
    })? {
        Some((SPEC, payload)) => payload,
        _ => return Err(io::Error::other("no spec")),
    };
    if !claim_run(RUN_BY_SOCKET) {
        return Err(io::Error::other("the run was taken"));
    }
    Ok((connection, spec, output))
}

/// The hello record's payload: `{"version":N}`, our protocol version.
pub fn hello() -> String {
    serde_json::json!({ "version": PROTOCOL_VERSION }).to_string()
}

/// The protocol version a stub's hello announces (`None`: not a hello we can read).
pub fn hello_version(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get("version")?
        .as_u64()
}

fn failure(message: String, exit_code: i64) -> StubExit {
    StubExit {
        exit_code: Some(exit_code),
        signal: None,
        timed_out: false,
        oom_killed: false,
        truncated: false,
        error: Some(message),
    }
}

fn serve(spec: StubSpec, stdin: impl Read + Send + 'static, output: Arc<Output>) -> ! {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(spec.timeout_ms);
    let oom_before = oom_kill_count();
    // Who we are, for a kill from outside should we stop answering (see `reap`).
    if let Some(own) = reap::process(std::process::id()) {
        let process = serde_json::json!({ "pid": own.pid, "start": own.start }).to_string();
        output.record(PROCESS, process.as_bytes());
    }
    let mut command = Command::new(&spec.argv[0]);
    command
        .args(&spec.argv[1..])
        // A process group of its own, so that the command's `kill 0` never reaches us,
        // and so that one signal to the group reaches all of it that did not leave.
        .process_group(0);
    for entry in &spec.env {
        if let Some((key, value)) = entry.split_once('=') {
            command.env(key, value);
        }
    }
    if let Some(dir) = &spec.workdir {
        if let Err(error) = std::fs::create_dir_all(dir) {
            let message = format!("agentkernel: cannot use workdir '{dir}': {error}\n");
            output.record(STDERR, message.as_bytes());
            output.finish(&failure(message.trim().to_string(), 126));
        }
        command.current_dir(dir);
    }
    // Every thread and pipe of the run exists before the command starts: a command
    // that takes every pid of its container at once (a fork bomb at the pids limit)
    // must not leave its supervisor unable to start the thread that reaps it or
    // relays its output.
    let run = match prepare(&spec, stdin, &output, &mut command) {
        Ok(run) => run,
        Err(error) => {
            let message = format!("agentkernel: cannot prepare the command's run: {error}");
            output.finish(&failure(message, 125));
        }
    };
    let child = command.spawn();
    // Our copies of the command's ends of its pipes: the relays see the end of its
    // output only once they are closed.
    drop(command);
    let child = match child {
        Ok(child) => child,
        Err(error) => {
            let code = if error.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let message = format!("agentkernel: cannot run '{}': {error}\n", spec.argv[0]);
            output.record(STDERR, message.as_bytes());
            output.finish(&failure(message.trim().to_string(), code));
        }
    };
    let command_pid = child.id();
    run.start(command_pid);
    let status = match run
        .status
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        Ok(status) => Some(status),
        Err(mpsc::RecvTimeoutError::Timeout) => output.finish_after(
            || kill_tree(command_pid),
            || StubExit {
                exit_code: None,
                signal: None,
                timed_out: true,
                oom_killed: false,
                truncated: run.truncated(),
                error: None,
            },
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => None,
    };
    // Output still in the pipes belongs to the result; wait for both relays, but not
    // for background children that hold the pipes open.
    let drain_until = (Instant::now() + DRAIN_GRACE).min(deadline);
    for _ in 0..2 {
        let left = drain_until.saturating_duration_since(Instant::now());
        if run.drained.recv_timeout(left).is_err() {
            break;
        }
    }
    let oom_killed = match (oom_before, oom_kill_count()) {
        (Some(before), Some(after)) => after > before,
        _ => false,
    };
    if std::process::id() == 1 {
        // A temporary container serves one command: what it left running in the
        // background ends with it, now rather than at the container's teardown.
        kill_tree(command_pid);
    }
    let exit = match status {
        Some(status) => StubExit {
            exit_code: status.exit_status().map(i64::from),
            signal: status.terminating_signal(),
            timed_out: false,
            oom_killed,
            truncated: run.truncated(),
            error: None,
        },
        None => failure("lost track of the command's exit".into(), 125),
    };
    output.finish(&exit)
}

/// The threads of a run, started and waiting for its command (`prepare`).
struct Run {
    /// Gives the reaper the command's pid.
    start: mpsc::Sender<u32>,
    /// Gives the stdin thread the command's pid (for the kill, should the server let go).
    stdin_start: mpsc::Sender<u32>,
    /// The command's own exit status, from the reaper.
    status: mpsc::Receiver<rustix::process::WaitStatus>,
    /// One message per relay that reached the end of its pipe.
    drained: mpsc::Receiver<()>,
    /// Whether a relay dropped output past the cap.
    truncated: Arc<Mutex<bool>>,
}

impl Run {
    /// Lets the waiting threads go once the command runs as `pid`: the reaper waits for
    /// it, the stdin thread forwards its input and watches for the server letting go.
    fn start(&self, pid: u32) {
        let _ = self.start.send(pid);
        let _ = self.stdin_start.send(pid);
    }

    /// Whether a relay dropped output past the cap.
    fn truncated(&self) -> bool {
        *self.truncated.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes the command's pipes (given to `command`) and starts every thread its run
/// needs: a relay per output pipe, the reaper and the stdin thread (those two wait for
/// the command's pid). Dropping the `Run`'s senders without a pid ends the waiting ones.
fn prepare(
    spec: &StubSpec,
    mut stdin: impl Read + Send + 'static,
    output: &Arc<Output>,
    command: &mut Command,
) -> io::Result<Run> {
    let (stdout_read, stdout_write) = io::pipe()?;
    let (stderr_read, stderr_write) = io::pipe()?;
    let (child_stdin, stdin_write) = if spec.stdin {
        let (read, write) = io::pipe()?;
        (Stdio::from(read), Some(write))
    } else {
        (Stdio::null(), None)
    };
    command
        .stdin(child_stdin)
        .stdout(stdout_write)
        .stderr(stderr_write);
    let truncated = Arc::new(Mutex::new(false));
    let (drained_sender, drained) = mpsc::channel::<()>();
    for (pipe, kind) in [(stdout_read, STDOUT), (stderr_read, STDERR)] {
        let output = Arc::clone(output);
        let truncated = Arc::clone(&truncated);
        let done = drained_sender.clone();
        let cap = spec.max_output_bytes;
        std::thread::Builder::new().spawn(move || {
            relay(pipe, kind, cap, &output, &truncated);
            let _ = done.send(());
        })?;
    }
    let (start, started) = mpsc::channel::<u32>();
    let (status_sender, status) = mpsc::channel();
    std::thread::Builder::new().spawn(move || {
        if let Ok(command) = started.recv() {
            reap_children(command, status_sender);
        }
    })?;
    // The rest of stdin: command input, then EOF. When the server closes our stdin,
    // nobody is waiting for the result any more: stop everything.
    let (stdin_start, stdin_started) = mpsc::channel::<u32>();
    let output = Arc::clone(output);
    std::thread::Builder::new().spawn(move || {
        let Ok(command) = stdin_started.recv() else {
            return;
        };
        forward_stdin(&mut stdin, stdin_write);
        if output.claimed.load(Ordering::SeqCst) {
            // The result is out (or going out) and the server let go. As a
            // container's init, ending takes everything with it (after a run on the
            // exec socket, once stdin ends: see `main`); run by `docker exec` in a
            // sandbox, the main thread ends the exec once what the command left in
            // the background has ended too.
            if RUN.load(Ordering::SeqCst) == RUN_BY_SOCKET {
                return;
            }
            if std::process::id() == 1 {
                std::process::exit(0);
            }
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        output.finish_after(
            || kill_tree(command),
            || {
                let mut exit = failure("the server closed the connection".into(), 137);
                exit.signal = Some(9);
                exit
            },
        );
    })?;
    Ok(Run {
        start,
        stdin_start,
        status,
        drained,
        truncated,
    })
}

fn relay(mut pipe: impl Read, kind: u8, cap: u64, output: &Output, truncated: &Mutex<bool>) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut sent: u64 = 0;
    loop {
        let count = match pipe.read(&mut buffer) {
            Ok(0) => return,
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let room = cap.saturating_sub(sent) as usize;
        let kept = count.min(room);
        if kept > 0 {
            output.record(kind, &buffer[..kept]);
            sent += kept as u64;
        }
        if kept < count {
            // Keep draining so the command never blocks on a full pipe; drop the rest.
            *truncated.lock().unwrap_or_else(|e| e.into_inner()) = true;
        }
    }
}

fn forward_stdin(stdin: &mut impl Read, mut child_stdin: Option<io::PipeWriter>) {
    loop {
        match read_record(stdin) {
            Ok(Some((STDIN, data))) => {
                if let Some(pipe) = child_stdin.as_mut() {
                    if pipe.write_all(&data).is_err() {
                        // The command closed its stdin; the rest is not wanted.
                        child_stdin = None;
                    }
                }
            }
            Ok(Some((STDIN_END, _))) => child_stdin = None,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// The container's OOM-kill count (cgroup v2 `memory.events`, or cgroup v1
/// `memory.oom_control` on kernels that count), if readable.
fn oom_kill_count() -> Option<u64> {
    for (path, key) in [
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ] {
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                if let Some(value) = line.strip_prefix(key).map(str::trim) {
                    if let Ok(count) = value.parse() {
                        return Some(count);
                    }
                }
            }
        }
    }
    None
}

/// Whether an executable is statically linked (has no ELF interpreter), so that it can
/// run as the stub in any image, even one without a libc.
pub fn is_static_executable(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let valid = bytes.len() >= 64 && bytes[..4] == *b"\x7fELF" && bytes[4] == 2 && bytes[5] == 1;
    if !valid {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (entry_size, count) = (u16_at(0x36), u16_at(0x38));
    for index in 0..count {
        let at = phoff + index * entry_size;
        let Some(header) = bytes.get(at..at + 4) else {
            return false;
        };
        if u32::from_le_bytes(header.try_into().expect("4 bytes")) == PT_INTERP {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::http::tests::Trickle;

    #[test]
    fn the_hello_announces_our_protocol_version() {
        assert_eq!(
            hello_version(hello().as_bytes()),
            Some(u64::from(PROTOCOL_VERSION))
        );
        assert_eq!(hello_version(br#"{"version":7}"#), Some(7));
        for unreadable in [&b""[..], b"{}", b"[1]", br#"{"version":"1"}"#, b"\xff"] {
            assert_eq!(hello_version(unreadable), None);
        }
    }

    #[test]
    fn records_are_byte_exact_and_survive_any_split() {
        assert_eq!(encode_record(STDOUT, b"hi"), b"O\x00\x00\x00\x02hi");
        let mut stream = encode_record(HELLO, b"{}");
        stream.extend(encode_record(STDERR, b""));
        stream.extend(encode_record(EXIT, &[0xff; 70]));
        for pieces in [&[1][..], &[2, 3], &[4096]] {
            let mut reader = Trickle::new(&stream, pieces);
            assert_eq!(
                read_record(&mut reader).unwrap(),
                Some((HELLO, b"{}".to_vec()))
            );
            assert_eq!(
                read_record(&mut reader).unwrap(),
                Some((STDERR, Vec::new()))
            );
            assert_eq!(
                read_record(&mut reader).unwrap(),
                Some((EXIT, vec![0xff; 70]))
            );
            assert_eq!(read_record(&mut reader).unwrap(), None);
        }
        let error = read_record(&mut &b"O\x00\x00"[..]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let error = read_record(&mut &b"O\xff\xff\xff\xff"[..]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn spec_and_exit_round_trip() {
        let spec = StubSpec {
            argv: vec!["echo".into(), "a b".into()],
            env: vec!["A=1".into()],
            workdir: Some("/tmp".into()),
            timeout_ms: 1000,
            max_output_bytes: 10,
            stdin: true,
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<StubSpec>(&text).unwrap(), spec);
        let exit = failure("x".into(), 127);
        let text = serde_json::to_string(&exit).unwrap();
        assert_eq!(serde_json::from_str::<StubExit>(&text).unwrap(), exit);
    }

    #[test]
    fn tells_static_from_dynamic_executables() {
        let own = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // The test binary is built with the crate's crt-static configuration.
        assert!(is_static_executable(&own));
        let dynamic = std::fs::read("/bin/sh").unwrap();
        assert!(!is_static_executable(&dynamic));
        assert!(!is_static_executable(b"#!/bin/sh\n"));
    }
}
