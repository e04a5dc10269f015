//! HTTP/1.1 framing for the Docker Engine client: writing a request and reading one
//! response (status line, headers, and a body delimited by Content-Length, chunked
//! transfer coding, or EOF).
//!
//! Invariants: every read is bounded (header block, chunk-size lines, whole bodies), so a
//! misbehaving peer cannot make us allocate without limit; responses that carry no body
//! by definition (HEAD, 1xx, 204, 304) are never read past their headers, whatever their
//! `Content-Length` says; bytes that arrive after the header block of a hijacked
//! response stay in the `BufReader` and belong to the stream.

use std::io::{self, BufRead, Read, Write};

/// Upper bound on the status line plus all header lines of one response.
const MAX_HEAD_BYTES: u64 = 64 * 1024;
/// Upper bound on one chunk-size line (hex digits, extensions, CRLF).
const MAX_CHUNK_LINE_BYTES: u64 = 1024;

/// The status line and headers of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Header names lowercased; values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// How the body of a response is delimited, decided from the request method, the status
/// and the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    ContentLength(u64),
    Chunked,
    UntilEof,
}

pub fn body_framing(request_method: &str, head: &Head) -> Result<BodyFraming, io::Error> {
    if request_method == "HEAD" || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(BodyFraming::None);
    }
    if let Some(coding) = head.header("transfer-encoding") {
        if coding
            .rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        {
            return Ok(BodyFraming::Chunked);
        }
        return Ok(BodyFraming::UntilEof);
    }
    if let Some(length) = head.header("content-length") {
        let length: u64 = length
            .parse()
            .map_err(|_| invalid_data(format!("bad Content-Length '{length}'")))?;
        return Ok(BodyFraming::ContentLength(length));
    }
    Ok(BodyFraming::UntilEof)
}

/// Writes one request. `body` is `(content type, bytes)`.
pub fn write_request(
    writer: &mut impl Write,
    method: &str,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> io::Result<()> {
    let mut head = format!("{method} {path_and_query} HTTP/1.1\r\nHost: docker\r\n");
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match body {
        Some((content_type, bytes)) => {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                bytes.len()
            ));
            // One write for small requests keeps them in one packet; the body of a large
            // upload is written separately rather than copied.
            if bytes.len() <= 16 * 1024 {
                let mut all = head.into_bytes();
                all.extend_from_slice(bytes);
                writer.write_all(&all)?;
            } else {
                writer.write_all(head.as_bytes())?;
                writer.write_all(bytes)?;
            }
        }
        None => {
            head.push_str("\r\n");
            writer.write_all(head.as_bytes())?;
        }
    }
    writer.flush()
}

/// Reads the status line and headers. An EOF before the first byte is reported as
/// `UnexpectedEof` so that callers can tell "the peer closed an idle connection".
pub fn read_head(reader: &mut impl BufRead) -> io::Result<Head> {
    let mut limited = reader.take(MAX_HEAD_BYTES);
    let mut line = Vec::new();
    limited.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = parse_status_line(&line)?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        limited.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(invalid_data(
                "response headers truncated or longer than 64 KiB".into(),
            ));
        }
        let text = trim_line_end(&line);
        if text.is_empty() {
            break;
        }
        let text = std::str::from_utf8(text)
            .map_err(|_| invalid_data("response header is not UTF-8".into()))?;
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| invalid_data(format!("malformed header line '{text}'")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head { status, headers })
}

fn parse_status_line(line: &[u8]) -> io::Result<u16> {
    let text = std::str::from_utf8(trim_line_end(line))
        .map_err(|_| invalid_data("status line is not UTF-8".into()))?;
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(invalid_data(format!("malformed status line '{text}'")));
    }
    code.parse()
        .map_err(|_| invalid_data(format!("malformed status line '{text}'")))
}

/// Reads a whole body with the given framing, refusing bodies over `max_bytes`.
pub fn read_body(
    reader: &mut impl BufRead,
    framing: BodyFraming,
    max_bytes: u64,
) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    match framing {
        BodyFraming::None => {}
        BodyFraming::ContentLength(length) => {
            if length > max_bytes {
                return Err(too_large(max_bytes));
            }
            body.resize(length as usize, 0);
            reader.read_exact(&mut body)?;
        }
        BodyFraming::UntilEof => {
            reader.take(max_bytes + 1).read_to_end(&mut body)?;
            if body.len() as u64 > max_bytes {
                return Err(too_large(max_bytes));
            }
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedReader::new(reader);
            decoder
                .by_ref()
                .take(max_bytes + 1)
                .read_to_end(&mut body)?;
            if body.len() as u64 > max_bytes {
                return Err(too_large(max_bytes));
            }
        }
    }
    Ok(body)
}

/// A `Read` over a chunked body: yields the payload bytes and ends after the last
/// chunk and its trailer. Used both for whole bodies and for endless streams.
pub struct ChunkedReader<R> {
    inner: R,
    remaining_in_chunk: u64,
    finished: bool,
}

impl<R: BufRead> ChunkedReader<R> {
    pub fn new(inner: R) -> ChunkedReader<R> {
        ChunkedReader {
            inner,
            remaining_in_chunk: 0,
            finished: false,
        }
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        (&mut self.inner)
            .take(MAX_CHUNK_LINE_BYTES)
            .read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body truncated",
            ));
        }
        Ok(line)
    }

    /// Reads the next chunk-size line; at the last chunk, consumes the trailer.
    fn start_chunk(&mut self) -> io::Result<()> {
        let line = self.read_line()?;
        let text = std::str::from_utf8(trim_line_end(&line))
            .map_err(|_| invalid_data("chunk size line is not UTF-8".into()))?;
        let size_text = text.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| invalid_data(format!("bad chunk size '{size_text}'")))?;
        if size == 0 {
            loop {
                let trailer = self.read_line()?;
                if trim_line_end(&trailer).is_empty() {
                    break;
                }
            }
            self.finished = true;
        }
        self.remaining_in_chunk = size;
        Ok(())
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.finished && self.remaining_in_chunk == 0 {
            self.start_chunk()?;
        }
        if self.finished {
            return Ok(0);
        }
        let wanted = buf.len().min(self.remaining_in_chunk as usize);
        let read = self.inner.read(&mut buf[..wanted])?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body truncated",
            ));
        }
        self.remaining_in_chunk -= read as u64;
        if self.remaining_in_chunk == 0 {
            let line = self.read_line()?;
            if !trim_line_end(&line).is_empty() {
                return Err(invalid_data("chunk not followed by CRLF".into()));
            }
        }
        Ok(read)
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn too_large(max_bytes: u64) -> io::Error {
    invalid_data(format!("response body larger than {max_bytes} bytes"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::BufReader;

    /// A reader that hands out its data in the given piece sizes, cycling, to prove that
    /// parsing never depends on how the bytes were split across `read()` calls.
    pub(crate) struct Trickle {
        data: Vec<u8>,
        position: usize,
        pieces: Vec<usize>,
        turn: usize,
    }

    impl Trickle {
        pub(crate) fn new(data: &[u8], pieces: &[usize]) -> Trickle {
            Trickle {
                data: data.to_vec(),
                position: 0,
                pieces: pieces.to_vec(),
                turn: 0,
            }
        }
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let piece = self.pieces[self.turn % self.pieces.len()];
            self.turn += 1;
            let end = (self.position + piece.min(buf.len())).min(self.data.len());
            let count = end - self.position;
            buf[..count].copy_from_slice(&self.data[self.position..end]);
            self.position = end;
            Ok(count)
        }
    }

    fn parse(raw: &[u8], method: &str, pieces: &[usize]) -> io::Result<(Head, Vec<u8>)> {
        // A one-byte buffer forces the BufReader to refill at every byte boundary.
        let mut reader = BufReader::with_capacity(1, Trickle::new(raw, pieces));
        let head = read_head(&mut reader)?;
        let framing = body_framing(method, &head)?;
        let body = read_body(&mut reader, framing, 1 << 20)?;
        Ok((head, body))
    }

    #[test]
    fn writes_request_bytes_exactly() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            "POST",
            "/v1.41/containers/create?name=a1",
            &[],
            Some(("application/json", b"{\"Image\":\"x\"}")),
        )
        .unwrap();
        assert_eq!(
            out,
            b"POST /v1.41/containers/create?name=a1 HTTP/1.1\r\nHost: docker\r\n\
Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"Image\":\"x\"}"
        );
        let mut out = Vec::new();
        write_request(&mut out, "GET", "/_ping", &[("Connection", "close")], None).unwrap();
        assert_eq!(
            out,
            b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn reads_content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOKtrailing";
        for pieces in [&[1][..], &[3, 1, 7], &[4096]] {
            let (head, body) = parse(raw, "GET", pieces).unwrap();
            assert_eq!(head.status, 200);
            assert_eq!(head.header("API-VERSION"), Some("1.41"));
            assert_eq!(body, b"OK");
        }
    }

    #[test]
    fn reads_chunked_body_with_extensions_and_trailers_split_anywhere() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n";
        for pieces in [&[1][..], &[2, 5, 3], &[6], &[4096]] {
            let (_, body) = parse(raw, "GET", pieces).unwrap();
            assert_eq!(body, b"hello 0123456789");
        }
    }

    #[test]
    fn reads_until_eof_without_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it\nto the end";
        let (_, body) = parse(raw, "GET", &[3]).unwrap();
        assert_eq!(body, b"all of it\nto the end");
    }

    #[test]
    fn never_reads_a_body_where_there_is_none() {
        // A 404 answer to HEAD carries a Content-Length but no body.
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 126\r\n\r\n";
        let (head, body) = parse(raw, "HEAD", &[1]).unwrap();
        assert_eq!(head.status, 404);
        assert!(body.is_empty());
        for status in ["204 No Content", "304 Not Modified"] {
            let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
            let (_, body) = parse(raw.as_bytes(), "POST", &[1]).unwrap();
            assert!(body.is_empty());
        }
    }

    #[test]
    fn refuses_oversized_and_truncated_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n";
        assert!(parse(raw, "GET", &[64]).is_err());
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
        assert_eq!(
            parse(raw, "GET", &[64]).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
        assert!(parse(raw, "GET", &[64]).is_err());
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(
            parse(raw, "GET", &[64]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn rejects_garbage_status_lines_and_reports_idle_close() {
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n", "GET", &[64]).is_err());
        assert_eq!(
            parse(b"", "GET", &[64]).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn leaves_hijacked_stream_bytes_in_the_buffer() {
        let raw = b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n\
Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n\x01\x00\x00\x00\x00\x00\x00\x03hi\n";
        let mut reader = BufReader::new(&raw[..]);
        let head = read_head(&mut reader).unwrap();
        assert_eq!(head.status, 101);
        assert_eq!(body_framing("POST", &head).unwrap(), BodyFraming::None);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n");
    }
}
