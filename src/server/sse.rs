//! Server-Sent Events for `/run/stream` and `/sandboxes/{name}/exec/stream`: the
//! command runs on a `stream-producer` thread (scoped to the worker, so concurrency stays
//! bounded by the worker pool) and reports through an `Observer` that turns output into
//! events; the worker writes them to the client as they come, each in its own HTTP
//! chunk, flushed at once.
//!
//! Invariants: one event per `data:` line of one-line JSON, every event ends with a
//! blank line; the stream ends with exactly one `done` or `error`; a comment heartbeat
//! goes out after a second of silence, so a client that went away is noticed within a
//! second, and then the command is cancelled through its `exec::Cancel` handle (the
//! command is killed and the container removed; this module never touches the
//! engine's connections); UTF-8 sequences split across output chunks are joined, never
//! mangled; the command's result keeps none of its output (the events carried it), and
//! at most `EVENTS_IN_FLIGHT` events of bounded size wait for the client, which is
//! the `STREAM_MEMORY_BYTES` a stream takes from the output memory.

use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use serde_json::{json, Value};

use crate::codec::json::incomplete_utf8_tail;
use crate::config::Namespace;
use crate::containers::labels::SandboxName;
use crate::engine::frames::StreamKind;
use crate::exec::{Cancel, CommandResult, CommandSpec, Cut, Keep, Observer};
use crate::run::RunRequest;

use super::Context;

const HEARTBEAT: Duration = Duration::from_secs(1);
/// Events that may wait for the client: a slow client makes the command wait, never
/// the server hold more.
const EVENTS_IN_FLIGHT: usize = 16;
/// Most output bytes one `output` event carries: larger pieces are sent as several.
const EVENT_BYTES: usize = 16 * 1024;
/// What a stream's events may take at most: the ones in flight and the one being
/// written, each at most its bytes escaped (a control byte takes six) plus framing.
pub const STREAM_MEMORY_BYTES: u64 =
    ((EVENTS_IN_FLIGHT + 1) * (6 * (EVENT_BYTES + 4) + 256)) as u64;
/// How long past the command's deadline a client may leave its events unread.
const SLOW_CLIENT_GRACE: Duration = Duration::from_secs(5);

/// What a streaming answer runs, decided (and validated) by its handler.
#[derive(Debug)]
pub enum StreamJob {
    Run(RunRequest),
    /// A sandbox found running (before the stream started), its namespace and name,
    /// and the command.
    Exec(
        Box<crate::sandbox::Running>,
        Namespace,
        SandboxName,
        CommandSpec,
    ),
}

impl StreamJob {
    /// Runs the job, reporting output to `observer`, and records an exec in the
    /// sandbox's history. Also the CLI's local streaming path, so that a streamed
    /// command runs the same way whoever watches it.
    pub fn execute(
        &self,
        context: &Context,
        observer: &mut dyn Observer,
    ) -> crate::error::Result<CommandResult> {
        match self {
            StreamJob::Run(request) => crate::run::run(
                &context.docker,
                &context.config,
                &context.pool,
                request,
                observer,
            ),
            StreamJob::Exec(running, namespace, name, spec) => {
                let _busy = context.expiry.busy(namespace, name);
                let result = crate::sandbox::exec_running(
                    &context.docker,
                    &context.config_in(namespace),
                    running,
                    spec,
                    observer,
                )?;
                context.history.exec(namespace, name, &spec.argv, &result);
                Ok(result)
            }
        }
    }

    fn timeout(&self) -> Duration {
        match self {
            StreamJob::Run(request) => request.command.timeout,
            StreamJob::Exec(_, _, _, spec) => spec.timeout,
        }
    }

    fn command(&self) -> &[String] {
        match self {
            StreamJob::Run(request) => &request.command.argv,
            StreamJob::Exec(_, _, _, spec) => &spec.argv,
        }
    }
}

/// One event, framed: `event: NAME\ndata: JSON\n\n`.
pub fn event(name: &str, data: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// Writes one HTTP chunk and flushes it (for HTTP/1.0, the bytes as they are: the
/// stream then ends with the connection). One write: the client gets the event in one
/// segment, not four.
fn write_chunk(writer: &mut dyn Write, bytes: &[u8], chunked: bool) -> io::Result<()> {
    if !chunked {
        writer.write_all(bytes)?;
        return writer.flush();
    }
    let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
    chunk.reserve(bytes.len() + 2);
    chunk.extend_from_slice(bytes);
    chunk.extend_from_slice(b"\r\n");
    writer.write_all(&chunk)?;
    writer.flush()
}

/// Answers a request with an event stream; returns the status for the log line.
/// The connection closes after the stream.
///
/// `slots`, the stream's place among its namespace's concurrent runs, is given back
/// as soon as its command has ended, before its last event: a client that has read
/// `done` may start its next run at once.
pub fn stream(
    context: &Context,
    writer: &mut dyn Write,
    job: StreamJob,
    slots: Option<crate::tenants::RunSlots>,
    http10: bool,
) -> u16 {
    let chunked = !http10;
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
         Cache-Control: no-cache\r\n{framing}Connection: close\r\n\
         X-Accel-Buffering: no\r\n\r\n"
    );
    if writer
        .write_all(head.as_bytes())
        .and_then(|()| writer.flush())
        .is_err()
    {
        return 499;
    }
    let (sender, receiver) = bounded::<Vec<u8>>(EVENTS_IN_FLIGHT);
    let cancel = Cancel::new();
    std::thread::scope(|scope| {
        let producer_cancel = cancel.clone();
        let producer = std::thread::Builder::new()
            .name("stream-producer".into())
            .spawn_scoped(scope, move || {
                let fallback = sender.clone();
                let run =
                    AssertUnwindSafe(|| produce(context, job, slots, sender, producer_cancel));
                if catch_unwind(run).is_err() {
                    log::error!("a stream producer panicked");
                    let message =
                        json!({ "message": "internal error: the command's runner failed" });
                    let _ = fallback.send(event("error", &message));
                }
            });
        if let Err(error) = producer {
            log::error!("cannot start a stream producer: {error}");
            return;
        }
        let mut client_gone = false;
        loop {
            let chunk = match receiver.recv_timeout(HEARTBEAT) {
                Ok(chunk) => chunk,
                Err(RecvTimeoutError::Timeout) => b": keepalive\n\n".to_vec(),
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if write_chunk(writer, &chunk, chunked).is_err() {
                client_gone = true;
                break;
            }
        }
        if client_gone {
            log::info!("stream client went away: stopping its command");
            cancel.cancel();
        } else if chunked {
            let _ = writer.write_all(b"0\r\n\r\n").and_then(|()| writer.flush());
        }
        // Unblocks a producer waiting on a full channel.
        drop(receiver);
    });
    200
}

fn produce(
    context: &Context,
    job: StreamJob,
    slots: Option<crate::tenants::RunSlots>,
    sender: Sender<Vec<u8>>,
    cancel: Cancel,
) {
    let started = Instant::now();
    let _ = sender.send(event("started", &json!({ "command": job.command() })));
    let mut observer = EventObserver {
        timeout: job.timeout(),
        deadline: started + job.timeout() + SLOW_CLIENT_GRACE,
        sender: sender.clone(),
        cancel,
        carry: [Vec::new(), Vec::new()],
    };
    let executed = job.execute(context, &mut observer);
    drop(slots);
    let last = match executed {
        Ok(result) => {
            let _ = observer.flush_carry();
            let (stdout_cut, stderr_cut) = result.output.cut_streams();
            let mut done = json!({
                "exit_code": result.exit_code,
                "status": result.status.name(),
                "signal": result.signal,
                "duration_ms": result.duration.as_millis() as u64,
                "truncated": {
                    "stdout": stdout_cut.map(Cut::name),
                    "stderr": stderr_cut.map(Cut::name),
                },
            });
            if let Some(message) = &result.message {
                done["message"] = json!(message);
            }
            event("done", &done)
        }
        Err(error) => {
            log::info!(
                "stream ended with an error after {:?}: {error}",
                started.elapsed()
            );
            event("error", &json!({ "message": error.to_string() }))
        }
    };
    let _ = sender.send(last);
}

/// Turns output into `output` events.
struct EventObserver {
    /// Past this, a client that does not take its events is treated as gone.
    deadline: Instant,
    /// The command's own time: the deadline restarts when the command starts, so a
    /// cold start does not eat into the client's allowance.
    timeout: Duration,
    sender: Sender<Vec<u8>>,
    /// Used by the worker when the client went away.
    cancel: Cancel,
    /// Per stream (stdout, stderr): the start of a UTF-8 sequence cut by a chunk end.
    carry: [Vec<u8>; 2],
}

impl EventObserver {
    fn send_output(&mut self, index: usize, text: &str) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let stream = if index == 0 { "stdout" } else { "stderr" };
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.sender
            .send_timeout(
                event("output", &json!({ "stream": stream, "data": text })),
                left,
            )
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the stream's client went away or stopped reading",
                )
            })
    }

    fn flush_carry(&mut self) -> io::Result<()> {
        for index in 0..2 {
            let rest = std::mem::take(&mut self.carry[index]);
            self.send_output(index, &String::from_utf8_lossy(&rest))?;
        }
        Ok(())
    }
}

impl Observer for EventObserver {
    fn output(&mut self, kind: StreamKind, bytes: &[u8]) -> io::Result<()> {
        let index = match kind {
            StreamKind::Stdout => 0,
            StreamKind::Stderr => 1,
            StreamKind::Stdin => return Ok(()),
        };
        for piece in bytes.chunks(EVENT_BYTES) {
            let mut data = std::mem::take(&mut self.carry[index]);
            data.extend_from_slice(piece);
            let keep = incomplete_utf8_tail(&data);
            self.carry[index] = data.split_off(data.len() - keep);
            let text = String::from_utf8_lossy(&data).into_owned();
            self.send_output(index, &text)?;
        }
        Ok(())
    }

    fn started(&mut self) {
        self.deadline = Instant::now() + self.timeout + SLOW_CLIENT_GRACE;
    }

    fn cancel(&self) -> Option<&Cancel> {
        Some(&self.cancel)
    }

    /// The events carried the output: the result keeps none of it.
    fn keep(&self) -> Keep {
        Keep::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_exactly() {
        assert_eq!(
            event("output", &json!({"stream": "stdout", "data": "a\nb"})),
            b"event: output\ndata: {\"data\":\"a\\nb\",\"stream\":\"stdout\"}\n\n"
        );
        let mut out = Vec::new();
        write_chunk(&mut out, b"hello", true).unwrap();
        assert_eq!(out, b"5\r\nhello\r\n");
    }

    #[test]
    fn joins_a_character_split_across_chunks() {
        let (sender, receiver) = bounded(8);
        let mut observer = EventObserver {
            deadline: Instant::now() + Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            sender,
            cancel: Cancel::new(),
            carry: [Vec::new(), Vec::new()],
        };
        let euro = "x€y".as_bytes();
        observer.output(StreamKind::Stdout, &euro[..2]).unwrap();
        observer.output(StreamKind::Stdout, &euro[2..]).unwrap();
        let events: Vec<String> = receiver
            .try_iter()
            .map(|e| String::from_utf8(e).unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        assert!(events[0].contains("\"data\":\"x\""), "{events:?}");
        assert!(events[1].contains("\"data\":\"€y\""), "{events:?}");
    }

    #[test]
    fn large_output_goes_out_in_bounded_events() {
        let (sender, receiver) = bounded(8);
        let mut observer = EventObserver {
            deadline: Instant::now() + Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            sender,
            cancel: Cancel::new(),
            carry: [Vec::new(), Vec::new()],
        };
        let control = vec![1u8; 3 * EVENT_BYTES];
        observer.output(StreamKind::Stderr, &control).unwrap();
        let events: Vec<Vec<u8>> = receiver.try_iter().collect();
        assert_eq!(events.len(), 3);
        for event in &events {
            let per_event = STREAM_MEMORY_BYTES as usize / (EVENTS_IN_FLIGHT + 1);
            assert!(event.len() <= per_event, "{} > {per_event}", event.len());
        }
        assert!(matches!(observer.keep(), Keep::Nothing));
    }
}
