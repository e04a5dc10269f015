//! One command to run and what came of it: the typed, validated request (`CommandSpec`)
//! and the honest result (`CommandResult`), the `Observer` that watches it run and its
//! `Cancel` handle, plus the reader that collects a hijacked stream under a deadline and
//! an output cap. The two transports are `stub` and `docker_exec`.
//!
//! Invariants: a `CommandSpec` is valid by construction (non-empty argv, `K=V` env
//! entries, absolute workdir, bounded timeout and cap), so nothing below re-checks it;
//! output past the cap is read and dropped, never buffered, so a command that prints
//! gigabytes costs no memory; a stream is never read past its deadline plus a short
//! grace, whatever the command does.

mod cancel;
pub mod docker_exec;
pub mod stub;

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
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    /// stdout and stderr interleaved in the order received.
    pub output: Vec<u8>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: Option<i64>,
    pub signal: Option<i32>,
    pub status: Status,
    pub duration: Duration,
    /// What happened, where the status alone does not say (`Killed`).
    pub message: Option<String>,
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
}

/// What every transport does once the command has its connection: arms the observer's
/// cancel handle with it and says that the command starts.
fn connected(sink: OutputSink<'_>, hijacked: &Hijacked) {
    if let Some(cancel) = sink.cancel() {
        cancel.arm(hijacked);
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

/// An observer that keeps nothing but can be cancelled (a request whose answer is
/// the whole result, and whose client may hang up before it).
pub struct Cancellable<'a>(pub &'a Cancel);

impl Observer for Cancellable<'_> {
    fn output(&mut self, _: StreamKind, _: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn cancel(&self) -> Option<&Cancel> {
        Some(self.0)
    }
}

pub type OutputSink<'a> = &'a mut dyn Observer;

/// Output read from a stream, within the cap.
#[derive(Debug, Default)]
pub struct Collected {
    pub output: Vec<u8>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub timed_out: bool,
}

impl Collected {
    /// Keeps what fits under the per-stream cap, notes that something was dropped, and
    /// returns what was kept.
    pub fn push<'b>(&mut self, kind: StreamKind, bytes: &'b [u8], cap: u64) -> &'b [u8] {
        let target = match kind {
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
            StreamKind::Stdin => return &[],
        };
        let room = (cap as usize).saturating_sub(target.len());
        let kept = &bytes[..bytes.len().min(room)];
        if kept.len() < bytes.len() {
            self.truncated = true;
        }
        target.extend_from_slice(kept);
        self.output.extend_from_slice(kept);
        kept
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
    let mut collected = Collected::default();
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
        collected.push(StreamKind::Stdout, b"def", 4);
        assert_eq!(collected.stdout, b"abcd");
        assert_eq!(collected.stderr, b"E");
        assert_eq!(collected.output, b"abcEd");
        assert!(collected.truncated);
    }
}
