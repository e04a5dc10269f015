//! One command to run and what came of it: the typed, validated request (`CommandSpec`)
//! and the honest result (`CommandResult`), the `Observer` that watches it run and its
//! `Cancel` handle, plus the reader that collects a hijacked stream under a deadline and
//! an output cap, within the request's output budget (`budget`). The two transports are
//! `stub` and `docker_exec`.
//!
//! Invariants: a `CommandSpec` is valid by construction (non-empty argv, `K=V` env
//! entries, absolute workdir, bounded timeout and cap), so nothing below re-checks it;
//! output past the cap is read and dropped, never buffered, so a command that prints
//! gigabytes costs no memory; a result keeps each byte of output once (stdout and
//! stderr, with the order they came in as runs over them, never an interleaved copy),
//! and no more than its observer's `Keep` allows; a result says which stream was cut
//! and by what; a stream is never read past its deadline plus a short grace, whatever
//! the command does.

pub mod budget;
mod cancel;
pub mod docker_exec;
pub mod gate;
pub mod socket;
pub mod stub;

pub use self::budget::{OutputBudget, OutputMemory};
pub use self::cancel::Cancel;

use std::io;
use std::time::{Duration, Instant};

use crate::engine::frames::StreamKind;
use crate::engine::Hijacked;

/// How long a stream may keep going after the deadline passed and the kill was sent.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// A command, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub max_output_bytes: u64,
}

impl CommandSpec {
    /// Validates each part; the error names the field and what is wrong with it.
    pub fn new(
        argv: Vec<String>,
        env: Vec<String>,
        workdir: Option<String>,
        stdin: Option<Vec<u8>>,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> Result<CommandSpec, String> {
        if argv.is_empty() {
            return Err("command must be a non-empty array of strings".into());
        }
        if argv[0].is_empty() {
            return Err("command[0] (the program) must not be empty".into());
        }
        if argv.iter().any(|arg| arg.contains('\0')) {
            return Err("command arguments must not contain NUL bytes".into());
        }
        for entry in &env {
            if !valid_env_entry(entry) {
                return Err(format!(
                    "env entry '{entry}' is invalid: expected KEY=VALUE with KEY of \
                     letters, digits and '_'"
                ));
            }
        }
        if let Some(dir) = &workdir {
            if !dir.starts_with('/') || dir.contains('\0') {
                return Err(format!("workdir '{dir}' must be an absolute path"));
            }
        }
        Ok(CommandSpec {
            argv,
            env,
            workdir,
            stdin,
            timeout,
            max_output_bytes,
        })
    }
}

/// `KEY=VALUE` with a KEY of letters, digits and `_`, not starting with a digit, and
/// no NUL anywhere.
pub fn valid_env_entry(entry: &str) -> bool {
    let valid_key = |key: &str| {
        !key.is_empty()
            && !key.bytes().next().is_some_and(|b| b.is_ascii_digit())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    !entry.contains('\0') && entry.split_once('=').is_some_and(|(key, _)| valid_key(key))
}

/// What happened to the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Exited,
    Timeout,
    OomKilled,
    Signaled,
    OutputTruncated,
    /// The command's supervisor ended without a result (killed by the command or from
    /// outside); everything the command started was killed with it.
    Killed,
    /// The command failed, and the container's root filesystem is at its disk quota:
    /// its writes failed with "No space left on device" (`containers::disk`).
    DiskQuotaExceeded,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Exited => "exited",
            Status::Timeout => "timeout",
            Status::OomKilled => "oom_killed",
            Status::Signaled => "signaled",
            Status::OutputTruncated => "output_truncated",
            Status::Killed => "killed",
            Status::DiskQuotaExceeded => "disk_quota_exceeded",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    /// How stdout and stderr interleaved, in the order received (read with
    /// `output_pieces`), and what was cut.
    pub output: Interleaving,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: Option<i64>,
    pub signal: Option<i32>,
    pub status: Status,
    pub duration: Duration,
    /// What happened, where the status alone does not say (`Killed`).
    pub message: Option<String>,
}

impl CommandResult {
    /// stdout and stderr interleaved in the order received, piece by piece.
    pub fn output_pieces(&self) -> impl Iterator<Item = &[u8]> {
        self.output.pieces(&self.stdout, &self.stderr)
    }

    /// The interleaved output in one buffer: a copy, for small results and tests.
    pub fn output_bytes(&self) -> Vec<u8> {
        self.output_pieces().collect::<Vec<_>>().concat()
    }
}

/// What cut a stream's output short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The command's own `max_output_bytes` for that stream.
    MaxOutputBytes,
    /// The request's output budget, which all of its commands share.
    RequestBudget,
}

impl Cut {
    pub fn name(self) -> &'static str {
        match self {
            Cut::MaxOutputBytes => "max_output_bytes",
            Cut::RequestBudget => "request_budget",
        }
    }
}

/// How a result's stdout and stderr came in: runs of each, in the order received, over
/// the two buffers, so that the interleaved output is read through them and never kept
/// as a third copy; and which stream was cut, by what.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interleaving {
    runs: Vec<Run>,
    /// Per stream (stdout, stderr): what cut it first, if anything did.
    pub cut: [Option<Cut>; 2],
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    stderr: bool,
    length: u32,
}

/// What one more run costs a budget: a switch between the streams is kept as this
/// much bookkeeping besides its bytes.
pub const RUN_BYTES: u64 = std::mem::size_of::<Run>() as u64;

impl Interleaving {
    /// Whether `length` more bytes of stream `index` need a new run.
    fn starts_run(&self, index: usize, length: usize) -> bool {
        match self.runs.last() {
            Some(run) => {
                run.stderr != (index == 1)
                    || u32::try_from(length)
                        .ok()
                        .and_then(|length| run.length.checked_add(length))
                        .is_none()
            }
            None => true,
        }
    }

    fn push(&mut self, index: usize, length: usize) {
        if self.starts_run(index, length) {
            let length = u32::try_from(length).expect("a chunk is smaller than 4 GiB");
            self.runs.push(Run {
                stderr: index == 1,
                length,
            });
        } else if let Some(run) = self.runs.last_mut() {
            run.length += length as u32;
        }
    }

    /// The interleaved output, read over the two streams' buffers.
    pub fn pieces<'a>(
        &'a self,
        stdout: &'a [u8],
        stderr: &'a [u8],
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut offsets = [0usize; 2];
        self.runs.iter().map(move |run| {
            let (buffer, offset) = if run.stderr {
                (stderr, &mut offsets[1])
            } else {
                (stdout, &mut offsets[0])
            };
            let start = (*offset).min(buffer.len());
            let end = (start + run.length as usize).min(buffer.len());
            *offset = end;
            &buffer[start..end]
        })
    }

    /// Which stream was cut, by what: `(stdout, stderr)`.
    pub fn cut_streams(&self) -> (Option<Cut>, Option<Cut>) {
        (self.cut[0], self.cut[1])
    }
}

/// How much output a command's result keeps; the per-stream caps apply either way.
#[derive(Debug, Clone, Default)]
pub enum Keep {
    /// All of it, within the caps (the server's own operations in a sandbox, whose
    /// callers bound what they ask for).
    #[default]
    All,
    /// What the request's output budget still has room for.
    Within(OutputBudget),
    /// None: the observer took every byte as it came (an event stream, the console).
    Nothing,
}

/// Who watches a command as it runs: the SSE stream, or the CLI's own stdout and
/// stderr. Output arrives here as it is produced (after the cap), besides being
/// collected into the result.
pub trait Observer {
    /// Output as it arrives. An error means the observer went away: the command is
    /// stopped (its connection dropped: the stub kills it, and the `docker exec`
    /// transport kills its processes) and the run fails.
    fn output(&mut self, kind: StreamKind, bytes: &[u8]) -> io::Result<()>;

    /// The command has its connection and starts now (a cold container's start is
    /// over).
    fn started(&mut self) {}

    /// The handle through which another thread may stop the command; the transport
    /// arms it with the command's connection.
    fn cancel(&self) -> Option<&Cancel> {
        None
    }

    /// How much of the output the result keeps.
    fn keep(&self) -> Keep {
        Keep::All
    }
}

/// What every transport does once the command has its connection: arms the observer's
/// cancel handle with it and says that the command starts.
fn connected(sink: OutputSink<'_>, connection: &std::os::unix::net::UnixStream) {
    if let Some(cancel) = sink.cancel() {
        cancel.arm(connection);
    }
    sink.started();
}

/// Whether the observer's cancel handle was used.
fn cancelled(sink: OutputSink<'_>) -> bool {
    sink.cancel().is_some_and(Cancel::is_cancelled)
}

/// Watches nothing: for callers that only want the final result.
pub struct NoObserver;

impl Observer for NoObserver {
    fn output(&mut self, _: StreamKind, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Watches nothing: the result keeps what the request's budget has room for, and the
/// server may stop the command through `cancel` (a request whose answer is the whole
/// result, and whose client may hang up before it).
pub struct KeepWithin<'a> {
    pub budget: OutputBudget,
    pub cancel: Option<&'a Cancel>,
}

impl<'a> KeepWithin<'a> {
    pub fn new(budget: &OutputBudget, cancel: Option<&'a Cancel>) -> KeepWithin<'a> {
        KeepWithin {
            budget: budget.clone(),
            cancel,
        }
    }
}

impl Observer for KeepWithin<'_> {
    fn output(&mut self, _: StreamKind, _: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn cancel(&self) -> Option<&Cancel> {
        self.cancel
    }

    fn keep(&self) -> Keep {
        Keep::Within(self.budget.clone())
    }
}

pub type OutputSink<'a> = &'a mut dyn Observer;

/// Output read from a stream, within the cap and what the observer lets it keep.
#[derive(Debug, Default)]
pub struct Collected {
    pub output: Interleaving,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Some output was dropped, by a stream's cap or by the budget.
    pub truncated: bool,
    pub timed_out: bool,
    /// Bytes let through per stream (stdout, stderr), within its cap, kept or not.
    passed: [u64; 2],
    keep: Keep,
}

impl Collected {
    pub fn new(keep: Keep) -> Collected {
        Collected {
            keep,
            ..Collected::default()
        }
    }

    /// Lets through what fits under the stream's cap, keeps what the budget allows of
    /// it, notes what was dropped and why, and returns what was let through (what the
    /// observer sees).
    pub fn push<'b>(&mut self, kind: StreamKind, bytes: &'b [u8], cap: u64) -> &'b [u8] {
        let index = match kind {
            StreamKind::Stdout => 0,
            StreamKind::Stderr => 1,
            StreamKind::Stdin => return &[],
        };
        let room = cap.saturating_sub(self.passed[index]);
        let passed = &bytes[..bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        self.passed[index] += passed.len() as u64;
        let kept = match &self.keep {
            Keep::All => passed.len(),
            Keep::Nothing => 0,
            Keep::Within(budget) => {
                let overhead = if self.output.starts_run(index, passed.len()) {
                    RUN_BYTES
                } else {
                    0
                };
                let kept = budget.take(passed.len() as u64, overhead) as usize;
                if kept < passed.len() {
                    self.cut(index, Cut::RequestBudget);
                }
                kept
            }
        };
        if kept > 0 {
            let target = if index == 0 {
                &mut self.stdout
            } else {
                &mut self.stderr
            };
            target.extend_from_slice(&passed[..kept]);
            self.output.push(index, kept);
        }
        // After the budget's cut: within one piece, that one comes first in the stream.
        if passed.len() < bytes.len() {
            self.cut(index, Cut::MaxOutputBytes);
        }
        passed
    }

    /// Notes that stream `index` lost output; the first cause (the earliest byte
    /// dropped) is the one reported.
    fn cut(&mut self, index: usize, cause: Cut) {
        self.truncated = true;
        self.output.cut[index].get_or_insert(cause);
    }
}

/// Reads a hijacked stream to EOF. When `deadline` passes, `on_deadline` runs once (it
/// kills the process) and reading goes on for a short grace to pick up the end.
pub fn collect_stream(
    hijacked: &mut Hijacked,
    deadline: Instant,
    cap: u64,
    mut on_deadline: impl FnMut(),
    sink: OutputSink<'_>,
) -> io::Result<Collected> {
    let mut collected = Collected::new(sink.keep());
    let mut payload = Vec::new();
    let mut hard_deadline = None;
    loop {
        let now = Instant::now();
        let limit = hard_deadline.unwrap_or(deadline);
        if now >= limit {
            if hard_deadline.is_some() {
                // The kill did not end the stream in time; stop reading regardless.
                return Ok(collected);
            }
            collected.timed_out = true;
            on_deadline();
            hard_deadline = Some(Instant::now() + KILL_GRACE);
            continue;
        }
        hijacked.set_read_timeout(Some(limit - now))?;
        match hijacked.frames.next_frame(&mut payload) {
            Ok(Some(kind)) => {
                let kept = collected.push(kind, &payload, cap);
                if !kept.is_empty() {
                    sink.output(kind, kept)?;
                }
            }
            Ok(None) => return Ok(collected),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // A read timed out: loop round to the deadline handling above.
                // (A frame cut by the timeout is lost; only the kill path gets here.)
                if hard_deadline.is_some() {
                    return Ok(collected);
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// Lossy UTF-8 for JSON answers: invalid bytes become U+FFFD, never an error.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str], env: &[&str], workdir: Option<&str>) -> Result<CommandSpec, String> {
        CommandSpec::new(
            argv.iter().map(|s| s.to_string()).collect(),
            env.iter().map(|s| s.to_string()).collect(),
            workdir.map(str::to_string),
            None,
            Duration::from_secs(1),
            1024,
        )
    }

    #[test]
    fn validates_commands_env_and_workdir() {
        assert!(spec(&["echo", "hi"], &["A=1", "B_2=x=y", "EMPTY="], Some("/tmp")).is_ok());
        assert!(spec(&[], &[], None).unwrap_err().contains("non-empty"));
        assert!(spec(&[""], &[], None).is_err());
        for bad in ["NOEQ", "=v", "1A=x", "A-B=x"] {
            let error = spec(&["true"], &[bad], None).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        assert!(spec(&["true"], &[], Some("relative")).is_err());
    }

    #[test]
    fn caps_each_stream_and_keeps_the_interleaving() {
        let mut collected = Collected::default();
        collected.push(StreamKind::Stdout, b"abc", 4);
        collected.push(StreamKind::Stderr, b"E", 4);
        assert_eq!(collected.push(StreamKind::Stdout, b"def", 4), b"d");
        assert_eq!(collected.stdout, b"abcd");
        assert_eq!(collected.stderr, b"E");
        let result = result_of(collected);
        assert_eq!(result.output_bytes(), b"abcEd");
        assert_eq!(
            result.output.cut_streams(),
            (Some(Cut::MaxOutputBytes), None)
        );
    }

    fn result_of(collected: Collected) -> CommandResult {
        assert!(collected.truncated || collected.output.cut == [None, None]);
        CommandResult {
            output: collected.output,
            stdout: collected.stdout,
            stderr: collected.stderr,
            exit_code: Some(0),
            signal: None,
            status: Status::Exited,
            duration: Duration::ZERO,
            message: None,
        }
    }

    #[test]
    fn a_shared_budget_cuts_whichever_command_finds_it_spent() {
        let budget = OutputBudget::new(2 * RUN_BYTES + 5);
        let mut first = Collected::new(Keep::Within(budget.clone()));
        let mut second = Collected::new(Keep::Within(budget.clone()));
        // What the observer sees is the cap's business only.
        assert_eq!(first.push(StreamKind::Stdout, b"abc", 100), b"abc");
        assert_eq!(second.push(StreamKind::Stderr, b"XYZ", 100), b"XYZ");
        assert_eq!(first.push(StreamKind::Stdout, b"d", 100), b"d");
        assert_eq!(budget.kept(), budget.limit());
        assert_eq!(
            (first.stdout.as_slice(), second.stderr.as_slice()),
            (&b"abc"[..], &b"XY"[..])
        );
        let (first, second) = (result_of(first), result_of(second));
        assert_eq!(first.output.cut_streams(), (Some(Cut::RequestBudget), None));
        assert_eq!(
            second.output.cut_streams(),
            (None, Some(Cut::RequestBudget))
        );
        assert_eq!(second.output_bytes(), b"XY");
    }

    #[test]
    fn the_earliest_byte_dropped_names_the_cause() {
        let budget = OutputBudget::new(RUN_BYTES + 3);
        let mut collected = Collected::new(Keep::Within(budget));
        // The cap lets 5 bytes through; the budget keeps 3 of them.
        assert_eq!(collected.push(StreamKind::Stdout, b"abcdefgh", 5), b"abcde");
        assert_eq!(collected.stdout, b"abc");
        assert_eq!(collected.output.cut[0], Some(Cut::RequestBudget));
    }

    #[test]
    fn each_switch_between_the_streams_costs_a_run() {
        let budget = OutputBudget::new(1000);
        let mut collected = Collected::new(Keep::Within(budget.clone()));
        for _ in 0..3 {
            collected.push(StreamKind::Stdout, b"o", 100);
            collected.push(StreamKind::Stdout, b"o", 100);
            collected.push(StreamKind::Stderr, b"e", 100);
        }
        assert_eq!(budget.kept(), 9 + 6 * RUN_BYTES);
        assert_eq!(result_of(collected).output_bytes(), b"ooeooeooe");
    }

    #[test]
    fn an_observer_that_takes_everything_leaves_nothing_to_keep() {
        let mut collected = Collected::new(Keep::Nothing);
        assert_eq!(collected.push(StreamKind::Stdout, b"abcdef", 4), b"abcd");
        assert!(collected.stdout.is_empty() && collected.truncated);
        assert_eq!(
            collected.output.cut_streams(),
            (Some(Cut::MaxOutputBytes), None)
        );
    }
}
