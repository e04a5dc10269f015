//! The router's HTTP/1.1 client to its agents: one connection per request
//! (`Connection: close`); a request's body written whole (a small one, arrived whole at
//! the router's edge under that edge's bounds) or copied as it is read (an upload);
//! the answer read as it comes.
//!
//! Invariant: every wait is bounded: the connect by `CONNECT_TIMEOUT`, a whole answer by
//! the caller's deadline, and a proxied one also by whether it is still wanted (an
//! agent cut off mid-answer ends the request as soon as it is marked down).

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::engine::http::{self as wire, BodyFraming, ChunkedReader};

/// How long a connection to an agent may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// The largest answer read whole (lists, lookups); proxied answers are never read whole.
const MAX_WHOLE: u64 = 64 * 1024 * 1024;

/// An agent's answer: its head, and its body still to read.
pub struct Answer {
    pub head: wire::Head,
    pub framing: BodyFraming,
    pub reader: BufReader<Bounded>,
}

impl Answer {
    /// The body's bytes as they come: chunked bodies decoded.
    pub fn body(self) -> Box<dyn Read + Send> {
        match self.framing {
            BodyFraming::None => Box::new(io::empty()),
            BodyFraming::ContentLength(length) => Box::new(self.reader.take(length)),
            BodyFraming::Chunked => Box::new(ChunkedReader::new(self.reader)),
            BodyFraming::UntilEof => Box::new(self.reader),
        }
    }

    /// The whole body, up to `MAX_WHOLE`.
    pub fn whole(self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        self.body().take(MAX_WHOLE + 1).read_to_end(&mut body)?;
        if body.len() as u64 > MAX_WHOLE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the agent's answer is too large",
            ));
        }
        Ok(body)
    }
}

/// How often a read from an agent looks whether its answer is still wanted.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Whether an answer is still wanted (its client is there, its agent is up).
pub type Wanted = Box<dyn Fn() -> bool + Send>;

/// A connection to an agent, read before a deadline and while its answer is wanted:
/// an agent that stops answering (cut off, frozen) ends the read by the deadline, or
/// as soon as the router marks it down or the client goes away.
pub struct Bounded {
    stream: TcpStream,
    /// The deadline of the answer, and of the request's writing (a streamed body's
    /// is its own: the client's).
    until: Instant,
    write_until: Instant,
    wanted: Wanted,
}

impl Bounded {
    /// Waits `CHECK_EVERY` at most on `stream`; an error once past `until` or no
    /// longer wanted.
    fn next_wait(&self, until: Instant) -> io::Result<Duration> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the agent did not answer in time",
            ));
        }
        if !(self.wanted)() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the answer is no longer wanted (its client left, or its agent is down)",
            ));
        }
        Ok(left.min(CHECK_EVERY))
    }
}

fn is_wait(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// A request written in pieces, each within `CHECK_EVERY`: an upload to an agent that
/// stopped reading ends as a read would.
impl Write for Bounded {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        loop {
            let wait = self.next_wait(self.write_until)?;
            self.stream.set_write_timeout(Some(wait))?;
            match self.stream.write(&bytes[..bytes.len().min(64 * 1024)]) {
                Err(error) if is_wait(&error) => {}
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Read for Bounded {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            let wait = self.next_wait(self.until)?;
            self.stream.set_read_timeout(Some(wait))?;
            match self.stream.read(buffer) {
                Err(error) if is_wait(&error) => {}
                other => return other,
            }
        }
    }
}

/// Why a request to an agent failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection was made: the request never reached the agent (it may go to
    /// another).
    NotDelivered(io::Error),
    /// The connection broke, or the answer could not be read: the agent may have acted.
    Failed(io::Error),
    /// The body's source failed (the client's body broke off, was too large or too
    /// slow): the agent got a cut request, which it drops.
    BodyBroken(io::Error),
}

/// A request's body.
pub enum Body<'a> {
    None,
    Whole {
        content_type: &'a str,
        bytes: &'a [u8],
    },
    /// Copied to the agent as it is read: with a `Content-Length` when `length` is
    /// known, else chunked; written before `deadline` (the client's, for its body).
    /// Sent with `Expect: 100-continue`: an agent that refuses the request says so
    /// before any of the body goes, and the source is read only once it has agreed.
    Stream {
        content_type: &'a str,
        length: Option<u64>,
        source: &'a mut dyn Read,
        deadline: Instant,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotDelivered(error) => write!(f, "cannot connect: {error}"),
            SendError::Failed(error) => write!(f, "{error}"),
            SendError::BodyBroken(error) => write!(f, "{error}"),
        }
    }
}

/// Sends one request to `address` and reads the answer's head; the answer is read
/// before `until` and while `wanted` says so.
pub fn send(
    address: &str,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: Body<'_>,
    until: Instant,
    wanted: Wanted,
) -> Result<Answer, SendError> {
    // A target made of a body's field must stay one request line.
    if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(SendError::Failed(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refused to send the request target {target:?}"),
        )));
    }
    let stream = connect(address).map_err(SendError::NotDelivered)?;
    exchange(stream, method, target, headers, body, until, wanted)
}

fn exchange(
    stream: TcpStream,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: Body<'_>,
    until: Instant,
    wanted: Wanted,
) -> Result<Answer, SendError> {
    let _ = stream.set_nodelay(true);
    let write_until = match &body {
        Body::Stream { deadline, .. } => (*deadline).min(until),
        _ => until,
    };
    let mut reader = BufReader::with_capacity(
        64 * 1024,
        Bounded {
            stream,
            until,
            write_until,
            wanted,
        },
    );
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match &body {
        Body::None => {}
        Body::Whole {
            content_type,
            bytes,
        } => head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        )),
        Body::Stream {
            content_type,
            length,
            ..
        } => {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nExpect: 100-continue\r\n"
            ));
            match length {
                Some(length) => head.push_str(&format!("Content-Length: {length}\r\n")),
                None => head.push_str("Transfer-Encoding: chunked\r\n"),
            }
        }
    }
    head.push_str("\r\n");
    reader
        .get_mut()
        .write_all(head.as_bytes())
        .map_err(SendError::Failed)?;
    let written = match body {
        Body::None => Ok(()),
        Body::Whole { bytes, .. } => reader.get_mut().write_all(bytes),
        Body::Stream { length, source, .. } => {
            // The agent's go-ahead, or its refusal (the answer: no body goes); waited
            // for by the body's deadline. Other interim answers are passed over.
            let until = std::mem::replace(&mut reader.get_mut().until, write_until);
            loop {
                let interim = wire::read_head(&mut reader).map_err(SendError::Failed)?;
                match interim.status {
                    100 => break,
                    102..=199 => {}
                    _ => return answer_of(method, interim, reader),
                }
            }
            reader.get_mut().until = until;
            match copy_body(source, reader.get_mut(), length.is_none()) {
                Ok(()) => Ok(()),
                Err(Broken::Source(error)) => return Err(SendError::BodyBroken(error)),
                Err(Broken::Agent(error)) => Err(error),
            }
        }
    };
    // An agent that stopped reading may have answered already (a refusal before the
    // body): its answer is the answer, if it comes at once. Interim answers (1xx) are
    // passed over.
    if written.is_err() {
        let bounded = reader.get_mut();
        bounded.until = bounded.until.min(Instant::now() + EARLY_ANSWER_WAIT);
    }
    let mut head = match (wire::read_head(&mut reader), written) {
        (Ok(head), _) => head,
        (Err(_), Err(error)) | (Err(error), Ok(())) => return Err(SendError::Failed(error)),
    };
    while (100..200).contains(&head.status) && head.status != 101 {
        head = wire::read_head(&mut reader).map_err(SendError::Failed)?;
    }
    answer_of(method, head, reader)
}

/// A final answer: a status of 200 to 599 (one that switches protocols, or makes no
/// sense, is the agent's failure: it is never passed on).
fn answer_of(
    method: &str,
    head: wire::Head,
    reader: BufReader<Bounded>,
) -> Result<Answer, SendError> {
    if !(200..=599).contains(&head.status) {
        return Err(SendError::Failed(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the agent answered with status {}", head.status),
        )));
    }
    let framing = wire::body_framing(method, &head).map_err(SendError::Failed)?;
    Ok(Answer {
        head,
        framing,
        reader,
    })
}

/// How long an agent that stopped reading a request's body is given to have answered.
const EARLY_ANSWER_WAIT: Duration = Duration::from_millis(500);

/// Why a streamed body did not get through.
enum Broken {
    /// Reading it failed: the request is cut off and the agent gets nothing more.
    Source(io::Error),
    /// Writing it failed.
    Agent(io::Error),
}

/// Copies `source` to the agent as it is read, chunked if `chunked`. A source that
/// fails ends it (the agent sees a cut body and drops it); an agent that stops reading
/// ends it too, and is then asked for its answer.
fn copy_body(source: &mut dyn Read, agent: &mut Bounded, chunked: bool) -> Result<(), Broken> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let count = loop {
            match source.read(&mut buffer) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                other => break other.map_err(Broken::Source)?,
            }
        };
        let written = match (count, chunked) {
            (0, true) => agent.write_all(b"0\r\n\r\n"),
            (0, false) => Ok(()),
            (count, true) => agent
                .write_all(format!("{count:x}\r\n").as_bytes())
                .and_then(|()| agent.write_all(&buffer[..count]))
                .and_then(|()| agent.write_all(b"\r\n")),
            (count, false) => agent.write_all(&buffer[..count]),
        };
        match written {
            // The rest of the body stays unread: the agent will not read it either.
            Err(error) => return Err(Broken::Agent(error)),
            Ok(()) if count == 0 => return agent.flush().map_err(Broken::Agent),
            Ok(()) => {}
        }
    }
}

/// A `GET` read whole within `timeout` in all: status and body.
pub fn get(
    address: &str,
    target: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), SendError> {
    let until = Instant::now() + timeout;
    let answer = send(
        address,
        "GET",
        target,
        headers,
        Body::None,
        until,
        Box::new(|| true),
    )?;
    let status = answer.head.status;
    Ok((status, answer.whole().map_err(SendError::Failed)?))
}

fn connect(address: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    for resolved in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&resolved, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = error,
        }
    }
    Err(last)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Long enough for an agent to seem to have stopped (for a test bounded by less).
    const HOLD: Duration = Duration::from_secs(3);

    /// An agent that reads a request's head, then answers `script` (after `read`
    /// bytes of its body, if any), then holds the connection for `hold` and closes it.
    fn fake_agent(script: Vec<&'static [u8]>, read: usize, hold: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let agent = std::thread::Builder::new().name("fake-agent".into());
        agent
            .spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let mut writer = stream;
                for (index, piece) in script.iter().enumerate() {
                    writer.write_all(piece).unwrap();
                    if index == 0 && read > 0 {
                        let mut body = vec![0u8; read];
                        let _ = reader.read_exact(&mut body);
                    }
                }
                std::thread::sleep(hold);
            })
            .unwrap();
        address
    }

    use std::io::BufRead;

    /// What `send` makes of a `GET` that an agent answers with `answer` (then closes).
    pub(crate) fn answer_to_get(answer: &'static [u8]) -> Result<Answer, SendError> {
        send(
            &fake_agent(vec![answer], 0, Duration::ZERO),
            "GET",
            "/x",
            &[],
            Body::None,
            Instant::now() + Duration::from_secs(5),
            Box::new(|| true),
        )
    }

    fn stream_to(
        address: &str,
        source: &mut dyn Read,
        deadline: Duration,
    ) -> Result<Answer, SendError> {
        send(
            address,
            "PUT",
            "/x",
            &[],
            Body::Stream {
                content_type: "application/octet-stream",
                length: Some(1 << 30),
                source,
                deadline: Instant::now() + deadline,
            },
            Instant::now() + Duration::from_secs(5),
            Box::new(|| true),
        )
    }

    /// A source that counts what was read of it.
    struct Endless(u64);

    impl Read for Endless {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            self.0 += buffer.len() as u64;
            buffer.fill(b'x');
            Ok(buffer.len())
        }
    }

    #[test]
    fn an_agent_that_refuses_before_the_body_gets_none_of_it() {
        let address = fake_agent(
            vec![b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\n{}"],
            0,
            HOLD,
        );
        let mut source = Endless(0);
        let answer = stream_to(&address, &mut source, Duration::from_secs(5)).unwrap();
        assert_eq!(answer.head.status, 413);
        assert_eq!(source.0, 0, "the body was read");
    }

    #[test]
    fn a_final_answer_outside_200_to_599_is_a_failure() {
        for answer in [
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nGARBAGE"[..],
            &b"HTTP/1.1 099 Odd\r\n\r\n"[..],
        ] {
            let sent = answer_to_get(answer);
            assert!(
                matches!(sent, Err(SendError::Failed(_))),
                "{:?}",
                sent.err()
            );
        }
    }

    #[test]
    fn interim_answers_are_passed_over() {
        let address = fake_agent(
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            ],
            10,
            HOLD,
        );
        let mut source = Read::take(Endless(0), 10);
        let answer = send(
            &address,
            "PUT",
            "/x",
            &[],
            Body::Stream {
                content_type: "application/octet-stream",
                length: Some(10),
                source: &mut source,
                deadline: Instant::now() + Duration::from_secs(5),
            },
            Instant::now() + Duration::from_secs(5),
            Box::new(|| true),
        )
        .unwrap();
        assert_eq!(answer.head.status, 201);
    }

    #[test]
    fn an_agent_that_stops_reading_is_given_up_on_by_the_bodys_deadline() {
        let address = fake_agent(vec![b"HTTP/1.1 100 Continue\r\n\r\n"], 0, HOLD);
        let started = Instant::now();
        let mut source = Endless(0);
        let sent = stream_to(&address, &mut source, Duration::from_millis(500));
        assert!(
            matches!(sent, Err(SendError::Failed(_))),
            "{:?}",
            sent.err()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
