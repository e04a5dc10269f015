//! The HTTP/1.1 edge: reading a request head and body from a client connection under
//! fixed bounds, and writing answers. Parsing is `httparse`; framing, limits and
//! deadlines are ours.
//!
//! Invariants: no number a client sends sizes a buffer (a declared `Content-Length` is
//! compared with the route's limit, never allocated); the request line and each header
//! line are at most `Limits::max_line` bytes, a head at most `max_head` bytes and
//! `max_headers` headers; every read has a deadline (idle between requests, head, body);
//! a body is read only after the caller has decided to read it, so an answer never
//! waits for a body it will not use; request smuggling shapes (both `Content-Length` and
//! `Transfer-Encoding`, two different lengths, an unknown coding) are refused.
//!
//! The parsing functions (`parse_head`, `Chunked::feed`) are pure and take bytes, so
//! unit tests and fuzzers drive them without a socket.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The bounds of one connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The request line, and each header line, with its CRLF.
    pub max_line: usize,
    /// The whole head.
    pub max_head: usize,
    pub max_headers: usize,
    /// From a request's first byte to the end of its head.
    pub head_timeout: Duration,
    /// How long a kept-alive connection may wait for the next request's first byte.
    pub idle_timeout: Duration,
    /// From the end of the head to the end of the body.
    pub body_timeout: Duration,
    /// Bound on each write to the client.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_line: 8 * 1024,
            max_head: 64 * 1024,
            max_headers: 100,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no `Content-Length`, no `Transfer-Encoding`), or a length of zero.
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head. Header names are kept as sent; lookups ignore case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The request target (path and query), valid UTF-8.
    pub target: String,
    /// HTTP/1.0 (no chunked answers, no keep-alive unless asked for).
    pub http10: bool,
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
    /// Whether the client may send another request on this connection.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for our go-ahead before its body.
    pub expect_continue: bool,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Why a head could not be read. Each variant maps to an answer (or to a silent close).
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The connection ended, or stayed idle, before a request began: close quietly.
    Closed,
    /// A request began but its head did not arrive in time: 408, then close.
    TimedOut,
    /// 414: the request line is longer than `max_line`.
    UriTooLong(usize),
    /// 431: a header line, the head, or the header count is over its bound.
    HeadersTooLarge(String),
    /// 400: not HTTP, bad UTF-8, or a framing we refuse.
    Bad(String),
    /// 501: a transfer coding other than chunked.
    NotImplemented(String),
}

impl From<HeadError> for super::response::ApiError {
    fn from(error: HeadError) -> Self {
        use super::response::ApiError;
        match error {
            // Never answered (the caller closes quietly); mapped for completeness.
            HeadError::Closed => ApiError::RequestTimeout("head"),
            HeadError::TimedOut => ApiError::RequestTimeout("head"),
            HeadError::UriTooLong(limit) => ApiError::UriTooLong(limit),
            HeadError::HeadersTooLarge(message) => ApiError::HeadersTooLarge(message),
            HeadError::Bad(message) => ApiError::BadBody(message),
            HeadError::NotImplemented(message) => ApiError::NotImplemented(message),
        }
    }
}

/// Parses a complete head from the start of `bytes`: `Ok(None)` while more bytes are
/// needed, else the head and how many bytes it took.
pub fn parse_head(bytes: &[u8], limits: &Limits) -> Result<Option<(Head, usize)>, HeadError> {
    check_lines(bytes, limits)?;
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => {
            if bytes.len() >= limits.max_head {
                return Err(HeadError::HeadersTooLarge(format!(
                    "Request head is larger than the {} byte limit",
                    limits.max_head
                )));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::HeadersTooLarge(format!(
                "Request has more than {} headers",
                limits.max_headers
            )))
        }
        Err(error) => return Err(HeadError::Bad(format!("Malformed HTTP request: {error}"))),
    };
    if length > limits.max_head {
        return Err(HeadError::HeadersTooLarge(format!(
            "Request head is larger than the {} byte limit",
            limits.max_head
        )));
    }
    let method = request.method.unwrap_or_default().to_string();
    let target = request.path.unwrap_or_default().to_string();
    if !target.starts_with('/') {
        return Err(HeadError::Bad(format!(
            "Request target must be a path starting with '/', not '{target}'"
        )));
    }
    let http10 = request.version == Some(0);
    let mut fields = Vec::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| HeadError::Bad(format!("Header '{}' is not valid UTF-8", header.name)))?;
        fields.push((header.name.to_string(), value.trim().to_string()));
    }
    let framing = framing_of(&fields, http10)?;
    let connection_has = |token: &str| {
        fields
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, value)| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    };
    let keep_alive = if http10 {
        connection_has("keep-alive")
    } else {
        !connection_has("close")
    };
    let expect_continue = fields.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue")
    });
    let head = Head {
        method,
        target,
        http10,
        headers: fields,
        framing,
        keep_alive,
        expect_continue,
    };
    Ok(Some((head, length)))
}

/// Refuses an over-long line before the head is complete, so that a client cannot make
/// us buffer a whole head's worth of one line: the first line (414) and every header
/// line (431), including the one still arriving.
fn check_lines(bytes: &[u8], limits: &Limits) -> Result<(), HeadError> {
    scan_lines(bytes, limits, &mut LineScan::default())
}

/// How far the line check of a head has gone, so that a head arriving in many reads is
/// scanned once, not once per read.
#[derive(Debug, Default, Clone, Copy)]
struct LineScan {
    /// Where the line being read starts.
    line_start: usize,
    /// Up to here the line being read has no line end.
    scanned: usize,
    /// The request line is behind us (blank lines before it are skipped).
    past_first: bool,
    /// The blank line that ends the head was seen.
    ended: bool,
}

/// Checks the lines of `bytes` from where `scan` stopped; see `check_lines`.
fn scan_lines(bytes: &[u8], limits: &Limits, scan: &mut LineScan) -> Result<(), HeadError> {
    let too_long = |past_first: bool| {
        if past_first {
            HeadError::HeadersTooLarge(format!(
                "A header line is longer than the {} byte limit",
                limits.max_line
            ))
        } else {
            HeadError::UriTooLong(limits.max_line)
        }
    };
    while !scan.ended {
        let Some(offset) = bytes[scan.scanned..].iter().position(|&b| b == b'\n') else {
            scan.scanned = bytes.len();
            if bytes.len() - scan.line_start > limits.max_line {
                return Err(too_long(scan.past_first));
            }
            return Ok(());
        };
        let end = scan.scanned + offset;
        if end + 1 - scan.line_start > limits.max_line {
            return Err(too_long(scan.past_first));
        }
        // An empty line ends the head: what follows is body or the next request.
        let blank = end == scan.line_start
            || (end == scan.line_start + 1 && bytes[scan.line_start] == b'\r');
        scan.line_start = end + 1;
        scan.scanned = end + 1;
        if !blank {
            scan.past_first = true;
        } else if scan.past_first {
            scan.ended = true;
        }
    }
    Ok(())
}

/// How the body is framed (RFC 9112 section 6), refusing the ambiguous shapes that
/// make request smuggling possible.
fn framing_of(fields: &[(String, String)], http10: bool) -> Result<Framing, HeadError> {
    let mut length: Option<u64> = None;
    let mut codings: Option<Vec<String>> = None;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case("content-length") {
            for item in value.split(',') {
                let item = item.trim();
                if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HeadError::Bad(format!("Invalid Content-Length '{value}'")));
                }
                // Twenty digits or more is far over any limit, but well formed: saturate.
                let parsed = item.parse::<u64>().unwrap_or(u64::MAX);
                if length.is_some_and(|seen| seen != parsed) {
                    return Err(HeadError::Bad("Conflicting Content-Length headers".into()));
                }
                length = Some(parsed);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Any Transfer-Encoding field counts, an empty one too: a proxy in front of
            // us may read it differently, so it never falls back to Content-Length.
            codings.get_or_insert_with(Vec::new).extend(
                value
                    .split(',')
                    .map(|coding| coding.trim().to_ascii_lowercase())
                    .filter(|coding| !coding.is_empty()),
            );
        }
    }
    if let Some(codings) = codings {
        if http10 {
            return Err(HeadError::Bad(
                "Transfer-Encoding is not allowed in an HTTP/1.0 request".into(),
            ));
        }
        if length.is_some() {
            return Err(HeadError::Bad(
                "A request must not have both Content-Length and Transfer-Encoding".into(),
            ));
        }
        if codings.is_empty() {
            return Err(HeadError::Bad("Empty Transfer-Encoding".into()));
        }
        if codings != ["chunked"] {
            return Err(HeadError::NotImplemented(format!(
                "Transfer-Encoding '{}' is not supported: use chunked or Content-Length",
                codings.join(", ")
            )));
        }
        return Ok(Framing::Chunked);
    }
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(length) => Framing::Length(length),
    })
}

/// An incremental decoder of a chunked body with a bound on the decoded size; chunk
/// extensions and trailers are read and dropped.
#[derive(Debug)]
pub struct Chunked {
    state: ChunkState,
    limit: u64,
    /// The body decoded so far (a streaming reader takes it as it goes).
    pub body: Vec<u8>,
    /// How many bytes of body were decoded in all (what the limit bounds).
    decoded: u64,
    /// The size line or trailer line being read.
    line: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data: how many of its bytes were seen.
    DataEnd(u8),
    Trailer,
    Done,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ChunkError {
    TooLarge,
    Bad(String),
}

/// A chunk-size line or trailer line longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

impl Chunked {
    pub fn new(limit: u64) -> Chunked {
        Chunked {
            state: ChunkState::Size,
            limit,
            body: Vec::new(),
            decoded: 0,
            line: Vec::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Takes bytes; returns how many it used (fewer than given only once done: the rest
    /// belongs to the next request).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut used = 0;
        while used < input.len() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Size | ChunkState::Trailer => {
                    let byte = input[used];
                    used += 1;
                    if byte != b'\n' {
                        if self.line.len() >= MAX_CHUNK_LINE {
                            return Err(ChunkError::Bad("chunk line too long".into()));
                        }
                        self.line.push(byte);
                        continue;
                    }
                    let mut line = std::mem::take(&mut self.line);
                    // CRLF only: a bare LF is how two parsers come to disagree.
                    if line.pop() != Some(b'\r') {
                        return Err(ChunkError::Bad("chunk line not ended by CRLF".into()));
                    }
                    if self.state == ChunkState::Trailer {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                        }
                        continue;
                    }
                    // Hex digits only; blanks only between them and an extension.
                    let (size_text, extension) = match line.iter().position(|&b| b == b';') {
                        Some(at) => (&line[..at], true),
                        None => (&line[..], false),
                    };
                    let size_text = std::str::from_utf8(size_text)
                        .map_err(|_| ChunkError::Bad("chunk size is not hex".into()))?;
                    let size_text = if extension {
                        size_text.trim_end_matches([' ', '\t'])
                    } else {
                        size_text
                    };
                    if size_text.is_empty()
                        || size_text.len() > 15
                        || !size_text.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        return Err(ChunkError::Bad(format!(
                            "invalid chunk size '{}'",
                            size_text.chars().take(32).collect::<String>()
                        )));
                    }
                    let size = u64::from_str_radix(size_text, 16)
                        .map_err(|_| ChunkError::Bad("chunk size is not hex".into()))?;
                    if size == 0 {
                        self.state = ChunkState::Trailer;
                    } else if self.decoded.saturating_add(size) > self.limit {
                        return Err(ChunkError::TooLarge);
                    } else {
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(left) => {
                    let take = (input.len() - used).min(left.min(usize::MAX as u64) as usize);
                    self.body.extend_from_slice(&input[used..used + take]);
                    self.decoded += take as u64;
                    used += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd(0)
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd(seen) => {
                    let byte = input[used];
                    used += 1;
                    self.state = match (seen, byte) {
                        (0, b'\r') => ChunkState::DataEnd(1),
                        (1, b'\n') => ChunkState::Size,
                        _ => return Err(ChunkError::Bad("chunk data not followed by CRLF".into())),
                    };
                }
            }
        }
        Ok(used)
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Over the route's limit (413).
    TooLarge,
    /// Malformed chunked framing (400).
    Bad(String),
    /// The body did not arrive in time (408).
    TimedOut,
    /// The client went away.
    Closed,
    /// The server is shutting down (503).
    Stopped,
    /// The bodies arriving at once would hold more memory than the server allows (503).
    OverBudget,
}

/// How often a read waiting on a client checks whether the server is stopping.
const STOP_CHECK: Duration = Duration::from_millis(250);

/// A client connection: the socket and what was read past the last request.
pub struct Connection {
    pub stream: TcpStream,
    /// Bytes already read that belong to the next request (pipelining).
    buffer: Vec<u8>,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Connection {
        Connection {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Reads the next request's head. Waits up to `idle_timeout` for its first byte,
    /// then up to `head_timeout` for the rest, checking `stop` in between.
    pub fn read_head(
        &mut self,
        limits: &Limits,
        stop: &dyn Fn() -> bool,
    ) -> Result<Head, HeadError> {
        let idle_until = Instant::now() + limits.idle_timeout;
        let mut head_until: Option<Instant> = None;
        let mut scan = LineScan::default();
        loop {
            if !self.buffer.is_empty() {
                let until = *head_until.get_or_insert_with(|| Instant::now() + limits.head_timeout);
                // Parsed only once the head can be complete (or is too large): a head
                // sent a byte at a time costs a scan of each byte, not a parse per byte.
                scan_lines(&self.buffer, limits, &mut scan)?;
                if scan.ended || self.buffer.len() >= limits.max_head {
                    if let Some((head, length)) = parse_head(&self.buffer, limits)? {
                        self.buffer.drain(..length);
                        return Ok(head);
                    }
                }
                if Instant::now() >= until {
                    return Err(HeadError::TimedOut);
                }
            } else if Instant::now() >= idle_until {
                return Err(HeadError::Closed);
            }
            // Shutdown drops a connection between requests and a request whose head is
            // not yet whole alike: neither is waited for.
            if stop() {
                return Err(HeadError::Closed);
            }
            let deadline = head_until.unwrap_or(idle_until);
            // Short slices, so that shutdown is noticed.
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(STOP_CHECK)
                .max(Duration::from_millis(1));
            let _ = self.stream.set_read_timeout(Some(wait));
            let room = (limits.max_head + 1)
                .saturating_sub(self.buffer.len())
                .min(16 * 1024);
            match read_some(&mut self.stream, &mut self.buffer, room.max(1)) {
                Ok(0) => {
                    return Err(if self.buffer.is_empty() {
                        HeadError::Closed
                    } else {
                        HeadError::Bad("Connection closed in the middle of a request head".into())
                    })
                }
                Ok(_) => {}
                Err(error) if is_timeout(&error) => {}
                Err(_) => return Err(HeadError::Closed),
            }
        }
    }

    /// Reads the body the head announced, at most `limit` bytes, within `timeout`;
    /// gives up (`Stopped`) once `stop` turns true.
    pub fn read_body(
        &mut self,
        head: &Head,
        limit: u64,
        timeout: Duration,
        stop: &dyn Fn() -> bool,
        grant: &mut dyn FnMut(u64) -> bool,
    ) -> Result<Vec<u8>, BodyError> {
        let deadline = Instant::now() + timeout;
        match head.framing {
            Framing::Empty => Ok(Vec::new()),
            Framing::Length(length) => {
                if length > limit {
                    return Err(BodyError::TooLarge);
                }
                // `length` is at most `limit`, a bound of ours.
                let length = length as usize;
                let mut body = Vec::new();
                let from_buffer = self.buffer.len().min(length);
                grow(&mut body, from_buffer, length, grant)?;
                body.extend(self.buffer.drain(..from_buffer));
                while body.len() < length {
                    self.wait_until(deadline, stop)?;
                    // Read into the room there is; more room only once it is full, so
                    // a connection holds about what its client sent.
                    grow(&mut body, 1, length, grant)?;
                    let room = (body.capacity() - body.len())
                        .min(length - body.len())
                        .min(64 * 1024);
                    match read_some(&mut self.stream, &mut body, room) {
                        Ok(0) => return Err(BodyError::Closed),
                        Ok(_) => {}
                        Err(error) if is_timeout(&error) => {}
                        Err(_) => return Err(BodyError::Closed),
                    }
                }
                Ok(body)
            }
            Framing::Chunked => {
                let mut decoder = Chunked::new(limit);
                let mut pending = std::mem::take(&mut self.buffer);
                loop {
                    // What the decoder may hold once it has taken `pending`: its body
                    // grows by doubling, so twice what it has and is given.
                    let may_hold = 2 * (decoder.body.len() + pending.len()) as u64;
                    if !grant(may_hold.min(limit.saturating_mul(2))) {
                        return Err(BodyError::OverBudget);
                    }
                    let used = decoder.feed(&pending).map_err(|error| match error {
                        ChunkError::TooLarge => BodyError::TooLarge,
                        ChunkError::Bad(message) => BodyError::Bad(message),
                    })?;
                    if decoder.is_done() {
                        self.buffer = pending.split_off(used);
                        return Ok(decoder.body);
                    }
                    pending.clear();
                    self.wait_until(deadline, stop)?;
                    match read_some(&mut self.stream, &mut pending, 64 * 1024) {
                        Ok(0) => return Err(BodyError::Closed),
                        Ok(_) => {}
                        Err(error) if is_timeout(&error) => {}
                        Err(_) => return Err(BodyError::Closed),
                    }
                }
            }
        }
    }

    /// Sets the next read's timeout: the time left before `deadline`, in slices short
    /// enough to notice `stop`.
    fn wait_until(&mut self, deadline: Instant, stop: &dyn Fn() -> bool) -> Result<(), BodyError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BodyError::TimedOut);
        }
        if stop() {
            return Err(BodyError::Stopped);
        }
        let _ = self.stream.set_read_timeout(Some(left.min(STOP_CHECK)));
        Ok(())
    }

    /// Closes after an answer that left a body unread: stops sending, then reads and
    /// drops what the client still sends for a short, bounded while, so that the kernel
    /// does not answer the unread bytes with a reset that destroys our answer before the
    /// client reads it. The time is the bound (through an 8 KiB scratch buffer, so no
    /// memory is at stake); the byte cap only stops a fast sender early, and sits above
    /// any body a client might still be writing when it reads our answer (a client that
    /// writes its whole body first, as most do without `Expect`, must get to the end).
    pub fn linger_close(mut self, linger: Duration) {
        let _ = self.stream.flush();
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let until = Instant::now() + linger;
        let mut scratch = [0u8; 8192];
        let mut drained = 0usize;
        while drained < 64 * 1024 * 1024 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(count) => drained += count,
            }
        }
    }
}

/// A request's body read as it arrives, for a router that passes it on (an upload):
/// the body's bytes (chunked framing decoded), under the same bounds as `read_body`
/// (at most `limit` bytes, by `deadline`, until `stop`), through a buffer of at most
/// 64 KiB whatever the body's size. An `Expect: 100-continue` client gets its go-ahead
/// at the first read: only once the body is wanted.
///
/// A read that fails keeps why in `failure` (the answer the client gets).
pub struct BodyReader<'a> {
    connection: &'a mut Connection,
    /// Length-framed: the bytes still to come; chunked: the decoder.
    left: u64,
    chunked: Option<Chunked>,
    /// Raw bytes read and not yet given out (decoded first, if chunked).
    raw: Vec<u8>,
    deadline: Instant,
    stop: &'a dyn Fn() -> bool,
    go_ahead: bool,
    pub failure: Option<BodyError>,
}

/// The most a `BodyReader` holds at once: one read's raw bytes, decoded.
pub const BODY_READER_BYTES: u64 = 2 * 64 * 1024;

impl<'a> BodyReader<'a> {
    pub fn new(
        connection: &'a mut Connection,
        head: &Head,
        limit: u64,
        timeout: Duration,
        stop: &'a dyn Fn() -> bool,
    ) -> BodyReader<'a> {
        let (left, chunked) = match head.framing {
            Framing::Empty => (0, None),
            Framing::Length(length) => (length, None),
            Framing::Chunked => (0, Some(Chunked::new(limit))),
        };
        let failure = matches!(head.framing, Framing::Length(length) if length > limit)
            .then_some(BodyError::TooLarge);
        BodyReader {
            connection,
            left,
            chunked,
            raw: Vec::new(),
            deadline: Instant::now() + timeout,
            stop,
            go_ahead: head.expect_continue && head.framing != Framing::Empty && !head.http10,
            failure,
        }
    }

    /// When the whole body must have arrived.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The body's length when the head gave it (else it is sent on chunked).
    pub fn length(&self) -> Option<u64> {
        self.chunked.is_none().then_some(self.left)
    }

    fn fail(&mut self, error: BodyError) -> io::Error {
        let text = format!("the request's body: {error:?}");
        self.failure = Some(error);
        io::Error::other(text)
    }

    /// Reads at most `room` more raw bytes of the connection into `raw`.
    fn fill_raw(&mut self, room: usize) -> io::Result<()> {
        let mut raw = std::mem::take(&mut self.raw);
        let filled = self.fill(&mut raw, room);
        self.raw = raw;
        filled
    }

    /// Reads more of the connection into `into` (what was read past the head first).
    fn fill(&mut self, into: &mut Vec<u8>, room: usize) -> io::Result<()> {
        if !self.connection.buffer.is_empty() {
            let take = self.connection.buffer.len().min(room);
            into.extend(self.connection.buffer.drain(..take));
            return Ok(());
        }
        if std::mem::take(&mut self.go_ahead)
            && self
                .connection
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .is_err()
        {
            return Err(self.fail(BodyError::Closed));
        }
        loop {
            if let Err(error) = self.connection.wait_until(self.deadline, self.stop) {
                return Err(self.fail(error));
            }
            match read_some(&mut self.connection.stream, into, room) {
                Ok(0) => return Err(self.fail(BodyError::Closed)),
                Ok(_) => return Ok(()),
                Err(error) if is_timeout(&error) => {}
                Err(_) => return Err(self.fail(BodyError::Closed)),
            }
        }
    }
}

impl Read for BodyReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the request's body broke off"));
        }
        let room = buffer.len().min(64 * 1024);
        let Some(mut decoder) = self.chunked.take() else {
            if self.left == 0 || room == 0 {
                return Ok(0);
            }
            if self.raw.is_empty() {
                self.fill_raw(room.min(self.left.min(usize::MAX as u64) as usize))?;
            }
            let count = self.raw.len().min(buffer.len());
            buffer[..count].copy_from_slice(&self.raw[..count]);
            self.raw.drain(..count);
            self.left -= count as u64;
            return Ok(count);
        };
        let result = loop {
            if !decoder.body.is_empty() {
                let count = decoder.body.len().min(buffer.len());
                buffer[..count].copy_from_slice(&decoder.body[..count]);
                decoder.body.drain(..count);
                break Ok(count);
            }
            if decoder.is_done() || room == 0 {
                break Ok(0);
            }
            if self.raw.is_empty() {
                if let Err(error) = self.fill_raw(room) {
                    break Err(error);
                }
            }
            match decoder.feed(&self.raw) {
                Ok(used) => {
                    self.raw.drain(..used);
                    if decoder.is_done() {
                        // What follows the body is a next request's: it stays unread
                        // (the connection closes after this one).
                        self.raw.clear();
                    }
                }
                Err(ChunkError::TooLarge) => break Err(self.fail(BodyError::TooLarge)),
                Err(ChunkError::Bad(message)) => break Err(self.fail(BodyError::Bad(message))),
            }
        };
        self.chunked = Some(decoder);
        result
    }
}

/// Makes room in `body` for `more` bytes, doubling its capacity (up to `length`) so
/// that a body costs a few reallocations, each granted (`grant`) before it is made.
fn grow(
    body: &mut Vec<u8>,
    more: usize,
    length: usize,
    grant: &mut dyn FnMut(u64) -> bool,
) -> Result<(), BodyError> {
    let needed = body.len() + more;
    if needed <= body.capacity() {
        return Ok(());
    }
    let capacity = needed.max(body.capacity() * 2).max(4096).min(length);
    if !grant(capacity as u64) {
        return Err(BodyError::OverBudget);
    }
    body.reserve_exact(capacity - body.len());
    Ok(())
}

/// Reads at most `room` more bytes onto the end of `buffer`.
fn read_some(stream: &mut TcpStream, buffer: &mut Vec<u8>, room: usize) -> io::Result<usize> {
    let start = buffer.len();
    buffer.resize(start + room, 0);
    let result = stream.read(&mut buffer[start..]);
    let count = *result.as_ref().unwrap_or(&0);
    buffer.truncate(start + count);
    result
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The reason phrase of every status we send.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// One answer with a `Content-Length` body: the head, then the body as its writer
/// writes it, through one buffer (the body is never held whole).
pub struct Answer<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub headers: &'a [(&'a str, String)],
    /// The body's length: what its writer will write.
    pub length: u64,
    /// A HEAD request: the head says the length, no body follows.
    pub head_only: bool,
    /// Say `Connection: close` (the connection ends after this answer).
    pub close: bool,
    /// Say `Connection: keep-alive` (an HTTP/1.0 client that asked to keep it).
    pub keep_alive_10: bool,
}

/// A writer to a client that must keep taking bytes: past `grace`, at least
/// `MIN_WRITE_RATE` bytes a second on average, else the write fails (`TimedOut`). A
/// client reading a large answer slowly cannot hold its memory for long.
pub struct PacedWriter<'a> {
    inner: &'a mut dyn Write,
    started: Instant,
    grace: Duration,
    written: u64,
}

/// The slowest a client may take an answer, on average, once the grace is over.
pub const MIN_WRITE_RATE: u64 = 128 * 1024;

impl<'a> PacedWriter<'a> {
    pub fn new(inner: &'a mut dyn Write, grace: Duration) -> PacedWriter<'a> {
        PacedWriter {
            inner,
            started: Instant::now(),
            grace,
            written: 0,
        }
    }

    fn check(&self) -> io::Result<()> {
        let allowed =
            self.grace + Duration::from_secs_f64(self.written as f64 / MIN_WRITE_RATE as f64);
        if self.started.elapsed() > allowed {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client takes the answer too slowly",
            ));
        }
        Ok(())
    }
}

impl Write for PacedWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.check()?;
        let count = self.inner.write(bytes)?;
        self.written += count as u64;
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.inner.flush()
    }
}

/// How much of an answer goes out per write at most.
const ANSWER_BUFFER: usize = 64 * 1024;

impl Answer<'_> {
    /// The status line and headers, through the blank line.
    pub fn head(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.length
        )
        .into_bytes();
        for (name, value) in self.headers {
            // Header values are ours; a stray line break would still be refused here.
            if !value.contains(['\r', '\n']) {
                out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.keep_alive_10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Writes the head, then (unless HEAD) the body `write_body` writes. A body that
    /// does not come to `length` bytes is an error: the framing is broken, and the
    /// connection must not be used again.
    pub fn write_to(
        &self,
        writer: &mut dyn Write,
        write_body: &dyn Fn(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let head = self.head();
        let size = (head.len() as u64 + self.length).min(ANSWER_BUFFER as u64) as usize;
        let mut out = io::BufWriter::with_capacity(size, writer);
        out.write_all(&head)?;
        if !self.head_only {
            let mut counted = Counted {
                inner: &mut out,
                count: 0,
            };
            write_body(&mut counted)?;
            if counted.count != self.length {
                return Err(io::Error::other(format!(
                    "an answer body of {} bytes where {} were announced",
                    counted.count, self.length
                )));
            }
        }
        out.flush()
    }
}

/// Counts what goes through it.
struct Counted<'w> {
    inner: &'w mut dyn Write,
    count: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.count += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn parse(bytes: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
        parse_head(bytes, &limits())
    }

    #[test]
    fn parses_a_complete_head_and_leaves_the_rest() {
        let bytes =
            b"POST /run?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-API-Key: k\r\n\r\n{}GET";
        let (head, length) = parse(bytes).unwrap().unwrap();
        assert_eq!(length, bytes.len() - 5);
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/run?x=1");
        assert!(!head.http10);
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
        assert_eq!(head.framing, Framing::Length(2));
        assert_eq!(head.header("x-api-key"), Some("k"));
    }

    #[test]
    fn waits_for_the_rest_of_a_head() {
        assert_eq!(parse(b"GET /health HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(parse(b"GET /hea"), Ok(None));
        assert_eq!(parse(b""), Ok(None));
    }

    #[test]
    fn http10_closes_unless_asked_to_keep_alive() {
        let (head, _) = parse(b"GET /health HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(head.http10 && !head.keep_alive);
        let (head, _) = parse(b"GET /health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.keep_alive);
        let (head, _) = parse(b"GET /health HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!head.keep_alive);
    }

    #[test]
    fn a_huge_declared_length_is_a_number_not_an_allocation() {
        let (head, _) = parse(b"POST /run HTTP/1.1\r\nContent-Length: 4611686018427387904\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Length(4611686018427387904));
        let (head, _) =
            parse(b"POST /run HTTP/1.1\r\nContent-Length: 999999999999999999999999999999\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(head.framing, Framing::Length(u64::MAX));
    }

    #[test]
    fn refuses_smuggling_shapes() {
        let cases: [&[u8]; 10] = [
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            // An empty Transfer-Encoding still is one: never read as Content-Length.
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding:\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: ,\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n",
            // HTTP/1.0 has no transfer codings.
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for bytes in cases {
            assert!(
                matches!(parse(bytes), Err(HeadError::Bad(_))),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(HeadError::NotImplemented(_))
        ));
        let (head, _) = parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Length(5));
        let (head, _) = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
    }

    #[test]
    fn bounds_lines_heads_and_header_counts() {
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
        assert_eq!(
            parse(long_target.as_bytes()),
            Err(HeadError::UriTooLong(8192))
        );
        // Refused while still arriving: no end of line yet.
        let partial = format!("GET /{}", "a".repeat(9000));
        assert_eq!(parse(partial.as_bytes()), Err(HeadError::UriTooLong(8192)));
        let long_header = format!("GET / HTTP/1.1\r\nX: {}", "b".repeat(9000));
        assert!(matches!(
            parse(long_header.as_bytes()),
            Err(HeadError::HeadersTooLarge(_))
        ));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for index in 0..101 {
            many.push_str(&format!("X-{index}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(
            parse(many.as_bytes()),
            Err(HeadError::HeadersTooLarge(_))
        ));
        let mut big = String::from("GET / HTTP/1.1\r\n");
        for index in 0..20 {
            big.push_str(&format!("X-{index}: {}\r\n", "c".repeat(4000)));
        }
        assert!(matches!(
            parse(big.as_bytes()),
            Err(HeadError::HeadersTooLarge(_))
        ));
        // A body after the head is not a header line, however long.
        let with_body = format!(
            "POST / HTTP/1.1\r\nContent-Length: 9000\r\n\r\n{}",
            "d".repeat(9000)
        );
        assert!(parse(with_body.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn a_head_scanned_a_byte_at_a_time_ends_where_a_whole_scan_does() {
        let head = b"\r\nGET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\nBODY";
        let mut scan = LineScan::default();
        for length in 1..=head.len() {
            scan_lines(&head[..length], &limits(), &mut scan).unwrap();
            assert_eq!(scan.ended, length >= head.len() - 4, "{length}");
        }
        assert_eq!(scan.line_start, head.len() - 4);
        let long = format!("GET / HTTP/1.1\r\nX: {}", "b".repeat(9000));
        let mut scan = LineScan::default();
        let result = (1..=long.len())
            .map(|length| scan_lines(&long.as_bytes()[..length], &limits(), &mut scan))
            .find(Result::is_err);
        assert!(matches!(result, Some(Err(HeadError::HeadersTooLarge(_)))));
    }

    #[test]
    fn refuses_bad_utf8_and_non_paths() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        assert!(matches!(
            parse(b"GET http://x/ HTTP/1.1\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
    }

    #[test]
    fn expect_continue_is_seen() {
        let (head, _) =
            parse(b"POST /run HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(head.expect_continue);
    }

    /// A connection whose client side sends `pieces`, a few milliseconds apart, and
    /// the head read from it.
    fn connection_sending(pieces: Vec<&'static [u8]>) -> (Connection, Head) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut client = TcpStream::connect(address).unwrap();
            for piece in pieces {
                client.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_secs(2));
        });
        let mut connection = Connection::new(listener.accept().unwrap().0);
        let head = connection.read_head(&limits(), &|| false).unwrap();
        (connection, head)
    }

    fn read_all(reader: &mut BodyReader<'_>) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut buffer = [0u8; 7];
        loop {
            match reader.read(&mut buffer)? {
                0 => return Ok(body),
                count => body.extend_from_slice(&buffer[..count]),
            }
        }
    }

    #[test]
    fn a_body_reader_gives_the_body_exactly_as_it_arrives() {
        // Chunked, split across reads mid-size-line and mid-data, an extension and a
        // trailer, then a pipelined request that is not the body's.
        let (mut connection, head) = connection_sending(vec![
            b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n1",
            b"0;ext=1\r\n, chunked world!\r\n0\r\nTrailer: x\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ]);
        let stop = || false;
        let mut reader =
            BodyReader::new(&mut connection, &head, 1024, Duration::from_secs(5), &stop);
        assert_eq!(reader.length(), None);
        assert_eq!(read_all(&mut reader).unwrap(), b"hello, chunked world!");
        assert!(reader.failure.is_none());

        // Length-framed: exactly its bytes, the rest left alone.
        let (mut connection, head) = connection_sending(vec![
            b"PUT /x HTTP/1.1\r\nContent-Length: 12\r\n\r\nhello",
            b", world!extra",
        ]);
        let mut reader =
            BodyReader::new(&mut connection, &head, 1024, Duration::from_secs(5), &stop);
        assert_eq!(reader.length(), Some(12));
        assert_eq!(read_all(&mut reader).unwrap(), b"hello, world");

        // Past the limit, chunked: the read fails and says why.
        let (mut connection, head) = connection_sending(vec![
            b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n",
            b"8\r\n12345678\r\n0\r\n\r\n",
        ]);
        let mut reader = BodyReader::new(&mut connection, &head, 10, Duration::from_secs(5), &stop);
        assert!(read_all(&mut reader).is_err());
        assert!(matches!(reader.failure, Some(BodyError::TooLarge)));

        // Stalled: a timeout, promptly.
        let (mut connection, head) =
            connection_sending(vec![b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"]);
        let started = Instant::now();
        let mut reader = BodyReader::new(
            &mut connection,
            &head,
            1024,
            Duration::from_millis(300),
            &stop,
        );
        assert!(read_all(&mut reader).is_err());
        assert!(matches!(reader.failure, Some(BodyError::TimedOut)));
        assert!(started.elapsed() < Duration::from_secs(1));

        // Bad framing.
        let (mut connection, head) = connection_sending(vec![
            b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ]);
        let mut reader =
            BodyReader::new(&mut connection, &head, 1024, Duration::from_secs(5), &stop);
        assert!(read_all(&mut reader).is_err());
        assert!(matches!(reader.failure, Some(BodyError::Bad(_))));
    }

    #[test]
    fn decodes_chunked_bodies_fed_a_byte_at_a_time() {
        let wire = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut decoder = Chunked::new(1024);
        let mut used = 0;
        for byte in wire.iter() {
            used += decoder.feed(std::slice::from_ref(byte)).unwrap();
            if decoder.is_done() {
                break;
            }
        }
        assert!(decoder.is_done());
        assert_eq!(used, wire.len() - 4);
        assert_eq!(decoder.body, b"Wikipedia in\r\n\r\nchunks.");

        let mut decoder = Chunked::new(1024);
        let used = decoder.feed(wire).unwrap();
        assert_eq!(&wire[used..], b"NEXT");
        assert_eq!(decoder.body, b"Wikipedia in\r\n\r\nchunks.");
    }

    #[test]
    fn chunked_bodies_are_bounded_and_checked() {
        let mut decoder = Chunked::new(8);
        assert_eq!(decoder.feed(b"9\r\n"), Err(ChunkError::TooLarge));
        let mut decoder = Chunked::new(8);
        assert_eq!(decoder.feed(b"4\r\nabcd\r\n4\r\nabcd\r\n"), Ok(18));
        assert_eq!(decoder.feed(b"1\r\n"), Err(ChunkError::TooLarge));
        let mut decoder = Chunked::new(u64::MAX);
        assert!(matches!(
            decoder.feed(b"ffffffffffffffffff\r\n"),
            Err(ChunkError::Bad(_))
        ));
        let mut decoder = Chunked::new(100);
        assert!(matches!(decoder.feed(b"zz\r\n"), Err(ChunkError::Bad(_))));
        let mut decoder = Chunked::new(100);
        assert!(matches!(decoder.feed(b"2\r\nabX"), Err(ChunkError::Bad(_))));
        let mut decoder = Chunked::new(100);
        assert!(matches!(
            decoder.feed(&[b'1'; MAX_CHUNK_LINE + 1]),
            Err(ChunkError::Bad(_))
        ));
        // Strict shapes: CRLF everywhere, no blanks around a bare size.
        let refused: [&[u8]; 6] = [
            b"2\nab\r\n0\r\n\r\n",
            b"2\r\nab\n0\r\n\r\n",
            b" 2\r\nab\r\n0\r\n\r\n",
            b"2 \r\nab\r\n0\r\n\r\n",
            b"2\r\nab\r\n0\r\n\n",
            b"2\r\nab\r\n0\r\nX: y\n\r\n",
        ];
        for bytes in refused {
            let mut decoder = Chunked::new(100);
            assert!(
                matches!(decoder.feed(bytes), Err(ChunkError::Bad(_))),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // Blanks before an extension are allowed (BWS), and the extension is dropped.
        let mut decoder = Chunked::new(100);
        assert_eq!(decoder.feed(b"2 ;x=1\r\nab\r\n0\r\nX: y\r\n\r\n"), Ok(23));
        assert!(decoder.is_done());
        assert_eq!(decoder.body, b"ab");
    }

    #[test]
    fn a_paced_writer_holds_its_client_to_the_minimum_rate() {
        let mut sink = Vec::new();
        let mut writer = PacedWriter::new(&mut sink, Duration::from_millis(100));
        // Within the grace, anything goes; each byte written buys 1/MIN_WRITE_RATE s.
        writer.write_all(&[0; 13_107]).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        writer.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let error = writer.write_all(b"y").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(sink.len(), 13_108);
    }

    #[test]
    fn answers_are_framed_exactly() {
        let headers = [("Allow", "GET".to_string())];
        let answer = Answer {
            status: 405,
            content_type: "application/json",
            headers: &headers,
            length: 3,
            head_only: false,
            close: true,
            keep_alive_10: false,
        };
        let body = |out: &mut dyn Write| out.write_all(b"{}\n");
        let written = |answer: &Answer<'_>| {
            let mut out = Vec::new();
            answer.write_to(&mut out, &body).map(|()| out)
        };
        assert_eq!(
            written(&answer).unwrap(),
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\n\
              Content-Length: 3\r\nAllow: GET\r\nConnection: close\r\n\r\n{}\n"
        );
        let head = Answer {
            head_only: true,
            close: false,
            status: 200,
            ..answer
        };
        assert_eq!(
            written(&head).unwrap(),
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
              Content-Length: 3\r\nAllow: GET\r\n\r\n"
        );
        let short = Answer {
            length: 4,
            ..answer
        };
        assert!(written(&short).is_err(), "a body shorter than announced");
        // A JSON body: the length said is the length written, newline included.
        let value = serde_json::json!({"data": "\u{1}é", "success": true});
        let json_body = |out: &mut dyn Write| {
            serde_json::to_writer(&mut *out, &value)?;
            out.write_all(b"\n")
        };
        let json = Answer {
            length: 35,
            ..answer
        };
        let mut written = Vec::new();
        json.write_to(&mut written, &json_body).unwrap();
        let expected: &[u8] =
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\n\
              Content-Length: 35\r\nAllow: GET\r\nConnection: close\r\n\r\n\
              {\"data\":\"\\u0001\xc3\xa9\",\"success\":true}\n";
        assert_eq!(written, expected);
    }
}
